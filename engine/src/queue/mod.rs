//! The persistent job queue behind `provisio serve`: jobs live in [`Space::Queue`] of the
//! store, so they survive restarts and `kill -9`.
//!
//! A job carries an opaque payload (the daemon's sealed request), a priority, a not-before
//! time, an optional serialization key (jobs with the same key run one at a time, in
//! submission order), an optional idempotency key (per subject: submitting it again
//! returns the same job), and a maximum number of attempts. A worker claims a job with a
//! lease it renews by heartbeats; a lease that runs out (a worker that died) gives the job
//! back. A transient failure puts the job back after an exponential backoff with jitter;
//! after its last attempt it is `dead` until an operator requeues or discards it; a dead
//! job keeps its place at the head of its serialization key's line meanwhile.
//!
//! Every attempt gets its transaction id at claim time, written durably before the claim
//! returns: a job taken back after a crash still names the transaction it started, so its
//! runner finds what recovery made of it instead of starting a second one.
//!
//! Keys (big-endian numbers sort numerically; every index key ends in a sequence number
//! and its value is the job id):
//! - `j` ‖ id — the job record (JSON);
//! - `r` ‖ inverted priority ‖ seq — ready to run, best first;
//! - `s` ‖ not-before ms ‖ seq — waiting for its time (moved to `r` when due);
//! - `k` ‖ serialization key ‖ `\0` ‖ position — every unfinished job of a key, in order;
//!   only the first is ever in `r`, `s` or running;
//! - `l` ‖ lease end ms ‖ seq — running jobs by the end of their lease;
//! - `i` ‖ subject ‖ `\0` ‖ idempotency key — the job of a key;
//! - `a` ‖ seq, `x` ‖ state ‖ `\0` ‖ seq, `p` ‖ target ‖ `\0` ‖ seq, `w` ‖ subject ‖ `\0` ‖
//!   seq — listings, newest first;
//! - `f` ‖ finished ms ‖ seq — jobs in a final state, for retention ([`Queue::prune`]);
//! - `h` ‖ transaction id ‖ `\0` ‖ seq — a job held for the transaction that queued it
//!   (an MPS `queue` step with `queueSuspended="1"`): released when that transaction
//!   commits, removed when it rolls back ([`Queue::release_held`], [`Queue::discard_held`],
//!   and [`Queue::settle_held`] after a crash);
//! - `d` ‖ parent job id ‖ `\0` ‖ seq — a job waiting for that parent (MPS
//!   `queueContext/parentQueue`): state `held`, in no line, until every parent succeeded
//!   (then queued, in the parent's finishing write) or one of them failed, was cancelled or
//!   removed (then `dead`, naming the parent); a `dead` parent keeps it waiting, since an
//!   operator may requeue it ([`Queue::submit_with`], [`JobOptions::parents`]);
//! - `n` — the next sequence number; `c` — how many jobs are in each state, and totals
//!   ([`Tally`]).
//!
//! Claiming, finishing and submitting read and write a handful of keys each: their cost
//! follows the logarithm of the backlog (the store's ordered keys), never its size.

use crate::store::{prefix_end, Batch, KeyRange, KeyValue, Space, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

mod codec;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "postgres")]
pub use postgres::CANCEL_CHANNEL;
#[cfg(test)]
mod tests;

const JOB: u8 = b'j';
const READY: u8 = b'r';
/// Right after [`READY`]: [`Queue::submit_claimed`] reads both with one range.
const SCHEDULED: u8 = b's';
const SERIAL: u8 = b'k';
const LEASE: u8 = b'l';
const IDEMPOTENCY: u8 = b'i';
const ALL: u8 = b'a';
const BY_STATE: u8 = b'x';
const BY_TARGET: u8 = b'p';
const BY_SUBJECT: u8 = b'w';
const FINISHED: u8 = b'f';
const HELD: u8 = b'h';
const DEPENDENT: u8 = b'd';
const COUNTS: &[u8] = b"c";
const NEXT_SEQ: &[u8] = b"n";

/// Scheduled jobs moved to the ready index per claim (the rest on the next claims). A few
/// more than the one claimed, so that a backlog that comes due at once (a million jobs
/// scheduled for the same moment) is promoted a few jobs a claim along its drain, at the
/// same cost per job whatever its size, instead of in bursts that make the first claims
/// of a big backlog slower than those of a small one.
const PROMOTE_PER_CLAIM: usize = 4;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting to run (ready, scheduled for later, or behind an earlier job of its key).
    Queued,
    /// Claimed by a worker.
    Running,
    /// Ran; its transaction committed.
    Succeeded,
    /// Ran; its transaction rolled back (or its rollback failed): the request's answer.
    Failed,
    /// Gave up after its last attempt: an operator may requeue it.
    Dead,
    /// Cancelled before it ran, or stopped and rolled back while running (or a dead job
    /// an operator discarded).
    Cancelled,
    /// Queued by an MPS `queue` step (`queueSuspended="1"`) of a transaction still running:
    /// runs once that transaction commits, removed if it rolls back.
    Held,
}

impl JobState {
    /// The state's name (`queued`, `running`, …).
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
            JobState::Held => "held",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<JobState> {
        ALL_STATES.into_iter().find(|s| s.name() == name)
    }

    /// Whether nothing more happens to the job (unless an operator requeues a dead one).
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running | JobState::Held)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which index holds a job (so it can be taken out again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Slot {
    Ready,
    Scheduled(u64),
    Waiting,
    Leased(u64),
    /// Held for the transaction that queued it (in the `h` index, in no line).
    Held,
    Nowhere,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The job id (UUIDv7), also the id clients know the request by.
    pub id: String,
    /// Submission order.
    pub seq: u64,
    /// Where it is in its life.
    pub state: JobState,
    /// Higher runs first.
    pub priority: i16,
    /// Not run before this time (ms since the epoch).
    pub not_before_ms: u64,
    /// Jobs with the same key run one at a time, in submission order.
    pub serial_key: Option<String>,
    /// Its place among the jobs of its serialization key.
    serial_pos: u64,
    /// The client's idempotency key (scoped by `subject`).
    pub idempotency_key: Option<String>,
    /// Who submitted it.
    pub subject: String,
    /// What it runs (`Namespace/Procedure`), for listings.
    pub target: String,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed before the job is dead.
    pub max_attempts: u32,
    /// The transaction of the attempt in progress (or cut short by a crash).
    pub txn: Option<String>,
    /// The transactions of every attempt, in order.
    pub txns: Vec<String>,
    /// When it was submitted (ms since the epoch).
    pub submitted_ms: u64,
    /// When its last attempt started.
    pub started_ms: Option<u64>,
    /// When it reached a final state.
    pub finished_ms: Option<u64>,
    /// The last error (of an attempt, or why it is dead).
    pub error: Option<String>,
    /// How its transaction ended (`committed`, `rolled_back`, …).
    pub outcome: Option<String>,
    /// A cancellation was asked for while it ran.
    pub cancel_requested: bool,
    /// What to run (opaque to the queue); dropped once the job is final.
    pub payload: Option<String>,
    /// What its runner kept of the result (opaque to the queue).
    pub result: Option<String>,
    /// The transaction it is held for (released when it commits, removed when it rolls
    /// back); `None`: not held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
    /// A fixed wait between attempts (ms) instead of the runner's backoff (MPS
    /// `queueContext/@retryInterval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_interval_ms: Option<u64>,
    /// After its last attempt the job is `failed` (MPS `onFailure="continue"`) instead of
    /// `dead` for an operator (`queueToOperator`, the default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_when_exhausted: bool,
    /// How the wait between attempts grows (MPS `queueContext/@retryType`); `None`: the
    /// fixed `retry_interval_ms` when there is one, else the runner's backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_type: Option<RetryType>,
    /// An error code (HRESULT) after which the job is tried at most once more (MPS
    /// `queueContext/@retryStopOnFailure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_stop_code: Option<u32>,
    /// Its response is dropped once it succeeded (MPS `retainSuccessfulResponses="0"`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_success_response: bool,
    /// The jobs it runs after (MPS `queueContext/parentQueue/@queueId`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// Those parents it still waits for (it is `held` meanwhile).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
    /// Some job named it as a parent (PostgreSQL: only then does its end look for jobs
    /// waiting for it, so that other jobs' ends cost no extra statement).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaited: bool,
    slot: Slot,
}

/// How the wait between a job's attempts grows (MPS `queueContext/@retryType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryType {
    /// The same wait every time: the retry interval (or the runner's first backoff step).
    Fixed,
    /// The interval times the number of failed attempts (1×, 2×, 3×…).
    Linear,
    /// The interval doubled after each failed attempt (1×, 2×, 4×…).
    Exponential,
}

