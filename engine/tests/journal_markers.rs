//! A provider's recovery marker kept in the engine's journal (`Provider::journals_markers`):
//! the engine appends the call's intent without syncing it, the provider's
//! `Call::intent_durable_with` writes its marker after it and one sync makes both durable;
//! recovery (after a crash, or of a call in doubt in the process) hands the last marker to
//! `Provider::recover` (`Call::journaled_marker`). A call given up (step timeout) cannot
//! mark any more; a journal that cannot write the marker fails the call as not applied.

use async_trait::async_trait;
use provisio_engine::model::Format;
use provisio_engine::provider::{CallContext, ProviderRegistry};
use provisio_engine::request::parse_request;
use provisio_engine::testing::RecordingProvider;
use provisio_engine::txn::{records::Record, DurableJournal};
use provisio_engine::{Call, Catalog, Done, Element, Outcome, ProcedureSpec, Provider};
use provisio_engine::{Engine, EngineOptions, Journal, ProviderError, SledStore, TxnState};
use provisio_engine::{JournalError, RetryOptions, StepDone, StepIntent, StepMarker, TxnId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the provider saw in one call of `Create`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    name: String,
    /// `Call::journals_markers`.
    journals_markers: bool,
    /// Syncs of the store before and after the marker (when the test gave the store).
    syncs: Option<(u64, u64)>,
}

/// A call `recover` was asked about: its step and the marker it was given.
type Recovered = (String, Option<Element>);

/// Creates a file per name in `world` (`Create`), after marking it in the journal when the
/// engine keeps its markers; settles a call in doubt from the marker alone (a call with no
/// marker changed nothing). `Flaky` is `Create` whose first attempt marks, then hangs past
/// the step timeout on a thread of its own and marks again.
struct Marking {
    world: PathBuf,
    opts_in: bool,
    /// `Create` marks with `Call::intent_durable_with_blocking` on a thread of its own,
    /// holding the thread `execute` runs on until the mark is written.
    blocking: bool,
    /// `Create` marks with `Call::intent_durable_with_blocking` right in `execute`, on the
    /// runtime's worker (a provider's mistake).
    blocking_on_worker: bool,
    /// The `Create` of this name waits until another call has marked (and so made this
    /// call's intent durable with its sync), then aborts the process before its own mark:
    /// the crash leaves an intent on the disk with no marker after it.
    abort_unmarked: Option<String>,
    store: Option<Arc<SledStore>>,
    seen: Mutex<Vec<Seen>>,
    /// What each `recover` was given: (step, journaled marker).
    recovered: Arc<Mutex<Vec<Recovered>>>,
    /// The late mark of a hung `Flaky` call: its result.
    late: Mutex<Option<std::sync::mpsc::Receiver<Result<(), String>>>>,
}

impl Marking {
    fn new(world: &Path, opts_in: bool) -> Marking {
        std::fs::create_dir_all(world).unwrap();
        Marking {
            world: world.to_path_buf(),
            opts_in,
            blocking: false,
            blocking_on_worker: false,
            abort_unmarked: None,
            store: None,
            seen: Mutex::new(Vec::new()),
            recovered: Arc::default(),
            late: Mutex::new(None),
        }
    }

    fn world(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.world)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn syncs(&self) -> Option<u64> {
        self.store.as_ref().map(|s| s.sync_count())
    }
}

fn marker(name: &str) -> Element {
    let mut m = Element::new("marker");
    m.push(Element::with_text("path", name));
    m
}

fn name_of(ed: &Element) -> String {
    ed.child("name")
        .map(Element::string_value)
        .unwrap_or_default()
}

fn created(name: &str) -> Element {
    let mut undo = Element::new("undo");
    undo.push(Element::with_text("created", name));
    undo
}

