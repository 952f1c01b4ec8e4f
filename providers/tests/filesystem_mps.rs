//! The File System Provider's MPS procedures (CreateDirectory, DeleteDirectory,
//! CopyDirectory, MoveDirectory, RenameDirectory, ListDirectory, Get/SetDirectoryAttributes)
//! with MPS's input elements, checked on disk: each change and its undo, crash recovery of
//! CopyDirectory, the sandbox rules, and refusals naming the element.

mod support;

use proptest::prelude::*;
use provisio_engine::data::Element;
use provisio_engine::provider::{Call, Outcome, Preview, Provider, ProviderError};
use provisio_providers::filesystem::FilesystemProvider;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use support::{call, output, undo};

/// An MPS call: `dirName`-like text inputs plus `sourcePath`/`destPath` elements with
/// a `path` attribute.
fn mps(procedure: &str, texts: &[(&str, &str)], paths: &[(&str, &str)]) -> Call {
    let mut c = call("File System Provider", procedure, texts);
    for (name, path) in paths {
        let mut e = Element::new(*name);
        e.set_attr("path", *path);
        c.execute_data.push(e);
    }
    c
}

fn provider(root: &Path) -> FilesystemProvider {
    FilesystemProvider::new(root.to_path_buf()).expect("provider")
}

async fn exec(p: &FilesystemProvider, c: &Call) -> Result<Outcome, ProviderError> {
    p.execute(c.clone()).await
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[tokio::test]
async fn create_delete_move_rename_and_their_undo_on_disk() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let p = provider(root);
    std::fs::create_dir_all(root.join("tenants/contoso")).expect("mkdir");

    // CreateDirectory: sourcePath/@path + dirName.
    let create = mps(
        "CreateDirectory",
        &[("dirName", "home")],
        &[("sourcePath", "tenants/contoso")],
    );
    let out = exec(&p, &create).await.expect("create");
    assert!(root.join("tenants/contoso/home").is_dir());
    assert_eq!(output(&out, "dirName").as_deref(), Some("home"));
    // The parent must exist (no silent creation of parents, as in MPS).
    let orphan = mps(
        "CreateDirectory",
        &[("dirName", "x")],
        &[("sourcePath", "nowhere")],
    );
    assert!(matches!(p.preview(&orphan).await, Ok(Preview::Fail(_))));
    let e = exec(&p, &orphan).await.expect_err("no parent");
    assert_eq!(e.code(), 0x8007_0003, "{e}");
    assert!(!root.join("nowhere").exists());

    // RenameDirectory within the folder, then MoveDirectory elsewhere.
    std::fs::write(root.join("tenants/contoso/home/a.txt"), "hello").expect("write");
    let rename = mps(
        "RenameDirectory",
        &[("oldName", "home"), ("newName", "homes")],
        &[("sourcePath", "tenants/contoso")],
    );
    let rename_out = exec(&p, &rename).await.expect("rename");
    assert!(root.join("tenants/contoso/homes/a.txt").is_file());
    std::fs::create_dir(root.join("archive")).expect("mkdir");
    let mv = mps(
        "MoveDirectory",
        &[("dirName", "homes")],
        &[("sourcePath", "tenants/contoso"), ("destPath", "archive")],
    );
    let mv_out = exec(&p, &mv).await.expect("move");
    assert!(root.join("archive/homes/a.txt").is_file());
    assert!(!root.join("tenants/contoso/homes").exists());

    // DeleteDirectory takes the content with it (recursive, as MPS); undo brings it back.
    let del = mps(
        "DeleteDirectory",
        &[("dirName", "homes")],
        &[("sourcePath", "archive")],
    );
    let del_out = exec(&p, &del).await.expect("delete");
    assert!(!root.join("archive/homes").exists());

    // Rollback, in reverse order.
    undo(&p, &del, &del_out).await.expect("undo delete");
    assert_eq!(
        std::fs::read_to_string(root.join("archive/homes/a.txt")).expect("back"),
        "hello"
    );
    undo(&p, &mv, &mv_out).await.expect("undo move");
    undo(&p, &rename, &rename_out).await.expect("undo rename");
    assert!(root.join("tenants/contoso/home/a.txt").is_file());
    std::fs::remove_file(root.join("tenants/contoso/home/a.txt")).expect("rm");
    undo(&p, &create, &out).await.expect("undo create");
    assert!(!root.join("tenants/contoso/home").exists());
    assert!(root.join("tenants/contoso").is_dir(), "the parent stays");
}

