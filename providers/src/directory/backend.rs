//! The seam between the directory procedures and where the directory lives. The
//! procedures parse inputs, derive `sAMAccountName`s, build undo records and answer
//! `plan`; a [`DirectoryBackend`] stores entries: the embedded backend
//! ([`super::embedded::EmbeddedBackend`], provider state) or an LDAP server (the `ldap`
//! backend: OpenLDAP, Samba AD DC, Active Directory).
//!
//! Every method takes an [`OpContext`]: the call's provider-state handle (the embedded
//! backend keeps its entries there, an LDAP backend may keep nothing), its idempotency
//! key and the domain controller the call asked for. Methods report failures as a
//! [`DirError`], whose class decides what the engine does (retry, roll back, settle);
//! each names the object's DN.
//!
//! The behaviour every backend must show is written down once, as the test suite in
//! `providers/tests/directory_behaviour.rs`: a backend is added there with one line.

use super::dn::Dn;
use super::filter::Filter;
use async_trait::async_trait;
use provisio_engine::provider::ProviderError;
use provisio_engine::ProviderState;
use serde::{Deserialize, Serialize};
use std::fmt;

/// ERROR_DS_NO_SUCH_OBJECT as an HRESULT.
pub const E_NO_SUCH_OBJECT: u32 = 0x8007_2030;
/// ERROR_OBJECT_ALREADY_EXISTS as an HRESULT (what ADSI reports for an existing DN).
pub const E_ALREADY_EXISTS: u32 = 0x8007_1392;
/// ERROR_DS_NO_ATTRIBUTE_OR_VALUE.
pub const E_NO_ATTRIBUTE_OR_VALUE: u32 = 0x8007_200A;
/// ERROR_DS_ATTRIBUTE_TYPE_UNDEFINED.
pub const E_ATTRIBUTE_UNDEFINED: u32 = 0x8007_200C;
/// ERROR_DS_OBJ_CLASS_VIOLATION.
pub const E_OBJ_CLASS_VIOLATION: u32 = 0x8007_2014;
/// ERROR_DS_CANT_ON_NON_LEAF.
pub const E_NOT_LEAF: u32 = 0x8007_2015;
/// ERROR_DS_CONSTRAINT_VIOLATION.
pub const E_CONSTRAINT_VIOLATION: u32 = 0x8007_202F;
/// ERROR_DS_UNWILLING_TO_PERFORM.
pub const E_UNWILLING: u32 = 0x8007_2035;
/// ERROR_DS_SERVER_DOWN.
pub const E_SERVER_DOWN: u32 = 0x8007_203A;
/// ERROR_DS_BUSY.
pub const E_BUSY: u32 = 0x8007_200E;
/// ERROR_DS_ATTRIBUTE_OR_VALUE_EXISTS.
pub const E_VALUE_EXISTS: u32 = 0x8007_200D;
/// ERROR_DS_NAMING_VIOLATION (a DN outside the configured base, a wrong RDN type).
pub const E_NAMING_VIOLATION: u32 = 0x8007_2016;
/// ERROR_INVALID_PASSWORD-like: the old password given to a change did not match.
pub const E_WRONG_PASSWORD: u32 = 0x8007_0056;

/// One attribute and its values, the name as the directory spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    /// The attribute name (`sAMAccountName`); compared case-insensitively.
    pub name: String,
    /// Its values, in order (binary values are base64 text, an LDAP backend's choice).
    pub values: Vec<String>,
}

impl Attribute {
    /// An attribute with values.
    pub fn new(name: impl Into<String>, values: Vec<String>) -> Attribute {
        Attribute {
            name: name.into(),
            values,
        }
    }
}

/// An entry as read: its DN and its attributes (only those asked for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry's DN.
    #[serde(with = "dn_text")]
    pub dn: Dn,
    /// Its attributes (names unique, case-insensitively).
    pub attributes: Vec<Attribute>,
}

impl Entry {
    /// The values of an attribute (case-insensitive name), `None` when absent.
    pub fn get(&self, name: &str) -> Option<&[String]> {
        self.attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
            .map(|a| a.values.as_slice())
    }

