//! The job queue on PostgreSQL, shared by every process (node) on one database: jobs are
//! rows of `provisio_jobs`, claimed with `FOR UPDATE SKIP LOCKED` under leases the runner
//! renews; a serialization key's line is kept in SQL (only the first unfinished job of a
//! key is claimable, checked again under a per-key advisory lock taken for the claim's
//! database transaction), idempotent submission by a unique index; other nodes are woken by
//! `NOTIFY provisio_jobs`. [`super::Queue`] dispatches here when its store is a
//! [`PgStore`]; the semantics are those of the sled queue (see the parent module).
//!
//! Every change is one database transaction on a connection of a small pool, run on the
//! store's runtime. The job record itself is kept as the same JSON as on sled (`body`),
//! beside the columns the claims and listings use.

use super::{
    apply_stop_code, drop_response_if_asked, end_reason, new_job, no_nul, parent_gone_message,
    parent_is, retry_wait, state_index, Backoff, Cancelled, Finish, Job, JobOptions, JobState,
    ListFilter, NewJob, Page, ParentIs, QueueError, SettleError, Slot, Submitted, Tally,
    ALL_STATES, STATES,
};
use crate::store::{PgStore, Store, StoreError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};

/// The queue's tables (schema migration 2, with the node registry; its indexes changed by
/// [`SCHEMA_V5`]).
pub(crate) const SCHEMA_V2: &str = "
CREATE TABLE provisio_nodes (
    node text PRIMARY KEY,
    pid integer NOT NULL,
    host text NOT NULL,
    application text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE provisio_job_seq;
CREATE TABLE provisio_jobs (
    id text PRIMARY KEY,
    seq bigint NOT NULL UNIQUE,
    state smallint NOT NULL,
    priority smallint NOT NULL,
    not_before_ms bigint NOT NULL,
    serial_key text,
    line_pos bigint NOT NULL,
    subject text NOT NULL,
    target text NOT NULL,
    idempotency_key text,
    submitted_ms bigint NOT NULL,
    lease_until_ms bigint,
    node text,
    held_by text,
    finished_ms bigint,
    entered bigint[] NOT NULL,
    body bytea NOT NULL
);
CREATE INDEX provisio_jobs_ready ON provisio_jobs (priority DESC, seq) WHERE state = 0;
CREATE INDEX provisio_jobs_due ON provisio_jobs (not_before_ms) WHERE state = 0;
CREATE INDEX provisio_jobs_leases ON provisio_jobs (lease_until_ms) WHERE state = 1;
CREATE INDEX provisio_jobs_line ON provisio_jobs (serial_key, line_pos)
    WHERE serial_key IS NOT NULL AND state IN (0, 1, 4);
CREATE UNIQUE INDEX provisio_jobs_idempotency ON provisio_jobs (subject, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX provisio_jobs_held ON provisio_jobs (held_by) WHERE held_by IS NOT NULL;
CREATE INDEX provisio_jobs_finished ON provisio_jobs (finished_ms) WHERE finished_ms IS NOT NULL;
CREATE INDEX provisio_jobs_by_state ON provisio_jobs (state, seq);
CREATE INDEX provisio_jobs_by_target ON provisio_jobs (target, seq);
CREATE INDEX provisio_jobs_by_subject ON provisio_jobs (subject, seq);
CREATE TABLE provisio_job_tally (k smallint PRIMARY KEY, v bigint NOT NULL);
INSERT INTO provisio_job_tally SELECT k, 0 FROM generate_series(0, 7) k;
";

/// Jobs waiting for other jobs (MPS `parentQueue`; schema migration 3): one row per parent
/// a held job still waits for, deleted when that parent ends (in the same database
/// transaction, under the parent's row lock).
pub(crate) const SCHEMA_V3: &str = "
CREATE TABLE provisio_job_parents (
    parent text NOT NULL,
    child text NOT NULL,
    PRIMARY KEY (parent, child)
);
";

/// Fewer index entries a job's row writes (schema migration 5). A row update that changes
/// no indexed column (nor one an index's predicate names) is HOT: no index entry at all.
/// A job's changes of state cannot be (the claim's and the line's partial indexes name
/// `state`), so each writes one entry in every index whose predicate its new version
/// meets: a claiming submission and its finish wrote six each (`EXPLAIN`ed: the
/// `(state, seq)` index served only listings by state, and took two entries a request).
/// - `provisio_jobs_by_state` (every row) becomes `(state, seq)` of the states a listing
///   cannot find otherwise: not running (the running index), not succeeded (the
///   commonest: the listing walks `seq` backwards and filters). The line's query of
///   running jobs of a key uses the line's own index.
/// - `provisio_jobs_leases` `(lease_until_ms) WHERE state = 1` becomes `(node) WHERE
///   state = 1`: the running jobs (few: the workers') are found by it, a node's by node,
///   and a heartbeat, which changes only the lease, is HOT (room for it on the page:
///   `fillfactor` 80).
pub(crate) const SCHEMA_V5: &str = "
DROP INDEX provisio_jobs_by_state;
CREATE INDEX provisio_jobs_by_other_state ON provisio_jobs (state, seq) WHERE state NOT IN (1, 2);
DROP INDEX provisio_jobs_leases;
CREATE INDEX provisio_jobs_running ON provisio_jobs (node) WHERE state = 1;
ALTER TABLE provisio_jobs SET (fillfactor = 80);
";

/// A job's cancel flag in a column of its own (schema migration 6), kept equal to the
/// body's `cancel_requested` by every write of the body ([`WRITE_ROW`], the inserts): a
/// heartbeat returns it with the lease it renews. It searched the body for the flag, which
/// read (detoasted) the whole body, the request included (up to 64 MiB), at every beat of
/// every running job. Adding a column with a constant default rewrites no row; the flags
/// are filled from the bodies in one pass (the key is only ever the field's: see
/// [`encode`], compact JSON, where inside a string its quotes would be escaped).
pub(crate) const SCHEMA_V6: &str = "
ALTER TABLE provisio_jobs ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
UPDATE provisio_jobs SET cancel_requested = true
    WHERE position('\"cancel_requested\":true'::bytea IN body) > 0;
";

/// Which jobs a claim can take, indexed (schema migration 7). A claim walked the queued
/// jobs in (priority, submission) order and skipped one by one those not due yet and those
/// held in their key's line: with N such jobs ahead of the first runnable one, every claim
/// cost N rows. `claimable` says where a queued job stands, as the sled queue's indexes do
/// (its ready `r` and scheduled `s` keys):
/// - 0: it cannot run (not queued, or held in its key's line: a job of its key runs, or an
///   earlier one is queued or dead); the sled queue's `Waiting`;
/// - 1: first in its line (or without a key), waiting for its time (`not_before_ms`): the
///   sled queue's scheduled index, moved to 2 by the claims ([`PROMOTE`], a few a claim,
///   as the sled queue's `promote`);
/// - 2: claimable (the sled queue's ready index): the claim's search reads only these.
///
/// It is kept by every change of a job (see [`WRITE_ROW`]) and of a line ([`SETTLE_LINES`],
/// after each change of a key's line, under the line's lock [`LOCK_LINES`]). The flags are
/// filled here from the jobs' rows (due: by the database's clock), as the old search would
/// have found them. The old claim and due indexes go: nothing reads them any more.
pub(crate) const SCHEMA_V7: &str = "
ALTER TABLE provisio_jobs ADD COLUMN claimable smallint NOT NULL DEFAULT 0;
UPDATE provisio_jobs j SET claimable = CASE
        WHEN j.not_before_ms <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint THEN 2
        ELSE 1 END
    WHERE j.state = 0 AND (j.serial_key IS NULL OR NOT EXISTS (SELECT 1 FROM provisio_jobs e
        WHERE e.serial_key = j.serial_key AND e.id <> j.id
        AND (e.state = 1 OR (e.state IN (0, 4) AND e.line_pos < j.line_pos))));
DROP INDEX provisio_jobs_ready;
DROP INDEX provisio_jobs_due;
CREATE INDEX provisio_jobs_claimable ON provisio_jobs (priority DESC, seq)
    WHERE state = 0 AND claimable = 2;
CREATE INDEX provisio_jobs_scheduled ON provisio_jobs (not_before_ms, seq)
    WHERE state = 0 AND claimable = 1;
";

/// A heartbeat: renews a running job's lease (`$1` the job, `$2` the new lease end, `$3`
/// this node) and reads its cancel flag, without reading its record (see [`SCHEMA_V6`]).
pub(crate) const HEARTBEAT: &str = "UPDATE provisio_jobs SET lease_until_ms = $2
     WHERE id = $1 AND state = 1 AND node = $3 RETURNING cancel_requested";

/// The channel other nodes are woken on.
const CHANNEL: &str = "provisio_jobs";
/// The channel a cancel of a job running on another node is announced on (the job id as
/// payload): the node running it stops it at once (see [`super::Queue::cancel_seen`]).
pub const CANCEL_CHANNEL: &str = "provisio_cancel";
/// Connections of the queue's pool.
const POOL: usize = 8;
/// Candidates a claim passes over (locked by another claim of their key) before it says
/// nothing is due.
const CLAIM_TRIES: usize = 8;

/// The columns of a job row, in the order [`JOB_COLUMNS`] reads them.
const JOB_COLUMNS: &str = "body, entered, line_pos, node";

/// Scheduled jobs made claimable per claim (`claimable` 1 to 2, see [`SCHEMA_V7`]): the
/// sled queue's `PROMOTE_PER_CLAIM`, in the same order (due time, then submission), so
/// that both stores claim a backlog that comes due at once in the same order, a few jobs a
/// claim.
const PROMOTE_PER_CLAIM: i64 = 4;

/// Makes the first [`PROMOTE_PER_CLAIM`] due scheduled jobs claimable (`$1`: now). Run on
/// its own (committed at once) just before a claim's search, so that the search sees it,
/// and so does every other claim's search from then on; a concurrent promotion of the same
/// rows waits for this one, then finds them promoted (the outer condition, checked again
/// on the row's latest version).
const PROMOTE: &str = "UPDATE provisio_jobs SET claimable = 2 WHERE id IN (
         SELECT id FROM provisio_jobs WHERE state = 0 AND claimable = 1 AND not_before_ms <= $1
         ORDER BY not_before_ms, seq LIMIT $2)
     AND state = 0 AND claimable = 1";

/// Takes the locks of lines (`$1`: their lock names, see [`line_head_lock_name`]) until the
/// database transaction ends, in the order of their hashes: a transaction that changes
/// the lines of several keys takes them in one order, the same for all (no deadlock among
/// them). Taken after the transaction's row changes, and followed only by
/// [`SETTLE_LINES`], which waits for no row lock: a transaction holding a line's lock
/// never waits for a row. Not the claims' line lock ([`LINE_LOCK`]): a claim never waits
/// for a change of its line, nor fails to take its lock because of one.
const LOCK_LINES: &str = "SELECT count(pg_advisory_xact_lock(h)) FROM (
         SELECT DISTINCT hashtextextended(n, 0) AS h FROM unnest($1::text[]) n ORDER BY h) l";

