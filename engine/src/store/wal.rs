//! The store's write-ahead log: every batch is appended here as a checksummed frame and made
//! durable with one `fdatasync` of this single file, instead of a flush and sync of sled's
//! files per commit. sled then holds the indexed copy and is synced only at checkpoints.
//!
//! Frame layout (little-endian): `len: u32`, `seq: u64`, `crc32: u32` (over `seq` and the
//! payload), then `len` bytes of payload: `count: u32`, then per write `space: u8`,
//! `op: u8` (1 put, 0 delete), `key_len: u32`, key, and for a put `value_len: u32`, value;
//! the last frame of each write to the file may end in zero bytes up to a 512-byte boundary.
//!
//! The file is reused from its start once a checkpoint has folded what it holds into sled
//! (the store keeps two and writes to one at a time), so it may hold frames of older
//! generations after the newest one. A scan therefore stops at the first frame that is
//! zero-length, fails its checksum, or does not carry the sequence number following the
//! previous frame's: older generations always carry smaller numbers, so a stale frame never
//! continues the current one, and a torn write (a crash mid-append) ends the log cleanly.

use super::{Batch, Space, StoreError};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const HEADER: usize = 4 + 8 + 4;

/// A frame's payload may not exceed this (a length field beyond it is a torn or stale
/// header, not a real frame).
const MAX_FRAME: u32 = 256 * 1024 * 1024;

/// Past [`GROW_CHUNK`], the file grows by zero-filled chunks of this size, written ahead of
/// the appends: an `fdatasync` of data written over existing blocks need not commit
/// file-size metadata.
const GROW_CHUNK: u64 = 1024 * 1024;

/// A new (or emptied) file first grows to this size, then doubles up to [`GROW_CHUNK`]: a
/// store that logs a few requests keeps 64 KiB of log, not a whole chunk of zeros.
pub(super) const MIN_GROW: u64 = 64 * 1024;

/// The size the file grows to when a write ends at `end` beyond what it holds: the next
/// power of two from [`MIN_GROW`] up to [`GROW_CHUNK`], then whole chunks.
fn grown_size(end: u64) -> u64 {
    if end <= GROW_CHUNK {
        end.next_power_of_two().max(MIN_GROW)
    } else {
        end.div_ceil(GROW_CHUNK) * GROW_CHUNK
    }
}

/// The buffer of frames waiting for the next write keeps up to this much capacity between
/// writes.
const PENDING_KEPT: usize = 64 * 1024;

/// Each write to the file ends on a multiple of this many bytes.
const SECTOR: u64 = 512;

/// Writes to the file are split at multiples of this many bytes (the page size): see
/// [`write_pages`].
const PAGE: u64 = 4096;

/// Writes `buf` at `offset` in pieces that end on [`PAGE`] boundaries. A kernel whose page
/// cache holds large folios (ext4 on Linux 6.x) sizes a folio after the write that fills it
/// and writes a whole folio back when any byte of it is dirty: the log's zeros written ahead
/// as one 1 MiB write made each later 1.5 KiB append + `fdatasync` there write 1 MiB to the
/// disk (53 GB for a 100,000-call transaction, BENCHMARKS.md); page-sized writes keep every
/// folio a page, so a sync writes the pages the append touched.
fn write_pages(file: &File, buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    let mut rest = buf;
    while !rest.is_empty() {
        let n = ((PAGE - offset % PAGE) as usize).min(rest.len());
        file.write_all_at(&rest[..n], offset)?;
        offset += n as u64;
        rest = &rest[n..];
    }
    Ok(())
}

/// Writes zeros from `from` up to `to`, a page at a time (as [`write_pages`] does) from one
/// static page: a growth of the file allocates nothing (a zeroed buffer of up to a chunk,
/// allocated at each growth, was fresh memory the allocator faulted in and gave back every
/// time: most of the durable journal's page faults).
fn write_zeros(file: &File, mut from: u64, to: u64) -> std::io::Result<()> {
    static ZEROS: [u8; PAGE as usize] = [0; PAGE as usize];
    while from < to {
        let n = (PAGE - from % PAGE).min(to - from);
        file.write_all_at(&ZEROS[..n as usize], from)?;
        from += n;
    }
    Ok(())
}

