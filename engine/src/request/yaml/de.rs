//! serde plumbing of the YAML/JSON front end: the typed error detail that travels through
//! serde_yaml's and serde_json's text-only errors, the alias expansion budget, the one
//! generic visitor every def goes through (`Node`), and the field walker of the `*Def`
//! structs (`Fields`, declared with `def_struct!`).

use super::super::rules::valid_list_hint;
use super::super::{ParseError, MAX_DEPTH};
use crate::data::Scalar as DataScalar;
use crate::model::SourceRef;
use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map as JsonMap, Value as Json};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::marker::PhantomData;

// ---------------------------------------------------------------------------------------
// Typed error detail
// ---------------------------------------------------------------------------------------

/// What the front end knows about an error it raises inside serde: the message and the
/// hint. serde_yaml and serde_json keep only an error's text (`de::Error::custom`), so the
/// detail is parked in `PENDING` when raised and taken back, typed, when the backend's
/// error comes out of the parse (which ends at the first error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Detail {
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

impl Detail {
    pub(crate) fn new(message: impl fmt::Display, hint: impl fmt::Display) -> Detail {
        Detail {
            message: message.to_string(),
            hint: Some(hint.to_string()),
        }
    }

    /// serde's "invalid type" wording, for a shape a def does not accept.
    pub(crate) fn invalid_type(unexpected: de::Unexpected<'_>, expecting: &str) -> Detail {
        Detail {
            message: format!("invalid type: {unexpected}, expected {expecting}"),
            hint: None,
        }
    }

    /// Hands the detail to serde as the backend's error (see `PENDING`).
    pub(crate) fn raise<E: de::Error>(self) -> E {
        let e = E::custom(&self.message);
        PENDING.with(|p| *p.borrow_mut() = Some(self));
        e
    }

    /// An unknown key or name (`what`: "field" or "variant"), with the valid ones and the
    /// closest, in serde's wording.
    fn unknown(what: &str, bad: &str, valid: &[&str]) -> Detail {
        let kind = if what == "field" { "keys" } else { "values" };
        let message = if valid.is_empty() {
            format!("unknown {what} `{bad}`, there are no {what}s")
        } else {
            format!("unknown {what} `{bad}`, expected {}", one_of(valid))
        };
        Detail {
            message,
            hint: (!valid.is_empty()).then(|| valid_list_hint(bad, valid, kind)),
        }
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Detail {}

/// The error of the front end's own small deserializers (enum names read from a scalar).
impl de::Error for Detail {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Detail {
            message: msg.to_string(),
            hint: None,
        }
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Detail::unknown("variant", variant, expected)
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Detail::unknown("field", field, expected)
    }
}

/// serde's list of expected names: "`a`", "`a` or `b`", "one of `a`, `b`, `c`".
fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        [a, b] => format!("{a} or {b}"),
        all => format!("one of {}", all.join(", ")),
    }
}

thread_local! {
    /// The detail of the error raised last on this thread (see `Detail::raise`).
    static PENDING: RefCell<Option<Detail>> = const { RefCell::new(None) };
}

fn take_pending() -> Option<Detail> {
    PENDING.with(|p| p.borrow_mut().take())
}

/// A serde_yaml error as a `ParseError`: the position from its `Location`, the hint from
/// the detail raised with it. serde_yaml prefixes the field path to a message and appends
/// the position, which the `SourceRef` already says.
pub(super) fn yaml_err(file: &str, e: &serde_yaml::Error) -> ParseError {
    let mut msg = e.to_string();
    let (line, col) = match e.location() {
        Some(l) => {
            let at = format!(" at line {} column {}", l.line(), l.column());
            if let Some(i) = msg.find(&at) {
                msg.replace_range(i..i + at.len(), "");
            }
            (l.line() as u32, l.column() as u32)
        }
        None => (0, 0),
    };
    let hint = match take_pending() {
        Some(d) if msg.ends_with(&d.message) => d.hint,
        _ => backend_hint(&msg),
    };
    finish(file, line, col, msg, hint)
}

