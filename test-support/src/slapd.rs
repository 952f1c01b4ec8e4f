//! A private OpenLDAP `slapd` on 127.0.0.1 for the directory provider's ldap backend: a temp
//! dir with a `slapd.conf` (core, cosine, inetorgperson and nis schemas plus the project's
//! `packaging/ldap/provisio-ad.schema`, an mdb database under [`SUFFIX`], the `memberof`
//! overlay for `provisioGroup`/`member` and the `unique` overlay on `sAMAccountName`), a
//! certificate from a test CA ([`Slapd::ca_file`]) for `ldaps://` and StartTLS, plain LDAP and LDAPS on two free
//! ports, started in the foreground (`-d 0`) and stopped by its PID on drop.
//!
//! The suffix entry and `ou=Tests` are added at start (that is the readiness check: a real
//! bind, add and search with `ldapadd`/`ldapsearch`). The admin password is random and
//! kept in a file ([`Slapd::password_file`]), as an operator would hand it to the provider.
//!
//! Without `slapd`/`ldap-utils` installed, [`Slapd::start`] prints a note and returns `None`
//! so tests skip, unless `PROVISIO_REQUIRE_LDAP=1`, which makes that a failure.

use crate::bind::which;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The suffix (naming context) of every instance.
pub const SUFFIX: &str = "dc=example,dc=test";
/// The root DN (rootdn: may do anything).
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=test";
/// An OU present at start, for tests that need a parent.
pub const TESTS_OU: &str = "ou=Tests,dc=example,dc=test";
/// A service account that may write everywhere except below [`LOCKED_OU`] (its password is
/// in [`Slapd::service_password_file`]).
pub const SERVICE_DN: &str = "cn=provisio,dc=example,dc=test";
/// An OU the service account may only read: writes below it are refused
/// (insufficientAccessRights).
pub const LOCKED_OU: &str = "ou=Locked,dc=example,dc=test";

/// Whether the tests must fail instead of skipping when a directory server cannot run
/// (`PROVISIO_REQUIRE_LDAP=1`, set by `scripts/test`).
pub fn required() -> bool {
    std::env::var("PROVISIO_REQUIRE_LDAP").is_ok_and(|v| v == "1")
}

/// A running `slapd`.
pub struct Slapd {
    child: Child,
    dir: tempfile::TempDir,
    /// Plain LDAP port on 127.0.0.1 (StartTLS offered).
    pub port: u16,
    /// LDAPS port on 127.0.0.1.
    pub tls_port: u16,
    /// The admin password (also in [`Slapd::password_file`]).
    pub password: String,
}

/// A free TCP port on 127.0.0.1 (the socket is closed again).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// 24 random characters (letters and digits) from the OS.
pub fn random_password() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Writes a password file readable by its owner only (ldap-utils warn about others).
pub(crate) fn write_secret(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::write(path, text).map_err(|e| e.to_string())?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())
}

/// The project's auxiliary schema for OpenLDAP (sAMAccountName, userPrincipalName, …).
pub fn schema_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/ldap/provisio-ad.schema")
}