/// The write-ahead log of a store folder.
pub(super) struct Wal {
    file: File,
    path: PathBuf,
    /// Where the next frame goes.
    offset: u64,
    /// Bytes of the file already written (zeros or frames).
    filled: u64,
    /// Frames encoded but not yet written.
    pending: Vec<u8>,
    /// Where the last frame in `pending` starts.
    last_frame: usize,
}

/// Reads a file from its start with `pread`: a cloned handle shares the file's offset, so
/// each reader keeps its own.
pub(super) struct ReadFromStart {
    file: File,
    at: u64,
}

impl Read for ReadFromStart {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// One decoded frame.
#[derive(Debug, Clone)]
pub(super) struct Frame {
    pub(crate) seq: u64,
    pub(crate) batch: Batch,
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} `{}`: {e}", path.display()))
}

impl Wal {
    /// Opens the log at `path` and returns it with the frames of its newest generation, in
    /// order (tests: the store reads them as a stream, [`Wal::frames`]).
    #[cfg(test)]
    pub(crate) fn open(path: &Path) -> Result<(Wal, Vec<Frame>), StoreError> {
        let wal = Wal::open_unread(path)?;
        let frames = wal.frames()?.collect();
        Ok((wal, frames))
    }

    /// The frames of the newest generation, in order, read one at a time from the file (a
    /// log of 64 MiB is replayed without holding it in memory).
    pub(super) fn frames(&self) -> Result<Frames<BufReader<ReadFromStart>>, StoreError> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| io_err(&self.path, "cannot read", e))?;
        Ok(Frames::new(BufReader::with_capacity(
            1 << 20,
            ReadFromStart { file, at: 0 },
        )))
    }

    /// The numbers of the frames [`Wal::frames`] returns, in order, without copying their
    /// writes: the same frames, checked the same way.
    pub(super) fn frame_numbers(&self) -> Result<impl Iterator<Item = u64>, StoreError> {
        let mut frames = self.frames()?;
        frames.keep = false;
        Ok(frames.map(|f| f.seq))
    }

    /// Opens (or creates) the log at `path`, without reading it. The caller applies the
    /// frames ([`Wal::frames`]) it does not have, checkpoints, and then calls
    /// [`Wal::restart`] or [`Wal::discard`].
    pub(crate) fn open_unread(path: &Path) -> Result<Wal, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_err(path, "cannot open the write-ahead log", e))?;
        let filled = file
            .metadata()
            .map_err(|e| io_err(path, "cannot read the size of", e))?
            .len();
        Ok(Wal {
            file,
            path: path.to_path_buf(),
            offset: 0,
            filled,
            pending: Vec::with_capacity(PENDING_KEPT),
            last_frame: 0,
        })
    }

    /// Starts a new generation at the start of the file. Only after a checkpoint: every
    /// frame in the file must already be durable in the indexed store.
    pub(crate) fn restart(&mut self) {
        self.offset = 0;
        self.pending.clear();
        self.last_frame = 0;
    }

    /// Empties the log once sled holds every frame in it durably: zeroes the first frame's
    /// header, so the next open reads nothing here (it read the whole stale generation,
    /// ~1 GiB after a bulk load, to find that sled had it all), and gives back the file
    /// beyond `keep` bytes, rounded down to a page (what a generation grew it to beyond
    /// what the store wants preallocated; `0` empties it). Neither change needs to be
    /// durable: the stale frames are never replayed (sled's write counter covers them).
    /// Starts a new generation.
    pub(crate) fn discard(&mut self, keep: u64) -> Result<(), StoreError> {
        self.restart();
        if self.filled >= HEADER as u64 {
            self.file
                .write_all_at(&[0u8; HEADER], 0)
                .map_err(|e| io_err(&self.path, "cannot reset the write-ahead log", e))?;
        }
        let keep = keep / PAGE * PAGE;
        if self.filled > keep {
            self.file
                .set_len(keep)
                .map_err(|e| io_err(&self.path, "cannot shrink the write-ahead log", e))?;
            self.filled = keep;
        }
        Ok(())
    }

    /// Pads the last pending frame with zeros so the write ends on a [`SECTOR`] boundary
    /// (its length and checksum cover the padding, which decoding skips). Measured on this
    /// project's VMs: a write + `fdatasync` that ends mid-sector, continued by the next
    /// one, takes ~20% longer than one whose successor starts on a fresh sector.
    fn pad_to_sector(&mut self) {
        let end = self.offset + self.pending.len() as u64;
        let pad = (SECTOR - end % SECTOR) % SECTOR;
        let start = self.last_frame;
        if pad == 0 || self.pending.len() < start + HEADER {
            return;
        }
        self.pending.resize(self.pending.len() + pad as usize, 0);
        let frame = &mut self.pending[start..];
        let len = (frame.len() - HEADER) as u32;
        let seq: [u8; 8] = frame[4..12].try_into().unwrap_or_default();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&seq);
        crc.update(&frame[HEADER..]);
        let crc = crc.finalize();
        frame[0..4].copy_from_slice(&len.to_le_bytes());
        frame[12..16].copy_from_slice(&crc.to_le_bytes());
    }

    /// Bytes written in the current generation.
    pub(crate) fn len(&self) -> u64 {
        self.offset + self.pending.len() as u64
    }

    /// Encodes a batch as the frame numbered `seq` (written by the next [`Wal::write`]),
    /// into a buffer the log keeps, so a write allocates nothing.
    pub(crate) fn append(&mut self, seq: u64, batch: &Batch) {
        self.last_frame = self.pending.len();
        encode_frame(&mut self.pending, seq, batch);
    }

    /// A second handle on the log file, for `fdatasync` calls made without holding the log:
    /// a sync covers every write that completed before it started, through any handle.
    pub(crate) fn sync_handle(&self) -> Result<File, StoreError> {
        self.file
            .try_clone()
            .map_err(|e| io_err(&self.path, "cannot open a second handle on", e))
    }

    /// Writes the encoded frames to the file (not yet durable).
    pub(crate) fn write(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.pad_to_sector();
        let end = self.offset + self.pending.len() as u64;
        if end > self.filled {
            // Zero-fill ahead (see `grown_size`); the size change is synced once per growth.
            // The frames themselves cover up to `end` (a large batch is not written twice,
            // as zeros first), so at most a chunk of zeros follows them.
            let new_filled = grown_size(end);
            write_zeros(&self.file, end, new_filled)
                .map_err(|e| io_err(&self.path, "cannot extend the write-ahead log", e))?;
            self.filled = new_filled;
        }
        write_pages(&self.file, &self.pending, self.offset)
            .map_err(|e| io_err(&self.path, "cannot write the write-ahead log", e))?;
        self.offset = end;
        if self.pending.capacity() > PENDING_KEPT {
            // A burst (thousands of requests starting at once) grew it: give the memory back.
            self.pending = Vec::with_capacity(PENDING_KEPT);
        } else {
            self.pending.clear();
        }
        self.last_frame = 0;
        Ok(())
    }

    /// Makes everything written durable.
    pub(crate) fn sync(&mut self) -> Result<(), StoreError> {
        self.file
            .sync_data()
            .map_err(|e| io_err(&self.path, "fdatasync failed for", e))
    }
}