#[async_trait]
impl Provider for Marking {
    fn name(&self) -> &str {
        "Mark"
    }
    fn procedures(&self) -> Vec<ProcedureSpec> {
        RecordingProvider::new("Mark").procedures()
    }
    fn journals_markers(&self, _call: &Call) -> bool {
        self.opts_in
    }
    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        let name = name_of(&call.execute_data);
        match call.context.procedure.as_str() {
            "Get" => {
                self.seen.lock().unwrap().push(Seen {
                    name,
                    journals_markers: call.journals_markers(),
                    syncs: None,
                });
                return Ok(Outcome {
                    execute_data: call.execute_data,
                    undo: None,
                });
            }
            "Noop" => {
                // Ignores a mark that failed (breaking its promise): the engine fails the
                // call all the same.
                let _ = call.intent_durable_with(marker(&name)).await;
                return Ok(Outcome {
                    execute_data: call.execute_data,
                    undo: None,
                });
            }
            "Flaky" if call.context.attempt == 1 => {
                let (late_tx, late_rx) = std::sync::mpsc::channel();
                *self.late.lock().unwrap() = Some(late_rx);
                let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
                let first = marker(&format!("{name}-1"));
                let second = marker(&format!("{name}-2"));
                let recovered = self.recovered.clone();
                // A blocking thread outlives the call the engine gives up.
                std::thread::spawn(move || {
                    if let Err(e) = call.intent_durable_with_blocking(first) {
                        let _ = late_tx.send(Err(format!("the first mark failed: {e}")));
                        return;
                    }
                    // Marks again once the engine gave the call up and asked `recover`.
                    for _ in 0..3000 {
                        if !recovered.lock().unwrap().is_empty() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let late = call
                        .intent_durable_with_blocking(second)
                        .map_err(|e| e.to_string());
                    let _ = late_tx.send(late);
                    let _ = done_tx.send(());
                });
                let _ = done_rx.await;
                return Err(ProviderError::permanent("answered too late"));
            }
            _ => {}
        }
        let journals_markers = call.journals_markers();
        if self.abort_unmarked.as_deref() == Some(name.as_str()) {
            for _ in 0..3000 {
                if !self.seen.lock().unwrap().is_empty() {
                    std::process::abort();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("no other call marked");
        }
        let before = self.syncs();
        if journals_markers && self.blocking_on_worker {
            call.intent_durable_with_blocking(marker(&name))?;
        } else if journals_markers && self.blocking {
            let mark = marker(&name);
            std::thread::scope(|s| {
                s.spawn(|| call.intent_durable_with_blocking(mark))
                    .join()
                    .expect("the marking thread")
            })?;
        } else if journals_markers {
            call.intent_durable_with(marker(&name)).await?;
        } else {
            call.intent_durable().await?;
        }
        self.seen.lock().unwrap().push(Seen {
            name: name.clone(),
            journals_markers,
            syncs: before.zip(self.syncs()),
        });
        std::fs::write(self.world.join(&name), b"").unwrap();
        Ok(Outcome {
            execute_data: call.execute_data,
            undo: Some(created(&name)),
        })
    }
    async fn undo(&self, done: Done) -> Result<(), ProviderError> {
        if let Some(c) = done.undo.child("created") {
            let _ = std::fs::remove_file(self.world.join(c.string_value()));
        }
        Ok(())
    }
    async fn recover(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        let marker = call.journaled_marker();
        self.recovered
            .lock()
            .unwrap()
            .push((call.context.step_id.clone(), marker.clone()));
        let Some(marker) = marker else {
            // Nothing was marked: nothing was changed.
            return Ok(None);
        };
        let name = marker.child("path").unwrap().string_value();
        Ok(self.world.join(&name).exists().then(|| created(&name)))
    }
}

/// `Marks/Pair`: two creations, `Marks/ResumablePair` the same, resumed after a crash.
const NAMESPACE: &str = r#"
namespace: Marks
procedures:
  Pair:
    access: public
    steps:
      a:
        call: Mark Provider/Create
        with: { name: a }
      b:
        call: Mark Provider/Create
        needs: [a]
        with: { name: b }
  Both:
    access: public
    steps:
      a:
        call: Mark Provider/Create
        with: { name: a }
      b:
        call: Mark Provider/Create
        with: { name: b }
  ResumablePair:
    access: public
    resumable: true
    steps:
      a:
        call: Mark Provider/Create
        with: { name: a }
      b:
        call: Mark Provider/Create
        needs: [a]
        with: { name: b }
"#;

fn engine(provider: Arc<Marking>, step_timeout: Duration) -> Engine {
    let mut registry = ProviderRegistry::new();
    registry.register(provider);
    let namespaces =
        provisio_engine::request::parse_namespaces(NAMESPACE, "marks.yaml", Format::Yaml).unwrap();
    let catalog = Catalog::new(namespaces, &registry).unwrap();
    let options = EngineOptions {
        retry: RetryOptions::default()
            .with_intervals(Duration::from_millis(1), Duration::from_millis(1)),
        step_timeout,
        ..EngineOptions::default()
    };
    Engine::new(catalog, registry, options)
}

fn step(procedure: &str, name: &str) -> String {
    format!(
        r#"<execute id="{name}" namespace="Mark Provider" procedure="{procedure}"><executeData><name>{name}</name></executeData></execute>"#
    )
}

async fn run(engine: &Engine, steps: &str) -> provisio_engine::TxnResult {
    let text = format!("<request><procedure>{steps}</procedure></request>");
    let req = parse_request(&text, "t.xml", Format::Xml).unwrap();
    engine.run(&req).await.unwrap()
}

/// The records of a transaction as `(kind, step, marker path)`, in journal order.
fn journaled(journal: &DurableJournal, id: &TxnId) -> Vec<Rec> {
    provisio_engine::txn::recovery::records(journal, id)
        .unwrap()
        .into_iter()
        .filter_map(|(_, r)| match r {
            Record::Intent { step, .. } => Some(("intent".into(), step, None)),
            Record::Marker { step, marker, .. } => {
                let path = marker.map(|m| match m {
                    provisio_engine::txn::records::Guarded::Plain(e) => {
                        e.child("path").unwrap().string_value()
                    }
                    other => format!("{other:?}"),
                });
                Some(("marker".into(), step, path))
            }
            Record::Done { step, .. } => Some(("done".into(), step, None)),
            Record::Failed { step, .. } => Some(("failed".into(), step, None)),
            Record::InDoubt { step, .. } => Some(("in_doubt".into(), step, None)),
            _ => None,
        })
        .collect()
}

fn rec(kind: &str, step: &str, path: Option<&str>) -> Rec {
    (kind.into(), step.into(), path.map(str::to_string))
}

/// A journal record as `journaled` gives it.
type Rec = (String, String, Option<String>);

/// What `run_marked` saw: the run's result, the store's syncs during it, the journal's
/// records of it, the provider and the folder holding its world.
struct MarkedRun {
    result: provisio_engine::TxnResult,
    syncs: u64,
    records: Vec<Rec>,
    provider: Arc<Marking>,
    _dir: tempfile::TempDir,
}

/// Runs `calls` creations `f0`, `f1`, … in one transaction (after a one-call warm-up, the
/// store's first writes) on a durable sled journal, the provider marking each (`blocking`:
/// from a thread of its own, holding the one `execute` runs on).
async fn run_marked(calls: u64, blocking: bool) -> MarkedRun {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
    let mut provider = Marking::new(&dir.path().join("world"), true);
    provider.store = Some(store.clone());
    provider.blocking = blocking;
    let provider = Arc::new(provider);
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "test"));
    let e = engine(provider.clone(), Duration::from_secs(60)).with_journal(journal.clone());
    run(&e, &step("Create", "warm")).await;
    let steps: String = (0..calls)
        .map(|i| step("Create", &format!("f{i}")))
        .collect();
    let before = store.sync_count();
    let result = run(&e, &steps).await;
    let syncs = store.sync_count() - before;
    let records = journaled(&journal, &result.txn_id);
    MarkedRun {
        result,
        syncs,
        records,
        provider,
        _dir: dir,
    }
}