/// Output of an LDAP command-line tool.
#[derive(Debug)]
pub struct ToolOutput {
    /// Exit code (`ldapsearch` exits with the LDAP result code).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs an ldap-utils program with `args`, `stdin` fed to it, and LDAPTLS_REQCERT=never
/// (the test servers have self-signed certificates).
pub fn run_tool(tool: &str, args: &[&str], stdin: &str) -> ToolOutput {
    use std::io::Write as _;
    let mut child = Command::new(tool)
        .args(args)
        .env("LDAPTLS_REQCERT", "never")
        .env("LDAPCONF", "/dev/null")
        .env("LDAPRC", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("wait");
    ToolOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Parses `ldapsearch -LLL` output into entries: (dn, [(attribute, value)]), with base64
/// values (`attr:: …`) decoded (lossily for non-UTF-8) and continuation lines joined.
pub fn parse_ldif(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    use base64::Engine as _;
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(' ') {
            if let Some(last) = lines.last_mut() {
                last.push_str(rest);
                continue;
            }
        }
        lines.push(line.to_string());
    }
    let mut entries = Vec::new();
    let mut current: Option<(String, Vec<(String, String)>)> = None;
    for line in lines {
        if line.is_empty() {
            if let Some(e) = current.take() {
                entries.push(e);
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let value = if let Some(b64) = rest.strip_prefix(':') {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            rest.trim_start().to_string()
        };
        if name.eq_ignore_ascii_case("dn") {
            if let Some(e) = current.take() {
                entries.push(e);
            }
            current = Some((value, Vec::new()));
        } else if let Some((_, attrs)) = current.as_mut() {
            attrs.push((name.to_string(), value));
        }
    }
    if let Some(e) = current.take() {
        entries.push(e);
    }
    entries
}

impl Slapd {
    /// Starts a fresh server, or `None` (with a note) when slapd is not installed and
    /// `PROVISIO_REQUIRE_LDAP` is not `1`.
    pub fn start() -> Option<Slapd> {
        let (Some(slapd), Some(_), Some(_)) =
            (which("slapd"), which("ldapsearch"), which("openssl"))
        else {
            assert!(
                !required(),
                "PROVISIO_REQUIRE_LDAP=1 but `slapd`, `ldapsearch` or `openssl` is not installed (scripts/ensure-tools installs slapd, ldap-utils and openssl)"
            );
            eprintln!("note: OpenLDAP (`slapd`, `ldap-utils`) not installed; skipping slapd test (run scripts/ensure-tools)");
            return None;
        };
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(&slapd) {
                Ok(s) => return Some(s),
                Err(e) => last = e,
            }
        }
        panic!("slapd did not start: {last}");
    }

    fn try_start(slapd: &Path) -> Result<Slapd, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        let port = free_tcp_port();
        let tls_port = loop {
            let p = free_tcp_port();
            if p != port {
                break p;
            }
        };
        let password = random_password();
        fs::create_dir(d.join("db")).map_err(|e| e.to_string())?;
        write_secret(&d.join("admin.pw"), &password)?;
        let service_password = random_password();
        write_secret(&d.join("service.pw"), &service_password)?;
        make_certificates(d)?;
        let dd = d.display();
        let schema = schema_file();
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             include /etc/ldap/schema/nis.schema\n\
             include {schema}\n\
             pidfile {dd}/slapd.pid\n\
             argsfile {dd}/slapd.args\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             moduleload memberof\n\
             moduleload unique\n\
             TLSCertificateFile {dd}/cert.pem\n\
             TLSCertificateKeyFile {dd}/key.pem\n\
             sizelimit 500\n\
             password-hash {{SSHA}}\n\
             database mdb\n\
             maxsize 1073741824\n\
             suffix \"{SUFFIX}\"\n\
             rootdn \"{ADMIN_DN}\"\n\
             rootpw {password}\n\
             directory {dd}/db\n\
             index objectClass eq\n\
             index sAMAccountName eq\n\
             index cn,uid eq\n\
             index member eq\n\
             access to dn.subtree=\"{LOCKED_OU}\" by * read\n\
             access to attrs=userPassword by self write by dn.exact=\"{SERVICE_DN}\" write by anonymous auth by * none\n\
             access to * by dn.exact=\"{SERVICE_DN}\" write by * read\n\
             overlay memberof\n\
             memberof-group-oc provisioGroup\n\
             memberof-member-ad member\n\
             memberof-memberof-ad memberOf\n\
             memberof-refint TRUE\n\
             memberof-dangling error\n\
             overlay unique\n\
             unique_uri ldap:///?sAMAccountName?sub\n",
            schema = schema.display()
        );
        fs::write(d.join("slapd.conf"), conf).map_err(|e| e.to_string())?;
        let test = Command::new(slapd.with_file_name("slaptest"))
            .args(["-u", "-f"])
            .arg(d.join("slapd.conf"))
            .output()
            .map_err(|e| format!("run slaptest: {e}"))?;
        if !test.status.success() {
            return Err(format!(
                "slaptest rejected the config: {}",
                String::from_utf8_lossy(&test.stderr)
            ));
        }
        let child = spawn(slapd, d, port, tls_port)?;
        let mut s = Slapd {
            child,
            dir,
            port,
            tls_port,
            password,
        };
        s.wait_ready()?;
        let base = format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
             dn: {TESTS_OU}\nobjectClass: organizationalUnit\nou: Tests\n\n\
             dn: {LOCKED_OU}\nobjectClass: organizationalUnit\nou: Locked\n\n\
             dn: {SERVICE_DN}\nobjectClass: person\ncn: provisio\nsn: service\nuserPassword: {service_password}\n"
        );
        let out = s.tool("ldapadd", &[], &base);
        if out.code != 0 {
            return Err(format!("ldapadd of the base failed: {out:?}"));
        }
        Ok(s)
    }

