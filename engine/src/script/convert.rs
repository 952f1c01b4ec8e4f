//! Conversions between JSON values and rhai values, and [`Vars`], the read-only variables a
//! script sees.

use std::borrow::Borrow;
use std::sync::{Arc, Mutex, TryLockError};

use rhai::{Array, Blob, Dynamic, ImmutableString, Map, Scope, FLOAT, INT};
use serde_json::{Number, Value};

use crate::data::json::to_json;
use crate::data::Element;

/// Deepest nesting [`dynamic_to_json`] follows (guards against cyclic shared values).
const MAX_DEPTH: usize = 256;

/// A JSON value as a rhai value: objects become maps, arrays arrays, integers that fit `i64`
/// integers, other numbers floats, `null` unit `()`.
pub fn json_to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i as INT),
            None => Dynamic::from_float(n.as_f64().unwrap_or(FLOAT::NAN) as FLOAT),
        },
        Value::String(s) => Dynamic::from(ImmutableString::from(s.as_str())),
        Value::Array(items) => {
            Dynamic::from_array(items.iter().map(json_to_dynamic).collect::<Array>())
        }
        Value::Object(map) => Dynamic::from_map(
            map.iter()
                .map(|(k, v)| (k.as_str().into(), json_to_dynamic(v)))
                .collect::<Map>(),
        ),
    }
}

/// A rhai value as JSON: maps, arrays, strings, characters (as strings), integers, floats
/// (non-finite ones become `null`), booleans, unit → `null`, BLOBs → arrays of bytes.
/// Other types (function pointers, timestamps, …) are an error naming the type.
pub fn dynamic_to_json(d: &Dynamic) -> Result<Value, String> {
    to_json_at(d, 0)
}

fn to_json_at(d: &Dynamic, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("value nested more than {MAX_DEPTH} levels deep"));
    }
    if d.is_unit() {
        return Ok(Value::Null);
    }
    if let Some(b) = d.read_lock::<bool>() {
        return Ok(Value::Bool(*b));
    }
    if let Some(i) = d.read_lock::<INT>() {
        return Ok(Value::Number(Number::from(*i)));
    }
    if let Some(f) = d.read_lock::<FLOAT>() {
        return Ok(Number::from_f64(*f).map_or(Value::Null, Value::Number));
    }
    if let Some(s) = d.read_lock::<ImmutableString>() {
        return Ok(Value::String(s.to_string()));
    }
    if let Some(c) = d.read_lock::<char>() {
        return Ok(Value::String(c.to_string()));
    }
    if let Some(a) = d.read_lock::<Array>() {
        return a
            .iter()
            .map(|v| to_json_at(v, depth + 1))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if let Some(m) = d.read_lock::<Map>() {
        let mut out = serde_json::Map::new();
        for (k, v) in m.iter() {
            out.insert(k.to_string(), to_json_at(v, depth + 1)?);
        }
        return Ok(Value::Object(out));
    }
    if let Some(b) = d.read_lock::<Blob>() {
        return Ok(Value::Array(
            b.iter().map(|x| Value::Number(Number::from(*x))).collect(),
        ));
    }
    Err(format!("a {} has no JSON form", friendly_type(d)))
}

/// A value's type for messages: "a string", "an integer", "nothing (())", …
pub(crate) fn friendly_type(d: &Dynamic) -> String {
    match d.type_name() {
        "()" => "nothing (())".to_string(),
        "bool" => "a boolean".to_string(),
        "i64" | "i32" => "an integer".to_string(),
        "f64" | "f32" => "a float".to_string(),
        "string" | "ImmutableString" => "a string".to_string(),
        "char" => "a character".to_string(),
        "array" => "an array".to_string(),
        "map" => "a map".to_string(),
        "blob" => "a BLOB".to_string(),
        "Fn" => "a function pointer".to_string(),
        "timestamp" => "a timestamp".to_string(),
        other => format!("a value of type {other}"),
    }
}

/// The read-only variables a script sees (`data`, `executeData`, `procedureData`,
/// `context`, forEach names, …), converted to rhai values once.
///
/// Evaluating many times over the same `Vars` reuses one prepared [`Scope`] (constants
/// cannot be modified by scripts; variables a script declares are dropped after each run),
/// so a condition costs no conversion or copy of the data. Concurrent evaluations over the
/// same `Vars` (e.g. from several threads) fall back to a private copy.
#[derive(Default)]
pub struct Vars {
    entries: Arc<Vec<(String, Dynamic)>>,
    scope: Mutex<Option<Scope<'static>>>,
}

impl Clone for Vars {
    fn clone(&self) -> Self {
        Self {
            entries: Arc::clone(&self.entries),
            scope: Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for Vars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v.type_name())))
            .finish()
    }
}

impl Vars {
    /// No variables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Variables from `(name, value)` pairs; a repeated name keeps the last value.
    pub fn from_json<I, S, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (S, V)>,
        S: Into<String>,
        V: Borrow<Value>,
    {
        let mut vars = Self::new();
        for (k, v) in pairs {
            vars.push(k, v.borrow());
        }
        vars
    }

    /// Adds (or replaces) variable `name` with the value `value`.
    pub(crate) fn push(&mut self, name: impl Into<String>, value: &Value) -> &mut Self {
        self.push_dynamic(name.into(), json_to_dynamic(value));
        self
    }

    /// Adds (or replaces) variable `name` with the map/array view of `element`
    /// (see [`crate::data::json::to_json`]).
    pub(crate) fn push_element(&mut self, name: impl Into<String>, element: &Element) -> &mut Self {
        self.push(name, &to_json(element))
    }

    /// Builder form of `Vars::push`.
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: &Value) -> Self {
        self.push(name, value);
        self
    }

    fn push_dynamic(&mut self, name: String, value: Dynamic) {
        let entries = Arc::make_mut(&mut self.entries);
        match entries.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => entries.push((name, value)),
        }
        self.scope = Mutex::new(None);
    }

    #[cfg(test)]
    /// The value of variable `name` as JSON.
    pub(crate) fn get(&self, name: &str) -> Option<Value> {
        self.entries
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| dynamic_to_json(v).ok())
    }

    fn fresh_scope(&self) -> Scope<'static> {
        let mut scope = Scope::with_capacity(self.entries.len() + 1);
        for (k, v) in self.entries.iter() {
            scope.push_constant_dynamic(k.as_str(), v.clone());
        }
        scope
    }

    /// Runs `f` with a scope holding these variables as constants plus `extra` (e.g. a
    /// forEach `item`); anything the script adds to the scope is dropped afterwards.
    pub(crate) fn with_scope<R>(
        &self,
        extra: Option<(&str, Dynamic)>,
        f: impl FnOnce(&mut Scope<'static>) -> R,
    ) -> R {
        let mut guard = match self.scope.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => {
                let mut g = p.into_inner();
                *g = None;
                Some(g)
            }
            Err(TryLockError::WouldBlock) => None,
        };
        let mut private;
        let scope = match guard.as_mut() {
            Some(g) => g.get_or_insert_with(|| self.fresh_scope()),
            None => {
                private = self.fresh_scope();
                &mut private
            }
        };
        let len = scope.len();
        if let Some((name, value)) = extra {
            scope.push_constant_dynamic(name, value);
        }
        let r = f(scope);
        scope.rewind(len);
        // A closure capturing a variable makes it shared in place; a shared value must not
        // outlive this run (it would be locked across threads), so start afresh next time.
        let reset = scope.iter_raw().any(|(_, _, v)| v.is_shared());
        if reset {
            if let Some(g) = guard.as_mut() {
                **g = None;
            }
        }
        r
    }
}
