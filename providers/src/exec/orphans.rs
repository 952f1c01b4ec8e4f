//! Child records in the provider's state folder, so that a child left behind by a killed
//! engine (`kill -9`: nothing runs on the way out) is killed by the next start before
//! recovery asks `recover` — otherwise the orphan could apply its call after recovery was
//! told "not applied" and rolled the transaction back.
//!
//! Each running child has one file `child-<pgid>-<start>` (its process group id, which is
//! its pid, and its start time: field 22 of `/proc/<pid>/stat`, clock ticks since boot),
//! holding the boot id. The file is written and synced (file and folder) before the child
//! is sent any request, and removed once the child was reaped; it also names the owning
//! process (pid and start time). At start, every recorded group whose owner is gone and
//! whose leader is still alive with the same start time in the same boot is sent
//! SIGKILL, and the start waits until the leader is gone. A leader that is gone (or a
//! reused pid: another start time) only has its record dropped.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a start waits for a killed orphan to die before it gives up with an error.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A child's identity: process group id (= pid of the leader) and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildId {
    /// Process group id, the leader's pid.
    pub pgid: u32,
    /// Field 22 of `/proc/<pid>/stat`.
    pub start: u64,
}

/// Field 22 (start time) and field 3 (state) of `/proc/<pid>/stat`; `None` when the
/// process does not exist (or `/proc` cannot tell).
fn stat(pid: u32) -> Option<(u64, char)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: comm may hold spaces and parentheses; the last `)` ends it.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `state` was field 3; field 22 is 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// The start time of a live process `pid`.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(start, _)| start)
}

/// Whether the process with this identity still runs (a zombie does not: it can do
/// nothing more).
fn alive(id: ChildId) -> bool {
    matches!(stat(id.pgid), Some((start, state)) if start == id.start && state != 'Z' && state != 'X')
}

/// This boot's id (empty when the kernel does not say).
fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn file_name(id: ChildId) -> String {
    format!("child-{}-{}", id.pgid, id.start)
}

fn parse_name(name: &str) -> Option<ChildId> {
    let (pgid, start) = name.strip_prefix("child-")?.split_once('-')?;
    Some(ChildId {
        pgid: pgid.parse().ok()?,
        start: start.parse().ok()?,
    })
}

/// Syncs the folder so a created or removed entry survives a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Writes and syncs the record of a child that was just started; returns its path.
pub fn record(dir: &Path, pid: u32) -> io::Result<PathBuf> {
    let start = start_time(pid).ok_or_else(|| {
        io::Error::other(format!(
            "cannot read the start time of child {pid} from /proc"
        ))
    })?;
    fs::create_dir_all(dir)?;
    let path = dir.join(file_name(ChildId { pgid: pid, start }));
    let mut file = fs::File::create(&path)?;
    // The owner (this process) too: a record whose owner still runs is no orphan, it
    // belongs to another live engine on the same folder (a daemon while `provisio plan`
    // starts the same provider, say), which must not lose its children.
    let me = std::process::id();
    let owner = start_time(me)
        .map(|t| format!("{me} {t}"))
        .unwrap_or_default();
    file.write_all(format!("{}\n{owner}\n", boot_id()).as_bytes())?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(path)
}

/// Removes a record (best effort: a stale record is dropped by the next start anyway,
/// since the pid then has another start time or is gone).
pub fn remove(path: &Path) {
    if fs::remove_file(path).is_ok() {
        if let Some(dir) = path.parent() {
            let _ = sync_dir(dir);
        }
    }
}

/// Kills every recorded child of an earlier process that is still alive, waits until it
/// is gone, and drops all records. Returns the killed children. An error means a child
/// could not be read, killed or waited for; its record stays.
pub fn kill_orphans(dir: &Path) -> io::Result<Vec<ChildId>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let boot = boot_id();
    let mut killed = Vec::new();
    let mut dropped = false;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(parse_name) else {
            continue;
        };
        let path = entry.path();
        let recorded = fs::read_to_string(&path)?;
        let mut lines = recorded.lines();
        let recorded_boot = lines.next().unwrap_or_default();
        let child_alive = recorded_boot.trim() == boot && alive(id);
        if child_alive && owner_alive(lines.next()) {
            continue; // a live engine's child, not an orphan
        }
        if child_alive {
            kill_group(id)?;
            let deadline = Instant::now() + KILL_WAIT;
            while alive(id) {
                if Instant::now() >= deadline {
                    return Err(io::Error::other(format!(
                        "orphaned child {} (from an earlier run) is still alive {KILL_WAIT:?} \
                         after SIGKILL",
                        id.pgid
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            killed.push(id);
        }
        fs::remove_file(&path)?;
        dropped = true;
    }
    if dropped {
        sync_dir(dir)?;
    }
    Ok(killed)
}

/// Whether the owner line of a record (`<pid> <start time>`) names a process that still
/// runs. Records written before owners were recorded have none: their children are orphans.
fn owner_alive(line: Option<&str>) -> bool {
    let Some((pid, start)) = line.and_then(|l| l.trim().split_once(' ')) else {
        return false;
    };
    match (pid.parse(), start.parse()) {
        (Ok(pgid), Ok(start)) => alive(ChildId { pgid, start }),
        _ => false,
    }
}

/// SIGKILL to the whole process group. A group that is already gone is fine.
fn kill_group(id: ChildId) -> io::Result<()> {
    let Some(pgid) = i32::try_from(id.pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Ok(());
    };
    match rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_foreign_files_are_ignored() {
        let id = ChildId {
            pgid: 4242,
            start: 987654,
        };
        assert_eq!(parse_name(&file_name(id)), Some(id));
        assert_eq!(parse_name("child-x-1"), None);
        assert_eq!(parse_name("notes.txt"), None);
    }

    #[test]
    fn own_start_time_is_read_and_a_changed_start_time_is_not_alive() {
        let me = std::process::id();
        let start = start_time(me).expect("own start time");
        assert!(alive(ChildId { pgid: me, start }));
        assert!(!alive(ChildId {
            pgid: me,
            start: start + 1
        }));
    }

    #[test]
    fn a_record_of_a_dead_child_is_dropped_without_killing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn");
        let pid = child.id();
        let path = record(dir.path(), pid).expect("record");
        assert!(path.exists());
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert_eq!(kill_orphans(dir.path()).expect("kill orphans"), Vec::new());
        assert!(!path.exists());
    }

    #[test]
    fn a_child_of_a_live_engine_is_left_alone() {
        // The record's owner is this (live) test process: another engine starting on the
        // same folder must not take its child for an orphan.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn");
        let pid = child.id();
        let path = record(dir.path(), pid).expect("record");
        assert_eq!(kill_orphans(dir.path()).expect("kill orphans"), Vec::new());
        let start = start_time(pid).expect("start time");
        assert!(alive(ChildId { pgid: pid, start }), "the child still runs");
        assert!(path.exists(), "its record stays");
        child.kill().expect("kill");
        child.wait().expect("wait");
    }
}
