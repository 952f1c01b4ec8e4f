//! The directory provider (`Active Directory Provider`): objects addressed by DN, their
//! properties, groups, searches and passwords, stored by a [`DirectoryBackend`]. The
//! embedded backend ([`EmbeddedBackend`]) keeps the directory in the engine's provider
//! state, so the quick start needs no server; the `ldap` backend talks to OpenLDAP, Samba
//! AD DC or Active Directory.
//!
//! DNs and filters are parsed and escaped here ([`dn`], [`filter`]), `sAMAccountName`s
//! derived and reserved here ([`sam`]), for every backend alike.

pub mod backend;
pub mod dn;
pub mod embedded;
pub mod filter;
pub mod ldap;
pub mod sam;
pub mod schema;

pub use backend::{
    AttrSelection, Attribute, DirError, DirectoryBackend, Entry, ModOp, Modification, OpContext,
    Password, Scope, SearchPage, SearchRequest,
};
pub use dn::{parse_path, to_path, AdsPath, Dn, Rdn};
pub use embedded::EmbeddedBackend;
pub use filter::Filter;

use std::sync::Arc;

/// The base DN the embedded directory uses when none is configured.
pub const DEFAULT_BASE_DN: &str = "DC=provisio,DC=local";

/// Which backend `[providers.directory] backend` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// Entries in the engine's provider state (no server).
    #[default]
    Embedded,
    /// An LDAP server (configured by `[providers.directory.ldap]`).
    Ldap,
}

/// The provider's settings, as `[providers.directory]` gives them.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// Which backend.
    pub backend: BackendKind,
    /// Every object must be under this DN.
    pub base_dn: Dn,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            backend: BackendKind::Embedded,
            base_dn: Dn::parse(DEFAULT_BASE_DN).expect("the default base DN parses"),
        }
    }
}

/// The directory provider; `name()` is `Directory`, its namespace `Active Directory
/// Provider`.
pub struct DirectoryProvider {
    backend: Arc<dyn DirectoryBackend>,
    /// A call and the settlement of its idempotency key never overlap.
    fences: crate::common::KeyFences,
}

impl std::fmt::Debug for DirectoryProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryProvider")
            .field("backend", &self.backend.kind())
            .field("base_dn", &self.backend.base_dn().to_string())
            .finish()
    }
}

impl DirectoryProvider {
    /// The embedded directory under `base_dn`.
    pub fn embedded(base_dn: Dn) -> Result<DirectoryProvider, DirError> {
        Ok(Self::with_backend(Arc::new(EmbeddedBackend::new(base_dn)?)))
    }

    /// Any backend.
    pub fn with_backend(backend: Arc<dyn DirectoryBackend>) -> DirectoryProvider {
        DirectoryProvider {
            backend,
            fences: crate::common::KeyFences::new(),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn DirectoryBackend> {
        &self.backend
    }
}

use crate::common::{input, input_default, opt_input, opt_nonempty, parse_bool, req_input, text};
use async_trait::async_trait;
use provisio_engine::data::Element;
use provisio_engine::model::{InputSpec, ProcKind};
use provisio_engine::provider::{
    Call, Done, Outcome, Preview, ProcedureSpec, Provider, ProviderError, UndoKind,
};

/// The provider's name (`providerSource`); its namespace is `Active Directory Provider`.
pub const PROVIDER_NAME: &str = "Active Directory";

/// The procedures, by canonical name.
const PROCS: &[&str] = &[
    "Create Object",
    "Delete Object",
    "Move Object",
    "Rename Object",
    "Get Properties",
    "Set Properties",
    "Group Add Member",
    "Group Remove Member",
    "Group Is Member",
    "Group Members",
    "Search",
    "User Set Password",
    "User Change Password",
    "Enable User",
    "Disable User",
    "Initialize",
    "Build Path",
    "Get Parent Path",
    "Escape Filter Value",
];

/// The canonical procedure name for a name as called: the MPS spelling, or the same
/// without spaces (`CreateObject`), any case.
fn canonical_procedure(name: &str) -> Option<&'static str> {
    let squash = |s: &str| s.replace(' ', "").to_ascii_lowercase();
    let want = squash(name);
    PROCS.iter().copied().find(|p| squash(p) == want)
}

const PATH: &[&str] = &["path", "Path", "dn", "objectPath"];
const DC: &[&str] = &["preferredDomainController", "domainController", "server"];

fn inv(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::invalid(e.to_string())
}

/// The object a call names: `path` (an ADSI path or a DN).
fn path_input(data: &Element, names: &[&str]) -> Result<AdsPath, ProviderError> {
    let raw = req_input(data, names)?;
    let p = parse_path(&raw).map_err(|e| inv(format!("input `{}`: {e}", names[0])))?;
    if p.dn.is_root() {
        return Err(inv(format!("input `{}` names no object", names[0])));
    }
    Ok(p)
}

/// `preferredDomainController`: a host name or address with an optional port.
fn server_input(data: &Element, path: Option<&AdsPath>) -> Result<Option<String>, ProviderError> {
    let given = opt_nonempty(data, DC).map(|s| s.trim().to_string());
    if let Some(s) = &given {
        let ok = s.len() <= 255
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c));
        if !ok {
            return Err(inv(format!(
                "input `preferredDomainController` must be a host name or address (optionally :port), got {s:?}"
            )));
        }
    }
    Ok(given.or_else(|| path.and_then(|p| p.server.clone())))
}

/// Reads `properties`: `property` children with `@name` (or a `name` child), `@mode` and
/// `value` children (or their own text); or, the short form, children named after the
/// attribute holding the value(s) (YAML `properties: { mail: a@b.c }`).
fn properties_input(data: &Element) -> Result<Vec<Modification>, ProviderError> {
    let mut out = Vec::new();
    for props in data.elements().filter(|e| e.name == "properties") {
        for p in props.elements() {
            if p.name == "property" {
                let name = p
                    .attr("name")
                    .map(str::to_string)
                    .or_else(|| p.child("name").map(Element::string_value))
                    .filter(|n| !n.trim().is_empty())
                    .ok_or_else(|| inv("a `properties/property` has no `name`"))?;
                let name = name.trim().to_string();
                check_attr_name(&name)?;
                let mode_text = p
                    .attr("mode")
                    .map(str::to_string)
                    .or_else(|| p.child("mode").map(Element::string_value))
                    .unwrap_or_default();
                let op = ModOp::parse(&mode_text).ok_or_else(|| {
                    inv(format!(
                        "property {name}: mode {mode_text:?} is not add, replace, delete or clear"
                    ))
                })?;
                let values: Vec<String> = if p.elements().any(|c| c.name == "value") {
                    p.elements()
                        .filter(|c| c.name == "value")
                        .map(Element::string_value)
                        .collect()
                } else if p.elements().any(|c| c.name != "name" && c.name != "mode") {
                    return Err(inv(format!(
                        "property {name}: its values go in `value` elements"
                    )));
                } else {
                    let t = p.text();
                    if t.is_empty() {
                        Vec::new()
                    } else {
                        vec![t]
                    }
                };
                out.push(Modification {
                    op,
                    attr: name,
                    values,
                });
            } else {
                let name = p.name.to_string();
                check_attr_name(&name)?;
                let values = if p.elements().any(|c| c.name == "value") {
                    p.elements()
                        .filter(|c| c.name == "value")
                        .map(Element::string_value)
                        .collect()
                } else {
                    vec![p.string_value()]
                };
                // repeated elements (a YAML list) add values to the same attribute
                if let Some(m) = out
                    .iter_mut()
                    .find(|m: &&mut Modification| m.attr.eq_ignore_ascii_case(&name))
                {
                    m.values.extend(values);
                } else {
                    out.push(Modification {
                        op: ModOp::Replace,
                        attr: name,
                        values,
                    });
                }
            }
        }
    }
    Ok(out)
}

