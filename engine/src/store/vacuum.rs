//! Vacuum of the sled store: sled's database is rewritten into a fresh one, and the two
//! switched, when its files hold much more than it keeps.
//!
//! Why: sled 0.34 reuses the space of what was deleted but never gives it back, so after
//! `tx prune` removed most of a journal its files stay at their high-water mark (59 MiB for
//! 4.6 MiB kept after pruning 20,000 of 22,000 small transactions). The value log
//! (`values.rs`) gives its own space back; this is for what stays in sled (summaries, index
//! keys, audit entries, small values and the value log's pointers, copied as they are).
//!
//! When: [`vacuum`] runs on a closed store: at the end of `provisio tx prune` (which holds
//! the store alone), and at the store's open by a writer when a prune in a process that
//! kept the store open (a daemon) asked for it ([`FLAG`] in the Meta space); an open by a
//! process that only reads (`crate::SledStore::open_to_read`: `tx show`, `tx list` without
//! its listing file) leaves it to the next writer. It rewrites only when sled's
//! files are over [`FLOOR`] and more than [`RATIO`] times the bytes of the keys and values
//! they hold, so a healthy store costs one scan, and a small one only a `stat`.
//!
//! How, and why a crash at any point leaves one complete database: with the store's lock
//! held (sled's `flock` of its `db` file, which every opener takes), the copy is written
//! to `vacuum.new/` in the store folder (tree by tree, in key order, flushed every few MiB,
//! both databases with a small page cache), made durable, and locked too. Then:
//! 1. the marker `vacuum.switching` is created (durably): from here the new database wins;
//! 2. sled's files other than `db` (`conf`, `blobs/`, `snap.*`) move to `vacuum.old/`;
//! 3. the marker is renamed `vacuum.installing`;
//! 4. the new database's files other than `db` move into the store folder, then its `db`
//!    replaces the old one (one rename: the store's `db` is never missing, and is always
//!    locked by this process until the switch is done);
//! 5. the marker is removed, then `vacuum.old/` and `vacuum.new/`.
//!
//! [`repair`], at every open before sled is opened, finishes a switch a crash interrupted:
//! with `vacuum.switching`, steps 2–5; with `vacuum.installing`, steps 4–5; with neither,
//! it removes what is left (an unfinished copy, or old files already replaced). Each step
//! is a set of renames that can be made again. The write-ahead log, the value log and the
//! listing files are the store's own and stay where they are: the copy holds the same
//! write counter, identity and value log hints, so they describe it as they described the
//! old one.

use super::sled_store::{map_err, open_sled_caching, sync_dir};
use super::{Space, StoreError};
use fs2::FileExt;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Below this many bytes of sled files, a store is never rewritten: a small store's files
/// are mostly sled's fixed costs, and the rewrite would gain little.
pub const FLOOR: u64 = 8 * 1024 * 1024;

/// A store is rewritten once sled's files are more than this many times what they hold.
pub const RATIO: u64 = 3;

/// The Meta key a prune leaves when the store could not be rewritten then (it stayed open):
/// the next open looks at it ([`crate::store::SledStore::open`]).
pub(crate) const FLAG: &[u8] = b"vacuum";

/// The copy being written, then the new database's files until they are moved in.
const NEW: &str = "vacuum.new";
/// The old database's files once they are moved out.
const OLD: &str = "vacuum.old";
/// Marker: the copy is complete; sled's old files are being moved out.
const SWITCHING: &str = "vacuum.switching";
/// Marker: sled's old files (but `db`) are out; the new ones are being moved in.
const INSTALLING: &str = "vacuum.installing";

/// Bytes copied between two flushes of the new database: bounds what sled holds dirty.
const FLUSH_BYTES: u64 = 4 * 1024 * 1024;

/// The page cache of both databases while the vacuum runs. Every page is read once (the
/// count, then the copy) or written once, so a cache saves nothing, and sled's nominal
/// capacity holds several times as much in memory: the peak RSS of a rewrite of 100,000
/// kept transactions was 189 MiB with the store's 8 MiB, 152 with 1 MiB, 146 with 256 KiB
/// (10,000: 104, 101, 95); the time did not change. What still grows with the store is
/// sled's own per-page state of the two open databases (BENCHMARKS.md, session 17).
const CACHE_BYTES: u64 = 1024 * 1024;

