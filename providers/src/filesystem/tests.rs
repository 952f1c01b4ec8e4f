//! Unit tests that need the provider's internals: the blocking work runs off the async
//! runtime (a slowed-down operation neither stalls a current-thread runtime nor outlasts
//! a timeout).

use super::FilesystemProvider;
use provisio_engine::data::Element;
use provisio_engine::provider::{Call, CallContext, Provider};
use provisio_engine::MarkerSink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn call(procedure: &str, inputs: &[(&str, &str)]) -> Call {
    let mut data = Element::new("executeData");
    for (k, v) in inputs {
        data.push(Element::with_text(*k, *v));
    }
    Call {
        intent: provisio_engine::provider::IntentBarrier::passed(),
        state: provisio_engine::ProviderState::detached(),
        context: CallContext {
            txn_id: "0190c0de-0000-7000-8000-0000000000b1"
                .parse()
                .expect("a transaction id"),
            step_id: format!("{procedure}-{}", inputs.len()),
            attempt: 1,
            namespace: "Filesystem Provider".into(),
            procedure: procedure.into(),
        },
        provider_context: Element::new("providerContext"),
        execute_data: data,
    }
}

/// A provider whose every blocking operation first waits (up to 10 s) for a message on
/// the returned sender; the flag tells whether the message (not the time limit) ended
/// the wait.
fn held_provider(root: &Path) -> (FilesystemProvider, mpsc::Sender<()>, Arc<AtomicBool>) {
    let mut p = FilesystemProvider::new(root.to_path_buf()).expect("provider");
    let (release, held) = mpsc::channel::<()>();
    let held = Mutex::new(held);
    let released = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&released);
    Arc::get_mut(&mut p.fs).expect("unshared").before_op = Some(Box::new(move || {
        let rx = held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if rx.recv_timeout(Duration::from_secs(10)).is_ok() {
            flag.store(true, Ordering::SeqCst);
        }
    }));
    (p, release, released)
}

/// On a current-thread runtime, a timer fires while a filesystem call is held inside its
/// blocking work. Run inline (the old way), the call would hold the only runtime thread
/// for the full 10 s and finish before the timer.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_call_does_not_stall_the_runtime() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (p, release, released) = held_provider(tmp.path());
    let exec = p.execute(call("CreateFolder", &[("path", "a")]));
    tokio::pin!(exec);
    tokio::select! {
        biased;
        r = &mut exec => panic!("the call finished while held: {r:?}"),
        () = tokio::time::sleep(Duration::from_millis(50)) => {}
    }
    release.send(()).expect("release");
    let out = exec.await.expect("CreateFolder");
    assert!(
        released.load(Ordering::SeqCst),
        "released by the test, not the limit"
    );
    assert!(out.undo.is_some());
    assert!(tmp.path().join("a").is_dir());
}

/// A step timeout gives up on a held call at once; the call still completes in the
/// background, and `recover` with the same key then reports it applied, so the engine can
/// undo it.
#[tokio::test(flavor = "current_thread")]
async fn a_timeout_interrupts_a_slow_call_and_recover_settles_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (p, release, released) = held_provider(tmp.path());
    let c = call("CreateFolder", &[("path", "late")]);
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_millis(100), p.execute(c.clone())).await;
    assert!(r.is_err(), "the timeout must win: {r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    release.send(()).expect("release");
    // The abandoned call finishes on the blocking pool; wait for its folder.
    let mut waited = 0;
    while !tmp.path().join("late").is_dir() && waited < 200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        waited += 1;
    }
    assert!(released.load(Ordering::SeqCst));
    assert!(tmp.path().join("late").is_dir());
    // `recover` runs through the same hook: let it pass.
    release.send(()).expect("release recover");
    let undo = p.recover(&c).await.expect("recover").expect("applied");
    assert_eq!(
        undo.child("path").map(Element::string_value).as_deref(),
        Some("late")
    );
}

