//! How cost grows with the size of one transaction (issue 11): time, peak memory and store
//! size for 1k / 10k / 100k steps and for wide requests, durable journal beside ephemeral.
//!
//! `cargo run --release --example growth -- [all|steps|wide|rollback] [MAX]`
//!
//! - `steps`: a trusted request whose forEach makes one call per user, N users in ONE
//!   transaction, with two providers: the real `Filesystem Provider/CreateFolder` (its own
//!   intent markers and fsyncs included) and the in-process `Rec Provider/Create` (a no-op
//!   with an undo record, so what remains is the engine's and the journal's cost; it keeps
//!   no log of its calls — `PROVISIO_BENCH_RECORDING=1` uses the engine's logging
//!   `RecordingProvider` instead, as the figures before Session 9 did).
//! - `wide`: a request carrying 1, 8 or 64 MiB of data (many small items) and two no-op steps.
//! - `rollback`: the no-op case with a last step that fails, so every call is undone.
//! - `recover [noop|fs] [MAX]`: a child runs N calls and is aborted in flight, another
//!   reopens the store and recovers it (times, CPU, peak RSS, store before and after; the
//!   peak RSS once the store is open — its open replays the write-ahead log the crash left —
//!   and the RSS then).
//! - `list [MAX]`: `tx list`'s first page over 1k … 1M synthetic finished transactions.
//! - `prune [N]`: N finished transactions past retention pruned; the store's size after the
//!   prune, after the vacuum `tx prune` runs then (sled's database rewritten when its files
//!   hold over 3x what it keeps: the time it took), after reopening, after new work.
//! - `vacuum [MAX]`: sled's database of 10k / 100k finished transactions (all kept)
//!   rewritten, forced, in a child of its own: time, peak RSS, sizes before and after.
//! - `open DIR [REPS]`: the time to open (and close) the store in DIR/journal — kept by
//!   `case-list N DIR` — and an empty one, each in a fresh process: sled's floor under
//!   every command that reads the store (`provisio tx list`).
//! - `cli-list DIR [REPS]`: `provisio tx list` itself (`PROVISIO_BIN`, default
//!   `target/release/provisio`) over DIR (a data directory whose `journal` is kept by
//!   `case-list N DIR`), each run a fresh process: wall time and peak RSS of the first page
//!   from the listing file (unfiltered, by state, by subject) and with the store opened
//!   (the listing's marker removed, as after a crash: sled's open and its index; a command
//!   that only reads leaves the listing's rebuild to the next writer, so a `provisio
//!   recover` with nothing to recover follows, timed: its clean close rebuilds the files).
//! - `cli-crash-list DIR [REPS] [K]`: a writer adds K transactions to DIR/journal and
//!   crashes; the next writer (`provisio recover`) brings the listing up to date at its
//!   clean close (timed, with its peak RSS), then `tx list`'s first page; the binaries
//!   `PROVISIO_BIN`, `PROVISIO_BIN_BASE` and `PROVISIO_BIN` again with the listing's base
//!   file removed (a full rebuild) in turn. With P and N (the store's count: `case-list N
//!   DIR`), the next writer is `provisio tx prune` removing the P oldest instead (a prune in
//!   the first run after a crash).
//! - `cli-crash-prune DIR [REPS] [P]`: as `cli-crash-list`, but the writer that crashes
//!   prunes the P oldest finished transactions (default 1000) and waits for its checkpoint
//!   (the prune's writes in sled, not in the write-ahead log) before it aborts; the next
//!   writer is `provisio recover`, whose clean close brings the listing up to date.
//!
//! Every case runs in a child process of its own (this example re-executed with `case …`), so
//! its peak RSS (`VmHWM`) is its own; the store is sled on the local disk in a temp folder
//! (override the parent with `PROVISIO_BENCH_DIR`). MAX caps the step counts (default 100000).
//! A durable case also prints how many `fdatasync`s the journal made and what that many
//! syncs cost on the same disk right after the run (the median of 200 512-byte writes over
//! preallocated blocks, times the count): the floor of one durable intent per call.
//! `PROVISIO_BENCH_KEEP=<dir>` runs a `case` in that folder and leaves its journal there.

#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{anyhow, bail, Context as _, Result};
use provisio_engine::model::{Format, InputSpec, ProcKind};
use provisio_engine::provider::ProviderRegistry;
use provisio_engine::request::parse_request;
use provisio_engine::testing::RecordingProvider;
use provisio_engine::txn::index::{self, TxnQuery};
use provisio_engine::txn::listing as index_listing;
use provisio_engine::txn::retention;
use provisio_engine::txn::synthetic::{self, Synthetic};
use provisio_engine::txn::DurableJournal;
use provisio_engine::Catalog;
use provisio_engine::{Call, Done, Element, Outcome, ProcedureSpec, Provider, ProviderError};
use provisio_engine::{Engine, EngineOptions, Journal, TxnState, UndoKind};
use provisio_engine::{KeyRange, SledStore, Space, Store as _};
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
/// The resident set now (`VmRSS`), in bytes.
fn rss_now() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/self/status"))?
        .parse()?;
    Ok(kib * 1024)
}

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
    steps_request_ending(n, filesystem, false)
}