/// What a rewrite of sled's database ([`crate::SledStore::vacuum`]) found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct Vacuumed {
    /// Bytes of sled's files before (allocated on disk: `db`, `blobs/`, `snap.*`, `conf`).
    pub before: u64,
    /// The same after (equal to `before` when nothing was rewritten).
    pub after: u64,
    /// Bytes of the keys and values sled holds (`None`: not counted, its files being under
    /// [`crate::SledStore::VACUUM_FLOOR`]).
    pub live: Option<u64>,
    /// Whether the database was rewritten.
    pub rewritten: bool,
    /// Seconds the vacuum took.
    pub seconds: f64,
}

/// At most what a fresh copy of `live` bytes of keys and values takes in sled's files.
/// Measured (sled 0.34, keys and values of ~300 bytes written in key order): 5.5 MB for
/// 1.25 MB (mostly fixed costs), 28.5 for 12.5 (2.3x), 106 for 50 (2.1x).
fn fresh_size(live: u64) -> u64 {
    live.saturating_mul(5) / 2 + 4 * 1024 * 1024
}

/// Whether files of `before` bytes holding `live` are worth rewriting: over [`FLOOR`],
/// over [`RATIO`] times what they hold, and at least half as large again as a fresh copy
/// would be (so that a small store, whose fresh copy is mostly sled's fixed costs, is not
/// rewritten at every prune for nothing).
fn worth_it(before: u64, live: u64) -> bool {
    before >= FLOOR
        && before > RATIO.saturating_mul(live)
        && before >= fresh_size(live).saturating_mul(3) / 2
}

/// The Meta space's key of [`FLAG`] in sled.
pub(crate) fn flag_key() -> Vec<u8> {
    let mut k = vec![Space::Meta.tag()];
    k.extend_from_slice(FLAG);
    k
}

/// Rewrites the sled database of the closed store in `path` when its files are over
/// [`FLOOR`] and more than [`RATIO`] times what they hold (always, with `force`), and clears
/// [`FLAG`]. Fails with [`StoreError::Locked`] when a process holds the store. A failure
/// before the switch leaves the old database as it was (its unfinished copy is removed
/// now, or by the next open).
pub fn vacuum(path: &Path, force: bool) -> Result<Vacuumed, StoreError> {
    let started = Instant::now();
    if !path.join("db").exists() {
        // sled would make an empty database here, without the store's identity.
        return Err(StoreError::Io(format!(
            "there is no journal store in `{}`",
            path.display()
        )));
    }
    repair(path)?;
    let (db, tree) = open_sled_caching(path, CACHE_BYTES)?;
    if tree
        .remove(flag_key())
        .map_err(|e| map_err(path, e))?
        .is_some()
    {
        // Asked once: a failed attempt is not retried at every open.
        db.flush().map_err(|e| map_err(path, e))?;
        sync_file(&path.join("db"))?;
    }
    drop(tree);
    let before = sled_bytes(path);
    let mut out = Vacuumed {
        before,
        after: before,
        live: None,
        rewritten: false,
        seconds: 0.0,
    };
    if before < FLOOR && !force {
        out.seconds = started.elapsed().as_secs_f64();
        return Ok(out);
    }
    let live = live_bytes(path, &db)?;
    out.live = Some(live);
    if !worth_it(before, live) && !force {
        out.seconds = started.elapsed().as_secs_f64();
        return Ok(out);
    }
    let new = path.join(NEW);
    if path.join(SWITCHING).exists() || path.join(INSTALLING).exists() {
        // `repair` finished any switch under the lock; one now is not this process's.
        return Err(StoreError::Io(format!(
            "a rewrite of the journal database in `{}` is under way elsewhere",
            path.display()
        )));
    }
    remove_dir(&new)?;
    remove_dir(&path.join(OLD))?;
    let built = build(path, &db, &new);
    // The old database is closed before the switch: nothing it could still write (a flush,
    // a snapshot) may land among the new files. Its lock is taken again at once, by hand.
    // A process opening the store in between finds `vacuum.new` and goes through `repair`,
    // which needs the copy's lock too (held here) and refuses: it cannot open the old
    // database behind the copy's back. It may hold the old lock for `LOCK_WAIT` first,
    // hence the longer wait here.
    drop(db);
    let locks = built.and_then(|new_lock| {
        step(1);
        match lock_waiting(&path.join("db"), SWITCH_LOCK_WAIT)? {
            Some(Lock::Held(old_lock)) => Ok((old_lock, new_lock)),
            // Another process took the store in between: it has it, as it was.
            _ => Err(StoreError::Locked {
                path: path.display().to_string(),
            }),
        }
    });
    let _locks = match locks {
        Ok(locks) => locks,
        Err(e) => {
            let _ = remove_dir(&new);
            return Err(e);
        }
    };
    File::create(path.join(SWITCHING))
        .and_then(|f| f.sync_all())
        .map_err(|e| io(path, "cannot mark the switch", e))?;
    sync_dir(path)?;
    step(2);
    finish(path)?;
    out.after = sled_bytes(path);
    out.rewritten = true;
    out.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        before = out.before,
        after = out.after,
        live,
        seconds = out.seconds,
        "rewrote the journal's sled database"
    );
    Ok(out)
}

