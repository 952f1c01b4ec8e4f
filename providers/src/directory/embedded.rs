//! The embedded directory: entries in the provider's state (the engine's store), so its
//! changes commit and roll back with the transaction and need no server.
//!
//! Keys (in the `Directory` provider's state space):
//!
//! | key | value |
//! | --- | --- |
//! | `e` NUL + [`Dn::key`] (normalised RDNs root first, each followed by NUL) | the entry (JSON: DN, attributes, password hash) |
//! | `m` NUL + member's `Dn::key` + 0x01 + group's `Dn::key` | the group's DN (the `memberOf` index) |
//! | `sam/` + lowercased `sAMAccountName` | the account's DN (uniqueness, shared with [`super::sam`]) |
//!
//! A subtree is one prefix scan; `memberOf` is computed from the index on read. Passwords
//! are stored only as a salted SHA-256 hash (`{SSHA256}`, as OpenLDAP writes it) and never
//! returned. The schema is [`super::schema`].
//!
//! Isolation is the provider state's: every key read or written is locked until the
//! transaction ends, so creating objects in the same container from two transactions
//! takes turns (the container's entry is read by both).

use super::backend::{
    AttrSelection, Attribute, DirError, DirectoryBackend, Entry, ModOp, Modification, OpContext,
    Password, Scope, SearchPage, SearchRequest,
};
use super::dn::{Dn, Rdn};
use super::filter::{RULE_BIT_AND, RULE_BIT_OR};
use super::schema::{self, ClassDef};
use async_trait::async_trait;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An entry as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    /// The DN as written when the entry was created (or last renamed).
    dn: String,
    /// The attributes (never a password, never a computed one).
    attrs: Vec<Attribute>,
    /// `{SSHA256}base64(sha256(password ‖ salt) ‖ salt)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pwd: Option<String>,
}

impl Stored {
    fn get(&self, name: &str) -> Option<&Vec<String>> {
        self.attrs
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
            .map(|a| &a.values)
    }

    fn set(&mut self, name: &str, values: Vec<String>) {
        if values.is_empty() {
            self.attrs.retain(|a| !a.name.eq_ignore_ascii_case(name));
            return;
        }
        match self
            .attrs
            .iter_mut()
            .find(|a| a.name.eq_ignore_ascii_case(name))
        {
            Some(a) => a.values = values,
            None => self.attrs.push(Attribute::new(name, values)),
        }
    }

    fn class(&self) -> Option<&'static ClassDef> {
        self.get("objectClass").and_then(|v| schema::structural(v))
    }
}

/// The embedded backend. Cheap to clone; holds only its configuration.
#[derive(Debug, Clone)]
pub struct EmbeddedBackend {
    base: Dn,
}

fn entry_key(dn: &Dn) -> Vec<u8> {
    let mut k = b"e\0".to_vec();
    k.extend_from_slice(&dn.key());
    k
}

fn member_prefix(member: &Dn) -> Vec<u8> {
    let mut k = b"m\0".to_vec();
    k.extend_from_slice(&member.key());
    k.push(1);
    k
}

fn member_key(member: &Dn, group: &Dn) -> Vec<u8> {
    let mut k = member_prefix(member);
    k.extend_from_slice(&group.key());
    k
}

fn hash_password(dn: &Dn, p: &Password) -> Result<String, DirError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| DirError::Transient {
        dn: dn.to_string(),
        message: format!("no random salt for the password hash: {e}"),
    })?;
    Ok(ssha256(p.expose().as_bytes(), &salt))
}

fn ssha256(clear: &[u8], salt: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(clear);
    h.update(salt);
    let mut out = h.finalize().to_vec();
    out.extend_from_slice(salt);
    format!(
        "{{SSHA256}}{}",
        base64::engine::general_purpose::STANDARD.encode(out)
    )
}

fn verify_password(stored: &str, p: &Password) -> bool {
    let Some(b64) = stored.strip_prefix("{SSHA256}") else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return false;
    };
    if raw.len() < 32 {
        return false;
    }
    ssha256(p.expose().as_bytes(), &raw[32..]) == stored
}

impl EmbeddedBackend {
    /// A directory rooted at `base` (e.g. `DC=provisio,DC=local`).
    pub fn new(base: Dn) -> Result<EmbeddedBackend, DirError> {
        if base.is_root() {
            return Err(DirError::Invalid(
                "the directory's base DN is empty; set e.g. base_dn = \"DC=provisio,DC=local\""
                    .into(),
            ));
        }
        Ok(EmbeddedBackend { base })
    }

