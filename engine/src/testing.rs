//! Test infrastructure, not a deliverable provider: an in-process provider that keeps a set
//! of named resources, records every call and undo, and fails, panics or hangs on demand,
//! and [`StateFixture`], provider state for a provider's unit tests without an engine.
//! The engine's own tests and benchmarks use it; real providers live in `provisio-providers`.

use crate::data::Element;
use crate::model::{InputSpec, ProcKind};
use crate::provider::{
    Call, Done, Outcome, Preview, ProcedureSpec, Provider, ProviderError, UndoKind,
};
use async_trait::async_trait;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Shared, inspectable state of a [`RecordingProvider`].
#[derive(Debug, Default)]
pub struct Recording {
    /// Resources that currently exist.
    pub resources: BTreeSet<String>,
    /// Every call and undo, in order: `Create(a)`, `undo Create(a)`, `prepare Stage(a)` …
    pub(crate) log: Vec<String>,
    /// Names whose Create fails permanently.
    pub(crate) poison: BTreeSet<String>,
    /// Names whose undo fails (every attempt).
    pub(crate) undo_poison: BTreeSet<String>,
    /// Remaining transient failures per name for `Flaky`.
    pub(crate) flaky: HashMap<String, u32>,
    /// Names whose Stage prepare fails.
    pub(crate) prepare_poison: BTreeSet<String>,
    /// Staged (two-phase, not yet committed) names.
    pub staged: BTreeSet<String>,
    /// Undo records of applied calls by idempotency key (for `recover`).
    pub(crate) applied: HashMap<String, Element>,
    /// Names whose next Create applies and then loses its answer (an in-doubt error).
    pub(crate) lose_answer: BTreeSet<String>,
    /// Names whose next Create applies and then takes this long to answer.
    pub(crate) slow_answer: HashMap<String, Duration>,
    pub(crate) slow_preview: HashMap<String, Duration>,
    /// Whether `recover` says it cannot tell.
    pub(crate) cannot_tell: bool,
    /// How many times `recover` was asked.
    pub recovers: usize,
}

/// The provider. Procedures: `Create(name)`, `Delete(name)`, `Get(name)` (read), `Fail(message?)`,
/// `Flaky(name)`, `Panic`, `Hang`, `Noop` (no undo), `Stage(name)` (two-phase), `Echo`.
#[derive(Debug, Clone)]
pub struct RecordingProvider {
    name: String,
    /// The shared state.
    pub state: Arc<Mutex<Recording>>,
}