impl RetryType {
    /// Every value, as MPS requests spell them.
    pub const NAMES: [&'static str; 3] = ["fixed", "linear", "exponential"];

    /// The type named `name` (case-insensitive).
    pub fn parse(name: &str) -> Option<RetryType> {
        match name.trim().to_ascii_lowercase().as_str() {
            "fixed" => Some(RetryType::Fixed),
            "linear" => Some(RetryType::Linear),
            "exponential" => Some(RetryType::Exponential),
            _ => None,
        }
    }
}

/// The wait before the next attempt of `job` after `job.attempts` failed ones (ms): its
/// `retry_type` applied to its `retry_interval_ms` (or to the runner's `backoff` base
/// without one); a growing wait never exceeds the longer of `backoff.max` and the
/// interval. Neither set: the runner's backoff with jitter.
pub(crate) fn retry_wait(job: &Job, backoff: Backoff, random: u64) -> u64 {
    let failed = u64::from(job.attempts.max(1));
    let interval = job.retry_interval_ms;
    let base = interval.unwrap_or(backoff.base.as_millis() as u64);
    let cap = (backoff.max.as_millis() as u64).max(interval.unwrap_or(0));
    match (job.retry_type, interval) {
        (None, None) | (Some(RetryType::Exponential), None) => {
            backoff.delay(job.attempts, random).as_millis() as u64
        }
        (None, Some(ms)) | (Some(RetryType::Fixed), Some(ms)) => ms,
        (Some(RetryType::Fixed), None) => base,
        (Some(RetryType::Linear), _) => base.saturating_mul(failed).min(cap),
        (Some(RetryType::Exponential), Some(ms)) => {
            ms.saturating_mul(1u64 << (failed - 1).min(30)).min(cap)
        }
    }
}

/// Refuses to settle `job` for the runner of `attempt` (`None`: whoever runs it) when the
/// job was claimed again since: that runner stalled past its lease, and the job is another
/// claim's now.
fn current_attempt(job: &Job, attempt: Option<u32>, what: &str) -> Result<(), QueueError> {
    match attempt {
        Some(a) => stale_attempt(&job.id, job.state, a, job.attempts, what),
        None => Ok(()),
    }
}

fn stale_attempt(
    id: &str,
    state: JobState,
    attempt: u32,
    current: u32,
    what: &str,
) -> Result<(), QueueError> {
    if attempt == current {
        return Ok(());
    }
    Err(QueueError::WrongState {
        id: id.to_string(),
        state,
        what: format!(
            "the claim of attempt {attempt} is stale (its lease ran out, and the job was \
             taken back and claimed again as attempt {current}): only the current claim's \
             runner can have it {what}"
        ),
    })
}

/// A failed attempt with `code` under MPS `retryStopOnFailure`: the job is tried at most
/// once more (MPS: "the job is retried only once instead of retryCount times").
pub(crate) fn apply_stop_code(job: &mut Job, code: Option<u32>) {
    if code.is_some() && code == job.retry_stop_code {
        job.max_attempts = job.max_attempts.min(job.attempts.saturating_add(1));
    }
}

/// A succeeded job under MPS `retainSuccessfulResponses="0"` keeps no response.
pub(crate) fn drop_response_if_asked(job: &mut Job) {
    if job.drop_success_response && job.state == JobState::Succeeded {
        job.result = None;
    }
}

/// What a parent job's state means for a job that names it (MPS `parentQueue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParentIs {
    /// Succeeded: nothing to wait for.
    Done,
    /// Queued, held, running, or dead (an operator may requeue it): wait.
    Pending,
    /// It will never succeed: why (`failed`, `was cancelled`, `is no longer in the queue`).
    Gone(String),
}

pub(crate) fn parent_is(parent: Option<&Job>) -> ParentIs {
    match parent.map(|p| p.state) {
        None => ParentIs::Gone("is no longer in the queue".into()),
        Some(JobState::Succeeded) => ParentIs::Done,
        Some(JobState::Failed) => ParentIs::Gone("failed".into()),
        Some(JobState::Cancelled) => ParentIs::Gone("was cancelled".into()),
        Some(_) => ParentIs::Pending,
    }
}

/// The error a job waiting for a parent ends with when the parent never succeeds.
pub(crate) fn parent_gone_message(parent: &str, why: &str) -> String {
    format!(
        "parent job `{parent}` {why}: this job waited for it (queueContext/parentQueue) and did not run; requeue it to run it without its parent"
    )
}

/// Parent ids in order, without repeats.
fn dedup(ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    out
}

/// What [`Queue::submit_with`] adds to a [`NewJob`] (the MPS `queue` step's settings).
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    /// Hold the job for this transaction: it runs only once [`Queue::release_held`] (or
    /// [`Queue::settle_held`]) finds the transaction committed.
    pub held_by: Option<String>,
    /// A fixed wait between attempts (ms) instead of the runner's backoff.
    pub retry_interval_ms: Option<u64>,
    /// After the last attempt: `failed` instead of `dead`.
    pub fail_when_exhausted: bool,
    /// How the wait between attempts grows (MPS `retryType`).
    pub retry_type: Option<RetryType>,
    /// After a failure with this code, at most one more attempt (MPS `retryStopOnFailure`).
    pub retry_stop_code: Option<u32>,
    /// Drop the response once the job succeeded (MPS `retainSuccessfulResponses="0"`).
    pub drop_success_response: bool,
    /// Jobs (ids) that must succeed before this one runs (MPS `parentQueue`): each must be
    /// in the queue ([`QueueError::UnknownParent`]) and must not have failed or been
    /// cancelled ([`QueueError::ParentGone`]). A job's parents exist before it does, so
    /// they can form no cycle.
    pub parents: Vec<String>,
}

/// A job to submit.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// What to run (opaque; seal it when it may hold secrets).
    pub payload: String,
    /// Higher runs first (default 0).
    pub priority: i16,
    /// Not run before this time (ms since the epoch; 0: now).
    pub not_before_ms: u64,
    /// Jobs with the same key run one at a time, in submission order.
    pub serial_key: Option<String>,
    /// Submitting the same key again (by the same subject) returns the same job.
    pub idempotency_key: Option<String>,
    /// Who submits it.
    pub subject: String,
    /// What it runs (`Namespace/Procedure`), for listings.
    pub target: String,
    /// Attempts allowed (at least 1).
    pub max_attempts: u32,
}

/// What a submission did.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The job (the existing one for a known idempotency key).
    pub job: Job,
    /// `false`: the idempotency key was known; nothing new was queued.
    pub created: bool,
}

/// How a job ended, for [`Queue::finish`].
#[derive(Debug, Clone)]
pub struct Finish {
    /// `Succeeded`, `Failed` or `Cancelled`.
    pub state: JobState,
    /// How its transaction ended.
    pub outcome: Option<String>,
    /// What to keep of the result.
    pub result: Option<String>,
    /// The error, if any.
    pub error: Option<String>,
}

/// What [`Queue::cancel`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    /// It had not started and never will.
    Dequeued(Job),
    /// It is running: its runner must stop it (the request is recorded in the job).
    Running(Job),
    /// It was already over.
    AlreadyFinal(Job),
}

/// Exponential backoff with jitter between attempts.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The wait after the first failed attempt (doubled after each further one).
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait before attempt `failed + 1` after `failed` failed attempts: `base ·
    /// 2^(failed-1)`, at most `max`, then a random point in its upper half (so jobs that
    /// failed together do not come back together).
    pub fn delay(&self, failed: u32, random: u64) -> Duration {
        let exp = failed.saturating_sub(1).min(30);
        let full = self
            .base
            .saturating_mul(1u32 << exp)
            .min(self.max)
            .as_millis() as u64;
        let half = full / 2;
        Duration::from_millis(half + random % (full - half + 1))
    }
}

/// A filter for [`Queue::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this `Namespace/Procedure`.
    pub target: Option<String>,
    /// Only jobs whose target is in this namespace.
    pub namespace: Option<String>,
    /// Only jobs of this subject.
    pub subject: Option<String>,
    /// Only jobs submitted at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Only jobs submitted before this time (ms since the epoch).
    pub until_ms: Option<u64>,
}

/// One page of a listing, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    /// The jobs.
    pub jobs: Vec<Job>,
    /// Pass as `before` for the next page; `None`: this was the last.
    pub next: Option<u64>,
}

/// Queue failures.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A job record does not read.
    #[error("queue record `{key}` cannot be read: {message}\n  hint: the store is damaged or was written by a newer provisio")]
    Decode {
        /// Its key.
        key: String,
        /// Why.
        message: String,
    },
    /// No such job.
    #[error("no job `{0}`\n  hint: list jobs with `provisio jobs` (or GET /v1/requests)")]
    NotFound(String),
    /// The operation does not apply to the job's state.
    #[error("job `{id}` is {state}: {what}")]
    WrongState {
        /// Job id.
        id: String,
        /// Its state.
        state: JobState,
        /// What was refused, and what to do.
        what: String,
    },
    /// A parent job (MPS `queueContext/parentQueue/@queueId`) that is not in the queue.
    #[error("context/queueContext/parentQueue/@queueId `{0}` names no job in the queue\n  hint: give the queueId of a job queued earlier (a `queue` step writes it to context/queueContext/@queueId; `provisio jobs` lists them)")]
    UnknownParent(String),
    /// A parent job that will never succeed: a job waiting for it would never run.
    #[error("context/queueContext/parentQueue/@queueId `{id}`: that job {why}, so a job waiting for it would never run\n  hint: queue the parent's work again and name that job, or leave it out of parentQueue")]
    ParentGone {
        /// The parent.
        id: String,
        /// What became of it.
        why: String,
    },
    /// A field the keys cannot hold.
    #[error("{field} must not contain a NUL character")]
    BadField {
        /// The field.
        field: &'static str,
    },
    /// [`Queue::submit_claimed`] on PostgreSQL: the job was queued and claimed, and the
    /// database was lost meanwhile (the claim went with the node's session). The job is in
    /// the queue (unless the database lost its commit too): taken back with the node's
    /// other jobs once the database is back and run by whichever node claims it; the
    /// caller must not run it, and must not queue it again.
    #[error("job `{id}` was queued, but the connection to the PostgreSQL store was lost as it was claimed: it runs once the database is back")]
    ClaimLost {
        /// The job's id.
        id: String,
    },
}

/// Why [`Queue::settle_held`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum SettleError<E> {
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Reading a transaction's outcome failed.
    #[error("reading the outcome of a transaction that queued jobs: {0}")]
    Outcome(E),
}

