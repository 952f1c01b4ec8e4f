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
use super::xml::read_script_file;
use super::{ParseError, MAX_DEPTH};
use crate::data::json::from_json;
use crate::data::{Element, IfNull, Mode, Path, Scalar};
use crate::model::{
    Access, CallTarget, ExecuteStep, ForEach, Format, InputSpec, Namespace, Ordering, ProcKind,
    Procedure, Repeat, Request, RequestTarget, Scope, Script, ScriptStep, SelectStep, SourceRef,
    Step, Transform, TransformSource, TryStep, When,
};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map as JsonMap, Value as Json};
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// A fast, non-keyed hasher (FxHash) for the parser's own tables, whose keys are names
/// and line numbers from the document: SipHash's protection buys nothing there and it
/// was a visible share of a parse.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            h = (h.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
        self.0 = h;
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Fx = BuildHasherDefault<FxHasher>;
type FxMap<K, V> = HashMap<K, V, Fx>;
type FxSet<K> = HashSet<K, Fx>;

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
        /// Up to this many keys, duplicates are found by comparing with each.
        const SCAN: usize = 8;
        let mut v: Vec<(String, T)> = Vec::new();
        // the keys, once there are more than `SCAN`
        let mut seen: FxSet<String> = FxSet::default();
        loop {
            let dup = |k: &str| {
                if v.len() <= SCAN {
                    v.iter().any(|(x, _)| x == k)
                } else {
                    seen.contains(k)
                }
            };
            let Some(k) = map.next_key_seed(NewKey(&dup))? else {
                break;
            };
            charge::<A::Error>(8)?;
            let val = map.next_value::<T>()?;
            if v.len() == SCAN {
                seen.extend(v.iter().map(|(x, _)| x.clone()));
            }
            if v.len() >= SCAN {
                seen.insert(k.clone());
            }
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

/// A mapping key for which `.0` (is it a key already?) is false (the error points at the key).
struct NewKey<'a>(&'a dyn Fn(&str) -> bool);