/// Sets the `claimable` flags of the lines of keys `$1` (a key once per change of its line
/// in this transaction) as of now `$2`, under their locks ([`LOCK_LINES`]), after this
/// transaction's changes of them: its first queued or dead job (in `line_pos` order) is the
/// one that may run, if queued and no job of the key runs; every other job of the line
/// cannot. Only the first jobs of a line are read: a line has at most one flagged job, and
/// each change of the line moves it back at most one place, so it is among the first
/// (changes + 1). A head flagged already keeps its flag (1 or 2: the sled queue's
/// `leave_line` slots only a waiting job); a new one is claimable at once when due, else
/// scheduled. A row locked by another transaction is left as it is (`SKIP LOCKED`): a
/// claim or a promotion (of a row flagged already, which its claim checks again under
/// the claims' line lock), or a change of the line that settles it after this one
/// (the lock's order). The rows to change are found by their ids (`= ANY` of an array: the
/// primary key), never by a join the planner could make a scan of the table.
pub(crate) const SETTLE_LINES: &str = "WITH lines AS (
         SELECT k, count(*) + 1 AS depth FROM unnest($1::text[]) k GROUP BY k),
     first AS (
         SELECT f.id, f.state, f.not_before_ms, f.claimable, f.pos,
             EXISTS (SELECT 1 FROM provisio_jobs r WHERE r.state = 1 AND r.serial_key = l.k) AS busy
         FROM lines l CROSS JOIN LATERAL (
             SELECT x.*, row_number() OVER (ORDER BY x.line_pos) AS pos FROM (
                 SELECT id, state, not_before_ms, claimable, line_pos FROM provisio_jobs
                 WHERE serial_key = l.k AND state IN (0, 4) ORDER BY line_pos LIMIT l.depth) x) f),
     wanted AS (
         SELECT id, claimable AS was, (CASE WHEN pos = 1 AND NOT busy THEN
                 CASE WHEN claimable <> 0 THEN claimable WHEN not_before_ms <= $2 THEN 2 ELSE 1 END
             ELSE 0 END)::int2 AS c
         FROM first WHERE state = 0),
     todo AS (
         SELECT id FROM provisio_jobs
         WHERE id = ANY (ARRAY(SELECT id FROM wanted WHERE c <> was)) AND state = 0
         FOR UPDATE SKIP LOCKED)
     UPDATE provisio_jobs j SET claimable = (SELECT w.c FROM wanted w WHERE w.id = j.id)
     WHERE j.id = ANY (ARRAY(SELECT id FROM todo))";

fn st(state: JobState) -> i16 {
    state_index(state) as i16
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What a heartbeat of a running job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Beat {
    /// Its lease was renewed; with whether a cancel asked it to stop (on any node).
    Renewed { cancel_requested: bool },
    /// Not renewed: it no longer runs here (taken back, or finished elsewhere).
    Lost,
}

fn id_of(c: &Cancelled) -> &str {
    match c {
        Cancelled::Dequeued(j) | Cancelled::Running(j) | Cancelled::AlreadyFinal(j) => &j.id,
    }
}

/// A row read: the job, how many times it entered each state, its place in its line.
struct Row {
    job: Job,
    entered: Vec<i64>,
    line_pos: i64,
    /// The node holding its lease (while it runs).
    node: Option<String>,
}

impl Row {
    fn from(row: &tokio_postgres::Row) -> Result<Row, QueueError> {
        let body: Vec<u8> = row.get(0);
        let job: Job = serde_json::from_slice(&body).map_err(|e| QueueError::Decode {
            key: "provisio_jobs".into(),
            message: e.to_string(),
        })?;
        let mut entered: Vec<i64> = row.get(1);
        entered.resize(STATES, 0);
        Ok(Row {
            job,
            entered,
            line_pos: row.get(2),
            node: row.get(3),
        })
    }

    fn set_state(&mut self, state: JobState) {
        if self.job.state != state {
            self.job.state = state;
            self.entered[state_index(state)] += 1;
        }
    }
}

/// Connections for the queue's changes, each used by one change at a time.
struct Pool {
    idle: Mutex<Vec<Conn>>,
    permits: tokio::sync::Semaphore,
    /// Its sessions commit without waiting for the WAL flush (`synchronous_commit = off`,
    /// set once when each connects): the pool of the changes that need not be durable on
    /// their own (a claiming submission, a finish), which then send neither a `SET LOCAL`
    /// nor any statement more than a durable change does. A session setting outside any
    /// transaction cannot be undone by a later rollback, and the durable changes never run
    /// on these sessions.
    async_commit: bool,
}

impl Pool {
    fn new(async_commit: bool) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(POOL),
            async_commit,
        }
    }
}

/// A pooled connection with the statements of the queue's common changes prepared on it
/// once (when it connects): each later use sends only bind and execute, so the server
/// neither parses nor plans them again (a claiming submission, a claim and a finish each
/// parsed and planned two to four statements before), and a use is still one message
/// that pipelines with the statements around it.
struct Conn {
    client: Client,
    st: Prepared,
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// The statements prepared on each pooled connection (see [`Conn`]).
struct Prepared {
    /// [`PgQueue::submit_claimed`]: whether another job is due, and the job's number.
    due: Statement,
    /// [`PgQueue::submit_claimed`]: whether a key's line is busy.
    line_busy: Statement,
    /// [`PgQueue::submit_claimed`]: the claimed job's row.
    insert_running: Statement,
    /// [`PgQueue::claim`]: the promotion of due scheduled jobs.
    promote: Statement,
    /// [`PgQueue::claim`]: the search.
    search: Statement,
    /// [`settle_lines`]: the lines' locks.
    lock_lines: Statement,
    /// [`settle_lines`]: their flags.
    settle_lines: Statement,
    /// [`PgQueue::claim`]: whether the found job's line holds it.
    held_in_line: Statement,
    line_lock: Statement,
    get_row: Statement,
    get_row_for_update: Statement,
    write_row: Statement,
    notify: Statement,
    /// [`PgQueue::release_held`]: the jobs a transaction holds.
    held: Statement,
    /// [`PgQueue::release_held`]: whether a transaction holds any job.
    holds_any: Statement,
}

/// Whether a claim now would take another job (`$1`: now): one claimable, or one scheduled
/// and due (as the sled queue's one read of its ready and scheduled keys); and the new
/// job's number.
const DUE: &str = "SELECT EXISTS (SELECT 1 FROM provisio_jobs WHERE state = 0 AND claimable = 2
             AND not_before_ms <= $1)
         OR EXISTS (SELECT 1 FROM provisio_jobs WHERE state = 0 AND claimable = 1
             AND not_before_ms <= $1),
         nextval('provisio_job_seq')";

/// Whether a job of key `$1` is queued, running or dead (a claiming submission may not run
/// at once). The first of the line by the line's index, as in [`HELD_IN_LINE`]: a generic
/// plan takes a key for a large share of the table, and an `EXISTS` (whose `ORDER BY` and
/// `LIMIT` the planner drops) was a scan of the table, read whole for a key with no job.
pub(crate) const LINE_BUSY: &str =
    "SELECT (SELECT line_pos FROM provisio_jobs WHERE serial_key = $1 AND state IN (0, 1, 4)
         ORDER BY line_pos LIMIT 1) IS NOT NULL";

const INSERT_RUNNING: &str =
    "INSERT INTO provisio_jobs (id, seq, state, priority, not_before_ms, serial_key,
         line_pos, subject, target, submitted_ms, lease_until_ms, node, entered, body,
         cancel_requested)
     VALUES ($1, $2, 1, $3, $4, $5, $2, $6, $7, $8, $9, $10, $11, $12, $13)";

const INSERT_RUNNING_TYPES: [Type; 13] = [
    Type::TEXT,
    Type::INT8,
    Type::INT2,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::INT8_ARRAY,
    Type::BYTEA,
    Type::BOOL,
];

/// The claim's search: the best claimable job (`claimable` 2, see [`SCHEMA_V7`]), through
/// the `provisio_jobs_claimable` index; it reads no job that cannot run. The due time is
/// checked again, for a job flagged by a node whose clock is ahead of this one's.
pub(crate) fn search_sql() -> String {
    format!(
        "SELECT {JOB_COLUMNS}, serial_key FROM provisio_jobs j
         WHERE state = 0 AND claimable = 2 AND not_before_ms <= $1 AND NOT (id = ANY($2))
         ORDER BY priority DESC, seq LIMIT 1 FOR UPDATE SKIP LOCKED"
    )
}

/// Whether the found job's line holds it (`$1` its key, `$2` the job, `$3` its place): a
/// job of its key runs (found among the running jobs, a few: the workers'), or an earlier
/// one is queued or dead (the first of the line by the line's index: ordered, so that even
/// a generic plan, which takes a key for a large share of the table, reads the index and
/// not the table). Two probes, not one scan of the key's whole line.
pub(crate) const HELD_IN_LINE: &str =
    "SELECT EXISTS (SELECT 1 FROM provisio_jobs e WHERE e.state = 1
         AND e.serial_key = $1 AND e.id <> $2)
     OR coalesce((SELECT e.line_pos FROM provisio_jobs e WHERE e.serial_key = $1
         AND e.state IN (0, 4) AND e.id <> $2 ORDER BY e.line_pos LIMIT 1) < $3, false)";

const LINE_LOCK: &str = "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))";

fn get_row_sql(for_update: bool) -> String {
    format!(
        "SELECT {JOB_COLUMNS} FROM provisio_jobs WHERE id = $1{}",
        if for_update { " FOR UPDATE" } else { "" }
    )
}

/// Writes a job's row back. Its `claimable` flag (see [`SCHEMA_V7`]): 0 unless queued; a
/// queued job's flag is kept while it stays queued; a job (re)entering the queue without a
/// key is first in its own line: `$13` (claimable at once, or scheduled, as its slot says);
/// one with a key keeps its 0 and is flagged by [`SETTLE_LINES`], which every change of a
/// line runs.
const WRITE_ROW: &str =
    "UPDATE provisio_jobs SET state = $2, priority = $3, not_before_ms = $4, line_pos = $5,
         lease_until_ms = CASE WHEN $2::int2 = 1 THEN coalesce($6, lease_until_ms) END,
         node = CASE WHEN $2::int2 = 1 THEN coalesce($7, node) END, held_by = $8, finished_ms = $9, entered = $10, body = $11,
         cancel_requested = $12,
         claimable = CASE WHEN $2::int2 <> 0 THEN 0 WHEN state = 0 AND claimable <> 0 THEN claimable
             WHEN serial_key IS NULL THEN $13 ELSE claimable END
     WHERE id = $1";

const WRITE_ROW_TYPES: [Type; 13] = [
    Type::TEXT,
    Type::INT2,
    Type::INT2,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8_ARRAY,
    Type::BYTEA,
    Type::BOOL,
    Type::INT2,
];

const NOTIFY: &str = "SELECT pg_notify($1, '')";

