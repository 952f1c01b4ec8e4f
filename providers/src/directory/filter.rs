//! LDAP search filters (RFC 4515): parsing, writing, escaping assertion values, and the
//! evaluator the embedded backend searches with.
//!
//! [`escape_value`] is what a workflow puts around a user's text before it goes into a
//! filter: `*`, `(`, `)`, `\` and NUL become `\2a`, `\28`, `\29`, `\5c`, `\00`, so a name
//! such as `*)(cn=*` matches only itself. [`Filter::parse`] accepts the RFC 4515 string
//! form (and a bare `attr=value` item without parentheses); [`Filter`]'s `Display` writes
//! it back escaped, which is what an LDAP backend sends.

use super::backend::Entry;
use super::dn::{normalize_attr, Dn};
use std::fmt;

/// Deepest nesting of `&`, `|` and `!` accepted.
pub const MAX_DEPTH: usize = 64;

/// The AD matching rule "bitwise AND" (`attr:1.2.840.113556.1.4.803:=2`).
pub const RULE_BIT_AND: &str = "1.2.840.113556.1.4.803";
/// The AD matching rule "bitwise OR".
pub const RULE_BIT_OR: &str = "1.2.840.113556.1.4.804";

/// Why a filter does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {text:?}: {message} (at byte {at})")]
pub struct FilterError {
    /// The filter as given.
    pub text: String,
    /// Where it went wrong.
    pub at: usize,
    /// What is wrong.
    pub message: String,
}

/// A parsed filter. Assertion values are raw bytes (unescaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `(&…)`: all match (an empty `(&)` is true).
    And(Vec<Filter>),
    /// `(|…)`: any matches (an empty `(|)` is false).
    Or(Vec<Filter>),
    /// `(!…)`.
    Not(Box<Filter>),
    /// `(attr=value)`.
    Equal(String, Vec<u8>),
    /// `(attr=ini*any*fin)`.
    Substrings {
        /// The attribute.
        attr: String,
        /// Before the first `*`.
        initial: Option<Vec<u8>>,
        /// Between `*`s.
        any: Vec<Vec<u8>>,
        /// After the last `*`.
        last: Option<Vec<u8>>,
    },
    /// `(attr>=value)`.
    GreaterOrEqual(String, Vec<u8>),
    /// `(attr<=value)`.
    LessOrEqual(String, Vec<u8>),
    /// `(attr=*)`.
    Present(String),
    /// `(attr~=value)`.
    Approx(String, Vec<u8>),
    /// `(attr:dn:rule:=value)`.
    Extensible {
        /// The attribute, if named.
        attr: Option<String>,
        /// The matching rule OID, if named.
        rule: Option<String>,
        /// `:dn`: also match the entry's DN attributes.
        dn_attrs: bool,
        /// The value.
        value: Vec<u8>,
    },
}

/// Escapes text for use as an assertion value (RFC 4515 §3): `*`, `(`, `)`, `\` and NUL
/// become `\2a`, `\28`, `\29`, `\5c` and `\00`; everything else, non-ASCII included, is
/// kept.
pub fn escape_value(value: &str) -> String {
    escape_bytes(value.as_bytes())
}

