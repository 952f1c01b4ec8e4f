//! `provisio serve`: the daemon. A persistent job queue in the store, a bounded pool of
//! workers running its jobs through the engine with the durable journal, and the HTTP API
//! (`api`) in front of it, with bearer-token identities (`auth`).
//!
//! At start it holds the data directory (the store's lock; a second daemon is refused),
//! finishes what a crash left running (`txn::recover`), and takes back the jobs whose
//! workers died with the previous process: a job's transaction id is written before it
//! runs, so a job taken back settles (reads what recovery made of its transaction) instead
//! of running a second transaction. SIGTERM/SIGINT: stop claiming, let running jobs finish
//! within `serve.shutdown_timeout`, exit 0.

mod api;
pub mod auth;
pub mod jobs;
mod metrics;
mod openapi;
mod ops;
mod remote;
mod schema;
mod tls;
mod txns;

use crate::config::{Config, ServeConfig};
use crate::{load, Exit};
use anyhow::{Context, Result};
use provisio_engine::model::{Format, Request, RequestDocument};
use provisio_engine::queue::{Backoff, Finish, Job, JobState, Queue};
use provisio_engine::txn::{index, DurableJournal};
use provisio_engine::{
    request, response, Cancel, Engine, Event, RunControl, RunError, SealKey, Store, TxnId, TxnState,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, watch, Notify};

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a job carries (sealed in the queue): the request as checked at submission — one
/// item of a batch, its `securityContext` the submitter's identity — so that the worker
/// neither parses the client's text again nor sees what the check removed; or (a `queue`
/// step's job, and jobs queued by earlier versions) a request text to parse, with the item
/// of a batch it runs.
#[derive(serde::Serialize, serde::Deserialize)]
struct Payload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request: Option<Request>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    format: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    body: String,
    /// The item of a batch request this job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    item: Option<usize>,
}

/// A checked request's payload, borrowed: serializes as a [`Payload`] with `request` set.
#[derive(serde::Serialize)]
struct PayloadOf<'a> {
    request: &'a Request,
}

impl Payload {
    /// The payload of a checked request (as `Payload { request: Some(..), .. }` would be),
    /// without taking the request.
    fn encode(request: &Request) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&PayloadOf { request })
    }

    /// A request's text in `format` (parsed when the job runs).
    fn text(format: Format, body: String) -> Payload {
        Payload {
            request: None,
            format: format_name(format).into(),
            body,
            item: None,
        }
    }

    /// The request to run.
    fn into_request(self) -> Result<Request, String> {
        if let Some(r) = self.request {
            return Ok(r);
        }
        let parsed = parse_body(&self.body, parse_format(&self.format))
            .map_err(|e| format!("its request no longer parses: {e}"))?;
        let item = self.item.unwrap_or(0);
        parsed
            .requests
            .into_iter()
            .nth(item)
            .ok_or_else(|| format!("its request has no item {}", item + 1))
    }
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Xml => "xml",
        Format::Yaml => "yaml",
        Format::Json => "json",
    }
}

fn parse_format(name: &str) -> Format {
    match name {
        "xml" => Format::Xml,
        "yaml" => Format::Yaml,
        _ => Format::Json,
    }
}

/// Progress of the jobs, to the event streams and the waiting submitters: one channel per
/// job someone listens to, closed with a `finished` event.
pub struct Hub {
    channels: Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>,
    /// Every job's events, for the stream of all requests.
    all: broadcast::Sender<Arc<str>>,
    /// Several daemons on one PostgreSQL store: the jobs another daemon's clients follow,
    /// whose events this one forwards (see `remote`).
    remote: std::sync::OnceLock<Arc<remote::Remote>>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            channels: Mutex::default(),
            all: broadcast::channel(1024).0,
            remote: std::sync::OnceLock::new(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// Listens to a job's events.
    pub fn subscribe(&self, id: &str) -> broadcast::Receiver<Arc<str>> {
        lock(&self.channels)
            .entry(id.to_string())
            .or_insert_with(|| broadcast::channel(256).0)
            .subscribe()
    }

    /// Listens to every job's events.
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<str>> {
        self.all.subscribe()
    }

    fn text(id: &str, mut event: serde_json::Value) -> Arc<str> {
        if let Some(o) = event.as_object_mut() {
            o.entry("id")
                .or_insert_with(|| serde_json::Value::String(id.to_string()));
        }
        Arc::from(event.to_string())
    }

    /// Sends an event to a job's listeners, if any, and to the stream of all: built (and
    /// serialized) only when someone listens.
    pub fn publish(&self, id: &str, event: impl FnOnce() -> serde_json::Value) {
        let own = lock(&self.channels).get(id).cloned();
        let remote = self.remote.get().filter(|r| r.watches(id));
        if own.is_none() && self.all.receiver_count() == 0 && remote.is_none() {
            return;
        }
        let text = Self::text(id, event());
        if let Some(r) = remote {
            r.forward(id, &text, false);
        }
        if let Some(tx) = own {
            let _ = tx.send(text.clone());
        }
        let _ = self.all.send(text);
    }

    /// An event of a job another daemon runs, to this daemon's listeners (not forwarded);
    /// `finished` closes the job's channel.
    fn deliver(&self, id: &str, text: Arc<str>, finished: bool) {
        let own = if finished {
            lock(&self.channels).remove(id)
        } else {
            lock(&self.channels).get(id).cloned()
        };
        if let Some(tx) = own {
            let _ = tx.send(text.clone());
        }
        let _ = self.all.send(text);
    }

    /// Closes a job's channel without a word (a listener found the job already over).
    pub fn close(&self, id: &str) {
        lock(&self.channels).remove(id);
    }

    /// Sends the final event and closes the job's channel (the event is built only when
    /// someone listens).
    pub fn finish(&self, id: &str, event: impl FnOnce() -> serde_json::Value) {
        let own = lock(&self.channels).remove(id);
        let remote = self.remote.get().filter(|r| r.watches(id));
        if own.is_none() && self.all.receiver_count() == 0 && remote.is_none() {
            return;
        }
        let text = Self::text(id, event());
        if let Some(r) = remote {
            r.forward(id, &text, true);
        }
        if let Some(tx) = own {
            let _ = tx.send(text.clone());
        }
        let _ = self.all.send(text);
    }
}

/// The daemon's shared state.
pub struct Daemon {
    engine: Engine,
    store: Arc<dyn Store>,
    seal: Option<SealKey>,
    queue: Arc<Queue>,
    journals: Mutex<HashMap<String, Arc<DurableJournal>>>,
    hub: Arc<Hub>,
    running: Mutex<HashMap<String, Cancel>>,
    /// The jobs a runner of this process is in, from its claim to its end: a claim of the
    /// same job while its first runner is still in it (that runner stalled past its
    /// lease) must not run its transaction a second time.
    runners: Mutex<std::collections::HashSet<String>>,
    wake: Notify,
    stopping: watch::Sender<bool>,
    ready: AtomicBool,
    busy: AtomicUsize,
    config: ServeConfig,
    /// `[retention]`, for `POST /v1/transactions/prune`.
    retention: crate::config::RetentionConfig,
    tokens: auth::Tokens,
    acl: auth::Acl,
    metrics: Arc<metrics::Metrics>,
    /// Transactions recovery rolled back at start (cut short by a crash): their jobs are
    /// tried again, as a new transaction.
    crashed: std::collections::HashSet<String>,
    /// The programs of trusted requests compiled when they were checked, by job id, taken
    /// when the job runs (at most [`KEPT_PROGRAMS`]; a job without one compiles its body).
    compiled: Mutex<HashMap<String, Arc<provisio_engine::Program>>>,
}

/// Trusted requests' programs kept between their check and their job's run: enough for
/// every job in flight; a backlog beyond it compiles when it runs (RSS stays bounded).
const KEPT_PROGRAMS: usize = 1024;

impl Daemon {
    fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// The journal recording `subject` as the requester (one per subject, sharing the store).
    fn journal_for(&self, subject: &str) -> Arc<DurableJournal> {
        lock(&self.journals)
            .entry(subject.to_string())
            .or_insert_with(|| {
                Arc::new(
                    DurableJournal::new(self.store.clone(), self.seal.clone(), subject)
                        .with_responses()
                        .with_failpoints_from_env(),
                )
            })
            .clone()
    }

