//! The engine tells the providers a transaction called when it is over
//! (`Provider::transaction_over`): once it is committed or rolled back and journaled so,
//! never while it may still need its providers' undo state (`rollback_failed`); a provider
//! it never called is not told (nothing of it to drop, and no work on every transaction).
//! A transaction whose end could not be journaled is not over: recovery finishes it, and
//! then tells the providers (when it rolls one back, every registered provider: its plan
//! reads no provider names).

use async_trait::async_trait;
use provisio_engine::model::Format;
use provisio_engine::provider::CallContext;
use provisio_engine::provider::ProviderRegistry;
use provisio_engine::request::parse_request;
use provisio_engine::testing::RecordingProvider;
use provisio_engine::txn::DurableJournal;
use provisio_engine::{Call, Catalog, Done, Element, Outcome, ProcedureSpec, Provider};
use provisio_engine::{Engine, EngineOptions, Journal, ProviderError, SledStore, TxnState};
use provisio_engine::{JournalError, ScriptUndoDone, StepDone, StepIntent, TxnId, TxnStart};
use std::sync::{Arc, Mutex};

/// The recording provider, noting the transactions it is told are over.
struct Watching {
    inner: RecordingProvider,
    over: Mutex<Vec<String>>,
    /// Its undos fail while set.
    undo_fails: std::sync::atomic::AtomicBool,
}

impl Watching {
    fn new(inner: RecordingProvider) -> Arc<Watching> {
        Arc::new(Watching {
            inner,
            over: Mutex::new(Vec::new()),
            undo_fails: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

#[async_trait]
impl Provider for Watching {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn procedures(&self) -> Vec<ProcedureSpec> {
        self.inner.procedures()
    }
    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        self.inner.execute(call).await
    }
    async fn undo(&self, done: Done) -> Result<(), ProviderError> {
        if self.undo_fails.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ProviderError::permanent("the backend refuses"));
        }
        self.inner.undo(done).await
    }
    async fn recover(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        self.inner.recover(call).await
    }
    async fn transaction_over(&self, txn_id: &str) {
        self.over.lock().unwrap().push(txn_id.to_string());
    }
}

async fn run(steps: &str, poison_undo: bool) -> (TxnState, String, Vec<String>) {
    let rec = RecordingProvider::new("Rec");
    if poison_undo {
        rec.poison_undo("a");
    }
    let watching = Watching::new(rec);
    let idle = Watching::new(RecordingProvider::new("Idle"));
    let mut registry = ProviderRegistry::new();
    registry.register(watching.clone());
    registry.register(idle.clone());
    let catalog = Catalog::new(Vec::new(), &registry).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "test"));
    let engine = Engine::new(catalog, registry, EngineOptions::default())
        .with_journal(journal as Arc<dyn Journal>);
    let text = format!("<request><procedure>{steps}</procedure></request>");
    let req = parse_request(&text, "t.xml", Format::Xml).unwrap();
    let result = engine.run(&req).await.unwrap();
    drop(engine);
    store.close();
    let over = watching.over.lock().unwrap().clone();
    assert!(
        idle.over.lock().unwrap().is_empty(),
        "a provider the transaction never called was told it is over"
    );
    (result.state, result.txn_id.to_string(), over)
}

const CREATE: &str = r#"<execute namespace="Rec Provider" procedure="Create"><executeData><name>a</name></executeData></execute>"#;
const FAIL: &str = r#"<execute namespace="Rec Provider" procedure="Fail"/>"#;

#[tokio::test]
async fn providers_hear_of_committed_and_rolled_back_transactions_only() {
    let (state, id, over) = run(CREATE, false).await;
    assert_eq!(state, TxnState::Committed);
    assert_eq!(over, [id]);

    let (state, id, over) = run(&format!("{CREATE}{FAIL}"), false).await;
    assert_eq!(state, TxnState::RolledBack);
    assert_eq!(over, [id]);

    let (state, _, over) = run(&format!("{CREATE}{FAIL}"), true).await;
    assert_eq!(state, TxnState::RollbackFailed);
    assert!(over.is_empty(), "{over:?}");
}

