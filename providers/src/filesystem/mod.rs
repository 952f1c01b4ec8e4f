//! The embedded filesystem provider: folders, files, moves and quotas under one sandbox
//! root. Every path input is relative to the root and cannot leave it (see `sandbox`).
//!
//! Undo never destroys data it did not create: DeleteFolder moves the folder into
//! `<root>/.provisio-trash/<idempotency key>` so its undo can move it back; quotas live in
//! `<root>/.provisio-state/quotas.json`; two-phase StageFolder/StageFile build their content
//! in `<root>/.provisio-staging/<key>/` until commit. These folders are hidden from inputs.
//! SetPermissions sets mode bits and POSIX ACLs (see `acl`, `perms`).

mod ace;
mod acl;
mod files;
mod mps;
mod owner;
mod pending;
mod perms;
mod purge;
mod quota;
mod records;
mod sandbox;
mod staging;
mod sweep;
#[cfg(test)]
mod tests;

pub use owner::{BadIdRange, IdRanges};
pub use quota::{project_quota_support, QuotaSupport};
pub use staging::STAGING_DIR;
pub use sweep::Swept;

use crate::common::{input, opt_input, opt_nonempty, parse_bool, req_input, sanitize_key, text};
use async_trait::async_trait;
use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use provisio_engine::data::{Element, Scalar};
use provisio_engine::model::ProcKind;
use provisio_engine::provider::{
    Call, Done, Outcome, Preview, ProcedureSpec, Provider, ProviderError, UndoKind,
};
use records::{Marker, UndoRecord};
use sandbox::{
    check_symlinks, io_error, RelPath, E_ALREADY_EXISTS, E_DIR_NOT_EMPTY, E_PATH_NOT_FOUND,
};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Folder (under the root) that DeleteFolder moves folders into.
pub const TRASH_DIR: &str = ".provisio-trash";

/// HRESULT for "quota exceeded" (ERROR_DISK_QUOTA_EXCEEDED).
pub(crate) const E_DISK_QUOTA_EXCEEDED: u32 = provisio_engine::codes::E_DISK_QUOTA_EXCEEDED;

/// Errors creating a [`FilesystemProvider`].
#[derive(Debug, thiserror::Error)]
pub enum FilesystemError {
    /// The root folder could not be created or opened.
    #[error("cannot open filesystem provider root {path}: {source}")]
    Root {
        /// The configured root.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Settings of a [`FilesystemProvider`] beyond its root (`[providers.filesystem]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilesystemOptions {
    /// Accept `mode` inputs with the setuid (`04000`), setgid (`02000`) or sticky (`01000`)
    /// bit. Off by default: a request could otherwise make a tenant's program run as the
    /// provider's user (root, typically).
    pub allow_special_modes: bool,
    /// The owners SetOwner may set (`allowed_uids`); `None`: any.
    pub allowed_uids: Option<IdRanges>,
    /// The groups SetOwner may set (`allowed_gids`); `None`: any.
    pub allowed_gids: Option<IdRanges>,
}

/// Folders, files and quotas under a sandbox root.
///
/// Every call does blocking file-system work (cap-std calls, `fsync`); the async trait
/// methods hand it to tokio's blocking pool (as `tokio::fs` does) so a slow disk never
/// stalls a runtime worker and a step timeout can give up on the call.
pub struct FilesystemProvider {
    fs: Arc<Fs>,
    /// Fences between a call and the settlement of the same idempotency key: a call the
    /// engine gave up on (step timeout) goes on in the blocking pool, so `recover` waits
    /// for it to finish instead of reading a half-done change as "not applied".
    fences: crate::common::KeyFences,
}

/// The provider's state and its synchronous operations, shared with the blocking pool.
pub(crate) struct Fs {
    root: PathBuf,
    dir: Dir,
    /// Serializes read-modify-write of the quota state file.
    state_lock: Mutex<()>,
    /// The transactions' intent files this process has made durable (`pending`).
    intent_logs: pending::Logs,
    options: FilesystemOptions,
    /// Runs at the start of every blocking operation (tests slow operations down with it).
    #[cfg(test)]
    before_op: Option<Box<dyn Fn() + Send + Sync>>,
    /// Runs after CreateFolder's intent is durable, before its first change (tests make a
    /// concurrent call's change there).
    #[cfg(test)]
    after_intent: Option<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for FilesystemProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilesystemProvider")
            .field("root", &self.fs.root)
            .finish()
    }
}

impl FilesystemProvider {
    /// Opens (creating it if missing) the sandbox root, with the default options.
    pub fn new(root: PathBuf) -> Result<Self, FilesystemError> {
        Self::with_options(root, FilesystemOptions::default())
    }

    /// Opens (creating it if missing) the sandbox root.
    pub fn with_options(
        root: PathBuf,
        options: FilesystemOptions,
    ) -> Result<Self, FilesystemError> {
        let err = |source| FilesystemError::Root {
            path: root.clone(),
            source,
        };
        std::fs::create_dir_all(&root).map_err(err)?;
        let dir = Dir::open_ambient_dir(&root, ambient_authority()).map_err(err)?;
        Ok(FilesystemProvider {
            fs: Arc::new(Fs {
                root,
                dir,
                state_lock: Mutex::new(()),
                intent_logs: pending::Logs::default(),
                options,
                #[cfg(test)]
                before_op: None,
                #[cfg(test)]
                after_intent: None,
            }),
            fences: crate::common::KeyFences::new(),
        })
    }

    /// The sandbox root.
    pub fn root(&self) -> &Path {
        &self.fs.root
    }

    /// Removes leftover temporary files in `.provisio-state` whose writing process is gone
    /// (`recover` does this too).
    pub async fn sweep_temporaries(&self) -> Result<Swept, ProviderError> {
        self.blocking(Fs::sweep_temporaries).await
    }

    /// Removes the intent markers of every transaction for which `is_live(txn_id)` is false.
    /// For the engine's (or an operator's) cleanup after recovery: pass the transactions
    /// that are not final yet; markers of final transactions are never asked about again
    /// (a transaction that ends in a run or in recovery drops its own at once,
    /// `transaction_over`; one whose process died between its journaled end and that call
    /// keeps them until pruned, unless a daemon settles its job at the restart).
    pub async fn prune_markers(
        &self,
        is_live: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Swept, ProviderError> {
        self.blocking(move |fs| fs.prune_markers(&is_live)).await
    }

    /// Runs `op` on tokio's blocking pool and waits for it. A panic in `op` is resumed
    /// here, as if the call had run inline.
    async fn blocking<T, F>(&self, op: F) -> Result<T, ProviderError>
    where
        T: Send + 'static,
        F: FnOnce(&Fs) -> Result<T, ProviderError> + Send + 'static,
    {
        let fs = Arc::clone(&self.fs);
        let task = tokio::task::spawn_blocking(move || {
            #[cfg(test)]
            if let Some(hook) = &fs.before_op {
                hook();
            }
            op(&fs)
        });
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(ProviderError::transient(format!(
                "the Filesystem provider's blocking task did not finish: {e}"
            ))),
        }
    }
}

impl Fs {
    /// Parses and checks a path input (see [`sandbox`]).
    fn path_input(
        &self,
        data: &Element,
        field: &str,
        allow_root: bool,
    ) -> Result<RelPath, ProviderError> {
        let raw = req_input(data, &[field])?;
        self.checked(field, &raw, allow_root)
    }