/// A serde_json error as a `ParseError` (see `yaml_err`). serde_json says column 0 for
/// the line break itself (a string broken by a newline): that is the end of the line
/// before, where the user has to look. At the end of the text it is the empty last line.
pub(super) fn json_err(file: &str, src: &str, e: &serde_json::Error) -> ParseError {
    let mut msg = e.to_string();
    let at = format!(" at line {} column {}", e.line(), e.column());
    if let Some(s) = msg.strip_suffix(&at) {
        msg.truncate(s.len());
    }
    let hint = match take_pending() {
        Some(d) if msg.ends_with(&d.message) => d.hint,
        _ => backend_hint(&msg),
    };
    let (mut line, mut column) = (e.line(), e.column());
    if column == 0 && line > 1 && !e.is_eof() {
        line -= 1;
        column = src
            .split('\n')
            .nth(line - 1)
            .map_or(0, |l| l.chars().count())
            + 1;
    }
    finish(file, line as u32, column.max(1) as u32, msg, hint)
}

fn finish(file: &str, line: u32, col: u32, mut msg: String, hint: Option<String>) -> ParseError {
    if msg.is_empty() {
        msg = "invalid document".into();
    }
    let mut pe = ParseError::new(SourceRef::new(file, line, col), msg);
    pe.hint = hint;
    pe
}

/// Hints for the errors serde_yaml raises itself, which it exposes only as text (its
/// error kinds are private, and it offers no event stream to spot an undefined alias
/// ourselves). Depth and document count are checked before serde_yaml runs
/// (`super::limits`), so these are the remaining ones. This is the ONE place that reads
/// serde_yaml's wording: `backend_hint_tests` makes serde_yaml raise each of these errors
/// and fails if a serde_yaml upgrade changes the text matched here.
fn backend_hint(msg: &str) -> Option<String> {
    if msg.contains("recursion limit exceeded") {
        Some(format!(
            "nesting is limited to {MAX_DEPTH} levels; flatten the structure"
        ))
    } else if msg.contains("repetition limit exceeded") {
        Some(
            "YAML aliases expand to too much data; write the values out or use fewer aliases"
                .into(),
        )
    } else if msg.starts_with("unknown anchor") {
        Some("define the anchor (`&name`) before using the alias (`*name`)".into())
    } else if msg.contains("cannot start any token") {
        Some(
            "YAML indents with spaces only (replace the tab), and a value starting with `@`, \
             `` ` `` or `%` must be quoted"
                .into(),
        )
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------
// Expansion budget (alias bombs)
// ---------------------------------------------------------------------------------------

thread_local! {
    static BUDGET: Cell<u64> = const { Cell::new(u64::MAX) };
}

/// The expansion budget of one parse (restored when dropped, so parses may nest).
pub(super) struct Budget {
    previous: u64,
}

impl Budget {
    /// Every node costs 8 units and every string its length; a file without aliases
    /// stays far below `16 × its size + 1M`.
    pub(crate) fn start(src_len: usize) -> Budget {
        let limit = (src_len as u64).saturating_mul(16).saturating_add(1 << 20);
        take_pending();
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

pub(super) fn charge<E: de::Error>(units: usize) -> Result<(), E> {
    BUDGET.with(|b| {
        let left = b.get();
        let units = units as u64;
        if units > left {
            b.set(0);
            Err(Detail::new(
                "the document expands to too much data (expansion budget exceeded)",
                "YAML aliases expand to too much data; write the values out or use fewer aliases",
            )
            .raise())
        } else {
            b.set(left - units);
            Ok(())
        }
    })
}

// ---------------------------------------------------------------------------------------
// One visitor for every def
// ---------------------------------------------------------------------------------------

/// A scalar as the backend delivers it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scalar<'a> {
    Str(&'a str),
    Int(i64),
    UInt(u64),
    /// An integer beyond 64 bits (YAML reads up to 128).
    Big(i128),
    /// Beyond `i128` too (only `u128` holds it).
    BigU(u128),
    Float(f64),
    Bool(bool),
    Null,
}

impl Scalar<'_> {
    /// The scalar's text (YAML scalars of other types read as text where text is wanted).
    pub(crate) fn text(self) -> Option<String> {
        Some(match self {
            Scalar::Str(s) => s.to_string(),
            Scalar::Int(v) => v.to_string(),
            Scalar::UInt(v) => v.to_string(),
            Scalar::Big(v) => v.to_string(),
            Scalar::BigU(v) => v.to_string(),
            Scalar::Float(v) => v.to_string(),
            Scalar::Bool(v) => v.to_string(),
            Scalar::Null => return None,
        })
    }

    fn unexpected(&self) -> de::Unexpected<'_> {
        match *self {
            Scalar::Str(s) => de::Unexpected::Str(s),
            Scalar::Int(v) => de::Unexpected::Signed(v),
            Scalar::UInt(v) => de::Unexpected::Unsigned(v),
            Scalar::Big(_) | Scalar::BigU(_) => de::Unexpected::Other("integer"),
            Scalar::Float(v) => de::Unexpected::Float(v),
            Scalar::Bool(v) => de::Unexpected::Bool(v),
            Scalar::Null => de::Unexpected::Unit,
        }
    }

    /// Budget units: 8 per node, plus a string's length.
    fn cost(&self) -> usize {
        match self {
            Scalar::Str(s) => 8 + s.len(),
            _ => 8,
        }
    }
}

/// A def read from one YAML/JSON node. `NodeVisitor` dispatches on the node's shape;
/// a shape whose method returns `None` is refused with serde's "invalid type" error.
pub(super) trait Node<'de>: Sized {
    /// What the node should be ("a string or a list of strings").
    const EXPECTING: &'static str;
    fn scalar(_v: Scalar<'_>) -> Option<Result<Self, Detail>> {
        None
    }
    fn map<A: MapAccess<'de>>(_map: A) -> Option<Result<Self, A::Error>> {
        None
    }
    fn seq<A: SeqAccess<'de>>(_seq: A) -> Option<Result<Self, A::Error>> {
        None
    }
    /// A tagged value (`!name x`): refused unless a def says otherwise.
    fn tagged() -> Detail {
        Detail::invalid_type(de::Unexpected::Enum, Self::EXPECTING)
    }
}

