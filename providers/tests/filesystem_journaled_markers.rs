//! The filesystem provider under an engine with a durable journal: its intent markers go
//! into the journal (`Provider::journals_markers`), one sync a call makes the engine's
//! intent and the marker durable together, no `.provisio-state/pending` file is made, and a
//! call whose answer is lost (in doubt) is settled from the journaled marker alone.

use async_trait::async_trait;
use provisio_engine::data::Element;
use provisio_engine::model::Format;
use provisio_engine::provider::{
    Call, Done, Outcome, Preview, ProcedureSpec, Provider, ProviderError, ProviderRegistry,
};
use provisio_engine::request::parse_request;
use provisio_engine::txn::DurableJournal;
use provisio_engine::{
    Catalog, Engine, EngineOptions, RetryOptions, SledStore, TxnResult, TxnState,
};
use provisio_providers::filesystem::FilesystemProvider;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The filesystem provider, every method passed through (the opt-ins too), noting after
/// each call whether the provider's pending folder exists and what each `recover` was
/// given; its first `CreateFolder` with `lose` set applies, then answers "in doubt" (its
/// process died after the change).
struct Watched {
    inner: FilesystemProvider,
    root: PathBuf,
    lose: AtomicBool,
    pending_seen: AtomicBool,
    recovered: Mutex<Vec<Option<Element>>>,
}

impl Watched {
    fn new(root: &Path, lose: bool) -> Watched {
        Watched {
            inner: FilesystemProvider::new(root.to_path_buf()).expect("provider"),
            root: root.to_path_buf(),
            lose: AtomicBool::new(lose),
            pending_seen: AtomicBool::new(false),
            recovered: Mutex::new(Vec::new()),
        }
    }

    fn note_pending(&self) {
        if self.root.join(".provisio-state/pending").exists() {
            self.pending_seen.store(true, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl Provider for Watched {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn procedures(&self) -> Vec<ProcedureSpec> {
        self.inner.procedures()
    }
    fn awaits_intent(&self, call: &Call) -> bool {
        self.inner.awaits_intent(call)
    }
    fn journals_markers(&self, call: &Call) -> bool {
        self.inner.journals_markers(call)
    }
    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        let lose =
            call.context.procedure == "CreateFolder" && self.lose.swap(false, Ordering::SeqCst);
        let result = self.inner.execute(call).await;
        self.note_pending();
        if lose && result.is_ok() {
            return Err(ProviderError::in_doubt(
                "simulated crash after the change was made",
            ));
        }
        result
    }
    async fn undo(&self, done: Done) -> Result<(), ProviderError> {
        self.inner.undo(done).await
    }
    async fn recover(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        self.recovered
            .lock()
            .expect("recovered")
            .push(call.journaled_marker());
        self.inner.recover(call).await
    }
    async fn preview(&self, call: &Call) -> Result<Preview, ProviderError> {
        self.inner.preview(call).await
    }
    async fn transaction_over(&self, txn_id: &str) {
        self.inner.transaction_over(txn_id).await
    }
}

fn engine(provider: Arc<Watched>, store: &Arc<SledStore>) -> Engine {
    let mut registry = ProviderRegistry::new();
    registry.register(provider);
    let catalog = Catalog::new(Vec::new(), &registry).expect("catalog");
    let options = EngineOptions {
        retry: RetryOptions::default()
            .with_intervals(Duration::from_millis(1), Duration::from_millis(1)),
        step_timeout: Duration::from_secs(20),
        ..EngineOptions::default()
    };
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "test"));
    Engine::new(catalog, registry, options).with_journal(journal)
}

fn step(id: &str, procedure: &str, inputs: &[(&str, &str)]) -> String {
    let fields: String = inputs
        .iter()
        .map(|(k, v)| format!("<{k}>{v}</{k}>"))
        .collect();
    format!(
        r#"<execute id="{id}" namespace="Filesystem Provider" procedure="{procedure}"><executeData>{fields}</executeData></execute>"#
    )
}

async fn run(engine: &Engine, steps: &str) -> TxnResult {
    let text = format!("<request><procedure>{steps}</procedure></request>");
    let req = parse_request(&text, "t.xml", Format::Xml).expect("request");
    engine.run(&req).await.expect("compiles")
}

/// Folders, a quota, a move, a file and permissions in one durable transaction: one sync
/// a call (the provider syncs nothing of its own for its markers), no pending file at any
/// point, everything applied.
#[tokio::test]
async fn a_durable_run_makes_one_sync_a_call_and_no_pending_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let store = Arc::new(SledStore::open(&dir.path().join("store")).expect("store"));
    let provider = Arc::new(Watched::new(&root, false));
    let e = engine(provider.clone(), &store);
    // Warm up (the store's first writes), then count.
    let warm = run(&e, &step("warm", "CreateFolder", &[("path", "warm")])).await;
    assert_eq!(warm.state, TxnState::Committed, "{:?}", warm.failure);
    const FOLDERS: u64 = 20;
    let mut steps: String = (0..FOLDERS)
        .map(|i| {
            step(
                &format!("f{i}"),
                "CreateFolder",
                &[("path", &format!("t/f{i}"))],
            )
        })
        .collect();
    steps.push_str(&step(
        "q",
        "SetQuota",
        &[("path", "t/f0"), ("megabytes", "5")],
    ));
    steps.push_str(&step(
        "m",
        "MoveFolder",
        &[("from", "t/f1"), ("to", "t/moved")],
    ));
    steps.push_str(&step(
        "w",
        "WriteFile",
        &[("path", "t/f2/file"), ("content", "hi")],
    ));
    steps.push_str(&step(
        "p",
        "SetPermissions",
        &[("path", "t/f3"), ("mode", "0700")],
    ));
    let calls = FOLDERS + 4;
    let before = store.sync_count();
    let r = run(&e, &steps).await;
    let syncs = store.sync_count() - before;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert!(
        syncs <= calls + 1,
        "{syncs} syncs of the journal for {calls} calls"
    );
    assert!(
        !provider.pending_seen.load(Ordering::SeqCst),
        "a pending file was made"
    );
    assert!(root.join("t/moved").is_dir() && root.join("t/f2/file").is_file());
    assert!(!root.join("t/f1").exists());
}

/// A CreateFolder whose answer is lost after it made its folder (and the parent): the
/// engine settles it from the marker in its journal (`recover` is given it), then a later
/// failure rolls the transaction back, folder and parent included.
#[tokio::test]
async fn an_in_doubt_create_is_settled_from_its_journaled_marker_and_rolled_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let store = Arc::new(SledStore::open(&dir.path().join("store")).expect("store"));
    let provider = Arc::new(Watched::new(&root, true));
    let e = engine(provider.clone(), &store);
    let steps = format!(
        "{}{}",
        step("home", "CreateFolder", &[("path", "home/dave")]),
        // Fails: the folder exists.
        step("again", "CreateFolder", &[("path", "home/dave")]),
    );
    let r = run(&e, &steps).await;
    assert_eq!(r.state, TxnState::RolledBack, "{:?}", r.failure);
    let recovered = provider.recovered.lock().expect("recovered").clone();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    let marker = recovered[0].as_ref().expect("a journaled marker");
    assert!(
        marker.text().contains("home/dave") && marker.attr("v") == Some("1"),
        "{marker:?}"
    );
    assert!(
        !root.join("home").exists(),
        "the folder or its parent stayed"
    );
    assert!(!provider.pending_seen.load(Ordering::SeqCst));
}
