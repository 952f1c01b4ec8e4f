//! Does nothing twice, undoes everything: each real provider run by the engine through a
//! call whose outcome is lost once (the provider applied it and then crashed, or answered
//! after the step timeout). The engine settles the call through the provider's `recover`
//! (same idempotency key) and the transaction ends committed with exactly one effect, or
//! rolled back with none. Each effect is checked by an independent read: `ledger.json`,
//! the folder on disk, the zone file, or `dig` against a private BIND `named`.

mod support;

use async_trait::async_trait;
use provisio_engine::data::Element;
use provisio_engine::model::Format;
use provisio_engine::provider::{
    Call, Done, Outcome, Preview, ProcedureSpec, Provider, ProviderError, ProviderRegistry,
};
use provisio_engine::request::{parse_namespaces, parse_request};
use provisio_engine::Catalog;
use provisio_engine::{Engine, EngineOptions, RetryOptions, TxnResult, TxnState};
use provisio_providers::dns::{DnsProvider, Rfc2136Config};
use provisio_providers::exec::{ExecConfig, ExecProvider};
use provisio_providers::filesystem::FilesystemProvider;
use provisio_test_support::bind::{Named, ZONE};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How the wrapped provider loses the answer of its first write.
#[derive(Debug, Clone, Copy)]
enum Lose {
    /// Applies, then reports an unknown outcome (its process died after the change).
    Crash,
    /// Applies, then answers only after this long (after the step timeout).
    Late(Duration),
}

/// A real provider whose first `execute` of `procedure` applies and then loses its answer.
struct LoseOnce<P> {
    inner: P,
    procedure: &'static str,
    how: Lose,
    armed: AtomicBool,
}

impl<P> LoseOnce<P> {
    fn new(inner: P, procedure: &'static str, how: Lose) -> LoseOnce<P> {
        LoseOnce {
            inner,
            procedure,
            how,
            armed: AtomicBool::new(true),
        }
    }
}

#[async_trait]
impl<P: Provider> Provider for LoseOnce<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn procedures(&self) -> Vec<ProcedureSpec> {
        self.inner.procedures()
    }
    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        let lose =
            call.context.procedure == self.procedure && self.armed.swap(false, Ordering::SeqCst);
        let result = self.inner.execute(call).await;
        if !lose || result.is_err() {
            return result;
        }
        match self.how {
            Lose::Crash => Err(ProviderError::in_doubt(
                "simulated crash after the change was made",
            )),
            Lose::Late(delay) => {
                tokio::time::sleep(delay).await;
                result
            }
        }
    }
    async fn undo(&self, done: Done) -> Result<(), ProviderError> {
        self.inner.undo(done).await
    }
    async fn recover(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        self.inner.recover(call).await
    }
    async fn preview(&self, call: &Call) -> Result<Preview, ProviderError> {
        self.inner.preview(call).await
    }
}

/// An engine over one YAML namespace and one provider.
fn engine(ns_yaml: &str, provider: Arc<dyn Provider>, step_timeout: Duration) -> Engine {
    let namespaces = parse_namespaces(ns_yaml, "test.yaml", Format::Yaml).expect("namespace");
    let mut registry = ProviderRegistry::new();
    registry.register(provider);
    let catalog = Catalog::new(namespaces, &registry).expect("catalog");
    let options = EngineOptions {
        retry: RetryOptions::default()
            .with_intervals(Duration::from_millis(1), Duration::from_millis(1)),
        step_timeout,
        ..EngineOptions::default()
    };
    Engine::new(catalog, registry, options)
}

async fn run(engine: &Engine, request: &str) -> TxnResult {
    let req = parse_request(request, "req.yaml", Format::Yaml).expect("request");
    engine.run(&req).await.expect("compiles")
}

fn committed(r: &TxnResult) {
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
}

fn rolled_back(r: &TxnResult, undone: usize) {
    assert_eq!(
        r.state,
        TxnState::RolledBack,
        "{:?} {:?}",
        r.failure,
        r.undo_failures
    );
    assert_eq!(r.undone, undone, "{:?}", r.failure);
}

// ---- Exec provider: the Ledger example, its own crash and hang hooks -------------------

