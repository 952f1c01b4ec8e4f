//! The LDAP operations of the ldap backend: a pool of bound connections per configured
//! server (deadpool), add / modify / delete / rename / read / paged search, passwords
//! (AD `unicodePwd`, OpenLDAP Password Modify) and enable/disable, every failure mapped
//! to an [`LdapErrorKind`] with a message that names the object.
//!
//! The service account's password is read from its file each time a connection is made
//! (so a rotated file takes effect), is sent only in the bind, and never appears in an
//! error or a log line.

use super::error::{check, from_client, from_result, LdapErrorKind, LdapOpError};
use deadpool::managed::{self, Metrics, Pool, RecycleError, RecycleResult};
use ldap3::adapters::{EntriesOnly, PagedResults};
use ldap3::exop::PasswordModify;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How connections are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain LDAP (`ldap://`). Passwords are refused unless explicitly allowed.
    None,
    /// `ldap://` upgraded with StartTLS before the bind.
    StartTls,
    /// TLS from the first byte (`ldaps://`).
    Ldaps,
}

impl TlsMode {
    /// Parses `none`, `starttls` or `ldaps`.
    pub fn parse(text: &str) -> Option<TlsMode> {
        match text.to_ascii_lowercase().as_str() {
            "none" | "plain" => Some(TlsMode::None),
            "starttls" => Some(TlsMode::StartTls),
            "ldaps" => Some(TlsMode::Ldaps),
            _ => None,
        }
    }
}

/// Which kind of server: the attribute and password conventions differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Active Directory (or Samba AD): `unicodePwd`, `userAccountControl`, `user`/`group`.
    Ad,
    /// OpenLDAP with `packaging/ldap/provisio-ad.schema`: inetOrgPerson + provisioAccount,
    /// provisioGroup, Password Modify.
    OpenLdap,
}

impl Flavour {
    /// Parses `ad` or `openldap`.
    pub fn parse(text: &str) -> Option<Flavour> {
        match text.to_ascii_lowercase().as_str() {
            "ad" | "activedirectory" | "samba" => Some(Flavour::Ad),
            "openldap" | "slapd" => Some(Flavour::OpenLdap),
            _ => None,
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavour::Ad => "ad",
            Flavour::OpenLdap => "openldap",
        })
    }
}

/// The settings of the ldap backend (`[providers.directory.ldap]`).
#[derive(Clone)]
pub struct LdapSettings {
    /// Server URLs (`ldap://host:port`, `ldaps://host`) or bare host names (the scheme
    /// then follows [`LdapSettings::tls`]). A transaction uses one of them throughout.
    pub servers: Vec<String>,
    /// The service account's DN (or, on AD, its UPN).
    pub bind_dn: String,
    /// The file holding its password (a trailing newline is ignored).
    pub password_file: PathBuf,
    /// The naming context the provider works in.
    pub base_dn: String,
    /// How connections are protected.
    pub tls: TlsMode,
    /// Whether the server's certificate is checked (against [`LdapSettings::tls_ca_file`],
    /// else the system's roots).
    pub tls_verify: bool,
    /// PEM file of the CA certificates the servers' certificates are checked against
    /// (e.g. the AD enterprise CA); default the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// The server kind; detected from the root DSE when `None`.
    pub flavour: Option<Flavour>,
    /// Allow setting passwords over plain LDAP (off: a password is only sent over TLS).
    pub allow_plain_passwords: bool,
    /// Connections per server.
    pub pool_size: usize,
    /// Connect and per-operation timeout.
    pub timeout: Duration,
    /// Page size of searches (RFC 2696 paged results).
    pub page_size: i32,
}

impl fmt::Debug for LdapSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapSettings")
            .field("servers", &self.servers)
            .field("bind_dn", &self.bind_dn)
            .field("password_file", &self.password_file)
            .field("base_dn", &self.base_dn)
            .field("tls", &self.tls)
            .field("tls_verify", &self.tls_verify)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("flavour", &self.flavour)
            .finish_non_exhaustive()
    }
}