/// [`escape_value`] for raw bytes: bytes that are not part of valid UTF-8 text, and
/// control characters, are written `\XX` too.
pub fn escape_bytes(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    let text = String::from_utf8_lossy(value);
    let valid = matches!(text, std::borrow::Cow::Borrowed(_));
    if !valid {
        for b in value {
            if b.is_ascii_alphanumeric() {
                out.push(char::from(*b));
            } else {
                out.push_str(&format!("\\{b:02x}"));
            }
        }
        return out;
    }
    for c in text.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

struct Parser<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn fail<T>(&self, message: impl Into<String>) -> Result<T, FilterError> {
        Err(FilterError {
            text: self.text.to_string(),
            at: self.i,
            message: message.into(),
        })
    }

    fn skip_spaces(&mut self) {
        while self.i < self.b.len() && self.b[self.i] == b' ' {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), FilterError> {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            let found = match self.b.get(self.i) {
                Some(f) => format!("{:?}", char::from(*f)),
                None => "the end".to_string(),
            };
            self.fail(format!("expected {:?}, found {found}", char::from(c)))
        }
    }

    fn filter(&mut self, depth: usize) -> Result<Filter, FilterError> {
        if depth > MAX_DEPTH {
            return self.fail(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        self.skip_spaces();
        self.expect(b'(')?;
        self.skip_spaces();
        let f = match self.b.get(self.i) {
            Some(b'&') => {
                self.i += 1;
                Filter::And(self.list(depth)?)
            }
            Some(b'|') => {
                self.i += 1;
                Filter::Or(self.list(depth)?)
            }
            Some(b'!') => {
                self.i += 1;
                Filter::Not(Box::new(self.filter(depth + 1)?))
            }
            _ => self.item()?,
        };
        self.skip_spaces();
        self.expect(b')')?;
        Ok(f)
    }

    fn list(&mut self, depth: usize) -> Result<Vec<Filter>, FilterError> {
        let mut out = Vec::new();
        loop {
            self.skip_spaces();
            if self.b.get(self.i) != Some(&b'(') {
                return Ok(out);
            }
            out.push(self.filter(depth + 1)?);
        }
    }

    fn attr_desc(&mut self) -> Result<String, FilterError> {
        let start = self.i;
        while self.i < self.b.len()
            && (self.b[self.i].is_ascii_alphanumeric() || b"-.;".contains(&self.b[self.i]))
        {
            self.i += 1;
        }
        let a = &self.text[start..self.i];
        let base = a.split(';').next().unwrap_or("");
        let keystring = base.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && base.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let oid = !base.is_empty()
            && base
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if a.is_empty() {
            return self.fail("an attribute name is missing");
        }
        if !keystring && !oid {
            return self.fail(format!("`{a}` is not an attribute name"));
        }
        Ok(a.to_string())
    }

    /// An assertion value up to `)`; `*` positions are returned separately.
    fn value_parts(&mut self) -> Result<Vec<Vec<u8>>, FilterError> {
        let mut parts = vec![Vec::new()];
        loop {
            match self.b.get(self.i) {
                None => return self.fail("the filter ends inside a value (missing `)`)"),
                Some(b')') => return Ok(parts),
                Some(b'(') => return self.fail("an unescaped `(` in a value (write it as \\28)"),
                Some(0) => return self.fail("a NUL in a value (write it as \\00)"),
                Some(b'*') => {
                    parts.push(Vec::new());
                    self.i += 1;
                }
                Some(b'\\') => {
                    let h = self.b.get(self.i + 1..self.i + 3);
                    match h {
                        Some([a, b]) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => {
                            let v = u8::from_str_radix(&self.text[self.i + 1..self.i + 3], 16)
                                .unwrap_or(0);
                            parts.last_mut().expect("one part").push(v);
                            self.i += 3;
                        }
                        _ => {
                            return self.fail(
                                "a `\\` in a value must be followed by two hex digits (\\2a, \\28, \\29, \\5c, \\00)",
                            )
                        }
                    }
                }
                Some(c) => {
                    parts.last_mut().expect("one part").push(*c);
                    self.i += 1;
                }
            }
        }
    }

    fn single_value(&mut self, what: &str) -> Result<Vec<u8>, FilterError> {
        let mut parts = self.value_parts()?;
        if parts.len() > 1 {
            return self.fail(format!(
                "a `*` is not allowed in a {what} value (write it as \\2a)"
            ));
        }
        Ok(parts.remove(0))
    }

    fn item(&mut self) -> Result<Filter, FilterError> {
        // extensible without attribute: (:dn:rule:=value) or (:rule:=value)
        if self.b.get(self.i) == Some(&b':') {
            return self.extensible(None);
        }
        let attr = self.attr_desc()?;
        match self.b.get(self.i) {
            Some(b'=') => {
                self.i += 1;
                let parts = self.value_parts()?;
                Ok(match parts.len() {
                    1 => Filter::Equal(attr, parts.into_iter().next().unwrap_or_default()),
                    2 if parts[0].is_empty() && parts[1].is_empty() => Filter::Present(attr),
                    _ => {
                        let n = parts.len();
                        let mut it = parts.into_iter();
                        let initial = it.next().filter(|p| !p.is_empty());
                        let mut any: Vec<Vec<u8>> = it.collect();
                        let last = any.pop().filter(|p| !p.is_empty());
                        any.retain(|p| !p.is_empty());
                        debug_assert!(n >= 2);
                        Filter::Substrings {
                            attr,
                            initial,
                            any,
                            last,
                        }
                    }
                })
            }
            Some(b'>') => {
                self.i += 1;
                self.expect(b'=')?;
                Ok(Filter::GreaterOrEqual(attr, self.single_value(">=")?))
            }
            Some(b'<') => {
                self.i += 1;
                self.expect(b'=')?;
                Ok(Filter::LessOrEqual(attr, self.single_value("<=")?))
            }
            Some(b'~') => {
                self.i += 1;
                self.expect(b'=')?;
                Ok(Filter::Approx(attr, self.single_value("~=")?))
            }
            Some(b':') => self.extensible(Some(attr)),
            _ => self.fail(format!("expected =, >=, <=, ~= or : after `{attr}`")),
        }
    }

    fn extensible(&mut self, attr: Option<String>) -> Result<Filter, FilterError> {
        let mut dn_attrs = false;
        let mut rule = None;
        // at ':'
        loop {
            self.expect(b':')?;
            if self.b.get(self.i) == Some(&b'=') {
                self.i += 1;
                break;
            }
            let start = self.i;
            while self.i < self.b.len()
                && (self.b[self.i].is_ascii_alphanumeric() || b"-.".contains(&self.b[self.i]))
            {
                self.i += 1;
            }
            let word = &self.text[start..self.i];
            if word.eq_ignore_ascii_case("dn") && !dn_attrs && rule.is_none() {
                dn_attrs = true;
            } else if !word.is_empty() && rule.is_none() {
                rule = Some(word.to_string());
            } else {
                return self.fail("malformed extensible match (expected attr:dn:rule:=value)");
            }
        }
        if attr.is_none() && rule.is_none() {
            return self.fail("an extensible match without an attribute needs a matching rule");
        }
        let value = self.single_value("extensible match")?;
        Ok(Filter::Extensible {
            attr,
            rule,
            dn_attrs,
            value,
        })
    }
}

impl Filter {
    /// Parses the RFC 4515 string form. A filter without the outer parentheses
    /// (`cn=John*`) is read as if it had them.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let trimmed = text.trim();
        let owned;
        let src = if trimmed.starts_with('(') {
            trimmed
        } else {
            owned = format!("({trimmed})");
            &owned
        };
        let mut p = Parser {
            text: src,
            b: src.as_bytes(),
            i: 0,
        };
        if trimmed.is_empty() {
            return p.fail("the filter is empty");
        }
        let f = p.filter(0)?;
        p.skip_spaces();
        if p.i != p.b.len() {
            return p.fail("text after the end of the filter");
        }
        Ok(f)
    }

    /// `(attr=value)` with the value taken literally (nothing in it is a wildcard).
    pub fn equal(attr: &str, value: &str) -> Filter {
        Filter::Equal(attr.to_string(), value.as_bytes().to_vec())
    }

    /// Whether `entry` matches. Comparison is case-insensitive (as AD's default matching
    /// rules); `>=`/`<=` compare as integers when both sides are, otherwise as text;
    /// `~=` is case-insensitive equality. `distinguishedName` matches the entry's DN,
    /// `objectCategory` its category (`person`, `group`, … or the schema DN of one).
    pub fn matches(&self, entry: &Entry) -> bool {
        match self {
            Filter::And(fs) => fs.iter().all(|f| f.matches(entry)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(entry)),
            Filter::Not(f) => !f.matches(entry),
            Filter::Present(a) => !values_of(entry, a).is_empty(),
            Filter::Equal(a, v) | Filter::Approx(a, v) => {
                let want = lower(v);
                values_of(entry, a)
                    .iter()
                    .any(|x| value_eq(a, &x.to_lowercase(), &want))
            }
            Filter::Substrings {
                attr,
                initial,
                any,
                last,
            } => values_of(entry, attr).iter().any(|x| {
                let x = x.to_lowercase();
                let mut rest: &str = &x;
                if let Some(i) = initial {
                    let i = lower(i);
                    match rest.strip_prefix(i.as_str()) {
                        Some(r) => rest = r,
                        None => return false,
                    }
                }
                for a in any {
                    let a = lower(a);
                    match rest.find(a.as_str()) {
                        Some(p) => rest = &rest[p + a.len()..],
                        None => return false,
                    }
                }
                match last {
                    Some(l) => rest.ends_with(lower(l).as_str()),
                    None => true,
                }
            }),
            Filter::GreaterOrEqual(a, v) => values_of(entry, a)
                .iter()
                .any(|x| compare(x, v) != std::cmp::Ordering::Less),
            Filter::LessOrEqual(a, v) => values_of(entry, a)
                .iter()
                .any(|x| compare(x, v) != std::cmp::Ordering::Greater),
            Filter::Extensible {
                attr,
                rule,
                dn_attrs,
                value,
            } => {
                let want = lower(value);
                let test = |x: &str| -> bool {
                    match rule.as_deref() {
                        Some(RULE_BIT_AND) | Some(RULE_BIT_OR) => {
                            let (Ok(x), Ok(w)) =
                                (x.trim().parse::<i64>(), want.trim().parse::<i64>())
                            else {
                                return false;
                            };
                            if rule.as_deref() == Some(RULE_BIT_AND) {
                                x & w == w
                            } else {
                                x & w != 0
                            }
                        }
                        _ => x.to_lowercase() == want,
                    }
                };
                let by_attr = match attr {
                    Some(a) => values_of(entry, a).iter().any(|x| test(x)),
                    None => entry
                        .attributes
                        .iter()
                        .any(|at| at.values.iter().any(|x| test(x))),
                };
                by_attr
                    || (*dn_attrs
                        && entry.dn.rdns.iter().any(|r| {
                            r.avas.iter().any(|ava| {
                                attr.as_ref()
                                    .is_none_or(|a| normalize_attr(a) == ava.norm_attr())
                                    && test(&ava.value)
                            })
                        }))
            }
        }
    }

    /// The matching rules this filter uses that are not in `supported` (an embedded
    /// backend refuses those instead of answering wrongly).
    pub fn unsupported_rules(&self, supported: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        self.walk(&mut |f| {
            if let Filter::Extensible {
                rule: Some(rule), ..
            } = f
            {
                if !supported.contains(&rule.as_str()) && !out.contains(rule) {
                    out.push(rule.clone());
                }
            }
        });
        out
    }

    /// The attribute names the filter tests.
    pub fn attributes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        self.walk(&mut |f| {
            let a = match f {
                Filter::Equal(a, _)
                | Filter::Approx(a, _)
                | Filter::GreaterOrEqual(a, _)
                | Filter::LessOrEqual(a, _)
                | Filter::Present(a)
                | Filter::Substrings { attr: a, .. } => Some(a),
                Filter::Extensible { attr, .. } => attr.as_ref(),
                _ => None,
            };
            if let Some(a) = a {
                if !out.iter().any(|x| x.eq_ignore_ascii_case(a)) {
                    out.push(a.clone());
                }
            }
        });
        out
    }

    fn walk(&self, visit: &mut dyn FnMut(&Filter)) {
        visit(self);
        match self {
            Filter::And(fs) | Filter::Or(fs) => fs.iter().for_each(|f| f.walk(visit)),
            Filter::Not(f) => f.walk(visit),
            _ => {}
        }
    }
}

