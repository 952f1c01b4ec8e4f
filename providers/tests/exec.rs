//! Integration tests of the exec provider: the Python ledger example driven through
//! `ExecProvider` (execute, undo, preview, idempotent retry after a crash), and children
//! that misbehave (garbage, wrong ids, silence, crashes, bad handshakes).

mod support;

use provisio_engine::data::{Element, Scalar};
use provisio_engine::model::ProcKind;
use provisio_engine::provider::{Call, Done, Preview, Provider, ProviderError, UndoKind};
use provisio_providers::exec::{ExecConfig, ExecError, ExecProvider};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{call, output};

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn fixture() -> String {
    repo_path("providers/tests/fixtures/exec/misbehave.sh")
        .display()
        .to_string()
}

/// A config running `misbehave.sh MODE [MARKER]` with short timeouts.
fn sh_config(name: &str, mode: &str, marker: Option<&Path>) -> ExecConfig {
    let mut command = vec!["sh".to_string(), fixture(), mode.to_string()];
    if let Some(m) = marker {
        command.push(m.display().to_string());
    }
    ExecConfig {
        call_timeout: Duration::from_secs(5),
        start_timeout: Duration::from_secs(5),
        ..ExecConfig::new(name, command)
    }
}

async fn sh_provider(mode: &str) -> ExecProvider {
    match ExecProvider::spawn(sh_config("billing", mode, None)).await {
        Ok(p) => p,
        Err(e) => panic!("spawn {mode}: {e}"),
    }
}

fn echo_call() -> Call {
    call("billing Provider", "Echo", &[("x", "1")])
}

/// The error of a failed call.
fn failure<T: std::fmt::Debug>(r: Result<T, ProviderError>) -> ProviderError {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

/// A failure after the request was written: the child may have applied it.
fn assert_in_doubt(e: &ProviderError, want: &str) {
    assert!(
        matches!(e, ProviderError::InDoubt { .. }),
        "expected in doubt, got {e:?}"
    );
    assert!(
        e.message().contains(want),
        "{:?} lacks {want:?}",
        e.message()
    );
}

fn assert_permanent(e: &ProviderError, want: &str) {
    assert!(
        matches!(e, ProviderError::Permanent { .. }),
        "expected permanent, got {e:?}"
    );
    assert!(
        e.message().contains(want),
        "{:?} lacks {want:?}",
        e.message()
    );
}

fn spawn_error(r: Result<ExecProvider, ExecError>) -> String {
    match r {
        Ok(_) => panic!("spawn should have failed"),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// A well-behaved child.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn describe_and_execute_round_trip() {
    let p = sh_provider("ok").await;
    assert_eq!(p.name(), "billing");
    assert_eq!(p.namespace(), "billing Provider");
    let procs = p.procedures();
    assert_eq!(procs.len(), 1);
    assert_eq!(procs[0].name, "Echo");
    assert_eq!(procs[0].kind, ProcKind::Write);
    assert_eq!(procs[0].undo, UndoKind::Reversible);
    let out = p.execute(echo_call()).await.expect("execute");
    assert_eq!(output(&out, "echoed").as_deref(), Some("true"));
    let pid = p.process_id().await.expect("running");
    assert_eq!(output(&out, "pid"), Some(pid.to_string()));
    // The undo record is `{"id": N}` with the request id (2: describe was 1).
    let undo = out.undo.expect("undo record");
    assert_eq!(
        undo.child("id").and_then(Element::scalar),
        Some(&Scalar::Int(2))
    );
    let unknown = failure(p.execute(call("x", "Nope", &[])).await);
    assert_permanent(&unknown, "has no procedure `Nope`");
}

#[tokio::test]
async fn concurrent_calls_are_serialized_and_matched() {
    let p = Arc::new(sh_provider("stderr").await);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move { p.execute(echo_call()).await }));
    }
    for t in tasks {
        let out = t.await.expect("join").expect("execute");
        assert_eq!(output(&out, "echoed").as_deref(), Some("true"));
    }
}

