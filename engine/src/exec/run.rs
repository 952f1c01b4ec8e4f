//! Running a transaction: journal its start, walk its plan (every ready step at once,
//! forEach/when/repeat/select/try-catch and nested calls), then commit or roll back and
//! journal the end.

use super::context;
use super::items::{Iterations, Origin};
use super::journal::log_lapse;
use super::state::{lock, Bindings, Invocation, RunMode, StepCtx, Txn};
use super::{
    Engine, ErrorSource, Failure, Resume, RunControl, TxnResult, TxnStart, TxnState, UndoFailure,
};
use crate::compile::{
    Body, CompiledProcedure, ExecNode, Plan, PlanNode, Program, SelectNode, TryNode,
};
use crate::data::{Element, IfNull, Path, Scalar};
use crate::model::CallTarget;
use crate::provider::ProviderError;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use petgraph::graph::NodeIndex;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info_span, Instrument};

impl Engine {
    /// Runs a program as one transaction, fresh or resumed: commit, or roll back
    /// everything done.
    pub(super) async fn run_txn(
        &self,
        program: Arc<Program>,
        data: Element,
        context: Element,
        resume: Option<Resume>,
        control: RunControl,
    ) -> TxnResult {
        let started_at = Instant::now();
        let mut txn = self.new_txn(program, RunMode::Execute, &data, context);
        txn.cancel = control.cancel;
        let chosen = control.txn_id.is_some();
        if let Some(id) = control.txn_id {
            txn.id = id;
        }
        let resuming = resume.is_some();
        if let Some(r) = resume {
            txn.id = r.txn_id.clone();
            txn.resume = Some(r);
        }
        if resuming || chosen {
            context::stamp_transaction_id(&mut lock(&txn.context), &txn.id);
        }
        let span = info_span!("txn", txn.id = %txn.id, procedure = %txn.program.entry.target);
        async {
            // The transaction's provider-state locks go when it has ended (its final state
            // journaled), or when its task is dropped.
            let _locks = crate::state::Release::new(self.state().clone(), txn.id.clone());
            let started = self.journal_start(&txn, &data, resuming).await;
            tracing::info!("transaction started");
            for warning in txn.program.warnings() {
                tracing::warn!("{warning}");
            }
            if let Some(theirs) = txn.client_transaction_id.as_deref().filter(|_| !resuming) {
                tracing::warn!(
                    client_transaction_id = %txn.redactor.redact_text(theirs),
                    "the request's transactionContext/@transactionId is ignored: the engine sets it to the transaction's own id (a client's own id belongs in clientContext/@clientTransactionId)"
                );
            }
            let result = match started {
                Ok(()) => match self.run_entry(&txn, data).await {
                    Ok(data) => match unsettled_call(&txn) {
                        // A try/catch went on past an unsettled in-doubt call: whether it
                        // took effect is unknown, so the transaction must not commit.
                        Some(f) => Err(f),
                        // Cancelled before the commit: what ran is rolled back.
                        None if txn.cancel.as_ref().is_some_and(super::Cancel::is_cancelled) => {
                            Err(Failure {
                                code: crate::codes::E_ABORT,
                                message: "the transaction was cancelled before it committed; \
                                          everything done is rolled back"
                                    .to_string(),
                                step: String::new(),
                                sources: Vec::new(),
                            })
                        }
                        None => self.two_phase(&txn).await.map(|()| data),
                    },
                    Err(f) => Err(f),
                },
                Err(e) => Err(Failure {
                    code: ProviderError::E_FAIL,
                    message: e.to_string(),
                    step: String::new(),
                    sources: Vec::new(),
                }),
            };
            let mut out = self.settle(&txn, result).await;
            self.journal_end(&txn, &mut out).await;
            if out.journal_error.is_none()
                && matches!(out.state, TxnState::Committed | TxnState::RolledBack)
            {
                let called = std::mem::take(&mut *lock(&txn.providers_called));
                for provider in called {
                    provider.transaction_over(txn.id.as_ref()).await;
                }
            }
            // After the outcome is journaled: a crash before this line is settled by
            // recovery from that outcome (`Queue::settle_held`).
            self.settle_jobs(&txn, out.state == TxnState::Committed)
                .await;
            out.elapsed = started_at.elapsed();
            out
        }
        .instrument(span)
        .await
    }

