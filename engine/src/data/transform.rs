//! before/after transforms: insert, merge, replace and move of nodes between scopes.
//!
//! As in MPS (see `docs/mps.md`; the details are in `docs/data-model.md`), a transform
//! copies every node its source path selects and puts each into the node its destination
//! path selects: insert appends it as the last child, merge puts its attributes and
//! children into the target in position, replace puts it in the target's place, and move
//! inserts it and then removes the source. [`extract`] copies what a source path selects,
//! [`remove`] detaches it (the second half of `move`), and [`place`] puts one node into the
//! target a destination path selects, creating a missing destination made of plain names.

use super::path::{element_at_mut, Location, LocationKind};
use super::{Element, Name, Node, Path, Scalar};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// How the transformed node goes into the target.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Append as a new last child of the target.
    #[default]
    Insert,
    /// The node's attributes and children go into the target, in position.
    Merge,
    /// The target is replaced by the node.
    Replace,
    /// Like insert, and the source node is removed from where it was.
    Move,
}

/// What to do when a source or forEach path selects nothing.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum IfNull {
    /// Raise an error (default).
    #[default]
    Fail,
    /// Do nothing (a transform) / run anyway (forEach, repeat = once).
    Ignore,
    /// Skip this iteration of the step.
    Skip,
}