    /// The optional `mode` input; setuid/setgid/sticky bits only when the options allow them.
    fn mode_input(&self, data: &Element) -> Result<Option<u32>, ProviderError> {
        let mode = parse_mode("mode", opt_nonempty(data, &["mode"]))?;
        if let Some(m) = mode {
            if m & 0o7000 != 0 && !self.options.allow_special_modes {
                return Err(ProviderError::invalid(format!(
                    "input `mode`: {m:04o} sets the setuid, setgid or sticky bit, which this provider refuses; give only permission bits (e.g. {:04o}) or set `allow_special_modes = true` under [providers.filesystem]",
                    m & 0o777
                )));
            }
        }
        Ok(mode)
    }

    fn checked(&self, field: &str, raw: &str, allow_root: bool) -> Result<RelPath, ProviderError> {
        let path = RelPath::parse(field, raw, allow_root)?;
        check_symlinks(&self.dir, field, &path)?;
        Ok(path)
    }

    /// `lstat`, with NotFound as `None`.
    fn lstat(&self, path: &RelPath) -> Result<Option<cap_std::fs::Metadata>, ProviderError> {
        match self.dir.symlink_metadata(path.path()) {
            Ok(m) => Ok(Some(m)),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory =>
            {
                Ok(None)
            }
            Err(e) => Err(io_error(&format!("`{}`", path.display()), e)),
        }
    }

    /// `stat` (follows in-root symlinks), with NotFound as `None`.
    fn stat(&self, path: &RelPath) -> Result<Option<cap_std::fs::Metadata>, ProviderError> {
        match self.dir.metadata(path.path()) {
            Ok(m) => Ok(Some(m)),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory =>
            {
                Ok(None)
            }
            Err(e) => Err(io_error(&format!("`{}`", path.display()), e)),
        }
    }

    fn require_parent_dir(&self, field: &str, path: &RelPath) -> Result<(), ProviderError> {
        if let Some(parent) = path.parent() {
            match self.stat(&parent)? {
                Some(m) if m.is_dir() => {}
                Some(_) => {
                    return Err(ProviderError::Permanent {
                        code: E_PATH_NOT_FOUND,
                        message: format!("input `{field}`: `{}` is not a folder", parent.display()),
                    })
                }
                None => {
                    return Err(ProviderError::Permanent {
                        code: E_PATH_NOT_FOUND,
                        message: format!(
                            "input `{field}`: parent folder `{}` does not exist",
                            parent.display()
                        ),
                    })
                }
            }
        }
        Ok(())
    }

