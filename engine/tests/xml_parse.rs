//! XML data-tree parsing/writing and MPS-style XML definitions and requests.

use proptest::prelude::*;
use provisio_engine::data::xml::{self, Limits};
use provisio_engine::data::{Element, IfNull, Mode, Node, Scalar};
use provisio_engine::model::{
    Access, CallTarget, ForEach, Format, Namespace, Ordering, ProcKind, Request, RequestTarget,
    Scope, SourceRef, Step, TransformSource, When,
};
use provisio_engine::request::{self, ParseError};
use std::path::PathBuf;

fn fixture(name: &str) -> (String, String) {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", "xml", name]
        .iter()
        .collect();
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    (text, name.to_string())
}

fn parse(src: &str) -> Result<Element, xml::XmlError> {
    xml::parse(src, &Limits::default())
}

// ------------------------------------------------------------------------ data tree

#[test]
fn data_fixture_round_trips() {
    let (src, _) = fixture("data-roundtrip.xml");
    let tree = parse(&src).unwrap();
    let compact = xml::to_string(&tree);
    assert_eq!(parse(&compact).unwrap(), tree);
    let pretty = xml::to_string_pretty(&tree);
    assert_eq!(parse(&pretty).unwrap(), tree);
    // And writing is stable.
    assert_eq!(xml::to_string(&parse(&compact).unwrap()), compact);

    assert_eq!(tree.attr("note"), Some("a & b <c> \"q\" 's'"));
    let org = tree
        .child("organizations")
        .unwrap()
        .child("organization")
        .unwrap();
    let names: Vec<_> = org.elements().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["user", "group", "user", "group", "user"]);
    assert_eq!(org.elements().nth(4).unwrap().text(), " carol ");
    let desc = tree.child("description").unwrap();
    assert_eq!(desc.children.len(), 5, "mixed content keeps its text runs");
    assert_eq!(
        desc.string_value(),
        "Mixed bold and italic text, 1 < 2 && 3 > 2."
    );
    assert_eq!(
        tree.child("script").unwrap().text(),
        r#"if (a < b && c > d) { return "<ok/>"; }"#
    );
    assert_eq!(tree.child("unicode").unwrap().text(), "Zoë é ☺ 日本");
    let item = tree.child("ns:item").unwrap();
    assert_eq!(item.attr("ns:id"), Some("7"));
    assert_eq!(item.attr("xmlns:ns"), Some("urn:x"));
    assert_eq!(tree.child("empty").unwrap().children.len(), 0);
}

#[test]
fn malformed_documents_have_positions() {
    let cases: &[(&str, u32, u32, &str)] = &[
        (
            "<data>\n  <user>ann\n",
            3,
            1,
            "<user> at line 2, column 3 is not closed",
        ),
        (
            "<users>\n  <user>x</users>",
            2,
            10,
            "expected </user>, found </users>",
        ),
        ("<a>\n  <b c=\"1\" d/>\n</a>", 2, 13, "bad attribute on <b>"),
        ("<a>\n  <b c='1/>\n</a>", 2, 3, "unclosed tag"),
        ("<a></a>\ngarbage", 2, 1, "text after the root element"),
        ("<a/>\n<b/>", 2, 1, "a second root element <b>"),
        ("", 1, 1, "empty document"),
        ("  \n  ", 2, 3, "empty document"),
        ("<a>&bogus;</a>", 1, 4, "unknown entity `&bogus;`"),
        ("<a>AT&T</a>", 1, 6, "&amp;"),
    ];
    for (src, line, column, msg) in cases {
        let e = parse(src).expect_err(src);
        assert_eq!((e.line, e.column), (*line, *column), "{src:?}: {e}");
        assert!(e.message.contains(msg), "{src:?}: {e}");
    }
}

#[test]
fn doctype_and_billion_laughs_refused() {
    let bomb = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol9 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<lolz>&lol9;</lolz>"#;
    let e = parse(bomb).unwrap_err();
    assert_eq!((e.line, e.column), (2, 1));
    assert_eq!(
        e.message,
        "DOCTYPE is not allowed (entity expansion is refused)"
    );
    let e = parse("<!DOCTYPE a SYSTEM \"file:///etc/passwd\"><a/>").unwrap_err();
    assert!(e.message.contains("DOCTYPE is not allowed"));
}