/// The queue over a store. Changes are made one at a time (a mutex): each reads and writes
/// a handful of keys.
pub struct Queue {
    store: Arc<dyn Store>,
    inner: tokio::sync::Mutex<u64>,
    /// Jobs by state and totals, kept with every change (stored under `c`).
    tally: std::sync::Mutex<Tally>,
    /// The records of running jobs as last written, so that a heartbeat, a finish or a
    /// retry neither reads nor decodes them again. Changed only under `inner`: every
    /// commit drops the jobs its batch writes, and a claim (or heartbeat) puts back the
    /// one it wrote once the write is applied.
    running: std::sync::Mutex<std::collections::HashMap<String, Job>>,
    /// On a PostgreSQL store, the attempt number of each job this process claimed and has
    /// not settled yet: a settle naming an older attempt (a runner that stalled while its
    /// job was taken back and claimed again here) is refused; the store refuses one from a
    /// node that no longer holds the job.
    #[cfg(feature = "postgres")]
    pg_attempts: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// On a PostgreSQL store, the jobs running on this node a cancel made through this
    /// process asked to stop (see [`Queue::cancel_requested`]); forgotten with their
    /// attempt.
    #[cfg(feature = "postgres")]
    pg_cancelled: std::sync::Mutex<std::collections::HashSet<String>>,
    /// On a PostgreSQL store, the queue's own tables (shared by every process on the
    /// database): every public method dispatches there first.
    #[cfg(feature = "postgres")]
    pg: Option<postgres::PgQueue>,
    /// Some job waits, or may wait, for another (MPS `parentQueue`): set when one starts
    /// waiting, or at open when the store holds such an entry; until then a job's end does
    /// not look for jobs waiting for it.
    dependents: std::sync::atomic::AtomicBool,
}

/// How many states there are.
pub const STATES: usize = 7;

/// Every state, in the order of [`Queue::counts`].
pub const ALL_STATES: [JobState; STATES] = [
    JobState::Queued,
    JobState::Running,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Dead,
    JobState::Cancelled,
    JobState::Held,
];

/// The queue's counters (the `c` key): jobs in each state now, and totals since the queue
/// was created that retention never lowers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Jobs in each state now, in [`ALL_STATES`] order.
    pub now: [u64; STATES],
    /// How many times a job entered each state, in [`ALL_STATES`] order (a requeued job
    /// that dies again counts twice as dead); pruning lowers `now`, never this.
    pub entered: [u64; STATES],
    /// Jobs ever submitted.
    pub submitted: u64,
}

