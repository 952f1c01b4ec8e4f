//! Distinguished names (RFC 4514): parsing, escaping, normalising and comparing DNs, and
//! the ADSI paths (`LDAP://server/DN`) HMC requests use.
//!
//! A [`Dn`] keeps the RDNs as written (leaf first) with their values unescaped; its
//! `Display` form escapes them again the canonical way, so `Dn::parse(&dn.to_string())`
//! gives back the same DN. Two DNs are equal when their normalised forms are: attribute
//! types and values compared case-insensitively, the AVAs of a multi-valued RDN in any
//! order, OIDs of the common naming attributes read as their names (`2.5.4.3` = `cn`).

use std::fmt;

/// Why a DN or path does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} in DN {text:?}")]
pub struct DnError {
    /// The text as given.
    pub text: String,
    /// What is wrong, with the position where useful.
    pub message: String,
}

fn err(text: &str, message: impl Into<String>) -> DnError {
    DnError {
        text: text.to_string(),
        message: message.into(),
    }
}

/// One `type=value` pair of an RDN, the value unescaped.
#[derive(Debug, Clone)]
pub struct Ava {
    /// The attribute type as written (`CN`, `ou`, `2.5.4.3`).
    pub attr: String,
    /// The value, unescaped (`Smith, John`).
    pub value: String,
}

impl Ava {
    /// A pair; the value is taken as is (it is escaped when the DN is written out).
    pub fn new(attr: impl Into<String>, value: impl Into<String>) -> Ava {
        Ava {
            attr: attr.into(),
            value: value.into(),
        }
    }

    /// The attribute type, lowercase, with the OIDs of common naming attributes replaced by
    /// their names.
    pub fn norm_attr(&self) -> String {
        normalize_attr(&self.attr)
    }

    fn normalized(&self) -> String {
        format!(
            "{}={}",
            self.norm_attr(),
            escape_for_key(&self.value.to_lowercase())
        )
    }
}

/// The lowercase attribute type, OIDs of common naming attributes as names.
pub fn normalize_attr(attr: &str) -> String {
    let lower = attr.trim().to_ascii_lowercase();
    let lower = lower.strip_prefix("oid.").unwrap_or(&lower).to_string();
    match lower.as_str() {
        "2.5.4.3" => "cn".into(),
        "2.5.4.11" => "ou".into(),
        "2.5.4.10" => "o".into(),
        "2.5.4.6" => "c".into(),
        "2.5.4.7" => "l".into(),
        "2.5.4.8" => "st".into(),
        "2.5.4.9" => "street".into(),
        "0.9.2342.19200300.100.1.25" => "dc".into(),
        "0.9.2342.19200300.100.1.1" => "uid".into(),
        _ => lower,
    }
}

/// A relative distinguished name: one or more AVAs joined by `+`.
#[derive(Debug, Clone)]
pub struct Rdn {
    /// The pairs, in the order written (never empty).
    pub avas: Vec<Ava>,
}

impl Rdn {
    /// A single-valued RDN such as `CN=John Smith` from its parts.
    pub fn new(attr: impl Into<String>, value: impl Into<String>) -> Rdn {
        Rdn {
            avas: vec![Ava::new(attr, value)],
        }
    }

    /// Parses one RDN (`CN=Smith\, John`, `CN=a+SN=b`).
    pub fn parse(text: &str) -> Result<Rdn, DnError> {
        let dn = Dn::parse(text)?;
        match dn.rdns.len() {
            1 => Ok(dn.rdns.into_iter().next().expect("one RDN")),
            0 => Err(err(text, "an RDN (e.g. CN=John Smith) is required")),
            n => Err(err(
                text,
                format!("expected one RDN, found {n} (escape a comma in a value as \\,)"),
            )),
        }
    }

    /// The first pair: the naming attribute and its value.
    pub fn first(&self) -> &Ava {
        &self.avas[0]
    }

    /// The normalised form: lowercase, AVAs sorted, canonical escaping.
    pub fn normalized(&self) -> String {
        let mut parts: Vec<String> = self.avas.iter().map(Ava::normalized).collect();
        parts.sort();
        parts.join("+")
    }
}

impl fmt::Display for Rdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.avas.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{}={}", a.attr, escape_value(&a.value))?;
        }
        Ok(())
    }
}

impl PartialEq for Rdn {
    fn eq(&self, other: &Rdn) -> bool {
        self.normalized() == other.normalized()
    }
}
impl Eq for Rdn {}

/// A distinguished name: RDNs leaf first, as written (`CN=x,OU=y,DC=z`). The empty DN is
/// the root.
#[derive(Debug, Clone, Default)]
pub struct Dn {
    /// The RDNs, leaf first.
    pub rdns: Vec<Rdn>,
}