impl RecordingProvider {
    /// A provider registered under `name` (its namespace is `<name> Provider`).
    pub fn new(name: impl Into<String>) -> Self {
        RecordingProvider {
            name: name.into(),
            state: Arc::new(Mutex::new(Recording::default())),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, Recording> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `Create(name)` fail.
    pub fn poison(&self, name: &str) {
        self.st().poison.insert(name.to_string());
    }

    /// Makes the undo of `name` fail.
    pub fn poison_undo(&self, name: &str) {
        self.st().undo_poison.insert(name.to_string());
    }

    /// Makes `Flaky(name)` fail transiently `times` times.
    pub fn flaky(&self, name: &str, times: u32) {
        self.st().flaky.insert(name.to_string(), times);
    }

    /// Makes the next `Create(name)` apply and then report that its outcome is unknown, as
    /// a provider whose process crashed after the change would.
    pub fn lose_answer_once(&self, name: &str) {
        self.st().lose_answer.insert(name.to_string());
    }

    /// Makes the next `Create(name)` apply and then wait `delay` before answering (longer
    /// than the step timeout: the engine gives up on an applied call).
    pub fn slow_answer_once(&self, name: &str, delay: Duration) {
        self.st().slow_answer.insert(name.to_string(), delay);
    }

    /// Makes the previews of `name` (a dry run) wait `delay` before answering.
    pub fn slow_preview(&self, name: &str, delay: Duration) {
        self.st().slow_preview.insert(name.to_string(), delay);
    }

    /// Makes `recover` answer that it cannot tell whether a call was applied.
    pub fn cannot_tell(&self) {
        self.st().cannot_tell = true;
    }

    /// Makes the two-phase prepare of `Stage(name)` fail.
    pub fn poison_prepare(&self, name: &str) {
        self.st().prepare_poison.insert(name.to_string());
    }

    /// The resources that exist now.
    pub fn resources(&self) -> BTreeSet<String> {
        self.st().resources.clone()
    }

    /// The call log.
    pub fn log(&self) -> Vec<String> {
        self.st().log.clone()
    }
}

fn input(call: &Element, name: &str) -> Result<String, ProviderError> {
    call.child(name)
        .map(|e| e.string_value())
        .ok_or_else(|| ProviderError::invalid(format!("input `{name}` is missing")))
}

fn spec(name: &str, kind: ProcKind, undo: UndoKind, inputs: &[&str]) -> ProcedureSpec {
    ProcedureSpec {
        name: name.to_string(),
        kind,
        undo,
        description: format!("test procedure {name}"),
        inputs: inputs
            .iter()
            .map(|n| InputSpec {
                name: n.to_string(),
                required: true,
                ..Default::default()
            })
            .collect(),
    }
}

#[async_trait]
impl Provider for RecordingProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn procedures(&self) -> Vec<ProcedureSpec> {
        vec![
            spec("Create", ProcKind::Write, UndoKind::Reversible, &["name"]),
            spec("Delete", ProcKind::Write, UndoKind::Reversible, &["name"]),
            spec("Get", ProcKind::Read, UndoKind::Nothing, &["name"]),
            spec("Fail", ProcKind::Write, UndoKind::Nothing, &[]),
            spec("Flaky", ProcKind::Write, UndoKind::Reversible, &["name"]),
            spec("Panic", ProcKind::Write, UndoKind::Nothing, &[]),
            spec("Hang", ProcKind::Write, UndoKind::Nothing, &[]),
            spec("Noop", ProcKind::Write, UndoKind::Nothing, &[]),
            spec("Echo", ProcKind::Read, UndoKind::Nothing, &[]),
            spec("Stage", ProcKind::TwoPhase, UndoKind::Reversible, &["name"]),
        ]
    }

    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        let ed = call.execute_data;
        let proc_name = call.context.procedure.as_str();
        match proc_name {
            "Noop" | "Echo" => {
                return Ok(Outcome {
                    execute_data: ed,
                    undo: None,
                })
            }
            "Panic" => panic!("test provider asked to panic"),
            "Hang" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return Ok(Outcome {
                    execute_data: ed,
                    undo: None,
                });
            }
            "Fail" => {
                let message = ed
                    .child("message")
                    .map(|m| m.string_value())
                    .unwrap_or_else(|| "asked to fail".to_string());
                self.st().log.push(format!("Fail({message})"));
                return Err(ProviderError::Permanent {
                    code: crate::codes::E_TEST_FAILURE,
                    message,
                });
            }
            _ => {}
        }
        let name = input(&ed, "name")?;
        let mut delay = None;
        // The state lock is not held across the delay below.
        let result = (|| {
            let mut st = self.st();
            st.log.push(format!("{proc_name}({name})"));
            let mut out = ed.clone();
            match proc_name {
                "Create" | "Flaky" | "Stage" => {
                    if proc_name == "Flaky" {
                        if let Some(n) = st.flaky.get_mut(&name) {
                            if *n > 0 {
                                *n -= 1;
                                return Err(ProviderError::transient(format!("{name} is busy")));
                            }
                        }
                    }
                    if st.poison.contains(&name) {
                        return Err(ProviderError::Permanent {
                            code: crate::codes::E_TEST_FAILURE,
                            message: format!("cannot create {name}"),
                        });
                    }
                    if !st.resources.insert(name.clone()) {
                        return Err(ProviderError::Permanent {
                            code: crate::codes::E_ALREADY_EXISTS,
                            message: format!("{name} already exists"),
                        });
                    }
                    if proc_name == "Stage" {
                        st.staged.insert(name.clone());
                    }
                    out.push(Element::with_text("id", format!("id-{name}")));
                    let mut undo = Element::new("undo");
                    undo.push(Element::with_text("created", name.clone()));
                    st.applied
                        .insert(call.context.idempotency_key(), undo.clone());
                    if st.lose_answer.remove(&name) {
                        return Err(ProviderError::in_doubt(format!(
                            "lost the answer to Create({name})"
                        )));
                    }
                    delay = st.slow_answer.remove(&name);
                    Ok(Outcome {
                        execute_data: out,
                        undo: Some(undo),
                    })
                }
                "Delete" => {
                    if !st.resources.remove(&name) {
                        return Err(ProviderError::invalid(format!("{name} does not exist")));
                    }
                    let mut undo = Element::new("undo");
                    undo.push(Element::with_text("deleted", name));
                    st.applied
                        .insert(call.context.idempotency_key(), undo.clone());
                    Ok(Outcome {
                        execute_data: out,
                        undo: Some(undo),
                    })
                }
                "Get" => {
                    let exists = st.resources.contains(&name);
                    out.push(Element::with_text("exists", exists.to_string()));
                    Ok(Outcome {
                        execute_data: out,
                        undo: None,
                    })
                }
                other => Err(ProviderError::invalid(format!("unknown procedure {other}"))),
            }
        })();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        result
    }

    async fn undo(&self, done: Done) -> Result<(), ProviderError> {
        let mut st = self.st();
        if let Some(c) = done.undo.child("created") {
            let name = c.string_value();
            st.log
                .push(format!("undo {}({name})", done.context.procedure));
            if st.undo_poison.contains(&name) {
                return Err(ProviderError::permanent(format!("cannot undo {name}")));
            }
            st.resources.remove(&name);
            st.staged.remove(&name);
        } else if let Some(d) = done.undo.child("deleted") {
            let name = d.string_value();
            st.log.push(format!("undo Delete({name})"));
            st.resources.insert(name);
        }
        Ok(())
    }

    async fn recover(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        let mut st = self.st();
        st.recovers += 1;
        if st.cannot_tell {
            return Err(ProviderError::Unsupported(format!(
                "cannot tell whether {} was applied",
                call.context.idempotency_key()
            )));
        }
        Ok(st.applied.get(&call.context.idempotency_key()).cloned())
    }

    async fn preview(&self, call: &Call) -> Result<Preview, ProviderError> {
        let name = call
            .execute_data
            .child("name")
            .map(|e| e.string_value())
            .unwrap_or_default();
        let delay = self.st().slow_preview.get(&name).copied();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let exists = self.st().resources.contains(&name);
        Ok(match (call.context.procedure.as_str(), exists) {
            // Create of an existing name fails (see `execute`).
            ("Create", true) => Preview::Fail(format!("{name} already exists")),
            ("Create", false) => Preview::Change(format!("create {name}")),
            _ => Preview::Unknown,
        })
    }

    async fn prepare(&self, done: &Done) -> Result<(), ProviderError> {
        let name = done
            .undo
            .child("created")
            .map(|e| e.string_value())
            .unwrap_or_default();
        let mut st = self.st();
        st.log.push(format!("prepare Stage({name})"));
        if st.prepare_poison.contains(&name) {
            return Err(ProviderError::permanent(format!("cannot prepare {name}")));
        }
        Ok(())
    }

    async fn commit(&self, done: &Done) -> Result<(), ProviderError> {
        let name = done
            .undo
            .child("created")
            .map(|e| e.string_value())
            .unwrap_or_default();
        let mut st = self.st();
        st.log.push(format!("commit Stage({name})"));
        st.staged.remove(&name);
        Ok(())
    }
}

