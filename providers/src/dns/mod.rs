//! The DNS provider: zones and resource records behind one set of procedures, stored by
//! a [`ZoneBackend`]. The embedded backend writes RFC 1035 zone files
//! ([`zonefile::ZoneFileBackend`]); the [`rfc2136::Rfc2136Backend`] sends TSIG-signed
//! dynamic updates to an authoritative server such as BIND.
//!
//! Every input is checked before anything is written: names (labels, length, IDN →
//! punycode), addresses, numbers, and any character that could inject zone-file syntax.
//! TXT text is the one field passed through verbatim; it is escaped on write.
//!
//! ReplaceRecordSet replaces a whole RRset (owner and type) with a list of records in one
//! atomic change ([`ZoneBackend::replace_rrset`]); its undo puts the previous RRset back,
//! only if the RRset is still exactly what the call wrote.
//!
//! [`Provider::recover`] settles a write a crash left in doubt through
//! [`ZoneBackend::recover`] and returns the undo record the call would have returned.

pub mod backend;
mod mps;
mod name;
pub mod record;
pub mod rfc2136;
pub mod rndc;
pub mod zonefile;

pub use backend::{
    Applied, InDoubt, LiveTxns, NewRrset, Recovered, Replaced, RrsetGuard, Swept, ZoneBackend,
    ZoneSettings, ZoneSnapshot,
};
pub use record::{RData, Record};
pub use rfc2136::{read_tsig_key_file, Rfc2136Backend, Rfc2136Config};
pub use rndc::RndcConfig;
pub use zonefile::{Intent, ZoneFileBackend};

use crate::common::{input, input_default, opt_input, opt_nonempty, req_input, text};
use async_trait::async_trait;
use name::{parse_mailbox, parse_owner, parse_target, parse_zone, reject_syntax, Style};
use provisio_engine::data::{Element, Scalar};
use provisio_engine::model::{InputSpec, ProcKind};
use provisio_engine::provider::{
    Call, Done, Outcome, Preview, ProcedureSpec, Provider, ProviderError, UndoKind,
};
use record::{describe_record, describe_rrset, fqdn, same_rrset};
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// DNS_ERROR_ZONE_ALREADY_EXISTS as an HRESULT.
pub const E_ZONE_EXISTS: u32 = provisio_engine::codes::E_ZONE_EXISTS;
/// DNS_ERROR_ZONE_DOES_NOT_EXIST as an HRESULT.
pub const E_ZONE_NOT_FOUND: u32 = provisio_engine::codes::E_ZONE_NOT_FOUND;
/// DNS_ERROR_RECORD_ALREADY_EXISTS as an HRESULT.
pub const E_RECORD_EXISTS: u32 = provisio_engine::codes::E_RECORD_EXISTS;
/// DNS_ERROR_RECORD_DOES_NOT_EXIST as an HRESULT.
pub const E_RECORD_NOT_FOUND: u32 = provisio_engine::codes::E_RECORD_NOT_FOUND;
/// DNS_ERROR_CNAME_COLLISION as an HRESULT.
pub const E_CNAME_COLLISION: u32 = provisio_engine::codes::E_CNAME_COLLISION;

/// Largest TXT text accepted (bytes).
pub const MAX_TXT: usize = 16 * 1024;

/// DNS provider errors; each maps to a [`ProviderError`] class.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// CreateZone of a zone that exists.
    #[error("zone {0} already exists")]
    ZoneExists(String),
    /// The zone does not exist.
    #[error("zone {0} does not exist")]
    ZoneNotFound(String),
    /// AddRecord of a record that exists.
    #[error("record {0} already exists")]
    RecordExists(String),
    /// DeleteRecord of a record that does not exist.
    #[error("record {0} does not exist")]
    RecordNotFound(String),
    /// A CNAME next to other data.
    #[error("{0}")]
    Conflict(String),
    /// The stored zone is not in the form this backend writes.
    #[error("zone {zone} cannot be read: {message}")]
    Corrupt {
        /// The zone.
        zone: String,
        /// What is wrong, with the line.
        message: String,
    },
    /// The zone is not served by the DNS server (RFC 2136 cannot create zones).
    #[error("{0}")]
    NotServed(String),
    /// Undo found the record changed by someone else since the call; nothing was touched.
    #[error("{0}")]
    Changed(String),
    /// The backend cannot do this at all.
    #[error("{0}")]
    Unsupported(String),
    /// The DNS server answered with an error code, or could not be reached.
    #[error("{message}")]
    Server {
        /// Worth retrying (timeouts, SERVFAIL, connection refused).
        transient: bool,
        /// What was asked and what came back, naming the response code.
        message: String,
    },
    /// An UPDATE was sent and its answer was lost (timeout, broken connection): it may or
    /// may not have been applied. The engine settles it through `recover`.
    #[error("{0}")]
    InDoubt(String),
    /// Storage failed.
    #[error("{what}: {message}")]
    Io {
        /// What was being touched.
        what: String,
        /// Worth retrying.
        transient: bool,
        /// The underlying error.
        message: String,
    },
}

impl DnsError {
    pub(crate) fn io(what: String, e: io::Error) -> Self {
        use io::ErrorKind as K;
        DnsError::Io {
            what,
            transient: matches!(
                e.kind(),
                K::Interrupted | K::WouldBlock | K::TimedOut | K::ResourceBusy
            ),
            message: e.to_string(),
        }
    }
}

impl From<DnsError> for ProviderError {
    fn from(e: DnsError) -> Self {
        let message = e.to_string();
        let code = match &e {
            DnsError::Invalid(_) => return ProviderError::invalid(message),
            DnsError::Io {
                transient: true, ..
            }
            | DnsError::Server {
                transient: true, ..
            } => return ProviderError::transient(message),
            DnsError::Unsupported(_) => return ProviderError::Unsupported(message),
            DnsError::InDoubt(_) => return ProviderError::in_doubt(message),
            DnsError::NotServed(_) => E_ZONE_NOT_FOUND,
            DnsError::ZoneExists(_) => E_ZONE_EXISTS,
            DnsError::ZoneNotFound(_) => E_ZONE_NOT_FOUND,
            DnsError::RecordExists(_) => E_RECORD_EXISTS,
            DnsError::RecordNotFound(_) => E_RECORD_NOT_FOUND,
            DnsError::Conflict(_) => E_CNAME_COLLISION,
            DnsError::Corrupt { .. }
            | DnsError::Io { .. }
            | DnsError::Server { .. }
            | DnsError::Changed(_) => ProviderError::E_FAIL,
        };
        ProviderError::Permanent { code, message }
    }
}

/// Zones and records; `name()` is `DNS`.
pub struct DnsProvider {
    backend: Arc<dyn ZoneBackend>,
    /// Other names of the managed server that the MPS procedures' `serverIdentifier` may
    /// give (beside its address, or `localhost` for zone files).
    server_identifiers: Vec<String>,
    /// A call and the settlement of its idempotency key never overlap (see `execute`).
    fences: crate::common::KeyFences,
}

impl std::fmt::Debug for DnsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsProvider")
            .field("backend", &self.backend.kind())
            .finish()
    }
}

impl DnsProvider {
    /// Zone files in `dir` (created if missing).
    pub fn zonefile(dir: PathBuf) -> Result<Self, DnsError> {
        Ok(Self::with_backend(Arc::new(ZoneFileBackend::new(dir)?)))
    }

