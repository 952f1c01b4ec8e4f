//! Out-of-office as a Sieve script (RFC 5228 + RFC 5230 vacation), as Dovecot Pigeonhole runs
//! it at delivery. The reply goes only to senders of the mailbox's own tenant: the script
//! tests the envelope sender against the addresses of that tenant's mailboxes (the HMC 4.5
//! rollup fixed out-of-office answering across tenants; an exact list is also right for a
//! reseller's domain that several tenants share, where a domain test would not be).

/// A Sieve quoted string: `\` and `"` escaped, everything else (line breaks included) kept,
/// so no input can end the string early.
pub(crate) fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '\\' || c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn list(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|i| quoted(i)).collect();
    format!("[{}]", q.join(", "))
}

/// The script for `primary` (its `own` addresses), answering senders in `tenant`.
pub(crate) fn vacation_script(
    primary: &str,
    own: &[String],
    tenant: &[String],
    subject: &str,
    message: &str,
    days: u32,
) -> String {
    format!(
        "# Out of office of {primary}: written by Provisio (Exchange 2007 Provider) from its state; changes here are overwritten.\n\
         require [\"vacation\", \"envelope\"];\n\
         if envelope :is \"from\" {senders} {{\n  \
           vacation :days {days} :subject {subject} :addresses {own}\n    {message};\n\
         }}\n",
        senders = list(tenant),
        subject = quoted(subject),
        own = list(own),
        message = quoted(message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_backslashes_cannot_end_the_string() {
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
        let s = vacation_script(
            "ann@fabrikam.com",
            &["ann@fabrikam.com".into()],
            &["bob@fabrikam.com".into()],
            "Away \"now\"",
            "Back soon\";\ndiscard;\n\"",
            1,
        );
        // The only `discard` is inside the message string, escaped.
        assert!(s.contains(r#""Back soon\";"#), "{s}");
        assert_eq!(s.matches("vacation :days").count(), 1);
        assert!(
            s.contains(r#"if envelope :is "from" ["bob@fabrikam.com"]"#),
            "{s}"
        );
    }
}