/// Provider state for a provider's unit tests, which build their [`Call`]s by hand: an
/// in-memory state space with the engine's semantics (locks, own writes, writes kept only
/// when the call is committed), without an engine.
///
/// ```
/// # use provisio_engine::testing::StateFixture;
/// # tokio_test_block_on(async {
/// let fixture = StateFixture::new("Directory");
/// let state = fixture.call_state();
/// state.put(b"cn=ann", b"{}".to_vec()).await.unwrap();
/// fixture.commit(&state).await;
/// assert!(fixture.value(b"cn=ann").is_some());
/// # });
/// # fn tokio_test_block_on(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct StateFixture {
    provider: String,
    space: Arc<crate::state::StateSpace>,
}

impl StateFixture {
    /// An empty state space for the provider named `provider`.
    pub fn new(provider: impl Into<String>) -> StateFixture {
        StateFixture {
            provider: provider.into(),
            space: Arc::new(crate::state::StateSpace::in_memory(Duration::from_secs(5))),
        }
    }

    /// A writable handle for one call of a transaction of its own (put it in
    /// [`Call::state`]).
    pub fn call_state(&self) -> crate::ProviderState {
        let txn = crate::TxnId::new_v7();
        self.space
            .handle(&txn, &self.provider, crate::state::Access::Write)
    }