fn call_of(txn: &str, procedure: &str, path: &str) -> Call {
    let mut c = call(procedure, &[("path", path)]);
    c.context.txn_id = txn.parse().expect("a transaction id");
    c
}

/// Two transactions create under one missing parent at once: T2 makes `a` itself (its
/// CreateFolder `a` commits) between T1's look and T1's create of `a/x`. T1 is then in
/// doubt (its process died): recovery must not take `a` as T1's, or rolling T1 back
/// would remove T2's committed folder.
#[tokio::test]
async fn recovery_of_an_in_doubt_create_leaves_a_parent_another_call_made() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let other = FilesystemProvider::new(root.clone()).expect("provider of T2");
    let t2 = call_of("0190c0de-0000-7000-8000-0000000000b2", "CreateFolder", "a");
    let mut p = FilesystemProvider::new(root.clone()).expect("provider of T1");
    let (fs2, once) = (Arc::clone(&other.fs), AtomicBool::new(false));
    let t2_call = t2.clone();
    Arc::get_mut(&mut p.fs).expect("unshared").after_intent = Some(Box::new(move || {
        if !once.swap(true, Ordering::SeqCst) {
            fs2.create_folder(&t2_call).expect("T2 makes `a` meanwhile");
        }
    }));
    let t1 = call_of(
        "0190c0de-0000-7000-8000-0000000000b1",
        "CreateFolder",
        "a/x",
    );
    p.execute(t1.clone()).await.expect("T1's CreateFolder");
    assert!(root.join("a/x").is_dir());
    drop(p);

    // T1's process died before its outcome was journaled: a new one settles it.
    let restarted = FilesystemProvider::new(root.clone()).expect("restarted");
    let undo = restarted
        .recover(&t1)
        .await
        .expect("recover")
        .expect("applied");
    let parents: Vec<String> = undo
        .elements()
        .filter(|e| e.local_name() == "createdParent")
        .map(Element::string_value)
        .collect();
    assert!(parents.is_empty(), "T2's folder taken as T1's: {parents:?}");
    restarted
        .undo(provisio_engine::provider::Done {
            state: provisio_engine::ProviderState::detached(),
            context: t1.context.clone(),
            provider_context: t1.provider_context.clone(),
            undo,
            execute_data: None,
        })
        .await
        .expect("T1 rolled back");
    assert!(!root.join("a/x").exists());
    assert!(root.join("a").is_dir(), "T2's committed folder was removed");
}

/// A call the engine gave up on (its step timed out) whose work starts only after the
/// transaction is over: it is refused before any change, and leaves no intent file (one
/// made then would stay until a purge).
#[tokio::test(flavor = "current_thread")]
async fn a_call_that_outlives_its_transaction_is_refused_and_leaves_no_intent_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut p = FilesystemProvider::new(tmp.path().to_path_buf()).expect("provider");
    // Only the first blocking operation (the call's) waits for the test.
    let (release, held) = mpsc::channel::<()>();
    let (held, first) = (Mutex::new(held), AtomicBool::new(true));
    Arc::get_mut(&mut p.fs).expect("unshared").before_op = Some(Box::new(move || {
        if first.swap(false, Ordering::SeqCst) {
            let rx = held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }));
    let c = call("CreateFolder", &[("path", "late")]);
    let r = tokio::time::timeout(Duration::from_millis(100), p.execute(c.clone())).await;
    assert!(r.is_err(), "the timeout must win: {r:?}");
    // The engine settles the call (not applied: nothing is there yet), rolls back, and
    // says the transaction is over.
    let txn = c.context.txn_id.to_string();
    p.transaction_over(&txn).await;
    release.send(()).expect("release");
    // The abandoned call now runs to its end on the blocking pool: refused.
    let pending = tmp.path().join(".provisio-state/pending");
    let refused = p.execute(call("CreateFolder", &[("path", "later")])).await;
    let e = refused.expect_err("a call of a transaction that is over");
    assert!(e.to_string().contains("is over"), "{e}");
    // Its blocking task holds the provider's state until it ends.
    let mut waited = 0;
    while Arc::strong_count(&p.fs) > 1 && waited < 400 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        waited += 1;
    }
    assert_eq!(
        Arc::strong_count(&p.fs),
        1,
        "the abandoned call never ended"
    );
    assert!(!tmp.path().join("late").exists(), "applied after its end");
    let left: Vec<_> = std::fs::read_dir(&pending)
        .map(|rd| rd.map(|e| e.expect("entry").file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "intent files left: {left:?}");
}

