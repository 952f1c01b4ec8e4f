//! Unit tests of the script engine: sandbox, limits, errors, conversions.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;

fn origin() -> ScriptOrigin {
    ScriptOrigin::new("ns.yaml", 10, 5)
}

fn compile(e: &ScriptEngine, src: &str) -> CompiledScript {
    e.compile(src, &origin()).unwrap()
}

fn value(src: &str) -> Result<Value, ScriptError> {
    let e = ScriptEngine::default();
    let s = e.compile(src, &origin())?;
    e.eval_value(&s, &Vars::new())
}

#[test]
fn values_round_trip() {
    let v = json!({"a": [1, 2.5, "x", true, null], "b": {"c": {}}});
    assert_eq!(dynamic_to_json(&json_to_dynamic(&v)).unwrap(), v);
    assert_eq!(value("()").unwrap(), Value::Null);
    assert_eq!(value("'c'").unwrap(), json!("c"));
    assert_eq!(
        value("#{a: [1, 2], b: 1.5}").unwrap(),
        json!({"a": [1, 2], "b": 1.5})
    );
    let e = value("Fn(\"f\")").unwrap_err();
    assert!(matches!(e, ScriptError::Type { .. }), "{e}");
}

#[test]
fn infinite_loop_hits_operations() {
    let e = value("loop {}").unwrap_err();
    assert_eq!(e.limit(), Some("operations"), "{e}");
    assert!(e.message().contains("max_operations"), "{e}");
}

#[test]
fn deep_recursion_hits_call_depth() {
    let e = value("fn f(n) { f(n + 1) } f(0)").unwrap_err();
    assert_eq!(e.limit(), Some("call depth"), "{e}");
}

