//! A private BIND `named` on 127.0.0.1 for the RFC 2136 tests, the end-to-end tests and the
//! provider benchmarks: temp dir, TSIG keys, a primary zone `example.test` open to dynamic
//! updates signed with `ddns-key`, on a port free for UDP and TCP, started in the
//! foreground and stopped by its PID (SIGTERM, then wait; SIGKILL if it lingers) on drop.
//! [`Named::stop`] and [`Named::restart`] take it down and bring it back on the same port,
//! as an operator's restart would.
//!
//! The server also has an `rndc` control channel on its own loopback port, signed with
//! `rndc-key`, and `allow-new-zones yes;`, so zones can be added and deleted at run time
//! (`rndc addzone` / `rndc delzone`); [`Named::zone_dir`] is a folder it can read zone
//! files from and write journals to.
//!
//! Without `named` (or `dig`) installed, [`Named::start`] prints a note and returns `None`
//! so tests skip, unless `PROVISIO_REQUIRE_BIND=1`, which makes that a failure.

use std::fs;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The zone every instance serves.
pub const ZONE: &str = "example.test";
/// The key granted `zonesub ANY` on the zone.
pub const KEY_NAME: &str = "ddns-key";
/// A key the server knows but does not allow to update anything.
pub const OTHER_KEY_NAME: &str = "other-key";
/// The key of the `rndc` control channel.
pub const RNDC_KEY_NAME: &str = "rndc-key";

/// A running `named`.
pub struct Named {
    child: Child,
    dir: tempfile::TempDir,
    /// The UDP+TCP port on 127.0.0.1.
    pub port: u16,
    /// Secret of [`KEY_NAME`] (base64).
    pub secret: String,
    /// Secret of [`OTHER_KEY_NAME`] (base64).
    pub other_secret: String,
    /// The `rndc` control channel's TCP port on 127.0.0.1 (key [`RNDC_KEY_NAME`]).
    pub rndc_port: u16,
}

/// The path of an installed program: `PATH`, then the `sbin` folders (where Debian puts
/// `named`, which is not on a normal user's `PATH`).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// 32 random bytes, base64, from the OS.
fn random_secret() -> String {
    use base64::Engine as _;
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A port free for both UDP and TCP on 127.0.0.1 (the sockets are closed again).
fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port for both UDP and TCP");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Sends an SOA query for `zone` over UDP and returns true on an authoritative answer
/// with at least one answer record.
fn soa_ready(port: u16, zone: &str) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let mut q = vec![0x12, 0x34, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in zone.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 6, 0, 1]);
    if sock.send_to(&q, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    match sock.recv(&mut buf) {
        Ok(n) if n >= 12 => {
            let aa = buf[2] & 0x04 != 0;
            let rcode = buf[3] & 0x0f;
            let ancount = u16::from_be_bytes([buf[6], buf[7]]);
            buf[0] == 0x12 && buf[1] == 0x34 && aa && rcode == 0 && ancount > 0
        }
        _ => false,
    }
}

fn key_block(name: &str, secret: &str) -> String {
    format!("key \"{name}\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{secret}\";\n}};\n")
}

impl Named {
    /// Starts a fresh server, or `None` (with a note) when BIND is not installed and
    /// `PROVISIO_REQUIRE_BIND` is not `1`.
    pub fn start() -> Option<Named> {
        let required = std::env::var("PROVISIO_REQUIRE_BIND").is_ok_and(|v| v == "1");
        let (Some(named), Some(_dig)) = (which("named"), which("dig")) else {
            assert!(
                !required,
                "PROVISIO_REQUIRE_BIND=1 but `named`/`dig` are not installed (scripts/ensure-tools installs bind9 and bind9-dnsutils)"
            );
            eprintln!("note: BIND (`named`, `dig`) not installed; skipping RFC 2136 test (run scripts/ensure-tools)");
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
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        let port = free_port();
        let rndc_port = loop {
            let p = free_port();
            if p != port {
                break p;
            }
        };
        let secret = random_secret();
        let other_secret = random_secret();
        let w = |name: &str, text: String| fs::write(d.join(name), text).map_err(|e| e.to_string());
        w("ddns.key", key_block(KEY_NAME, &secret))?;
        w("other.key", key_block(OTHER_KEY_NAME, &other_secret))?;
        w("rndc.key", key_block(RNDC_KEY_NAME, &random_secret()))?;
        fs::create_dir(d.join("zones")).map_err(|e| e.to_string())?;
        w(
            "example.test.zone",
            format!(
                "$ORIGIN {ZONE}.\n$TTL 300\n\
                 @ 300 IN SOA ns1.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 300\n\
                 @ 300 IN NS ns1.{ZONE}.\n\
                 ns1 300 IN A 127.0.0.1\n\
                 pre 300 IN A 192.0.2.1\n"
            ),
        )?;
        let dd = d.display();
        w(
            "named.conf",
            format!(
                "include \"{dd}/ddns.key\";\ninclude \"{dd}/other.key\";\n\
                 include \"{dd}/rndc.key\";\n\
                 options {{\n\
                 \tdirectory \"{dd}\";\n\tpid-file \"{dd}/named.pid\";\n\
                 \tlisten-on port {port} {{ 127.0.0.1; }};\n\tlisten-on-v6 {{ none; }};\n\
                 \trecursion no;\n\tallow-query {{ any; }};\n\tdnssec-validation no;\n\tnotify no;\n\
                 \tsession-keyfile \"{dd}/session.key\";\n\tmanaged-keys-directory \"{dd}\";\n\
                 \tallow-new-zones yes;\n\
                 }};\n\
                 controls {{\n\
                 \tinet 127.0.0.1 port {rndc_port} allow {{ 127.0.0.1; }} keys {{ \"{RNDC_KEY_NAME}\"; }};\n\
                 }};\n\
                 zone \"{ZONE}\" {{\n\
                 \ttype primary;\n\tfile \"{dd}/example.test.zone\";\n\
                 \tupdate-policy {{ grant {KEY_NAME} zonesub ANY; }};\n\
                 \tallow-transfer {{ key {KEY_NAME}; }};\n\
                 \tcheck-integrity no;\n\
                 }};\n"
            ),
        )?;
        let child = spawn(named, d)?;
        let mut n = Named {
            child,
            dir,
            port,
            secret,
            other_secret,
            rndc_port,
        };
        n.wait_ready()?;
        Ok(n)
    }

    /// Waits until the server answers for [`ZONE`] (at most 5 s).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if soa_ready(self.port, ZONE) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("named exited ({status}): {}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("named not ready after 5 s: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server as an operator's restart would (SIGTERM, then waits; SIGKILL if it
    /// lingers), keeping its folder, port and keys for [`Named::restart`].
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a stopped server again on the same port, with the same configuration, zone and
    /// dynamic updates (named replays its zone journal), and waits until it answers.
    pub fn restart(&mut self) -> Result<(), String> {
        let named = which("named").ok_or("`named` is not installed")?;
        self.child = spawn(&named, self.dir.path())?;
        self.wait_ready()
    }

    /// The server address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The key file of [`KEY_NAME`] (readable by `nsupdate -k` and our parser).
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("ddns.key")
    }

