//! The RFC 2136 backend: TSIG-signed (hmac-sha256) dynamic updates to an authoritative
//! DNS server such as BIND, over one TCP connection per provider (reopened when the
//! server closes it).
//!
//! Every change is a compare-and-swap on one RRset (same owner and type): the RRset is
//! read, then the update carries it as an RFC 2136 prerequisite ("RRset exists,
//! value-dependent", or "RRset does not exist"), so a concurrent change makes the update
//! fail instead of being silently merged. Undo checks that the RRset is still exactly
//! what the change left ([`RrsetGuard::after`]) and refuses otherwise with
//! [`DnsError::Changed`]; an RRset already back to [`RrsetGuard::before`] counts as undone.
//!
//! RFC 2136 cannot create or delete zones. With [`Rfc2136Config::rndc`] set, CreateZone
//! and DeleteZone go through BIND's control channel (`rndc addzone` / `rndc delzone`, see
//! [`super::rndc`]); without it, CreateZone only checks that the server is authoritative
//! for the zone (SOA query) and DeleteZone is unsupported.
//!
//! An UPDATE whose answer is lost (timeout, broken connection after sending) is in doubt
//! ([`DnsError::InDoubt`]); a refused connection before sending is not. With a state
//! folder ([`Rfc2136Config::state_dir`]), every keyed change first stores, durably, the
//! RRset as read and as the UPDATE will leave it (a "prior" record under the call's
//! idempotency key). Settling a call in doubt (`recover`) reads the RRset from the server
//! and compares: as the change left it → applied, and the stored prior set is its undo;
//! as it was before → not applied; anything else → an operator decides. Without a prior
//! record (no state folder, or none written): an AddRecord is applied iff its RRset now
//! holds the record (the guard is rebuilt from the RRset as it is); a DeleteRecord whose
//! record is still there was not applied, one whose record is gone is for an operator; a
//! ReplaceRecordSet not holding what it wrote was not applied, one holding it is for an
//! operator.

use super::backend::{
    rrset_changed, Applied, InDoubt, NewRrset, Recovered, Replaced, RrsetGuard, ZoneBackend,
    ZoneSettings, ZoneSnapshot,
};
use super::record::{describe_record, describe_rrset, fqdn, same_rrset, RData, Record};
use super::rndc::{check_config_name, first_zone, render, Rndc, RndcConfig, RndcError};
use super::zonefile::{next_serial, parse_zone, today_yyyymmdd, Soa, Zone};
use super::DnsError;
use async_trait::async_trait;
use base64::Engine as _;
use futures::StreamExt as _;
use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::op::{DnsRequest, DnsResponse, Edns, Message, OpCode, Query, ResponseCode};
use hickory_net::proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_net::proto::rr::rdata::{A, AAAA, CAA, CNAME, MX, NS, SRV, TXT};
use hickory_net::proto::rr::{
    DNSClass, Name, RData as WireData, Record as WireRecord, RecordType, TSigner,
};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::{DnsHandle, DnsMultiplexer, NetError};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// How often a change is retried when its RRset prerequisite fails because the RRset
/// changed between reading it and sending the update.
const CAS_ATTEMPTS: usize = 3;

/// TSIG fudge (allowed clock difference), seconds.
const FUDGE: u16 = 300;

/// Where to send updates and how to sign them.
#[derive(Clone, PartialEq, Eq)]
pub struct Rfc2136Config {
    /// The authoritative (primary) server, e.g. `127.0.0.1:53`.
    pub server: SocketAddr,
    /// TSIG key name, as in the server's `key "name" { … }` statement.
    pub key_name: String,
    /// TSIG secret, base64 (hmac-sha256). Never logged: `Debug` redacts it.
    pub key_secret: String,
    /// Time to wait for each answer.
    pub timeout: Duration,
    /// Folder where the RRset before and after each change is stored durably before the
    /// UPDATE is sent, so a change a crash or a lost answer left in doubt can be settled
    /// and undone (see the module docs). `None`: such changes go to an operator.
    pub state_dir: Option<PathBuf>,
    /// How zones are added and deleted (`rndc addzone`/`delzone`); `None`: CreateZone only
    /// checks that the zone is served and DeleteZone is unsupported.
    pub rndc: Option<RndcConfig>,
}

impl Rfc2136Config {
    /// A configuration with the default timeout (5 s).
    pub fn new(
        server: SocketAddr,
        key_name: impl Into<String>,
        key_secret: impl Into<String>,
    ) -> Self {
        Rfc2136Config {
            server,
            key_name: key_name.into(),
            key_secret: key_secret.into(),
            timeout: Duration::from_secs(5),
            state_dir: None,
            rndc: None,
        }
    }

    /// A configuration whose key comes from a BIND key file (see [`read_tsig_key_file`]).
    pub fn from_key_file(server: SocketAddr, path: &Path) -> Result<Self, DnsError> {
        let (name, secret) = read_tsig_key_file(path)?;
        Ok(Self::new(server, name, secret))
    }
}

impl fmt::Debug for Rfc2136Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rfc2136Config")
            .field("server", &self.server)
            .field("key_name", &self.key_name)
            .field("key_secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("state_dir", &self.state_dir)
            .field("rndc", &self.rndc)
            .finish()
    }
}

/// A token of a BIND configuration file.
#[derive(Debug, PartialEq, Eq)]
enum ConfTok {
    Word(String),
    Quoted(String),
    Punct(char),
}

fn conf_tokens(text: &str) -> Result<Vec<ConfTok>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                let mut closed = false;
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        closed = true;
                        break;
                    }
                    prev = c;
                }
                if !closed {
                    return Err("unterminated /* comment".into());
                }
            }
            '"' => {
                let mut s = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '"' {
                        closed = true;
                        break;
                    }
                    s.push(c);
                }
                if !closed {
                    return Err("unterminated quoted string".into());
                }
                out.push(ConfTok::Quoted(s));
            }
            '{' | '}' | ';' => out.push(ConfTok::Punct(c)),
            _ => {
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"' | '#') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                out.push(ConfTok::Word(s));
            }
        }
    }
    Ok(out)
}

/// Reads the first `key "name" { algorithm hmac-sha256; secret "…"; };` statement of a
/// BIND key file (as written by `tsig-keygen` and read by `named` and `nsupdate -k`).
/// Returns the key name and the base64 secret. Only hmac-sha256 is accepted.
pub fn read_tsig_key_file(path: &Path) -> Result<(String, String), DnsError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| DnsError::io(format!("reading TSIG key file {shown}"), e))?;
    let bad = |why: String| DnsError::Invalid(format!("TSIG key file {shown}: {why}"));
    let toks = conf_tokens(&text).map_err(bad)?;
    let start = toks
        .iter()
        .position(|t| matches!(t, ConfTok::Word(w) if w == "key"))
        .ok_or_else(|| bad("no `key \"name\" { … };` statement".into()))?;
    let name = match toks.get(start + 1) {
        Some(ConfTok::Quoted(n) | ConfTok::Word(n)) if !n.is_empty() => n.clone(),
        _ => return Err(bad("`key` is not followed by a key name".into())),
    };
    if toks.get(start + 2) != Some(&ConfTok::Punct('{')) {
        return Err(bad(format!("`key \"{name}\"` is not followed by `{{`")));
    }
    let (mut algorithm, mut secret) = (None, None);
    let mut i = start + 3;
    loop {
        match toks.get(i) {
            Some(ConfTok::Punct('}')) => break,
            Some(ConfTok::Word(field)) => {
                let value = match toks.get(i + 1) {
                    Some(ConfTok::Word(v) | ConfTok::Quoted(v)) => v.clone(),
                    _ => return Err(bad(format!("`{field}` has no value"))),
                };
                if toks.get(i + 2) != Some(&ConfTok::Punct(';')) {
                    return Err(bad(format!("`{field}` is not ended by `;`")));
                }
                match field.as_str() {
                    "algorithm" => algorithm = Some(value),
                    "secret" => secret = Some(value),
                    _ => {}
                }
                i += 3;
            }
            _ => return Err(bad(format!("key \"{name}\" is not closed by `}};`"))),
        }
    }
    let algorithm = algorithm.ok_or_else(|| bad(format!("key \"{name}\" has no algorithm")))?;
    if !algorithm.eq_ignore_ascii_case("hmac-sha256") {
        return Err(bad(format!(
            "key \"{name}\" uses algorithm {algorithm}; only hmac-sha256 is supported"
        )));
    }
    let secret = secret.ok_or_else(|| bad(format!("key \"{name}\" has no secret")))?;
    decode_secret(&secret).map_err(|e| bad(format!("key \"{name}\": {e}")))?;
    Ok((name, secret))
}

fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim())
        .map_err(|_| "the secret is not valid base64".to_string())?;
    if key.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(key)
}

/// One RRset as read from the server: the records on the wire and our data for each
/// (`None` for data this crate cannot represent).
#[derive(Debug, Clone, Default)]
struct Rrset {
    wire: Vec<WireRecord>,
    data: Vec<Option<RData>>,
}

impl Rrset {
    /// True when it holds exactly the data in `set` (order and TTL ignored).
    fn equals(&self, set: &[RData]) -> bool {
        let mine: Vec<&RData> = self.data.iter().flatten().collect();
        mine.len() == self.data.len()
            && mine.len() == set.len()
            && set.iter().all(|d| mine.contains(&d))
            && mine.iter().all(|d| set.contains(d))
    }

