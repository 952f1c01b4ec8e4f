//! Reruns the issue-3 transaction workloads and prints medians against the targets:
//! `cargo run --release --example bench -- all|sequential|throughput|rollback|recovery|memory`
//! (optional second argument: repetitions). Durable journal on sled in a temp dir on the
//! local disk (override the parent folder with `PROVISIO_BENCH_DIR`), in-process no-op
//! provider, tokio multi-thread runtime with 2 workers.

/// The binary's allocator, so the figures are what `provisio` does
/// (`--features system-alloc` measures the system allocator).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../benches/support/mod.rs"]
mod support;

use anyhow::{anyhow, bail, Result};
use provisio_engine::data::Element;
use provisio_engine::txn::DurableJournal;
use provisio_engine::SledStore;
use provisio_engine::TxnState;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn tempdir() -> Result<tempfile::TempDir> {
    Ok(match std::env::var_os("PROVISIO_BENCH_DIR") {
        Some(p) => tempfile::tempdir_in(p)?,
        None => tempfile::tempdir()?,
    })
}

fn ms(s: f64) -> String {
    format!("{:.3} ms", s * 1e3)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

async fn sequential(reps: usize) -> Result<()> {
    let dir = tempdir()?;
    let (env, _j) = support::durable_env(dir.path())?;
    let req = support::request("Seq40", Element::new("data"));
    for _ in 0..10 {
        support::run_expect(&env.engine, &req, TxnState::Committed).await?;
    }
    let mut t = Vec::with_capacity(reps);
    let mut ratios = Vec::with_capacity(reps);
    for _ in 0..reps {
        let s = Instant::now();
        support::run_expect(&env.engine, &req, TxnState::Committed).await?;
        let took = s.elapsed();
        t.push(took);
        ratios.push(took.as_secs_f64() / support::sync_floor(dir.path(), 41, 1)?.as_secs_f64());
    }
    let (med, p90) = support::median_p90(&mut t);
    println!(
        "sequential: 1 request of 40 steps, durable journal: median {} p90 {} (n={reps}); target < 6 ms: {} ({:.2}x of target)",
        ms(med),
        ms(p90),
        verdict(med < 0.006),
        med / 0.006
    );
    print_floor(dir.path(), 41, med, &mut ratios)?;
    Ok(())
}

/// Prints what the same number of sequential syncs costs this disk, so a figure taken on a
/// busy or slow disk can be read against the disk rather than the target. Each run was
/// followed by one floor measurement (`ratios`: run / floor, pairwise), because this
/// machine's virtual disk switches between fast and throttled phases that last seconds.
fn print_floor(
    dir: &std::path::Path,
    syncs: usize,
    engine_s: f64,
    ratios: &mut [f64],
) -> Result<()> {
    let floor = support::sync_floor(dir, syncs, 21)?.as_secs_f64();
    let preallocated = support::sync_floor_preallocated(dir, syncs, 21)?.as_secs_f64();
    ratios.sort_by(f64::total_cmp);
    println!(
        "  floor: {syncs} appends + fdatasync in the same folder take {} (median of 21 after the runs); the engine needs {syncs} syncs here; median of (run / floor measured right after it): {:.2}x; median run / this floor: {:.2}x",
        ms(floor),
        ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN),
        engine_s / floor
    );
    println!(
        "  the same {syncs} syncs over preallocated blocks (the write-ahead log's pattern) take {}: the engine's run is {:.2}x that, {} above it",
        ms(preallocated),
        engine_s / preallocated,
        ms(engine_s - preallocated)
    );
    Ok(())
}

async fn throughput(reps: usize) -> Result<()> {
    let dir = tempdir()?;
    // The sled store itself, for its sync counter.
    let store = Arc::new(SledStore::open(dir.path())?);
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "bench"));
    let env = support::env(support::txn_namespaces()?, Some(journal))?;
    support::throughput(&env.engine, "Five", 100, 16).await?;
    let syncs0 = store.sync_count();
    let mut rates = Vec::with_capacity(reps);
    for _ in 0..reps {
        let d = support::throughput(&env.engine, "Five", 500, 16).await?;
        rates.push(500.0 / d.as_secs_f64());
    }
    let syncs = store.sync_count() - syncs0;
    rates.sort_by(f64::total_cmp);
    let med = rates[rates.len() / 2];
    let p10 = rates[(rates.len() - 1) / 10];
    println!(
        "throughput: 500 requests x 5 steps, 16 in flight: median {med:.0} req/s, p10 {p10:.0} req/s (n={reps}; {:.1} fdatasyncs per request); target > 4,500 req/s: {} ({:.2}x of target)",
        syncs as f64 / (500 * reps) as f64,
        verdict(med > 4500.0),
        med / 4500.0
    );
    Ok(())
}

async fn rollback(reps: usize) -> Result<()> {
    let dir = tempdir()?;
    let (env, _j) = support::durable_env(dir.path())?;
    let mut t = Vec::with_capacity(reps);
    let mut ratios = Vec::with_capacity(reps);
    for i in 0..reps + 10 {
        let req = support::request("Fail4", support::data_p(&format!("r{i}")));
        let s = Instant::now();
        let r = support::run_expect(&env.engine, &req, TxnState::RolledBack).await?;
        let e = s.elapsed();
        if r.undone != 3 {
            bail!("expected 3 undos, got {}", r.undone);
        }
        if i >= 10 {
            t.push(e);
            ratios.push(e.as_secs_f64() / support::sync_floor(dir.path(), 5, 1)?.as_secs_f64());
        }
    }
    let (med, p90) = support::median_p90(&mut t);
    println!(
        "rollback: 5-step request failing at step 4, 3 undos: median {} p90 {} (n={reps}); target < 1.5 ms: {} ({:.2}x of target)",
        ms(med),
        ms(p90),
        verdict(med < 0.0015),
        med / 0.0015
    );
    print_floor(dir.path(), 5, med, &mut ratios)?;
    Ok(())
}

