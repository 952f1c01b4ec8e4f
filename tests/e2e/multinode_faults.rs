//! PostgreSQL faults and operations (issue 18): the database lost mid-run.

use crate::daemon::OPS;
use crate::multinode::{check, settle, site, submit, TENANTS};
use provisio_test_support::postgres::Postgres;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Polls `/v1/ready` until it answers `status` (at most `within`).
fn ready_becomes(d: &crate::daemon::Daemon, status: u16, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if d.request("GET", "/v1/ready", None, None, &[]).status == status {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The database stopped at once (`pg_ctl stop -m immediate`) while a daemon runs jobs:
/// the daemon stays up and says it is not ready, its runs stop; when the database is back
/// it reconnects, the jobs cut short are taken back and recovered as after a restart, and
/// every job ends exactly once (each one's effect made once, in order per tenant).
#[test]
fn database_lost_mid_run_parks_and_resumes() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.new_schema("dblost");
    let schema = url.rsplit("%3D").next().unwrap().to_string();
    let site = site(&url);
    let d = site.start();
    let mut submitted: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for i in 0..200u64 {
        let tenant = format!("t{}", i as usize % TENANTS);
        submit(&d, &tenant, i / TENANTS as u64);
        submitted
            .entry(tenant)
            .or_default()
            .push(i / TENANTS as u64);
    }
    // Some jobs done, most still to run: the database goes away under running ones.
    let start = Instant::now();
    loop {
        let out = pg.psql(&format!(
            "SELECT count(*) FROM {schema}.provisio_jobs WHERE state = 2"
        ));
        if out.stdout.trim().parse::<u64>().unwrap_or(0) >= 20 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no job finished");
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.stop_immediate();
    assert!(
        ready_becomes(&d, 503, Duration::from_secs(10)),
        "the daemon says it is ready while its database is gone"
    );
    // Still up and answering a while later.
    std::thread::sleep(Duration::from_secs(2));
    let answer = d.request("GET", "/v1/ready", None, None, &[]);
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.body.to_string().contains("PostgreSQL"), "{answer:?}");
    pg.restart();
    assert!(
        ready_becomes(&d, 200, Duration::from_secs(30)),
        "the daemon did not come back with its database:\n{}",
        d.log.lock().unwrap()
    );
    settle(
        &pg,
        &schema,
        Duration::from_secs(120),
        std::slice::from_ref(&d),
    );
    check(&pg, &schema, &site, &submitted);
    let log = d.log.lock().unwrap().clone();
    assert!(log.contains("lost the PostgreSQL store"), "{log}");
    eprintln!(
        "runs stopped by the loss: {}; taken back at reconnection: {}; recovered: {}",
        log.matches("it stops here").count(),
        log.matches("took back the jobs this node ran").count(),
        log.matches("recovered the transaction").count()
    );
    // It serves again: a request waited for commits.
    let a = d.submit(
        OPS,
        "call: Multi Node/Work\ndata: { tenant: t0, n: \"after\" }\n",
        "?wait=30s",
        &[],
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["state"], "succeeded", "{a:?}");
}
