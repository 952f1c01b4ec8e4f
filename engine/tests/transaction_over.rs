//! The engine tells the providers a transaction called when it is over
//! (`Provider::transaction_over`): once it is committed or rolled back and journaled so,
//! never while it may still need its providers' undo state (`rollback_failed`); a provider
//! it never called is not told (nothing of it to drop, and no work on every transaction).

use async_trait::async_trait;
use provisio_engine::model::Format;
use provisio_engine::provider::ProviderRegistry;
use provisio_engine::request::parse_request;
use provisio_engine::testing::RecordingProvider;
use provisio_engine::txn::DurableJournal;
use provisio_engine::{Call, Catalog, Done, Element, Outcome, ProcedureSpec, Provider};
use provisio_engine::{Engine, EngineOptions, Journal, ProviderError, SledStore, TxnState};
use std::sync::{Arc, Mutex};

/// The recording provider, noting the transactions it is told are over.
struct Watching {
    inner: RecordingProvider,
    over: Mutex<Vec<String>>,
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
    let watching = Arc::new(Watching {
        inner: rec,
        over: Mutex::new(Vec::new()),
    });
    let idle = Arc::new(Watching {
        inner: RecordingProvider::new("Idle"),
        over: Mutex::new(Vec::new()),
    });
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
