//! Integration tests of the sandboxed rhai engine (`provisio_engine::script`); the
//! examples of `docs/scripting.md` are copied here verbatim and checked to still be there.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use provisio_engine::{
    CompiledScript, DriverHost, ScriptEngine, ScriptError, ScriptHost, ScriptLimits, ScriptOrigin,
    Vars,
};
use serde_json::{json, Value};

const DOC: &str = include_str!("../../docs/scripting.md");

const DOC_CONDITION: &str = r#"data.user.enabled && data.user.groups.contains("staff")"#;

const DOC_VALUE: &str = r#"#{
    upn: `${lower(data.user.first)}.${lower(data.user.last)}@${data.domain}`,
    login: slug(data.user.first + " " + data.user.last),
    groups: join(data.user.groups, ";"),
}"#;

const DOC_FILTER: &str = r#"item.status == "active" && item.exists("mail/primary")"#;

const DOC_STEP: &str = r#"let created = [];
let failed = [];
for host in data.hosts {
    try {
        let record = call_procedure("Hosted DNS/AddHostRecord",
                                    #{ zone: data.zone, name: host.name, ip: host.ip });
        created.push(record.fqdn);
    } catch (err) {
        failed.push(`${host.name}: ${err}`);
    }
}
#{ created: created, failed: failed }"#;

const DOC_DRIVER: &str = r#"let ids = [];
for row in read_csv("users.csv") {
    let result = submit(#{ "call": "Directory/CreateUser",
                           data: #{ first: row.first, last: row.last } });
    log(`${row.first} ${row.last}: ${result.status}`);
    ids.push(result.transactionId);
}
ids"#;

const DOC_CALL: &str = r#"let record = call_procedure("Hosted DNS/AddHostRecord", #{ zone: "example.org", name: "www" });
record.fqdn"#;

const DOC_SUBMIT: &str = r#"let r = submit("Directory/CreateUser", #{ first: "Ann", last: "Lee" });
if r.status != "committed" { throw `failed: ${r.error}`; }
r.transactionId"#;

const DOC_SUBMIT_ALL: &str = r#"let r = submit_all([
    #{ "call": "Directory/CreateUser", data: #{ first: "Ann", last: "Lee" } },
    #{ "call": "Directory/CreateUser", data: #{ first: "Bob", last: "Ray" } },
]);
if r.status != "committed" { throw `neither user was created: ${r.error}`; }
r.results.len()"#;

const DOC_HELPERS: &str = r#"let m = #{ user: #{ name: "Ann", mail: ["ann@example.org", "a@example.org"] } };
[
    lower("Ann Lee"), upper("ann"), slug("Jürgen Müller-Lüdenscheidt"),
    join(["a", 1, true], ", "),
    m.exists("user/mail/0"), m.exists("user/phone"),
    m.lookup("user/mail/-1"), m.lookup("user/phone", "none"),
]"#;

fn origin() -> ScriptOrigin {
    ScriptOrigin::new("users.yaml", 10, 5)
}

fn compile(e: &ScriptEngine, src: &str) -> CompiledScript {
    match e.compile(src, &origin()) {
        Ok(s) => s,
        Err(err) => panic!("{src}\n{err}"),
    }
}

fn run(src: &str) -> Result<Value, ScriptError> {
    let e = ScriptEngine::default();
    let s = e.compile(src, &origin())?;
    e.eval_value(&s, &Vars::new())
}

#[test]
fn doc_examples_are_in_the_doc() {
    for ex in [
        DOC_CONDITION,
        DOC_VALUE,
        DOC_FILTER,
        DOC_STEP,
        DOC_DRIVER,
        DOC_CALL,
        DOC_SUBMIT,
        DOC_SUBMIT_ALL,
        DOC_HELPERS,
    ] {
        assert!(
            DOC.contains(&format!("```rhai\n{ex}\n```")),
            "not in docs/scripting.md:\n{ex}"
        );
    }
}

fn user_vars() -> Vars {
    Vars::from_json([(
        "data",
        json!({
            "domain": "example.org",
            "user": {"first": "Ann", "last": "Lee-Müller", "enabled": true, "groups": ["staff", "vpn"]}
        }),
    )])
}

