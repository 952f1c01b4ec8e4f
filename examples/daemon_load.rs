//! A load generator for `provisio serve` on loopback (issue 14, "Speed"):
//! `cargo run --release --example daemon_load -- throughput|backlog|restart [ARGS]`.
//!
//! - `throughput [REPS] [REQUESTS] [CLIENTS] [WORKERS]` (default 3, 4000, 64, 64): five-step
//!   requests over HTTP to a daemon with `serve.workers = WORKERS`, each client one keep-alive connection in a closed loop. Each repetition runs,
//!   in this order: the in-process engine on five no-op steps (`Five` of the issue-3
//!   benches, writes, then `FiveRead`, reads as the daemon's steps are: the ratio's
//!   reference; REQUESTS with CLIENTS in flight, durable journal in the same folder kind), the
//!   daemon with `?wait=30s` (latency = submit until the finished answer; requests/s =
//!   finished answers per second), and the daemon without `wait` (latency = submit until 202;
//!   requests/s = REQUESTS over the time until the last one succeeded). Prints medians and the
//!   daemon / in-process ratio.
//! - `backlog N [BATCH] [RATE_GUESS] [SAMPLE]` (default batch 100 items a request, 3000
//!   jobs/s): N jobs submitted in batch documents, all not before one moment far enough
//!   ahead that the whole backlog is queued first; the daemon's RSS with the backlog held,
//!   then the drain: time per job over the whole backlog and over its first and last tenth;
//!   or, with SAMPLE > 0, only the first SAMPLE jobs of the drain, in five windows (the time
//!   per job with nearly N still queued, without draining the rest).
//! - `restart [QUEUED] [IN_FLIGHT]` (default 10000, 1000): QUEUED jobs scheduled an hour
//!   ahead and IN_FLIGHT jobs held running (their last step calls the example Ledger exec
//!   provider, slowed to 30 s a call); `kill -9` of the daemon, then a new daemon: the time
//!   from its start until `/v1/ready` answers 200.
//! - `floor [REPS] [REQUESTS] [CLIENTS] [WORKERS]` (default 3, 4000, 64, 64): what HTTP
//!   itself allows here, beside the daemon: a bare axum server (a child process: this
//!   program's `floor-server` mode) answering the same `POST /v1/requests` with an answer
//!   of the daemon's shape, first with nothing durable, then with a group-committed
//!   `fdatasync`'d append a request, then as the *minimal daemon* (each request run to its
//!   end on the in-process engine with its durable journal before the answer: no queue, no
//!   job records, no auth); then the daemon with `?wait=30s`; interleaved, each
//!   with its server process's CPU time a request, and the in-process engine on five reads
//!   (as in `throughput`) each repetition: each server's ratio to it says what HTTP alone
//!   leaves of the in-process figure.
//!
//! The daemon is `target/release/provisio` (or `PROVISIO_BIN`), started on 127.0.0.1 with
//! a fresh data directory in a temp folder (parent: `PROVISIO_BENCH_DIR`). The five steps
//! are `Error Provider/ReportEvent` at level debug (a read that changes nothing, journaled as
//! every step is), the only provider of the binary that calls no backend.

/// The binary's allocator, so the in-process figure is what `provisio` does.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../benches/support/mod.rs"]
mod support;

use anyhow::{anyhow, bail, Context, Result};
use provisio_engine::txn::DurableJournal;
use provisio_engine::SledStore;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TOKEN: &str = "load-token-0123456789abcdef";