    /// The first value of an attribute.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.first()).map(String::as_str)
    }

    /// Whether `objectClass` holds `class` (case-insensitive).
    pub fn has_class(&self, class: &str) -> bool {
        self.get("objectClass")
            .is_some_and(|v| v.iter().any(|c| c.eq_ignore_ascii_case(class)))
    }
}

/// Serde of a [`Dn`] as its RFC 4514 text.
pub(crate) mod dn_text {
    use super::Dn;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(dn: &Dn, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&dn.to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Dn, D::Error> {
        let t = String::deserialize(d)?;
        Dn::parse(&t).map_err(serde::de::Error::custom)
    }
}

/// What a modification does to one attribute (the `@mode` of a Set Properties property).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModOp {
    /// Adds the values (an attribute that is absent is created; a value already present is
    /// an error, as in LDAP).
    Add,
    /// Replaces all values with these (no values: removes the attribute).
    Replace,
    /// Removes these values (each must be present).
    Delete,
    /// Removes the attribute with all its values (absent: nothing happens).
    Clear,
}

impl ModOp {
    /// Reads an MPS/HMC mode: `add`/`append`, `replace`/`update`/`set`, `delete`/`remove`,
    /// `clear` (any case).
    pub fn parse(text: &str) -> Option<ModOp> {
        match text.trim().to_ascii_lowercase().as_str() {
            "add" | "append" => Some(ModOp::Add),
            "replace" | "update" | "set" | "" => Some(ModOp::Replace),
            "delete" | "remove" => Some(ModOp::Delete),
            "clear" => Some(ModOp::Clear),
            _ => None,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ModOp::Add => "add",
            ModOp::Replace => "replace",
            ModOp::Delete => "delete",
            ModOp::Clear => "clear",
        }
    }
}

/// One change of one attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Modification {
    /// What to do.
    pub op: ModOp,
    /// The attribute.
    pub attr: String,
    /// The values (none for [`ModOp::Clear`]).
    pub values: Vec<String>,
}

/// Which attributes a read returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AttrSelection {
    /// All user attributes (LDAP `*`), plus `memberOf` where the directory computes it.
    #[default]
    All,
    /// Just these (case-insensitive; unknown names are simply absent from the answer).
    Only(Vec<String>),
}

impl AttrSelection {
    /// Whether `name` is selected.
    pub fn wants(&self, name: &str) -> bool {
        match self {
            AttrSelection::All => true,
            AttrSelection::Only(v) => v.iter().any(|a| a.eq_ignore_ascii_case(name) || a == "*"),
        }
    }

    /// The LDAP attribute list (`*` for all).
    pub fn to_ldap(&self) -> Vec<String> {
        match self {
            AttrSelection::All => vec!["*".into(), "memberOf".into()],
            AttrSelection::Only(v) => v.clone(),
        }
    }
}

/// How far a search reaches below its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The base entry only.
    Base,
    /// The base's children (not the base).
    OneLevel,
    /// The base and everything below it.
    Subtree,
}

impl Scope {
    /// Reads `base`, `onelevel`/`one`/`one-level`/`oneLevel`, `subtree`/`sub` (any case).
    pub fn parse(text: &str) -> Option<Scope> {
        match text
            .trim()
            .to_ascii_lowercase()
            .replace(['-', '_'], "")
            .as_str()
        {
            "base" => Some(Scope::Base),
            "onelevel" | "one" | "level" => Some(Scope::OneLevel),
            "subtree" | "sub" | "" => Some(Scope::Subtree),
            _ => None,
        }
    }
}

/// A search.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// Where it starts.
    pub base: Dn,
    /// How far down.
    pub scope: Scope,
    /// What must match (already parsed: values escaped by construction).
    pub filter: Filter,
    /// What to return of each entry.
    pub attrs: AttrSelection,
    /// At most this many entries per page (`None`: all, up to the backend's size limit).
    pub page_size: Option<u32>,
    /// The cookie of the previous page (`None`: the first page).
    pub cookie: Option<String>,
}

