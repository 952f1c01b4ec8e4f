//! PostgreSQL faults and operations (issue 18): the database lost mid-run.

use crate::daemon::OPS;
use crate::multinode::{check, settle, site, submit, TENANTS};
use provisio_test_support::postgres::Postgres;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Polls `/v1/ready` until it answers `status` (at most `within`).
/// A daemon site whose ledger calls take `call_ms`, on a fresh schema `schema` of the shared
/// PostgreSQL server; `None` (the test skips) without Python for the ledger or a server.
fn site_on_postgres(schema: &str, call_ms: u64) -> Option<crate::daemon::Site> {
    if !crate::daemon::python() {
        return None;
    }
    let pg = Postgres::shared()?;
    let url = pg.new_schema(schema);
    let site = crate::daemon::Site::new(call_ms);
    let config = std::fs::read_to_string(site.path("provisio.toml")).unwrap();
    std::fs::write(
        site.path("provisio.toml"),
        format!("store = \"{url}\"\n{config}"),
    )
    .unwrap();
    Some(site)
}

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

/// A client of one daemon follows a job another daemon runs: its progress events and its
/// end come by NOTIFY, the end within milliseconds of the finish (no polling).
#[test]
fn events_of_a_job_another_daemon_runs_reach_the_client() {
    use crate::daemon::{customer, ALICE};
    use std::io::Read as _;
    // Each ledger call takes 4 s: the job still runs when the second daemon is up.
    let Some(site) = site_on_postgres("remote_events", 4000) else {
        return;
    };
    let runner = site.start();
    let a = runner.submit(ALICE, &customer("ann"), "", &[]);
    assert_eq!(a.status, 202, "{a:?}");
    let id = a.body["id"].as_str().unwrap().to_string();
    // Running on the first daemon before the second one starts: the second never runs it.
    runner.running_step(&id);
    let follower = site.start();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut text = String::new();
    agent
        .get(&format!("{}/v1/requests/{id}/events", follower.url))
        .header("Authorization", &format!("Bearer {ALICE}"))
        .call()
        .expect("events")
        .body_mut()
        .as_reader()
        .read_to_string(&mut text)
        .expect("read events");
    let ended_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(text.contains("event: step_started"), "{text}");
    assert!(text.contains("event: step_finished"), "{text}");
    assert!(text.contains("event: finished"), "{text}");
    assert!(text.contains("\"outcome\":\"committed\""), "{text}");
    let job = follower.status(ALICE, &id);
    let finished_ms = job.body["finished_ms"].as_u64().unwrap();
    assert!(
        ended_ms.saturating_sub(finished_ms) < 500,
        "the end reached the other daemon {} ms after the finish",
        ended_ms.saturating_sub(finished_ms)
    );
    // The runner's log names the job's run; the follower's does not.
    assert!(
        !follower
            .log
            .lock()
            .unwrap()
            .contains(&format!("job{{job.id={id}")),
        "the follower ran the job"
    );
}

