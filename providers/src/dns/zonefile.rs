//! The zone-file backend: one RFC 1035 master file per zone, `<dir>/<zone>.zone`, that
//! BIND, Knot or NSD can load. Every change rewrites the file atomically (temp file,
//! fsync, rename, fsync of the folder) and bumps the SOA serial (`YYYYMMDDnn`).
//!
//! The file is written in a fixed subset (one record per line, explicit TTL and class,
//! relative owners, absolute targets) and [`parse_zone`] reads that subset back.
//!
//! Crash recovery: a keyed write (the provider's calls) first writes a durable intent
//! marker ([`Intent`]) after its checks and right before the change, in a folder beside the
//! zone folder so that the zone folder holds only zones (`data/zones` →
//! `data/.zones.pending/<key>.json`); [`ZoneBackend::recover`] compares the marker with the
//! zone as it is now. The marker is removed when the call is undone or found not applied;
//! markers of calls that were not undone stay until [`ZoneBackend::sweep`] (run by
//! recovery) finds their transaction over. The same sweep removes the temp files of
//! writes that never finished (a crash, a full disk); opening the backend removes those of
//! processes that are gone.
//!
//! All file work (reads, writes, `fsync`, renames) runs on tokio's blocking threads
//! ([`tokio::task::spawn_blocking`]), never on a runtime worker: a slow or full disk then
//! stalls only that call, and a step timeout can give up on it.

use super::backend::{
    rrset_changed, Applied, InDoubt, LiveTxns, NewRrset, Recovered, Replaced, Swept, ZoneBackend,
    ZoneSettings, ZoneSnapshot,
};
use super::record::{
    describe_rrset, fqdn, parse_rdata, same_rrset, tokenize, RData, Record, Token,
};
use super::DnsError;
use crate::common::{sanitize_key, NameGuard, NameLocks};
use async_trait::async_trait;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Sub-folder of the zone folder holding zones taken out by DeleteZone.
pub const DELETED_DIR: &str = ".deleted";

/// Suffix of the marker folder's name, `.<zone folder name>.pending` beside the zone
/// folder (see [`Intent`]).
pub const PENDING_SUFFIX: &str = ".pending";

/// What a keyed write is about to change, written durably before the change so that
/// recovery after a crash can tell whether it happened. Records are zone-file lines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op")]
pub enum Intent {
    /// CreateZone is about to link the zone file into place.
    CreateZone {
        /// The zone.
        zone: String,
    },
    /// DeleteZone is about to move the zone file aside under `token`.
    DeleteZone {
        /// The zone.
        zone: String,
        /// The deleted-copy name in [`DELETED_DIR`].
        token: String,
    },
    /// AddRecord is about to add `record`.
    AddRecord {
        /// The zone.
        zone: String,
        /// The record line as it will be stored.
        record: String,
    },
    /// DeleteRecord is about to remove `record`.
    DeleteRecord {
        /// The zone.
        zone: String,
        /// The record line as it is stored.
        record: String,
    },
    /// ReplaceRecordSet is about to replace the RRset `before` with `after`.
    ReplaceRecordSet {
        /// The zone.
        zone: String,
        /// Owner relative to the zone.
        owner: String,
        /// The type mnemonic.
        rtype: String,
        /// The RRset's record lines as stored now (empty: none).
        before: Vec<String>,
        /// The record lines it will hold.
        after: Vec<String>,
    },
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The SOA fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Soa {
    /// TTL of the SOA record.
    pub ttl: u32,
    /// Primary name server, absolute.
    pub mname: String,
    /// Responsible mailbox, absolute.
    pub rname: String,
    /// Serial.
    pub serial: u32,
    /// Refresh, retry, expire, minimum.
    pub timers: [u32; 4],
}

/// A parsed zone file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Origin, lowercase, no trailing dot.
    pub origin: String,
    /// `$TTL`.
    pub default_ttl: u32,
    /// The SOA.
    pub soa: Soa,
    /// Every other record, canonical order.
    pub records: Vec<Record>,
}

impl Zone {
    /// The file text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "; Zone {}. — written by Provisio (zonefile backend). Edits are kept only if they\n\
             ; stay in this one-record-per-line form.\n",
            self.origin
        ));
        out.push_str(&format!("$ORIGIN {}.\n", self.origin));
        out.push_str(&format!("$TTL {}\n", self.default_ttl));
        let s = &self.soa;
        out.push_str(&format!(
            "@\t{}\tIN\tSOA\t{} {} {} {} {} {} {}\n",
            s.ttl, s.mname, s.rname, s.serial, s.timers[0], s.timers[1], s.timers[2], s.timers[3]
        ));
        let mut records = self.records.clone();
        records.sort_by(Record::canonical_cmp);
        for r in &records {
            out.push_str(&r.line());
            out.push('\n');
        }
        out
    }

    /// Raises the serial to `max(serial + 1, today·100)`.
    pub fn bump_serial(&mut self) {
        self.soa.serial = next_serial(self.soa.serial, today_yyyymmdd());
    }
}

/// The next serial after `old` on `today` (`YYYYMMDD`): `max(old + 1, today·100)`,
/// wrapping as RFC 1982 allows.
pub fn next_serial(old: u32, today: u32) -> u32 {
    let base = u64::from(today) * 100;
    let next = u64::from(old) + 1;
    let candidate = next.max(base);
    u32::try_from(candidate).unwrap_or_else(|_| old.wrapping_add(1))
}

/// The serial of a new zone: `YYYYMMDD01`.
pub fn first_serial(today: u32) -> u32 {
    u32::try_from(u64::from(today) * 100 + 1).unwrap_or(1)
}