    /// Up to ten entry names of a folder, for error messages.
    fn list_some(&self, path: &RelPath) -> String {
        let mut names = Vec::new();
        let mut more = false;
        if let Ok(rd) = self.dir.read_dir(path.path()) {
            for entry in rd.flatten() {
                if names.len() == 10 {
                    more = true;
                    break;
                }
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        let mut s = names.join(", ");
        if more {
            s.push_str(", …");
        }
        s
    }

    fn is_empty_dir(&self, path: &RelPath) -> Result<bool, ProviderError> {
        let mut rd = self
            .dir
            .read_dir(path.path())
            .map_err(|e| io_error(&format!("`{}`", path.display()), e))?;
        Ok(rd.next().is_none())
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, ()> {
        self.state_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes `marker` (the intent marker of `call`, key `key`) durable before the call's
    /// first change, and the engine's intent record of the call too.
    ///
    /// When the engine keeps the call's markers ([`Call::journals_markers`], see
    /// [`FilesystemProvider::journals_markers`]) the marker goes into its journal after the
    /// intent record and one sync makes both durable: no file of the provider's own, no
    /// sync of its own. Called again for the same call, it replaces the marker (recovery
    /// gets the last one).
    ///
    /// Otherwise (`--ephemeral`, a call built by hand, a procedure that does not opt in)
    /// the marker goes to the transaction's pending file, synced; then this waits until
    /// the engine's intent record is durable too (at once for a call that does not wait
    /// for it, see [`FilesystemProvider::awaits_intent`]): the two syncs overlap, and the
    /// change comes after both. When the engine could not journal its intent, the marker
    /// is removed and the call fails having changed nothing. A crash between the two
    /// leaves a marker of a call the engine never saw: nothing was changed, and the
    /// transaction's end (`transaction_over`, or a purge) removes it.
    fn mark(&self, call: &Call, key: &str, marker: &Marker) -> Result<(), ProviderError> {
        if call.journals_markers() {
            // A call the engine gave up on (its step timed out) that reaches its marker
            // after its transaction's end changes nothing, as with a pending file.
            pending::refuse_if_over(&self.intent_logs, key)?;
            return call.intent_durable_with_blocking(marker.to_element()?);
        }
        pending::write(&self.dir, &self.intent_logs, key, marker)?;
        if let Err(e) = call.intent_durable_blocking() {
            pending::remove(&self.dir, &self.intent_logs, key);
            return Err(e);
        }
        Ok(())
    }

    /// Forgets the marker of a call that changed nothing (its change failed): a line in
    /// the pending file saying so. A marker in the engine's journal stays: the engine
    /// records the call's failure after it, and a recovery that finds the marker alone
    /// checks the disk, which holds no change.
    fn unmark(&self, call: &Call, key: &str) {
        if !call.journals_markers() {
            pending::remove(&self.dir, &self.intent_logs, key);
        }
    }

    /// The last intent marker of an in-doubt `call` (key `key`): the one the engine
    /// journaled, else the pending file's (older runs, `--ephemeral`, the procedures that
    /// keep theirs there). `true` with a marker from the pending file.
    fn marker_of(&self, call: &Call, key: &str) -> Result<Option<(Marker, bool)>, ProviderError> {
        if let Some(element) = call.journaled_marker() {
            return Ok(Some((Marker::from_element(key, &element)?, false)));
        }
        Ok(pending::read(&self.dir, &self.intent_logs, key)?.map(|m| (m, true)))
    }

    // ---- procedures -------------------------------------------------------------

    fn create_folder(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let data = &call.execute_data;
        let path = self.path_input(data, "path", false)?;
        let mode = self.mode_input(data)?;
        if self.lstat(&path)?.is_some() {
            return Err(ProviderError::Permanent {
                code: E_ALREADY_EXISTS,
                message: format!("folder `{}` already exists", path.display()),
            });
        }
        let mut missing = Vec::new();
        for n in 1..path.parts().len() {
            let prefix = path.prefix(n);
            if self.stat(&prefix)?.is_none() {
                missing.push(prefix.display());
            }
        }
        let key = call.context.idempotency_key();
        self.mark(
            call,
            &key,
            &Marker::CreateFolder {
                path: path.display(),
                missing_parents: missing.clone(),
            },
        )?;
        #[cfg(test)]
        if let Some(hook) = &self.after_intent {
            hook();
        }
        // Create missing parents first, remembering them for undo.
        let mut created: Vec<RelPath> = Vec::new();
        let cleanup = |created: &[RelPath]| {
            for p in created.iter().rev() {
                let _ = self.dir.remove_dir(p.path());
            }
        };
        for n in 1..path.parts().len() {
            let prefix = path.prefix(n);
            match self.stat(&prefix)? {
                Some(m) if m.is_dir() => continue,
                Some(_) => {
                    cleanup(&created);
                    return Err(ProviderError::Permanent {
                        code: E_PATH_NOT_FOUND,
                        message: format!(
                            "input `path`: `{}` exists and is not a folder",
                            prefix.display()
                        ),
                    });
                }
                None => match self.dir.create_dir(prefix.path()) {
                    Ok(()) => created.push(prefix),
                    // Another call (of a transaction running beside this one) made it
                    // between the look and the create: a folder this call did not make,
                    // and will not remove.
                    Err(e)
                        if e.kind() == std::io::ErrorKind::AlreadyExists
                            && self.stat(&prefix)?.is_some_and(|m| m.is_dir()) => {}
                    Err(e) => {
                        cleanup(&created);
                        return Err(io_error(&format!("folder `{}`", prefix.display()), e));
                    }
                },
            }
        }
        let made_parents: Vec<String> = created.iter().map(RelPath::display).collect();
        if made_parents != missing {
            // A parent seen missing was made by another call meanwhile: it is that call's,
            // and recovery of this one must not take it as its own (it would remove it
            // once empty, under a transaction that made it and may have committed). The
            // marker is narrowed to the parents this call made, durably, before the folder
            // exists: recovery finds the call applied only once the folder does.
            let marker = Marker::CreateFolder {
                path: path.display(),
                missing_parents: made_parents,
            };
            if let Err(e) = self.mark(call, &key, &marker) {
                cleanup(&created);
                return Err(e);
            }
        }
        let made = match mode {
            Some(m) => create_dir_mode(&self.dir, &path.path(), m),
            None => self.dir.create_dir(path.path()),
        };
        if let Err(e) = made {
            cleanup(&created);
            return Err(io_error(&format!("folder `{}`", path.display()), e));
        }
        let mut out = call.execute_data.clone();
        out.push(text("created", path.display()));
        let undo = UndoRecord::RemoveFolder {
            path: path.display(),
            created_parents: created.iter().rev().map(RelPath::display).collect(),
        };
        Ok(Outcome {
            execute_data: out,
            undo: Some(undo.to_element()?),
        })
    }

    fn delete_folder(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let data = &call.execute_data;
        let path = self.path_input(data, "path", false)?;
        let recurse = parse_bool("recurse", opt_input(data, &["recurse"]))?;
        let trash_name = sanitize_key(&call.context.idempotency_key());
        let trash = trash_path(&trash_name);
        let undo = || {
            UndoRecord::RestoreFolder {
                path: path.display(),
                trash: trash_name.clone(),
            }
            .to_element()
        };
        let mut out = call.execute_data.clone();
        out.push(text("deleted", path.display()));
        let meta = self.lstat(&path)?;
        // A retried call whose first try already moved the folder: same result.
        if meta.is_none() && self.dir.symlink_metadata(&trash).is_ok() {
            return Ok(Outcome {
                execute_data: out,
                undo: Some(undo()?),
            });
        }
        match meta {
            None => {
                return Err(ProviderError::Permanent {
                    code: E_PATH_NOT_FOUND,
                    message: format!("folder `{}` does not exist", path.display()),
                })
            }
            Some(m) if m.file_type().is_symlink() => {
                return Err(ProviderError::invalid(format!(
                    "input `path`: `{}` is a symlink, not a folder",
                    path.display()
                )))
            }
            Some(m) if !m.is_dir() => {
                return Err(ProviderError::invalid(format!(
                    "input `path`: `{}` is a file, not a folder",
                    path.display()
                )))
            }
            Some(_) => {}
        }
        if !recurse && !self.is_empty_dir(&path)? {
            return Err(ProviderError::Permanent {
                code: E_DIR_NOT_EMPTY,
                message: format!(
                    "folder `{}` is not empty (contains {}); set recurse: true to delete it with its content",
                    path.display(),
                    self.list_some(&path)
                ),
            });
        }
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
            .map_err(|e| io_error(&format!("folder `{}`", path.display()), e))?;
        purge::note_origin(&self.dir, &trash_name, &path.display());
        Ok(Outcome {
            execute_data: out,
            undo: Some(undo()?),
        })
    }

    fn write_file(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let data = &call.execute_data;
        let path = self.path_input(data, "path", false)?;
        let content = opt_input(data, &["content"]).unwrap_or_default();
        let mode = self.mode_input(data)?;
        self.require_parent_dir("path", &path)?;
        if parse_bool("overwrite", opt_input(data, &["overwrite"]))? {
            if let Some(replaced) = self.overwrite_file(call, &path, &content, mode)? {
                return Ok(replaced);
            }
        }
        self.check_quota(&path, u64::try_from(content.len()).unwrap_or(u64::MAX))?;
        if self.lstat(&path)?.is_none() {
            self.mark(
                call,
                &call.context.idempotency_key(),
                &Marker::WriteFile {
                    path: path.display(),
                    bytes: u64::try_from(content.len()).unwrap_or(u64::MAX),
                },
            )?;
        } else {
            // The file is there: the create below fails, unless it went meanwhile, and
            // even then nothing is made before the engine's intent is durable.
            call.intent_durable_blocking()?;
        }
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use cap_std::fs::OpenOptionsExt;
            opts.mode(mode.unwrap_or(0o644));
        }
        let mut file = self.dir.open_with(path.path(), &opts).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                ProviderError::Permanent {
                    code: E_ALREADY_EXISTS,
                    message: format!("file `{}` already exists", path.display()),
                }
            } else {
                io_error(&format!("file `{}`", path.display()), e)
            }
        })?;
        let written = (|| -> io::Result<()> {
            file.write_all(content.as_bytes())?;
            file.sync_all()?;
            if let Some(m) = mode {
                set_mode(&self.dir, &path.path(), m)?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            drop(file);
            let _ = self.dir.remove_file(path.path());
            return Err(io_error(&format!("file `{}`", path.display()), e));
        }
        let mut out = call.execute_data.clone();
        out.push(text("written", path.display()));
        out.push(Element::with_scalar(
            "bytes",
            Scalar::Int(i64::try_from(content.len()).unwrap_or(i64::MAX)),
        ));
        let undo = UndoRecord::RemoveFile {
            path: path.display(),
        };
        Ok(Outcome {
            execute_data: out,
            undo: Some(undo.to_element()?),
        })
    }

    fn set_quota(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let data = &call.execute_data;
        let path = self.path_input(data, "path", false)?;
        let raw = req_input(data, &["megabytes"])?;
        let mb: u64 = raw.trim().parse().map_err(|_| {
            ProviderError::invalid(format!(
                "input `megabytes` must be a whole non-negative number, got {raw:?}"
            ))
        })?;
        match self.stat(&path)? {
            Some(m) if m.is_dir() => {}
            Some(_) => {
                return Err(ProviderError::invalid(format!(
                    "input `path`: `{}` is not a folder",
                    path.display()
                )))
            }
            None => {
                return Err(ProviderError::Permanent {
                    code: E_PATH_NOT_FOUND,
                    message: format!("folder `{}` does not exist", path.display()),
                })
            }
        }
        let previous = {
            let _guard = self.lock_state();
            let mut quotas = quota::load(&self.dir)?;
            self.mark(
                call,
                &call.context.idempotency_key(),
                &Marker::SetQuota {
                    path: path.display(),
                    megabytes: mb,
                    previous: quotas.get(&path.display()).copied(),
                },
            )?;
            let previous = quotas.insert(path.display(), mb);
            quota::store(&self.dir, &quotas)?;
            previous
        };
        let mut out = call.execute_data.clone();
        out.push(Element::with_scalar(
            "quotaMegabytes",
            Scalar::Int(to_i64(mb)),
        ));
        if let Some(p) = previous {
            out.push(Element::with_scalar(
                "previousQuotaMegabytes",
                Scalar::Int(to_i64(p)),
            ));
        }
        let undo = UndoRecord::RestoreQuota {
            path: path.display(),
            previous,
        };
        Ok(Outcome {
            execute_data: out,
            undo: Some(undo.to_element()?),
        })
    }

    fn get_usage(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let path = self.path_input(&call.execute_data, "path", true)?;
        let bytes = match self.stat(&path)? {
            None => {
                return Err(ProviderError::Permanent {
                    code: E_PATH_NOT_FOUND,
                    message: format!("`{}` does not exist", path.display()),
                })
            }
            Some(m) if !m.is_dir() => m.len(),
            Some(_) => self.usage(&path)?,
        };
        let quota = {
            let _guard = self.lock_state();
            quota::load(&self.dir)?.get(&path.display()).copied()
        };
        let mut out = call.execute_data.clone();
        out.push(Element::with_scalar("bytes", Scalar::Int(to_i64(bytes))));
        let over = match quota {
            Some(q) => {
                out.push(Element::with_scalar(
                    "quotaMegabytes",
                    Scalar::Int(to_i64(q)),
                ));
                u128::from(bytes) > u128::from(q) * 1024 * 1024
            }
            None => false,
        };
        out.push(Element::with_scalar("overQuota", Scalar::Bool(over)));
        Ok(Outcome {
            execute_data: out,
            undo: None,
        })
    }

    /// Total size of the regular files below `path` (symlinks are not followed; the
    /// provider's own folders at the root are skipped).
    fn usage(&self, path: &RelPath) -> Result<u64, ProviderError> {
        let mut total: u64 = 0;
        let mut stack = vec![path.path()];
        while let Some(p) = stack.pop() {
            let rd = match self.dir.read_dir(&p) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&format!("`{}`", p.display()), e)),
            };
            for entry in rd {
                let entry = entry.map_err(|e| io_error(&format!("`{}`", p.display()), e))?;
                let name = entry.file_name();
                if p == Path::new(".") && sandbox::is_reserved(&name.to_string_lossy()) {
                    continue;
                }
                let child = if p == Path::new(".") {
                    PathBuf::from(&name)
                } else {
                    p.join(&name)
                };
                let meta = match self.dir.symlink_metadata(&child) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_error(&format!("`{}`", child.display()), e)),
                };
                if meta.is_dir() {
                    stack.push(child);
                } else if meta.is_file() {
                    total = total.saturating_add(meta.len());
                }
            }
        }
        Ok(total)
    }

    fn move_folder(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let data = &call.execute_data;
        let from = self.path_input(data, "from", false)?;
        let to = self.path_input(data, "to", false)?;
        match self.lstat(&from)? {
            None => {
                return Err(ProviderError::Permanent {
                    code: E_PATH_NOT_FOUND,
                    message: format!("input `from`: folder `{}` does not exist", from.display()),
                })
            }
            Some(m) if !m.is_dir() => {
                return Err(ProviderError::invalid(format!(
                    "input `from`: `{}` is not a folder",
                    from.display()
                )))
            }
            Some(_) => {}
        }
        if to.starts_with(&from) {
            return Err(ProviderError::invalid(format!(
                "input `to`: `{}` is inside `{}`; a folder cannot move into itself",
                to.display(),
                from.display()
            )));
        }
        if self.lstat(&to)?.is_some() {
            return Err(ProviderError::Permanent {
                code: E_ALREADY_EXISTS,
                message: format!("input `to`: `{}` already exists", to.display()),
            });
        }
        self.require_parent_dir("to", &to)?;
        self.mark(
            call,
            &call.context.idempotency_key(),
            &Marker::MoveFolder {
                from: from.display(),
                to: to.display(),
            },
        )?;
        self.rename_with_quotas(&from, &to)?;
        let mut out = call.execute_data.clone();
        out.push(text("moved", to.display()));
        let undo = UndoRecord::MoveBack {
            from: from.display(),
            to: to.display(),
        };
        Ok(Outcome {
            execute_data: out,
            undo: Some(undo.to_element()?),
        })
    }

    fn rename_with_quotas(&self, from: &RelPath, to: &RelPath) -> Result<(), ProviderError> {
        let _guard = self.lock_state();
        self.dir
            .rename(from.path(), &self.dir, to.path())
            .map_err(|e| {
                io_error(
                    &format!("moving `{}` to `{}`", from.display(), to.display()),
                    e,
                )
            })?;
        let mut quotas = quota::load(&self.dir)?;
        if quota::rename_prefix(&mut quotas, &from.display(), &to.display()) {
            quota::store(&self.dir, &quotas)?;
        }
        Ok(())
    }

    // ---- undo ---------------------------------------------------------------------

    fn undo_record(&self, done: &Done) -> Result<(), ProviderError> {
        let record = UndoRecord::from_element(&done.context.procedure, &done.undo)?;
        match record {
            UndoRecord::RemoveFolder {
                path,
                created_parents,
            } => {
                let path = self.checked("path", &path, false)?;
                match self.lstat(&path)? {
                    None => {}
                    Some(m) if m.is_dir() => match self.dir.remove_dir(path.path()) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                            return Err(ProviderError::Permanent {
                                code: E_DIR_NOT_EMPTY,
                                message: format!(
                                    "cannot undo CreateFolder: folder `{}` is not empty (contains {})",
                                    path.display(),
                                    self.list_some(&path)
                                ),
                            })
                        }
                        Err(e) => return Err(io_error(&format!("folder `{}`", path.display()), e)),
                    },
                    Some(_) => {
                        return Err(ProviderError::permanent(format!(
                            "cannot undo CreateFolder: `{}` is no longer a folder",
                            path.display()
                        )))
                    }
                }
                for parent in &created_parents {
                    let p = self.checked("createdParent", parent, false)?;
                    // Leave parents that others have filled meanwhile.
                    let _ = self.dir.remove_dir(p.path());
                }
                Ok(())
            }
            UndoRecord::RestoreFolder { path, trash } => {
                let path = self.checked("path", &path, false)?;
                if trash.is_empty()
                    || trash.contains('/')
                    || trash.starts_with('.')
                    || trash.contains('\0')
                {
                    return Err(ProviderError::invalid(format!(
                        "undo record has a bad trash name {trash:?}"
                    )));
                }
                let trash = trash_path(&trash);
                let in_trash = self.dir.symlink_metadata(&trash).is_ok();
                let at_path = self.lstat(&path)?.is_some();
                match (in_trash, at_path) {
                    (true, false) => self
                        .dir
                        .rename(&trash, &self.dir, path.path())
                        .map_err(|e| io_error(&format!("restoring folder `{}`", path.display()), e)),
                    (false, true) => Ok(()), // already restored
                    (true, true) => Err(ProviderError::Permanent {
                        code: E_ALREADY_EXISTS,
                        message: format!(
                            "cannot restore folder `{}`: something else now exists there (the deleted content is kept in {})",
                            path.display(),
                            trash.display()
                        ),
                    }),
                    (false, false) => Err(ProviderError::permanent(format!(
                        "cannot restore folder `{}`: its trash entry {} is gone",
                        path.display(),
                        trash.display()
                    ))),
                }
            }
            UndoRecord::RemoveFile { path } => {
                let path = self.checked("path", &path, false)?;
                match self.lstat(&path)? {
                    None => Ok(()),
                    Some(m) if m.is_file() => match self.dir.remove_file(path.path()) {
                        Ok(()) => Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(io_error(&format!("file `{}`", path.display()), e)),
                    },
                    Some(_) => Err(ProviderError::permanent(format!(
                        "cannot undo WriteFile: `{}` is no longer a file",
                        path.display()
                    ))),
                }
            }
            UndoRecord::RestoreQuota { path, previous } => {
                let path = self.checked("path", &path, false)?;
                let _guard = self.lock_state();
                let mut quotas = quota::load(&self.dir)?;
                let key = path.display();
                let changed = match previous {
                    Some(p) => quotas.insert(key, p) != Some(p),
                    None => quotas.remove(&key).is_some(),
                };
                if changed {
                    quota::store(&self.dir, &quotas)?;
                }
                Ok(())
            }
            UndoRecord::MoveBack { from, to } => {
                let from = self.checked("from", &from, false)?;
                let to = self.checked("to", &to, false)?;
                let at_to = self.lstat(&to)?.is_some();
                let at_from = self.lstat(&from)?.is_some();
                match (at_to, at_from) {
                    (true, false) => self.rename_with_quotas(&to, &from),
                    (false, true) => Ok(()), // already moved back
                    (true, true) => Err(ProviderError::Permanent {
                        code: E_ALREADY_EXISTS,
                        message: format!(
                            "cannot move `{}` back: `{}` exists again",
                            to.display(),
                            from.display()
                        ),
                    }),
                    (false, false) => Err(ProviderError::Permanent {
                        code: E_PATH_NOT_FOUND,
                        message: format!(
                            "cannot move `{}` back to `{}`: it no longer exists",
                            to.display(),
                            from.display()
                        ),
                    }),
                }
            }
            UndoRecord::RestorePermissions { path, previous } => {
                self.restore_permissions(&path, &previous)
            }
            UndoRecord::RestoreFile { path, trash } => self.restore_file(&path, &trash),
            UndoRecord::RestoreOverwritten { path, trash } => {
                self.restore_overwritten(&path, &trash)
            }
            UndoRecord::RestoreOwner {
                path,
                uid,
                gid,
                mode,
            } => self.restore_owner(&path, uid, gid, &mode),
            record @ UndoRecord::Unstage { .. } => self.unstage(done, &record),
            UndoRecord::RemoveCopy { path, trash } => self.remove_copy(&path, &trash),
        }
    }

    /// Settles an in-doubt call from its intent marker (or, for DeleteFolder, its trash
    /// entry) and what is on disk now.
    fn recover_sync(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        // Recovery runs after a crash: the moment to drop temporary files it left.
        if let Err(e) = self.sweep_temporaries() {
            tracing::warn!(error = %e, "Filesystem: cannot remove leftover temporary files");
        }
        if let Some(p) = mps::MpsProcedure::of(&call.context.procedure) {
            return self.recover_mps(p, call);
        }
        let key = call.context.idempotency_key();
        match call.context.procedure.as_str() {
            "DeleteFolder" => return self.recover_delete(call),
            "DeleteFile" => return self.recover_delete_file(call),
            "GetUsage" => return Ok(None),
            _ => {}
        }
        let Some((marker, in_pending_file)) = self.marker_of(call, &key)? else {
            // No marker: the provider never got past its checks, so nothing changed.
            return match call.context.procedure.as_str() {
                "CreateFolder" | "WriteFile" | "SetQuota" | "MoveFolder" | "SetPermissions"
                | "SetOwner" | "StageFolder" | "StageFile" => Ok(None),
                other => Err(ProviderError::Unsupported(format!(
                    "the Filesystem provider cannot tell whether {other} ({key}) was applied; check it by hand"
                ))),
            };
        };
        let not_applied = || {
            if in_pending_file {
                pending::remove(&self.dir, &self.intent_logs, &key);
            }
            Ok(None)
        };
        let undo = match marker {
            Marker::MoveFolder { from, to } => return self.recover_move(&key, &from, &to),
            Marker::CopyFolder { .. } => return self.recover_copy(call),
            Marker::SetPermissions {
                path,
                previous,
                new,
            } => return self.recover_permissions(&key, &path, &previous, &new),
            Marker::Stage { kind, path, .. } => return self.recover_staged(call, kind, &path),
            Marker::OverwriteFile {
                path,
                trash,
                bytes,
                hash,
            } => return self.recover_overwrite(&key, &path, &trash, bytes, hash),
            Marker::SetOwner {
                path,
                previous,
                new,
                mode,
            } => return self.recover_owner(&key, &path, previous, new, mode),
            Marker::CreateFolder {
                path,
                missing_parents,
            } => {
                let path = self.checked("path", &path, false)?;
                if !self.lstat(&path)?.is_some_and(|m| m.is_dir()) {
                    return not_applied();
                }
                // The folder exists, so the marker read is the one written last before it
                // was made: its parents are those this call made (another call's are not
                // listed; see `create_folder`).
                let mut created_parents = Vec::new();
                for p in missing_parents.iter().rev() {
                    if let Ok(rel) = self.checked("path", p, false) {
                        if self.lstat(&rel)?.is_some_and(|m| m.is_dir()) {
                            created_parents.push(rel.display());
                        }
                    }
                }
                UndoRecord::RemoveFolder {
                    path: path.display(),
                    created_parents,
                }
            }
            Marker::WriteFile { path, .. } => {
                let path = self.checked("path", &path, false)?;
                if !self.lstat(&path)?.is_some_and(|m| m.is_file()) {
                    return not_applied();
                }
                UndoRecord::RemoveFile {
                    path: path.display(),
                }
            }
            Marker::SetQuota {
                path,
                megabytes,
                previous,
            } => {
                let path = self.checked("path", &path, false)?;
                if quota::load(&self.dir)?.get(&path.display()).copied() != Some(megabytes) {
                    return not_applied();
                }
                UndoRecord::RestoreQuota {
                    path: path.display(),
                    previous,
                }
            }
        };
        Ok(Some(undo.to_element()?))
    }

    /// DeleteFolder moved the folder iff its trash entry (named after the idempotency key)
    /// exists.
    fn recover_delete(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        let trash_name = sanitize_key(&call.context.idempotency_key());
        if self.dir.symlink_metadata(trash_path(&trash_name)).is_err() {
            return Ok(None);
        }
        let raw = req_input(&call.execute_data, &["path"])?;
        let path = RelPath::parse("path", &raw, false)?;
        let undo = UndoRecord::RestoreFolder {
            path: path.display(),
            trash: trash_name,
        };
        Ok(Some(undo.to_element()?))
    }

    /// MoveFolder from its marker: `from` gone and `to` there → moved; `from` there and `to`
    /// not → not moved; anything else cannot be told apart from someone else's change.
    fn recover_move(
        &self,
        key: &str,
        from: &str,
        to: &str,
    ) -> Result<Option<Element>, ProviderError> {
        let from = RelPath::parse("from", from, false)?;
        let to = RelPath::parse("to", to, false)?;
        let at_from = self.lstat(&from)?.is_some();
        let at_to = self.lstat(&to)?.is_some_and(|m| m.is_dir());
        match (at_from, at_to) {
            (false, true) => Ok(Some(
                UndoRecord::MoveBack {
                    from: from.display(),
                    to: to.display(),
                }
                .to_element()?,
            )),
            (true, false) => {
                pending::remove(&self.dir, &self.intent_logs, key);
                Ok(None)
            }
            _ => Err(ProviderError::permanent(format!(
                "cannot tell whether MoveFolder ({key}) moved `{}` to `{}`: {}",
                from.display(),
                to.display(),
                if at_from {
                    "both exist"
                } else {
                    "neither exists"
                }
            ))),
        }
    }

    /// Refuses a write of `extra` bytes at `path` that would take a folder with a recorded
    /// quota (the path's own folder or any folder above it) over that quota.
    fn check_quota(&self, path: &RelPath, extra: u64) -> Result<(), ProviderError> {
        let quotas = {
            let _guard = self.lock_state();
            quota::load(&self.dir)?
        };
        for (folder, mb) in &quotas {
            let Ok(q) = RelPath::parse("quota", folder, false) else {
                continue;
            };
            if !path.starts_with(&q) || path == &q {
                continue;
            }
            let used = self.usage(&q)?;
            let limit = u128::from(*mb) * 1024 * 1024;
            if u128::from(used) + u128::from(extra) > limit {
                return Err(ProviderError::Permanent {
                    code: E_DISK_QUOTA_EXCEEDED,
                    message: format!(
                        "writing {extra} bytes to `{}` would exceed the {mb} MiB quota of `{}` ({used} bytes used)",
                        path.display(),
                        q.display()
                    ),
                });
            }
        }
        Ok(())
    }

    fn preview_sync(&self, call: &Call) -> Result<Preview, ProviderError> {
        if let Some(p) = mps::MpsProcedure::of(&call.context.procedure) {
            return self.preview_mps(p, call);
        }
        let data = &call.execute_data;
        match call.context.procedure.as_str() {
            // Each of these fails on what it finds in the way (or, for delete, missing).
            "CreateFolder" => {
                let path = self.path_input(data, "path", false)?;
                Ok(if self.lstat(&path)?.is_some() {
                    Preview::Fail(format!("folder {} already exists", path.display()))
                } else {
                    Preview::Change(format!("create folder {}", path.display()))
                })
            }
            "DeleteFolder" => {
                let path = self.path_input(data, "path", false)?;
                Ok(if self.lstat(&path)?.is_some() {
                    Preview::Update(format!(
                        "delete folder {} (kept in trash for undo)",
                        path.display()
                    ))
                } else {
                    Preview::Fail(format!("folder {} does not exist", path.display()))
                })
            }
            "WriteFile" => {
                let path = self.path_input(data, "path", false)?;
                let overwrite = parse_bool("overwrite", opt_input(data, &["overwrite"]))?;
                match self.lstat(&path)? {
                    None => Ok(Preview::Change(format!("write file {}", path.display()))),
                    Some(m) if overwrite => {
                        self.existing_file("path", &path, &m)?;
                        Ok(Preview::Change(format!(
                            "replace file {} ({} bytes; the old content is kept for undo)",
                            path.display(),
                            m.len()
                        )))
                    }
                    Some(_) => Ok(Preview::Fail(format!(
                        "file `{}` already exists; set `overwrite: true` to replace it",
                        path.display()
                    ))),
                }
            }
            "DeleteFile" => self.preview_delete_file(call),
            "SetOwner" => self.preview_owner(call),
            "StageFolder" | "StageFile" => {
                let path = self.path_input(data, "path", false)?;
                Ok(if self.lstat(&path)?.is_some() {
                    Preview::Fail(format!("{} already exists", path.display()))
                } else {
                    Preview::Change(format!(
                        "stage {} {} (visible at commit)",
                        if call.context.procedure == "StageFile" {
                            "file"
                        } else {
                            "folder"
                        },
                        path.display()
                    ))
                })
            }
            "SetPermissions" => self.preview_permissions(call),
            "SetQuota" => self.preview_quota(call),
            "GetUsage" => Ok(Preview::NoChange("read only".into())),
            _ => Ok(Preview::Unknown),
        }
    }
}

