//! One provider call of a step: journal the intent, call with a timeout and a panic guard,
//! retry transient errors under the `calls` retry policy, settle an in-doubt call through
//! `recover` under the `settle` policy, journal the result and register the undo. Resuming
//! after a crash replays a journaled result instead of calling; a dry run asks for a preview.

use super::journal::log_lapse;
use super::run::Sched;
use super::state::{lock, Called, Completed, Located, Txn};
use super::{
    Attempts, Engine, ErrorSource, Event, Failure, GaveUp, PlanEntry, Redactor, Replayed, RetryUse,
    StepDone, StepIntent, UndoFailure,
};
use crate::compile::{CompiledProcedure, Leaf};
use crate::data::Element;
use crate::model::ProcKind;
use crate::provider::{
    Call, CallContext, IntentBarrier, MarkerSink, Outcome, Preview, Provider, ProviderError,
};
use crate::state::{Access, ProviderState};
use crate::StateChange;
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use tracing::{info_span, Instrument};

/// A provider leaf called at one step of a transaction.
struct LeafCall<'a> {
    txn: &'a Txn,
    callee: &'a Arc<CompiledProcedure>,
    leaf: &'a Leaf,
    step: &'a str,
    /// `Namespace/Procedure` of the leaf.
    target: String,
    provider: Arc<dyn Provider>,
    /// MPS `sensitive`: the journaled rollback data is sealed whatever it holds.
    sensitive: bool,
}