    /// Journals that the transaction starts (or resumes after a crash).
    async fn journal_start(
        &self,
        txn: &Txn,
        data: &Element,
        resuming: bool,
    ) -> Result<(), super::JournalError> {
        if resuming {
            return self
                .journal
                .txn_state(&txn.id, TxnState::Running, Some("resumed after a crash"))
                .await;
        }
        if !self.journal.records() {
            // Keeps nothing (`Journal::records`): no copy of the data to build.
            return Ok(());
        }
        // Built here, so the transaction's task does not carry them while it runs. The
        // masked copy only when something is secret: a wide request's data is not copied.
        let target = txn.program.entry.target.to_string();
        let masked = (!txn.redactor.is_empty()).then(|| {
            let mut shown = data.clone();
            txn.redactor.redact_element(&mut shown);
            shown
        });
        self.journal
            .txn_started(&TxnStart {
                txn_id: &txn.id,
                target: &target,
                kind: txn.program.entry.kind,
                resumable: txn.program.entry.resumable,
                definitions: &txn.program.definitions_hash,
                data: masked.as_ref().unwrap_or(data),
                request_data: data,
                secret: masked.is_some() && txn.redactor.contains_secret(data),
                pinned: &txn.program.pinned,
                audit: txn.program.entry.audit,
            })
            .await
    }

    /// Commits (the result's data, redacted) or rolls back after a failure.
    async fn settle(&self, txn: &Txn, result: Result<Element, Failure>) -> TxnResult {
        let mut out = TxnResult {
            txn_id: txn.id.clone(),
            state: TxnState::Committed,
            data: None,
            failure: None,
            undo_failures: Vec::new(),
            calls: txn.calls.load(AtomicOrdering::Relaxed),
            undone: 0,
            elapsed: Duration::ZERO,
            journal_error: None,
            client_context: context::client_context(&lock(&txn.context), &txn.redactor),
            transient: false,
            kept_response: None,
        };
        match result {
            Ok(mut data) => {
                txn.redactor.redact_element(&mut data);
                out.data = Some(data);
                tracing::info!("committed");
            }
            Err(mut failure) => {
                failure.message = txn.redactor.redact_text(&failure.message);
                tracing::warn!(
                    step = %failure.step, error = %failure.message, "step failed; rolling back"
                );
                let journaled = self
                    .journal
                    .txn_state(&txn.id, TxnState::RollingBack, Some(&failure.message))
                    .await;
                log_lapse(
                    journaled,
                    "rolling_back",
                    "the rollback goes on; should the process die before the final state is \
                     journaled, recovery finds the transaction running and rolls it back itself",
                );
                out.transient = lock(&txn.transient_step).as_deref() == Some(failure.step.as_str());
                let (undone, failures) = self.rollback(txn).await;
                out.rolled_back(undone, failures);
                out.failure = Some(failure);
            }
        }
        out
    }

