//! DeleteFile, WriteFile with `overwrite`, and SetOwner of the filesystem provider: undo
//! puts back exactly what was there (bytes, mode, owner), recovery tells applied from not
//! applied, and the sandbox rules (escapes, symlinks, hard links) hold for the new calls.

mod support;

use provisio_engine::data::Element;
use provisio_engine::provider::{Done, Preview, Provider};
use provisio_providers::filesystem::{FilesystemOptions, FilesystemProvider, IdRanges};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use support::{call, err_message, output, run, undo};

const E_INVALIDARG: u32 = 0x8007_0057;
const E_ACCESS_DENIED: u32 = 0x8007_0005;
const E_ALREADY_EXISTS: u32 = 0x8007_00B7;
const E_PATH_NOT_FOUND: u32 = 0x8007_0003;
const E_QUOTA: u32 = 0x8007_050F;

/// Content no text input could produce, to check restores byte for byte.
const OLD_BYTES: &[u8] = b"old\xff\x00\xfe content\r\n";

fn provider() -> (tempfile::TempDir, FilesystemProvider) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = FilesystemProvider::new(tmp.path().join("root")).expect("provider");
    (tmp, p)
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .expect("lstat")
        .permissions()
        .mode()
        & 0o7777
}

fn put(root: &Path, rel: &str, bytes: &[u8], mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(&p, bytes).expect("write");
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
}

async fn undo_with(p: &FilesystemProvider, c: &provisio_engine::provider::Call, record: Element) {
    p.undo(Done {
        state: provisio_engine::ProviderState::detached(),
        context: c.context.clone(),
        provider_context: c.provider_context.clone(),
        undo: record,
        execute_data: None,
    })
    .await
    .expect("undo");
}

fn is_root() -> bool {
    rustix_euid() == 0
}

fn rustix_euid() -> u32 {
    // The test's own effective uid, read independently of the provider: /proc/self/status.
    let status = fs::read_to_string("/proc/self/status").expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    line.split_whitespace()
        .nth(2)
        .expect("euid")
        .parse()
        .expect("number")
}

#[tokio::test]
async fn the_new_procedures_are_declared() {
    let (_t, p) = provider();
    let specs = p.procedures();
    let find = |n: &str| specs.iter().find(|s| s.name == n).expect(n);
    assert!(find("DeleteFile")
        .inputs
        .iter()
        .any(|i| i.name == "path" && i.required));
    assert!(find("WriteFile")
        .inputs
        .iter()
        .any(|i| i.name == "overwrite" && !i.required));
    let owner = find("SetOwner");
    for n in ["path", "user", "group"] {
        assert!(owner.inputs.iter().any(|i| i.name == n), "{n}");
    }
}

#[tokio::test]
async fn delete_file_keeps_it_for_undo_byte_for_byte() {
    let (_t, p) = provider();
    let root = p.root().to_path_buf();
    put(&root, "home/a.bin", OLD_BYTES, 0o600);
    let (c, out) = run(&p, "DeleteFile", &[("path", "home/a.bin")])
        .await
        .expect("delete");
    assert_eq!(output(&out, "deleted").as_deref(), Some("home/a.bin"));
    assert_eq!(
        output(&out, "bytes").as_deref(),
        Some(OLD_BYTES.len().to_string().as_str())
    );
    assert!(!root.join("home/a.bin").exists());
    // A retry of the same call (same key) reports the same success.
    let again = p.execute(c.clone()).await.expect("retry");
    assert_eq!(again.undo, out.undo);
    // Recovery sees the trash entry.
    assert_eq!(p.recover(&c).await.expect("recover"), out.undo);
    undo(&p, &c, &out).await.expect("undo");
    assert_eq!(fs::read(root.join("home/a.bin")).expect("read"), OLD_BYTES);
    assert_eq!(mode_of(&root.join("home/a.bin")), 0o600);
    undo(&p, &c, &out).await.expect("a second undo is a no-op");
    // A call never executed was not applied.
    let never = call(&p.namespace(), "DeleteFile", &[("path", "home/a.bin")]);
    assert_eq!(p.recover(&never).await.expect("recover"), None);
}

