//! Path checking for the filesystem provider: every input path is relative to the root,
//! never escapes it, and never names the provider's own bookkeeping folders.
//!
//! Two layers: [`RelPath::parse`] rejects absolute paths, `..`, NUL, control characters
//! and reserved names up front with a message naming the input field; [`check_symlinks`]
//! walks the existing components and rejects symlinks that lead outside the root. All
//! file operations then go through a cap-std [`Dir`], which enforces the sandbox at the
//! system-call level as well (so a race cannot escape either).

use cap_std::fs::Dir;
use provisio_engine::provider::ProviderError;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Prefix of the provider's bookkeeping folders at the root (trash, state).
pub(crate) const RESERVED_PREFIX: &str = ".provisio-";

/// A checked, normalized path relative to the root (at least one component unless it
/// is the root itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelPath {
    parts: Vec<String>,
}

impl RelPath {
    /// Checks `raw` (the value of input `field`). `allow_root` accepts `.` for the root.
    pub(crate) fn parse(field: &str, raw: &str, allow_root: bool) -> Result<Self, ProviderError> {
        let bad = |why: String| ProviderError::invalid(format!("input `{field}`: {why}"));
        if raw.trim().is_empty() {
            return Err(bad("the path is empty".into()));
        }
        if raw.contains('\0') {
            return Err(bad("the path contains a NUL byte".into()));
        }
        if let Some(c) = raw.chars().find(|c| c.is_control()) {
            return Err(bad(format!(
                "the path contains the control character {c:?}"
            )));
        }
        if raw.starts_with('/') || raw.starts_with('\\') || Path::new(raw).is_absolute() {
            return Err(bad(format!(
                "{raw:?} is absolute; paths are relative to the provider root"
            )));
        }
        if raw.contains('\\') {
            return Err(bad(format!(
                "{raw:?} contains a backslash; use `/` to separate folders"
            )));
        }
        let bytes = raw.as_bytes();
        if bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic() {
            return Err(bad(format!("{raw:?} looks like a drive path")));
        }
        let mut parts = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => continue,
                ".." => {
                    return Err(bad(format!(
                        "{raw:?} contains `..`; paths may not leave their folder"
                    )))
                }
                p if p.len() > 255 => {
                    return Err(bad(format!(
                        "a component of {raw:?} is longer than 255 bytes"
                    )))
                }
                p => parts.push(p.to_string()),
            }
        }
        if let Some(first) = parts.first() {
            if is_reserved(first) {
                return Err(bad(format!(
                    "{raw:?} is inside `{first}`, which is reserved for the provider"
                )));
            }
        } else if !allow_root {
            return Err(bad(format!(
                "{raw:?} names the provider root itself, not a folder inside it"
            )));
        }
        Ok(RelPath { parts })
    }

    /// The path for cap-std (`.` for the root).
    pub(crate) fn path(&self) -> PathBuf {
        if self.parts.is_empty() {
            PathBuf::from(".")
        } else {
            self.parts.iter().collect()
        }
    }

    /// The normalized text form (`a/b/c`, `.` for the root).
    pub(crate) fn display(&self) -> String {
        if self.parts.is_empty() {
            ".".to_string()
        } else {
            self.parts.join("/")
        }
    }

    /// The components.
    pub(crate) fn parts(&self) -> &[String] {
        &self.parts
    }

    /// The parent (None for a single component or the root).
    pub(crate) fn parent(&self) -> Option<RelPath> {
        if self.parts.len() <= 1 {
            None
        } else {
            Some(RelPath {
                parts: self.parts[..self.parts.len() - 1].to_vec(),
            })
        }
    }

    /// The first `n` components.
    pub(crate) fn prefix(&self, n: usize) -> RelPath {
        RelPath {
            parts: self.parts[..n.min(self.parts.len())].to_vec(),
        }
    }

    /// True when `self` is `other` or lies inside it.
    pub(crate) fn starts_with(&self, other: &RelPath) -> bool {
        self.parts.len() >= other.parts.len() && self.parts[..other.parts.len()] == other.parts[..]
    }
}

