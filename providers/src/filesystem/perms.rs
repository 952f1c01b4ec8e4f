//! SetPermissions: mode bits and POSIX ACLs (access and default) of a file or folder under
//! the sandbox root, with an undo record that carries the exact previous mode and ACLs.
//!
//! Mode changes go through the cap-std `Dir`. ACLs are extended attributes, which cap-std
//! does not reach, so they are read and written with `lgetxattr`/`lsetxattr` on the real
//! path `<root>/<checked relative path>`: the relative path has passed the sandbox checks
//! (no `..`, no symlink leading out), and a symlink at the last component is refused (the
//! `l*` calls would not follow it anyway).

use super::acl::{self, PermState, Request};
use super::records::{Marker, PermTexts, UndoRecord};
use super::sandbox::{io_error, RelPath, E_ACCESS_DENIED, E_PATH_NOT_FOUND};
use super::{pending, Fs};
use crate::common::{opt_nonempty, text};
use provisio_engine::data::Element;
use provisio_engine::provider::{Call, Outcome, Preview, ProviderError};
use std::io;
use std::path::PathBuf;

/// HRESULT for "not supported" (ERROR_NOT_SUPPORTED).
pub(crate) const E_NOT_SUPPORTED: u32 = provisio_engine::codes::E_NOT_SUPPORTED;

fn xattr_error(what: &str, e: io::Error) -> ProviderError {
    if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) {
        ProviderError::Permanent {
            code: E_NOT_SUPPORTED,
            message: format!(
                "{what}: the file system under the provider root does not support POSIX ACLs (EOPNOTSUPP); mount it with ACL support"
            ),
        }
    } else {
        io_error(what, e)
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error())
}

/// Resolves names through the local `/etc/passwd` and `/etc/group` files only.
pub(super) fn resolve_name(is_group: bool, name: &str) -> Option<u32> {
    let file = if is_group {
        "/etc/group"
    } else {
        "/etc/passwd"
    };
    let text = std::fs::read_to_string(file).ok()?;
    acl::lookup_id(&text, name)
}

/// Refuses a regular file with more than one hard link: another link may be outside the
/// root (a link planted inside the root would let a request change a file it cannot
/// name). Folders cannot be hard-linked.
pub(super) fn refuse_hard_links(
    field: &str,
    path: &RelPath,
    meta: &cap_std::fs::Metadata,
) -> Result<(), ProviderError> {
    use cap_std::fs::MetadataExt;
    if meta.is_file() && meta.nlink() > 1 {
        return Err(ProviderError::Permanent {
            code: E_ACCESS_DENIED,
            message: format!(
                "input `{field}`: `{}` has {} hard links; the provider does not change a file that has other names (one may be outside its root)",
                path.display(),
                meta.nlink()
            ),
        });
    }
    Ok(())
}

/// The parsed inputs of one SetPermissions call.
pub(super) struct Target {
    path: RelPath,
    real: PathBuf,
    pub(super) is_dir: bool,
}

impl Fs {
    /// Checks `path` for SetPermissions: it exists and is not a symlink.
    pub(super) fn perm_target(&self, field: &str, path: RelPath) -> Result<Target, ProviderError> {
        let meta = self.lstat(&path)?.ok_or_else(|| ProviderError::Permanent {
            code: E_PATH_NOT_FOUND,
            message: format!("input `{field}`: `{}` does not exist", path.display()),
        })?;
        if meta.file_type().is_symlink() {
            return Err(ProviderError::invalid(format!(
                "input `{field}`: `{}` is a symlink; set permissions on its target instead",
                path.display()
            )));
        }
        refuse_hard_links(field, &path, &meta)?;
        let real = self.root.join(path.path());
        Ok(Target {
            path,
            real,
            is_dir: meta.is_dir(),
        })
    }

