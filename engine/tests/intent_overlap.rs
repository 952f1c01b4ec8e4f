//! A provider that asks for it (`Provider::awaits_intent`) is called while the engine's
//! intent record of the call is being made durable, and passes the call's barrier
//! (`Call::intent_durable`) before its first side effect: the barrier passes only once the
//! record is durable, fails when the record cannot be written (the call is then not
//! applied and the transaction rolls back), and the journal's records keep their order
//! (the intent before the call's outcome) even when the provider returns before waiting.

use async_trait::async_trait;
use provisio_engine::model::Format;
use provisio_engine::provider::{CallContext, ProviderRegistry};
use provisio_engine::request::parse_request;
use provisio_engine::testing::RecordingProvider;
use provisio_engine::txn::DurableJournal;
use provisio_engine::{Call, Catalog, Done, Element, Outcome, ProcedureSpec, Provider};
use provisio_engine::{Engine, EngineOptions, Journal, ProviderError, SledStore, TxnState};
use provisio_engine::{JournalError, StepDone, StepIntent, TxnId, TxnResult};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the journal takes over a durable intent: long enough that a call made at once
/// reaches its barrier well before the record is durable.
const INTENT_TAKES: Duration = Duration::from_millis(60);

/// The durable journal, with durable intents made slow (or failing for one step), noting
/// the records in the order they are written.
struct SlowIntents {
    inner: Arc<DurableJournal>,
    /// `intent:<step>`, `done:<step>`, `failed:<step>`, as each write returns.
    written: Mutex<Vec<String>>,
    /// Set once a durable intent is written (the record synced).
    durable: Arc<AtomicBool>,
    /// The step whose intent cannot be written.
    fail_step: Option<&'static str>,
}

#[async_trait]
impl Journal for SlowIntents {
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
        if i.durable {
            self.durable.store(false, Ordering::SeqCst);
            tokio::time::sleep(INTENT_TAKES).await;
            if self.fail_step == Some(i.context.step_id.as_str()) {
                self.note("intent-failed", i.context);
                return Err(JournalError::other(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "No space left on device",
                )));
            }
        }
        self.inner.step_intent(i).await?;
        self.note("intent", i.context);
        if i.durable {
            self.durable.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
    async fn step_done(&self, d: &StepDone<'_>) -> Result<(), JournalError> {
        self.inner.step_done(d).await?;
        self.note("done", d.context);
        Ok(())
    }
    async fn step_failed(&self, c: &CallContext, m: &str) -> Result<(), JournalError> {
        self.inner.step_failed(c, m).await?;
        self.note("failed", c);
        Ok(())
    }
    async fn step_in_doubt(&self, c: &CallContext, m: &str) -> Result<(), JournalError> {
        self.inner.step_in_doubt(c, m).await
    }
    async fn undo_done(&self, c: &CallContext, e: Option<&str>) -> Result<(), JournalError> {
        self.inner.undo_done(c, e).await?;
        self.note("undone", c);
        Ok(())
    }
}

impl SlowIntents {
    fn note(&self, what: &str, c: &CallContext) {
        let step = c.step_id.rsplit('/').next().unwrap_or(&c.step_id);
        self.written.lock().unwrap().push(format!("{what}:{step}"));
    }
}

/// What the provider saw at one call's barrier.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AtBarrier {
    step: String,
    /// The barrier was still closed when the call was made (the call overlapped the intent).
    pending_at_call: bool,
    /// The journal had the intent durable when the barrier passed (or `None`: it failed).
    durable_when_passed: Option<bool>,
}

/// The recording provider, called before the intent is durable: `Create` waits for the
/// barrier before creating; `Fail` and `Noop` answer at once (before the barrier), changing
/// nothing.
struct Awaiting {
    inner: RecordingProvider,
    durable: Arc<AtomicBool>,
    seen: Mutex<Vec<AtBarrier>>,
    opts_in: bool,
}

#[async_trait]
impl Provider for Awaiting {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn procedures(&self) -> Vec<ProcedureSpec> {
        self.inner.procedures()
    }
    fn awaits_intent(&self, _call: &Call) -> bool {
        self.opts_in
    }
    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        if call.context.procedure != "Create" {
            return self.inner.execute(call).await;
        }
        let pending_at_call = call.intent.is_pending();
        let passed = call.intent_durable().await;
        self.seen.lock().unwrap().push(AtBarrier {
            step: call.context.step_id.clone(),
            pending_at_call,
            durable_when_passed: passed
                .as_ref()
                .ok()
                .map(|()| self.durable.load(Ordering::SeqCst)),
        });
        passed?;
        self.inner.execute(call).await
    }
    async fn undo(&self, done: Done) -> Result<(), ProviderError> {
        self.inner.undo(done).await
    }
    async fn recover(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        self.inner.recover(call).await
    }
}

struct Ran {
    result: TxnResult,
    written: Vec<String>,
    seen: Vec<AtBarrier>,
    resources: Vec<String>,
    log: Vec<String>,
}