fn state_index(state: JobState) -> usize {
    ALL_STATES.iter().position(|s| *s == state).unwrap_or(0)
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![tag];
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

fn with_seq(mut prefix: Vec<u8>, seq: u64) -> Vec<u8> {
    prefix.extend_from_slice(&seq.to_be_bytes());
    prefix
}

fn job_key(id: &str) -> Vec<u8> {
    key(JOB, &[id.as_bytes()])
}

fn ready_key(priority: i16, seq: u64) -> Vec<u8> {
    // Higher priority first: the bytes of `i16::MAX - priority` as an unsigned number.
    let inverted = (i32::from(i16::MAX) - i32::from(priority)) as u16;
    let mut k = vec![READY];
    k.extend_from_slice(&inverted.to_be_bytes());
    with_seq(k, seq)
}

fn scheduled_key(at: u64, seq: u64) -> Vec<u8> {
    let mut k = vec![SCHEDULED];
    k.extend_from_slice(&at.to_be_bytes());
    with_seq(k, seq)
}

fn lease_key(until: u64, seq: u64) -> Vec<u8> {
    let mut k = vec![LEASE];
    k.extend_from_slice(&until.to_be_bytes());
    with_seq(k, seq)
}

fn finished_key(at: u64, seq: u64) -> Vec<u8> {
    let mut k = vec![FINISHED];
    k.extend_from_slice(&at.to_be_bytes());
    with_seq(k, seq)
}

/// An `h` key and its job (`None`: the job is gone).
type HeldEntry = (Vec<u8>, Option<Job>);

fn held_prefix(txn: &str) -> Vec<u8> {
    let mut k = key(HELD, &[txn.as_bytes()]);
    k.push(0);
    k
}

fn held_key(txn: &str, seq: u64) -> Vec<u8> {
    with_seq(held_prefix(txn), seq)
}

fn dependents_prefix(parent: &str) -> Vec<u8> {
    let mut k = key(DEPENDENT, &[parent.as_bytes()]);
    k.push(0);
    k
}

fn serial_prefix(serial: &str) -> Vec<u8> {
    let mut k = key(SERIAL, &[serial.as_bytes()]);
    k.push(0);
    k
}

fn idempotency_index(subject: &str, idem: &str) -> Vec<u8> {
    key(IDEMPOTENCY, &[subject.as_bytes(), idem.as_bytes()])
}

fn field_prefix(tag: u8, value: &str) -> Vec<u8> {
    let mut k = key(tag, &[value.as_bytes()]);
    k.push(0);
    k
}

fn state_key(state: JobState, seq: u64) -> Vec<u8> {
    with_seq(field_prefix(BY_STATE, state.name()), seq)
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<Job, QueueError> {
    codec::decode_job(bytes).map_err(|message| QueueError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        message,
    })
}

fn encode(job: &Job) -> Vec<u8> {
    codec::encode_job(job)
}

fn no_nul(value: &str, field: &'static str) -> Result<(), QueueError> {
    if value.contains('\0') {
        Err(QueueError::BadField { field })
    } else {
        Ok(())
    }
}

impl Queue {
    /// The queue of `store` (reads one key).
    pub fn open(store: Arc<dyn Store>) -> Result<Queue, QueueError> {
        #[cfg(feature = "postgres")]
        if store.postgres().is_some() {
            return Ok(Queue {
                pg: Some(postgres::PgQueue::new(store.clone())),
                store,
                inner: tokio::sync::Mutex::new(0),
                tally: std::sync::Mutex::new(Tally::default()),
                running: Default::default(),
                pg_attempts: Default::default(),
                pg_cancelled: Default::default(),
                dependents: std::sync::atomic::AtomicBool::new(true),
            });
        }
        let next = match store.get(Space::Queue, NEXT_SEQ)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v.try_into().unwrap_or([0; 8])),
            _ => 1,
        };
        let stored = store.get(Space::Queue, COUNTS)?;
        let tally = match stored.as_deref().and_then(codec::decode_tally) {
            Some(t) => t,
            None => {
                // Never counted, or counted by an earlier version (an array of six states,
                // no totals): count the state index once; the totals start from what is
                // kept.
                let mut t = Tally::default();
                for (i, state) in ALL_STATES.iter().enumerate() {
                    t.now[i] = store
                        .scan(Space::Queue, &field_prefix(BY_STATE, state.name()))?
                        .len() as u64;
                }
                t.entered = t.now;
                t.submitted = t.now.iter().sum();
                t
            }
        };
        let dependents = store
            .scan_range(
                Space::Queue,
                KeyRange::new(&[DEPENDENT], Some(&[DEPENDENT + 1])),
                1,
                false,
            )?
            .is_empty();
        Ok(Queue {
            store,
            inner: tokio::sync::Mutex::new(next),
            tally: std::sync::Mutex::new(tally),
            running: Default::default(),
            #[cfg(feature = "postgres")]
            pg: None,
            #[cfg(feature = "postgres")]
            pg_attempts: Default::default(),
            #[cfg(feature = "postgres")]
            pg_cancelled: Default::default(),
            dependents: std::sync::atomic::AtomicBool::new(!dependents),
        })
    }

    /// How many jobs are in each state, in [`ALL_STATES`] order (kept with every change:
    /// no scan).
    pub fn counts(&self) -> [u64; STATES] {
        self.tally().now
    }

    /// The counts and the totals since the queue was created (kept in the store: they
    /// survive restarts).
    pub fn tally(&self) -> Tally {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return pg.tally().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "reading the job counts");
                Tally::default()
            });
        }
        *self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, from: Option<JobState>, to: Option<JobState>) {
        let mut c = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = from {
            c.now[state_index(f)] = c.now[state_index(f)].saturating_sub(1);
        }
        if let Some(t) = to {
            c.now[state_index(t)] += 1;
            c.entered[state_index(t)] += 1;
            if from.is_none() {
                c.submitted += 1;
            }
        }
    }

    /// Writes a batch, with the counts as they now are (called under `inner`). The
    /// running jobs it writes leave the in-memory copies first (a failed write leaves
    /// them to be read from the store).
    async fn commit(&self, mut batch: Batch, durable: bool) -> Result<(), QueueError> {
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if !running.is_empty() {
                for (_, k, _) in &batch.writes {
                    if let Some((&JOB, id)) = k.split_first() {
                        if let Ok(id) = std::str::from_utf8(id) {
                            running.remove(id);
                        }
                    }
                }
            }
        }
        let tally = self.tally();
        batch.put(Space::Queue, COUNTS.to_vec(), codec::encode_tally(&tally));
        self.store.write(batch, durable).await?;
        Ok(())
    }

    /// Keeps the record of a running job just written (called under `inner`, after
    /// [`Queue::commit`] of the batch that wrote it).
    /// Remembers the attempt of a job this process claimed on PostgreSQL.
    #[cfg(feature = "postgres")]
    fn pg_claimed(&self, job: &Job) {
        self.pg_attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job.id.clone(), job.attempts);
    }

    /// On PostgreSQL: refuses a settle by `attempt` when this process claimed the job
    /// again since (another node's claim the store refuses by node).
    #[cfg(feature = "postgres")]
    fn pg_current(&self, id: &str, attempt: Option<u32>, what: &str) -> Result<(), QueueError> {
        let (Some(attempt), Some(now)) = (
            attempt,
            self.pg_attempts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(id)
                .copied(),
        ) else {
            return Ok(());
        };
        stale_attempt(id, JobState::Running, attempt, now, what)
    }

    /// Forgets the claimed attempt of a job settled on PostgreSQL (`settled`), or that of
    /// attempt `attempt` whose settle or heartbeat the database refused: its lease
    /// was lost (another node took the job over, or it is no longer running) or the
    /// database went away (the job is taken back). Its runner stops; a later claim of the
    /// job here records its own attempt. A newer attempt's entry is kept (a settle
    /// without an attempt, when refused, frees nothing: whose entry it is is unknown).
    #[cfg(feature = "postgres")]
    fn pg_settled(&self, id: &str, attempt: Option<u32>, settled: bool) {
        let mut attempts = self.pg_attempts.lock().unwrap_or_else(|e| e.into_inner());
        let forget = match attempt {
            _ if settled => true,
            Some(a) => attempts.get(id) == Some(&a),
            None => false,
        };
        if forget {
            attempts.remove(id);
            self.pg_cancelled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
        }
    }

    /// Whether a cancel asked running job `id` to stop, for its runner here once it can
    /// be stopped (a cancel between its claim and then finds no runner to stop). On sled
    /// from the job's record (kept in memory while it runs: nothing is read). On
    /// PostgreSQL, a cancel made through this process of a job it claimed, remembered
    /// here: no round trip (a read of the row was one a request), as are the cancels
    /// made on other nodes this one heard of ([`Queue::cancel_seen`]) or read at a
    /// heartbeat of the job.
    pub fn cancel_requested(&self, id: &str) -> bool {
        #[cfg(feature = "postgres")]
        if self.pg.is_some() {
            return self
                .pg_cancelled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(id);
        }
        matches!(self.get(id), Ok(Some(j)) if j.cancel_requested && j.state == JobState::Running)
    }

    /// A cancel made on another node sharing the queue asked job `id` to stop (its
    /// `NOTIFY` on `CANCEL_CHANNEL`, a constant of the `postgres` feature): `true` when the
    /// job runs here, and then [`Queue::cancel_requested`] says so from now on (for its
    /// runner, should it not be stoppable yet). `false` on sled (one process: every cancel
    /// is made here).
    pub fn cancel_seen(&self, id: &str) -> bool {
        #[cfg(feature = "postgres")]
        if self.pg.is_some() {
            return self.pg_cancel_here(id);
        }
        let _ = id;
        false
    }

    /// Remembers that a cancel asked job `id`, claimed here, to stop; `false` when it was
    /// not claimed here (or settled since).
    #[cfg(feature = "postgres")]
    fn pg_cancel_here(&self, id: &str) -> bool {
        let attempts = self.pg_attempts.lock().unwrap_or_else(|e| e.into_inner());
        if !attempts.contains_key(id) {
            return false;
        }
        self.pg_cancelled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
        true
    }

    /// The number of attempts claimed on PostgreSQL this process still remembers.
    #[cfg(all(test, feature = "postgres"))]
    pub(crate) fn pg_attempts_kept(&self) -> usize {
        self.pg_attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn keep_running(&self, job: &Job) {
        if job.state == JobState::Running {
            self.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(job.id.clone(), job.clone());
        }
    }

    /// Whether several processes may share this queue (a PostgreSQL store): then a running
    /// job belongs to a process only while its lease lasts, and a process starting must
    /// not take back the jobs of the others (only those whose leases ran out or whose
    /// node stopped beating its heartbeat).
    pub fn is_shared(&self) -> bool {
        #[cfg(feature = "postgres")]
        if self.pg.is_some() {
            return true;
        }
        false
    }

    /// Resolves when another process sharing the queue changed it in a way that may make
    /// a job claimable (PostgreSQL: `LISTEN provisio_jobs`); never on a store only one
    /// process opens (sled), where the daemon wakes its own workers.
    pub async fn changed(&self) {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return pg.changed().await;
        }
        std::future::pending::<()>().await
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<Option<Job>, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return pg.get(id);
        }
        if let Some(job) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(Some(job.clone()));
        }
        let k = job_key(id);
        self.store
            .get(Space::Queue, &k)?
            .map(|v| decode(&k, &v))
            .transpose()
    }

    /// The state of job `id`, `None` for no such job: on PostgreSQL a read of its state
    /// alone, not of its body (the request, up to 64 MiB); on sled, as [`Queue::get`] (a
    /// local read).
    pub fn state_of(&self, id: &str) -> Result<Option<JobState>, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return pg.state_of(id);
        }
        Ok(self.get(id)?.map(|job| job.state))
    }

    fn must_get(&self, id: &str) -> Result<Job, QueueError> {
        self.get(id)?
            .ok_or_else(|| QueueError::NotFound(id.to_string()))
    }

    fn first(&self, prefix: &[u8]) -> Result<Option<KeyValue>, QueueError> {
        let end = prefix_end(prefix);
        Ok(self
            .store
            .scan_range(
                Space::Queue,
                KeyRange::new(prefix, end.as_deref()),
                1,
                false,
            )?
            .into_iter()
            .next())
    }

    /// Takes `job` out of the index its slot names.
    fn unslot(batch: &mut Batch, job: &mut Job) {
        match job.slot {
            Slot::Ready => {
                batch.delete(Space::Queue, ready_key(job.priority, job.seq));
            }
            Slot::Scheduled(at) => {
                batch.delete(Space::Queue, scheduled_key(at, job.seq));
            }
            Slot::Leased(until) => {
                batch.delete(Space::Queue, lease_key(until, job.seq));
            }
            Slot::Held => {
                if let Some(txn) = &job.held_by {
                    batch.delete(Space::Queue, held_key(txn, job.seq));
                }
            }
            Slot::Waiting | Slot::Nowhere => {}
        }
        job.slot = Slot::Nowhere;
    }

    /// Puts a job that may run into the ready or the scheduled index.
    fn slot_runnable(batch: &mut Batch, job: &mut Job, now: u64) {
        if job.not_before_ms > now {
            job.slot = Slot::Scheduled(job.not_before_ms);
            batch.put(
                Space::Queue,
                scheduled_key(job.not_before_ms, job.seq),
                job.id.as_bytes().to_vec(),
            );
        } else {
            job.slot = Slot::Ready;
            batch.put(
                Space::Queue,
                ready_key(job.priority, job.seq),
                job.id.as_bytes().to_vec(),
            );
        }
    }

    fn set_state(&self, batch: &mut Batch, job: &mut Job, state: JobState) {
        if job.state != state {
            self.count(Some(job.state), Some(state));
            batch.delete(Space::Queue, state_key(job.state, job.seq));
            batch.put(
                Space::Queue,
                state_key(state, job.seq),
                job.id.as_bytes().to_vec(),
            );
            job.state = state;
        }
    }

    fn serial_entry(job: &Job) -> Option<Vec<u8>> {
        job.serial_key
            .as_deref()
            .map(|k| with_seq(serial_prefix(k), job.serial_pos))
    }

    /// Takes a job leaving its key's line out of it, and lets the next one of the line run.
    fn leave_line(&self, batch: &mut Batch, job: &Job, now: u64) -> Result<(), QueueError> {
        let (Some(serial), Some(entry)) = (job.serial_key.as_deref(), Self::serial_entry(job))
        else {
            return Ok(());
        };
        batch.delete(Space::Queue, entry.clone());
        let prefix = serial_prefix(serial);
        let end = prefix_end(&prefix);
        let rows = self.store.scan_range(
            Space::Queue,
            KeyRange::new(&prefix, end.as_deref()),
            2,
            false,
        )?;
        let Some((next_key, next_id)) = rows.into_iter().find(|(k, _)| *k != entry) else {
            return Ok(());
        };
        let next_id = String::from_utf8_lossy(&next_id).into_owned();
        let mut next = match self.get(&next_id)? {
            Some(j) => j,
            None => {
                // A line entry without its job (cannot happen through this module).
                batch.delete(Space::Queue, next_key);
                return Ok(());
            }
        };
        if next.slot == Slot::Waiting && next.state == JobState::Queued {
            Self::slot_runnable(batch, &mut next, now);
            batch.put(Space::Queue, job_key(&next.id), encode(&next));
        }
        Ok(())
    }

    /// Whether the job's own entry is the first of its key's line (always, without a key).
    fn heads_line(&self, job: &Job) -> Result<bool, QueueError> {
        match (job.serial_key.as_deref(), Self::serial_entry(job)) {
            (Some(s), Some(entry)) => Ok(self
                .first(&serial_prefix(s))?
                .is_some_and(|(k, _)| k == entry)),
            _ => Ok(true),
        }
    }

    /// Whether the job is first in its key's line (always, without a key).
    fn first_in_line(&self, serial: Option<&str>) -> Result<bool, QueueError> {
        match serial {
            None => Ok(true),
            Some(s) => Ok(self.first(&serial_prefix(s))?.is_none()),
        }
    }

    fn alloc(next: &mut u64, batch: &mut Batch) -> u64 {
        let seq = *next;
        *next += 1;
        batch.put(Space::Queue, NEXT_SEQ.to_vec(), next.to_be_bytes().to_vec());
        seq
    }

    /// Queues a job, durably, unless its idempotency key is known (then the known job).
    pub async fn submit(&self, new: NewJob, now: u64) -> Result<Submitted, QueueError> {
        self.submit_with(new, JobOptions::default(), now).await
    }

    /// [`Queue::submit`] with the settings of an MPS `queue` step: a job held for its
    /// transaction (it never runs before [`Queue::release_held`]), a fixed retry interval,
    /// `failed` rather than `dead` after the last attempt.
    pub async fn submit_with(
        &self,
        new: NewJob,
        options: JobOptions,
        now: u64,
    ) -> Result<Submitted, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return pg.submit_with(new, options, now).await;
        }
        if let Some(t) = &options.held_by {
            no_nul(t, "the holding transaction id")?;
        }
        no_nul(&new.subject, "the subject")?;
        no_nul(&new.target, "the target")?;
        if let Some(k) = &new.serial_key {
            no_nul(k, "the serialization key")?;
        }
        let mut next = self.inner.lock().await;
        if let Some(idem) = &new.idempotency_key {
            if let Some(id) = self
                .store
                .get(Space::Queue, &idempotency_index(&new.subject, idem))?
            {
                let id = String::from_utf8_lossy(&id).into_owned();
                let job = self.must_get(&id)?;
                drop(next);
                // The first submission may still be waiting for its sync.
                self.sync().await?;
                return Ok(Submitted {
                    job,
                    created: false,
                });
            }
        }
        let waiting = self.check_parents(&options.parents)?;
        let mut batch = Batch::new();
        let seq = Self::alloc(&mut next, &mut batch);
        let state = if options.held_by.is_some() || !waiting.is_empty() {
            JobState::Held
        } else {
            JobState::Queued
        };
        let mut job = new_job(new, seq, state, now, &options);
        let id = job.id.clone();
        let idb = id.as_bytes().to_vec();
        if let Some(txn) = &job.held_by {
            // Held: in no line and no runnable index until its transaction commits.
            job.slot = Slot::Held;
            batch.put(Space::Queue, held_key(txn, seq), idb.clone());
        } else if !waiting.is_empty() {
            job.waiting_for = waiting;
            self.wait_for_parents(&mut batch, &mut job);
        } else {
            if self.first_in_line(job.serial_key.as_deref())? {
                Self::slot_runnable(&mut batch, &mut job, now);
            }
            if let Some(entry) = Self::serial_entry(&job) {
                batch.put(Space::Queue, entry, idb.clone());
            }
        }
        if let Some(idem) = &job.idempotency_key {
            batch.put(
                Space::Queue,
                idempotency_index(&job.subject, idem),
                idb.clone(),
            );
        }
        batch.put(Space::Queue, with_seq(vec![ALL], seq), idb.clone());
        batch.put(Space::Queue, state_key(state, seq), idb.clone());
        batch.put(
            Space::Queue,
            with_seq(field_prefix(BY_TARGET, &job.target), seq),
            idb.clone(),
        );
        batch.put(
            Space::Queue,
            with_seq(field_prefix(BY_SUBJECT, &job.subject), seq),
            idb,
        );
        batch.put(Space::Queue, job_key(&id), encode(&job));
        self.count(None, Some(state));
        // Applied under the lock (the next change sees it), made durable after it: a claim
        // of this job syncs it too, before its transaction can start.
        self.commit(batch, false).await?;
        drop(next);
        self.sync().await?;
        Ok(Submitted { job, created: true })
    }

    /// Queues a job and claims it for the caller in the same write, when a worker claiming
    /// now would take this very job: it is due, first in its serialization key's line, and
    /// no other job is ready or due (so no priority or submission order is overtaken).
    /// `Err` (nothing written; the job given back): it would not be, or it carries an
    /// idempotency key (those go through [`Queue::submit`], which answers a known key with
    /// its job).
    ///
    /// The write is **not synced** of its own: it comes before every journal write of the
    /// transaction it names, and the store makes a write durable with every earlier one
    /// ([`Store::write`]), so the job and its transaction id are on disk before the
    /// transaction's first durable record — the guarantee [`Queue::claim`] syncs for. A
    /// caller that answers anything before the transaction's end (a time-out) calls
    /// [`Queue::sync`] first. Lost in a crash before that first durable record, the job
    /// and its transaction left no trace, and nobody was told of them.
    pub async fn submit_claimed(
        &self,
        new: NewJob,
        now: u64,
        lease: Duration,
    ) -> Result<Result<Job, NewJob>, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            let claimed = pg.submit_claimed_in_epoch(new, now, lease).await;
            if let Ok(Ok(job)) = &claimed {
                self.pg_claimed(job);
            }
            return claimed;
        }
        no_nul(&new.subject, "the subject")?;
        no_nul(&new.target, "the target")?;
        if let Some(k) = &new.serial_key {
            no_nul(k, "the serialization key")?;
        }
        if new.idempotency_key.is_some() || new.not_before_ms > now {
            return Ok(Err(new));
        }
        let mut next = self.inner.lock().await;
        // A job ready, or scheduled and due, would run first: one read covers both, the
        // ready keys (`r`) sorting just before the scheduled ones (`s`, by time).
        let due_end = scheduled_key(now.saturating_add(1), 0);
        let waiting = self.store.scan_range(
            Space::Queue,
            KeyRange::new(&[READY], Some(&due_end)),
            1,
            false,
        )?;
        if !waiting.is_empty() || !self.first_in_line(new.serial_key.as_deref())? {
            return Ok(Err(new));
        }
        let mut batch = Batch::new();
        let seq = Self::alloc(&mut next, &mut batch);
        let txn = crate::TxnId::new_v7().as_str().to_string();
        let until = now.saturating_add(lease.as_millis() as u64);
        // A new job (no idempotency key here: such submissions take the other path), claimed
        // in the same write: its first attempt, its transaction and its lease.
        let mut job = new_job(new, seq, JobState::Running, now, &JobOptions::default());
        job.attempts = 1;
        job.txn = Some(txn.clone());
        job.txns = vec![txn];
        job.started_ms = Some(now);
        job.slot = Slot::Leased(until);
        let id = job.id.clone();
        let idb = id.as_bytes().to_vec();
        batch.put(Space::Queue, lease_key(until, seq), idb.clone());
        if let Some(entry) = Self::serial_entry(&job) {
            batch.put(Space::Queue, entry, idb.clone());
        }
        batch.put(Space::Queue, with_seq(vec![ALL], seq), idb.clone());
        batch.put(Space::Queue, state_key(JobState::Running, seq), idb.clone());
        batch.put(
            Space::Queue,
            with_seq(field_prefix(BY_TARGET, &job.target), seq),
            idb.clone(),
        );
        batch.put(
            Space::Queue,
            with_seq(field_prefix(BY_SUBJECT, &job.subject), seq),
            idb,
        );
        batch.put(Space::Queue, job_key(&id), encode(&job));
        // Counted as a submission then a claim, as if it had gone through both.
        self.count(None, Some(JobState::Queued));
        self.count(Some(JobState::Queued), Some(JobState::Running));
        self.commit(batch, false).await?;
        self.keep_running(&job);
        Ok(Ok(job))
    }

    /// Waits until every write made so far (this task's and everyone else's) is on stable
    /// storage. Called after the queue's lock is released, so that the submissions and
    /// claims of concurrent tasks share one sync (the store's group commit) instead of
    /// taking one sync each in turn under the lock.
    pub async fn sync(&self) -> Result<(), QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            // Its claiming submissions commit without waiting for the WAL flush.
            return pg.sync().await;
        }
        self.store.sync().await?;
        Ok(())
    }

    /// Moves due scheduled jobs to the ready index (at most a page per call).
    fn promote(&self, batch: &mut Batch, now: u64) -> Result<usize, QueueError> {
        let end = scheduled_key(now, u64::MAX);
        let rows = self.store.scan_range(
            Space::Queue,
            KeyRange::new(&[SCHEDULED], Some(&end)),
            PROMOTE_PER_CLAIM,
            false,
        )?;
        let n = rows.len();
        for (k, id) in rows {
            batch.delete(Space::Queue, k);
            let id = String::from_utf8_lossy(&id).into_owned();
            if let Some(mut job) = self.get(&id)? {
                job.slot = Slot::Ready;
                batch.put(
                    Space::Queue,
                    ready_key(job.priority, job.seq),
                    job.id.as_bytes().to_vec(),
                );
                batch.put(Space::Queue, job_key(&job.id), encode(&job));
            }
        }
        Ok(n)
    }

    /// The PostgreSQL store's link epoch (see `PgStore::link`) job `id` was claimed in by
    /// this process, asked once by its runner: the run must stop when the database is lost
    /// after it. `None` on sled (and for a job not claimed here).
    pub fn claim_epoch(&self, id: &str) -> Option<u64> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return pg.take_claim_epoch(id);
        }
        let _ = id;
        None
    }

    /// Claims the best ready job: the highest priority, then the oldest; with a lease
    /// until `now + lease` and the transaction id of this attempt (a new one, or the one
    /// of an attempt a crash cut short), written durably. `None`: nothing is due.
    pub async fn claim(&self, now: u64, lease: Duration) -> Result<Option<Job>, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            let claimed = pg.claim_in_epoch(now, lease).await;
            if let Ok(Some(job)) = &claimed {
                self.pg_claimed(job);
            }
            return claimed;
        }
        let guard = self.inner.lock().await;
        let mut batch = Batch::new();
        if self.promote(&mut batch, now)? > 0 {
            // The promotions must be visible to the read below.
            self.store.write(std::mem::take(&mut batch), false).await?;
        }
        let Some((_, id)) = self.first(&[READY])? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&id).into_owned();
        let mut job = self.must_get(&id)?;
        Self::unslot(&mut batch, &mut job);
        let until = now.saturating_add(lease.as_millis() as u64);
        job.slot = Slot::Leased(until);
        batch.put(
            Space::Queue,
            lease_key(until, job.seq),
            id.as_bytes().to_vec(),
        );
        self.set_state(&mut batch, &mut job, JobState::Running);
        job.attempts += 1;
        job.started_ms = Some(now);
        if job.txn.is_none() {
            let txn = crate::TxnId::new_v7().as_str().to_string();
            job.txns.push(txn.clone());
            job.txn = Some(txn);
        }
        batch.put(Space::Queue, job_key(&id), encode(&job));
        // Durable before the transaction starts (its id is in the queue), but synced after
        // the lock is released, so concurrent claims and submissions share the sync.
        self.commit(batch, false).await?;
        self.keep_running(&job);
        drop(guard);
        self.sync().await?;
        Ok(Some(job))
    }

    /// Renews the lease of a running job. `false`: it is no longer running (cancelled
    /// while queued cannot happen; taken back after its lease ran out can).
    pub async fn heartbeat(&self, id: &str, now: u64, lease: Duration) -> Result<bool, QueueError> {
        self.heartbeat_checked(id, None, now, lease).await
    }

    /// [`Queue::heartbeat`] by the runner of attempt `attempt`: `false` (nothing renewed)
    /// when the job was taken back and claimed again since, so that a runner that stalled
    /// past its lease cannot keep the current claim's lease alive after that claim's
    /// runner died (see [`Queue::finish_attempt`]).
    pub async fn heartbeat_attempt(
        &self,
        id: &str,
        attempt: u32,
        now: u64,
        lease: Duration,
    ) -> Result<bool, QueueError> {
        self.heartbeat_checked(id, Some(attempt), now, lease).await
    }

    async fn heartbeat_checked(
        &self,
        id: &str,
        attempt: Option<u32>,
        now: u64,
        lease: Duration,
    ) -> Result<bool, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            if self.pg_current(id, attempt, "renewed").is_err() {
                return Ok(false);
            }
            let r = pg.heartbeat(id, now, lease).await;
            return match r {
                Ok(postgres::Beat::Renewed { cancel_requested }) => {
                    if cancel_requested {
                        // A cancel made on another node (its notification lost): the
                        // runner reads it with `cancel_requested`.
                        self.pg_cancel_here(id);
                    }
                    Ok(true)
                }
                // Not renewed: the lease is lost (taken back, or another node runs it).
                Ok(postgres::Beat::Lost) => {
                    self.pg_settled(id, attempt, false);
                    Ok(false)
                }
                Err(e) => {
                    self.pg_settled(id, attempt, false);
                    Err(e)
                }
            };
        }
        let _guard = self.inner.lock().await;
        let mut job = self.must_get(id)?;
        if job.state != JobState::Running || attempt.is_some_and(|a| a != job.attempts) {
            return Ok(false);
        }
        let mut batch = Batch::new();
        Self::unslot(&mut batch, &mut job);
        let until = now.saturating_add(lease.as_millis() as u64);
        job.slot = Slot::Leased(until);
        batch.put(
            Space::Queue,
            lease_key(until, job.seq),
            id.as_bytes().to_vec(),
        );
        batch.put(Space::Queue, job_key(id), encode(&job));
        self.commit(batch, false).await?;
        self.keep_running(&job);
        Ok(true)
    }

    fn finalize(
        &self,
        batch: &mut Batch,
        job: &mut Job,
        state: JobState,
        now: u64,
    ) -> Result<(), QueueError> {
        Self::unslot(batch, job);
        if state != JobState::Dead {
            // A dead job keeps its place at the head of its key's line: the jobs after it
            // wait until an operator requeues or discards it (per-tenant order).
            self.leave_line(batch, job, now)?;
        }
        self.set_state(batch, job, state);
        job.finished_ms = Some(now);
        batch.put(
            Space::Queue,
            finished_key(now, job.seq),
            job.id.as_bytes().to_vec(),
        );
        if state != JobState::Dead {
            // A dead job keeps its payload: an operator may requeue it.
            job.payload = None;
            // The jobs waiting for it go on, or die with it (a dead one keeps them waiting).
            self.settle_dependents(batch, &job.id, end_reason(state), now)?;
        }
        Ok(())
    }

    /// Records how a running job ended (its transaction is over, so this needs no sync of
    /// its own: lost in a crash, the job is taken back and its runner finds the
    /// transaction's outcome in the journal).
    pub async fn finish(&self, id: &str, how: Finish, now: u64) -> Result<Job, QueueError> {
        self.finish_checked(id, None, how, now).await
    }

    /// [`Queue::finish`] by the runner of attempt `attempt` (the job's `attempts` when it
    /// claimed it): refused when the job was taken back and claimed again since (the
    /// runner stalled past its lease), so that only the current claim settles the job.
    pub async fn finish_attempt(
        &self,
        id: &str,
        attempt: u32,
        how: Finish,
        now: u64,
    ) -> Result<Job, QueueError> {
        self.finish_checked(id, Some(attempt), how, now).await
    }

    async fn finish_checked(
        &self,
        id: &str,
        attempt: Option<u32>,
        how: Finish,
        now: u64,
    ) -> Result<Job, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            self.pg_current(id, attempt, "finished")?;
            let r = pg.finish(id, how, now).await;
            self.pg_settled(id, attempt, r.is_ok());
            return r;
        }
        let _guard = self.inner.lock().await;
        let mut job = self.must_get(id)?;
        if job.state != JobState::Running {
            return Err(QueueError::WrongState {
                id: id.to_string(),
                state: job.state,
                what: "only a running job can be finished (its lease ran out and it was \
                       taken back)"
                    .into(),
            });
        }
        current_attempt(&job, attempt, "finished")?;
        let mut batch = Batch::new();
        self.finalize(&mut batch, &mut job, how.state, now)?;
        job.outcome = how.outcome;
        job.result = how.result;
        drop_response_if_asked(&mut job);
        job.error = how.error;
        job.txn = None;
        batch.put(Space::Queue, job_key(id), encode(&job));
        self.commit(batch, false).await?;
        Ok(job)
    }

    /// A running job's attempt failed in a way worth trying again: it is queued again
    /// after `backoff` (its line keeps its place), or `dead` after its last attempt.
    pub async fn retry_later(
        &self,
        id: &str,
        error: String,
        now: u64,
        backoff: Backoff,
        random: u64,
    ) -> Result<Job, QueueError> {
        self.retry_later_code(id, error, None, now, backoff, random)
            .await
    }

    /// [`Queue::retry_later`] for an attempt that failed with the error code `code`: when
    /// it is the job's `retry_stop_code` (MPS `retryStopOnFailure`), the job is tried at
    /// most once more.
    pub async fn retry_later_code(
        &self,
        id: &str,
        error: String,
        code: Option<u32>,
        now: u64,
        backoff: Backoff,
        random: u64,
    ) -> Result<Job, QueueError> {
        self.retry_checked(id, None, error, code, now, backoff, random)
            .await
    }

    /// [`Queue::retry_later_code`] by the runner of attempt `attempt`: refused when another
    /// claim took the job since (see [`Queue::finish_attempt`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn retry_later_attempt(
        &self,
        id: &str,
        attempt: u32,
        error: String,
        code: Option<u32>,
        now: u64,
        backoff: Backoff,
        random: u64,
    ) -> Result<Job, QueueError> {
        self.retry_checked(id, Some(attempt), error, code, now, backoff, random)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn retry_checked(
        &self,
        id: &str,
        attempt: Option<u32>,
        error: String,
        code: Option<u32>,
        now: u64,
        backoff: Backoff,
        random: u64,
    ) -> Result<Job, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            self.pg_current(id, attempt, "retried")?;
            let r = pg.retry_later(id, error, code, now, backoff, random).await;
            self.pg_settled(id, attempt, r.is_ok());
            return r;
        }
        let _guard = self.inner.lock().await;
        let mut job = self.must_get(id)?;
        // Only a running job's attempt can be tried again: a stalled runner whose job was
        // taken back (queued again, or claimed and finished since) must not queue it once
        // more — that would run it twice.
        if job.state != JobState::Running {
            return Err(QueueError::WrongState {
                id: id.to_string(),
                state: job.state,
                what: "only a running job can be retried (its lease ran out and it was \
                       taken back)"
                    .into(),
            });
        }
        current_attempt(&job, attempt, "retried")?;
        let mut batch = Batch::new();
        apply_stop_code(&mut job, code);
        job.error = Some(error);
        job.txn = None;
        if job.attempts >= job.max_attempts {
            let end = if job.fail_when_exhausted {
                JobState::Failed
            } else {
                JobState::Dead
            };
            self.finalize(&mut batch, &mut job, end, now)?;
        } else {
            Self::unslot(&mut batch, &mut job);
            self.set_state(&mut batch, &mut job, JobState::Queued);
            let wait = retry_wait(&job, backoff, random);
            job.not_before_ms = now + wait;
            Self::slot_runnable(&mut batch, &mut job, now);
        }
        batch.put(Space::Queue, job_key(id), encode(&job));
        self.commit(batch, true).await?;
        Ok(job)
    }

    /// Gives up on a job at once (its payload cannot run): `dead`, for an operator.
    pub async fn bury(&self, id: &str, error: String, now: u64) -> Result<Job, QueueError> {
        self.bury_checked(id, None, error, now).await
    }

    /// [`Queue::bury`] by the runner of attempt `attempt`: refused when another claim took
    /// the job since (see [`Queue::finish_attempt`]).
    pub async fn bury_attempt(
        &self,
        id: &str,
        attempt: u32,
        error: String,
        now: u64,
    ) -> Result<Job, QueueError> {
        self.bury_checked(id, Some(attempt), error, now).await
    }

    async fn bury_checked(
        &self,
        id: &str,
        attempt: Option<u32>,
        error: String,
        now: u64,
    ) -> Result<Job, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            self.pg_current(id, attempt, "buried")?;
            let r = pg.bury(id, error, now).await;
            self.pg_settled(id, attempt, r.is_ok());
            return r;
        }
        let _guard = self.inner.lock().await;
        let mut job = self.must_get(id)?;
        if job.state.is_final() {
            return Ok(job);
        }
        if job.state != JobState::Running {
            return Err(QueueError::WrongState {
                id: id.to_string(),
                state: job.state,
                what: "only a running job can be buried (its lease ran out and it was taken \
                       back)"
                    .into(),
            });
        }
        current_attempt(&job, attempt, "buried")?;
        let mut batch = Batch::new();
        job.error = Some(error);
        job.txn = None;
        self.finalize(&mut batch, &mut job, JobState::Dead, now)?;
        batch.put(Space::Queue, job_key(id), encode(&job));
        self.commit(batch, true).await?;
        Ok(job)
    }

    /// Cancels a job: a queued one never starts; for a running one the request is
    /// recorded and its runner must stop it.
    pub async fn cancel(&self, id: &str, now: u64) -> Result<Cancelled, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            let (out, here) = pg.cancel(id, now).await?;
            if here {
                self.pg_cancelled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.to_string());
            }
            return Ok(out);
        }
        let _guard = self.inner.lock().await;
        let mut job = self.must_get(id)?;
        let mut batch = Batch::new();
        let out = match job.state {
            JobState::Queued | JobState::Held => {
                self.finalize(&mut batch, &mut job, JobState::Cancelled, now)?;
                job.error = Some("cancelled before it started".into());
                batch.put(Space::Queue, job_key(id), encode(&job));
                Cancelled::Dequeued(job)
            }
            JobState::Running => {
                job.cancel_requested = true;
                batch.put(Space::Queue, job_key(id), encode(&job));
                Cancelled::Running(job)
            }
            _ => return Ok(Cancelled::AlreadyFinal(job)),
        };
        self.commit(batch, true).await?;
        Ok(out)
    }

    /// Queues a dead job again, with its attempts counted from zero (at the end of its
    /// key's line, if it has a key).
    pub async fn requeue(&self, id: &str, now: u64) -> Result<Job, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return pg.requeue(id, now).await;
        }
        let mut next = self.inner.lock().await;
        let mut job = self.must_get(id)?;
        if job.state != JobState::Dead {
            return Err(QueueError::WrongState {
                id: id.to_string(),
                state: job.state,
                what: "only a dead job can be requeued".into(),
            });
        }
        if job.payload.is_none() {
            return Err(QueueError::WrongState {
                id: id.to_string(),
                state: job.state,
                what: "its request is no longer kept; submit it again".into(),
            });
        }
        let mut batch = Batch::new();
        self.set_state(&mut batch, &mut job, JobState::Queued);
        job.attempts = 0;
        if let Some(at) = job.finished_ms {
            batch.delete(Space::Queue, finished_key(at, job.seq));
        }
        job.finished_ms = None;
        job.not_before_ms = now;
        job.cancel_requested = false;
        // An operator's requeue runs it: it no longer waits for parents (see `parents`).
        job.waiting_for.clear();
        job.slot = Slot::Waiting;
        let in_line = match Self::serial_entry(&job) {
            Some(entry) => self.store.get(Space::Queue, &entry)?.is_some(),
            None => false,
        };
        if in_line {
            // It kept its place (a dead job holds its line): still at the head.
            if self.heads_line(&job)? {
                Self::slot_runnable(&mut batch, &mut job, now);
            }
        } else {
            // Dead before dead jobs held their line (an earlier version): at the end.
            if job.serial_key.is_some() {
                job.serial_pos = Self::alloc(&mut next, &mut batch);
            }
            if self.first_in_line(job.serial_key.as_deref())? {
                Self::slot_runnable(&mut batch, &mut job, now);
            }
        }
        if let Some(entry) = Self::serial_entry(&job) {
            batch.put(Space::Queue, entry, id.as_bytes().to_vec());
        }
        batch.put(Space::Queue, job_key(id), encode(&job));
        self.commit(batch, true).await?;
        Ok(job)
    }

    /// An operator gives up on a dead job: `cancelled`, and the next job of its
    /// serialization key may run (a dead job holds its key's line until requeued or
    /// discarded). Its request is dropped.
    pub async fn discard(&self, id: &str, now: u64) -> Result<Job, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return pg.discard(id, now).await;
        }
        let _guard = self.inner.lock().await;
        let mut job = self.must_get(id)?;
        if job.state != JobState::Dead {
            return Err(QueueError::WrongState {
                id: id.to_string(),
                state: job.state,
                what: "only a dead job can be discarded (cancel a queued or running one)".into(),
            });
        }
        let mut batch = Batch::new();
        if let Some(at) = job.finished_ms {
            batch.delete(Space::Queue, finished_key(at, job.seq));
        }
        self.leave_line(&mut batch, &job, now)?;
        self.settle_dependents(
            &mut batch,
            &job.id,
            Some("was discarded by an operator after it died"),
            now,
        )?;
        self.set_state(&mut batch, &mut job, JobState::Cancelled);
        job.finished_ms = Some(now);
        batch.put(
            Space::Queue,
            finished_key(now, job.seq),
            job.id.as_bytes().to_vec(),
        );
        job.payload = None;
        job.txn = None;
        job.error = Some(format!(
            "discarded by an operator after it died ({})",
            job.error.as_deref().unwrap_or("no error recorded")
        ));
        batch.put(Space::Queue, job_key(id), encode(&job));
        self.commit(batch, true).await?;
        Ok(job)
    }

    /// Takes back running jobs whose lease ended before `now` (their worker died): queued
    /// again at once (keeping the transaction id of the attempt, so its runner settles it),
    /// or `dead` after their last attempt (the cut-short attempt counts: a job that kills
    /// its worker every time ends). At most `max` per call; returns them.
    pub async fn take_back_expired(&self, now: u64, max: usize) -> Result<Vec<Job>, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return pg.take_back_expired(now, max).await;
        }
        let _guard = self.inner.lock().await;
        let end = lease_key(now, 0);
        let rows = self.store.scan_range(
            Space::Queue,
            KeyRange::new(&[LEASE], Some(&end)),
            max,
            false,
        )?;
        let mut batch = Batch::new();
        let mut out = Vec::with_capacity(rows.len());
        for (k, id) in rows {
            let id = String::from_utf8_lossy(&id).into_owned();
            let Some(mut job) = self.get(&id)? else {
                batch.delete(Space::Queue, k);
                continue;
            };
            if job.attempts >= job.max_attempts {
                // Its transaction id stays: a requeue settles that attempt first.
                job.error = Some(
                    "its worker stopped (lease expired) during its last attempt; requeue it \
                     to settle that attempt's transaction and go on"
                        .into(),
                );
                self.finalize(&mut batch, &mut job, JobState::Dead, now)?;
            } else {
                Self::unslot(&mut batch, &mut job);
                self.set_state(&mut batch, &mut job, JobState::Queued);
                // Its transaction id stays: the next claim settles that attempt's
                // transaction (through the journal) instead of starting another.
                job.not_before_ms = now;
                Self::slot_runnable(&mut batch, &mut job, now);
            }
            batch.put(Space::Queue, job_key(&id), encode(&job));
            out.push(job);
        }
        if !out.is_empty() {
            self.commit(batch, true).await?;
        }
        Ok(out)
    }

    /// Removes up to `max` jobs that reached a final state before `before_ms` (dead ones
    /// too), with every key of theirs: their idempotency keys are forgotten with them (a
    /// later submission with the same key is a new job). Returns how many were removed.
    pub async fn prune(&self, before_ms: u64, max: usize) -> Result<usize, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return pg.prune(before_ms, max).await;
        }
        let _guard = self.inner.lock().await;
        let end = finished_key(before_ms, 0);
        let rows = self.store.scan_range(
            Space::Queue,
            KeyRange::new(&[FINISHED], Some(&end)),
            max,
            false,
        )?;
        let mut batch = Batch::new();
        for (k, id) in &rows {
            batch.delete(Space::Queue, k.clone());
            let id = String::from_utf8_lossy(id).into_owned();
            let Some(job) = self.get(&id)? else { continue };
            if !job.state.is_final() {
                // A stale key (cannot happen through this module): keep the job.
                continue;
            }
            if job.state == JobState::Dead {
                // Retention discards it: the next job of its key may run.
                self.leave_line(&mut batch, &job, before_ms)?;
                self.settle_dependents(
                    &mut batch,
                    &job.id,
                    Some("was removed by retention after it died"),
                    before_ms,
                )?;
            }
            self.count(Some(job.state), None);
            delete_job_keys(&mut batch, &job);
        }
        if !rows.is_empty() {
            self.commit(batch, false).await?;
        }
        Ok(rows.len())
    }

    /// The jobs held for `txn`, with their `h` keys (`None`: an index entry without its
    /// job, which cannot happen through this module).
    fn held_of(&self, txn: &str) -> Result<Vec<HeldEntry>, QueueError> {
        let mut out = Vec::new();
        for (k, id) in self.store.scan(Space::Queue, &held_prefix(txn))? {
            let id = String::from_utf8_lossy(&id).into_owned();
            out.push((k, self.get(&id)?));
        }
        Ok(out)
    }

    /// The transaction `txn` committed: the jobs held for it may run (durably). Returns
    /// how many were released.
    pub async fn release_held(&self, txn: &str, now: u64) -> Result<usize, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return pg.release_held(txn, now).await;
        }
        let _guard = self.inner.lock().await;
        let held = self.held_of(txn)?;
        if held.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        let mut batch = Batch::new();
        for (k, job) in held {
            batch.delete(Space::Queue, k);
            let Some(mut job) = job else { continue };
            n += 1;
            job.held_by = None;
            job.slot = Slot::Waiting;
            if self.wait_or_die_for_parents(&mut batch, &mut job, now)? {
                batch.put(Space::Queue, job_key(&job.id), encode(&job));
                continue;
            }
            self.set_state(&mut batch, &mut job, JobState::Queued);
            if self.first_in_line(job.serial_key.as_deref())? {
                Self::slot_runnable(&mut batch, &mut job, now);
            }
            if let Some(entry) = Self::serial_entry(&job) {
                batch.put(Space::Queue, entry, job.id.as_bytes().to_vec());
            }
            batch.put(Space::Queue, job_key(&job.id), encode(&job));
        }
        self.commit(batch, true).await?;
        Ok(n)
    }

    /// The transaction `txn` rolled back: the jobs held for it are removed with every key
    /// of theirs, as if never queued (durably). Returns how many were removed.
    pub async fn discard_held(&self, txn: &str) -> Result<usize, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return pg.discard_held(txn).await;
        }
        let _guard = self.inner.lock().await;
        let held = self.held_of(txn)?;
        if held.is_empty() {
            return Ok(0);
        }
        let n = held.len();
        let mut batch = Batch::new();
        for (k, job) in held {
            batch.delete(Space::Queue, k);
            let Some(job) = job else { continue };
            self.settle_dependents(
                &mut batch,
                &job.id,
                Some("was removed: the transaction that queued it rolled back"),
                wall_ms(),
            )?;
            self.count(Some(job.state), None);
            delete_job_keys(&mut batch, &job);
        }
        self.commit(batch, true).await?;
        Ok(n)
    }

    /// After a crash (once recovery has finished every transaction): settles every held
    /// job by its transaction's outcome, as `outcome` reads it from the journal —
    /// `Some(true)` committed (released), `Some(false)` rolled back or never journaled
    /// (removed), `None` still undecided (left held). Returns (released, removed).
    pub async fn settle_held<E>(
        &self,
        outcome: impl Fn(&str) -> Result<Option<bool>, E>,
        now: u64,
    ) -> Result<(usize, usize), SettleError<E>> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return pg.settle_held(outcome, now).await;
        }
        let mut txns: Vec<String> = Vec::new();
        for (k, _) in self
            .store
            .scan(Space::Queue, &[HELD])
            .map_err(QueueError::from)?
        {
            let Some(body) = k.get(1..k.len().saturating_sub(9)) else {
                continue;
            };
            let txn = String::from_utf8_lossy(body).into_owned();
            if txns.last() != Some(&txn) {
                txns.push(txn);
            }
        }
        let (mut released, mut removed) = (0, 0);
        for txn in txns {
            match outcome(&txn).map_err(SettleError::Outcome)? {
                Some(true) => released += self.release_held(&txn, now).await?,
                Some(false) => removed += self.discard_held(&txn).await?,
                None => {}
            }
        }
        Ok((released, removed))
    }

    /// When the earliest scheduled job is due (ms), if any: a dispatcher with nothing
    /// ready sleeps until then.
    pub fn next_due(&self) -> Result<Option<u64>, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return pg.next_due();
        }
        Ok(self.first(&[SCHEDULED])?.and_then(|(k, _)| {
            k.get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        }))
    }

    /// Jobs matching `filter`, newest first, submitted before `before` (a page's `next`).
    /// Reads through the most selective index the filter names; at most `limit` jobs.
    pub fn list(
        &self,
        filter: &ListFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page, QueueError> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &self.pg {
            return pg.list(filter, before, limit);
        }
        let prefix = match (&filter.state, &filter.target, &filter.subject) {
            (Some(s), _, _) => field_prefix(BY_STATE, s.name()),
            (None, Some(t), _) => field_prefix(BY_TARGET, t),
            (None, None, Some(w)) => field_prefix(BY_SUBJECT, w),
            _ => vec![ALL],
        };
        let limit = limit.clamp(1, 1000);
        let end_of_prefix = prefix_end(&prefix);
        let mut end = match before {
            Some(seq) => with_seq(prefix.clone(), seq),
            None => end_of_prefix.clone().unwrap_or_default(),
        };
        let mut jobs = Vec::new();
        // Jobs read past the filter per page: a filter that matches little ends a page
        // early (with a cursor) instead of reading the whole queue.
        let mut budget = 10_000usize;
        loop {
            let rows = self.store.scan_range(
                Space::Queue,
                KeyRange::new(&prefix, Some(&end)),
                limit.min(256),
                true,
            )?;
            let exhausted = rows.len() < limit.min(256);
            for (k, id) in rows {
                end = k.clone();
                let seq_bytes = &k[k.len().saturating_sub(8)..];
                let seq = u64::from_be_bytes(seq_bytes.try_into().unwrap_or([0; 8]));
                budget = budget.saturating_sub(1);
                let id = String::from_utf8_lossy(&id).into_owned();
                if let Some(job) = self.get(&id)? {
                    if matches(&job, filter) {
                        jobs.push(job);
                        if jobs.len() == limit {
                            return Ok(Page {
                                jobs,
                                next: Some(seq),
                            });
                        }
                    }
                }
                if budget == 0 {
                    return Ok(Page {
                        jobs,
                        next: Some(seq),
                    });
                }
            }
            if exhausted {
                return Ok(Page { jobs, next: None });
            }
        }
    }
}

