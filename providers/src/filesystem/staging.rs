//! Two-phase folder and file creation (StageFolder, StageFile): execute builds the content
//! in `<root>/.provisio-staging/<key>/item`, invisible at the target path; prepare checks the
//! target is still free and the staged content intact; commit renames it into place in one
//! `renameat2(RENAME_NOREPLACE)`; undo (abort) removes the staged content, or the target if
//! the change was already committed.
//!
//! The intent marker (see [`super::pending`]) records the phase: `staged` after execute,
//! `committing` just before the rename. Undo uses it to tell "committed, remove the target"
//! from "never committed, nothing at the target is ours". The `staged` marker may be in the
//! engine's journal (`Fs::mark`), which recovery of the execute reads; the `committing`
//! one, written by commit (no call, no journal of the provider's), is always in the
//! pending file, which undo reads.

use super::records::{Marker, StagePhase, StagedKind, UndoRecord};
use super::sandbox::{io_error, RelPath, E_ALREADY_EXISTS, E_DIR_NOT_EMPTY, E_PATH_NOT_FOUND};
use super::{create_dir_mode, pending, set_mode, Fs};
use crate::common::{fnv1a, opt_input, sanitize_key, text};
use cap_std::fs::{Dir, OpenOptions};
use provisio_engine::data::{Element, Scalar};
use provisio_engine::provider::{Call, Done, Outcome, ProviderError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Folder (under the root) holding staged content until commit.
pub const STAGING_DIR: &str = ".provisio-staging";
const ITEM: &str = "item";

/// The undo record of a Stage* call, parsed.
struct Staged {
    kind: StagedKind,
    path: RelPath,
    name: String,
    bytes: u64,
    hash: u64,
}

impl Staged {
    fn dir(&self) -> PathBuf {
        Path::new(STAGING_DIR).join(&self.name)
    }

    fn item(&self) -> PathBuf {
        self.dir().join(ITEM)
    }

    fn record(&self) -> UndoRecord {
        let file = self.kind == StagedKind::File;
        UndoRecord::Unstage {
            kind: self.kind,
            path: self.path.display(),
            staging: self.name.clone(),
            bytes: file.then_some(self.bytes),
            hash: file.then_some(self.hash),
        }
    }

    fn marker(&self, phase: StagePhase) -> Marker {
        Marker::Stage {
            phase,
            kind: self.kind,
            path: self.path.display(),
            staging: self.name.clone(),
        }
    }
}

impl Fs {
    /// The staged item an `unstage` undo record names (any other record is refused).
    fn staged_from(&self, record: &UndoRecord) -> Result<Staged, ProviderError> {
        let UndoRecord::Unstage {
            kind,
            path,
            staging,
            bytes,
            hash,
        } = record
        else {
            return Err(ProviderError::invalid(format!(
                "expected an unstage undo record, got {record:?}"
            )));
        };
        let path = self.checked("path", path, false)?;
        if staging.is_empty()
            || staging.contains('/')
            || staging.starts_with('.')
            || staging.contains('\0')
        {
            return Err(ProviderError::invalid(format!(
                "undo record has a bad staging name {staging:?}"
            )));
        }
        Ok(Staged {
            kind: *kind,
            path,
            name: staging.clone(),
            bytes: bytes.unwrap_or(0),
            hash: hash.unwrap_or(0),
        })
    }

    /// StageFolder / StageFile execute: builds the content in the staging area.
    fn stage(&self, call: &Call, kind: StagedKind) -> Result<Outcome, ProviderError> {
        let data = &call.execute_data;
        let path = self.path_input(data, "path", false)?;
        let mode = self.mode_input(data)?;
        let content = match kind {
            StagedKind::File => opt_input(data, &["content"]).unwrap_or_default(),
            StagedKind::Folder => String::new(),
        };
        self.require_parent_dir("path", &path)?;
        if self.lstat(&path)?.is_some() {
            return Err(ProviderError::Permanent {
                code: E_ALREADY_EXISTS,
                message: format!("`{}` already exists", path.display()),
            });
        }
        let bytes = u64::try_from(content.len()).unwrap_or(u64::MAX);
        if kind == StagedKind::File {
            self.check_quota(&path, bytes)?;
        }
        let key = call.context.idempotency_key();
        let staged = Staged {
            kind,
            path,
            name: sanitize_key(&key),
            bytes,
            hash: fnv1a(content.as_bytes()),
        };
        // A retried call (same key) starts over from a clean staging folder: removed only
        // once this try's intent is durable (a call whose marker the engine journals is
        // made before that).
        if self.dir.symlink_metadata(staged.dir()).is_ok() {
            call.intent_durable_blocking()?;
        }
        self.remove_staging(&staged)?;
        self.mark(call, &key, &staged.marker(StagePhase::Staged))?;
        if let Err(e) = self.build_staged(&staged, mode, &content) {
            let _ = self.remove_staging(&staged);
            self.unmark(call, &key);
            return Err(e);
        }
        let mut out = call.execute_data.clone();
        out.push(text("staged", staged.path.display()));
        if kind == StagedKind::File {
            out.push(Element::with_scalar(
                "bytes",
                Scalar::Int(i64::try_from(bytes).unwrap_or(i64::MAX)),
            ));
        }
        Ok(Outcome {
            execute_data: out,
            undo: Some(staged.record().to_element()?),
        })
    }

    fn build_staged(
        &self,
        staged: &Staged,
        mode: Option<u32>,
        content: &str,
    ) -> Result<(), ProviderError> {
        let what = format!("staging `{}`", staged.path.display());
        let dir = staged.dir();
        // Another call's cleanup may remove an empty STAGING_DIR between our two mkdirs.
        let mut made = Err(io::Error::from(io::ErrorKind::NotFound));
        for _ in 0..3 {
            made = self.dir.create_dir_all(&dir);
            if made.is_ok() {
                break;
            }
        }
        made.map_err(|e| io_error(&what, e))?;
        let item = staged.item();
        match staged.kind {
            StagedKind::Folder => match mode {
                Some(m) => create_dir_mode(&self.dir, &item, m),
                None => self.dir.create_dir(&item),
            }
            .map_err(|e| io_error(&what, e)),
            StagedKind::File => {
                let mut opts = OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use cap_std::fs::OpenOptionsExt;
                    opts.mode(mode.unwrap_or(0o644));
                }
                let mut f = self
                    .dir
                    .open_with(&item, &opts)
                    .map_err(|e| io_error(&what, e))?;
                f.write_all(content.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| io_error(&what, e))?;
                if let Some(m) = mode {
                    set_mode(&self.dir, &item, m).map_err(|e| io_error(&what, e))?;
                }
                Ok(())
            }
        }
    }

    /// Removes `.provisio-staging/<name>` with its content, then `.provisio-staging` if it
    /// is empty.
    fn remove_staging(&self, staged: &Staged) -> Result<(), ProviderError> {
        match self.dir.remove_dir_all(staged.dir()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&format!("{}", staged.dir().display()), e)),
        }
        let _ = self.dir.remove_dir(STAGING_DIR);
        Ok(())
    }

    /// Is the staged content there and unchanged?
    fn staged_intact(&self, staged: &Staged) -> Result<bool, ProviderError> {
        let item = staged.item();
        let meta = match self.dir.symlink_metadata(&item) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error(&format!("{}", item.display()), e)),
        };
        match staged.kind {
            StagedKind::Folder => Ok(meta.is_dir()),
            StagedKind::File => {
                if !meta.is_file() || meta.len() != staged.bytes {
                    return Ok(false);
                }
                let mut buf = Vec::new();
                self.dir
                    .open(&item)
                    .and_then(|mut f| f.read_to_end(&mut buf))
                    .map_err(|e| io_error(&format!("{}", item.display()), e))?;
                Ok(fnv1a(&buf) == staged.hash)
            }
        }
    }

    /// Prepare: staged content intact, target still free, its parent still a folder.
    pub(super) fn prepare_staged(&self, record: &UndoRecord) -> Result<(), ProviderError> {
        let staged = self.staged_from(record)?;
        if !self.staged_intact(&staged)? {
            return Err(ProviderError::permanent(format!(
                "prepare: the staged {} for `{}` is missing or was changed",
                staged.kind.name(),
                staged.path.display()
            )));
        }
        self.require_parent_dir("path", &staged.path)?;
        if self.lstat(&staged.path)?.is_some() {
            return Err(ProviderError::Permanent {
                code: E_ALREADY_EXISTS,
                message: format!(
                    "prepare: `{}` appeared meanwhile; the staged {} cannot be put there",
                    staged.path.display(),
                    staged.kind.name()
                ),
            });
        }
        if staged.kind == StagedKind::File {
            self.check_quota(&staged.path, staged.bytes)?;
        }
        Ok(())
    }

    /// Commit: one rename (never replacing) from the staging area to the target.
    pub(super) fn commit_staged(
        &self,
        done: &Done,
        record: &UndoRecord,
    ) -> Result<(), ProviderError> {
        let staged = self.staged_from(record)?;
        let key = done.context.idempotency_key();
        let item = staged.item();
        if self.dir.symlink_metadata(&item).is_err() {
            // Already committed (a repeated commit) if the target is there.
            return match self.lstat(&staged.path)? {
                Some(_) => Ok(()),
                None => Err(ProviderError::Permanent {
                    code: E_PATH_NOT_FOUND,
                    message: format!(
                        "commit: the staged {} for `{}` is gone",
                        staged.kind.name(),
                        staged.path.display()
                    ),
                }),
            };
        }
        pending::write(
            &self.dir,
            &self.intent_logs,
            &key,
            &staged.marker(StagePhase::Committing),
        )?;
        let what = format!("commit of `{}`", staged.path.display());
        let from_dir = self
            .dir
            .open_dir(staged.dir())
            .map_err(|e| io_error(&what, e))?;
        let to_dir = match staged.path.parent() {
            Some(p) => self.dir.open_dir(p.path()),
            None => self.dir.try_clone(),
        }
        .map_err(|e| io_error(&what, e))?;
        let last = staged.path.parts().last().cloned().unwrap_or_default();
        rename_noreplace(&from_dir, ITEM, &to_dir, &last).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                ProviderError::Permanent {
                    code: E_ALREADY_EXISTS,
                    message: format!(
                        "commit: `{}` appeared after prepare; the staged {} stays in {}",
                        staged.path.display(),
                        staged.kind.name(),
                        staged.dir().display()
                    ),
                }
            } else {
                io_error(&what, e)
            }
        })?;
        // Durable rename (best effort), then drop the empty staging folder.
        let _ = to_dir.open(".").and_then(|f| f.sync_all());
        let _ = self.remove_staging(&staged);
        Ok(())
    }

    /// Undo (abort): staged content removed; after a commit, the target removed (a folder
    /// only while empty).
    pub(super) fn unstage(&self, done: &Done, record: &UndoRecord) -> Result<(), ProviderError> {
        let staged = self.staged_from(record)?;
        let key = done.context.idempotency_key();
        if self.dir.symlink_metadata(staged.item()).is_ok() {
            return self.remove_staging(&staged);
        }
        let committed = matches!(
            pending::read(&self.dir, &self.intent_logs, &key)?,
            Some(Marker::Stage {
                phase: StagePhase::Committing,
                ..
            })
        );
        self.remove_staging(&staged)?;
        if !committed {
            return Ok(());
        }
        let path = &staged.path;
        match (staged.kind, self.lstat(path)?) {
            (_, None) => Ok(()),
            (StagedKind::Folder, Some(m)) if m.is_dir() => match self.dir.remove_dir(path.path()) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                    Err(ProviderError::Permanent {
                        code: E_DIR_NOT_EMPTY,
                        message: format!(
                            "cannot undo StageFolder: folder `{}` is not empty (contains {})",
                            path.display(),
                            self.list_some(path)
                        ),
                    })
                }
                Err(e) => Err(io_error(&format!("folder `{}`", path.display()), e)),
            },
            (StagedKind::File, Some(m)) if m.is_file() => match self.dir.remove_file(path.path()) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(&format!("file `{}`", path.display()), e)),
            },
            (kind, Some(_)) => Err(ProviderError::permanent(format!(
                "cannot undo Stage{}: `{}` is no longer a {}",
                if kind == StagedKind::File {
                    "File"
                } else {
                    "Folder"
                },
                path.display(),
                kind.name()
            ))),
        }
    }

    /// Recovery from the marker: staged content there → its undo record; otherwise the
    /// call changed nothing visible → `None` (leftovers cleaned up).
    pub(super) fn recover_staged(
        &self,
        call: &Call,
        kind: StagedKind,
        path: &str,
    ) -> Result<Option<Element>, ProviderError> {
        let key = call.context.idempotency_key();
        let path = RelPath::parse("path", path, false)?;
        let content = opt_input(&call.execute_data, &["content"]).unwrap_or_default();
        let staged = Staged {
            kind,
            path,
            name: sanitize_key(&key),
            bytes: u64::try_from(content.len()).unwrap_or(u64::MAX),
            hash: fnv1a(content.as_bytes()),
        };
        if self.staged_intact(&staged)? {
            return Ok(Some(staged.record().to_element()?));
        }
        self.remove_staging(&staged)?;
        pending::remove(&self.dir, &self.intent_logs, &key);
        Ok(None)
    }

    /// StageFolder execute.
    pub(super) fn stage_folder(&self, call: &Call) -> Result<Outcome, ProviderError> {
        self.stage(call, StagedKind::Folder)
    }

    /// StageFile execute.
    pub(super) fn stage_file(&self, call: &Call) -> Result<Outcome, ProviderError> {
        self.stage(call, StagedKind::File)
    }
}

/// `renameat2(…, RENAME_NOREPLACE)` between two sandboxed folders, one component each;
/// falls back to check-then-rename where the file system lacks `RENAME_NOREPLACE`.
pub(super) fn rename_noreplace(
    from: &Dir,
    from_name: &str,
    to: &Dir,
    to_name: &str,
) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        match rustix::fs::renameat_with(
            from,
            from_name,
            to,
            to_name,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => return Ok(()),
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {}
            Err(e) => return Err(e.into()),
        }
    }
    if to.symlink_metadata(to_name).is_ok() {
        return Err(io::Error::from(io::ErrorKind::AlreadyExists));
    }
    from.rename(from_name, to, to_name)
}