/// One page of a search.
#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    /// The entries, in a stable order.
    pub entries: Vec<Entry>,
    /// The cookie for the next page; `None` when this was the last.
    pub cookie: Option<String>,
}

/// A password in clear, only ever held in memory: `Debug` and `Display` print
/// `********`, and it has no `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a clear-text password.
    pub fn new(clear: impl Into<String>) -> Password {
        Password(clear.into())
    }

    /// The clear text, for the one place that must send or hash it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(********)")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

/// What a backend call needs to know about the provider call it serves.
#[derive(Debug, Clone)]
pub struct OpContext {
    /// The call's provider state (writable in `execute` of a write procedure).
    pub state: ProviderState,
    /// The call's idempotency key (`txn/step`).
    pub key: String,
    /// The domain controller the call asked for (`preferredDomainController`), if any.
    pub server: Option<String>,
}

impl OpContext {
    /// A context for a call.
    pub fn new(state: ProviderState, key: impl Into<String>, server: Option<String>) -> Self {
        OpContext {
            state,
            key: key.into(),
            server,
        }
    }
}

/// A directory error. Every variant that concerns an object names its DN; the class
/// (see [`DirError::is_transient`] and the `ProviderError` conversion) decides whether the
/// engine retries (transient), rolls back (permanent) or settles (in doubt).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirError {
    /// Bad input that names no object (a malformed DN, filter or mode).
    #[error("{0}")]
    Invalid(String),
    /// The object does not exist (LDAP noSuchObject).
    #[error("{dn} does not exist")]
    NoSuchObject {
        /// The object.
        dn: String,
    },
    /// An object with this DN exists already (LDAP entryAlreadyExists).
    #[error("{dn} already exists (an object with this name is already in {container})")]
    AlreadyExists {
        /// The object.
        dn: String,
        /// Its container.
        container: String,
    },
    /// The parent of a new or moved object does not exist.
    #[error("cannot create {dn}: its container {parent} does not exist")]
    ParentMissing {
        /// The object.
        dn: String,
        /// The missing parent.
        parent: String,
    },
    /// The DN is not under the base DN the provider is configured for.
    #[error("{dn} is outside the directory's base {base}")]
    OutsideBase {
        /// The object.
        dn: String,
        /// The configured base DN.
        base: String,
    },
    /// The attribute is not in the schema, or not allowed for the object's classes.
    #[error("{dn}: unknown attribute {attribute}{hint}")]
    UnknownAttribute {
        /// The object.
        dn: String,
        /// The attribute.
        attribute: String,
        /// Extra words (the allowed classes, a spelling suggestion), starting with `: ` or empty.
        hint: String,
    },
    /// The object class is not in the schema.
    #[error("{dn}: unknown object class {class}{hint}")]
    UnknownClass {
        /// The object.
        dn: String,
        /// The class.
        class: String,
        /// Extra words (the known classes), starting with `: ` or empty.
        hint: String,
    },
    /// The change breaks the object's class rules (a required attribute missing, a wrong
    /// naming attribute, a single-valued attribute given two values).
    #[error("{dn}: {message}")]
    ObjectClassViolation {
        /// The object.
        dn: String,
        /// What rule.
        message: String,
    },
    /// A constraint of the directory (a value already present or absent, a unique value
    /// taken, a password rule).
    #[error("{dn}: {message}")]
    ConstraintViolation {
        /// The object.
        dn: String,
        /// What constraint.
        message: String,
    },
    /// Delete of an object that has children, without `recursive`.
    #[error("{dn} has child objects; delete them first or ask for a recursive delete")]
    NotLeaf {
        /// The object.
        dn: String,
    },
    /// The old password given to a password change is not the current one.
    #[error("{dn}: the old password is not correct")]
    WrongPassword {
        /// The object.
        dn: String,
    },
    /// Worth retrying: the server is down, busy, timed out before the request was sent, a
    /// provider-state key stayed locked.
    #[error("{dn}: {message}")]
    Transient {
        /// The object (or the server, when no object is concerned).
        dn: String,
        /// What happened.
        message: String,
    },
    /// The server refused for good (insufficient access, unwilling to perform, a
    /// connection the server will never accept).
    #[error("{dn}: {message}")]
    Refused {
        /// The object.
        dn: String,
        /// The server's words.
        message: String,
    },
    /// The request was sent and its answer lost: it may or may not have been applied. The
    /// engine settles it through the provider's `recover`.
    #[error("{dn}: {message}")]
    InDoubt {
        /// The object.
        dn: String,
        /// What happened.
        message: String,
    },
    /// Provider state failed (the embedded backend's store, a lock wait, a deadlock).
    #[error("{dn}: {source}")]
    State {
        /// The object.
        dn: String,
        /// The state error.
        source: provisio_engine::StateError,
    },
}

