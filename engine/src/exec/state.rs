//! The in-memory state of one running transaction: its data scopes, the calls it completed
//! (what a rollback undoes), and the context a step reads and writes through.

use super::{PlanEntry, Redactor, Resume, UndoFailure};
use crate::compile::Program;
use crate::data::Element;
use crate::model::ProcKind;
use crate::provider::{Done, Provider};
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Whether providers are called, or only asked for a preview (a dry run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunMode {
    Execute,
    Plan,
}

/// A call that completed and can be undone.
pub(super) struct Completed {
    /// Completions counted when the call started: calls that completed earlier may be
    /// what it depends on.
    pub(crate) started_after: usize,
    pub(crate) seq: usize,
    pub(crate) step: String,
    pub(crate) target: String,
    pub(crate) kind: ProcKind,
    pub(crate) provider: Arc<dyn Provider>,
    pub(crate) done: Done,
    /// The call's provider-state writes (reversed once its undo succeeds).
    pub(crate) state: Option<Arc<crate::StateChange>>,
    /// The provider has an undo record to be called with (`false`: only state to reverse).
    pub(crate) provider_undo: bool,
}

/// Adds a completed call, growing the list 1, 2, 4, … instead of from 4: an entry is ~430
/// bytes, and most transactions in flight hold one or two.
pub(super) fn push_completed(completed: &mut Vec<Completed>, c: Completed) {
    if completed.len() == completed.capacity() {
        completed.reserve_exact(completed.len().max(1));
    }
    completed.push(c);
}

/// One transaction while it runs.
pub(super) struct Txn {
    pub(crate) id: crate::TxnId,
    pub(crate) mode: RunMode,
    pub(crate) program: Arc<Program>,
    pub(crate) context: Mutex<Element>,
    pub(crate) completed: Mutex<Vec<Completed>>,
    /// Completions so far (orders undo: see `Completed::started_after`).
    pub(crate) completions: AtomicUsize,
    /// One past the completion number of the latest call that wrote provider state: a later
    /// such call counts as started after it, so their undos (each restoring the values its
    /// writes replaced) run in reverse order even when the calls overlapped.
    pub(crate) state_chain: AtomicUsize,
    pub(crate) calls: AtomicUsize,
    pub(crate) permits: Semaphore,
    pub(crate) plan: Mutex<Vec<PlanEntry>>,
    pub(crate) redactor: Redactor,
    /// Set when resuming after a crash.
    pub(crate) resume: Option<Resume>,
    /// Calls in doubt that the provider could not settle: the transaction cannot commit,
    /// and its rollback names them for an operator.
    pub(crate) in_doubt: Mutex<Vec<UndoFailure>>,
    /// The id a client put in `context/transactionContext/@transactionId` (ignored: the
    /// engine writes its own there).
    pub(crate) client_transaction_id: Option<String>,
    /// Set by whoever runs the transaction to stop it: no provider call starts after it is
    /// set, and the transaction rolls back (see [`super::Cancel`]).
    pub(crate) cancel: Option<super::Cancel>,
    /// The step whose transient error the engine gave up retrying, if any: a failure of
    /// that step is worth trying again later ([`super::TxnResult::transient`]).
    pub(crate) transient_step: Mutex<Option<String>>,
}

/// One run of a procedure body: its `data`, `procedureData` and the cases its selects chose.
pub(super) struct Invocation {
    pub(crate) data: Mutex<Element>,
    pub(crate) procedure_data: Mutex<Element>,
    pub(crate) selects: Mutex<HashMap<String, String>>,
    /// MPS `sensitive` in force: the rollback data of calls made from here is sealed.
    pub(crate) sensitive: bool,
}

impl Invocation {
    pub(crate) fn new(data: Element, procedure_data: Element, sensitive: bool) -> Invocation {
        let mut pd = procedure_data;
        pd.name = "procedureData".into();
        Invocation {
            data: Mutex::new(data),
            procedure_data: Mutex::new(pd),
            selects: Mutex::new(HashMap::new()),
            sensitive,
        }
    }

    pub(crate) fn into_data(self) -> Element {
        self.data.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a step runs: its transaction, the invocation whose scopes it sees, and its path
/// (which names it in errors, the journal and the plan).
#[derive(Clone, Copy)]
pub(super) struct StepCtx<'a> {
    pub(crate) txn: &'a Txn,
    pub(crate) inv: &'a Invocation,
    pub(crate) step: &'a str,
}

impl<'a> StepCtx<'a> {
    /// The same invocation, at another step path.
    pub(crate) fn at(self, step: &'a str) -> StepCtx<'a> {
        StepCtx { step, ..self }
    }
}

/// Bindings of forEach names to their current node, per iteration.
pub(super) type Bindings = Vec<(String, Element)>;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere already failed this step; the data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
