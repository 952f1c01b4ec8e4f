//! The CLI on the shipped namespaces and workflows: quick start, rollback, formats, plan,
//! validate, graph, namespaces, bad input.

use crate::util::{named_checkzone, Sandbox};

#[test]
fn quick_start_workflow_provisions_a_tenant() {
    let sb = Sandbox::new();
    let r = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("status: committed") || r.stdout.contains("\"status\": \"committed\""),
        "{r:?}"
    );
    let files = sb.data().join("files/tenants/contoso");
    for dir in ["users/ann", "users/bob"] {
        assert!(files.join(dir).is_dir(), "missing {dir}");
    }
    let welcome = std::fs::read_to_string(files.join("WELCOME.txt")).expect("welcome file");
    assert_eq!(
        welcome,
        "Welcome to contoso.test! Your mail host is mail.contoso.test."
    );
    let zone = sb.data().join("zones/contoso.test.zone");
    let text = std::fs::read_to_string(&zone).expect("zone file");
    assert!(text.contains("MX"), "{text}");
    assert!(text.contains("v=spf1 mx -all"), "{text}");
    named_checkzone("contoso.test", &zone);
    // The output mapping put the zone serial into the response data: the zone file's SOA
    // serial once every record was added (each change bumps it).
    let soa_serial = text
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let at = fields.iter().position(|f| *f == "SOA")?;
            fields.get(at + 3).map(|s| s.to_string())
        })
        .expect("an SOA record");
    assert!(
        r.stdout.contains(&format!("zoneSerial: {soa_serial}\n")),
        "response serial vs SOA {soa_serial}: {r:?}"
    );
}