const NAMESPACE: &str = r#"namespace: Load
procedures:
  Five:
    access: public
    parallel: false
    steps:
      s1: { call: Error Provider/ReportEvent, with: { level: debug, parameters: { parameter: "1" } } }
      s2: { call: Error Provider/ReportEvent, with: { level: debug, parameters: { parameter: "2" } } }
      s3: { call: Error Provider/ReportEvent, with: { level: debug, parameters: { parameter: "3" } } }
      s4: { call: Error Provider/ReportEvent, with: { level: debug, parameters: { parameter: "4" } } }
      s5: { call: Error Provider/ReportEvent, with: { level: debug, parameters: { parameter: "5" } } }
  Held:
    access: public
    parallel: false
    inputs:
      p: { type: string, required: true }
    steps:
      s1: { call: Error Provider/ReportEvent, with: { level: debug, parameters: { parameter: "1" } } }
      s2: { call: Error Provider/ReportEvent, with: { level: debug, parameters: { parameter: "2" } } }
      s3: { call: Error Provider/ReportEvent, with: { level: debug, parameters: { parameter: "3" } } }
      s4: { call: Error Provider/ReportEvent, with: { level: debug, parameters: { parameter: "4" } } }
      s5: { call: Ledger Provider/CreateAccount, with: { name: "{{ data.p }}", credit: 1 } }
"#;

const FIVE: &str = r#"{"call": "Load/Five", "data": {}}"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tempdir() -> Result<tempfile::TempDir> {
    Ok(match std::env::var_os("PROVISIO_BENCH_DIR") {
        Some(p) => tempfile::tempdir_in(p)?,
        None => tempfile::tempdir()?,
    })
}