impl Fs {
    /// Preview of SetQuota. Says plainly what a quota is here: the operating system does
    /// not enforce it (Provisio sets up no kernel project quotas), so only writes made
    /// through Provisio are held to it; the detection tells whether the kernel could.
    fn preview_quota(&self, call: &Call) -> Result<Preview, ProviderError> {
        let data = &call.execute_data;
        let path = self.path_input(data, "path", false)?;
        let raw = req_input(data, &["megabytes"])?;
        let mb: u64 = raw.trim().parse().map_err(|_| {
            ProviderError::invalid(format!(
                "input `megabytes` must be a whole non-negative number, got {raw:?}"
            ))
        })?;
        let previous = {
            let _guard = self.lock_state();
            quota::load(&self.dir)?.get(&path.display()).copied()
        };
        if previous == Some(mb) {
            return Ok(Preview::NoChange(format!(
                "{} already has a quota of {mb} MiB",
                path.display()
            )));
        }
        let os = match project_quota_support(&self.root) {
            QuotaSupport::Available { .. } => "kernel project quotas are available on this file system, but Provisio does not set them up".to_string(),
            QuotaSupport::NotAvailable { reason } => format!("kernel project quotas are not available ({reason})"),
        };
        Ok(Preview::Change(format!(
            "record a quota of {mb} MiB for {}; not enforced by the operating system: {os}, so the quota binds only writes made through Provisio",
            path.display()
        )))
    }
}