impl DirError {
    /// A [`DirError::State`] for an object.
    pub fn state(dn: &Dn, source: provisio_engine::StateError) -> DirError {
        DirError::State {
            dn: dn.to_string(),
            source,
        }
    }

    /// Whether retrying may help.
    pub fn is_transient(&self) -> bool {
        match self {
            DirError::Transient { .. } => true,
            DirError::State { source, .. } => matches!(
                ProviderError::from(source.clone()),
                ProviderError::Transient { .. }
            ),
            _ => false,
        }
    }

    /// The HRESULT the error is reported with.
    pub fn code(&self) -> u32 {
        match self {
            DirError::Invalid(_) => ProviderError::E_INVALIDARG,
            DirError::NoSuchObject { .. } | DirError::ParentMissing { .. } => E_NO_SUCH_OBJECT,
            DirError::AlreadyExists { .. } => E_ALREADY_EXISTS,
            DirError::OutsideBase { .. } => E_NAMING_VIOLATION,
            DirError::UnknownAttribute { .. } => E_ATTRIBUTE_UNDEFINED,
            DirError::UnknownClass { .. } | DirError::ObjectClassViolation { .. } => {
                E_OBJ_CLASS_VIOLATION
            }
            DirError::ConstraintViolation { .. } => E_CONSTRAINT_VIOLATION,
            DirError::NotLeaf { .. } => E_NOT_LEAF,
            DirError::WrongPassword { .. } => E_WRONG_PASSWORD,
            DirError::Transient { .. } => E_SERVER_DOWN,
            DirError::Refused { .. } => E_UNWILLING,
            DirError::InDoubt { .. } | DirError::State { .. } => ProviderError::E_FAIL,
        }
    }
}

impl From<DirError> for ProviderError {
    fn from(e: DirError) -> ProviderError {
        let code = e.code();
        let message = e.to_string();
        match e {
            DirError::Transient { .. } => ProviderError::Transient { code, message },
            DirError::InDoubt { .. } => ProviderError::InDoubt { code, message },
            DirError::State { source, .. } => match ProviderError::from(source) {
                ProviderError::Transient { code, .. } => ProviderError::Transient { code, message },
                p => ProviderError::Permanent {
                    code: p.code(),
                    message,
                },
            },
            _ => ProviderError::Permanent { code, message },
        }
    }
}

/// Where directory entries live. Implemented by the embedded backend (provider state)
/// and the `ldap` backend; the procedures never talk to a directory any other way.
///
/// Contract for every method:
/// - DNs are full DNs under [`DirectoryBackend::base_dn`]; a DN outside it is
///   [`DirError::OutsideBase`], checked before anything is sent.
/// - `Ok` means applied. [`DirError::Transient`] and the permanent classes mean *not
///   applied*. [`DirError::InDoubt`] means the request left and no answer came.
/// - Attribute names compare case-insensitively; values are text.
/// - Passwords are never logged, stored in clear, or put into an error message.
#[async_trait]
pub trait DirectoryBackend: Send + Sync {
    /// `embedded` or `ldap` (for messages and `Debug`).
    fn kind(&self) -> &'static str;