/// Today's UTC date as `YYYYMMDD`.
pub fn today_yyyymmdd() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    u32::try_from(y * 10_000 + m * 100 + d).unwrap_or(19_700_101)
}

fn parse_u32(s: &str, what: &str) -> Result<u32, String> {
    s.parse()
        .map_err(|_| format!("{what} {s:?} is not a number"))
}

fn is_ttl(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Turns a file owner (relative, `@`, or absolute) into the relative form.
fn relative_owner(owner: &str, origin: &str) -> Result<String, String> {
    let lower = owner.to_ascii_lowercase();
    if lower == "@" || lower == format!("{origin}.") {
        return Ok("@".into());
    }
    if let Some(abs) = lower.strip_suffix('.') {
        return abs
            .strip_suffix(&format!(".{origin}"))
            .map(str::to_string)
            .ok_or_else(|| format!("owner {owner} is outside the zone"));
    }
    Ok(lower)
}

/// Parses one record line (as found in the file or an undo record).
pub fn parse_record_line(
    line: &str,
    origin: &str,
    default_ttl: u32,
) -> Result<Option<(Record, Option<Soa>)>, String> {
    let tokens = tokenize(line)?;
    if tokens.is_empty() {
        return Ok(None);
    }
    if line.starts_with([' ', '\t']) {
        return Err("lines without an owner are not supported".into());
    }
    let bare = |i: usize| {
        tokens.get(i).and_then(|t| match t {
            Token::Bare(s) => Some(s.as_str()),
            Token::Quoted(_) => None,
        })
    };
    let owner = bare(0).ok_or("the owner is missing")?;
    let owner = relative_owner(owner, origin)?;
    let mut i = 1;
    let mut ttl = None;
    for _ in 0..2 {
        match bare(i) {
            Some(t) if is_ttl(t) && ttl.is_none() => {
                ttl = Some(parse_u32(t, "TTL")?);
                i += 1;
            }
            Some(c) if c.eq_ignore_ascii_case("IN") => i += 1,
            _ => {}
        }
    }
    let rtype = bare(i)
        .ok_or("the record type is missing")?
        .to_ascii_uppercase();
    let rest = &tokens[i + 1..];
    let ttl = ttl.unwrap_or(default_ttl);
    if rtype == "SOA" {
        if owner != "@" {
            return Err("SOA outside the apex".into());
        }
        if rest.len() != 7 {
            return Err("SOA must have 7 fields on one line".into());
        }
        let f = |k: usize| match &rest[k] {
            Token::Bare(s) => Ok(s.clone()),
            Token::Quoted(_) => Err("quoted SOA field".to_string()),
        };
        let abs = |s: String| {
            if s.ends_with('.') {
                s.to_ascii_lowercase()
            } else {
                format!("{}.{origin}.", s.to_ascii_lowercase())
            }
        };
        let soa = Soa {
            ttl,
            mname: abs(f(0)?),
            rname: abs(f(1)?),
            serial: parse_u32(&f(2)?, "serial")?,
            timers: [
                parse_u32(&f(3)?, "refresh")?,
                parse_u32(&f(4)?, "retry")?,
                parse_u32(&f(5)?, "expire")?,
                parse_u32(&f(6)?, "minimum")?,
            ],
        };
        // A placeholder record; the caller takes the SOA.
        return Ok(Some((
            Record {
                owner,
                ttl,
                data: RData::Txt(Vec::new()),
            },
            Some(soa),
        )));
    }
    let data = parse_rdata(&rtype, rest, origin)?;
    Ok(Some((Record { owner, ttl, data }, None)))
}

/// Parses a zone file in the subset [`Zone::render`] writes.
pub fn parse_zone(text: &str, expected_origin: &str) -> Result<Zone, String> {
    let mut origin = expected_origin.to_string();
    let mut default_ttl: Option<u32> = None;
    let mut soa = None;
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}", n + 1);
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with(';') {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('$') {
            let mut parts = rest.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some(d), Some(v)) if d.eq_ignore_ascii_case("ORIGIN") => {
                    let v = v.to_ascii_lowercase();
                    let v = v.strip_suffix('.').unwrap_or(&v).to_string();
                    if v != expected_origin {
                        return Err(at(format!("$ORIGIN {v} is not {expected_origin}")));
                    }
                    origin = v;
                }
                (Some(d), Some(v)) if d.eq_ignore_ascii_case("TTL") => {
                    default_ttl = Some(parse_u32(v, "$TTL").map_err(at)?);
                }
                _ => return Err(at(format!("unsupported directive ${rest}"))),
            }
            continue;
        }
        let ttl = default_ttl.unwrap_or(3600);
        match parse_record_line(line, &origin, ttl).map_err(at)? {
            None => {}
            Some((_, Some(s))) => {
                if soa.is_some() {
                    return Err(at("a second SOA".into()));
                }
                soa = Some(s);
            }
            Some((r, None)) => records.push(r),
        }
    }
    let soa = soa.ok_or("the zone has no SOA record")?;
    records.sort_by(Record::canonical_cmp);
    Ok(Zone {
        origin,
        default_ttl: default_ttl.unwrap_or(soa.timers[3]),
        soa,
        records,
    })
}

/// Zones as files in one folder.
#[derive(Debug)]
pub struct ZoneFileBackend {
    files: Arc<Files>,
}

/// The zone folder and its marker folder, with the synchronous file work; shared with the
/// blocking threads that do it.
#[derive(Debug)]
struct Files {
    dir: PathBuf,
    markers: PathBuf,
    /// One lock per zone: changes to one zone take turns, changes to different zones run
    /// at the same time; sweeps, purges and recovery hold every zone.
    locks: NameLocks,
}