    /// The current mode and ACLs (a file system without ACL support has none).
    pub(super) fn perm_state(&self, t: &Target) -> Result<PermState, ProviderError> {
        let what = format!("`{}`", t.path.display());
        let meta = self
            .lstat(&t.path)?
            .ok_or_else(|| ProviderError::Permanent {
                code: E_PATH_NOT_FOUND,
                message: format!("{what} does not exist"),
            })?;
        let mode = {
            use cap_std::fs::PermissionsExt;
            meta.permissions().mode() & 0o7777
        };
        let read = |name: &str| -> Result<Option<acl::Acl>, ProviderError> {
            match xattr::get(&t.real, name) {
                Ok(Some(bytes)) => acl::Acl::decode(&bytes).map(Some).map_err(|e| {
                    ProviderError::permanent(format!("{what}: unreadable {name}: {e}"))
                }),
                Ok(None) => Ok(None),
                Err(e) if is_unsupported(&e) => Ok(None),
                Err(e) => Err(io_error(&what, e)),
            }
        };
        let access = read(acl::XATTR_ACCESS)?.filter(|a| !a.is_minimal());
        let default = if t.is_dir {
            read(acl::XATTR_DEFAULT)?
        } else {
            None
        };
        Ok(PermState {
            mode,
            access,
            default,
        })
    }

    /// Makes the permissions of `t` equal `want`, given they are `have` now.
    fn apply_perms(
        &self,
        t: &Target,
        have: &PermState,
        want: &PermState,
    ) -> Result<(), ProviderError> {
        let what = format!("`{}`", t.path.display());
        // Checked again just before the change: a link planted since the first check must
        // not carry the change outside the root.
        if let Some(meta) = self.lstat(&t.path)? {
            refuse_hard_links("path", &t.path, &meta)?;
        }
        let write = |name: &str, old: &Option<acl::Acl>, new: &Option<acl::Acl>| {
            if old == new {
                return Ok(());
            }
            match new {
                Some(a) => {
                    xattr::set(&t.real, name, &a.encode()).map_err(|e| xattr_error(&what, e))
                }
                None => match xattr::remove(&t.real, name) {
                    Ok(()) => Ok(()),
                    Err(e)
                        if e.raw_os_error() == Some(rustix::io::Errno::NODATA.raw_os_error()) =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(xattr_error(&what, e)),
                },
            }
        };
        write(acl::XATTR_ACCESS, &have.access, &want.access)?;
        write(acl::XATTR_DEFAULT, &have.default, &want.default)?;
        // Last: exact bits (setuid/setgid/sticky too); with an extended ACL the group bits
        // are the mask, which `want.mode` already agrees with.
        super::set_mode(&self.dir, &t.path.path(), want.mode).map_err(|e| io_error(&what, e))
    }

    fn perm_request(&self, data: &Element) -> Result<(Option<u32>, Request), ProviderError> {
        let mode = self.mode_input(data)?;
        let req = match opt_nonempty(data, &["acl"]) {
            Some(raw) => acl::parse_request(&raw, &resolve_name)
                .map_err(|e| ProviderError::invalid(format!("input `acl`: {e}")))?,
            None => Request::default(),
        };
        if mode.is_none() && req == Request::default() {
            return Err(ProviderError::invalid(
                "SetPermissions needs `mode`, `acl` or both",
            ));
        }
        Ok((mode, req))
    }

    fn planned(
        &self,
        t: &Target,
        prev: &PermState,
        mode: Option<u32>,
        req: &Request,
    ) -> Result<PermState, ProviderError> {
        acl::plan(prev, mode, req, t.is_dir)
            .map_err(|e| ProviderError::invalid(format!("input `acl`: {e}")))
    }

    pub(super) fn set_permissions(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let data = &call.execute_data;
        let path = self.path_input(data, "path", false)?;
        let (mode, req) = self.perm_request(data)?;
        let t = self.perm_target("path", path)?;
        let prev = self.perm_state(&t)?;
        let new = self.planned(&t, &prev, mode, &req)?;
        self.mark(
            call,
            &call.context.idempotency_key(),
            &Marker::SetPermissions {
                path: t.path.display(),
                previous: PermTexts::of(&prev),
                new: PermTexts::of(&new),
            },
        )?;
        if let Err(e) = self.apply_perms(&t, &prev, &new) {
            // Leave nothing half-done: put back what was there.
            if let Ok(now) = self.perm_state(&t) {
                let _ = self.apply_perms(&t, &now, &prev);
            }
            self.unmark(call, &call.context.idempotency_key());
            return Err(e);
        }
        let now = self.perm_state(&t)?;
        if now != new {
            tracing::warn!(path = %t.path.display(), expected = ?new, actual = ?now,
                "SetPermissions: the file system left different permissions than planned");
        }
        let mut out = call.execute_data.clone();
        out.push(text("appliedMode", format!("{:04o}", now.mode)));
        out.push(text("appliedAcl", now.access_text()));
        out.push(text("appliedDefaultAcl", now.default_text()));
        Ok(Outcome {
            execute_data: out,
            undo: Some(restore_record(&t.path, &prev)?),
        })
    }

