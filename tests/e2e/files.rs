//! DeleteFile and WriteFile `overwrite` through a request run by the binary: a failing
//! transaction puts the old content back byte for byte, a committed one keeps the change.

use crate::util::Sandbox;
use std::os::unix::fs::PermissionsExt;

const REQUEST: &str = r#"procedure:
  parallel: false
  steps:
    replace:
      call: Filesystem Provider/WriteFile
      with: { path: site/index.html, content: "<h1>new</h1>", overwrite: true }
    remove:
      call: Filesystem Provider/DeleteFile
      with: { path: site/old.txt }
    last:
      call: Filesystem Provider/CreateFolder
      with: { path: "{{ data.folder }}" }
data: { folder: site/fresh }
"#;

#[test]
fn overwrite_and_delete_file_roll_back_and_commit() {
    let sb = Sandbox::new();
    let site = sb.data().join("files/site");
    std::fs::create_dir_all(&site).expect("mkdir");
    let old: &[u8] = b"old \xff\x00 bytes\r\n";
    std::fs::write(site.join("index.html"), old).expect("write");
    std::fs::set_permissions(
        site.join("index.html"),
        std::fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");
    std::fs::write(site.join("old.txt"), "bye").expect("write");
    // The last step fails (the folder exists): both file changes are undone.
    std::fs::create_dir(site.join("fresh")).expect("mkdir");
    let req = sb.write("req.yaml", REQUEST);
    let r = sb.run(&["run", req.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(std::fs::read(site.join("index.html")).expect("read"), old);
    let mode = std::fs::metadata(site.join("index.html"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o640);
    assert_eq!(
        std::fs::read_to_string(site.join("old.txt")).expect("read"),
        "bye"
    );
    // Now it can succeed.
    std::fs::remove_dir(site.join("fresh")).expect("rmdir");
    let r = sb.run(&["run", req.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(site.join("index.html")).expect("read"),
        "<h1>new</h1>"
    );
    assert!(!site.join("old.txt").exists());
    assert!(site.join("fresh").is_dir());
}
