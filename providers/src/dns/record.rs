//! Resource records: the typed data the DNS procedures accept, their RFC 1035
//! presentation form, and a tokenizer/parser for the lines this crate writes.
//!
//! TXT text is stored as bytes and written as one or more quoted character-strings of at
//! most 255 bytes each, with `"` and `\` escaped and bytes outside printable ASCII as
//! `\DDD`, so reading the file back yields exactly the original text.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Record data, by type. Names in data are absolute (trailing dot), lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    /// IPv4 address.
    A(Ipv4Addr),
    /// IPv6 address.
    Aaaa(Ipv6Addr),
    /// Canonical name.
    Cname(String),
    /// Name server.
    Ns(String),
    /// Mail exchange.
    Mx {
        /// Lower is preferred.
        preference: u16,
        /// Mail host.
        exchange: String,
    },
    /// Text, verbatim (any bytes; split into 255-byte strings on disk).
    Txt(Vec<u8>),
    /// Service location.
    Srv {
        /// Priority.
        priority: u16,
        /// Weight.
        weight: u16,
        /// Port.
        port: u16,
        /// Target host.
        target: String,
    },
    /// Certification authority authorization.
    Caa {
        /// Flags (128 = critical).
        flags: u8,
        /// `issue`, `issuewild`, `iodef`, …
        tag: String,
        /// The value, verbatim.
        value: String,
    },
}

impl RData {
    /// The type mnemonic.
    pub fn rtype(&self) -> &'static str {
        match self {
            RData::A(_) => "A",
            RData::Aaaa(_) => "AAAA",
            RData::Cname(_) => "CNAME",
            RData::Ns(_) => "NS",
            RData::Mx { .. } => "MX",
            RData::Txt(_) => "TXT",
            RData::Srv { .. } => "SRV",
            RData::Caa { .. } => "CAA",
        }
    }

    fn type_rank(&self) -> u8 {
        match self {
            RData::Ns(_) => 0,
            RData::A(_) => 1,
            RData::Aaaa(_) => 2,
            RData::Cname(_) => 3,
            RData::Mx { .. } => 4,
            RData::Txt(_) => 5,
            RData::Srv { .. } => 6,
            RData::Caa { .. } => 7,
        }
    }

    /// The presentation form of the data.
    pub fn to_text(&self) -> String {
        match self {
            RData::A(a) => a.to_string(),
            RData::Aaaa(a) => a.to_string(),
            RData::Cname(n) | RData::Ns(n) => n.clone(),
            RData::Mx {
                preference,
                exchange,
            } => format!("{preference} {exchange}"),
            RData::Txt(bytes) => txt_strings(bytes),
            RData::Srv {
                priority,
                weight,
                port,
                target,
            } => format!("{priority} {weight} {port} {target}"),
            RData::Caa { flags, tag, value } => {
                format!("{flags} {tag} {}", quote(value.as_bytes()))
            }
        }
    }
}

/// One record: owner relative to the zone (`@` for the apex), TTL, data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Relative owner name, lowercase, or `@`.
    pub owner: String,
    /// Time to live in seconds.
    pub ttl: u32,
    /// The data.
    pub data: RData,
}

impl Record {
    /// The zone-file line (no newline).
    pub fn line(&self) -> String {
        format!(
            "{}\t{}\tIN\t{}\t{}",
            self.owner,
            self.ttl,
            self.data.rtype(),
            self.data.to_text()
        )
    }

    /// Same owner and data (the TTL does not make a record distinct).
    pub fn same_as(&self, other: &Record) -> bool {
        self.owner == other.owner && self.data == other.data
    }

    /// The absolute owner name (with trailing dot) in `zone`.
    pub fn fqdn(&self, zone: &str) -> String {
        fqdn(zone, &self.owner)
    }

    /// Canonical file order: apex first, then owners by reversed labels, then type, data.
    pub fn canonical_cmp(&self, other: &Record) -> Ordering {
        fn key(owner: &str) -> Vec<&str> {
            if owner == "@" {
                Vec::new()
            } else {
                owner.rsplit('.').collect()
            }
        }
        key(&self.owner)
            .cmp(&key(&other.owner))
            .then(self.data.type_rank().cmp(&other.data.type_rank()))
            .then_with(|| self.data.to_text().cmp(&other.data.to_text()))
            .then(self.ttl.cmp(&other.ttl))
    }
}

/// The absolute name (with trailing dot) of the relative `owner` (`@`: the apex) in `zone`.
pub fn fqdn(zone: &str, owner: &str) -> String {
    if owner == "@" {
        format!("{zone}.")
    } else {
        format!("{owner}.{zone}.")
    }
}