    /// Journals the final state. A commit the journal could lose is not a commit:
    /// recovery would find the transaction unfinished and roll it back after the caller
    /// was told otherwise. So it is rolled back now (undos are idempotent, so recovery
    /// repeating them is harmless) and reported as failed.
    async fn journal_end(&self, txn: &Txn, out: &mut TxnResult) {
        let message = out.failure.as_ref().map(|f| f.message.clone());
        let e = match self.journal.txn_ended(out, message.as_deref()).await {
            Ok(kept) => {
                out.kept_response = kept;
                return;
            }
            Err(e) => e,
        };
        tracing::error!(error = %e, "the final state could not be journaled");
        out.journal_error = Some(e.to_string());
        if out.state != TxnState::Committed {
            return;
        }
        let (undone, failures) = self.rollback(txn).await;
        out.rolled_back(undone, failures);
        out.data = None;
        out.failure = Some(Failure {
            code: ProviderError::E_FAIL,
            message: format!(
                "the commit could not be journaled, so the transaction was rolled back: {e}"
            ),
            step: String::new(),
            sources: Vec::new(),
        });
        let message = out.failure.as_ref().map(|f| f.message.clone());
        let journaled = match self.journal.txn_ended(out, message.as_deref()).await {
            Ok(kept) => {
                out.kept_response = kept;
                Ok(())
            }
            Err(e) => Err(e),
        };
        log_lapse(
            journaled,
            "final state after the rollback",
            "recovery will find the transaction unfinished and roll it back again \
             (undos are idempotent, so repeating them is harmless)",
        );
    }

    /// Runs the entry procedure of a transaction on the request data.
    pub(super) async fn run_entry(&self, txn: &Txn, data: Element) -> Result<Element, Failure> {
        let entry = txn.program.entry.clone();
        let mut data = data;
        data.name = "data".into();
        match &entry.body {
            Body::Steps(plan) => {
                apply_defaults(&entry, &mut data);
                let inv = Invocation::new(data, entry.procedure_data.clone(), false);
                let started = std::time::Instant::now();
                let r = self.run_plan(txn, &inv, plan, "", 0).await;
                log_perf(&entry, "", started);
                match r {
                    Ok(_) => Ok(inv.into_data()),
                    Err(mut f) => {
                        f.sources.push(ErrorSource {
                            namespace: entry.target.namespace.clone(),
                            procedure: entry.target.procedure.clone(),
                            step: String::new(),
                        });
                        Err(f)
                    }
                }
            }
            Body::Leaf(leaf) => {
                let mut ed = data;
                ed.name = "executeData".into();
                // Boxed: inline, this rarely taken branch would size every transaction's
                // task for a provider call's state (the memory benchmark's figure).
                let step = &entry.target.procedure;
                let mut out = if txn.mode == RunMode::Plan {
                    // A dry run of a request that calls a provider procedure directly.
                    let at = Sched {
                        wave: 0,
                        unresolved: Vec::new(),
                        sensitive: false,
                    };
                    Box::pin(self.preview(txn, &entry, leaf, ed, step, at)).await?
                } else {
                    Box::pin(self.call_provider(txn, &entry, leaf, ed, step, false)).await?
                };
                out.name = "data".into();
                Ok(out)
            }
        }
    }