impl LdapSettings {
    /// Settings with the defaults: one server, StartTLS off, certificate checked, flavour
    /// detected, pool of 4, 10 s timeout, pages of 500.
    pub fn new(
        server: impl Into<String>,
        bind_dn: impl Into<String>,
        password_file: impl Into<PathBuf>,
        base_dn: impl Into<String>,
    ) -> Self {
        LdapSettings {
            servers: vec![server.into()],
            bind_dn: bind_dn.into(),
            password_file: password_file.into(),
            base_dn: base_dn.into(),
            tls: TlsMode::None,
            tls_verify: true,
            tls_ca_file: None,
            flavour: None,
            allow_plain_passwords: false,
            pool_size: 4,
            timeout: Duration::from_secs(10),
            page_size: 500,
        }
    }
}

/// An entry read from the directory: its DN and attributes (names as the server wrote
/// them, values as bytes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LdapEntry {
    /// The DN as the server returned it.
    pub dn: String,
    /// Attribute name → values.
    pub attrs: BTreeMap<String, Vec<Vec<u8>>>,
}

impl LdapEntry {
    /// The values of `attr` (case-insensitive name).
    pub fn get(&self, attr: &str) -> Option<&Vec<Vec<u8>>> {
        self.attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(attr))
            .map(|(_, v)| v)
    }

    /// The first value of `attr` as text (lossy).
    pub fn first(&self, attr: &str) -> Option<String> {
        self.get(attr)
            .and_then(|v| v.first())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    fn from_search(e: SearchEntry) -> LdapEntry {
        let mut attrs: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for (k, vs) in e.attrs {
            attrs
                .entry(k)
                .or_default()
                .extend(vs.into_iter().map(String::into_bytes));
        }
        for (k, vs) in e.bin_attrs {
            attrs.entry(k).or_default().extend(vs);
        }
        LdapEntry { dn: e.dn, attrs }
    }
}

/// One change of an attribute in a modify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LdapMod {
    /// Add these values.
    Add(String, Vec<Vec<u8>>),
    /// Delete these values (all values when empty).
    Delete(String, Vec<Vec<u8>>),
    /// Replace all values by these (delete the attribute when empty).
    Replace(String, Vec<Vec<u8>>),
}

impl LdapMod {
    fn to_ldap3(&self) -> Mod<Vec<u8>> {
        let set = |v: &Vec<Vec<u8>>| v.iter().cloned().collect::<HashSet<_>>();
        match self {
            LdapMod::Add(a, v) => Mod::Add(a.as_bytes().to_vec(), set(v)),
            LdapMod::Delete(a, v) => Mod::Delete(a.as_bytes().to_vec(), set(v)),
            LdapMod::Replace(a, v) => Mod::Replace(a.as_bytes().to_vec(), set(v)),
        }
    }
}

/// Search scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdapScope {
    /// The base object only.
    Base,
    /// Its children.
    OneLevel,
    /// It and everything below.
    Subtree,
}

/// `userAccountControl` flag: the account is disabled.
pub const UAC_ACCOUNTDISABLE: u32 = 0x2;
/// `userAccountControl` flag: a normal user account.
pub const UAC_NORMAL_ACCOUNT: u32 = 0x200;

