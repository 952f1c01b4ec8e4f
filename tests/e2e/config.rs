//! The configuration through the binary: layering and redaction in `config show`, bad files
//! (exit 2 naming file, line and key), the RFC 2136 DNS backend chosen in the file against
//! a private BIND `named` (checked with `dig`), and an exec provider started from the file.

use crate::util::{repo, run_clean, Sandbox};
use provisio_test_support::bind::Named;
use std::path::{Path, PathBuf};
use std::process::Command;

const SEAL_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn show(sandbox: &Sandbox, args: &[&str], env: &[(&str, String)]) -> toml::Table {
    let mut all = args.to_vec();
    all.extend(["config", "show"]);
    let r = run_clean(sandbox.dir.path(), &all, env);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stdout.contains(SEAL_KEY), "seal key leaked: {r:?}");
    toml::from_str(&r.stdout).unwrap_or_else(|e| panic!("config show is not TOML: {e}\n{r:?}"))
}

fn get<'a>(t: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut parts = path.split('.');
    let first = parts.next().unwrap_or_default();
    let mut v = t
        .get(first)
        .unwrap_or_else(|| panic!("no {path} in {t:#?}"));
    for p in parts {
        v = v.get(p).unwrap_or_else(|| panic!("no {path} in {t:#?}"));
    }
    v
}

fn path_of(t: &toml::Table, key: &str) -> PathBuf {
    PathBuf::from(
        get(t, key)
            .as_str()
            .unwrap_or_else(|| panic!("{key} is not a string")),
    )
}

#[test]
fn show_layers_file_env_and_flags_and_redacts_the_seal_key() {
    let s = Sandbox::new();
    let base = s.dir.path();
    s.write(
        "provisio.toml",
        "data_dir = \"state\"\nnamespaces = \"ns\"\n\n[engine]\nmax_parallel = 4\n\n[retry.undo]\nbudget = \"2m\"\n\n\
         [providers.dns]\nzone_dir = \"my-zones\"\n\n[[providers.exec]]\nname = \"Ledger\"\n\
         command = [\"python3\", \"ledger.py\"]\nenv = { LEDGER_FILE = \"l.json\", API_TOKEN = \"hunter2\" }\n",
    );
    // File only (./provisio.toml is found in the working directory).
    let t = show(&s, &[], &[]);
    assert_eq!(
        path_of(&t, "data_dir"),
        base.join("state"),
        "relative to the file"
    );
    assert_eq!(path_of(&t, "namespaces"), base.join("ns"));
    assert_eq!(get(&t, "engine.max_parallel").as_integer(), Some(4));
    assert_eq!(get(&t, "retry.undo.budget").as_str(), Some("2m"));
    assert_eq!(
        get(&t, "retry.undo.initial").as_str(),
        Some("100ms"),
        "the effective policy, defaults included"
    );
    assert_eq!(
        get(&t, "retry.calls.max_attempts").as_integer(),
        Some(3),
        "default"
    );
    assert_eq!(path_of(&t, "providers.dns.zone_dir"), base.join("my-zones"));
    assert_eq!(
        path_of(&t, "providers.filesystem.root"),
        base.join("state/files")
    );
    assert_eq!(
        path_of(&t, "journal.seal_key_file"),
        base.join("state/seal.key")
    );
    let exec = &get(&t, "providers.exec").as_array().expect("exec list")[0];
    assert_eq!(
        exec.get("working_dir").and_then(|v| v.as_str()),
        base.to_str()
    );
    let env = exec.get("env").expect("env");
    assert_eq!(
        env.get("LEDGER_FILE").and_then(|v| v.as_str()),
        Some("l.json")
    );
    assert_eq!(
        env.get("API_TOKEN").and_then(|v| v.as_str()),
        Some("<redacted>")
    );

    // Environment beats the file; derived paths follow the new data folder.
    let env = [
        (
            "PROVISIO_DATA_DIR",
            base.join("env-data").display().to_string(),
        ),
        ("PROVISIO_STEP_TIMEOUT_SECS", "5".to_string()),
        ("PROVISIO_SEAL_KEY", SEAL_KEY.to_string()),
    ];
    let r = run_clean(base, &["config", "show"], &env);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        !r.stdout.contains(SEAL_KEY) && !r.stderr.contains(SEAL_KEY),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("PROVISIO_SEAL_KEY"),
        "says where the key comes from: {r:?}"
    );
    let t = show(&s, &[], &env);
    assert_eq!(path_of(&t, "data_dir"), base.join("env-data"));
    assert_eq!(
        path_of(&t, "providers.filesystem.root"),
        base.join("env-data/files")
    );
    assert_eq!(get(&t, "engine.step_timeout_secs").as_integer(), Some(5));
    assert_eq!(
        get(&t, "engine.max_parallel").as_integer(),
        Some(4),
        "file value kept"
    );

    // Flags beat the environment.
    let t = show(
        &s,
        &["--data-dir", "flag-data", "--namespaces", "flag-ns"],
        &env,
    );
    assert_eq!(path_of(&t, "data_dir"), base.join("flag-data"));
    assert_eq!(path_of(&t, "namespaces"), base.join("flag-ns"));

    // --config and PROVISIO_CONFIG name another file; relative paths follow that file.
    s.write("etc/other.toml", "data_dir = \"d2\"\n");
    let t = show(&s, &["--config", "etc/other.toml"], &[]);
    assert_eq!(path_of(&t, "data_dir"), base.join("etc/d2"));
    let t = show(
        &s,
        &[],
        &[(
            "PROVISIO_CONFIG",
            base.join("etc/other.toml").display().to_string(),
        )],
    );
    assert_eq!(path_of(&t, "data_dir"), base.join("etc/d2"));
    // Without a file, the seal key comes from the key file, whose path is shown.
    let r = run_clean(base, &["--config", "etc/other.toml", "config", "show"], &[]);
    assert!(r.stdout.contains("seal key: read from"), "{r:?}");
}