impl ZoneFileBackend {
    /// Uses (creating it if missing) `dir`; intent markers go to `.<name>.pending` beside
    /// it (created on the first write). Synchronous: call it before serving.
    pub fn new(dir: PathBuf) -> Result<Self, DnsError> {
        fs::create_dir_all(&dir)
            .map_err(|e| DnsError::io(format!("zone folder {}", dir.display()), e))?;
        let markers = match (dir.parent(), dir.file_name()) {
            (Some(parent), Some(name)) => {
                parent.join(format!(".{}{PENDING_SUFFIX}", name.to_string_lossy()))
            }
            _ => dir.join(PENDING_SUFFIX),
        };
        let files = Files {
            dir,
            markers,
            locks: NameLocks::new(),
        };
        // Temp files of processes that are gone can only be leftovers.
        files.sweep_temp_files(false);
        Ok(ZoneFileBackend {
            files: Arc::new(files),
        })
    }

    /// The folder of intent markers.
    pub fn marker_dir(&self) -> &Path {
        &self.files.markers
    }

    /// The zone folder.
    pub fn dir(&self) -> &Path {
        &self.files.dir
    }

    /// The file of a (validated) zone.
    pub fn zone_path(&self, zone: &str) -> PathBuf {
        self.files.zone_path(zone)
    }

    /// Writes the intent marker of the call `key` durably (temp file, fsync, rename, fsync
    /// of the folder). The provider's writes do this after their checks and right before
    /// their change; it is public so crash tests can stop between the two.
    pub fn write_intent(&self, key: &str, intent: &Intent) -> Result<(), DnsError> {
        self.files.write_intent(key, intent)
    }

    /// The intent marker of the call `key`, if any (an unreadable marker counts as none).
    pub fn read_intent(&self, key: &str) -> Option<Intent> {
        self.files.read_intent(key)
    }

    /// Runs `work` on a blocking thread (file I/O and `fsync` never run on a runtime
    /// worker).
    async fn blocking<T, F>(&self, work: F) -> Result<T, DnsError>
    where
        T: Send + 'static,
        F: FnOnce(&Files) -> Result<T, DnsError> + Send + 'static,
    {
        let files = Arc::clone(&self.files);
        tokio::task::spawn_blocking(move || work(&files))
            .await
            .map_err(|e| DnsError::Io {
                what: format!("zone folder {}", self.files.dir.display()),
                transient: false,
                message: format!("the file operation did not finish: {e}"),
            })?
    }
}

/// The PID in a temp file's name `….tmp-<pid>-<n>`.
fn temp_file_pid(name: &str) -> Option<u32> {
    let (_, tail) = name.rsplit_once(".tmp-")?;
    tail.split('-').next()?.parse().ok()
}