    fn seal(&self, plain: &[u8]) -> String {
        match &self.seal {
            Some(k) => k.seal(plain),
            None => String::from_utf8_lossy(plain).into_owned(),
        }
    }

    fn open(&self, sealed: &str) -> Result<Vec<u8>, String> {
        match &self.seal {
            Some(k) => k
                .open(sealed)
                .map_err(|e| format!("{e} (was the seal key changed since the job was queued?)")),
            None => Ok(sealed.as_bytes().to_vec()),
        }
    }

    /// The job's stored response (JSON), opened: with its `requestFormat` when the result
    /// names it outside the seal (see [`job_result`]).
    fn response_of(&self, job: &Job) -> Option<serde_json::Value> {
        let stored = job.result.as_deref()?;
        let (format, sealed) = match stored.split_once(':') {
            Some((name, sealed)) if ["xml", "yaml", "json"].contains(&name) => (Some(name), sealed),
            _ => (None, stored),
        };
        let bytes = self.open(sealed).ok()?;
        let mut doc: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        if let (Some(obj), Some(name)) = (doc.as_object_mut(), format) {
            obj.insert(
                "requestFormat".into(),
                serde_json::Value::String(name.into()),
            );
        }
        Some(doc)
    }

    /// Keeps a job's compiled program for its run (unless [`KEPT_PROGRAMS`] are kept).
    fn keep_program(&self, job: &str, program: Arc<provisio_engine::Program>) {
        let mut kept = lock(&self.compiled);
        if kept.len() < KEPT_PROGRAMS {
            kept.insert(job.to_string(), program);
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            base: self.config.retry_initial.0,
            max: self.config.retry_max.0,
        }
    }
}

/// A request as the API received it, parsed: one request, or the items of a batch (each
/// its own transaction, as `provisio run` runs them).
pub struct Parsed {
    requests: Vec<Request>,
    batch: bool,
}

/// Parses a request body in `format`.
pub fn parse_body(body: &str, format: Format) -> Result<Parsed, String> {
    match request::parse_request_document(body, "<request body>", format) {
        Ok(RequestDocument::Single(request)) => Ok(Parsed {
            requests: vec![request],
            batch: false,
        }),
        Ok(doc) => {
            let requests = doc.into_requests();
            if requests.is_empty() {
                return Err("the batch has no data item: nothing to run".into());
            }
            Ok(Parsed {
                requests,
                batch: true,
            })
        }
        Err(e) => Err(e.to_string()),
    }
}

/// What `open` found: the daemon's state, or the exit code of a refusal.
enum Opened {
    Ready(Arc<Daemon>),
    Refused(Exit),
}

/// Holds the data directory (refused at once when another process does), starts the
/// engine, recovers what a crash left running and takes back the jobs of workers that died.
async fn open(config: &Config, what: &str) -> Result<Opened> {
    let mut config = config.clone();
    // A daemon never waits for the lock: another process holding the data directory is
    // refused at once.
    config.journal.wait_lock = crate::config::Wait(Duration::ZERO);
    // The lock first: a refused second daemon starts no provider process.
    let journal = match load::journal(&config) {
        Ok(j) => j,
        Err(e) => {
            if let Some(busy) = e.downcast_ref::<load::StoreBusy>() {
                eprintln!(
                    "error: the data directory `{}` is held by another provisio process{}; {what} on the same data directory is refused\n  hint: stop the other process first, or give this one its own --data-dir (PROVISIO_DATA_DIR)",
                    config.data_dir.display(),
                    match &busy.daemon {
                        Some((pid, url)) => format!(" (a daemon, pid {pid}, serving {url})"),
                        None => String::new(),
                    }
                );
                return Ok(Opened::Refused(Exit::StoreBusy));
            }
            return Err(e);
        }
    };
    let engine = load::engine(&config).await?;
    let store = journal.store().clone();
    let seal = load::seal_key(&config)?;
    // Recovery first: every transaction a crash left running is finished before any job
    // is taken, so a job taken back finds its transaction settled.
    // A journal that keeps responses: a resumable transaction recovery resumes to its
    // commit keeps the response its job then answers with (final `data` included).
    let journal = Arc::new(
        DurableJournal::new(store.clone(), seal.clone(), load::who())
            .with_responses()
            .with_failpoints_from_env(),
    );
    // Tests: a pause before recovery (the database stopped meanwhile).
    provisio_engine::failpoint::pause_once("startup").await;
    // Tried again if the database is lost meanwhile, for `journal.connect_retry` at most
    // (then exit 2, as when it cannot be reached at open).
    let (queue, crashed, taken_back) = load::at_start(
        &store,
        config.journal.connect_retry.0 .0,
        "recovery at start",
        || async {
            let recovered = provisio_engine::txn::recover(
                &engine.clone().with_journal(journal.clone()),
                &journal,
            )
            .await
            .context("recovery at start")?;
            crate::load::resync_mail(&engine).await;
            for r in &recovered {
                tracing::warn!(txn = %r.txn_id, from = %r.from, to = %r.to, "recovered a transaction a crash left running");
            }
            let crashed: std::collections::HashSet<String> = recovered
                .iter()
                .filter(|r| r.to == TxnState::RolledBack)
                .map(|r| r.txn_id.as_str().to_string())
                .collect();
            let queue = Arc::new(Queue::open(store.clone()).context("opening the job queue")?);
            // Jobs `queue` steps held for transactions a crash interrupted: released or
            // removed by the outcome recovery gave those transactions.
            jobs::settle_held(&queue, &store).await?;
            // Alone on its store, every running job is a dead worker's; on a store shared
            // with other daemons (PostgreSQL), only those whose leases ran out or whose
            // node stopped.
            let upto = if queue.is_shared() {
                now_ms()
            } else {
                u64::MAX
            };
            let mut taken_back = 0;
            loop {
                let back = queue.take_back_expired(upto, 1024).await?;
                if back.is_empty() {
                    break;
                }
                taken_back += back.len();
            }
            Ok((queue, crashed, taken_back))
        },
    )
    .await?;
    if taken_back > 0 {
        tracing::warn!(
            jobs = taken_back,
            "took back jobs whose workers stopped with the previous process"
        );
    }
    let (stopping, _) = watch::channel(false);
    Ok(Opened::Ready(Arc::new(Daemon {
        engine,
        store,
        seal,
        queue,
        journals: Mutex::new(HashMap::new()),
        hub: Arc::new(Hub::default()),
        running: Mutex::new(HashMap::new()),
        runners: Mutex::default(),
        wake: Notify::new(),
        stopping,
        ready: AtomicBool::new(false),
        busy: AtomicUsize::new(0),
        config: config.serve.clone(),
        retention: config.retention.clone(),
        tokens: auth::Tokens::from_config(&config.serve.tokens),
        acl: auth::Acl::from_config(&config.serve.acl),
        metrics: Arc::default(),
        crashed,
        compiled: Mutex::new(HashMap::new()),
    })))
}

/// `provisio worker --drain`: runs every job that is due with the configured workers, then
/// exits (what cron runs where no daemon does). Jobs scheduled for later stay queued.
pub async fn drain(config: &Config) -> Result<Exit> {
    let daemon = match open(config, "a worker").await? {
        Opened::Ready(d) => d,
        Opened::Refused(code) => return Ok(code),
    };
    let ran = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..daemon.config.workers {
        let d = daemon.clone();
        let ran = ran.clone();
        workers.spawn(async move {
            while let Some(job) = d.queue.claim(now_ms(), d.config.lease.0).await? {
                run_job(&d, job, None).await;
                ran.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<(), provisio_engine::queue::QueueError>(())
        });
    }
    let mut failed = None;
    while let Some(r) = workers.join_next().await {
        match r {
            Ok(Err(e)) => failed = Some(e.to_string()),
            Err(e) => failed = Some(e.to_string()),
            Ok(Ok(())) => {}
        }
    }
    let counts = daemon.queue.counts();
    eprintln!(
        "provisio worker: ran {} job(s); {} queued (not due yet or waiting), {} held, {} dead",
        ran.load(Ordering::SeqCst),
        counts[0],
        counts[6],
        counts[4]
    );
    match failed {
        Some(e) => Err(anyhow::anyhow!("the job queue failed: {e}")),
        None => Ok(Exit::Ok),
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn serve(config: &Config) -> Result<Exit> {
    let daemon = match open(config, "a second daemon").await? {
        Opened::Ready(d) => d,
        Opened::Refused(code) => return Ok(code),
    };
    if daemon.tokens.is_empty() {
        tracing::warn!("no [[serve.tokens]] are configured: every API call but /v1/health and /v1/ready is refused (401); `provisio token hash --new` makes one");
    }
    let signalled = shutdown_signal();
    let dir = load::journal_dir(config);
    let addr: std::net::SocketAddr = config
        .serve
        .listen
        .parse()
        .with_context(|| format!("serve.listen {:?} is not IP:PORT", config.serve.listen))?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}\n  hint: another program uses the port; pick another with --listen IP:PORT")
    })?;
    let local = listener.local_addr()?;
    let tls = match (&config.serve.tls_cert, &config.serve.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
        _ => None,
    };
    let url = format!("{}://{local}", if tls.is_some() { "https" } else { "http" });
    let info = load::daemon_file(&dir);
    let _ = std::fs::write(
        &info,
        serde_json::json!({ "pid": std::process::id(), "url": url }).to_string(),
    );
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..daemon.config.workers {
        workers.spawn(worker(daemon.clone()));
    }
    tokio::spawn(reaper(daemon.clone()));
    remote::start(&daemon);
    {
        // Other daemons on the same PostgreSQL store wake this one's workers (NOTIFY): one
        // worker a notification (each queued job sends its own; the idle ones still look
        // every second), not every idle worker for one job.
        let d = daemon.clone();
        tokio::spawn(async move {
            loop {
                d.queue.changed().await;
                d.wake.notify_one();
            }
        });
    }
    if let Some(keep) = config.retention.transactions.0 {
        tokio::spawn(pruner(daemon.clone(), keep));
    }
    let app = api::router(daemon.clone());
    let mut stop_rx = daemon.stopping.subscribe();
    let stopped = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    let server = match tls {
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls)?;
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }),
    };
    daemon.ready.store(true, Ordering::SeqCst);
    // The line a supervisor or a test waits for.
    eprintln!(
        "provisio serve: listening on {url} (data directory `{}`, {} workers)",
        config.data_dir.display(),
        daemon.config.workers
    );
    signalled.await;
    eprintln!("provisio serve: stopping: no new jobs are taken; waiting for running jobs");
    daemon.ready.store(false, Ordering::SeqCst);
    let _ = daemon.stopping.send(true);
    daemon.wake.notify_waiters();
    let deadline = daemon.config.shutdown_timeout.0;
    let finished = tokio::time::timeout(deadline, async {
        while workers.join_next().await.is_some() {}
        // The workers lent by waiting submissions.
        while daemon.busy.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if finished.is_err() {
        let left = daemon.busy.load(Ordering::SeqCst);
        eprintln!(
            "provisio serve: {left} job(s) still running after {}: left to recovery at the next start",
            humantime::format_duration(deadline)
        );
    }
    server.abort();
    let _ = std::fs::remove_file(&info);
    eprintln!("provisio serve: stopped");
    Ok(Exit::Ok)
}

/// SIGTERM or Ctrl-C. The SIGTERM handler is in place when this returns (before the
/// daemon says it listens), so a supervisor's early SIGTERM is never fatal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Takes back jobs whose lease ran out (a worker that stopped renewing it).
async fn reaper(d: Arc<Daemon>) {
    let every = (d.config.lease.0 / 3).max(Duration::from_millis(200));
    let mut stop = d.stopping.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match d.queue.take_back_expired(now_ms(), 256).await {
            Ok(back) if !back.is_empty() => {
                tracing::warn!(jobs = back.len(), "took back jobs whose lease ran out");
                d.wake.notify_waiters();
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "taking back expired jobs"),
        }
    }
}

