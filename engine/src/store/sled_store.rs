//! The sled 0.34 store: one tree, space-prefixed keys, made durable and atomic by the
//! store's own write-ahead log, with concurrent writes sharing syncs (group commit).
//!
//! Durability: each batch is appended to the active log file (`provisio.wal` or
//! `provisio.wal.b` in the store folder) by the writing task itself, and a durable write
//! returns once an `fdatasync` of that file that started after its append has succeeded
//! (see `wal.rs`). Syncs are led by the writers: the first durable writer to find no sync
//! running makes one for everything appended so far; when others appended meanwhile it hands
//! the sync to the store's sync thread, which syncs back to back while writers wait. So a
//! lone request pays one sync per durable write and no thread hand-off, and concurrent ones
//! share syncs.
//!
//! Logged writes go to an in-memory overlay that reads consult before sled. A checkpoint
//! makes the active log file durable, switches writes to the other file and freezes the
//! overlay (writers wait only for that), then moves the frozen overlay's net writes into
//! sled (so keys written and deleted in between never reach it) and makes sled durable:
//! sled's own `flush()` writes with `sync_file_range`, which survives a killed process but
//! not a power cut, so a checkpoint follows it with `fdatasync` of sled's log and of every
//! blob file created since the last one (and fsyncs the folders that gained entries). Once
//! sled is durable, the file switched away from is emptied (its first header zeroed, and
//! what it grew beyond what the store keeps preallocated given back: see
//! [`kept_log_bytes`]), so an open reads only frames
//! sled may lack; it starts its next generation at the following checkpoint. At
//! open, the frames of both files newer than sled's write counter are replayed into sled
//! in order (they must continue it without a gap) and sled is made durable. A checkpoint
//! happens, on the store's own thread, when the log passes [`checkpoint_log_bytes`] (at
//! most [`CHECKPOINT_BYTES`]) or the overlay [`OVERLAY_BYTES`], after [`IDLE_CHECKPOINT`]
//! without writes, and at close.

use super::vacuum;
use super::values::{self, ValueLog};
use super::wal::{Frame, Wal, MIN_GROW};
use super::{Batch, KeyRange, KeyValue, Space, Store, StoreError};
use crate::txn::listing;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::task::Poll;
use std::time::Duration;

/// The write-ahead log is folded into sled and restarted once it holds this much.
pub(crate) const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;

/// A small store is checkpointed once its log holds half of what the store's files hold,
/// and at least this much: the log is at most as large as the rest of the store, so a store
/// that keeps a few MiB does not hold twice that in log while a transaction runs (the log
/// logs a record twice: on its own, then in its chunk). A store of 128 MiB or more is
/// checkpointed at [`CHECKPOINT_BYTES`], as before; a fresh one takes a few more
/// checkpoints while it grows (each doubles the threshold, about).
const MIN_CHECKPOINT_LOG_BYTES: u64 = 256 * 1024;

/// When the log of the store in `path` is folded in (see [`MIN_CHECKPOINT_LOG_BYTES`]).
fn checkpoint_log_bytes(path: &Path, values: &ValueLog) -> u64 {
    let sled = std::fs::metadata(path.join("db")).map_or(0, |m| m.len());
    ((sled + values.bytes()) / 2).clamp(MIN_CHECKPOINT_LOG_BYTES, CHECKPOINT_BYTES)
}

/// A log file is kept (preallocated, so a sync of an append commits no size change) up to
/// this size between checkpoints; what a burst grew beyond it is given back. A smaller store
/// keeps less: see [`kept_log_bytes`].
const KEPT_LOG_BYTES: u64 = CHECKPOINT_BYTES + 4 * 1024 * 1024;

/// How much of an emptied log file stays preallocated for its next generation: an eighth of
/// the store's other files (sled's `db` and the value log, as [`checkpoint_log_bytes`]
/// counts them: since large values left sled, its file alone made a store that keeps its
/// records in the value log regrow its log, zeros first, after every checkpoint), at least
/// [`MIN_GROW`] and at most [`KEPT_LOG_BYTES`]. The
/// preallocation spares a sync the commit of a size change (once per 64 KiB to 1 MiB
/// grown), but in a store that keeps a few MiB the two files kept at the largest generation
/// they ever held (9 MiB each after 10,000 steps) were most of its disk (BENCHMARKS.md,
/// "Issue 11: small stores' disk").
fn kept_log_bytes(path: &Path, values: &ValueLog) -> u64 {
    let sled = std::fs::metadata(path.join("db")).map_or(0, |m| m.len());
    ((sled + values.bytes()) / 8).clamp(MIN_GROW, KEPT_LOG_BYTES)
}

/// After a clean close's checkpoint (both log files hold only frames sled has): the file the
/// next open writes to first keeps [`MIN_GROW`] preallocated, the other is emptied, so a
/// closed store is sled's files and 64 KiB of log.
fn trim_logs_at_close(wals: &mut [Wal; 2]) {
    for (wal, keep) in wals.iter_mut().zip([MIN_GROW, 0]) {
        if let Err(e) = wal.discard(keep) {
            tracing::warn!("{e}");
        }
    }
}

/// A checkpoint is also taken after this long without writes, so a restart after an idle
/// period replays nothing.
pub(crate) const IDLE_CHECKPOINT: Duration = Duration::from_secs(2);

/// A checkpoint is also taken once the writes held in memory since the last one (the
/// overlay) reach this many bytes. Between checkpoints writes live in the log and the
/// overlay only, so a key written and deleted in that time (a transaction's per-step
/// records, compacted when it ends) never costs a sled insert.
pub(crate) const OVERLAY_BYTES: usize = 4 * 1024 * 1024;

/// The write-ahead log's two files inside the store folder. Writes go to one of them; a
/// checkpoint switches writes to the other, then moves what the first one holds into sled
/// without holding writers up, so the first is reused only after that checkpoint is done.
const WAL_FILES: [&str; 2] = ["provisio.wal", "provisio.wal.b"];

/// The side of the store that writers go through: taking it orders a write (its sequence
/// number, its place in the log and in the overlay) against every other write and against a
/// checkpoint.
struct Intake {
    wals: [Wal; 2],
    /// Which of `wals` takes writes now.
    active: usize,
    /// The last sequence number given out: its frame is in the log or in the log's buffer.
    seq: u64,
    closed: bool,
}

/// Who is syncing the log, how far it is durable, and who waits for it.
#[derive(Default)]
struct SyncState {
    /// Every write numbered up to this is durable.
    synced: u64,
    /// A writer, or the sync thread for it, is running an `fdatasync` now.
    leading: bool,
    /// The highest write number a writer waits to see durable.
    wanted: u64,
    /// The writers waiting for a sync that someone else leads, by the write they wait for:
    /// a sync wakes only those it covers, not every waiter.
    waiting: Vec<(u64, std::task::Waker)>,
}

impl SyncState {
    /// Takes the waiters whose write is durable now (all of them with `all`).
    fn take_covered(&mut self, all: bool) -> Vec<std::task::Waker> {
        let synced = self.synced;
        let mut woken = Vec::new();
        self.waiting.retain(|(seq, waker)| {
            let covered = all || *seq <= synced;
            if covered {
                woken.push(waker.clone());
            }
            !covered
        });
        woken
    }
}

/// What a durable writer does after looking at the sync state.
enum SyncStep {
    Done,
    Failed(StoreError),
    Lead,
}

/// What the store handle and its checkpoint thread share.
struct Shared {
    intake: std::sync::Mutex<Intake>,
    /// The number of the last write appended (`Intake::seq`), readable without the lock.
    appended: AtomicU64,
    sync: std::sync::Mutex<SyncState>,
    /// Handles on the log files, synced without holding the intake.
    log_files: [File; 2],
    /// Rings the sync thread, which then syncs the log for the writer holding the lead.
    /// Taken at close.
    doorbell: std::sync::Mutex<Option<mpsc::Sender<()>>>,
    syncs: AtomicU64,
    /// Set on the first failed log write or sync. After a failed `fdatasync` the kernel may
    /// have dropped the unwritten pages, so a later successful sync proves nothing: the
    /// store refuses every further write until it is reopened, which replays the log.
    poison: std::sync::OnceLock<StoreError>,
    /// Every write made since the last checkpoint began, and those a running checkpoint is
    /// moving into sled. Reads look here first.
    overlays: std::sync::RwLock<Overlays>,
    /// A size-triggered checkpoint was asked for and has not run yet.
    checkpoint_asked: AtomicBool,
    /// The log's size that asks for a checkpoint ([`checkpoint_log_bytes`]), updated by
    /// each checkpoint.
    checkpoint_log_bytes: AtomicU64,
    /// Set by the checkpoint thread once the store's clean close is recorded.
    closed_cleanly: AtomicBool,
    /// Held for a whole checkpoint: the next one may reuse the log file the previous one
    /// was folding in only after it is done.
    checkpointing: std::sync::Mutex<()>,
}

impl Shared {
    fn poison(&self, e: StoreError) {
        if self.poison.get().is_some() {
            return;
        }
        tracing::error!(error = %e, "the journal store failed a write; it refuses further writes until provisio restarts");
        let why = match e {
            StoreError::Io(m) => m,
            other => other.to_string(),
        };
        let _ = self.poison.set(StoreError::Io(format!(
            "{why} (the journal refuses further writes until provisio is restarted; the next start replays its write-ahead log)"
        )));
        self.wake(true);
    }

    /// Wakes the waiting writers whose write is durable (all of them with `all`, so they
    /// see a failure or take the lead).
    fn wake(&self, all: bool) {
        let woken = lock(&self.sync).take_covered(all);
        for w in woken {
            w.wake();
        }
    }

    /// Gives up the lead without a sync and wakes every waiter, so that one of them leads
    /// (or, if the store is poisoned, all of them see the failure).
    fn hand_back_lead(&self) {
        lock(&self.sync).leading = false;
        self.wake(true);
    }

    /// Records that every write up to `seq` is durable and wakes the writers it covers.
    fn mark_synced(&self, seq: u64) {
        let mut state = lock(&self.sync);
        state.synced = state.synced.max(seq);
        let woken = state.take_covered(false);
        drop(state);
        for w in woken {
            w.wake();
        }
    }

    /// Returns once write `seq` is durable, syncing the log itself when no one else is.
    async fn wait_durable(&self, seq: u64) -> Result<(), StoreError> {
        loop {
            let step = std::future::poll_fn(|cx| {
                let mut state = lock(&self.sync);
                if state.synced >= seq {
                    return Poll::Ready(SyncStep::Done);
                }
                if let Some(e) = self.poison.get() {
                    return Poll::Ready(SyncStep::Failed(e.clone()));
                }
                if !state.leading {
                    state.leading = true;
                    return Poll::Ready(SyncStep::Lead);
                }
                state.wanted = state.wanted.max(seq);
                state.waiting.push((seq, cx.waker().clone()));
                Poll::Pending
            })
            .await;
            match step {
                SyncStep::Done => return Ok(()),
                SyncStep::Failed(e) => return Err(e),
                SyncStep::Lead => {
                    // Let the tasks already runnable append first, so the sync covers them
                    // too (on a one-thread runtime they could not run during it).
                    let abandoned = Abandoned(self);
                    tokio::task::yield_now().await;
                    std::mem::forget(abandoned);
                    if self.appended.load(Ordering::Acquire) > seq {
                        // Others are writing too: hand the sync to the sync thread, so this
                        // worker thread goes on running their steps meanwhile.
                        if self.ring_sync_thread() {
                            continue;
                        }
                    }
                    // Alone: sync on this thread. A hand-off to another thread and back
                    // costs about a third of a sync on an idle machine.
                    if self.sync_log(false) && !self.ring_sync_thread() {
                        // Writers came meanwhile and the sync thread is gone (the store is
                        // closing): hand the lead back, so one of them syncs.
                        self.hand_back_lead();
                    }
                }
            }
        }
    }