impl Prepared {
    /// Prepares them all, pipelined: one round trip.
    async fn new(c: &Client) -> Res<Prepared> {
        let search = search_sql();
        let (get, get_for_update) = (get_row_sql(false), get_row_sql(true));
        let held = format!(
            "SELECT {JOB_COLUMNS} FROM provisio_jobs WHERE held_by = $1 ORDER BY seq FOR UPDATE"
        );
        let (promote, lock_lines, settle_lines, a, b, d, e, f, g, h, i, j, k, l, m) = tokio::join!(
            c.prepare_typed(PROMOTE, &[Type::INT8, Type::INT8]),
            c.prepare_typed(LOCK_LINES, &[Type::TEXT_ARRAY]),
            c.prepare_typed(SETTLE_LINES, &[Type::TEXT_ARRAY, Type::INT8]),
            c.prepare_typed(DUE, &[Type::INT8]),
            c.prepare_typed(LINE_BUSY, &[Type::TEXT]),
            c.prepare_typed(INSERT_RUNNING, &INSERT_RUNNING_TYPES),
            c.prepare_typed(&search, &[Type::INT8, Type::TEXT_ARRAY]),
            c.prepare_typed(HELD_IN_LINE, &[Type::TEXT, Type::TEXT, Type::INT8]),
            c.prepare_typed(LINE_LOCK, &[Type::TEXT]),
            c.prepare_typed(&get, &[Type::TEXT]),
            c.prepare_typed(&get_for_update, &[Type::TEXT]),
            c.prepare_typed(WRITE_ROW, &WRITE_ROW_TYPES),
            c.prepare_typed(NOTIFY, &[Type::TEXT]),
            c.prepare_typed(&held, &[Type::TEXT]),
            c.prepare_typed(
                "SELECT EXISTS (SELECT 1 FROM provisio_jobs WHERE held_by = $1)",
                &[Type::TEXT]
            ),
        );
        Ok(Prepared {
            due: a.map_err(pg_err)?,
            line_busy: b.map_err(pg_err)?,
            insert_running: d.map_err(pg_err)?,
            promote: promote.map_err(pg_err)?,
            search: e.map_err(pg_err)?,
            lock_lines: lock_lines.map_err(pg_err)?,
            settle_lines: settle_lines.map_err(pg_err)?,
            held_in_line: f.map_err(pg_err)?,
            line_lock: g.map_err(pg_err)?,
            get_row: h.map_err(pg_err)?,
            get_row_for_update: i.map_err(pg_err)?,
            write_row: j.map_err(pg_err)?,
            notify: k.map_err(pg_err)?,
            held: l.map_err(pg_err)?,
            holds_any: m.map_err(pg_err)?,
        })
    }
}

/// The queue on a PostgreSQL store (see the module documentation).
pub(crate) struct PgQueue {
    store: Arc<dyn Store>,
    inner: Arc<Inner>,
}

struct Inner {
    /// Durable changes and reads.
    pool: Pool,
    /// Changes committed without waiting for the WAL flush (see [`Pool::async_commit`]).
    async_pool: Pool,
    node: String,
    lock_ns: String,
    wake: Arc<tokio::sync::Notify>,
    listening: std::sync::atomic::AtomicBool,
    /// The store's link epoch each job claimed here was claimed in, until its runner
    /// asks ([`PgQueue::take_claim_epoch`]).
    claims: Mutex<std::collections::HashMap<String, u64>>,
}

type Res<T> = Result<T, QueueError>;

fn pg_err(e: tokio_postgres::Error) -> QueueError {
    let text = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    };
    QueueError::Store(StoreError::Io(format!("PostgreSQL job queue: {text}")))
}

impl PgQueue {
    pub(crate) fn new(store: Arc<dyn Store>) -> PgQueue {
        let pg = store.postgres().expect("a PostgreSQL store");
        let inner = Arc::new(Inner {
            pool: Pool::new(false),
            async_pool: Pool::new(true),
            node: pg.node().to_string(),
            lock_ns: pg.lock_ns(),
            wake: Arc::new(tokio::sync::Notify::new()),
            listening: std::sync::atomic::AtomicBool::new(false),
            claims: Mutex::new(std::collections::HashMap::new()),
        });
        let queue = PgQueue { store, inner };
        queue.take_back_on_reconnect();
        queue
    }

    fn pg(&self) -> &PgStore {
        self.store.postgres().expect("a PostgreSQL store")
    }

