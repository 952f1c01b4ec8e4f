//! Identities of the daemon's clients: bearer tokens from `[[serve.tokens]]`, kept only as
//! SHA-256 hashes, each mapped to a subject, its groups and its rights; and the access
//! control lists of `[[serve.acl]]` on namespaces and procedures (MPS: a namespace's DACL
//! propagates to its procedures unless a procedure stops inheriting it; deny wins).

use crate::config::{AclConfig, TokenConfig};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Who a request runs as, and what it may do.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The subject (in the journal, the audit log and `tx show`).
    pub subject: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// May send trusted requests.
    pub trusted: bool,
    /// May see and cancel everyone's requests and requeue dead jobs.
    pub operator: bool,
    /// Procedures it may call (`None`: every public one).
    allow: Option<Vec<String>>,
}

impl Identity {
    /// Whether it may call `target` (`Namespace/Procedure`).
    pub fn may_call(&self, target: &str) -> bool {
        let Some(allow) = &self.allow else {
            return true;
        };
        let namespace = target.rsplit_once('/').map_or(target, |(ns, _)| ns);
        allow.iter().any(|a| {
            a == "*" || a == target || a.strip_suffix("/*").is_some_and(|ns| ns == namespace)
        })
    }

    /// Whether it may see (and cancel) a request of `subject`.
    pub fn may_see(&self, subject: &str) -> bool {
        self.operator || self.subject == subject
    }
}

/// A right an ACL grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Call the procedure.
    Execute,
    /// See it in the catalog (execute implies it).
    Read,
}

/// The access control lists.
#[derive(Debug, Default)]
pub struct Acl(Vec<AclConfig>);

impl Acl {
    /// From the configuration (already checked).
    pub fn from_config(entries: &[AclConfig]) -> Acl {
        Acl(entries.to_vec())
    }

    /// Whether `who` has `right` on `namespace/procedure`. A procedure no entry names
    /// (neither its own nor, inherited, its namespace's) is open to every token; operators
    /// pass every list.
    pub fn permits(&self, who: &Identity, namespace: &str, procedure: &str, right: Right) -> bool {
        who.operator
            || self
                .decide(who, namespace, procedure, right)
                .unwrap_or(true)
    }

    /// Whether an entry explicitly grants `who` the right (operators: always). A private
    /// procedure is callable from a trusted request only this way: what no entry governs
    /// is open for public procedures only (MPS: "execute private procedures" is a right of
    /// its own).
    pub fn grants(&self, who: &Identity, namespace: &str, procedure: &str, right: Right) -> bool {
        who.operator || self.decide(who, namespace, procedure, right) == Some(true)
    }

    /// The entries' verdict: `None` when no entry governs the procedure.
    fn decide(
        &self,
        who: &Identity,
        namespace: &str,
        procedure: &str,
        right: Right,
    ) -> Option<bool> {
        let own: Vec<&AclConfig> = self
            .0
            .iter()
            .filter(|a| a.namespace == namespace && a.procedure.as_deref() == Some(procedure))
            .collect();
        let inherit = own.iter().all(|a| a.inherit);
        let mut entries = own;
        if inherit {
            entries.extend(
                self.0
                    .iter()
                    .filter(|a| a.namespace == namespace && a.procedure.is_none()),
            );
        }
        if entries.is_empty() {
            return None;
        }
        let names = |list: &[String]| {
            list.iter().any(|w| match w.strip_prefix("group:") {
                Some(g) => who.groups.iter().any(|mine| mine == g),
                None => *w == who.subject,
            })
        };
        if entries.iter().any(|a| names(&a.deny)) {
            return Some(false);
        }
        Some(
            entries
                .iter()
                .any(|a| names(&a.execute) || (right == Right::Read && names(&a.read))),
        )
    }
}

/// The configured tokens, by hash.
#[derive(Debug, Default)]
pub struct Tokens(HashMap<[u8; 32], Identity>);