/// `www.example.com. A 192.0.2.1`: one record for messages (TTL left out).
pub fn describe_record(zone: &str, owner: &str, data: &RData) -> String {
    format!("{} {} {}", fqdn(zone, owner), data.rtype(), data.to_text())
}

/// True when `a` and `b` hold the same data with the same TTLs (order ignored): the test
/// an RRset must pass to count as "the set we wrote" or "the set that was there".
pub fn same_rrset(a: &[Record], b: &[Record]) -> bool {
    let covers = |x: &[Record], y: &[Record]| {
        x.iter()
            .all(|r| y.iter().any(|s| s.data == r.data && s.ttl == r.ttl))
    };
    a.len() == b.len() && covers(a, b) && covers(b, a)
}

/// An RRset for messages: `192.0.2.1, 192.0.2.2 (TTL 300)`, `no records`; TTLs are listed
/// per record when they differ.
pub fn describe_rrset(set: &[Record]) -> String {
    let Some(first) = set.first() else {
        return "no records".into();
    };
    let mut sorted = set.to_vec();
    sorted.sort_by(Record::canonical_cmp);
    if sorted.iter().all(|r| r.ttl == first.ttl) {
        let data: Vec<String> = sorted.iter().map(|r| r.data.to_text()).collect();
        format!("{} (TTL {})", data.join(", "), first.ttl)
    } else {
        let data: Vec<String> = sorted
            .iter()
            .map(|r| format!("{} (TTL {})", r.data.to_text(), r.ttl))
            .collect();
        data.join(", ")
    }
}

/// Escapes bytes for the inside of a quoted character-string.
fn escape_into(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
}

fn quote(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 2);
    s.push('"');
    escape_into(&mut s, bytes);
    s.push('"');
    s
}

/// TXT data as quoted character-strings of at most 255 bytes each.
fn txt_strings(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "\"\"".to_string();
    }
    bytes.chunks(255).map(quote).collect::<Vec<_>>().join(" ")
}

/// A token of a zone-file line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// Unquoted text.
    Bare(String),
    /// A quoted character-string, unescaped.
    Quoted(Vec<u8>),
}

impl Token {
    fn bare(&self) -> Option<&str> {
        match self {
            Token::Bare(s) => Some(s),
            Token::Quoted(_) => None,
        }
    }
}

/// Splits one line into tokens; `;` outside quotes starts a comment. Parentheses and
/// escapes outside quotes are not part of the subset this crate writes.
pub(crate) fn tokenize(line: &str) -> Result<Vec<Token>, String> {
    let bytes = line.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b' ' | b'\t' | b'\r' => i += 1,
            b';' => break,
            b'(' | b')' => return Err("multi-line records (parentheses) are not supported".into()),
            b'"' => {
                i += 1;
                let mut buf = Vec::new();
                let mut closed = false;
                while i < bytes.len() {
                    match bytes[i] {
                        b'"' => {
                            closed = true;
                            i += 1;
                            break;
                        }
                        b'\\' => {
                            let rest = &bytes[i + 1..];
                            if rest.len() >= 3 && rest[..3].iter().all(u8::is_ascii_digit) {
                                let v = u32::from(rest[0] - b'0') * 100
                                    + u32::from(rest[1] - b'0') * 10
                                    + u32::from(rest[2] - b'0');
                                let v = u8::try_from(v)
                                    .map_err(|_| format!("escape \\{v} is larger than 255"))?;
                                buf.push(v);
                                i += 4;
                            } else if let Some(&c) = rest.first() {
                                buf.push(c);
                                i += 2;
                            } else {
                                return Err("a backslash ends the line".into());
                            }
                        }
                        c => {
                            buf.push(c);
                            i += 1;
                        }
                    }
                }
                if !closed {
                    return Err("unterminated quoted string".into());
                }
                tokens.push(Token::Quoted(buf));
            }
            _ => {
                let start = i;
                while i < bytes.len()
                    && !matches!(bytes[i], b' ' | b'\t' | b'\r' | b';' | b'"' | b'(' | b')')
                {
                    if bytes[i] == b'\\' {
                        return Err("escapes outside quotes are not supported".into());
                    }
                    i += 1;
                }
                tokens.push(Token::Bare(line[start..i].to_string()));
            }
        }
    }
    Ok(tokens)
}

fn absolute(name: &str, origin: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower == "@" {
        format!("{origin}.")
    } else if lower.ends_with('.') {
        lower
    } else {
        format!("{lower}.{origin}.")
    }
}

