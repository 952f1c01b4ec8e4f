//! Intent markers that let the provider answer "was the call with this idempotency key
//! applied?" after a crash. A marker (a [`Marker`]) is written (and fsynced) after the
//! provider's checks and before the change, holding what the change will be; recovery
//! compares it with what is on disk. Markers live in `.provisio-state/pending/` and are
//! removed when the call is undone.

use super::quota::STATE_DIR;
use super::records::{Marker, RecordError};
use super::sandbox::io_error;
use cap_std::fs::{Dir, OpenOptions};
use provisio_engine::provider::ProviderError;
use std::io::{self, Write};

pub(crate) const PENDING_DIR: &str = ".provisio-state/pending";

fn file_name(key: &str) -> String {
    let safe: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{PENDING_DIR}/{safe}.json")
}

/// Writes the marker for `key` durably.
pub(crate) fn write(dir: &Dir, key: &str, marker: &Marker) -> Result<(), ProviderError> {
    dir.create_dir_all(PENDING_DIR)
        .map_err(|e| io_error(STATE_DIR, e))?;
    let name = file_name(key);
    // The writer's pid in the name lets a later sweep tell a crashed write from one under
    // way (see `sweep`).
    let tmp = format!("{name}.tmp-{}", std::process::id());
    let text = serde_json::to_vec(marker).map_err(|e| RecordError::Encode(e.to_string()))?;
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    let written = dir.open_with(&tmp, &opts).and_then(|mut f| {
        f.write_all(&text)?;
        f.sync_all()?;
        dir.rename(&tmp, dir, &name)
    });
    if let Err(e) = written {
        // A full disk must not leave the partial file behind.
        let _ = dir.remove_file(&tmp);
        return Err(io_error(&name, e));
    }
    if let Ok(d) = dir.open_dir(PENDING_DIR) {
        // Make the rename durable (best effort where directories cannot be opened for sync).
        let _ = d.open(".").and_then(|f| f.sync_all());
    }
    Ok(())
}

/// Reads the marker for `key`: `None` when there is none; an error when it is there but
/// unreadable (then nobody can tell what the call did).
pub(crate) fn read(dir: &Dir, key: &str) -> Result<Option<Marker>, ProviderError> {
    let name = file_name(key);
    match dir.read_to_string(&name) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| RecordError::Marker { file: name, source }.into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(&name, e)),
    }
}

/// Removes the marker for `key` (after an undo, or when the change did not happen).
pub(crate) fn remove(dir: &Dir, key: &str) {
    let _ = dir.remove_file(file_name(key));
}
