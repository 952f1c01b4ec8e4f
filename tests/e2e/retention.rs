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
