//! Retention through the binary: `tx list` filters and pages, `tx prune` removes finished
//! transactions past retention (a dry run removes nothing), `purge` removes what providers
//! kept for undo once the transaction that kept it is final and old enough.

use crate::util::Sandbox;
use std::path::Path;

/// Lines of `tx list` naming a transaction of the quick start's procedures.
fn listed(stdout: &str) -> usize {
    stdout
        .lines()
        .filter(|l| l.contains("Hosted Tenant/"))
        .count()
}

/// Entries of a folder (0 when it does not exist).
fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn list_filters_and_pages_and_prune_removes_only_what_is_past_retention() {
    let sb = Sandbox::new();
    let ok = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let again = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(again.code, 1, "{again:?}");

    let rolled = sb.run(&["tx", "list", "--state", "rolled_back"]);
    assert_eq!(rolled.code, 0, "{rolled:?}");
    assert_eq!(listed(&rolled.stdout), 1, "{rolled:?}");
    assert!(!rolled.stdout.contains("committed"), "{rolled:?}");
    let page = sb.run(&["tx", "list", "--limit", "1"]);
    assert_eq!(listed(&page.stdout), 1, "one per page: {page:?}");

    // Both finished moments ago: the default retention (30 days) keeps them.
    let kept = sb.run(&["tx", "prune"]);
    assert_eq!(kept.code, 0, "{kept:?}");
    assert_eq!(listed(&sb.run(&["tx", "list"]).stdout), 2);

    let dry = sb.run(&["tx", "prune", "--older-than", "0s", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains("would remove 2 transaction(s)"),
        "{dry:?}"
    );
    assert_eq!(
        listed(&sb.run(&["tx", "list"]).stdout),
        2,
        "a dry run removes nothing"
    );

    let pruned = sb.run(&["tx", "prune", "--older-than", "0s"]);
    assert_eq!(pruned.code, 0, "{pruned:?}");
    let after = sb.run(&["tx", "list"]);
    assert_eq!(listed(&after.stdout), 0, "{after:?}");
    let id = ok
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("transactionId: "))
        .expect("the run names its transaction");
    let gone = sb.run(&["tx", "show", id]);
    assert_ne!(gone.code, 0, "a pruned transaction is gone: {gone:?}");
}

/// `tx prune` gives the journal's space back: sled's database, which keeps its size after
/// deletes, is rewritten (with `--compact` whatever its size; without, a small journal is
/// left as it is and says so), the journal folder shrinks, and what was kept reads back;
/// the journal goes on being used.
#[test]
fn prune_gives_the_journal_space_back() {
    let sb = Sandbox::new();
    if sb.store.is_some() {
        // PostgreSQL gives its space back itself (autovacuum).
        return;
    }
    let ns = sb.write(
        "ns/fill.yaml",
        r#"namespace: Fill Test
procedures:
  MakeFolder:
    access: public
    inputs: { path: string }
    steps:
      mk: { call: Filesystem Provider/CreateFolder, with: { path: "{{ data.path }}" } }
"#,
    );
    let ns = ns.parent().unwrap().to_path_buf();
    let script = sb.write(
        "scripts/fill.rhai",
        r#"let n = 0;
for i in 0..200 {
    let r = submit(#{ "call": "Fill Test/MakeFolder", data: #{ path: `tenants/t${i}` } });
    if r.status == "committed" { n += 1; }
}
n
"#,
    );
    let filled = sb.run_with(&["script", script.to_str().unwrap()], &ns);
    assert_eq!(filled.code, 0, "{filled:?}");
    let journal = sb.data().join("journal");

    // Small: left as it is, and said so.
    let none = sb.run_with(&["tx", "prune"], &ns);
    assert_eq!(none.code, 0, "{none:?}");
    assert!(
        none.stdout.contains("is rewritten smaller once over 8 MiB"),
        "{none:?}"
    );

    let before = provisio_engine::allocated_bytes(&journal);
    let pruned = sb.run_with(&["tx", "prune", "--keep", "5", "--compact"], &ns);
    assert_eq!(pruned.code, 0, "{pruned:?}");
    assert!(
        pruned.stdout.contains("removed 195 transaction(s)"),
        "{pruned:?}"
    );
    assert!(
        pruned.stdout.contains("its database rewritten"),
        "{pruned:?}"
    );
    let after = provisio_engine::allocated_bytes(&journal);
    assert!(
        after * 2 < before,
        "the journal folder shrank: {before} -> {after} bytes"
    );
    for leftover in [
        "vacuum.new",
        "vacuum.old",
        "vacuum.switching",
        "vacuum.installing",
    ] {
        assert!(!journal.join(leftover).exists(), "{leftover}");
    }

    // What was kept reads back, and the journal goes on.
    let list = sb.run_with(&["tx", "list"], &ns);
    assert_eq!(list.code, 0, "{list:?}");
    let ids: Vec<&str> = list
        .stdout
        .lines()
        .filter(|l| l.contains("Fill Test/MakeFolder"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids.len(), 5, "{list:?}");
    for id in &ids {
        let shown = sb.run_with(&["tx", "show", id], &ns);
        assert_eq!(shown.code, 0, "{shown:?}");
        assert!(shown.stdout.contains("committed"), "{shown:?}");
    }
    let more = sb.write(
        "scripts/more.rhai",
        r#"for i in 0..3 { submit(#{ "call": "Fill Test/MakeFolder", data: #{ path: `tenants/u${i}` } }); }"#,
    );
    let more = sb.run_with(&["script", more.to_str().unwrap()], &ns);
    assert_eq!(more.code, 0, "{more:?}");
    let list = sb.run_with(&["tx", "list", "--state", "committed"], &ns);
    let listed = list
        .stdout
        .lines()
        .filter(|l| l.contains("Fill Test/MakeFolder"))
        .count();
    assert_eq!(listed, 8, "{list:?}");
}

#[test]
fn purge_removes_the_trash_of_a_final_decommission() {
    let sb = Sandbox::new();
    let ok = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let gone = sb.run(&["run", "workflows/decommission-tenant.yaml", "--quiet"]);
    assert_eq!(gone.code, 0, "{gone:?}");
    let trash = sb.data().join("files/.provisio-trash");
    let deleted = sb.data().join("zones/.deleted");
    assert_eq!(entries(&trash), 1, "the tenant folder is kept for undo");
    assert_eq!(entries(&deleted), 1, "the zone is kept for undo");

    // Within the default retention nothing goes.
    let early = sb.run(&["purge"]);
    assert_eq!(early.code, 0, "{early:?}");
    assert_eq!((entries(&trash), entries(&deleted)), (1, 1), "{early:?}");

    let dry = sb.run(&["purge", "--older-than", "0s", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains("trash folder"), "{dry:?}");
    assert_eq!((entries(&trash), entries(&deleted)), (1, 1), "{dry:?}");

    let purged = sb.run(&["purge", "--older-than", "0s"]);
    assert_eq!(purged.code, 0, "{purged:?}");
    assert_eq!((entries(&trash), entries(&deleted)), (0, 0), "{purged:?}");
    assert!(
        !sb.data().join("files/tenants/contoso").exists(),
        "purging the trash does not bring anything back"
    );
}
