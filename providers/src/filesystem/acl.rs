//! POSIX ACLs for the filesystem provider: the text form accepted in the `acl` input, the
//! Linux binary form stored in the `system.posix_acl_access` / `system.posix_acl_default`
//! extended attributes, and the pure planning of what SetPermissions will leave behind.
//!
//! Binary form (Linux `posix_acl_xattr`): a little-endian `u32` version (2), then entries of
//! `{tag: u16, perm: u16, id: u32}`, little-endian, sorted by tag then id. Entries without a
//! qualifier (owner, owning group, mask, other) carry the id `0xFFFF_FFFF`.

use std::collections::BTreeSet;

/// Extended attribute holding the access ACL.
pub(crate) const XATTR_ACCESS: &str = "system.posix_acl_access";
/// Extended attribute holding the default ACL of a folder.
pub(crate) const XATTR_DEFAULT: &str = "system.posix_acl_default";

/// What is wrong with an ACL, its text form (the `acl` input, recorded texts) or its
/// binary form (the extended attribute).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AclError {
    /// The extended attribute is not a valid `posix_acl_xattr` value.
    #[error("ACL attribute {0}")]
    Attribute(String),
    /// The entries do not form a valid ACL.
    #[error("{0}")]
    Entries(String),
    /// Permissions text that is not `rwx`-style or one octal digit.
    #[error("{0}")]
    Permissions(String),
    /// One entry of the `acl` input is wrong (`index` counts from 1).
    #[error("entry {index} {token:?}: {why}")]
    Entry {
        /// Position in the input.
        index: usize,
        /// The entry as given.
        token: String,
        /// What is wrong with it.
        why: String,
    },
    /// `none` / `default:none` given together with entries of the same ACL.
    #[error("`{prefix}none` cannot be combined with other {prefix}entries")]
    NoneCombined {
        /// `` or `default:`.
        prefix: &'static str,
    },
    /// `default:` entries requested for a file.
    #[error("`default:` entries are only allowed on folders")]
    DefaultOnFile,
    /// A recorded ACL text (undo record, marker) that is not a complete ACL.
    #[error("bad recorded ACL {0:?}")]
    Recorded(String),
}

const VERSION: u32 = 2;
const UNDEFINED_ID: u32 = u32::MAX;

/// `user::` (the owner).
pub(crate) const USER_OBJ: u16 = 0x01;
/// `user:<uid>:`.
pub(crate) const USER: u16 = 0x02;
/// `group::` (the owning group).
pub(crate) const GROUP_OBJ: u16 = 0x04;
/// `group:<gid>:`.
pub(crate) const GROUP: u16 = 0x08;
/// `mask::`.
pub(crate) const MASK: u16 = 0x10;
/// `other::`.
pub(crate) const OTHER: u16 = 0x20;

/// One ACL entry. Ordered by tag, then id (the order of the binary form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    /// One of the tag constants.
    pub(crate) tag: u16,
    /// uid/gid for USER/GROUP, `0xFFFF_FFFF` otherwise.
    pub(crate) id: u32,
    /// `rwx` bits (4, 2, 1).
    pub(crate) perm: u16,
}

impl Entry {
    fn obj(tag: u16, perm: u16) -> Self {
        Entry {
            tag,
            id: UNDEFINED_ID,
            perm: perm & 7,
        }
    }
}