    /// TSIG-signed RFC 2136 dynamic updates to an authoritative server. Nothing is sent
    /// until the first call; the key is checked here.
    pub fn rfc2136(config: Rfc2136Config) -> Result<Self, DnsError> {
        Ok(Self::with_backend(Arc::new(Rfc2136Backend::new(config)?)))
    }

    /// Any backend.
    pub fn with_backend(backend: Arc<dyn ZoneBackend>) -> Self {
        DnsProvider {
            backend,
            server_identifiers: Vec::new(),
            fences: crate::common::KeyFences::new(),
        }
    }

    /// Other names (host names, addresses) by which MPS requests name the managed DNS
    /// server in `serverIdentifier` (`server_identifiers` under `[providers.dns]`). The
    /// server's own address — or `localhost`, `127.0.0.1`, `::1` for zone files — is always
    /// accepted.
    pub fn with_server_identifiers(mut self, names: Vec<String>) -> Self {
        self.server_identifiers = names;
        self
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn ZoneBackend> {
        &self.backend
    }

    /// After recovery: removes the backend's recovery records that no live transaction
    /// owns and the temp files of writes that never finished ([`ZoneBackend::sweep`]).
    pub async fn sweep(&self, live: LiveTxns) -> Result<Swept, DnsError> {
        self.backend.sweep(live).await
    }
}

// ---- input parsing ----------------------------------------------------------------

const ZONE: &[&str] = &["zoneName", "ZoneName", "ContainerName"];
const OWNER: &[&str] = &["name", "OwnerName", "ownerName"];
const TTL: &[&str] = &["ttl", "TTL"];

fn zone_input(data: &Element) -> Result<String, ProviderError> {
    let raw = req_input(data, ZONE)?;
    Ok(parse_zone(
        "zoneName",
        raw.trim_end_matches(char::is_whitespace),
    )?)
}

fn ttl_value(field: &str, raw: Option<String>) -> Result<Option<u32>, DnsError> {
    let Some(raw) = raw else { return Ok(None) };
    let t = raw.trim();
    reject_syntax(field, t)?;
    match t.parse::<u32>() {
        Ok(v) if v <= 2_147_483_647 => Ok(Some(v)),
        _ => Err(DnsError::Invalid(format!(
            "input `{field}` must be a number of seconds from 0 to 2147483647, got {raw:?}"
        ))),
    }
}

fn num<T: std::str::FromStr>(field: &str, raw: &str, range: &str) -> Result<T, DnsError> {
    let t = raw.trim();
    reject_syntax(field, t)?;
    t.parse().map_err(|_| {
        DnsError::Invalid(format!(
            "input `{field}` must be a number {range}, got {raw:?}"
        ))
    })
}

fn req(data: &Element, names: &[&str]) -> Result<String, DnsError> {
    req_input(data, names).map_err(|e| DnsError::Invalid(e.message()))
}

/// The record type: `A`, `mx`, or the MPS spellings `MXType` and `MicrosoftDNS_MXType`.
fn rr_type(data: &Element) -> Result<String, DnsError> {
    rr_type_text(&req(data, &["rrType", "RRType", "recordType", "type"])?)
}

/// [`rr_type`] of a text value.
fn rr_type_text(raw: &str) -> Result<String, DnsError> {
    reject_syntax("rrType", raw.trim())?;
    let t = raw.trim().to_ascii_uppercase();
    let t = t.strip_prefix("MICROSOFTDNS_").unwrap_or(&t);
    let t = t
        .strip_suffix("TYPE")
        .filter(|s| !s.is_empty())
        .unwrap_or(t);
    match t {
        "A" | "AAAA" | "CNAME" | "MX" | "TXT" | "SRV" | "NS" | "CAA" => Ok(t.to_string()),
        "SOA" => Err(DnsError::Invalid(
            "input `rrType`: SOA records are made with the zone and cannot be added".into(),
        )),
        _ => Err(DnsError::Invalid(format!(
            "input `rrType` must be one of A, AAAA, CNAME, MX, TXT, SRV, NS, CAA; got {raw:?}"
        ))),
    }
}

/// Reads the per-type data fields.
fn rdata_input(data: &Element, rtype: &str, zone: &str) -> Result<RData, DnsError> {
    match rtype {
        "A" => {
            let raw = req(data, &["address", "IPAddress", "ipAddress"])?;
            reject_syntax("address", raw.trim())?;
            raw.trim().parse().map(RData::A).map_err(|_| {
                DnsError::Invalid(format!("input `address` is not an IPv4 address: {raw:?}"))
            })
        }
        "AAAA" => {
            let raw = req(data, &["address", "IPv6Address", "IPAddress", "ipAddress"])?;
            reject_syntax("address", raw.trim())?;
            raw.trim().parse().map(RData::Aaaa).map_err(|_| {
                DnsError::Invalid(format!("input `address` is not an IPv6 address: {raw:?}"))
            })
        }
        "CNAME" => {
            let raw = req(data, &["target", "PrimaryName", "primaryName"])?;
            Ok(RData::Cname(parse_target(
                "target",
                raw.trim(),
                zone,
                Style::Any,
                false,
            )?))
        }
        "NS" => {
            let raw = req(data, &["target", "NSHost", "nsHost"])?;
            Ok(RData::Ns(parse_target(
                "target",
                raw.trim(),
                zone,
                Style::Host,
                false,
            )?))
        }
        "MX" => {
            let preference = match opt_nonempty(data, &["preference", "Preference"]) {
                Some(p) => num("preference", &p, "from 0 to 65535")?,
                None => 10,
            };
            let raw = req(data, &["exchange", "MailExchange", "mailExchange"])?;
            Ok(RData::Mx {
                preference,
                exchange: parse_target("exchange", raw.trim(), zone, Style::Host, true)?,
            })
        }
        "TXT" => {
            let text = opt_input(data, &["text", "DescriptiveText", "descriptiveText"])
                .ok_or_else(|| {
                    DnsError::Invalid("input `text` (or `DescriptiveText`) is required".into())
                })?;
            if text.len() > MAX_TXT {
                return Err(DnsError::Invalid(format!(
                    "input `text` is {} bytes; at most {MAX_TXT} are accepted",
                    text.len()
                )));
            }
            Ok(RData::Txt(text.into_bytes()))
        }
        "SRV" => {
            let field = |names: &[&str], f: &str| -> Result<u16, DnsError> {
                num(f, &req(data, names)?, "from 0 to 65535")
            };
            let raw = req(data, &["target", "DomainName", "domainName"])?;
            Ok(RData::Srv {
                priority: field(&["priority", "Priority"], "priority")?,
                weight: field(&["weight", "Weight"], "weight")?,
                port: field(&["port", "Port"], "port")?,
                target: parse_target("target", raw.trim(), zone, Style::Host, true)?,
            })
        }
        "CAA" => {
            let flags = match opt_nonempty(data, &["flags", "Flags"]) {
                Some(f) => num("flags", &f, "from 0 to 255")?,
                None => 0,
            };
            let tag = req(data, &["tag", "Tag"])?;
            reject_syntax("tag", &tag)?;
            if tag.len() > 15 || !tag.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(DnsError::Invalid(format!(
                    "input `tag` must be 1 to 15 letters or digits (issue, issuewild, iodef), got {tag:?}"
                )));
            }
            let value = opt_input(data, &["value", "Value"]).unwrap_or_default();
            if let Some(c) = value.chars().find(|c| c.is_control() || *c == '"') {
                return Err(DnsError::Invalid(format!(
                    "input `value` contains {c:?}, which is not allowed in a CAA value"
                )));
            }
            Ok(RData::Caa {
                flags,
                tag: tag.to_ascii_lowercase(),
                value,
            })
        }
        other => Err(DnsError::Invalid(format!(
            "unsupported record type {other}"
        ))),
    }
}

