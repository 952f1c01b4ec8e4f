//! DNS name checking: labels of letters, digits, hyphens (and underscores where DNS
//! allows them), 1–63 bytes each, at most 253 bytes in all; internationalized labels are
//! converted to punycode with the `idna` crate. Names come out lowercase.

use super::DnsError;

/// Characters that mean something in zone-file syntax (or are never valid in a field)
/// and so are rejected in every non-text input before anything else is checked.
pub(crate) fn reject_syntax(field: &str, value: &str) -> Result<(), DnsError> {
    for c in value.chars() {
        let why = match c {
            '\n' | '\r' => "a line break",
            c if c.is_control() => "a control character",
            ';' => "`;` (a zone-file comment)",
            '$' => "`$` (a zone-file directive)",
            '(' | ')' => "a parenthesis (zone-file line continuation)",
            '"' => "a double quote",
            '\\' => "a backslash (zone-file escape)",
            c if c.is_whitespace() => "whitespace",
            _ => continue,
        };
        return Err(DnsError::Invalid(format!(
            "input `{field}` contains {why}, which is not allowed here: {value:?}"
        )));
    }
    Ok(())
}

/// Which characters a label may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// Host names (A/AAAA owners, MX/NS/SRV targets, the zone): letters, digits, hyphen,
    /// not starting or ending with a hyphen.
    Host,
    /// Other owner names and CNAME targets: underscores allowed too (`_dmarc`, `_sip._tcp`).
    Any,
}

fn check_label(field: &str, label: &str, style: Style, first: bool) -> Result<String, DnsError> {
    let bad = |why: String| DnsError::Invalid(format!("input `{field}`: {why}"));
    if label.is_empty() {
        return Err(bad(
            "a name has an empty label (two dots in a row, or a leading dot)".into(),
        ));
    }
    if first && label == "*" {
        return Ok(label.to_string());
    }
    let ascii = if label.is_ascii() {
        label.to_ascii_lowercase()
    } else {
        let converted = idna::domain_to_ascii(label).map_err(|_| {
            bad(format!(
                "label {label:?} is not a valid internationalized name"
            ))
        })?;
        if converted.contains('.') || !converted.is_ascii() {
            return Err(bad(format!(
                "label {label:?} is not a valid internationalized name"
            )));
        }
        converted
    };
    if ascii.is_empty() || ascii.len() > 63 {
        return Err(bad(format!(
            "label {label:?} must be 1 to 63 characters long (it is {})",
            ascii.len()
        )));
    }
    if let Some(c) = ascii
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || (*c == '_' && style == Style::Any)))
    {
        return Err(bad(format!(
            "label {label:?} contains {c:?}; names may hold letters, digits, hyphens{}",
            if style == Style::Any {
                " and underscores"
            } else {
                ""
            }
        )));
    }
    if style == Style::Host && (ascii.starts_with('-') || ascii.ends_with('-')) {
        return Err(bad(format!(
            "label {label:?} may not start or end with a hyphen"
        )));
    }
    Ok(ascii)
}

/// Checks a dotted name (no trailing dot) and returns its lowercase ASCII form.
fn check_name(field: &str, name: &str, style: Style) -> Result<String, DnsError> {
    let labels: Result<Vec<String>, DnsError> = name
        .split('.')
        .enumerate()
        .map(|(i, l)| check_label(field, l, style, i == 0))
        .collect();
    let out = labels?.join(".");
    if out.len() > 253 {
        return Err(DnsError::Invalid(format!(
            "input `{field}`: the name is longer than 253 characters"
        )));
    }
    Ok(out)
}

/// A zone name: returns it lowercase, without the trailing dot.
pub(crate) fn parse_zone(field: &str, raw: &str) -> Result<String, DnsError> {
    reject_syntax(field, raw)?;
    let t = raw.strip_suffix('.').unwrap_or(raw);
    if t.is_empty() {
        return Err(DnsError::Invalid(format!(
            "input `{field}` must name a zone such as example.com"
        )));
    }
    if t.split('.').next() == Some("*") {
        return Err(DnsError::Invalid(format!(
            "input `{field}`: a zone name cannot be a wildcard"
        )));
    }
    check_name(field, t, Style::Any)
}