#[tokio::test]
async fn copy_directory_copies_content_and_modes_and_undo_removes_the_copy() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let p = provider(root);
    std::fs::create_dir_all(root.join("templates/site/sub")).expect("mkdir");
    std::fs::write(root.join("templates/site/index.html"), "<h1>hi</h1>").expect("write");
    std::fs::write(root.join("templates/site/sub/deep.txt"), "deep").expect("write");
    std::fs::set_permissions(
        root.join("templates/site/index.html"),
        std::fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");
    std::fs::create_dir(root.join("tenants")).expect("mkdir");

    let mut copy = mps(
        "CopyDirectory",
        &[("dirName", "site"), ("newName", "contoso-site")],
        &[("sourcePath", "templates"), ("destPath", "tenants")],
    );
    assert!(matches!(p.preview(&copy).await, Ok(Preview::Change(_))));
    let out = exec(&p, &copy).await.expect("copy");
    let copied = root.join("tenants/contoso-site");
    assert_eq!(
        std::fs::read_to_string(copied.join("index.html")).expect("file"),
        "<h1>hi</h1>"
    );
    assert_eq!(mode(&copied.join("index.html")), 0o640);
    assert_eq!(
        std::fs::read_to_string(copied.join("sub/deep.txt")).expect("deep"),
        "deep"
    );
    assert_eq!(output(&out, "bytes").as_deref(), Some("15"));
    assert!(!root.join(".provisio-staging").exists(), "staging cleaned");
    // The same call again (a retry with the same key) reports the same success.
    let again = exec(&p, &copy).await.expect("retried copy");
    assert_eq!(output(&again, "copied"), output(&out, "copied"));
    // Recovery after a crash sees the copy in place.
    assert!(p.recover(&copy).await.expect("recover").is_some());

    undo(&p, &copy, &out).await.expect("undo copy");
    assert!(!copied.exists());
    assert!(
        root.join("templates/site/sub/deep.txt").is_file(),
        "source untouched"
    );
    undo(&p, &copy, &out).await.expect("undo twice");

    // Not recursive: files only.
    copy = mps(
        "CopyDirectory",
        &[("dirName", "site"), ("newName", "flat")],
        &[("sourcePath", "templates"), ("destPath", "tenants")],
    );
    let mut ci = Element::new("controlInfo");
    ci.set_attr("recursive", "false");
    copy.execute_data.push(ci);
    exec(&p, &copy).await.expect("flat copy");
    assert!(root.join("tenants/flat/index.html").is_file());
    assert!(!root.join("tenants/flat/sub").exists());

    // An existing target: refused (replace="true" too, since undo could not restore it).
    let mut over = mps(
        "CopyDirectory",
        &[("dirName", "site"), ("newName", "flat")],
        &[("sourcePath", "templates"), ("destPath", "tenants")],
    );
    let e = exec(&p, &over).await.expect_err("exists");
    assert_eq!(e.code(), 0x8007_00B7, "{e}");
    let mut ci = Element::new("controlInfo");
    ci.set_attr("replace", "true");
    over.execute_data.push(ci);
    let e = exec(&p, &over).await.expect_err("replace");
    assert!(e.message().contains("replace"), "{e}");

    // A symlink inside the source is refused; nothing is left behind.
    std::os::unix::fs::symlink("/etc/passwd", root.join("templates/site/link")).expect("ln");
    let linked = mps(
        "CopyDirectory",
        &[("dirName", "site"), ("newName", "linked")],
        &[("sourcePath", "templates"), ("destPath", "tenants")],
    );
    let e = exec(&p, &linked).await.expect_err("symlink");
    assert!(e.message().contains("symlink"), "{e}");
    assert!(!root.join("tenants/linked").exists());
    assert!(!root.join(".provisio-staging").exists());
}

#[tokio::test]
async fn copy_directory_in_doubt_is_settled_from_its_marker() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let p = provider(root);
    std::fs::create_dir_all(root.join("src/a")).expect("mkdir");
    let copy = mps(
        "CopyDirectory",
        &[("dirName", "a")],
        &[("sourcePath", "src"), ("destPath", ".")],
    );
    // Never ran: nothing to undo.
    assert!(p.recover(&copy).await.expect("recover").is_none());
    let out = exec(&p, &copy).await.expect("copy to root");
    assert!(root.join("a").is_dir());
    let found = p.recover(&copy).await.expect("recover").expect("applied");
    assert_eq!(Some(found), out.undo);
}