#[test]
fn bad_config_exits_2_naming_file_line_and_key() {
    let s = Sandbox::new();
    let base = s.dir.path();
    s.write(
        "provisio.toml",
        "data_dir = \"d\"\n\n[engine]\nmax_paralel = 3\n",
    );
    let r = run_clean(base, &["config", "show"], &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("provisio.toml:4:"), "file:line: {r:?}");
    assert!(r.stderr.contains("max_paralel"), "key: {r:?}");

    s.write(
        "provisio.toml",
        "data_dir = \"d\"\n[engine]\nmax_parallel = 2\nstep_timeout_secs = \"soon\"\n",
    );
    let r = run_clean(base, &["run", "x.yaml"], &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("provisio.toml:4:"), "file:line: {r:?}");
    assert!(r.stderr.contains("engine.step_timeout_secs"), "key: {r:?}");
    assert!(!base.join("d").exists(), "nothing ran: {r:?}");

    s.write("provisio.toml", "[providers.dns]\nbackend = \"rfc2136\"\n");
    let r = run_clean(base, &["config", "show"], &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("providers.dns.server"), "{r:?}");

    let r = run_clean(base, &["--config", "missing.toml", "config", "show"], &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("missing.toml"), "{r:?}");
}

// ---- RFC 2136 against a private named ------------------------------------------------

const TEST_DNS_NAMESPACE: &str = r#"namespace: Test DNS
description: Two records in a row, the second of which can be made to fail.
procedures:
  AddTwoHosts:
    access: public
    type: write
    inputs:
      zone: { type: string, required: true }
      host: { type: string, required: true }
      address: { type: string, required: true }
      second: { type: string, required: true }
    steps:
      first:
        call: DNS Provider/AddRecord
        with:
          zoneName: "{{ data.zone }}"
          name: "{{ data.host }}"
          rrType: A
          address: "{{ data.address }}"
      second:
        needs: [first]
        call: DNS Provider/AddRecord
        with:
          zoneName: "{{ data.zone }}"
          name: "{{ data.host }}-2"
          rrType: A
          address: "{{ data.second }}"
"#;

