//! Property tests of every parser a user's text reaches: XML and YAML/JSON requests, XML
//! and YAML namespace definitions, `{{ … }}` templates (parsed and rendered), rhai
//! scripts, data paths, and XML and JSON data. None panics on arbitrary text or on mutations of valid
//! documents, every error names where it is, and valid generated documents parse to the
//! model they were generated from.
//!
//! The default case counts keep the whole file to a few seconds in `cargo test`; a longer
//! run sets `PROPTEST_CASES` (README.md, "Development").

use proptest::prelude::*;
use provisio_engine::data::json::{from_json, to_json};
use provisio_engine::data::xml::{self, Limits};
use provisio_engine::data::{Element, Node, Path, Scalar};
use provisio_engine::model::{Format, RequestTarget, Scope};
use provisio_engine::request::template::{parse_template, TemplatePart};
use provisio_engine::request::{parse_namespaces, parse_request, ParseError};
use provisio_engine::TxnState;
use serde_json::{Map, Value};

mod support;
use support as h;

/// `PROPTEST_CASES` when set (a long run), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// Error positions

/// Errors about the file as a whole: they name the file and no line.
const WHOLE_FILE: &[&str] = &[
    "the request is empty",
    "the file holds no namespace",
    "the request holds more than one document",
];

/// Whether `e` names `file` and a line and column inside `src` (or just past its end), or
/// is one of the errors about the whole file.
fn check_position(e: &ParseError, file: &str, src: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(&e.source_ref.file, file, "{}", e);
    prop_assert!(!e.message.is_empty(), "empty message: {:?}", e);
    if e.source_ref.line == 0 {
        prop_assert!(
            WHOLE_FILE.iter().any(|m| e.message.starts_with(m)),
            "an error without a line: {:?}\nin {:?}",
            e,
            src
        );
        return Ok(());
    }
    let lines = src.split('\n').count() as u32;
    prop_assert!(
        e.source_ref.line <= lines + 1,
        "line {} of {} lines: {:?}\nin {:?}",
        e.source_ref.line,
        lines,
        e,
        src
    );
    prop_assert!(e.source_ref.column >= 1, "no column: {:?}\nin {:?}", e, src);
    Ok(())
}

fn check_request(src: &str, file: &str, format: Format) -> Result<(), TestCaseError> {
    if let Err(e) = parse_request(src, file, format) {
        check_position(&e, file, src)?;
    }
    Ok(())
}