    /// Waits until the server answers a search of the root DSE (at most 5 s).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = run_tool(
                "ldapsearch",
                &[
                    "-x",
                    "-H",
                    &self.url(),
                    "-s",
                    "base",
                    "-b",
                    "",
                    "namingContexts",
                ],
                "",
            );
            if out.code == 0 && out.stdout.contains(SUFFIX) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("slapd exited ({status}): {}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("slapd not ready after 5 s: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ldap://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:<tls port>`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    /// The file holding the admin password (no newline).
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("admin.pw")
    }

    /// The test CA that signed the server's certificate (PEM; the certificate is for IP
    /// 127.0.0.1).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The file holding the password of [`SERVICE_DN`].
    pub fn service_password_file(&self) -> PathBuf {
        self.dir.path().join("service.pw")
    }

    /// The server's folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far (stderr of `slapd -d 0`).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// The administrator's ldap-utils calls on this server.
    fn admin(&self) -> Admin<'static> {
        Admin {
            url: self.url(),
            dn: ADMIN_DN,
            password_file: self.password_file(),
        }
    }

    /// Runs an ldap-utils `tool` bound as the admin (`-x -H <url> -D <admin> -y <file>`)
    /// with `extra` arguments and `stdin`.
    pub fn tool(&self, tool: &str, extra: &[&str], stdin: &str) -> ToolOutput {
        self.admin().tool(tool, extra, stdin)
    }

    /// `ldapsearch -LLL` as the admin: entries under `base` matching `filter`, with `attrs`
    /// (all user attributes when empty). Panics when the search fails, except for
    /// noSuchObject (32), which gives no entries.
    pub fn search(
        &self,
        base: &str,
        filter: &str,
        attrs: &[&str],
    ) -> Vec<(String, Vec<(String, String)>)> {
        self.admin().search(base, filter, attrs)
    }

    /// The values of `attr` of `dn` (a base search as the admin), `None` when `dn` does not
    /// exist.
    pub fn values(&self, dn: &str, attr: &str) -> Option<Vec<String>> {
        self.admin().values(dn, attr)
    }

    /// Whether `dn` can simple-bind with `password` (checked with `ldapsearch` bound as it).
    pub fn can_bind(&self, dn: &str, password: &str) -> bool {
        let url = self.url();
        let out = run_tool(
            "ldapsearch",
            &[
                "-x", "-H", &url, "-D", dn, "-w", password, "-s", "base", "-b", dn, "1.1",
            ],
            "",
        );
        out.code == 0
    }

    /// Stops the server (SIGTERM, then waits; SIGKILL if it lingers), keeping its folder
    /// and ports for [`Slapd::restart`].
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// Starts a stopped server again on the same ports and database.
    pub fn restart(&mut self) -> Result<(), String> {
        let slapd = which("slapd").ok_or("`slapd` is not installed")?;
        self.child = spawn(&slapd, self.dir.path(), self.port, self.tls_port)?;
        self.wait_ready()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The ldap-utils calls the tests make as a server's administrator (slapd and Samba alike).
pub(crate) struct Admin<'a> {
    pub(crate) url: String,
    pub(crate) dn: &'a str,
    pub(crate) password_file: PathBuf,
}