impl Engine {
    /// Calls a provider leaf for real (see the module doc); returns its output executeData.
    pub(super) async fn call_provider(
        &self,
        txn: &Txn,
        callee: &Arc<CompiledProcedure>,
        leaf: &Leaf,
        ed: Element,
        step: &str,
        sensitive: bool,
    ) -> Result<Element, Failure> {
        let provider = self.provider(leaf, step)?;
        {
            let mut called = lock(&txn.providers_called);
            if !called.iter().any(|p| Arc::ptr_eq(p, &provider)) {
                called.push(provider.clone());
            }
        }
        let call = LeafCall {
            sensitive,
            txn,
            callee,
            leaf,
            step,
            target: callee.target.to_string(),
            provider,
        };
        let span = info_span!(
            "step", step.id = %step, provider = %leaf.provider, procedure = %call.target
        );
        async {
            self.emit(Event::StepStarted {
                step: step.to_string(),
                target: call.target.clone(),
            });
            // A secret the caller computed may arrive here under a secret input's name.
            txn.redactor.learn_from(&ed);
            if let Some(r) = txn.resume.as_ref().and_then(|r| r.done.get(step)) {
                return self.replay(&call, ed, r).await;
            }
            if txn.cancel.as_ref().is_some_and(super::Cancel::is_cancelled) {
                return Err(fail(
                    step,
                    &call.target,
                    crate::codes::E_ABORT,
                    "the transaction was cancelled before this step started; everything done \
                     is rolled back"
                        .to_string(),
                ));
            }
            let mut attempt = txn
                .resume
                .as_ref()
                .and_then(|r| r.next_attempt.get(step).copied())
                .unwrap_or(1);
            let policy = self.options.retry.policy(&leaf.provider, RetryUse::Calls);
            let mut attempts = Attempts::start(policy, RetryUse::Calls);
            loop {
                let context = self.call_context(txn, callee, leaf, step, attempt);
                let journaling = self.journal.records();
                let state = self.state_handle(&call);
                let mut request = Call {
                    context: context.clone(),
                    provider_context: leaf.provider_context.clone(),
                    execute_data: ed.clone(),
                    state: state.clone(),
                    intent: IntentBarrier::passed(),
                };
                // A provider that keeps its recovery marker in the journal is called with
                // its intent appended but not synced, and a sink that syncs the intent
                // with the marker after it (one sync; see `Provider::journals_markers`).
                // One that asks for it is called while the intent is being made durable,
                // and waits for it before its first side effect (see
                // `Provider::awaits_intent`); any other call is made once it is.
                let durable = journaling && intent_is_durable(&call);
                let mut sink = None;
                let gate = if durable
                    && self.journal.keeps_markers()
                    && call.provider.journals_markers(&request)
                {
                    let sealed = self.journal_intent(&call, &context, &ed, false).await?;
                    let markers = Arc::new(CallMarkers::new(
                        self.journal.clone(),
                        context.clone(),
                        sealed,
                        &call.txn.redactor,
                    ));
                    request.intent = IntentBarrier::with_sink(markers.clone());
                    sink = Some(markers);
                    None
                } else if durable && call.provider.awaits_intent(&request) {
                    let (barrier, gate) = IntentBarrier::closed();
                    request.intent = barrier;
                    Some(gate)
                } else {
                    if journaling {
                        self.journal_intent(&call, &context, &ed, intent_is_durable(&call))
                            .await?;
                    }
                    None
                };
                let started_after = txn.completions.load(AtomicOrdering::SeqCst);
                let done = |outcome| Attempted {
                    context: context.clone(),
                    outcome,
                    started_after,
                    journaling,
                };
                let attempted = match gate {
                    None => {
                        let _permit = self.provider_permit(&leaf.provider).await;
                        self.attempt(&call, request).await
                    }
                    Some(gate) => {
                        let intent = async {
                            let written = self
                                .journal_intent(&call, &context, &ed, intent_is_durable(&call))
                                .await;
                            gate.open(match &written {
                                Ok(_) => Ok(()),
                                Err(f) => Err(f.message.clone()),
                            });
                            written
                        };
                        let call_made = async {
                            let _permit = self.provider_permit(&leaf.provider).await;
                            self.attempt(&call, request).await
                        };
                        // Both run in this task; the intent's result is awaited whatever
                        // the call did, so that its record precedes the call's outcome in
                        // the journal even when the provider returned before the barrier.
                        let (written, attempted) = futures::future::join(intent, call_made).await;
                        if let Err(failure) = written {
                            // The provider did not act (it passes the barrier before any
                            // side effect, and the barrier failed): handled as an intent
                            // that could not be journaled before the call, whatever the
                            // provider returned.
                            state.discard();
                            state.call_finished();
                            return Err(failure);
                        }
                        attempted
                    }
                };
                // The attempt is over: closed first (once a mark in progress is written),
                // so that a late mark of a call given up (a step timeout) fails and its
                // provider changes nothing; what was marked before is what settles it.
                let marked = match &sink {
                    Some(sink) => {
                        let closed = sink.close().await;
                        if let Some(why) = closed.failed.filter(|_| !closed.durable) {
                            // The journal failed at the first mark: the provider changed
                            // nothing (it marks before any side effect, and the mark
                            // failed), whatever it returned. After a mark that succeeded,
                            // what it returned stands (an error is "not applied": it
                            // cleaned up; a success is undone when the journal fails).
                            state.discard();
                            state.call_finished();
                            return Err(fail(
                                call.step,
                                &call.target,
                                ProviderError::E_FAIL,
                                format!(
                                    "not applied: the engine could not journal the call's \
                                     intent ({why})"
                                ),
                            ));
                        }
                        closed.last
                    }
                    None => None,
                };
                let error = match attempted {
                    Ok(outcome) => {
                        return self.succeeded(&call, &ed, done(outcome), &state).await;
                    }
                    Err(error) => {
                        // A call that did not succeed changed no provider state.
                        state.discard();
                        state.call_finished();
                        error
                    }
                };
                // An unknown outcome is settled before anything else happens to the call:
                // a retry of an applied call would apply it twice, a rollback would leave
                // it behind.
                let error = if error.is_in_doubt() {
                    match self
                        .settle_in_doubt(&call, &context, &ed, &error, marked)
                        .await
                    {
                        Settled::Applied(undo) => {
                            let outcome = Outcome {
                                execute_data: ed.clone(),
                                undo: Some(undo),
                            };
                            // The attempt's proposed state writes were given up with it.
                            let none = ProviderState::detached();
                            return self.succeeded(&call, &ed, done(outcome), &none).await;
                        }
                        Settled::NotApplied => error,
                        Settled::CannotTell(why) => {
                            return Err(self.unsettled(&call, context.attempt, &error, &why));
                        }
                    }
                } else {
                    error
                };
                self.failed(&call, &context, error, &mut attempts).await?;
                attempt += 1;
            }
        }
        .instrument(span)
        .await
    }