/// A complete, valid ACL: sorted entries, exactly one owner, owning group and other entry,
/// a mask whenever there are named entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// Validates and sorts `entries`.
    pub(crate) fn new(mut entries: Vec<Entry>) -> Result<Self, AclError> {
        entries.sort();
        for pair in entries.windows(2) {
            if pair[0].tag == pair[1].tag && pair[0].id == pair[1].id {
                return Err(AclError::Entries(format!(
                    "entry {} appears twice",
                    entry_text(&pair[0], false)
                )));
            }
        }
        let count = |tag| entries.iter().filter(|e| e.tag == tag).count();
        for (tag, name) in [
            (USER_OBJ, "user::"),
            (GROUP_OBJ, "group::"),
            (OTHER, "other::"),
        ] {
            if count(tag) != 1 {
                return Err(AclError::Entries(format!(
                    "the ACL needs exactly one `{name}` entry"
                )));
            }
        }
        if count(MASK) == 0 && (count(USER) > 0 || count(GROUP) > 0) {
            return Err(AclError::Entries(
                "an ACL with named user or group entries needs a `mask::` entry".into(),
            ));
        }
        for e in &entries {
            if e.perm > 7 {
                return Err(AclError::Entries(format!(
                    "bad permission bits {:#o}",
                    e.perm
                )));
            }
            let named = e.tag == USER || e.tag == GROUP;
            if !named && e.id != UNDEFINED_ID {
                return Err(AclError::Entries(
                    "only user and group entries carry an id".into(),
                ));
            }
            if named && e.id == UNDEFINED_ID {
                return Err(AclError::Entries(format!("id {UNDEFINED_ID} is reserved")));
            }
            if ![USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&e.tag) {
                return Err(AclError::Entries(format!("unknown ACL tag {:#x}", e.tag)));
            }
        }
        Ok(Acl { entries })
    }

    /// The three-entry ACL equivalent to a mode.
    pub(crate) fn from_mode(mode: u32) -> Self {
        Acl {
            entries: vec![
                Entry::obj(USER_OBJ, mode_bits(mode, 6)),
                Entry::obj(GROUP_OBJ, mode_bits(mode, 3)),
                Entry::obj(OTHER, mode_bits(mode, 0)),
            ],
        }
    }

    /// The perm of an unqualified entry (owner, owning group, mask, other).
    pub(crate) fn obj_perm(&self, tag: u16) -> Option<u16> {
        self.entries.iter().find(|e| e.tag == tag).map(|e| e.perm)
    }

    fn set_obj_perm(&mut self, tag: u16, perm: u16) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.tag == tag) {
            e.perm = perm & 7;
        }
    }

    /// True for an ACL that only mirrors the mode (owner, owning group, other).
    pub(crate) fn is_minimal(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    /// The `rwx` bits the mode shows for this ACL: owner, mask (or owning group), other.
    pub(crate) fn mode_bits(&self) -> u32 {
        let p = |tag| u32::from(self.obj_perm(tag).unwrap_or(0));
        let group = self.obj_perm(MASK).map_or_else(|| p(GROUP_OBJ), u32::from);
        (p(USER_OBJ) << 6) | (group << 3) | p(OTHER)
    }

    /// What `chmod(mode)` does to an access ACL: owner, mask (or owning group if there is
    /// no mask) and other take the mode's bits.
    pub(crate) fn chmod(&mut self, mode: u32) {
        self.set_obj_perm(USER_OBJ, mode_bits(mode, 6));
        if self.obj_perm(MASK).is_some() {
            self.set_obj_perm(MASK, mode_bits(mode, 3));
        } else {
            self.set_obj_perm(GROUP_OBJ, mode_bits(mode, 3));
        }
        self.set_obj_perm(OTHER, mode_bits(mode, 0));
    }

    /// The Linux `posix_acl_xattr` bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 8 * self.entries.len());
        out.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// Parses `posix_acl_xattr` bytes.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, AclError> {
        let (head, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| AclError::Attribute("shorter than its header".into()))?;
        let version = u32::from_le_bytes(*head);
        if version != VERSION {
            return Err(AclError::Attribute(format!(
                "has version {version}, expected 2"
            )));
        }
        if rest.len() % 8 != 0 {
            return Err(AclError::Attribute(format!(
                "has {} entry bytes, not a multiple of 8",
                rest.len()
            )));
        }
        let entries = rest
            .chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Acl::new(entries)
    }

    /// The entries, sorted by tag then id.
    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The short text form with numeric ids: `user::rwx,user:1001:r-x,group::r-x,mask::r-x,other::---`
    /// (each entry prefixed with `default:` when `default`).
    pub(crate) fn to_text(&self, default: bool) -> String {
        self.entries
            .iter()
            .map(|e| entry_text(e, default))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn mode_bits(mode: u32, shift: u32) -> u16 {
    // Masked to three bits, so the narrowing cannot lose anything.
    ((mode >> shift) & 7) as u16
}

fn perm_text(perm: u16) -> String {
    let bit = |b: u16, c: char| if perm & b != 0 { c } else { '-' };
    [bit(4, 'r'), bit(2, 'w'), bit(1, 'x')].iter().collect()
}

fn entry_text(e: &Entry, default: bool) -> String {
    let prefix = if default { "default:" } else { "" };
    let body = match e.tag {
        USER_OBJ => format!("user::{}", perm_text(e.perm)),
        USER => format!("user:{}:{}", e.id, perm_text(e.perm)),
        GROUP_OBJ => format!("group::{}", perm_text(e.perm)),
        GROUP => format!("group:{}:{}", e.id, perm_text(e.perm)),
        MASK => format!("mask::{}", perm_text(e.perm)),
        OTHER => format!("other::{}", perm_text(e.perm)),
        t => format!("tag{t:#x}:{}:{}", e.id, perm_text(e.perm)),
    };
    format!("{prefix}{body}")
}

/// What the `acl` input asks for one of the two ACLs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Change {
    /// Not mentioned: left as it is.
    #[default]
    Keep,
    /// `none` / `default:none`: extended entries (or the default ACL) removed.
    Remove,
    /// Entries to set; missing owner/group/other entries and the mask are filled in.
    Set(Vec<Entry>),
}