fn check_attr_name(name: &str) -> Result<(), ProviderError> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ';');
    if ok {
        Ok(())
    } else {
        Err(inv(format!(
            "{name:?} is not an attribute name (letters, digits and -)"
        )))
    }
}

/// An attribute list: `attributes` as comma-separated text or repeated elements, or
/// `properties/property[@name]` as in Get Properties.
fn attrs_input(data: &Element) -> Result<AttrSelection, ProviderError> {
    let mut names: Vec<String> = Vec::new();
    for e in data.elements().filter(|e| e.name == "attributes") {
        if e.elements().next().is_some() {
            names.extend(e.elements().map(Element::string_value));
        } else {
            names.extend(e.string_value().split(',').map(|s| s.trim().to_string()));
        }
    }
    for props in data.elements().filter(|e| e.name == "properties") {
        for p in props.elements() {
            if p.name == "property" {
                if let Some(n) = p.attr("name").map(str::to_string).or_else(|| {
                    let t = p.string_value();
                    (!t.trim().is_empty()).then_some(t)
                }) {
                    names.push(n.trim().to_string());
                }
            } else {
                names.push(p.name.to_string());
            }
        }
    }
    names.retain(|n| !n.is_empty());
    if names.is_empty() || names.iter().any(|n| n == "*") {
        return Ok(AttrSelection::All);
    }
    for n in &names {
        check_attr_name(n)?;
    }
    Ok(AttrSelection::Only(names))
}

fn flag(data: &Element, names: &[&str]) -> Result<bool, ProviderError> {
    parse_bool(names[0], opt_input(data, names))
}

/// `<properties><property name="mail"><value>…</value></property>…</properties>`.
fn properties_element(entry: &Entry) -> Element {
    let mut props = Element::new("properties");
    for a in &entry.attributes {
        let mut p = Element::new("property");
        p.set_attr("name", a.name.as_str());
        for v in &a.values {
            p.push(text("value", v.as_str()));
        }
        props.push(p);
    }
    props
}

fn attrs_from_element(e: &Element) -> Vec<Attribute> {
    e.elements()
        .filter(|p| p.name == "property")
        .map(|p| {
            Attribute::new(
                p.attr("name").unwrap_or_default(),
                p.elements()
                    .filter(|v| v.name == "value")
                    .map(Element::string_value)
                    .collect(),
            )
        })
        .collect()
}

fn undo_record(op: &str, dn: &Dn) -> Element {
    let mut u = Element::new("undo");
    u.push(text("op", op));
    u.push(text("dn", dn.to_string()));
    u
}

fn dn_child(e: &Element, name: &str) -> Result<Dn, ProviderError> {
    let t = e
        .child(name)
        .map(Element::string_value)
        .ok_or_else(|| ProviderError::permanent(format!("the undo record has no `{name}`")))?;
    Dn::parse(&t).map_err(|e| ProviderError::permanent(format!("undo record `{name}`: {e}")))
}

fn with_outputs(mut ed: Element, outputs: Vec<Element>) -> Element {
    for o in outputs {
        ed.children
            .retain(|c| !matches!(c, provisio_engine::data::Node::Element(x) if x.name == o.name));
        ed.push(o);
    }
    ed
}

fn path_out(dn: &Dn) -> Element {
    text("path", to_path(dn, None))
}

fn ctx_of(call: &Call, server: Option<String>) -> OpContext {
    OpContext::new(call.state.clone(), call.context.idempotency_key(), server)
}

/// One secret input (never logged, journaled or returned in clear).
fn secret_input(name: &str, description: &str) -> InputSpec {
    InputSpec {
        secret: true,
        ..input(name, "string", true, description)
    }
}

fn dc_input() -> InputSpec {
    input(
        "preferredDomainController",
        "string",
        false,
        "The domain controller to use (LDAP backend); the embedded backend checks and ignores it",
    )
}