#[tokio::test]
async fn provider_errors_pass_through_and_keep_the_child() {
    let p = sh_provider("provider-error").await;
    let pid = p.process_id().await;
    let e = failure(p.execute(echo_call()).await);
    assert_eq!(
        e,
        ProviderError::Transient {
            code: ProviderError::E_FAIL,
            message: "backend busy".into()
        }
    );
    assert_eq!(p.process_id().await, pid, "a provider error is not a crash");
}

#[tokio::test]
async fn shutdown_then_next_call_restarts() {
    let p = sh_provider("ok").await;
    p.shutdown(Duration::from_secs(2)).await;
    assert_eq!(p.process_id().await, None);
    p.execute(echo_call()).await.expect("restarted");
    assert!(p.process_id().await.is_some());
}

// ---------------------------------------------------------------------------------------
// Misbehaving children.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn garbage_is_a_permanent_error_and_the_child_is_replaced() {
    let p = sh_provider("garbage").await;
    let pid = p.process_id().await;
    let e = failure(p.execute(echo_call()).await);
    assert_permanent(
        &e,
        "provider `billing` sent a line that is not JSON during execute: `hello`",
    );
    assert_eq!(p.process_id().await, None, "killed after garbage");
    // The next call restarts it (and gets garbage again).
    let e = failure(p.execute(echo_call()).await);
    assert_permanent(&e, "not JSON");
    assert_ne!(p.process_id().await, pid);
}

#[tokio::test]
async fn wrong_id_and_wrong_shape_are_protocol_errors() {
    let p = sh_provider("wrong-id").await;
    let e = failure(p.execute(echo_call()).await);
    assert_permanent(
        &e,
        "provider `billing` sent a response with id 102 while waiting for id 2 during execute",
    );
    let p = sh_provider("not-object").await;
    let e = failure(p.execute(echo_call()).await);
    assert_permanent(&e, "a response that is not a JSON object (got a list)");
}

#[tokio::test]
async fn an_overlong_line_is_refused() {
    let p = sh_provider("long-line").await;
    let e = failure(p.execute(echo_call()).await);
    assert_permanent(&e, "sent a line longer than 16 MiB during execute");
}

#[tokio::test]
async fn a_silent_child_times_out_without_hanging() {
    let mut cfg = sh_config("billing", "silent", None);
    cfg.call_timeout = Duration::from_millis(400);
    let p = ExecProvider::spawn(cfg).await.expect("spawn");
    let started = Instant::now();
    let e = failure(p.execute(echo_call()).await);
    assert_in_doubt(&e, "provider `billing` did not answer execute within 400ms");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // Undo and preview time out the same way; the engine never hangs.
    let c = echo_call();
    let done = Done {
        state: provisio_engine::ProviderState::detached(),
        context: c.context.clone(),
        provider_context: c.provider_context.clone(),
        undo: Element::new("undo"),
        execute_data: None,
    };
    let e = failure(p.undo(done).await);
    assert_in_doubt(&e, "did not answer undo");
    let e = failure(p.preview(&c).await);
    assert_in_doubt(&e, "did not answer preview");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_child_that_exits_mid_call_is_restarted_on_the_next_call() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let marker = tmp.path().join("crashed");
    let p = ExecProvider::spawn(sh_config("billing", "exit-once", Some(&marker)))
        .await
        .expect("spawn");
    let first_pid = p.process_id().await.expect("pid");
    let e = failure(p.execute(echo_call()).await);
    assert_in_doubt(&e, "provider `billing` exited with status 3 during execute");
    let out = p
        .execute(echo_call())
        .await
        .expect("restarted and answered");
    let pid = p.process_id().await.expect("pid");
    assert_ne!(pid, first_pid);
    assert_eq!(output(&out, "pid"), Some(pid.to_string()));
}

