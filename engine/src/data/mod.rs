//! The one data tree of the engine: an ordered XML-like element tree with typed leaves.
//!
//! Every scope (`data`, `executeData`, `procedureData`, `context`, forEach nodes) is an
//! [`Element`]. The tree keeps document order (attributes, text, repeated and interleaved
//! elements), so MPS XML round-trips exactly and `merge`/`replace` work in position.
//! YAML, JSON and rhai see it through the map/array view in [`json`]; the mapping is
//! documented in `docs/data-model.md`.

pub mod json;
pub(crate) mod path;
pub mod transform;
pub mod xml;

pub use path::{Path, PathError};
pub use transform::{IfNull, Mode, TransformError};

use serde::{Deserialize, Serialize};

/// Element and attribute names and attribute values: a string kept inline up to 24 bytes,
/// so parsing a document does not allocate for each name (most names and many values are
/// short). Derefs to `str` and compares with `str`/`String`.
pub type Name = compact_str::CompactString;

/// An XML namespace URI ([`Element::ns`]): boxed, so an element without one (the common
/// case) pays 16 bytes for the field, not a whole inline [`Name`].
pub type NsUri = Box<str>;

/// A typed leaf value. XML text is always [`Scalar::Str`]; YAML and JSON keep their types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Scalar {
    /// Text.
    Str(Name),
    /// A 64-bit integer (the rhai `INT`).
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl Scalar {
    /// The text form, as XML would carry it.
    pub fn to_text(&self) -> String {
        match self {
            Scalar::Str(s) => s.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// A child of an element: another element, or a run of text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Text content (mixed content keeps its position among the elements).
    Text(Scalar),
}

/// An element: name, attributes in document order, children in document order.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Element {
    /// The name as written, prefix included (`p:user`). XML requests resolve the prefix
    /// (or the default namespace) into [`Element::ns`]; YAML and JSON names are plain text.
    pub name: Name,
    /// The XML namespace URI of the element (`None`: no namespace). The XML parser sets it
    /// from the `xmlns` declarations in scope; the XML writers add the declarations an
    /// element needs where it ends up (a namespace-less element under a default-namespaced
    /// one gets `xmlns=""`). Not part of the YAML/JSON view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns: Option<NsUri>,
    /// Attributes in document order. Left out of the serde form when there are none (as
    /// `list_item` when false): the journal's records hold element trees (a call's
    /// executeData, its undo record), and those two fields were ~30 bytes of each element
    /// there (BENCHMARKS.md, "Issue 11: small stores' disk"). Records written with them
    /// still read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attrs: Vec<(Name, Name)>,
    /// Children in document order.
    pub children: Vec<Node>,
    /// Set when the element came from a YAML/JSON sequence, so a one-item list
    /// converts back to a list instead of a single value. Never serialized to XML.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub list_item: bool,
}

impl Element {
    /// An empty element.
    pub fn new(name: impl Into<Name>) -> Self {
        Element {
            name: name.into(),
            ..Default::default()
        }
    }

    /// An element holding one scalar.
    pub fn with_scalar(name: impl Into<Name>, value: Scalar) -> Self {
        Element {
            name: name.into(),
            children: vec![Node::Text(value)],
            ..Default::default()
        }
    }

    /// An element holding text.
    pub fn with_text(name: impl Into<Name>, text: impl Into<Name>) -> Self {
        Self::with_scalar(name, Scalar::Str(text.into()))
    }

    /// The value of an attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or replaces in place) an attribute.
    pub fn set_attr(&mut self, name: impl Into<Name>, value: impl Into<Name>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    /// Child elements in document order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|c| match c {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Mutable child elements in document order.
    pub(crate) fn elements_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|c| match c {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The local part of the name (after the prefix, if any).
    pub fn local_name(&self) -> &str {
        match self.name.split_once(':') {
            Some((_, local)) => local,
            None => &self.name,
        }
    }

    /// The first child element with this name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    /// Appends a child element and returns it.
    pub fn push(&mut self, child: Element) -> &mut Element {
        self.children.push(Node::Element(child));
        match self.children.last_mut() {
            Some(Node::Element(e)) => e,
            _ => unreachable!("just pushed an element"),
        }
    }

    /// The concatenated text of this element's direct text children (XPath `text()`-like).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.children {
            if let Node::Text(s) = c {
                out.push_str(&s.to_text());
            }
        }
        out
    }

    /// The single scalar child, if the element is a leaf holding exactly one.
    pub fn scalar(&self) -> Option<&Scalar> {
        match self.children.as_slice() {
            [Node::Text(s)] => Some(s),
            _ => None,
        }
    }

    /// XPath string value: all descendant text in document order.
    pub fn string_value(&self) -> String {
        let mut out = String::new();
        fn walk(e: &Element, out: &mut String) {
            for c in &e.children {
                match c {
                    Node::Text(s) => out.push_str(&s.to_text()),
                    Node::Element(e) => walk(e, out),
                }
            }
        }
        walk(self, &mut out);
        out
    }

    /// Nesting depth (a leaf is 1).
    pub(crate) fn depth(&self) -> usize {
        1 + self.elements().map(Element::depth).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod serde_form_tests {
    use super::*;

    /// The serde form (journal records) leaves out empty attributes and a false
    /// `list_item`, and still reads the form that wrote them.
    #[test]
    fn the_serde_form_leaves_out_empty_attributes_and_reads_the_older_form() {
        let mut undo = Element::new("undo");
        let mut path = Element::new("path");
        path.children.push(Node::Text(Scalar::Str("t/u1".into())));
        undo.children.push(Node::Element(path));
        let mut listed = Element::new("item");
        listed.list_item = true;
        listed.attrs.push(("id".into(), "7".into()));
        undo.children.push(Node::Element(listed));
        let json = serde_json::to_string(&undo).unwrap();
        assert_eq!(
            json,
            r#"{"name":"undo","children":[{"Element":{"name":"path","children":[{"Text":{"Str":"t/u1"}}]}},{"Element":{"name":"item","attrs":[["id","7"]],"children":[],"list_item":true}}]}"#
        );
        assert_eq!(serde_json::from_str::<Element>(&json).unwrap(), undo);
        let older = r#"{"name":"undo","attrs":[],"children":[{"Element":{"name":"path","attrs":[],"children":[{"Text":{"Str":"t/u1"}}],"list_item":false}},{"Element":{"name":"item","attrs":[["id","7"]],"children":[],"list_item":true}}],"list_item":false}"#;
        assert_eq!(serde_json::from_str::<Element>(older).unwrap(), undo);
    }
}