#[test]
fn deep_document_errors_without_overflow() {
    let n = 10_000;
    let doc = format!("{}{}", "<x>".repeat(n), "</x>".repeat(n));
    let e = parse(&doc).unwrap_err();
    assert!(e.message.contains("nested more than 128"), "{e}");
    let e = xml::parse_located(&doc, &Limits::default()).unwrap_err();
    assert!(e.message.contains("nested more than 128"), "{e}");
    // Unclosed deep documents, too.
    let e = parse(&"<x>".repeat(n)).unwrap_err();
    assert!(e.message.contains("nested more than"), "{e}");
}

#[test]
fn size_limit_enforced() {
    let limits = Limits {
        max_bytes: 100,
        max_depth: 128,
    };
    let doc = format!("<a>{}</a>", "x".repeat(200));
    let e = xml::parse(&doc, &limits).unwrap_err();
    assert!(e.message.contains("the limit is 100 bytes"), "{e}");
    assert!(xml::parse("<a>x</a>", &limits).is_ok());
}

#[test]
fn large_document_parses() {
    let mut doc = String::from("<data>");
    for i in 0..20_000 {
        doc.push_str(&format!(
            "<user id=\"{i}\"><name>user {i} &amp; co</name><mail>u{i}@example.com</mail></user>"
        ));
    }
    doc.push_str("</data>");
    let tree = parse(&doc).unwrap();
    assert_eq!(tree.elements().count(), 20_000);
    assert_eq!(xml::to_string(&tree), doc);
}

fn name_strategy() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_.-]{0,6}(:[a-z][a-z0-9]{0,3})?"
}

fn value_strategy() -> impl Strategy<Value = String> {
    "[ -~\t\n\ré日☺]{0,12}"
}

/// An element named `name`; a prefixed name is in the namespace `urn:<prefix>`, declared on
/// the element itself (as a parsed document would have it: an undeclared prefix is not XML).
fn named(name: String) -> Element {
    let mut e = Element::new(name.as_str());
    if let Some((prefix, _)) = name.split_once(':') {
        let uri = format!("urn:{prefix}");
        e.attrs
            .push((format!("xmlns:{prefix}").into(), uri.as_str().into()));
        e.ns = Some(uri.into());
    }
    e
}

fn element_strategy() -> impl Strategy<Value = Element> {
    let leaf = (
        name_strategy(),
        proptest::collection::vec((name_strategy(), value_strategy()), 0..3),
        proptest::option::of("[ -~\t\n\ré日☺]{1,12}"),
    )
        .prop_map(|(name, attrs, text)| {
            let mut e = named(name);
            for (k, v) in attrs {
                if e.attr(&k).is_none() {
                    e.attrs.push((k.into(), v.into()));
                }
            }
            if let Some(t) = text {
                e.children.push(Node::Text(Scalar::Str(t.into())));
            }
            e
        });
    leaf.prop_recursive(4, 40, 5, |inner| {
        (
            name_strategy(),
            proptest::collection::vec((name_strategy(), value_strategy()), 0..3),
            proptest::collection::vec(
                prop_oneof![
                    3 => inner.prop_map(Node::Element),
                    1 => "[ -~\t\n\ré日☺]{1,12}".prop_map(|t| Node::Text(Scalar::Str(t.into()))),
                ],
                0..5,
            ),
        )
            .prop_map(|(name, attrs, kids)| {
                let mut e = named(name);
                for (k, v) in attrs {
                    if e.attr(&k).is_none() {
                        e.attrs.push((k.into(), v.into()));
                    }
                }
                for k in kids {
                    // No two adjacent text nodes: they would merge into one on parsing.
                    let adjacent = matches!(
                        (e.children.last(), &k),
                        (Some(Node::Text(_)), Node::Text(_))
                    );
                    if !adjacent {
                        e.children.push(k);
                    }
                }
                e
            })
    })
}

proptest! {
    // `PROPTEST_CASES` (a long run) overrides the default count.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    ))]

    #[test]
    fn arbitrary_trees_round_trip(tree in element_strategy()) {
        let s = xml::to_string(&tree);
        let back = parse(&s).map_err(|e| TestCaseError::fail(format!("{e}\n{s}")))?;
        prop_assert_eq!(&back, &tree);
        let located = xml::parse_located(&s, &Limits::default()).unwrap();
        prop_assert_eq!(located.to_element(), tree);
    }

    #[test]
    fn arbitrary_input_never_panics(s in "[<>/a-c=\"' &;#x0-9!\\[\\]?\n-]{0,60}") {
        let _ = parse(&s);
        let _ = xml::parse_located(&s, &Limits::default());
        let _ = request::parse_request(&s, "p.xml", Format::Xml);
        let _ = request::parse_namespaces(&s, "p.xml", Format::Xml);
    }
}