/// Finishes or undoes a vacuum a crash interrupted (see the module's documentation); a
/// no-op (a few `stat`s) when there is none. Called by the store's open before sled is
/// opened. When another process holds the store, fails with [`StoreError::Locked`].
pub(crate) fn repair(path: &Path) -> Result<(), StoreError> {
    let leftover = [NEW, OLD, SWITCHING, INSTALLING]
        .iter()
        .any(|name| path.join(name).symlink_metadata().is_ok());
    if !leftover {
        return Ok(());
    }
    // The store's lock: a process vacuuming holds it from before its copy to the end. Held
    // elsewhere, the store must not be opened either (sled would open an old `db` without
    // its other files): the open reports it in use. Waited for a moment: sled's I/O
    // threads may keep it a little after a close in this process.
    let busy = || StoreError::Locked {
        path: path.display().to_string(),
    };
    let _old_lock = lock_waiting(&path.join("db"), LOCK_WAIT)?.ok_or_else(busy)?;
    let _new_lock = lock_waiting(&path.join(NEW).join("db"), LOCK_WAIT)?.ok_or_else(busy)?;
    tracing::warn!(
        "finishing the rewrite of the journal's sled database that a stop interrupted in `{}`",
        path.display()
    );
    finish(path)
}

/// Steps 2–5 of the switch, from where the markers say it is; then removes what is left.
fn finish(path: &Path) -> Result<(), StoreError> {
    let new = path.join(NEW);
    let old = path.join(OLD);
    let switching = path.join(SWITCHING);
    let installing = path.join(INSTALLING);
    if switching.exists() {
        std::fs::create_dir_all(&old).map_err(|e| io(&old, "cannot create", e))?;
        for name in entries(path)? {
            if is_sled_file(&name) && name != "db" {
                rename(&path.join(&name), &old.join(&name))?;
                step(3);
            }
        }
        sync_dir(&old)?;
        sync_dir(path)?;
        rename(&switching, &installing)?;
        sync_dir(path)?;
        step(4);
    }
    if installing.exists() {
        if new.exists() {
            for name in entries(&new)? {
                if name != "db" {
                    rename(&new.join(&name), &path.join(&name))?;
                    step(5);
                }
            }
            sync_dir(path)?;
            if new.join("db").exists() {
                rename(&new.join("db"), &path.join("db"))?;
                sync_dir(path)?;
            }
            sync_dir(&new)?;
        }
        step(6);
        match std::fs::remove_file(&installing) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(io(&installing, "cannot remove", e))
            }
            _ => {}
        }
        sync_dir(path)?;
        step(7);
    }
    // No switch under way: an unfinished copy, or the files a finished one replaced.
    remove_dir(&new)?;
    remove_dir(&old)
}

