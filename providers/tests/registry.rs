//! The embedded registry wires the filesystem and DNS providers under the data folder, the
//! embedded directory (in provider state) and the Error Provider.

use provisio_providers::embedded_registry;

#[test]
fn embedded_registry_has_filesystem_dns_directory_and_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reg = embedded_registry(tmp.path()).expect("registry");
    assert_eq!(
        reg.names(),
        vec![
            "Active Directory".to_string(),
            "DNS".to_string(),
            "Error".to_string(),
            "Filesystem".to_string()
        ]
    );
    assert!(tmp.path().join("files").is_dir());
    assert!(tmp.path().join("zones").is_dir());
    // Opening the same data folder twice is fine.
    embedded_registry(tmp.path()).expect("again");
}