    /// A failed attempt (or an in-doubt one settled as not applied): journaled; a retryable
    /// error the `calls` retry policy allows another attempt for waits for its backoff and
    /// returns `Ok` (try again, same idempotency key), any other ends the step.
    async fn failed(
        &self,
        call: &LeafCall<'_>,
        context: &CallContext,
        error: ProviderError,
        attempts: &mut Attempts<'_>,
    ) -> Result<(), Failure> {
        let redactor = &call.txn.redactor;
        let mut message = redactor.redact_text(&error.to_string());
        if error.is_in_doubt() {
            message.push_str(" (settled: not applied)");
        }
        log_lapse(
            self.journal.step_failed(context, &message).await,
            "step_failed",
            "recovery sees the call's intent without an outcome and asks the provider \
             whether it was applied (an in-doubt call)",
        );
        match attempts.back_off(&error, &message).await {
            Ok(()) => return Ok(()),
            Err(GaveUp::NotRetryable) => tracing::warn!(error = %message, "step failed"),
            Err(why) => tracing::warn!(error = %message, retry = %why, "step failed"),
        }
        if matches!(error, ProviderError::Transient { .. }) {
            *lock(&call.txn.transient_step) = Some(call.step.to_string());
        }
        self.emit(Event::StepFinished {
            step: call.step.to_string(),
            ok: false,
            attempt: context.attempt,
        });
        let target = &call.callee.target;
        Err(Failure {
            code: error.code(),
            message: redactor.redact_text(&error.message()),
            step: call.step.to_string(),
            sources: vec![ErrorSource {
                namespace: target.namespace.clone(),
                procedure: target.procedure.clone(),
                step: call.step.to_string(),
            }],
        })
    }

    /// Settles an attempt whose outcome is unknown through the provider's `recover` (same
    /// idempotency key, and the last marker the call journaled, `marked`): journals the
    /// in-doubt state, then asks (see [`Engine::recover_call`]). A read changed nothing and
    /// is not asked.
    async fn settle_in_doubt(
        &self,
        call: &LeafCall<'_>,
        context: &CallContext,
        ed: &Element,
        error: &ProviderError,
        marked: Option<Element>,
    ) -> Settled {
        let redactor = &call.txn.redactor;
        let message = redactor.redact_text(&error.to_string());
        tracing::warn!(error = %message, "call in doubt; asking the provider whether it was applied");
        log_lapse(
            self.journal.step_in_doubt(context, &message).await,
            "step_in_doubt",
            "recovery sees the call's intent without an outcome, which is in doubt as well",
        );
        if call.callee.kind == ProcKind::Read {
            return Settled::NotApplied;
        }
        let request = Call {
            context: context.clone(),
            provider_context: call.leaf.provider_context.clone(),
            execute_data: ed.clone(),
            state: self
                .state
                .handle(&call.txn.id, &call.leaf.provider, Access::Read("recover")),
            intent: IntentBarrier::recovered(marked),
        };
        let settled = self
            .recover_call(call.provider.as_ref(), &request, redactor)
            .await;
        request.state.call_finished();
        match settled {
            Ok(Some(undo)) => {
                tracing::info!("settled: the call was applied; it counts as done");
                Settled::Applied(undo)
            }
            Ok(None) => {
                tracing::info!("settled: the call was not applied");
                Settled::NotApplied
            }
            Err(why) => Settled::CannotTell(why),
        }
    }