#[tokio::test]
async fn list_and_attributes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let p = provider(root);
    std::fs::create_dir_all(root.join("t/docs/b")).expect("mkdir");
    std::fs::create_dir_all(root.join("t/docs/a")).expect("mkdir");
    std::fs::write(root.join("t/docs/z.txt"), "12345").expect("write");

    let list = mps(
        "ListDirectory",
        &[("dirName", "docs")],
        &[("sourcePath", "t")],
    );
    let out = exec(&p, &list).await.expect("list");
    assert!(out.undo.is_none());
    let dirs: Vec<String> = out
        .execute_data
        .child("directories")
        .expect("directories")
        .elements()
        .filter_map(|d| d.child("name").map(Element::string_value))
        .collect();
    assert_eq!(dirs, ["a", "b"]);
    let file = out
        .execute_data
        .child("files")
        .and_then(|f| f.child("file"))
        .expect("file");
    assert_eq!(
        file.child("name").map(Element::string_value).as_deref(),
        Some("z.txt")
    );
    assert_eq!(
        file.child("bytes").map(Element::string_value).as_deref(),
        Some("5")
    );
    // The root lists without the provider's own folders.
    exec(
        &p,
        &mps(
            "DeleteDirectory",
            &[("dirName", "b")],
            &[("sourcePath", "t/docs")],
        ),
    )
    .await
    .expect("delete makes a trash folder");
    let top = exec(&p, &mps("ListDirectory", &[], &[("sourcePath", ".")]))
        .await
        .expect("root");
    let names: Vec<String> = top
        .execute_data
        .child("directories")
        .expect("dirs")
        .elements()
        .filter_map(|d| d.child("name").map(Element::string_value))
        .collect();
    assert_eq!(names, ["t"]);

    // readOnly on, read back, undo restores the mode exactly.
    std::fs::set_permissions(root.join("t/docs"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let mut set = mps(
        "SetDirectoryAttributes",
        &[("dirName", "docs")],
        &[("sourcePath", "t")],
    );
    let mut props = Element::new("properties");
    props.push(Element::with_text("readOnly", "true"));
    props.push(Element::with_text("hidden", "false"));
    set.execute_data.push(props);
    let set_out = exec(&p, &set).await.expect("set");
    assert_eq!(mode(&root.join("t/docs")), 0o555);
    let get = mps(
        "GetDirectoryAttributes",
        &[("dirName", "docs")],
        &[("sourcePath", "t")],
    );
    let attrs = exec(&p, &get).await.expect("get");
    let props = attrs.execute_data.child("properties").expect("properties");
    assert_eq!(
        props
            .child("readOnly")
            .map(Element::string_value)
            .as_deref(),
        Some("true")
    );
    assert_eq!(
        props.child("hidden").map(Element::string_value).as_deref(),
        Some("false")
    );
    assert_eq!(output(&attrs, "mode").as_deref(), Some("0555"));
    undo(&p, &set, &set_out).await.expect("undo set");
    assert_eq!(mode(&root.join("t/docs")), 0o755);
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_element() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let p = provider(root);
    std::fs::create_dir_all(root.join("t/d")).expect("mkdir");
    std::os::unix::fs::symlink("/tmp", root.join("t/out")).expect("ln");
    let attrs = |name: &str, value: &str| {
        let mut c = mps(
            "SetDirectoryAttributes",
            &[("dirName", "d")],
            &[("sourcePath", "t")],
        );
        let mut props = Element::new("properties");
        props.push(Element::with_text(name, value));
        c.execute_data.push(props);
        c
    };
    let mut machine = mps("CreateDirectory", &[("dirName", "x")], &[]);
    let mut sp = Element::new("sourcePath");
    sp.set_attr("path", "t");
    sp.set_attr("machine", "fileserver01.fabrikam.com");
    machine.execute_data.push(sp);
    let cases: Vec<(Call, &str)> = vec![
        (
            mps(
                "CreateDirectory",
                &[("dirName", "..")],
                &[("sourcePath", "t")],
            ),
            "`dirName` \"..\"",
        ),
        (
            mps(
                "CreateDirectory",
                &[("dirName", "a/b")],
                &[("sourcePath", "t")],
            ),
            "path separator",
        ),
        (
            mps(
                "CreateDirectory",
                &[("dirName", "x")],
                &[("sourcePath", "../etc")],
            ),
            "`sourcePath/@path`",
        ),
        (
            mps(
                "CreateDirectory",
                &[("dirName", "x")],
                &[("sourcePath", "C:\\Hosting")],
            ),
            "`sourcePath/@path`",
        ),
        (
            mps(
                "CreateDirectory",
                &[("dirName", "x")],
                &[("sourcePath", "/etc")],
            ),
            "absolute",
        ),
        (
            mps(
                "CreateDirectory",
                &[("dirName", "x")],
                &[("sourcePath", ".provisio-trash")],
            ),
            "reserved",
        ),
        (
            mps(
                "CreateDirectory",
                &[("dirName", "x")],
                &[("sourcePath", "t/out")],
            ),
            "symlink",
        ),
        (
            mps(
                "CreateDirectory",
                &[("dirName", "x\n; rm -rf ~")],
                &[("sourcePath", "t")],
            ),
            "control character",
        ),
        (
            mps(
                "CreateDirectory",
                &[("dirName", "x"), ("colour", "red")],
                &[("sourcePath", "t")],
            ),
            "element `colour` is not an input",
        ),
        (
            mps("CreateDirectory", &[("dirName", "x")], &[]),
            "`sourcePath` is required",
        ),
        (machine, "`sourcePath/@machine`"),
        (
            mps(
                "MoveDirectory",
                &[("dirName", "d")],
                &[("sourcePath", "t"), ("destPath", "t/d")],
            ),
            "into itself",
        ),
        (attrs("indexing", "true"), "`properties/indexing`"),
        (attrs("encompress", "false"), "`properties/encompress`"),
        (attrs("hidden", "true"), "`properties/hidden`"),
        (
            attrs("sparkly", "true"),
            "`properties/sparkly` is not known",
        ),
        (attrs("readOnly", "perhaps"), "properties/readOnly"),
    ];
    for (c, want) in cases {
        let e = exec(&p, &c).await.expect_err(want);
        assert!(
            e.message().contains(want),
            "{}: want {want:?} in {e}",
            c.context.procedure
        );
        assert!(e.message().contains("File System Provider/"), "{e}");
    }
    let names: Vec<_> = std::fs::read_dir(root.join("t"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 2, "nothing created: {names:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever `dirName` and `sourcePath/@path` a request carries, a CreateDirectory
    /// either creates exactly one folder inside the root (and its undo removes it) or
    /// changes nothing.
    #[test]
    fn create_directory_stays_in_the_sandbox(
        dir in "[a-z.\\\\/ \\x00\\n-]{0,8}",
        base in "(\\.|t|t/u|\\.\\.|/tmp|t/\\.\\.|\\.provisio-trash)",
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let tmp = tempfile::tempdir().expect("tmp");
        let outside = tempfile::tempdir().expect("outside");
        let root = tmp.path().join("root");
        let p = provider(&root);
        std::fs::create_dir_all(root.join("t/u")).expect("mkdir");
        let c = mps("CreateDirectory", &[("dirName", dir.as_str())], &[("sourcePath", base.as_str())]);
        let before = walk(&root);
        match rt.block_on(exec(&p, &c)) {
            Ok(out) => {
                let after = walk(&root);
                prop_assert_eq!(after.len(), before.len() + 1);
                rt.block_on(undo(&p, &c, &out)).expect("undo");
                prop_assert_eq!(walk(&root), before);
            }
            Err(_) => prop_assert_eq!(walk(&root), before),
        }
        prop_assert_eq!(std::fs::read_dir(outside.path()).expect("ls").count(), 0);
    }
}

/// Every path under `root` (sorted), without the provider's own folders.
fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("ls") {
            let e = e.expect("entry");
            let rel = e
                .path()
                .strip_prefix(root)
                .expect("inside")
                .display()
                .to_string();
            if rel.starts_with(".provisio-") {
                continue;
            }
            if e.file_type().expect("type").is_dir() {
                stack.push(e.path());
            }
            out.push(rel);
        }
    }
    out.sort();
    out
}

/// The MPS share procedures are refused as not supported, saying what to do instead, and
/// change nothing.
#[tokio::test]
async fn share_procedures_are_refused_saying_what_to_do() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let p = provider(root);
    std::fs::create_dir_all(root.join("tenants/contoso")).expect("mkdir");
    let before = walk(root);
    for share in [
        "CreateShare",
        "DeleteShare",
        "GetShareProperties",
        "SetShareProperties",
    ] {
        let mut c = mps(share, &[("shareName", "contoso")], &[]);
        let mut src = Element::new("sourcePath");
        src.set_attr("machine", "localhost");
        src.set_attr("path", "tenants/contoso");
        c.execute_data.push(src);
        let e = exec(&p, &c).await.expect_err("refused");
        assert_eq!(e.code(), provisio_engine::codes::E_NOT_SUPPORTED, "{e}");
        assert!(
            e.message()
                .contains(&format!("File System Provider/{share}")),
            "{e}"
        );
        assert!(e.message().contains("Samba"), "{e}");
    }
    assert_eq!(walk(root), before);
}