/// Why the jobs waiting for a job that ended in `state` do not run (`None`: it succeeded,
/// they may).
fn end_reason(state: JobState) -> Option<&'static str> {
    match state {
        JobState::Succeeded => None,
        JobState::Failed => Some("failed"),
        _ => Some("was cancelled"),
    }
}

/// Now, for the few changes whose callers give no time (ms since the epoch).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// MPS `parentQueue` on the sled queue: jobs waiting for other jobs.
impl Queue {
    /// The parents of a new job it must wait for (those not yet succeeded); an unknown
    /// parent, or one that failed or was cancelled, refuses the job.
    fn check_parents(&self, parents: &[String]) -> Result<Vec<String>, QueueError> {
        let mut waiting = Vec::new();
        for id in dedup(parents) {
            no_nul(&id, "a parent job id")?;
            let parent = self.get(&id)?;
            if parent.is_none() {
                return Err(QueueError::UnknownParent(id));
            }
            match parent_is(parent.as_ref()) {
                ParentIs::Done => {}
                ParentIs::Pending => waiting.push(id),
                ParentIs::Gone(why) => return Err(QueueError::ParentGone { id, why }),
            }
        }
        Ok(waiting)
    }

    /// Parks `job` (state `held`, in no line) until the parents in `waiting_for` settle.
    fn wait_for_parents(&self, batch: &mut Batch, job: &mut Job) {
        self.dependents
            .store(true, std::sync::atomic::Ordering::Relaxed);
        job.slot = Slot::Nowhere;
        for parent in &job.waiting_for {
            batch.put(
                Space::Queue,
                with_seq(dependents_prefix(parent), job.seq),
                job.id.as_bytes().to_vec(),
            );
        }
    }

