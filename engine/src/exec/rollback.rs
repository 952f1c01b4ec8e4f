//! The end of a transaction: the two-phase prepare/commit of every two-phase call, or the
//! undo of every completed call in reverse dependency order, each undo retried under its
//! provider's `undo` retry policy.

use super::call::{fail, panic_message};
use super::journal::log_lapse;
use super::state::{lock, Txn};
use super::{Attempts, Engine, Event, Failure, GaveUp, Redactor, RetryUse, UndoFailure};
use crate::model::ProcKind;
use crate::provider::{Done, Provider, ProviderError};
use crate::state::Access;
use crate::StateChange;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use std::cmp::Reverse;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use tracing::{info_span, Instrument};

impl Engine {
    /// Two-phase procedures: prepare every two-phase call in order; only if all prepared,
    /// commit them in the same order. A failed prepare fails the transaction (rollback).
    pub(super) async fn two_phase(&self, txn: &Txn) -> Result<(), Failure> {
        let calls: Vec<(String, String, Arc<dyn Provider>, Done)> = lock(&txn.completed)
            .iter()
            // A call with only provider state to reverse returned no undo record: as before
            // provider state, there is nothing for the provider to prepare or commit.
            .filter(|c| c.kind() == ProcKind::TwoPhase && c.provider_undo)
            .map(|c| {
                let mut done = c
                    .done(&txn.id)
                    .map_err(|e| fail(&c.step, &c.target(), ProviderError::E_FAIL, e))?;
                // Prepare and commit read the provider's state; the step's writes are in it.
                done.state = self.state().handle(
                    &txn.id,
                    c.provider.name(),
                    Access::Read("a two-phase prepare or commit"),
                );
                Ok((c.step.to_string(), c.target(), c.provider.clone(), done))
            })
            .collect::<Result<_, Failure>>()?;
        for (step, target, provider, done) in &calls {
            let r = provider.prepare(done).await;
            let err = r
                .as_ref()
                .err()
                .map(|e| txn.redactor.redact_text(&e.to_string()));
            log_lapse(
                self.journal
                    .phase_done(&done.context, "prepare", err.as_deref())
                    .await,
                "prepare",
                "the transaction's record lacks this prepare; recovery does not use it",
            );
            if let Err(e) = r {
                // The keys stay locked for the transaction; its undos may read them.
                calls
                    .iter()
                    .for_each(|(_, _, _, d)| d.state.call_finished());
                return Err(fail(
                    step,
                    target,
                    e.code(),
                    format!("prepare failed: {}", txn.redactor.redact_text(&e.message())),
                ));
            }
        }
        for (step, _, provider, done) in &calls {
            let r = provider.commit(done).await;
            let err = r
                .as_ref()
                .err()
                .map(|e| txn.redactor.redact_text(&e.to_string()));
            log_lapse(
                self.journal
                    .phase_done(&done.context, "commit", err.as_deref())
                    .await,
                "commit",
                "the transaction's record lacks this commit; recovery does not use it",
            );
            if let Some(e) = err {
                // A commit must not fail (the MPS contract: the prepare promised it would
                // succeed); when one does, its change is prepared but not visible.
                tracing::error!(
                    step = %step, error = %e,
                    "two-phase commit failed; the system may be inconsistent"
                );
            }
        }
        calls
            .iter()
            .for_each(|(_, _, _, d)| d.state.call_finished());
        Ok(())
    }