    /// Asks `provider` whether `call` (by its idempotency key) was applied: its undo record,
    /// or `None`. Each answer is awaited within the step timeout; a retryable answer (a
    /// transient or in-doubt error, no answer in time) is asked again under the provider's
    /// `settle` retry policy. Errs with why it cannot tell, secrets masked. Used during a
    /// run, at crash recovery and by `tx resume-rollback`.
    pub(crate) async fn recover_call(
        &self,
        provider: &dyn Provider,
        call: &Call,
        redactor: &Redactor,
    ) -> Result<Option<Element>, String> {
        let policy = self.options.retry.policy(provider.name(), RetryUse::Settle);
        let mut attempts = Attempts::start(policy, RetryUse::Settle);
        loop {
            let asked = AssertUnwindSafe(provider.recover(call)).catch_unwind();
            let error = match tokio::time::timeout(self.options.step_timeout, asked).await {
                Ok(Ok(Ok(found))) => return Ok(found),
                Ok(Ok(Err(e))) => e,
                Ok(Err(panic)) => {
                    return Err(redactor
                        .redact_text(&format!("its recover panicked: {}", panic_message(&panic))))
                }
                Err(_) => ProviderError::in_doubt(format!(
                    "its recover did not answer within {:?}",
                    self.options.step_timeout
                )),
            };
            let message = redactor.redact_text(&error.to_string());
            match attempts.back_off(&error, &message).await {
                Ok(()) => {}
                Err(GaveUp::NotRetryable) => return Err(message),
                Err(why) => return Err(format!("{message} ({why})")),
            }
        }
    }

    /// An in-doubt call the provider cannot settle: the step fails, and the transaction's
    /// rollback ends `rollback_failed` with this step named for an operator.
    fn unsettled(
        &self,
        call: &LeafCall<'_>,
        attempt: u32,
        error: &ProviderError,
        why: &str,
    ) -> Failure {
        let redactor = &call.txn.redactor;
        let message = redactor.redact_text(&format!(
            "{} (in doubt: the provider cannot tell whether the call was applied: {why})",
            error.message()
        ));
        tracing::error!(error = %message, "in-doubt call cannot be settled; an operator must check it");
        lock(&call.txn.in_doubt).push(UndoFailure {
            step: call.step.to_string(),
            target: call.target.clone(),
            message: format!("in doubt, check by hand whether it was applied: {message}"),
        });
        self.emit(Event::StepFinished {
            step: call.step.to_string(),
            ok: false,
            attempt,
        });
        let target = &call.callee.target;
        Failure {
            code: error.code(),
            message,
            step: call.step.to_string(),
            sources: vec![ErrorSource {
                namespace: target.namespace.clone(),
                procedure: target.procedure.clone(),
                step: call.step.to_string(),
            }],
        }
    }

    /// A call that completed before the crash: use the journaled result, call nothing (but
    /// register its undo, so a later failure still undoes it).
    /// Its provider-state keys are locked for the transaction again (the locks of before
    /// the crash are gone), so no other transaction sees them before this one ends.
    async fn replay(
        &self,
        call: &LeafCall<'_>,
        ed: Element,
        r: &Replayed,
    ) -> Result<Element, Failure> {
        if let Some(change) = &r.state {
            if let Err(e) = self.state.lock_for(&call.txn.id, change).await {
                let message = format!("provider state: {e}");
                return Err(fail(
                    call.step,
                    &call.target,
                    ProviderError::E_FAIL,
                    message,
                ));
            }
        }
        if call.callee.kind != ProcKind::Read && (r.undo.is_some() || r.state.is_some()) {
            let txn = call.txn;
            let started_after = txn.completions.load(AtomicOrdering::SeqCst);
            let context = self.call_context(txn, call.callee, call.leaf, call.step, r.attempt);
            let state = r.state.clone().map(|c| (c, r.undo.is_some()));
            let undo = r.undo.clone().unwrap_or_else(|| Element::new("undo"));
            register_undo(call, started_after, context, undo, &ed, None, state);
        }
        self.emit(Event::StepFinished {
            step: call.step.to_string(),
            ok: true,
            attempt: r.attempt,
        });
        Ok(r.output.clone())
    }

