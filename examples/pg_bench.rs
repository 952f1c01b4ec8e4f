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

fn main() -> Result<()> {
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