    /// Undoes every completed call in reverse dependency order: a call is undone only after
    /// every call that started after it completed (and so may depend on it) was undone;
    /// calls that overlapped in time are independent and are undone concurrently. Each undo
    /// is retried under its provider's `undo` retry policy; returns how many were undone
    /// and what kept failing (in completion order). The calls kept in memory and those the
    /// durable journal gives back ([`super::Journal::read_back`], read as each undo starts)
    /// are ordered together, by the same completion counts.
    pub(super) async fn rollback(&self, txn: &Txn) -> (usize, Vec<UndoFailure>) {
        let completed = std::mem::take(&mut *lock(&txn.completed));
        let located = std::mem::take(&mut *lock(&txn.located));
        let kept = completed.len();
        let order: Vec<UndoOrder> = completed
            .iter()
            .map(|c| UndoOrder::new(c.started_after, c.seq))
            .chain(
                located
                    .iter()
                    .map(|l| UndoOrder::new(l.started_after, l.seq)),
            )
            .collect();
        let journal = self.journal.read_back();
        let read_back = journal
            .filter(|_| located.len() > 0)
            .map(|j| crate::txn::recovery::LiveUndos::new(j, &txn.id));
        let waited = WaitedOut::default();
        let failed = |step: &str, target: String, e: UndoError| UndoFailure {
            step: step.to_string(),
            target,
            message: txn.redactor.redact_text(&e.to_string()),
        };
        let results = undo_in_dependency_order(&order, |i| {
            let undo = if i < kept {
                let c = completed.get(i);
                c.done(&txn.id)
                    .map(|done| Undo {
                        provider: c.provider.clone(),
                        done,
                        step: c.step.to_string(),
                        state: c.state.clone(),
                        provider_undo: c.provider_undo,
                    })
                    .map(|undo| (undo, c.target()))
                    .map_err(|e| failed(&c.step, c.target(), UndoError::Failed(e)))
            } else {
                let l = located.get(i - kept);
                let prepared = match &read_back {
                    Some(r) => r.prepare(self, l.intent_seq, l.done_seq),
                    None => Err("the journal it is in cannot be read back".to_string()),
                };
                prepared
                    .map_err(|e| {
                        let step = format!("(journal record {})", l.intent_seq);
                        failed(&step, String::new(), UndoError::Failed(e))
                    })
                    .and_then(|p| {
                        let step = p.done.context.step_id.clone();
                        match p.provider {
                            Some(provider) => Ok((
                                Undo {
                                    provider,
                                    done: p.done,
                                    step,
                                    state: p.state,
                                    provider_undo: p.provider_undo,
                                },
                                p.target,
                            )),
                            None => Err(failed(&step, p.target, UndoError::NotRegistered)),
                        }
                    })
            };
            let waited = &waited;
            let failed = &failed;
            async move {
                let (undo, target) = undo?;
                let step = undo.step.clone();
                self.undo_redacted(undo, &txn.redactor, waited)
                    .await
                    .map_err(|e| failed(&step, target, e))
            }
        })
        .await;
        let undone = results.undone;
        let mut failures: Vec<(u32, UndoFailure)> = results
            .failures
            .into_iter()
            .map(|(i, f)| (order[i].seq, f))
            .collect();
        failures.sort_by_key(|(seq, _)| *seq);
        let mut failures: Vec<UndoFailure> = failures.into_iter().map(|(_, f)| f).collect();
        // A call nobody can settle may have been applied: only an operator can undo it.
        failures.extend(lock(&txn.in_doubt).iter().cloned());
        (undone, failures)
    }

    /// A call's undo succeeded (or it had none, only state): reverses its provider-state
    /// writes, under the transaction's locks (taken again at recovery), in the same batch
    /// as the undo record, and journals it. A reversal that cannot be written fails the undo.
    async fn undone(
        &self,
        context: &crate::provider::CallContext,
        state: Option<&StateChange>,
        redactor: &Redactor,
    ) -> Result<(), UndoError> {
        let Some(change) = state else {
            log_lapse(
                self.journal.undo_done(context, None).await,
                "undo_done",
                "recovery will undo this call again (undos are idempotent)",
            );
            return Ok(());
        };
        let reversal = change.reversal();
        let failed = |what: String| {
            let e = UndoError::Failed(redactor.redact_text(&format!(
                "the provider-state writes could not be reversed: {what}"
            )));
            tracing::warn!(error = %e, "undo failed");
            e
        };
        if let Err(e) = self.state().lock_for(&context.txn_id, &reversal).await {
            return Err(failed(e.to_string()));
        }
        let written = if self.state().in_journal() {
            self.journal.undo_done_with_state(context, &reversal).await
        } else {
            match self.state().apply(&reversal).await {
                Ok(()) => self.journal.undo_done(context, None).await,
                Err(e) => return Err(failed(e.to_string())),
            }
        };
        if let Err(e) = written {
            // Unlike an undo record alone, the reversal is the undo: not written, not done.
            let e = failed(e.to_string());
            log_lapse(
                self.journal.undo_done(context, Some(&e.to_string())).await,
                "undo_done (failed)",
                "recovery will try this undo again",
            );
            return Err(e);
        }
        Ok(())
    }