/// Zone, owner, TTL and data of a record procedure.
struct RecordInput {
    zone: String,
    owner: String,
    ttl: Option<u32>,
    data: RData,
}

/// The owner input (`@` when absent); A/AAAA owners must be host names.
fn owner_input(data: &Element, zone: &str, rtype: &str) -> Result<String, DnsError> {
    let style = if matches!(rtype, "A" | "AAAA") {
        Style::Host
    } else {
        Style::Any
    };
    match opt_input(data, OWNER) {
        Some(o) => parse_owner("name", o.trim(), zone, style),
        None => Ok("@".to_string()),
    }
}

fn record_input(data: &Element) -> Result<RecordInput, ProviderError> {
    let zone = zone_input(data)?;
    let rtype = rr_type(data)?;
    let owner = owner_input(data, &zone, &rtype)?;
    let ttl = ttl_value("ttl", opt_nonempty(data, TTL))?;
    let rdata = rdata_input(data, &rtype, &zone)?;
    Ok(RecordInput {
        zone,
        owner,
        ttl,
        data: rdata,
    })
}

/// Names of the list input of ReplaceRecordSet.
const RECORDS: &[&str] = &["records", "Records"];

/// Zone, owner, type, TTL and the new data of ReplaceRecordSet.
struct RrsetInput {
    zone: String,
    owner: String,
    rtype: String,
    ttl: Option<u32>,
    data: Vec<RData>,
}

impl RrsetInput {
    /// `www.example.com. A`.
    fn set_name(&self) -> String {
        format!("{} {}", fqdn(&self.zone, &self.owner), self.rtype)
    }

    fn in_doubt(&self) -> InDoubt<'_> {
        InDoubt::ReplaceRecordSet {
            zone: &self.zone,
            owner: &self.owner,
            rtype: &self.rtype,
            ttl: self.ttl,
            data: &self.data,
        }
    }
}

/// The items of the `records` input: each repeated `records` element is one record (the
/// YAML/JSON list form), or one `records` element holds `record` elements (the XML form).
fn record_items(data: &Element) -> Vec<&Element> {
    let mut items = Vec::new();
    for e in data
        .elements()
        .filter(|e| RECORDS.contains(&e.name.as_str()))
    {
        let children: Vec<&Element> = e.elements().collect();
        if !children.is_empty() && children.iter().all(|c| c.name == "record") {
            items.extend(children);
        } else if !children.is_empty() || !e.string_value().trim().is_empty() {
            items.push(e);
        }
    }
    items
}

fn rrset_input(data: &Element) -> Result<RrsetInput, ProviderError> {
    let zone = zone_input(data)?;
    let rtype = rr_type(data)?;
    let owner = owner_input(data, &zone, &rtype)?;
    let ttl = ttl_value("ttl", opt_nonempty(data, TTL))?;
    let items = record_items(data);
    if items.is_empty() {
        return Err(DnsError::Invalid(
            "input `records` must list one or more records (each with the data fields of \
             AddRecord, e.g. `address`); to remove the whole RRset use DeleteRecord for each record"
                .into(),
        )
        .into());
    }
    if rtype == "CNAME" && items.len() != 1 {
        return Err(DnsError::Invalid(format!(
            "input `records` lists {} CNAME records; a CNAME RRset holds exactly one",
            items.len()
        ))
        .into());
    }
    let mut set: Vec<RData> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if item.elements().next().is_none() {
            return Err(DnsError::Invalid(format!(
                "input `records` item {} is {:?}; each item needs the data fields of a {rtype} \
                 record (e.g. `{}`)",
                i + 1,
                item.string_value(),
                example_field(&rtype)
            ))
            .into());
        }
        let d = rdata_input(item, &rtype, &zone)
            .map_err(|e| DnsError::Invalid(format!("input `records` item {}: {e}", i + 1)))?;
        if let Some(j) = set.iter().position(|x| *x == d) {
            return Err(DnsError::Invalid(format!(
                "input `records` items {} and {} are the same {rtype} record ({}); an RRset \
                 holds each record once",
                j + 1,
                i + 1,
                d.to_text()
            ))
            .into());
        }
        set.push(d);
    }
    Ok(RrsetInput {
        zone,
        owner,
        rtype,
        ttl,
        data: set,
    })
}

/// The main data field of a type, for messages.
fn example_field(rtype: &str) -> &'static str {
    match rtype {
        "A" | "AAAA" => "address",
        "MX" => "exchange",
        "TXT" => "text",
        "CAA" => "value",
        _ => "target",
    }
}

fn zone_settings(data: &Element) -> Result<ZoneSettings, ProviderError> {
    let zone = zone_input(data)?;
    let primary_ns = match opt_nonempty(data, &["primaryNs", "PrimaryServer"]) {
        Some(ns) => parse_target("primaryNs", ns.trim(), &zone, Style::Host, false)?,
        None => format!("ns1.{zone}."),
    };
    let admin = match opt_nonempty(data, &["adminEmail", "AdminEmailName"]) {
        Some(a) => parse_mailbox("adminEmail", a.trim())?,
        None => format!("hostmaster.{zone}."),
    };
    let ttl = ttl_value("ttl", opt_nonempty(data, TTL))?.unwrap_or(3600);
    let ns_address = match opt_nonempty(data, &["nsAddress"]) {
        Some(a) => {
            reject_syntax("nsAddress", a.trim())?;
            Some(a.trim().parse::<IpAddr>().map_err(|_| {
                DnsError::Invalid(format!("input `nsAddress` is not an IP address: {a:?}"))
            })?)
        }
        None => None,
    };
    let mut timers = [7200, 3600, 1_209_600, 3600];
    for (i, f) in ["refresh", "retry", "expire", "minimum"].iter().enumerate() {
        if let Some(v) = ttl_value(f, opt_nonempty(data, &[f]))? {
            timers[i] = v;
        }
    }
    Ok(ZoneSettings {
        zone,
        primary_ns,
        admin,
        ttl,
        ns_address,
        timers,
    })
}

fn undo_el(op: &str, zone: &str) -> Element {
    let mut u = Element::new("undo");
    u.push(text("op", op));
    u.push(text("zone", zone));
    u
}

/// The undo record of DeleteZone.
fn restore_zone_undo(zone: &str, token: String) -> Element {
    let mut undo = undo_el("restoreZone", zone);
    undo.push(text("token", token));
    undo
}

/// The undo record of AddRecord (`removeRecord`) or DeleteRecord (`addRecord`).
fn record_undo(op: &str, zone: &str, record: &Record, guard: Option<&RrsetGuard>) -> Element {
    let mut undo = undo_el(op, zone);
    undo.push(text("record", record.line()));
    push_guard(&mut undo, record, guard);
    undo
}

