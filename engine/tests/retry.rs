//! Retry policies at work: an undo, a call and the settlement of an in-doubt call that fail
//! transiently for a while are tried again within their policy's budget — in the live
//! rollback, and in `tx resume-rollback` (the same path as crash recovery) — and given up
//! when the budget or `max_attempts` is spent, when the error's code is in `never_retry`,
//! or when the error is permanent. A provider's own policy beats the global one, and an
//! undo waiting for its backoff does not hold up the undos that do not depend on it.

mod support;

use async_trait::async_trait;
use provisio_engine::data::Element;
use provisio_engine::model::Format;
use provisio_engine::provider::{
    Call, Done, Outcome, Preview, ProcedureSpec, Provider, ProviderError, ProviderRegistry,
};
use provisio_engine::request::{parse_namespaces, parse_request};
use provisio_engine::testing::RecordingProvider;
use provisio_engine::txn::{resume_rollback, DurableJournal};
use provisio_engine::Catalog;
use provisio_engine::{
    Engine, EngineOptions, Journal, RetryOptions, RetryPolicies, RetryPolicy, TxnResult, TxnState,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support as h;

const NS: &str = r#"
namespace: R
procedures:
  ThenFail:
    access: public
    parallel: false
    steps:
      a: { call: Rec Provider/Create, with: { name: a } }
      b: { call: Rec Provider/Create, with: { name: b } }
      x: { call: Rec Provider/Fail }
  Chain:
    access: public
    parallel: false
    steps:
      a: { call: Rec Provider/Create, with: { name: a } }
      b: { call: Rec Provider/Create, with: { name: b } }
      c: { call: Rec Provider/Create, with: { name: c } }
      x: { call: Rec Provider/Fail }
  Flaky:
    access: public
    parallel: false
    steps:
      f: { call: Rec Provider/Flaky, with: { name: f } }
  Side:
    access: public
    parallel: true
    steps:
      a: { call: Rec Provider/Create, with: { name: a } }
      b: { call: Rec Provider/Create, with: { name: b } }
  SideThenFail:
    access: public
    parallel: false
    steps:
      both: { call: R/Side }
      x: { call: Rec Provider/Fail }
"#;

/// Access denied, as a Windows provider reports it.
const E_ACCESS_DENIED: u32 = 0x8007_0005;

/// What [`Unsteady`] does and saw.
#[derive(Default)]
struct Script {
    /// Transient undo failures still to report, by resource name, with their code.
    undo_failures: HashMap<String, (u32, u32)>,
    /// Transient `recover` failures still to report.
    recover_failures: u32,
    /// How long `Create(name)` takes, by name.
    create_delay: HashMap<String, Duration>,
    /// Every undo attempt and `recover`, in order: `fail undo a`, `undo a`, `recover`.
    timeline: Vec<String>,
}

/// The recording provider, with undos and `recover` that fail transiently on demand.
#[derive(Clone)]
struct Unsteady {
    rec: RecordingProvider,
    script: Arc<Mutex<Script>>,
}

impl Unsteady {
    fn new() -> Unsteady {
        Unsteady {
            rec: RecordingProvider::new("Rec"),
            script: Arc::default(),
        }
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The undo of `name` fails `times` times with a transient error of `code`.
    fn fail_undo(&self, name: &str, times: u32, code: u32) {
        self.script()
            .undo_failures
            .insert(name.to_string(), (times, code));
    }

    fn fail_recover(&self, times: u32) {
        self.script().recover_failures = times;
    }

    fn timeline(&self) -> Vec<String> {
        self.script().timeline.clone()
    }

    fn count(&self, event: &str) -> usize {
        self.timeline().iter().filter(|e| *e == event).count()
    }
}

fn created(done: &Done) -> String {
    done.undo
        .child("created")
        .map(Element::string_value)
        .unwrap_or_default()
}

#[async_trait]
impl Provider for Unsteady {
    fn name(&self) -> &str {
        self.rec.name()
    }
    fn procedures(&self) -> Vec<ProcedureSpec> {
        self.rec.procedures()
    }
    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        let name = call
            .execute_data
            .child("name")
            .map(Element::string_value)
            .unwrap_or_default();
        let delay = self.script().create_delay.get(&name).copied();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        self.rec.execute(call).await
    }
    async fn undo(&self, done: Done) -> Result<(), ProviderError> {
        let name = created(&done);
        let failure = {
            let mut s = self.script();
            let failure = match s.undo_failures.get_mut(&name) {
                Some((left, code)) if *left > 0 => {
                    *left -= 1;
                    Some(*code)
                }
                _ => None,
            };
            let event = match failure {
                Some(_) => format!("fail undo {name}"),
                None => format!("undo {name}"),
            };
            s.timeline.push(event);
            failure
        };
        match failure {
            Some(code) => Err(ProviderError::Transient {
                code,
                message: format!("the server holding {name} is restarting"),
            }),
            None => self.rec.undo(done).await,
        }
    }
    async fn recover(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        {
            let mut s = self.script();
            s.timeline.push("recover".into());
            if s.recover_failures > 0 {
                s.recover_failures -= 1;
                return Err(ProviderError::transient("cannot reach the server"));
            }
        }
        self.rec.recover(call).await
    }
    async fn preview(&self, call: &Call) -> Result<Preview, ProviderError> {
        self.rec.preview(call).await
    }
}

/// A policy that waits `initial` (doubling up to 4×), within `budget`.
fn quick(initial: Duration, budget: Duration) -> RetryPolicy {
    RetryPolicy {
        initial,
        max_interval: initial * 4,
        multiplier: 2.0,
        jitter: 0.0,
        budget,
        max_attempts: None,
        never_retry: Default::default(),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Options whose global policies are all `p`.
fn all(p: RetryPolicy) -> RetryOptions {
    RetryOptions {
        default: RetryPolicies {
            calls: p.clone(),
            settle: p.clone(),
            undo: p,
        },
        providers: Default::default(),
    }
}

fn engine(p: &Unsteady, retry: RetryOptions) -> Engine {
    let namespaces = parse_namespaces(NS, "retry.yaml", Format::Yaml).expect("namespace");
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(p.clone()));
    let catalog = Catalog::new(namespaces, &registry).expect("catalog");
    let options = EngineOptions {
        retry,
        step_timeout: Duration::from_secs(20),
        ..EngineOptions::default()
    };
    Engine::new(catalog, registry, options)
}

async fn run(engine: &Engine, request: &str) -> TxnResult {
    let req = parse_request(request, "req.yaml", Format::Yaml).expect("request");
    engine.run(&req).await.expect("compiles")
}

#[tokio::test]
async fn a_transiently_failing_undo_is_retried_until_it_succeeds() {
    let p = Unsteady::new();
    p.fail_undo("b", 4, ProviderError::E_FAIL);
    let (logs, _guard) = h::Logs::capture();
    let r = run(&engine(&p, all(quick(ms(2), ms(5000)))), "call: R/ThenFail").await;
    assert_eq!(r.state, TxnState::RolledBack, "{:?}", r.undo_failures);
    assert_eq!(r.undone, 2);
    assert!(r.undo_failures.is_empty(), "{:?}", r.undo_failures);
    assert_eq!(p.count("fail undo b"), 4);
    assert_eq!(p.count("undo b"), 1);
    assert!(p.rec.resources().is_empty(), "{:?}", p.rec.resources());
    // Each retry says which attempt failed, how long until the next and what is left.
    let text = logs.text();
    let retries: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("undo failed with a retryable error; retrying"))
        .collect();
    assert_eq!(retries.len(), 4, "{text}");
    assert!(retries[0].starts_with("WARN"), "{}", retries[0]);
    for (n, line) in retries.iter().enumerate() {
        assert!(line.contains(&format!("attempt={}", n + 1)), "{line}");
        assert!(line.contains("next_delay="), "{line}");
        assert!(line.contains("budget_left="), "{line}");
        assert!(line.contains("is restarting"), "{line}");
    }
    assert!(retries[1].contains("next_delay=4ms"), "{}", retries[1]);
}

#[tokio::test]
async fn an_undo_still_failing_when_the_budget_is_spent_ends_rollback_failed_naming_the_step() {
    let p = Unsteady::new();
    p.fail_undo("b", u32::MAX, ProviderError::E_FAIL);
    let started = Instant::now();
    let r = run(&engine(&p, all(quick(ms(5), ms(60)))), "call: R/ThenFail").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.state, TxnState::RollbackFailed);
    assert_eq!(r.undone, 1, "a is still undone");
    assert_eq!(r.undo_failures.len(), 1, "{:?}", r.undo_failures);
    let u = &r.undo_failures[0];
    assert_eq!(u.step, "b");
    assert!(u.message.contains("is restarting"), "{}", u.message);
    assert!(u.message.contains("retry budget spent"), "{}", u.message);
    let tries = p.count("fail undo b");
    assert!((2..=20).contains(&tries), "{tries} attempts in 60 ms");
    assert_eq!(p.rec.resources(), ["b".to_string()].into());

    // max_attempts ends it too, whatever the budget.
    let p = Unsteady::new();
    p.fail_undo("b", u32::MAX, ProviderError::E_FAIL);
    let capped = RetryPolicy {
        max_attempts: Some(3),
        ..quick(ms(1), ms(60_000))
    };
    let r = run(&engine(&p, all(capped)), "call: R/ThenFail").await;
    assert_eq!(r.state, TxnState::RollbackFailed);
    assert_eq!(p.count("fail undo b"), 3);
    assert!(
        r.undo_failures[0].message.contains("after 3 attempts"),
        "{}",
        r.undo_failures[0].message
    );
}