pub(super) struct NodeVisitor<T>(PhantomData<T>);

impl<T> NodeVisitor<T> {
    pub(crate) fn new() -> Self {
        NodeVisitor(PhantomData)
    }
}

fn scalar<'de, T: Node<'de>, E: de::Error>(v: Scalar<'_>) -> Result<T, E> {
    charge::<E>(v.cost())?;
    match T::scalar(v) {
        Some(r) => r.map_err(Detail::raise),
        None => Err(Detail::invalid_type(v.unexpected(), T::EXPECTING).raise()),
    }
}

impl<'de, T: Node<'de>> Visitor<'de> for NodeVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        scalar(Scalar::Str(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        scalar(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        scalar(Scalar::UInt(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<T, E> {
        scalar(Scalar::Big(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<T, E> {
        match i128::try_from(v) {
            Ok(i) => scalar(Scalar::Big(i)),
            Err(_) => scalar(Scalar::BigU(v)),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        scalar(Scalar::Float(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        scalar(Scalar::Bool(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        scalar(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        scalar(Scalar::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::map(map)
            .unwrap_or_else(|| Err(Detail::invalid_type(de::Unexpected::Map, T::EXPECTING).raise()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        T::seq(seq)
            .unwrap_or_else(|| Err(Detail::invalid_type(de::Unexpected::Seq, T::EXPECTING).raise()))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _data: A) -> Result<T, A::Error> {
        Err(T::tagged().raise())
    }
    fn visit_bytes<E: de::Error>(self, _v: &[u8]) -> Result<T, E> {
        Err(Detail::new("binary values are not supported", "write text").raise())
    }
}

/// `Deserialize` through `NodeVisitor` for each named def.
macro_rules! deserialize_node {
    ($($t:ident $(<$g:ident>)?),* $(,)?) => {$(
        impl<'de $(, $g: serde::Deserialize<'de>)?> serde::Deserialize<'de> for $t $(<$g>)? {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any($crate::request::yaml::de::NodeVisitor::<Self>::new())
            }
        }
    )*};
}
pub(super) use deserialize_node;

/// Reads a map or a list as a def (nested shapes of a def: `[a, b]` inside `needs:`).
pub(super) fn from_map<'de, T: Deserialize<'de>, A: MapAccess<'de>>(map: A) -> Result<T, A::Error> {
    T::deserialize(de::value::MapAccessDeserializer::new(map))
}

pub(super) fn from_seq<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(seq: A) -> Result<T, A::Error> {
    T::deserialize(de::value::SeqAccessDeserializer::new(seq))
}

// ---------------------------------------------------------------------------------------
// Counted building blocks
// ---------------------------------------------------------------------------------------

/// A string; YAML scalars of other types are accepted in their text form.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Text(pub String);

impl Node<'_> for Text {
    const EXPECTING: &'static str = "a string";
    fn scalar(v: Scalar<'_>) -> Option<Result<Self, Detail>> {
        v.text().map(|t| Ok(Text(t)))
    }
}

/// Any literal value, as JSON (maps keep their order).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Lit(pub Json);

impl<'de> Node<'de> for Lit {
    const EXPECTING: &'static str = "a value";
    fn scalar(v: Scalar<'_>) -> Option<Result<Self, Detail>> {
        Some(Ok(Lit(match v {
            Scalar::Str(s) => Json::String(s.to_string()),
            Scalar::Int(i) => Json::from(i),
            Scalar::UInt(u) => Json::from(u),
            // integers beyond 64 bits become floats, as in JSON (docs/data-model.md)
            Scalar::Big(i) => return Some(float(i as f64)),
            Scalar::BigU(u) => return Some(float(u as f64)),
            Scalar::Float(f) => return Some(float(f)),
            Scalar::Bool(b) => Json::Bool(b),
            Scalar::Null => Json::Null,
        })))
    }
    fn map<A: MapAccess<'de>>(mut map: A) -> Option<Result<Self, A::Error>> {
        let mut read = || {
            charge::<A::Error>(8)?;
            let mut m = JsonMap::new();
            while let Some(Text(k)) = map.next_key::<Text>()? {
                let Lit(v) = map.next_value::<Lit>()?;
                if m.contains_key(&k) {
                    return Err(duplicate_key(&k).raise());
                }
                m.insert(k, v);
            }
            Ok(Lit(Json::Object(m)))
        };
        Some(read())
    }
    fn seq<A: SeqAccess<'de>>(mut seq: A) -> Option<Result<Self, A::Error>> {
        let mut read = || {
            charge::<A::Error>(8)?;
            let mut v = Vec::new();
            while let Some(Lit(x)) = seq.next_element::<Lit>()? {
                v.push(x);
            }
            Ok(Lit(Json::Array(v)))
        };
        Some(read())
    }
    fn tagged() -> Detail {
        Detail::new(
            "YAML tags (`!name`) are not supported in values",
            "remove the tag",
        )
    }
}

fn float(v: f64) -> Result<Lit, Detail> {
    match serde_json::Number::from_f64(v) {
        Some(n) => Ok(Lit(Json::Number(n))),
        None => Err(Detail::new(
            format!("`{v}` is not a number a data tree can hold"),
            "quote it to keep it as text",
        )),
    }
}

fn duplicate_key(k: &str) -> Detail {
    Detail::new(
        format!("duplicate key `{k}`"),
        "each key may appear once in a mapping",
    )
}

/// An ordered mapping with string keys (duplicates are errors).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Ordered<T>(pub Vec<(String, T)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Node<'de> for Ordered<T> {
    const EXPECTING: &'static str = "a mapping";
    fn scalar(v: Scalar<'_>) -> Option<Result<Self, Detail>> {
        matches!(v, Scalar::Null).then(|| Ok(Ordered(Vec::new())))
    }
    fn map<A: MapAccess<'de>>(mut map: A) -> Option<Result<Self, A::Error>> {
        let mut read = || -> Result<Self, A::Error> {
            /// Up to this many keys, duplicates are found by comparing with each.
            const SCAN: usize = 8;
            let mut v: Vec<(String, T)> = Vec::new();
            // the keys, once there are more than `SCAN`
            let mut seen: fxhash::FxHashSet<String> = Default::default();
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
        };
        Some(read())
    }
}

/// A sequence, counted against the budget.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct List<T>(pub Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Node<'de> for List<T> {
    const EXPECTING: &'static str = "a list";
    fn scalar(v: Scalar<'_>) -> Option<Result<Self, Detail>> {
        matches!(v, Scalar::Null).then(|| Ok(List(Vec::new())))
    }
    fn seq<A: SeqAccess<'de>>(mut seq: A) -> Option<Result<Self, A::Error>> {
        let mut read = || -> Result<Self, A::Error> {
            let mut v = Vec::new();
            loop {
                charge::<A::Error>(8)?;
                match seq.next_element::<T>()? {
                    Some(x) => v.push(x),
                    None => break,
                }
            }
            Ok(List(v))
        };
        Some(read())
    }
}