fn trash_path(name: &str) -> PathBuf {
    Path::new(TRASH_DIR).join(name)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Parses an octal mode such as `0750` or `750` (at most `07777`).
fn parse_mode(field: &str, raw: Option<String>) -> Result<Option<u32>, ProviderError> {
    let Some(raw) = raw else { return Ok(None) };
    let t = raw.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(ProviderError::invalid(format!(
            "input `{field}` must be an octal mode such as \"0750\", got {raw:?}"
        )));
    }
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 => Ok(Some(m)),
        _ => Err(ProviderError::invalid(format!(
            "input `{field}` must be an octal mode no larger than 07777, got {raw:?}"
        ))),
    }
}

#[cfg(unix)]
fn create_dir_mode(dir: &Dir, path: &Path, mode: u32) -> io::Result<()> {
    use cap_std::fs::{DirBuilder, DirBuilderExt};
    let mut b = DirBuilder::new();
    b.mode(mode);
    dir.create_dir_with(path, &b)?;
    // The umask may have cleared bits: set exactly what was asked.
    if let Err(e) = set_mode(dir, path, mode) {
        let _ = dir.remove_dir(path);
        return Err(e);
    }
    Ok(())
}

#[cfg(not(unix))]
fn create_dir_mode(dir: &Dir, path: &Path, _mode: u32) -> io::Result<()> {
    dir.create_dir(path)
}

