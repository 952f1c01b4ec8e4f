//! The YAML/JSON syntax of namespaces and requests, parsed into the model: full syntax,
//! the architecture samples, error messages with their lines, and hostile input.

use provisio_engine::data::json::from_json;
use provisio_engine::data::{IfNull, Mode};
use provisio_engine::model::*;
use provisio_engine::request::template::{is_single_ref, parse_template, TemplatePart};
use provisio_engine::request::{self, parse_namespaces, parse_request, ParseError};
use serde_json::json;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/yaml")
        .join(name)
}

fn ns_ok(src: &str) -> Vec<Namespace> {
    match parse_namespaces(src, "t.yaml", Format::Yaml) {
        Ok(n) => n,
        Err(e) => panic!("unexpected errors: {e:#?}"),
    }
}

fn ns_err(src: &str) -> ParseError {
    match parse_namespaces(src, "t.yaml", Format::Yaml) {
        Ok(n) => panic!("expected an error, got {n:#?}"),
        Err(mut e) => e.remove(0),
    }
}

fn req_err(src: &str) -> ParseError {
    match parse_request(src, "r.yaml", Format::Yaml) {
        Ok(r) => panic!("expected an error, got {r:#?}"),
        Err(e) => e,
    }
}

fn node(scope: Scope, path: &str) -> TransformSource {
    TransformSource::Node {
        scope,
        path: Some(path.into()),
    }
}

fn exec(s: &Step) -> &ExecuteStep {
    match s {
        Step::Execute(e) => e,
        other => panic!("not an execute step: {other:#?}"),
    }
}

fn call(ns: &str, p: &str) -> Option<CallTarget> {
    Some(CallTarget {
        namespace: ns.into(),
        procedure: p.into(),
    })
}