    /// Runs a change on the store's runtime with a pooled connection (its commits wait
    /// for the WAL flush).
    async fn run<T, F, Fut>(&self, f: F) -> Res<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>, Conn) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = (Conn, Res<T>)> + Send + 'static,
    {
        self.run_in(false, f).await
    }

    /// [`PgQueue::run`] on a connection whose commits do not wait for the WAL flush (see
    /// [`Pool::async_commit`]).
    async fn run_async<T, F, Fut>(&self, f: F) -> Res<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>, Conn) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = (Conn, Res<T>)> + Send + 'static,
    {
        self.run_in(true, f).await
    }

    async fn run_in<T, F, Fut>(&self, async_commit: bool, f: F) -> Res<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>, Conn) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = (Conn, Res<T>)> + Send + 'static,
    {
        if let Some(e) = self.pg().unavailable() {
            return Err(e.into());
        }
        let inner = self.inner.clone();
        let connector = self.pg().connector();
        let out = self
            .pg()
            .run(async move { Ok(with_client(inner, connector, async_commit, f).await) })
            .await?;
        out
    }

    /// Runs a read on the store's runtime and blocks this thread for its answer.
    fn block<T, F, Fut>(&self, f: F) -> Res<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>, Conn) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = (Conn, Res<T>)> + Send + 'static,
    {
        let inner = self.inner.clone();
        let connector = self.pg().connector();
        self.pg()
            .block(async move { Ok(with_client(inner, connector, false, f).await) })?
    }

    /// Resolves when another node (or this one) changed the queue in a way that may make a
    /// job claimable (`NOTIFY provisio_jobs`); listens from the first call on.
    pub(crate) async fn changed(&self) {
        if !self
            .inner
            .listening
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.pg().listen(CHANNEL, self.inner.wake.clone());
        }
        self.inner.wake.notified().await;
    }

    pub(crate) fn get(&self, id: &str) -> Res<Option<Job>> {
        let id = id.to_string();
        self.block(move |_, c| async move {
            let r = get_row_with(&*c, Some(&c.st.get_row), &id, false)
                .await
                .map(|r| r.map(|r| r.job));
            (c, r)
        })
    }

    /// The state of job `id` alone (its `state` column): what a wait for its end needs,
    /// without reading its body (the request, up to 64 MiB) at every look.
    pub(crate) fn state_of(&self, id: &str) -> Res<Option<JobState>> {
        let id = id.to_string();
        self.block(move |_, c| async move {
            // One message (`query_typed`: no separate prepare round trip).
            let r = c
                .query_typed(
                    "SELECT state FROM provisio_jobs WHERE id = $1",
                    &[(&id, Type::TEXT)],
                )
                .await
                .map_err(pg_err)
                .map(|rows| {
                    rows.first().map(|row| {
                        let state: i16 = row.get(0);
                        // A code this version does not know (a newer daemon's) reads as
                        // not over: the wait goes on to its time limit.
                        usize::try_from(state)
                            .ok()
                            .and_then(|i| super::ALL_STATES.get(i).copied())
                            .unwrap_or(JobState::Queued)
                    })
                });
            (c, r)
        })
    }

    pub(crate) fn tally(&self) -> Res<Tally> {
        self.block(move |_, c| async move {
            let r = async {
                let mut t = Tally::default();
                for row in c.query(&tally_sql(), &[]).await.map_err(pg_err)? {
                    let s: i16 = row.get(0);
                    let n = row.get::<_, i64>(1).max(0) as u64;
                    let entered: Vec<i64> = row.get(2);
                    if let Some(now) = usize::try_from(s).ok().and_then(|s| t.now.get_mut(s)) {
                        *now = n;
                    }
                    t.submitted += n;
                    for (e, v) in t.entered.iter_mut().zip(entered) {
                        *e += v.max(0) as u64;
                    }
                }
                Ok(t)
            }
            .await;
            (c, r)
        })
    }

    pub(crate) async fn submit_with(
        &self,
        new: NewJob,
        options: JobOptions,
        now: u64,
    ) -> Res<Submitted> {
        if let Some(t) = &options.held_by {
            no_nul(t, "the holding transaction id")?;
        }
        no_nul(&new.subject, "the subject")?;
        no_nul(&new.target, "the target")?;
        if let Some(k) = &new.serial_key {
            no_nul(k, "the serialization key")?;
        }
        if !options.parents.is_empty() {
            return self.submit_with_parents(new, options, now).await;
        }
        self.run(move |inner, c| async move {
            let r = async {
                if let Some(idem) = &new.idempotency_key {
                    if let Some(job) = by_idempotency(&c, &new.subject, idem).await? {
                        return Ok(Submitted {
                            job,
                            created: false,
                        });
                    }
                }
                let seq = next_seq(&c).await?;
                let state = if options.held_by.is_some() {
                    JobState::Held
                } else {
                    JobState::Queued
                };
                let job = new_job(new, seq, state, now, &options);
                let inserted = match (&job.serial_key, state) {
                    // It joins its key's line: its flag is the line's, set under the line's
                    // lock after the row (one round trip: `BEGIN`, the row, the line's lock
                    // and flags, `COMMIT`; a failed statement makes the `COMMIT` a rollback).
                    (Some(key), JobState::Queued) => {
                        let keys = [key.clone()];
                        let (b, inserted, settled, end) = tokio::join!(
                            c.batch_execute("BEGIN"),
                            insert_job(&*c, &job, seq as i64, state, now),
                            settle_lines_on(&c, &inner.lock_ns, &keys, now),
                            c.batch_execute("COMMIT"),
                        );
                        let done = b.map_err(pg_err).and(inserted).and_then(|n| {
                            settled?;
                            end.map_err(pg_err)?;
                            Ok(n)
                        });
                        if done.is_err() {
                            rollback(&c).await;
                        }
                        done?
                    }
                    _ => insert_job(&*c, &job, seq as i64, state, now).await?,
                };
                if inserted == 0 {
                    // Another node submitted the same key meanwhile: its job.
                    let idem = job.idempotency_key.as_deref().unwrap_or_default();
                    if let Some(existing) = by_idempotency(&c, &job.subject, idem).await? {
                        return Ok(Submitted {
                            job: existing,
                            created: false,
                        });
                    }
                }
                if state == JobState::Queued {
                    notify_with(&*c, Some(&c.st.notify)).await?;
                }
                Ok(Submitted { job, created: true })
            }
            .await;
            (c, r)
        })
        .await
    }

    pub(crate) async fn submit_claimed(
        &self,
        new: NewJob,
        now: u64,
        lease: Duration,
    ) -> Res<Result<Job, NewJob>> {
        no_nul(&new.subject, "the subject")?;
        no_nul(&new.target, "the target")?;
        if let Some(k) = &new.serial_key {
            no_nul(k, "the serialization key")?;
        }
        if new.idempotency_key.is_some() || new.not_before_ms > now {
            return Ok(Err(new));
        }
        let node = self.inner.node.clone();
        // On a session committing without waiting for the WAL flush, as the sled queue's
        // claiming submission does not sync (see `Queue::submit_claimed`).
        self.run_async(move |inner, c| async move {
            let r = async {
                // Round trip 1, pipelined: `BEGIN`, whether another job is due, the job's number,
                // and for a serialization key its line's locks (the claims', and the one of
                // the changes of its flags: a submission of the key waits for this one to end,
                // then finds the line busy) and whether the line is busy (a statement of its
                // own after the locks: its snapshot sees every change of the line committed
                // before they were taken).
                let key = new.serial_key.clone();
                let now_ms = ms(now);
                let due_params: [&(dyn ToSql + Sync); 1] = [&now_ms];
                let (b, due, line) = tokio::join!(
                    c.batch_execute("BEGIN"),
                    c.query_one(&c.st.due, &due_params),
                    async {
                        let Some(key) = &key else {
                            return Ok(true);
                        };
                        let busy_params: [&(dyn ToSql + Sync); 1] = [key];
                        let names = [line_head_lock_name(&inner.lock_ns, key)];
                        let names = &names[..];
                        let head_params: [&(dyn ToSql + Sync); 1] = [&names];
                        let (locked, head_locked, busy) = tokio::join!(
                            line_lock(&c, &inner.lock_ns, key),
                            c.query_one(&c.st.lock_lines, &head_params),
                            c.query_one(&c.st.line_busy, &busy_params),
                        );
                        head_locked.map_err(pg_err)?;
                        let busy: bool = busy.map_err(pg_err)?.get(0);
                        Ok::<bool, QueueError>(locked? && !busy)
                    },
                );
                let seq: i64 = match (b.map_err(pg_err), due.map_err(pg_err), line) {
                    (Ok(()), Ok(row), Ok(free)) => {
                        if row.get::<_, bool>(0) || !free {
                            rollback(&c).await;
                            return Ok(Err(new));
                        }
                        row.get(1)
                    }
                    (b, due, line) => {
                        rollback(&c).await;
                        b?;
                        due?;
                        line?;
                        unreachable!("one of them failed")
                    }
                };
                let mut job = new_job(
                    new,
                    seq as u64,
                    JobState::Running,
                    now,
                    &JobOptions::default(),
                );
                let txn = crate::TxnId::new_v7().as_str().to_string();
                job.attempts = 1;
                job.started_ms = Some(now);
                job.txn = Some(txn.clone());
                job.txns = vec![txn];
                let until = now.saturating_add(lease.as_millis() as u64);
                job.slot = Slot::Leased(until);
                let mut entered = vec![0i64; STATES];
                entered[state_index(JobState::Queued)] = 1;
                entered[state_index(JobState::Running)] = 1;
                // Round trip 2: the row and `COMMIT` (a failed insert makes it a rollback).
                let (not_before, until_ms, body) = (ms(job.not_before_ms), ms(until), encode(&job));
                let params: [&(dyn ToSql + Sync); 13] = [
                    &job.id,
                    &seq,
                    &job.priority,
                    &not_before,
                    &job.serial_key,
                    &job.subject,
                    &job.target,
                    &now_ms,
                    &until_ms,
                    &node,
                    &entered,
                    &body,
                    &job.cancel_requested,
                ];
                let (inserted, end) = tokio::join!(
                    c.execute(&c.st.insert_running, &params),
                    c.batch_execute("COMMIT"),
                );
                inserted.map_err(pg_err)?;
                end.map_err(pg_err)?;
                Ok(Ok(job))
            }
            .await;
            (c, r)
        })
        .await
    }

    /// Waits until every change committed so far (by any session) is on stable storage:
    /// a claiming submission commits without waiting for the WAL flush. A transaction that
    /// writes a record (takes a transaction id) and commits synchronously flushes the WAL
    /// up to its commit record, which covers every commit before it.
    pub(crate) async fn sync(&self) -> Res<()> {
        self.run(move |_, c| async move {
            let r = c
                .batch_execute("BEGIN; SELECT pg_current_xact_id(); COMMIT")
                .await
                .map_err(pg_err);
            (c, r)
        })
        .await
    }

    pub(crate) async fn claim(&self, now: u64, lease: Duration) -> Res<Option<Job>> {
        let node = self.inner.node.clone();
        self.run(move |inner, c| async move {
            let r = async {
                let mut passed: Vec<String> = Vec::new();
                for attempt in 0..CLAIM_TRIES {
                    // Round trip 1, pipelined: the promotion of due scheduled jobs (the first
                    // time; committed on its own, before the search's snapshot), `BEGIN` and
                    // the search.
                    let now_ms = ms(now);
                    let params: [&(dyn ToSql + Sync); 2] = [&now_ms, &passed];
                    let promote_params: [&(dyn ToSql + Sync); 2] = [&now_ms, &PROMOTE_PER_CLAIM];
                    let (promoted, b, rows) = tokio::join!(
                        async {
                            if attempt == 0 {
                                c.execute(&c.st.promote, &promote_params).await.map(|_| ())
                            } else {
                                Ok(())
                            }
                        },
                        c.batch_execute("BEGIN"),
                        c.query(&c.st.search, &params),
                    );
                    let rows = match (promoted, b, rows) {
                        (Ok(()), Ok(()), Ok(rows)) => rows,
                        (promoted, b, rows) => {
                            rollback(&c).await;
                            promoted.map_err(pg_err)?;
                            b.map_err(pg_err)?;
                            rows.map_err(pg_err)?;
                            unreachable!("one of them failed")
                        }
                    };
                    let Some(row) = rows.first() else {
                        rollback(&c).await;
                        return Ok(None);
                    };
                    let mut row_read = match Row::from(row) {
                        Ok(r) => r,
                        Err(e) => {
                            rollback(&c).await;
                            return Err(e);
                        }
                    };
                    let key: Option<String> = row.get(4);
                    if let Some(key) = &key {
                        // Under the line's lock, with a fresh snapshot (a statement of its
                        // own after the lock's): no other claim of the key is in flight,
                        // and none committed since the search began.
                        let params: [&(dyn ToSql + Sync); 3] =
                            [key, &row_read.job.id, &row_read.line_pos];
                        let (locked, busy) = tokio::join!(
                            line_lock(&c, &inner.lock_ns, key),
                            c.query_one(&c.st.held_in_line, &params),
                        );
                        let free = match (locked, busy.map_err(pg_err)) {
                            (Ok(locked), Ok(busy)) => locked && !busy.get::<_, bool>(0),
                            (locked, busy) => {
                                rollback(&c).await;
                                locked?;
                                busy?;
                                unreachable!("one of them failed")
                            }
                        };
                        if !free {
                            rollback(&c).await;
                            passed.push(row_read.job.id.clone());
                            continue;
                        }
                    }
                    let job = &mut row_read.job;
                    let until = now.saturating_add(lease.as_millis() as u64);
                    job.slot = Slot::Leased(until);
                    job.attempts += 1;
                    job.started_ms = Some(now);
                    if job.txn.is_none() {
                        let txn = crate::TxnId::new_v7().as_str().to_string();
                        job.txns.push(txn.clone());
                        job.txn = Some(txn);
                    }
                    row_read.set_state(JobState::Running);
                    // Round trip 2: the row and `COMMIT` (synchronous: the claim is durable
                    // before its transaction starts, as on sled).
                    let (w, end) = tokio::join!(
                        write_row_with(
                            &*c,
                            Some(&c.st.write_row),
                            &row_read,
                            Some(until),
                            Some(&node)
                        ),
                        c.batch_execute("COMMIT"),
                    );
                    w?;
                    end.map_err(pg_err)?;
                    return Ok(Some(row_read.job));
                }
                Ok(None)
            }
            .await;
            (c, r)
        })
        .await
    }

    pub(crate) async fn heartbeat(&self, id: &str, now: u64, lease: Duration) -> Res<Beat> {
        let id = id.to_string();
        let node = self.inner.node.clone();
        self.run(move |_, c| async move {
            let r = async {
                let until = now.saturating_add(lease.as_millis() as u64);
                // The renewal also reads the row's cancel flag: a cancel made on another
                // node whose notification was lost reaches the runner at its next beat.
                // Neither it nor the update reads the body (the request, however large):
                // the flag has a column of its own (`SCHEMA_V6`), and the new row version
                // keeps the body's TOAST pointer.
                let row = c
                    .query_opt(HEARTBEAT, &[&id, &ms(until), &node])
                    .await
                    .map_err(pg_err)?;
                match row {
                    Some(row) => Ok(Beat::Renewed {
                        cancel_requested: row.get(0),
                    }),
                    None => {
                        let exists: bool = c
                            .query_one(
                                "SELECT EXISTS (SELECT 1 FROM provisio_jobs WHERE id = $1)",
                                &[&id],
                            )
                            .await
                            .map_err(pg_err)?
                            .get(0);
                        if exists {
                            Ok(Beat::Lost)
                        } else {
                            Err(QueueError::NotFound(id))
                        }
                    }
                }
            }
            .await;
            (c, r)
        })
        .await
    }

    /// Reads a job under its row lock, changes it with `f`, writes it back, in one
    /// database transaction (`lease`: the lease and node columns to write); a change of
    /// state of a job with a key settles its line's flags as of `now` ([`settle_lines`]).
    async fn change<T, F>(&self, id: &str, durable: bool, now: u64, f: F) -> Res<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Row) -> Res<(T, Option<u64>, bool)> + Send + 'static,
    {
        let id = id.to_string();
        let node = self.inner.node.clone();
        // Not durable: on a session committing without waiting for the WAL flush.
        self.run_in(!durable, move |inner, c| async move {
            let r = async {
                // Two round trips: `BEGIN` pipelined with the row's read under its lock,
                // then the write, its line's flags, the notification and `COMMIT` pipelined
                // (a failed write makes the `COMMIT` a rollback).
                let (b, row) = tokio::join!(
                    c.batch_execute("BEGIN"),
                    get_row_with(&*c, Some(&c.st.get_row_for_update), &id, true)
                );
                let mut row = match (b.map_err(pg_err), row) {
                    (Ok(()), Ok(Some(row))) => row,
                    (b, row) => {
                        rollback(&c).await;
                        b?;
                        row?;
                        return Err(QueueError::NotFound(id.clone()));
                    }
                };
                let before = row.job.state;
                let (out, lease, write) = match f(&mut row) {
                    Ok(v) => v,
                    Err(e) => {
                        rollback(&c).await;
                        // Its row was locked meanwhile: a change of its line may have left
                        // its flag as it was (see `SETTLE_LINES`).
                        if let Some(key) = &row.job.serial_key {
                            settle_apart(&c, &inner.lock_ns, key, now).await;
                        }
                        return Err(e);
                    }
                };
                // Only what may make a job claimable wakes the other workers: a job queued
                // (again), or one leaving its key's line. A job without a key ending (the
                // common finish) frees nothing: waking every idle worker of every node for
                // it cost each an empty claim (9 a request with one daemon, 23 with three).
                let notify_too = write
                    && (row.job.state == JobState::Queued
                        || (before != row.job.state && row.job.serial_key.is_some()));
                let lease_node = lease.map(|_| node.as_str());
                // The lines whose flags this change may move: its own (it may have entered or
                // left the line's states; and a change of the line that found the row locked
                // by this one left its flag as it was: see `SETTLE_LINES`).
                let mut lines: Vec<String> = Vec::new();
                lines.extend(row.job.serial_key.clone());
                // A parent that ended with children waiting for it (parentQueue, rare):
                // its children are settled in the same transaction, one after another.
                if write && before != row.job.state && row.job.state.is_final() && row.job.awaited {
                    let settled = async {
                        write_row_with(&*c, Some(&c.st.write_row), &row, lease, lease_node).await?;
                        settle_dependents(&*c, &row.job, before, &mut lines).await?;
                        settle_lines_on(&c, &inner.lock_ns, &lines, now).await?;
                        if notify_too {
                            notify_with(&*c, Some(&c.st.notify)).await?;
                        }
                        c.batch_execute("COMMIT").await.map_err(pg_err)
                    }
                    .await;
                    if let Err(e) = settled {
                        rollback(&c).await;
                        return Err(e);
                    }
                    return Ok(out);
                }
                let (w, settled, n, end) = tokio::join!(
                    async {
                        if write {
                            write_row_with(&*c, Some(&c.st.write_row), &row, lease, lease_node)
                                .await
                        } else {
                            Ok(())
                        }
                    },
                    settle_lines_on(&c, &inner.lock_ns, &lines, now),
                    async {
                        if notify_too {
                            notify_with(&*c, Some(&c.st.notify)).await
                        } else {
                            Ok(())
                        }
                    },
                    c.batch_execute("COMMIT"),
                );
                w?;
                settled?;
                n?;
                end.map_err(pg_err)?;
                Ok(out)
            }
            .await;
            (c, r)
        })
        .await
    }

    pub(crate) async fn finish(&self, id: &str, how: Finish, now: u64) -> Res<Job> {
        let id_owned = id.to_string();
        let node = self.inner.node.clone();
        self.change(id, false, now, move |row| {
            check_held_here(row, &id_owned, &node, "finished")?;
            finalize(row, how.state, now);
            row.job.outcome = how.outcome;
            row.job.result = how.result;
            drop_response_if_asked(&mut row.job);
            row.job.error = how.error;
            row.job.txn = None;
            Ok((row.job.clone(), None, true))
        })
        .await
    }

    pub(crate) async fn retry_later(
        &self,
        id: &str,
        error: String,
        code: Option<u32>,
        now: u64,
        backoff: Backoff,
        random: u64,
    ) -> Res<Job> {
        let id_owned = id.to_string();
        let node = self.inner.node.clone();
        self.change(id, true, now, move |row| {
            // Only the runner holding the lease decides its attempt's fate: a stalled
            // runner whose lease another node took (or whose job another node already
            // finished) must not queue it again — that would run it twice.
            check_held_here(row, &id_owned, &node, "retried")?;
            apply_stop_code(&mut row.job, code);
            row.job.error = Some(error);
            row.job.txn = None;
            if row.job.attempts >= row.job.max_attempts {
                let end = if row.job.fail_when_exhausted {
                    JobState::Failed
                } else {
                    JobState::Dead
                };
                finalize(row, end, now);
            } else {
                row.set_state(JobState::Queued);
                let wait = retry_wait(&row.job, backoff, random);
                row.job.not_before_ms = now + wait;
                row.job.slot = runnable_slot(&row.job, now);
            }
            Ok((row.job.clone(), None, true))
        })
        .await
    }

    pub(crate) async fn bury(&self, id: &str, error: String, now: u64) -> Res<Job> {
        let id_owned = id.to_string();
        let node = self.inner.node.clone();
        self.change(id, true, now, move |row| {
            if row.job.state.is_final() {
                return Ok((row.job.clone(), None, false));
            }
            check_held_here(row, &id_owned, &node, "buried")?;
            row.job.error = Some(error);
            row.job.txn = None;
            finalize(row, JobState::Dead, now);
            Ok((row.job.clone(), None, true))
        })
        .await
    }

    /// Cancels a job; with whether it runs on this node (a cancel of a running job). A
    /// job running on another node is announced on [`CANCEL_CHANNEL`] once the cancel is
    /// committed (that node's runner stops it; should the notification be lost, at its
    /// next heartbeat).
    pub(crate) async fn cancel(&self, id: &str, now: u64) -> Res<(Cancelled, bool)> {
        let (out, here) = self.cancel_row(id, now).await?;
        if let (Cancelled::Running(_), false) = (&out, here) {
            let id = id.to_string();
            // Best effort: the heartbeat reads the flag anyway.
            let sent = self
                .run(move |_, c| async move {
                    let r = c
                        .execute("SELECT pg_notify($1, $2)", &[&CANCEL_CHANNEL, &id])
                        .await
                        .map_err(pg_err)
                        .map(|_| ());
                    (c, r)
                })
                .await;
            if let Err(e) = sent {
                tracing::warn!(job = %id_of(&out), error = %e, "announcing a cancel to the node running the job; it sees it at its next heartbeat");
            }
        }
        Ok((out, here))
    }

    async fn cancel_row(&self, id: &str, now: u64) -> Res<(Cancelled, bool)> {
        let node = self.inner.node.clone();
        let here = move |row: &Row| row.node.as_deref() == Some(node.as_str());
        self.change(id, true, now, move |row| match row.job.state {
            JobState::Queued | JobState::Held => {
                row.job.held_by = None;
                finalize(row, JobState::Cancelled, now);
                row.job.error = Some("cancelled before it started".into());
                Ok(((Cancelled::Dequeued(row.job.clone()), false), None, true))
            }
            JobState::Running => {
                row.job.cancel_requested = true;
                // Its lease and node stay as they are (a running job's are kept unless set).
                Ok(((Cancelled::Running(row.job.clone()), here(row)), None, true))
            }
            _ => Ok((
                (Cancelled::AlreadyFinal(row.job.clone()), false),
                None,
                false,
            )),
        })
        .await
    }

    pub(crate) async fn requeue(&self, id: &str, now: u64) -> Res<Job> {
        let id_owned = id.to_string();
        self.change(id, true, now, move |row| {
            if row.job.state != JobState::Dead {
                return Err(QueueError::WrongState {
                    id: id_owned,
                    state: row.job.state,
                    what: "only a dead job can be requeued".into(),
                });
            }
            if row.job.payload.is_none() {
                return Err(QueueError::WrongState {
                    id: id_owned,
                    state: row.job.state,
                    what: "its request is no longer kept; submit it again".into(),
                });
            }
            row.set_state(JobState::Queued);
            row.job.attempts = 0;
            row.job.finished_ms = None;
            row.job.not_before_ms = now;
            row.job.cancel_requested = false;
            // An operator's requeue runs it: it no longer waits for parents.
            row.job.waiting_for.clear();
            row.job.slot = runnable_slot(&row.job, now);
            Ok((row.job.clone(), None, true))
        })
        .await
    }

    pub(crate) async fn discard(&self, id: &str, now: u64) -> Res<Job> {
        let id_owned = id.to_string();
        self.change(id, true, now, move |row| {
            if row.job.state != JobState::Dead {
                return Err(QueueError::WrongState {
                    id: id_owned,
                    state: row.job.state,
                    what: "only a dead job can be discarded (cancel a queued or running one)"
                        .into(),
                });
            }
            finalize(row, JobState::Cancelled, now);
            row.job.payload = None;
            row.job.txn = None;
            row.job.error = Some(format!(
                "discarded by an operator after it died ({})",
                row.job.error.as_deref().unwrap_or("no error recorded")
            ));
            Ok((row.job.clone(), None, true))
        })
        .await
    }

    pub(crate) async fn take_back_expired(&self, now: u64, max: usize) -> Res<Vec<Job>> {
        self.run(move |inner, mut c| async move {
            let r = async {
                let tx = c.transaction().await.map_err(pg_err)?;
                // Expired leases, and the jobs of nodes whose heartbeat stopped (killed):
                // those need not wait for their leases.
                let rows = tx
                    .query(
                        &format!(
                            "SELECT {JOB_COLUMNS} FROM provisio_jobs j WHERE state = 1
                             AND (lease_until_ms < $1 OR NOT EXISTS (SELECT 1 FROM provisio_nodes n
                                  WHERE n.node = j.node AND n.heartbeat_at > now() - $3::float8 * interval '1 second'))
                             ORDER BY lease_until_ms LIMIT $2 FOR UPDATE SKIP LOCKED"
                        ),
                        &[
                            &ms(now),
                            &(max as i64),
                            &(crate::store::NODE_EXPIRY.as_secs_f64()),
                        ],
                    )
                    .await
                    .map_err(pg_err)?;
                let out = take_back_rows(&tx, &rows, now, &inner.lock_ns).await?;
                if !out.is_empty() {
                    notify(&tx).await?;
                }
                tx.commit().await.map_err(pg_err)?;
                Ok(out)
            }
            .await;
            (c, r)
        })
        .await
    }
}

