//! The in-memory state of one running transaction: its data scopes, the calls it completed
//! (what a rollback undoes: kept in memory, or located in the durable journal), and the
//! context a step reads and writes through.

use super::script::{SCRIPT_NAMESPACE, SCRIPT_UNDO_TARGET};
use super::{PlanEntry, Redactor, Resume, UndoFailure};
use crate::compile::{Body, CompiledProcedure, Program};
use crate::data::Element;
use crate::model::ProcKind;
use crate::provider::{CallContext, Done, Provider};
use crate::{ProviderState, TxnId};
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

/// A call that completed and can be undone, kept compact: a rollback of 100,000 calls holds
/// 100,000 of these. What is the same for every call of a procedure (its target, kind,
/// provider context, entry point) is the compiled procedure, shared; the [`Done`] an undo
/// is called with is built from it when the undo runs ([`Completed::done`]).
pub(super) struct Completed {
    /// Completions counted when the call started: calls that completed earlier may be
    /// what it depends on.
    pub(crate) started_after: usize,
    pub(crate) seq: usize,
    /// What was called.
    pub(crate) called: Called,
    pub(crate) provider: Arc<dyn Provider>,
    /// The step instance (the call context's `step_id`).
    pub(crate) step: Box<str>,
    pub(crate) attempt: u32,
    /// The provider has an undo record to be called with (`false`: only state to reverse).
    pub(crate) provider_undo: bool,
    /// The undo record the provider returned, packed (`txn::packed`: about the size of its
    /// XML, a third of the tree's); empty for `<undo/>`.
    pub(crate) undo: Box<[u8]>,
    /// The call's executeData, packed, only when the procedure has `saveDataForRollback`.
    pub(crate) execute_data: Option<Box<[u8]>>,
    /// The call's provider-state writes (reversed once its undo succeeds).
    pub(crate) state: Option<Arc<crate::StateChange>>,
}

/// What a completed call called.
pub(super) enum Called {
    /// A provider leaf: its compiled procedure.
    Leaf(Arc<CompiledProcedure>),
    /// A script step's undo: the script step's id (the procedure it is journaled under).
    Script(Box<str>),
}

impl Completed {
    /// `Namespace/Procedure` of the call (what failures name).
    pub(crate) fn target(&self) -> String {
        match &self.called {
            Called::Leaf(p) => p.target.to_string(),
            Called::Script(_) => SCRIPT_UNDO_TARGET.to_string(),
        }
    }

    /// read | write | two-phase.
    pub(crate) fn kind(&self) -> ProcKind {
        match &self.called {
            Called::Leaf(p) => p.kind,
            Called::Script(_) => ProcKind::Write,
        }
    }

    /// Packs an undo record (or saved executeData) for [`Completed::undo`].
    pub(crate) fn pack(e: &Element) -> Box<[u8]> {
        if *e == Element::new("undo") {
            return Box::default();
        }
        crate::txn::packed::pack_small(e)
    }

    fn unpack(bytes: &[u8]) -> Result<Element, String> {
        if bytes.is_empty() {
            return Ok(Element::new("undo"));
        }
        crate::txn::packed::unpack(bytes)
            .map_err(|e| format!("the undo record kept in memory does not read back: {e}"))
    }

    /// What the provider's undo (or prepare, commit) is called with.
    pub(crate) fn done(&self, txn_id: &TxnId) -> Result<Done, String> {
        let (namespace, procedure, provider_context) = match &self.called {
            Called::Leaf(p) => match &p.body {
                Body::Leaf(leaf) => (
                    p.target.namespace.clone(),
                    leaf.entry.clone(),
                    leaf.provider_context.clone(),
                ),
                // Only leaves are registered for undo.
                Body::Steps(_) => (
                    p.target.namespace.clone(),
                    p.target.procedure.clone(),
                    Element::new("providerContext"),
                ),
            },
            Called::Script(id) => (
                SCRIPT_NAMESPACE.to_string(),
                id.to_string(),
                Element::new("providerContext"),
            ),
        };
        Ok(Done {
            context: CallContext {
                txn_id: txn_id.clone(),
                step_id: self.step.to_string(),
                attempt: self.attempt,
                namespace,
                procedure,
            },
            provider_context,
            undo: Completed::unpack(&self.undo)?,
            execute_data: self
                .execute_data
                .as_deref()
                .map(Completed::unpack)
                .transpose()?,
            state: ProviderState::detached(),
        })
    }
}

/// A completed call whose undo is read back from the durable journal when it runs
/// ([`crate::Journal::read_back`]): what orders it and where its records are — 32 bytes,
/// whatever the call carried (a [`Completed`] is ~170 with its step and undo record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Located {
    /// As [`Completed::started_after`].
    pub(crate) started_after: usize,
    /// As [`Completed::seq`].
    pub(crate) seq: usize,
    /// Sequence number of the call's intent in the journal.
    pub(crate) intent_seq: u64,
    /// Sequence number of its completion.
    pub(crate) done_seq: u64,
}

