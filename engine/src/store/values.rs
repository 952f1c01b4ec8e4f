//! The sled store's value log: values of [`THRESHOLD`] bytes or more (a finished
//! transaction's record chunks, the request's data chunks, pinned definitions, large job
//! bodies) are kept out of sled, in append-only segment files under `values/` in the store
//! folder, and sled holds a 24-byte pointer to each.
//!
//! Why: sled 0.34 rewrites a whole leaf (up to 16 entries) every few updates, keeps each
//! value larger than a page as a blob file of its own, and cleans a segment only once it is
//! half dead, so its files hold 2.2–2.9x what it keeps, and reading a transaction's chunks
//! (`tx show`, recovery) fills its page cache with them. A segment file holds each value
//! once and is read with `pread`, through the kernel's page cache rather than the process's
//! memory.
//!
//! Entry layout in a segment (little-endian): `key_len: u32`, `value_len: u32`, `crc32: u32`
//! (over the key, then the value), the key (sled's full key), the value. A pointer is
//! [`MAGIC`], then `segment: u32`, `offset: u64` (of the value), `len: u32`, `crc32: u32`.
//! A value that itself begins with [`MAGIC`] is always put in the log, whatever its size,
//! so every value in sled that begins with it is a pointer.
//!
//! Durability: values are appended (buffered) while a checkpoint moves writes into sled,
//! and [`ValueLog::commit`] makes them durable (`fdatasync`) before the checkpoint writes
//! sled's write counter; so whenever the counter says a write is in sled, its values are on
//! disk. A crash before that leaves pointers to unsynced bytes only for writes the
//! write-ahead log replays, which overwrites them. Each segment's live bytes and durable end
//! are kept in sled's [`Space::Meta`](super::Space) as hints (`vlog/` + segment).
//!
//! Space: a put over a pointer, or a delete of one (`tx prune`), makes its bytes dead. A
//! segment at least half dead is collected on the checkpoint thread: its live entries (those
//! sled still points to) are copied to the segment being written, made durable, the
//! pointers swapped (compare-and-swap), sled made durable, and only then is the file
//! removed. A reader that finds the file gone reads the key's pointer again.

use super::StoreError;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Values at least this long go to the log.
pub(crate) const THRESHOLD: usize = 2048;

/// Journal values (a finished transaction's records, compacted) at least this long go to
/// the log: a small transaction's records are a few hundred bytes, and sled held them at
/// 3x their size (`tx prune` then leaves sled's file as large as it was).
pub(crate) const JOURNAL_THRESHOLD: usize = 256;

/// The first bytes of a pointer (and of no value sled holds directly).
pub(crate) const MAGIC: [u8; 4] = [0xff, b'P', b'v', 0x01];

/// A pointer's length.
pub(crate) const POINTER_LEN: usize = 4 + 4 + 8 + 4 + 4;

/// An entry's header length.
const HEADER: usize = 4 + 4 + 4;

/// A segment is closed for appends once it holds this much; the next append starts another.
pub(crate) const SEGMENT_BYTES: u64 = 32 * 1024 * 1024;

/// Appends are written to the file once this much is buffered (and at every commit).
const WRITE_BUFFER: usize = 1024 * 1024;

/// The segment being written is closed and collected once it holds this much dead data
/// (and is at least half dead): a small store that prunes most of what it holds gets its
/// space back without waiting to fill a segment.
const OPEN_SEGMENT_DEAD: u64 = 4 * 1024 * 1024;

/// The folder of the segments inside the store folder.
pub(crate) const FOLDER: &str = "values";

/// The hints' key prefix in sled (the Meta space's tag, then `vlog/`).
const HINT_PREFIX: &[u8] = b"mvlog/";

/// Whether `value` of sled's full key `key` goes to the log rather than into sled.
pub(crate) fn wanted(key: &[u8], value: &[u8]) -> bool {
    let threshold = if key.first() == Some(&super::Space::Journal.tag()) {
        JOURNAL_THRESHOLD
    } else {
        THRESHOLD
    };
    value.len() >= threshold || value.starts_with(&MAGIC)
}

/// Whether a value read from sled is a pointer.
pub(crate) fn is_pointer(value: &[u8]) -> bool {
    value.len() == POINTER_LEN && value.starts_with(&MAGIC)
}

/// A decoded pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pointer {
    segment: u32,
    offset: u64,
    len: u32,
    crc: u32,
}