fn check_namespaces(src: &str, file: &str, format: Format) -> Result<(), TestCaseError> {
    if let Err(errors) = parse_namespaces(src, file, format) {
        prop_assert!(!errors.is_empty(), "an error list without errors");
        for e in &errors {
            check_position(e, file, src)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Mutations of valid documents

/// Valid documents of each kind, to be mutated.
const XML_REQUESTS: &[&str] = &[
    include_str!("fixtures/xml/request-canonical.xml"),
    include_str!("fixtures/xml/request-shorthand.xml"),
    include_str!("fixtures/xml/request-trusted.xml"),
];
const XML_NAMESPACES: &[&str] = &[
    include_str!("fixtures/xml/namespace-full.xml"),
    include_str!("fixtures/xml/namespaces-multi.xml"),
];
const YAML_REQUESTS: &[&str] = &[
    include_str!("fixtures/yaml/architecture-request.yaml"),
    include_str!("fixtures/yaml/trusted-request.yaml"),
];
const JSON_REQUESTS: &[&str] = &[include_str!("fixtures/yaml/request.json")];
const YAML_NAMESPACES: &[&str] = &[
    include_str!("fixtures/yaml/full.yaml"),
    include_str!("fixtures/yaml/architecture-dns.yaml"),
    include_str!("fixtures/yaml/two-namespaces.yaml"),
];

/// One edit of a text, at character positions given as fractions of its length.
#[derive(Debug, Clone)]
enum Edit {
    Delete(f64, usize),
    Insert(f64, String),
    Duplicate(f64, usize),
    Truncate(f64),
    Swap(f64, f64),
}

/// Characters that matter to the syntaxes, and some that should not be there at all.
fn syntax_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[<>/=\"'&;#!\\[\\]{}:,|>*&?@%`$\\-. \t\n\r]{1,6}",
        "\\PC{1,6}",
        Just("\u{0}".to_string()),
        Just("\u{feff}".to_string()),
        Just("{{".to_string()),
        Just("]]>".to_string()),
        Just("<!DOCTYPE x [<!ENTITY a \"b\">]>".to_string()),
        Just("&a;".to_string()),
        Just("*a".to_string()),
        Just("&a ".to_string()),
        Just("\n---\n".to_string()),
        Just("18446744073709551616".to_string()),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = 0.0f64..1.0;
    prop_oneof![
        (at.clone(), 1usize..8).prop_map(|(a, n)| Edit::Delete(a, n)),
        (at.clone(), syntax_text()).prop_map(|(a, s)| Edit::Insert(a, s)),
        (at.clone(), 1usize..40).prop_map(|(a, n)| Edit::Duplicate(a, n)),
        at.clone().prop_map(Edit::Truncate),
        (at.clone(), at).prop_map(|(a, b)| Edit::Swap(a, b)),
    ]
}

fn apply(src: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = src.chars().collect();
    let pos = |chars: &Vec<char>, f: f64| ((chars.len() as f64) * f) as usize;
    for e in edits {
        match e {
            Edit::Delete(a, n) => {
                let i = pos(&chars, *a);
                let j = (i + n).min(chars.len());
                chars.drain(i..j);
            }
            Edit::Insert(a, s) => {
                let i = pos(&chars, *a);
                chars.splice(i..i, s.chars());
            }
            Edit::Duplicate(a, n) => {
                let i = pos(&chars, *a);
                let j = (i + n).min(chars.len());
                let copy: Vec<char> = chars[i..j].to_vec();
                chars.splice(j..j, copy);
            }
            Edit::Truncate(a) => {
                let i = pos(&chars, *a);
                chars.truncate(i);
            }
            Edit::Swap(a, b) => {
                let (i, j) = (pos(&chars, *a), pos(&chars, *b));
                if i < chars.len() && j < chars.len() {
                    chars.swap(i, j);
                }
            }
        }
    }
    chars.into_iter().collect()
}

fn mutated(docs: &'static [&'static str]) -> impl Strategy<Value = String> {
    (
        prop::sample::select(docs),
        prop::collection::vec(edit(), 1..4),
    )
        .prop_map(|(doc, edits)| apply(doc, &edits))
}

fn arbitrary_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..160)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "\\PC{0,80}",
        prop::collection::vec(syntax_text(), 0..24).prop_map(|v| v.concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(128)))]

    /// The XML request parser: arbitrary text and mutated requests.
    #[test]
    fn xml_requests_never_panic_and_errors_are_located(
        src in prop_oneof![arbitrary_text(), mutated(XML_REQUESTS)],
    ) {
        check_request(&src, "r.xml", Format::Xml)?;
    }

    /// The YAML and JSON request parsers.
    #[test]
    fn yaml_and_json_requests_never_panic_and_errors_are_located(
        src in prop_oneof![arbitrary_text(), mutated(YAML_REQUESTS), mutated(JSON_REQUESTS)],
    ) {
        check_request(&src, "r.yaml", Format::Yaml)?;
        check_request(&src, "r.json", Format::Json)?;
    }

    /// The XML namespace parser.
    #[test]
    fn xml_namespaces_never_panic_and_errors_are_located(
        src in prop_oneof![arbitrary_text(), mutated(XML_NAMESPACES)],
    ) {
        check_namespaces(&src, "n.xml", Format::Xml)?;
    }

    /// The YAML (and JSON) namespace parser.
    #[test]
    fn yaml_namespaces_never_panic_and_errors_are_located(
        src in prop_oneof![arbitrary_text(), mutated(YAML_NAMESPACES)],
    ) {
        check_namespaces(&src, "n.yaml", Format::Yaml)?;
        check_namespaces(&src, "n.json", Format::Json)?;
    }
}