#[tokio::test]
async fn a_crash_looping_child_is_restarted_a_limited_number_of_times() {
    let mut cfg = sh_config("billing", "crash-always", None);
    cfg.max_restarts = 2;
    cfg.restart_window = Duration::from_secs(60);
    let p = ExecProvider::spawn(cfg).await.expect("spawn");
    // The first child crashes, then two restarted ones: each leaves its call in doubt.
    for _ in 0..3 {
        let e = failure(p.execute(echo_call()).await);
        assert_in_doubt(&e, "exited with status 3 during execute");
    }
    // A third restart within the window is refused, for good, saying why.
    let e = failure(p.execute(echo_call()).await);
    assert_permanent(&e, "provider `billing` is not restarted again");
    assert!(e.message().contains("restarted 2 times"), "{e:?}");
    assert!(
        e.message().contains("exited with status 3 during execute"),
        "names the last failure: {e:?}"
    );
    assert_eq!(p.process_id().await, None, "nothing was started");
}

#[tokio::test]
async fn restarts_outside_the_window_do_not_count() {
    let mut cfg = sh_config("billing", "crash-always", None);
    cfg.max_restarts = 1;
    cfg.restart_window = Duration::from_millis(300);
    let p = ExecProvider::spawn(cfg).await.expect("spawn");
    assert_in_doubt(&failure(p.execute(echo_call()).await), "status 3");
    assert_in_doubt(&failure(p.execute(echo_call()).await), "status 3");
    assert_permanent(
        &failure(p.execute(echo_call()).await),
        "is not restarted again",
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_in_doubt(&failure(p.execute(echo_call()).await), "status 3");
}

/// Whether process `pid` is gone (absent, or a zombie no one has reaped yet).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[tokio::test]
async fn killing_a_child_kills_the_processes_it_started() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let marker = tmp.path().join("helper.pid");
    let mut cfg = sh_config("billing", "helper-silent", Some(&marker));
    cfg.call_timeout = Duration::from_millis(800);
    let p = ExecProvider::spawn(cfg).await.expect("spawn");
    let e = failure(p.execute(echo_call()).await);
    assert_in_doubt(&e, "did not answer execute");
    let helper: u32 = std::fs::read_to_string(&marker)
        .expect("helper pid")
        .trim()
        .parse()
        .expect("a pid");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !process_gone(helper) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone = process_gone(helper);
    if !gone {
        // Do not leave it behind when the assertion fails.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &helper.to_string()])
            .status();
    }
    assert!(gone, "the helper {helper} outlived the killed provider");
}

#[tokio::test]
async fn a_child_that_died_while_idle_is_restarted_transparently() {
    let p = sh_provider("answer-then-exit").await;
    p.execute(echo_call()).await.expect("first");
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.execute(echo_call())
        .await
        .expect("restarted before the call");
}

#[tokio::test]
async fn an_abandoned_call_does_not_desynchronize_the_next_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let marker = tmp.path().join("slow");
    let p = ExecProvider::spawn(sh_config("billing", "slow-once", Some(&marker)))
        .await
        .expect("spawn");
    // The caller gives up (its future is dropped) while the child is still working.
    let abandoned = tokio::time::timeout(Duration::from_millis(300), p.execute(echo_call())).await;
    assert!(abandoned.is_err(), "should have been cut off");
    // The late answer of the abandoned call must not be taken for this one's.
    let out = p.execute(echo_call()).await.expect("fresh child answers");
    assert_eq!(output(&out, "echoed").as_deref(), Some("true"));
}

#[tokio::test]
async fn bad_handshakes_fail_spawn_with_clear_errors() {
    let e = spawn_error(ExecProvider::spawn(sh_config("billing", "bad-describe", None)).await);
    assert!(
        e.contains("provider `billing` sent a malformed describe answer: procedures[0]: `X`: `kind` must be"),
        "{e}"
    );
    let e = spawn_error(ExecProvider::spawn(sh_config("billing", "garbage-describe", None)).await);
    assert!(
        e.contains("sent a line that is not JSON during describe: `Welcome to my provider!`"),
        "{e}"
    );
    let e = spawn_error(ExecProvider::spawn(sh_config("billing", "error-describe", None)).await);
    assert!(
        e.contains("answered describe with an error") && e.contains("no licence"),
        "{e}"
    );
    let e = spawn_error(ExecProvider::spawn(sh_config("billing", "exit-describe", None)).await);
    assert!(
        e.contains("provider `billing` exited with status 5 during describe"),
        "{e}"
    );
    let mut cfg = sh_config("billing", "slow-describe", None);
    cfg.start_timeout = Duration::from_millis(300);
    let e = spawn_error(ExecProvider::spawn(cfg).await);
    assert!(e.contains("did not answer describe within 300ms"), "{e}");
    let e = spawn_error(
        ExecProvider::spawn(ExecConfig::new("billing", ["/nonexistent/provider"])).await,
    );
    assert!(
        e.contains("cannot start provider `billing` (`/nonexistent/provider`)"),
        "{e}"
    );
    let e =
        spawn_error(ExecProvider::spawn(ExecConfig::new("billing", Vec::<String>::new())).await);
    assert!(e.contains("no command"), "{e}");
}