/// The records of `calls` creations marked and done one after another: each call's marker
/// after its intent and before its outcome.
fn marked_calls(calls: u64) -> Vec<Rec> {
    (0..calls)
        .flat_map(|i| {
            let s = format!("f{i}");
            [
                rec("intent", &s, None),
                rec("marker", &s, Some(&s)),
                rec("done", &s, None),
            ]
        })
        .collect()
}

#[tokio::test]
async fn a_durable_call_syncs_its_intent_and_marker_once_before_its_effect() {
    const CALLS: u64 = 20;
    let run = run_marked(CALLS, false).await;
    assert_eq!(
        run.result.state,
        TxnState::Committed,
        "{:?}",
        run.result.failure
    );
    // One sync a call (intent and marker together), the final state's, and room for a
    // checkpoint's (two syncs a call would be 40).
    let syncs = run.syncs;
    assert!(
        syncs <= CALLS + 3,
        "{syncs} syncs for {CALLS} calls: more than one a call"
    );
    for seen in run.provider.seen.lock().unwrap().iter() {
        assert!(seen.journals_markers, "{seen:?}");
        let (before, after) = seen.syncs.unwrap();
        assert!(after > before, "the marker was not synced: {seen:?}");
    }
    assert_eq!(run.records, marked_calls(CALLS));
    assert_eq!(run.provider.world().len(), CALLS as usize + 1);
}

