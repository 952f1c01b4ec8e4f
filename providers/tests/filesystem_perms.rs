//! SetPermissions of the filesystem provider: mode bits and POSIX ACLs checked with the
//! independent `getfacl`/`setfacl` (Debian package `acl`, installed by
//! scripts/ensure-tools), exact undo, preview, and refused inputs.

mod support;

use provisio_engine::provider::{Preview, Provider, ProviderError};
use provisio_providers::filesystem::{FilesystemOptions, FilesystemProvider};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use support::{call, err_message, output, run, undo};

const E_INVALIDARG: u32 = ProviderError::E_INVALIDARG;

fn provider() -> (tempfile::TempDir, FilesystemProvider) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = FilesystemProvider::new(tmp.path().join("root")).expect("provider");
    (tmp, p)
}

/// `getfacl -n -c -p` as entry lines, `#effective` comments dropped; `None` when the tool
/// is missing.
fn getfacl(path: &Path) -> Option<Vec<String>> {
    let out = Command::new("getfacl")
        .args(["-n", "-c", "-p"])
        .arg(path)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "getfacl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
    )
}

/// True when `getfacl`/`setfacl` are installed and the file system under `dir` takes ACLs;
/// otherwise prints why the test is skipped.
fn acl_ready(dir: &Path) -> bool {
    let probe = dir.join("acl-probe");
    fs::write(&probe, b"").expect("probe");
    let res = Command::new("setfacl")
        .args(["-m", "u:4321:r"])
        .arg(&probe)
        .output();
    let _ = fs::remove_file(&probe);
    match res {
        Err(_) => {
            eprintln!("SKIPPED: setfacl/getfacl not installed (run scripts/ensure-tools)");
            false
        }
        Ok(o) if !o.status.success() => {
            eprintln!(
                "SKIPPED: the test file system does not support POSIX ACLs: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            false
        }
        Ok(_) => true,
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .expect("lstat")
        .permissions()
        .mode()
        & 0o7777
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn mode_and_acl_on_file_then_undo_restores_exactly() {
    let (t, p) = provider();
    if !acl_ready(t.path()) {
        return;
    }
    let root = p.root().to_path_buf();
    run(&p, "CreateFolder", &[("path", "d")])
        .await
        .expect("mkdir");
    run(
        &p,
        "WriteFile",
        &[("path", "d/f"), ("content", "x"), ("mode", "0644")],
    )
    .await
    .expect("write");
    let file = root.join("d/f");
    let before = getfacl(&file).expect("getfacl");
    assert_eq!(before, lines(&["user::rw-", "group::r--", "other::r--"]));

    let (c, out) = run(
        &p,
        "SetPermissions",
        &[
            ("path", "d/f"),
            ("mode", "0640"),
            ("acl", "user:1001:rwx,group:2000:r-x"),
        ],
    )
    .await
    .expect("set");
    assert_eq!(
        getfacl(&file).expect("getfacl"),
        lines(&[
            "user::rw-",
            "user:1001:rwx",
            "group::r--",
            "group:2000:r-x",
            "mask::rwx",
            "other::---"
        ])
    );
    // With an extended ACL the group bits show the mask.
    assert_eq!(mode_of(&file), 0o670);
    assert_eq!(output(&out, "appliedMode").as_deref(), Some("0670"));
    assert_eq!(
        output(&out, "appliedAcl").as_deref(),
        Some("user::rw-,user:1001:rwx,group::r--,group:2000:r-x,mask::rwx,other::---")
    );
    assert_eq!(output(&out, "appliedDefaultAcl").as_deref(), Some("none"));

    undo(&p, &c, &out).await.expect("undo");
    assert_eq!(getfacl(&file).expect("getfacl"), before);
    assert_eq!(mode_of(&file), 0o644);
    undo(&p, &c, &out).await.expect("undo is idempotent");
    assert_eq!(getfacl(&file).expect("getfacl"), before);
}

#[tokio::test]
async fn default_acl_on_folder_and_names_from_etc_files() {
    let (t, p) = provider();
    if !acl_ready(t.path()) {
        return;
    }
    let root = p.root().to_path_buf();
    run(&p, "CreateFolder", &[("path", "shared"), ("mode", "0750")])
        .await
        .expect("mkdir");
    let dir = root.join("shared");
    let (c, out) = run(
        &p,
        "SetPermissions",
        &[
            ("path", "shared"),
            // Space/newline separators, short tags, a name (root is in /etc/group), an
            // explicit mask and default entries.
            ("acl", "g:root:rx\nm::rx default:user:1001:rwx d:other::---"),
        ],
    )
    .await
    .expect("set");
    assert_eq!(
        getfacl(&dir).expect("getfacl"),
        lines(&[
            "user::rwx",
            "group::r-x",
            "group:0:r-x",
            "mask::r-x",
            "other::---",
            "default:user::rwx",
            "default:user:1001:rwx",
            "default:group::r-x",
            "default:mask::rwx",
            "default:other::---",
        ])
    );
    // The default ACL is inherited by new files (an independent check that the kernel
    // took the attribute as a default ACL).
    run(&p, "WriteFile", &[("path", "shared/new"), ("content", "")])
        .await
        .expect("write");
    let inherited = getfacl(&root.join("shared/new")).expect("getfacl");
    assert!(
        inherited.contains(&"user:1001:rwx".to_string()),
        "{inherited:?}"
    );
    fs::remove_file(root.join("shared/new")).expect("rm");

    undo(&p, &c, &out).await.expect("undo");
    assert_eq!(
        getfacl(&dir).expect("getfacl"),
        lines(&["user::rwx", "group::r-x", "other::---"])
    );
    assert_eq!(mode_of(&dir), 0o750);
}

#[tokio::test]
async fn none_removes_acls_and_undo_puts_the_foreign_acl_back() {
    let (t, p) = provider();
    if !acl_ready(t.path()) {
        return;
    }
    let root = p.root().to_path_buf();
    run(&p, "CreateFolder", &[("path", "d")])
        .await
        .expect("mkdir");
    let dir = root.join("d");
    // Set up with the independent tool, including a sticky/setgid mode.
    let ok = Command::new("setfacl")
        .args(["-m", "u:1234:rwx,g:77:r,m::rx,d:u:1234:r-x"])
        .arg(&dir)
        .status()
        .expect("setfacl");
    assert!(ok.success());
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o3750)).expect("chmod");
    let before = getfacl(&dir).expect("getfacl");
    let before_mode = mode_of(&dir);

    let (c, out) = run(
        &p,
        "SetPermissions",
        &[
            ("path", "d"),
            ("mode", "0700"),
            ("acl", "none default:none"),
        ],
    )
    .await
    .expect("set");
    assert_eq!(
        getfacl(&dir).expect("getfacl"),
        lines(&["user::rwx", "group::r-x", "other::---"]),
        "mode applies first (to the mask), then `none` drops the extended entries"
    );
    assert_eq!(mode_of(&dir), 0o750);
    assert_eq!(output(&out, "appliedAcl").as_deref(), Some("none"));

    undo(&p, &c, &out).await.expect("undo");
    assert_eq!(getfacl(&dir).expect("getfacl"), before);
    assert_eq!(mode_of(&dir), before_mode);
}

#[tokio::test]
async fn mode_only_and_preview() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let options = FilesystemOptions {
        allow_special_modes: true,
        ..FilesystemOptions::default()
    };
    let p = FilesystemProvider::with_options(tmp.path().join("root"), options).expect("provider");
    let root = p.root().to_path_buf();
    run(&p, "CreateFolder", &[("path", "d"), ("mode", "0755")])
        .await
        .expect("mkdir");
    let preview = p
        .preview(&call(
            &p.namespace(),
            "SetPermissions",
            &[("path", "d"), ("mode", "0755")],
        ))
        .await
        .expect("preview");
    assert!(matches!(preview, Preview::NoChange(_)), "{preview:?}");
    let preview = p
        .preview(&call(
            &p.namespace(),
            "SetPermissions",
            &[("path", "d"), ("mode", "2700")],
        ))
        .await
        .expect("preview");
    assert!(
        matches!(&preview, Preview::Update(s) if s.contains("0755 → 2700")),
        "{preview:?}"
    );
    let (c, out) = run(&p, "SetPermissions", &[("path", "d"), ("mode", "2700")])
        .await
        .expect("set");
    assert_eq!(mode_of(&root.join("d")), 0o2700);
    undo(&p, &c, &out).await.expect("undo");
    assert_eq!(mode_of(&root.join("d")), 0o755);
}

