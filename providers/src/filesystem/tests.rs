//! Unit tests that need the provider's internals: the blocking work runs off the async
//! runtime (a slowed-down operation neither stalls a current-thread runtime nor outlasts
//! a timeout).

use super::FilesystemProvider;
use provisio_engine::data::Element;
use provisio_engine::provider::{Call, CallContext, Provider};
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