#[test]
fn full_syntax_maps_to_the_model() {
    let nss = request::load_namespace_file(&fixture("full.yaml")).expect("parses");
    assert_eq!(nss.len(), 1);
    let ns = &nss[0];
    assert_eq!(ns.name, "Hosted DNS");
    assert_eq!(ns.description.as_deref(), Some("Zones and records."));
    assert_eq!(ns.provider.as_deref(), Some("Provisio.Dns"));
    assert_eq!(
        ns.provider_context,
        from_json("providerContext", &json!({"server": "127.0.0.1"})).unwrap()
    );
    assert!(ns.read_only);
    assert_eq!(ns.source_ref.line, 2);
    assert!(ns.source_ref.file.ends_with("full.yaml"));
    assert_eq!(ns.procedures.len(), 2);

    let p = &ns.procedures[0];
    assert_eq!(p.name, "CreateTenantZone");
    assert_eq!(p.source_ref.line, 8);
    assert_eq!(p.source_ref.column, 3);
    assert_eq!(p.access, Access::Public);
    assert_eq!(p.kind, ProcKind::Write);
    assert_eq!(
        p.description.as_deref(),
        Some("Creates a zone with MX and SPF.")
    );
    assert_eq!(p.ordering, Ordering::Parallel);
    assert_eq!(p.entry.as_deref(), Some("CreateZone"));
    assert!(p.save_data_for_rollback);
    assert!(p.resumable);
    assert_eq!(
        p.procedure_data,
        from_json("procedureData", &json!({"counter": 0})).unwrap()
    );
    let names: Vec<_> = p.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["zone", "mailHost", "spf", "password", "note"]);
    assert_eq!(
        p.inputs[0],
        InputSpec {
            name: "zone".into(),
            ty: Some("string".into()),
            required: true,
            ..Default::default()
        }
    );
    assert!(p.inputs[1].required);
    assert_eq!(p.inputs[1].description.as_deref(), Some("The MX host."));
    assert!(!p.inputs[2].required);
    assert_eq!(
        p.inputs[2].default,
        Some(provisio_engine::data::Scalar::Str("v=spf1 mx -all".into()))
    );
    assert!(p.inputs[3].secret && p.inputs[3].required);
    assert!(!p.inputs[4].required);

    let ids: Vec<_> = p.steps.iter().map(|s| s.id()).collect();
    assert_eq!(ids, ["zone", "users", "short", "guarded", "plan"]);

    // zone: with → one ref (merge), one constant, one template; output → after.
    let zone = exec(&p.steps[0]);
    assert_eq!(zone.source_ref.line, 24);
    assert_eq!(zone.call, call("DNS Provider", "CreateZone"));
    assert_eq!(
        zone.execute_data,
        from_json("executeData", &json!({"rrType": "MX"})).unwrap()
    );
    assert_eq!(zone.before.len(), 2);
    assert_eq!(zone.before[0].source, node(Scope::Data, "zone"));
    assert_eq!(zone.before[0].destination, Scope::ExecuteData);
    assert_eq!(zone.before[0].destination_path.as_deref(), Some("zoneName"));
    assert_eq!(zone.before[0].mode, Mode::Merge);
    assert_eq!(zone.before[0].if_null, IfNull::Fail);
    assert_eq!(zone.before[0].source_ref.line, 27);
    assert_eq!(
        zone.before[1].source,
        TransformSource::Template("v=spf1 include:{{ data.domain }} -all".into())
    );
    assert_eq!(zone.before[1].destination_path.as_deref(), Some("text"));
    assert_eq!(zone.before[1].mode, Mode::Merge);
    assert_eq!(zone.after.len(), 1);
    assert_eq!(zone.after[0].source, node(Scope::ExecuteData, "id"));
    assert_eq!(zone.after[0].destination, Scope::Data);
    assert_eq!(zone.after[0].destination_path.as_deref(), Some("zoneId"));
    assert_eq!(zone.after[0].mode, Mode::Merge);
    assert!(zone.needs.is_empty());

    // users: forEach list, when (exists + case), unless, repeat, explicit before/after.
    let users = exec(&p.steps[1]);
    assert_eq!(users.needs, ["zone"]);
    assert_eq!(users.call, call("Hosted AD", "CreateUser"));
    assert_eq!(
        users.for_each,
        vec![
            ForEach {
                name: "org".into(),
                root: Scope::Data,
                path: Some("organizations/organization".into()),
                if_null: IfNull::Fail,
            },
            ForEach {
                name: "user".into(),
                root: Scope::Named("org".into()),
                path: Some("user".into()),
                if_null: IfNull::Skip,
            },
        ]
    );
    assert_eq!(
        users.when,
        vec![
            When::Exists {
                scope: Scope::Data,
                path: Some("users/user[@status='new']".into())
            },
            When::Case {
                select: "plan".into(),
                case: "gold".into()
            },
            When::Missing {
                scope: Scope::Data,
                path: Some("skip".into())
            },
        ]
    );
    assert_eq!(
        users.repeat,
        Some(Repeat {
            scope: Scope::Data,
            path: Some("count".into()),
            if_null: IfNull::Ignore
        })
    );
    assert_eq!(
        users.execute_data,
        from_json("executeData", &json!({"isAdmin": 0})).unwrap()
    );
    // explicit before first, then `with`
    assert_eq!(users.before.len(), 3);
    assert_eq!(
        users.before[0].source,
        TransformSource::Node {
            scope: Scope::Named("user".into()),
            path: None
        }
    );
    assert_eq!(users.before[0].mode, Mode::Merge);
    assert_eq!(users.before[0].destination_path, None);
    assert_eq!(
        users.before[1].source,
        TransformSource::Template("{{ user.name }}@{{ data.zone }}".into())
    );
    assert_eq!(users.before[1].destination, Scope::ExecuteData);
    assert_eq!(users.before[1].destination_path.as_deref(), Some("upn"));
    assert_eq!(users.before[1].mode, Mode::Insert);
    assert_eq!(
        users.before[2].source,
        node(Scope::Named("user".into()), "name")
    );
    // output first, then explicit after
    assert_eq!(users.after.len(), 2);
    assert_eq!(users.after[0].source, node(Scope::ExecuteData, "path"));
    assert_eq!(users.after[0].destination_path.as_deref(), Some("created"));
    assert_eq!(users.after[1].source, node(Scope::ExecuteData, "user"));
    assert_eq!(users.after[1].mode, Mode::Insert);
    assert_eq!(users.after[1].if_null, IfNull::Ignore);

    // short: a transform step (no call), forEach shorthand, when as a placeholder.
    let short = exec(&p.steps[2]);
    assert_eq!(short.call, None);
    assert_eq!(short.needs, ["zone", "users"]);
    assert_eq!(
        short.for_each,
        vec![ForEach {
            name: "user".into(),
            root: Scope::Data,
            path: Some("users/user".into()),
            if_null: IfNull::Fail
        }]
    );
    assert_eq!(
        short.when,
        vec![When::Exists {
            scope: Scope::Data,
            path: Some("users".into())
        }]
    );

    // guarded: try/catch
    match &p.steps[3] {
        Step::Try(t) => {
            assert_eq!(t.id, "guarded");
            assert_eq!(t.needs, ["short"]);
            assert_eq!(t.body.len(), 1);
            assert_eq!(t.body[0].id(), "inner");
            // The MPS form of a record: rrType as the WMI class, fields in `properties`.
            assert_eq!(
                exec(&t.body[0]).execute_data,
                from_json(
                    "executeData",
                    &json!({"zoneName": "example.com", "rrType": "MicrosoftDNS_AType", "commitFlag": "COMMIT",
                            "properties": {"OwnerName": "www", "IPAddress": "192.0.2.10"}})
                )
                .unwrap()
            );
            assert_eq!(t.catch.len(), 1);
            let report = exec(&t.catch[0]);
            assert_eq!(report.call, call("Error Provider", "ReportEvent"));
            assert_eq!(
                report.before[0].source,
                node(Scope::Context, "errorContext")
            );
            assert_eq!(t.source_ref.line, 58);
        }
        other => panic!("not a try: {other:#?}"),
    }

    // plan: select
    assert_eq!(
        p.steps[4],
        Step::Select(SelectStep {
            id: "plan".into(),
            name: "plan".into(),
            scope: Scope::Data,
            path: Some("plan".into()),
            cases: vec![
                ("gold".into(), "premium".into()),
                ("silver".into(), "basic".into())
            ],
            default_case: Some("basic".into()),
            if_null_case: Some("basic".into()),
            needs: vec!["zone".into()],
            source_ref: p.steps[4].source_ref().clone(),
        })
    );
    assert_eq!(p.steps[4].source_ref().line, 68);

    let leaf = &ns.procedures[1];
    assert_eq!(leaf.name, "Leaf");
    assert_eq!(leaf.access, Access::Private);
    assert_eq!(leaf.ordering, Ordering::Sequential);
    assert!(leaf.steps.is_empty());
}

