//! MPS access control entries (`security/acl/ace{permission+, mode, trusteeForm, trustee,
//! trusteeType?, inheritance*}` of SetDirectoryAttributes) as POSIX ACL entries.
//!
//! An ACE names a trustee (a numeric uid/gid, or a user or group of the local
//! `/etc/passwd` / `/etc/group`), Windows permissions (mapped to `rwx`), a mode (GRANT adds
//! to what the trustee has, SET replaces it, REVOKE removes the trustee's entry; DENY has no
//! POSIX equivalent and is refused) and inheritance (container/object inherit also set the
//! folder's default ACL, inheritOnly sets only that). The result is the `acl` text of
//! SetPermissions holding every named entry the folder will have, so the change, its undo
//! (the exact previous ACLs), recovery (from its intent marker) and preview are
//! SetPermissions'.

use super::acl::{Acl, Entry, PermState, GROUP, USER};
use provisio_engine::data::Element;
use std::collections::BTreeMap;

/// What one ACE does to its trustee's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AceMode {
    Grant,
    Set,
    Revoke,
}

/// Which ACLs an ACE goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Targets {
    access: bool,
    default: bool,
}

/// Windows permission names (and Provisio's short ones) → `rwx` bits.
fn permission_bits(name: &str) -> Option<u16> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "fullcontrol" | "full" | "genericall" | "modify" | "change" => 7,
        "readandexecute" | "listfoldercontents" | "list" => 5,
        "read" | "genericread" | "readdata" => 4,
        "write" | "genericwrite" | "writedata" | "appenddata" => 2,
        "execute" | "traverse" | "genericexecute" => 1,
        _ => return None,
    })
}

const PERMISSIONS: &str = "FullControl, Modify, ReadAndExecute, ListFolderContents, Read, Write, Execute (or GenericAll/GenericRead/GenericWrite/GenericExecute, Traverse)";