const LEDGER_NS: &str = r#"
namespace: Billing
procedures:
  Open:
    access: public
    parallel: false
    steps:
      open: { call: Ledger Provider/CreateAccount, with: { name: dave, credit: 10 } }
  OpenThenFail:
    access: public
    parallel: false
    steps:
      open: { call: Ledger Provider/CreateAccount, with: { name: dave, credit: 10 } }
      bonus: { call: Ledger Provider/Credit, with: { name: nobody, amount: 5 } }
"#;

fn python_available() -> bool {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("PROVISIO_REQUIRE_PYTHON").as_deref() == Ok("1") {
            panic!("python3 is not available but PROVISIO_REQUIRE_PYTHON=1");
        }
        eprintln!("note: python3 not found; skipping the ledger tests");
    }
    ok
}

async fn ledger(dir: &Path, hook: &str) -> ExecProvider {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/exec-provider/ledger.py");
    let mut cfg = ExecConfig::new(
        "Ledger",
        ["python3".to_string(), script.display().to_string()],
    );
    cfg.env = vec![
        (
            "LEDGER_FILE".into(),
            dir.join("ledger.json").display().to_string(),
        ),
        (hook.into(), dir.join("hooked").display().to_string()),
    ];
    cfg.call_timeout = Duration::from_secs(3);
    ExecProvider::spawn(cfg).await.expect("spawn ledger")
}

