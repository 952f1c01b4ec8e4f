//! An exec provider child outliving a `kill -9` of the engine: the next start on the same
//! state folder kills it before `recover` answers, so the orphan cannot apply its call
//! after recovery was told "not applied". The killed engine is this test binary re-run as
//! a helper process (`orphan_owner`, ignored unless asked for by name).

mod support;

use provisio_engine::provider::{Call, Provider};
use provisio_providers::exec::{ExecConfig, ExecProvider};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the orphaned ledger call sleeps (holding its lock) before it applies.
const DELAY_MS: u64 = 2500;

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
        eprintln!("note: python3 not found; skipping the orphan test");
    }
    ok
}

fn ledger_config(dir: &Path, delay: bool) -> ExecConfig {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/exec-provider/ledger.py");
    let mut cfg = ExecConfig::new(
        "Ledger",
        ["python3".to_string(), script.display().to_string()],
    );
    cfg.env = vec![(
        "LEDGER_FILE".into(),
        dir.join("ledger.json").display().to_string(),
    )];
    if delay {
        cfg.env
            .push(("LEDGER_DELAY_MS".into(), DELAY_MS.to_string()));
    }
    cfg.call_timeout = Duration::from_secs(30);
    cfg.state_dir = Some(dir.join("state"));
    cfg
}

/// The one call both processes talk about (same idempotency key in both).
fn open_call() -> Call {
    let mut c = support::call("Ledger Provider", "CreateAccount", &[("name", "orphan")]);
    c.context.step_id = "orphan-step".into();
    c
}

fn accounts(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("ledger.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["accounts"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Whether `pid` runs (a zombie does not: it can do nothing more).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').map_or(0, |i| i + 1)..]
                .split_whitespace()
                .next()
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

fn wait_for_file(path: &Path, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The helper "engine": starts the slow ledger, says its child pid, then sends the call
/// and waits (it is killed with SIGKILL meanwhile).
#[tokio::test]
#[ignore = "helper process of orphaned_child_is_killed_before_recover_answers"]
async fn orphan_owner() {
    let dir = PathBuf::from(std::env::var("ORPHAN_DIR").expect("ORPHAN_DIR"));
    let p = ExecProvider::spawn(ledger_config(&dir, true))
        .await
        .expect("spawn ledger");
    let pid = p.process_id().await.expect("child pid");
    std::fs::write(dir.join("child.pid"), format!("{pid}\n")).expect("write pid");
    let out = p.execute(open_call()).await;
    panic!("the helper was meant to be killed mid-call, but the call ended: {out:?}");
}

#[tokio::test]
async fn orphaned_child_is_killed_before_recover_answers() {
    if !python_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let mut owner = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "orphan_owner", "--ignored", "--nocapture"])
        .env("ORPHAN_DIR", dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the helper");
    let pid: u32 = wait_for_file(&dir.join("child.pid"), Duration::from_secs(15))
        .trim()
        .parse()
        .expect("a pid");
    // The request reached the child once it opened the ledger's lock file (only `execute`
    // does, before it sleeps DELAY_MS holding the lock and then applies).
    let lock = dir.join("ledger.json.lock");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !lock.exists() {
        assert!(
            Instant::now() < deadline,
            "the call never reached the child"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    owner.kill().expect("SIGKILL the helper");
    owner.wait().expect("reap the helper");
    assert!(
        running(pid),
        "the ledger child should have outlived its engine"
    );
    let killed_at = Instant::now();

    let p = ExecProvider::spawn(ledger_config(dir, false))
        .await
        .expect("spawn the new ledger");
    assert!(
        !running(pid),
        "the orphaned child {pid} still runs after the new provider started"
    );
    let recovered = p.recover(&open_call()).await.expect("recover");
    assert!(recovered.is_none(), "recover: {recovered:?}");
    // Past the moment the orphan would have applied the call.
    let until = killed_at + Duration::from_millis(DELAY_MS + 500);
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    assert_eq!(accounts(dir), Vec::<String>::new());
    assert!(p.recover(&open_call()).await.expect("recover").is_none());
    // The live child is recorded; a normal shutdown drops its record.
    let records = || std::fs::read_dir(dir.join("state")).map_or(0, |d| d.count());
    assert_eq!(records(), 1);
    p.shutdown(Duration::from_secs(2)).await;
    assert_eq!(records(), 0);
}