/// The completed calls of a transaction, in completion order, in chunks of at most
/// [`CHUNK`]: a long transaction's list grows without copying what it holds (a doubling
/// vector held the old and the new buffer at once, and up to half its capacity unused),
/// and a transaction of one or two calls holds one or two entries.
pub(super) struct Chunked<T> {
    chunks: Vec<Vec<T>>,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked { chunks: Vec::new() }
    }
}

/// The completed calls whose undo is kept in memory.
pub(super) type CompletedList = Chunked<Completed>;

/// Entries per chunk of a [`Chunked`] list.
const CHUNK: usize = 1024;

impl<T> Chunked<T> {
    /// Adds a completed call.
    pub(super) fn push(&mut self, c: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => {
                if last.len() == last.capacity() {
                    // The first chunk grows 1, 2, 4, … up to a whole chunk.
                    last.reserve_exact(last.len().max(1).min(CHUNK - last.len()));
                }
                last.push(c);
            }
            _ => {
                let mut chunk = Vec::with_capacity(if self.chunks.is_empty() { 1 } else { CHUNK });
                chunk.push(c);
                self.chunks.push(chunk);
            }
        }
    }

    /// How many entries it holds.
    pub(super) fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    /// The `i`th completed call.
    pub(super) fn get(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

/// One transaction while it runs.
pub(super) struct Txn {
    pub(crate) id: crate::TxnId,
    pub(crate) mode: RunMode,
    pub(crate) program: Arc<Program>,
    pub(crate) context: Mutex<Element>,
    pub(crate) completed: Mutex<CompletedList>,
    /// The completed calls whose undo the durable journal gives back when it runs (see
    /// [`Located`]); the rest are in `completed`.
    pub(crate) located: Mutex<Chunked<Located>>,
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
    /// The providers this run dispatched a call to (each once): the ones told when the
    /// transaction is over ([`crate::Provider::transaction_over`]); a provider it never
    /// called has nothing of it to drop.
    pub(crate) providers_called: Mutex<Vec<Arc<dyn crate::Provider>>>,
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

#[cfg(test)]
mod tests {
    use super::{Called, Completed, CompletedList, Located, CHUNK};
    use crate::data::{Element, Scalar};
    use crate::model::ProcKind;
    use crate::provider::Provider;
    use crate::testing::RecordingProvider;
    use crate::TxnId;
    use std::sync::Arc;

    fn entry(seq: usize, undo: &Element) -> Completed {
        let provider: Arc<dyn Provider> = Arc::new(RecordingProvider::new("Rec"));
        Completed {
            started_after: seq,
            seq,
            called: Called::Script(format!("s{seq}").into_boxed_str()),
            provider,
            step: format!("step[{seq}]").into_boxed_str(),
            attempt: 1,
            provider_undo: true,
            undo: Completed::pack(undo),
            execute_data: None,
            state: None,
        }
    }

    #[test]
    fn the_list_keeps_completion_order_across_chunks() {
        let undo = Element::new("undo");
        let mut list = CompletedList::default();
        let n = 2 * CHUNK + 3;
        for seq in 0..n {
            list.push(entry(seq, &undo));
        }
        assert_eq!(list.len(), n);
        assert!((0..n).all(|i| list.get(i).seq == i));
        assert!(list.iter().map(|c| c.seq).eq(0..n));
        // Whole chunks are allocated once, at their size.
        assert!(list.chunks[1..].iter().all(|c| c.capacity() == CHUNK));
        assert_eq!(list.chunks[0].capacity(), CHUNK);
    }

    #[test]
    fn a_located_call_is_small() {
        // What a durable rollback keeps per call instead of a `Completed`.
        assert!(std::mem::size_of::<Located>() <= 32);
        let mut list = super::Chunked::default();
        list.push(Located {
            started_after: 0,
            seq: 0,
            intent_seq: 3,
            done_seq: 4,
        });
        assert_eq!(list.len(), 1);
        assert_eq!(list.get(0).done_seq, 4);
    }

    #[test]
    fn an_undo_record_reads_back_as_it_was_given() {
        let mut undo = Element::new("undo");
        let mut created = Element::with_text("created", "u000123");
        created.attrs.push(("kind".into(), "folder".into()));
        undo.push(created);
        undo.push(Element::with_scalar("size", Scalar::Float(2.0)));
        undo.push(Element::with_scalar("count", Scalar::Int(-7)));
        let c = entry(0, &undo);
        // About the size of its XML (~110 bytes here), not of the tree (~600).
        assert!(c.undo.len() < 128, "{} bytes", c.undo.len());
        let id = TxnId::new_v7();
        let done = c.done(&id).expect("reads back");
        assert_eq!(done.undo, undo);
        assert_eq!(done.context.step_id, "step[0]");
        assert_eq!(done.context.txn_id, id);
        assert_eq!(c.kind(), ProcKind::Write);
        // `<undo/>` (a call with only provider state to reverse) takes no bytes.
        let empty = entry(1, &Element::new("undo"));
        assert!(empty.undo.is_empty());
        assert_eq!(empty.done(&id).expect("reads").undo, Element::new("undo"));
    }
}