#[test]
fn rfc2136_backend_from_the_config_file_adds_and_rolls_back() {
    let Some(n) = Named::start() else { return };
    let s = Sandbox::new();
    let base = s.dir.path();
    // The repo's namespaces plus a test namespace.
    let hosted = repo().join("namespaces/hosted-dns.yaml");
    let text = std::fs::read_to_string(hosted).expect("hosted-dns.yaml");
    s.write("ns/hosted-dns.yaml", &text);
    s.write("ns/test-dns.yaml", TEST_DNS_NAMESPACE);
    s.write(
        "provisio.toml",
        &format!(
            "data_dir = \"data\"\nnamespaces = \"ns\"\n[retry.calls]\nmax_attempts = 1\n[providers.dns]\n\
             backend = \"rfc2136\"\nserver = \"127.0.0.1:{}\"\nkey_file = \"{}\"\ntimeout_secs = 3\n",
            n.port,
            n.key_file().display()
        ),
    );
    let t = show(&s, &[], &[]);
    assert_eq!(get(&t, "providers.dns.backend").as_str(), Some("rfc2136"));

    // Hosted DNS/AddHostRecord through the server.
    s.write(
        "add.json",
        r#"{ "call": "Hosted DNS/AddHostRecord", "data": { "zone": "example.test", "host": "www", "address": "192.0.2.80" } }"#,
    );
    let r = run_clean(base, &["-q", "run", "add.json"], &[]);
    assert_eq!(r.code, 0, "{r:?}\nnamed log:\n{}", n.log());
    assert_eq!(
        n.dig("www.example.test", "A"),
        vec!["192.0.2.80".to_string()]
    );

    // Second step fails (bad address) → the first is undone on the server.
    s.write(
        "two.json",
        r#"{ "call": "Test DNS/AddTwoHosts", "data": { "zone": "example.test", "host": "api", "address": "192.0.2.81", "second": "not-an-address" } }"#,
    );
    let r = run_clean(base, &["-q", "run", "two.json"], &[]);
    assert_eq!(r.code, 1, "rolled back: {r:?}");
    assert!(
        n.dig("api.example.test", "A").is_empty(),
        "record gone after rollback: {r:?}"
    );
    assert_eq!(
        n.dig("www.example.test", "A"),
        vec!["192.0.2.80".to_string()],
        "earlier commit kept"
    );

    // The same request with a good second address commits both.
    s.write(
        "two-ok.json",
        r#"{ "call": "Test DNS/AddTwoHosts", "data": { "zone": "example.test", "host": "api", "address": "192.0.2.81", "second": "192.0.2.82" } }"#,
    );
    let r = run_clean(base, &["-q", "run", "two-ok.json"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        n.dig("api.example.test", "A"),
        vec!["192.0.2.81".to_string()]
    );
    assert_eq!(
        n.dig("api-2.example.test", "A"),
        vec!["192.0.2.82".to_string()]
    );
}

// ---- exec provider from the file -----------------------------------------------------

fn python3() -> bool {
    let ok = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let required = std::env::var("PROVISIO_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "PROVISIO_REQUIRE_PYTHON=1 but python3 is missing (scripts/ensure-tools)"
        );
        eprintln!("note: python3 not found; skipping the exec-provider config test");
    }
    ok
}

const BILLING_NAMESPACE: &str = r#"namespace: Billing
procedures:
  OpenCustomer:
    access: public
    type: write
    inputs:
      customer: { type: string, required: true }
      bonus: { type: int, default: 500 }
    steps:
      open:
        call: Ledger Provider/CreateAccount
        with:
          name: "{{ data.customer }}"
          credit: 1000
      welcomeBonus:
        needs: [open]
        call: Ledger Provider/Credit
        with:
          name: "{{ data.customer }}"
          amount: "{{ data.bonus }}"
"#;

fn ledger(base: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(base.join("state/ledger.json")).unwrap_or_else(|_| "{}".into());
    serde_json::from_str(&text).expect("ledger JSON")
}