/// CreateFolder called before the engine's intent is durable (`awaits_intent`): its
/// marker is made durable at once, its folder only once the barrier passes.
#[tokio::test]
async fn create_folder_makes_its_folder_only_after_the_engines_intent_is_durable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = FilesystemProvider::new(tmp.path().to_path_buf()).expect("provider");
    let mut c = call("CreateFolder", &[("path", "gated")]);
    assert!(p.awaits_intent(&c));
    let (barrier, gate) = provisio_engine::provider::IntentBarrier::closed();
    c.intent = barrier;
    let key = c.context.idempotency_key();
    let fs = Arc::clone(&p.fs);
    let engine_side = async move {
        // The provider's marker is durable while the engine's intent is not.
        let mut waited = 0;
        while super::pending::read(&fs.dir, &fs.intent_logs, &key)
            .expect("read the marker")
            .is_none()
        {
            assert!(waited < 500, "no intent marker written");
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let early = tmp.path().join("gated").exists();
        gate.open(Ok(()));
        (early, tmp)
    };
    let (made, (early, tmp)) = tokio::join!(p.execute(c), engine_side);
    assert!(
        !early,
        "the folder was made before the engine's intent was durable"
    );
    made.expect("CreateFolder");
    assert!(tmp.path().join("gated").is_dir());
}

/// When the engine cannot journal its intent, CreateFolder changes nothing, removes its
/// marker and says it was not applied (and `recover` agrees).
#[tokio::test]
async fn create_folder_whose_engine_intent_failed_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = FilesystemProvider::new(tmp.path().to_path_buf()).expect("provider");
    let mut c = call("CreateFolder", &[("path", "a/refused")]);
    let (barrier, gate) = provisio_engine::provider::IntentBarrier::closed();
    c.intent = barrier;
    gate.open(Err("No space left on device".into()));
    let e = p.execute(c.clone()).await.expect_err("not applied");
    assert!(e.to_string().contains("not applied"), "{e}");
    assert!(e.to_string().contains("No space left on device"), "{e}");
    assert!(!tmp.path().join("a").exists(), "a parent was made");
    let marker = super::pending::read(&p.fs.dir, &p.fs.intent_logs, &c.context.idempotency_key())
        .expect("read the marker");
    assert!(marker.is_none(), "the marker stayed: {marker:?}");
    c.intent = provisio_engine::provider::IntentBarrier::passed();
    assert_eq!(p.recover(&c).await.expect("recover"), None);
}

/// The procedures whose every change follows the barrier opt in; the others are called
/// once the intent is durable.
#[test]
fn only_procedures_that_wait_before_their_change_opt_in() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = FilesystemProvider::new(tmp.path().to_path_buf()).expect("provider");
    assert!(p.awaits_intent(&call("MoveFolder", &[("from", "a"), ("to", "b")])));
    assert!(p.awaits_intent(&call("WriteFile", &[("path", "f")])));
    assert!(!p.awaits_intent(&call("WriteFile", &[("path", "f"), ("overwrite", "true")])));
    assert!(!p.awaits_intent(&call("DeleteFolder", &[("path", "a")])));
    assert!(!p.awaits_intent(&call("SetQuota", &[("path", "a")])));
}

