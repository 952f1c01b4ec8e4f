//! The directory's ldap backend against a local slapd (issue 15): N users created as N
//! separate transactions through the engine (each one `Create Object` of class `user` with a
//! UPN, so the provider also derives the sAMAccountName and checks it is free), against the
//! floor: the same LDAP operations sent directly with ldap3 over one bound connection in
//! the same run. The engine's share is (engine time − floor time) / floor time.
//!
//! The operations of the floor are the ones the engine sent, counted by the backend
//! (`LdapClient::op_counts`): per user, the same number of base reads of the new DN and of
//! subtree searches by sAMAccountName, then the add. Both paths use plain LDAP on
//! 127.0.0.1 to the same private slapd (test-support's; `slapd`/`ldap-utils` installed).
//!
//! `cargo run --release --example directory_ldap_bench -- [N] [rounds]` (default 1000 3):
//! rounds alternate engine (in-memory journal), engine (durable sled journal, as
//! `provisio run`) and the floor, each in an OU of its own.

#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{anyhow, bail, Result};
use ldap3::{LdapConnAsync, Scope};
use provisio_engine::model::Format;
use provisio_engine::provider::ProviderRegistry;
use provisio_engine::request::parse_request;
use provisio_engine::txn::DurableJournal;
use provisio_engine::{Catalog, Engine, EngineOptions, Journal, SledStore, TxnState};
use provisio_providers::directory::ldap::{Flavour, LdapBackend, LdapSettings};
use provisio_providers::directory::DirectoryProvider;
use provisio_test_support::slapd::{self, Slapd};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

/// One user's transaction; `tag` (3 characters) keeps UPNs and sAMAccountNames
/// (`<tag><i>_bench.test`, 20 characters) apart between runs, so none collides.
fn request(ou: &str, tag: &str, i: usize) -> String {
    format!(
        r#"{{"procedure": {{"type": "write", "steps": {{"u": {{"call": "Active Directory Provider/Create Object", "with": {{"container": "{ou}", "class": "user", "name": "CN=User {i:06}", "properties": {{"property": [{{"@name": "userPrincipalName", "@mode": "replace", "value": ["{tag}{i:06}@bench.test"]}}]}}}}}}}}}}, "data": {{"x": "1"}}}}"#
    )
}

fn make_ou(s: &Slapd, name: &str) -> Result<String> {
    let dn = format!("ou={name},{}", slapd::TESTS_OU);
    let out = s.tool(
        "ldapadd",
        &[],
        &format!("dn: {dn}\nobjectClass: organizationalUnit\nou: {name}\n"),
    );
    if out.code != 0 {
        bail!("ldapadd {dn}: {out:?}");
    }
    Ok(dn)
}

/// N transactions through the engine; returns (seconds, LDAP ops per user).
async fn through_engine(
    s: &Slapd,
    n: usize,
    ou: &str,
    tag: &str,
    durable: bool,
) -> Result<(f64, [f64; 6])> {
    let mut settings =
        LdapSettings::new(s.url(), slapd::ADMIN_DN, s.password_file(), slapd::SUFFIX);
    settings.flavour = Some(Flavour::OpenLdap);
    let backend = Arc::new(LdapBackend::new(settings).map_err(|e| anyhow!("{e}"))?);
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(DirectoryProvider::with_backend(backend.clone())));
    let catalog = Catalog::new(Vec::new(), &registry).map_err(|e| anyhow!("{e:?}"))?;
    let mut engine = Engine::new(catalog, registry, EngineOptions::default());
    let tmp = tempfile::tempdir()?;
    let mut store = None;
    if durable {
        let opened =
            Arc::new(SledStore::open(&tmp.path().join("journal")).map_err(|e| anyhow!("{e}"))?);
        let journal: Arc<dyn Journal> =
            Arc::new(DurableJournal::new(opened.clone(), None, "bench"));
        engine = engine.with_journal(journal);
        store = Some(opened);
    }
    // Warm up: the pool's connection, the base check and the flavour.
    let warm = parse_request(&request(ou, tag, 999_999), "warm.json", Format::Json)
        .map_err(|e| anyhow!("{e:?}"))?;
    let r = engine.run(&warm).await.map_err(|e| anyhow!("{e}"))?;
    if r.state != TxnState::Committed {
        bail!("warm-up: {:?}", r.failure);
    }
    let before = backend.client().op_counts().snapshot();
    let start = Instant::now();
    for i in 0..n {
        let req = parse_request(&request(ou, tag, i), "u.json", Format::Json)
            .map_err(|e| anyhow!("{e:?}"))?;
        let r = engine.run(&req).await.map_err(|e| anyhow!("{e}"))?;
        if r.state != TxnState::Committed {
            bail!("user {i}: {:?}", r.failure);
        }
    }
    let took = start.elapsed().as_secs_f64();
    let after = backend.client().op_counts().snapshot();
    let mut per = [0f64; 6];
    for k in 0..6 {
        per[k] = (after[k] - before[k]) as f64 / n as f64;
    }
    if let Some(s) = store.take() {
        s.close();
    }
    Ok((took, per))
}