/// Makes bound connections to one server for the pool.
struct Manager {
    url: String,
    settings: LdapSettings,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// The connection settings for `settings` (timeouts, StartTLS, verification, CA file).
fn conn_settings(
    settings: &LdapSettings,
    tls: &Option<Arc<rustls::ClientConfig>>,
) -> LdapConnSettings {
    let mut c = LdapConnSettings::new()
        .set_conn_timeout(settings.timeout)
        .set_starttls(settings.tls == TlsMode::StartTls)
        .set_no_tls_verify(!settings.tls_verify);
    if let (Some(cfg), true) = (tls, settings.tls_verify) {
        c = c.set_config(cfg.clone());
    }
    c
}

/// rustls with *ring* (as the daemon's TLS; no post-quantum key exchange, which the
/// directory servers do not offer either).
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A rustls client configuration trusting the CA certificates of a PEM file.
fn ca_config(path: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, LdapOpError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::CertificateDer;
    let bad = |m: String| {
        LdapOpError::new(
            LdapErrorKind::Invalid,
            format!(
                "[providers.directory.ldap] tls_ca_file {}: {m}",
                path.display()
            ),
        )
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(ring_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl managed::Manager for Manager {
    type Type = Ldap;
    type Error = LdapOpError;

    async fn create(&self) -> Result<Ldap, LdapOpError> {
        let s = &self.settings;
        let (conn, mut ldap) = LdapConnAsync::with_settings(conn_settings(s, &self.tls), &self.url)
            .await
            .map_err(|e| connect_error(&self.url, e))?;
        ldap3::drive!(conn);
        let password = read_password(&s.password_file).await?;
        let res = ldap
            .with_timeout(s.timeout)
            .simple_bind(&s.bind_dn, &password)
            .await
            .map_err(|e| from_client("bind as", &s.bind_dn, &self.url, e, false))?;
        check("bind as", &s.bind_dn, res).map_err(|mut e| {
            e.message = format!(
                "{} (server {}, password from {})",
                e.message,
                self.url,
                s.password_file.display()
            );
            e
        })?;
        Ok(ldap)
    }

    async fn recycle(&self, ldap: &mut Ldap, _: &Metrics) -> RecycleResult<LdapOpError> {
        if ldap.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        Ok(())
    }
}

/// A failed connection: a certificate the client does not trust is refused for good
/// (retrying will not change it), anything else is transient.
fn connect_error(url: &str, e: ldap3::LdapError) -> LdapOpError {
    let text = e.to_string();
    if text.contains("certificate") || text.contains("Certificate") {
        LdapOpError::new(
            LdapErrorKind::Refused,
            format!("cannot connect to the directory server {url}: its TLS certificate is not trusted ({text}); set tls_ca_file to the CA that signed it"),
        )
    } else {
        LdapOpError::new(
            LdapErrorKind::Transient,
            format!("cannot connect to the directory server {url}: {text}"),
        )
    }
}

/// Reads the password file (off the async runtime's blocking path), without its trailing
/// newline.
async fn read_password(path: &std::path::Path) -> Result<String, LdapOpError> {
    let text = tokio::fs::read_to_string(path).await.map_err(|e| {
        LdapOpError::new(
            LdapErrorKind::Refused,
            format!(
                "cannot read the directory password file {}: {e}",
                path.display()
            ),
        )
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// One configured server and its pool.
struct Server {
    /// The URL connections go to.
    url: String,
    /// The host name (lower case), for matching a preferred domain controller.
    host: String,
    pool: Pool<Manager>,
}

/// How many LDAP operations a client has sent, by kind (benchmarks compare them).
#[derive(Debug, Default)]
pub struct OpCounts {
    /// Searches (base reads included).
    pub search: AtomicU64,
    /// Adds.
    pub add: AtomicU64,
    /// Modifies.
    pub modify: AtomicU64,
    /// Deletes.
    pub delete: AtomicU64,
    /// Renames and moves.
    pub rename: AtomicU64,
    /// Extended operations (Password Modify).
    pub extended: AtomicU64,
}

impl OpCounts {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (search, add, modify, delete, rename, extended) so far.
    pub fn snapshot(&self) -> [u64; 6] {
        [
            self.search.load(Ordering::Relaxed),
            self.add.load(Ordering::Relaxed),
            self.modify.load(Ordering::Relaxed),
            self.delete.load(Ordering::Relaxed),
            self.rename.load(Ordering::Relaxed),
            self.extended.load(Ordering::Relaxed),
        ]
    }
}

/// The LDAP side of the directory: pools of bound connections to the configured servers.
pub struct LdapClient {
    ops: OpCounts,
    servers: Vec<Server>,
    settings: LdapSettings,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The configured flavour, or the one read from the first server's root DSE on first
    /// use.
    flavour: tokio::sync::OnceCell<Flavour>,
}

impl fmt::Debug for LdapClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapClient")
            .field(
                "servers",
                &self.servers.iter().map(|s| &s.url).collect::<Vec<_>>(),
            )
            .field("flavour", &self.flavour)
            .finish()
    }
}

/// The URL for a configured server entry: a URL as given, or a host name with the
/// scheme of the TLS mode.
fn server_url(entry: &str, tls: TlsMode) -> Result<(String, String), String> {
    let entry = entry.trim();
    let (url, rest) = if let Some(rest) = entry.strip_prefix("ldaps://") {
        if tls == TlsMode::StartTls {
            return Err(format!(
                "server {entry}: tls = \"starttls\" needs an ldap:// URL"
            ));
        }
        (entry.to_string(), rest)
    } else if let Some(rest) = entry.strip_prefix("ldap://") {
        if tls == TlsMode::Ldaps {
            return Err(format!(
                "server {entry}: tls = \"ldaps\" needs an ldaps:// URL"
            ));
        }
        (entry.to_string(), rest)
    } else if entry.contains("://") {
        return Err(format!(
            "server {entry}: only ldap:// and ldaps:// URLs are supported"
        ));
    } else {
        let scheme = if tls == TlsMode::Ldaps {
            "ldaps"
        } else {
            "ldap"
        };
        (format!("{scheme}://{entry}"), entry)
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default().to_string()
    } else {
        authority.split(':').next().unwrap_or_default().to_string()
    };
    if host.is_empty() {
        return Err(format!("server {entry}: no host"));
    }
    Ok((url, host.to_ascii_lowercase()))
}

impl LdapClient {
    /// Makes the pools and detects the flavour if it is not configured (which reads the
    /// root DSE of the first server).
    pub async fn connect(settings: LdapSettings) -> Result<LdapClient, LdapOpError> {
        let client = LdapClient::new(settings)?;
        client.flavour().await?;
        Ok(client)
    }

    /// Makes the pools without connecting: the first operation connects (and detects the
    /// flavour if it is not configured), so a server that is down at start-up is only an
    /// error for the calls that need it.
    pub fn new(settings: LdapSettings) -> Result<LdapClient, LdapOpError> {
        if settings.servers.is_empty() {
            return Err(LdapOpError::new(
                LdapErrorKind::Invalid,
                "the ldap backend needs at least one server",
            ));
        }
        let tls = settings.tls_ca_file.as_deref().map(ca_config).transpose()?;
        let mut servers = Vec::new();
        for entry in &settings.servers {
            let (url, host) = server_url(entry, settings.tls)
                .map_err(|m| LdapOpError::new(LdapErrorKind::Invalid, m))?;
            let manager = Manager {
                url: url.clone(),
                settings: settings.clone(),
                tls: tls.clone(),
            };
            let pool = Pool::builder(manager)
                .max_size(settings.pool_size.max(1))
                .runtime(deadpool::Runtime::Tokio1)
                .wait_timeout(Some(settings.timeout))
                .create_timeout(Some(settings.timeout))
                .build()
                .map_err(|e| {
                    LdapOpError::new(LdapErrorKind::Other, format!("connection pool: {e}"))
                })?;
            servers.push(Server { url, host, pool });
        }
        let flavour = tokio::sync::OnceCell::new();
        if let Some(f) = settings.flavour {
            let _ = flavour.set(f);
        }
        Ok(LdapClient {
            ops: OpCounts::default(),
            servers,
            flavour,
            settings,
            tls,
        })
    }

    /// The server kind: configured, or read once from the first server's root DSE.
    pub async fn flavour(&self) -> Result<Flavour, LdapOpError> {
        self.flavour
            .get_or_try_init(|| self.detect_flavour(0))
            .await
            .copied()
    }

    /// The operations sent so far.
    pub fn op_counts(&self) -> &OpCounts {
        &self.ops
    }

    /// The settings.
    pub fn settings(&self) -> &LdapSettings {
        &self.settings
    }

    /// The URL of server `i`.
    pub fn server_url(&self, i: usize) -> &str {
        &self.servers[i].url
    }

    /// How many servers are configured.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// The server a transaction uses: `preferred` (a configured URL or host name, as MPS
    /// `preferredDomainController`) if given, otherwise one chosen by the transaction id,
    /// so every call of a transaction goes to the same server.
    pub fn pick_server(&self, txn_id: &str, preferred: Option<&str>) -> Result<usize, LdapOpError> {
        if let Some(p) = preferred.map(str::trim).filter(|p| !p.is_empty()) {
            let want = p.to_ascii_lowercase();
            let want_host = server_url(p, self.settings.tls)
                .map(|(_, h)| h)
                .unwrap_or_default();
            return self
                .servers
                .iter()
                .position(|s| s.url.eq_ignore_ascii_case(&want) || s.host == want || s.host == want_host)
                .ok_or_else(|| {
                    LdapOpError::new(
                        LdapErrorKind::Invalid,
                        format!(
                            "preferredDomainController {p} is not one of the configured servers ({})",
                            self.servers.iter().map(|s| s.url.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    )
                });
        }
        // FNV-1a: stable across processes (a recovered transaction picks the same server).
        let mut h: u64 = 0xcbf29ce484222325;
        for b in txn_id.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
        Ok((h % self.servers.len() as u64) as usize)
    }

    /// A bound connection to server `i`.
    async fn conn(&self, i: usize) -> Result<managed::Object<Manager>, LdapOpError> {
        let s = &self.servers[i];
        s.pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(e) => e,
            managed::PoolError::Timeout(_) => LdapOpError::new(
                LdapErrorKind::Transient,
                format!("no connection to the directory server {} in time", s.url),
            ),
            other => LdapOpError::new(
                LdapErrorKind::Transient,
                format!("directory server {}: {other}", s.url),
            ),
        })
    }

    /// Runs one operation on a pooled connection of server `i`; a connection that broke is
    /// dropped from the pool.
    async fn run<T, F>(&self, i: usize, f: F) -> Result<T, LdapOpError>
    where
        F: for<'a> FnOnce(
            &'a mut Ldap,
            Duration,
        ) -> futures::future::BoxFuture<'a, Result<T, LdapOpError>>,
    {
        let mut conn = self.conn(i).await?;
        let result = f(&mut conn, self.settings.timeout).await;
        if let Err(e) = &result {
            if matches!(e.kind, LdapErrorKind::InDoubt | LdapErrorKind::Transient) && e.rc.is_none()
            {
                let _ = managed::Object::take(conn);
            }
        }
        result
    }

    /// Reads the root DSE of server `i`.
    pub async fn root_dse(&self, i: usize) -> Result<LdapEntry, LdapOpError> {
        let url = self.servers[i].url.clone();
        self.run(i, move |ldap, t| {
            Box::pin(async move {
                let attrs = vec![
                    "objectClass",
                    "namingContexts",
                    "defaultNamingContext",
                    "supportedCapabilities",
                    "supportedControl",
                    "supportedExtension",
                    "vendorName",
                    "dnsHostName",
                ];
                let res = ldap
                    .with_timeout(t)
                    .search("", Scope::Base, "(objectClass=*)", attrs)
                    .await
                    .map_err(|e| from_client("read the root DSE of", &url, &url, e, false))?;
                let (entries, res) = (res.0, res.1);
                check("read the root DSE of", &url, res)?;
                Ok(entries
                    .into_iter()
                    .next()
                    .map(|e| LdapEntry::from_search(SearchEntry::construct(e)))
                    .unwrap_or_default())
            })
        })
        .await
    }

    /// Reads the root DSE: AD advertises the capability 1.2.840.113556.1.4.800 (Samba too).
    async fn detect_flavour(&self, i: usize) -> Result<Flavour, LdapOpError> {
        let dse = self.root_dse(i).await?;
        let ad = dse
            .get("supportedCapabilities")
            .is_some_and(|v| v.iter().any(|c| c == b"1.2.840.113556.1.4.800"));
        Ok(if ad { Flavour::Ad } else { Flavour::OpenLdap })
    }

    /// Adds an entry.
    pub async fn add(
        &self,
        i: usize,
        dn: &str,
        attrs: &[(String, Vec<Vec<u8>>)],
    ) -> Result<(), LdapOpError> {
        OpCounts::bump(&self.ops.add);
        let url = self.servers[i].url.clone();
        let attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)> = attrs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(a, v)| (a.as_bytes().to_vec(), v.iter().cloned().collect()))
            .collect();
        let dn = dn.to_string();
        self.run(i, move |ldap, t| {
            Box::pin(async move {
                let res = ldap
                    .with_timeout(t)
                    .add(&dn, attrs)
                    .await
                    .map_err(|e| from_client("create", &dn, &url, e, true))?;
                check("create", &dn, res).map(|_| ())
            })
        })
        .await
    }

    /// Applies `mods` to an entry (atomically: all or none).
    pub async fn modify(&self, i: usize, dn: &str, mods: &[LdapMod]) -> Result<(), LdapOpError> {
        OpCounts::bump(&self.ops.modify);
        if mods.is_empty() {
            return Ok(());
        }
        let url = self.servers[i].url.clone();
        let mods: Vec<Mod<Vec<u8>>> = mods.iter().map(LdapMod::to_ldap3).collect();
        let dn = dn.to_string();
        self.run(i, move |ldap, t| {
            Box::pin(async move {
                let res = ldap
                    .with_timeout(t)
                    .modify(&dn, mods)
                    .await
                    .map_err(|e| from_client("modify", &dn, &url, e, true))?;
                check("modify", &dn, res).map(|_| ())
            })
        })
        .await
    }

    /// Deletes a leaf entry.
    pub async fn delete(&self, i: usize, dn: &str) -> Result<(), LdapOpError> {
        OpCounts::bump(&self.ops.delete);
        let url = self.servers[i].url.clone();
        let dn = dn.to_string();
        self.run(i, move |ldap, t| {
            Box::pin(async move {
                let res = ldap
                    .with_timeout(t)
                    .delete(&dn)
                    .await
                    .map_err(|e| from_client("delete", &dn, &url, e, true))?;
                check("delete", &dn, res).map(|_| ())
            })
        })
        .await
    }

    /// Renames and/or moves an entry: `new_rdn` (escaped, e.g. `CN=New Name`), under
    /// `new_parent` when given. The old RDN value is removed.
    pub async fn rename(
        &self,
        i: usize,
        dn: &str,
        new_rdn: &str,
        new_parent: Option<&str>,
    ) -> Result<(), LdapOpError> {
        OpCounts::bump(&self.ops.rename);
        let url = self.servers[i].url.clone();
        let (dn, new_rdn, new_parent) = (
            dn.to_string(),
            new_rdn.to_string(),
            new_parent.map(str::to_string),
        );
        self.run(i, move |ldap, t| {
            Box::pin(async move {
                let res = ldap
                    .with_timeout(t)
                    .modifydn(&dn, &new_rdn, true, new_parent.as_deref())
                    .await
                    .map_err(|e| from_client("rename", &dn, &url, e, true))?;
                check("rename", &dn, res).map(|_| ())
            })
        })
        .await
    }

    /// Reads one entry (`None` if it does not exist). `attrs` empty = all user attributes.
    pub async fn read(
        &self,
        i: usize,
        dn: &str,
        attrs: &[&str],
    ) -> Result<Option<LdapEntry>, LdapOpError> {
        match self
            .search(i, dn, LdapScope::Base, "(objectClass=*)", attrs, None)
            .await
        {
            Ok(mut v) => Ok(v.pop()),
            Err(e) if e.kind == LdapErrorKind::NoSuchObject => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Searches `base` with `filter` (RFC 4515 text, already escaped), in pages of
    /// `page_size` (the configured size when `None`; 0 = no paging control).
    pub async fn search(
        &self,
        i: usize,
        base: &str,
        scope: LdapScope,
        filter: &str,
        attrs: &[&str],
        page_size: Option<i32>,
    ) -> Result<Vec<LdapEntry>, LdapOpError> {
        OpCounts::bump(&self.ops.search);
        let url = self.servers[i].url.clone();
        let base = base.to_string();
        let filter = filter.to_string();
        let attrs: Vec<String> = if attrs.is_empty() {
            vec!["*".to_string()]
        } else {
            attrs.iter().map(|a| a.to_string()).collect()
        };
        let page = page_size.unwrap_or(self.settings.page_size);
        let scope = match scope {
            LdapScope::Base => Scope::Base,
            LdapScope::OneLevel => Scope::OneLevel,
            LdapScope::Subtree => Scope::Subtree,
        };
        self.run(i, move |ldap, t| {
            Box::pin(async move {
                let what = "search";
                let err = |e| from_client(what, &base, &url, e, false);
                let mut stream = if page > 0 && scope != Scope::Base {
                    ldap.with_timeout(t)
                        .streaming_search_with(
                            vec![
                                Box::new(EntriesOnly::new())
                                    as Box<dyn ldap3::adapters::Adapter<_, _>>,
                                Box::new(PagedResults::new(page)),
                            ],
                            &base,
                            scope,
                            &filter,
                            attrs,
                        )
                        .await
                        .map_err(err)?
                } else {
                    ldap.with_timeout(t)
                        .streaming_search_with(EntriesOnly::new(), &base, scope, &filter, attrs)
                        .await
                        .map_err(err)?
                };
                let mut out = Vec::new();
                loop {
                    match stream.next().await {
                        Ok(Some(e)) => out.push(LdapEntry::from_search(SearchEntry::construct(e))),
                        Ok(None) => break,
                        Err(e) => return Err(from_client(what, &base, &url, e, false)),
                    }
                }
                let res = stream.finish().await;
                if res.rc != 0 {
                    return Err(from_result(what, &base, &res));
                }
                Ok(out)
            })
        })
        .await
    }

    /// Whether a password may be sent to the servers (TLS, or plain explicitly allowed).
    fn password_transport_ok(&self, dn: &str) -> Result<(), LdapOpError> {
        if self.settings.tls != TlsMode::None
            || self.servers.iter().all(|s| s.url.starts_with("ldaps://"))
            || self.settings.allow_plain_passwords
        {
            return Ok(());
        }
        Err(LdapOpError::new(
            LdapErrorKind::Refused,
            format!(
                "set the password of {dn}: refused to send a password over plain LDAP; \
                 use ldaps:// servers or tls = \"starttls\" (or allow_plain_passwords = true \
                 in [providers.directory.ldap] on a trusted network)"
            ),
        ))
    }

    /// Sets a user's password as an administrator: `unicodePwd` on AD, the Password Modify
    /// extended operation (RFC 3062, hashed by the server) on OpenLDAP.
    pub async fn set_password(
        &self,
        i: usize,
        dn: &str,
        password: &str,
    ) -> Result<(), LdapOpError> {
        self.password_transport_ok(dn)?;
        match self.flavour().await? {
            Flavour::Ad => self
                .modify(
                    i,
                    dn,
                    &[LdapMod::Replace(
                        "unicodePwd".into(),
                        vec![unicode_pwd(password)],
                    )],
                )
                .await
                .map_err(|e| password_error(dn, e)),
            Flavour::OpenLdap => self.password_modify(i, dn, None, password).await,
        }
    }

    /// Changes a user's password knowing the old one: on AD a modify that deletes the old
    /// `unicodePwd` and adds the new one (the server checks the old one); on OpenLDAP the
    /// Password Modify extended operation with the old password.
    pub async fn change_password(
        &self,
        i: usize,
        dn: &str,
        old: &str,
        new: &str,
    ) -> Result<(), LdapOpError> {
        self.password_transport_ok(dn)?;
        match self.flavour().await? {
            Flavour::Ad => self
                .modify(
                    i,
                    dn,
                    &[
                        LdapMod::Delete("unicodePwd".into(), vec![unicode_pwd(old)]),
                        LdapMod::Add("unicodePwd".into(), vec![unicode_pwd(new)]),
                    ],
                )
                .await
                .map_err(|e| password_error(dn, e)),
            Flavour::OpenLdap => self.change_password_as_self(i, dn, old, new).await,
        }
    }

    /// OpenLDAP: binds as the user with the old password on a connection of its own and
    /// changes its own password with Password Modify (slapd will not check an old password
    /// for the root DN). A wrong old password is `Refused` with rc 49.
    async fn change_password_as_self(
        &self,
        i: usize,
        dn: &str,
        old: &str,
        new: &str,
    ) -> Result<(), LdapOpError> {
        let s = &self.settings;
        let url = &self.servers[i].url;
        let what = "change the password of";
        OpCounts::bump(&self.ops.extended);
        let mut ldap = self.connect_unpooled(i, dn).await?;
        let res = ldap
            .with_timeout(s.timeout)
            .simple_bind(dn, old)
            .await
            .map_err(|e| from_client(what, dn, url, e, false))?;
        check(what, dn, res)?;
        let res = ldap
            .with_timeout(s.timeout)
            .extended(PasswordModify {
                user_id: None,
                old_pass: Some(old),
                new_pass: Some(new),
            })
            .await
            .map_err(|e| from_client(what, dn, url, e, true));
        let _ = ldap.unbind().await;
        check(what, dn, res?.1).map(|_| ())
    }

    /// A connection to server `i` outside the pool, not bound yet.
    async fn connect_unpooled(&self, i: usize, dn: &str) -> Result<Ldap, LdapOpError> {
        let url = &self.servers[i].url;
        let (conn, ldap) =
            LdapConnAsync::with_settings(conn_settings(&self.settings, &self.tls), url)
                .await
                .map_err(|e| {
                    let mut err = connect_error(url, e);
                    err.message = format!("bind as {dn}: {}", err.message);
                    err
                })?;
        ldap3::drive!(conn);
        Ok(ldap)
    }

    async fn password_modify(
        &self,
        i: usize,
        dn: &str,
        old: Option<&str>,
        new: &str,
    ) -> Result<(), LdapOpError> {
        OpCounts::bump(&self.ops.extended);
        let url = self.servers[i].url.clone();
        let (dn, old, new) = (dn.to_string(), old.map(str::to_string), new.to_string());
        self.run(i, move |ldap, t| {
            Box::pin(async move {
                let res = ldap
                    .with_timeout(t)
                    .extended(PasswordModify {
                        user_id: Some(&dn),
                        old_pass: old.as_deref(),
                        new_pass: Some(&new),
                    })
                    .await
                    .map_err(|e| from_client("set the password of", &dn, &url, e, true))?;
                check("set the password of", &dn, res.1).map(|_| ())
            })
        })
        .await
    }

    /// Enables or disables an account through the `userAccountControl` disabled flag (on
    /// OpenLDAP the provisioAccount class is added when missing). Returns whether it was
    /// enabled before.
    pub async fn set_enabled(
        &self,
        i: usize,
        dn: &str,
        enabled: bool,
    ) -> Result<bool, LdapOpError> {
        let entry = self
            .read(i, dn, &["userAccountControl", "objectClass"])
            .await?
            .ok_or_else(|| {
                LdapOpError::new(
                    LdapErrorKind::NoSuchObject,
                    format!("enable/disable {dn}: no such object"),
                )
            })?;
        let uac: u32 = entry
            .first("userAccountControl")
            .and_then(|v| v.trim().parse::<i64>().ok())
            .map(|v| v as u32)
            .unwrap_or(UAC_NORMAL_ACCOUNT);
        let was_enabled = uac & UAC_ACCOUNTDISABLE == 0;
        let new = if enabled {
            uac & !UAC_ACCOUNTDISABLE
        } else {
            uac | UAC_ACCOUNTDISABLE
        };
        let mut mods = Vec::new();
        if self.flavour().await? == Flavour::OpenLdap
            && !entry
                .get("objectClass")
                .is_some_and(|v| v.iter().any(|c| c.eq_ignore_ascii_case(b"provisioAccount")))
        {
            mods.push(LdapMod::Add(
                "objectClass".into(),
                vec![b"provisioAccount".to_vec()],
            ));
        }
        if new != uac || entry.get("userAccountControl").is_none() {
            mods.push(LdapMod::Replace(
                "userAccountControl".into(),
                vec![(new as i32).to_string().into_bytes()],
            ));
        }
        self.modify(i, dn, &mods).await?;
        Ok(was_enabled)
    }
}

/// A password error without the server's free text about the value (AD explains the
/// complexity rule it failed, which is fine, but keep the message about the object).
fn password_error(dn: &str, mut e: LdapOpError) -> LdapOpError {
    if e.kind == LdapErrorKind::Constraint || e.kind == LdapErrorKind::Refused {
        e.message = format!(
            "set the password of {dn}: the server refused it (wrong old password, or the new one does not meet the password policy) — {}",
            e.message
        );
    }
    e
}

/// The AD `unicodePwd` value: the password in double quotes, UTF-16LE.
pub fn unicode_pwd(password: &str) -> Vec<u8> {
    format!("\"{password}\"")
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicode_pwd_is_quoted_utf16le() {
        assert_eq!(
            unicode_pwd("a€"),
            vec![0x22, 0, 0x61, 0, 0xac, 0x20, 0x22, 0]
        );
    }

    #[test]
    fn server_urls_follow_the_tls_mode() {
        assert_eq!(
            server_url("dc1.example.com", TlsMode::Ldaps).unwrap(),
            (
                "ldaps://dc1.example.com".to_string(),
                "dc1.example.com".to_string()
            )
        );
        assert_eq!(
            server_url("ldap://DC2:3890/", TlsMode::StartTls).unwrap().1,
            "dc2"
        );
        assert!(server_url("ldaps://dc1", TlsMode::StartTls).is_err());
        assert!(server_url("http://dc1", TlsMode::None).is_err());
    }
}