    /// Hands the lead to the sync thread; false if it is gone.
    fn ring_sync_thread(&self) -> bool {
        lock(&self.doorbell)
            .as_ref()
            .is_some_and(|d| d.send(()).is_ok())
    }

    /// Writes the frames appended so far to the log file; returns the number of the last
    /// and which file holds it.
    fn write_pending(&self) -> Result<(u64, usize), StoreError> {
        let mut intake = lock(&self.intake);
        let active = intake.active;
        intake.wals[active].write().map(|()| (intake.seq, active))
    }

    /// Makes every frame appended so far durable, then wakes the writers it covers; with
    /// `keep_going` (the sync thread), repeats while writers wait. Called by whoever holds
    /// the lead. Returns whether writers still wait for a sync, in which case the lead is
    /// kept (for the sync thread to take over).
    fn sync_log(&self, keep_going: bool) -> bool {
        // Every frame numbered up to the target is written before the sync starts, so the
        // sync covers it. The intake is held only for the write, not the sync.
        let mut written = self.write_pending();
        loop {
            let synced = written.and_then(|(target, file)| {
                self.syncs.fetch_add(1, Ordering::Relaxed);
                // A checkpoint may have switched files since: frames up to `target` are in
                // `file` all the same, and the switch synced it anyway.
                self.log_files[file]
                    .sync_data()
                    .map(|()| target)
                    .map_err(|e| {
                        StoreError::Io(format!("fdatasync failed for the write-ahead log: {e}"))
                    })
            });
            let target = match synced {
                Ok(target) => target,
                Err(e) => {
                    // Poisoned before another writer may lead: a later sync that succeeds
                    // proves nothing about the pages this one lost.
                    self.poison(e);
                    self.hand_back_lead();
                    return false;
                }
            };
            // The frames appended during the sync are written before anyone is woken: the
            // woken writers' next appends would otherwise hold up this write (measured:
            // 35–75 µs per sync under load), and the next sync with it.
            let next = keep_going.then(|| self.write_pending());
            let mut state = lock(&self.sync);
            state.synced = state.synced.max(target);
            let more = state.wanted > state.synced;
            state.leading = more;
            let woken = state.take_covered(false);
            drop(state);
            for w in woken {
                w.wake();
            }
            match next {
                Some(next) if more => written = next,
                _ => return more,
            }
        }
    }

    /// The sync thread: syncs the log for as long as writers wait for it, from each ring
    /// of the doorbell until none does, so that under load one sync starts as soon as the
    /// previous one ends.
    fn sync_while_wanted(&self) {
        self.sync_log(true);
    }
}

/// Hands the lead back if a leading writer's future is dropped before it syncs (a
/// cancelled request), and wakes every waiter so that one of them leads instead.
struct Abandoned<'a>(&'a Shared);

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        self.0.hand_back_lead();
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes by full key (`None`: deleted) that sled does not have yet.
#[derive(Default)]
struct Overlay {
    writes: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    bytes: usize,
}

/// The overlay writes go to, and the one a running checkpoint is moving into sled (older;
/// reads consult it after `active`, before sled).
#[derive(Default)]
struct Overlays {
    active: Overlay,
    frozen: Option<Arc<Overlay>>,
}

impl Overlays {
    /// The newest value of a key the overlays hold: `Some(None)` if deleted, `None` if
    /// they do not know it.
    fn get(&self, full: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.active
            .writes
            .get(full)
            .or_else(|| self.frozen.as_ref().and_then(|f| f.writes.get(full)))
    }
}

fn read_lock<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// What the checkpoint thread is told.
enum Signal {
    /// The log or the overlay passed its size.
    Checkpoint,
}

/// The sled-backed store.
pub struct SledStore {
    #[cfg(test)]
    db: sled::Db,
    tree: sled::Tree,
    /// Where sled's large values are (`values.rs`).
    values: Arc<ValueLog>,
    shared: Arc<Shared>,
    path: PathBuf,
    /// Dropped to stop the checkpoint thread.
    signals: std::sync::Mutex<Option<mpsc::Sender<Signal>>>,
    checkpointer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    sync_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The listing files as the last clean close left them (`Some(None)`: to be rebuilt),
    /// taken by the clean close that brings them up to date (`txn::listing`).
    listing: std::sync::Mutex<Option<Option<listing::Base>>>,
    /// The transaction summaries written since the open, for the listing files.
    changes: std::sync::Mutex<listing::Changes>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish()
    }
}

fn key(space: Space, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(space.tag());
    k.extend_from_slice(key);
    k
}

/// Opens sled in `path`. A lock that is taken is retried for a moment (200 ms): a store
/// closed and reopened at once by the same process was refused as locked in ~5% of runs of
/// the store tests with four threads, never without the tests that start child processes.
/// Most likely cause: sled's lock is a `flock` on its file, and a process being started
/// shares the open file until it execs.
pub(super) fn open_sled(path: &Path) -> Result<(sled::Db, sled::Tree), StoreError> {
    // sled is read mostly at start and by inspection (writes go through the log and the
    // overlay), so a small page cache is enough: 16 MiB held ~1 KiB more per in-flight
    // transaction in the memory benchmark than 8, and 64 ~2 more; recovering 10,000
    // transactions took 1.25–1.33 s with 8, 1.10 s with 16.
    open_sled_caching(path, 8 * 1024 * 1024)
}

/// [`open_sled`] with a page cache of `cache_bytes` (the vacuum's, which reads every page
/// once, is smaller).
pub(super) fn open_sled_caching(
    path: &Path,
    cache_bytes: u64,
) -> Result<(sled::Db, sled::Tree), StoreError> {
    const ATTEMPTS: u32 = 20;
    let mut attempt = 0;
    loop {
        attempt += 1;
        // sled may panic on some damaged files: that is a damaged store, not a crash.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let db = sled::Config::new()
                .path(path)
                .cache_capacity(cache_bytes)
                .flush_every_ms(None)
                .open()?;
            let tree = db.open_tree("provisio")?;
            Ok::<_, sled::Error>((db, tree))
        }));
        match opened {
            Ok(Ok(opened)) => return Ok(opened),
            Ok(Err(e)) => match map_err(path, e) {
                StoreError::Locked { .. } if attempt < ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return Err(other),
            },
            Err(_) => {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    message: "the storage engine could not read its files".into(),
                })
            }
        }
    }
}

pub(super) fn map_err(path: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { .. } => StoreError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        },
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
        {
            StoreError::Locked {
                path: path.display().to_string(),
            }
        }
        sled::Error::Io(io) => StoreError::Io(io.to_string()),
        other => StoreError::Corrupt {
            path: path.display().to_string(),
            message: other.to_string(),
        },
    }
}

/// The store format this version writes and reads: 1 had every value in sled, 2 keeps large
/// values in the value log. The state file and sled's Meta space both carry it, so that a
/// later format is refused before anything is read or changed (a provisio before format 2
/// does not look: it would read value-log pointers as values, CHANGELOG says so).
pub(crate) const STORE_FORMAT: u32 = 2;

/// The key of the store format in the Meta space (a big-endian `u32`).
const FORMAT_KEY: &[u8] = b"format";

/// Refuses a store whose format (`found`, absent in a store before format 2) this version
/// cannot read.
fn check_format(path: &Path, found: Option<u32>) -> Result<(), StoreError> {
    match found {
        Some(found) if found > STORE_FORMAT => Err(StoreError::Newer {
            path: path.display().to_string(),
            found,
            supported: STORE_FORMAT,
        }),
        _ => Ok(()),
    }
}

/// The store format sled's Meta space names (`None` before format 2).
fn meta_format(path: &Path, tree: &sled::Tree) -> Result<Option<u32>, StoreError> {
    let Some(v) = tree
        .get(key(Space::Meta, FORMAT_KEY))
        .map_err(|e| map_err(path, e))?
    else {
        return Ok(None);
    };
    let bytes: [u8; 4] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
        path: path.display().to_string(),
        message: format!("its format record has {} bytes instead of 4", v.len()),
    })?;
    Ok(Some(u32::from_be_bytes(bytes)))
}

