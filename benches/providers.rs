//! Issue-4 benchmarks (providers): folder creations through the engine (each its own
//! transaction, without and with the durable journal) against `mkdir(2)` and the `mkdir`
//! command, and DNS record additions through the RFC 2136 backend against a private
//! `named` on 127.0.0.1 against `nsupdate` sending the same updates (skipped, with a note,
//! when `named`/`nsupdate` are not installed), and record additions through the zone-file
//! backend, one at a time and eight at once (criterion only).
//!
//! First prints a summary of exactly 1,000 operations per variant (median of 3 runs, with
//! the engine's overhead fraction), then runs criterion's per-operation benchmarks.
//! `cargo bench --bench providers`; `PROVISIO_BENCH_SUMMARY=0` skips the summary.

#[path = "support/mod.rs"]
mod support;

use anyhow::{anyhow, bail, Result};
use criterion::{criterion_group, Criterion, Throughput};
use provisio_engine::model::Format;
use provisio_engine::provider::ProviderRegistry;
use provisio_engine::request::parse_namespaces;
use provisio_engine::Catalog;
use provisio_engine::{Engine, Journal, TxnState};
use provisio_providers::dns::{DnsProvider, Rfc2136Config};
use provisio_providers::filesystem::FilesystemProvider;
use provisio_test_support::bind::{which, Named, ZONE};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAMESPACE: &str = r#"
namespace: Bench
procedures:
  MkDir:
    access: public
    steps:
      mk: { call: Filesystem Provider/CreateFolder, with: { path: "{{ data.p }}" } }
  AddA:
    access: public
    steps:
      add:
        call: DNS Provider/AddRecord
        with: { zoneName: example.test, name: "{{ data.p }}", rrType: A, address: 192.0.2.7, ttl: 300 }
"#;

/// Unique names across every run of this process.
static SEQ: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// An engine over the bench namespace and `registry`, optionally journaled.
fn engine(registry: ProviderRegistry, journal: Option<Arc<dyn Journal>>) -> Result<Engine> {
    let ns = parse_namespaces(NAMESPACE, "bench.yaml", Format::Yaml)
        .map_err(|e| anyhow!("namespace: {e:?}"))?;
    let catalog = Catalog::new(ns, &registry).map_err(|e| anyhow!("catalog: {e:?}"))?;
    let mut e = Engine::new(catalog, registry, support::options());
    if let Some(j) = journal {
        e = e.with_journal(j);
    }
    Ok(e)
}

/// Runs `n` requests of `procedure`, each its own transaction, one after another.
async fn engine_ops(engine: &Engine, procedure: &str, prefix: &str, n: usize) -> Result<Duration> {
    let reqs: Vec<_> = (0..n)
        .map(|_| support::request(procedure, support::data_p(&unique(prefix))))
        .collect();
    let start = Instant::now();
    for r in &reqs {
        support::run_expect(engine, r, TxnState::Committed).await?;
    }
    Ok(start.elapsed())
}

// ---------------------------------------------------------------------------------------
// Filesystem

struct Fs {
    _tmp: tempfile::TempDir,
    raw: PathBuf,
    plain: Engine,
    durable: Engine,
}

fn fs_setup() -> Result<Fs> {
    let tmp = tempfile::tempdir()?;
    let raw = tmp.path().join("raw");
    std::fs::create_dir_all(&raw)?;
    let mk = |sub: &str| -> Result<ProviderRegistry> {
        let mut r = ProviderRegistry::new();
        r.register(Arc::new(
            FilesystemProvider::new(tmp.path().join(sub)).map_err(|e| anyhow!("{e}"))?,
        ));
        Ok(r)
    };
    let plain = engine(mk("plain")?, None)?;
    let journal: Arc<dyn Journal> = support::durable(&tmp.path().join("store"))?;
    let durable = engine(mk("durable")?, Some(journal))?;
    Ok(Fs {
        _tmp: tmp,
        raw,
        plain,
        durable,
    })
}

fn mkdir_syscall(root: &Path, n: usize) -> Result<Duration> {
    let paths: Vec<_> = (0..n).map(|_| root.join(unique("m"))).collect();
    let start = Instant::now();
    for p in &paths {
        std::fs::create_dir(p)?;
    }
    Ok(start.elapsed())
}

fn mkdir_command(root: &Path, n: usize) -> Result<Duration> {
    let paths: Vec<_> = (0..n).map(|_| root.join(unique("c"))).collect();
    let start = Instant::now();
    for p in &paths {
        let st = Command::new("mkdir").arg(p).status()?;
        if !st.success() {
            bail!("mkdir {} failed", p.display());
        }
    }
    Ok(start.elapsed())
}

// ---------------------------------------------------------------------------------------
// DNS: the zone-file backend

/// An engine over the zone-file backend in a temp folder, no journal (the provider's own
/// cost: parse, rewrite, fsync, rename).
struct ZoneFiles {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    engine: Engine,
}

