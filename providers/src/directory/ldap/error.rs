//! LDAP result codes and client errors mapped to the directory's error classes: what the
//! engine does next (retry, roll back, settle an in-doubt write) follows from the class.

use ldap3::result::{LdapError, LdapResult};
use std::fmt;

/// The class of an LDAP failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdapErrorKind {
    /// 68 entryAlreadyExists (and AD's duplicate sAMAccountName): the name is taken.
    AlreadyExists,
    /// 32 noSuchObject: the object, or the parent of a new object, does not exist.
    NoSuchObject,
    /// 17 undefinedAttributeType, 21 invalidAttributeSyntax: an attribute the schema does
    /// not know, or a value it does not take.
    UnknownAttribute,
    /// 65 objectClassViolation, 64 namingViolation, 69 objectClassModsProhibited: the
    /// object would break its classes (a required attribute missing, an unknown class).
    ObjectClassViolation,
    /// 19 constraintViolation (e.g. a duplicate sAMAccountName on slapd's unique overlay,
    /// a password that fails the policy).
    Constraint,
    /// 20 attributeOrValueExists: the value is already there.
    ValueExists,
    /// 16 noSuchAttribute: the value to delete is not there.
    NoSuchAttribute,
    /// 66 notAllowedOnNonLeaf: the object has children.
    NotLeaf,
    /// 34 invalidDNSyntax and other bad requests from our side.
    Invalid,
    /// 50 insufficientAccessRights, 53 unwillingToPerform (AD says it for requests it will
    /// never do, e.g. a password over a plain connection), 48/49 bind failures, 8
    /// strongerAuthRequired, a password over plain LDAP: the server (or our policy) refuses.
    Refused,
    /// 51 busy, 52 unavailable, 3 timeLimitExceeded, connection
    /// errors before the request left: worth retrying.
    Transient,
    /// The request was sent and then the connection broke or the answer did not come in
    /// time: it may or may not have been applied.
    InDoubt,
    /// Anything else (permanent).
    Other,
}

/// A failed LDAP operation: its class, the LDAP result code if the server sent one, and a
/// message naming the operation and the object (never a password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapOpError {
    /// The class.
    pub kind: LdapErrorKind,
    /// The LDAP result code, when the server answered.
    pub rc: Option<u32>,
    /// What happened, with the DN.
    pub message: String,
}

impl fmt::Display for LdapOpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LdapOpError {}

impl LdapOpError {
    /// An error of `kind` with `message` and no result code.
    pub fn new(kind: LdapErrorKind, message: impl Into<String>) -> Self {
        LdapOpError {
            kind,
            rc: None,
            message: message.into(),
        }
    }

    /// Whether retrying may help.
    pub fn is_transient(&self) -> bool {
        self.kind == LdapErrorKind::Transient
    }
}

/// The RFC 4511 name of a result code.
pub fn rc_name(rc: u32) -> &'static str {
    match rc {
        0 => "success",
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        7 => "authMethodNotSupported",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        13 => "confidentialityRequired",
        16 => "noSuchAttribute",
        17 => "undefinedAttributeType",
        18 => "inappropriateMatching",
        19 => "constraintViolation",
        20 => "attributeOrValueExists",
        21 => "invalidAttributeSyntax",
        32 => "noSuchObject",
        33 => "aliasProblem",
        34 => "invalidDNSyntax",
        36 => "aliasDereferencingProblem",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        54 => "loopDetect",
        64 => "namingViolation",
        65 => "objectClassViolation",
        66 => "notAllowedOnNonLeaf",
        67 => "notAllowedOnRDN",
        68 => "entryAlreadyExists",
        69 => "objectClassModsProhibited",
        71 => "affectsMultipleDSAs",
        80 => "other",
        _ => "unknown result code",
    }
}

/// The class of a result code.
pub fn rc_kind(rc: u32) -> LdapErrorKind {
    use LdapErrorKind::*;
    match rc {
        68 => AlreadyExists,
        32 => NoSuchObject,
        17 | 21 | 18 => UnknownAttribute,
        64 | 65 | 69 | 67 => ObjectClassViolation,
        19 => Constraint,
        20 => ValueExists,
        16 => NoSuchAttribute,
        66 => NotLeaf,
        34 | 2 | 12 => Invalid,
        7 | 8 | 13 | 48 | 49 | 50 | 53 => Refused,
        3 | 51 | 52 => Transient,
        _ => Other,
    }
}

