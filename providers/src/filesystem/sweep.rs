//! Cleanup of what interrupted work leaves in `.provisio-state`: temporary files of writes
//! that never reached their rename (a crash, a full disk), and intent markers of
//! transactions that are over.
//!
//! Temporary files carry the id of the process writing them (`quotas.json.tmp-<pid>-<n>`,
//! `pending/<key>.json.tmp-<pid>`); one whose process is no longer running is garbage.
//! Files of a running process (this one included) are kept: their write may be under way.
//! Marker files (one a transaction, `<txn id>_intents.jsonl`, or one a call from older
//! versions, `<txn id>_<step>.json`) start with the transaction id,
//! so [`Fs::prune_markers`] can drop those of transactions the caller says are over.

use super::pending::PENDING_DIR;
use super::quota::STATE_DIR;
use super::sandbox::io_error;
use super::Fs;
use provisio_engine::provider::ProviderError;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A temporary file without a process id (written before ids were added) is removed once
/// it is this old: no write takes that long between create and rename.
const LEGACY_TMP_AGE: Duration = Duration::from_secs(600);

/// Is the process `pid` running? Unknown (no `/proc`) counts as running.
fn running(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
}

/// The writer's pid of a temporary file name, if it has one: the digits after `.tmp-`, up
/// to the next `-`.
fn tmp_pid(name: &str) -> Option<u32> {
    let (_, tail) = name.rsplit_once(".tmp-")?;
    tail.split('-').next()?.parse().ok()
}

/// What `Fs::sweep_temporaries` and `Fs::prune_markers` removed (paths under the root).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Removed files.
    pub removed: Vec<String>,
}

impl Fs {
    /// Removes temporary files whose writing process is gone (and pid-less ones older than
    /// ten minutes) from `.provisio-state` and `.provisio-state/pending`.
    pub(crate) fn sweep_temporaries(&self) -> Result<Swept, ProviderError> {
        let _guard = self.lock_state();
        let mut swept = Swept::default();
        for folder in [STATE_DIR, PENDING_DIR] {
            let entries = match self.dir.read_dir(folder) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(folder, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_error(folder, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let garbage = if let Some(pid) = tmp_pid(&name) {
                    !running(pid)
                } else if name.ends_with(".tmp") {
                    entry
                        .metadata()
                        .ok()
                        .and_then(|m| m.modified().ok())
                        .and_then(|t| SystemTime::now().duration_since(t.into_std()).ok())
                        .is_some_and(|age| age > LEGACY_TMP_AGE)
                } else {
                    false
                };
                if garbage {
                    let path = format!("{folder}/{name}");
                    match self.dir.remove_file(&path) {
                        Ok(()) => swept.removed.push(path),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_error(&path, e)),
                    }
                }
            }
        }
        Ok(swept)
    }

    /// Removes the intent markers (and their temporary files) of every transaction for
    /// which `is_live(txn_id)` is false. Call it with the transactions that are not final
    /// yet (running, in doubt, or waiting for an operator): a marker of a final
    /// transaction will never be asked about again.
    pub(crate) fn prune_markers(
        &self,
        is_live: &dyn Fn(&str) -> bool,
    ) -> Result<Swept, ProviderError> {
        let mut swept = Swept::default();
        let entries = match self.dir.read_dir(PENDING_DIR) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(swept),
            Err(e) => return Err(io_error(PENDING_DIR, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error(PENDING_DIR, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // `<txn id>_<step…>_<attempt>.json[.tmp…]`: transaction ids have no `_`.
            let Some((txn, _)) = name.split_once('_') else {
                continue;
            };
            if !name.contains(".json") || is_live(txn) {
                continue;
            }
            let path = format!("{PENDING_DIR}/{name}");
            match self.dir.remove_file(&path) {
                Ok(()) => swept.removed.push(path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&path, e)),
            }
        }
        Ok(swept)
    }
}

#[cfg(test)]
mod tests {
    use super::tmp_pid;

    #[test]
    fn pids_of_temporary_names() {
        assert_eq!(tmp_pid("quotas.json.tmp-123-4"), Some(123));
        assert_eq!(tmp_pid("t1_s_1.json.tmp-77"), Some(77));
        assert_eq!(tmp_pid("t1_s_1.json.tmp"), None);
        assert_eq!(tmp_pid("t1_s_1.json"), None);
    }
}
