//! The embedded registry wires both providers under the data folder.

use provisio_providers::embedded_registry;

#[test]
fn embedded_registry_has_filesystem_and_dns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reg = embedded_registry(tmp.path()).expect("registry");
    assert_eq!(
        reg.names(),
        vec!["DNS".to_string(), "Filesystem".to_string()]
    );
    assert!(tmp.path().join("files").is_dir());
    assert!(tmp.path().join("zones").is_dir());
    // Opening the same data folder twice is fine.
    embedded_registry(tmp.path()).expect("again");
}