    /// One undo with retries (the provider's `undo` policy), journaled; `waited` is shared
    /// by the undos of one rollback. `state`: the call's provider-state writes, reversed
    /// once the undo succeeds; `provider_undo`: whether the provider is called at all (a
    /// call that only wrote state has no undo record).
    pub(crate) async fn undo_one(
        &self,
        provider: Arc<dyn Provider>,
        done: Done,
        step: String,
        waited: &WaitedOut,
        state: Option<Arc<StateChange>>,
        provider_undo: bool,
    ) -> Result<(), UndoError> {
        let undo = Undo {
            provider,
            done,
            step,
            state,
            provider_undo,
        };
        self.undo_redacted(undo, &Redactor::default(), waited).await
    }

    /// One undo, retried under its provider's `undo` retry policy, journaled; its errors are
    /// logged, journaled and returned with the transaction's secrets masked. Each attempt
    /// is awaited within the step timeout (an undo that does not answer in time is tried
    /// again: undos are idempotent). Only this undo waits for its backoff: independent
    /// undos run concurrently (see [`undo_in_dependency_order`]). Once an undo of a
    /// provider has waited out its whole budget, the later undos of that provider in the
    /// same rollback are tried once each (see [`WaitedOut`]).
    async fn undo_redacted(
        &self,
        undo: Undo,
        redactor: &Redactor,
        waited: &WaitedOut,
    ) -> Result<(), UndoError> {
        let Undo {
            provider,
            mut done,
            step,
            state,
            provider_undo,
        } = undo;
        let span = info_span!("undo", step.id = %step, provider = %provider.name());
        async {
            self.emit(Event::Undoing { step: step.clone() });
            if !provider_undo {
                return self.undone(&done.context, state.as_deref(), redactor).await;
            }
            let name = provider.name();
            let policy = self.options.retry.policy(name, RetryUse::Undo);
            let mut attempts = if waited.contains(name) {
                Attempts::once(policy, RetryUse::Undo)
            } else {
                Attempts::start(policy, RetryUse::Undo)
            };
            let last = loop {
                // A read-only view of the provider's state (the step's writes included).
                done.state = self.state().handle(
                    &done.context.txn_id,
                    provider.name(),
                    Access::Read("an undo"),
                );
                let undone = AssertUnwindSafe(provider.undo(done.clone())).catch_unwind();
                let result = tokio::time::timeout(self.options.step_timeout, undone).await;
                done.state.call_finished();
                let error = match result {
                    Ok(Ok(Ok(()))) => {
                        waited.back(name);
                        return self.undone(&done.context, state.as_deref(), redactor).await;
                    }
                    Ok(Ok(Err(e))) => e,
                    Ok(Err(p)) => {
                        // A panic is a bug in the provider: trying again does not fix it.
                        let e = UndoError::Panicked(redactor.redact_text(&panic_message(&p)));
                        tracing::warn!(error = %e, "undo failed");
                        break e;
                    }
                    Err(_) => ProviderError::in_doubt(format!(
                        "the undo did not answer within {:?} (step timeout)",
                        self.options.step_timeout
                    )),
                };
                let message = redactor.redact_text(&error.to_string());
                match attempts.back_off(&error, &message).await {
                    Ok(()) => {}
                    Err(GaveUp::NotRetryable) => {
                        tracing::warn!(error = %message, "undo failed");
                        break UndoError::Failed(message);
                    }
                    Err(why) => {
                        // Only an undo that actually waited marks the provider.
                        if matches!(why, GaveUp::Budget { .. } | GaveUp::Attempts(2..)) {
                            waited.gave_up(name);
                        }
                        tracing::warn!(error = %message, retry = %why, "undo failed");
                        break UndoError::Failed(format!("{message} ({why})"));
                    }
                }
            };
            log_lapse(
                self.journal
                    .undo_done(&done.context, Some(&last.to_string()))
                    .await,
                "undo_done (failed)",
                "recovery will try this undo again",
            );
            Err(last)
        }
        .instrument(span)
        .await
    }
}