/// Whether process `pid` runs (Linux `/proc`; where that is missing every process counts
/// as running, so nothing is removed).
fn process_runs(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The transaction id at the start of a marker's file name (`<txn>_<step>_<attempt>…`),
/// when it is a UUID as the engine makes them; other names are never taken for a
/// transaction's.
fn marker_txn(file_name: &str) -> Option<&str> {
    let stem = file_name.strip_suffix(".json")?;
    let txn = stem.split('_').next()?;
    let uuid_shape = txn.len() == 36
        && txn.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    uuid_shape.then_some(txn)
}

impl Files {
    /// Removes the temp files (`.<zone>.zone.tmp-<pid>-<n>` in the zone folder,
    /// `<key>.tmp-<pid>-<n>` in the marker folder) of processes that no longer run, and
    /// with `own` also this process's (call it holding the lock: then none of ours is being
    /// written). Best effort; returns what was removed.
    fn sweep_temp_files(&self, own: bool) -> Vec<PathBuf> {
        let me = std::process::id();
        let mut removed = Vec::new();
        for folder in [&self.dir, &self.markers] {
            let Ok(entries) = fs::read_dir(folder) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(temp_file_pid) else {
                    continue;
                };
                let leftover = if pid == me { own } else { !process_runs(pid) };
                if leftover && fs::remove_file(entry.path()).is_ok() {
                    removed.push(entry.path());
                }
            }
        }
        removed
    }

    /// [`ZoneBackend::sweep`].
    fn sweep(&self, live: &LiveTxns) -> Swept {
        let _g = self.guard_all();
        let temp_files = self.sweep_temp_files(true);
        let mut markers = Vec::new();
        if let Ok(entries) = fs::read_dir(&self.markers) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(txn) = name.to_str().and_then(marker_txn) else {
                    continue;
                };
                if !live(txn) && fs::remove_file(entry.path()).is_ok() {
                    markers.push(entry.path());
                }
            }
        }
        if !markers.is_empty() {
            if let Ok(d) = File::open(&self.markers) {
                let _ = d.sync_all();
            }
        }
        Swept {
            temp_files,
            markers,
        }
    }

    /// The file of a (validated) zone.
    fn zone_path(&self, zone: &str) -> PathBuf {
        self.dir.join(format!("{zone}.zone"))
    }

    /// Holds one zone (its file, its records).
    fn zone_guard(&self, zone: &str) -> NameGuard<'_> {
        self.locks.one(zone)
    }

    /// Holds every zone and the marker folder: no change is in progress.
    fn guard_all(&self) -> NameGuard<'_> {
        self.locks.all()
    }

    fn load(&self, zone: &str) -> Result<Zone, DnsError> {
        let path = self.zone_path(zone);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DnsError::ZoneNotFound(zone.to_string()))
            }
            Err(e) => return Err(DnsError::io(format!("zone file {}", path.display()), e)),
        };
        parse_zone(&text, zone).map_err(|message| DnsError::Corrupt {
            zone: zone.to_string(),
            message,
        })
    }

    /// Writes `text` to a temp file in the zone folder, fsyncs it, and returns its path.
    fn write_temp(&self, zone: &str, text: &str) -> Result<PathBuf, DnsError> {
        let tmp = self.dir.join(format!(
            ".{zone}.zone.tmp-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })();
        match result {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(DnsError::io(format!("temp file {}", tmp.display()), e))
            }
        }
    }

    fn sync_dir(&self) {
        // Best effort: makes the rename durable.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
    }

    /// Replaces the zone file atomically.
    fn store(&self, zone: &Zone) -> Result<(), DnsError> {
        let tmp = self.write_temp(&zone.origin, &zone.render())?;
        let path = self.zone_path(&zone.origin);
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(DnsError::io(format!("zone file {}", path.display()), e));
        }
        self.sync_dir();
        Ok(())
    }

    fn deleted_path(&self, token: &str) -> PathBuf {
        self.dir.join(DELETED_DIR).join(token)
    }

    fn marker_path(&self, key: &str) -> PathBuf {
        self.markers.join(format!("{}.json", sanitize_key(key)))
    }

    fn write_intent(&self, key: &str, intent: &Intent) -> Result<(), DnsError> {
        let pending = &self.markers;
        fs::create_dir_all(pending)
            .map_err(|e| DnsError::io(format!("marker folder {}", pending.display()), e))?;
        let text = serde_json::to_vec(intent).map_err(|e| DnsError::Io {
            what: "intent marker".into(),
            transient: false,
            message: e.to_string(),
        })?;
        let path = self.marker_path(key);
        let tmp = path.with_extension(format!(
            "tmp-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(DnsError::io(format!("intent marker {}", path.display()), e));
        }
        if let Ok(d) = File::open(pending) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn read_intent(&self, key: &str) -> Option<Intent> {
        let text = fs::read(self.marker_path(key)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn remove_intent(&self, key: &str) {
        let _ = fs::remove_file(self.marker_path(key));
    }

    fn mark(&self, key: Option<&str>, intent: impl FnOnce() -> Intent) -> Result<(), DnsError> {
        match key {
            Some(k) => self.write_intent(k, &intent()),
            None => Ok(()),
        }
    }

    fn remove_zone(&self, zone: &str) -> Result<(), DnsError> {
        let _g = self.zone_guard(zone);
        let path = self.zone_path(zone);
        match fs::remove_file(&path) {
            Ok(()) => {
                self.sync_dir();
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DnsError::io(format!("zone file {}", path.display()), e)),
        }
    }

    fn delete_zone(&self, zone: &str, key: &str) -> Result<String, DnsError> {
        let _g = self.zone_guard(zone);
        let token = format!("{zone}.zone.{}", sanitize_key(key));
        let aside = self.deleted_path(&token);
        let path = self.zone_path(zone);
        if !exists(&path) {
            // A retried call whose first try already moved it.
            if exists(&aside) {
                return Ok(token);
            }
            return Err(DnsError::ZoneNotFound(zone.to_string()));
        }
        let deleted = self.dir.join(DELETED_DIR);
        fs::create_dir_all(&deleted)
            .map_err(|e| DnsError::io(format!("{}", deleted.display()), e))?;
        if exists(&aside) {
            return Err(DnsError::Io {
                what: format!("{} already exists", aside.display()),
                transient: false,
                message: "a deleted copy with this key is in the way".into(),
            });
        }
        self.write_intent(
            key,
            &Intent::DeleteZone {
                zone: zone.to_string(),
                token: token.clone(),
            },
        )?;
        fs::rename(&path, &aside)
            .map_err(|e| DnsError::io(format!("zone file {}", path.display()), e))?;
        self.sync_dir();
        Ok(token)
    }

    fn restore_zone(&self, zone: &str, token: &str) -> Result<(), DnsError> {
        let _g = self.zone_guard(zone);
        if token.contains('/')
            || token.contains('\\')
            || token.starts_with('.')
            || token.contains('\0')
        {
            return Err(DnsError::Invalid(format!(
                "bad deleted-zone token {token:?}"
            )));
        }
        let aside = self.deleted_path(token);
        let path = self.zone_path(zone);
        match (exists(&aside), exists(&path)) {
            (true, false) => {
                fs::rename(&aside, &path)
                    .map_err(|e| DnsError::io(format!("restoring zone file {}", path.display()), e))?;
                self.sync_dir();
                Ok(())
            }
            (false, true) => Ok(()),
            (true, true) => Err(DnsError::ZoneExists(format!(
                "{zone} (cannot restore it: a new zone of that name exists; the old file is kept at {})",
                aside.display()
            ))),
            (false, false) => Err(DnsError::ZoneNotFound(format!(
                "{zone} (its deleted copy {} is gone)",
                aside.display()
            ))),
        }
    }

    fn create_zone_inner(
        &self,
        settings: &ZoneSettings,
        key: Option<&str>,
    ) -> Result<(u32, String), DnsError> {
        let _g = self.zone_guard(&settings.zone);
        let path = self.zone_path(&settings.zone);
        if exists(&path) {
            return Err(DnsError::ZoneExists(settings.zone.clone()));
        }
        let mut records = vec![Record {
            owner: "@".into(),
            ttl: settings.ttl,
            data: RData::Ns(settings.primary_ns.clone()),
        }];
        records.extend(ns_glue(settings));
        let zone = Zone {
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
        };
        let tmp = self.write_temp(&settings.zone, &zone.render())?;
        if let Err(e) = self.mark(key, || Intent::CreateZone {
            zone: settings.zone.clone(),
        }) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // hard_link fails if the target exists: no zone is ever overwritten.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(DnsError::ZoneExists(settings.zone.clone()))
            }
            Err(e) => return Err(DnsError::io(format!("zone file {}", path.display()), e)),
        }
        self.sync_dir();
        Ok((zone.soa.serial, path.display().to_string()))
    }

    fn add_record_inner(
        &self,
        zone: &str,
        owner: &str,
        ttl: Option<u32>,
        data: &RData,
        key: Option<&str>,
    ) -> Result<(Record, u32), DnsError> {
        let _g = self.zone_guard(zone);
        let mut z = self.load(zone)?;
        let record = Record {
            owner: owner.to_string(),
            ttl: ttl.unwrap_or(z.default_ttl),
            data: data.clone(),
        };
        if z.records.iter().any(|r| r.same_as(&record)) {
            return Err(DnsError::RecordExists(format!(
                "{} {} {}",
                record.fqdn(zone),
                data.rtype(),
                data.to_text()
            )));
        }
        check_cname(
            zone,
            owner,
            data.rtype(),
            z.records.iter().filter(|r| r.owner == record.owner),
        )?;
        self.mark(key, || Intent::AddRecord {
            zone: zone.to_string(),
            record: record.line(),
        })?;
        z.records.push(record.clone());
        z.records.sort_by(Record::canonical_cmp);
        z.bump_serial();
        self.store(&z)?;
        Ok((record, z.soa.serial))
    }

    fn delete_record_inner(
        &self,
        zone: &str,
        owner: &str,
        data: &RData,
        key: Option<&str>,
    ) -> Result<Option<(Record, u32)>, DnsError> {
        let _g = self.zone_guard(zone);
        let mut z = self.load(zone)?;
        let Some(pos) = z
            .records
            .iter()
            .position(|r| r.owner == owner && &r.data == data)
        else {
            return Ok(None);
        };
        self.mark(key, || Intent::DeleteRecord {
            zone: zone.to_string(),
            record: z.records[pos].line(),
        })?;
        let removed = z.records.remove(pos);
        z.bump_serial();
        self.store(&z)?;
        Ok(Some((removed, z.soa.serial)))
    }

    fn replace_rrset_inner(
        &self,
        zone: &str,
        owner: &str,
        rtype: &str,
        new: NewRrset<'_>,
        expect: Option<&[Record]>,
        key: Option<&str>,
    ) -> Result<Replaced, DnsError> {
        let _g = self.zone_guard(zone);
        let mut z = self.load(zone)?;
        let in_set = |r: &Record| r.owner == owner && r.data.rtype() == rtype;
        let before: Vec<Record> = z.records.iter().filter(|r| in_set(r)).cloned().collect();
        let after = new.resolve(owner, z.default_ttl);
        if let Some(bad) = after.iter().find(|r| !in_set(r)) {
            return Err(DnsError::Invalid(format!(
                "{} {} does not belong to the RRset {} {rtype}",
                bad.fqdn(zone),
                bad.data.rtype(),
                fqdn(zone, owner)
            )));
        }
        let unchanged = Replaced {
            before: before.clone(),
            after: before.clone(),
            serial: z.soa.serial,
            changed: false,
        };
        if same_rrset(&before, &after) {
            return Ok(unchanged);
        }
        if let Some(expected) = expect {
            if !same_rrset(&before, expected) {
                return Err(rrset_changed(zone, owner, rtype, expected, &before));
            }
        }
        if !after.is_empty() {
            check_cname(
                zone,
                owner,
                rtype,
                z.records
                    .iter()
                    .filter(|r| r.owner == owner && r.data.rtype() != rtype),
            )?;
        }
        self.mark(key, || Intent::ReplaceRecordSet {
            zone: zone.to_string(),
            owner: owner.to_string(),
            rtype: rtype.to_string(),
            before: before.iter().map(Record::line).collect(),
            after: after.iter().map(Record::line).collect(),
        })?;
        z.records.retain(|r| !in_set(r));
        z.records.extend(after.iter().cloned());
        z.records.sort_by(Record::canonical_cmp);
        z.bump_serial();
        self.store(&z)?;
        Ok(Replaced {
            before,
            after,
            serial: z.soa.serial,
            changed: true,
        })
    }

    /// Settles the call `key` from its marker and the zone folder as it is now.
    fn recover_inner(&self, key: &str) -> Result<Recovered, DnsError> {
        let _g = self.guard_all();
        // No marker: the call never got past its checks, so nothing changed.
        let Some(intent) = self.read_intent(key) else {
            return Ok(Recovered::NotApplied);
        };
        let line = |zone: &str, text: &str| -> Result<Record, DnsError> {
            match parse_record_line(text, zone, 3600) {
                Ok(Some((r, None))) => Ok(r),
                _ => Err(DnsError::Corrupt {
                    zone: zone.to_string(),
                    message: format!("intent marker of {key} holds a bad record line {text:?}"),
                }),
            }
        };
        let load = |zone: &str| match self.load(zone) {
            Ok(z) => Ok(Some(z)),
            Err(DnsError::ZoneNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        };
        let found = match &intent {
            Intent::CreateZone { zone } => {
                if exists(&self.zone_path(zone)) {
                    Recovered::ZoneCreated
                } else {
                    Recovered::NotApplied
                }
            }
            Intent::DeleteZone { token, .. } => {
                if exists(&self.deleted_path(token)) {
                    Recovered::ZoneDeleted {
                        token: token.clone(),
                    }
                } else {
                    Recovered::NotApplied
                }
            }
            Intent::AddRecord { zone, record } => {
                let record = line(zone, record)?;
                match load(zone)? {
                    Some(z) if z.records.iter().any(|r| r.same_as(&record)) => Recovered::Record {
                        record,
                        guard: None,
                    },
                    _ => Recovered::NotApplied,
                }
            }
            Intent::DeleteRecord { zone, record } => {
                let record = line(zone, record)?;
                let Some(z) = load(zone)? else {
                    return Err(DnsError::Unsupported(format!(
                        "cannot tell whether DeleteRecord {} {} ({key}) was applied: zone {zone} \
                         is gone; check it by hand",
                        record.fqdn(zone),
                        record.data.rtype()
                    )));
                };
                if z.records.iter().any(|r| r.same_as(&record)) {
                    Recovered::NotApplied
                } else {
                    Recovered::Record {
                        record,
                        guard: None,
                    }
                }
            }
            Intent::ReplaceRecordSet {
                zone,
                owner,
                rtype,
                before,
                after,
            } => {
                let set = |lines: &[String]| -> Result<Vec<Record>, DnsError> {
                    lines.iter().map(|l| line(zone, l)).collect()
                };
                let (before, after) = (set(before)?, set(after)?);
                let what = || format!("ReplaceRecordSet {} {rtype} ({key})", fqdn(zone, owner));
                let Some(z) = load(zone)? else {
                    return Err(DnsError::Unsupported(format!(
                        "cannot tell whether {} was applied: zone {zone} is gone; check it by hand",
                        what()
                    )));
                };
                let live: Vec<Record> = z
                    .records
                    .into_iter()
                    .filter(|r| &r.owner == owner && r.data.rtype() == rtype)
                    .collect();
                if same_rrset(&live, &after) {
                    Recovered::Rrset { before, after }
                } else if same_rrset(&live, &before) {
                    Recovered::NotApplied
                } else {
                    return Err(DnsError::Unsupported(format!(
                        "cannot tell whether {} was applied: the RRset holds {}, neither what it \
                         held before ({}) nor what the call wrote ({}); someone else changed it, \
                         check it by hand",
                        what(),
                        describe_rrset(&live),
                        describe_rrset(&before),
                        describe_rrset(&after)
                    )));
                }
            }
        };
        if found == Recovered::NotApplied {
            self.remove_intent(key);
        }
        Ok(found)
    }
}

/// A CNAME cannot be at the apex or share its name with `others` (the other records at
/// the owner); other data cannot share a name with a CNAME.
fn check_cname<'a>(
    zone: &str,
    owner: &str,
    rtype: &str,
    mut others: impl Iterator<Item = &'a Record>,
) -> Result<(), DnsError> {
    if rtype == "CNAME" {
        if owner == "@" {
            return Err(DnsError::Conflict(format!(
                "a CNAME cannot be at the zone apex {zone}."
            )));
        }
        if let Some(r) = others.next() {
            return Err(DnsError::Conflict(format!(
                "{} already has a {} record; a CNAME cannot share its name",
                fqdn(zone, owner),
                r.data.rtype()
            )));
        }
    } else if others.any(|r| matches!(r.data, RData::Cname(_))) {
        return Err(DnsError::Conflict(format!(
            "{} is a CNAME; it cannot have {rtype} records too",
            fqdn(zone, owner)
        )));
    }
    Ok(())
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

/// [`NewRrset`] owned, to move to a blocking thread.
enum OwnedRrset {
    Data(Option<u32>, Vec<RData>),
    Records(Vec<Record>),
}

impl From<NewRrset<'_>> for OwnedRrset {
    fn from(new: NewRrset<'_>) -> Self {
        match new {
            NewRrset::Data { ttl, data } => OwnedRrset::Data(ttl, data.to_vec()),
            NewRrset::Records(records) => OwnedRrset::Records(records.to_vec()),
        }
    }
}

impl OwnedRrset {
    fn as_new(&self) -> NewRrset<'_> {
        match self {
            OwnedRrset::Data(ttl, data) => NewRrset::Data { ttl: *ttl, data },
            OwnedRrset::Records(records) => NewRrset::Records(records),
        }
    }
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

#[async_trait]
impl ZoneBackend for ZoneFileBackend {
    fn kind(&self) -> &'static str {
        "zonefile"
    }

    async fn create_zone(&self, settings: &ZoneSettings) -> Result<(u32, String), DnsError> {
        let settings = settings.clone();
        self.blocking(move |f| f.create_zone_inner(&settings, None))
            .await
    }

    async fn create_zone_keyed(
        &self,
        settings: &ZoneSettings,
        key: &str,
    ) -> Result<(u32, String), DnsError> {
        let (settings, key) = (settings.clone(), key.to_string());
        self.blocking(move |f| f.create_zone_inner(&settings, Some(&key)))
            .await
    }

    async fn remove_zone(&self, zone: &str) -> Result<(), DnsError> {
        let zone = zone.to_string();
        self.blocking(move |f| f.remove_zone(&zone)).await
    }

    async fn delete_zone(&self, zone: &str, key: &str) -> Result<String, DnsError> {
        let (zone, key) = (zone.to_string(), key.to_string());
        self.blocking(move |f| f.delete_zone(&zone, &key)).await
    }

    async fn restore_zone(&self, zone: &str, token: &str) -> Result<(), DnsError> {
        let (zone, token) = (zone.to_string(), token.to_string());
        self.blocking(move |f| f.restore_zone(&zone, &token)).await
    }

    async fn write_back(&self, zone: &str) -> Result<String, DnsError> {
        let path = self.zone_path(zone);
        if !self.zone_exists(zone).await? {
            return Err(DnsError::ZoneNotFound(zone.to_string()));
        }
        Ok(format!(
            "{} already holds every change: the zonefile backend writes it (fsynced) at each change",
            path.display()
        ))
    }

    async fn zone_exists(&self, zone: &str) -> Result<bool, DnsError> {
        let path = self.zone_path(zone);
        self.blocking(move |_| Ok(exists(&path))).await
    }

    async fn snapshot(&self, zone: &str) -> Result<ZoneSnapshot, DnsError> {
        let zone = zone.to_string();
        self.blocking(move |f| {
            let _g = f.zone_guard(&zone);
            let z = f.load(&zone)?;
            Ok(ZoneSnapshot {
                serial: z.soa.serial,
                default_ttl: z.default_ttl,
                records: z.records,
            })
        })
        .await
    }

    async fn add_record(
        &self,
        zone: &str,
        owner: &str,
        ttl: Option<u32>,
        data: &RData,
    ) -> Result<(Record, u32), DnsError> {
        let (zone, owner, data) = (zone.to_string(), owner.to_string(), data.clone());
        self.blocking(move |f| f.add_record_inner(&zone, &owner, ttl, &data, None))
            .await
    }

    async fn delete_record(
        &self,
        zone: &str,
        owner: &str,
        data: &RData,
    ) -> Result<Option<(Record, u32)>, DnsError> {
        let (zone, owner, data) = (zone.to_string(), owner.to_string(), data.clone());
        self.blocking(move |f| f.delete_record_inner(&zone, &owner, &data, None))
            .await
    }

    async fn add_record_keyed(
        &self,
        zone: &str,
        owner: &str,
        ttl: Option<u32>,
        data: &RData,
        key: &str,
    ) -> Result<Applied, DnsError> {
        let (zone, owner, data, key) = (
            zone.to_string(),
            owner.to_string(),
            data.clone(),
            key.to_string(),
        );
        let (record, serial) = self
            .blocking(move |f| f.add_record_inner(&zone, &owner, ttl, &data, Some(&key)))
            .await?;
        Ok(Applied {
            record,
            serial,
            guard: None,
        })
    }

    async fn delete_record_keyed(
        &self,
        zone: &str,
        owner: &str,
        data: &RData,
        key: &str,
    ) -> Result<Option<Applied>, DnsError> {
        let (zone, owner, data, key) = (
            zone.to_string(),
            owner.to_string(),
            data.clone(),
            key.to_string(),
        );
        Ok(self
            .blocking(move |f| f.delete_record_inner(&zone, &owner, &data, Some(&key)))
            .await?
            .map(|(record, serial)| Applied {
                record,
                serial,
                guard: None,
            }))
    }

    async fn replace_rrset(
        &self,
        zone: &str,
        owner: &str,
        rtype: &str,
        new: NewRrset<'_>,
        expect: Option<&[Record]>,
        key: Option<&str>,
    ) -> Result<Replaced, DnsError> {
        let (zone, owner, rtype) = (zone.to_string(), owner.to_string(), rtype.to_string());
        let new = OwnedRrset::from(new);
        let expect = expect.map(<[Record]>::to_vec);
        let key = key.map(str::to_string);
        self.blocking(move |f| {
            f.replace_rrset_inner(
                &zone,
                &owner,
                &rtype,
                new.as_new(),
                expect.as_deref(),
                key.as_deref(),
            )
        })
        .await
    }

    async fn recover(&self, key: &str, _call: &InDoubt<'_>) -> Result<Recovered, DnsError> {
        let key = key.to_string();
        self.blocking(move |f| f.recover_inner(&key)).await
    }

    async fn sweep(&self, live: LiveTxns) -> Result<Swept, DnsError> {
        self.blocking(move |f| Ok(f.sweep(&live))).await
    }

    async fn purge(
        &self,
        scope: &provisio_engine::provider::PurgeScope,
    ) -> Result<provisio_engine::provider::Purged, DnsError> {
        let scope = scope.clone();
        self.blocking(move |f| f.purge(&scope)).await
    }

    async fn forget(&self, key: &str) {
        let key = key.to_string();
        // Best effort: a marker left behind is removed by a later sweep.
        let _ = self
            .blocking(move |f| {
                // The marker's own name: a sweep or recovery (which hold every name)
                // never sees it half-removed; other zones' calls go on.
                let _g = f.locks.one(&format!("\0marker {key}"));
                f.remove_intent(&key);
                Ok(())
            })
            .await;
    }
}