/// The same operations straight over one ldap3 connection: per user `reads` base reads of
/// the new DN, `searches` subtree searches by sAMAccountName, one add.
async fn floor(
    s: &Slapd,
    n: usize,
    ou: &str,
    tag: &str,
    reads: usize,
    searches: usize,
) -> Result<f64> {
    let (conn, mut ldap) = LdapConnAsync::new(&s.url()).await?;
    ldap3::drive!(conn);
    ldap.simple_bind(slapd::ADMIN_DN, &s.password)
        .await?
        .success()?;
    let start = Instant::now();
    for i in 0..n {
        let dn = format!("CN=User {i:06},{ou}");
        let sam = format!("{tag}{i:06}_bench.test");
        for _ in 0..reads {
            let res = ldap
                .search(&dn, Scope::Base, "(objectClass=*)", vec!["cn"])
                .await?;
            // noSuchObject (32) is the expected answer: the DN is free.
            if res.1.rc != 32 || !res.0.is_empty() {
                bail!("{dn}: expected noSuchObject, got rc {}", res.1.rc);
            }
        }
        for _ in 0..searches {
            ldap.search(
                slapd::SUFFIX,
                Scope::Subtree,
                &format!("(sAMAccountName={sam})"),
                vec!["sAMAccountName"],
            )
            .await?
            .success()?;
        }
        let attrs: Vec<(&str, HashSet<&str>)> = vec![
            (
                "objectClass",
                HashSet::from(["inetOrgPerson", "provisioAccount"]),
            ),
            (
                "userPrincipalName",
                HashSet::from([format!("{tag}{i:06}@bench.test").leak() as &str]),
            ),
            (
                "sAMAccountName",
                HashSet::from([sam.clone().leak() as &str]),
            ),
            ("CN", HashSet::from([format!("User {i:06}").leak() as &str])),
            ("sn", HashSet::from([format!("User {i:06}").leak() as &str])),
            ("userAccountControl", HashSet::from(["546"])),
        ];
        ldap.add(&dn, attrs).await?.success()?;
    }
    let took = start.elapsed().as_secs_f64();
    ldap.unbind().await?;
    Ok(took)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let rounds: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let s =
        Slapd::start().ok_or_else(|| anyhow!("slapd is not installed (scripts/ensure-tools)"))?;
    println!(
        "round\tpath\tusers\tseconds\tusers_per_s\tms_per_user\tsearches_per_user\tadds_per_user"
    );
    let mut best = [f64::MAX; 3];
    // The engine's share in each round, against that round's floor (the machine's load
    // moves both alike within a round).
    let mut shares: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let ou_mem = make_ou(&s, &format!("mem{round}"))?;
        let (t_mem, per) =
            rt.block_on(through_engine(&s, n, &ou_mem, &format!("m{round}u"), false))?;
        let ou_dur = make_ou(&s, &format!("dur{round}"))?;
        let (t_dur, per_d) =
            rt.block_on(through_engine(&s, n, &ou_dur, &format!("d{round}u"), true))?;
        // The engine's searches per user: base reads of the new DN and sAMAccountName
        // searches; split them as the provider does (one of each beyond the first read).
        let searches_total = per[0].round() as usize;
        let sam_searches = 1usize.min(searches_total);
        let reads = searches_total - sam_searches;
        let ou_floor = make_ou(&s, &format!("floor{round}"))?;
        let t_floor = rt.block_on(floor(
            &s,
            n,
            &ou_floor,
            &format!("f{round}u"),
            reads,
            sam_searches,
        ))?;
        for (path, t, p) in [
            ("engine(mem)", t_mem, per),
            ("engine(sled)", t_dur, per_d),
            (
                "ldap3",
                t_floor,
                [searches_total as f64, 1.0, 0.0, 0.0, 0.0, 0.0],
            ),
        ] {
            println!(
                "{round}\t{path}\t{n}\t{t:.3}\t{:.0}\t{:.3}\t{:.2}\t{:.2}",
                n as f64 / t,
                t * 1e3 / n as f64,
                p[0],
                p[1]
            );
        }
        shares[0].push((t_mem - t_floor) / t_floor * 100.0);
        shares[1].push((t_dur - t_floor) / t_floor * 100.0);
        best[0] = best[0].min(t_mem);
        best[1] = best[1].min(t_dur);
        best[2] = best[2].min(t_floor);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "median of the rounds' shares: engine(mem) {:+.1}%, engine(sled) {:+.1}% (each round against its own floor)",
        median(&mut shares[0]),
        median(&mut shares[1])
    );
    println!(
        "best: engine(mem) {:.3} s, engine(sled) {:.3} s, ldap3 floor {:.3} s; engine share: mem {:+.1}%, sled {:+.1}%",
        best[0],
        best[1],
        best[2],
        (best[0] - best[2]) / best[2] * 100.0,
        (best[1] - best[2]) / best[2] * 100.0
    );
    Ok(())
}