/// Plays the engine's journal for calls whose markers it keeps: it keeps every marker it
/// is asked to make durable, notes whether `watched` (under the root) existed at that
/// moment, or fails as a broken journal.
#[derive(Debug, Default)]
struct KeptMarkers {
    marks: Mutex<Vec<Option<Element>>>,
    watched: Option<std::path::PathBuf>,
    seen_at_mark: Mutex<Vec<bool>>,
    broken: bool,
}

impl KeptMarkers {
    fn watching(path: std::path::PathBuf) -> Arc<KeptMarkers> {
        Arc::new(KeptMarkers {
            watched: Some(path),
            ..KeptMarkers::default()
        })
    }

    fn markers(&self) -> Vec<super::records::Marker> {
        self.marks
            .lock()
            .expect("marks")
            .iter()
            .flatten()
            .map(|e| super::records::Marker::from_element("test", e).expect("a marker"))
            .collect()
    }
}

#[async_trait::async_trait]
impl MarkerSink for KeptMarkers {
    async fn mark(&self, marker: Option<Element>) -> Result<(), String> {
        if self.broken {
            return Err("the journal's disk is full".into());
        }
        if let Some(path) = &self.watched {
            self.seen_at_mark.lock().expect("seen").push(path.exists());
        }
        self.marks.lock().expect("marks").push(marker);
        Ok(())
    }

    fn is_durable(&self) -> bool {
        !self.marks.lock().expect("marks").is_empty()
    }

    fn last(&self) -> Option<Element> {
        self.marks
            .lock()
            .expect("marks")
            .iter()
            .rev()
            .find_map(Clone::clone)
    }
}

fn with_sink(mut c: Call, sink: &Arc<KeptMarkers>) -> Call {
    let sink: Arc<dyn MarkerSink> = sink.clone();
    c.intent = provisio_engine::provider::IntentBarrier::with_sink(sink);
    c
}

fn recovered(mut c: Call, marker: Option<Element>) -> Call {
    c.intent = provisio_engine::provider::IntentBarrier::recovered(marker);
    c
}

/// The transaction files under `.provisio-state/pending` (none when the folder is not
/// there).
fn pending_files(root: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(root.join(".provisio-state/pending"))
        .map(|rd| rd.map(|e| e.expect("entry").file_name()).collect())
        .unwrap_or_default()
}

/// No intent marker of the provider's own is on the disk (the engine journaled them).
fn assert_no_pending_file(root: &Path) {
    let left = pending_files(root);
    assert!(left.is_empty(), "pending files: {left:?}");
}

fn undo_paths(undo: &Element, name: &str) -> Vec<String> {
    undo.elements()
        .filter(|e| e.local_name() == name)
        .map(Element::string_value)
        .collect()
}

fn done_of(c: &Call, undo: Element) -> provisio_engine::provider::Done {
    provisio_engine::provider::Done {
        state: provisio_engine::ProviderState::detached(),
        context: c.context.clone(),
        provider_context: c.provider_context.clone(),
        undo,
        execute_data: None,
    }
}

