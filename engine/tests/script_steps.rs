//! Scripts in definitions, end to end: YAML/XML namespaces with `if:`, `$expr`, forEach
//! filters and script steps, compiled and run through `Engine` against the
//! `RecordingProvider`. The examples are those of `docs/scripting.md` ("Scripts in
//! definitions").

use provisio_engine::model::{Format, Namespace};
use provisio_engine::plan::{Body, Dep, PlanNode};
use provisio_engine::request::parse_namespaces;
use provisio_engine::CompileError;
use provisio_engine::TxnState;
use serde_json::json;

mod support;
use support as h;

use h::{data, env, failure, strings};

/// The 1-based line of the first line of `src` containing `needle`.
fn line_of(src: &str, needle: &str) -> usize {
    match src.lines().position(|l| l.contains(needle)) {
        Some(i) => i + 1,
        None => panic!("`{needle}` not in the source"),
    }
}

// ---------------------------------------------------------------------------------------
// 1. `if:` conditions

const IF_NS: &str = r#"
namespace: T
procedures:
  Cond:
    access: public
    parallel: false
    steps:
      maybe:
        call: Rec Provider/Create
        if: data.make == true && data.count > 1
        with: { name: maybe }
      always:
        call: Rec Provider/Create
        with: { name: always }
"#;

#[tokio::test]
async fn if_condition_runs_or_skips_a_step() {
    let env = env(IF_NS);
    let r = env
        .run("call: T/Cond\ndata: { make: true, count: 2 }")
        .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(env.log(), strings(&["Create(maybe)", "Create(always)"]));

    let env = h::env(IF_NS);
    let r = env
        .run("call: T/Cond\ndata: { make: false, count: 2 }")
        .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(env.log(), strings(&["Create(always)"]));
}

// ---------------------------------------------------------------------------------------
// 2. `$expr` values

const UPN_NS: &str = r#"
namespace: T
procedures:
  Upn:
    access: public
    steps:
      create:
        call: Rec Provider/Create
        with:
          name: { $expr: 'lower(data.first) + "." + lower(data.last) + "@" + data.domain' }
        output:
          upn: { $expr: "executeData.name" }
          ids: { $expr: '#{ id: executeData.id, upper: upper(executeData.name) }' }
"#;

#[tokio::test]
async fn expr_builds_a_upn_that_reaches_the_provider() {
    let env = env(UPN_NS);
    let r = env
        .run("call: T/Upn\ndata: { first: Ann, last: Lee, domain: contoso.test }")
        .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(env.log(), strings(&["Create(ann.lee@contoso.test)"]));
    let d = data(&r);
    assert_eq!(d["upn"], json!("ann.lee@contoso.test"));
    assert_eq!(d["ids"]["id"], json!("id-ann.lee@contoso.test"));
    assert_eq!(d["ids"]["upper"], json!("ANN.LEE@CONTOSO.TEST"));
}

// ---------------------------------------------------------------------------------------
// 3. forEach filters

const FILTER_NS: &str = r#"
namespace: T
procedures:
  Users:
    access: public
    steps:
      create:
        call: Rec Provider/Create
        forEach:
          - name: user
            path: users/user
            filter: "item.enabled == true"
        with: { name: "{{ user.name }}" }
"#;

#[tokio::test]
async fn foreach_filter_skips_disabled_users() {
    let env = env(FILTER_NS);
    let r = env
        .run(
            r#"
call: T/Users
data:
  users:
    user:
      - { name: ann, enabled: true }
      - { name: bob, enabled: false }
      - { name: cleo, enabled: true }
"#,
        )
        .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let mut log = env.log();
    log.sort();
    assert_eq!(log, strings(&["Create(ann)", "Create(cleo)"]));
}

// ---------------------------------------------------------------------------------------
// 4. Script steps: nested calls, result, rollback, undo script

