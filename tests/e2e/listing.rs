//! `tx list` from the listing file: a sled store closed cleanly answers without being
//! opened (proved by moving sled's own data file aside while listing: an open would fail),
//! falls back to the store after a crash (the listing is not trusted, the answer is still
//! right) until a clean close brings it up to date from what changed since, and stays
//! right after `recover`, `tx prune` and an operator's resolve and resume (state changes
//! made by other processes).

use crate::util::{repo, Run, Sandbox};
use std::path::PathBuf;

/// Runs `tx list ARGS` with sled's data file moved aside, so the store cannot be opened:
/// only the listing file can answer.
fn list_without_sled(sb: &Sandbox, ns: &std::path::Path, args: &[&str]) -> Run {
    let db = sb.data().join("journal/db");
    let aside = sb.data().join("journal/db.aside");
    std::fs::rename(&db, &aside).expect("move sled's data file aside");
    let mut all = vec!["tx", "list"];
    all.extend_from_slice(args);
    let run = sb.run_with(&all, ns);
    std::fs::rename(&aside, &db).expect("put sled's data file back");
    run
}

fn marker(sb: &Sandbox) -> PathBuf {
    sb.data().join("journal/provisio.list.ok")
}

fn base(sb: &Sandbox) -> PathBuf {
    sb.data().join("journal/provisio.list.base")
}

/// The transaction lines of a listing (id, state, …).
fn lines(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .filter(|l| l.contains('/'))
        .map(str::to_string)
        .collect()
}

#[test]
fn tx_list_answers_from_the_listing_file_and_falls_back_after_a_crash() {
    let ns = repo().join("namespaces");
    let sb = Sandbox::new();
    let ok = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    if !sb.data().join("journal/db").exists() {
        eprintln!("skipped: the suite runs on PostgreSQL (no listing file)");
        return;
    }
    let again = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(marker(&sb).exists(), "the clean close wrote the listing");

    // Answered with sled's data file gone: the store was not opened.
    let all = list_without_sled(&sb, &ns, &[]);
    assert_eq!(all.code, 0, "{all:?}");
    let all_lines = lines(&all);
    assert_eq!(all_lines.len(), 2, "{all:?}");
    assert!(
        all_lines[0].contains("rolled_back"),
        "newest first: {all:?}"
    );
    assert!(all_lines[1].contains("committed"), "{all:?}");
    let committed = list_without_sled(&sb, &ns, &["--state", "committed"]);
    assert_eq!(
        lines(&committed),
        vec![all_lines[1].clone()],
        "{committed:?}"
    );
    let by_procedure = list_without_sled(
        &sb,
        &ns,
        &[
            "--procedure",
            "Hosted Tenant/ProvisionTenant",
            "--since",
            "1h",
        ],
    );
    assert_eq!(lines(&by_procedure), all_lines, "{by_procedure:?}");
    let nobody = list_without_sled(&sb, &ns, &["--subject", "nobody-at-all"]);
    assert_eq!(nobody.stdout.trim(), "no transactions", "{nobody:?}");
    let first = list_without_sled(&sb, &ns, &["--limit", "1"]);
    assert_eq!(lines(&first), vec![all_lines[0].clone()], "{first:?}");
    let newest = all_lines[0].split_whitespace().next().expect("an id");
    assert!(
        first
            .stderr
            .contains(&format!("provisio tx list --after {newest}")),
        "{first:?}"
    );
    let second = list_without_sled(&sb, &ns, &["--limit", "1", "--after", newest]);
    assert_eq!(lines(&second), vec![all_lines[1].clone()], "{second:?}");
    let unknown = list_without_sled(
        &sb,
        &ns,
        &["--after", "00000000-0000-7000-8000-000000000000"],
    );
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("to continue after"), "{unknown:?}");

    // The store's own answer is the same (the marker removed, `tx list` opens sled; a
    // command that only reads leaves the full rebuild to the next writer: with the base an
    // open keeps gone too, nothing describes the files).
    std::fs::remove_file(marker(&sb)).expect("remove the marker");
    std::fs::remove_file(base(&sb)).expect("remove the base");
    let from_sled = sb.run(&["tx", "list"]);
    assert_eq!(from_sled.stdout, all.stdout, "{from_sled:?}");
    assert!(!marker(&sb).exists(), "a reader rebuilds nothing");
    let shown = sb.run(&["tx", "audit"]);
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(!marker(&sb).exists(), "a reader rebuilds nothing");
    // A writer's clean close (a prune that removes nothing) rebuilds it.
    let pruned = sb.run(&["tx", "prune", "--older-than", "30d"]);
    assert_eq!(pruned.code, 0, "{pruned:?}");
    assert!(marker(&sb).exists(), "rebuilt at the writer's clean close");
    let listed = list_without_sled(&sb, &ns, &[]);
    assert_eq!(listed.stdout, all.stdout, "{listed:?}");

    // A writer killed mid-run (an abort before its 20th journal write, as kill -9): the
    // listing is not trusted, `tx list` reads the store and shows the transaction as it
    // was left. A late write, because the early ones need not be durable: the zone and the
    // folders run side by side, and a folder's intent waits unsynced for its marker, so in
    // some orders nothing of the first few writes reaches the disk (the run has made no
    // call yet: nothing to show). By the 20th, calls have been made, each after a sync.
    // Another tenant, so that the run gets that far (contoso's zone exists).
    let other = sb.write(
        "fabrikam.yaml",
        "call: Hosted Tenant/ProvisionTenant\ndata:\n  tenant: fabrikam\n  domain: fabrikam.test\n  user:\n    - { name: ann, displayName: Ann }\n",
    );
    let crashed = sb.run_env(
        &["run", other.to_str().expect("a UTF-8 path"), "--quiet"],
        &ns,
        &[
            ("PROVISIO_CRASH_AT", "20".to_string()),
            ("PROVISIO_CRASH_WHEN", "before".to_string()),
        ],
    );
    assert_eq!(crashed.code, -1, "aborted: {crashed:?}");
    assert!(
        !marker(&sb).exists(),
        "the writer's open removed the marker"
    );
    assert!(base(&sb).exists(), "and kept what it said");
    let after_crash = sb.run(&["tx", "list"]);
    assert_eq!(after_crash.code, 0, "{after_crash:?}");
    assert_eq!(lines(&after_crash).len(), 3, "{after_crash:?}");
    assert!(
        lines(&after_crash)[0].contains("running"),
        "{after_crash:?}"
    );
    // That read's close brought the files up to date from what changed since the crashed
    // writer's open (its transaction, in flight), not from every summary: the next
    // `tx list` answers from them, without sled, the same.
    assert!(marker(&sb).exists(), "caught up at the reader's close");
    let again = list_without_sled(&sb, &ns, &[]);
    assert_eq!(again.stdout, after_crash.stdout, "{again:?}");
    let running = list_without_sled(&sb, &ns, &["--state", "running"]);
    assert_eq!(
        lines(&running),
        vec![lines(&after_crash)[0].clone()],
        "{running:?}"
    );

    // Recovery (another process) rolls it back; the listing follows.
    let recovered = sb.run(&["recover"]);
    assert_eq!(recovered.code, 0, "{recovered:?}");
    let listed = list_without_sled(&sb, &ns, &["--state", "rolled_back"]);
    assert_eq!(lines(&listed).len(), 2, "{listed:?}");
    let running = list_without_sled(&sb, &ns, &["--state", "running"]);
    assert_eq!(running.stdout.trim(), "no transactions", "{running:?}");

    // A prune removes them all; the listing says so.
    let pruned = sb.run(&["tx", "prune", "--older-than", "0s"]);
    assert_eq!(pruned.code, 0, "{pruned:?}");
    let listed = list_without_sled(&sb, &ns, &[]);
    assert_eq!(listed.code, 0, "{listed:?}");
    assert_eq!(listed.stdout.trim(), "no transactions", "{listed:?}");
}

