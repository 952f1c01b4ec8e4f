//! The MPS `queue` step's jobs: [`StoreJobs`] puts them into the store's job queue (the
//! one `provisio serve` and `provisio worker --drain` run), as a JSON request calling the
//! queued procedure with the step's executeData as its data; suspended ones are held for
//! their transaction. [`settle_held`] settles held jobs after a crash, from the journal.

use super::{now_ms, Payload};
use provisio_engine::data::json::to_json;
use provisio_engine::data::Element;
use provisio_engine::queue::{JobOptions, NewJob, Queue};
use provisio_engine::txn::index;
use provisio_engine::{JobSink, QueuedCall, SealKey, Store, TxnId, TxnState};
use std::sync::{Arc, Mutex};

/// A job a `queue` step queued (for `provisio run` to report).
#[derive(Debug, Clone)]
pub struct QueuedJob {
    /// The job id (`context/queueContext/@queueId`).
    pub id: String,
    /// `Namespace/Procedure`.
    pub target: String,
    /// The submitting transaction.
    pub txn: String,
    /// Held for the transaction (`queueSuspended="1"`).
    pub suspended: bool,
}

/// Puts `queue` steps' jobs into the store's queue.
pub struct StoreJobs {
    queue: Arc<Queue>,
    seal: Option<SealKey>,
    subject: String,
    /// Attempts when the request's `queueContext` sets no `retryCount`.
    default_attempts: u32,
    /// Whether a succeeded job keeps its response when its request does not say
    /// (`serve.retain_successful_responses`; MPS `retainSuccessfulResponses`).
    retain_successful_responses: bool,
    /// The submitter's `securityContext` (the daemon's: its token's identity), given to
    /// every job it queues.
    security_context: Option<Element>,
    queued: Mutex<Vec<QueuedJob>>,
    /// The transaction starts with this run (see [`StoreJobs::first_run`]).
    first_run: bool,
    /// A held (`queueSuspended`) job's submission was tried in this run.
    held_tried: std::sync::atomic::AtomicBool,
}