    /// The RRset as records of `owner`; `None` when it holds data this crate cannot
    /// represent.
    fn records(&self, owner: &str) -> Option<Vec<Record>> {
        self.wire
            .iter()
            .zip(&self.data)
            .map(|(w, d)| {
                Some(Record {
                    owner: owner.to_string(),
                    ttl: w.ttl,
                    data: d.clone()?,
                })
            })
            .collect()
    }

    fn position(&self, data: &RData) -> Option<usize> {
        self.data.iter().position(|d| d.as_ref() == Some(data))
    }

    fn describe(&self) -> String {
        if self.wire.is_empty() {
            return "no records".into();
        }
        self.wire
            .iter()
            .map(|r| r.data.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn describe_set(set: &[RData]) -> String {
    if set.is_empty() {
        return "no records".into();
    }
    set.iter()
        .map(RData::to_text)
        .collect::<Vec<_>>()
        .join(", ")
}

/// An open connection: the client handle and its background task.
struct Conn {
    client: Client<TokioRuntimeProvider>,
    task: JoinHandle<()>,
}

/// RFC 2136 dynamic updates signed with TSIG.
pub struct Rfc2136Backend {
    config: Rfc2136Config,
    signer: TSigner,
    conn: Mutex<Option<Conn>>,
    /// Zone creation and deletion, when configured.
    rndc: Option<Rndc>,
}

impl fmt::Debug for Rfc2136Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rfc2136Backend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for Rfc2136Backend {
    fn drop(&mut self) {
        if let Some(c) = self.conn.get_mut().take() {
            c.task.abort();
        }
    }
}

/// The response code's mnemonic (`REFUSED`) and meaning, for messages.
fn rcode_name(code: ResponseCode) -> String {
    let mnemonic = match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        ResponseCode::BADSIG => "BADSIG",
        ResponseCode::BADKEY => "BADKEY",
        ResponseCode::BADTIME => "BADTIME",
        _ => "RCODE",
    };
    format!("{mnemonic} ({}: {})", u16::from(code), code.to_str())
}

impl Rfc2136Backend {
    /// Checks the key; connects on first use.
    pub fn new(config: Rfc2136Config) -> Result<Self, DnsError> {
        let key = decode_secret(&config.key_secret)
            .map_err(|e| DnsError::Invalid(format!("rfc2136 TSIG key {}: {e}", config.key_name)))?;
        let key_name = Name::from_ascii(&config.key_name).map_err(|e| {
            DnsError::Invalid(format!(
                "rfc2136 TSIG key name {:?} is not a DNS name: {e}",
                config.key_name
            ))
        })?;
        let signer = TSigner::new(key, TsigAlgorithm::HmacSha256, key_name, FUDGE)
            .map_err(|e| DnsError::Invalid(format!("rfc2136 TSIG key: {e}")))?;
        let rndc = match &config.rndc {
            Some(r) => {
                check_config_name("TSIG key name", &config.key_name)?;
                Some(Rndc::new(r.clone())?)
            }
            None => None,
        };
        Ok(Rfc2136Backend {
            config,
            signer,
            conn: Mutex::new(None),
            rndc,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Rfc2136Config {
        &self.config
    }

    fn server(&self) -> SocketAddr {
        self.config.server
    }

    fn net_error(&self, what: &str, e: &NetError) -> DnsError {
        let raw = e.to_string();
        let text = without_report_tail(&raw);
        let transient = matches!(
            e,
            NetError::Timeout | NetError::Io(_) | NetError::Busy | NetError::NoConnections
        ) || text.contains("closed");
        // The library's wording for a TSIG failure is in the tail cut from `text`.
        let lower = raw.to_ascii_lowercase();
        if !transient && (lower.contains("tsig") || lower.contains("hmac")) {
            // A server that rejects our signature answers NOTAUTH with an unsigned TSIG
            // error (BADSIG, BADKEY, BADTIME), which fails verification here.
            return DnsError::Server {
                transient: false,
                message: format!(
                    "{what}: DNS server {} rejected the TSIG signature of key {:?} (NOTAUTH with \
                     BADSIG, BADKEY or BADTIME). Check that the server's named.conf has a `key \
                     {:?}` block with algorithm hmac-sha256 and the same secret as the key file \
                     given here, that the zone's update-policy (or allow-update) grants that key, \
                     and that the two clocks are less than {FUDGE} s apart (server log: `named` \
                     names the failing check)",
                    self.server(),
                    self.config.key_name,
                    self.config.key_name
                ),
            };
        }
        DnsError::Server {
            transient,
            message: format!("{what}: DNS server {}: {text}", self.server()),
        }
    }

    /// The client, connecting (again) when there is no live connection.
    async fn client(&self) -> Result<Client<TokioRuntimeProvider>, DnsError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.task.is_finished() {
                return Ok(c.client.clone());
            }
        }
        let (connect, handle) = TcpClientStream::new(
            self.server(),
            None,
            Some(self.config.timeout),
            TokioRuntimeProvider::default(),
        );
        let stream = match tokio::time::timeout(self.config.timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(self.net_error("connecting", &e)),
            Err(_) => return Err(self.net_error("connecting", &NetError::Timeout)),
        };
        let mux = DnsMultiplexer::new(stream, handle)
            .with_timeout(self.config.timeout)
            .with_signer(self.signer.clone());
        let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(mux);
        let task = tokio::spawn(async move {
            let _ = bg.await;
        });
        *guard = Some(Conn {
            client: client.clone(),
            task,
        });
        Ok(client)
    }

    /// Forgets the connection (after a transport error) so the next call reconnects.
    async fn reset(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            c.task.abort();
        }
    }

    /// Sends one message and returns the response; transport errors become
    /// [`DnsError::Server`] and drop the connection.
    async fn exchange(&self, what: &str, message: Message) -> Result<DnsResponse, DnsError> {
        let client = self.client().await?;
        self.send(client, what, message).await
    }

    /// Sends one message on an open connection and returns the response; transport errors
    /// become [`DnsError::Server`] and drop the connection.
    async fn send(
        &self,
        client: Client<TokioRuntimeProvider>,
        what: &str,
        message: Message,
    ) -> Result<DnsResponse, DnsError> {
        let mut responses = client.send(DnsRequest::from(message));
        let result = match tokio::time::timeout(self.config.timeout, responses.next()).await {
            Ok(Some(r)) => r,
            Ok(None) => Err(NetError::Message("connection closed without an answer")),
            Err(_) => Err(NetError::Timeout),
        };
        match result {
            Ok(resp) => Ok(resp),
            Err(e) => {
                self.reset().await;
                Err(self.net_error(what, &e))
            }
        }
    }

    /// A query; idempotent, so retried once on a new connection after a transport error.
    async fn query(&self, name: &Name, rtype: RecordType) -> Result<DnsResponse, DnsError> {
        let what = format!("query {name} {rtype}");
        let build = || {
            let mut m = Message::query();
            m.metadata.recursion_desired = false;
            m.add_query(Query::query(name.clone(), rtype));
            m.edns
                .get_or_insert_with(Edns::new)
                .set_max_payload(4096)
                .set_version(0);
            m
        };
        match self.exchange(&what, build()).await {
            Err(DnsError::Server {
                transient: true, ..
            }) => self.exchange(&what, build()).await,
            other => other,
        }
    }

    fn zone_name(&self, zone: &str) -> Result<Name, DnsError> {
        Name::from_ascii(format!("{zone}."))
            .map_err(|e| DnsError::Invalid(format!("zone {zone}: {e}")))
    }

    fn owner_name(&self, zone: &str, owner: &str) -> Result<Name, DnsError> {
        let fqdn = fqdn(zone, owner);
        Name::from_ascii(&fqdn).map_err(|e| DnsError::Invalid(format!("name {fqdn}: {e}")))
    }

    /// The zone's SOA serial and TTL, or `None` when the server is not authoritative.
    async fn soa(&self, zone: &str) -> Result<Option<(u32, u32)>, DnsError> {
        let name = self.zone_name(zone)?;
        let resp = self.query(&name, RecordType::SOA).await?;
        let code = resp.metadata.response_code;
        if code == ResponseCode::ServFail {
            return Err(DnsError::Server {
                transient: true,
                message: format!(
                    "SOA query for {zone}. at DNS server {}: {}",
                    self.server(),
                    rcode_name(code)
                ),
            });
        }
        if code != ResponseCode::NoError || !resp.metadata.authoritative {
            return Ok(None);
        }
        Ok(resp.answers.iter().find_map(|r| match &r.data {
            WireData::SOA(soa) if r.name == name => Some((soa.serial, r.ttl)),
            _ => None,
        }))
    }

    async fn require_zone(&self, zone: &str) -> Result<(u32, u32), DnsError> {
        self.soa(zone).await?.ok_or_else(|| self.not_served(zone))
    }

    fn not_served(&self, zone: &str) -> DnsError {
        DnsError::NotServed(format!(
            "zone {zone}. is not served by DNS server {} (no authoritative SOA answer). RFC 2136 \
             cannot create zones: add the zone to named.conf (or with `rndc addzone`) with an \
             update-policy granting the TSIG key {}",
            self.server(),
            self.config.key_name
        ))
    }

    /// Reads one RRset.
    async fn rrset(&self, zone: &str, name: &Name, rtype: RecordType) -> Result<Rrset, DnsError> {
        let resp = self.query(name, rtype).await?;
        let code = resp.metadata.response_code;
        // An NS RRset below the apex is a delegation: the answer is a referral.
        let referral = rtype == RecordType::NS
            && code == ResponseCode::NoError
            && !resp.metadata.authoritative
            && resp.authorities.iter().any(|r| r.name == *name);
        match code {
            ResponseCode::NoError if referral => {}
            ResponseCode::NoError | ResponseCode::NXDomain if resp.metadata.authoritative => {}
            ResponseCode::ServFail => {
                return Err(DnsError::Server {
                    transient: true,
                    message: format!(
                        "query {name} {rtype} at DNS server {}: {}",
                        self.server(),
                        rcode_name(code)
                    ),
                })
            }
            ResponseCode::Refused | ResponseCode::NoError | ResponseCode::NXDomain => {
                return Err(self.not_served(zone))
            }
            other => {
                return Err(DnsError::Server {
                    transient: false,
                    message: format!(
                        "query {name} {rtype} at DNS server {}: {}",
                        self.server(),
                        rcode_name(other)
                    ),
                })
            }
        }
        let mut set = Rrset::default();
        let section = if referral {
            &resp.authorities
        } else {
            &resp.answers
        };
        for r in section {
            if r.name == *name && r.record_type() == rtype {
                set.data.push(from_wire(&r.data));
                set.wire.push(r.clone());
            }
        }
        Ok(set)
    }

    /// Sends an update. `Ok(None)` on success, `Ok(Some(code))` when a prerequisite failed
    /// (YXDOMAIN, NXDOMAIN, YXRRSET, NXRRSET), an error for anything else.
    async fn update(
        &self,
        what: &str,
        zone: &str,
        prerequisites: Vec<WireRecord>,
        updates: Vec<WireRecord>,
    ) -> Result<Option<ResponseCode>, DnsError> {
        let mut zq = Query::new();
        zq.set_name(self.zone_name(zone)?)
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        let mut m = Message::query();
        m.metadata.op_code = OpCode::Update;
        m.metadata.recursion_desired = false;
        m.add_query(zq);
        m.add_answers(prerequisites);
        m.add_authorities(updates);
        m.edns
            .get_or_insert_with(Edns::new)
            .set_max_payload(4096)
            .set_version(0);
        // A connection that cannot be opened sent nothing; a transport failure once the
        // update is on its way leaves its outcome unknown.
        let client = self.client().await?;
        let resp = self.send(client, what, m).await.map_err(|e| match e {
            DnsError::Server {
                transient: true,
                message,
            } => DnsError::InDoubt(format!(
                "{message}; the update was sent and its answer lost: it may have been applied"
            )),
            other => other,
        })?;
        let code = resp.metadata.response_code;
        let fail = |transient: bool, why: &str| DnsError::Server {
            transient,
            message: format!(
                "{what}: DNS server {} answered {}{why}",
                self.server(),
                rcode_name(code)
            ),
        };
        match code {
            ResponseCode::NoError => Ok(None),
            ResponseCode::YXDomain
            | ResponseCode::NXDomain
            | ResponseCode::YXRRSet
            | ResponseCode::NXRRSet => Ok(Some(code)),
            ResponseCode::ServFail => Err(fail(true, "; the update was not applied")),
            ResponseCode::Refused => Err(fail(
                false,
                &format!(
                    "; the server's update-policy does not let TSIG key {} change this name, or \
                     one of its checks rejected the update (e.g. an in-zone NS target without an \
                     address); see the server's log",
                    self.config.key_name
                ),
            )),
            ResponseCode::NotAuth => Err(fail(
                false,
                &format!(
                    "; the server is not authoritative for {zone}. or does not accept TSIG key {} (wrong secret or unknown key)",
                    self.config.key_name
                ),
            )),
            ResponseCode::NotZone => Err(fail(false, &format!("; the name is not in zone {zone}."))),
            _ => Err(fail(false, "")),
        }
    }

    async fn serial(&self, zone: &str) -> Result<u32, DnsError> {
        Ok(self.require_zone(zone).await?.0)
    }

    /// Adds one record with a compare-and-swap on its RRset.
    async fn add(
        &self,
        zone: &str,
        owner: &str,
        ttl: Option<u32>,
        data: &RData,
        key: Option<&str>,
    ) -> Result<Applied, DnsError> {
        let (_, soa_ttl) = self.require_zone(zone).await?;
        let name = self.owner_name(zone, owner)?;
        let rtype = record_type(data);
        let desc = describe_record(zone, owner, data);
        let ttl = ttl.unwrap_or(soa_ttl);
        let is_cname = matches!(data, RData::Cname(_));
        if is_cname && owner == "@" {
            return Err(DnsError::Conflict(format!(
                "a CNAME cannot be at the zone apex {zone}."
            )));
        }
        let new = WireRecord::from_rdata(name.clone(), ttl, to_wire(data)?);
        for _ in 0..CAS_ATTEMPTS {
            let cur = self.rrset(zone, &name, rtype).await?;
            if cur.position(data).is_some() {
                return Err(DnsError::RecordExists(desc));
            }
            let mut pre = rrset_prerequisite(&name, rtype, &cur);
            if is_cname {
                // RFC 2136 2.4.5: name is not in use (a CNAME cannot share its name).
                pre = vec![empty_record(&name, RecordType::ANY, DNSClass::NONE)];
            } else {
                // RFC 2136 2.4.3: no CNAME at this name.
                pre.push(empty_record(&name, RecordType::CNAME, DNSClass::NONE));
            }
            let record = Record {
                owner: owner.to_string(),
                ttl,
                data: data.clone(),
            };
            let before_ttl = cur.wire.first().map(|w| w.ttl);
            if let Some(before) = cur.records(owner) {
                // An add gives the whole RRset its TTL (RFC 2136 §3.4.2.2).
                let mut after: Vec<Record> =
                    before.iter().map(|r| Record { ttl, ..r.clone() }).collect();
                after.push(record.clone());
                let prior = Prior::new(zone, owner, data.rtype(), &before, &after)
                    .with_record(&record, before_ttl);
                self.keep_prior(key, &prior).await?;
            }
            match self
                .update(&format!("add {desc}"), zone, pre, vec![new.clone()])
                .await?
            {
                None => {
                    let mut after: Vec<RData> = cur.data.iter().flatten().cloned().collect();
                    let before = after.clone();
                    after.push(data.clone());
                    return Ok(Applied {
                        record,
                        serial: self.serial(zone).await.map_err(applied_but)?,
                        guard: Some(RrsetGuard {
                            before,
                            after,
                            before_ttl,
                        }),
                    });
                }
                Some(code) => {
                    if is_cname && code == ResponseCode::YXDomain {
                        return Err(DnsError::Conflict(format!(
                            "{} already has records; a CNAME cannot share its name",
                            new.name
                        )));
                    }
                    if !is_cname
                        && !self
                            .rrset(zone, &name, RecordType::CNAME)
                            .await?
                            .wire
                            .is_empty()
                    {
                        return Err(DnsError::Conflict(format!(
                            "{} is a CNAME; it cannot have {} records too",
                            new.name,
                            data.rtype()
                        )));
                    }
                    // The RRset changed between the read and the update: read it again.
                }
            }
        }
        Err(self.contended(&format!("add {desc}")))
    }

    fn contended(&self, what: &str) -> DnsError {
        DnsError::Server {
            transient: true,
            message: format!(
                "{what}: the RRset kept changing on DNS server {} ({CAS_ATTEMPTS} attempts failed their prerequisite)",
                self.server()
            ),
        }
    }

    /// Deletes one record with a compare-and-swap on its RRset.
    async fn delete(
        &self,
        zone: &str,
        owner: &str,
        data: &RData,
        key: Option<&str>,
    ) -> Result<Option<Applied>, DnsError> {
        self.require_zone(zone).await?;
        let name = self.owner_name(zone, owner)?;
        let rtype = record_type(data);
        let desc = describe_record(zone, owner, data);
        for _ in 0..CAS_ATTEMPTS {
            let cur = self.rrset(zone, &name, rtype).await?;
            let Some(pos) = cur.position(data) else {
                return Ok(None);
            };
            let ttl = cur.wire[pos].ttl;
            let record = Record {
                owner: owner.to_string(),
                ttl,
                data: data.clone(),
            };
            if let Some(before) = cur.records(owner) {
                let after: Vec<Record> =
                    before.iter().filter(|r| r.data != *data).cloned().collect();
                let prior = Prior::new(zone, owner, data.rtype(), &before, &after)
                    .with_record(&record, None);
                self.keep_prior(key, &prior).await?;
            }
            let pre = rrset_prerequisite(&name, rtype, &cur);
            let del = delete_rr(&cur.wire[pos]);
            if self
                .update(&format!("delete {desc}"), zone, pre, vec![del])
                .await?
                .is_none()
            {
                let before: Vec<RData> = cur.data.iter().flatten().cloned().collect();
                let after = before.iter().filter(|d| *d != data).cloned().collect();
                return Ok(Some(Applied {
                    record,
                    serial: self.serial(zone).await.map_err(applied_but)?,
                    guard: Some(RrsetGuard {
                        before,
                        after,
                        before_ttl: None,
                    }),
                }));
            }
        }
        Err(self.contended(&format!("delete {desc}")))
    }

    fn changed(&self, what: &str, desc: &str, expected: &[RData], found: &Rrset) -> DnsError {
        DnsError::Changed(format!(
            "cannot {what} {desc}: the record was changed by someone else since this \
             transaction wrote it (expected {}, found {} on DNS server {}); nothing was changed, \
             fix the record by hand",
            describe_set(expected),
            found.describe(),
            self.server()
        ))
    }

    /// Undo of an add: delete exactly `record` if its RRset is as the add left it.
    async fn remove_added(
        &self,
        zone: &str,
        record: &Record,
        guard: Option<&RrsetGuard>,
    ) -> Result<(), DnsError> {
        if self.soa(zone).await?.is_none() {
            return Ok(());
        }
        let name = self.owner_name(zone, &record.owner)?;
        let rtype = record_type(&record.data);
        let desc = describe_record(zone, &record.owner, &record.data);
        let what = format!("undo: remove {desc}");
        for _ in 0..CAS_ATTEMPTS {
            let cur = self.rrset(zone, &name, rtype).await?;
            let pos = cur.position(&record.data);
            if let Some(g) = guard {
                if cur.equals(&g.before) && pos.is_none() {
                    return Ok(());
                }
                if !cur.equals(&g.after) {
                    return Err(self.changed("remove", &desc, &g.after, &cur));
                }
            }
            let Some(pos) = pos else { return Ok(()) };
            let pre = rrset_prerequisite(&name, rtype, &cur);
            let mut updates = vec![delete_rr(&cur.wire[pos])];
            // The add gave the whole RRset its TTL: adding one of the remaining records
            // again with the old TTL gives it back to all of them (RFC 2136 §3.4.2.2, and
            // what BIND does), in the same update.
            let restore_ttl = guard.and_then(|g| g.before_ttl).and_then(|ttl| {
                let other = cur
                    .wire
                    .iter()
                    .enumerate()
                    .find(|(i, w)| *i != pos && w.ttl != ttl)?;
                let mut again = other.1.clone();
                again.ttl = ttl;
                Some(again)
            });
            updates.extend(restore_ttl);
            match self.update(&what, zone, pre, updates).await? {
                None => return Ok(()),
                Some(_) => continue,
            }
        }
        Err(self.contended(&what))
    }

    /// Undo of a delete: add `record` back if its RRset is as the delete left it.
    async fn restore_deleted(
        &self,
        zone: &str,
        record: &Record,
        guard: Option<&RrsetGuard>,
    ) -> Result<(), DnsError> {
        self.require_zone(zone).await?;
        let name = self.owner_name(zone, &record.owner)?;
        let rtype = record_type(&record.data);
        let desc = describe_record(zone, &record.owner, &record.data);
        let what = format!("undo: add back {desc}");
        let new = WireRecord::from_rdata(name.clone(), record.ttl, to_wire(&record.data)?);
        for _ in 0..CAS_ATTEMPTS {
            let cur = self.rrset(zone, &name, rtype).await?;
            let present = cur.position(&record.data).is_some();
            if let Some(g) = guard {
                if cur.equals(&g.before) && present {
                    return Ok(());
                }
                if !cur.equals(&g.after) {
                    return Err(self.changed("add back", &desc, &g.after, &cur));
                }
            } else if present {
                return Ok(());
            }
            let mut pre = rrset_prerequisite(&name, rtype, &cur);
            if matches!(record.data, RData::Cname(_)) {
                pre = vec![empty_record(&name, RecordType::ANY, DNSClass::NONE)];
            } else {
                pre.push(empty_record(&name, RecordType::CNAME, DNSClass::NONE));
            }
            match self.update(&what, zone, pre, vec![new.clone()]).await? {
                None => return Ok(()),
                Some(code) => {
                    let again = self.rrset(zone, &name, rtype).await?;
                    if guard.is_some_and(|g| again.equals(&g.after)) {
                        // Our RRset is unchanged, so another prerequisite failed: a CNAME
                        // (or, for a CNAME, other data) appeared at the name.
                        return Err(DnsError::Changed(format!(
                            "cannot add back {desc}: the name now holds other records \
                             ({}, the server answered {}); nothing was changed",
                            if matches!(record.data, RData::Cname(_)) {
                                "data"
                            } else {
                                "a CNAME"
                            },
                            rcode_name(code)
                        )));
                    }
                }
            }
        }
        Err(self.contended(&what))
    }

    /// The RRset as records, or [`DnsError::Unsupported`] when it holds data this crate
    /// cannot represent (a replace would lose it beyond undo).
    fn rrset_records(&self, cur: &Rrset, owner: &str, set: &str) -> Result<Vec<Record>, DnsError> {
        cur.records(owner).ok_or_else(|| {
            DnsError::Unsupported(format!(
                "the RRset {set} on DNS server {} holds data this provider cannot represent \
                 ({}); change it by hand",
                self.server(),
                cur.describe()
            ))
        })
    }

    /// Replaces one RRset with a single update: RFC 2136 §2.5.2 "delete an RRset" and
    /// §2.5.1 adds, guarded by the RRset as read (§2.4.2 value-dependent, or §2.4.3 when
    /// absent), plus the CNAME prerequisites of [`Self::add`]. At the apex, NS records are
    /// added and removed one by one instead (servers ignore deleting the apex NS RRset).
    async fn replace(
        &self,
        zone: &str,
        owner: &str,
        rtype: &str,
        new: NewRrset<'_>,
        expect: Option<&[Record]>,
        key: Option<&str>,
    ) -> Result<Replaced, DnsError> {
        let (_, soa_ttl) = self.require_zone(zone).await?;
        let name = self.owner_name(zone, owner)?;
        let wtype = wire_type(rtype)?;
        let set = format!("{} {rtype}", fqdn(zone, owner));
        let after = new.resolve(owner, soa_ttl);
        if let Some(bad) = after
            .iter()
            .find(|r| r.owner != owner || r.data.rtype() != rtype)
        {
            return Err(DnsError::Invalid(format!(
                "{} {} does not belong to the RRset {set}",
                bad.fqdn(zone),
                bad.data.rtype()
            )));
        }
        let is_cname = rtype == "CNAME";
        if is_cname && owner == "@" && !after.is_empty() {
            return Err(DnsError::Conflict(format!(
                "a CNAME cannot be at the zone apex {zone}."
            )));
        }
        let adds = after
            .iter()
            .map(|r| {
                Ok(WireRecord::from_rdata(
                    name.clone(),
                    r.ttl,
                    to_wire(&r.data)?,
                ))
            })
            .collect::<Result<Vec<_>, DnsError>>()?;
        let what = if expect.is_some() {
            format!("undo: restore {set}")
        } else {
            format!("replace {set}")
        };
        for _ in 0..CAS_ATTEMPTS {
            let cur = self.rrset(zone, &name, wtype).await?;
            let before = self.rrset_records(&cur, owner, &set)?;
            if same_rrset(&before, &after) {
                return Ok(Replaced {
                    after: before.clone(),
                    before,
                    serial: self.serial(zone).await?,
                    changed: false,
                });
            }
            if let Some(expected) = expect {
                if !same_rrset(&before, expected) {
                    return Err(rrset_changed(zone, owner, rtype, expected, &before));
                }
            }
            let mut pre = rrset_prerequisite(&name, wtype, &cur);
            if !after.is_empty() {
                if !is_cname {
                    pre.push(empty_record(&name, RecordType::CNAME, DNSClass::NONE));
                } else if cur.wire.is_empty() {
                    pre = vec![empty_record(&name, RecordType::ANY, DNSClass::NONE)];
                }
            }
            let updates = if owner == "@" && rtype == "NS" {
                let mut u = adds.clone();
                u.extend(
                    cur.wire
                        .iter()
                        .zip(&before)
                        .filter(|(_, r)| !after.iter().any(|a| a.data == r.data))
                        .map(|(w, _)| delete_rr(w)),
                );
                u
            } else {
                let mut u = vec![empty_record(&name, wtype, DNSClass::ANY)];
                u.extend(adds.iter().cloned());
                u
            };
            self.keep_prior(key, &Prior::new(zone, owner, rtype, &before, &after))
                .await?;
            match self.update(&what, zone, pre, updates).await? {
                None => {
                    return Ok(Replaced {
                        before,
                        after,
                        serial: self.serial(zone).await.map_err(applied_but)?,
                        changed: true,
                    })
                }
                Some(code) => {
                    if is_cname && code == ResponseCode::YXDomain {
                        return Err(DnsError::Conflict(format!(
                            "{} already has records; a CNAME cannot share its name",
                            fqdn(zone, owner)
                        )));
                    }
                    if !is_cname
                        && !after.is_empty()
                        && !self
                            .rrset(zone, &name, RecordType::CNAME)
                            .await?
                            .wire
                            .is_empty()
                    {
                        return Err(DnsError::Conflict(format!(
                            "{} is a CNAME; it cannot have {rtype} records too",
                            fqdn(zone, owner)
                        )));
                    }
                    // The RRset changed between the read and the update: read it again
                    // (an undo then refuses, as the RRset is no longer what it wrote).
                }
            }
        }
        Err(self.contended(&what))
    }

    /// All records of the zone by AXFR (the server must allow transfers to the key).
    async fn transfer(&self, zone: &str) -> Result<ZoneSnapshot, DnsError> {
        let (serial, default_ttl) = self.require_zone(zone).await?;
        let origin = self.zone_name(zone)?;
        let what = format!("zone transfer (AXFR) of {zone}.");
        let mut client = self.client().await?;
        let mut stream = client.zone_transfer(origin.clone(), None);
        let mut records = Vec::new();
        loop {
            let next = match tokio::time::timeout(self.config.timeout, stream.next()).await {
                Ok(n) => n,
                Err(_) => {
                    self.reset().await;
                    return Err(self.net_error(&what, &NetError::Timeout));
                }
            };
            let Some(resp) = next else { break };
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    self.reset().await;
                    return Err(self.net_error(&what, &e));
                }
            };
            let code = resp.metadata.response_code;
            if code != ResponseCode::NoError {
                return Err(DnsError::Server {
                    transient: code == ResponseCode::ServFail,
                    message: format!(
                        "{what}: DNS server {} answered {}; allow transfers to TSIG key {} \
                         (`allow-transfer {{ key {}; }};`) to list records",
                        self.server(),
                        rcode_name(code),
                        self.config.key_name,
                        self.config.key_name
                    ),
                });
            }
            for r in &resp.answers {
                let Some(data) = from_wire(&r.data) else {
                    continue;
                };
                let Some(owner) = relative_owner(&r.name, &origin) else {
                    continue;
                };
                let rec = Record {
                    owner,
                    ttl: r.ttl,
                    data,
                };
                if !records.iter().any(|x: &Record| x.same_as(&rec)) {
                    records.push(rec);
                }
            }
        }
        records.sort_by(Record::canonical_cmp);
        Ok(ZoneSnapshot {
            serial,
            default_ttl,
            records,
        })
    }
}