/// A blocking mark is written by the thread that makes it, not by a task of the runtime:
/// here the runtime's only thread is held by the provider while another thread marks, so a
/// task handed to the runtime would never run (a deadlock, cut by the timeout). Written in
/// place, each call still makes one sync for its intent and marker.
#[test]
fn a_blocking_mark_is_written_by_the_thread_that_waits_for_it() {
    const CALLS: u64 = 10;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let run = runtime.block_on(run_marked(CALLS, true));
        let made = run.provider.world().len();
        let _ = tx.send((run.result.state, run.syncs, run.records, made));
    });
    let (state, syncs, records, made) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the run ended (a blocking mark waited for a runtime it held)");
    assert_eq!(state, TxnState::Committed);
    assert!(syncs <= CALLS + 3, "{syncs} syncs for {CALLS} calls");
    assert_eq!(records, marked_calls(CALLS));
    assert_eq!(made, CALLS as usize + 1);
}

/// A blocking mark made on a runtime worker (which must never block) fails the call, as a
/// panic, instead of hanging the worker: nothing was marked, so the call is settled as not
/// applied and the transaction rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_mark_on_a_runtime_worker_fails_the_call_and_hangs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
    let mut provider = Marking::new(&dir.path().join("world"), true);
    provider.blocking_on_worker = true;
    let provider = Arc::new(provider);
    let journal = Arc::new(DurableJournal::new(store, None, "test"));
    let e = engine(provider.clone(), Duration::from_secs(20)).with_journal(journal.clone());
    let result = tokio::time::timeout(Duration::from_secs(60), run(&e, &step("Create", "w")))
        .await
        .expect("the run ended (a blocking mark on a worker hung it)");
    assert_eq!(result.state, TxnState::RolledBack, "{:?}", result.failure);
    let failure = result.failure.expect("a failure");
    assert!(
        failure.message.contains("panicked") && failure.message.contains("block"),
        "{failure:?}"
    );
    // Each attempt (the retries a call settled as not applied gets) recovered unmarked.
    let recovered = provider.recovered.lock().unwrap().clone();
    assert!(!recovered.is_empty());
    assert!(
        recovered.iter().all(|r| *r == ("w".to_string(), None)),
        "{recovered:?}"
    );
    assert!(provider.world().is_empty(), "{:?}", provider.world());
}