/// The transaction id in a deleted zone's name (`<zone>.zone.<txn>_<step>_<attempt>`).
fn deleted_txn(token: &str) -> Option<&str> {
    token
        .match_indices(".zone.")
        .find_map(|(i, m)| {
            marker_txn(&format!("{}.json", &token[i + m.len()..])).map(|_| i + m.len())
        })
        .map(|start| &token[start..start + 36])
}

impl Files {
    /// [`ZoneBackend::purge`]: deleted zones in `.deleted/` and intent markers of
    /// transactions the scope lets go.
    fn purge(
        &self,
        scope: &provisio_engine::provider::PurgeScope,
    ) -> Result<provisio_engine::provider::Purged, DnsError> {
        use std::os::unix::fs::MetadataExt;
        let _g = self.guard_all();
        let mut purged = provisio_engine::provider::Purged::default();
        let since = |p: &Path, ctime: bool| {
            fs::symlink_metadata(p)
                .ok()
                .and_then(|m| u64::try_from(if ctime { m.ctime() } else { m.mtime() }).ok())
                .map(|s| s * 1000)
        };
        let mut candidates: Vec<(PathBuf, String, bool)> = Vec::new();
        if let Ok(entries) = fs::read_dir(self.dir.join(DELETED_DIR)) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(txn) = deleted_txn(&name) {
                    candidates.push((e.path(), txn.to_string(), true));
                }
            }
        }
        if let Ok(entries) = fs::read_dir(&self.markers) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(txn) = marker_txn(&name) {
                    candidates.push((e.path(), txn.to_string(), false));
                }
            }
        }
        candidates.sort();
        for (path, txn, deleted_zone) in candidates {
            // A rename into `.deleted/` sets the ctime; a marker is written once.
            if !scope.may_purge(&txn, since(&path, deleted_zone)) {
                continue;
            }
            if !scope.dry_run() {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(DnsError::io(format!("{}", path.display()), e)),
                }
            }
            purged.removed.push(format!(
                "{} {}",
                if deleted_zone {
                    "deleted zone"
                } else {
                    "intent marker"
                },
                path.display()
            ));
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod purge_tests {
    use super::*;
    use provisio_engine::provider::{PurgeScope, StatusOf, TxnStatus};
    use std::time::Duration;

    const OVER: &str = "0190f1c2-0000-7000-8000-000000000001";
    const FAILED: &str = "0190f1c2-0000-7000-8000-000000000003";

    #[test]
    fn deleted_zone_names_carry_their_transaction() {
        assert_eq!(
            deleted_txn(&format!("a.zone.example.zone.{OVER}_del_1")),
            Some(OVER)
        );
        assert_eq!(deleted_txn("example.zone.copy"), None);
    }

    /// Deleted zones and markers of a transaction over and old enough go; a
    /// rollback_failed one's stay.
    #[tokio::test]
    async fn purge_removes_deleted_zones_of_final_transactions_only() {
        let root = tempfile::tempdir().expect("tmp");
        let backend = ZoneFileBackend::new(root.path().join("zones")).expect("backend");
        let deleted = backend.dir().join(DELETED_DIR);
        fs::create_dir_all(&deleted).expect("deleted");
        fs::create_dir_all(backend.marker_dir()).expect("markers");
        for txn in [OVER, FAILED] {
            fs::write(deleted.join(format!("t.test.zone.{txn}_del_1")), "zone").expect("zone");
            fs::write(backend.marker_dir().join(format!("{txn}_del_1.json")), "{}")
                .expect("marker");
        }
        let status: StatusOf = Arc::new(|id: &str| match id {
            OVER => TxnStatus::Over { finished_ms: 0 },
            _ => TxnStatus::NotOver,
        });
        let scope = PurgeScope::new(Duration::from_secs(60), false, 1_000_000, status);
        let purged = backend.purge(&scope).await.expect("purge");
        assert_eq!(purged.removed.len(), 2, "{:?}", purged.removed);
        assert!(!deleted.join(format!("t.test.zone.{OVER}_del_1")).exists());
        assert!(!backend
            .marker_dir()
            .join(format!("{OVER}_del_1.json"))
            .exists());
        assert!(deleted.join(format!("t.test.zone.{FAILED}_del_1")).exists());
        assert!(backend
            .marker_dir()
            .join(format!("{FAILED}_del_1.json"))
            .exists());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_rules() {
        assert_eq!(next_serial(0, 20240615), 2024061500);
        assert_eq!(next_serial(2024061500, 20240615), 2024061501);
        assert_eq!(next_serial(2024061599, 20240615), 2024061600);
        assert_eq!(next_serial(2024061512, 20240616), 2024061600);
        assert_eq!(next_serial(u32::MAX, 20240616), 0);
        let t = today_yyyymmdd();
        assert!((20200101..21000101).contains(&t), "{t}");
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;
    use std::time::Duration;

    fn settings(zone: &str) -> ZoneSettings {
        ZoneSettings {
            zone: zone.into(),
            primary_ns: format!("ns1.{zone}."),
            admin: format!("hostmaster.{zone}."),
            ttl: 3600,
            ns_address: None,
            timers: [7200, 3600, 1_209_600, 3600],
        }
    }

    /// A change to one zone does not wait for a change to another (issue 17: the
    /// provider-wide lock made 16 tenants in flight no faster than one), and changes to
    /// the same zone still take turns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zones_are_locked_one_by_one() {
        let root = tempfile::tempdir().expect("tmp");
        let backend = ZoneFileBackend::new(root.path().join("zones")).expect("backend");
        for z in ["a.test", "b.test"] {
            backend.create_zone(&settings(z)).await.expect("zone");
        }
        let held = backend.files.zone_guard("a.test");
        let one = RData::A("192.0.2.1".parse().expect("ip"));
        // Zone b is not held: its change goes through while a is held.
        tokio::time::timeout(
            Duration::from_secs(10),
            backend.add_record("b.test", "www", None, &one),
        )
        .await
        .expect("b.test must not wait for a.test")
        .expect("add");
        // Zone a is held: its change waits until the holder lets go.
        let files = Arc::clone(&backend.files);
        let mut waiting = tokio::task::spawn_blocking(move || {
            files.add_record_inner("a.test", "www", None, &one, None)
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut waiting)
                .await
                .is_err(),
            "a change to a held zone went ahead"
        );
        drop(held);
        waiting.await.expect("join").expect("add after release");
        let z = backend.snapshot("a.test").await.expect("snapshot");
        assert!(z.records.iter().any(|r| r.owner == "www"));
    }
}