/// The owner relative to `origin` (`@` for the apex), lowercase; `None` if outside.
/// An error text of the DNS library without its "Please file an issue …" tail, which
/// speaks to the library's developers, not to an operator.
fn without_report_tail(text: &str) -> String {
    let cut = text
        .find("Please file an issue")
        .or_else(|| text.find("please file an issue"))
        .unwrap_or(text.len());
    text[..cut]
        .trim_end()
        .trim_end_matches([',', ';', ':', '.'])
        .to_string()
}

fn relative_owner(name: &Name, origin: &Name) -> Option<String> {
    if !origin.zone_of(name) {
        return None;
    }
    let n = name.to_lowercase().to_ascii();
    let o = origin.to_lowercase().to_ascii();
    if n == o {
        return Some("@".into());
    }
    n.strip_suffix(&format!(".{o}")).map(str::to_string)
}

/// An update/prerequisite record with no data.
fn empty_record(name: &Name, rtype: RecordType, class: DNSClass) -> WireRecord {
    let mut r = WireRecord::update0(name.clone(), 0, rtype);
    r.dns_class = class;
    r
}

/// RFC 2136 2.4.2 "RRset exists (value dependent)" for a non-empty RRset, or 2.4.3
/// "RRset does not exist" for an empty one.
fn rrset_prerequisite(name: &Name, rtype: RecordType, cur: &Rrset) -> Vec<WireRecord> {
    if cur.wire.is_empty() {
        return vec![empty_record(name, rtype, DNSClass::NONE)];
    }
    cur.wire
        .iter()
        .map(|r| {
            let mut p = r.clone();
            p.ttl = 0;
            p.dns_class = DNSClass::IN;
            p
        })
        .collect()
}

