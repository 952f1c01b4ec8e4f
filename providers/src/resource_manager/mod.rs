//! The Exchange 2007 Resource Manager (namespace `Exchange 2007 Resource Manager`, provider
//! id `ExchangeResourceManager`): bookkeeping of mailbox-store capacity in the block model.
//! Stores are registered with a size in MB; an organization gets a share (MB) of one or
//! more stores; each mailbox is charged, in KB, against one of the organization's shares.
//! It moves no data and needs no server.
//!
//! Every record lives in provider state, so allocations commit and roll back with the
//! transaction and two transactions never over-commit a store (per-key locks held to the
//! end of the transaction). No call returns an undo record: the engine restores the keys a
//! step wrote. Keys (names escaped: `%` and `/` as `%25` and `%2F`; store ids lower-cased):
//!
//! - `store/<server>/<store>`: size, shared or dedicated, the MB each organization holds;
//! - `org/<organization>`: its shares (MB granted, KB charged) by store;
//! - `mbx/<organization>/<mailbox>`: the store a mailbox is charged to and its KB.
//!
//! `DeAllocateOrganization` gives an organization's shares back (once it has no mailbox).
//!
//! Contention: a mailbox allocation takes only its organization's key and its own key, so
//! mailboxes of different organizations never wait for each other; a store key is taken
//! only when an organization's space changes (`AllocateOrganization`, `autoAllocate`,
//! `ModifyExchangeResources`), and choosing a store to grow on reads (locks) every store.
//! Reference: `docs/providers/resource-manager.md`.

mod rank;

use crate::bookkeeping::{
    check_name, esc, field, flag, one_of, parse_size, preview_of, remove_children, req_field, spec,
    text, Records, SIZE_CHECK,
};
use crate::common::input;
use async_trait::async_trait;
use provisio_engine::codes::{E_ALREADY_EXISTS, E_NOT_FOUND, E_NO_RANKED_RESOURCES};
use provisio_engine::data::Element;
use provisio_engine::model::{InputSpec, ProcKind};
use provisio_engine::provider::{
    Call, Done, Outcome, Preview, ProcedureSpec, Provider, ProviderError,
};
use rank::{pick, split_level, split_tight, Algorithm, AutoAllocate};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The provider id (`providerSource`).
pub const PROVIDER: &str = "ExchangeResourceManager";
/// The namespace its procedures are published under.
pub const NAMESPACE: &str = "Exchange 2007 Resource Manager";

/// Longest organization or mailbox name (an LDAP path fits).
const MAX_NAME: usize = 1024;
/// Longest server or store name.
const MAX_STORE_NAME: usize = 253;

/// A registered mail store.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoreRec {
    /// Server name as first registered.
    server: String,
    /// Store (database) name as first registered.
    name: String,
    /// Capacity.
    megabytes: u64,
    /// Shared by many organizations, or dedicated to one.
    shared: bool,
    /// MB granted to each organization.
    #[serde(default)]
    reserved: BTreeMap<String, u64>,
}

impl StoreRec {
    fn reserved_mb(&self) -> u64 {
        self.reserved.values().sum()
    }

    fn free_mb(&self) -> u64 {
        self.megabytes.saturating_sub(self.reserved_mb())
    }

    /// Whether `org` may get space here: a shared store, or a dedicated one no other
    /// organization holds space on.
    fn open_to(&self, org: &str) -> bool {
        self.shared || self.reserved.keys().all(|o| o == org)
    }

    fn label(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }
}

/// An organization's space on one store.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Share {
    server: String,
    name: String,
    /// MB granted.
    megabytes: u64,
    /// KB charged by its mailboxes.
    used_kb: u64,
}

impl Share {
    fn free_kb(&self) -> u64 {
        (self.megabytes * 1024).saturating_sub(self.used_kb)
    }
}

/// An organization: its shares by store id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct OrgRec {
    shares: BTreeMap<String, Share>,
}

/// A mailbox's charge.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MailboxRec {
    /// Store id of the share it is charged to.
    store: String,
    kilobytes: u64,
}

/// A store id: `<server>/<store>`, escaped and lower-cased (names compare
/// case-insensitively, as Exchange's do).
fn store_id(server: &str, name: &str) -> String {
    format!(
        "{}/{}",
        esc(&server.to_lowercase()),
        esc(&name.to_lowercase())
    )
}

fn store_key(id: &str) -> String {
    format!("store/{id}")
}

fn org_key(org: &str) -> String {
    format!("org/{}", esc(org))
}

fn mailbox_key(org: &str, mailbox: &str) -> String {
    format!("mbx/{}/{}", esc(org), esc(mailbox))
}

/// A server name: letters, digits, `.`, `-`, `_`, starting with a letter or digit.
fn server_name(at: &str, v: &str) -> Result<String, ProviderError> {
    let v = check_name(at, v, MAX_STORE_NAME)?;
    let ok = v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok {
        return Err(ProviderError::invalid(format!(
            "input `{at}` must be a host name (letters, digits, `.`, `-`, `_`), got {v:?}"
        )));
    }
    Ok(v)
}