/// A `provisio run` (no daemon) whose PostgreSQL goes away mid-run stops as the daemon's
/// runs do: at once, exit 4, saying that the transaction stopped unfinished and to run
/// `provisio recover` once the database is back; nothing of it is undone in the process
/// (its journal writes could not be acknowledged). Once the database is back, `provisio
/// recover` rolls it back: the account its first step opened is gone.
#[test]
fn a_cli_run_whose_database_is_lost_stops_and_is_left_for_recover() {
    use crate::daemon::{customer, Site};
    if !crate::daemon::python() {
        return;
    }
    let Some(pg) = Postgres::start() else { return };
    let url = pg.new_schema("cli_lost");
    // Each ledger call takes 1.5 s: the run is in its second step when the database goes.
    let site = Site::new(1500);
    let config = std::fs::read_to_string(site.path("provisio.toml")).unwrap();
    std::fs::write(
        site.path("provisio.toml"),
        format!("store = \"{url}\"\n{config}"),
    )
    .unwrap();
    std::fs::write(site.path("ann.yaml"), customer("ann")).unwrap();
    let mut run = site
        .command(&["run", "ann.yaml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !site.accounts().iter().any(|(name, _)| name == "ann") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the first step never ran"
        );
        assert!(run.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.stop_immediate();
    let lost = Instant::now();
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(
            lost.elapsed() < Duration::from_secs(20),
            "the run goes on without its database"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let stopped_in = lost.elapsed();
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("was lost while transaction"), "{stderr}");
    assert!(stderr.contains("provisio recover"), "{stderr}");
    let txn = stderr
        .split("was lost while transaction ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    // Nothing was undone in the stopped process.
    assert!(
        site.accounts().iter().any(|(name, _)| name == "ann"),
        "{:?}",
        site.accounts()
    );
    eprintln!("the run stopped {stopped_in:?} after the database was lost:\n{stderr}");
    pg.restart();
    let (code, stdout, stderr) = site.run(&["recover"], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        !site.accounts().iter().any(|(name, _)| name == "ann"),
        "recovery undid the first step: {:?}",
        site.accounts()
    );
    let (code, stdout, stderr) = site.run(&["tx", "show", &txn], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("rolled_back") || stdout.contains("rolled back"),
        "{stdout}"
    );
}

/// A waiting submission (`?wait=`) whose job is queued and claimed as the database is lost
/// (the failpoint `PROVISIO_FAIL_CLAIM_LOST=1` breaks the node's session right after the
/// claim commits) is not answered with an error while its job is queued (a client resending
/// would run it twice): once the database is back the job is taken back and run, and the
/// client gets its end as for any waiting submission. One job, run once.
#[test]
fn a_waiting_submission_whose_claim_crosses_a_loss_gets_its_job() {
    let Some(pg) = Postgres::shared() else { return };
    let url = pg.new_schema("claim_lost");
    let schema = url.rsplit("%3D").next().unwrap().to_string();
    let site = site(&url);
    let d = site.start_with(&[("PROVISIO_FAIL_CLAIM_LOST", "1")]);
    let a = d.submit(
        OPS,
        "call: Multi Node/Work\ndata: { tenant: t0, n: \"1\" }\n",
        "?wait=30s",
        &[],
    );
    let log = d.log.lock().unwrap().clone();
    assert_eq!(a.status, 200, "{a:?}\n{log}");
    assert_eq!(a.body["state"], "succeeded", "{a:?}");
    assert!(log.contains("PROVISIO_FAIL_CLAIM_LOST"), "{log}");
    assert!(
        log.contains("as a waiting client's job was claimed"),
        "{log}"
    );
    let out = pg.psql(&format!(
        "SELECT count(*), min(state) FROM {schema}.provisio_jobs"
    ));
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "1|2", "one job, succeeded: {out:?}");
    assert!(site.path("data/files/done/t0/1").is_dir());
}

/// A cancel posted to one daemon of a job another daemon runs (several daemons on one
/// PostgreSQL): the runner hears of it at once (`NOTIFY provisio_cancel`, else at its next
/// heartbeat, which reads the job's cancel flag), starts no further step and rolls back;
/// the job ends `cancelled` within seconds, its first step undone.
#[test]
fn a_cancel_posted_to_another_daemon_stops_the_run() {
    use crate::daemon::{customer, ALICE};
    // Each ledger call takes 1.5 s: three steps, 4.5 s to commit.
    let Some(site) = site_on_postgres("remote_cancel", 1500) else {
        return;
    };
    // Its log says how the cancel reached it.
    let runner = site.start_with(&[("RUST_LOG", "provisio=info,provisio_engine=warn")]);
    let a = runner.submit(ALICE, &customer("cal"), "", &[]);
    assert_eq!(a.status, 202, "{a:?}");
    let id = a.body["id"].as_str().unwrap().to_string();
    // Running on the first daemon before the second one starts: the second never runs it.
    runner.running_step(&id);
    let other = site.start();
    let cancelled_at = Instant::now();
    let c = other.request(
        "POST",
        &format!("/v1/requests/{id}/cancel"),
        Some(ALICE),
        None,
        &[],
    );
    assert_eq!(c.status, 202, "{c:?}");
    let done = other.final_state(&id);
    let took = cancelled_at.elapsed();
    let log = runner.log.lock().unwrap().clone();
    assert_eq!(done["state"], "cancelled", "{done}\n{log}");
    assert_eq!(done["outcome"], "rolled_back", "{done}");
    // The step under way ends (1.5 s), its undo runs (1.5 s); no further step starts.
    assert!(took < Duration::from_secs(8), "cancelled in {took:?}");
    assert!(site.accounts().is_empty(), "{:?}", site.accounts());
    assert!(
        log.contains("a cancel made through another daemon stops this job"),
        "{log}"
    );
    assert!(
        !other
            .log
            .lock()
            .unwrap()
            .contains(&format!("job{{job.id={id}")),
        "the other daemon ran the job"
    );
    eprintln!("a cancel through another daemon ended the run in {took:?}");
}

/// Spawns `provisio ARGS` in `site` with `env`, its stderr gathered into the returned text.
fn spawn_logged(
    site: &crate::daemon::Site,
    args: &[&str],
    env: &[(&str, &str)],
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    use std::io::BufRead as _;
    let mut child = site
        .command(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    (child, log)
}

/// Waits until `log` holds `what` (at most 30 s).
fn log_shows(log: &std::sync::Mutex<String>, what: &str) {
    let start = Instant::now();
    while !log.lock().unwrap().contains(what) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never logged {what:?}:\n{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit (at most `within`): its exit code.
fn exit_of(
    child: &mut std::process::Child,
    within: Duration,
    log: &std::sync::Mutex<String>,
) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("still running after {within:?}:\n{}", log.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The database lost while `provisio run` and `provisio serve` start (a failpoint pauses
/// them before recovery; the server is stopped meanwhile): back within
/// `journal.connect_retry`, start-up is tried again and the run commits; away longer, they
/// stop with the error an unreachable database at open gives (exit 2), instead of parking
/// for ever.
#[test]
fn a_database_lost_during_start_up_is_waited_for_then_given_up_on() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.new_schema("startup_lost");
    let site = site(&url);
    std::fs::write(
        site.path("work.yaml"),
        "call: Multi Node/Work\ndata: { tenant: t0, n: \"1\" }\n",
    )
    .unwrap();
    let paused = "PROVISIO_FAIL_PAUSE_STARTUP_MS";
    // Back in time: the run goes on and commits.
    let (mut run, log) = spawn_logged(
        &site,
        &["run", "work.yaml"],
        &[(paused, "1500"), ("PROVISIO_CONNECT_RETRY", "30s")],
    );
    log_shows(&log, paused);
    pg.stop_immediate();
    log_shows(&log, "trying again once it is back");
    pg.restart();
    let code = exit_of(&mut run, Duration::from_secs(60), &log);
    assert_eq!(code, Some(0), "{}", log.lock().unwrap());
    assert!(site.path("data/files/done/t0/1").is_dir());
    // Away for longer than `journal.connect_retry`: exit 2, saying why.
    std::fs::write(
        site.path("work.yaml"),
        "call: Multi Node/Work\ndata: { tenant: t0, n: \"2\" }\n",
    )
    .unwrap();
    let (mut run, log) = spawn_logged(
        &site,
        &["run", "work.yaml"],
        &[(paused, "1000"), ("PROVISIO_CONNECT_RETRY", "2s")],
    );
    log_shows(&log, paused);
    pg.stop_immediate();
    let code = exit_of(&mut run, Duration::from_secs(20), &log);
    let text = log.lock().unwrap().clone();
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("cannot reach the PostgreSQL store")
            && text.contains("was lost during recovery at start")
            && text.contains("PROVISIO_CONNECT_RETRY"),
        "{text}"
    );
    assert!(!text.contains(&pg.password), "{text}");
    assert!(!site.path("data/files/done/t0/2").exists());
    // The daemon likewise.
    pg.restart();
    let (mut serve, log) = spawn_logged(
        &site,
        &["serve", "--listen", "127.0.0.1:0"],
        &[(paused, "1000"), ("PROVISIO_CONNECT_RETRY", "2s")],
    );
    log_shows(&log, paused);
    pg.stop_immediate();
    let code = exit_of(&mut serve, Duration::from_secs(20), &log);
    let text = log.lock().unwrap().clone();
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("was lost during recovery at start") && !text.contains("listening on"),
        "{text}"
    );
}
