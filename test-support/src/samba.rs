//! A private Samba AD DC on 127.0.0.2 for the directory provider's ldap backend: the
//! domain [`REALM`] is provisioned once per test process into a temp dir, started
//! `samba -i -M single` in the foreground and stopped by its PID when the process ends.
//!
//! Samba's LDAP ports cannot be moved (389, 636, 3268/3269, RPC 135 and 49152+ are fixed),
//! so it listens on the second loopback address 127.0.0.2 only, with the ports that can be
//! moved (DNS, Kerberos, SMB, NetBIOS, CLDAP) moved out of the way; only one instance can
//! run on a machine at a time. `ldap server require strong auth = no` allows simple binds
//! over plain LDAP; LDAPS (636) and StartTLS use the certificate Samba makes at first
//! start. The domain allows changing a password twice a day and forgets an old password at
//! once (`--min-pwd-age=0`, `old password allowed period = 0`), as tests need. Provisioning takes seconds, so one instance is shared by all tests of a test
//! binary ([`Samba::shared`]) and each test works in its own OU ([`Samba::new_ou`]).
//!
//! Rust runs no destructor for a static, so a small watchdog process (started with Samba)
//! stops Samba by PID and removes its folder when the test process has gone.
//!
//! Without Samba installed or when not root, [`Samba::shared`] prints a note and returns
//! `None` so tests skip, unless `PROVISIO_REQUIRE_LDAP=1`, which makes that a failure.

use crate::bind::which;
use crate::slapd::{random_password, required, run_tool, ToolOutput};
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The Kerberos realm of the test domain.
pub const REALM: &str = "SAMDOM.EXAMPLE.TEST";
/// The NetBIOS domain name.
pub const DOMAIN: &str = "SAMDOM";
/// The domain's naming context.
pub const BASE_DN: &str = "DC=samdom,DC=example,DC=test";
/// The administrator's DN.
pub const ADMIN_DN: &str = "CN=Administrator,CN=Users,DC=samdom,DC=example,DC=test";
/// The address Samba listens on.
pub const HOST: &str = "127.0.0.2";

/// A running Samba AD DC.
pub struct Samba {
    child: Mutex<Child>,
    dir: PathBuf,
    /// The administrator's password (also in [`Samba::password_file`]).
    pub password: String,
}

