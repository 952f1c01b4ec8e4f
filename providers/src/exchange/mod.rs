//! The mail provider (namespace `Exchange 2007 Provider`, provider id `Exchange`): mailboxes
//! for existing directory users, accepted domains, distribution groups, contacts,
//! out-of-office and per-tenant address lists, served by a real mail server (Dovecot for
//! IMAP/LMTP and Sieve, Postfix-style maps for routing).
//!
//! The truth is provider state (`records.rs`): every write commits and rolls back with the
//! transaction, under the engine's per-key locks. The files a mail server reads are a
//! projection (`render.rs`): every procedure that changes something is two-phase, and its
//! `commit` — run only once the whole transaction succeeded — applies the call's changes to
//! the committed view this provider keeps in memory and rewrites the files from it (each
//! atomically, by rename). A rolled-back transaction never reaches `commit`, so the files
//! stay as they were; after a crash the view is rebuilt from provider state (which recovery
//! has rolled back to what committed) and every file rendered again, at start
//! ([`ExchangeProvider::resync`]) or at the provider's first call. Reference:
//! `docs/providers/exchange.md`.

mod address;
mod records;
mod render;
mod sieve;

use crate::bookkeeping::{
    field, flag, one_of, parse_size, preview_of, remove_children, req_field, text, Records,
};
use crate::common::input;
use crate::directory::{
    parse_path, AttrSelection, DirectoryBackend, Dn, Entry, Filter, OpContext, Scope, SearchRequest,
};
use address::{alias, default_alias, display, domain_name, free_text, smtp_address, DOMAIN_TYPES};
use async_trait::async_trait;
use provisio_engine::codes::{E_ALREADY_EXISTS, E_ASSET_NOT_AVAILABLE, E_NOT_FOUND, E_PLAN_LIMIT};
use provisio_engine::data::Element;
use provisio_engine::model::{InputSpec, ProcKind};
use provisio_engine::provider::{
    Call, Done, Outcome, Preview, ProcedureSpec, Provider, ProviderError, UndoKind,
};
use provisio_engine::ProviderState;
use records::*;
use render::{FileOp, Layout, View};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The provider id (`providerSource`).
pub const PROVIDER: &str = "Exchange";
/// The namespace its procedures are published under.
pub const NAMESPACE: &str = "Exchange 2007 Provider";

/// Longest out-of-office subject and message.
const MAX_SUBJECT: usize = 256;
const MAX_MESSAGE: usize = 16 * 1024;

/// How the provider is set up.
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    /// Where the files go (passwd-file, maps, mailbox homes). No space, colon or control
    /// character: it is written into passwd-file fields.
    pub mail_root: PathBuf,
    /// The uid and gid the mail belongs to (passwd-file fields; homes are given to them when
    /// the process runs as root). Default: the process's own.
    pub mail_uid: Option<u32>,
    /// See `mail_uid`.
    pub mail_gid: Option<u32>,
    /// The directory provider whose users get mailboxes (its name in the registry, whose
    /// state the embedded backend keeps).
    pub directory_provider: String,
}

impl ExchangeConfig {
    /// Mail under `mail_root`, owned by the process, users from the `Active Directory`
    /// provider.
    pub fn new(mail_root: impl Into<PathBuf>) -> ExchangeConfig {
        ExchangeConfig {
            mail_root: mail_root.into(),
            mail_uid: None,
            mail_gid: None,
            directory_provider: crate::directory::PROVIDER_NAME.to_string(),
        }
    }
}

/// A configuration the provider cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The mail root is not usable.
    #[error("mail_root `{path}`: {message}")]
    MailRoot {
        /// The path as configured.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The mail provider.
pub struct ExchangeProvider {
    directory: Arc<dyn DirectoryBackend>,
    directory_provider: String,
    layout: Layout,
    /// The committed records and whether they were loaded since start.
    view: Arc<Mutex<Option<View>>>,
    /// The view generation the files show (renders take this lock one at a time).
    rendered: Arc<Mutex<u64>>,
    /// Held while the view is loaded (one load).
    loading: tokio::sync::Mutex<()>,
    /// Stores (`server/store`, lower-case) a committed mailbox was put on. The resource
    /// manager never removes a store, so these need no further check: a mailbox-enable does
    /// not lock the store's record (which every mailbox-enable on that store would wait for).
    known_stores: Arc<Mutex<BTreeMap<String, (String, String)>>>,
}

impl std::fmt::Debug for ExchangeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeProvider")
            .field("mail_root", &self.layout.root)
            .field("directory", &self.directory_provider)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_error(what: &str, e: std::io::Error) -> ProviderError {
    ProviderError::transient(format!("{what}: {e}"))
}

fn not_found(message: String) -> ProviderError {
    ProviderError::Permanent {
        code: E_NOT_FOUND,
        message,
    }
}

fn exists(message: String) -> ProviderError {
    ProviderError::Permanent {
        code: E_ALREADY_EXISTS,
        message,
    }
}

fn unavailable(domain: &str) -> ProviderError {
    ProviderError::Permanent {
        code: E_ASSET_NOT_AVAILABLE,
        message: format!("The SMTP Domain {domain} is not available"),
    }
}

/// An organization: its id (normalised DN) and its DN as given.
#[derive(Debug, Clone)]
struct Org {
    id: String,
    dn: Dn,
    /// As the caller wrote it (the Managed Plans customer name).
    given: String,
}

fn org_from(at: &str, text: &str) -> Result<Org, ProviderError> {
    let p = parse_path(text).map_err(|e| {
        ProviderError::invalid(format!(
            "input `{at}` is not an LDAP path or DN ({e}), got {text:?}"
        ))
    })?;
    if p.dn.is_root() {
        return Err(ProviderError::invalid(format!(
            "input `{at}` must name an organization's container, got {text:?}"
        )));
    }
    Ok(Org {
        id: p.dn.normalized(),
        dn: p.dn,
        given: text.trim().to_string(),
    })
}

fn org_input(ed: &Element) -> Result<Org, ProviderError> {
    let t = field(ed, "organization").ok_or_else(|| {
        ProviderError::invalid("input `organization` is required (an LDAP path or DN)")
    })?;
    org_from("organization", &t)
}

/// Values of a list input: `<name><value>a</value><value>b</value></name>` (or repeated
/// `<name>` elements, or one text).
fn list_input(ed: &Element, name: &str, item: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in ed.elements().filter(|e| e.name == name) {
        let items: Vec<&Element> = e.elements().filter(|c| c.name == item).collect();
        if items.is_empty() {
            let t = e.string_value();
            if !t.trim().is_empty() {
                out.push(t);
            }
        } else {
            out.extend(items.iter().map(|i| i.string_value()));
        }
    }
    out
}

/// A state write: key and new value (`None`: deleted).
type Change = (String, Option<Vec<u8>>);

/// Provider-state writes of one call, recorded so that `commit` can apply the same changes
/// to the committed view.
struct Tx<'a> {
    r: Records<'a>,
    changes: Vec<Change>,
    ops: Vec<FileOp>,
}

