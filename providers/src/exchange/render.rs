//! The files a mail server reads, rendered from the committed records (a projection; the
//! truth is provider state). Every file is written whole to a temporary name and renamed over
//! the old one, so a reader (Dovecot re-reads its passwd-file when it changes, Postfix a
//! `postmap`ped map) sees the old or the new content, never a part.
//!
//! Under the mail root:
//!
//! - `passwd`: the Dovecot passwd-file userdb, one line per mailbox:
//!   `primary::uid:gid::home::userdb_quota_rule=*:storage=<KB>K[ userdb_sieve=file:<script>]`
//!   (no password: authentication is the directory's, see `docs/providers/exchange.md`);
//! - `virtual_mailbox_domains` (Authoritative domains), `relay_domains` (InternalRelay and
//!   ExternalRelay, with the type), `virtual_mailbox_maps` (every address of a mailbox → its
//!   maildir, relative to the mail root) and `virtual_alias_maps` (secondary address →
//!   primary, group address → members): Postfix lookup tables in text form (`key<TAB>value`);
//! - `stores/<server>/<store>/<domain>/<local>/`: a mailbox's home, with `Maildir/` (Maildir++:
//!   `cur`, `new`, `tmp`, `maildirsize` holding the quota) and `sieve/oof.sieve`.

use super::records::{org_of_key, DomainRec, GroupRec, MailboxRec};
use super::sieve::vacation_script;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where and as whom the files are written.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
    /// The uid and gid of the mail (passwd-file fields, owner of the homes).
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Whether homes are given to uid:gid (the process may do it: it runs as root).
    pub(crate) chown: bool,
}

/// One path component: lower-case; letters, digits and `.-_+` kept, every other byte (and a
/// leading `.`) written `=XX`, so distinct names stay distinct and none climbs out.
pub(crate) fn component(s: &str) -> String {
    let mut out = String::new();
    for (i, b) in s.to_lowercase().bytes().enumerate() {
        let keep =
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+') || (b == b'.' && i > 0);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("=00");
    }
    out
}

impl Layout {
    /// A mailbox's home, relative to the root.
    pub(crate) fn home_rel(&self, m: &MailboxRec) -> PathBuf {
        let (local, domain) = m.primary().split_once('@').unwrap_or((m.primary(), ""));
        let (server, store) = if m.server.is_empty() {
            ("default".to_string(), "default".to_string())
        } else {
            (component(&m.server), component(&m.store))
        };
        PathBuf::from("stores")
            .join(server)
            .join(store)
            .join(component(domain))
            .join(component(local))
    }

    pub(crate) fn home(&self, m: &MailboxRec) -> PathBuf {
        self.root.join(self.home_rel(m))
    }

    fn sieve_script(&self, m: &MailboxRec) -> PathBuf {
        self.home(m).join("sieve").join("oof.sieve")
    }
}

/// A change a commit makes to the files besides re-rendering: a home moved (MoveMailbox) or
/// removed (DeleteMailbox).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FileOp {
    Move { from: PathBuf, to: PathBuf },
    Remove(PathBuf),
}

/// Writes `content` to `path` atomically (temporary file, rename); does nothing when the
/// file already holds exactly that. Not synced: the files are rebuilt from provider state at
/// start, so a crash that loses a write loses nothing (the store is what is synced); the
/// rename alone keeps a reader from ever seeing a partial file.
pub(crate) fn write_atomic(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(content)?;
    }
    std::fs::rename(&tmp, path)
}

fn decode<T: serde::de::DeserializeOwned>(v: &[u8]) -> Option<T> {
    serde_json::from_slice(v).ok()
}

/// The committed records, by key, and the files rendered from them.
#[derive(Debug, Default)]
pub(crate) struct View {
    pub(crate) records: BTreeMap<String, Vec<u8>>,
    /// Commits applied since it was loaded.
    pub(crate) generation: u64,
    /// Mailbox keys and file operations applied but not rendered yet.
    pub(crate) pending_touched: BTreeSet<String>,
    pub(crate) pending_ops: Vec<FileOp>,
}