/// A store name: letters, digits, spaces and `.-_()`.
fn store_name(at: &str, v: &str) -> Result<String, ProviderError> {
    let v = check_name(at, v, MAX_STORE_NAME)?;
    if !v
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '.' | '-' | '_' | '(' | ')'))
    {
        return Err(ProviderError::invalid(format!(
            "input `{at}` may hold letters, digits, spaces and `.-_()` only, got {v:?}"
        )));
    }
    Ok(v)
}

/// For another provider of this crate (the mail provider): the registered store
/// `server`/`name` as first spelled (names compare case-insensitively), or `None`. `state` is
/// a view of the resource manager's state ([`provisio_engine::ProviderState::read_of`]).
pub(crate) async fn registered_store(
    state: &provisio_engine::ProviderState,
    server: &str,
    name: &str,
) -> Result<Option<(String, String)>, ProviderError> {
    let r = Records::new(state);
    Ok(r.get::<StoreRec>(&store_key(&store_id(server, name)))
        .await?
        .map(|s| (s.server, s.name)))
}

/// Where a mailbox goes: `mailStore/@algorithm`, `mailStore/@autoAllocate`, and an optional
/// pinned `serverName` + `mailStoreName` (inside `mailStore` or beside it).
struct Placement {
    algorithm: Algorithm,
    auto: Option<AutoAllocate>,
    pin: Option<(String, String)>,
}

fn placement(ed: &Element, default: Algorithm) -> Result<Placement, ProviderError> {
    let ms = ed.child("mailStore");
    let get = |name: &str| ms.and_then(|m| field(m, name)).or_else(|| field(ed, name));
    let algorithm = match get("algorithm") {
        None => default,
        Some(a) => match one_of("mailStore/@algorithm", &a, &["tightPack", "level"])? {
            "tightPack" => Algorithm::TightPack,
            _ => Algorithm::Level,
        },
    };
    let auto = match get("autoAllocate") {
        None => None,
        Some(a) => Some(
            match one_of(
                "mailStore/@autoAllocate",
                &a,
                &["level", "tightPack", "minStoreCount"],
            )? {
                "level" => AutoAllocate::Level,
                "tightPack" => AutoAllocate::TightPack,
                _ => AutoAllocate::MinStoreCount,
            },
        ),
    };
    let pin =
        match (get("serverName"), get("mailStoreName")) {
            (None, None) => None,
            (Some(s), Some(n)) => Some((
                server_name("serverName", &s)?,
                store_name("mailStoreName", &n)?,
            )),
            (Some(_), None) => return Err(ProviderError::invalid(
                "input `mailStoreName` is required with `serverName` (a store is pinned by both)",
            )),
            (None, Some(_)) => return Err(ProviderError::invalid(
                "input `serverName` is required with `mailStoreName` (a store is pinned by both)",
            )),
        };
    Ok(Placement {
        algorithm,
        auto,
        pin,
    })
}

fn not_found_store(server: &str, name: &str) -> ProviderError {
    ProviderError::Permanent {
        code: E_NOT_FOUND,
        message: format!(
            "mail store {server}/{name} does not exist (AddExchangeResources registers it)"
        ),
    }
}

fn no_room(message: String) -> ProviderError {
    ProviderError::Permanent {
        code: E_NO_RANKED_RESOURCES,
        message: format!("E_BLOCKMODEL_NO_RANKED_RESOURCES_FOUND: {message}"),
    }
}

/// MB needed on top of `free_kb` to hold `kb`.
fn growth_mb(kb: u64, free_kb: u64) -> u64 {
    kb.saturating_sub(free_kb).div_ceil(1024)
}

/// The mail stores of a `mailStores/mailStore` list, in input order.
fn store_list(ed: &Element) -> Result<Vec<&Element>, ProviderError> {
    let list: Vec<&Element> = ed
        .child("mailStores")
        .map(|l| l.elements().filter(|e| e.name == "mailStore").collect())
        .unwrap_or_default();
    if list.is_empty() {
        return Err(ProviderError::invalid(
            "input `mailStores` holds no `mailStore` (each: serverName, mailStoreName, megabytes, shared)",
        ));
    }
    Ok(list)
}

/// The Exchange 2007 Resource Manager provider. Stateless in memory: everything it knows is
/// in provider state.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourceManagerProvider;

impl ResourceManagerProvider {
    /// The provider.
    pub fn new() -> ResourceManagerProvider {
        ResourceManagerProvider
    }