fn procedure_list() -> Vec<ProcedureSpec> {
    let spec = |name: &str,
                kind: ProcKind,
                undo: UndoKind,
                description: &str,
                mut inputs: Vec<InputSpec>| {
        inputs.push(dc_input());
        ProcedureSpec {
            name: name.to_string(),
            kind,
            undo,
            description: description.to_string(),
            inputs,
        }
    };
    use ProcKind::{Read, Write};
    use UndoKind::{Irreversible, Nothing, Reversible};
    let path = || {
        input(
            "path",
            "string",
            true,
            "The object: LDAP://DN, LDAP://server/DN or a DN",
        )
    };
    let props = || {
        input(
            "properties",
            "map",
            false,
            "properties/property[@name,@mode]/value*, or {attribute: value(s)}",
        )
    };
    vec![
        spec("Create Object", Write, Reversible, "Creates an object. Outputs `path`, `dn`, `samAccountName` (users), `flagSkipAction` (1 when it existed and flagIgnoreAlreadyExistsError was set). Undo deletes it.", vec![
            input("container", "string", true, "The parent: LDAP://DN or a DN"),
            input("class", "string", true, "user, inetOrgPerson, group, contact, organizationalUnit, container, …"),
            input("name", "string", true, "The RDN, e.g. CN=John Smith (escaped as RFC 4514)"),
            props(),
            input_default("flagIgnoreAlreadyExistsError", "bool", "false", "An existing object is success (nothing is changed, no undo)"),
        ]),
        spec("Delete Object", Write, Reversible, "Deletes an object (with its subtree when `recursive`). Output `deleted` (count). Undo recreates them with their attributes and group memberships.", vec![
            path(),
            input_default("recursive", "bool", "false", "Delete the children too"),
        ]),
        spec("Move Object", Write, Reversible, "Moves an object (and its subtree) under another container. Outputs `path`, `dn`. Undo moves it back.", vec![
            path(),
            input("newParent", "string", true, "The new container (alias `container`)"),
        ]),
        spec("Rename Object", Write, Reversible, "Gives an object a new RDN in the same container. Outputs `path`, `dn`. Undo renames it back.", vec![
            path(),
            input("newName", "string", true, "The new RDN, e.g. CN=Jane Smith"),
        ]),
        spec("Get Properties", Read, Nothing, "Reads an object's attributes. Outputs `path`, `dn`, `properties/property[@name]/value*`.", vec![
            path(),
            input("properties", "map", false, "Which: properties/property[@name] (default all)"),
            input("attributes", "string", false, "Which, as a comma-separated list (alternative to properties)"),
        ]),
        spec("Set Properties", Write, Reversible, "Changes attributes, per property mode add / replace / delete / clear, all or none. Output `path`. Undo restores the previous values.", vec![path(), props()]),
        spec("Group Add Member", Write, Reversible, "Adds a member to a group (`member` attribute). Output `added` (0 when it already was one). Undo removes it.", vec![
            input("group", "string", true, "The group's path"),
            input("member", "string", true, "The member's path"),
        ]),
        spec("Group Remove Member", Write, Reversible, "Removes a member from a group. Output `removed` (0 when it was not one). Undo adds it back.", vec![
            input("group", "string", true, "The group's path"),
            input("member", "string", true, "The member's path"),
        ]),
        spec("Group Is Member", Read, Nothing, "Output `isMember` (1/0).", vec![
            input("group", "string", true, "The group's path"),
            input("member", "string", true, "The member's path"),
        ]),
        spec("Group Members", Read, Nothing, "Outputs `members/member` (paths) and `count`.", vec![
            input("group", "string", true, "The group's path"),
        ]),
        spec("Search", Read, Nothing, "Searches. Outputs `entries/entry{path, dn, properties}`, `count`, `cookie` (when more pages follow).", vec![
            input("base", "string", true, "Where the search starts (alias path, container)"),
            input_default("scope", "string", "subtree", "base | onelevel | subtree"),
            input_default("filter", "string", "(objectClass=*)", "An RFC 4515 filter; escape user text with Escape Filter Value"),
            input("attributes", "string", false, "Comma-separated attribute names (default all)"),
            input("pageSize", "int", false, "Entries per page"),
            input("cookie", "string", false, "The cookie of the previous page"),
        ]),
        spec("User Set Password", Write, Irreversible, "Sets a user's password (an administrator's reset). No undo, as in MPS (the embedded backend's rollback restores the previous hash with its state). Honours flagSkipAction.", vec![
            path(),
            secret_input("newPassword", "The new password"),
            input_default("flagSkipAction", "bool", "false", "Do nothing (set by Create Object when the object already existed)"),
        ]),
        spec("User Change Password", Write, Reversible, "Changes a user's password given the old one. Undo sets the previous password back as an administrator's reset (not subject to password history or minimum age; the undo record is sealed).", vec![
            path(),
            secret_input("oldPassword", "The current password"),
            secret_input("newPassword", "The new password"),
        ]),
        spec("Enable User", Write, Reversible, "Clears the ACCOUNTDISABLE bit of userAccountControl (514 → 512). Output `userAccountControl`. Undo restores the previous value.", vec![path()]),
        spec("Disable User", Write, Reversible, "Sets the ACCOUNTDISABLE bit of userAccountControl (512 → 514). Output `userAccountControl`. Undo restores the previous value.", vec![path()]),
        spec("Initialize", Write, Nothing, "Makes sure the base entry exists (the embedded backend creates it; it also does on the first write below it). Output `path`.", vec![]),
        spec("Build Path", Read, Nothing, "Builds a path from a container and a name: `name` (an RDN such as CN=John Smith) or `rdnType` + `value` (escaped here). Outputs `path`, `dn`, `name`.", vec![
            input("container", "string", true, "The parent"),
            input("name", "string", false, "The RDN"),
            input("rdnType", "string", false, "The naming attribute (CN, OU, DC) with `value`"),
            input("value", "string", false, "The RDN value, unescaped"),
        ]),
        spec("Get Parent Path", Read, Nothing, "Outputs `parentPath`, `parentDn`, `name` (the RDN) and `value` (its unescaped value).", vec![path()]),
        spec("Escape Filter Value", Read, Nothing, "Escapes text for an LDAP filter (RFC 4515). Output `escaped`.", vec![
            input("value", "string", true, "The text"),
        ]),
    ]
}

/// What an undo record asks for.
#[derive(Debug)]
enum UndoOp {
    Delete(Dn),
    Recreate(Element),
    ModifyDn {
        dn: Dn,
        rdn: Rdn,
        parent: Dn,
    },
    Restore {
        dn: Dn,
        attrs: Vec<Attribute>,
    },
    Member {
        add: bool,
        group: Dn,
        member: Dn,
    },
    Password {
        dn: Dn,
        old: Option<Password>,
        new: Option<Password>,
    },
}

