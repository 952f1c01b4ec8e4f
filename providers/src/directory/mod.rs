//! The directory provider (`Active Directory Provider`): objects addressed by DN, their
//! properties, groups, searches and passwords, stored by a [`DirectoryBackend`]. The
//! embedded backend ([`EmbeddedBackend`]) keeps the directory in the engine's provider
//! state, so the quick start needs no server; the `ldap` backend talks to OpenLDAP, Samba
//! AD DC or Active Directory.
//!
//! DNs and filters are parsed and escaped here ([`dn`], [`filter`]), `sAMAccountName`s
//! derived and reserved here ([`sam`]), for every backend alike.

pub mod backend;
pub mod dn;
pub mod embedded;
pub mod filter;
pub mod ldap;
pub mod sam;
pub mod schema;

pub use backend::{
    AttrSelection, Attribute, DirError, DirectoryBackend, Entry, ModOp, Modification, OpContext,
    Password, Scope, SearchPage, SearchRequest,
};
pub use dn::{parse_path, to_path, AdsPath, Dn, Rdn};
pub use embedded::EmbeddedBackend;
pub use filter::Filter;

use std::sync::Arc;

/// The base DN the embedded directory uses when none is configured.
pub const DEFAULT_BASE_DN: &str = "DC=provisio,DC=local";

/// Which backend `[providers.directory] backend` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// Entries in the engine's provider state (no server).
    #[default]
    Embedded,
    /// An LDAP server (configured by `[providers.directory.ldap]`).
    Ldap,
}

/// The provider's settings, as `[providers.directory]` gives them.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// Which backend.
    pub backend: BackendKind,
    /// Every object must be under this DN.
    pub base_dn: Dn,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            backend: BackendKind::Embedded,
            base_dn: Dn::parse(DEFAULT_BASE_DN).expect("the default base DN parses"),
        }
    }
}

/// The directory provider; `name()` is `Directory`, its namespace `Active Directory
/// Provider`.
pub struct DirectoryProvider {
    backend: Arc<dyn DirectoryBackend>,
}

impl std::fmt::Debug for DirectoryProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryProvider")
            .field("backend", &self.backend.kind())
            .field("base_dn", &self.backend.base_dn().to_string())
            .finish()
    }
}

impl DirectoryProvider {
    /// The embedded directory under `base_dn`.
    pub fn embedded(base_dn: Dn) -> Result<DirectoryProvider, DirError> {
        Ok(Self::with_backend(Arc::new(EmbeddedBackend::new(base_dn)?)))
    }

    /// Any backend.
    pub fn with_backend(backend: Arc<dyn DirectoryBackend>) -> DirectoryProvider {
        DirectoryProvider { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn DirectoryBackend> {
        &self.backend
    }
}
