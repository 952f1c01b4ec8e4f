//! The PostgreSQL store: every space in one table of `bytea` keys, written in one database
//! transaction per group of batches by a single writer, read through a few pipelined
//! connections, all driven by the store's own tokio runtime on its own threads.
//!
//! Why its own runtime: [`Store::get`], [`Store::scan`] and [`Store::scan_range`] are
//! synchronous and are called from the executor's async tasks. A read sends its query to a
//! task of the store's runtime and blocks the calling thread on the reply; the store's
//! threads never wait for the caller's runtime (they never call the synchronous API), so
//! the wait cannot deadlock, on a multi-thread or a current-thread caller runtime alike. A
//! blocked caller costs what a sled read that misses the page cache costs: one round trip
//! to the server (about 0.1 ms on loopback).
//!
//! Writes: [`Store::write`] queues the batch for the writer task and awaits its answer.
//! The writer takes every batch queued meanwhile (group commit), nets their writes in
//! order (last write of a key wins, as applying them in order would leave it), and sends
//! `BEGIN`, one `INSERT … ON CONFLICT` of the puts, one `DELETE` of the deletes and `COMMIT`
//! pipelined, in one round trip. A group with a durable batch commits with
//! `synchronous_commit = on` (the commit waits for the WAL flush, which also covers every
//! earlier commit); a group of non-durable ones with `synchronous_commit = off`: it is
//! visible to every read once it returns and becomes durable with the next durable commit
//! (PostgreSQL flushes its WAL in order), as the trait asks.
//!
//! Failures: losing the database mid-run (the server stopped or restarted, the network
//! broke) loses the node's session and with it the advisory locks of the transactions it
//! owns, so another node may take them over. The store then marks its [`Link`] down and
//! starts a new *epoch*: it forgets every ownership, parks every write (and every new
//! ownership) until it is connected again, and reconnects with backoff (0.1 s doubling up
//! to 5 s, for as long as it takes). A write that was in flight (its outcome unknown) or
//! queued before the loss, and every later write of a transaction owned before it, fails
//! with [`StoreError::Lost`] once the database is back: nothing made before the loss is
//! acknowledged after it, and such a transaction never goes on in this process; recovery
//! (here or on another node) finishes it from what the database holds. The daemon stops
//! the jobs that ran before the loss at once (see [`PgStore::link`]). Reads reconnect.
//!
//! One process per database (and schema): the store holds a session-level advisory lock
//! for its whole life on a connection of its own; a second process is refused with
//! [`StoreError::Locked`]. The queue relies on in-process locks today, so several daemons on
//! one database need the queue's own PostgreSQL implementation first.
//!
//! The schema is versioned ([`MIGRATIONS`], recorded in `provisio_schema`) and brought up
//! to date when the store opens, under that lock; a database written by a newer provisio
//! (a version this build does not know) is refused ([`StoreError::SchemaTooNew`]).

use super::pg_tls::{self, MakeTls, TlsMode};
use super::{Batch, KeyRange, KeyValue, Space, Store, StoreError};
use async_trait::async_trait;
use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

/// The schema versions, in order: (version, what it does, SQL). Each runs in its own
/// transaction, recorded in `provisio_schema`; never edit one that was released, add one.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "one key-value table for every space: (space, key) primary key, bytea keys sorted bytewise",
        "CREATE TABLE provisio_kv (
         space smallint NOT NULL,
         key bytea NOT NULL,
         value bytea NOT NULL,
         PRIMARY KEY (space, key)
     )",
    ),
    (
        2,
        "several processes on one database: the nodes (one row per process, heartbeats) and the job queue's own tables (claims with FOR UPDATE SKIP LOCKED, leases, serialization lines, idempotency)",
        super::super::queue::postgres::SCHEMA_V2,
    ),
    (
        3,
        "jobs waiting for other jobs (MPS queueContext/parentQueue): provisio_job_parents",
        super::super::queue::postgres::SCHEMA_V3,
    ),
    (
        4,
        "cross-node deadlock detection for provider-state keys: which transaction holds and which waits for which key, recorded only while some transaction waits",
        SCHEMA_KEY_WAITS,
    ),
    (
        5,
        "fewer index entries a job's row writes: listing by state indexes only the states it cannot find otherwise, the running jobs are indexed by node (a heartbeat is a HOT update), fillfactor 80",
        super::super::queue::postgres::SCHEMA_V5,
    ),
    (
        6,
        "a job's cancel flag in a column of its own (filled from the job records): a heartbeat no longer reads the job's record, request included",
        super::super::queue::postgres::SCHEMA_V6,
    ),
    (
        7,
        "which jobs a claim can take, indexed (a claimable flag kept by every change of a job's line, filled from the jobs): a claim no longer walks the jobs held in their line or scheduled for later",
        super::super::queue::postgres::SCHEMA_V7,
    ),
];

/// Migration 4: the waits-for graph of provider-state keys across nodes. Rows are written
/// only on the waiting path (a transaction that waits for a key another node holds records
/// the keys it holds and the key it waits for); `lock` is the key's advisory lock, `pid` the
/// server process of the node's session that holds the advisory locks (a row whose session
/// or node is gone counts for nothing). Unlogged: the rows describe live sessions only (a
/// server crash ends them all, and empties the tables), and writing them costs no WAL and
/// no WAL flush at commit.
const SCHEMA_KEY_WAITS: &str = "
CREATE UNLOGGED TABLE provisio_key_holds (
    lock bigint NOT NULL,
    txn text COLLATE \"C\" NOT NULL,
    node text NOT NULL,
    pid integer NOT NULL,
    PRIMARY KEY (lock, txn)
);
CREATE INDEX provisio_key_holds_txn ON provisio_key_holds (txn);
CREATE UNLOGGED TABLE provisio_key_waits (
    txn text COLLATE \"C\" NOT NULL,
    lock bigint NOT NULL,
    node text NOT NULL,
    pid integer NOT NULL,
    PRIMARY KEY (txn, lock)
);
";

/// One poll of a wait for a provider-state key another node holds, on the node's session
/// (whose server process holds the node's advisory locks): records the keys the waiting
/// transaction `$1` holds (`$3`, lock names) and the key it waits for (`$2`), then follows
/// the waits-for graph from the holders of `$2` through transactions older than `$1`
/// (`holds` and `waits` of live sessions of live nodes, `$4` this node, `$5` the node
/// expiry in seconds). A transaction of that chain waiting for a key `$1` holds closes a
/// cycle in which `$1` is the youngest: the answer is the transaction holding `$2` on it.
/// (The statement does not see its own inserts; it needs only the others' rows and `$3`.)
/// Rows of sessions that are gone (a node killed, or one that lost the database) are
/// removed on the way.
const KEY_WAIT_SQL: &str = "
WITH RECURSIVE
held AS (SELECT DISTINCT hashtextextended(n, 0) AS lock FROM unnest($3::text[]) AS n),
hold AS (
    INSERT INTO provisio_key_holds (lock, txn, node, pid)
    SELECT lock, $1, $4, pg_backend_pid() FROM held
    ON CONFLICT (lock, txn) DO NOTHING
),
wait AS (
    INSERT INTO provisio_key_waits (txn, lock, node, pid)
    VALUES ($1, hashtextextended($2, 0), $4, pg_backend_pid())
    ON CONFLICT (txn, lock) DO NOTHING
),
sessions AS (SELECT pid FROM pg_stat_activity),
gone_holds AS (
    DELETE FROM provisio_key_holds h WHERE h.pid NOT IN (SELECT pid FROM sessions)
),
gone_waits AS (
    DELETE FROM provisio_key_waits w WHERE w.pid NOT IN (SELECT pid FROM sessions)
),
live AS (
    SELECT node FROM provisio_nodes
    WHERE heartbeat_at > now() - $5::float8 * interval '1 second'
),
holds AS (
    SELECT h.lock, h.txn FROM provisio_key_holds h
    WHERE h.txn < $1 COLLATE \"C\"
      AND h.pid IN (SELECT pid FROM sessions) AND h.node IN (SELECT node FROM live)
),
waits AS (
    SELECT w.txn, w.lock FROM provisio_key_waits w
    WHERE w.txn < $1 COLLATE \"C\"
      AND w.pid IN (SELECT pid FROM sessions) AND w.node IN (SELECT node FROM live)
),
chain (txn, path) AS (
    SELECT h.txn, ARRAY[h.txn] FROM holds h WHERE h.lock = hashtextextended($2, 0)
  UNION ALL
    SELECT h.txn, c.path || h.txn
    FROM chain c JOIN waits w ON w.txn = c.txn JOIN holds h ON h.lock = w.lock
    WHERE h.txn <> ALL (c.path) AND cardinality(c.path) < 64
)
SELECT c.path[1] FROM chain c JOIN waits w ON w.txn = c.txn
WHERE w.lock IN (SELECT lock FROM held)
LIMIT 1";