fn create(step: &str) -> String {
    format!(
        r#"<execute id="{step}" namespace="Rec Provider" procedure="Create"><executeData><name>{step}</name></executeData></execute>"#
    )
}

async fn run(steps: &str, fail_step: Option<&'static str>, opts_in: bool) -> Ran {
    let rec = RecordingProvider::new("Rec");
    let durable = Arc::new(AtomicBool::new(false));
    let provider = Arc::new(Awaiting {
        inner: rec.clone(),
        durable: durable.clone(),
        seen: Mutex::new(Vec::new()),
        opts_in,
    });
    let mut registry = ProviderRegistry::new();
    registry.register(provider.clone());
    let catalog = Catalog::new(Vec::new(), &registry).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let journal = Arc::new(SlowIntents {
        inner: Arc::new(DurableJournal::new(store.clone(), None, "test")),
        written: Mutex::new(Vec::new()),
        durable,
        fail_step,
    });
    let engine = Engine::new(catalog, registry, EngineOptions::default())
        .with_journal(journal.clone() as Arc<dyn Journal>);
    let text = format!("<request><procedure>{steps}</procedure></request>");
    let req = parse_request(&text, "t.xml", Format::Xml).unwrap();
    let result = engine.run(&req).await.unwrap();
    drop(engine);
    store.close();
    let written = journal.written.lock().unwrap().clone();
    let seen = provider.seen.lock().unwrap().clone();
    Ran {
        result,
        written,
        seen,
        resources: rec.resources().into_iter().collect(),
        log: rec.log(),
    }
}

#[tokio::test]
async fn an_opted_in_call_is_made_before_its_intent_is_durable_and_acts_only_after() {
    let ran = run(&format!("{}{}", create("a"), create("b")), None, true).await;
    assert_eq!(ran.result.state, TxnState::Committed, "{:?}", ran.result);
    assert_eq!(ran.resources, ["a", "b"]);
    assert_eq!(ran.seen.len(), 2, "{:?}", ran.seen);
    for seen in &ran.seen {
        assert!(
            seen.pending_at_call,
            "the call was made only once its intent was durable: {seen:?}"
        );
        assert_eq!(
            seen.durable_when_passed,
            Some(true),
            "the barrier passed before the intent was durable: {seen:?}"
        );
    }
    assert_eq!(ran.written, ["intent:a", "done:a", "intent:b", "done:b"]);
}

#[tokio::test]
async fn a_provider_that_does_not_opt_in_is_called_once_its_intent_is_durable() {
    let ran = run(&create("a"), None, false).await;
    assert_eq!(ran.result.state, TxnState::Committed, "{:?}", ran.result);
    assert_eq!(
        ran.seen,
        [AtBarrier {
            step: ran.seen[0].step.clone(),
            pending_at_call: false,
            durable_when_passed: Some(true),
        }]
    );
}

#[tokio::test]
async fn an_intent_that_cannot_be_written_fails_the_barrier_and_the_call_is_not_applied() {
    let ran = run(&format!("{}{}", create("a"), create("b")), Some("b"), true).await;
    assert_eq!(ran.result.state, TxnState::RolledBack, "{:?}", ran.result);
    let failure = ran.result.failure.as_ref().expect("a failure");
    assert!(
        failure.message.contains("No space left on device"),
        "{failure:?}"
    );
    assert_eq!(failure.step, "b");
    // b was never created; a was created, then undone.
    assert!(ran.resources.is_empty(), "{:?}", ran.resources);
    assert_eq!(ran.log, ["Create(a)", "undo Create(a)"]);
    assert_eq!(ran.seen.len(), 2, "{:?}", ran.seen);
    assert!(ran.seen[1].pending_at_call);
    assert_eq!(ran.seen[1].durable_when_passed, None, "{:?}", ran.seen[1]);
    assert_eq!(
        ran.written,
        ["intent:a", "done:a", "intent-failed:b", "undone:a"]
    );
}

#[tokio::test]
async fn records_keep_their_order_when_the_provider_answers_before_the_barrier() {
    let steps = r#"<execute id="n" namespace="Rec Provider" procedure="Noop"/><execute id="f" namespace="Rec Provider" procedure="Fail"/>"#;
    let ran = run(steps, None, true).await;
    assert_eq!(ran.result.state, TxnState::RolledBack, "{:?}", ran.result);
    assert_eq!(ran.written, ["intent:n", "done:n", "intent:f", "failed:f"]);
}

#[tokio::test]
async fn a_provider_answering_before_a_failed_intent_is_handled_as_the_intent_failure() {
    let steps = r#"<execute id="n" namespace="Rec Provider" procedure="Noop"/>"#;
    let ran = run(steps, Some("n"), true).await;
    assert_eq!(ran.result.state, TxnState::RolledBack, "{:?}", ran.result);
    let failure = ran.result.failure.as_ref().expect("a failure");
    assert!(
        failure.message.contains("No space left on device"),
        "{failure:?}"
    );
    assert_eq!(ran.written, ["intent-failed:n"]);
}
