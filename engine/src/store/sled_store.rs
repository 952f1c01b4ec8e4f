//! The sled 0.34 store: one tree, space-prefixed keys, atomic `apply_batch`, and a writer
//! thread that batches concurrent writes (group commit) and makes them durable through the
//! store's own write-ahead log.
//!
//! Durability: each group of batches is appended to `provisio.wal` in the store folder and
//! made durable with one `fdatasync` of that file before any durable write of the group is
//! acknowledged (see `wal.rs`). sled holds the indexed copy and is made durable only at
//! checkpoints: sled's own `flush()` writes with `sync_file_range`, which survives a killed
//! process but not a power cut, so a checkpoint follows it with `fdatasync` of sled's log
//! and of every blob file created since the last one (and fsyncs the folders that gained
//! entries); only then does the log start a new generation. At open, frames newer than
//! sled's write counter are replayed into sled and a checkpoint is taken. A checkpoint
//! happens when the log passes [`CHECKPOINT_BYTES`], after [`IDLE_CHECKPOINT`] without
//! writes, and at close.

use super::wal::{Frame, Wal};
use super::{Batch, KeyValue, Space, Store, StoreError};
use async_trait::async_trait;
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio::sync::oneshot;

/// The write-ahead log is folded into sled and restarted once it holds this much.
pub const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;

/// A checkpoint is also taken after this long without writes, so a restart after an idle
/// period replays nothing.
pub const IDLE_CHECKPOINT: Duration = Duration::from_secs(2);

/// The write-ahead log's file name inside the store folder.
const WAL_FILE: &str = "provisio.wal";