#[test]
fn the_listing_follows_an_operators_resolve_and_resume() {
    let ns = repo().join("tests/fixtures/operator/namespaces");
    let sb = Sandbox::new();
    let req = sb.write(
        "req.yaml",
        "call: Operator Test/Stuck\ndata: { tenant: acme }\n",
    );
    let run = sb.run_with(&["run", req.to_str().unwrap(), "--quiet"], &ns);
    assert_eq!(run.code, 3, "{run:?}");
    if !sb.data().join("journal/db").exists() {
        eprintln!("skipped: the suite runs on PostgreSQL (no listing file)");
        return;
    }
    let failed = list_without_sled(&sb, &ns, &["--state", "rollback_failed"]);
    assert_eq!(lines(&failed).len(), 1, "{failed:?}");
    let id = failed
        .stdout
        .split_whitespace()
        .next()
        .expect("an id")
        .to_string();
    let resolved = sb.run_with(&["tx", "resolve", &id, "make", "--not-applied"], &ns);
    assert_eq!(resolved.code, 0, "{resolved:?}");
    let resumed = sb.run_with(&["tx", "resume-rollback", &id], &ns);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    let failed = list_without_sled(&sb, &ns, &["--state", "rollback_failed"]);
    assert_eq!(failed.stdout.trim(), "no transactions", "{failed:?}");
    let rolled = list_without_sled(&sb, &ns, &["--state", "rolled_back"]);
    assert_eq!(lines(&rolled).len(), 1, "{rolled:?}");
    assert!(rolled.stdout.starts_with(&id), "{rolled:?}");
}
