//! The DNS Provider's MPS procedures — `CreateDNSZone`, `DeleteDNSZone`,
//! `CreateResourceRecord`, `DeleteResourceRecord` — with the inputs HMC 4.5 requests send
//! (`serverIdentifier`, `zoneName`, `zoneType`, `adminEmail`, `commitFlag`, `rrType` as a
//! WMI class name, the record's fields in a `properties` wrapper).
//!
//! Each MPS call is translated into the call of the Provisio procedure it means
//! (CreateZone, DeleteZone, AddRecord, DeleteRecord), which then runs unchanged: the same
//! validation, backend, undo record, idempotency key, recovery and preview. Every element
//! of an MPS call is either honoured or refused with an error naming it; nothing is dropped.

use super::{parse_zone, rr_type_text, DnsProvider};
use crate::common::text;
use provisio_engine::data::Element;
use provisio_engine::provider::{Call, ProviderError};

/// Which Provisio procedure an MPS procedure runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MpsProcedure {
    /// `CreateDNSZone` → CreateZone.
    CreateZone,
    /// `DeleteDNSZone` → DeleteZone.
    DeleteZone,
    /// `CreateResourceRecord` → AddRecord.
    CreateRecord,
    /// `DeleteResourceRecord` → DeleteRecord.
    DeleteRecord,
    /// `ModifyResourceRecord` → ReplaceRecordSet of the record's name and type, allowed only
    /// when that RRset holds exactly one record (the one modified).
    ModifyRecord,
    /// `WriteBackZoneFile` → WriteBackZoneFile (zone files: nothing to do; BIND: `rndc sync`).
    WriteBack,
    /// `PauseZone`: refused (BIND has no paused zones).
    PauseZone,
    /// `ResumeZone`: refused (BIND has no paused zones).
    ResumeZone,
}

impl MpsProcedure {
    /// The MPS procedure called, if `name` is one.
    pub(crate) fn of(name: &str) -> Option<MpsProcedure> {
        Some(match name {
            "CreateDNSZone" => MpsProcedure::CreateZone,
            "DeleteDNSZone" => MpsProcedure::DeleteZone,
            "CreateResourceRecord" => MpsProcedure::CreateRecord,
            "DeleteResourceRecord" => MpsProcedure::DeleteRecord,
            "ModifyResourceRecord" => MpsProcedure::ModifyRecord,
            "WriteBackZoneFile" => MpsProcedure::WriteBack,
            "PauseZone" => MpsProcedure::PauseZone,
            "ResumeZone" => MpsProcedure::ResumeZone,
            _ => return None,
        })
    }

    /// The MPS name.
    pub(crate) fn mps_name(self) -> &'static str {
        match self {
            MpsProcedure::CreateZone => "CreateDNSZone",
            MpsProcedure::DeleteZone => "DeleteDNSZone",
            MpsProcedure::CreateRecord => "CreateResourceRecord",
            MpsProcedure::DeleteRecord => "DeleteResourceRecord",
            MpsProcedure::ModifyRecord => "ModifyResourceRecord",
            MpsProcedure::WriteBack => "WriteBackZoneFile",
            MpsProcedure::PauseZone => "PauseZone",
            MpsProcedure::ResumeZone => "ResumeZone",
        }
    }

    /// The Provisio procedure that does the work.
    pub(crate) fn canonical(self) -> &'static str {
        match self {
            MpsProcedure::CreateZone => "CreateZone",
            MpsProcedure::DeleteZone => "DeleteZone",
            MpsProcedure::CreateRecord => "AddRecord",
            MpsProcedure::DeleteRecord => "DeleteRecord",
            MpsProcedure::ModifyRecord => "ReplaceRecordSet",
            MpsProcedure::WriteBack => "WriteBackZoneFile",
            MpsProcedure::PauseZone => "PauseZone",
            MpsProcedure::ResumeZone => "ResumeZone",
        }
    }

    /// The top-level elements the procedure reads.
    fn elements(self) -> &'static [&'static str] {
        const COMMON: &[&str] = &[
            "serverIdentifier",
            "zoneName",
            "userName",
            "password",
            "debugLevel",
            "preferredDomainController",
        ];
        match self {
            MpsProcedure::CreateZone => &[
                "serverIdentifier",
                "zoneName",
                "userName",
                "password",
                "debugLevel",
                "preferredDomainController",
                "zoneType",
                "adminEmail",
                "commitFlag",
                "properties",
                // Provisio's own SOA/NS settings (CreateZone), accepted here too.
                "primaryNs",
                "nsAddress",
                "ttl",
                "refresh",
                "retry",
                "expire",
                "minimum",
            ],
            MpsProcedure::DeleteZone
            | MpsProcedure::WriteBack
            | MpsProcedure::PauseZone
            | MpsProcedure::ResumeZone => COMMON,
            MpsProcedure::CreateRecord | MpsProcedure::ModifyRecord => &[
                "serverIdentifier",
                "zoneName",
                "userName",
                "password",
                "debugLevel",
                "preferredDomainController",
                "rrType",
                "commitFlag",
                "properties",
            ],
            MpsProcedure::DeleteRecord => &[
                "serverIdentifier",
                "zoneName",
                "userName",
                "password",
                "debugLevel",
                "preferredDomainController",
                "rrType",
                "rrName",
                "commitFlag",
                "properties",
            ],
        }
    }
}