impl SledStore {
    /// Opens (or creates) the store in `path`. A rewrite of sled's database that a stop
    /// interrupted is finished first, and one a prune asked for is made (`vacuum.rs`).
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with(path, true)
    }

    /// Opens the store in `path` for a process that only reads (`tx list`, `tx show`): as
    /// [`SledStore::open`], but a rewrite of sled's database that a prune asked for is
    /// left to the next [`SledStore::open`] (a writer), so that a command that reads takes
    /// no longer and needs no more memory than the reading. A rewrite a stop interrupted
    /// is still finished: sled cannot open a half-switched database.
    pub fn open_to_read(path: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with(path, false)
    }

    fn open_with(path: &Path, rewrite_if_asked: bool) -> Result<SledStore, StoreError> {
        // A newer store is left exactly as it is, a half-done rewrite included.
        check_format(path, Identity::read_side(path).map(|side| side.format))?;
        vacuum::repair(path)?;
        let store = SledStore::open_as_it_is(path)?;
        if !rewrite_if_asked {
            return Ok(store);
        }
        let asked = store.tree.get(vacuum::flag_key());
        if !matches!(asked, Ok(Some(_))) {
            return Ok(store);
        }
        // A prune in a process that kept the store open (a daemon) asked for it.
        drop(store);
        match vacuum::vacuum(path, false) {
            Ok(done) if done.rewritten => tracing::info!(
                before = done.before,
                after = done.after,
                "the journal's sled database was rewritten after a prune"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("rewriting the journal's sled database failed: {e}"),
        }
        SledStore::open_as_it_is(path)
    }

    /// Below this many bytes of sled's files, [`SledStore::vacuum`] leaves a store alone.
    pub const VACUUM_FLOOR: u64 = vacuum::FLOOR;
    /// [`SledStore::vacuum`] rewrites a store whose sled files are more than this many times
    /// what they hold.
    pub const VACUUM_RATIO: u64 = vacuum::RATIO;

    /// Rewrites the sled database of the closed store in `path` when its files hold much
    /// more than it keeps (always with `force`): see `vacuum.rs`.
    pub fn vacuum(path: &Path, force: bool) -> Result<vacuum::Vacuumed, StoreError> {
        vacuum::vacuum(path, force)
    }

    fn open_as_it_is(path: &Path) -> Result<SledStore, StoreError> {
        std::fs::create_dir_all(path)
            .map_err(|e| StoreError::Io(format!("cannot create `{}`: {e}", path.display())))?;
        // Before sled opens: a newer store is left exactly as it is.
        check_format(path, Identity::read_side(path).map(|side| side.format))?;
        let (db, tree) = open_sled(path)?;
        check_format(path, meta_format(path, &tree)?)?;
        let sled_writes = read_write_count(path, &tree)?;
        let mut wals = [
            Wal::open_unread(&path.join(WAL_FILES[0]))?,
            Wal::open_unread(&path.join(WAL_FILES[1]))?,
        ];
        // Frames sled does not have: the current generation of one file, or the end of one
        // file's and the start of the other's (a checkpoint was running). Older generations
        // hold only writes sled has. A first pass finds which numbers each file holds
        // (frames within a file are numbered consecutively), the replay reads them again in
        // order: a log of 64 MiB is never held in memory.
        let mut spans: Vec<(u64, u64, usize)> = Vec::new();
        for (file, wal) in wals.iter().enumerate() {
            let mut span: Option<(u64, u64)> = None;
            for seq in wal.frame_numbers()?.filter(|&seq| seq > sled_writes) {
                span = Some((span.map_or(seq, |(lo, _)| lo), seq));
            }
            if let Some((lo, hi)) = span {
                spans.push((lo, hi, file));
            }
        }
        spans.sort_unstable();
        let mut expected = sled_writes + 1;
        for &(lo, hi, _) in &spans {
            if lo != expected {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    message: format!(
                        "its write-ahead log continues from write {} but the store holds only {} writes: records were lost",
                        lo - 1,
                        expected - 1
                    ),
                });
            }
            expected = hi + 1;
        }
        let writes = expected - 1;
        let replayed = writes - sled_writes;
        // The listing files describe the store as its last clean close left it, if it was
        // closed cleanly; their marker goes before anything changes.
        let listing_base = listing::take_base(path, side_state(path).as_ref());
        // Checked before the replay touches anything, so a damaged store stays as it was.
        Identity::check(path, &tree, &db, writes)?;
        let values = Arc::new(ValueLog::open(path, &tree)?);
        // For the listing's catch-up: removals that reached sled, and the replayed summaries.
        let removals = tree.get(key(Space::Meta, crate::txn::index::REMOVED_KEY));
        let mut changes =
            listing::Changes::at_open(removals.map_err(|e| map_err(path, e))?.as_deref());
        if replayed > 0 {
            let mut frames = Vec::new();
            for &(_, _, file) in &spans {
                frames.push(wals[file].frames()?.filter(move |f| f.seq > sled_writes));
            }
            let frames = frames.into_iter().flatten();
            let frames = frames.inspect(|f| changes.replayed(&f.batch));
            apply_logged(path, &tree, &values, writes, frames)?;
        }
        if let Some(base) = &listing_base {
            // The removal log's entries that the listing files hold already go: the log
            // holds the removals since the listing was last written, not every one ever.
            clear_removal_log(path, &tree, &values, base.writes())?;
        }
        let mut syncer = Syncer::new(path)?;
        make_sled_durable(path, &db, &mut syncer)?;
        // Every frame is in sled now, durably.
        let keep = kept_log_bytes(path, &values);
        for wal in &mut wals {
            if let Err(e) = wal.discard(keep) {
                // Its frames stay behind, older than sled's counter: never replayed.
                tracing::warn!("{e}");
            }
        }
        if replayed > 0 {
            tracing::info!(
                frames = replayed,
                "replayed the journal's write-ahead log after an unclean stop"
            );
        }
        let log_files = [wals[0].sync_handle()?, wals[1].sync_handle()?];
        let shared = Arc::new(Shared {
            intake: std::sync::Mutex::new(Intake {
                wals,
                active: 0,
                seq: writes,
                closed: false,
            }),
            appended: AtomicU64::new(writes),
            sync: std::sync::Mutex::new(SyncState {
                synced: writes,
                leading: false,
                wanted: writes,
                waiting: Vec::new(),
            }),
            log_files,
            syncs: AtomicU64::new(0),
            poison: std::sync::OnceLock::new(),
            overlays: std::sync::RwLock::new(Overlays::default()),
            checkpoint_asked: AtomicBool::new(false),
            checkpoint_log_bytes: AtomicU64::new(checkpoint_log_bytes(path, &values)),
            closed_cleanly: AtomicBool::new(false),
            checkpointing: std::sync::Mutex::new(()),
            doorbell: std::sync::Mutex::new(None),
        });
        let (doorbell, rings) = mpsc::channel::<()>();
        let syncing = shared.clone();
        let sync_thread = std::thread::Builder::new()
            .name("provisio-journal-sync".into())
            .spawn(move || {
                // Ends when the store closes (the doorbell is dropped).
                while rings.recv().is_ok() {
                    syncing.sync_while_wanted();
                }
            })
            .map_err(|e| StoreError::Io(format!("cannot start the journal's sync thread: {e}")))?;
        *lock(&shared.doorbell) = Some(doorbell);
        let (sender, receiver) = mpsc::channel::<Signal>();
        let mut checkpointer = Checkpointer {
            path: path.to_path_buf(),
            db: db.clone(),
            tree: tree.clone(),
            values: values.clone(),
            syncer,
            shared: shared.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("provisio-journal".into())
            .spawn(move || checkpointer.run(receiver))
            .map_err(|e| {
                StoreError::Io(format!("cannot start the journal's checkpoint thread: {e}"))
            })?;
        Ok(SledStore {
            #[cfg(test)]
            db,
            tree,
            values,
            shared,
            path: path.to_path_buf(),
            signals: std::sync::Mutex::new(Some(sender)),
            checkpointer: std::sync::Mutex::new(Some(handle)),
            sync_thread: std::sync::Mutex::new(Some(sync_thread)),
            listing: std::sync::Mutex::new(Some(listing_base)),
            changes: std::sync::Mutex::new(changes),
        })
    }

    /// Takes a checkpoint on the calling thread (tests).
    #[cfg(test)]
    pub(crate) fn checkpoint_now(&self) {
        let mut checkpointer = Checkpointer {
            path: self.path.clone(),
            db: self.db.clone(),
            tree: self.tree.clone(),
            values: self.values.clone(),
            syncer: Syncer::new(&self.path).unwrap(),
            shared: self.shared.clone(),
        };
        assert!(checkpointer.checkpoint());
    }

    /// The value a key has in sled, read from the value log when sled holds a pointer
    /// (`None`: the key is gone, deleted since it was read).
    /// `held`: the overlays, when the caller holds them (a scan); a point read takes them
    /// only if it must.
    fn resolve(
        &self,
        full: &[u8],
        mut v: Vec<u8>,
        held: Option<&Overlays>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut failed = None;
        for _ in 0..8 {
            if !values::is_pointer(&v) {
                return Ok(Some(v));
            }
            let gone = match self.values.read(&v) {
                Ok(Some(value)) => return Ok(Some(value)),
                Ok(None) => true,
                Err(e) => {
                    // A point read checks the overlays without holding them: the key may
                    // have been written since, and a checkpoint be moving it into sled now,
                    // its value not yet written to the value log. The frozen overlay holds
                    // it until that checkpoint is done; after, sled's pointer is good.
                    let now = match held {
                        Some(overlays) => overlays.get(full).cloned(),
                        None => read_lock(&self.shared.overlays).get(full).cloned(),
                    };
                    if let Some(now) = now {
                        return Ok(now);
                    }
                    if failed.replace(()).is_some() {
                        return Err(e);
                    }
                    false
                }
            };
            // Its segment was collected after the pointer was read (sled points to the
            // value's new place now), or its checkpoint finished meanwhile.
            match self.tree.get(full).map_err(|e| map_err(&self.path, e))? {
                Some(now) if now.as_ref() != v.as_slice() => v = now.to_vec(),
                Some(_) if gone => break,
                Some(_) => {}
                None => return Ok(None),
            }
        }
        Err(StoreError::Corrupt {
            path: self.path.display().to_string(),
            message: format!(
                "a value of key {:?} is in a value log segment that is missing from `{}`",
                String::from_utf8_lossy(full),
                self.path.join(values::FOLDER).display()
            ),
        })
    }

    /// How many syncs were made (tests and benchmarks of group commit read it).
    pub fn sync_count(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Marks this holder as one that only reads (a `tx list` or `tx show` from the CLI):
    /// its clean close keeps the listing files (`txn::listing`) up to date when they
    /// describe the store, and catches stale ones up after a crash (reading what changed
    /// since), but does not rebuild missing ones or those a catch-up cannot bring up to
    /// date (a transaction was removed since), which reads every transaction's summary
    /// through sled (~3 s at a million transactions). The next writer's clean close
    /// rebuilds them; until then `tx list` reads the store's index.
    pub fn leave_listing_rebuild_to_writers(&self) {
        lock(&self.changes).leave_rebuild = true;
    }

    /// Syncs, checkpoints and stops the checkpoint thread (also done on drop).
    pub fn close(&self) {
        lock(&self.signals).take();
        let handle = lock(&self.checkpointer).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        // Writes are refused now; a writer that rang before sees its sync through, since the
        // thread answers every ring it got before the doorbell went.
        lock(&self.shared.doorbell).take();
        let handle = lock(&self.sync_thread).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        // Closed cleanly: the listing files follow (once), for `tx list` without sled.
        if self.shared.closed_cleanly.swap(false, Ordering::AcqRel) {
            let base = lock(&self.listing).take();
            let id = self.tree.get(key(Space::Meta, b"id")).ok().flatten();
            if let (Some(base), Some(id)) = (base, id) {
                let changes = std::mem::take(&mut *lock(&self.changes));
                listing::after_clean_close(
                    self,
                    &self.path,
                    &String::from_utf8_lossy(&id),
                    self.shared.appended.load(Ordering::Acquire),
                    base,
                    changes,
                );
            }
        }
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[async_trait]
impl Store for SledStore {
    async fn write(&self, mut batch: Batch, durable: bool) -> Result<(), StoreError> {
        let seq = {
            // Under the intake lock, so the frame's number, its place in the log and the
            // overlay all see writes in one order.
            let mut intake = lock(&self.shared.intake);
            if let Some(e) = self.shared.poison.get() {
                return Err(e.clone());
            }
            if intake.closed {
                return Err(StoreError::Closed);
            }
            let seq = intake.seq + 1;
            if listing::removes(&batch) {
                // Removed transactions are logged with their removal, for the listing's
                // catch-up after a crash (`txn::listing`).
                let before = self.get(Space::Meta, crate::txn::index::REMOVED_KEY)?;
                listing::log_removals(&mut batch, seq, before.as_deref(), &mut lock(&self.changes));
            }
            // Into the log's buffer: whoever syncs next writes it out, with everything else
            // appended since, in one write.
            let active = intake.active;
            intake.wals[active].append(seq, &batch);
            intake.seq = seq;
            self.shared.appended.store(seq, Ordering::Release);
            let log_full = intake.wals[active].len()
                >= self.shared.checkpoint_log_bytes.load(Ordering::Relaxed);
            let mut overlays = write_lock(&self.shared.overlays);
            let overlay = &mut overlays.active;
            for (space, k, v) in batch.writes {
                if space == Space::Txns {
                    lock(&self.changes).record(&k, v.as_deref());
                }
                let full = key(space, &k);
                if v.is_none() && batch.deletes_cancel_puts && space != Space::State {
                    if let Some(Some(put)) = overlay.writes.get(&full) {
                        // Put since the last checkpoint began and never elsewhere (the
                        // batch's promise): sled never saw it, so both are forgotten.
                        overlay.bytes = overlay.bytes.saturating_sub(full.len() + put.len());
                        overlay.writes.remove(&full);
                        continue;
                    }
                }
                overlay.bytes += k.len() + 1 + v.as_ref().map_or(0, Vec::len);
                overlay.writes.insert(full, v);
            }
            if (log_full || overlay.bytes >= OVERLAY_BYTES)
                && !self.shared.checkpoint_asked.swap(true, Ordering::AcqRel)
            {
                if let Some(signals) = lock(&self.signals).as_ref() {
                    let _ = signals.send(Signal::Checkpoint);
                }
            }
            seq
        };
        if durable {
            self.shared.wait_durable(seq).await
        } else {
            // Visible to reads; written and made durable with the next durable write.
            Ok(())
        }
    }

    async fn pruned(&self) -> Result<(), StoreError> {
        // Below the floor the open would only look and leave it (a `stat` here saves it).
        if vacuum::sled_bytes(&self.path) < vacuum::FLOOR {
            return Ok(());
        }
        let mut b = Batch::new();
        b.put(Space::Meta, vacuum::FLAG.to_vec(), vec![1]);
        self.write(b, true).await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let seq = {
            let intake = lock(&self.shared.intake);
            if let Some(e) = self.shared.poison.get() {
                return Err(e.clone());
            }
            if intake.closed {
                return Err(StoreError::Closed);
            }
            intake.seq
        };
        self.shared.wait_durable(seq).await
    }

    fn get(&self, space: Space, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let full = key(space, k);
        if let Some(v) = read_lock(&self.shared.overlays).get(&full) {
            return Ok(v.clone());
        }
        match self.tree.get(&full).map_err(|e| map_err(&self.path, e))? {
            Some(v) => self.resolve(&full, v.to_vec(), None),
            None => Ok(None),
        }
    }

    fn scan(&self, space: Space, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let full = key(space, prefix);
        // The overlays are read first and held: a checkpoint drops the frozen one only after
        // sled has its writes, so holding them keeps this read consistent (while sled is
        // being updated, the frozen overlay says the same as the updated keys).
        let overlays = read_lock(&self.shared.overlays);
        // Values from sled (`true`) may be pointers, read once the overlays have had their
        // say: a key the frozen overlay holds may point to values not yet written.
        let mut merged = std::collections::BTreeMap::new();
        for item in self.tree.scan_prefix(&full) {
            let (k, v) = item.map_err(|e| map_err(&self.path, e))?;
            merged.insert(k.to_vec(), (v.to_vec(), true));
        }
        let frozen = overlays.frozen.as_deref().into_iter();
        for overlay in frozen.chain(std::iter::once(&overlays.active)) {
            for (k, v) in overlay
                .writes
                .range(full.clone()..)
                .take_while(|(k, _)| k.starts_with(&full))
            {
                match v {
                    Some(v) => merged.insert(k.clone(), (v.clone(), false)),
                    None => merged.remove(k),
                };
            }
        }
        let mut out = Vec::with_capacity(merged.len());
        for (mut k, (v, from_sled)) in merged {
            let v = if from_sled {
                match self.resolve(&k, v, Some(&overlays))? {
                    Some(v) => v,
                    None => continue,
                }
            } else {
                v
            };
            k.remove(0);
            out.push((k, v));
        }
        Ok(out)
    }

    fn scan_range(
        &self,
        space: Space,
        range: KeyRange<'_>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let lo = key(space, range.start);
        // Tags are ASCII letters, so the next tag bounds the space.
        let hi = match range.end {
            Some(end) => key(space, end),
            None => vec![space.tag() + 1],
        };
        if limit == 0 || lo >= hi {
            return Ok(Vec::new());
        }
        // Held for the whole read, as in `scan`: sled and the overlays agree meanwhile.
        let overlays = read_lock(&self.shared.overlays);
        let tree = self.tree.range(lo.clone()..hi.clone());
        let mut tree: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if reverse
        {
            Box::new(tree.rev())
        } else {
            Box::new(tree)
        };
        let overlay_iter = |o| overlay_range(o, &lo, &hi, reverse);
        // Newest first: the active overlay, then the frozen one, then sled.
        let mut layers: Vec<OverlayIter<'_>> = vec![overlay_iter(&overlays.active)];
        if let Some(frozen) = overlays.frozen.as_deref() {
            layers.push(overlay_iter(frozen));
        }
        let mut heads: Vec<Option<OverlayWrite<'_>>> =
            layers.iter_mut().map(Iterator::next).collect();
        let next_tree = |tree: &mut dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>| {
            tree.next()
                .transpose()
                .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .map_err(|e| map_err(&self.path, e))
        };
        let mut tree_head = next_tree(&mut tree)?;
        // The key that comes first in the scan's direction.
        let first = |a: &[u8], b: &[u8]| if reverse { a > b } else { a < b };
        let mut out = Vec::new();
        while out.len() < limit {
            let mut k: Option<Vec<u8>> = tree_head.as_ref().map(|(k, _)| k.clone());
            for (hk, _) in heads.iter().flatten() {
                if k.as_deref().is_none_or(|cur| first(hk, cur)) {
                    k = Some((*hk).clone());
                }
            }
            let Some(k) = k else { break };
            // The newest layer holding the key decides; every layer holding it moves on.
            let mut value: Option<Option<Vec<u8>>> = None;
            for (layer, head) in layers.iter_mut().zip(heads.iter_mut()) {
                if let Some((hk, v)) = head {
                    if **hk == k {
                        if value.is_none() {
                            value = Some((*v).clone());
                        }
                        *head = layer.next();
                    }
                }
            }
            if tree_head.as_ref().is_some_and(|(tk, _)| *tk == k) {
                let (_, v) = tree_head.take().expect("checked");
                if value.is_none() {
                    value = Some(self.resolve(&k, v, Some(&overlays))?);
                }
                tree_head = next_tree(&mut tree)?;
            }
            if let Some(Some(v)) = value {
                out.push((k[1..].to_vec(), v));
            }
        }
        Ok(out)
    }
}

/// One write an overlay holds: the full key and the value (`None`: deleted).
type OverlayWrite<'o> = (&'o Vec<u8>, &'o Option<Vec<u8>>);

/// An overlay's writes within `lo..hi`, in key order or backwards.
type OverlayIter<'o> = Box<dyn Iterator<Item = OverlayWrite<'o>> + 'o>;

fn overlay_range<'o>(o: &'o Overlay, lo: &[u8], hi: &[u8], reverse: bool) -> OverlayIter<'o> {
    let r = o.writes.range(lo.to_vec()..hi.to_vec());
    if reverse {
        Box::new(r.rev())
    } else {
        Box::new(r)
    }
}