/// A list element `<name><record>line</record>…</name>` of record lines.
fn record_list(name: &str, records: &[Record]) -> Element {
    let mut e = Element::new(name);
    for r in records {
        let mut line = text("record", r.line());
        line.list_item = true;
        e.push(line);
    }
    e
}

/// Reads a list written by [`record_list`] (absent: empty).
fn read_record_list(
    parent: &Element,
    name: &str,
    zone: &str,
) -> Result<Vec<Record>, ProviderError> {
    let Some(e) = parent.child(name) else {
        return Ok(Vec::new());
    };
    e.elements()
        .filter(|c| c.name == "record")
        .map(|c| parse_undo_line(&c.string_value(), zone))
        .collect()
}

/// The undo record of ReplaceRecordSet: put `before` back where `after` is expected.
fn rrset_undo(
    zone: &str,
    owner: &str,
    rtype: &str,
    before: &[Record],
    after: &[Record],
) -> Element {
    let mut undo = undo_el("restoreRrset", zone);
    undo.push(text("name", owner));
    undo.push(text("rrType", rtype));
    undo.push(record_list("before", before));
    undo.push(record_list("after", after));
    undo
}

fn serial_el(serial: u32) -> Element {
    Element::with_scalar("serial", Scalar::Int(i64::from(serial)))
}

impl DnsProvider {
    async fn create_zone(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let settings = zone_settings(&call.execute_data)?;
        let (serial, location) = self
            .backend
            .create_zone_keyed(&settings, &call.context.idempotency_key())
            .await?;
        let mut out = call.execute_data.clone();
        out.push(text("zone", format!("{}.", settings.zone)));
        out.push(serial_el(serial));
        out.push(text("location", location));
        let ns_in_zone = settings.primary_ns == format!("{}.", settings.zone)
            || settings
                .primary_ns
                .ends_with(&format!(".{}.", settings.zone));
        if ns_in_zone && settings.ns_address.is_none() {
            out.push(text(
                "warning",
                format!(
                    "name server {} is inside the zone but has no address; pass nsAddress so name servers accept the zone",
                    settings.primary_ns
                ),
            ));
        }
        Ok(Outcome {
            execute_data: out,
            undo: Some(undo_el("removeZone", &settings.zone)),
        })
    }

    async fn delete_zone(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let zone = zone_input(&call.execute_data)?;
        let token = self
            .backend
            .delete_zone(&zone, &call.context.idempotency_key())
            .await?;
        let mut out = call.execute_data.clone();
        out.push(text("deleted", format!("{zone}.")));
        Ok(Outcome {
            execute_data: out,
            undo: Some(restore_zone_undo(&zone, token)),
        })
    }

    async fn add_record(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let r = record_input(&call.execute_data)?;
        let applied = self
            .backend
            .add_record_keyed(
                &r.zone,
                &r.owner,
                r.ttl,
                &r.data,
                &call.context.idempotency_key(),
            )
            .await?;
        let record = &applied.record;
        let mut out = call.execute_data.clone();
        out.push(text("record", record.line()));
        out.push(text("fqdn", record.fqdn(&r.zone)));
        out.push(serial_el(applied.serial));
        Ok(Outcome {
            execute_data: out,
            undo: Some(record_undo(
                "removeRecord",
                &r.zone,
                record,
                applied.guard.as_ref(),
            )),
        })
    }

    async fn delete_record(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let r = record_input(&call.execute_data)?;
        let Some(applied) = self
            .backend
            .delete_record_keyed(&r.zone, &r.owner, &r.data, &call.context.idempotency_key())
            .await?
        else {
            return Err(
                DnsError::RecordNotFound(describe_record(&r.zone, &r.owner, &r.data)).into(),
            );
        };
        let record = &applied.record;
        let mut out = call.execute_data.clone();
        out.push(text("record", record.line()));
        out.push(serial_el(applied.serial));
        Ok(Outcome {
            execute_data: out,
            undo: Some(record_undo(
                "addRecord",
                &r.zone,
                record,
                applied.guard.as_ref(),
            )),
        })
    }

    async fn replace_record_set(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let r = rrset_input(&call.execute_data)?;
        self.replace_rrset_as(call, &r, None).await
    }

    /// Replaces the RRset `r` names with its data (only if it is now `expect`, when given):
    /// the output names the set before and after, undo puts the previous set back.
    async fn replace_rrset_as(
        &self,
        call: &Call,
        r: &RrsetInput,
        expect: Option<&[Record]>,
    ) -> Result<Outcome, ProviderError> {
        let key = call.context.idempotency_key();
        let done = self
            .backend
            .replace_rrset(
                &r.zone,
                &r.owner,
                &r.rtype,
                NewRrset::Data {
                    ttl: r.ttl,
                    data: &r.data,
                },
                expect,
                Some(&key),
            )
            .await?;
        let mut out = call.execute_data.clone();
        out.push(text("fqdn", fqdn(&r.zone, &r.owner)));
        out.push(Element::with_scalar("changed", Scalar::Bool(done.changed)));
        out.push(record_list("previous", &done.before));
        out.push(record_list("current", &done.after));
        out.push(serial_el(done.serial));
        let undo = done
            .changed
            .then(|| rrset_undo(&r.zone, &r.owner, &r.rtype, &done.before, &done.after));
        Ok(Outcome {
            execute_data: out,
            undo,
        })
    }

    /// The RRset ModifyResourceRecord changes: it must hold exactly one record.
    async fn modify_target(&self, r: &RrsetInput) -> Result<Vec<Record>, ProviderError> {
        let Some((live, _)) = self.backend.read_rrset(&r.zone, &r.owner, &r.rtype).await? else {
            return Err(DnsError::ZoneNotFound(r.zone.clone()).into());
        };
        match live.len() {
            1 => Ok(live),
            0 => Err(DnsError::RecordNotFound(format!(
                "DNS Provider/ModifyResourceRecord: {} has no record to modify; create it with CreateResourceRecord",
                r.set_name()
            ))
            .into()),
            n => Err(ProviderError::invalid(format!(
                "DNS Provider/ModifyResourceRecord: {} holds {n} records ({}); Provisio modifies a name's only \
                 record of a type, so it cannot tell which to change: delete the one to change with \
                 DeleteResourceRecord and create the new one with CreateResourceRecord, or set the whole set \
                 with ReplaceRecordSet",
                r.set_name(),
                describe_rrset(&live)
            ))),
        }
    }

    /// ModifyResourceRecord (translated to ReplaceRecordSet inputs): replaces the name's
    /// only record of the type with the one given, atomically (the RRset as read is the
    /// expected state), undo as ReplaceRecordSet.
    async fn modify_record(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let r = rrset_input(&call.execute_data)?;
        let live = self.modify_target(&r).await?;
        self.replace_rrset_as(call, &r, Some(&live)).await
    }

    /// WriteBackZoneFile: no change to the zone's data, so no undo.
    async fn write_back(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let zone = zone_input(&call.execute_data)?;
        let done = self.backend.write_back(&zone).await?;
        let mut out = call.execute_data.clone();
        out.push(text("writtenBack", done));
        Ok(Outcome {
            execute_data: out,
            undo: None,
        })
    }

