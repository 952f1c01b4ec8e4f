//! How cost grows with the size of one transaction (issue 11): time, peak memory and store
//! size for 1k / 10k / 100k steps and for wide requests, durable journal beside ephemeral.
//!
//! `cargo run --release --example growth -- [all|steps|wide] [MAX]`
//!
//! - `steps`: a trusted request whose forEach makes one call per user, N users in ONE
//!   transaction, with two providers: the real `Filesystem Provider/CreateFolder` (its own
//!   intent markers and fsyncs included) and the in-process `Rec Provider/Create` (a no-op
//!   with an undo record, so what remains is the engine's and the journal's cost).
//! - `wide`: a request carrying 1, 8 or 64 MiB of data (many small items) and two no-op steps.
//!
//! Every case runs in a child process of its own (this example re-executed with `case …`), so
//! its peak RSS (`VmHWM`) is its own; the store is sled on the local disk in a temp folder
//! (override the parent with `PROVISIO_BENCH_DIR`). MAX caps the step counts (default 100000).
//! A durable case also prints how many `fdatasync`s the journal made and what that many
//! syncs cost on the same disk right after the run (the median of 200 512-byte writes over
//! preallocated blocks, times the count): the floor of one durable intent per call.

#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{anyhow, bail, Context as _, Result};
use provisio_engine::model::Format;
use provisio_engine::provider::ProviderRegistry;
use provisio_engine::request::parse_request;
use provisio_engine::testing::RecordingProvider;
use provisio_engine::txn::DurableJournal;
use provisio_engine::Catalog;
use provisio_engine::SledStore;
use provisio_engine::{Engine, EngineOptions, Journal, TxnState};
use provisio_providers::filesystem::FilesystemProvider;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

fn tempdir() -> Result<tempfile::TempDir> {
    Ok(match std::env::var_os("PROVISIO_BENCH_DIR") {
        Some(p) => tempfile::tempdir_in(p)?,
        None => tempfile::tempdir()?,
    })
}

/// Bytes of all files below `dir`.
fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Peak resident set size of this process (`VmHWM`), bytes.
fn peak_rss() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow!("no VmHWM in /proc/self/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("VmHWM has no value"))?
        .parse()?;
    Ok(kib * 1024)
}

/// A trusted request: one call of `provider_call` per `users/user`, N users.
fn steps_request(n: usize, filesystem: bool) -> String {
    let mut s = String::with_capacity(n * 40 + 512);
    s.push_str("<request><data><users>");
    for i in 0..n {
        let _ = write!(s, "<user><name>u{i:06}</name></user>");
    }
    s.push_str("</users></data><procedure>");
    if filesystem {
        s.push_str(
            r#"<execute namespace="Filesystem Provider" procedure="CreateFolder">
  <executeData><path>t</path></executeData>
</execute>
<execute namespace="Filesystem Provider" procedure="CreateFolder">
  <forEach name="u" root="data" path="users/user"/>
  <before source="u" sourcePath="name" destination="executeData" destinationPath="name"/>
  <before template="t/{{ executeData/name }}" destination="executeData" destinationPath="path"/>
</execute>"#,
        );
    } else {
        s.push_str(
            r#"<execute namespace="Rec Provider" procedure="Create">
  <forEach name="u" root="data" path="users/user"/>
  <before source="u" sourcePath="name" destination="executeData" destinationPath="name"/>
</execute>"#,
        );
    }
    s.push_str("</procedure></request>");
    s
}

/// A request of about `mib` MiB of data (small items) and two no-op steps.
fn wide_request(mib: usize) -> String {
    // The closing tags and steps (~250 bytes) stay within the 64 MiB request limit.
    let target = (mib << 20) - 1024;
    let mut s = String::with_capacity(target + 4096);
    s.push_str("<request><data><items>");
    let mut i = 0usize;
    while s.len() < target {
        let _ = write!(
            s,
            "<item><key>k{i:08}</key><value>value number {i}</value></item>"
        );
        i += 1;
    }
    s.push_str(
        // Two steps: a lone `<execute>` would be read as a simple call of that (private) procedure.
        r#"</items></data><procedure><execute namespace="Rec Provider" procedure="Noop"/><execute namespace="Rec Provider" procedure="Noop"/></procedure></request>"#,
    );
    s
}