    /// Journals that the call is about to be made: `durable` before the call's first side
    /// effect, unless it is a read or the provider's effects are all in its provider state
    /// (see [`intent_is_durable`]), or the call's marker sink makes it durable (see
    /// [`CallMarkers`]). Returns whether the call's data was sealed (a secret), which its
    /// markers follow.
    async fn journal_intent(
        &self,
        call: &LeafCall<'_>,
        context: &CallContext,
        ed: &Element,
        durable: bool,
    ) -> Result<bool, Failure> {
        let mut logged = ed.clone();
        call.txn.redactor.redact_element(&mut logged);
        let secret = call_data_secret(call, ed);
        self.journal
            .step_intent(&StepIntent {
                context,
                provider: &call.leaf.provider,
                target: &call.target,
                kind: call.callee.kind,
                provider_context: &call.leaf.provider_context,
                input: &logged,
                call_data: ed,
                secret,
                durable,
            })
            .await
            .map(|()| secret)
            .map_err(|e| {
                fail(
                    call.step,
                    &call.target,
                    ProviderError::E_FAIL,
                    e.to_string(),
                )
            })
    }

    /// One attempt: the provider's `execute` within the step timeout and the transaction's
    /// parallel limit; a panic or a timeout leaves the outcome unknown (in doubt).
    async fn attempt(&self, call: &LeafCall<'_>, request: Call) -> Result<Outcome, ProviderError> {
        let permit = call.txn.permits.acquire().await;
        call.txn.calls.fetch_add(1, AtomicOrdering::Relaxed);
        let guarded = AssertUnwindSafe(call.provider.execute(request)).catch_unwind();
        let result = tokio::time::timeout(self.options.step_timeout, guarded).await;
        drop(permit);
        let provider = &call.leaf.provider;
        match result {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(panic)) => Err(ProviderError::in_doubt(format!(
                "provider `{provider}` panicked: {}",
                panic_message(&panic)
            ))),
            Err(_) => Err(ProviderError::in_doubt(format!(
                "provider `{provider}` did not answer within {:?} (step timeout)",
                self.options.step_timeout
            ))),
        }
    }

    /// The provider-state handle of one attempt: writable in a write or two-phase
    /// procedure, read-only in a read procedure.
    fn state_handle(&self, call: &LeafCall<'_>) -> ProviderState {
        let access = match call.callee.kind {
            ProcKind::Read => Access::Read("a read procedure"),
            _ => Access::Write,
        };
        self.state.handle(&call.txn.id, &call.leaf.provider, access)
    }

    /// A successful attempt: journal it with its provider-state writes (one batch), register
    /// its undo, return its output.
    async fn succeeded(
        &self,
        call: &LeafCall<'_>,
        ed: &Element,
        done: Attempted,
        state: &ProviderState,
    ) -> Result<Element, Failure> {
        let attempt = done.context.attempt;
        let txn = call.txn;
        let mut out = done.outcome.execute_data;
        out.name = "executeData".into();
        let undo = done
            .outcome
            .undo
            .filter(|_| call.callee.kind != ProcKind::Read);
        // The values the writes replace are read under the transaction's locks.
        let (change, mut state_error) = match state.finish() {
            Ok(change) => (change.map(Arc::new), None),
            Err(e) => (None, Some(e.to_string())),
        };
        if let Some(change) = change.as_deref().filter(|_| !self.state.in_journal()) {
            if let Err(e) = self.state.apply(change).await {
                state_error = Some(e.to_string());
            }
        }
        let journaled = if done.journaling {
            self.journal_done(
                call,
                ed,
                &done.context,
                &out,
                undo.as_ref(),
                change.as_deref(),
            )
            .await
        } else {
            Ok(())
        };
        // A durable journal gives the undo back when it runs: only where it is is kept.
        let located = match (&journaled, self.journal.read_back()) {
            (Ok(()), Some(journal)) if done.journaling => journal.take_located(&done.context),
            _ => None,
        };
        match (undo, change) {
            (Some(undo), change) => register_undo(
                call,
                done.started_after,
                done.context,
                undo,
                ed,
                located,
                change.map(|c| (c, true)),
            ),
            (None, Some(change)) => register_undo(
                call,
                done.started_after,
                done.context,
                Element::new("undo"),
                ed,
                located,
                Some((change, false)),
            ),
            (None, None) => {
                txn.completions.fetch_add(1, AtomicOrdering::SeqCst);
            }
        }
        // Registered first: a later call of this transaction that takes one of its keys
        // is then ordered after it for undo (`Txn::state_chain`).
        state.call_finished();
        // The call happened and is registered for undo even when journaling it failed.
        let fails = |e: String| fail(call.step, &call.target, ProviderError::E_FAIL, e);
        journaled.map_err(|e| fails(e.to_string()))?;
        if let Some(e) = state_error {
            return Err(fails(format!("provider state: {e}")));
        }
        tracing::debug!("step done");
        self.emit(Event::StepFinished {
            step: call.step.to_string(),
            ok: true,
            attempt,
        });
        Ok(out)
    }

    /// Journals a successful call: its output for people (redacted), and what an undo or
    /// a resume needs (sealed when it holds secrets).
    async fn journal_done(
        &self,
        call: &LeafCall<'_>,
        ed: &Element,
        context: &CallContext,
        out: &Element,
        undo: Option<&Element>,
        state: Option<&StateChange>,
    ) -> Result<(), super::JournalError> {
        let redactor = &call.txn.redactor;
        let mut logged_out = out.clone();
        redactor.redact_element(&mut logged_out);
        let saved = (undo.is_some() && call.leaf.save_data_for_rollback).then_some(ed);
        let secret = (call.sensitive && undo.is_some())
            || undo.is_some_and(|u| redactor.contains_secret(u))
            || saved.is_some_and(|s| redactor.contains_secret(s));
        let resumable = call.txn.program.entry.resumable;
        self.journal
            .step_done(&StepDone {
                context,
                output: &logged_out,
                undo,
                saved,
                secret,
                result: resumable.then_some(out),
                result_secret: resumable && redactor.contains_secret(out),
                state,
            })
            .await
    }

    /// Asks the provider what a call would change, and records the plan entry.
    pub(super) async fn preview(
        &self,
        txn: &Txn,
        callee: &CompiledProcedure,
        leaf: &Leaf,
        ed: Element,
        step: &str,
        at: Sched,
    ) -> Result<Element, Failure> {
        let Sched {
            wave, unresolved, ..
        } = at;
        let provider = self.provider(leaf, step)?;
        let call = Call {
            context: self.call_context(txn, callee, leaf, step, 1),
            provider_context: leaf.provider_context.clone(),
            execute_data: ed,
            state: self.state.handle(&txn.id, &leaf.provider, Access::Preview),
            intent: IntentBarrier::passed(),
        };
        let preview = if unresolved.is_empty() {
            provider
                .preview(&call)
                .await
                .unwrap_or_else(|e| Preview::Fail(e.message()))
        } else {
            Preview::Unknown
        };
        lock(&txn.plan).push(PlanEntry {
            step: step.to_string(),
            wave,
            target: callee.target.to_string(),
            provider: leaf.provider.clone(),
            inputs: call.execute_data.clone(),
            preview,
            unresolved,
        });
        Ok(call.execute_data)
    }

    fn provider(&self, leaf: &Leaf, step: &str) -> Result<Arc<dyn Provider>, Failure> {
        self.registry
            .get(&leaf.provider)
            .cloned()
            .ok_or_else(|| Failure {
                code: ProviderError::E_FAIL,
                message: format!("provider `{}` is not registered", leaf.provider),
                step: step.to_string(),
                sources: Vec::new(),
            })
    }

    fn call_context(
        &self,
        txn: &Txn,
        callee: &CompiledProcedure,
        leaf: &Leaf,
        step: &str,
        attempt: u32,
    ) -> CallContext {
        CallContext {
            txn_id: txn.id.clone(),
            step_id: step.to_string(),
            attempt,
            namespace: callee.target.namespace.clone(),
            procedure: leaf.entry.clone(),
        }
    }
}

