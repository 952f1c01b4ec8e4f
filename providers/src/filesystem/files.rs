//! DeleteFile, and WriteFile with `overwrite` of an existing file: both keep the old file
//! (content, mode, owner, timestamps: the same inode) in `.provisio-trash/<key>` so undo
//! can put it back byte for byte, as DeleteFolder does for folders.
//!
//! DeleteFile renames the file into the trash. An overwrite builds the new content in
//! `.provisio-staging/<key>/item`, hard-links the old file into the trash (a copy where
//! the file system refuses the link), then renames the new file over the old one, so the
//! path always holds either the complete old or the complete new content.

use super::perms::refuse_hard_links;
use super::records::{Marker, UndoRecord};
use super::sandbox::{io_error, RelPath, E_ACCESS_DENIED, E_ALREADY_EXISTS, E_PATH_NOT_FOUND};
use super::staging::STAGING_DIR;
use super::{pending, set_mode, trash_path, Fs, TRASH_DIR};
use crate::common::{fnv1a, req_input, sanitize_key, text};
use cap_std::fs::{Metadata, MetadataExt, OpenOptions};
use provisio_engine::data::{Element, Scalar};
use provisio_engine::provider::{Call, Outcome, Preview, ProviderError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The new content of an overwrite, as its marker and its retry check describe it.
struct NewContent<'a> {
    bytes: &'a [u8],
    len: u64,
    hash: u64,
}

impl<'a> NewContent<'a> {
    fn of(content: &'a str) -> Self {
        NewContent {
            bytes: content.as_bytes(),
            len: u64::try_from(content.len()).unwrap_or(u64::MAX),
            hash: fnv1a(content.as_bytes()),
        }
    }
}