struct WriteRequest {
    batch: Batch,
    durable: bool,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The sled-backed store.
pub struct SledStore {
    tree: sled::Tree,
    sender: std::sync::Mutex<Option<mpsc::Sender<WriteRequest>>>,
    syncs: Arc<AtomicU64>,
    path: PathBuf,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
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

fn map_err(path: &Path, e: sled::Error) -> StoreError {
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

impl SledStore {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        std::fs::create_dir_all(path)
            .map_err(|e| StoreError::Io(format!("cannot create `{}`: {e}", path.display())))?;
        // sled may panic on some damaged files: that is a damaged store, not a crash.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let db = sled::Config::new()
                .path(path)
                .cache_capacity(64 * 1024 * 1024)
                .flush_every_ms(None)
                .open()?;
            let tree = db.open_tree("provisio")?;
            Ok::<_, sled::Error>((db, tree))
        }));
        let (db, tree) = match opened {
            Ok(r) => r.map_err(|e| map_err(path, e))?,
            Err(_) => {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    message: "the storage engine could not read its files".into(),
                })
            }
        };
        let sled_writes = read_write_count(path, &tree)?;
        let (mut wal, frames) = Wal::open(&path.join(WAL_FILE))?;
        let replay: Vec<Frame> = frames.into_iter().filter(|f| f.seq > sled_writes).collect();
        if let Some(first) = replay.first() {
            if first.seq != sled_writes + 1 {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    message: format!(
                        "its write-ahead log continues from write {} but the store holds only {sled_writes} writes: records were lost",
                        first.seq - 1
                    ),
                });
            }
        }
        let writes = replay.last().map_or(sled_writes, |f| f.seq);
        // Checked before the replay touches anything, so a damaged store stays as it was.
        Identity::check(path, &tree, &db, writes)?;
        for frame in &replay {
            tree.apply_batch(sled_batch(frame.seq, &frame.batch))
                .map_err(|e| map_err(path, e))?;
        }
        let mut syncer = Syncer::new(path)?;
        checkpoint(path, &db, &mut syncer, &mut wal)?;
        if !replay.is_empty() {
            tracing::info!(
                frames = replay.len(),
                "replayed the journal's write-ahead log after an unclean stop"
            );
        }
        let syncs = Arc::new(AtomicU64::new(0));
        let (sender, receiver) = mpsc::channel::<WriteRequest>();
        let writer_tree = tree.clone();
        let writer_db = db.clone();
        let writer_syncs = syncs.clone();
        let writer_path = path.to_path_buf();
        let mut write_count = writes;
        let handle = std::thread::Builder::new()
            .name("provisio-journal".into())
            .spawn(move || {
                loop {
                    let first = match receiver.recv_timeout(IDLE_CHECKPOINT) {
                        Ok(first) => first,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if wal.len() > 0 {
                                if let Err(e) =
                                    checkpoint(&writer_path, &writer_db, &mut syncer, &mut wal)
                                {
                                    tracing::warn!(error = %e, "journal checkpoint failed; the write-ahead log is kept");
                                }
                            }
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    // Group commit: take one request, then everything else already queued.
                    let mut group = vec![first];
                    while let Ok(more) = receiver.try_recv() {
                        group.push(more);
                    }
                    let mut results: Vec<Result<(), StoreError>> = Vec::with_capacity(group.len());
                    for req in &group {
                        // The counter is written with the batch, atomically: it is both the
                        // frame number in the log and, at open, the proof of what sled holds.
                        let seq = write_count + 1;
                        let applied = writer_tree
                            .apply_batch(sled_batch(seq, &req.batch))
                            .map_err(|e| map_err(&writer_path, e));
                        if applied.is_ok() {
                            write_count = seq;
                            wal.append(seq, &req.batch);
                        }
                        results.push(applied);
                    }
                    let mut logged = wal.write();
                    if logged.is_ok() && group.iter().any(|r| r.durable) {
                        logged = wal.sync();
                        writer_syncs.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Err(e) = logged {
                        for r in results.iter_mut() {
                            if r.is_ok() {
                                *r = Err(e.clone());
                            }
                        }
                    }
                    for (req, result) in group.into_iter().zip(results) {
                        let _ = req.done.send(result);
                    }
                    if wal.len() >= CHECKPOINT_BYTES {
                        if let Err(e) = checkpoint(&writer_path, &writer_db, &mut syncer, &mut wal) {
                            tracing::warn!(error = %e, "journal checkpoint failed; the write-ahead log is kept");
                        }
                    }
                }
                let closed = wal
                    .write()
                    .and_then(|_| wal.sync())
                    .and_then(|_| checkpoint(&writer_path, &writer_db, &mut syncer, &mut wal));
                if closed.is_ok() {
                    Identity::record_clean_close(&writer_path, &writer_tree, write_count);
                }
            })
            .map_err(|e| StoreError::Io(format!("cannot start the journal writer: {e}")))?;
        Ok(SledStore {
            tree,
            sender: std::sync::Mutex::new(Some(sender)),
            syncs,
            path: path.to_path_buf(),
            writer: std::sync::Mutex::new(Some(handle)),
        })
    }

    /// The store folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes, syncs and stops the writer thread (also done on drop).
    pub fn close(&self) {
        if let Ok(mut s) = self.sender.lock() {
            s.take();
        }
        if let Ok(mut w) = self.writer.lock() {
            if let Some(h) = w.take() {
                let _ = h.join();
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
    async fn write(&self, batch: Batch, durable: bool) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        {
            let guard = self.sender.lock().map_err(|_| StoreError::Closed)?;
            let sender = guard.as_ref().ok_or(StoreError::Closed)?;
            sender
                .send(WriteRequest {
                    batch,
                    durable,
                    done,
                })
                .map_err(|_| StoreError::Closed)?;
        }
        wait.await.map_err(|_| StoreError::Closed)?
    }

    fn get(&self, space: Space, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.tree
            .get(key(space, k))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| map_err(&self.path, e))
    }

    fn scan(&self, space: Space, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(key(space, prefix)) {
            let (k, v) = item.map_err(|e| map_err(&self.path, e))?;
            out.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
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

/// The sled batch for log frame `seq`: its writes plus the write counter.
fn sled_batch(seq: u64, batch: &Batch) -> sled::Batch {
    let mut b = sled::Batch::default();
    b.insert(key(Space::Meta, b"writes"), &seq.to_be_bytes()[..]);
    for (space, k, v) in &batch.writes {
        match v {
            Some(v) => b.insert(key(*space, k), v.as_slice()),
            None => b.remove(key(*space, k)),
        }
    }
    b
}

/// Makes sled durable up to now, then starts a new generation of the log.
fn checkpoint(
    path: &Path,
    db: &sled::Db,
    syncer: &mut Syncer,
    wal: &mut Wal,
) -> Result<(), StoreError> {
    db.flush().map_err(|e| map_err(path, e))?;
    syncer.sync()?;
    wal.restart();
    Ok(())
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

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Io(format!("cannot sync folder `{}`: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let _ = std::fs::remove_dir_all(&dir);
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
        assert!(store.sync_count() <= 64);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
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
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A process that aborts right after its durable writes were acknowledged loses none of
    /// them: sled had not flushed them, so they come back from the write-ahead log.
    #[test]
    fn acknowledged_writes_survive_an_abort() {
        const CHILD: &str = "PROVISIO_TEST_WAL_CHILD";
        if let Ok(dir) = std::env::var(CHILD) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let store = SledStore::open(Path::new(&dir)).unwrap();
                for i in 0..50u32 {
                    let mut b = Batch::new();
                    b.put(Space::Journal, i.to_be_bytes().to_vec(), vec![7; 300]);
                    if i % 10 == 0 {
                        b.delete(Space::Journal, (i / 2).to_be_bytes().to_vec());
                    }
                    store.write(b, i % 3 == 0 || i == 49).await.unwrap();
                }
                std::process::abort();
            });
        }
        let dir = tempfile_dir();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::sled_store::tests::acknowledged_writes_survive_an_abort",
                "--nocapture",
            ])
            .env(CHILD, &dir)
            .status()
            .unwrap();
        assert!(!status.success(), "the child must abort");
        let store = SledStore::open(&dir).unwrap();
        let rows = store.scan(Space::Journal, b"").unwrap();
        // Every tenth batch deletes key i/2 after its put, so 0, 5, 10, 15 and 20 are gone.
        let expected: Vec<u32> = (0..50u32)
            .filter(|i| ![0, 5, 10, 15, 20].contains(i))
            .collect();
        let got: Vec<u32> = rows
            .iter()
            .map(|(k, _)| u32::from_be_bytes(k[..4].try_into().unwrap()))
            .collect();
        assert_eq!(got, expected);
        drop(store);
        // The replay was checkpointed: a second open finds the same, with nothing to replay.
        let store = SledStore::open(&dir).unwrap();
        assert_eq!(
            store.scan(Space::Journal, b"").unwrap().len(),
            expected.len()
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("provisio-store-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&d).unwrap();
        d
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
}

impl Identity {
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
        let side: Option<Identity> = std::fs::read(Self::side_file(path))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
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
        // Until the next clean close, a lower count is not proof of loss (a crash may precede
        // the last sync), so the side file says "not clean".
        Self::write_side(
            path,
            &Identity {
                id,
                writes,
                clean: false,
            },
        )
    }

    fn record_clean_close(path: &Path, tree: &sled::Tree, writes: u64) {
        if let Ok(Some(id)) = tree.get(key(Space::Meta, b"id")) {
            let _ = Self::write_side(
                path,
                &Identity {
                    id: String::from_utf8_lossy(&id).into_owned(),
                    writes,
                    clean: true,
                },
            );
        }
    }
}
