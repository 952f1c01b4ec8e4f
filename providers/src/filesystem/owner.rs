//! SetOwner: the owner and group of a file or folder under the sandbox root, by name
//! (resolved by the system's user database, NSS included) or numeric id, limited to the
//! ids `[providers.filesystem] allowed_uids` / `allowed_gids` allow; undo restores the
//! previous owner, group and mode (`chown` clears setuid/setgid on files).
//!
//! The change is `fchownat(parent, name, AT_SYMLINK_NOFOLLOW)` on the parent folder opened
//! through the sandboxed cap-std `Dir`, so neither a symlink at the last component nor one
//! swapped into the path can carry it outside the root.

use super::perms::refuse_hard_links;
use super::records::{Marker, UndoRecord};
use super::sandbox::{io_error, RelPath, E_ACCESS_DENIED, E_PATH_NOT_FOUND};
use super::{parse_mode, pending, set_mode, Fs};
use crate::common::opt_nonempty;
use cap_std::fs::{Dir, Metadata, MetadataExt};
use provisio_engine::data::{Element, Scalar};
use provisio_engine::provider::{Call, Outcome, Preview, ProviderError};
use std::ops::RangeInclusive;

/// Numeric ids a setting allows (`allowed_uids`, `allowed_gids`): single ids and inclusive
/// ranges, written `"1000"` or `"1000-59999"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdRanges(Vec<RangeInclusive<u32>>);

/// A bad entry in an id list, naming it.
#[derive(Debug, thiserror::Error)]
#[error("{entry:?} is not a numeric id or range such as \"1000\" or \"1000-59999\"")]
pub struct BadIdRange {
    /// The entry as written.
    pub entry: String,
}

impl IdRanges {
    /// Parses entries such as `"1000-59999"` and `"33"`.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, BadIdRange> {
        let mut ranges = Vec::new();
        for raw in entries {
            let entry = raw.as_ref().trim();
            let bad = || BadIdRange {
                entry: raw.as_ref().to_string(),
            };
            let (lo, hi) = match entry.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (entry, entry),
            };
            let lo: u32 = lo.parse().map_err(|_| bad())?;
            let hi: u32 = hi.parse().map_err(|_| bad())?;
            if lo > hi {
                return Err(bad());
            }
            ranges.push(lo..=hi);
        }
        Ok(IdRanges(ranges))
    }

    /// Does the list allow `id`?
    pub fn allows(&self, id: u32) -> bool {
        self.0.iter().any(|r| r.contains(&id))
    }

    /// The list as configured (`1000-59999, 33`).
    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|r| {
                if r.start() == r.end() {
                    r.start().to_string()
                } else {
                    format!("{}-{}", r.start(), r.end())
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A user or group: a numeric id, else a name for the system to resolve.
fn resolve(field: &str, raw: &str, is_group: bool) -> Result<u32, ProviderError> {
    let t = raw.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| {
            ProviderError::invalid(format!("input `{field}`: {t} is not a valid id"))
        });
    }
    let found = if is_group {
        uzers::get_group_by_name(t).map(|g| g.gid())
    } else {
        uzers::get_user_by_name(t).map(|u| u.uid())
    };
    found.ok_or_else(|| {
        ProviderError::invalid(format!(
            "input `{field}`: no {} named {t:?} on this system (give a name the system knows, e.g. in /etc/{} or the directory service, or a numeric id)",
            if is_group { "group" } else { "user" },
            if is_group { "group" } else { "passwd" }
        ))
    })
}

fn mode_of(m: &Metadata) -> u32 {
    use cap_std::fs::PermissionsExt;
    m.permissions().mode() & 0o7777
}

/// The checked inputs of one SetOwner call.
struct OwnerChange {
    path: RelPath,
    previous: (u32, u32),
    mode: u32,
    new: (u32, u32),
}

