//! Crash recovery and operator commands: finds transactions a crash left `running` or
//! `rolling_back`, settles their in-doubt steps (an intent with no result) through the
//! provider's `recover` (by idempotency key), and rolls them back in reverse dependency
//! order with every undo journaled. `resume_rollback` continues a `rollback_failed` one.

use super::journal::DurableJournal;
use super::records::{now_ms, Guarded, Record, TxnSummary};
use crate::compile::{compile_request, Catalog};
use crate::data::Element;
use crate::exec::{undo_in_dependency_order, Engine, Journal, StepDone, TxnState, UndoOrder};
use crate::exec::{Replayed, Resume};
use crate::model::{CallTarget, Format, Namespace, Procedure, Request, RequestTarget, SourceRef};
use crate::provider::{Call, CallContext, Done};
use crate::store::{Space, StoreError};
use std::collections::HashMap;
use std::sync::Arc;

/// What recovery did to one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Transaction id.
    pub txn_id: String,
    /// State found.
    pub from: TxnState,
    /// State left.
    pub to: TxnState,
    /// Calls undone now.
    pub undone: usize,
    /// In-doubt steps found (settled or not).
    pub in_doubt: usize,
    /// What an operator must look at.
    pub problems: Vec<String>,
}

/// Recovery failures (the store could not be read).
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Store problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A summary or record that does not parse.
    #[error("journal record of {txn} cannot be read: {message}")]
    Record {
        /// Transaction.
        txn: String,
        /// Why.
        message: String,
    },
    /// No such transaction (or an ambiguous prefix).
    #[error("{0}")]
    NotFound(String),
    /// A recovery task panicked or was cancelled.
    #[error("a recovery task failed: {0}\n  hint: run `provisio recover` again; transactions not yet recovered are still in the journal")]
    Task(String),
}

/// Every transaction summary, newest first, optionally only those in `state`.
pub fn list(
    journal: &DurableJournal,
    state: Option<TxnState>,
) -> Result<Vec<TxnSummary>, RecoveryError> {
    let mut out = Vec::new();
    for (k, v) in journal.store().scan(Space::Txns, b"")? {
        let s: TxnSummary = serde_json::from_slice(&v).map_err(|e| RecoveryError::Record {
            txn: String::from_utf8_lossy(&k).into_owned(),
            message: e.to_string(),
        })?;
        if state.is_none_or(|st| st == s.state) {
            out.push(s);
        }
    }
    out.sort_by(|a, b| b.started_ms.cmp(&a.started_ms).then(b.id.cmp(&a.id)));
    Ok(out)
}

/// Resolves a full id or a unique prefix of one.
pub fn resolve(journal: &DurableJournal, id: &str) -> Result<TxnSummary, RecoveryError> {
    let matches: Vec<TxnSummary> = list(journal, None)?
        .into_iter()
        .filter(|s| s.id.starts_with(id))
        .collect();
    match matches.len() {
        1 => Ok(matches.into_iter().next().expect("one match")),
        0 => Err(RecoveryError::NotFound(format!(
            "no transaction `{id}`\n  hint: `provisio tx list` shows them"
        ))),
        n => Err(RecoveryError::NotFound(format!(
            "`{id}` matches {n} transactions; give more characters"
        ))),
    }
}

/// The journal of one transaction, in order, with sequence numbers. A finished
/// transaction's records are one array under its id (sequence number = index); records
/// written after that (a resumed rollback) follow under their own keys.
pub fn records(
    journal: &DurableJournal,
    txn_id: &str,
) -> Result<Vec<(u64, Record)>, RecoveryError> {
    let bad = |e: serde_json::Error| RecoveryError::Record {
        txn: txn_id.to_string(),
        message: e.to_string(),
    };
    let mut out = Vec::new();
    for (k, v) in journal.store().scan(Space::Journal, txn_id.as_bytes())? {
        if k.len() == txn_id.len() {
            let all: Vec<Record> = serde_json::from_slice(&v).map_err(bad)?;
            out.extend(all.into_iter().enumerate().map(|(i, r)| (i as u64, r)));
            continue;
        }
        let seq = k
            .get(k.len().saturating_sub(8)..)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        out.push((seq, serde_json::from_slice(&v).map_err(bad)?));
    }
    out.sort_by_key(|(seq, _)| *seq);
    Ok(out)
}

