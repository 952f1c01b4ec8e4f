//! The listing file: every transaction's `tx list` line (id, state, start and last change,
//! procedure, subject) kept beside a sled store, outside sled, so that `provisio tx list`
//! answers without opening sled (whose open reads a page table sized by the whole store:
//! 0.7–2.2 s for a million transactions). sled stays the truth; the listing is a cache that
//! is trusted only as the last clean close of the store left it.
//!
//! Three files in the store folder:
//! - `provisio.list` (the snapshot): a header, a table of the distinct procedure and
//!   subject strings, then one fixed-size entry per transaction sorted by (start time, id),
//!   so the newest page is read from the end and a time bound is found by binary search;
//! - `provisio.list.delta`: changes since the snapshot, appended as length-prefixed records
//!   with a CRC each (an upsert of a line, or a removal);
//! - `provisio.list.ok` (the marker): which store and write count the two files describe, and
//!   their lengths. It is written last (write, rename: what it describes is synced before,
//!   and a marker lost in a power cut only sends `tx list` to sled), by the store's clean
//!   close; the next open of the store takes it away before anything is written, renamed to
//! - `provisio.list.base` (the base): what the last marker said (also written beside it),
//!   which `tx list` never reads.
//!   It outlives a crash of the holder that took it, so the next clean close (a reader's
//!   too) brings the files it describes up to date from what changed since they were
//!   written — the lines that could still change (their summaries read again) and the
//!   transactions started since (the index by start time, from the close less a margin for
//!   clock steps; `catch_up`) — instead of reading every summary (at a million
//!   transactions: ~30 ms at sled's memory floor against 3–4 s and ~100 MiB more;
//!   BENCHMARKS.md, "Issue 11: the listing after a crash catches up"). A removal leaves
//!   nothing in the index to find it by, so the sled store logs it: the write that removes
//!   transaction summaries carries, in the same batch, an entry of the store's removal log
//!   (Meta keys `txn-removal/` ‖ write number: the ids, and the store's `txn-removed` mark
//!   before it, the mark then naming this write), and the catch-up reads the entries past
//!   the base's write count, which must chain from the base's mark to the store's. The
//!   next open clears the entries the files it takes as its base hold, so the log holds the
//!   removals since the listing was last written (at most 65,536 a holder). A removal the
//!   log cannot vouch for (a broken chain: a provisio before the log, a holder past its
//!   bound) is still known when this holder saw it (its own, or the crashed holder's still
//!   in the write-ahead log, replayed at the open); otherwise, or with an unbuilt index or a
//!   base older than this scheme, the files are rebuilt. Anything that rewrites the snapshot
//!   removes the base first.
//!
//! A reader trusts the files only when the store's state file (`<store>.state`) says
//! "closed cleanly" with the marker's identity and write count, and finds the same again
//! after reading: a process that opened the store meanwhile marked it not clean, and one
//! that closed it meanwhile changed its write count. Anything else (a crash, a live holder,
//! a garbled file) sends the caller to sled, and the next clean close catches the files up
//! (or rebuilds them).

use super::index::{self, TxnQuery, REMOVED_KEY};
use super::records::{decode, now_ms, TxnSummary};
use crate::exec::TxnState;
use crate::store::{side_state, KeyRange, SideState, Space, Store};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The snapshot's file name in the store folder.
pub const SNAPSHOT_FILE: &str = "provisio.list";
/// The delta's file name in the store folder.
pub const DELTA_FILE: &str = "provisio.list.delta";
/// The marker's file name in the store folder.
pub const MARKER_FILE: &str = "provisio.list.ok";
/// What the last marker said, kept by the open that takes it (never read by `tx list`): after
/// a crash, the next clean close brings the files it describes up to date from what changed
/// since they were written instead of reading every summary again.
pub const BASE_FILE: &str = "provisio.list.base";
/// How far before the base's close (or the earliest clock reading since) a catch-up looks
/// for transactions started since: a clock stepped back by less than this loses none.
const CLOCK_MARGIN_MS: u64 = 60 * 60 * 1000;
/// Index keys (or summaries) read per store call by a catch-up.
const CATCH_UP_PAGE: usize = 1024;

const MAGIC: &[u8; 8] = b"PVLIST01";
/// magic, entry count, string table length, string table CRC.
const HEADER_LEN: usize = 8 + 8 + 8 + 4;
/// The only id length the listing holds (a UUID's text; the index assumes it too).
const ID_LEN: usize = 36;
/// id, state, started ms, updated ms, procedure string, subject string.
const ENTRY_LEN: usize = ID_LEN + 1 + 8 + 8 + 4 + 4;
/// Snapshot entries read per file read while paging backwards.
const CHUNK: usize = 2048;
/// Changes remembered in memory by a store holder before it gives up and rebuilds the
/// listing from sled at close.
pub(crate) const MAX_CHANGES: usize = 65_536;

/// One transaction as `tx list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Transaction id.
    pub id: String,
    /// Current state.
    pub state: TxnState,
    /// Start time (ms since the epoch).
    pub started_ms: u64,
    /// Last change (ms since the epoch).
    pub updated_ms: u64,
    /// `Namespace/Procedure`.
    pub target: String,
    /// Who asked.
    pub who: String,
}

impl From<&TxnSummary> for Listed {
    fn from(s: &TxnSummary) -> Listed {
        Listed {
            id: s.id.to_string(),
            state: s.state,
            started_ms: s.started_ms,
            updated_ms: s.updated_ms,
            target: s.target.clone(),
            who: s.who.clone(),
        }
    }
}

impl Listed {
    fn key(&self) -> (u64, &[u8]) {
        (self.started_ms, self.id.as_bytes())
    }
}

/// One page answered from the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// The transactions, newest first.
    pub items: Vec<Listed>,
    /// Pass as [`TxnQuery::after`] for the next page; `None` when this was the last.
    pub next: Option<String>,
}

/// Why the listing cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    /// The cursor names no transaction.
    #[error("no transaction `{0}` to continue after\n  hint: pass the id printed at the end of the previous page")]
    UnknownCursor(String),
    /// The files are missing, stale or damaged, or the store is held: ask sled.
    #[error("the listing file cannot answer: {0}")]
    Unavailable(String),
}

fn unavailable(why: impl Into<String>) -> ListingError {
    ListingError::Unavailable(why.into())
}

fn state_code(s: TxnState) -> u8 {
    TxnState::ALL.iter().position(|x| *x == s).unwrap_or(0) as u8
}

fn state_of(code: u8) -> Option<TxnState> {
    TxnState::ALL.get(usize::from(code)).copied()
}

// ---- the delta's records ----

/// One change of the delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// The transaction's line is now this.
    Upsert(Listed),
    /// The transaction is gone (pruned).
    Removed(String),
}

