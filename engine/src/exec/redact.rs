//! Keeps secrets out of responses, plans, logs and the journal: elements named after a
//! secret input (or marked `do-not-log="1"`) are masked, and their values are scrubbed
//! from free text such as provider error messages.

use crate::data::{Element, Node, Scalar};
use std::collections::BTreeSet;

/// What a masked value looks like.
pub const MASK: &str = "********";

/// Masks secrets by element name and by value.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    names: BTreeSet<String>,
    values: Vec<String>,
}

impl Redactor {
    /// A redactor for these secret names, learning the secret values present in `data`.
    pub fn new(names: BTreeSet<String>, data: &Element) -> Redactor {
        let mut r = Redactor {
            names,
            values: Vec::new(),
        };
        r.learn(data);
        r.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        r.values.dedup();
        r
    }

    fn is_secret(&self, e: &Element) -> bool {
        self.names.contains(e.name.as_str())
            || e.attr("do-not-log")
                .is_some_and(|v| v == "1" || v == "true")
    }

    fn learn(&mut self, e: &Element) {
        if self.is_secret(e) {
            let v = e.string_value();
            if v.len() >= 3 {
                self.values.push(v);
            }
        }
        for c in e.elements() {
            self.learn(c);
        }
    }

    /// Masks secret elements in place, and scrubs known secret values from the text and
    /// attributes of the others (a secret copied under another name, e.g. by `output:`).
    pub fn redact_element(&self, e: &mut Element) {
        if self.is_secret(e) {
            e.children = vec![Node::Text(Scalar::Str(MASK.into()))];
            return;
        }
        if !self.values.is_empty() {
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
    pub fn contains_secret(&self, e: &Element) -> bool {
        if self.is_secret(e) {
            return true;
        }
        if let Some(Scalar::Str(s)) = e.scalar() {
            if self.values.iter().any(|v| s.contains(v.as_str())) {
                return true;
            }
        }
        e.attrs
            .iter()
            .any(|(_, v)| self.values.iter().any(|s| v.contains(s.as_str())))
            || e.elements().any(|c| self.contains_secret(c))
    }

    /// Scrubs known secret values from text.
    pub fn redact_text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), MASK);
            }
        }
        out
    }
}