impl<'a> Tx<'a> {
    fn new(state: &'a ProviderState) -> Tx<'a> {
        Tx {
            r: Records::new(state),
            changes: Vec::new(),
            ops: Vec::new(),
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, ProviderError> {
        self.r.get(key).await
    }

    async fn put<T: Serialize>(&mut self, key: &str, v: &T) -> Result<(), ProviderError> {
        self.r.put(key, v).await?;
        let bytes = serde_json::to_vec(v).map_err(|e| {
            ProviderError::permanent(format!("record `{key}` does not encode: {e}"))
        })?;
        self.changes.push((key.to_string(), Some(bytes)));
        Ok(())
    }

    async fn delete(&mut self, key: &str) -> Result<(), ProviderError> {
        self.r.delete(key).await?;
        self.changes.push((key.to_string(), None));
        Ok(())
    }

    /// The undo record: the changes and file operations, for `commit`.
    fn record(&self) -> Element {
        let mut e = Element::new("exchange");
        for (k, v) in &self.changes {
            let mut c = Element::new("change");
            c.set_attr("key", k.as_str());
            if let Some(v) = v {
                c.set_attr("value", String::from_utf8_lossy(v).into_owned());
            }
            e.push(c);
        }
        for op in &self.ops {
            let mut c = match op {
                FileOp::Move { from, to } => {
                    let mut c = Element::new("move");
                    c.set_attr("from", from.display().to_string());
                    c.set_attr("to", to.display().to_string());
                    c
                }
                FileOp::Remove(p) => {
                    let mut c = Element::new("remove");
                    c.set_attr("path", p.display().to_string());
                    c
                }
            };
            c.set_attr("op", "1");
            e.push(c);
        }
        e
    }
}

/// The changes and file operations of an undo record.
fn parse_record(e: &Element) -> (Vec<Change>, Vec<FileOp>) {
    let mut changes = Vec::new();
    let mut ops = Vec::new();
    for c in e.elements() {
        match c.name.as_ref() {
            "change" => {
                if let Some(k) = c.attr("key") {
                    changes.push((
                        k.to_string(),
                        c.attr("value").map(|v| v.as_bytes().to_vec()),
                    ));
                }
            }
            "move" => {
                if let (Some(f), Some(t)) = (c.attr("from"), c.attr("to")) {
                    ops.push(FileOp::Move {
                        from: f.into(),
                        to: t.into(),
                    });
                }
            }
            "remove" => {
                if let Some(p) = c.attr("path") {
                    ops.push(FileOp::Remove(p.into()));
                }
            }
            _ => {}
        }
    }
    (changes, ops)
}

impl ExchangeProvider {
    /// The provider, reading users through `directory` (the backend of the directory
    /// provider named in `config`).
    pub fn new(
        config: ExchangeConfig,
        directory: Arc<dyn DirectoryBackend>,
    ) -> Result<ExchangeProvider, ExchangeError> {
        let shown = config.mail_root.display().to_string();
        if shown
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(ExchangeError::MailRoot {
                path: shown,
                message: "must not hold a space, `:` or a control character (it is written into passwd-file fields)".into(),
            });
        }
        let root = if config.mail_root.is_absolute() {
            config.mail_root.clone()
        } else {
            std::env::current_dir()
                .map_err(|e| ExchangeError::MailRoot {
                    path: shown.clone(),
                    message: e.to_string(),
                })?
                .join(&config.mail_root)
        };
        let euid = rustix::process::geteuid().as_raw();
        let egid = rustix::process::getegid().as_raw();
        let uid = config.mail_uid.unwrap_or(euid);
        let gid = config.mail_gid.unwrap_or(egid);
        Ok(ExchangeProvider {
            directory,
            directory_provider: config.directory_provider,
            layout: Layout {
                root,
                uid,
                gid,
                chown: euid == 0 && (uid != 0 || gid != 0),
            },
            view: Arc::new(Mutex::new(None)),
            rendered: Arc::new(Mutex::new(0)),
            loading: tokio::sync::Mutex::new(()),
            known_stores: Arc::new(Mutex::new(BTreeMap::new())),
        })
    }

    /// The mail root (absolute).
    pub fn mail_root(&self) -> &std::path::Path {
        &self.layout.root
    }

    /// Rebuilds the committed view from `entries` (every key of this provider's state and its
    /// value, e.g. [`provisio_engine::Engine::state_entries`] at start, after recovery) and
    /// renders every file from it.
    pub async fn resync(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), ProviderError> {
        let _g = self.loading.lock().await;
        self.install(entries).await
    }

    async fn install(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), ProviderError> {
        let view = View {
            records: entries
                .into_iter()
                .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
                .collect(),
            ..View::default()
        };
        let layout = self.layout.clone();
        let slot = self.view.clone();
        let rendered = self.rendered.clone();
        tokio::task::spawn_blocking(move || {
            let mut done_up_to = lock(&rendered);
            *done_up_to = 0;
            // Nothing to render and nothing rendered before: the mail root is not created
            // (a data folder that never held mail stays without one).
            let r = if view.records.is_empty() && !layout.root.exists() {
                Ok(())
            } else {
                view.render(&layout, None, &[])
            };
            *lock(&slot) = Some(view);
            r
        })
        .await
        .map_err(|e| ProviderError::transient(format!("rendering the mail files panicked: {e}")))?
        .map_err(|e| io_error("rendering the mail files", e))
    }

    /// Loads the view from state once (the first write call after start, when nobody called
    /// [`ExchangeProvider::resync`]): a locking scan in the call's transaction, which has not
    /// written anything of this provider yet.
    async fn ensure_loaded(&self, state: &ProviderState) -> Result<(), ProviderError> {
        if lock(&self.view).is_some() {
            return Ok(());
        }
        let _g = self.loading.lock().await;
        if lock(&self.view).is_some() {
            return Ok(());
        }
        let entries = state.scan(b"").await?;
        self.install(entries).await
    }

    fn ctx(&self, call: &Call) -> OpContext {
        OpContext::new(
            call.state.read_of(&self.directory_provider),
            call.context.idempotency_key(),
            None,
        )
    }

    /// The registered store `server`/`name`, as the resource manager spells it.
    async fn store(
        &self,
        call: &Call,
        server: &str,
        name: &str,
    ) -> Result<(String, String), ProviderError> {
        let known = format!("{}/{}", server.to_lowercase(), name.to_lowercase());
        // Committed before, and stores are never removed: as first spelled.
        if let Some(v) = lock(&self.known_stores).get(&known).cloned() {
            return Ok(v);
        }
        crate::resource_manager::registered_store(
            &call.state.read_of(crate::resource_manager::PROVIDER),
            server,
            name,
        )
        .await?
        .ok_or_else(|| {
            not_found(format!(
                "mail store {server}/{name} does not exist (Exchange 2007 Resource Manager `AddExchangeResources` registers it)"
            ))
        })
    }

    /// The directory user `text` names: an LDAP path or DN, or a userPrincipalName.
    async fn directory_user(&self, call: &Call, text: &str) -> Result<Entry, ProviderError> {
        let ctx = self.ctx(call);
        let missing = || {
            not_found(format!(
                "user {text:?} is not in the directory (Active Directory Provider `Create Object` creates it): a mailbox is enabled only for an existing user"
            ))
        };
        let entry = if text.contains('=') {
            let p = parse_path(text).map_err(|e| {
                ProviderError::invalid(format!(
                    "input `user` is not an LDAP path or DN ({e}), got {text:?}"
                ))
            })?;
            if !p.dn.is_under(self.directory.base_dn()) {
                return Err(missing());
            }
            self.directory
                .read(&ctx, &p.dn, &AttrSelection::All)
                .await?
        } else if text.contains('@') {
            let page = self
                .directory
                .search(
                    &ctx,
                    &SearchRequest {
                        base: self.directory.base_dn().clone(),
                        scope: Scope::Subtree,
                        filter: Filter::equal("userPrincipalName", text.trim()),
                        attrs: AttrSelection::All,
                        page_size: Some(2),
                        cookie: None,
                    },
                )
                .await;
            match page {
                Ok(p) => p.entries.into_iter().next(),
                Err(crate::directory::DirError::NoSuchObject { .. }) => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            return Err(ProviderError::invalid(format!(
                "input `user` must be an LDAP path, a DN or a userPrincipalName, got {text:?}"
            )));
        };
        let entry = entry.ok_or_else(missing)?;
        if !(entry.has_class("user")
            || entry.has_class("inetOrgPerson")
            || entry.has_class("person"))
        {
            return Err(ProviderError::invalid(format!(
                "{} is not a user (a mailbox is enabled only for a user)",
                entry.dn
            )));
        }
        Ok(entry)
    }

    /// The mailbox key `user` names: an LDAP path or DN, or one of its SMTP addresses.
    async fn mailbox_of(
        &self,
        tx: &Tx<'_>,
        text: &str,
    ) -> Result<(String, MailboxRec), ProviderError> {
        let key = if text.contains('=') {
            let p = parse_path(text).map_err(|e| {
                ProviderError::invalid(format!(
                    "input `user` is not an LDAP path or DN ({e}), got {text:?}"
                ))
            })?;
            let id = p.dn.normalized();
            tx.get::<String>(&user_key(&id))
                .await?
                .map(|org| mailbox_key(&org, &id))
        } else {
            let a = smtp_address("user", text)?;
            tx.get::<String>(&address_key(&a))
                .await?
                .filter(|h| h.starts_with("mbx/"))
        };
        let missing = || not_found(format!("user {text:?} has no mailbox"));
        let key = key.ok_or_else(missing)?;
        let m = tx.get::<MailboxRec>(&key).await?.ok_or_else(missing)?;
        Ok((key, m))
    }

    /// Runs one procedure; returns the executeData and a sentence for a preview.
    async fn run(&self, call: &Call, tx: &mut Tx<'_>) -> Result<(Element, String), ProviderError> {
        let ed = &call.execute_data;
        match call.context.procedure.as_str() {
            "CreateMailbox" => self.create_mailbox(call, tx, false).await,
            "CreateResourceMailbox" => self.create_mailbox(call, tx, true).await,
            "DisableMailbox" => self.remove_mailbox(ed, tx, false).await,
            "DeleteMailbox" => self.remove_mailbox(ed, tx, true).await,
            "MoveMailbox" => self.move_mailbox(call, tx).await,
            "SetMailboxQuota" => self.set_quota(call, tx).await,
            "SetOutOfOffice" => self.set_oof(ed, tx).await,
            "CreateSMTPDomain" => create_domain(ed, tx).await,
            "DeleteSMTPDomain" => delete_domain(ed, tx).await,
            "CreateDistributionList" => create_group(ed, tx).await,
            "DeleteDistributionList" => delete_group(ed, tx).await,
            "AddDistributionListMember" => group_member(ed, tx, true).await,
            "RemoveDistributionListMember" => group_member(ed, tx, false).await,
            "CreateContact" => create_contact(ed, tx).await,
            "DeleteContact" => delete_contact(ed, tx).await,
            "GetMailbox" => self.get_mailbox(ed, tx).await,
            "GetAddressList" => address_list(ed, tx).await,
            "GetOrganizationDomains" => org_domains(ed, tx).await,
            other => Err(ProviderError::Unsupported(format!(
                "{NAMESPACE} has no procedure `{other}`"
            ))),
        }
    }

    async fn create_mailbox(
        &self,
        call: &Call,
        tx: &mut Tx<'_>,
        resource_required: bool,
    ) -> Result<(Element, String), ProviderError> {
        let ed = &call.execute_data;
        let resource = resource_input(ed, resource_required)?;
        let allocation = allocation_input(ed)?;
        let plan_charge = charge_input(ed)?;
        let user_text = field(ed, "user").ok_or_else(|| {
            ProviderError::invalid("input `user` is required (the directory user's LDAP path, DN or userPrincipalName)")
        })?;
        // Inputs first: bad input fails before anything is read or locked.
        let raw = {
            let mut l = list_input(ed, "emailAddresses", "value");
            if l.is_empty() {
                l = list_input(ed, "primarySmtpAddress", "value");
            }
            l
        };
        if raw.is_empty() {
            return Err(ProviderError::invalid(
                "input `emailAddresses` holds no `value` (the SMTP addresses, the first one primary)",
            ));
        }
        let mut addresses = Vec::new();
        for (i, a) in raw.iter().enumerate() {
            let a = smtp_address(&format!("emailAddresses/value[{}]", i + 1), a)?;
            if addresses.contains(&a) {
                return Err(ProviderError::invalid(format!(
                    "input `emailAddresses` lists {a} twice"
                )));
            }
            addresses.push(a);
        }
        let nick = match field(ed, "alias") {
            Some(a) => alias("alias", &a)?,
            None => default_alias("", &addresses[0])?,
        };
        let quota_in = field(ed, "quotaKB")
            .or_else(|| field(ed, "kilobytes"))
            .map(|q| parse_size("quotaKB", &q, "kilobytes"))
            .transpose()?;
        let plan_name = field(ed, "planName");
        let (server_in, store_in) = store_input(ed)?;
        let org_in = field(ed, "organization")
            .or_else(|| field(ed, "owningOrganization"))
            .map(|o| org_from("organization", &o))
            .transpose()?;
        let display_in = field(ed, "displayName")
            .map(|d| display("displayName", &d))
            .transpose()?;

        // The directory user (locked until the end of the transaction: it cannot vanish).
        let entry = self.directory_user(call, &user_text).await?;
        let user_id = entry.dn.normalized();
        let org = match org_in {
            Some(o) => o,
            None => {
                let parent = entry.dn.parent().filter(|p| !p.is_root()).ok_or_else(|| {
                    ProviderError::invalid(format!(
                        "user {} has no container to be its organization; give `organization`",
                        entry.dn
                    ))
                })?;
                Org {
                    id: parent.normalized(),
                    given: parent.to_string(),
                    dn: parent,
                }
            }
        };
        if let Some(existing) = tx.get::<String>(&user_key(&user_id)).await? {
            let m: Option<MailboxRec> = tx.get(&mailbox_key(&existing, &user_id)).await?;
            return Err(exists(format!(
                "user {} already has a mailbox{}",
                entry.dn,
                m.map(|m| format!(" ({})", m.primary())).unwrap_or_default()
            )));
        }
        // Domains in one order (sorted): accepted, and this organization's.
        let domains: BTreeSet<String> = addresses
            .iter()
            .map(|a| {
                a.split_once('@')
                    .map(|x| x.1.to_string())
                    .unwrap_or_default()
            })
            .collect();
        let mut recs = BTreeMap::new();
        for d in &domains {
            let rec = usable_domain(tx, d, &org).await?;
            recs.insert(d.clone(), rec);
        }
        for a in &addresses {
            if tx.get::<String>(&address_key(a)).await?.is_some() {
                return Err(exists(format!("the e-mail address {a} is already in use")));
            }
        }
        if tx.get::<String>(&alias_key(&nick)).await?.is_some() {
            return Err(exists(format!("the alias {nick} is already taken")));
        }
        // The store must be registered with the resource manager.
        let (server, store) = match (server_in, store_in) {
            (Some(s), Some(n)) => self.store(call, &s, &n).await?,
            _ => (String::new(), String::new()),
        };
        // The plan's ceiling.
        let governing = crate::plans::governing_limit(
            &call.state.read_of(crate::plans::PROVIDER),
            plan_name.as_deref(),
            &org.given,
            "mailboxQuotaKB",
        )
        .await?;
        let quota_kb = match (quota_in, &governing) {
            (Some(q), Some((plan, Some(limit)))) if q > *limit => {
                return Err(ProviderError::Permanent {
                    code: E_PLAN_LIMIT,
                    message: format!(
                        "a quota of {q} KB is beyond plan {plan}: its mailboxQuotaKB is {limit}"
                    ),
                })
            }
            (Some(q), _) => q,
            (None, Some((_, Some(limit)))) => *limit,
            (None, _) => {
                return Err(ProviderError::invalid(
                    "input `quotaKB` is required (no plan gives a mailboxQuotaKB)",
                ))
            }
        };
        let display_name = display_in
            .or_else(|| entry.first("displayName").map(str::to_string))
            .or_else(|| entry.first("cn").map(str::to_string))
            .unwrap_or_else(|| nick.clone());
        let rec = MailboxRec {
            user: entry.dn.to_string(),
            org: org.id.clone(),
            org_dn: org.dn.to_string(),
            alias: nick.clone(),
            display: display_name,
            addresses: addresses.clone(),
            quota_kb,
            server: server.clone(),
            store: store.clone(),
            plan: governing.map(|g| g.0),
            oof: None,
            resource: resource.clone(),
            allocation,
            plan_charge,
        };
        let mkey = mailbox_key(&org.id, &user_id);
        for (d, mut r) in recs {
            let n = addresses
                .iter()
                .filter(|a| a.ends_with(&format!("@{d}")))
                .count() as u64;
            *r.counts.entry(org.id.clone()).or_default() += n;
            tx.put(&domain_key(&d), &r).await?;
        }
        for a in &addresses {
            tx.put(&address_key(a), &mkey).await?;
        }
        tx.put(&alias_key(&nick), &mkey).await?;
        tx.put(&user_key(&user_id), &org.id).await?;
        tx.put(&mkey, &rec).await?;
        let mut out = ed.clone();
        for n in [
            "primarySmtpAddress",
            "quotaKB",
            "mailStore",
            "homeDirectory",
        ] {
            remove_children(&mut out, n);
        }
        out.push(text("primarySmtpAddress", &addresses[0]));
        out.push(text("quotaKB", quota_kb));
        if !server.is_empty() {
            let mut ms = Element::new("mailStore");
            ms.push(text("serverName", &server));
            ms.push(text("mailStoreName", &store));
            out.push(ms);
        }
        out.push(text(
            "homeDirectory",
            self.layout.home(&rec).display().to_string(),
        ));
        Ok((
            out,
            format!(
                "{}mailbox-enable {} as {} ({} KB{})",
                resource
                    .as_ref()
                    .map(|r| format!("{} ", r.kind.to_lowercase()))
                    .unwrap_or_default(),
                entry.dn,
                addresses.join(", "),
                quota_kb,
                if server.is_empty() {
                    String::new()
                } else {
                    format!(" on {server}/{store}")
                }
            ),
        ))
    }

    async fn remove_mailbox(
        &self,
        ed: &Element,
        tx: &mut Tx<'_>,
        purge: bool,
    ) -> Result<(Element, String), ProviderError> {
        let user = req_field(ed, "user", "user")?;
        let (key, m) = self.mailbox_of(tx, &user).await?;
        let org = m.org.clone();
        // Out of the groups of its organization that list it.
        for (gk, mut g) in
            tx.r.scan::<GroupRec>(&format!("grp/{}/", crate::bookkeeping::esc(&org)))
                .await?
        {
            if g.members.iter().any(|a| a == m.primary()) {
                g.members.retain(|a| a != m.primary());
                tx.put(&format!("grp/{}/{gk}", crate::bookkeeping::esc(&org)), &g)
                    .await?;
            }
        }
        release_addresses(tx, &m.addresses, &org).await?;
        tx.delete(&alias_key(&m.alias)).await?;
        tx.delete(&user_key(&dn_id(&m.user))).await?;
        tx.delete(&key).await?;
        if purge {
            tx.ops.push(FileOp::Remove(self.layout.home(&m)));
        }
        let mut out = ed.clone();
        remove_children(&mut out, "primarySmtpAddress");
        out.push(text("primarySmtpAddress", m.primary()));
        Ok((
            out,
            format!(
                "{} the mailbox of {} ({})",
                if purge { "delete" } else { "disable" },
                m.user,
                m.primary()
            ),
        ))
    }

    async fn move_mailbox(
        &self,
        call: &Call,
        tx: &mut Tx<'_>,
    ) -> Result<(Element, String), ProviderError> {
        let ed = &call.execute_data;
        let user = req_field(ed, "user", "user")?;
        let (s, n) = match store_input(ed)? {
            (Some(s), Some(n)) => (s, n),
            _ => {
                return Err(ProviderError::invalid(
                    "input `mailStore` needs serverName and mailStoreName (the target store)",
                ))
            }
        };
        let (key, mut m) = self.mailbox_of(tx, &user).await?;
        let (server, store) = self.store(call, &s, &n).await?;
        let from = self.layout.home(&m);
        let moved =
            !(m.server.eq_ignore_ascii_case(&server) && m.store.eq_ignore_ascii_case(&store));
        let was = format!("{}/{}", m.server, m.store);
        if moved {
            m.server = server.clone();
            m.store = store.clone();
            let to = self.layout.home(&m);
            tx.put(&key, &m).await?;
            tx.ops.push(FileOp::Move { from, to });
        }
        let mut out = ed.clone();
        remove_children(&mut out, "moved");
        out.push(text("moved", moved));
        Ok((
            out,
            if moved {
                format!(
                    "move the mailbox of {} from {was} to {server}/{store}",
                    m.primary()
                )
            } else {
                format!(
                    "the mailbox of {} is already on {server}/{store}",
                    m.primary()
                )
            },
        ))
    }

    async fn set_quota(
        &self,
        call: &Call,
        tx: &mut Tx<'_>,
    ) -> Result<(Element, String), ProviderError> {
        let ed = &call.execute_data;
        let user = req_field(ed, "user", "user")?;
        let q = parse_size(
            "quotaKB",
            &req_field(ed, "quotaKB", "quotaKB")?,
            "kilobytes",
        )?;
        let (key, mut m) = self.mailbox_of(tx, &user).await?;
        let governing = crate::plans::governing_limit(
            &call.state.read_of(crate::plans::PROVIDER),
            field(ed, "planName").or(m.plan.clone()).as_deref(),
            &m.org_dn,
            "mailboxQuotaKB",
        )
        .await?;
        if let Some((plan, Some(limit))) = governing {
            if q > limit {
                return Err(ProviderError::Permanent {
                    code: E_PLAN_LIMIT,
                    message: format!(
                        "a quota of {q} KB is beyond plan {plan}: its mailboxQuotaKB is {limit}"
                    ),
                });
            }
        }
        let was = m.quota_kb;
        m.quota_kb = q;
        tx.put(&key, &m).await?;
        Ok((
            ed.clone(),
            format!("set the quota of {} to {q} KB (was {was} KB)", m.primary()),
        ))
    }

    async fn set_oof(
        &self,
        ed: &Element,
        tx: &mut Tx<'_>,
    ) -> Result<(Element, String), ProviderError> {
        let user = req_field(ed, "user", "user")?;
        let enabled = flag("enabled", field(ed, "enabled"), true)?;
        let oof = if enabled {
            let message = ed
                .child("message")
                .map(Element::string_value)
                .filter(|m| !m.trim().is_empty())
                .ok_or_else(|| {
                    ProviderError::invalid(
                        "input `message` is required when out-of-office is enabled",
                    )
                })?;
            let message = free_text("message", &message, MAX_MESSAGE)?;
            let subject = match ed.child("subject").map(Element::string_value) {
                Some(s) if !s.trim().is_empty() => {
                    free_text("subject", s.trim(), MAX_SUBJECT)?.replace('\n', " ")
                }
                _ => "Out of office".to_string(),
            };
            let days = match field(ed, "days") {
                None => 1,
                Some(d) => match d.parse::<u32>() {
                    Ok(n) if (1..=30).contains(&n) => n,
                    _ => {
                        return Err(ProviderError::invalid(format!(
                            "input `days` must be a whole number from 1 to 30, got {d:?}"
                        )))
                    }
                },
            };
            Some(OofRec {
                subject,
                message,
                days,
            })
        } else {
            None
        };
        let (key, mut m) = self.mailbox_of(tx, &user).await?;
        m.oof = oof;
        tx.put(&key, &m).await?;
        Ok((
            ed.clone(),
            format!(
                "{} out-of-office for {}",
                if enabled { "set" } else { "clear" },
                m.primary()
            ),
        ))
    }

    async fn get_mailbox(
        &self,
        ed: &Element,
        tx: &mut Tx<'_>,
    ) -> Result<(Element, String), ProviderError> {
        let user = req_field(ed, "user", "user")?;
        let (_, m) = self.mailbox_of(tx, &user).await?;
        let mut e = Element::new("mailbox");
        e.push(text("user", &m.user));
        e.push(text("organization", &m.org_dn));
        e.push(text("alias", &m.alias));
        e.push(text("displayName", &m.display));
        e.push(text("primarySmtpAddress", m.primary()));
        let mut addrs = Element::new("emailAddresses");
        for a in &m.addresses {
            addrs.push(text("value", a));
        }
        e.push(addrs);
        e.push(text("quotaKB", m.quota_kb));
        if !m.server.is_empty() {
            let mut ms = Element::new("mailStore");
            ms.push(text("serverName", &m.server));
            ms.push(text("mailStoreName", &m.store));
            e.push(ms);
        }
        e.push(text("outOfOffice", m.oof.is_some()));
        e.push(text(
            "homeDirectory",
            self.layout.home(&m).display().to_string(),
        ));
        if let Some(r) = &m.resource {
            e.push(text("resourceType", &r.kind));
            if let Some(c) = r.capacity {
                e.push(text("resourceCapacity", c));
            }
        }
        if let Some(a) = &m.allocation {
            let mut x = Element::new("allocation");
            x.push(text("organization", &a.organization));
            x.push(text("mailbox", &a.mailbox));
            e.push(x);
        }
        if let Some(c) = &m.plan_charge {
            let mut x = Element::new("planCharge");
            x.push(text("customerName", &c.customer));
            x.push(text("limit", &c.limit));
            x.push(text("amount", c.amount));
            e.push(x);
        }
        let mut out = ed.clone();
        remove_children(&mut out, "mailbox");
        out.push(e);
        Ok((out, format!("read the mailbox of {}", m.primary())))
    }
}

fn dn_id(dn: &str) -> String {
    Dn::parse(dn)
        .map(|d| d.normalized())
        .unwrap_or_else(|_| dn.to_lowercase())
}

/// `serverName` + `mailStoreName`, inside `mailStore` or beside it (both or neither).
fn store_input(ed: &Element) -> Result<(Option<String>, Option<String>), ProviderError> {
    let ms = ed.child("mailStore");
    let get = |n: &str| ms.and_then(|m| field(m, n)).or_else(|| field(ed, n));
    match (get("serverName"), get("mailStoreName")) {
        (Some(s), Some(n)) => Ok((Some(s), Some(n))),
        // HMC's `database`: `SERVER\Store` or `server/store`.
        (None, None) => match field(ed, "database") {
            None => Ok((None, None)),
            Some(d) => match d.split_once(['\\', '/']) {
                Some((s, n)) if !s.trim().is_empty() && !n.trim().is_empty() => {
                    Ok((Some(s.trim().to_string()), Some(n.trim().to_string())))
                }
                _ => Err(ProviderError::invalid(format!(
                    "input `database` must be `server\\store` or `server/store`, got {d:?}"
                ))),
            },
        },
        _ => Err(ProviderError::invalid(
            "inputs `serverName` and `mailStoreName` go together (the mail store is named by both)",
        )),
    }
}

/// Calendar-processing inputs of Exchange's resource mailboxes that Provisio does not
/// implement (refused by name rather than ignored).
const CALENDAR_INPUTS: [&str; 9] = [
    "automateProcessing",
    "allBookInPolicy",
    "allRequestInPolicy",
    "allRequestOutOfPolicy",
    "bookInPolicy",
    "requestInPolicy",
    "requestOutOfPolicy",
    "resourceDelegates",
    "resourceCustom",
];

/// Largest resource capacity (seats of a room, units of equipment).
const MAX_CAPACITY: u64 = 1_000_000;

/// `resourceType` (Room | Equipment) and `resourceCapacity`: required for
/// `CreateResourceMailbox`, optional (absent: a user mailbox) for `CreateMailbox`.
fn resource_input(ed: &Element, required: bool) -> Result<Option<ResourceRec>, ProviderError> {
    for name in CALENDAR_INPUTS {
        if ed.child(name).is_some() {
            return Err(ProviderError::invalid(format!(
                "input `{name}` is not implemented: Provisio's resource mailboxes have no calendar processing (resourceType and resourceCapacity only)"
            )));
        }
    }
    let capacity = field(ed, "resourceCapacity")
        .map(|c| match c.trim().parse::<u64>() {
            Ok(n) if n <= MAX_CAPACITY => Ok(n),
            _ => Err(ProviderError::invalid(format!(
                "input `resourceCapacity` must be a whole number from 0 to {MAX_CAPACITY}, got {c:?}"
            ))),
        })
        .transpose()?;
    match field(ed, "resourceType") {
        Some(t) => Ok(Some(ResourceRec {
            kind: one_of("resourceType", &t, &["Room", "Equipment"])?.to_string(),
            capacity,
        })),
        None if required => Err(ProviderError::invalid(
            "input `resourceType` is required (Room or Equipment)",
        )),
        None if capacity.is_some() => Err(ProviderError::invalid(
            "input `resourceCapacity` needs `resourceType` (a user mailbox has no capacity)",
        )),
        None => Ok(None),
    }
}

/// `allocation{organization, mailbox}`: the resource manager's names of the mailbox's
/// allocation, recorded so that deleting the mailbox releases exactly that one.
fn allocation_input(ed: &Element) -> Result<Option<AllocationRec>, ProviderError> {
    let Some(a) = ed.child("allocation") else {
        return Ok(None);
    };
    let get = |n: &str| {
        field(a, n)
            .map(|v| crate::bookkeeping::check_name(&format!("allocation/{n}"), &v, 1024))
            .transpose()?
            .ok_or_else(|| {
                ProviderError::invalid(format!(
                    "input `allocation/{n}` is required with `allocation` (the resource manager's organization and mailbox)"
                ))
            })
    };
    Ok(Some(AllocationRec {
        organization: get("organization")?,
        mailbox: get("mailbox")?,
    }))
}

/// `planCharge{customerName, limit, amount?}`: a Managed Plans count the mailbox took.
fn charge_input(ed: &Element) -> Result<Option<ChargeRec>, ProviderError> {
    let Some(c) = ed.child("planCharge") else {
        return Ok(None);
    };
    let customer = field(c, "customerName")
        .map(|v| crate::bookkeeping::check_name("planCharge/customerName", &v, 1024))
        .transpose()?
        .ok_or_else(|| {
            ProviderError::invalid("input `planCharge/customerName` is required with `planCharge`")
        })?;
    let limit = req_field(c, "limit", "planCharge/limit")?;
    if !(limit.starts_with("max") && limit.chars().all(|c| c.is_ascii_alphanumeric())) {
        return Err(ProviderError::invalid(format!(
            "input `planCharge/limit` must be a counted limit's name (maxMailboxes), got {limit:?}"
        )));
    }
    let amount = match field(c, "amount") {
        None => 1,
        Some(a) => parse_size("planCharge/amount", &a, "places")?,
    };
    Ok(Some(ChargeRec {
        customer,
        limit,
        amount,
    }))
}

/// The accepted domain `d`, usable by `org` (its owner, or an organization under the
/// reseller that owns it and shares it).
async fn usable_domain(tx: &Tx<'_>, d: &str, org: &Org) -> Result<DomainRec, ProviderError> {
    let rec: DomainRec = tx.get(&domain_key(d)).await?.ok_or_else(|| {
        not_found(format!(
            "{d} is not an accepted domain (Exchange 2007 Provider `CreateSMTPDomain` adds it to organization {})",
            org.dn
        ))
    })?;
    if rec.owner == org.id || rec.sharers.contains(&org.id) {
        Ok(rec)
    } else {
        Err(unavailable(d))
    }
}

/// Frees addresses (and counts them off their domains).
async fn release_addresses(
    tx: &mut Tx<'_>,
    addresses: &[String],
    org: &str,
) -> Result<(), ProviderError> {
    let mut per: BTreeMap<String, u64> = BTreeMap::new();
    for a in addresses {
        if let Some((_, d)) = a.split_once('@') {
            *per.entry(d.to_string()).or_default() += 1;
        }
    }
    for (d, n) in per {
        if let Some(mut r) = tx.get::<DomainRec>(&domain_key(&d)).await? {
            let left = r.counts.get(org).copied().unwrap_or(0).saturating_sub(n);
            if left == 0 {
                r.counts.remove(org);
            } else {
                r.counts.insert(org.to_string(), left);
            }
            tx.put(&domain_key(&d), &r).await?;
        }
    }
    for a in addresses {
        tx.delete(&address_key(a)).await?;
    }
    Ok(())
}

async fn create_domain(ed: &Element, tx: &mut Tx<'_>) -> Result<(Element, String), ProviderError> {
    let org = org_input(ed)?;
    let d = domain_name("domainName", &req_field(ed, "domainName", "domainName")?)?;
    let kind = match field(ed, "domainType") {
        None => "Authoritative",
        Some(t) => one_of("domainType", &t, &DOMAIN_TYPES)?,
    };
    let key = domain_key(&d);
    let mut out = ed.clone();
    remove_children(&mut out, "shared");
    match tx.get::<DomainRec>(&key).await? {
        None => {
            tx.put(
                &key,
                &DomainRec {
                    name: d.clone(),
                    kind: kind.to_string(),
                    owner: org.id.clone(),
                    owner_dn: org.dn.to_string(),
                    sharers: Vec::new(),
                    counts: BTreeMap::new(),
                },
            )
            .await?;
            out.push(text("shared", false));
            Ok((out, format!("accept {d} ({kind}) for {}", org.dn)))
        }
        Some(r) if r.owner == org.id || r.sharers.contains(&org.id) => Err(exists(format!(
            "{d} is already an accepted domain of {}",
            org.dn
        ))),
        Some(mut r) => {
            // A reseller's domain may be used by the organizations under it.
            let owner = Dn::parse(&r.owner_dn).ok();
            if owner.is_some_and(|o| org.dn.is_under(&o)) {
                r.sharers.push(org.id.clone());
                tx.put(&key, &r).await?;
                out.push(text("shared", true));
                Ok((out, format!("share {d} of {} with {}", r.owner_dn, org.dn)))
            } else {
                Err(unavailable(&d))
            }
        }
    }
}

async fn delete_domain(ed: &Element, tx: &mut Tx<'_>) -> Result<(Element, String), ProviderError> {
    let org = org_input(ed)?;
    let d = domain_name("domainName", &req_field(ed, "domainName", "domainName")?)?;
    let key = domain_key(&d);
    let mut r: DomainRec = tx
        .get(&key)
        .await?
        .ok_or_else(|| not_found(format!("{d} is not an accepted domain")))?;
    if r.owner != org.id && !r.sharers.contains(&org.id) {
        return Err(unavailable(&d));
    }
    if let Some(n) = r.counts.get(&org.id).filter(|n| **n > 0) {
        return Err(ProviderError::invalid(format!(
            "{d} still holds {n} e-mail addresses of {}: remove those first",
            org.dn
        )));
    }
    if r.owner == org.id {
        if !r.sharers.is_empty() {
            return Err(ProviderError::invalid(format!(
                "{d} is still used by {} organizations under {}",
                r.sharers.len(),
                org.dn
            )));
        }
        tx.delete(&key).await?;
    } else {
        r.sharers.retain(|s| s != &org.id);
        tx.put(&key, &r).await?;
    }
    Ok((
        ed.clone(),
        format!("remove the accepted domain {d} from {}", org.dn),
    ))
}

fn name_input(ed: &Element) -> Result<String, ProviderError> {
    display("name", &req_field(ed, "name", "name")?)
}

/// Resolves a member (an SMTP address of a mailbox or group of `org`) to the address the
/// group forwards to.
async fn member_address(
    tx: &Tx<'_>,
    org: &Org,
    at: &str,
    v: &str,
) -> Result<String, ProviderError> {
    let a = smtp_address(at, v)?;
    let holder = tx
        .get::<String>(&address_key(&a))
        .await?
        .ok_or_else(|| not_found(format!("member {a} is no mailbox or group")))?;
    if org_of_key(&holder) != Some(crate::bookkeeping::esc(&org.id).as_str()) {
        // Another tenant's object: said as if it did not exist.
        return Err(not_found(format!(
            "member {a} is no mailbox or group of {}",
            org.dn
        )));
    }
    if holder.starts_with("mbx/") {
        let m: MailboxRec = tx
            .get(&holder)
            .await?
            .ok_or_else(|| not_found(format!("member {a} vanished")))?;
        Ok(m.primary().to_string())
    } else {
        let g: GroupRec = tx
            .get(&holder)
            .await?
            .ok_or_else(|| not_found(format!("member {a} vanished")))?;
        Ok(g.address)
    }
}

async fn create_group(ed: &Element, tx: &mut Tx<'_>) -> Result<(Element, String), ProviderError> {
    let org = org_input(ed)?;
    let name = name_input(ed)?;
    let address = smtp_address(
        "emailAddress",
        &field(ed, "emailAddress")
            .or_else(|| field(ed, "primarySmtpAddress"))
            .ok_or_else(|| ProviderError::invalid("input `emailAddress` is required"))?,
    )?;
    let nick = match field(ed, "alias") {
        Some(a) => alias("alias", &a)?,
        None => default_alias("", &address)?,
    };
    let disp = field(ed, "displayName")
        .map(|d| display("displayName", &d))
        .transpose()?
        .unwrap_or_else(|| name.clone());
    let member_in = list_input(ed, "members", "member");
    let key = group_key(&org.id, &name);
    if tx.get::<GroupRec>(&key).await?.is_some() {
        return Err(exists(format!(
            "distribution group {name} already exists in {}",
            org.dn
        )));
    }
    let d = address
        .split_once('@')
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    let mut drec = usable_domain(tx, &d, &org).await?;
    if tx.get::<String>(&address_key(&address)).await?.is_some() {
        return Err(exists(format!(
            "the e-mail address {address} is already in use"
        )));
    }
    if tx.get::<String>(&alias_key(&nick)).await?.is_some() {
        return Err(exists(format!("the alias {nick} is already taken")));
    }
    let mut members = Vec::new();
    for (i, m) in member_in.iter().enumerate() {
        let a = member_address(tx, &org, &format!("members/member[{}]", i + 1), m).await?;
        if !members.contains(&a) {
            members.push(a);
        }
    }
    *drec.counts.entry(org.id.clone()).or_default() += 1;
    tx.put(&domain_key(&d), &drec).await?;
    tx.put(&address_key(&address), &key).await?;
    tx.put(&alias_key(&nick), &key).await?;
    let n = members.len();
    tx.put(
        &key,
        &GroupRec {
            org: org.id.clone(),
            org_dn: org.dn.to_string(),
            name: name.clone(),
            alias: nick,
            display: disp,
            address: address.clone(),
            members,
        },
    )
    .await?;
    Ok((
        ed.clone(),
        format!(
            "create distribution group {name} <{address}> with {n} members in {}",
            org.dn
        ),
    ))
}

async fn delete_group(ed: &Element, tx: &mut Tx<'_>) -> Result<(Element, String), ProviderError> {
    let org = org_input(ed)?;
    let name = name_input(ed)?;
    let key = group_key(&org.id, &name);
    let g: GroupRec = tx.get(&key).await?.ok_or_else(|| {
        not_found(format!(
            "distribution group {name} does not exist in {}",
            org.dn
        ))
    })?;
    release_addresses(tx, std::slice::from_ref(&g.address), &org.id).await?;
    tx.delete(&alias_key(&g.alias)).await?;
    tx.delete(&key).await?;
    Ok((
        ed.clone(),
        format!("delete distribution group {name} of {}", org.dn),
    ))
}

async fn group_member(
    ed: &Element,
    tx: &mut Tx<'_>,
    add: bool,
) -> Result<(Element, String), ProviderError> {
    let org = org_input(ed)?;
    let name = name_input(ed)?;
    let member = field(ed, "member")
        .ok_or_else(|| ProviderError::invalid("input `member` is required (an SMTP address)"))?;
    let key = group_key(&org.id, &name);
    let mut g: GroupRec = tx.get(&key).await?.ok_or_else(|| {
        not_found(format!(
            "distribution group {name} does not exist in {}",
            org.dn
        ))
    })?;
    if add {
        let a = member_address(tx, &org, "member", &member).await?;
        if a == g.address {
            return Err(ProviderError::invalid(format!(
                "group {name} cannot be its own member"
            )));
        }
        if g.members.contains(&a) {
            return Err(exists(format!("{a} is already a member of {name}")));
        }
        g.members.push(a.clone());
        tx.put(&key, &g).await?;
        Ok((ed.clone(), format!("add {a} to {name}")))
    } else {
        let a = smtp_address("member", &member)?;
        if !g.members.contains(&a) {
            return Err(not_found(format!("{a} is not a member of {name}")));
        }
        g.members.retain(|m| m != &a);
        tx.put(&key, &g).await?;
        Ok((ed.clone(), format!("remove {a} from {name}")))
    }
}

async fn create_contact(ed: &Element, tx: &mut Tx<'_>) -> Result<(Element, String), ProviderError> {
    let org = org_input(ed)?;
    let name = name_input(ed)?;
    let external = smtp_address(
        "externalEmailAddress",
        &req_field(ed, "externalEmailAddress", "externalEmailAddress")?,
    )?;
    let nick = match field(ed, "alias") {
        Some(a) => alias("alias", &a)?,
        None => default_alias("contact.", &external)?,
    };
    let disp = field(ed, "displayName")
        .map(|d| display("displayName", &d))
        .transpose()?
        .unwrap_or_else(|| name.clone());
    let key = contact_key(&org.id, &name);
    if tx.get::<ContactRec>(&key).await?.is_some() {
        return Err(exists(format!(
            "contact {name} already exists in {}",
            org.dn
        )));
    }
    if tx.get::<String>(&alias_key(&nick)).await?.is_some() {
        return Err(exists(format!("the alias {nick} is already taken")));
    }
    tx.put(&alias_key(&nick), &key).await?;
    tx.put(
        &key,
        &ContactRec {
            org: org.id.clone(),
            org_dn: org.dn.to_string(),
            name: name.clone(),
            alias: nick,
            display: disp,
            external: external.clone(),
        },
    )
    .await?;
    Ok((
        ed.clone(),
        format!("create contact {name} <{external}> in {}", org.dn),
    ))
}

async fn delete_contact(ed: &Element, tx: &mut Tx<'_>) -> Result<(Element, String), ProviderError> {
    let org = org_input(ed)?;
    let name = name_input(ed)?;
    let key = contact_key(&org.id, &name);
    let c: ContactRec = tx
        .get(&key)
        .await?
        .ok_or_else(|| not_found(format!("contact {name} does not exist in {}", org.dn)))?;
    tx.delete(&alias_key(&c.alias)).await?;
    tx.delete(&key).await?;
    Ok((ed.clone(), format!("delete contact {name} of {}", org.dn)))
}

/// The organization's address list: its mailboxes, groups and contacts, no one else's.
async fn address_list(ed: &Element, tx: &mut Tx<'_>) -> Result<(Element, String), ProviderError> {
    let org = org_input(ed)?;
    let o = crate::bookkeeping::esc(&org.id);
    // (type, display name, alias, address, resource, name: the key DeleteDistributionList
    // and DeleteContact take — a mailbox is named by its user)
    type Entry = (
        String,
        String,
        String,
        String,
        Option<ResourceRec>,
        Option<String>,
    );
    let mut entries: Vec<Entry> = Vec::new();
    for (_, m) in tx.r.scan::<MailboxRec>(&format!("mbx/{o}/")).await? {
        entries.push((
            "mailbox".into(),
            m.display.clone(),
            m.alias.clone(),
            m.primary().to_string(),
            m.resource.clone(),
            None,
        ));
    }
    for (_, g) in tx.r.scan::<GroupRec>(&format!("grp/{o}/")).await? {
        entries.push((
            "group".into(),
            g.display,
            g.alias,
            g.address,
            None,
            Some(g.name),
        ));
    }
    for (_, c) in tx.r.scan::<ContactRec>(&format!("contact/{o}/")).await? {
        entries.push((
            "contact".into(),
            c.display,
            c.alias,
            c.external,
            None,
            Some(c.name),
        ));
    }
    entries.sort_by(|a, b| {
        a.1.to_lowercase()
            .cmp(&b.1.to_lowercase())
            .then(a.3.cmp(&b.3))
    });
    let mut list = Element::new("addressList");
    list.set_attr("organization", org.dn.to_string());
    for (kind, disp, nick, addr, resource, name) in &entries {
        let mut e = Element::new("entry");
        e.push(text("type", kind));
        if let Some(n) = name {
            e.push(text("name", n));
        }
        e.push(text("displayName", disp));
        e.push(text("alias", nick));
        e.push(text("emailAddress", addr));
        if let Some(r) = resource {
            e.push(text("resourceType", &r.kind));
            if let Some(c) = r.capacity {
                e.push(text("resourceCapacity", c));
            }
        }
        list.push(e);
    }
    let mut out = ed.clone();
    remove_children(&mut out, "addressList");
    out.push(list);
    Ok((
        out,
        format!(
            "list the {} address-list entries of {}",
            entries.len(),
            org.dn
        ),
    ))
}

async fn org_domains(ed: &Element, tx: &mut Tx<'_>) -> Result<(Element, String), ProviderError> {
    let org = org_input(ed)?;
    let mut list = Element::new("SMTPDomains");
    let mut n = 0;
    for (_, d) in tx.r.scan::<DomainRec>("domain/").await? {
        if d.owner == org.id || d.sharers.contains(&org.id) {
            let mut e = Element::new("SMTPDomain");
            e.push(text("domainName", &d.name));
            e.push(text("domainTypeName", &d.kind));
            e.push(text("shared", d.owner != org.id));
            list.push(e);
            n += 1;
        }
    }
    let mut out = ed.clone();
    remove_children(&mut out, "SMTPDomains");
    out.push(list);
    Ok((out, format!("list the {n} accepted domains of {}", org.dn)))
}

fn is_read(procedure: &str) -> bool {
    procedure.starts_with("Get")
}

#[async_trait]
impl Provider for ExchangeProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn namespace(&self) -> String {
        NAMESPACE.to_string()
    }

    /// `execute` writes provider state only; the files are rewritten at `commit` from the
    /// committed state and rebuilt from it after a crash, so a call lost in a crash loses
    /// nothing outside the store (see the module documentation).
    fn effects_in_state_only(&self) -> bool {
        true
    }

    fn procedures(&self) -> Vec<ProcedureSpec> {
        let w = ProcKind::TwoPhase;
        let rd = ProcKind::Read;
        let sp = |name: &str, kind: ProcKind, d: &str, inputs: Vec<InputSpec>| ProcedureSpec {
            name: name.to_string(),
            kind,
            undo: if kind == ProcKind::Read {
                UndoKind::Nothing
            } else {
                UndoKind::Reversible
            },
            description: d.to_string(),
            inputs,
        };
        let org = || {
            input(
                "organization",
                "string",
                true,
                "the organization (tenant): its LDAP path or DN",
            )
        };
        let user = || {
            input(
                "user",
                "string",
                true,
                "the mailbox's user: LDAP path or DN (or one of its SMTP addresses)",
            )
        };
        let name = || {
            input(
                "name",
                "string",
                true,
                "the object's name in its organization",
            )
        };
        let store = || {
            input("mailStore", "map", false, "serverName + mailStoreName of a store registered with the Exchange 2007 Resource Manager")
        };
        let mailbox_inputs = |resource: bool| {
            vec![
                input("user", "string", true, "the directory user: LDAP path, DN or userPrincipalName"),
                input("emailAddresses", "list", true, "value elements; the first is primary"),
                input("alias", "string", false, "the alias (mailNickname); default the primary address's local part"),
                input("quotaKB", "int", false, "the mailbox quota (KB); default the plan's mailboxQuotaKB"),
                input("planName", "string", false, "the Managed Plans plan whose mailboxQuotaKB bounds the quota; default the organization's plan"),
                input("organization", "string", false, "the tenant; default the user's container"),
                input("displayName", "string", false, "default the user's displayName or cn"),
                store(),
                input("database", "string", false, "the store as `server\\store` or `server/store` (instead of mailStore)"),
                input("resourceType", "string", resource, if resource { "Room or Equipment" } else { "Room or Equipment: a resource mailbox (as CreateResourceMailbox)" }),
                input("resourceCapacity", "int", false, "the resource's capacity (seats of a room), 0 to 1000000"),
                input("allocation", "map", false, "organization + mailbox: the resource manager's allocation made for this mailbox (recorded; GetMailbox returns it, so that deleting the mailbox releases exactly it)"),
                input("planCharge", "map", false, "customerName + limit (+ amount, default 1): a Managed Plans count taken for this mailbox (recorded like allocation)"),
            ]
        };
        vec![
            sp("CreateMailbox", w, "Mailbox-enables an existing directory user: emailAddresses/value (the first is the primary SMTP address; every domain an accepted domain of the organization), alias, quotaKB (at most the plan's mailboxQuotaKB; default it), mailStore; undo = disable. Outputs primarySmtpAddress, quotaKB, mailStore, homeDirectory.", mailbox_inputs(false)),
            sp("CreateResourceMailbox", w, "Mailbox-enables an existing (disabled) directory user as a resource: resourceType Room or Equipment, resourceCapacity; otherwise as CreateMailbox (addresses, quota, store, in the organization's address list with its type). Calendar processing (automateProcessing, booking policies) is not implemented and refused. Undo = disable.", mailbox_inputs(true)),
            sp("DisableMailbox", w, "Removes the mailbox from the mail system (addresses, alias, group memberships); the mail stays on disk (a disconnected mailbox).", vec![user()]),
            sp("DeleteMailbox", w, "Removes the mailbox and, at commit, its mail.", vec![user()]),
            sp("MoveMailbox", w, "Moves the mailbox to another registered store (its folder moves at commit); outputs moved. Reversible until commit.", vec![user(), store()]),
            sp("SetMailboxQuota", w, "Changes the quota (at most the plan's mailboxQuotaKB).", vec![user(), input("quotaKB", "int", true, "the new quota (KB)")]),
            sp("SetOutOfOffice", w, "Sets (enabled, default true: subject, message, days 1-30) or clears the out-of-office reply, a Sieve vacation script answering only senders of the same organization.", vec![
                user(),
                input("enabled", "bool", false, "true (default) or false"),
                input("subject", "string", false, "default `Out of office`"),
                input("message", "string", false, "the reply's text (required when enabled)"),
                input("days", "int", false, "answer each sender at most once per this many days (1-30, default 1)"),
            ]),
            sp("CreateSMTPDomain", w, "Accepts a domain for an organization (domainType Authoritative (default), InternalRelay or ExternalRelay). A domain of another organization is refused (`The SMTP Domain … is not available`), except a reseller's domain for an organization under it (outputs shared). Undo = DeleteSMTPDomain.", vec![
                org(),
                input("domainName", "string", true, "the domain"),
                input("domainType", "string", false, "Authoritative | InternalRelay | ExternalRelay"),
            ]),
            sp("DeleteSMTPDomain", w, "Removes an accepted domain (or an organization's share of a reseller's), refused while addresses of the organization use it.", vec![org(), input("domainName", "string", true, "the domain")]),
            sp("CreateDistributionList", w, "Creates a distribution group: emailAddress (in an accepted domain of the organization), alias, displayName, members/member (SMTP addresses of the organization's mailboxes or groups).", vec![
                org(), name(),
                input("emailAddress", "string", true, "the group's SMTP address"),
                input("alias", "string", false, "default the address's local part"),
                input("displayName", "string", false, "default the name"),
                input("members", "list", false, "member elements: SMTP addresses"),
            ]),
            sp("DeleteDistributionList", w, "Deletes a distribution group.", vec![org(), name()]),
            sp("AddDistributionListMember", w, "Adds a member (an SMTP address of a mailbox or group of the same organization).", vec![org(), name(), input("member", "string", true, "SMTP address")]),
            sp("RemoveDistributionListMember", w, "Removes a member.", vec![org(), name(), input("member", "string", true, "SMTP address")]),
            sp("CreateContact", w, "Creates a mail contact (an external address in the organization's address list).", vec![
                org(), name(),
                input("externalEmailAddress", "string", true, "the contact's address"),
                input("alias", "string", false, "default contact.<local part>"),
                input("displayName", "string", false, "default the name"),
            ]),
            sp("DeleteContact", w, "Deletes a mail contact.", vec![org(), name()]),
            sp("GetMailbox", rd, "Reads a mailbox: outputs mailbox{user, organization, alias, displayName, primarySmtpAddress, emailAddresses, quotaKB, mailStore, outOfOffice, homeDirectory, resourceType, resourceCapacity, allocation, planCharge} (the last four when set).", vec![user()]),
            sp("GetAddressList", rd, "The organization's address list (address-book segregation): addressList/entry{type, name? (groups and contacts), displayName, alias, emailAddress, resourceType?, resourceCapacity?} of its own mailboxes (resource mailboxes with their type), groups and contacts only.", vec![org()]),
            sp("GetOrganizationDomains", rd, "The organization's accepted domains: SMTPDomains/SMTPDomain{domainName, domainTypeName, shared}.", vec![org()]),
        ]
    }

    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        let read = is_read(&call.context.procedure);
        if !read {
            self.ensure_loaded(&call.state).await?;
        }
        let mut tx = Tx::new(&call.state);
        let (execute_data, _) = self.run(&call, &mut tx).await?;
        // The engine restores the state a rolled-back step wrote; the record tells `commit`
        // what to apply to the files.
        let undo = (!read).then(|| tx.record());
        Ok(Outcome { execute_data, undo })
    }

    async fn undo(&self, _done: Done) -> Result<(), ProviderError> {
        // Nothing reached the files before commit; the engine reverses the state.
        Ok(())
    }

    async fn recover(&self, _call: &Call) -> Result<Option<Element>, ProviderError> {
        // A call's only effect before commit is its state writes, which an attempt that did
        // not return keeps nothing of.
        Ok(None)
    }

    async fn preview(&self, call: &Call) -> Result<Preview, ProviderError> {
        let mut tx = Tx::new(&call.state);
        preview_of(
            self.run(call, &mut tx).await.map(|(_, s)| s),
            is_read(&call.context.procedure),
        )
    }

    /// The mail root must be there and writable (the commit will write there).
    async fn prepare(&self, _done: &Done) -> Result<(), ProviderError> {
        let root = self.layout.root.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&root)?;
            rustix::fs::access(&root, rustix::fs::Access::WRITE_OK).map_err(std::io::Error::from)
        })
        .await
        .map_err(|e| ProviderError::transient(format!("prepare panicked: {e}")))?
        .map_err(|e| io_error("the mail root cannot be written", e))
    }

    /// Applies the call's changes to the committed view and renders the files.
    async fn commit(&self, done: &Done) -> Result<(), ProviderError> {
        let (changes, ops) = parse_record(&done.undo);
        {
            let mut known = lock(&self.known_stores);
            for (k, v) in &changes {
                if let (true, Some(v)) = (k.starts_with("mbx/"), v) {
                    if let Ok(m) = serde_json::from_slice::<MailboxRec>(v) {
                        if !m.server.is_empty() {
                            known.insert(
                                format!("{}/{}", m.server.to_lowercase(), m.store.to_lowercase()),
                                (m.server, m.store),
                            );
                        }
                    }
                }
            }
        }
        let layout = self.layout.clone();
        let slot = self.view.clone();
        let rendered = self.rendered.clone();
        tokio::task::spawn_blocking(move || {
            // Apply (quick, in memory), then render: commits that arrive while one renders
            // apply theirs meanwhile, and the next render writes them all at once (a group
            // commit for the files); a commit returns once a render covered its changes.
            let mine = {
                let mut g = lock(&slot);
                let Some(view) = g.as_mut() else {
                    return Err(std::io::Error::other(
                        "the committed view was never loaded (no write call ran in this process)",
                    ));
                };
                for (k, v) in changes {
                    if k.starts_with("mbx/") {
                        view.pending_touched.insert(k.clone());
                    }
                    match v {
                        Some(v) => view.records.insert(k, v),
                        None => view.records.remove(&k),
                    };
                }
                view.pending_ops.extend(ops);
                view.generation += 1;
                view.generation
            };
            let mut done_up_to = lock(&rendered);
            if *done_up_to >= mine {
                return Ok(());
            }
            let mut g = lock(&slot);
            let Some(view) = g.as_mut() else {
                return Err(std::io::Error::other("the committed view vanished"));
            };
            let touched = std::mem::take(&mut view.pending_touched);
            let ops = std::mem::take(&mut view.pending_ops);
            match view.render(&layout, Some(&touched), &ops) {
                Ok(()) => {
                    *done_up_to = view.generation;
                    Ok(())
                }
                Err(e) => {
                    // Kept for the next render.
                    view.pending_touched.extend(touched);
                    let later = std::mem::replace(&mut view.pending_ops, ops);
                    view.pending_ops.extend(later);
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| ProviderError::transient(format!("commit panicked: {e}")))?
        .map_err(|e| io_error("rendering the mail files", e))
    }
}
