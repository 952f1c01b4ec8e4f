//! `Engine::run_controlled`, the daemon's way of running a job: the transaction id is the
//! caller's, a [`Cancel`] stops the run before its next step (or before it commits) and
//! rolls back what ran, and `TxnResult::transient` says a rollback came from a transient
//! error the engine gave up retrying.

use provisio_engine::model::Format;
use provisio_engine::provider::ProviderRegistry;
use provisio_engine::request::{parse_namespaces, parse_request};
use provisio_engine::testing::RecordingProvider;
use provisio_engine::{
    Cancel, Catalog, Engine, EngineOptions, RetryOptions, RetryPolicies, RetryPolicy, RunControl,
    TxnId, TxnState,
};
use std::sync::Arc;
use std::time::Duration;

const NS: &str = r#"
namespace: C
procedures:
  Two:
    access: public
    parallel: false
    steps:
      a: { call: Rec Provider/Create, with: { name: a } }
      b: { call: Rec Provider/Create, with: { name: b } }
  Flaky:
    access: public
    steps:
      f: { call: Rec Provider/Flaky, with: { name: f } }
  Fails:
    access: public
    steps:
      x: { call: Rec Provider/Fail }
"#;

fn engine(rec: &RecordingProvider) -> Engine {
    let namespaces = parse_namespaces(NS, "c.yaml", Format::Yaml).expect("namespace");
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(rec.clone()));
    let catalog = Catalog::new(namespaces, &registry).expect("catalog");
    let quick = RetryPolicy {
        initial: Duration::from_millis(1),
        max_interval: Duration::from_millis(2),
        max_attempts: Some(2),
        ..RetryPolicy::calls_default()
    };
    let options = EngineOptions {
        retry: RetryOptions {
            default: RetryPolicies {
                calls: quick.clone(),
                settle: quick.clone(),
                undo: quick,
            },
            providers: Default::default(),
        },
        ..EngineOptions::default()
    };
    Engine::new(catalog, registry, options)
}

fn request(call: &str) -> provisio_engine::Request {
    parse_request(&format!("call: {call}\n"), "req.yaml", Format::Yaml).expect("request")
}

#[tokio::test]
async fn the_callers_transaction_id_is_used() {
    let rec = RecordingProvider::new("Rec");
    let id = TxnId::new_v7();
    let r = engine(&rec)
        .run_controlled(
            request("C/Two"),
            RunControl {
                txn_id: Some(id.clone()),
                cancel: None,
            },
        )
        .await
        .expect("compiles");
    assert_eq!(r.state, TxnState::Committed);
    assert_eq!(r.txn_id, id);
    assert!(!r.transient);
}

#[tokio::test]
async fn a_cancelled_run_starts_no_step_and_rolls_back() {
    let rec = RecordingProvider::new("Rec");
    let cancel = Cancel::new();
    cancel.cancel();
    let r = engine(&rec)
        .run_controlled(
            request("C/Two"),
            RunControl {
                txn_id: None,
                cancel: Some(cancel),
            },
        )
        .await
        .expect("compiles");
    assert_eq!(r.state, TxnState::RolledBack);
    assert_eq!(r.calls, 0);
    let failure = r.failure.expect("a failure");
    assert_eq!(failure.code, provisio_engine::codes::E_ABORT);
    assert!(failure.message.contains("cancelled"), "{}", failure.message);
    assert!(rec.resources().is_empty());
}

#[tokio::test]
async fn a_transient_error_outlasting_the_retries_is_marked_transient() {
    let rec = RecordingProvider::new("Rec");
    rec.flaky("f", 100);
    let r = engine(&rec)
        .run_controlled(request("C/Flaky"), RunControl::default())
        .await
        .expect("compiles");
    assert_eq!(r.state, TxnState::RolledBack);
    assert!(r.transient, "{:?}", r.failure);
    let rec = RecordingProvider::new("Rec");
    let r = engine(&rec)
        .run_controlled(request("C/Fails"), RunControl::default())
        .await
        .expect("compiles");
    assert_eq!(r.state, TxnState::RolledBack);
    assert!(!r.transient, "a permanent error is not worth a retry");
}
