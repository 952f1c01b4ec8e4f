//! Intent markers that let the provider answer "was the call with this idempotency key
//! applied?" after a crash. A marker (a [`Marker`]) is made durable after the provider's
//! checks and before the change, holding what the change will be; recovery compares it
//! with what is on disk.
//!
//! The markers of one transaction are lines appended to one file,
//! `.provisio-state/pending/<txn id>_intents.jsonl`: a marker costs one append and one
//! `fdatasync` (the folder is synced once, when the file is made), and ~100–200 bytes of
//! disk. A removal (after an undo, or when the change did not happen) appends a line
//! without a marker, not synced: a lost removal only leaves a marker that recovery checks
//! against the disk anyway. The last line of a key says what holds. The file goes when
//! the transaction is over ([`remove_transaction`], from `Provider::transaction_over`; a
//! marker of a transaction this process was told is over is refused after that), or
//! with `Provider::purge` / `provisio recover` for transactions that ended otherwise.
//!
//! Every line starts with a newline, so a line torn by a crash (never acknowledged, so its
//! change never happened) cannot swallow the next one; a line that does not parse is
//! skipped. Markers of older versions, one file a call (`<sanitized key>.json`), are still
//! read when the transaction's file has nothing for the key, and removed with the key.

use super::records::{Marker, RecordError};
use super::sandbox::io_error;
use cap_std::fs::{Dir, File, OpenOptions};
use provisio_engine::provider::ProviderError;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Write};
use std::sync::Mutex;

pub(crate) const PENDING_DIR: &str = ".provisio-state/pending";

/// How the name of a transaction's intent file ends (after `<txn id>_`).
const LOG_SUFFIX: &str = "_intents.jsonl";

/// How many transactions' files [`Logs`] remembers as durably created; past that it
/// forgets them all (a forgotten one costs one more folder sync). Also how many
/// transactions told over it remembers (the oldest forgotten first).
const REMEMBERED_LOGS: usize = 4096;

/// One line of a transaction's intent file.
#[derive(Serialize, Deserialize)]
struct Line {
    key: String,
    /// `None`: the key's marker is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    marker: Option<Marker>,
}

/// The transaction files this process knows to be durably created (their folder entry
/// synced), so that only the first marker of a transaction syncs the folder; and the files
/// it created itself, with the keys it wrote a marker of, so that asking a file about a
/// key it cannot hold does not read it (a call's retry check would otherwise read the
/// whole file: quadratic over a large transaction).
#[derive(Debug, Default)]
pub(crate) struct Logs {
    synced: Mutex<HashSet<String>>,
    /// By transaction: the hashes of the keys this process wrote a marker of, for the
    /// files it created (nothing else writes to them while it runs them). Forgotten as a
    /// whole past [`REMEMBERED_LOGS`] files: a forgotten file is read again, as after a
    /// restart.
    made_here: Mutex<HashMap<String, HashSet<u64>>>,
    /// The latest transactions this process was told are over ([`remove_transaction`]),
    /// oldest first: a marker of one of them is refused, so that a call the engine gave up
    /// waiting for (a step timeout) and that reaches its marker only after the
    /// transaction's end neither makes its change nor leaves a file nobody removes.
    over: Mutex<(HashSet<String>, VecDeque<String>)>,
    hasher: RandomState,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Logs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        locked(&self.synced)
    }

    /// Notes, before it creates the file of `txn`, that the file is this process's.
    fn creating(&self, txn: &str) {
        let mut made = locked(&self.made_here);
        if made.len() >= REMEMBERED_LOGS && !made.contains_key(txn) {
            made.clear();
        }
        made.entry(txn.to_string()).or_default();
    }

    /// Notes that `key` has a marker (`true`) or none any more, in a file this process made.
    fn noted(&self, key: &str, has_marker: bool) {
        let hash = self.hasher.hash_one(key);
        if let Some(keys) = locked(&self.made_here).get_mut(txn_of_key(key)) {
            if has_marker {
                keys.insert(hash);
            } else {
                keys.remove(&hash);
            }
        }
    }

    /// Whether the file of `key`'s transaction is known to hold no marker of it: made by
    /// this process, which wrote none for it (or removed it).
    fn surely_without(&self, key: &str) -> bool {
        let hash = self.hasher.hash_one(key);
        locked(&self.made_here)
            .get(txn_of_key(key))
            .is_some_and(|keys| !keys.contains(&hash))
    }

    fn forget(&self, txn: &str) {
        self.lock().remove(txn);
        locked(&self.made_here).remove(txn);
    }

    /// Notes that transaction `txn` is over (before its file is removed).
    fn ended(&self, txn: &str) {
        let mut over = locked(&self.over);
        let (set, order) = &mut *over;
        if set.insert(txn.to_string()) {
            order.push_back(txn.to_string());
            if order.len() > REMEMBERED_LOGS {
                if let Some(oldest) = order.pop_front() {
                    set.remove(&oldest);
                }
            }
        }
    }

    /// Whether this process was told (lately) that transaction `txn` is over.
    fn is_over(&self, txn: &str) -> bool {
        locked(&self.over).0.contains(txn)
    }
}

fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The transaction id of an idempotency key (`<txn id>/<step id>`).
fn txn_of_key(key: &str) -> &str {
    key.split_once('/').map_or(key, |(txn, _)| txn)
}

/// The file of transaction `txn`'s markers.
pub(crate) fn log_name(txn: &str) -> String {
    format!("{PENDING_DIR}/{}{LOG_SUFFIX}", sanitize(txn))
}

/// The file of `key`'s marker as older versions wrote it (one file a call).
fn legacy_name(key: &str) -> String {
    format!("{PENDING_DIR}/{}.json", sanitize(key))
}

/// Appends `line` to the file of `key`'s transaction; `durable`: synced before returning
/// (and the file's folder entry too, the first time this process writes to it).
fn append(dir: &Dir, logs: &Logs, line: &Line, durable: bool) -> io::Result<()> {
    let txn = txn_of_key(&line.key);
    let name = log_name(txn);
    let mut text = Vec::with_capacity(160);
    text.push(b'\n');
    serde_json::to_writer(&mut text, line).map_err(io::Error::other)?;
    let mut opts = OpenOptions::new();
    opts.append(true);
    let mut file: File = match dir.open_with(&name, &opts) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !durable {
                // Nothing to remove from a file that is not there.
                return Ok(());
            }
            dir.create_dir_all(PENDING_DIR)?;
            // Before the file exists: a call of the same transaction that opens it once it
            // does finds it noted, and notes its own key after its write.
            logs.creating(txn);
            opts.create(true);
            let file = dir.open_with(&name, &opts)?;
            if logs.is_over(txn) {
                // Told over since the caller looked ([`write`]): its file may have been
                // removed just before this one was made.
                let _ = dir.remove_file(&name);
                return Err(io::Error::other(over_error(txn)));
            }
            file
        }
        Err(e) => return Err(e),
    };
    // One `write` of the whole line: appends of concurrent calls do not interleave.
    file.write_all(&text)?;
    if durable {
        file.sync_data()?;
        if !logs.lock().contains(txn) {
            // The file's folder entry, once per transaction and process: a file another
            // call has just created may not be durable in its folder yet.
            dir.open_dir(PENDING_DIR)?.open(".")?.sync_all()?;
            let mut synced = logs.lock();
            if synced.len() >= REMEMBERED_LOGS {
                synced.clear();
            }
            synced.insert(txn.to_string());
        }
    }
    Ok(())
}

fn over_error(txn: &str) -> String {
    format!(
        "transaction {txn} is over: a call of it that outlived it (its step timed out) is not applied"
    )
}

/// Refuses a marker of `key` when the process was told the key's transaction is over
/// (for a marker the engine journals, which no pending file refuses).
pub(crate) fn refuse_if_over(logs: &Logs, key: &str) -> Result<(), ProviderError> {
    let txn = txn_of_key(key);
    if logs.is_over(txn) {
        return Err(ProviderError::permanent(over_error(txn)));
    }
    Ok(())
}

/// Writes the marker for `key` durably. Refused (with nothing changed) when the process
/// was told the key's transaction is over.
pub(crate) fn write(
    dir: &Dir,
    logs: &Logs,
    key: &str,
    marker: &Marker,
) -> Result<(), ProviderError> {
    refuse_if_over(logs, key)?;
    let line = Line {
        key: key.to_string(),
        marker: Some(marker.clone()),
    };
    // A marker is plain strings and numbers: encoding it cannot fail.
    append(dir, logs, &line, true).map_err(|e| io_error(&log_name(txn_of_key(key)), e))?;
    logs.noted(key, true);
    Ok(())
}

