//! YAML (and JSON) namespaces and requests, into the one model. The only module that uses serde_yaml.
//!
//! The syntax is documented in `docs/yaml-syntax.md`. Parsing runs in two passes:
//!
//! 1. serde deserializes the text into private `*Def` structs (`deny_unknown_fields`), so
//!    structural errors (unknown keys, wrong types) carry serde's `line:column` and field
//!    path. Every collection goes through a counting visitor that charges a per-parse
//!    budget, so YAML alias bombs ("billion laughs") stop with an error instead of
//!    exhausting memory.
//! 2. The defs are checked and converted to model types. Errors found there are located
//!    by a best-effort scan of the source for the key (`Locator`), and named by their
//!    field path (`procedures.CreateTenantZone.steps.mx.call`).

use super::template::{self, is_plain_name, is_single_ref, parse_ref, parse_template};
use super::{ParseError, MAX_DEPTH};
use crate::data::json::from_json;
use crate::data::{Element, IfNull, Mode, Path, Scalar};
use crate::model::{
    Access, CallTarget, ExecuteStep, ForEach, Format, InputSpec, Namespace, Ordering, ProcKind,
    Procedure, Repeat, Request, RequestTarget, Scope, SelectStep, SourceRef, Step, Transform,
    TransformSource, TryStep, When,
};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map as JsonMap, Value as Json};
use std::cell::Cell;
use std::fmt;

// ---------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------

/// Parses a YAML/JSON namespace file: one namespace (a mapping), a list of them, or
/// (YAML) several `---` documents each holding either.
pub fn parse_namespaces(src: &str, file: &str) -> Result<Vec<Namespace>, Vec<ParseError>> {
    let _budget = Budget::start(src.len());
    let defs: Vec<NamespaceDef> = if looks_like_json(src) {
        match serde_json::from_str::<NamespaceFile>(src) {
            Ok(f) => f.0,
            Err(e) => return Err(vec![json_err(file, &e)]),
        }
    } else {
        let mut all = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(src) {
            match NamespaceFile::deserialize(doc) {
                Ok(f) => all.extend(f.0),
                Err(e) => return Err(vec![yaml_err(file, &e)]),
            }
        }
        all
    };
    if defs.is_empty() {
        return Err(vec![ParseError::new(
            SourceRef::new(file, 0, 0),
            "the file holds no namespace",
        )
        .with_hint(
            "start the file with `namespace: <name>` and a `procedures:` mapping",
        )]);
    }
    let mut cx = Cx::new(src, file);
    let mut out = Vec::new();
    for (i, d) in defs.into_iter().enumerate() {
        let root = cx.loc.namespace_root(i);
        if let Some(ns) = cx.namespace(d, root) {
            out.push(ns);
        }
    }
    if cx.errors.is_empty() {
        Ok(out)
    } else {
        Err(cx.errors)
    }
}

/// Renders a map/array value as YAML (responses, `config show`). The one place YAML is written.
pub fn to_yaml(value: &Json) -> String {
    serde_yaml::to_string(value).unwrap_or_else(|e| format!("# cannot render YAML: {e}\n"))
}

/// Parses a YAML/JSON request. `format` says which syntax the text is in.
pub fn parse_request(src: &str, file: &str, format: Format) -> Result<Request, ParseError> {
    let _budget = Budget::start(src.len());
    let def: RequestDef = match format {
        Format::Json => serde_json::from_str(src).map_err(|e| json_err(file, &e))?,
        _ => {
            if src.trim().is_empty() {
                return Err(empty_request(file));
            }
            serde_yaml::from_str(src).map_err(|e| yaml_err(file, &e))?
        }
    };
    let mut cx = Cx::new(src, file);
    let root = cx.loc.root();
    let req = cx.request(def, format, root);
    match (req, cx.errors.into_iter().next()) {
        (Some(r), None) => Ok(r),
        (_, Some(e)) => Err(e),
        (None, None) => Err(ParseError::new(
            SourceRef::new(file, 0, 0),
            "the request is not valid",
        )),
    }
}

fn empty_request(file: &str) -> ParseError {
    ParseError::new(SourceRef::new(file, 0, 0), "the request is empty")
        .with_hint("write `call: Namespace/Procedure` and `data: { … }`")
}

/// JSON text (namespace files do not say their format): starts with `{`/`[` and is valid JSON.
fn looks_like_json(src: &str) -> bool {
    let t = src.trim_start();
    (t.starts_with('{') || t.starts_with('['))
        && serde_json::from_str::<serde::de::IgnoredAny>(src).is_ok()
}

// ---------------------------------------------------------------------------------------
// Error conversion
// ---------------------------------------------------------------------------------------

/// Separates a message from its hint inside a serde custom error.
const HINT_SEP: &str = "\u{1}";

fn custom<E: de::Error>(msg: impl fmt::Display, hint: impl fmt::Display) -> E {
    E::custom(format!("{msg}{HINT_SEP}{hint}"))
}

fn split_hint(msg: &str) -> (String, Option<String>) {
    match msg.split_once(HINT_SEP) {
        Some((m, h)) => (m.to_string(), Some(h.to_string())),
        None => (msg.to_string(), None),
    }
}

fn yaml_err(file: &str, e: &serde_yaml::Error) -> ParseError {
    let (line, col) = e
        .location()
        .map(|l| (l.line() as u32, l.column() as u32))
        .unwrap_or((0, 0));
    let mut msg = e.to_string();
    if let Some(i) = msg.rfind(" at line ") {
        let tail = &msg[i + " at line ".len()..];
        let ok = tail
            .split_once(" column ")
            .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok());
        if ok {
            msg.truncate(i);
        }
    }
    serde_err(file, line, col, &msg)
}

fn json_err(file: &str, e: &serde_json::Error) -> ParseError {
    let (line, col) = (e.line() as u32, e.column() as u32);
    let mut msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    if let Some(s) = msg.strip_suffix(&suffix) {
        msg = s.to_string();
    }
    serde_err(file, line, col, &msg)
}

fn serde_err(file: &str, line: u32, col: u32, raw: &str) -> ParseError {
    let (mut msg, mut hint) = split_hint(raw);
    // serde_yaml puts the field path first: `procedures.X.steps: message`.
    let body = ["unknown field `", "unknown variant `"]
        .iter()
        .filter_map(|p| msg.find(p))
        .min()
        .map(|i| msg[i..].to_string())
        .unwrap_or_else(|| msg.clone());
    if hint.is_none() {
        hint = unknown_hint(&body);
    }
    if body.contains("recursion limit exceeded") {
        hint = Some(format!(
            "nesting is limited to {MAX_DEPTH} levels; flatten the structure"
        ));
    } else if body.contains("repetition limit exceeded") || body.contains("expansion budget") {
        hint = Some(
            "YAML aliases expand to too much data; write the values out or use fewer aliases"
                .into(),
        );
    } else if body.starts_with("unknown anchor") {
        hint = Some("define the anchor (`&name`) before using the alias (`*name`)".into());
    } else if body.contains("more than one document") {
        hint = Some("a request is one YAML document; remove the extra `---`".into());
    }
    if msg.is_empty() {
        msg = "invalid document".into();
    }
    let mut pe = ParseError::new(SourceRef::new(file, line, col), msg);
    pe.hint = hint;
    pe
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" / "unknown variant …":
/// the valid names and the closest one.
fn unknown_hint(body: &str) -> Option<String> {
    let (kind, rest) = if let Some(r) = body.strip_prefix("unknown field `") {
        ("keys", r)
    } else if let Some(r) = body.strip_prefix("unknown variant `") {
        ("values", r)
    } else {
        return None;
    };
    let (bad, rest) = rest.split_once('`')?;
    let valid: Vec<&str> = rest
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    if valid.is_empty() {
        return None;
    }
    let list = valid.join(", ");
    Some(match closest(bad, &valid) {
        Some(c) => format!("did you mean `{c}`? valid {kind}: {list}"),
        None => format!("valid {kind}: {list}"),
    })
}

fn closest<'a>(bad: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|v| {
            (
                strsim::jaro_winkler(&bad.to_lowercase(), &v.to_lowercase()),
                *v,
            )
        })
        .filter(|(s, _)| *s >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| v)
}