async fn run_case(kind: &str, n: usize, durable: bool) -> Result<String> {
    let dir = tempdir()?;
    let rec = RecordingProvider::new("Rec");
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(rec));
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files)?;
    registry.register(Arc::new(
        FilesystemProvider::new(files.clone()).map_err(|e| anyhow!("{e}"))?,
    ));
    let catalog = Catalog::new(Vec::new(), &registry).map_err(|e| anyhow!("catalog: {e:?}"))?;
    let mut engine = Engine::new(catalog, registry, EngineOptions::default());
    let journal_dir = dir.path().join("journal");
    let mut store = None;
    if durable {
        let opened = Arc::new(SledStore::open(&journal_dir).map_err(|e| anyhow!("{e}"))?);
        let journal: Arc<dyn Journal> =
            Arc::new(DurableJournal::new(opened.clone(), None, "bench"));
        engine = engine.with_journal(journal);
        store = Some(opened);
    }
    let text = match kind {
        "fs" => steps_request(n, true),
        "noop" => steps_request(n, false),
        "wide" => wide_request(n),
        other => bail!("unknown case {other}"),
    };
    let request_bytes = text.len();
    let base = peak_rss()?;
    let start = Instant::now();
    let req = parse_request(&text, "growth.xml", Format::Xml).map_err(|e| anyhow!("{e:?}"))?;
    drop(text);
    // What `provisio run` does: the request's data moves into the transaction.
    let r = engine
        .run_owned(req)
        .await
        .map_err(|e| anyhow!("does not compile: {e}"))?;
    let took = start.elapsed().as_secs_f64();
    if r.state != TxnState::Committed {
        bail!("{kind} {n}: {} ({:?})", r.state, r.failure);
    }
    drop(r);
    drop(engine);
    let syncs = store.as_ref().map_or(0, |s| s.sync_count());
    if let Some(s) = store.take() {
        s.close();
    }
    let on_disk = du(&journal_dir);
    // What that many syncs cost on this disk right now: the floor of a journal that makes
    // each call's intent durable before the call.
    let floor = if syncs > 0 {
        sync_floor(dir.path(), 200)? * syncs as f64
    } else {
        0.0
    };
    Ok(format!(
        "{kind}\t{n}\t{}\t{took:.3}\t{:.1}\t{:.1}\t{:.1}\t{:.2}\t{syncs}\t{floor:.3}",
        if durable { "durable" } else { "ephemeral" },
        peak_rss()? as f64 / 1048576.0,
        base as f64 / 1048576.0,
        on_disk as f64 / 1048576.0,
        request_bytes as f64 / 1048576.0,
    ))
}

/// Seconds per `fdatasync` of a 512-byte write over preallocated blocks (the write-ahead
/// log's pattern) in `dir`: the median of `n`.
fn sync_floor(dir: &Path, n: usize) -> Result<f64> {
    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;
    let path = dir.join("sync-floor");
    let mut f = std::fs::File::create(&path)?;
    f.write_all(&vec![0; n * 512 + 4096])?;
    f.sync_all()?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        f.write_all_at(&[0x5a; 512], (i * 512) as u64)?;
        f.sync_data()?;
        samples.push(start.elapsed().as_secs_f64());
    }
    std::fs::remove_file(&path)?;
    samples.sort_by(f64::total_cmp);
    Ok(samples[n / 2])
}

fn child(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("case")
        .args(args)
        .output()
        .context("start the case child")?;
    if !out.status.success() {
        bail!(
            "case {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("case") {
        let kind = args
            .get(1)
            .ok_or_else(|| anyhow!("case KIND N durable|ephemeral"))?;
        let n: usize = args
            .get(2)
            .ok_or_else(|| anyhow!("case needs N"))?
            .parse()?;
        let durable = args.get(3).map(String::as_str) == Some("durable");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        println!("{}", rt.block_on(run_case(kind, n, durable))?);
        return Ok(());
    }
    let what = args.first().map(String::as_str).unwrap_or("all");
    let max: usize = args
        .get(1)
        .map(|m| m.parse())
        .transpose()?
        .unwrap_or(100_000);
    println!("case\tn\tjournal\tseconds\tpeak_rss_MiB\tbase_rss_MiB\tstore_MiB\trequest_MiB\tsyncs\tsync_floor_s");
    if what == "all" || what == "steps" {
        for kind in ["noop", "fs"] {
            for n in [1_000, 10_000, 100_000].into_iter().filter(|n| *n <= max) {
                for journal in ["ephemeral", "durable"] {
                    println!("{}", child(&[kind, &n.to_string(), journal])?);
                }
            }
        }
    }
    if what == "all" || what == "wide" {
        for mib in [1, 8, 64] {
            for journal in ["ephemeral", "durable"] {
                println!("{}", child(&["wide", &mib.to_string(), journal])?);
            }
        }
    }
    Ok(())
}
