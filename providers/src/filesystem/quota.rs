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

/// Whether the operating system can enforce quotas on the folders under a path (kernel
/// project quotas, ext4/XFS), as [`project_quota_support`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaSupport {
    /// The kernel has quota support and the file system holding the path is ext4 or XFS
    /// mounted with project quotas.
    Available {
        /// `ext4` or `xfs`.
        fs_type: String,
        /// Where that file system is mounted.
        mount_point: String,
    },
    /// Not available; says why. Quotas then bind only writes made through Provisio.
    NotAvailable {
        /// Why not, in one sentence.
        reason: String,
    },
}

impl std::fmt::Display for QuotaSupport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuotaSupport::Available {
                fs_type,
                mount_point,
            } => write!(
                f,
                "supported ({fs_type} at {mount_point} is mounted with project quotas)"
            ),
            QuotaSupport::NotAvailable { reason } => write!(
                f,
                "not supported: {reason}; quotas bind only writes made through Provisio"
            ),
        }
    }
}

/// Detects kernel project-quota support for the file system holding `path` (the nearest
/// existing folder at or above it; nothing is created). Reads `/proc/sys/fs/quota` (present
/// iff the kernel is built with quota support) and `/proc/self/mountinfo`.
pub fn project_quota_support(path: &std::path::Path) -> QuotaSupport {
    if !std::path::Path::new("/proc/sys/fs/quota").is_dir() {
        return QuotaSupport::NotAvailable {
            reason: "the kernel is built without quota support (no /proc/sys/fs/quota)".into(),
        };
    }
    let mut existing = path.to_path_buf();
    while !existing.exists() {
        if !existing.pop() {
            break;
        }
    }
    let Ok(real) = existing.canonicalize() else {
        return QuotaSupport::NotAvailable {
            reason: format!("cannot resolve {}", path.display()),
        };
    };
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => support_from_mountinfo(&text, &real),
        Err(e) => QuotaSupport::NotAvailable {
            reason: format!("cannot read /proc/self/mountinfo: {e}"),
        },
    }
}

/// The answer for `real` (an absolute, resolved path) from the text of a mountinfo file.
pub(crate) fn support_from_mountinfo(mountinfo: &str, real: &std::path::Path) -> QuotaSupport {
    // Fields: id parent major:minor root mount-point options [optional…] - type source super-options
    let mut best: Option<(String, String, String)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(mount_point), Some(options), Some(fs_type)) =
            (left.get(4), left.get(5), right.first())
        else {
            continue;
        };
        let mount_point = unescape_mount(mount_point);
        if !real.starts_with(&mount_point) {
            continue;
        }
        let longer = best
            .as_ref()
            .is_none_or(|(m, _, _)| mount_point.len() >= m.len());
        if longer {
            let all_options = format!("{options},{}", right.get(2).copied().unwrap_or(""));
            best = Some((mount_point, (*fs_type).to_string(), all_options));
        }
    }
    let Some((mount_point, fs_type, options)) = best else {
        return QuotaSupport::NotAvailable {
            reason: format!("no mount found for {}", real.display()),
        };
    };
    if fs_type != "ext4" && fs_type != "xfs" {
        return QuotaSupport::NotAvailable {
            reason: format!(
                "{} is on {fs_type} (mounted at {mount_point}); project quotas need ext4 or XFS",
                real.display()
            ),
        };
    }
    let project = options.split(',').any(|o| {
        matches!(
            o,
            "prjquota" | "prjjquota" | "pquota" | "pqnoenforce" | "pqnoenf"
        )
    });
    if project {
        QuotaSupport::Available {
            fs_type,
            mount_point,
        }
    } else {
        QuotaSupport::NotAvailable {
            reason: format!(
                "{fs_type} at {mount_point} is mounted without project quotas (no `prjquota` option)"
            ),
        }
    }
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo paths.
fn unescape_mount(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(b) = u8::try_from(value) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const INFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
40 27 254:1 / /srv/home rw,relatime - ext4 /dev/vdb rw,prjquota
41 27 254:2 / /srv/x\\040fs rw,relatime - xfs /dev/vdc rw,attr2,inode64,prjquota
42 27 254:3 / /srv/plainxfs rw,relatime - xfs /dev/vdd rw,attr2,noquota
43 27 0:40 / /srv/tmp rw,relatime - tmpfs tmpfs rw,size=4k
";

    #[test]
    fn mountinfo_decides_by_the_nearest_mount() {
        let at = |p: &str| support_from_mountinfo(INFO, Path::new(p));
        assert!(
            matches!(at("/var/lib/provisio/files"), QuotaSupport::NotAvailable { reason } if reason.contains("without project quotas"))
        );
        assert_eq!(
            at("/srv/home/files"),
            QuotaSupport::Available {
                fs_type: "ext4".into(),
                mount_point: "/srv/home".into()
            }
        );
        assert!(
            matches!(at("/srv/x fs/a"), QuotaSupport::Available { fs_type, .. } if fs_type == "xfs")
        );
        assert!(matches!(
            at("/srv/plainxfs/a"),
            QuotaSupport::NotAvailable { .. }
        ));
        assert!(
            matches!(at("/srv/tmp/a"), QuotaSupport::NotAvailable { reason } if reason.contains("tmpfs"))
        );
    }

    /// This machine kind: its root file system is mounted without project quotas (and its
    /// kernel has no XFS quota support), so the detection must say "not supported" — unless
    /// `findmnt` (util-linux, an independent reader of the mount table) shows a project-quota
    /// option for the temporary folder's file system.
    #[test]
    fn detection_on_this_machine_agrees_with_findmnt() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let found = project_quota_support(&tmp.path().join("not/yet/created"));
        assert!(
            !tmp.path().join("not").exists(),
            "detection creates nothing"
        );
        let findmnt = std::process::Command::new("findmnt")
            .args(["-n", "-o", "FSTYPE,OPTIONS", "-T"])
            .arg(tmp.path())
            .output();
        let expect_available = match findmnt {
            Ok(out) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let kernel = Path::new("/proc/sys/fs/quota").is_dir();
                kernel
                    && (text.starts_with("ext4") || text.starts_with("xfs"))
                    && text.split([',', ' ']).any(|o| {
                        matches!(
                            o.trim(),
                            "prjquota" | "prjjquota" | "pquota" | "pqnoenforce"
                        )
                    })
            }
            _ => false,
        };
        assert_eq!(
            matches!(found, QuotaSupport::Available { .. }),
            expect_available,
            "{found}"
        );
        if !expect_available {
            assert!(found.to_string().starts_with("not supported"), "{found}");
        }
    }
}