    /// Runs one procedure against `r`; returns the executeData to hand back and a sentence
    /// saying what it did (a preview shows it).
    async fn run(&self, call: &Call, r: &Records<'_>) -> Result<(Element, String), ProviderError> {
        let ed = &call.execute_data;
        match call.context.procedure.as_str() {
            "AddExchangeResources" => add_resources(ed, r).await,
            "ModifyExchangeResources" => modify_resources(ed, r).await,
            "AllocateOrganization" => allocate_organization(ed, r).await,
            "AllocateMailbox" => allocate_mailbox(ed, r).await,
            "ReAllocateMailbox" => reallocate_mailbox(ed, r).await,
            "DeAllocateMailbox" => deallocate_mailbox(ed, r).await,
            "DeAllocateOrganization" => deallocate_organization(ed, r).await,
            "QueryAllStores" => query_all_stores(ed, r).await,
            "QueryOrganizationsByMailstore" => query_organizations(ed, r).await,
            other => Err(ProviderError::Unsupported(format!(
                "{NAMESPACE} has no procedure `{other}`"
            ))),
        }
    }
}

async fn add_resources(ed: &Element, r: &Records<'_>) -> Result<(Element, String), ProviderError> {
    let mut stores = Vec::new();
    for (i, e) in store_list(ed)?.into_iter().enumerate() {
        let at = |f: &str| format!("mailStores/mailStore[{}]/{f}", i + 1);
        let server = server_name(
            &at("serverName"),
            &req_field(e, "serverName", &at("serverName"))?,
        )?;
        let name = store_name(
            &at("mailStoreName"),
            &req_field(e, "mailStoreName", &at("mailStoreName"))?,
        )?;
        let megabytes = parse_size(
            &at("megabytes"),
            &req_field(e, "megabytes", &at("megabytes"))?,
            "megabytes",
        )?;
        let shared = flag(&at("shared"), field(e, "shared"), true)?;
        stores.push(StoreRec {
            server,
            name,
            megabytes,
            shared,
            reserved: BTreeMap::new(),
        });
    }
    // Keys in one order (sorted), so two calls never wait for each other in a cycle.
    stores.sort_by_key(|s| store_id(&s.server, &s.name));
    for w in stores.windows(2) {
        if store_id(&w[0].server, &w[0].name) == store_id(&w[1].server, &w[1].name) {
            return Err(ProviderError::invalid(format!(
                "mail store {} is listed twice in `mailStores`",
                w[1].label()
            )));
        }
    }
    // With flagIgnoreAlreadyExistsError a store registered as asked is left as it is
    // (running a set-up twice changes nothing); registered otherwise, it is still refused.
    let ignore = flag(
        "flagIgnoreAlreadyExistsError",
        field(ed, "flagIgnoreAlreadyExistsError"),
        false,
    )?;
    let mut new = Vec::new();
    for s in stores {
        let key = store_key(&store_id(&s.server, &s.name));
        if let Some(old) = r.get::<StoreRec>(&key).await? {
            if ignore && old.megabytes == s.megabytes && old.shared == s.shared {
                continue;
            }
            return Err(ProviderError::Permanent {
                code: E_ALREADY_EXISTS,
                message: format!(
                    "mail store {} already exists ({} MB, {}); ModifyExchangeResources changes it",
                    old.label(),
                    old.megabytes,
                    if old.shared { "shared" } else { "dedicated" }
                ),
            });
        }
        new.push(s);
    }
    for s in &new {
        r.put(&store_key(&store_id(&s.server, &s.name)), s).await?;
    }
    let names: Vec<String> = new
        .iter()
        .map(|s| format!("{} ({} MB)", s.label(), s.megabytes))
        .collect();
    let mut out = ed.clone();
    remove_children(&mut out, "flagSkipAction");
    out.push(text(
        "flagSkipAction",
        if new.is_empty() { "1" } else { "0" },
    ));
    Ok((
        out,
        if names.is_empty() {
            "every mail store is registered already: no change".to_string()
        } else {
            format!("add mail stores {}", names.join(", "))
        },
    ))
}

async fn modify_resources(
    ed: &Element,
    r: &Records<'_>,
) -> Result<(Element, String), ProviderError> {
    let mut changes = Vec::new();
    for (i, e) in store_list(ed)?.into_iter().enumerate() {
        let at = |f: &str| format!("mailStores/mailStore[{}]/{f}", i + 1);
        let server = server_name(
            &at("serverName"),
            &req_field(e, "serverName", &at("serverName"))?,
        )?;
        let name = store_name(
            &at("mailStoreName"),
            &req_field(e, "mailStoreName", &at("mailStoreName"))?,
        )?;
        let megabytes = field(e, "megabytes")
            .map(|m| parse_size(&at("megabytes"), &m, "megabytes"))
            .transpose()?;
        let shared = field(e, "shared")
            .map(|s| flag(&at("shared"), Some(s), true))
            .transpose()?;
        changes.push((store_id(&server, &name), server, name, megabytes, shared));
    }
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut said = Vec::new();
    for (id, server, name, megabytes, shared) in changes {
        let key = store_key(&id);
        let mut s: StoreRec = r
            .get(&key)
            .await?
            .ok_or_else(|| not_found_store(&server, &name))?;
        if let Some(mb) = megabytes {
            if mb < s.reserved_mb() {
                return Err(ProviderError::invalid(format!(
                    "mail store {} cannot shrink to {mb} MB: organizations hold {} MB of it",
                    s.label(),
                    s.reserved_mb()
                )));
            }
            s.megabytes = mb;
        }
        if let Some(sh) = shared {
            if !sh && s.reserved.len() > 1 {
                return Err(ProviderError::invalid(format!(
                    "mail store {} cannot become dedicated: {} organizations hold space on it",
                    s.label(),
                    s.reserved.len()
                )));
            }
            s.shared = sh;
        }
        said.push(format!(
            "{} ({} MB, {})",
            s.label(),
            s.megabytes,
            if s.shared { "shared" } else { "dedicated" }
        ));
        r.put(&key, &s).await?;
    }
    Ok((
        ed.clone(),
        format!("modify mail stores {}", said.join(", ")),
    ))
}