    /// A read-only handle (for [`Done::state`] or `recover`), in a transaction of its own.
    pub fn read_state(&self) -> crate::ProviderState {
        let txn = crate::TxnId::new_v7();
        self.space
            .handle(&txn, &self.provider, crate::state::Access::Read("a test"))
    }

    /// Ends the call of `state` as a successful one and its transaction as committed: its
    /// writes are kept, its keys freed.
    pub async fn commit(&self, state: &crate::ProviderState) {
        if let Some(change) = state.finish().expect("an in-memory store does not fail") {
            self.space
                .apply(&change)
                .await
                .expect("an in-memory store does not fail");
        }
        self.end(state);
    }

    /// Ends the call of `state` as a failed one: its writes are dropped, its keys freed.
    pub fn discard(&self, state: &crate::ProviderState) {
        state.discard();
        self.end(state);
    }

    fn end(&self, state: &crate::ProviderState) {
        state.call_finished();
        if let Some(txn) = state.txn() {
            self.space.release(txn);
        }
    }

    /// The committed value of `key`.
    pub fn value(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.space
            .peek(&self.provider, key)
            .expect("an in-memory store does not fail")
    }
}

/// Opens the store a test suite that runs on both stores uses for the folder `dir`: the
/// PostgreSQL store at `postgres` when given (test-support's `postgres::store_url(dir)`,
/// which is `Some` when `PROVISIO_TEST_STORE=postgres`), else sled in `dir`. Opening the
/// same folder again (after a crash, in a child process) opens the same store.
#[cfg(feature = "postgres")]
pub fn open_store(dir: &std::path::Path, postgres: Option<String>) -> Arc<dyn crate::Store> {
    match postgres {
        Some(url) => Arc::new(
            crate::PgStore::open(
                &url,
                &crate::PgOptions {
                    connect_retry: Duration::from_secs(10),
                    application: "provisio tests".into(),
                },
            )
            .unwrap_or_else(|e| panic!("open the PostgreSQL store: {e}")),
        ),
        None => Arc::new(
            crate::SledStore::open(dir).unwrap_or_else(|e| panic!("open the sled store: {e}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::StateFixture;

    #[tokio::test]
    async fn a_fixture_keeps_committed_writes_and_drops_discarded_ones() {
        let fixture = StateFixture::new("P");
        let first = fixture.call_state();
        first.put(b"k", b"1".to_vec()).await.unwrap();
        fixture.commit(&first).await;
        let second = fixture.call_state();
        assert_eq!(second.get(b"k").await.unwrap().as_deref(), Some(&b"1"[..]));
        second.put(b"k", b"2".to_vec()).await.unwrap();
        fixture.discard(&second);
        assert_eq!(fixture.value(b"k").as_deref(), Some(&b"1"[..]));
        let reads = fixture.read_state();
        assert!(reads.put(b"k", b"3".to_vec()).await.is_err());
        assert_eq!(reads.get(b"k").await.unwrap().as_deref(), Some(&b"1"[..]));
    }
}
