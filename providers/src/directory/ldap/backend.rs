//! [`LdapBackend`]: the directory's [`DirectoryBackend`] over an LDAP server.
//!
//! Active Directory (and Samba AD) take the directory's object classes and attributes as
//! they are. On OpenLDAP (with `packaging/ldap/provisio-ad.schema` loaded) the AD classes
//! are mapped both ways: a `user` is stored as `inetOrgPerson` + `provisioAccount` (with
//! `sn` defaulting to the `cn`, which inetOrgPerson requires), a `group` as
//! `provisioGroup`, a `contact` as `inetOrgPerson`; reads give the AD class chain back
//! and filters on `objectClass`/`objectCategory` are rewritten the same way, so the
//! procedures see one directory whatever the server.
//!
//! A transaction uses one server throughout: the call's `preferredDomainController` if it
//! names a configured server, otherwise one chosen from the transaction id.

use super::client::{Flavour, LdapClient, LdapEntry, LdapMod, LdapScope, LdapSettings};
use super::error::{LdapErrorKind, LdapOpError};
use crate::directory::backend::{
    AttrSelection, Attribute, DirError, DirectoryBackend, Entry, ModOp, Modification, OpContext,
    Password, Scope, SearchPage, SearchRequest,
};
use crate::directory::dn::{Dn, Rdn};
use crate::directory::filter::Filter;
use async_trait::async_trait;
use base64::Engine as _;
use std::fmt;

/// Attributes that hold passwords: never read back.
const SECRET_ATTRS: &[&str] = &[
    "userPassword",
    "unicodePwd",
    "dBCSPwd",
    "ntPwdHistory",
    "lmPwdHistory",
    "supplementalCredentials",
];

/// Attributes the server computes or owns: never sent in an add (an undo that recreates an
/// object from what was read gives them back as they were read).
const SERVER_OWNED: &[&str] = &[
    // both
    "memberOf",
    "distinguishedName",
    "entryDN",
    "entryUUID",
    "entryCSN",
    "createTimestamp",
    "modifyTimestamp",
    "creatorsName",
    "modifiersName",
    "structuralObjectClass",
    "hasSubordinates",
    "subschemaSubentry",
    "pwdChangedTime",
    // Active Directory
    "objectGUID",
    "objectSid",
    "whenCreated",
    "whenChanged",
    "uSNCreated",
    "uSNChanged",
    "instanceType",
    "name",
    "objectCategory",
    "sAMAccountType",
    "primaryGroupID",
    "pwdLastSet",
    "badPwdCount",
    "badPasswordTime",
    "lastLogon",
    "lastLogoff",
    "lastLogonTimestamp",
    "logonCount",
    "isCriticalSystemObject",
    "systemFlags",
    "dSCorePropagationData",
    "replPropertyMetaData",
    "msDS-KeyVersionNumber",
    "msDS-User-Account-Control-Computed",
    "lockoutTime",
];

/// An attribute as sent: name and values.
type WireAttr = (String, Vec<Vec<u8>>);

/// Whether an object with these classes can have a password.
fn is_account(classes: &[String]) -> bool {
    classes.iter().any(|c| {
        [
            "user",
            "provisioAccount",
            "inetOrgPerson",
            "person",
            "organizationalPerson",
            "posixAccount",
            "simpleSecurityObject",
            "computer",
        ]
        .iter()
        .any(|k| c.eq_ignore_ascii_case(k))
    })
}

/// The directory over an LDAP server (see the module docs).
pub struct LdapBackend {
    client: LdapClient,
    base: Dn,
    base_checked: tokio::sync::OnceCell<()>,
}

impl fmt::Debug for LdapBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapBackend")
            .field("client", &self.client)
            .field("base", &self.base.to_string())
            .finish()
    }
}

