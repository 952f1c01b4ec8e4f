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
//! then three `provisio serve` processes (`target/release/provisio`, or `PROVISIO_BIN`) on
//! one fresh schema each time, REQUESTS five-step requests (`Error Provider/ReportEvent`)
//! from 16 closed-loop HTTP clients spread over the daemons, each waiting for its answer
//! (`?wait=60s`); requests/s (median of REPS) and the three/one ratio.

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

/// Starts one daemon in `dir` (sharing its data folder with the others) and waits until
/// it answers `/v1/ready`.
fn start_node(dir: &std::path::Path) -> Result<Node> {
    use std::io::BufRead;
    let bin = std::env::var_os("PROVISIO_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/provisio")
        });
    let mut child = std::process::Command::new(&bin)
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
                    let mut r = agent
                        .post(format!("{url}/v1/requests?wait=60s"))
                        .header("Authorization", format!("Bearer {TOKEN}"))
                        .content_type("application/json")
                        .send(r#"{"call": "Load/Five", "data": {}}"#)?;
                    let status = r.status().as_u16();
                    let text = r.body_mut().read_to_string()?;
                    if status != 200 || !text.contains("\"committed\"") {
                        return Err(anyhow!("answer {status}: {text}"));
                    }
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The `nodes` mode (see the module documentation).
fn nodes_mode(total: usize, reps: usize) -> Result<()> {
    use sha2::Digest;
    let pg = Postgres::start().ok_or_else(|| anyhow!("PostgreSQL is not installed"))?;
    let hash: String = sha2::Sha256::digest(TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for rep in 0..reps {
        for (slot, n) in [1usize, 3].into_iter().enumerate() {
            let dir = tempfile::tempdir()?;
            std::fs::create_dir_all(dir.path().join("ns"))?;
            std::fs::write(dir.path().join("ns/load.yaml"), FIVE_NS)?;
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
                nodes.push(start_node(dir.path())?);
            }
            // Warm-up (connections, pools, prepared plans), then the run.
            hammer_nodes(&nodes, 200)?;
            let rate = hammer_nodes(&nodes, total)?;
            println!(
                "nodes: rep {rep}: {n} daemon(s): {total} requests x 5 steps, 16 in flight: {rate:.0} req/s (load {})",
                loadavg()
            );
            rates[slot].push(rate);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let one = med(&mut rates[0]);
    let three = med(&mut rates[1]);
    println!(
        "nodes: median of {reps}: one daemon {one:.0} req/s, three daemons {three:.0} req/s, ratio 3/1 = {:.2}",
        three / one
    );
    Ok(())
}

fn main() -> Result<()> {
    if std::env::args().nth(1).as_deref() == Some("nodes") {
        let arg = |i: usize, d: usize| -> Result<usize> {
            Ok(std::env::args()
                .nth(i)
                .map(|r| r.parse())
                .transpose()?
                .unwrap_or(d))
        };
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