#[tokio::test]
async fn delete_file_refuses_what_is_not_its_own_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).expect("outside");
    fs::write(outside.join("secret"), "s").expect("secret");
    let p = FilesystemProvider::new(tmp.path().join("root")).expect("provider");
    let root = p.root().to_path_buf();
    fs::create_dir(root.join("dir")).expect("dir");
    put(&root, "real.txt", b"r", 0o644);
    std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
    std::os::unix::fs::symlink("real.txt", root.join("inlink.txt")).expect("symlink");
    fs::hard_link(outside.join("secret"), root.join("hard.txt")).expect("hard link");

    for (path, code, says) in [
        ("../outside/secret", E_INVALIDARG, "`..`"),
        ("/etc/passwd", E_INVALIDARG, "absolute"),
        ("link/secret", E_INVALIDARG, "outside the provider root"),
        (".provisio-trash/x", E_INVALIDARG, "reserved"),
        ("dir", E_INVALIDARG, "is a folder"),
        ("inlink.txt", E_INVALIDARG, "symlink"),
        ("hard.txt", E_ACCESS_DENIED, "hard links"),
        ("missing.txt", E_PATH_NOT_FOUND, "does not exist"),
    ] {
        let (c, msg) = err_message(run(&p, "DeleteFile", &[("path", path)]).await);
        assert_eq!(c, code, "{path}: {msg}");
        assert!(msg.contains(says), "{path}: {msg}");
    }
    assert_eq!(
        fs::read_to_string(outside.join("secret")).expect("read"),
        "s"
    );
    assert!(root.join("hard.txt").exists() && root.join("inlink.txt").exists());
    assert!(root.join("real.txt").exists());
    // Preview says what will happen, and that a missing file will fail.
    let c = call(&p.namespace(), "DeleteFile", &[("path", "real.txt")]);
    assert!(matches!(p.preview(&c).await, Ok(Preview::Change(s)) if s.contains("kept in trash")));
    let c = call(&p.namespace(), "DeleteFile", &[("path", "missing.txt")]);
    assert!(p.preview(&c).await.is_err());
}

#[tokio::test]
async fn overwrite_replaces_and_undo_restores_the_old_bytes_and_mode() {
    let (_t, p) = provider();
    let root = p.root().to_path_buf();
    put(&root, "site/index.html", OLD_BYTES, 0o640);
    let before_ino = fs::metadata(root.join("site/index.html"))
        .expect("meta")
        .ino();

    // Default: no overwrite, the file is untouched.
    let (code, msg) = err_message(
        run(
            &p,
            "WriteFile",
            &[("path", "site/index.html"), ("content", "new")],
        )
        .await,
    );
    assert_eq!(code, E_ALREADY_EXISTS, "{msg}");
    let c = call(
        &p.namespace(),
        "WriteFile",
        &[("path", "site/index.html"), ("content", "new")],
    );
    assert!(
        matches!(p.preview(&c).await, Ok(Preview::Fail(s)) if s.contains("overwrite: true")),
        "plan must not promise it"
    );

    let inputs = [
        ("path", "site/index.html"),
        ("content", "<h1>new</h1>"),
        ("overwrite", "true"),
    ];
    let c = call(&p.namespace(), "WriteFile", &inputs);
    assert!(matches!(p.preview(&c).await, Ok(Preview::Change(s)) if s.contains("replace file")));
    let out = p.execute(c.clone()).await.expect("overwrite");
    let f = root.join("site/index.html");
    assert_eq!(fs::read_to_string(&f).expect("read"), "<h1>new</h1>");
    assert_eq!(mode_of(&f), 0o640, "the old mode is kept");
    assert_ne!(fs::metadata(&f).expect("meta").ino(), before_ino);
    assert_eq!(output(&out, "bytes").as_deref(), Some("12"));
    assert_eq!(
        output(&out, "previousBytes").as_deref(),
        Some(OLD_BYTES.len().to_string().as_str())
    );
    assert!(
        !root.join(".provisio-staging").exists(),
        "no staging leftovers"
    );
    // Same call again (a retry): same outcome, nothing replaced twice.
    let again = p.execute(c.clone()).await.expect("retry");
    assert_eq!(again.undo, out.undo);
    assert_eq!(p.recover(&c).await.expect("recover"), out.undo);

    undo(&p, &c, &out).await.expect("undo");
    assert_eq!(fs::read(&f).expect("read"), OLD_BYTES, "byte for byte");
    assert_eq!(mode_of(&f), 0o640);
    assert_eq!(
        fs::metadata(&f).expect("meta").ino(),
        before_ino,
        "the same file"
    );
    undo(&p, &c, &out).await.expect("a second undo is a no-op");
    assert_eq!(fs::read(&f).expect("read"), OLD_BYTES);
}