/// Finishes every transaction left `running` or `rolling_back` by a crash.
pub async fn recover(
    engine: &Engine,
    journal: &Arc<DurableJournal>,
) -> Result<Vec<Recovered>, RecoveryError> {
    let unfinished: Vec<TxnSummary> = list(journal, None)?
        .into_iter()
        .filter(|s| {
            matches!(
                s.state,
                TxnState::Running | TxnState::RollingBack | TxnState::Queued
            )
        })
        .collect();
    // Independent transactions recover concurrently, as tasks (so every worker thread takes
    // part) and at most RECOVERY_CONCURRENCY at a time; their journal writes share syncs.
    let limit = Arc::new(tokio::sync::Semaphore::new(RECOVERY_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for s in unfinished {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let (engine, journal) = (engine.clone(), journal.clone());
        tasks.spawn(async move {
            let _permit = permit;
            recover_one(&engine, &journal, s).await
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(r) => out.push(r?),
            Err(e) => return Err(RecoveryError::Task(e.to_string())),
        }
    }
    out.sort_by(|a, b| a.txn_id.cmp(&b.txn_id));
    Ok(out)
}

/// How many transactions recover at once.
const RECOVERY_CONCURRENCY: usize = 64;

async fn recover_one(
    engine: &Engine,
    journal: &DurableJournal,
    s: TxnSummary,
) -> Result<Recovered, RecoveryError> {
    if s.resumable && s.state == TxnState::Running {
        tracing::warn!(txn.id = %s.id, "resuming a resumable transaction left unfinished");
        match resume(engine, journal, &s).await? {
            Ok(r) => return Ok(r),
            Err(why) => {
                tracing::warn!(txn.id = %s.id, reason = %why, "cannot resume; rolling back instead")
            }
        }
    }
    tracing::warn!(txn.id = %s.id, state = %s.state, "recovering a transaction left unfinished");
    roll_back(engine, journal, s).await
}

/// Continues the rollback of a `rollback_failed` transaction after the operator fixed the
/// cause: retries exactly the undos that have not succeeded.
pub async fn resume_rollback(
    engine: &Engine,
    journal: &DurableJournal,
    id: &str,
) -> Result<Recovered, RecoveryError> {
    let s = resolve(journal, id)?;
    if s.state != TxnState::RollbackFailed {
        return Err(RecoveryError::NotFound(format!(
            "transaction {} is {}, not rollback_failed: nothing to resume",
            s.id, s.state
        )));
    }
    roll_back(engine, journal, s).await
}

struct Call_ {
    intent_seq: u64,
    context: CallContext,
    provider: String,
    target: String,
    provider_context: Element,
    call_data: Guarded,
    done: Option<(u64, Option<Guarded>, Option<Guarded>)>,
    failed: bool,
    undone: bool,
}

async fn roll_back(
    engine: &Engine,
    journal: &DurableJournal,
    summary: TxnSummary,
) -> Result<Recovered, RecoveryError> {
    let records = records(journal, &summary.id)?;
    let next_seq = records.last().map(|(s, _)| s + 1).unwrap_or(0);
    journal.adopt(summary.clone(), next_seq);
    let mut calls: Vec<Call_> = Vec::new();
    let mut index: HashMap<(String, u32), usize> = HashMap::new();
    for (seq, r) in &records {
        match r {
            Record::Intent {
                step,
                attempt,
                namespace,
                procedure,
                provider,
                target,
                provider_context,
                call_data,
                ..
            } => {
                index.insert((step.clone(), *attempt), calls.len());
                calls.push(Call_ {
                    intent_seq: *seq,
                    context: CallContext {
                        txn_id: summary.id.clone(),
                        step_id: step.clone(),
                        attempt: *attempt,
                        namespace: namespace.clone(),
                        procedure: procedure.clone(),
                    },
                    provider: provider.clone(),
                    target: target.clone(),
                    provider_context: provider_context.clone(),
                    call_data: call_data.clone(),
                    done: None,
                    failed: false,
                    undone: false,
                });
            }
            Record::Done {
                step,
                attempt,
                undo,
                saved,
                ..
            } => {
                if let Some(&i) = index.get(&(step.clone(), *attempt)) {
                    calls[i].done = Some((*seq, undo.clone(), saved.clone()));
                }
            }
            Record::Failed { step, attempt, .. } => {
                if let Some(&i) = index.get(&(step.clone(), *attempt)) {
                    calls[i].failed = true;
                }
            }
            Record::Undone {
                step,
                attempt,
                error: None,
                ..
            } => {
                if let Some(&i) = index.get(&(step.clone(), *attempt)) {
                    calls[i].undone = true;
                }
            }
            _ => {}
        }
    }
    let _ = journal
        .txn_state(
            &summary.id,
            TxnState::RollingBack,
            Some("recovering after a crash"),
        )
        .await;
    let mut problems = Vec::new();
    let mut in_doubt = 0;
    // Settle in-doubt calls: ask the provider whether the call with this key was applied.
    for c in calls.iter_mut().filter(|c| c.done.is_none() && !c.failed) {
        in_doubt += 1;
        let Some(provider) = engine.registry().get(&c.provider).cloned() else {
            problems.push(format!(
                "step {}: provider `{}` is not registered; cannot settle the in-doubt call",
                c.context.step_id, c.provider
            ));
            continue;
        };
        let data = match journal.unguard(&c.call_data) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("step {} was in doubt: {e}", c.context.step_id));
                continue;
            }
        };
        let call = Call {
            context: c.context.clone(),
            provider_context: c.provider_context.clone(),
            execute_data: data,
        };
        match provider.recover(&call).await {
            Ok(Some(undo)) => {
                tracing::info!(step = %c.context.step_id, "in-doubt call was applied; it will be undone");
                let _ = journal
                    .step_done(&StepDone {
                        context: &c.context,
                        output: &Element::new("executeData"),
                        undo: Some(&undo),
                        saved: None,
                        secret: false,
                        result: None,
                        result_secret: false,
                    })
                    .await;
                c.done = Some((c.intent_seq, Some(Guarded::Plain(undo)), None));
            }
            Ok(None) => {
                tracing::info!(step = %c.context.step_id, "in-doubt call was not applied");
                let _ = journal.step_failed(&c.context, "not applied (settled at recovery)").await;
                c.failed = true;
            }
            Err(e) => problems.push(format!(
                "step {} ({}) was in doubt and the provider cannot tell whether it was applied: {e}; check it by hand",
                c.context.step_id, c.target
            )),
        }
    }
    // What remains to undo, ordered by when calls completed and started.
    let mut pending: Vec<(usize, Done, String)> = Vec::new();
    let mut done_seqs: Vec<u64> = calls
        .iter()
        .filter_map(|c| c.done.as_ref().map(|d| d.0))
        .collect();
    done_seqs.sort_unstable();
    let mut order = Vec::new();
    for (i, c) in calls.iter().enumerate() {
        let Some((done_seq, Some(undo), saved)) = &c.done else {
            continue;
        };
        if c.undone {
            continue;
        }
        let undo = match journal.unguard(undo) {
            Ok(u) => u,
            Err(e) => {
                problems.push(format!("step {}: cannot undo: {e}", c.context.step_id));
                continue;
            }
        };
        let saved = saved.as_ref().and_then(|s| journal.unguard(s).ok());
        let done = Done {
            context: c.context.clone(),
            provider_context: c.provider_context.clone(),
            undo,
            execute_data: saved,
        };
        order.push(UndoOrder {
            started_after: done_seqs.iter().filter(|&&d| d < c.intent_seq).count(),
            seq: done_seqs.iter().filter(|&&d| d < *done_seq).count(),
        });
        pending.push((i, done, c.provider.clone()));
    }
    let results = undo_in_dependency_order(&order, |k| {
        let (_, done, provider) = &pending[k];
        let provider = engine.registry().get(provider).cloned();
        let done = done.clone();
        async move {
            match provider {
                Some(p) => {
                    let step = done.context.step_id.clone();
                    engine.undo_one(p, done, step).await
                }
                None => Err("provider is not registered".to_string()),
            }
        }
    })
    .await;
    let mut undone = 0;
    for (k, r) in results.into_iter().enumerate() {
        match r {
            Ok(()) => undone += 1,
            Err(e) => problems.push(format!(
                "step {} ({}): undo failed: {e}",
                pending[k].1.context.step_id, calls[pending[k].0].target
            )),
        }
    }
    let to = if problems.is_empty() {
        TxnState::RolledBack
    } else {
        TxnState::RollbackFailed
    };
    let message = if problems.is_empty() {
        None
    } else {
        Some(problems.join("; "))
    };
    journal
        .txn_state(&summary.id, to, message.as_deref())
        .await
        .map_err(|e| RecoveryError::Record {
            txn: summary.id.clone(),
            message: e.to_string(),
        })?;
    let _ = now_ms();
    Ok(Recovered {
        txn_id: summary.id,
        from: summary.state,
        to,
        undone,
        in_doubt,
        problems,
    })
}