#[test]
fn architecture_sample_namespace() {
    let nss = request::load_namespace_file(&fixture("architecture-dns.yaml")).expect("parses");
    let p = nss[0].procedure("CreateTenantZone").expect("procedure");
    assert_eq!(nss[0].provider, None);
    assert_eq!(p.access, Access::Public);
    assert_eq!(p.ordering, Ordering::Parallel);
    assert_eq!(p.inputs.len(), 3);
    assert!(!p.inputs[2].required);
    let mx = exec(&p.steps[1]);
    assert_eq!(mx.needs, ["zone"]);
    assert_eq!(mx.call, call("DNS Provider", "CreateResourceRecord"));
    assert_eq!(
        mx.execute_data,
        from_json(
            "executeData",
            &json!({"rrType": "MicrosoftDNS_MXType", "commitFlag": "COMMIT", "properties": {"Preference": 10}})
        )
        .unwrap()
    );
    let dests: Vec<_> = mx
        .before
        .iter()
        .map(|t| t.destination_path.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(dests, ["zoneName", "properties/MailExchange"]);
    assert_eq!(mx.before[1].source, node(Scope::Data, "mailHost"));
    assert_eq!(mx.source_ref.line, 12);
    let spf = exec(&p.steps[2]);
    assert_eq!(spf.before[1].source, node(Scope::Data, "spf"));
    assert_eq!(
        spf.before[1].destination_path.as_deref(),
        Some("properties/DescriptiveText")
    );
}

#[test]
fn architecture_sample_request() {
    let r = request::load_request_file(&fixture("architecture-request.yaml")).expect("parses");
    assert_eq!(
        r.target,
        RequestTarget::Call(CallTarget {
            namespace: "Hosted DNS".into(),
            procedure: "CreateTenantZone".into()
        })
    );
    assert_eq!(
        r.data,
        from_json(
            "data",
            &json!({"zone": "contoso.test", "mailHost": "mail.contoso.test"})
        )
        .unwrap()
    );
    assert_eq!(r.context, from_json("context", &json!({})).unwrap());
    assert_eq!(r.format, Format::Yaml);
}

#[test]
fn json_request() {
    let r = request::load_request_file(&fixture("request.json")).expect("parses");
    assert_eq!(r.format, Format::Json);
    assert!(matches!(r.target, RequestTarget::Call(ref c) if c.procedure == "CreateTenantZone"));
    assert_eq!(
        r.context,
        from_json(
            "context",
            &json!({"clientContext": {"@clientTransactionId": "42"}})
        )
        .unwrap()
    );
}

#[test]
fn json_errors_have_line_and_column() {
    let src = "{\n  \"call\": \"A/B\",\n  \"dta\": {}\n}\n";
    let e = parse_request(src, "r.json", Format::Json).unwrap_err();
    assert_eq!(e.source_ref.line, 3, "{e}");
    assert!(e.message.contains("unknown field `dta`"), "{e}");
    assert!(
        e.hint
            .as_deref()
            .unwrap_or("")
            .contains("did you mean `data`"),
        "{e}"
    );
    let e = parse_request("{\n  \"call\": \"A/B\",\n", "r.json", Format::Json).unwrap_err();
    assert_eq!(e.source_ref.line, 3, "{e}");
}

#[test]
fn json_namespace() {
    let src = r#"{
  "namespace": "Hosted DNS",
  "procedures": {
    "CreateTenantZone": {
      "access": "public",
      "steps": { "zone": { "call": "DNS Provider/CreateZone", "with": { "zoneName": "{{ data.zone }}" } } }
    }
  }
}"#;
    let nss = parse_namespaces(src, "n.json", Format::Json).expect("parses");
    let p = &nss[0].procedures[0];
    assert_eq!(p.source_ref.line, 4);
    assert_eq!(
        exec(&p.steps[0]).before[0].source,
        node(Scope::Data, "zone")
    );
}

#[test]
fn trusted_request() {
    let r = request::load_request_file(&fixture("trusted-request.yaml")).expect("parses");
    match r.target {
        RequestTarget::Trusted(p) => {
            assert_eq!(p.name, "request");
            assert_eq!(p.access, Access::Public);
            assert_eq!(p.ordering, Ordering::Parallel);
            assert_eq!(exec(&p.steps[0]).call, call("DNS Provider", "CreateZone"));
            assert_eq!(p.steps[0].source_ref().line, 5);
        }
        other => panic!("not trusted: {other:#?}"),
    }
}

#[test]
fn list_of_namespaces() {
    let nss = request::load_namespace_file(&fixture("two-namespaces.yaml")).expect("parses");
    assert_eq!(nss.len(), 2);
    assert_eq!(nss[0].name, "DNS Provider");
    assert_eq!(nss[1].name, "Hosted DNS");
    assert_eq!(nss[1].source_ref.line, 5);
    assert_eq!(nss[1].procedures[0].source_ref.line, 7);
    assert_eq!(nss[1].procedures[0].steps[0].source_ref().line, 10);
}

#[test]
fn several_yaml_documents() {
    let nss = ns_ok("namespace: A\n---\nnamespace: B\nprocedures:\n  P: {}\n");
    assert_eq!(nss.len(), 2);
    assert_eq!(nss[1].procedures[0].source_ref.line, 5);
}

// ---- errors ------------------------------------------------------------------------

#[test]
fn unknown_step_key() {
    let e = ns_err("namespace: A\nprocedures:\n  P:\n    steps:\n      mx:\n        cal: B/C\n");
    assert_eq!((e.source_ref.line, e.source_ref.column), (6, 9), "{e}");
    assert!(e.message.contains("unknown field `cal`"), "{e}");
    assert!(e.message.contains("procedures.P.steps.mx"), "{e}");
    let hint = e.hint.unwrap_or_default();
    assert!(hint.contains("did you mean `call`"), "{hint}");
    assert!(hint.contains("valid keys:"), "{hint}");
}

#[test]
fn unknown_namespace_and_procedure_keys() {
    let e = ns_err("namespace: A\nprovidr: X\n");
    assert_eq!(e.source_ref.line, 2);
    assert!(e.hint.unwrap_or_default().contains("`provider`"));
    let e = ns_err("namespace: A\nprocedures:\n  P:\n    acess: public\n");
    assert_eq!(e.source_ref.line, 4);
    assert!(e.hint.unwrap_or_default().contains("`access`"));
    let e = ns_err("namespace: A\nprocedures:\n  P:\n    access: publik\n");
    assert_eq!(e.source_ref.line, 4);
    assert!(e.message.contains("unknown variant `publik`"), "{e}");
    assert!(e.hint.unwrap_or_default().contains("did you mean `public`"));
}

#[test]
fn call_without_namespace() {
    let e = ns_err("namespace: A\nprocedures:\n  P:\n    steps:\n      a: { call: B/C }\n      mx:\n        call: Foo\n");
    assert_eq!(e.source_ref.line, 7, "{e}");
    assert!(e.message.contains("procedures.P.steps.mx.call"), "{e}");
    assert!(e.message.contains("`Foo` names no namespace"), "{e}");
    assert_eq!(
        e.hint.as_deref(),
        Some("write `call: Namespace/Procedure`, e.g. `call: DNS Provider/CreateZone`")
    );
    let shown = e.to_string();
    assert!(shown.starts_with("t.yaml:7:9: "), "{shown}");
}

#[test]
fn call_splits_at_the_last_slash() {
    let nss = ns_ok("namespace: A\nprocedures:\n  P:\n    steps:\n      a: { call: Managed/AD/Create Object }\n");
    assert_eq!(
        exec(&nss[0].procedures[0].steps[0]).call,
        call("Managed/AD", "Create Object")
    );
}

#[test]
fn try_with_call_is_an_error() {
    let e = ns_err("namespace: A\nprocedures:\n  P:\n    steps:\n      g:\n        try: { a: { call: B/C } }\n        call: B/C\n        catch: {}\n");
    assert!(
        e.message.contains("a `try` step cannot also have `call`"),
        "{e}"
    );
    assert_eq!(e.source_ref.line, 7, "{e}");
}