impl DirectoryProvider {
    async fn execute_call(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let proc = canonical_procedure(&call.context.procedure).ok_or_else(|| {
            inv(format!(
                "the Active Directory provider has no procedure {:?} (it has {})",
                call.context.procedure,
                PROCS.join(", ")
            ))
        })?;
        let d = &call.execute_data;
        let b = self.backend.as_ref();
        match proc {
            "Create Object" => self.create_object(call).await,
            "Delete Object" => self.delete_object(call).await,
            "Move Object" | "Rename Object" => self.modify_dn(call, proc == "Move Object").await,
            "Get Properties" => {
                let p = path_input(d, PATH)?;
                let ctx = ctx_of(call, server_input(d, Some(&p))?);
                let attrs = attrs_input(d)?;
                let e = b.read(&ctx, &p.dn, &attrs).await?.ok_or_else(|| {
                    ProviderError::from(DirError::NoSuchObject {
                        dn: p.dn.to_string(),
                    })
                })?;
                let out = with_outputs(
                    call.execute_data.clone(),
                    vec![
                        path_out(&e.dn),
                        text("dn", e.dn.to_string()),
                        properties_element(&e),
                    ],
                );
                Ok(Outcome {
                    execute_data: out,
                    undo: None,
                })
            }
            "Set Properties" => self.set_properties(call).await,
            "Group Add Member" | "Group Remove Member" => {
                self.group_change(call, proc == "Group Add Member").await
            }
            "Group Is Member" => {
                let g = path_input(d, &["group", "groupPath", "path"])?;
                let m = path_input(d, &["member", "memberPath", "user"])?;
                let ctx = ctx_of(call, server_input(d, Some(&g))?);
                let is = self.is_member(&ctx, &g.dn, &m.dn).await?;
                let out = with_outputs(
                    call.execute_data.clone(),
                    vec![text("isMember", if is { "1" } else { "0" })],
                );
                Ok(Outcome {
                    execute_data: out,
                    undo: None,
                })
            }
            "Group Members" => {
                let g = path_input(d, &["group", "groupPath", "path"])?;
                let ctx = ctx_of(call, server_input(d, Some(&g))?);
                let e = self.group_entry(&ctx, &g.dn).await?;
                let mut members = Element::new("members");
                let list = e.get("member").map(<[String]>::to_vec).unwrap_or_default();
                for m in &list {
                    let dn = Dn::parse(m)
                        .map_err(|e| ProviderError::permanent(format!("{}: member {e}", g.dn)))?;
                    members.push(text("member", to_path(&dn, None)));
                }
                let out = with_outputs(
                    call.execute_data.clone(),
                    vec![members, text("count", list.len().to_string())],
                );
                Ok(Outcome {
                    execute_data: out,
                    undo: None,
                })
            }
            "Search" => self.search(call).await,
            "User Set Password" => {
                let p = path_input(d, PATH)?;
                let ctx = ctx_of(call, server_input(d, Some(&p))?);
                if flag(d, &["flagSkipAction"])? {
                    return Ok(Outcome {
                        execute_data: call.execute_data.clone(),
                        undo: None,
                    });
                }
                let new = Password::new(req_input(d, &["newPassword", "password"])?);
                b.set_password(&ctx, &p.dn, &new).await?;
                Ok(Outcome {
                    execute_data: call.execute_data.clone(),
                    undo: None,
                })
            }
            "User Change Password" => {
                let p = path_input(d, PATH)?;
                let ctx = ctx_of(call, server_input(d, Some(&p))?);
                let old = Password::new(
                    opt_input(d, &["oldPassword"])
                        .ok_or_else(|| inv("input `oldPassword` is required"))?,
                );
                let new = Password::new(req_input(d, &["newPassword", "password"])?);
                b.change_password(&ctx, &p.dn, &old, &new).await?;
                let mut u = undo_record("changePassword", &p.dn);
                if !b.state_backed() {
                    // The LDAP backend changes it back with the clear texts: the engine
                    // seals an undo record holding do-not-log elements.
                    let mut o = text("oldPassword", old.expose());
                    o.set_attr("do-not-log", "1");
                    let mut n = text("newPassword", new.expose());
                    n.set_attr("do-not-log", "1");
                    u.push(o);
                    u.push(n);
                }
                Ok(Outcome {
                    execute_data: call.execute_data.clone(),
                    undo: Some(u),
                })
            }
            "Enable User" | "Disable User" => self.enable(call, proc == "Enable User").await,
            "Initialize" => {
                let ctx = ctx_of(call, server_input(d, None)?);
                b.ensure_base(&ctx).await?;
                let out = with_outputs(call.execute_data.clone(), vec![path_out(b.base_dn())]);
                Ok(Outcome {
                    execute_data: out,
                    undo: None,
                })
            }
            "Build Path" => {
                let c = path_input(d, &["container", "parent", "path"])?;
                server_input(d, Some(&c))?;
                let rdn = match (opt_nonempty(d, &["name"]), opt_nonempty(d, &["rdnType"])) {
                    (Some(n), None) => Rdn::parse(dn::trim_input(&n))
                        .map_err(|e| inv(format!("input `name`: {e}")))?,
                    (None, Some(t)) => {
                        let v = req_input(d, &["value"])?;
                        let r = Rdn::new(t.trim(), v);
                        // check the type through the parser
                        Rdn::parse(&r.to_string())
                            .map_err(|e| inv(format!("input `rdnType`: {e}")))?
                    }
                    _ => {
                        return Err(inv(
                            "give either `name` (e.g. CN=John Smith) or `rdnType` and `value`",
                        ))
                    }
                };
                let dn = c.dn.child(rdn.clone());
                let out = with_outputs(
                    call.execute_data.clone(),
                    vec![
                        text("path", to_path(&dn, c.server.as_deref())),
                        text("dn", dn.to_string()),
                        text("name", rdn.to_string()),
                    ],
                );
                Ok(Outcome {
                    execute_data: out,
                    undo: None,
                })
            }
            "Get Parent Path" => {
                let p = path_input(d, PATH)?;
                server_input(d, Some(&p))?;
                let parent = p.dn.parent().unwrap_or_default();
                let rdn = p.dn.rdn().expect("checked: not the root");
                let out = with_outputs(
                    call.execute_data.clone(),
                    vec![
                        text("parentPath", to_path(&parent, p.server.as_deref())),
                        text("parentDn", parent.to_string()),
                        text("name", rdn.to_string()),
                        text("value", rdn.first().value.as_str()),
                    ],
                );
                Ok(Outcome {
                    execute_data: out,
                    undo: None,
                })
            }
            "Escape Filter Value" => {
                let v = opt_input(d, &["value"]).ok_or_else(|| inv("input `value` is required"))?;
                let out = with_outputs(
                    call.execute_data.clone(),
                    vec![text("escaped", filter::escape_value(&v))],
                );
                Ok(Outcome {
                    execute_data: out,
                    undo: None,
                })
            }
            _ => unreachable!("every canonical procedure is handled"),
        }
    }