/// The checkpoint thread's state: sled and what it needs to make sled durable.
struct Checkpointer {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    values: Arc<ValueLog>,
    syncer: Syncer,
    shared: Arc<Shared>,
}

impl Checkpointer {
    fn run(&mut self, signals: mpsc::Receiver<Signal>) {
        let mut seen = self.shared.appended.load(Ordering::Acquire);
        loop {
            match signals.recv_timeout(IDLE_CHECKPOINT) {
                Ok(Signal::Checkpoint) => {
                    self.checkpoint();
                    self.shared.checkpoint_asked.store(false, Ordering::Release);
                    self.collect_values(false);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Idle: nothing written for a whole period, and something to fold in.
                    let now = self.shared.appended.load(Ordering::Acquire);
                    let logged = {
                        let intake = lock(&self.shared.intake);
                        intake.wals[intake.active].len()
                    };
                    if now == seen && logged > 0 {
                        self.checkpoint();
                    }
                    if now == seen {
                        // Idle: space a prune freed is taken back, a budget at a time.
                        self.collect_values(false);
                    }
                    seen = now;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let writes = {
            let mut intake = lock(&self.shared.intake);
            intake.closed = true;
            intake.seq
        };
        if self.shared.poison.get().is_some() {
            // Leave everything as it is: the next open replays the log.
            return;
        }
        if !self.checkpoint() {
            return;
        }
        // What is left to collect is collected before the store is left (a `tx prune`
        // from the command line frees its space as it ends).
        self.collect_values(true);
        trim_logs_at_close(&mut lock(&self.shared.intake).wals);
        if Identity::record_clean_close(&self.path, &self.tree, writes) {
            self.shared.closed_cleanly.store(true, Ordering::Release);
        }
    }

    /// Folds everything logged so far into sled without holding writers up: under the
    /// intake, makes the active log file durable, switches writes to the other file and
    /// freezes the overlay (microseconds plus one sync); then, with writers going on,
    /// moves the frozen overlay into sled and makes sled durable. The file switched away
    /// from is reused at the next checkpoint, after this one is done. Returns whether it
    /// was taken. A failure poisons the store: the file it was folding in must not be
    /// reused, and the next start replays both files.
    fn checkpoint(&mut self) -> bool {
        let shared = self.shared.clone();
        let _one_at_a_time = lock(&shared.checkpointing);
        let (cut, frozen) = {
            let mut intake = lock(&shared.intake);
            if shared.poison.get().is_some() {
                return false;
            }
            let old = intake.active;
            // Durable first: the next generation's frames are acknowledged on their own, and
            // a replay must find this one whole before them.
            let logged = intake.wals[old].write();
            if let Err(e) = logged.and_then(|()| intake.wals[old].sync()) {
                shared.poison(e);
                return false;
            }
            shared.syncs.fetch_add(1, Ordering::Relaxed);
            shared.mark_synced(intake.seq);
            let mut overlays = write_lock(&shared.overlays);
            // The other file's frames are all in sled (the checkpoint that folded them in
            // finished before this one started), so it starts its next generation.
            intake.wals[1 - old].restart();
            intake.active = 1 - old;
            let frozen = Arc::new(std::mem::take(&mut overlays.active));
            overlays.frozen = Some(frozen.clone());
            (intake.seq, frozen)
        };
        #[cfg(test)]
        tests::pause_in_checkpoint(1);
        let done = apply_overlay(&self.path, &self.tree, &self.values, cut, &frozen.writes)
            .and_then(|()| make_sled_durable(&self.path, &self.db, &mut self.syncer));
        match done {
            Ok(()) => {
                // Readers may drop the frozen overlay now: sled answers for it.
                write_lock(&shared.overlays).frozen = None;
                // The file folded in holds nothing sled lacks: empty it now rather than at
                // the next checkpoint, so an open after this one (or after a clean close)
                // reads no stale generation, and a file a burst grew is given back. (Writes
                // go to the other file; only a checkpoint switches, one at a time.)
                let keep = kept_log_bytes(&self.path, &self.values);
                let mut intake = lock(&shared.intake);
                let folded = 1 - intake.active;
                if let Err(e) = intake.wals[folded].discard(keep) {
                    // Only space and the next open's time are at stake: its frames are
                    // older than sled's write counter and are never replayed.
                    tracing::warn!("{e}");
                }
                drop(intake);
                shared.checkpoint_log_bytes.store(
                    checkpoint_log_bytes(&self.path, &self.values),
                    Ordering::Relaxed,
                );
                true
            }
            Err(e) => {
                // The frozen overlay stays, so reads stay right until the restart.
                shared.poison(StoreError::Io(format!("journal checkpoint failed: {e}")));
                false
            }
        }
    }
}

/// How many bytes of value log segments one collection reads, between checkpoints: a pass
/// over a year's pruned journal is spread over the checkpoints that follow (and finished by
/// the close), rather than holding one checkpoint up.
const COLLECT_BUDGET: u64 = 2 * values::SEGMENT_BYTES;

impl Checkpointer {
    /// Collects value log segments at least half dead (`values.rs`), reading at most
    /// [`COLLECT_BUDGET`] bytes of them (everything there is to collect, a budget at a time,
    /// with `all`), and removes them once sled no longer points into them, durably. A failure leaves both copies of what it moved: it is logged, and the store
    /// goes on (only space is at stake) unless sled could not be made durable.
    fn collect_values(&mut self, all: bool) {
        // A budget at a time, sled made durable and the segments removed after each, so
        // what a pass holds (a pointer swap for each live entry it moved) stays bounded.
        while self.shared.poison.get().is_none() && self.values.has_garbage() {
            let _one_at_a_time = lock(&self.shared.checkpointing);
            let collected = match self.values.collect(&self.tree, COLLECT_BUDGET) {
                Ok(collected) => collected,
                Err(e) => {
                    tracing::warn!(error = %e, "collecting the value log failed; its space is taken back later");
                    return;
                }
            };
            if collected.is_empty() {
                return;
            }
            #[cfg(test)]
            tests::pause_in_checkpoint(3);
            if let Err(e) = make_sled_durable(&self.path, &self.db, &mut self.syncer) {
                self.shared
                    .poison(StoreError::Io(format!("journal checkpoint failed: {e}")));
                return;
            }
            match self.values.remove(&collected) {
                Ok(()) => {
                    tracing::debug!(segments = collected.len(), "value log segments collected")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "removing collected value log segments");
                    return;
                }
            }
            if !all {
                return;
            }
        }
    }
}

/// fdatasyncs sled's files after a flush.
struct Syncer {
    dir: PathBuf,
    log: File,
    blobs_seen: HashSet<std::ffi::OsString>,
}

impl Syncer {
    fn new(dir: &Path) -> Result<Syncer, StoreError> {
        let log = File::open(dir.join("db"))
            .map_err(|e| StoreError::Io(format!("cannot open sled's log file: {e}")))?;
        // The folder entries for the files sled created must be durable too.
        sync_dir(dir)?;
        let mut s = Syncer {
            dir: dir.to_path_buf(),
            log,
            blobs_seen: HashSet::new(),
        };
        s.sync_new_blobs()?;
        Ok(s)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.log
            .sync_data()
            .map_err(|e| StoreError::Io(format!("fdatasync of the journal failed: {e}")))?;
        self.sync_new_blobs()
    }

    fn sync_new_blobs(&mut self) -> Result<(), StoreError> {
        let blobs = self.dir.join("blobs");
        let Ok(entries) = std::fs::read_dir(&blobs) else {
            return Ok(());
        };
        let mut new = false;
        for e in entries.flatten() {
            let name = e.file_name();
            if self.blobs_seen.contains(&name) {
                continue;
            }
            if let Ok(f) = File::open(e.path()) {
                f.sync_data().map_err(|e| {
                    StoreError::Io(format!("fdatasync of a journal blob failed: {e}"))
                })?;
            }
            self.blobs_seen.insert(name);
            new = true;
        }
        if new {
            sync_dir(&blobs)?;
        }
        Ok(())
    }
}

/// Applies logged batches to sled one write at a time, then sets the write counter to
/// `last_seq`. sled recovers a prefix of its writes, so a counter that survives a crash
/// proves every write before it did too, and the log replays whatever came after (puts and
/// deletes are idempotent, so a partly applied batch is simply applied again). Atomicity
/// comes from the log, which is why sled's `apply_batch` is not used: it seals and writes
/// sled's IO buffer on every call, a thread hand-off and a write per batch.
fn apply_logged(
    path: &Path,
    tree: &sled::Tree,
    values: &ValueLog,
    last_seq: u64,
    frames: impl Iterator<Item = Frame>,
) -> Result<(), StoreError> {
    // The frames' net writes, a window at a time: a value put and then deleted within the
    // window (a transaction's per-record keys, compacted into chunks) never reaches sled or
    // the value log, where it would be garbage at once. Applying a window's net writes in
    // key order leaves sled as applying them in log order would; the write counter, written
    // last, covers them all, and a crash before it replays the whole log again.
    let mut window: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    let mut held = 0usize;
    for Frame { batch, .. } in frames {
        for (space, k, v) in batch.writes {
            let full = key(space, &k);
            held += full.len() + v.as_ref().map_or(0, Vec::len);
            window.insert(full, v);
        }
        if held >= REPLAY_WINDOW_BYTES {
            apply_window(path, tree, values, std::mem::take(&mut window))?;
            held = 0;
        }
    }
    apply_window(path, tree, values, window)?;
    finish_fold(path, tree, values, last_seq)
}

/// How much of the log's writes the replay at open holds before it applies them.
const REPLAY_WINDOW_BYTES: usize = 16 * 1024 * 1024;

fn apply_window(
    path: &Path,
    tree: &sled::Tree,
    values: &ValueLog,
    window: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> Result<(), StoreError> {
    for (full, v) in window {
        put_or_remove(path, tree, values, &full, v.as_deref())?;
    }
    Ok(())
}

/// One write into sled: a large value goes to the value log and sled gets its pointer; a
/// pointer it replaces or deletes is released.
fn put_or_remove(
    path: &Path,
    tree: &sled::Tree,
    values: &ValueLog,
    full: &[u8],
    value: Option<&[u8]>,
) -> Result<(), StoreError> {
    let old = match value {
        Some(v) if values::wanted(full, v) => {
            let pointer = values.append(full, v)?;
            tree.insert(full, pointer)
        }
        Some(v) => tree.insert(full, v),
        None => tree.remove(full),
    }
    .map_err(|e| map_err(path, e))?;
    if let Some(old) = old {
        values.released(&old);
    }
    Ok(())
}

/// Ends a fold into sled: the value log's appends made durable and its hints written, then
/// the write counter. sled recovers a prefix of its writes, so a counter that survives a
/// crash proves the writes before it did, and the value log was synced before it.
fn finish_fold(
    path: &Path,
    tree: &sled::Tree,
    values: &ValueLog,
    last_seq: u64,
) -> Result<(), StoreError> {
    values.commit(tree)?;
    tree.insert(key(Space::Meta, b"writes"), &last_seq.to_be_bytes()[..])
        .map_err(|e| map_err(path, e))?;
    Ok(())
}

/// Moves the overlay's net writes into sled, then sets the write counter (the same
/// prefix argument as [`apply_logged`]).
fn apply_overlay(
    path: &Path,
    tree: &sled::Tree,
    values: &ValueLog,
    last_seq: u64,
    writes: &std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> Result<(), StoreError> {
    for (k, v) in writes {
        // Most deletes are of keys sled never saw: sled's remove finds that with the same
        // lookup a `contains_key` would make, and then writes nothing.
        put_or_remove(path, tree, values, k, v.as_deref())?;
    }
    #[cfg(test)]
    tests::pause_in_checkpoint(2);
    finish_fold(path, tree, values, last_seq)?;
    if tracing::enabled!(tracing::Level::DEBUG) {
        log_overlay(writes);
    }
    Ok(())
}

/// Logs (debug) what a checkpoint moved into sled, by space: puts, their bytes, deletes.
fn log_overlay(writes: &std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
    let mut by_space: std::collections::BTreeMap<char, (usize, usize, usize)> = Default::default();
    for (k, v) in writes {
        let tag = k.first().map_or('?', |&b| char::from(b));
        let e = by_space.entry(tag).or_default();
        match v {
            Some(v) => {
                e.0 += 1;
                e.1 += k.len() + v.len();
            }
            None => e.2 += 1,
        }
    }
    let spaces: Vec<String> = by_space
        .iter()
        .map(|(tag, (puts, bytes, deletes))| {
            format!("{tag}: {puts} puts ({bytes} B), {deletes} deletes")
        })
        .collect();
    tracing::debug!(
        keys = writes.len(),
        "checkpoint into sled: {}",
        spaces.join("; ")
    );
}

/// Makes sled durable up to now.
fn make_sled_durable(path: &Path, db: &sled::Db, syncer: &mut Syncer) -> Result<(), StoreError> {
    db.flush().map_err(|e| map_err(path, e))?;
    syncer.sync()
}

/// Removes from sled the removal log's entries of writes up to `writes` (`txn::listing`):
/// those the listing files written at that count hold. Straight into sled, as the replay
/// writes: a crash before sled's next flush leaves some of them, which the next open removes
/// (and a catch-up never reads: it starts past its base's count). Entries are small, in
/// sled itself (`listing::log_removals`); one that is not (an id of kilobytes) is released
/// from the value log.
fn clear_removal_log(
    path: &Path,
    tree: &sled::Tree,
    values: &ValueLog,
    writes: u64,
) -> Result<(), StoreError> {
    let (from, to) = listing::removal_log_through(writes);
    let (from, to) = (key(Space::Meta, &from), key(Space::Meta, &to));
    loop {
        let mut batch = sled::Batch::default();
        let mut released = Vec::new();
        let mut n = 0;
        for item in tree.range(from.clone()..to.clone()).take(4096) {
            let (k, v) = item.map_err(|e| map_err(path, e))?;
            if values::is_pointer(&v) {
                released.push(v);
            }
            batch.remove(k);
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        tree.apply_batch(batch).map_err(|e| map_err(path, e))?;
        for v in released {
            values.released(&v);
        }
    }
}

/// The number of the last write sled holds.
fn read_write_count(path: &Path, tree: &sled::Tree) -> Result<u64, StoreError> {
    Ok(tree
        .get(key(Space::Meta, b"writes"))
        .map_err(|e| map_err(path, e))?
        .and_then(|v| v.as_ref().try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Io(format!("cannot sync folder `{}`: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::super::wal::encode_frame;
    use super::*;
    use std::future::Future as _;

    #[tokio::test]
    async fn batches_are_atomic_and_scannable() {
        let dir = tempfile_dir();
        let store = SledStore::open(&dir).unwrap();
        let mut b = Batch::new();
        b.put(Space::Journal, b"t1\x00\x01".to_vec(), b"one".to_vec())
            .put(Space::Journal, b"t1\x00\x02".to_vec(), b"two".to_vec());
        b.put(Space::Txns, b"t1".to_vec(), b"meta".to_vec());
        store.write(b, true).await.unwrap();
        let rows = store.scan(Space::Journal, b"t1").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].1, b"two");
        assert_eq!(
            store.get(Space::Txns, b"t1").unwrap().as_deref(),
            Some(&b"meta"[..])
        );
        assert!(store.get(Space::Audit, b"t1").unwrap().is_none());
        assert!(store.sync_count() >= 1);
        drop(store);
        let reopened = SledStore::open(&dir).unwrap();
        assert_eq!(
            reopened.scan(Space::Journal, b"t1").unwrap().len(),
            2,
            "durable across reopen"
        );
        remove_store(&dir);
    }

    #[tokio::test]
    async fn after_a_clean_close_the_logs_hold_nothing_to_read() {
        let dir = tempfile_dir();
        let store = SledStore::open(&dir).unwrap();
        for i in 0..50u32 {
            let mut b = Batch::new();
            b.put(Space::Journal, i.to_be_bytes().to_vec(), vec![7; 20_000]);
            store.write(b, i % 10 == 0).await.unwrap();
        }
        store.close();
        drop(store);
        // ~1 MB was logged; a closed store keeps 64 KiB of log, in the file written first.
        let sizes = WAL_FILES.map(|name| std::fs::metadata(dir.join(name)).unwrap().len());
        assert_eq!(sizes, [MIN_GROW, 0], "log files after a clean close");
        for name in WAL_FILES {
            let (_, frames) = Wal::open(&dir.join(name)).unwrap();
            assert!(frames.is_empty(), "{name} holds {} frames", frames.len());
        }
        let store = SledStore::open(&dir).unwrap();
        assert_eq!(store.scan(Space::Journal, b"").unwrap().len(), 50);
        drop(store);
        remove_store(&dir);
    }

    #[tokio::test]
    async fn concurrent_durable_writes_share_syncs() {
        let dir = tempfile_dir();
        let store = Arc::new(SledStore::open(&dir).unwrap());
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut b = Batch::new();
                b.put(Space::Journal, i.to_be_bytes().to_vec(), vec![0; 16]);
                s.write(b, true).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(store.scan(Space::Journal, b"").unwrap().len(), 64);
        // The first writer leads a sync; the others append meanwhile and share the next.
        assert!(store.sync_count() <= 4, "{} syncs", store.sync_count());
        drop(store);
        remove_store(&dir);
    }

    /// Many writers on several threads, each waiting for its writes in turn (as steps do):
    /// every write lands, the sync thread takes over the leading under load, and syncs are
    /// shared.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_on_several_threads_share_syncs_and_all_land() {
        let dir = tempfile_dir();
        let store = Arc::new(SledStore::open(&dir).unwrap());
        let mut tasks = Vec::new();
        for t in 0..32u32 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20u32 {
                    let mut b = Batch::new();
                    let mut k = t.to_be_bytes().to_vec();
                    k.extend_from_slice(&i.to_be_bytes());
                    b.put(Space::Journal, k, vec![1; 600]);
                    s.write(b, i % 2 == 0).await?;
                }
                Ok::<_, StoreError>(())
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("no writer waits forever")
                .unwrap()
                .unwrap();
        }
        assert_eq!(store.scan(Space::Journal, b"").unwrap().len(), 640);
        let syncs = store.sync_count();
        assert!(syncs < 320, "{syncs} syncs for 320 durable writes");
        drop(store);
        let store = SledStore::open(&dir).unwrap();
        assert_eq!(store.scan(Space::Journal, b"").unwrap().len(), 640);
        drop(store);
        remove_store(&dir);
    }

    /// A durable write dropped while it leads a sync (a request cancelled mid-write) hands
    /// the lead back: the next durable write still completes, and durably.
    #[tokio::test]
    async fn a_cancelled_leader_does_not_stall_later_writes() {
        let dir = tempfile_dir();
        let store = SledStore::open(&dir).unwrap();
        let mut b = Batch::new();
        b.put(Space::Journal, b"first".to_vec(), b"1".to_vec());
        let mut first = Box::pin(store.write(b, true));
        let waker = std::task::Waker::noop();
        let polled = first
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        assert!(polled.is_pending(), "the leader yields before it syncs");
        assert!(lock(&store.shared.sync).leading);
        drop(first);
        assert!(!lock(&store.shared.sync).leading, "the lead is handed back");
        let mut b = Batch::new();
        b.put(Space::Journal, b"second".to_vec(), b"2".to_vec());
        tokio::time::timeout(Duration::from_secs(10), store.write(b, true))
            .await
            .expect("a later durable write completes")
            .unwrap();
        drop(store);
        let store = SledStore::open(&dir).unwrap();
        // The cancelled write had been appended, so it is kept along with the later one.
        assert_eq!(store.scan(Space::Journal, b"").unwrap().len(), 2);
        drop(store);
        remove_store(&dir);
    }

    #[test]
    fn a_second_open_of_the_same_store_is_refused_clearly() {
        let dir = tempfile_dir();
        let _first = SledStore::open(&dir).unwrap();
        let second = SledStore::open(&dir);
        assert!(second.is_err());
        let msg = second.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("in use") || msg.contains("damaged") || msg.contains("I/O"),
            "{msg}"
        );
        remove_store(&dir);
    }

    /// Reads merge the in-memory overlay with sled: deletes hide sled's values, overwrites
    /// win, and the result is the same after the overlay is checkpointed into sled.
    #[tokio::test]
    async fn reads_merge_recent_writes_with_checkpointed_ones() {
        let dir = tempfile_dir();
        let put = |b: &mut Batch, k: &str, v: &str| {
            b.put(Space::Journal, k.as_bytes().to_vec(), v.as_bytes().to_vec());
        };
        {
            let store = SledStore::open(&dir).unwrap();
            let mut b = Batch::new();
            put(&mut b, "t1/a", "1");
            put(&mut b, "t1/b", "2");
            put(&mut b, "t1/c", "3");
            store.write(b, true).await.unwrap();
        }
        let expect = |store: &SledStore| {
            let rows = store.scan(Space::Journal, b"t1/").unwrap();
            let rows: Vec<(String, String)> = rows
                .into_iter()
                .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
                .collect();
            assert_eq!(
                rows,
                vec![
                    ("t1/a".to_string(), "1".to_string()),
                    ("t1/c".to_string(), "33".to_string()),
                    ("t1/d".to_string(), "4".to_string()),
                ]
            );
            assert_eq!(store.get(Space::Journal, b"t1/b").unwrap(), None);
            assert_eq!(
                store.get(Space::Journal, b"t1/c").unwrap().as_deref(),
                Some(&b"33"[..])
            );
            assert_eq!(store.get(Space::Journal, b"t1/e").unwrap(), None);
        };
        {
            // a, b, c are in sled now (the close checkpointed them).
            let store = SledStore::open(&dir).unwrap();
            let mut b = Batch::new();
            b.delete(Space::Journal, b"t1/b".to_vec());
            put(&mut b, "t1/c", "33");
            put(&mut b, "t1/e", "5");
            store.write(b, false).await.unwrap();
            let mut b = Batch::new();
            put(&mut b, "t1/d", "4");
            b.delete(Space::Journal, b"t1/e".to_vec());
            store.write(b, true).await.unwrap();
            expect(&store);
        }
        let store = SledStore::open(&dir).unwrap();
        expect(&store);
        drop(store);
        remove_store(&dir);
    }

    /// Writes `n` batches of 100 KB under keys 0..n (every third and the last durable);
    /// every tenth batch also deletes key i/2. The overlay passes OVERLAY_BYTES near the
    /// 42nd, which starts a checkpoint.
    async fn write_numbered(store: &SledStore, n: u32) {
        for i in 0..n {
            let mut b = Batch::new();
            b.put(Space::Journal, i.to_be_bytes().to_vec(), vec![7; 100_000]);
            if i % 10 == 0 {
                b.delete(Space::Journal, (i / 2).to_be_bytes().to_vec());
            }
            store.write(b, i % 3 == 0 || i == n - 1).await.unwrap();
        }
    }

    /// The keys [`write_numbered`] leaves.
    fn numbered_keys_left(n: u32) -> Vec<u32> {
        (0..n)
            .filter(|i| !(0..n).any(|j| j % 10 == 0 && j / 2 == *i))
            .collect()
    }

    /// The numbered keys a store holds.
    fn numbered_keys(store: &SledStore) -> Vec<u32> {
        store
            .scan(Space::Journal, b"")
            .unwrap()
            .iter()
            .map(|(k, _)| u32::from_be_bytes(k[..4].try_into().unwrap()))
            .collect()
    }

    /// Runs this binary's test `name` (in `store::sled_store::tests`) in a child process
    /// with `env` set to `dir`, and asserts that the child aborted.
    fn run_aborting_child(name: &str, env: &str, dir: &Path) {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("store::sled_store::tests::{name}"),
                "--nocapture",
            ])
            .env(env, dir)
            .status()
            .unwrap();
        assert!(!status.success(), "the child must abort");
        assert_eq!(
            status.code(),
            None,
            "the child ends by a signal, not a failed check"
        );
    }

    /// A process that aborts right after its durable writes were acknowledged loses none of
    /// them: those after the last checkpoint come back from the write-ahead log.
    #[test]
    fn acknowledged_writes_survive_an_abort() {
        const CHILD: &str = "PROVISIO_TEST_WAL_CHILD";
        if let Ok(dir) = std::env::var(CHILD) {
            child_store(&dir, |store| async move {
                // A checkpoint starts midway, so the abort finds writes in sled, or in the
                // log file being folded in, and the rest in the other log file.
                write_numbered(&store, 50).await;
                std::process::abort();
            });
        }
        let dir = tempfile_dir();
        run_aborting_child("acknowledged_writes_survive_an_abort", CHILD, &dir);
        let store = SledStore::open(&dir).unwrap();
        // Keys 0, 5, 10, 15 and 20 were deleted.
        assert_eq!(numbered_keys(&store), numbered_keys_left(50));
        drop(store);
        // The replay was checkpointed: a second open finds the same, with nothing to replay.
        let store = SledStore::open(&dir).unwrap();
        assert_eq!(numbered_keys(&store), numbered_keys_left(50));
        drop(store);
        remove_store(&dir);
    }

    /// A delete promised to cancel a put forgets both while the put is in the active
    /// overlay, records the delete otherwise (the put already in sled), and reads and a
    /// reopen agree either way.
    #[tokio::test]
    async fn deletes_that_cancel_puts_leave_nothing_behind() {
        let dir = tempfile_dir();
        let store = SledStore::open(&dir).unwrap();
        let mut b = Batch::new();
        b.put(Space::Journal, b"old".to_vec(), b"1".to_vec());
        store.write(b, true).await.unwrap();
        // Folded into sled: the next delete of `old` must be recorded.
        store.checkpoint_now();
        let mut b = Batch::new();
        b.put(Space::Journal, b"new".to_vec(), b"2".to_vec());
        store.write(b, true).await.unwrap();
        let mut b = Batch::new();
        b.delete(Space::Journal, b"new".to_vec());
        b.delete(Space::Journal, b"old".to_vec());
        b.put(Space::Journal, b"kept".to_vec(), b"3".to_vec());
        b.deletes_cancel_puts = true;
        store.write(b, true).await.unwrap();
        {
            let overlays = read_lock(&store.shared.overlays);
            assert!(!overlays
                .active
                .writes
                .contains_key(&key(Space::Journal, b"new")));
            assert_eq!(
                overlays.active.writes.get(&key(Space::Journal, b"old")),
                Some(&None)
            );
        }
        let check = |store: &SledStore| {
            let rows = store.scan(Space::Journal, b"").unwrap();
            assert_eq!(rows, vec![(b"kept".to_vec(), b"3".to_vec())]);
            assert_eq!(store.get(Space::Journal, b"old").unwrap(), None);
            assert_eq!(store.get(Space::Journal, b"new").unwrap(), None);
        };
        check(&store);
        drop(store);
        let store = SledStore::open(&dir).unwrap();
        check(&store);
        drop(store);
        remove_store(&dir);
    }

    /// Provider state rides in batches that compact journal records: its delete of a key
    /// whose older value is in sled and newer one in the overlay is recorded, never taken
    /// as cancelling the put (which would let the older value show through).
    #[tokio::test]
    async fn a_provider_state_delete_is_recorded_even_in_a_cancelling_batch() {
        let dir = tempfile_dir();
        let store = SledStore::open(&dir).unwrap();
        let mut b = Batch::new();
        b.put(Space::State, b"p\0k".to_vec(), b"1".to_vec());
        store.write(b, true).await.unwrap();
        store.checkpoint_now();
        let mut b = Batch::new();
        b.put(Space::State, b"p\0k".to_vec(), b"2".to_vec());
        store.write(b, true).await.unwrap();
        let mut b = Batch::new();
        b.delete(Space::State, b"p\0k".to_vec());
        b.deletes_cancel_puts = true;
        store.write(b, true).await.unwrap();
        assert_eq!(store.get(Space::State, b"p\0k").unwrap(), None);
        drop(store);
        let store = SledStore::open(&dir).unwrap();
        assert_eq!(store.get(Space::State, b"p\0k").unwrap(), None);
        drop(store);
        remove_store(&dir);
    }

    /// Set in a child process to hold each checkpoint between its switch of log files and
    /// its update of sled, so that the process can end while a checkpoint runs.
    /// Where a checkpoint stops for an abort test: 0 nowhere, 1 before it moves anything
    /// into sled, 2 after it moved everything (large values appended to the value log) but
    /// before the value log is made durable and the write counter written, 3 after a
    /// collection of the value log swapped its pointers, before sled is made durable.
    static PAUSE_CHECKPOINTS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

    /// Set once the checkpoint thread stopped at [`PAUSE_CHECKPOINTS`]'s stage.
    static PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    pub(super) fn pause_in_checkpoint(stage: u8) {
        if PAUSE_CHECKPOINTS.load(Ordering::Relaxed) == stage {
            PAUSED.store(true, Ordering::Release);
            // Longer than any loaded machine needs for the rest of the test: the child aborts
            // while this sleeps.
            std::thread::sleep(Duration::from_secs(60));
        }
    }

    /// An abort while a checkpoint is moving the old log file into sled (writes meanwhile
    /// going to the other file) loses nothing acknowledged: reads during the checkpoint see
    /// every write, and the restart replays the end of one file and the start of the other.
    #[test]
    fn an_abort_during_a_checkpoint_loses_nothing() {
        abort_during_a_checkpoint(1, "an_abort_during_a_checkpoint_loses_nothing");
    }

    /// The same, with the abort after the checkpoint moved its writes into sled and wrote
    /// their large values to the value log, before either was made durable: the restart
    /// replays the log, and the values are appended again over what the abort left.
    #[test]
    fn an_abort_after_a_checkpoint_wrote_large_values_loses_nothing() {
        abort_during_a_checkpoint(
            2,
            "an_abort_after_a_checkpoint_wrote_large_values_loses_nothing",
        );
    }

    fn abort_during_a_checkpoint(stage: u8, name: &str) {
        let child = format!("PROVISIO_TEST_CHECKPOINT_CHILD_{stage}");
        if let Ok(dir) = std::env::var(&child) {
            PAUSE_CHECKPOINTS.store(stage, Ordering::Relaxed);
            child_store(&dir, |store| async move {
                // The checkpoint started near the 42nd write is held until after the abort.
                write_numbered(&store, 60).await;
                // The checkpoint starts on its own thread: on a loaded machine it may not
                // have frozen the overlay yet when the writes return.
                let started = std::time::Instant::now();
                while read_lock(&store.shared.overlays).frozen.is_none()
                    && started.elapsed() < Duration::from_secs(30)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                assert!(
                    read_lock(&store.shared.overlays).frozen.is_some(),
                    "a checkpoint is running"
                );
                assert_eq!(numbered_keys(&store), numbered_keys_left(60));
                assert_eq!(
                    store.get(Space::Journal, &0u32.to_be_bytes()).unwrap(),
                    None
                );
                assert!(store
                    .get(Space::Journal, &1u32.to_be_bytes())
                    .unwrap()
                    .is_some());
                std::process::abort();
            });
        }
        let dir = tempfile_dir();
        run_aborting_child(name, &child, &dir);
        for _ in 0..2 {
            let store = SledStore::open(&dir).unwrap();
            assert_eq!(numbered_keys(&store), numbered_keys_left(60));
            for (_, v) in store.scan(Space::Journal, b"").unwrap() {
                assert_eq!(v, vec![7; 100_000]);
            }
        }
        remove_store(&dir);
    }

    /// An abort after a collection of the value log copied the live entries of a mostly
    /// dead segment and swapped their pointers in sled, before sled was made durable (so
    /// the restart may find old pointers, new ones, or a mix): every value reads back,
    /// because the collected segment is removed only once sled is durable.
    #[test]
    fn an_abort_after_a_collection_swapped_pointers_loses_nothing() {
        const CHILD: &str = "PROVISIO_TEST_COLLECTION_CHILD";
        let value = |i: u32| vec![(i % 251) as u8; 1024 * 1024];
        let kept = |i: u32| i.is_multiple_of(4);
        if let Ok(dir) = std::env::var(CHILD) {
            PAUSE_CHECKPOINTS.store(3, Ordering::Relaxed);
            child_store(&dir, |store| async move {
                let mut b = Batch::new();
                for i in (0..40u32).filter(|i| !kept(*i)) {
                    b.delete(Space::Journal, i.to_be_bytes().to_vec());
                }
                store.write(b, true).await.unwrap();
                let full = key(Space::Journal, &0u32.to_be_bytes());
                let before = store.tree.get(&full).unwrap().unwrap().to_vec();
                if let Some(signals) = lock(&store.signals).as_ref() {
                    signals.send(Signal::Checkpoint).unwrap();
                }
                let started = std::time::Instant::now();
                while !PAUSED.load(Ordering::Acquire) && started.elapsed() < Duration::from_secs(60)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                assert!(PAUSED.load(Ordering::Acquire), "a collection ran");
                let after = store.tree.get(&full).unwrap().unwrap().to_vec();
                assert_ne!(before, after, "the collection moved key 0");
                std::process::abort();
            });
        }
        let dir = tempfile_dir();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = SledStore::open(&dir).unwrap();
            for i in 0..40u32 {
                let mut b = Batch::new();
                b.put(Space::Journal, i.to_be_bytes().to_vec(), value(i));
                store.write(b, false).await.unwrap();
            }
            store.sync().await.unwrap();
            store.close();
        });
        run_aborting_child(
            "an_abort_after_a_collection_swapped_pointers_loses_nothing",
            CHILD,
            &dir,
        );
        for _ in 0..2 {
            let store = SledStore::open(&dir).unwrap();
            let left = store.scan(Space::Journal, b"").unwrap();
            let keys: Vec<u32> = left
                .iter()
                .map(|(k, _)| u32::from_be_bytes(k[..4].try_into().unwrap()))
                .collect();
            assert_eq!(keys, (0..40u32).filter(|i| kept(*i)).collect::<Vec<_>>());
            for (k, v) in left {
                let i = u32::from_be_bytes(k[..4].try_into().unwrap());
                assert!(v == value(i), "key {i} reads back whole");
            }
        }
        remove_store(&dir);
    }