#[test]
fn conditions_over_data() {
    let e = ScriptEngine::default();
    let s = compile(&e, DOC_CONDITION);
    assert!(e.eval_condition(&s, &user_vars()).unwrap());
    let off = Vars::new().with(
        "data",
        &json!({"user": {"enabled": false, "groups": ["staff"]}}),
    );
    assert!(!e.eval_condition(&s, &off).unwrap());
    let not_bool = compile(&e, "data.user.first");
    let err = e.eval_condition(&not_bool, &user_vars()).unwrap_err();
    assert!(matches!(err, ScriptError::Type { .. }));
    assert_eq!(
        err.to_string(),
        "users.yaml:10:5: condition must return true or false, got a string"
    );
}

#[test]
fn values_over_data() {
    let e = ScriptEngine::default();
    let s = compile(&e, DOC_VALUE);
    assert_eq!(
        e.eval_value(&s, &user_vars()).unwrap(),
        json!({"upn": "ann.lee-müller@example.org", "login": "ann-lee-muller", "groups": "staff;vpn"})
    );
    let s = compile(&e, "[1, 2.5, true, (), \"s\", #{}]");
    assert_eq!(
        e.eval_value(&s, &Vars::new()).unwrap(),
        json!([1, 2.5, true, null, "s", {}])
    );
}

#[test]
fn filters_see_item() {
    let e = ScriptEngine::default();
    let s = compile(&e, DOC_FILTER);
    let vars = Vars::new();
    let items = [
        json!({"status": "active", "mail": {"primary": "a@x"}}),
        json!({"status": "active"}),
        json!({"status": "disabled", "mail": {"primary": "b@x"}}),
    ];
    let kept: Vec<bool> = items
        .iter()
        .map(|i| e.eval_filter(&s, &vars, i).unwrap())
        .collect();
    assert_eq!(kept, [true, false, false]);
}

#[test]
fn foreach_names_compile_with_names() {
    let e = ScriptEngine::default();
    assert!(matches!(
        e.compile("user.name", &origin()),
        Err(ScriptError::Syntax { .. })
    ));
    let s = e
        .compile_with_names("user.name == \"ann\"", &origin(), &["user"])
        .unwrap();
    let vars = Vars::new().with("user", &json!({"name": "ann"}));
    assert!(e.eval_condition(&s, &vars).unwrap());
}

struct Dns {
    calls: Mutex<Vec<(String, Value)>>,
}

impl ScriptHost for Dns {
    fn call(&self, target: &str, data: Value) -> Result<Value, String> {
        if let Ok(mut c) = self.calls.lock() {
            c.push((target.to_string(), data.clone()));
        }
        let name = data["name"].as_str().unwrap_or_default();
        if name == "bad" {
            return Err(format!("{target}: record {name} rejected"));
        }
        Ok(json!({"fqdn": format!("{name}.{}", data["zone"].as_str().unwrap_or_default())}))
    }
}

