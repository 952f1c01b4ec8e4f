//! The map/array view of the data tree used by YAML, JSON, rhai and responses.
//!
//! [`to_json`] gives an element's content (not its own name) as a JSON value;
//! [`from_json`] builds an element from one. The mapping (see `docs/data-model.md`):
//!
//! | tree | JSON |
//! | --- | --- |
//! | no attributes, no children | `null` |
//! | no attributes, only text (one scalar) | that scalar, typed |
//! | attribute `a` | `"@a": "value"` (first) |
//! | child `n` once | `"n": value` |
//! | child `n` repeated, or marked `list_item` | `"n": [values…]` |
//! | text mixed with elements or attributes | `"#text": value` |
//!
//! ```
//! use provisio_engine::data::json::{from_json, to_json};
//! let v = serde_json::json!({"@id": "7", "name": "ann", "groups": ["a"]});
//! let e = from_json("user", &v).unwrap();
//! assert_eq!(to_json(&e), v);
//! ```

use serde_json::{Map, Number, Value};

use super::path::is_valid_name;
use super::{Element, Node, Scalar};

/// Deepest JSON nesting [`from_json`] accepts.
const MAX_DEPTH: usize = 256;

/// A JSON value that cannot become a data tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at `{path}`: {message}")]
pub struct JsonError {
    /// Where in the value.
    pub(crate) path: String,
    /// What is wrong.
    pub(crate) message: String,
}

/// A scalar as JSON: strings stay strings, `Int` and finite `Float` become numbers, `Bool`
/// a boolean. A non-finite float (NaN, ±inf) has no JSON number and becomes its text form.
pub(crate) fn scalar_to_json(s: &Scalar) -> Value {
    match s {
        Scalar::Str(s) => Value::String(s.to_string()),
        Scalar::Int(i) => Value::Number(Number::from(*i)),
        Scalar::Float(f) => match Number::from_f64(*f) {
            Some(n) => Value::Number(n),
            None => Value::String(s.to_text()),
        },
        Scalar::Bool(b) => Value::Bool(*b),
    }
}

