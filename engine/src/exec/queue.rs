//! The MPS `queue` step: instead of calling its procedure, the step hands the call (its
//! executeData as the job's `data`) to a [`JobSink`], which queues it as a job of its own,
//! and writes the job id to `context/queueContext/@queueId`. A suspended job is held for
//! the transaction: after the transaction ends the engine tells the sink to release
//! (commit) or discard (rollback) what it holds for it.

use super::state::{lock, RunMode, Txn};
use super::{Engine, Failure};
use crate::data::{Element, Node};
use crate::model::{CallTarget, QueueStep};
use crate::provider::ProviderError;
use crate::queue::RetryType;
use crate::TxnId;
use futures::future::BoxFuture;

/// A call a `queue` step hands over, with the request's `queueContext` settings.
#[derive(Debug, Clone)]
pub struct QueuedCall {
    /// The submitting transaction.
    pub txn_id: TxnId,
    /// The step path that queued it.
    pub step: String,
    /// The procedure the job calls (public).
    pub target: CallTarget,
    /// The job's `data`: the step's executeData after its `before` transforms.
    pub data: Element,
    /// MPS `queueSuspended`: hold the job until the transaction commits (removed if it
    /// rolls back); `false`: it may run at once, whatever the transaction's outcome.
    pub suspended: bool,
    /// `queueContext/@retryCount`: attempts after the first.
    pub retry_count: Option<u32>,
    /// `queueContext/@retryInterval`: ms between attempts.
    pub retry_interval_ms: Option<u64>,
    /// `queueContext/@onFailure="continue"`: after the last attempt the job is failed
    /// (not left for an operator, which is `queueToOperator`, the default).
    pub fail_when_exhausted: bool,
    /// `queueContext/@priority`: lower runs sooner (MPS).
    pub priority: Option<i16>,
    /// `queueContext/@retryType`: how the wait between attempts grows.
    pub retry_type: Option<RetryType>,
    /// `queueContext/@retryStopOnFailure`: after a failure with this HRESULT the job is
    /// tried at most once more.
    pub retry_stop_code: Option<u32>,
    /// `queueContext/@retainSuccessfulResponses`: `Some(false)` (`"0"`), a succeeded job
    /// keeps no response; `None` when the request does not say, and the queue's default
    /// (the daemon's `serve.retain_successful_responses`) applies.
    pub retain_successful_responses: Option<bool>,
    /// `queueContext/parentQueue/@queueId` (each): jobs that must succeed before this one
    /// runs.
    pub parents: Vec<String>,
}

/// Where `queue` steps put their jobs (the binary's persistent job queue).
pub trait JobSink: Send + Sync {
    /// Queues `call` (held for its transaction when suspended); returns the job id.
    fn enqueue(&self, call: QueuedCall) -> BoxFuture<'_, Result<String, String>>;
    /// The transaction `txn` ended: release (`committed`) or remove what is held for it.
    /// A failure here is settled after the next recovery (see
    /// [`crate::queue::Queue::settle_held`]).
    fn settle<'a>(&'a self, txn: &'a TxnId, committed: bool) -> BoxFuture<'a, Result<(), String>>;
}

/// The `queueContext` attributes a queued job honours (and `queueId`, written back).
const HONOURED_QUEUE_ATTRIBUTES: [&str; 9] = [
    "retryCount",
    "retryInterval",
    "priority",
    "onFailure",
    "queueId",
    "retryType",
    "retryStopOnFailure",
    "retainSuccessfulResponses",
    "parentQueue",
];

/// An HRESULT as MPS writes one: hexadecimal (`0x80070057`) or decimal, a negative decimal
/// being the signed 32-bit form (`-2147024809`).
fn parse_hresult(text: &str) -> Option<u32> {
    let t = text.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u32::from_str_radix(hex, 16).ok();
    }
    let n = t.parse::<i64>().ok()?;
    i32::try_from(n)
        .map(|s| s as u32)
        .ok()
        .or_else(|| u32::try_from(n).ok())
}

/// The `queueContext` settings MPS added to its first ones: `retryType`,
/// `retryStopOnFailure`, `retainSuccessfulResponses` and the `parentQueue` children.
struct MoreSettings {
    retry_type: Option<RetryType>,
    retry_stop_code: Option<u32>,
    retain_successful_responses: Option<bool>,
    parents: Vec<String>,
}

fn more_settings(qc: &Element, step: &str) -> Result<MoreSettings, Failure> {
    let set = |name: &str| qc.attr(name).map(str::trim).filter(|v| !v.is_empty());
    let retry_type = match set("retryType") {
        None => None,
        Some(v) => Some(RetryType::parse(v).ok_or_else(|| {
            Failure::data(
                step,
                format!(
                    "context/queueContext/@retryType `{v}` is not one of {}",
                    RetryType::NAMES.join(", ")
                ),
            )
        })?),
    };
    let retry_stop_code = match set("retryStopOnFailure") {
        None => None,
        Some(v) => Some(parse_hresult(v).ok_or_else(|| {
            Failure::data(
                step,
                format!(
                    "context/queueContext/@retryStopOnFailure `{v}` is not an HRESULT: write it in hexadecimal (0x80070057) or decimal (-2147024809)"
                ),
            )
        })?),
    };
    let retain_successful_responses = match set("retainSuccessfulResponses") {
        None => None,
        Some("1") | Some("true") => Some(true),
        Some("0") | Some("false") => Some(false),
        Some(v) => {
            return Err(Failure::data(
                step,
                format!(
                    "context/queueContext/@retainSuccessfulResponses `{v}` is not a boolean: 1 (keep the response of a succeeded job, the default) or 0 (drop it)"
                ),
            ))
        }
    };
    let mut parents = Vec::new();
    for (i, pq) in qc
        .children
        .iter()
        .filter_map(|n| match n {
            Node::Element(e) if e.local_name() == "parentQueue" => Some(e),
            _ => None,
        })
        .enumerate()
    {
        let id = pq
            .attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("queueId"))
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Failure::data(
                    step,
                    format!(
                        "context/queueContext/parentQueue[{}] has no queueId: name the job to wait for (<parentQueue queueId=\"…\"/>)",
                        i + 1
                    ),
                )
            })?;
        parents.push(id.to_string());
    }
    Ok(MoreSettings {
        retry_type,
        retry_stop_code,
        retain_successful_responses,
        parents,
    })
}