impl Pointer {
    fn encode(&self) -> [u8; POINTER_LEN] {
        let mut p = [0u8; POINTER_LEN];
        p[..4].copy_from_slice(&MAGIC);
        p[4..8].copy_from_slice(&self.segment.to_le_bytes());
        p[8..16].copy_from_slice(&self.offset.to_le_bytes());
        p[16..20].copy_from_slice(&self.len.to_le_bytes());
        p[20..24].copy_from_slice(&self.crc.to_le_bytes());
        p
    }

    fn decode(p: &[u8]) -> Option<Pointer> {
        if !is_pointer(p) {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(p[i..i + 4].try_into().unwrap_or_default());
        Some(Pointer {
            segment: u32_at(4),
            offset: u64::from_le_bytes(p[8..16].try_into().unwrap_or_default()),
            len: u32_at(16),
            crc: u32_at(20),
        })
    }
}

/// What the store knows of one segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Segment {
    /// Bytes of values sled points to (a hint: it may drift after a crash; collection
    /// checks every entry against sled).
    live: u64,
    /// Where its durable entries end.
    end: u64,
}

fn hint_key(segment: u32) -> Vec<u8> {
    let mut k = HINT_PREFIX.to_vec();
    k.extend_from_slice(&segment.to_be_bytes());
    k
}

fn file_name(segment: u32) -> String {
    format!("{segment:08x}.seg")
}

/// The segment being appended to.
struct Writer {
    segment: u32,
    file: File,
    /// Entries not yet written to the file.
    buf: Vec<u8>,
    /// Where the buffer goes in the file.
    written: u64,
    /// Bytes written to the file since its last `fdatasync`.
    unsynced: bool,
}

impl Writer {
    fn end(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    fn write_out(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, self.written)?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
            self.unsynced = true;
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.write_out()?;
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }
}

struct Inner {
    writer: Option<Writer>,
    segments: BTreeMap<u32, Segment>,
    /// Segments whose hint changed since the last [`ValueLog::commit`]; `None` hint: removed.
    touched: std::collections::BTreeSet<u32>,
    next_segment: u32,
    /// A segment file was created since the folder was last synced.
    folder_unsynced: bool,
}

/// The value log of one store (shared by its readers and its checkpoint thread).
pub(crate) struct ValueLog {
    dir: PathBuf,
    store: PathBuf,
    readers: RwLock<HashMap<u32, Arc<File>>>,
    inner: Mutex<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} `{}`: {e}", path.display()))
}