/// Queues again (or buries, after their last attempt) the running jobs of `rows`, whose
/// runner stopped: their lease ran out, their node died or lost the database; then settles
/// their lines' flags (`ns`: the store's lock namespace).
async fn take_back_rows(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &[tokio_postgres::Row],
    now: u64,
    ns: &str,
) -> Res<Vec<Job>> {
    let mut out = Vec::new();
    let mut lines = Vec::new();
    for row in rows {
        let mut row = Row::from(row)?;
        if row.job.attempts >= row.job.max_attempts {
            row.job.error = Some(
                "its worker stopped (lease expired) during its last attempt; requeue it \
                             to settle that attempt's transaction and go on"
                    .into(),
            );
            finalize(&mut row, JobState::Dead, now);
        } else {
            row.set_state(JobState::Queued);
            // Due at once (it was due when its attempt started).
            row.job.not_before_ms = row.job.started_ms.unwrap_or(now).min(now);
            row.job.slot = Slot::Ready;
        }
        write_row(tx, &row, None, None).await?;
        lines.extend(row.job.serial_key.clone());
        out.push(row.job);
    }
    settle_lines(tx, None, ns, &lines, now).await?;
    Ok(out)
}

impl PgQueue {
    pub(crate) async fn prune(&self, before_ms: u64, max: usize) -> Res<usize> {
        self.run(move |inner, mut c| async move {
            let r = async {
                // The jobs, and the lines their dead ones held (their keys), then those
                // lines' flags, in one database transaction.
                let tx = c.transaction().await.map_err(pg_err)?;
                let row = tx
                    .query_one(
                        "WITH gone AS (
                             DELETE FROM provisio_jobs WHERE id IN (
                                 SELECT id FROM provisio_jobs WHERE finished_ms < $1 AND state IN (2, 3, 4, 5)
                                 ORDER BY finished_ms LIMIT $2 FOR UPDATE SKIP LOCKED)
                             RETURNING entered, serial_key, state),
                         counted AS (
                             UPDATE provisio_job_tally t SET v = t.v + x.n FROM (
                                 SELECT k, coalesce((SELECT sum(g.entered[k + 1]) FROM gone g), 0)::bigint AS n
                                 FROM generate_series(0, 6) k
                                 UNION ALL SELECT 7, (SELECT count(*) FROM gone)) x
                             WHERE t.k = x.k RETURNING 1)
                         SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM counted),
                             ARRAY(SELECT serial_key FROM gone WHERE state = 4 AND serial_key IS NOT NULL)",
                        &[&ms(before_ms), &(max as i64)],
                    )
                    .await
                    .map_err(pg_err)?;
                let n: i64 = row.get(0);
                let lines: Vec<String> = row.get(2);
                // As of the pruning's time, as the sled queue's (`Queue::prune`).
                settle_lines(&tx, None, &inner.lock_ns, &lines, before_ms).await?;
                tx.commit().await.map_err(pg_err)?;
                if n > 0 {
                    // A dead job pruned lets its line go on, and the jobs waiting for it die.
                    settle_orphans(
                        &mut c,
                        "was removed by retention after it died",
                        before_ms,
                        &inner.lock_ns,
                    )
                    .await?;
                    notify(&*c).await?;
                }
                Ok(n as usize)
            }
            .await;
            (c, r)
        })
        .await
    }

    pub(crate) async fn release_held(&self, txn: &str, now: u64) -> Res<usize> {
        let txn = txn.to_string();
        self.run(move |inner, mut c| async move {
            let r = async {
                // Asked at the end of every transaction, and most hold nothing: one prepared
                // read first, outside a transaction (BEGIN, a locking read and COMMIT were
                // three round trips a request). No job can become held by `txn` meanwhile:
                // it has ended, and its `queue` steps' submissions returned before.
                let holds_any = c.st.holds_any.clone();
                let any: bool = c
                    .query_one(&holds_any, &[&txn])
                    .await
                    .map_err(pg_err)?
                    .get(0);
                if !any {
                    return Ok(0);
                }
                let held = c.st.held.clone();
                let tx = c.transaction().await.map_err(pg_err)?;
                let rows = tx.query(&held, &[&txn]).await.map_err(pg_err)?;
                let n = rows.len();
                // Each joins its key's line (or dies, which may hold it): their lines'
                // flags are settled after them.
                let mut lines = Vec::new();
                for row in &rows {
                    let mut row = Row::from(row)?;
                    row.job.held_by = None;
                    lines.extend(row.job.serial_key.clone());
                    if wait_or_die_for_parents(&tx, &mut row, now, &mut lines).await? {
                        write_row(&tx, &row, None, None).await?;
                        continue;
                    }
                    row.set_state(JobState::Queued);
                    row.job.slot = runnable_slot(&row.job, now);
                    // At the end of its key's line: it joins the line now.
                    row.line_pos = tx
                        .query_one("SELECT nextval('provisio_job_seq')", &[])
                        .await
                        .map_err(pg_err)?
                        .get(0);
                    write_row(&tx, &row, None, None).await?;
                }
                settle_lines(&tx, None, &inner.lock_ns, &lines, now).await?;
                if n > 0 {
                    notify(&tx).await?;
                }
                tx.commit().await.map_err(pg_err)?;
                Ok(n)
            }
            .await;
            (c, r)
        })
        .await
    }

    pub(crate) async fn discard_held(&self, txn: &str) -> Res<usize> {
        let txn = txn.to_string();
        self.run(move |inner, mut c| async move {
            let r = async {
                let row = c
                    .query_one(
                        "WITH gone AS (DELETE FROM provisio_jobs WHERE held_by = $1 RETURNING entered),
                         counted AS (
                             UPDATE provisio_job_tally t SET v = t.v + x.n FROM (
                                 SELECT k, coalesce((SELECT sum(g.entered[k + 1]) FROM gone g), 0)::bigint AS n
                                 FROM generate_series(0, 6) k
                                 UNION ALL SELECT 7, (SELECT count(*) FROM gone)) x
                             WHERE t.k = x.k RETURNING 1)
                         SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM counted)",
                        &[&txn],
                    )
                    .await
                    .map_err(pg_err)?;
                let n = row.get::<_, i64>(0) as usize;
                if n > 0 {
                    settle_orphans(
                        &mut c,
                        "was removed: the transaction that queued it rolled back",
                        super::wall_ms(),
                        &inner.lock_ns,
                    )
                    .await?;
                }
                Ok(n)
            }
            .await;
            (c, r)
        })
        .await
    }

    pub(crate) async fn settle_held<E>(
        &self,
        outcome: impl Fn(&str) -> Result<Option<bool>, E>,
        now: u64,
    ) -> Result<(usize, usize), SettleError<E>> {
        let txns: Vec<String> = self.block(move |_, c| async move {
            let r = c
                .query(
                    "SELECT DISTINCT held_by FROM provisio_jobs WHERE held_by IS NOT NULL ORDER BY 1",
                    &[],
                )
                .await
                .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect())
                .map_err(pg_err);
            (c, r)
        })?;
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

    /// When the first scheduled job that may run is due (the first of the
    /// `provisio_jobs_scheduled` index, as the sled queue's first scheduled key): a job held
    /// in its line waits for its line, not for a time.
    pub(crate) fn next_due(&self) -> Res<Option<u64>> {
        self.block(move |_, c| async move {
            let r = c
                .query_one(
                    "SELECT min(not_before_ms) FROM provisio_jobs WHERE state = 0 AND claimable = 1",
                    &[],
                )
                .await
                .map(|row| row.get::<_, Option<i64>>(0).map(|v| v.max(0) as u64))
                .map_err(pg_err);
            (c, r)
        })
    }

    pub(crate) fn list(&self, filter: &ListFilter, before: Option<u64>, limit: usize) -> Res<Page> {
        let filter = filter.clone();
        let limit = limit.clamp(1, 1000);
        self.block(move |_, c| async move {
            let r = async {
                let mut sql =
                    "SELECT body, entered, line_pos, node, seq FROM provisio_jobs WHERE true"
                        .to_string();
                let mut params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> =
                    Vec::new();
                let mut add =
                    |sql: &mut String,
                     cond: &str,
                     p: Box<dyn tokio_postgres::types::ToSql + Sync + Send>| {
                        params.push(p);
                        sql.push_str(&cond.replace('?', &format!("${}", params.len())));
                    };
                if let Some(s) = filter.state {
                    add(&mut sql, " AND state = ?", Box::new(st(s)));
                }
                if let Some(t) = &filter.target {
                    add(&mut sql, " AND target = ?", Box::new(t.clone()));
                }
                if let Some(n) = &filter.namespace {
                    add(
                        &mut sql,
                        " AND starts_with(target, ?)",
                        Box::new(format!("{n}/")),
                    );
                }
                if let Some(w) = &filter.subject {
                    add(&mut sql, " AND subject = ?", Box::new(w.clone()));
                }
                if let Some(t) = filter.since_ms {
                    add(&mut sql, " AND submitted_ms >= ?", Box::new(ms(t)));
                }
                if let Some(t) = filter.until_ms {
                    add(&mut sql, " AND submitted_ms < ?", Box::new(ms(t)));
                }
                if let Some(b) = before {
                    add(&mut sql, " AND seq < ?", Box::new(ms(b)));
                }
                sql.push_str(&format!(" ORDER BY seq DESC LIMIT {limit}"));
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                let rows = c.query(&sql, &refs).await.map_err(pg_err)?;
                let full = rows.len() == limit;
                let mut jobs = Vec::with_capacity(rows.len());
                let mut last = None;
                for row in &rows {
                    last = Some(row.get::<_, i64>(4) as u64);
                    jobs.push(Row::from(row)?.job);
                }
                Ok(Page {
                    jobs,
                    next: if full { last } else { None },
                })
            }
            .await;
            (c, r)
        })
    }
}