/// A mapping key for which `.0` (is it a key already?) is false (the error points at the key).
struct NewKey<'a>(&'a dyn Fn(&str) -> bool);

impl<'de> DeserializeSeed<'de> for NewKey<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(KeyVisitor(|k: String| {
            if (self.0)(&k) {
                return Err(duplicate_key(&k));
            }
            Ok(k)
        }))
    }
}

/// Visits a mapping key (a scalar, as text) and checks it with `.0` while the backend
/// still points at the key, so that an error is located there.
struct KeyVisitor<F>(F);

impl<F: FnOnce(String) -> Result<R, Detail>, R> KeyVisitor<F> {
    fn check<E: de::Error>(self, k: String) -> Result<R, E> {
        charge::<E>(8 + k.len())?;
        (self.0)(k).map_err(Detail::raise)
    }
}

impl<F: FnOnce(String) -> Result<R, Detail>, R> Visitor<'_> for KeyVisitor<F> {
    type Value = R;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<R, E> {
        self.check(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<R, E> {
        self.check(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<R, E> {
        self.check(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<R, E> {
        self.check(v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<R, E> {
        self.check(v.to_string())
    }
}

/// One string or a list of strings.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Strings(pub Vec<String>);

impl<'de> Node<'de> for Strings {
    const EXPECTING: &'static str = "a string or a list of strings";
    fn scalar(v: Scalar<'_>) -> Option<Result<Self, Detail>> {
        match v {
            Scalar::Null => Some(Ok(Strings(Vec::new()))),
            Scalar::Str(_) | Scalar::Int(_) | Scalar::UInt(_) => {
                v.text().map(|t| Ok(Strings(vec![t])))
            }
            _ => None,
        }
    }
    fn seq<A: SeqAccess<'de>>(seq: A) -> Option<Result<Self, A::Error>> {
        Some(
            from_seq::<List<Text>, A>(seq)
                .map(|List(v)| Strings(v.into_iter().map(|t| t.0).collect())),
        )
    }
}

/// A typed scalar (input defaults).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ScalarDef(pub DataScalar);

impl Node<'_> for ScalarDef {
    const EXPECTING: &'static str = "a string, number or boolean";
    fn scalar(v: Scalar<'_>) -> Option<Result<Self, Detail>> {
        let too_big = |v: &dyn fmt::Display| {
            Detail::new(
                format!("{v} does not fit a 64-bit integer"),
                "quote it to keep it as text",
            )
        };
        Some(Ok(ScalarDef(match v {
            Scalar::Str(s) => DataScalar::Str(s.into()),
            Scalar::Int(i) => DataScalar::Int(i),
            Scalar::UInt(u) => match i64::try_from(u) {
                Ok(i) => DataScalar::Int(i),
                Err(_) => return Some(Err(too_big(&u))),
            },
            Scalar::Big(i) => return Some(Err(too_big(&i))),
            Scalar::BigU(u) => return Some(Err(too_big(&u))),
            Scalar::Float(f) => DataScalar::Float(f),
            Scalar::Bool(b) => DataScalar::Bool(b),
            Scalar::Null => return None,
        })))
    }
}

/// A name out of a fixed set (`access: public`), read by the enum's own `Deserialize`
/// from the scalar's text so that an unknown name comes back typed, with the valid ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Name<T>(pub T);

impl<T: de::DeserializeOwned> Node<'_> for Name<T> {
    const EXPECTING: &'static str = "a name";
    fn scalar(v: Scalar<'_>) -> Option<Result<Self, Detail>> {
        let text = v.text()?;
        Some(T::deserialize(de::value::StrDeserializer::<Detail>::new(&text)).map(Name))
    }
}

deserialize_node!(Text, Lit, Ordered<T>, List<T>, Strings, ScalarDef);

impl<'de, T: de::DeserializeOwned> Deserialize<'de> for Name<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor::<Self>::new())
    }
}

// ---------------------------------------------------------------------------------------
// The field walker of the `*Def` structs
// ---------------------------------------------------------------------------------------

/// A def struct: a mapping with a fixed set of keys, each optional unless `REQUIRED`.
pub(super) trait Fields: Default {
    const KEYS: &'static [&'static str];
    const REQUIRED: &'static [&'static str];
    /// Reads the value of `KEYS[key]` into its field.
    fn read<'de, A: MapAccess<'de>>(&mut self, key: usize, map: &mut A) -> Result<(), A::Error>;
}