#[tokio::test]
async fn overwrite_with_a_mode_and_of_a_missing_file() {
    let (_t, p) = provider();
    let root = p.root().to_path_buf();
    put(&root, "d/old.txt", b"old", 0o600);
    let (c, out) = run(
        &p,
        "WriteFile",
        &[
            ("path", "d/old.txt"),
            ("content", "x"),
            ("mode", "0644"),
            ("overwrite", "1"),
        ],
    )
    .await
    .expect("overwrite");
    assert_eq!(mode_of(&root.join("d/old.txt")), 0o644);
    undo(&p, &c, &out).await.expect("undo");
    assert_eq!(mode_of(&root.join("d/old.txt")), 0o600);

    // No file there: an ordinary create, whose undo removes it.
    let (c, out) = run(
        &p,
        "WriteFile",
        &[
            ("path", "d/new.txt"),
            ("content", "n"),
            ("overwrite", "true"),
        ],
    )
    .await
    .expect("create");
    assert_eq!(output(&out, "previousBytes"), None);
    undo(&p, &c, &out).await.expect("undo");
    assert!(!root.join("d/new.txt").exists());
}

#[tokio::test]
async fn overwrite_refuses_links_and_folders() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("secret");
    fs::write(&outside, "s").expect("secret");
    let p = FilesystemProvider::new(tmp.path().join("root")).expect("provider");
    let root = p.root().to_path_buf();
    fs::hard_link(&outside, root.join("hard.txt")).expect("hard link");
    put(&root, "real.txt", b"r", 0o644);
    std::os::unix::fs::symlink("real.txt", root.join("alias.txt")).expect("symlink");
    fs::create_dir(root.join("dir")).expect("dir");
    for (path, code) in [
        ("hard.txt", E_ACCESS_DENIED),
        ("alias.txt", E_INVALIDARG),
        ("dir", E_INVALIDARG),
    ] {
        let (c, msg) = err_message(
            run(
                &p,
                "WriteFile",
                &[("path", path), ("content", "x"), ("overwrite", "true")],
            )
            .await,
        );
        assert_eq!(c, code, "{path}: {msg}");
    }
    assert_eq!(fs::read_to_string(&outside).expect("read"), "s");
    assert_eq!(
        fs::read_to_string(root.join("real.txt")).expect("read"),
        "r"
    );
}

/// The quota check of an overwrite counts only the growth: the old content leaves.
#[tokio::test]
async fn overwrite_accounts_the_size_difference_against_the_quota() {
    let (_t, p) = provider();
    let root = p.root().to_path_buf();
    run(&p, "CreateFolder", &[("path", "q")])
        .await
        .expect("mkdir");
    run(&p, "SetQuota", &[("path", "q"), ("megabytes", "1")])
        .await
        .expect("quota");
    put(&root, "q/big.txt", &vec![b'a'; 900 * 1024], 0o644);
    let bigger = "b".repeat(1000 * 1024);
    // 900 KiB → 1000 KiB: 100 KiB more, fits in 1 MiB.
    run(
        &p,
        "WriteFile",
        &[
            ("path", "q/big.txt"),
            ("content", &bigger),
            ("overwrite", "true"),
        ],
    )
    .await
    .expect("growth within the quota");
    // The same content as a second file would not fit.
    let (code, msg) = err_message(
        run(
            &p,
            "WriteFile",
            &[("path", "q/other.txt"), ("content", &bigger)],
        )
        .await,
    );
    assert_eq!(code, E_QUOTA, "{msg}");
    // 1000 KiB → 1100 KiB would pass 1 MiB.
    let too_big = "c".repeat(1100 * 1024);
    let (code, msg) = err_message(
        run(
            &p,
            "WriteFile",
            &[
                ("path", "q/big.txt"),
                ("content", &too_big),
                ("overwrite", "true"),
            ],
        )
        .await,
    );
    assert_eq!(code, E_QUOTA, "{msg}");
    assert_eq!(
        fs::read_to_string(root.join("q/big.txt")).expect("read"),
        bigger
    );
}

fn owner_provider(options: FilesystemOptions) -> (tempfile::TempDir, FilesystemProvider) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = FilesystemProvider::with_options(tmp.path().join("root"), options).expect("provider");
    (tmp, p)
}

