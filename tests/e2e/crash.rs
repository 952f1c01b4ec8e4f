//! Crash safety: the process is aborted (no clean return) at every journal write point of a
//! request with nested calls and a forEach, before and after the write reaches the disk;
//! then `provisio recover` runs, and the files on disk must be exactly "all done" or
//! "nothing done", with no step applied twice and nothing left for an operator.

use crate::util::{repo, Sandbox};

const REQUEST: &str = "call: Crash Test/Provision\ndata:\n  tenant: acme\n  user: [{ name: ann }, { name: bob }, { name: cy }]\n";

fn world(sb: &Sandbox) -> (Vec<String>, Option<u64>) {
    let mut entries: Vec<String> = sb
        .snapshot()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with("files/t"))
        .collect();
    entries.sort();
    let quotas = std::fs::read_to_string(sb.data().join("files/.provisio-state/quotas.json"))
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&quotas).unwrap_or(serde_json::json!({}));
    (entries, v.get("t/acme").and_then(|q| q.as_u64()))
}

fn all_done() -> Vec<String> {
    let mut v: Vec<String> = [
        "files/t/",
        "files/t/acme/",
        "files/t/acme/ann/",
        "files/t/acme/bob/",
        "files/t/acme/cy/",
        "files/t/acme/README",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.sort();
    v
}

#[test]
fn a_crash_at_any_journal_write_leaves_all_or_nothing() {
    crash_at_any_journal_write(|| Some(Sandbox::new()));
}

/// The same on the PostgreSQL store: the process dies (abort, as kill -9) between its
/// database commits, and `provisio recover` on the database finishes or undoes it.
#[test]
fn a_crash_at_any_journal_write_leaves_all_or_nothing_on_postgres() {
    crash_at_any_journal_write(Sandbox::postgres);
}

fn crash_at_any_journal_write(sandbox: impl Fn() -> Option<Sandbox>) {
    let namespaces = repo().join("tests/fixtures/crash/namespaces");
    let mut crashes = 0;
    for when in ["before", "after"] {
        let mut n = 1u32;
        loop {
            let Some(sb) = sandbox() else { return };
            let req = sb.write("req.yaml", REQUEST);
            let env = [
                ("PROVISIO_CRASH_AT", n.to_string()),
                ("PROVISIO_CRASH_WHEN", when.to_string()),
            ];
            let run = sb.run_env(
                &["run", req.to_str().unwrap(), "--quiet"],
                &namespaces,
                &env,
            );
            if run.code == 0 {
                // Past the last write point: the request completed normally.
                assert_eq!(world(&sb), (all_done(), Some(10)), "{run:?}");
                assert!(n > 10, "suspiciously few journal writes ({n}) for {when}");
                break;
            }
            assert_eq!(
                run.code, -1,
                "crash at write {n} ({when}) must abort the process: {run:?}"
            );
            crashes += 1;
            let recover = sb.run_with(&["recover"], &namespaces);
            assert_eq!(
                recover.code, 0,
                "recovery after a crash at write {n} ({when}): {recover:?}"
            );
            let list = sb.run_with(&["tx", "list"], &namespaces);
            let (entries, quota) = world(&sb);
            if list.stdout.contains("committed") {
                assert_eq!(
                    (entries, quota),
                    (all_done(), Some(10)),
                    "committed but incomplete after crash at {n} ({when})"
                );
            } else {
                assert!(entries.is_empty() && quota.is_none(), "crash at write {n} ({when}) left {entries:?}, quota {quota:?}\n{recover:?}\n{list:?}");
                assert!(
                    list.stdout.contains("rolled_back") || list.stdout.trim() == "no transactions",
                    "crash at {n} ({when}): {list:?}"
                );
            }
            assert!(
                !list.stdout.contains("rollback_failed") && !list.stdout.contains("running"),
                "{list:?}"
            );
            // Recovery is finished: a second pass finds nothing, and the same request now runs cleanly.
            let again = sb.run_with(&["recover"], &namespaces);
            assert!(again.stdout.contains("nothing to recover"), "{again:?}");
            if !list.stdout.contains("committed") {
                let rerun = sb.run_with(&["run", req.to_str().unwrap(), "--quiet"], &namespaces);
                assert_eq!(
                    rerun.code, 0,
                    "re-running after recovery from a crash at {n} ({when}): {rerun:?}"
                );
                assert_eq!(world(&sb), (all_done(), Some(10)));
            }
            n += 1;
            assert!(n < 200, "runaway crash loop");
        }
    }
    assert!(crashes >= 20, "only {crashes} crash points exercised");
}

#[test]
fn a_failed_undo_is_kept_for_the_operator_and_resumable() {
    let namespaces = repo().join("tests/fixtures/crash/namespaces");
    let sb = Sandbox::new();
    // Make the last step fail (its file already exists) and the undo of a user folder fail
    // (someone put a file into it), so the rollback cannot finish.
    let req = sb.write("req.yaml", REQUEST);
    let pre = sb.run_with(&["recover"], &namespaces);
    assert_eq!(pre.code, 0, "{pre:?}");
    // Run once with a crash right after the user folders exist, then sabotage, then recover.
    let mut n = 1;
    let (crashed_sb, saboteur_path) = loop {
        let s = Sandbox::new();
        let r = s.run_env(
            &["run", req.to_str().unwrap(), "--quiet"],
            &namespaces,
            &[
                ("PROVISIO_CRASH_AT", n.to_string()),
                ("PROVISIO_CRASH_WHEN", "after".into()),
            ],
        );
        assert_ne!(r.code, 0, "never saw the user folders before completion");
        let ann = s.data().join("files/t/acme/ann");
        if ann.is_dir() {
            break (s, ann);
        }
        n += 1;
    };
    std::fs::write(saboteur_path.join("keep.txt"), "someone else's file").unwrap();
    let rec = crashed_sb.run_with(&["recover"], &namespaces);
    assert_eq!(
        rec.code, 3,
        "an undo that cannot finish ends in rollback_failed: {rec:?}"
    );
    assert!(rec.stdout.contains("needs an operator"), "{rec:?}");
    let list = crashed_sb.run_with(&["tx", "list", "--state", "rollback_failed"], &namespaces);
    let id = list
        .stdout
        .split_whitespace()
        .next()
        .expect("a rollback_failed transaction")
        .to_string();
    let show = crashed_sb.run_with(&["tx", "show", &id], &namespaces);
    assert!(show.stdout.contains("UNDO FAILED"), "{show:?}");
    // The operator removes the stray file and resumes.
    std::fs::remove_file(saboteur_path.join("keep.txt")).unwrap();
    let resumed = crashed_sb.run_with(&["tx", "resume-rollback", &id], &namespaces);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert!(world(&crashed_sb).0.is_empty(), "{:?}", world(&crashed_sb));
    let _ = sb;
}

#[test]
fn a_resumable_procedure_is_finished_after_any_crash() {
    let namespaces = repo().join("tests/fixtures/crash/namespaces");
    let request = REQUEST.replace("Crash Test/Provision", "Crash Test/ProvisionResumable");
    let mut resumed = 0;
    for when in ["before", "after"] {
        let mut n = 1u32;
        loop {
            let sb = Sandbox::new();
            let req = sb.write("req.yaml", &request);
            let env = [
                ("PROVISIO_CRASH_AT", n.to_string()),
                ("PROVISIO_CRASH_WHEN", when.to_string()),
            ];
            let run = sb.run_env(
                &["run", req.to_str().unwrap(), "--quiet"],
                &namespaces,
                &env,
            );
            if run.code == 0 {
                assert_eq!(world(&sb), (all_done(), Some(10)), "{run:?}");
                break;
            }
            assert_eq!(run.code, -1, "{run:?}");
            let recover = sb.run_with(&["recover"], &namespaces);
            assert_eq!(
                recover.code, 0,
                "recovery after a crash at write {n} ({when}): {recover:?}"
            );
            let list = sb.run_with(&["tx", "list"], &namespaces);
            let (entries, quota) = world(&sb);
            if list.stdout.trim() == "no transactions" {
                // Crashed before anything was journaled: nothing may have happened.
                assert!(
                    entries.is_empty() && quota.is_none(),
                    "crash at {n} ({when}): {entries:?}"
                );
            } else {
                assert!(
                    list.stdout.contains("committed"),
                    "crash at {n} ({when}) must resume to commit: {list:?}\n{recover:?}"
                );
                assert_eq!(
                    (entries, quota),
                    (all_done(), Some(10)),
                    "crash at {n} ({when}): resumed but incomplete\n{recover:?}"
                );
                resumed += 1;
            }
            n += 1;
            assert!(n < 200, "runaway crash loop");
        }
    }
    assert!(resumed >= 15, "only {resumed} crashes were resumed");
}

/// A script step's undo script is journaled with its inputs, so a crash anywhere after the
/// step leaves nothing behind: `recover` runs the undo script (its `print` shows in the log)
/// as well as the undos of the step's nested calls.
#[test]
fn a_script_undo_runs_in_recovery_after_a_crash() {
    let namespaces = repo().join("tests/fixtures/operator/namespaces");
    let request = "call: Operator Test/Provision\ndata: { tenant: acme }\n";
    let mut script_undos_recovered = 0;
    for when in ["before", "after"] {
        let mut n = 1u32;
        loop {
            let sb = Sandbox::new();
            let req = sb.write("req.yaml", request);
            let env = [
                ("PROVISIO_CRASH_AT", n.to_string()),
                ("PROVISIO_CRASH_WHEN", when.to_string()),
            ];
            let run = sb.run_env(
                &["run", req.to_str().unwrap(), "--quiet"],
                &namespaces,
                &env,
            );
            if run.code == 0 {
                break;
            }
            assert_eq!(run.code, -1, "crash at write {n} ({when}): {run:?}");
            let list = sb.run_with(&["tx", "list"], &namespaces);
            let id = list
                .stdout
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string();
            let journaled = !id.is_empty()
                && sb
                    .run_with(&["tx", "log", &id], &namespaces)
                    .stdout
                    .contains("\"type\":\"script_done\"");
            let recover = sb.run_with(&["recover", "-v"], &namespaces);
            assert_eq!(recover.code, 0, "crash at write {n} ({when}): {recover:?}");
            let list = sb.run_with(&["tx", "list"], &namespaces);
            let folder = sb.data().join("files/s/acme");
            if list.stdout.contains("committed") {
                assert!(folder.join("README").is_file(), "{list:?}");
            } else {
                assert!(
                    !folder.exists(),
                    "crash at {n} ({when}) left the folder: {recover:?}"
                );
            }
            if journaled && !list.stdout.contains("committed") {
                // The undo script ran in recovery, with the inputs it was journaled with.
                assert!(
                    recover.stderr.contains("undo script of make ran for acme"),
                    "crash at {n} ({when}): {recover:?}"
                );
                let show = sb.run_with(&["tx", "show", &id], &namespaces);
                assert!(show.stdout.contains("undone make\n"), "{show:?}");
                assert!(list.stdout.contains("rolled_back"), "{list:?}");
                script_undos_recovered += 1;
            }
            n += 1;
            assert!(n < 100, "runaway crash loop");
        }
    }
    assert!(
        script_undos_recovered >= 2,
        "only {script_undos_recovered} crashes fell between the script step and its rollback"
    );
}

/// A trusted request's own procedure is pinned sealed (it may hold literal secrets); a
/// resumable one is still finished after a crash, so recovery opens it with the seal key.
#[test]
fn a_resumable_trusted_request_is_finished_after_a_crash() {
    let request = "procedure:\n  type: write\n  resumable: true\n  steps:\n    home:\n      call: Filesystem Provider/CreateFolder\n      with: { path: t/acme }\n    ann:\n      needs: [home]\n      call: Filesystem Provider/CreateFolder\n      with: { path: t/acme/ann }\ndata: {}\n";
    let none = |sb: &Sandbox| {
        let p = sb.path("none");
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    };
    let mut resumed = 0;
    let mut n = 1u32;
    loop {
        let sb = Sandbox::new();
        let namespaces = none(&sb);
        let req = sb.write("req.yaml", request);
        let env = [
            ("PROVISIO_CRASH_AT", n.to_string()),
            ("PROVISIO_CRASH_WHEN", "after".to_string()),
        ];
        let run = sb.run_env(
            &["run", req.to_str().unwrap(), "--quiet"],
            &namespaces,
            &env,
        );
        if run.code == 0 {
            break;
        }
        assert_eq!(run.code, -1, "{run:?}");
        let recover = sb.run_with(&["recover"], &namespaces);
        assert_eq!(recover.code, 0, "crash at write {n}: {recover:?}");
        let list = sb.run_with(&["tx", "list"], &namespaces);
        if list.stdout.trim() != "no transactions" {
            assert!(
                list.stdout.contains("committed"),
                "crash at {n} must resume to commit: {list:?}\n{recover:?}"
            );
            assert!(sb.data().join("files/t/acme/ann").is_dir(), "crash at {n}");
            resumed += 1;
        }
        n += 1;
        assert!(n < 100, "runaway crash loop");
    }
    assert!(resumed >= 2, "only {resumed} crashes were resumed");
}