    /// A held job released by its transaction's commit: `true` when it does not run yet —
    /// it waits for parents (stays `held`), or is `dead` because one will never succeed.
    fn wait_or_die_for_parents(
        &self,
        batch: &mut Batch,
        job: &mut Job,
        now: u64,
    ) -> Result<bool, QueueError> {
        let mut waiting = Vec::new();
        for id in job.parents.clone() {
            match parent_is(self.get(&id)?.as_ref()) {
                ParentIs::Done => {}
                ParentIs::Pending => waiting.push(id),
                ParentIs::Gone(why) => {
                    job.error = Some(parent_gone_message(&id, &why));
                    job.slot = Slot::Nowhere;
                    self.finalize(batch, job, JobState::Dead, now)?;
                    return Ok(true);
                }
            }
        }
        if waiting.is_empty() {
            return Ok(false);
        }
        job.waiting_for = waiting;
        self.wait_for_parents(batch, job);
        Ok(true)
    }

    /// The job `parent` ended (in the same write): the jobs waiting for it run once it was
    /// their last (`why` is `None`: it succeeded), or are `dead`, naming it.
    fn settle_dependents(
        &self,
        batch: &mut Batch,
        parent: &str,
        why: Option<&str>,
        now: u64,
    ) -> Result<(), QueueError> {
        if !self.dependents.load(std::sync::atomic::Ordering::Relaxed) {
            // No job ever waited for another: nothing to look up (the common case).
            return Ok(());
        }
        for (k, child) in self.store.scan(Space::Queue, &dependents_prefix(parent))? {
            batch.delete(Space::Queue, k);
            let child = String::from_utf8_lossy(&child).into_owned();
            let Some(mut job) = self.get(&child)? else {
                continue;
            };
            if job.state != JobState::Held
                || job.held_by.is_some()
                || !job.waiting_for.iter().any(|p| p == parent)
            {
                // Cancelled or requeued meanwhile: it no longer waits.
                continue;
            }
            match why {
                None => {
                    job.waiting_for.retain(|p| p != parent);
                    if job.waiting_for.is_empty() {
                        job.slot = Slot::Waiting;
                        self.set_state(batch, &mut job, JobState::Queued);
                        if self.first_in_line(job.serial_key.as_deref())? {
                            Self::slot_runnable(batch, &mut job, now);
                        }
                        if let Some(entry) = Self::serial_entry(&job) {
                            batch.put(Space::Queue, entry, job.id.as_bytes().to_vec());
                        }
                    }
                }
                Some(why) => {
                    job.error = Some(parent_gone_message(parent, why));
                    self.finalize(batch, &mut job, JobState::Dead, now)?;
                }
            }
            batch.put(Space::Queue, job_key(&job.id), encode(&job));
        }
        Ok(())
    }
}