impl Fs {
    /// Parses and checks path, user and group; looks at the current owner.
    fn owner_change(&self, data: &Element) -> Result<OwnerChange, ProviderError> {
        let path = self.path_input(data, "path", false)?;
        let user = opt_nonempty(data, &["user"]);
        let group = opt_nonempty(data, &["group"]);
        if user.is_none() && group.is_none() {
            return Err(ProviderError::invalid(
                "SetOwner needs `user`, `group` or both",
            ));
        }
        let uid = user.map(|u| resolve("user", &u, false)).transpose()?;
        let gid = group.map(|g| resolve("group", &g, true)).transpose()?;
        let check = |field: &str, id: Option<u32>, allowed: &Option<IdRanges>, key: &str| {
            match (id, allowed) {
                (Some(id), Some(list)) if !list.allows(id) => Err(ProviderError::Permanent {
                    code: E_ACCESS_DENIED,
                    message: format!(
                        "input `{field}`: id {id} is not allowed here ([providers.filesystem] {key} = {})",
                        list.describe()
                    ),
                }),
                _ => Ok(()),
            }
        };
        check("user", uid, &self.options.allowed_uids, "allowed_uids")?;
        check("group", gid, &self.options.allowed_gids, "allowed_gids")?;
        let meta = self.lstat(&path)?.ok_or_else(|| ProviderError::Permanent {
            code: E_PATH_NOT_FOUND,
            message: format!("input `path`: `{}` does not exist", path.display()),
        })?;
        if meta.file_type().is_symlink() {
            return Err(ProviderError::invalid(format!(
                "input `path`: `{}` is a symlink; set the owner of its target instead",
                path.display()
            )));
        }
        refuse_hard_links("path", &path, &meta)?;
        let previous = (meta.uid(), meta.gid());
        Ok(OwnerChange {
            new: (uid.unwrap_or(previous.0), gid.unwrap_or(previous.1)),
            previous,
            mode: mode_of(&meta),
            path,
        })
    }