/// The newest schema version this build knows.
pub fn latest_schema_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// How many batches (at most) one database transaction of the writer commits.
const GROUP_BATCHES: usize = 1024;
/// How many value bytes (about) one database transaction of the writer commits.
const GROUP_BYTES: usize = 8 * 1024 * 1024;
/// The connections reads are spread over (each pipelines the reads sent to it).
const READERS: usize = 2;
/// A read that takes longer fails (the server hangs or the network is gone).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection attempt that takes longer fails (and is retried), unless the URL sets
/// `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first and the longest pause between connection attempts at open.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How to open a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// How long to keep retrying (with exponential backoff, 0.1 s doubling up to 5 s) while
    /// the server cannot be reached at open; zero tries once.
    pub connect_retry: Duration,
    /// Names the sessions in `pg_stat_activity` (`application_name`), e.g. `provisio serve`.
    pub application: String,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            connect_retry: Duration::from_secs(30),
            application: "provisio".to_string(),
        }
    }
}

/// What opening the store did to the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The schema version the database is at now.
    pub version: i32,
    /// The migrations this open applied: (version, description).
    pub applied: Vec<(i32, String)>,
}

/// The prepared reads of one connection.
struct Reader {
    client: Client,
    get: Statement,
    /// `[forward, reverse]` × `[to the end of the space, below an end key]`.
    range: [[Statement; 2]; 2],
}

/// The state of a store's connection to its database (see [`PgStore::link`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Counts the losses of the database since the store opened: a transaction owned (a
    /// write queued, a job claimed) in an earlier epoch was lost with its session.
    pub epoch: u64,
    /// Connected: the node's session holds its locks and writes go through.
    pub up: bool,
    /// The store was closed.
    pub closed: bool,
}

/// What runs on the node's new session after the database came back, before writes go
/// through again (the queue takes back the jobs this node ran before the loss).
pub(crate) type ReconnectHook =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), StoreError>> + Send + Sync>;

/// What the handle and the store's tasks share.
struct Shared {
    config: tokio_postgres::Config,
    /// The TLS of every session (none unless the URL's `sslmode` asks for it).
    tls: MakeTls,
    tls_mode: TlsMode,
    /// The URL with its password masked, for messages.
    shown: String,
    readers: Vec<tokio::sync::Mutex<Option<Arc<Reader>>>>,
    next_reader: AtomicUsize,
    /// Database transactions the writer committed, and the batches they carried.
    commits: AtomicU64,
    batches: AtomicU64,
    /// Rows the writer's committed transactions inserted (keys known to be new), upserted
    /// (`INSERT … ON CONFLICT DO UPDATE`) and deleted.
    rows: [AtomicU64; 3],
    /// This process's node id (a row of `provisio_nodes` while the store is open).
    node: String,
    /// The node's own session: it holds the advisory locks of the transactions this
    /// process owns (released by the server if the process dies) and beats the heartbeat.
    /// `None` while the database is lost; a new one after each reconnection.
    session: Mutex<Option<Arc<Client>>>,
    /// Whether the session is up, and its epoch.
    link: watch::Sender<Link>,
    /// Set when the store closes (the end of its session is then expected).
    closing: AtomicBool,
    /// Names the node's row (`provisio_nodes.application`).
    application: String,
    /// Run on each new session after a loss, by name.
    hooks: Mutex<Vec<(&'static str, ReconnectHook)>>,
    /// The store's runtime (where reconnections run).
    runtime: OnceLock<tokio::runtime::Handle>,
    /// What advisory lock keys start with: the database and schema, so that two stores in
    /// two schemas of one database never share a lock.
    lock_ns: OnceLock<String>,
    /// The transactions this process owns (so that a second task of this process is
    /// refused too: the server's advisory locks are re-entrant within a session).
    owned: Mutex<std::collections::HashSet<String>>,
    /// The transactions this process owned when the database was lost: their writes are
    /// refused (until this process owns one again, to recover it).
    forfeited: Mutex<std::collections::HashSet<String>>,
}

impl Shared {
    /// The node's current session (`None` while the database is lost).
    fn session(&self) -> Option<Arc<Client>> {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn link_now(&self) -> Link {
        *self.link.borrow()
    }

    /// Waits until the session is up (parks while the database is lost); `Closed` once
    /// the store closed.
    async fn wait_up(&self) -> Result<Link, StoreError> {
        let mut rx = self.link.subscribe();
        let link = *rx
            .wait_for(|l| l.up || l.closed)
            .await
            .map_err(|_| StoreError::Closed)?;
        if link.closed {
            return Err(StoreError::Closed);
        }
        Ok(link)
    }

    fn lost_error(&self) -> StoreError {
        StoreError::Lost {
            url: self.shown.clone(),
        }
    }

    /// The database was lost during `epoch` (a session or the writer's connection broke):
    /// marks the link down, forgets every ownership and starts reconnecting. Nothing when
    /// that epoch already ended or the store is closing.
    fn link_lost(self: &Arc<Self>, epoch: u64, why: &str) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        let mut lost = false;
        self.link.send_if_modified(|l| {
            if l.up && l.epoch == epoch && !l.closed {
                l.up = false;
                l.epoch += 1;
                lost = true;
                true
            } else {
                false
            }
        });
        if !lost {
            return;
        }
        tracing::error!(url = %self.shown, reason = why, "lost the PostgreSQL store: this node's transactions stop (another node, or this one once reconnected, recovers them); reconnecting");
        let owned = std::mem::take(&mut *self.owned.lock().unwrap_or_else(|e| e.into_inner()));
        self.forfeited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(owned);
        let old = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(old);
        // On the store's runtime, whoever noticed the loss.
        match self.runtime.get() {
            Some(h) => drop(h.spawn(reconnect_loop(self.clone()))),
            None => drop(tokio::spawn(reconnect_loop(self.clone()))),
        }
    }
}

/// One write request to the writer task.
struct WriteRequest {
    batch: Batch,
    /// The first `fresh` writes of `batch` put keys that are not in the store
    /// ([`Store::write_journal`]).
    fresh: usize,
    durable: bool,
    /// The link's epoch when the write was made: refused if the database was lost since.
    epoch: u64,
    done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

/// The store in a PostgreSQL database (see the module documentation).
pub struct PgStore {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    writes: tokio::sync::mpsc::UnboundedSender<WriteRequest>,
    schema: SchemaStatus,
    /// Dropped (closed) to stop the store's runtime thread.
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.shared.shown)
            .finish()
    }
}

/// `url` with the password (in the user part or a `password=` parameter) replaced by
/// `***`: the form every message and log line shows.
pub fn mask_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let from = rest_start + colon + 1;
                out.replace_range(from..rest_start + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let masked: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out = format!("{head}{}", masked.join("&"));
    }
    out
}

/// Whether `url` names a PostgreSQL store (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Parses the URL into a client configuration and its TLS; errors never show the
/// password.
fn parse_url(
    url: &str,
    options: &PgOptions,
) -> Result<(tokio_postgres::Config, MakeTls, TlsMode), StoreError> {
    let shown = mask_url(url);
    let bad = |message: String| StoreError::BadUrl {
        url: shown.clone(),
        message,
    };
    if !is_postgres_url(url) {
        return Err(bad(
            "it does not start with `postgres://` or `postgresql://`".to_string(),
        ));
    }
    let tls = pg_tls::split_url(url);
    let mut config = tokio_postgres::Config::from_str(&tls.url)
        // The parser's message may quote the part it could not read, password included.
        .map_err(|e| bad(mask_secret(&e.to_string(), url)))?;
    if config.get_hosts().is_empty() {
        return Err(bad(
            "it names no host (postgres://USER:PASSWORD@HOST:PORT/DATABASE)".to_string(),
        ));
    }
    if config.get_user().is_none() {
        return Err(bad(
            "it names no user (postgres://USER:PASSWORD@HOST:PORT/DATABASE)".to_string(),
        ));
    }
    if tls.mode == TlsMode::Off {
        // `prefer` too: provisio does not try TLS first (see pg_tls).
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
    let make_tls = MakeTls(pg_tls::client_config(tls.mode, tls.root_file.as_deref()).map_err(bad)?);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name(format!(
            "{} (pid {})",
            options.application,
            std::process::id()
        ));
    }
    Ok((config, make_tls, tls.mode))
}

/// `text` with every occurrence of the URL's password replaced by `***`.
fn mask_secret(text: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|auth| auth.rsplit_once('@'))
        .and_then(|(user, _)| user.split_once(':'))
        .map(|(_, p)| p.to_string())
        .filter(|p| !p.is_empty());
    match password {
        Some(p) => text.replace(&p, "***"),
        None => text.to_string(),
    }
}