/// OpenLDAP object classes for an AD class (lower-case AD name → stored classes).
fn openldap_classes(ad_class: &str) -> Option<&'static [&'static str]> {
    match ad_class.to_ascii_lowercase().as_str() {
        "user" => Some(&["inetOrgPerson", "provisioAccount"]),
        "inetorgperson" => Some(&["inetOrgPerson", "provisioAccount"]),
        "group" => Some(&["provisioGroup"]),
        "contact" => Some(&["inetOrgPerson"]),
        // An OU may carry the UPN suffixes of its tenant's domains (AD's uPNSuffixes).
        "organizationalunit" => Some(&["organizationalUnit", "provisioOrganization"]),
        // Implied by inetOrgPerson / abstract on OpenLDAP.
        "person" | "organizationalperson" | "top" => Some(&[]),
        _ => None,
    }
}

/// The AD class chain for the classes OpenLDAP holds.
fn ad_classes(stored: &[String]) -> Vec<String> {
    let has = |c: &str| stored.iter().any(|s| s.eq_ignore_ascii_case(c));
    let chain: &[&str] = if has("provisioAccount") {
        &["top", "person", "organizationalPerson", "user"]
    } else if has("provisioGroup") {
        &["top", "group"]
    } else if has("inetOrgPerson") {
        &["top", "person", "organizationalPerson", "contact"]
    } else {
        // An OU is read back as stored, without the auxiliary class of its AD attributes.
        return stored
            .iter()
            .filter(|s| !s.eq_ignore_ascii_case("provisioOrganization"))
            .cloned()
            .collect();
    };
    chain.iter().map(|c| c.to_string()).collect()
}

/// Rewrites `objectClass=<AD class>` and `objectCategory=<category>` assertions for
/// OpenLDAP.
fn openldap_filter(f: &Filter) -> Filter {
    let class_of = |attr: &str, value: &[u8]| -> Option<Filter> {
        let v = String::from_utf8_lossy(value).to_ascii_lowercase();
        if attr.eq_ignore_ascii_case("objectCategory") {
            let cls = match v.as_str() {
                "person" | "user" => "person",
                "group" => "provisioGroup",
                "organizationalunit" => "organizationalUnit",
                "contact" => "inetOrgPerson",
                _ => return Some(Filter::Equal("objectClass".into(), value.to_vec())),
            };
            return Some(Filter::Equal("objectClass".into(), cls.as_bytes().to_vec()));
        }
        if attr.eq_ignore_ascii_case("objectClass") {
            let cls = match v.as_str() {
                "user" => "provisioAccount",
                "group" => "provisioGroup",
                "contact" => {
                    // An inetOrgPerson that is not an account.
                    return Some(Filter::And(vec![
                        Filter::Equal("objectClass".into(), b"inetOrgPerson".to_vec()),
                        Filter::Not(Box::new(Filter::Equal(
                            "objectClass".into(),
                            b"provisioAccount".to_vec(),
                        ))),
                    ]));
                }
                _ => return None,
            };
            return Some(Filter::Equal("objectClass".into(), cls.as_bytes().to_vec()));
        }
        None
    };
    match f {
        Filter::And(v) => Filter::And(v.iter().map(openldap_filter).collect()),
        Filter::Or(v) => Filter::Or(v.iter().map(openldap_filter).collect()),
        Filter::Not(b) => Filter::Not(Box::new(openldap_filter(b))),
        Filter::Equal(a, v) => class_of(a, v).unwrap_or_else(|| f.clone()),
        Filter::Present(a) if a.eq_ignore_ascii_case("objectCategory") => {
            Filter::Present("objectClass".into())
        }
        other => other.clone(),
    }
}

/// The first attribute among `attrs` the server's message names (to say which one it
/// does not know).
fn named_attribute(message: &str, attrs: &[&str]) -> Option<String> {
    let lower = message.to_ascii_lowercase();
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    // Samba quotes it ('favouriteColour'); OpenLDAP starts with it (`favouriteColour: …`).
    attrs
        .iter()
        .find(|a| !a.is_empty() && lower.contains(&format!("'{}'", a.to_ascii_lowercase())))
        .or_else(|| {
            attrs.iter().filter(|a| !a.is_empty()).find(|a| {
                let a = a.to_ascii_lowercase();
                lower.match_indices(&a).any(|(i, _)| {
                    let before = lower[..i].chars().next_back();
                    let after = lower[i + a.len()..].chars().next();
                    !before.is_some_and(word) && !after.is_some_and(word)
                })
            })
        })
        .map(|a| a.to_string())
}