/// SHA-256 of a token, as 64 lowercase hex digits.
pub fn hash_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// From the configuration (already checked: 64 hex digits each).
    pub fn from_config(tokens: &[TokenConfig]) -> Tokens {
        Tokens(
            tokens
                .iter()
                .filter_map(|t| {
                    Some((
                        unhex(&t.sha256.to_ascii_lowercase())?,
                        Identity {
                            subject: t.subject.clone(),
                            groups: t.groups.clone(),
                            trusted: t.trusted,
                            operator: t.operator,
                            allow: t.allow.clone(),
                        },
                    ))
                })
                .collect(),
        )
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The identity of a presented token. The lookup is by the token's hash, so the
    /// comparison never touches a stored secret.
    pub fn identify(&self, token: &str) -> Option<&Identity> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.0.get(&digest)
    }
}

/// A new random token: 32 bytes from the operating system's generator, as hex.
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(allow: Option<Vec<&str>>) -> TokenConfig {
        TokenConfig {
            subject: "billing".into(),
            sha256: hash_hex("s3cret"),
            groups: vec!["ops".into()],
            trusted: false,
            operator: false,
            allow: allow.map(|a| a.into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn a_token_is_known_by_its_hash_only() {
        assert_eq!(
            hash_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let t = Tokens::from_config(&[token(None)]);
        assert_eq!(
            t.identify("s3cret").map(|i| i.subject.as_str()),
            Some("billing")
        );
        assert!(t.identify("s3cret ").is_none());
        assert!(t.identify("").is_none());
    }

    #[test]
    fn allow_lists_name_procedures_or_namespaces() {
        let t = Tokens::from_config(&[token(Some(vec!["Hosted DNS/*", "Billing/Open"]))]);
        let id = t.identify("s3cret").expect("known");
        assert!(id.may_call("Hosted DNS/CreateZone"));
        assert!(id.may_call("Billing/Open"));
        assert!(!id.may_call("Billing/Close"));
        assert!(!id.may_call("Hosted DNS2/CreateZone"));
        assert!(id.may_see("billing") && !id.may_see("other"));
    }

    fn acl(
        namespace: &str,
        procedure: Option<&str>,
        execute: &[&str],
        read: &[&str],
        deny: &[&str],
        inherit: bool,
    ) -> AclConfig {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        AclConfig {
            namespace: namespace.into(),
            procedure: procedure.map(String::from),
            execute: v(execute),
            read: v(read),
            deny: v(deny),
            inherit,
        }
    }

    #[test]
    fn acls_inherit_from_the_namespace_and_deny_wins() {
        let t = Tokens::from_config(&[token(None)]);
        let billing = t.identify("s3cret").expect("known").clone();
        let acl = Acl::from_config(&[
            acl("DNS", None, &["group:ops"], &["group:support"], &[], true),
            acl("DNS", Some("DeleteZone"), &[], &[], &["billing"], true),
            acl("DNS", Some("Private"), &["someone"], &[], &[], false),
        ]);
        // billing is in group ops: the namespace's grant reaches its procedures.
        assert!(acl.permits(&billing, "DNS", "CreateZone", Right::Execute));
        // ... except where a procedure's own entry denies it.
        assert!(!acl.permits(&billing, "DNS", "DeleteZone", Right::Execute));
        assert!(!acl.permits(&billing, "DNS", "DeleteZone", Right::Read));
        // ... or stops inheriting.
        assert!(!acl.permits(&billing, "DNS", "Private", Right::Execute));
        // A namespace without entries is open.
        assert!(acl.permits(&billing, "Files", "CreateFolder", Right::Execute));
        let mut support = billing.clone();
        support.subject = "sam".into();
        support.groups = vec!["support".into()];
        assert!(acl.permits(&support, "DNS", "CreateZone", Right::Read));
        assert!(!acl.permits(&support, "DNS", "CreateZone", Right::Execute));
        let mut op = support.clone();
        op.operator = true;
        assert!(acl.permits(&op, "DNS", "Private", Right::Execute));
        // An explicit grant is needed where nothing governs being open is not enough.
        assert!(!acl.grants(&billing, "Files", "CreateFolder", Right::Execute));
        assert!(acl.grants(&billing, "DNS", "CreateZone", Right::Execute));
        assert!(!acl.grants(&billing, "DNS", "DeleteZone", Right::Execute));
        assert!(acl.grants(&op, "Files", "CreateFolder", Right::Execute));
    }

    #[test]
    fn new_tokens_differ() {
        let a = new_token().expect("random");
        assert_eq!(a.len(), 64);
        assert_ne!(a, new_token().expect("random"));
    }
}