impl View {
    fn mailboxes(&self) -> impl Iterator<Item = (&String, MailboxRec)> {
        self.records
            .range("mbx/".to_string()..)
            .take_while(|(k, _)| k.starts_with("mbx/"))
            .filter_map(|(k, v)| decode(v).map(|m| (k, m)))
    }

    fn prefixed<T: serde::de::DeserializeOwned>(&self, p: &str) -> Vec<T> {
        self.records
            .range(p.to_string()..)
            .take_while(|(k, _)| k.starts_with(p))
            .filter_map(|(_, v)| decode(v))
            .collect()
    }

    /// Every address of the mailboxes of each organization (escaped id → addresses).
    fn tenant_senders(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, m) in self.mailboxes() {
            if let Some(org) = org_of_key(k) {
                out.entry(org.to_string())
                    .or_default()
                    .extend(m.addresses.iter().cloned());
            }
        }
        out
    }

    /// The passwd-file and the maps.
    fn tables(&self, layout: &Layout) -> Vec<(&'static str, String)> {
        let mut passwd = String::new();
        let mut mailbox_map = String::new();
        let mut alias_map = String::new();
        for (_, m) in self.mailboxes() {
            let home = layout.home(&m);
            passwd.push_str(&format!(
                "{}::{}:{}::{}::userdb_quota_rule=*:storage={}K",
                m.primary(),
                layout.uid,
                layout.gid,
                home.display(),
                m.quota_kb
            ));
            if m.oof.is_some() {
                passwd.push_str(&format!(
                    " userdb_sieve=file:{}",
                    layout.sieve_script(&m).display()
                ));
            }
            passwd.push('\n');
            let maildir = layout.home_rel(&m).join("Maildir");
            for a in &m.addresses {
                mailbox_map.push_str(&format!("{a}\t{}/\n", maildir.display()));
            }
            for a in &m.addresses[1..] {
                alias_map.push_str(&format!("{a}\t{}\n", m.primary()));
            }
        }
        for g in self.prefixed::<GroupRec>("grp/") {
            if !g.members.is_empty() {
                alias_map.push_str(&format!("{}\t{}\n", g.address, g.members.join(",")));
            }
        }
        let mut local = String::new();
        let mut relay = String::new();
        for d in self.prefixed::<DomainRec>("domain/") {
            if d.kind == "Authoritative" {
                local.push_str(&format!("{}\tOK\n", d.name));
            } else {
                relay.push_str(&format!("{}\t{}\n", d.name, d.kind));
            }
        }
        vec![
            ("passwd", passwd),
            ("virtual_mailbox_maps", mailbox_map),
            ("virtual_alias_maps", alias_map),
            ("virtual_mailbox_domains", local),
            ("relay_domains", relay),
        ]
    }

    /// Renders everything: the tables, then the homes of `touched` mailbox keys (all when
    /// `None`) and the out-of-office scripts of the organizations they belong to.
    pub(crate) fn render(
        &self,
        layout: &Layout,
        touched: Option<&BTreeSet<String>>,
        ops: &[FileOp],
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(&layout.root)?;
        for op in ops {
            match op {
                FileOp::Move { from, to } => {
                    if from.exists() && !to.exists() {
                        if let Some(p) = to.parent() {
                            std::fs::create_dir_all(p)?;
                        }
                        std::fs::rename(from, to)?;
                    }
                }
                FileOp::Remove(p) => {
                    if p.exists() {
                        std::fs::remove_dir_all(p)?;
                    }
                }
            }
        }
        let orgs: Option<BTreeSet<String>> = touched.map(|t| {
            t.iter()
                .filter_map(|k| org_of_key(k).map(str::to_string))
                .collect()
        });
        let senders = self.tenant_senders();
        for (k, m) in self.mailboxes() {
            let org = org_of_key(k).unwrap_or_default();
            let home_too = touched.is_none_or(|t| t.contains(k.as_str()));
            let oof_too = orgs.as_ref().is_none_or(|o| o.contains(org));
            if home_too {
                self.home_of(layout, &m)?;
            }
            if home_too || oof_too {
                let script = layout.sieve_script(&m);
                match &m.oof {
                    Some(o) => {
                        let empty = Vec::new();
                        let text = vacation_script(
                            m.primary(),
                            &m.addresses,
                            senders.get(org).unwrap_or(&empty),
                            &o.subject,
                            &o.message,
                            o.days,
                        );
                        let dir = self.owned_dir(layout, &layout.home(&m).join("sieve"))?;
                        write_atomic(&dir.join("oof.sieve"), text.as_bytes(), 0o644)?;
                        self.give(layout, &script)?;
                    }
                    None => {
                        if script.exists() {
                            std::fs::remove_file(&script)?;
                        }
                    }
                }
            }
        }
        for (name, content) in self.tables(layout) {
            write_atomic(&layout.root.join(name), content.as_bytes(), 0o644)?;
        }
        Ok(())
    }

    fn give(&self, layout: &Layout, p: &Path) -> std::io::Result<()> {
        if layout.chown {
            std::os::unix::fs::lchown(p, Some(layout.uid), Some(layout.gid))?;
        }
        Ok(())
    }

    fn owned_dir(&self, layout: &Layout, p: &Path) -> std::io::Result<PathBuf> {
        if !p.is_dir() {
            std::fs::create_dir_all(p)?;
            self.give(layout, p)?;
        }
        Ok(p.to_path_buf())
    }

    /// The home and its Maildir++ folders; `maildirsize` rewritten when the quota changed
    /// (with the size and count of the messages there, recounted).
    fn home_of(&self, layout: &Layout, m: &MailboxRec) -> std::io::Result<()> {
        let home = layout.home(m);
        if let Some(p) = home.parent() {
            std::fs::create_dir_all(p)?;
        }
        self.owned_dir(layout, &home)?;
        let md = self.owned_dir(layout, &home.join("Maildir"))?;
        for sub in ["cur", "new", "tmp"] {
            self.owned_dir(layout, &md.join(sub))?;
        }
        let size_file = md.join("maildirsize");
        let header = format!("{}S\n", m.quota_kb * 1024);
        let current = std::fs::read_to_string(&size_file).unwrap_or_default();
        if !current.starts_with(&header) {
            let (bytes, count) = maildir_usage(&md)?;
            write_atomic(
                &size_file,
                format!("{header}{bytes} {count}\n").as_bytes(),
                0o600,
            )?;
            self.give(layout, &size_file)?;
        }
        Ok(())
    }
}

/// The bytes and messages in a Maildir++ (`cur` and `new` of the INBOX and of every `.Folder`).
fn maildir_usage(md: &Path) -> std::io::Result<(u64, u64)> {
    let mut dirs = vec![md.to_path_buf()];
    for e in std::fs::read_dir(md)? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with('.') && e.file_type()?.is_dir() {
            dirs.push(e.path());
        }
    }
    let (mut bytes, mut count) = (0, 0);
    for d in dirs {
        for sub in ["cur", "new"] {
            let Ok(rd) = std::fs::read_dir(d.join(sub)) else {
                continue;
            };
            for f in rd {
                let f = f?;
                bytes += f.metadata()?.len();
                count += 1;
            }
        }
    }
    Ok((bytes, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_cannot_climb_or_collide() {
        assert_eq!(component("DB 1"), "db=201");
        assert_eq!(component(".."), "=2E.");
        assert_eq!(component("a/b"), "a=2Fb");
        assert_ne!(component("a b"), component("a_b"));
        assert_eq!(component("ann.lee"), "ann.lee");
    }
}