/// The counts of [`PgQueue::tally`] in one statement (one snapshot) and one pass over the
/// jobs: for each state, its jobs and how many times they entered each state; then (state
/// -1) the jobs pruned and how many times those entered each state (`provisio_job_tally`).
/// (It was nine passes: one for the counts, one per state for the entries, one for the
/// total, in two snapshots: 425 ms with 60,000 jobs, of which JIT compilation 212 ms.)
pub(crate) fn tally_sql() -> String {
    let sums: Vec<String> = (1..=STATES)
        .map(|k| format!("coalesce(sum(entered[{k}]), 0)"))
        .collect();
    format!(
        "SELECT state, count(*), ARRAY[{}]::bigint[] FROM provisio_jobs GROUP BY state
         UNION ALL
         SELECT -1::smallint, (SELECT v FROM provisio_job_tally WHERE k = 7),
             ARRAY(SELECT v FROM provisio_job_tally WHERE k < 7 ORDER BY k)",
        sums.join(", ")
    )
}

/// Takes a connection of a pool (`async_commit`: [`Inner::async_pool`], else
/// [`Inner::pool`]; connecting a new one when none is idle), runs `f`, and gives the
/// connection back unless it broke.
async fn with_client<T, F, Fut>(
    inner: Arc<Inner>,
    connector: crate::store::PgConnector,
    async_commit: bool,
    f: F,
) -> Res<T>
where
    F: FnOnce(Arc<Inner>, Conn) -> Fut,
    Fut: std::future::Future<Output = (Conn, Res<T>)>,
{
    let pool = if async_commit {
        &inner.async_pool
    } else {
        &inner.pool
    };
    let _permit = pool
        .permits
        .acquire()
        .await
        .map_err(|_| QueueError::Store(StoreError::Closed))?;
    let idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let client = match idle.filter(|c| !c.is_closed()) {
        Some(c) => c,
        None => {
            let client = connector.connect().await?;
            let (set, st) = tokio::join!(
                async {
                    if pool.async_commit {
                        client
                            .batch_execute("SET synchronous_commit TO off")
                            .await
                            .map_err(pg_err)
                    } else {
                        Ok(())
                    }
                },
                Prepared::new(&client)
            );
            set?;
            Conn { client, st: st? }
        }
    };
    let (client, out) = f(inner.clone(), client).await;
    if !client.is_closed() {
        pool.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(client);
    }
    out
}

fn encode(job: &Job) -> Vec<u8> {
    serde_json::to_vec(job).unwrap_or_default()
}