// ---------------------------------------------------------------------------------------
// Valid generated requests parse to the model

/// Data names as people write them, including rhai keywords and names with `-`, `.`, `_`.
fn data_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("go".to_string()),
        Just("match".to_string()),
        Just("user".to_string()),
        "[a-zA-Z_][a-zA-Z0-9_.-]{0,7}",
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        "\\PC{0,10}".prop_map(Value::from),
        "[ -~]{0,10}".prop_map(Value::from),
        (-1.0e12f64..1.0e12).prop_map(|f| Value::from(f + 0.25)),
        Just(Value::Null),
    ]
}

/// Request data: an object of leaves, lists and objects, up to four levels.
fn request_data() -> impl Strategy<Value = Value> {
    let value = json_leaf().prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            2 => inner.clone(),
            1 => prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            2 => prop::collection::vec((data_name(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    });
    prop::collection::vec((data_name(), value), 0..5)
        .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()))
}

fn proc_name() -> impl Strategy<Value = String> {
    "[A-Z][A-Za-z0-9]{0,8}( [A-Z][a-z0-9]{0,5})?"
}

fn call_of(r: &provisio_engine::model::Request) -> Option<(String, String)> {
    match &r.target {
        RequestTarget::Call(c) => Some((c.namespace.clone(), c.procedure.clone())),
        RequestTarget::Trusted(_) => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(128)))]

    /// A request written as YAML (by serde_yaml) and as JSON parses to the same target and
    /// the same data tree as the data layer makes of the value; both refuse what it refuses.
    #[test]
    fn generated_yaml_and_json_requests_parse_to_their_data(
        ns in proc_name(),
        procedure in proc_name(),
        data in request_data(),
    ) {
        let doc = serde_json::json!({ "call": format!("{ns}/{procedure}"), "data": data });
        let yaml = serde_yaml::to_string(&doc).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let json = serde_json::to_string_pretty(&doc).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let expected = from_json("data", &data);
        for (src, file, format) in [(&yaml, "r.yaml", Format::Yaml), (&json, "r.json", Format::Json)] {
            match (parse_request(src, file, format), &expected) {
                (Ok(r), Ok(tree)) => {
                    prop_assert_eq!(call_of(&r), Some((ns.clone(), procedure.clone())));
                    prop_assert_eq!(to_json(&r.data), to_json(tree), "{}", src);
                }
                (Err(e), Err(_)) => check_position(&e, file, src)?,
                (Ok(_), Err(x)) => prop_assert!(false, "accepted what the data layer refuses ({}): {}", x, src),
                (Err(e), Ok(_)) => prop_assert!(false, "refused valid data: {}\n{}", e, src),
            }
        }
    }

    /// A request written as XML carries its data tree unchanged.
    #[test]
    fn generated_xml_requests_parse_to_their_data(
        ns in proc_name(),
        procedure in proc_name(),
        tree in xml_data(),
    ) {
        let body: String = tree.elements().map(xml::to_string).collect();
        let src = format!(
            "<request namespace=\"{ns}\" procedure=\"{procedure}\"><data>{body}</data></request>"
        );
        let r = parse_request(&src, "r.xml", Format::Xml)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{src}")))?;
        prop_assert_eq!(call_of(&r), Some((ns, procedure)));
        prop_assert_eq!(&r.data, &tree, "{}", src);
    }

    /// Generated YAML namespaces parse to the names, procedures and steps written.
    #[test]
    fn generated_yaml_namespaces_parse_to_their_procedures(
        ns in proc_name(),
        procs in prop::collection::btree_map(proc_name(), prop::collection::btree_set("[a-z][a-z0-9_]{0,6}", 1..4), 1..4),
    ) {
        let mut src = format!("namespace: {ns}\nprocedures:\n");
        for (p, steps) in &procs {
            src.push_str(&format!("  {p}:\n    access: public\n    steps:\n"));
            for s in steps {
                src.push_str(&format!(
                    "      {s}: {{ call: Filesystem Provider/CreateFolder, with: {{ path: \"{{{{ data.{s} }}}}\" }} }}\n"
                ));
            }
        }
        let parsed = parse_namespaces(&src, "n.yaml", Format::Yaml)
            .map_err(|e| TestCaseError::fail(format!("{e:?}\n{src}")))?;
        prop_assert_eq!(parsed.len(), 1);
        prop_assert_eq!(&parsed[0].name, &ns);
        let got: Vec<(String, Vec<String>)> = parsed[0]
            .procedures
            .iter()
            .map(|p| (p.name.clone(), p.steps.iter().map(|s| s.id().to_string()).collect()))
            .collect();
        let want: Vec<(String, Vec<String>)> = procs
            .iter()
            .map(|(p, s)| (p.clone(), s.iter().cloned().collect()))
            .collect();
        prop_assert_eq!(got, want, "{}", src);
    }

    /// The same namespaces written in XML parse to the same names and steps.
    #[test]
    fn generated_xml_namespaces_parse_to_their_procedures(
        ns in proc_name(),
        procs in prop::collection::btree_map(proc_name(), prop::collection::btree_set("[a-z][a-z0-9_]{0,6}", 1..4), 1..4),
    ) {
        let mut src = format!("<namespace name=\"{ns}\">\n");
        for (p, steps) in &procs {
            src.push_str(&format!("  <procedure name=\"{p}\" access=\"public\">\n"));
            for s in steps {
                src.push_str(&format!(
                    "    <execute id=\"{s}\" namespace=\"Filesystem Provider\" procedure=\"CreateFolder\"><executeData><path>x</path></executeData></execute>\n"
                ));
            }
            src.push_str("  </procedure>\n");
        }
        src.push_str("</namespace>\n");
        let parsed = parse_namespaces(&src, "n.xml", Format::Xml)
            .map_err(|e| TestCaseError::fail(format!("{e:?}\n{src}")))?;
        prop_assert_eq!(parsed.len(), 1);
        prop_assert_eq!(&parsed[0].name, &ns);
        let got: Vec<(String, Vec<String>)> = parsed[0]
            .procedures
            .iter()
            .map(|p| (p.name.clone(), p.steps.iter().map(|s| s.id().to_string()).collect()))
            .collect();
        let want: Vec<(String, Vec<String>)> = procs
            .iter()
            .map(|(p, s)| (p.clone(), s.iter().cloned().collect()))
            .collect();
        prop_assert_eq!(got, want, "{}", src);
    }
}