/// The providers whose undo, in one rollback, kept failing with a retryable error until its
/// retry policy gave up (budget or `max_attempts`). Their later undos in the same rollback
/// are tried once each: the provider has been unavailable for a whole budget already, and a
/// chain of dependent undos of it would otherwise wait out one budget each, one after the
/// other. An undo of the provider that succeeds clears it.
#[derive(Debug, Default)]
pub(crate) struct WaitedOut(Mutex<HashSet<String>>);

impl WaitedOut {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn contains(&self, provider: &str) -> bool {
        self.set().contains(provider)
    }

    fn gave_up(&self, provider: &str) {
        self.set().insert(provider.to_string());
    }

    fn back(&self, provider: &str) {
        self.set().remove(provider);
    }
}

/// An undo that did not succeed (its text has the transaction's secrets masked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UndoError {
    /// The provider's undo failed (on the last attempt; why it was not tried again is in
    /// the text).
    #[error("{0}")]
    Failed(String),
    /// The provider's undo panicked (not tried again: a panic is a bug).
    #[error("undo panicked: {0}")]
    Panicked(String),
    /// The call's provider is not registered in this process.
    #[error("provider is not registered")]
    NotRegistered,
}

/// A completed call to undo.
struct Undo {
    provider: Arc<dyn Provider>,
    done: Done,
    step: String,
    /// Its provider-state writes, reversed once the provider's undo succeeded.
    state: Option<Arc<StateChange>>,
    /// Whether the provider is called (it returned an undo record).
    provider_undo: bool,
}

/// When a completed call started and finished, in completion counts: 8 bytes a call, held
/// for the whole of a rollback (a transaction's counts fit in 32 bits: four billion calls
/// would need hundreds of GiB of journal and memory before this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UndoOrder {
    /// Completions counted when the call started.
    pub(crate) started_after: u32,
    /// Its own completion number.
    pub(crate) seq: u32,
}

impl UndoOrder {
    /// The order of a call that started after `started_after` completions and was
    /// completion number `seq` (counts past `u32::MAX` are held at it).
    pub(crate) fn new(started_after: usize, seq: usize) -> UndoOrder {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        UndoOrder {
            started_after: count(started_after),
            seq: count(seq),
        }
    }

    /// The completion count after which every call that started later may depend on it.
    fn completed(self) -> u32 {
        self.seq.max(self.started_after)
    }
}

/// What the undos of [`undo_in_dependency_order`] came to: how many succeeded, and the
/// failures alone, by index (a rollback of 100,000 calls held a result for each).
#[derive(Debug)]
pub(crate) struct UndoResults<E> {
    /// Undos that succeeded.
    pub(crate) undone: usize,
    /// The index (in the order given) and error of each undo that failed, by index.
    pub(crate) failures: Vec<(usize, E)>,
}

/// One bit a call.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

/// Runs `undo(i)` for every call so that a call is undone only after every call that
/// started after it completed; independent calls run concurrently. Besides `order`, it holds
/// about 8 bytes a call (two permutations of `u32` indices and a bit), and the failures.
pub(crate) async fn undo_in_dependency_order<'a, F, Fut, E>(
    order: &[UndoOrder],
    undo: F,
) -> UndoResults<E>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + 'a,
{
    let n = order.len();
    // Indices fit in 32 bits (see `UndoOrder`).
    let at = |k: u32| k as usize;
    // Call i waits for every call that started after it completed: those whose
    // `started_after` is above i's `completed()`. Sorted by `started_after`, largest first,
    // they are a prefix of `by_start`, so i is ready once the finished calls cover that
    // prefix. Comparing every pair instead cost O(n²) time and memory: a chain of 100,000
    // sequential calls made 5·10⁹ pairs.
    let mut by_start: Vec<u32> = (0..n).map(|i| i as u32).collect();
    by_start.sort_by_key(|&j| Reverse(order[at(j)].started_after));
    // (A call never waits for itself: it started before it completed.)
    let blockers = |i: usize| {
        let completed = order[i].completed();
        by_start.partition_point(|&j| order[at(j)].started_after > completed)
    };
    // Calls by how long a prefix they wait for, released in that order: the latest
    // completed wait for the fewest (the prefix's length is recomputed, a binary search,
    // rather than held a call).
    let mut by_completed: Vec<u32> = (0..n).map(|i| i as u32).collect();
    by_completed.sort_by_key(|&i| Reverse(order[at(i)].completed()));
    let mut released = 0;
    let mut finished = Bits::new(n);
    // The longest prefix of `by_start` whose calls are all finished.
    let mut covered = 0;
    let mut failures = Vec::new();
    let mut running = FuturesUnordered::new();
    let mut ready: Vec<u32> = Vec::new();
    loop {
        // Every call whose blockers are all finished, the latest completed first.
        while released < n && blockers(at(by_completed[released])) <= covered {
            ready.push(by_completed[released]);
            released += 1;
        }
        ready.sort_by_key(|&i| Reverse(order[at(i)].seq));
        for i in ready.drain(..) {
            let i = at(i);
            let fut = undo(i);
            running.push(async move { (i, fut.await) });
        }
        match running.next().await {
            None => break,
            Some((i, r)) => {
                if let Err(e) = r {
                    failures.push((i, e));
                }
                finished.set(i);
                while covered < n && finished.get(at(by_start[covered])) {
                    covered += 1;
                }
            }
        }
    }
    failures.sort_by_key(|(i, _)| *i);
    UndoResults {
        undone: n - failures.len(),
        failures,
    }
}