/// Appends the frame for `batch` numbered `seq` to `out`.
pub(super) fn encode_frame(out: &mut Vec<u8>, seq: u64, batch: &Batch) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    out.extend_from_slice(&(batch.writes.len() as u32).to_le_bytes());
    for (space, key, value) in &batch.writes {
        out.push(space.tag());
        out.push(u8::from(value.is_some()));
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        if let Some(v) = value {
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
    }
    let len = (out.len() - start - HEADER) as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(&out[start + HEADER..]);
    let crc = crc.finalize();
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 12].copy_from_slice(&seq.to_le_bytes());
    out[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
}

/// Reads the newest generation's frames: from the start, while each frame is whole, passes
/// its checksum and follows its predecessor's number. Never fails: whatever does not decode
/// ends the log.
#[cfg(test)]
pub(super) fn read_frames(r: impl Read) -> Vec<Frame> {
    Frames::new(r).collect()
}

/// The frames of a log, one at a time (see [`read_frames`] for where it ends).
pub(super) struct Frames<R> {
    reader: R,
    previous: Option<u64>,
    payload: Vec<u8>,
    ended: bool,
    /// Whether the frames' batches are returned (false: checked only, empty batches).
    keep: bool,
}

impl<R: Read> Frames<R> {
    fn new(reader: R) -> Frames<R> {
        Frames {
            reader,
            previous: None,
            payload: Vec::new(),
            ended: false,
            keep: true,
        }
    }

