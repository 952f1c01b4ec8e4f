//! Driver scripts: `provisio script FILE.rhai` submits requests in-process and reads results.

use crate::util::Sandbox;

#[test]
fn a_driver_script_provisions_tenants_from_a_csv() {
    let sb = Sandbox::new();
    let r = sb.run(&["script", "examples/scripts/onboard.rhai"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value =
        serde_json::from_str(&r.stdout).expect("the script's result as JSON");
    assert_eq!(v["committed"], 2, "{r:?}");
    assert!(sb.data().join("files/tenants/northwind").is_dir());
    assert!(sb.data().join("zones/tailspin.test.zone").is_file());
    assert!(r.stderr.contains("provisioned northwind"), "{r:?}");
    // Each request was its own journaled transaction.
    let list = sb.run(&["tx", "list"]);
    assert_eq!(list.stdout.matches("committed").count(), 2, "{list:?}");
    // Again: both fail (the zones exist) and are rolled back; the script itself completes.
    let again = sb.run(&["script", "examples/scripts/onboard.rhai"]);
    assert_eq!(again.code, 0, "{again:?}");
    let v: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(v["committed"], 0);
    assert_eq!(v["failed"], serde_json::json!(["northwind", "tailspin"]));
}

#[test]
fn a_driver_script_cannot_read_outside_its_folder() {
    let sb = Sandbox::new();
    let r = sb.run(&["script", "examples/scripts/escape.rhai"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("only files inside the script's folder"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("escape.rhai:2"),
        "error names the script line: {r:?}"
    );
}