/// With the engine keeping its marker, CreateFolder gives the marker to the journal
/// before its first change (no parent and no folder exist when the journal syncs it) and
/// writes no pending file; a restarted provider settles the call from the journaled
/// marker alone, with the parents the call made, and its undo removes them.
#[tokio::test]
async fn create_folder_with_a_sink_journals_its_marker_instead_of_a_pending_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let p = FilesystemProvider::new(root.clone()).expect("provider");
    let sink = KeptMarkers::watching(root.join("a"));
    let c = with_sink(call("CreateFolder", &[("path", "a/b/c")]), &sink);
    assert!(p.journals_markers(&c));
    p.execute(c.clone()).await.expect("CreateFolder");
    assert!(root.join("a/b/c").is_dir());
    assert_eq!(
        sink.markers(),
        vec![super::records::Marker::CreateFolder {
            path: "a/b/c".into(),
            missing_parents: vec!["a".into(), "a/b".into()],
        }]
    );
    assert_eq!(
        *sink.seen_at_mark.lock().expect("seen"),
        vec![false],
        "a parent was made before the marker was journaled"
    );
    assert_no_pending_file(&root);

    drop(p);
    let restarted = FilesystemProvider::new(root.clone()).expect("restarted");
    let in_doubt = recovered(c.clone(), sink.last());
    let undo = restarted
        .recover(&in_doubt)
        .await
        .expect("recover")
        .expect("applied");
    assert_eq!(undo_paths(&undo, "path"), vec!["a/b/c".to_string()]);
    assert_eq!(
        undo_paths(&undo, "createdParent"),
        vec!["a/b".to_string(), "a".to_string()]
    );
    restarted
        .undo(done_of(&c, undo))
        .await
        .expect("rolled back");
    assert!(!root.join("a").exists(), "the parents the call made stayed");
    assert_no_pending_file(&root);
}

/// A journaled marker of a call that did not get to its change (the folder is not there):
/// not applied, and nothing is written for it.
#[tokio::test]
async fn a_journaled_marker_without_its_change_is_not_applied() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let p = FilesystemProvider::new(root.clone()).expect("provider");
    let c = call("CreateFolder", &[("path", "a/b")]);
    let marker = super::records::Marker::CreateFolder {
        path: "a/b".into(),
        missing_parents: vec!["a".into()],
    }
    .to_element()
    .expect("marker");
    // The parent is there (the crash came between the two creates), the folder not.
    std::fs::create_dir(root.join("a")).expect("a");
    assert_eq!(
        p.recover(&recovered(c.clone(), Some(marker)))
            .await
            .expect("recover"),
        None
    );
    // Neither a journaled marker nor a pending one: the call never got past its checks.
    assert_eq!(p.recover(&recovered(c, None)).await.expect("recover"), None);
    assert_no_pending_file(&root);
}

/// A parent made by another call between CreateFolder's look and its create narrows the
/// journaled marker (a second mark, before the folder exists): recovery from the last
/// journaled marker does not take that parent as the call's.
#[tokio::test]
async fn a_narrowed_marker_is_journaled_again_and_recovery_leaves_the_other_calls_parent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let other = FilesystemProvider::new(root.clone()).expect("provider of T2");
    let t2 = call_of("0190c0de-0000-7000-8000-0000000000b2", "CreateFolder", "a");
    let mut p = FilesystemProvider::new(root.clone()).expect("provider of T1");
    let (fs2, once) = (Arc::clone(&other.fs), AtomicBool::new(false));
    Arc::get_mut(&mut p.fs).expect("unshared").after_intent = Some(Box::new(move || {
        if !once.swap(true, Ordering::SeqCst) {
            fs2.create_folder(&t2).expect("T2 makes `a` meanwhile");
        }
    }));
    let sink = KeptMarkers::watching(root.join("a/x"));
    let t1 = with_sink(
        call_of(
            "0190c0de-0000-7000-8000-0000000000b1",
            "CreateFolder",
            "a/x",
        ),
        &sink,
    );
    p.execute(t1.clone()).await.expect("T1's CreateFolder");
    assert!(root.join("a/x").is_dir());
    let folder = |parents: &[&str]| super::records::Marker::CreateFolder {
        path: "a/x".into(),
        missing_parents: parents.iter().map(|p| p.to_string()).collect(),
    };
    assert_eq!(sink.markers(), vec![folder(&["a"]), folder(&[])]);
    assert_eq!(*sink.seen_at_mark.lock().expect("seen"), vec![false, false]);
    // T2 ran without a sink: its marker is in its pending file; T1 has none there.
    let t1_key = t1.context.idempotency_key();
    assert!(super::pending::read(&p.fs.dir, &p.fs.intent_logs, &t1_key)
        .expect("read")
        .is_none());
    drop(p);

    let restarted = FilesystemProvider::new(root.clone()).expect("restarted");
    let in_doubt = recovered(t1.clone(), sink.last());
    let undo = restarted
        .recover(&in_doubt)
        .await
        .expect("recover")
        .expect("applied");
    assert!(
        undo_paths(&undo, "createdParent").is_empty(),
        "T2's folder taken as T1's"
    );
    restarted
        .undo(done_of(&t1, undo))
        .await
        .expect("T1 rolled back");
    assert!(!root.join("a/x").exists());
    assert!(root.join("a").is_dir(), "T2's committed folder was removed");
}

