//! The ldap backend of the directory provider: Active Directory (or Samba AD) and OpenLDAP
//! over LDAP v3 with ldap3, through a small pool of bound connections per server.
//! [`LdapBackend`] is the [`crate::directory::DirectoryBackend`]; [`LdapClient`] the LDAP
//! operations under it.

mod backend;
pub mod client;
pub mod error;

pub use backend::LdapBackend;
pub use client::{
    Flavour, LdapClient, LdapEntry, LdapMod, LdapScope, LdapSettings, OpCounts, TlsMode,
};
pub use error::{LdapErrorKind, LdapOpError};