fn matches(job: &Job, f: &ListFilter) -> bool {
    f.state.is_none_or(|s| job.state == s)
        && f.target.as_deref().is_none_or(|t| job.target == t)
        && f.subject.as_deref().is_none_or(|w| job.subject == w)
        && f.since_ms.is_none_or(|t| job.submitted_ms >= t)
        && f.until_ms.is_none_or(|t| job.submitted_ms < t)
        && f.namespace
            .as_deref()
            .is_none_or(|n| job.target.rsplit_once('/').is_some_and(|(ns, _)| ns == n))
}

/// Deletes every key of a job from the queue: the job, its place in each listing and its
/// idempotency key.
fn delete_job_keys(batch: &mut Batch, job: &Job) {
    let seq = job.seq;
    batch.delete(Space::Queue, job_key(&job.id));
    batch.delete(Space::Queue, with_seq(vec![ALL], seq));
    batch.delete(Space::Queue, state_key(job.state, seq));
    batch.delete(
        Space::Queue,
        with_seq(field_prefix(BY_TARGET, &job.target), seq),
    );
    batch.delete(
        Space::Queue,
        with_seq(field_prefix(BY_SUBJECT, &job.subject), seq),
    );
    if let Some(idem) = &job.idempotency_key {
        batch.delete(Space::Queue, idempotency_index(&job.subject, idem));
    }
}

