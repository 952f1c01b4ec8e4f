//! The engine test harness shared by the integration tests: an engine over namespace
//! files and a `RecordingProvider`, journals that fail on purpose, and a tracing
//! subscriber that captures what was logged.

#![allow(dead_code)] // each test binary uses its own part of the harness

use provisio_engine::data::json::to_json;
use provisio_engine::model::{Format, Namespace, Request};
use provisio_engine::provider::ProviderRegistry;
use provisio_engine::request::{parse_namespaces, parse_request};
use provisio_engine::testing::RecordingProvider;
use provisio_engine::{Catalog, CompileError};
use provisio_engine::{
    Engine, EngineOptions, Failure, Journal, JournalError, PlanEntry, RetryOptions, RunError,
    TxnResult,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An engine and the recording provider behind its `Rec Provider` namespace.
pub struct Env {
    pub rec: RecordingProvider,
    pub engine: Engine,
}

/// Fast retries so failing tests stay quick.
pub fn options() -> EngineOptions {
    EngineOptions {
        retry: RetryOptions::default()
            .with_intervals(Duration::from_millis(1), Duration::from_millis(1)),
        step_timeout: Duration::from_secs(20),
        ..EngineOptions::default()
    }
}

/// Namespaces from source (panics with the errors when they do not parse).
pub fn parse(src: &str, file: &str, format: Format) -> Vec<Namespace> {
    match parse_namespaces(src, file, format) {
        Ok(n) => n,
        Err(e) => panic!("namespace does not parse: {e:#?}"),
    }
}

/// An engine over one YAML namespace file (none when empty).
pub fn env(ns_yaml: &str) -> Env {
    env_with(ns_yaml, options())
}

pub fn env_with(ns_yaml: &str, options: EngineOptions) -> Env {
    let namespaces = if ns_yaml.trim().is_empty() {
        Vec::new()
    } else {
        parse(ns_yaml, "test.yaml", Format::Yaml)
    };
    env_ns(namespaces, options)
}

/// An engine over namespaces built (or adjusted) in code.
pub fn env_ns(namespaces: Vec<Namespace>, options: EngineOptions) -> Env {
    let rec = RecordingProvider::new("Rec");
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(rec.clone()));
    let catalog = match Catalog::new(namespaces, &registry) {
        Ok(c) => c,
        Err(e) => panic!("catalog errors: {e:#?}"),
    };
    let engine = Engine::new(catalog, registry, options);
    Env { rec, engine }
}

pub fn req(src: &str) -> Request {
    match parse_request(src, "req.yaml", Format::Yaml) {
        Ok(r) => r,
        Err(e) => panic!("request YAML does not parse: {e}"),
    }
}

impl Env {
    /// The same engine, reporting to `journal`.
    pub fn with_journal(self, journal: impl Journal + 'static) -> Env {
        Env {
            rec: self.rec,
            engine: self.engine.with_journal(Arc::new(journal)),
        }
    }

    pub async fn run(&self, req_src: &str) -> TxnResult {
        match self.engine.run(&req(req_src)).await {
            Ok(r) => r,
            Err(e) => panic!("request did not compile: {e}"),
        }
    }

    /// The compile errors of a request that must not compile.
    pub async fn compile_errors(&self, req_src: &str) -> Vec<CompileError> {
        match self.engine.run(&req(req_src)).await {
            Ok(r) => panic!(
                "expected compile errors, got a run: {:?} {:?}",
                r.state, r.failure
            ),
            Err(RunError::Compile(e)) => e.0,
            Err(e) => panic!("expected compile errors, got: {e}"),
        }
    }

    pub async fn plan(&self, req_src: &str) -> Vec<PlanEntry> {
        match self.engine.plan(&req(req_src)).await {
            Ok(p) => p,
            Err(e) => panic!("plan did not compile: {e}"),
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.rec.log()
    }

    pub fn resources(&self) -> Vec<String> {
        self.rec.resources().into_iter().collect()
    }
}

/// The response data as JSON (panics with the failure when the run did not commit).
pub fn data(r: &TxnResult) -> serde_json::Value {
    match &r.data {
        Some(d) => to_json(d),
        None => panic!("no data: {:?} {:?}", r.state, r.failure),
    }
}

/// The failure of a run that must have failed.
pub fn failure(r: &TxnResult) -> &Failure {
    match &r.failure {
        Some(f) => f,
        None => panic!("expected a failure, state {:?}", r.state),
    }
}

/// `"Create(a)"` → `"a"` for log lines of a given procedure.
pub fn names_of<'a>(log: &'a [String], prefix: &str) -> Vec<&'a str> {
    log.iter()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|l| l.strip_suffix(')'))
        .collect()
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A journal error as a full disk gives it.
pub fn disk_full() -> JournalError {
    JournalError::other(std::io::Error::new(
        std::io::ErrorKind::StorageFull,
        "journal I/O error: No space left on device",
    ))
}

/// Captures the events logged on the current thread while its guard lives, as text lines
/// `LEVEL target: message field=value …` (spans are ignored).
///
/// One process-wide subscriber routes each event to the capture of the thread that logged
/// it. A per-thread default subscriber (`set_default`) lost events now and then: tracing
/// caches a callsite's interest process-wide, and a callsite first reached by another
/// test's thread while no capture existed could stay disabled.
#[derive(Clone, Default)]
pub struct Logs {
    lines: Arc<Mutex<Vec<String>>>,
}

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Arc<Mutex<Vec<String>>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Ends the capture of its thread when dropped.
pub struct CaptureGuard(());

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|c| *c.borrow_mut() = None);
    }
}

/// The process-wide subscriber behind [`Logs`].
struct Router;

impl Logs {
    /// Captures what the current thread logs until the guard is dropped (a
    /// `#[tokio::test]` runs its tasks on this thread).
    pub fn capture() -> (Logs, CaptureGuard) {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            // Fails only when another global subscriber is set; then nothing is captured
            // and the test's assertions say so.
            let _ = tracing::subscriber::set_global_default(Router);
        });
        let logs = Logs::default();
        CAPTURE.with(|c| *c.borrow_mut() = Some(logs.lines.clone()));
        (logs, CaptureGuard(()))
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Everything captured, one event a line.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!(" {value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!(" {}={value}", field.name()));
    }
}

impl tracing::Subscriber for Router {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::always()
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        CAPTURE.with(|c| {
            if let Some(lines) = &*c.borrow() {
                let meta = event.metadata();
                let mut fields = Fields(format!("{} {}:", meta.level(), meta.target()));
                event.record(&mut fields);
                lines
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(fields.0);
            }
        });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
