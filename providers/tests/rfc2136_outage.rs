//! A rollback rides out a DNS server restart: a transaction adds a record on a real BIND
//! `named` through RFC 2136, its next step fails, and at that moment `named` is stopped and
//! only started again two seconds later. The undo of the record fails transiently while the
//! server is down and is retried under the engine's default `undo` retry policy; the
//! transaction ends `rolled_back`, and `dig` against the restarted server finds no record.

use async_trait::async_trait;
use provisio_engine::data::Element;
use provisio_engine::model::Format;
use provisio_engine::provider::{
    Call, Done, Outcome, Preview, ProcedureSpec, Provider, ProviderError, ProviderRegistry,
};
use provisio_engine::request::{parse_namespaces, parse_request};
use provisio_engine::Catalog;
use provisio_engine::{Engine, EngineOptions, TxnState};
use provisio_providers::dns::{DnsProvider, Rfc2136Config};
use provisio_test_support::bind::{Named, ZONE};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the server stays down.
const OUTAGE: Duration = Duration::from_secs(2);

/// The RFC 2136 DNS provider; the call at step `down` stops `named` (restarted after
/// [`OUTAGE`] by another thread) and fails, so the rollback starts with the server gone.
struct Outage {
    inner: DnsProvider,
    named: Arc<Mutex<Named>>,
    restart: Mutex<Option<JoinHandle<Result<(), String>>>>,
    failed_undos: AtomicU32,
}

#[async_trait]
impl Provider for Outage {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn procedures(&self) -> Vec<ProcedureSpec> {
        self.inner.procedures()
    }
    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        if call.context.step_id != "down" {
            return self.inner.execute(call).await;
        }
        self.named.lock().expect("named").stop();
        let named = self.named.clone();
        *self.restart.lock().expect("restart") = Some(std::thread::spawn(move || {
            std::thread::sleep(OUTAGE);
            named.lock().expect("named").restart()
        }));
        Err(ProviderError::permanent(
            "the next step failed (and the DNS server went down)",
        ))
    }
    async fn undo(&self, done: Done) -> Result<(), ProviderError> {
        let r = self.inner.undo(done).await;
        if let Err(e) = &r {
            assert!(
                matches!(
                    e,
                    ProviderError::Transient { .. } | ProviderError::InDoubt { .. }
                ),
                "a server that is down is a transient error: {e:?}"
            );
            self.failed_undos.fetch_add(1, Ordering::SeqCst);
        }
        r
    }
    async fn recover(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        self.inner.recover(call).await
    }
    async fn preview(&self, call: &Call) -> Result<Preview, ProviderError> {
        self.inner.preview(call).await
    }
}

const NS: &str = r#"
namespace: Web
procedures:
  WwwThenOutage:
    access: public
    parallel: false
    steps:
      www: { call: DNS Provider/AddRecord, with: { zoneName: example.test, name: www, rrType: A, address: 192.0.2.80 } }
      down: { call: DNS Provider/AddRecord, with: { zoneName: example.test, name: down, rrType: A, address: 192.0.2.81 } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_rides_out_a_dns_server_restart() {
    let Some(n) = Named::start() else { return };
    let www = format!("www.{ZONE}");
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = Rfc2136Config::from_key_file(n.addr(), Path::new(&n.key_file())).expect("key");
    config.state_dir = Some(state.path().to_path_buf());
    config.timeout = Duration::from_secs(1);
    let named = Arc::new(Mutex::new(n));
    let provider = Arc::new(Outage {
        inner: DnsProvider::rfc2136(config).expect("provider"),
        named: named.clone(),
        restart: Mutex::new(None),
        failed_undos: AtomicU32::new(0),
    });
    let namespaces = parse_namespaces(NS, "web.yaml", Format::Yaml).expect("namespace");
    let mut registry = ProviderRegistry::new();
    registry.register(provider.clone());
    let catalog = Catalog::new(namespaces, &registry).expect("catalog");
    // The shipped default policies: an undo is tried for up to a minute.
    let engine = Engine::new(catalog, registry, EngineOptions::default());
    let request = parse_request("call: Web/WwwThenOutage", "req.yaml", Format::Yaml).expect("req");

    let started = Instant::now();
    let r = engine.run(&request).await.expect("compiles");
    let took = started.elapsed();
    let restarted = provider
        .restart
        .lock()
        .expect("restart")
        .take()
        .expect("the outage happened")
        .join()
        .expect("restart thread");
    restarted.expect("named restarts");

    assert_eq!(
        r.state,
        TxnState::RolledBack,
        "{:?} {:?}",
        r.failure,
        r.undo_failures
    );
    assert_eq!(r.undone, 1);
    assert_eq!(r.failure.as_ref().map(|f| f.step.as_str()), Some("down"));
    assert!(
        provider.failed_undos.load(Ordering::SeqCst) >= 1,
        "the undo met the outage"
    );
    assert!(
        took >= OUTAGE - Duration::from_millis(500),
        "the rollback waited for the server: {took:?}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    let n = named.lock().expect("named");
    assert!(n.dig(&www, "A").is_empty(), "the record is gone");
}
