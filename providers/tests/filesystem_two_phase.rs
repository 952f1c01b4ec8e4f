//! Two-phase StageFolder/StageFile of the filesystem provider: nothing visible before
//! commit, atomic rename at commit, abort (undo) leaves no trace, prepare refuses a target
//! that appeared meanwhile.

mod support;

use provisio_engine::model::ProcKind;
use provisio_engine::provider::{Call, Done, Outcome, Provider};
use provisio_providers::filesystem::{FilesystemProvider, STAGING_DIR};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use support::{call, err_message, output, run, undo};

const E_ALREADY_EXISTS: u32 = 0x8007_00B7;

fn provider() -> (tempfile::TempDir, FilesystemProvider) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = FilesystemProvider::new(tmp.path().join("root")).expect("provider");
    (tmp, p)
}

fn done(c: &Call, out: &Outcome) -> Done {
    Done {
        state: provisio_engine::ProviderState::detached(),
        context: c.context.clone(),
        provider_context: c.provider_context.clone(),
        undo: out.undo.clone().expect("an undo record"),
        execute_data: None,
    }
}

/// Every entry under `dir` (recursive), relative, sorted; empty when `dir` is missing.
fn all_entries(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let path = e.path();
            out.push(
                path.strip_prefix(base)
                    .expect("prefix")
                    .display()
                    .to_string(),
            );
            if path.is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// No staged content and no intent marker of `calls` is left.
fn no_trace(root: &Path, calls: &[&Call]) {
    assert!(
        all_entries(&root.join(STAGING_DIR)).is_empty(),
        "staging: {:?}",
        all_entries(&root.join(STAGING_DIR))
    );
    let pending = root.join(".provisio-state/pending");
    for c in calls {
        let key = c.context.idempotency_key();
        // The transaction's intent file: the last line of the key must remove its marker.
        let file = pending.join(format!("{}_intents.jsonl", c.context.txn_id));
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let last = text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["key"] == key.as_str());
        assert!(
            last.as_ref().is_none_or(|v| v.get("marker").is_none()),
            "marker of {key} left: {last:?}"
        );
    }
}

#[tokio::test]
async fn procedures_are_declared_two_phase() {
    let (_t, p) = provider();
    for name in ["StageFolder", "StageFile"] {
        let spec = p
            .procedures()
            .into_iter()
            .find(|s| s.name == name)
            .expect("declared");
        assert_eq!(spec.kind, ProcKind::TwoPhase, "{name}");
    }
}

#[tokio::test]
async fn stage_prepare_commit_makes_folder_visible() {
    let (_t, p) = provider();
    let root = p.root().to_path_buf();
    run(&p, "CreateFolder", &[("path", "parent")])
        .await
        .expect("mkdir");
    let (c, out) = run(
        &p,
        "StageFolder",
        &[("path", "parent/new"), ("mode", "0710")],
    )
    .await
    .expect("stage");
    assert_eq!(output(&out, "staged").as_deref(), Some("parent/new"));
    assert!(
        !root.join("parent/new").exists(),
        "not visible before commit"
    );
    assert!(!all_entries(&root.join(STAGING_DIR)).is_empty());
    let d = done(&c, &out);
    p.prepare(&d).await.expect("prepare");
    assert!(
        !root.join("parent/new").exists(),
        "not visible after prepare"
    );
    p.commit(&d).await.expect("commit");
    let meta = fs::metadata(root.join("parent/new")).expect("visible");
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o710);
    assert!(all_entries(&root.join(STAGING_DIR)).is_empty());
    p.commit(&d).await.expect("a repeated commit is harmless");

    // Undo after commit removes the committed (empty) folder.
    undo(&p, &c, &out).await.expect("undo");
    assert!(!root.join("parent/new").exists());
    no_trace(&root, &[&c]);
}