/// Parses the data tokens of a record of type `rtype`.
pub(crate) fn parse_rdata(rtype: &str, tokens: &[Token], origin: &str) -> Result<RData, String> {
    let bare = |i: usize| -> Result<&str, String> {
        tokens
            .get(i)
            .and_then(Token::bare)
            .ok_or_else(|| format!("{rtype} record is missing field {}", i + 1))
    };
    let num16 = |i: usize| -> Result<u16, String> {
        bare(i)?
            .parse()
            .map_err(|_| format!("{rtype} record field {} is not a number 0-65535", i + 1))
    };
    let count = |n: usize| -> Result<(), String> {
        if tokens.len() == n {
            Ok(())
        } else {
            Err(format!(
                "{rtype} record has {} data fields, expected {n}",
                tokens.len()
            ))
        }
    };
    match rtype {
        "A" => {
            count(1)?;
            bare(0)?
                .parse()
                .map(RData::A)
                .map_err(|_| "bad IPv4 address".into())
        }
        "AAAA" => {
            count(1)?;
            bare(0)?
                .parse()
                .map(RData::Aaaa)
                .map_err(|_| "bad IPv6 address".into())
        }
        "CNAME" => {
            count(1)?;
            Ok(RData::Cname(absolute(bare(0)?, origin)))
        }
        "NS" => {
            count(1)?;
            Ok(RData::Ns(absolute(bare(0)?, origin)))
        }
        "MX" => {
            count(2)?;
            Ok(RData::Mx {
                preference: num16(0)?,
                exchange: absolute(bare(1)?, origin),
            })
        }
        "SRV" => {
            count(4)?;
            Ok(RData::Srv {
                priority: num16(0)?,
                weight: num16(1)?,
                port: num16(2)?,
                target: absolute(bare(3)?, origin),
            })
        }
        "TXT" => {
            if tokens.is_empty() {
                return Err("TXT record has no text".into());
            }
            let mut text = Vec::new();
            for t in tokens {
                match t {
                    Token::Quoted(b) => text.extend_from_slice(b),
                    Token::Bare(s) => text.extend_from_slice(s.as_bytes()),
                }
            }
            Ok(RData::Txt(text))
        }
        "CAA" => {
            count(3)?;
            let flags: u8 = bare(0)?
                .parse()
                .map_err(|_| "CAA flags must be a number 0-255".to_string())?;
            let tag = bare(1)?.to_ascii_lowercase();
            let value = match &tokens[2] {
                Token::Quoted(b) => b.clone(),
                Token::Bare(s) => s.as_bytes().to_vec(),
            };
            let value =
                String::from_utf8(value).map_err(|_| "CAA value is not UTF-8".to_string())?;
            Ok(RData::Caa { flags, tag, value })
        }
        other => Err(format!("record type {other} is not supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_round_trip() {
        for text in [
            "v=spf1 mx -all".to_string(),
            "say \"hi\" \\ back".to_string(),
            "x".repeat(600),
            String::new(),
            "tab\there\nnewline ünï".to_string(),
        ] {
            let data = RData::Txt(text.clone().into_bytes());
            let toks = tokenize(&data.to_text()).expect("tokenize");
            assert!(toks
                .iter()
                .all(|t| matches!(t, Token::Quoted(b) if b.len() <= 255)));
            assert_eq!(parse_rdata("TXT", &toks, "example.com"), Ok(data));
        }
    }

    #[test]
    fn rrset_equality_ignores_order_but_not_ttl() {
        let r = |ip: &str, ttl: u32| Record {
            owner: "www".into(),
            ttl,
            data: RData::A(ip.parse().expect("ip")),
        };
        let a = [r("192.0.2.1", 60), r("192.0.2.2", 60)];
        assert!(same_rrset(&a, &[r("192.0.2.2", 60), r("192.0.2.1", 60)]));
        assert!(!same_rrset(&a, &[r("192.0.2.1", 60), r("192.0.2.2", 61)]));
        assert!(!same_rrset(&a, &[r("192.0.2.1", 60)]));
        assert!(!same_rrset(&a, &[r("192.0.2.1", 60), r("192.0.2.1", 60)]));
        assert!(same_rrset(&[], &[]));
        assert_eq!(describe_rrset(&a), "192.0.2.1, 192.0.2.2 (TTL 60)");
        assert_eq!(
            describe_rrset(&[r("192.0.2.1", 1), r("192.0.2.2", 2)]),
            "192.0.2.1 (TTL 1), 192.0.2.2 (TTL 2)"
        );
        assert_eq!(describe_rrset(&[]), "no records");
        assert_eq!(
            describe_record("example.com", "@", &r("192.0.2.1", 1).data),
            "example.com. A 192.0.2.1"
        );
    }

    #[test]
    fn tokenizer_rejects_garbage() {
        assert!(tokenize("\"open").is_err());
        assert!(tokenize("a ( b").is_err());
        assert!(tokenize("\"\\999\"").is_err());
        assert!(tokenize("\"\\").is_err());
    }
}