/// Every store, in key order, with its id.
async fn all_stores(r: &Records<'_>) -> Result<Vec<(String, StoreRec)>, ProviderError> {
    r.scan("store/").await
}

async fn allocate_organization(
    ed: &Element,
    r: &Records<'_>,
) -> Result<(Element, String), ProviderError> {
    let org = check_name(
        "organization",
        &req_field(ed, "organization", "organization")?,
        MAX_NAME,
    )?;
    let mb = parse_size(
        "megabytes",
        &req_field(ed, "megabytes", "megabytes")?,
        "megabytes",
    )?;
    let p = placement(ed, Algorithm::TightPack)?;
    let okey = org_key(&org);
    // Key order everywhere: the organization, then stores.
    let mut o: OrgRec = r.get(&okey).await?.unwrap_or_default();
    let mut stores: Vec<(String, StoreRec)> = match &p.pin {
        Some((server, name)) => {
            let id = store_id(server, name);
            let s = r
                .get(&store_key(&id))
                .await?
                .ok_or_else(|| not_found_store(server, name))?;
            vec![(id, s)]
        }
        None => all_stores(r).await?,
    };
    // Algorithms place only on shared stores; a dedicated store is taken by pinning it.
    let free: Vec<(String, u64)> = stores
        .iter()
        .filter(|(_, s)| s.open_to(&org) && (s.shared || p.pin.is_some()))
        .map(|(id, s)| (id.clone(), s.free_mb()))
        .collect();
    let parts = match (&p.pin, p.algorithm) {
        (Some(_), _) => free
            .first()
            .filter(|(_, f)| *f >= mb)
            .map(|(id, _)| vec![(id.clone(), mb)]),
        (None, Algorithm::TightPack) => split_tight(&free, mb),
        (None, Algorithm::Level) => split_level(&free, mb),
    };
    let Some(parts) = parts else {
        let total: u64 = free.iter().map(|(_, f)| *f).sum();
        return Err(no_room(match &p.pin {
            Some((server, name)) if free.is_empty() => format!(
                "mail store {server}/{name} is dedicated to another organization; organization {org} cannot get space on it"
            ),
            Some((server, name)) => format!(
                "mail store {server}/{name} has {total} MB free; organization {org} asks for {mb} MB"
            ),
            None => format!(
                "no store has room for {mb} MB for organization {org} ({} shared stores, {total} MB free in all)",
                free.len()
            ),
        }));
    };
    let mut out = Element::new("mailStores");
    let mut said = Vec::new();
    for (id, part) in &parts {
        let (_, s) = stores
            .iter_mut()
            .find(|(i, _)| i == id)
            .ok_or_else(|| ProviderError::permanent(format!("store {id} vanished")))?;
        *s.reserved.entry(org.clone()).or_default() += part;
        let share = o.shares.entry(id.clone()).or_insert_with(|| Share {
            server: s.server.clone(),
            name: s.name.clone(),
            megabytes: 0,
            used_kb: 0,
        });
        share.megabytes += part;
        let mut e = Element::new("mailStore");
        e.push(text("serverName", &s.server));
        e.push(text("mailStoreName", &s.name));
        e.push(text("megabytes", part));
        out.push(e);
        said.push(format!("{part} MB on {}", s.label()));
        r.put(&store_key(id), &*s).await?;
    }
    r.put(&okey, &o).await?;
    let mut ed = ed.clone();
    remove_children(&mut ed, "mailStores");
    ed.push(out);
    Ok((ed, format!("grant organization {org} {}", said.join(", "))))
}