/// Copies every tree of `db` (but [`FLAG`]) into a new database in `new`, makes it durable
/// and closes it; returns the lock taken on its `db` file.
fn build(path: &Path, db: &sled::Db, new: &Path) -> Result<File, StoreError> {
    std::fs::create_dir_all(new).map_err(|e| io(new, "cannot create", e))?;
    let (copy, _) = open_sled_caching(new, CACHE_BYTES)?;
    let flag = flag_key();
    let mut pending = 0u64;
    for name in db.tree_names() {
        let from = db.open_tree(&name).map_err(|e| map_err(path, e))?;
        let to = copy.open_tree(&name).map_err(|e| map_err(new, e))?;
        for entry in from.iter() {
            let (k, v) = entry.map_err(|e| map_err(path, e))?;
            if k.as_ref() == flag.as_slice() {
                continue;
            }
            pending += (k.len() + v.len()) as u64;
            to.insert(k, v).map_err(|e| map_err(new, e))?;
            if pending >= FLUSH_BYTES {
                copy.flush().map_err(|e| map_err(new, e))?;
                pending = 0;
            }
        }
    }
    copy.flush().map_err(|e| map_err(new, e))?;
    drop(copy);
    // sled syncs its `db` file as it closes; the rest is synced here, folders included.
    for name in entries(new)? {
        let file = new.join(&name);
        if name == "blobs" {
            for blob in entries(&file)? {
                sync_file(&file.join(blob))?;
            }
            sync_dir(&file)?;
        } else {
            sync_file(&file)?;
        }
    }
    sync_dir(new)?;
    sync_dir(path)?;
    #[cfg(test)]
    tests::hold_the_copys_lock_a_moment(&new.join("db"));
    // Waited for: sled's I/O threads keep the copy's file, and so its lock, open a moment
    // after its close returns (under load, for longer than one try: the crash test's child
    // failed here in 1 run of 15 with the machine loaded). Nothing else takes this lock but
    // a repair, which needs the store's lock first, held here by the old database.
    match lock_waiting(&new.join("db"), LOCK_WAIT)? {
        Some(Lock::Held(f)) => Ok(f),
        _ => Err(StoreError::Io(format!(
            "cannot lock the rewritten journal database in `{}`",
            new.display()
        ))),
    }
}

/// Bytes of the keys and values of every tree of `db`.
fn live_bytes(path: &Path, db: &sled::Db) -> Result<u64, StoreError> {
    let mut live = 0u64;
    for name in db.tree_names() {
        let tree = db.open_tree(&name).map_err(|e| map_err(path, e))?;
        for entry in tree.iter() {
            let (k, v) = entry.map_err(|e| map_err(path, e))?;
            live += (k.len() + v.len()) as u64;
        }
    }
    Ok(live)
}

/// Bytes allocated to sled's files in the store folder `path`.
pub fn sled_bytes(path: &Path) -> u64 {
    entries(path)
        .unwrap_or_default()
        .iter()
        .filter(|name| is_sled_file(name))
        .map(|name| allocated_bytes(&path.join(name)))
        .sum()
}

/// Bytes allocated on disk to the file at `path`, or to every file below it when it is a
/// folder (symbolic links not followed); 0 when it cannot be read.
pub fn allocated_bytes(path: &Path) -> u64 {
    let Ok(m) = path.symlink_metadata() else {
        return 0;
    };
    if m.is_dir() {
        std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| allocated_bytes(&e.path())).sum())
            .unwrap_or(0)
    } else {
        m.blocks() * 512
    }
}

/// Whether `name`, in the store folder, is one of sled's files (the rest is the store's
/// own: its write-ahead log, value log, listing files).
fn is_sled_file(name: &str) -> bool {
    matches!(name, "db" | "conf" | "blobs") || name.starts_with("snap.")
}