#[cfg(test)]
mod tests {
    use super::{undo_in_dependency_order, UndoOrder};
    use futures::stream::{FuturesUnordered, StreamExt};
    use proptest::prelude::*;
    use std::cmp::Reverse;
    use std::sync::Mutex;

    /// Yields `i`'s number of times (so undos finish out of order); fails when `fails(i)`.
    async fn an_undo(
        i: usize,
        log: &Mutex<Vec<(usize, bool)>>,
        fails: impl Fn(usize) -> bool,
    ) -> Result<(), usize> {
        log.lock().unwrap().push((i, false));
        for _ in 0..(i * 7919) % 5 {
            tokio::task::yield_now().await;
        }
        log.lock().unwrap().push((i, true));
        if fails(i) {
            Err(i)
        } else {
            Ok(())
        }
    }

    /// Undoes `order` with undos that yield a varying number of times (so they finish out
    /// of order) and checks that each started only after every call that started after it
    /// completed had been undone. Returns the log of starts and ends.
    async fn check(order: &[UndoOrder]) -> Vec<(usize, bool)> {
        let log: Mutex<Vec<(usize, bool)>> = Mutex::new(Vec::new());
        let fails = |i: usize| i % 7 == 3;
        let results = undo_in_dependency_order(order, |i| an_undo(i, &log, fails)).await;
        let failed: Vec<usize> = (0..order.len()).filter(|&i| fails(i)).collect();
        assert_eq!(results.undone, order.len() - failed.len());
        let reported: Vec<usize> = results.failures.iter().map(|(i, _)| *i).collect();
        assert_eq!(reported, failed, "the failures, by index");
        assert!(results.failures.iter().all(|(i, e)| i == e));
        let log = log.into_inner().unwrap();
        let (mut started, mut finished) = (vec![None; order.len()], vec![None; order.len()]);
        for (at, &(i, done)) in log.iter().enumerate() {
            if done {
                finished[i] = Some(at);
            } else {
                assert!(started[i].is_none(), "{i} is undone once");
                started[i] = Some(at);
            }
        }
        for i in 0..order.len() {
            let started = started[i].expect("every call is undone");
            for (j, o) in order.iter().enumerate() {
                if j != i && o.started_after > order[i].seq {
                    let finished = finished[j].expect("undone");
                    assert!(finished < started, "{j} must be undone before {i}");
                }
            }
        }
        log
    }