// ---------------------------------------------------------------------------------------
// Expansion budget (alias bombs)
// ---------------------------------------------------------------------------------------

thread_local! {
    static BUDGET: Cell<u64> = const { Cell::new(u64::MAX) };
}

struct Budget {
    previous: u64,
}

impl Budget {
    /// Every node costs 8 units and every string its length; a file without aliases
    /// stays far below `16 × its size + 1M`.
    fn start(src_len: usize) -> Budget {
        let limit = (src_len as u64).saturating_mul(16).saturating_add(1 << 20);
        Budget {
            previous: BUDGET.with(|b| b.replace(limit)),
        }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        BUDGET.with(|b| b.set(self.previous));
    }
}

fn charge<E: de::Error>(units: usize) -> Result<(), E> {
    BUDGET.with(|b| {
        let left = b.get();
        let units = units as u64;
        if units > left {
            b.set(0);
            Err(custom(
                "the document expands to too much data (expansion budget exceeded)",
                "YAML aliases expand to too much data; write the values out or use fewer aliases",
            ))
        } else {
            b.set(left - units);
            Ok(())
        }
    })
}

// ---------------------------------------------------------------------------------------
// Counted building blocks
// ---------------------------------------------------------------------------------------

/// A string; YAML scalars of other types are accepted in their text form.
#[derive(Debug, Clone, PartialEq, Default)]
struct Text(String);

struct TextVisitor;