/// The accounts in `ledger.json`, read directly: name → balance.
fn accounts(dir: &Path) -> Vec<(String, i64)> {
    let text = std::fs::read_to_string(dir.join("ledger.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let mut out: Vec<(String, i64)> = v["accounts"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, a)| (k.clone(), a["balance"].as_i64().unwrap_or(-1)))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

async fn ledger_case(hook: &str, request: &str) -> (tempfile::TempDir, TxnResult) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = ledger(dir.path(), hook).await;
    let e = engine(LEDGER_NS, Arc::new(p), Duration::from_secs(20));
    let r = run(&e, request).await;
    assert!(dir.path().join("hooked").exists(), "the hook fired");
    (dir, r)
}

#[tokio::test]
async fn exec_child_crash_after_apply_commits_one_account() {
    if !python_available() {
        return;
    }
    let (dir, r) = ledger_case("LEDGER_CRASH_ONCE", "call: Billing/Open").await;
    committed(&r);
    assert_eq!(accounts(dir.path()), vec![("dave".to_string(), 10)]);
}

#[tokio::test]
async fn exec_child_crash_after_apply_then_failure_rolls_back_everything() {
    if !python_available() {
        return;
    }
    let (dir, r) = ledger_case("LEDGER_CRASH_ONCE", "call: Billing/OpenThenFail").await;
    rolled_back(&r, 1);
    assert_eq!(accounts(dir.path()), vec![]);
}

#[tokio::test]
async fn exec_child_timeout_after_apply_commits_one_account() {
    if !python_available() {
        return;
    }
    let (dir, r) = ledger_case("LEDGER_HANG_ONCE", "call: Billing/Open").await;
    committed(&r);
    assert_eq!(accounts(dir.path()), vec![("dave".to_string(), 10)]);
}

#[tokio::test]
async fn exec_child_timeout_after_apply_then_failure_rolls_back_everything() {
    if !python_available() {
        return;
    }
    let (dir, r) = ledger_case("LEDGER_HANG_ONCE", "call: Billing/OpenThenFail").await;
    rolled_back(&r, 1);
    assert_eq!(accounts(dir.path()), vec![]);
}

// ---- Filesystem ------------------------------------------------------------------------

const FS_NS: &str = r#"
namespace: Hosting
procedures:
  Home:
    access: public
    parallel: false
    steps:
      home: { call: Filesystem Provider/CreateFolder, with: { path: "home/dave" } }
  HomeThenFail:
    access: public
    parallel: false
    steps:
      home: { call: Filesystem Provider/CreateFolder, with: { path: "home/dave" } }
      again: { call: Filesystem Provider/CreateFolder, with: { path: "home/dave" } }
"#;

async fn fs_case(how: Lose, request: &str) -> (tempfile::TempDir, PathBuf, TxnResult) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let p = FilesystemProvider::new(root.clone()).expect("provider");
    let e = engine(
        FS_NS,
        Arc::new(LoseOnce::new(p, "CreateFolder", how)),
        Duration::from_millis(500),
    );
    let r = run(&e, request).await;
    (dir, root, r)
}

#[tokio::test]
async fn filesystem_crash_after_apply_commits_one_folder() {
    let (_dir, root, r) = fs_case(Lose::Crash, "call: Hosting/Home").await;
    committed(&r);
    assert!(root.join("home/dave").is_dir());
}

#[tokio::test]
async fn filesystem_timeout_after_apply_commits_one_folder() {
    let (_dir, root, r) = fs_case(Lose::Late(Duration::from_secs(5)), "call: Hosting/Home").await;
    committed(&r);
    assert!(root.join("home/dave").is_dir());
}

#[tokio::test]
async fn filesystem_in_doubt_then_failure_leaves_no_folder() {
    for how in [Lose::Crash, Lose::Late(Duration::from_secs(5))] {
        let (_dir, root, r) = fs_case(how, "call: Hosting/HomeThenFail").await;
        rolled_back(&r, 1);
        assert!(!root.join("home/dave").exists(), "{how:?}");
        assert!(
            !root.join("home").exists(),
            "{how:?}: the parent it created is gone too"
        );
    }
}

// ---- DNS: zone files -------------------------------------------------------------------

fn dns_ns(zone: &str) -> String {
    format!(
        r#"
namespace: Web
procedures:
  Www:
    access: public
    parallel: false
    steps:
      www: {{ call: DNS Provider/AddRecord, with: {{ zoneName: {zone}, name: www, rrType: A, address: 192.0.2.80 }} }}
  WwwThenFail:
    access: public
    parallel: false
    steps:
      www: {{ call: DNS Provider/AddRecord, with: {{ zoneName: {zone}, name: www, rrType: A, address: 192.0.2.80 }} }}
      bad: {{ call: DNS Provider/AddRecord, with: {{ zoneName: nosuch.test, name: www, rrType: A, address: 192.0.2.81 }} }}
  Swap:
    access: public
    parallel: false
    steps:
      swap:
        call: DNS Provider/ReplaceRecordSet
        with: {{ zoneName: {zone}, name: pre, rrType: A, ttl: 60, records: [{{ address: 192.0.2.90 }}] }}
      bad: {{ call: DNS Provider/AddRecord, with: {{ zoneName: nosuch.test, name: www, rrType: A, address: 192.0.2.81 }} }}
  Drop:
    access: public
    parallel: false
    steps:
      drop: {{ call: DNS Provider/DeleteRecord, with: {{ zoneName: {zone}, name: pre, rrType: A, address: 192.0.2.1 }} }}
      bad: {{ call: DNS Provider/AddRecord, with: {{ zoneName: nosuch.test, name: www, rrType: A, address: 192.0.2.81 }} }}
"#
    )
}

/// The data lines of `owner` in a zone file, whitespace normalised.
fn zone_lines(file: &Path, owner: &str) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(owner))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

async fn zonefile_case(how: Lose, request: &str) -> (tempfile::TempDir, PathBuf, TxnResult) {
    let dir = tempfile::tempdir().expect("tempdir");
    let zones = dir.path().join("zones");
    let p = DnsProvider::zonefile(zones.clone()).expect("backend");
    let create = support::call("DNS Provider", "CreateZone", &[("zoneName", "web.test")]);
    p.execute(create).await.expect("zone");
    let e = engine(
        &dns_ns("web.test"),
        Arc::new(LoseOnce::new(p, "AddRecord", how)),
        Duration::from_millis(500),
    );
    let r = run(&e, request).await;
    (dir, zones.join("web.test.zone"), r)
}

#[tokio::test]
async fn zonefile_in_doubt_add_commits_one_record() {
    for how in [Lose::Crash, Lose::Late(Duration::from_secs(5))] {
        let (_dir, file, r) = zonefile_case(how, "call: Web/Www").await;
        committed(&r);
        assert_eq!(
            zone_lines(&file, "www"),
            vec!["www 3600 IN A 192.0.2.80"],
            "{how:?}"
        );
    }
}