    /// The scheduling as it was before the compact one (`usize` vectors, a result and a
    /// prefix length held a call), kept to check that the order is the same, step by step.
    async fn undo_as_before<F, Fut>(order: &[UndoOrder], undo: F) -> Vec<Result<(), usize>>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = Result<(), usize>>,
    {
        let n = order.len();
        let mut by_start: Vec<usize> = (0..n).collect();
        by_start.sort_by_key(|&j| Reverse(order[j].started_after));
        let blockers: Vec<usize> = (0..n)
            .map(|i| {
                let completed = order[i].seq.max(order[i].started_after);
                by_start.partition_point(|&j| order[j].started_after > completed)
            })
            .collect();
        let mut by_blockers: Vec<usize> = (0..n).collect();
        by_blockers.sort_by_key(|&i| blockers[i]);
        let mut released = 0;
        let mut finished = vec![false; n];
        let mut covered = 0;
        let mut results: Vec<Result<(), usize>> = (0..n).map(|_| Ok(())).collect();
        let mut running = FuturesUnordered::new();
        loop {
            let mut ready: Vec<usize> = Vec::new();
            while released < n && blockers[by_blockers[released]] <= covered {
                ready.push(by_blockers[released]);
                released += 1;
            }
            ready.sort_by_key(|&i| Reverse(order[i].seq));
            for i in ready {
                let fut = undo(i);
                running.push(async move { (i, fut.await) });
            }
            match running.next().await {
                None => break,
                Some((i, r)) => {
                    results[i] = r;
                    finished[i] = true;
                    while covered < n && finished[by_start[covered]] {
                        covered += 1;
                    }
                }
            }
        }
        results
    }

    #[tokio::test]
    async fn undos_follow_dependencies_with_concurrent_calls() {
        // Calls with overlapping lifetimes: a deterministic mix of starts and completions.
        let mut order = Vec::new();
        let mut completed = 0;
        let mut open: Vec<usize> = Vec::new();
        for k in 0..300usize {
            if k % 3 != 2 {
                open.push(completed);
            }
            if (k * 31) % 4 != 0 {
                if let Some(started_after) = open.pop() {
                    order.push(UndoOrder::new(started_after, completed));
                    completed += 1;
                }
            }
        }
        assert!(order.len() > 100);
        check(&order).await;
    }

    #[tokio::test]
    async fn a_long_chain_is_undone_in_reverse_without_pairwise_work() {
        // 100,000 sequential calls: each started after the previous completed. Comparing
        // every pair made 5·10⁹ entries; this must take well under a second.
        let n = 100_000;
        let order: Vec<UndoOrder> = (0..n).map(|k| UndoOrder::new(k, k)).collect();
        let log = Mutex::new(Vec::with_capacity(n));
        let start = std::time::Instant::now();
        let results = undo_in_dependency_order(&order, |i| {
            log.lock().unwrap().push(i);
            async { Ok::<(), ()>(()) }
        })
        .await;
        assert_eq!((results.undone, results.failures.len()), (n, 0));
        let log = log.into_inner().unwrap();
        assert_eq!(log, (0..n).rev().collect::<Vec<_>>());
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        check(&order[..2_000]).await;
    }

    /// Calls as a run makes them: each starts after some completions (never more than
    /// came before its own) and completes in turn; some overlap many others, some wait for
    /// all before (as chained provider-state writers do), many share a `started_after`.
    fn arb_order() -> impl Strategy<Value = Vec<UndoOrder>> {
        prop::collection::vec((0usize..6, any::<bool>(), 0usize..40), 0..120).prop_map(|steps| {
            steps
                .into_iter()
                .enumerate()
                .map(|(k, (back, chained, long))| {
                    let started_after = match (chained, back) {
                        (true, _) => k,
                        // Now and then a call that ran through many others.
                        (false, 0) => k.saturating_sub(long),
                        (false, back) => k.saturating_sub(back),
                    };
                    UndoOrder::new(started_after, k)
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The compact scheduling starts the undos in exactly the order the one it replaced
        /// did (same undos, same interleaving of starts and ends), keeps every dependency,
        /// and reports the same failures.
        #[test]
        fn the_undo_order_is_the_one_before(order in arb_order()) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (log, before) = rt.block_on(async {
                let log = check(&order).await;
                let before_log: Mutex<Vec<(usize, bool)>> = Mutex::new(Vec::new());
                let results =
                    undo_as_before(&order, |i| an_undo(i, &before_log, |i| i % 7 == 3)).await;
                (log, (before_log.into_inner().unwrap(), results))
            });
            prop_assert_eq!(&log, &before.0);
            let failed: Vec<usize> = before
                .1
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_err())
                .map(|(i, _)| i)
                .collect();
            prop_assert_eq!(failed, (0..order.len()).filter(|i| i % 7 == 3).collect::<Vec<_>>());
        }
    }
}