/// `value #N` in an OpenLDAP message.
fn value_index(message: &str) -> Option<usize> {
    let rest = message.split("value #").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl LdapBackend {
    /// A backend for these settings; connects on first use.
    pub fn new(settings: LdapSettings) -> Result<LdapBackend, DirError> {
        let base = Dn::parse(&settings.base_dn)
            .map_err(|e| DirError::Invalid(format!("[providers.directory.ldap] base_dn: {e}")))?;
        let client = LdapClient::new(settings).map_err(|e| DirError::Invalid(e.message))?;
        Ok(LdapBackend {
            client,
            base,
            base_checked: tokio::sync::OnceCell::new(),
        })
    }

    /// The LDAP client underneath.
    pub fn client(&self) -> &LdapClient {
        &self.client
    }

    /// The server of a call.
    fn server(&self, ctx: &OpContext) -> Result<usize, DirError> {
        let txn = ctx.key.split('/').next().unwrap_or_default();
        self.client
            .pick_server(txn, ctx.server.as_deref())
            .map_err(|e| DirError::Invalid(e.message))
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

    async fn flavour(&self, dn: &Dn) -> Result<Flavour, DirError> {
        self.client.flavour().await.map_err(|e| map_err(e, dn, &[]))
    }

    /// Attributes for the server: classes mapped on OpenLDAP, `sn` for inetOrgPerson.
    fn outgoing(
        &self,
        flavour: Flavour,
        dn: &Dn,
        attributes: &[Attribute],
    ) -> Result<Vec<WireAttr>, DirError> {
        let mut out: Vec<WireAttr> = Vec::new();
        let mut classes: Vec<String> = Vec::new();
        for a in attributes {
            if a.name.eq_ignore_ascii_case("objectClass") {
                classes.extend(a.values.iter().cloned());
                continue;
            }
            if SERVER_OWNED.iter().any(|o| o.eq_ignore_ascii_case(&a.name)) {
                continue;
            }
            if let Some(slot) = out
                .iter_mut()
                .find(|(n, _)| n.eq_ignore_ascii_case(&a.name))
            {
                slot.1
                    .extend(a.values.iter().map(|v| v.as_bytes().to_vec()));
            } else {
                out.push((
                    a.name.clone(),
                    a.values.iter().map(|v| v.as_bytes().to_vec()).collect(),
                ));
            }
        }
        // The RDN's values.
        if let Some(rdn) = dn.rdn() {
            for ava in &rdn.avas {
                match out
                    .iter_mut()
                    .find(|(n, _)| n.eq_ignore_ascii_case(&ava.attr))
                {
                    Some(slot) => {
                        if !slot.1.iter().any(|v| v == ava.value.as_bytes()) {
                            slot.1.push(ava.value.as_bytes().to_vec());
                        }
                    }
                    None => out.push((ava.attr.clone(), vec![ava.value.as_bytes().to_vec()])),
                }
            }
        }
        if flavour == Flavour::OpenLdap {
            let mut mapped: Vec<String> = Vec::new();
            for c in &classes {
                match openldap_classes(c) {
                    Some(m) => mapped.extend(m.iter().map(|s| s.to_string())),
                    None => mapped.push(c.clone()),
                }
            }
            mapped.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
            let mut seen: Vec<String> = Vec::new();
            mapped.retain(|c| {
                let k = c.to_ascii_lowercase();
                if seen.contains(&k) {
                    false
                } else {
                    seen.push(k);
                    true
                }
            });
            // A new account starts as on AD: disabled, no password required (546).
            if mapped
                .iter()
                .any(|c| c.eq_ignore_ascii_case("provisioAccount"))
                && !out
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("userAccountControl"))
            {
                out.push(("userAccountControl".into(), vec![b"546".to_vec()]));
            }
            if mapped
                .iter()
                .any(|c| c.eq_ignore_ascii_case("inetOrgPerson"))
                && !out.iter().any(|(n, _)| n.eq_ignore_ascii_case("sn"))
            {
                let cn = out
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("cn"))
                    .and_then(|(_, v)| v.first().cloned())
                    .unwrap_or_else(|| b"-".to_vec());
                out.push(("sn".into(), vec![cn]));
            }
            classes = mapped;
        }
        if classes.is_empty() {
            return Err(DirError::ObjectClassViolation {
                dn: dn.to_string(),
                message: "no objectClass given".into(),
            });
        }
        out.insert(
            0,
            (
                "objectClass".into(),
                classes.into_iter().map(String::into_bytes).collect(),
            ),
        );
        Ok(out)
    }

    /// An entry as the procedures see it.
    fn incoming(&self, flavour: Flavour, e: LdapEntry) -> Result<Entry, DirError> {
        let dn = Dn::parse(&e.dn).map_err(|err| {
            DirError::Invalid(format!(
                "the server returned a DN that does not parse: {err}"
            ))
        })?;
        let mut attributes = Vec::new();
        for (name, values) in e.attrs {
            if SECRET_ATTRS.iter().any(|s| s.eq_ignore_ascii_case(&name)) {
                continue;
            }
            let mut texts: Vec<String> = values
                .into_iter()
                .map(|v| match String::from_utf8(v) {
                    Ok(t) => t,
                    Err(b) => base64::engine::general_purpose::STANDARD.encode(b.into_bytes()),
                })
                .collect();
            if flavour == Flavour::OpenLdap && name.eq_ignore_ascii_case("objectClass") {
                texts = ad_classes(&texts);
            }
            attributes.push(Attribute::new(name, texts));
        }
        Ok(Entry { dn, attributes })
    }

    /// Pages over the whole result: the LDAP paged-results cookie belongs to one
    /// connection, so a page a later call asks for is cut from a fresh (internally paged)
    /// search; the cookie is the offset, the order the DNs' key order.
    async fn search_all(
        &self,
        ctx: &OpContext,
        request: &SearchRequest,
    ) -> Result<Vec<Entry>, DirError> {
        let i = self.server(ctx)?;
        let flavour = self.flavour(&request.base).await?;
        let filter = if flavour == Flavour::OpenLdap {
            openldap_filter(&request.filter)
        } else {
            request.filter.clone()
        };
        let attrs = request.attrs.to_ldap();
        let mut attr_refs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        if attr_refs.is_empty() {
            attr_refs.push("1.1");
        }
        let scope = match request.scope {
            Scope::Base => LdapScope::Base,
            Scope::OneLevel => LdapScope::OneLevel,
            Scope::Subtree => LdapScope::Subtree,
        };
        let raw = self
            .client
            .search(
                i,
                &request.base.to_string(),
                scope,
                &filter.to_string(),
                &attr_refs,
                None,
            )
            .await
            .map_err(|e| map_err(e, &request.base, &[]))?;
        let mut out = Vec::with_capacity(raw.len());
        for e in raw {
            out.push(self.incoming(flavour, e)?);
        }
        out.sort_by_cached_key(|e| e.dn.key());
        Ok(out)
    }
}