/// When the engine cannot journal the intent and marker, CreateFolder changes nothing
/// and fails with the journal's reason; no pending file either.
#[tokio::test]
async fn create_folder_whose_journaled_marker_failed_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let p = FilesystemProvider::new(root.clone()).expect("provider");
    let sink = Arc::new(KeptMarkers {
        broken: true,
        ..KeptMarkers::default()
    });
    let c = with_sink(call("CreateFolder", &[("path", "a/refused")]), &sink);
    let e = p.execute(c.clone()).await.expect_err("not applied");
    assert!(e.to_string().contains("the journal's disk is full"), "{e}");
    assert!(!root.join("a").exists(), "a parent was made");
    assert_no_pending_file(&root);
    assert_eq!(p.recover(&recovered(c, None)).await.expect("recover"), None);
}

/// A call with a sink that reaches its marker after its transaction is over (its step
/// timed out) is refused before the journal is asked, as one with a pending file is.
#[tokio::test]
async fn a_call_with_a_sink_of_a_transaction_that_is_over_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = FilesystemProvider::new(tmp.path().to_path_buf()).expect("provider");
    let sink = Arc::new(KeptMarkers::default());
    let c = with_sink(call("CreateFolder", &[("path", "late")]), &sink);
    p.transaction_over(c.context.txn_id.as_ref()).await;
    let e = p.execute(c).await.expect_err("over");
    assert!(e.to_string().contains("is over"), "{e}");
    assert!(sink.marks.lock().expect("marks").is_empty());
    assert!(!tmp.path().join("late").exists());
}

/// Without a sink (`--ephemeral`, a call built by hand) the marker goes to the pending
/// file, as before.
#[tokio::test]
async fn without_a_sink_the_marker_goes_to_the_pending_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = FilesystemProvider::new(tmp.path().to_path_buf()).expect("provider");
    let c = call("CreateFolder", &[("path", "a/b")]);
    assert!(!c.journals_markers());
    p.execute(c.clone()).await.expect("CreateFolder");
    let marker = super::pending::read(&p.fs.dir, &p.fs.intent_logs, &c.context.idempotency_key())
        .expect("read");
    assert_eq!(
        marker,
        Some(super::records::Marker::CreateFolder {
            path: "a/b".into(),
            missing_parents: vec!["a".into()],
        })
    );
    assert_eq!(pending_files(tmp.path()).len(), 1);
}