#[tokio::test]
async fn zonefile_in_doubt_add_then_failure_leaves_no_record() {
    for how in [Lose::Crash, Lose::Late(Duration::from_secs(5))] {
        let (_dir, file, r) = zonefile_case(how, "call: Web/WwwThenFail").await;
        rolled_back(&r, 1);
        assert!(zone_lines(&file, "www").is_empty(), "{how:?}");
    }
}

// ---- DNS: RFC 2136 against a real BIND -------------------------------------------------

fn rfc_provider(n: &Named, state: &Path) -> DnsProvider {
    let mut config = Rfc2136Config::from_key_file(n.addr(), Path::new(&n.key_file())).expect("key");
    config.state_dir = Some(state.to_path_buf());
    DnsProvider::rfc2136(config).expect("provider")
}

async fn rfc_case(n: &Named, procedure: &'static str, how: Lose, request: &str) -> TxnResult {
    let state = tempfile::tempdir().expect("tempdir");
    let p = rfc_provider(n, state.path());
    let e = engine(
        &dns_ns(ZONE),
        Arc::new(LoseOnce::new(p, procedure, how)),
        Duration::from_secs(2),
    );
    run(&e, request).await
}

#[tokio::test]
async fn rfc2136_in_doubt_add_commits_one_record_or_rolls_back_with_none() {
    let Some(n) = Named::start() else { return };
    let www = format!("www.{ZONE}");
    for how in [Lose::Crash, Lose::Late(Duration::from_secs(5))] {
        let r = rfc_case(&n, "AddRecord", how, "call: Web/Www").await;
        committed(&r);
        assert_eq!(n.dig(&www, "A"), vec!["192.0.2.80".to_string()], "{how:?}");
        n.nsupdate(&[&format!("update delete {www} A")]);
        let r = rfc_case(&n, "AddRecord", how, "call: Web/WwwThenFail").await;
        rolled_back(&r, 1);
        assert!(n.dig(&www, "A").is_empty(), "{how:?}");
    }
}

#[tokio::test]
async fn rfc2136_in_doubt_replace_and_delete_are_undone_from_the_stored_prior_set() {
    let Some(n) = Named::start() else { return };
    let pre = format!("pre.{ZONE}");
    let original = n.dig(&pre, "A");
    assert_eq!(
        original,
        vec!["192.0.2.1".to_string()],
        "the test zone's record"
    );
    for how in [Lose::Crash, Lose::Late(Duration::from_secs(5))] {
        let r = rfc_case(&n, "ReplaceRecordSet", how, "call: Web/Swap").await;
        rolled_back(&r, 1);
        assert_eq!(n.dig(&pre, "A"), original, "{how:?}: the old set is back");
        let r = rfc_case(&n, "DeleteRecord", how, "call: Web/Drop").await;
        rolled_back(&r, 1);
        assert_eq!(
            n.dig(&pre, "A"),
            original,
            "{how:?}: the deleted record is back"
        );
    }
}

#[tokio::test]
async fn rfc2136_the_stored_prior_set_settles_a_delete_after_a_restart() {
    let Some(n) = Named::start() else { return };
    let state = tempfile::tempdir().expect("tempdir");
    let pre = format!("pre.{ZONE}");
    let c = support::call(
        "DNS Provider",
        "DeleteRecord",
        &[
            ("zoneName", ZONE),
            ("name", "pre"),
            ("rrType", "A"),
            ("address", "192.0.2.1"),
        ],
    );
    let first = rfc_provider(&n, state.path());
    first.execute(c.clone()).await.expect("delete");
    assert!(n.dig(&pre, "A").is_empty());
    drop(first);
    // A new process (after a crash) knows only what the state folder kept.
    let again = rfc_provider(&n, state.path());
    let undo = again.recover(&c).await.expect("settled").expect("applied");
    again
        .undo(Done {
            state: provisio_engine::ProviderState::detached(),
            context: c.context.clone(),
            provider_context: c.provider_context.clone(),
            undo,
            execute_data: None,
        })
        .await
        .expect("undo");
    assert_eq!(n.dig(&pre, "A"), vec!["192.0.2.1".to_string()]);
    assert!(
        std::fs::read_dir(state.path())
            .expect("state")
            .next()
            .is_none(),
        "undo drops the prior record"
    );
}