/// An LDAP error as a directory error about `dn`; `attrs` are the attribute names the
/// request carried (to name the one the server did not know).
fn map_err(e: LdapOpError, dn: &Dn, attrs: &[&str]) -> DirError {
    let d = dn.to_string();
    let message = e.message.clone();
    match e.kind {
        LdapErrorKind::AlreadyExists => {
            if message.to_ascii_lowercase().contains("samaccountname") {
                DirError::ConstraintViolation { dn: d, message }
            } else {
                DirError::AlreadyExists {
                    dn: d,
                    container: dn.parent().map(|p| p.to_string()).unwrap_or_default(),
                }
            }
        }
        LdapErrorKind::NoSuchObject => DirError::NoSuchObject { dn: d },
        LdapErrorKind::UnknownAttribute => {
            let attribute = named_attribute(&message, attrs)
                .unwrap_or_else(|| "(see the server's message)".into());
            DirError::UnknownAttribute {
                dn: d,
                attribute,
                hint: format!(": {message}"),
            }
        }
        LdapErrorKind::ObjectClassViolation => DirError::ObjectClassViolation { dn: d, message },
        LdapErrorKind::Constraint | LdapErrorKind::ValueExists | LdapErrorKind::NoSuchAttribute => {
            DirError::ConstraintViolation { dn: d, message }
        }
        LdapErrorKind::NotLeaf => DirError::NotLeaf { dn: d },
        LdapErrorKind::Invalid => DirError::Invalid(message),
        LdapErrorKind::Refused | LdapErrorKind::Other => DirError::Refused { dn: d, message },
        LdapErrorKind::Transient => DirError::Transient { dn: d, message },
        LdapErrorKind::InDoubt => DirError::InDoubt { dn: d, message },
    }
}

