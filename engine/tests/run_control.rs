//! `Engine::run_controlled`, the daemon's way of running a job: the transaction id is the
//! caller's, a [`Cancel`] stops the run before its next step (or before it commits) and
//! rolls back what ran, and `TxnResult::transient` says a rollback came from a transient
//! error the engine gave up retrying. And `EngineOptions::provider_limits`: calls to a
//! provider in flight at once over all transactions of an engine and its clones.

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

/// Counts the calls in flight and the most seen at once.
#[derive(Default)]
struct Gauge {
    now: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
}

#[derive(Clone)]
struct Slow {
    rec: RecordingProvider,
    gauge: Arc<Gauge>,
}

#[async_trait::async_trait]
impl provisio_engine::Provider for Slow {
    fn name(&self) -> &str {
        self.rec.name()
    }
    fn procedures(&self) -> Vec<provisio_engine::ProcedureSpec> {
        self.rec.procedures()
    }
    async fn execute(
        &self,
        call: provisio_engine::Call,
    ) -> Result<provisio_engine::Outcome, provisio_engine::ProviderError> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.gauge.now.fetch_add(1, SeqCst) + 1;
        self.gauge.max.fetch_max(n, SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.gauge.now.fetch_sub(1, SeqCst);
        self.rec.execute(call).await
    }
    async fn undo(
        &self,
        done: provisio_engine::Done,
    ) -> Result<(), provisio_engine::ProviderError> {
        self.rec.undo(done).await
    }
    async fn recover(
        &self,
        call: &provisio_engine::Call,
    ) -> Result<Option<provisio_engine::Element>, provisio_engine::ProviderError> {
        self.rec.recover(call).await
    }
    async fn preview(
        &self,
        call: &provisio_engine::Call,
    ) -> Result<provisio_engine::Preview, provisio_engine::ProviderError> {
        self.rec.preview(call).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_limit_bounds_its_calls_over_every_transaction() {
    const WIDE: &str = r#"
namespace: W
procedures:
  Wide:
    access: public
    parallel: true
    steps:
      a: { call: Rec Provider/Create, with: { name: "{{ data.p }}a" } }
      b: { call: Rec Provider/Create, with: { name: "{{ data.p }}b" } }
      c: { call: Rec Provider/Create, with: { name: "{{ data.p }}c" } }
"#;
    for (limit, most) in [(Some(2), 2), (None, 3 * 6)] {
        let gauge = Arc::new(Gauge::default());
        let slow = Slow {
            rec: RecordingProvider::new("Rec"),
            gauge: gauge.clone(),
        };
        let namespaces = parse_namespaces(WIDE, "w.yaml", Format::Yaml).expect("namespace");
        let mut registry = ProviderRegistry::new();
        registry.register(Arc::new(slow));
        let catalog = Catalog::new(namespaces, &registry).expect("catalog");
        let options = EngineOptions {
            provider_limits: limit
                .map(|n| [("Rec".to_string(), n)].into())
                .unwrap_or_default(),
            ..EngineOptions::default()
        };
        let engine = Engine::new(catalog, registry, options);
        let runs = (0..6).map(|i| {
            let engine = engine.clone();
            async move {
                let req = parse_request(
                    &format!("call: W/Wide\ndata:\n  p: t{i}\n"),
                    "req.yaml",
                    Format::Yaml,
                )
                .expect("request");
                engine.run_owned(req).await.expect("compiles")
            }
        });
        for r in futures::future::join_all(runs).await {
            assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
        }
        let seen = gauge.max.load(std::sync::atomic::Ordering::SeqCst);
        match limit {
            Some(n) => assert!(seen <= n, "{seen} calls at once with a limit of {n}"),
            None => assert!(
                seen > 2,
                "without a limit the calls overlap ({seen} of {most})"
            ),
        }
    }
}

/// A caller that runs a transaction id while a run of it is still under way (a job queue
/// claiming a job twice) is refused before anything is run or journaled: the two runs'
/// records, locks and outcomes would otherwise interleave in one journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_a_running_transaction_id_is_refused() {
    use provisio_engine::txn::{recovery, DurableJournal, Record};
    use provisio_engine::{Journal, RunError, SledStore};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "test"));
    let rec = RecordingProvider::new("Rec");
    rec.slow_answer_once("a", Duration::from_millis(400));
    let engine = engine(&rec).with_journal(journal.clone() as Arc<dyn Journal>);
    let id = TxnId::new_v7();
    let control = || RunControl {
        txn_id: Some(id.clone()),
        cancel: None,
    };
    let first = tokio::spawn({
        let engine = engine.clone();
        let control = control();
        async move { engine.run_controlled(request("C/Two"), control).await }
    });
    // The first run is inside its slow first call.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = engine.run_controlled(request("C/Two"), control()).await;
    match second {
        Err(RunError::AlreadyRunning { txn }) => assert_eq!(txn, id),
        other => panic!("a second run of {id} was not refused: {other:?}"),
    }
    let first = first.await.unwrap().expect("compiles");
    assert_eq!(first.state, TxnState::Committed);
    let records = recovery::records(&journal, &id).unwrap();
    let starts = records
        .iter()
        .filter(|(_, r)| matches!(r, Record::Started { .. } | Record::StartedV2 { .. }))
        .count();
    let ends = records
        .iter()
        .filter(|(_, r)| matches!(r, Record::State { state, .. } if *state == TxnState::Committed || *state == TxnState::RolledBack))
        .count();
    assert_eq!((starts, ends), (1, 1), "{records:?}");
    assert_eq!(rec.resources().len(), 2, "each step ran once");
}
