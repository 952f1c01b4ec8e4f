//! Integration tests of the filesystem provider: every procedure, exact undo, preview,
//! and that no input can reach outside the sandbox root.

mod support;

use provisio_engine::provider::{Done, Preview, Provider, ProviderError};
use provisio_providers::filesystem::FilesystemProvider;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use support::{call, err_message, output, run, undo};

const E_INVALIDARG: u32 = ProviderError::E_INVALIDARG;

fn provider() -> (tempfile::TempDir, FilesystemProvider) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = FilesystemProvider::new(tmp.path().join("root")).expect("provider");
    (tmp, p)
}

/// The user-visible tree: path → "dir <mode>" or "file <mode> <content>" or "link <target>".
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).expect("read_dir") {
            let e = e.expect("entry");
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .expect("prefix")
                .display()
                .to_string();
            if rel.starts_with(".provisio-") {
                continue;
            }
            let m = fs::symlink_metadata(&path).expect("lstat");
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("link {}", fs::read_link(&path).expect("link").display()),
                );
            } else if m.is_dir() {
                out.insert(rel, format!("dir {mode:o}"));
                walk(root, &path, out);
            } else {
                let content = fs::read_to_string(&path).expect("read");
                out.insert(rel, format!("file {mode:o} {content}"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[tokio::test]
async fn new_creates_missing_root() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("a/b/c");
    let p = FilesystemProvider::new(root.clone()).expect("provider");
    assert!(root.is_dir());
    assert_eq!(p.name(), "Filesystem");
    assert_eq!(p.namespace(), "Filesystem Provider");
    let names: Vec<String> = p.procedures().into_iter().map(|s| s.name).collect();
    for n in [
        "CreateFolder",
        "DeleteFolder",
        "WriteFile",
        "SetQuota",
        "GetUsage",
        "MoveFolder",
    ] {
        assert!(names.contains(&n.to_string()), "{n}");
    }
}

#[tokio::test]
async fn create_folder_with_parents_and_mode_then_undo() {
    let (_t, p) = provider();
    let before = tree(p.root());
    let (c, out) = run(
        &p,
        "CreateFolder",
        &[("path", "tenants/contoso/home"), ("mode", "0750")],
    )
    .await
    .expect("create");
    assert_eq!(
        output(&out, "created").as_deref(),
        Some("tenants/contoso/home")
    );
    let home = p.root().join("tenants/contoso/home");
    assert!(home.is_dir());
    assert_eq!(
        fs::metadata(&home).expect("meta").permissions().mode() & 0o7777,
        0o750
    );
    undo(&p, &c, &out).await.expect("undo");
    assert_eq!(
        tree(p.root()),
        before,
        "undo removes the folder and the parents it made"
    );
    // Undo is idempotent.
    undo(&p, &c, &out).await.expect("undo again");
}

#[tokio::test]
async fn create_folder_keeps_existing_parents_on_undo() {
    let (_t, p) = provider();
    fs::create_dir(p.root().join("tenants")).expect("mkdir");
    let before = tree(p.root());
    let (c, out) = run(&p, "CreateFolder", &[("path", "tenants/fabrikam")])
        .await
        .expect("create");
    undo(&p, &c, &out).await.expect("undo");
    assert_eq!(tree(p.root()), before);
}

#[tokio::test]
async fn create_folder_twice_is_already_exists() {
    let (_t, p) = provider();
    run(&p, "CreateFolder", &[("path", "x")])
        .await
        .expect("create");
    let (code, msg) = err_message(run(&p, "CreateFolder", &[("path", "x")]).await);
    assert_eq!(code, 0x8007_00B7);
    assert!(msg.contains("already exists"), "{msg}");
}

#[tokio::test]
async fn create_folder_bad_mode_is_rejected() {
    let (_t, p) = provider();
    for mode in ["0789", "rwx", "077777", "-1"] {
        let (code, msg) =
            err_message(run(&p, "CreateFolder", &[("path", "x"), ("mode", mode)]).await);
        assert_eq!(code, E_INVALIDARG, "{mode}");
        assert!(msg.contains("`mode`"), "{msg}");
    }
    assert!(!p.root().join("x").exists());
}

#[tokio::test]
async fn undo_create_refuses_non_empty_folder() {
    let (_t, p) = provider();
    let (c, out) = run(&p, "CreateFolder", &[("path", "home")])
        .await
        .expect("create");
    fs::write(p.root().join("home/notes.txt"), "keep me").expect("write");
    let (_, msg) = err_message(undo(&p, &c, &out).await);
    assert!(
        msg.contains("not empty") && msg.contains("notes.txt"),
        "{msg}"
    );
    assert!(p.root().join("home/notes.txt").exists());
}

#[tokio::test]
async fn delete_folder_needs_recurse_and_undo_restores_content() {
    let (_t, p) = provider();
    let root = p.root().to_path_buf();
    fs::create_dir_all(root.join("home/docs")).expect("mkdir");
    fs::write(root.join("home/docs/a.txt"), "alpha").expect("write");
    fs::write(root.join("home/b.txt"), "beta").expect("write");
    fs::set_permissions(root.join("home/b.txt"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let before = tree(&root);

    let (code, msg) = err_message(run(&p, "DeleteFolder", &[("path", "home")]).await);
    assert_eq!(code, 0x8007_0091);
    assert!(
        msg.contains("not empty") && msg.contains("recurse"),
        "{msg}"
    );
    assert_eq!(tree(&root), before);

    let (c, out) = run(&p, "DeleteFolder", &[("path", "home"), ("recurse", "true")])
        .await
        .expect("delete");
    assert_eq!(output(&out, "deleted").as_deref(), Some("home"));
    assert!(!root.join("home").exists());
    // The trash is hidden from inputs.
    let (code, _) = err_message(run(&p, "GetUsage", &[("path", ".provisio-trash")]).await);
    assert_eq!(code, E_INVALIDARG);

    undo(&p, &c, &out).await.expect("undo");
    assert_eq!(tree(&root), before);
    undo(&p, &c, &out).await.expect("undo is idempotent");
}

#[tokio::test]
async fn delete_folder_retry_of_same_call_succeeds() {
    let (_t, p) = provider();
    fs::create_dir(p.root().join("empty")).expect("mkdir");
    let c = call("Filesystem Provider", "DeleteFolder", &[("path", "empty")]);
    let first = p.execute(c.clone()).await.expect("first");
    let second = p
        .execute(c.clone())
        .await
        .expect("retry after the move happened");
    assert_eq!(first.undo, second.undo);
    undo(&p, &c, &first).await.expect("undo");
    assert!(p.root().join("empty").is_dir());
}

#[tokio::test]
async fn delete_missing_folder_or_file_fails() {
    let (_t, p) = provider();
    let (code, _) = err_message(run(&p, "DeleteFolder", &[("path", "nope")]).await);
    assert_eq!(code, 0x8007_0003);
    fs::write(p.root().join("f"), "x").expect("write");
    let (_, msg) = err_message(run(&p, "DeleteFolder", &[("path", "f")]).await);
    assert!(msg.contains("not a folder"), "{msg}");
}

#[tokio::test]
async fn write_file_then_undo() {
    let (_t, p) = provider();
    run(&p, "CreateFolder", &[("path", "home")])
        .await
        .expect("mkdir");
    let before = tree(p.root());
    let (c, out) = run(
        &p,
        "WriteFile",
        &[
            ("path", "home/welcome.txt"),
            ("content", "Welcome, Contoso!\n"),
            ("mode", "0640"),
        ],
    )
    .await
    .expect("write");
    assert_eq!(output(&out, "written").as_deref(), Some("home/welcome.txt"));
    assert_eq!(output(&out, "bytes").as_deref(), Some("18"));
    let f = p.root().join("home/welcome.txt");
    assert_eq!(fs::read_to_string(&f).expect("read"), "Welcome, Contoso!\n");
    assert_eq!(
        fs::metadata(&f).expect("meta").permissions().mode() & 0o7777,
        0o640
    );

    let (code, _) = err_message(
        run(
            &p,
            "WriteFile",
            &[("path", "home/welcome.txt"), ("content", "other")],
        )
        .await,
    );
    assert_eq!(code, 0x8007_00B7);
    assert_eq!(fs::read_to_string(&f).expect("read"), "Welcome, Contoso!\n");

    let (code, msg) = err_message(run(&p, "WriteFile", &[("path", "nodir/x.txt")]).await);
    assert_eq!(code, 0x8007_0003, "{msg}");

    undo(&p, &c, &out).await.expect("undo");
    assert_eq!(tree(p.root()), before);
}

#[tokio::test]
async fn set_quota_get_usage_and_undo_restores_previous() {
    let (_t, p) = provider();
    run(&p, "CreateFolder", &[("path", "home")])
        .await
        .expect("mkdir");
    fs::create_dir(p.root().join("home/sub")).expect("mkdir");
    fs::write(p.root().join("home/a"), vec![0u8; 1000]).expect("write");
    fs::write(p.root().join("home/sub/b"), vec![0u8; 24]).expect("write");

    let (_, usage) = run(&p, "GetUsage", &[("path", "home")])
        .await
        .expect("usage");
    assert_eq!(output(&usage, "bytes").as_deref(), Some("1024"));
    assert_eq!(output(&usage, "quotaMegabytes"), None);
    assert_eq!(output(&usage, "overQuota").as_deref(), Some("false"));
    assert!(usage.undo.is_none());

    let (c1, o1) = run(&p, "SetQuota", &[("path", "home"), ("megabytes", "100")])
        .await
        .expect("q1");
    assert_eq!(output(&o1, "quotaMegabytes").as_deref(), Some("100"));
    let (c2, o2) = run(&p, "SetQuota", &[("path", "home/"), ("megabytes", "0")])
        .await
        .expect("q2");
    assert_eq!(
        output(&o2, "previousQuotaMegabytes").as_deref(),
        Some("100")
    );

    let (_, usage) = run(&p, "GetUsage", &[("path", "home")])
        .await
        .expect("usage");
    assert_eq!(output(&usage, "quotaMegabytes").as_deref(), Some("0"));
    assert_eq!(output(&usage, "overQuota").as_deref(), Some("true"));

    undo(&p, &c2, &o2).await.expect("undo q2");
    let (_, usage) = run(&p, "GetUsage", &[("path", "home")])
        .await
        .expect("usage");
    assert_eq!(output(&usage, "quotaMegabytes").as_deref(), Some("100"));
    assert_eq!(output(&usage, "overQuota").as_deref(), Some("false"));

    undo(&p, &c1, &o1).await.expect("undo q1");
    let (_, usage) = run(&p, "GetUsage", &[("path", "home")])
        .await
        .expect("usage");
    assert_eq!(output(&usage, "quotaMegabytes"), None);
    let state = fs::read_to_string(p.root().join(".provisio-state/quotas.json")).expect("state");
    assert_eq!(state.trim(), "{}");

    for bad in ["-1", "ten", "1.5", ""] {
        let (code, _) =
            err_message(run(&p, "SetQuota", &[("path", "home"), ("megabytes", bad)]).await);
        assert_eq!(code, E_INVALIDARG, "{bad}");
    }
    let (code, _) = err_message(run(&p, "SetQuota", &[("path", "nope"), ("megabytes", "1")]).await);
    assert_eq!(code, 0x8007_0003);

    // The whole root, without the provider's own folders.
    let (_, usage) = run(&p, "GetUsage", &[("path", ".")]).await.expect("usage");
    assert_eq!(output(&usage, "bytes").as_deref(), Some("1024"));
}

#[tokio::test]
async fn move_folder_moves_quota_and_undo_moves_back() {
    let (_t, p) = provider();
    run(&p, "CreateFolder", &[("path", "old/home")])
        .await
        .expect("mkdir");
    fs::write(p.root().join("old/home/f"), "data").expect("write");
    run(&p, "CreateFolder", &[("path", "new")])
        .await
        .expect("mkdir");
    run(&p, "SetQuota", &[("path", "old/home"), ("megabytes", "5")])
        .await
        .expect("quota");
    let before = tree(p.root());

    let (c, out) = run(
        &p,
        "MoveFolder",
        &[("from", "old/home"), ("to", "new/home")],
    )
    .await
    .expect("move");
    assert_eq!(output(&out, "moved").as_deref(), Some("new/home"));
    assert_eq!(
        fs::read_to_string(p.root().join("new/home/f")).expect("read"),
        "data"
    );
    let (_, usage) = run(&p, "GetUsage", &[("path", "new/home")])
        .await
        .expect("usage");
    assert_eq!(output(&usage, "quotaMegabytes").as_deref(), Some("5"));

    let (code, _) =
        err_message(run(&p, "MoveFolder", &[("from", "new"), ("to", "new/home/x")]).await);
    assert_eq!(code, E_INVALIDARG);
    let (code, _) =
        err_message(run(&p, "MoveFolder", &[("from", "new/home"), ("to", "old")]).await);
    assert_eq!(code, 0x8007_00B7);

    undo(&p, &c, &out).await.expect("undo");
    assert_eq!(tree(p.root()), before);
    let (_, usage) = run(&p, "GetUsage", &[("path", "old/home")])
        .await
        .expect("usage");
    assert_eq!(output(&usage, "quotaMegabytes").as_deref(), Some("5"));
    undo(&p, &c, &out).await.expect("undo is idempotent");
}

#[tokio::test]
async fn preview_says_what_would_change() {
    let (_t, p) = provider();
    let c = call("Filesystem Provider", "CreateFolder", &[("path", "a")]);
    assert_eq!(
        p.preview(&c).await,
        Ok(Preview::Change("create folder a".into()))
    );
    assert!(!p.root().join("a").exists(), "preview changes nothing");
    p.execute(c.clone()).await.expect("create");
    // CreateFolder of an existing folder and DeleteFolder of a missing one fail.
    assert_eq!(
        p.preview(&c).await,
        Ok(Preview::Fail("folder a already exists".into()))
    );
    let d = call("Filesystem Provider", "DeleteFolder", &[("path", "zz")]);
    assert!(matches!(p.preview(&d).await, Ok(Preview::Fail(_))));
    let d = call("Filesystem Provider", "DeleteFolder", &[("path", "a")]);
    assert!(matches!(p.preview(&d).await, Ok(Preview::Update(_))));
    let w = call("Filesystem Provider", "WriteFile", &[("path", "a/f")]);
    assert!(matches!(p.preview(&w).await, Ok(Preview::Change(_))));
    let bad = call("Filesystem Provider", "CreateFolder", &[("path", "../a")]);
    assert!(p.preview(&bad).await.is_err());
}

#[tokio::test]
async fn two_phase_create_folder() {
    let (_t, p) = provider();
    let (c, out) = run(&p, "CreateFolder", &[("path", "tp")])
        .await
        .expect("create");
    let done = Done {
        state: provisio_engine::ProviderState::detached(),
        context: c.context.clone(),
        provider_context: c.provider_context.clone(),
        undo: out.undo.clone().expect("undo"),
        execute_data: None,
    };
    p.prepare(&done).await.expect("prepare");
    p.commit(&done).await.expect("commit");
    fs::remove_dir(p.root().join("tp")).expect("rmdir");
    assert!(p.prepare(&done).await.is_err());
}

#[tokio::test]
async fn unknown_procedure_and_missing_inputs_are_errors() {
    let (_t, p) = provider();
    let (code, _) = err_message(run(&p, "FormatDisk", &[]).await);
    assert_eq!(code, E_INVALIDARG);
    let (code, msg) = err_message(run(&p, "CreateFolder", &[]).await);
    assert_eq!(code, E_INVALIDARG);
    assert!(msg.contains("`path`"), "{msg}");
}

#[tokio::test]
async fn escapes_are_rejected_and_nothing_is_created_outside() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).expect("outside");
    fs::write(outside.join("secret"), "s").expect("secret");
    let p = FilesystemProvider::new(tmp.path().join("root")).expect("provider");
    let root = p.root().to_path_buf();
    std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
    std::os::unix::fs::symlink("../outside", root.join("rel-link")).expect("symlink");
    fs::create_dir(root.join("real")).expect("real");
    std::os::unix::fs::symlink("real", root.join("inlink")).expect("symlink");
    let outside_before = tree(&outside);

    let bad_paths = [
        "../x",
        "/etc",
        "/tmp/x",
        "a/../../x",
        "a/..",
        "..",
        "x\0y",
        "",
        "   ",
        "link",
        "link/sub",
        "link/sub/deeper",
        "rel-link/x",
        ".provisio-trash/x",
        ".provisio-state",
        "a\nb",
    ];
    for bad in bad_paths {
        for (proc_, field, inputs) in [
            ("CreateFolder", "path", vec![("path", bad)]),
            ("WriteFile", "path", vec![("path", bad), ("content", "x")]),
            (
                "DeleteFolder",
                "path",
                vec![("path", bad), ("recurse", "1")],
            ),
            ("SetQuota", "path", vec![("path", bad), ("megabytes", "1")]),
            ("GetUsage", "path", vec![("path", bad)]),
            ("MoveFolder", "from", vec![("from", bad), ("to", "moved")]),
            ("MoveFolder", "to", vec![("from", "real"), ("to", bad)]),
        ] {
            if proc_ == "GetUsage" && bad.trim().is_empty() {
                // still rejected (empty), checked below
            }
            let r = run(&p, proc_, &inputs).await;
            let (code, msg) = err_message(r);
            assert_eq!(code, E_INVALIDARG, "{proc_} {bad:?}: {msg}");
            assert!(
                msg.contains(&format!("`{field}`")),
                "{proc_} {bad:?}: {msg}"
            );
        }
    }
    assert_eq!(
        tree(&outside),
        outside_before,
        "nothing changed outside the root"
    );
    assert!(!tmp.path().join("x").exists());
    assert!(root.join("real").is_dir(), "the move source is untouched");
    assert!(!root.join("moved").exists());

    // A symlink that stays inside the root is fine.
    run(&p, "CreateFolder", &[("path", "inlink/new")])
        .await
        .expect("in-root symlink");
    assert!(root.join("real/new").is_dir());
}

/// Two calls creating folders under the same missing parent at once (two transactions side
/// by side, as a daemon's workers run them) both succeed: the one that loses the race to
/// make the parent finds it made, and its undo leaves the parent to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_under_one_missing_parent_both_succeed() {
    let (_tmp, p) = provider();
    let p = std::sync::Arc::new(p);
    for round in 0..200 {
        let (a, b) = (format!("t{round}/a"), format!("t{round}/b"));
        let (pa, pb) = (p.clone(), p.clone());
        let first = tokio::spawn(async move { run(&*pa, "CreateFolder", &[("path", &a)]).await });
        let second = tokio::spawn(async move { run(&*pb, "CreateFolder", &[("path", &b)]).await });
        let (first, second) = (first.await.unwrap(), second.await.unwrap());
        assert!(
            first.is_ok() && second.is_ok(),
            "round {round}: {:?} / {:?}",
            first.err(),
            second.err()
        );
    }
}
