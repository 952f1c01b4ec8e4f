//! The PostgreSQL store through the real binary: a workflow, `tx list`/`tx show` and
//! `store migrate` on a database; a command beside another process; bad URLs, a wrong password, an
//! unreachable database and a newer schema each refused with a clear error that never shows
//! the password. (The crash-and-recover loop on PostgreSQL is in `crash.rs`.)

use crate::util::Sandbox;
use provisio_test_support::postgres::Postgres;

fn schema_of(url: &str) -> String {
    url.rsplit("%3D").next().unwrap().to_string()
}

#[test]
fn a_workflow_runs_and_is_inspected_on_postgres() {
    let Some(sb) = Sandbox::postgres() else {
        return;
    };
    let pg = Postgres::shared().unwrap();
    let url = sb.store.clone().unwrap();
    let migrate = sb.run(&["store", "migrate"]);
    assert_eq!(migrate.code, 0, "{migrate:?}");
    assert!(
        migrate.stdout.contains("applied schema migration 1"),
        "{migrate:?}"
    );
    let again = sb.run(&["store", "migrate"]);
    assert!(again.stdout.contains("up to date"), "{again:?}");
    let run = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(run.code, 0, "{run:?}");
    // The journal is in the database, not in the data folder.
    assert!(!sb.data().join("journal").exists());
    let rows = pg.psql(&format!(
        "SELECT count(*) FROM {}.provisio_kv WHERE space = ascii('t')",
        schema_of(&url)
    ));
    assert_eq!(rows.stdout.trim(), "1", "one transaction summary: {rows:?}");
    let list = sb.run(&["tx", "list"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert!(list.stdout.contains("committed"), "{list:?}");
    let id = list
        .stdout
        .lines()
        .find(|l| l.contains("committed"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let show = sb.run(&["tx", "show", &id]);
    assert_eq!(show.code, 0, "{show:?}");
    assert!(show.stdout.contains("committed"), "{show:?}");
    // The next request sees the first one's effects (the tenant exists, so decommission works).
    let down = sb.run(&["run", "workflows/decommission-tenant.yaml", "--quiet"]);
    assert_eq!(down.code, 0, "{down:?}");
    let list = sb.run(&["tx", "list"]);
    assert_eq!(list.stdout.matches("committed").count(), 2, "{list:?}");
    // The journal keeps a row a record on PostgreSQL (no chunks): `tx log` reads them back
    // in order, once each; `tx audit` lists both; `tx prune` removes every row of both.
    let log = sb.run(&["tx", "log", &id]);
    assert_eq!(log.code, 0, "{log:?}");
    let seqs: Vec<u64> = log
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("a JSON line")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect();
    assert!(seqs.len() > 3, "{log:?}");
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "{log:?}");
    let journal_rows = |what: &str| {
        pg.psql(&format!(
            "SELECT count(*) FROM {}.provisio_kv WHERE space = ascii('j') AND {what}",
            schema_of(&url)
        ))
        .stdout
        .trim()
        .parse::<usize>()
        .expect("a count")
    };
    assert_eq!(
        journal_rows("octet_length(key) = 45 AND substring(key from 37 for 1) = 'C'::bytea"),
        0,
        "no chunk rows"
    );
    assert_eq!(
        journal_rows(&format!(
            "octet_length(key) = 44 AND substring(key from 1 for 36) = '{id}'::bytea"
        )),
        seqs.len(),
        "a row a record"
    );
    let audit = sb.run(&["tx", "audit"]);
    assert_eq!(audit.code, 0, "{audit:?}");
    assert!(audit.stdout.contains(&id), "{audit:?}");
    let pruned = sb.run(&["tx", "prune", "--older-than", "0s"]);
    assert_eq!(pruned.code, 0, "{pruned:?}");
    assert_eq!(journal_rows("true"), 0, "every journal row pruned");
    let list = sb.run(&["tx", "list"]);
    assert!(!list.stdout.contains("committed"), "{list:?}");
    // Neither the output nor the logs ever show the password.
    for r in [&migrate, &run, &list, &show, &down, &log, &audit, &pruned] {
        assert!(
            !r.stdout.contains(&pg.password) && !r.stderr.contains(&pg.password),
            "{r:?}"
        );
    }
    let shown = sb.run(&["config", "show"]);
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(
        shown.stdout.contains("postgres://provisio:***@127.0.0.1"),
        "{shown:?}"
    );
    assert!(!shown.stdout.contains(&pg.password), "{shown:?}");
    let verbose = sb.run(&["-vv", "tx", "list"]);
    assert!(!verbose.stderr.contains(&pg.password), "{verbose:?}");
}

#[test]
fn a_command_runs_while_another_process_has_the_database_open() {
    let Some(sb) = Sandbox::postgres() else {
        return;
    };
    let pg = Postgres::shared().unwrap();
    let url = sb.store.clone().unwrap();
    // Another process (a daemon, say) holds the store open: a node of its own.
    let held =
        provisio_engine::PgStore::open(&url, &provisio_engine::PgOptions::default()).unwrap();
    let r = sb.run(&[
        "--wait-lock",
        "0s",
        "run",
        "workflows/provision-tenant.yaml",
        "--quiet",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    // The command's node row went with it; the other process's stays.
    let nodes = pg.psql(&format!(
        "SELECT node FROM {}.provisio_nodes",
        schema_of(&url)
    ));
    assert_eq!(nodes.stdout.trim(), held.node(), "{nodes:?}");
    drop(held);
}

#[test]
fn bad_store_settings_are_refused_clearly_without_the_password() {
    let Some(pg) = Postgres::shared() else { return };
    let sb = Sandbox::new();
    let port = provisio_test_support::slapd::free_tcp_port();
    let cases: Vec<(String, &str)> = vec![
        (
            "mysql://me:hunter2@localhost/db".into(),
            "neither \"sled\" nor a PostgreSQL URL",
        ),
        (
            "postgres://me:hunter2@localhost:port/db".into(),
            "invalid PostgreSQL store URL",
        ),
        (
            pg.url().replace(&pg.password, "hunter2"),
            "password authentication failed",
        ),
        (
            format!("postgres://me:hunter2@127.0.0.1:{port}/db"),
            "cannot reach the PostgreSQL store",
        ),
    ];
    for (url, says) in cases {
        for how in ["env", "flag"] {
            let r = match how {
                "env" => sb.run_env(
                    &["tx", "list"],
                    &crate::util::repo().join("namespaces"),
                    &[
                        ("PROVISIO_STORE", url.clone()),
                        ("PROVISIO_CONNECT_RETRY", "1s".into()),
                    ],
                ),
                _ => sb.run_env(
                    &["--store", &url, "tx", "list"],
                    &crate::util::repo().join("namespaces"),
                    &[("PROVISIO_CONNECT_RETRY", "1s".into())],
                ),
            };
            assert_eq!(r.code, 2, "{how} {url}: {r:?}");
            assert!(r.stderr.contains(says), "{how} {url}: {r:?}");
            assert!(
                !r.stderr.contains("hunter2") && !r.stdout.contains("hunter2"),
                "{r:?}"
            );
        }
    }
    // In the file: the key and line are named.
    let file = sb.write(
        "bad.toml",
        "data_dir = \"d\"\nstore = \"oracle://x:hunter2@db\"\n",
    );
    let r = sb.run(&["--config", file.to_str().unwrap(), "tx", "list"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("bad.toml:2"), "{r:?}");
    assert!(r.stderr.contains("store"), "{r:?}");
}

#[test]
fn a_newer_schema_refuses_to_start_and_says_why() {
    let Some(sb) = Sandbox::postgres() else {
        return;
    };
    let pg = Postgres::shared().unwrap();
    let url = sb.store.clone().unwrap();
    assert_eq!(sb.run(&["store", "migrate"]).code, 0);
    let out = pg.psql(&format!(
        "INSERT INTO {}.provisio_schema (version, description, applied_by) VALUES (1000, 'later', 'provisio 9.0.0')",
        schema_of(&url)
    ));
    assert_eq!(out.code, 0, "{out:?}");
    for args in [
        vec!["store", "migrate"],
        vec!["run", "workflows/provision-tenant.yaml", "--quiet"],
    ] {
        let r = sb.run(&args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("schema version 1000 (provisio 9.0.0)"),
            "{r:?}"
        );
        assert!(r.stderr.contains("refusing to start"), "{r:?}");
    }
    // Nothing ran.
    assert!(!sb.data().join("files/tenants/contoso").exists());
}

/// `site`'s provisio.toml with `store = url` added.
fn on_postgres(site: &crate::daemon::Site, url: &str) {
    let path = site.path("provisio.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("store = \"{url}\"\n{text}")).unwrap();
}

/// The daemon on PostgreSQL, killed with SIGKILL while a job's transaction runs: the
/// restarted daemon recovers the transaction from the database (resumes it to its commit)
/// and settles the job with it, without running it twice.
#[test]
fn a_daemon_killed_mid_run_recovers_its_job_from_postgres() {
    use crate::daemon::{python, Site, ALICE};
    use std::time::Duration;
    let Some(pg) = Postgres::shared() else { return };
    if !python() {
        return;
    }
    let url = pg.new_schema("daemon_kill");
    let site = Site::new(600);
    on_postgres(&site, &url);
    std::fs::write(site.path("ns/resume.yaml"), crate::daemon_queue::RESUME).unwrap();
    let mut d = site.start();
    let a = d.submit(
        ALICE,
        "call: Resume/Open\ndata: { customer: rae }\n",
        "",
        &[],
    );
    assert_eq!(a.status, 202, "{a:?}");
    let id = a.body["id"].as_str().unwrap().to_string();
    d.running_step(&id);
    d.signal("-KILL");
    assert_eq!(
        d.exit(Duration::from_secs(10)),
        None,
        "killed by the signal"
    );
    drop(d);
    // Nothing of the journal is in the data folder: it is all in the database.
    assert!(!site.path("data/journal").exists());
    let site = site.configure(0);
    on_postgres(&site, &url);
    let d = site.start();
    let done = d.final_state(&id);
    assert_eq!(done["state"], "succeeded", "{done}");
    let txns = done["transactions"].as_array().unwrap();
    assert_eq!(txns.len(), 1, "resumed, not run again: {done}");
    assert_eq!(done["response"]["status"], "committed", "{done}");
    assert_eq!(site.accounts(), vec![("rae".to_string(), 1501)]);
    assert!(!d.log.lock().unwrap().contains(&pg.password));
}

#[test]
fn read_only_commands_create_no_tables_and_say_how_to() {
    let Some(sb) = Sandbox::postgres() else {
        return;
    };
    let pg = Postgres::shared().unwrap();
    let url = sb.store.clone().unwrap();
    let tables = || {
        pg.psql(&format!(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = '{}'",
            schema_of(&url)
        ))
        .stdout
        .trim()
        .to_string()
    };
    assert_eq!(tables(), "0");
    for args in [
        &["tx", "list"][..],
        &["tx", "show", "0190aaaa-0000-7000-8000-000000000000"],
        &["tx", "audit"],
    ] {
        let r = sb.run(args);
        assert_ne!(r.code, 0, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("holds no Provisio schema"),
            "{args:?}: {r:?}"
        );
        assert!(
            r.stderr.contains("provisio store migrate"),
            "{args:?}: {r:?}"
        );
        assert!(!r.stderr.contains(&pg.password), "{r:?}");
        assert_eq!(tables(), "0", "{args:?} created tables");
    }
    let migrate = sb.run(&["store", "migrate"]);
    assert_eq!(migrate.code, 0, "{migrate:?}");
    let list = sb.run(&["tx", "list"]);
    assert_eq!(list.code, 0, "{list:?}");
}