#[tokio::test]
async fn never_retry_codes_are_tried_once() {
    let mut policy = quick(ms(1), ms(5000));
    policy.never_retry.insert(E_ACCESS_DENIED);
    let p = Unsteady::new();
    p.fail_undo("b", 5, E_ACCESS_DENIED);
    let r = run(&engine(&p, all(policy.clone())), "call: R/ThenFail").await;
    assert_eq!(r.state, TxnState::RollbackFailed);
    assert_eq!(p.count("fail undo b"), 1, "{:?}", p.timeline());
    assert_eq!(r.undo_failures[0].step, "b");
    assert!(
        r.undo_failures[0].message.contains("never_retry"),
        "{}",
        r.undo_failures[0].message
    );
    // Another code is retried under the same policy.
    let p = Unsteady::new();
    p.fail_undo("b", 5, ProviderError::E_FAIL);
    let r = run(&engine(&p, all(policy)), "call: R/ThenFail").await;
    assert_eq!(r.state, TxnState::RolledBack, "{:?}", r.undo_failures);
    assert_eq!(p.count("fail undo b"), 5);

    // Calls: a transient E_FAIL listed in never_retry fails the step at once.
    let mut calls = quick(ms(1), ms(5000));
    calls.never_retry.insert(ProviderError::E_FAIL);
    let p = Unsteady::new();
    p.rec.flaky("f", 1);
    let r = run(&engine(&p, all(calls)), "call: R/Flaky").await;
    assert_eq!(r.state, TxnState::RolledBack);
    assert_eq!(p.rec.log(), ["Flaky(f)"]);
    let p = Unsteady::new();
    p.rec.flaky("f", 4);
    let r = run(&engine(&p, all(quick(ms(1), ms(5000)))), "call: R/Flaky").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(p.rec.log().len(), 5, "{:?}", p.rec.log());
}