/// Whether a connection error will not go away by retrying (wrong password, unknown user
/// or database, a refused option).
fn is_permanent(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        [
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::INVALID_CATALOG_NAME,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::UNDEFINED_OBJECT,
            SqlState::FEATURE_NOT_SUPPORTED,
            SqlState::INVALID_PARAMETER_VALUE,
            SqlState::PROTOCOL_VIOLATION,
        ]
        .contains(c)
    })
}

/// A TLS failure retrying does not cure, said plainly: the server offers no TLS though the
/// URL requires it, or its certificate is not trusted.
fn tls_refusal(shared: &Shared, e: &tokio_postgres::Error) -> Option<String> {
    if shared.tls_mode == TlsMode::Off {
        return None;
    }
    let text = describe(e);
    let mode = shared.tls_mode.name();
    if text.contains("server does not support TLS") {
        return Some(format!("the server does not offer TLS, but the URL requires it (sslmode={mode}): turn `ssl = on` on the server (with a certificate and key), or use a URL without sslmode only on a trusted network"));
    }
    if text.contains("invalid peer certificate")
        || text.contains("certificate") && text.contains("handshake")
    {
        return Some(format!("the server's TLS certificate is not trusted (sslmode={mode}): {text}; name the authority that signed it with `sslrootcert=/path/ca.pem` in the URL (verify-full also needs the certificate to name the URL's host)"));
    }
    None
}

/// The server's words for a failure (its message and hint for database errors).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.hint() {
            Some(h) => format!("{} ({h})", db.message()),
            None => db.message().to_string(),
        },
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// Connects once; the connection is driven by a task of the current runtime. `on_end`
/// runs when the connection ends.
async fn connect_once(
    shared: &Shared,
    on_end: impl FnOnce() + Send + 'static,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = shared.config.connect(shared.tls.clone()).await?;
    tokio::spawn(async move {
        let _ = connection.await;
        on_end();
    });
    Ok(client)
}

/// Connects, retrying with exponential backoff while the server cannot be reached, for at
/// most `retry` in all.
async fn connect_retrying(
    shared: &Shared,
    retry: Duration,
    on_end: impl FnOnce() + Send + Clone + 'static,
) -> Result<Client, StoreError> {
    let started = Instant::now();
    let mut pause = BACKOFF_FIRST;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match connect_once(shared, on_end.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) if tls_refusal(shared, &e).is_some() => {
                return Err(StoreError::Refused {
                    url: shared.shown.clone(),
                    message: tls_refusal(shared, &e).unwrap_or_default(),
                })
            }
            Err(e) if is_permanent(&e) => {
                return Err(StoreError::Refused {
                    url: shared.shown.clone(),
                    message: describe(&e),
                })
            }
            Err(e) => {
                let waited = started.elapsed();
                if waited + pause > retry {
                    return Err(StoreError::Unreachable {
                        url: shared.shown.clone(),
                        attempts,
                        waited_secs: waited.as_secs_f64(),
                        message: describe(&e),
                    });
                }
                tracing::warn!(
                    url = %shared.shown,
                    error = %describe(&e),
                    "the PostgreSQL store cannot be reached; retrying in {:?}",
                    pause
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn db_error(shared: &Shared, what: &str, e: &tokio_postgres::Error) -> StoreError {
    StoreError::Io(format!(
        "PostgreSQL store at `{}`: {what}: {}",
        shared.shown,
        describe(e)
    ))
}

/// How often a node beats its heartbeat (`provisio_nodes.heartbeat_at`).
pub const NODE_HEARTBEAT: Duration = Duration::from_secs(2);
/// A node whose heartbeat is older than this is taken for dead: the jobs it leased are
/// taken back without waiting for their leases to run out.
pub const NODE_EXPIRY: Duration = Duration::from_secs(10);

/// Registers this process as a node (a row of `provisio_nodes`), and removes the rows of
/// nodes long dead.
async fn register_node(shared: &Shared, client: &Client) -> Result<(), StoreError> {
    let application = &shared.application;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let pid = i32::try_from(std::process::id()).unwrap_or(0);
    client
        .execute(
            // Again after the database was lost (the row may have survived it).
            "INSERT INTO provisio_nodes (node, pid, host, application) VALUES ($1, $2, $3, $4)
             ON CONFLICT (node) DO UPDATE SET heartbeat_at = now()",
            &[&shared.node, &pid, &host, &application],
        )
        .await
        .map_err(|e| db_error(shared, "registering this process as a node", &e))?;
    client
        .execute(
            "DELETE FROM provisio_nodes WHERE heartbeat_at < now() - interval '1 hour'",
            &[],
        )
        .await
        .map_err(|e| db_error(shared, "removing nodes long dead", &e))?;
    Ok(())
}

/// Beats the node's heartbeat on its current session until the store closes; a session
/// found broken marks the database lost.
async fn heartbeat_loop(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(NODE_HEARTBEAT).await;
        let link = shared.link_now();
        if link.closed {
            return;
        }
        let Some(client) = shared.session() else {
            continue;
        };
        if client.is_closed() {
            shared.link_lost(link.epoch, "the node's session ended");
            continue;
        }
        if let Err(e) = client
            .execute(
                "UPDATE provisio_nodes SET heartbeat_at = now() WHERE node = $1",
                &[&shared.node],
            )
            .await
        {
            tracing::warn!(error = %describe(&e), "the node's heartbeat failed");
            if client.is_closed() || is_link_error(&e) {
                shared.link_lost(link.epoch, "the node's heartbeat found its session broken");
            }
        }
    }
}

/// Whether an error means the connection (or the server) went away, rather than a
/// statement failing: the database is lost.
fn is_link_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // Class 08 (connection exception), 57P01–57P03 (the server shutting down or
        // starting).
        Some(c) => c.code().starts_with("08") || c.code().starts_with("57P"),
        // Not the server's words: an I/O error or the connection ending.
        None => e.as_db_error().is_none(),
    }
}

/// The node's session of `epoch`: its end marks the database lost.
async fn connect_session(
    shared: &Arc<Shared>,
    epoch: u64,
) -> Result<Client, tokio_postgres::Error> {
    let s = shared.clone();
    connect_once(shared, move || {
        s.link_lost(epoch, "the node's session ended")
    })
    .await
}

/// Reconnects after a loss, with backoff (0.1 s doubling up to 5 s), for as long as it
/// takes (or until the store closes).
async fn reconnect_loop(shared: Arc<Shared>) {
    let mut pause = BACKOFF_FIRST;
    loop {
        tokio::time::sleep(pause).await;
        let link = shared.link_now();
        if link.closed || link.up || shared.closing.load(Ordering::Acquire) {
            return;
        }
        match reconnect(&shared, link.epoch).await {
            Ok(()) => {
                tracing::warn!(url = %shared.shown, epoch = link.epoch, "the PostgreSQL store is back: this node takes work again");
                return;
            }
            Err(e) => {
                tracing::warn!(url = %shared.shown, error = %e, "the PostgreSQL store cannot be reached yet; retrying in {:?}", pause);
            }
        }
        pause = (pause * 2).min(BACKOFF_MAX);
    }
}

/// One reconnection: a new session, the node's row again, the hooks (the queue takes
/// back the jobs this node ran before the loss), then the link is up in `epoch`.
async fn reconnect(shared: &Arc<Shared>, epoch: u64) -> Result<(), StoreError> {
    let client = connect_session(shared, epoch)
        .await
        .map_err(|e| db_error(shared, "connecting again", &e))?;
    let client = Arc::new(client);
    register_node(shared, &client).await?;
    let hooks: Vec<ReconnectHook> = shared
        .hooks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, h)| h.clone())
        .collect();
    for hook in hooks {
        hook().await?;
    }
    *shared.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
    let mut up = false;
    shared.link.send_if_modified(|l| {
        if l.epoch == epoch && !l.closed && !l.up {
            l.up = true;
            up = true;
            true
        } else {
            false
        }
    });
    // Broken again meanwhile (its end was ignored while the link was down).
    if up && client.is_closed() {
        shared.link_lost(epoch, "the node's new session ended");
    }
    Ok(())
}