// ------------------------------------------------------------------------ definitions

fn namespaces(name: &str) -> Vec<Namespace> {
    let (src, file) = fixture(name);
    match request::parse_namespaces(&src, &file, Format::Xml) {
        Ok(n) => n,
        Err(errs) => panic!(
            "{}",
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

#[test]
fn full_namespace() {
    let ns = namespaces("namespace-full.xml");
    assert_eq!(ns.len(), 1);
    let ns = &ns[0];
    assert_eq!(ns.name, "Hosted Files");
    assert_eq!(ns.provider.as_deref(), Some("Provisio.FileSystem"));
    assert!(ns.read_only);
    assert_eq!(ns.description.as_deref(), Some("Tenant file shares"));
    assert_eq!(ns.provider_context.name, "providerContext");
    assert_eq!(ns.provider_context.attr("root"), Some("/srv/tenants"));
    assert_eq!(ns.source_ref, SourceRef::new("namespace-full.xml", 3, 1));
    assert_eq!(ns.procedures.len(), 3);

    let leaf = ns.procedure("CreateDirectory").unwrap();
    assert_eq!(leaf.access, Access::Private);
    assert_eq!(leaf.kind, ProcKind::Write);
    assert!(leaf.save_data_for_rollback);
    assert!(!leaf.resumable);
    assert_eq!(leaf.entry.as_deref(), Some("create_directory"));
    assert!(leaf.steps.is_empty());
    assert_eq!(ns.procedure("ReadUsage").unwrap().kind, ProcKind::Read);

    let p = ns.procedure("CreateTenantShare").unwrap();
    assert_eq!(p.access, Access::Public);
    assert_eq!(p.kind, ProcKind::TwoPhase);
    assert_eq!(p.ordering, Ordering::Parallel);
    assert_eq!(p.inputs.len(), 3);
    assert!(p.inputs[0].required);
    assert_eq!(p.inputs[0].ty.as_deref(), Some("string"));
    assert!(p.inputs[1].secret);
    assert_eq!(p.inputs[2].default, Some(Scalar::Str("1024".into())));
    assert_eq!(p.procedure_data.name, "procedureData");
    assert!(p.procedure_data.child("folders").is_some());
    let ids: Vec<_> = p.steps.iter().map(|s| s.id()).collect();
    assert_eq!(ids, ["tier", "prepare", "dirs", "guarded"]);

    let Step::Select(sel) = &p.steps[0] else {
        panic!("select")
    };
    assert_eq!(sel.scope, Scope::Data);
    assert_eq!(sel.path.as_deref(), Some("plan/@tier"));
    assert_eq!(
        sel.cases,
        [
            ("gold".to_string(), "premium".to_string()),
            ("platinum".to_string(), "premium".to_string())
        ]
    );
    assert_eq!(sel.default_case.as_deref(), Some("basic"));
    assert_eq!(sel.if_null_case.as_deref(), Some("none"));

    let Step::Execute(t) = &p.steps[1] else {
        panic!("transform")
    };
    assert!(t.call.is_none());
    assert_eq!(t.needs, ["tier"]);
    assert_eq!(t.execute_data.child("kind").unwrap().text(), "tenant");
    assert_eq!(
        t.before[0].source,
        TransformSource::Template("/srv/tenants/{{ data/tenant }}".into())
    );
    assert_eq!(t.before[0].destination, Scope::ProcedureData);
    assert_eq!(t.after[0].mode, Mode::Merge);
    assert_eq!(t.after[0].if_null, IfNull::Ignore);

    let Step::Execute(x) = &p.steps[2] else {
        panic!("execute")
    };
    assert_eq!(
        x.call,
        Some(CallTarget {
            namespace: "Hosted Files".into(),
            procedure: "CreateDirectory".into()
        })
    );
    assert_eq!(x.needs, ["prepare", "tier"]);
    assert_eq!(
        x.for_each,
        [
            ForEach {
                name: "org".into(),
                root: Scope::Data,
                path: Some("organizations/organization".into()),
                if_null: IfNull::Fail
            },
            ForEach {
                name: "user".into(),
                root: Scope::Named("org".into()),
                path: Some("user".into()),
                if_null: IfNull::Skip
            }
        ]
    );
    assert_eq!(
        x.when,
        [
            When::Exists {
                scope: Scope::Named("user".into()),
                path: Some("@status".into())
            },
            When::Case {
                select: "tier".into(),
                case: "premium".into()
            },
            When::Missing {
                scope: Scope::Data,
                path: Some("disabled".into())
            }
        ]
    );
    let rep = x.repeat.as_ref().unwrap();
    assert_eq!(rep.path.as_deref(), Some("copies"));
    assert_eq!(rep.if_null, IfNull::Ignore);
    assert_eq!(x.before.len(), 3);
    assert_eq!(x.before[1].mode, Mode::Move);
    assert_eq!(x.before[1].if_null, IfNull::Skip);
    assert_eq!(x.before[2].destination, Scope::Named("user".into()));
    assert_eq!(x.before[2].destination_path.as_deref(), Some("org"));
    assert_eq!(x.before[2].mode, Mode::Replace);
    assert_eq!(x.after[0].destination_path.as_deref(), Some("created"));
    assert_eq!(x.after[0].mode, Mode::Insert);
    assert_eq!(x.source_ref, SourceRef::new("namespace-full.xml", 31, 5));

    let Step::Try(tr) = &p.steps[3] else {
        panic!("try")
    };
    assert_eq!(tr.body.len(), 2);
    assert_eq!(tr.body[0].id(), "step1");
    let Step::Try(inner) = &tr.body[1] else {
        panic!("nested try")
    };
    assert_eq!(inner.id, "step2");
    assert_eq!(inner.body.len(), 1);
    assert_eq!(inner.catch.len(), 1);
    assert_eq!(tr.catch.len(), 1);
    let Step::Execute(c) = &tr.catch[0] else {
        panic!("catch execute")
    };
    assert_eq!(
        c.before[0].source,
        TransformSource::Node {
            scope: Scope::Context,
            path: Some("errorContext".into())
        }
    );
}

#[test]
fn several_namespaces_in_one_file() {
    let ns = namespaces("namespaces-multi.xml");
    let names: Vec<_> = ns.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["Hosted DNS", "DNS Provider"]);
    assert_eq!(ns[1].provider.as_deref(), Some("Provisio.Dns"));
}

fn first_error(src: &str) -> ParseError {
    match request::parse_namespaces(src, "bad.xml", Format::Xml) {
        Ok(n) => panic!("expected an error, got {n:?}"),
        Err(mut e) => e.remove(0),
    }
}

fn wrap(steps: &str) -> String {
    format!("<namespace name=\"N\">\n<procedure name=\"P\">\n{steps}\n</procedure>\n</namespace>")
}

#[test]
fn definition_errors() {
    // (document, expected line, message fragment)
    let cases: Vec<(String, u32, &str)> = vec![
        (
            wrap("<execute namespace=\"A\" procedure=\"B\">\n<before source=\"data\" sourcepath=\"x\" destination=\"executeData\"/>\n</execute>"),
            4,
            "unknown attribute `sourcepath` on <before>; did you mean `sourcePath`?",
        ),
        (wrap("<exectue namespace=\"A\" procedure=\"B\"/>"), 3, "unknown element <exectue> in <procedure>; did you mean <execute>?"),
        (wrap("<queue namespace=\"A\" procedure=\"B\" queueSuspended=\"yes\"/>"), 3, "`queueSuspended` on <queue> must be 0 or 1"),
        (wrap("<queue namespace=\"A\" procedure=\"B\" retryCount=\"3\"/>"), 3, "unknown attribute `retryCount` on <queue>"),
        (wrap("<try><transform/></try>"), 3, "a <try> must be followed by its <catch>"),
        (wrap("<try><transform/></try>\n<transform/>\n<catch/>"), 3, "a <try> must be followed by its <catch>"),
        (wrap("<catch/>"), 3, "a <catch> must directly follow its <try>"),
        (wrap("<transform id=\"a\"/>\n<transform id=\"a\"/>"), 4, "duplicate step id `a`"),
        (
            wrap("<execute namespace=\"A\" procedure=\"B\">\n<when source=\"data\" sourcePath=\"x\" select=\"s\" case=\"c\"/>\n</execute>"),
            4,
            "never both",
        ),
        (
            wrap("<transform>\n<after source=\"data\" destination=\"data\" ifNull=\"skip\"/>\n</transform>"),
            4,
            "ifNull=\"skip\" is only valid in <before>",
        ),
        (
            wrap("<transform>\n<before source=\"data\" destination=\"executeData\" mode=\"merg\"/>\n</transform>"),
            4,
            "did you mean `merge`?",
        ),
        (
            wrap("<transform>\n<before source=\"user\" destination=\"executeData\"/>\n</transform>"),
            4,
            "unknown source `user` on <before>",
        ),
        (
            wrap("<transform>\n<before source=\"data\" sourcePath=\"a[\" destination=\"executeData\"/>\n</transform>"),
            4,
            "bad path in sourcePath=\"a[\"",
        ),
        (
            wrap("<transform>\n<before template=\"x\" source=\"data\" destination=\"executeData\"/>\n</transform>"),
            4,
            "either template or source",
        ),
        (
            wrap("<transform>\n<before template=\"{{ data/x\" destination=\"executeData\"/>\n</transform>"),
            4,
            "bad template",
        ),
        (wrap("<execute namespace=\"A\"/>"), 3, "<execute> needs a `procedure` attribute"),
        (
            "<namespace name=\"Bad/Name\"/>".to_string(),
            1,
            // the wording all syntaxes share (request::rules::name_error)
            "`Bad/Name` is not a valid namespace name",
        ),
        (
            "<namespace name=\"N\">\n<procedure name=\"P\" access=\"Public\"/>\n</namespace>".to_string(),
            2,
            "did you mean `public`?",
        ),
        (
            "<namespace name=\"N\">\n<procedure name=\"P\"/>\n<procedure name=\"P\"/>\n</namespace>".to_string(),
            3,
            "procedure `P` is defined twice",
        ),
        (
            "<namespace name=\"N\">\n<procedure name=\"P\" parallel=\"yes\"/>\n</namespace>".to_string(),
            2,
            "must be 0 or 1",
        ),
        ("<procedure name=\"P\"/>".to_string(), 1, "expected <namespace> or <namespaces>"),
        ("<namespace name=\"N\">\n<procedure name=\"P\">".to_string(), 2, "is not closed"),
    ];
    for (src, line, msg) in cases {
        let e = first_error(&src);
        assert!(e.message.contains(msg), "{src}\n=> {e}");
        assert_eq!(e.source_ref.line, line, "{src}\n=> {e}");
        assert_eq!(e.source_ref.file, "bad.xml");
    }
}

#[test]
fn unknown_attribute_lists_allowed_set() {
    let e = first_error(&wrap(
        "<execute namespace=\"A\" procedure=\"B\">\n<before source=\"data\" sourcepath=\"x\" destination=\"executeData\"/>\n</execute>",
    ));
    assert_eq!(e.source_ref, SourceRef::new("bad.xml", 4, 1));
    let hint = e.hint.unwrap();
    assert!(
        hint.contains("source, sourcePath, destination, destinationPath, mode, ifNull"),
        "{hint}"
    );
}

#[test]
fn several_errors_reported_at_once() {
    let errs = request::parse_namespaces(
        &wrap("<exectue/>\n<transform id=\"a\"/>\n<transform id=\"a\"/>"),
        "bad.xml",
        Format::Xml,
    )
    .unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:?}");
}

// ------------------------------------------------------------------------ requests

fn request_fixture(name: &str) -> Request {
    let (src, file) = fixture(name);
    request::parse_request(&src, &file, Format::Xml).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn canonical_and_shorthand_simple_requests_agree() {
    let short = request_fixture("request-shorthand.xml");
    let canon = request_fixture("request-canonical.xml");
    let target = RequestTarget::Call(CallTarget {
        namespace: "Hosted DNS".into(),
        procedure: "CreateTenantZone".into(),
    });
    assert_eq!(short.target, target);
    assert_eq!(canon.target, target);
    assert_eq!(short.data, canon.data);
    assert_eq!(short.context, canon.context);
    assert_eq!(short.format, Format::Xml);
    assert_eq!(short.data.name, "data");
    assert_eq!(
        short.data.child("zoneName").unwrap().text(),
        "contoso.example"
    );
    // Equal up to where they came from.
    let mut canon = canon;
    canon.source_ref = short.source_ref.clone();
    assert_eq!(short, canon);
}

#[test]
fn only_the_exact_mirror_is_a_simple_request() {
    let parse = |body: &str| {
        let src = format!(
            r#"<request><procedure><execute namespace="A" procedure="B">{body}</execute></procedure></request>"#
        );
        request::parse_request(&src, "r.xml", Format::Xml).unwrap()
    };
    let before = r#"<before source="data" destination="executeData" mode="merge"/>"#;
    let after = r#"<after source="executeData" destination="data" mode="merge"/>"#;
    let r = parse(&format!("{before}{after}"));
    assert!(matches!(r.target, RequestTarget::Call(_)), "{:?}", r.target);
    assert_eq!(r.data, Element::new("data"));
    // MPS gives the callee empty data, or returns `data` unchanged, for these: they run as
    // the trusted procedures they are, not as a call with both mirrors.
    for body in [before.to_string(), after.to_string(), String::new()] {
        let r = parse(&body);
        assert!(
            matches!(r.target, RequestTarget::Trusted(_)),
            "{body:?} parsed as {:?}",
            r.target
        );
    }
}

#[test]
fn trusted_request() {
    let r = request_fixture("request-trusted.xml");
    let RequestTarget::Trusted(p) = &r.target else {
        panic!("expected a trusted request, got {:?}", r.target)
    };
    assert_eq!(p.name, "request");
    assert_eq!(p.access, Access::Public);
    assert_eq!(p.kind, ProcKind::Read);
    assert_eq!(p.ordering, Ordering::Parallel);
    assert_eq!(p.steps.len(), 2);
    assert_eq!(p.steps[0].id(), "zone");
    assert_eq!(p.steps[1].id(), "step2");
    assert_eq!(p.steps[1].needs(), ["zone"]);
    assert_eq!(r.data.child("tenant").unwrap().text(), "contoso");

    // A not-quite-canonical single execute is trusted too.
    let r = request::parse_request(
        r#"<request><procedure><execute namespace="A" procedure="B"><before source="data" destination="executeData"/></execute></procedure></request>"#,
        "r.xml",
        Format::Xml,
    )
    .unwrap();
    let RequestTarget::Trusted(p) = &r.target else {
        panic!("trusted")
    };
    assert_eq!(p.kind, ProcKind::Write);
    assert_eq!(p.ordering, Ordering::Sequential);
}

#[test]
fn request_errors() {
    let cases: &[(&str, u32, &str)] = &[
        ("<request namespace=\"A\" procedure=\"B\">\n<globalData/>\n<globalData/>\n</request>", 3, "a second <globalData>"),
        // A batch is not one request: `parse_request_document` splits it.
        ("<request namespace=\"A\" procedure=\"B\">\n<data/>\n<data/>\n</request>", 1, "this is a batch request (2 data item(s))"),
        ("<request>\n<procedure>\n<globalData/>\n</procedure>\n</request>", 3, "<globalData> belongs directly under <request>"),
        ("<request/>", 1, "the request names no procedure"),
        ("<request namespace=\"A\"/>", 1, "also needs procedure"),
        (
            "<request namespace=\"A\" procedure=\"B\">\n<procedure><execute namespace=\"A\" procedure=\"B\"/></procedure>\n</request>",
            2,
            "cannot also carry a <procedure>",
        ),
        ("<request>\n<procedure>\n<queue procedure=\"B\"/>\n</procedure>\n</request>", 3, "namespace"),
        ("<request>\n<procedure/>\n</request>", 2, "holds no steps"),
        ("<request>\n<dat/>\n</request>", 2, "unknown element <dat> in <request>; did you mean <data>?"),
        ("<namespace name=\"x\"/>", 1, "expected <request>"),
        ("<request>\n<data>\n</request>", 3, "expected </data>, found </request>"),
        ("<!DOCTYPE request><request/>", 1, "DOCTYPE is not allowed"),
    ];
    for (src, line, msg) in cases {
        let e = request::parse_request(src, "r.xml", Format::Xml).expect_err(src);
        assert!(e.message.contains(msg), "{src}\n=> {e}");
        assert_eq!(e.source_ref.line, *line, "{src}\n=> {e}");
    }
}

// ------------------------------------------------------------------------ scripts

/// The 1-based (line, column) of the first occurrence of `needle` in `src`.
fn pos_of(src: &str, needle: &str) -> (u32, u32) {
    let at = src.find(needle).expect("needle in source");
    let before = &src[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line as u32, col as u32)
}

fn fixture_path(name: &str) -> String {
    [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", "xml", name]
        .iter()
        .collect::<PathBuf>()
        .display()
        .to_string()
}

const SCRIPTED_XML: &str = r##"<namespace name="Scripted">
  <procedure name="P" access="public">
    <execute id="create" namespace="Rec Provider" procedure="Create">
      <forEach name="user" path="users/user" filter="item.enabled == true"/>
      <when expr="data.active == true"/>
      <when source="data" sourcePath="active"/>
      <before expr="lower(user.first)" destination="executeData" destinationPath="name" mode="merge"/>
      <after expr="#{ done: true }" destination="data" mode="merge" ifNull="ignore"/>
    </execute>
    <script id="s" needs="create" calls="Rec Provider/Create; Rec Provider/Fail" output="made/s">
      <when expr="data.active"/>
      let a = call_procedure("Rec Provider/Create", #{ name: "x" });
      a
      <undo>
        result.id
      </undo>
    </script>
    <script id="c"><![CDATA[
if data.n < 3 { #{ small: true } } else { #{ small: false } }
]]></script>
    <script id="f" file="make-user.rhai"><undo file="undo-user.rhai"/></script>
    <try>
      <script>#{ inner: 1 }</script>
    </try>
    <catch/>
  </procedure>
</namespace>"##;

fn scripted() -> (Namespace, String) {
    let file = fixture_path("scripted.xml");
    match request::parse_namespaces(SCRIPTED_XML, &file, Format::Xml) {
        Ok(mut n) => (n.remove(0), file),
        Err(e) => panic!("{e:#?}"),
    }
}

fn script_step(step: &Step) -> &provisio_engine::model::ScriptStep {
    match step {
        Step::Script(s) => s,
        other => panic!("not a script step: {other:?}"),
    }
}

#[test]
fn when_expr_filter_and_expr_transforms() {
    let (ns, file) = scripted();
    let p = &ns.procedures[0];
    let Step::Execute(e) = &p.steps[0] else {
        panic!("execute expected")
    };
    let at = |needle: &str| {
        let (l, c) = pos_of(SCRIPTED_XML, needle);
        SourceRef::new(&file, l, c)
    };
    assert_eq!(e.for_each[0].name, "user");
    assert_eq!(e.when.len(), 3);
    match &e.when[0] {
        When::Filter { for_each, script } => {
            assert_eq!(for_each, "user");
            assert_eq!(script.source, "item.enabled == true");
            assert_eq!(script.origin, at("item.enabled"));
        }
        other => panic!("filter expected, got {other:?}"),
    }
    match &e.when[1] {
        When::Expr(s) => {
            assert_eq!(s.source, "data.active == true");
            assert_eq!(s.origin, at("data.active == true"));
        }
        other => panic!("expr expected, got {other:?}"),
    }
    assert!(matches!(e.when[2], When::Exists { .. }));
    let b = &e.before[0];
    match &b.source {
        TransformSource::Expr(s) => {
            assert_eq!(s.source, "lower(user.first)");
            assert_eq!(s.origin, at("lower(user.first)"));
        }
        other => panic!("expr expected, got {other:?}"),
    }
    assert_eq!(b.destination, Scope::ExecuteData);
    assert_eq!(b.destination_path.as_deref(), Some("name"));
    assert_eq!(b.mode, Mode::Merge);
    let a = &e.after[0];
    assert!(matches!(&a.source, TransformSource::Expr(s) if s.source == "#{ done: true }"));
    assert_eq!(
        (a.destination.clone(), a.if_null),
        (Scope::Data, IfNull::Ignore)
    );
}

#[test]
fn script_steps_parse_with_origins() {
    let (ns, file) = scripted();
    let p = &ns.procedures[0];
    let at = |needle: &str| {
        let (l, c) = pos_of(SCRIPTED_XML, needle);
        SourceRef::new(&file, l, c)
    };
    let s = script_step(&p.steps[1]);
    assert_eq!(s.id, "s");
    assert_eq!(
        s.script.source,
        "let a = call_procedure(\"Rec Provider/Create\", #{ name: \"x\" });\n      a"
    );
    assert_eq!(s.script.origin, at("let a ="));
    let undo = s.undo.as_ref().expect("undo");
    assert_eq!(undo.source, "result.id");
    assert_eq!(undo.origin, at("result.id"));
    assert_eq!(
        s.calls,
        vec![
            CallTarget {
                namespace: "Rec Provider".into(),
                procedure: "Create".into()
            },
            CallTarget {
                namespace: "Rec Provider".into(),
                procedure: "Fail".into()
            },
        ]
    );
    assert_eq!(s.output.as_deref(), Some("made/s"));
    assert_eq!(s.needs, ["create"]);
    assert!(matches!(&s.when[..], [When::Expr(w)] if w.source == "data.active"));
    assert_eq!(s.source_ref, at("<script id=\"s\""));

    // CDATA: the text starts on the line after the start tag.
    let c = script_step(&p.steps[2]);
    assert_eq!(
        c.script.source,
        "if data.n < 3 { #{ small: true } } else { #{ small: false } }"
    );
    assert_eq!(c.script.origin, at("if data.n"));
    assert!(c.undo.is_none() && c.calls.is_empty() && c.output.is_none());

    // Files next to the definition, origin 1:1 of the file.
    let f = script_step(&p.steps[3]);
    let make = fixture_path("make-user.rhai");
    assert_eq!(f.script.origin, SourceRef::new(&make, 1, 1));
    assert_eq!(
        f.script.source,
        std::fs::read_to_string(&make).expect("fixture")
    );
    let undo = f.undo.as_ref().expect("undo");
    assert_eq!(
        undo.origin,
        SourceRef::new(fixture_path("undo-user.rhai"), 1, 1)
    );

    // Inside a try, on the element's own line.
    let Step::Try(t) = &p.steps[4] else {
        panic!("try expected")
    };
    let inner = script_step(&t.body[0]);
    assert_eq!(inner.id, "step1");
    assert_eq!(inner.script.source, "#{ inner: 1 }");
    assert_eq!(inner.script.origin, at("#{ inner: 1 }"));
}

#[test]
fn script_errors() {
    let cases: &[(&str, &str)] = &[
        (
            r#"<script file="../secret.rhai"/>"#,
            "must be a relative path inside the definition's folder",
        ),
        (
            r#"<script file="/etc/passwd"/>"#,
            "must be a relative path inside the definition's folder",
        ),
        (
            r#"<script file="missing.rhai"/>"#,
            "script file `missing.rhai`: cannot read",
        ),
        (
            r#"<script file="x.rhai">1 + 1</script>"#,
            "<script> has both file=\"…\" and script text",
        ),
        (r#"<script id="e"/>"#, "<script> holds no script"),
        (
            r#"<script calls="NoSlash">1</script>"#,
            "`NoSlash` in calls=\"…\" is not Namespace/Procedure",
        ),
        (
            "<script>1<forEach name=\"x\"/></script>",
            "unknown element <forEach> in <script>",
        ),
        (
            "<script>1<undo>2</undo><undo>3</undo></script>",
            "a second <undo>",
        ),
        (
            "<script>1<when source=\"data\"/>2</script>",
            "is split in pieces",
        ),
        (
            r#"<transform><before expr="1" source="data" destination="data"/></transform>"#,
            "<before> takes either expr or source, not both",
        ),
        (
            r#"<transform><after expr="1" template="x" destination="data"/></transform>"#,
            "<after> takes either expr or template, not both",
        ),
        (
            r#"<transform><before expr="1" destination="data" mode="move"/></transform>"#,
            "mode=\"move\" needs a source node",
        ),
        (
            r#"<transform><when expr="true" source="data"/></transform>"#,
            "<when expr=…> takes no `source` attribute",
        ),
        (
            r#"<transform><when expr=" "/></transform>"#,
            "expr=\"\" on <when> is empty",
        ),
    ];
    for (steps, fragment) in cases {
        let e = first_error(&wrap(steps));
        assert!(
            e.to_string().contains(fragment),
            "{steps}: expected `{fragment}` in `{e}`"
        );
        assert_eq!(e.source_ref.line, 3, "{steps}: {e}");
    }
}

/// XML 1.0 forbids NUL (and the other C0 controls but tab, LF, CR) anywhere, written as a
/// character as much as `&#0;`: both are refused, at their position.
#[test]
fn raw_nul_and_control_characters_are_refused() {
    for (src, line, col) in [
        ("<data>\n  <a>x\u{0}y</a>\n</data>", 2, 7),
        ("<data><a v=\"\u{0}\"/></data>", 1, 13),
        ("<data>\u{1}</data>", 1, 7),
    ] {
        let e = xml::parse(src, &Limits::default()).expect_err(src);
        assert!(
            e.message.contains("is not allowed in XML"),
            "{src:?}: {}",
            e.message
        );
        assert_eq!((e.line, e.column), (line, col), "{src:?}");
        let req = format!("<request namespace=\"A\" procedure=\"B\">{src}</request>");
        assert!(request::parse_request(&req, "r.xml", Format::Xml).is_err());
    }
    assert!(xml::parse("<data>&#0;</data>", &Limits::default()).is_err());
    assert!(xml::parse("<data>\ta\r\nb</data>", &Limits::default()).is_ok());
}
