//! The resource manager's speed (issue 16, BENCHMARKS.md "resource manager"): 1,000
//! `Exchange 2007 Resource Manager/AllocateMailbox` transactions of 100 KB started at once
//! against one 4,000 MB store, through the real `Engine` with a durable sled journal, four
//! ways — one organization one transaction at a time (the floor of a commit), one
//! organization all at once (its share is one counter), 50 organizations with a share each,
//! and 50 organizations growing with `autoAllocate` (the store's key is hot). Every run
//! checks that nothing was over-committed (the store holds at most its size, each share's
//! charge at most its grant, and the charges sum to exactly what was asked).
//!
//! `cargo run --release --example rm_bench -- [REPS] [N]` (default 3 1000); the store goes
//! to a temp folder (override the parent with `PROVISIO_BENCH_DIR`).

#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, ensure, Context, Result};
use provisio_engine::model::Format;
use provisio_engine::provider::ProviderRegistry;
use provisio_engine::request::parse_request;
use provisio_engine::txn::DurableJournal;
use provisio_engine::{Catalog, Engine, EngineOptions, SledStore, Store, TxnState};
use provisio_providers::resource_manager::{ResourceManagerProvider, PROVIDER};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NS: &str = "Exchange 2007 Resource Manager";

fn engine(dir: &std::path::Path) -> Result<Engine> {
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(ResourceManagerProvider::new()));
    let catalog = Catalog::new(Vec::new(), &registry).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let options = EngineOptions {
        // A transaction may wait for the ones queued before it on a hot key.
        step_timeout: Duration::from_secs(600),
        max_parallel: 4,
        ..EngineOptions::default()
    };
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir)?);
    let journal = Arc::new(DurableJournal::new(store, None, "bench"));
    Ok(Engine::new(catalog, registry, options).with_journal(journal))
}

/// One call to the resource manager with `with` (a YAML flow mapping), as its own
/// transaction; fails unless it commits.
async fn call(e: &Engine, procedure: &str, with: &str) -> Result<()> {
    let y = format!(
        "procedure:\n  steps:\n    call:\n      call: {NS}/{procedure}\n      with: {with}\n"
    );
    let request = parse_request(&y, "req.yaml", Format::Yaml)?;
    let r = e.run(&request).await?;
    if r.state != TxnState::Committed {
        bail!("{procedure} did not commit: {:?}", r.failure);
    }
    Ok(())
}

fn record(e: &Engine, key: &str) -> Result<Value> {
    let v = e
        .state_value(PROVIDER, key.as_bytes())?
        .with_context(|| format!("no record {key}"))?;
    Ok(serde_json::from_slice(&v)?)
}

fn u64_at(v: &Value, what: &str) -> Result<u64> {
    v.as_u64()
        .with_context(|| format!("{what} is not a number: {v}"))
}

/// One run: `n` allocations of 100 KB; `orgs` organizations (each with an equal share, or
/// none and `autoAllocate` when `auto`); `serial`: one after another. Returns (wall seconds,
/// sorted per-transaction latencies in ms).
async fn run(n: usize, orgs: usize, auto: bool, serial: bool) -> Result<(f64, Vec<f64>)> {
    let dir = match std::env::var_os("PROVISIO_BENCH_DIR") {
        Some(p) => tempfile::tempdir_in(p)?,
        None => tempfile::tempdir()?,
    };
    let e = engine(dir.path())?;
    call(
        &e,
        "AddExchangeResources",
        "{ mailStores: { mailStore: { serverName: ex1, mailStoreName: DB1, megabytes: \"4000\" } } }",
    )
    .await?;
    if !auto {
        let share = 2000 / orgs;
        for o in 0..orgs {
            call(
                &e,
                "AllocateOrganization",
                &format!("{{ organization: org{o}, megabytes: \"{share}\" }}"),
            )
            .await?;
        }
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut lat = Vec::new();
    for i in 0..n {
        let e = e.clone();
        let grow = if auto {
            ", mailStore: { autoAllocate: level }"
        } else {
            ""
        };
        let with = format!(
            "{{ organization: org{}, mailbox: m{i}, kilobytes: \"100\"{grow} }}",
            i % orgs
        );
        let task = tokio::spawn(async move {
            let t = Instant::now();
            call(&e, "AllocateMailbox", &with).await?;
            Ok::<f64, anyhow::Error>(t.elapsed().as_secs_f64() * 1000.0)
        });
        if serial {
            lat.push(task.await??);
        } else {
            tasks.push(task);
        }
    }
    for t in tasks {
        lat.push(t.await??);
    }
    let wall = started.elapsed().as_secs_f64();
    // No over-commit: the store holds what was granted, the shares what was charged.
    let s = record(&e, "store/ex1/db1")?;
    let mut granted = 0;
    for v in s["reserved"].as_object().context("no reserved")?.values() {
        granted += u64_at(v, "reserved")?;
    }
    ensure!(granted <= 4000, "the store granted {granted} MB of 4000");
    let mut used = 0;
    for o in 0..orgs {
        let org = record(&e, &format!("org/org{o}"))?;
        let share = &org["shares"]["ex1/db1"];
        let u = u64_at(&share["used_kb"], "used_kb")?;
        ensure!(
            u <= u64_at(&share["megabytes"], "megabytes")? * 1024,
            "org{o} charged beyond its share"
        );
        used += u;
    }
    ensure!(used == 100 * n as u64, "charged {used} KB, not {}", 100 * n);
    lat.sort_by(f64::total_cmp);
    Ok((wall, lat))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let reps = args.first().copied().unwrap_or(3).max(1);
    let n = args.get(1).copied().unwrap_or(1000).max(1);
    for (label, orgs, auto, serial) in [
        ("1 organization, one transaction at a time", 1, false, true),
        ("1 organization", 1, false, false),
        ("50 organizations", 50, false, false),
        ("50 organizations, autoAllocate", 50, true, false),
    ] {
        for rep in 0..reps {
            let (wall, lat) = run(n, orgs, auto, serial).await?;
            let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
            println!(
                "{label} (run {}): {wall:.2} s, {:.0} tx/s, latency median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
                rep + 1,
                n as f64 / wall,
                q(0.5),
                q(0.9),
                q(1.0)
            );
        }
    }
    Ok(())
}