/// [`steps_request`], with a last step that fails after all the calls when `fail` is set:
/// the transaction rolls back every call.
fn steps_request_ending(n: usize, filesystem: bool, fail: bool) -> String {
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
            r#"<execute id="each" namespace="Rec Provider" procedure="Create">
  <forEach name="u" root="data" path="users/user"/>
  <before source="u" sourcePath="name" destination="executeData" destinationPath="name"/>
</execute>"#,
        );
    }
    if fail {
        s.push_str(r#"<execute namespace="Rec Provider" procedure="Fail" needs="each"/>"#);
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
    // `PROVISIO_BENCH_KEEP=<dir>`: the case runs in that folder and leaves it, so that the
    // binary can read the journal afterwards (`provisio --data-dir <dir> tx log <id>`).
    let keep = std::env::var_os("PROVISIO_BENCH_KEEP").map(std::path::PathBuf::from);
    let tmp = tempdir()?;
    let root = keep.as_deref().unwrap_or(tmp.path());
    let mut engine = steps_engine(&root.join("files"))?;
    let journal_dir = root.join("journal");
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
        "rollback" => steps_request_ending(n, false, true),
        "wide" => wide_request(n),
        other => bail!("unknown case {other}"),
    };
    let request_bytes = text.len();
    let base = peak_rss()?;
    let cpu_before = cpu_seconds()?;
    // The store's size on disk (allocated blocks) while the transaction runs, every 20 ms.
    let sampler = durable.then(|| StoreSampler::start(&journal_dir));
    let start = Instant::now();
    let req = parse_request(&text, "growth.xml", Format::Xml).map_err(|e| anyhow!("{e:?}"))?;
    drop(text);
    // What `provisio run` does: the request's data moves into the transaction.
    let r = engine
        .run_owned(req)
        .await
        .map_err(|e| anyhow!("does not compile: {e}"))?;
    let took = start.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds()?;
    let cpu = cpu_after.0 - cpu_before.0 + cpu_after.1 - cpu_before.1;
    let expected = if kind == "rollback" {
        TxnState::RolledBack
    } else {
        TxnState::Committed
    };
    if r.state != expected {
        bail!("{kind} {n}: {} ({:?})", r.state, r.failure);
    }
    if let Some(k) = &keep {
        eprintln!("transaction {} kept in {}", r.txn_id, k.display());
    }
    drop(r);
    drop(engine);
    let peak = peak_rss()?;
    let syncs = store.as_ref().map_or(0, |s| s.sync_count());
    // What the store keeps: its keys and values (read after the peak RSS, which this grows).
    let kept = store.as_deref().map_or(Ok(0), kept_bytes)?;
    if let Some(s) = store.take() {
        s.close();
    }
    // Closing checkpoints: the store's last growth happens here.
    let peak_during = sampler.map_or(0, StoreSampler::stop);
    let on_disk = du(&journal_dir);
    let allocated = du_allocated(&journal_dir);
    let written = disk_writes();
    // What that many syncs cost on this disk right now: the floor of a journal that makes
    // each call's intent durable before the call.
    let floor = if syncs > 0 {
        sync_floor(root, 200)? * syncs as f64
    } else {
        0.0
    };
    Ok(format!(
        "{kind}\t{n}\t{}\t{took:.3}\t{:.1}\t{:.1}\t{:.1}\t{:.2}\t{syncs}\t{floor:.3}\t{:.1}\t{:.1}\t{:.1}\t{:.0}\t{cpu:.2}",
        if durable { "durable" } else { "ephemeral" },
        mib(peak),
        mib(base),
        mib(on_disk),
        mib(request_bytes as u64),
        mib(kept),
        mib(peak_during),
        mib(allocated),
        mib(written),
    ))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Bytes this process caused to be written to the block device so far (`write_bytes` of
/// `/proc/self/io`): what the disk was made to write, beside what the store keeps.
fn disk_writes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds this process has used so far (user, system), from `/proc/self/stat`: on a
/// shared machine they say what the work cost where wall time also says how busy it was.
fn cpu_seconds() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected /proc/self/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    let tick = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow!("short /proc/self/stat"))?
            .parse::<f64>()?
            / 100.0)
    };
    Ok((tick(11)?, tick(12)?))
}

/// Bytes of disk allocated to the files below `dir` (`st_blocks`: what `du` reports; sparse
/// and preallocated files count what they occupy).
fn du_allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du_allocated(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Samples [`du_allocated`] of a folder on a thread of its own and keeps the largest.
struct StoreSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl StoreSampler {
    fn start(dir: &Path) -> StoreSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (dir, stopped) = (dir.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(du_allocated(&dir));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peak.max(du_allocated(&dir))
        });
        StoreSampler { stop, thread }
    }

    /// The largest size seen.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// The bytes of every key and value in the store (what it keeps).