/// Refuses a database whose schema (version `found`) a newer provisio wrote than this one
/// knows (`known`), naming who applied it.
async fn refuse_newer_schema(
    shared: &Shared,
    client: &Client,
    found: i32,
    known: i32,
) -> Result<(), StoreError> {
    if found <= known {
        return Ok(());
    }
    let by: String = client
        .query_one(
            "SELECT applied_by FROM provisio_schema WHERE version = $1",
            &[&found],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or_default();
    Err(StoreError::SchemaTooNew {
        url: shared.shown.clone(),
        found,
        known,
        by,
    })
}

/// For a command that only reads: the schema must be there and up to date already;
/// nothing is created.
async fn check_schema(shared: &Shared, client: &Client) -> Result<SchemaStatus, StoreError> {
    let err = |what: &str, e: &tokio_postgres::Error| db_error(shared, what, e);
    let exists: bool = client
        .query_one("SELECT to_regclass('provisio_schema') IS NOT NULL", &[])
        .await
        .map_err(|e| err("looking for the schema version table", &e))?
        .get(0);
    let found: i32 = if exists {
        client
            .query_one("SELECT coalesce(max(version), 0) FROM provisio_schema", &[])
            .await
            .map_err(|e| err("reading the schema version", &e))?
            .get(0)
    } else {
        0
    };
    let known = latest_schema_version();
    refuse_newer_schema(shared, client, found, known).await?;
    if found < known {
        let schema: Option<String> = client
            .query_one("SELECT current_schema()", &[])
            .await
            .map_err(|e| err("reading the current schema", &e))?
            .get(0);
        return Err(StoreError::NotMigrated {
            url: shared.shown.clone(),
            schema: schema.unwrap_or_else(|| "(none)".into()),
            found,
            known,
        });
    }
    Ok(SchemaStatus {
        version: found,
        applied: Vec::new(),
    })
}

/// Brings the schema up to date (under the store's lock), or refuses a newer one.
async fn migrate(
    shared: &Shared,
    client: &mut Client,
    apply: bool,
) -> Result<SchemaStatus, StoreError> {
    let err = |what: &str, e: &tokio_postgres::Error| db_error(shared, what, e);
    if !apply {
        return check_schema(shared, client).await;
    }
    let schema: Option<String> = client
        .query_one("SELECT current_schema()", &[])
        .await
        .map_err(|e| err("reading the current schema", &e))?
        .get(0);
    if schema.is_none() {
        return Err(StoreError::Io(format!(
            "PostgreSQL store at `{}`: no schema to create tables in (the search_path names no existing schema)\n  hint: create the schema, or fix `options=-csearch_path=…` in the URL",
            shared.shown
        )));
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS provisio_schema (
                 version integer PRIMARY KEY,
                 description text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now(),
                 applied_by text NOT NULL
             )",
        )
        .await
        .map_err(|e| err("creating the schema version table", &e))?;
    let found: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM provisio_schema", &[])
        .await
        .map_err(|e| err("reading the schema version", &e))?
        .get(0);
    let known = latest_schema_version();
    refuse_newer_schema(shared, client, found, known).await?;
    let by = format!("provisio {}", env!("CARGO_PKG_VERSION"));
    let mut applied = Vec::new();
    for (version, description, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        let tx = client
            .transaction()
            .await
            .map_err(|e| err("starting a migration", &e))?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| err(&format!("applying schema migration {version}"), &e))?;
        tx.execute(
            "INSERT INTO provisio_schema (version, description, applied_by) VALUES ($1, $2, $3)",
            &[version, description, &by],
        )
        .await
        .map_err(|e| err(&format!("recording schema migration {version}"), &e))?;
        tx.commit()
            .await
            .map_err(|e| err(&format!("committing schema migration {version}"), &e))?;
        tracing::info!(url = %shared.shown, version, "applied schema migration: {description}");
        applied.push((*version, (*description).to_string()));
    }
    Ok(SchemaStatus {
        version: known.max(found),
        applied,
    })
}

const RANGE_SQL: [[&str; 2]; 2] = [
    [
        "SELECT key, value FROM provisio_kv WHERE space = $1 AND key >= $2 ORDER BY key LIMIT $3",
        "SELECT key, value FROM provisio_kv WHERE space = $1 AND key >= $2 AND key < $4 ORDER BY key LIMIT $3",
    ],
    [
        "SELECT key, value FROM provisio_kv WHERE space = $1 AND key >= $2 ORDER BY key DESC LIMIT $3",
        "SELECT key, value FROM provisio_kv WHERE space = $1 AND key >= $2 AND key < $4 ORDER BY key DESC LIMIT $3",
    ],
];

async fn prepare_reader(shared: &Shared, client: Client) -> Result<Reader, StoreError> {
    let prep = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .prepare(sql)
                .await
                .map_err(|e| db_error(shared, "preparing a read", &e))
        }
    };
    let (get, f0, f1, r0, r1) = tokio::join!(
        prep("SELECT value FROM provisio_kv WHERE space = $1 AND key = $2"),
        prep(RANGE_SQL[0][0]),
        prep(RANGE_SQL[0][1]),
        prep(RANGE_SQL[1][0]),
        prep(RANGE_SQL[1][1]),
    );
    Ok(Reader {
        get: get?,
        range: [[f0?, f1?], [r0?, r1?]],
        client,
    })
}

impl Shared {
    /// A reader connection (connecting again when its connection ended).
    async fn reader(self: &Arc<Self>) -> Result<Arc<Reader>, StoreError> {
        let slot = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let mut held = self.readers[slot].lock().await;
        if let Some(r) = held.as_ref().filter(|r| !r.client.is_closed()) {
            return Ok(r.clone());
        }
        let client = connect_retrying(self, Duration::ZERO, || {}).await?;
        let reader = Arc::new(prepare_reader(self, client).await?);
        *held = Some(reader.clone());
        Ok(reader)
    }
}

/// The writer's prepared statements.
struct Writer {
    client: Client,
    upsert: Statement,
    /// A plain insert, for keys known to be new: no look for the key first and no
    /// speculative insertion (an upsert's new row costs three WAL records, an insert's two).
    insert: Statement,
    delete: Statement,
    /// Non-durable commits acknowledged since the last durable one.
    unsynced: bool,
}

/// The writes of a group, netted: the last write of each key.
#[derive(Default)]
struct Net {
    put_spaces: Vec<i16>,
    put_keys: Vec<Vec<u8>>,
    put_values: Vec<Vec<u8>>,
    /// Puts of keys known to be new (every write of the key in the group was such a put).
    ins_spaces: Vec<i16>,
    ins_keys: Vec<Vec<u8>>,
    ins_values: Vec<Vec<u8>>,
    del_spaces: Vec<i16>,
    del_keys: Vec<Vec<u8>>,
}

impl Net {
    /// Whether the group writes nothing.
    fn is_empty(&self) -> bool {
        self.put_keys.is_empty() && self.ins_keys.is_empty() && self.del_keys.is_empty()
    }

    /// The same writes with every insert made an upsert: what the group is committed as
    /// again when a key thought new was there after all.
    fn upserting(&self) -> Net {
        let cat = |a: &[i16], b: &[i16]| [a, b].concat();
        let cat_bytes = |a: &[Vec<u8>], b: &[Vec<u8>]| [a, b].concat();
        Net {
            put_spaces: cat(&self.put_spaces, &self.ins_spaces),
            put_keys: cat_bytes(&self.put_keys, &self.ins_keys),
            put_values: cat_bytes(&self.put_values, &self.ins_values),
            del_spaces: self.del_spaces.clone(),
            del_keys: self.del_keys.clone(),
            ..Net::default()
        }
    }
}

/// A key of the writer's group: its space's tag and the key.
type GroupKey = (i16, Vec<u8>);

fn net(batches: &mut [WriteRequest]) -> Net {
    // The last write of each key, and whether every write of it was a fresh put.
    let mut last: HashMap<GroupKey, (Option<Vec<u8>>, bool)> = HashMap::new();
    let mut order: Vec<GroupKey> = Vec::new();
    for r in batches.iter_mut() {
        let fresh = r.fresh;
        for (i, (space, key, value)) in std::mem::take(&mut r.batch.writes).into_iter().enumerate()
        {
            let k = (i16::from(space.tag()), key);
            let new = i < fresh && value.is_some();
            match last.get_mut(&k) {
                Some(entry) => *entry = (value, false),
                None => {
                    order.push(k.clone());
                    last.insert(k, (value, new));
                }
            }
        }
    }
    let mut n = Net::default();
    for k in order {
        let (value, new) = last.remove(&k).unwrap_or((None, false));
        let (space, key) = k;
        match value {
            Some(v) if new => {
                n.ins_spaces.push(space);
                n.ins_keys.push(key);
                n.ins_values.push(v);
            }
            Some(v) => {
                n.put_spaces.push(space);
                n.put_keys.push(key);
                n.put_values.push(v);
            }
            None => {
                n.del_spaces.push(space);
                n.del_keys.push(key);
            }
        }
    }
    n
}