    fn check_base(&self, dn: &Dn) -> Result<(), DirError> {
        if dn.is_under(&self.base) {
            Ok(())
        } else {
            Err(DirError::OutsideBase {
                dn: dn.to_string(),
                base: self.base.to_string(),
            })
        }
    }

    async fn load(&self, ctx: &OpContext, dn: &Dn) -> Result<Option<Stored>, DirError> {
        let v = ctx
            .state
            .get(&entry_key(dn))
            .await
            .map_err(|e| DirError::state(dn, e))?;
        match v {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| DirError::Refused {
                    dn: dn.to_string(),
                    message: format!("the stored entry does not read: {e}"),
                }),
        }
    }

    async fn save(&self, ctx: &OpContext, dn: &Dn, s: &Stored) -> Result<(), DirError> {
        let bytes = serde_json::to_vec(s).map_err(|e| DirError::Refused {
            dn: dn.to_string(),
            message: e.to_string(),
        })?;
        ctx.state
            .put(&entry_key(dn), bytes)
            .await
            .map_err(|e| DirError::state(dn, e))
    }

    async fn put_raw(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        key: &[u8],
        v: Vec<u8>,
    ) -> Result<(), DirError> {
        ctx.state
            .put(key, v)
            .await
            .map_err(|e| DirError::state(dn, e))
    }

    async fn del_raw(&self, ctx: &OpContext, dn: &Dn, key: &[u8]) -> Result<(), DirError> {
        ctx.state
            .delete(key)
            .await
            .map_err(|e| DirError::state(dn, e))
    }

    async fn scan(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, DirError> {
        ctx.state
            .scan(prefix)
            .await
            .map_err(|e| DirError::state(dn, e))
    }

    /// The base entry, made from its RDN: `DC=` → domain, `OU=` → organizationalUnit,
    /// `CN=` → container.
    fn base_entry(&self) -> Result<Stored, DirError> {
        let rdn = self.base.rdn().expect("a base DN is never the root");
        let ava = rdn.first();
        let class = match ava.norm_attr().as_str() {
            "dc" => "domain",
            "ou" => "organizationalUnit",
            "cn" => "container",
            other => {
                return Err(DirError::ObjectClassViolation {
                    dn: self.base.to_string(),
                    message: format!(
                        "the embedded directory can create a base DN named by dc, ou or cn, not {other}"
                    ),
                })
            }
        };
        let def = schema::class(class).expect("known class");
        Ok(Stored {
            dn: self.base.to_string(),
            attrs: vec![
                Attribute::new(
                    "objectClass",
                    def.chain.iter().map(|s| s.to_string()).collect(),
                ),
                Attribute::new(
                    schema::canonical(&ava.norm_attr()).unwrap_or("dc"),
                    vec![ava.value.clone()],
                ),
            ],
            pwd: None,
        })
    }

    /// Checks and normalises the attributes of a new or changed entry against its class.
    /// Returns the attribute's canonical spelling.
    fn check_attr(&self, dn: &Dn, class: &ClassDef, name: &str) -> Result<&'static str, DirError> {
        if schema::password(name) {
            return Err(DirError::Refused {
                dn: dn.to_string(),
                message: format!(
                    "{name} cannot be set as a property; use User Set Password or User Change Password"
                ),
            });
        }
        if schema::computed(name) {
            return Err(DirError::Refused {
                dn: dn.to_string(),
                message: format!(
                    "{name} is computed by the directory and cannot be written{}",
                    if name.eq_ignore_ascii_case("memberOf") {
                        " (add the object to the group's member instead: Group Add Member)"
                    } else {
                        ""
                    }
                ),
            });
        }
        let Some(canon) = schema::canonical(name) else {
            return Err(DirError::UnknownAttribute {
                dn: dn.to_string(),
                attribute: name.to_string(),
                hint: ": it is not in the embedded directory's schema (docs/providers/directory.md lists it)".into(),
            });
        };
        if !schema::allows(class, canon) {
            return Err(DirError::UnknownAttribute {
                dn: dn.to_string(),
                attribute: canon.to_string(),
                hint: format!(": a {} does not have it", class.name),
            });
        }
        Ok(canon)
    }

    fn check_values(&self, dn: &Dn, attr: &str, values: &[String]) -> Result<(), DirError> {
        if schema::single_valued(attr) && values.len() > 1 {
            return Err(DirError::ObjectClassViolation {
                dn: dn.to_string(),
                message: format!("{attr} holds one value; {} were given", values.len()),
            });
        }
        for v in values {
            if schema::integer(attr) && v.trim().parse::<i64>().is_err() {
                return Err(DirError::ConstraintViolation {
                    dn: dn.to_string(),
                    message: format!("{attr} must be an integer, got {v:?}"),
                });
            }
            if schema::dn_valued(attr) {
                Dn::parse(v).map_err(|e| DirError::ConstraintViolation {
                    dn: dn.to_string(),
                    message: format!("{attr} must hold DNs: {e}"),
                })?;
            }
        }
        let mut seen: Vec<String> = Vec::new();
        for v in values {
            let n = norm_value(attr, v);
            if seen.contains(&n) {
                return Err(DirError::ConstraintViolation {
                    dn: dn.to_string(),
                    message: format!("{attr} is given the value {v:?} twice"),
                });
            }
            seen.push(n);
        }
        Ok(())
    }

    /// `member` values must name existing objects; returns them parsed.
    async fn check_members(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        values: &[String],
    ) -> Result<Vec<Dn>, DirError> {
        let mut out = Vec::new();
        for v in values {
            let m = Dn::parse(v).map_err(|e| DirError::ConstraintViolation {
                dn: dn.to_string(),
                message: format!("member: {e}"),
            })?;
            if self.load(ctx, &m).await?.is_none() {
                return Err(DirError::ConstraintViolation {
                    dn: dn.to_string(),
                    message: format!("member {m} does not exist"),
                });
            }
            out.push(m);
        }
        Ok(out)
    }

    async fn claim_sam(&self, ctx: &OpContext, dn: &Dn, sam: &str) -> Result<(), DirError> {
        super::sam::check_explicit(dn, sam)?;
        let key = super::sam::reservation_key(sam);
        let held = ctx
            .state
            .get(&key)
            .await
            .map_err(|e| DirError::state(dn, e))?;
        if let Some(h) = held {
            let holder = String::from_utf8_lossy(&h).to_string();
            if Dn::parse(&holder).ok().as_ref() != Some(dn) {
                return Err(DirError::ConstraintViolation {
                    dn: dn.to_string(),
                    message: format!("sAMAccountName {sam} is already used by {holder}"),
                });
            }
        }
        self.put_raw(ctx, dn, &key, dn.to_string().into_bytes())
            .await
    }

    async fn memberships(&self, ctx: &OpContext, dn: &Dn) -> Result<Vec<String>, DirError> {
        Ok(self
            .scan(ctx, dn, &member_prefix(dn))
            .await?
            .into_iter()
            .map(|(_, v)| String::from_utf8_lossy(&v).to_string())
            .collect())
    }

    async fn to_entry(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        s: Stored,
        attrs: &AttrSelection,
        with_member_of: bool,
    ) -> Result<Entry, DirError> {
        let mut out: Vec<Attribute> = s
            .attrs
            .into_iter()
            .filter(|a| attrs.wants(&a.name))
            .collect();
        if attrs.wants("distinguishedName") && matches!(attrs, AttrSelection::Only(_)) {
            out.push(Attribute::new("distinguishedName", vec![dn.to_string()]));
        }
        if with_member_of || attrs.wants("memberOf") {
            let m = self.memberships(ctx, dn).await?;
            if !m.is_empty() {
                out.push(Attribute::new("memberOf", m));
            }
        }
        if matches!(attrs, AttrSelection::Only(v) if v.iter().any(|a| a.eq_ignore_ascii_case("objectCategory")))
        {
            if let Some(c) = out
                .iter()
                .find(|a| a.name.eq_ignore_ascii_case("objectClass"))
                .and_then(|a| schema::structural(&a.values))
            {
                out.push(Attribute::new(
                    "objectCategory",
                    vec![c.category.to_string()],
                ));
            }
        }
        Ok(Entry {
            dn: Dn::parse(&s.dn).unwrap_or_else(|_| dn.clone()),
            attributes: out,
        })
    }
}