/// The message of a server's answer: `<what> <dn>: <meaning> (LDAP <rc> <name>[: <text>])`.
fn describe(what: &str, dn: &str, res: &LdapResult) -> String {
    let kind = if res.rc == 16 && res.text.contains("schema") {
        LdapErrorKind::UnknownAttribute
    } else {
        rc_kind(res.rc)
    };
    let meaning = match kind {
        LdapErrorKind::AlreadyExists => "an object with this name already exists",
        LdapErrorKind::NoSuchObject if !res.matched.is_empty() => {
            "no such object (its parent does not exist, or it does not)"
        }
        LdapErrorKind::NoSuchObject => "no such object, or its parent does not exist",
        LdapErrorKind::UnknownAttribute => "an attribute or value the schema does not accept",
        LdapErrorKind::ObjectClassViolation => "the object's classes do not allow this",
        LdapErrorKind::Constraint => "a constraint of the directory is violated",
        LdapErrorKind::ValueExists => "the value is already there",
        LdapErrorKind::NoSuchAttribute => "the attribute or value is not there",
        LdapErrorKind::NotLeaf => "the object has children",
        LdapErrorKind::Invalid => "the request is invalid",
        LdapErrorKind::Refused => "the server refused",
        LdapErrorKind::Transient => "the server is busy or unavailable",
        LdapErrorKind::InDoubt | LdapErrorKind::Other => "the server failed",
    };
    let text = res
        .text
        .trim_matches(|c: char| c.is_whitespace() || c == '\0');
    let mut m = format!(
        "{what} {dn}: {meaning} (LDAP {} {}",
        res.rc,
        rc_name(res.rc)
    );
    if !text.is_empty() {
        m.push_str(": ");
        m.push_str(text);
    }
    m.push(')');
    if !res.matched.is_empty() && res.rc == 32 {
        m.push_str(&format!("; the nearest existing object is {}", res.matched));
    }
    m
}

/// `res` as an error if it is not success (rc 0).
pub fn check(what: &str, dn: &str, res: LdapResult) -> Result<LdapResult, LdapOpError> {
    if res.rc == 0 {
        return Ok(res);
    }
    Err(from_result(what, dn, &res))
}

/// The error for a server's non-success answer to `what` on `dn`.
pub fn from_result(what: &str, dn: &str, res: &LdapResult) -> LdapOpError {
    let mut kind = rc_kind(res.rc);
    // Samba answers an attribute missing from the schema with noSuchAttribute.
    if kind == LdapErrorKind::NoSuchAttribute && res.text.contains("schema") {
        kind = LdapErrorKind::UnknownAttribute;
    }
    LdapOpError {
        kind,
        rc: Some(res.rc),
        message: describe(what, dn, res),
    }
}

/// The error for a client-side failure of `what` on `dn` against `server`. `write` says the
/// request changes something: a write whose answer never came is in doubt, a read is only
/// transient.
pub fn from_client(what: &str, dn: &str, server: &str, err: LdapError, write: bool) -> LdapOpError {
    let lost = |why: &str| {
        let kind = if write {
            LdapErrorKind::InDoubt
        } else {
            LdapErrorKind::Transient
        };
        LdapOpError::new(
            kind,
            format!(
                "{what} {dn}: {why} ({server}){}",
                if write {
                    "; it may or may not have been applied"
                } else {
                    ""
                }
            ),
        )
    };
    match err {
        LdapError::LdapResult { result } => from_result(what, dn, &result),
        LdapError::Timeout { .. } => lost("no answer in time"),
        LdapError::ResultRecv { .. } | LdapError::EndOfStream | LdapError::IdScrubSend { .. } => {
            lost("the connection broke")
        }
        LdapError::OpSend { .. } | LdapError::Io { .. } => LdapOpError::new(
            LdapErrorKind::Transient,
            format!("{what} {dn}: cannot reach the directory server {server}: {err}"),
        ),
        LdapError::FilterParsing => LdapOpError::new(
            LdapErrorKind::Invalid,
            format!("{what} {dn}: the search filter does not parse"),
        ),
        other => LdapOpError::new(
            LdapErrorKind::Other,
            format!("{what} {dn}: {other} ({server})"),
        ),
    }
}