#[tokio::test]
async fn a_providers_own_policy_beats_the_global_one() {
    let patient = quick(ms(1), ms(5000));
    let never = RetryPolicy {
        max_attempts: Some(1),
        ..patient.clone()
    };
    // Global: never retried; the provider's own: retried.
    let mut retry = all(never.clone());
    retry.providers.insert(
        "Rec".into(),
        RetryPolicies {
            undo: patient.clone(),
            ..retry.default.clone()
        },
    );
    let p = Unsteady::new();
    p.fail_undo("b", 3, ProviderError::E_FAIL);
    let r = run(&engine(&p, retry), "call: R/ThenFail").await;
    assert_eq!(r.state, TxnState::RolledBack, "{:?}", r.undo_failures);
    assert_eq!(p.count("fail undo b"), 3);

    // Global: retried; the provider's own: never.
    let mut retry = all(patient);
    retry.providers.insert(
        "Rec".into(),
        RetryPolicies {
            undo: never,
            ..retry.default.clone()
        },
    );
    // Another provider's entry changes nothing for this one.
    retry
        .providers
        .insert("Other".into(), all(quick(ms(1), ms(5000))).default);
    let p = Unsteady::new();
    p.fail_undo("b", 3, ProviderError::E_FAIL);
    let r = run(&engine(&p, retry), "call: R/ThenFail").await;
    assert_eq!(r.state, TxnState::RollbackFailed);
    assert_eq!(p.count("fail undo b"), 1);
    assert!(
        r.undo_failures[0].message.contains("after 1 attempts"),
        "{}",
        r.undo_failures[0].message
    );
}