#[tokio::test]
async fn refused_inputs() {
    let (_t, p) = provider();
    let root = p.root().to_path_buf();
    run(&p, "CreateFolder", &[("path", "d")])
        .await
        .expect("mkdir");
    run(&p, "WriteFile", &[("path", "d/f")])
        .await
        .expect("write");
    std::os::unix::fs::symlink("f", root.join("d/link")).expect("symlink");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("path", "d")], "needs `mode`, `acl`"),
        (&[("path", "d/link"), ("mode", "0700")], "symlink"),
        (&[("path", "../x"), ("mode", "0700")], "`..`"),
        (&[("path", ".provisio-state"), ("mode", "0700")], "reserved"),
        (&[("path", "d"), ("mode", "0999")], "octal"),
        (&[("path", "d"), ("acl", "user:1001:rwz")], "r, w, x"),
        (
            &[("path", "d"), ("acl", "user:no-such-user-x:r")],
            "/etc/passwd",
        ),
        (
            &[("path", "d/f"), ("acl", "default:user:1:r")],
            "only allowed on folders",
        ),
        (
            &[("path", "d"), ("acl", "none,user:1:r")],
            "cannot be combined",
        ),
    ];
    for (inputs, needle) in cases {
        let (code, msg) = err_message(run(&p, "SetPermissions", inputs).await);
        assert_eq!(code, E_INVALIDARG, "{inputs:?}: {msg}");
        assert!(msg.contains(needle), "{inputs:?}: {msg}");
    }
    let (_, msg) =
        err_message(run(&p, "SetPermissions", &[("path", "nope"), ("mode", "0700")]).await);
    assert!(msg.contains("does not exist"), "{msg}");
    // The symlink target was not touched.
    assert_eq!(mode_of(&root.join("d/f")), 0o644);
}