impl Writer {
    /// Commits a group in one transaction, in one round trip.
    async fn commit(&mut self, net: &Net, durable: bool) -> Result<(), tokio_postgres::Error> {
        let c = &self.client;
        let begin = if durable {
            "BEGIN"
        } else {
            "BEGIN; SET LOCAL synchronous_commit TO off"
        };
        let has_puts = !net.put_keys.is_empty();
        let has_inserts = !net.ins_keys.is_empty();
        let has_deletes = !net.del_keys.is_empty();
        // A durable commit must wait for the WAL flush even when its writes change nothing
        // (deletes of absent keys): a transaction id makes the commit write a record.
        let force = durable && self.unsynced;
        let (b, u, i, d, x, end) = tokio::join!(
            c.batch_execute(begin),
            async {
                if has_puts {
                    c.execute(
                        &self.upsert,
                        &[&net.put_spaces, &net.put_keys, &net.put_values],
                    )
                    .await
                    .map(|_| ())
                } else {
                    Ok(())
                }
            },
            async {
                if has_inserts {
                    c.execute(
                        &self.insert,
                        &[&net.ins_spaces, &net.ins_keys, &net.ins_values],
                    )
                    .await
                    .map(|_| ())
                } else {
                    Ok(())
                }
            },
            async {
                if has_deletes {
                    c.execute(&self.delete, &[&net.del_spaces, &net.del_keys])
                        .await
                        .map(|_| ())
                } else {
                    Ok(())
                }
            },
            async {
                if force {
                    c.batch_execute("SELECT pg_current_xact_id()").await
                } else {
                    Ok(())
                }
            },
            c.batch_execute("COMMIT"),
        );
        b?;
        u?;
        i?;
        d?;
        x?;
        end?;
        self.unsynced = !durable && (has_puts || has_inserts || has_deletes || self.unsynced);
        if durable {
            self.unsynced = false;
        }
        Ok(())
    }
}

async fn prepare_writer(shared: &Shared, client: Client) -> Result<Writer, StoreError> {
    // The delete joins the (few) keys of a group with the table: the planner, expecting
    // many rows from `unnest`, chose a hash join over a scan of the whole table once it had
    // grown (4–6 ms a delete, a third of the server's CPU per request in `pg_bench
    // nodes`). On this session only: index lookups, one per key.
    client
        .batch_execute("SET enable_hashjoin = off; SET enable_mergejoin = off")
        .await
        .map_err(|e| db_error(shared, "setting up the writer's session", &e))?;
    let upsert = client
        .prepare(
            "INSERT INTO provisio_kv (space, key, value)
             SELECT * FROM unnest($1::int2[], $2::bytea[], $3::bytea[])
             ON CONFLICT (space, key) DO UPDATE SET value = EXCLUDED.value",
        )
        .await
        .map_err(|e| db_error(shared, "preparing the writes", &e))?;
    let insert = client
        .prepare(
            "INSERT INTO provisio_kv (space, key, value)
             SELECT * FROM unnest($1::int2[], $2::bytea[], $3::bytea[])",
        )
        .await
        .map_err(|e| db_error(shared, "preparing the writes", &e))?;
    let delete = client
        .prepare(
            "DELETE FROM provisio_kv k USING unnest($1::int2[], $2::bytea[]) AS d(space, key)
             WHERE k.space = d.space AND k.key = d.key",
        )
        .await
        .map_err(|e| db_error(shared, "preparing the writes", &e))?;
    Ok(Writer {
        client,
        upsert,
        insert,
        delete,
        unsynced: false,
    })
}