/// How an in-doubt call was settled.
enum Settled {
    /// Applied: the undo record the provider gave.
    Applied(Element),
    /// Not applied: nothing of it is left.
    NotApplied,
    /// The provider cannot tell (why, secrets masked).
    CannotTell(String),
}

/// What a successful attempt hands to `succeeded`.
struct Attempted {
    context: CallContext,
    outcome: Outcome,
    /// Completions counted before the call started (see `Completed::started_after`).
    started_after: usize,
    /// Whether the journal keeps records.
    journaling: bool,
}

/// Registers a completed call for undo (with its provider-state writes, and whether the
/// provider has an undo record to be called with); counts the completion. Only what the
/// undo needs is kept (see [`Completed`]): `ed` only with `saveDataForRollback`; and when
/// the durable journal located the call's records (`located`: its intent's and completion's
/// sequence numbers), only where they are ([`Located`]), except
/// for a two-phase call (its prepare and commit run from memory at the end).
fn register_undo(
    call: &LeafCall<'_>,
    started_after: usize,
    context: CallContext,
    undo: Element,
    ed: &Element,
    located: Option<(u64, u64)>,
    state: Option<(Arc<StateChange>, bool)>,
) {
    let txn = call.txn;
    let mut started_after = started_after;
    if state.is_some() {
        started_after = started_after.max(txn.state_chain.load(AtomicOrdering::SeqCst));
    }
    let seq = txn.completions.fetch_add(1, AtomicOrdering::SeqCst);
    if state.is_some() {
        txn.state_chain.fetch_max(seq + 1, AtomicOrdering::SeqCst);
    }
    if let Some((intent_seq, done_seq)) = located.filter(|_| call.callee.kind != ProcKind::TwoPhase)
    {
        lock(&txn.located).push(Located {
            started_after,
            seq,
            intent_seq,
            done_seq,
        });
        return;
    }
    let (state, provider_undo) = match state {
        Some((change, provider_undo)) => (Some(change), provider_undo),
        None => (None, true),
    };
    lock(&txn.completed).push(Completed {
        started_after,
        seq,
        called: Called::Leaf(call.callee.clone()),
        provider: call.provider.clone(),
        step: context.step_id.into_boxed_str(),
        attempt: context.attempt,
        provider_undo,
        undo: Completed::pack(&undo),
        execute_data: call
            .leaf
            .save_data_for_rollback
            .then(|| Completed::pack(ed)),
        state,
    });
}