/// The other procedures that opt in: each journals its marker before its change and
/// writes no pending file, and recovery from the journaled marker finds it applied.
#[tokio::test]
async fn move_write_quota_and_permissions_journal_their_markers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let p = FilesystemProvider::new(root.clone()).expect("provider");
    std::fs::create_dir(root.join("src")).expect("src");
    let cases: Vec<(Call, &str, &str)> = vec![
        (
            call("MoveFolder", &[("from", "src"), ("to", "dst")]),
            "dst",
            "moveBack",
        ),
        (
            call("WriteFile", &[("path", "dst/f"), ("content", "hi")]),
            "dst/f",
            "removeFile",
        ),
        (
            call("SetQuota", &[("path", "dst"), ("megabytes", "5")]),
            "",
            "restoreQuota",
        ),
        (
            call("SetPermissions", &[("path", "dst"), ("mode", "0700")]),
            "",
            "restorePermissions",
        ),
        (
            call("CreateDirectory", &[("dirName", "mps")]),
            "mps",
            "removeFolder",
        ),
    ];
    for (mut c, made, undo_op) in cases {
        if c.context.procedure == "CreateDirectory" {
            let mut source = Element::new("sourcePath");
            source.set_attr("path", ".");
            c.execute_data.push(source);
            c.context.namespace = "File System Provider".into();
        }
        let sink = KeptMarkers::watching(root.join(if made.is_empty() { "-" } else { made }));
        let c = with_sink(c, &sink);
        let what = c.context.procedure.clone();
        assert!(p.journals_markers(&c), "{what}");
        p.execute(c.clone())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(sink.markers().len(), 1, "{what}");
        assert_eq!(
            *sink.seen_at_mark.lock().expect("seen"),
            vec![false],
            "{what}"
        );
        if !made.is_empty() {
            assert!(root.join(made).exists(), "{what}");
        }
        let undo = p
            .recover(&recovered(c, sink.last()))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .unwrap_or_else(|| panic!("{what}: not applied"));
        assert_eq!(
            undo.child("op").map(Element::string_value).as_deref(),
            Some(undo_op),
            "{what}"
        );
    }
    assert_no_pending_file(&root);
}

/// A journaled marker that does not decode: recovery says it cannot tell, it does not
/// guess "not applied".
#[tokio::test]
async fn an_unreadable_journaled_marker_is_an_error_in_recovery() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = FilesystemProvider::new(tmp.path().to_path_buf()).expect("provider");
    let c = call("CreateFolder", &[("path", "a")]);
    let mut bad = Element::with_text("marker", "{\"op\":\"Frobnicate\"}");
    bad.set_attr("v", "1");
    let e = p
        .recover(&recovered(c, Some(bad)))
        .await
        .expect_err("cannot tell");
    assert!(e.to_string().contains("check by hand"), "{e}");
}

/// Exactly the procedures whose execute marks through `Fs::mark` before any change opt
/// in to journaled markers.
#[test]
fn the_procedures_that_journal_their_markers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = FilesystemProvider::new(tmp.path().to_path_buf()).expect("provider");
    for yes in [
        call("CreateFolder", &[("path", "a")]),
        call("MoveFolder", &[("from", "a"), ("to", "b")]),
        call("WriteFile", &[("path", "f")]),
        call("WriteFile", &[("path", "f"), ("overwrite", "true")]),
        call("StageFolder", &[("path", "a")]),
        call("StageFile", &[("path", "a")]),
        call("SetQuota", &[("path", "a")]),
        call("SetOwner", &[("path", "a")]),
        call("SetPermissions", &[("path", "a")]),
        call("CreateDirectory", &[]),
        call("MoveDirectory", &[]),
        call("RenameDirectory", &[]),
        call("SetDirectoryAttributes", &[]),
    ] {
        assert!(p.journals_markers(&yes), "{}", yes.context.procedure);
    }
    for no in [
        call("DeleteFolder", &[("path", "a")]),
        call("DeleteFile", &[("path", "a")]),
        call("CopyDirectory", &[]),
        call("DeleteDirectory", &[]),
        call("GetUsage", &[("path", "a")]),
        call("ListDirectory", &[]),
    ] {
        assert!(!p.journals_markers(&no), "{}", no.context.procedure);
    }
}