/// Picks the share of `o` that takes `kb` (growing the organization's space when
/// `autoAllocate` says so) and charges it; returns the store id. Takes store keys only when
/// the organization's space changes.
async fn place(
    r: &Records<'_>,
    org: &str,
    o: &mut OrgRec,
    kb: u64,
    p: &Placement,
) -> Result<String, ProviderError> {
    let id = match &p.pin {
        Some((server, name)) => {
            let id = store_id(server, name);
            let fits = o.shares.get(&id).is_some_and(|s| s.free_kb() >= kb);
            if !fits {
                let key = store_key(&id);
                let mut s: StoreRec = r
                    .get(&key)
                    .await?
                    .ok_or_else(|| not_found_store(server, name))?;
                let free_kb = o.shares.get(&id).map_or(0, Share::free_kb);
                if p.auto.is_none() {
                    return Err(no_room(format!(
                        "mail store {} has no room for {kb} KB for organization {org} (it has {free_kb} KB free there; mailStore/@autoAllocate grants more space)",
                        s.label()
                    )));
                }
                let need = growth_mb(kb, free_kb);
                if !s.open_to(org) || s.free_mb() < need {
                    return Err(no_room(format!(
                        "mail store {} has no room for {kb} KB for organization {org} ({} MB free{})",
                        s.label(),
                        s.free_mb(),
                        if s.open_to(org) { "" } else { ", dedicated to another organization" }
                    )));
                }
                grow(o, &mut s, &id, org, need);
                r.put(&key, &s).await?;
            }
            id
        }
        None => {
            let found = pick(
                o.shares.iter().map(|(id, s)| (id.as_str(), s.free_kb())),
                kb,
                p.algorithm,
            )
            .map(str::to_string);
            match (found, p.auto) {
                (Some(id), _) => id,
                (None, None) => {
                    let best = o.shares.values().map(Share::free_kb).max().unwrap_or(0);
                    return Err(no_room(format!(
                        "no store has room for {kb} KB for organization {org} (its largest free space is {best} KB on {} stores; mailStore/@autoAllocate grants more space)",
                        o.shares.len()
                    )));
                }
                (None, Some(auto)) => auto_allocate(r, org, o, kb, auto).await?,
            }
        }
    };
    let share = o
        .shares
        .get_mut(&id)
        .ok_or_else(|| ProviderError::permanent(format!("share on {id} vanished")))?;
    share.used_kb += kb;
    Ok(id)
}

/// Grants `org` `need` MB more on store `id`.
fn grow(o: &mut OrgRec, s: &mut StoreRec, id: &str, org: &str, need: u64) {
    *s.reserved.entry(org.to_string()).or_default() += need;
    o.shares
        .entry(id.to_string())
        .or_insert_with(|| Share {
            server: s.server.clone(),
            name: s.name.clone(),
            megabytes: 0,
            used_kb: 0,
        })
        .megabytes += need;
}

/// Grows the organization's space by what `kb` lacks, on the store `auto` picks.
async fn auto_allocate(
    r: &Records<'_>,
    org: &str,
    o: &mut OrgRec,
    kb: u64,
    auto: AutoAllocate,
) -> Result<String, ProviderError> {
    let mut stores = all_stores(r).await?;
    // What each store would have to grant, and whether it can.
    let need = |o: &OrgRec, id: &str| growth_mb(kb, o.shares.get(id).map_or(0, Share::free_kb));
    let fits: Vec<(String, u64)> = stores
        .iter()
        .filter(|(id, s)| s.open_to(org) && s.free_mb() >= need(o, id))
        .map(|(id, s)| (id.clone(), s.free_mb()))
        .collect();
    let candidates = |only_held: bool| {
        fits.iter()
            .filter(|(id, _)| !only_held || o.shares.contains_key(id))
            .map(|(id, f)| (id.as_str(), *f))
            .collect::<Vec<_>>()
    };
    let chosen = match auto {
        AutoAllocate::Level => pick(candidates(false), 0, Algorithm::Level),
        AutoAllocate::TightPack => pick(candidates(false), 0, Algorithm::TightPack),
        AutoAllocate::MinStoreCount => pick(candidates(true), 0, Algorithm::Level)
            .or_else(|| pick(candidates(false), 0, Algorithm::Level)),
    }
    .map(str::to_string);
    let Some(id) = chosen else {
        let free: u64 = stores
            .iter()
            .filter(|(_, s)| s.open_to(org))
            .map(|(_, s)| s.free_mb())
            .max()
            .unwrap_or(0);
        return Err(no_room(format!(
            "no store has room for {kb} KB for organization {org} ({} stores; the most free on one is {free} MB)",
            stores.len()
        )));
    };
    let growth = need(o, &id);
    let (_, s) = stores
        .iter_mut()
        .find(|(i, _)| *i == id)
        .ok_or_else(|| ProviderError::permanent(format!("store {id} vanished")))?;
    grow(o, s, &id, org, growth);
    r.put(&store_key(&id), &*s).await?;
    Ok(id)
}