/// Removes finished jobs past retention (`retention.transactions`), every minute.
async fn pruner(d: Arc<Daemon>, keep: Duration) {
    let mut stop = d.stopping.subscribe();
    loop {
        let before = now_ms().saturating_sub(keep.as_millis() as u64);
        loop {
            match d.queue.prune(before, 1000).await {
                Ok(1000) => continue,
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(jobs = n, "removed finished jobs past retention");
                    }
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "removing finished jobs");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One worker: claims the best due job, runs it, again; sleeps when nothing is due.
async fn worker(d: Arc<Daemon>) {
    let mut stop = d.stopping.subscribe();
    loop {
        if d.stopping() {
            return;
        }
        match d.queue.claim(now_ms(), d.config.lease.0).await {
            Ok(Some(job)) => {
                d.busy.fetch_add(1, Ordering::SeqCst);
                run_job(&d, job, None).await;
                d.busy.fetch_sub(1, Ordering::SeqCst);
            }
            Ok(None) => {
                let nap = match d.queue.next_due() {
                    Ok(Some(at)) => Duration::from_millis(at.saturating_sub(now_ms())),
                    _ => Duration::from_secs(1),
                }
                .clamp(Duration::from_millis(5), Duration::from_secs(1));
                tokio::select! {
                    _ = d.wake.notified() => {}
                    _ = tokio::time::sleep(nap) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "claiming a job");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One more worker for one job: claims the best due job (by priority and order, as every
/// worker does: not necessarily the lender's own) and runs it, then ends. What a `?wait`
/// submission lends the pool while its client waits, so that waiting clients are not
/// served `serve.workers` at a time.
pub(crate) fn lend_worker(d: &Arc<Daemon>) {
    if d.stopping() {
        return;
    }
    let d = d.clone();
    tokio::spawn(async move {
        match d.queue.claim(now_ms(), d.config.lease.0).await {
            Ok(Some(job)) => {
                d.busy.fetch_add(1, Ordering::SeqCst);
                run_job(&d, job, None).await;
                d.busy.fetch_sub(1, Ordering::SeqCst);
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "claiming a job"),
        }
    });
}

fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.finish()
}

/// The event that ends a job's stream.
pub fn finished_event(job: &Job) -> serde_json::Value {
    serde_json::json!({
        "event": "finished",
        "id": job.id,
        "state": job.state.name(),
        "outcome": job.outcome,
        "error": job.error,
    })
}

/// A job as its run recorded its end, and the response it ended with (`None`: read it from
/// the job).
pub(crate) struct Finished {
    pub(crate) job: Job,
    pub(crate) response: Option<serde_json::Value>,
    /// The steps of the run as its events told them, when every one succeeded (`None`:
    /// read them from the journal, which also has failures' messages and undos).
    pub(crate) steps: Option<Vec<StepSeen>>,
}

/// A provider call of a run, as its events told it.
pub(crate) struct StepSeen {
    step: String,
    target: String,
    started: std::time::Instant,
    /// The attempt that succeeded (`None`: not finished).
    attempt: Option<u32>,
}

/// The steps of a run as its events tell them: the answer's `steps` without reading the
/// journal back, for a run whose every step succeeded.
#[derive(Default)]
struct StepLog {
    steps: Vec<StepSeen>,
    /// A step failed or was undone: only the journal has the whole story.
    unclean: bool,
}

impl StepLog {
    /// The steps when every call that started succeeded.
    fn clean(self) -> Option<Vec<StepSeen>> {
        (!self.unclean && self.steps.iter().all(|s| s.attempt.is_some())).then_some(self.steps)
    }
}

/// Serializes the `steps` of an answer from a run's events, as [`api`] builds them from the
/// journal (step, target, attempt, state), each step once (its last call), in the order
/// they started.
pub(crate) fn serialize_steps<S: serde::Serializer>(
    steps: &[StepSeen],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        step: &'a str,
        target: &'a str,
        attempt: Option<u32>,
        state: &'static str,
    }
    // Which call each step shows: its last (a step called again replaces its entry).
    let mut shown: Vec<&StepSeen> = Vec::with_capacity(steps.len());
    let mut at: HashMap<&str, usize> = HashMap::with_capacity(steps.len());
    for step in steps {
        match at.get(step.step.as_str()) {
            Some(&i) => shown[i] = step,
            None => {
                at.insert(&step.step, shown.len());
                shown.push(step);
            }
        }
    }
    let mut seq = s.serialize_seq(Some(shown.len()))?;
    for step in shown {
        seq.serialize_element(&Entry {
            step: &step.step,
            target: &step.target,
            attempt: step.attempt,
            state: "done",
        })?;
    }
    seq.end()
}

/// Records how attempt `attempt` of a job ended (refused if another claim took the job).
async fn finish(d: &Daemon, id: &str, attempt: u32, how: Finish) -> Option<Finished> {
    match d.queue.finish_attempt(id, attempt, how, now_ms()).await {
        Ok(job) => {
            d.hub.finish(id, || finished_event(&job));
            Some(Finished {
                job,
                response: None,
                steps: None,
            })
        }
        Err(e) => {
            tracing::error!(job = %id, error = %e, "recording how a job ended");
            None
        }
    }
}

/// Records a job as dead (the end of its run: `None`, the caller reads it again if needed).
async fn bury(d: &Daemon, id: &str, attempt: u32, why: String) -> Option<Finished> {
    tracing::error!(job = %id, error = %why, "job is dead");
    match d.queue.bury_attempt(id, attempt, why, now_ms()).await {
        Ok(job) => d.hub.finish(id, || finished_event(&job)),
        Err(e) => tracing::error!(job = %id, error = %e, "recording a dead job"),
    }
    None
}

fn job_state_for(state: TxnState, cancelled: bool) -> JobState {
    match state {
        TxnState::Committed => JobState::Succeeded,
        _ if cancelled => JobState::Cancelled,
        _ => JobState::Failed,
    }
}

/// Runs one claimed job in a span naming it (its transaction's own span nests inside).
/// `fresh`: the job was submitted and claimed at once ([`provisio_engine::queue::Queue::submit_claimed`]) with
/// this request, which its payload holds: no earlier attempt to settle, nothing to decode.
///
/// Returns the job as it ended when its run finished it (`None`: retried later, dead, or
/// settled otherwise; the queue has it).
pub(crate) async fn run_job(d: &Arc<Daemon>, job: Job, fresh: Option<Request>) -> Option<Finished> {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "job", job.id = %job.id, subject = %job.subject, target = %job.target, attempt = job.attempts
    );
    // Another runner of this process is still in this job: it stalled past its lease (before
    // its heartbeats started, or while they could not reach the queue), the job was taken
    // back and claimed again here. Its transaction (the same id) is that runner's: running
    // it here too would do its work twice. Left to it; this claim's lease runs out and the
    // job is looked at again then (settled from the journal once the first runner ended;
    // the first runner's own settle is refused, its claim being stale).
    let Some(_runner) = Runner::enter(d, &job.id) else {
        tracing::warn!(parent: &span, job = %job.id, attempt = job.attempts, "another runner of this process is still in this job (it stalled past its lease): left to it, looked at again when this claim's lease runs out");
        return None;
    };
    // PostgreSQL: the run stops where it is (at a parked store write, or a provider call)
    // when the database is lost after the claim: the session's locks went with it, so
    // another node may take the job over. Nothing of it is settled here; the queue takes
    // the job back once the database returns and a node recovers its transaction.
    let Some(epoch) = d.queue.claim_epoch(&job.id).or_else(|| link_epoch(d)) else {
        return run_job_inner(d, job, fresh).instrument(span).await;
    };
    let id = job.id.clone();
    let stopped = (job.subject.clone(), job.txn.clone());
    let _running = Running { d, id: id.clone() };
    tokio::select! {
        biased;
        () = lost_since(d, epoch) => {
            tracing::warn!(job = %id, "the database was lost while the job ran: it stops here, and is taken over once the database is back");
            // The journal forgets the stopped run's transaction: whoever takes the job up
            // in this process owns it again (a stale entry skipped that, and every write
            // of the next attempt was refused as forfeited).
            if let (subject, Some(txn)) = stopped {
                d.journal_for(&subject).forget(&txn);
            }
            None
        }
        r = run_job_inner(d, job, fresh).instrument(span) => r,
    }
}

/// A task stopped with its owner (a job's lease heartbeats, when its run stops).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A runner's place in [`Daemon::runners`], left however its run ends.
struct Runner<'a> {
    d: &'a Daemon,
    id: String,
}

impl<'a> Runner<'a> {
    /// Enters job `id`; `None` when another runner of this process is in it.
    fn enter(d: &'a Daemon, id: &str) -> Option<Runner<'a>> {
        lock(&d.runners).insert(id.to_string()).then(|| Runner {
            d,
            id: id.to_string(),
        })
    }
}

impl Drop for Runner<'_> {
    fn drop(&mut self) {
        lock(&self.d.runners).remove(&self.id);
    }
}

/// Forgets a running job's cancel handle however its run ends.
struct Running<'a> {
    d: &'a Daemon,
    id: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        lock(&self.d.running).remove(&self.id);
    }
}

/// The PostgreSQL store's link epoch (`None` on sled).
fn link_epoch(d: &Daemon) -> Option<u64> {
    d.store.postgres().map(|pg| pg.link().borrow().epoch)
}

/// Resolves once the PostgreSQL store lost its database after `epoch`.
async fn lost_since(d: &Daemon, epoch: u64) {
    match d.store.postgres() {
        Some(pg) => pg.lost_since(epoch).await,
        None => std::future::pending().await,
    }
}

/// Whether the daemon's PostgreSQL store cannot reach its database now.
pub(crate) fn database_lost(d: &Daemon) -> bool {
    d.store.postgres().is_some_and(|pg| !pg.is_up())
}

/// Settles an attempt a crash cut short, else runs the job's transaction with the id the
/// claim recorded.
async fn run_job_inner(d: &Arc<Daemon>, job: Job, fresh: Option<Request>) -> Option<Finished> {
    let id = job.id.clone();
    // This claim's attempt: what the run settles is refused once another claim took the
    // job (this runner stalled past its lease).
    let attempt = job.attempts;
    let Some(txn) = job.txn.clone() else {
        return bury(d, &id, attempt, "claimed without a transaction id".into()).await;
    };
    d.hub.publish(&id, || {
        serde_json::json!({"event": "state", "id": id, "state": "running", "attempt": job.attempts, "txn": txn})
    });
    // An attempt a crash (or a lost lease) cut short: its transaction is in the journal
    // (recovery finished it) or it never started.
    let mut earlier = if fresh.is_some() {
        Ok(None)
    } else {
        index::summary(d.store.as_ref(), &txn)
    };
    // Several daemons on one PostgreSQL store: the attempt was cut short on another node
    // that died (its lease ran out or its heartbeat stopped), leaving its transaction
    // unfinished. Recovered here exactly as at start, unless a live process owns it.
    let mut taken_over = false;
    if d.queue.is_shared() {
        if let Ok(Some(summary)) = &earlier {
            if matches!(
                summary.state,
                TxnState::Running | TxnState::RollingBack | TxnState::Queued
            ) {
                let journal = d.journal_for(&job.subject);
                let engine = d.engine.clone().with_journal(journal.clone());
                match provisio_engine::txn::recovery::recover_txn(&engine, &journal, &txn).await {
                    Ok(Some(r)) => {
                        tracing::warn!(job = %id, txn = %txn, from = %r.from, to = %r.to, "recovered the transaction of a job whose node stopped");
                        taken_over = r.to == TxnState::RolledBack;
                        settle_held_of(d, &txn, r.to).await;
                        earlier = index::summary(d.store.as_ref(), &txn);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(job = %id, txn = %txn, error = %e, "recovering the transaction of a job whose node stopped")
                    }
                }
            }
        }
    }
    match earlier {
        Ok(Some(summary)) => {
            let over = matches!(
                summary.state,
                TxnState::Committed | TxnState::RolledBack | TxnState::RollbackFailed
            );
            // Several daemons: the node that recovered it at its start may not be the one
            // that claimed the job: the journal says whether recovery rolled it back.
            let recovered_elsewhere = d.queue.is_shared()
                && (summary.message.as_deref()
                    == Some(provisio_engine::txn::recovery::RECOVERY_MESSAGE)
                    // Rolled back because the store failed under it (the database lost
                    // mid-run): nothing of it took effect either.
                    || journal_failed(summary.message.as_deref()));
            if summary.state == TxnState::RolledBack
                && (d.crashed.contains(&txn) || taken_over || recovered_elsewhere)
                && !job.cancel_requested
            {
                // A crash cut the attempt short and recovery rolled it back: nothing of it
                // took effect, so the job is tried again as a new transaction.
                tracing::warn!(job = %id, txn = %txn, "a crash cut this job's attempt short and recovery rolled it back; trying again");
                match d
                    .queue
                    .retry_later_attempt(
                        &id,
                        attempt,
                        format!(
                            "attempt {} was cut short by a crash and rolled back by recovery",
                            job.attempts
                        ),
                        None,
                        now_ms(),
                        d.backoff(),
                        random(),
                    )
                    .await
                {
                    Ok(j) if j.state == JobState::Dead => d.hub.finish(&id, || finished_event(&j)),
                    Ok(_) => d.metrics.retried(),
                    Err(e) => tracing::error!(job = %id, error = %e, "queueing a retry"),
                }
                return None;
            }
            if over {
                tracing::info!(job = %id, txn = %txn, state = %summary.state, "settled an attempt cut short by a restart");
                if summary.state != TxnState::RollbackFailed {
                    // The process may have died between journaling the end and telling
                    // the providers (a filesystem intent file would stay until a purge).
                    d.engine.transaction_over(&summary.id).await;
                }
                // The response the run ended with, journaled with its final state (what a
                // waiting client was told before the crash, if it was told); else, ended
                // by recovery, one rebuilt from the journal.
                let stored = match d.journal_for(&job.subject).stored_response(&summary.id) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(job = %id, txn = %txn, error = %e, "the journaled response cannot be read; rebuilding one from the records");
                        None
                    }
                };
                let response = match stored {
                    Some((doc, true))
                        if summary.state == TxnState::RolledBack && !job.cancel_requested =>
                    {
                        // Rolled back for a transient provider error: as after the run,
                        // tried again.
                        let error = summary
                            .message
                            .clone()
                            .unwrap_or_else(|| "transient failure".into());
                        // Its code, from the journaled response: MPS `retryStopOnFailure`
                        // applies as it would have without the crash.
                        let code = response_error_code(&doc);
                        retry_transient(d, &id, attempt, error, code).await;
                        return None;
                    }
                    Some((mut doc, _)) => {
                        if let (Some(obj), Some(f)) = (doc.as_object_mut(), request_format(d, &job))
                        {
                            obj.insert(
                                "requestFormat".into(),
                                serde_json::Value::String(format_name(f).into()),
                            );
                        }
                        doc
                    }
                    None => journal_response(d, &job.subject, &summary),
                };
                finish(
                    d,
                    &id,
                    attempt,
                    Finish {
                        state: job_state_for(summary.state, job.cancel_requested),
                        outcome: Some(summary.state.name().to_string()),
                        result: Some(d.seal(response.to_string().as_bytes())),
                        error: summary.message.clone(),
                    },
                )
                .await;
                return None;
            } else {
                // Still running: in this process (a runner that stalled past its lease)
                // or, with several daemons, on a live node that lost the job's lease in a
                // stall (it still owns the transaction). The job keeps its transaction id:
                // it is left to its lease, taken back when that runs out and looked at
                // again then, by which time the first runner has settled it. A retry would
                // start a second transaction while the first still runs.
                tracing::warn!(job = %id, txn = %txn, state = %summary.state, "the job's transaction still runs under another runner; looking again when the lease runs out");
            }
            return None;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(job = %id, error = %e, "reading the job's transaction");
            let _ = d
                .queue
                .retry_later_attempt(
                    &id,
                    attempt,
                    e.to_string(),
                    None,
                    now_ms(),
                    d.backoff(),
                    random(),
                )
                .await;
            return None;
        }
    }
    let first_run = fresh.is_some();
    let request = match fresh {
        Some(r) => r,
        None => {
            let payload = match job
                .payload
                .as_deref()
                .ok_or_else(|| "its request is not kept".to_string())
                .and_then(|p| d.open(p))
                .and_then(|b| serde_json::from_slice::<Payload>(&b).map_err(|e| e.to_string()))
            {
                Ok(p) => p,
                Err(e) => {
                    return bury(d, &id, attempt, format!("its request cannot be read: {e}")).await
                }
            };
            match payload.into_request() {
                Ok(r) => r,
                Err(e) => return bury(d, &id, attempt, e).await,
            }
        }
    };
    let response_format = request.format;
    let txn_id: TxnId = match txn.parse() {
        Ok(t) => t,
        Err(e) => return bury(d, &id, attempt, format!("bad transaction id {txn}: {e}")).await,
    };
    let cancel = Cancel::new();
    if job.cancel_requested {
        cancel.cancel();
    }
    lock(&d.running).insert(id.clone(), cancel.clone());
    // A cancellation that came between the claim and the line above (even for a job
    // submitted and claimed with this request: a listing shows its id at once). The
    // queue keeps a running job's record in memory (sled), or the cancels made through
    // this process of jobs running here (PostgreSQL): this reads nothing from the store.
    if d.queue.cancel_requested(&id) {
        cancel.cancel();
    }
    // Tests: a runner stalled after it found no earlier attempt in the journal and before
    // its transaction's first record and its heartbeats.
    provisio_engine::failpoint::pause_once("run_job").await;
    let beat = {
        let d = d.clone();
        let id = id.clone();
        let cancel = cancel.clone();
        AbortOnDrop(tokio::spawn(async move {
            let every = (d.config.lease.0 / 3).max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(every).await;
                if !matches!(
                    d.queue
                        .heartbeat_attempt(&id, attempt, now_ms(), d.config.lease.0)
                        .await,
                    Ok(true)
                ) {
                    return;
                }
                // Several daemons: a cancel made through another one whose notification
                // was lost is read by the heartbeat (nothing is read for it here).
                if d.queue.is_shared() && d.queue.cancel_requested(&id) {
                    cancel.cancel();
                }
            }
        }))
    };
    let log: Arc<Mutex<StepLog>> = Arc::default();
    let engine = {
        let hub = d.hub.clone();
        let id = id.clone();
        let metrics = d.metrics.clone();
        let log = log.clone();
        d.engine
            .clone()
            .with_journal(d.journal_for(&job.subject))
            .with_jobs(Arc::new(
                jobs::StoreJobs::new(
                    d.queue.clone(),
                    d.seal.clone(),
                    &job.subject,
                    d.config.max_attempts,
                )
                .retaining_successful_responses(d.config.retain_successful_responses)
                .first_run(first_run)
                .with_security_context(request.context.child("securityContext").cloned()),
            ))
            .with_events(move |e| {
                match e {
                    Event::StepStarted { step, target } => lock(&log).steps.push(StepSeen {
                        step: step.clone(),
                        target: target.clone(),
                        started: std::time::Instant::now(),
                        attempt: None,
                    }),
                    Event::StepFinished { step, ok, attempt } => {
                        let mut log = lock(&log);
                        // The latest unfinished call of the step (parallel steps end in
                        // any order; most often it is the last one started).
                        if let Some(s) = log
                            .steps
                            .iter_mut()
                            .rev()
                            .find(|s| s.attempt.is_none() && s.step == *step)
                        {
                            metrics.step(&s.target, s.started.elapsed());
                            s.attempt = Some(*attempt);
                        }
                        if !ok {
                            log.unclean = true;
                        }
                    }
                    Event::Undoing { .. } => lock(&log).unclean = true,
                }
                hub.publish(&id, || event_json(e))
            })
    };
    let run_started = std::time::Instant::now();
    let control = RunControl {
        txn_id: Some(txn_id),
        cancel: Some(cancel.clone()),
    };
    // A trusted request checked by this process runs the program its check compiled.
    let compiled = lock(&d.compiled).remove(&id);
    let result = match compiled {
        Some(program) => {
            engine
                .run_program_controlled(program, request.data, request.context, control)
                .await
        }
        None => engine.run_controlled(request, control).await,
    };
    drop(beat);
    lock(&d.running).remove(&id);
    let mut result = match result {
        Ok(r) => r,
        Err(RunError::Compile(e)) => {
            // Checked at submission; the namespaces may have changed since.
            return finish(
                d,
                &id,
                attempt,
                Finish {
                    state: JobState::Failed,
                    outcome: None,
                    result: None,
                    error: Some(e.to_string()),
                },
            )
            .await;
        }
        Err(RunError::AlreadyRunning { txn }) => {
            // Another run of this process is in the job's transaction (the daemon's own
            // `runners` keep this from happening): that run settles the job.
            tracing::warn!(job = %id, %txn, "the job's transaction is already running in this process; left to that run");
            return None;
        }
    };
    let cancelled = cancel.is_cancelled();
    let failure = result.failure.as_ref().map(|f| f.message.clone());
    d.metrics
        .finished(&job.target, result.state.name(), run_started.elapsed());
    // The store failed under the run (a journal write refused: on PostgreSQL, the
    // database lost mid-run): it rolled back for no fault of the request, so it is tried
    // again, never settled as failed.
    let store_failed = result.journal_error.is_some() || journal_failed(failure.as_deref());
    if result.state == TxnState::RolledBack && (result.transient || store_failed) && !cancelled {
        let error = failure.unwrap_or_else(|| "transient failure".into());
        let code = result.failure.as_ref().map(|f| f.code);
        retry_transient(d, &id, attempt, error, code).await;
        return None;
    }
    // The response as the journal built and sealed it with the final state (the same seal
    // key), else built and sealed here.
    let (mut doc, sealed) = match result.kept_response.take() {
        Some(kept) if kept.sealed == d.seal.is_some() => (kept.doc, kept.text),
        _ => {
            let doc = response::to_value(&result);
            let sealed = d.seal(doc.to_string().as_bytes());
            (doc, sealed)
        }
    };
    let sealed = job_result(response_format, sealed);
    if let Some(obj) = doc.as_object_mut() {
        obj.insert(
            "requestFormat".into(),
            serde_json::Value::String(format_name(response_format).into()),
        );
    }
    finish(
        d,
        &id,
        attempt,
        Finish {
            state: job_state_for(result.state, cancelled),
            outcome: Some(result.state.name().to_string()),
            result: Some(sealed),
            error: failure,
        },
    )
    .await
    .map(|f| Finished {
        response: Some(doc),
        // The run is over: no event comes any more.
        steps: std::mem::take(&mut *lock(&log)).clean(),
        ..f
    })
}

