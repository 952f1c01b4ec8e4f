//! A journal written by an older provisio stays readable: the store in
//! `fixtures/journal-v1` (format 1, see its README) is loaded into a fresh store, then listed,
//! read, recovered and resumed with today's code.

use async_trait::async_trait;
use provisio_engine::data::Element;
use provisio_engine::model::{Format, InputSpec, ProcKind};
use provisio_engine::provider::{
    Call, Done, Outcome, ProcedureSpec, Provider, ProviderError, ProviderRegistry, UndoKind,
};
use provisio_engine::request::parse_namespaces;
use provisio_engine::testing::RecordingProvider;
use provisio_engine::txn::records::{decode, AuditEntry, FORMAT};
use provisio_engine::txn::{recovery, DurableJournal, Guarded, Record, SealKey};
use provisio_engine::Catalog;
use provisio_engine::{Batch, KeyValue, SledStore, Space, Store, StoreError};
use provisio_engine::{Engine, EngineOptions, RetryOptions, TxnState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The seal key the fixture was written with.
const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-v1")
}

/// The provider whose `Wait` was in flight when the fixture's process stopped; here it
/// answers at once, and reports every in-doubt call as not applied.
#[derive(Debug)]
struct Gate;

#[async_trait]
impl Provider for Gate {
    fn name(&self) -> &str {
        "Gate"
    }
    fn procedures(&self) -> Vec<ProcedureSpec> {
        vec![ProcedureSpec {
            name: "Wait".into(),
            kind: ProcKind::Write,
            undo: UndoKind::Reversible,
            description: "waits".into(),
            inputs: vec![InputSpec {
                name: "name".into(),
                ..Default::default()
            }],
        }]
    }
    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        Ok(Outcome {
            execute_data: call.execute_data,
            undo: Some(Element::new("undo")),
        })
    }
    async fn undo(&self, _done: Done) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn recover(&self, _call: &Call) -> Result<Option<Element>, ProviderError> {
        Ok(None)
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex key"))
        .collect()
}

/// A fresh store holding the fixture's keys and values.
async fn load(dir: &Path) -> Arc<SledStore> {
    let store = Arc::new(SledStore::open(dir).expect("store opens"));
    let mut batch = Batch::new();
    let text = std::fs::read_to_string(fixture().join("store.jsonl")).expect("fixture");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("fixture line");
        let space = v["space"].as_str().and_then(|s| s.bytes().next());
        let space = Space::from_tag(space.expect("space")).expect("known space");
        let value = v["value"].as_str().expect("value").as_bytes().to_vec();
        batch.put(space, hex(v["key"].as_str().expect("key")), value);
    }
    store.write(batch, true).await.expect("fixture written");
    store
}

struct Env {
    rec: RecordingProvider,
    engine: Engine,
    journal: Arc<DurableJournal>,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    env_over(|store| store).await
}

/// The environment over the fixture store, as `wrap` presents it to the journal.
async fn env_over(wrap: impl FnOnce(Arc<SledStore>) -> Arc<dyn Store>) -> Env {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = wrap(load(dir.path()).await);
    let journal = Arc::new(DurableJournal::new(
        store,
        Some(SealKey::parse(KEY).expect("key")),
        "test",
    ));
    let yaml = std::fs::read_to_string(fixture().join("namespaces.yaml")).expect("namespaces");
    let namespaces = parse_namespaces(&yaml, "namespaces.yaml", Format::Yaml).expect("parses");
    let rec = RecordingProvider::new("Rec");
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(rec.clone()));
    registry.register(Arc::new(Gate));
    let catalog = Catalog::new(namespaces, &registry).expect("catalog");
    let options = EngineOptions {
        retry: RetryOptions::default()
            .with_intervals(Duration::from_millis(1), Duration::from_millis(1)),
        ..EngineOptions::default()
    };
    let engine = Engine::new(catalog, registry, options).with_journal(journal.clone());
    Env {
        rec,
        engine,
        journal,
        _dir: dir,
    }
}

fn id_of(env: &Env, target: &str, state: TxnState) -> provisio_engine::TxnId {
    let list = recovery::list(&env.journal, Some(state)).expect("summaries read");
    list.into_iter()
        .find(|s| s.target == target)
        .unwrap_or_else(|| panic!("no {state} transaction of {target}"))
        .id
}