fn mail_store_out(ed: &Element, share: &Share) -> Element {
    // The input's mailStore (algorithm attributes) is kept; its store names are replaced.
    let mut out = ed
        .child("mailStore")
        .cloned()
        .unwrap_or_else(|| Element::new("mailStore"));
    remove_children(&mut out, "serverName");
    remove_children(&mut out, "mailStoreName");
    out.push(text("serverName", &share.server));
    out.push(text("mailStoreName", &share.name));
    out
}

fn org_and_mailbox(ed: &Element) -> Result<(String, String), ProviderError> {
    let org = check_name(
        "organization",
        &req_field(ed, "organization", "organization")?,
        MAX_NAME,
    )?;
    let mailbox = check_name("mailbox", &req_field(ed, "mailbox", "mailbox")?, MAX_NAME)?;
    Ok((org, mailbox))
}

async fn allocate_mailbox(
    ed: &Element,
    r: &Records<'_>,
) -> Result<(Element, String), ProviderError> {
    let (org, mailbox) = org_and_mailbox(ed)?;
    let kb = parse_size(
        "kilobytes",
        &req_field(ed, "kilobytes", "kilobytes")?,
        "kilobytes",
    )?;
    let p = placement(ed, Algorithm::Level)?;
    let okey = org_key(&org);
    let mut o: OrgRec = r.get(&okey).await?.unwrap_or_default();
    let mkey = mailbox_key(&org, &mailbox);
    if let Some(m) = r.get::<MailboxRec>(&mkey).await? {
        return Err(ProviderError::Permanent {
            code: E_ALREADY_EXISTS,
            message: format!(
                "mailbox {mailbox} of organization {org} is already allocated ({} KB on {}); ReAllocateMailbox changes it",
                m.kilobytes, m.store
            ),
        });
    }
    let id = place(r, &org, &mut o, kb, &p).await?;
    r.put(&okey, &o).await?;
    r.put(
        &mkey,
        &MailboxRec {
            store: id.clone(),
            kilobytes: kb,
        },
    )
    .await?;
    let share = &o.shares[&id];
    let mut out = ed.clone();
    let ms = mail_store_out(ed, share);
    remove_children(&mut out, "mailStore");
    out.push(ms);
    Ok((
        out,
        format!(
            "charge {kb} KB for mailbox {mailbox} of organization {org} to {}/{}",
            share.server, share.name
        ),
    ))
}

async fn existing_mailbox(
    r: &Records<'_>,
    org: &str,
    mailbox: &str,
    o: &mut OrgRec,
) -> Result<MailboxRec, ProviderError> {
    let m: MailboxRec =
        r.get(&mailbox_key(org, mailbox))
            .await?
            .ok_or_else(|| ProviderError::Permanent {
                code: E_NOT_FOUND,
                message: format!("mailbox {mailbox} of organization {org} is not allocated"),
            })?;
    let share = o.shares.get_mut(&m.store).ok_or_else(|| {
        ProviderError::permanent(format!(
            "mailbox {mailbox} is charged to {}, where organization {org} has no space (inconsistent records)",
            m.store
        ))
    })?;
    // Releases exactly what was charged.
    share.used_kb = share.used_kb.saturating_sub(m.kilobytes);
    Ok(m)
}

async fn reallocate_mailbox(
    ed: &Element,
    r: &Records<'_>,
) -> Result<(Element, String), ProviderError> {
    let (org, mailbox) = org_and_mailbox(ed)?;
    let okey = org_key(&org);
    let mut o: OrgRec = r.get(&okey).await?.unwrap_or_default();
    let old = existing_mailbox(r, &org, &mailbox, &mut o).await?;
    let kb = match field(ed, "kilobytes") {
        Some(k) => parse_size("kilobytes", &k, "kilobytes")?,
        None => old.kilobytes,
    };
    let p = placement(ed, Algorithm::Level)?;
    let pinned_elsewhere = p
        .pin
        .as_ref()
        .is_some_and(|(s, n)| store_id(s, n) != old.store);
    // It stays where it is when it still fits there and no other store is asked for.
    let id = if !pinned_elsewhere && o.shares[&old.store].free_kb() >= kb {
        if let Some(s) = o.shares.get_mut(&old.store) {
            s.used_kb += kb;
        }
        old.store.clone()
    } else {
        place(r, &org, &mut o, kb, &p).await?
    };
    r.put(&okey, &o).await?;
    r.put(
        &mailbox_key(&org, &mailbox),
        &MailboxRec {
            store: id.clone(),
            kilobytes: kb,
        },
    )
    .await?;
    let share = &o.shares[&id];
    let mut out = ed.clone();
    let ms = mail_store_out(ed, share);
    remove_children(&mut out, "mailStore");
    remove_children(&mut out, "moved");
    out.push(ms);
    out.push(text("moved", id != old.store));
    Ok((
        out,
        format!(
            "charge {kb} KB (was {} KB) for mailbox {mailbox} of organization {org} to {}/{}",
            old.kilobytes, share.server, share.name
        ),
    ))
}