/// What a plan (dry run) shows as the job id.
const PLANNED_ID: &str = "(queued when run)";

fn attr_number<T: std::str::FromStr>(
    qc: &Element,
    name: &str,
    step: &str,
) -> Result<Option<T>, Failure> {
    match qc.attr(name) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => v.trim().parse::<T>().map(Some).map_err(|_| {
            Failure::data(
                step,
                format!("context/queueContext/@{name} `{v}` is not a whole number in range"),
            )
        }),
    }
}

impl Engine {
    /// Runs a `queue` step's call: queues it and records the job id in the context.
    pub(super) async fn enqueue_call(
        &self,
        txn: &Txn,
        target: &CallTarget,
        ed: Element,
        step: &str,
        spec: QueueStep,
    ) -> Result<(), Failure> {
        let qc = lock(&txn.context)
            .child("queueContext")
            .cloned()
            .unwrap_or_else(|| Element::new("queueContext"));
        // MPS attributes the queue does not honour are named in the log, not dropped
        // silently (`queueId` is the one this step itself writes back).
        for (name, value) in &qc.attrs {
            let name = name.as_str();
            if !HONOURED_QUEUE_ATTRIBUTES.contains(&name) && !name.starts_with("xmlns") {
                tracing::warn!(
                    step,
                    attribute = name,
                    value = value.as_str(),
                    "context/queueContext/@{name} is not an MPS queueContext attribute (retryCount, retryInterval, retryType, retryStopOnFailure, onFailure, priority, retainSuccessfulResponses): the job is queued without it"
                );
            }
        }
        let retry_count = attr_number::<u32>(&qc, "retryCount", step)?;
        let retry_interval_ms = attr_number::<u64>(&qc, "retryInterval", step)?;
        let priority = attr_number::<i16>(&qc, "priority", step)?;
        let more = more_settings(&qc, step)?;
        let fail_when_exhausted = match qc.attr("onFailure").map(str::trim) {
            None | Some("") | Some("queueToOperator") => false,
            Some("continue") => true,
            Some(other) => {
                return Err(Failure::data(
                    step,
                    format!(
                        "context/queueContext/@onFailure `{other}` is neither `continue` nor `queueToOperator`"
                    ),
                ))
            }
        };
        let id = if txn.mode == RunMode::Plan {
            PLANNED_ID.to_string()
        } else {
            let Some(sink) = &self.jobs else {
                return Err(Failure {
                    code: ProviderError::E_FAIL,
                    message: format!(
                        "step queues `{target}`, but this engine has no job queue to put it in"
                    ),
                    step: step.to_string(),
                    sources: Vec::new(),
                });
            };
            let mut data = ed;
            data.name = "data".into();
            let call = QueuedCall {
                txn_id: txn.id.clone(),
                step: step.to_string(),
                target: target.clone(),
                data,
                suspended: spec.suspended,
                retry_count,
                retry_interval_ms,
                fail_when_exhausted,
                priority,
                retry_type: more.retry_type,
                retry_stop_code: more.retry_stop_code,
                retain_successful_responses: more.retain_successful_responses,
                parents: more.parents,
            };
            let id = sink.enqueue(call).await.map_err(|e| Failure {
                code: ProviderError::E_FAIL,
                message: format!("queueing `{target}` failed: {e}"),
                step: step.to_string(),
                sources: Vec::new(),
            })?;
            tracing::info!(step, job = %id, target = %target, suspended = spec.suspended, "queued a job");
            id
        };
        let mut context = lock(&txn.context);
        let slot = context.children.iter_mut().find_map(|n| match n {
            Node::Element(e) if e.local_name() == "queueContext" => Some(e),
            _ => None,
        });
        match slot {
            Some(e) => e.set_attr("queueId", id),
            None => {
                let mut e = Element::new("queueContext");
                e.set_attr("queueId", id);
                context.push(e);
            }
        }
        Ok(())
    }

    /// After a transaction ended: its held jobs are released (committed) or removed.
    pub(super) async fn settle_jobs(&self, txn: &Txn, committed: bool) {
        let Some(sink) = self.jobs.as_ref().filter(|_| txn.mode == RunMode::Execute) else {
            return;
        };
        if let Err(e) = sink.settle(&txn.id, committed).await {
            tracing::error!(
                error = %e,
                committed,
                "settling the jobs this transaction queued failed; the next recovery (provisio recover, worker --drain, serve) settles them"
            );
        }
    }
}