/// The parsed `acl` input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Request {
    /// The access ACL.
    pub(crate) access: Change,
    /// The default ACL (folders only).
    pub(crate) default: Change,
}

/// Resolves a user (`false`) or group (`true`) name to its id.
pub(crate) type Resolver<'a> = &'a dyn Fn(bool, &str) -> Option<u32>;

/// Parses the `acl` input: entries separated by commas, spaces or newlines, each
/// `[default:|d:]user|u|group|g:[qualifier]:perms` or `[default:|d:]mask|m|other|o:[:]perms`;
/// qualifiers are numeric ids or names (resolved by `resolve`); perms are `rwx`-style
/// (`r-x`, `rx`, `-`) or one octal digit. The tokens `none` and `default:none` remove the
/// extended access entries and the default ACL.
pub(crate) fn parse_request(raw: &str, resolve: Resolver<'_>) -> Result<Request, AclError> {
    let mut req = Request::default();
    let mut access: Vec<Entry> = Vec::new();
    let mut default: Vec<Entry> = Vec::new();
    let (mut access_none, mut default_none) = (false, false);
    let tokens = raw
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty());
    for (i, token) in tokens.enumerate() {
        let at = |why: String| AclError::Entry {
            index: i + 1,
            token: token.to_string(),
            why,
        };
        let (is_default, body) = match token
            .strip_prefix("default:")
            .or_else(|| token.strip_prefix("d:"))
        {
            Some(rest) => (true, rest),
            None => (false, token),
        };
        if body.eq_ignore_ascii_case("none") {
            if is_default {
                default_none = true;
            } else {
                access_none = true;
            }
            continue;
        }
        let fields: Vec<&str> = body.split(':').collect();
        let (tag_text, qualifier, perm_field) = match fields.as_slice() {
            [t, q, p] => (*t, *q, *p),
            [t, p] => (*t, "", *p),
            _ => {
                return Err(at(
                    "expected `tag:qualifier:perms`, e.g. `user:1001:rwx`".into()
                ))
            }
        };
        let perm = parse_perm(perm_field).map_err(|e| at(e.to_string()))?;
        let entry = match tag_text {
            "user" | "u" | "group" | "g" => {
                let is_group = tag_text.starts_with('g');
                let (obj, named) = if is_group {
                    (GROUP_OBJ, GROUP)
                } else {
                    (USER_OBJ, USER)
                };
                if qualifier.is_empty() {
                    Entry::obj(obj, perm)
                } else {
                    let id = match qualifier.parse::<u32>() {
                        Ok(id) if id != UNDEFINED_ID => id,
                        Ok(_) => return Err(at(format!("id {UNDEFINED_ID} is reserved"))),
                        Err(_) => resolve(is_group, qualifier).ok_or_else(|| {
                            at(format!(
                                "no {} named {qualifier:?} in {}",
                                if is_group { "group" } else { "user" },
                                if is_group {
                                    "/etc/group"
                                } else {
                                    "/etc/passwd"
                                }
                            ))
                        })?,
                    };
                    Entry {
                        tag: named,
                        id,
                        perm,
                    }
                }
            }
            "mask" | "m" | "other" | "o" => {
                if !qualifier.is_empty() {
                    return Err(at(format!("`{tag_text}` entries take no qualifier")));
                }
                Entry::obj(
                    if tag_text.starts_with('m') {
                        MASK
                    } else {
                        OTHER
                    },
                    perm,
                )
            }
            other => {
                return Err(at(format!(
                    "unknown tag {other:?}; use user, group, mask or other"
                )))
            }
        };
        if is_default {
            default.push(entry);
        } else {
            access.push(entry);
        }
    }
    let pick = |none: bool, entries: Vec<Entry>, what: &'static str| -> Result<Change, AclError> {
        match (none, entries.is_empty()) {
            (true, false) => Err(AclError::NoneCombined { prefix: what }),
            (true, true) => Ok(Change::Remove),
            (false, false) => {
                let mut seen = BTreeSet::new();
                for e in &entries {
                    if !seen.insert((e.tag, e.id)) {
                        return Err(AclError::Entries(format!(
                            "entry {} is given twice",
                            entry_text(e, what == "default:")
                        )));
                    }
                }
                Ok(Change::Set(entries))
            }
            (false, true) => Ok(Change::Keep),
        }
    };
    req.access = pick(access_none, access, "")?;
    req.default = pick(default_none, default, "default:")?;
    Ok(req)
}