/// A finished job's stored result: the name of its request's format, `:`, then the
/// response document as the journal sealed it with the final state (or, without a seal key,
/// its JSON text), so that the response is built and sealed once per run. The format is no
/// secret, and stays outside the seal: base64 and a JSON text never start with `NAME:`.
/// Results without the prefix (sealed documents that hold their `requestFormat`) read as
/// before.
fn job_result(format: Format, sealed: String) -> String {
    let name = format_name(format);
    let mut out = String::with_capacity(name.len() + 1 + sealed.len());
    out.push_str(name);
    out.push(':');
    out.push_str(&sealed);
    out
}

/// Whether a transaction's failure is its journal's (a store write refused), not the
/// request's: the engine names such a failure `journal: …` (`JournalError`).
fn journal_failed(message: Option<&str>) -> bool {
    message.is_some_and(|m| m.starts_with("journal: "))
}

/// The jobs an MPS `queue` step of `txn` held, once recovery on another node's behalf
/// ended it: released when it committed, removed when it rolled back.
async fn settle_held_of(d: &Daemon, txn: &str, state: TxnState) {
    let r = match state {
        TxnState::Committed => d.queue.release_held(txn, now_ms()).await,
        TxnState::RolledBack => d.queue.discard_held(txn).await,
        _ => return,
    };
    match r {
        Ok(n) if n > 0 => d.wake.notify_waiters(),
        Ok(_) => {}
        Err(e) => {
            tracing::error!(txn = %txn, error = %e, "settling the jobs held for a recovered transaction")
        }
    }
}

