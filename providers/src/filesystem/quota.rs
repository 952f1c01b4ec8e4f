//! Quota bookkeeping for the filesystem provider: one JSON map `path → megabytes` in
//! `<root>/.provisio-state/quotas.json`, replaced atomically (temp file, fsync, rename).

use super::sandbox::io_error;
use cap_std::fs::{Dir, OpenOptions};
use provisio_engine::provider::ProviderError;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// Folder for provider state, under the root.
pub(crate) const STATE_DIR: &str = ".provisio-state";
const QUOTA_FILE: &str = ".provisio-state/quotas.json";

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Quotas in megabytes (MiB) by normalized relative path.
pub(crate) type Quotas = BTreeMap<String, u64>;

/// Reads the quota map (empty when the file does not exist yet).
pub(crate) fn load(dir: &Dir) -> Result<Quotas, ProviderError> {
    match dir.read_to_string(QUOTA_FILE) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            ProviderError::permanent(format!(
                "quota state file {QUOTA_FILE} is not a JSON map of path to megabytes: {e}"
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Quotas::new()),
        Err(e) => Err(io_error(QUOTA_FILE, e)),
    }
}

/// Replaces the quota map atomically.
pub(crate) fn store(dir: &Dir, quotas: &Quotas) -> Result<(), ProviderError> {
    let text = serde_json::to_string_pretty(quotas)
        .map_err(|e| ProviderError::permanent(format!("cannot encode quotas: {e}")))?;
    dir.create_dir_all(STATE_DIR)
        .map_err(|e| io_error(STATE_DIR, e))?;
    let tmp = format!(
        "{STATE_DIR}/quotas.json.tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let result = (|| -> io::Result<()> {
        let mut f = dir.open_with(&tmp, OpenOptions::new().write(true).create_new(true))?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        dir.rename(&tmp, dir, QUOTA_FILE)?;
        if let Ok(d) = dir.open_dir(STATE_DIR) {
            // Best effort: make the rename durable.
            let _ = d.open(".").and_then(|f| f.sync_all());
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = dir.remove_file(&tmp);
        return Err(io_error(QUOTA_FILE, e));
    }
    Ok(())
}

/// Moves the quota of `from` and of everything below it to `to`.
pub(crate) fn rename_prefix(quotas: &mut Quotas, from: &str, to: &str) -> bool {
    let keys: Vec<String> = quotas
        .keys()
        .filter(|k| k.as_str() == from || k.starts_with(&format!("{from}/")))
        .cloned()
        .collect();
    for k in &keys {
        if let Some(v) = quotas.remove(k) {
            let rest = &k[from.len()..];
            quotas.insert(format!("{to}{rest}"), v);
        }
    }
    !keys.is_empty()
}
