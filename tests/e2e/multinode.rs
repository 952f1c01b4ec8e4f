//! Several `provisio serve` processes on one PostgreSQL database (issue 18): three daemons
//! share the queue; 1,000 jobs spread over them with a daemon killed (SIGKILL) mid-run,
//! then rounds that each kill a random daemon at a random moment. Every job must end
//! exactly once, none lost, none run twice at once, each tenant's jobs in order.
//!
//! The work is the filesystem provider's: a job of tenant T creates `active/T` (its first
//! step: it fails if another run of T is in flight, on any node), then `done/T/N` (its
//! effect: it fails if the job already committed once), then deletes `active/T`.

use crate::daemon::{sha, Daemon, Site, OPS};
use provisio_test_support::postgres::Postgres;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const NAMESPACE: &str = r#"
namespace: Multi Node
procedures:
  Work:
    access: public
    parallel: false
    inputs:
      tenant: { type: string, required: true }
      n: { type: string, required: true }
    steps:
      enter:
        call: Filesystem Provider/CreateFolder
        with: { path: "active/{{ data.tenant }}" }
      work:
        call: Filesystem Provider/CreateFolder
        with: { path: "done/{{ data.tenant }}/{{ data.n }}" }
      leave:
        call: Filesystem Provider/DeleteFolder
        with: { path: "active/{{ data.tenant }}" }
"#;

pub(crate) const TENANTS: usize = 20;

/// A site whose daemons share `url` and one data folder (the seal key, the files root).
pub(crate) fn site(url: &str) -> Site {
    let site = Site::bare();
    std::fs::create_dir_all(site.path("ns")).unwrap();
    std::fs::write(site.path("ns/multi.yaml"), NAMESPACE).unwrap();
    let config = format!(
        r#"data_dir = "data"
namespaces = "ns"
store = "{url}"

[serve]
workers = 4
lease = "2s"
shutdown_timeout = "5s"
retry_initial = "50ms"
max_attempts = 50

[[serve.tokens]]
subject = "ops"
sha256 = "{}"
trusted = true
operator = true
"#,
        sha(OPS)
    );
    std::fs::write(site.path("provisio.toml"), config).unwrap();
    std::fs::create_dir_all(site.path("data/files/active")).unwrap();
    for t in 0..TENANTS {
        std::fs::create_dir_all(site.path(&format!("data/files/done/t{t}"))).unwrap();
    }
    site
}

/// A small deterministic generator (the seed is printed, to replay a failure).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// A job as the database holds it.
struct Row {
    state: i64,
    tenant: String,
    error: String,
}

fn jobs(pg: &Postgres, schema: &str) -> Vec<Row> {
    let out = pg.psql(&format!(
        "SELECT state, serial_key, replace(coalesce(convert_from(body, 'UTF8')::json->>'error', ''), E'\\n', ' ') \
         FROM {schema}.provisio_jobs ORDER BY seq"
    ));
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            Row {
                state: f[0].parse().unwrap(),
                tenant: f[1].to_string(),
                error: f[2..].join("|"),
            }
        })
        .collect()
}

