//! Purging what the filesystem provider kept only for undo, once the transaction that kept
//! it is over for good (see [`PurgeScope`]): folders DeleteFolder moved into
//! `.provisio-trash/`, the quotas of those folders (still in `quotas.json`, so that an undo
//! brings them back with the folder), and intent markers in `.provisio-state/pending/`.
//!
//! A trash entry is named after the call's idempotency key, which starts with the
//! transaction id; DeleteFolder also notes the folder's original path in
//! `.provisio-state/trash/<entry>` ([`note_origin`]), so that its quotas can go with it.
//! Intent files (`<txn id>_intents.jsonl`, or `<txn id>_<step>.json` of older versions) start
//! with the transaction id too; a transaction that ended in a run or in recovery has
//! dropped its own. A
//! trash entry without a note (made before notes existed) goes, its quotas stay.

use super::pending::PENDING_DIR;
use super::quota::{self, STATE_DIR};
use super::sandbox::io_error;
use super::{Fs, TRASH_DIR};
use cap_std::fs::Dir;
use provisio_engine::provider::{ProviderError, PurgeScope, Purged};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Where the original paths of trash entries are noted, one file per entry.
const ORIGINS_DIR: &str = ".provisio-state/trash";

/// The transaction id a trash entry or marker name starts with (`<uuid>_…`).
fn txn_of(name: &str) -> Option<&str> {
    let txn = name.get(..36)?;
    let uuid_shape = txn.char_indices().all(|(i, c)| {
        if matches!(i, 8 | 13 | 18 | 23) {
            c == '-'
        } else {
            c.is_ascii_hexdigit()
        }
    });
    (uuid_shape && name[36..].starts_with('_')).then_some(txn)
}