    /// `fchownat` on the path's last component in its (sandboxed) parent folder.
    fn chown(&self, path: &RelPath, (uid, gid): (u32, u32)) -> Result<(), ProviderError> {
        let what = format!("`{}`", path.display());
        let parent: Dir = match path.parent() {
            Some(p) => self.dir.open_dir(p.path()),
            None => self.dir.try_clone(),
        }
        .map_err(|e| io_error(&what, e))?;
        let name = path.parts().last().cloned().unwrap_or_default();
        rustix::fs::chownat(
            &parent,
            name.as_str(),
            Some(rustix::fs::Uid::from_raw_unchecked(uid)),
            Some(rustix::fs::Gid::from_raw_unchecked(gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| {
            if e == rustix::io::Errno::PERM || e == rustix::io::Errno::ACCESS {
                ProviderError::Permanent {
                    code: E_ACCESS_DENIED,
                    message: format!(
                        "cannot give {what} to {uid}:{gid}: not permitted ({e}); the provider runs as uid {} and changing an owner needs root (CAP_CHOWN); a non-root provider may only change the group to one of its own groups",
                        rustix::process::geteuid().as_raw()
                    ),
                }
            } else {
                io_error(&what, e.into())
            }
        })
    }

    /// SetOwner execute.
    pub(super) fn set_owner(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let c = self.owner_change(&call.execute_data)?;
        let key = call.context.idempotency_key();
        self.mark(
            call,
            &key,
            &Marker::SetOwner {
                path: c.path.display(),
                previous: c.previous,
                new: c.new,
                mode: c.mode,
            },
        )?;
        if let Err(e) = self.chown(&c.path, c.new) {
            self.unmark(call, &key);
            return Err(e);
        }
        let id = |name: &str, v: u32| Element::with_scalar(name, Scalar::Int(i64::from(v)));
        let mut out = call.execute_data.clone();
        out.push(id("uid", c.new.0));
        out.push(id("gid", c.new.1));
        out.push(id("previousUid", c.previous.0));
        out.push(id("previousGid", c.previous.1));
        Ok(Outcome {
            execute_data: out,
            undo: Some(restore_owner_record(&c.path, c.previous, c.mode)?),
        })
    }

    /// Undo: the previous owner and group, then the previous mode (a path that is gone has
    /// nothing left to restore).
    pub(super) fn restore_owner(
        &self,
        path: &str,
        uid: u32,
        gid: u32,
        mode: &str,
    ) -> Result<(), ProviderError> {
        let path = self.checked("path", path, false)?;
        let mode = parse_mode("mode", Some(mode.to_string()))
            .map_err(|e| ProviderError::invalid(format!("SetOwner undo record: {}", e.message())))?
            .unwrap_or(0o644);
        let Some(meta) = self.lstat(&path)? else {
            tracing::warn!(path = %path.display(), "undo SetOwner: the path is gone");
            return Ok(());
        };
        if meta.file_type().is_symlink() {
            return Err(ProviderError::permanent(format!(
                "cannot undo SetOwner: `{}` is now a symlink",
                path.display()
            )));
        }
        refuse_hard_links("path", &path, &meta)?;
        if (meta.uid(), meta.gid()) != (uid, gid) {
            self.chown(&path, (uid, gid))?;
        }
        let now = self.lstat(&path)?.map(|m| mode_of(&m));
        if now != Some(mode) {
            set_mode(&self.dir, &path.path(), mode)
                .map_err(|e| io_error(&format!("`{}`", path.display()), e))?;
        }
        Ok(())
    }

    /// Recovery from the marker: owner now the new one → applied; the previous one → not
    /// applied; anything else → error (someone else changed it).
    pub(super) fn recover_owner(
        &self,
        key: &str,
        path: &str,
        previous: (u32, u32),
        new: (u32, u32),
        mode: u32,
    ) -> Result<Option<Element>, ProviderError> {
        let path = RelPath::parse("path", path, false)?;
        let Some(meta) = self.lstat(&path)? else {
            pending::remove(&self.dir, &self.intent_logs, key);
            return Ok(None);
        };
        let now = (meta.uid(), meta.gid());
        if now == new {
            return Ok(Some(restore_owner_record(&path, previous, mode)?));
        }
        if now == previous {
            pending::remove(&self.dir, &self.intent_logs, key);
            return Ok(None);
        }
        Err(ProviderError::permanent(format!(
            "cannot tell whether SetOwner ({key}) on `{}` was applied: it is owned by {}:{}, neither the previous {}:{} nor the requested {}:{}",
            path.display(),
            now.0,
            now.1,
            previous.0,
            previous.1,
            new.0,
            new.1
        )))
    }

    /// Preview of SetOwner.
    pub(super) fn preview_owner(&self, call: &Call) -> Result<Preview, ProviderError> {
        let c = self.owner_change(&call.execute_data)?;
        Ok(if c.new == c.previous {
            Preview::NoChange(format!(
                "{} is already owned by {}:{}",
                c.path.display(),
                c.new.0,
                c.new.1
            ))
        } else {
            Preview::Change(format!(
                "set owner of {}: {}:{} → {}:{}",
                c.path.display(),
                c.previous.0,
                c.previous.1,
                c.new.0,
                c.new.1
            ))
        })
    }
}

fn restore_owner_record(
    path: &RelPath,
    (uid, gid): (u32, u32),
    mode: u32,
) -> Result<Element, ProviderError> {
    Ok(UndoRecord::RestoreOwner {
        path: path.display(),
        uid,
        gid,
        mode: format!("{mode:04o}"),
    }
    .to_element()?)
}

#[cfg(test)]
mod tests {
    use super::IdRanges;

    #[test]
    fn id_ranges_parse_and_allow() {
        let r = IdRanges::parse(&["1000-1999", " 33 "]).expect("parse");
        assert!(r.allows(1000) && r.allows(1999) && r.allows(33));
        assert!(!r.allows(999) && !r.allows(2000) && !r.allows(0));
        assert_eq!(r.describe(), "1000-1999, 33");
        for bad in ["", "x", "5-1", "1-", "-1", "1-2-3"] {
            assert!(IdRanges::parse(&[bad]).is_err(), "{bad:?}");
        }
    }
}