/// What the transaction's file says of `key`: `None` when it has no line of it,
/// `Some(None)` when its last line removes the marker.
fn read_log(dir: &Dir, key: &str) -> Result<Option<Option<Marker>>, ProviderError> {
    let name = log_name(txn_of_key(key));
    let mut bytes = Vec::new();
    match dir.open(&name).and_then(|mut f| f.read_to_end(&mut bytes)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&name, e)),
    }
    // Only lines holding the key (as JSON writes it) are parsed.
    let needle = serde_json::to_string(key).map_err(|e| RecordError::Encode(e.to_string()))?;
    let mut found = None;
    for raw in bytes.split(|b| *b == b'\n') {
        let Ok(text) = std::str::from_utf8(raw) else {
            continue;
        };
        if !text.contains(&needle) {
            continue;
        }
        match serde_json::from_str::<Line>(text) {
            Ok(line) if line.key == key => found = Some(line.marker),
            Ok(_) => {}
            // A torn line: its write never returned, so its change was never made.
            Err(e) => {
                tracing::warn!(file = %name, error = %e, "skipping an unreadable intent line")
            }
        }
    }
    Ok(found)
}

/// Reads the marker for `key`: `None` when there is none; an error when it is there but
/// unreadable (then nobody can tell what the call did). The transaction's file is read only
/// when it may hold one ([`Logs`]).
pub(crate) fn read(dir: &Dir, logs: &Logs, key: &str) -> Result<Option<Marker>, ProviderError> {
    if !logs.surely_without(key) {
        if let Some(marker) = read_log(dir, key)? {
            return Ok(marker);
        }
    }
    let name = legacy_name(key);
    match dir.read_to_string(&name) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| RecordError::Marker { file: name, source }.into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(&name, e)),
    }
}

/// Removes the marker for `key` (after an undo, or when the change did not happen).
pub(crate) fn remove(dir: &Dir, logs: &Logs, key: &str) {
    let line = Line {
        key: key.to_string(),
        marker: None,
    };
    if let Err(e) = append(dir, logs, &line, false) {
        tracing::warn!(key, error = %e, "cannot note that an intent marker is removed");
    }
    logs.noted(key, false);
    let _ = dir.remove_file(legacy_name(key));
}

/// Removes the file of transaction `txn`'s markers (the transaction is over: none of its
/// calls will be asked about again).
pub(crate) fn remove_transaction(dir: &Dir, logs: &Logs, txn: &str) -> Result<bool, ProviderError> {
    // First: a marker written from now on is refused, and one whose file is made meanwhile
    // removes it itself (`append`).
    logs.ended(txn);
    logs.forget(txn);
    let name = log_name(txn);
    match dir.remove_file(&name) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(&name, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;

    fn folder(path: &str) -> Marker {
        Marker::CreateFolder {
            path: path.to_string(),
            missing_parents: Vec::new(),
        }
    }

    /// A process reads a transaction's file only for keys it may hold: for a file it made,
    /// the keys it wrote; a process that did not make it (after a restart) reads it.
    #[test]
    fn a_file_made_here_is_read_only_for_the_keys_written_here() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open_ambient_dir(tmp.path(), ambient_authority()).unwrap();
        let logs = Logs::default();
        let txn = "01234567-89ab-7def-8123-456789abcdef";
        let (a, b) = (format!("{txn}/a"), format!("{txn}/b"));
        write(&dir, &logs, &a, &folder("one")).unwrap();
        // A line for `b` this process never wrote (it cannot be there while the process
        // runs the transaction): proof that the file is not read for `b`.
        let mut f = dir
            .open_with(log_name(txn), OpenOptions::new().append(true))
            .unwrap();
        let line = Line {
            key: b.clone(),
            marker: Some(folder("two")),
        };
        f.write_all(format!("\n{}", serde_json::to_string(&line).unwrap()).as_bytes())
            .unwrap();
        drop(f);
        assert!(
            matches!(read(&dir, &logs, &a).unwrap(), Some(Marker::CreateFolder { path, .. }) if path == "one")
        );
        assert!(
            read(&dir, &logs, &b).unwrap().is_none(),
            "the file was read for b"
        );
        // Another process (a restart) knows nothing of the file: it reads it.
        let restarted = Logs::default();
        let seen = read(&dir, &restarted, &b).unwrap();
        assert!(seen.is_some(), "after a restart the file is read");
        // A marker removed here is gone without a read; the transaction's end forgets all.
        remove(&dir, &logs, &a);
        assert!(read(&dir, &logs, &a).unwrap().is_none());
        assert!(remove_transaction(&dir, &logs, txn).unwrap());
        assert!(read(&dir, &logs, &a).unwrap().is_none());
    }
}