/// Waits until no job is queued, running or held (every job final), at most `within`.
pub(crate) fn settle(pg: &Postgres, schema: &str, within: Duration, daemons: &[Daemon]) {
    let start = Instant::now();
    loop {
        let out = pg.psql(&format!(
            "SELECT count(*) FROM {schema}.provisio_jobs WHERE state IN (0, 1, 6)"
        ));
        assert_eq!(out.code, 0, "{out:?}");
        if out.stdout.trim() == "0" {
            return;
        }
        if start.elapsed() > within {
            let logs: Vec<String> = daemons
                .iter()
                .map(|d| d.log.lock().unwrap().clone())
                .collect();
            panic!(
                "{} jobs still unfinished after {within:?}\n{}",
                out.stdout.trim(),
                logs.join("\n-----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Submits job N of `tenant` to `d` (in the tenant's line).
pub(crate) fn submit(d: &Daemon, tenant: &str, n: u64) {
    let yaml = format!("call: Multi Node/Work\ndata: {{ tenant: {tenant}, n: \"{n}\" }}\n");
    let a = d.submit(OPS, &yaml, "", &[("X-Serialization-Key", tenant)]);
    assert_eq!(a.status, 202, "{a:?}");
}

/// The jobs submitted so far: each tenant's numbers, in submission order.
struct Load {
    submitted: BTreeMap<String, Vec<u64>>,
    next_n: [u64; TENANTS],
}

impl Load {
    /// Submits the next job of a random tenant to daemon `i` (of those running).
    fn submit_one(&mut self, daemons: &[Daemon], i: usize, rng: &mut Lcg) {
        let t = rng.next(TENANTS as u64) as usize;
        let tenant = format!("t{t}");
        let n = self.next_n[t];
        self.next_n[t] += 1;
        submit(&daemons[i % daemons.len()], &tenant, n);
        self.submitted.entry(tenant).or_default().push(n);
    }
}

/// Every job ended exactly once, in order per tenant, never two runs of a tenant at once.
pub(crate) fn check(
    pg: &Postgres,
    schema: &str,
    site: &Site,
    submitted: &BTreeMap<String, Vec<u64>>,
) {
    let rows = jobs(pg, schema);
    let total: usize = submitted.values().map(Vec::len).sum();
    assert_eq!(
        rows.len(),
        total,
        "every submitted job is in the queue, once"
    );
    let mut by_tenant: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in &rows {
        // Succeeded: committed exactly once (a second commit would fail at `done/T/N`).
        assert_eq!(r.state, 2, "a job did not succeed: {}", r.error);
        assert!(
            !r.error.contains("already exists"),
            "two runs overlapped: {}",
            r.error
        );
        by_tenant.entry(r.tenant.clone()).or_default().push(r);
    }
    for (tenant, ns) in submitted {
        let done = site.path(&format!("data/files/done/{tenant}"));
        let mut made: Vec<(std::time::SystemTime, u64)> = std::fs::read_dir(&done)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let n: u64 = e.file_name().to_string_lossy().parse().unwrap();
                (e.metadata().unwrap().modified().unwrap(), n)
            })
            .collect();
        assert_eq!(made.len(), ns.len(), "{tenant}: one effect per job");
        // The effects happened in submission order.
        made.sort();
        let order: Vec<u64> = made.iter().map(|(_, n)| *n).collect();
        assert_eq!(&order, ns, "{tenant}: effects out of order");
        // (One at a time: the `active/T` marker of the first step; the queue's own start
        // and finish times are read from each node's clock before its database
        // transaction, so they prove nothing at millisecond resolution.)
        assert_eq!(
            by_tenant[tenant].len(),
            ns.len(),
            "{tenant}: one job per submission"
        );
    }
    // No run left its marker: every run that entered either left or was undone.
    let active: Vec<_> = std::fs::read_dir(site.path("data/files/active"))
        .unwrap()
        .collect();
    assert!(active.is_empty(), "a tenant is still marked active");
    // No transaction failed for finding another run in flight.
    let overlaps = pg.psql(&format!(
        "SELECT count(*) FROM {schema}.provisio_kv WHERE space = 116 \
         AND position('already exists' in convert_from(value, 'UTF8')) > 0"
    ));
    assert_eq!(overlaps.stdout.trim(), "0", "{overlaps:?}");
}

#[test]
fn three_daemons_share_one_postgresql_and_survive_kills() {
    let Some(pg) = Postgres::shared() else { return };
    let url = pg.new_schema("multinode");
    let schema = url.rsplit("%3D").next().unwrap().to_string();
    let site = site(&url);
    // One at a time: the first makes the seal key the others then read.
    let mut daemons: Vec<Daemon> = Vec::new();
    for _ in 0..3 {
        daemons.push(site.start());
    }
    let nodes = pg.psql(&format!("SELECT count(*) FROM {schema}.provisio_nodes"));
    assert_eq!(nodes.stdout.trim(), "3", "{nodes:?}");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("multinode seed {seed}");
    let mut rng = Lcg(seed);
    let mut load = Load {
        submitted: BTreeMap::new(),
        next_n: [0; TENANTS],
    };
    // 1,000 jobs spread over the three; the second daemon killed a third of the way in
    // and started again.
    let started = Instant::now();
    for i in 0..1000 {
        if i == 333 {
            daemons[1].signal("-KILL");
            assert_eq!(daemons[1].exit(Duration::from_secs(10)), None);
            daemons[1] = site.start();
        }
        load.submit_one(&daemons, i, &mut rng);
    }
    settle(pg, &schema, Duration::from_secs(240), &daemons);
    eprintln!(
        "1,000 jobs over three daemons, one killed: {:?}",
        started.elapsed()
    );
    check(pg, &schema, &site, &load.submitted);
    // Rounds: a few jobs, a random daemon killed at a random moment, started again.
    for round in 0..20 {
        let round_start = Instant::now();
        for i in 0..30 {
            load.submit_one(&daemons, i + round, &mut rng);
        }
        std::thread::sleep(Duration::from_millis(rng.next(400)));
        let victim = rng.next(3) as usize;
        daemons[victim].signal("-KILL");
        assert_eq!(daemons[victim].exit(Duration::from_secs(10)), None);
        daemons[victim] = site.start();
        settle(pg, &schema, Duration::from_secs(60), &daemons);
        eprintln!(
            "round {round}: killed daemon {victim}, settled in {:?}",
            round_start.elapsed()
        );
    }
    check(pg, &schema, &site, &load.submitted);
}