impl Visitor<'_> for TextVisitor {
    type Value = Text;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
        charge(8 + v.len())?;
        Ok(Text(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
        charge(8 + v.len())?;
        Ok(Text(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
        charge(8)?;
        Ok(Text(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
        charge(8)?;
        Ok(Text(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
        charge(8)?;
        Ok(Text(v.to_string()))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
        charge(8)?;
        Ok(Text(v.to_string()))
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor)
    }
}

/// Any literal value, as JSON (maps keep their order).
#[derive(Debug, Clone, PartialEq)]
struct Lit(Json);

struct LitVisitor;

impl<'de> Visitor<'de> for LitVisitor {
    type Value = Lit;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Lit, E> {
        charge(8)?;
        Ok(Lit(Json::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Lit, E> {
        charge(8)?;
        Ok(Lit(Json::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Lit, E> {
        charge(8)?;
        Ok(Lit(Json::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Lit, E> {
        charge(8)?;
        match serde_json::Number::from_f64(v) {
            Some(n) => Ok(Lit(Json::Number(n))),
            None => Err(custom(
                format!("`{v}` is not a number a data tree can hold"),
                "quote it to keep it as text",
            )),
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Lit, E> {
        charge(8 + v.len())?;
        Ok(Lit(Json::String(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Lit, E> {
        charge(8 + v.len())?;
        Ok(Lit(Json::String(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Lit, E> {
        charge(8)?;
        Ok(Lit(Json::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Lit, E> {
        self.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Lit, D::Error> {
        Lit::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Lit, A::Error> {
        charge(8)?;
        let mut v = Vec::new();
        while let Some(Lit(x)) = seq.next_element::<Lit>()? {
            v.push(x);
        }
        Ok(Lit(Json::Array(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Lit, A::Error> {
        charge(8)?;
        let mut m = JsonMap::new();
        while let Some(Text(k)) = map.next_key::<Text>()? {
            let Lit(v) = map.next_value::<Lit>()?;
            if m.contains_key(&k) {
                return Err(custom(
                    format!("duplicate key `{k}`"),
                    "each key may appear once in a mapping",
                ));
            }
            m.insert(k, v);
        }
        Ok(Lit(Json::Object(m)))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _data: A) -> Result<Lit, A::Error> {
        Err(custom(
            "YAML tags (`!name`) are not supported in values",
            "remove the tag",
        ))
    }
    fn visit_bytes<E: de::Error>(self, _v: &[u8]) -> Result<Lit, E> {
        Err(custom("binary values are not supported", "write text"))
    }
}

impl<'de> Deserialize<'de> for Lit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LitVisitor)
    }
}

/// An ordered mapping with string keys (duplicates are errors).
#[derive(Debug, Clone, PartialEq)]
struct Ordered<T>(Vec<(String, T)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

struct OrderedVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for OrderedVisitor<T> {
    type Value = Ordered<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Ordered<T>, E> {
        Ok(Ordered(Vec::new()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<T>, A::Error> {
        let mut v: Vec<(String, T)> = Vec::new();
        while let Some(k) = map.next_key_seed(NewKey(&v))? {
            charge::<A::Error>(8)?;
            let val = map.next_value::<T>()?;
            v.push((k, val));
        }
        Ok(Ordered(v))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OrderedVisitor(std::marker::PhantomData))
    }
}

/// A mapping key that must not be in `.0` yet (the error points at the key).
struct NewKey<'a, T>(&'a [(String, T)]);

impl<'de, T> de::DeserializeSeed<'de> for NewKey<'_, T> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        struct V<'a, T>(&'a [(String, T)]);
        impl<T> V<'_, T> {
            fn check<E: de::Error>(&self, k: String) -> Result<String, E> {
                charge(8 + k.len())?;
                if self.0.iter().any(|(x, _)| *x == k) {
                    return Err(custom(
                        format!("duplicate key `{k}`"),
                        "each key may appear once in a mapping",
                    ));
                }
                Ok(k)
            }
        }
        impl<T> Visitor<'_> for V<'_, T> {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
                self.check(v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
                self.check(v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
                self.check(v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
                self.check(v.to_string())
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
                self.check(v.to_string())
            }
        }
        d.deserialize_any(V(self.0))
    }
}

/// A sequence, counted against the budget.
#[derive(Debug, Clone, PartialEq)]
struct List<T>(Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

struct ListVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
    type Value = List<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list")
    }
    fn visit_unit<E: de::Error>(self) -> Result<List<T>, E> {
        Ok(List(Vec::new()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
        let mut v = Vec::new();
        loop {
            charge::<A::Error>(8)?;
            match seq.next_element::<T>()? {
                Some(x) => v.push(x),
                None => break,
            }
        }
        Ok(List(v))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ListVisitor(std::marker::PhantomData))
    }
}

/// One string or a list of strings.
#[derive(Debug, Clone, PartialEq, Default)]
struct Strings(Vec<String>);

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Strings;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Strings, E> {
                charge(8 + v.len())?;
                Ok(Strings(vec![v.to_string()]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Strings, E> {
                Ok(Strings(vec![v.to_string()]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Strings, E> {
                Ok(Strings(vec![v.to_string()]))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Strings, E> {
                Ok(Strings(Vec::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Strings, A::Error> {
                let List(v) =
                    List::<Text>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Strings(v.into_iter().map(|t| t.0).collect()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A typed scalar (input defaults).
#[derive(Debug, Clone, PartialEq)]
struct ScalarDef(Scalar);

impl<'de> Deserialize<'de> for ScalarDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ScalarDef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarDef, E> {
                charge(8 + v.len())?;
                Ok(ScalarDef(Scalar::Str(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarDef, E> {
                Ok(ScalarDef(Scalar::Int(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarDef, E> {
                i64::try_from(v)
                    .map(|i| ScalarDef(Scalar::Int(i)))
                    .map_err(|_| {
                        custom(
                            format!("{v} does not fit a 64-bit integer"),
                            "quote it to keep it as text",
                        )
                    })
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarDef, E> {
                Ok(ScalarDef(Scalar::Float(v)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarDef, E> {
                Ok(ScalarDef(Scalar::Bool(v)))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------
// The definitions as written
// ---------------------------------------------------------------------------------------

/// One namespace or a list of them.
struct NamespaceFile(Vec<NamespaceDef>);

impl<'de> Deserialize<'de> for NamespaceFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NamespaceFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a namespace (a mapping starting with `namespace:`) or a list of them")
            }
            fn visit_unit<E: de::Error>(self) -> Result<NamespaceFile, E> {
                Ok(NamespaceFile(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<NamespaceFile, A::Error> {
                let ns = NamespaceDef::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(NamespaceFile(vec![ns]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<NamespaceFile, A::Error> {
                let List(v) =
                    List::<NamespaceDef>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(NamespaceFile(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceDef {
    namespace: Text,
    #[serde(default)]
    description: Option<Text>,
    #[serde(default)]
    provider: Option<Text>,
    #[serde(default)]
    provider_context: Option<Lit>,
    #[serde(default)]
    read_only: Option<bool>,
    #[serde(default)]
    procedures: Option<Ordered<ProcedureDef>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ProcedureDef {
    #[serde(default)]
    access: Option<Access>,
    #[serde(default, rename = "type")]
    kind: Option<ProcKind>,
    #[serde(default)]
    description: Option<Text>,
    #[serde(default)]
    parallel: Option<bool>,
    #[serde(default)]
    entry: Option<Text>,
    #[serde(default)]
    save_data_for_rollback: Option<bool>,
    #[serde(default)]
    resumable: Option<bool>,
    #[serde(default)]
    inputs: Option<Ordered<InputDef>>,
    #[serde(default)]
    procedure_data: Option<Lit>,
    #[serde(default)]
    steps: Option<Ordered<StepDef>>,
}

/// `name: type` or `name: { type, required, default, secret, description }`.
#[derive(Debug)]
enum InputDef {
    Short(String),
    Full(InputFull),
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct InputFull {
    #[serde(default, rename = "type")]
    ty: Option<Text>,
    #[serde(default)]
    required: Option<bool>,
    #[serde(default)]
    default: Option<ScalarDef>,
    #[serde(default)]
    secret: Option<bool>,
    #[serde(default)]
    description: Option<Text>,
}

impl<'de> Deserialize<'de> for InputDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InputDef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a type name (`string`) or a mapping { type, required, default, secret, description }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<InputDef, E> {
                Ok(InputDef::Short(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<InputDef, E> {
                Ok(InputDef::Full(InputFull {
                    ty: None,
                    required: None,
                    default: None,
                    secret: None,
                    description: None,
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<InputDef, A::Error> {
                InputFull::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(InputDef::Full)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StepDef {
    #[serde(default)]
    call: Option<Text>,
    #[serde(default)]
    with: Option<Ordered<Lit>>,
    #[serde(default)]
    output: Option<Ordered<Lit>>,
    #[serde(default)]
    needs: Option<Strings>,
    #[serde(default)]
    for_each: Option<ForEachDefs>,
    #[serde(default)]
    when: Option<WhenDefs>,
    #[serde(default)]
    unless: Option<Strings>,
    #[serde(default)]
    repeat: Option<RepeatDef>,
    #[serde(default)]
    execute_data: Option<Lit>,
    #[serde(default)]
    before: Option<List<TransformDef>>,
    #[serde(default)]
    after: Option<List<TransformDef>>,
    #[serde(default, rename = "try")]
    try_: Option<Ordered<StepDef>>,
    #[serde(default)]
    catch: Option<Ordered<StepDef>>,
    #[serde(default)]
    select: Option<SelectDef>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ForEachItem {
    name: Text,
    #[serde(default)]
    root: Option<Text>,
    #[serde(default)]
    path: Option<Text>,
    #[serde(default)]
    if_null: Option<IfNull>,
}

/// A list of forEach items, or the shorthand map `{ var: "scope/path" }`.
#[derive(Debug)]
enum ForEachDefs {
    Items(Vec<ForEachItem>),
    Short(Vec<(String, String)>),
}

impl<'de> Deserialize<'de> for ForEachDefs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ForEachDefs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a list of { name, root, path, ifNull } or a mapping { name: \"scope/path\" }",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ForEachDefs, A::Error> {
                let List(v) =
                    List::<ForEachItem>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(ForEachDefs::Items(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ForEachDefs, A::Error> {
                let Ordered(v) =
                    Ordered::<Text>::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let full = ["name", "root", "path", "ifNull"];
                if v.iter().any(|(k, _)| k == "name")
                    && v.iter().all(|(k, _)| full.contains(&k.as_str()))
                {
                    return Err(custom(
                        "`forEach` with `name:` must be a list",
                        "write `forEach: [ { name: …, path: … } ]`, or the shorthand `forEach: { user: \"data/users/user\" }`",
                    ));
                }
                Ok(ForEachDefs::Short(
                    v.into_iter().map(|(k, t)| (k, t.0)).collect(),
                ))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CaseDef {
    select: Text,
    case: Text,
}

#[derive(Debug)]
enum WhenItem {
    Ref(String),
    Case(CaseDef),
}

impl<'de> Deserialize<'de> for WhenItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WhenItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path such as `data/users/user` or { select, case }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WhenItem, E> {
                charge(8 + v.len())?;
                Ok(WhenItem::Ref(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<WhenItem, A::Error> {
                CaseDef::deserialize(de::value::MapAccessDeserializer::new(map)).map(WhenItem::Case)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default)]
struct WhenDefs(Vec<WhenItem>);

impl<'de> Deserialize<'de> for WhenDefs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WhenDefs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path, { select, case }, or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WhenDefs, E> {
                Ok(WhenDefs(vec![WhenItem::Ref(v.to_string())]))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<WhenDefs, A::Error> {
                CaseDef::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|c| WhenDefs(vec![WhenItem::Case(c)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<WhenDefs, A::Error> {
                let List(v) =
                    List::<WhenItem>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(WhenDefs(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RepeatFull {
    #[serde(default)]
    source: Option<Text>,
    #[serde(default)]
    path: Option<Text>,
    #[serde(default)]
    if_null: Option<IfNull>,
}

#[derive(Debug)]
enum RepeatDef {
    Short(String),
    Full(RepeatFull),
}

impl<'de> Deserialize<'de> for RepeatDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RepeatDef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path such as `data/count` or { source, path, ifNull }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RepeatDef, E> {
                Ok(RepeatDef::Short(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RepeatDef, A::Error> {
                RepeatFull::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RepeatDef::Full)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TransformDef {
    #[serde(default)]
    source: Option<Text>,
    #[serde(default)]
    source_path: Option<Text>,
    #[serde(default)]
    template: Option<Text>,
    #[serde(default)]
    destination: Option<Text>,
    #[serde(default)]
    destination_path: Option<Text>,
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    if_null: Option<IfNull>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SelectDef {
    #[serde(default)]
    source: Option<Text>,
    #[serde(default)]
    path: Option<Text>,
    #[serde(default)]
    cases: Option<Ordered<Text>>,
    #[serde(default)]
    default: Option<Text>,
    #[serde(default)]
    if_null: Option<Text>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RequestDef {
    #[serde(default)]
    call: Option<Text>,
    #[serde(default)]
    procedure: Option<ProcedureDef>,
    #[serde(default)]
    data: Option<Lit>,
    #[serde(default)]
    context: Option<Lit>,
}

// ---------------------------------------------------------------------------------------
// Locating keys in the source (best effort)
// ---------------------------------------------------------------------------------------

/// A region of the source: lines `start..end`, whose keys sit at `indent` (when known).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Block {
    start: usize,
    end: usize,
    indent: Option<usize>,
    /// 1-based line and column of the key that opened this block (0 = file).
    line: u32,
    column: u32,
}

struct Locator<'a> {
    lines: Vec<&'a str>,
}

/// Leading spaces, then `- ` list markers counted as indentation.
fn effective_indent(line: &str) -> (usize, usize) {
    let raw = line.len() - line.trim_start_matches(' ').len();
    let mut eff = raw;
    let mut rest = &line[raw..];
    while let Some(r) = rest.strip_prefix("- ") {
        let sp = r.len() - r.trim_start_matches(' ').len();
        eff += 2 + sp;
        rest = &r[sp..];
    }
    (raw, eff)
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !(t.is_empty()
        || t.starts_with('#')
        || t.starts_with('}')
        || t.starts_with(']')
        || t.starts_with('{') && t.len() == 1
        || t.starts_with('[') && t.len() == 1
        || t == "---"
        || t == "...")
}

/// Whether `s` starts with `key` written as a mapping key (`key:`, `"key":`, `'key':`).
fn starts_with_key(s: &str, key: &str) -> bool {
    let rest = if let Some(r) = s.strip_prefix('"').and_then(|r| r.strip_prefix(key)) {
        r.strip_prefix('"')
    } else if let Some(r) = s.strip_prefix('\'').and_then(|r| r.strip_prefix(key)) {
        r.strip_prefix('\'')
    } else {
        s.strip_prefix(key)
    };
    match rest {
        Some(r) => {
            let quoted = s.starts_with(['"', '\'']);
            let r = r.trim_start_matches(' ');
            r == ":"
                || r.starts_with(": ")
                || r.starts_with(":\t")
                || (quoted && r.starts_with(':'))
        }
        None => false,
    }
}

impl<'a> Locator<'a> {
    fn new(src: &'a str) -> Self {
        Locator {
            lines: src.lines().collect(),
        }
    }

    fn root(&self) -> Block {
        Block {
            start: 0,
            end: self.lines.len(),
            indent: None,
            line: 0,
            column: 0,
        }
    }

    /// The block of the `i`-th namespace (the mapping holding its `namespace:` key).
    fn namespace_root(&self, i: usize) -> Block {
        let mut seen = 0;
        for (n, line) in self.lines.iter().enumerate() {
            let (_, eff) = effective_indent(line);
            let body = line.get(eff..).unwrap_or("");
            let found = if starts_with_key(body, "namespace") {
                Some(eff)
            } else {
                // flow style / JSON on one line
                find_key_anywhere(line, "namespace")
            };
            if let Some(col) = found {
                if seen == i {
                    let end = match col {
                        0 => self.lines.len(),
                        c => self.block_end(n, c - 1),
                    };
                    return Block {
                        start: n,
                        end,
                        indent: Some(col),
                        line: n as u32 + 1,
                        column: col as u32 + 1,
                    };
                }
                seen += 1;
            }
        }
        self.root()
    }

    /// First content line after `from` whose raw indent is `<= indent`.
    fn block_end(&self, from: usize, indent: usize) -> usize {
        for (n, line) in self.lines.iter().enumerate().skip(from + 1) {
            if is_content(line) && effective_indent(line).0 <= indent {
                return n;
            }
        }
        self.lines.len()
    }

    /// The child `key` of `block`.
    fn child(&self, block: Block, key: &str) -> Option<Block> {
        let indent = block.indent.or_else(|| {
            self.lines
                .iter()
                .take(block.end)
                .skip(block.start)
                .find(|l| is_content(l))
                .map(|l| effective_indent(l).1)
        });
        if let Some(ind) = indent {
            for n in block.start..block.end.min(self.lines.len()) {
                let line = self.lines[n];
                if !is_content(line) {
                    continue;
                }
                let (_, eff) = effective_indent(line);
                if eff == ind && starts_with_key(line.get(eff..).unwrap_or(""), key) {
                    let end = self.block_end(n, ind);
                    return Some(Block {
                        start: n + 1,
                        end,
                        indent: None,
                        line: n as u32 + 1,
                        column: eff as u32 + 1,
                    });
                }
            }
        }
        // Flow style or irregular layout: first occurrence in the block, including the
        // rest of the line of the key that opened it (`with: { zone: … }`).
        let from = if block.line > 0 {
            (block.line as usize - 1).min(block.start)
        } else {
            block.start
        };
        for n in from..block.end.min(self.lines.len()) {
            if let Some(col) = find_key_anywhere(self.lines[n], key) {
                return Some(Block {
                    start: n,
                    end: block.end,
                    indent: None,
                    line: n as u32 + 1,
                    column: col as u32 + 1,
                });
            }
        }
        None
    }

    /// The location of a field path below `block`: the deepest key found.
    fn find(&self, block: Block, path: &[String]) -> (u32, u32) {
        let mut b = block;
        for k in path {
            match self.child(b, k) {
                Some(c) => b = c,
                None => break,
            }
        }
        (b.line, b.column)
    }
}

/// Byte column of `key` used as a mapping key anywhere in the line.
fn find_key_anywhere(line: &str, key: &str) -> Option<usize> {
    if key.is_empty() {
        return None;
    }
    let mut from = 0;
    while let Some(i) = line.get(from..).and_then(|s| s.find(key)) {
        let at = from + i;
        let (start, quoted) = match line[..at].chars().next_back() {
            Some(q @ ('"' | '\'')) => (at - 1, Some(q)),
            _ => (at, None),
        };
        let before_ok = match line[..start].chars().next_back() {
            None => true,
            Some(c) => matches!(c, ' ' | '{' | ',' | '\t' | '-'),
        };
        let after = &line[at + key.len()..];
        let after = match quoted {
            Some(q) => after.strip_prefix(q),
            None => Some(after),
        };
        let after_ok = after.is_some_and(|a| {
            let a = a.trim_start_matches(' ');
            a.starts_with(':')
        });
        if before_ok && after_ok {
            return Some(start);
        }
        from = at + key.len().max(1);
        while from < line.len() && !line.is_char_boundary(from) {
            from += 1;
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Conversion
// ---------------------------------------------------------------------------------------

/// Where we are: the block of the current def and its field path.
#[derive(Clone)]
struct At {
    block: Block,
    path: Vec<String>,
}

impl At {
    fn key(&self, k: &str) -> At {
        let mut path = self.path.clone();
        path.push(k.to_string());
        At {
            block: self.block,
            path,
        }
    }
    fn dotted(&self) -> String {
        self.path.join(".")
    }
}

struct Cx<'a> {
    file: String,
    loc: Locator<'a>,
    errors: Vec<ParseError>,
}

impl<'a> Cx<'a> {
    fn new(src: &'a str, file: &str) -> Self {
        Cx {
            file: file.to_string(),
            loc: Locator::new(src),
            errors: Vec::new(),
        }
    }

    /// The source location of a field path (best effort: the deepest key found).
    fn here(&self, at: &At) -> SourceRef {
        let (l, c) = self.loc.find(at.block, &at.path);
        SourceRef::new(&self.file, l, c)
    }

    fn err(&mut self, at: &At, msg: impl fmt::Display, hint: Option<String>) {
        let sref = self.here(at);
        let mut e = ParseError::new(sref, format!("`{}`: {msg}", at.dotted()));
        e.hint = hint;
        self.errors.push(e);
    }

    fn namespace(&mut self, d: NamespaceDef, block: Block) -> Option<Namespace> {
        let at = At {
            block,
            path: Vec::new(),
        };
        let n0 = self.errors.len();
        let name = d.namespace.0.trim().to_string();
        if !is_name(&name) {
            self.err(
                &at.key("namespace"),
                format!("`{name}` is not a valid namespace name"),
                Some("use letters, digits, `_`, space, `-` and `.`".into()),
            );
        }
        let provider_context = match d.provider_context {
            Some(Lit(v)) => self.literal(&at.key("providerContext"), "providerContext", &v),
            None => Element::new("providerContext"),
        };
        let mut procedures = Vec::new();
        for (pname, pd) in d.procedures.unwrap_or_default().0 {
            let pat = at.key("procedures").key(&pname);
            if let Some(p) = self.procedure(&pname, pd, &pat) {
                procedures.push(p);
            }
        }
        if self.errors.len() > n0 {
            return None;
        }
        Some(Namespace {
            name,
            description: d.description.map(|t| t.0),
            provider: d.provider.map(|t| t.0).filter(|s| !s.trim().is_empty()),
            provider_context,
            read_only: d.read_only.unwrap_or(false),
            procedures,
            source_ref: SourceRef::new(&self.file, block.line, block.column),
        })
    }

    fn procedure(&mut self, name: &str, d: ProcedureDef, at: &At) -> Option<Procedure> {
        let n0 = self.errors.len();
        if !is_name(name) {
            self.err(
                at,
                format!("`{name}` is not a valid procedure name"),
                Some("use letters, digits, `_`, space, `-` and `.`".into()),
            );
        }
        let mut p = Procedure::new(name);
        p.source_ref = self.here(at);
        p.access = d.access.unwrap_or_default();
        p.kind = d.kind.unwrap_or_default();
        p.description = d.description.map(|t| t.0);
        p.ordering = if d.parallel == Some(false) {
            Ordering::Sequential
        } else {
            Ordering::Parallel
        };
        p.entry = d.entry.map(|t| t.0);
        p.save_data_for_rollback = d.save_data_for_rollback.unwrap_or(false);
        p.resumable = d.resumable.unwrap_or(false);
        for (iname, idef) in d.inputs.unwrap_or_default().0 {
            let iat = at.key("inputs").key(&iname);
            if let Some(i) = self.input(&iname, idef, &iat) {
                p.inputs.push(i);
            }
        }
        if let Some(Lit(v)) = d.procedure_data {
            p.procedure_data = self.literal(&at.key("procedureData"), "procedureData", &v);
        }
        let mut ids = Vec::new();
        p.steps = self.steps(d.steps.unwrap_or_default(), &at.key("steps"), &mut ids);
        (self.errors.len() == n0).then_some(p)
    }

    fn input(&mut self, name: &str, d: InputDef, at: &At) -> Option<InputSpec> {
        if let Err(e) = Path::parse(name) {
            self.err(at, format!("input name: {e}"), None);
            return None;
        }
        if name.trim().is_empty() {
            self.err(at, "empty input name", None);
            return None;
        }
        let mut spec = InputSpec {
            name: name.to_string(),
            required: true,
            ..InputSpec::default()
        };
        let ty = match d {
            InputDef::Short(t) => Some(t),
            InputDef::Full(f) => {
                if f.required == Some(true) && f.default.is_some() {
                    self.err(
                        at,
                        "an input with a `default` is not required",
                        Some("drop `required: true` or the `default`".into()),
                    );
                    return None;
                }
                spec.required = f.required.unwrap_or(f.default.is_none());
                spec.default = f.default.map(|s| s.0);
                spec.secret = f.secret.unwrap_or(false);
                spec.description = f.description.map(|t| t.0);
                f.ty.map(|t| t.0)
            }
        };
        if let Some(t) = &ty {
            if !INPUT_TYPES.contains(&t.as_str()) {
                let hint = match closest(t, INPUT_TYPES) {
                    Some(c) => format!(
                        "did you mean `{c}`? valid types: {}",
                        INPUT_TYPES.join(", ")
                    ),
                    None => format!("valid types: {}", INPUT_TYPES.join(", ")),
                };
                self.err(at, format!("unknown input type `{t}`"), Some(hint));
                return None;
            }
        }
        spec.ty = ty;
        Some(spec)
    }

    /// A literal map → element. Must be a mapping (or empty).
    fn literal(&mut self, at: &At, root: &str, v: &Json) -> Element {
        match v {
            Json::Null => Element::new(root),
            Json::Object(_) => match from_json(root, v) {
                Ok(mut e) => {
                    e.name = root.to_string();
                    if e.depth() > MAX_DEPTH {
                        self.err(
                            at,
                            format!("nesting deeper than {MAX_DEPTH} levels"),
                            Some("flatten the structure".into()),
                        );
                    }
                    e
                }
                Err(e) => {
                    self.err(at, e.to_string(), None);
                    Element::new(root)
                }
            },
            _ => {
                self.err(
                    at,
                    format!("`{root}` must be a mapping"),
                    Some(format!("write `{root}: {{ name: value, … }}`")),
                );
                Element::new(root)
            }
        }
    }

    fn steps(&mut self, d: Ordered<StepDef>, at: &At, ids: &mut Vec<String>) -> Vec<Step> {
        let mut out = Vec::new();
        for (id, sd) in d.0 {
            let sat = at.key(&id);
            if !is_step_id(&id) {
                self.err(
                    &sat,
                    format!("`{id}` is not a valid step id"),
                    Some("use letters, digits, `_`, `-` and `.`".into()),
                );
                continue;
            }
            if ids.contains(&id) {
                self.err(
                    &sat,
                    format!("step id `{id}` is used twice in this procedure"),
                    Some(
                        "step ids must be unique in a procedure, including try/catch blocks".into(),
                    ),
                );
                continue;
            }
            ids.push(id.clone());
            if let Some(s) = self.step(&id, sd, &sat, ids) {
                out.push(s);
            }
        }
        out
    }

    fn step(&mut self, id: &str, d: StepDef, at: &At, ids: &mut Vec<String>) -> Option<Step> {
        let sref = self.here(at);
        let needs = d.needs.clone().unwrap_or_default().0;
        let n0 = self.errors.len();
        for n in &needs {
            if n == id {
                self.err(&at.key("needs"), format!("step `{id}` needs itself"), None);
            }
        }
        let exec_keys: Vec<&str> = [
            ("call", d.call.is_some()),
            ("with", d.with.is_some()),
            ("output", d.output.is_some()),
            ("forEach", d.for_each.is_some()),
            ("when", d.when.is_some()),
            ("unless", d.unless.is_some()),
            ("repeat", d.repeat.is_some()),
            ("executeData", d.execute_data.is_some()),
            ("before", d.before.is_some()),
            ("after", d.after.is_some()),
        ]
        .iter()
        .filter(|(_, p)| *p)
        .map(|(k, _)| *k)
        .collect();
        if d.try_.is_some() || d.catch.is_some() {
            if d.select.is_some() {
                self.err(
                    at,
                    "a step cannot have both `try` and `select`",
                    Some("make them two steps".into()),
                );
                return None;
            }
            if let Some(k) = exec_keys.first() {
                self.err(
                    &at.key(k),
                    format!("a `try` step cannot also have `{k}`"),
                    Some("put the call inside the `try:` steps; a try step has only `try`, `catch` and `needs`".into()),
                );
                return None;
            }
            let Some(body) = d.try_ else {
                self.err(
                    &at.key("catch"),
                    "`catch` without `try`",
                    Some("write `try: { … }` before `catch:` in the same step".into()),
                );
                return None;
            };
            let body = self.steps(body, &at.key("try"), ids);
            let catch = self.steps(d.catch.unwrap_or_default(), &at.key("catch"), ids);
            return (self.errors.len() == n0).then(|| {
                Step::Try(TryStep {
                    id: id.to_string(),
                    body,
                    catch,
                    needs,
                    source_ref: sref,
                })
            });
        }
        if let Some(sel) = d.select {
            if let Some(k) = exec_keys.first() {
                self.err(
                    &at.key(k),
                    format!("a `select` step cannot also have `{k}`"),
                    Some("a select step has only `select` and `needs`; use `when: { select: …, case: … }` on other steps".into()),
                );
                return None;
            }
            let sat = at.key("select");
            let scope = self.scope(
                &sat.key("source"),
                sel.source.map(|t| t.0).as_deref(),
                Scope::Data,
            );
            let path = self.opt_path(&sat.key("path"), sel.path.map(|t| t.0));
            let cases: Vec<(String, String)> = sel
                .cases
                .unwrap_or_default()
                .0
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            if cases.is_empty() && sel.default.is_none() {
                self.err(
                    &sat,
                    "a select needs `cases` or a `default`",
                    Some("write `cases: { value: caseName }`".into()),
                );
            }
            return (self.errors.len() == n0).then(|| {
                Step::Select(SelectStep {
                    id: id.to_string(),
                    name: id.to_string(),
                    scope,
                    path,
                    cases,
                    default_case: sel.default.map(|t| t.0),
                    if_null_case: sel.if_null.map(|t| t.0),
                    needs,
                    source_ref: sref,
                })
            });
        }
        self.execute(id, d, at, needs, sref, n0).map(Step::Execute)
    }

    fn execute(
        &mut self,
        id: &str,
        d: StepDef,
        at: &At,
        needs: Vec<String>,
        sref: SourceRef,
        n0: usize,
    ) -> Option<ExecuteStep> {
        let call = match d.call {
            None => None,
            Some(Text(c)) => self.call_target(&at.key("call"), &c),
        };
        // forEach
        let mut for_each = Vec::new();
        match d.for_each {
            None => {}
            Some(ForEachDefs::Items(items)) => {
                for (i, it) in items.into_iter().enumerate() {
                    let fat = at.key("forEach").key(&i.to_string());
                    let name = it.name.0;
                    if !is_plain_name(&name) || is_reserved_scope(&name) {
                        self.err(&fat, format!("`{name}` cannot name a forEach variable"), Some("use a plain name that is not data, executeData, procedureData or context".into()));
                        continue;
                    }
                    let root = self.scope(
                        &fat.key("root"),
                        it.root.map(|t| t.0).as_deref(),
                        Scope::Data,
                    );
                    self.check_foreach_root(&fat, &root);
                    let path = self.opt_path(&fat.key("path"), it.path.map(|t| t.0));
                    for_each.push(ForEach {
                        name,
                        root,
                        path,
                        if_null: it.if_null.unwrap_or_default(),
                    });
                }
            }
            Some(ForEachDefs::Short(items)) => {
                for (name, r) in items {
                    let fat = at.key("forEach").key(&name);
                    if !is_plain_name(&name) || is_reserved_scope(&name) {
                        self.err(&fat, format!("`{name}` cannot name a forEach variable"), Some("use a plain name that is not data, executeData, procedureData or context".into()));
                        continue;
                    }
                    match self.reference(&fat, &r) {
                        Some((root, path)) => {
                            self.check_foreach_root(&fat, &root);
                            for_each.push(ForEach {
                                name,
                                root,
                                path,
                                if_null: IfNull::Fail,
                            });
                        }
                        None => continue,
                    }
                }
            }
        }
        for (i, f) in for_each.iter().enumerate() {
            if for_each[..i].iter().any(|g| g.name == f.name) {
                self.err(
                    &at.key("forEach"),
                    format!("forEach name `{}` is used twice", f.name),
                    None,
                );
            }
        }
        // when / unless
        let mut when = Vec::new();
        for item in d.when.unwrap_or_default().0 {
            match item {
                WhenItem::Ref(r) => {
                    if let Some((scope, path)) = self.reference(&at.key("when"), &r) {
                        when.push(When::Exists { scope, path });
                    }
                }
                WhenItem::Case(c) => when.push(When::Case {
                    select: c.select.0,
                    case: c.case.0,
                }),
            }
        }
        for r in d.unless.unwrap_or_default().0 {
            if let Some((scope, path)) = self.reference(&at.key("unless"), &r) {
                when.push(When::Missing { scope, path });
            }
        }
        // repeat
        let repeat = match d.repeat {
            None => None,
            Some(RepeatDef::Short(r)) => {
                self.reference(&at.key("repeat"), &r)
                    .map(|(scope, path)| Repeat {
                        scope,
                        path,
                        if_null: IfNull::Fail,
                    })
            }
            Some(RepeatDef::Full(f)) => {
                let rat = at.key("repeat");
                let scope = self.scope(
                    &rat.key("source"),
                    f.source.map(|t| t.0).as_deref(),
                    Scope::Data,
                );
                let path = self.opt_path(&rat.key("path"), f.path.map(|t| t.0));
                Some(Repeat {
                    scope,
                    path,
                    if_null: f.if_null.unwrap_or_default(),
                })
            }
        };
        // executeData literal + `with` constants
        let mut ed = match d.execute_data {
            None => Json::Object(JsonMap::new()),
            Some(Lit(Json::Null)) => Json::Object(JsonMap::new()),
            Some(Lit(v @ Json::Object(_))) => v,
            Some(_) => {
                self.err(
                    &at.key("executeData"),
                    "`executeData` must be a mapping",
                    Some("write `executeData: { name: value, … }`".into()),
                );
                Json::Object(JsonMap::new())
            }
        };
        let mut before = Vec::new();
        for (i, t) in d.before.unwrap_or_default().0.into_iter().enumerate() {
            let tat = at.key("before").key(&i.to_string());
            if let Some(t) = self.transform(&tat, t, Scope::Data, Scope::ExecuteData) {
                before.push(t);
            }
        }
        let mut after = Vec::new();
        for (k, Lit(v)) in d.with.unwrap_or_default().0 {
            let wat = at.key("with").key(&k);
            self.with_entry(&wat, &k, v, &mut ed, &mut before);
        }
        for (k, Lit(v)) in d.output.unwrap_or_default().0 {
            let oat = at.key("output").key(&k);
            self.output_entry(&oat, &k, v, &mut after);
        }
        for (i, t) in d.after.unwrap_or_default().0.into_iter().enumerate() {
            let tat = at.key("after").key(&i.to_string());
            if let Some(t) = self.transform(&tat, t, Scope::ExecuteData, Scope::Data) {
                after.push(t);
            }
        }
        let execute_data = self.literal(&at.key("executeData"), "executeData", &ed);
        (self.errors.len() == n0).then(|| ExecuteStep {
            id: id.to_string(),
            call,
            for_each,
            when,
            repeat,
            execute_data,
            before,
            after,
            needs,
            source_ref: sref,
        })
    }

    fn check_foreach_root(&mut self, at: &At, root: &Scope) {
        if matches!(root, Scope::ExecuteData | Scope::Context) {
            self.err(
                at,
                format!("a forEach cannot iterate over `{root}`"),
                Some("iterate over `data`, `procedureData` or an earlier forEach name".into()),
            );
        }
    }

    fn call_target(&mut self, at: &At, c: &str) -> Option<CallTarget> {
        let hint = "write `call: Namespace/Procedure`, e.g. `call: DNS Provider/CreateZone`";
        let Some((ns, pr)) = c.rsplit_once('/') else {
            self.err(at, format!("`{c}` names no namespace"), Some(hint.into()));
            return None;
        };
        let (ns, pr) = (ns.trim(), pr.trim());
        // The namespace part may itself hold `/` (split at the last one); the compiler
        // reports a namespace that does not exist.
        if ns.is_empty() || !is_name(pr) {
            self.err(
                at,
                format!("`{c}` is not `Namespace/Procedure`"),
                Some(hint.into()),
            );
            return None;
        }
        Some(CallTarget {
            namespace: ns.to_string(),
            procedure: pr.to_string(),
        })
    }

    /// A scope name field; `default` when absent.
    fn scope(&mut self, at: &At, s: Option<&str>, default: Scope) -> Scope {
        match s.map(str::trim) {
            None => default,
            Some(s) if is_plain_name(s) => Scope::parse(s),
            Some(s) => {
                self.err(
                    at,
                    format!("`{s}` is not a scope"),
                    Some("use data, executeData, procedureData, context or a forEach name".into()),
                );
                default
            }
        }
    }

    /// An optional path field, validated.
    fn opt_path(&mut self, at: &At, p: Option<String>) -> Option<String> {
        let p = p?;
        let t = p.trim();
        if t.is_empty() {
            return None;
        }
        match Path::parse(t) {
            Ok(_) => Some(t.to_string()),
            Err(e) => {
                self.err(at, e.to_string(), None);
                None
            }
        }
    }

    /// A ref written as `data/x`, `data.x` or `{{ data.x }}`.
    fn reference(&mut self, at: &At, r: &str) -> Option<(Scope, Option<String>)> {
        if let Some(sp) = is_single_ref(r) {
            return Some(sp);
        }
        if r.contains("{{") {
            let msg = match parse_template(r) {
                Err(e) => e,
                Ok(_) => format!("`{r}` must be one reference, not a template"),
            };
            self.err(
                at,
                msg,
                Some("write a scope and a path, e.g. `data/users/user`".into()),
            );
            return None;
        }
        match parse_ref(r) {
            Ok(sp) => Some(sp),
            Err(e) => {
                self.err(
                    at,
                    e,
                    Some("write a scope and a path, e.g. `data/users/user`".into()),
                );
                None
            }
        }
    }

    fn transform(
        &mut self,
        at: &At,
        t: TransformDef,
        src_default: Scope,
        dst_default: Scope,
    ) -> Option<Transform> {
        let n0 = self.errors.len();
        let sref = self.here(at);
        let source = match t.template {
            Some(Text(tpl)) => {
                if t.source.is_some() || t.source_path.is_some() {
                    self.err(
                        at,
                        "a transform has either `template` or `source`/`sourcePath`, not both",
                        Some("drop one of them".into()),
                    );
                }
                if let Err(e) = parse_template(&tpl) {
                    self.err(&at.key("template"), e, None);
                }
                TransformSource::Template(tpl)
            }
            None => {
                let scope = self.scope(
                    &at.key("source"),
                    t.source.map(|t| t.0).as_deref(),
                    src_default,
                );
                let path = self.opt_path(&at.key("sourcePath"), t.source_path.map(|t| t.0));
                TransformSource::Node { scope, path }
            }
        };
        let destination = self.scope(
            &at.key("destination"),
            t.destination.map(|t| t.0).as_deref(),
            dst_default,
        );
        let destination_path =
            self.opt_path(&at.key("destinationPath"), t.destination_path.map(|t| t.0));
        (self.errors.len() == n0).then(|| Transform {
            source,
            destination,
            destination_path,
            mode: t.mode.unwrap_or_default(),
            if_null: t.if_null.unwrap_or_default(),
            source_ref: sref,
        })
    }

    /// One `with:` entry: a ref → merge transform, a template → template transform,
    /// a constant → into the executeData literal; maps holding placeholders recurse.
    fn with_entry(
        &mut self,
        at: &At,
        key: &str,
        v: Json,
        ed: &mut Json,
        before: &mut Vec<Transform>,
    ) {
        if has_placeholders(&v) {
            if let Some(p) = self.dest_key(at, key) {
                self.placeholder_transforms(at, &p, v, Scope::ExecuteData, Some(ed), before);
            }
            return;
        }
        let segs: Vec<&str> = key.split('/').collect();
        if segs.iter().any(|s| !is_plain_name(s)) {
            self.err(
                at,
                format!("`{key}` cannot hold a constant"),
                Some("a constant's key is a plain element name (or `a/b` chain)".into()),
            );
            return;
        }
        insert_nested(ed, &segs, v);
    }

    fn output_entry(&mut self, at: &At, key: &str, v: Json, after: &mut Vec<Transform>) {
        let Some(p) = self.dest_key(at, key) else {
            return;
        };
        match v {
            Json::Null | Json::Array(_) => self.err(
                at,
                "an `output` value is a `{{ scope.path }}` reference or a text template",
                Some("write e.g. `zoneId: \"{{ executeData.id }}\"`".into()),
            ),
            Json::Object(_) if !has_placeholders(&v) => self.err(
                at,
                "an `output` value is a `{{ scope.path }}` reference or a text template",
                Some("write e.g. `zoneId: \"{{ executeData.id }}\"`".into()),
            ),
            other => self.placeholder_transforms(at, &p, other, Scope::Data, None, after),
        }
    }

    /// The destination path of a `with:`/`output:` key, validated.
    fn dest_key(&mut self, at: &At, key: &str) -> Option<String> {
        let k = key.trim();
        if k.is_empty() {
            self.err(at, "empty key", None);
            return None;
        }
        match Path::parse(k) {
            Ok(_) => Some(k.to_string()),
            Err(e) => {
                self.err(at, e.to_string(), None);
                None
            }
        }
    }

    /// Transforms for a value with placeholders written at destination path `dest`.
    /// Constants nested next to placeholders in a map go into `constants` (the
    /// executeData literal) when given, else become literal templates.
    fn placeholder_transforms(
        &mut self,
        at: &At,
        dest: &str,
        v: Json,
        destination: Scope,
        mut constants: Option<&mut Json>,
        out: &mut Vec<Transform>,
    ) {
        let sref = self.here(at);
        match v {
            Json::String(s) => {
                let source = if let Some((scope, path)) = is_single_ref(&s) {
                    TransformSource::Node { scope, path }
                } else {
                    if let Err(e) = parse_template(&s) {
                        self.err(
                            at,
                            e,
                            Some("placeholders look like `{{ data.name }}`".into()),
                        );
                        return;
                    }
                    TransformSource::Template(s)
                };
                out.push(Transform {
                    source,
                    destination,
                    destination_path: Some(dest.to_string()),
                    mode: Mode::Merge,
                    if_null: IfNull::Fail,
                    source_ref: sref,
                });
            }
            Json::Object(m) => {
                for (k, x) in m {
                    let sub = format!("{dest}/{k}");
                    let kat = at.key(&k);
                    if !is_plain_name(&k) {
                        self.err(&kat, format!("`{k}` is not a plain element name"), None);
                        continue;
                    }
                    if has_placeholders(&x) {
                        self.placeholder_transforms(
                            &kat,
                            &sub,
                            x,
                            destination.clone(),
                            constants.as_deref_mut(),
                            out,
                        );
                    } else if let Some(c) = constants.as_deref_mut() {
                        let segs: Vec<&str> = sub.split('/').collect();
                        if segs.iter().all(|s| is_plain_name(s)) {
                            insert_nested(c, &segs, x);
                        } else {
                            self.err(
                                &kat,
                                format!("`{sub}` cannot hold a constant"),
                                Some(
                                    "a constant's key is a plain element name (or `a/b` chain)"
                                        .into(),
                                ),
                            );
                        }
                    } else {
                        self.placeholder_transforms(
                            &kat,
                            &sub,
                            Json::String(json_text(&x)),
                            destination.clone(),
                            None,
                            out,
                        );
                    }
                }
            }
            Json::Array(_) => self.err(
                at,
                "placeholders inside lists are not supported",
                Some("move the list into data and reference it: `key: \"{{ data.list }}\"`".into()),
            ),
            other => {
                // a non-string scalar in `output`: a literal text template
                self.placeholder_transforms(
                    at,
                    dest,
                    Json::String(json_text(&other)),
                    destination,
                    None,
                    out,
                );
            }
        }
    }

    fn request(&mut self, d: RequestDef, format: Format, block: Block) -> Option<Request> {
        let at = At {
            block,
            path: Vec::new(),
        };
        let sref = SourceRef::new(&self.file, 1, 1);
        let target = match (d.call, d.procedure) {
            (Some(_), Some(_)) => {
                self.err(
                    &at.key("procedure"),
                    "a request has either `call` or `procedure`, not both",
                    Some("`call: Namespace/Procedure` runs a public procedure; `procedure: { steps: … }` is a trusted request".into()),
                );
                return None;
            }
            (None, None) => {
                self.errors.push(
                    ParseError::new(SourceRef::new(&self.file, 1, 1), "the request has neither `call` nor `procedure`")
                        .with_hint("write `call: Namespace/Procedure` (and `data: { … }`), or a trusted `procedure: { steps: … }`"),
                );
                return None;
            }
            (Some(Text(c)), None) => RequestTarget::Call(self.call_target(&at.key("call"), &c)?),
            (None, Some(p)) => {
                let mut proc_ = self.procedure("request", p, &at.key("procedure"))?;
                proc_.access = Access::Public;
                RequestTarget::Trusted(Box::new(proc_))
            }
        };
        let data = match d.data {
            Some(Lit(v)) => self.literal(&at.key("data"), "data", &v),
            None => Element::new("data"),
        };
        let context = match d.context {
            Some(Lit(v)) => self.literal(&at.key("context"), "context", &v),
            None => Element::new("context"),
        };
        if !self.errors.is_empty() {
            return None;
        }
        Some(Request {
            target,
            data,
            context,
            format,
            source_ref: sref,
        })
    }
}

/// Input type names.
const INPUT_TYPES: &[&str] = &["string", "int", "float", "bool", "list", "map"];

/// Namespace and procedure names: letters, digits, `_`, space, `-`, `.`.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.trim() == s
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | ' ' | '-' | '.'))
}

fn is_step_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn is_reserved_scope(s: &str) -> bool {
    matches!(s, "data" | "executeData" | "procedureData" | "context")
}

fn has_placeholders(v: &Json) -> bool {
    match v {
        Json::String(s) => template::has_placeholder(s),
        Json::Array(a) => a.iter().any(has_placeholders),
        Json::Object(m) => m.values().any(has_placeholders),
        _ => false,
    }
}

fn json_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

/// Sets `root[a][b]… = v`, merging maps that are already there.
fn insert_nested(root: &mut Json, segs: &[&str], v: Json) {
    let Json::Object(m) = root else {
        return;
    };
    match segs {
        [] => {}
        [last] => match (m.get_mut(*last), v) {
            (Some(old @ Json::Object(_)), Json::Object(new)) => {
                for (k, x) in new {
                    insert_nested(old, &[k.as_str()], x);
                }
            }
            (_, v) => {
                m.insert((*last).to_string(), v);
            }
        },
        [first, rest @ ..] => {
            let slot = m
                .entry((*first).to_string())
                .or_insert_with(|| Json::Object(JsonMap::new()));
            if !slot.is_object() {
                *slot = Json::Object(JsonMap::new());
            }
            insert_nested(slot, rest, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locator_finds_nested_keys() {
        let src = "namespace: A\nprocedures:\n  P:\n    steps:\n      a:\n        with: { zone: x }\n      zone:\n        call: X/Y\n";
        let loc = Locator::new(src);
        let root = loc.namespace_root(0);
        let path: Vec<String> = ["procedures", "P", "steps", "zone", "call"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(loc.find(root, &path), (8, 9));
        let path: Vec<String> = ["procedures", "P", "steps", "a", "with", "zone"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(loc.find(root, &path), (6, 17));
    }

    #[test]
    fn locator_list_of_namespaces_and_json() {
        let src =
            "- namespace: A\n  procedures:\n    P: {}\n- namespace: B\n  procedures:\n    Q: {}\n";
        let loc = Locator::new(src);
        let b = loc.namespace_root(1);
        assert_eq!((b.line, b.column), (4, 3));
        let path = vec!["procedures".to_string(), "Q".to_string()];
        assert_eq!(loc.find(b, &path), (6, 5));
        let json = "{\n  \"namespace\": \"A\",\n  \"procedures\": {\n    \"P\": {}\n  }\n}\n";
        let loc = Locator::new(json);
        let r = loc.namespace_root(0);
        let path = vec!["procedures".to_string(), "P".to_string()];
        assert_eq!(loc.find(r, &path), (4, 5));
    }

    #[test]
    fn unknown_hint_picks_closest() {
        let h = unknown_hint("unknown field `cal`, expected one of `call`, `with`, `output`")
            .unwrap_or_default();
        assert!(h.contains("did you mean `call`"), "{h}");
        assert!(h.contains("valid keys: call, with, output"), "{h}");
    }

    #[test]
    fn insert_nested_merges() {
        let mut j = serde_json::json!({"a": {"x": 1}});
        insert_nested(&mut j, &["a", "y"], serde_json::json!(2));
        insert_nested(&mut j, &["b"], serde_json::json!("t"));
        assert_eq!(j, serde_json::json!({"a": {"x": 1, "y": 2}, "b": "t"}));
    }
}
