//! Property tests of the data tree: JSON round trip, transforms, path parsing and selection.

use proptest::prelude::*;
use provisio_engine::data::json::{from_json, to_json};
use provisio_engine::data::transform::{extract, place, remove};
use provisio_engine::data::{Element, Mode, Name, Node, Path, Scalar};
use serde_json::{Map, Value};

// ---------------------------------------------------------------------------------------------
// Generators

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("user".to_string()),
        "[a-z][a-z0-9_.:-]{0,6}".prop_filter("no axis", |s| !s.contains("::")),
    ]
}

fn json_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        "[ -~]{0,8}".prop_map(Value::from),
        (-1.0e9f64..1.0e9).prop_map(|f| Value::from(f + 0.5)),
        Just(Value::Null),
    ]
}

/// Non-empty objects with valid keys; arrays have ≥ 1 items that are scalars or non-empty
/// objects; `#text` only next to attributes and non-blank.
fn json_object() -> impl Strategy<Value = Value> {
    let leaf = json_scalar();
    let value = leaf.prop_recursive(4, 48, 5, |inner| {
        let item = inner
            .clone()
            .prop_filter("no arrays in arrays", |v| !v.is_array());
        prop_oneof![
            3 => inner.clone(),
            1 => prop::collection::vec(item, 1..4).prop_map(Value::Array),
            2 => object_of(inner),
        ]
    });
    object_of(value)
}

fn object_of(values: impl Strategy<Value = Value> + Clone) -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(("[a-z]{1,4}", "[ -~]{0,6}"), 0..3),
        prop::option::of("[a-z][a-z ]{0,5}"),
        prop::collection::vec((name(), values), 1..5),
    )
        .prop_map(|(attrs, text, children)| {
            let mut m = Map::new();
            for (k, v) in attrs {
                m.insert(format!("@{k}"), Value::String(v));
            }
            if !m.is_empty() {
                if let Some(t) = text {
                    m.insert("#text".into(), Value::String(t));
                }
            }
            for (k, v) in children {
                if !m.contains_key(&k) {
                    m.insert(k, v);
                }
            }
            Value::Object(m)
        })
        .prop_filter("non-empty arrays and objects", ok_for_round_trip)
}

fn ok_for_round_trip(v: &Value) -> bool {
    match v {
        Value::Array(items) => !items.is_empty() && items.iter().all(ok_for_round_trip),
        Value::Object(m) => !m.is_empty() && m.values().all(ok_for_round_trip),
        _ => true,
    }
}

/// Whether each child name of `e` occurs in one contiguous run.
fn names_are_grouped(e: &Element) -> bool {
    let names: Vec<&str> = e.elements().map(|c| c.name.as_str()).collect();
    names.iter().enumerate().all(|(i, n)| {
        let first = names.iter().position(|m| m == n).unwrap_or(i);
        names[first..=i].iter().all(|m| m == n)
    })
}

fn scalar() -> impl Strategy<Value = Scalar> {
    prop_oneof![
        "[a-z0-9]{1,6}".prop_map(|s| Scalar::Str(s.into())),
        any::<i64>().prop_map(Scalar::Int),
        any::<bool>().prop_map(Scalar::Bool),
    ]
}

fn attrs() -> impl Strategy<Value = Vec<(Name, Name)>> {
    prop::collection::vec(("[a-c]", "[a-z0-9]{0,3}"), 0..3).prop_map(|v| {
        let mut e = Element::new("x");
        for (k, val) in v {
            e.set_attr(k, val);
        }
        e.attrs
    })
}

/// A tree: leaves hold one scalar; inner elements hold attributes and child elements.
fn tree() -> impl Strategy<Value = Element> {
    let leaf = (name(), attrs(), scalar()).prop_map(|(n, a, s)| {
        let mut e = Element::with_scalar(n, s);
        e.attrs = a;
        e
    });
    leaf.prop_recursive(4, 40, 5, |inner| {
        (name(), attrs(), prop::collection::vec(inner, 0..5)).prop_map(|(n, a, kids)| {
            let mut e = Element::new(n);
            e.attrs = a;
            for k in kids {
                e.push(k);
            }
            e
        })
    })
}