/// Resumes a resumable transaction with the definitions it was pinned to. `Ok(Err(why))`
/// means it cannot be resumed exactly (the caller rolls it back instead).
async fn resume(
    engine: &Engine,
    journal: &DurableJournal,
    summary: &TxnSummary,
) -> Result<Result<Recovered, String>, RecoveryError> {
    let store = journal.store();
    let Some(pins) = store.get(Space::Definitions, format!("txn/{}", summary.id).as_bytes())?
    else {
        return Ok(Err("its pinned definitions are missing".into()));
    };
    let pins: serde_json::Value = match serde_json::from_slice(&pins) {
        Ok(v) => v,
        Err(e) => return Ok(Err(format!("pinned definitions unreadable: {e}"))),
    };
    let mut namespaces: Vec<Namespace> = Vec::new();
    let mut trusted: Option<Procedure> = None;
    for pin in pins
        .get("pins")
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default()
    {
        let name = pin
            .get("namespace")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let hash = pin
            .get("hash")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let Some(bytes) = store.get(Space::Definitions, hash.as_bytes())? else {
            return Ok(Err(format!(
                "pinned definition of `{name}` ({hash}) is missing"
            )));
        };
        if name == "(request)" {
            trusted = serde_json::from_slice(&bytes).ok();
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(ns) => namespaces.push(ns),
                Err(e) => {
                    return Ok(Err(format!(
                        "pinned definition of `{name}` unreadable: {e}"
                    )))
                }
            }
        }
    }
    let request_data: Guarded = match pins.get("request").cloned().map(serde_json::from_value) {
        Some(Ok(g)) => g,
        _ => return Ok(Err("the request data was not kept".into())),
    };
    let data = match journal.unguard(&request_data) {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    let catalog = match Catalog::new(namespaces, engine.registry()) {
        Ok(c) => c,
        Err(e) => {
            return Ok(Err(format!(
                "pinned definitions do not load: {}",
                e.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )))
        }
    };
    let target = match trusted {
        Some(p) => RequestTarget::Trusted(Box::new(p)),
        None => {
            let Some((ns, p)) = summary.target.rsplit_once('/') else {
                return Ok(Err(format!(
                    "target `{}` is not Namespace/Procedure",
                    summary.target
                )));
            };
            RequestTarget::Call(CallTarget {
                namespace: ns.to_string(),
                procedure: p.to_string(),
            })
        }
    };
    let request = Request {
        target,
        data: data.clone(),
        context: Element::new("context"),
        format: Format::Yaml,
        source_ref: SourceRef::new("<journal>", 0, 0),
    };
    let program = match compile_request(&catalog, &request, &engine.options().limits) {
        Ok(p) => p,
        Err(e) => return Ok(Err(format!("pinned definitions do not compile: {e}"))),
    };
    // What completed, what is in doubt.
    let records = records(journal, &summary.id)?;
    let next_seq = records.last().map(|(s, _)| s + 1).unwrap_or(0);
    journal.adopt(summary.clone(), next_seq);
    let mut intents: HashMap<(String, u32), Record> = HashMap::new();
    let mut settled: std::collections::HashSet<(String, u32)> = std::collections::HashSet::new();
    let mut resume = Resume {
        txn_id: summary.id.clone(),
        ..Default::default()
    };
    for (_, r) in &records {
        match r {
            Record::Intent { step, attempt, .. } => {
                intents.insert((step.clone(), *attempt), r.clone());
                let next = resume.next_attempt.entry(step.clone()).or_insert(1);
                *next = (*next).max(attempt + 1);
            }
            Record::Done {
                step,
                attempt,
                undo,
                result,
                ..
            } => {
                settled.insert((step.clone(), *attempt));
                let Some(result) = result else {
                    return Ok(Err(format!("step {step} has no recorded result")));
                };
                let output = match journal.unguard(result) {
                    Ok(o) => o,
                    Err(e) => return Ok(Err(e)),
                };
                let undo = match undo.as_ref().map(|u| journal.unguard(u)) {
                    None => None,
                    Some(Ok(u)) => Some(u),
                    Some(Err(e)) => return Ok(Err(e)),
                };
                resume.done.insert(
                    step.clone(),
                    Replayed {
                        output,
                        undo,
                        attempt: *attempt,
                    },
                );
            }
            Record::Failed { step, attempt, .. } => {
                settled.insert((step.clone(), *attempt));
            }
            _ => {}
        }
    }
    let mut in_doubt = 0;
    for ((step, attempt), intent) in &intents {
        if settled.contains(&(step.clone(), *attempt)) {
            continue;
        }
        in_doubt += 1;
        let Record::Intent {
            namespace,
            procedure,
            provider,
            provider_context,
            call_data,
            ..
        } = intent
        else {
            continue;
        };
        let Some(p) = engine.registry().get(provider).cloned() else {
            return Ok(Err(format!("provider `{provider}` is not registered")));
        };
        let context = CallContext {
            txn_id: summary.id.clone(),
            step_id: step.clone(),
            attempt: *attempt,
            namespace: namespace.clone(),
            procedure: procedure.clone(),
        };
        let execute_data = match journal.unguard(call_data) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        match p
            .recover(&Call {
                context: context.clone(),
                provider_context: provider_context.clone(),
                execute_data,
            })
            .await
        {
            Ok(None) => {
                let _ = journal
                    .step_failed(&context, "not applied (settled at recovery)")
                    .await;
            }
            Ok(Some(undo)) => {
                // Applied, but its result never reached the journal: undo it, and the resumed
                // run does it again (next attempt) so its result is known.
                let done = Done {
                    context: context.clone(),
                    provider_context: provider_context.clone(),
                    undo,
                    execute_data: None,
                };
                if let Err(e) = engine.undo_one(p.clone(), done, step.clone()).await {
                    return Ok(Err(format!("step {step} was applied without a journaled result and could not be undone: {e}")));
                }
            }
            Err(e) => return Ok(Err(format!("step {step} is in doubt: {e}"))),
        }
    }
    let result = engine
        .resume_program(Arc::new(program), data, Element::new("context"), resume)
        .await;
    let problems = result
        .undo_failures
        .iter()
        .map(|u| format!("step {} ({}): undo failed: {}", u.step, u.target, u.message))
        .collect();
    Ok(Ok(Recovered {
        txn_id: summary.id.clone(),
        from: summary.state,
        to: result.state,
        undone: result.undone,
        in_doubt,
        problems,
    }))
}