    async fn list_records(&self, call: &Call) -> Result<Outcome, ProviderError> {
        let zone = zone_input(&call.execute_data)?;
        let snap = self.backend.snapshot(&zone).await?;
        let mut out = call.execute_data.clone();
        out.push(serial_el(snap.serial));
        let mut list = Element::new("records");
        for r in &snap.records {
            let mut e = Element::new("record");
            e.list_item = true;
            e.push(text("name", r.owner.clone()));
            e.push(Element::with_scalar("ttl", Scalar::Int(i64::from(r.ttl))));
            e.push(text("rrType", r.data.rtype()));
            e.push(text("data", r.data.to_text()));
            list.push(e);
        }
        out.push(list);
        Ok(Outcome {
            execute_data: out,
            undo: None,
        })
    }

    async fn undo_record(&self, done: &Done) -> Result<(), ProviderError> {
        let u = &done.undo;
        let op = opt_input(u, &["op"]).unwrap_or_default();
        let zone = parse_zone("zone", &req_input(u, &["zone"])?)?;
        let record = || parse_undo_line(&req_input(u, &["record"])?, &zone);
        match op.as_str() {
            "removeZone" => Ok(self.backend.remove_zone(&zone).await?),
            "restoreZone" => {
                let token = req_input(u, &["token"])?;
                Ok(self.backend.restore_zone(&zone, &token).await?)
            }
            "removeRecord" => {
                let r = record()?;
                let guard = read_guard(u, &zone)?;
                Ok(self.backend.undo_add(&zone, &r, guard.as_ref()).await?)
            }
            "addRecord" => {
                let r = record()?;
                let guard = read_guard(u, &zone)?;
                Ok(self.backend.undo_delete(&zone, &r, guard.as_ref()).await?)
            }
            "restoreRrset" => {
                let rtype = req_input(u, &["rrType"])?;
                let owner = req_input(u, &["name"])?;
                let before = read_record_list(u, "before", &zone)?;
                let after = read_record_list(u, "after", &zone)?;
                let restored = self
                    .backend
                    .replace_rrset(
                        &zone,
                        &owner,
                        &rtype,
                        NewRrset::Records(&before),
                        Some(&after),
                        None,
                    )
                    .await;
                match restored {
                    Ok(_) => Ok(()),
                    // Nothing to put back in a zone that is gone.
                    Err(DnsError::ZoneNotFound(_)) if before.is_empty() => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            other => Err(ProviderError::invalid(format!(
                "DNS cannot undo {}: unknown undo record op {other:?}",
                done.context.procedure
            ))),
        }
    }

    /// Settles a call a crash left in doubt: the undo record the call would have returned
    /// if it was applied, `None` if it was not.
    async fn recover_call(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        if mps::MpsProcedure::of(&call.context.procedure).is_some() {
            return match self.translate_mps(call) {
                // Inputs that do not validate made the call fail before any change, and a
                // check-only call changes nothing.
                Err(_) => Ok(None),
                Ok(Some(t)) if t.check_only => Ok(None),
                Ok(Some(t)) => Box::pin(self.recover_call(&t.call)).await,
                Ok(None) => Ok(None),
            };
        }
        let key = call.context.idempotency_key();
        let data = &call.execute_data;
        let Some(procedure) = canonical_procedure(&call.context.procedure) else {
            // An unknown procedure fails before doing anything.
            return Ok(None);
        };
        // Inputs that do not validate made the call fail before any change.
        let found = match procedure {
            "CreateZone" => {
                let Ok(s) = zone_settings(data) else {
                    return Ok(None);
                };
                let found = self
                    .backend
                    .recover(&key, &InDoubt::CreateZone { zone: &s.zone })
                    .await?;
                (s.zone, found)
            }
            "DeleteZone" => {
                let Ok(zone) = zone_input(data) else {
                    return Ok(None);
                };
                let found = self
                    .backend
                    .recover(&key, &InDoubt::DeleteZone { zone: &zone })
                    .await?;
                (zone, found)
            }
            "AddRecord" | "DeleteRecord" => {
                let Ok(r) = record_input(data) else {
                    return Ok(None);
                };
                let in_doubt = if procedure == "AddRecord" {
                    InDoubt::AddRecord {
                        zone: &r.zone,
                        owner: &r.owner,
                        ttl: r.ttl,
                        data: &r.data,
                    }
                } else {
                    InDoubt::DeleteRecord {
                        zone: &r.zone,
                        owner: &r.owner,
                        data: &r.data,
                    }
                };
                let found = self.backend.recover(&key, &in_doubt).await?;
                (r.zone, found)
            }
            "ReplaceRecordSet" => {
                let Ok(r) = rrset_input(data) else {
                    return Ok(None);
                };
                let found = self.backend.recover(&key, &r.in_doubt()).await?;
                if let Recovered::Rrset { before, after } = &found {
                    return Ok(Some(rrset_undo(&r.zone, &r.owner, &r.rtype, before, after)));
                }
                (r.zone, found)
            }
            // Reads change nothing.
            _ => return Ok(None),
        };
        let (zone, found) = found;
        let undo = match (procedure, found) {
            (_, Recovered::NotApplied) => return Ok(None),
            ("CreateZone", Recovered::ZoneCreated) => undo_el("removeZone", &zone),
            ("DeleteZone", Recovered::ZoneDeleted { token }) => restore_zone_undo(&zone, token),
            ("AddRecord", Recovered::Record { record, guard }) => {
                record_undo("removeRecord", &zone, &record, guard.as_ref())
            }
            ("DeleteRecord", Recovered::Record { record, guard }) => {
                record_undo("addRecord", &zone, &record, guard.as_ref())
            }
            (p, other) => {
                return Err(ProviderError::permanent(format!(
                    "the {} DNS backend answered recovery of {p} ({key}) with {other:?}; check it by hand",
                    self.backend.kind()
                )))
            }
        };
        Ok(Some(undo))
    }

    async fn preview_call(&self, call: &Call) -> Result<Preview, ProviderError> {
        if let Some(t) = self.translate_mps(call)? {
            if t.check_only {
                return Ok(Preview::NoChange(
                    "debugLevel check-only: inputs are checked, nothing is changed".into(),
                ));
            }
            if t.modify {
                let r = rrset_input(&t.call.execute_data)?;
                if let Err(e) = self.modify_target(&r).await {
                    return Ok(Preview::Fail(e.message()));
                }
            }
            return Box::pin(self.preview_call(&t.call)).await;
        }
        let data = &call.execute_data;
        match canonical_procedure(&call.context.procedure) {
            Some("CreateZone") => {
                let s = zone_settings(data)?;
                let exists = self.backend.zone_exists(&s.zone).await?;
                // Without zone creation (RFC 2136 without rndc) CreateZone only checks
                // that the server serves the zone.
                Ok(match (exists, self.backend.deletes_zones()) {
                    (true, true) => Preview::Fail(format!("zone {} already exists", s.zone)),
                    (false, true) => Preview::Change(format!("create zone {}", s.zone)),
                    (true, false) => Preview::NoChange(format!(
                        "zone {} is served by the DNS server (the {} backend only checks it)",
                        s.zone,
                        self.backend.kind()
                    )),
                    (false, false) => Preview::Fail(format!(
                        "zone {} is not served by the DNS server, and the {} backend cannot \
                         create zones without rndc",
                        s.zone,
                        self.backend.kind()
                    )),
                })
            }
            Some("DeleteZone") => {
                let zone = zone_input(data)?;
                if !self.backend.deletes_zones() {
                    return Ok(Preview::Fail(format!(
                        "delete zone {zone}: not possible with the {} backend without rndc",
                        self.backend.kind()
                    )));
                }
                Ok(if self.backend.zone_exists(&zone).await? {
                    Preview::Update(format!("delete zone {zone} (kept aside for undo)"))
                } else {
                    Preview::Fail(format!("zone {zone} does not exist"))
                })
            }
            Some(p @ ("AddRecord" | "DeleteRecord")) => {
                let r = record_input(data)?;
                let desc = describe_record(&r.zone, &r.owner, &r.data);
                let Some(present) = self
                    .backend
                    .record_exists(&r.zone, &r.owner, &r.data)
                    .await?
                else {
                    return Ok(Preview::Change(format!(
                        "{} {desc} (zone {} does not exist yet)",
                        if p == "AddRecord" { "add" } else { "delete" },
                        r.zone
                    )));
                };
                // AddRecord of a present record and DeleteRecord of an absent one fail.
                Ok(match (p, present) {
                    ("AddRecord", true) => Preview::Fail(format!("{desc} already exists")),
                    ("AddRecord", false) => Preview::Change(format!("add {desc}")),
                    (_, true) => Preview::Update(format!("delete {desc}")),
                    (_, false) => Preview::Fail(format!("{desc} does not exist")),
                })
            }
            Some("ReplaceRecordSet") => {
                let r = rrset_input(data)?;
                let Some((live, default_ttl)) =
                    self.backend.read_rrset(&r.zone, &r.owner, &r.rtype).await?
                else {
                    return Ok(Preview::Change(format!(
                        "replace {} (zone {} does not exist yet)",
                        r.set_name(),
                        r.zone
                    )));
                };
                let new = NewRrset::Data {
                    ttl: r.ttl,
                    data: &r.data,
                }
                .resolve(&r.owner, default_ttl);
                Ok(if same_rrset(&live, &new) {
                    Preview::NoChange(format!(
                        "{} already holds exactly {}",
                        r.set_name(),
                        describe_rrset(&new)
                    ))
                } else if live.is_empty() {
                    Preview::Change(format!("create {}: {}", r.set_name(), describe_rrset(&new)))
                } else {
                    Preview::Update(format!(
                        "replace {}: {} → {}",
                        r.set_name(),
                        describe_rrset(&live),
                        describe_rrset(&new)
                    ))
                })
            }
            Some("ListRecords") => Ok(Preview::NoChange("read only".into())),
            Some("WriteBackZoneFile") => {
                let zone = zone_input(data)?;
                Ok(if self.backend.zone_exists(&zone).await? {
                    Preview::NoChange(format!(
                        "write zone {zone}'s changes to its file (the zone's data does not change)"
                    ))
                } else {
                    Preview::Fail(format!("zone {zone} does not exist"))
                })
            }
            _ => Ok(Preview::Unknown),
        }
    }
}

/// Parses a record line of an undo record.
fn parse_undo_line(line: &str, zone: &str) -> Result<Record, ProviderError> {
    match zonefile::parse_record_line(line, zone, 3600) {
        Ok(Some((r, None))) => Ok(r),
        Ok(_) => Err(ProviderError::invalid(format!(
            "undo record holds no resource record: {line:?}"
        ))),
        Err(e) => Err(ProviderError::invalid(format!(
            "undo record holds a bad resource record {line:?}: {e}"
        ))),
    }
}

/// Writes `<guard><before><record>…</record></before><after>…</after></guard>`: the
/// RRset's data before and after the change, as record lines with the change's owner.
fn push_guard(undo: &mut Element, record: &Record, guard: Option<&RrsetGuard>) {
    let Some(g) = guard else { return };
    let mut ge = Element::new("guard");
    for (name, set) in [("before", &g.before), ("after", &g.after)] {
        let mut e = Element::new(name);
        for d in set {
            let line = Record {
                owner: record.owner.clone(),
                ttl: record.ttl,
                data: d.clone(),
            }
            .line();
            let mut r = text("record", line);
            r.list_item = true;
            e.push(r);
        }
        ge.push(e);
    }
    if let Some(ttl) = g.before_ttl {
        ge.push(Element::with_scalar(
            "beforeTtl",
            Scalar::Int(i64::from(ttl)),
        ));
    }
    undo.push(ge);
}

/// Reads the guard written by [`push_guard`], if any.
fn read_guard(undo: &Element, zone: &str) -> Result<Option<RrsetGuard>, ProviderError> {
    let Some(ge) = undo.child("guard") else {
        return Ok(None);
    };
    let set = |name: &str| -> Result<Vec<RData>, ProviderError> {
        let Some(e) = ge.child(name) else {
            return Ok(Vec::new());
        };
        e.elements()
            .filter(|c| c.name == "record")
            .map(|c| parse_undo_line(&c.string_value(), zone).map(|r| r.data))
            .collect()
    };
    // Absent in undo records written before it was kept.
    let before_ttl = match ge.child("beforeTtl") {
        Some(e) => Some(e.string_value().trim().parse::<u32>().map_err(|_| {
            ProviderError::invalid(format!(
                "undo record holds a bad guard TTL {:?}",
                e.string_value()
            ))
        })?),
        None => None,
    };
    Ok(Some(RrsetGuard {
        before: set("before")?,
        after: set("after")?,
        before_ttl,
    }))
}

/// Maps a called entry point (including MPS-style aliases) to the procedure it runs.
fn canonical_procedure(name: &str) -> Option<&'static str> {
    Some(match name {
        "CreateZone" => "CreateZone",
        "DeleteZone" => "DeleteZone",
        "AddRecord" => "AddRecord",
        "DeleteRecord" => "DeleteRecord",
        "ReplaceRecordSet" | "ReplaceResourceRecordSet" => "ReplaceRecordSet",
        "ListRecords" => "ListRecords",
        "WriteBackZoneFile" => "WriteBackZoneFile",
        _ => return None,
    })
}

fn record_inputs() -> Vec<InputSpec> {
    vec![
        input("zoneName", "string", true, "Zone, e.g. example.com (alias ContainerName)"),
        input_default(
            "name",
            "string",
            "@",
            "Owner relative to the zone (`www`, `_dmarc`), `@` for the apex, or a full name inside the zone (alias OwnerName)",
        ),
        input("rrType", "string", true, "A, AAAA, CNAME, MX, TXT, SRV, NS or CAA (MPS `AType`, `MXType`… accepted)"),
        input("ttl", "int", false, "Seconds; default: the zone's $TTL (alias TTL)"),
        input("address", "string", false, "A/AAAA: the IP address (alias IPAddress)"),
        input("target", "string", false, "CNAME/NS/SRV: target host name, absolute (aliases PrimaryName, NSHost, DomainName)"),
        input("preference", "int", false, "MX: preference, default 10 (alias Preference)"),
        input("exchange", "string", false, "MX: mail host (alias MailExchange)"),
        input("text", "string", false, "TXT: the text, verbatim (alias DescriptiveText)"),
        input("priority", "int", false, "SRV: priority"),
        input("weight", "int", false, "SRV: weight"),
        input("port", "int", false, "SRV: port"),
        input("flags", "int", false, "CAA: flags, default 0"),
        input("tag", "string", false, "CAA: issue, issuewild or iodef"),
        input("value", "string", false, "CAA: value"),
    ]
}

fn mps_server_input() -> InputSpec {
    input(
        "serverIdentifier",
        "string",
        false,
        "The DNS server (address or name); must be the one this provider manages",
    )
}

/// MPS's `userName` / `password` for the DNS server: accepted, not used; the password is
/// declared secret so it is masked wherever the engine writes the call.
fn mps_credential_inputs() -> [InputSpec; 2] {
    [
        input(
            "userName",
            "string",
            false,
            "Accepted and not used (the provider signs with its TSIG key)",
        ),
        InputSpec {
            secret: true,
            ..input(
                "password",
                "string",
                false,
                "Accepted and not used; secret: never logged, journaled or returned in clear",
            )
        },
    ]
}

/// Inputs of CreateResourceRecord / DeleteResourceRecord (MPS shape).
fn mps_record_inputs(delete: bool) -> Vec<InputSpec> {
    let mut v = vec![
        mps_server_input(),
        input("zoneName", "string", false, "Zone, e.g. fabrikam.com (or properties/ContainerName)"),
        input("rrType", "string", true, "MicrosoftDNS_AType, …_AAAAType, …_CNAMEType, …_MXType, …_TXTType, …_NSType, …_SRVType (or A, MX, …)"),
        input("commitFlag", "string", false, "COMMIT or NOCOMMIT: the record is served and written at once either way"),
        input(
            "properties",
            "element",
            true,
            "ContainerName, OwnerName (full or relative name; default the apex), TTL, and per type IPAddress | IPv6Address | PrimaryName | NSHost | MailExchange + Preference | DescriptiveText (verbatim) | Priority + Weight + Port + DomainName; as <OwnerName>…</OwnerName> or <property name=\"OwnerName\">…</property>",
        ),
        input("debugLevel", "element", false, "@check-only=\"on\": validate only; @logging accepted"),
    ];
    v.extend(mps_credential_inputs());
    if delete {
        v.push(input(
            "rrName",
            "string",
            false,
            "The record's name (same as properties/OwnerName)",
        ));
    }
    v
}

fn rrset_inputs() -> Vec<InputSpec> {
    vec![
        input("zoneName", "string", true, "Zone, e.g. example.com (alias ContainerName)"),
        input_default(
            "name",
            "string",
            "@",
            "Owner relative to the zone, `@` for the apex, or a full name inside the zone (alias OwnerName)",
        ),
        input("rrType", "string", true, "A, AAAA, CNAME, MX, TXT, SRV, NS or CAA (MPS `AType`… accepted)"),
        input("ttl", "int", false, "Seconds, one TTL for the whole RRset; default: the zone's $TTL (alias TTL)"),
        input(
            "records",
            "list",
            true,
            "One or more records, each with AddRecord's data fields for the type (`address`; `target`; `preference`+`exchange`; `text`; `priority`+`weight`+`port`+`target`; `flags`+`tag`+`value`); exactly one for CNAME",
        ),
    ]
}

/// The procedures, before [`Provider::procedures`] adds the input checks.
fn procedure_list() -> Vec<ProcedureSpec> {
    let spec =
        |name: &str, kind: ProcKind, undo: UndoKind, description: &str, inputs| ProcedureSpec {
            name: name.to_string(),
            kind,
            undo,
            description: description.to_string(),
            inputs,
        };
    let zone_only = || vec![input("zoneName", "string", true, "Zone, e.g. example.com")];
    let add = "Adds one record and bumps the SOA serial. Outputs `record`, `fqdn`, `serial`. Undo removes exactly that record.";
    let del = "Removes one record (matched by owner, type and data) and bumps the serial. Outputs `record`, `serial`. Undo adds it back.";
    let replace = "Replaces the whole RRset (owner and type) with `records`, one TTL, in one atomic change; the same set again changes nothing. Outputs `fqdn`, `changed`, `previous` and `current` (record lines), `serial`. Undo restores the previous RRset (or removes the new one), refusing if someone else changed it meanwhile.";
    vec![
        spec(
            "CreateZone",
            ProcKind::Write,
            UndoKind::Reversible,
            "Creates a zone with SOA and NS. Outputs `zone`, `serial`, `location`, `warning` (if any). Undo deletes it.",
            vec![
                input("zoneName", "string", true, "Zone, e.g. example.com"),
                input("primaryNs", "string", false, "Primary name server; default ns1.<zone>"),
                input("adminEmail", "string", false, "Responsible mailbox (a@b.c or a.b.c); default hostmaster.<zone>"),
                input_default("ttl", "int", "3600", "Default TTL ($TTL) in seconds"),
                input("nsAddress", "string", false, "IP of the primary name server, written as glue when it is inside the zone"),
                input_default("refresh", "int", "7200", "SOA refresh"),
                input_default("retry", "int", "3600", "SOA retry"),
                input_default("expire", "int", "1209600", "SOA expire"),
                input_default("minimum", "int", "3600", "SOA negative-caching TTL"),
            ],
        ),
        spec(
            "DeleteZone",
            ProcKind::Write,
            UndoKind::Reversible,
            "Takes a zone out of service, keeping a copy. Output `deleted`. Undo restores it.",
            zone_only(),
        ),
        spec("AddRecord", ProcKind::Write, UndoKind::Reversible, add, record_inputs()),
        spec(
            "CreateResourceRecord",
            ProcKind::Write,
            UndoKind::Reversible,
            &format!("MPS: AddRecord with the HMC inputs (the record's fields in `properties`). {add} Also `OperationStatus`."),
            mps_record_inputs(false),
        ),
        spec("DeleteRecord", ProcKind::Write, UndoKind::Reversible, del, record_inputs()),
        spec(
            "DeleteResourceRecord",
            ProcKind::Write,
            UndoKind::Reversible,
            &format!("MPS: DeleteRecord with the HMC inputs (the record's fields in `properties`). {del} Also `OperationStatus`."),
            mps_record_inputs(true),
        ),
        spec(
            "CreateDNSZone",
            ProcKind::Write,
            UndoKind::Reversible,
            "MPS: CreateZone with the HMC inputs. Outputs `zone`, `serial`, `location`, `OperationStatus`. Undo deletes the zone.",
            vec![
                mps_server_input(),
                input("zoneName", "string", true, "Zone, e.g. fabrikam.com"),
                input("zoneType", "string", false, "PRIMARY (default); SECONDARY and FORWARD are refused"),
                input("adminEmail", "string", false, "Responsible mailbox; default hostmaster.<zone>"),
                input("commitFlag", "string", true, "COMMIT (required: MPS's default NOCOMMIT, a paused zone without a file, is refused)"),
                input("primaryNs", "string", false, "Provisio: primary name server; default ns1.<zone>"),
                input("nsAddress", "string", false, "Provisio: IP of the primary name server (glue)"),
                input("debugLevel", "element", false, "@check-only=\"on\": validate only; @logging accepted"),
            ]
            .into_iter()
            .chain(mps_credential_inputs())
            .collect(),
        ),
        spec(
            "DeleteDNSZone",
            ProcKind::Write,
            UndoKind::Reversible,
            "MPS: DeleteZone with the HMC inputs. Outputs `deleted`, `OperationStatus`. Undo restores the zone.",
            vec![
                mps_server_input(),
                input("zoneName", "string", true, "Zone, e.g. fabrikam.com"),
                input("debugLevel", "element", false, "@check-only=\"on\": validate only; @logging accepted"),
            ]
            .into_iter()
            .chain(mps_credential_inputs())
            .collect(),
        ),
        spec(
            "ModifyResourceRecord",
            ProcKind::Write,
            UndoKind::Reversible,
            "MPS: replaces the only record of `properties/OwnerName` and `rrType` with the one given (data and TTL), atomically (ReplaceRecordSet of one record). A name holding no such record (RECORD_DOES_NOT_EXIST) or several (ambiguous) is refused. Outputs `fqdn`, `changed`, `previous`, `current`, `serial`, `OperationStatus`. Undo puts the old record back, refusing if someone else changed it meanwhile.",
            mps_record_inputs(false),
        ),
        spec(
            "WriteBackZoneFile",
            ProcKind::Write,
            UndoKind::Nothing,
            "MPS: writes the zone's changes to its zone file. zonefile backend: nothing to do (every change is written and fsynced at once); rfc2136 with rndc: `rndc sync ZONE`. Output `writtenBack`, `OperationStatus`. The zone's data does not change: no undo.",
            vec![
                mps_server_input(),
                input("zoneName", "string", true, "Zone, e.g. fabrikam.com"),
                input("debugLevel", "element", false, "@check-only=\"on\": validate only; @logging accepted"),
            ]
            .into_iter()
            .chain(mps_credential_inputs())
            .collect(),
        ),
        spec(
            "PauseZone",
            ProcKind::Write,
            UndoKind::Nothing,
            "MPS: refused with a message saying what to do instead: BIND has no paused zones (use DeleteDNSZone to stop serving a zone).",
            vec![mps_server_input(), input("zoneName", "string", true, "Zone")],
        ),
        spec(
            "ResumeZone",
            ProcKind::Write,
            UndoKind::Nothing,
            "MPS: refused with a message saying what to do instead: BIND has no paused zones; every zone Provisio creates is served at once.",
            vec![mps_server_input(), input("zoneName", "string", true, "Zone")],
        ),
        spec(
            "ReplaceRecordSet",
            ProcKind::Write,
            UndoKind::Reversible,
            replace,
            rrset_inputs(),
        ),
        spec(
            "ReplaceResourceRecordSet",
            ProcKind::Write,
            UndoKind::Reversible,
            &format!("MPS-style name of ReplaceRecordSet. {replace}"),
            rrset_inputs(),
        ),
        spec(
            "ListRecords",
            ProcKind::Read,
            UndoKind::Nothing,
            "Lists the zone. Outputs `serial` and `records/record{name, ttl, rrType, data}`.",
            zone_only(),
        ),
    ]
}

#[async_trait]
impl Provider for DnsProvider {
    fn name(&self) -> &str {
        "DNS"
    }