/// True for the provider's own names at the root.
pub(crate) fn is_reserved(component: &str) -> bool {
    component.len() >= RESERVED_PREFIX.len()
        && component.as_bytes()[..RESERVED_PREFIX.len()]
            .eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes())
}

/// Walks the components of `path` that exist and rejects any symlink that does not
/// resolve to a place inside the root (or resolves into the reserved folders).
pub(crate) fn check_symlinks(dir: &Dir, field: &str, path: &RelPath) -> Result<(), ProviderError> {
    for n in 1..=path.parts().len() {
        let prefix = path.prefix(n);
        let meta = match dir.symlink_metadata(prefix.path()) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(()),
            Err(e) => return Err(io_error(&format!("input `{field}`"), e)),
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        let escapes = || {
            ProviderError::invalid(format!(
                "input `{field}`: `{}` is a symlink that leads outside the provider root",
                prefix.display()
            ))
        };
        match dir.canonicalize(prefix.path()) {
            Ok(target) => {
                let first = target.components().next();
                match first {
                    Some(Component::Normal(c)) if is_reserved(&c.to_string_lossy()) => {
                        return Err(escapes())
                    }
                    Some(Component::Normal(_)) | Some(Component::CurDir) | None => {}
                    Some(_) => return Err(escapes()),
                }
            }
            Err(_) => return Err(escapes()),
        }
    }
    Ok(())
}

/// HRESULT for "already exists" (ERROR_ALREADY_EXISTS).
pub(crate) const E_ALREADY_EXISTS: u32 = provisio_engine::codes::E_ALREADY_EXISTS;
/// HRESULT for "path not found" (ERROR_PATH_NOT_FOUND).
pub(crate) const E_PATH_NOT_FOUND: u32 = provisio_engine::codes::E_PATH_NOT_FOUND;
/// HRESULT for "access denied" (ERROR_ACCESS_DENIED).
pub(crate) const E_ACCESS_DENIED: u32 = provisio_engine::codes::E_ACCESS_DENIED;
/// HRESULT for "directory not empty" (ERROR_DIR_NOT_EMPTY).
pub(crate) const E_DIR_NOT_EMPTY: u32 = provisio_engine::codes::E_DIR_NOT_EMPTY;

/// Maps an I/O error to the provider error class: busy/interrupted is transient,
/// everything else permanent; an escape caught by cap-std is invalid input.
pub(crate) fn io_error(what: &str, e: io::Error) -> ProviderError {
    use io::ErrorKind as K;
    let perm = |code: u32, msg: String| ProviderError::Permanent { code, message: msg };
    match e.kind() {
        K::NotFound => perm(E_PATH_NOT_FOUND, format!("{what}: does not exist ({e})")),
        K::AlreadyExists => perm(E_ALREADY_EXISTS, format!("{what}: already exists")),
        K::DirectoryNotEmpty => perm(E_DIR_NOT_EMPTY, format!("{what}: folder is not empty")),
        K::PermissionDenied if e.to_string().contains("outside") => {
            ProviderError::invalid(format!("{what}: leads outside the provider root"))
        }
        K::PermissionDenied => perm(E_ACCESS_DENIED, format!("{what}: access denied ({e})")),
        K::Interrupted | K::WouldBlock | K::TimedOut | K::ResourceBusy => {
            ProviderError::transient(format!("{what}: {e}"))
        }
        _ => ProviderError::permanent(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_escapes() {
        for bad in [
            "",
            " ",
            "/etc",
            "../x",
            "a/../../x",
            "a/..",
            "x\0y",
            "a\nb",
            "C:\\x",
            "a\\b",
            ".provisio-trash/x",
            ".PROVISIO-state",
            ".",
            "./",
        ] {
            assert!(RelPath::parse("path", bad, false).is_err(), "{bad:?}");
        }
        assert_eq!(
            RelPath::parse("path", "./a//b/", false).map(|p| p.display()),
            Ok("a/b".into())
        );
        assert_eq!(
            RelPath::parse("path", ".", true).map(|p| p.display()),
            Ok(".".into())
        );
    }
}
