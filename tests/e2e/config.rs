//! The configuration through the binary: layering and redaction in `config show`, bad files
//! (exit 2 naming file, line and key), the RFC 2136 DNS backend chosen in the file against
//! a private BIND `named` (checked with `dig`), and an exec provider started from the file.

use crate::util::{repo, run_clean, Sandbox};
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
        "data_dir = \"state\"\nnamespaces = \"ns\"\n\n[engine]\nmax_parallel = 4\nretries = 7\n\n\
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
    assert_eq!(get(&t, "engine.retries").as_integer(), Some(7));
    assert_eq!(
        get(&t, "engine.undo_attempts").as_integer(),
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
        ("PROVISIO_RETRIES", "5".to_string()),
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
    assert_eq!(get(&t, "engine.retries").as_integer(), Some(5));
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
        "data_dir = \"d\"\n[engine]\nretries = 2\nstep_timeout_secs = \"soon\"\n",
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

const ZONE: &str = "example.test";
const KEY_NAME: &str = "ddns-key";

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A private `named` serving `example.test` on a free loopback port, stopped on drop.
struct Named {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Named {
    /// `None` (with a note) when BIND is missing, unless `PROVISIO_REQUIRE_BIND=1`.
    fn start() -> Option<Named> {
        let required = std::env::var("PROVISIO_REQUIRE_BIND").is_ok_and(|v| v == "1");
        let (Some(named), Some(_)) = (which("named"), which("dig")) else {
            assert!(
                !required,
                "PROVISIO_REQUIRE_BIND=1 but `named`/`dig` are missing (scripts/ensure-tools)"
            );
            eprintln!(
                "note: BIND (`named`, `dig`) not installed; skipping the rfc2136 config test"
            );
            return None;
        };
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(&named) {
                Ok(n) => return Some(n),
                Err(e) => last = e,
            }
        }
        panic!("named did not start: {last}");
    }

    fn try_start(named: &Path) -> Result<Named, String> {
        use std::io::Read as _;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        let port = {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let port = udp.local_addr().map_err(|e| e.to_string())?.port();
            std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|e| e.to_string())?;
            port
        };
        let mut secret = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut secret))
            .map_err(|e| e.to_string())?;
        let w = |name: &str, text: String| {
            std::fs::write(d.join(name), text).map_err(|e| e.to_string())
        };
        w(
            "ddns.key",
            format!(
                "key \"{KEY_NAME}\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{}\";\n}};\n",
                base64(&secret)
            ),
        )?;
        w(
            "example.test.zone",
            format!(
                "$ORIGIN {ZONE}.\n$TTL 300\n@ 300 IN SOA ns1.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 300\n\
                 @ 300 IN NS ns1.{ZONE}.\nns1 300 IN A 127.0.0.1\n"
            ),
        )?;
        let dd = d.display();
        w(
            "named.conf",
            format!(
                "include \"{dd}/ddns.key\";\noptions {{\n\tdirectory \"{dd}\";\n\tpid-file \"{dd}/named.pid\";\n\
                 \tlisten-on port {port} {{ 127.0.0.1; }};\n\tlisten-on-v6 {{ none; }};\n\trecursion no;\n\
                 \tallow-query {{ any; }};\n\tdnssec-validation no;\n\tnotify no;\n\
                 \tsession-keyfile \"{dd}/session.key\";\n\tmanaged-keys-directory \"{dd}\";\n}};\n\
                 controls {{ }};\nzone \"{ZONE}\" {{\n\ttype primary;\n\tfile \"{dd}/example.test.zone\";\n\
                 \tupdate-policy {{ grant {KEY_NAME} zonesub ANY; }};\n\tcheck-integrity no;\n}};\n"
            ),
        )?;
        let log = std::fs::File::create(d.join("named.log")).map_err(|e| e.to_string())?;
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let mut cmd = Command::new(named);
        cmd.arg("-g");
        if root {
            cmd.args(["-u", "root"]);
        }
        let child = cmd
            .arg("-c")
            .arg(d.join("named.conf"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", named.display()))?;
        let mut n = Named { child, dir, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if !n.dig(ZONE, "SOA").is_empty() {
                return Ok(n);
            }
            if let Ok(Some(status)) = n.child.try_wait() {
                return Err(format!("named exited ({status}): {}", n.log()));
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("named not ready after 5 s: {}", n.log()));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    /// `dig @127.0.0.1 -p PORT +short NAME TYPE`.
    fn dig(&self, name: &str, rtype: &str) -> Vec<String> {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                "+short",
                "+time=1",
                "+tries=1",
                name,
                rtype,
            ])
            .output()
            .expect("dig");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with(';'))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        // SIGTERM by PID (named flushes and exits), then wait; SIGKILL if it lingers.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
            "data_dir = \"data\"\nnamespaces = \"ns\"\n[engine]\nretries = 0\n[providers.dns]\n\
             backend = \"rfc2136\"\nserver = \"127.0.0.1:{}\"\nkey_file = \"{}\"\ntimeout_secs = 3\n",
            n.port,
            n.dir.path().join("ddns.key").display()
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
            "data_dir = \"data\"\nnamespaces = \"ns\"\n[engine]\nretries = 0\n\n[[providers.exec]]\n\
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