#[test]
fn bad_placeholder() {
    let e = ns_err("namespace: A\nprocedures:\n  P:\n    steps:\n      a:\n        call: B/C\n        with:\n          x: \"{{ data.zone\"\n");
    assert!(e.message.contains("unclosed `{{`"), "{e}");
    assert!(e.message.contains("procedures.P.steps.a.with.x"), "{e}");
    assert_eq!(e.source_ref.line, 8, "{e}");
    let e = ns_err("namespace: A\nprocedures:\n  P:\n    steps:\n      a:\n        call: B/C\n        with: { x: \"{{ }}\" }\n");
    assert!(e.message.contains("empty reference"), "{e}");
    assert_eq!(e.source_ref.line, 7, "{e}");
}

#[test]
fn type_errors_have_locations() {
    let e = ns_err("namespace: A\nprocedures:\n  P:\n    parallel: maybe\n");
    assert_eq!(e.source_ref.line, 4);
    assert!(e.message.contains("invalid type"), "{e}");
    let e = ns_err("namespace: A\nprocedures:\n  P:\n    inputs: { a: { type: strng } }\n");
    assert!(e.message.contains("unknown input type `strng`"), "{e}");
    assert!(e.hint.unwrap_or_default().contains("did you mean `string`"));
    let e =
        ns_err("namespace: A\nprocedures:\n  P:\n    steps:\n      a: { call: B/C, needs: [a] }\n");
    assert!(e.message.contains("needs itself"), "{e}");
}

#[test]
fn duplicate_and_invalid_names() {
    let e = ns_err("namespace: A\nprocedures:\n  P:\n    steps:\n      a: { call: B/C }\n      a: { call: B/D }\n");
    assert!(e.message.contains("duplicate"), "{e}");
    assert_eq!(e.source_ref.line, 6, "{e}");
    let e = ns_err("namespace: A\nprocedures:\n  P:\n    steps:\n      a: { call: B/C }\n      g: { try: { a: { call: B/D } }, catch: {} }\n");
    assert!(e.message.contains("used twice"), "{e}");
    let e = ns_err("namespace: \"A/B\"\n");
    assert!(e.message.contains("not a valid namespace name"), "{e}");
    assert_eq!(e.source_ref.line, 1);
    let e = ns_err("procedures: {}\n");
    assert!(e.message.contains("missing field `namespace`"), "{e}");
}

#[test]
fn when_and_foreach_errors() {
    let e = ns_err(
        "namespace: A\nprocedures:\n  P:\n    steps:\n      a:\n        when: \"data..x\"\n",
    );
    assert!(e.message.contains("steps.a.when"), "{e}");
    assert_eq!(e.source_ref.line, 6);
    let e = ns_err("namespace: A\nprocedures:\n  P:\n    steps:\n      a:\n        forEach: { name: u, path: users/user }\n");
    assert!(e.message.contains("must be a list"), "{e}");
    assert_eq!(e.source_ref.line, 6);
    let e = ns_err("namespace: A\nprocedures:\n  P:\n    steps:\n      a:\n        forEach: [ { name: data, path: x } ]\n");
    assert!(e.message.contains("cannot name a forEach variable"), "{e}");
}

#[test]
fn request_errors() {
    let e = req_err("call: A/B\nprocedure: { steps: {} }\n");
    assert!(e.message.contains("either `call` or `procedure`"), "{e}");
    assert_eq!(e.source_ref.line, 2);
    let e = req_err("data: { a: 1 }\n");
    assert!(e.message.contains("neither `call` nor `procedure`"), "{e}");
    assert!(e
        .hint
        .unwrap_or_default()
        .contains("call: Namespace/Procedure"));
    let e = req_err("call: CreateZone\n");
    assert_eq!(e.source_ref.line, 1);
    assert!(e.hint.unwrap_or_default().contains("Namespace/Procedure"));
    let e = req_err("call: A/B\ndata: [1, 2]\n");
    assert!(e.message.contains("`data` must be a mapping"), "{e}");
    assert_eq!(e.source_ref.line, 2);
    let e = req_err("");
    assert!(e.message.contains("empty"), "{e}");
    let e = req_err("call: A/B\n---\ncall: A/C\n");
    assert!(e.message.contains("more than one document"), "{e}");
}

// ---- hostile input -----------------------------------------------------------------

#[test]
fn billion_laughs_is_bounded() {
    let mut src = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        src.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let req = format!("call: A/B\ndata:\n  {}", src.replace('\n', "\n  "));
    let start = std::time::Instant::now();
    let e = req_err(&req);
    assert!(
        e.message.contains("limit") || e.message.contains("budget"),
        "{e}"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(10));

    // Through step maps: nested try bodies referencing the previous anchor.
    let mut ns =
        String::from("namespace: A\nprocedures:\n  P:\n    steps:\n      s0: &s0 { call: B/C }\n");
    for i in 1..30 {
        let p = i - 1;
        ns.push_str(&format!(
            "      s{i}: &s{i} {{ try: {{ x: *s{p}, y: *s{p}, z: *s{p} }}, catch: {{}} }}\n"
        ));
    }
    let start = std::time::Instant::now();
    let _ = parse_namespaces(&ns, "t.yaml", Format::Yaml);
    assert!(start.elapsed() < std::time::Duration::from_secs(10));

    // A long scalar aliased many times.
    let mut ns = format!(
        "namespace: A\ndescription: &big \"{}\"\nprocedures:\n",
        "x".repeat(100_000)
    );
    for i in 0..2000 {
        ns.push_str(&format!("  P{i}: {{ description: *big }}\n"));
    }
    let errs = parse_namespaces(&ns, "t.yaml", Format::Yaml).unwrap_err();
    assert!(
        errs[0].message.contains("budget") || errs[0].message.contains("limit"),
        "{}",
        errs[0]
    );
}