#[test]
fn exec_provider_from_the_config_file_runs_a_request() {
    if !python3() {
        return;
    }
    let s = Sandbox::new();
    let base = s.dir.path();
    s.write("ns/billing.yaml", BILLING_NAMESPACE);
    s.write(
        "provisio.toml",
        &format!(
            "data_dir = \"data\"\nnamespaces = \"ns\"\n[retry.calls]\nmax_attempts = 1\n\n[[providers.exec]]\n\
             name = \"Ledger\"\ncommand = [\"python3\", \"{}\"]\nenv = {{ LEDGER_FILE = \"state/ledger.json\" }}\n\
             call_timeout_secs = 20\n",
            repo().join("examples/exec-provider/ledger.py").display()
        ),
    );
    std::fs::create_dir_all(base.join("state")).expect("state dir");
    s.write(
        "open.yaml",
        "call: Billing/OpenCustomer\ndata:\n  customer: alice\n",
    );
    let r = run_clean(base, &["-q", "run", "open.yaml"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(ledger(base)["accounts"]["alice"]["balance"], 1500, "{r:?}");

    // Credit refuses a non-positive amount: the account opened first is undone.
    s.write(
        "bad.yaml",
        "call: Billing/OpenCustomer\ndata:\n  customer: bob\n  bonus: 0\n",
    );
    let r = run_clean(base, &["-q", "run", "bad.yaml"], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        ledger(base)["accounts"].get("bob").is_none(),
        "rolled back: {r:?}"
    );
    assert_eq!(ledger(base)["accounts"]["alice"]["balance"], 1500);

    // A provider whose program cannot start: a clear error naming provider and command.
    s.write(
        "broken.toml",
        "namespaces = \"ns\"\n[[providers.exec]]\nname = \"Ledger\"\ncommand = [\"/nonexistent/ledger-bin\", \"--serve\"]\n",
    );
    let r = run_clean(base, &["--config", "broken.toml", "run", "open.yaml"], &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("Ledger") && r.stderr.contains("/nonexistent/ledger-bin"),
        "{r:?}"
    );
}

// ---- recover sweeps the zone folder ----------------------------------------------------

#[test]
fn recover_sweeps_markers_of_finished_transactions_and_dead_temp_files() {
    let s = Sandbox::new();
    let base = s.dir.path();
    s.write(
        "ns/hosted-dns.yaml",
        &std::fs::read_to_string(repo().join("namespaces/hosted-dns.yaml"))
            .expect("hosted-dns.yaml"),
    );
    s.write(
        "provisio.toml",
        "data_dir = \"data\"\nnamespaces = \"ns\"\n",
    );
    s.write(
        "zone.json",
        r#"{ "call": "Hosted DNS/CreateTenantZone", "data": { "zone": "sweep.test" } }"#,
    );
    let r = run_clean(base, &["-q", "run", "zone.json"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let markers = base.join("data/.zones.pending");
    let count = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    assert!(count(&markers) > 0, "the committed calls' markers: {r:?}");
    // A temp file left by a writer that is gone (a crash mid-write).
    let mut gone = Command::new("true").spawn().expect("run true");
    let pid = gone.id();
    gone.wait().expect("wait");
    let tmp = base.join(format!("data/zones/.sweep.test.zone.tmp-{pid}-0"));
    std::fs::write(&tmp, "partial").expect("plant");

    let r = run_clean(base, &["recover"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        count(&markers),
        0,
        "marker of a committed transaction swept: {r:?}"
    );
    assert!(!tmp.exists(), "dead writer's temp file swept");
    assert!(
        base.join("data/zones/sweep.test.zone").exists(),
        "the zone stays"
    );
}

#[test]
fn recover_prunes_the_filesystem_markers_of_finished_transactions() {
    let s = Sandbox::new();
    let base = s.dir.path();
    s.write("provisio.toml", "data_dir = \"data\"\n");
    // A trusted request needs no namespace folder: the provider's own namespace serves it.
    s.write(
        "folder.xml",
        r#"<request><procedure>
  <execute namespace="Filesystem Provider" procedure="CreateFolder"><executeData><path>t</path></executeData></execute>
  <execute namespace="Filesystem Provider" procedure="CreateFolder"><executeData><path>u</path></executeData></execute>
</procedure></request>"#,
    );
    let r = run_clean(base, &["-q", "run", "folder.xml"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let markers = base.join("data/files/.provisio-state/pending");
    let count = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    // The committed transaction's intent file went as it ended.
    assert_eq!(
        count(&markers),
        0,
        "markers of a committed transaction: {r:?}"
    );
    // What a crash (or an older version, one file a call) leaves of a finished one. (A
    // durable run keeps CreateFolder's markers in the journal: the folder may not be there.)
    std::fs::create_dir_all(&markers).expect("the markers' folder");
    std::fs::write(
        markers.join("0190c0de-0000-7000-8000-0000000000aa_intents.jsonl"),
        "\n{\"key\":\"0190c0de-0000-7000-8000-0000000000aa/s\"}",
    )
    .expect("plant");
    std::fs::write(
        markers.join("0190c0de-0000-7000-8000-0000000000ab_step1.json"),
        "{}",
    )
    .expect("plant");
    let mut gone = Command::new("true").spawn().expect("run true");
    let pid = gone.id();
    gone.wait().expect("wait");
    let tmp = base.join(format!("data/files/.provisio-state/quotas.json.tmp-{pid}"));
    std::fs::write(&tmp, "partial").expect("plant");

    let r = run_clean(base, &["recover"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        count(&markers),
        0,
        "markers of a committed transaction pruned: {r:?}"
    );
    assert!(!tmp.exists(), "dead writer's temp file swept");
    assert!(base.join("data/files/t").is_dir() && base.join("data/files/u").is_dir());
}

/// A sandbox whose `provisio.toml` points the DNS provider at `n` with zone creation
/// through rndc, and the repo's namespaces and workflows.
fn bind_sandbox(n: &Named) -> Sandbox {
    let s = Sandbox::new();
    for f in [
        "hosted-dns.yaml",
        "hosted-files.xml",
        "hosted-tenant.yaml",
        "hosted-users.yaml",
    ] {
        let text = std::fs::read_to_string(repo().join("namespaces").join(f)).expect("namespace");
        s.write(&format!("ns/{f}"), &text);
    }
    for f in ["provision-tenant.yaml", "decommission-tenant.yaml"] {
        let text = std::fs::read_to_string(repo().join("workflows").join(f)).expect("workflow");
        s.write(f, &text);
    }
    s.write(
        "provisio.toml",
        &format!(
            "data_dir = \"data\"\nnamespaces = \"ns\"\n[retry.calls]\nmax_attempts = 1\n[providers.dns]\n\
             backend = \"rfc2136\"\nserver = \"127.0.0.1:{}\"\nkey_file = \"{}\"\ntimeout_secs = 3\n\
             [providers.dns.rndc]\nzone_dir = \"{}\"\nserver = \"127.0.0.1\"\nport = {}\nkey_file = \"{}\"\n",
            n.port,
            n.key_file().display(),
            n.zone_dir().display(),
            n.rndc_port,
            n.rndc_key_file().display()
        ),
    );
    s
}

#[test]
fn provision_and_decommission_tenant_end_to_end_on_bind() {
    let Some(n) = Named::start() else { return };
    let s = bind_sandbox(&n);
    let base = s.dir.path();
    let served = |zone: &str| n.dig_status(zone, "SOA") == ("NOERROR".to_string(), true);
    assert!(!served("contoso.test"));

    let r = run_clean(base, &["-q", "run", "provision-tenant.yaml"], &[]);
    assert_eq!(r.code, 0, "{r:?}\nnamed log:\n{}", n.log());
    assert!(served("contoso.test"), "zone added by rndc");
    assert_eq!(
        n.dig("mail.contoso.test", "A"),
        vec!["192.0.2.25".to_string()]
    );
    assert_eq!(
        n.dig("contoso.test", "MX"),
        vec!["10 mail.contoso.test.".to_string()]
    );
    assert!(base
        .join("data/files/tenants/contoso/WELCOME.txt")
        .is_file());

    // A second provision fails on the existing zone and rolls back; the zone stays.
    let r = run_clean(base, &["-q", "run", "provision-tenant.yaml"], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        served("contoso.test"),
        "the first tenant's zone is untouched"
    );

    let r = run_clean(base, &["-q", "run", "decommission-tenant.yaml"], &[]);
    assert_eq!(r.code, 0, "{r:?}\nnamed log:\n{}", n.log());
    assert!(!served("contoso.test"), "zone deleted by rndc");
    assert_eq!(n.dig_status("contoso.test", "SOA").0, "REFUSED");
    assert!(!base.join("data/files/tenants/contoso").exists());

    // And provisioned again from scratch.
    let r = run_clean(base, &["-q", "run", "provision-tenant.yaml"], &[]);
    assert_eq!(r.code, 0, "{r:?}\nnamed log:\n{}", n.log());
    assert!(served("contoso.test"));
}

#[test]
fn a_failed_decommission_on_bind_puts_the_zone_back_with_its_records() {
    let Some(n) = Named::start() else { return };
    let s = bind_sandbox(&n);
    let base = s.dir.path();
    let r = run_clean(base, &["-q", "run", "provision-tenant.yaml"], &[]);
    assert_eq!(r.code, 0, "{r:?}\nnamed log:\n{}", n.log());
    let before = n.axfr_of("contoso.test");
    assert!(before.iter().any(|l| l.contains("v=spf1")), "{before:?}");
    // The folders step fails (the tenant's folder is gone), after the zone was deleted.
    std::fs::remove_dir_all(base.join("data/files/tenants/contoso")).expect("rm");
    let r = run_clean(base, &["-q", "run", "decommission-tenant.yaml"], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        n.dig_status("contoso.test", "SOA"),
        ("NOERROR".to_string(), true),
        "the undo of DeleteZone added the zone back: {r:?}\n{}",
        n.log()
    );
    assert_eq!(n.axfr_of("contoso.test"), before, "with all its records");
}
