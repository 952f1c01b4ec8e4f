//! A private PostgreSQL server on 127.0.0.1 for the PostgreSQL store: `initdb` into a temp
//! dir (a superuser `provisio` with a random password, scram-sha-256 over TCP), started in
//! the foreground on a free port and stopped by its PID (SIGINT, a fast shutdown).
//!
//! `initdb` and `postgres` refuse to run as root: as root they run as the `postgres` user
//! (the temp dir is handed to it). One server is shared by the tests of a test binary
//! ([`Postgres::shared`], stopped by a small watchdog process when the test process has
//! gone, as Rust runs no destructor for a static); each test works in a schema of its own
//! ([`Postgres::new_schema`]). [`Postgres::start`] gives a server of one's own (stopped
//! on drop), for tests that stop or restart it.
//!
//! Without PostgreSQL installed (`initdb`, `postgres`, `psql`), [`Postgres::shared`] prints a
//! note and returns `None` so tests skip, unless `PROVISIO_REQUIRE_POSTGRES=1` (set by
//! `scripts/test`), which makes that a failure.

use crate::bind::which;
use crate::slapd::{free_tcp_port, random_password, ToolOutput};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The superuser of every instance (also the owner of [`DATABASE`]).
pub const USER: &str = "provisio";
/// The database created at start.
pub const DATABASE: &str = "provisio";

