//! The issue-3 workloads on the PostgreSQL store, against PostgreSQL's own commit latency
//! measured in the same run: `cargo run --release --example pg_bench -- [reps]`.
//!
//! Starts a private PostgreSQL server (test-support; fsync on, the defaults otherwise) in a
//! temp dir, then, each on a fresh schema:
//! - floor: 41 sequential single-row `INSERT`s each committed with `synchronous_commit =
//!   on` straight through tokio-postgres (one round trip + WAL flush each: what a journal
//!   needing 41 durable writes cannot beat), median of 21;
//! - sequential: one request of 40 no-op steps on a durable journal in the store (median
//!   and p90 of `reps`), as a ratio to that floor;
//! - throughput: 500 requests of 5 no-op steps, 16 in flight (median and p10 of `reps`);
//! - the same two on sled in a temp dir, for comparison in the same run.
//!
//! `cargo run --release --example pg_bench -- nodes [REQUESTS] [REPS]` (default 2000, 3):
//! B2-style throughput through daemons sharing the database (issue 18, second half): one,
//! then three `provisio serve` processes (`target/release/provisio`, or `PROVISIO_BIN`;
//! `PROVISIO_BINS=A,B` compares two binaries interleaved: A, B, A, B…) on one fresh schema
//! each time, REQUESTS five-step requests (`Error Provider/ReportEvent`) from 16
//! closed-loop HTTP clients spread over the daemons, each waiting for its answer
//! (`?wait=60s`); requests/s (median of REPS) and the three/one ratio, with per request:
//! the server's WAL syncs, commits and WAL records, and the CPU time of each daemon, of the
//! PostgreSQL server and of the clients. With one daemon, also 30 requests of 40 steps one
//! at a time (median and p99, and per step) between two samplings of PostgreSQL's own
//! commit latency (200 single-row `INSERT`s committed synchronously each: median and p99).
//! `PG_BENCH_STATEMENTS=1` turns `pg_stat_statements` on (the server restarted) and prints
//! the statements of the first repetition's runs, per request (calls, WAL records,
//! planning and execution time). `PG_BENCH_ONE=1` runs one daemon only (no three-daemon
//! runs); `PG_BENCH_PERF=PREFIX` records each one-daemon run's daemon with `perf record -g`
//! during the measured requests, into `PREFIX-<run label>.data`.
//!
//! `cargo run --release --example pg_bench -- floor [REQUESTS] [REPS]` (default 4000, 3):
//! the floor of the server's work for a five-step request, without provisio: `pgbench`
//! (16 clients) runs the fewest commits such a request needs (see `FLOOR_SCRIPT`), with
//! the same per-request figures as `nodes` (PostgreSQL CPU, commits, WAL syncs, records).

/// The binary's allocator, so the figures are what `provisio` does.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../benches/support/mod.rs"]
mod support;

use anyhow::{anyhow, Result};
use provisio_engine::data::Element;
use provisio_engine::txn::DurableJournal;
use provisio_engine::{PgOptions, PgStore, SledStore, Store, TxnState};
use provisio_test_support::postgres::Postgres;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn ms(s: f64) -> String {
    format!("{:.3} ms", s * 1e3)
}

/// 41 sequential synchronous commits of one small row, straight through tokio-postgres.
async fn commit_floor(url: &str, commits: usize, reps: usize) -> Result<Duration> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS floor (id bigserial PRIMARY KEY, v bytea NOT NULL);
             SET synchronous_commit = on",
        )
        .await?;
    let insert = client.prepare("INSERT INTO floor (v) VALUES ($1)").await?;
    let value = vec![7u8; 512];
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        let s = Instant::now();
        for _ in 0..commits {
            // Autocommit: one round trip, one commit, one WAL flush.
            client.execute(&insert, &[&value]).await?;
        }
        samples.push(s.elapsed());
    }
    samples.sort();
    Ok(samples[samples.len() / 2])
}

