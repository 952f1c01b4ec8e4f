//! The HMC namespaces on the embedded defaults (issue 17): `Provisioning/ProvisionTenant`
//! (organization + 3 users with passwords, domain asset, DNS zone with MX/SPF/autodiscover,
//! folders with a quota and home folders) one at a time (median and p90 latency) and 16 in
//! flight (tenants/s), the same procedure forced sequential (`parallel="0"`: the ratio),
//! and `Provisioning/BulkAddUsers` with 1,000 users in one transaction.
//!
//! `cargo run --release --example hmc_bench -- [TENANTS] [USERS]` (defaults 40 and 1000).
//! Durable journal (sled, as `provisio run`) and the embedded providers in a temp folder
//! (override the parent with `PROVISIO_BENCH_DIR`); the repository's `namespaces/`;
//! tokio multi-thread runtime with 2 workers.

#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{anyhow, bail, Result};
use provisio_engine::model::Format;
use provisio_engine::request::{load_namespace_dir, parse_request};
use provisio_engine::txn::DurableJournal;
use provisio_engine::{Catalog, Engine, EngineOptions, Journal, SledStore, TxnState};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RESELLER: &str = "LDAP://OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The engine over the embedded providers in `dir`, with the repository's namespaces plus
/// `ProvisioningSequential`: the Provisioning namespace with `parallel="0"`.
fn engine(dir: &Path) -> Result<(Engine, Arc<SledStore>)> {
    let (mut namespaces, errors) = load_namespace_dir(&repo().join("namespaces"));
    if !errors.is_empty() {
        bail!("namespaces: {errors:?}");
    }
    let seq = std::fs::read_to_string(repo().join("namespaces/provisioning.xml"))?
        .replace("parallel=\"1\"", "parallel=\"0\"")
        .replace(
            "<namespace name=\"Provisioning\"",
            "<namespace name=\"ProvisioningSequential\"",
        );
    let seq_file = dir.join("provisioning-sequential.xml");
    std::fs::write(&seq_file, seq)?;
    namespaces.extend(
        provisio_engine::request::load_namespace_file(&seq_file)
            .map_err(|e| anyhow!("sequential copy: {e:?}"))?,
    );
    // The embedded providers plus the Exchange 2007 Provider over the same directory
    // (ProvisionTenant's mail steps; `embedded_registry` has no mail provider).
    use provisio_providers::directory::{DirectoryProvider, Dn, DEFAULT_BASE_DN};
    use provisio_providers::exchange::{ExchangeConfig, ExchangeProvider};
    let directory = DirectoryProvider::embedded(Dn::parse(DEFAULT_BASE_DN)?)?;
    let exchange = ExchangeProvider::new(
        ExchangeConfig::new(dir.join("mail")),
        directory.backend().clone(),
    )?;
    let mut registry = provisio_engine::ProviderRegistry::new();
    registry.register(Arc::new(
        provisio_providers::filesystem::FilesystemProvider::new(dir.join("files"))?,
    ));
    registry.register(Arc::new(provisio_providers::dns::DnsProvider::zonefile(
        dir.join("zones"),
    )?));
    registry.register(Arc::new(directory));
    registry.register(Arc::new(exchange));
    registry.register(Arc::new(provisio_providers::error::ErrorProvider::new()));
    provisio_providers::register_bookkeeping(&mut registry);
    let catalog = Catalog::new(namespaces, &registry).map_err(|e| anyhow!("{e:?}"))?;
    let store = Arc::new(SledStore::open(&dir.join("journal")).map_err(|e| anyhow!("{e}"))?);
    let journal: Arc<dyn Journal> = Arc::new(DurableJournal::new(store.clone(), None, "bench"));
    let engine = Engine::new(catalog, registry, EngineOptions::default()).with_journal(journal);
    Ok((engine, store))
}

async fn run(engine: &Engine, text: &str, name: &str, format: Format) -> Result<Duration> {
    Ok(run_calls(engine, text, name, format).await?.0)
}

/// Runs one request that must commit: its time and how many provider calls it made.
async fn run_calls(
    engine: &Engine,
    text: &str,
    name: &str,
    format: Format,
) -> Result<(Duration, usize)> {
    let req = parse_request(text, name, format).map_err(|e| anyhow!("{name}: {e:?}"))?;
    let start = Instant::now();
    let r = engine
        .run_owned(req)
        .await
        .map_err(|e| anyhow!("{name} does not compile: {e}"))?;
    let took = start.elapsed();
    if r.state != TxnState::Committed {
        bail!("{name}: {} ({:?})", r.state, r.failure);
    }
    Ok((took, r.calls))
}

/// ProvisionTenant (or its sequential copy) for tenant `t` under `container`.
fn tenant(namespace: &str, t: usize, container: &str) -> String {
    let mut users = String::new();
    for (i, who) in ["ann", "bob", "eve"].iter().enumerate() {
        let _ = write!(
            users,
            r#"<user><userPrincipalName>{who}@t{t}.test</userPrincipalName><displayName>{who} {t}</displayName><isAdmin>{}</isAdmin><newPassword do-not-log="1">Bench-Pw-{t}-{i}</newPassword></user>"#,
            u8::from(i == 0)
        );
    }
    format!(
        r#"<request namespace="{namespace}" procedure="ProvisionTenant"><data><name>T{t}</name><container>{container}</container><domain>t{t}.test</domain><planName>Gold</planName><users>{users}</users></data></request>"#
    )
}