async fn deallocate_mailbox(
    ed: &Element,
    r: &Records<'_>,
) -> Result<(Element, String), ProviderError> {
    let (org, mailbox) = org_and_mailbox(ed)?;
    let okey = org_key(&org);
    let mut o: OrgRec = r.get(&okey).await?.unwrap_or_default();
    let old = existing_mailbox(r, &org, &mailbox, &mut o).await?;
    r.put(&okey, &o).await?;
    r.delete(&mailbox_key(&org, &mailbox)).await?;
    let share = &o.shares[&old.store];
    let mut out = ed.clone();
    let ms = mail_store_out(ed, share);
    remove_children(&mut out, "mailStore");
    remove_children(&mut out, "kilobytes");
    out.push(ms);
    out.push(text("kilobytes", old.kilobytes));
    Ok((
        out,
        format!(
            "release {} KB of mailbox {mailbox} of organization {org} on {}/{}",
            old.kilobytes, share.server, share.name
        ),
    ))
}

/// Gives back every share an organization holds (its space on each store), refused while
/// mailboxes of it are still charged. An organization without space releases nothing.
async fn deallocate_organization(
    ed: &Element,
    r: &Records<'_>,
) -> Result<(Element, String), ProviderError> {
    let org = check_name(
        "organization",
        &req_field(ed, "organization", "organization")?,
        MAX_NAME,
    )?;
    let okey = org_key(&org);
    let o: Option<OrgRec> = r.get(&okey).await?;
    let mut list = Element::new("mailStores");
    let mut said = Vec::new();
    let mut total = 0;
    if let Some(o) = o {
        let used: u64 = o.shares.values().map(|s| s.used_kb).sum();
        if used > 0 {
            let n = r
                .scan::<MailboxRec>(&format!("mbx/{}/", esc(&org)))
                .await?
                .len();
            return Err(ProviderError::invalid(format!(
                "organization {org} still has {n} mailboxes allocated ({used} KB): DeAllocateMailbox releases them first"
            )));
        }
        // Stores in key order (the shares' order), after the organization's key.
        for (id, share) in &o.shares {
            let key = store_key(id);
            if let Some(mut st) = r.get::<StoreRec>(&key).await? {
                st.reserved.remove(&org);
                r.put(&key, &st).await?;
            }
            let mut e = Element::new("mailStore");
            e.push(text("serverName", &share.server));
            e.push(text("mailStoreName", &share.name));
            e.push(text("megabytes", share.megabytes));
            list.push(e);
            said.push(format!(
                "{} MB on {}/{}",
                share.megabytes, share.server, share.name
            ));
            total += share.megabytes;
        }
        r.delete(&okey).await?;
    }
    let mut out = ed.clone();
    remove_children(&mut out, "mailStores");
    remove_children(&mut out, "megabytes");
    out.push(list);
    out.push(text("megabytes", total));
    Ok((
        out,
        if said.is_empty() {
            format!("organization {org} holds no store space: nothing to release")
        } else {
            format!("release organization {org}'s {}", said.join(", "))
        },
    ))
}

async fn query_all_stores(
    ed: &Element,
    r: &Records<'_>,
) -> Result<(Element, String), ProviderError> {
    let stores = all_stores(r).await?;
    let mut list = Element::new("mailStores");
    for (_, s) in &stores {
        let mut e = Element::new("mailStore");
        e.push(text("serverName", &s.server));
        e.push(text("mailStoreName", &s.name));
        e.push(text("megabytes", s.megabytes));
        e.push(text("megabytesFree", s.free_mb()));
        e.push(text("shared", s.shared));
        e.push(text("organizations", s.reserved.len()));
        list.push(e);
    }
    let mut out = ed.clone();
    remove_children(&mut out, "mailStores");
    out.push(list);
    Ok((out, format!("list {} mail stores", stores.len())))
}

async fn query_organizations(
    ed: &Element,
    r: &Records<'_>,
) -> Result<(Element, String), ProviderError> {
    let ms = ed.child("mailStore");
    let get = |n: &str| ms.and_then(|m| field(m, n)).or_else(|| field(ed, n));
    let server = server_name(
        "serverName",
        &get("serverName")
            .ok_or_else(|| ProviderError::invalid("input `serverName` is required"))?,
    )?;
    let name = store_name(
        "mailStoreName",
        &get("mailStoreName")
            .ok_or_else(|| ProviderError::invalid("input `mailStoreName` is required"))?,
    )?;
    let s: StoreRec = r
        .get(&store_key(&store_id(&server, &name)))
        .await?
        .ok_or_else(|| not_found_store(&server, &name))?;
    let mut list = Element::new("organizations");
    for (org, mb) in &s.reserved {
        let mut e = Element::new("organization");
        e.push(text("name", org));
        e.push(text("megabytes", mb));
        list.push(e);
    }
    let mut out = ed.clone();
    remove_children(&mut out, "organizations");
    out.push(list);
    Ok((
        out,
        format!(
            "list the {} organizations on {}",
            s.reserved.len(),
            s.label()
        ),
    ))
}