fn bin() -> PathBuf {
    std::env::var_os("PROVISIO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/release/provisio"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn token_hash() -> Result<String> {
    use sha2::Digest;
    let d = sha2::Sha256::digest(TOKEN.as_bytes());
    Ok(d.iter().map(|b| format!("{b:02x}")).collect())
}

/// A data directory with the configuration and the namespace; the daemon it runs.
struct Site {
    dir: tempfile::TempDir,
}

struct Daemon {
    child: Child,
    url: String,
    agent: ureq::Agent,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Site {
    fn new(workers: usize, ledger_delay_ms: u64) -> Result<Site> {
        let dir = tempdir()?;
        let p = dir.path();
        std::fs::create_dir_all(p.join("ns"))?;
        std::fs::write(p.join("ns/load.yaml"), NAMESPACE)?;
        let ledger = repo().join("examples/exec-provider/ledger.py");
        let config = format!(
            r#"data_dir = "data"
namespaces = "ns"

[serve]
listen = "127.0.0.1:0"
workers = {workers}
max_body_bytes = 67108864
lease = "60s"
shutdown_timeout = "5s"

[[serve.tokens]]
subject = "load"
sha256 = "{}"

[[providers.exec]]
name = "Ledger"
command = ["python3", "{}"]
env = {{ LEDGER_FILE = "{}", LEDGER_DELAY_MS = "{ledger_delay_ms}" }}
"#,
            token_hash()?,
            ledger.display(),
            p.join("ledger.json").display()
        );
        std::fs::write(p.join("provisio.toml"), config)?;
        Ok(Site { dir })
    }

    fn start(&self) -> Result<(Daemon, Duration)> {
        let _ = std::fs::remove_file(self.dir.path().join("data/daemon.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))?;
        let started = Instant::now();
        let child = Command::new(bin())
            .arg("--config")
            .arg(self.dir.path().join("provisio.toml"))
            .arg("serve")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin().display()))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        let mut d = Daemon {
            child,
            url: String::new(),
            agent,
        };
        let info = self.dir.path().join("data/daemon.json");
        loop {
            if started.elapsed() > Duration::from_secs(300) {
                bail!(
                    "the daemon did not become ready in 300 s; see {}",
                    self.dir.path().join("daemon.log").display()
                );
            }
            if let Some(status) = d.child.try_wait()? {
                bail!(
                    "the daemon exited ({status}): {}",
                    std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
                );
            }
            if d.url.is_empty() {
                if let Ok(text) = std::fs::read_to_string(&info) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                        if let Some(u) = v["url"].as_str() {
                            d.url = u.trim_end_matches('/').to_string();
                        }
                    }
                }
            }
            if !d.url.is_empty() {
                if let Ok(r) = d.agent.get(format!("{}/v1/ready", d.url)).call() {
                    if r.status().as_u16() == 200 {
                        return Ok((d, started.elapsed()));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// CPU time (user + system) of process `pid` so far (`/proc/PID/stat`, clock ticks of
/// 10 ms: `getconf CLK_TCK` is 100 on Linux).
fn cpu_of(pid: &str) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (in parentheses, which may hold spaces).
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's CPU time so far.
    fn cpu(&self) -> Duration {
        cpu_of(&self.pid().to_string())
    }

    /// `(VmRSS, VmHWM)` in bytes.
    fn rss(&self) -> Result<(u64, u64)> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> u64 {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }

    /// Jobs by state, from `/v1/metrics`.
    fn jobs(&self, state: &str) -> Result<u64> {
        let mut r = self
            .agent
            .get(format!("{}/v1/metrics", self.url))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .call()?;
        let text = r.body_mut().read_to_string()?;
        let want = format!("provisio_jobs{{state=\"{state}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(want.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .ok_or_else(|| anyhow!("no {want} in the metrics"))
    }

    fn wait_jobs(&self, state: &str, at_least: u64, limit: Duration) -> Result<Instant> {
        let until = Instant::now() + limit;
        loop {
            if self.jobs(state)? >= at_least {
                return Ok(Instant::now());
            }
            if Instant::now() > until {
                bail!(
                    "only {} jobs {state} after {limit:?}, expected {at_least}",
                    self.jobs(state)?
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// POSTs `body` to `/v1/requests{query}`; the status and the answer's text.
fn post(agent: &ureq::Agent, url: &str, query: &str, body: &str) -> Result<(u16, String)> {
    let mut r = agent
        .post(format!("{url}/v1/requests{query}"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .content_type("application/json")
        .send(body)?;
    let status = r.status().as_u16();
    let text = r.body_mut().with_config().limit(1 << 26).read_to_string()?;
    Ok((status, text))
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `total` requests from `clients` closed-loop clients; (elapsed, latencies).
fn hammer(
    url: &str,
    total: usize,
    clients: usize,
    query: &str,
    want: u16,
) -> Result<(Duration, Vec<Duration>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (next, lat, url, query) = (
                next.clone(),
                lat.clone(),
                url.to_string(),
                query.to_string(),
            );
            std::thread::spawn(move || -> Result<()> {
                let agent = client();
                let mut mine = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let s = Instant::now();
                    let (status, text) = post(&agent, &url, &query, FIVE)?;
                    mine.push(s.elapsed());
                    if status != want || (want == 200 && !text.contains("\"committed\"")) {
                        bail!("answer {status}: {text}");
                    }
                }
                lat.lock().map_err(|_| anyhow!("poisoned"))?.extend(mine);
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow!("a client panicked"))??;
    }
    let took = start.elapsed();
    let mut l = std::mem::take(&mut *lat.lock().map_err(|_| anyhow!("poisoned"))?);
    l.sort();
    Ok((took, l))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The in-process engine the daemon is compared with: a two-thread runtime, a durable
/// journal on sled in its own folder (kept alive by the returned `TempDir`), warmed up on
/// five reads by `clients` at once.
fn in_process(
    clients: usize,
) -> Result<(tokio::runtime::Runtime, tempfile::TempDir, support::Env)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempdir()?;
    let store = Arc::new(SledStore::open(dir.path())?);
    let journal = Arc::new(DurableJournal::new(store, None, "bench"));
    let env = support::env(support::txn_namespaces()?, Some(journal))?;
    rt.block_on(support::throughput(&env.engine, "FiveRead", 200, clients))?;
    Ok((rt, dir, env))
}

fn throughput(reps: usize, total: usize, clients: usize, workers: usize) -> Result<()> {
    let (rt, _inproc_dir, env) = in_process(clients)?;
    rt.block_on(support::throughput(&env.engine, "Five", 200, clients))?;

    let site = Site::new(workers, 0)?;
    let (d, _) = site.start()?;
    // Warm-up: connections, the journal's first segments.
    hammer(&d.url, 500, clients, "?wait=30s", 200)?;
    println!("load before: {}", loadavg());
    let (mut inproc, mut waited, mut queued) = (Vec::new(), Vec::new(), Vec::new());
    let mut inproc_writes = Vec::new();
    let (mut w50, mut w99, mut q50, mut q99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // CPU time a request, in µs: the in-process engine (this process, whose clients are
    // idle then) and the daemon process (the load generator's own CPU not counted).
    let (mut cpu_ip, mut cpu_w, mut cpu_q) = (Vec::new(), Vec::new(), Vec::new());
    let per = |d: Duration| d.as_secs_f64() * 1e6 / total as f64;
    for rep in 0..reps {
        let t = rt.block_on(support::throughput(&env.engine, "Five", total, clients))?;
        let ipw = total as f64 / t.as_secs_f64();
        inproc_writes.push(ipw);
        // The same kind of steps as the daemon's (reads), the ratio's reference.
        let c0 = cpu_of("self");
        let t = rt.block_on(support::throughput(&env.engine, "FiveRead", total, clients))?;
        cpu_ip.push(per(cpu_of("self").saturating_sub(c0)));
        let ip = total as f64 / t.as_secs_f64();
        inproc.push(ip);

        let c0 = d.cpu();
        let (t, l) = hammer(&d.url, total, clients, "?wait=30s", 200)?;
        cpu_w.push(per(d.cpu().saturating_sub(c0)));
        let w = total as f64 / t.as_secs_f64();
        waited.push(w);
        w50.push(pct(&l, 0.5));
        w99.push(pct(&l, 0.99));

        let before = d.jobs("succeeded")?;
        let c0 = d.cpu();
        let start = Instant::now();
        let (_, l) = hammer(&d.url, total, clients, "", 202)?;
        let done = d.wait_jobs("succeeded", before + total as u64, Duration::from_secs(300))?;
        cpu_q.push(per(d.cpu().saturating_sub(c0)));
        let q = total as f64 / (done - start).as_secs_f64();
        queued.push(q);
        q50.push(pct(&l, 0.5));
        q99.push(pct(&l, 0.99));
        println!(
            "rep {}: in-process five writes {ipw:.0} req/s, five reads {ip:.0} req/s, {:.0} µs CPU/req | daemon ?wait: {w:.0} req/s, p50 {:.2} ms p99 {:.2} ms, {:.0} µs CPU/req | daemon 202: {q:.0} req/s completed, submit p50 {:.2} ms p99 {:.2} ms, {:.0} µs CPU/req | load {}",
            rep + 1,
            cpu_ip[rep],
            w50[rep],
            w99[rep],
            cpu_w[rep],
            q50[rep],
            q99[rep],
            cpu_q[rep],
            loadavg()
        );
    }
    println!(
        "CPU a request, median: in-process {:.0} µs; daemon ?wait {:.0} µs; daemon 202 {:.0} µs (daemon process only)",
        median(&mut cpu_ip),
        median(&mut cpu_w),
        median(&mut cpu_q)
    );
    let (ip, w, q) = (
        median(&mut inproc),
        median(&mut waited),
        median(&mut queued),
    );
    println!(
        "in-process five no-op writes (6 syncs a request), median: {:.0} req/s",
        median(&mut inproc_writes)
    );
    println!(
        "median of {reps} ({total} five-step requests, {clients} clients, serve.workers = {workers}): in-process (five reads, as the daemon's) {ip:.0} req/s; daemon ?wait=30s {w:.0} req/s ({:.2}x in-process), p50 {:.2} ms, p99 {:.2} ms; daemon 202 then drained {q:.0} req/s ({:.2}x), submit p50 {:.2} ms, p99 {:.2} ms",
        w / ip,
        median(&mut w50),
        median(&mut w99),
        q / ip,
        median(&mut q50),
        median(&mut q99),
    );
    println!(
        "targets: > 4,000 req/s: {}; p99 < 20 ms: {}; ratio > 0.6: {}",
        w.max(q) > 4000.0,
        median(&mut w99).min(median(&mut q99)) < 20.0,
        w.max(q) / ip > 0.6
    );
    Ok(())
}

/// A batch document of `n` five-step items.
fn batch_doc(n: usize) -> String {
    let items = vec![r#"{"data": {}}"#; n].join(",");
    format!(r#"{{"call": "Load/Five", "batch": [{items}]}}"#)
}

/// Queues `n` jobs of `doc` (`per` items each) with `clients` clients, all not before `at_ms`.
fn submit_batches(
    d: &Daemon,
    n: usize,
    per: usize,
    at_ms: u64,
    clients: usize,
) -> Result<Duration> {
    let docs = n.div_ceil(per);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (next, url) = (next.clone(), d.url.clone());
            std::thread::spawn(move || -> Result<()> {
                let agent = client();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= docs {
                        return Ok(());
                    }
                    let k = per.min(n - i * per);
                    let delay = at_ms.saturating_sub(now_ms()).max(1);
                    let (status, text) =
                        post(&agent, &url, &format!("?delay={delay}ms"), &batch_doc(k))?;
                    if status != 202 {
                        bail!("batch answered {status}: {}", &text[..text.len().min(400)]);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow!("a client panicked"))??;
    }
    Ok(start.elapsed())
}

fn backlog(n: usize, per: usize, rate_guess: f64, sample: usize) -> Result<()> {
    let site = Site::new(4, 0)?;
    let (d, _) = site.start()?;
    let (rss0, _) = d.rss()?;
    let at = now_ms() + (n as f64 / rate_guess * 1e3) as u64 + 3000;
    let took = submit_batches(&d, n, per, at, 8)?;
    let (rss_held, hwm_held) = d.rss()?;
    let started_early = d.jobs("running")? + d.jobs("succeeded")?;
    let queued = d.jobs("queued")?;
    println!(
        "backlog {n}: queued in {:.1} s ({:.0} jobs/s, batches of {per}); {queued} queued; daemon RSS {:.0} MiB held (peak {:.0} MiB; {:.0} MiB idle before){}",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        rss_held as f64 / 1048576.0,
        hwm_held as f64 / 1048576.0,
        rss0 as f64 / 1048576.0,
        if started_early > 0 {
            format!("; WARNING: {started_early} started before the backlog was complete (raise RATE_GUESS's inverse: lower it)")
        } else {
            String::new()
        }
    );
    // The drain, from the moment the jobs are due.
    while now_ms() < at {
        std::thread::sleep(Duration::from_millis(1));
    }
    let start = Instant::now();
    if sample > 0 {
        // Counted from the jobs already done (a backlog queued slower than guessed starts
        // before `at`; the warning above says so).
        let base = d.jobs("succeeded")?;
        let window = (sample / 5).max(1) as u64;
        let mut last = start;
        let mut out = Vec::new();
        for w in 1..=5u64 {
            let t = d.wait_jobs("succeeded", base + w * window, Duration::from_secs(7200))?;
            out.push(format!(
                "{:.0}",
                (t - last).as_secs_f64() * 1e6 / window as f64
            ));
            last = t;
        }
        let (rss, hwm) = d.rss()?;
        println!(
            "backlog {n}: first {} jobs of the drain in windows of {window}: {} µs a job ({:.0} jobs/s overall); {} still queued; daemon RSS {:.0} MiB (peak {:.0} MiB); load {}",
            5 * window,
            out.join(" / "),
            (5 * window) as f64 / (last - start).as_secs_f64(),
            d.jobs("queued")?,
            rss as f64 / 1048576.0,
            hwm as f64 / 1048576.0,
            loadavg()
        );
        return Ok(());
    }
    let tenth = (n / 10).max(1) as u64;
    let first = d.wait_jobs("succeeded", tenth, Duration::from_secs(7200))?;
    let nine = d.wait_jobs("succeeded", n as u64 - tenth, Duration::from_secs(7200))?;
    let end = d.wait_jobs("succeeded", n as u64, Duration::from_secs(7200))?;
    let (_, hwm) = d.rss()?;
    let per_job = |t: Duration, k: u64| t.as_secs_f64() * 1e6 / k as f64;
    println!(
        "backlog {n}: drained in {:.1} s: {:.0} µs a job ({:.0} jobs/s); first tenth {:.0} µs a job, last tenth {:.0} µs a job; daemon peak RSS {:.0} MiB; load {}",
        (end - start).as_secs_f64(),
        per_job(end - start, n as u64),
        n as f64 / (end - start).as_secs_f64(),
        per_job(first - start, tenth),
        per_job(end - nine, tenth),
        hwm as f64 / 1048576.0,
        loadavg()
    );
    Ok(())
}

fn restart(queued: usize, in_flight: usize) -> Result<()> {
    // Enough workers to hold every in-flight job at once.
    let site = Site::new(in_flight + 4, 30_000)?;
    let (mut d, first) = site.start()?;
    submit_batches(&d, queued, 100, now_ms() + 3_600_000, 4)?;
    // The in-flight jobs: four quick steps, then a call the slowed Ledger holds.
    let per = 100;
    for i in 0..in_flight.div_ceil(per) {
        let k = per.min(in_flight - i * per);
        let items: Vec<String> = (0..k)
            .map(|j| format!(r#"{{"data": {{"p": "acct-{i}-{j}"}}}}"#))
            .collect();
        let doc = format!(r#"{{"call": "Load/Held", "batch": [{}]}}"#, items.join(","));
        let (status, text) = post(&d.agent, &d.url, "", &doc)?;
        if status != 202 {
            bail!("answered {status}: {text}");
        }
    }
    d.wait_jobs("running", in_flight as u64, Duration::from_secs(120))?;
    // Every in-flight transaction past its fourth step.
    std::thread::sleep(Duration::from_secs(2));
    let running = d.jobs("running")?;
    let q = d.jobs("queued")?;
    // kill -9 the daemon and its Ledger provider (the whole process group would take this
    // program too: the provider is found by its parent).
    let pid = d.pid();
    let _ = Command::new("pkill")
        .args(["-9", "-P", &pid.to_string()])
        .status();
    d.child.kill()?;
    d.child.wait()?;
    drop(d);
    let (d2, ready) = site.start()?;
    let back = d2.jobs("queued")?;
    println!(
        "restart: {q} queued and {running} running at kill -9 (first start {:.0} ms); the new daemon answered /v1/ready 200 after {:.0} ms ({back} queued then); load {}",
        first.as_secs_f64() * 1e3,
        ready.as_secs_f64() * 1e3,
        loadavg()
    );
    Ok(())
}

/// The floor of HTTP on this machine (`floor` mode): a bare axum server, in a process of its
/// own (this program again, `floor-server none|sync DIR`), answering `POST /v1/requests` as
/// the daemon's `?wait` does in shape — the bearer token checked, the JSON body parsed, an
/// answer of the daemon's size (the job, five steps, the response) serialized — with no
/// engine behind it: with `sync`, each request's record (its body) is appended to one file
/// and answered after an `fdatasync` covering it, group-committed as the daemon's journal
/// is (one writer thread; whatever arrived while it synced goes into the next sync).
///
/// With `engine` it is the *minimal daemon*: each request is run to its end, before the
/// answer, on the in-process engine with its durable journal on sled in DIR — the same
/// five-step request and engine as the ratio's reference (`FiveRead`), the answer's
/// `response` the engine's response document — with no queue, no job records, no token
/// hashing or ACL, no event hub: the least a daemon that runs the transaction in-process
/// does for a request.
fn floor_server(mode: &str, dir: &str) -> Result<()> {
    use axum::http::{HeaderMap, StatusCode};
    use std::io::Write;
    type Ack = tokio::sync::oneshot::Sender<()>;
    let engine = match mode {
        "engine" => {
            let journal = support::durable(&PathBuf::from(dir).join("engine"))?;
            let env = support::env(support::txn_namespaces()?, Some(journal))?;
            Some(Arc::new((
                env.engine,
                support::request("FiveRead", provisio_engine::data::Element::new("data")),
            )))
        }
        _ => None,
    };
    let sync = match mode {
        "none" | "engine" => None,
        "sync" => {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, Ack)>();
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(PathBuf::from(dir).join("floor.log"))?;
            std::thread::spawn(move || {
                let mut acks = Vec::new();
                let mut buf = Vec::new();
                while let Some((record, ack)) = rx.blocking_recv() {
                    buf.extend_from_slice(&record);
                    acks.push(ack);
                    while let Ok((record, ack)) = rx.try_recv() {
                        buf.extend_from_slice(&record);
                        acks.push(ack);
                    }
                    if file
                        .write_all(&buf)
                        .and_then(|()| file.sync_data())
                        .is_err()
                    {
                        return;
                    }
                    buf.clear();
                    for ack in acks.drain(..) {
                        let _ = ack.send(());
                    }
                }
            });
            Some(tx)
        }
        other => bail!("floor-server none|sync|engine DIR, not `{other}`"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let handler = move |headers: HeaderMap, body: axum::body::Bytes| {
            let sync = sync.clone();
            let engine = engine.clone();
            async move {
                let bearer = format!("Bearer {TOKEN}");
                if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&bearer) {
                    return (StatusCode::UNAUTHORIZED, "no".to_string());
                }
                let Ok(request) = serde_json::from_slice::<serde_json::Value>(&body) else {
                    return (StatusCode::BAD_REQUEST, "bad".to_string());
                };
                if let Some(tx) = &sync {
                    let (ack, done) = tokio::sync::oneshot::channel();
                    if tx.send((body.to_vec(), ack)).is_err() || done.await.is_err() {
                        return (StatusCode::INTERNAL_SERVER_ERROR, "sync".to_string());
                    }
                }
                let id = format!("{:032x}", now_ms());
                let mut response = serde_json::json!({"transactionId": id, "status": "committed", "data": request["data"], "requestFormat": "json"});
                if let Some(engine) = &engine {
                    let (engine, five) = &**engine;
                    match support::run_expect(engine, five, provisio_engine::TxnState::Committed).await {
                        Ok(result) => response = provisio_engine::response::to_value(&result),
                        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                    }
                }
                let steps: Vec<serde_json::Value> = (1..=5)
                    .map(|i| serde_json::json!({"step": format!("s{i}"), "target": "Error Provider/ReportEvent", "attempt": 1, "state": "done"}))
                    .collect();
                let answer = serde_json::json!({
                    "id": id, "state": "succeeded", "outcome": "committed", "subject": "load",
                    "target": request["call"], "priority": 0, "serial_key": null, "attempts": 1,
                    "max_attempts": 5, "transactions": [id], "submitted_ms": now_ms(),
                    "not_before_ms": 0, "started_ms": now_ms(), "finished_ms": now_ms(),
                    "error": null, "cancel_requested": false, "parents": [], "waiting_for": [],
                    "response_retained": true, "steps": steps,
                    "response": response,
                    "created": true, "warnings": []
                });
                (StatusCode::OK, answer.to_string())
            }
        };
        let app = axum::Router::new().route("/v1/requests", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}

/// `floor`: REPS rounds of the bare server without a sync, with a group-committed sync, and
/// the daemon with `?wait`, interleaved, each REQUESTS from CLIENTS clients (the same load
/// generator as `throughput`); requests/s and each server process's CPU time a request.
fn floor(reps: usize, total: usize, clients: usize, workers: usize) -> Result<()> {
    use std::io::BufRead;
    let dir = tempdir()?;
    // The in-process engine on five reads (the ratio's reference, as in `throughput`).
    let (rt, _inproc_dir, env) = in_process(clients)?;
    let mut inproc = Vec::new();
    let site = Site::new(workers, 0)?;
    let (d, _) = site.start()?;
    hammer(&d.url, 500, clients, "?wait=30s", 200)?;
    let per = |c: Duration| c.as_secs_f64() * 1e6 / total as f64;
    // Each server's name, then its requests/s, CPU µs a request and p99 (ms) a repetition.
    type Row = (&'static str, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut rows: Vec<Row> = Vec::new();
    for name in [
        "bare axum, no sync",
        "bare axum, group-committed fdatasync",
        "minimal daemon (in-process engine, durable journal)",
        "daemon ?wait",
    ] {
        rows.push((name, Vec::new(), Vec::new(), Vec::new()));
    }
    for rep in 0..reps {
        let t = rt.block_on(support::throughput(&env.engine, "FiveRead", total, clients))?;
        let ip = total as f64 / t.as_secs_f64();
        println!(
            "rep {}: in-process engine, five reads: {ip:.0} req/s | load {}",
            rep + 1,
            loadavg()
        );
        inproc.push(ip);
        for (i, mode) in ["none", "sync", "engine"].into_iter().enumerate() {
            // A fresh folder a run: the minimal daemon's journal starts empty each time.
            let run_dir = tempfile::tempdir_in(dir.path())?;
            let mut child = Command::new(std::env::current_exe()?)
                .args(["floor-server", mode])
                .arg(run_dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
            let url = format!("http://{}", line.trim());
            hammer(&url, 500, clients, "?wait=30s", 200)?;
            let pid = child.id().to_string();
            let c0 = cpu_of(&pid);
            let (t, l) = hammer(&url, total, clients, "?wait=30s", 200)?;
            let cpu = per(cpu_of(&pid).saturating_sub(c0));
            let _ = child.kill();
            let _ = child.wait();
            let r = total as f64 / t.as_secs_f64();
            println!(
                "rep {}: {}: {r:.0} req/s, p50 {:.2} ms p99 {:.2} ms, {cpu:.0} µs CPU/req (server process) | load {}",
                rep + 1,
                rows[i].0,
                pct(&l, 0.5),
                pct(&l, 0.99),
                loadavg()
            );
            rows[i].1.push(r);
            rows[i].2.push(cpu);
            rows[i].3.push(pct(&l, 0.99));
        }
        let c0 = d.cpu();
        let (t, l) = hammer(&d.url, total, clients, "?wait=30s", 200)?;
        let cpu = per(d.cpu().saturating_sub(c0));
        let r = total as f64 / t.as_secs_f64();
        println!(
            "rep {}: daemon ?wait: {r:.0} req/s, p50 {:.2} ms p99 {:.2} ms, {cpu:.0} µs CPU/req (daemon process) | load {}",
            rep + 1,
            pct(&l, 0.5),
            pct(&l, 0.99),
            loadavg()
        );
        rows[3].1.push(r);
        rows[3].2.push(cpu);
        rows[3].3.push(pct(&l, 0.99));
    }
    let ip = median(&mut inproc);
    println!("median of {reps}: in-process engine, five reads: {ip:.0} req/s");
    for (name, mut r, mut c, mut p) in rows {
        let r = median(&mut r);
        println!(
            "median of {reps} ({total} requests, {clients} clients): {name}: {r:.0} req/s ({:.2}x in-process), {:.0} µs CPU/req, p99 {:.2} ms",
            r / ip,
            median(&mut c),
            median(&mut p)
        );
    }
    Ok(())
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> Result<T> {
    match args.get(i) {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| anyhow!("argument {i} `{s}` is not a number")),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("floor-server") {
        return floor_server(
            args.get(1).map_or("none", String::as_str),
            args.get(2).map_or(".", String::as_str),
        );
    }
    if !bin().exists() {
        bail!(
            "{} is missing: `cargo build --release` first (or set PROVISIO_BIN)",
            bin().display()
        );
    }
    println!(
        "machine: {} cores, load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    match args.first().map(String::as_str) {
        Some("throughput") => throughput(
            arg(&args, 1, 3)?,
            arg(&args, 2, 4000)?,
            arg(&args, 3, 64)?,
            arg(&args, 4, 64)?,
        ),
        Some("backlog") => backlog(
            arg(&args, 1, 10_000)?,
            arg(&args, 2, 100)?,
            arg(&args, 3, 3000.0)?,
            arg(&args, 4, 0)?,
        ),
        Some("restart") => restart(arg(&args, 1, 10_000)?, arg(&args, 2, 1000)?),
        Some("floor") => floor(
            arg(&args, 1, 3)?,
            arg(&args, 2, 4000)?,
            arg(&args, 3, 64)?,
            arg(&args, 4, 64)?,
        ),
        _ => bail!("usage: daemon_load throughput [REPS] [REQUESTS] [CLIENTS] [WORKERS] | floor [REPS] [REQUESTS] [CLIENTS] [WORKERS] | backlog N [BATCH] [RATE_GUESS] [SAMPLE] | restart [QUEUED] [IN_FLIGHT]"),
    }
}