/// As root: owner and group by name go to `nobody:nogroup` (65534) and undo restores the
/// previous owner and the setuid bit `chown` cleared. Not root: a clear refusal.
#[tokio::test]
async fn set_owner_by_name_and_undo_or_a_clear_refusal() {
    let (_t, p) = owner_provider(FilesystemOptions::default());
    let root = p.root().to_path_buf();
    put(&root, "t/run.sh", b"#!/bin/sh\n", 0o4755);
    let before = fs::metadata(root.join("t/run.sh")).expect("meta");
    let r = run(
        &p,
        "SetOwner",
        &[
            ("path", "t/run.sh"),
            ("user", "nobody"),
            ("group", "nogroup"),
        ],
    )
    .await;
    if !is_root() {
        let (code, msg) = err_message(r);
        assert_eq!(code, E_ACCESS_DENIED, "{msg}");
        assert!(
            msg.contains("not permitted") && msg.contains("root"),
            "{msg}"
        );
        let after = fs::metadata(root.join("t/run.sh")).expect("meta");
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        return;
    }
    let (c, out) = r.expect("chown");
    let m = fs::metadata(root.join("t/run.sh")).expect("meta");
    assert_eq!((m.uid(), m.gid()), (65534, 65534));
    assert_eq!(output(&out, "uid").as_deref(), Some("65534"));
    assert_eq!(
        output(&out, "previousUid").as_deref(),
        Some(before.uid().to_string().as_str())
    );
    assert_eq!(p.recover(&c).await.expect("recover"), out.undo);
    undo(&p, &c, &out).await.expect("undo");
    let m = fs::metadata(root.join("t/run.sh")).expect("meta");
    assert_eq!((m.uid(), m.gid()), (before.uid(), before.gid()));
    assert_eq!(mode_of(&root.join("t/run.sh")), 0o4755, "setuid back");

    // A folder, numeric ids, group only.
    fs::create_dir(root.join("t/home")).expect("mkdir");
    let (c, out) = run(&p, "SetOwner", &[("path", "t/home"), ("group", "65534")])
        .await
        .expect("chgrp");
    let m = fs::metadata(root.join("t/home")).expect("meta");
    assert_eq!((m.uid(), m.gid()), (before.uid(), 65534));
    let rec = p.recover(&c).await.expect("recover").expect("applied");
    assert_eq!(Some(&rec), out.undo.as_ref());
    undo_with(&p, &c, rec).await;
    assert_eq!(
        fs::metadata(root.join("t/home")).expect("meta").gid(),
        before.gid()
    );
}

#[tokio::test]
async fn set_owner_refuses_bad_names_links_and_ids_outside_the_allow_list() {
    let options = FilesystemOptions {
        allowed_uids: Some(IdRanges::parse(&["1000-1999"]).expect("ranges")),
        allowed_gids: Some(IdRanges::parse(&["1000-1999", "65534"]).expect("ranges")),
        ..FilesystemOptions::default()
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("secret");
    fs::write(&outside, "s").expect("secret");
    let p = FilesystemProvider::with_options(tmp.path().join("root"), options).expect("provider");
    let root = p.root().to_path_buf();
    put(&root, "f.txt", b"f", 0o644);
    fs::hard_link(&outside, root.join("hard.txt")).expect("hard link");
    std::os::unix::fs::symlink("f.txt", root.join("alias.txt")).expect("symlink");
    let owner_before = fs::metadata(root.join("f.txt")).expect("meta").uid();
    for (inputs, code, says) in [
        (
            vec![("path", "f.txt"), ("user", "0")],
            E_ACCESS_DENIED,
            "allowed_uids = 1000-1999",
        ),
        (
            vec![("path", "f.txt"), ("user", "nobody")],
            E_ACCESS_DENIED,
            "id 65534 is not allowed",
        ),
        (
            vec![("path", "f.txt"), ("group", "0")],
            E_ACCESS_DENIED,
            "allowed_gids",
        ),
        (
            vec![("path", "f.txt"), ("user", "no-such-user-xyz")],
            E_INVALIDARG,
            "no user named",
        ),
        (
            vec![("path", "f.txt")],
            E_INVALIDARG,
            "needs `user`, `group` or both",
        ),
        (
            vec![("path", "hard.txt"), ("user", "1000")],
            E_ACCESS_DENIED,
            "hard links",
        ),
        (
            vec![("path", "alias.txt"), ("user", "1000")],
            E_INVALIDARG,
            "symlink",
        ),
        (
            vec![("path", "../secret"), ("user", "1000")],
            E_INVALIDARG,
            "`..`",
        ),
        (
            vec![("path", "gone"), ("user", "1000")],
            E_PATH_NOT_FOUND,
            "does not exist",
        ),
    ] {
        let (c, msg) = err_message(run(&p, "SetOwner", &inputs).await);
        assert_eq!(c, code, "{inputs:?}: {msg}");
        assert!(msg.contains(says), "{inputs:?}: {msg}");
    }
    assert_eq!(
        fs::metadata(root.join("f.txt")).expect("meta").uid(),
        owner_before
    );
    assert_eq!(fs::metadata(&outside).expect("meta").uid(), owner_before);
}