#[tokio::test]
async fn stage_prepare_commit_makes_file_visible() {
    let (_t, p) = provider();
    let root = p.root().to_path_buf();
    let (c, out) = run(&p, "StageFile", &[("path", "f.txt"), ("content", "hello")])
        .await
        .expect("stage");
    assert_eq!(output(&out, "bytes").as_deref(), Some("5"));
    assert!(!root.join("f.txt").exists());
    let d = done(&c, &out);
    p.prepare(&d).await.expect("prepare");
    p.commit(&d).await.expect("commit");
    assert_eq!(
        fs::read_to_string(root.join("f.txt")).expect("read"),
        "hello"
    );
    assert_eq!(
        fs::metadata(root.join("f.txt"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
    assert!(all_entries(&root.join(STAGING_DIR)).is_empty());
    undo(&p, &c, &out).await.expect("undo after commit");
    assert!(!root.join("f.txt").exists());
    no_trace(&root, &[&c]);
}

#[tokio::test]
async fn stage_then_abort_leaves_no_trace() {
    let (_t, p) = provider();
    let root = p.root().to_path_buf();
    run(&p, "CreateFolder", &[("path", "a")])
        .await
        .expect("mkdir");
    let visible_before = all_entries(&root)
        .into_iter()
        .filter(|e| !e.starts_with(".provisio-"))
        .collect::<Vec<_>>();
    let (c1, o1) = run(&p, "StageFolder", &[("path", "a/x")])
        .await
        .expect("stage");
    let (c2, o2) = run(&p, "StageFile", &[("path", "a/y"), ("content", "data")])
        .await
        .expect("stage");
    p.prepare(&done(&c1, &o1)).await.expect("prepare");
    undo(&p, &c1, &o1).await.expect("abort folder");
    undo(&p, &c2, &o2).await.expect("abort file");
    undo(&p, &c2, &o2).await.expect("abort is idempotent");
    let visible_after = all_entries(&root)
        .into_iter()
        .filter(|e| !e.starts_with(".provisio-"))
        .collect::<Vec<_>>();
    assert_eq!(visible_after, visible_before);
    assert!(
        !root.join(STAGING_DIR).exists(),
        "the empty staging folder is removed too"
    );
    no_trace(&root, &[&c1, &c2]);
}

#[tokio::test]
async fn prepare_fails_when_target_appeared() {
    let (_t, p) = provider();
    let root = p.root().to_path_buf();
    let (c, out) = run(&p, "StageFile", &[("path", "t"), ("content", "mine")])
        .await
        .expect("stage");
    fs::write(root.join("t"), "someone else's").expect("foreign write");
    let (code, msg) = err_message(p.prepare(&done(&c, &out)).await);
    assert_eq!(code, E_ALREADY_EXISTS, "{msg}");
    assert!(msg.contains("appeared meanwhile"), "{msg}");
    // Commit would not replace it either.
    let (code, _) = err_message(p.commit(&done(&c, &out)).await);
    assert_eq!(code, E_ALREADY_EXISTS);
    // Abort removes only what was staged.
    undo(&p, &c, &out).await.expect("abort");
    assert_eq!(
        fs::read_to_string(root.join("t")).expect("read"),
        "someone else's"
    );
    no_trace(&root, &[&c]);
}

#[tokio::test]
async fn prepare_fails_when_staged_content_changed() {
    let (_t, p) = provider();
    let root = p.root().to_path_buf();
    let (c, out) = run(&p, "StageFile", &[("path", "t"), ("content", "abc")])
        .await
        .expect("stage");
    let staged: Vec<_> = all_entries(&root.join(STAGING_DIR))
        .into_iter()
        .filter(|e| e.ends_with("/item"))
        .collect();
    assert_eq!(staged.len(), 1, "{staged:?}");
    fs::write(root.join(STAGING_DIR).join(&staged[0]), "abd").expect("tamper");
    let (_, msg) = err_message(p.prepare(&done(&c, &out)).await);
    assert!(msg.contains("missing or was changed"), "{msg}");
    undo(&p, &c, &out).await.expect("abort");
    no_trace(&root, &[&c]);
}

#[tokio::test]
async fn stage_refuses_existing_target_and_missing_parent() {
    let (_t, p) = provider();
    run(&p, "CreateFolder", &[("path", "x")])
        .await
        .expect("mkdir");
    let (code, _) = err_message(run(&p, "StageFolder", &[("path", "x")]).await);
    assert_eq!(code, E_ALREADY_EXISTS);
    let (_, msg) = err_message(run(&p, "StageFile", &[("path", "no/such/f")]).await);
    assert!(msg.contains("does not exist"), "{msg}");
    no_trace(p.root(), &[]);
}

#[tokio::test]
async fn recover_staged_call() {
    let (_t, p) = provider();
    let root = p.root().to_path_buf();
    let (c, out) = run(&p, "StageFile", &[("path", "r"), ("content", "z")])
        .await
        .expect("stage");
    let rec = p.recover(&c).await.expect("recover").expect("applied");
    assert_eq!(Some(&rec), out.undo.as_ref());
    undo(
        &p,
        &c,
        &Outcome {
            execute_data: out.execute_data.clone(),
            undo: Some(rec),
        },
    )
    .await
    .expect("undo");
    no_trace(&root, &[&c]);
    let never = call(&p.namespace(), "StageFolder", &[("path", "q")]);
    assert_eq!(p.recover(&never).await.expect("recover"), None);
}