/// Notes that trash entry `entry` was the folder `original` (best effort: without the note
/// the folder's quotas are kept when the entry is purged).
pub(crate) fn note_origin(dir: &Dir, entry: &str, original: &str) {
    let written = dir.create_dir_all(ORIGINS_DIR).and_then(|()| {
        let mut f = dir.create(format!("{ORIGINS_DIR}/{entry}"))?;
        f.write_all(original.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written {
        tracing::warn!(entry, error = %e, "cannot note where a trashed folder came from; its quotas will outlive its purge");
    }
}

/// When a file was last changed (its ctime: a rename into the trash sets it), in ms.
fn changed_ms(root: &Path, rel: &str) -> Option<u64> {
    let m = std::fs::symlink_metadata(root.join(rel)).ok()?;
    u64::try_from(m.ctime()).ok().map(|s| s * 1000)
}

fn names(dir: &Dir, folder: &str) -> Result<Vec<String>, ProviderError> {
    match dir.read_dir(folder) {
        Ok(rd) => {
            let mut out = Vec::new();
            for e in rd {
                let e = e.map_err(|e| io_error(folder, e))?;
                out.push(e.file_name().to_string_lossy().into_owned());
            }
            out.sort();
            Ok(out)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_error(folder, e)),
    }
}

impl Fs {
    /// [`provisio_engine::provider::Provider::purge`] for the filesystem provider.
    pub(crate) fn purge(&self, scope: &PurgeScope) -> Result<Purged, ProviderError> {
        let mut purged = Purged::default();
        let origin_of = |entry: &str| {
            self.dir
                .read_to_string(format!("{ORIGINS_DIR}/{entry}"))
                .ok()
        };
        let entries = names(&self.dir, TRASH_DIR)?;
        let (gone, kept): (Vec<String>, Vec<String>) = entries.into_iter().partition(|name| {
            txn_of(name).is_some_and(|txn| {
                scope.may_purge(txn, changed_ms(&self.root, &format!("{TRASH_DIR}/{name}")))
            })
        });
        // Quotas of a purged folder go unless its path is in use again or another kept
        // entry may still bring a folder back there.
        let kept_origins: Vec<String> = kept.iter().filter_map(|n| origin_of(n)).collect();
        let mut quota_paths = Vec::new();
        for name in &gone {
            let rel = format!("{TRASH_DIR}/{name}");
            let origin = origin_of(name);
            if !scope.dry_run() {
                self.dir
                    .remove_dir_all(&rel)
                    .or_else(|e| match e.kind() {
                        io::ErrorKind::NotFound => Ok(()),
                        // A file where a folder was expected: remove it all the same.
                        _ => self.dir.remove_file(&rel),
                    })
                    .map_err(|e| io_error(&rel, e))?;
                let _ = self.dir.remove_file(format!("{ORIGINS_DIR}/{name}"));
            }
            purged.removed.push(match &origin {
                Some(o) => format!("trash folder {rel} (was `{o}`)"),
                None => format!("trash folder {rel}"),
            });
            if let Some(o) = origin {
                let in_use = self.dir.symlink_metadata(&o).is_ok();
                if !in_use && !kept_origins.contains(&o) {
                    quota_paths.push(o);
                }
            }
        }
        if !quota_paths.is_empty() {
            let _guard = self.lock_state();
            let mut quotas = quota::load(&self.dir)?;
            let before = quotas.clone();
            quotas.retain(|path, _| {
                !quota_paths
                    .iter()
                    .any(|o| path == o || path.starts_with(&format!("{o}/")))
            });
            for path in before.keys().filter(|p| !quotas.contains_key(*p)) {
                purged
                    .removed
                    .push(format!("quota of deleted folder `{path}`"));
            }
            if !scope.dry_run() && quotas != before {
                quota::store(&self.dir, &quotas)?;
            }
        }
        for name in names(&self.dir, PENDING_DIR)? {
            let Some(txn) = txn_of(&name) else { continue };
            let rel = format!("{PENDING_DIR}/{name}");
            let since = std::fs::symlink_metadata(self.root.join(&rel))
                .ok()
                .and_then(|m| u64::try_from(m.mtime()).ok())
                .map(|s| s * 1000);
            if !scope.may_purge(txn, since) {
                continue;
            }
            if !scope.dry_run() {
                match self.dir.remove_file(&rel) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_error(&rel, e)),
                }
            }
            purged.removed.push(format!("intent marker {rel}"));
        }
        let _ = STATE_DIR;
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filesystem::FilesystemProvider;
    use provisio_engine::provider::{Provider, StatusOf, TxnStatus};
    use std::sync::Arc;
    use std::time::Duration;

    const OVER: &str = "0190f1c2-0000-7000-8000-000000000001";
    const RECENT: &str = "0190f1c2-0000-7000-8000-000000000002";
    const FAILED: &str = "0190f1c2-0000-7000-8000-000000000003";

    fn scope(dry_run: bool) -> PurgeScope {
        let status: StatusOf = Arc::new(|id: &str| match id {
            OVER => TxnStatus::Over { finished_ms: 0 },
            RECENT => TxnStatus::Over {
                finished_ms: u64::MAX / 2,
            },
            FAILED => TxnStatus::NotOver,
            _ => TxnStatus::Unknown,
        });
        PurgeScope::new(Duration::from_secs(3600), dry_run, 10_000_000, status)
    }

    #[test]
    fn uuid_names_only() {
        assert_eq!(txn_of(&format!("{OVER}_del_1")), Some(OVER));
        assert_eq!(txn_of(&format!("{OVER}.json")), None);
        assert_eq!(txn_of("not-a-transaction_x"), None);
    }

    /// A trash entry, its quota and its marker go for a transaction over and old enough;
    /// those of a recent or rollback_failed one stay; a dry run removes nothing.
    #[tokio::test]
    async fn purge_removes_only_what_final_old_transactions_kept() {
        let root = tempfile::tempdir().expect("tmp");
        let fs = FilesystemProvider::new(root.path().to_path_buf()).expect("provider");
        let dir = &fs.fs.dir;
        let mut quotas = quota::Quotas::new();
        for (txn, folder) in [(OVER, "gone"), (RECENT, "recent"), (FAILED, "failed")] {
            let entry = format!("{txn}_del_1");
            dir.create_dir_all(format!("{TRASH_DIR}/{entry}/inner"))
                .expect("trash");
            note_origin(dir, &entry, folder);
            quotas.insert(folder.to_string(), 10);
            quotas.insert(format!("{folder}/sub"), 5);
            dir.create_dir_all(PENDING_DIR).expect("pending");
            dir.write(format!("{PENDING_DIR}/{txn}_step_1.json"), "{}")
                .expect("marker of an older version");
            dir.write(format!("{PENDING_DIR}/{txn}_intents.jsonl"), "\n{}")
                .expect("the transaction's intent file");
        }
        quotas.insert("live".into(), 1);
        quota::store(dir, &quotas).expect("quotas");

        let dry = fs.purge(&scope(true)).await.expect("dry run");
        assert_eq!(dry.removed.len(), 5, "{:?}", dry.removed);
        assert!(dir.exists(format!("{TRASH_DIR}/{OVER}_del_1")));
        assert_eq!(quota::load(dir).expect("quotas").len(), 7);

        let done = fs.purge(&scope(false)).await.expect("purge");
        assert_eq!(done.removed, dry.removed);
        assert!(!dir.exists(format!("{TRASH_DIR}/{OVER}_del_1")));
        assert!(!dir.exists(format!("{PENDING_DIR}/{OVER}_step_1.json")));
        assert!(!dir.exists(format!("{PENDING_DIR}/{OVER}_intents.jsonl")));
        for txn in [RECENT, FAILED] {
            assert!(dir.exists(format!("{TRASH_DIR}/{txn}_del_1")));
            assert!(dir.exists(format!("{PENDING_DIR}/{txn}_step_1.json")));
            assert!(dir.exists(format!("{PENDING_DIR}/{txn}_intents.jsonl")));
        }
        let left: Vec<String> = quota::load(dir).expect("quotas").into_keys().collect();
        assert_eq!(
            left,
            ["failed", "failed/sub", "live", "recent", "recent/sub"]
        );
        assert!(fs
            .purge(&scope(false))
            .await
            .expect("again")
            .removed
            .is_empty());
    }
}
