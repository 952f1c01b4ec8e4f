//! The ldap backend through a real engine against a private slapd, for what only a server
//! can do: it goes down in the middle of a transaction (the call is retried and goes through
//! when it is back; or the step fails naming the server, and the rollback waits for it), and
//! it refuses a write (insufficient access: rolled back at once). Checked with ldapsearch.

use async_trait::async_trait;
use provisio_engine::model::Format;
use provisio_engine::provider::{
    Call, Done, Outcome, ProcedureSpec, Provider, ProviderError, ProviderRegistry, UndoKind,
};
use provisio_engine::request::parse_request;
use provisio_engine::{Catalog, Engine, EngineOptions, RetryOptions, TxnResult, TxnState};
use provisio_providers::directory::ldap::{LdapBackend, LdapSettings, TlsMode};
use provisio_providers::directory::DirectoryProvider;
use provisio_test_support::slapd::{self, Slapd};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NS: &str = "Active Directory Provider";

/// A provider whose one procedure stops the slapd, and starts it again `back_after` later
/// (on a thread of its own).
struct Outage {
    server: Arc<Mutex<Slapd>>,
    back_after: Duration,
}

#[async_trait]
impl Provider for Outage {
    fn name(&self) -> &str {
        "Outage"
    }

    fn procedures(&self) -> Vec<ProcedureSpec> {
        vec![ProcedureSpec {
            name: "Stop".into(),
            kind: provisio_engine::model::ProcKind::Write,
            undo: UndoKind::Nothing,
            description: "stops the directory server for a while".into(),
            inputs: Vec::new(),
        }]
    }

    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        self.server.lock().unwrap().stop();
        let server = self.server.clone();
        let back_after = self.back_after;
        std::thread::spawn(move || {
            std::thread::sleep(back_after);
            server.lock().unwrap().restart().expect("restart slapd");
        });
        Ok(Outcome {
            execute_data: call.execute_data,
            undo: None,
        })
    }

    async fn undo(&self, _done: Done) -> Result<(), ProviderError> {
        Ok(())
    }
}

fn engine(s: &Slapd, server: Arc<Mutex<Slapd>>, back_after: Duration, service: bool) -> Engine {
    let (who, pw) = if service {
        (slapd::SERVICE_DN, s.service_password_file())
    } else {
        (slapd::ADMIN_DN, s.password_file())
    };
    let mut settings = LdapSettings::new(s.ldaps_url(), who, pw, slapd::SUFFIX);
    settings.tls = TlsMode::Ldaps;
    settings.tls_ca_file = Some(s.ca_file());
    settings.timeout = Duration::from_secs(2);
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(DirectoryProvider::with_backend(Arc::new(
        LdapBackend::new(settings).unwrap(),
    ))));
    registry.register(Arc::new(Outage { server, back_after }));
    let catalog = Catalog::new(Vec::new(), &registry).expect("catalog");
    Engine::new(
        catalog,
        registry,
        EngineOptions {
            retry: RetryOptions::default()
                .with_intervals(Duration::from_millis(100), Duration::from_millis(400)),
            step_timeout: Duration::from_secs(30),
            ..EngineOptions::default()
        },
    )
}

async fn run(engine: &Engine, steps: Vec<(&str, String, Value)>) -> TxnResult {
    let mut map = serde_json::Map::new();
    for (id, call, with) in steps {
        map.insert(id.to_string(), json!({"call": call, "with": with}));
    }
    let req = json!({"procedure": {"type": "write", "parallel": false, "steps": Value::Object(map)}, "data": {"x": "1"}});
    let request = parse_request(&req.to_string(), "req.json", Format::Json).expect("parses");
    engine.run(&request).await.expect("compiles")
}

fn create(container: &str, class: &str, name: &str) -> (String, Value) {
    (
        format!("{NS}/Create Object"),
        json!({"container": container, "class": class, "name": name}),
    )
}

fn exists(s: &Arc<Mutex<Slapd>>, dn: &str) -> bool {
    s.lock().unwrap().values(dn, "objectClass").is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_back_within_the_retries_lets_the_transaction_commit() {
    let Some(s) = Slapd::start() else { return };
    let e = {
        let shared = Arc::new(Mutex::new(s));
        let guard = shared.lock().unwrap();
        let e = engine(&guard, shared.clone(), Duration::from_millis(150), false);
        drop(guard);
        (e, shared)
    };
    let (engine, server) = e;
    let ou = format!("OU=Back,{}", slapd::TESTS_OU);
    let (c1, w1) = create(slapd::TESTS_OU, "organizationalUnit", "OU=Back");
    let (c2, w2) = create(&ou, "contact", "CN=After");
    let r = run(
        &engine,
        vec![
            ("ou", c1, w1),
            ("stop", "Outage Provider/Stop".into(), json!({})),
            ("after", c2, w2),
        ],
    )
    .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert!(
        r.calls > 3,
        "the call after the outage was retried: {} calls",
        r.calls
    );
    assert!(exists(&server, &format!("CN=After,{ou}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stays_down_fails_the_step_naming_it_and_the_rollback_waits_for_it() {
    let Some(s) = Slapd::start() else { return };
    let url = s.ldaps_url();
    let shared = Arc::new(Mutex::new(s));
    let engine = {
        let guard = shared.lock().unwrap();
        engine(&guard, shared.clone(), Duration::from_secs(4), false)
    };
    let ou = format!("OU=Down,{}", slapd::TESTS_OU);
    let (c1, w1) = create(slapd::TESTS_OU, "organizationalUnit", "OU=Down");
    let (c2, w2) = create(&ou, "contact", "CN=Never");
    let r = run(
        &engine,
        vec![
            ("ou", c1, w1),
            ("stop", "Outage Provider/Stop".into(), json!({})),
            ("never", c2, w2),
        ],
    )
    .await;
    assert_eq!(
        r.state,
        TxnState::RolledBack,
        "{:?} {:?}",
        r.failure,
        r.undo_failures
    );
    let f = r.failure.expect("a failure");
    assert_eq!(f.step, "never");
    assert!(f.message.contains(&url), "names the server: {}", f.message);
    assert!(r.transient, "a transient failure");
    // The OU made before the outage was removed once the server was back.
    assert!(!exists(&shared, &ou));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_rolls_back_at_once() {
    let Some(s) = Slapd::start() else { return };
    let shared = Arc::new(Mutex::new(s));
    let engine = {
        let guard = shared.lock().unwrap();
        engine(&guard, shared.clone(), Duration::from_secs(1), true)
    };
    let (c1, w1) = create(slapd::TESTS_OU, "organizationalUnit", "OU=Allowed");
    let (c2, w2) = create(slapd::LOCKED_OU, "contact", "CN=Forbidden");
    let started = std::time::Instant::now();
    let r = run(&engine, vec![("ok", c1, w1), ("refused", c2, w2)]).await;
    assert_eq!(
        r.state,
        TxnState::RolledBack,
        "{:?} {:?}",
        r.failure,
        r.undo_failures
    );
    let f = r.failure.expect("a failure");
    assert_eq!(f.step, "refused");
    assert!(!r.transient, "a refusal is permanent");
    assert!(
        f.message.contains("CN=Forbidden") && f.message.contains("50"),
        "{}",
        f.message
    );
    assert!(started.elapsed() < Duration::from_secs(5), "not retried");
    assert!(r.calls <= 2, "not retried: {} calls", r.calls);
    assert!(!exists(&shared, &format!("OU=Allowed,{}", slapd::TESTS_OU)));
    assert!(!exists(
        &shared,
        &format!("CN=Forbidden,{}", slapd::LOCKED_OU)
    ));
}