async fn next_seq(c: &Client) -> Res<u64> {
    let seq: i64 = c
        .query_typed_one("SELECT nextval('provisio_job_seq')", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    Ok(seq as u64)
}

/// Inserts a new job's row in `state` (`seq`: its sequence number, also its place in its
/// key's line); 0 rows when a job with the same idempotency key is already there.
async fn insert_job(
    c: &impl tokio_postgres::GenericClient,
    job: &Job,
    seq: i64,
    state: JobState,
    now: u64,
) -> Res<u64> {
    let mut entered = vec![0i64; STATES];
    entered[state_index(state)] = 1;
    // Queued without a key: first in its own line (see `SCHEMA_V7`); with one, flagged by
    // the line's settling ([`settle_lines`]) after this insert.
    let claimable: i16 = match (state, &job.serial_key) {
        (JobState::Queued, None) if job.not_before_ms <= now => 2,
        (JobState::Queued, None) => 1,
        _ => 0,
    };
    // One message (parse, bind, execute): pipelined in one round trip with a `BEGIN` and
    // the statements after it.
    c.execute_typed(
        "INSERT INTO provisio_jobs (id, seq, state, priority, not_before_ms, serial_key,
             line_pos, subject, target, idempotency_key, submitted_ms, held_by, entered, body,
             cancel_requested, claimable)
         VALUES ($1, $2, $3, $4, $5, $6, $2, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (subject, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        &[
            (&job.id, Type::TEXT),
            (&seq, Type::INT8),
            (&st(state), Type::INT2),
            (&job.priority, Type::INT2),
            (&ms(job.not_before_ms), Type::INT8),
            (&job.serial_key, Type::TEXT),
            (&job.subject, Type::TEXT),
            (&job.target, Type::TEXT),
            (&job.idempotency_key, Type::TEXT),
            (&ms(now), Type::INT8),
            (&job.held_by, Type::TEXT),
            (&entered, Type::INT8_ARRAY),
            (&encode(job), Type::BYTEA),
            (&job.cancel_requested, Type::BOOL),
            (&claimable, Type::INT2),
        ],
    )
    .await
    .map_err(pg_err)
}

async fn notify(c: &impl tokio_postgres::GenericClient) -> Res<()> {
    notify_with(c, None).await
}

/// Runs `sql` with typed parameters in one message: through `prepared` (this
/// connection's prepared statement of the same SQL and types: bind and execute only) when
/// there is one, else parse, bind and execute (so that it pipelines either way).
async fn execute_with(
    c: &impl tokio_postgres::GenericClient,
    prepared: Option<&Statement>,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<u64, tokio_postgres::Error> {
    match prepared {
        Some(st) => {
            let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
            c.execute(st, &values).await
        }
        None => c.execute_typed(sql, params).await,
    }
}

/// [`execute_with`] for a query.
async fn query_with(
    c: &impl tokio_postgres::GenericClient,
    prepared: Option<&Statement>,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    match prepared {
        Some(st) => {
            let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
            c.query(st, &values).await
        }
        None => c.query_typed(sql, params).await,
    }
}

/// [`notify`] through a prepared statement when there is one.
async fn notify_with(
    c: &impl tokio_postgres::GenericClient,
    prepared: Option<&Statement>,
) -> Res<()> {
    // One message, so that it can be pipelined before a `COMMIT`.
    execute_with(c, prepared, NOTIFY, &[(&CHANNEL, Type::TEXT)])
        .await
        .map_err(pg_err)?;
    Ok(())
}

/// Ends a transaction begun by hand (`BEGIN` pipelined with its first statements) that
/// will not commit. A connection that broke is not given back to the pool.
async fn rollback(c: &Client) {
    let _ = c.batch_execute("ROLLBACK").await;
}

/// The name of the lock of a key's line taken by the changes of its `claimable` flags
/// ([`LOCK_LINES`]; `ns`: the store's lock namespace).
fn line_head_lock_name(ns: &str, key: &str) -> String {
    format!("provisio line head {ns} {key}")
}

/// Sets the `claimable` flags of the lines of `keys` as of `now` (see [`SETTLE_LINES`]):
/// the last statements of a database transaction that changed them (one entry per
/// change), before its `COMMIT`. Two messages, sent at the first poll (prepared: bind and
/// execute; else parse, bind and execute), so that they pipeline with the statements
/// around them. Nothing to do without keys.
async fn settle_lines(
    c: &impl tokio_postgres::GenericClient,
    prepared: Option<(&Statement, &Statement)>,
    ns: &str,
    keys: &[String],
    now: u64,
) -> Res<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = keys.iter().map(|k| line_head_lock_name(ns, k)).collect();
    let now = ms(now);
    let lock_params: [(&(dyn ToSql + Sync), Type); 1] = [(&names, Type::TEXT_ARRAY)];
    let settle_params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&keys, Type::TEXT_ARRAY), (&now, Type::INT8)];
    let (locked, settled) = tokio::join!(
        query_with(c, prepared.map(|p| p.0), LOCK_LINES, &lock_params),
        execute_with(c, prepared.map(|p| p.1), SETTLE_LINES, &settle_params),
    );
    locked.map_err(pg_err)?;
    settled.map_err(pg_err)?;
    Ok(())
}

/// [`settle_lines`] through a pooled connection's prepared statements.
async fn settle_lines_on(c: &Conn, ns: &str, keys: &[String], now: u64) -> Res<()> {
    settle_lines(
        &**c,
        Some((&c.st.lock_lines, &c.st.settle_lines)),
        ns,
        keys,
        now,
    )
    .await
}

/// [`settle_lines`] of one line in a database transaction of its own, after a transaction
/// that locked a row of the line rolled back (a change of the line meanwhile may have left
/// the row's flag as it was). Best effort: a failure is logged, and the line's next change
/// settles it.
async fn settle_apart(c: &Client, ns: &str, key: &str, now: u64) {
    let keys = [key.to_string()];
    let (b, settled, end) = tokio::join!(
        c.batch_execute("BEGIN"),
        settle_lines(c, None, ns, &keys, now),
        c.batch_execute("COMMIT"),
    );
    if let Err(e) = b.map_err(pg_err).and(settled).and(end.map_err(pg_err)) {
        rollback(c).await;
        tracing::warn!(error = %e, "settling the claimable flags of a job's line");
    }
}

/// The per-key lock a claim (or a claiming submission) of a serialization key holds until
/// its database transaction ends; `false`: another claim of the key holds it.
async fn line_lock(c: &Conn, ns: &str, key: &str) -> Res<bool> {
    let name = format!("provisio line {ns} {key}");
    // One message: pipelined with the statements around it.
    let params: [&(dyn ToSql + Sync); 1] = [&name];
    Ok(c.query_one(&c.st.line_lock, &params)
        .await
        .map_err(pg_err)?
        .get(0))
}

async fn get_row(
    c: &impl tokio_postgres::GenericClient,
    id: &str,
    for_update: bool,
) -> Res<Option<Row>> {
    get_row_with(c, None, id, for_update).await
}

/// [`get_row`] through `prepared` when it is this connection's prepared statement of it.
async fn get_row_with(
    c: &impl tokio_postgres::GenericClient,
    prepared: Option<&Statement>,
    id: &str,
    for_update: bool,
) -> Res<Option<Row>> {
    let sql = match prepared {
        Some(_) => String::new(),
        None => get_row_sql(for_update),
    };
    // One message: pipelined after a `BEGIN` in one round trip.
    let rows = query_with(c, prepared, &sql, &[(&id, Type::TEXT)])
        .await
        .map_err(pg_err)?;
    rows.first().map(Row::from).transpose()
}

async fn by_idempotency(c: &Client, subject: &str, idem: &str) -> Res<Option<Job>> {
    let rows = c
        .query_typed(
            &format!(
                "SELECT {JOB_COLUMNS} FROM provisio_jobs WHERE subject = $1 AND idempotency_key = $2"
            ),
            &[(&subject, Type::TEXT), (&idem, Type::TEXT)],
        )
        .await
        .map_err(pg_err)?;
    Ok(rows.first().map(Row::from).transpose()?.map(|r| r.job))
}

/// Writes a job's row back (its columns from the job).
async fn write_row(
    c: &impl tokio_postgres::GenericClient,
    row: &Row,
    lease_until: Option<u64>,
    node: Option<&str>,
) -> Res<()> {
    write_row_with(c, None, row, lease_until, node).await
}

/// [`write_row`] through `prepared` when it is this connection's prepared statement of it.
async fn write_row_with(
    c: &impl tokio_postgres::GenericClient,
    prepared: Option<&Statement>,
    row: &Row,
    lease_until: Option<u64>,
    node: Option<&str>,
) -> Res<()> {
    let job = &row.job;
    // One message (parse, bind, execute, or bind and execute when prepared): pipelined
    // before a `COMMIT` in one round trip.
    execute_with(
        c,
        prepared,
        WRITE_ROW,
        &[
            (&job.id, Type::TEXT),
            (&st(job.state), Type::INT2),
            (&job.priority, Type::INT2),
            (&ms(job.not_before_ms), Type::INT8),
            (&row.line_pos, Type::INT8),
            (&lease_until.map(ms), Type::INT8),
            (&node, Type::TEXT),
            (&job.held_by, Type::TEXT),
            (&job.finished_ms.map(ms), Type::INT8),
            (&row.entered, Type::INT8_ARRAY),
            (&encode(job), Type::BYTEA),
            (&job.cancel_requested, Type::BOOL),
            (&claimable_alone(job), Type::INT2),
        ],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

/// The `claimable` flag of a job (re)entering the queue without a key (see [`WRITE_ROW`]):
/// scheduled for later, or claimable at once, as its slot says ([`runnable_slot`]).
fn claimable_alone(job: &Job) -> i16 {
    match job.slot {
        Slot::Scheduled(_) => 1,
        _ => 2,
    }
}

fn runnable_slot(job: &Job, now: u64) -> Slot {
    if job.not_before_ms > now {
        Slot::Scheduled(job.not_before_ms)
    } else {
        Slot::Ready
    }
}

/// A job reaches a final state (a dead one keeps its payload, for a requeue, and its place
/// in its line: the `state IN (0, 1, 4)` of the line's queries).
fn finalize(row: &mut Row, state: JobState, now: u64) {
    row.job.slot = Slot::Nowhere;
    row.set_state(state);
    row.job.finished_ms = Some(now);
    if state != JobState::Dead {
        row.job.payload = None;
    }
}

#[allow(dead_code)]
const _STATES_ARE_SEVEN: [JobState; STATES] = ALL_STATES;

/// A running job's attempt is settled (finished, retried, buried) only by the node holding
/// its lease: its lease ran out here and another node claimed it (that node's runner settles
/// it), or it is no longer running at all (a stalled runner must not overwrite, or run
/// again, what another did).
fn check_held_here(row: &Row, id: &str, node: &str, what: &str) -> Res<()> {
    if row.job.state != JobState::Running {
        return Err(QueueError::WrongState {
            id: id.to_string(),
            state: row.job.state,
            what: format!("only a running job can be {what}"),
        });
    }
    if row.node.as_deref() != Some(node) {
        return Err(QueueError::WrongState {
            id: id.to_string(),
            state: row.job.state,
            what: "its lease ran out and another node runs it now".into(),
        });
    }
    Ok(())
}

/// The database lost mid-run (see the PostgreSQL store's module documentation): the jobs
/// this node ran before the loss stop here, and are queued again when the database is
/// back, so that a node (this one or another) takes them over and recovers their
/// transactions, as after a restart.
impl PgQueue {
    /// Registers, once per store, what the store runs on its new session after a loss,
    /// before writes go through again: the jobs this node held are taken back.
    fn take_back_on_reconnect(&self) {
        let connector = self.pg().connector();
        let node = self.inner.node.clone();
        let wake = self.inner.wake.clone();
        let ns = self.inner.lock_ns.clone();
        self.pg().on_reconnect(
            "queue",
            Arc::new(move || {
                let connector = connector.clone();
                let node = node.clone();
                let wake = wake.clone();
                let ns = ns.clone();
                Box::pin(async move {
                    let mut c = connector.connect().await?;
                    let back = take_back_node(&mut c, &node, wall_ms(), &ns)
                        .await
                        .map_err(|e| StoreError::Io(e.to_string()))?;
                    if !back.is_empty() {
                        tracing::warn!(
                            jobs = back.len(),
                            "took back the jobs this node ran when the database was lost"
                        );
                        wake.notify_waiters();
                    }
                    Ok(())
                })
            }),
        );
    }

    /// [`PgQueue::claim`], remembering the link epoch the job was claimed in; nothing
    /// while the database is lost, and nothing when it was lost during the claim (the job
    /// is taken back when it returns).
    pub(crate) async fn claim_in_epoch(&self, now: u64, lease: Duration) -> Res<Option<Job>> {
        if self.pg().unavailable().is_some() {
            return Ok(None);
        }
        let epoch = self.pg().epoch();
        let job = self.claim(now, lease).await?;
        Ok(job.and_then(|job| self.remember_claim(job, epoch)))
    }

    /// [`PgQueue::submit_claimed`], remembering the link epoch the job was claimed in.
    pub(crate) async fn submit_claimed_in_epoch(
        &self,
        new: NewJob,
        now: u64,
        lease: Duration,
    ) -> Res<Result<Job, NewJob>> {
        let epoch = self.pg().epoch();
        let r = self.submit_claimed(new, now, lease).await?;
        // Tests: the database lost right after the claim (`PROVISIO_FAIL_CLAIM_LOST=1`,
        // once per process).
        #[cfg(feature = "failpoints")]
        if r.is_ok() && std::env::var("PROVISIO_FAIL_CLAIM_LOST").is_ok_and(|v| v == "1") {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| self.pg().fail_link(epoch));
        }
        Ok(match r {
            Ok(job) => {
                let id = job.id.clone();
                match self.remember_claim(job, epoch) {
                    Some(job) => Ok(job),
                    // Claimed as the database went away: the job is in the queue, taken
                    // back with this node's other jobs; the caller waits for it as for any
                    // job, and must not submit it again.
                    None => return Err(QueueError::ClaimLost { id }),
                }
            }
            Err(new) => Err(new),
        })
    }

    fn remember_claim(&self, job: Job, epoch: u64) -> Option<Job> {
        if self.pg().epoch() != epoch {
            return None;
        }
        self.inner
            .claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job.id.clone(), epoch);
        Some(job)
    }

    /// The link epoch job `id` was claimed in here (asked once, by its runner).
    pub(crate) fn take_claim_epoch(&self, id: &str) -> Option<u64> {
        self.inner
            .claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }
}