    /// Runs the steps of a plan: each step starts as soon as everything it depends on has
    /// finished. After a failure no new step starts; the running ones finish (so their
    /// results are recorded for rollback) and the failure of the step first in the
    /// procedure's order is returned.
    ///
    /// Waves count provider calls that must follow one another: the plan starts in wave
    /// `start`, a step starts in the wave after the last call of the steps it needs, and
    /// the plan's end wave (the wave after its last call) is returned. A dry run labels
    /// each call with its wave, so calls of one wave may run at once.
    fn run_plan<'a>(
        &'a self,
        txn: &'a Txn,
        inv: &'a Invocation,
        plan: &'a Plan,
        prefix: &'a str,
        start: usize,
    ) -> BoxFuture<'a, Result<usize, Failure>> {
        async move {
            let n = plan.graph.node_count();
            let mut ends = vec![start; n];
            let mut end = start;
            let mut indeg = vec![0usize; n];
            for e in plan.graph.raw_edges() {
                indeg[e.target().index()] += 1;
            }
            let mut ready: BinaryHeap<Reverse<usize>> =
                (0..n).filter(|&i| indeg[i] == 0).map(Reverse).collect();
            let mut running = FuturesUnordered::new();
            // Steps failing at the same time: the response names the one first in the
            // procedure's order, whichever finished first (deterministic output).
            let mut failure: Option<(usize, Failure)> = None;
            loop {
                if failure.is_none() {
                    while let Some(Reverse(i)) = ready.pop() {
                        let at = NodeIndex::new(i);
                        let node_start = plan
                            .graph
                            .neighbors_directed(at, petgraph::Direction::Incoming)
                            .map(|p| ends[p.index()])
                            .max()
                            .unwrap_or(start);
                        let node = &plan.graph[at];
                        let run = self.run_node(txn, inv, node, prefix, node_start);
                        running.push(run.map(move |r| (i, r)));
                        // A dry run walks one step at a time, lowest node (declaration
                        // order) first: its listing, and the step it says a run would
                        // fail at, must not depend on which branch the scheduler polled
                        // first. Waves still say what may run at once.
                        if txn.mode == RunMode::Plan {
                            break;
                        }
                    }
                }
                match running.next().await {
                    None => break,
                    Some((i, Ok(node_end))) => {
                        ends[i] = node_end;
                        end = end.max(node_end);
                        for m in plan.graph.neighbors(NodeIndex::new(i)) {
                            indeg[m.index()] -= 1;
                            if indeg[m.index()] == 0 {
                                ready.push(Reverse(m.index()));
                            }
                        }
                    }
                    Some((i, Err(f))) => {
                        if failure.as_ref().is_none_or(|(first, _)| i < *first) {
                            failure = Some((i, f));
                        }
                    }
                }
            }
            match failure {
                Some((_, f)) => Err(f),
                None => Ok(end),
            }
        }
        .boxed()
    }

    fn run_node<'a>(
        &'a self,
        txn: &'a Txn,
        inv: &'a Invocation,
        node: &'a PlanNode,
        prefix: &'a str,
        start: usize,
    ) -> BoxFuture<'a, Result<usize, Failure>> {
        async move {
            match node {
                PlanNode::Execute(e) => self.run_execute(txn, inv, e, prefix, start).await,
                PlanNode::Script(sn) => {
                    let step = format!("{prefix}{}", sn.id);
                    self.run_script(
                        StepCtx {
                            txn,
                            inv,
                            step: &step,
                        },
                        sn,
                        start,
                    )
                    .await
                }
                PlanNode::Select(s) => {
                    let step = format!("{prefix}{}", s.id);
                    let cx = StepCtx {
                        txn,
                        inv,
                        step: &step,
                    };
                    run_select(cx, s).map(|()| start)
                }
                PlanNode::Try(t) => self.run_try(txn, inv, t, prefix, start).await,
            }
        }
        .boxed()
    }

    /// try/catch: runs the body; when it fails (for real, not in a dry run), puts the
    /// error in `context/errorContext` and runs the catch block instead.
    async fn run_try(
        &self,
        txn: &Txn,
        inv: &Invocation,
        t: &TryNode,
        prefix: &str,
        start: usize,
    ) -> Result<usize, Failure> {
        let body_prefix = format!("{prefix}{}/", t.id);
        let f = match self.run_plan(txn, inv, &t.body, &body_prefix, start).await {
            Ok(end) => return Ok(end),
            Err(f) if txn.mode == RunMode::Plan => return Err(f),
            Err(f) => f,
        };
        let mut f = f;
        f.message = txn.redactor.redact_text(&f.message);
        tracing::info!(step = %f.step, error = %f.message, "error caught; running catch");
        // The error a catch sees; an enclosing catch's own errorContext comes back once
        // this one has handled its error.
        let enclosing = {
            let mut context = lock(&txn.context);
            let enclosing = take_error_context(&mut context);
            context.push(error_context(&f));
            enclosing
        };
        let catch_prefix = format!("{prefix}{}/catch/", t.id);
        let end = self
            .run_plan(txn, inv, &t.catch, &catch_prefix, start)
            .await?;
        let mut context = lock(&txn.context);
        take_error_context(&mut context);
        if let Some(e) = enclosing {
            context.push(e);
        }
        Ok(end)
    }

    /// An execute step: for each forEach iteration whose conditions hold, `repeat` times:
    /// build executeData, call (if the step calls anything), map the results back.
    async fn run_execute(
        &self,
        txn: &Txn,
        inv: &Invocation,
        node: &ExecNode,
        prefix: &str,
        start: usize,
    ) -> Result<usize, Failure> {
        let step = format!("{prefix}{}", node.id);
        // Iterations and repeats run one after another: each starts where the last ended.
        let mut wave = start;
        let iterations = self.iterations(
            StepCtx {
                txn,
                inv,
                step: &step,
            },
            node,
        )?;
        let mut detached = Vec::new();
        let step_cx = StepCtx {
            txn,
            inv,
            step: &step,
        };
        let ran = self
            .run_iterations(step_cx, node, iterations, &mut wave, &mut detached)
            .await;
        if !detached.is_empty() {
            // Detached items left placeholders so the later iterations' items kept their
            // positions; they go now, in one pass per list, also when the step failed.
            step_cx.remove_detached(detached);
        }
        ran.map(|()| wave)
    }

    /// The iterations of an execute step (`step_cx` names the step without a suffix), one
    /// after another.
    async fn run_iterations(
        &self,
        step_cx: StepCtx<'_>,
        node: &ExecNode,
        mut iterations: Iterations,
        wave: &mut usize,
        detached: &mut Vec<Origin>,
    ) -> Result<(), Failure> {
        let StepCtx { txn, inv, step } = step_cx;
        while let Some(it) = iterations.next(step_cx) {
            let it = &mut it?;
            let step = format!("{step}{}", it.suffix);
            let cx = StepCtx {
                txn,
                inv,
                step: &step,
            };
            if !node.write_back.is_empty() {
                cx.refresh_items(node, it)?;
            }
            let ran = self
                .run_iteration(txn, node, cx, &mut it.bindings, wave)
                .await?;
            if ran && !node.write_back.is_empty() {
                // MPS forEach items are the nodes themselves: what the step wrote into its
                // forEach name goes back, and what it moved out is detached from there.
                detached.extend(cx.write_back_items(node, it)?);
            }
        }
        Ok(())
    }

    /// One forEach iteration of an execute step: its conditions, then `repeat` times its
    /// transforms and call. Returns whether the conditions held.
    async fn run_iteration(
        &self,
        txn: &Txn,
        node: &ExecNode,
        cx: StepCtx<'_>,
        bindings: &mut Bindings,
        wave: &mut usize,
    ) -> Result<bool, Failure> {
        let inv = cx.inv;
        let step = cx.step.to_string();
        {
            if !self.check(cx, bindings, &node.when, &node.execute_data)? {
                return Ok(false);
            }
            let repeat = self.repeat_count(cx, bindings, node)?;
            for r in 0..repeat {
                let step = if node.repeat.is_some() {
                    format!("{step}#{}", r + 1)
                } else {
                    step.clone()
                };
                let cx = cx.at(&step);
                let mut ed = node.execute_data.clone();
                ed.name = "executeData".into();
                let mut unresolved = Vec::new();
                if !self
                    .transforms(cx, bindings, &mut ed, &node.before, &mut unresolved)
                    .await?
                {
                    continue; // ifNull="skip": this iteration does not run
                }
                if let (Some(target), Some(spec)) = (&node.call, node.queue) {
                    // A queue step: the call becomes a job; no executeData comes back.
                    self.enqueue_call(txn, target, ed, &step, spec).await?;
                    ed = Element::new("executeData");
                } else if let Some(target) = &node.call {
                    let at = Sched {
                        wave: *wave,
                        unresolved,
                        sensitive: node.sensitive.unwrap_or(inv.sensitive),
                    };
                    (ed, *wave) = self.invoke(txn, target, ed, &step, at).await?;
                }
                let mut ignored = Vec::new();
                self.transforms(cx, bindings, &mut ed, &node.after, &mut ignored)
                    .await?;
            }
        }
        Ok(true)
    }

    /// How many times a step runs in this iteration (1 without `repeat`).
    fn repeat_count(
        &self,
        cx: StepCtx<'_>,
        bindings: &[(String, Element)],
        node: &ExecNode,
    ) -> Result<usize, Failure> {
        let Some(r) = &node.repeat else {
            return Ok(1);
        };
        let count = match cx.read_string(bindings, &node.execute_data, &r.scope, r.path.as_ref())? {
            Some(v) => v.trim().parse::<usize>().map_err(|_| {
                Failure::data(cx.step, format!("repeat count `{v}` is not a whole number"))
            })?,
            None => match r.if_null {
                IfNull::Fail => {
                    return Err(Failure::data(
                        cx.step,
                        "repeat: the count path selects nothing",
                    ))
                }
                IfNull::Skip => 0,
                IfNull::Ignore => 1,
            },
        };
        if count > self.options.max_iterations {
            return Err(Failure::data(
                cx.step,
                format!(
                    "repeat count {count} is over the limit of {}",
                    self.options.max_iterations
                ),
            ));
        }
        Ok(count)
    }

    /// Calls a procedure: a provider leaf, or a nested procedure whose `data` is the
    /// caller's executeData (and whose final `data` comes back as executeData). Returns
    /// the output and the wave after the call's last provider call.
    pub(super) fn invoke<'a>(
        &'a self,
        txn: &'a Txn,
        target: &'a CallTarget,
        ed: Element,
        step: &'a str,
        at: Sched,
    ) -> BoxFuture<'a, Result<(Element, usize), Failure>> {
        async move {
            let Some(callee) = txn.program.procedure(target).cloned() else {
                return Err(Failure::data(
                    step,
                    format!("`{target}` was not compiled into this program"),
                ));
            };
            match &callee.body {
                Body::Leaf(leaf) => {
                    let end = at.wave + 1;
                    let started = std::time::Instant::now();
                    let out = if txn.mode == RunMode::Plan {
                        self.preview(txn, &callee, leaf, ed, step, at).await?
                    } else {
                        self.call_provider(txn, &callee, leaf, ed, step, at.sensitive)
                            .await?
                    };
                    log_perf(&callee, step, started);
                    Ok((out, end))
                }
                Body::Steps(plan) => {
                    let mut data = ed;
                    data.name = "data".into();
                    apply_defaults(&callee, &mut data);
                    txn.redactor.learn_from(&data);
                    if txn.mode == RunMode::Execute {
                        check_required_inputs(&callee, &data, step)?;
                    }
                    let inv = Invocation::new(data, callee.procedure_data.clone(), at.sensitive);
                    let prefix = format!("{step}/");
                    let started = std::time::Instant::now();
                    let ran = self.run_plan(txn, &inv, plan, &prefix, at.wave).await;
                    log_perf(&callee, step, started);
                    match ran {
                        Ok(end) => {
                            let mut out = inv.into_data();
                            out.name = "executeData".into();
                            Ok((out, end))
                        }
                        Err(mut f) => {
                            f.sources.push(ErrorSource {
                                namespace: target.namespace.clone(),
                                procedure: target.procedure.clone(),
                                step: step.to_string(),
                            });
                            Err(f)
                        }
                    }
                }
            }
        }
        .boxed()
    }
}

