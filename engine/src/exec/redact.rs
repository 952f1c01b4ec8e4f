//! Keeps secrets out of responses, plans, logs and the journal: elements named after a
//! secret input (or marked `do-not-log="1"`) are masked, and their values are scrubbed
//! from free text such as provider error messages. A value computed from a secret (a
//! template or expression that read one) is learned while the transaction runs and
//! scrubbed the same way.

use crate::data::{Element, Node, Scalar};
use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

/// Whether an element or one below it is marked `do-not-log`.
fn has_marks(e: &Element) -> bool {
    e.attr("do-not-log").is_some() || e.elements().any(has_marks)
}

/// What a masked value looks like.
pub(crate) const MASK: &str = "********";

/// Known secret values, longest first.
type Values = BTreeSet<(Reverse<usize>, String)>;

/// Masks secrets by element name and by value. Clones share the values learned later.
#[derive(Debug, Clone, Default)]
pub(crate) struct Redactor {
    names: BTreeSet<String>,
    /// Longest first, so a secret containing another is masked whole; a set, so learning
    /// one more of many values (a forEach over users with passwords) costs a log, not a
    /// scan and a sort.
    values: Arc<RwLock<Values>>,
}

impl Redactor {
    /// A redactor for these secret names, learning the secret values present in `data`.
    pub(crate) fn new(names: BTreeSet<String>, data: &Element) -> Redactor {
        let mut values = Vec::new();
        let r = Redactor {
            names,
            values: Arc::default(),
        };
        r.collect(data, &mut values);
        for v in values {
            r.learn_value(&v);
        }
        r
    }

    /// Treats `value` as a secret from now on (a value computed from a secret). Values
    /// shorter than three characters are not learned: masking them would garble text.
    pub(crate) fn learn_value(&self, value: &str) {
        if value.len() < 3 {
            return;
        }
        self.values
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((Reverse(value.len()), value.to_string()));
    }

    /// Learns the values of the secret elements in `e` (an input a nested call receives
    /// under a secret name, though its caller computed it).
    pub(crate) fn learn_from(&self, e: &Element) {
        if self.names.is_empty() && !has_marks(e) {
            return;
        }
        let mut values = Vec::new();
        self.collect(e, &mut values);
        for v in values {
            self.learn_value(&v);
        }
    }

    /// Learns every string in a JSON value (the result of an expression that read a secret).
    pub(crate) fn learn_json(&self, v: &serde_json::Value) {
        match v {
            serde_json::Value::String(s) => self.learn_value(s),
            serde_json::Value::Array(a) => a.iter().for_each(|v| self.learn_json(v)),
            serde_json::Value::Object(o) => o.values().for_each(|v| self.learn_json(v)),
            _ => {}
        }
    }

    /// Whether a secret input has this name.
    pub(crate) fn is_secret_name(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Whether text holds a known secret value.
    pub(crate) fn reveals(&self, text: &str) -> bool {
        self.known().iter().any(|(_, v)| text.contains(v.as_str()))
    }

    /// Whether nothing is secret in this transaction.
    pub(crate) fn is_empty(&self) -> bool {
        self.names.is_empty() && self.known().is_empty()
    }

    fn known(&self) -> std::sync::RwLockReadGuard<'_, Values> {
        self.values.read().unwrap_or_else(|e| e.into_inner())
    }

    fn is_secret(&self, e: &Element) -> bool {
        self.names.contains(e.name.as_str())
            || e.attr("do-not-log")
                .is_some_and(|v| v == "1" || v == "true")
    }

    fn collect(&self, e: &Element, values: &mut Vec<String>) {
        if self.is_secret(e) {
            values.push(e.string_value());
        }
        for c in e.elements() {
            self.collect(c, values);
        }
    }

    /// Masks secret elements in place, and scrubs known secret values from the text and
    /// attributes of the others (a secret copied under another name, e.g. by `output:`).
    pub(crate) fn redact_element(&self, e: &mut Element) {
        if self.is_secret(e) {
            e.children = vec![Node::Text(Scalar::Str(MASK.into()))];
            return;
        }
        if !self.known().is_empty() {
            for (_, v) in &mut e.attrs {
                *v = self.redact_text(v).into();
            }
            for c in &mut e.children {
                if let Node::Text(Scalar::Str(s)) = c {
                    *s = self.redact_text(s).into();
                }
            }
        }
        for c in e.elements_mut() {
            self.redact_element(c);
        }
    }

    /// Whether an element holds a secret (a secret-named element or a known secret value).
    pub(crate) fn contains_secret(&self, e: &Element) -> bool {
        if self.is_secret(e) {
            return true;
        }
        if let Some(Scalar::Str(s)) = e.scalar() {
            if self.reveals(s) {
                return true;
            }
        }
        e.attrs.iter().any(|(_, v)| self.reveals(v))
            || e.elements().any(|c| self.contains_secret(c))
    }

    /// Scrubs known secret values from text.
    pub(crate) fn redact_text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (_, v) in self.known().iter() {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), MASK);
            }
        }
        out
    }
}