/// A new job as submitted (no attempt yet), in `state`: `Held` for a job an MPS `queue` step
/// holds until its transaction commits, else `Queued` (or `Running` when claimed at once).
pub(crate) fn new_job(
    new: NewJob,
    seq: u64,
    state: JobState,
    now: u64,
    options: &JobOptions,
) -> Job {
    let held = options.held_by.is_some();
    Job {
        id: uuid::Uuid::now_v7().to_string(),
        seq,
        state,
        priority: new.priority,
        not_before_ms: new.not_before_ms,
        serial_key: new.serial_key,
        serial_pos: seq,
        idempotency_key: new.idempotency_key,
        subject: new.subject,
        target: new.target,
        attempts: 0,
        max_attempts: new.max_attempts.max(1),
        txn: None,
        txns: Vec::new(),
        submitted_ms: now,
        started_ms: None,
        finished_ms: None,
        error: None,
        outcome: None,
        cancel_requested: false,
        payload: Some(new.payload),
        result: None,
        held_by: options.held_by.clone(),
        retry_interval_ms: options.retry_interval_ms,
        fail_when_exhausted: options.fail_when_exhausted,
        retry_type: options.retry_type,
        retry_stop_code: options.retry_stop_code,
        drop_success_response: options.drop_success_response,
        parents: dedup(&options.parents),
        waiting_for: Vec::new(),
        awaited: false,
        slot: if held { Slot::Held } else { Slot::Waiting },
    }
}