    fn procedures(&self) -> Vec<ProcedureSpec> {
        let mut specs = procedure_list();
        // Constant inputs are checked when a request compiles, by the code the calls use.
        for input in specs.iter_mut().flat_map(|s| s.inputs.iter_mut()) {
            let check: fn(&str) -> Result<(), String> = match input.name.as_str() {
                "zoneName" => |v| {
                    parse_zone("zoneName", v.trim_end_matches(char::is_whitespace))
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                },
                "rrType" => |v| rr_type_text(v).map(|_| ()).map_err(|e| e.to_string()),
                "ttl" | "refresh" | "retry" | "expire" | "minimum" => |v| {
                    // Empty means "the default", as at run time.
                    ttl_value("ttl", Some(v.to_string()).filter(|v| !v.trim().is_empty()))
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                },
                "address" | "nsAddress" => |v| {
                    v.trim()
                        .parse::<IpAddr>()
                        .map(|_| ())
                        .map_err(|_| format!("{v:?} is not an IP address"))
                },
                _ => continue,
            };
            input.check = Some(provisio_engine::model::InputCheck(check));
        }
        specs
    }

    /// Runs the call in a task of its own, holding the fence of its idempotency key: when
    /// the engine stops waiting (step timeout), the change still runs to its end (a zone
    /// file written, an UPDATE answered or timed out), and `recover` for the key waits for
    /// it instead of reading a half-done change.
    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        let fenced = self.fences.hold(&call.context.idempotency_key()).await;
        let provider = DnsProvider {
            backend: Arc::clone(&self.backend),
            server_identifiers: self.server_identifiers.clone(),
            fences: self.fences.clone(),
        };
        let task = tokio::spawn(async move {
            let _fenced = fenced;
            provider.execute_call(&call).await
        });
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(ProviderError::in_doubt(format!(
                "the DNS provider's task did not finish: {e}"
            ))),
        }
    }
    async fn undo(&self, done: Done) -> Result<(), ProviderError> {
        self.undo_record(&done).await?;
        self.backend.forget(&done.context.idempotency_key()).await;
        Ok(())
    }

    async fn recover(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        let _fenced = self.fences.hold(&call.context.idempotency_key()).await;
        self.recover_call(call).await
    }

    /// Invalid inputs preview as `Fail` with the message the run would give (the call
    /// would fail); other errors (the server cannot be asked) stay errors.
    async fn preview(&self, call: &Call) -> Result<Preview, ProviderError> {
        match self.preview_call(call).await {
            Err(e) if e.code() == ProviderError::E_INVALIDARG => Ok(Preview::Fail(e.message())),
            other => other,
        }
    }

    async fn purge(
        &self,
        scope: &provisio_engine::provider::PurgeScope,
    ) -> Result<provisio_engine::provider::Purged, ProviderError> {
        Ok(self.backend.purge(scope).await?)
    }
}

