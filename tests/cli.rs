//! End-to-end tests: the real `provisio` binary on the shipped namespaces and workflows,
//! with the embedded providers writing under a temporary data folder. Effects are checked
//! independently of the engine (files on disk, zone files through BIND's named-checkzone).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox { dir: tempfile::tempdir().expect("temp dir") }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }

    /// Runs the binary with the repo's namespaces and this sandbox's data folder.
    fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &repo().join("namespaces"))
    }

    fn run_with(&self, args: &[&str], namespaces: &Path) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_provisio"))
            .args(args)
            .current_dir(repo())
            .env("PROVISIO_NAMESPACES", namespaces)
            .env("PROVISIO_DATA_DIR", self.data())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run provisio");
        Run::from(out)
    }

    /// Every file under the data folder with its content (the embedded providers' world).
    fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        fn walk(base: &Path, p: &Path, out: &mut Vec<(String, Vec<u8>)>) {
            let Ok(entries) = std::fs::read_dir(p) else { return };
            for e in entries.flatten() {
                let path = e.path();
                let rel = path.strip_prefix(base).unwrap_or(&path).display().to_string();
                if path.is_dir() {
                    out.push((format!("{rel}/"), Vec::new()));
                    walk(base, &path, out);
                } else {
                    out.push((rel, std::fs::read(&path).unwrap_or_default()));
                }
            }
        }
        walk(&self.data(), &self.data(), &mut out);
        out.sort();
        out
    }

    /// The user-visible world: tenant folders and zone files, not the providers' own bookkeeping.
    fn visible(&self) -> Vec<(String, Vec<u8>)> {
        self.snapshot()
            .into_iter()
            .filter(|(p, _)| (p.starts_with("files/tenants") || (p.starts_with("zones/") && p.ends_with(".zone"))))
            .collect()
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

fn named_checkzone(zone: &str, file: &Path) {
    let Ok(out) = Command::new("named-checkzone").arg(zone).arg(file).output() else {
        assert!(std::env::var("PROVISIO_REQUIRE_BIND").is_err(), "named-checkzone is required (PROVISIO_REQUIRE_BIND=1) but missing");
        eprintln!("note: named-checkzone not installed; zone file not checked by BIND");
        return;
    };
    assert!(out.status.success(), "named-checkzone rejected {}:\n{}", file.display(), String::from_utf8_lossy(&out.stdout));
}

#[test]
fn quick_start_workflow_provisions_a_tenant() {
    let sb = Sandbox::new();
    let r = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("status: committed") || r.stdout.contains("\"status\": \"committed\""), "{r:?}");
    let files = sb.data().join("files/tenants/contoso");
    for dir in ["users/ann", "users/bob"] {
        assert!(files.join(dir).is_dir(), "missing {dir}");
    }
    let welcome = std::fs::read_to_string(files.join("WELCOME.txt")).expect("welcome file");
    assert_eq!(welcome, "Welcome to contoso.test! Your mail host is mail.contoso.test.");
    let zone = sb.data().join("zones/contoso.test.zone");
    let text = std::fs::read_to_string(&zone).expect("zone file");
    assert!(text.contains("MX"), "{text}");
    assert!(text.contains("v=spf1 mx -all"), "{text}");
    named_checkzone("contoso.test", &zone);
    // The output mapping put the zone serial into the response data.
    assert!(r.stdout.contains("zoneSerial"), "{r:?}");
}

#[test]
fn a_failing_request_leaves_no_trace() {
    let sb = Sandbox::new();
    // A tenant whose welcome file's folder exists but whose zone already exists: first make the zone.
    let first = sb.run(&["run", "workflows/add-host.json", "--quiet"]);
    assert_eq!(first.code, 1, "no zone yet, so adding a host fails: {first:?}");
    assert!(first.stdout.contains("\"error\""), "{first:?}");
    let ok = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let before = sb.visible();
    // Running it again fails (the zone exists) and must undo whatever the second run did.
    let again = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stdout.contains("status: rolled_back"), "{again:?}");
    assert_eq!(sb.visible(), before, "a rolled-back run changed the world");
}