async fn recovery(reps: usize, big: usize) -> Result<()> {
    let mut restart = Vec::new();
    let mut rec_only = Vec::new();
    for _ in 0..reps.max(5) {
        let d = tempdir()?;
        support::stuck_transactions(d.path(), 1).await?;
        let (open, rec, n) = support::recover_dir(d.path()).await?;
        if n != 1 {
            bail!("recovered {n}, expected 1");
        }
        restart.push(open + rec);
        rec_only.push(rec);
    }
    let (med, p90) = support::median_p90(&mut restart);
    let (rmed, _) = support::median_p90(&mut rec_only);
    println!(
        "recovery (1 crashed txn): reopen store + recover median {} p90 {} (recover alone {}) (n={}); target < 50 ms: {} ({:.2}x of target)",
        ms(med),
        ms(p90),
        ms(rmed),
        restart.len(),
        verdict(med < 0.050),
        med / 0.050
    );
    let mut times = Vec::new();
    let reps_big = reps.clamp(1, 3);
    for _ in 0..reps_big {
        let d = tempdir()?;
        let stuck = support::stuck_transactions(d.path(), big).await?;
        let (open, rec, n) = support::recover_dir(d.path()).await?;
        if n != big {
            bail!("recovered {n}, expected {big}");
        }
        println!(
            "  {big} in-flight txns: started+blocked in {:.2} s; reopen {} ; recover {} ({:.1} µs/txn)",
            stuck.start_time.as_secs_f64(),
            ms(open.as_secs_f64()),
            ms(rec.as_secs_f64()),
            rec.as_secs_f64() * 1e6 / big as f64
        );
        times.push(rec);
    }
    let (med, _) = support::median_p90(&mut times);
    println!(
        "recovery ({big} in-flight txns): txn::recover median {:.3} s (n={reps_big}); target < 2 s: {} ({:.2}x of target)",
        med,
        verdict(med < 2.0),
        med / 2.0
    );
    Ok(())
}

/// One measurement, in this (fresh) process: prints the RSS growth per blocked transaction.
async fn memory_child(journaled: bool, n: usize) -> Result<()> {
    let d = tempdir()?;
    let s = support::stuck_transactions_with(d.path(), n, journaled).await?;
    println!("rss_per_txn={}", s.rss_per_txn);
    Ok(())
}

/// Each measurement runs in a new process: a process that already grew and freed memory
/// would show less growth the second time.
fn memory_in_child(journaled: bool, n: usize) -> Result<f64> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args([
            "memory-child",
            if journaled { "journal" } else { "none" },
            &n.to_string(),
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("rss_per_txn="))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            anyhow!(
                "memory child failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

async fn memory(reps: usize, n: usize) -> Result<()> {
    let mut per = Vec::new();
    for _ in 0..reps.clamp(1, 3) {
        let b = memory_in_child(true, n)?;
        println!("  {n} blocked txns: RSS +{b:.0} B/txn");
        per.push(b);
    }
    per.sort_by(f64::total_cmp);
    let med = per[per.len() / 2];
    let engine_only = memory_in_child(false, n)?;
    println!(
        "memory: RSS growth per in-flight txn ({n} blocked in a provider, durable journal): median {:.1} KiB (n={}); the engine without a journal: {:.1} KiB; target < 16 KiB: {} ({:.2}x of target)",
        med / 1024.0,
        per.len(),
        engine_only / 1024.0,
        verdict(med < 16.0 * 1024.0),
        med / (16.0 * 1024.0)
    );
    Ok(())
}

async fn run(what: &str, reps: Option<usize>) -> Result<()> {
    let all = what == "all";
    if all || what == "sequential" {
        sequential(reps.unwrap_or(300)).await?;
    }
    if all || what == "throughput" {
        throughput(reps.unwrap_or(9)).await?;
    }
    if all || what == "rollback" {
        rollback(reps.unwrap_or(300)).await?;
    }
    if all || what == "recovery" {
        recovery(reps.unwrap_or(9), 10_000).await?;
    }
    if all || what == "memory" {
        memory(reps.unwrap_or(3), 10_000).await?;
    }
    if !all && !["sequential", "throughput", "rollback", "recovery", "memory"].contains(&what) {
        bail!("usage: bench [all|sequential|throughput|rollback|recovery|memory] [repetitions]");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "all".into());
    if what == "memory-child" {
        let journaled = args.next().as_deref() == Some("journal");
        let n = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build();
        return match rt
            .map_err(|e| anyhow!("tokio: {e}"))
            .and_then(|rt| rt.block_on(memory_child(journaled, n)))
        {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let reps = args.next().and_then(|r| r.parse().ok());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| anyhow!("tokio: {e}"));
    let result = rt.and_then(|rt| {
        println!(
            "provisio issue-3 bench: {} cores, durable journal in a temp dir; started {:?}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::time::SystemTime::now()
        );
        let r = rt.block_on(run(&what, reps));
        rt.shutdown_timeout(Duration::from_secs(1));
        r
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