fn zonefile_setup() -> Result<ZoneFiles> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("zones");
    let mut r = ProviderRegistry::new();
    r.register(Arc::new(
        DnsProvider::zonefile(dir.clone()).map_err(|e| anyhow!("{e}"))?,
    ));
    let zf = ZoneFiles {
        _tmp: tmp,
        dir,
        engine: engine(r, None)?,
    };
    zf.reset()?;
    Ok(zf)
}

impl ZoneFiles {
    /// Puts back the empty zone (every add rewrites the whole file, so a measurement
    /// starts from the same size).
    fn reset(&self) -> Result<()> {
        std::fs::write(
            self.dir.join(format!("{ZONE}.zone")),
            format!(
                "$ORIGIN {ZONE}.\n$TTL 300\n\
                 @ 300 IN SOA ns1.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 300\n\
                 @ 300 IN NS ns1.{ZONE}.\n"
            ),
        )?;
        Ok(())
    }
}

/// Runs `n` AddRecord requests, `width` at a time concurrently (each its own transaction).
async fn engine_ops_concurrent(
    engine: &Engine,
    prefix: &str,
    n: usize,
    width: usize,
) -> Result<Duration> {
    let reqs: Vec<_> = (0..n)
        .map(|_| support::request("AddA", support::data_p(&unique(prefix))))
        .collect();
    let start = Instant::now();
    for chunk in reqs.chunks(width.max(1)) {
        let runs = chunk
            .iter()
            .map(|r| support::run_expect(engine, r, TxnState::Committed));
        for r in futures::future::join_all(runs).await {
            r?;
        }
    }
    Ok(start.elapsed())
}

// ---------------------------------------------------------------------------------------
// DNS: a private named

struct Dns {
    named: Named,
    _store: tempfile::TempDir,
    plain: Engine,
    durable: Engine,
}

fn dns_setup() -> Result<Option<Dns>> {
    if which("nsupdate").is_none() {
        eprintln!("note: `nsupdate` not installed; skipping the DNS benchmarks");
        return Ok(None);
    }
    let Some(named) = Named::start() else {
        return Ok(None);
    };
    let mk = || -> Result<ProviderRegistry> {
        let config = Rfc2136Config::from_key_file(named.addr(), &named.key_file())
            .map_err(|e| anyhow!("{e}"))?;
        let mut r = ProviderRegistry::new();
        r.register(Arc::new(
            DnsProvider::rfc2136(config).map_err(|e| anyhow!("{e}"))?,
        ));
        Ok(r)
    };
    let plain = engine(mk()?, None)?;
    let store = tempfile::tempdir()?;
    let journal: Arc<dyn Journal> = support::durable(store.path())?;
    let durable = engine(mk()?, Some(journal))?;
    Ok(Some(Dns {
        named,
        _store: store,
        plain,
        durable,
    }))
}

/// One `nsupdate` process sending `names.len()` separate updates (one `send` each).
fn nsupdate_batch(named: &Named, names: &[String]) -> Result<()> {
    let mut script = String::new();
    for n in names {
        script.push_str(&format!("update add {n}.{ZONE}. 300 A 192.0.2.7\nsend\n"));
    }
    named.nsupdate_script(&script).map_err(|e| anyhow!(e))
}

fn nsupdate_ops(named: &Named, n: usize) -> Result<Duration> {
    let names: Vec<String> = (0..n).map(|_| unique("ns")).collect();
    let start = Instant::now();
    nsupdate_batch(named, &names)?;
    Ok(start.elapsed())
}

fn nsupdate_process_per_op(named: &Named, n: usize) -> Result<Duration> {
    let names: Vec<String> = (0..n).map(|_| unique("np")).collect();
    let start = Instant::now();
    for name in &names {
        nsupdate_batch(named, std::slice::from_ref(name))?;
    }
    Ok(start.elapsed())
}

// ---------------------------------------------------------------------------------------
// Summary: exactly 1,000 operations per variant

fn median_of<F: FnMut() -> Result<Duration>>(runs: usize, mut f: F) -> Result<f64> {
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        v.push(f()?);
    }
    Ok(support::median_p90(&mut v).0)
}

fn line(what: &str, n: usize, secs: f64, raw: Option<f64>) {
    let per = secs / n as f64 * 1e6;
    match raw {
        Some(r) => println!(
            "  {what:<48} {n:>5} ops {:>9.3} s  {per:>9.1} µs/op  overhead vs raw {:.1}% ({:.1}x)",
            secs,
            (secs - r) / secs * 100.0,
            secs / r
        ),
        None => println!("  {what:<48} {n:>5} ops {:>9.3} s  {per:>9.1} µs/op", secs),
    }
}