#[tokio::test]
async fn without_a_durable_journal_or_for_a_read_a_call_gets_no_sink() {
    let dir = tempfile::tempdir().unwrap();
    // No journal (`--ephemeral`): the provider keeps its marker itself.
    let provider = Arc::new(Marking::new(&dir.path().join("world"), true));
    let e = engine(provider.clone(), Duration::from_secs(20));
    let result = run(&e, &step("Create", "a")).await;
    assert_eq!(result.state, TxnState::Committed, "{:?}", result.failure);
    // A durable journal: a read changes nothing, and is not asked.
    let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
    let journal = Arc::new(DurableJournal::new(store, None, "test"));
    let e = engine(provider.clone(), Duration::from_secs(20)).with_journal(journal.clone());
    let result = run(&e, &format!("{}{}", step("Get", "a"), step("Create", "b"))).await;
    assert_eq!(result.state, TxnState::Committed, "{:?}", result.failure);
    let seen: Vec<(String, bool)> = provider
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.name.clone(), s.journals_markers))
        .collect();
    assert_eq!(
        seen,
        [("a".into(), false), ("a".into(), false), ("b".into(), true)]
    );
    // A provider that does not opt in keeps its marker itself.
    let other = Arc::new(Marking::new(&dir.path().join("world2"), false));
    let e = engine(other.clone(), Duration::from_secs(20)).with_journal(journal.clone());
    let result = run(&e, &step("Create", "c")).await;
    assert_eq!(result.state, TxnState::Committed, "{:?}", result.failure);
    assert!(!other.seen.lock().unwrap()[0].journals_markers);
    let records = journaled(&journal, &result.txn_id);
    assert_eq!(records, [rec("intent", "c", None), rec("done", "c", None)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_given_up_cannot_mark_and_is_settled_with_the_marker_written_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
    let provider = Arc::new(Marking::new(&dir.path().join("world"), true));
    let journal = Arc::new(DurableJournal::new(store, None, "test"));
    let e = engine(provider.clone(), Duration::from_secs(1)).with_journal(journal.clone());
    let result = run(&e, &step("Flaky", "h")).await;
    // The first attempt timed out, was settled as not applied from its marker, and the
    // second created it.
    assert_eq!(result.state, TxnState::Committed, "{:?}", result.failure);
    let recovered = provider.recovered.lock().unwrap().clone();
    assert_eq!(recovered, [("h".to_string(), Some(marker("h-1")))]);
    let late = provider.late.lock().unwrap().take().expect("the hung call");
    let late = late
        .recv_timeout(Duration::from_secs(10))
        .expect("the late mark's result");
    let err = late.expect_err("a mark after the call was given up");
    assert!(err.contains("gave the call up"), "{err}");
    let records = journaled(&journal, &result.txn_id);
    assert_eq!(
        records,
        [
            rec("intent", "h", None),
            rec("marker", "h", Some("h-1")),
            rec("in_doubt", "h", None),
            rec("failed", "h", None),
            rec("intent", "h", None),
            rec("marker", "h", Some("h")),
            rec("done", "h", None),
        ]
    );
    assert_eq!(provider.world(), ["h"]);
}

/// The durable journal, failing the marker of one step (a full disk).
struct BrokenMarks {
    inner: Arc<DurableJournal>,
    fail_step: &'static str,
}

#[async_trait]
impl Journal for BrokenMarks {
    fn keeps_markers(&self) -> bool {
        true
    }
    async fn txn_started(&self, s: &provisio_engine::TxnStart<'_>) -> Result<(), JournalError> {
        self.inner.txn_started(s).await
    }
    async fn txn_state(
        &self,
        id: &TxnId,
        state: TxnState,
        message: Option<&str>,
    ) -> Result<(), JournalError> {
        self.inner.txn_state(id, state, message).await
    }
    async fn step_intent(&self, i: &StepIntent<'_>) -> Result<(), JournalError> {
        self.inner.step_intent(i).await
    }
    async fn step_marker(&self, m: &StepMarker<'_>) -> Result<(), JournalError> {
        if m.context.step_id == self.fail_step {
            return Err(JournalError::other(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "No space left on device",
            )));
        }
        self.inner.step_marker(m).await
    }
    async fn step_done(&self, d: &StepDone<'_>) -> Result<(), JournalError> {
        self.inner.step_done(d).await
    }
    async fn step_failed(&self, c: &CallContext, m: &str) -> Result<(), JournalError> {
        self.inner.step_failed(c, m).await
    }
    async fn step_in_doubt(&self, c: &CallContext, m: &str) -> Result<(), JournalError> {
        self.inner.step_in_doubt(c, m).await
    }
    async fn undo_done(&self, c: &CallContext, e: Option<&str>) -> Result<(), JournalError> {
        self.inner.undo_done(c, e).await
    }
}

#[tokio::test]
async fn a_marker_the_journal_cannot_write_fails_the_call_as_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
    let provider = Arc::new(Marking::new(&dir.path().join("world"), true));
    let journal = Arc::new(BrokenMarks {
        inner: Arc::new(DurableJournal::new(store, None, "test")),
        fail_step: "b",
    });
    let e = engine(provider.clone(), Duration::from_secs(20))
        .with_journal(journal.clone() as Arc<dyn Journal>);
    let result = run(
        &e,
        &format!("{}{}", step("Create", "a"), step("Create", "b")),
    )
    .await;
    assert_eq!(result.state, TxnState::RolledBack, "{:?}", result.failure);
    let failure = result.failure.as_ref().expect("a failure");
    assert_eq!(failure.step, "b");
    assert!(
        failure.message.contains("No space left on device")
            && failure.message.contains("not applied"),
        "{failure:?}"
    );
    // b was never created; a was created, then undone.
    assert!(provider.world().is_empty(), "{:?}", provider.world());
    let seen: Vec<String> = provider
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(seen, ["a"]);

    // A provider that returns success after its first mark failed is failed all the same.
    let noop = r#"<execute id="b" namespace="Mark Provider" procedure="Noop"/>"#;
    let result = run(&e, &format!("{}{noop}", step("Create", "c"))).await;
    assert_eq!(result.state, TxnState::RolledBack, "{:?}", result.failure);
    let failure = result.failure.as_ref().expect("a failure");
    assert_eq!(failure.step, "b");
    assert!(failure.message.contains("not applied"), "{failure:?}");
    assert!(provider.world().is_empty(), "{:?}", provider.world());
}