/// The README's quick start: hosting set up and a whole tenant provisioned by one `run` of
/// two files, each its own transaction; a file that fails stops the ones after it.
#[test]
fn run_of_several_files_runs_them_in_order_and_stops_at_the_first_failure() {
    let sb = Sandbox::new();
    let r = sb.run(&[
        "run",
        "workflows/hosting/initialize-hosting.yaml",
        "workflows/hosting/provision-tenant.yaml",
        "--quiet",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.matches("status: committed").count(), 2, "{r:?}");
    assert!(
        sb.data().join("files/tenants/AlpineSkiHouse").is_dir(),
        "{r:?}"
    );
    // The same tenant again (it exists: rolled back, exit 1): the file after it never runs,
    // so the transaction list grows by one. (Initialize again would commit: it changes
    // nothing the second time.)
    let before = sb.run(&["tx", "list"]);
    let r = sb.run(&[
        "run",
        "workflows/hosting/provision-tenant.yaml",
        "workflows/hosting/decommission-tenant.yaml",
        "--quiet",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.stdout.matches("status: ").count(), 1, "{r:?}");
    assert!(
        sb.data().join("files/tenants/AlpineSkiHouse").is_dir(),
        "the decommission after the failed file ran: {r:?}"
    );
    let after = sb.run(&["tx", "list"]);
    assert_eq!(
        after.stdout.lines().count(),
        before.stdout.lines().count() + 1,
        "{before:?}\n{after:?}"
    );
}

#[test]
fn a_failing_request_leaves_no_trace() {
    let sb = Sandbox::new();
    // A tenant whose welcome file's folder exists but whose zone already exists: first make the zone.
    let first = sb.run(&["run", "workflows/add-host.json", "--quiet"]);
    assert_eq!(
        first.code, 1,
        "no zone yet, so adding a host fails: {first:?}"
    );
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
    std::fs::write(
        sb.data().join("files/tenants/zeta/WELCOME.txt"),
        "already here",
    )
    .unwrap();
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
    assert!(sb
        .data()
        .join("files/tenants/fabrikam/users/carol")
        .is_dir());
}

#[test]
fn plan_shows_steps_and_changes_nothing() {
    let sb = Sandbox::new();
    let r = sb.run(&["plan", "workflows/provision-tenant.yaml"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("DNS Provider/CreateZone"), "{r:?}");
    assert!(
        r.stdout.contains("Filesystem Provider/CreateFolder"),
        "{r:?}"
    );
    assert!(r.stdout.contains("wave 1"), "{r:?}");
    assert!(
        r.stdout.contains("tenants/contoso/users/ann"),
        "resolved inputs: {r:?}"
    );
    // A YAML request's inputs are shown as JSON (YAML's flow style), an XML one's as XML.
    assert!(
        r.stdout
            .contains(r#"inputs: {"zoneName":"contoso.test","nsAddress":"192.0.2.53"}"#),
        "inputs in the request's syntax: {r:?}"
    );
    assert!(!r.stdout.contains("<executeData>"), "{r:?}");
    let xml = sb.run(&["plan", "workflows/provision-tenant.xml"]);
    assert!(
        xml.stdout
            .contains("inputs: <executeData><zoneName>fabrikam.test</zoneName>"),
        "{xml:?}"
    );
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

/// Issue 13: an MPS attribute Provisio does not act on is said, not dropped; `validate`
/// still succeeds.
#[test]
fn validate_warns_about_mps_attributes_without_effect() {
    let sb = Sandbox::new();
    let ns = sb.write(
        "mps/imp.xml",
        "<namespace name=\"Imp\">\n  <procedure name=\"P\" access=\"public\">\n    <execute namespace=\"Filesystem Provider\" procedure=\"CreateFolder\" impersonate=\"1\"/>\n  </procedure>\n</namespace>\n",
    );
    let r = sb.run(&["validate", ns.to_str().expect("utf-8")]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("ok:"), "{r:?}");
    assert!(
        r.stderr.contains("warning: ") && r.stderr.contains("imp.xml:3"),
        "the warning names the file and line: {r:?}"
    );
    assert!(r.stderr.contains("impersonate=\"1\""), "{r:?}");
}

#[test]
fn validate_reports_every_error_with_its_location() {
    let sb = Sandbox::new();
    sb.write("bad/broken.xml", "<namespace name=\"Broken\">\n  <procedure name=\"P\">\n    <execute namespace=\"X\" procedure=\"Y\">\n  </procedure>\n</namespace>\n");
    sb.write(
        "bad/cycle.yaml",
        "namespace: Cyclic\nprocedures:\n  Loop:\n    access: public\n    steps:\n      a: { call: Filesystem Provider/CreateFolder, needs: [b] }\n      b: { call: Filesystem Provider/CreateFolder, needs: [a] }\n",
    );
    sb.write(
        "bad/typo.yaml",
        "call: Hosted DNS/CreateTenantZon\ndata: { zone: x.test }\n",
    );
    let r = sb.run(&["validate", sb.path("bad").to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("broken.xml:4"),
        "line of the mismatched tag: {r:?}"
    );
    assert!(
        r.stderr.contains("a -> b -> a") || r.stderr.contains("b -> a -> b"),
        "cycle named: {r:?}"
    );
    assert!(
        r.stderr.contains("did you mean `CreateTenantZone`"),
        "suggestion: {r:?}"
    );
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
        assert!(
            r.stderr.contains(expect),
            "{name}: expected `{expect}` in {r:?}"
        );
        assert!(!r.stderr.contains("panicked"), "{name}: {r:?}");
    }
    // Deeply nested data.
    let deep = format!("<request namespace=\"Hosted DNS\" procedure=\"CreateTenantZone\"><data>{}{}</data></request>", "<a>".repeat(5000), "</a>".repeat(5000));
    let p = sb.write("deep.xml", &deep);
    let r = sb.run(&["run", p.to_str().unwrap(), "--quiet"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("depth") || r.stderr.contains("deep"),
        "{r:?}"
    );
    assert!(
        sb.visible().is_empty(),
        "a refused request changed something"
    );
}

#[test]
fn graph_prints_dot_and_mermaid() {
    let sb = Sandbox::new();
    let dot = sb.run(&["graph", "Hosted DNS", "CreateTenantZone"]);
    assert_eq!(dot.code, 0, "{dot:?}");
    assert!(dot.stdout.starts_with("digraph"), "{dot:?}");
    assert!(dot.stdout.contains("mx: DNS Provider/AddRecord"), "{dot:?}");
    let mermaid = sb.run(&[
        "graph",
        "Hosted Tenant",
        "ProvisionTenant",
        "--format",
        "mermaid",
        "--expand",
    ]);
    assert_eq!(mermaid.code, 0, "{mermaid:?}");
    assert!(mermaid.stdout.starts_with("flowchart TD"), "{mermaid:?}");
    assert!(
        mermaid.stdout.contains("subgraph"),
        "nested calls expanded: {mermaid:?}"
    );
    let unknown = sb.run(&["graph", "Hosted DNS", "CreateTenantZon"]);
    assert_eq!(unknown.code, 2);
    assert!(unknown.stderr.contains("did you mean"), "{unknown:?}");
}

#[test]
fn namespaces_lists_and_describes() {
    let sb = Sandbox::new();
    let all = sb.run(&["namespaces"]);
    assert_eq!(all.code, 0, "{all:?}");
    for ns in [
        "Hosted DNS",
        "Hosted Files",
        "Hosted Tenant",
        "DNS Provider",
        "Filesystem Provider",
    ] {
        assert!(all.stdout.contains(ns), "{ns}: {all:?}");
    }
    let one = sb.run(&["namespaces", "Hosted DNS"]);
    assert!(
        one.stdout.contains("CreateTenantZone (public, write)"),
        "{one:?}"
    );
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

/// `tx show` and `tx log` read a finished transaction's journal (compacted into one value
/// when it ended): every call with its own result, in order, then the final state.
#[test]
fn a_finished_transaction_can_be_inspected() {
    let sb = Sandbox::new();
    let r = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(r.code, 0, "{r:?}");
    let list = sb.run(&["tx", "list"]);
    let id = list
        .stdout
        .split_whitespace()
        .next()
        .expect("one transaction")
        .to_string();
    let show = sb.run(&["tx", "show", &id]);
    assert_eq!(show.code, 0, "{show:?}");
    // The zone and the folder are created concurrently; each result is shown under its call.
    let block = |step: &str| -> String {
        let header = format!("    {step} (attempt 1)");
        let mut lines = show.stdout.lines().skip_while(|l| !l.starts_with(&header));
        let first = lines
            .next()
            .unwrap_or_else(|| panic!("no {step} in {}", show.stdout));
        let details: Vec<&str> = lines.take_while(|l| l.starts_with("      ")).collect();
        format!("{first}\n{}", details.join("\n"))
    };
    let zone = block("dns/zone");
    assert!(zone.contains("contoso.test.zone"), "{zone}");
    assert!(!zone.contains("tenants/contoso"), "{zone}");
    let folder = block("files/tenantFolder");
    assert!(
        folder.contains("\"created\":\"tenants/contoso\""),
        "{folder}"
    );
    assert!(folder.contains("removeFolder"), "{folder}");
    assert!(show.stdout.contains("-> committed"), "{show:?}");
    let log = sb.run(&["tx", "log", &id]);
    let seqs: Vec<u64> = log
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("a JSON line")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "{log:?}");
    assert!(log
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .contains("\"started_v2\""));
    assert!(log
        .stdout
        .lines()
        .last()
        .unwrap_or_default()
        .contains("\"committed\""));
}

/// Runs the binary with stdout a pipe whose reading end is closed before it writes (as
/// `provisio … | head -1` does once `head` has its line).
fn run_with_closed_stdout(sb: &Sandbox, args: &[&str]) -> (i32, String) {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_provisio"))
        .args(args)
        .current_dir(crate::util::repo())
        .env(
            "PROVISIO_NAMESPACES",
            crate::util::repo().join("namespaces"),
        )
        .env("PROVISIO_DATA_DIR", sb.data())
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn provisio");
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let status = child.wait().expect("wait");
    (status.code().unwrap_or(-1), stderr)
}

#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    let sb = Sandbox::new();
    // `run`: the transaction commits; its outcome decides the exit code.
    let (code, stderr) =
        run_with_closed_stdout(&sb, &["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(sb.data().join("files/tenants/contoso").is_dir());
    // A failing run still says it failed.
    let (code, stderr) =
        run_with_closed_stdout(&sb, &["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for args in [
        &["plan", "workflows/decommission-tenant.yaml"][..],
        &["tx", "list"][..],
        &["namespaces"][..],
    ] {
        let (code, stderr) = run_with_closed_stdout(&sb, args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[test]
fn a_busy_journal_exits_75_after_waiting_and_a_released_one_is_used() {
    let sb = Sandbox::new();
    // This test process holds the journal, as another provisio command would.
    let store =
        provisio_engine::SledStore::open(&sb.data().join("journal")).expect("open the journal");
    let busy = sb.run(&["tx", "list", "--wait-lock", "0s"]);
    assert_eq!(busy.code, 75, "{busy:?}");
    assert!(
        busy.stderr.contains("in use by another provisio process"),
        "{busy:?}"
    );
    assert!(busy.stderr.contains("try again"), "{busy:?}");
    assert!(busy.stderr.contains("--wait-lock"), "{busy:?}");
    assert!(!busy.stderr.contains("daemon"), "{busy:?}");
    // The same from the environment, for `run`: nothing ran.
    let started = std::time::Instant::now();
    let run = sb.run_env(
        &["run", "workflows/provision-tenant.yaml", "--quiet"],
        &crate::util::repo().join("namespaces"),
        &[("PROVISIO_WAIT_LOCK", "1s".to_string())],
    );
    assert_eq!(run.code, 75, "{run:?}");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "did not wait"
    );
    assert!(run.stderr.contains("waited 1s"), "{run:?}");
    assert!(!sb.data().join("files/tenants/contoso").exists());
    // A run that waits long enough goes ahead once the journal is released.
    let run = std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            sb.run(&[
                "run",
                "workflows/provision-tenant.yaml",
                "--quiet",
                "--wait-lock",
                "60s",
            ])
        });
        std::thread::sleep(std::time::Duration::from_secs(2));
        drop(store);
        waiting.join().expect("join")
    });
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("waiting up to 1m"), "{run:?}");
    assert!(sb.data().join("files/tenants/contoso").is_dir());
}

#[test]
fn without_a_namespace_folder_the_providers_namespaces_still_serve_trusted_requests() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("home.yaml"),
        "procedure:\n  steps:\n    home: { call: Filesystem Provider/CreateFolder, with: { path: tenants/solo } }\n",
    )
    .expect("write");
    let env = [(
        "PROVISIO_DATA_DIR",
        dir.path().join("data").display().to_string(),
    )];
    // No ./namespaces and none configured: run with the built-in ones, and say so once.
    let r = crate::util::run_clean(dir.path(), &["run", "home.yaml", "--quiet"], &env);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stderr.matches("no namespace folder").count(), 1, "{r:?}");
    assert!(r.stderr.contains("built-in namespaces"), "{r:?}");
    assert!(dir.path().join("data/files/tenants/solo").is_dir());
    // A folder chosen explicitly (flag or environment) that does not exist stays an error.
    let r = crate::util::run_clean(
        dir.path(),
        &["--namespaces", "defs", "run", "home.yaml", "--quiet"],
        &env,
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("namespace folder"), "{r:?}");
    assert!(r.stderr.contains("not found"), "{r:?}");
    let mut env_ns = env.to_vec();
    env_ns.push(("PROVISIO_NAMESPACES", "defs".to_string()));
    let r = crate::util::run_clean(dir.path(), &["namespaces"], &env_ns);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("not found"), "{r:?}");
}

#[test]
fn read_only_commands_create_no_state() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let env = [("PROVISIO_DATA_DIR", data.display().to_string())];
    let ns = (
        "PROVISIO_NAMESPACES",
        crate::util::repo().join("namespaces").display().to_string(),
    );
    for (args, code) in [
        (&["tx", "list"][..], 0),
        (&["tx", "audit"][..], 0),
        (&["tx", "show", "0190"][..], 2),
        (&["tx", "log", "0190"][..], 2),
        (&["tx", "resume-rollback", "0190"][..], 2),
    ] {
        let r = crate::util::run_clean(dir.path(), args, &env);
        assert_eq!(r.code, code, "{args:?}: {r:?}");
        assert!(r.stderr.contains("no journal at"), "{args:?}: {r:?}");
        assert!(r.stderr.contains("nothing was created"), "{args:?}: {r:?}");
        assert!(!data.exists(), "{args:?} created {}", data.display());
    }
    let r = crate::util::run_clean(dir.path(), &["config", "show"], &env);
    assert_eq!(r.code, 0, "{r:?}");
    let r = crate::util::run_clean(dir.path(), &["recover"], &[env[0].clone(), ns.clone()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("nothing to recover: no journal at"),
        "{r:?}"
    );
    assert!(!data.exists(), "config show or recover created state");
    // With a journal but no seal key file, reading it does not make a new key.
    let r = crate::util::run_clean(
        crate::util::repo().as_path(),
        &["run", "workflows/provision-tenant.yaml", "--quiet"],
        &[env[0].clone(), ns],
    );
    assert_eq!(r.code, 0, "{r:?}");
    std::fs::remove_file(data.join("seal.key")).expect("seal key was created by run");
    let r = crate::util::run_clean(dir.path(), &["tx", "list"], &env);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("committed"), "{r:?}");
    assert!(
        !data.join("seal.key").exists(),
        "tx list made a new seal key"
    );
}