#[tokio::test]
async fn a_provider_that_waited_out_a_whole_budget_is_not_waited_for_again_in_that_rollback() {
    // b's undo (undone first: a came before it) spends its budget; a depends on nothing
    // later but on the same unreachable provider: tried once, not another whole budget.
    let p = Unsteady::new();
    p.fail_undo("a", u32::MAX, ProviderError::E_FAIL);
    p.fail_undo("b", u32::MAX, ProviderError::E_FAIL);
    let started = Instant::now();
    let r = run(&engine(&p, all(quick(ms(5), ms(300)))), "call: R/ThenFail").await;
    let took = started.elapsed();
    assert_eq!(r.state, TxnState::RollbackFailed);
    assert!(p.count("fail undo b") >= 3, "{:?}", p.timeline());
    assert_eq!(p.count("fail undo a"), 1, "{:?}", p.timeline());
    assert!(took < ms(2000), "{took:?}");
    let steps: Vec<&str> = r.undo_failures.iter().map(|u| u.step.as_str()).collect();
    assert_eq!(steps.len(), 2, "{:?}", r.undo_failures);
    let a = r.undo_failures.iter().find(|u| u.step == "a").expect("a");
    assert!(
        a.message.contains("already spent its retry budget"),
        "{}",
        a.message
    );

    // Once the provider answers again (b's single attempt succeeds), its next undo has the
    // whole budget once more.
    let p = Unsteady::new();
    p.fail_undo("c", u32::MAX, ProviderError::E_FAIL);
    p.fail_undo("a", 2, ProviderError::E_FAIL);
    let r = run(&engine(&p, all(quick(ms(5), ms(100)))), "call: R/Chain").await;
    assert_eq!(r.state, TxnState::RollbackFailed);
    assert_eq!(r.undo_failures.len(), 1, "{:?}", r.undo_failures);
    assert_eq!(r.undo_failures[0].step, "c");
    assert_eq!(p.count("undo b"), 1, "{:?}", p.timeline());
    assert_eq!(p.count("fail undo a"), 2, "{:?}", p.timeline());
    assert_eq!(p.count("undo a"), 1, "{:?}", p.timeline());
    assert_eq!(p.rec.resources(), ["c".to_string()].into());
}

#[tokio::test]
async fn an_undo_in_backoff_does_not_hold_up_independent_undos() {
    let p = Unsteady::new();
    // a and b overlap in time (independent); b finishes last, so without concurrency its
    // undo would come first and a's would wait for all of b's retries.
    p.script().create_delay.insert("a".into(), ms(20));
    p.script().create_delay.insert("b".into(), ms(60));
    p.fail_undo("b", 3, ProviderError::E_FAIL);
    let r = run(
        &engine(&p, all(quick(ms(100), ms(5000)))),
        "call: R/SideThenFail",
    )
    .await;
    assert_eq!(r.state, TxnState::RolledBack, "{:?}", r.undo_failures);
    assert_eq!(r.undone, 2);
    let timeline = p.timeline();
    let a = timeline
        .iter()
        .position(|e| e == "undo a")
        .expect("a undone");
    let b_retry = timeline
        .iter()
        .enumerate()
        .filter(|(_, e)| *e == "fail undo b")
        .nth(1)
        .map(|(i, _)| i)
        .expect("b retried");
    assert!(a < b_retry, "a waited for b's backoff: {timeline:?}");
}

#[tokio::test]
async fn a_transient_recover_is_asked_again_within_the_settle_budget() {
    // Applied, answer lost, recover unreachable twice: settled as applied, not repeated.
    let p = Unsteady::new();
    p.rec.lose_answer_once("a");
    p.fail_recover(2);
    let r = run(&engine(&p, all(quick(ms(1), ms(5000)))), "call: R/ThenFail").await;
    assert_eq!(r.state, TxnState::RolledBack, "{:?}", r.undo_failures);
    assert_eq!(p.count("recover"), 3);
    assert_eq!(p.rec.log()[0], "Create(a)");
    assert_eq!(
        p.rec.log().iter().filter(|l| *l == "Create(a)").count(),
        1,
        "never applied twice: {:?}",
        p.rec.log()
    );
    assert!(p.rec.resources().is_empty(), "{:?}", p.rec.resources());

    // Past the settle budget the call stays in doubt, for an operator.
    let p = Unsteady::new();
    p.rec.lose_answer_once("a");
    p.fail_recover(u32::MAX);
    let mut retry = all(quick(ms(1), ms(5000)));
    retry.default.settle = quick(ms(5), ms(40));
    let r = run(&engine(&p, retry), "call: R/ThenFail").await;
    assert_eq!(r.state, TxnState::RollbackFailed);
    let u = &r.undo_failures[0];
    assert_eq!(u.step, "a");
    assert!(u.message.contains("in doubt"), "{}", u.message);
    assert!(u.message.contains("retry budget spent"), "{}", u.message);
    assert!(p.count("recover") >= 2, "{:?}", p.timeline());
}