impl ValueLog {
    /// Opens the log of the store in `store` (creating its folder), given sled's tree for
    /// the hints. The last segment is appended to from its durable end.
    pub(crate) fn open(store: &Path, tree: &sled::Tree) -> Result<ValueLog, StoreError> {
        let dir = store.join(FOLDER);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| io("cannot create the value log folder", &dir, e))?;
            super::sled_store::sync_dir(store)?;
        }
        let mut segments = BTreeMap::new();
        for item in tree.scan_prefix(HINT_PREFIX) {
            let (k, v) = item.map_err(|e| StoreError::Io(format!("reading sled: {e}")))?;
            let (Ok(id), Ok(v)) = (
                <[u8; 4]>::try_from(&k[HINT_PREFIX.len()..]),
                <[u8; 16]>::try_from(v.as_ref()),
            ) else {
                continue;
            };
            segments.insert(
                u32::from_be_bytes(id),
                Segment {
                    live: u64::from_le_bytes(v[..8].try_into().unwrap_or_default()),
                    end: u64::from_le_bytes(v[8..].try_into().unwrap_or_default()),
                },
            );
        }
        let mut readers = HashMap::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| io("cannot list", &dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .filter(|n| n.len() == 8)
                .and_then(|n| u32::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            let path = entry.path();
            let file = File::open(&path).map_err(|e| io("cannot open", &path, e))?;
            readers.insert(id, Arc::new(file));
            // A file no hint describes was created by a checkpoint that did not finish:
            // nothing durable points into it, and it is collected as empty.
            segments.entry(id).or_default();
        }
        for (id, seg) in &segments {
            if seg.live > 0 && !readers.contains_key(id) {
                tracing::warn!(
                    segment = %file_name(*id),
                    live = seg.live,
                    "a value log segment the store points into is missing: reads of its values will report the store damaged"
                );
            }
        }
        let next_segment = segments.keys().next_back().map_or(1, |id| id + 1);
        // Appends go on at the end of the last segment, over whatever a crash left after
        // its durable end.
        let writer = match segments.iter().next_back() {
            Some((&id, seg)) if seg.end < SEGMENT_BYTES && readers.contains_key(&id) => {
                let path = dir.join(file_name(id));
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io("cannot open", &path, e))?;
                file.set_len(seg.end)
                    .map_err(|e| io("cannot truncate", &path, e))?;
                Some(Writer {
                    segment: id,
                    file,
                    buf: Vec::new(),
                    written: seg.end,
                    unsynced: false,
                })
            }
            _ => None,
        };
        Ok(ValueLog {
            dir,
            store: store.to_path_buf(),
            readers: RwLock::new(readers),
            inner: Mutex::new(Inner {
                writer,
                segments,
                touched: Default::default(),
                next_segment,
                folder_unsynced: false,
            }),
        })
    }

    fn damaged(&self, message: String) -> StoreError {
        StoreError::Corrupt {
            path: self.store.display().to_string(),
            message,
        }
    }

    /// Starts a new segment for appends (syncing the one it replaces).
    fn roll(&self, inner: &mut Inner) -> Result<(), StoreError> {
        if let Some(mut old) = inner.writer.take() {
            let path = self.dir.join(file_name(old.segment));
            old.sync().map_err(|e| io("cannot write", &path, e))?;
            inner.segments.entry(old.segment).or_default().end = old.written;
            inner.touched.insert(old.segment);
        }
        let id = inner.next_segment;
        inner.next_segment += 1;
        let path = self.dir.join(file_name(id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io("cannot create", &path, e))?;
        let reader = file.try_clone().map_err(|e| io("cannot open", &path, e))?;
        self.readers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::new(reader));
        inner.segments.insert(id, Segment::default());
        inner.touched.insert(id);
        inner.folder_unsynced = true;
        inner.writer = Some(Writer {
            segment: id,
            file,
            buf: Vec::new(),
            written: 0,
            unsynced: false,
        });
        Ok(())
    }

    /// Appends `value` under sled's full key `key`; returns the pointer to put in sled.
    /// Durable only after [`ValueLog::commit`].
    pub(crate) fn append(&self, key: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut inner = lock(&self.inner);
        self.append_locked(&mut inner, key, value)
    }

    fn append_locked(
        &self,
        inner: &mut Inner,
        key: &[u8],
        value: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let (Ok(key_len), Ok(len)) = (u32::try_from(key.len()), u32::try_from(value.len())) else {
            return Err(StoreError::Io(format!(
                "a value of {} bytes is too large for the journal store",
                value.len()
            )));
        };
        if inner
            .writer
            .as_ref()
            .is_none_or(|w| w.end() >= SEGMENT_BYTES)
        {
            self.roll(inner)?;
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(key);
        crc.update(value);
        let crc = crc.finalize();
        let Some(writer) = inner.writer.as_mut() else {
            return Err(StoreError::Io("the value log has no segment open".into()));
        };
        let offset = writer.end() + (HEADER + key.len()) as u64;
        writer.buf.extend_from_slice(&key_len.to_le_bytes());
        writer.buf.extend_from_slice(&len.to_le_bytes());
        writer.buf.extend_from_slice(&crc.to_le_bytes());
        writer.buf.extend_from_slice(key);
        writer.buf.extend_from_slice(value);
        let segment = writer.segment;
        let end = writer.end();
        if writer.buf.len() >= WRITE_BUFFER {
            let path = self.dir.join(file_name(segment));
            writer
                .write_out()
                .map_err(|e| io("cannot write", &path, e))?;
        }
        let seg = inner.segments.entry(segment).or_default();
        seg.live += u64::from(len);
        seg.end = end;
        inner.touched.insert(segment);
        // The entry's crc covers the key too; the pointer's is over the value alone, so a
        // read checks just what it reads.
        Ok(Pointer {
            segment,
            offset,
            len,
            crc: crc32fast::hash(value),
        }
        .encode()
        .to_vec())
    }

    /// The value `old` that sled held for a key was overwritten or deleted: if it was a
    /// pointer, its bytes are dead.
    pub(crate) fn released(&self, old: &[u8]) {
        Self::released_locked(&mut lock(&self.inner), old);
    }

    fn released_locked(inner: &mut Inner, old: &[u8]) {
        let Some(p) = Pointer::decode(old) else {
            return;
        };
        if let Some(seg) = inner.segments.get_mut(&p.segment) {
            seg.live = seg.live.saturating_sub(u64::from(p.len));
            inner.touched.insert(p.segment);
        }
    }

    /// Makes every value appended so far durable (the segment files, then the folder if a
    /// segment was created), then writes the changed hints into sled (not flushed: the
    /// checkpoint's flush makes them durable). Called before the checkpoint writes sled's
    /// write counter.
    pub(crate) fn commit(&self, tree: &sled::Tree) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        self.sync_locked(&mut inner)?;
        self.write_hints(&mut inner, tree)
    }

    fn sync_locked(&self, inner: &mut Inner) -> Result<(), StoreError> {
        if let Some(w) = inner.writer.as_mut() {
            let path = self.dir.join(file_name(w.segment));
            w.sync().map_err(|e| io("fdatasync of", &path, e))?;
        }
        if inner.folder_unsynced {
            super::sled_store::sync_dir(&self.dir)?;
            inner.folder_unsynced = false;
        }
        Ok(())
    }

    fn write_hints(&self, inner: &mut Inner, tree: &sled::Tree) -> Result<(), StoreError> {
        let touched = std::mem::take(&mut inner.touched);
        for id in touched {
            let written = match inner.segments.get(&id) {
                Some(seg) => {
                    let mut v = [0u8; 16];
                    v[..8].copy_from_slice(&seg.live.to_le_bytes());
                    v[8..].copy_from_slice(&seg.end.to_le_bytes());
                    tree.insert(hint_key(id), &v[..]).map(drop)
                }
                None => tree.remove(hint_key(id)).map(drop),
            };
            written.map_err(|e| StoreError::Io(format!("writing the value log's hints: {e}")))?;
        }
        Ok(())
    }

    /// Reads the value `pointer` points to; `Ok(None)` if its segment is gone (collected
    /// since the pointer was read: read the key again).
    pub(crate) fn read(&self, pointer: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(p) = Pointer::decode(pointer) else {
            return Err(self.damaged("a value log pointer is malformed".into()));
        };
        let file = self
            .readers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&p.segment)
            .cloned();
        let Some(file) = file else {
            return Ok(None);
        };
        let mut value = vec![0u8; p.len as usize];
        file.read_exact_at(&mut value, p.offset).map_err(|e| {
            self.damaged(format!(
                "value log segment {} cannot be read at {}: {e}",
                file_name(p.segment),
                p.offset
            ))
        })?;
        if crc32fast::hash(&value) != p.crc {
            return Err(self.damaged(format!(
                "value log segment {} holds a damaged value at {}",
                file_name(p.segment),
                p.offset
            )));
        }
        Ok(Some(value))
    }

    /// The segments worth collecting now, oldest first: at least half dead, and either
    /// closed for appends or holding [`OPEN_SEGMENT_DEAD`] dead bytes.
    fn collectable(inner: &Inner) -> Vec<u32> {
        let open = inner.writer.as_ref().map(|w| w.segment);
        inner
            .segments
            .iter()
            .filter(|(id, seg)| {
                let dead = seg.end.saturating_sub(seg.live);
                seg.live.saturating_mul(2) <= seg.end
                    && (Some(**id) != open || dead >= OPEN_SEGMENT_DEAD)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Bytes of the segments (their durable ends, and what is buffered).
    pub(crate) fn bytes(&self) -> u64 {
        lock(&self.inner).segments.values().map(|s| s.end).sum()
    }

    /// Whether a collection would find something to do.
    pub(crate) fn has_garbage(&self) -> bool {
        !Self::collectable(&lock(&self.inner)).is_empty()
    }

    /// Collects segments at least half dead, reading at most `budget` bytes of them: copies
    /// the entries sled still points to into the segment being written, makes them durable,
    /// swaps sled's pointers and writes the hints. Returns the segments to remove once sled
    /// is durable ([`ValueLog::remove`]); until then the old copies stay where they are.
    pub(crate) fn collect(&self, tree: &sled::Tree, budget: u64) -> Result<Vec<u32>, StoreError> {
        let mut inner = lock(&self.inner);
        let candidates = Self::collectable(&inner);
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        // Copies go to a segment that is not collected now: one collected with the copies
        // in it would lose them.
        if inner
            .writer
            .as_ref()
            .is_some_and(|w| candidates.contains(&w.segment))
        {
            self.roll(&mut inner)?;
        }
        let mut done = Vec::new();
        let mut moved: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = Vec::new();
        let mut read = 0u64;
        for id in candidates {
            if read >= budget {
                break;
            }
            let end = inner.segments.get(&id).map_or(0, |s| s.end);
            read += end;
            self.copy_live(&mut inner, tree, id, end, &mut moved)?;
            done.push(id);
        }
        self.sync_locked(&mut inner)?;
        // The hints of the segments the copies went to (their new ends) are written before
        // any pointer is swapped: sled recovers a prefix of its writes, so a swapped pointer
        // that survives a crash proves its segment's end did, and the next open does not
        // cut the copies off as a crash's leftovers.
        self.write_hints(&mut inner, tree)?;
        for (key, old, new) in moved {
            let swapped = tree
                .compare_and_swap(&key, Some(old), Some(new.clone()))
                .map_err(|e| StoreError::Io(format!("sled: {e}")))?;
            if swapped.is_err() {
                // Changed meanwhile: the copy is dead already.
                Self::released_locked(&mut inner, &new);
            }
        }
        for id in &done {
            inner.segments.remove(id);
            inner.touched.insert(*id);
        }
        self.write_hints(&mut inner, tree)?;
        Ok(done)
    }

    /// Reads segment `id` up to `end` and appends the entries sled still points to.
    fn copy_live(
        &self,
        inner: &mut Inner,
        tree: &sled::Tree,
        id: u32,
        end: u64,
        moved: &mut Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let path = self.dir.join(file_name(id));
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("cannot open", &path, e)),
        };
        let mut reader = BufReader::with_capacity(1024 * 1024, file).take(end);
        let mut at = 0u64;
        let mut header = [0u8; HEADER];
        loop {
            if reader.read_exact(&mut header).is_err() {
                break;
            }
            let key_len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default()) as u64;
            let len = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default());
            let crc = u32::from_le_bytes(header[8..].try_into().unwrap_or_default());
            let body = key_len + u64::from(len);
            if at + HEADER as u64 + body > end {
                // A torn entry: nothing after it was ever made durable.
                break;
            }
            let mut entry = vec![0u8; body as usize];
            if reader.read_exact(&mut entry).is_err() || crc32fast::hash(&entry) != crc {
                break;
            }
            let (key, value) = entry.split_at(key_len as usize);
            let offset = at + HEADER as u64 + key_len;
            at += HEADER as u64 + body;
            let old = Pointer {
                segment: id,
                offset,
                len,
                crc: crc32fast::hash(value),
            }
            .encode();
            let current = tree
                .get(key)
                .map_err(|e| StoreError::Io(format!("sled: {e}")))?;
            if current.as_deref() == Some(&old[..]) {
                let new = self.append_locked(inner, key, value)?;
                moved.push((key.to_vec(), old.to_vec(), new));
            }
        }
        Ok(())
    }

    /// Removes collected segments (after sled, which no longer points into them, is
    /// durable). A reader holding one of their files reads on; one that looks for it after
    /// this reads its key's pointer again.
    pub(crate) fn remove(&self, segments: &[u32]) -> Result<(), StoreError> {
        if segments.is_empty() {
            return Ok(());
        }
        let mut readers = self.readers.write().unwrap_or_else(|e| e.into_inner());
        for id in segments {
            readers.remove(id);
            let path = self.dir.join(file_name(*id));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("cannot remove", &path, e)),
            }
        }
        drop(readers);
        super::sled_store::sync_dir(&self.dir)
    }

    /// Bytes of segment files (tests).
    #[cfg(test)]
    pub(crate) fn file_bytes(&self) -> u64 {
        folder_bytes(&self.dir)
    }
}

