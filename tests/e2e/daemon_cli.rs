//! The command line on a data directory a daemon holds: `run`, `tx` and `recover` go
//! through the daemon and answer as they do in-process; driver scripts with `--server`.

use crate::daemon::{customer, python, Site, ALICE, OPS};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// `text` with every transaction id (a UUID) written `TXN`, for comparing two runs.
fn without_ids(text: &str) -> String {
    let is_uuid = |w: &[u8]| {
        w.iter().enumerate().all(|(j, c)| {
            if [8, 13, 18, 23].contains(&j) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
    };
    let b = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if i + 36 <= b.len() && is_uuid(&b[i..i + 36]) {
            out.push_str("TXN");
            i += 36;
            continue;
        }
        let ch = text[i..].chars().next().expect("a character");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[test]
fn run_tx_and_recover_on_a_held_data_directory_go_through_the_daemon() {
    if !python() {
        return;
    }
    let site = Site::new(0);
    for name in ["ann", "bob", "cat", "dan"] {
        std::fs::write(site.path(&format!("{name}.yaml")), customer(name)).unwrap();
    }
    // In-process first: the answers to compare with.
    let (code, local_yaml, err) = site.run(&["run", "ann.yaml"], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, local_xml, err) = site.run(&["run", "cat.yaml", "--output", "xml"], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, local_failed, _) = site.run(&["run", "ann.yaml", "--output", "json"], &[]);
    assert_eq!(code, 1, "an account that exists: rolled back");

    let mut d = site.start();
    let alice = [("PROVISIO_TOKEN", ALICE)];
    let (code, out, err) = site.run(&["run", "bob.yaml"], &alice);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("goes through it"), "{err}");
    assert!(err.contains(&d.url), "{err}");
    assert_eq!(
        without_ids(&out).replace("bob", "ann"),
        without_ids(&local_yaml),
        "the same response as in-process"
    );
    let (code, out, err) = site.run(&["run", "dan.yaml", "--output", "xml"], &alice);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        without_ids(&out).replace("dan", "cat"),
        without_ids(&local_xml)
    );
    // A failure: the same exit code and error response.
    let (code, out, err) = site.run(&["run", "bob.yaml", "--output", "json"], &alice);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("failed at step open"), "{err}");
    assert_eq!(
        without_ids(&out).replace("bob", "ann"),
        without_ids(&local_failed)
    );
    // A bad request is refused before it is sent, naming its file.
    std::fs::write(
        site.path("bad.yaml"),
        "call: Billing/OpenCustomer\ndata: [\n",
    )
    .unwrap();
    let (code, _, err) = site.run(&["run", "bad.yaml"], &alice);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.yaml"), "{err}");
    assert_eq!(
        site.accounts(),
        vec![
            ("ann".to_string(), 1501),
            ("bob".to_string(), 1501),
            ("cat".to_string(), 1501),
            ("dan".to_string(), 1501)
        ]
    );

    // `tx` through the daemon, with an operator token from a file.
    std::fs::write(site.path("ops.token"), format!("{OPS}\n")).unwrap();
    let ops = [("PROVISIO_TOKEN_FILE", "ops.token")];
    let (code, list, err) = site.run(&["tx", "list"], &ops);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("goes through it"), "{err}");
    assert_eq!(list.lines().count(), 6, "{list}");
    // alice sees only what she asked for.
    let (code, mine, err) = site.run(&["tx", "list"], &alice);
    assert_eq!(code, 0, "{err}");
    assert_eq!(mine.lines().count(), 3, "{mine}");
    assert!(mine.lines().all(|l| l.contains(" alice ")), "{mine}");
    let bob_txn = mine
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .expect("a transaction id")
        .to_string();
    let (code, show, err) = site.run(&["tx", "show", &bob_txn[..30]], &alice);
    assert_eq!(code, 0, "{err}");
    assert!(show.contains("who:     alice"), "{show}");
    assert!(show.contains("welcomeBonus"), "{show}");
    let (code, log, _) = site.run(&["tx", "log", &bob_txn], &ops);
    assert_eq!(code, 0);
    let first: Value = serde_json::from_str(log.lines().next().expect("a record")).unwrap();
    assert_eq!(first["seq"], 0, "{log}");
    let (code, audit, err) = site.run(&["tx", "audit"], &ops);
    assert_eq!(code, 0, "{err}");
    assert_eq!(audit.lines().count(), 6, "{audit}");
    let (code, _, err) = site.run(&["tx", "audit"], &alice);
    assert_eq!(code, 2, "an operator's: {err}");
    assert!(err.contains("operator_only"), "{err}");
    // `tx prune` is an operator's; a dry run says what would go, and removes nothing.
    let (code, _, err) = site.run(&["tx", "prune", "--keep", "4"], &alice);
    assert_eq!(code, 2, "an operator's: {err}");
    assert!(err.contains("operator_only"), "{err}");
    let (code, out, err) = site.run(&["tx", "prune", "--keep", "4", "--dry-run"], &ops);
    assert_eq!(code, 0, "{err}");
    let each = out
        .lines()
        .filter(|l| l.starts_with("would remove ") && !l.contains("transaction(s)"));
    assert_eq!(each.count(), 2, "{out}");
    assert!(
        out.contains("would remove 2 transaction(s) and 0 audit entries (kept: transactions finished within 30days, at most 4"),
        "{out}"
    );
    // `recover`: the daemon recovered at its start.
    let (code, out, _) = site.run(&["recover"], &ops);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to recover by hand"), "{out}");

    // Stopped, the same commands read the journal themselves, and print the same.
    d.signal("-TERM");
    assert_eq!(d.exit(Duration::from_secs(20)), Some(0));
    let (code, local_list, _) = site.run(&["tx", "list"], &[]);
    assert_eq!(code, 0);
    assert_eq!(list, local_list);
    let (code, local_show, _) = site.run(&["tx", "show", &bob_txn], &[]);
    assert_eq!(code, 0);
    assert_eq!(show, local_show);
    let (code, local_log, _) = site.run(&["tx", "log", &bob_txn], &[]);
    assert_eq!(code, 0);
    assert_eq!(log, local_log);
    let (code, local_audit, _) = site.run(&["tx", "audit"], &[]);
    assert_eq!(code, 0);
    assert_eq!(audit, local_audit);

    // Started again, `tx prune` goes through it, and prints what it does stopped.
    let d = site.start();
    let (code, out, err) = site.run(&["tx", "prune", "--keep", "5"], &ops);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("goes through it"), "{err}");
    let oldest = list.lines().last().expect("a transaction");
    assert_eq!(
        out.lines().next(),
        Some(format!("removed {oldest}").as_str()),
        "{out}"
    );
    assert!(out.contains("removed 1 transaction(s)"), "{out}");
    let (code, after, _) = site.run(&["tx", "list"], &ops);
    assert_eq!(code, 0);
    assert_eq!(after.lines().count(), 5, "{after}");
    drop(d);
}