fn norm_value(attr: &str, v: &str) -> String {
    if schema::dn_valued(attr) {
        if let Ok(d) = Dn::parse(v) {
            return d.normalized();
        }
    }
    v.to_lowercase()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[async_trait]
impl DirectoryBackend for EmbeddedBackend {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn base_dn(&self) -> &Dn {
        &self.base
    }

    fn state_backed(&self) -> bool {
        true
    }

    async fn ensure_base(&self, ctx: &OpContext) -> Result<(), DirError> {
        if self.load(ctx, &self.base).await?.is_none() {
            let b = self.base_entry()?;
            self.save(ctx, &self.base, &b).await?;
        }
        Ok(())
    }

    async fn add(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        attributes: &[Attribute],
    ) -> Result<(), DirError> {
        self.check_base(dn)?;
        let parent = dn
            .parent()
            .ok_or_else(|| DirError::Invalid("cannot add the root".into()))?;
        if *dn == self.base {
            if self.load(ctx, dn).await?.is_some() {
                return Err(DirError::AlreadyExists {
                    dn: dn.to_string(),
                    container: parent.to_string(),
                });
            }
        } else if self.load(ctx, &parent).await?.is_none() {
            if parent == self.base {
                self.ensure_base(ctx).await?;
            } else {
                return Err(DirError::ParentMissing {
                    dn: dn.to_string(),
                    parent: parent.to_string(),
                });
            }
        }
        if self.load(ctx, dn).await?.is_some() {
            return Err(DirError::AlreadyExists {
                dn: dn.to_string(),
                container: parent.to_string(),
            });
        }
        // class
        let given: Vec<String> = attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case("objectClass"))
            .map(|a| a.values.clone())
            .unwrap_or_default();
        if given.is_empty() {
            return Err(DirError::ObjectClassViolation {
                dn: dn.to_string(),
                message: "no objectClass given".into(),
            });
        }
        for c in &given {
            if !schema::CLASSES
                .iter()
                .any(|d| d.chain.iter().any(|x| x.eq_ignore_ascii_case(c)))
            {
                return Err(DirError::UnknownClass {
                    dn: dn.to_string(),
                    class: c.clone(),
                    hint: format!(": the embedded directory knows {}", schema::class_names()),
                });
            }
        }
        let class = schema::structural(&given).ok_or_else(|| DirError::ObjectClassViolation {
            dn: dn.to_string(),
            message: format!(
                "objectClass {} names no structural class ({})",
                given.join(", "),
                schema::class_names()
            ),
        })?;
        let rdn = dn.rdn().expect("not the root");
        for ava in &rdn.avas {
            if !class.naming.iter().any(|n| *n == ava.norm_attr()) {
                return Err(DirError::ObjectClassViolation {
                    dn: dn.to_string(),
                    message: format!(
                        "a {} is named by {} (e.g. {}=…), not {}",
                        class.name,
                        class.naming.join(" or "),
                        class.naming[0].to_uppercase(),
                        ava.attr
                    ),
                });
            }
        }
        let mut s = Stored {
            dn: dn.to_string(),
            attrs: vec![Attribute::new(
                "objectClass",
                class.chain.iter().map(|c| c.to_string()).collect(),
            )],
            pwd: None,
        };
        for a in attributes {
            if a.name.eq_ignore_ascii_case("objectClass") || a.values.is_empty() {
                continue;
            }
            let canon = self.check_attr(dn, class, &a.name)?;
            if s.get(canon).is_some() {
                return Err(DirError::ConstraintViolation {
                    dn: dn.to_string(),
                    message: format!("{canon} is given twice"),
                });
            }
            self.check_values(dn, canon, &a.values)?;
            s.set(canon, a.values.clone());
        }
        // naming attribute(s) from the RDN
        for ava in &rdn.avas {
            let canon = schema::canonical(&ava.norm_attr()).unwrap_or("cn");
            match s.get(canon) {
                Some(v)
                    if v.iter()
                        .any(|x| x.to_lowercase() == ava.value.to_lowercase()) => {}
                Some(v) if schema::single_valued(canon) => {
                    return Err(DirError::ObjectClassViolation {
                        dn: dn.to_string(),
                        message: format!(
                            "{canon} is {:?} but the name says {:?}",
                            v.first().cloned().unwrap_or_default(),
                            ava.value
                        ),
                    })
                }
                Some(v) => {
                    let mut v = v.clone();
                    v.insert(0, ava.value.clone());
                    s.set(canon, v);
                }
                None => s.set(canon, vec![ava.value.clone()]),
            }
        }
        if class.chain.contains(&"user") && s.get("userAccountControl").is_none() {
            s.set(
                "userAccountControl",
                vec![(schema::UAC_NORMAL | schema::UAC_DISABLED_BIT).to_string()],
            );
        }
        if let Some(sam) = s.get("sAMAccountName").and_then(|v| v.first()).cloned() {
            self.claim_sam(ctx, dn, &sam).await?;
        }
        if let Some(members) = s.get("member").cloned() {
            for m in self.check_members(ctx, dn, &members).await? {
                self.put_raw(ctx, dn, &member_key(&m, dn), dn.to_string().into_bytes())
                    .await?;
            }
        }
        self.save(ctx, dn, &s).await
    }

    async fn delete(&self, ctx: &OpContext, dn: &Dn) -> Result<(), DirError> {
        self.check_base(dn)?;
        let Some(s) = self.load(ctx, dn).await? else {
            return Err(DirError::NoSuchObject { dn: dn.to_string() });
        };
        let below = self.scan(ctx, dn, &entry_key(dn)).await?;
        if below.len() > 1 {
            return Err(DirError::NotLeaf { dn: dn.to_string() });
        }
        // memberships of the object
        for (k, v) in self.scan(ctx, dn, &member_prefix(dn)).await? {
            let g = Dn::parse(&String::from_utf8_lossy(&v)).map_err(|e| DirError::Refused {
                dn: dn.to_string(),
                message: format!("a stored membership does not read: {e}"),
            })?;
            if let Some(mut gs) = self.load(ctx, &g).await? {
                let left: Vec<String> = gs
                    .get("member")
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|m| Dn::parse(m).ok().as_ref() != Some(dn))
                    .collect();
                gs.set("member", left);
                self.save(ctx, &g, &gs).await?;
            }
            self.del_raw(ctx, dn, &k).await?;
        }
        // members of a group
        for m in s.get("member").cloned().unwrap_or_default() {
            if let Ok(m) = Dn::parse(&m) {
                self.del_raw(ctx, dn, &member_key(&m, dn)).await?;
            }
        }
        if let Some(sam) = s.get("sAMAccountName").and_then(|v| v.first()) {
            let key = super::sam::reservation_key(sam);
            self.del_raw(ctx, dn, &key).await?;
        }
        self.del_raw(ctx, dn, &entry_key(dn)).await
    }

    async fn modify(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        mods: &[Modification],
    ) -> Result<(), DirError> {
        self.check_base(dn)?;
        let Some(mut s) = self.load(ctx, dn).await? else {
            return Err(DirError::NoSuchObject { dn: dn.to_string() });
        };
        let class = s.class().ok_or_else(|| DirError::ObjectClassViolation {
            dn: dn.to_string(),
            message: "the stored entry has no known class".into(),
        })?;
        let old_members: Vec<String> = s.get("member").cloned().unwrap_or_default();
        let old_sam = s.get("sAMAccountName").and_then(|v| v.first()).cloned();
        let rdn = dn.rdn().expect("not the root").clone();
        for m in mods {
            if m.attr.eq_ignore_ascii_case("objectClass") {
                return Err(DirError::ObjectClassViolation {
                    dn: dn.to_string(),
                    message: "objectClass cannot be changed".into(),
                });
            }
            let canon = self.check_attr(dn, class, &m.attr)?;
            if rdn
                .avas
                .iter()
                .any(|a| a.norm_attr().eq_ignore_ascii_case(canon))
            {
                return Err(DirError::Refused {
                    dn: dn.to_string(),
                    message: format!("{canon} names the object; change it with Rename Object"),
                });
            }
            let cur: Vec<String> = s.get(canon).cloned().unwrap_or_default();
            let next = match m.op {
                ModOp::Replace => m.values.clone(),
                ModOp::Clear => Vec::new(),
                ModOp::Add => {
                    if m.values.is_empty() {
                        return Err(DirError::Invalid(format!(
                            "{dn}: add to {canon} needs at least one value"
                        )));
                    }
                    let mut n = cur.clone();
                    for v in &m.values {
                        if cur
                            .iter()
                            .any(|c| norm_value(canon, c) == norm_value(canon, v))
                        {
                            return Err(DirError::ConstraintViolation {
                                dn: dn.to_string(),
                                message: format!("{canon} already holds {v:?}"),
                            });
                        }
                        n.push(v.clone());
                    }
                    n
                }
                ModOp::Delete => {
                    if m.values.is_empty() {
                        Vec::new()
                    } else {
                        let mut n = cur.clone();
                        for v in &m.values {
                            let before = n.len();
                            n.retain(|c| norm_value(canon, c) != norm_value(canon, v));
                            if n.len() == before {
                                return Err(DirError::ConstraintViolation {
                                    dn: dn.to_string(),
                                    message: format!("{canon} does not hold {v:?}"),
                                });
                            }
                        }
                        n
                    }
                }
            };
            self.check_values(dn, canon, &next)?;
            s.set(canon, next);
        }
        // side effects: sAMAccountName index, member index
        let new_sam = s.get("sAMAccountName").and_then(|v| v.first()).cloned();
        if new_sam.as_ref().map(|x| x.to_lowercase()) != old_sam.as_ref().map(|x| x.to_lowercase())
        {
            if let Some(o) = &old_sam {
                self.del_raw(ctx, dn, &super::sam::reservation_key(o))
                    .await?;
            }
            if let Some(n) = &new_sam {
                self.claim_sam(ctx, dn, n).await?;
            }
        }
        let new_members: Vec<String> = s.get("member").cloned().unwrap_or_default();
        let norm = |v: &Vec<String>| -> Vec<String> {
            v.iter().map(|x| norm_value("member", x)).collect()
        };
        let (on, nn) = (norm(&old_members), norm(&new_members));
        for (v, n) in old_members.iter().zip(&on) {
            if !nn.contains(n) {
                if let Ok(m) = Dn::parse(v) {
                    self.del_raw(ctx, dn, &member_key(&m, dn)).await?;
                }
            }
        }
        let added: Vec<String> = new_members
            .iter()
            .zip(&nn)
            .filter(|(_, n)| !on.contains(n))
            .map(|(v, _)| v.clone())
            .collect();
        for m in self.check_members(ctx, dn, &added).await? {
            if m == *dn {
                return Err(DirError::ConstraintViolation {
                    dn: dn.to_string(),
                    message: "a group cannot be a member of itself".into(),
                });
            }
            self.put_raw(ctx, dn, &member_key(&m, dn), dn.to_string().into_bytes())
                .await?;
        }
        self.save(ctx, dn, &s).await
    }

    async fn modify_dn(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        new_rdn: &Rdn,
        new_parent: Option<&Dn>,
    ) -> Result<Dn, DirError> {
        self.check_base(dn)?;
        if *dn == self.base {
            return Err(DirError::Refused {
                dn: dn.to_string(),
                message: "the base entry cannot be renamed or moved".into(),
            });
        }
        let Some(root) = self.load(ctx, dn).await? else {
            return Err(DirError::NoSuchObject { dn: dn.to_string() });
        };
        let parent = match new_parent {
            Some(p) => p.clone(),
            None => dn.parent().expect("not the root"),
        };
        let new_dn = parent.child(new_rdn.clone());
        self.check_base(&new_dn)?;
        if new_dn.is_under(dn) && new_dn != *dn {
            return Err(DirError::Refused {
                dn: dn.to_string(),
                message: format!("cannot move it below itself ({new_dn})"),
            });
        }
        if new_dn == *dn && new_dn.to_string() == dn.to_string() {
            return Ok(new_dn);
        }
        if self.load(ctx, &parent).await?.is_none() {
            return Err(DirError::ParentMissing {
                dn: new_dn.to_string(),
                parent: parent.to_string(),
            });
        }
        if new_dn != *dn && self.load(ctx, &new_dn).await?.is_some() {
            return Err(DirError::AlreadyExists {
                dn: new_dn.to_string(),
                container: parent.to_string(),
            });
        }
        let class = root.class().ok_or_else(|| DirError::ObjectClassViolation {
            dn: dn.to_string(),
            message: "the stored entry has no known class".into(),
        })?;
        for ava in &new_rdn.avas {
            if !class.naming.iter().any(|n| *n == ava.norm_attr()) {
                return Err(DirError::ObjectClassViolation {
                    dn: new_dn.to_string(),
                    message: format!(
                        "a {} is named by {}, not {}",
                        class.name,
                        class.naming.join(" or "),
                        ava.attr
                    ),
                });
            }
        }
        let moved = self.scan(ctx, dn, &entry_key(dn)).await?;
        let mut entries: Vec<(Dn, Dn, Stored)> = Vec::with_capacity(moved.len());
        for (_, v) in moved {
            let s: Stored = serde_json::from_slice(&v).map_err(|e| DirError::Refused {
                dn: dn.to_string(),
                message: format!("a stored entry does not read: {e}"),
            })?;
            let old = Dn::parse(&s.dn).map_err(|e| DirError::Refused {
                dn: dn.to_string(),
                message: e.to_string(),
            })?;
            let new = old.rebase(dn, &new_dn).expect("below the moved entry");
            entries.push((old, new, s));
        }
        let map = |d: &Dn| -> Dn { d.rebase(dn, &new_dn).unwrap_or_else(|| d.clone()) };
        let rewrite = |vals: &[String]| -> Vec<String> {
            vals.iter()
                .map(|v| match Dn::parse(v) {
                    Ok(d) if d.is_under(dn) => map(&d).to_string(),
                    _ => v.clone(),
                })
                .collect()
        };
        // groups outside the subtree whose member values name moved entries
        for (old, new, s) in &entries {
            for (k, v) in self.scan(ctx, dn, &member_prefix(old)).await? {
                let g = Dn::parse(&String::from_utf8_lossy(&v)).map_err(|e| DirError::Refused {
                    dn: dn.to_string(),
                    message: e.to_string(),
                })?;
                let g_new = map(&g);
                self.del_raw(ctx, dn, &k).await?;
                self.put_raw(
                    ctx,
                    dn,
                    &member_key(new, &g_new),
                    g_new.to_string().into_bytes(),
                )
                .await?;
                if !g.is_under(dn) {
                    if let Some(mut gs) = self.load(ctx, &g).await? {
                        let m = rewrite(gs.get("member").map(Vec::as_slice).unwrap_or(&[]));
                        gs.set("member", m);
                        self.save(ctx, &g, &gs).await?;
                    }
                }
            }
            // members (outside the subtree) of a moved group
            for m in s.get("member").cloned().unwrap_or_default() {
                if let Ok(m) = Dn::parse(&m) {
                    if !m.is_under(dn) {
                        self.del_raw(ctx, dn, &member_key(&m, old)).await?;
                        self.put_raw(ctx, dn, &member_key(&m, new), new.to_string().into_bytes())
                            .await?;
                    }
                }
            }
        }
        for (old, new, mut s) in entries {
            if let Some(m) = s.get("member").cloned() {
                s.set("member", rewrite(&m));
            }
            if old == *dn {
                // the naming attribute follows the new RDN
                for ava in &dn.rdn().expect("not the root").avas {
                    let canon = schema::canonical(&ava.norm_attr()).unwrap_or("cn");
                    let left: Vec<String> = s
                        .get(canon)
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|v| v.to_lowercase() != ava.value.to_lowercase())
                        .collect();
                    s.set(canon, left);
                }
                for ava in &new_rdn.avas {
                    let canon = schema::canonical(&ava.norm_attr()).unwrap_or("cn");
                    let mut v = s.get(canon).cloned().unwrap_or_default();
                    v.insert(0, ava.value.clone());
                    s.set(canon, v);
                }
            }
            s.dn = new.to_string();
            if let Some(sam) = s.get("sAMAccountName").and_then(|v| v.first()) {
                self.put_raw(
                    ctx,
                    dn,
                    &super::sam::reservation_key(sam),
                    new.to_string().into_bytes(),
                )
                .await?;
            }
            self.del_raw(ctx, dn, &entry_key(&old)).await?;
            self.save(ctx, &new, &s).await?;
        }
        Ok(new_dn)
    }

    async fn read(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        attrs: &AttrSelection,
    ) -> Result<Option<Entry>, DirError> {
        self.check_base(dn)?;
        match self.load(ctx, dn).await? {
            None => Ok(None),
            Some(s) => Ok(Some(
                self.to_entry(ctx, dn, s, attrs, matches!(attrs, AttrSelection::All))
                    .await?,
            )),
        }
    }

    async fn search(&self, ctx: &OpContext, req: &SearchRequest) -> Result<SearchPage, DirError> {
        self.check_base(&req.base)?;
        let unsupported = req.filter.unsupported_rules(&[RULE_BIT_AND, RULE_BIT_OR]);
        if !unsupported.is_empty() {
            return Err(DirError::Invalid(format!(
                "the embedded directory does not support the matching rule {} (it knows {RULE_BIT_AND} and {RULE_BIT_OR})",
                unsupported.join(", ")
            )));
        }
        if self.load(ctx, &req.base).await?.is_none() {
            return Err(DirError::NoSuchObject {
                dn: req.base.to_string(),
            });
        }
        let needs_member_of = req
            .filter
            .attributes()
            .iter()
            .any(|a| a.eq_ignore_ascii_case("memberOf"));
        let needs_category = req
            .filter
            .attributes()
            .iter()
            .any(|a| a.eq_ignore_ascii_case("objectCategory"));
        let base_key = entry_key(&req.base);
        let depth = req.base.rdns.len();
        let after: Option<Vec<u8>> = match &req.cookie {
            None => None,
            Some(c) if c.is_empty() => None,
            Some(c) => Some(unhex(c).ok_or_else(|| {
                DirError::Invalid(format!(
                    "the paging cookie {c:?} is not one this directory gave"
                ))
            })?),
        };
        let candidates: Vec<(Vec<u8>, Vec<u8>)> = match req.scope {
            Scope::Base => {
                let v = ctx
                    .state
                    .get(&base_key)
                    .await
                    .map_err(|e| DirError::state(&req.base, e))?;
                v.map(|v| vec![(base_key.clone(), v)]).unwrap_or_default()
            }
            _ => self.scan(ctx, &req.base, &base_key).await?,
        };
        let limit = req.page_size.map(|p| p.max(1) as usize);
        let mut page = SearchPage::default();
        let mut last_key: Option<Vec<u8>> = None;
        for (k, v) in candidates {
            if after.as_ref().is_some_and(|a| k <= *a) {
                continue;
            }
            let s: Stored = serde_json::from_slice(&v).map_err(|e| DirError::Refused {
                dn: req.base.to_string(),
                message: format!("a stored entry does not read: {e}"),
            })?;
            let dn = Dn::parse(&s.dn).map_err(|e| DirError::Refused {
                dn: req.base.to_string(),
                message: e.to_string(),
            })?;
            if req.scope == Scope::OneLevel && dn.rdns.len() != depth + 1 {
                continue;
            }
            if limit.is_some_and(|l| page.entries.len() >= l) {
                page.cookie = last_key.as_ref().map(|k| hex(k));
                return Ok(page);
            }
            let mut full = self
                .to_entry(ctx, &dn, s.clone(), &AttrSelection::All, needs_member_of)
                .await?;
            if needs_category {
                if let Some(c) = full.get("objectClass").and_then(schema::structural) {
                    full.attributes.push(Attribute::new(
                        "objectCategory",
                        vec![c.category.to_string()],
                    ));
                }
            }
            if !req.filter.matches(&full) {
                continue;
            }
            let e = self.to_entry(ctx, &dn, s, &req.attrs, false).await?;
            page.entries.push(e);
            last_key = Some(k);
        }
        Ok(page)
    }

    async fn find_account(&self, ctx: &OpContext, sam: &str) -> Result<Option<Dn>, DirError> {
        let key = super::sam::reservation_key(sam);
        let v = ctx
            .state
            .get(&key)
            .await
            .map_err(|e| DirError::state(&self.base, e))?;
        Ok(v.and_then(|b| Dn::parse(&String::from_utf8_lossy(&b)).ok()))
    }

    async fn set_password(&self, ctx: &OpContext, dn: &Dn, new: &Password) -> Result<(), DirError> {
        self.check_base(dn)?;
        let Some(mut s) = self.load(ctx, dn).await? else {
            return Err(DirError::NoSuchObject { dn: dn.to_string() });
        };
        if !s.class().is_some_and(|c| c.chain.contains(&"user")) {
            return Err(DirError::ObjectClassViolation {
                dn: dn.to_string(),
                message: "only a user or inetOrgPerson has a password".into(),
            });
        }
        if new.expose().is_empty() {
            return Err(DirError::ConstraintViolation {
                dn: dn.to_string(),
                message: "the new password is empty".into(),
            });
        }
        s.pwd = Some(hash_password(dn, new)?);
        self.save(ctx, dn, &s).await
    }

    async fn change_password(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        old: &Password,
        new: &Password,
    ) -> Result<(), DirError> {
        self.check_base(dn)?;
        let Some(s) = self.load(ctx, dn).await? else {
            return Err(DirError::NoSuchObject { dn: dn.to_string() });
        };
        let ok = match &s.pwd {
            Some(h) => verify_password(h, old),
            None => old.expose().is_empty(),
        };
        if !ok {
            return Err(DirError::WrongPassword { dn: dn.to_string() });
        }
        self.set_password(ctx, dn, new).await
    }
}

impl EmbeddedBackend {
    /// Whether `password` is the stored password of `dn` (for tests and a future bind).
    pub async fn check_password(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        password: &Password,
    ) -> Result<bool, DirError> {
        Ok(self
            .load(ctx, dn)
            .await?
            .and_then(|s| s.pwd)
            .is_some_and(|h| verify_password(&h, password)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_is_salted_and_verifies() {
        let dn = Dn::parse("CN=x,DC=y").unwrap();
        let p = Password::new("S3cret!pw");
        let a = hash_password(&dn, &p).unwrap();
        let b = hash_password(&dn, &p).unwrap();
        assert_ne!(a, b, "salted");
        assert!(!a.contains("S3cret"));
        assert!(verify_password(&a, &p));
        assert!(!verify_password(&a, &Password::new("wrong")));
    }

    #[test]
    fn cookies_round_trip() {
        assert_eq!(unhex(&hex(b"e\0dc=x\0")).unwrap(), b"e\0dc=x\0");
        assert!(unhex("zz").is_none());
    }
}