/// A durable journal that cannot write a transaction's end (a full disk; with `.1`, the
/// process dies as it writes it: the run is told it was written): every other record goes
/// through.
struct LosesTheEnd(Arc<DurableJournal>, bool);

#[async_trait]
impl Journal for LosesTheEnd {
    async fn txn_started(&self, s: &TxnStart<'_>) -> Result<(), JournalError> {
        self.0.txn_started(s).await
    }
    async fn txn_state(
        &self,
        id: &TxnId,
        state: TxnState,
        message: Option<&str>,
    ) -> Result<(), JournalError> {
        match state {
            TxnState::Committed | TxnState::RolledBack | TxnState::RollbackFailed if self.1 => {
                Ok(())
            }
            TxnState::Committed | TxnState::RolledBack | TxnState::RollbackFailed => {
                Err(JournalError::other("no space left on device"))
            }
            _ => self.0.txn_state(id, state, message).await,
        }
    }
    async fn step_intent(&self, i: &StepIntent<'_>) -> Result<(), JournalError> {
        self.0.step_intent(i).await
    }
    async fn step_done(&self, d: &StepDone<'_>) -> Result<(), JournalError> {
        self.0.step_done(d).await
    }
    async fn step_in_doubt(&self, c: &CallContext, m: &str) -> Result<(), JournalError> {
        self.0.step_in_doubt(c, m).await
    }
    async fn script_done(&self, d: &ScriptUndoDone<'_>) -> Result<(), JournalError> {
        self.0.script_done(d).await
    }
    async fn step_failed(&self, c: &CallContext, m: &str) -> Result<(), JournalError> {
        self.0.step_failed(c, m).await
    }
    async fn undo_done(&self, c: &CallContext, e: Option<&str>) -> Result<(), JournalError> {
        self.0.undo_done(c, e).await
    }
    async fn phase_done(
        &self,
        c: &CallContext,
        p: &str,
        e: Option<&str>,
    ) -> Result<(), JournalError> {
        self.0.phase_done(c, p, e).await
    }
}

/// A transaction whose end could not be journaled, then recovered: what recovery made of it
/// (its final state), and the transactions the provider heard were over after the run and
/// after recovery.
async fn lost_end_then_recovered(
    poison_undo: bool,
) -> (TxnState, String, Vec<String>, Vec<String>) {
    let rec = RecordingProvider::new("Rec");
    if poison_undo {
        rec.poison_undo("a");
    }
    let watching = Watching::new(rec);
    let mut registry = ProviderRegistry::new();
    registry.register(watching.clone());
    let catalog = Catalog::new(Vec::new(), &registry).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "test"));
    let engine = Engine::new(catalog, registry, EngineOptions::default());
    let losing = engine
        .clone()
        .with_journal(Arc::new(LosesTheEnd(journal.clone(), false)) as Arc<dyn Journal>);
    let text = format!("<request><procedure>{CREATE}</procedure></request>");
    let req = parse_request(&text, "t.xml", Format::Xml).unwrap();
    let result = losing.run(&req).await.unwrap();
    // A commit it could not journal is rolled back at once (and that end is lost too).
    assert_ne!(result.state, TxnState::Committed);
    assert!(result.journal_error.is_some());
    let after_run = std::mem::take(&mut *watching.over.lock().unwrap());
    // The journal still says running: recovery (at the next start) finishes it.
    let recovering = engine.with_journal(journal.clone() as Arc<dyn Journal>);
    let found = provisio_engine::txn::recover(&recovering, &journal)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    drop(recovering);
    drop(losing);
    store.close();
    let after_recovery = watching.over.lock().unwrap().clone();
    (
        found[0].to,
        result.txn_id.to_string(),
        after_run,
        after_recovery,
    )
}

