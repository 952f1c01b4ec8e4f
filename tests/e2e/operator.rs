//! The operator's way out of `rollback_failed`: `provisio tx resolve ID STEP
//! --applied|--not-applied` records what the operator found (journaled, audited with the
//! real user), and `tx resume-rollback` goes on from there.

use crate::util::{repo, Sandbox};

fn namespaces() -> std::path::PathBuf {
    repo().join("tests/fixtures/operator/namespaces")
}

#[test]
fn resolve_records_the_operators_finding_and_resume_goes_on() {
    let ns = namespaces();
    let sb = Sandbox::new();
    let req = sb.write(
        "req.yaml",
        "call: Operator Test/Stuck\ndata: { tenant: acme }\n",
    );
    // `broken` fails, `home` is undone, the undo script of `make` throws: exit 3.
    let run = sb.run_with(&["run", req.to_str().unwrap(), "--quiet"], &ns);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(!sb.data().join("files/s/acme").exists(), "{run:?}");
    let list = sb.run_with(&["tx", "list", "--state", "rollback_failed"], &ns);
    let id = list
        .stdout
        .split_whitespace()
        .next()
        .expect("a rollback_failed transaction")
        .to_string();

    // The script undo was journaled: resuming runs it again (it throws again).
    let resumed = sb.run_with(&["tx", "resume-rollback", &id], &ns);
    assert_eq!(resumed.code, 3, "{resumed:?}");
    assert!(
        resumed
            .stdout
            .contains("the undo of make cannot run for acme"),
        "{resumed:?}"
    );
    assert!(
        resumed
            .stdout
            .contains(&format!("provisio tx resolve {id} make --not-applied")),
        "the problem says how to resolve it: {resumed:?}"
    );

    // What cannot be resolved is refused, naming why.
    let unknown = sb.run_with(&["tx", "resolve", &id, "nosuch", "--applied"], &ns);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(
        unknown.stderr.contains("has no step `nosuch`"),
        "{unknown:?}"
    );
    assert!(
        unknown.stderr.contains("make"),
        "it lists the steps: {unknown:?}"
    );
    let undone = sb.run_with(&["tx", "resolve", &id, "home", "--not-applied"], &ns);
    assert_eq!(undone.code, 2, "{undone:?}");
    assert!(undone.stderr.contains("it was undone"), "{undone:?}");
    let failed = sb.run_with(&["tx", "resolve", &id, "broken", "--not-applied"], &ns);
    assert_eq!(failed.code, 2, "{failed:?}");
    assert!(failed.stderr.contains("never applied"), "{failed:?}");
    let neither = sb.run_with(&["tx", "resolve", &id, "make"], &ns);
    assert_eq!(neither.code, 2, "one of the flags is required: {neither:?}");
    let both = sb.run_with(
        &["tx", "resolve", &id, "make", "--applied", "--not-applied"],
        &ns,
    );
    assert_eq!(both.code, 2, "{both:?}");

    // `--applied`: the effect exists, resume tries its undo again (still failing).
    let applied = sb.run_with(&["tx", "resolve", &id[..8], "make", "--applied"], &ns);
    assert_eq!(applied.code, 0, "{applied:?}");
    assert!(
        applied.stdout.contains("recorded as applied"),
        "{applied:?}"
    );
    let resumed = sb.run_with(&["tx", "resume-rollback", &id], &ns);
    assert_eq!(resumed.code, 3, "{resumed:?}");

    // The operator undid it by hand: `--not-applied`, and resume finishes the rollback.
    let not_applied = sb.run_with(&["tx", "resolve", &id, "make", "--not-applied"], &ns);
    assert_eq!(not_applied.code, 0, "{not_applied:?}");
    assert!(
        not_applied.stdout.contains("recorded as not applied"),
        "{not_applied:?}"
    );
    let resumed = sb.run_with(&["tx", "resume-rollback", &id], &ns);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert!(
        resumed
            .stdout
            .contains("rollback_failed -> rolled_back (0 undone)"),
        "{resumed:?}"
    );

    // Journaled and audited with who said so (the real user, as the audit records it).
    let show = sb.run_with(&["tx", "show", &id], &ns);
    assert!(
        show.stdout
            .contains("resolved make (attempt 1) as applied by")
            && show
                .stdout
                .contains("resolved make (attempt 1) as not applied by"),
        "{show:?}"
    );
    let audit = sb.run_with(&["tx", "audit"], &ns);
    let resolutions: Vec<serde_json::Value> = audit
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("tx resolve: step make"))
        })
        .collect();
    assert_eq!(resolutions.len(), 2, "{audit:?}");
    let uid = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    for r in &resolutions {
        assert_eq!(r["txn_id"], serde_json::json!(id), "{r}");
        let who = r["who"].as_str().unwrap_or_default();
        if let Ok(uid) = uid {
            assert!(who.contains(&format!("uid {uid}")), "{who}");
        }
    }

    // A finished transaction has nothing to resolve.
    let finished = sb.run_with(&["tx", "resolve", &id, "make", "--applied"], &ns);
    assert_eq!(finished.code, 2, "{finished:?}");
    assert!(finished.stderr.contains("is rolled_back"), "{finished:?}");
}