/// WriteFile with `overwrite` journals its marker before it keeps the old file in the
/// trash; recovery from that marker finds the replacement applied.
#[tokio::test]
async fn an_overwrite_journals_its_marker_before_it_touches_the_old_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let p = FilesystemProvider::new(root.clone()).expect("provider");
    std::fs::write(root.join("f"), "old").expect("old file");
    let c = call(
        "WriteFile",
        &[("path", "f"), ("content", "new!"), ("overwrite", "true")],
    );
    let trash = root
        .join(super::TRASH_DIR)
        .join(crate::common::sanitize_key(&c.context.idempotency_key()));
    let sink = KeptMarkers::watching(trash);
    let c = with_sink(c, &sink);
    p.execute(c.clone()).await.expect("overwrite");
    assert_eq!(std::fs::read_to_string(root.join("f")).expect("f"), "new!");
    assert!(matches!(
        sink.markers().as_slice(),
        [super::records::Marker::OverwriteFile { bytes: 4, .. }]
    ));
    assert_eq!(*sink.seen_at_mark.lock().expect("seen"), vec![false]);
    assert_no_pending_file(&root);
    let undo = p
        .recover(&recovered(c.clone(), sink.last()))
        .await
        .expect("recover")
        .expect("applied");
    p.undo(done_of(&c, undo)).await.expect("undone");
    assert_eq!(std::fs::read_to_string(root.join("f")).expect("f"), "old");
}

/// StageFile journals its `staged` marker (no pending file at execute); its commit still
/// writes the `committing` marker to the pending file, and the abort after the commit
/// reads it there and removes the committed file.
#[tokio::test]
async fn a_stage_journals_its_marker_and_its_commit_keeps_the_pending_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let p = FilesystemProvider::new(root.clone()).expect("provider");
    let c = call("StageFile", &[("path", "s"), ("content", "staged")]);
    let staging = root
        .join(super::STAGING_DIR)
        .join(crate::common::sanitize_key(&c.context.idempotency_key()));
    let sink = KeptMarkers::watching(staging.clone());
    let c = with_sink(c, &sink);
    let out = p.execute(c.clone()).await.expect("staged");
    assert!(matches!(
        sink.markers().as_slice(),
        [super::records::Marker::Stage {
            phase: super::records::StagePhase::Staged,
            ..
        }]
    ));
    assert_eq!(*sink.seen_at_mark.lock().expect("seen"), vec![false]);
    assert_no_pending_file(&root);
    let undo = p
        .recover(&recovered(c.clone(), sink.last()))
        .await
        .expect("recover")
        .expect("staged: applied");
    assert_eq!(Some(&undo), out.undo.as_ref());
    let done = done_of(&c, undo);
    p.prepare(&done).await.expect("prepare");
    p.commit(&done).await.expect("commit");
    assert_eq!(
        std::fs::read_to_string(root.join("s")).expect("s"),
        "staged"
    );
    assert_eq!(pending_files(&root).len(), 1, "the committing marker");
    p.undo(done).await.expect("abort after commit");
    assert!(!root.join("s").exists(), "the committed file stayed");
}

/// A retried StageFolder finds its earlier try's staging folder: it removes it only once
/// this try's intent is durable (a first mark without a marker, while the folder is still
/// there), then journals its marker.
#[tokio::test]
async fn a_retried_stage_cleans_up_only_after_the_intent_is_durable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let p = FilesystemProvider::new(root.clone()).expect("provider");
    let mut c = call("StageFolder", &[("path", "d")]);
    c.context.attempt = 2;
    let leftover = root
        .join(super::STAGING_DIR)
        .join(crate::common::sanitize_key(&c.context.idempotency_key()))
        .join("item/junk");
    std::fs::create_dir_all(&leftover).expect("an earlier try's leftover");
    let sink = KeptMarkers::watching(leftover.clone());
    p.execute(with_sink(c, &sink)).await.expect("staged");
    let marks = sink.marks.lock().expect("marks").clone();
    assert_eq!(marks.len(), 2, "{marks:?}");
    assert!(marks[0].is_none(), "the intent alone first: {marks:?}");
    assert_eq!(
        *sink.seen_at_mark.lock().expect("seen"),
        vec![true, false],
        "the leftover was removed before the intent was durable"
    );
    assert!(!leftover.exists());
}
