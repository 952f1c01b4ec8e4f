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