/// The failure that keeps a transaction with an unsettled in-doubt call from committing.
fn unsettled_call(txn: &Txn) -> Option<Failure> {
    let in_doubt = lock(&txn.in_doubt);
    let first = in_doubt.first()?;
    Some(Failure {
        code: ProviderError::E_FAIL,
        message: format!(
            "step {} ({}) is in doubt and cannot commit: {}",
            first.step, first.target, first.message
        ),
        step: first.step.clone(),
        sources: Vec::new(),
    })
}

/// Where a call falls in a dry run: its wave, and the inputs not known before it.
pub(super) struct Sched {
    pub(crate) wave: usize,
    pub(crate) unresolved: Vec<String>,
    /// MPS `sensitive` in force for this call (see [`Invocation::sensitive`]).
    pub(crate) sensitive: bool,
}

/// MPS `perfEnabled`: one `provisio::perf` event per invocation of such a procedure, with
/// its wall time (a daemon's metrics read these events).
fn log_perf(procedure: &CompiledProcedure, step: &str, started: Instant) {
    if procedure.perf {
        tracing::info!(
            target: "provisio::perf",
            procedure = %procedure.target,
            step,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "procedure timing"
        );
    }
}

impl TxnResult {
    /// Records the outcome of a rollback.
    fn rolled_back(&mut self, undone: usize, failures: Vec<UndoFailure>) {
        self.undone = undone;
        self.state = if failures.is_empty() {
            TxnState::RolledBack
        } else {
            TxnState::RollbackFailed
        };
        self.undo_failures = failures;
    }
}