    /// The replay at open after a crash applies the log's net writes: journal values put
    /// and deleted again before the crash (a transaction's per-record keys, compacted into
    /// chunks) never reach the value log, while the values still there after the crash do.
    #[test]
    fn a_replay_leaves_values_deleted_before_the_crash_out_of_the_value_log() {
        const CHILD: &str = "PROVISIO_TEST_REPLAY_NET_CHILD";
        let record = |i: u32| vec![(i % 251) as u8; 1024];
        if let Ok(dir) = std::env::var(CHILD) {
            child_store(&dir, |store| async move {
                // 150 records of 1 KiB, each deleted with the next put but every 100th: less
                // log than a checkpoint waits for (256 KiB), so the open replays all of it.
                for i in 0..150u32 {
                    let mut b = Batch::new();
                    b.put(Space::Journal, i.to_be_bytes().to_vec(), record(i));
                    if i > 0 && (i - 1) % 100 != 0 {
                        b.delete(Space::Journal, (i - 1).to_be_bytes().to_vec());
                    }
                    store.write(b, true).await.unwrap();
                }
                std::process::abort();
            });
        }
        let dir = tempfile_dir();
        run_aborting_child(
            "a_replay_leaves_values_deleted_before_the_crash_out_of_the_value_log",
            CHILD,
            &dir,
        );
        let kept: Vec<u32> = (0..150u32).filter(|i| i % 100 == 0 || *i == 149).collect();
        for _ in 0..2 {
            let store = SledStore::open(&dir).unwrap();
            // Right after the replay (a close collects dead bytes): 3 records are left, the
            // 147 deleted ones (~150 KiB) were not appended.
            let in_log = store.values.bytes();
            assert!(in_log < 16 * 1024, "{in_log} bytes in the value log");
            let left = store.scan(Space::Journal, b"").unwrap();
            let keys: Vec<u32> = left
                .iter()
                .map(|(k, _)| u32::from_be_bytes(k[..4].try_into().unwrap()))
                .collect();
            assert_eq!(keys, kept);
            for (k, v) in left {
                assert_eq!(v, record(u32::from_be_bytes(k[..4].try_into().unwrap())));
            }
            drop(store);
        }
        remove_store(&dir);
    }