const SCRIPT_NS: &str = r#"
namespace: T
procedures:
  Scripted:
    access: public
    parallel: false
    steps:
      make:
        script: |
          let a = call_procedure("Rec Provider/Create", #{ name: data.first });
          let b = call_procedure("Rec Provider/Create", #{ name: data.second });
          #{ made: [a.id, b.id], count: 2 }
        undo: |
          if data.loud == true {
              throw `undo saw ${result.count} ids: ${join(result.made, ", ")}`;
          }
        calls: [Rec Provider/Create]
      last:
        call: Rec Provider/Create
        with: { name: "{{ data.lastName }}" }
  Placed:
    access: public
    steps:
      make:
        script: 'call_procedure("Rec Provider/Create", #{ name: "p" }).id'
        calls: Rec Provider/Create
        output: results/made
"#;

#[tokio::test]
async fn script_step_calls_procedures_and_merges_its_result() {
    let env = env(SCRIPT_NS);
    let r = env
        .run("call: T/Scripted\ndata: { first: x, second: y, lastName: z }")
        .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(env.log(), strings(&["Create(x)", "Create(y)", "Create(z)"]));
    let d = data(&r);
    assert_eq!(d["made"], json!(["id-x", "id-y"]));
    assert_eq!(d["count"], json!(2));
    assert_eq!(d["first"], json!("x"));

    let env = h::env(SCRIPT_NS);
    let r = env.run("call: T/Placed").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(data(&r)["results"]["made"], json!("id-p"));
}

#[tokio::test]
async fn later_failure_rolls_back_nested_calls_and_runs_the_undo_script() {
    let env = env(SCRIPT_NS);
    env.rec.poison("z");
    let r = env
        .run("call: T/Scripted\ndata: { first: x, second: y, lastName: z }")
        .await;
    assert_eq!(r.state, TxnState::RolledBack, "{:?}", r.undo_failures);
    assert_eq!(
        env.log(),
        strings(&[
            "Create(x)",
            "Create(y)",
            "Create(z)",
            "undo Create(y)",
            "undo Create(x)"
        ])
    );
    assert!(env.resources().is_empty());
    assert_eq!(failure(&r).step, "last");
    assert!(r.undo_failures.is_empty(), "{:?}", r.undo_failures);

    // The undo script runs with the step's `result` (observable when it throws).
    let env = h::env(SCRIPT_NS);
    env.rec.poison("z");
    let r = env
        .run("call: T/Scripted\ndata: { first: x, second: y, lastName: z, loud: true }")
        .await;
    assert_eq!(r.state, TxnState::RollbackFailed);
    assert!(env.resources().is_empty(), "{:?}", env.resources());
    assert_eq!(r.undo_failures.len(), 1, "{:?}", r.undo_failures);
    let u = &r.undo_failures[0];
    assert_eq!(u.step, "make");
    assert!(
        u.message.contains("undo saw 2 ids: id-x, id-y"),
        "{}",
        u.message
    );
    // Thrown at line 2 of the undo script, which starts on the line after `undo: |`.
    let line = line_of(SCRIPT_NS, "throw `undo saw");
    assert!(
        u.message.contains(&format!("test.yaml:{line}:")),
        "{}",
        u.message
    );
}

// ---------------------------------------------------------------------------------------
// 5. Only declared procedures may be called

#[tokio::test]
async fn calling_an_undeclared_procedure_fails_the_step() {
    let env = env(r#"
namespace: T
procedures:
  Sneaky:
    access: public
    steps:
      s:
        script: |
          call_procedure("Rec Provider/Create", #{ name: "sneak" })
        calls: [Rec Provider/Noop]
"#);
    let r = env.run("call: T/Sneaky").await;
    assert_eq!(r.state, TxnState::RolledBack);
    let f = failure(&r);
    assert_eq!(f.step, "s");
    assert!(f.message.contains("`calls:`"), "{}", f.message);
    assert!(f.message.contains("Rec Provider/Create"), "{}", f.message);
    assert!(env.log().is_empty(), "{:?}", env.log());
}

// ---------------------------------------------------------------------------------------
// 6. Runaway scripts hit a limit

const RUNAWAY_NS: &str = r#"
namespace: T
procedures:
  Runaway:
    access: public
    parallel: false
    steps:
      first:
        call: Rec Provider/Create
        with: { name: first }
      spin:
        script: |
          let n = 0;
          loop { n += 1; }
"#;

#[tokio::test]
async fn a_runaway_script_fails_with_the_limit_and_its_location() {
    let env = env(RUNAWAY_NS);
    let r = env.run("call: T/Runaway").await;
    assert_eq!(r.state, TxnState::RolledBack);
    let f = failure(&r);
    assert_eq!(f.step, "spin");
    assert!(
        f.message.contains("max_operations") || f.message.contains("wall"),
        "{}",
        f.message
    );
    let line = line_of(RUNAWAY_NS, "loop {");
    assert!(
        f.message.contains(&format!("test.yaml:{line}:")),
        "{}",
        f.message
    );
    assert_eq!(env.log(), strings(&["Create(first)", "undo Create(first)"]));
    assert!(env.resources().is_empty());
}

// ---------------------------------------------------------------------------------------
// 7. Syntax errors are compile errors

const BROKEN_NS: &str = r#"
namespace: T
procedures:
  Broken:
    access: public
    steps:
      s:
        script: |
          let a = 1;
          let = 2;
      c:
        call: Rec Provider/Create
        if: "data.x =="
        with: { name: c }
"#;

#[tokio::test]
async fn a_script_syntax_error_is_a_compile_error_with_the_file_line() {
    let env = env(BROKEN_NS);
    let errs = env.compile_errors("call: T/Broken").await;
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 2, "{text:#?}");
    assert!(errs
        .iter()
        .all(|e| matches!(e, CompileError::Invalid { .. })));
    let step_line = line_of(BROKEN_NS, "let = 2;");
    // The error is located on the line of `let = 2;`, and says its location once.
    assert!(
        errs.iter().any(|e| matches!(e,
        CompileError::Invalid { at, .. } if at.line as usize == step_line)),
        "{text:#?}"
    );
    assert!(
        text.iter().all(|t| t.matches("test.yaml:").count() == 1),
        "{text:#?}"
    );
    let if_line = line_of(BROKEN_NS, "if: \"data.x ==\"");
    assert!(
        text.iter()
            .any(|t| t.contains(&format!("test.yaml:{if_line}:"))),
        "{text:#?}"
    );
    assert!(env.log().is_empty());
}

// ---------------------------------------------------------------------------------------
// 8. YAML and XML compile to the same plan

const SAME_YAML: &str = r#"
namespace: Same
procedures:
  Flow:
    access: public
    steps:
      users:
        call: Rec Provider/Create
        forEach:
          - { name: user, path: users/user, filter: "item.enabled == true" }
        if: data.active == true
        with:
          name: { $expr: "lower(user.name)" }
      summary:
        needs: [users]
        script: |
          let made = call_procedure("Rec Provider/Create", #{ name: "summary" });
          #{ summary: made.id }
        undo: "()"
        calls: [Rec Provider/Create]
      report:
        call: Rec Provider/Create
        with:
          name: { $expr: "data.summary + \"-report\"" }
"#;

const SAME_XML: &str = r##"<namespace name="Same">
  <procedure name="Flow" access="public" parallel="1">
    <execute id="users" namespace="Rec Provider" procedure="Create">
      <forEach name="user" path="users/user" filter="item.enabled == true"/>
      <when expr="data.active == true"/>
      <before expr="lower(user.name)" destination="executeData" destinationPath="name" mode="merge"/>
    </execute>
    <script id="summary" needs="users" calls="Rec Provider/Create">
      let made = call_procedure("Rec Provider/Create", #{ name: "summary" });
      #{ summary: made.id }
      <undo>()</undo>
    </script>
    <execute id="report" namespace="Rec Provider" procedure="Create">
      <before expr='data.summary + "-report"' destination="executeData" destinationPath="name" mode="merge"/>
    </execute>
  </procedure>
</namespace>"##;

const SAME_REQ: &str = r#"
call: Same/Flow
data:
  active: true
  users:
    user:
      - { name: Ann, enabled: true }
      - { name: Bob, enabled: false }
"#;

fn kind(n: &PlanNode) -> &'static str {
    match n {
        PlanNode::Execute(e) if e.call.is_some() => "execute",
        PlanNode::Execute(_) => "transform",
        PlanNode::Script(_) => "script",
        PlanNode::Try(_) => "try",
        PlanNode::Select(_) => "select",
    }
}

/// (node ids and kinds, edges) of a plan.
type Shape = (Vec<(String, &'static str)>, Vec<(String, String, Dep)>);

/// The shape of a namespace's `Same/Flow`.
fn shape(namespaces: Vec<Namespace>) -> Shape {
    let env = h::env_ns(namespaces, h::options());
    let program = match env.engine.compile(&h::req(SAME_REQ)) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let Body::Steps(plan) = &program.entry.body else {
        panic!("Same/Flow compiled to a leaf")
    };
    let mut nodes: Vec<(String, &'static str)> = plan
        .steps()
        .map(|n| (n.id().to_string(), kind(n)))
        .collect();
    nodes.sort();
    let mut edges: Vec<(String, String, Dep)> = plan
        .edges()
        .map(|(from, to, why)| (from.to_string(), to.to_string(), why))
        .collect();
    edges.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    (nodes, edges)
}

#[tokio::test]
async fn yaml_and_xml_scripts_compile_to_the_same_plan() {
    let yaml = h::parse(SAME_YAML, "same.yaml", Format::Yaml);
    let xml = h::parse(SAME_XML, "same.xml", Format::Xml);
    let (ynodes, yedges) = shape(yaml.clone());
    let (xnodes, xedges) = shape(xml.clone());
    assert_eq!(ynodes, xnodes);
    assert_eq!(yedges, xedges);
    assert_eq!(
        ynodes,
        vec![
            ("report".to_string(), "execute"),
            ("summary".to_string(), "script"),
            ("users".to_string(), "execute"),
        ]
    );
    assert!(yedges
        .iter()
        .any(|(a, b, _)| a == "users" && b == "summary"));
    assert!(yedges
        .iter()
        .any(|(a, b, _)| a == "summary" && b == "report"));

    // And they run the same way.
    for namespaces in [yaml, xml] {
        let env = h::env_ns(namespaces, h::options());
        let r = env.run(SAME_REQ).await;
        assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
        assert_eq!(
            env.log(),
            strings(&[
                "Create(ann)",
                "Create(summary)",
                "Create(id-summary-report)"
            ])
        );
    }
}

#[test]
fn xml_and_yaml_parse_the_same_script_text() {
    let yaml = parse_namespaces(SAME_YAML, "same.yaml", Format::Yaml).unwrap_or_default();
    let xml = parse_namespaces(SAME_XML, "same.xml", Format::Xml).unwrap_or_default();
    let script = |ns: &[Namespace]| match ns.first().map(|n| &n.procedures[0].steps[1]) {
        Some(provisio_engine::model::Step::Script(s)) => {
            (s.script.source.clone(), s.undo.clone().map(|u| u.source))
        }
        other => panic!("script step expected, got {other:?}"),
    };
    let (ys, yu) = script(&yaml);
    let (xs, xu) = script(&xml);
    // YAML strips the block's indentation; XML keeps the text as written.
    assert_eq!(ys.trim_end(), xs.replace("\n      ", "\n"));
    assert_eq!(yu, xu);
}

#[test]
fn docs_show_the_examples_run_here() {
    let doc = include_str!("../../docs/scripting.md");
    for ex in [IF_NS, UPN_NS, FILTER_NS, SCRIPT_NS] {
        let block = format!("```yaml\n{}```", ex.trim_start_matches('\n'));
        assert!(doc.contains(&block), "not in docs/scripting.md:\n{ex}");
    }
}