/// A select step: picks the case whose value matches, for the `when: case` of later steps.
fn run_select(cx: StepCtx<'_>, s: &SelectNode) -> Result<(), Failure> {
    let literal = Element::new("executeData");
    let value = cx.read_string(&[], &literal, &s.scope, s.path.as_ref())?;
    let case = match value {
        None => s.if_null_case.clone(),
        Some(v) => s
            .cases
            .iter()
            .find(|(val, _)| *val == v)
            .map(|(_, c)| c.clone()),
    };
    if let Some(case) = case.or_else(|| s.default_case.clone()) {
        lock(&cx.inv.selects).insert(s.name.clone(), case);
    }
    Ok(())
}

/// A nested procedure's required inputs (without a default) must be passed by the caller.
fn check_required_inputs(
    callee: &CompiledProcedure,
    data: &Element,
    step: &str,
) -> Result<(), Failure> {
    let required = callee
        .inputs
        .iter()
        .filter(|i| i.required && i.default.is_none());
    for input in required {
        let present = Path::parse(&input.name)
            .map(|p| !p.select(data).is_empty())
            .unwrap_or(false);
        if !present {
            return Err(Failure::data(
                step,
                format!(
                    "`{}` needs input `{}`, which the calling step did not pass",
                    callee.target, input.name
                ),
            ));
        }
    }
    Ok(())
}