/// A hard link planted inside the root to a file outside it: SetPermissions must not change
/// the outside file (its mode stays 0600), whether asked for a mode or an ACL.
#[tokio::test]
async fn a_hard_link_to_a_file_outside_the_root_is_refused() {
    let (t, p) = provider();
    let root = p.root().to_path_buf();
    let outside = t.path().join("secret.txt");
    fs::write(&outside, "not yours").expect("write");
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::hard_link(&outside, root.join("planted")).expect("link");
    for inputs in [
        &[("path", "planted"), ("mode", "0644")][..],
        &[("path", "planted"), ("acl", "user:1001:r--")][..],
    ] {
        let (code, msg) = err_message(run(&p, "SetPermissions", inputs).await);
        assert_eq!(code, 0x8007_0005, "{msg}");
        assert!(msg.contains("2 hard links"), "{msg}");
        assert_eq!(mode_of(&outside), 0o600);
    }
    let preview = p
        .preview(&call(
            &p.namespace(),
            "SetPermissions",
            &[("path", "planted"), ("mode", "0644")],
        ))
        .await;
    assert!(preview.is_err(), "{preview:?}");
    // The same file with a single link is changed as usual.
    fs::remove_file(&outside).expect("unlink the outside name");
    run(
        &p,
        "SetPermissions",
        &[("path", "planted"), ("mode", "0644")],
    )
    .await
    .expect("one link");
    assert_eq!(mode_of(&root.join("planted")), 0o644);
}

/// setuid, setgid and sticky bits are refused in every `mode` input unless the provider
/// is configured to allow them.
#[tokio::test]
async fn special_modes_need_the_option() {
    let (_t, p) = provider();
    let root = p.root().to_path_buf();
    run(&p, "CreateFolder", &[("path", "d")])
        .await
        .expect("mkdir");
    run(&p, "WriteFile", &[("path", "d/f")])
        .await
        .expect("write");
    let before = mode_of(&root.join("d/f"));
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("SetPermissions", &[("path", "d/f"), ("mode", "4755")]),
        ("SetPermissions", &[("path", "d"), ("mode", "2775")]),
        ("SetPermissions", &[("path", "d"), ("mode", "1777")]),
        ("CreateFolder", &[("path", "e"), ("mode", "2770")]),
        ("WriteFile", &[("path", "d/g"), ("mode", "4755")]),
        ("StageFile", &[("path", "d/h"), ("mode", "6755")]),
        ("StageFolder", &[("path", "s"), ("mode", "1777")]),
    ];
    for (procedure, inputs) in cases {
        let (code, msg) = err_message(run(&p, procedure, inputs).await);
        assert_eq!(code, E_INVALIDARG, "{procedure}: {msg}");
        assert!(msg.contains("allow_special_modes"), "{procedure}: {msg}");
    }
    assert_eq!(mode_of(&root.join("d/f")), before);
    assert!(!root.join("e").exists() && !root.join("d/g").exists());

    let tmp = tempfile::tempdir().expect("tempdir");
    let options = FilesystemOptions {
        allow_special_modes: true,
        ..FilesystemOptions::default()
    };
    let allowed =
        FilesystemProvider::with_options(tmp.path().join("root"), options).expect("provider");
    run(&allowed, "WriteFile", &[("path", "f"), ("mode", "4755")])
        .await
        .expect("allowed");
    assert_eq!(mode_of(&allowed.root().join("f")), 0o4755);
}