fn kept_bytes(store: &SledStore) -> Result<u64> {
    let mut total = 0u64;
    for tag in [b'j', b't', b'a', b'd', b'm', b'i'] {
        let space = Space::from_tag(tag).ok_or_else(|| anyhow!("no space {tag}"))?;
        let mut from: Vec<u8> = Vec::new();
        loop {
            let page = store
                .scan_range(space, KeyRange::new(&from, None), 4096, false)
                .map_err(|e| anyhow!("{e}"))?;
            total += page
                .iter()
                .map(|(k, v)| (k.len() + v.len()) as u64)
                .sum::<u64>();
            match page.last() {
                Some((k, _)) if page.len() == 4096 => {
                    from.clone_from(k);
                    from.push(0);
                }
                _ => break,
            }
        }
    }
    Ok(total)
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

/// Engine and registry of the steps cases (no journal).
fn steps_engine(files: &Path) -> Result<Engine> {
    let mut registry = ProviderRegistry::new();
    // `PROVISIO_BENCH_RECORDING=1`: the engine's test provider, which logs every call (the
    // figures before Session 9 were taken with it).
    if std::env::var_os("PROVISIO_BENCH_RECORDING").is_some() {
        registry.register(Arc::new(RecordingProvider::new("Rec")));
    } else {
        registry.register(Arc::new(LightProvider::default()));
    }
    std::fs::create_dir_all(files)?;
    registry.register(Arc::new(
        FilesystemProvider::new(files.to_path_buf()).map_err(|e| anyhow!("{e}"))?,
    ));
    let catalog = Catalog::new(Vec::new(), &registry).map_err(|e| anyhow!("catalog: {e:?}"))?;
    Ok(Engine::new(catalog, registry, EngineOptions::default()))
}

/// The no-op provider of the steps cases (`Rec Provider`): `Create(name)` returns its input
/// with an id and an undo record naming what it made, `Fail` fails, `Noop` does nothing.
/// Unlike the engine's `RecordingProvider` it keeps no log of its calls (that log was 32 MB
/// of a 100,000-call run's heap), only counts, so the memory measured is the engine's.
#[derive(Debug, Default)]
struct LightProvider {
    created: std::sync::atomic::AtomicUsize,
    undone: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Provider for LightProvider {
    fn name(&self) -> &str {
        "Rec"
    }

    fn procedures(&self) -> Vec<ProcedureSpec> {
        let spec = |name: &str, undo: UndoKind, inputs: &[&str]| ProcedureSpec {
            name: name.to_string(),
            kind: ProcKind::Write,
            undo,
            description: format!("growth bench procedure {name}"),
            inputs: inputs
                .iter()
                .map(|n| InputSpec {
                    name: n.to_string(),
                    required: true,
                    ..Default::default()
                })
                .collect(),
        };
        vec![
            spec("Create", UndoKind::Reversible, &["name"]),
            spec("Fail", UndoKind::Nothing, &[]),
            spec("Noop", UndoKind::Nothing, &[]),
        ]
    }

    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        let mut ed = call.execute_data;
        match call.context.procedure.as_str() {
            "Noop" => Ok(Outcome {
                execute_data: ed,
                undo: None,
            }),
            "Fail" => Err(ProviderError::permanent("asked to fail")),
            _ => {
                let name = ed
                    .child("name")
                    .map(|e| e.string_value())
                    .ok_or_else(|| ProviderError::invalid("input `name` is missing"))?;
                self.created
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ed.push(Element::with_text("id", format!("id-{name}")));
                let mut undo = Element::new("undo");
                undo.push(Element::with_text("created", name));
                Ok(Outcome {
                    execute_data: ed,
                    undo: Some(undo),
                })
            }
        }
    }

    async fn undo(&self, _done: Done) -> Result<(), ProviderError> {
        self.undone
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn recover(&self, _call: &Call) -> Result<Option<Element>, ProviderError> {
        // The crash of the recovery case comes once an intent is durable, before the call.
        Ok(None)
    }
}

/// `case-crash KIND N DIR`: runs N calls in one durable transaction in DIR and is aborted by
/// the journal's failpoint (`PROVISIO_CRASH_AT`, set by the parent) once the intent of call N
/// is written: a transaction left in flight with N-1 calls done and the last in doubt, as a
/// crash leaves it.
async fn crash_case(kind: &str, n: usize, dir: &Path) -> Result<String> {
    let store = Arc::new(SledStore::open(&dir.join("journal")).map_err(|e| anyhow!("{e}"))?);
    let journal: Arc<dyn Journal> =
        Arc::new(DurableJournal::new(store, None, "bench").with_failpoints_from_env());
    let engine = steps_engine(&dir.join("files"))?.with_journal(journal);
    let text = steps_request(n, kind == "fs");
    let req = parse_request(&text, "growth.xml", Format::Xml).map_err(|e| anyhow!("{e:?}"))?;
    let r = engine
        .run_owned(req)
        .await
        .map_err(|e| anyhow!("does not compile: {e}"))?;
    bail!(
        "the crash point was not reached: the transaction ended {}",
        r.state
    )
}

/// `recover-case KIND DIR`: reopens the store a crash left and recovers it (what `provisio
/// recover` and every start do); reports the times, what was undone and the peak RSS.
async fn recover_case(kind: &str, dir: &Path) -> Result<String> {
    let journal_dir = dir.join("journal");
    let before = du_allocated(&journal_dir);
    let base = peak_rss()?;
    let start = Instant::now();
    let store = Arc::new(SledStore::open(&journal_dir).map_err(|e| anyhow!("{e}"))?);
    let opened = start.elapsed().as_secs_f64();
    // The open replays the write-ahead log the crash left: its own peak, and what stays.
    let open_peak = peak_rss()?;
    let after_open = rss_now()?;
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "bench"));
    let engine = steps_engine(&dir.join("files"))?.with_journal(journal.clone());
    let cpu_before = cpu_seconds()?;
    let start = Instant::now();
    let found = provisio_engine::txn::recover(&engine, &journal)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let recovered = start.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds()?;
    let (user, sys) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    let peak = peak_rss()?;
    let [r] = found.as_slice() else {
        bail!("expected one transaction to recover, found {}", found.len());
    };
    drop(engine);
    drop(journal);
    store.close();
    drop(store);
    let undone = r.undone.max(1);
    Ok(format!(
        "{kind}\t{}\t{}\t{}\t{opened:.3}\t{recovered:.3}\t{:.1}\t{user:.2}\t{sys:.2}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}",
        r.undone,
        r.in_doubt,
        r.to,
        recovered / undone as f64 * 1e6,
        mib(peak),
        mib(base),
        mib(before),
        mib(du_allocated(&journal_dir)),
        mib(open_peak),
        mib(after_open),
    ))
}