#[test]
fn run_and_recover_say_where_the_state_lives() {
    let sb = Sandbox::new();
    let r = sb.run(&["run", "workflows/provision-tenant.yaml"]);
    assert_eq!(r.code, 0, "{r:?}");
    let journal = format!("state: journal `{}`", sb.data().join("journal").display());
    assert!(r.stderr.contains(&journal), "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("files `{}`", sb.data().join("files").display())),
        "{r:?}"
    );
    let r = sb.run(&["recover"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stderr.matches(&journal).count(), 1, "{r:?}");
}

#[test]
fn the_audit_names_the_real_user_not_the_environment() {
    let id = |flag: &str| {
        let out = std::process::Command::new("id")
            .arg(flag)
            .output()
            .expect("id");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    };
    let (name, uid) = (id("-un"), id("-u"));
    let sb = Sandbox::new();
    let spoofed = [
        ("USER", "mallory".to_string()),
        ("LOGNAME", "mallory".to_string()),
    ];
    let r = sb.run_env(
        &["run", "workflows/provision-tenant.yaml", "--quiet"],
        &crate::util::repo().join("namespaces"),
        &spoofed,
    );
    assert_eq!(r.code, 0, "{r:?}");
    let who = format!("{name} (uid {uid})");
    let list = sb.run(&["tx", "list"]);
    assert!(list.stdout.contains(&who), "{list:?}");
    assert!(!list.stdout.contains("mallory"), "{list:?}");
    let audit = sb.run(&["tx", "audit"]);
    assert!(audit.stdout.contains(&who), "{audit:?}");
    assert!(!audit.stdout.contains("mallory"), "{audit:?}");
}

/// Issue 12 item 10: waves follow the expanded graph, so a call inside a nested procedure
/// is never listed beside a call it waits for.
#[test]
fn plan_waves_follow_nested_procedures() {
    let sb = Sandbox::new();
    let r = sb.run(&["plan", "workflows/provision-tenant.yaml", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("plan --json is JSON");
    let wave = |step: &str| -> u64 {
        let entries = v.as_array().expect("a list of calls");
        match entries.iter().find(|e| e["step"] == step) {
            Some(e) => e["wave"].as_u64().expect("a wave number"),
            None => panic!("no {step} in {}", r.stdout),
        }
    };
    assert!(wave("dns/zone") < wave("dns/mailHost"), "{}", r.stdout);
    assert!(wave("dns/mailHost") < wave("dns/mx"), "{}", r.stdout);
    assert!(wave("dns/zone") < wave("dns/spf"), "{}", r.stdout);
    let text = sb.run(&["plan", "workflows/provision-tenant.yaml"]);
    let header_of = |step: &str| -> String {
        let mut header = String::new();
        for line in text.stdout.lines() {
            if line.starts_with("wave ") {
                header = line.to_string();
            } else if line.trim_start().starts_with(&format!("{step} ")) {
                return header;
            }
        }
        panic!("no {step} in {}", text.stdout)
    };
    assert_ne!(
        header_of("dns/zone"),
        header_of("dns/mailHost"),
        "{}",
        text.stdout
    );
    assert_ne!(
        header_of("dns/mailHost"),
        header_of("dns/mx"),
        "{}",
        text.stdout
    );
}

/// Issue 12 item 1: a step failing with an error that quotes a secret (YAML `secret: true`
/// or XML `do-not-log="1"`), or a value computed from one, leaves it in clear neither on
/// stderr at the default log level, nor in the response, nor in the journal.
#[test]
fn a_secret_in_a_failing_step_stays_masked() {
    let sb = Sandbox::new();
    sb.write(
        "ns/secret.yaml",
        r#"namespace: Sec
procedures:
  Write:
    access: public
    inputs:
      password: { type: string, secret: true }
    steps:
      file:
        call: Filesystem Provider/WriteFile
        with:
          path: "nonexistent/{{ data.password }}/x.txt"
          content: { $expr: "upper(data.password)" }
  Plain:
    access: public
    inputs:
      password: { type: string, secret: true }
    steps:
      file:
        call: Filesystem Provider/WriteFile
        with:
          path: "nonexistent/{{ data.password }}/x.txt"
          content: hello
"#,
    );
    let secret = "Pw-7f3a-secret-91c2";
    let yaml = sb.write(
        "yaml.yaml",
        &format!("call: Sec/Write\ndata: {{ password: {secret} }}\n"),
    );
    let xml = sb.write(
        "xml.xml",
        &format!(
            "<request namespace=\"Sec\" procedure=\"Plain\"><data>\
             <password do-not-log=\"1\">{secret}</password></data></request>\n"
        ),
    );
    let ns = sb.path("ns");
    for request in [yaml, xml] {
        let r = sb.run_with(&["run", request.to_str().unwrap()], &ns);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stderr.contains("step failed"), "{r:?}");
        for shown in [&r.stderr, &r.stdout] {
            assert!(!shown.contains(secret), "secret shown: {r:?}");
            assert!(
                !shown.contains(&secret.to_uppercase()),
                "computed secret shown: {r:?}"
            );
        }
    }
    let list = sb.run_with(&["tx", "list"], &ns);
    let ids: Vec<&str> = list
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids.len(), 2, "{list:?}");
    for id in ids {
        let log = sb.run_with(&["tx", "log", id], &ns);
        assert_eq!(log.code, 0, "{log:?}");
        assert!(log.stdout.contains("does not exist"), "{log:?}");
        assert!(
            !log.stdout.contains(secret),
            "secret in the journal: {log:?}"
        );
        assert!(
            !log.stdout.contains(&secret.to_uppercase()),
            "computed secret in the journal: {log:?}"
        );
    }
}

/// Issue 19 §7: a `needs=` naming the previous step of an XML procedure (document order)
/// is the same dependency as the order's own: one edge, drawn once.
#[test]
fn graph_draws_a_needs_on_the_previous_step_once() {
    let sb = Sandbox::new();
    sb.write(
        "ns/g.xml",
        r#"<namespace name="G">
  <procedure name="P" access="public" type="write">
    <execute id="a" namespace="Filesystem Provider" procedure="CreateFolder"><executeData><path>a</path></executeData></execute>
    <execute id="b" namespace="Filesystem Provider" procedure="CreateFolder" needs="a"><executeData><path>a/b</path></executeData></execute>
  </procedure>
</namespace>"#,
    );
    let ns = sb.dir.path().join("ns");
    let r = sb.run_env(&["graph", "G", "P"], &ns, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.matches("n1 -> n2").count(), 1, "{r:?}");
}

/// Issue 19 §7: the quick start's second run fails twice at once (the zone and the tenant
/// folder exist); the response names the failure of the step first in the procedure's
/// order, whichever finished first, so it is the same on every run.
#[test]
fn a_second_quick_start_names_the_zone_failure() {
    let sb = Sandbox::new();
    let first = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(first.code, 0, "{first:?}");
    for _ in 0..3 {
        let again = sb.run(&["run", "workflows/provision-tenant.yaml"]);
        assert_eq!(again.code, 1, "{again:?}");
        assert!(
            again
                .stderr
                .contains("failed at step dns/zone: zone contoso.test already exists"),
            "{again:?}"
        );
    }
}

/// Issue 19 §3: a plan line says what the run will do, and the exit status follows.
#[test]
fn plan_says_what_the_run_will_do_and_exits_accordingly() {
    let sb = Sandbox::new();
    let fresh = sb.run(&["plan", "workflows/provision-tenant.yaml"]);
    assert_eq!(fresh.code, 0, "{fresh:?}");
    assert!(
        fresh.stdout.contains("+ create zone contoso.test"),
        "{fresh:?}"
    );
    assert!(fresh.stdout.contains("0 will fail"), "{fresh:?}");
    let detailed = sb.run(&[
        "plan",
        "workflows/provision-tenant.yaml",
        "--detailed-exitcode",
    ]);
    assert_eq!(detailed.code, 2, "changes: {detailed:?}");

    let r = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(r.code, 0, "{r:?}");
    // The tenant is there: the run would fail, and the plan says so instead of "no change".
    let again = sb.run(&["plan", "workflows/provision-tenant.yaml"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again
            .stdout
            .contains("! will fail: zone contoso.test already exists"),
        "{again:?}"
    );
    assert!(
        !again.stdout.contains("already exists (no change)"),
        "{again:?}"
    );
    // The zone and the tenant folder are both in the first wave (they run at once): the plan
    // names the first in the workflow's order, whatever the scheduling.
    assert!(
        again.stdout.contains("The run would fail at step dns/zone"),
        "{again:?}"
    );
    let detailed = sb.run(&[
        "plan",
        "workflows/provision-tenant.yaml",
        "--detailed-exitcode",
    ]);
    assert_eq!(detailed.code, 1, "{detailed:?}");
    let r = sb.run(&["run", "workflows/provision-tenant.yaml", "--quiet"]);
    assert_eq!(r.code, 1, "the run does fail: {r:?}");

    // A value only known after templates: the provider's preview rejects it.
    let bad = sb.write(
        "bad-mail.yaml",
        "call: Hosted DNS/CreateTenantZone\ndata: { zone: other.test, mailAddress: not-an-ip }\n",
    );
    let r = sb.run(&["plan", bad.to_str().expect("utf-8")]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .contains("! will fail: input `address` is not an IPv4 address"),
        "{r:?}"
    );
    assert!(!r.stdout.contains("preview failed"), "{r:?}");

    // Nothing to do: 0 with --detailed-exitcode.
    let ns = sb.path("ns");
    sb.write(
        "ns/look.yaml",
        "namespace: Look\nprocedures:\n  Usage:\n    access: public\n    steps:\n      u: { call: Filesystem Provider/GetUsage, with: { path: \".\" } }\n",
    );
    let look = sb.write("look.yaml", "call: Look/Usage\ndata: {}\n");
    let r = sb.run_with(
        &["plan", look.to_str().expect("utf-8"), "--detailed-exitcode"],
        &ns,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("= read only (no change)"), "{r:?}");
}

/// Issue 19 §3: constant inputs are checked against the provider's declared inputs by
/// `validate`, `plan` and `run`, before any provider call.
#[test]
fn constant_inputs_are_checked_before_anything_runs() {
    let sb = Sandbox::new();
    let ns = sb.path("ns");
    sb.write(
        "ns/bad.yaml",
        "namespace: Bad\nprocedures:\n  Records:\n    access: public\n    steps:\n      \
         first: { call: Filesystem Provider/CreateFolder, with: { path: made } }\n      \
         aaa: { call: DNS Provider/AddRecord, needs: [first], with: { zoneName: x.test, rrType: AAA, address: \"::1\" } }\n      \
         escape: { call: Filesystem Provider/CreateFolder, needs: [first], with: { path: ../escape } }\n",
    );
    let req = sb.write("req.yaml", "call: Bad/Records\ndata: {}\n");
    let r = sb.run_with(&["validate", ns.to_str().expect("utf-8")], &ns);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("bad.yaml:7"), "file and line: {r:?}");
    assert!(
        r.stderr
            .contains("input `rrType` of `DNS Provider/AddRecord`")
            && r.stderr.contains("\"AAA\""),
        "{r:?}"
    );
    assert!(r.stderr.contains("bad.yaml:8"), "{r:?}");
    assert!(
        r.stderr
            .contains("input `path` of `Filesystem Provider/CreateFolder`"),
        "{r:?}"
    );
    for args in [&["plan"][..], &["run", "--quiet"][..]] {
        let mut all = args.to_vec();
        all.push(req.to_str().expect("utf-8"));
        let r = sb.run_with(&all, &ns);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains("AAA"), "{args:?}: {r:?}");
    }
    assert!(
        !sb.data().join("files/made").exists(),
        "no provider was called"
    );
}