impl Dn {
    /// The root (empty) DN.
    pub fn root() -> Dn {
        Dn::default()
    }

    /// Parses an RFC 4514 string. Spaces around `,`, `+` and `=` are ignored; escaped
    /// spaces are kept. Values may use `\` before a special character (`,+"\<>;#= ` and
    /// `/` as ADSI writes it) or two hex digits (UTF-8 bytes, `\00` for NUL). Hex-encoded
    /// BER values (`#04…`) are refused, as are unescaped `"`, `;`, `<`, `>`, NUL and empty
    /// values.
    pub fn parse(text: &str) -> Result<Dn, DnError> {
        let mut rdns = Vec::new();
        if text.trim().is_empty() {
            return Ok(Dn { rdns });
        }
        let bytes = text.as_bytes();
        let mut i = 0;
        let mut avas: Vec<Ava> = Vec::new();
        loop {
            // attribute type
            while i < bytes.len() && bytes[i] == b' ' {
                i += 1;
            }
            let start = i;
            while i < bytes.len() && bytes[i] != b'=' {
                i += 1;
            }
            if i >= bytes.len() {
                return Err(err(
                    text,
                    format!(
                        "`{}` has no `=` (an RDN is type=value, e.g. CN=John Smith)",
                        text[start..].trim()
                    ),
                ));
            }
            let attr = text[start..i].trim();
            check_attr_type(text, attr)?;
            i += 1; // '='
            while i < bytes.len() && bytes[i] == b' ' {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'#' {
                return Err(err(
                    text,
                    format!(
                        "the value of {attr} starts with #: hex-encoded values are not \
                         supported (write a leading # as \\#)"
                    ),
                ));
            }
            // value
            let mut value: Vec<u8> = Vec::new();
            let mut significant = 0; // length of value up to the last escaped or non-space byte
            let mut end_char = None;
            while i < bytes.len() {
                let b = bytes[i];
                match b {
                    b',' | b'+' => {
                        end_char = Some(b);
                        i += 1;
                        break;
                    }
                    b'\\' => {
                        let Some(&n) = bytes.get(i + 1) else {
                            return Err(err(text, "it ends with a lone backslash"));
                        };
                        if is_hex(n) && bytes.get(i + 2).is_some_and(|b| is_hex(*b)) {
                            value.push(hex_val(n) * 16 + hex_val(bytes[i + 2]));
                            i += 3;
                        } else if b",+\"\\<>;#= /".contains(&n) {
                            value.push(n);
                            i += 2;
                        } else {
                            return Err(err(
                                text,
                                format!(
                                    "`\\{}` at byte {i} is not an escape (use \\ before one of \
                                     ,+\"\\<>;#= or two hex digits)",
                                    char::from(n)
                                ),
                            ));
                        }
                        significant = value.len();
                    }
                    b'"' | b';' | b'<' | b'>' | 0 => {
                        return Err(err(
                            text,
                            format!(
                                "the value of {attr} holds an unescaped {:?} at byte {i} (escape it with \\)",
                                char::from(b)
                            ),
                        ));
                    }
                    b' ' => {
                        value.push(b);
                        i += 1;
                    }
                    _ => {
                        value.push(b);
                        i += 1;
                        significant = value.len();
                    }
                }
            }
            value.truncate(significant);
            let value = String::from_utf8(value).map_err(|_| {
                err(
                    text,
                    format!("the value of {attr} is not UTF-8 after unescaping"),
                )
            })?;
            if value.is_empty() {
                return Err(err(text, format!("the value of {attr} is empty")));
            }
            avas.push(Ava::new(attr, value));
            match end_char {
                Some(b'+') => continue,
                Some(_) => {
                    rdns.push(Rdn {
                        avas: std::mem::take(&mut avas),
                    });
                    if i >= bytes.len() || text[i..].trim().is_empty() {
                        return Err(err(text, "it ends with a comma"));
                    }
                }
                None => {
                    rdns.push(Rdn {
                        avas: std::mem::take(&mut avas),
                    });
                    break;
                }
            }
        }
        Ok(Dn { rdns })
    }

    /// Whether this is the root (no RDN).
    pub fn is_root(&self) -> bool {
        self.rdns.is_empty()
    }

    /// The leaf RDN (`None` for the root).
    pub fn rdn(&self) -> Option<&Rdn> {
        self.rdns.first()
    }

    /// The parent DN (`None` for the root).
    pub fn parent(&self) -> Option<Dn> {
        (!self.rdns.is_empty()).then(|| Dn {
            rdns: self.rdns[1..].to_vec(),
        })
    }

    /// The DN of a child of this one.
    pub fn child(&self, rdn: Rdn) -> Dn {
        let mut rdns = Vec::with_capacity(self.rdns.len() + 1);
        rdns.push(rdn);
        rdns.extend(self.rdns.iter().cloned());
        Dn { rdns }
    }

    /// Whether this DN is `base` or below it.
    pub fn is_under(&self, base: &Dn) -> bool {
        let n = base.rdns.len();
        if self.rdns.len() < n {
            return false;
        }
        let skip = self.rdns.len() - n;
        self.rdns[skip..]
            .iter()
            .zip(&base.rdns)
            .all(|(a, b)| a.normalized() == b.normalized())
    }

    /// This DN with the suffix `old_base` replaced by `new_base` (a move of a subtree); `None`
    /// when it is not under `old_base`.
    pub fn rebase(&self, old_base: &Dn, new_base: &Dn) -> Option<Dn> {
        if !self.is_under(old_base) {
            return None;
        }
        let keep = self.rdns.len() - old_base.rdns.len();
        let mut rdns: Vec<Rdn> = self.rdns[..keep].to_vec();
        rdns.extend(new_base.rdns.iter().cloned());
        Some(Dn { rdns })
    }

    /// The normalised text: lowercase, canonical escaping, AVAs of each RDN sorted. Equal
    /// DNs have equal normalised texts.
    pub fn normalized(&self) -> String {
        self.rdns
            .iter()
            .map(Rdn::normalized)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A store key in which a subtree is one prefix: the normalised RDNs root first, each
    /// followed by NUL (normalised RDNs never hold a raw NUL: it is escaped as `\00`). The
    /// key of a descendant starts with the key of every ancestor.
    pub fn key(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for r in self.rdns.iter().rev() {
            out.extend_from_slice(r.normalized().as_bytes());
            out.push(0);
        }
        out
    }
}

impl fmt::Display for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.rdns.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl PartialEq for Dn {
    fn eq(&self, other: &Dn) -> bool {
        self.rdns.len() == other.rdns.len() && self.normalized() == other.normalized()
    }
}
impl Eq for Dn {}

impl std::str::FromStr for Dn {
    type Err = DnError;
    fn from_str(s: &str) -> Result<Dn, DnError> {
        Dn::parse(s)
    }
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

fn check_attr_type(text: &str, attr: &str) -> Result<(), DnError> {
    let a = attr
        .strip_prefix("OID.")
        .or_else(|| attr.strip_prefix("oid."))
        .unwrap_or(attr);
    let keystring = a.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let oid = !a.is_empty()
        && a.split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    if keystring || oid {
        Ok(())
    } else if a.is_empty() {
        Err(err(text, "an RDN has no attribute type before `=`"))
    } else {
        Err(err(
            text,
            format!("`{attr}` is not an attribute type (letters, digits and - , or an OID)"),
        ))
    }
}

/// Escapes an attribute value for a DN (RFC 4514 §2.4): `"+,;<>\` get a backslash, so do
/// a leading space or `#` and a trailing space; NUL and other control characters become
/// `\XX`. Non-ASCII characters are kept as they are. `=` gets a backslash too: RFC 4514
/// allows that escape (`\=` is a `pair`) and Active Directory requires it (Samba refuses
/// a DN holding `CN=a=b` with invalidDNSyntax).
pub fn escape_value(value: &str) -> String {
    escape(value, true)
}

/// [`escape_value`] without escaping `=`: the form of [`Dn::normalized`] and so of the
/// store keys ([`Dn::key`]) every embedded directory was written with, kept so that
/// entries whose names hold `=` are still found.
fn escape_for_key(value: &str) -> String {
    escape(value, false)
}

fn escape(value: &str, equals: bool) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    let n = value.chars().count();
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '=' if equals => out.push_str("\\="),
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i + 1 == n => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Trims surrounding whitespace from a DN or RDN given as input, keeping a trailing space
/// that is escaped (`CN=x\ ` keeps its space).
pub fn trim_input(text: &str) -> &str {
    let t = text.trim_start();
    let end = t.trim_end();
    let backslashes = end.bytes().rev().take_while(|b| *b == b'\\').count();
    if backslashes % 2 == 1 && end.len() < t.len() {
        // the first whitespace character after the odd backslash is escaped
        let next = t[end.len()..].chars().next().map_or(0, char::len_utf8);
        &t[..end.len() + next]
    } else {
        end
    }
}

/// An ADSI path: an optional server and a DN (`LDAP://dc1.example.com/CN=x,DC=example,DC=com`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdsPath {
    /// The server named in the path, if any.
    pub server: Option<String>,
    /// The object.
    pub dn: Dn,
}

/// Reads a path as HMC passes it: `LDAP://DN`, `LDAP://server/DN`, or a bare DN. In the
/// path form a `/` inside a value is written `\/`.
pub fn parse_path(text: &str) -> Result<AdsPath, DnError> {
    let t = trim_input(text);
    let rest = if t
        .get(..7)
        .is_some_and(|h| h.eq_ignore_ascii_case("ldap://"))
    {
        &t[7..]
    } else {
        return Ok(AdsPath {
            server: None,
            dn: Dn::parse(t)?,
        });
    };
    // A server part is whatever comes before the first `/` if it holds no `=`.
    if let Some(slash) = rest.find('/') {
        let head = &rest[..slash];
        if !head.contains('=') {
            if head.is_empty() {
                return Err(err(text, "the path names an empty server (`LDAP:///…`)"));
            }
            return Ok(AdsPath {
                server: Some(head.to_string()),
                dn: Dn::parse(&rest[slash + 1..])?,
            });
        }
    }
    if !rest.contains('=') && !rest.is_empty() {
        // `LDAP://server` alone: the root of that server.
        return Ok(AdsPath {
            server: Some(rest.to_string()),
            dn: Dn::root(),
        });
    }
    Ok(AdsPath {
        server: None,
        dn: Dn::parse(rest)?,
    })
}

/// The ADSI path of a DN: `LDAP://DN` or `LDAP://server/DN`, with `/` escaped as `\/`.
pub fn to_path(dn: &Dn, server: Option<&str>) -> String {
    let d = dn.to_string().replace('/', "\\/");
    match server {
        Some(s) => format!("LDAP://{s}/{d}"),
        None => format!("LDAP://{d}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(s: &str) -> String {
        Dn::parse(s).unwrap().to_string()
    }

    #[test]
    fn parses_and_unescapes_specials() {
        let dn = Dn::parse(r"CN=Smith\, John,OU=Sales,DC=example,DC=com").unwrap();
        assert_eq!(dn.rdns.len(), 4);
        assert_eq!(dn.rdns[0].first().value, "Smith, John");
        let dn = Dn::parse(r#"CN=a\+b\"c\\d\;e\<f\>g,DC=x"#).unwrap();
        assert_eq!(dn.rdns[0].first().value, "a+b\"c\\d;e<f>g");
        let dn = Dn::parse(r"CN=\#hash\ ,DC=x").unwrap();
        assert_eq!(dn.rdns[0].first().value, "#hash ");
        let dn = Dn::parse(r"CN=\ lead,DC=x").unwrap();
        assert_eq!(dn.rdns[0].first().value, " lead");
        let dn = Dn::parse(r"CN=nul\00byte,DC=x").unwrap();
        assert_eq!(dn.rdns[0].first().value, "nul\0byte");
        let dn = Dn::parse(r"CN=J\C3\BCrgen,DC=x").unwrap();
        assert_eq!(dn.rdns[0].first().value, "Jürgen");
        let dn = Dn::parse("CN=Jürgen Ölfen,DC=x").unwrap();
        assert_eq!(dn.rdns[0].first().value, "Jürgen Ölfen");
        let dn = Dn::parse("CN=*)(cn=*,DC=x").unwrap();
        assert_eq!(dn.rdns[0].first().value, "*)(cn=*");
    }

    #[test]
    fn spaces_around_separators_are_ignored_escaped_ones_kept() {
        let dn = Dn::parse(" CN = John Smith , OU=Sales ,DC=x").unwrap();
        assert_eq!(dn.to_string(), "CN=John Smith,OU=Sales,DC=x");
        let dn = Dn::parse(r"CN=John\ ,DC=x").unwrap();
        assert_eq!(dn.rdns[0].first().value, "John ");
    }

    #[test]
    fn writes_canonical_escapes() {
        assert_eq!(escape_value("Smith, John"), r"Smith\, John");
        assert_eq!(escape_value("#1"), r"\#1");
        assert_eq!(escape_value("a#1"), "a#1");
        assert_eq!(escape_value(" x "), r"\ x\ ");
        assert_eq!(escape_value("a+b"), r"a\+b");
        assert_eq!(escape_value("q\"\\"), r#"q\"\\"#);
        assert_eq!(escape_value("nul\0"), r"nul\00");
        assert_eq!(escape_value("line\nbreak"), r"line\0Abreak");
        assert_eq!(escape_value("Jürgen"), "Jürgen");
        assert_eq!(escape_value("a=b"), r"a\=b");
        // the normalised form (store keys) keeps `=` as it was always written
        let dn = Dn::parse(r"CN=a\=b,DC=x").unwrap();
        assert_eq!(dn.to_string(), r"CN=a\=b,DC=x");
        assert_eq!(dn.normalized(), "cn=a=b,dc=x");
        assert_eq!(dn, Dn::parse("CN=a=b,DC=x").unwrap());
        assert_eq!(rt(r"CN=\4a\6fhn,DC=x"), "CN=John,DC=x");
    }

    #[test]
    fn multi_valued_rdns_compare_in_any_order() {
        let a = Dn::parse("CN=a+SN=b,DC=x").unwrap();
        let b = Dn::parse("sn=B+cn=A,dc=X").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rdns[0].avas.len(), 2);
        assert_eq!(a.to_string(), "CN=a+SN=b,DC=x");
    }

    #[test]
    fn equality_ignores_case_and_oids() {
        let a = Dn::parse("CN=John,OU=Sales,DC=Example,DC=COM").unwrap();
        let b = Dn::parse("cn=john,ou=sales,dc=example,dc=com").unwrap();
        let c = Dn::parse("2.5.4.3=JOHN,2.5.4.11=Sales,0.9.2342.19200300.100.1.25=example,DC=com")
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.key(), c.key());
    }

    #[test]
    fn refuses_bad_dns_clearly() {
        for (text, what) in [
            ("CN", "has no `=`"),
            ("=x", "no attribute type"),
            ("C N=x", "not an attribute type"),
            ("CN=", "is empty"),
            ("CN=x,", "ends with a comma"),
            ("CN=a\"b", "unescaped"),
            ("CN=a;b", "unescaped"),
            ("CN=a\0b", "unescaped"),
            ("CN=#04024869", "hex-encoded"),
            ("CN=a\\", "lone backslash"),
            ("CN=a\\q", "not an escape"),
            ("CN=\\ff\\fe", "not UTF-8"),
        ] {
            let e = Dn::parse(text).unwrap_err();
            assert!(e.to_string().contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn hierarchy() {
        let base = Dn::parse("DC=provisio,DC=local").unwrap();
        let u = Dn::parse("CN=u,OU=a,DC=provisio,DC=local").unwrap();
        assert!(u.is_under(&base));
        assert!(base.is_under(&base));
        assert!(!base.is_under(&u));
        assert!(!Dn::parse("DC=other,DC=local").unwrap().is_under(&base));
        assert_eq!(u.parent().unwrap().to_string(), "OU=a,DC=provisio,DC=local");
        assert!(u.key().starts_with(&base.key()));
        let moved = u
            .rebase(
                &Dn::parse("OU=a,DC=provisio,DC=local").unwrap(),
                &Dn::parse("OU=b,DC=provisio,DC=local").unwrap(),
            )
            .unwrap();
        assert_eq!(moved.to_string(), "CN=u,OU=b,DC=provisio,DC=local");
        // A sibling whose name extends another's is not under it.
        let ab = Dn::parse("OU=ab,DC=provisio,DC=local").unwrap();
        let a = Dn::parse("OU=a,DC=provisio,DC=local").unwrap();
        assert!(!ab.key().starts_with(&a.key()));
    }

    #[test]
    fn trims_input_but_not_escaped_spaces() {
        assert_eq!(trim_input("  CN=x  "), "CN=x");
        assert_eq!(trim_input("CN=x\\  "), "CN=x\\ ");
        assert_eq!(trim_input("CN=x\\\\ "), "CN=x\\\\");
        assert_eq!(
            Dn::parse(trim_input("CN=trailing\\ \n")).unwrap().rdns[0]
                .first()
                .value,
            "trailing "
        );
    }

    #[test]
    fn paths() {
        let p = parse_path("LDAP://CN=John Smith,OU=Org,DC=fabrikam,DC=com").unwrap();
        assert_eq!(p.server, None);
        assert_eq!(p.dn.rdns.len(), 4);
        let p = parse_path("LDAP://dc1.fabrikam.com/CN=a\\/b,DC=fabrikam,DC=com").unwrap();
        assert_eq!(p.server.as_deref(), Some("dc1.fabrikam.com"));
        assert_eq!(p.dn.rdns[0].first().value, "a/b");
        assert_eq!(
            to_path(&p.dn, p.server.as_deref()),
            "LDAP://dc1.fabrikam.com/CN=a\\/b,DC=fabrikam,DC=com"
        );
        let p = parse_path("CN=x,DC=y").unwrap();
        assert_eq!(p.dn.to_string(), "CN=x,DC=y");
        assert!(parse_path("LDAP:///CN=x").is_err());
    }
}