/// An MPS call turned into the Provisio call it means.
pub(crate) struct Translated {
    /// The Provisio call: same context (idempotency key) but the canonical procedure and
    /// its inputs.
    pub(crate) call: Call,
    /// `debugLevel/@check-only="on"`: validate only, change nothing.
    pub(crate) check_only: bool,
    /// What the caller should know (credentials not used, …); added to the output.
    pub(crate) warnings: Vec<String>,
    /// ModifyResourceRecord: the RRset must hold exactly one record, replaced atomically.
    pub(crate) modify: bool,
}

/// `DNS Provider/<procedure>: ` for messages.
fn at(p: MpsProcedure) -> String {
    format!("DNS Provider/{}", p.mps_name())
}

fn invalid(p: MpsProcedure, message: impl std::fmt::Display) -> ProviderError {
    ProviderError::invalid(format!("{}: {message}", at(p)))
}

/// A record field: the WMI property name, the Provisio input it feeds.
type Field = (&'static str, &'static str);

/// Properties every record type takes.
const COMMON_PROPERTIES: &[Field] = &[("ContainerName", ""), ("OwnerName", ""), ("TTL", "ttl")];

/// The type-specific properties (MicrosoftDNS_<T>Type WMI classes; CAA is Provisio's).
fn type_properties(rtype: &str) -> &'static [Field] {
    match rtype {
        "A" => &[("IPAddress", "address")],
        "AAAA" => &[("IPv6Address", "address")],
        "CNAME" => &[("PrimaryName", "target")],
        "NS" => &[("NSHost", "target")],
        "MX" => &[("MailExchange", "exchange"), ("Preference", "preference")],
        "TXT" => &[("DescriptiveText", "text")],
        "SRV" => &[
            ("Priority", "priority"),
            ("Weight", "weight"),
            ("Port", "port"),
            ("DomainName", "target"),
        ],
        "CAA" => &[("Flags", "flags"), ("Tag", "tag"), ("Value", "value")],
        _ => &[],
    }
}