// ---------------------------------------------------------------------------------------
// The Python ledger example.
// ---------------------------------------------------------------------------------------

/// Whether python3 runs; when it does not, tests skip with a note unless
/// `PROVISIO_REQUIRE_PYTHON=1`.
fn python_available() -> bool {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("PROVISIO_REQUIRE_PYTHON").as_deref() == Ok("1") {
            panic!("python3 is not available but PROVISIO_REQUIRE_PYTHON=1");
        }
        eprintln!("note: python3 not found; skipping the ledger example tests");
    }
    ok
}

async fn ledger(dir: &Path, extra_env: &[(&str, String)]) -> ExecProvider {
    let mut env = vec![(
        "LEDGER_FILE".to_string(),
        dir.join("ledger.json").display().to_string(),
    )];
    env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let cfg = ExecConfig {
        name: "Ledger".into(),
        command: vec![
            "python3".into(),
            repo_path("examples/exec-provider/ledger.py")
                .display()
                .to_string(),
        ],
        env,
        working_dir: Some(dir.to_path_buf()),
        call_timeout: Duration::from_secs(10),
        start_timeout: Duration::from_secs(10),
        ..ExecConfig::new("Ledger", Vec::<String>::new())
    };
    match ExecProvider::spawn(cfg).await {
        Ok(p) => p,
        Err(e) => panic!("spawn ledger: {e}"),
    }
}

fn ledger_call(procedure: &str, inputs: &[(&str, &str)]) -> Call {
    call("Ledger Provider", procedure, inputs)
}

async fn balance(p: &ExecProvider, name: &str) -> Result<i64, ProviderError> {
    let out = p
        .execute(ledger_call("GetBalance", &[("name", name)]))
        .await?;
    match out.execute_data.child("balance").and_then(Element::scalar) {
        Some(Scalar::Int(i)) => Ok(*i),
        other => panic!("balance: {other:?}"),
    }
}

fn done_of(c: &Call, undo: Option<Element>) -> Done {
    Done {
        state: provisio_engine::ProviderState::detached(),
        context: c.context.clone(),
        provider_context: c.provider_context.clone(),
        undo: undo.expect("an undo record"),
        execute_data: None,
    }
}

#[tokio::test]
async fn ledger_execute_undo_and_describe() {
    if !python_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = ledger(tmp.path(), &[]).await;
    let names: Vec<String> = p.procedures().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["CreateAccount", "Credit", "GetBalance"]);
    let get = p.procedures().into_iter().find(|s| s.name == "GetBalance");
    assert_eq!(
        get.map(|s| (s.kind, s.undo)),
        Some((ProcKind::Read, UndoKind::Nothing))
    );

    let create = ledger_call("CreateAccount", &[("name", "alice"), ("credit", "100")]);
    let out = p.execute(create.clone()).await.expect("create");
    assert_eq!(output(&out, "balance").as_deref(), Some("100"));
    assert_eq!(output(&out, "name").as_deref(), Some("alice"));
    let create_undo = out.undo;

    let credit = ledger_call("Credit", &[("name", "alice"), ("amount", "5")]);
    let out = p.execute(credit.clone()).await.expect("credit");
    assert_eq!(balance(&p, "alice").await, Ok(105));

    // Undo is idempotent: twice is the same as once.
    p.undo(done_of(&credit, out.undo.clone()))
        .await
        .expect("undo credit");
    p.undo(done_of(&credit, out.undo))
        .await
        .expect("undo credit again");
    assert_eq!(balance(&p, "alice").await, Ok(100));
    p.undo(done_of(&create, create_undo))
        .await
        .expect("undo create");
    let e = failure(balance(&p, "alice").await);
    assert_permanent(&e, "account `alice` does not exist");
    assert_eq!(e.code(), 0x8007_0490);

    // Bad input is the provider's own permanent error.
    let e = failure(
        p.execute(ledger_call(
            "Credit",
            &[("name", "bob"), ("amount", "lots")],
        ))
        .await,
    );
    assert_eq!(e.code(), ProviderError::E_INVALIDARG);
    // Two-phase is not implemented: E_NOTIMPL becomes Unsupported.
    let e = failure(
        p.prepare(&done_of(&credit, Some(Element::new("undo"))))
            .await,
    );
    assert!(matches!(e, ProviderError::Unsupported(_)), "{e:?}");
}