impl<'de> de::DeserializeSeed<'de> for NewKey<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        struct V<'a>(&'a dyn Fn(&str) -> bool);
        impl V<'_> {
            fn check<E: de::Error>(&self, k: String) -> Result<String, E> {
                charge(8 + k.len())?;
                if (self.0)(&k) {
                    return Err(custom(
                        format!("duplicate key `{k}`"),
                        "each key may appear once in a mapping",
                    ));
                }
                Ok(k)
            }
        }
        impl Visitor<'_> for V<'_> {
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
                Ok(ScalarDef(Scalar::Str(v.into())))
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
    output: Option<OutputDef>,
    #[serde(default)]
    needs: Option<Strings>,
    #[serde(default)]
    for_each: Option<ForEachDefs>,
    /// rhai conditions (all must hold).
    #[serde(default, rename = "if")]
    if_: Option<Strings>,
    #[serde(default)]
    script: Option<ScriptDef>,
    #[serde(default)]
    undo: Option<ScriptDef>,
    #[serde(default)]
    calls: Option<Strings>,
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

/// A step's `output:`: a mapping (call steps) or a path under `data` (script steps).
#[derive(Debug)]
enum OutputDef {
    Map(Ordered<Lit>),
    Path(String),
}

impl<'de> Deserialize<'de> for OutputDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OutputDef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping `{ dataKey: \"{{ executeData.x }}\" }` (or, on a script step, a path under data)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OutputDef, E> {
                charge(8 + v.len())?;
                Ok(OutputDef::Path(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<OutputDef, E> {
                Ok(OutputDef::Map(Ordered::default()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<OutputDef, A::Error> {
                Ordered::<Lit>::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(OutputDef::Map)
            }
        }
        d.deserialize_any(V)
    }
}

/// A script: its text, or `{ file: name.rhai }`.
#[derive(Debug)]
enum ScriptDef {
    Text(String),
    File(String),
}

impl<'de> Deserialize<'de> for ScriptDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ScriptDef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rhai script (usually a `|` block) or `{ file: name.rhai }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScriptDef, E> {
                charge(8 + v.len())?;
                Ok(ScriptDef::Text(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ScriptDef, A::Error> {
                let mut file = None;
                while let Some(k) = map.next_key::<Text>()? {
                    if k.0 != "file" || file.is_some() {
                        return Err(custom(
                            format!("unexpected key `{}` in a script", k.0),
                            "a script is its text, or `{ file: name.rhai }`",
                        ));
                    }
                    file = Some(map.next_value::<Text>()?.0);
                }
                file.map(ScriptDef::File).ok_or_else(|| {
                    custom(
                        "an empty script mapping",
                        "write `{ file: name.rhai }`, or the script's text",
                    )
                })
            }
        }
        d.deserialize_any(V)
    }
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
    /// rhai condition on `item`.
    #[serde(default)]
    filter: Option<Text>,
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
    expr: Option<Text>,
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
//
// Every procedure, step and transform gets a `SourceRef`, so a lookup runs per step and
// must not scan the source: the first lookup builds an index in one pass over the lines
// (indentation, the block-style key each line starts with, the next line that closes a
// block) and each lookup then costs a hash probe and a binary search per path segment.
// Flow-style and JSON keys in large regions (a minified JSON file is one line) go through
// a second index, built only when such a region is searched. Both indexes answer exactly
// what a scan of the lines would (`child` documents the scan); keys the indexes cannot
// represent fall back to the scan.

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
    /// Built on the first lookup.
    index: OnceCell<LineIndex<'a>>,
    /// Keys anywhere in a line (flow style, JSON), built when a large region is searched.
    flow: OnceCell<FxMap<&'a str, Vec<(u32, u32)>>>,
    /// Regions up to this many bytes are scanned for flow-style keys (`FLOW_SCAN_BYTES`).
    scan_bytes: usize,
    /// The previous lookup (see `find`).
    last: RefCell<LastFind>,
}

/// One pass over the lines.
struct LineIndex<'a> {
    /// Per line: content (see `is_content`), raw indent, effective indent.
    content: Vec<bool>,
    raw: Vec<usize>,
    eff: Vec<usize>,
    /// Byte offset where each line starts, plus the end (sizes of regions).
    offsets: Vec<usize>,
    /// `next_content[n]`: the first content line at or after `n` (`lines.len()` if none).
    next_content: Vec<usize>,
    /// For a content line: the next content line with a smaller raw indent.
    next_outdent: Vec<usize>,
    /// Block-style keys: (effective indent, key) → the content lines starting with it.
    keys: FxMap<(usize, &'a str), Lines>,
    /// The `namespace` keys: (line, column), in order.
    namespaces: Vec<(usize, usize)>,
}

/// The lines (ascending) a block key is on; most keys (step ids) are on one.
enum Lines {
    One(u32),
    Many(Vec<u32>),
}

impl Lines {
    fn push(&mut self, n: u32) {
        match self {
            Lines::One(first) => *self = Lines::Many(vec![*first, n]),
            Lines::Many(v) => v.push(n),
        }
    }
    fn as_slice(&self) -> &[u32] {
        match self {
            Lines::One(n) => std::slice::from_ref(n),
            Lines::Many(v) => v,
        }
    }
}

/// Below this many bytes a flow-style region is scanned rather than indexed.
const FLOW_SCAN_BYTES: usize = 4096;
/// Longest key the flow index holds.
const FLOW_KEY_MAX: usize = 128;
/// Most delimiters (see `is_key_delim`) inside a key the flow index holds.
const FLOW_KEY_DELIMS: usize = 16;

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

/// The key a line body starts with, as `starts_with_key` sees it: for every key `k` that
/// `block_indexable` accepts, `starts_with_key(s, k)` ⇔ `block_key(s) == Some(k)`.
fn block_key(s: &str) -> Option<&str> {
    let q = match s.as_bytes().first() {
        Some(&q @ (b'"' | b'\'')) => q,
        _ => {
            let i = s.find(':')?;
            let after = &s.as_bytes()[i + 1..];
            if !(after.is_empty() || after[0] == b' ' || after[0] == b'\t') {
                return None;
            }
            return Some(s[..i].trim_end_matches(' ')).filter(|k| !k.is_empty());
        }
    };
    let close = 1 + s.as_bytes()[1..].iter().position(|&b| b == q)?;
    let rest = s[close + 1..].trim_start_matches(' ');
    (rest.starts_with(':') && close > 1).then(|| &s[1..close])
}

/// Keys `block_key` finds every occurrence of (others are looked up by scanning).
fn block_indexable(key: &str) -> bool {
    !key.is_empty() && !key.contains([':', '"', '\'']) && !key.ends_with(' ')
}

/// Characters that may precede a key found anywhere in a line.
fn is_key_delim(b: u8) -> bool {
    matches!(b, b' ' | b'{' | b',' | b'\t' | b'-')
}

/// Characters the flow index does not look past when collecting keys.
fn breaks_flow_key(b: u8) -> bool {
    matches!(b, b'{' | b'}' | b'[' | b']' | b',' | b':' | b'"' | b'\'')
}

/// Keys the flow index finds every `find_key_anywhere` match of: short, without the
/// characters it stops at, not starting or ending with blanks, with few delimiters, and
/// without a border (so occurrences never overlap, and the scan sees each of them).
fn flow_indexable(key: &str) -> bool {
    let b = key.as_bytes();
    if b.is_empty()
        || b.len() > FLOW_KEY_MAX
        || b.iter().any(|&c| breaks_flow_key(c))
        || matches!(b[0], b' ' | b'\t')
        || matches!(b[b.len() - 1], b' ' | b'\t')
        || b.iter().filter(|&&c| is_key_delim(c)).count() >= FLOW_KEY_DELIMS
    {
        return false;
    }
    // KMP failure function: the longest proper prefix that is also a suffix.
    let mut fail = vec![0usize; b.len()];
    let mut k = 0;
    for i in 1..b.len() {
        while k > 0 && b[i] != b[k] {
            k = fail[k - 1];
        }
        if b[i] == b[k] {
            k += 1;
        }
        fail[i] = k;
    }
    fail[b.len() - 1] == 0
}

/// Every `(key, column)` that `find_key_anywhere(line, key)` could match, for keys that
/// `flow_indexable` accepts (and some others, which are never looked up).
fn flow_keys<'l>(line: &'l str, mut emit: impl FnMut(&'l str, usize)) {
    let b = line.as_bytes();
    for (c, _) in b.iter().enumerate().filter(|(_, &x)| x == b':') {
        // the key ends before the blanks in front of the colon
        let mut e = c;
        while e > 0 && b[e - 1] == b' ' {
            e -= 1;
        }
        if e == 0 {
            continue;
        }
        // "key":
        let q = b[e - 1];
        if q == b'"' || q == b'\'' {
            let lo = (e - 1).saturating_sub(FLOW_KEY_MAX + 1);
            if let Some(p) = b[lo..e - 1].iter().rposition(|&x| x == q).map(|p| lo + p) {
                if p + 1 < e - 1 && (p == 0 || is_key_delim(b[p - 1])) {
                    emit(&line[p + 1..e - 1], p);
                }
            }
            continue;
        }
        // key: — every start after a delimiter, back to a character that ends keys
        let mut bounds = 0;
        let mut s = e;
        while s > 0 && e - s < FLOW_KEY_MAX {
            s -= 1;
            if s == 0 || is_key_delim(b[s - 1]) {
                if !matches!(b[s], b' ' | b'\t') {
                    emit(&line[s..e], s);
                }
                bounds += 1;
                if bounds > FLOW_KEY_DELIMS {
                    break;
                }
            }
            if s > 0 && breaks_flow_key(b[s - 1]) {
                break;
            }
        }
    }
}

impl<'a> LineIndex<'a> {
    fn new(lines: &[&'a str]) -> Self {
        let len = lines.len();
        let mut ix = LineIndex {
            content: Vec::with_capacity(len),
            raw: Vec::with_capacity(len),
            eff: Vec::with_capacity(len),
            offsets: Vec::with_capacity(len + 1),
            next_content: vec![len; len + 1],
            next_outdent: vec![len; len],
            keys: FxMap::default(),
            namespaces: Vec::new(),
        };
        let mut offset = 0;
        for (n, line) in lines.iter().enumerate() {
            let content = is_content(line);
            let (raw, eff) = effective_indent(line);
            let body = line.get(eff..).unwrap_or("");
            if content {
                if let Some(k) = block_key(body) {
                    match ix.keys.entry((eff, k)) {
                        Entry::Vacant(e) => {
                            e.insert(Lines::One(n as u32));
                        }
                        Entry::Occupied(mut e) => e.get_mut().push(n as u32),
                    }
                }
            }
            let ns = if !line.contains("namespace") {
                None
            } else if starts_with_key(body, "namespace") {
                Some(eff)
            } else {
                // flow style / JSON on one line
                find_key_anywhere(line, "namespace")
            };
            if let Some(col) = ns {
                ix.namespaces.push((n, col));
            }
            ix.content.push(content);
            ix.raw.push(raw);
            ix.eff.push(eff);
            ix.offsets.push(offset);
            offset += line.len() + 1;
        }
        ix.offsets.push(offset);
        // next smaller raw indent, right to left over the content lines
        let mut stack: Vec<usize> = Vec::new();
        for n in (0..len).rev() {
            if ix.content[n] {
                while stack.last().is_some_and(|&t| ix.raw[t] >= ix.raw[n]) {
                    stack.pop();
                }
                ix.next_outdent[n] = stack.last().copied().unwrap_or(len);
                stack.push(n);
                ix.next_content[n] = n;
            } else {
                ix.next_content[n] = ix.next_content[n + 1];
            }
        }
        ix
    }
}

impl<'a> Locator<'a> {
    fn new(src: &'a str) -> Self {
        Locator {
            lines: src.lines().collect(),
            index: OnceCell::new(),
            flow: OnceCell::new(),
            scan_bytes: FLOW_SCAN_BYTES,
            last: RefCell::default(),
        }
    }

    fn ix(&self) -> &LineIndex<'a> {
        self.index.get_or_init(|| LineIndex::new(&self.lines))
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
        let Some(&(n, col)) = self.ix().namespaces.get(i) else {
            return self.root();
        };
        let end = match col {
            0 => self.lines.len(),
            c => self.block_end(n, c - 1),
        };
        Block {
            start: n,
            end,
            indent: Some(col),
            line: n as u32 + 1,
            column: col as u32 + 1,
        }
    }

    /// First content line after `from` whose raw indent is `<= indent`.
    fn block_end(&self, from: usize, indent: usize) -> usize {
        let ix = self.ix();
        let len = self.lines.len();
        let mut m = ix.next_content.get(from + 1).copied().unwrap_or(len);
        // the content lines skipped over have a raw indent >= `raw[m]` > `indent`
        while m < len && ix.raw[m] > indent {
            m = ix.next_outdent[m];
        }
        m
    }

    /// The child `key` of `block`: the first content line of the block whose key, at the
    /// block's indentation (given, or that of its first content line), is `key`; else
    /// (flow style, irregular layout) the first `key:` anywhere in the block's lines,
    /// including the line of the key that opened it (`with: { zone: … }`).
    fn child(&self, block: Block, key: &str) -> Option<Block> {
        let ix = self.ix();
        let stop = block.end.min(self.lines.len());
        let indent = block.indent.or_else(|| {
            let n = ix.next_content[block.start.min(self.lines.len())];
            (n < stop).then(|| ix.eff[n])
        });
        if let Some(ind) = indent {
            if let Some(n) = self.key_line(block.start, stop, ind, key) {
                let end = self.block_end(n, ind);
                return Some(Block {
                    start: n + 1,
                    end,
                    indent: None,
                    line: n as u32 + 1,
                    column: ind as u32 + 1,
                });
            }
        }
        let from = if block.line > 0 {
            (block.line as usize - 1).min(block.start)
        } else {
            block.start
        };
        let (n, col) = self.key_anywhere(from, stop, key)?;
        Some(Block {
            start: n,
            end: block.end,
            indent: None,
            line: n as u32 + 1,
            column: col as u32 + 1,
        })
    }

    /// The first content line in `start..stop` with block key `key` at indent `ind`.
    fn key_line(&self, start: usize, stop: usize, ind: usize, key: &str) -> Option<usize> {
        let ix = self.ix();
        if block_indexable(key) {
            let lines = ix.keys.get(&(ind, key))?.as_slice();
            let i = lines.partition_point(|&l| (l as usize) < start);
            lines.get(i).map(|&l| l as usize).filter(|&l| l < stop)
        } else {
            (start..stop).find(|&n| {
                ix.content[n]
                    && ix.eff[n] == ind
                    && starts_with_key(self.lines[n].get(ind..).unwrap_or(""), key)
            })
        }
    }

    /// The first line in `from..stop` where `key:` appears anywhere, and its column.
    fn key_anywhere(&self, from: usize, stop: usize, key: &str) -> Option<(usize, usize)> {
        if from >= stop {
            return None;
        }
        let ix = self.ix();
        if ix.offsets[stop] - ix.offsets[from] <= self.scan_bytes || !flow_indexable(key) {
            return (from..stop)
                .find_map(|n| find_key_anywhere(self.lines[n], key).map(|c| (n, c)));
        }
        let flow = self.flow.get_or_init(|| {
            let mut m: FxMap<&'a str, Vec<(u32, u32)>> = FxMap::default();
            for (n, line) in self.lines.iter().enumerate() {
                flow_keys(line, |k, col| {
                    m.entry(k).or_default().push((n as u32, col as u32));
                });
            }
            // by line, then column: a line's first hit is its leftmost
            for hits in m.values_mut() {
                hits.sort_unstable();
            }
            m
        });
        let hits = flow.get(key)?;
        let i = hits.partition_point(|&(l, _)| (l as usize) < from);
        let &(line, col) = hits.get(i)?;
        ((line as usize) < stop).then_some((line as usize, col as usize))
    }

    /// The location of a field path below `block`: the deepest key found.
    ///
    /// Lookups come in document order and share their prefixes
    /// (`procedures.P.steps.a`, `procedures.P.steps.a.with.x`, `procedures.P.steps.b`),
    /// so the blocks of the previous path are reused for the common prefix.
    fn find<S: AsRef<str>>(&self, block: Block, path: &[S]) -> (u32, u32) {
        let Ok(mut last) = self.last.try_borrow_mut() else {
            let mut b = block;
            for k in path {
                match self.child(b, k.as_ref()) {
                    Some(c) => b = c,
                    None => break,
                }
            }
            return (b.line, b.column);
        };
        if last.root != Some(block) {
            last.root = Some(block);
            last.keys.clear();
            last.blocks.clear();
        }
        let common = last
            .keys
            .iter()
            .zip(path)
            .take_while(|(a, b)| a.as_str() == b.as_ref())
            .count();
        last.keys.truncate(common);
        last.blocks.truncate(common);
        // `None` once a key is not found: the walk stops there
        let mut b = match common {
            0 => Some(block),
            n => last.blocks[n - 1],
        };
        for k in &path[common..] {
            b = b.and_then(|cur| self.child(cur, k.as_ref()));
            last.keys.push(k.as_ref().to_string());
            last.blocks.push(b);
        }
        let b = last.blocks.iter().map_while(|x| *x).last().unwrap_or(block);
        (b.line, b.column)
    }
}

/// The previous `Locator::find`: where it started, its keys, and the block each resolved
/// to (`None` from the first key not found).
#[derive(Default)]
struct LastFind {
    root: Option<Block>,
    keys: Vec<String>,
    blocks: Vec<Option<Block>>,
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

/// Where we are: the block of the current def and its field path, as a chain of borrowed
/// keys (`key` costs nothing; the path is only spelled out to locate or report it).
#[derive(Clone, Copy)]
struct At<'p> {
    block: Block,
    /// The parent and the last key; `None` at the root.
    up: Option<(&'p At<'p>, &'p str)>,
}

impl<'p> At<'p> {
    fn root(block: Block) -> At<'static> {
        At { block, up: None }
    }
    fn key(&'p self, k: &'p str) -> At<'p> {
        At {
            block: self.block,
            up: Some((self, k)),
        }
    }
    /// The keys from the root.
    fn path(&self) -> Vec<&'p str> {
        let mut out = Vec::with_capacity(8);
        let mut cur = self.up;
        while let Some((parent, k)) = cur {
            out.push(k);
            cur = parent.up;
        }
        out.reverse();
        out
    }
    fn last(&self) -> Option<&'p str> {
        self.up.map(|(_, k)| k)
    }
    fn dotted(&self) -> String {
        self.path().join(".")
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
        let (l, c) = self.loc.find(at.block, &at.path());
        SourceRef::new(&self.file, l, c)
    }

    fn err(&mut self, at: &At, msg: impl fmt::Display, hint: Option<String>) {
        let sref = self.here(at);
        let mut e = ParseError::new(sref, format!("`{}`: {msg}", at.dotted()));
        e.hint = hint;
        self.errors.push(e);
    }

    fn namespace(&mut self, d: NamespaceDef, block: Block) -> Option<Namespace> {
        let at = At::root(block);
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
        let procs = at.key("procedures");
        for (pname, pd) in d.procedures.unwrap_or_default().0 {
            let pat = procs.key(&pname);
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
        let inputs = at.key("inputs");
        for (iname, idef) in d.inputs.unwrap_or_default().0 {
            let iat = inputs.key(&iname);
            if let Some(i) = self.input(&iname, idef, &iat) {
                p.inputs.push(i);
            }
        }
        if let Some(Lit(v)) = d.procedure_data {
            p.procedure_data = self.literal(&at.key("procedureData"), "procedureData", &v);
        }
        let mut ids = FxSet::default();
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
            // what `from_json` gives for `{}`, without its bookkeeping (most steps)
            Json::Object(m) if m.is_empty() => Element::new(root),
            Json::Object(_) => match from_json(root, v) {
                Ok(mut e) => {
                    e.name = root.into();
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

    fn steps(&mut self, d: Ordered<StepDef>, at: &At, ids: &mut FxSet<String>) -> Vec<Step> {
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
            ids.insert(id.clone());
            if let Some(s) = self.step(&id, sd, &sat, ids) {
                out.push(s);
            }
        }
        out
    }

    fn step(&mut self, id: &str, d: StepDef, at: &At, ids: &mut FxSet<String>) -> Option<Step> {
        let sref = self.here(at);
        let needs = d.needs.clone().unwrap_or_default().0;
        let n0 = self.errors.len();
        for n in &needs {
            if n == id {
                self.err(&at.key("needs"), format!("step `{id}` needs itself"), None);
            }
        }
        if d.script.is_some() {
            return self
                .script_step(id, d, at, needs, sref, n0)
                .map(Step::Script);
        }
        for (k, present) in [("undo", d.undo.is_some()), ("calls", d.calls.is_some())] {
            if present {
                self.err(
                    &at.key(k),
                    format!("`{k}` belongs to a script step, and this step has no `script`"),
                    Some("add `script: |` with the rhai source, or remove the key".into()),
                );
                return None;
            }
        }
        let exec_keys: Vec<&str> = [
            ("call", d.call.is_some()),
            ("with", d.with.is_some()),
            ("output", d.output.is_some()),
            ("forEach", d.for_each.is_some()),
            ("if", d.if_.is_some()),
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
        let mut filter_whens = Vec::new();
        let mut filters = 0;
        match d.for_each {
            None => {}
            Some(ForEachDefs::Items(items)) => {
                let fe = at.key("forEach");
                for (i, it) in items.into_iter().enumerate() {
                    let nth = i.to_string();
                    let fat = fe.key(&nth);
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
                    if let Some(Text(f)) = it.filter {
                        let origin = self.item_value_origin(&at.key("forEach"), "filter", filters);
                        filters += 1;
                        if f.trim().is_empty() {
                            self.err(
                                &fat,
                                "`filter` is empty",
                                Some(
                                    "write a rhai condition on `item`, e.g. `item.enabled == true`"
                                        .into(),
                                ),
                            );
                        }
                        filter_whens.push(When::Filter {
                            for_each: name.clone(),
                            script: Script::new(f, origin),
                        });
                    }
                    for_each.push(ForEach {
                        name,
                        root,
                        path,
                        if_null: it.if_null.unwrap_or_default(),
                    });
                }
            }
            Some(ForEachDefs::Short(items)) => {
                let fe = at.key("forEach");
                for (name, r) in items {
                    let fat = fe.key(&name);
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
        // when / unless / if / filters
        let mut when = filter_whens;
        when.extend(self.if_conditions(at, d.if_));
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
        let mut exprs = 0;
        let bat = at.key("before");
        for (i, t) in d.before.unwrap_or_default().0.into_iter().enumerate() {
            let nth = i.to_string();
            let tat = bat.key(&nth);
            let origin = t.expr.is_some().then(|| {
                exprs += 1;
                self.item_value_origin(&at.key("before"), "expr", exprs - 1)
            });
            if let Some(t) = self.transform(&tat, t, Scope::Data, Scope::ExecuteData, origin) {
                before.push(t);
            }
        }
        let mut after = Vec::new();
        let with = at.key("with");
        for (k, Lit(v)) in d.with.unwrap_or_default().0 {
            let wat = with.key(&k);
            self.with_entry(&wat, &k, v, &mut ed, &mut before);
        }
        match d.output {
            None => {}
            Some(OutputDef::Map(m)) => {
                let out = at.key("output");
                for (k, Lit(v)) in m.0 {
                    let oat = out.key(&k);
                    self.output_entry(&oat, &k, v, &mut after);
                }
            }
            Some(OutputDef::Path(_)) => self.err(
                &at.key("output"),
                "the `output` of a call step is a mapping",
                Some("write `output: { dataKey: \"{{ executeData.x }}\" }`; a path is only for script steps".into()),
            ),
        }
        let mut exprs = 0;
        let aat = at.key("after");
        for (i, t) in d.after.unwrap_or_default().0.into_iter().enumerate() {
            let nth = i.to_string();
            let tat = aat.key(&nth);
            let origin = t.expr.is_some().then(|| {
                exprs += 1;
                self.item_value_origin(&at.key("after"), "expr", exprs - 1)
            });
            if let Some(t) = self.transform(&tat, t, Scope::ExecuteData, Scope::Data, origin) {
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
        expr_origin: Option<SourceRef>,
    ) -> Option<Transform> {
        let n0 = self.errors.len();
        let sref = self.here(at);
        if t.expr.is_some() {
            if let Some(k) = [
                ("source", t.source.is_some()),
                ("sourcePath", t.source_path.is_some()),
                ("template", t.template.is_some()),
            ]
            .iter()
            .find(|(_, p)| *p)
            .map(|(k, _)| *k)
            {
                // List items are not located by key; the `expr` value is.
                let mut e = ParseError::new(
                    expr_origin.unwrap_or(sref),
                    format!(
                        "`{}`: a transform has either `expr` or `{k}`, not both",
                        at.dotted()
                    ),
                );
                e.hint =
                    Some("`expr` computes the value; source/sourcePath/template select it".into());
                self.errors.push(e);
                return None;
            }
        }
        let source = match (t.expr, t.template) {
            (Some(Text(e)), _) => {
                if e.trim().is_empty() {
                    self.err(&at.key("expr"), "`expr` is empty", None);
                }
                if t.mode == Some(Mode::Move) {
                    self.err(
                        &at.key("mode"),
                        "mode `move` needs a source node, not an expression",
                        None,
                    );
                }
                TransformSource::Expr(Script::new(e, expr_origin.unwrap_or_else(|| sref.clone())))
            }
            (None, Some(Text(tpl))) => {
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
            (None, None) => {
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
        if let Some(script) = self.expr_value(at, &v) {
            if let (Some(p), Some(script)) = (self.dest_key(at, key), script) {
                before.push(expr_transform(script, Scope::ExecuteData, p, self.here(at)));
            }
            return;
        }
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
        if let Some(script) = self.expr_value(at, &v) {
            if let Some(script) = script {
                after.push(expr_transform(script, Scope::Data, p, self.here(at)));
            }
            return;
        }
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

    /// A `{ $expr: "<rhai>" }` value: `None` when `v` is something else, `Some(None)` when it
    /// is a malformed one (the error is recorded).
    fn expr_value(&mut self, at: &At, v: &Json) -> Option<Option<Script>> {
        let Json::Object(m) = v else {
            return None;
        };
        let e = m.get("$expr")?;
        if m.len() > 1 {
            let others: Vec<&str> = m
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "$expr")
                .collect();
            self.err(
                at,
                format!("`$expr` stands alone; this mapping also has `{}`", others.join("`, `")),
                Some("write `key: { $expr: \"…\" }` and build a map inside the expression: `#{ a: 1, b: data.x }`".into()),
            );
            return Some(None);
        }
        match e {
            Json::String(src) if !src.trim().is_empty() => {
                let origin = self.value_origin(&at.key("$expr"));
                Some(Some(Script::new(src.clone(), origin)))
            }
            _ => {
                self.err(
                    &at.key("$expr"),
                    "`$expr` holds a rhai expression as a string",
                    Some(
                        "write e.g. `upn: { $expr: 'lower(data.first) + \"@\" + data.domain' }`"
                            .into(),
                    ),
                );
                Some(None)
            }
        }
    }

    /// The `if:` conditions of a step (one string or a list of them).
    fn if_conditions(&mut self, at: &At, d: Option<Strings>) -> Vec<When> {
        let Some(Strings(list)) = d else {
            return Vec::new();
        };
        let iat = at.key("if");
        let single = list.len() == 1;
        let mut out = Vec::new();
        for (i, src) in list.into_iter().enumerate() {
            if src.trim().is_empty() {
                self.err(
                    &iat,
                    "an empty `if` condition",
                    Some("write a rhai condition such as `data.count > 1`".into()),
                );
                continue;
            }
            let origin = if single {
                self.value_origin(&iat)
            } else {
                self.list_item_origin(&iat, i)
            };
            out.push(When::Expr(Script::new(src, origin)));
        }
        out
    }

    /// A script step: `script:` with `undo`, `calls`, `output` (a path under data), `if`,
    /// `when`, `unless` and `needs`.
    fn script_step(
        &mut self,
        id: &str,
        d: StepDef,
        at: &At,
        needs: Vec<String>,
        sref: SourceRef,
        n0: usize,
    ) -> Option<ScriptStep> {
        let others = [
            ("call", d.call.is_some()),
            ("try", d.try_.is_some()),
            ("catch", d.catch.is_some()),
            ("select", d.select.is_some()),
            ("with", d.with.is_some()),
            ("forEach", d.for_each.is_some()),
            ("repeat", d.repeat.is_some()),
            ("executeData", d.execute_data.is_some()),
            ("before", d.before.is_some()),
            ("after", d.after.is_some()),
        ];
        if let Some((k, _)) = others.iter().find(|(_, p)| *p) {
            self.err(
                &at.key(k),
                format!("a `script` step cannot also have `{k}`"),
                Some("a script step has `script`, `undo`, `calls`, `output`, `if`, `when`, `unless` and `needs`; call procedures from the script with `call_procedure` (listed in `calls:`), or make two steps".into()),
            );
            return None;
        }
        let script = d.script.and_then(|s| self.script(&at.key("script"), s))?;
        let undo = match d.undo {
            None => None,
            Some(u) => Some(self.script(&at.key("undo"), u)?),
        };
        let mut calls = Vec::new();
        for c in d.calls.unwrap_or_default().0 {
            if let Some(t) = self.call_target(&at.key("calls"), &c) {
                calls.push(t);
            }
        }
        let output = match d.output {
            None => None,
            Some(OutputDef::Path(p)) => {
                let p = p.trim().to_string();
                if p == "data" || p.starts_with("data/") || p.starts_with("data.") {
                    self.err(
                        &at.key("output"),
                        format!("`output` is a path under data; `{p}` names `data` again"),
                        Some("write `output: results/made` for data/results/made".into()),
                    );
                    None
                } else {
                    self.opt_path(&at.key("output"), Some(p))
                }
            }
            Some(OutputDef::Map(_)) => {
                self.err(
                    &at.key("output"),
                    "the `output` of a script step is a path under data",
                    Some("write `output: results/made`; without `output` the script returns a map merged into data".into()),
                );
                None
            }
        };
        let mut when = self.if_conditions(at, d.if_);
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
        (self.errors.len() == n0).then(|| ScriptStep {
            id: id.to_string(),
            script,
            undo,
            calls,
            when,
            output,
            needs,
            source_ref: sref,
        })
    }

    /// A `script:`/`undo:` value: its text located in this file, or the file it names
    /// (read now, relative to this file's folder).
    fn script(&mut self, at: &At, d: ScriptDef) -> Option<Script> {
        match d {
            ScriptDef::Text(src) => {
                if src.trim().is_empty() {
                    self.err(
                        at,
                        "an empty script",
                        Some("write the rhai source, usually as a `|` block".into()),
                    );
                    return None;
                }
                Some(Script::new(src, self.value_origin(at)))
            }
            ScriptDef::File(name) => {
                let file = self.file.clone();
                let sref = self.here(at);
                match read_script_file(&file, &name, sref) {
                    Ok(s) => Some(s),
                    Err(mut e) => {
                        e.message = format!("`{}`: {}", at.dotted(), e.message);
                        self.errors.push(e);
                        None
                    }
                }
            }
        }
    }

    /// The block of a field path (the deepest key found).
    fn block_of(&self, at: &At) -> Block {
        let mut b = at.block;
        for k in at.path() {
            match self.loc.child(b, k) {
                Some(c) => b = c,
                None => break,
            }
        }
        b
    }

    /// Where the value of the key `at` names starts (script origins): a block scalar
    /// (`|`, `>`) on its first non-blank line, at its indentation; a quoted string after
    /// its quote; a plain one at its first character. Falls back to the key.
    fn value_origin(&self, at: &At) -> SourceRef {
        let b = self.block_of(at);
        let key = at.last().unwrap_or("");
        self.value_after_key(b.line, b.column, key)
    }

    /// The origin of the value of the `nth` `key:` (0-based) inside the list at `list`
    /// (`forEach` items' `filter`, `before`/`after` items' `expr`).
    fn item_value_origin(&self, list: &At, key: &str, nth: usize) -> SourceRef {
        let b = self.block_of(list);
        let stop = b.end.min(self.loc.lines.len());
        let mut from = (b.line as usize).saturating_sub(1);
        let mut seen = 0;
        while let Some((n, col)) = self.loc.key_anywhere(from, stop, key) {
            if seen == nth {
                return self.value_after_key(n as u32 + 1, col as u32 + 1, key);
            }
            seen += 1;
            from = n + 1;
        }
        SourceRef::new(&self.file, b.line, b.column)
    }

    /// The origin of item `i` of a block list (`- "…"` lines) under the key `at` names;
    /// falls back to the key's value.
    fn list_item_origin(&self, at: &At, i: usize) -> SourceRef {
        let b = self.block_of(at);
        let stop = b.end.min(self.loc.lines.len());
        let items = (b.line as usize..stop).filter_map(|n| {
            let line = self.loc.lines[n];
            let t = line.trim_start_matches(' ');
            t.strip_prefix("- ").map(|rest| {
                let rest_at = line.len() - rest.len();
                let skip = rest.len() - rest.trim_start_matches(' ').len();
                (n, rest_at + skip)
            })
        });
        match items.into_iter().nth(i) {
            Some((n, v)) => self.value_start(n, v),
            None => self.value_origin(at),
        }
    }

    /// The origin of the value after `key:` on 1-based line `l`, the key at byte column `c`.
    fn value_after_key(&self, l: u32, c: u32, key: &str) -> SourceRef {
        let fallback = SourceRef::new(&self.file, l, c);
        let Some(n) = (l as usize).checked_sub(1) else {
            return fallback;
        };
        let Some(line) = self.loc.lines.get(n).copied() else {
            return fallback;
        };
        let start = (c as usize).saturating_sub(1);
        let Some(k) = line.get(start..).and_then(|r| r.find(key)) else {
            return fallback;
        };
        let bytes = line.as_bytes();
        let mut v = start + k + key.len();
        if matches!(bytes.get(v), Some(b'"' | b'\'')) {
            v += 1;
        }
        while bytes.get(v) == Some(&b' ') {
            v += 1;
        }
        if bytes.get(v) != Some(&b':') {
            return fallback;
        }
        v += 1;
        while matches!(bytes.get(v), Some(b' ' | b'\t')) {
            v += 1;
        }
        self.value_start(n, v)
    }

    /// The origin of a value starting at byte `v` of 0-based line `n`.
    fn value_start(&self, n: usize, v: usize) -> SourceRef {
        let line = self.loc.lines.get(n).copied().unwrap_or("");
        let bytes = line.as_bytes();
        let mut v = v.min(line.len());
        match bytes.get(v) {
            Some(b'|' | b'>') => {
                for (m, next) in self.loc.lines.iter().enumerate().skip(n + 1) {
                    if next.trim().is_empty() {
                        continue;
                    }
                    let ind = next.len() - next.trim_start_matches([' ', '\t']).len();
                    return SourceRef::new(&self.file, m as u32 + 1, ind as u32 + 1);
                }
            }
            Some(b'"' | b'\'') => v += 1,
            _ => {}
        }
        let column = line.get(..v).map_or(v, |p| p.chars().count());
        SourceRef::new(&self.file, n as u32 + 1, column as u32 + 1)
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
        let at = At::root(block);
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

/// A `$expr` transform into `destination`/`path` (merge; an expression giving `()` fails).
fn expr_transform(
    script: Script,
    destination: Scope,
    path: String,
    source_ref: SourceRef,
) -> Transform {
    Transform {
        source: TransformSource::Expr(script),
        destination,
        destination_path: Some(path),
        mode: Mode::Merge,
        if_null: IfNull::Fail,
        source_ref,
    }
}

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

    // -----------------------------------------------------------------------------------
    // The indexed locator answers exactly what the scanning one (before the index) did.

    /// The scanning locator the index replaced, kept as the reference.
    struct OldLocator<'a> {
        lines: Vec<&'a str>,
    }

    impl<'a> OldLocator<'a> {
        fn new(src: &'a str) -> Self {
            OldLocator {
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

    /// Every key path of a YAML/JSON document (list items by index), plus misses.
    fn doc_paths(src: &str) -> Vec<Vec<String>> {
        fn walk(v: &serde_yaml::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            out.push(path.clone());
            for extra in ["nope", "call", "a-a"] {
                let mut p = path.clone();
                p.push(extra.to_string());
                out.push(p);
            }
            match v {
                serde_yaml::Value::Mapping(m) => {
                    for (k, x) in m {
                        let k = match k {
                            serde_yaml::Value::String(s) => s.clone(),
                            other => serde_yaml::to_string(other)
                                .unwrap_or_default()
                                .trim()
                                .to_string(),
                        };
                        path.push(k);
                        walk(x, path, out);
                        path.pop();
                    }
                }
                serde_yaml::Value::Sequence(s) => {
                    for (i, x) in s.iter().enumerate() {
                        path.push(i.to_string());
                        walk(x, path, out);
                        path.pop();
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(src) {
            // an invalid document ends the stream (the iterator would repeat the error)
            let Ok(v) = serde_yaml::Value::deserialize(doc) else {
                break;
            };
            match &v {
                // a list of namespaces: paths below each item too
                serde_yaml::Value::Sequence(items) => {
                    for x in items {
                        walk(x, &mut Vec::new(), &mut out);
                    }
                }
                _ => walk(&v, &mut Vec::new(), &mut out),
            }
        }
        out
    }

    fn assert_same_as_scan(src: &str, paths: &[Vec<String>]) {
        let old = OldLocator::new(src);
        // the default, and one that always uses the flow index
        let new = Locator::new(src);
        let mut flow = Locator::new(src);
        flow.scan_bytes = 0;
        let mut roots = vec![old.root()];
        roots.extend((0..3).map(|i| old.namespace_root(i)));
        for (i, o) in roots.into_iter().enumerate() {
            let n = match i {
                0 => new.root(),
                i => new.namespace_root(i - 1),
            };
            assert_eq!(o, n, "namespace root in {src:?}");
            for p in paths {
                let want = old.find(o, p);
                assert_eq!(want, new.find(n, p), "path {p:?} in {src:?}");
                assert_eq!(want, flow.find(n, p), "path {p:?}, flow index, in {src:?}");
            }
        }
    }

    fn big_json(n: usize, pretty: bool) -> String {
        let steps: JsonMap<String, Json> = (0..n)
            .map(|i| {
                (
                    format!("s-{i}"),
                    serde_json::json!({ "call": "A/B", "with": { "x": format!("{{{{ data.v{i} }}}}") } }),
                )
            })
            .collect();
        let j = serde_json::json!({ "namespace": "N", "procedures": { "P": { "steps": steps } } });
        let r = if pretty {
            serde_json::to_string_pretty(&j)
        } else {
            serde_json::to_string(&j)
        };
        r.unwrap_or_default()
    }

    #[test]
    fn index_matches_scan_on_samples() {
        let mut docs: Vec<String> = [
            include_str!("../../tests/fixtures/yaml/architecture-dns.yaml"),
            include_str!("../../tests/fixtures/yaml/architecture-request.yaml"),
            include_str!("../../tests/fixtures/yaml/full.yaml"),
            include_str!("../../tests/fixtures/yaml/request.json"),
            include_str!("../../tests/fixtures/yaml/trusted-request.yaml"),
            include_str!("../../tests/fixtures/yaml/two-namespaces.yaml"),
            "namespace: A\nprocedures:\n  P:\n    steps:\n      a:\n        with: { zone: x }\n      zone:\n        call: X/Y\n",
            "- namespace: A\n  procedures:\n    P: {}\n- namespace: B\n  procedures:\n    Q: {}\n",
            "{\n  \"namespace\": \"A\",\n  \"procedures\": {\n    \"P\": {}\n  }\n}\n",
            "# namespace: commented\nnamespace: A\nprocedures: { P: { steps: { a: { call: X/Y, with: { 'k': \"v\", a-a: 1 } }, aa: {} } } }\n",
            "namespace: A\r\nprocedures:\r\n  \"Create Zone\":\r\n    steps:\r\n      'a b':\r\n        call:  X/Y\r\n      c :\r\n        before:\r\n          - source: data\r\n            sourcePath: x\r\n          -   template: t\r\n",
            "---\nnamespace: A\n...\n---\nnamespace: B\nprocedures:\n  P:\n    steps:\n      s1: {call: A/B}\n\n      # s2: comment\n      s2:\n\tcall: A/B\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut block = String::from("namespace: Big\nprocedures:\n  Many:\n    steps:\n");
        for i in 0..40 {
            block.push_str(&format!(
                "      s{i}: {{ call: A/B, with: {{ x: \"{{{{ data.v{i} }}}}\" }} }}\n"
            ));
        }
        docs.push(block);
        docs.push(big_json(30, false));
        docs.push(big_json(30, true));
        let fixed: Vec<Vec<String>> = [
            "procedures.P.steps.s2.call",
            "procedures.Create Zone.steps.a b.call",
            "procedures.P.steps.a.with.a-a",
            "procedures.Many.steps.s7.with.x",
        ]
        .iter()
        .map(|p| p.split('.').map(str::to_string).collect())
        .collect();
        for d in &docs {
            let mut paths = doc_paths(d);
            paths.extend(fixed.iter().cloned());
            assert_same_as_scan(d, &paths);
        }
    }

    /// A tiny deterministic generator (no dependency, reproducible).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }
    }

    const FUZZ_TOKENS: &[&str] = &[
        " ",
        "  ",
        "- ",
        "-",
        "a",
        "b",
        "aa",
        "a-a",
        "a b",
        ":",
        ": ",
        ":\t",
        "{",
        "}",
        "[",
        "]",
        ",",
        "\"",
        "'",
        "#",
        "\t",
        "\n",
        "\n",
        "\n  ",
        "\n    ",
        "\n- ",
        "é",
        "namespace",
        "---",
    ];
    const FUZZ_KEYS: &[&str] = &[
        "a",
        "b",
        "aa",
        "a-a",
        "a b",
        "namespace",
        "é",
        "a:",
        "\"a\"",
        "",
        " a",
        "a ",
        "b-",
        "-b",
    ];

    #[test]
    fn index_matches_scan_on_noise() {
        let mut rng = Lcg(7);
        for _ in 0..1500 {
            let len = 1 + rng.next(60);
            let src: String = (0..len)
                .map(|_| FUZZ_TOKENS[rng.next(FUZZ_TOKENS.len())])
                .collect();
            let paths: Vec<Vec<String>> = (0..12)
                .map(|_| {
                    (0..1 + rng.next(4))
                        .map(|_| FUZZ_KEYS[rng.next(FUZZ_KEYS.len())].to_string())
                        .collect()
                })
                .collect();
            assert_same_as_scan(&src, &paths);
        }
    }

    #[test]
    fn key_indexes_match_their_scans() {
        let mut rng = Lcg(11);
        for _ in 0..20000 {
            let line: String = (0..rng.next(14))
                .map(|_| FUZZ_TOKENS[rng.next(FUZZ_TOKENS.len())])
                .filter(|t| !t.contains('\n'))
                .collect();
            let mut flow: HashMap<&str, usize> = HashMap::new();
            flow_keys(&line, |k, c| {
                let e = flow.entry(k).or_insert(c);
                *e = (*e).min(c);
            });
            for key in FUZZ_KEYS {
                if block_indexable(key) {
                    assert_eq!(
                        starts_with_key(&line, key),
                        block_key(&line) == Some(*key),
                        "{line:?} {key:?}"
                    );
                }
                if flow_indexable(key) {
                    assert_eq!(
                        find_key_anywhere(&line, key),
                        flow.get(key).copied(),
                        "{line:?} {key:?}"
                    );
                }
            }
        }
    }

    /// Parse time is linear in the step count: 20,000 steps take well under 8× the
    /// time of 5,000 (quadratic would be 16×). Minimum of 3 runs against noise.
    #[test]
    #[ignore = "wall-clock timing: speed is measured in benches/engine.rs, not in tests"]
    fn parse_time_is_linear_in_steps() {
        fn doc(n: usize) -> String {
            let mut s = String::from(
                "namespace: Big\nprocedures:\n  Many:\n    access: public\n    steps:\n",
            );
            for i in 0..n {
                s.push_str(&format!(
                    "      s{i}:\n        call: A/B\n        with: {{ x: \"{{{{ data.v{i} }}}}\" }}\n"
                ));
            }
            s
        }
        fn best(src: &str, n: usize) -> std::time::Duration {
            (0..3)
                .map(|_| {
                    let t = std::time::Instant::now();
                    let r = parse_namespaces(src, "big.yaml");
                    let el = t.elapsed();
                    match r {
                        Ok(ns) => assert_eq!(ns[0].procedures[0].steps.len(), n),
                        Err(e) => panic!("{e:#?}"),
                    }
                    el
                })
                .min()
                .unwrap_or_default()
        }
        let (small, big) = (doc(5_000), doc(20_000));
        let t5 = best(&small, 5_000);
        let t20 = best(&big, 20_000);
        assert!(t20 < t5 * 8, "5k steps: {t5:?}, 20k steps: {t20:?}");
    }

    #[test]
    #[ignore = "wall-clock timing: speed is measured in benches/engine.rs, not in tests"]
    fn json_parse_time_is_linear_in_steps() {
        for pretty in [false, true] {
            let time = |n: usize| {
                let src = big_json(n, pretty);
                (0..3)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        let r = parse_namespaces(&src, "big.json");
                        let el = t.elapsed();
                        match r {
                            Ok(ns) => assert_eq!(ns[0].procedures[0].steps.len(), n),
                            Err(e) => panic!("{e:#?}"),
                        }
                        el
                    })
                    .min()
                    .unwrap_or_default()
            };
            let (t5, t20) = (time(5_000), time(20_000));
            assert!(
                t20 < t5 * 8,
                "pretty {pretty}: 5k steps {t5:?}, 20k steps {t20:?}"
            );
        }
    }

    #[test]
    fn insert_nested_merges() {
        let mut j = serde_json::json!({"a": {"x": 1}});
        insert_nested(&mut j, &["a", "y"], serde_json::json!(2));
        insert_nested(&mut j, &["b"], serde_json::json!("t"));
        assert_eq!(j, serde_json::json!({"a": {"x": 1, "y": 2}, "b": "t"}));
    }
}