/// Turns `security` into the `acl` text for SetPermissions, given the folder's current
/// state. `resolve(is_group, name)` looks names up. Errors name the element (`security/acl/ace[2]/mode`).
pub(crate) fn security_to_acl(
    security: &Element,
    state: &PermState,
    is_dir: bool,
    resolve: &dyn Fn(bool, &str) -> Option<u32>,
) -> Result<String, String> {
    let acls: Vec<&Element> = security.elements().collect();
    if acls.is_empty() || acls.iter().any(|a| a.name != "acl") {
        return Err("`security` must hold one `acl` element with `ace` elements (<security><acl><ace>…</ace></acl></security>)".into());
    }
    if acls.len() > 1 {
        return Err("`security` holds more than one `acl`; give one `acl` with every `ace`".into());
    }
    let aces: Vec<&Element> = acls[0].elements().collect();
    if aces.is_empty() {
        return Err("`security/acl` holds no `ace`".into());
    }
    // Named entries (tag, id) → perm, as they are now.
    let named = |acl: Option<&Acl>| -> BTreeMap<(u16, u32), u16> {
        acl.map(|a| {
            a.entries()
                .iter()
                .filter(|e| e.tag == USER || e.tag == GROUP)
                .map(|e| ((e.tag, e.id), e.perm))
                .collect()
        })
        .unwrap_or_default()
    };
    let mut access = named(state.access.as_ref());
    let mut default = named(state.default.as_ref());
    let (mut access_touched, mut default_touched) = (false, false);
    for (i, ace) in aces.iter().enumerate() {
        let at = format!("security/acl/ace[{}]", i + 1);
        if ace.name != "ace" {
            return Err(format!(
                "`security/acl/{}` is not known (an acl holds `ace` elements)",
                ace.name
            ));
        }
        let mut perms: Option<u16> = None;
        let mut mode = None;
        let mut trustee = None;
        let mut is_group = false;
        let mut targets = Targets {
            access: true,
            default: false,
        };
        for e in ace.elements() {
            let value = e.string_value();
            let v = value.trim();
            match e.name.as_str() {
                "permission" => {
                    let bits = permission_bits(v).ok_or_else(|| {
                        format!("`{at}/permission` {v:?} is not known; permissions: {PERMISSIONS}")
                    })?;
                    perms = Some(perms.unwrap_or(0) | bits);
                }
                "mode" => {
                    mode = Some(match v.to_ascii_uppercase().as_str() {
                        "GRANT" => AceMode::Grant,
                        "SET" => AceMode::Set,
                        "REVOKE" => AceMode::Revoke,
                        "DENY" => return Err(format!(
                            "`{at}/mode` DENY is not supported: POSIX ACLs have no deny entries; take the trustee's access away with REVOKE (or SET with fewer permissions)"
                        )),
                        _ => return Err(format!(
                            "`{at}/mode` is {v:?}; expected GRANT, SET or REVOKE"
                        )),
                    });
                }
                "trustee" => trustee = Some(v.to_string()),
                "trusteeForm" => match v.to_ascii_lowercase().as_str() {
                    "" | "name" | "trusteename" | "id" | "uid" => {}
                    "sid" | "trusteesid" => {
                        return Err(format!(
                            "`{at}/trusteeForm` {v:?}: Windows SIDs have no meaning on this file system; give the numeric uid/gid or a local user or group name with trusteeForm name"
                        ))
                    }
                    _ => return Err(format!("`{at}/trusteeForm` is {v:?}; expected name or id")),
                },
                "trusteeType" => match v.to_ascii_lowercase().as_str() {
                    "" | "user" => is_group = false,
                    "group" | "alias" | "wellknowngroup" => is_group = true,
                    _ => {
                        return Err(format!(
                            "`{at}/trusteeType` is {v:?}; expected user or group"
                        ))
                    }
                },
                "inheritance" => match v.to_ascii_lowercase().as_str() {
                    "" | "none" | "thisfolderonly" => {}
                    "containerinherit" | "objectinherit" | "subfoldersandfiles" => {
                        targets.default = true
                    }
                    "inheritonly" => {
                        targets.access = false;
                        targets.default = true;
                    }
                    _ => {
                        return Err(format!(
                            "`{at}/inheritance` is {v:?}; expected containerInherit, objectInherit, inheritOnly or none (noPropagateInherit has no POSIX equivalent)"
                        ))
                    }
                },
                other => {
                    return Err(format!(
                        "`{at}/{other}` is not known (an ace holds permission, mode, trustee, trusteeForm, trusteeType, inheritance)"
                    ))
                }
            }
        }
        let mode = mode.ok_or_else(|| format!("`{at}/mode` is required (GRANT, SET or REVOKE)"))?;
        let trustee = trustee
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("`{at}/trustee` is required"))?;
        let id =
            match trustee.parse::<u32>() {
                Ok(id) if id != u32::MAX => id,
                _ => {
                    resolve(is_group, &trustee).ok_or_else(|| {
                        format!(
                    "`{at}/trustee` {trustee:?} is not a numeric id nor a {} of the local {}; \
                     directory users (DOMAIN\\name) are not looked up: give the numeric id",
                    if is_group { "group" } else { "user" },
                    if is_group { "/etc/group" } else { "/etc/passwd" }
                )
                    })?
                }
            };
        if targets.default && !is_dir {
            return Err(format!(
                "`{at}/inheritance`: only a folder has inheritable (default) entries"
            ));
        }
        let perm = match (mode, perms) {
            (AceMode::Revoke, _) => 0,
            (_, Some(p)) => p,
            (_, None) => {
                return Err(format!(
                    "`{at}/permission` is required for GRANT and SET ({PERMISSIONS})"
                ))
            }
        };
        let key = (if is_group { GROUP } else { USER }, id);
        for (on, map, touched) in [
            (targets.access, &mut access, &mut access_touched),
            (targets.default, &mut default, &mut default_touched),
        ] {
            if !on {
                continue;
            }
            *touched = true;
            match mode {
                AceMode::Grant => *map.entry(key).or_insert(0) |= perm,
                AceMode::Set => {
                    map.insert(key, perm);
                }
                AceMode::Revoke => {
                    map.remove(&key);
                }
            }
        }
    }
    let render = |map: &BTreeMap<(u16, u32), u16>, prefix: &str| -> Vec<String> {
        map.iter()
            .map(|((tag, id), perm)| {
                let e = Entry {
                    tag: *tag,
                    id: *id,
                    perm: *perm,
                };
                format!(
                    "{prefix}{}:{}:{}",
                    if e.tag == GROUP { "group" } else { "user" },
                    e.id,
                    rwx(e.perm)
                )
            })
            .collect()
    };
    let mut parts = Vec::new();
    if access_touched {
        let a = render(&access, "");
        if a.is_empty() {
            parts.push("none".to_string());
        } else {
            parts.extend(a);
        }
    }
    if default_touched {
        let d = render(&default, "default:");
        if d.is_empty() {
            parts.push("default:none".to_string());
        } else {
            // The default ACL's owner, group and other entries: as they are, else from the
            // access ACL (SetPermissions fills in what is missing).
            if let Some(def) = &state.default {
                for e in def.entries() {
                    if e.tag != USER && e.tag != GROUP && e.tag != super::acl::MASK {
                        parts.push(def_base(e));
                    }
                }
            }
            parts.extend(d);
        }
    }
    Ok(parts.join(","))
}

fn rwx(perm: u16) -> String {
    let bit = |b: u16, c: char| if perm & b != 0 { c } else { '-' };
    [bit(4, 'r'), bit(2, 'w'), bit(1, 'x')].iter().collect()
}

