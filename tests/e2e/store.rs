//! A damaged journal is reported with a way forward, never silently reset; a busy one is refused.

use crate::util::Sandbox;

#[test]
fn a_damaged_journal_is_refused_and_left_as_it_was() {
    let sb = Sandbox::new();
    let first = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(first.code, 0, "{first:?}");
    let db = sb.data().join("journal/db");
    // Overwrite the start of sled's log: it would otherwise come back as an empty store.
    let mut bytes = std::fs::read(&db).unwrap();
    for b in bytes.iter_mut().take(4096) {
        *b = 0x5a;
    }
    std::fs::write(&db, &bytes).unwrap();
    // `tx list` answers from the listing file of the last clean close without opening the
    // store (docs/transactions.md, "Inspection"); every command that opens it refuses it.
    let listed = sb.run(&["tx", "list"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    for args in [
        vec!["tx", "audit"],
        vec!["run", "workflows/decommission-tenant.yaml", "--quiet"],
    ] {
        let r = sb.run(&args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains("is damaged"), "{r:?}");
        assert!(r.stderr.contains("nothing was reset"), "{r:?}");
    }
    // The decommission did not run: the tenant is still there.
    assert!(sb.data().join("files/tenants/contoso").is_dir());
}

#[test]
fn a_journal_that_comes_back_empty_is_refused() {
    let sb = Sandbox::new();
    assert_eq!(
        sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"])
            .code,
        0
    );
    std::fs::remove_dir_all(sb.data().join("journal")).unwrap();
    let r = sb.run(&["tx", "list"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("identity record is gone"), "{r:?}");
}

/// A journal written by a newer provisio (its state file names a later store format) is
/// refused by every command that opens it, with the reason and both formats, and nothing in
/// it changes.
#[test]
fn a_journal_of_a_newer_format_is_refused_and_left_as_it_was() {
    let sb = Sandbox::new();
    let first = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(first.code, 0, "{first:?}");
    let state = sb.data().join("journal.state");
    let text = std::fs::read_to_string(&state).unwrap();
    let newer = text.replace("\"format\":2", "\"format\":3");
    assert_ne!(
        newer, text,
        "the state file names the store's format: {text}"
    );
    std::fs::write(&state, &newer).unwrap();
    let before = std::fs::read(sb.data().join("journal/db")).unwrap();
    for args in [
        vec!["tx", "audit"],
        vec!["run", "workflows/decommission-tenant.yaml", "--quiet"],
    ] {
        let r = sb.run(&args);
        assert_ne!(r.code, 0, "{args:?}: {r:?}");
        assert!(r.stderr.contains("written by a newer provisio"), "{r:?}");
        assert!(r.stderr.contains("store format 3"), "{r:?}");
        assert!(r.stderr.contains("nothing was read or changed"), "{r:?}");
    }
    assert_eq!(std::fs::read(sb.data().join("journal/db")).unwrap(), before);
    assert_eq!(std::fs::read_to_string(&state).unwrap(), newer);
    assert!(sb.data().join("files/tenants/contoso").is_dir());
    // Named back as this version's format, it opens as it was.
    std::fs::write(&state, &text).unwrap();
    let r = sb.run(&["tx", "audit"]);
    assert_eq!(r.code, 0, "{r:?}");
}