/// Whether a call's data is kept sealed in the journal: the procedure is `sensitive`, or the
/// data holds a secret.
fn call_data_secret(call: &LeafCall<'_>, ed: &Element) -> bool {
    call.sensitive || call.txn.redactor.contains_secret(ed)
}

/// The engine's [`MarkerSink`] of one call of a provider that
/// [`Provider::journals_markers`]: each mark appends a [`crate::txn::Record::Marker`] after
/// the call's intent (appended not durable) and syncs both. Closed when the attempt is
/// over; a mark after that fails, so the provider of a call given up changes nothing.
struct CallMarkers {
    marks: Arc<Marks>,
    /// The runtime the journal's writes need: `mark` runs each as a task on it,
    /// `mark_blocking` polls it with its `block_on` on the provider's blocking thread.
    runtime: tokio::runtime::Handle,
}

/// What a [`CallMarkers`] shares with its journal writes (run as tasks of their own, so that
/// a mark the provider's future dropped still ends, and its close waits for it).
struct Marks {
    journal: Arc<dyn super::Journal>,
    context: CallContext,
    /// The call's data is sealed: so is every marker.
    secret: bool,
    /// Whether a marker holds a secret value of the transaction (when `secret` is not set).
    redactor: Option<Redactor>,
    /// Closed (the attempt is over); held across a journal write, so that a close waits
    /// for the mark in progress.
    closed: tokio::sync::Mutex<bool>,
    durable: std::sync::atomic::AtomicBool,
    last: std::sync::Mutex<Option<Element>>,
    /// Why a journal write failed (the call then fails as not applied).
    failed: std::sync::Mutex<Option<String>>,
}

/// What a closed [`CallMarkers`] holds.
struct ClosedMarks {
    /// The last marker journaled.
    last: Option<Element>,
    /// Why a mark could not be journaled.
    failed: Option<String>,
    /// A mark was journaled (the intent is durable).
    durable: bool,
}