fn lower(v: &[u8]) -> String {
    String::from_utf8_lossy(v).to_lowercase()
}

/// Values of `attr` for filtering, with the computed ones.
fn values_of(entry: &Entry, attr: &str) -> Vec<String> {
    let a = attr.split(';').next().unwrap_or(attr);
    if a.eq_ignore_ascii_case("distinguishedName") || a.eq_ignore_ascii_case("dn") {
        return vec![entry.dn.to_string()];
    }
    entry.get(a).map(<[String]>::to_vec).unwrap_or_default()
}

/// Equality of lowercased values; DN-valued attributes compare as DNs, and
/// `objectCategory=person` also matches the schema DN form `CN=Person,CN=Schema,…`.
fn value_eq(attr: &str, have: &str, want: &str) -> bool {
    if have == want {
        return true;
    }
    let a = attr.to_ascii_lowercase();
    if matches!(
        a.as_str(),
        "member" | "memberof" | "manager" | "managedby" | "distinguishedname" | "objectcategory"
    ) {
        if let (Ok(h), Ok(w)) = (Dn::parse(have), Dn::parse(want)) {
            if h == w {
                return true;
            }
            if a == "objectcategory" {
                let first = |d: &Dn| d.rdn().map(|r| r.first().value.to_lowercase());
                return first(&w).as_deref() == Some(have) || first(&h).as_deref() == Some(want);
            }
        }
    }
    false
}