/// SetDirectoryAttributes `security` (MPS ACEs) as POSIX ACLs, checked with `getfacl`:
/// GRANT adds to a trustee's entry, containerInherit sets the default ACL, REVOKE removes
/// the entry, undo restores the exact previous ACLs; DENY and path traversal are refused.
#[tokio::test]
async fn mps_aces_become_posix_acls_and_undo_restores_them() {
    use provisio_engine::data::Element;
    let (tmp, p) = provider();
    let root = tmp.path().join("root");
    if !acl_ready(tmp.path()) {
        return;
    }
    fs::create_dir_all(root.join("tenants/contoso/shared")).expect("mkdir");
    fs::set_permissions(
        root.join("tenants/contoso/shared"),
        fs::Permissions::from_mode(0o750),
    )
    .expect("chmod");
    let ace = |fields: &[(&str, &str)]| {
        let mut a = Element::new("ace");
        for (n, v) in fields {
            a.push(Element::with_text(*n, *v));
        }
        a
    };
    let set = |aces: Vec<Element>, dir: &str, source: &str| {
        let mut c = call(
            "File System Provider",
            "SetDirectoryAttributes",
            &[("dirName", dir)],
        );
        let mut sp = Element::new("sourcePath");
        sp.set_attr("path", source);
        c.execute_data.push(sp);
        let mut acl = Element::new("acl");
        for a in aces {
            acl.push(a);
        }
        let mut sec = Element::new("security");
        sec.push(acl);
        c.execute_data.push(sec);
        c
    };
    let shared = root.join("tenants/contoso/shared");
    let grant = set(
        vec![
            ace(&[
                ("permission", "Read"),
                ("permission", "Write"),
                ("mode", "GRANT"),
                ("trusteeForm", "name"),
                ("trustee", "4001"),
                ("trusteeType", "user"),
            ]),
            ace(&[
                ("permission", "ReadAndExecute"),
                ("mode", "GRANT"),
                ("trustee", "4002"),
                ("trusteeType", "group"),
                ("inheritance", "containerInherit"),
            ]),
        ],
        "shared",
        "tenants/contoso",
    );
    let out = p.execute(grant.clone()).await.expect("grant");
    let Some(acl) = getfacl(&shared) else { return };
    assert!(acl.contains(&"user:4001:rw-".to_string()), "{acl:?}");
    assert!(acl.contains(&"group:4002:r-x".to_string()), "{acl:?}");
    assert!(
        acl.contains(&"default:group:4002:r-x".to_string()),
        "{acl:?}"
    );
    // GRANT again with Execute adds to the entry; REVOKE of the group removes its access entry.
    let more = set(
        vec![
            ace(&[
                ("permission", "Execute"),
                ("mode", "GRANT"),
                ("trustee", "4001"),
            ]),
            ace(&[
                ("mode", "REVOKE"),
                ("trustee", "4002"),
                ("trusteeType", "group"),
            ]),
        ],
        "shared",
        "tenants/contoso",
    );
    let more_out = p.execute(more.clone()).await.expect("grant more");
    let acl = getfacl(&shared).expect("getfacl");
    assert!(acl.contains(&"user:4001:rwx".to_string()), "{acl:?}");
    assert!(!acl.contains(&"group:4002:r-x".to_string()), "{acl:?}");
    assert!(
        acl.contains(&"default:group:4002:r-x".to_string()),
        "{acl:?}"
    );
    undo(&p, &more, &more_out).await.expect("undo more");
    undo(&p, &grant, &out).await.expect("undo grant");
    let acl = getfacl(&shared).expect("getfacl");
    assert_eq!(
        acl,
        lines(&["user::rwx", "group::r-x", "other::---"]),
        "undo restores the exact previous ACL"
    );
    // Refusals name the element and change nothing.
    for (c, want) in [
        (
            set(
                vec![ace(&[
                    ("permission", "Read"),
                    ("mode", "DENY"),
                    ("trustee", "4001"),
                ])],
                "shared",
                "tenants/contoso",
            ),
            "DENY",
        ),
        (
            set(
                vec![ace(&[
                    ("permission", "Read"),
                    ("mode", "GRANT"),
                    ("trustee", "4001"),
                ])],
                "shared",
                "../../etc",
            ),
            "sourcePath",
        ),
        (
            set(
                vec![ace(&[
                    ("permission", "Read"),
                    ("mode", "GRANT"),
                    ("trustee", "4001"),
                ])],
                "..",
                "tenants",
            ),
            "dirName",
        ),
    ] {
        let e = p.execute(c).await.expect_err("refused");
        assert_eq!(e.code(), E_INVALIDARG, "{e}");
        assert!(e.message().contains(want), "want {want:?} in {e}");
    }
    assert_eq!(
        getfacl(&shared).expect("getfacl"),
        lines(&["user::rwx", "group::r-x", "other::---"])
    );
}