/// Takes back every job `node` holds (it lost the database: its runs stopped).
async fn take_back_node(c: &mut Client, node: &str, now: u64, ns: &str) -> Res<Vec<Job>> {
    let tx = c.transaction().await.map_err(pg_err)?;
    let rows = tx
        .query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM provisio_jobs WHERE state = 1 AND node = $1 FOR UPDATE"
            ),
            &[&node],
        )
        .await
        .map_err(pg_err)?;
    let out = take_back_rows(&tx, &rows, now, ns).await?;
    if !out.is_empty() {
        notify(&tx).await?;
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(out)
}

/// The wall clock in ms (the queue's times).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// MPS `parentQueue` on PostgreSQL: jobs waiting for other jobs (`provisio_job_parents`).
impl PgQueue {
    /// [`PgQueue::submit_with`] of a job with parents, in one database transaction that
    /// locks the parents' rows so that none ends unseen meanwhile.
    async fn submit_with_parents(
        &self,
        new: NewJob,
        options: JobOptions,
        now: u64,
    ) -> Res<Submitted> {
        self.run(move |inner, mut c| async move {
            // The lines of the parents locked (see `parent_row`), and the job's own.
            let mut lines = Vec::new();
            let r = async {
                let tx = c.transaction().await.map_err(pg_err)?;
                if let Some(idem) = &new.idempotency_key {
                    let rows = tx
                        .query(
                            &format!(
                                "SELECT {JOB_COLUMNS} FROM provisio_jobs WHERE subject = $1 AND idempotency_key = $2"
                            ),
                            &[&new.subject, idem],
                        )
                        .await
                        .map_err(pg_err)?;
                    if let Some(row) = rows.first() {
                        return Ok(Submitted {
                            job: Row::from(row)?.job,
                            created: false,
                        });
                    }
                }
                let mut job = new_job(new, 0, JobState::Queued, now, &options);
                let mut waiting = Vec::new();
                for id in job.parents.clone() {
                    no_nul(&id, "a parent job id")?;
                    let parent = parent_row(&tx, &id, &mut lines).await?;
                    if parent.is_none() {
                        return Err(QueueError::UnknownParent(id));
                    }
                    match parent_is(parent.as_ref()) {
                        ParentIs::Done => {}
                        ParentIs::Pending => waiting.push(id),
                        ParentIs::Gone(why) => return Err(QueueError::ParentGone { id, why }),
                    }
                }
                let seq: i64 = tx
                    .query_one("SELECT nextval('provisio_job_seq')", &[])
                    .await
                    .map_err(pg_err)?
                    .get(0);
                job.seq = seq as u64;
                job.serial_pos = seq as u64;
                let state = if job.held_by.is_some() || !waiting.is_empty() {
                    JobState::Held
                } else {
                    JobState::Queued
                };
                job.state = state;
                if job.held_by.is_none() && !waiting.is_empty() {
                    job.slot = Slot::Nowhere;
                    job.waiting_for = waiting;
                }
                let inserted = insert_job(&tx, &job, seq, state, now).await?;
                if inserted == 0 {
                    let idem = job.idempotency_key.clone().unwrap_or_default();
                    drop(tx);
                    if let Some(existing) = by_idempotency(&c, &job.subject, &idem).await? {
                        return Ok(Submitted {
                            job: existing,
                            created: false,
                        });
                    }
                    return Err(QueueError::NotFound(job.id));
                }
                wait_for_parents(&tx, &job).await?;
                if state == JobState::Queued {
                    lines.extend(job.serial_key.clone());
                }
                settle_lines(&tx, None, &inner.lock_ns, &lines, now).await?;
                if state == JobState::Queued {
                    notify(&tx).await?;
                }
                tx.commit().await.map_err(pg_err)?;
                lines.clear();
                Ok(Submitted { job, created: true })
            }
            .await;
            // Refused (a parent unknown or gone) after parents were locked: their lines.
            if r.is_err() {
                lines.sort();
                lines.dedup();
                for key in &lines {
                    settle_apart(&c, &inner.lock_ns, key, now).await;
                }
            }
            (c, r)
        })
        .await
    }
}

/// A parent's job, its row locked until the transaction ends (`FOR UPDATE`: it is marked
/// `awaited` next, and a shared lock upgraded by two children at once would deadlock).
/// Its key goes to `lines`: its line's flags are settled after (a change of the line that
/// found its row locked left its flag as it was, see [`SETTLE_LINES`]).
async fn parent_row(
    tx: &tokio_postgres::Transaction<'_>,
    id: &str,
    lines: &mut Vec<String>,
) -> Res<Option<Job>> {
    let rows = tx
        .query(
            &format!("SELECT {JOB_COLUMNS} FROM provisio_jobs WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await
        .map_err(pg_err)?;
    let job = rows.first().map(Row::from).transpose()?.map(|r| r.job);
    if let Some(key) = job.as_ref().and_then(|j| j.serial_key.clone()) {
        lines.push(key);
    }
    Ok(job)
}

/// Records that `job` waits for each of its `waiting_for`, and marks each parent
/// `awaited` (only an awaited job's end looks for jobs waiting for it).
async fn wait_for_parents(tx: &tokio_postgres::Transaction<'_>, job: &Job) -> Res<()> {
    for parent in &job.waiting_for {
        if let Some(mut row) = get_row(tx, parent, true).await? {
            if !row.job.awaited {
                row.job.awaited = true;
                write_row(tx, &row, None, None).await?;
            }
        }
        tx.execute(
            "INSERT INTO provisio_job_parents (parent, child) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[parent, &job.id],
        )
        .await
        .map_err(pg_err)?;
    }
    Ok(())
}

/// A held job released by its transaction's commit: `true` when it does not run yet — it
/// waits for parents (stays held), or is dead because one will never succeed.
async fn wait_or_die_for_parents(
    tx: &tokio_postgres::Transaction<'_>,
    row: &mut Row,
    now: u64,
    lines: &mut Vec<String>,
) -> Res<bool> {
    let mut waiting = Vec::new();
    for id in row.job.parents.clone() {
        match parent_is(parent_row(tx, &id, lines).await?.as_ref()) {
            ParentIs::Done => {}
            ParentIs::Pending => waiting.push(id),
            ParentIs::Gone(why) => {
                row.job.error = Some(parent_gone_message(&id, &why));
                finalize(row, JobState::Dead, now);
                return Ok(true);
            }
        }
    }
    if waiting.is_empty() {
        return Ok(false);
    }
    row.job.slot = Slot::Nowhere;
    row.job.waiting_for = waiting;
    wait_for_parents(tx, &row.job).await?;
    Ok(true)
}

/// The job `parent` ended (final; it was `before`) in this transaction: the jobs waiting
/// for it run once it was their last, or are dead, naming it (a dead parent keeps them
/// waiting).
async fn settle_dependents(
    tx: &impl tokio_postgres::GenericClient,
    parent: &Job,
    before: JobState,
    lines: &mut Vec<String>,
) -> Res<()> {
    if parent.state == JobState::Dead {
        return Ok(());
    }
    let why = if before == JobState::Dead {
        Some("was discarded by an operator after it died")
    } else {
        end_reason(parent.state)
    };
    let now = parent.finished_ms.unwrap_or_else(super::wall_ms);
    let children = tx
        .query(
            "DELETE FROM provisio_job_parents WHERE parent = $1 RETURNING child",
            &[&parent.id],
        )
        .await
        .map_err(pg_err)?;
    for child in children {
        let child: String = child.get(0);
        settle_child(tx, &child, &parent.id, why, now, lines).await?;
    }
    Ok(())
}

/// One job waiting for `parent`, which ended (`why` is `None`: it succeeded); its key, when
/// it joins its line or dies, goes to `lines` (whose flags the caller settles).
async fn settle_child(
    tx: &impl tokio_postgres::GenericClient,
    child: &str,
    parent: &str,
    why: Option<&str>,
    now: u64,
    lines: &mut Vec<String>,
) -> Res<()> {
    let Some(mut row) = get_row(tx, child, true).await? else {
        return Ok(());
    };
    // Locked: its line's flags are settled after, whatever becomes of it (see
    // `SETTLE_LINES`).
    lines.extend(row.job.serial_key.clone());
    if row.job.state != JobState::Held
        || row.job.held_by.is_some()
        || !row.job.waiting_for.iter().any(|p| p == parent)
    {
        return Ok(());
    }
    match why {
        None => {
            row.job.waiting_for.retain(|p| p != parent);
            if row.job.waiting_for.is_empty() {
                row.set_state(JobState::Queued);
                row.job.slot = runnable_slot(&row.job, now);
                row.line_pos = tx
                    .query_one("SELECT nextval('provisio_job_seq')", &[])
                    .await
                    .map_err(pg_err)?
                    .get(0);
                notify(tx).await?;
            }
        }
        Some(why) => {
            row.job.error = Some(parent_gone_message(parent, why));
            finalize(&mut row, JobState::Dead, now);
        }
    }
    write_row(tx, &row, None, None).await
}

/// After jobs were deleted (retention, a rolled-back transaction's held jobs): the jobs
/// that waited for one of them are dead, naming it (`why`: what became of it).
async fn settle_orphans(c: &mut Client, why: &str, now: u64, ns: &str) -> Res<()> {
    let tx = c.transaction().await.map_err(pg_err)?;
    let rows = tx
        .query(
            "DELETE FROM provisio_job_parents p
             WHERE NOT EXISTS (SELECT 1 FROM provisio_jobs j WHERE j.id = p.parent)
             RETURNING parent, child",
            &[],
        )
        .await
        .map_err(pg_err)?;
    let mut lines = Vec::new();
    for row in rows {
        let (parent, child): (String, String) = (row.get(0), row.get(1));
        settle_child(&tx, &child, &parent, Some(why), now, &mut lines).await?;
    }
    settle_lines(&tx, None, ns, &lines, now).await?;
    tx.commit().await.map_err(pg_err)?;
    Ok(())
}