#[test]
fn deep_nesting_is_an_error() {
    let depth = 200;
    let src = format!(
        "call: A/B\ndata: {}1{}\n",
        "{a: ".repeat(depth),
        "}".repeat(depth)
    );
    let e = req_err(&src);
    // refused before serde_yaml recurses, with the limit in the message
    assert!(e.message.contains("deeper than 128 levels"), "{e}");
    assert!(e.hint.unwrap_or_default().contains("128"));
    let src = format!(
        "call: A/B\ndata: {{ x: {}1{} }}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let _ = req_err(&src);
    let src = format!(
        "{{\"call\": \"A/B\", \"data\": {}1{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert!(parse_request(&src, "r.json", Format::Json).is_err());
    // nested try blocks
    let mut steps = String::from("{ call: B/C }");
    for i in 0..100 {
        steps = format!("{{ try: {{ s{i}: {steps} }}, catch: {{}} }}");
    }
    let src = format!("namespace: A\nprocedures:\n  P:\n    steps:\n      top: {steps}\n");
    let _ = parse_namespaces(&src, "t.yaml", Format::Yaml);
}

#[test]
fn odd_input_never_panics() {
    let inputs = [
        "",
        "---",
        "~",
        "[]",
        "- 1\n- 2",
        "namespace:",
        "namespace: [a]",
        "namespace: A\nprocedures: [1]",
        "namespace: A\nprocedures:\n  P: 5",
        "namespace: A\nprocedures:\n  P:\n    steps:\n      a: ~",
        "namespace: A\nprocedures:\n  P:\n    steps:\n      a: { with: { x: [\"{{ data.a }}\"] } }",
        "namespace: A\nprocedures:\n  P:\n    procedureData: 5",
        "namespace: !tag A",
        "namespace: A\nprovidercontext: *nope",
        "namespace: A\nproviderContext: { a: !t 1 }",
        "{\"namespace\": 1}",
        "\t\tnamespace: A",
        "namespace: A\nprocedures:\n  P:\n    steps:\n      a: { output: { x: [1] } }",
        "namespace: A\nprocedures:\n  P:\n    steps:\n      a: { select: {} }",
        "namespace: A\nprocedures:\n  P:\n    steps:\n      a: { catch: {} }",
        "namespace: A\nprocedures:\n  P:\n    inputs: { a: { default: [1] } }",
        "namespace: A\nprocedures:\n  P:\n    inputs: { a: { default: 99999999999999999999 } }",
        "namespace: A\nprocedures:\n  P:\n    steps: { a: { with: { \"\": 1 } } }",
        "namespace: A\nprocedures:\n  P:\n    steps: { a: { with: { x: .nan } } }",
        "é: ü\n",
        "namespace: \"\\u0000\"",
    ];
    for src in inputs {
        let _ = parse_namespaces(src, "t.yaml", Format::Yaml);
        let _ = parse_namespaces(src, "t.json", Format::Json);
        let _ = parse_request(src, "r.yaml", Format::Yaml);
        let _ = parse_request(src, "r.json", Format::Json);
    }
}

// ---- templates -----------------------------------------------------------------------

#[test]
fn templates_via_the_public_api() {
    assert_eq!(
        parse_template("{{ data.tenant.name }}!"),
        Ok(vec![
            TemplatePart::Ref {
                scope: Scope::Data,
                path: Some("tenant/name".into())
            },
            TemplatePart::Lit("!".into())
        ])
    );
    assert_eq!(
        is_single_ref("{{ user.name }}"),
        Some((Scope::Named("user".into()), Some("name".into())))
    );
}

#[test]
fn documented_examples_parse() {
    let doc_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/yaml-syntax.md");
    let Ok(doc) = std::fs::read_to_string(&doc_path) else {
        return; // docs not shipped with the crate
    };
    let blocks: Vec<&str> = doc
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    assert_eq!(blocks.len(), 5);
    let nss = ns_ok(blocks[0]);
    assert_eq!(nss[0].procedures[0].steps.len(), 5);
    // The scripts example, with its script file next to a file in the fixtures folder.
    let file = fixture("doc.yaml").display().to_string();
    let scripted = match parse_namespaces(blocks[4], &file, Format::Yaml) {
        Ok(n) => n,
        Err(e) => panic!("{e:#?}"),
    };
    let kinds: Vec<&str> = scripted[0].procedures[0]
        .steps
        .iter()
        .map(|s| match s {
            Step::Script(_) => "script",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["other", "script", "script"]);
    for b in &blocks[1..3] {
        if let Err(e) = parse_request(b, "doc.yaml", Format::Yaml) {
            panic!("{e}");
        }
    }
    // The batch request example: two items sharing globalData.
    match request::parse_request_document(blocks[3], "doc.yaml", Format::Yaml) {
        Ok(provisio_engine::model::RequestDocument::Batch(b)) => assert_eq!(b.split().len(), 2),
        other => panic!("expected a batch, got {other:?}"),
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

const SCRIPTED_YAML: &str = r##"namespace: Scripted
procedures:
  P:
    access: public
    steps:
      create:
        call: Rec Provider/Create
        forEach:
          - name: org
            path: orgs/org
          - name: user
            root: org
            path: user
            filter: "item.enabled == true"
        if: data.active == true
        when: data/active
        with:
          name: { $expr: 'lower(user.first) + "." + lower(user.last)' }
          mode: "0750"
          home:
            $expr: |
              "/home/" + user.first
        output:
          made: { $expr: "executeData.id" }
        before:
          - { expr: "#{ a: 1 }", destination: executeData, destinationPath: extra }
        after:
          - source: executeData
            sourcePath: id
            destination: data
          - expr: 'upper(executeData.name)'
            destination: data
            destinationPath: upper
            mode: replace
      guarded:
        call: Rec Provider/Create
        with: { name: g }
        if:
          - data.count > 1
          - "data.count < 10"
      make:
        needs: [create]
        script: |
          let a = call_procedure("Rec Provider/Create", #{ name: data.first });
          #{ made: a.id }
        undo: 'log("undo " + result.made)'
        calls: [Rec Provider/Create, Rec Provider/Noop]
        if: data.make != false
        unless: data/skip
        output: results/made
      fromFile:
        script: { file: make-user.rhai }
        undo: { file: undo-user.rhai }
        calls: Rec Provider/Create
"##;

fn scripted() -> (Namespace, String) {
    let file = fixture("scripted.yaml").display().to_string();
    match parse_namespaces(SCRIPTED_YAML, &file, Format::Yaml) {
        Ok(mut n) => (n.remove(0), file),
        Err(e) => panic!("{e:#?}"),
    }
}

fn script_step(s: &Step) -> &ScriptStep {
    match s {
        Step::Script(s) => s,
        other => panic!("not a script step: {other:#?}"),
    }
}

#[test]
fn if_filter_and_expr_values() {
    let (ns, file) = scripted();
    let at = |needle: &str| {
        let (l, c) = pos_of(SCRIPTED_YAML, needle);
        SourceRef::new(&file, l, c)
    };
    let steps = &ns.procedures[0].steps;
    let e = exec(&steps[0]);
    assert_eq!(e.for_each.len(), 2);
    assert_eq!(
        e.when,
        vec![
            When::Filter {
                for_each: "user".into(),
                script: Script::new("item.enabled == true", at("item.enabled")),
            },
            When::Expr(Script::new(
                "data.active == true",
                at("data.active == true")
            )),
            When::Exists {
                scope: Scope::Data,
                path: Some("active".into())
            },
        ]
    );
    // with: `$expr` entries become merge transforms into executeData, in order.
    let exprs: Vec<&Transform> = e
        .before
        .iter()
        .filter(|t| matches!(t.source, TransformSource::Expr(_)))
        .collect();
    assert_eq!(exprs.len(), 3, "{:#?}", e.before);
    assert_eq!(
        exprs[0].source,
        TransformSource::Expr(Script::new("#{ a: 1 }", at("#{ a: 1 }")))
    );
    assert_eq!(exprs[0].destination_path.as_deref(), Some("extra"));
    assert_eq!(exprs[0].mode, Mode::Insert);
    assert_eq!(
        exprs[1].source,
        TransformSource::Expr(Script::new(
            r#"lower(user.first) + "." + lower(user.last)"#,
            at("lower(user.first)")
        ))
    );
    assert_eq!(
        (
            exprs[1].destination.clone(),
            exprs[1].destination_path.as_deref(),
            exprs[1].mode,
            exprs[1].if_null
        ),
        (Scope::ExecuteData, Some("name"), Mode::Merge, IfNull::Fail)
    );
    // A block scalar starts on the line after `$expr: |`, at its indentation.
    assert_eq!(
        exprs[2].source,
        TransformSource::Expr(
            Script::new("\"/home/\" + user.first\n", at("\"/home/\""))
                .with_indent(at("\"/home/\"").column - 1)
        )
    );
    assert_eq!(exprs[2].destination_path.as_deref(), Some("home"));
    assert_eq!(
        e.execute_data.child("mode").map(|m| m.text()),
        Some("0750".into())
    );
    // output: `$expr` → data; explicit after items keep their order.
    assert_eq!(e.after.len(), 3, "{:#?}", e.after);
    assert_eq!(
        e.after[0].source,
        TransformSource::Expr(Script::new("executeData.id", at("executeData.id\"")))
    );
    assert_eq!(
        (
            e.after[0].destination.clone(),
            e.after[0].destination_path.as_deref(),
            e.after[0].mode
        ),
        (Scope::Data, Some("made"), Mode::Merge)
    );
    assert_eq!(e.after[1].source, node(Scope::ExecuteData, "id"));
    assert_eq!(
        e.after[2].source,
        TransformSource::Expr(Script::new("upper(executeData.name)", at("upper(")))
    );
    assert_eq!(e.after[2].mode, Mode::Replace);

    // `if:` as a list: every item must hold, each located on its own line.
    let g = exec(&steps[1]);
    assert_eq!(
        g.when,
        vec![
            When::Expr(Script::new("data.count > 1", at("data.count > 1"))),
            When::Expr(Script::new("data.count < 10", at("data.count < 10"))),
        ]
    );
}

#[test]
fn script_steps_map_to_the_model() {
    let (ns, file) = scripted();
    let at = |needle: &str| {
        let (l, c) = pos_of(SCRIPTED_YAML, needle);
        SourceRef::new(&file, l, c)
    };
    let steps = &ns.procedures[0].steps;
    let s = script_step(&steps[2]);
    assert_eq!(s.id, "make");
    assert_eq!(
        s.script,
        Script::new(
            "let a = call_procedure(\"Rec Provider/Create\", #{ name: data.first });\n#{ made: a.id }\n",
            at("let a =")
        )
        .with_indent(at("let a =").column - 1)
    );
    assert_eq!(
        s.undo,
        Some(Script::new(r#"log("undo " + result.made)"#, at("log(")))
    );
    assert_eq!(
        s.calls,
        vec![
            CallTarget {
                namespace: "Rec Provider".into(),
                procedure: "Create".into()
            },
            CallTarget {
                namespace: "Rec Provider".into(),
                procedure: "Noop".into()
            },
        ]
    );
    assert_eq!(s.output.as_deref(), Some("results/made"));
    assert_eq!(s.needs, ["create"]);
    assert_eq!(
        s.when,
        vec![
            When::Expr(Script::new("data.make != false", at("data.make"))),
            When::Missing {
                scope: Scope::Data,
                path: Some("skip".into())
            },
        ]
    );
    assert_eq!(s.source_ref, at("make:"));

    let f = script_step(&steps[3]);
    let make = fixture("make-user.rhai").display().to_string();
    assert_eq!(f.script.origin, SourceRef::new(&make, 1, 1));
    assert_eq!(
        f.script.source,
        std::fs::read_to_string(&make).expect("fixture")
    );
    assert_eq!(
        f.undo.as_ref().map(|u| u.origin.clone()),
        Some(SourceRef::new(
            fixture("undo-user.rhai").display().to_string(),
            1,
            1
        ))
    );
    assert_eq!(f.calls.len(), 1);
    assert!(f.output.is_none() && f.when.is_empty());
}

fn step_err(step: &str) -> ParseError {
    ns_err(&format!(
        "namespace: A\nprocedures:\n  P:\n    steps:\n      s:\n{step}"
    ))
}

#[test]
fn script_errors() {
    let cases: &[(&str, &str, u32)] = &[
        (
            "        script: \"1\"\n        call: B/C\n",
            "a `script` step cannot also have `call`",
            7,
        ),
        (
            "        script: \"1\"\n        try: { a: { call: B/C } }\n",
            "a `script` step cannot also have `try`",
            7,
        ),
        (
            "        select: { source: data, path: x, default: y }\n        script: \"1\"\n",
            "a `script` step cannot also have `select`",
            6,
        ),
        (
            "        script: { file: ../secret.rhai }\n",
            "must be a relative path inside the definition's folder",
            6,
        ),
        (
            "        script: { file: /etc/passwd }\n",
            "must be a relative path inside the definition's folder",
            6,
        ),
        (
            "        script: { file: missing.rhai }\n",
            "script file `missing.rhai`: cannot read",
            6,
        ),
        (
            "        script: { path: x.rhai }\n",
            "unexpected key `path` in a script",
            6,
        ),
        (
            "        call: B/C\n        with:\n          name: { $expr: \"1\", other: 2 }\n",
            "`$expr` stands alone; this mapping also has `other`",
            8,
        ),
        (
            "        call: B/C\n        output:\n          x: { $expr: 3 }\n",
            "`$expr` holds a rhai expression as a string",
            8,
        ),
        (
            "        call: B/C\n        before:\n          - { expr: \"1\", source: data, destination: executeData }\n",
            "a transform has either `expr` or `source`, not both",
            8,
        ),
        (
            "        undo: \"1\"\n        call: B/C\n",
            "`undo` belongs to a script step",
            6,
        ),
        (
            "        script: \"1\"\n        output: { a: b }\n",
            "the `output` of a script step is a path under data",
            7,
        ),
        (
            "        script: \"1\"\n        output: data/x\n",
            "names `data` again",
            7,
        ),
        (
            "        call: B/C\n        output: x\n",
            "the `output` of a call step is a mapping",
            7,
        ),
        (
            "        try: { a: { call: B/C } }\n        if: data.x\n        catch: {}\n",
            "a `try` step cannot also have `if`",
            7,
        ),
        ("        script: \"  \"\n", "an empty script", 6),
        ("        call: B/C\n        if: \"\"\n", "an empty `if` condition", 7),
    ];
    for (step, fragment, line) in cases {
        let e = step_err(step);
        assert!(
            e.to_string().contains(fragment),
            "{step}: expected `{fragment}` in `{e}`"
        );
        assert_eq!(e.source_ref.line, *line, "{step}: {e}");
    }
}

/// Regression: serde_yaml's multi-document iterator repeats the same error forever on an
/// invalid document; parsing must stop with that error instead of hanging.
#[test]
fn an_invalid_later_document_is_an_error_not_a_hang() {
    let src = "namespace: A\nprocedures: {}\n---\nnamespace: [unclosed\n";
    let errs = provisio_engine::request::parse_namespaces(
        src,
        "multi.yaml",
        provisio_engine::model::Format::Yaml,
    )
    .expect_err("the second document is malformed");
    assert!(
        errs.iter().any(|e| e.source_ref.file == "multi.yaml"),
        "{errs:?}"
    );
}

// ---- the same mistakes in every syntax ---------------------------------------------

/// The first error of a namespace written in `format`, as shown to a person (message
/// and hint).
fn shown_error(src: &str, format: Format) -> String {
    match parse_namespaces(src, "same", format) {
        Ok(n) => panic!("expected an error in {format:?}, got {n:#?}"),
        Err(e) => e[0].to_string(),
    }
}

/// XML, YAML and JSON answer a mistake with the same words: the shared rules
/// (`request::rules`) decide and word it, whichever syntax carries it.
#[test]
fn same_mistake_same_answer_in_every_syntax() {
    use provisio_engine::request::rules;
    // (what is wrong, XML, YAML, JSON, the words every answer must hold)
    let name = rules::name_error("procedure", "Hosted DNS ");
    let slash = rules::name_error("procedure", "A/B");
    let cases: Vec<(&str, String, String, String, Vec<String>)> = vec![
        (
            "unknown key",
            r#"<namespace name="N"><procedure name="P"><execute id="a" namespace="B" procedure="C" neds="x"/></procedure></namespace>"#.into(),
            "namespace: N\nprocedures:\n  P:\n    steps:\n      a: { call: B/C, neds: x }\n".into(),
            r#"{"namespace": "N", "procedures": {"P": {"steps": {"a": {"call": "B/C", "neds": "x"}}}}}"#.into(),
            vec![rules::did_you_mean("neds", ["needs"]).unwrap_or_default()],
        ),
        (
            "misspelt value",
            r#"<namespace name="N"><procedure name="P" access="publik"/></namespace>"#.into(),
            "namespace: N\nprocedures:\n  P: { access: publik }\n".into(),
            r#"{"namespace": "N", "procedures": {"P": {"access": "publik"}}}"#.into(),
            vec![rules::did_you_mean("publik", ["public"]).unwrap_or_default()],
        ),
        (
            "misspelt scope",
            r#"<namespace name="N"><procedure name="P"><execute id="a" namespace="B" procedure="C"><before source="dta" destination="executeData"/></execute></procedure></namespace>"#.into(),
            "namespace: N\nprocedures:\n  P:\n    steps:\n      a: { call: B/C, before: [ { source: dta } ] }\n".into(),
            r#"{"namespace": "N", "procedures": {"P": {"steps": {"a": {"call": "B/C", "before": [{"source": "dta"}]}}}}}"#.into(),
            vec![rules::did_you_mean("dta", rules::SCOPE_NAMES.iter().copied()).unwrap_or_default()],
        ),
        (
            "trailing space in a procedure name",
            r#"<namespace name="N"><procedure name="Hosted DNS "/></namespace>"#.into(),
            "namespace: N\nprocedures:\n  \"Hosted DNS \": {}\n".into(),
            r#"{"namespace": "N", "procedures": {"Hosted DNS ": {}}}"#.into(),
            vec![name.0.clone(), name.1.clone()],
        ),
        (
            "bad procedure name",
            r#"<namespace name="N"><procedure name="A/B"/></namespace>"#.into(),
            "namespace: N\nprocedures:\n  A/B: {}\n".into(),
            r#"{"namespace": "N", "procedures": {"A/B": {}}}"#.into(),
            vec![slash.0.clone(), slash.1.clone()],
        ),
    ];
    for (what, xml, yaml, json, words) in cases {
        for (format, src) in [
            (Format::Xml, &xml),
            (Format::Yaml, &yaml),
            (Format::Json, &json),
        ] {
            let shown = shown_error(src, format);
            for w in &words {
                assert!(!w.is_empty(), "{what}: no words to expect");
                assert!(
                    shown.contains(w.as_str()),
                    "{what} in {format:?}: expected `{w}` in\n{shown}"
                );
            }
        }
    }
}

/// YAML nested 100,000 deep, in flow and in block style, is refused with the limit named
/// (before serde_yaml, whose time grows with the square of the depth: see the bench
/// `parse_growth/yaml_deep_*`).
#[test]
fn yaml_nested_100k_deep_is_refused_at_the_limit() {
    let flow = format!(
        "call: A/B\ndata: {{ x: {}1{} }}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let block = format!("call: A/B\ndata:\n  x:\n    {}1\n", "- ".repeat(100_000));
    let maps = format!(
        "call: A/B\ndata: {}1{}\n",
        "{a: ".repeat(100_000),
        "}".repeat(100_000)
    );
    // Anchors and tags before the brackets, explicit keys between the entries: these went
    // past the check to serde_yaml (100,000 `&a [`: 24 s; 1,000,000 `- ? `: 4.8 s, 1.2 GB).
    let anchored = format!(
        "call: A/B\ndata: {{ x: {}1{} }}\n",
        "&a !t [".repeat(100_000),
        "]".repeat(100_000)
    );
    let keys = format!("call: A/B\ndata:\n  x:\n    {}1\n", "- ? ".repeat(100_000));
    for (what, src, line) in [
        ("flow", &flow, 2),
        ("block", &block, 4),
        ("flow maps", &maps, 2),
        ("anchored flow", &anchored, 2),
        ("explicit keys", &keys, 4),
    ] {
        let e = req_err(src);
        assert!(
            e.message.contains("nests deeper than 128 levels"),
            "{what}: {e}"
        );
        assert_eq!(e.source_ref.line, line, "{what}: {e}");
        assert!(
            e.hint.unwrap_or_default().contains("limited to 128 levels"),
            "{what}"
        );
        let ns = src.replacen("call: A/B\ndata:", "namespace: A\nprocedureData:", 1);
        let e = &parse_namespaces(&ns, "t.yaml", Format::Yaml).unwrap_err()[0];
        assert!(
            e.message.contains("nests deeper than 128 levels"),
            "{what}: {e}"
        );
    }
    // just under the limit still parses as far as depth goes
    let ok = format!(
        "call: A/B\ndata: {}1{}\n",
        "{a: ".repeat(100),
        "}".repeat(100)
    );
    if let Err(e) = parse_request(&ok, "r.yaml", Format::Yaml) {
        panic!("{e}");
    }
}

/// A UTF-8 byte order mark (written by some editors) is not a second document.
#[test]
fn yaml_with_a_byte_order_mark() {
    let r = parse_request(
        "\u{feff}call: A/B\ndata: { x: 1 }\n",
        "r.yaml",
        Format::Yaml,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(r.target, RequestTarget::Call(_)));
    let nss = ns_ok("\u{feff}namespace: A\nprocedures:\n  P: {}\n");
    assert_eq!(nss[0].name, "A");
    assert_eq!(nss[0].procedures[0].source_ref.line, 3);
    let j = parse_request("\u{feff}{\"call\": \"A/B\"}", "r.json", Format::Json);
    assert!(j.is_ok(), "{j:?}");
}

/// Integers beyond 64 bits become floats, in YAML as in JSON (docs/data-model.md).
#[test]
fn integers_beyond_64_bits_become_floats() {
    let big = "18446744073709551616"; // 2^64
    let huge = "340282366920938463463374607431768211456"; // 2^128, beyond u128 too
    for n in [big, huge, "-9223372036854775809"] {
        let y = parse_request(
            &format!("call: A/B\ndata: {{ n: {n} }}\n"),
            "r.yaml",
            Format::Yaml,
        )
        .unwrap_or_else(|e| panic!("{n}: {e}"));
        let j = parse_request(
            &format!("{{\"call\": \"A/B\", \"data\": {{\"n\": {n}}}}}"),
            "r.json",
            Format::Json,
        )
        .unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(y.data, j.data, "{n}");
        let want: f64 = n.parse().unwrap_or_default();
        assert_eq!(
            y.data,
            from_json("data", &json!({ "n": want })).unwrap(),
            "{n}"
        );
    }
}

/// `{ $expr: … }` nested inside a `with:`/`output:` map computes the value at its path;
/// constants and placeholders beside it keep working.
#[test]
fn nested_expr_in_with_and_output() {
    let nss = ns_ok(
        "namespace: A\nprocedures:\n  P:\n    steps:\n      s:\n        call: B/C\n        with:\n          user:\n            name: { $expr: 'upper(data.first)' }\n            home: { dir: { $expr: '\"/home/\" + data.first' } }\n            shell: /bin/sh\n            mail: \"{{ data.mail }}\"\n        output:\n          made: { id: { $expr: 'executeData.id' } }\n",
    );
    let e = exec(&nss[0].procedures[0].steps[0]);
    let expr_at = |list: &[Transform], path: &str| -> (Scope, String) {
        let t = list
            .iter()
            .find(|t| t.destination_path.as_deref() == Some(path))
            .unwrap_or_else(|| panic!("no transform into {path}: {list:#?}"));
        match &t.source {
            TransformSource::Expr(s) => (t.destination.clone(), s.source.clone()),
            other => panic!("{path}: {other:?}"),
        }
    };
    assert_eq!(
        expr_at(&e.before, "user/name"),
        (Scope::ExecuteData, "upper(data.first)".to_string())
    );
    assert_eq!(
        expr_at(&e.before, "user/home/dir"),
        (Scope::ExecuteData, "\"/home/\" + data.first".to_string())
    );
    assert_eq!(
        expr_at(&e.after, "made/id"),
        (Scope::Data, "executeData.id".to_string())
    );
    assert!(e
        .before
        .iter()
        .any(|t| t.destination_path.as_deref() == Some("user/mail")));
    assert_eq!(
        e.execute_data,
        from_json("executeData", &json!({"user": {"shell": "/bin/sh"}})).unwrap()
    );
}