/// A running job whose transaction rolled back for a transient provider error is queued
/// again after a backoff (or dead after its last attempt). Knowing the error's code
/// (HRESULT), the job's MPS `retryStopOnFailure` may allow it only one more attempt.
async fn retry_transient(d: &Daemon, id: &str, attempt: u32, error: String, code: Option<u32>) {
    match d
        .queue
        .retry_later_attempt(id, attempt, error, code, now_ms(), d.backoff(), random())
        .await
    {
        // Dead, or failed under MPS onFailure="continue": over.
        Ok(j) if j.state.is_final() => d.hub.finish(id, || finished_event(&j)),
        Ok(j) => {
            d.metrics.retried();
            d.hub.publish(id, || {
                serde_json::json!({"event": "retry", "id": id, "not_before_ms": j.not_before_ms, "error": j.error})
            })
        }
        Err(e) => tracing::error!(job = %id, error = %e, "queueing a retry"),
    }
}

/// The HRESULT of a response's `error` (`"code": "0x80070057"`), as the run failed with it.
fn response_error_code(doc: &serde_json::Value) -> Option<u32> {
    let code = doc.get("error")?.get("code")?.as_str()?;
    u32::from_str_radix(code.strip_prefix("0x")?, 16).ok()
}

/// The syntax of a job's request (its response says it as `requestFormat`).
fn request_format(d: &Daemon, job: &Job) -> Option<Format> {
    let bytes = d.open(job.payload.as_deref()?).ok()?;
    let payload: Payload = serde_json::from_slice(&bytes).ok()?;
    Some(match payload.request {
        Some(r) => r.format,
        None => parse_format(&payload.format),
    })
}

