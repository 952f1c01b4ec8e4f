//! `submit_all` in driver scripts: several calls as one transaction, checked on disk.

use crate::util::Sandbox;
use std::path::PathBuf;

/// Public procedures for the batches (a batch, like `submit`, calls public ones only).
fn namespaces(sb: &Sandbox) -> PathBuf {
    sb.write(
        "ns/batch.yaml",
        r#"namespace: Batch Test
procedures:
  MakeFolder:
    access: public
    inputs: { path: string }
    steps:
      mk: { call: Filesystem Provider/CreateFolder, with: { path: "{{ data.path }}" } }
  WriteText:
    access: public
    inputs: { path: string, content: string }
    steps:
      write:
        call: Filesystem Provider/WriteFile
        with: { path: "{{ data.path }}", content: "{{ data.content }}" }
        output: { written: "{{ executeData.written }}" }
  Hidden:
    access: private
    steps:
      mk: { call: Filesystem Provider/CreateFolder, with: { path: tenants/hidden } }
"#,
    );
    sb.path("ns")
}

/// A batch whose second call fails leaves nothing of the first; a batch of two good calls
/// commits both, as one transaction.
#[test]
fn a_batch_commits_or_rolls_back_all_its_calls() {
    let sb = Sandbox::new();
    let ns = namespaces(&sb);
    sb.write(
        "scripts/batch.rhai",
        r#"let bad = submit_all([
    #{ "call": "Batch Test/MakeFolder", data: #{ path: "tenants/alpha" } },
    #{ "call": "Batch Test/WriteText", data: #{ path: "tenants/missing/x.txt", content: "x" } },
]);
log(`bad: ${bad.status}`);
let good = submit_all([
    #{ "call": "Batch Test/MakeFolder", data: #{ path: "tenants/beta" } },
    #{ "call": "Batch Test/WriteText",
       data: #{ path: "tenants/beta/hello.txt", content: "{{ kept as text }}" } },
]);
log(`good: ${good.status}`);
#{ bad: bad.status, badError: bad.error.description, good: good.status,
   written: good.results[1].written }
"#,
    );
    let r = sb.run_with(
        &["script", sb.path("scripts/batch.rhai").to_str().unwrap()],
        &ns,
    );
    assert_eq!(r.code, 1, "one batch did not commit: {r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("the script's result");
    assert_eq!(v["bad"], "rolled_back", "{r:?}");
    assert!(
        v["badError"]
            .as_str()
            .unwrap_or("")
            .contains("does not exist"),
        "{r:?}"
    );
    assert_eq!(v["good"], "committed", "{r:?}");
    assert_eq!(v["written"], "tenants/beta/hello.txt", "{r:?}");
    // Independent check on disk: the first call of the failed batch was undone.
    let files = sb.data().join("files/tenants");
    assert!(!files.join("alpha").exists(), "rolled back with its batch");
    assert_eq!(
        std::fs::read_to_string(files.join("beta/hello.txt")).expect("written"),
        "{{ kept as text }}"
    );
    assert!(
        r.stderr.contains(
            "2 request(s) submitted, 1 not committed: batch [Batch Test/MakeFolder, Batch Test/WriteText] ("
        ),
        "{r:?}"
    );
    // Each batch was one journaled transaction.
    let list = sb.run_with(&["tx", "list"], &ns);
    assert_eq!(list.stdout.matches("rolled_back").count(), 1, "{list:?}");
    assert_eq!(
        list.stdout
            .lines()
            .filter(|l| l.contains(" committed"))
            .count(),
        1,
        "{list:?}"
    );
}

/// A batch may call only what `submit` could: a private procedure makes it `rejected`, and
/// nothing runs.
#[test]
fn a_batch_cannot_call_a_private_procedure() {
    let sb = Sandbox::new();
    let ns = namespaces(&sb);
    sb.write(
        "scripts/private.rhai",
        r#"let r = submit_all([
    #{ "call": "Batch Test/MakeFolder", data: #{ path: "tenants/first" } },
    #{ "call": "Batch Test/Hidden" },
    #{ "call": "Filesystem Provider/CreateFolder", data: #{ path: "tenants/direct" } },
]);
#{ status: r.status, why: r.error.description }
"#,
    );
    let r = sb.run_with(
        &["script", sb.path("scripts/private.rhai").to_str().unwrap()],
        &ns,
    );
    assert_eq!(r.code, 1, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("the script's result");
    assert_eq!(v["status"], "rejected", "{r:?}");
    assert!(
        v["why"]
            .as_str()
            .unwrap_or("")
            .contains("private: Batch Test/Hidden, Filesystem Provider/CreateFolder"),
        "{r:?}"
    );
    for never in ["first", "hidden", "direct"] {
        assert!(
            !sb.data().join("files/tenants").join(never).exists(),
            "{never}"
        );
    }
}