/// The child half of the crash test: runs `Marks/Pair` (or `Marks/ResumablePair` with
/// `PROVISIO_MARKER_CRASH_CASE=resume`) on the journal in `PROVISIO_MARKER_CRASH_DIR`,
/// aborting at the journal write `PROVISIO_CRASH_AT` names.
#[tokio::test]
#[ignore = "run by a_crash_at_any_journal_write_recovers_each_call_with_its_marker"]
async fn marker_crash_child() {
    let Ok(dir) = std::env::var("PROVISIO_MARKER_CRASH_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let store = Arc::new(SledStore::open(&dir.join("store")).unwrap());
    let journal = Arc::new(DurableJournal::new(store, None, "test").with_failpoints_from_env());
    let mut provider = Marking::new(&dir.join("world"), true);
    let case = std::env::var("PROVISIO_MARKER_CRASH_CASE").unwrap_or_default();
    if case == "unmarked" {
        provider.abort_unmarked = Some("a".into());
    }
    let e = engine(Arc::new(provider), Duration::from_secs(20)).with_journal(journal);
    let procedure = match case.as_str() {
        "resume" => "ResumablePair",
        "unmarked" => "Both",
        _ => "Pair",
    };
    let text = format!("call: Marks/{procedure}");
    let req = parse_request(&text, "req.yaml", Format::Yaml).unwrap();
    e.run(&req).await.unwrap();
    std::process::exit(0);
}

/// Whether the crash child ran to its end, aborted at journal write `n` (`when`).
fn crash_child_at(dir: &Path, case: &str, n: u32, when: &str) -> bool {
    crash_child(dir, case)
        .env("PROVISIO_CRASH_AT", n.to_string())
        .env("PROVISIO_CRASH_WHEN", when)
        .status()
        .unwrap()
        .success()
}

/// The crash child of `case` on the journal in `dir`, its output discarded.
fn crash_child(dir: &Path, case: &str) -> std::process::Command {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "--exact",
            "marker_crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PROVISIO_MARKER_CRASH_DIR", dir)
        .env("PROVISIO_MARKER_CRASH_CASE", case)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    child
}

/// The process is aborted at every journal write, before and after the write reaches the
/// disk; recovery then rolls the transaction back. Each call in doubt is recovered with the
/// last marker the journal holds for it (none when the crash came before its sync), and
/// nothing is left behind.
#[tokio::test]
async fn a_crash_at_any_journal_write_recovers_each_call_with_its_marker() {
    crash_at_any_journal_write("rollback").await;
}

/// The same with a resumable transaction: recovery settles the calls in doubt with their
/// markers before resuming it (`settle_before_resuming`), and the resumed run ends it.
#[tokio::test]
async fn a_resumed_transaction_settles_its_calls_in_doubt_with_their_markers() {
    crash_at_any_journal_write("resume").await;
}