/// The response of a transaction that ended without its runner (a crash, then recovery),
/// rebuilt from the journal: its id and status, the error and the failing step, the
/// provider calls it made (steps done). The request's final `data` is not journaled, so it
/// is absent, and `rebuiltFromJournal` says so.
fn journal_response(
    d: &Daemon,
    subject: &str,
    summary: &provisio_engine::txn::TxnSummary,
) -> serde_json::Value {
    let mut calls = 0u64;
    let mut failed_step = None;
    let journal = d.journal_for(subject);
    if let Ok(records) = provisio_engine::txn::recovery::records(&journal, &summary.id) {
        for (_, r) in records {
            match r {
                provisio_engine::txn::Record::Intent { .. } => calls += 1,
                provisio_engine::txn::Record::Failed { step, .. } => failed_step = Some(step),
                _ => {}
            }
        }
    }
    let mut doc = serde_json::json!({
        "transactionId": summary.id.to_string(),
        "status": summary.state.name(),
        "calls": calls,
        "rebuiltFromJournal": "this transaction was finished by recovery after a restart: its response is rebuilt from the journal, which keeps no final data (see `provisio tx show`)",
    });
    if let (Some(message), Some(o)) = (&summary.message, doc.as_object_mut()) {
        o.insert(
            "error".into(),
            serde_json::json!({ "description": message, "step": failed_step }),
        );
    }
    doc
}

fn event_json(e: &Event) -> serde_json::Value {
    match e {
        Event::StepStarted { step, target } => {
            serde_json::json!({"event": "step_started", "step": step, "target": target})
        }
        Event::StepFinished { step, ok, .. } => {
            serde_json::json!({"event": "step_finished", "step": step, "ok": ok})
        }
        Event::Undoing { step } => serde_json::json!({"event": "undoing", "step": step}),
    }
}