fn same_inode(a: &Metadata, b: &Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

fn staging_item(name: &str) -> PathBuf {
    Path::new(STAGING_DIR).join(name).join("item")
}

fn bytes_scalar(name: &str, n: u64) -> Element {
    Element::with_scalar(name, Scalar::Int(i64::try_from(n).unwrap_or(i64::MAX)))
}

impl Fs {
    /// Checks that `path` is a regular file the provider may remove or replace: not a
    /// symlink, not a folder, no other hard link (another name may be outside the root).
    pub(super) fn existing_file(
        &self,
        field: &str,
        path: &RelPath,
        m: &Metadata,
    ) -> Result<(), ProviderError> {
        if m.file_type().is_symlink() {
            return Err(ProviderError::invalid(format!(
                "input `{field}`: `{}` is a symlink, not a file",
                path.display()
            )));
        }
        if m.is_dir() {
            return Err(ProviderError::invalid(format!(
                "input `{field}`: `{}` is a folder, not a file (use DeleteFolder for folders)",
                path.display()
            )));
        }
        if !m.is_file() {
            return Err(ProviderError::invalid(format!(
                "input `{field}`: `{}` is not a regular file",
                path.display()
            )));
        }
        refuse_hard_links(field, path, m)
    }

    /// The content of a file under the root, for the retry and recovery checks.
    fn read_bytes(&self, path: &Path) -> Result<Vec<u8>, ProviderError> {
        let mut buf = Vec::new();
        self.dir
            .open(path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(|e| io_error(&format!("`{}`", path.display()), e))?;
        Ok(buf)
    }

    /// Is the file at `path` (metadata `m`) the new content?
    fn holds(&self, path: &Path, m: &Metadata, new: &NewContent) -> Result<bool, ProviderError> {
        Ok(m.is_file() && m.len() == new.len && fnv1a(&self.read_bytes(path)?) == new.hash)
    }

    /// DeleteFile execute: moves the file into the trash.
    pub(super) fn delete_file(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let path = self.path_input(&call.execute_data, "path", false)?;
        let trash_name = sanitize_key(&call.context.idempotency_key());
        let trash = trash_path(&trash_name);
        let record = UndoRecord::RestoreFile {
            path: path.display(),
            trash: trash_name.clone(),
        };
        let outcome = |bytes: u64| -> Result<Outcome, ProviderError> {
            let mut out = call.execute_data.clone();
            out.push(text("deleted", path.display()));
            out.push(bytes_scalar("bytes", bytes));
            Ok(Outcome {
                execute_data: out,
                undo: Some(record.to_element()?),
            })
        };
        let meta = self.lstat(&path)?;
        // A retried call whose first try already moved the file: same result.
        if meta.is_none() {
            if let Ok(m) = self.dir.symlink_metadata(&trash) {
                return outcome(m.len());
            }
        }
        let Some(meta) = meta else {
            return Err(ProviderError::Permanent {
                code: E_PATH_NOT_FOUND,
                message: format!("file `{}` does not exist", path.display()),
            });
        };
        self.existing_file("path", &path, &meta)?;
        self.dir
            .create_dir_all(TRASH_DIR)
            .map_err(|e| io_error(TRASH_DIR, e))?;
        if self.dir.symlink_metadata(&trash).is_ok() {
            return Err(ProviderError::permanent(format!(
                "trash entry {} already exists for this call",
                trash.display()
            )));
        }
        self.dir
            .rename(path.path(), &self.dir, &trash)
            .map_err(|e| io_error(&format!("file `{}`", path.display()), e))?;
        sync_dir(&self.dir, path.parent().map(|p| p.path()));
        outcome(meta.len())
    }

    /// WriteFile with `overwrite: true`: replaces the file at `path` if there is one (and
    /// returns `None` when there is none, for the caller to create it as usual).
    pub(super) fn overwrite_file(
        &self,
        call: &Call,
        path: &RelPath,
        content: &str,
        mode: Option<u32>,
    ) -> Result<Option<Outcome>, ProviderError> {
        let key = call.context.idempotency_key();
        let name = sanitize_key(&key);
        let trash = trash_path(&name);
        let new = NewContent::of(content);
        let record = UndoRecord::RestoreOverwritten {
            path: path.display(),
            trash: name.clone(),
        };
        let outcome = |previous: u64| -> Result<Option<Outcome>, ProviderError> {
            let mut out = call.execute_data.clone();
            out.push(text("written", path.display()));
            out.push(bytes_scalar("bytes", new.len));
            out.push(bytes_scalar("previousBytes", previous));
            Ok(Some(Outcome {
                execute_data: out,
                undo: Some(record.to_element()?),
            }))
        };
        if let Ok(kept) = self.dir.symlink_metadata(&trash) {
            // A trash entry for this key: an earlier try of the same call got that far.
            // What follows may remove it: not before this try's intent is durable (a call
            // whose marker the engine journals is made before that).
            call.intent_durable_blocking()?;
            match self.lstat(path)? {
                Some(m) if !same_inode(&m, &kept) && self.holds(&path.path(), &m, &new)? => {
                    return outcome(kept.len());
                }
                Some(m)
                    if same_inode(&m, &kept)
                        || self.read_bytes(&path.path())? == self.read_bytes(&trash)? =>
                {
                    // Linked or copied, never renamed over: start again.
                    self.dir
                        .remove_file(&trash)
                        .map_err(|e| io_error(&format!("{}", trash.display()), e))?;
                }
                _ => {
                    return Err(ProviderError::permanent(format!(
                        "an earlier try of this WriteFile ({key}) left the old content of `{}` in {}, and `{}` now holds neither the old nor the new content; check by hand",
                        path.display(),
                        trash.display(),
                        path.display()
                    )))
                }
            }
        }
        let Some(old) = self.lstat(path)? else {
            return Ok(None);
        };
        self.existing_file("path", path, &old)?;
        self.check_quota(path, new.len.saturating_sub(old.len()))?;
        let old_mode = {
            use cap_std::fs::PermissionsExt;
            old.permissions().mode() & 0o7777
        };
        // The new file keeps the old one's mode (special bits only where allowed: a
        // request must not put its content into a setuid file) and owner.
        let special = if self.options.allow_special_modes {
            0o7777
        } else {
            0o777
        };
        let mode = mode.unwrap_or(old_mode & special);
        self.mark(
            call,
            &key,
            &Marker::OverwriteFile {
                path: path.display(),
                trash: name.clone(),
                bytes: new.len,
                hash: new.hash,
            },
        )?;
        let item = staging_item(&name);
        let undo_partial = |linked: bool| {
            let _ = self.dir.remove_dir_all(Path::new(STAGING_DIR).join(&name));
            let _ = self.dir.remove_dir(STAGING_DIR);
            if linked {
                let _ = self.dir.remove_file(&trash);
            }
            self.unmark(call, &key);
        };
        if let Err(e) = self.build_new(path, &item, &new, mode, (old.uid(), old.gid())) {
            undo_partial(false);
            return Err(e);
        }
        if let Err(e) = self.keep_old(path, &trash) {
            undo_partial(false);
            return Err(e);
        }
        if let Err(e) = self.dir.rename(&item, &self.dir, path.path()) {
            undo_partial(true);
            return Err(io_error(&format!("replacing file `{}`", path.display()), e));
        }
        sync_dir(&self.dir, path.parent().map(|p| p.path()));
        let _ = self.dir.remove_dir_all(Path::new(STAGING_DIR).join(&name));
        let _ = self.dir.remove_dir(STAGING_DIR);
        outcome(old.len())
    }

    /// Writes the new content as `item` (fsynced), with `mode` and the old file's owner.
    fn build_new(
        &self,
        path: &RelPath,
        item: &Path,
        new: &NewContent,
        mode: u32,
        (uid, gid): (u32, u32),
    ) -> Result<(), ProviderError> {
        let what = format!("file `{}`", path.display());
        if let Some(folder) = item.parent() {
            self.dir
                .create_dir_all(folder)
                .map_err(|e| io_error(&what, e))?;
        }
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        {
            use cap_std::fs::OpenOptionsExt;
            opts.mode(mode & 0o777);
        }
        let mut f = self
            .dir
            .open_with(item, &opts)
            .map_err(|e| io_error(&what, e))?;
        f.write_all(new.bytes).map_err(|e| io_error(&what, e))?;
        let ours = f.metadata().map_err(|e| io_error(&what, e))?;
        if (ours.uid(), ours.gid()) != (uid, gid) {
            rustix::fs::fchown(
                &f,
                Some(rustix::fs::Uid::from_raw_unchecked(uid)),
                Some(rustix::fs::Gid::from_raw_unchecked(gid)),
            )
            .map_err(|e| ProviderError::Permanent {
                code: E_ACCESS_DENIED,
                message: format!(
                    "cannot give the new content of `{}` the old file's owner {uid}:{gid} ({e}); the provider must run as root (or the file's owner) to replace another user's file",
                    path.display()
                ),
            })?;
        }
        f.sync_all().map_err(|e| io_error(&what, e))?;
        drop(f);
        // After the chown, which clears setuid/setgid: exactly the mode asked for.
        set_mode(&self.dir, item, mode).map_err(|e| io_error(&what, e))
    }

    /// Keeps the old file as `trash`: a second name for the same inode, or a copy (content
    /// and mode) where the file system refuses hard links.
    fn keep_old(&self, path: &RelPath, trash: &Path) -> Result<(), ProviderError> {
        let what = format!("keeping the old content of `{}`", path.display());
        self.dir
            .create_dir_all(TRASH_DIR)
            .map_err(|e| io_error(&what, e))?;
        if self.dir.hard_link(path.path(), &self.dir, trash).is_err() {
            let old = self.read_bytes(&path.path())?;
            let meta = self.lstat(path)?.ok_or_else(|| ProviderError::Permanent {
                code: E_PATH_NOT_FOUND,
                message: format!("{what}: the file is gone"),
            })?;
            let mode = {
                use cap_std::fs::PermissionsExt;
                meta.permissions().mode() & 0o7777
            };
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true);
            let copied = self.dir.open_with(trash, &opts).and_then(|mut f| {
                f.write_all(&old)?;
                f.sync_all()?;
                set_mode(&self.dir, trash, mode)
            });
            if let Err(e) = copied {
                let _ = self.dir.remove_file(trash);
                return Err(io_error(&what, e));
            }
        }
        sync_dir(&self.dir, Some(PathBuf::from(TRASH_DIR)));
        Ok(())
    }

    /// Undo of DeleteFile: the file goes back from the trash if its place is free.
    pub(super) fn restore_file(&self, path: &str, trash: &str) -> Result<(), ProviderError> {
        let path = self.checked("path", path, false)?;
        let trash = checked_trash(trash)?;
        let in_trash = self.dir.symlink_metadata(&trash).is_ok();
        let at_path = self.lstat(&path)?.is_some();
        match (in_trash, at_path) {
            (true, false) => self
                .dir
                .rename(&trash, &self.dir, path.path())
                .map_err(|e| io_error(&format!("restoring file `{}`", path.display()), e)),
            (false, true) => Ok(()), // already restored
            (true, true) => Err(ProviderError::Permanent {
                code: E_ALREADY_EXISTS,
                message: format!(
                    "cannot restore file `{}`: something else now exists there (the deleted file is kept in {})",
                    path.display(),
                    trash.display()
                ),
            }),
            (false, false) => Err(ProviderError::permanent(format!(
                "cannot restore file `{}`: its trash entry {} is gone",
                path.display(),
                trash.display()
            ))),
        }
    }

    /// Undo of an overwrite: the old file replaces the new one.
    pub(super) fn restore_overwritten(&self, path: &str, trash: &str) -> Result<(), ProviderError> {
        let path = self.checked("path", path, false)?;
        let trash = checked_trash(trash)?;
        if self.dir.symlink_metadata(&trash).is_err() {
            return match self.lstat(&path)? {
                Some(_) => Ok(()), // already restored
                None => Err(ProviderError::permanent(format!(
                    "cannot restore the old content of `{}`: its trash entry {} is gone",
                    path.display(),
                    trash.display()
                ))),
            };
        }
        if let Some(m) = self.lstat(&path)? {
            if m.is_dir() {
                return Err(ProviderError::Permanent {
                    code: E_ALREADY_EXISTS,
                    message: format!(
                        "cannot restore the old content of `{}`: a folder now exists there (the old file is kept in {})",
                        path.display(),
                        trash.display()
                    ),
                });
            }
        }
        self.dir
            .rename(&trash, &self.dir, path.path())
            .map_err(|e| io_error(&format!("restoring file `{}`", path.display()), e))?;
        sync_dir(&self.dir, path.parent().map(|p| p.path()));
        Ok(())
    }

    /// DeleteFile moved the file iff its trash entry (named after the key) exists.
    pub(super) fn recover_delete_file(
        &self,
        call: &Call,
    ) -> Result<Option<Element>, ProviderError> {
        let trash = sanitize_key(&call.context.idempotency_key());
        if self.dir.symlink_metadata(trash_path(&trash)).is_err() {
            return Ok(None);
        }
        let raw = req_input(&call.execute_data, &["path"])?;
        let path = RelPath::parse("path", &raw, false)?;
        Ok(Some(
            UndoRecord::RestoreFile {
                path: path.display(),
                trash,
            }
            .to_element()?,
        ))
    }

    /// An overwrite from its marker: the old file kept in the trash and the new content at
    /// the path (another inode) → applied; the trash entry missing, or still the same
    /// file as the path → not applied (leftovers removed); anything else → error.
    pub(super) fn recover_overwrite(
        &self,
        key: &str,
        path: &str,
        trash: &str,
        bytes: u64,
        hash: u64,
    ) -> Result<Option<Element>, ProviderError> {
        let path = RelPath::parse("path", path, false)?;
        let trash_file = checked_trash(trash)?;
        let not_applied = |remove_trash: bool| -> Result<Option<Element>, ProviderError> {
            if remove_trash {
                self.dir
                    .remove_file(&trash_file)
                    .map_err(|e| io_error(&format!("{}", trash_file.display()), e))?;
            }
            let _ = self.dir.remove_dir_all(Path::new(STAGING_DIR).join(trash));
            let _ = self.dir.remove_dir(STAGING_DIR);
            pending::remove(&self.dir, &self.intent_logs, key);
            Ok(None)
        };
        let Ok(kept) = self.dir.symlink_metadata(&trash_file) else {
            return not_applied(false);
        };
        let new = NewContent {
            bytes: &[],
            len: bytes,
            hash,
        };
        match self.lstat(&path)? {
            Some(m) if same_inode(&m, &kept) => not_applied(true),
            Some(m) if self.holds(&path.path(), &m, &new)? => Ok(Some(
                UndoRecord::RestoreOverwritten {
                    path: path.display(),
                    trash: trash.to_string(),
                }
                .to_element()?,
            )),
            Some(m)
                if m.is_file()
                    && self.read_bytes(&path.path())? == self.read_bytes(&trash_file)? =>
            {
                not_applied(true)
            }
            _ => Err(ProviderError::permanent(format!(
                "cannot tell whether WriteFile ({key}) replaced `{}`: it holds neither the old content (kept in {}) nor the new one; check by hand",
                path.display(),
                trash_file.display()
            ))),
        }
    }

    /// Preview of DeleteFile.
    pub(super) fn preview_delete_file(&self, call: &Call) -> Result<Preview, ProviderError> {
        let path = self.path_input(&call.execute_data, "path", false)?;
        match self.lstat(&path)? {
            None => Err(ProviderError::Permanent {
                code: E_PATH_NOT_FOUND,
                message: format!("file `{}` does not exist", path.display()),
            }),
            Some(m) => {
                self.existing_file("path", &path, &m)?;
                Ok(Preview::Change(format!(
                    "delete file {} ({} bytes, kept in trash for undo)",
                    path.display(),
                    m.len()
                )))
            }
        }
    }
}

/// `.provisio-trash/<name>` for a name from an undo record or marker (one plain component).
fn checked_trash(name: &str) -> Result<PathBuf, ProviderError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') || name.contains('\0') {
        return Err(ProviderError::invalid(format!(
            "undo record has a bad trash name {name:?}"
        )));
    }
    Ok(trash_path(name))
}

/// Makes renames in `folder` (the root for `None`) durable, best effort (some file systems
/// cannot sync a directory).
fn sync_dir(dir: &cap_std::fs::Dir, folder: Option<PathBuf>) {
    let folder = folder.unwrap_or_else(|| PathBuf::from("."));
    let _ = dir
        .open_dir(&folder)
        .and_then(|d| d.open("."))
        .and_then(|f| f.sync_all());
}

#[cfg(test)]
mod tests {
    use super::checked_trash;

    #[test]
    fn trash_names_from_records_are_one_plain_component() {
        for bad in ["", "a/b", ".hidden", "..", "x\0y"] {
            assert!(checked_trash(bad).is_err(), "{bad:?}");
        }
        assert!(checked_trash("0190_step_1").is_ok());
    }
}