#[tokio::test]
async fn ledger_preview() {
    if !python_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = ledger(tmp.path(), &[]).await;
    let create = ledger_call("CreateAccount", &[("name", "carol"), ("credit", "2")]);
    match p.preview(&create).await {
        Ok(Preview::Change(s)) => assert!(s.contains("would create account `carol`"), "{s}"),
        other => panic!("{other:?}"),
    }
    p.execute(create.clone()).await.expect("create");
    // The same call again (same idempotency key): nothing left to do.
    assert!(matches!(p.preview(&create).await, Ok(Preview::NoChange(_))));
    // Another call creating the same account would fail, and preview says so.
    let again = ledger_call("CreateAccount", &[("name", "carol")]);
    let e = failure(p.preview(&again).await);
    assert_permanent(&e, "already exists");
    let credit = ledger_call("Credit", &[("name", "carol"), ("amount", "1")]);
    assert_eq!(p.preview(&credit).await, Ok(Preview::Unknown));
    assert_eq!(balance(&p, "carol").await, Ok(2), "preview changed nothing");
}

#[tokio::test]
async fn ledger_retry_with_the_same_key_applies_once() {
    if !python_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let marker = tmp.path().join("crashed");
    let p = ledger(
        tmp.path(),
        &[("LEDGER_CRASH_ONCE", marker.display().to_string())],
    )
    .await;
    let create = ledger_call("CreateAccount", &[("name", "dave"), ("credit", "10")]);
    // The child saves the account, then dies before answering: the outcome is unknown.
    let e = failure(p.execute(create.clone()).await);
    assert_in_doubt(&e, "provider `Ledger` exited with status 3 during execute");
    assert!(marker.exists());
    // The engine settles it with the same idempotency key: applied, with its undo record.
    let undo = p.recover(&create).await.expect("recover").expect("applied");
    assert_eq!(
        undo.child("account").map(Element::string_value).as_deref(),
        Some("dave")
    );
    let never = ledger_call("CreateAccount", &[("name", "zed")]);
    assert_eq!(p.recover(&never).await, Ok(None));
    // A repeat with the same key replays the recorded result instead of failing on
    // "already exists".
    let out = p.execute(create.clone()).await.expect("repeat");
    assert_eq!(output(&out, "balance").as_deref(), Some("10"));
    // A plain repeat is also applied once.
    let credit = ledger_call("Credit", &[("name", "dave"), ("amount", "7")]);
    let first = p.execute(credit.clone()).await.expect("credit");
    let again = p.execute(credit.clone()).await.expect("credit again");
    assert_eq!(first.execute_data, again.execute_data);
    assert_eq!(balance(&p, "dave").await, Ok(17));
}

#[tokio::test]
async fn ledger_own_python_tests_pass() {
    if !python_available() {
        return;
    }
    let out = tokio::process::Command::new("python3")
        .arg(repo_path("examples/exec-provider/test_ledger.py"))
        .output()
        .await
        .expect("run test_ledger.py");
    assert!(
        out.status.success(),
        "test_ledger.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