/// The server's WAL syncs so far (`pg_stat_wal.wal_sync`).
async fn wal_syncs(url: &str) -> Result<i64> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client
        .query_one("SELECT wal_sync FROM pg_stat_wal", &[])
        .await?
        .get(0))
}

async fn sequential(store: Arc<dyn Store>, reps: usize) -> Result<(f64, f64)> {
    let journal = Arc::new(DurableJournal::new(store, None, "bench"));
    let env = support::env(support::txn_namespaces()?, Some(journal))?;
    let req = support::request("Seq40", Element::new("data"));
    for _ in 0..10 {
        support::run_expect(&env.engine, &req, TxnState::Committed).await?;
    }
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let s = Instant::now();
        support::run_expect(&env.engine, &req, TxnState::Committed).await?;
        t.push(s.elapsed());
    }
    Ok(support::median_p90(&mut t))
}

async fn throughput(
    store: Arc<dyn Store>,
    pg: Option<Arc<PgStore>>,
    reps: usize,
) -> Result<(f64, f64)> {
    let journal = Arc::new(DurableJournal::new(store, None, "bench"));
    let env = support::env(support::txn_namespaces()?, Some(journal))?;
    support::throughput(&env.engine, "Five", 100, 16).await?;
    let mut rates = Vec::with_capacity(reps);
    for _ in 0..reps {
        let d = support::throughput(&env.engine, "Five", 500, 16).await?;
        rates.push(500.0 / d.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    if let Some(pg) = pg {
        let (commits, batches) = pg.commit_count();
        println!(
            "  writer: {commits} commits carried {batches} batches ({:.1} a commit)",
            batches as f64 / commits.max(1) as f64
        );
    }
    Ok((rates[rates.len() / 2], rates[(rates.len() - 1) / 10]))
}

fn pg_store(pg: &Postgres, name: &str) -> Result<Arc<PgStore>> {
    let url = pg.new_schema(name);
    let options = PgOptions {
        connect_retry: Duration::from_secs(10),
        application: "provisio pg_bench".into(),
    };
    Ok(Arc::new(
        PgStore::open(&url, &options).map_err(|e| anyhow!("{e}"))?,
    ))
}

const TOKEN: &str = "bench-token-0123456789abcdef";

const FIVE_NS: &str = r#"namespace: Load
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
"#;

/// A daemon process of the `nodes` mode.
struct Node {
    child: std::process::Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// Starts one daemon of `bin` in `dir` (sharing its data folder with the others) and waits until
/// it answers `/v1/ready`.
fn start_node(bin: &std::path::Path, dir: &std::path::Path) -> Result<Node> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow!("starting {}: {e}", bin.display()))?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(u) = line.split("listening on ").nth(1) {
                let _ = tx.send(u.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(120))
        .map_err(|_| anyhow!("the daemon did not start"))?;
    Ok(Node {
        child,
        url: url.trim_end_matches('/').to_string(),
    })
}

/// The `nodes` mode's configuration: the five-step procedure of the throughput runs and
/// the 40-step one of the latency run.
fn nodes_namespace() -> String {
    let mut ns = FIVE_NS.to_string();
    ns.push_str("  Forty:\n    access: public\n    parallel: false\n    steps:\n");
    for i in 1..=40 {
        ns.push_str(&format!(
            "      s{i}: {{ call: Error Provider/ReportEvent, with: {{ level: debug, parameters: {{ parameter: \"{i}\" }} }} }}\n"
        ));
    }
    ns
}

/// `total` five-step requests from 16 closed-loop clients over `nodes`: requests/s.
fn hammer_nodes(nodes: &[Node], total: usize) -> Result<f64> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let url = nodes[i % nodes.len()].url.clone();
            let next = next.clone();
            std::thread::spawn(move || -> Result<()> {
                let agent = agent();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    call(&agent, &url, "Load/Five")?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow!("a client panicked"))??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// One waited-for request of `call` to the daemon at `url`; fails unless it committed.
fn call(agent: &ureq::Agent, url: &str, call: &str) -> Result<()> {
    let mut r = agent
        .post(format!("{url}/v1/requests?wait=60s"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .content_type("application/json")
        .send(format!(r#"{{"call": "{call}", "data": {{}}}}"#))?;
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string()?;
    if status != 200 || !text.contains("\"committed\"") {
        return Err(anyhow!("answer {status}: {text}"));
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The fields of `/proc/PID/stat` after the command name (0: state, 1: ppid, 11: utime,
/// 12: stime).
fn proc_stat(pid: u32) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// CPU time of a process (all its threads) so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    proc_stat(pid).map_or(0, |f| f[11] + f[12])
}

/// The PostgreSQL server listening on `port`: its postmaster's pid.
fn postmaster(port: u16) -> Option<u32> {
    let port = port.to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_pg = args.first().is_some_and(|a| a.ends_with(b"postgres"));
        let on_port = args
            .windows(2)
            .any(|w| w[0] == b"-p" && w[1] == port.as_bytes());
        (is_pg && on_port).then_some(pid)
    })
}

/// CPU ticks of the server: the postmaster and every process it started (the backends of
/// the connections open now, the WAL writer, the checkpointer).
fn server_ticks(postmaster: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
        .filter(|(pid, f)| *pid == postmaster || f[1] == u64::from(postmaster))
        .map(|(_, f)| f[11] + f[12])
        .sum()
}

/// The CPU ticks of the ended children a process reaped (`cutime` + `cstime`).
fn reaped_ticks(pid: u32) -> u64 {
    proc_stat(pid).map_or(0, |f| f[13] + f[14])
}

/// Busy and total ticks of the whole machine (`/proc/stat`), over all its cores.
fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let total: u64 = f.iter().sum();
    // idle + iowait
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The server's counters a run is measured with: WAL syncs, committed transactions of the
/// database, WAL records.
async fn server_counters(client: &tokio_postgres::Client) -> Result<[i64; 3]> {
    let row = client
        .query_one(
            "SELECT (SELECT wal_sync FROM pg_stat_wal),
                    (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
                    (SELECT wal_records FROM pg_stat_wal)",
            &[],
        )
        .await?;
    Ok([row.get(0), row.get(1), row.get(2)])
}

/// `n` single-row `INSERT`s each its own synchronous commit (autocommit: one round trip,
/// one WAL flush), one at a time: each one's time.
async fn commit_samples(client: &tokio_postgres::Client, n: usize) -> Result<Vec<Duration>> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS floor (id bigserial PRIMARY KEY, v bytea NOT NULL);
             SET synchronous_commit = on",
        )
        .await?;
    let insert = client.prepare("INSERT INTO floor (v) VALUES ($1)").await?;
    let value = vec![7u8; 512];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        client.execute(&insert, &[&value]).await?;
        samples.push(s.elapsed());
    }
    Ok(samples)
}

/// Median and p99 of `samples`, in seconds.
fn median_p99(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64();
    (at(0.5), at(0.99))
}

/// The binaries the `nodes` mode compares: `PROVISIO_BINS` (comma-separated, run
/// interleaved: A, B, A, B…), else `PROVISIO_BIN`, else `target/release/provisio`.
fn binaries() -> Vec<std::path::PathBuf> {
    if let Some(list) = std::env::var_os("PROVISIO_BINS") {
        return list
            .to_string_lossy()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(std::path::PathBuf::from)
            .collect();
    }
    vec![std::env::var_os("PROVISIO_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/provisio")
        })]
}

/// Turns `pg_stat_statements` on (`PG_BENCH_STATEMENTS=1`): preloaded, the server
/// restarted, the extension created.
fn enable_statements(pg: &Postgres) -> Result<()> {
    let out = pg.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'");
    if out.code != 0 {
        return Err(anyhow!("ALTER SYSTEM: {}", out.stderr));
    }
    pg.restart();
    // Known once the library is loaded; reloadable.
    for sql in [
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
        "ALTER SYSTEM SET pg_stat_statements.track_planning = on",
        "SELECT pg_reload_conf()",
    ] {
        let out = pg.psql(sql);
        if out.code != 0 {
            return Err(anyhow!("{sql}: {}", out.stderr));
        }
    }
    Ok(())
}

/// Prints what `pg_stat_statements` counted since its last reset, per request: calls,
/// WAL records, planning and execution time (the server's own clock, so the statements'
/// shares of its CPU), the largest first.
fn print_statements(pg: &Postgres, requests: usize) {
    let out = pg.psql(&format!(
        "SELECT round(calls::numeric / {requests}, 2) || ' | ' || round(wal_records::numeric / {requests}, 1) || ' | '
             || round(total_plan_time::numeric * 1000 / {requests}, 1) || ' us | ' || round(total_exec_time::numeric * 1000 / {requests}, 1) || ' us | '
             || regexp_replace(left(query, 110), '\\s+', ' ', 'g')
         FROM pg_stat_statements WHERE calls >= {requests} / 20
         ORDER BY total_exec_time + total_plan_time DESC LIMIT 30"
    ));
    println!("  statements per request (calls | WAL records | planning | execution | statement):");
    for line in out.stdout.lines() {
        println!("    {line}");
    }
    let out = pg.psql(&format!(
        "SELECT round(sum(calls)::numeric / {requests}, 1) || ' statements, ' || round(sum(wal_records)::numeric / {requests}, 1)
             || ' WAL records, planning ' || round(sum(total_plan_time)::numeric * 1000 / {requests}, 1) || ' us, execution '
             || round(sum(total_exec_time)::numeric * 1000 / {requests}, 1) || ' us'
         FROM pg_stat_statements"
    ));
    println!("  per request in all: {}", out.stdout.trim());
}

/// One measured configuration of the `nodes` mode: `n` daemons of `bin`.
struct NodesRun {
    rate: f64,
}

/// Starts `n` daemons of `bin` on a fresh schema, warms them up, measures `total`
/// five-step requests (and, with one daemon, the 40-step request against the server's own
/// commit latency), and prints what it measured.
fn nodes_run(
    pg: &Postgres,
    rt: &tokio::runtime::Runtime,
    bin: &std::path::Path,
    label: &str,
    n: usize,
    total: usize,
    statements: bool,
) -> Result<NodesRun> {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("ns"))?;
    std::fs::write(dir.path().join("ns/load.yaml"), nodes_namespace())?;
    let url = pg.new_schema(&format!("nodes{n}"));
    std::fs::write(
        dir.path().join("provisio.toml"),
        format!(
            "data_dir = \"data\"\nnamespaces = \"ns\"\nstore = \"{url}\"\n\n[serve]\nworkers = 16\nlease = \"30s\"\nshutdown_timeout = \"5s\"\n\n[[serve.tokens]]\nsubject = \"load\"\nsha256 = \"{hash}\"\n"
        ),
    )?;
    // One at a time: the first makes the seal key the others read.
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(start_node(bin, dir.path())?);
    }
    let (client, conn) = rt.block_on(tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls))?;
    rt.spawn(conn);
    let server = postmaster(url_port(&pg.url())).unwrap_or(0);
    let tick = clock_ticks();
    // Warm-up (connections, pools, prepared plans), then the run.
    hammer_nodes(&nodes, 200)?;
    if statements {
        pg.psql("SELECT pg_stat_statements_reset()");
    }
    let c0 = rt.block_on(server_counters(&client))?;
    let d0: Vec<u64> = nodes.iter().map(|d| cpu_ticks(d.child.id())).collect();
    let s0 = server_ticks(server);
    let b0 = cpu_ticks(std::process::id());
    let m0 = machine_ticks();
    let perf = match std::env::var("PG_BENCH_PERF") {
        Ok(prefix) if n == 1 => Some(perf_record(&prefix, label, nodes[0].child.id())?),
        _ => None,
    };
    let rate = hammer_nodes(&nodes, total)?;
    if let Some(perf) = perf {
        perf_stop(perf);
    }
    let m1 = machine_ticks();
    let b1 = cpu_ticks(std::process::id());
    let s1 = server_ticks(server);
    let d1: Vec<u64> = nodes.iter().map(|d| cpu_ticks(d.child.id())).collect();
    let c1 = rt.block_on(server_counters(&client))?;
    let per = |ticks: u64| ticks as f64 / tick / total as f64 * 1e3;
    let daemons: Vec<String> = d0
        .iter()
        .zip(&d1)
        .map(|(a, b)| format!("{:.2}", per(b - a)))
        .collect();
    let busy = (m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64;
    // Without the server's pid (not found in /proc) its CPU is not measured: say so rather
    // than print the ticks of whatever has no parent.
    let server_cpu = if server == 0 {
        "not measured (server pid not found)".to_string()
    } else {
        format!("{:.2}", per(s1.saturating_sub(s0)))
    };
    println!(
        "nodes: {label}: {n} daemon(s): {total} requests x 5 steps, 16 in flight: {rate:.0} req/s (load {})\n  per request: {:.2} WAL syncs, {:.2} commits, {:.1} WAL records; CPU ms per request: daemons {} (sum {:.2}), PostgreSQL {}, clients {:.2}; machine busy {:.0}% of its cores",
        loadavg(),
        (c1[0] - c0[0]) as f64 / total as f64,
        (c1[1] - c0[1]) as f64 / total as f64,
        (c1[2] - c0[2]) as f64 / total as f64,
        daemons.join(" + "),
        per(d1.iter().sum::<u64>() - d0.iter().sum::<u64>()),
        server_cpu,
        per(b1 - b0),
        busy * 100.0
    );
    if statements {
        print_statements(pg, total);
    }
    if n == 1 {
        // The 40-step request, one at a time, between two samplings of the server's own
        // commit latency (a single-row INSERT committed synchronously).
        let mut floor = rt.block_on(commit_samples(&client, 200))?;
        let agent = agent();
        for _ in 0..5 {
            call(&agent, &nodes[0].url, "Load/Forty")?;
        }
        let mut seq = Vec::new();
        for _ in 0..30 {
            let s = Instant::now();
            call(&agent, &nodes[0].url, "Load/Forty")?;
            seq.push(s.elapsed());
        }
        floor.extend(rt.block_on(commit_samples(&client, 200))?);
        let (fmed, fp99) = median_p99(&mut floor);
        let (smed, sp99) = median_p99(&mut seq);
        println!(
            "  40-step request, one at a time (n=30): median {} p99 {} = {} per step (p99 {}); PostgreSQL's own commit (single-row INSERT, synchronous, n=400): median {} p99 {}; per step / commit = {:.2}x (load {})",
            ms(smed),
            ms(sp99),
            ms(smed / 40.0),
            ms(sp99 / 40.0),
            ms(fmed),
            ms(fp99),
            smed / 40.0 / fmed,
            loadavg()
        );
    }
    Ok(NodesRun { rate })
}

/// `perf record -g` of process `pid` into `PREFIX-LABEL.data` (`PG_BENCH_PERF=PREFIX`),
/// until [`perf_stop`].
fn perf_record(prefix: &str, label: &str, pid: u32) -> Result<std::process::Child> {
    let name: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let out = format!("{prefix}-{name}.data");
    let child = std::process::Command::new("perf")
        .args(["record", "-q", "-F", "999", "-g", "-o", &out, "-p"])
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow!("starting perf record: {e}"))?;
    // perf attaches in the background: let it start before the load does.
    std::thread::sleep(Duration::from_millis(500));
    println!("  perf record of the daemon (pid {pid}) into {out}");
    Ok(child)
}