    async fn create_object(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let d = &call.execute_data;
        let b = self.backend.as_ref();
        let container = path_input(d, &["container", "parent", "path"])?;
        let ctx = ctx_of(call, server_input(d, Some(&container))?);
        let class = req_input(d, &["class", "objectClass"])?.trim().to_string();
        let name = req_input(d, &["name", "rdn"])?;
        let rdn =
            Rdn::parse(dn::trim_input(&name)).map_err(|e| inv(format!("input `name`: {e}")))?;
        let dn = container.dn.child(rdn);
        let ignore = flag(d, &["flagIgnoreAlreadyExistsError"])?;
        let mods = properties_input(d)?;
        let mut attrs: Vec<Attribute> = vec![Attribute::new("objectClass", vec![class.clone()])];
        for m in mods {
            if matches!(m.op, ModOp::Delete | ModOp::Clear) {
                return Err(inv(format!(
                    "property {}: mode {} makes no sense when creating an object",
                    m.attr,
                    m.op.as_str()
                )));
            }
            if m.attr.eq_ignore_ascii_case("objectClass") {
                attrs[0].values.extend(m.values);
                continue;
            }
            if m.values.is_empty() {
                continue;
            }
            match attrs
                .iter_mut()
                .find(|a| a.name.eq_ignore_ascii_case(&m.attr))
            {
                Some(a) => a.values.extend(m.values),
                None => attrs.push(Attribute::new(m.attr, m.values)),
            }
        }
        if ignore {
            if let Some(e) = b
                .read(
                    &ctx,
                    &dn,
                    &AttrSelection::Only(vec!["sAMAccountName".into()]),
                )
                .await?
            {
                let mut outs = vec![
                    path_out(&dn),
                    text("dn", dn.to_string()),
                    text("flagSkipAction", "1"),
                ];
                if let Some(s) = e.first("sAMAccountName") {
                    outs.push(text("samAccountName", s));
                }
                return Ok(Outcome {
                    execute_data: with_outputs(call.execute_data.clone(), outs),
                    undo: None,
                });
            }
        }
        // sAMAccountName of accounts: explicit (checked and reserved) or derived from the UPN.
        let is_account = ["user", "inetorgperson"].contains(&class.to_ascii_lowercase().as_str());
        let explicit = attrs
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case("sAMAccountName"))
            .and_then(|a| a.values.first().cloned());
        let mut sam_out = None;
        if !dn.is_under(b.base_dn()) {
            return Err(DirError::OutsideBase {
                dn: dn.to_string(),
                base: b.base_dn().to_string(),
            }
            .into());
        }
        if explicit.is_some() || is_account {
            // Keys in one order — container, object, name — so that transactions creating
            // accounts in the same container queue up instead of deadlocking (embedded).
            b.read(
                &ctx,
                &container.dn,
                &AttrSelection::Only(vec!["objectClass".into()]),
            )
            .await?;
        }
        if let Some(s) = explicit {
            sam::reserve(b, &ctx, &s, &dn, true).await?;
            sam_out = Some(s);
        } else if is_account {
            let upn = attrs
                .iter()
                .find(|a| a.name.eq_ignore_ascii_case("userPrincipalName"))
                .and_then(|a| a.values.first().cloned())
                .unwrap_or_else(|| {
                    dn.rdn()
                        .map(|r| r.first().value.clone())
                        .unwrap_or_default()
                });
            let base = sam::derive_base(&upn).map_err(ProviderError::from)?;
            // a duplicate DN must fail as such, not as a name reservation
            if b.read(&ctx, &dn, &AttrSelection::Only(vec!["cn".into()]))
                .await?
                .is_some()
            {
                return Err(DirError::AlreadyExists {
                    dn: dn.to_string(),
                    container: container.dn.to_string(),
                }
                .into());
            }
            let s = sam::reserve(b, &ctx, &base, &dn, false).await?;
            attrs.push(Attribute::new("sAMAccountName", vec![s.clone()]));
            sam_out = Some(s);
        }
        match b.add(&ctx, &dn, &attrs).await {
            Ok(()) => {}
            Err(DirError::AlreadyExists { .. }) if ignore => {
                let outs = vec![
                    path_out(&dn),
                    text("dn", dn.to_string()),
                    text("flagSkipAction", "1"),
                ];
                return Ok(Outcome {
                    execute_data: with_outputs(call.execute_data.clone(), outs),
                    undo: None,
                });
            }
            Err(e) => return Err(e.into()),
        }
        let mut outs = vec![
            path_out(&dn),
            text("dn", dn.to_string()),
            text("flagSkipAction", "0"),
        ];
        if let Some(s) = sam_out {
            outs.push(text("samAccountName", s));
        }
        Ok(Outcome {
            execute_data: with_outputs(call.execute_data.clone(), outs),
            undo: Some(undo_record("delete", &dn)),
        })
    }

    async fn delete_object(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let d = &call.execute_data;
        let b = self.backend.as_ref();
        let p = path_input(d, PATH)?;
        let ctx = ctx_of(call, server_input(d, Some(&p))?);
        let recursive = flag(d, &["recursive", "flagRecursive"])?;
        let scope = if recursive {
            Scope::Subtree
        } else {
            Scope::Base
        };
        let page = b
            .search(
                &ctx,
                &SearchRequest {
                    base: p.dn.clone(),
                    scope,
                    filter: Filter::Present("objectClass".into()),
                    attrs: AttrSelection::All,
                    page_size: None,
                    cookie: None,
                },
            )
            .await?;
        let mut entries = page.entries;
        if entries.is_empty() {
            return Err(DirError::NoSuchObject {
                dn: p.dn.to_string(),
            }
            .into());
        }
        // parents first in the record; deleted deepest first
        entries.sort_by_key(|e| e.dn.rdns.len());
        let mut saved = Element::new("entries");
        for e in &entries {
            let mut x = Element::new("entry");
            x.set_attr("dn", e.dn.to_string());
            x.push(properties_element(e));
            saved.push(x);
        }
        for e in entries.iter().rev() {
            b.delete(&ctx, &e.dn).await?;
        }
        let mut u = undo_record("recreate", &p.dn);
        u.push(saved);
        let out = with_outputs(
            call.execute_data.clone(),
            vec![text("deleted", entries.len().to_string())],
        );
        Ok(Outcome {
            execute_data: out,
            undo: Some(u),
        })
    }

    async fn modify_dn(&self, call: &Call, is_move: bool) -> Result<Outcome, ProviderError> {
        let d = &call.execute_data;
        let b = self.backend.as_ref();
        let p = path_input(d, PATH)?;
        let ctx = ctx_of(call, server_input(d, Some(&p))?);
        let old_rdn = p.dn.rdn().expect("not the root").clone();
        let old_parent = p.dn.parent().unwrap_or_default();
        let (rdn, parent) = if is_move {
            let np = path_input(
                d,
                &["newParent", "container", "destination", "newContainer"],
            )?;
            (old_rdn.clone(), Some(np.dn))
        } else {
            let n = req_input(d, &["newName", "name"])?;
            (
                Rdn::parse(dn::trim_input(&n)).map_err(|e| inv(format!("input `newName`: {e}")))?,
                None,
            )
        };
        let new_dn = b.modify_dn(&ctx, &p.dn, &rdn, parent.as_ref()).await?;
        let mut u = undo_record("modifyDn", &new_dn);
        u.push(text("rdn", old_rdn.to_string()));
        u.push(text("parent", old_parent.to_string()));
        let out = with_outputs(
            call.execute_data.clone(),
            vec![path_out(&new_dn), text("dn", new_dn.to_string())],
        );
        Ok(Outcome {
            execute_data: out,
            undo: Some(u),
        })
    }

    async fn set_properties(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let d = &call.execute_data;
        let b = self.backend.as_ref();
        let p = path_input(d, PATH)?;
        let ctx = ctx_of(call, server_input(d, Some(&p))?);
        let mods = properties_input(d)?;
        if mods.is_empty() {
            return Err(inv("input `properties` lists no property to set"));
        }
        let names: Vec<String> = mods.iter().map(|m| m.attr.clone()).collect();
        let before = b
            .read(&ctx, &p.dn, &AttrSelection::Only(names.clone()))
            .await?
            .ok_or_else(|| {
                ProviderError::from(DirError::NoSuchObject {
                    dn: p.dn.to_string(),
                })
            })?;
        b.modify(&ctx, &p.dn, &mods).await?;
        let mut u = undo_record("restore", &p.dn);
        let mut props = Element::new("properties");
        let mut seen: Vec<String> = Vec::new();
        for n in names {
            if seen.iter().any(|s| s.eq_ignore_ascii_case(&n)) {
                continue;
            }
            let mut x = Element::new("property");
            x.set_attr("name", n.as_str());
            for v in before.get(&n).unwrap_or_default() {
                x.push(text("value", v.as_str()));
            }
            props.push(x);
            seen.push(n);
        }
        u.push(props);
        let out = with_outputs(call.execute_data.clone(), vec![path_out(&p.dn)]);
        Ok(Outcome {
            execute_data: out,
            undo: Some(u),
        })
    }

    async fn group_entry(&self, ctx: &OpContext, g: &Dn) -> Result<Entry, ProviderError> {
        let e = self
            .backend
            .read(
                ctx,
                g,
                &AttrSelection::Only(vec!["objectClass".into(), "member".into()]),
            )
            .await?
            .ok_or_else(|| ProviderError::from(DirError::NoSuchObject { dn: g.to_string() }))?;
        if !e.has_class("group") && !e.has_class("groupOfNames") {
            return Err(DirError::ObjectClassViolation {
                dn: g.to_string(),
                message: "it is not a group".into(),
            }
            .into());
        }
        Ok(e)
    }

    async fn is_member(&self, ctx: &OpContext, g: &Dn, m: &Dn) -> Result<bool, ProviderError> {
        let e = self.group_entry(ctx, g).await?;
        Ok(e.get("member")
            .unwrap_or_default()
            .iter()
            .any(|v| Dn::parse(v).is_ok_and(|x| x == *m)))
    }

    async fn group_change(&self, call: &Call, add: bool) -> Result<Outcome, ProviderError> {
        let d = &call.execute_data;
        let g = path_input(d, &["group", "groupPath", "path"])?;
        let m = path_input(d, &["member", "memberPath", "user"])?;
        let ctx = ctx_of(call, server_input(d, Some(&g))?);
        let is = self.is_member(&ctx, &g.dn, &m.dn).await?;
        let key = if add { "added" } else { "removed" };
        if is == add {
            let out = with_outputs(call.execute_data.clone(), vec![text(key, "0")]);
            return Ok(Outcome {
                execute_data: out,
                undo: None,
            });
        }
        let op = if add { ModOp::Add } else { ModOp::Delete };
        self.backend
            .modify(
                &ctx,
                &g.dn,
                &[Modification {
                    op,
                    attr: "member".into(),
                    values: vec![m.dn.to_string()],
                }],
            )
            .await?;
        let mut u = undo_record(if add { "removeMember" } else { "addMember" }, &g.dn);
        u.push(text("member", m.dn.to_string()));
        let out = with_outputs(call.execute_data.clone(), vec![text(key, "1")]);
        Ok(Outcome {
            execute_data: out,
            undo: Some(u),
        })
    }

    async fn search(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let d = &call.execute_data;
        let base = path_input(d, &["base", "path", "container", "searchRoot"])?;
        let ctx = ctx_of(call, server_input(d, Some(&base))?);
        let scope_text = opt_input(d, &["scope"]).unwrap_or_default();
        let scope = Scope::parse(&scope_text).ok_or_else(|| {
            inv(format!(
                "input `scope` must be base, onelevel or subtree, got {scope_text:?}"
            ))
        })?;
        let filter_text = opt_nonempty(d, &["filter"]).unwrap_or_else(|| "(objectClass=*)".into());
        let filter =
            Filter::parse(&filter_text).map_err(|e| inv(format!("input `filter`: {e}")))?;
        let attrs = attrs_input(d)?;
        let page_size =
            match opt_nonempty(d, &["pageSize"]) {
                None => None,
                Some(t) => Some(t.trim().parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(
                    || {
                        inv(format!(
                            "input `pageSize` must be a positive number, got {t:?}"
                        ))
                    },
                )?),
            };
        let cookie = opt_nonempty(d, &["cookie"]).map(|c| c.trim().to_string());
        let page = self
            .backend
            .search(
                &ctx,
                &SearchRequest {
                    base: base.dn,
                    scope,
                    filter,
                    attrs,
                    page_size,
                    cookie,
                },
            )
            .await?;
        let mut entries = Element::new("entries");
        for e in &page.entries {
            let mut x = Element::new("entry");
            x.push(path_out(&e.dn));
            x.push(text("dn", e.dn.to_string()));
            x.push(properties_element(e));
            entries.push(x);
        }
        let mut outs = vec![entries, text("count", page.entries.len().to_string())];
        outs.push(text("cookie", page.cookie.unwrap_or_default()));
        Ok(Outcome {
            execute_data: with_outputs(call.execute_data.clone(), outs),
            undo: None,
        })
    }

    async fn enable(&self, call: &Call, enable: bool) -> Result<Outcome, ProviderError> {
        let d = &call.execute_data;
        let p = path_input(d, PATH)?;
        let ctx = ctx_of(call, server_input(d, Some(&p))?);
        let e = self
            .backend
            .read(
                &ctx,
                &p.dn,
                &AttrSelection::Only(vec!["objectClass".into(), "userAccountControl".into()]),
            )
            .await?
            .ok_or_else(|| {
                ProviderError::from(DirError::NoSuchObject {
                    dn: p.dn.to_string(),
                })
            })?;
        if !e.has_class("user") {
            return Err(DirError::ObjectClassViolation {
                dn: p.dn.to_string(),
                message: "only a user can be enabled or disabled".into(),
            }
            .into());
        }
        let before = e.first("userAccountControl").map(str::to_string);
        let cur: i64 = before
            .as_deref()
            .map(str::trim)
            .unwrap_or("512")
            .parse()
            .map_err(|_| {
                ProviderError::permanent(format!(
                    "{}: userAccountControl {before:?} is not a number",
                    p.dn
                ))
            })?;
        let next = if enable {
            cur & !schema::UAC_DISABLED_BIT
        } else {
            cur | schema::UAC_DISABLED_BIT
        };
        if next == cur && before.is_some() {
            let out = with_outputs(
                call.execute_data.clone(),
                vec![text("userAccountControl", cur.to_string())],
            );
            return Ok(Outcome {
                execute_data: out,
                undo: None,
            });
        }
        self.backend
            .modify(
                &ctx,
                &p.dn,
                &[Modification {
                    op: ModOp::Replace,
                    attr: "userAccountControl".into(),
                    values: vec![next.to_string()],
                }],
            )
            .await?;
        let mut u = undo_record("restore", &p.dn);
        let mut props = Element::new("properties");
        let mut x = Element::new("property");
        x.set_attr("name", "userAccountControl");
        if let Some(b) = before {
            x.push(text("value", b));
        }
        props.push(x);
        u.push(props);
        let out = with_outputs(
            call.execute_data.clone(),
            vec![text("userAccountControl", next.to_string())],
        );
        Ok(Outcome {
            execute_data: out,
            undo: Some(u),
        })
    }

    fn parse_undo(undo: &Element) -> Result<UndoOp, ProviderError> {
        let op = undo
            .child("op")
            .map(Element::string_value)
            .unwrap_or_default();
        let dn = dn_child(undo, "dn")?;
        Ok(match op.as_str() {
            "delete" => UndoOp::Delete(dn),
            "recreate" => UndoOp::Recreate(
                undo.child("entries")
                    .cloned()
                    .unwrap_or_else(|| Element::new("entries")),
            ),
            "modifyDn" => UndoOp::ModifyDn {
                dn,
                rdn: Rdn::parse(
                    &undo
                        .child("rdn")
                        .map(Element::string_value)
                        .unwrap_or_default(),
                )
                .map_err(|e| ProviderError::permanent(format!("undo record `rdn`: {e}")))?,
                parent: dn_child(undo, "parent")?,
            },
            "restore" => UndoOp::Restore {
                dn,
                attrs: undo
                    .child("properties")
                    .map(attrs_from_element)
                    .unwrap_or_default(),
            },
            "removeMember" | "addMember" => UndoOp::Member {
                add: op == "addMember",
                group: dn,
                member: dn_child(undo, "member")?,
            },
            "changePassword" => UndoOp::Password {
                dn,
                old: undo
                    .child("oldPassword")
                    .map(|e| Password::new(e.string_value())),
                new: undo
                    .child("newPassword")
                    .map(|e| Password::new(e.string_value())),
            },
            other => {
                return Err(ProviderError::permanent(format!(
                    "unknown undo operation {other:?}"
                )))
            }
        })
    }

    async fn undo_call(&self, done: &Done) -> Result<(), ProviderError> {
        let op = Self::parse_undo(&done.undo)?;
        if self.backend.state_backed() {
            // The engine restores every provider-state key the step wrote, right after
            // this: that is the whole undo.
            return Ok(());
        }
        let b = self.backend.as_ref();
        let ctx = OpContext::new(done.state.clone(), done.context.idempotency_key(), None);
        match op {
            UndoOp::Delete(dn) => match b.delete(&ctx, &dn).await {
                Ok(()) | Err(DirError::NoSuchObject { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            },
            UndoOp::Recreate(entries) => {
                let mut memberships: Vec<(Dn, Dn)> = Vec::new();
                for x in entries.elements().filter(|e| e.name == "entry") {
                    let dn = Dn::parse(x.attr("dn").unwrap_or_default())
                        .map_err(|e| ProviderError::permanent(format!("undo record entry: {e}")))?;
                    let mut attrs = x
                        .child("properties")
                        .map(attrs_from_element)
                        .unwrap_or_default();
                    if let Some(i) = attrs
                        .iter()
                        .position(|a| a.name.eq_ignore_ascii_case("memberOf"))
                    {
                        for g in attrs.remove(i).values {
                            if let Ok(g) = Dn::parse(&g) {
                                memberships.push((g, dn.clone()));
                            }
                        }
                    }
                    attrs.retain(|a| !schema::computed(&a.name));
                    match b.add(&ctx, &dn, &attrs).await {
                        Ok(()) | Err(DirError::AlreadyExists { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                for (g, m) in memberships {
                    let add = Modification {
                        op: ModOp::Add,
                        attr: "member".into(),
                        values: vec![m.to_string()],
                    };
                    match b.modify(&ctx, &g, &[add]).await {
                        Ok(())
                        | Err(DirError::ConstraintViolation { .. })
                        | Err(DirError::NoSuchObject { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            }
            UndoOp::ModifyDn { dn, rdn, parent } => {
                let back = parent.child(rdn.clone());
                if b.read(
                    &ctx,
                    &back,
                    &AttrSelection::Only(vec!["objectClass".into()]),
                )
                .await?
                .is_some()
                    && b.read(&ctx, &dn, &AttrSelection::Only(vec!["objectClass".into()]))
                        .await?
                        .is_none()
                {
                    return Ok(());
                }
                let same_parent = dn.parent().is_some_and(|p| p == parent);
                b.modify_dn(&ctx, &dn, &rdn, (!same_parent).then_some(&parent))
                    .await?;
                Ok(())
            }
            UndoOp::Restore { dn, attrs } => {
                let mods: Vec<Modification> = attrs
                    .into_iter()
                    .map(|a| Modification {
                        op: ModOp::Replace,
                        attr: a.name,
                        values: a.values,
                    })
                    .collect();
                Ok(b.modify(&ctx, &dn, &mods).await?)
            }
            UndoOp::Member { add, group, member } => {
                let op = if add { ModOp::Add } else { ModOp::Delete };
                match b
                    .modify(
                        &ctx,
                        &group,
                        &[Modification {
                            op,
                            attr: "member".into(),
                            values: vec![member.to_string()],
                        }],
                    )
                    .await
                {
                    // already as wanted
                    Ok(()) | Err(DirError::ConstraintViolation { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            UndoOp::Password { dn, old, new } => {
                let (Some(old), Some(_new)) = (old, new) else {
                    return Err(ProviderError::permanent(format!(
                        "{dn}: the previous password was not kept (no seal key), so the change cannot be undone"
                    )));
                };
                // An administrator's reset to the previous password: a change back would
                // be refused by AD's password history and minimum age, and a reset is
                // idempotent (a repeated undo sets the same password again).
                b.set_password(&ctx, &dn, &old).await.map_err(Into::into)
            }
        }
    }

    /// Settles an in-doubt call (see [`Provider::recover`]).
    async fn recover_call(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        if self.backend.state_backed() {
            // A call whose result never reached the journal left no state writes: the
            // engine keeps them only with the step's `done` record.
            return Ok(None);
        }
        let proc = canonical_procedure(&call.context.procedure).unwrap_or("");
        let d = &call.execute_data;
        let b = self.backend.as_ref();
        let cannot = |why: &str| {
            Err(ProviderError::permanent(format!(
                "cannot tell whether {proc} ({}) was applied: {why}",
                call.context.idempotency_key()
            )))
        };
        let exists = |ctx: OpContext, dn: Dn| async move {
            Ok::<bool, ProviderError>(
                b.read(&ctx, &dn, &AttrSelection::Only(vec!["objectClass".into()]))
                    .await?
                    .is_some(),
            )
        };
        match proc {
            "Create Object" => {
                let c = path_input(d, &["container", "parent", "path"])?;
                let rdn =
                    Rdn::parse(dn::trim_input(&req_input(d, &["name", "rdn"])?)).map_err(inv)?;
                let dn = c.dn.child(rdn);
                let ctx = ctx_of(call, server_input(d, Some(&c))?);
                Ok(exists(ctx, dn.clone())
                    .await?
                    .then(|| undo_record("delete", &dn)))
            }
            "Move Object" | "Rename Object" => {
                let p = path_input(d, PATH)?;
                let ctx = ctx_of(call, server_input(d, Some(&p))?);
                let old_rdn = p.dn.rdn().expect("not the root").clone();
                let old_parent = p.dn.parent().unwrap_or_default();
                let new_dn = if proc == "Move Object" {
                    path_input(
                        d,
                        &["newParent", "container", "destination", "newContainer"],
                    )?
                    .dn
                    .child(old_rdn.clone())
                } else {
                    old_parent.child(
                        Rdn::parse(dn::trim_input(&req_input(d, &["newName", "name"])?))
                            .map_err(inv)?,
                    )
                };
                let (old_there, new_there) = (
                    exists(ctx.clone(), p.dn.clone()).await?,
                    exists(ctx, new_dn.clone()).await?,
                );
                match (old_there, new_there) {
                    (true, false) => Ok(None),
                    (false, true) => {
                        let mut u = undo_record("modifyDn", &new_dn);
                        u.push(text("rdn", old_rdn.to_string()));
                        u.push(text("parent", old_parent.to_string()));
                        Ok(Some(u))
                    }
                    _ => cannot("the object is at both or neither of its old and new names"),
                }
            }
            "Group Add Member" | "Group Remove Member" => {
                let g = path_input(d, &["group", "groupPath", "path"])?;
                let m = path_input(d, &["member", "memberPath", "user"])?;
                let ctx = ctx_of(call, server_input(d, Some(&g))?);
                let add = proc == "Group Add Member";
                if self.is_member(&ctx, &g.dn, &m.dn).await? == add {
                    let mut u = undo_record(if add { "removeMember" } else { "addMember" }, &g.dn);
                    u.push(text("member", m.dn.to_string()));
                    Ok(Some(u))
                } else {
                    Ok(None)
                }
            }
            // Setting a password again is harmless: report "not applied" so it is retried.
            "User Set Password" => Ok(None),
            _ if PROCS.contains(&proc)
                && matches!(
                    proc,
                    "Get Properties"
                        | "Group Is Member"
                        | "Group Members"
                        | "Search"
                        | "Build Path"
                        | "Get Parent Path"
                        | "Escape Filter Value"
                        | "Initialize"
                ) =>
            {
                Ok(None)
            }
            _ => cannot("the directory does not show what the call replaced"),
        }
    }

    async fn preview_call(&self, call: &Call) -> Result<Preview, ProviderError> {
        let proc = canonical_procedure(&call.context.procedure)
            .ok_or_else(|| inv(format!("no procedure {:?}", call.context.procedure)))?;
        let d = &call.execute_data;
        let b = self.backend.as_ref();
        let read = |ctx: OpContext, dn: Dn| async move {
            match b.read(&ctx, &dn, &AttrSelection::All).await {
                Ok(e) => Ok(e),
                Err(DirError::State { .. }) => Ok(None),
                Err(e) => Err(ProviderError::from(e)),
            }
        };
        Ok(match proc {
            "Create Object" => {
                let c = path_input(d, &["container", "parent", "path"])?;
                let ctx = ctx_of(call, server_input(d, Some(&c))?);
                let rdn = Rdn::parse(dn::trim_input(&req_input(d, &["name", "rdn"])?))
                    .map_err(|e| inv(format!("input `name`: {e}")))?;
                let dn = c.dn.child(rdn);
                let class = req_input(d, &["class", "objectClass"])?;
                if !dn.is_under(b.base_dn()) {
                    Preview::Fail(
                        DirError::OutsideBase {
                            dn: dn.to_string(),
                            base: b.base_dn().to_string(),
                        }
                        .to_string(),
                    )
                } else if read(ctx.clone(), dn.clone()).await?.is_some() {
                    if flag(d, &["flagIgnoreAlreadyExistsError"])? {
                        Preview::NoChange(format!("{dn} already exists"))
                    } else {
                        Preview::Fail(
                            DirError::AlreadyExists {
                                dn: dn.to_string(),
                                container: c.dn.to_string(),
                            }
                            .to_string(),
                        )
                    }
                } else if c.dn != *b.base_dn() && read(ctx, c.dn.clone()).await?.is_none() {
                    Preview::Unknown
                } else {
                    Preview::Change(format!("create {class} {dn}"))
                }
            }
            "Delete Object"
            | "Set Properties"
            | "Enable User"
            | "Disable User"
            | "Move Object"
            | "Rename Object"
            | "User Set Password"
            | "User Change Password" => {
                let p = path_input(d, PATH)?;
                let ctx = ctx_of(call, server_input(d, Some(&p))?);
                match read(ctx, p.dn.clone()).await? {
                    None => Preview::Unknown,
                    Some(_) => Preview::Update(format!("{} {}", proc.to_lowercase(), p.dn)),
                }
            }
            "Group Add Member" | "Group Remove Member" => {
                let g = path_input(d, &["group", "groupPath", "path"])?;
                let m = path_input(d, &["member", "memberPath", "user"])?;
                let ctx = ctx_of(call, server_input(d, Some(&g))?);
                match read(ctx, g.dn.clone()).await? {
                    None => Preview::Unknown,
                    Some(e) => {
                        let is = e
                            .get("member")
                            .unwrap_or_default()
                            .iter()
                            .any(|v| Dn::parse(v).is_ok_and(|x| x == m.dn));
                        let add = proc == "Group Add Member";
                        if is == add {
                            Preview::NoChange(format!(
                                "{} {} a member of {}",
                                m.dn,
                                if add { "is already" } else { "is not" },
                                g.dn
                            ))
                        } else if add {
                            Preview::Change(format!("add {} to {}", m.dn, g.dn))
                        } else {
                            Preview::Update(format!("remove {} from {}", m.dn, g.dn))
                        }
                    }
                }
            }
            "Initialize" => Preview::Unknown,
            _ => Preview::NoChange(format!("{proc} only reads")),
        })
    }
}

#[async_trait]
impl Provider for DirectoryProvider {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

    /// The embedded backend's directory is provider state: nothing else changes, so the
    /// engine need not sync each call's intent (see `DirectoryBackend::state_backed`).
    fn effects_in_state_only(&self) -> bool {
        self.backend.state_backed()
    }

    fn procedures(&self) -> Vec<ProcedureSpec> {
        procedure_list()
    }

    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        let fenced = self.fences.hold(&call.context.idempotency_key()).await;
        let provider = DirectoryProvider {
            backend: Arc::clone(&self.backend),
            fences: self.fences.clone(),
        };
        // A task of its own: a call the engine stopped waiting for still finishes (or
        // fails) before `recover` answers for its key.
        let task = tokio::spawn(async move {
            let _fenced = fenced;
            provider.execute_call(&call).await
        });
        match task.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(ProviderError::in_doubt(format!(
                "the directory provider's task did not finish: {e}"
            ))),
        }
    }

    async fn undo(&self, done: Done) -> Result<(), ProviderError> {
        self.undo_call(&done).await
    }

    async fn recover(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        let _fenced = self.fences.hold(&call.context.idempotency_key()).await;
        self.recover_call(call).await
    }

    async fn preview(&self, call: &Call) -> Result<Preview, ProviderError> {
        self.preview_call(call).await
    }
}