fn summary() -> Result<()> {
    let rt = runtime()?;
    const N: usize = 1000;
    let fs = fs_setup()?;
    println!(
        "issue 4 summary (median of 3 runs of {N} operations, sequential, one transaction each)"
    );
    let raw = median_of(3, || mkdir_syscall(&fs.raw, N))?;
    let cmd = median_of(3, || mkdir_command(&fs.raw, N))?;
    let plain = median_of(3, || rt.block_on(engine_ops(&fs.plain, "MkDir", "f", N)))?;
    let durable = median_of(3, || rt.block_on(engine_ops(&fs.durable, "MkDir", "g", N)))?;
    line("mkdir(2) syscall", N, raw, None);
    line("`mkdir` command (process per folder)", N, cmd, None);
    line("engine CreateFolder, no journal", N, plain, Some(raw));
    line(
        "engine CreateFolder, durable journal",
        N,
        durable,
        Some(raw),
    );
    println!(
        "  (vs the `mkdir` command: no journal {:.1}x, durable {:.1}x)",
        plain / cmd,
        durable / cmd
    );
    drop(fs);
    if let Some(dns) = dns_setup()? {
        let raw = median_of(3, || nsupdate_ops(&dns.named, N))?;
        let per_proc =
            median_of(1, || nsupdate_process_per_op(&dns.named, 100))? * (N as f64 / 100.0);
        let plain = median_of(3, || rt.block_on(engine_ops(&dns.plain, "AddA", "e", N)))?;
        let durable = median_of(3, || rt.block_on(engine_ops(&dns.durable, "AddA", "d", N)))?;
        line("nsupdate, one process, 1 update+send per add", N, raw, None);
        line(
            "nsupdate, one process per add (100, scaled)",
            N,
            per_proc,
            None,
        );
        line(
            "engine AddRecord (rfc2136), no journal",
            N,
            plain,
            Some(raw),
        );
        line(
            "engine AddRecord (rfc2136), durable journal",
            N,
            durable,
            Some(raw),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Criterion: per operation

fn per_op(c: &mut Criterion) {
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e:#}");
            return;
        }
    };
    let fs = match fs_setup() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("filesystem setup: {e:#}");
            return;
        }
    };
    let mut g = c.benchmark_group("fs_create_folder");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    g.bench_function("mkdir_syscall", |b| {
        b.iter_custom(|n| mkdir_syscall(&fs.raw, n as usize).unwrap_or_default())
    });
    g.bench_function("engine_no_journal", |b| {
        b.iter_custom(|n| {
            rt.block_on(engine_ops(&fs.plain, "MkDir", "f", n as usize))
                .unwrap_or_default()
        })
    });
    g.bench_function("engine_durable_journal", |b| {
        b.iter_custom(|n| {
            rt.block_on(engine_ops(&fs.durable, "MkDir", "g", n as usize))
                .unwrap_or_default()
        })
    });
    g.finish();
    drop(fs);

    match zonefile_setup() {
        Ok(zf) => {
            let mut g = c.benchmark_group("dns_zonefile_add_record");
            g.sample_size(10).measurement_time(Duration::from_secs(5));
            g.throughput(Throughput::Elements(1));
            g.bench_function("engine_no_journal", |b| {
                b.iter_custom(|n| {
                    zf.reset().unwrap_or_default();
                    rt.block_on(engine_ops(&zf.engine, "AddA", "z", n as usize))
                        .unwrap_or_default()
                })
            });
            g.bench_function("engine_no_journal_8_concurrent", |b| {
                b.iter_custom(|n| {
                    zf.reset().unwrap_or_default();
                    rt.block_on(engine_ops_concurrent(&zf.engine, "y", n as usize, 8))
                        .unwrap_or_default()
                })
            });
            g.finish();
        }
        Err(e) => eprintln!("zone-file setup: {e:#}"),
    }

    let dns = match dns_setup() {
        Ok(Some(d)) => d,
        Ok(None) => return,
        Err(e) => {
            eprintln!("DNS setup: {e:#}");
            return;
        }
    };
    let mut g = c.benchmark_group("dns_add_record");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(1));
    g.bench_function("nsupdate_one_process", |b| {
        b.iter_custom(|n| nsupdate_ops(&dns.named, n as usize).unwrap_or_default())
    });
    g.bench_function("engine_rfc2136_no_journal", |b| {
        b.iter_custom(|n| {
            rt.block_on(engine_ops(&dns.plain, "AddA", "e", n as usize))
                .unwrap_or_default()
        })
    });
    g.bench_function("engine_rfc2136_durable_journal", |b| {
        b.iter_custom(|n| {
            rt.block_on(engine_ops(&dns.durable, "AddA", "d", n as usize))
                .unwrap_or_default()
        })
    });
    g.finish();
}

criterion_group!(benches, per_op);

fn main() {
    if std::env::var("PROVISIO_BENCH_SUMMARY").map_or(true, |v| v != "0") {
        if let Err(e) = summary() {
            eprintln!("summary failed: {e:#}");
        }
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