async fn crash_at_any_journal_write(case: &str) {
    let (mut with_marker, mut without) = (0, 0);
    for when in ["before", "after"] {
        for n in 1.. {
            let dir = tempfile::tempdir().unwrap();
            let finished = crash_child_at(dir.path(), case, n, when);
            let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
            let journal = Arc::new(DurableJournal::new(store, None, "test"));
            let provider = Arc::new(Marking::new(&dir.path().join("world"), true));
            if finished {
                assert!(n > 6, "suspiciously few journal writes ({n}, {when})");
                assert_eq!(provider.world(), ["a", "b"]);
                break;
            }
            // What the journal holds of each call before recovery: the calls in doubt and
            // their last marker.
            let txns = provisio_engine::txn::recovery::list(&journal, None).unwrap();
            let mut want: BTreeMap<String, Option<Element>> = BTreeMap::new();
            for t in &txns {
                for (_, r) in provisio_engine::txn::recovery::records(&journal, &t.id).unwrap() {
                    match r {
                        Record::Intent { step, .. } => {
                            want.insert(step, None);
                        }
                        Record::Marker {
                            step,
                            marker: Some(provisio_engine::txn::records::Guarded::Plain(m)),
                            ..
                        } => {
                            want.insert(step, Some(m));
                        }
                        Record::Done { step, .. } | Record::Failed { step, .. } => {
                            want.remove(&step);
                        }
                        _ => {}
                    }
                }
            }
            let e = engine(provider.clone(), Duration::from_secs(20)).with_journal(journal.clone());
            let recovered = provisio_engine::recover(&e, &journal).await.unwrap();
            let ended = if case == "resume" {
                TxnState::Committed
            } else {
                TxnState::RolledBack
            };
            for r in &recovered {
                assert_eq!(r.to, ended, "crash at {n} ({when}): {r:?}");
                assert!(r.problems.is_empty(), "crash at {n} ({when}): {r:?}");
            }
            let committed = provisio_engine::txn::recovery::list(&journal, None)
                .unwrap()
                .iter()
                .any(|t| t.state == TxnState::Committed);
            let got: BTreeMap<String, Option<Element>> =
                provider.recovered.lock().unwrap().iter().cloned().collect();
            assert_eq!(got, want, "crash at {n} ({when})");
            with_marker += got.values().filter(|m| m.is_some()).count();
            without += got.values().filter(|m| m.is_none()).count();
            if committed {
                assert_eq!(provider.world(), ["a", "b"], "crash at {n} ({when})");
            } else {
                assert!(
                    provider.world().is_empty(),
                    "crash at {n} ({when}): {:?} left behind",
                    provider.world()
                );
            }
        }
    }
    // Crashes between a call's marker and its outcome were among them.
    assert!(
        with_marker >= 2,
        "{with_marker} calls recovered with a marker"
    );
    eprintln!("{case}: {with_marker} in-doubt calls recovered with a marker, {without} without");
}

/// An intent made durable by another call's sync, its own call crashed before it marked:
/// recovery hands that call no marker (it changed nothing: a provider that journals its
/// markers acts only once one is written), the other call its marker, and the rollback
/// leaves nothing behind. Two calls side by side: `a` waits for `b`'s mark, then the
/// process aborts.
#[tokio::test]
async fn an_intent_made_durable_by_another_calls_sync_is_recovered_without_a_marker() {
    let dir = tempfile::tempdir().unwrap();
    let finished = crash_child(dir.path(), "unmarked")
        .status()
        .unwrap()
        .success();
    assert!(!finished, "the child aborted before a's mark");
    let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
    let journal = Arc::new(DurableJournal::new(store, None, "test"));
    let txns = provisio_engine::txn::recovery::list(&journal, None).unwrap();
    assert_eq!(txns.len(), 1, "{txns:?}");
    let mut records = journaled(&journal, &txns[0].id);
    // The two intents, in whichever order the calls started, then b's marker.
    records[..2].sort();
    assert_eq!(
        records,
        [
            rec("intent", "a", None),
            rec("intent", "b", None),
            rec("marker", "b", Some("b")),
        ]
    );
    let provider = Arc::new(Marking::new(&dir.path().join("world"), true));
    let e = engine(provider.clone(), Duration::from_secs(20)).with_journal(journal.clone());
    let recovered = provisio_engine::recover(&e, &journal).await.unwrap();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0].to, TxnState::RolledBack, "{recovered:?}");
    assert!(recovered[0].problems.is_empty(), "{recovered:?}");
    let mut got = provider.recovered.lock().unwrap().clone();
    got.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        got,
        [
            ("a".to_string(), None),
            ("b".to_string(), Some(marker("b")))
        ]
    );
    assert!(provider.world().is_empty(), "{:?}", provider.world());
}