    /// The base DN every object must be under.
    fn base_dn(&self) -> &Dn;

    /// Whether every effect of this backend lives in provider state (the embedded
    /// backend). Then the engine's own reversal of a step's state writes *is* the undo
    /// (the provider's `undo` has nothing to do), and a call left in doubt was not applied
    /// (its proposed writes died with the attempt). An LDAP backend returns `false`.
    fn state_backed(&self) -> bool {
        false
    }

    /// Makes sure the base entry exists: the embedded backend creates it (a `domain` for
    /// `DC=`, an `organizationalUnit` for `OU=`, a `container` for `CN=`); an LDAP backend
    /// checks that it can read it. Called by the `Initialize` procedure; the embedded
    /// backend also calls it itself when a child of the base is added first.
    async fn ensure_base(&self, ctx: &OpContext) -> Result<(), DirError>;

    /// Adds an entry with these attributes (`objectClass` among them). The parent must
    /// exist; the DN must be free ([`DirError::AlreadyExists`]). The RDN's attribute is
    /// added to the attributes if missing.
    async fn add(&self, ctx: &OpContext, dn: &Dn, attributes: &[Attribute])
        -> Result<(), DirError>;

    /// Deletes a leaf entry ([`DirError::NotLeaf`] when it has children). Group
    /// memberships of the entry go with it.
    async fn delete(&self, ctx: &OpContext, dn: &Dn) -> Result<(), DirError>;

    /// Applies the modifications in order, all or none.
    async fn modify(&self, ctx: &OpContext, dn: &Dn, mods: &[Modification])
        -> Result<(), DirError>;

    /// Renames and/or moves an entry (with its subtree): the new RDN, and the new parent
    /// when moving. Returns the new DN. The old RDN value is not kept as an extra value
    /// (LDAP `deleteoldrdn: 1`); group memberships follow the entry.
    async fn modify_dn(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        new_rdn: &super::dn::Rdn,
        new_parent: Option<&Dn>,
    ) -> Result<Dn, DirError>;

    /// Reads one entry (an LDAP base search with `(objectClass=*)`); `None` when it does
    /// not exist. `memberOf` is included under [`AttrSelection::All`] or when asked for.
    /// Password attributes are never returned.
    async fn read(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        attrs: &AttrSelection,
    ) -> Result<Option<Entry>, DirError>;

    /// Searches. A base that does not exist is [`DirError::NoSuchObject`]. Pages are
    /// `page_size` entries (the LDAP simple paged results control, or the embedded
    /// backend's key order); the cookie is opaque text.
    async fn search(
        &self,
        ctx: &OpContext,
        request: &SearchRequest,
    ) -> Result<SearchPage, DirError>;

    /// The DN of the account whose `sAMAccountName` is `sam` (case-insensitive), if any.
    /// The default searches the base subtree; a backend with an index answers from it.
    async fn find_account(&self, ctx: &OpContext, sam: &str) -> Result<Option<Dn>, DirError> {
        let page = self
            .search(
                ctx,
                &SearchRequest {
                    base: self.base_dn().clone(),
                    scope: Scope::Subtree,
                    filter: Filter::equal("sAMAccountName", sam),
                    attrs: AttrSelection::Only(vec!["sAMAccountName".into()]),
                    page_size: Some(2),
                    cookie: None,
                },
            )
            .await?;
        Ok(page.entries.into_iter().next().map(|e| e.dn))
    }

    /// Sets a password without knowing the old one (an administrator's reset: AD
    /// `unicodePwd` replace over LDAPS, OpenLDAP the password modify extended operation,
    /// embedded a salted hash).
    async fn set_password(&self, ctx: &OpContext, dn: &Dn, new: &Password) -> Result<(), DirError>;

    /// Changes a password given the old one ([`DirError::WrongPassword`] when it does not
    /// match; AD: `unicodePwd` delete old + add new in one modify).
    async fn change_password(
        &self,
        ctx: &OpContext,
        dn: &Dn,
        old: &Password,
        new: &Password,
    ) -> Result<(), DirError>;
}
