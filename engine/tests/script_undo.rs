//! Script steps' undo scripts are durable: journaled with their inputs (sealed when the
//! transaction holds secrets), so `resume_rollback` retries a failed one and recovery can run
//! one after the process is gone, exactly like a provider's undo.

use provisio_engine::model::Format;
use provisio_engine::provider::ProviderRegistry;
use provisio_engine::request::{parse_namespaces, parse_request};
use provisio_engine::testing::RecordingProvider;
use provisio_engine::txn::{recovery, DurableJournal, Guarded, Record, SealKey};
use provisio_engine::Catalog;
use provisio_engine::ScriptLimits;
use provisio_engine::{Engine, EngineOptions, RetryOptions, TxnState};
use provisio_engine::{Space, Store};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// `make` creates `x` through a nested call; its undo script counts to `data.count` (so a
/// tight operations limit makes it fail) and checks it still sees the secret password; `last`
/// fails when poisoned.
const NS: &str = r#"
namespace: T
procedures:
  Scripted:
    access: public
    parallel: false
    inputs:
      password: { type: string, secret: true }
      count: { type: int }
    steps:
      make:
        script: |
          let a = call_procedure("Rec Provider/Create", #{ name: "x" });
          #{ made: a.id }
        undo: |
          let n = 0;
          while n < data.count { n += 1; }
          if data.password.len() != 16 { throw "the undo script lost the password"; }
          if result.made != "id-x" { throw "the undo script lost the result"; }
        calls: [Rec Provider/Create]
      last:
        call: Rec Provider/Create
        with: { name: "last" }
"#;

const REQUEST: &str = "call: T/Scripted\ndata: { password: Pw-undo-secret-1, count: 3000 }\n";

struct World {
    rec: RecordingProvider,
    journal: Arc<DurableJournal>,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    let dir = tempfile::tempdir().expect("temp dir");
    // sled, or PostgreSQL with PROVISIO_TEST_STORE=postgres.
    let store = provisio_engine::testing::open_store(
        dir.path(),
        provisio_test_support::postgres::store_url(dir.path()),
    );
    let journal = Arc::new(DurableJournal::new(
        store.clone(),
        Some(SealKey::parse(KEY).expect("key")),
        "tester (uid 1000)",
    ));
    World {
        rec: RecordingProvider::new("Rec"),
        journal,
        store,
        _dir: dir,
    }
}

/// An engine over the namespace and the world's provider and journal, its scripts limited
/// to `max_operations`.
fn engine(w: &World, max_operations: u64) -> Engine {
    let namespaces = parse_namespaces(NS, "test.yaml", Format::Yaml).expect("parses");
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(w.rec.clone()));
    let catalog = Catalog::new(namespaces, &registry)
        .expect("catalog")
        .with_script_limits(ScriptLimits {
            max_operations,
            ..ScriptLimits::default()
        });
    let options = EngineOptions {
        retry: RetryOptions::default()
            .with_intervals(Duration::from_millis(1), Duration::from_millis(1)),
        ..EngineOptions::default()
    };
    Engine::new(catalog, registry, options).with_journal(w.journal.clone())
}

fn request() -> provisio_engine::model::Request {
    parse_request(REQUEST, "req.yaml", Format::Yaml).expect("request parses")
}

#[tokio::test]
async fn a_failed_script_undo_is_retried_by_resume_rollback() {
    let w = world();
    w.rec.poison("last");
    // The undo script needs ~10 operations per loop turn: 1000 are far too few.
    let tight = engine(&w, 1000);
    let r = tight.run(&request()).await.expect("compiles");
    assert_eq!(r.state, TxnState::RollbackFailed, "{:?}", r.failure);
    assert_eq!(r.undone, 1, "the nested Create(x) is undone");
    assert_eq!(r.undo_failures.len(), 1, "{:?}", r.undo_failures);
    assert_eq!(r.undo_failures[0].step, "make");
    assert_eq!(r.undo_failures[0].target, "(script undo)");
    assert!(
        r.undo_failures[0].message.contains("operations"),
        "{}",
        r.undo_failures[0].message
    );

    // The undo script and its inputs are in the journal; the inputs hold the secret
    // password, so they are sealed, and the password is nowhere in the store in clear.
    let records = recovery::records(&w.journal, &r.txn_id).expect("records");
    let kept = records
        .iter()
        .find_map(|(_, rec)| match rec {
            Record::ScriptDone {
                step, undo, vars, ..
            } if step == "make" => Some((undo, vars)),
            _ => None,
        })
        .expect("the script step's undo is journaled");
    assert!(
        kept.0.source.contains("while n < data.count"),
        "{:?}",
        kept.0
    );
    assert_eq!(kept.0.file, "test.yaml");
    assert!(matches!(kept.1, Guarded::Sealed(_)), "{:?}", kept.1);
    for space in [
        Space::Journal,
        Space::Txns,
        Space::Audit,
        Space::Definitions,
    ] {
        for (_, v) in w.store.scan(space, b"").expect("scan") {
            assert!(
                !String::from_utf8_lossy(&v).contains("Pw-undo-secret-1"),
                "the password is in clear in {space:?}: {}",
                String::from_utf8_lossy(&v)
            );
        }
    }

    // The operator fixes the cause (raises the limit) and resumes: the undo script runs
    // again, this time to the end.
    let fixed = engine(&w, 1_000_000);
    let resumed = provisio_engine::txn::resume_rollback(&fixed, &w.journal, r.txn_id.as_str())
        .await
        .expect("resumes");
    assert_eq!(
        (resumed.from, resumed.to, resumed.undone),
        (TxnState::RollbackFailed, TxnState::RolledBack, 1),
        "{:?}",
        resumed.problems
    );
    assert!(resumed.problems.is_empty(), "{:?}", resumed.problems);
    // Nothing is undone twice: the provider's undo ran once, before.
    assert_eq!(
        w.rec.log(),
        ["Create(x)", "Create(last)", "undo Create(x)"],
        "{:?}",
        w.rec.log()
    );
    // Once rolled back, there is nothing left to resume.
    let again = provisio_engine::txn::resume_rollback(&fixed, &w.journal, r.txn_id.as_str()).await;
    assert!(again.is_err(), "{again:?}");
}

#[tokio::test]
async fn a_script_undo_without_the_seal_key_is_kept_for_the_operator() {
    let w = world();
    w.rec.poison("last");
    let r = engine(&w, 1000).run(&request()).await.expect("compiles");
    assert_eq!(r.state, TxnState::RollbackFailed);
    // A process without the seal key cannot open the sealed inputs: the undo is not run,
    // the step is named, and the transaction stays resumable.
    let keyless = Arc::new(DurableJournal::new(w.store.clone(), None, "tester"));
    let namespaces = parse_namespaces(NS, "test.yaml", Format::Yaml).expect("parses");
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(w.rec.clone()));
    let e = Engine::new(
        Catalog::new(namespaces, &registry).expect("catalog"),
        registry,
        EngineOptions::default(),
    )
    .with_journal(keyless.clone());
    let out = provisio_engine::txn::resume_rollback(&e, &keyless, r.txn_id.as_str())
        .await
        .expect("runs");
    assert_eq!((out.to, out.undone), (TxnState::RollbackFailed, 0));
    assert!(
        out.problems
            .iter()
            .any(|p| p.contains("step make (script undo)") && p.contains("no seal key")),
        "{:?}",
        out.problems
    );
}