/// RFC 2136 2.5.4 "delete an RR from an RRset".
fn delete_rr(r: &WireRecord) -> WireRecord {
    let mut d = r.clone();
    d.ttl = 0;
    d.dns_class = DNSClass::NONE;
    d
}

fn record_type(data: &RData) -> RecordType {
    match data {
        RData::A(_) => RecordType::A,
        RData::Aaaa(_) => RecordType::AAAA,
        RData::Cname(_) => RecordType::CNAME,
        RData::Ns(_) => RecordType::NS,
        RData::Mx { .. } => RecordType::MX,
        RData::Txt(_) => RecordType::TXT,
        RData::Srv { .. } => RecordType::SRV,
        RData::Caa { .. } => RecordType::CAA,
    }
}

/// The wire type of a type mnemonic (`A`, `TXT`, …).
fn wire_type(rtype: &str) -> Result<RecordType, DnsError> {
    rtype
        .parse()
        .map_err(|_| DnsError::Invalid(format!("unsupported record type {rtype}")))
}

fn wire_name(n: &str) -> Result<Name, DnsError> {
    Name::from_ascii(n).map_err(|e| DnsError::Invalid(format!("name {n}: {e}")))
}

/// Our record data in hickory's form. TXT text is cut into 255-byte character-strings.
fn to_wire(data: &RData) -> Result<WireData, DnsError> {
    Ok(match data {
        RData::A(a) => WireData::A(A(*a)),
        RData::Aaaa(a) => WireData::AAAA(AAAA(*a)),
        RData::Cname(n) => WireData::CNAME(CNAME(wire_name(n)?)),
        RData::Ns(n) => WireData::NS(NS(wire_name(n)?)),
        RData::Mx {
            preference,
            exchange,
        } => WireData::MX(MX::new(*preference, wire_name(exchange)?)),
        RData::Txt(bytes) => {
            let chunks: Vec<&[u8]> = if bytes.is_empty() {
                vec![&[]]
            } else {
                bytes.chunks(255).collect()
            };
            WireData::TXT(TXT::from_bytes(chunks))
        }
        RData::Srv {
            priority,
            weight,
            port,
            target,
        } => WireData::SRV(SRV::new(*priority, *weight, *port, wire_name(target)?)),
        RData::Caa { flags, tag, value } => {
            let mut c = CAA::new_issue(false, None, Vec::new());
            c.issuer_critical = flags & 0x80 != 0;
            c.reserved_flags = flags & 0x7f;
            c.tag.clone_from(tag);
            c.value = value.as_bytes().to_vec();
            WireData::CAA(c)
        }
    })
}