#[test]
fn step_calls_procedures_and_catches_errors() {
    let e = ScriptEngine::default();
    let s = compile(&e, DOC_STEP);
    let vars = Vars::new().with(
        "data",
        &json!({"zone": "example.org", "hosts": [
            {"name": "www", "ip": "10.0.0.1"},
            {"name": "bad", "ip": "10.0.0.2"},
            {"name": "mail", "ip": "10.0.0.3"}
        ]}),
    );
    let host = Arc::new(Dns {
        calls: Mutex::new(Vec::new()),
    });
    let out = e.run_step(&s, &vars, host.clone()).unwrap();
    assert_eq!(
        out,
        json!({
            "created": ["www.example.org", "mail.example.org"],
            "failed": ["bad: Hosted DNS/AddHostRecord: record bad rejected"]
        })
    );
    let calls = host.calls.lock().unwrap();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].0, "Hosted DNS/AddHostRecord");
    assert_eq!(
        calls[0].1,
        json!({"zone": "example.org", "name": "www", "ip": "10.0.0.1"})
    );
    drop(calls);

    let s = compile(&e, DOC_CALL);
    assert_eq!(
        e.run_step(&s, &Vars::new(), host.clone()).unwrap(),
        json!("www.example.org")
    );
    // Uncaught: the step fails with the host's message at the call.
    let s = compile(
        &e,
        "let x = 1;\ncall_procedure(\"Hosted DNS/AddHostRecord\", #{name: \"bad\"})",
    );
    let err = e.run_step(&s, &Vars::new(), host).unwrap_err();
    assert!(
        matches!(
            err,
            ScriptError::Runtime {
                line: 11,
                column: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.message().contains("record bad rejected"));
}

#[derive(Default)]
struct Driver {
    submitted: Mutex<Vec<Value>>,
    logs: Mutex<Vec<String>>,
}

impl DriverHost for Driver {
    fn submit(&self, request: Value) -> Result<Value, String> {
        let mut s = self.submitted.lock().map_err(|e| e.to_string())?;
        s.push(request);
        Ok(json!({"transactionId": format!("tx-{}", s.len()), "status": "committed", "data": {}}))
    }
    fn read_csv(&self, path: &str) -> Result<Vec<Value>, String> {
        if path != "users.csv" {
            return Err(format!("{path}: not allowed"));
        }
        Ok(vec![
            json!({"first": "Ann", "last": "Lee"}),
            json!({"first": "Bob", "last": "Ray"}),
        ])
    }
    fn log(&self, msg: &str) {
        if let Ok(mut l) = self.logs.lock() {
            l.push(msg.to_string());
        }
    }
}

#[test]
fn driver_submits_each_csv_row() {
    let e = ScriptEngine::default();
    let s = compile(&e, DOC_DRIVER);
    let host = Arc::new(Driver::default());
    let out = e.run_driver(&s, host.clone()).unwrap();
    assert_eq!(out, json!(["tx-1", "tx-2"]));
    assert_eq!(
        *host.submitted.lock().unwrap(),
        [
            json!({"call": "Directory/CreateUser", "data": {"first": "Ann", "last": "Lee"}}),
            json!({"call": "Directory/CreateUser", "data": {"first": "Bob", "last": "Ray"}}),
        ]
    );
    assert_eq!(
        *host.logs.lock().unwrap(),
        ["Ann Lee: committed", "Bob Ray: committed"]
    );

    let s = compile(&e, DOC_SUBMIT);
    assert_eq!(e.run_driver(&s, host.clone()).unwrap(), json!("tx-3"));

    let s = compile(&e, r#"read_csv("/etc/passwd")"#);
    let err = e.run_driver(&s, host.clone()).unwrap_err();
    assert!(err.message().contains("not allowed"), "{err}");
    let s = compile(&e, r#"submit(#{ data: 1 })"#);
    let err = e.run_driver(&s, host).unwrap_err();
    assert!(err.message().contains("\"call\""), "{err}");
}

/// `submit_all` sends one request whose steps are the calls, in order, each call's data
/// passed as data; the outcome lists each call's result.
#[test]
fn submit_all_sends_one_request_for_all_calls() {
    let e = ScriptEngine::default();
    let host = Arc::new(Driver::default());
    let s = compile(&e, DOC_SUBMIT_ALL);
    assert_eq!(e.run_driver(&s, host.clone()).unwrap(), json!(2));
    let sent = host.submitted.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "one request: {sent:?}");
    let steps = sent[0]["procedure"]["steps"].as_object().expect("steps");
    assert_eq!(steps.keys().collect::<Vec<_>>(), ["call1", "call2"]);
    assert!(steps.values().all(|s| s["call"] == "Directory/CreateUser"));
    assert_eq!(sent[0]["procedure"]["parallel"], false);
    assert_eq!(
        sent[0]["data"]["call2"],
        json!({"first": "Bob", "last": "Ray"})
    );

    for (script, says) in [
        ("submit_all([])", "empty"),
        (
            r#"submit_all([#{ "call": "A/B" }, 3])"#,
            "item 2 is not a map",
        ),
        (
            r#"submit_all([#{ "cal": "A/B" }])"#,
            "item 1 has no \"call\"",
        ),
    ] {
        let s = compile(&e, script);
        let err = e.run_driver(&s, host.clone()).unwrap_err();
        assert!(err.message().contains(says), "{script}: {err}");
    }
    assert_eq!(host.submitted.lock().unwrap().len(), 1, "nothing more sent");
}

#[test]
fn helper_examples() {
    assert_eq!(
        run(DOC_HELPERS).unwrap(),
        json!([
            "ann lee",
            "ANN",
            "jurgen-muller-ludenscheidt",
            "a, 1, true",
            true,
            false,
            "a@example.org",
            "none"
        ])
    );
}

#[test]
fn every_limit_is_enforced() {
    let cases = [
        ("loop {}", "operations"),
        ("fn f(n) { f(n + 1) } f(0)", "call depth"),
        (r#"let s = "0123456789"; loop { s += s; }"#, "string size"),
        ("let a = [1]; loop { a += a; }", "array size"),
    ];
    for (src, limit) in cases {
        let err = run(src).unwrap_err();
        assert_eq!(err.limit(), Some(limit), "{src}: {err}");
        assert!(matches!(err, ScriptError::Limit { .. }));
    }
    let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    assert_eq!(run(&deep).unwrap_err().limit(), Some("expression depth"));

    let slow = ScriptEngine::new(ScriptLimits {
        max_operations: u64::MAX,
        wall_time: Duration::from_millis(200),
        ..ScriptLimits::default()
    });
    let s = compile(&slow, "let n = 0; while true { n += 1; }");
    let t = Instant::now();
    let err = slow.eval_value(&s, &Vars::new()).unwrap_err();
    assert_eq!(err.limit(), Some("wall time"), "{err}");
    assert!(err.message().contains("wall_time"), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn host_time_does_not_count_as_wall_time() {
    struct Slow;
    impl ScriptHost for Slow {
        fn call(&self, _: &str, _: Value) -> Result<Value, String> {
            std::thread::sleep(Duration::from_millis(80));
            Ok(json!({}))
        }
    }
    let e = ScriptEngine::new(ScriptLimits {
        wall_time: Duration::from_millis(150),
        ..ScriptLimits::default()
    });
    let s = compile(&e, r#"for i in 0..4 { call_procedure("A/B", #{}); } true"#);
    assert_eq!(
        e.run_step(&s, &Vars::new(), Arc::new(Slow)).unwrap(),
        json!(true)
    );
}

#[test]
fn no_host_access() {
    let err = run(r#"import "x" as x; 1"#).unwrap_err();
    assert!(err.message().contains("module"), "{err}");
    let err = run(r#"eval("1 + 1")"#).unwrap_err();
    assert!(matches!(err, ScriptError::Syntax { .. }), "{err}");
    for f in [
        r#"open_file("/etc/passwd")"#,
        r#"read_file("/etc/passwd")"#,
        r#"File("/etc/passwd")"#,
        r#"system("ls")"#,
        r#"exec("ls")"#,
        r#"http_get("http://x")"#,
        r#"env("HOME")"#,
    ] {
        let err = run(f).unwrap_err();
        assert!(
            matches!(err, ScriptError::Runtime { .. }) && err.message().contains("not found"),
            "{f}: {err}"
        );
    }
    // print/debug go to tracing; a captured run would show nothing on stdout.
    assert_eq!(run(r#"print("hello"); debug(42); 1"#).unwrap(), json!(1));
    let err = run(r#"call_procedure("A/B")"#).unwrap_err();
    assert!(err.message().contains("only available in script steps"));
}

#[test]
fn error_positions_follow_origin() {
    let e = ScriptEngine::default();
    let err = e
        .compile("let a = 1;\nlet b = 2;\nlet = 3;", &origin())
        .unwrap_err();
    assert!(matches!(err, ScriptError::Syntax { .. }), "{err:?}");
    assert_eq!(err.location(), ("users.yaml", 12, 5), "{err}");
    assert!(err.to_string().starts_with("users.yaml:12:5: "), "{err}");
    // First-line columns shift by the origin's column.
    let err = e.compile("1 +", &origin()).unwrap_err();
    assert_eq!(err.location().1, 10);
    let s = compile(&e, "let x = 1;\nlet y = x.nope();");
    let err = e.eval_value(&s, &Vars::new()).unwrap_err();
    assert!(
        matches!(err, ScriptError::Runtime { line: 11, .. }),
        "{err:?}"
    );
}