    /// A store written by a newer provisio (its state file or sled's Meta naming a later
    /// format) is refused with an error that says so, and left as it was: once the format
    /// is one this version reads again, it opens with everything in it.
    #[tokio::test]
    async fn a_store_of_a_newer_format_is_refused_and_left_as_it_was() {
        let dir = tempfile_dir();
        {
            let store = SledStore::open(&dir).unwrap();
            let mut b = Batch::new();
            b.put(Space::Journal, b"k".to_vec(), vec![5; 10_000]);
            store.write(b, true).await.unwrap();
            assert_eq!(meta_format(&dir, &store.tree).unwrap(), Some(STORE_FORMAT));
            store.close();
        }
        assert_eq!(Identity::read_side(&dir).unwrap().format, STORE_FORMAT);
        let side_file = Identity::side_file(&dir);
        let side = std::fs::read_to_string(&side_file).unwrap();
        let newer = side.replace(
            &format!("\"format\":{STORE_FORMAT}"),
            &format!("\"format\":{}", STORE_FORMAT + 1),
        );
        assert_ne!(newer, side);
        std::fs::write(&side_file, &newer).unwrap();
        let files = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
            let mut out = Vec::new();
            for e in walk(dir) {
                out.push((e.clone(), std::fs::read(&e).unwrap()));
            }
            out.sort();
            out
        };
        let before = files(&dir);
        let err = match SledStore::open(&dir) {
            Ok(_) => panic!("a newer store is refused"),
            Err(e) => e,
        };
        assert!(
            matches!(err, StoreError::Newer { found, supported, .. } if found == STORE_FORMAT + 1 && supported == STORE_FORMAT),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&dir.display().to_string()) && text.contains("newer provisio"),
            "{text}"
        );
        assert_eq!(files(&dir), before, "nothing in the store changed");
        assert_eq!(std::fs::read_to_string(&side_file).unwrap(), newer);
        // The same through sled's Meta space (a store copied without its state file).
        std::fs::write(&side_file, &side).unwrap();
        {
            let store = SledStore::open(&dir).unwrap();
            let mut b = Batch::new();
            b.put(
                Space::Meta,
                FORMAT_KEY.to_vec(),
                (STORE_FORMAT + 1).to_be_bytes().to_vec(),
            );
            store.write(b, true).await.unwrap();
            store.close();
        }
        std::fs::remove_file(&side_file).unwrap();
        let err = match SledStore::open(&dir) {
            Ok(_) => panic!("a newer store is refused"),
            Err(e) => e,
        };
        assert!(matches!(err, StoreError::Newer { .. }), "{err}");
        // Back to this version's format: everything reads back.
        {
            let (db, tree) = open_sled(&dir).unwrap();
            tree.insert(key(Space::Meta, FORMAT_KEY), &STORE_FORMAT.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(&dir).unwrap();
        assert_eq!(
            store.get(Space::Journal, b"k").unwrap(),
            Some(vec![5; 10_000])
        );
        drop(store);
        remove_store(&dir);
    }

    /// Every file below `dir`.
    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    /// When the disk refuses a write (here a file-size limit, as a full disk would), the
    /// write fails with a clear error, every later write is refused until a restart, and
    /// every write acknowledged before is there after reopening.
    #[test]
    fn a_refused_write_poisons_the_store_and_loses_nothing_acknowledged() {
        const CHILD: &str = "PROVISIO_TEST_FULL_DISK_CHILD";
        if let Ok(dir) = std::env::var(CHILD) {
            child_store(&dir, |store| async move {
                let mut acked = 0u32;
                let mut first_error = None;
                for i in 0..400u32 {
                    let mut b = Batch::new();
                    b.put(Space::Journal, i.to_be_bytes().to_vec(), vec![1; 16 * 1024]);
                    match store.write(b, true).await {
                        Ok(()) => acked = i + 1,
                        Err(e) => {
                            first_error = Some(e.to_string());
                            break;
                        }
                    }
                }
                let first_error = first_error.expect("the size limit was never hit");
                let mut b = Batch::new();
                b.put(Space::Journal, b"after".to_vec(), b"x".to_vec());
                let later = store.write(b, false).await.unwrap_err().to_string();
                let one_line = |m: &str| m.replace('\n', " ");
                println!(
                    "ACKED={acked}\nFIRST={}\nLATER={}",
                    one_line(&first_error),
                    one_line(&later)
                );
                std::process::exit(0);
            });
        }
        let dir = tempfile_dir();
        let exe = std::env::current_exe().unwrap();
        // SIGXFSZ ignored: a write past the limit then fails with EFBIG, like ENOSPC.
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(r#"trap '' XFSZ; ulimit -f 2048; exec "$0" --exact store::sled_store::tests::a_refused_write_poisons_the_store_and_loses_nothing_acknowledged --nocapture"#)
            .arg(&exe)
            .env(CHILD, &dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in {stdout}"))
                .to_string()
        };
        let acked: u32 = field("ACKED").parse().unwrap();
        assert!(acked > 10, "{stdout}");
        assert!(field("FIRST").contains("too large"), "{stdout}");
        assert!(
            field("LATER").contains("until provisio is restarted"),
            "{stdout}"
        );
        let store = SledStore::open(&dir).unwrap();
        let rows = store.scan(Space::Journal, b"").unwrap();
        for i in 0..acked {
            assert!(
                rows.iter().any(|(k, _)| k == &i.to_be_bytes()),
                "acknowledged write {i} is missing ({} rows)",
                rows.len()
            );
        }
        drop(store);
        remove_store(&dir);
    }

    /// A log that does not continue from what sled holds means lost records: the store is
    /// refused as damaged, and left as it was.
    #[tokio::test]
    async fn a_log_with_a_gap_is_reported_as_damage() {
        let dir = tempfile_dir();
        let writes = {
            let store = SledStore::open(&dir).unwrap();
            let mut b = Batch::new();
            b.put(Space::Journal, b"k".to_vec(), b"v".to_vec());
            store.write(b, true).await.unwrap();
            drop(store);
            let store = SledStore::open(&dir).unwrap();
            let n = read_write_count(&dir, &store.tree).unwrap();
            drop(store);
            n
        };
        let mut frame = Vec::new();
        let mut b = Batch::new();
        b.put(Space::Journal, b"later".to_vec(), b"x".to_vec());
        encode_frame(&mut frame, writes + 3, &b);
        let wal = dir.join(WAL_FILES[0]);
        let mut bytes = std::fs::read(&wal).unwrap();
        bytes[..frame.len()].copy_from_slice(&frame);
        std::fs::write(&wal, &bytes).unwrap();
        let err = SledStore::open(&dir).expect_err("a damaged store");
        let msg = err.to_string();
        assert!(msg.contains("records were lost"), "{msg}");
        assert!(msg.contains("nothing was reset"), "{msg}");
        remove_store(&dir);
    }

    /// The child side of a test that ends its own process: `body` gets the store in `dir`
    /// on a one-thread runtime.
    /// Large values live in the value log, not in sled: sled's own file stays small, every
    /// read (point, prefix, range, both directions) returns them whole after a reopen, and
    /// a short value that begins like a pointer is not mistaken for one.
    #[tokio::test]
    async fn large_values_live_in_the_value_log_and_read_back() {
        let dir = tempfile_dir();
        let value = |i: u32| vec![(i % 251) as u8; 6 * 1024 + i as usize];
        let lookalike = values::MAGIC.to_vec();
        {
            let store = SledStore::open(&dir).unwrap();
            for i in 0..2_000u32 {
                let mut b = Batch::new();
                b.put(Space::Journal, i.to_be_bytes().to_vec(), value(i));
                b.put(Space::Txns, i.to_be_bytes().to_vec(), b"small".to_vec());
                store.write(b, false).await.unwrap();
            }
            let mut b = Batch::new();
            b.put(Space::State, b"odd".to_vec(), lookalike.clone());
            store.write(b, true).await.unwrap();
            store.close();
        }
        let kept: u64 = (0..2_000u32).map(|i| value(i).len() as u64).sum();
        let logged = values::folder_bytes(&dir.join(values::FOLDER));
        assert!(
            logged >= kept && logged < kept + kept / 20,
            "{logged} for {kept}"
        );
        let sled_db = std::fs::metadata(dir.join("db")).unwrap().len();
        assert!(
            sled_db < kept / 4,
            "sled holds {sled_db} bytes for {kept} of values"
        );
        let store = SledStore::open(&dir).unwrap();
        for i in [0u32, 1, 999, 1_999] {
            assert_eq!(
                store.get(Space::Journal, &i.to_be_bytes()).unwrap(),
                Some(value(i))
            );
        }
        let all = store.scan(Space::Journal, b"").unwrap();
        assert_eq!(all.len(), 2_000);
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, (_, v))| *v == value(i as u32)));
        let start = 10u32.to_be_bytes();
        let back = store
            .scan_range(Space::Journal, KeyRange::new(&start, None), 3, true)
            .unwrap();
        assert_eq!(back[0].1, value(1_999));
        assert_eq!(back[2].1, value(1_997));
        assert_eq!(store.get(Space::State, b"odd").unwrap(), Some(lookalike));
        assert_eq!(
            store.get(Space::Txns, &5u32.to_be_bytes()).unwrap(),
            Some(b"small".to_vec())
        );
        drop(store);
        remove_store(&dir);
    }

    /// Deleting most large values (a `tx prune`) frees their space: the close collects the
    /// value log's segments, and what was kept reads back after a reopen.
    #[tokio::test]
    async fn deleted_large_values_give_their_space_back() {
        let dir = tempfile_dir();
        let value = |i: u32| vec![(i % 253) as u8; 64 * 1024];
        let n = 1_200u32; // 75 MiB: more than two segments
        {
            let store = SledStore::open(&dir).unwrap();
            for i in 0..n {
                let mut b = Batch::new();
                b.put(Space::Journal, i.to_be_bytes().to_vec(), value(i));
                store.write(b, false).await.unwrap();
            }
            store.sync().await.unwrap();
            store.close();
        }
        let full = values::folder_bytes(&dir.join(values::FOLDER));
        {
            let store = SledStore::open(&dir).unwrap();
            for i in (0..n).filter(|i| i % 10 != 0) {
                let mut b = Batch::new();
                b.delete(Space::Journal, i.to_be_bytes().to_vec());
                store.write(b, false).await.unwrap();
            }
            store.sync().await.unwrap();
            store.close();
        }
        let after = values::folder_bytes(&dir.join(values::FOLDER));
        assert!(after < full / 5, "{full} -> {after} bytes of value log");
        let store = SledStore::open(&dir).unwrap();
        let left = store.scan(Space::Journal, b"").unwrap();
        assert_eq!(left.len(), (n / 10) as usize);
        for (k, v) in left {
            let i = u32::from_be_bytes(k[..4].try_into().unwrap());
            assert_eq!(i % 10, 0);
            assert_eq!(v, value(i));
        }
        drop(store);
        remove_store(&dir);
    }

    /// A reader holding a pointer into a segment that a collection removed meanwhile reads
    /// the key's new pointer instead of failing.
    #[tokio::test]
    async fn a_pointer_into_a_collected_segment_is_read_again() {
        let dir = tempfile_dir();
        let store = SledStore::open(&dir).unwrap();
        let value = |i: u32| vec![i as u8; 1024 * 1024];
        for i in 0..40u32 {
            let mut b = Batch::new();
            b.put(Space::Journal, i.to_be_bytes().to_vec(), value(i));
            store.write(b, false).await.unwrap();
        }
        store.sync().await.unwrap();
        store.checkpoint_now();
        let full = key(Space::Journal, &0u32.to_be_bytes());
        let stale = store.tree.get(&full).unwrap().unwrap().to_vec();
        assert!(values::is_pointer(&stale));
        let mut b = Batch::new();
        for i in 1..40u32 {
            b.delete(Space::Journal, i.to_be_bytes().to_vec());
        }
        store.write(b, true).await.unwrap();
        store.checkpoint_now();
        let collected = store.values.collect(&store.tree, u64::MAX).unwrap();
        assert!(!collected.is_empty());
        store.values.remove(&collected).unwrap();
        assert!(
            store.values.read(&stale).unwrap().is_none(),
            "the old segment is gone"
        );
        assert_ne!(store.tree.get(&full).unwrap().unwrap().to_vec(), stale);
        assert_eq!(store.resolve(&full, stale, None).unwrap(), Some(value(0)));
        assert_eq!(
            store.get(Space::Journal, &0u32.to_be_bytes()).unwrap(),
            Some(value(0))
        );
        drop(store);
        remove_store(&dir);
    }

    fn child_store<F: std::future::Future<Output = ()>>(
        dir: &str,
        body: impl FnOnce(SledStore) -> F,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(body(SledStore::open(Path::new(dir)).unwrap()));
    }

    /// A store folder `journal` in a fresh folder of its own, so that its state file
    /// (`journal.state`, beside it) goes with it: see [`remove_store`].
    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir()
            .join(format!("provisio-store-{}", uuid::Uuid::now_v7()))
            .join("journal");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Removes a store made by [`tempfile_dir`], its state file included.
    fn remove_store(dir: &Path) {
        let parent = dir.parent().expect("a store made by tempfile_dir");
        let name = parent.file_name().unwrap_or_default().to_string_lossy();
        assert!(
            name.starts_with("provisio-store-"),
            "not a test store: {}",
            dir.display()
        );
        let _ = std::fs::remove_dir_all(parent);
    }
}