pub(super) fn apply_defaults(p: &CompiledProcedure, data: &mut Element) {
    for input in &p.inputs {
        if let Some(default) = &input.default {
            if data.child(&input.name).is_none() && !input.name.contains('/') {
                data.push(Element::with_scalar(input.name.clone(), default.clone()));
            }
        }
    }
}

/// Removes `errorContext` from `context` and returns it.
fn take_error_context(context: &mut Element) -> Option<Element> {
    let at = context
        .children
        .iter()
        .position(|c| matches!(c, crate::data::Node::Element(e) if e.name == "errorContext"))?;
    match context.children.remove(at) {
        crate::data::Node::Element(e) => Some(e),
        crate::data::Node::Text(_) => None,
    }
}

/// The `errorContext` a catch block sees in `context`.
fn error_context(f: &Failure) -> Element {
    let mut e = Element::new("errorContext");
    e.set_attr("code", format!("{:#010x}", f.code));
    e.set_attr("description", f.message.clone());
    e.set_attr("step", f.step.clone());
    for s in &f.sources {
        let mut src = Element::new("errorSource");
        src.set_attr("namespace", s.namespace.clone());
        src.set_attr("procedure", s.procedure.clone());
        e.push(src);
    }
    e.push(Element::with_scalar(
        "code",
        Scalar::Str(format!("{:#010x}", f.code).into()),
    ));
    e
}