fn parse_perm(text: &str) -> Result<u16, AclError> {
    if text.len() == 1 && text.as_bytes()[0].is_ascii_digit() {
        return match text.as_bytes()[0] - b'0' {
            d @ 0..=7 => Ok(u16::from(d)),
            _ => Err(AclError::Permissions(format!(
                "permission digit {text:?} is not octal"
            ))),
        };
    }
    if text.is_empty() || text.len() > 3 {
        return Err(AclError::Permissions(format!(
            "permissions {text:?} must be like `rwx`, `r-x`, `rx`, `-` or one octal digit"
        )));
    }
    let mut perm = 0u16;
    for c in text.chars() {
        let bit = match c {
            'r' => 4,
            'w' => 2,
            'x' => 1,
            '-' => continue,
            _ => {
                return Err(AclError::Permissions(format!(
                    "permissions {text:?} may only contain r, w, x and -"
                )))
            }
        };
        if perm & bit != 0 {
            return Err(AclError::Permissions(format!(
                "permissions {text:?} repeat {c:?}"
            )));
        }
        perm |= bit;
    }
    Ok(perm)
}

/// Fills in the entries a request left out: owner, owning group and other from `base`, and
/// a mask (the union of the group-class entries) when named entries need one.
fn complete(mut entries: Vec<Entry>, base: &Acl) -> Result<Acl, AclError> {
    for tag in [USER_OBJ, GROUP_OBJ, OTHER] {
        if !entries.iter().any(|e| e.tag == tag) {
            entries.push(Entry::obj(tag, base.obj_perm(tag).unwrap_or(0)));
        }
    }
    let named = entries.iter().any(|e| e.tag == USER || e.tag == GROUP);
    if named && !entries.iter().any(|e| e.tag == MASK) {
        let union = entries
            .iter()
            .filter(|e| matches!(e.tag, USER | GROUP_OBJ | GROUP))
            .fold(0, |acc, e| acc | e.perm);
        entries.push(Entry::obj(MASK, union));
    }
    Acl::new(entries)
}

