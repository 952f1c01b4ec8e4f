//! Compile + execute through the public API: YAML namespaces and requests run against the
//! in-process `RecordingProvider`, checking resources, the call/undo log, errors and plans.

use provisio_engine::model::{Format, Namespace, Step};
use provisio_engine::plan::{Body, Dep};
use provisio_engine::provider::Preview;
use provisio_engine::request::parse_namespaces;
use provisio_engine::{CompileError, Limits};
use provisio_engine::{EngineOptions, Journal, JournalError, RunError, TxnResult, TxnState};
use serde_json::json;
use std::time::Duration;

mod support;
use support as h;

use h::{data, env, env_with, failure, names_of, strings};

fn sources(r: &TxnResult) -> Vec<(String, String, String)> {
    failure(r)
        .sources
        .iter()
        .map(|s| (s.namespace.clone(), s.procedure.clone(), s.step.clone()))
        .collect()
}

fn src(ns: &str, p: &str, step: &str) -> (String, String, String) {
    (ns.to_string(), p.to_string(), step.to_string())
}

// ---------------------------------------------------------------------------------------
// 1–2. Sequential success and failure

const SEQ: &str = r#"
namespace: T
procedures:
  Seq:
    access: public
    parallel: false
    steps:
      a:
        call: Rec Provider/Create
        with: { name: a }
        output: { aId: "{{ executeData.id }}" }
      b:
        call: Rec Provider/Create
        with: { name: "{{ data.bname }}" }
        output: { bId: "{{ executeData.id }}" }
      c:
        call: Rec Provider/Create
        with: { name: "{{ data.cname }}" }
      d:
        call: Rec Provider/Create
        with: { name: d }
"#;

#[tokio::test]
async fn sequential_success_maps_outputs_into_data() {
    let env = env(SEQ);
    let r = env.run("call: T/Seq\ndata: { bname: b, cname: c }").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(
        env.log(),
        strings(&["Create(a)", "Create(b)", "Create(c)", "Create(d)"])
    );
    assert_eq!(env.resources(), strings(&["a", "b", "c", "d"]));
    let d = data(&r);
    assert_eq!(d["aId"], json!("id-a"));
    assert_eq!(d["bId"], json!("id-b"));
    assert_eq!(d["bname"], json!("b"));
    assert_eq!(r.calls, 4);
    assert_eq!(r.undone, 0);
    assert!(r.failure.is_none() && r.undo_failures.is_empty());
}

#[tokio::test]
async fn failure_midway_undoes_everything_in_reverse_order() {
    let env = env(SEQ);
    env.rec.poison("c");
    let r = env.run("call: T/Seq\ndata: { bname: b, cname: c }").await;
    assert_eq!(r.state, TxnState::RolledBack);
    assert_eq!(
        env.log(),
        strings(&[
            "Create(a)",
            "Create(b)",
            "Create(c)",
            "undo Create(b)",
            "undo Create(a)"
        ])
    );
    assert!(env.resources().is_empty());
    let f = failure(&r);
    assert_eq!(f.step, "c");
    assert_eq!(f.code, 0x8210_1391);
    assert_eq!(f.message, "cannot create c");
    assert_eq!(
        sources(&r),
        vec![src("Rec Provider", "Create", "c"), src("T", "Seq", "")]
    );
    assert!(r.data.is_none());
    assert_eq!((r.calls, r.undone), (3, 2));
}

// ---------------------------------------------------------------------------------------
// 3. Parallel branches