/// A transform that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The destination path cannot be created (it has predicates or selects an attribute's
    /// parent that is missing).
    #[error("cannot create destination `{path}`: {reason}")]
    Destination {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Clones of the nodes `path` selects under `root` (`None` = root itself). An attribute
/// or text selection becomes an element named after the attribute (or `text`) holding its value.
///
/// An attribute value becomes [`Scalar::Str`]; a `text()` node keeps its scalar type.
/// A path that selects nothing gives an empty vector.
pub fn extract(root: &Element, path: Option<&Path>) -> Vec<Element> {
    extract_located(root, path)
        .into_iter()
        .map(|(e, _)| e)
        .collect()
}

/// A selected node, with its child indices under the root it was selected from when it is
/// an element there.
pub(crate) type Located = (Element, Option<Vec<usize>>);

/// As [`extract`], each node with its child indices under `root` when it is an element
/// there (`None` for an attribute or text selection, which has no element to write back).
pub(crate) fn extract_located(root: &Element, path: Option<&Path>) -> Vec<Located> {
    let Some(path) = path else {
        return vec![(root.clone(), Some(Vec::new()))];
    };
    path.locate(root)
        .into_iter()
        .filter_map(|loc| {
            let e = loc.element(root)?;
            match loc.kind {
                LocationKind::Element => Some((e.clone(), Some(loc.indices))),
                LocationKind::Attr(i) => e
                    .attrs
                    .get(i)
                    .map(|(k, v)| (Element::with_text(k.clone(), v.clone()), None)),
                LocationKind::Text(i) => match e.children.get(i) {
                    Some(Node::Text(s)) => Some((Element::with_scalar("text", s.clone()), None)),
                    _ => None,
                },
            }
        })
        .collect()
}

/// Removes the nodes `path` selects under `root`; returns how many were removed.
///
/// Elements, attributes and text nodes are detached. If the path selects the root itself
/// (e.g. `.`), the root cannot be detached: its attributes and children are cleared instead
/// (and it counts as one removal), so a `move` of a whole scope leaves it empty.
pub fn remove(root: &mut Element, path: &Path) -> usize {
    let locs = path.locate(root);
    let mut count = 0;
    // All selected nodes are of one kind and at one depth, so removing them in reverse
    // document order keeps the indices of the remaining ones valid.
    for loc in locs.iter().rev() {
        if remove_at(root, loc) {
            count += 1;
        }
    }
    count
}

fn remove_at(root: &mut Element, loc: &Location) -> bool {
    match loc.kind {
        LocationKind::Element => match loc.indices.split_last() {
            None => {
                root.attrs.clear();
                root.children.clear();
                true
            }
            Some((&last, parent)) => match element_at_mut(root, parent) {
                Some(p) if matches!(p.children.get(last), Some(Node::Element(_))) => {
                    p.children.remove(last);
                    true
                }
                _ => false,
            },
        },
        LocationKind::Attr(i) => match loc.element_mut(root) {
            Some(e) if i < e.attrs.len() => {
                e.attrs.remove(i);
                true
            }
            _ => false,
        },
        LocationKind::Text(i) => match loc.element_mut(root) {
            Some(e) if matches!(e.children.get(i), Some(Node::Text(_))) => {
                e.children.remove(i);
                true
            }
            _ => false,
        },
    }
}

/// Puts `node` into the target `dest` selects under `root` (`None` = root) with `mode`,
/// creating a missing destination chain of plain names.
///
/// - The target is the first node `dest` selects. If it selects nothing and is a plain
///   path (`a/b/c`), the missing elements are created (appended, reusing the first existing
///   element of each name). A missing `…/@name` or `…/text()` is created on the first
///   element its owner path selects (the owner chain is created too if it is plain).
///   Anything else that selects nothing is a [`TransformError::Destination`].
/// - An attribute target gets `node`'s string value, a text target `node`'s scalar
///   (or string value), whatever the mode.
/// - `Insert`/`Move`: `node` becomes the target's last child.
/// - `Merge`: see `merge_into`.
/// - `Replace`: `node` takes the target's place and keeps its own name; a root target keeps
///   its name and takes `node`'s attributes and children. A replaced list item stays a list item.
pub fn place(
    root: &mut Element,
    dest: Option<&Path>,
    node: Element,
    mode: Mode,
) -> Result<(), TransformError> {
    place_node(root, dest, node, mode, false)
}

/// As [`place`], for a value a transform computed (a `template` or an `expr`): it has no
/// name of its own, so in `replace` mode it replaces the target's content and attributes
/// and the target keeps its name (a node from `data` takes the target's place, name and all).
pub fn place_value(
    root: &mut Element,
    dest: Option<&Path>,
    node: Element,
    mode: Mode,
) -> Result<(), TransformError> {
    place_node(root, dest, node, mode, true)
}

fn place_node(
    root: &mut Element,
    dest: Option<&Path>,
    node: Element,
    mode: Mode,
    keeps_target_name: bool,
) -> Result<(), TransformError> {
    let loc = match dest {
        None => Location {
            indices: Vec::new(),
            kind: LocationKind::Element,
        },
        Some(path) => resolve_destination(root, path)?,
    };
    let missing = |what: &str| TransformError::Destination {
        path: dest.map(|p| p.as_str().to_string()).unwrap_or_default(),
        reason: format!("the {what} it selected is no longer there"),
    };
    match loc.kind {
        LocationKind::Attr(i) => {
            let e = loc.element_mut(root).ok_or_else(|| missing("element"))?;
            let slot = e.attrs.get_mut(i).ok_or_else(|| missing("attribute"))?;
            slot.1 = node.string_value().into();
            Ok(())
        }
        LocationKind::Text(i) => {
            let e = loc.element_mut(root).ok_or_else(|| missing("element"))?;
            let value = match node.scalar() {
                Some(s) => s.clone(),
                None => Scalar::Str(node.string_value().into()),
            };
            match e.children.get_mut(i) {
                Some(slot @ Node::Text(_)) => *slot = Node::Text(value),
                _ => e.children.push(Node::Text(value)),
            }
            Ok(())
        }
        LocationKind::Element => {
            match mode {
                Mode::Insert | Mode::Move => {
                    let target = loc.element_mut(root).ok_or_else(|| missing("element"))?;
                    target.push(node);
                }
                Mode::Merge => {
                    let target = loc.element_mut(root).ok_or_else(|| missing("element"))?;
                    merge_into(target, node);
                }
                Mode::Replace => match loc.indices.split_last() {
                    None => {
                        root.attrs = node.attrs;
                        root.children = node.children;
                    }
                    Some((&last, parent)) => {
                        let p = element_at_mut(root, parent).ok_or_else(|| missing("element"))?;
                        match p.children.get_mut(last) {
                            Some(Node::Element(old)) => {
                                let mut node = node;
                                node.list_item |= old.list_item;
                                if keeps_target_name {
                                    node.name = old.name.clone();
                                    node.ns = old.ns.clone();
                                }
                                *old = node;
                            }
                            _ => return Err(missing("element")),
                        }
                    }
                },
            }
            Ok(())
        }
    }
}

/// The first node `path` selects, creating it when that is possible.
fn resolve_destination(root: &mut Element, path: &Path) -> Result<Location, TransformError> {
    if let Some(loc) = path.locate(root).into_iter().next() {
        return Ok(loc);
    }
    let err = |reason: String| TransformError::Destination {
        path: path.as_str().to_string(),
        reason,
    };
    if let Some(names) = path.simple_names() {
        return Ok(Location {
            indices: create_chain(root, &[], &names),
            kind: LocationKind::Element,
        });
    }
    let Some(owner) = path.owner() else {
        return Err(err(
            "it selects nothing and has predicates, `*`, `.` or `..`, so the missing element \
             cannot be created; create it first or use a plain path such as `a/b/c`"
                .to_string(),
        ));
    };
    let attr = path.last_attr_name();
    if path.selects_attribute() && attr.is_none() {
        return Err(err(
            "`@*` selects no attribute here and cannot create one; name it, e.g. `@id`".to_string(),
        ));
    }
    let owner_indices = match owner.locate(root).into_iter().next() {
        Some(loc) => loc.indices,
        None => match owner.simple_names() {
            Some(names) => create_chain(root, &[], &names),
            None => {
                return Err(err(format!(
                    "the element `{owner}` that should hold it does not exist and cannot be \
                     created (it has predicates, `*`, `.` or `..`)"
                )))
            }
        },
    };
    let e = element_at_mut(root, &owner_indices)
        .ok_or_else(|| err("the owner element disappeared".to_string()))?;
    let kind = match attr {
        Some(name) => {
            e.attrs.push((name.into(), Name::default()));
            LocationKind::Attr(e.attrs.len() - 1)
        }
        None => {
            e.children.push(Node::Text(Scalar::Str(Name::default())));
            LocationKind::Text(e.children.len() - 1)
        }
    };
    Ok(Location {
        indices: owner_indices,
        kind,
    })
}

/// Follows `names` from the element at `base`, reusing the first existing child of each
/// name and appending the missing ones; returns the indices of the last one.
fn create_chain(root: &mut Element, base: &[usize], names: &[(&str, Option<&str>)]) -> Vec<usize> {
    let mut indices = base.to_vec();
    let Some(mut cur) = element_at_mut(root, base) else {
        return indices;
    };
    for &(name, ns) in names {
        let found = cur.children.iter().position(|c| match (c, ns) {
            (Node::Element(e), None) => e.ns.is_none() && e.name == name,
            (Node::Element(e), Some(uri)) => e.ns.as_deref() == Some(uri) && e.local_name() == name,
            (Node::Text(_), _) => false,
        });
        let i = match found {
            Some(i) => i,
            None => {
                // A namespaced element is created with its local name; the XML writers
                // declare its namespace as the default where needed.
                let mut e = Element::new(name);
                e.ns = ns.map(Into::into);
                cur.children.push(Node::Element(e));
                cur.children.len() - 1
            }
        };
        indices.push(i);
        cur = match cur.children.get_mut(i) {
            Some(Node::Element(e)) => e,
            _ => return indices,
        };
    }
    indices
}

/// The `merge` rule: `node`'s attributes and children go into `target`, in position.
///
/// - Attributes overwrite (in place) or are appended.
/// - For each child element name N of `node`, all of `target`'s N children are replaced,
///   at the position of the first of them, by `node`'s N children in order.
/// - `node`'s children whose names `target` lacks are appended, in `node`'s order.
/// - If `node` has non-blank direct text, it replaces `target`'s direct text nodes (at the
///   position of the first one, or appended). A single text node keeps its scalar type,
///   several are concatenated into a string.
pub(crate) fn merge_into(target: &mut Element, node: Element) {
    for (k, v) in node.attrs {
        target.set_attr(k, v);
    }
    let mut new_text = direct_text(&node.children);
    let replace_text = new_text.is_some();
    let target_names: HashSet<&str> = target.elements().map(|e| e.name.as_str()).collect();
    // node's children, split into groups that replace target children and the rest.
    let mut groups: Vec<(Name, Vec<Node>)> = Vec::new();
    let mut appended: Vec<Node> = Vec::new();
    let mut text_append_at: Option<usize> = None;
    for child in node.children {
        match child {
            Node::Element(e) => {
                if target_names.contains(e.name.as_str()) {
                    match groups.iter_mut().find(|(n, _)| *n == e.name) {
                        Some((_, g)) => g.push(Node::Element(e)),
                        None => groups.push((e.name.clone(), vec![Node::Element(e)])),
                    }
                } else {
                    appended.push(Node::Element(e));
                }
            }
            Node::Text(_) => {
                if text_append_at.is_none() {
                    text_append_at = Some(appended.len());
                }
            }
        }
    }
    let old = std::mem::take(&mut target.children);
    let mut out = Vec::with_capacity(old.len() + appended.len());
    for child in old {
        match child {
            Node::Element(e) => {
                if let Some(gi) = groups.iter().position(|(n, _)| *n == e.name) {
                    // First of this name: the group goes here; later ones: dropped.
                    let (_, g) = groups.swap_remove(gi);
                    out.extend(g);
                    // Remember that this name is done by leaving an empty group.
                    groups.push((e.name, Vec::new()));
                } else {
                    out.push(Node::Element(e));
                }
            }
            Node::Text(s) => {
                if !replace_text {
                    out.push(Node::Text(s));
                } else if let Some(t) = new_text.take() {
                    // The first text node is replaced; later ones are dropped.
                    out.push(Node::Text(t));
                }
            }
        }
    }
    // Names the target lacked (and the text, if it had none), in node's order.
    match (new_text, text_append_at) {
        (Some(t), Some(at)) => {
            let at = at.min(appended.len());
            let tail = appended.split_off(at);
            out.extend(appended);
            out.push(Node::Text(t));
            out.extend(tail);
        }
        _ => out.extend(appended),
    }
    target.children = out;
}

/// The non-blank direct text of a child list: one node keeps its type, several concatenate.
fn direct_text(children: &[Node]) -> Option<Scalar> {
    let mut texts = children.iter().filter_map(|c| match c {
        Node::Text(s) => Some(s),
        Node::Element(_) => None,
    });
    let first = texts.next()?;
    let value = match texts.next() {
        None => first.clone(),
        Some(second) => {
            let mut s = first.to_text();
            s.push_str(&second.to_text());
            for t in texts {
                s.push_str(&t.to_text());
            }
            Scalar::Str(s.into())
        }
    };
    match &value {
        Scalar::Str(s) if s.trim().is_empty() => None,
        _ => Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        Path::parse(s).unwrap()
    }

    /// A compact rendering for assertions: `name(@a=v)[children]`, text as "…", Int as #n.
    fn show(e: &Element) -> String {
        let mut s = e.name.to_string();
        if !e.attrs.is_empty() {
            let a: Vec<String> = e.attrs.iter().map(|(k, v)| format!("@{k}={v}")).collect();
            s.push_str(&format!("({})", a.join(",")));
        }
        if !e.children.is_empty() {
            let c: Vec<String> = e
                .children
                .iter()
                .map(|c| match c {
                    Node::Element(e) => show(e),
                    Node::Text(Scalar::Str(t)) => format!("{t:?}"),
                    Node::Text(Scalar::Int(i)) => format!("#{i}"),
                    Node::Text(other) => format!("{other:?}"),
                })
                .collect();
            s.push_str(&format!("[{}]", c.join(" ")));
        }
        s
    }

    fn el(name: &str, children: Vec<Element>) -> Element {
        let mut e = Element::new(name);
        for c in children {
            e.push(c);
        }
        e
    }

    fn txt(name: &str, t: &str) -> Element {
        Element::with_text(name, t)
    }

    fn users(names: &[&str]) -> Element {
        el(
            "users",
            names
                .iter()
                .map(|n| el("user", vec![txt("name", n)]))
                .collect(),
        )
    }

    #[test]
    fn extract_elements_attributes_text() {
        let mut root = el("data", vec![txt("upn", "ann@x"), users(&["ann", "bob"])]);
        root.set_attr("tenant", "contoso");
        root.push(Element::with_scalar("count", Scalar::Int(2)));
        assert_eq!(extract(&root, None), vec![root.clone()]);
        let got = extract(&root, Some(&p("users/user/name")));
        assert_eq!(got, vec![txt("name", "ann"), txt("name", "bob")]);
        assert_eq!(
            extract(&root, Some(&p("@tenant"))),
            vec![txt("tenant", "contoso")]
        );
        assert_eq!(
            extract(&root, Some(&p("count/text()"))),
            vec![Element::with_scalar("text", Scalar::Int(2))]
        );
        // missing source
        assert!(extract(&root, Some(&p("nothing"))).is_empty());
        assert!(extract(&root, Some(&p("users/user[@x]"))).is_empty());
    }

    #[test]
    fn remove_detaches_everything_selected() {
        let mut root = el("data", vec![txt("upn", "a"), users(&["ann", "bob", "cid"])]);
        root.set_attr("x", "1");
        assert_eq!(remove(&mut root, &p("users/user[name!='bob']")), 2);
        assert_eq!(
            show(&root),
            r#"data(@x=1)[upn["a"] users[user[name["bob"]]]]"#
        );
        assert_eq!(remove(&mut root, &p("@x")), 1);
        assert_eq!(remove(&mut root, &p("upn/text()")), 1);
        assert_eq!(show(&root), r#"data[upn users[user[name["bob"]]]]"#);
        assert_eq!(remove(&mut root, &p("nothing")), 0);
        assert_eq!(remove(&mut root, &p(".")), 1);
        assert_eq!(show(&root), "data");
    }

    #[test]
    fn move_is_extract_then_remove() {
        let mut data = el("data", vec![txt("upn", "ann@x"), txt("dc", "AD01")]);
        let mut exec = el("executeData", vec![txt("isAdmin", "0")]);
        let src = p("upn");
        for n in extract(&data, Some(&src)) {
            place(&mut exec, None, n, Mode::Move).unwrap();
        }
        assert_eq!(remove(&mut data, &src), 1);
        assert_eq!(show(&data), r#"data[dc["AD01"]]"#);
        assert_eq!(show(&exec), r#"executeData[isAdmin["0"] upn["ann@x"]]"#);
        assert!(extract(&data, Some(&src)).is_empty());
    }

    #[test]
    fn insert_appends_and_creates_destination() {
        let mut root = el("data", vec![users(&["ann"])]);
        place(
            &mut root,
            Some(&p("users")),
            el("user", vec![txt("name", "bob")]),
            Mode::Insert,
        )
        .unwrap();
        assert_eq!(
            show(&root),
            r#"data[users[user[name["ann"]] user[name["bob"]]]]"#
        );
        // absent destination: created
        place(
            &mut root,
            Some(&p("created/here")),
            txt("x", "1"),
            Mode::Insert,
        )
        .unwrap();
        assert_eq!(
            show(root.child("created").unwrap()),
            r#"created[here[x["1"]]]"#
        );
        // partly present: the existing prefix is reused
        place(
            &mut root,
            Some(&p("created/other")),
            txt("y", "2"),
            Mode::Insert,
        )
        .unwrap();
        assert_eq!(
            show(root.child("created").unwrap()),
            r#"created[here[x["1"]] other[y["2"]]]"#
        );
        // absent destination with a predicate: error
        let err = place(
            &mut root,
            Some(&p("users/user[@id='9']")),
            txt("x", "1"),
            Mode::Insert,
        )
        .unwrap_err();
        let TransformError::Destination { path, reason } = &err;
        assert_eq!(path, "users/user[@id='9']");
        assert!(reason.contains("plain path"), "{reason}");
        assert!(place(&mut root, Some(&p("*/zzz")), txt("x", "1"), Mode::Merge).is_err());
        // present destination with a predicate: fine
        place(
            &mut root,
            Some(&p("users/user[name='bob']")),
            txt("id", "2"),
            Mode::Insert,
        )
        .unwrap();
        assert_eq!(
            show(root.child("users").unwrap()),
            r#"users[user[name["ann"]] user[name["bob"] id["2"]]]"#
        );
    }

    #[test]
    fn merge_replaces_arrays_in_position_and_appends_new_names() {
        let mut target = el("t", vec![txt("a", "0"), users(&["x"]), txt("z", "9")]);
        // target: a, users, z ; merge a node holding users (two) and b (new)
        let mut t2 = el("t", vec![]);
        t2.push(txt("first", "f"));
        t2.push(el("user", vec![txt("name", "old1")]));
        t2.push(txt("mid", "m"));
        t2.push(el("user", vec![txt("name", "old2")]));
        t2.push(txt("last", "l"));
        let node = el(
            "n",
            vec![
                el("user", vec![txt("name", "ann")]),
                el("user", vec![txt("name", "bob")]),
                txt("extra", "e"),
            ],
        );
        merge_into(&mut t2, node.clone());
        assert_eq!(
            show(&t2),
            r#"t[first["f"] user[name["ann"]] user[name["bob"]] mid["m"] last["l"] extra["e"]]"#
        );
        // insert appends instead
        place(
            &mut target,
            Some(&p("users")),
            node.child("user").unwrap().clone(),
            Mode::Insert,
        )
        .unwrap();
        assert_eq!(
            show(target.child("users").unwrap()),
            r#"users[user[name["x"]] user[name["ann"]]]"#
        );
    }

    #[test]
    fn merge_interleaved() {
        // <a/><b/><a/> merge <a>x</a> → <a>x</a><b/>
        let mut root = el(
            "r",
            vec![Element::new("a"), Element::new("b"), Element::new("a")],
        );
        let node = el("n", vec![txt("a", "x")]);
        place(&mut root, None, node, Mode::Merge).unwrap();
        assert_eq!(show(&root), r#"r[a["x"] b]"#);
    }

    #[test]
    fn merge_attributes_and_text() {
        let mut root = el("data", vec![]);
        let t = root.push(Element::new("t"));
        t.set_attr("a", "1");
        t.set_attr("b", "2");
        t.children.push(Node::Text(Scalar::Str("old".into())));
        t.push(txt("c", "3"));
        t.children.push(Node::Text(Scalar::Str("old2".into())));
        let mut node = Element::with_text("n", "new");
        node.set_attr("b", "20");
        node.set_attr("d", "4");
        place(&mut root, Some(&p("t")), node, Mode::Merge).unwrap();
        assert_eq!(
            show(root.child("t").unwrap()),
            r#"t(@a=1,@b=20,@d=4)["new" c["3"]]"#
        );
        // blank text does not replace
        let blank = Element::with_text("n", "  ");
        place(&mut root, Some(&p("t")), blank, Mode::Merge).unwrap();
        assert_eq!(
            show(root.child("t").unwrap()),
            r#"t(@a=1,@b=20,@d=4)["new" c["3"]]"#
        );
    }

    #[test]
    fn merge_scalar_into_empty_keeps_type() {
        let mut root = el("data", vec![]);
        let node = Element::with_scalar("n", Scalar::Int(42));
        place(&mut root, Some(&p("count")), node, Mode::Merge).unwrap();
        assert_eq!(
            root.child("count").unwrap().scalar(),
            Some(&Scalar::Int(42))
        );
        // merging the same fields twice mirrors instead of duplicating
        let fields = el("n", vec![txt("x", "1"), txt("y", "2")]);
        place(&mut root, None, fields.clone(), Mode::Merge).unwrap();
        place(&mut root, None, fields, Mode::Merge).unwrap();
        assert_eq!(show(&root), r#"data[count[#42] x["1"] y["2"]]"#);
    }

    #[test]
    fn merge_into_root_and_into_tenant_children() {
        // Merging `tenant` into executeData brings its children, not a `<tenant>` element.
        let data = el(
            "data",
            vec![el("tenant", vec![txt("name", "contoso"), txt("ou", "T1")])],
        );
        let mut exec = el("executeData", vec![txt("isAdmin", "0")]);
        for n in extract(&data, Some(&p("tenant"))) {
            place(&mut exec, None, n, Mode::Merge).unwrap();
        }
        assert_eq!(
            show(&exec),
            r#"executeData[isAdmin["0"] name["contoso"] ou["T1"]]"#
        );
    }

    #[test]
    fn replace_in_position_and_root() {
        let mut root = el(
            "data",
            vec![txt("a", "1"), users(&["ann", "bob"]), txt("c", "3")],
        );
        place(
            &mut root,
            Some(&p("users/user[1]")),
            txt("admin", "x"),
            Mode::Replace,
        )
        .unwrap();
        assert_eq!(
            show(&root),
            r#"data[a["1"] users[admin["x"] user[name["bob"]]] c["3"]]"#
        );
        place(&mut root, Some(&p("a")), txt("b", "2"), Mode::Replace).unwrap();
        assert_eq!(
            show(&root),
            r#"data[b["2"] users[admin["x"] user[name["bob"]]] c["3"]]"#
        );
        // root replace keeps the root's name
        let mut node = el("whatever", vec![txt("only", "1")]);
        node.set_attr("k", "v");
        place(&mut root, None, node.clone(), Mode::Replace).unwrap();
        assert_eq!(show(&root), r#"data(@k=v)[only["1"]]"#);
        // `.` is the root too
        place(&mut root, Some(&p(".")), txt("z", "9"), Mode::Replace).unwrap();
        assert_eq!(show(&root), r#"data["9"]"#);
        // a replaced list item stays a list item
        let mut list = el("l", vec![]);
        list.push(Element::new("i")).list_item = true;
        place(&mut list, Some(&p("i")), txt("i", "x"), Mode::Replace).unwrap();
        assert!(list.child("i").unwrap().list_item);
    }

    #[test]
    fn attribute_and_text_destinations() {
        let mut root = el("data", vec![txt("user", "ann")]);
        place(&mut root, Some(&p("user/@id")), txt("x", "7"), Mode::Insert).unwrap();
        assert_eq!(root.child("user").unwrap().attr("id"), Some("7"));
        place(&mut root, Some(&p("user/@id")), txt("x", "8"), Mode::Merge).unwrap();
        assert_eq!(root.child("user").unwrap().attrs.len(), 1);
        assert_eq!(root.child("user").unwrap().attr("id"), Some("8"));
        // owner chain created when plain
        place(
            &mut root,
            Some(&p("new/el/@k")),
            txt("x", "v"),
            Mode::Insert,
        )
        .unwrap();
        assert_eq!(
            root.child("new").unwrap().child("el").unwrap().attr("k"),
            Some("v")
        );
        // owner with predicate that matches nothing: error
        assert!(place(
            &mut root,
            Some(&p("user[2]/@k")),
            txt("x", "v"),
            Mode::Insert
        )
        .is_err());
        assert!(place(&mut root, Some(&p("user/@*")), txt("x", "v"), Mode::Insert).is_ok());
        assert!(place(
            &mut root,
            Some(&p("nouser/@*")),
            txt("x", "v"),
            Mode::Insert
        )
        .is_err());
        // text
        place(
            &mut root,
            Some(&p("user/text()")),
            Element::with_scalar("x", Scalar::Int(5)),
            Mode::Replace,
        )
        .unwrap();
        assert_eq!(root.child("user").unwrap().scalar(), Some(&Scalar::Int(5)));
        place(
            &mut root,
            Some(&p("empty/text()")),
            txt("x", "t"),
            Mode::Insert,
        )
        .unwrap();
        assert_eq!(root.child("empty").unwrap().text(), "t");
    }
}