#[tokio::test]
async fn a_transaction_finished_by_recovery_is_over_for_its_providers() {
    let (state, id, after_run, after_recovery) = lost_end_then_recovered(false).await;
    assert_eq!(state, TxnState::RolledBack);
    assert!(
        after_run.is_empty(),
        "told before its end was journaled: {after_run:?}"
    );
    assert_eq!(after_recovery, [id]);

    // Recovery's undo fails: rollback_failed keeps what the provider kept.
    let (state, _, after_run, after_recovery) = lost_end_then_recovered(true).await;
    assert_eq!(state, TxnState::RollbackFailed);
    assert!(after_run.is_empty() && after_recovery.is_empty());
}

/// A resumable transaction whose process died as it journaled its commit: recovery resumes
/// it, replaying its one call (no provider is called again), and commits it; the provider
/// named by its journal hears that it is over.
#[tokio::test]
async fn a_transaction_resumed_by_recovery_is_over_for_the_providers_of_its_replayed_calls() {
    const FLOW: &str = r#"
namespace: Flow
procedures:
  Make:
    access: public
    resumable: true
    steps:
      one:
        call: Rec Provider/Create
        with: { name: a }
"#;
    let watching = Watching::new(RecordingProvider::new("Rec"));
    let mut registry = ProviderRegistry::new();
    registry.register(watching.clone());
    let namespaces = provisio_engine::parse_namespaces(FLOW, "flow.yaml", Format::Yaml).unwrap();
    let catalog = Catalog::new(namespaces, &registry).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "test"));
    let engine = Engine::new(catalog, registry, EngineOptions::default());
    let dying = engine
        .clone()
        .with_journal(Arc::new(LosesTheEnd(journal.clone(), true)) as Arc<dyn Journal>);
    let req = parse_request("call: Flow/Make", "req.yaml", Format::Yaml).unwrap();
    let result = dying.run(&req).await.unwrap();
    assert_eq!(result.state, TxnState::Committed, "the process thought so");
    // The process died there: what it told its providers is forgotten with it.
    watching.over.lock().unwrap().clear();
    let recovering = engine.with_journal(journal.clone() as Arc<dyn Journal>);
    let found = provisio_engine::txn::recover(&recovering, &journal)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].to, TxnState::Committed, "{found:?}");
    drop((recovering, dying));
    store.close();
    assert_eq!(*watching.over.lock().unwrap(), [result.txn_id.to_string()]);
}

/// A `rollback_failed` transaction is not over; once `tx resume-rollback` rolls it back,
/// it is, and its providers hear of it.
#[tokio::test]
async fn a_rollback_resumed_by_an_operator_is_over_for_its_providers() {
    let watching = Watching::new(RecordingProvider::new("Rec"));
    watching
        .undo_fails
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut registry = ProviderRegistry::new();
    registry.register(watching.clone());
    let catalog = Catalog::new(Vec::new(), &registry).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "test"));
    let engine = Engine::new(catalog, registry, EngineOptions::default())
        .with_journal(journal.clone() as Arc<dyn Journal>);
    let text = format!("<request><procedure>{CREATE}{FAIL}</procedure></request>");
    let req = parse_request(&text, "t.xml", Format::Xml).unwrap();
    let result = engine.run(&req).await.unwrap();
    assert_eq!(result.state, TxnState::RollbackFailed);
    assert!(watching.over.lock().unwrap().is_empty());
    watching
        .undo_fails
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let resumed = provisio_engine::txn::resume_rollback(&engine, &journal, result.txn_id.as_str())
        .await
        .unwrap();
    assert_eq!(resumed.to, TxnState::RolledBack, "{resumed:?}");
    drop(engine);
    store.close();
    assert_eq!(*watching.over.lock().unwrap(), [result.txn_id.to_string()]);
}