fn our_name(n: &Name) -> String {
    let s = n.to_lowercase().to_ascii();
    if s.ends_with('.') {
        s
    } else {
        format!("{s}.")
    }
}

/// Hickory's record data in our form; `None` for types this crate does not handle.
fn from_wire(data: &WireData) -> Option<RData> {
    Some(match data {
        WireData::A(a) => RData::A(a.0),
        WireData::AAAA(a) => RData::Aaaa(a.0),
        WireData::CNAME(n) => RData::Cname(our_name(&n.0)),
        WireData::NS(n) => RData::Ns(our_name(&n.0)),
        WireData::MX(mx) => RData::Mx {
            preference: mx.preference,
            exchange: our_name(&mx.exchange),
        },
        WireData::TXT(t) => RData::Txt(t.txt_data.iter().flat_map(|s| s.iter().copied()).collect()),
        WireData::SRV(s) => RData::Srv {
            priority: s.priority,
            weight: s.weight,
            port: s.port,
            target: our_name(&s.target),
        },
        WireData::CAA(c) => RData::Caa {
            flags: c.flags(),
            tag: c.tag.to_ascii_lowercase(),
            value: String::from_utf8(c.value.clone()).ok()?,
        },
        _ => return None,
    })
}

#[async_trait]
impl ZoneBackend for Rfc2136Backend {
    fn kind(&self) -> &'static str {
        "rfc2136"
    }

    fn server(&self) -> Option<SocketAddr> {
        Some(self.config.server)
    }

    /// With rndc: adds the zone (see `Rfc2136Backend::add_zone`). Without: RFC 2136
    /// cannot create zones, so this checks that the server serves the zone and returns its
    /// serial; the settings (SOA, NS) are not applied.
    async fn create_zone(&self, settings: &ZoneSettings) -> Result<(u32, String), DnsError> {
        if let Some(rndc) = &self.rndc {
            return self.add_zone(rndc, settings, None).await;
        }
        let (serial, _) = self.require_zone(&settings.zone).await?;
        Ok((
            serial,
            format!(
                "existing zone {}. on DNS server {} (rfc2136 backend: zones are created in \
                 the server's configuration; nothing was changed)",
                settings.zone,
                self.server()
            ),
        ))
    }

    async fn create_zone_keyed(
        &self,
        settings: &ZoneSettings,
        key: &str,
    ) -> Result<(u32, String), DnsError> {
        match &self.rndc {
            Some(rndc) => self.add_zone(rndc, settings, Some(key)).await,
            None => self.create_zone(settings).await,
        }
    }

    /// The undo of CreateZone: with rndc, `rndc delzone -clean` (absent is fine); without,
    /// nothing was created, so nothing is removed.
    async fn remove_zone(&self, zone: &str) -> Result<(), DnsError> {
        match &self.rndc {
            Some(rndc) => rndc.delete_zone(zone).await.map(|_| ()),
            None => Ok(()),
        }
    }

    async fn delete_zone(&self, zone: &str, key: &str) -> Result<String, DnsError> {
        match &self.rndc {
            Some(rndc) => self.take_zone_out(rndc, zone, key).await,
            None => Err(DnsError::Unsupported(format!(
                "DeleteZone {zone}: the rfc2136 backend cannot delete zones without rndc \
                 (RFC 2136 updates records inside a zone); configure [providers.dns.rndc] (see \
                 docs/providers/dns.md), or remove the zone from the server's configuration"
            ))),
        }
    }

    async fn restore_zone(&self, zone: &str, token: &str) -> Result<(), DnsError> {
        match &self.rndc {
            Some(rndc) => self.put_zone_back(rndc, zone, token).await,
            None => Err(DnsError::Unsupported(format!(
                "restoring zone {zone}: the rfc2136 backend cannot create zones without rndc"
            ))),
        }
    }

    async fn zone_exists(&self, zone: &str) -> Result<bool, DnsError> {
        Ok(self.soa(zone).await?.is_some())
    }

    /// `rndc sync ZONE`: BIND keeps dynamic updates in the zone's journal and writes them
    /// into the zone file later; this writes them now.
    async fn write_back(&self, zone: &str) -> Result<String, DnsError> {
        let Some(rndc) = &self.rndc else {
            return Err(DnsError::Unsupported(format!(
                "WriteBackZoneFile of {zone} needs BIND's control channel (`rndc sync`): configure \
                 [providers.dns.rndc]; without it BIND writes its journal into the zone file on its own \
                 (at most 15 minutes after an update, and at shutdown)"
            )));
        };
        if rndc.sync_zone(zone).await? {
            Ok(format!(
                "rndc sync {zone}: named wrote the zone's journal into its zone file"
            ))
        } else {
            Err(DnsError::ZoneNotFound(zone.to_string()))
        }
    }

    async fn snapshot(&self, zone: &str) -> Result<ZoneSnapshot, DnsError> {
        self.transfer(zone).await
    }

    async fn add_record(
        &self,
        zone: &str,
        owner: &str,
        ttl: Option<u32>,
        data: &RData,
    ) -> Result<(Record, u32), DnsError> {
        let a = self.add(zone, owner, ttl, data, None).await?;
        Ok((a.record, a.serial))
    }

    async fn delete_record(
        &self,
        zone: &str,
        owner: &str,
        data: &RData,
    ) -> Result<Option<(Record, u32)>, DnsError> {
        Ok(self
            .delete(zone, owner, data, None)
            .await?
            .map(|a| (a.record, a.serial)))
    }

    async fn add_record_guarded(
        &self,
        zone: &str,
        owner: &str,
        ttl: Option<u32>,
        data: &RData,
    ) -> Result<Applied, DnsError> {
        self.add(zone, owner, ttl, data, None).await
    }

    async fn delete_record_guarded(
        &self,
        zone: &str,
        owner: &str,
        data: &RData,
    ) -> Result<Option<Applied>, DnsError> {
        self.delete(zone, owner, data, None).await
    }

    async fn add_record_keyed(
        &self,
        zone: &str,
        owner: &str,
        ttl: Option<u32>,
        data: &RData,
        key: &str,
    ) -> Result<Applied, DnsError> {
        let added = self.add(zone, owner, ttl, data, Some(key)).await;
        self.settled_now(key, &added).await;
        added
    }

    async fn delete_record_keyed(
        &self,
        zone: &str,
        owner: &str,
        data: &RData,
        key: &str,
    ) -> Result<Option<Applied>, DnsError> {
        let deleted = self.delete(zone, owner, data, Some(key)).await;
        self.settled_now(key, &deleted).await;
        deleted
    }

    async fn undo_add(
        &self,
        zone: &str,
        record: &Record,
        guard: Option<&RrsetGuard>,
    ) -> Result<(), DnsError> {
        self.remove_added(zone, record, guard).await
    }

    async fn undo_delete(
        &self,
        zone: &str,
        record: &Record,
        guard: Option<&RrsetGuard>,
    ) -> Result<(), DnsError> {
        self.restore_deleted(zone, record, guard).await
    }

    async fn record_exists(
        &self,
        zone: &str,
        owner: &str,
        data: &RData,
    ) -> Result<Option<bool>, DnsError> {
        if self.soa(zone).await?.is_none() {
            return Ok(None);
        }
        let name = self.owner_name(zone, owner)?;
        let set = self.rrset(zone, &name, record_type(data)).await?;
        Ok(Some(set.position(data).is_some()))
    }

    async fn read_rrset(
        &self,
        zone: &str,
        owner: &str,
        rtype: &str,
    ) -> Result<Option<(Vec<Record>, u32)>, DnsError> {
        let Some((_, soa_ttl)) = self.soa(zone).await? else {
            return Ok(None);
        };
        let name = self.owner_name(zone, owner)?;
        let cur = self.rrset(zone, &name, wire_type(rtype)?).await?;
        let set = format!("{} {rtype}", fqdn(zone, owner));
        Ok(Some((self.rrset_records(&cur, owner, &set)?, soa_ttl)))
    }

    async fn replace_rrset(
        &self,
        zone: &str,
        owner: &str,
        rtype: &str,
        new: NewRrset<'_>,
        expect: Option<&[Record]>,
        key: Option<&str>,
    ) -> Result<Replaced, DnsError> {
        let replaced = self.replace(zone, owner, rtype, new, expect, key).await;
        if let Some(key) = key {
            self.settled_now(key, &replaced).await;
        }
        replaced
    }

    fn deletes_zones(&self) -> bool {
        self.rndc.is_some()
    }

    async fn recover(&self, key: &str, call: &InDoubt<'_>) -> Result<Recovered, DnsError> {
        if let Some(prior) = self.read_prior(key).await {
            return self.recover_from_prior(key, call, prior).await;
        }
        self.recover_call(key, call).await
    }

    async fn forget(&self, key: &str) {
        self.drop_prior(key).await;
        if let Some(rndc) = &self.rndc {
            let _ = rndc.remove_file(&Rndc::created_marker(key)).await;
        }
    }
}