/// Whether the tests must fail instead of skipping when PostgreSQL cannot run
/// (`PROVISIO_REQUIRE_POSTGRES=1`, set by `scripts/test`).
pub fn required() -> bool {
    std::env::var("PROVISIO_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// A running PostgreSQL server.
pub struct Postgres {
    child: Mutex<Option<Child>>,
    dir: PathBuf,
    /// Whether `dir` is removed on drop (a shared server's watchdog removes it instead).
    owned: bool,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// The password of [`USER`].
    pub password: String,
    bin: PathBuf,
    /// The uid and gid the server runs as (when started by root).
    ids: Option<(u32, u32)>,
}

static SHARED: OnceLock<Option<Postgres>> = OnceLock::new();
static SCHEMA_COUNTER: AtomicU32 = AtomicU32::new(0);

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The folder holding `initdb` and `postgres`: on PATH, else Debian's newest
/// `/usr/lib/postgresql/<version>/bin`.
fn server_bin() -> Option<PathBuf> {
    if let (Some(i), Some(_)) = (which("initdb"), which("postgres")) {
        // Debian's /usr/local or /usr/bin entries may be symlinks into the versioned folder.
        let real = fs::canonicalize(&i).unwrap_or(i);
        return real.parent().map(Path::to_path_buf);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// The `postgres` user's uid and gid (from `id`), to run the server as when we are root.
fn postgres_ids() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|e| format!("run id: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| "no `postgres` user (installing postgresql creates it)".to_string())
    };
    Ok((id("-u")?, id("-g")?))
}

/// A command that runs as `postgres` when we are root.
fn as_server_user(program: &Path, ids: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut c = Command::new(program);
    if let Some((uid, gid)) = ids {
        c.uid(uid).gid(gid);
    }
    c.stdin(Stdio::null());
    c
}

impl Postgres {
    /// The server of this test process (started by the first caller), or `None` (with a
    /// note) when PostgreSQL is not installed and `PROVISIO_REQUIRE_POSTGRES` is not `1`.
    pub fn shared() -> Option<&'static Postgres> {
        SHARED
            .get_or_init(|| {
                let bin = Self::installed()?;
                match Self::try_start(&bin, true) {
                    Ok(s) => Some(s),
                    Err(e) => panic!("PostgreSQL did not start: {e}"),
                }
            })
            .as_ref()
    }

    /// A server of one's own, stopped (and its folder removed) on drop; `None` as for
    /// [`Postgres::shared`].
    pub fn start() -> Option<Postgres> {
        let bin = Self::installed()?;
        match Self::try_start(&bin, false) {
            Ok(s) => Some(s),
            Err(e) => panic!("PostgreSQL did not start: {e}"),
        }
    }

    fn installed() -> Option<PathBuf> {
        match (server_bin(), which("psql")) {
            (Some(bin), Some(_)) => Some(bin),
            _ => {
                assert!(
                    !required(),
                    "PROVISIO_REQUIRE_POSTGRES=1 but PostgreSQL (`initdb`, `postgres`, `psql`) is not installed (scripts/ensure-tools installs postgresql)"
                );
                eprintln!("note: PostgreSQL not installed; skipping the PostgreSQL store test (run scripts/ensure-tools)");
                None
            }
        }
    }

    fn try_start(bin: &Path, shared: bool) -> Result<Postgres, String> {
        let ids = if is_root() {
            Some(postgres_ids()?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("provisio-postgres-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let password = random_password();
        let pwfile = dir.join("pw");
        fs::write(&pwfile, &password).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
        let data = dir.join("data");
        let out = as_server_user(&bin.join("initdb"), ids)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C", "--no-sync"])
            .output()
            .map_err(|e| format!("run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let port = free_tcp_port();
        let child = spawn_server(bin, &dir, port, ids)?;
        if shared {
            // The watchdog: stops the server (SIGINT: fast shutdown) and removes its folder
            // once this process is gone.
            let watchdog = format!(
                "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -INT {pg} 2>/dev/null; \
                 for i in $(seq 100); do kill -0 {pg} 2>/dev/null || break; sleep 0.1; done; \
                 kill -KILL {pg} 2>/dev/null; rm -rf '{dd}'",
                me = std::process::id(),
                pg = child.id(),
                dd = dir.display()
            );
            Command::new("sh")
                .args(["-c", &watchdog])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("spawn the watchdog: {e}"))?;
        }
        let s = Postgres {
            child: Mutex::new(Some(child)),
            dir,
            owned: !shared,
            port,
            password,
            bin: bin.to_path_buf(),
            ids,
        };
        s.wait_ready()?;
        let out = s.psql_db("postgres", &format!("CREATE DATABASE {DATABASE}"));
        if out.code != 0 {
            return Err(format!("CREATE DATABASE failed: {out:?}"));
        }
        Ok(s)
    }

    /// Waits until the server answers a query (at most 30 s).
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.psql_db("postgres", "SELECT 1");
            if out.code == 0 {
                return Ok(());
            }
            let exited = self
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                return Err(format!("not ready: {}\n{}", out.stderr, self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// The folder of `initdb`, `postgres`, `pg_ctl`.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `postgres://provisio:PASSWORD@127.0.0.1:PORT/provisio`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{DATABASE}",
            self.password, self.port
        )
    }

    /// A fresh, empty schema; returns the URL whose sessions work in it
    /// (`?options=-csearch_path%3D<schema>`).
    pub fn new_schema(&self, prefix: &str) -> String {
        let n = SCHEMA_COUNTER.fetch_add(1, Ordering::Relaxed);
        let schema = format!(
            "{}_{}_{n}",
            prefix
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                })
                .collect::<String>(),
            std::process::id()
        );
        let out = self.psql(&format!("CREATE SCHEMA {schema}"));
        assert_eq!(out.code, 0, "CREATE SCHEMA {schema}: {out:?}");
        format!("{}?options=-csearch_path%3D{schema}", self.url())
    }

    /// Runs SQL with `psql` as [`USER`] in [`DATABASE`] (stops at the first error).
    pub fn psql(&self, sql: &str) -> ToolOutput {
        self.psql_db(DATABASE, sql)
    }

    fn psql_db(&self, db: &str, sql: &str) -> ToolOutput {
        let out = Command::new(which("psql").expect("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => ToolOutput {
                code: o.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            },
            Err(e) => ToolOutput {
                code: -1,
                stdout: String::new(),
                stderr: format!("run psql: {e}"),
            },
        }
    }

    /// Starts the server again (after [`Postgres::stop`]) on the same port and data, and
    /// waits until it answers.
    pub fn restart(&self) {
        self.stop();
        let child = spawn_server(&self.bin, &self.dir, self.port, self.ids)
            .unwrap_or_else(|e| panic!("restart PostgreSQL: {e}"));
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        self.wait_ready()
            .unwrap_or_else(|e| panic!("PostgreSQL did not come back: {e}"));
    }

    /// Turns TLS on (`ssl = on`) with a new certificate for 127.0.0.1 and localhost,
    /// signed by a new private authority (made with `openssl`), restarts the server, and
    /// returns the authority's certificate (PEM: what a client trusts, `sslrootcert=`).
    pub fn enable_tls(&self) -> PathBuf {
        let cert = self.dir.join("server.crt");
        let key = self.dir.join("server.key");
        let ca = self.dir.join("ca.crt");
        let ca_key = self.dir.join("ca.key");
        let csr = self.dir.join("server.csr");
        let ext = self.dir.join("server.ext");
        fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .expect("server.ext");
        let openssl = which("openssl").expect("openssl");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let steps: [Vec<std::ffi::OsString>; 3] = [
            ["req", "-x509"]
                .iter()
                .chain(&ec)
                .chain(&["-days", "2", "-subj", "/CN=provisio test CA"])
                .map(Into::into)
                .chain([
                    "-keyout".into(),
                    ca_key.clone().into(),
                    "-out".into(),
                    ca.clone().into(),
                ])
                .collect(),
            ["req"]
                .iter()
                .chain(&ec)
                .chain(&["-subj", "/CN=127.0.0.1"])
                .map(Into::into)
                .chain([
                    "-keyout".into(),
                    key.clone().into(),
                    "-out".into(),
                    csr.clone().into(),
                ])
                .collect(),
            ["x509", "-req", "-days", "2", "-CAcreateserial"]
                .iter()
                .map(Into::into)
                .chain([
                    "-in".into(),
                    csr.clone().into(),
                    "-CA".into(),
                    ca.clone().into(),
                    "-CAkey".into(),
                    ca_key.clone().into(),
                    "-extfile".into(),
                    ext.clone().into(),
                    "-out".into(),
                    cert.clone().into(),
                ])
                .collect(),
        ];
        for args in steps {
            let out = Command::new(&openssl)
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        }
        if let Some((uid, gid)) = self.ids {
            for f in [&cert, &key] {
                std::os::unix::fs::chown(f, Some(uid), Some(gid)).expect("chown");
            }
        }
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
        let conf = self.dir.join("data/postgresql.conf");
        let mut text = fs::read_to_string(&conf).expect("postgresql.conf");
        text.push_str(&format!(
            "\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            cert.display(),
            key.display()
        ));
        fs::write(&conf, text).expect("postgresql.conf");
        self.restart();
        ca
    }

    /// Stops the server at once, as `pg_ctl stop -m immediate` does (SIGQUIT: every
    /// session cut, no checkpoint; the next start recovers from the WAL, as after a
    /// crash), and waits for it. [`Postgres::restart`] starts it again.
    pub fn stop_immediate(&self) {
        let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-QUIT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the server (SIGINT: fast shutdown) and waits for it.
    pub fn stop(&self) {
        let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Starts `postgres` in the foreground on `port` with the data under `dir`, logging to
/// `dir/postgres.log`.
fn spawn_server(
    bin: &Path,
    dir: &Path,
    port: u16,
    ids: Option<(u32, u32)>,
) -> Result<Child, String> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("postgres.log"))
        .map_err(|e| e.to_string())?;
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(dir.join("postgres.log"), Some(uid), Some(gid))
            .map_err(|e| e.to_string())?;
    }
    as_server_user(&bin.join("postgres"), ids)
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        .args(["-c", "max_connections=300", "-c", "shared_buffers=32MB"])
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn postgres: {e}"))
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        if self.owned {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The file in a test's store folder that names its PostgreSQL schema (see [`store_url`]).
const STORE_URL_FILE: &str = "postgres-store.url";

/// Which store the suites that run on both open: `PROVISIO_TEST_STORE=postgres` (set by
/// `scripts/test` for its second pass) selects PostgreSQL, anything else sled.
pub fn test_store_is_postgres() -> bool {
    std::env::var("PROVISIO_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// For the test suites that run on sled and on PostgreSQL: `None` when the sled store is
/// selected (see [`test_store_is_postgres`]) or PostgreSQL is missing (skipping, as
/// [`Postgres::shared`] does), else the URL of the PostgreSQL store that stands for the
/// store folder `dir`: the same schema every time it is asked for the same folder, also by
/// a child process the test started (the URL is kept in a file in `dir`; ask in the
/// parent first, so that the shared server belongs to it).
pub fn store_url(dir: &Path) -> Option<String> {
    if !test_store_is_postgres() {
        return None;
    }
    let file = dir.join(STORE_URL_FILE);
    if let Ok(url) = fs::read_to_string(&file) {
        return Some(url);
    }
    let url = Postgres::shared()?.new_schema("suite");
    fs::create_dir_all(dir).expect("create the store folder");
    fs::write(&file, &url).expect("write the store URL file");
    Some(url)
}