fn compare(have: &str, want: &[u8]) -> std::cmp::Ordering {
    let want = lower(want);
    match (have.trim().parse::<i64>(), want.trim().parse::<i64>()) {
        (Ok(h), Ok(w)) => h.cmp(&w),
        _ => have.to_lowercase().as_str().cmp(want.as_str()),
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::And(fs) => {
                f.write_str("(&")?;
                for x in fs {
                    write!(f, "{x}")?;
                }
                f.write_str(")")
            }
            Filter::Or(fs) => {
                f.write_str("(|")?;
                for x in fs {
                    write!(f, "{x}")?;
                }
                f.write_str(")")
            }
            Filter::Not(x) => write!(f, "(!{x})"),
            Filter::Equal(a, v) => write!(f, "({a}={})", escape_bytes(v)),
            Filter::Approx(a, v) => write!(f, "({a}~={})", escape_bytes(v)),
            Filter::GreaterOrEqual(a, v) => write!(f, "({a}>={})", escape_bytes(v)),
            Filter::LessOrEqual(a, v) => write!(f, "({a}<={})", escape_bytes(v)),
            Filter::Present(a) => write!(f, "({a}=*)"),
            Filter::Substrings {
                attr,
                initial,
                any,
                last,
            } => {
                write!(f, "({attr}=")?;
                if let Some(i) = initial {
                    f.write_str(&escape_bytes(i))?;
                }
                f.write_str("*")?;
                for a in any {
                    write!(f, "{}*", escape_bytes(a))?;
                }
                if let Some(l) = last {
                    f.write_str(&escape_bytes(l))?;
                }
                f.write_str(")")
            }
            Filter::Extensible {
                attr,
                rule,
                dn_attrs,
                value,
            } => {
                f.write_str("(")?;
                if let Some(a) = attr {
                    f.write_str(a)?;
                }
                if *dn_attrs {
                    f.write_str(":dn")?;
                }
                if let Some(r) = rule {
                    write!(f, ":{r}")?;
                }
                write!(f, ":={})", escape_bytes(value))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::backend::{Attribute, Entry};

    fn entry(dn: &str, attrs: &[(&str, &[&str])]) -> Entry {
        Entry {
            dn: Dn::parse(dn).unwrap(),
            attributes: attrs
                .iter()
                .map(|(n, v)| Attribute::new(*n, v.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }
    }

    #[test]
    fn escapes_the_specials() {
        assert_eq!(escape_value("*)(cn=*"), r"\2a\29\28cn=\2a");
        assert_eq!(escape_value(r"a\b"), r"a\5cb");
        assert_eq!(escape_value("nul\0"), r"nul\00");
        assert_eq!(escape_value("Jürgen"), "Jürgen");
        assert_eq!(escape_value("plain, text+#\""), "plain, text+#\"");
        assert_eq!(escape_bytes(&[0xff, b'a']), r"\ffa");
    }

    #[test]
    fn parses_the_forms() {
        let f = Filter::parse("(&(objectClass=user)(|(cn=J*n)(!(sn=x)))(uac>=512))").unwrap();
        assert_eq!(
            f.to_string(),
            "(&(objectClass=user)(|(cn=J*n)(!(sn=x)))(uac>=512))"
        );
        assert_eq!(Filter::parse("cn=x").unwrap(), Filter::equal("cn", "x"));
        assert_eq!(
            Filter::parse("(cn=*)").unwrap(),
            Filter::Present("cn".into())
        );
        assert_eq!(
            Filter::parse(r"(cn=\2a\29\28cn=\2a)").unwrap(),
            Filter::equal("cn", "*)(cn=*")
        );
        let f = Filter::parse("(userAccountControl:1.2.840.113556.1.4.803:=2)").unwrap();
        assert_eq!(
            f.to_string(),
            "(userAccountControl:1.2.840.113556.1.4.803:=2)"
        );
        let f = Filter::parse("(cn:dn:=Sales)").unwrap();
        assert!(matches!(f, Filter::Extensible { dn_attrs: true, .. }));
        assert_eq!(
            Filter::parse("(cn=J\\c3\\bcrgen)").unwrap(),
            Filter::equal("cn", "Jürgen")
        );
    }

    #[test]
    fn refuses_bad_filters_with_position() {
        for (text, what) in [
            ("", "empty"),
            ("(cn=x", "missing `)`"),
            ("(cn=a(b)", "unescaped `(`"),
            ("(cn=a\\zz)", "two hex digits"),
            ("(cn>=a*b)", "`*` is not allowed"),
            ("(=x)", "attribute name is missing"),
            ("(c n=x)", "expected"),
            ("(cn=x))", "after the end"),
            ("(cn=a\0)", "NUL"),
        ] {
            let e = Filter::parse(text).unwrap_err();
            assert!(e.to_string().contains(what), "{text:?}: {e}");
        }
        let deep = format!("{}(cn=x){}", "(!".repeat(100), ")".repeat(100));
        assert!(Filter::parse(&deep).unwrap_err().message.contains("deeper"));
    }

    #[test]
    fn evaluates() {
        let e = entry(
            "CN=John Smith,OU=Sales,DC=x",
            &[
                ("objectClass", &["top", "person", "user"]),
                ("cn", &["John Smith"]),
                ("userAccountControl", &["514"]),
                ("mail", &["john@example.com"]),
            ],
        );
        let t = |f: &str| Filter::parse(f).unwrap().matches(&e);
        assert!(t("(objectclass=USER)"));
        assert!(t("(cn=john*)"));
        assert!(t("(cn=*smith)"));
        assert!(t("(cn=j*n*th)"));
        assert!(!t("(cn=j*x*th)"));
        assert!(t("(mail=*)"));
        assert!(!t("(sn=*)"));
        assert!(t("(userAccountControl>=513)"));
        assert!(!t("(userAccountControl<=100)"));
        assert!(t("(userAccountControl:1.2.840.113556.1.4.803:=2)"));
        assert!(!t("(userAccountControl:1.2.840.113556.1.4.803:=16)"));
        assert!(t("(ou:dn:=sales)"));
        assert!(!t("(ou=sales)"));
        assert!(t("(distinguishedName=cn=john smith,ou=sales,dc=x)"));
        assert!(t("(&)"));
        assert!(!t("(|)"));
        // an escaped injection attempt is a literal value: it matches nothing here
        let inj = format!("(cn={})", escape_value("*)(cn=*"));
        assert!(!t(&inj));
    }
}