/// What a keyed change stores (durably) before its UPDATE: the RRset as read and as the
/// UPDATE leaves it, as zone-file lines, so a change left in doubt can be settled and
/// undone after a crash (see the module docs).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Prior {
    zone: String,
    owner: String,
    rtype: String,
    before: Vec<String>,
    after: Vec<String>,
    /// The record an AddRecord added or a DeleteRecord removed.
    #[serde(default)]
    record: Option<String>,
    /// The RRset's TTL before an AddRecord (the add changes it for the whole RRset).
    #[serde(default)]
    before_ttl: Option<u32>,
}

impl Prior {
    fn new(zone: &str, owner: &str, rtype: &str, before: &[Record], after: &[Record]) -> Prior {
        Prior {
            zone: zone.to_string(),
            owner: owner.to_string(),
            rtype: rtype.to_string(),
            before: before.iter().map(Record::line).collect(),
            after: after.iter().map(Record::line).collect(),
            record: None,
            before_ttl: None,
        }
    }

    fn with_record(mut self, record: &Record, before_ttl: Option<u32>) -> Prior {
        self.record = Some(record.line());
        self.before_ttl = before_ttl;
        self
    }

    fn records(&self, lines: &[String]) -> Result<Vec<Record>, DnsError> {
        lines.iter().map(|l| self.record_of(l)).collect()
    }

    fn record_of(&self, line: &str) -> Result<Record, DnsError> {
        match super::zonefile::parse_record_line(line, &self.zone, 3600) {
            Ok(Some((r, None))) => Ok(r),
            _ => Err(DnsError::Unsupported(format!(
                "the stored prior RRset of {} {} holds a line that does not read ({line:?}); \
                 check the RRset by hand",
                fqdn(&self.zone, &self.owner),
                self.rtype
            ))),
        }
    }
}

/// A read after an UPDATE that succeeded failed: the change is made but its answer is
/// incomplete, which the engine settles like a lost answer.
fn applied_but(e: DnsError) -> DnsError {
    DnsError::InDoubt(format!(
        "the update was applied, but reading the zone's serial afterwards failed: {e}"
    ))
}

/// Writes `bytes` to `path` through a temp file, fsynced, renamed, folder fsynced.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

impl Rfc2136Backend {
    fn prior_path(&self, key: &str) -> Option<PathBuf> {
        let dir = self.config.state_dir.as_ref()?;
        Some(dir.join(format!("{}.json", crate::common::sanitize_key(key))))
    }

    /// Stores `prior` under `key` durably before an UPDATE (nothing without a key or a
    /// state folder). A failure stops the change: it could not be settled after a crash.
    async fn keep_prior(&self, key: Option<&str>, prior: &Prior) -> Result<(), DnsError> {
        let (Some(key), Some(dir)) = (key, self.config.state_dir.clone()) else {
            return Ok(());
        };
        let Some(path) = self.prior_path(key) else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(prior).map_err(|e| DnsError::Io {
            what: "prior RRset record".into(),
            transient: false,
            message: e.to_string(),
        })?;
        let shown = path.display().to_string();
        let written = tokio::task::spawn_blocking(move || write_durably(&dir, &path, &bytes))
            .await
            .map_err(|e| DnsError::Io {
                what: format!("prior RRset record {shown}"),
                transient: true,
                message: e.to_string(),
            })?;
        written.map_err(|e| DnsError::io(format!("prior RRset record {shown}"), e))
    }