/// The names in a folder.
fn entries(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, "cannot read", e))? {
        let e = e.map_err(|e| io(dir, "cannot read", e))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

enum Lock {
    Held(#[allow(dead_code)] File),
    Absent,
    Busy,
}

/// How long a lock that sled's threads may still hold after a close is waited for.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// How long the old database's lock is waited for after its close, before the switch:
/// longer than [`LOCK_WAIT`], for which an opener's `repair` may hold it before it gives up.
const SWITCH_LOCK_WAIT: Duration = Duration::from_secs(10);

/// [`try_lock`], tried for up to `wait`; `None`: still held elsewhere.
fn lock_waiting(file: &Path, wait: Duration) -> Result<Option<Lock>, StoreError> {
    let started = Instant::now();
    loop {
        match try_lock(file)? {
            Lock::Busy if started.elapsed() < wait => std::thread::sleep(Duration::from_millis(20)),
            Lock::Busy => return Ok(None),
            held_or_absent => return Ok(Some(held_or_absent)),
        }
    }
}

/// Takes the lock sled takes on its `db` file (an exclusive `flock`), without waiting.
fn try_lock(file: &Path) -> Result<Lock, StoreError> {
    let f = match OpenOptions::new().read(true).write(true).open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Lock::Absent),
        Err(e) => return Err(io(file, "cannot open", e)),
    };
    match f.try_lock_exclusive() {
        Ok(()) => Ok(Lock::Held(f)),
        Err(_) => Ok(Lock::Busy),
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::rename(from, to).map_err(|e| {
        StoreError::Io(format!(
            "cannot move `{}` to `{}`: {e}",
            from.display(),
            to.display()
        ))
    })
}

fn remove_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(io(dir, "cannot remove", e)),
        _ => Ok(()),
    }
}

fn sync_file(file: &Path) -> Result<(), StoreError> {
    File::open(file)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(file, "cannot sync", e))
}

fn io(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} `{}`: {e}", path.display()))
}

