//! Input checks of the mail provider: SMTP addresses, aliases, domain types and free text.
//! What passes them cannot break the artefacts it is written into: an address or alias holds
//! no space, colon, quote, control character or path separator (passwd-file fields, map
//! lines and paths stay one field), and free text (display names, out-of-office subject and
//! message) is written only into XML outputs and escaped Sieve strings.

use crate::bookkeeping::check_name;
use provisio_engine::provider::ProviderError;

/// Longest local part (RFC 5321).
const MAX_LOCAL: usize = 64;
/// Longest alias.
const MAX_ALIAS: usize = 64;

/// An SMTP address, returned lower-case: a local part of letters, digits and `._+-` (not
/// starting or ending with `.`, no `..`; at most 64), `@`, and a domain name.
pub(crate) fn smtp_address(at: &str, v: &str) -> Result<String, ProviderError> {
    let t = v.trim().to_ascii_lowercase();
    let bad = |why: &str| {
        Err(ProviderError::invalid(format!(
            "input `{at}` is not an e-mail address ({why}), got {v:?}"
        )))
    };
    let Some((local, domain)) = t.split_once('@') else {
        return bad("no `@`");
    };
    if local.is_empty() || local.len() > MAX_LOCAL {
        return bad("the part before `@` must hold 1 to 64 characters");
    }
    if !local
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
    {
        return bad("the part before `@` may hold letters, digits and `._+-` only");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return bad("the part before `@` must not start or end with `.` or hold `..`");
    }
    let d = domain_name(at, domain).map_err(|_| {
        ProviderError::invalid(format!(
            "input `{at}` is not an e-mail address (the part after `@` is not a domain name), got {v:?}"
        ))
    })?;
    Ok(format!("{local}@{d}"))
}

/// A domain name (lower-case), as Managed Plans checks it.
pub(crate) fn domain_name(at: &str, v: &str) -> Result<String, ProviderError> {
    crate::plans::domain(at, v)
}

/// An alias (mailNickname): letters, digits and `._-`, 1 to 64, not starting with `.`.
pub(crate) fn alias(at: &str, v: &str) -> Result<String, ProviderError> {
    let t = v.trim();
    let ok = !t.is_empty()
        && t.len() <= MAX_ALIAS
        && !t.starts_with('.')
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(ProviderError::invalid(format!(
            "input `{at}` must be 1 to 64 letters, digits and `._-` (not starting with `.`), got {v:?}"
        )));
    }
    Ok(t.to_string())
}

/// The alias Exchange derives when none is given: the local part of `address` (what comes
/// before `@`, prefixed by `prefix`) with the characters an alias cannot hold left out (`+`
/// of `o+neil@…`, say: a recipient delimiter to the mail server), then checked as
/// [`alias`].
pub(crate) fn default_alias(prefix: &str, address: &str) -> Result<String, ProviderError> {
    let local = address.split('@').next().unwrap_or_default();
    let kept: String = local
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    let kept = format!("{prefix}{}", kept.trim_start_matches('.'));
    alias("alias", &kept).map_err(|_| {
        ProviderError::invalid(format!(
            "no alias can be made of {address:?}: give one in input `alias` (1 to 64 letters, digits and `._-`)"
        ))
    })
}

/// A display name or object name: no control characters, at most 256 characters.
pub(crate) fn display(at: &str, v: &str) -> Result<String, ProviderError> {
    check_name(at, v, 256)
}

/// Free text (an out-of-office message): at most `max` characters; line breaks and tabs are
/// kept (`\r\n` becomes `\n`), any other control character is refused.
pub(crate) fn free_text(at: &str, v: &str, max: usize) -> Result<String, ProviderError> {
    let t = v.replace("\r\n", "\n");
    if t.chars().count() > max {
        return Err(ProviderError::invalid(format!(
            "input `{at}` is longer than {max} characters"
        )));
    }
    if let Some(c) = t
        .chars()
        .find(|c| c.is_control() && *c != '\n' && *c != '\t')
    {
        return Err(ProviderError::invalid(format!(
            "input `{at}` holds the control character {c:?}"
        )));
    }
    Ok(t)
}

/// The accepted-domain types of Exchange 2007.
pub(crate) const DOMAIN_TYPES: [&str; 3] = ["Authoritative", "InternalRelay", "ExternalRelay"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_that_could_break_a_format_are_refused() {
        assert_eq!(
            smtp_address("a", " Ann.Lee+x@Fabrikam.COM ").unwrap(),
            "ann.lee+x@fabrikam.com"
        );
        for bad in [
            "ann",
            "@fabrikam.com",
            "ann@",
            "ann@fabrikam",
            "a b@fabrikam.com",
            "a:b@fabrikam.com",
            "a\nb@fabrikam.com",
            "\"ann\"@fabrikam.com",
            "ann@fab rikam.com",
            "ann@fabrikam.com\nroot@x.com",
            ".ann@fabrikam.com",
            "a..b@fabrikam.com",
            "a/b@fabrikam.com",
            "a@b@fabrikam.com",
        ] {
            let e = smtp_address("emailAddresses/value[1]", bad).unwrap_err();
            assert!(
                e.message().contains("emailAddresses/value[1]"),
                "{bad}: {e}"
            );
        }
        for bad in ["", ".x", "a b", "a:b", "a\"b", "a\nb", &"x".repeat(65)] {
            assert!(alias("alias", bad).is_err(), "{bad:?}");
        }
        assert_eq!(alias("alias", "ann.lee").unwrap(), "ann.lee");
        assert!(alias("alias", "o+neil").is_err());
        assert_eq!(default_alias("", "o+neil@fabrikam.com").unwrap(), "oneil");
        assert_eq!(
            default_alias("", "ann.lee@fabrikam.com").unwrap(),
            "ann.lee"
        );
        assert_eq!(
            default_alias("contact.", "o+neil@fabrikam.com").unwrap(),
            "contact.oneil"
        );
        let e = default_alias("", "+++@fabrikam.com").unwrap_err();
        assert!(e.message().contains("input `alias`"), "{e}");
        assert!(free_text("message", "line1\r\nline2\t\"q\"", 100).is_ok());
        assert!(free_text("message", "a\u{0}b", 100).is_err());
    }
}
