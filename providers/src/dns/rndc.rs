//! Zone creation and deletion on a BIND server through its control channel (`rndc addzone`
//! and `rndc delzone`, which need `allow-new-zones yes;`), for the RFC 2136 backend.
//!
//! RFC 2136 changes records inside a zone; a zone itself is configuration. Hosting panels
//! add and remove zones with `rndc`, and so does this module: CreateZone writes the first
//! zone file (SOA, apex NS, glue) into [`RndcConfig::zone_dir`], a folder `named` reads,
//! then runs `rndc addzone` with a zone statement that names that file and grants the
//! provider's TSIG key updates and transfers. DeleteZone first writes the zone's records
//! (by AXFR) durably into `<zone_dir>/.deleted/`, then runs `rndc delzone -clean`, so its
//! undo can add the zone back with its records.
//!
//! `rndc` is run directly with its arguments as an argument vector (never through a
//! shell); the zone name, the TSIG key name and the file path are checked for characters
//! that could change the zone statement before they are put in it.

use super::backend::ZoneSettings;
use super::record::{RData, Record};
use super::zonefile::{first_serial, today_yyyymmdd, Soa, Zone};
use super::DnsError;
use crate::common::sanitize_key;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where DeleteZone keeps the records of a deleted zone, under [`RndcConfig::zone_dir`].
pub const DELETED_DIR: &str = ".deleted";
/// Where CreateZone leaves its intent marker (one file per call), under the zone folder.
pub const CREATED_DIR: &str = ".created";