impl Admin<'_> {
    /// Runs `tool` bound as the administrator (`-x -H <url> -D <admin> -y <file>`) with
    /// `extra` arguments and `stdin`.
    pub(crate) fn tool(&self, tool: &str, extra: &[&str], stdin: &str) -> ToolOutput {
        let pw = self.password_file.to_string_lossy().into_owned();
        let mut args = vec!["-x", "-H", &self.url, "-D", self.dn, "-y", &pw];
        args.extend_from_slice(extra);
        run_tool(tool, &args, stdin)
    }

    /// `ldapsearch -LLL`: entries under `base` matching `filter`, with `attrs`; none for
    /// noSuchObject (32), a panic for any other failure.
    pub(crate) fn search(
        &self,
        base: &str,
        filter: &str,
        attrs: &[&str],
    ) -> Vec<(String, Vec<(String, String)>)> {
        let mut args = vec!["-LLL", "-o", "ldif-wrap=no", "-b", base, filter];
        args.extend_from_slice(attrs);
        let out = self.tool("ldapsearch", &args, "");
        if out.code == 32 {
            return Vec::new();
        }
        assert_eq!(out.code, 0, "ldapsearch failed: {out:?}");
        parse_ldif(&out.stdout)
    }

    /// The values of `attr` of `dn` (a base search), `None` when `dn` does not exist.
    pub(crate) fn values(&self, dn: &str, attr: &str) -> Option<Vec<String>> {
        let out = self.tool(
            "ldapsearch",
            &[
                "-LLL",
                "-o",
                "ldif-wrap=no",
                "-s",
                "base",
                "-b",
                dn,
                "(objectClass=*)",
                attr,
            ],
            "",
        );
        attr_values(out, dn, attr)
    }
}

/// The values of `attr` in a base search's output; `None` on noSuchObject (32).
pub(crate) fn attr_values(out: ToolOutput, dn: &str, attr: &str) -> Option<Vec<String>> {
    if out.code == 32 {
        return None;
    }
    assert_eq!(out.code, 0, "ldapsearch of {dn} failed: {out:?}");
    let entries = parse_ldif(&out.stdout);
    let (_, attrs) = entries.into_iter().next()?;
    Some(
        attrs
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(attr))
            .map(|(_, v)| v)
            .collect(),
    )
}

/// SIGTERM to the child's PID, wait up to 10 s, then SIGKILL.
pub(crate) fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A test CA (`ca.pem`) and a server certificate it signed for IP 127.0.0.1 (`cert.pem`,
/// `key.pem`), made with `openssl` in `d`.
fn make_certificates(d: &Path) -> Result<(), String> {
    fs::write(
        d.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    let steps: [Vec<&str>; 3] = [
        vec![
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Provisio test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        vec![
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
        ],
        vec![
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "cert.pem",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(d)
            .output()
            .map_err(|e| format!("run openssl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl {} failed: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

/// Starts `slapd -d 0` in the foreground on the configuration in `dir`, its output
/// appended to `slapd.log` there.
fn spawn(slapd: &Path, dir: &Path, port: u16, tls_port: u16) -> Result<Child, String> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("slapd.log"))
        .map_err(|e| e.to_string())?;
    Command::new(slapd)
        .arg("-f")
        .arg(dir.join("slapd.conf"))
        .arg("-h")
        .arg(format!(
            "ldap://127.0.0.1:{port}/ ldaps://127.0.0.1:{tls_port}/"
        ))
        .args(["-d", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", slapd.display()))
}