/// Bytes of the files in `dir` (tests).
#[cfg(test)]
pub(crate) fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, sled::Db, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .open()
            .unwrap();
        let tree = db.open_tree("t").unwrap();
        (dir, db, tree)
    }

    #[test]
    fn pointers_round_trip_and_are_recognised() {
        let p = Pointer {
            segment: 7,
            offset: 1 << 40,
            len: 9000,
            crc: 0xdead_beef,
        };
        let bytes = p.encode();
        assert!(is_pointer(&bytes));
        assert_eq!(Pointer::decode(&bytes), Some(p));
        assert!(!is_pointer(b"{\"a\":1}"));
        assert!(wanted(b"s", &[0u8; THRESHOLD]));
        assert!(!wanted(b"s", &[0u8; THRESHOLD - 1]));
        assert!(wanted(b"j", &[0u8; JOURNAL_THRESHOLD]));
        assert!(!wanted(b"j", &[0u8; JOURNAL_THRESHOLD - 1]));
        // A short value that happens to begin like a pointer goes to the log too, so sled
        // never holds one that could be mistaken for a pointer.
        assert!(wanted(b"s", &MAGIC));
    }

    #[test]
    fn values_read_back_after_commit_and_reopen() {
        let (dir, _db, tree) = tree();
        let log = ValueLog::open(dir.path(), &tree).unwrap();
        let big = vec![7u8; 5000];
        let p = log.append(b"jkey", &big).unwrap();
        tree.insert(b"jkey", p.clone()).unwrap();
        log.commit(&tree).unwrap();
        assert_eq!(log.read(&p).unwrap().unwrap(), big);
        drop(log);
        let log = ValueLog::open(dir.path(), &tree).unwrap();
        assert_eq!(log.read(&p).unwrap().unwrap(), big);
        // Appends go on after the durable end.
        let q = log.append(b"jkey2", &[1u8; 3000]).unwrap();
        log.commit(&tree).unwrap();
        assert_eq!(log.read(&q).unwrap().unwrap(), vec![1u8; 3000]);
        assert_eq!(log.read(&p).unwrap().unwrap(), big);
    }

    #[test]
    fn a_damaged_value_is_reported_not_returned() {
        let (dir, _db, tree) = tree();
        let log = ValueLog::open(dir.path(), &tree).unwrap();
        let p = log.append(b"k", &[3u8; 4000]).unwrap();
        log.commit(&tree).unwrap();
        let seg = dir.path().join(FOLDER).join(file_name(1));
        let f = OpenOptions::new().write(true).open(seg).unwrap();
        f.write_all_at(b"XX", 100).unwrap();
        let err = log.read(&p).unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt { ref message, .. } if message.contains("damaged value")),
            "{err}"
        );
    }

    #[test]
    fn a_torn_tail_after_the_durable_end_is_written_over() {
        let (dir, _db, tree) = tree();
        let log = ValueLog::open(dir.path(), &tree).unwrap();
        let p = log.append(b"a", &[1u8; 4000]).unwrap();
        log.commit(&tree).unwrap();
        // Appended but never committed (a crash before the checkpoint's sync).
        log.append(b"b", &[2u8; 4000]).unwrap();
        lock(&log.inner)
            .writer
            .as_mut()
            .unwrap()
            .write_out()
            .unwrap();
        drop(log);
        let log = ValueLog::open(dir.path(), &tree).unwrap();
        let q = log.append(b"c", &[3u8; 4000]).unwrap();
        log.commit(&tree).unwrap();
        assert_eq!(
            Pointer::decode(&q).unwrap().offset,
            Pointer::decode(&p).unwrap().offset + 4000 + HEADER as u64 + 1
        );
        assert_eq!(log.read(&q).unwrap().unwrap(), vec![3u8; 4000]);
    }

    #[test]
    fn collection_moves_live_values_and_frees_dead_segments() {
        let (dir, _db, tree) = tree();
        let log = ValueLog::open(dir.path(), &tree).unwrap();
        // Fill more than one segment with 1 MiB values; keep every fourth.
        let value = |i: u32| vec![(i % 251) as u8; 1024 * 1024];
        let n = (SEGMENT_BYTES / (1024 * 1024)) as u32 * 2 + 3;
        for i in 0..n {
            let k = format!("j{i:04}");
            let p = log.append(k.as_bytes(), &value(i)).unwrap();
            tree.insert(k.as_bytes(), p).unwrap();
        }
        log.commit(&tree).unwrap();
        for i in 0..n {
            if i % 4 != 0 {
                let old = tree.remove(format!("j{i:04}").as_bytes()).unwrap().unwrap();
                log.released(&old);
            }
        }
        log.commit(&tree).unwrap();
        let before = log.file_bytes();
        let removed = log.collect(&tree, u64::MAX).unwrap();
        assert!(removed.len() >= 2, "{removed:?}");
        log.remove(&removed).unwrap();
        let after = log.file_bytes();
        assert!(after < before / 2, "{before} -> {after}");
        for i in (0..n).step_by(4) {
            let p = tree.get(format!("j{i:04}").as_bytes()).unwrap().unwrap();
            assert_eq!(log.read(&p).unwrap().unwrap(), value(i), "key {i}");
        }
        // Hints survive a reopen and match what is live.
        drop(log);
        let log = ValueLog::open(dir.path(), &tree).unwrap();
        let live: u64 = lock(&log.inner).segments.values().map(|s| s.live).sum();
        assert_eq!(live, u64::from(n.div_ceil(4)) * 1024 * 1024);
        assert!(log
            .read(
                &Pointer {
                    segment: removed[0],
                    offset: 0,
                    len: 1,
                    crc: 0
                }
                .encode()
            )
            .unwrap()
            .is_none());
    }
}