#[tokio::test]
async fn summaries_records_and_audit_of_format_1_read() {
    let env = env().await;
    let list = recovery::list(&env.journal, None).expect("summaries read");
    let mut states: Vec<(String, String)> = list
        .iter()
        .map(|s| (s.target.clone(), s.state.to_string()))
        .collect();
    states.sort();
    assert_eq!(
        states,
        [
            ("Fix/Failing", "rollback_failed"),
            ("Fix/Failing", "rolled_back"),
            ("Fix/Interrupted", "running"),
            ("Fix/InterruptedResumable", "running"),
            ("Fix/Provision", "committed"),
        ]
        .map(|(t, s)| (t.to_string(), s.to_string()))
    );
    assert!(list.iter().all(|s| s.format == 1 && s.who == "fixture"));

    // A finished transaction: its records are one compacted array; the secret step's call
    // data is sealed and opens with the key.
    let committed = id_of(&env, "Fix/Provision", TxnState::Committed);
    let records = recovery::records(&env.journal, &committed).expect("records read");
    assert!(matches!(records.first(), Some((0, Record::Started { .. }))));
    assert!(matches!(
        records.last(),
        Some((
            _,
            Record::State {
                state: TxnState::Committed,
                ..
            }
        ))
    ));
    let sealed = records
        .iter()
        .find_map(|(_, r)| match r {
            Record::Intent {
                step,
                call_data: g @ Guarded::Sealed(_),
                ..
            } if step == "secret" => Some(g.clone()),
            _ => None,
        })
        .expect("the secret step's call data is sealed");
    let opened = env.journal.unguard(&sealed).expect("opens with the key");
    assert_eq!(
        opened.child("name").map(|n| n.string_value()),
        Some("s3cret-a".to_string())
    );

    // An unfinished transaction: one record per key, in order.
    let running = id_of(&env, "Fix/Interrupted", TxnState::Running);
    let kinds: Vec<&str> = recovery::records(&env.journal, &running)
        .expect("records read")
        .iter()
        .map(|(_, r)| match r {
            Record::Started { .. } => "started",
            Record::Intent { .. } => "intent",
            Record::Done { .. } => "done",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["started", "intent", "done", "intent"]);

    let audit = env.journal.store().scan(Space::Audit, b"").expect("audit");
    assert_eq!(audit.len(), 3);
    for (_, v) in audit {
        let entry: AuditEntry = decode(&v).expect("audit entry reads");
        assert_eq!((entry.format, entry.who.as_str()), (1, "fixture"));
    }
}

#[tokio::test]
async fn in_flight_transactions_of_format_1_recover_and_resume() {
    let env = env().await;
    let found = provisio_engine::txn::recover(&env.engine, &env.journal)
        .await
        .expect("recovery runs");
    let mut outcomes: Vec<(TxnState, TxnState, usize, usize)> = found
        .iter()
        .map(|r| (r.from, r.to, r.undone, r.in_doubt))
        .collect();
    outcomes.sort_by_key(|o| o.1.to_string());
    // Interrupted: `make` undone, `wait` in doubt (not applied). InterruptedResumable: the
    // pinned definitions compile again, `make` is replayed and `wait` runs again.
    assert_eq!(
        outcomes,
        [
            (TxnState::Running, TxnState::Committed, 0, 1),
            (TxnState::Running, TxnState::RolledBack, 1, 1),
        ],
        "{found:?}"
    );
    assert!(found.iter().all(|r| r.problems.is_empty()), "{found:?}");
    assert_eq!(env.rec.log(), ["undo Create(d)"]);
    let resumed = id_of(&env, "Fix/InterruptedResumable", TxnState::Committed);
    let records = recovery::records(&env.journal, &resumed).expect("records read");
    let waits: Vec<u32> = records
        .iter()
        .filter_map(|(_, r)| match r {
            Record::Done { step, attempt, .. } if step == "wait" => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(waits, [2], "the in-doubt call is made again as attempt 2");
    // What today's code appended is in today's format.
    let summary = recovery::resolve(&env.journal, resumed.as_str()).expect("summary");
    assert_eq!(summary.format, FORMAT);
}

#[tokio::test]
async fn a_rollback_failed_transaction_of_format_1_resumes_its_rollback() {
    let env = env().await;
    let failed = id_of(&env, "Fix/Failing", TxnState::RollbackFailed);
    let r = provisio_engine::txn::resume_rollback(&env.engine, &env.journal, failed.as_str())
        .await
        .expect("resumes");
    assert_eq!((r.to, r.undone), (TxnState::RolledBack, 1), "{r:?}");
    assert_eq!(env.rec.log(), ["undo Create(c)"]);
}

/// The fixture store refusing every write (a full disk), reads working.
struct Unwritable(Arc<SledStore>);

#[async_trait]
impl Store for Unwritable {
    async fn write(&self, _: Batch, _: bool) -> Result<(), StoreError> {
        Err(StoreError::Io("No space left on device".into()))
    }
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(space, key)
    }
    fn scan(&self, space: Space, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        self.0.scan(space, prefix)
    }
}

#[tokio::test]
async fn recovery_that_cannot_journal_undoes_nothing_and_says_so() {
    let env = env_over(|store| Arc::new(Unwritable(store))).await;
    let failed = id_of(&env, "Fix/Failing", TxnState::RollbackFailed);
    let e = provisio_engine::txn::resume_rollback(&env.engine, &env.journal, failed.as_str())
        .await
        .expect_err("the rollback cannot be journaled");
    assert!(
        matches!(e, provisio_engine::txn::RecoveryError::Journal { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("No space left on device"), "{e}");
    assert!(e.to_string().contains("provisio recover"), "{e}");
    // Nothing was undone behind the journal's back.
    assert!(env.rec.log().is_empty(), "{:?}", env.rec.log());
}