/// The recovery mode: for each N, a child runs N calls and is aborted in flight, another
/// reopens and recovers the store.
fn recovery_mode(kind: &str, sizes: &[usize]) -> Result<()> {
    println!("case\tundone\tin_doubt\tto\topen_s\trecover_s\tus_per_undo\tcpu_user_s\tcpu_sys_s\tpeak_rss_MiB\tbase_rss_MiB\tstore_before_MiB\tstore_after_MiB\topen_peak_rss_MiB\trss_after_open_MiB");
    for &n in sizes {
        let dir = tempdir()?;
        // Journal writes: 1 for the start, then an intent and a result per call; the crash
        // comes once the intent of call N is written (durably, with every earlier result).
        let at = 2 * n;
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["case-crash", kind, &n.to_string()])
            .arg(dir.path())
            .env("PROVISIO_CRASH_AT", at.to_string())
            .env("PROVISIO_CRASH_WHEN", "after")
            .output()
            .context("start the crash child")?;
        if out.status.success() {
            bail!(
                "the crash child ended normally: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["case-recover", kind])
            .arg(dir.path())
            .output()
            .context("start the recovery child")?;
        if !out.status.success() {
            bail!(
                "recovery of {n} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!("{}", String::from_utf8(out.stdout)?.trim());
    }
    Ok(())
}

/// The synthetic finished transactions of the list and prune modes.
fn synthetic_spec(first_ms: u64) -> Synthetic {
    Synthetic {
        first_ms,
        procedures: vec!["Hosted Files/CreateFolder".into(), "Mail/AddMailbox".into()],
        subjects: vec!["alice".into(), "bob".into(), "carol".into()],
        states: vec![
            TxnState::Committed,
            TxnState::Committed,
            TxnState::Committed,
            TxnState::RolledBack,
        ],
        ..Synthetic::default()
    }
}

/// Fills `journal_dir` with `n` synthetic finished transactions; returns the seconds taken.
async fn fill_store(journal_dir: &Path, n: usize, first_ms: u64) -> Result<f64> {
    let start = Instant::now();
    let store = SledStore::open(journal_dir).map_err(|e| anyhow!("{e}"))?;
    index::ensure(&store).await.map_err(|e| anyhow!("{e}"))?;
    let spec = synthetic_spec(first_ms);
    let mut done = 0;
    while done < n {
        let count = (n - done).min(50_000);
        synthetic::fill(&store, &spec, done, count)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        done += count;
    }
    store.close();
    Ok(start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `list-case N [DIR]`: a journal of N finished transactions (in DIR/journal, kept, when
/// given), then the first page of `tx list` (20, newest first) through the library call the
/// CLI makes: cold (the first after opening the store) and warm (median of 21), unfiltered
/// and filtered by state and by subject.
async fn list_case(n: usize, keep: Option<&Path>) -> Result<String> {
    let tmp = tempdir()?;
    let root = keep.unwrap_or(tmp.path());
    let journal_dir = root.join("journal");
    let filled = fill_store(&journal_dir, n, 1_700_000_000_000).await?;
    let size = du_allocated(&journal_dir);
    let start = Instant::now();
    let store = SledStore::open(&journal_dir).map_err(|e| anyhow!("{e}"))?;
    let opened = start.elapsed().as_secs_f64();
    let page = |q: TxnQuery| {
        let store = &store;
        async move {
            let start = Instant::now();
            let page = index::list(store, &q).await.map_err(|e| anyhow!("{e}"))?;
            if page.items.len() != q.limit.min(n) {
                bail!("a page of {} for {n} transactions", page.items.len());
            }
            Ok::<_, anyhow::Error>((start.elapsed().as_secs_f64(), page.examined))
        }
    };
    let all = TxnQuery {
        limit: 20,
        ..TxnQuery::default()
    };
    let (cold, _) = page(all.clone()).await?;
    let mut out = format!(
        "{n}\t{filled:.1}\t{:.1}\t{opened:.3}\t{:.3}",
        mib(size),
        cold * 1e3
    );
    let filters = [
        all.clone(),
        TxnQuery {
            state: Some(TxnState::RolledBack),
            ..all.clone()
        },
        TxnQuery {
            subject: Some("bob".into()),
            ..all.clone()
        },
    ];
    for q in filters {
        let mut times = Vec::new();
        let mut examined = 0;
        for _ in 0..21 {
            let (t, e) = page(q.clone()).await?;
            times.push(t);
            examined = e;
        }
        let _ = write!(out, "\t{:.3}\t{examined}", median(times) * 1e3);
    }
    store.close();
    Ok(out)
}

/// `prune-case N`: N finished transactions, all past retention; the store's size on disk
/// after filling, after `tx prune` removed them all, after reopening, and after new work.
async fn prune_case(n: usize) -> Result<String> {
    let tmp = tempdir()?;
    let journal_dir = tmp.path().join("journal");
    // Finished two days ago, pruned at a one-day retention.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    fill_store(&journal_dir, n, now - 2 * 86_400_000 - n as u64 * 10).await?;
    let filled = du_allocated(&journal_dir);
    let store = SledStore::open(&journal_dir).map_err(|e| anyhow!("{e}"))?;
    let kept_before = kept_bytes(&store)?;
    let retention = retention::Retention {
        max_age: Some(std::time::Duration::from_secs(86_400)),
        ..retention::Retention::default()
    };
    let start = Instant::now();
    let pruned = retention::prune(&store, &retention, now, None, false)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let took = start.elapsed().as_secs_f64();
    let kept_after = kept_bytes(&store)?;
    store.close();
    drop(store);
    let after_prune = du_allocated(&journal_dir);
    // What `provisio tx prune` does next, the store closed.
    let vacuumed = SledStore::vacuum(&journal_dir, false).map_err(|e| anyhow!("{e}"))?;
    let after_vacuum = du_allocated(&journal_dir);
    let store = SledStore::open(&journal_dir).map_err(|e| anyhow!("{e}"))?;
    store.close();
    drop(store);
    let after_reopen = du_allocated(&journal_dir);
    // New work after the prune: a tenth as many transactions again.
    fill_store(&journal_dir, n / 10, now).await?;
    let after_more = du_allocated(&journal_dir);
    Ok(format!(
        "{n}\t{}\t{took:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.2}\t{:.1}\t{:.1}\t{:.1}",
        pruned.transactions.len(),
        mib(kept_before),
        mib(kept_after),
        mib(filled),
        mib(after_prune),
        vacuumed.seconds,
        mib(after_vacuum),
        mib(after_reopen),
        mib(after_more),
    ))
}

/// `case-vacuum-fill N DIR`: N finished transactions (none past retention) in DIR/journal.
async fn vacuum_fill(n: usize, dir: &Path) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let took = fill_store(&dir.join("journal"), n, now - n as u64 * 10).await?;
    Ok(format!("{took:.1}"))
}

/// `case-vacuum DIR`: sled's database in DIR/journal rewritten (forced): seconds, peak RSS
/// (MiB) and the RSS before it began, sled's files before and after, what they hold.
fn vacuum_case(dir: &Path) -> Result<String> {
    let rss_before = rss_now()?;
    let done = SledStore::vacuum(&dir.join("journal"), true).map_err(|e| anyhow!("{e}"))?;
    Ok(format!(
        "{:.2}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}",
        done.seconds,
        mib(peak_rss()?),
        mib(rss_before),
        mib(done.before),
        mib(done.after),
        mib(done.live.unwrap_or(0)),
    ))
}

/// Runs `bin ARGS` on the data folder `dir` under `/usr/bin/time`: its output, wall time
/// (ms) and peak RSS (KiB).
fn timed_provisio(
    bin: &str,
    args: &[&str],
    dir: &Path,
) -> Result<(std::process::Output, f64, f64)> {
    let start = Instant::now();
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%M", bin])
        .args(args)
        .env("PROVISIO_DATA_DIR", dir)
        .env_remove("RUST_LOG")
        .output()
        .context("run provisio under /usr/bin/time")?;
    let wall = start.elapsed().as_secs_f64() * 1e3;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let kib: f64 = stderr
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| anyhow!("no peak RSS from /usr/bin/time: {stderr}"))?;
    Ok((out, wall, kib))
}

fn child(args: &[&str]) -> Result<String> {
    child_of("case", args)
}

fn child_of(mode: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg(mode)
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
    // As the binary does (`no_huge_pages` in src/main.rs): mimalloc's freed pages would
    // fault back in as zeroed 2 MiB pages.
    #[cfg(all(target_os = "linux", not(feature = "system-alloc")))]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    let arg = |i: usize, what: &str| {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("missing {what}"))
    };
    match args.first().map(String::as_str) {
        Some("case-crash") => {
            let (kind, n, dir) = (arg(1, "KIND")?, arg(2, "N")?.parse()?, arg(3, "DIR")?);
            println!("{}", rt()?.block_on(crash_case(kind, n, Path::new(dir)))?);
            return Ok(());
        }
        Some("case-recover") => {
            let (kind, dir) = (arg(1, "KIND")?, arg(2, "DIR")?);
            println!("{}", rt()?.block_on(recover_case(kind, Path::new(dir)))?);
            return Ok(());
        }
        Some("case-list") => {
            let n = arg(1, "N")?.parse()?;
            let keep = args.get(2).map(Path::new);
            println!("{}", rt()?.block_on(list_case(n, keep))?);
            return Ok(());
        }
        Some("case-open") => {
            // `case-open DIR`: opens the store in DIR/journal (an empty one when DIR does not
            // exist yet) and closes it: the floor of any command that reads the store.
            let dir = Path::new(arg(1, "DIR")?).join("journal");
            let start = Instant::now();
            let store = SledStore::open(&dir).map_err(|e| anyhow!("{e}"))?;
            let opened = start.elapsed().as_secs_f64();
            store.close();
            println!(
                "{}\t{opened:.3}\t{:.1}\t{:.1}",
                dir.display(),
                mib(peak_rss()?),
                mib(du_allocated(&dir))
            );
            return Ok(());
        }
        Some("open") => {
            // `open DIR [REPS]`: the store's open, each in a fresh process, beside an empty store's.
            let dir = arg(1, "DIR")?;
            let reps: usize = args.get(2).map(|r| r.parse()).transpose()?.unwrap_or(5);
            let empty = tempdir()?;
            println!("store\topen_s\tpeak_rss_MiB\tstore_MiB");
            for _ in 0..reps {
                for d in [empty.path(), Path::new(dir)] {
                    println!("{}", child_of("case-open", &[&d.display().to_string()])?);
                }
            }
            return Ok(());
        }
        Some("cli-list") => {
            // `cli-list DIR [REPS]`: `provisio tx list` (PROVISIO_BIN) as a user runs it, each a
            // fresh process with DIR as its data directory (DIR/journal kept by `case-list N
            // DIR`): the first page, filtered by state and by subject, then with the listing
            // file's marker removed so the store is opened (and its clean close, finding no
            // listing to build on, rebuilds the files from the summaries: counted).
            let dir = Path::new(arg(1, "DIR")?);
            let reps: usize = args.get(2).map(|r| r.parse()).transpose()?.unwrap_or(5);
            let bin = std::env::var("PROVISIO_BIN")
                .unwrap_or_else(|_| "target/release/provisio".to_string());
            let marker = dir.join("journal").join(index_listing::MARKER_FILE);
            println!("case\twall_ms\tpeak_rss_MiB\tlines\tloadavg");
            let cases: [(&str, &[&str]); 4] = [
                ("first page", &[]),
                ("--state rolled_back", &["--state", "rolled_back"]),
                ("--subject bob", &["--subject", "bob"]),
                ("first page, store opened", &[]),
            ];
            for _ in 0..reps {
                for (name, extra) in cases {
                    let opened = name.ends_with("store opened");
                    if opened {
                        std::fs::remove_file(&marker)?;
                    }
                    let mut args = vec!["tx", "list"];
                    args.extend(extra.iter().copied());
                    let (out, wall, kib) = timed_provisio(&bin, &args, dir)?;
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    if !out.status.success() {
                        bail!("tx list {extra:?} failed: {stderr}");
                    }
                    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
                    let load = std::fs::read_to_string("/proc/loadavg")?;
                    let load = load.split_whitespace().next().unwrap_or("?");
                    println!("{name}\t{wall:.1}\t{:.1}\t{lines}\t{load}", kib / 1024.0);
                    if opened && !marker.exists() {
                        // The reader left the rebuild to the next writer: `provisio recover`
                        // (nothing to recover: it opens the store to write, and closes it),
                        // timed, so the next round starts from a listing again.
                        let (out, wall, kib) = timed_provisio(&bin, &["recover"], dir)?;
                        let stderr = String::from_utf8_lossy(&out.stderr);
                        if !out.status.success() || !marker.exists() {
                            bail!("the next writer did not rebuild the listing: {stderr}");
                        }
                        println!(
                            "next writer (recover, nothing to do): rebuild\t{wall:.1}\t{:.1}\t-\t{load}",
                            kib / 1024.0
                        );
                    }
                }
            }
            return Ok(());
        }
        Some("case-crash-writer") => {
            // `case-crash-writer DIR K`: a clean open and close of DIR/journal (so its listing
            // marker is this build's), then a writer that adds K finished transactions started
            // in the last K*10 ms and aborts (as kill -9) once they are durable.
            let (dir, k) = (
                Path::new(arg(1, "DIR")?).join("journal"),
                arg(2, "K")?.parse()?,
            );
            SledStore::open(&dir).map_err(|e| anyhow!("{e}"))?.close();
            rt()?.block_on(async {
                let store = SledStore::open(&dir).map_err(|e| anyhow!("{e}"))?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis() as u64;
                let spec = Synthetic {
                    first_ms: now - k as u64 * 10,
                    ..synthetic_spec(now)
                };
                synthetic::fill(&store, &spec, 0, k)
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
                std::process::abort();
                #[allow(unreachable_code)]
                Ok::<(), anyhow::Error>(())
            })?;
            return Ok(());
        }
        Some("case-crash-pruner") => {
            // `case-crash-pruner DIR P`: a clean open and close of DIR/journal (so its listing
            // marker is this build's), then a writer that prunes the P oldest finished
            // transactions, waits until the store has taken an idle checkpoint (its writes in
            // sled, out of the write-ahead log), and aborts (as kill -9).
            let (dir, p) = (
                Path::new(arg(1, "DIR")?).join("journal"),
                arg(2, "P")?.parse()?,
            );
            SledStore::open(&dir).map_err(|e| anyhow!("{e}"))?.close();
            rt()?.block_on(async {
                let store = SledStore::open(&dir).map_err(|e| anyhow!("{e}"))?;
                let retention = retention::Retention {
                    max_age: Some(std::time::Duration::ZERO),
                    ..retention::Retention::default()
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis() as u64;
                let pruned = retention::prune(&store, &retention, now, Some(p), false)
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
                if pruned.transactions.len() != p {
                    bail!("pruned {} of {p}", pruned.transactions.len());
                }
                // The store checkpoints after 2 s without writes.
                std::thread::sleep(std::time::Duration::from_secs(5));
                std::process::abort();
                #[allow(unreachable_code)]
                Ok::<(), anyhow::Error>(())
            })?;
            return Ok(());
        }
        Some(mode @ ("cli-crash-list" | "cli-crash-prune")) => {
            let pruner = mode == "cli-crash-prune";
            // `cli-crash-list DIR [REPS] [K]`: after a writer that crashed having added K
            // transactions (`case-crash-writer`), the next writer (`provisio recover`, nothing
            // to recover) brings the listing up to date at its clean close: its wall time,
            // peak RSS and the listing's own time (its debug log), then `tx list`'s first
            // page from the listing; PROVISIO_BIN and PROVISIO_BIN_BASE interleaved.
            let dir = Path::new(arg(1, "DIR")?);
            let reps: usize = args.get(2).map(|r| r.parse()).transpose()?.unwrap_or(3);
            let k: usize = args
                .get(3)
                .map(|r| r.parse())
                .transpose()?
                .unwrap_or(if pruner { 1000 } else { 100 });
            // `P N`: the next writer prunes the P oldest of the store's N (+ K a round).
            let prune: usize = match pruner {
                true => 0,
                false => args.get(4).map(|r| r.parse()).transpose()?.unwrap_or(0),
            };
            let mut total: usize = match prune {
                0 => 0,
                _ => arg(5, "N")?.parse()?,
            };
            let new_bin = std::env::var("PROVISIO_BIN")
                .unwrap_or_else(|_| "target/release/provisio".to_string());
            // "new, no base": the new binary with the base file gone, so it rebuilds in full
            // (as after a removal since the files were written).
            let bins = [
                ("new", new_bin.clone()),
                (
                    "base",
                    std::env::var("PROVISIO_BIN_BASE").context("PROVISIO_BIN_BASE")?,
                ),
                ("new, no base", new_bin),
            ];
            let marker = dir.join("journal").join(index_listing::MARKER_FILE);
            println!("binary	next_writer_wall_ms	peak_rss_MiB	listing_ms	how	first_page_wall_ms	first_page_MiB	loadavg");
            for _ in 0..reps {
                for (name, bin) in &bins {
                    child_of(
                        if pruner {
                            "case-crash-pruner"
                        } else {
                            "case-crash-writer"
                        },
                        &[&dir.display().to_string(), &k.to_string()],
                    )
                    .ok();
                    if marker.exists() {
                        bail!("the crashed writer left a marker");
                    }
                    if name.ends_with("no base") {
                        std::fs::remove_file(dir.join("journal").join(index_listing::BASE_FILE))?;
                    }
                    total += k;
                    let keep = total.saturating_sub(prune).to_string();
                    let next_writer: Vec<&str> = match prune {
                        0 => vec!["recover"],
                        _ => vec!["tx", "prune", "--older-than", "forever", "--keep", &keep],
                    };
                    total -= total.min(prune);
                    let start = Instant::now();
                    let out = std::process::Command::new("/usr/bin/time")
                        .args(["-f", "%M", bin])
                        .args(&next_writer)
                        .env("PROVISIO_DATA_DIR", dir)
                        .env("RUST_LOG", "provisio_engine::txn::listing=debug")
                        .output()?;
                    let wall = start.elapsed().as_secs_f64() * 1e3;
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    if !out.status.success() || !marker.exists() {
                        bail!("the next writer did not bring the listing up to date: {stderr}");
                    }
                    let kib: f64 = stderr
                        .lines()
                        .last()
                        .and_then(|l| l.trim().parse().ok())
                        .ok_or_else(|| anyhow!("no peak RSS: {stderr}"))?;
                    let line = stderr
                        .lines()
                        .find(|l| l.contains("listing file"))
                        .unwrap_or("");
                    let how = if line.contains("up to date") {
                        "caught up"
                    } else if line.contains("rebuilt") {
                        "rebuilt"
                    } else {
                        "?"
                    };
                    let took = line
                        .split("took_ms=")
                        .nth(1)
                        .and_then(|t| t.split_whitespace().next())
                        .unwrap_or("?")
                        .to_string();
                    let (out, page_wall, page_kib) = timed_provisio(bin, &["tx", "list"], dir)?;
                    if !out.status.success() {
                        bail!("tx list failed: {}", String::from_utf8_lossy(&out.stderr));
                    }
                    let load = std::fs::read_to_string("/proc/loadavg")?;
                    let load = load.split_whitespace().next().unwrap_or("?").to_string();
                    println!(
                        "{name}\t{wall:.0}\t{:.1}\t{took}\t{how}\t{page_wall:.1}\t{:.1}\t{load}",
                        kib / 1024.0,
                        page_kib / 1024.0
                    );
                }
            }
            return Ok(());
        }
        Some("case-prune") => {
            let n = arg(1, "N")?.parse()?;
            println!("{}", rt()?.block_on(prune_case(n))?);
            return Ok(());
        }
        Some("list") => {
            let max = args
                .get(1)
                .map(|m| m.parse())
                .transpose()?
                .unwrap_or(1_000_000);
            println!("n\tfill_s\tstore_MiB\topen_s\tcold_first_page_ms\tfirst_page_ms\tindex_keys\tby_state_ms\tindex_keys\tby_subject_ms\tindex_keys");
            for n in [1_000, 10_000, 100_000, 1_000_000]
                .into_iter()
                .filter(|n| *n <= max)
            {
                println!("{}", child_of("case-list", &[&n.to_string()])?);
            }
            return Ok(());
        }
        Some("recover") => {
            let kind = args.get(1).map_or("noop", String::as_str);
            let max = args
                .get(2)
                .map(|m| m.parse())
                .transpose()?
                .unwrap_or(100_000);
            let sizes: Vec<usize> = [1_000, 10_000, 100_000]
                .into_iter()
                .filter(|n| *n <= max)
                .collect();
            return recovery_mode(kind, &sizes);
        }
        Some("prune") => {
            let n = args
                .get(1)
                .map(|m| m.parse())
                .transpose()?
                .unwrap_or(100_000);
            println!("n\tpruned\tprune_s\tkept_before_MiB\tkept_after_MiB\tfilled_MiB\tafter_prune_MiB\tvacuum_s\tafter_vacuum_MiB\tafter_reopen_MiB\tafter_10pct_more_MiB");
            println!("{}", child_of("case-prune", &[&n.to_string()])?);
            return Ok(());
        }
        Some("case-vacuum-fill") => {
            let n = arg(1, "N")?.parse()?;
            println!(
                "{}",
                rt()?.block_on(vacuum_fill(n, Path::new(arg(2, "DIR")?)))?
            );
            return Ok(());
        }
        Some("case-vacuum") => {
            println!("{}", vacuum_case(Path::new(arg(1, "DIR")?))?);
            return Ok(());
        }
        Some("vacuum") => {
            let max = args
                .get(1)
                .map(|m| m.parse())
                .transpose()?
                .unwrap_or(100_000);
            println!("n\tfill_s\tvacuum_s\tpeak_rss_MiB\trss_before_MiB\tsled_before_MiB\tsled_after_MiB\tlive_MiB");
            for n in [10_000usize, 100_000].into_iter().filter(|n| *n <= max) {
                let tmp = tempdir()?;
                let dir = tmp.path().to_str().ok_or_else(|| anyhow!("temp path"))?;
                let filled = child_of("case-vacuum-fill", &[&n.to_string(), dir])?;
                let vacuumed = child_of("case-vacuum", &[dir])?;
                println!("{n}\t{filled}\t{vacuumed}");
            }
            return Ok(());
        }
        _ => {}
    }
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
    println!("case\tn\tjournal\tseconds\tpeak_rss_MiB\tbase_rss_MiB\tstore_MiB\trequest_MiB\tsyncs\tsync_floor_s\tkept_MiB\tstore_peak_alloc_MiB\tstore_alloc_MiB\tdisk_written_MiB\tcpu_s");
    if what == "all" || what == "steps" {
        for kind in ["noop", "fs"] {
            for n in [1_000, 10_000, 100_000].into_iter().filter(|n| *n <= max) {
                for journal in ["ephemeral", "durable"] {
                    println!("{}", child(&[kind, &n.to_string(), journal])?);
                }
            }
        }
    }
    if what == "rollback" {
        // The same calls, rolled back by a failing last step: the journal a rollback leaves.
        for n in [1_000, 10_000, 100_000].into_iter().filter(|n| *n <= max) {
            for journal in ["ephemeral", "durable"] {
                println!("{}", child(&["rollback", &n.to_string(), journal])?);
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
