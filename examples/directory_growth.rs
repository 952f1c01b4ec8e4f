//! The embedded directory under one big transaction (issue 15): a request whose forEach
//! creates N users (class user, a UPN each, so every call also derives and reserves a
//! sAMAccountName) in one OU, in ONE transaction, on the embedded backend (provider state
//! in the engine's store). Prints time, users/s, peak RSS and the store's size, for a
//! durable journal (sled, as `provisio run`) and ephemeral (`--ephemeral`, in memory).
//!
//! `cargo run --release --example directory_growth -- [N …]` (default 1000 10000 100000)
//!
//! Every case runs in a child process of its own (this example re-executed with `case N
//! durable|ephemeral`), so its peak RSS (`VmHWM`) is its own; the store is in a temp folder
//! (override the parent with `PROVISIO_BENCH_DIR`).

#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{anyhow, bail, Result};
use provisio_engine::model::Format;
use provisio_engine::provider::ProviderRegistry;
use provisio_engine::request::parse_request;
use provisio_engine::txn::DurableJournal;
use provisio_engine::{Catalog, Engine, EngineOptions, Journal, SledStore, TxnState};
use provisio_providers::directory::{DirectoryProvider, Dn};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

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

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// The request: an OU, then one Create Object per user (forEach), in one transaction.
fn request(n: usize) -> String {
    let mut s = String::with_capacity(n * 60 + 1024);
    s.push_str("<request><data><users>");
    for i in 0..n {
        let _ = write!(
            s,
            "<user><name>User {i:06}</name><upn>user{i:06}@bench.test</upn></user>"
        );
    }
    s.push_str(
        r#"</users></data><procedure>
<execute id="ou" namespace="Active Directory Provider" procedure="Create Object">
  <executeData><container>LDAP://DC=provisio,DC=local</container><class>organizationalUnit</class><name>OU=Bench</name></executeData>
</execute>
<execute id="users" namespace="Active Directory Provider" procedure="Create Object" needs="ou">
  <forEach name="u" root="data" path="users/user"/>
  <executeData><container>LDAP://OU=Bench,DC=provisio,DC=local</container><class>user</class></executeData>
  <before template="CN={{ u/name }}" destination="executeData" destinationPath="name"/>
  <before source="u" sourcePath="upn" destination="executeData" destinationPath="properties/userPrincipalName"/>
</execute>
</procedure></request>"#,
    );
    s
}

async fn run_case(n: usize, durable: bool) -> Result<String> {
    let tmp = match std::env::var_os("PROVISIO_BENCH_DIR") {
        Some(p) => tempfile::tempdir_in(p)?,
        None => tempfile::tempdir()?,
    };
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(DirectoryProvider::embedded(Dn::parse(
        "DC=provisio,DC=local",
    )?)?));
    let catalog = Catalog::new(Vec::new(), &registry).map_err(|e| anyhow!("{e:?}"))?;
    let mut engine = Engine::new(catalog, registry, EngineOptions::default());
    let journal_dir = tmp.path().join("journal");
    let mut store = None;
    if durable {
        let opened = Arc::new(SledStore::open(&journal_dir).map_err(|e| anyhow!("{e}"))?);
        let journal: Arc<dyn Journal> =
            Arc::new(DurableJournal::new(opened.clone(), None, "bench"));
        engine = engine.with_journal(journal);
        store = Some(opened);
    }
    let text = request(n);
    let base = peak_rss()?;
    let start = Instant::now();
    let req = parse_request(&text, "directory.xml", Format::Xml).map_err(|e| anyhow!("{e:?}"))?;
    drop(text);
    let r = engine
        .run_owned(req)
        .await
        .map_err(|e| anyhow!("does not compile: {e}"))?;
    let took = start.elapsed().as_secs_f64();
    if r.state != TxnState::Committed {
        bail!("{n}: {} ({:?})", r.state, r.failure);
    }
    if r.calls != n + 1 {
        bail!("{n}: {} calls", r.calls);
    }
    drop(r);
    drop(engine);
    let peak = peak_rss()?;
    if let Some(s) = store.take() {
        s.close();
    }
    Ok(format!(
        "{n}\t{}\t{took:.3}\t{:.0}\t{:.1}\t{:.1}\t{:.1}\t{:.1}",
        if durable { "durable" } else { "ephemeral" },
        n as f64 / took,
        took * 1e6 / n as f64,
        mib(peak),
        mib(peak.saturating_sub(base)),
        mib(du(&journal_dir)),
    ))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("case") {
        let n: usize = args.get(1).ok_or_else(|| anyhow!("missing N"))?.parse()?;
        let durable = args.get(2).map(String::as_str) == Some("durable");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        println!("{}", rt.block_on(run_case(n, durable))?);
        return Ok(());
    }
    let sizes: Vec<usize> = if args.is_empty() {
        vec![1_000, 10_000, 100_000]
    } else {
        args.iter().map(|a| a.parse()).collect::<Result<_, _>>()?
    };
    println!("users\tjournal\tseconds\tusers_per_s\tus_per_user\tpeak_rss_MiB\trss_growth_MiB\tstore_MiB");
    for durable in [true, false] {
        for n in &sizes {
            let out = std::process::Command::new(std::env::current_exe()?)
                .args([
                    "case",
                    &n.to_string(),
                    if durable { "durable" } else { "ephemeral" },
                ])
                .output()?;
            if !out.status.success() {
                bail!("case {n}: {}", String::from_utf8_lossy(&out.stderr));
            }
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
    }
    Ok(())
}