    async fn read_prior(&self, key: &str) -> Option<Prior> {
        let path = self.prior_path(key)?;
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .ok()?
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    async fn drop_prior(&self, key: &str) {
        if let Some(path) = self.prior_path(key) {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
        }
    }

    /// After a keyed change: a definite failure changed nothing, so its prior record goes;
    /// success and an unknown outcome keep it (recovery needs it).
    async fn settled_now<T>(&self, key: &str, result: &Result<T, DnsError>) {
        if matches!(result, Err(e) if !matches!(e, DnsError::InDoubt(_))) {
            self.drop_prior(key).await;
        }
    }

    /// Settles a call in doubt from its prior record and the RRset on the server now.
    async fn recover_from_prior(
        &self,
        key: &str,
        call: &InDoubt<'_>,
        prior: Prior,
    ) -> Result<Recovered, DnsError> {
        let set = format!("{} {}", fqdn(&prior.zone, &prior.owner), prior.rtype);
        let Some((live, _)) = self
            .read_rrset(&prior.zone, &prior.owner, &prior.rtype)
            .await?
        else {
            return Err(DnsError::Unsupported(format!(
                "cannot tell whether the change of {set} ({key}) was applied: DNS server {} \
                 no longer serves zone {}.; check it by hand",
                self.server(),
                prior.zone
            )));
        };
        let before = prior.records(&prior.before)?;
        let after = prior.records(&prior.after)?;
        let data = |rs: &[Record]| rs.iter().map(|r| r.data.clone()).collect::<Vec<RData>>();
        // A replace sets the TTLs as well; an add or delete is judged by the data.
        let same = |a: &[Record], b: &[Record]| match call {
            InDoubt::ReplaceRecordSet { .. } => same_rrset(a, b),
            _ => a.len() == b.len() && a.iter().all(|r| b.iter().any(|s| s.data == r.data)),
        };
        if same(&live, &after) {
            let guard = |before_ttl| {
                Some(RrsetGuard {
                    before: data(&before),
                    after: data(&after),
                    before_ttl,
                })
            };
            return match (call, &prior.record) {
                (InDoubt::ReplaceRecordSet { .. }, _) => Ok(Recovered::Rrset { before, after }),
                (InDoubt::AddRecord { .. }, Some(line)) => Ok(Recovered::Record {
                    record: prior.record_of(line)?,
                    guard: guard(prior.before_ttl),
                }),
                (InDoubt::DeleteRecord { .. }, Some(line)) => Ok(Recovered::Record {
                    record: prior.record_of(line)?,
                    guard: guard(None),
                }),
                _ => Err(DnsError::Unsupported(format!(
                    "the prior record of {set} ({key}) does not match the call {call:?}; check \
                     it by hand"
                ))),
            };
        }
        if same(&live, &before) {
            self.drop_prior(key).await;
            return Ok(Recovered::NotApplied);
        }
        Err(DnsError::Unsupported(format!(
            "cannot tell whether the change of {set} ({key}) was applied: DNS server {} holds \
             {}, neither the RRset before it ({}) nor what it wrote ({}); someone else changed \
             it meanwhile; check it by hand",
            self.server(),
            describe_rrset(&live),
            describe_rrset(&before),
            describe_rrset(&after)
        )))
    }
}

impl Rfc2136Backend {
    /// Settles an in-doubt call by reading the server (see the module docs).
    async fn recover_call(&self, key: &str, call: &InDoubt<'_>) -> Result<Recovered, DnsError> {
        match *call {
            InDoubt::CreateZone { zone } => match &self.rndc {
                Some(rndc) => self.recover_add_zone(rndc, key, zone).await,
                // CreateZone only checks the zone; its undo does nothing.
                None => Ok(if self.soa(zone).await?.is_some() {
                    Recovered::ZoneCreated
                } else {
                    Recovered::NotApplied
                }),
            },
            InDoubt::DeleteZone { zone } => match &self.rndc {
                Some(rndc) => self.recover_zone_taken_out(rndc, key, zone).await,
                // DeleteZone always fails on this backend without rndc.
                None => Ok(Recovered::NotApplied),
            },
            InDoubt::AddRecord {
                zone, owner, data, ..
            } => {
                if self.soa(zone).await?.is_none() {
                    return Ok(Recovered::NotApplied);
                }
                let name = self.owner_name(zone, owner)?;
                let cur = self.rrset(zone, &name, record_type(data)).await?;
                let Some(pos) = cur.position(data) else {
                    return Ok(Recovered::NotApplied);
                };
                if cur.data.iter().any(Option::is_none) {
                    return Err(DnsError::Unsupported(format!(
                        "cannot rebuild the undo of AddRecord {} ({key}) after a crash: its \
                         RRset on DNS server {} holds data this provider cannot represent \
                         ({}); check it by hand",
                        describe_record(zone, owner, data),
                        self.server(),
                        cur.describe()
                    )));
                }
                let after: Vec<RData> = cur.data.iter().flatten().cloned().collect();
                let before = after.iter().filter(|d| *d != data).cloned().collect();
                Ok(Recovered::Record {
                    record: Record {
                        owner: owner.to_string(),
                        ttl: cur.wire[pos].ttl,
                        data: data.clone(),
                    },
                    // The TTL the RRset had before is not known any more.
                    guard: Some(RrsetGuard {
                        before,
                        after,
                        before_ttl: None,
                    }),
                })
            }
            InDoubt::DeleteRecord { zone, owner, data } => {
                let desc = describe_record(zone, owner, data);
                if self.soa(zone).await?.is_some() {
                    let name = self.owner_name(zone, owner)?;
                    let cur = self.rrset(zone, &name, record_type(data)).await?;
                    if cur.position(data).is_some() {
                        return Ok(Recovered::NotApplied);
                    }
                }
                Err(DnsError::Unsupported(format!(
                    "cannot tell whether DeleteRecord {desc} ({key}) was applied: the record is \
                     not on DNS server {} now, but it may have been removed by someone else, and \
                     its TTL is not known to add it back; check it by hand",
                    self.server()
                )))
            }
            InDoubt::ReplaceRecordSet {
                zone,
                owner,
                rtype,
                ttl,
                data,
            } => {
                let Some((live, default_ttl)) = self.read_rrset(zone, owner, rtype).await? else {
                    return Ok(Recovered::NotApplied);
                };
                let intended = NewRrset::Data { ttl, data }.resolve(owner, default_ttl);
                if !same_rrset(&live, &intended) {
                    // One update replaces the whole RRset: not what it wrote, not applied.
                    return Ok(Recovered::NotApplied);
                }
                Err(DnsError::Unsupported(format!(
                    "cannot rebuild the undo of ReplaceRecordSet {} {rtype} ({key}) after a \
                     crash: the RRset on DNS server {} holds what the call wrote ({}), but what \
                     it held before is not known (the server keeps no history); check it by hand",
                    fqdn(zone, owner),
                    self.server(),
                    describe_rrset(&live)
                )))
            }
        }
    }
}

// ---- zones through rndc ------------------------------------------------------------

impl Rfc2136Backend {
    /// CreateZone with rndc: refuses a zone the server serves or knows, leaves the intent
    /// marker of call `key`, writes the first zone file and adds the zone.
    async fn add_zone(
        &self,
        rndc: &Rndc,
        settings: &ZoneSettings,
        key: Option<&str>,
    ) -> Result<(u32, String), DnsError> {
        let zone = &settings.zone;
        check_config_name("zone", zone)?;
        if self.soa(zone).await?.is_some() || rndc.knows_zone(zone).await? {
            return Err(DnsError::ZoneExists(zone.clone()));
        }
        let marker = key.map(Rndc::created_marker);
        if let Some(m) = &marker {
            rndc.write_file(m, format!("{zone}\n")).await?;
        }
        let first = first_zone(settings);
        let file = Rndc::new_file_name(zone);
        match self
            .install_zone(rndc, zone, &file, render(&first, "CreateZone"))
            .await
        {
            Ok(path) => Ok((
                first.soa.serial,
                format!(
                    "zone {zone}. added to DNS server {} with `rndc addzone`; first zone file {}",
                    self.server(),
                    path.display()
                ),
            )),
            Err(e) => {
                if let Some(m) = &marker {
                    let _ = rndc.remove_file(m).await;
                }
                Err(e)
            }
        }
    }