#[test]
fn huge_string_array_map() {
    let e = value(r#"let s = "x"; loop { s += s; }"#).unwrap_err();
    assert_eq!(e.limit(), Some("string size"), "{e}");
    // rhai re-measures containers as they grow (quadratic), so smaller limits keep it quick.
    let e = ScriptEngine::new(ScriptLimits {
        max_array_size: 1000,
        max_map_size: 1000,
        ..ScriptLimits::default()
    });
    let s = compile(&e, "let a = []; loop { a.push(1); }");
    let err = e.eval_value(&s, &Vars::new()).unwrap_err();
    assert_eq!(err.limit(), Some("array size"), "{err}");
    // (rhai does not re-measure a map when `m[key] = v` adds a key; merging does.)
    let s = compile(
        &e,
        "let m = #{}; let i = 0; loop { let k = #{}; k[`k${i}`] = i; m += k; i += 1; }",
    );
    let err = e.eval_value(&s, &Vars::new()).unwrap_err();
    assert_eq!(err.limit(), Some("map size"), "{err}");
}

#[test]
fn deep_expression_hits_expression_depth() {
    let src = format!("{}1{}", "(".repeat(200), ")".repeat(200));
    let e = value(&src).unwrap_err();
    assert_eq!(e.limit(), Some("expression depth"), "{e}");
}

#[test]
fn slow_loop_hits_wall_time() {
    let e = ScriptEngine::new(ScriptLimits {
        max_operations: 0,
        wall_time: Duration::from_millis(100),
        ..ScriptLimits::default()
    });
    let s = compile(&e, "let x = 0; loop { x += 1; }");
    let started = std::time::Instant::now();
    let err = e.eval_value(&s, &Vars::new()).unwrap_err();
    assert_eq!(err.limit(), Some("wall time"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn sandbox() {
    let e = value(r#"import "x" as x; 1"#).unwrap_err();
    assert!(
        matches!(e, ScriptError::Runtime { .. } | ScriptError::Syntax { .. }),
        "{e}"
    );
    let e = value(r#"eval("1")"#).unwrap_err();
    assert!(
        matches!(e, ScriptError::Syntax { .. } | ScriptError::Runtime { .. }),
        "{e}"
    );
    for f in [
        "open_file(\"/etc/passwd\")",
        "read_file(\"/etc/passwd\")",
        "system(\"ls\")",
    ] {
        let e = value(f).unwrap_err();
        assert!(e.message().contains("not found"), "{f}: {e}");
    }
    assert_eq!(
        value(r#"print("hi"); debug("there"); 1"#).unwrap(),
        json!(1)
    );
    let e = value("undefined_variable + 1").unwrap_err();
    assert!(matches!(e, ScriptError::Syntax { .. }), "{e}");
}

#[test]
fn constants_cannot_be_modified() {
    let e = ScriptEngine::default();
    let vars = Vars::new().with("data", &json!({"a": 1, "l": [1]}));
    for src in [
        "data.a = 2; 0",
        "data.l.push(2); 0",
        "data += #{b: 1}; 0",
        "let f = || { data.a = 3 }; f.call(); 0",
        "let x = data; x.a = 4; x.a",
        "let f = || data.a; f.call()",
    ] {
        let s = compile(&e, src);
        let _ = e.eval_value(&s, &vars);
        let check = compile(&e, "data");
        assert_eq!(
            e.eval_value(&check, &vars).unwrap(),
            json!({"a": 1, "l": [1]}),
            "after {src}"
        );
    }
    assert_eq!(vars.get("data"), Some(json!({"a": 1, "l": [1]})));
}

#[test]
fn script_variables_do_not_leak_between_runs() {
    let e = ScriptEngine::default();
    let vars = Vars::new().with("data", &json!(1));
    let a = compile(&e, "let y = 5; y");
    assert_eq!(e.eval_value(&a, &vars).unwrap(), json!(5));
    let b = e.compile_with_names("y", &origin(), &["y"]).unwrap();
    assert!(e.eval_value(&b, &vars).is_err());
}

#[test]
fn condition_type_error() {
    let e = ScriptEngine::default();
    let s = compile(&e, r#""yes""#);
    let err = e.eval_condition(&s, &Vars::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ns.yaml:10:5: condition must return true or false, got a string"
    );
}

#[test]
fn error_positions_map_through_origin() {
    let e = ScriptEngine::default();
    let err = e
        .compile("let a = 1;\nlet b = 2;\nlet = 3;", &origin())
        .unwrap_err();
    assert!(
        matches!(err, ScriptError::Syntax { line: 12, .. }),
        "{err:?}"
    );
    let s = compile(&e, "  throw \"boom\"");
    let err = e.eval_value(&s, &Vars::new()).unwrap_err();
    assert_eq!(err.to_string(), "ns.yaml:10:7: boom");
    let s = compile(&e, "fn f() {\n  throw \"deep\"\n}\nf()");
    let err = e.eval_value(&s, &Vars::new()).unwrap_err();
    assert_eq!(err.location(), ("ns.yaml", 11, 3), "{err}");
    assert!(err.message().contains("in call to function `f`"), "{err}");
}

#[test]
fn helpers() {
    assert_eq!(
        value(r#"lower("AbC") + upper("x")"#).unwrap(),
        json!("abcX")
    );
    assert_eq!(value(r#"slug("Ann O'Neil")"#).unwrap(), json!("ann-o-neil"));
    assert_eq!(
        value(r#"join([1, "a", ()], ", ")"#).unwrap(),
        json!("1, a, ")
    );
    assert_eq!(
        value(r#"let m = #{a: #{b: [#{c: 1}]}}; [m.exists("a/b/0/c"), exists(m, "a/x"), m.lookup("a/b/-1/c"), m.lookup("z", 7)]"#).unwrap(),
        json!([true, false, 1, 7])
    );
}

#[test]
fn step_without_host_cannot_call() {
    let e = value(r#"call_procedure("A/B", #{})"#).unwrap_err();
    assert!(
        e.message().contains("only available in script steps"),
        "{e}"
    );
    let e = value(r#"submit(#{"call": "A/B"})"#).unwrap_err();
    assert!(
        e.message().contains("only available in driver scripts"),
        "{e}"
    );
}

struct Echo;
impl ScriptHost for Echo {
    fn call(&self, target: &str, data: Value) -> Result<Value, String> {
        Ok(json!({"target": target, "data": data}))
    }
}

#[test]
fn engine_is_send_sync_and_shared() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ScriptEngine>();
    assert_send_sync::<Vars>();
    assert_send_sync::<CompiledScript>();
    let e = Arc::new(ScriptEngine::default());
    let s = compile(&e, "data.n * 2");
    let vars = Arc::new(Vars::new().with("data", &json!({"n": 21})));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (e, s, vars) = (Arc::clone(&e), s.clone(), Arc::clone(&vars));
            std::thread::spawn(move || {
                for _ in 0..500 {
                    assert_eq!(e.eval_value(&s, &vars).unwrap(), json!(42));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let step = compile(&e, r#"call_procedure("A/B", #{x: 1}).data.x"#);
    assert_eq!(e.run_step(&step, &vars, Arc::new(Echo)).unwrap(), json!(1));
}