    /// The key file of the `rndc` control channel (`rndc -k`).
    pub fn rndc_key_file(&self) -> PathBuf {
        self.dir.path().join("rndc.key")
    }

    /// A folder `named` reads zone files from and writes their journals to (empty at start).
    pub fn zone_dir(&self) -> PathBuf {
        self.dir.path().join("zones")
    }

    /// The response code (`NOERROR`, `NXDOMAIN`, `REFUSED`, …) of a non-recursive query,
    /// and whether the answer was authoritative.
    pub fn dig_status(&self, name: &str, rtype: &str) -> (String, bool) {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                "+norecurse",
                "+tcp",
                "+time=2",
                "+tries=1",
                name,
                rtype,
            ])
            .output()
            .expect("run dig");
        assert!(out.status.success(), "dig failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let status = text
            .split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or_else(|| panic!("no status in dig output: {text}"))
            .to_string();
        let aa = text
            .lines()
            .find(|l| l.contains(";; flags:"))
            .is_some_and(|l| l.split(';').nth(2).is_some_and(|f| f.contains(" aa")));
        (status, aa)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    /// `dig @127.0.0.1 -p PORT +short <name> <type>`, lines in order.
    pub fn dig(&self, name: &str, rtype: &str) -> Vec<String> {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                "+short",
                "+tcp",
                "+time=2",
                "+tries=1",
                name,
                rtype,
            ])
            .output()
            .expect("run dig");
        assert!(out.status.success(), "dig failed: {out:?}");
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect();
        lines.sort();
        lines
    }

    /// The zone by signed AXFR (`dig -k`), records other than SOA, sorted, one per line.
    pub fn axfr(&self) -> Vec<String> {
        self.axfr_of(ZONE)
    }

    /// [`Named::axfr`] of any zone the key may transfer.
    pub fn axfr_of(&self, zone: &str) -> Vec<String> {
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &self.port.to_string(), "-k"])
            .arg(self.key_file())
            .args(["+noall", "+answer", "+time=2", "+tries=1", zone, "AXFR"])
            .output()
            .expect("run dig axfr");
        assert!(out.status.success(), "dig axfr failed: {out:?}");
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| !l.contains(" SOA "))
            .collect();
        lines.sort();
        lines.dedup();
        lines
    }

    /// The server's folder (zone files, keys, `named.conf`, the log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `nsupdate -k <key file>` with these update lines, then `send` (panics on
    /// failure, for tests).
    pub fn nsupdate(&self, lines: &[&str]) {
        let mut script = String::new();
        for l in lines {
            script.push_str(l);
            script.push('\n');
        }
        script.push_str("send\n");
        if let Err(e) = self.nsupdate_script(&script) {
            panic!("{e}");
        }
    }

    /// Runs one `nsupdate -k <key file>` process on `script` (update lines and `send`s),
    /// after a `server` and a `zone` line for this server's zone.
    pub fn nsupdate_script(&self, script: &str) -> Result<(), String> {
        use std::io::Write as _;
        let mut child = Command::new("nsupdate")
            .arg("-k")
            .arg(self.key_file())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run nsupdate: {e}"))?;
        let full = format!("server 127.0.0.1 {}\nzone {ZONE}\n{script}", self.port);
        child
            .stdin
            .take()
            .ok_or("nsupdate has no stdin")?
            .write_all(full.as_bytes())
            .map_err(|e| format!("write nsupdate script: {e}"))?;
        let out = child
            .wait_with_output()
            .map_err(|e| format!("nsupdate: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nsupdate failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `named` in the foreground on the configuration in `dir`, its output appended to
/// `named.log` there.
fn spawn(named: &Path, dir: &Path) -> Result<Child, String> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("named.log"))
        .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(named);
    cmd.arg("-g");
    if is_root() {
        cmd.args(["-u", "root"]);
    }
    cmd.arg("-c")
        .arg(dir.join("named.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cmd.spawn()
        .map_err(|e| format!("spawn {}: {e}", named.display()))
}