#[tokio::test]
async fn parallel_failure_undoes_other_branch_and_stops_dependents() {
    let env = env(r#"
namespace: T
procedures:
  Par:
    access: public
    steps:
      a1: { call: Rec Provider/Create, with: { name: a1 } }
      a2: { call: Rec Provider/Create, with: { name: a2 }, needs: a1 }
      b1: { call: Rec Provider/Create, with: { name: b1 } }
      b2: { call: Rec Provider/Create, with: { name: b2 }, needs: b1 }
      after: { call: Rec Provider/Create, with: { name: after }, needs: [b2] }
"#);
    env.rec.poison("b2");
    let r = env.run("call: T/Par").await;
    assert_eq!(r.state, TxnState::RolledBack);
    let log = env.log();
    assert!(log.contains(&"Create(a1)".to_string()), "{log:?}");
    assert!(log.contains(&"Create(b1)".to_string()), "{log:?}");
    assert!(
        !log.iter().any(|l| l.contains("after")),
        "a step after the failed one started: {log:?}"
    );
    // Every successful create is undone, in exact reverse order of completion.
    let mut created: Vec<&str> = names_of(&log, "Create(")
        .into_iter()
        .filter(|n| *n != "b2")
        .collect();
    assert!(created.contains(&"a1") && created.contains(&"b1"));
    created.reverse();
    assert_eq!(names_of(&log, "undo Create("), created, "{log:?}");
    assert!(env.resources().is_empty());
    assert_eq!(failure(&r).step, "b2");
}

// ---------------------------------------------------------------------------------------
// 4. forEach

const EACH: &str = r#"
namespace: T
procedures:
  Each:
    access: public
    steps:
      make:
        call: Rec Provider/Create
        forEach: [{ name: user, path: user }]
        with: { name: "{{ user.name }}" }
  Nested:
    access: public
    steps:
      make:
        call: Rec Provider/Create
        forEach:
          - { name: org, path: org }
          - { name: u, root: org, path: user }
        with: { name: "{{ org.name }}-{{ u.name }}" }
  Skip:
    access: public
    steps:
      make:
        call: Rec Provider/Create
        forEach: [{ name: u, path: missing, ifNull: skip }]
        with: { name: skipped }
  FailNull:
    access: public
    steps:
      make:
        call: Rec Provider/Create
        forEach: [{ name: u, path: missing }]
        with: { name: failed }
  Admins:
    access: public
    steps:
      make:
        call: Rec Provider/Create
        forEach: [{ name: user, path: user }]
        when: "{{ user.admin }}"
        with: { name: "{{ user.name }}" }
  Ignore:
    access: public
    steps:
      make:
        call: Rec Provider/Create
        forEach: [{ name: u, path: missing, ifNull: ignore }]
        with: { name: ignored }
"#;

#[tokio::test]
async fn for_each_runs_once_per_element() {
    let env = env(EACH);
    let r = env
        .run("call: T/Each\ndata: { user: [{name: a}, {name: b}] }")
        .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(env.log(), strings(&["Create(a)", "Create(b)"]));
    assert_eq!(env.resources(), strings(&["a", "b"]));
}

#[tokio::test]
async fn for_each_failure_undoes_earlier_iterations() {
    let env = env(EACH);
    env.rec.poison("c");
    let r = env
        .run("call: T/Each\ndata: { user: [{name: a}, {name: b}, {name: c}, {name: d}] }")
        .await;
    assert_eq!(r.state, TxnState::RolledBack);
    assert_eq!(
        env.log(),
        strings(&[
            "Create(a)",
            "Create(b)",
            "Create(c)",
            "undo Create(b)",
            "undo Create(a)"
        ])
    );
    assert_eq!(failure(&r).step, "make[3]");
    assert!(env.resources().is_empty());
}

#[tokio::test]
async fn for_each_if_null_skip_fail_ignore() {
    let env = env(EACH);
    let r = env.run("call: T/Skip\ndata: { other: 1 }").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert!(env.log().is_empty());

    let r = env.run("call: T/FailNull\ndata: { other: 1 }").await;
    assert_eq!(r.state, TxnState::RolledBack);
    let f = failure(&r);
    assert!(
        f.message.contains("forEach `u`") && f.message.contains("data/missing selects nothing"),
        "{}",
        f.message
    );
    assert_eq!(f.step, "make");
    assert!(env.log().is_empty());

    let r = env.run("call: T/Ignore\ndata: { other: 1 }").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(env.log(), strings(&["Create(ignored)"]));
}

#[tokio::test]
async fn when_is_evaluated_per_for_each_iteration() {
    let env = env(EACH);
    let r = env
        .run(
            "call: T/Admins\ndata: { user: [{name: a, admin: 1}, {name: b}, {name: c, admin: 1}] }",
        )
        .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(env.log(), strings(&["Create(a)", "Create(c)"]));
}

#[tokio::test]
async fn nested_for_each_is_outer_times_inner() {
    let env = env(EACH);
    let r = env
        .run(
            "call: T/Nested\ndata:\n  org:\n    - { name: o1, user: [{name: a}, {name: b}] }\n    - { name: o2, user: [{name: c}] }\n",
        )
        .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(
        env.log(),
        strings(&["Create(o1-a)", "Create(o1-b)", "Create(o2-c)"])
    );
}

// ---------------------------------------------------------------------------------------
// 5. when / unless / select / repeat

const COND: &str = r#"
namespace: T
procedures:
  Cond:
    access: public
    parallel: false
    steps:
      plan:
        select: { source: data, path: plan, cases: { gold: premium, silver: basic }, default: basic, ifNull: none }
      premium:
        call: Rec Provider/Create
        with: { name: premium }
        when: { select: plan, case: premium }
      basic:
        call: Rec Provider/Create
        with: { name: basic }
        when: [{ select: plan, case: basic }]
      flagged:
        call: Rec Provider/Create
        with: { name: flagged }
        when: "data/flag"
      unflagged:
        call: Rec Provider/Create
        with: { name: unflagged }
        unless: "{{ data.flag }}"
      again:
        call: Rec Provider/Get
        with: { name: r }
        repeat: { source: data, path: count, ifNull: skip }
"#;

#[tokio::test]
async fn when_unless_select_and_repeat() {
    let env = env(COND);
    let r = env
        .run("call: T/Cond\ndata: { plan: gold, flag: yes, count: 3 }")
        .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(
        env.log(),
        strings(&[
            "Create(premium)",
            "Create(flagged)",
            "Get(r)",
            "Get(r)",
            "Get(r)"
        ])
    );

    let env = h::env(COND);
    let r = env
        .run("call: T/Cond\ndata: { plan: silver, count: 0 }")
        .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(env.log(), strings(&["Create(basic)", "Create(unflagged)"]));

    // No plan at all: the ifNull case `none` matches no step; no count: repeat skipped.
    let env = h::env(COND);
    let r = env.run("call: T/Cond\ndata: { flag: 1 }").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(env.log(), strings(&["Create(flagged)"]));

    // An unknown plan falls to the default case.
    let env = h::env(COND);
    let r = env
        .run("call: T/Cond\ndata: { plan: bronze, flag: 1, count: 1 }")
        .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(
        env.log(),
        strings(&["Create(basic)", "Create(flagged)", "Get(r)"])
    );
}

#[tokio::test]
async fn select_orders_its_when_steps_in_a_parallel_procedure() {
    // The same procedure without `parallel: false`: `when select` adds the ordering edge.
    let env = env(&COND.replace("    parallel: false\n", ""));
    let program = match env
        .engine
        .compile(&h::req("call: T/Cond\ndata: { plan: gold }"))
    {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let Body::Steps(plan) = &program.entry.body else {
        panic!("T/Cond compiled to a leaf")
    };
    let mut select_edges: Vec<String> = plan
        .edges()
        .filter(|(_, _, why)| *why == Dep::Select)
        .map(|(from, to, _)| format!("{from}->{to}"))
        .collect();
    select_edges.sort();
    assert_eq!(select_edges, strings(&["plan->basic", "plan->premium"]));
    let r = env
        .run("call: T/Cond\ndata: { plan: gold, flag: yes, count: 2 }")
        .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let mut log = env.log();
    log.sort();
    assert_eq!(
        log,
        strings(&["Create(flagged)", "Create(premium)", "Get(r)", "Get(r)"])
    );
}

// ---------------------------------------------------------------------------------------
// 6. try / catch

const TRY: &str = r#"
namespace: T
procedures:
  Guarded:
    access: public
    parallel: false
    steps:
      t:
        try:
          a: { call: Rec Provider/Create, with: { name: a } }
          bad: { call: Rec Provider/Fail, with: { message: boom }, needs: a }
        catch:
          report:
            call: Rec Provider/Create
            with: { name: caught }
            before:
              - { source: context, sourcePath: "errorContext/@description", destination: executeData, destinationPath: why, mode: merge }
            output: { why: "{{ executeData.why }}" }
      later: { call: Rec Provider/Create, with: { name: later } }
  Nested:
    access: public
    parallel: false
    steps:
      outer:
        try:
          inner:
            try:
              a: { call: Rec Provider/Create, with: { name: a } }
              bad: { call: Rec Provider/Fail, with: { message: first }, needs: a }
            catch:
              rethrow: { call: Rec Provider/Fail, with: { message: second } }
        catch:
          handled:
            call: Rec Provider/Create
            with: { name: "handled-{{ context.errorContext/@description }}" }
  BadCatch:
    access: public
    parallel: false
    steps:
      t:
        try:
          a: { call: Rec Provider/Create, with: { name: a } }
          bad: { call: Rec Provider/Fail, with: { message: boom }, needs: a }
        catch:
          c1: { call: Rec Provider/Create, with: { name: c1 } }
          c2: { call: Rec Provider/Fail, with: { message: catch failed too }, needs: c1 }
      later: { call: Rec Provider/Create, with: { name: later } }
"#;

#[tokio::test]
async fn caught_error_runs_catch_keeps_try_work_and_commits() {
    let env = env(TRY);
    let r = env.run("call: T/Guarded").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(
        env.log(),
        strings(&["Create(a)", "Fail(boom)", "Create(caught)", "Create(later)"])
    );
    assert_eq!(env.resources(), strings(&["a", "caught", "later"]));
    assert_eq!(data(&r)["why"], json!("boom"));
    assert_eq!(r.undone, 0);
}

#[tokio::test]
async fn a_later_failure_still_undoes_the_kept_try_work() {
    let env = env(TRY);
    env.rec.poison("later");
    let r = env.run("call: T/Guarded").await;
    assert_eq!(r.state, TxnState::RolledBack);
    assert_eq!(
        env.log(),
        strings(&[
            "Create(a)",
            "Fail(boom)",
            "Create(caught)",
            "Create(later)",
            "undo Create(caught)",
            "undo Create(a)"
        ])
    );
    assert_eq!(failure(&r).step, "later");
}

#[tokio::test]
async fn a_failing_inner_catch_moves_the_error_to_the_outer_try() {
    let env = env(TRY);
    let r = env.run("call: T/Nested").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(
        env.log(),
        strings(&[
            "Create(a)",
            "Fail(first)",
            "Fail(second)",
            "Create(handled-second)"
        ])
    );
    assert_eq!(env.resources(), strings(&["a", "handled-second"]));
}

#[tokio::test]
async fn failing_catch_rolls_back_everything() {
    let env = env(TRY);
    let r = env.run("call: T/BadCatch").await;
    assert_eq!(r.state, TxnState::RolledBack);
    assert_eq!(
        env.log(),
        strings(&[
            "Create(a)",
            "Fail(boom)",
            "Create(c1)",
            "Fail(catch failed too)",
            "undo Create(c1)",
            "undo Create(a)"
        ])
    );
    let f = failure(&r);
    assert_eq!(f.message, "catch failed too");
    assert_eq!(f.step, "t/catch/c2");
    assert!(env.resources().is_empty());
}

// ---------------------------------------------------------------------------------------
// 7. Nested calls across namespaces

const NESTED: &str = r#"
- namespace: Inner
  procedures:
    Make:
      steps:
        c:
          call: Rec Provider/Create
          with: { name: "{{ data.name }}" }
          output: { id: "{{ executeData.id }}" }
    Boom:
      parallel: false
      steps:
        c: { call: Rec Provider/Create, with: { name: "{{ data.name }}" } }
        f: { call: Rec Provider/Fail, with: { message: deep failure } }
- namespace: Mid
  procedures:
    Make:
      steps:
        m:
          call: Inner/Make
          with: { name: "{{ data.name }}" }
          output: { made: "{{ executeData.id }}" }
    Boom:
      parallel: false
      steps:
        m: { call: Inner/Make, with: { name: "{{ data.name }}-1" } }
        b: { call: Inner/Boom, with: { name: "{{ data.name }}-2" } }
- namespace: Outer
  procedures:
    Top:
      access: public
      steps:
        s1:
          call: Mid/Make
          with: { name: "{{ data.n }}" }
          output: { made: "{{ executeData.made }}" }
    TopBoom:
      access: public
      parallel: false
      steps:
        s1: { call: Mid/Make, with: { name: x } }
        s2: { call: Mid/Boom, with: { name: y } }
"#;

#[tokio::test]
async fn nested_calls_pass_execute_data_down_and_back() {
    let env = env(NESTED);
    let r = env.run("call: Outer/Top\ndata: { n: zed }").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(env.log(), strings(&["Create(zed)"]));
    let d = data(&r);
    assert_eq!(d["made"], json!("id-zed"));
    assert_eq!(d["n"], json!("zed"));
    // The callee's data does not leak into the caller's data.
    assert!(d.get("name").is_none(), "{d}");
}

#[tokio::test]
async fn deep_failure_reports_error_stack_and_undoes_nested_steps() {
    let env = env(NESTED);
    let r = env.run("call: Outer/TopBoom").await;
    assert_eq!(r.state, TxnState::RolledBack);
    assert_eq!(
        env.log(),
        strings(&[
            "Create(x)",
            "Create(y-1)",
            "Create(y-2)",
            "Fail(deep failure)",
            "undo Create(y-2)",
            "undo Create(y-1)",
            "undo Create(x)"
        ])
    );
    let f = failure(&r);
    assert_eq!(f.step, "s2/b/f");
    assert_eq!(f.message, "deep failure");
    assert_eq!(
        sources(&r),
        vec![
            src("Rec Provider", "Fail", "s2/b/f"),
            src("Inner", "Boom", "s2/b"),
            src("Mid", "Boom", "s2"),
            src("Outer", "TopBoom", ""),
        ]
    );
    assert!(env.resources().is_empty());
}

// ---------------------------------------------------------------------------------------
// 8. Compile errors

const COMPILE: &str = r#"
namespace: C
procedures:
  Secret:
    access: private
    steps:
      a: { call: Rec Provider/Noop }
  Zone:
    access: public
    inputs: { zone: string, note: { type: string, required: false } }
    steps:
      a: { call: Rec Provider/Noop }
  BadNeed:
    access: public
    steps:
      first: { call: Rec Provider/Noop }
      second: { call: Rec Provider/Noop, needs: frist }
  Cycle:
    access: public
    steps:
      a: { call: Rec Provider/Noop, needs: c }
      b: { call: Rec Provider/Noop, needs: a }
      c: { call: Rec Provider/Noop, needs: b }
      d: { call: Rec Provider/Noop }
  Self:
    access: public
    steps:
      again: { call: C/Self }
  Ping:
    access: public
    steps:
      p: { call: C/Pong }
  Pong:
    steps:
      p: { call: C/Ping }
  L1:
    access: public
    steps: { s: { call: C/L2 } }
  L2:
    steps: { s: { call: C/L3 } }
  L3:
    steps: { s: { call: Rec Provider/Noop } }
  K1:
    access: public
    steps: { s: { call: C/L3 } }
  Race:
    access: public
    steps:
      a: { call: Rec Provider/Create, with: { name: a }, output: { x: "{{ executeData.id }}" } }
      b: { call: Rec Provider/Create, with: { name: b }, output: { x: "{{ executeData.id }}" } }
  Flow:
    access: public
    steps:
      a: { call: Rec Provider/Create, with: { name: a }, output: { x: "{{ executeData.id }}" } }
      b: { call: Rec Provider/Create, with: { name: "from-{{ data.x }}" } }
      c: { call: Rec Provider/Create, with: { name: c } }
"#;

fn one(errors: Vec<CompileError>) -> CompileError {
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors.into_iter().next().unwrap_or_else(|| unreachable!())
}

#[tokio::test]
async fn private_procedures_are_refused_to_simple_requests() {
    let env = env(COMPILE);
    match one(env.compile_errors("call: C/Secret").await) {
        e @ CompileError::Private { .. } => {
            let CompileError::Private {
                namespace,
                procedure,
                public,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((namespace.as_str(), procedure.as_str()), ("C", "Secret"));
            assert!(public.contains(&"Zone".to_string()));
            assert!(e.to_string().contains("is private"), "{e}");
        }
        other => panic!("expected Private, got {other:?}"),
    }
    // Provider leaves are private too.
    assert!(matches!(
        one(env
            .compile_errors("call: Rec Provider/Create\ndata: { name: a }")
            .await),
        CompileError::Private { .. }
    ));
    assert!(env.log().is_empty());
}

#[tokio::test]
async fn unknown_names_suggest_the_closest() {
    let env = env(COMPILE);
    let e = one(env.compile_errors("call: Rec Provder/Create").await);
    match &e {
        CompileError::UnknownNamespace {
            name, suggestion, ..
        } => {
            assert_eq!(name, "Rec Provder");
            assert_eq!(suggestion.as_deref(), Some("Rec Provider"));
        }
        other => panic!("expected UnknownNamespace, got {other:?}"),
    }
    assert!(
        e.to_string().contains("did you mean `Rec Provider`?"),
        "{e}"
    );
    let e = one(env.compile_errors("call: C/Zonee\ndata: { zone: z }").await);
    match &e {
        CompileError::UnknownProcedure {
            namespace,
            name,
            suggestion,
            ..
        } => {
            assert_eq!((namespace.as_str(), name.as_str()), ("C", "Zonee"));
            assert_eq!(suggestion.as_deref(), Some("Zone"));
        }
        other => panic!("expected UnknownProcedure, got {other:?}"),
    }
    assert!(e.to_string().contains("did you mean `Zone`?"), "{e}");
}

/// Transactions of the same procedure share one compiled program, and the request's own
/// checks still run every time.
#[tokio::test]
async fn a_procedure_compiles_once_and_its_checks_run_every_time() {
    let env = env(COMPILE);
    let ok = h::req("call: C/Zone\ndata: { zone: z }");
    let first = env.engine.program(&ok).unwrap();
    let r = env.run("call: C/Zone\ndata: { zone: y }").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert!(std::sync::Arc::ptr_eq(
        &first,
        &env.engine.program(&ok).unwrap()
    ));
    // The cached target still needs its inputs, and a private one is still refused.
    match one(env.compile_errors("call: C/Zone\ndata: { note: x }").await) {
        CompileError::MissingInput { input, .. } => assert_eq!(input, "zone"),
        other => panic!("expected MissingInput, got {other:?}"),
    }
    assert!(matches!(
        one(env.compile_errors("call: C/Secret").await),
        CompileError::Private { .. }
    ));
}

#[tokio::test]
async fn missing_required_input_is_a_compile_error() {
    let env = env(COMPILE);
    match one(env.compile_errors("call: C/Zone\ndata: { note: x }").await) {
        CompileError::MissingInput {
            procedure, input, ..
        } => {
            assert_eq!(procedure, "C/Zone");
            assert_eq!(input, "zone");
        }
        other => panic!("expected MissingInput, got {other:?}"),
    }
    // Supplying it (the optional one may stay absent) runs.
    let r = env.run("call: C/Zone\ndata: { zone: z }").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(r.calls, 1);
}

#[tokio::test]
async fn unknown_needs_and_cycles() {
    let env = env(COMPILE);
    match one(env.compile_errors("call: C/BadNeed").await) {
        CompileError::UnknownNeed {
            step,
            missing,
            suggestion,
            procedure,
            ..
        } => {
            assert_eq!(procedure, "C/BadNeed");
            assert_eq!(step, "second");
            assert_eq!(missing, "frist");
            assert_eq!(suggestion.as_deref(), Some("first"));
        }
        other => panic!("expected UnknownNeed, got {other:?}"),
    }
    let e = one(env.compile_errors("call: C/Cycle").await);
    match &e {
        CompileError::Cycle {
            procedure, steps, ..
        } => {
            assert_eq!(procedure, "C/Cycle");
            assert_eq!(steps.len(), 4, "{steps:?}");
            assert_eq!(steps.first(), steps.last());
            // Each consecutive pair follows a dependency edge: a -> b -> c -> a.
            let next = |s: &str| match s {
                "a" => "b",
                "b" => "c",
                "c" => "a",
                other => panic!("step {other} is not in the cycle"),
            };
            for w in steps.windows(2) {
                assert_eq!(next(&w[0]), w[1], "{steps:?}");
            }
        }
        other => panic!("expected Cycle, got {other:?}"),
    }
    assert!(e.to_string().contains(" -> "), "{e}");
}

#[tokio::test]
async fn recursion_and_call_depth() {
    let env = env(COMPILE);
    match one(env.compile_errors("call: C/Self").await) {
        CompileError::Recursion { chain, .. } => {
            assert_eq!(chain, strings(&["C/Self", "C/Self"]))
        }
        other => panic!("expected Recursion, got {other:?}"),
    }
    match one(env.compile_errors("call: C/Ping").await) {
        CompileError::Recursion { chain, .. } => {
            assert_eq!(chain, strings(&["C/Ping", "C/Pong", "C/Ping"]))
        }
        other => panic!("expected Recursion, got {other:?}"),
    }
    let opts = EngineOptions {
        limits: Limits {
            max_call_depth: 3,
            ..Limits::default()
        },
        ..h::options()
    };
    let env = env_with(COMPILE, opts);
    match one(env.compile_errors("call: C/L1").await) {
        CompileError::TooDeep {
            chain,
            limit,
            depth,
            ..
        } => {
            assert_eq!(limit, 3);
            assert_eq!(depth, 4);
            assert_eq!(
                chain,
                strings(&["C/L1", "C/L2", "C/L3", "Rec Provider/Noop"])
            );
        }
        other => panic!("expected TooDeep, got {other:?}"),
    }
    // A chain within the limit runs.
    let r = env.run("call: C/K1").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(r.calls, 1);
}

#[tokio::test]
async fn parallel_writes_to_the_same_path_are_a_race() {
    let env = env(COMPILE);
    match one(env.compile_errors("call: C/Race").await) {
        CompileError::Race {
            procedure,
            first,
            second,
            path,
            first_access,
            second_access,
            ..
        } => {
            assert_eq!(procedure, "C/Race");
            assert_eq!((first.as_str(), second.as_str()), ("a", "b"));
            assert_eq!((first_access, second_access), ("writes", "writes"));
            assert_eq!(path, "x");
        }
        other => panic!("expected Race, got {other:?}"),
    }
    assert!(env.log().is_empty());
}

#[tokio::test]
async fn data_flow_orders_a_reader_after_the_writer() {
    let env = env(COMPILE);
    let program = match env.engine.compile(&h::req("call: C/Flow")) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let Body::Steps(plan) = &program.entry.body else {
        panic!("C/Flow compiled to a leaf")
    };
    let edges: Vec<(String, String, Dep)> = plan
        .edges()
        .map(|(from, to, why)| (from.to_string(), to.to_string(), why))
        .collect();
    assert_eq!(
        edges,
        vec![("a".to_string(), "b".to_string(), Dep::DataFlow)]
    );
    let r = env.run("call: C/Flow").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let log = env.log();
    let pos = |s: &str| log.iter().position(|l| l == s);
    assert!(pos("Create(a)") < pos("Create(from-id-a)"), "{log:?}");
    assert!(pos("Create(c)").is_some(), "{log:?}");
}

// ---------------------------------------------------------------------------------------
// 9. Many steps

fn noop_procedure(n: usize) -> String {
    let mut s = String::from(
        "namespace: Big\nprocedures:\n  Many:\n    access: public\n    parallel: false\n    steps:\n",
    );
    for i in 0..n {
        s.push_str(&format!("      s{i}: {{ call: Rec Provider/Noop }}\n"));
    }
    s
}

/// `noop_procedure(1)` parsed, its one step cloned `n` times (ids `s0`…): builds big
/// procedures without parsing them (parsing is covered by `ten_thousand_steps_parse_from_yaml`).
fn many_steps(n: usize) -> Vec<Namespace> {
    let mut namespaces = match parse_namespaces(&noop_procedure(1), "big.yaml", Format::Yaml) {
        Ok(n) => n,
        Err(e) => panic!("{e:#?}"),
    };
    let p = &mut namespaces[0].procedures[0];
    let template = p.steps[0].clone();
    p.steps = (0..n)
        .map(|i| {
            let mut s = template.clone();
            if let Step::Execute(e) = &mut s {
                e.id = format!("s{i}");
            }
            s
        })
        .collect();
    namespaces
}

#[tokio::test]
async fn ten_thousand_sequential_steps_run() {
    let env = h::env_ns(many_steps(10_000), h::options());
    let started = std::time::Instant::now();
    let r = env.run("call: Big/Many\ndata: { keep: me }").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(r.calls, 10_000);
    assert_eq!(data(&r)["keep"], json!("me"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn ten_thousand_steps_parse_from_yaml() {
    let started = std::time::Instant::now();
    let env = env(&noop_procedure(10_000));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let r = env.run("call: Big/Many").await;
    assert_eq!((r.state, r.calls), (TxnState::Committed, 10_000));
}

#[tokio::test]
async fn step_limit_rejects_big_procedures() {
    let opts = EngineOptions {
        limits: Limits {
            max_steps: 100,
            ..Limits::default()
        },
        ..h::options()
    };
    let env = env_with(&noop_procedure(101), opts.clone());
    match one(env.compile_errors("call: Big/Many").await) {
        CompileError::TooManySteps {
            procedure,
            count,
            limit,
            ..
        } => {
            assert_eq!(procedure, "Big/Many");
            assert_eq!((count, limit), (101, 100));
        }
        other => panic!("expected TooManySteps, got {other:?}"),
    }
    let env = env_with(&noop_procedure(100), opts);
    let r = env.run("call: Big/Many").await;
    assert_eq!((r.state, r.calls), (TxnState::Committed, 100));
}

// ---------------------------------------------------------------------------------------
// 10. Retries, panics, timeouts, failing undos

const FAULTS: &str = r#"
namespace: F
procedures:
  Flaky:
    access: public
    parallel: false
    steps:
      a: { call: Rec Provider/Create, with: { name: a } }
      f: { call: Rec Provider/Flaky, with: { name: f } }
  Panic:
    access: public
    parallel: false
    steps:
      a: { call: Rec Provider/Create, with: { name: a } }
      p: { call: Rec Provider/Panic }
  Hang:
    access: public
    parallel: false
    steps:
      a: { call: Rec Provider/Create, with: { name: a } }
      h: { call: Rec Provider/Hang }
  UndoFails:
    access: public
    parallel: false
    steps:
      a: { call: Rec Provider/Create, with: { name: a } }
      b: { call: Rec Provider/Create, with: { name: b } }
      c: { call: Rec Provider/Create, with: { name: c } }
      x: { call: Rec Provider/Fail }
  One:
    access: public
    steps:
      a: { call: Rec Provider/Create, with: { name: "{{ data.name }}" } }
  OneThenFail:
    access: public
    parallel: false
    steps:
      a: { call: Rec Provider/Create, with: { name: a } }
      x: { call: Rec Provider/Fail }
"#;

#[tokio::test]
async fn transient_errors_are_retried() {
    let env = env(FAULTS);
    env.rec.flaky("f", 2);
    let r = env.run("call: F/Flaky").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(
        env.log(),
        strings(&["Create(a)", "Flaky(f)", "Flaky(f)", "Flaky(f)"])
    );
    assert_eq!(env.resources(), strings(&["a", "f"]));
    assert_eq!(r.calls, 4);

    let env = h::env(FAULTS);
    env.rec.flaky("f", 3);
    let r = env.run("call: F/Flaky").await;
    assert_eq!(r.state, TxnState::RolledBack);
    assert_eq!(
        env.log(),
        strings(&[
            "Create(a)",
            "Flaky(f)",
            "Flaky(f)",
            "Flaky(f)",
            "undo Create(a)"
        ])
    );
    assert_eq!(failure(&r).message, "f is busy");
    assert!(env.resources().is_empty());
}

#[tokio::test]
async fn provider_panic_fails_the_step_and_the_engine_keeps_working() {
    let env = env(FAULTS);
    let r = env.run("call: F/Panic").await;
    assert_eq!(r.state, TxnState::RolledBack);
    let f = failure(&r);
    assert_eq!(f.step, "p");
    assert!(
        f.message.contains("panicked") && f.message.contains("test provider asked to panic"),
        "{}",
        f.message
    );
    assert_eq!(env.log(), strings(&["Create(a)", "undo Create(a)"]));
    let r = env.run("call: F/One\ndata: { name: z }").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(env.resources(), strings(&["z"]));
}

#[tokio::test]
async fn hanging_provider_times_out() {
    let opts = EngineOptions {
        step_timeout: Duration::from_millis(100),
        ..h::options()
    };
    let env = env_with(FAULTS, opts);
    let started = std::time::Instant::now();
    let r = env.run("call: F/Hang").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.state, TxnState::RolledBack);
    let f = failure(&r);
    assert_eq!(f.step, "h");
    assert!(f.message.contains("did not answer within"), "{}", f.message);
    assert!(f.message.contains("100ms"), "{}", f.message);
    assert_eq!(env.log(), strings(&["Create(a)", "undo Create(a)"]));
}

#[tokio::test]
async fn an_applied_call_whose_answer_was_lost_is_settled_not_repeated() {
    let env = env(FAULTS);
    env.rec.lose_answer_once("a");
    let r = env.run("call: F/One\ndata: { name: a }").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    // Applied once, asked once, not applied again (a retry would fail "already exists").
    assert_eq!(env.log(), strings(&["Create(a)"]));
    assert_eq!(env.resources(), strings(&["a"]));
    assert_eq!(env.rec.state.lock().expect("state").recovers, 1);
}

#[tokio::test]
async fn an_applied_call_that_timed_out_is_settled_not_repeated() {
    let opts = EngineOptions {
        step_timeout: Duration::from_millis(200),
        ..h::options()
    };
    let env = env_with(FAULTS, opts);
    env.rec.slow_answer_once("a", Duration::from_secs(30));
    let started = std::time::Instant::now();
    let r = env.run("call: F/One\ndata: { name: a }").await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(env.log(), strings(&["Create(a)"]));
    assert_eq!(env.resources(), strings(&["a"]));
}

#[tokio::test]
async fn an_in_doubt_call_settled_as_applied_is_undone_by_the_rollback() {
    let env = env(FAULTS);
    env.rec.lose_answer_once("a");
    let r = env.run("call: F/OneThenFail").await;
    assert_eq!(r.state, TxnState::RolledBack, "{:?}", r.undo_failures);
    assert_eq!(r.undone, 1);
    assert_eq!(
        env.log(),
        strings(&["Create(a)", "Fail(asked to fail)", "undo Create(a)"])
    );
    assert!(env.resources().is_empty());
}

#[tokio::test]
async fn an_in_doubt_call_nobody_can_settle_goes_to_the_operator() {
    let env = env(FAULTS);
    env.rec.lose_answer_once("a");
    env.rec.cannot_tell();
    let r = env.run("call: F/One\ndata: { name: a }").await;
    assert_eq!(r.state, TxnState::RollbackFailed);
    let f = failure(&r);
    assert_eq!(f.step, "a");
    assert!(f.message.contains("in doubt"), "{}", f.message);
    assert_eq!(r.undo_failures.len(), 1, "{:?}", r.undo_failures);
    assert_eq!(r.undo_failures[0].step, "a");
    assert!(
        r.undo_failures[0].message.contains("check by hand"),
        "{}",
        r.undo_failures[0].message
    );
    // Never guessed: not retried, not undone.
    assert_eq!(env.log(), strings(&["Create(a)"]));
}

#[tokio::test]
async fn failing_undo_is_reported_and_other_undos_still_run() {
    let env = env(FAULTS);
    env.rec.poison_undo("b");
    let r = env.run("call: F/UndoFails").await;
    assert_eq!(r.state, TxnState::RollbackFailed);
    assert_eq!(r.undo_failures.len(), 1, "{:?}", r.undo_failures);
    let u = &r.undo_failures[0];
    assert_eq!(u.step, "b");
    assert_eq!(u.target, "Rec Provider/Create");
    assert!(u.message.contains("cannot undo b"), "{}", u.message);
    assert_eq!(r.undone, 2);
    let log = env.log();
    assert_eq!(
        log,
        strings(&[
            "Create(a)",
            "Create(b)",
            "Create(c)",
            "Fail(asked to fail)",
            "undo Create(c)",
            // A permanent error is not retried (transient ones are: tests/retry.rs).
            "undo Create(b)",
            "undo Create(a)"
        ])
    );
    assert_eq!(env.resources(), strings(&["b"]));
}

// ---------------------------------------------------------------------------------------
// 11. Two-phase

const TWO_PHASE: &str = r#"
namespace: P
procedures:
  Stage:
    access: public
    type: two-phase
    parallel: false
    steps:
      a: { call: Rec Provider/Stage, with: { name: a } }
      n: { call: Rec Provider/Create, with: { name: plain } }
      b: { call: Rec Provider/Stage, with: { name: b } }
"#;

#[tokio::test]
async fn two_phase_prepares_all_then_commits_all_in_order() {
    let env = env(TWO_PHASE);
    let r = env.run("call: P/Stage").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(
        env.log(),
        strings(&[
            "Stage(a)",
            "Create(plain)",
            "Stage(b)",
            "prepare Stage(a)",
            "prepare Stage(b)",
            "commit Stage(a)",
            "commit Stage(b)"
        ])
    );
    assert!(lock_staged(&env).is_empty());
    assert_eq!(env.resources(), strings(&["a", "b", "plain"]));
}

fn lock_staged(env: &h::Env) -> Vec<String> {
    let st = env.rec.state.lock().unwrap_or_else(|e| e.into_inner());
    st.staged.iter().cloned().collect()
}

#[tokio::test]
async fn poisoned_prepare_rolls_everything_back() {
    let env = env(TWO_PHASE);
    env.rec.poison_prepare("b");
    let r = env.run("call: P/Stage").await;
    assert_eq!(r.state, TxnState::RolledBack);
    assert_eq!(
        env.log(),
        strings(&[
            "Stage(a)",
            "Create(plain)",
            "Stage(b)",
            "prepare Stage(a)",
            "prepare Stage(b)",
            "undo Stage(b)",
            "undo Create(plain)",
            "undo Stage(a)"
        ])
    );
    let f = failure(&r);
    assert!(
        f.message.contains("prepare failed: cannot prepare b"),
        "{}",
        f.message
    );
    assert_eq!(f.step, "b");
    assert!(env.resources().is_empty());
    assert!(lock_staged(&env).is_empty());
}

// ---------------------------------------------------------------------------------------
// 12. Reads are not undone

#[tokio::test]
async fn reads_are_not_undone() {
    let env = env(r#"
namespace: R
procedures:
  ReadThenFail:
    access: public
    parallel: false
    steps:
      g: { call: Rec Provider/Get, with: { name: a }, output: { exists: "{{ executeData.exists }}" } }
      c: { call: Rec Provider/Create, with: { name: b } }
      x: { call: Rec Provider/Fail, with: { message: stop } }
"#);
    let r = env.run("call: R/ReadThenFail").await;
    assert_eq!(r.state, TxnState::RolledBack);
    assert_eq!(
        env.log(),
        strings(&["Get(a)", "Create(b)", "Fail(stop)", "undo Create(b)"])
    );
    assert_eq!(r.undone, 1);
}

// ---------------------------------------------------------------------------------------
// 13. Secrets

const SECRETS: &str = r#"
namespace: S
procedures:
  Login:
    access: public
    parallel: false
    inputs:
      user: string
      password: { type: string, secret: true }
    steps:
      a:
        call: Rec Provider/Create
        with: { name: "{{ data.user }}", password: "{{ data.password }}" }
        output: { echoed: "{{ executeData.password }}" }
      x:
        call: Rec Provider/Fail
        when: "data/fail"
        with: { message: "wrong password {{ data.password }} for {{ data.user }}" }
"#;

const SECRET_VALUE: &str = "hunter2-Sup3rS3cret";

#[tokio::test]
async fn secrets_never_leave_the_engine() {
    let env = env(SECRETS);
    let ok = format!("call: S/Login\ndata: {{ user: ann, password: {SECRET_VALUE} }}");
    let r = env.run(&ok).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let d = data(&r);
    assert_eq!(d["password"], json!("********"));
    assert_eq!(d["user"], json!("ann"));
    let text = d.to_string();
    assert!(
        !text.contains(SECRET_VALUE),
        "secret in response data: {text}"
    );

    let env = h::env(SECRETS);
    let bad = format!("call: S/Login\ndata: {{ user: ann, password: {SECRET_VALUE}, fail: 1 }}");
    let r = env.run(&bad).await;
    assert_eq!(r.state, TxnState::RolledBack);
    let f = failure(&r);
    // The provider echoed the secret in its error: the engine masks it.
    assert_eq!(f.message, "wrong password ******** for ann");
    assert!(!format!("{:?}", r.failure).contains(SECRET_VALUE));

    let env = h::env(SECRETS);
    let plan = env.plan(&bad).await;
    assert_eq!(plan.len(), 2, "{plan:?}");
    let text = format!("{plan:?}");
    assert!(!text.contains(SECRET_VALUE), "secret in plan: {text}");
    let inputs = provisio_engine::data::json::to_json(&plan[0].inputs);
    assert_eq!(inputs["password"], json!("********"));
    assert_eq!(inputs["name"], json!("ann"));
    assert!(env.log().is_empty());
}

// ---------------------------------------------------------------------------------------
// 14. Plan mode

#[tokio::test]
async fn plan_lists_calls_with_waves_previews_and_unresolved_inputs() {
    let env = env(r#"
namespace: Pl
procedures:
  Build:
    access: public
    steps:
      a: { call: Rec Provider/Create, with: { name: a } }
      b: { call: Rec Provider/Create, with: { name: b }, output: { bid: "{{ executeData.id }}" } }
      c: { call: Rec Provider/Create, with: { name: "c-{{ data.bid }}" }, needs: [a] }
"#);
    env.rec
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .resources
        .insert("a".to_string());
    let plan = env.plan("call: Pl/Build").await;
    let steps: Vec<(&str, usize)> = plan.iter().map(|e| (e.step.as_str(), e.wave)).collect();
    assert_eq!(steps, vec![("a", 0), ("b", 0), ("c", 1)]);
    assert!(plan
        .iter()
        .all(|e| e.target == "Rec Provider/Create" && e.provider == "Rec"));
    assert_eq!(
        plan[0].preview,
        Preview::Fail("a already exists".to_string())
    );
    assert_eq!(plan[1].preview, Preview::Change("create b".to_string()));
    assert_eq!(plan[2].preview, Preview::Unknown);
    assert!(plan[0].unresolved.is_empty() && plan[1].unresolved.is_empty());
    assert_eq!(plan[2].unresolved, strings(&["data/bid"]));
    let inputs = provisio_engine::data::json::to_json(&plan[1].inputs);
    assert_eq!(inputs["name"], json!("b"));
    // Nothing was executed.
    assert!(env.log().is_empty());
    assert_eq!(env.resources(), strings(&["a"]));
}

/// Calls of one wave are listed in the procedure's order, not in the order their previews
/// happened to answer: which step a plan says a run "would fail at" must not depend on
/// scheduling.
#[tokio::test]
async fn plan_lists_a_wave_in_declaration_order_whatever_answers_first() {
    let env = env(r#"
namespace: Pl
procedures:
  Build:
    access: public
    steps:
      a: { call: Rec Provider/Create, with: { name: a } }
      b: { call: Rec Provider/Create, with: { name: b } }
      c: { call: Rec Provider/Create, with: { name: c } }
"#);
    env.rec
        .slow_preview("a", std::time::Duration::from_millis(40));
    env.rec
        .slow_preview("b", std::time::Duration::from_millis(20));
    let plan = env.plan("call: Pl/Build").await;
    let steps: Vec<(&str, usize)> = plan.iter().map(|e| (e.step.as_str(), e.wave)).collect();
    assert_eq!(steps, vec![("a", 0), ("b", 0), ("c", 0)]);
}

#[tokio::test]
async fn plan_of_a_request_that_calls_a_provider_procedure_directly_executes_nothing() {
    // A namespace that publishes a provider entry point: the request's target is a leaf.
    let env = env(r#"
namespace: Direct
provider: Rec
procedures:
  Make:
    access: public
    entry: Create
"#);
    let plan = env.plan("call: Direct/Make\ndata: { name: direct }").await;
    assert_eq!(plan.len(), 1, "{plan:?}");
    assert_eq!(plan[0].target, "Direct/Make");
    assert_eq!(
        plan[0].preview,
        Preview::Change("create direct".to_string())
    );
    assert!(
        env.log().is_empty(),
        "executed in a dry run: {:?}",
        env.log()
    );
    assert!(env.resources().is_empty());
}

// ---------------------------------------------------------------------------------------
// 15. Trusted requests

#[tokio::test]
async fn trusted_request_may_call_private_procedures() {
    let env = env(COMPILE);
    let r = env
        .run(
            r#"
procedure:
  parallel: false
  steps:
    leaf: { call: Rec Provider/Create, with: { name: "{{ data.n }}" }, output: { id: "{{ executeData.id }}" } }
    hidden: { call: C/Secret }
data: { n: t1 }
"#,
        )
        .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(env.log(), strings(&["Create(t1)"]));
    assert_eq!(data(&r)["id"], json!("id-t1"));
    assert_eq!(r.calls, 2);
    // The same private procedure through a simple request is refused.
    assert!(matches!(
        one(env.compile_errors("call: C/Secret").await),
        CompileError::Private { .. }
    ));
}

#[tokio::test]
async fn run_error_displays_the_compile_errors() {
    let env = env(COMPILE);
    match env.engine.run(&h::req("call: C/Secret")).await {
        Err(e @ RunError::Compile(_)) => {
            let text = e.to_string();
            assert!(text.starts_with("error[PRV0103]"), "{text}");
        }
        Ok(r) => panic!("ran: {:?}", r.state),
        Err(e) => panic!("expected compile errors, got: {e}"),
    }
}

/// A journal whose final `committed` record cannot be written (a full disk at the end).
struct CommitFails;

#[async_trait::async_trait]
impl Journal for CommitFails {
    async fn txn_state(
        &self,
        _: &provisio_engine::TxnId,
        state: TxnState,
        _: Option<&str>,
    ) -> Result<(), JournalError> {
        if state == TxnState::Committed {
            return Err(h::disk_full());
        }
        Ok(())
    }
}

/// A commit the journal cannot make durable is reported as a failure and rolled back, never
/// as committed (recovery would otherwise undo it after the caller was told it was done).
#[tokio::test]
async fn a_commit_that_cannot_be_journaled_is_rolled_back_and_reported() {
    let env = env(SEQ);
    let rec = env.rec.clone();
    let engine = env.engine.with_journal(std::sync::Arc::new(CommitFails));
    let r = engine
        .run(&h::req("call: T/Seq\ndata: { bname: b, cname: c }"))
        .await
        .unwrap();
    assert_eq!(r.state, TxnState::RolledBack, "{r:?}");
    assert_eq!(r.undone, 4);
    assert!(rec.resources().is_empty(), "{:?}", rec.resources());
    let f = failure(&r);
    assert!(
        f.message.contains("could not be journaled"),
        "{}",
        f.message
    );
    assert!(f.message.contains("No space left"), "{}", f.message);
    assert!(r.journal_error.is_some());
    assert!(r.data.is_none());
}

/// A journal on a disk that filled up mid-transaction: it refuses the records the executor
/// does not wait on (the start of a rollback, failed attempts, finished undos), and the
/// final states named in `final_fails`.
struct Lapsing {
    final_fails: &'static [TxnState],
}

#[async_trait::async_trait]
impl Journal for Lapsing {
    async fn txn_state(
        &self,
        _: &provisio_engine::TxnId,
        state: TxnState,
        _: Option<&str>,
    ) -> Result<(), JournalError> {
        if state == TxnState::RollingBack || self.final_fails.contains(&state) {
            return Err(h::disk_full());
        }
        Ok(())
    }
    async fn step_failed(
        &self,
        _: &provisio_engine::provider::CallContext,
        _: &str,
    ) -> Result<(), JournalError> {
        Err(h::disk_full())
    }
    async fn undo_done(
        &self,
        _: &provisio_engine::provider::CallContext,
        _: Option<&str>,
    ) -> Result<(), JournalError> {
        Err(h::disk_full())
    }
}

/// The `ERROR … not journaled` lines logged for one kind of record.
fn lapses(logs: &h::Logs, record: &str) -> Vec<String> {
    let needle = format!("record={record}");
    logs.lines()
        .into_iter()
        .filter(|l| l.starts_with("ERROR") && l.contains("not journaled") && l.ends_with(&needle))
        .collect()
}

/// Records the rollback does not wait on are logged with what recovery will make of their
/// absence when they cannot be written; the rollback itself completes.
#[tokio::test]
async fn unjournaled_rollback_records_are_logged_and_the_rollback_completes() {
    let (logs, _guard) = h::Logs::capture();
    let env = env(SEQ).with_journal(Lapsing { final_fails: &[] });
    env.rec.poison("c");
    let r = env.run("call: T/Seq\ndata: { bname: b, cname: c }").await;
    assert_eq!(r.state, TxnState::RolledBack, "{r:?}");
    assert_eq!((r.calls, r.undone), (3, 2));
    assert!(env.resources().is_empty(), "{:?}", env.resources());
    assert_eq!(failure(&r).message, "cannot create c");
    assert!(r.journal_error.is_none());
    let rolling_back = lapses(&logs, "rolling_back");
    assert_eq!(rolling_back.len(), 1, "{}", logs.text());
    assert!(
        rolling_back[0].contains("No space left"),
        "{}",
        rolling_back[0]
    );
    assert!(rolling_back[0].contains("recovery"), "{}", rolling_back[0]);
    let step_failed = lapses(&logs, "step_failed");
    assert_eq!(step_failed.len(), 1, "{}", logs.text());
    assert!(step_failed[0].contains("in-doubt"), "{}", step_failed[0]);
    let undo_done = lapses(&logs, "undo_done");
    assert_eq!(undo_done.len(), 2, "one per undo: {}", logs.text());
    assert!(
        undo_done[0].contains("undo this call again"),
        "{}",
        undo_done[0]
    );
}

/// When neither the commit nor the rollback that follows can be journaled, the rollback
/// still happens, the failure is reported, and the missing final record is logged.
#[tokio::test]
async fn an_unjournaled_rollback_after_an_unjournaled_commit_is_logged() {
    let (logs, _guard) = h::Logs::capture();
    let fails = &[TxnState::Committed, TxnState::RolledBack];
    let env = env(SEQ).with_journal(Lapsing { final_fails: fails });
    let r = env.run("call: T/Seq\ndata: { bname: b, cname: c }").await;
    assert_eq!(r.state, TxnState::RolledBack, "{r:?}");
    assert_eq!(r.undone, 4);
    assert!(env.resources().is_empty(), "{:?}", env.resources());
    assert!(failure(&r).message.contains("could not be journaled"));
    let last = lapses(&logs, "final state after the rollback");
    assert_eq!(last.len(), 1, "{}", logs.text());
    assert!(last[0].contains("roll it back again"), "{}", last[0]);
}

/// Waves follow the expanded graph: the calls inside a nested procedure keep their own
/// order, a step after the nested call waits for its last call, and forEach iterations
/// (which run one after another) take a wave each.
#[tokio::test]
async fn plan_waves_follow_nested_procedures_and_iterations() {
    let env = env(r#"
namespace: W
procedures:
  Dns:
    access: public
    steps:
      zone: { call: Rec Provider/Create, with: { name: zone } }
      mailHost: { call: Rec Provider/Create, with: { name: mail }, needs: [zone] }
      mx: { call: Rec Provider/Create, with: { name: mx }, needs: [mailHost] }
      spf: { call: Rec Provider/Create, with: { name: spf }, needs: [zone] }
  Tenant:
    access: public
    steps:
      dns: { call: W/Dns }
      folder: { call: Rec Provider/Create, with: { name: folder } }
      users:
        call: Rec Provider/Create
        forEach: [{ name: u, path: user }]
        with: { name: "{{ u }}" }
        needs: [folder]
      welcome: { call: Rec Provider/Create, with: { name: welcome }, needs: [dns, users] }
"#);
    let plan = env.plan("call: W/Tenant\ndata: { user: [ann, bob] }").await;
    let waves: Vec<(&str, usize)> = plan.iter().map(|e| (e.step.as_str(), e.wave)).collect();
    let wave = |step: &str| match waves.iter().find(|(s, _)| *s == step) {
        Some((_, w)) => *w,
        None => panic!("no plan entry for {step}: {waves:?}"),
    };
    assert_eq!(wave("dns/zone"), 0, "{waves:?}");
    assert_eq!(wave("folder"), 0, "{waves:?}");
    assert_eq!(wave("dns/mailHost"), 1, "{waves:?}");
    assert_eq!(wave("dns/spf"), 1, "{waves:?}");
    assert_eq!(wave("dns/mx"), 2, "{waves:?}");
    assert_eq!(wave("users[1]"), 1, "{waves:?}");
    assert_eq!(wave("users[2]"), 2, "{waves:?}");
    assert_eq!(wave("welcome"), 3, "{waves:?}");
    // Listed by wave, so a wave is one group.
    assert!(waves.windows(2).all(|w| w[0].1 <= w[1].1), "{waves:?}");
}

/// Keeps what the executor writes for people (inputs and outputs shown, messages) as text.
#[derive(Clone, Default)]
struct Shown(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Shown {
    fn push(&self, s: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }
    fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }
}

#[async_trait::async_trait]
impl Journal for Shown {
    async fn txn_state(
        &self,
        _: &provisio_engine::TxnId,
        _: TxnState,
        m: Option<&str>,
    ) -> Result<(), JournalError> {
        self.push(format!("state {m:?}"));
        Ok(())
    }
    async fn step_intent(&self, i: &provisio_engine::StepIntent<'_>) -> Result<(), JournalError> {
        self.push(format!(
            "intent {}",
            provisio_engine::data::json::to_json(i.input)
        ));
        Ok(())
    }
    async fn step_done(&self, d: &provisio_engine::StepDone<'_>) -> Result<(), JournalError> {
        self.push(format!(
            "done {}",
            provisio_engine::data::json::to_json(d.output)
        ));
        Ok(())
    }
    async fn step_failed(
        &self,
        _: &provisio_engine::provider::CallContext,
        m: &str,
    ) -> Result<(), JournalError> {
        self.push(format!("failed {m}"));
        Ok(())
    }
}

/// Issue 12 item 1: a provider error quoting a secret is masked in the log line that
/// reports the failed step, as in the response and the journal.
#[tokio::test]
async fn a_failing_step_logs_no_secret() {
    let (logs, _guard) = h::Logs::capture();
    let shown = Shown::default();
    let env = env(SECRETS).with_journal(shown.clone());
    let bad = format!("call: S/Login\ndata: {{ user: ann, password: {SECRET_VALUE}, fail: 1 }}");
    let r = env.run(&bad).await;
    assert_eq!(r.state, TxnState::RolledBack, "{r:?}");
    let text = logs.text();
    assert!(text.contains("step failed"), "{text}");
    assert!(text.contains("wrong password ********"), "{text}");
    assert!(!text.contains(SECRET_VALUE), "secret in the log: {text}");
    assert!(!failure(&r).message.contains(SECRET_VALUE));
    let journal = shown.text();
    assert!(journal.contains("failed"), "{journal}");
    assert!(
        !journal.contains(SECRET_VALUE),
        "secret in the journal: {journal}"
    );
}

/// A value computed from a secret (`upper(data.password)`) is a secret too: masked in the
/// journal, the response, the plan and the log.
#[tokio::test]
async fn a_value_computed_from_a_secret_is_masked() {
    const NS: &str = r#"
namespace: S
procedures:
  Shout:
    access: public
    inputs:
      password: { type: string, secret: true }
    steps:
      a:
        call: Rec Provider/Create
        with: { name: ann, shout: { $expr: "upper(data.password)" } }
        output: { shouted: "{{ executeData.shout }}" }
      x:
        call: Rec Provider/Fail
        needs: [a]
        with: { message: { $expr: '"no " + upper(data.password)' } }
"#;
    let upper = SECRET_VALUE.to_uppercase();
    let (logs, _guard) = h::Logs::capture();
    let shown = Shown::default();
    let env = env(NS).with_journal(shown.clone());
    let request = format!("call: S/Shout\ndata: {{ password: {SECRET_VALUE} }}");
    let r = env.run(&request).await;
    assert_eq!(r.state, TxnState::RolledBack, "{r:?}");
    // The provider did receive the computed value.
    assert!(
        env.log().iter().any(|l| l.contains("Create(ann)")),
        "{:?}",
        env.log()
    );
    let journal = shown.text();
    assert!(journal.contains("intent"), "{journal}");
    assert!(
        !journal.contains(&upper),
        "computed secret in the journal: {journal}"
    );
    assert!(
        !logs.text().contains(&upper),
        "computed secret in the log: {}",
        logs.text()
    );
    assert!(
        !failure(&r).message.contains(&upper),
        "{}",
        failure(&r).message
    );
    let plan = env.plan(&request).await;
    let inputs = format!("{:?}", plan.iter().map(|e| &e.inputs).collect::<Vec<_>>());
    assert!(
        !inputs.contains(&upper),
        "computed secret in the plan: {inputs}"
    );
}