/// Walks a mapping into a `Fields` struct: an unknown or repeated key is refused at the
/// key (with the valid keys and the closest one), a missing required key at the end.
pub(super) fn walk_fields<'de, T: Fields, A: MapAccess<'de>>(mut map: A) -> Result<T, A::Error> {
    let mut out = T::default();
    let mut seen = vec![false; T::KEYS.len()];
    while let Some(i) = map.next_key_seed(FieldKey {
        keys: T::KEYS,
        seen: &seen,
    })? {
        seen[i] = true;
        out.read(i, &mut map)?;
    }
    for req in T::REQUIRED {
        if let Some(i) = T::KEYS.iter().position(|k| k == req) {
            if !seen[i] {
                return Err(de::Error::missing_field(req));
            }
        }
    }
    Ok(out)
}

/// The key of a `Fields` struct: its index in `keys`.
struct FieldKey<'a> {
    keys: &'static [&'static str],
    seen: &'a [bool],
}

impl<'de> DeserializeSeed<'de> for FieldKey<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_any(KeyVisitor(|k: String| {
            match self.keys.iter().position(|x| *x == k) {
                Some(i) if self.seen[i] => Err(Detail::new(
                    format!("duplicate field `{k}`"),
                    "each key may appear once in a mapping",
                )),
                Some(i) => Ok(i),
                None => Err(Detail::unknown("field", &k, self.keys)),
            }
        }))
    }
}