#[test]
fn rollback_undoes_steps_of_nested_procedures_in_reverse() {
    let sb = Sandbox::new();
    // Pre-create the welcome file's target so the LAST step of ProvisionTenant fails after
    // the DNS zone, its records and every folder were created by nested procedures.
    let pre = sb.write(
        "pre.yaml",
        "call: Hosted Files/CreateTenantFolders\ndata: { tenant: zeta }\n",
    );
    let r = sb.run(&["run", pre.to_str().unwrap(), "--quiet"]);
    assert_eq!(r.code, 0, "{r:?}");
    std::fs::write(sb.data().join("files/tenants/zeta/WELCOME.txt"), "already here").unwrap();
    let before = sb.visible();
    // Now a different tenant name for DNS but the same folder tenant: folders exist → fails early.
    let req = sb.write(
        "t.yaml",
        "call: Hosted Tenant/ProvisionTenant\ndata: { tenant: zeta, domain: zeta.test, user: [{ name: zed }] }\n",
    );
    let r = sb.run(&["run", req.to_str().unwrap(), "--quiet", "--output", "xml"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("<errorContext"), "{r:?}");
    assert!(r.stdout.contains("errorSource"), "{r:?}");
    assert_eq!(sb.visible(), before, "zone or folders left behind");
    assert!(!sb.data().join("zones/zeta.test.zone").exists());
}

#[test]
fn xml_request_gets_an_xml_response() {
    let sb = Sandbox::new();
    let r = sb.run(&["run", "workflows/provision-tenant.xml", "--quiet"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.trim_start().starts_with("<response"), "{r:?}");
    assert!(r.stdout.contains("<tenant>fabrikam</tenant>"), "{r:?}");
    assert!(sb.data().join("files/tenants/fabrikam/users/carol").is_dir());
}

#[test]
fn plan_shows_steps_and_changes_nothing() {
    let sb = Sandbox::new();
    let r = sb.run(&["plan", "workflows/provision-tenant.yaml"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("DNS Provider/CreateZone"), "{r:?}");
    assert!(r.stdout.contains("Filesystem Provider/CreateFolder"), "{r:?}");
    assert!(r.stdout.contains("wave 1"), "{r:?}");
    assert!(r.stdout.contains("tenants/contoso/users/ann"), "resolved inputs: {r:?}");
    assert!(sb.visible().is_empty(), "plan changed something");
    let json = sb.run(&["plan", "workflows/provision-tenant.yaml", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("plan --json is JSON");
    assert!(v.as_array().is_some_and(|a| a.len() >= 8), "{json:?}");
}

#[test]
fn validate_accepts_the_shipped_files() {
    let sb = Sandbox::new();
    let r = sb.run(&["validate", "namespaces", "workflows"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("ok:"), "{r:?}");
}

#[test]
fn validate_reports_every_error_with_its_location() {
    let sb = Sandbox::new();
    sb.write("bad/broken.xml", "<namespace name=\"Broken\">\n  <procedure name=\"P\">\n    <execute namespace=\"X\" procedure=\"Y\">\n  </procedure>\n</namespace>\n");
    sb.write(
        "bad/cycle.yaml",
        "namespace: Cyclic\nprocedures:\n  Loop:\n    access: public\n    steps:\n      a: { call: Filesystem Provider/CreateFolder, needs: [b] }\n      b: { call: Filesystem Provider/CreateFolder, needs: [a] }\n",
    );
    sb.write("bad/typo.yaml", "call: Hosted DNS/CreateTenantZon\ndata: { zone: x.test }\n");
    let r = sb.run(&["validate", sb.path("bad").to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("broken.xml:4"), "line of the mismatched tag: {r:?}");
    assert!(r.stderr.contains("a -> b -> a") || r.stderr.contains("b -> a -> b"), "cycle named: {r:?}");
    assert!(r.stderr.contains("did you mean `CreateTenantZone`"), "suggestion: {r:?}");
}

#[test]
fn bad_requests_are_refused_before_anything_runs() {
    let sb = Sandbox::new();
    let cases: &[(&str, &str, &str)] = &[
        ("malformed.xml", "<request>\n  <data><a></b></data>\n</request>\n", "malformed.xml:2"),
        ("private.yaml", "call: Filesystem Provider/CreateFolder\ndata: { path: x }\n", "private"),
        ("missing.yaml", "call: Hosted DNS/CreateTenantZone\ndata: {}\n", "needs input `zone`"),
        ("unknown.yaml", "call: Hosted DSN/CreateTenantZone\ndata: { zone: a.test }\n", "did you mean `Hosted DNS`"),
        (
            "bomb.xml",
            "<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;\">]>\n<request><data>&lol2;</data></request>\n",
            "DOCTYPE",
        ),
        ("garbage.yaml", "call: [unclosed\n", "garbage.yaml"),
    ];
    for (name, text, expect) in cases {
        let p = sb.write(name, text);
        let r = sb.run(&["run", p.to_str().unwrap(), "--quiet"]);
        assert_eq!(r.code, 2, "{name}: {r:?}");
        assert!(r.stderr.contains(expect), "{name}: expected `{expect}` in {r:?}");
        assert!(!r.stderr.contains("panicked"), "{name}: {r:?}");
    }
    // Deeply nested data.
    let deep = format!("<request namespace=\"Hosted DNS\" procedure=\"CreateTenantZone\"><data>{}{}</data></request>", "<a>".repeat(5000), "</a>".repeat(5000));
    let p = sb.write("deep.xml", &deep);
    let r = sb.run(&["run", p.to_str().unwrap(), "--quiet"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("depth") || r.stderr.contains("deep"), "{r:?}");
    assert!(sb.visible().is_empty(), "a refused request changed something");
}

#[test]
fn graph_prints_dot_and_mermaid() {
    let sb = Sandbox::new();
    let dot = sb.run(&["graph", "Hosted DNS", "CreateTenantZone"]);
    assert_eq!(dot.code, 0, "{dot:?}");
    assert!(dot.stdout.starts_with("digraph"), "{dot:?}");
    assert!(dot.stdout.contains("mx: DNS Provider/AddRecord"), "{dot:?}");
    let mermaid = sb.run(&["graph", "Hosted Tenant", "ProvisionTenant", "--format", "mermaid", "--expand"]);
    assert_eq!(mermaid.code, 0, "{mermaid:?}");
    assert!(mermaid.stdout.starts_with("flowchart TD"), "{mermaid:?}");
    assert!(mermaid.stdout.contains("subgraph"), "nested calls expanded: {mermaid:?}");
    let unknown = sb.run(&["graph", "Hosted DNS", "CreateTenantZon"]);
    assert_eq!(unknown.code, 2);
    assert!(unknown.stderr.contains("did you mean"), "{unknown:?}");
}

#[test]
fn namespaces_lists_and_describes() {
    let sb = Sandbox::new();
    let all = sb.run(&["namespaces"]);
    assert_eq!(all.code, 0, "{all:?}");
    for ns in ["Hosted DNS", "Hosted Files", "Hosted Tenant", "DNS Provider", "Filesystem Provider"] {
        assert!(all.stdout.contains(ns), "{ns}: {all:?}");
    }
    let one = sb.run(&["namespaces", "Hosted DNS"]);
    assert!(one.stdout.contains("CreateTenantZone (public, write)"), "{one:?}");
    assert!(one.stdout.contains("zone: string (required)"), "{one:?}");
}

#[test]
fn help_teaches_exit_codes() {
    let sb = Sandbox::new();
    let r = sb.run(&["--help"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("Exit codes"), "{r:?}");
    assert!(r.stdout.contains("rolled back"), "{r:?}");
}