/// Stops a [`perf_record`] (SIGINT: it writes its file and exits).
fn perf_stop(mut perf: std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let _ = perf.wait();
}

fn url_port(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// The `nodes` mode (see the module documentation).
fn nodes_mode(total: usize, reps: usize) -> Result<()> {
    let pg = Postgres::start().ok_or_else(|| anyhow!("PostgreSQL is not installed"))?;
    let statements = std::env::var("PG_BENCH_STATEMENTS").is_ok_and(|v| v == "1");
    if statements {
        enable_statements(&pg)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bins = binaries();
    let one_only = std::env::var("PG_BENCH_ONE").is_ok_and(|v| v == "1");
    // rates[binary][one or three]
    let mut rates: Vec<[Vec<f64>; 2]> = bins.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for rep in 0..reps {
        for (b, bin) in bins.iter().enumerate() {
            for (slot, n) in [1usize, 3].into_iter().enumerate() {
                if n == 3 && one_only {
                    rates[b][slot].push(f64::NAN);
                    continue;
                }
                let label = format!("rep {rep}: {}", bin.display());
                let run = nodes_run(&pg, &rt, bin, &label, n, total, statements && rep == 0)?;
                rates[b][slot].push(run.rate);
            }
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut ones = Vec::new();
    for (b, bin) in bins.iter().enumerate() {
        let one = med(&mut rates[b][0]);
        let three = med(&mut rates[b][1]);
        ones.push(one);
        println!(
            "nodes: {}: median of {reps}: one daemon {one:.0} req/s, three daemons {three:.0} req/s, ratio 3/1 = {:.2}",
            bin.display(),
            three / one
        );
    }
    if ones.len() == 2 {
        println!(
            "nodes: one daemon, second binary / first: {:.2}x",
            ones[1] / ones[0]
        );
    }
    Ok(())
}

/// What the `floor` mode runs per request with `pgbench`: the fewest commits a five-step
/// request on a durable journal needs, each as small as it can be: the claimed job's row
/// (committed without waiting for the flush, as the daemon's claiming submission does),
/// each step's record committed durably (five), then the job's finish and the
/// transaction's last record in one durable commit. Rows the size the daemon writes (the
/// job ~600 bytes, a record ~300).
const FLOOR_SCRIPT: &str = "\\set id random(1, 9000000000000000000)
BEGIN;
SET LOCAL synchronous_commit TO off;
INSERT INTO floor_jobs VALUES (:id, 1, repeat('j', 600)::bytea);
COMMIT;
INSERT INTO floor_journal VALUES (:id, 1, repeat('r', 300)::bytea);
INSERT INTO floor_journal VALUES (:id, 2, repeat('r', 300)::bytea);
INSERT INTO floor_journal VALUES (:id, 3, repeat('r', 300)::bytea);
INSERT INTO floor_journal VALUES (:id, 4, repeat('r', 300)::bytea);
INSERT INTO floor_journal VALUES (:id, 5, repeat('r', 300)::bytea);
BEGIN;
UPDATE floor_jobs SET state = 2, body = repeat('f', 700)::bytea WHERE id = :id;
INSERT INTO floor_journal VALUES (:id, 6, repeat('r', 300)::bytea);
COMMIT;
";

/// The `floor` mode: `pgbench` (16 clients, prepared statements) runs [`FLOOR_SCRIPT`]
/// `total` times against the private server; requests/s, and per request the server's CPU,
/// commits, WAL syncs and WAL records, measured as the `nodes` mode measures a daemon.
fn floor_mode(total: usize, reps: usize) -> Result<()> {
    let pg = Postgres::start().ok_or_else(|| anyhow!("PostgreSQL is not installed"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("floor.sql");
    std::fs::write(&script, FLOOR_SCRIPT)?;
    let tick = clock_ticks();
    let server = postmaster(url_port(&pg.url())).unwrap_or(0);
    for rep in 0..reps {
        let url = pg.new_schema("floor");
        let (client, conn) = rt.block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls))?;
        rt.spawn(conn);
        rt.block_on(client.batch_execute(
            "CREATE TABLE floor_jobs (id bigint PRIMARY KEY, state smallint NOT NULL, body bytea NOT NULL);
             CREATE TABLE floor_journal (txn bigint NOT NULL, seq integer NOT NULL, value bytea NOT NULL, PRIMARY KEY (txn, seq))",
        ))?;
        let c0 = rt.block_on(server_counters(&client))?;
        let s0 = server_ticks(server) + reaped_ticks(server);
        let started = Instant::now();
        let out = std::process::Command::new(pg.bin().join("pgbench"))
            .args(["-n", "-M", "prepared", "-c", "16", "-j", "2", "-t"])
            .arg((total / 16).to_string())
            .arg("-f")
            .arg(&script)
            .arg(&url)
            .output()?;
        let took = started.elapsed().as_secs_f64();
        // pgbench's backends ended with it: their CPU is the postmaster's reaped children's.
        let s1 = server_ticks(server) + reaped_ticks(server);
        let c1 = rt.block_on(server_counters(&client))?;
        if !out.status.success() {
            return Err(anyhow!(
                "pgbench failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let done = (total / 16 * 16) as f64;
        println!(
            "floor: rep {rep}: pgbench, 16 clients, {done} requests (1 async + 6 durable commits, 7 rows and 1 update each): {:.0} req/s (load {})\n  per request: {:.2} WAL syncs, {:.2} commits, {:.1} WAL records; PostgreSQL CPU {:.2} ms",
            done / took,
            loadavg(),
            (c1[0] - c0[0]) as f64 / done,
            (c1[1] - c0[1]) as f64 / done,
            (c1[2] - c0[2]) as f64 / done,
            (s1 - s0) as f64 / tick / done * 1e3,
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let arg = |i: usize, d: usize| -> Result<usize> {
        Ok(std::env::args()
            .nth(i)
            .map(|r| r.parse())
            .transpose()?
            .unwrap_or(d))
    };
    if std::env::args().nth(1).as_deref() == Some("floor") {
        return floor_mode(arg(2, 4000)?, arg(3, 3)?);
    }
    if std::env::args().nth(1).as_deref() == Some("nodes") {
        return nodes_mode(arg(2, 2000)?, arg(3, 3)?);
    }
    let reps: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(30);
    let pg = Postgres::start().ok_or_else(|| anyhow!("PostgreSQL is not installed"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let floor_url = pg.new_schema("floor");
        let before = commit_floor(&floor_url, 41, 21).await?.as_secs_f64();
        let syncs0 = wal_syncs(&floor_url).await?;
        let (med, p90) = sequential(pg_store(&pg, "seq")?, reps).await?;
        let syncs = wal_syncs(&floor_url).await? - syncs0;
        let after = commit_floor(&floor_url, 41, 21).await?.as_secs_f64();
        let floor = (before + after) / 2.0;
        println!(
            "postgres sequential: 1 request of 40 steps: median {} p90 {} (n={reps}); floor: 41 synchronous commits through tokio-postgres {} (before {}, after {}); {:.2}x the floor; {:.1} WAL syncs per request",
            ms(med),
            ms(p90),
            ms(floor),
            ms(before),
            ms(after),
            med / floor,
            syncs as f64 / (reps + 10) as f64
        );
        let syncs0 = wal_syncs(&floor_url).await?;
        let store = pg_store(&pg, "tput")?;
        let (rate, p10) = throughput(store.clone(), Some(store), reps.min(10)).await?;
        let syncs = wal_syncs(&floor_url).await? - syncs0;
        let one = commit_floor(&floor_url, 1, 201).await?.as_secs_f64();
        println!(
            "postgres throughput: 500 requests x 5 steps, 16 in flight: median {rate:.0} req/s, p10 {p10:.0} req/s (n={}; {:.2} WAL syncs per request); one synchronous commit alone: {} ({:.0} commits/s one at a time)",
            reps.min(10),
            syncs as f64 / (100 + 500 * reps.min(10)) as f64,
            ms(one),
            1.0 / one
        );
        let dir = tempfile::tempdir()?;
        let sled: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("seq"))?);
        let (smed, _) = sequential(sled, reps).await?;
        let sled: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("tput"))?);
        let (srate, _) = throughput(sled, None, reps.min(10)).await?;
        println!(
            "sled in the same run: 40 steps median {}, throughput median {srate:.0} req/s",
            ms(smed)
        );
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