#[cfg(unix)]
fn set_mode(dir: &Dir, path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    dir.set_permissions(
        path,
        cap_std::fs::Permissions::from_std(std::fs::Permissions::from_mode(mode)),
    )
}

#[cfg(not(unix))]
fn set_mode(_dir: &Dir, _path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// The [`provisio_engine::model::InputCheck`] of path inputs: the checks of
/// [`RelPath::parse`] (`.` for the root is left to the procedure).
fn check_path(raw: &str) -> Result<(), String> {
    RelPath::parse("path", raw, true).map(|_| ()).map_err(|e| {
        let m = e.message();
        m.strip_prefix("input `path`: ").unwrap_or(&m).to_string()
    })
}

fn path_input_spec() -> provisio_engine::model::InputSpec {
    input(
        "path",
        "string",
        true,
        "Folder path relative to the provider root (`a/b`); no `..`, no absolute paths",
    )
}

fn mode_spec() -> provisio_engine::model::InputSpec {
    input(
        "mode",
        "string",
        false,
        "Unix permission bits in octal, e.g. \"0750\"",
    )
}

impl FilesystemProvider {
    /// The procedures, before [`Provider::procedures`] adds the input checks.
    fn procedure_list(&self) -> Vec<ProcedureSpec> {
        let spec =
            |name: &str, kind: ProcKind, undo: UndoKind, description: &str, inputs| ProcedureSpec {
                name: name.to_string(),
                kind,
                undo,
                description: description.to_string(),
                inputs,
            };
        let mut specs = vec![
            spec(
                "CreateFolder",
                ProcKind::Write,
                UndoKind::Reversible,
                "Creates a folder (and missing parents). Output `created`. Undo removes it if empty.",
                vec![path_input_spec(), mode_spec()],
            ),
            spec(
                "DeleteFolder",
                ProcKind::Write,
                UndoKind::Reversible,
                "Deletes a folder by moving it to the provider trash. Output `deleted`. Undo moves it back.",
                vec![
                    path_input_spec(),
                    input("recurse", "bool", false, "Delete a non-empty folder with its content (true/1)"),
                ],
            ),
            spec(
                "WriteFile",
                ProcKind::Write,
                UndoKind::Reversible,
                "Creates a new file, or with `overwrite` replaces an existing one. Outputs `written`, `bytes`, `previousBytes` (replaced). Undo removes a new file, or puts the old content back byte for byte.",
                vec![
                    input("path", "string", true, "File path relative to the provider root; the parent folder must exist"),
                    input("content", "string", false, "File content (UTF-8 text); empty when absent"),
                    input("mode", "string", false, "Unix permission bits in octal, e.g. \"0640\" (default 0644 for a new file, the old file's mode when replacing)"),
                    input("overwrite", "bool", false, "Replace the file if it exists (default false: an existing file is an error)"),
                ],
            ),
            spec(
                "DeleteFile",
                ProcKind::Write,
                UndoKind::Reversible,
                "Deletes a file by moving it to the provider trash. Outputs `deleted`, `bytes`. Undo moves it back.",
                vec![input("path", "string", true, "File path relative to the provider root (a regular file, not a symlink, no other hard link)")],
            ),
            spec(
                "SetOwner",
                ProcKind::Write,
                UndoKind::Reversible,
                "Sets the owner and/or group of a file or folder. Outputs `uid`, `gid`, `previousUid`, `previousGid`. Undo restores the previous owner, group and mode.",
                vec![
                    input("path", "string", true, "File or folder relative to the root (not a symlink)"),
                    input("user", "string", false, "New owner: a user name (looked up by the system) or a numeric uid"),
                    input("group", "string", false, "New group: a group name (looked up by the system) or a numeric gid"),
                ],
            ),
            spec(
                "SetQuota",
                ProcKind::Write,
                UndoKind::Reversible,
                "Records a quota for a folder. Outputs `quotaMegabytes`, `previousQuotaMegabytes`. Undo restores the previous quota.",
                vec![
                    path_input_spec(),
                    input("megabytes", "int", true, "Quota in MiB (whole number)"),
                ],
            ),
            spec(
                "GetUsage",
                ProcKind::Read,
                UndoKind::Nothing,
                "Measures a folder. Outputs `bytes`, `quotaMegabytes` (if set), `overQuota`.",
                vec![input("path", "string", true, "Folder or file relative to the root; `.` for the whole root")],
            ),
            spec(
                "MoveFolder",
                ProcKind::Write,
                UndoKind::Reversible,
                "Moves (renames) a folder inside the root; quotas move with it. Output `moved`. Undo moves it back.",
                vec![
                    input("from", "string", true, "Existing folder relative to the root"),
                    input("to", "string", true, "New path relative to the root; must not exist, its parent must"),
                ],
            ),
            spec(
                "SetPermissions",
                ProcKind::Write,
                UndoKind::Reversible,
                "Sets mode bits and/or POSIX ACLs of a file or folder. Outputs `appliedMode`, `appliedAcl`, `appliedDefaultAcl`. Undo restores the previous mode and ACLs exactly.",
                vec![
                    input("path", "string", true, "File or folder relative to the root (not a symlink)"),
                    input("mode", "string", false, "Unix permission bits in octal, e.g. \"0750\" (applied first, like chmod)"),
                    input("acl", "string", false, "ACL entries, comma/space/newline separated: `user:1001:rwx,group:2000:r-x,mask::rwx`; `default:` prefix for a folder's default ACL; `none` / `default:none` remove them"),
                ],
            ),
            spec(
                "StageFolder",
                ProcKind::TwoPhase,
                UndoKind::Reversible,
                "Two-phase folder creation: staged out of sight, renamed into place at commit. Output `staged`. Undo (abort) removes the staged folder, or the committed one if empty.",
                vec![
                    input("path", "string", true, "Folder path relative to the root; must not exist, its parent must"),
                    mode_spec(),
                ],
            ),
            spec(
                "StageFile",
                ProcKind::TwoPhase,
                UndoKind::Reversible,
                "Two-phase file creation: written out of sight, renamed into place at commit. Outputs `staged`, `bytes`. Undo (abort) removes the staged or committed file.",
                vec![
                    input("path", "string", true, "File path relative to the root; must not exist, its parent must"),
                    input("content", "string", false, "File content (UTF-8 text); empty when absent"),
                    mode_spec(),
                ],
            ),
        ];
        for share in [
            "CreateShare",
            "DeleteShare",
            "GetShareProperties",
            "SetShareProperties",
        ] {
            specs.push(spec(
                share,
                ProcKind::Write,
                UndoKind::Nothing,
                &format!("MPS: refused. {SHARES_REFUSED}."),
                Vec::new(),
            ));
        }
        specs.extend(mps::MpsProcedure::ALL.into_iter().map(|p| {
            let (kind, undo) = if p.is_read() {
                (ProcKind::Read, UndoKind::Nothing)
            } else {
                (ProcKind::Write, UndoKind::Reversible)
            };
            let inputs = p
                .elements()
                .iter()
                .map(|name| mps_input_spec(p, name))
                .collect();
            spec(p.name(), kind, undo, p.description(), inputs)
        }));
        specs
    }
}

/// Why the MPS share procedures are refused (and what to do instead).
const SHARES_REFUSED: &str = "SMB shares are not supported: they are configuration of the SMB server (Samba's smb.conf or its registry), which this provider does not manage. Export the tenant folders from Samba (a [share] per tenant, or one share whose path uses %U), and set who may use them with SetDirectoryAttributes `security` (POSIX ACLs, which Samba honours)";

/// An input of an MPS procedure.
fn mps_input_spec(p: mps::MpsProcedure, name: &str) -> provisio_engine::model::InputSpec {
    let optional = matches!(name, "newName" | "controlInfo" | "security")
        || (name == "properties" && p == mps::MpsProcedure::SetDirectoryAttributes)
        || (name == "dirName" && p == mps::MpsProcedure::ListDirectory);
    let (ty, description) = match name {
        "dirName" => ("string", "Folder name (one component) inside sourcePath"),
        "sourcePath" => ("element", "<sourcePath path=\"a/b\"/>: the folder holding it, relative to the provider root (`.` = the root); @machine must be this machine"),
        "destPath" => ("element", "<destPath path=\"a/b\"/>: the folder to move or copy into (must exist)"),
        "newName" => ("string", "The new folder name"),
        "oldName" => ("string", "The folder's current name"),
        "controlInfo" => ("element", "@recursive (default true), @replace (true refused when the target exists)"),
        "properties" => ("element", "readOnly (honoured), hidden (only as the name says), indexing / encompress (refused)"),
        "security" => ("element", "Windows ACEs: refused; use SetPermissions"),
        _ => ("string", ""),
    };
    input(name, ty, !optional, description)
}

#[async_trait]
impl Provider for FilesystemProvider {
    fn name(&self) -> &str {
        "Filesystem"
    }

    async fn purge(
        &self,
        scope: &provisio_engine::provider::PurgeScope,
    ) -> Result<provisio_engine::provider::Purged, ProviderError> {
        let scope = scope.clone();
        self.blocking(move |fs| fs.purge(&scope)).await
    }

    /// The transaction's intent file goes: none of its calls will be settled again.
    async fn transaction_over(&self, txn_id: &str) {
        let txn = txn_id.to_string();
        let removed = self
            .blocking(move |fs| pending::remove_transaction(&fs.dir, &fs.intent_logs, &txn))
            .await;
        if let Err(e) = removed {
            tracing::warn!(txn = txn_id, error = %e, "Filesystem: cannot remove the intent markers of a finished transaction; `provisio tx prune` will");
        }
    }

    fn procedures(&self) -> Vec<ProcedureSpec> {
        let mut specs = self.procedure_list();
        // Constant paths are checked when a request compiles (no `..`, not absolute).
        for input in specs.iter_mut().flat_map(|s| s.inputs.iter_mut()) {
            if matches!(input.name.as_str(), "path" | "from" | "to") {
                input.check = Some(provisio_engine::model::InputCheck(check_path));
            }
        }
        specs
    }

    /// CreateFolder, MoveFolder and WriteFile (without `overwrite`) are called while the
    /// engine's intent is being made durable: their checks and intent marker overlap the
    /// journal's sync, and they pass the barrier between the marker and their first
    /// change (`Fs::mark`). The other procedures are called once the intent is durable.
    /// All three also [`Provider::journals_markers`], which wins: this is for an engine
    /// that asks only this.
    fn awaits_intent(&self, call: &Call) -> bool {
        match call.context.procedure.as_str() {
            "CreateFolder" | "MoveFolder" => true,
            // An overwrite may clear an earlier try's trash before its marker.
            "WriteFile" => !matches!(
                parse_bool("overwrite", opt_input(&call.execute_data, &["overwrite"])),
                Ok(true) | Err(_)
            ),
            _ => false,
        }
    }

    /// The procedures whose every change follows `Fs::mark` (or, for a retry's cleanup
    /// of an earlier try, the intent barrier) keep their markers in the engine's journal
    /// (one sync a call, for the intent and the marker): CreateFolder, MoveFolder,
    /// WriteFile, SetQuota, SetOwner, SetPermissions, StageFolder, StageFile, and the MPS
    /// procedures that run as one of them (CreateDirectory, MoveDirectory, RenameDirectory,
    /// SetDirectoryAttributes). Not CopyDirectory (a retry looks for its earlier try's
    /// marker in the pending file), nor DeleteFolder, DeleteFile and DeleteDirectory, which
    /// write no marker (their trash entry tells).
    fn journals_markers(&self, call: &Call) -> bool {
        matches!(
            call.context.procedure.as_str(),
            "CreateFolder"
                | "MoveFolder"
                | "WriteFile"
                | "SetQuota"
                | "SetOwner"
                | "SetPermissions"
                | "StageFolder"
                | "StageFile"
                | "CreateDirectory"
                | "MoveDirectory"
                | "RenameDirectory"
                | "SetDirectoryAttributes"
        )
    }

    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        // Held until the blocking work ends, even when the engine stops waiting for it.
        let fenced = self.fences.hold(&call.context.idempotency_key()).await;
        self.blocking(move |fs| {
            let _fenced = fenced;
            fs.execute_sync(&call)
        })
        .await
    }

    async fn undo(&self, done: Done) -> Result<(), ProviderError> {
        self.blocking(move |fs| fs.undo_sync(&done)).await
    }

    async fn recover(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        // A call of this key still running (abandoned by a step timeout) finishes first.
        let _fenced = self.fences.hold(&call.context.idempotency_key()).await;
        let call = call.clone();
        self.blocking(move |fs| fs.recover_sync(&call)).await
    }

    async fn preview(&self, call: &Call) -> Result<Preview, ProviderError> {
        let call = call.clone();
        self.blocking(move |fs| fs.preview_sync(&call)).await
    }

    /// Two-phase: StageFolder/StageFile check the staged content and that the target is
    /// still free; CreateFolder checks the folder is still there.
    async fn prepare(&self, done: &Done) -> Result<(), ProviderError> {
        let done = done.clone();
        self.blocking(move |fs| fs.prepare_sync(&done)).await
    }

    /// Two-phase: StageFolder/StageFile rename the staged content into place; for
    /// CreateFolder the folder is already visible and there is nothing to do.
    async fn commit(&self, done: &Done) -> Result<(), ProviderError> {
        let done = done.clone();
        self.blocking(move |fs| fs.commit_sync(&done)).await
    }
}