    fn read_one(&mut self) -> Option<Frame> {
        let mut header = [0u8; HEADER];
        self.reader.read_exact(&mut header).ok()?;
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
        let seq = u64::from_le_bytes(header[4..12].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default());
        if len == 0 || len > MAX_FRAME {
            return None;
        }
        if self
            .previous
            .is_some_and(|prev| prev.checked_add(1) != Some(seq))
        {
            return None;
        }
        self.payload.clear();
        let read = (&mut self.reader)
            .take(u64::from(len))
            .read_to_end(&mut self.payload);
        if read.is_err() || self.payload.len() != len as usize {
            return None;
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&seq.to_le_bytes());
        hasher.update(&self.payload);
        if hasher.finalize() != crc {
            return None;
        }
        let batch = decode_batch(&self.payload, self.keep)?;
        self.previous = Some(seq);
        Some(Frame { seq, batch })
    }
}

impl<R: Read> Iterator for Frames<R> {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        if self.ended {
            return None;
        }
        let frame = self.read_one();
        self.ended = frame.is_none();
        frame
    }
}

/// The batch of a frame's payload; with `keep` false, only checked (the same checks, an
/// empty batch returned, nothing copied).
fn decode_batch(mut p: &[u8], keep: bool) -> Option<Batch> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if p.len() < n {
            return None;
        }
        let (head, rest) = p.split_at(n);
        *p = rest;
        Some(head)
    }
    fn u32_at(p: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(p, 4)?.try_into().ok()?) as usize)
    }
    let count = u32_at(&mut p)?;
    let mut batch = Batch::new();
    // The count comes from checksummed data, but keep a corrupt-yet-valid-checksum frame
    // from reserving absurd memory.
    if keep {
        batch.writes.reserve(count.min(p.len() / 6));
    }
    for _ in 0..count {
        let space = Space::from_tag(*take(&mut p, 1)?.first()?)?;
        let op = *take(&mut p, 1)?.first()?;
        let klen = u32_at(&mut p)?;
        let key = take(&mut p, klen)?;
        let value = match op {
            1 => {
                let vlen = u32_at(&mut p)?;
                Some(take(&mut p, vlen)?)
            }
            0 => None,
            _ => return None,
        };
        if keep {
            batch
                .writes
                .push((space, key.to_vec(), value.map(<[u8]>::to_vec)));
        }
    }
    // Anything after the writes is padding to a sector boundary (see `Wal::pad_to_sector`).
    p.iter().all(|&b| b == 0).then_some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A write with its space given as an index into the list of spaces.
    type IndexedWrite = (u8, Vec<u8>, Option<Vec<u8>>);

    fn batch_of(writes: &[IndexedWrite]) -> Batch {
        let spaces = [
            Space::Journal,
            Space::Txns,
            Space::Audit,
            Space::Definitions,
            Space::Meta,
            Space::Index,
            Space::State,
        ];
        Batch {
            writes: writes
                .iter()
                .map(|(s, k, v)| (spaces[*s as usize % spaces.len()], k.clone(), v.clone()))
                .collect(),
            deletes_cancel_puts: false,
        }
    }

    fn same(a: &Batch, b: &Batch) -> bool {
        a.writes == b.writes
    }

    #[test]
    fn zeros_written_ahead_cover_exactly_the_range_over_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all_at(&[7u8; 10_000], 0).unwrap();
        // Starts mid-page, crosses several pages, ends mid-page.
        write_zeros(&file, 1_000, 9_001).unwrap();
        write_zeros(&file, 9_001, 9_001).unwrap();
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 10_000);
        assert!(back[..1_000].iter().all(|b| *b == 7));
        assert!(back[1_000..9_001].iter().all(|b| *b == 0));
        assert!(back[9_001..].iter().all(|b| *b == 7));
        // Past the end, the file grows to the range's end.
        write_zeros(&file, 10_000, 3 * PAGE + 5).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * PAGE + 5);
    }

    fn arb_batch() -> impl Strategy<Value = Batch> {
        prop::collection::vec(
            (
                0u8..6,
                prop::collection::vec(any::<u8>(), 0..24),
                prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
            ),
            0..6,
        )
        .prop_map(|w| batch_of(&w))
    }

    proptest! {
        #[test]
        fn frames_round_trip(batches in prop::collection::vec(arb_batch(), 0..8), first in 1u64..1000) {
            let mut buf = Vec::new();
            for (i, b) in batches.iter().enumerate() {
                encode_frame(&mut buf, first + i as u64, b);
            }
            let frames = read_frames(&buf[..]);
            prop_assert_eq!(frames.len(), batches.len());
            for (i, (f, b)) in frames.iter().zip(&batches).enumerate() {
                prop_assert_eq!(f.seq, first + i as u64);
                prop_assert!(same(&f.batch, b));
            }
        }

        /// A crash mid-append leaves a prefix of whole frames, never a partial one.
        #[test]
        fn a_torn_tail_ends_the_log_at_the_last_whole_frame(
            batches in prop::collection::vec(arb_batch(), 1..6),
            cut in any::<prop::sample::Index>(),
            fill in any::<u8>(),
        ) {
            let mut buf = Vec::new();
            let mut ends = Vec::new();
            for (i, b) in batches.iter().enumerate() {
                encode_frame(&mut buf, 7 + i as u64, b);
                ends.push(buf.len());
            }
            let cut = cut.index(buf.len() + 1);
            let mut torn = buf[..cut].to_vec();
            // Whatever the disk held after the cut (zeros, garbage, stale frames).
            torn.extend(std::iter::repeat_n(fill, 40));
            let whole = ends.iter().filter(|e| **e <= cut).count();
            let frames = read_frames(&torn[..]);
            prop_assert!(frames.len() >= whole);
            prop_assert!(frames.len() <= whole + usize::from(cut < buf.len()));
            for (f, b) in frames.iter().zip(&batches).take(whole) {
                prop_assert!(same(&f.batch, b));
            }
        }

        /// Arbitrary bytes never panic the reader.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = read_frames(&bytes[..]);
        }
    }

    #[test]
    fn frames_of_an_older_generation_after_the_newest_are_ignored() {
        let b = batch_of(&[(0, b"k".to_vec(), Some(b"v".to_vec()))]);
        let mut old = Vec::new();
        for seq in 1..=10 {
            encode_frame(&mut old, seq, &b);
        }
        let mut new = Vec::new();
        encode_frame(&mut new, 11, &b);
        encode_frame(&mut new, 12, &b);
        // The new generation overwrote the start of the file.
        let mut file = old.clone();
        file[..new.len()].copy_from_slice(&new);
        let frames = read_frames(&file[..]);
        assert_eq!(
            frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            vec![11, 12]
        );
    }

    #[test]
    fn a_flipped_bit_ends_the_log_there() {
        let b = batch_of(&[(1, b"key".to_vec(), Some(vec![9; 100]))]);
        let mut buf = Vec::new();
        encode_frame(&mut buf, 1, &b);
        let first_end = buf.len();
        encode_frame(&mut buf, 2, &b);
        encode_frame(&mut buf, 3, &b);
        buf[first_end + HEADER + 20] ^= 0x10;
        assert_eq!(read_frames(&buf[..]).len(), 1);
    }

    #[test]
    fn the_file_grows_in_zeroed_chunks_and_reopens_with_its_frames() {
        let dir = std::env::temp_dir().join(format!("provisio-wal-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wal");
        let b = batch_of(&[(0, b"k".to_vec(), Some(vec![1; 1000]))]);
        {
            let (mut wal, frames) = Wal::open(&path).unwrap();
            assert!(frames.is_empty());
            for seq in 1..=5 {
                wal.append(seq, &b);
            }
            wal.write().unwrap();
            wal.sync().unwrap();
            // A few KiB of frames: the file is the first, smallest growth.
            assert_eq!(std::fs::metadata(&path).unwrap().len(), MIN_GROW);
        }
        let (mut wal, frames) = Wal::open(&path).unwrap();
        assert_eq!(frames.len(), 5);
        // A new generation after a checkpoint hides the old frames.
        wal.restart();
        wal.append(6, &b);
        wal.write().unwrap();
        drop(wal);
        let (_, frames) = Wal::open(&path).unwrap();
        assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![6]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Bytes this thread caused to be written to the block device (`/proc/thread-self/io`);
    /// `None` where the kernel does not say.
    fn thread_write_bytes() -> Option<u64> {
        let io = std::fs::read_to_string("/proc/thread-self/io").ok()?;
        io.lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))?
            .trim()
            .parse()
            .ok()
    }

    #[test]
    fn an_append_and_its_sync_write_the_pages_it_touched() {
        let dir = std::env::temp_dir().join(format!("provisio-wal-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wal");
        let small = batch_of(&[(0, b"k".to_vec(), Some(vec![1; 1500]))]);
        let large = batch_of(&[(0, b"k".to_vec(), Some(vec![2; 900_000]))]);
        let (mut wal, _) = Wal::open(&path).unwrap();
        let mut seq = 0;
        let mut appends = |wal: &mut Wal, batch: &Batch, n: usize| {
            for _ in 0..n {
                seq += 1;
                wal.append(seq, batch);
                wal.write().unwrap();
                wal.sync().unwrap();
            }
        };
        // Appends into the zeros written ahead, then into what a large frame filled in the
        // generation before (the file is reused from its start).
        appends(&mut wal, &small, 1);
        let before = thread_write_bytes();
        appends(&mut wal, &small, 32);
        let into_zeros = thread_write_bytes().zip(before).map(|(a, b)| (a - b) / 32);
        appends(&mut wal, &large, 1);
        wal.restart();
        let before = thread_write_bytes();
        appends(&mut wal, &small, 32);
        let into_frames = thread_write_bytes().zip(before).map(|(a, b)| (a - b) / 32);
        let _ = std::fs::remove_dir_all(&dir);
        // A 1.5 KiB append spans at most two pages; allow for the file system's own writes.
        for (what, per_sync) in [("zeros", into_zeros), ("frames", into_frames)] {
            if let Some(bytes) = per_sync {
                assert!(
                    bytes <= 64 * 1024,
                    "{bytes} bytes written per sync into {what}"
                );
            }
        }
    }

    #[test]
    fn a_discarded_log_reads_empty_and_gives_back_what_a_burst_grew() {
        let dir = std::env::temp_dir().join(format!("provisio-wal-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wal");
        let b = batch_of(&[(0, b"k".to_vec(), Some(vec![1; 100_000]))]);
        let (mut wal, _) = Wal::open(&path).unwrap();
        for seq in 1..=40 {
            wal.append(seq, &b);
        }
        wal.write().unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() >= 4 * GROW_CHUNK);
        wal.discard(GROW_CHUNK).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), GROW_CHUNK);
        drop(wal);
        let (mut wal, frames) = Wal::open(&path).unwrap();
        assert!(frames.is_empty(), "the stale generation is not read");
        // The next generation starts at the beginning as usual.
        wal.append(41, &b);
        wal.write().unwrap();
        drop(wal);
        let (_, frames) = Wal::open(&path).unwrap();
        assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![41]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_file_doubles_from_64_kib_to_whole_chunks_and_a_discard_may_empty_it() {
        let dir = std::env::temp_dir().join(format!("provisio-wal-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wal");
        let b = batch_of(&[(0, b"k".to_vec(), Some(vec![1; 20_000]))]);
        let (mut wal, _) = Wal::open(&path).unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let mut sizes = Vec::new();
        for seq in 1..=120 {
            wal.append(seq, &b);
            wal.write().unwrap();
            if sizes.last() != Some(&size()) {
                sizes.push(size());
            }
        }
        // 120 frames of ~20 KiB: 2.3 MiB.
        let k = 1024;
        assert_eq!(
            sizes,
            vec![
                64 * k,
                128 * k,
                256 * k,
                512 * k,
                1024 * k,
                2048 * k,
                3072 * k
            ]
        );
        // Given back down to a page, or emptied.
        wal.discard(100_000).unwrap();
        assert_eq!(size(), 24 * 4096);
        wal.discard(0).unwrap();
        assert_eq!(size(), 0);
        drop(wal);
        let (mut wal, frames) = Wal::open(&path).unwrap();
        assert!(frames.is_empty());
        wal.append(121, &b);
        wal.write().unwrap();
        assert_eq!(size(), 64 * k);
        drop(wal);
        let (_, frames) = Wal::open(&path).unwrap();
        assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![121]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest! {
        /// Writes of any grouping end on a sector boundary, and every frame reads back in
        /// order with its batch intact (the padding is invisible).
        #[test]
        fn padded_writes_read_back_whole(
            groups in prop::collection::vec(prop::collection::vec(arb_batch(), 1..4), 1..6)
        ) {
            let dir = std::env::temp_dir().join(format!("provisio-wal-{}", uuid::Uuid::now_v7()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("wal");
            let (mut wal, _) = Wal::open(&path).unwrap();
            let mut seq = 0;
            let mut written = Vec::new();
            for group in &groups {
                for b in group {
                    seq += 1;
                    wal.append(seq, b);
                    written.push(b.clone());
                }
                wal.write().unwrap();
                prop_assert_eq!(wal.len() % SECTOR, 0);
            }
            drop(wal);
            let (_, frames) = Wal::open(&path).unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            prop_assert_eq!(frames.len(), written.len());
            for (i, (f, b)) in frames.iter().zip(&written).enumerate() {
                prop_assert_eq!(f.seq, i as u64 + 1);
                prop_assert!(same(&f.batch, b));
            }
        }
    }

    #[test]
    fn only_zero_bytes_may_follow_a_frames_writes() {
        let b = batch_of(&[(0, b"k".to_vec(), Some(b"v".to_vec()))]);
        let mut frame = Vec::new();
        encode_frame(&mut frame, 1, &b);
        let payload = frame[HEADER..].to_vec();
        let mut padded = payload.clone();
        padded.extend_from_slice(&[0; 7]);
        assert!(decode_batch(&padded, true).is_some());
        assert!(decode_batch(&padded, false).is_some());
        let mut trailing = payload;
        trailing.extend_from_slice(&[0, 3]);
        assert!(decode_batch(&trailing, true).is_none());
        assert!(decode_batch(&trailing, false).is_none());
    }
}