    /// Undo: puts back the recorded mode and ACLs (a path that is gone has nothing left to
    /// restore).
    pub(super) fn restore_permissions(
        &self,
        path: &str,
        previous: &PermTexts,
    ) -> Result<(), ProviderError> {
        let path = self.checked("path", path, false)?;
        let prev = previous.state()?;
        if self.lstat(&path)?.is_none() {
            tracing::warn!(path = %path.display(), "undo SetPermissions: the path is gone");
            return Ok(());
        }
        let t = self.perm_target("path", path)?;
        let now = self.perm_state(&t)?;
        if now == prev {
            return Ok(());
        }
        self.apply_perms(&t, &now, &prev)
    }

    /// Recovery from the marker: applied (now = new) → the undo record; untouched (now =
    /// previous) → `None`; half-applied (each part is either the previous or the new one)
    /// → put back the previous state and `None`; anything else → error (someone else
    /// changed it).
    pub(super) fn recover_permissions(
        &self,
        key: &str,
        path: &str,
        previous: &PermTexts,
        new: &PermTexts,
    ) -> Result<Option<Element>, ProviderError> {
        let path = RelPath::parse("path", path, false)?;
        let bad = |e: ProviderError| {
            ProviderError::permanent(format!("recovery marker for {key}: {}", e.message()))
        };
        let prev = previous.state().map_err(bad)?;
        let new = new.state().map_err(bad)?;
        if self.lstat(&path)?.is_none() {
            pending::remove(&self.dir, &self.intent_logs, key);
            return Ok(None);
        }
        let t = self.perm_target("path", path)?;
        let now = self.perm_state(&t)?;
        if now == prev {
            pending::remove(&self.dir, &self.intent_logs, key);
            return Ok(None);
        }
        if now == new {
            return Ok(Some(restore_record(&t.path, &prev)?));
        }
        let either = |a: u32, b: u32, c: u32| a == b || a == c;
        let ours = (either(now.mode & 0o777, prev.mode & 0o777, new.mode & 0o777))
            && either(now.mode & 0o7000, prev.mode & 0o7000, new.mode & 0o7000)
            && (now.access == prev.access || now.access == new.access)
            && (now.default == prev.default || now.default == new.default);
        if !ours {
            return Err(ProviderError::permanent(format!(
                "cannot tell whether SetPermissions ({key}) on `{}` was applied: its permissions are now {} {} {}, neither the previous nor the requested ones",
                t.path.display(),
                format_args!("{:04o}", now.mode),
                now.access_text(),
                now.default_text()
            )));
        }
        self.apply_perms(&t, &now, &prev)?;
        pending::remove(&self.dir, &self.intent_logs, key);
        Ok(None)
    }

    pub(super) fn preview_permissions(&self, call: &Call) -> Result<Preview, ProviderError> {
        let data = &call.execute_data;
        let path = self.path_input(data, "path", false)?;
        let (mode, req) = self.perm_request(data)?;
        let t = self.perm_target("path", path)?;
        let prev = self.perm_state(&t)?;
        let new = self.planned(&t, &prev, mode, &req)?;
        Ok(if new == prev {
            Preview::NoChange(format!(
                "{} already has these permissions",
                t.path.display()
            ))
        } else {
            Preview::Update(format!(
                "set permissions of {}: mode {:04o} → {:04o}, acl {} → {}, default acl {} → {}",
                t.path.display(),
                prev.mode,
                new.mode,
                prev.access_text(),
                new.access_text(),
                prev.default_text(),
                new.default_text()
            ))
        })
    }
}

fn restore_record(path: &RelPath, prev: &PermState) -> Result<Element, ProviderError> {
    let record = UndoRecord::RestorePermissions {
        path: path.display(),
        previous: PermTexts::of(prev),
    };
    Ok(record.to_element()?)
}
