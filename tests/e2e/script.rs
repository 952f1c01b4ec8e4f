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
    // Again: both fail (the zones exist) and are rolled back; the script itself completes,
    // and the exit code and the summary say that requests did not commit.
    let again = sb.run(&["script", "examples/scripts/onboard.rhai"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again
            .stderr
            .contains("2 request(s) submitted, 2 not committed: Hosted Tenant/ProvisionTenant ("),
        "{again:?}"
    );
    assert!(again.stderr.contains("rolled_back)"), "{again:?}");
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

/// Writes `files` (name, content) into a fresh folder inside the sandbox; returns the folder.
fn script_folder(sb: &Sandbox, files: &[(&str, &str)]) -> std::path::PathBuf {
    for (name, text) in files {
        sb.write(&format!("scripts/{name}"), text);
    }
    sb.path("scripts")
}

#[test]
fn read_csv_refuses_symlinks_leading_out_of_the_script_folder() {
    let sb = Sandbox::new();
    let dir = script_folder(
        &sb,
        &[
            ("inside.csv", "tenant\nalpha\n"),
            ("out.rhai", "read_csv(\"secret.csv\").len()"),
            ("zero.rhai", "read_csv(\"zero.csv\").len()"),
            ("sub.rhai", "read_csv(\"sub/secret.csv\").len()"),
            ("in.rhai", "read_csv(\"alias.csv\")[0].tenant"),
        ],
    );
    let secret = sb.write("elsewhere/secret.csv", "key\nhunter2\n");
    std::os::unix::fs::symlink(&secret, dir.join("secret.csv")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.csv")).unwrap();
    std::os::unix::fs::symlink(sb.path("elsewhere"), dir.join("sub")).unwrap();
    std::os::unix::fs::symlink("inside.csv", dir.join("alias.csv")).unwrap();
    for script in ["out.rhai", "zero.rhai", "sub.rhai"] {
        let r = sb.run(&["script", dir.join(script).to_str().unwrap()]);
        assert_eq!(r.code, 1, "{script}: {r:?}");
        assert!(
            r.stderr.contains("outside the script's folder"),
            "{script}: {r:?}"
        );
        assert!(!r.stdout.contains("hunter2") && !r.stderr.contains("hunter2"));
    }
    // A link that stays inside the folder is fine.
    let r = sb.run(&["script", dir.join("in.rhai").to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), "\"alpha\"", "{r:?}");
}

#[test]
fn read_csv_refuses_a_file_over_the_size_limit() {
    let sb = Sandbox::new();
    let mut big = String::from("tenant,note\n");
    while big.len() < 1536 * 1024 {
        big.push_str("alpha,0123456789012345678901234567890123456789\n");
    }
    let dir = script_folder(
        &sb,
        &[
            ("big.csv", &big),
            ("big.rhai", "read_csv(\"big.csv\").len()"),
        ],
    );
    let script = dir.join("big.rhai");
    let r = sb.run(&["script", script.to_str().unwrap(), "--max-csv-mib", "1"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("larger than 1048576 bytes"), "{r:?}");
    assert!(r.stderr.contains("--max-csv-mib"), "{r:?}");
    // Under a higher limit the same file is read.
    let r = sb.run(&["script", script.to_str().unwrap(), "--max-csv-mib", "2"]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn a_script_hoarding_data_is_stopped_with_an_error_not_an_abort() {
    let sb = Sandbox::new();
    // Every string is under rhai's 1 MiB limit, every map under its entry limit; together
    // they would take about 50 GB.
    let dir = script_folder(
        &sb,
        &[(
            "hoard.rhai",
            "let s = \"x\";\nfor i in 0..19 { s += s; }\nlet m = #{};\nfor i in 0..100000 { m[\"k\" + i] = s + i; }\nm.len()",
        )],
    );
    let r = sb.run(&[
        "script",
        dir.join("hoard.rhai").to_str().unwrap(),
        "--max-data-mib",
        "64",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("holds more than 64 MiB"), "{r:?}");
    assert!(r.stderr.contains("--max-data-mib"), "{r:?}");
    assert!(r.stderr.contains("script stopped"), "{r:?}");
}

#[test]
fn submit_hands_a_rejected_request_back_and_the_exit_code_counts_it() {
    let sb = Sandbox::new();
    let dir = script_folder(
        &sb,
        &[
            // Cells with blanks around them; the second row has no tenant.
            ("t.csv", "tenant , note\n  alpha  , first \n , second\ngamma,third\n"),
            (
                "t.rhai",
                "let out = [];\nfor row in read_csv(\"t.csv\") {\n  let d = #{};\n  if row.tenant != \"\" { d.tenant = row.tenant; }\n  let r = submit(\"Hosted Files/CreateTenantFolders\", d);\n  out.push(`${row.tenant}=${r.status}=${row.note}`);\n  if r.status == \"rejected\" { log(`rejected: ${r.error.description}`); }\n}\nout",
            ),
        ],
    );
    let r = sb.run(&["script", dir.join("t.rhai").to_str().unwrap()]);
    assert_eq!(r.code, 1, "a request did not commit: {r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("result");
    assert_eq!(
        v,
        serde_json::json!([
            "alpha=committed=first",
            "=rejected=second",
            "gamma=committed=third"
        ]),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("rejected: ") && r.stderr.contains("tenant"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains(
            "3 request(s) submitted, 1 not committed: Hosted Files/CreateTenantFolders (rejected)"
        ),
        "{r:?}"
    );
    assert!(sb.data().join("files/tenants/alpha").is_dir());
    assert!(sb.data().join("files/tenants/gamma").is_dir());
}