/// Any tree at all, including mixed content and blank text.
fn wild_tree() -> impl Strategy<Value = Element> {
    let leaf = prop_oneof![
        (name(), attrs()).prop_map(|(n, a)| {
            let mut e = Element::new(n);
            e.attrs = a;
            e
        }),
        ("[ a-z]{0,3}", scalar()).prop_map(|(n, s)| Element::with_scalar(n, s)),
    ];
    leaf.prop_recursive(5, 60, 6, |inner| {
        (
            name(),
            attrs(),
            prop::collection::vec(
                prop_oneof![
                    3 => inner.prop_map(Node::Element),
                    1 => scalar().prop_map(Node::Text),
                    1 => "[ \n]{0,2}".prop_map(|s| Node::Text(Scalar::Str(s.into()))),
                ],
                0..6,
            ),
            any::<bool>(),
        )
            .prop_map(|(n, a, children, list_item)| Element {
                name: n.into(),
                ns: None,
                attrs: a,
                children,
                list_item,
            })
    })
}

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9 ]{0,4}".prop_map(|s| format!("'{s}'")),
        "[a-z0-9']{0,4}".prop_map(|s| format!("\"{s}\"")),
        (0u32..100).prop_map(|n| n.to_string()),
    ]
}

fn condition() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        "[a-c]".prop_map(|a| format!("@{a}")),
        Just("@*".to_string()),
        name(),
        Just(".".to_string()),
        Just("text()".to_string()),
        ("[a-c]", literal()).prop_map(|(a, l)| format!("@{a}={l}")),
        ("[a-c]", literal()).prop_map(|(a, l)| format!("@{a} != {l}")),
        (name(), literal()).prop_map(|(n, l)| format!("{n}={l}")),
        literal().prop_map(|l| format!(".={l}")),
        (name(), "[a-c]", literal()).prop_map(|(n, a, l)| format!("{n}/@{a}={l}")),
    ];
    atom.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| format!("not({e})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} or {b})")),
        ]
    })
}

fn step() -> impl Strategy<Value = String> {
    let pred = prop_oneof![
        (1usize..5).prop_map(|n| format!("[{n}]")),
        Just("[last()]".to_string()),
        condition().prop_map(|c| format!("[{c}]")),
    ];
    (
        prop_oneof![
            4 => name(),
            1 => Just("*".to_string()),
            1 => Just(".".to_string()),
            1 => Just("..".to_string()),
        ],
        prop::collection::vec(pred, 0..3),
    )
        .prop_map(|(s, preds)| format!("{s}{}", preds.concat()))
}

/// Valid path text.
fn valid_path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(step(), 1..5),
        prop_oneof![
            3 => Just(String::new()),
            1 => "[a-c]".prop_map(|a| format!("/@{a}")),
            1 => Just("/@*".to_string()),
            1 => Just("/text()".to_string()),
        ],
    )
        .prop_map(|(steps, last)| format!("{}{last}", steps.join("/")))
}