/// An owner name relative to `zone`: `@` for the apex, else the relative part. Accepts a
/// relative name (`www`), `@`, or a name inside the zone written in full (`www.example.com`
/// or `www.example.com.`).
pub(crate) fn parse_owner(
    field: &str,
    raw: &str,
    zone: &str,
    style: Style,
) -> Result<String, DnsError> {
    reject_syntax(field, raw)?;
    if raw.is_empty() {
        return Err(DnsError::Invalid(format!(
            "input `{field}` is empty; use @ for the zone apex"
        )));
    }
    if raw == "@" {
        return Ok("@".to_string());
    }
    let (body, absolute) = match raw.strip_suffix('.') {
        Some(b) => (b, true),
        None => (raw, false),
    };
    let lower = body.to_ascii_lowercase();
    let rel = if lower == zone {
        return Ok("@".to_string());
    } else if let Some(r) = lower.strip_suffix(&format!(".{zone}")) {
        &body[..r.len()]
    } else if absolute {
        return Err(DnsError::Invalid(format!(
            "input `{field}`: {raw:?} is not inside zone {zone}"
        )));
    } else {
        body
    };
    let rel = check_name(field, rel, style)?;
    if rel.len() + 1 + zone.len() > 253 {
        return Err(DnsError::Invalid(format!(
            "input `{field}`: {rel}.{zone} is longer than 253 characters"
        )));
    }
    Ok(rel)
}

/// A target name (CNAME/NS/MX/SRV data), always absolute: returns it lowercase with a
/// trailing dot. `@` means the zone apex; `.` (the root) only when `allow_root`.
pub(crate) fn parse_target(
    field: &str,
    raw: &str,
    zone: &str,
    style: Style,
    allow_root: bool,
) -> Result<String, DnsError> {
    reject_syntax(field, raw)?;
    match raw {
        "" => Err(DnsError::Invalid(format!("input `{field}` is empty"))),
        "@" => Ok(format!("{zone}.")),
        "." if allow_root => Ok(".".to_string()),
        "." => Err(DnsError::Invalid(format!(
            "input `{field}` cannot be the root name `.`"
        ))),
        _ => {
            let body = raw.strip_suffix('.').unwrap_or(raw);
            if body.split('.').next() == Some("*") {
                return Err(DnsError::Invalid(format!(
                    "input `{field}`: a target cannot be a wildcard"
                )));
            }
            Ok(format!("{}.", check_name(field, body, style)?))
        }
    }
}

/// The SOA RNAME from an e-mail address (`hostmaster@example.com`) or a name
/// (`hostmaster.example.com`); returned absolute.
pub(crate) fn parse_mailbox(field: &str, raw: &str) -> Result<String, DnsError> {
    reject_syntax(field, raw)?;
    match raw.split_once('@') {
        Some((local, domain)) => {
            if local.contains('.') {
                return Err(DnsError::Invalid(format!(
                    "input `{field}`: the local part {local:?} may not contain dots"
                )));
            }
            let local = check_label(field, local, Style::Any, false)?;
            let domain = parse_target(field, domain, "", Style::Host, false)?;
            Ok(format!("{local}.{domain}"))
        }
        None => parse_target(field, raw, "", Style::Any, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        let z = "example.com";
        assert_eq!(
            parse_owner("name", "@", z, Style::Any).ok(),
            Some("@".into())
        );
        assert_eq!(
            parse_owner("name", "WWW", z, Style::Host).ok(),
            Some("www".into())
        );
        assert_eq!(
            parse_owner("name", "www.example.com.", z, Style::Host).ok(),
            Some("www".into())
        );
        assert_eq!(
            parse_owner("name", "example.com", z, Style::Host).ok(),
            Some("@".into())
        );
        assert_eq!(
            parse_owner("name", "_dmarc", z, Style::Any).ok(),
            Some("_dmarc".into())
        );
        assert!(parse_owner("name", "_dmarc", z, Style::Host).is_err());
        assert!(parse_owner("name", "www.other.org.", z, Style::Any).is_err());
        assert!(parse_owner("name", "a..b", z, Style::Any).is_err());
        assert!(parse_owner("name", &"a".repeat(64), z, Style::Any).is_err());
        assert_eq!(
            parse_owner("name", "bücher", z, Style::Host).ok(),
            Some("xn--bcher-kva".into())
        );
        assert!(parse_owner("name", "www\n@ IN NS evil.", z, Style::Any).is_err());
    }

    #[test]
    fn mailbox() {
        assert_eq!(
            parse_mailbox("adminEmail", "hostmaster@example.com").ok(),
            Some("hostmaster.example.com.".into())
        );
        assert!(parse_mailbox("adminEmail", "john.doe@example.com").is_err());
    }
}