/// Permissions of one file or folder: mode bits (including setuid/setgid/sticky) and the
/// ACLs (`None` when there are no extended access entries / no default ACL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PermState {
    /// `mode & 0o7777`.
    pub(crate) mode: u32,
    /// The access ACL when it has more than the three mode entries.
    pub(crate) access: Option<Acl>,
    /// The default ACL (folders only).
    pub(crate) default: Option<Acl>,
}

impl PermState {
    /// The full access ACL (the mode's three entries when there are no extended ones).
    pub(crate) fn full_access(&self) -> Acl {
        self.access
            .clone()
            .unwrap_or_else(|| Acl::from_mode(self.mode))
    }

    /// `none` or the access ACL text.
    pub(crate) fn access_text(&self) -> String {
        self.access
            .as_ref()
            .map_or_else(|| "none".to_string(), |a| a.to_text(false))
    }

    /// `none` or the default ACL text.
    pub(crate) fn default_text(&self) -> String {
        self.default
            .as_ref()
            .map_or_else(|| "none".to_string(), |a| a.to_text(true))
    }

    /// Parses the texts written by [`PermState::access_text`] / [`PermState::default_text`].
    pub(crate) fn from_texts(mode: u32, access: &str, default: &str) -> Result<Self, AclError> {
        let no_names: Resolver<'_> = &|_, _| None;
        let read = |text: &str, is_default: bool| -> Result<Option<Acl>, AclError> {
            if text.trim() == "none" {
                return Ok(None);
            }
            let req = parse_request(text, no_names)?;
            let change = if is_default { req.default } else { req.access };
            match change {
                Change::Set(entries) => Acl::new(entries).map(Some),
                _ => Err(AclError::Recorded(text.to_string())),
            }
        };
        Ok(PermState {
            mode: mode & 0o7777,
            access: read(access, false)?,
            default: read(default, true)?,
        })
    }
}

/// What SetPermissions leaves behind, given the state before, the `mode` input and the
/// `acl` input: `mode` applies first (like `chmod`), then the ACL entries (like
/// `setfacl --set`, missing owner/group/other entries taken from the state after `chmod`).
pub(crate) fn plan(
    prev: &PermState,
    mode: Option<u32>,
    req: &Request,
    is_dir: bool,
) -> Result<PermState, AclError> {
    let base_mode = mode.unwrap_or(prev.mode) & 0o7777;
    let mut after_chmod = prev.full_access();
    if let Some(m) = mode {
        after_chmod.chmod(m);
    }
    let access = match &req.access {
        Change::Keep => after_chmod,
        Change::Remove => complete(Vec::new(), &after_chmod)?,
        Change::Set(entries) => complete(entries.clone(), &after_chmod)?,
    };
    let default = match &req.default {
        Change::Keep => prev.default.clone(),
        Change::Remove => None,
        Change::Set(_) if !is_dir => return Err(AclError::DefaultOnFile),
        Change::Set(entries) => Some(complete(entries.clone(), &access)?),
    };
    let mode = (base_mode & 0o7000) | access.mode_bits();
    Ok(PermState {
        mode,
        access: if access.is_minimal() {
            None
        } else {
            Some(access)
        },
        default,
    })
}