/// A marker of a call whose data holds secrets is sealed with the seal key, withheld
/// without one; a plain one is kept as it is.
#[tokio::test]
async fn a_secret_marker_is_sealed_or_withheld_like_the_calls_data() {
    use provisio_engine::txn::records::Guarded;
    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    for seal in [None, Some(provisio_engine::SealKey::parse(KEY).unwrap())] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let journal = DurableJournal::new(store, seal.clone(), "test");
        let id = TxnId::new_v7();
        let context = CallContext {
            txn_id: id.clone(),
            step_id: "s".into(),
            attempt: 1,
            namespace: "N".into(),
            procedure: "Create".into(),
        };
        let m = marker("secret-path");
        for secret in [false, true] {
            journal
                .step_marker(&StepMarker {
                    context: &context,
                    marker: Some(&m),
                    secret,
                })
                .await
                .unwrap();
        }
        let kept: Vec<Guarded> = provisio_engine::txn::recovery::records(&journal, &id)
            .unwrap()
            .into_iter()
            .filter_map(|(_, r)| match r {
                Record::Marker { marker, .. } => marker,
                _ => None,
            })
            .collect();
        assert_eq!(kept[0], Guarded::Plain(m.clone()));
        match (&seal, &kept[1]) {
            (None, Guarded::Withheld) => {}
            (Some(_), Guarded::Sealed(s)) => {
                assert!(!s.contains("secret-path"));
                assert_eq!(journal.unguard(&kept[1]).unwrap(), m);
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A provider that changes nothing but keeps a recovery marker per call: in the engine's
/// journal when it may (`journals_markers`), else appended to a file of its own and
/// `fdatasync`ed, overlapping the journal's intent (`awaits_intent`), as the filesystem
/// provider did.
struct NoopMarking {
    into_journal: bool,
    own: Mutex<std::fs::File>,
}

#[async_trait]
impl Provider for NoopMarking {
    fn name(&self) -> &str {
        "Mark"
    }
    fn procedures(&self) -> Vec<ProcedureSpec> {
        RecordingProvider::new("Mark").procedures()
    }
    fn journals_markers(&self, _call: &Call) -> bool {
        self.into_journal
    }
    fn awaits_intent(&self, _call: &Call) -> bool {
        true
    }
    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        let name = name_of(&call.execute_data);
        if call.journals_markers() {
            call.intent_durable_with(marker(&name)).await?;
        } else {
            {
                use std::io::Write;
                let mut own = self.own.lock().unwrap();
                writeln!(own, "{name}").unwrap();
                own.sync_data().unwrap();
            }
            call.intent_durable().await?;
        }
        Ok(Outcome {
            execute_data: call.execute_data,
            undo: Some(created(&name)),
        })
    }
    async fn undo(&self, _done: Done) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn recover(&self, _call: &Call) -> Result<Option<Element>, ProviderError> {
        Ok(None)
    }
}

/// The cost of a call's marker, durable or not: `PROVISIO_MARKER_BENCH` = `journal` (the
/// marker in the journal), `own` (the provider's own synced marker, overlapping the
/// journal's intent) or `ephemeral` (no journal, the provider's own marker);
/// `PROVISIO_MARKER_BENCH_CALLS` calls (10,000) in one transaction, after a warm-up. Prints
/// the time and the store's syncs. Run under `strace -f -c -e trace=fdatasync,fsync` to
/// count every sync of the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: PROVISIO_MARKER_BENCH=journal|own|ephemeral"]
async fn marker_sync_cost() {
    let mode = std::env::var("PROVISIO_MARKER_BENCH").unwrap_or_else(|_| "journal".into());
    let calls: usize = std::env::var("PROVISIO_MARKER_BENCH_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir_in(
        std::env::var("PROVISIO_MARKER_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()),
    )
    .unwrap();
    let own = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("markers"))
        .unwrap();
    let provider = Arc::new(NoopMarking {
        into_journal: mode == "journal",
        own: Mutex::new(own),
    });
    let mut registry = ProviderRegistry::new();
    registry.register(provider);
    let catalog = Catalog::new(Vec::new(), &registry).unwrap();
    let mut e = Engine::new(catalog, registry, EngineOptions::default());
    let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
    if mode != "ephemeral" {
        e = e.with_journal(Arc::new(DurableJournal::new(store.clone(), None, "bench")));
    }
    run(&e, &step("Create", "warm")).await;
    let steps: String = (0..calls)
        .map(|i| step("Create", &format!("f{i}")))
        .collect();
    let text = format!("<request><procedure>{steps}</procedure></request>");
    let req = parse_request(&text, "t.xml", Format::Xml).unwrap();
    let syncs = store.sync_count();
    let started = std::time::Instant::now();
    let result = e.run(&req).await.unwrap();
    let took = started.elapsed();
    assert_eq!(result.state, TxnState::Committed, "{:?}", result.failure);
    eprintln!(
        "marker_sync_cost {mode}: {calls} calls in {took:?} ({:.1} us a call), {} store syncs",
        took.as_secs_f64() * 1e6 / calls as f64,
        store.sync_count() - syncs
    );
}