/// A JSON scalar as a [`Scalar`]; `None` for null, arrays and objects.
/// Integers that fit `i64` become `Int`, other numbers `Float`.
pub fn json_to_scalar(v: &Value) -> Option<Scalar> {
    match v {
        Value::String(s) => Some(Scalar::Str(s.as_str().into())),
        Value::Bool(b) => Some(Scalar::Bool(*b)),
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => Scalar::Int(i),
            None => Scalar::Float(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// The content of `element` as a JSON value (the element's own name is not included).
pub fn to_json(element: &Element) -> Value {
    let has_elements = element
        .children
        .iter()
        .any(|c| matches!(c, Node::Element(_)));
    if element.attrs.is_empty() && !has_elements {
        return match text_value(element, false) {
            Some(v) => v,
            None => Value::Null,
        };
    }
    let mut map = Map::new();
    for (k, v) in &element.attrs {
        map.insert(format!("@{k}"), Value::String(v.to_string()));
    }
    // Groups in order of first appearance; `None` name = the text group.
    let mut groups: Vec<(Option<&str>, Vec<&Element>, bool)> = Vec::new();
    for c in &element.children {
        match c {
            Node::Element(e) => match groups.iter_mut().find(|g| g.0 == Some(e.name.as_str())) {
                Some(g) => {
                    g.1.push(e);
                    g.2 |= e.list_item;
                }
                None => groups.push((Some(e.name.as_str()), vec![e], e.list_item)),
            },
            Node::Text(s) => {
                if is_ignorable(s, has_elements) {
                    continue;
                }
                if !groups.iter().any(|g| g.0.is_none()) {
                    groups.push((None, Vec::new(), false));
                }
            }
        }
    }
    for (name, elems, list) in groups {
        match name {
            None => {
                if let Some(v) = text_value(element, has_elements) {
                    map.insert("#text".to_string(), v);
                }
            }
            Some(name) => {
                let value = if list || elems.len() > 1 {
                    Value::Array(elems.into_iter().map(to_json).collect())
                } else {
                    elems.first().map_or(Value::Null, |e| to_json(e))
                };
                map.insert(name.to_string(), value);
            }
        }
    }
    Value::Object(map)
}

/// Whitespace-only string text next to child elements is indentation, not content.
fn is_ignorable(s: &Scalar, has_elements: bool) -> bool {
    has_elements && matches!(s, Scalar::Str(t) if t.trim().is_empty())
}

/// The direct text of an element: one node keeps its type, several concatenate.
fn text_value(element: &Element, has_elements: bool) -> Option<Value> {
    let mut texts = element.children.iter().filter_map(|c| match c {
        Node::Text(s) if !is_ignorable(s, has_elements) => Some(s),
        _ => None,
    });
    let first = texts.next()?;
    match texts.next() {
        None => Some(scalar_to_json(first)),
        Some(second) => {
            let mut s = first.to_text();
            s.push_str(&second.to_text());
            for t in texts {
                s.push_str(&t.to_text());
            }
            Some(Value::String(s))
        }
    }
}

/// Builds an element named `name` whose content is `value`.
///
/// Objects become children in key order (`@x` keys become attributes, `#text` a text node);
/// an array under key `k` becomes repeated `k` elements marked `list_item`; `null` an empty
/// element; a scalar a typed text node. A top-level array, nested arrays, non-scalar
/// attribute or `#text` values and keys that are not element names are errors.
pub fn from_json(name: &str, value: &Value) -> Result<Element, JsonError> {
    if let Value::Array(_) = value {
        return Err(JsonError {
            path: name.to_string(),
            message: "a list cannot be the whole content; wrap it in an object, \
                      e.g. {\"item\": [...]}"
                .to_string(),
        });
    }
    let mut path = name.to_string();
    build(name, value, &mut path, 0)
}

fn build(name: &str, value: &Value, path: &mut String, depth: usize) -> Result<Element, JsonError> {
    if depth > MAX_DEPTH {
        return Err(err(
            path,
            format!("nested more than {MAX_DEPTH} levels deep"),
        ));
    }
    let mut e = Element::new(name);
    match value {
        Value::Null => {}
        Value::Array(_) => {
            return Err(err(
                path,
                "nested arrays are not representable; wrap items in an object",
            ))
        }
        Value::Object(map) => {
            for (k, v) in map {
                let len = path.len();
                if let Some(attr) = k.strip_prefix('@') {
                    path.push_str("/@");
                    path.push_str(attr);
                    if !is_valid_name(attr) {
                        return Err(err(path, bad_name(k)));
                    }
                    let Some(s) = json_to_scalar(v) else {
                        return Err(err(
                            path,
                            "an attribute value must be a string, number or boolean",
                        ));
                    };
                    e.attrs.push((attr.into(), s.to_text().into()));
                } else if k == "#text" {
                    path.push_str("/#text");
                    let Some(s) = json_to_scalar(v) else {
                        return Err(err(path, "`#text` must be a string, number or boolean"));
                    };
                    e.children.push(Node::Text(s));
                } else {
                    path.push('/');
                    path.push_str(k);
                    if !is_valid_name(k) {
                        return Err(err(path, bad_name(k)));
                    }
                    match v {
                        Value::Array(items) => {
                            for (i, item) in items.iter().enumerate() {
                                let item_len = path.len();
                                path.push_str(&format!("[{}]", i + 1));
                                if let Value::Array(_) = item {
                                    return Err(err(
                                        path,
                                        "nested arrays are not representable; \
                                         wrap items in an object",
                                    ));
                                }
                                let mut child = build(k, item, path, depth + 1)?;
                                child.list_item = true;
                                e.children.push(Node::Element(child));
                                path.truncate(item_len);
                            }
                        }
                        _ => {
                            let child = build(k, v, path, depth + 1)?;
                            e.children.push(Node::Element(child));
                        }
                    }
                }
                path.truncate(len);
            }
        }
        scalar => {
            if let Some(s) = json_to_scalar(scalar) {
                e.children.push(Node::Text(s));
            }
        }
    }
    Ok(e)
}

fn err(path: &str, message: impl Into<String>) -> JsonError {
    JsonError {
        path: path.to_string(),
        message: message.into(),
    }
}

fn bad_name(key: &str) -> String {
    format!(
        "`{key}` is not a valid element name: names start with a letter, digit or `_` and \
         contain only letters, digits, `_`, `-`, `.` and `:` (`@name` keys are attributes, \
         `#text` is text); rename the key, e.g. `{}`",
        suggest(key)
    )
}

fn suggest(key: &str) -> String {
    let s: String = key
        .trim_start_matches('@')
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match s.chars().next() {
        Some(c) if c.is_alphanumeric() || c == '_' => s,
        _ => format!("_{s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round(v: Value) {
        let e = from_json("data", &v).unwrap();
        assert_eq!(to_json(&e), v, "tree: {e:?}");
    }

    #[test]
    fn leaves_and_nulls() {
        assert_eq!(to_json(&Element::new("x")), Value::Null);
        assert_eq!(to_json(&Element::with_text("x", "hi")), json!("hi"));
        assert_eq!(
            to_json(&Element::with_scalar("x", Scalar::Int(3))),
            json!(3)
        );
        assert_eq!(
            to_json(&Element::with_scalar("x", Scalar::Float(1.5))),
            json!(1.5)
        );
        assert_eq!(
            to_json(&Element::with_scalar("x", Scalar::Bool(true))),
            json!(true)
        );
        assert_eq!(
            to_json(&Element::with_scalar("x", Scalar::Float(f64::NAN))),
            json!("NaN")
        );
        let e = from_json("x", &json!(12)).unwrap();
        assert_eq!(e.scalar(), Some(&Scalar::Int(12)));
        let e = from_json("x", &json!(1.25)).unwrap();
        assert_eq!(e.scalar(), Some(&Scalar::Float(1.25)));
        let e = from_json("x", &json!(u64::MAX)).unwrap();
        assert!(matches!(e.scalar(), Some(Scalar::Float(_))));
        let e = from_json("x", &Value::Null).unwrap();
        assert!(e.children.is_empty());
    }

    #[test]
    fn objects_attributes_text_and_arrays() {
        round(json!({"a": 1, "b": "two", "c": true, "d": null}));
        round(json!({"@id": "7", "name": "ann"}));
        round(json!({"@id": "7", "#text": "hello"}));
        round(json!({"user": [{"name": "ann"}, {"name": "bob"}]}));
        round(json!({"user": [{"name": "ann"}]}));
        round(json!({"tags": ["a", 1, false, null]}));
        round(json!({"x": {"y": {"z": [{"@k": "v", "w": 1.5}]}}}));
        round(json!({"a": 1, "#text": "mixed", "b": 2}));
    }

    #[test]
    fn xml_style_trees() {
        // <user id="1"><name>ann</name><group>a</group><group>b</group></user>
        let mut u = Element::new("user");
        u.set_attr("id", "1");
        u.push(Element::with_text("name", "ann"));
        u.push(Element::with_text("group", "a"));
        u.push(Element::with_text("group", "b"));
        assert_eq!(
            to_json(&u),
            json!({"@id": "1", "name": "ann", "group": ["a", "b"]})
        );
        // interleaved: grouped by first appearance
        let mut r = Element::new("r");
        r.push(Element::with_text("a", "1"));
        r.push(Element::with_text("b", "2"));
        r.push(Element::with_text("a", "3"));
        assert_eq!(to_json(&r), json!({"a": ["1", "3"], "b": "2"}));
        // indentation is ignored next to elements
        let mut r = Element::new("r");
        r.children.push(Node::Text(Scalar::Str("\n  ".into())));
        r.push(Element::with_text("a", "1"));
        r.children.push(Node::Text(Scalar::Str("\n".into())));
        assert_eq!(to_json(&r), json!({"a": "1"}));
        // several text runs concatenate
        let mut r = Element::new("r");
        r.children.push(Node::Text(Scalar::Str("a".into())));
        r.children.push(Node::Text(Scalar::Int(1)));
        assert_eq!(to_json(&r), json!("a1"));
        // attributes only
        let mut r = Element::new("r");
        r.set_attr("k", "v");
        assert_eq!(to_json(&r), json!({"@k": "v"}));
    }

    #[test]
    fn from_json_structure() {
        let e = from_json(
            "data",
            &json!({"@id": 7, "user": [{"n": 1}, {"n": 2}], "#text": "t"}),
        )
        .unwrap();
        assert_eq!(e.attr("id"), Some("7"));
        let users: Vec<&Element> = e.elements().collect();
        assert_eq!(users.len(), 2);
        assert!(users.iter().all(|u| u.list_item && u.name == "user"));
        assert_eq!(e.text(), "t");
        // empty array: no element (lossy)
        let e = from_json("data", &json!({"user": []})).unwrap();
        assert!(e.children.is_empty());
        assert_eq!(to_json(&e), Value::Null);
    }

    #[test]
    fn errors_name_the_path() {
        let e = from_json("data", &json!([1, 2])).unwrap_err();
        assert_eq!(e.path, "data");
        let e = from_json("data", &json!({"a": {"b": [[1]]}})).unwrap_err();
        assert_eq!(e.path, "data/a/b[1]");
        assert!(e.message.contains("nested arrays"), "{e}");
        let e = from_json("data", &json!({"a": [{"@x": {"y": 1}}]})).unwrap_err();
        assert_eq!(e.path, "data/a[1]/@x");
        let e = from_json("data", &json!({"a": {"my key": 1}})).unwrap_err();
        assert_eq!(e.path, "data/a/my key");
        assert!(e.message.contains("my_key"), "{e}");
        for bad in ["", "a/b", "a[1]", "x@y", "#x", "@", "-a", ".", "..", "a b"] {
            assert!(
                from_json("data", &json!({ bad: 1 })).is_err(),
                "{bad:?} accepted"
            );
        }
        let e = from_json("data", &json!({"#text": [1]})).unwrap_err();
        assert!(e.message.contains("#text"), "{e}");
        assert_eq!(
            e.to_string(),
            "at `data/#text`: `#text` must be a string, number or boolean"
        );
    }

    #[test]
    fn deep_values_are_refused_not_overflowed() {
        let mut v = json!(1);
        for _ in 0..400 {
            v = json!({ "a": v });
        }
        assert!(from_json("data", &v).is_err());
    }
}