// ---------------------------------------------------------------------------------------
// XML and JSON data, paths

/// XML data under `<data>`: elements with attributes, text and children.
fn xml_data() -> impl Strategy<Value = Element> {
    let name = "[a-zA-Z_][a-zA-Z0-9_.-]{0,6}";
    let text =
        "[ -~\t\né日☺]{1,10}".prop_filter("not only blanks", |t: &String| !t.trim().is_empty());
    let leaf = (
        name,
        prop::collection::btree_map("[a-z]{1,3}", "[ -~]{0,6}", 0..3),
        text,
    )
        .prop_map(|(n, attrs, t)| {
            let mut e = Element::new(n);
            for (k, v) in attrs {
                e.set_attr(k, v);
            }
            e.children.push(Node::Text(Scalar::Str(t.into())));
            e
        });
    let tree = leaf.prop_recursive(3, 24, 4, move |inner| {
        (name, prop::collection::vec(inner, 1..4)).prop_map(|(n, kids)| {
            let mut e = Element::new(n);
            for k in kids {
                e.children.push(Node::Element(k));
            }
            e
        })
    });
    prop::collection::vec(tree, 0..4).prop_map(|kids| {
        let mut data = Element::new("data");
        for k in kids {
            data.children.push(Node::Element(k));
        }
        data
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    /// XML data: any text parses or fails with a position inside it.
    #[test]
    fn xml_data_never_panics_and_errors_are_inside_the_text(src in prop_oneof![arbitrary_text(), mutated(XML_REQUESTS)]) {
        for result in [xml::parse(&src, &Limits::default()).map(|_| ()), xml::parse_located(&src, &Limits::default()).map(|_| ())] {
            if let Err(e) = result {
                let lines = src.split('\n').count();
                prop_assert!(e.line >= 1 && e.line as usize <= lines + 1, "{:?} in {:?}", e, src);
                prop_assert!(e.column >= 1, "{:?} in {:?}", e, src);
            }
        }
    }

    /// JSON data: any JSON value becomes a tree or a named refusal, never a panic, and a
    /// tree's JSON view becomes the same tree again.
    #[test]
    fn json_data_never_panics_and_its_view_is_stable(v in request_data(), name in "[a-z]{1,4}") {
        if let Ok(tree) = from_json(&name, &v) {
            let view = to_json(&tree);
            let again = from_json(&name, &view).map_err(|e| TestCaseError::fail(format!("{e}: {view}")))?;
            prop_assert_eq!(to_json(&again), view);
        }
    }

    /// Data paths: any text parses or fails with a column inside it (or just past it).
    #[test]
    fn paths_never_panic_and_errors_have_a_column(s in prop_oneof!["\\PC{0,40}", "[a-z/@\\[\\]='\"().*:0-9 <>!|-]{0,40}"]) {
        match Path::parse(&s) {
            Ok(p) => {
                let again = Path::parse(&p.to_string());
                prop_assert!(again.is_ok(), "{} → {} → {:?}", s, p, again);
            }
            Err(e) => {
                prop_assert!(e.column >= 1 && e.column <= s.chars().count() + 1, "{:?} in {:?}", e, s);
                prop_assert!(!e.message.is_empty());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Templates

/// Literal template text: anything without a placeholder opener.
fn literal() -> impl Strategy<Value = String> {
    "\\PC{0,8}".prop_filter("no placeholder opener", |s: &String| {
        !s.contains('{') && !s.contains('}')
    })
}

fn scope_and_path() -> impl Strategy<Value = (String, Scope, Option<String>)> {
    let scope = prop_oneof![
        Just(("data", Scope::Data)),
        Just(("executeData", Scope::ExecuteData)),
        Just(("procedureData", Scope::ProcedureData)),
        Just(("context", Scope::Context)),
    ];
    (scope, prop::collection::vec("[a-z][a-z0-9_]{0,5}", 0..3)).prop_map(|((s, scope), names)| {
        if names.is_empty() {
            (s.to_string(), scope, None)
        } else {
            (
                format!("{s}.{}", names.join(".")),
                scope,
                Some(names.join("/")),
            )
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    /// Any text: parts or an error naming the column (or the placeholder's), never a panic.
    #[test]
    fn templates_never_panic_and_errors_name_a_column(s in prop_oneof!["\\PC{0,40}", "[{} a-z.@/\\[\\]'=]{0,40}"]) {
        match parse_template(&s) {
            Ok(parts) => {
                // The literal parts are the text outside the placeholders, in order.
                let lits: String = parts.iter().filter_map(|p| match p {
                    TemplatePart::Lit(l) => Some(l.as_str()),
                    TemplatePart::Ref { .. } => None,
                }).collect();
                prop_assert!(lits.len() <= s.len());
            }
            Err(e) => prop_assert!(e.contains("column"), "{} for {:?}", e, s),
        }
    }

    /// Templates built from literals and refs parse back to those parts.
    #[test]
    fn generated_templates_parse_to_their_parts(
        pieces in prop::collection::vec((literal(), scope_and_path(), "[ ]{0,2}"), 1..4),
        tail in literal(),
    ) {
        let mut text = String::new();
        let mut want = Vec::new();
        let mut lit = String::new();
        for (l, (written, scope, path), pad) in &pieces {
            text.push_str(l);
            lit.push_str(l);
            text.push_str(&format!("{{{{{pad}{written}{pad}}}}}"));
            if !lit.is_empty() {
                want.push(TemplatePart::Lit(std::mem::take(&mut lit)));
            }
            want.push(TemplatePart::Ref { scope: scope.clone(), path: path.clone() });
        }
        text.push_str(&tail);
        if !tail.is_empty() {
            want.push(TemplatePart::Lit(tail.clone()));
        }
        let got = parse_template(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text:?}")))?;
        prop_assert_eq!(got, want, "{:?}", text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    /// Scripts (`$expr`, `if:`, script steps): any text compiles or fails at a position at
    /// or after the script's origin in its file; a field named like a keyword after a dot
    /// always compiles.
    #[test]
    fn scripts_never_panic_and_errors_are_after_their_origin(
        src in prop_oneof!["\\PC{0,40}", "[a-z.?(){}\\[\\]#:;=+*\"` \n0-9]{0,40}"],
        word in prop_oneof![Just("go"), Just("match"), Just("fn"), Just("default"), Just("new"), Just("if"), Just("case")],
    ) {
        let engine = provisio_engine::ScriptEngine::default();
        let origin = provisio_engine::ScriptOrigin::new("s.yaml", 10, 5);
        if let Err(e) = engine.compile(&src, &origin) {
            let (file, line, column) = e.location();
            prop_assert_eq!(file, "s.yaml");
            prop_assert!(line >= 10 && column >= 1, "{}", e);
            prop_assert!(line as usize <= 10 + src.split('\n').count(), "{} for {:?}", e, src);
        }
        let field = format!("data.{word} == data?.{word}");
        prop_assert!(engine.compile(&field, &origin).is_ok(), "{}", field);
    }
}

proptest! {
    // Each case runs a transaction: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(cases(48)))]

    /// Rendering: a `with:` template reaches the provider as the literals with the data's
    /// values in place of the placeholders.
    #[test]
    fn templates_render_the_data_between_the_literals(
        before in literal(),
        middle in literal(),
        after in literal(),
        first in "\\PC{1,12}",
        second in "[ -~]{1,12}",
    ) {
        let template = format!("{before}{{{{ data.first }}}}{middle}{{{{data.nested.second}}}}{after}");
        let ns = format!(
            "namespace: T\nprocedures:\n  Render:\n    access: public\n    steps:\n      \
             make: {{ call: Rec Provider/Create, with: {{ name: {} }} }}\n",
            serde_json::to_string(&template).map_err(|e| TestCaseError::fail(e.to_string()))?
        );
        let env = h::env(&ns);
        let request = serde_json::json!({
            "call": "T/Render",
            "data": { "first": first, "nested": { "second": second } },
        });
        let request = parse_request(&request.to_string(), "r.json", Format::Json)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let result = rt
            .block_on(env.engine.run(&request))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(result.state, TxnState::Committed, "{:?}", result.failure);
        prop_assert_eq!(
            env.log(),
            vec![format!("Create({before}{first}{middle}{second}{after})")]
        );
    }
}

// ---------------------------------------------------------------------------------------
// Cases the properties found, kept as plain tests

/// A float in a JSON request reads back as the same f64 (serde_json's default parser was
/// one unit in the last place off for this one).
#[test]
fn a_float_in_a_json_request_keeps_its_value() {
    let src = r#"{"call": "A/A", "data": {"go": 978880659686.0525}}"#;
    let r = parse_request(src, "r.json", Format::Json).expect("parses");
    assert_eq!(to_json(&r.data)["go"].as_f64(), Some(978880659686.0525));
}

/// A JSON string broken by a line break is reported at the end of its line, not at
/// column 0 of the next.
#[test]
fn a_json_string_broken_by_a_newline_is_located_at_the_line_end() {
    let src = "{\n  \"call\": \"A/B,\n  \"data\": {}\n}\n";
    let e = parse_request(src, "r.json", Format::Json).expect_err("refused");
    assert_eq!((e.source_ref.line, e.source_ref.column), (2, 16), "{e}");
    assert!(e.message.contains("control character"), "{e}");
}