impl StoreJobs {
    /// Jobs queued as `subject` (who the job runs as), sealed with `seal`.
    pub fn new(
        queue: Arc<Queue>,
        seal: Option<SealKey>,
        subject: &str,
        default_attempts: u32,
    ) -> StoreJobs {
        StoreJobs {
            queue,
            seal,
            subject: subject.to_string(),
            default_attempts,
            retain_successful_responses: true,
            security_context: None,
            queued: Mutex::new(Vec::new()),
            first_run: false,
            held_tried: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether a succeeded job keeps its response when its `queueContext` does not say
    /// (the configuration's `serve.retain_successful_responses`; `true` by default).
    pub fn retaining_successful_responses(mut self, retain: bool) -> StoreJobs {
        self.retain_successful_responses = retain;
        self
    }

    /// The transaction starts with this run (its job was submitted and claimed with the
    /// request): no earlier run of it held jobs, so when no `queue` step of this run tried
    /// to hold one, its end has none to release or remove and asks the queue nothing (on
    /// PostgreSQL that was a round trip to the database a request).
    pub fn first_run(mut self, first_run: bool) -> StoreJobs {
        self.first_run = first_run;
        self
    }

    /// Gives every queued job this `securityContext` (the submitting request's: a job runs
    /// with the identity of the request that queued it).
    pub fn with_security_context(mut self, security_context: Option<Element>) -> StoreJobs {
        self.security_context = security_context;
        self
    }

    /// The jobs queued so far (and what became of their transactions' holds is in the
    /// queue).
    pub fn queued(&self) -> Vec<QueuedJob> {
        self.queued.lock().map(|q| q.clone()).unwrap_or_default()
    }
}

/// The request a queued call runs: `{"call": "Namespace/Procedure", "data": …}`, with the
/// submitter's `securityContext` as its context when there is one.
fn request_body(call: &QueuedCall, security: Option<&Element>) -> Result<String, String> {
    let data = match to_json(&call.data) {
        serde_json::Value::Null => serde_json::json!({}),
        v @ serde_json::Value::Object(_) => v,
        _ => {
            return Err(
                "its executeData is a bare value; a queued call's data needs named fields".into(),
            )
        }
    };
    let mut body = serde_json::json!({"call": call.target.to_string(), "data": data});
    if let (Some(sc), Some(o)) = (security, body.as_object_mut()) {
        let mut context = Element::new("context");
        context.push(sc.clone());
        o.insert("context".into(), to_json(&context));
    }
    Ok(body.to_string())
}

impl JobSink for StoreJobs {
    fn enqueue(&self, call: QueuedCall) -> futures::future::BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let body = request_body(&call, self.security_context.as_ref())?;
            let payload =
                serde_json::to_vec(&Payload::text(provisio_engine::model::Format::Json, body))
                    .map_err(|e| e.to_string())?;
            let payload = match &self.seal {
                Some(k) => k.seal(&payload),
                None => String::from_utf8_lossy(&payload).into_owned(),
            };
            let txn = call.txn_id.as_str().to_string();
            if call.suspended {
                // Before the submission: one whose answer is lost may still have held it.
                self.held_tried
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            let submitted = self
                .queue
                .submit_with(
                    NewJob {
                        payload,
                        // MPS: a lower priority runs sooner; the queue runs higher first.
                        priority: call.priority.map_or(0, |p| p.saturating_neg()),
                        not_before_ms: 0,
                        serial_key: None,
                        // Queued again by a resumed transaction: the same job.
                        idempotency_key: Some(format!("queue-step:{txn}:{}", call.step)),
                        subject: self.subject.clone(),
                        target: call.target.to_string(),
                        max_attempts: call
                            .retry_count
                            .map_or(self.default_attempts, |r| r.saturating_add(1)),
                    },
                    JobOptions {
                        held_by: call.suspended.then(|| txn.clone()),
                        retry_interval_ms: call.retry_interval_ms,
                        fail_when_exhausted: call.fail_when_exhausted,
                        retry_type: call.retry_type,
                        retry_stop_code: call.retry_stop_code,
                        // The request's own setting, else the daemon's default.
                        drop_success_response: !call
                            .retain_successful_responses
                            .unwrap_or(self.retain_successful_responses),
                        parents: call.parents.clone(),
                    },
                    now_ms(),
                )
                .await
                .map_err(|e| e.to_string())?;
            let id = submitted.job.id.clone();
            if let Ok(mut q) = self.queued.lock() {
                q.push(QueuedJob {
                    id: id.clone(),
                    target: call.target.to_string(),
                    txn,
                    suspended: call.suspended,
                });
            }
            Ok(id)
        })
    }

    fn settle<'a>(
        &'a self,
        txn: &'a TxnId,
        committed: bool,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if self.first_run && !self.held_tried.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(());
            }
            let r = if committed {
                self.queue.release_held(txn.as_str(), now_ms()).await
            } else {
                self.queue.discard_held(txn.as_str()).await
            };
            r.map(|_| ()).map_err(|e| e.to_string())
        })
    }
}

/// After recovery (no transaction of this data directory is running): releases the jobs
/// held for transactions that committed and removes those of transactions that rolled
/// back (or never reached the journal). Returns (released, removed).
pub async fn settle_held(queue: &Queue, store: &Arc<dyn Store>) -> anyhow::Result<(usize, usize)> {
    let settled = queue
        .settle_held(
            |txn| {
                index::summary(store.as_ref(), txn).map(|s| match s.map(|s| s.state) {
                    Some(TxnState::Committed) => Some(true),
                    Some(TxnState::RolledBack) | Some(TxnState::RollbackFailed) | None => {
                        Some(false)
                    }
                    Some(_) => None,
                })
            },
            now_ms(),
        )
        .await?;
    if settled != (0, 0) {
        tracing::warn!(
            released = settled.0,
            removed = settled.1,
            "settled jobs held for transactions a crash interrupted"
        );
    }
    Ok(settled)
}