    /// Writes `text` as zone file `file`, runs `rndc addzone` and waits until the server
    /// answers for the zone. On failure the file is removed and the zone is not left added.
    async fn install_zone(
        &self,
        rndc: &Rndc,
        zone: &str,
        file: &str,
        text: String,
    ) -> Result<std::path::PathBuf, DnsError> {
        let rel = Path::new(file);
        let path = rndc.write_file(rel, text).await?;
        let error = match rndc.add_zone(zone, file, &self.config.key_name).await {
            Ok(()) => None,
            Err(RndcError::AlreadyExists) => Some(DnsError::ZoneExists(zone.to_string())),
            Err(RndcError::NotFound) => Some(DnsError::Server {
                transient: false,
                message: format!("rndc addzone {zone}: named answered `not found`"),
            }),
            Err(RndcError::Other(e)) => Some(e),
        };
        if let Some(e) = error {
            let _ = rndc.remove_file(rel).await;
            return Err(e);
        }
        let deadline = std::time::Instant::now() + self.config.timeout;
        loop {
            if self.soa(zone).await?.is_some() {
                return Ok(path);
            }
            if std::time::Instant::now() > deadline {
                let _ = rndc.delete_zone(zone).await;
                let _ = rndc.remove_file(rel).await;
                return Err(DnsError::Server {
                    transient: false,
                    message: format!(
                        "rndc addzone {zone}: named took the zone but does not answer for it \
                         within {} s; the zone was deleted again (named's log says why, e.g. \
                         the zone file {} is not readable by named)",
                        self.config.timeout.as_secs(),
                        path.display()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// DeleteZone with rndc: writes the zone's records (AXFR) durably to the deleted-copy
    /// of call `key`, then `rndc delzone -clean`. Returns the copy's token.
    async fn take_zone_out(&self, rndc: &Rndc, zone: &str, key: &str) -> Result<String, DnsError> {
        check_config_name("zone", zone)?;
        let token = Rndc::deleted_copy(zone, key);
        let rel = Rndc::deleted_path(&token)?;
        if self.soa(zone).await?.is_none() {
            // The same call again after it took the zone out.
            if rndc.read_file(&rel).await?.is_some() && !rndc.knows_zone(zone).await? {
                return Ok(token);
            }
            return Err(DnsError::ZoneNotFound(zone.to_string()));
        }
        let image = self.zone_image(zone).await?;
        rndc.write_file(&rel, render(&image, "copy kept by DeleteZone for its undo"))
            .await?;
        if let Err(e) = rndc.delete_zone(zone).await {
            let _ = rndc.remove_file(&rel).await;
            return Err(e);
        }
        Ok(token)
    }

    /// The undo of DeleteZone with rndc: adds the zone back from its deleted copy, with a
    /// higher serial (secondaries may have seen the old one). A served zone counts as
    /// restored.
    async fn put_zone_back(&self, rndc: &Rndc, zone: &str, token: &str) -> Result<(), DnsError> {
        check_config_name("zone", zone)?;
        if self.soa(zone).await?.is_some() {
            return Ok(());
        }
        let rel = Rndc::deleted_path(token)?;
        let Some(text) = rndc.read_file(&rel).await? else {
            return Err(DnsError::Io {
                what: format!("restoring zone {zone}"),
                transient: false,
                message: format!(
                    "its deleted copy {} is gone; the zone cannot be added back",
                    rndc.config().zone_dir.join(&rel).display()
                ),
            });
        };
        let mut image = parse_zone(&text, zone).map_err(|message| DnsError::Corrupt {
            zone: zone.to_string(),
            message: format!("deleted copy {token}: {message}"),
        })?;
        image.soa.serial = next_serial(image.soa.serial, today_yyyymmdd());
        let file = Rndc::new_file_name(zone);
        self.install_zone(
            rndc,
            zone,
            &file,
            render(&image, "restored by the undo of DeleteZone"),
        )
        .await
        .map(|_| ())
    }

    /// All of a zone by AXFR, SOA included; fails when it holds records this provider
    /// cannot write back (its copy would be incomplete).
    async fn zone_image(&self, zone: &str) -> Result<Zone, DnsError> {
        let origin = self.zone_name(zone)?;
        let what = format!("zone transfer (AXFR) of {zone}.");
        let mut client = self.client().await?;
        let mut stream = client.zone_transfer(origin.clone(), None);
        let mut soa = None;
        let mut records: Vec<Record> = Vec::new();
        let mut unknown = std::collections::BTreeSet::new();
        loop {
            let next = match tokio::time::timeout(self.config.timeout, stream.next()).await {
                Ok(n) => n,
                Err(_) => {
                    self.reset().await;
                    return Err(self.net_error(&what, &NetError::Timeout));
                }
            };
            let Some(resp) = next else { break };
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    self.reset().await;
                    return Err(self.net_error(&what, &e));
                }
            };
            let code = resp.metadata.response_code;
            if code != ResponseCode::NoError {
                return Err(DnsError::Server {
                    transient: code == ResponseCode::ServFail,
                    message: format!(
                        "{what}: DNS server {} answered {}; DeleteZone keeps a copy of the zone \
                         for its undo and needs transfers allowed to TSIG key {} \
                         (`allow-transfer {{ key {}; }};`)",
                        self.server(),
                        rcode_name(code),
                        self.config.key_name,
                        self.config.key_name
                    ),
                });
            }
            for r in &resp.answers {
                let Some(owner) = relative_owner(&r.name, &origin) else {
                    continue;
                };
                if let WireData::SOA(s) = &r.data {
                    soa = Some(Soa {
                        ttl: r.ttl,
                        mname: our_name(&s.mname),
                        rname: our_name(&s.rname),
                        serial: s.serial,
                        // The wire's i32 timers are never negative in practice.
                        timers: [
                            u32::try_from(s.refresh).unwrap_or(0),
                            u32::try_from(s.retry).unwrap_or(0),
                            u32::try_from(s.expire).unwrap_or(0),
                            s.minimum,
                        ],
                    });
                    continue;
                }
                let Some(data) = from_wire(&r.data) else {
                    unknown.insert(r.record_type().to_string());
                    continue;
                };
                let rec = Record {
                    owner,
                    ttl: r.ttl,
                    data,
                };
                if !records.iter().any(|x| x.same_as(&rec)) {
                    records.push(rec);
                }
            }
        }
        if !unknown.is_empty() {
            return Err(DnsError::Unsupported(format!(
                "DeleteZone {zone}: the zone holds {} records, which this provider cannot keep \
                 in the copy its undo needs; nothing was deleted (delete the zone by hand)",
                unknown.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        let soa = soa.ok_or_else(|| DnsError::Server {
            transient: false,
            message: format!("{what}: DNS server {} sent no SOA", self.server()),
        })?;
        records.sort_by(Record::canonical_cmp);
        Ok(Zone {
            origin: zone.to_string(),
            default_ttl: soa.ttl,
            soa,
            records,
        })
    }

    /// Recovery of a CreateZone in doubt: applied iff its intent marker is there and the
    /// zone is served (the marker is written only after the zone was found absent).
    async fn recover_add_zone(
        &self,
        rndc: &Rndc,
        key: &str,
        zone: &str,
    ) -> Result<Recovered, DnsError> {
        let marker = Rndc::created_marker(key);
        if rndc.read_file(&marker).await?.is_none() {
            return Ok(Recovered::NotApplied);
        }
        if self.soa(zone).await?.is_some() {
            return Ok(Recovered::ZoneCreated);
        }
        rndc.remove_file(&marker).await?;
        Ok(Recovered::NotApplied)
    }

    /// Recovery of a DeleteZone in doubt: applied iff its copy was written and the zone
    /// is not served any more.
    async fn recover_zone_taken_out(
        &self,
        rndc: &Rndc,
        key: &str,
        zone: &str,
    ) -> Result<Recovered, DnsError> {
        let token = Rndc::deleted_copy(zone, key);
        if rndc
            .read_file(&Rndc::deleted_path(&token)?)
            .await?
            .is_none()
            || self.soa(zone).await?.is_some()
        {
            return Ok(Recovered::NotApplied);
        }
        Ok(Recovered::ZoneDeleted { token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_parses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k.key");
        std::fs::write(
            &p,
            "# made by tsig-keygen\nkey \"ddns-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=\";\n};\n",
        )
        .expect("write");
        let (name, secret) = read_tsig_key_file(&p).expect("parse");
        assert_eq!(name, "ddns-key");
        assert_eq!(secret, "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=");
    }

    #[test]
    fn key_file_rejects_bad_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k.key");
        for text in [
            "",
            "key \"k\" { algorithm hmac-md5; secret \"c2VjcmV0\"; };",
            "key \"k\" { algorithm hmac-sha256; secret \"not base64!\"; };",
            "key \"k\" { algorithm hmac-sha256; };",
            "key \"k\" { algorithm hmac-sha256; secret \"c2VjcmV0\";",
            "key \"k\" { algorithm hmac-sha256 secret \"c2VjcmV0\"; };",
            "key { };",
            "/* open",
            "key \"unterminated",
        ] {
            std::fs::write(&p, text).expect("write");
            assert!(
                matches!(read_tsig_key_file(&p), Err(DnsError::Invalid(_))),
                "{text:?}"
            );
        }
        assert!(read_tsig_key_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn debug_redacts_secret() {
        let c = Rfc2136Config::new(
            "127.0.0.1:53".parse().expect("addr"),
            "k",
            "c2VjcmV0c2VjcmV0",
        );
        let s = format!("{c:?}");
        assert!(!s.contains("c2VjcmV0"), "{s}");
        assert!(s.contains("redacted"));
        let b = Rfc2136Backend::new(c).expect("backend");
        assert!(!format!("{b:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn wire_round_trip() {
        for d in [
            RData::A("192.0.2.1".parse().expect("a")),
            RData::Aaaa("2001:db8::1".parse().expect("aaaa")),
            RData::Cname("x.example.test.".into()),
            RData::Ns("ns.example.test.".into()),
            RData::Mx {
                preference: 5,
                exchange: "mx.example.test.".into(),
            },
            RData::Txt(b"a \"quoted\" text ".repeat(40)),
            RData::Txt(Vec::new()),
            RData::Srv {
                priority: 1,
                weight: 2,
                port: 3,
                target: "t.example.test.".into(),
            },
            RData::Caa {
                flags: 128,
                tag: "issue".into(),
                value: "ca.example; account=1".into(),
            },
        ] {
            let w = to_wire(&d).expect("to wire");
            assert_eq!(from_wire(&w), Some(d));
        }
    }
}