/// Path-like noise.
fn noisy_path() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ab@*.()\\[\\]'\"=! /0-9a-z-]{0,30}",
        any::<String>(),
        valid_path().prop_map(|p| format!("{p}]")),
        valid_path().prop_map(|p| p.replace('/', "//")),
    ]
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    // `PROPTEST_CASES` (a long run) overrides the default count.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    ))]

    /// (a) JSON → tree → JSON is the identity for representable values.
    #[test]
    fn json_round_trip(v in json_object()) {
        let e = from_json("data", &v).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(to_json(&e), v);
    }

    /// (a') for any tree, the JSON view survives JSON → tree → JSON unchanged
    /// (when the tree's names are valid keys).
    #[test]
    fn json_view_is_stable(t in wild_tree()) {
        let v = to_json(&t);
        if let Ok(e) = from_json("data", &v) {
            prop_assert_eq!(to_json(&e), v);
        }
    }

    /// (b) merge into an empty target, then extract: the node's content comes back.
    #[test]
    fn merge_into_empty_then_extract(node in tree(), dest in "[a-z]{1,3}(/[a-z]{1,3}){0,2}") {
        let mut root = Element::new("data");
        let path = Path::parse(&dest).map_err(|e| TestCaseError::fail(e.to_string()))?;
        place(&mut root, Some(&path), node.clone(), Mode::Merge)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let got = extract(&root, Some(&path));
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(&got[0].attrs, &node.attrs);
        prop_assert_eq!(&got[0].children, &node.children);
        // merging the same node again changes nothing (when its same-named children are
        // adjacent; interleaved ones are regrouped at the first, by the merge rule)
        if names_are_grouped(&node) {
            place(&mut root, Some(&path), node.clone(), Mode::Merge)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let again = extract(&root, Some(&path));
            prop_assert_eq!(&again[0].children, &node.children);
        }
    }

    /// (b) move = extract + remove: the source path selects nothing afterwards and the
    /// destination got every extracted node.
    #[test]
    fn move_leaves_no_source(
        src in tree(),
        path in prop_oneof![
            name(),
            Just("*".to_string()),
            Just("a[@a]".to_string()),
            Just("*/b".to_string()),
            Just("*[not(@b)]".to_string()),
            Just("*/@*".to_string()),
            Just("*/text()".to_string()),
            Just("user[.!='x']".to_string()),
        ],
    ) {
        let mut src = src;
        let path = Path::parse(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let moved = extract(&src, Some(&path));
        let mut dest = Element::new("executeData");
        for n in moved.clone() {
            place(&mut dest, None, n, Mode::Move).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let removed = remove(&mut src, &path);
        prop_assert_eq!(removed, moved.len());
        prop_assert!(path.select(&src).is_empty());
        let in_dest: Vec<&Element> = dest.elements().collect();
        prop_assert_eq!(in_dest.len(), moved.len());
    }

    /// (b) replace keeps every sibling and their order.
    #[test]
    fn replace_keeps_sibling_order(root in tree(), pick in 1usize..6) {
        let mut root = root;
        let n_elems = root.elements().count();
        prop_assume!(n_elems > 0);
        let pos = (pick - 1) % n_elems + 1;
        let path = Path::parse(&format!("*[{pos}]")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let before = root.children.clone();
        let loc = path.locate(&root);
        prop_assert_eq!(loc.len(), 1);
        let idx = loc[0].indices[0];
        let node = Element::with_text("new", "x");
        place(&mut root, Some(&path), node.clone(), Mode::Replace)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(root.children.len(), before.len());
        for (i, (a, b)) in before.iter().zip(&root.children).enumerate() {
            if i == idx {
                match b {
                    Node::Element(e) => {
                        prop_assert_eq!(&e.name, "new");
                        prop_assert_eq!(e.text(), "x");
                    }
                    Node::Text(_) => prop_assert!(false, "replaced by text"),
                }
            } else {
                prop_assert_eq!(a, b);
            }
        }
    }

    /// (c) parsing never panics, and errors point inside the text (or just past it).
    #[test]
    fn parse_never_panics(s in noisy_path()) {
        match Path::parse(&s) {
            Ok(p) => {
                let again = Path::parse(&p.to_string());
                prop_assert!(again.is_ok(), "{} → {} → {:?}", s, p, again);
            }
            Err(e) => {
                prop_assert!(e.column >= 1 && e.column <= s.chars().count() + 1, "{:?}", e);
                prop_assert!(!e.message.is_empty());
            }
        }
    }

    /// (c) generated valid paths parse, and their canonical form parses to the same form.
    #[test]
    fn valid_paths_parse_and_display_round_trips(s in valid_path()) {
        let p = Path::parse(&s).map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
        let canon = p.to_string();
        let q = Path::parse(&canon).map_err(|e| TestCaseError::fail(format!("{canon}: {e}")))?;
        prop_assert_eq!(q.to_string(), canon);
    }

    /// (d) select, locate, extract, remove and place never panic, and agree with each other.
    #[test]
    fn select_never_panics(
        t in wild_tree(),
        s in prop_oneof![3 => valid_path(), 1 => noisy_path()],
        node in tree(),
        mode in prop_oneof![Just(Mode::Insert), Just(Mode::Merge), Just(Mode::Replace), Just(Mode::Move)],
    ) {
        if let Ok(p) = Path::parse(&s) {
            let sel = p.select(&t);
            let locs = p.locate(&t);
            prop_assert_eq!(sel.len(), locs.len());
            prop_assert_eq!(extract(&t, Some(&p)).len(), sel.len());
            let _ = p.segments_for_overlap();
            let mut m = t.clone();
            prop_assert_eq!(remove(&mut m, &p), sel.len());
            let mut m = t.clone();
            let _ = place(&mut m, Some(&p), node, mode);
        }
    }
}