/// Reads `properties`: either `<properties><OwnerName>x</OwnerName>…</properties>` or the
/// HMC form `<properties><property name="OwnerName">x</property>…</properties>`. Returns
/// (name, value) in document order; a name given twice is an error.
fn read_properties(
    p: MpsProcedure,
    data: &Element,
) -> Result<Vec<(String, String)>, ProviderError> {
    let mut wrappers = data.elements().filter(|e| e.name == "properties");
    let Some(props) = wrappers.next() else {
        return Ok(Vec::new());
    };
    if wrappers.next().is_some() {
        return Err(invalid(p, "`properties` is given more than once; give one `properties` element holding every property"));
    }
    if !props.string_value().trim().is_empty() && props.elements().next().is_none() {
        return Err(invalid(
            p,
            format!(
                "`properties` holds text ({:?}) instead of property elements",
                props.string_value()
            ),
        ));
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for e in props.elements() {
        let name = if e.name == "property" {
            match e.attr("name") {
                Some(n) if !n.trim().is_empty() => n.trim().to_string(),
                _ => {
                    return Err(invalid(
                        p,
                        "`properties/property` has no `name` attribute (write <property name=\"OwnerName\">…</property>)",
                    ))
                }
            }
        } else {
            e.name.to_string()
        };
        if out.iter().any(|(n, _)| *n == name) {
            return Err(invalid(p, format!("property `{name}` is given twice")));
        }
        out.push((name, e.string_value()));
    }
    Ok(out)
}

/// Refuses top-level elements the procedure does not read, and Provisio's flat record
/// inputs (which belong in `properties` here).
fn check_elements(p: MpsProcedure, data: &Element) -> Result<(), ProviderError> {
    let allowed = p.elements();
    for e in data.elements() {
        if allowed.contains(&e.name.as_str()) {
            continue;
        }
        let hint = match p {
            MpsProcedure::CreateRecord
            | MpsProcedure::DeleteRecord
            | MpsProcedure::ModifyRecord => {
                " (a record's fields go inside `properties`, e.g. <properties><OwnerName>www</OwnerName><IPAddress>192.0.2.1</IPAddress></properties>; \
                 Provisio's AddRecord/DeleteRecord take them flat)"
            }
            _ => "",
        };
        return Err(invalid(
            p,
            format!(
                "element `{}` is not an input of this procedure (inputs: {}){hint}",
                e.name,
                allowed.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Whether `serverIdentifier` names the server this provider manages.
fn check_server(p: MpsProcedure, dns: &DnsProvider, data: &Element) -> Result<(), ProviderError> {
    let Some(raw) = data.child("serverIdentifier").map(Element::string_value) else {
        return Ok(());
    };
    let given = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    if given.is_empty() {
        return Err(invalid(p, "`serverIdentifier` is empty"));
    }
    let mut known: Vec<String> = dns
        .server_identifiers
        .iter()
        .map(|s| s.trim().trim_end_matches('.').to_ascii_lowercase())
        .collect();
    let target = match dns.backend.server() {
        Some(addr) => {
            known.push(addr.ip().to_string());
            known.push(addr.to_string());
            if addr.ip().is_loopback() {
                known.push("localhost".into());
            }
            format!("the DNS server at {addr}")
        }
        None => {
            known.extend(["localhost", "127.0.0.1", "::1", "."].map(String::from));
            "local zone files".to_string()
        }
    };
    if known.contains(&given) {
        return Ok(());
    }
    Err(invalid(
        p,
        format!(
            "`serverIdentifier` {raw:?} is not the server this provider manages ({target}); it accepts {}. \
             One provider serves one DNS server: add other names for it with `server_identifiers` under [providers.dns]",
            known.join(", ")
        ),
    ))
}

/// `userName`/`password`, `debugLevel`: the credentials are not used (a warning says so),
/// `debugLevel/@check-only` is honoured, `@logging` is accepted.
fn common(p: MpsProcedure, data: &Element) -> Result<(bool, Vec<String>), ProviderError> {
    let mut warnings = Vec::new();
    if data.child("userName").is_some() || data.child("password").is_some() {
        warnings.push(
            "userName/password are not used: Provisio signs every change with the TSIG key (or writes zone files) configured for the provider".to_string(),
        );
    }
    let mut check_only = false;
    if let Some(d) = data.child("debugLevel") {
        for (name, value) in &d.attrs {
            let v = value.trim().to_ascii_lowercase();
            match name.as_str() {
                "logging" if matches!(v.as_str(), "high" | "medium" | "low") => {}
                "check-only" if v == "on" => check_only = true,
                "check-only" if v == "off" => {}
                "logging" | "check-only" => {
                    return Err(invalid(
                        p,
                        format!(
                            "`debugLevel/@{name}` is {value:?}; expected {}",
                            if name.as_str() == "logging" {
                                "high, medium or low"
                            } else {
                                "on or off"
                            }
                        ),
                    ))
                }
                other => {
                    return Err(invalid(
                        p,
                        format!("`debugLevel/@{other}` is not known (debugLevel takes logging and check-only)"),
                    ))
                }
            }
        }
        if d.elements().next().is_some() || !d.string_value().trim().is_empty() {
            return Err(invalid(
                p,
                "`debugLevel` takes only the attributes logging and check-only",
            ));
        }
    }
    Ok((check_only, warnings))
}

/// `commitFlag`: COMMIT or NOCOMMIT (case-insensitive), `None` when absent.
fn commit_flag(p: MpsProcedure, data: &Element) -> Result<Option<bool>, ProviderError> {
    let Some(raw) = data.child("commitFlag").map(Element::string_value) else {
        return Ok(None);
    };
    match raw.trim().to_ascii_uppercase().as_str() {
        "COMMIT" => Ok(Some(true)),
        "NOCOMMIT" => Ok(Some(false)),
        _ => Err(invalid(
            p,
            format!("`commitFlag` is {raw:?}; expected COMMIT or NOCOMMIT"),
        )),
    }
}

/// The zone from `zoneName` (or `properties/ContainerName`); both given must agree.
fn zone_of(
    p: MpsProcedure,
    data: &Element,
    container: Option<&str>,
) -> Result<String, ProviderError> {
    let zone_name = data
        .child("zoneName")
        .map(Element::string_value)
        .filter(|z| !z.trim().is_empty());
    let raw = match (zone_name.as_deref(), container) {
        (Some(z), _) => z.to_string(),
        (None, Some(c)) => c.to_string(),
        (None, None) => return Err(invalid(p, "`zoneName` is required")),
    };
    let zone =
        parse_zone("zoneName", raw.trim().trim_end_matches('.')).map_err(|e| invalid(p, e))?;
    if let (Some(_), Some(c)) = (zone_name.as_deref(), container) {
        let c_zone = parse_zone("properties/ContainerName", c.trim().trim_end_matches('.'))
            .map_err(|e| invalid(p, e))?;
        if c_zone != zone {
            return Err(invalid(
                p,
                format!(
                    "`properties/ContainerName` {c:?} names another zone than `zoneName` {raw:?}"
                ),
            ));
        }
    }
    Ok(zone)
}

/// Rewrites the Provisio input names in a validation message into the MPS elements the
/// caller wrote (`input \`address\`` → `property \`IPAddress\``).
fn rename_fields(message: &str, fields: &[(String, String)]) -> String {
    let mut m = message.to_string();
    for (provisio, mps) in fields {
        m = m.replace(&format!("input `{provisio}`"), &format!("`{mps}`"));
    }
    m
}

impl DnsProvider {
    /// Translates an MPS call; `Ok(None)` when the call is not one of the MPS procedures.
    pub(crate) fn translate_mps(&self, call: &Call) -> Result<Option<Translated>, ProviderError> {
        let Some(p) = MpsProcedure::of(&call.context.procedure) else {
            return Ok(None);
        };
        if matches!(p, MpsProcedure::PauseZone | MpsProcedure::ResumeZone) {
            return Err(invalid(
                p,
                "is not supported: BIND (and the zone files Provisio writes) has no paused zones; in MPS a \
                 paused zone is kept but not answered for. Every zone Provisio creates is served at once \
                 (CreateDNSZone requires commitFlag COMMIT). To stop serving a zone use DeleteDNSZone (its undo \
                 brings the zone back with every record); to hold off dynamic updates on BIND use `rndc freeze`",
            ));
        }
        let data = &call.execute_data;
        check_elements(p, data)?;
        check_server(p, self, data)?;
        let (check_only, mut warnings) = common(p, data)?;
        let commit = commit_flag(p, data)?;
        let mut flat = Element::new("executeData");
        match p {
            MpsProcedure::CreateZone => {
                let props = read_properties(p, data)?;
                if let Some((name, _)) = props.first() {
                    return Err(invalid(
                        p,
                        format!(
                            "property `{name}` is not supported: CreateDNSZone takes no properties in Provisio (the zone's SOA comes from adminEmail and the optional primaryNs, nsAddress, ttl, refresh, retry, expire, minimum)"
                        ),
                    ));
                }
                if let Some(t) = data.child("zoneType").map(Element::string_value) {
                    match t.trim().to_ascii_uppercase().as_str() {
                        "PRIMARY" => {}
                        "SECONDARY" | "FORWARD" | "STUB" => {
                            return Err(invalid(
                                p,
                                format!(
                                    "`zoneType` {t:?} is not supported: Provisio creates primary zones only (the zone's data is written by this provider). A secondary or forward zone is configuration of the server that holds it: add it there (named.conf `type secondary; primaries {{ … }};` or `type forward; forwarders {{ … }};`), and let this primary notify it with `zone_options = \"also-notify {{ … }};\"` under [providers.dns.rndc]"
                                ),
                            ))
                        }
                        _ => {
                            return Err(invalid(
                                p,
                                format!(
                                    "`zoneType` is {t:?}; expected PRIMARY (SECONDARY and FORWARD are MPS values Provisio does not support)"
                                ),
                            ))
                        }
                    }
                }
                match commit {
                    Some(true) => {}
                    Some(false) | None => {
                        return Err(invalid(
                            p,
                            format!(
                                "`commitFlag` is {}, which in MPS creates the zone PAUSED and without a zone file until WriteBackZoneFile and ResumeZone; Provisio has neither and creates every zone served and written at once: pass <commitFlag>COMMIT</commitFlag>",
                                if commit.is_some() { "NOCOMMIT" } else { "absent (MPS default NOCOMMIT)" }
                            ),
                        ))
                    }
                }
                let zone = zone_of(p, data, None)?;
                flat.push(text("zoneName", zone));
                for name in [
                    "adminEmail",
                    "primaryNs",
                    "nsAddress",
                    "ttl",
                    "refresh",
                    "retry",
                    "expire",
                    "minimum",
                ] {
                    if let Some(v) = data.child(name) {
                        flat.push(text(name, v.string_value()));
                    }
                }
                // Validate now, so errors name the MPS call.
                super::zone_settings(&flat).map_err(|e| invalid(p, e.message()))?;
            }
            MpsProcedure::DeleteZone | MpsProcedure::WriteBack => {
                let zone = zone_of(p, data, None)?;
                flat.push(text("zoneName", zone));
            }
            MpsProcedure::PauseZone | MpsProcedure::ResumeZone => unreachable!("refused above"),
            MpsProcedure::CreateRecord
            | MpsProcedure::DeleteRecord
            | MpsProcedure::ModifyRecord => {
                let props = read_properties(p, data)?;
                let raw_type = data
                    .child("rrType")
                    .map(Element::string_value)
                    .filter(|t| !t.trim().is_empty())
                    .ok_or_else(|| {
                        invalid(p, "`rrType` is required (e.g. MicrosoftDNS_AType, MicrosoftDNS_MXType, MicrosoftDNS_TXTType)")
                    })?;
                let rtype = rr_type_text(&raw_type).map_err(|e| invalid(p, e))?;
                let specific = type_properties(&rtype);
                let mut fields: Vec<(String, String)> = Vec::new();
                let mut container = None;
                let mut owner = None;
                for (name, value) in &props {
                    if name == "ContainerName" {
                        container = Some(value.clone());
                        continue;
                    }
                    if name == "OwnerName" {
                        owner = Some(value.clone());
                        continue;
                    }
                    let Some((_, provisio)) = COMMON_PROPERTIES
                        .iter()
                        .chain(specific.iter())
                        .find(|(mps, _)| mps == name)
                    else {
                        let mut names: Vec<&str> =
                            COMMON_PROPERTIES.iter().map(|(m, _)| *m).collect();
                        names.extend(specific.iter().map(|(m, _)| *m));
                        return Err(invalid(
                            p,
                            format!(
                                "`properties/{name}` is not a property of a {rtype} record ({raw_type}); its properties are {}",
                                names.join(", ")
                            ),
                        ));
                    };
                    fields.push((provisio.to_string(), value.clone()));
                }
                if let Some(rr_name) = data.child("rrName").map(Element::string_value) {
                    match &owner {
                        Some(o) if o.trim() != rr_name.trim() => {
                            return Err(invalid(
                                p,
                                format!("`rrName` {rr_name:?} and `properties/OwnerName` {o:?} name different records"),
                            ))
                        }
                        _ => owner = Some(rr_name),
                    }
                }
                let zone = zone_of(p, data, container.as_deref())?;
                // What the caller called each Provisio input, for messages.
                let mut names: Vec<(String, String)> = vec![
                    ("name".into(), "properties/OwnerName".into()),
                    ("ttl".into(), "properties/TTL".into()),
                    ("zoneName".into(), "zoneName".into()),
                ];
                names.extend(
                    specific
                        .iter()
                        .map(|(m, pv)| (pv.to_string(), format!("properties/{m}"))),
                );
                for (mps, provisio) in specific {
                    // Preference (MX) and Flags (CAA) have defaults.
                    if !fields.iter().any(|(pv, _)| pv == provisio)
                        && !matches!(*mps, "Preference" | "Flags")
                    {
                        return Err(invalid(
                            p,
                            format!(
                                "`properties/{mps}` is required for a {rtype} record ({raw_type})"
                            ),
                        ));
                    }
                }
                flat.push(text("zoneName", zone.clone()));
                flat.push(text("rrType", rtype.clone()));
                if let Some(o) = owner {
                    flat.push(text("name", o));
                }
                for (provisio, value) in fields {
                    flat.push(text(&provisio, value));
                }
                super::record_input(&flat)
                    .map_err(|e| invalid(p, rename_fields(&e.message(), &names)))?;
                if commit == Some(false) || commit.is_none() {
                    // NOCOMMIT (the MPS default) keeps a record out of the zone file until
                    // the next write-back; the record is served at once either way.
                    // Provisio writes it at once: said in the output, never silently.
                    warnings.push(
                        "commitFlag NOCOMMIT (the MPS default): the change is served at once, as in MPS, and also written durably at once (zone file or the server's journal)".to_string(),
                    );
                }
                if p == MpsProcedure::ModifyRecord {
                    // ReplaceRecordSet's inputs: the record's data fields become its one item.
                    let mut rrset = Element::new("executeData");
                    let mut item = Element::new("records");
                    for c in flat.elements() {
                        match c.name.as_str() {
                            "zoneName" | "rrType" | "name" | "ttl" => {
                                rrset.push(c.clone());
                            }
                            _ => {
                                item.push(c.clone());
                            }
                        }
                    }
                    rrset.push(item);
                    flat = rrset;
                }
            }
        }
        let mut translated = call.clone();
        translated.context.procedure = p.canonical().to_string();
        translated.execute_data = flat;
        Ok(Some(Translated {
            call: translated,
            check_only,
            warnings,
            modify: p == MpsProcedure::ModifyRecord,
        }))
    }
}

/// The MPS output: the caller's executeData, the outputs the Provisio procedure added
/// (`record`, `fqdn`, `serial`, `zone`…), `OperationStatus`, and any warnings.
pub(crate) fn mps_output(
    original: &Element,
    canonical_in: &Element,
    canonical_out: Option<&Element>,
    translated: &Translated,
) -> Element {
    let mut out = original.clone();
    if let Some(done) = canonical_out {
        let skip = canonical_in.children.len();
        for node in done.children.iter().skip(skip) {
            if let provisio_engine::data::Node::Element(e) = node {
                out.push(e.clone());
            }
        }
    }
    let status = if translated.check_only {
        "success: check-only, the inputs are valid and nothing was changed"
    } else {
        "success"
    };
    out.push(text("OperationStatus", status));
    for w in &translated.warnings {
        out.push(text("warning", w.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use provisio_engine::provider::{CallContext, ProviderState};

    fn call(procedure: &str, xml_children: Vec<Element>) -> Call {
        let mut data = Element::new("executeData");
        for c in xml_children {
            data.push(c);
        }
        Call {
            intent: provisio_engine::provider::IntentBarrier::passed(),
            context: CallContext {
                txn_id: "0190c0de-0000-7000-8000-0000000000d1"
                    .parse()
                    .expect("a transaction id"),
                step_id: "s".into(),
                attempt: 1,
                namespace: "DNS Provider".into(),
                procedure: procedure.into(),
            },
            provider_context: Element::new("providerContext"),
            execute_data: data,
            state: ProviderState::detached(),
        }
    }

    fn props(pairs: &[(&str, &str)], hmc_form: bool) -> Element {
        let mut p = Element::new("properties");
        for (n, v) in pairs {
            if hmc_form {
                let mut e = Element::with_text("property", *v);
                e.set_attr("name", *n);
                p.push(e);
            } else {
                p.push(Element::with_text(*n, *v));
            }
        }
        p
    }

    fn provider() -> (tempfile::TempDir, DnsProvider) {
        let dir = tempfile::tempdir().expect("tmp");
        let p = DnsProvider::zonefile(dir.path().join("zones")).expect("provider");
        (dir, p)
    }

    fn translate(p: &DnsProvider, c: &Call) -> Result<Translated, String> {
        p.translate_mps(c)
            .map(|t| t.expect("an MPS procedure"))
            .map_err(|e| e.message())
    }

    #[test]
    fn owner_name_in_properties_is_honoured_in_both_forms() {
        let (_d, p) = provider();
        for hmc in [false, true] {
            let c = call(
                "CreateResourceRecord",
                vec![
                    Element::with_text("serverIdentifier", "127.0.0.1"),
                    Element::with_text("zoneName", "fabrikam.com"),
                    Element::with_text("rrType", "MicrosoftDNS_TXTType"),
                    props(
                        &[
                            ("OwnerName", "_spf"),
                            ("TTL", "300"),
                            ("DescriptiveText", "\"v=spf1 mx -all\""),
                        ],
                        hmc,
                    ),
                ],
            );
            let t = translate(&p, &c).expect("valid");
            let d = &t.call.execute_data;
            assert_eq!(t.call.context.procedure, "AddRecord");
            assert_eq!(
                d.child("name").map(Element::string_value).as_deref(),
                Some("_spf")
            );
            assert_eq!(
                d.child("rrType").map(Element::string_value).as_deref(),
                Some("TXT")
            );
            assert_eq!(
                d.child("ttl").map(Element::string_value).as_deref(),
                Some("300")
            );
            // Verbatim, quotes included.
            assert_eq!(
                d.child("text").map(Element::string_value).as_deref(),
                Some("\"v=spf1 mx -all\"")
            );
            let r = super::super::record_input(d).expect("record");
            assert_eq!(r.owner, "_spf");
        }
    }

    #[test]
    fn refusals_name_the_element() {
        let (_d, p) = provider();
        let base = || {
            vec![
                Element::with_text("zoneName", "fabrikam.com"),
                Element::with_text("rrType", "MicrosoftDNS_AType"),
            ]
        };
        let cases: Vec<(Vec<Element>, &str)> = vec![
            (
                vec![props(
                    &[
                        ("OwnerName", "www"),
                        ("IPAddress", "192.0.2.1"),
                        ("Colour", "red"),
                    ],
                    false,
                )],
                "`properties/Colour` is not a property of a A record",
            ),
            (
                vec![props(
                    &[("OwnerName", "www"), ("MailExchange", "mx.fabrikam.com")],
                    true,
                )],
                "`properties/MailExchange` is not a property of a A record",
            ),
            (
                vec![props(&[("OwnerName", "www")], false)],
                "`properties/IPAddress` is required",
            ),
            (
                vec![props(
                    &[("OwnerName", "www"), ("IPAddress", "not-an-ip")],
                    false,
                )],
                "`properties/IPAddress` is not an IPv4 address",
            ),
            (
                vec![props(
                    &[("OwnerName", "www;rm -rf"), ("IPAddress", "192.0.2.1")],
                    false,
                )],
                "properties/OwnerName",
            ),
            (
                vec![props(
                    &[
                        ("OwnerName", "www\nevil 60 IN A 1.2.3.4"),
                        ("IPAddress", "192.0.2.1"),
                    ],
                    false,
                )],
                "properties/OwnerName",
            ),
            (
                vec![props(
                    &[
                        ("OwnerName", "www"),
                        ("IPAddress", "192.0.2.1"),
                        ("OwnerName", "x"),
                    ],
                    false,
                )],
                "`OwnerName` is given twice",
            ),
            (
                vec![
                    Element::with_text("name", "www"),
                    Element::with_text("address", "192.0.2.1"),
                ],
                "element `name` is not an input",
            ),
            (
                vec![
                    Element::with_text("commitFlag", "MAYBE"),
                    props(&[("IPAddress", "192.0.2.1")], false),
                ],
                "`commitFlag` is \"MAYBE\"",
            ),
            (
                vec![
                    Element::with_text("serverIdentifier", "dns01.fabrikam.com"),
                    props(&[("IPAddress", "192.0.2.1")], false),
                ],
                "`serverIdentifier` \"dns01.fabrikam.com\" is not the server",
            ),
            (
                vec![props(
                    &[("ContainerName", "contoso.com"), ("IPAddress", "192.0.2.1")],
                    false,
                )],
                "names another zone",
            ),
        ];
        for (extra, want) in cases {
            let mut children = base();
            children.extend(extra);
            let err = translate(&p, &call("CreateResourceRecord", children))
                .err()
                .expect("refused");
            assert!(err.contains(want), "want {want:?} in {err:?}");
            assert!(
                err.starts_with("DNS Provider/CreateResourceRecord: "),
                "{err}"
            );
        }
    }

    #[test]
    fn zone_inputs_are_honoured_or_refused() {
        let (_d, p) = provider();
        let zone = |extra: Vec<Element>| {
            let mut c = vec![
                Element::with_text("serverIdentifier", "localhost"),
                Element::with_text("zoneName", "fabrikam.com"),
            ];
            c.extend(extra);
            call("CreateDNSZone", c)
        };
        let ok = translate(
            &p,
            &zone(vec![
                Element::with_text("zoneType", "primary"),
                Element::with_text("adminEmail", "admin@fabrikam.com"),
                Element::with_text("commitFlag", "COMMIT"),
            ]),
        )
        .expect("valid");
        assert_eq!(ok.call.context.procedure, "CreateZone");
        assert_eq!(
            ok.call
                .execute_data
                .child("adminEmail")
                .map(Element::string_value)
                .as_deref(),
            Some("admin@fabrikam.com")
        );
        for (extra, want) in [
            (
                vec![
                    Element::with_text("zoneType", "SECONDARY"),
                    Element::with_text("commitFlag", "COMMIT"),
                ],
                "primary zones only",
            ),
            (
                vec![
                    Element::with_text("zoneType", "banana"),
                    Element::with_text("commitFlag", "COMMIT"),
                ],
                "expected PRIMARY",
            ),
            (vec![], "absent (MPS default NOCOMMIT)"),
            (
                vec![Element::with_text("commitFlag", "NOCOMMIT")],
                "is NOCOMMIT",
            ),
            (
                vec![
                    Element::with_text("commitFlag", "COMMIT"),
                    Element::with_text("adminEmail", "not a mailbox"),
                ],
                "adminEmail",
            ),
        ] {
            let err = translate(&p, &zone(extra)).err().expect("refused");
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
    }

    #[tokio::test]
    async fn an_mps_call_in_doubt_is_settled_like_its_provisio_twin() {
        use provisio_engine::provider::Provider;
        let (_d, p) = provider();
        let zone = call(
            "CreateZone",
            vec![Element::with_text("zoneName", "fabrikam.com")],
        );
        p.execute(zone).await.expect("zone");
        let mut c = call(
            "CreateResourceRecord",
            vec![
                Element::with_text("zoneName", "fabrikam.com"),
                Element::with_text("rrType", "MicrosoftDNS_MXType"),
                props(
                    &[("MailExchange", "mail.fabrikam.com"), ("Preference", "5")],
                    true,
                ),
            ],
        );
        c.context.step_id = "mx".into();
        assert_eq!(p.recover(&c).await.expect("before"), None);
        let out = p.execute(c.clone()).await.expect("MX");
        assert_eq!(p.recover(&c).await.expect("after"), out.undo);
        // Bad input: the call failed before any change.
        c.execute_data.push(Element::with_text("bogus", "1"));
        assert_eq!(p.recover(&c).await.expect("bad"), None);
    }

    proptest::proptest! {
        /// Whatever OwnerName and DescriptiveText a request carries, a TXT call is either
        /// refused or names a record inside the zone holding exactly the text given.
        #[test]
        fn owner_stays_in_the_zone_and_text_is_verbatim(
            owner in "[a-z0-9_.@*;\" \\\n-]{0,20}",
            text_in in "\\PC{0,40}",
        ) {
            let (_d, p) = provider();
            let c = call(
                "CreateResourceRecord",
                vec![
                    Element::with_text("zoneName", "fabrikam.com"),
                    Element::with_text("rrType", "MicrosoftDNS_TXTType"),
                    props(&[("OwnerName", owner.as_str()), ("DescriptiveText", text_in.as_str())], false),
                ],
            );
            if let Ok(t) = translate(&p, &c) {
                let r = super::super::record_input(&t.call.execute_data).expect("validated");
                let fqdn = super::super::record::fqdn(&r.zone, &r.owner);
                proptest::prop_assert!(fqdn.ends_with("fabrikam.com."), "{fqdn}");
                proptest::prop_assert!(!r.owner.contains(char::is_whitespace));
                proptest::prop_assert_eq!(r.data, super::super::RData::Txt(text_in.clone().into_bytes()));
            }
        }
    }

    #[test]
    fn modify_becomes_a_one_record_replace_and_pause_is_refused() {
        let (_d, p) = provider();
        let c = call(
            "ModifyResourceRecord",
            vec![
                Element::with_text("zoneName", "fabrikam.com"),
                Element::with_text("rrType", "MicrosoftDNS_MXType"),
                props(
                    &[
                        ("OwnerName", "fabrikam.com"),
                        ("TTL", "600"),
                        ("MailExchange", "mx2.fabrikam.com"),
                        ("Preference", "20"),
                    ],
                    true,
                ),
            ],
        );
        let t = translate(&p, &c).expect("valid");
        assert!(t.modify);
        assert_eq!(t.call.context.procedure, "ReplaceRecordSet");
        let r = super::super::rrset_input(&t.call.execute_data).expect("rrset inputs");
        assert_eq!(
            (r.owner.as_str(), r.rtype.as_str(), r.ttl),
            ("@", "MX", Some(600))
        );
        assert_eq!(r.data.len(), 1);
        // Bad data is refused with the MPS property's name, as for CreateResourceRecord.
        let bad = call(
            "ModifyResourceRecord",
            vec![
                Element::with_text("zoneName", "fabrikam.com"),
                Element::with_text("rrType", "MicrosoftDNS_AType"),
                props(&[("OwnerName", "www"), ("IPAddress", "999.1.1.1")], false),
            ],
        );
        let err = translate(&p, &bad).err().expect("refused");
        assert!(
            err.starts_with("DNS Provider/ModifyResourceRecord: "),
            "{err}"
        );
        assert!(err.contains("`properties/IPAddress`"), "{err}");
        for proc in ["PauseZone", "ResumeZone"] {
            let err = translate(
                &p,
                &call(proc, vec![Element::with_text("zoneName", "fabrikam.com")]),
            )
            .err()
            .expect("refused");
            assert!(err.starts_with(&format!("DNS Provider/{proc}: ")), "{err}");
            assert!(err.contains("DeleteDNSZone"), "{err}");
        }
        let wb = translate(
            &p,
            &call(
                "WriteBackZoneFile",
                vec![Element::with_text("zoneName", "Fabrikam.com.")],
            ),
        )
        .expect("valid");
        assert_eq!(wb.call.context.procedure, "WriteBackZoneFile");
        assert_eq!(
            wb.call
                .execute_data
                .child("zoneName")
                .map(Element::string_value)
                .as_deref(),
            Some("fabrikam.com")
        );
    }

    #[test]
    fn check_only_and_credentials() {
        let (_d, p) = provider();
        let mut dl = Element::new("debugLevel");
        dl.set_attr("logging", "high");
        dl.set_attr("check-only", "on");
        let c = call(
            "DeleteDNSZone",
            vec![
                Element::with_text("zoneName", "fabrikam.com"),
                Element::with_text("userName", "FABRIKAM\\admin"),
                Element::with_text("password", "secret"),
                dl,
            ],
        );
        let t = translate(&p, &c).expect("valid");
        assert!(t.check_only);
        assert!(t.warnings.iter().any(|w| w.contains("not used")));
        assert!(!t.warnings.iter().any(|w| w.contains("secret")));
        let mut bad = Element::new("debugLevel");
        bad.set_attr("verbose", "yes");
        let err = translate(
            &p,
            &call(
                "DeleteDNSZone",
                vec![Element::with_text("zoneName", "fabrikam.com"), bad],
            ),
        )
        .err()
        .expect("refused");
        assert!(err.contains("`debugLevel/@verbose`"), "{err}");
    }
}