fn size_input(name: &str, required: bool, description: &str) -> InputSpec {
    InputSpec {
        check: Some(SIZE_CHECK),
        ..input(name, "int", required, description)
    }
}

#[async_trait]
impl Provider for ResourceManagerProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    /// Stores, shares and charges are provider state and nothing else.
    fn effects_in_state_only(&self) -> bool {
        true
    }

    fn namespace(&self) -> String {
        NAMESPACE.to_string()
    }

    fn procedures(&self) -> Vec<ProcedureSpec> {
        let stores = || {
            input(
                "mailStores",
                "map",
                true,
                "mailStore elements: serverName, mailStoreName, megabytes, shared (default true)",
            )
        };
        let org = || {
            input(
                "organization",
                "string",
                true,
                "the organization (its name or path)",
            )
        };
        let mailbox = || {
            input(
                "mailbox",
                "string",
                true,
                "the mailbox (its name, UPN or path)",
            )
        };
        let store = || {
            input(
                "mailStore",
                "map",
                false,
                "@algorithm tightPack|level, @autoAllocate level|tightPack|minStoreCount, and an optional serverName + mailStoreName pinning the store",
            )
        };
        vec![
            spec("AddExchangeResources", ProcKind::Write, "Registers mail stores with their capacity in MB, shared (default) or dedicated to one organization. With flagIgnoreAlreadyExistsError a store already registered with the same size and sharing is left as it is (flagSkipAction 1 when nothing was added); otherwise a registered store is refused.", vec![
                stores(),
                input("flagIgnoreAlreadyExistsError", "bool", false, "a store registered as asked is success, with no change (default false)"),
            ]),
            spec("ModifyExchangeResources", ProcKind::Write, "Changes the capacity (never below what organizations hold) or the shared flag of registered mail stores.", vec![stores()]),
            spec("AllocateOrganization", ProcKind::Write, "Grants an organization `megabytes` of store space: algorithm tightPack (fewest stores, the default) or level (even parts), or on the pinned store; returns mailStores/mailStore{serverName, mailStoreName, megabytes}.", vec![
                org(),
                size_input("megabytes", true, "the space to grant (MB)"),
                input("algorithm", "string", false, "tightPack (default) or level; also mailStore/@algorithm"),
                store(),
            ]),
            spec("AllocateMailbox", ProcKind::Write, "Charges a mailbox's kilobytes to one of its organization's shares (mailStore/@algorithm level (default) or tightPack, or the pinned store); with mailStore/@autoAllocate the organization is granted more space when it lacks room. Returns mailStore{serverName, mailStoreName}.", vec![
                org(),
                mailbox(),
                size_input("kilobytes", true, "the mailbox's size (KB)"),
                store(),
            ]),
            spec("ReAllocateMailbox", ProcKind::Write, "Changes a mailbox's size or store: it stays where it is when it still fits and no other store is pinned; returns mailStore and moved.", vec![
                org(),
                mailbox(),
                size_input("kilobytes", false, "the new size (KB); default the current one"),
                store(),
            ]),
            spec("DeAllocateMailbox", ProcKind::Write, "Releases exactly what a mailbox was charged; returns its mailStore and kilobytes.", vec![org(), mailbox()]),
            spec("DeAllocateOrganization", ProcKind::Write, "Gives back every share of store space an organization holds (refused while mailboxes of it are still allocated; an organization without space releases nothing); returns mailStores/mailStore{serverName, mailStoreName, megabytes} released and megabytes (their sum).", vec![org()]),
            spec("QueryAllStores", ProcKind::Read, "Lists every mail store: mailStores/mailStore{serverName, mailStoreName, megabytes, megabytesFree, shared, organizations}.", vec![]),
            spec("QueryOrganizationsByMailstore", ProcKind::Read, "Lists the organizations holding space on a store: organizations/organization{name, megabytes}.", vec![
                input("serverName", "string", true, "the server (also mailStore/serverName)"),
                input("mailStoreName", "string", true, "the store (also mailStore/mailStoreName)"),
            ]),
        ]
    }

    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        let r = Records::new(&call.state);
        let (execute_data, _) = self.run(&call, &r).await?;
        // The engine restores every key the step wrote: nothing for `undo` to do.
        Ok(Outcome {
            execute_data,
            undo: None,
        })
    }

    async fn undo(&self, _done: Done) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn recover(&self, _call: &Call) -> Result<Option<Element>, ProviderError> {
        // Its only effect is state, which an attempt that did not return keeps nothing of.
        Ok(None)
    }

    async fn preview(&self, call: &Call) -> Result<Preview, ProviderError> {
        let r = Records::new(&call.state);
        let read = call.context.procedure.starts_with("Query");
        preview_of(self.run(call, &r).await.map(|(_, s)| s), read)
    }
}