static SHARED: OnceLock<Option<Samba>> = OnceLock::new();
static OU_COUNTER: AtomicU32 = AtomicU32::new(0);

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Samba {
    /// The instance of this test process (provisioned and started by the first caller), or
    /// `None` (with a note) when Samba is not installed or this is not root, and
    /// `PROVISIO_REQUIRE_LDAP` is not `1`.
    pub fn shared() -> Option<&'static Samba> {
        SHARED
            .get_or_init(|| {
                let missing = [
                    "samba",
                    "samba-tool",
                    "ldapsearch",
                    "ldapadd",
                ]
                .into_iter()
                .find(|t| which(t).is_none());
                let provision = Path::new("/usr/share/samba/setup/ad-schema").is_dir();
                if missing.is_some() || !provision || !is_root() {
                    let why = match missing {
                        Some(t) => format!("`{t}` is not installed"),
                        None if !provision => "samba-ad-provision is not installed".to_string(),
                        None => "a Samba AD DC needs root".to_string(),
                    };
                    assert!(
                        !required(),
                        "PROVISIO_REQUIRE_LDAP=1 but {why} (scripts/ensure-tools installs samba, samba-ad-dc, samba-ad-provision, ldap-utils; run as root)"
                    );
                    eprintln!("note: {why}; skipping Samba AD DC test (run scripts/ensure-tools as root)");
                    return None;
                }
                match Samba::start() {
                    Ok(s) => Some(s),
                    Err(e) => panic!("Samba AD DC did not start: {e}"),
                }
            })
            .as_ref()
    }

    fn start() -> Result<Samba, String> {
        let addr: SocketAddr = format!("{HOST}:389").parse().expect("addr");
        // The Samba of the test binary that ran just before may still be stopping (its
        // watchdog notices the end of its process within half a second).
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
            return Err(format!(
                "something already listens on {HOST}:389 (a system slapd or samba on all \
                 addresses, or a Samba left by a killed test run): stop it first"
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("provisio-samba-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let d = dir.as_path();
        // AD complexity: upper, lower, digit and symbol.
        let password = format!("{}-Aa1", random_password());
        crate::slapd::write_secret(&d.join("admin.pw"), &password)?;
        let out = Command::new("samba-tool")
            .args([
                "domain",
                "provision",
                &format!("--realm={REALM}"),
                &format!("--domain={DOMAIN}"),
                "--server-role=dc",
                "--dns-backend=NONE",
                &format!("--adminpass={password}"),
                &format!("--targetdir={}", d.display()),
                "--host-name=dc1",
                &format!("--host-ip={HOST}"),
                "--use-rfc2307",
                "--option=interfaces=127.0.0.2/8",
                "--option=bind interfaces only=yes",
                "--option=dns port=15354",
                "--option=krb5 port=15088",
                "--option=kpasswd port=15464",
                "--option=smb ports=15445",
                "--option=nbt port=15137",
                "--option=dgram port=15138",
                "--option=cldap port=15389",
                "--option=server services=-dns -nbt -winbindd -ntp_signd -kcc -dnsupdate",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run samba-tool: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "samba-tool domain provision failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // Tests change a password more than once a day: no minimum password age.
        let out = Command::new("samba-tool")
            .args(["domain", "passwordsettings", "set", "--min-pwd-age=0", "-H"])
            .arg(d.join("private/sam.ldb"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run samba-tool: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "samba-tool domain passwordsettings failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let conf = d.join("etc/smb.conf");
        let text = fs::read_to_string(&conf).map_err(|e| e.to_string())?;
        fs::create_dir_all(d.join("run")).map_err(|e| e.to_string())?;
        let extra = format!(
            "[global]\n\tldap server require strong auth = no\n\tlog file = {dd}/log.%m\n\
             \tpid directory = {dd}/run\n\tserver services = ldap, kdc, rpc\n\told password allowed period = 0\n",
            dd = d.display()
        );
        fs::write(&conf, text.replacen("[global]\n", &extra, 1)).map_err(|e| e.to_string())?;
        let log = fs::File::create(d.join("samba.out")).map_err(|e| e.to_string())?;
        let child = Command::new(which("samba").expect("samba"))
            .args(["-i", "-M", "single", "-s"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn samba: {e}"))?;
        // The watchdog: stops Samba and removes its folder once this process is gone.
        let watchdog = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -TERM {samba} 2>/dev/null; \
             for i in $(seq 50); do kill -0 {samba} 2>/dev/null || break; sleep 0.1; done; \
             kill -KILL {samba} 2>/dev/null; rm -rf '{dd}'",
            me = std::process::id(),
            samba = child.id(),
            dd = d.display()
        );
        Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn the watchdog: {e}"))?;
        let s = Samba {
            child: Mutex::new(child),
            dir,
            password,
        };
        s.wait_ready()?;
        Ok(s)
    }

    /// Waits until a search of the root DSE names the domain (at most 60 s: the first start
    /// makes the TLS certificate).
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
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
                    "defaultNamingContext",
                ],
                "",
            );
            if out.code == 0 && out.stdout.contains(BASE_DN) {
                // LDAPS too (the certificate is made at first start).
                let tls = run_tool(
                    "ldapsearch",
                    &["-x", "-H", &self.ldaps_url(), "-s", "base", "-b", "", "1.1"],
                    "",
                );
                if tls.code == 0 {
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = self.child.lock().expect("lock").try_wait() {
                return Err(format!("samba exited ({status}): {}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("samba not ready after 60 s: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ldap://127.0.0.2`.
    pub fn url(&self) -> String {
        format!("ldap://{HOST}:389")
    }

    /// `ldaps://127.0.0.2`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://{HOST}:636")
    }

    /// The file holding the administrator's password (no newline).
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("admin.pw")
    }

    /// The server's folder (`etc/smb.conf`, `private/sam.ldb`, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Samba's output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("samba.out")).unwrap_or_default()
    }

    /// A new, empty OU directly under [`BASE_DN`], unique in this process (`OU=<prefix>-<n>-<pid>`);
    /// returns its DN.
    pub fn new_ou(&self, prefix: &str) -> String {
        let n = OU_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{n}-{}", std::process::id());
        let dn = format!("OU={name},{BASE_DN}");
        let out = self.tool(
            "ldapadd",
            &[],
            &format!("dn: {dn}\nobjectClass: organizationalUnit\nou: {name}\n"),
        );
        assert_eq!(out.code, 0, "ldapadd of {dn} failed: {out:?}");
        dn
    }

    /// The administrator's ldap-utils calls on this server.
    fn admin(&self) -> crate::slapd::Admin<'static> {
        crate::slapd::Admin {
            url: self.url(),
            dn: ADMIN_DN,
            password_file: self.password_file(),
        }
    }

    /// Runs an ldap-utils `tool` bound as the administrator over plain LDAP.
    pub fn tool(&self, tool: &str, extra: &[&str], stdin: &str) -> ToolOutput {
        self.admin().tool(tool, extra, stdin)
    }

    /// `ldapsearch -LLL` as the administrator (see [`crate::slapd::Slapd::search`]).
    pub fn search(
        &self,
        base: &str,
        filter: &str,
        attrs: &[&str],
    ) -> Vec<(String, Vec<(String, String)>)> {
        self.admin().search(base, filter, attrs)
    }

    /// The values of `attr` of `dn` (a base search as the administrator), `None` when `dn`
    /// does not exist.
    pub fn values(&self, dn: &str, attr: &str) -> Option<Vec<String>> {
        self.admin().values(dn, attr)
    }

    /// Whether `who` (a DN or a UPN) can simple-bind with `password` over plain LDAP
    /// (checked with `ldapsearch` bound as it: Samba has no WhoAmI).
    pub fn can_bind(&self, who: &str, password: &str) -> bool {
        let url = self.url();
        let out = run_tool(
            "ldapsearch",
            &[
                "-x", "-H", &url, "-D", who, "-w", password, "-s", "base", "-b", "", "1.1",
            ],
            "",
        );
        out.code == 0
    }

    /// Runs the local `samba-tool` on the domain's database (`-H sam.ldb -s smb.conf`), e.g.
    /// `["user", "show", "bob"]`.
    pub fn samba_tool(&self, args: &[&str]) -> ToolOutput {
        let out = Command::new("samba-tool")
            .args(args)
            .arg("-H")
            .arg(self.dir.join("private/sam.ldb"))
            .arg("-s")
            .arg(self.dir.join("etc/smb.conf"))
            .stdin(Stdio::null())
            .output()
            .expect("run samba-tool");
        ToolOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