/// Looks a name up in a `/etc/passwd`- or `/etc/group`-style file (`name:x:id:…`).
pub(crate) fn lookup_id(file_text: &str, name: &str) -> Option<u32> {
    file_text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let n = fields.next()?;
        let _password = fields.next()?;
        let id = fields.next()?;
        if n == name {
            id.trim().parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_names(_: bool, _: &str) -> Option<u32> {
        None
    }

    #[test]
    fn encode_decode_round_trip_and_layout() {
        let req =
            parse_request("user:1001:rwx,group:2000:r-x,mask::rwx", &no_names).expect("parse");
        let prev = PermState {
            mode: 0o750,
            access: None,
            default: None,
        };
        let new = plan(&prev, None, &req, true).expect("plan");
        let acl = new.access.clone().expect("extended");
        assert_eq!(
            acl.to_text(false),
            "user::rwx,user:1001:rwx,group::r-x,group:2000:r-x,mask::rwx,other::---"
        );
        assert_eq!(new.mode, 0o770);
        let bytes = acl.encode();
        assert_eq!(&bytes[..4], &[2, 0, 0, 0]);
        assert_eq!(&bytes[4..12], &[1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(&bytes[12..20], &[2, 0, 7, 0, 0xe9, 0x03, 0, 0]);
        assert_eq!(Acl::decode(&bytes), Ok(acl));
    }

    #[test]
    fn parse_errors_and_forms() {
        for bad in [
            "user:1001",
            "user:1001:rwq",
            "mask:1:rwx",
            "bogus::rwx",
            "none,user:1:rwx",
            "user:1:r,user:1:w",
            "user:alice:rwx",
            "user:4294967295:rwx",
        ] {
            assert!(parse_request(bad, &no_names).is_err(), "{bad}");
        }
        let r = parse_request("u:5:rx d:g:7:7\nd:none", &no_names);
        assert!(r.is_err(), "default none mixed with entries");
        let r = parse_request("u:5:rx, o:r, default:none", &|g, n| {
            (!g && n == "alice").then_some(5)
        })
        .expect("parse");
        assert_eq!(r.default, Change::Remove);
        assert!(matches!(r.access, Change::Set(ref e) if e.len() == 2));
    }

    #[test]
    fn plan_chmod_with_mask_and_remove() {
        let access = Acl::new(vec![
            Entry::obj(USER_OBJ, 7),
            Entry {
                tag: USER,
                id: 7,
                perm: 7,
            },
            Entry::obj(GROUP_OBJ, 5),
            Entry::obj(MASK, 7),
            Entry::obj(OTHER, 0),
        ])
        .expect("acl");
        let prev = PermState {
            mode: 0o2770,
            access: Some(access),
            default: None,
        };
        let new = plan(&prev, Some(0o750), &Request::default(), false).expect("plan");
        assert_eq!(new.mode, 0o750);
        assert_eq!(new.access.as_ref().and_then(|a| a.obj_perm(MASK)), Some(5));
        let none = parse_request("none", &no_names).expect("parse");
        let new = plan(&prev, None, &none, false).expect("plan");
        assert_eq!((new.mode, new.access), (0o2750, None));
        let d = parse_request("default:user:9:rw", &no_names).expect("parse");
        assert!(plan(&prev, None, &d, false).is_err());
        let new = plan(&prev, None, &d, true).expect("plan");
        assert_eq!(
            new.default_text(),
            "default:user::rwx,default:user:9:rw-,default:group::r-x,default:mask::rwx,default:other::---"
        );
        let back = PermState::from_texts(new.mode, &new.access_text(), &new.default_text());
        assert_eq!(back, Ok(new));
    }

    #[test]
    fn lookup_in_passwd() {
        let text = "root:x:0:0:root:/root:/bin/bash\nalice:x:1001:1001::/home/alice:/bin/sh\n";
        assert_eq!(lookup_id(text, "alice"), Some(1001));
        assert_eq!(lookup_id(text, "bob"), None);
    }
}
