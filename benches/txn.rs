//! Issue-3 benchmarks (transactions with the durable journal on a sled store in a temp
//! dir on the local disk, in-process no-op provider): a 40-step sequential request, 500
//! five-step requests 16 in flight, a five-step request failing at step 4 (three undos),
//! and recovering one crashed transaction after a restart (store reopen + `txn::recover`).
//!
//! The 10,000-transaction recovery and the memory per in-flight transaction take tens of
//! seconds per sample, so they live in `cargo run --release --example bench -- recovery`
//! and `-- memory` instead of here.

/// The binary's allocator, so the figures are what `provisio` does
/// (`--features system-alloc` measures the system allocator).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/mod.rs"]
mod support;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use provisio_engine::data::Element;
use provisio_engine::TxnState;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            None
        }
    }
}

fn txn(c: &mut Criterion) {
    let Some(rt) = runtime() else { return };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tempdir: {e}");
            return;
        }
    };
    let (env, _journal) = match support::durable_env(dir.path()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("setup: {e:#}");
            return;
        }
    };
    let mut g = c.benchmark_group("txn_durable");
    g.sample_size(40).measurement_time(Duration::from_secs(8));

    let seq = support::request("Seq40", Element::new("data"));
    g.bench_function("sequential_40_steps", |b| {
        b.to_async(&rt).iter(|| async {
            if let Err(e) = support::run_expect(&env.engine, &seq, TxnState::Committed).await {
                eprintln!("{e:#}");
            }
        })
    });

    let counter = AtomicUsize::new(0);
    g.bench_function("rollback_5_steps_fail_at_4", |b| {
        b.to_async(&rt).iter(|| async {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let req = support::request("Fail4", support::data_p(&format!("r{n}")));
            match support::run_expect(&env.engine, &req, TxnState::RolledBack).await {
                Ok(r) if r.undone == 3 => {}
                Ok(r) => eprintln!("expected 3 undos, got {}", r.undone),
                Err(e) => eprintln!("{e:#}"),
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("txn_durable_throughput");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Elements(500));
    g.bench_function("500_requests_5_steps_16_in_flight", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let engine = env.engine.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    match support::throughput(&engine, "Five", 500, 16).await {
                        Ok(d) => total += d,
                        Err(e) => eprintln!("{e:#}"),
                    }
                }
                total
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("txn_recovery");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("restart_and_recover_1_crashed", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let one = async {
                    let d = tempfile::tempdir()?;
                    support::stuck_transactions(d.path(), 1).await?;
                    let (open, recover, n) = support::recover_dir(d.path()).await?;
                    if n != 1 {
                        anyhow::bail!("recovered {n} transactions, expected 1");
                    }
                    Ok::<Duration, anyhow::Error>(open + recover)
                };
                match one.await {
                    Ok(d) => total += d,
                    Err(e) => eprintln!("{e:#}"),
                }
            }
            black_box(total)
        })
    });
    g.finish();
}

criterion_group!(benches, txn);
criterion_main!(benches);