fn median_p90(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64();
    (at(0.5), at(0.9))
}

/// `total` tenants numbered from `first`, `in_flight` at a time; `container(t)` says where.
async fn concurrent(
    engine: &Engine,
    first: usize,
    total: usize,
    in_flight: usize,
    container: impl Fn(usize) -> String + Send + Sync + 'static,
) -> Result<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let container = Arc::new(container);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (engine, next, container) = (engine.clone(), next.clone(), container.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                let t = first + i;
                let text = tenant("Provisioning", t, &container(t));
                run(&engine, &text, "tenant.xml", Format::Xml).await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(start.elapsed())
}

async fn bench(tenants: usize, users: usize) -> Result<()> {
    let tmp = match std::env::var_os("PROVISIO_BENCH_DIR") {
        Some(p) => tempfile::tempdir_in(p)?,
        None => tempfile::tempdir()?,
    };
    let (engine, store) = engine(tmp.path())?;
    let init = std::fs::read_to_string(repo().join("workflows/hosting/initialize-hosting.yaml"))?;
    run(&engine, &init, "initialize-hosting.yaml", Format::Yaml).await?;
    // 16 more resellers, so concurrent tenants can also be spread over containers.
    let mut resellers = String::from("<request><data/><procedure>");
    for r in 0..16 {
        let _ = write!(
            resellers,
            r#"<execute namespace="Hosted Active Directory" procedure="CreateResellerOrganization"><executeData><name>R{r}</name><container>LDAP://OU=Hosting,DC=provisio,DC=local</container></executeData></execute>"#
        );
    }
    resellers.push_str("</procedure></request>");
    run(&engine, &resellers, "resellers.xml", Format::Xml).await?;

    // Warm-up, then one at a time: parallel plan and forced sequential, interleaved.
    let mut n = 0;
    let mut calls = 0;
    for _ in 0..3 {
        calls = run_calls(
            &engine,
            &tenant("Provisioning", n, RESELLER),
            "t.xml",
            Format::Xml,
        )
        .await?
        .1;
        n += 1;
    }
    let (mut par, mut seq) = (Vec::new(), Vec::new());
    for _ in 0..tenants {
        par.push(
            run(
                &engine,
                &tenant("Provisioning", n, RESELLER),
                "t.xml",
                Format::Xml,
            )
            .await?,
        );
        n += 1;
        seq.push(
            run(
                &engine,
                &tenant("ProvisioningSequential", n, RESELLER),
                "t.xml",
                Format::Xml,
            )
            .await?,
        );
        n += 1;
    }
    let (pm, pp) = median_p90(&mut par);
    let (sm, sp) = median_p90(&mut seq);
    println!(
        "ProvisionTenant, one at a time (3 users, {calls} provider calls, durable journal): median {:.1} ms, p90 {:.1} ms (n={tenants}); forced sequential: median {:.1} ms, p90 {:.1} ms; sequential / parallel = {:.2}x",
        pm * 1e3,
        pp * 1e3,
        sm * 1e3,
        sp * 1e3,
        sm / pm
    );

    let total = tenants * 4;
    let took = concurrent(&engine, n, total, 16, |_| RESELLER.to_string()).await?;
    n += total;
    println!(
        "ProvisionTenant, 16 in flight, one reseller: {total} tenants in {:.2} s = {:.1} tenants/s",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    let took = concurrent(&engine, n, total, 16, |t| {
        format!("LDAP://OU=R{},OU=Hosting,DC=provisio,DC=local", t % 16)
    })
    .await?;
    n += total;
    println!(
        "ProvisionTenant, 16 in flight, spread over 16 resellers: {total} tenants in {:.2} s = {:.1} tenants/s",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );

    // BulkAddUsers: `users` users into one organization without a plan (no user limit),
    // one transaction.
    let org = format!(
        r#"<request namespace="Hosted Active Directory" procedure="CreateOrganization"><data><name>Bulk</name><container>{RESELLER}</container></data></request>"#
    );
    run(&engine, &org, "bulk-org.xml", Format::Xml).await?;
    let mut bulk = format!(
        r#"<request namespace="Provisioning" procedure="BulkAddUsers"><data><container>LDAP://OU=Bulk,{}</container><users>"#,
        RESELLER.trim_start_matches("LDAP://")
    );
    for i in 0..users {
        let _ = write!(
            bulk,
            "<user><userPrincipalName>bulk{i:05}@bulk.test</userPrincipalName><displayName>Bulk {i:05}</displayName></user>"
        );
    }
    bulk.push_str("</users></data></request>");
    let took = run(&engine, &bulk, "bulk.xml", Format::Xml).await?;
    println!(
        "BulkAddUsers: {users} users in one transaction: {:.2} s = {:.0} users/s ({:.2} ms per user; {n} tenants already provisioned)",
        took.as_secs_f64(),
        users as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1e3 / users as f64
    );
    drop(engine);
    store.close();
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let tenants = args.first().copied().unwrap_or(40);
    let users = args.get(1).copied().unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(tenants, users))
}