/// The writer task: commits the queued batches group by group, in the order they came.
/// Parks while the database is lost; refuses the writes made before a loss.
async fn write_loop(
    shared: Arc<Shared>,
    writer: Writer,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<WriteRequest>,
) {
    // The writer's connection, and the epoch it was made in.
    let mut writer: Option<(Writer, u64)> = Some((writer, 0));
    let mut group: Vec<WriteRequest> = Vec::new();
    while let Some(first) = queue.recv().await {
        group.push(first);
        let mut bytes = 0usize;
        while group.len() < GROUP_BATCHES && bytes < GROUP_BYTES {
            match queue.try_recv() {
                Ok(r) => {
                    bytes += r
                        .batch
                        .writes
                        .iter()
                        .map(|(_, k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                        .sum::<usize>();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        let link = match shared.wait_up().await {
            Ok(l) => l,
            Err(e) => {
                for r in group.drain(..) {
                    let _ = r.done.send(Err(e.clone()));
                }
                continue;
            }
        };
        // Made before the database was lost: refused (see the module documentation).
        for r in group.extract_if(.., |r| r.epoch != link.epoch) {
            let _ = r.done.send(Err(shared.lost_error()));
        }
        if group.is_empty() {
            continue;
        }
        let result = commit_group(&shared, &mut writer, link.epoch, &mut group).await;
        for r in group.drain(..) {
            let _ = r.done.send(result.clone());
        }
    }
}

/// Commits one group on the writer's connection of `epoch` (connecting it first after a
/// loss). When the connection breaks, the database is lost: waits until it is back and
/// answers [`StoreError::Lost`] (the outcome is unknown, so it is never acknowledged).
async fn commit_group(
    shared: &Arc<Shared>,
    writer: &mut Option<(Writer, u64)>,
    epoch: u64,
    group: &mut [WriteRequest],
) -> Result<(), StoreError> {
    if writer
        .as_ref()
        .is_none_or(|(w, e)| *e != epoch || w.client.is_closed())
    {
        *writer = None;
        let connected = match connect_once(shared, || {}).await {
            Ok(c) => prepare_writer(shared, c).await,
            Err(e) => Err(db_error(shared, "connecting the writer", &e)),
        };
        match connected {
            Ok(w) => *writer = Some((w, epoch)),
            Err(e) => {
                tracing::warn!(error = %e, "the PostgreSQL store's writer cannot connect");
                shared.link_lost(epoch, "the writer cannot connect");
                let _ = shared.wait_up().await;
                return Err(shared.lost_error());
            }
        }
    }
    let Some((w, _)) = writer.as_mut() else {
        return Err(shared.lost_error());
    };
    let durable = group.iter().any(|r| r.durable);
    let mut net = net(group);
    if net.is_empty() && !(durable && w.unsynced) {
        return Ok(());
    }
    let mut outcome = w.commit(&net, durable).await;
    if matches!(&outcome, Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION)) {
        // A key written as new was there after all (a transaction's records written again
        // from a stale view): the group rolled back whole; it is committed again with
        // every write an upsert, as before the inserts existed.
        tracing::warn!(url = %shared.shown, "a journal key written as new was already in the PostgreSQL store; the group of writes is committed again as upserts");
        net = net.upserting();
        outcome = w.commit(&net, durable).await;
    }
    match outcome {
        Ok(()) => {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            shared
                .batches
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            for (counter, n) in
                shared
                    .rows
                    .iter()
                    .zip([net.ins_keys.len(), net.put_keys.len(), net.del_keys.len()])
            {
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(())
        }
        Err(e) if w.client.is_closed() || is_link_error(&e) => {
            tracing::error!(url = %shared.shown, error = %describe(&e), "the connection to the PostgreSQL store broke during a write: its outcome is unknown; it is refused once the database is back");
            *writer = None;
            shared.link_lost(epoch, "the writer's connection broke during a write");
            let _ = shared.wait_up().await;
            Err(shared.lost_error())
        }
        Err(e) => Err(db_error(shared, "writing a batch", &e)),
    }
}

impl PgStore {
    /// Connects to the database named by `url` (`postgres://USER:PASSWORD@HOST:PORT/DB`;
    /// `?options=-csearch_path%3DSCHEMA` picks a schema), retrying while it cannot be reached
    /// for up to [`PgOptions::connect_retry`], takes the store's lock, and brings the
    /// schema up to date. Blocks the calling thread until then.
    pub fn open(url: &str, options: &PgOptions) -> Result<PgStore, StoreError> {
        Self::open_with(url, options, true)
    }

    /// Opens the store as [`PgStore::open`] does, for a command that only reads: nothing
    /// is created or migrated; a database without the Provisio schema (or with an older
    /// version of it) is refused with [`StoreError::NotMigrated`], which says how to
    /// create it.
    pub fn open_existing(url: &str, options: &PgOptions) -> Result<PgStore, StoreError> {
        Self::open_with(url, options, false)
    }

    fn open_with(url: &str, options: &PgOptions, apply: bool) -> Result<PgStore, StoreError> {
        let (config, tls, tls_mode) = parse_url(url, options)?;
        let shared = Arc::new(Shared {
            config,
            tls,
            tls_mode,
            shown: mask_url(url),
            readers: (0..READERS)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next_reader: AtomicUsize::new(0),
            commits: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            rows: Default::default(),
            node: uuid::Uuid::now_v7().to_string(),
            session: Mutex::new(None),
            link: watch::Sender::new(Link {
                epoch: 0,
                up: false,
                closed: false,
            }),
            closing: AtomicBool::new(false),
            application: options.application.clone(),
            hooks: Mutex::new(Vec::new()),
            runtime: OnceLock::new(),
            lock_ns: OnceLock::new(),
            owned: Mutex::new(std::collections::HashSet::new()),
            forfeited: Mutex::new(std::collections::HashSet::new()),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let retry = options.connect_retry;
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("provisio-pg".into())
            .spawn(move || {
                let shared = thread_shared;
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("provisio-pg")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError::Io(format!(
                            "cannot start the PostgreSQL store's runtime: {e}"
                        ))));
                        return;
                    }
                };
                let _ = shared.runtime.set(runtime.handle().clone());
                let opened = runtime.block_on(start(shared.clone(), retry, apply));
                match opened {
                    Ok((schema, writes)) => {
                        let _ = ready_tx.send(Ok((runtime.handle().clone(), schema, writes)));
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        runtime.shutdown_timeout(Duration::from_secs(1));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let _ = stop_rx.await;
                    shared.closing.store(true, Ordering::Release);
                    // Released at once, so that a store opened right after this one closed
                    // does not wait for the server to notice the session ended.
                    if let Some(session) = shared.session() {
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            let _ = session
                                .execute(
                                    "DELETE FROM provisio_nodes WHERE node = $1",
                                    &[&shared.node],
                                )
                                .await;
                            session
                                .batch_execute("SELECT pg_advisory_unlock_all()")
                                .await
                        })
                        .await;
                    }
                    shared.link.send_modify(|l| {
                        l.up = false;
                        l.closed = true;
                    });
                    *shared.session.lock().unwrap_or_else(|e| e.into_inner()) = None;
                });
                runtime.shutdown_timeout(Duration::from_secs(2));
            })
            .map_err(|e| {
                StoreError::Io(format!("cannot start the PostgreSQL store's thread: {e}"))
            })?;
        match ready_rx.recv() {
            Ok(Ok((handle, schema, writes))) => Ok(PgStore {
                shared,
                handle,
                writes,
                schema,
                stop: Mutex::new(Some(stop_tx)),
                thread: Mutex::new(Some(thread)),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(StoreError::Io(
                    "the PostgreSQL store's thread ended while opening".to_string(),
                ))
            }
        }
    }

    /// What opening did to the schema (its version, the migrations applied).
    pub fn schema(&self) -> &SchemaStatus {
        &self.schema
    }

    /// Rows of `provisio_kv` the writer's committed transactions inserted as new keys,
    /// upserted and deleted so far (for tests and benchmarks: a new row costs two WAL
    /// records inserted, three upserted; the journal's rows are inserted once and never
    /// deleted until pruned).
    pub fn row_writes(&self) -> (u64, u64, u64) {
        let [inserted, upserted, deleted] = &self.shared.rows;
        (
            inserted.load(Ordering::Relaxed),
            upserted.load(Ordering::Relaxed),
            deleted.load(Ordering::Relaxed),
        )
    }

    /// How many database transactions the writer committed so far, and how many batches
    /// they carried (their ratio is the grouping of concurrent writes).
    pub fn commit_count(&self) -> (u64, u64) {
        (
            self.shared.commits.load(Ordering::Relaxed),
            self.shared.batches.load(Ordering::Relaxed),
        )
    }

    /// The URL with its password masked.
    pub fn url(&self) -> &str {
        &self.shared.shown
    }

    /// Stops the store: writes and reads fail from now on, the lock is released. Also done
    /// on drop.
    pub fn close(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }

    /// Runs a read on the store's runtime and blocks this thread for its answer.
    fn read<T, F>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(
                Arc<Reader>,
            )
                -> futures::future::BoxFuture<'static, Result<T, tokio_postgres::Error>>
            + Send
            + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let shared = self.shared.clone();
        self.handle.spawn(async move {
            let result = async {
                let reader = shared.reader().await?;
                match tokio::time::timeout(READ_TIMEOUT, f(reader)).await {
                    Ok(r) => r.map_err(|e| db_error(&shared, what, &e)),
                    Err(_) => Err(StoreError::Io(format!(
                        "PostgreSQL store at `{}`: {what}: no answer within {}s",
                        shared.shown,
                        READ_TIMEOUT.as_secs()
                    ))),
                }
            }
            .await;
            let _ = tx.send(result);
        });
        rx.recv().map_err(|_| StoreError::Closed)?
    }
}

/// Connects new sessions of a store (on its runtime), for the queue's pool.
#[derive(Clone)]
pub(crate) struct PgConnector {
    shared: Arc<Shared>,
}

impl PgConnector {
    /// A new session; call on the store's runtime (its connection task is spawned there).
    pub(crate) async fn connect(&self) -> Result<Client, StoreError> {
        connect_retrying(&self.shared, Duration::ZERO, || {}).await
    }
}

type Opened = (
    SchemaStatus,
    tokio::sync::mpsc::UnboundedSender<WriteRequest>,
);

/// Connects, locks, migrates, and starts the writer (on the store's runtime).
async fn start(shared: Arc<Shared>, retry: Duration, apply: bool) -> Result<Opened, StoreError> {
    let on_end = {
        let shared = shared.clone();
        move || shared.link_lost(0, "the node's session ended")
    };
    let mut lock_client = connect_retrying(&shared, retry, on_end).await?;
    let ns: String = lock_client
        .query_one(
            "SELECT current_database() || '.' || coalesce(current_schema(), '')",
            &[],
        )
        .await
        .map_err(|e| db_error(&shared, "reading the current schema", &e))?
        .get(0);
    // Two processes starting at once never migrate at once.
    let migrate_lock = format!("provisio migrate {ns}");
    lock_client
        .execute(
            "SELECT pg_advisory_lock(hashtextextended($1, 0))",
            &[&migrate_lock],
        )
        .await
        .map_err(|e| db_error(&shared, "taking the migration lock", &e))?;
    let schema = migrate(&shared, &mut lock_client, apply).await;
    let _ = lock_client
        .execute(
            "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
            &[&migrate_lock],
        )
        .await;
    let schema = schema?;
    let _ = shared.lock_ns.set(ns);
    register_node(&shared, &lock_client).await?;
    let writer_client = connect_retrying(&shared, Duration::ZERO, || {}).await?;
    let writer = prepare_writer(&shared, writer_client).await?;
    // One reader connected now: a bad schema or permission shows at open, not at the
    // first read.
    shared.reader().await?;
    let (writes, queue) = tokio::sync::mpsc::unbounded_channel();
    *shared.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(lock_client));
    shared.link.send_modify(|l| l.up = true);
    tokio::spawn(write_loop(shared.clone(), writer, queue));
    tokio::spawn(heartbeat_loop(shared.clone()));
    Ok((schema, writes))
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl PgStore {
    /// This process's node id (its row in `provisio_nodes` while the store is open).
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// Runs `f` on the store's runtime (where its connections live) and awaits it from
    /// any runtime. (Awaiting `f` on the caller's task instead saves a wake-up and a thread
    /// switch a call, but deadlocked the daemon under load: the queue's synchronous reads
    /// ([`PgStore::block`]) wait on the store's runtime for a pooled connection, which a
    /// task of the caller's runtime then held while every thread of that runtime was
    /// blocked in such a read. Whatever the store's runtime waits for must stay on it.)
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.handle.spawn(f).await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on the store's runtime and blocks this thread for its answer (the
    /// synchronous reads of the queue; see [`PgStore::read`] for why this cannot deadlock).
    pub(crate) fn block<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// An error while the database is lost (the queue's changes fail at once then,
    /// rather than waiting for a connection).
    pub(crate) fn unavailable(&self) -> Option<StoreError> {
        let link = self.shared.link_now();
        if link.closed {
            return Some(StoreError::Closed);
        }
        (!link.up).then(|| {
            StoreError::Io(format!(
                "the PostgreSQL store at `{}` cannot be reached; reconnecting",
                self.shared.shown
            ))
        })
    }

    /// The link's epoch now (see [`PgStore::link`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.shared.link_now().epoch
    }

    /// Connects new sessions for the queue (on the store's runtime).
    pub(crate) fn connector(&self) -> PgConnector {
        PgConnector {
            shared: self.shared.clone(),
        }
    }

    /// What the advisory lock keys of this store start with (its database and schema).
    pub(crate) fn lock_ns(&self) -> String {
        self.shared.lock_ns.get().cloned().unwrap_or_default()
    }

    /// Listens on `channel` on a session of its own (connecting again when it breaks) and
    /// wakes every waiter of `wake` at each notification, and after each reconnection
    /// (notifications sent meanwhile are lost: the waiters then look for themselves).
    pub(crate) fn listen(&self, channel: &'static str, wake: Arc<tokio::sync::Notify>) {
        let shared = self.shared.clone();
        self.handle.spawn(async move {
            loop {
                match shared.config.connect(shared.tls.clone()).await {
                    Ok((client, mut connection)) => {
                        let wake2 = wake.clone();
                        let driver = tokio::spawn(async move {
                            loop {
                                let msg =
                                    futures::future::poll_fn(|cx| connection.poll_message(cx)).await;
                                match msg {
                                    Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                                        wake2.notify_waiters();
                                    }
                                    Some(Ok(_)) => {}
                                    Some(Err(_)) | None => return,
                                }
                            }
                        });
                        if client
                            .batch_execute(&format!("LISTEN {channel}"))
                            .await
                            .is_ok()
                        {
                            wake.notify_waiters();
                        }
                        let _ = driver.await;
                        drop(client);
                    }
                    Err(e) => {
                        tracing::warn!(error = %describe(&e), "listening for the job queue's notifications");
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Listens on `channels` on a session of its own (connecting again when it breaks, as
    /// `PgStore::listen`) and sends each notification's (channel, payload) to `to`,
    /// until `to` is closed. Notifications sent while it reconnects are lost.
    pub fn listen_payloads(
        &self,
        channels: &[&'static str],
        to: tokio::sync::mpsc::UnboundedSender<(String, String)>,
    ) {
        let shared = self.shared.clone();
        let listen: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
        self.handle.spawn(async move {
            while !to.is_closed() && !shared.link_now().closed {
                match shared.config.connect(shared.tls.clone()).await {
                    Ok((client, mut connection)) => {
                        let to2 = to.clone();
                        let driver = tokio::spawn(async move {
                            loop {
                                let msg = futures::future::poll_fn(|cx| connection.poll_message(cx))
                                    .await;
                                match msg {
                                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                                        if to2
                                            .send((n.channel().to_string(), n.payload().to_string()))
                                            .is_err()
                                        {
                                            return;
                                        }
                                    }
                                    Some(Ok(_)) => {}
                                    Some(Err(_)) | None => return,
                                }
                            }
                        });
                        let _ = client.batch_execute(&listen).await;
                        let _ = driver.await;
                        drop(client);
                    }
                    Err(e) => {
                        tracing::debug!(error = %describe(&e), "listening for the daemons' notifications");
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Sends `NOTIFY channel, payload` on the node's session, without waiting (lost while
    /// the database is).
    pub fn notify(&self, channel: &'static str, payload: String) {
        let Some(session) = self.shared.session() else {
            return;
        };
        self.handle.spawn(async move {
            let _ = session
                .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
                .await;
        });
    }

    fn state_lock_key(&self, key: &[u8]) -> String {
        let mut name = format!(
            "provisio state {} ",
            self.shared.lock_ns.get().map_or("", String::as_str)
        );
        for b in key {
            name.push_str(&format!("{b:02x}"));
        }
        name
    }

    fn txn_lock_key(&self, txn: &str) -> String {
        format!(
            "provisio txn {} {txn}",
            self.shared.lock_ns.get().map_or("", String::as_str)
        )
    }
}

impl PgStore {
    /// The state of the store's connection to its database: watch it to learn that the
    /// database was lost (`up` false, `epoch` one more) and when it is back. Work begun in
    /// an earlier epoch (a transaction owned, a job claimed) was lost with the session's
    /// locks and must not go on in this process: recovery finishes it.
    pub fn link(&self) -> watch::Receiver<Link> {
        self.shared.link.subscribe()
    }

    /// Resolves once the database was lost after `epoch` (the link's epoch moved on); never
    /// when the store closes first. What a run started in `epoch` races against: when this
    /// resolves, the run stops where it is and is left to recovery.
    pub async fn lost_since(&self, epoch: u64) {
        let mut link = self.link();
        if link.wait_for(|l| l.epoch != epoch).await.is_err() {
            // The store closed: whatever runs ends with it.
            std::future::pending::<()>().await;
        }
    }

    /// Tests (feature `failpoints`): behaves as if the node's session of `epoch` broke
    /// now (the database lost), and reconnects.
    #[cfg(feature = "failpoints")]
    pub(crate) fn fail_link(&self, epoch: u64) {
        self.shared
            .link_lost(epoch, "failpoint PROVISIO_FAIL_CLAIM_LOST");
    }

    /// Whether the database is reachable (the node's session is up).
    pub fn is_up(&self) -> bool {
        self.shared.link_now().up
    }

    /// Runs `hook` on each new session after the database was lost, before writes go
    /// through again (once per `name`).
    pub(crate) fn on_reconnect(&self, name: &'static str, hook: ReconnectHook) {
        let mut hooks = self.shared.hooks.lock().unwrap_or_else(|e| e.into_inner());
        if !hooks.iter().any(|(n, _)| *n == name) {
            hooks.push((name, hook));
        }
    }

    /// The error of a call on the node's session made in `epoch`: when the database was
    /// lost meanwhile, waits until it is back and answers [`StoreError::Lost`] (so that
    /// the caller, stopped by then, never acts on it).
    async fn session_error(&self, epoch: u64, e: StoreError, broken: bool) -> StoreError {
        if broken {
            self.shared.link_lost(epoch, "the node's session broke");
        }
        if self.shared.link_now().epoch != epoch {
            let _ = self.shared.wait_up().await;
            return self.shared.lost_error();
        }
        e
    }

    /// Takes an advisory lock on the node's session (parked while the database is lost).
    async fn try_session_lock(
        &self,
        name: String,
        what: &'static str,
    ) -> Result<(bool, u64), StoreError> {
        let link = self.shared.wait_up().await?;
        let Some(session) = self.shared.session() else {
            return Err(self
                .session_error(link.epoch, StoreError::Closed, true)
                .await);
        };
        let shared = self.shared.clone();
        let got = self
            .run(async move {
                // One message (no separate prepare round trip).
                Ok(session
                    .query_typed_one(
                        "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                        &[(&name, Type::TEXT)],
                    )
                    .await
                    .map(|r| r.get::<_, bool>(0))
                    .map_err(|e| (db_error(&shared, what, &e), is_link_error(&e))))
            })
            .await
            .map_err(|e| (e, false))
            .and_then(|r| r);
        match got {
            Ok(got) if self.shared.link_now().epoch == link.epoch => Ok((got, link.epoch)),
            Ok(_) => Err(self
                .session_error(link.epoch, self.shared.lost_error(), false)
                .await),
            Err((e, broken)) => Err(self.session_error(link.epoch, e, broken).await),
        }
    }

    /// [`Store::write_for`], the first `fresh` writes of `batch` being puts of new keys.
    async fn write_owned(
        &self,
        txn: &str,
        batch: Batch,
        fresh: usize,
        durable: bool,
    ) -> Result<(), StoreError> {
        let link = self.shared.wait_up().await?;
        // Owned before the database was lost: its lock went with the session, so another
        // node may be recovering it; it never goes on here.
        if self
            .shared
            .forfeited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(txn)
        {
            return Err(self.shared.lost_error());
        }
        if batch.writes.is_empty() && !durable {
            return Ok(());
        }
        self.enqueue(batch, fresh, durable, link.epoch).await
    }

    /// Queues a write made in `epoch` for the writer and awaits its answer.
    async fn enqueue(
        &self,
        batch: Batch,
        fresh: usize,
        durable: bool,
        epoch: u64,
    ) -> Result<(), StoreError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.writes
            .send(WriteRequest {
                batch,
                fresh,
                durable,
                epoch,
                done,
            })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

#[async_trait]
impl Store for PgStore {
    async fn own(&self, txn: &str) -> Result<bool, StoreError> {
        // Parked while the database is lost: a new transaction starts once it is back.
        self.shared.wait_up().await?;
        if !self
            .shared
            .owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(txn.to_string())
        {
            return Ok(false);
        }
        let got = self
            .try_session_lock(self.txn_lock_key(txn), "taking a transaction's lock")
            .await;
        match got {
            Ok((true, _)) => {
                self.shared
                    .forfeited
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(txn);
                Ok(true)
            }
            other => {
                // (A loss meanwhile forgot every ownership already.)
                if !matches!(other, Err(StoreError::Lost { .. })) {
                    self.shared
                        .owned
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(txn);
                }
                other.map(|(got, _)| got)
            }
        }
    }

    fn disown(&self, txn: &str) {
        if !self
            .shared
            .owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(txn)
        {
            return;
        }
        let Some(session) = self.shared.session() else {
            return;
        };
        let key = self.txn_lock_key(txn);
        self.handle.spawn(async move {
            let _ = session
                .execute_typed(
                    "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
                    &[(&key, Type::TEXT)],
                )
                .await;
        });
    }

    async fn lock_key(&self, key: &[u8]) -> Result<bool, StoreError> {
        self.try_session_lock(self.state_lock_key(key), "locking a provider-state key")
            .await
            .map(|(got, _)| got)
    }

    fn unlock_key(&self, key: &[u8]) {
        // A key taken before the database was lost went with the session.
        let Some(session) = self.shared.session() else {
            return;
        };
        let name = self.state_lock_key(key);
        self.handle.spawn(async move {
            let _ = session
                .execute_typed(
                    "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
                    &[(&name, Type::TEXT)],
                )
                .await;
        });
    }

    async fn wait_key(
        &self,
        txn: &str,
        key: &[u8],
        held: &[Vec<u8>],
    ) -> Result<Option<String>, StoreError> {
        let link = self.shared.wait_up().await?;
        let Some(session) = self.shared.session() else {
            return Err(self
                .session_error(link.epoch, StoreError::Closed, true)
                .await);
        };
        let waited = self.state_lock_key(key);
        let held: Vec<String> = held.iter().map(|k| self.state_lock_key(k)).collect();
        let (txn, node, shared) = (
            txn.to_string(),
            self.shared.node.clone(),
            self.shared.clone(),
        );
        let expiry = NODE_EXPIRY.as_secs_f64();
        let found = self
            .run(async move {
                Ok(session
                    .query_typed(
                        KEY_WAIT_SQL,
                        &[
                            (&txn, Type::TEXT),
                            (&waited, Type::TEXT),
                            (&held, Type::TEXT_ARRAY),
                            (&node, Type::TEXT),
                            (&expiry, Type::FLOAT8),
                        ],
                    )
                    .await
                    .map(|rows| rows.first().map(|r| r.get::<_, String>(0)))
                    .map_err(|e| {
                        (
                            db_error(&shared, "recording a wait for a provider-state key", &e),
                            is_link_error(&e),
                        )
                    }))
            })
            .await
            .map_err(|e| (e, false))
            .and_then(|r| r);
        match found {
            Ok(found) if self.shared.link_now().epoch == link.epoch => Ok(found),
            Ok(_) => Err(self
                .session_error(link.epoch, self.shared.lost_error(), false)
                .await),
            Err((e, broken)) => Err(self.session_error(link.epoch, e, broken).await),
        }
    }

    async fn wait_key_over(&self, txn: &str, key: &[u8]) {
        // Rows of a session that is gone count for nothing: nothing to do without one.
        let Some(session) = self.shared.session() else {
            return;
        };
        let (txn, name) = (txn.to_string(), self.state_lock_key(key));
        let _ = self
            .run(async move {
                let _ = session
                    .execute_typed(
                        "DELETE FROM provisio_key_waits WHERE txn = $1 AND lock = hashtextextended($2, 0)",
                        &[(&txn, Type::TEXT), (&name, Type::TEXT)],
                    )
                    .await;
                Ok(())
            })
            .await;
    }

    fn keys_released(&self, txn: &str) {
        let Some(session) = self.shared.session() else {
            return;
        };
        let txn = txn.to_string();
        self.handle.spawn(async move {
            let _ = session
                .execute_typed(
                    "WITH w AS (DELETE FROM provisio_key_waits WHERE txn = $1)
                     DELETE FROM provisio_key_holds WHERE txn = $1",
                    &[(&txn, Type::TEXT)],
                )
                .await;
        });
    }

    fn postgres(&self) -> Option<&PgStore> {
        Some(self)
    }

    async fn write(&self, batch: Batch, durable: bool) -> Result<(), StoreError> {
        if batch.writes.is_empty() && !durable {
            return Ok(());
        }
        // Parked while the database is lost.
        let link = self.shared.wait_up().await?;
        self.enqueue(batch, 0, durable, link.epoch).await
    }

    fn compacts_journal(&self) -> bool {
        // A row a record, inserted once: compacting would delete every one of them and
        // insert a chunk (twice the WAL records), and read them back first.
        false
    }

    async fn write_journal(
        &self,
        txn: &str,
        fresh: Batch,
        rest: Batch,
        durable: bool,
    ) -> Result<(), StoreError> {
        let n = fresh.writes.len();
        let mut batch = fresh;
        batch.writes.extend(rest.writes);
        self.write_owned(txn, batch, n, durable).await
    }

    async fn write_for(&self, txn: &str, batch: Batch, durable: bool) -> Result<(), StoreError> {
        self.write_owned(txn, batch, 0, durable).await
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_vec();
        let space = i16::from(space.tag());
        self.read("reading a key", move |r| {
            Box::pin(async move {
                let rows = r.client.query(&r.get, &[&space, &key]).await?;
                Ok(rows.first().map(|row| row.get::<_, Vec<u8>>(0)))
            })
        })
    }

    fn scan(&self, space: Space, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let end = super::prefix_end(prefix);
        self.scan_range(
            space,
            KeyRange::new(prefix, end.as_deref()),
            usize::MAX,
            false,
        )
    }

    fn scan_range(
        &self,
        space: Space,
        range: KeyRange<'_>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let space = i16::from(space.tag());
        let start = range.start.to_vec();
        let end = range.end.map(<[u8]>::to_vec);
        let limit = limit_param(limit);
        self.read("scanning keys", move |r| {
            Box::pin(async move {
                let statement = &r.range[usize::from(reverse)][usize::from(end.is_some())];
                let rows = match &end {
                    Some(end) => {
                        r.client
                            .query(statement, &[&space, &start, &limit, end])
                            .await?
                    }
                    None => r.client.query(statement, &[&space, &start, &limit]).await?,
                };
                Ok(rows
                    .into_iter()
                    .map(|row| (row.get::<_, Vec<u8>>(0), row.get::<_, Vec<u8>>(1)))
                    .collect())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use provisio_test_support::postgres::Postgres;
    use std::sync::atomic::AtomicBool;

    fn open(test: &str) -> Option<PgStore> {
        let pg = Postgres::shared()?;
        let options = PgOptions {
            connect_retry: Duration::from_secs(5),
            application: "provisio store unit tests".into(),
        };
        Some(PgStore::open(&pg.new_schema(test), &options).unwrap())
    }

    /// Durable and non-durable groups, queued together, commit in the order they came (the
    /// last write of a key wins) and every one is read back.
    #[test]
    fn durable_and_non_durable_groups_commit_in_order() {
        let Some(store) = open("writer_sessions") else {
            return;
        };
        let store = Arc::new(store);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for round in 0..20u32 {
                let writes: Vec<_> = (0..8u32)
                    .map(|i| {
                        let store = store.clone();
                        async move {
                            let mut b = Batch::new();
                            b.put(
                                Space::Meta,
                                b"k".to_vec(),
                                (round * 8 + i).to_be_bytes().to_vec(),
                            );
                            b.put(Space::Meta, format!("k{round}.{i}").into_bytes(), vec![1]);
                            store.write(b, i % 3 == 0).await
                        }
                    })
                    .collect();
                // Sent one after the other (the order the writer sees), awaited together.
                for r in futures::future::join_all(writes).await {
                    r.unwrap();
                }
            }
        });
        let last = store.get(Space::Meta, b"k").unwrap().unwrap();
        assert_eq!(last, (20 * 8 - 1u32).to_be_bytes().to_vec());
        assert_eq!(store.scan(Space::Meta, b"k").unwrap().len(), 20 * 8 + 1);
    }

    /// A call run on the store's runtime answers a current-thread caller runtime (whose
    /// only thread then blocks on a synchronous read); one whose caller stops waiting is
    /// finished on the store's runtime.
    #[test]
    fn a_run_answers_a_current_thread_runtime_and_is_finished_when_dropped() {
        let Some(store) = open("run_on_caller") else {
            return;
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let finished = Arc::new(AtomicBool::new(false));
        rt.block_on(async {
            assert!(store.own("t1").await.unwrap());
            assert!(!store.own("t1").await.unwrap());
            let session = store.shared.session().unwrap();
            let n: i32 = store
                .run(async move {
                    Ok(session
                        .query_one("SELECT 41 + 1", &[])
                        .await
                        .map_err(|e| StoreError::Io(e.to_string()))?
                        .get(0))
                })
                .await
                .unwrap();
            assert_eq!(n, 42);
            // The synchronous read blocks this runtime's only thread.
            assert_eq!(store.get(Space::Meta, b"absent").unwrap(), None);
            let session = store.shared.session().unwrap();
            let flag = finished.clone();
            let dropped = tokio::time::timeout(
                Duration::from_millis(10),
                store.run(async move {
                    session
                        .batch_execute("SELECT pg_sleep(0.2)")
                        .await
                        .map_err(|e| StoreError::Io(e.to_string()))?;
                    flag.store(true, Ordering::SeqCst);
                    Ok(())
                }),
            )
            .await;
            assert!(dropped.is_err(), "the sleep outlasted the timeout");
        });
        let started = Instant::now();
        while !finished.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            finished.load(Ordering::SeqCst),
            "the dropped call was not finished"
        );
    }
}