impl DnsProvider {
    async fn execute_call(&self, call: &Call) -> Result<Outcome, ProviderError> {
        if let Some(t) = self.translate_mps(call)? {
            if t.check_only {
                return Ok(Outcome {
                    execute_data: mps::mps_output(
                        &call.execute_data,
                        &t.call.execute_data,
                        None,
                        &t,
                    ),
                    undo: None,
                });
            }
            if !t.warnings.is_empty() {
                tracing::warn!(procedure = %call.context.procedure, warnings = ?t.warnings, "DNS Provider MPS call");
            }
            let done = if t.modify {
                self.modify_record(&t.call).await?
            } else {
                self.run_canonical(&t.call).await?
            };
            return Ok(Outcome {
                execute_data: mps::mps_output(
                    &call.execute_data,
                    &t.call.execute_data,
                    Some(&done.execute_data),
                    &t,
                ),
                undo: done.undo,
            });
        }
        self.run_canonical(call).await
    }

    async fn run_canonical(&self, call: &Call) -> Result<Outcome, ProviderError> {
        match canonical_procedure(&call.context.procedure) {
            Some("CreateZone") => self.create_zone(call).await,
            Some("DeleteZone") => self.delete_zone(call).await,
            Some("AddRecord") => self.add_record(call).await,
            Some("DeleteRecord") => self.delete_record(call).await,
            Some("ReplaceRecordSet") => self.replace_record_set(call).await,
            Some("ListRecords") => self.list_records(call).await,
            Some("WriteBackZoneFile") => self.write_back(call).await,
            _ => Err(ProviderError::invalid(format!(
                "the DNS provider has no procedure {:?}",
                call.context.procedure
            ))),
        }
    }
}