/// The synchronous entry points the trait methods run on the blocking pool.
impl Fs {
    fn execute_sync(&self, call: &Call) -> Result<Outcome, ProviderError> {
        if let Some(p) = mps::MpsProcedure::of(&call.context.procedure) {
            return self.execute_mps(p, call);
        }
        match call.context.procedure.as_str() {
            "CreateFolder" => self.create_folder(call),
            "DeleteFolder" => self.delete_folder(call),
            "WriteFile" => self.write_file(call),
            "DeleteFile" => self.delete_file(call),
            "SetOwner" => self.set_owner(call),
            "SetQuota" => self.set_quota(call),
            "GetUsage" => self.get_usage(call),
            "MoveFolder" => self.move_folder(call),
            "SetPermissions" => self.set_permissions(call),
            "StageFolder" => self.stage_folder(call),
            "StageFile" => self.stage_file(call),
            share @ ("CreateShare" | "DeleteShare" | "GetShareProperties"
            | "SetShareProperties") => Err(ProviderError::Permanent {
                code: perms::E_NOT_SUPPORTED,
                message: format!("File System Provider/{share}: {SHARES_REFUSED}"),
            }),
            other => Err(ProviderError::invalid(format!(
                "the Filesystem provider has no procedure {other:?}"
            ))),
        }
    }