/// Where a vacuum aborts the process, in the crash tests (0: nowhere).
#[cfg(test)]
static CRASH_AT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// A point between two steps of the switch: the crash tests abort there.
fn step(n: u8) {
    #[cfg(test)]
    if CRASH_AT.load(std::sync::atomic::Ordering::Relaxed) == n {
        std::process::abort();
    }
    let _ = n;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Batch, SledStore, Store};
    use std::path::PathBuf;

    /// Values of 1,000 bytes, every 50th one 3,000 (in the value log, behind a pointer).
    fn value(i: u32) -> Vec<u8> {
        let len = if i % 50 == 3 { 3000 } else { 1000 };
        (0..len).map(|j| (i as usize * 7 + j) as u8).collect()
    }

    fn key(i: u32) -> Vec<u8> {
        format!("txn-{i:08}").into_bytes()
    }

    /// Whether key `i` is kept by [`filled_then_pruned`].
    fn kept(i: u32) -> bool {
        i % 5 == 3
    }

    /// A store of `n` keys (most of them small, some large), of which all but a fifth are
    /// then deleted, closed.
    fn filled_then_pruned(n: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("provisio-vacuum-{}", uuid::Uuid::now_v7()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = SledStore::open(&dir).unwrap();
            for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
                let mut b = Batch::new();
                for &i in chunk {
                    b.put(Space::Txns, key(i), value(i));
                }
                store.write(b, false).await.unwrap();
            }
            store.sync().await.unwrap();
            drop(store);
            // Reopened, so the puts are in sled before the deletes: the file grows to hold them.
            let store = SledStore::open(&dir).unwrap();
            for chunk in (0..n).filter(|&i| !kept(i)).collect::<Vec<_>>().chunks(500) {
                let mut b = Batch::new();
                for &i in chunk {
                    b.delete(Space::Txns, key(i));
                }
                store.write(b, false).await.unwrap();
            }
            store.sync().await.unwrap();
        });
        dir
    }

    /// Every kept key reads back equal, and nothing else is there.
    fn check_kept(dir: &Path, n: u32) {
        let store = SledStore::open(dir).unwrap();
        let rows = store.scan(Space::Txns, b"").unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
            .filter(|&i| kept(i))
            .map(|i| (key(i), value(i)))
            .collect();
        assert_eq!(rows.len(), expected.len());
        assert!(rows == expected, "the kept keys and values read back equal");
        for i in [3, 53, 103, 150, 250, 2503].into_iter().filter(|&i| i < n) {
            let want = kept(i).then(|| value(i));
            assert_eq!(store.get(Space::Txns, &key(i)).unwrap(), want, "key {i}");
        }
    }

    /// Removes a test's store and its state file beside it.
    fn remove_store(dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
        let mut state = dir.as_os_str().to_owned();
        state.push(".state");
        let _ = std::fs::remove_file(state);
    }

    thread_local! {
        /// Set by a test: [`hold_the_copys_lock_a_moment`] holds the copy's lock for
        /// 300 ms, as sled's I/O threads may after its close.
        static HOLD_COPY_LOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Called by [`build`] after the copy is closed: in a test that asked for it, the copy's
    /// `db` is locked from another descriptor and released 300 ms later by a thread.
    pub(super) fn hold_the_copys_lock_a_moment(db: &Path) {
        if !HOLD_COPY_LOCK.with(|hold| hold.replace(false)) {
            return;
        }
        let Ok(Lock::Held(file)) = try_lock(db) else {
            panic!("the copy's lock could be taken");
        };
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(file);
        });
    }

    fn no_leftovers(dir: &Path) {
        for name in [NEW, OLD, SWITCHING, INSTALLING] {
            assert!(!dir.join(name).exists(), "`{name}` is gone");
        }
    }

    /// A store whose sled file kept its high-water mark after most of it was deleted is
    /// rewritten: the file ends under 3x what it holds, everything kept reads back equal
    /// (large values behind value log pointers too), and the store opens as the same store
    /// (identity and write counter checked against its state file).
    #[test]
    fn a_pruned_store_is_rewritten_smaller_and_keeps_everything() {
        // 10 MB kept: in a fresh copy, sled's fixed costs (~4 MiB) are then well under it.
        let n = 50_000;
        let dir = filled_then_pruned(n);
        let before = sled_bytes(&dir);
        assert!(
            before >= FLOOR,
            "the test's store is over the floor: {before}"
        );
        let done = vacuum(&dir, false).unwrap();
        assert!(done.rewritten, "{done:?}");
        let live = done.live.unwrap();
        assert!(
            before > RATIO * live,
            "before: {before} bytes for {live} live"
        );
        assert_eq!(done.after, sled_bytes(&dir));
        assert!(
            done.after < RATIO * live,
            "after: {} bytes for {live} live",
            done.after
        );
        no_leftovers(&dir);
        check_kept(&dir, n);
        // A second vacuum finds nothing worth doing.
        let again = vacuum(&dir, false).unwrap();
        assert!(!again.rewritten, "{again:?}");
        check_kept(&dir, n);
        remove_store(&dir);
    }

    /// A store under the floor is left as it is, and not even scanned.
    #[test]
    fn a_small_store_is_left_alone() {
        let dir = filled_then_pruned(500);
        let done = vacuum(&dir, false).unwrap();
        assert!(!done.rewritten);
        assert_eq!(done.live, None);
        check_kept(&dir, 500);
        remove_store(&dir);
    }

    /// A prune in a process that keeps the store open leaves a flag; the next open by a
    /// writer rewrites the database and clears it. An open by a process that only reads
    /// (`tx show`) leaves both as they are.
    #[test]
    fn the_open_after_a_prune_rewrites_the_database_but_not_a_readers() {
        let n = 20_000;
        let dir = filled_then_pruned(n);
        let before = sled_bytes(&dir);
        let store = SledStore::open(&dir).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(store.pruned())
            .unwrap();
        assert!(store.get(Space::Meta, FLAG).unwrap().is_some());
        drop(store);
        let old_db = std::fs::metadata(dir.join("db")).unwrap().ino();
        let reader = SledStore::open_to_read(&dir).unwrap();
        assert!(reader.get(Space::Meta, FLAG).unwrap().is_some());
        drop(reader);
        let inode = std::fs::metadata(dir.join("db")).unwrap().ino();
        assert_eq!(inode, old_db, "a reader did not rewrite the database");
        assert!(
            sled_bytes(&dir) * 2 > before,
            "a reader did not rewrite the database"
        );
        let store = SledStore::open(&dir).unwrap();
        assert_eq!(store.get(Space::Meta, FLAG).unwrap(), None);
        drop(store);
        let after = sled_bytes(&dir);
        assert!(after * 2 < before, "{before} -> {after}");
        no_leftovers(&dir);
        check_kept(&dir, n);
        remove_store(&dir);
    }

    /// A folder without a store is refused, and left without one.
    #[test]
    fn no_store_no_vacuum() {
        let dir = std::env::temp_dir().join(format!("provisio-vacuum-{}", uuid::Uuid::now_v7()));
        assert!(matches!(vacuum(&dir, true), Err(StoreError::Io(_))));
        assert!(!dir.exists());
    }

    /// The copy's lock, still held a moment after the copy is closed (as sled's I/O
    /// threads may hold it under load), is waited for: the rewrite is made. It was taken
    /// once, without waiting, and the crash test's child then failed in 1 run of 15 on a
    /// loaded machine ("cannot lock the rewritten journal database").
    #[test]
    fn a_copy_still_locked_a_moment_after_its_close_is_waited_for() {
        let dir = filled_then_pruned(2_000);
        HOLD_COPY_LOCK.with(|hold| hold.set(true));
        let done = vacuum(&dir, true).unwrap();
        assert!(done.rewritten, "{done:?}");
        assert!(!HOLD_COPY_LOCK.with(|hold| hold.get()), "the lock was held");
        no_leftovers(&dir);
        check_kept(&dir, 2_000);
        remove_store(&dir);
    }

    /// A vacuum cannot start while a process holds the store.
    #[test]
    fn a_held_store_is_not_vacuumed() {
        let dir = filled_then_pruned(2_000);
        let store = SledStore::open(&dir).unwrap();
        assert!(matches!(vacuum(&dir, true), Err(StoreError::Locked { .. })));
        drop(store);
        check_kept(&dir, 2_000);
        remove_store(&dir);
    }

    /// A process that aborts at any point of a vacuum leaves the old database or the new
    /// one, whole: the next open finishes or undoes the switch, and every kept key reads
    /// back equal. Each point is a child process of this test binary.
    #[test]
    fn an_abort_at_any_step_of_a_vacuum_loses_nothing() {
        const CHILD: &str = "PROVISIO_TEST_VACUUM_CHILD";
        const STAGE: &str = "PROVISIO_TEST_VACUUM_STAGE";
        let n = 6_000;
        if let Ok(dir) = std::env::var(CHILD) {
            let stage: u8 = std::env::var(STAGE).unwrap().parse().unwrap();
            CRASH_AT.store(stage, std::sync::atomic::Ordering::Relaxed);
            let done = vacuum(Path::new(&dir), true);
            panic!("the vacuum did not reach step {stage}: {done:?}");
        }
        for stage in 1..=7u8 {
            let dir = filled_then_pruned(n);
            let before = sled_bytes(&dir);
            let old_db = std::fs::metadata(dir.join("db")).unwrap().ino();
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "store::vacuum::tests::an_abort_at_any_step_of_a_vacuum_loses_nothing",
                    "--nocapture",
                ])
                .env(CHILD, &dir)
                .env(STAGE, stage.to_string())
                .status()
                .unwrap();
            assert_eq!(status.code(), None, "stage {stage}: the child aborted");
            // Open twice: the first finishes the switch, the second finds it done.
            check_kept(&dir, n);
            no_leftovers(&dir);
            check_kept(&dir, n);
            let inode = std::fs::metadata(dir.join("db")).unwrap().ino();
            if stage >= 2 {
                assert_ne!(inode, old_db, "stage {stage}: the switch was finished");
                assert!(sled_bytes(&dir) < before, "stage {stage}: smaller");
            } else {
                assert_eq!(inode, old_db, "stage {stage}: the old database stayed");
            }
            remove_store(&dir);
        }
    }
}