/// A journal in a temporary store.
fn journal() -> (tempfile::TempDir, Arc<DurableJournal>) {
    let dir = tempfile::tempdir().expect("temp dir");
    // sled, or PostgreSQL with PROVISIO_TEST_STORE=postgres.
    let store = provisio_engine::testing::open_store(
        dir.path(),
        provisio_test_support::postgres::store_url(dir.path()),
    );
    (dir, Arc::new(DurableJournal::new(store, None, "tester")))
}

#[tokio::test]
async fn resume_rollback_retries_undos_and_settlements_within_their_budget() {
    // An undo that kept failing past a tiny budget…
    let (_dir, j) = journal();
    let p = Unsteady::new();
    p.fail_undo("b", u32::MAX, ProviderError::E_FAIL);
    let tight = engine(&p, all(quick(ms(1), ms(10)))).with_journal(j.clone() as Arc<dyn Journal>);
    let r = run(&tight, "call: R/ThenFail").await;
    assert_eq!(r.state, TxnState::RollbackFailed);
    // …is retried by resume-rollback (crash recovery's path) until the server is back.
    p.fail_undo("b", 4, ProviderError::E_FAIL);
    let before = p.count("fail undo b");
    let patient =
        engine(&p, all(quick(ms(2), ms(5000)))).with_journal(j.clone() as Arc<dyn Journal>);
    let out = resume_rollback(&patient, &j, r.txn_id.as_str())
        .await
        .expect("resumes");
    assert_eq!(
        (out.to, out.undone),
        (TxnState::RolledBack, 1),
        "{:?}",
        out.problems
    );
    assert_eq!(p.count("fail undo b") - before, 4);
    assert!(p.rec.resources().is_empty(), "{:?}", p.rec.resources());

    // The same with too small a budget: still rollback_failed, the step named.
    let (_dir, j) = journal();
    let p = Unsteady::new();
    p.fail_undo("b", u32::MAX, ProviderError::E_FAIL);
    let tight = engine(&p, all(quick(ms(1), ms(10)))).with_journal(j.clone() as Arc<dyn Journal>);
    let r = run(&tight, "call: R/ThenFail").await;
    let out = resume_rollback(&tight, &j, r.txn_id.as_str())
        .await
        .expect("runs");
    assert_eq!(out.to, TxnState::RollbackFailed);
    assert!(
        out.problems
            .iter()
            .any(|m| m.contains("step b") && m.contains("retry budget spent")),
        "{:?}",
        out.problems
    );

    // An in-doubt call recovery could not settle: resume asks `recover` again, within the
    // settle budget, and undoes what it finds applied.
    let (_dir, j) = journal();
    let p = Unsteady::new();
    p.rec.lose_answer_once("a");
    p.fail_recover(u32::MAX);
    let tight = engine(&p, all(quick(ms(1), ms(10)))).with_journal(j.clone() as Arc<dyn Journal>);
    let r = run(&tight, "call: R/ThenFail").await;
    assert_eq!(r.state, TxnState::RollbackFailed);
    assert_eq!(p.rec.resources(), ["a".to_string()].into());
    p.fail_recover(3);
    let asked = p.count("recover");
    let patient =
        engine(&p, all(quick(ms(2), ms(5000)))).with_journal(j.clone() as Arc<dyn Journal>);
    let out = resume_rollback(&patient, &j, r.txn_id.as_str())
        .await
        .expect("resumes");
    assert_eq!(
        (out.to, out.undone),
        (TxnState::RolledBack, 1),
        "{:?}",
        out.problems
    );
    assert_eq!(p.count("recover") - asked, 4);
    assert!(p.rec.resources().is_empty(), "{:?}", p.rec.resources());
}