/// `default:user::rwx`-style text of an owner/group/other entry of the default ACL.
fn def_base(e: &Entry) -> String {
    let tag = match e.tag {
        super::acl::USER_OBJ => "user:",
        super::acl::GROUP_OBJ => "group:",
        _ => "other:",
    };
    format!("default:{tag}:{}", rwx(e.perm))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ace(fields: &[(&str, &str)]) -> Element {
        let mut a = Element::new("ace");
        for (n, v) in fields {
            a.push(Element::with_text(*n, *v));
        }
        a
    }

    fn security(aces: Vec<Element>) -> Element {
        let mut acl = Element::new("acl");
        for a in aces {
            acl.push(a);
        }
        let mut s = Element::new("security");
        s.push(acl);
        s
    }

    fn state(access: &str, default: &str) -> PermState {
        PermState::from_texts(0o750, access, default).expect("state")
    }

    fn names(is_group: bool, name: &str) -> Option<u32> {
        match (is_group, name) {
            (false, "ann") => Some(1001),
            (true, "tenants") => Some(2000),
            _ => None,
        }
    }

    #[test]
    fn grant_set_revoke_merge_with_the_current_entries() {
        let now = state(
            "user::rwx,user:1001:r--,group::r-x,mask::r-x,other::---",
            "none",
        );
        let s = security(vec![
            ace(&[
                ("permission", "Write"),
                ("mode", "GRANT"),
                ("trustee", "ann"),
            ]),
            ace(&[
                ("permission", "ReadAndExecute"),
                ("mode", "SET"),
                ("trustee", "tenants"),
                ("trusteeType", "group"),
                ("inheritance", "containerInherit"),
            ]),
        ]);
        let text = security_to_acl(&s, &now, true, &names).expect("valid");
        assert_eq!(text, "user:1001:rw-,group:2000:r-x,default:group:2000:r-x");
        // Applied or not, the same ACEs give the same text (recovery depends on it).
        let after = state(
            "user::rwx,user:1001:rw-,group::r-x,group:2000:r-x,mask::rwx,other::---",
            "default:user::rwx,default:group::r-x,default:group:2000:r-x,default:mask::r-x,default:other::---",
        );
        let again = security_to_acl(&s, &after, true, &names).expect("valid");
        assert!(
            again.starts_with("user:1001:rw-,group:2000:r-x,"),
            "{again}"
        );
        assert!(again.contains("default:group:2000:r-x"), "{again}");
        // REVOKE of the last named entry removes the extended entries.
        let revoke = security(vec![ace(&[("mode", "REVOKE"), ("trustee", "1001")])]);
        assert_eq!(
            security_to_acl(&revoke, &now, true, &names).expect("valid"),
            "none"
        );
    }

    #[test]
    fn what_posix_cannot_say_is_refused_naming_the_element() {
        let now = state("none", "none");
        for (fields, want) in [
            (
                vec![("permission", "Read"), ("mode", "DENY"), ("trustee", "1")],
                "ace[1]/mode` DENY",
            ),
            (
                vec![
                    ("permission", "Read"),
                    ("mode", "GRANT"),
                    ("trustee", "S-1-5-21-1"),
                    ("trusteeForm", "sid"),
                ],
                "SIDs",
            ),
            (
                vec![
                    ("permission", "Read"),
                    ("mode", "GRANT"),
                    ("trustee", "FABRIKAM\\john"),
                ],
                "not a numeric id",
            ),
            (
                vec![("permission", "Fly"), ("mode", "GRANT"), ("trustee", "1")],
                "permission` \"Fly\"",
            ),
            (
                vec![("mode", "GRANT"), ("trustee", "1")],
                "permission` is required",
            ),
            (
                vec![("permission", "Read"), ("trustee", "1")],
                "mode` is required",
            ),
            (
                vec![("permission", "Read"), ("mode", "GRANT")],
                "trustee` is required",
            ),
            (
                vec![
                    ("permission", "Read"),
                    ("mode", "GRANT"),
                    ("trustee", "1"),
                    ("inheritance", "noPropagateInherit"),
                ],
                "inheritance",
            ),
            (
                vec![
                    ("permission", "Read"),
                    ("mode", "GRANT"),
                    ("trustee", "1"),
                    ("colour", "red"),
                ],
                "ace[1]/colour",
            ),
            (
                vec![
                    ("permission", "Read"),
                    ("mode", "GRANT"),
                    ("trustee", "1:rwx,user:0"),
                ],
                "not a numeric id",
            ),
        ] {
            let err = security_to_acl(&security(vec![ace(&fields)]), &now, true, &names)
                .expect_err("refused");
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
        let err = security_to_acl(
            &security(vec![ace(&[
                ("permission", "Read"),
                ("mode", "GRANT"),
                ("trustee", "1"),
                ("inheritance", "objectInherit"),
            ])]),
            &now,
            false,
            &names,
        )
        .expect_err("file");
        assert!(err.contains("only a folder"), "{err}");
        assert!(security_to_acl(&Element::new("security"), &now, true, &names).is_err());
    }
}