#[test]
fn a_driver_script_submits_to_a_daemon_with_server() {
    if !python() {
        return;
    }
    let site = Site::new(0);
    std::fs::write(
        site.path("open.rhai"),
        r#"
let ok = submit("Billing/OpenCustomer", #{ customer: "sam" });
let hidden = submit("Billing/Internal", #{});
let again = submit(#{ "call": "Billing/OpenCustomer", data: #{ customer: "sam" } });
#{ ok: ok.status, hidden: hidden.status, why: hidden.error.description, again: again.status }
"#,
    )
    .unwrap();
    let d = site.start();
    let (code, out, err) = site.run(
        &["script", "open.rhai", "--server", &d.url],
        &[("PROVISIO_TOKEN", ALICE)],
    );
    assert_eq!(code, 1, "one was refused and one rolled back: {out}\n{err}");
    let v: Value = serde_json::from_str(&out).expect("the script's result");
    assert_eq!(v["ok"], "committed", "{v}");
    assert_eq!(v["hidden"], "rejected", "{v}");
    assert!(
        v["why"].as_str().unwrap_or_default().contains("private"),
        "{v}"
    );
    assert_eq!(v["again"], "rolled_back", "{v}");
    assert!(
        err.contains("3 request(s) submitted, 2 not committed"),
        "{err}"
    );
    assert_eq!(site.accounts(), vec![("sam".to_string(), 1501)]);
    // They ran on the daemon, as alice.
    let (code, list, err) = site.run(&["tx", "list"], &[("PROVISIO_TOKEN", ALICE)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(list.lines().count(), 2, "{list}");
    // Without a token: the daemon's refusal says how to give one, and the script stops.
    let (code, _, err) = site.run(&["script", "open.rhai", "--server", &d.url], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no token was given"), "{err}");
}

#[test]
fn the_schemas_are_printed_written_and_served() {
    if !python() {
        return;
    }
    let site = Site::new(0);
    let (code, printed, err) = site.run(&["schema", "namespace"], &[]);
    assert_eq!(code, 0, "{err}");
    let namespace: Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(
        namespace["$schema"],
        "http://json-schema.org/draft-07/schema#"
    );
    assert!(printed.contains("\"saveDataForRollback\""), "{printed}");
    let (code, _, err) = site.run(&["schema", "request", "--out", "request.schema.json"], &[]);
    assert_eq!(code, 0, "{err}");
    let request: Value = serde_json::from_str(
        &std::fs::read_to_string(site.path("request.schema.json")).expect("written"),
    )
    .expect("JSON");
    assert!(request["properties"]["globalData"].is_object(), "{request}");
    let (code, _, err) = site.run(&["schema", "procedure"], &[]);
    assert_eq!(code, 2, "{err}");
    // The daemon serves the same documents, without a token.
    let d = site.start();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for (kind, expected) in [("namespace", &namespace), ("request", &request)] {
        let mut r = agent
            .get(&format!("{}/v1/schema/{kind}", d.url))
            .call()
            .expect("http");
        assert_eq!(r.status().as_u16(), 200);
        let served: Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).expect("JSON");
        assert_eq!(&served, expected, "{kind}");
    }
    let r = agent
        .get(&format!("{}/v1/schema/procedure", d.url))
        .call()
        .expect("http");
    assert_eq!(r.status().as_u16(), 404);
}

#[test]
fn batches_go_through_the_daemon_and_jobs_watch_follows_the_changes() {
    use std::io::BufRead;
    if !python() {
        return;
    }
    let site = Site::new(0);
    let batch = |a: &str, b: &str| {
        format!("call: Billing/OpenCustomer\nbatch:\n  - data: {{ customer: {a} }}\n  - data: {{ customer: {b} }}\n")
    };
    std::fs::write(site.path("ann.yaml"), batch("ann", "ann")).unwrap();
    std::fs::write(site.path("bob.yaml"), batch("bob", "bob")).unwrap();
    std::fs::write(site.path("two.yaml"), batch("eve", "fay")).unwrap();
    // In-process: the second item fails (the account exists), exit 1.
    let (code, local, err) = site.run(&["run", "ann.yaml", "--output", "json"], &[]);
    assert_eq!(code, 1, "{err}");
    let d = site.start();
    let alice = [("PROVISIO_TOKEN", ALICE)];
    let mut watch = site
        .command(&["jobs", "--watch", "--interval", "100ms"])
        .env("PROVISIO_SERVER", &d.url)
        .env("PROVISIO_TOKEN", ALICE)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("jobs --watch");
    // Through the daemon the items run in parallel; one of them fails all the same.
    let (code, out, err) = site.run(&["run", "bob.yaml", "--output", "json"], &alice);
    assert_eq!(code, 1, "{out}\n{err}");
    let normal = |text: &str| {
        let mut v: Value = serde_json::from_str(&without_ids(text)).expect("JSON");
        // Which of the two same items failed is a race on the daemon: compare as a set.
        if let Some(items) = v["batch"].as_array_mut() {
            for i in items.iter_mut() {
                i.as_object_mut().unwrap().remove("item");
            }
            items.sort_by_key(|i| i["status"].to_string());
        }
        v
    };
    assert_eq!(
        normal(&out.replace("bob", "ann")),
        normal(&local),
        "{out}\n{local}"
    );
    // `submit --wait` of a batch: every item, the worst exit code.
    let env = [
        ("PROVISIO_SERVER", d.url.as_str()),
        ("PROVISIO_TOKEN", ALICE),
    ];
    let (code, out, err) = site.run(&["submit", "two.yaml", "--wait"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    let items = v["batch"].as_array().expect("a batch");
    assert_eq!(items.len(), 2, "{v}");
    assert!(items.iter().all(|i| i["outcome"] == "committed"), "{v}");
    let last = items[1]["id"].as_str().expect("an id").to_string();
    // The watch saw it finish.
    let mut lines = std::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let start = std::time::Instant::now();
    loop {
        let line = lines
            .next()
            .expect("jobs --watch ended early")
            .expect("a line");
        if line.starts_with(&last) && line.contains("succeeded") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never saw {last}"
        );
    }
    let _ = Command::new("kill")
        .args(["-INT", &watch.id().to_string()])
        .status();
    let status = watch.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        site.accounts(),
        vec![
            ("ann".to_string(), 1501),
            ("bob".to_string(), 1501),
            ("eve".to_string(), 1501),
            ("fay".to_string(), 1501)
        ]
    );
}

#[test]
fn an_operator_resolves_and_resumes_a_rollback_failed_transaction_through_the_daemon() {
    if !python() {
        return;
    }
    let site = Site::new(0);
    std::fs::copy(
        crate::util::repo().join("tests/fixtures/operator/namespaces/operator.yaml"),
        site.path("ns/operator.yaml"),
    )
    .expect("copy the namespace");
    std::fs::write(
        site.path("stuck.yaml"),
        "call: Operator Test/Stuck\ndata: { tenant: acme }\n",
    )
    .unwrap();
    // In-process: `broken` fails and the undo script of `make` throws: rollback_failed.
    let (code, _, err) = site.run(&["run", "stuck.yaml", "--quiet"], &[]);
    assert_eq!(code, 3, "{err}");
    let _d = site.start();
    let ops = [("PROVISIO_TOKEN", OPS)];
    let (code, list, err) = site.run(&["tx", "list", "--state", "rollback_failed"], &ops);
    assert_eq!(code, 0, "{err}");
    let id = list
        .split_whitespace()
        .next()
        .expect("a rollback_failed transaction")
        .to_string();
    // Only an operator records a finding.
    let (code, _, err) = site.run(
        &["tx", "resolve", &id, "make", "--not-applied"],
        &[("PROVISIO_TOKEN", ALICE)],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("operator_only"), "{err}");
    // What cannot be resolved is refused with the engine's reason.
    let (code, _, err) = site.run(&["tx", "resolve", &id, "nosuch", "--applied"], &ops);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("has no step `nosuch`"), "{err}");
    let (code, out, err) = site.run(&["tx", "resolve", &id, "make", "--not-applied"], &ops);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("recorded as not applied") && out.contains("skips it"),
        "{out}"
    );
    let (code, out, err) = site.run(&["tx", "resume-rollback", &id], &ops);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("rollback_failed -> rolled_back"), "{out}");
    // The finding was journaled with the token's subject.
    let (code, show, _) = site.run(&["tx", "show", &id], &ops);
    assert_eq!(code, 0);
    assert!(show.contains("as not applied by ops"), "{show}");
}