/// The store's identity and write count, also kept in a small file beside it
/// (`<store>.state`), so that a store that comes back empty or shorter than at its last clean
/// shutdown is reported as damaged instead of being silently treated as new.
#[derive(serde::Serialize, serde::Deserialize)]
struct Identity {
    id: String,
    writes: u64,
    clean: bool,
    /// The store's format ([`STORE_FORMAT`]; 0 in a state file written before format 2).
    #[serde(default)]
    format: u32,
}

impl Identity {
    /// The state file beside the store, if it can be read.
    fn read_side(path: &Path) -> Option<Identity> {
        serde_json::from_slice(&std::fs::read(Self::side_file(path)).ok()?).ok()
    }

    fn side_file(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".state");
        PathBuf::from(p)
    }

    fn write_side(path: &Path, ident: &Identity) -> Result<(), StoreError> {
        let file = Self::side_file(path);
        let tmp = file.with_extension("state.tmp");
        let text = serde_json::to_vec(ident).map_err(|e| StoreError::Io(e.to_string()))?;
        std::fs::write(&tmp, text)
            .and_then(|_| File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &file))
            .map_err(|e| StoreError::Io(format!("cannot write `{}`: {e}", file.display())))?;
        if let Some(parent) = file.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// Checks the store, holding `writes` writes once its log is replayed, against its side
    /// file.
    fn check(path: &Path, tree: &sled::Tree, db: &sled::Db, writes: u64) -> Result<(), StoreError> {
        let damaged = |message: String| StoreError::Corrupt {
            path: path.display().to_string(),
            message,
        };
        let id = tree
            .get(key(Space::Meta, b"id"))
            .map_err(|e| map_err(path, e))?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        let side = Self::read_side(path);
        let id = match (id, side) {
            (None, None) => {
                // A new store: give it an identity.
                let id = uuid::Uuid::now_v7().to_string();
                tree.insert(key(Space::Meta, b"id"), id.as_bytes()).map_err(|e| map_err(path, e))?;
                db.flush().map_err(|e| map_err(path, e))?;
                File::open(path.join("db")).and_then(|f| f.sync_all()).map_err(|e| StoreError::Io(e.to_string()))?;
                id
            }
            (None, Some(_)) => {
                return Err(damaged(
                    "its identity record is gone: the journal came back empty (damaged, truncated or replaced)".into(),
                ))
            }
            (Some(id), Some(side)) if side.id != id => {
                return Err(damaged(format!("it is not the store this data folder had (identity {} instead of {})", id, side.id)))
            }
            (Some(_), Some(side)) if side.clean && writes < side.writes => {
                return Err(damaged(format!(
                    "it holds {writes} writes but had {} at its last clean shutdown: records were lost",
                    side.writes
                )))
            }
            (Some(id), _) => id,
        };
        // From here on the store may hold what only this format reads (made durable with
        // the replay's writes).
        if meta_format(path, tree)? != Some(STORE_FORMAT) {
            tree.insert(key(Space::Meta, FORMAT_KEY), &STORE_FORMAT.to_be_bytes())
                .map_err(|e| map_err(path, e))?;
        }
        // Until the next clean close, a lower count is not proof of loss (a crash may precede
        // the last sync), so the side file says "not clean".
        Self::write_side(
            path,
            &Identity {
                id,
                writes,
                clean: false,
                format: STORE_FORMAT,
            },
        )
    }

    /// Records a clean close in the side file; returns whether it is recorded.
    fn record_clean_close(path: &Path, tree: &sled::Tree, writes: u64) -> bool {
        if let Ok(Some(id)) = tree.get(key(Space::Meta, b"id")) {
            return Self::write_side(
                path,
                &Identity {
                    id: String::from_utf8_lossy(&id).into_owned(),
                    writes,
                    clean: true,
                    format: STORE_FORMAT,
                },
            )
            .is_ok();
        }
        false
    }
}

/// The store's state file (`<store>.state`) as found: its identity, its write count, and
/// whether that count is of a clean close (no process holds the store, nothing to replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SideState {
    /// The store's identity.
    pub(crate) id: String,
    /// Its writes at its last clean close (or at its last open, when not clean).
    pub(crate) writes: u64,
    /// Closed cleanly, and not opened since.
    pub(crate) clean: bool,
}

/// Reads the state file of the store in `path`, without opening the store.
pub(crate) fn side_state(path: &Path) -> Option<SideState> {
    let side = Identity::read_side(path)?;
    Some(SideState {
        id: side.id,
        writes: side.writes,
        clean: side.clean,
    })
}