    fn undo_sync(&self, done: &Done) -> Result<(), ProviderError> {
        self.undo_record(done)?;
        pending::remove(
            &self.dir,
            &self.intent_logs,
            &done.context.idempotency_key(),
        );
        Ok(())
    }

    fn prepare_sync(&self, done: &Done) -> Result<(), ProviderError> {
        match UndoRecord::from_element(&done.context.procedure, &done.undo)? {
            record @ UndoRecord::Unstage { .. } => self.prepare_staged(&record),
            UndoRecord::RemoveFolder { path, .. } => {
                let path = self.checked("path", &path, false)?;
                match self.lstat(&path)? {
                    Some(m) if m.is_dir() => Ok(()),
                    _ => Err(ProviderError::permanent(format!(
                        "prepare: folder `{}` is gone",
                        path.display()
                    ))),
                }
            }
            _ => Err(ProviderError::Unsupported(format!(
                "Filesystem has no two-phase prepare for {}",
                done.context.procedure
            ))),
        }
    }

    fn commit_sync(&self, done: &Done) -> Result<(), ProviderError> {
        match UndoRecord::from_element(&done.context.procedure, &done.undo)? {
            record @ UndoRecord::Unstage { .. } => self.commit_staged(done, &record),
            UndoRecord::RemoveFolder { .. } => Ok(()),
            _ => Err(ProviderError::Unsupported(format!(
                "Filesystem has no two-phase commit for {}",
                done.context.procedure
            ))),
        }
    }
}
