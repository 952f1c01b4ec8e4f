//! The mail provider's speed (issue 16): N directory users, spread over T tenants, are
//! mailbox-enabled as N separate transactions (`Exchange 2007 Provider/CreateMailbox`, one
//! call each), K in flight, on the embedded backends (the embedded directory, the resource
//! manager and the mail records in provider state; sled journal as `provisio run`). Each
//! transaction commits its mailbox to the files (passwd-file, maps, Maildir++). Prints the
//! per-mailbox latency (median, p90, p99) and mailboxes/s.
//!
//! `cargo run --release --example mail_enable -- [N] [K] [T]` (default 1000 16 100); the
//! store and the mail root go to a temp folder (override the parent with
//! `PROVISIO_BENCH_DIR`).

#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Result};
use provisio_engine::model::Format;
use provisio_engine::provider::ProviderRegistry;
use provisio_engine::request::parse_request;
use provisio_engine::txn::DurableJournal;
use provisio_engine::{Catalog, Engine, EngineOptions, SledStore, Store, TxnState};
use provisio_providers::directory::{DirectoryProvider, Dn};
use provisio_providers::exchange::{ExchangeConfig, ExchangeProvider};
use provisio_providers::resource_manager::ResourceManagerProvider;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BASE: &str = "DC=provisio,DC=local";

fn request(steps: Vec<(String, String, Value)>) -> Result<provisio_engine::model::Request> {
    let mut map = serde_json::Map::new();
    for (id, call, with) in steps {
        map.insert(id, json!({"call": call, "with": with}));
    }
    let req = json!({"procedure": {"type": "write", "steps": Value::Object(map)}});
    Ok(parse_request(&req.to_string(), "req.json", Format::Json)?)
}

async fn commit(e: &Engine, r: &provisio_engine::model::Request) -> Result<()> {
    let res = e.run(r).await?;
    if res.state != TxnState::Committed {
        bail!("not committed: {:?}", res.failure);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let n = args.first().copied().unwrap_or(1000);
    let k = args.get(1).copied().unwrap_or(16);
    let tenants = args.get(2).copied().unwrap_or(100).max(1);
    let parent = std::env::var_os("PROVISIO_BENCH_DIR").map(std::path::PathBuf::from);
    let dir = match parent {
        Some(p) => tempfile::tempdir_in(p)?,
        None => tempfile::tempdir()?,
    };
    let directory = DirectoryProvider::embedded(Dn::parse(BASE)?)?;
    let exchange = ExchangeProvider::new(
        ExchangeConfig::new(dir.path().join("mail")),
        directory.backend().clone(),
    )?;
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(directory));
    registry.register(Arc::new(exchange));
    registry.register(Arc::new(ResourceManagerProvider::new()));
    let catalog = Catalog::new(Vec::new(), &registry).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let options = EngineOptions {
        step_timeout: Duration::from_secs(600),
        ..EngineOptions::default()
    };
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("db"))?);
    let journal = Arc::new(DurableJournal::new(store, None, "bench"));
    let engine = Engine::new(catalog, registry, options).with_journal(journal);

    // Setup: one transaction per tenant (its OU, its domain, its users), and the store.
    let t0 = Instant::now();
    commit(
        &engine,
        &request(vec![(
            "st".into(),
            "Exchange 2007 Resource Manager/AddExchangeResources".into(),
            json!({"mailStores": {"mailStore": [{"serverName": "ex1", "mailStoreName": "DB1", "megabytes": "1000000"}]}}),
        )])?,
    )
    .await?;
    let ad = "Active Directory Provider/Create Object".to_string();
    for t in 0..tenants {
        let org = format!("OU=T{t},{BASE}");
        let mut steps = vec![
            (
                "ou".into(),
                ad.clone(),
                json!({"container": BASE, "class": "organizationalUnit", "name": format!("OU=T{t}")}),
            ),
            (
                "d".into(),
                "Exchange 2007 Provider/CreateSMTPDomain".into(),
                json!({"organization": org, "domainName": format!("t{t}.test")}),
            ),
        ];
        for i in (t..n).step_by(tenants) {
            steps.push((
                format!("u{i}"),
                ad.clone(),
                json!({"container": org, "class": "user", "name": format!("CN=u{i}")}),
            ));
        }
        // Users need their OU, the domain its OU: ordered by `needs`.
        let mut map = serde_json::Map::new();
        for (id, call, with) in steps {
            let mut s = json!({"call": call, "with": with});
            if id != "ou" {
                s["needs"] = json!(["ou"]);
            }
            map.insert(id, s);
        }
        let req = json!({"procedure": {"type": "write", "steps": Value::Object(map)}});
        commit(
            &engine,
            &parse_request(&req.to_string(), "req.json", Format::Json)?,
        )
        .await?;
    }
    eprintln!(
        "setup: {n} users in {tenants} tenants in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // The measured part: N transactions, K in flight.
    let sem = Arc::new(tokio::sync::Semaphore::new(k));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let t = i % tenants;
        let req = request(vec![(
            "m".into(),
            "Exchange 2007 Provider/CreateMailbox".into(),
            json!({"user": format!("CN=u{i},OU=T{t},{BASE}"), "emailAddresses": {"value": [format!("u{i}@t{t}.test")]},
                   "quotaKB": "102400", "mailStore": {"serverName": "ex1", "mailStoreName": "DB1"}}),
        )])?;
        let e = engine.clone();
        let permit = sem.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let r = commit(&e, &req).await;
            drop(permit);
            r.map(|()| began.elapsed())
        }));
    }
    let mut lat = Vec::with_capacity(n);
    for t in tasks {
        lat.push(t.await??);
    }
    let total = start.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let lines = std::fs::read_to_string(dir.path().join("mail/passwd"))?
        .lines()
        .count();
    if lines != n {
        bail!("the passwd-file holds {lines} mailboxes, expected {n}");
    }
    println!(
        "{n} mailboxes, {k} in flight, {tenants} tenants: {:.2} s, {:.0} mailboxes/s; latency median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(*lat.last().unwrap_or(&Duration::ZERO)),
    );
    Ok(())
}