impl Change {
    fn id(&self) -> &str {
        match self {
            Change::Upsert(l) => &l.id,
            Change::Removed(id) => id,
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends one delta record (length, CRC of the payload, payload) to `out`.
pub(crate) fn encode_change(c: &Change, out: &mut Vec<u8>) {
    let mut p = Vec::with_capacity(64);
    match c {
        Change::Removed(id) => {
            p.push(0);
            put_str(&mut p, id);
        }
        Change::Upsert(l) => {
            p.push(1);
            put_str(&mut p, &l.id);
            p.push(state_code(l.state));
            p.extend_from_slice(&l.started_ms.to_le_bytes());
            p.extend_from_slice(&l.updated_ms.to_le_bytes());
            put_str(&mut p, &l.target);
            put_str(&mut p, &l.who);
        }
    }
    out.extend_from_slice(&(p.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
    out.extend_from_slice(&p);
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn take_bytes(&mut self) -> Option<&[u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

fn decode_payload(p: &[u8]) -> Option<Change> {
    let mut c = Cursor(p);
    let change = match c.u8()? {
        0 => Change::Removed(c.string()?),
        1 => Change::Upsert(Listed {
            id: c.string()?,
            state: state_of(c.u8()?)?,
            started_ms: c.u64()?,
            updated_ms: c.u64()?,
            target: c.string()?,
            who: c.string()?,
        }),
        _ => return None,
    };
    c.0.is_empty().then_some(change)
}

/// The delta's records in order, and how many bytes of `bytes` they fill: reading stops at
/// the first record that is cut short or whose CRC or contents do not check, so a torn or
/// garbled tail is never read as a change.
pub(crate) fn decode_changes(bytes: &[u8]) -> (Vec<Change>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let mut c = Cursor(&bytes[at..]);
        let (Some(len), Some(crc)) = (c.u32(), c.u32()) else {
            break;
        };
        let Some(payload) = c.take(len as usize) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(change) = decode_payload(payload) else {
            break;
        };
        out.push(change);
        at += 8 + len as usize;
    }
    (out, at)
}

// ---- the snapshot ----

/// Encodes a snapshot of `lines` (any order; sorted here by start time and id). `None`
/// when one cannot be held (an id that is not 36 bytes long).
#[cfg(test)]
pub(crate) fn encode_snapshot(lines: Vec<Listed>) -> Option<Vec<u8>> {
    let mut b = Builder::default();
    for l in &lines {
        b.push(l).ok()?;
    }
    Some(b.finish())
}

/// Entries a snapshot being made holds in memory before it writes them, sorted, to a run
/// file beside the snapshot (when it may: [`Builder::spilling`]); the runs are merged as
/// the snapshot is written. A rebuild at a million transactions held 61 MB of entries, and
/// as much again for the snapshot's bytes, at once.
const RUN: usize = 65_536;
/// The run file's name in the store folder (there only while a snapshot is made).
const RUNS_FILE: &str = "provisio.list.runs";

/// A snapshot being made: each line interned and packed as it comes (61 bytes a line, the
/// strings once), so a rebuild over a million summaries never holds them as `String`s.
#[derive(Default)]
struct Builder {
    strings: HashMap<String, u32>,
    table: Vec<u8>,
    entries: Vec<[u8; ENTRY_LEN]>,
    count: u64,
    /// Where sorted runs go once `entries` holds `run_len`, when they may.
    runs_dir: Option<PathBuf>,
    run_len: usize,
    /// The run file and the number of entries of each run in it, in order.
    runs: Option<(std::io::BufWriter<File>, Vec<u64>)>,
}

/// An entry's sort key: start time, then id.
fn entry_key(e: &[u8; ENTRY_LEN]) -> (u64, [u8; ID_LEN]) {
    let started = e[ID_LEN + 1..ID_LEN + 9]
        .iter()
        .rev()
        .fold(0u64, |n, b| n << 8 | u64::from(*b));
    (
        started,
        e[..ID_LEN].try_into().expect("an entry starts with its id"),
    )
}

impl Builder {
    /// A builder that keeps at most [`RUN`] entries in memory, the rest in a run file in
    /// `dir`.
    fn spilling(dir: &Path) -> Builder {
        Builder {
            runs_dir: Some(dir.to_path_buf()),
            run_len: RUN,
            ..Builder::default()
        }
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(at) = self.strings.get(s) {
            return *at;
        }
        let at = self.table.len() as u32;
        put_str(&mut self.table, s);
        self.strings.insert(s.to_string(), at);
        at
    }

    /// Adds a line; `Err` when its id is not 36 bytes long or a run cannot be written.
    fn push(&mut self, l: &Listed) -> Result<(), String> {
        if l.id.len() != ID_LEN {
            return Err(format!("transaction id `{}` is not 36 bytes", l.id));
        }
        let target = self.intern(&l.target);
        let who = self.intern(&l.who);
        let mut e = [0u8; ENTRY_LEN];
        let mut at = 0;
        for part in [
            l.id.as_bytes(),
            &[state_code(l.state)],
            &l.started_ms.to_le_bytes(),
            &l.updated_ms.to_le_bytes(),
            &target.to_le_bytes(),
            &who.to_le_bytes(),
        ] {
            e[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        self.entries.push(e);
        self.count += 1;
        if self.entries.len() >= self.run_len {
            if let Some(dir) = &self.runs_dir {
                let io = |e: std::io::Error| format!("{RUNS_FILE}: {e}");
                if self.runs.is_none() {
                    let f = File::create(dir.join(RUNS_FILE)).map_err(io)?;
                    self.runs = Some((std::io::BufWriter::with_capacity(1 << 20, f), Vec::new()));
                }
                let (w, lens) = self.runs.as_mut().expect("just made");
                self.entries.sort_unstable_by_key(entry_key);
                for e in &self.entries {
                    w.write_all(e).map_err(io)?;
                }
                lens.push(self.entries.len() as u64);
                self.entries.clear();
            }
        }
        Ok(())
    }

    fn count(&self) -> u64 {
        self.count
    }

    /// The snapshot's bytes, its entries sorted by (start time, id).
    #[cfg(test)]
    fn finish(self) -> Vec<u8> {
        let mut out = Vec::new();
        self.finish_into(&mut out).expect("writes to memory");
        out
    }

    /// Writes the snapshot to `out`, its entries sorted by (start time, id) (the runs
    /// merged with what is in memory); returns its length.
    fn finish_into(mut self, out: &mut impl Write) -> std::io::Result<u64> {
        self.entries.sort_unstable_by_key(entry_key);
        out.write_all(MAGIC)?;
        out.write_all(&self.count.to_le_bytes())?;
        out.write_all(&(self.table.len() as u64).to_le_bytes())?;
        out.write_all(&crc32fast::hash(&self.table).to_le_bytes())?;
        out.write_all(&self.table)?;
        let len = (HEADER_LEN + self.table.len()) as u64 + self.count * ENTRY_LEN as u64;
        let Some((w, lens)) = self.runs.take() else {
            for e in &self.entries {
                out.write_all(e)?;
            }
            return Ok(len);
        };
        let path = self
            .runs_dir
            .as_ref()
            .expect("runs have a folder")
            .join(RUNS_FILE);
        w.into_inner().map_err(|e| e.into_error())?;
        // One reader per run, each at its run's first entry, and the entries in memory as
        // the last run: the smallest head goes out next.
        let mut readers = Vec::with_capacity(lens.len());
        let mut at = 0u64;
        for n in &lens {
            let mut f = File::open(&path)?;
            f.seek(SeekFrom::Start(at * ENTRY_LEN as u64))?;
            readers.push(std::io::BufReader::with_capacity(
                64 * 1024,
                f.take(n * ENTRY_LEN as u64),
            ));
            at += n;
        }
        let mut memory = self.entries.iter();
        let mut next = |run: usize| -> std::io::Result<Option<[u8; ENTRY_LEN]>> {
            if run == readers.len() {
                return Ok(memory.next().copied());
            }
            let mut e = [0u8; ENTRY_LEN];
            match readers[run].read_exact(&mut e) {
                Ok(()) => Ok(Some(e)),
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                Err(err) => Err(err),
            }
        };
        let mut heads = std::collections::BinaryHeap::new();
        for run in 0..=lens.len() {
            if let Some(e) = next(run)? {
                heads.push(std::cmp::Reverse((entry_key(&e), run, e)));
            }
        }
        while let Some(std::cmp::Reverse((_, run, e))) = heads.pop() {
            out.write_all(&e)?;
            if let Some(e) = next(run)? {
                heads.push(std::cmp::Reverse((entry_key(&e), run, e)));
            }
        }
        let _ = std::fs::remove_file(&path);
        Ok(len)
    }
}

/// A snapshot opened for reading: its header and string table in memory, its entries read
/// from the file on demand.
struct Snapshot {
    file: File,
    count: u64,
    entries_at: u64,
    /// Strings by their offset in the table.
    strings: HashMap<u32, String>,
}

/// One fixed-size entry, its strings still offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    id: [u8; ID_LEN],
    state: u8,
    started_ms: u64,
    updated_ms: u64,
    target: u32,
    who: u32,
}

impl Entry {
    fn decode(b: &[u8]) -> Entry {
        let mut c = Cursor(b);
        let id = c.take(ID_LEN).expect("an entry").try_into().expect("36");
        Entry {
            id,
            state: c.u8().expect("an entry"),
            started_ms: c.u64().expect("an entry"),
            updated_ms: c.u64().expect("an entry"),
            target: c.u32().expect("an entry"),
            who: c.u32().expect("an entry"),
        }
    }
}

fn decode_table(table: &[u8]) -> Option<HashMap<u32, String>> {
    let mut strings = HashMap::new();
    let mut at = 0;
    while at < table.len() {
        let mut c = Cursor(&table[at..]);
        let s = c.string()?;
        let next = at + 4 + s.len();
        strings.insert(at as u32, s);
        at = next;
    }
    Some(strings)
}

impl Snapshot {
    fn open(path: &Path, expected_len: u64) -> Result<Snapshot, ListingError> {
        let mut file = File::open(path).map_err(|e| unavailable(format!("snapshot: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| unavailable(format!("snapshot: {e}")))?
            .len();
        if len != expected_len {
            return Err(unavailable("the snapshot's length is not the marker's"));
        }
        let mut header = [0u8; HEADER_LEN];
        file.read_exact(&mut header)
            .map_err(|e| unavailable(format!("snapshot header: {e}")))?;
        Snapshot::from_header(file, &header, len)
    }

    fn from_header(mut file: File, header: &[u8], len: u64) -> Result<Snapshot, ListingError> {
        let mut c = Cursor(header);
        if c.take(8) != Some(MAGIC.as_slice()) {
            return Err(unavailable("not a listing snapshot"));
        }
        let (Some(count), Some(table_len), Some(crc)) = (c.u64(), c.u64(), c.u32()) else {
            return Err(unavailable("the snapshot's header is short"));
        };
        let entries_at = HEADER_LEN as u64 + table_len;
        if count
            .checked_mul(ENTRY_LEN as u64)
            .and_then(|n| n.checked_add(entries_at))
            != Some(len)
        {
            return Err(unavailable(
                "the snapshot's length does not match its header",
            ));
        }
        let mut table = vec![0u8; table_len as usize];
        file.read_exact(&mut table)
            .map_err(|e| unavailable(format!("snapshot strings: {e}")))?;
        if crc32fast::hash(&table) != crc {
            return Err(unavailable("the snapshot's string table does not check"));
        }
        let strings = decode_table(&table)
            .ok_or_else(|| unavailable("the snapshot's strings are garbled"))?;
        Ok(Snapshot {
            file,
            count,
            entries_at,
            strings,
        })
    }

    /// Entries `from..to`.
    fn read(&mut self, from: u64, to: u64) -> Result<Vec<Entry>, ListingError> {
        let mut buf = vec![0u8; ((to - from) as usize) * ENTRY_LEN];
        self.file
            .seek(SeekFrom::Start(self.entries_at + from * ENTRY_LEN as u64))
            .and_then(|_| self.file.read_exact(&mut buf))
            .map_err(|e| unavailable(format!("snapshot entries: {e}")))?;
        Ok(buf.chunks_exact(ENTRY_LEN).map(Entry::decode).collect())
    }

    /// The first position whose entry's (start, id) is not below `key`.
    fn lower_bound(&mut self, key: (u64, &[u8])) -> Result<u64, ListingError> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = self.read(mid, mid + 1)?[0];
            if (e.started_ms, e.id.as_slice()) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    fn listed(&self, e: &Entry) -> Result<Listed, ListingError> {
        let string = |at: u32| {
            self.strings
                .get(&at)
                .cloned()
                .ok_or_else(|| unavailable("an entry names no string"))
        };
        Ok(Listed {
            id: String::from_utf8(e.id.to_vec()).map_err(|_| unavailable("an entry's id"))?,
            state: state_of(e.state).ok_or_else(|| unavailable("an entry's state"))?,
            started_ms: e.started_ms,
            updated_ms: e.updated_ms,
            target: string(e.target)?,
            who: string(e.who)?,
        })
    }

    /// Every line.
    #[cfg(test)]
    fn all(&mut self) -> Result<Vec<Listed>, ListingError> {
        let mut out = Vec::with_capacity(self.count as usize);
        let mut at = 0;
        while at < self.count {
            let to = (at + CHUNK as u64 * 8).min(self.count);
            for e in self.read(at, to)? {
                out.push(self.listed(&e)?);
            }
            at = to;
        }
        Ok(out)
    }
}

// ---- the marker ----

/// What the marker says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Marker {
    store: String,
    writes: u64,
    snapshot_len: u64,
    delta_len: u64,
    count: u64,
    changes: u64,
    /// When the close that wrote it ran (ms since the epoch; lowered to the clock of a later
    /// open that read an earlier time); 0 in markers older than this field.
    #[serde(default)]
    closed_ms: u64,
    /// The store's [`REMOVED_KEY`] value then (empty: none yet); `None` in older markers.
    #[serde(default)]
    removals: Option<String>,
}

fn read_marker(dir: &Path) -> Option<Marker> {
    read_marker_file(&dir.join(MARKER_FILE))
}

fn read_marker_file(path: &Path) -> Option<Marker> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Writes `bytes` to a temporary file and renames it to `path`, syncing the file first when
/// `sync` is set.
fn write_renamed(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

// ---- reading ----

fn matches(q: &TxnQuery, l: &Listed) -> bool {
    q.state.is_none_or(|st| st == l.state)
        && q.procedure.as_deref().is_none_or(|p| p == l.target)
        && q.subject.as_deref().is_none_or(|w| w == l.who)
        && q.since_ms.is_none_or(|t| l.started_ms >= t)
        && q.until_ms.is_none_or(|t| l.started_ms < t)
}

/// One page of `query` from the listing files of the store in `dir`, without opening the
/// store: newest first (by start time, then id), as [`index::list`]
/// gives it. [`ListingError::Unavailable`] when the files cannot be trusted (the store is
/// held, was not closed cleanly, or the files are missing or damaged): ask the store then.
pub fn list(dir: &Path, query: &TxnQuery) -> Result<ListPage, ListingError> {
    let before = side_state(dir).ok_or_else(|| unavailable("no state file"))?;
    if !before.clean {
        return Err(unavailable("the store is open or was not closed cleanly"));
    }
    let marker = read_marker(dir).ok_or_else(|| unavailable("no marker"))?;
    if marker.store != before.id || marker.writes != before.writes {
        return Err(unavailable(
            "the marker is not of the store's last clean close",
        ));
    }
    let mut snapshot = Snapshot::open(&dir.join(SNAPSHOT_FILE), marker.snapshot_len)?;
    if snapshot.count != marker.count {
        return Err(unavailable("the snapshot's count is not the marker's"));
    }
    let mut delta = Vec::new();
    File::open(dir.join(DELTA_FILE))
        .and_then(|f| f.take(marker.delta_len).read_to_end(&mut delta))
        .map_err(|e| unavailable(format!("delta: {e}")))?;
    let (changes, read) = decode_changes(&delta);
    if read as u64 != marker.delta_len || changes.len() as u64 != marker.changes {
        return Err(unavailable("the delta is not what the marker says"));
    }
    let page = page(&mut snapshot, changes, query)?;
    // Nobody opened (or opened and closed) the store while the files were read.
    if side_state(dir).as_ref() != Some(&before) {
        return Err(unavailable("the store changed while it was listed"));
    }
    tracing::debug!(
        transactions = snapshot.count,
        "listed from the listing file, without opening the store"
    );
    Ok(page)
}

fn page(
    snapshot: &mut Snapshot,
    changes: Vec<Change>,
    query: &TxnQuery,
) -> Result<ListPage, ListingError> {
    // The latest change of each transaction the delta touches.
    let mut changed: HashMap<String, Option<Listed>> = HashMap::new();
    for c in changes {
        let id = c.id().to_string();
        changed.insert(
            id,
            match c {
                Change::Upsert(l) => Some(l),
                Change::Removed(_) => None,
            },
        );
    }
    // Exclusive upper bound: (until, "") or the cursor's (start, id), whichever is lower.
    let mut bound: (u64, Vec<u8>) = (query.until_ms.unwrap_or(u64::MAX), Vec::new());
    if query.until_ms.is_none() {
        bound.1 = vec![0xff; ID_LEN + 1];
    }
    if let Some(after) = &query.after {
        let at = match changed.get(after.as_str()) {
            Some(Some(l)) => Some((l.started_ms, l.id.as_bytes().to_vec())),
            Some(None) => None,
            None => find(snapshot, after)?,
        };
        let at = at.ok_or_else(|| ListingError::UnknownCursor(after.clone()))?;
        if at < bound {
            bound = at;
        }
    }
    let since = query.since_ms.unwrap_or(0);
    let below = |l: &Listed| (l.started_ms, l.id.as_bytes()) < (bound.0, bound.1.as_slice());
    let mut fresh: Vec<&Listed> = changed
        .values()
        .flatten()
        .filter(|l| below(l) && matches(query, l))
        .collect();
    // Newest last, so the next one is popped.
    fresh.sort_by(|a, b| a.key().cmp(&b.key()));
    // Filters the snapshot can test on its offsets; a string it does not hold matches none
    // of its entries.
    let offset_of = |s: &str| {
        snapshot
            .strings
            .iter()
            .find(|(_, v)| v.as_str() == s)
            .map(|(k, _)| *k)
    };
    let target = query.procedure.as_deref().map(offset_of);
    let who = query.subject.as_deref().map(offset_of);
    let snapshot_can_match = target != Some(None) && who != Some(None);
    let state = query.state.map(state_code);
    let limit = query.limit.max(1);
    let mut items: Vec<Listed> = Vec::with_capacity(limit.min(1024));
    let mut pos = if snapshot_can_match {
        snapshot.lower_bound((bound.0, &bound.1))?
    } else {
        0
    };
    'scan: while pos > 0 && items.len() < limit {
        let from = pos.saturating_sub(CHUNK as u64);
        let chunk = snapshot.read(from, pos)?;
        pos = from;
        for e in chunk.iter().rev() {
            if e.started_ms < since {
                pos = 0;
                break;
            }
            // Lines of the delta newer than this entry come first.
            while let Some(l) = fresh.last() {
                if l.key() > (e.started_ms, e.id.as_slice()) {
                    items.push((*l).clone());
                    fresh.pop();
                    if items.len() == limit {
                        break 'scan;
                    }
                } else {
                    break;
                }
            }
            if state.is_some_and(|s| s != e.state)
                || target.is_some_and(|t| t != Some(e.target))
                || who.is_some_and(|w| w != Some(e.who))
            {
                continue;
            }
            let id = std::str::from_utf8(&e.id).map_err(|_| unavailable("an entry's id"))?;
            if changed.contains_key(id) {
                // The delta has its newer line (or its removal).
                continue;
            }
            let l = snapshot.listed(e)?;
            if matches(query, &l) {
                items.push(l);
                if items.len() == limit {
                    break 'scan;
                }
            }
        }
    }
    while items.len() < limit {
        let Some(l) = fresh.pop() else { break };
        items.push(l.clone());
    }
    let next = (items.len() == limit)
        .then(|| items.last().map(|l| l.id.clone()))
        .flatten();
    Ok(ListPage { items, next })
}

/// The (start, id) of `id` in the snapshot: a scan of its entries.
fn find(snapshot: &mut Snapshot, id: &str) -> Result<Option<(u64, Vec<u8>)>, ListingError> {
    if id.len() != ID_LEN {
        return Ok(None);
    }
    let mut at = 0;
    while at < snapshot.count {
        let to = (at + CHUNK as u64 * 8).min(snapshot.count);
        if let Some(e) = snapshot
            .read(at, to)?
            .iter()
            .find(|e| e.id == id.as_bytes())
        {
            return Ok(Some((e.started_ms, e.id.to_vec())));
        }
        at = to;
    }
    Ok(None)
}

// ---- writing (by the store's holder) ----

/// The listing files as a clean close of the store left them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Base {
    /// They describe the store as its last clean close left it: this holder's own changes
    /// bring them up to date.
    Exact(Marker),
    /// They describe the store as an earlier clean close left it (a crash came since): what
    /// changed since then is read from the store's index ([`catch_up`]).
    Stale(Marker),
}

impl Base {
    /// The store's write count when the files were written: removals logged by later
    /// writes are the ones they lack ([`removal_log_through`]).
    pub(crate) fn writes(&self) -> u64 {
        match self {
            Base::Exact(m) | Base::Stale(m) => m.writes,
        }
    }
}

// ---- the removal log (in the store) ----

/// The removal log's keys in the store's [`Space::Meta`]: this prefix, the number of the
/// write that removed transactions (8 bytes, big-endian), a part number (4 bytes). A write
/// of the sled store that removes transaction summaries carries its log entry in the same
/// batch ([`log_removals`]), so a removal that reached sled before a crash is still known
/// to the next clean close, which catches the listing up instead of rebuilding it.
pub(crate) const REMOVAL_LOG: &[u8] = b"txn-removal/";
/// Bytes of ids an entry's part holds at most (one id however long): a part of UUIDs stays
/// under the value log's threshold (`store/values.rs`), so it lives in sled itself and an
/// open clears it without the value log.
const LOGGED_BYTES_PER_PART: usize = 1536;
/// Transactions one holder logs at most (bounding the log a long-lived holder leaves
/// behind); past it, its removals break the log's chain and a catch-up that would need them
/// rebuilds instead.
#[cfg(not(test))]
const MAX_LOGGED: usize = MAX_CHANGES;
#[cfg(test)]
const MAX_LOGGED: usize = 2_000;

/// The store's [`REMOVED_KEY`] value after a logged removal made by write `seq`.
fn logged_mark(seq: u64) -> String {
    format!("log-{seq:016x}")
}

/// The key of part `part` of write `seq`'s log entry (without the space's tag).
fn log_key(seq: u64, part: u32) -> Vec<u8> {
    let mut k = REMOVAL_LOG.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(&part.to_be_bytes());
    k
}

/// The range of the log's keys of writes up to `writes` (included), whose removals listing
/// files written at that count hold: what an open with such files as its base clears.
pub(crate) fn removal_log_through(writes: u64) -> (Vec<u8>, Vec<u8>) {
    (REMOVAL_LOG.to_vec(), log_key(writes.saturating_add(1), 0))
}

/// Whether a batch removes transactions (or changes the removal mark): its write logs it.
pub(crate) fn removes(batch: &crate::store::Batch) -> bool {
    batch.writes.iter().any(|(space, k, v)| {
        (*space == Space::Txns && v.is_none())
            || (*space == Space::Meta && k.as_slice() == REMOVED_KEY)
    })
}

impl Changes {
    /// Whether this holder may log `n` more removed transactions (at most [`MAX_LOGGED`]).
    fn may_log(&mut self, n: usize) -> bool {
        if self.logged.saturating_add(n) > MAX_LOGGED {
            self.logged = usize::MAX;
            return false;
        }
        self.logged += n;
        true
    }
}

/// Called by the sled store with its intake held, for a batch that [`removes`]: adds to
/// it, after the caller's writes, its log entry — the store's [`REMOVED_KEY`] value before
/// this write (`before`) and the ids of the summaries it deletes — and sets that key to a
/// mark naming this write (`seq`), so the marks chain entry to entry. Past [`MAX_LOGGED`]
/// it sets a mark no entry names: a catch-up that would need it rebuilds.
pub(crate) fn log_removals(
    batch: &mut crate::store::Batch,
    seq: u64,
    before: Option<&[u8]>,
    changes: &mut Changes,
) {
    let ids: Vec<Vec<u8>> = batch
        .writes
        .iter()
        .filter(|(space, _, v)| *space == Space::Txns && v.is_none())
        .map(|(_, k, _)| k.clone())
        .collect();
    if !changes.may_log(ids.len()) {
        batch.put(
            Space::Meta,
            REMOVED_KEY.to_vec(),
            format!("unlogged-{seq:016x}").into_bytes(),
        );
        return;
    }
    // The ids cut in parts; the first part starts with the mark before and the number of
    // parts, so a part missing anywhere is seen.
    let mut parts: Vec<Vec<u8>> = vec![Vec::new()];
    for id in &ids {
        let part = parts.last_mut().expect("one part at least");
        if !part.is_empty() && part.len() + 4 + id.len() > LOGGED_BYTES_PER_PART {
            parts.push(Vec::new());
        }
        put_bytes(parts.last_mut().expect("one part at least"), id);
    }
    let mut head = Vec::with_capacity(parts[0].len() + 64);
    put_bytes(&mut head, before.unwrap_or_default());
    head.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    head.append(&mut parts[0]);
    parts[0] = head;
    for (n, part) in parts.into_iter().enumerate() {
        batch.put(Space::Meta, log_key(seq, n as u32), part);
    }
    batch.put(
        Space::Meta,
        REMOVED_KEY.to_vec(),
        logged_mark(seq).into_bytes(),
    );
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// The transactions removed since the listing files `m` describes were written, read from
/// the store's removal log: `None` unless its entries after `m`'s write count chain from
/// `m`'s removal mark to `removals` (the store's mark now) with none missing — a removal by
/// a provisio that logs none, a holder past [`MAX_LOGGED`], or entries an open cleared
/// (files older than the base it had: a power cut lost a later marker) break the chain.
fn logged_removals(
    store: &dyn Store,
    m: &Marker,
    removals: &str,
) -> Result<Option<Vec<String>>, String> {
    let Some(mut mark) = m.removals.clone() else {
        return Ok(None);
    };
    let (_, mut from) = removal_log_through(m.writes);
    let end = crate::store::prefix_end(REMOVAL_LOG).expect("a prefix with an end");
    let mut ids = Vec::new();
    // The entry being read: its write, the next part wanted and how many it has.
    let mut entry: Option<(u64, u32, u32)> = None;
    let whole = |entry: Option<(u64, u32, u32)>| entry.is_none_or(|(_, next, n)| next == n);
    loop {
        let page = store
            .scan_range(
                Space::Meta,
                KeyRange::new(&from, Some(&end)),
                CATCH_UP_PAGE,
                false,
            )
            .map_err(|e| e.to_string())?;
        for (k, v) in &page {
            let Some((seq, part)) = parse_log_key(k) else {
                return Ok(None);
            };
            let mut c = Cursor(v);
            if part == 0 {
                let (Some(before), Some(parts)) = (c.take_bytes().map(<[u8]>::to_vec), c.u32())
                else {
                    return Ok(None);
                };
                if before != mark.as_bytes() || !whole(entry) {
                    return Ok(None);
                }
                mark = logged_mark(seq);
                entry = Some((seq, 1, parts));
            } else {
                match &mut entry {
                    Some((at, next, _)) if *at == seq && *next == part => *next += 1,
                    _ => return Ok(None),
                }
            }
            while !c.0.is_empty() {
                let Some(id) = c.take_bytes() else {
                    return Ok(None);
                };
                ids.push(String::from_utf8_lossy(id).into_owned());
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == CATCH_UP_PAGE => {
                from.clone_from(last);
                from.push(0);
            }
            _ => break,
        }
    }
    Ok((mark == removals && whole(entry)).then_some(ids))
}

fn parse_log_key(k: &[u8]) -> Option<(u64, u32)> {
    let rest = k.strip_prefix(REMOVAL_LOG)?;
    if rest.len() != 12 {
        return None;
    }
    Some((
        u64::from_be_bytes(rest[..8].try_into().ok()?),
        u32::from_be_bytes(rest[8..].try_into().ok()?),
    ))
}

/// At the store's open, before anything is written to it: the listing files as a base to
/// build on — exact when they describe the store as its last clean close (`previous`, its
/// state file as found) left it, stale when they describe an earlier state of the same store
/// (after a crash). The marker goes either way (the store is about to change): renamed to
/// [`BASE_FILE`], which outlives a crash of this holder for the next clean close to build on.
pub(crate) fn take_base(dir: &Path, previous: Option<&SideState>) -> Option<Base> {
    let marker = read_marker(dir);
    let kept =
        marker.is_some() && std::fs::rename(dir.join(MARKER_FILE), dir.join(BASE_FILE)).is_ok();
    if !kept {
        // Garbled or not renamed: gone all the same.
        let _ = std::fs::remove_file(dir.join(MARKER_FILE));
    }
    let previous = previous?;
    let len = |f: &str| std::fs::metadata(dir.join(f)).map(|m| m.len()).ok();
    let describes_files = |m: &Marker| {
        m.store == previous.id
            && m.writes <= previous.writes
            && len(SNAPSHOT_FILE) == Some(m.snapshot_len)
            && len(DELTA_FILE).is_some_and(|l| l >= m.delta_len)
    };
    let from_marker = marker.is_some();
    let mut m = match marker {
        Some(m) => m,
        None => read_marker_file(&dir.join(BASE_FILE))?,
    };
    if !describes_files(&m) {
        return None;
    }
    // A clock that reads earlier than the base's close stepped back: a catch-up looks for
    // transactions started since from this earlier time (kept, for a crash of this holder).
    let now = now_ms();
    if now < m.closed_ms {
        m.closed_ms = now;
        if let Ok(text) = serde_json::to_vec(&m) {
            let _ = write_renamed(&dir.join(BASE_FILE), &text, false);
        }
    }
    if from_marker && previous.clean && m.writes == previous.writes {
        return Some(Base::Exact(m));
    }
    Some(Base::Stale(m))
}

/// What a store holder saw written to its transaction summaries since it opened: the last
/// value of each (`None`: removed), or that there were too many to remember.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    latest: HashMap<Vec<u8>, Option<Vec<u8>>>,
    overflowed: bool,
    /// The holder only reads (`tx list`, `tx show`, … after a crash): its clean close keeps
    /// listing files that describe the store up to date, but never rebuilds missing or
    /// stale ones (a rebuild reads every summary through sled: seconds and hundreds of MiB
    /// at a million transactions); the next writer's close does.
    pub(crate) leave_rebuild: bool,
    /// The store's [`REMOVED_KEY`] value in sled when it was opened, before the write-ahead
    /// log's replay (empty: none yet; `None`: not known). When it is what the base saw, every
    /// removal since the base is one this holder saw: replayed (a crashed holder's, still in
    /// the log) or its own.
    removals_at_open: Option<String>,
    /// Removed transactions this holder logged in the store ([`log_removals`];
    /// `usize::MAX` once past [`MAX_LOGGED`]).
    logged: usize,
}

impl Changes {
    /// At the store's open, before the write-ahead log's replay: the store's [`REMOVED_KEY`]
    /// value in sled then.
    pub(crate) fn at_open(removals_in_sled: Option<&[u8]>) -> Changes {
        Changes {
            removals_at_open: Some(
                String::from_utf8_lossy(removals_in_sled.unwrap_or_default()).into_owned(),
            ),
            ..Changes::default()
        }
    }

    /// A batch of a crashed holder that the open's replay of the write-ahead log wrote into
    /// sled: its summaries count as this holder's changes (a prune still in the log is then
    /// caught up from, not rebuilt for).
    pub(crate) fn replayed(&mut self, batch: &crate::store::Batch) {
        for (space, id, value) in &batch.writes {
            if *space == Space::Txns {
                self.record(id, value.as_deref());
            }
        }
    }

    /// The transactions removed since the listing files `m` describes were written, when
    /// they are all known: no removal reached sled between `m`'s close and this open (the
    /// removal key in sled is still `m`'s), and this holder remembers every summary it
    /// replayed or wrote.
    fn removed_since(&self, m: &Marker) -> Option<Vec<String>> {
        if self.overflowed
            || m.removals.is_none()
            || self.removals_at_open.as_deref() != m.removals.as_deref()
        {
            return None;
        }
        Some(
            self.latest
                .iter()
                .filter(|(_, v)| v.is_none())
                .map(|(id, _)| String::from_utf8_lossy(id).into_owned())
                .collect(),
        )
    }

    /// A summary was written (`Some`) or removed (`None`).
    pub(crate) fn record(&mut self, id: &[u8], value: Option<&[u8]>) {
        if self.overflowed {
            return;
        }
        self.latest.insert(id.to_vec(), value.map(<[u8]>::to_vec));
        if self.latest.len() > MAX_CHANGES {
            self.overflowed = true;
            self.latest = HashMap::new();
        }
    }
}

fn listed_of(id: &[u8], v: &[u8]) -> Result<Listed, String> {
    let s: TxnSummary = decode(v).map_err(|e| {
        format!(
            "the summary of transaction {} cannot be read: {e}",
            String::from_utf8_lossy(id)
        )
    })?;
    Ok(Listed::from(&s))
}

/// After the store closed cleanly with `writes` writes: brings the listing files up to date
/// (appending this session's changes to the delta — or, after a crash, what changed since
/// the files were written, read from the store's index — compacting the delta into the
/// snapshot when it has grown, or rebuilding both from the store's summaries when there is
/// no base or what changed cannot be known) and writes the marker last. A failure leaves no
/// marker (the next `tx list` reads sled) and is only logged.
pub(crate) fn after_clean_close(
    store: &dyn Store,
    dir: &Path,
    store_id: &str,
    writes: u64,
    base: Option<Base>,
    changes: Changes,
) {
    if changes.leave_rebuild && base.is_none() {
        // No marker: `tx list` reads sled until a writer's clean close rebuilds the files.
        tracing::debug!("left the listing file's rebuild to the next writer of the store");
        return;
    }
    let started = std::time::Instant::now();
    match update(store, dir, store_id, writes, base, changes) {
        Ok(Updated::Rebuilt) => tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "rebuilt the listing file"
        ),
        Ok(Updated::CaughtUp(n)) => tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            changes = n,
            "brought the listing file up to date after an unclean stop"
        ),
        Ok(Updated::Appended | Updated::LeftToWriters) => {}
        Err(e) => tracing::warn!(
            "the listing file of `{}` was not updated ({e}); `tx list` will open the store",
            dir.display()
        ),
    }
}

/// What [`update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Updated {
    /// Appended this holder's changes (or compacted them in).
    Appended,
    /// Brought stale files up to date with this many changes (appended or compacted).
    CaughtUp(u64),
    /// Rebuilt the files from every summary.
    Rebuilt,
    /// Nothing (a reader whose files would need a rebuild): no marker.
    LeftToWriters,
}

fn update(
    store: &dyn Store,
    dir: &Path,
    store_id: &str,
    writes: u64,
    base: Option<Base>,
    changes: Changes,
) -> Result<Updated, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let removals = String::from_utf8_lossy(
        &store
            .get(Space::Meta, REMOVED_KEY)
            .map_err(|e| e.to_string())?
            .unwrap_or_default(),
    )
    .into_owned();
    let fresh = |m: Marker| Marker {
        store: store_id.to_string(),
        writes,
        closed_ms: now_ms(),
        removals: Some(removals.clone()),
        ..m
    };
    let (m, pending, caught_up) = match base {
        Some(Base::Exact(m)) if !changes.overflowed => {
            let mut pending = Vec::with_capacity(changes.latest.len());
            for (id, v) in &changes.latest {
                pending.push(match v {
                    Some(v) => Change::Upsert(listed_of(id, v)?),
                    None => Change::Removed(String::from_utf8_lossy(id).into_owned()),
                });
            }
            (m, pending, false)
        }
        Some(Base::Exact(m) | Base::Stale(m)) => {
            match catch_up(store, dir, &m, &removals, &changes)? {
                Some(pending) => (m, pending, true),
                None if changes.leave_rebuild => return Ok(Updated::LeftToWriters),
                None => {
                    let marker =
                        write_snapshot(dir, store_id, writes, read_all(store, dir)?, &removals)?;
                    write_marker(dir, &marker)?;
                    return Ok(Updated::Rebuilt);
                }
            }
        }
        None => {
            let marker = write_snapshot(dir, store_id, writes, read_all(store, dir)?, &removals)?;
            write_marker(dir, &marker)?;
            return Ok(Updated::Rebuilt);
        }
    };
    let n = pending.len() as u64;
    let done = if caught_up {
        Updated::CaughtUp(n)
    } else {
        Updated::Appended
    };
    let mut appended = Vec::new();
    for change in &pending {
        if change.id().len() != ID_LEN {
            return Err(format!("transaction id `{}` is not 36 bytes", change.id()));
        }
        encode_change(change, &mut appended);
    }
    let marker = if n == 0 {
        fresh(m)
    } else if m.changes + n <= (m.count / 8).max(4096) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(DELTA_FILE))
            .map_err(|e| io("delta", e))?;
        // Past the base's length: a torn append of a close that crashed before its marker.
        f.set_len(m.delta_len).map_err(|e| io("delta", e))?;
        f.seek(SeekFrom::Start(m.delta_len))
            .and_then(|_| f.write_all(&appended))
            .and_then(|()| f.sync_data())
            .map_err(|e| io("delta", e))?;
        let delta_len = m.delta_len + appended.len() as u64;
        let changes = m.changes + n;
        Marker {
            delta_len,
            changes,
            ..fresh(m)
        }
    } else {
        // Compaction: the snapshot, its delta and these changes in one snapshot, read a
        // chunk at a time (only the changes are held, by id).
        let mut snapshot =
            Snapshot::open(&dir.join(SNAPSHOT_FILE), m.snapshot_len).map_err(|e| e.to_string())?;
        let mut changed: HashMap<String, Option<Listed>> = HashMap::new();
        for c in read_delta(dir, &m)?.into_iter().chain(pending) {
            match c {
                Change::Upsert(l) => changed.insert(l.id.clone(), Some(l)),
                Change::Removed(id) => changed.insert(id, None),
            };
        }
        let mut b = Builder::spilling(dir);
        let mut at = 0;
        while at < snapshot.count {
            let to = (at + CHUNK as u64 * 8).min(snapshot.count);
            for e in snapshot.read(at, to).map_err(|e| e.to_string())? {
                if !changed.contains_key(std::str::from_utf8(&e.id).unwrap_or_default()) {
                    b.push(&snapshot.listed(&e).map_err(|e| e.to_string())?)?;
                }
            }
            at = to;
        }
        for l in changed.values().flatten() {
            b.push(l)?;
        }
        drop(changed);
        write_snapshot(dir, store_id, writes, b, &removals)?
    };
    write_marker(dir, &marker)?;
    Ok(done)
}

/// Writes the marker (and the base), last.
fn write_marker(dir: &Path, marker: &Marker) -> Result<(), String> {
    let text = serde_json::to_vec(marker).map_err(|e| e.to_string())?;
    // What the marker describes is durable before it is written (the delta's sync above, or
    // the snapshot's, the delta's and the folder's in `write_snapshot`). The marker itself
    // need not be: one lost or left empty by a power cut sends the next `tx list` to sled,
    // never to a wrong answer (the state file, synced before, decides). So it is written
    // and renamed without syncs: a clean close costs one sync here instead of three
    // (BENCHMARKS.md, "Issue 11: small stores' disk").
    // The base too: the same words, for a catch-up if the marker is lost (a power cut: it
    // is not synced) before an open keeps it.
    write_renamed(&dir.join(BASE_FILE), &text, false).map_err(|e| format!("base: {e}"))?;
    write_renamed(&dir.join(MARKER_FILE), &text, false).map_err(|e| format!("marker: {e}"))
}

/// The delta's changes up to the length `m` gives.
fn read_delta(dir: &Path, m: &Marker) -> Result<Vec<Change>, String> {
    let mut delta = Vec::new();
    File::open(dir.join(DELTA_FILE))
        .and_then(|f| f.take(m.delta_len).read_to_end(&mut delta))
        .map_err(|e| format!("delta: {e}"))?;
    let (changes, read) = decode_changes(&delta);
    if read as u64 != m.delta_len || changes.len() as u64 != m.changes {
        return Err("the delta is not what its marker says".into());
    }
    Ok(changes)
}

/// Whether a line can still change: anything but committed and rolled back (which nothing
/// changes any more; only retention removes them).
fn may_change(state: TxnState) -> bool {
    !index::prunable(state)
}

/// After an unclean stop: the changes that bring the files `m` describes (written by an
/// earlier clean close) up to date with the store, read from what can have changed since
/// — the lines that could still change (their summaries read again) and the transactions
/// started since (the index by start time, from the close less [`CLOCK_MARGIN_MS`]) — so it
/// costs what changed, not the store. Transactions removed since (retention changes
/// `removals`, the store's [`REMOVED_KEY`]) are read from the store's removal log
/// ([`logged_removals`]), or, when it cannot vouch for them, known only when this holder
/// saw every removal (`changes`: a prune of its own, or one of the crashed holder's still in
/// the write-ahead log, replayed at the open). `None` when that is not enough to know (a
/// removal neither logged nor seen), the marker predates these fields, or the index is not
/// built; the caller rebuilds then.
fn catch_up(
    store: &dyn Store,
    dir: &Path,
    m: &Marker,
    removals: &str,
    changes: &Changes,
) -> Result<Option<Vec<Change>>, String> {
    if m.closed_ms == 0 {
        return Ok(None);
    }
    if !index::is_built(store).map_err(|e| e.to_string())? {
        return Ok(None);
    }
    let removed = if m.removals.as_deref() == Some(removals) {
        Vec::new()
    } else if let Some(removed) = logged_removals(store, m, removals)? {
        removed
    } else {
        match changes.removed_since(m) {
            Some(removed) => removed,
            None => return Ok(None),
        }
    };
    let mut snapshot =
        Snapshot::open(&dir.join(SNAPSHOT_FILE), m.snapshot_len).map_err(|e| e.to_string())?;
    if snapshot.count != m.count {
        return Err("the snapshot's count is not its marker's".into());
    }
    // The delta's latest line of each transaction it touches.
    let mut delta: HashMap<String, Option<Listed>> = HashMap::new();
    for c in read_delta(dir, m)? {
        match c {
            Change::Upsert(l) => delta.insert(l.id.clone(), Some(l)),
            Change::Removed(id) => delta.insert(id, None),
        };
    }
    // The lines that could still change: read again (a change only for those that did).
    let mut again: Vec<Listed> = delta
        .values()
        .flatten()
        .filter(|l| may_change(l.state))
        .cloned()
        .collect();
    let mut at = 0;
    while at < snapshot.count {
        let to = (at + CHUNK as u64 * 8).min(snapshot.count);
        for e in snapshot.read(at, to).map_err(|e| e.to_string())? {
            if state_of(e.state).is_some_and(may_change)
                && !delta.contains_key(std::str::from_utf8(&e.id).unwrap_or_default())
            {
                again.push(snapshot.listed(&e).map_err(|e| e.to_string())?);
            }
        }
        at = to;
    }
    let mut out = Vec::new();
    let reread = |id: &str, was: Option<&Listed>, out: &mut Vec<Change>| -> Result<(), String> {
        match index::summary(store, id).map_err(|e| e.to_string())? {
            Some(s) => {
                let now = Listed::from(&s);
                if was != Some(&now) {
                    out.push(Change::Upsert(now));
                }
            }
            None => out.push(Change::Removed(id.to_string())),
        }
        Ok(())
    };
    for l in &again {
        reread(&l.id, Some(l), &mut out)?;
    }
    // The transactions started since: those the files do not hold. The index and the
    // snapshot are both in (start, id) order, so the snapshot's tail is read alongside.
    let from = m.closed_ms.min(now_ms()).saturating_sub(CLOCK_MARGIN_MS);
    let mut pos = snapshot
        .lower_bound((from, &[]))
        .map_err(|e| e.to_string())?;
    let mut tail: std::collections::VecDeque<Entry> = std::collections::VecDeque::new();
    let mut after: Option<(u64, String)> = None;
    loop {
        let keys = index::started_since(
            store,
            from,
            after.as_ref().map(|(ms, id)| (*ms, id.as_str())),
            CATCH_UP_PAGE,
        )
        .map_err(|e| e.to_string())?;
        for (ms, id) in &keys {
            // Past the snapshot's entries below this key.
            let held = loop {
                if tail.is_empty() && pos < snapshot.count {
                    let to = (pos + CHUNK as u64).min(snapshot.count);
                    tail.extend(snapshot.read(pos, to).map_err(|e| e.to_string())?);
                    pos = to;
                }
                match tail.front() {
                    Some(e) if (e.started_ms, e.id.as_slice()) < (*ms, id.as_bytes()) => {
                        tail.pop_front();
                    }
                    Some(e) => break (e.started_ms, e.id.as_slice()) == (*ms, id.as_bytes()),
                    None => break false,
                }
            };
            let known = match delta.get(id) {
                Some(line) => line.is_some(),
                None => held,
            };
            // A line held that could change was read above; one that cannot is as it was.
            if !known {
                reread(id, None, &mut out)?;
            }
        }
        match keys.last() {
            Some(last) if keys.len() == CATCH_UP_PAGE => after = Some(last.clone()),
            _ => break,
        }
    }
    // The removals seen: each once (a line read again above may have found it gone).
    if !removed.is_empty() {
        let mut told: std::collections::HashSet<String> = out
            .iter()
            .filter_map(|c| match c {
                Change::Removed(id) => Some(id.clone()),
                Change::Upsert(_) => None,
            })
            .collect();
        for id in removed {
            if delta.get(&id) != Some(&None) && told.insert(id.clone()) {
                out.push(Change::Removed(id));
            }
        }
    }
    Ok(Some(out))
}

/// Every summary of the store, packed for a snapshot (runs beyond [`RUN`] lines in `dir`).
fn read_all(store: &dyn Store, dir: &Path) -> Result<Builder, String> {
    let mut out = Builder::spilling(dir);
    let mut from: Vec<u8> = Vec::new();
    loop {
        let page = store
            .scan_range(Space::Txns, KeyRange::new(&from, None), 1024, false)
            .map_err(|e| e.to_string())?;
        for (k, v) in &page {
            out.push(&listed_of(k, v)?)?;
        }
        match page.last() {
            Some((last, _)) if page.len() == 1024 => {
                from.clone_from(last);
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(out)
}

/// Writes the snapshot of `b` to a temporary file, syncs it and renames it to `path`;
/// returns its length.
fn write_snapshot_file(path: &Path, b: Builder) -> std::io::Result<u64> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    let len = b.finish_into(&mut w)?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(len)
}

/// Writes a new snapshot of the lines in `b` and an empty delta; returns the marker
/// describing them (`removals`: the store's [`REMOVED_KEY`] value).
fn write_snapshot(
    dir: &Path,
    store_id: &str,
    writes: u64,
    b: Builder,
    removals: &str,
) -> Result<Marker, String> {
    // No marker or base may describe the files being replaced: gone, durably, first.
    for f in [MARKER_FILE, BASE_FILE] {
        match std::fs::remove_file(dir.join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{f}: {e}")),
        }
    }
    sync_dir(dir).map_err(|e| format!("store folder: {e}"))?;
    let count = b.count();
    let snapshot_len =
        write_snapshot_file(&dir.join(SNAPSHOT_FILE), b).map_err(|e| format!("snapshot: {e}"))?;
    // Runs a rebuild cut short by a crash left (this one removed its own).
    let _ = std::fs::remove_file(dir.join(RUNS_FILE));
    File::create(dir.join(DELTA_FILE))
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("delta: {e}"))?;
    // The snapshot's rename and the delta's entry, durable before the marker names them.
    sync_dir(dir).map_err(|e| format!("store folder: {e}"))?;
    Ok(Marker {
        store: store_id.to_string(),
        writes,
        snapshot_len,
        delta_len: 0,
        count,
        changes: 0,
        closed_ms: now_ms(),
        removals: Some(removals.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(n: u64, state: TxnState, target: &str, who: &str) -> Listed {
        Listed {
            id: format!("00000000-0000-7000-8000-{n:012}"),
            state,
            started_ms: 1_000 + n / 3,
            updated_ms: 2_000 + n,
            target: target.into(),
            who: who.into(),
        }
    }

    fn arb_line() -> impl Strategy<Value = Listed> {
        (
            0u64..1_000_000,
            0usize..6,
            any::<u64>(),
            any::<u64>(),
            "[a-zA-Z /é]{0,20}",
            "[a-z@.]{0,12}",
        )
            .prop_map(|(n, st, started, updated, target, who)| Listed {
                id: format!("00000000-0000-7000-8000-{n:012}"),
                state: TxnState::ALL[st],
                started_ms: started,
                updated_ms: updated,
                target,
                who,
            })
    }

    fn arb_change() -> impl Strategy<Value = Change> {
        prop_oneof![
            arb_line().prop_map(Change::Upsert),
            "[0-9a-f-]{0,40}".prop_map(Change::Removed),
        ]
    }

    proptest! {
        #[test]
        fn delta_records_read_back_as_written(changes in prop::collection::vec(arb_change(), 0..20)) {
            let mut bytes = Vec::new();
            for c in &changes {
                encode_change(c, &mut bytes);
            }
            let (back, read) = decode_changes(&bytes);
            prop_assert_eq!(back, changes);
            prop_assert_eq!(read, bytes.len());
        }

        #[test]
        fn a_torn_or_garbled_delta_tail_is_never_read_as_a_change(
            changes in prop::collection::vec(arb_change(), 1..10),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut bytes = Vec::new();
            let mut ends = Vec::new();
            for c in &changes {
                encode_change(c, &mut bytes);
                ends.push(bytes.len());
            }
            // Torn: only whole records before the cut come back.
            let cut = cut.index(bytes.len());
            let (back, read) = decode_changes(&bytes[..cut]);
            let whole = ends.iter().filter(|e| **e <= cut).count();
            prop_assert_eq!(&back[..], &changes[..whole]);
            prop_assert_eq!(read, if whole == 0 { 0 } else { ends[whole - 1] });
            // Garbled: a flipped bit ends the reading at the record holding it, and what
            // comes back before it is exactly what was written.
            let at = flip.index(bytes.len());
            let mut garbled = bytes.clone();
            garbled[at] ^= 1 << bit;
            let (back, _) = decode_changes(&garbled);
            let before = ends.iter().filter(|e| **e <= at).count();
            prop_assert_eq!(&back[..], &changes[..before]);
        }

        #[test]
        fn a_snapshot_reads_back_sorted(lines in prop::collection::vec(arb_line(), 0..40)) {
            let mut unique: HashMap<String, Listed> = HashMap::new();
            for l in lines {
                unique.insert(l.id.clone(), l);
            }
            let lines: Vec<Listed> = unique.into_values().collect();
            let bytes = encode_snapshot(lines.clone()).expect("36-byte ids");
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(SNAPSHOT_FILE);
            std::fs::write(&path, &bytes).expect("write");
            let mut snapshot = Snapshot::open(&path, bytes.len() as u64).expect("opens");
            let mut expected = lines;
            expected.sort_by(|a, b| a.key().cmp(&b.key()));
            prop_assert_eq!(snapshot.all().expect("reads"), expected);
        }

        #[test]
        fn a_cut_snapshot_is_refused(lines in prop::collection::vec(arb_line(), 1..20), cut in any::<prop::sample::Index>()) {
            let bytes = encode_snapshot(lines).expect("36-byte ids");
            let cut = cut.index(bytes.len());
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(SNAPSHOT_FILE);
            std::fs::write(&path, &bytes[..cut]).expect("write");
            prop_assert!(Snapshot::open(&path, cut as u64).is_err());
        }
    }

    /// A snapshot made with its entries spilled to sorted runs (and merged back) is the
    /// snapshot made in memory, byte for byte, and the run file is gone after.
    #[test]
    fn a_spilled_snapshot_is_the_one_made_in_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let states = [TxnState::Committed, TxnState::Running, TxnState::RolledBack];
        // Starts out of order and repeated, as summaries come from the store in id order.
        let lines: Vec<Listed> = (0..1000u64)
            .map(|n| Listed {
                started_ms: (n * 7919) % 333,
                ..line(
                    n,
                    states[(n % 3) as usize],
                    ["A/One", "B/Two", "C/Three"][(n % 3) as usize],
                    ["alice", "bob"][(n % 2) as usize],
                )
            })
            .collect();
        for run_len in [1, 7, 64, 999, 1000, 5000] {
            let mut spilled = Builder {
                run_len,
                ..Builder::spilling(dir.path())
            };
            for l in &lines {
                spilled.push(l).expect("pushed");
            }
            let mut got = Vec::new();
            let len = spilled.finish_into(&mut got).expect("written");
            assert_eq!(len, got.len() as u64);
            assert_eq!(
                Some(got),
                encode_snapshot(lines.clone()),
                "runs of {run_len}"
            );
            assert!(!dir.path().join(RUNS_FILE).exists());
        }
    }

    /// A page from the files must be what filtering and sorting every line gives.
    fn expected(all: &[Listed], q: &TxnQuery) -> ListPage {
        let mut v: Vec<Listed> = all.iter().filter(|l| matches(q, l)).cloned().collect();
        v.sort_by(|a, b| b.key().cmp(&a.key()));
        if let Some(after) = &q.after {
            let c = all.iter().find(|l| &l.id == after).expect("cursor");
            v.retain(|l| l.key() < c.key());
        }
        v.truncate(q.limit);
        let next = (v.len() == q.limit)
            .then(|| v.last().map(|l| l.id.clone()))
            .flatten();
        ListPage { items: v, next }
    }

    #[test]
    fn pages_merge_the_snapshot_with_its_delta() {
        let states = [TxnState::Committed, TxnState::RolledBack, TxnState::Running];
        let mut all: Vec<Listed> = (0..3000)
            .map(|n| {
                line(
                    n,
                    states[(n % 3) as usize],
                    if n.is_multiple_of(5) {
                        "A/One"
                    } else {
                        "B/Two"
                    },
                    if n.is_multiple_of(7) { "alice" } else { "bob" },
                )
            })
            .collect();
        let bytes = encode_snapshot(all.clone()).expect("encodes");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SNAPSHOT_FILE);
        std::fs::write(&path, &bytes).expect("write");
        // The delta: one removed, one changed state, two new (one newest, one in between, with
        // a subject the snapshot does not hold).
        let mut changed = all[2999].clone();
        changed.state = TxnState::RolledBack;
        let new_newest = line(5000, TxnState::Running, "A/One", "carol");
        let new_between = Listed {
            started_ms: all[1500].started_ms,
            ..line(4000, TxnState::Committed, "B/Two", "alice")
        };
        let changes = vec![
            Change::Removed(all[2998].id.clone()),
            Change::Upsert(changed.clone()),
            Change::Upsert(new_newest.clone()),
            Change::Upsert(new_between.clone()),
        ];
        all.retain(|l| l.id != all_id(2998) && l.id != changed.id);
        all.extend([changed, new_newest, new_between]);
        let queries = [
            TxnQuery {
                limit: 20,
                ..TxnQuery::default()
            },
            TxnQuery {
                limit: 5000,
                ..TxnQuery::default()
            },
            TxnQuery {
                state: Some(TxnState::RolledBack),
                limit: 7,
                ..TxnQuery::default()
            },
            TxnQuery {
                subject: Some("alice".into()),
                limit: 300,
                ..TxnQuery::default()
            },
            TxnQuery {
                subject: Some("carol".into()),
                limit: 3,
                ..TxnQuery::default()
            },
            TxnQuery {
                procedure: Some("A/One".into()),
                since_ms: Some(1500),
                until_ms: Some(1800),
                limit: 50,
                ..TxnQuery::default()
            },
            TxnQuery {
                after: Some(all_id(1700)),
                limit: 30,
                ..TxnQuery::default()
            },
            TxnQuery {
                after: Some(all_id(4000)),
                state: Some(TxnState::Committed),
                limit: 30,
                ..TxnQuery::default()
            },
        ];
        for q in queries {
            let mut snapshot = Snapshot::open(&path, bytes.len() as u64).expect("opens");
            let got = page(&mut snapshot, changes.clone(), &q).expect("a page");
            assert_eq!(got, expected(&all, &q), "{q:?}");
        }
        let mut snapshot = Snapshot::open(&path, bytes.len() as u64).expect("opens");
        let q = TxnQuery {
            after: Some(all_id(2998)),
            limit: 3,
            ..TxnQuery::default()
        };
        assert!(matches!(
            page(&mut snapshot, changes.clone(), &q),
            Err(ListingError::UnknownCursor(_))
        ));
    }

    fn summary(n: u64, state: TxnState) -> TxnSummary {
        TxnSummary {
            format: super::super::records::FORMAT,
            id: all_id(n).parse().expect("an id"),
            state,
            target: if n.is_multiple_of(3) {
                "A/One"
            } else {
                "B/Two"
            }
            .into(),
            who: if n.is_multiple_of(4) { "alice" } else { "bob" }.into(),
            started_ms: 10_000 + n / 2,
            updated_ms: 20_000 + n,
            resumable: false,
            definitions: "d".into(),
            message: None,
            audit: true,
        }
    }

    async fn put(store: &crate::SledStore, summaries: &[TxnSummary], previous: Option<TxnState>) {
        let mut batch = crate::store::Batch::new();
        for s in summaries {
            batch.put(
                Space::Txns,
                s.id.as_bytes().to_vec(),
                serde_json::to_vec(s).expect("encodes"),
            );
            super::super::index::summary_written(&mut batch, previous, s);
        }
        store.write(batch, true).await.expect("written");
    }

    /// A store in `dir` holding `summaries`, indexed and closed cleanly (the listing built).
    async fn seeded(dir: &Path, summaries: &[TxnSummary]) {
        let store = crate::SledStore::open(dir).expect("opens");
        put(&store, summaries, None).await;
        super::super::index::ensure(&store).await.expect("indexed");
        store.close();
    }

    /// Opens the store in `dir` as a command that only reads (as `tx list` after a crash)
    /// and closes it: a catch-up of the listing, never a rebuild.
    fn close_as_reader(dir: &Path) {
        let reader = crate::SledStore::open(dir).expect("opens");
        reader.leave_listing_rebuild_to_writers();
        reader.close();
    }

    /// Runs the test `name` of this binary again in a child with `child_env` set to `dir`
    /// (the child's half of a crash test), and checks it aborted.
    fn abort_in_child(name: &str, child_env: &str, dir: &Path) {
        let status = std::process::Command::new(std::env::current_exe().expect("this test"))
            .args(["--exact", name, "--nocapture"])
            .env(child_env, dir)
            .status()
            .expect("the child runs");
        assert_eq!(status.code(), None, "the child aborts: {status:?}");
    }

    /// The listing answers every query as the store's own index does, after each kind of
    /// clean close: a first build, a session's changes appended, a compaction.
    async fn same_as_the_index(dir: &Path) {
        let store = crate::SledStore::open(dir).expect("opens");
        assert!(
            matches!(
                list(
                    dir,
                    &TxnQuery {
                        limit: 5,
                        ..TxnQuery::default()
                    }
                ),
                Err(ListingError::Unavailable(_))
            ),
            "the store is held"
        );
        let queries = [
            TxnQuery {
                limit: 20,
                ..TxnQuery::default()
            },
            TxnQuery {
                limit: 100_000,
                ..TxnQuery::default()
            },
            TxnQuery {
                state: Some(TxnState::RolledBack),
                limit: 9,
                ..TxnQuery::default()
            },
            TxnQuery {
                subject: Some("alice".into()),
                procedure: Some("A/One".into()),
                limit: 40,
                ..TxnQuery::default()
            },
            TxnQuery {
                since_ms: Some(10_100),
                until_ms: Some(10_300),
                limit: 1000,
                ..TxnQuery::default()
            },
            TxnQuery {
                after: Some(all_id(301)),
                limit: 25,
                ..TxnQuery::default()
            },
        ];
        let mut wanted = Vec::new();
        for q in &queries {
            let p = super::super::index::list(&store, q).await.expect("lists");
            wanted.push(ListPage {
                items: p.items.iter().map(Listed::from).collect(),
                next: p.next,
            });
        }
        store.close();
        drop(store);
        for (q, w) in queries.iter().zip(wanted) {
            assert_eq!(list(dir, q).expect("the listing answers"), w, "{q:?}");
        }
    }

    #[tokio::test]
    async fn a_cleanly_closed_store_lists_from_its_files_as_from_its_index() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("journal");
        let store = crate::SledStore::open(&dir).expect("opens");
        let first: Vec<TxnSummary> = (0..600).map(|n| summary(n, TxnState::Committed)).collect();
        put(&store, &first, None).await;
        store.close();
        drop(store);
        same_as_the_index(&dir).await;
        let marker = read_marker(&dir).expect("a marker");
        assert_eq!((marker.count, marker.changes), (600, 0));

        // A session's changes: states moved, some removed (as a prune does), some new.
        let store = crate::SledStore::open(&dir).expect("opens");
        let moved: Vec<TxnSummary> = (0..600)
            .step_by(7)
            .map(|n| summary(n, TxnState::RolledBack))
            .collect();
        put(&store, &moved, Some(TxnState::Committed)).await;
        let mut batch = crate::store::Batch::new();
        for n in (1..600).step_by(11) {
            batch.delete(Space::Txns, all_id(n).into_bytes());
            super::super::index::remove(&mut batch, &summary(n, TxnState::Committed));
        }
        store.write(batch, true).await.expect("removed");
        let new: Vec<TxnSummary> = (600..650).map(|n| summary(n, TxnState::Running)).collect();
        put(&store, &new, None).await;
        store.close();
        drop(store);
        same_as_the_index(&dir).await;
        let marker = read_marker(&dir).expect("a marker");
        assert_eq!(marker.count, 600, "appended, not rebuilt");
        assert!(marker.changes > 100, "{marker:?}");

        // Enough changes for a compaction.
        let store = crate::SledStore::open(&dir).expect("opens");
        let many: Vec<TxnSummary> = (650..5000)
            .map(|n| summary(n, TxnState::Committed))
            .collect();
        put(&store, &many, None).await;
        store.close();
        drop(store);
        same_as_the_index(&dir).await;
        let marker = read_marker(&dir).expect("a marker");
        assert_eq!(marker.changes, 0, "compacted: {marker:?}");
    }

    /// A holder that only reads leaves stale listing files alone (no rebuild, no marker:
    /// `tx list` keeps reading sled), keeps good ones good, and the next writer's clean
    /// close rebuilds them.
    #[tokio::test]
    async fn a_reader_leaves_the_rebuild_to_the_next_writer() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("journal");
        let store = crate::SledStore::open(&dir).expect("opens");
        let first: Vec<TxnSummary> = (0..300).map(|n| summary(n, TxnState::Committed)).collect();
        put(&store, &first, None).await;
        store.close();
        drop(store);
        let q = TxnQuery {
            limit: 1000,
            ..TxnQuery::default()
        };
        let all = list(&dir, &q).expect("the listing answers");
        assert_eq!(all.items.len(), 300);

        // A reader of good files: they stay good (the marker follows its close).
        close_as_reader(&dir);
        assert_eq!(list(&dir, &q).expect("still answers"), all);

        // Files nothing describes (no marker, no base: as a store from before the base
        // file, or one whose rebuild was cut short): a reader answers from the index and
        // rebuilds nothing.
        std::fs::remove_file(dir.join(MARKER_FILE)).expect("marker removed");
        std::fs::remove_file(dir.join(BASE_FILE)).expect("base removed");
        let reader = crate::SledStore::open(&dir).expect("opens");
        reader.leave_listing_rebuild_to_writers();
        let p = super::super::index::list(&reader, &q).await.expect("lists");
        let from_index: Vec<Listed> = p.items.iter().map(Listed::from).collect();
        assert_eq!(from_index, all.items);
        reader.close();
        drop(reader);
        assert!(read_marker(&dir).is_none(), "no rebuild by a reader");
        assert!(matches!(list(&dir, &q), Err(ListingError::Unavailable(_))));
        // Twice: still nothing built, still the sled answer.
        close_as_reader(&dir);
        assert!(read_marker(&dir).is_none(), "no rebuild by a reader");

        // The next writer's close rebuilds, with its own change in.
        let writer = crate::SledStore::open(&dir).expect("opens");
        let more: Vec<TxnSummary> = (300..400).map(|n| summary(n, TxnState::Running)).collect();
        put(&writer, &more, None).await;
        writer.close();
        drop(writer);
        let marker = read_marker(&dir).expect("rebuilt by the writer");
        assert_eq!((marker.count, marker.changes), (400, 0));
        same_as_the_index(&dir).await;
    }

    fn all_id(n: u64) -> String {
        line(n, TxnState::Committed, "", "").id
    }

    /// A summary started `ago_ms` before now (transactions made after a close start after it).
    fn recent(n: u64, state: TxnState, ago_ms: u64) -> TxnSummary {
        let now = now_ms();
        TxnSummary {
            started_ms: now - ago_ms,
            updated_ms: now - ago_ms / 2,
            ..summary(n, state)
        }
    }

    async fn remove(store: &crate::SledStore, summaries: &[TxnSummary]) {
        let mut batch = crate::store::Batch::new();
        for s in summaries {
            batch.delete(Space::Txns, s.id.as_bytes().to_vec());
            super::super::index::remove(&mut batch, s);
        }
        store.write(batch, true).await.expect("removed");
    }

    fn state_file(dir: &Path) -> PathBuf {
        let mut p = dir.as_os_str().to_owned();
        p.push(".state");
        PathBuf::from(p)
    }

    /// Runs `session` on the store in `dir` as a holder that crashes: what reaches the store
    /// stays (its clean close writes it to sled, as the next open's replay of the log would),
    /// but the listing files and the state file are put back as they were once it opened
    /// (marker taken, "not clean"): the close's update of the listing never happened.
    async fn crashing<F, Fut>(dir: &Path, session: F)
    where
        F: FnOnce(crate::SledStore) -> Fut,
        Fut: std::future::Future<Output = crate::SledStore>,
    {
        let store = crate::SledStore::open(dir).expect("opens");
        let files = [SNAPSHOT_FILE, DELTA_FILE, MARKER_FILE, BASE_FILE];
        let mut kept: Vec<(PathBuf, Option<Vec<u8>>)> = files
            .iter()
            .map(|f| dir.join(f))
            .chain([state_file(dir)])
            .map(|p| {
                let bytes = std::fs::read(&p).ok();
                (p, bytes)
            })
            .collect();
        assert!(
            kept[2].1.is_none(),
            "the open takes the marker before anything is written"
        );
        let store = session(store).await;
        store.close();
        drop(store);
        for (path, bytes) in kept.drain(..) {
            match bytes {
                Some(b) => std::fs::write(&path, b).expect("put back"),
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        assert!(matches!(
            list(
                dir,
                &TxnQuery {
                    limit: 1,
                    ..TxnQuery::default()
                }
            ),
            Err(ListingError::Unavailable(_))
        ));
    }

    /// After a crash, the next clean close brings the listing files up to date from what
    /// changed since they were written (the base the open kept), not from every summary:
    /// new transactions (finished or not), transactions in flight at the crash, finished
    /// since, and a session's own changes; a removal since sends it to a full rebuild.
    #[tokio::test]
    async fn after_a_crash_the_listing_catches_up_with_what_changed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("journal");
        let store = crate::SledStore::open(&dir).expect("opens");
        let states = [
            TxnState::Committed,
            TxnState::RolledBack,
            TxnState::Running,
            TxnState::RollbackFailed,
            TxnState::Committed,
            TxnState::RollingBack,
            TxnState::Queued,
        ];
        let first: Vec<TxnSummary> = (0..700)
            .map(|n| summary(n, states[n as usize % 7]))
            .collect();
        put(&store, &first, None).await;
        store.close();
        drop(store);
        let marker = read_marker(&dir).expect("a marker");
        assert_eq!((marker.count, marker.changes), (700, 0));
        same_as_the_index(&dir).await;

        // A holder crashes: it finished some of the unfinished ones, made new ones (some
        // finished, some still in flight at the crash) and moved a rollback_failed one on.
        let new: Vec<TxnSummary> = (1000..1100)
            .map(|n| recent(n, states[n as usize % 7], 30_000 - n))
            .collect();
        let in_flight: Vec<TxnSummary> = new
            .iter()
            .filter(|s| s.state == TxnState::Running)
            .cloned()
            .collect();
        crashing(&dir, |store| async move {
            let finished: Vec<TxnSummary> = (2..700)
                .step_by(7)
                .take(40)
                .map(|n| TxnSummary {
                    updated_ms: now_ms(),
                    ..summary(n, TxnState::Committed)
                })
                .collect();
            put(&store, &finished, Some(TxnState::Running)).await;
            let resolved: Vec<TxnSummary> = (3..700)
                .step_by(7)
                .take(5)
                .map(|n| summary(n, TxnState::RolledBack))
                .collect();
            put(&store, &resolved, Some(TxnState::RollbackFailed)).await;
            put(&store, &new, None).await;
            store
        })
        .await;
        assert!(dir.join(BASE_FILE).exists(), "the open kept the base");

        // The next holder (the in-flight ones move on, one more comes) closes: caught up.
        let store = crate::SledStore::open(&dir).expect("opens");
        let recovered: Vec<TxnSummary> = in_flight
            .iter()
            .map(|s| TxnSummary {
                state: TxnState::RolledBack,
                updated_ms: now_ms(),
                ..s.clone()
            })
            .collect();
        put(&store, &recovered, Some(TxnState::Running)).await;
        put(&store, &[recent(1200, TxnState::Running, 0)], None).await;
        store.close();
        drop(store);
        let marker = read_marker(&dir).expect("a marker");
        assert_eq!(marker.count, 700, "caught up, not rebuilt: {marker:?}");
        assert!(marker.changes > 100, "{marker:?}");
        same_as_the_index(&dir).await;

        // Two crashes in a row, the second one's holder writing nothing: still caught up,
        // with one change (the unfinished lines that did not change are not written again).
        let before = read_marker(&dir).expect("a marker").changes;
        crashing(&dir, |store| async move {
            put(&store, &[recent(1300, TxnState::Committed, 10)], None).await;
            store
        })
        .await;
        crashing(&dir, |store| async move { store }).await;
        // A reader closing after a crash catches up too (it costs what changed).
        close_as_reader(&dir);
        let marker = read_marker(&dir).expect("a reader caught up");
        assert_eq!(
            (marker.count, marker.changes),
            (700, before + 1),
            "{marker:?}"
        );
        same_as_the_index(&dir).await;

        // A crashed holder removed transactions (retention), and its removals reached sled
        // (`crashing` closes the store): the store's removal log says which, and even a
        // reader catches up.
        let before = read_marker(&dir).expect("a marker").changes;
        crashing(&dir, |store| async move {
            let gone: Vec<TxnSummary> = (0..700)
                .step_by(7)
                .skip(50)
                .map(|n| summary(n, TxnState::Committed))
                .collect();
            remove(&store, &gone).await;
            store
        })
        .await;
        close_as_reader(&dir);
        let marker = read_marker(&dir).expect("a reader caught up from the removal log");
        assert_eq!(
            (marker.count, marker.changes),
            (700, before + 50),
            "not rebuilt: {marker:?}"
        );
        same_as_the_index(&dir).await;

        // A removal the log cannot vouch for (its entry gone, as a provisio from before the
        // log leaves none): the reader leaves the files alone, the next writer rebuilds them.
        crashing(&dir, |store| async move {
            let gone: Vec<TxnSummary> = (0..700)
                .step_by(7)
                .skip(30)
                .take(10)
                .map(|n| summary(n, TxnState::Committed))
                .collect();
            remove(&store, &gone).await;
            let logged = store
                .scan(Space::Meta, REMOVAL_LOG)
                .expect("the removal log reads");
            assert_eq!(
                logged.len(),
                1,
                "one entry, the earlier ones cleared at the open"
            );
            let mut batch = crate::store::Batch::new();
            for (k, _) in logged {
                batch.delete(Space::Meta, k);
            }
            store.write(batch, true).await.expect("entry removed");
            store
        })
        .await;
        close_as_reader(&dir);
        assert!(read_marker(&dir).is_none(), "no rebuild by a reader");
        let writer = crate::SledStore::open(&dir).expect("opens");
        put(&writer, &[recent(1400, TxnState::Running, 0)], None).await;
        writer.close();
        drop(writer);
        let marker = read_marker(&dir).expect("rebuilt");
        assert_eq!(marker.changes, 0, "rebuilt: {marker:?}");
        assert_eq!(marker.count, 700 + 100 + 1 + 1 + 1 - 50 - 10);

        // That marker lost before any open (a power cut: it is not synced): the base written
        // beside it lets a reader catch up.
        std::fs::remove_file(dir.join(MARKER_FILE)).expect("marker removed");
        close_as_reader(&dir);
        let caught_up = read_marker(&dir).expect("a reader caught up");
        assert_eq!(
            (caught_up.snapshot_len, caught_up.count, caught_up.changes),
            (marker.snapshot_len, marker.count, 0),
            "{caught_up:?}"
        );
        same_as_the_index(&dir).await;
    }

    /// A clean close cut short after it appended to the delta, before its marker and base
    /// were written: the base the open kept still describes the files (the append went past
    /// its length), and the next close catches up from it.
    #[tokio::test]
    async fn a_close_cut_short_after_its_delta_append_is_caught_up() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("journal");
        let first: Vec<TxnSummary> = (0..400)
            .map(|n| {
                summary(
                    n,
                    if n % 5 == 0 {
                        TxnState::Running
                    } else {
                        TxnState::Committed
                    },
                )
            })
            .collect();
        seeded(&dir, &first).await;
        let base = std::fs::read(dir.join(BASE_FILE)).expect("a base beside the marker");
        let delta_before = std::fs::metadata(dir.join(DELTA_FILE))
            .expect("delta")
            .len();

        let store = crate::SledStore::open(&dir).expect("opens");
        let finished: Vec<TxnSummary> = (0..400)
            .step_by(10)
            .map(|n| TxnSummary {
                updated_ms: now_ms(),
                ..summary(n, TxnState::RolledBack)
            })
            .collect();
        put(&store, &finished, Some(TxnState::Running)).await;
        let new: Vec<TxnSummary> = (500..560)
            .map(|n| recent(n, TxnState::Committed, 5_000))
            .collect();
        put(&store, &new, None).await;
        store.close();
        drop(store);
        assert!(
            std::fs::metadata(dir.join(DELTA_FILE))
                .expect("delta")
                .len()
                > delta_before
        );
        // Cut short: the state file says closed cleanly, the delta holds the append, but
        // neither the marker nor the new base were written.
        std::fs::remove_file(dir.join(MARKER_FILE)).expect("marker removed");
        std::fs::write(dir.join(BASE_FILE), &base).expect("the open's base put back");
        assert!(matches!(
            list(
                &dir,
                &TxnQuery {
                    limit: 1,
                    ..TxnQuery::default()
                }
            ),
            Err(ListingError::Unavailable(_))
        ));
        close_as_reader(&dir);
        let marker = read_marker(&dir).expect("caught up");
        assert_eq!(marker.count, 400, "not rebuilt: {marker:?}");
        same_as_the_index(&dir).await;
    }

    /// A prune in the first run after a crash is caught up from, not rebuilt for: one by the
    /// holder that opens after the crash, and one by the crashed holder itself, still in the
    /// write-ahead log when it died (replayed by the next open). Either way no pruned
    /// transaction is listed and every kept one is.
    #[test]
    fn a_prune_after_a_crash_is_caught_up_not_rebuilt() {
        const CHILD: &str = "PROVISIO_TEST_LISTING_PRUNE_CHILD";
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let states = [
            TxnState::Committed,
            TxnState::RolledBack,
            TxnState::Running,
            TxnState::Committed,
        ];
        let first: Vec<TxnSummary> = (0..800)
            .map(|n| summary(n, states[n as usize % 4]))
            .collect();
        let pruned_by = |step: usize, skip: usize| -> Vec<TxnSummary> {
            first
                .iter()
                .skip(skip)
                .step_by(step)
                .filter(|s| !may_change(s.state))
                .cloned()
                .collect()
        };
        // The crashed holder's prune: acknowledged (in the log), then the process dies.
        let by_the_crashed_holder = pruned_by(9, 1);
        if let Ok(dir) = std::env::var(CHILD) {
            rt.block_on(async {
                let store = crate::SledStore::open(Path::new(&dir)).expect("opens");
                remove(&store, &by_the_crashed_holder).await;
                std::process::abort();
            });
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("journal");
        let mut held: std::collections::BTreeMap<u64, TxnSummary> =
            (0..800).map(|n| (n, first[n as usize].clone())).collect();
        let n_of = |s: &TxnSummary| s.id.as_str()[24..].parse::<u64>().expect("n");
        rt.block_on(seeded(&dir, &first));
        assert_eq!(read_marker(&dir).expect("a marker").count, 800);

        // A crash (no removal in it), then a run that prunes and closes cleanly.
        let new: Vec<TxnSummary> = (1000..1050)
            .map(|n| recent(n, states[n as usize % 4], 20_000))
            .collect();
        let by_the_next_run = pruned_by(5, 0);
        rt.block_on(async {
            let new = new.clone();
            crashing(&dir, |store| async move {
                put(&store, &new, None).await;
                store
            })
            .await;
            let store = crate::SledStore::open(&dir).expect("opens");
            remove(&store, &by_the_next_run).await;
            store.close();
        });
        for s in &new {
            held.insert(n_of(s), s.clone());
        }
        for s in &by_the_next_run {
            held.remove(&n_of(s));
        }
        let marker = read_marker(&dir).expect("a marker");
        assert_eq!(marker.count, 800, "caught up, not rebuilt: {marker:?}");
        assert!(marker.changes >= by_the_next_run.len() as u64, "{marker:?}");
        assert_listing_is(&dir, &held, 0);

        // A holder prunes and dies with the removals in the write-ahead log only.
        abort_in_child(
            "txn::listing::tests::a_prune_after_a_crash_is_caught_up_not_rebuilt",
            CHILD,
            &dir,
        );
        assert!(read_marker(&dir).is_none(), "the child took the marker");
        for s in &by_the_crashed_holder {
            held.remove(&n_of(s));
        }
        // The next holder only reads (as `tx list` after a crash): it catches up, where a
        // rebuild would be left to a writer (no marker at all).
        rt.block_on(async { close_as_reader(&dir) });
        let caught_up = read_marker(&dir).expect("caught up by a reader");
        assert_eq!(caught_up.count, 800, "not rebuilt: {caught_up:?}");
        assert!(caught_up.changes > marker.changes, "{caught_up:?}");
        assert_listing_is(&dir, &held, 0);
    }

    /// A prune whose writes reached sled (checkpointed out of the write-ahead log) before
    /// the process died: the store's removal log tells the next clean close which
    /// transactions went, so even a reader catches the listing up instead of leaving it to a
    /// rebuild, and it lists exactly the kept transactions. The log's entries go once the
    /// listing holds them.
    #[test]
    fn a_prune_that_reached_sled_before_a_crash_is_caught_up_not_rebuilt() {
        const CHILD: &str = "PROVISIO_TEST_LISTING_CHECKPOINTED_PRUNE_CHILD";
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let states = [
            TxnState::Committed,
            TxnState::RolledBack,
            TxnState::Running,
            TxnState::RollbackFailed,
        ];
        let first: Vec<TxnSummary> = (0..900)
            .map(|n| summary(n, states[n as usize % 4]))
            .collect();
        let keep = 150;
        if let Ok(dir) = std::env::var(CHILD) {
            rt.block_on(async {
                let store = crate::SledStore::open(Path::new(&dir)).expect("opens");
                let retention = super::super::retention::Retention {
                    max_count: Some(keep),
                    ..Default::default()
                };
                let pruned =
                    super::super::retention::prune(&store, &retention, now_ms(), None, false)
                        .await
                        .expect("pruned");
                assert_eq!(pruned.transactions.len(), 450 - keep);
                // Out of the write-ahead log into sled, durably: the next open replays none
                // of it.
                store.checkpoint_now();
                std::process::abort();
            });
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("journal");
        rt.block_on(seeded(&dir, &first));
        let marker = read_marker(&dir).expect("a marker");
        assert_eq!(marker.count, 900);

        abort_in_child(
            "txn::listing::tests::a_prune_that_reached_sled_before_a_crash_is_caught_up_not_rebuilt",
            CHILD,
            &dir,
        );
        assert!(read_marker(&dir).is_none(), "the child took the marker");
        // What is kept: every unfinished one, and the newest `keep` finished ones (by finish
        // time: `updated_ms` grows with n).
        let mut finished: Vec<&TxnSummary> =
            first.iter().filter(|s| !may_change(s.state)).collect();
        finished.sort_by_key(|s| s.updated_ms);
        let pruned = &finished[..finished.len() - keep];
        let held: std::collections::BTreeMap<u64, TxnSummary> = first
            .iter()
            .enumerate()
            .filter(|(_, s)| !pruned.iter().any(|p| p.id == s.id))
            .map(|(n, s)| (n as u64, s.clone()))
            .collect();
        assert_eq!(held.len(), 900 - 450 + keep);

        // The next holder only reads (`tx list` after a crash): it catches up.
        rt.block_on(async { close_as_reader(&dir) });
        let caught_up = read_marker(&dir).expect("caught up by a reader");
        assert_eq!(caught_up.count, 900, "not rebuilt: {caught_up:?}");
        assert_eq!(
            caught_up.changes,
            pruned.len() as u64,
            "one removal each: {caught_up:?}"
        );
        assert_listing_is(&dir, &held, 0);

        // The log held them until the listing did; the next open clears them.
        rt.block_on(async {
            let store = crate::SledStore::open(&dir).expect("opens");
            assert!(
                store
                    .scan(Space::Meta, REMOVAL_LOG)
                    .expect("reads")
                    .is_empty(),
                "the removal log is cleared once the listing holds its entries"
            );
            store.close();
        });
        assert_listing_is(&dir, &held, 0);
    }

    /// A holder that removes more than a removal log may hold breaks its chain: the next
    /// clean close after a crash rebuilds (correctly) instead of catching up.
    #[tokio::test]
    async fn removals_past_the_logs_bound_send_the_listing_to_a_rebuild() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("journal");
        let first: Vec<TxnSummary> = (0..(MAX_LOGGED as u64 + 600))
            .map(|n| summary(n, TxnState::Committed))
            .collect();
        seeded(&dir, &first).await;
        let gone: Vec<TxnSummary> = first[..MAX_LOGGED + 1].to_vec();
        crashing(&dir, |store| {
            let gone = gone.clone();
            async move {
                // Within the bound, then past it.
                remove(&store, &gone[..10]).await;
                remove(&store, &gone[10..]).await;
                store
            }
        })
        .await;
        close_as_reader(&dir);
        assert!(
            read_marker(&dir).is_none(),
            "no catch-up, no rebuild by a reader"
        );
        let writer = crate::SledStore::open(&dir).expect("opens");
        writer.close();
        drop(writer);
        let marker = read_marker(&dir).expect("rebuilt");
        assert_eq!(
            (marker.count, marker.changes),
            (599, 0),
            "rebuilt: {marker:?}"
        );
    }

    /// The removal log read back from a base: every id removed by the writes past it, in
    /// order, entries of many parts included; nothing when an entry, a part or the last mark
    /// is missing, or a removal was not logged.
    #[tokio::test]
    async fn the_removal_log_reads_back_only_an_unbroken_chain() {
        use crate::store::{Batch, MemStore};
        let store = MemStore::new();
        let id = |n: usize| all_id(n as u64).into_bytes();
        let mut changes = Changes::default();
        let mut mark = String::new();
        let mut marks = vec![mark.clone()];
        // Writes 1..=6, removing 1, 0 (a mark change only), 100 (several parts), 3, 1, 2
        // transactions.
        let sizes = [1usize, 0, 100, 3, 1, 2];
        let mut next = 0;
        let mut removed_by = Vec::new();
        for (w, n) in sizes.iter().enumerate() {
            let seq = w as u64 + 1;
            let mut b = Batch::new();
            let ids: Vec<Vec<u8>> = (next..next + n).map(id).collect();
            next += n;
            for i in &ids {
                b.delete(Space::Txns, i.clone());
            }
            b.put(Space::Meta, REMOVED_KEY.to_vec(), b"caller's".to_vec());
            assert!(removes(&b));
            log_removals(&mut b, seq, Some(mark.as_bytes()), &mut changes);
            store.write(b, false).await.expect("written");
            mark =
                String::from_utf8(store.get(Space::Meta, REMOVED_KEY).unwrap().unwrap()).unwrap();
            assert_eq!(mark, logged_mark(seq), "the store's mark names the write");
            marks.push(mark.clone());
            removed_by.push(ids);
        }
        let parts = store.scan(Space::Meta, REMOVAL_LOG).unwrap().len();
        assert!(parts > 7, "the large entry is cut in parts: {parts}");
        let marker = |writes: u64| Marker {
            store: "s".into(),
            writes,
            snapshot_len: 0,
            delta_len: 0,
            count: 0,
            changes: 0,
            closed_ms: 1,
            removals: Some(marks[writes as usize].clone()),
        };
        let as_ids = |from: usize| -> Vec<String> {
            removed_by[from..]
                .iter()
                .flatten()
                .map(|i| String::from_utf8(i.clone()).unwrap())
                .collect()
        };
        for base in 0..=6u64 {
            assert_eq!(
                logged_removals(&store, &marker(base), &mark).unwrap(),
                Some(as_ids(base as usize)),
                "from write {base}"
            );
        }
        // A base whose mark is not the store's then: no answer.
        let mut stray = marker(2);
        stray.removals = Some("some other".into());
        assert_eq!(logged_removals(&store, &stray, &mark).unwrap(), None);
        // The store's mark moved on without an entry (a removal not logged).
        assert_eq!(
            logged_removals(&store, &marker(2), "unlogged-0000000000000007").unwrap(),
            None
        );
        // Write 3's entry is cut in 3 parts (100 ids of 40 bytes). Its last part gone: from
        // before it, no answer; from after it, still. Then a middle part gone: the same.
        assert!(store.get(Space::Meta, &log_key(3, 2)).unwrap().is_some());
        assert!(store.get(Space::Meta, &log_key(3, 3)).unwrap().is_none());
        for part in [2, 1] {
            let mut b = Batch::new();
            b.delete(Space::Meta, log_key(3, part));
            store.write(b, false).await.unwrap();
            assert_eq!(
                logged_removals(&store, &marker(2), &mark).unwrap(),
                None,
                "part {part} gone"
            );
            assert_eq!(
                logged_removals(&store, &marker(3), &mark).unwrap(),
                Some(as_ids(3))
            );
        }
        // Write 5's entry gone (cleared, as an open does up to its base): the same.
        let mut b = Batch::new();
        b.delete(Space::Meta, log_key(5, 0));
        store.write(b, false).await.unwrap();
        assert_eq!(logged_removals(&store, &marker(4), &mark).unwrap(), None);
        assert_eq!(
            logged_removals(&store, &marker(5), &mark).unwrap(),
            Some(as_ids(5))
        );
        // Past the bound a holder logs no entry and sets a mark none names.
        let mut full = Changes {
            logged: MAX_LOGGED,
            ..Changes::default()
        };
        let mut b = Batch::new();
        b.delete(Space::Txns, id(9_999));
        log_removals(&mut b, 7, Some(mark.as_bytes()), &mut full);
        store.write(b, false).await.unwrap();
        let now = String::from_utf8(store.get(Space::Meta, REMOVED_KEY).unwrap().unwrap()).unwrap();
        assert_eq!(logged_removals(&store, &marker(6), &now).unwrap(), None);
        assert!(store.get(Space::Meta, &log_key(7, 0)).unwrap().is_none());
    }

    /// A tiny deterministic generator (the test needs no crate for it).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Sessions that crash or close cleanly at random, each making new transactions, moving
    /// unfinished ones on and (now and then) pruning finished ones: after each clean close
    /// the listing answers every query as the index does.
    #[tokio::test]
    async fn random_sessions_and_crashes_keep_the_listing_equal_to_the_index() {
        for seed in [7u64, 1234, 99_991, 5, 31_337] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path().join("journal");
            let mut rng = Rng(seed);
            // What the store holds: id number → summary.
            let mut held: std::collections::BTreeMap<u64, TxnSummary> = Default::default();
            let mut next = 0u64;
            for _round in 0..16 {
                let crash = rng.below(2) == 0;
                let mut new = Vec::new();
                for _ in 0..rng.below(60) + 1 {
                    let st = TxnState::ALL[rng.below(TxnState::ALL.len() as u64) as usize];
                    // Some start a little before now (within the catch-up's margin).
                    new.push(recent(next, st, rng.below(600_000)));
                    next += 1;
                }
                let mut moved = Vec::new();
                for s in held.values() {
                    if may_change(s.state) && rng.below(3) == 0 {
                        let st = TxnState::ALL[rng.below(TxnState::ALL.len() as u64) as usize];
                        moved.push((
                            s.state,
                            TxnSummary {
                                state: st,
                                updated_ms: now_ms(),
                                ..s.clone()
                            },
                        ));
                    }
                }
                let pruned: Vec<TxnSummary> = if rng.below(6) == 0 {
                    held.values()
                        .filter(|s| !may_change(s.state) && rng.below(5) == 0)
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                };
                let session = |store: crate::SledStore| {
                    let (new, moved, pruned) = (new.clone(), moved.clone(), pruned.clone());
                    async move {
                        // As every command that reads the index does (a catch-up needs it).
                        super::super::index::ensure(&store).await.expect("indexed");
                        if !new.is_empty() {
                            put(&store, &new, None).await;
                        }
                        for (before, s) in &moved {
                            put(&store, std::slice::from_ref(s), Some(*before)).await;
                        }
                        if !pruned.is_empty() {
                            remove(&store, &pruned).await;
                        }
                        store
                    }
                };
                if crash {
                    crashing(&dir, session).await;
                } else {
                    let store = session(crate::SledStore::open(&dir).expect("opens")).await;
                    store.close();
                    drop(store);
                }
                for s in new.into_iter().chain(moved.into_iter().map(|(_, s)| s)) {
                    held.insert(s.id.as_str()[24..].parse::<u64>().expect("n"), s);
                }
                for s in &pruned {
                    held.remove(&s.id.as_str()[24..].parse::<u64>().expect("n"));
                }
                if !crash {
                    assert_listing_is(&dir, &held, seed);
                }
            }
            // A last clean close after whatever came last.
            crate::SledStore::open(&dir).expect("opens").close();
            assert_listing_is(&dir, &held, seed);
        }
    }

    /// The listing in `dir` answers as the transactions `held` say, for several queries.
    fn assert_listing_is(
        dir: &Path,
        held: &std::collections::BTreeMap<u64, TxnSummary>,
        seed: u64,
    ) {
        let all: Vec<Listed> = held.values().map(Listed::from).collect();
        let cursor = all.get(all.len() / 2).map(|l| l.id.clone());
        let mut queries = vec![
            TxnQuery {
                limit: 10_000,
                ..TxnQuery::default()
            },
            TxnQuery {
                limit: 7,
                ..TxnQuery::default()
            },
            TxnQuery {
                state: Some(TxnState::Running),
                limit: 10_000,
                ..TxnQuery::default()
            },
            TxnQuery {
                subject: Some("alice".into()),
                procedure: Some("B/Two".into()),
                limit: 10_000,
                ..TxnQuery::default()
            },
            TxnQuery {
                since_ms: Some(now_ms() - 300_000),
                limit: 10_000,
                ..TxnQuery::default()
            },
        ];
        if let Some(c) = cursor {
            queries.push(TxnQuery {
                after: Some(c),
                limit: 15,
                ..TxnQuery::default()
            });
        }
        for q in &queries {
            let got = list(dir, q).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(got, expected(&all, q), "seed {seed}: {q:?}");
        }
    }
}