impl CallMarkers {
    fn new(
        journal: Arc<dyn super::Journal>,
        context: CallContext,
        secret: bool,
        redactor: &Redactor,
    ) -> CallMarkers {
        CallMarkers {
            marks: Arc::new(Marks {
                journal,
                context,
                secret,
                redactor: (!secret).then(|| redactor.clone()),
                closed: tokio::sync::Mutex::new(false),
                durable: std::sync::atomic::AtomicBool::new(false),
                last: std::sync::Mutex::new(None),
                failed: std::sync::Mutex::new(None),
            }),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Refuses marks from now on, once a mark in progress is written.
    async fn close(&self) -> ClosedMarks {
        *self.marks.closed.lock().await = true;
        ClosedMarks {
            last: lock(&self.marks.last).clone(),
            failed: lock(&self.marks.failed).clone(),
            durable: self.marks.durable.load(AtomicOrdering::SeqCst),
        }
    }
}

impl Marks {
    async fn write(&self, marker: Option<Element>) -> Result<(), String> {
        let closed = self.closed.lock().await;
        if *closed {
            return Err("the engine gave the call up (its attempt is over)".into());
        }
        if let Some(why) = lock(&self.failed).clone() {
            return Err(why);
        }
        let secret = self.secret
            || marker
                .as_ref()
                .zip(self.redactor.as_ref())
                .is_some_and(|(m, r)| r.contains_secret(m));
        let written = self
            .journal
            .step_marker(&super::StepMarker {
                context: &self.context,
                marker: marker.as_ref(),
                secret,
            })
            .await;
        match written {
            Ok(()) => {
                self.durable.store(true, AtomicOrdering::SeqCst);
                if marker.is_some() {
                    *lock(&self.last) = marker;
                }
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                *lock(&self.failed) = Some(why.clone());
                Err(why)
            }
        }
    }
}

impl std::fmt::Debug for CallMarkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallMarkers")
            .field("call", &self.marks.context)
            .field("durable", &self.marks.durable)
            .finish()
    }
}

#[async_trait::async_trait]
impl MarkerSink for CallMarkers {
    async fn mark(&self, marker: Option<Element>) -> Result<(), String> {
        let marks = self.marks.clone();
        self.runtime
            .spawn(async move { marks.write(marker).await })
            .await
            .unwrap_or_else(|e| Err(format!("the journal write was lost: {e}")))
    }

    /// Writes on the provider's blocking thread itself: that thread waits for the write
    /// anyway and cannot drop it half done, so no task of its own is needed. A task on the
    /// runtime (`mark`) would cost two hand-overs between threads a call, which were most
    /// of what the durable journal added to a folder's creation.
    ///
    /// The runtime's own `block_on` polls the write here, in the runtime's context (the
    /// store may start a task: a background sync). Called on a runtime worker, which must
    /// never block, it panics ("Cannot start a runtime from within a runtime"), and the
    /// call fails as a panicked one, where polling in place with another executor would
    /// block the worker (and on a one-thread runtime hang it: the store's sync first yields
    /// to the other tasks of the worker it is holding).
    fn mark_blocking(&self, marker: Option<Element>) -> Result<(), String> {
        self.runtime.block_on(self.marks.write(marker))
    }

    fn is_durable(&self) -> bool {
        self.marks.durable.load(AtomicOrdering::SeqCst)
    }

    fn last(&self) -> Option<Element> {
        lock(&self.marks.last).clone()
    }
}

/// Whether a call's intent record must be durable before the call's first side effect.
/// A call whose effects are only provider-state writes cannot outlive its done record
/// (same batch), so its intent need not be on the disk first; nor does a read's, which
/// changes nothing: lost in a crash, it leaves nothing to undo or settle (a read in doubt
/// is settled as not applied).
fn intent_is_durable(call: &LeafCall<'_>) -> bool {
    call.callee.kind != ProcKind::Read && !call.provider.effects_in_state_only()
}

/// A failure at a step whose source is the leaf `target` (`Namespace/Procedure`).
pub(super) fn fail(step: &str, target: &str, code: u32, message: String) -> Failure {
    let (namespace, procedure) = target.rsplit_once('/').unwrap_or((target, ""));
    Failure {
        code,
        message,
        step: step.to_string(),
        sources: vec![ErrorSource {
            namespace: namespace.to_string(),
            procedure: procedure.to_string(),
            step: step.to_string(),
        }],
    }
}

pub(super) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}