static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How zones are added to and removed from the server (`[providers.dns.rndc]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RndcConfig {
    /// The `rndc` program.
    pub program: PathBuf,
    /// `rndc -s`: the control channel's address; `None`: rndc's own configuration.
    pub server: Option<String>,
    /// `rndc -p`: the control channel's port; `None`: rndc's own configuration (953).
    pub port: Option<u16>,
    /// `rndc -k`: the control channel's key file; `None`: rndc's own configuration.
    pub key_file: Option<PathBuf>,
    /// `rndc -c`: an rndc configuration file; `None`: rndc's default.
    pub config_file: Option<PathBuf>,
    /// The folder Provisio writes new zone files into (and `.deleted/` copies); `named`
    /// must be able to read it and write journals next to the files.
    pub zone_dir: PathBuf,
    /// The same folder as `named` sees it, when it is mounted elsewhere on the server;
    /// `None`: the same path.
    pub server_zone_dir: Option<PathBuf>,
    /// Statements added verbatim inside every added zone's `{ … }` (e.g.
    /// `also-notify { 192.0.2.54; };`), after the type, file, update-policy and
    /// allow-transfer Provisio writes.
    pub zone_options: String,
    /// Time allowed for one `rndc` run.
    pub timeout: Duration,
}

impl RndcConfig {
    /// `rndc` from `PATH` (or `/usr/sbin`), its own configuration, new zone files in
    /// `zone_dir`.
    pub fn new(zone_dir: PathBuf) -> Self {
        RndcConfig {
            program: default_program(),
            server: None,
            port: None,
            key_file: None,
            config_file: None,
            zone_dir,
            server_zone_dir: None,
            zone_options: String::new(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Checks what goes into the zone statement: the folder `named` reads must be an
    /// absolute path without characters that would end the quoted `file "…"`.
    pub fn check(&self) -> Result<(), DnsError> {
        let dir = self.server_dir();
        let shown = dir.display().to_string();
        if !dir.is_absolute() {
            return Err(DnsError::Invalid(format!(
                "rndc zone folder {shown:?} must be an absolute path (named reads the zone files from it)"
            )));
        }
        if let Some(c) = shown
            .chars()
            .find(|c| matches!(c, '"' | '\\' | ';' | '{' | '}') || c.is_control())
        {
            return Err(DnsError::Invalid(format!(
                "rndc zone folder {shown:?} contains {c:?}, which cannot be written in named's zone statement"
            )));
        }
        if let Some(c) = self
            .zone_options
            .chars()
            .find(|c| c.is_control() && *c != '\t')
        {
            return Err(DnsError::Invalid(format!(
                "rndc zone_options contains the control character {c:?}; write the statements on one line"
            )));
        }
        Ok(())
    }

    fn server_dir(&self) -> &Path {
        self.server_zone_dir.as_deref().unwrap_or(&self.zone_dir)
    }
}

/// `rndc` on `PATH`, else `/usr/sbin/rndc` (Debian's place, not on a user's `PATH`), else
/// plain `rndc`.
pub fn default_program() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("rndc"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("rndc"))
}

/// Refuses a name that could change an `rndc` command or a zone statement: only letters,
/// digits, `-`, `_` and `.` pass (the procedures' own checks already keep zone names to
/// host-name syntax; this is the last line before the control channel).
pub fn check_config_name(what: &str, name: &str) -> Result<(), DnsError> {
    if name.is_empty() || name.starts_with('-') {
        return Err(DnsError::Invalid(format!(
            "{what} {name:?} cannot be passed to rndc (empty or starting with `-`)"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(DnsError::Invalid(format!(
            "{what} {name:?} contains {c:?}; only letters, digits, `-`, `_` and `.` can be passed to rndc"
        )));
    }
    Ok(())
}

/// What one `rndc` run reported.
#[derive(Debug)]
pub(crate) enum RndcError {
    /// The named zone does not exist on the server (`not found`).
    NotFound,
    /// The zone already exists on the server.
    AlreadyExists,
    /// Anything else, with rndc's words.
    Other(DnsError),
}

/// The `rndc` runner of one provider.
#[derive(Debug)]
pub(crate) struct Rndc {
    config: RndcConfig,
}

impl Rndc {
    pub(crate) fn new(config: RndcConfig) -> Result<Self, DnsError> {
        config.check()?;
        Ok(Rndc { config })
    }

    pub(crate) fn config(&self) -> &RndcConfig {
        &self.config
    }

    /// Runs `rndc [-c] [-s] [-p] [-k] <args>`; returns its standard output.
    async fn run(&self, args: &[&str]) -> Result<String, RndcError> {
        let c = &self.config;
        let mut cmd = tokio::process::Command::new(&c.program);
        if let Some(f) = &c.config_file {
            cmd.arg("-c").arg(f);
        }
        if let Some(s) = &c.server {
            cmd.args(["-s", s]);
        }
        if let Some(p) = c.port {
            cmd.args(["-p", &p.to_string()]);
        }
        if let Some(k) = &c.key_file {
            cmd.arg("-k").arg(k);
        }
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let what = format!("rndc {}", args.first().copied().unwrap_or_default());
        let out = match tokio::time::timeout(c.timeout, cmd.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                return Err(RndcError::Other(DnsError::Io {
                    what: format!("running {} ({what})", c.program.display()),
                    transient: false,
                    message: format!(
                        "{e}; set [providers.dns.rndc] program to the rndc binary (BIND's bind9-utils / bind9 package)"
                    ),
                }))
            }
            Err(_) => {
                return Err(RndcError::Other(DnsError::Server {
                    transient: true,
                    message: format!(
                        "{what}: no answer from the control channel within {} s",
                        c.timeout.as_secs()
                    ),
                }))
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let words = [stderr.as_str(), stdout.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("; ")
            .replace('\n', "; ");
        let failed = |s: &str| words.contains(&format!("failed: {s}"));
        if failed("not found") {
            return Err(RndcError::NotFound);
        }
        if failed("already exists") {
            return Err(RndcError::AlreadyExists);
        }
        let (transient, hint) = if words.contains("connect failed")
            || words.contains("connection refused")
            || words.contains("timed out")
        {
            (
                true,
                " (is named running, and its `controls` statement listening where rndc connects?)",
            )
        } else if failed("permission denied") && args.first() == Some(&"addzone") {
            (
                false,
                " (named needs `allow-new-zones yes;` in its options, and must be able to read the zone file and write its folder)",
            )
        } else if failed("bad zone") {
            (
                false,
                " (named refused the zone's content, e.g. an in-zone name server without an address: pass nsAddress)",
            )
        } else if failed("file not found") {
            (
                false,
                " (named cannot find the zone file: set [providers.dns.rndc] server_zone_dir to the folder as named sees it)",
            )
        } else if words.contains("bad auth") || words.contains("connection to remote host closed") {
            (
                false,
                " (the rndc key must be the one in named's `controls … keys { … }`, and the clocks must agree)",
            )
        } else {
            (false, " (named's log says more)")
        };
        Err(RndcError::Other(DnsError::Server {
            transient,
            message: format!("{what} failed: {words}{hint}"),
        }))
    }

    /// True when `named` has the zone configured (loaded or not).
    pub(crate) async fn knows_zone(&self, zone: &str) -> Result<bool, DnsError> {
        check_config_name("zone", zone)?;
        match self.run(&["zonestatus", zone]).await {
            Ok(_) => Ok(true),
            Err(RndcError::NotFound) => Ok(false),
            Err(RndcError::AlreadyExists) => Ok(true),
            Err(RndcError::Other(e)) => Err(e),
        }
    }

    /// `rndc addzone ZONE '{ type primary; file "…"; update-policy …; allow-transfer …; };'`
    /// for a zone file already in [`RndcConfig::zone_dir`].
    pub(crate) async fn add_zone(
        &self,
        zone: &str,
        file_name: &str,
        key_name: &str,
    ) -> Result<(), RndcError> {
        check_config_name("zone", zone).map_err(RndcError::Other)?;
        check_config_name("TSIG key name", key_name).map_err(RndcError::Other)?;
        check_config_name("zone file name", file_name).map_err(RndcError::Other)?;
        let statement = self.zone_statement(file_name, key_name);
        self.run(&["addzone", zone, &statement]).await.map(|_| ())
    }

    /// The zone statement `rndc addzone` gets.
    pub(crate) fn zone_statement(&self, file_name: &str, key_name: &str) -> String {
        let file = self.config.server_dir().join(file_name);
        let options = self.config.zone_options.trim();
        let mut s = format!(
            "{{ type primary; file \"{}\"; update-policy {{ grant {key_name} zonesub ANY; }}; allow-transfer {{ key {key_name}; }};",
            file.display()
        );
        if !options.is_empty() {
            s.push(' ');
            s.push_str(options);
        }
        s.push_str(" };");
        s
    }

    /// `rndc delzone -clean ZONE` (the zone file and journal go too). False when the
    /// server did not have the zone.
    pub(crate) async fn delete_zone(&self, zone: &str) -> Result<bool, DnsError> {
        check_config_name("zone", zone)?;
        match self.run(&["delzone", "-clean", zone]).await {
            Ok(_) => Ok(true),
            Err(RndcError::NotFound) => Ok(false),
            Err(RndcError::AlreadyExists) => Ok(true),
            Err(RndcError::Other(e)) => Err(e),
        }
    }

    /// `rndc sync ZONE`: writes the zone's journal (its dynamic updates) into its zone
    /// file. False when the server does not have the zone.
    pub(crate) async fn sync_zone(&self, zone: &str) -> Result<bool, DnsError> {
        check_config_name("zone", zone)?;
        match self.run(&["sync", zone]).await {
            Ok(_) => Ok(true),
            Err(RndcError::NotFound) => Ok(false),
            Err(RndcError::AlreadyExists) => Ok(true),
            Err(RndcError::Other(e)) => Err(e),
        }
    }

    // ---- files ---------------------------------------------------------------------

    /// A fresh zone file name: `<zone>.<unique>.zone`. A new name each time, because
    /// `delzone -clean` removes the old file in the background, possibly after a new zone
    /// with the same name was added.
    pub(crate) fn new_file_name(zone: &str) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!(
            "{zone}.{nanos:x}-{}-{}.zone",
            std::process::id(),
            FILE_COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Writes `text` to `<zone_dir>/<name>` durably (temp file, fsync, rename, fsync of
    /// the folder).
    pub(crate) async fn write_file(&self, rel: &Path, text: String) -> Result<PathBuf, DnsError> {
        let path = self.config.zone_dir.join(rel);
        let p = path.clone();
        blocking(move || write_durably(&p, text.as_bytes())).await?;
        Ok(path)
    }

    /// Reads `<zone_dir>/<rel>`; `None` when it does not exist.
    pub(crate) async fn read_file(&self, rel: &Path) -> Result<Option<String>, DnsError> {
        let path = self.config.zone_dir.join(rel);
        blocking(move || match fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DnsError::io(format!("reading {}", path.display()), e)),
        })
        .await
    }

    /// Removes `<zone_dir>/<rel>`; absent is fine.
    pub(crate) async fn remove_file(&self, rel: &Path) -> Result<(), DnsError> {
        let path = self.config.zone_dir.join(rel);
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DnsError::io(format!("removing {}", path.display()), e)),
        })
        .await
    }

    /// The intent marker of the CreateZone call with idempotency key `key`.
    pub(crate) fn created_marker(key: &str) -> PathBuf {
        Path::new(CREATED_DIR).join(sanitize_key(key))
    }

    /// The deleted-zone copy of the DeleteZone call with idempotency key `key`.
    pub(crate) fn deleted_copy(zone: &str, key: &str) -> String {
        format!("{zone}.zone.{}", sanitize_key(key))
    }

    /// The path of a deleted-zone copy token.
    pub(crate) fn deleted_path(token: &str) -> Result<PathBuf, DnsError> {
        check_config_name("deleted zone copy", token)?;
        Ok(Path::new(DELETED_DIR).join(token))
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), DnsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| DnsError::io(format!("creating {}", dir.display()), e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        FILE_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // Best effort: makes the rename durable.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        DnsError::io(format!("writing {}", path.display()), e)
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DnsError> + Send + 'static,
) -> Result<T, DnsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DnsError::Io {
            what: "zone folder".into(),
            transient: false,
            message: format!("file task failed: {e}"),
        })?
}

/// The first zone file of a new zone: SOA, the apex NS, and the name server's address
/// when it is inside the zone and `nsAddress` was given.
pub(crate) fn first_zone(settings: &ZoneSettings) -> Zone {
    let mut records = vec![Record {
        owner: "@".into(),
        ttl: settings.ttl,
        data: RData::Ns(settings.primary_ns.clone()),
    }];
    if let Some(glue) = ns_glue(settings) {
        records.push(glue);
    }
    Zone {
        origin: settings.zone.clone(),
        default_ttl: settings.ttl,
        soa: Soa {
            ttl: settings.ttl,
            mname: settings.primary_ns.clone(),
            rname: settings.admin.clone(),
            serial: first_serial(today_yyyymmdd()),
            timers: settings.timers,
        },
        records,
    }
}

fn ns_glue(settings: &ZoneSettings) -> Option<Record> {
    let addr = settings.ns_address?;
    let ns = settings.primary_ns.strip_suffix('.')?;
    let owner = if ns == settings.zone {
        "@".to_string()
    } else {
        ns.strip_suffix(&format!(".{}", settings.zone))?.to_string()
    };
    Some(Record {
        owner,
        ttl: settings.ttl,
        data: match addr {
            IpAddr::V4(a) => RData::A(a),
            IpAddr::V6(a) => RData::Aaaa(a),
        },
    })
}

/// A zone's file text as Provisio writes it for `named`.
pub(crate) fn render(zone: &Zone, why: &str) -> String {
    let body: String = zone
        .render()
        .lines()
        .filter(|l| !l.starts_with(';'))
        .map(|l| format!("{l}\n"))
        .collect();
    format!(
        "; Zone {}. — written by Provisio (rfc2136 backend, {why}) for `rndc addzone`.\n\
         ; named keeps the zone from here on (dynamic updates, journal).\n{body}",
        zone.origin
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_change_the_command_are_refused() {
        for bad in [
            "",
            "-clean",
            "a b.test",
            "a\"b.test",
            "a{b}.test",
            "a;b.test",
            "a'b.test",
            "a\nb",
            "a/b",
        ] {
            assert!(
                matches!(check_config_name("zone", bad), Err(DnsError::Invalid(_))),
                "{bad:?}"
            );
        }
        for good in ["example.test", "xn--bcher-kva.test", "_sub.example.test"] {
            check_config_name("zone", good).expect(good);
        }
    }

    #[test]
    fn zone_folder_must_be_absolute_and_quotable() {
        let mut c = RndcConfig::new(PathBuf::from("relative/zones"));
        assert!(c.check().is_err());
        c.zone_dir = PathBuf::from("/var/lib/bind/provisio");
        c.check().expect("absolute");
        c.server_zone_dir = Some(PathBuf::from("/srv/zo\"nes"));
        assert!(c.check().is_err());
        c.server_zone_dir = Some(PathBuf::from("/srv/zones"));
        c.zone_options = "also-notify { 192.0.2.1; };\n};".into();
        assert!(c.check().is_err());
    }

    #[test]
    fn zone_statement_names_the_file_named_sees_and_grants_the_key() {
        let mut c = RndcConfig::new(PathBuf::from("/mnt/bind-zones"));
        c.server_zone_dir = Some(PathBuf::from("/var/lib/bind/provisio"));
        c.zone_options = "also-notify { 192.0.2.54; };".into();
        let r = Rndc::new(c).expect("config");
        assert_eq!(
            r.zone_statement("a.test.1.zone", "ddns-key"),
            "{ type primary; file \"/var/lib/bind/provisio/a.test.1.zone\"; update-policy { grant ddns-key zonesub ANY; }; allow-transfer { key ddns-key; }; also-notify { 192.0.2.54; }; };"
        );
    }
}