#[async_trait]
impl DirectoryBackend for LdapBackend {
    fn kind(&self) -> &'static str {
        "ldap"
    }

    fn base_dn(&self) -> &Dn {
        &self.base
    }

    async fn ensure_base(&self, ctx: &OpContext) -> Result<(), DirError> {
        self.base_checked
            .get_or_try_init(|| async {
                let i = self.server(ctx)?;
                match self
                    .client
                    .read(i, &self.base.to_string(), &["1.1"])
                    .await
                    .map_err(|e| map_err(e, &self.base, &[]))?
                {
                    Some(_) => Ok(()),
                    None => Err(DirError::Refused {
                        dn: self.base.to_string(),
                        message: format!(
                            "the configured base DN does not exist on {} ([providers.directory.ldap] base_dn)",
                            self.client.server_url(i)
                        ),
                    }),
                }
            })
            .await
            .map(|_| ())
    }

    async fn add(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        attributes: &[Attribute],
    ) -> Result<(), DirError> {
        self.check_base(dn)?;
        let i = self.server(ctx)?;
        let flavour = self.flavour(dn).await?;
        let attrs = self.outgoing(flavour, dn, attributes)?;
        let names: Vec<&str> = attrs.iter().map(|(n, _)| n.as_str()).collect();
        match self.client.add(i, &dn.to_string(), &attrs).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // An unknown object class: OpenLDAP says `objectClass: value #N invalid`.
                if matches!(
                    e.kind,
                    LdapErrorKind::UnknownAttribute | LdapErrorKind::ObjectClassViolation
                ) && e.message.to_ascii_lowercase().contains("objectclass")
                {
                    let sent: Vec<String> = attrs[0]
                        .1
                        .iter()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .collect();
                    let given: Vec<&str> = attributes
                        .iter()
                        .filter(|a| a.name.eq_ignore_ascii_case("objectClass"))
                        .flat_map(|a| a.values.iter().map(String::as_str))
                        .collect();
                    let class = value_index(&e.message)
                        .and_then(|n| sent.get(n).cloned())
                        .or_else(|| named_attribute(&e.message, &given));
                    if let Some(class) = class {
                        return Err(DirError::UnknownClass {
                            dn: dn.to_string(),
                            class,
                            hint: format!(": {}", e.message),
                        });
                    }
                }
                if e.kind == LdapErrorKind::NoSuchObject {
                    return Err(DirError::ParentMissing {
                        dn: dn.to_string(),
                        parent: dn.parent().map(|p| p.to_string()).unwrap_or_default(),
                    });
                }
                Err(map_err(e, dn, &names))
            }
        }
    }

    async fn delete(&self, ctx: &OpContext, dn: &Dn) -> Result<(), DirError> {
        self.check_base(dn)?;
        let i = self.server(ctx)?;
        self.client
            .delete(i, &dn.to_string())
            .await
            .map_err(|e| map_err(e, dn, &[]))
    }

    async fn modify(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        mods: &[Modification],
    ) -> Result<(), DirError> {
        self.check_base(dn)?;
        let i = self.server(ctx)?;
        let flavour = self.flavour(dn).await?;
        let mut out = Vec::with_capacity(mods.len());
        for m in mods {
            let mut values: Vec<Vec<u8>> = m.values.iter().map(|v| v.as_bytes().to_vec()).collect();
            if flavour == Flavour::OpenLdap && m.attr.eq_ignore_ascii_case("objectClass") {
                let mut mapped = Vec::new();
                for v in &m.values {
                    match openldap_classes(v) {
                        Some(c) => mapped.extend(c.iter().map(|s| s.as_bytes().to_vec())),
                        None => mapped.push(v.as_bytes().to_vec()),
                    }
                }
                values = mapped;
            }
            out.push(match m.op {
                ModOp::Add => LdapMod::Add(m.attr.clone(), values),
                ModOp::Replace => LdapMod::Replace(m.attr.clone(), values),
                ModOp::Delete => LdapMod::Delete(m.attr.clone(), values),
                ModOp::Clear => LdapMod::Replace(m.attr.clone(), Vec::new()),
            });
        }
        let names: Vec<&str> = mods.iter().map(|m| m.attr.as_str()).collect();
        match self.client.modify(i, &dn.to_string(), &out).await {
            Ok(()) => Ok(()),
            // A DN value (a new member) that does not exist: AD answers noSuchObject,
            // OpenLDAP's memberof overlay (`memberof-dangling error`) a constraint violation.
            Err(e)
                if matches!(
                    e.kind,
                    LdapErrorKind::NoSuchObject | LdapErrorKind::Constraint
                ) =>
            {
                if e.kind == LdapErrorKind::NoSuchObject
                    && self
                        .client
                        .read(i, &dn.to_string(), &["1.1"])
                        .await
                        .ok()
                        .flatten()
                        .is_none()
                {
                    return Err(DirError::NoSuchObject { dn: dn.to_string() });
                }
                for m in mods.iter().filter(|m| m.op != ModOp::Delete) {
                    for v in &m.values {
                        let Ok(target) = Dn::parse(v) else { continue };
                        if target.rdns.is_empty() || !target.is_under(&self.base) {
                            continue;
                        }
                        if let Ok(None) = self.client.read(i, &target.to_string(), &["1.1"]).await {
                            return Err(DirError::ConstraintViolation {
                                dn: dn.to_string(),
                                message: format!("{} {target} does not exist", m.attr),
                            });
                        }
                    }
                }
                Err(map_err(e, dn, &names))
            }
            Err(e) => Err(map_err(e, dn, &names)),
        }
    }

    async fn modify_dn(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        new_rdn: &Rdn,
        new_parent: Option<&Dn>,
    ) -> Result<Dn, DirError> {
        self.check_base(dn)?;
        let parent = match new_parent {
            Some(p) => p.clone(),
            None => dn.parent().unwrap_or_else(Dn::root),
        };
        let new_dn = parent.child(new_rdn.clone());
        self.check_base(&new_dn)?;
        let i = self.server(ctx)?;
        match self
            .client
            .rename(
                i,
                &dn.to_string(),
                &new_rdn.to_string(),
                new_parent.map(|p| p.to_string()).as_deref(),
            )
            .await
        {
            Ok(()) => Ok(new_dn),
            // Samba says `other (80): … parent does not exist` for a missing new parent.
            Err(e)
                if new_parent.is_some()
                    && (e.kind == LdapErrorKind::NoSuchObject
                        || e.message.contains("parent does not exist")) =>
            {
                // The object, or the new parent?
                match self.client.read(i, &dn.to_string(), &["1.1"]).await {
                    Ok(Some(_)) => Err(DirError::ParentMissing {
                        dn: new_dn.to_string(),
                        parent: parent.to_string(),
                    }),
                    _ => Err(DirError::NoSuchObject { dn: dn.to_string() }),
                }
            }
            Err(e) if e.kind == LdapErrorKind::AlreadyExists => Err(DirError::AlreadyExists {
                dn: new_dn.to_string(),
                container: parent.to_string(),
            }),
            Err(e) => Err(map_err(e, dn, &[])),
        }
    }

    async fn read(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        attrs: &AttrSelection,
    ) -> Result<Option<Entry>, DirError> {
        self.check_base(dn)?;
        let i = self.server(ctx)?;
        let flavour = self.flavour(dn).await?;
        let list = attrs.to_ldap();
        let mut refs: Vec<&str> = list.iter().map(String::as_str).collect();
        if refs.is_empty() {
            refs.push("1.1");
        }
        match self.client.read(i, &dn.to_string(), &refs).await {
            Ok(Some(e)) => Ok(Some(self.incoming(flavour, e)?)),
            Ok(None) => Ok(None),
            Err(e) => Err(map_err(e, dn, &refs)),
        }
    }

    async fn search(
        &self,
        ctx: &OpContext,
        request: &SearchRequest,
    ) -> Result<SearchPage, DirError> {
        self.check_base(&request.base)?;
        let all = self.search_all(ctx, request).await?;
        let Some(size) = request.page_size.filter(|s| *s > 0) else {
            return Ok(SearchPage {
                entries: all,
                cookie: None,
            });
        };
        let start: usize = match &request.cookie {
            None => 0,
            Some(c) => c.parse().map_err(|_| {
                DirError::Invalid(format!(
                    "search of {}: the paging cookie {c:?} is not one this directory gave",
                    request.base
                ))
            })?,
        };
        let end = (start + size as usize).min(all.len());
        let cookie = (end < all.len()).then(|| end.to_string());
        let entries = all
            .into_iter()
            .skip(start)
            .take(end.saturating_sub(start))
            .collect();
        Ok(SearchPage { entries, cookie })
    }

    async fn set_password(&self, ctx: &OpContext, dn: &Dn, new: &Password) -> Result<(), DirError> {
        self.check_base(dn)?;
        let i = self.server(ctx)?;
        let uac = self.account_control(i, dn).await?;
        self.client
            .set_password(i, &dn.to_string(), new.expose())
            .await
            .map_err(|e| map_err(e, dn, &[]))?;
        // With a password set, "no password required" (0x20) goes, as AD tools do.
        if let Some(uac) = uac.filter(|u| u & UAC_PASSWD_NOTREQD != 0) {
            self.client
                .modify(
                    i,
                    &dn.to_string(),
                    &[LdapMod::Replace(
                        "userAccountControl".into(),
                        vec![((uac & !UAC_PASSWD_NOTREQD) as i32)
                            .to_string()
                            .into_bytes()],
                    )],
                )
                .await
                .map_err(|e| map_err(e, dn, &["userAccountControl"]))?;
        }
        Ok(())
    }

    async fn change_password(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        old: &Password,
        new: &Password,
    ) -> Result<(), DirError> {
        self.check_base(dn)?;
        let i = self.server(ctx)?;
        self.account_control(i, dn).await?;
        match self
            .client
            .change_password(i, &dn.to_string(), old.expose(), new.expose())
            .await
        {
            Ok(()) => Ok(()),
            // AD: 00000056 (ERROR_INVALID_PASSWORD) is a wrong old password; 0000052D a new
            // one the policy refuses. OpenLDAP: the bind with the old one failed (49).
            Err(e)
                if e.message.contains("00000056")
                    || (e.rc == Some(49) && e.kind == LdapErrorKind::Refused) =>
            {
                Err(DirError::WrongPassword { dn: dn.to_string() })
            }
            Err(e) => Err(map_err(e, dn, &[])),
        }
    }
}

/// `userAccountControl` flag: no password required.
const UAC_PASSWD_NOTREQD: u32 = 0x20;

impl LdapBackend {
    /// Checks that `dn` exists and can have a password; returns its `userAccountControl`.
    async fn account_control(&self, i: usize, dn: &Dn) -> Result<Option<u32>, DirError> {
        let e = self
            .client
            .read(i, &dn.to_string(), &["objectClass", "userAccountControl"])
            .await
            .map_err(|e| map_err(e, dn, &[]))?
            .ok_or_else(|| DirError::NoSuchObject { dn: dn.to_string() })?;
        let classes: Vec<String> = e
            .get("objectClass")
            .map(|v| {
                v.iter()
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !is_account(&classes) {
            return Err(DirError::ObjectClassViolation {
                dn: dn.to_string(),
                message: "is not a user: only users have passwords".into(),
            });
        }
        Ok(e.first("userAccountControl")
            .and_then(|v| v.trim().parse::<i64>().ok())
            .map(|v| v as u32))
    }
}