/// Declares a def struct read by `walk_fields`: `"yamlKey" => field: Type` for each key
/// (every field an `Option`), then the required keys.
macro_rules! def_struct {
    (
        $(#[$doc:meta])*
        $name:ident, $expecting:literal {
            $( $(#[$fdoc:meta])* $key:literal => $field:ident : $ty:ty ),* $(,)?
        }
        $(required: $($req:literal),*)?
    ) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        pub(super) struct $name {
            $( $(#[$fdoc])* pub $field: Option<$ty>, )*
        }
        impl $crate::request::yaml::de::Fields for $name {
            const KEYS: &'static [&'static str] = &[$($key),*];
            const REQUIRED: &'static [&'static str] = &[$($($req),*)?];
            fn read<'de, A: serde::de::MapAccess<'de>>(&mut self, key: usize, map: &mut A) -> Result<(), A::Error> {
                match <Self as $crate::request::yaml::de::Fields>::KEYS[key] {
                    $( $key => self.$field = map.next_value()?, )*
                    _ => {}
                }
                Ok(())
            }
        }
        impl<'de> $crate::request::yaml::de::Node<'de> for $name {
            const EXPECTING: &'static str = $expecting;
            fn map<A: serde::de::MapAccess<'de>>(map: A) -> Option<Result<Self, A::Error>> {
                Some($crate::request::yaml::de::walk_fields(map))
            }
        }
        $crate::request::yaml::de::deserialize_node!($name);
        // The JSON Schema of the mapping, from the same key table the walker reads.
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let mut properties = serde_json::Map::new();
                $( properties.insert($key.to_string(), generator.subschema_for::<$ty>().to_value()); )*
                schemars::json_schema!({
                    "description": $expecting,
                    "type": "object",
                    "properties": properties,
                    "additionalProperties": false,
                    "required": [$($($req),*)?],
                })
            }
        }
    };
}
pub(super) use def_struct;

#[cfg(test)]
mod backend_hint_tests {
    //! Each test makes serde_yaml itself raise the error `backend_hint` recognises by its
    //! text, so a serde_yaml upgrade that rewords it fails here instead of silently losing
    //! the hint.

    use super::backend_hint;

    fn serde_yaml_error(src: &str) -> String {
        serde_yaml::from_str::<serde_yaml::Value>(src)
            .expect_err("serde_yaml refuses it")
            .to_string()
    }

    #[test]
    fn unknown_anchor_is_recognised() {
        let msg = serde_yaml_error("a: *nowhere\n");
        let hint = backend_hint(&msg).unwrap_or_else(|| panic!("no hint for {msg:?}"));
        assert!(hint.contains("define the anchor"), "{hint}");
    }

    #[test]
    fn repetition_limit_is_recognised() {
        // Each level doubles the expansion; serde_yaml stops at its repetition limit.
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let msg = serde_yaml_error(&src);
        let hint = backend_hint(&msg).unwrap_or_else(|| panic!("no hint for {msg:?}"));
        assert!(hint.contains("aliases expand to too much data"), "{hint}");
    }

    #[test]
    fn a_tab_or_reserved_character_is_recognised() {
        for src in ["a:\n\tb: 1\n", "a: @b\n", "a: `b`\n"] {
            let msg = serde_yaml_error(src);
            let hint = backend_hint(&msg).unwrap_or_else(|| panic!("no hint for {msg:?}"));
            assert!(hint.contains("replace the tab"), "{hint}");
        }
    }

    #[test]
    fn recursion_limit_is_recognised() {
        let src = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let msg = serde_yaml_error(&src);
        let hint = backend_hint(&msg).unwrap_or_else(|| panic!("no hint for {msg:?}"));
        assert!(hint.contains("nesting is limited"), "{hint}");
    }
}
