//! The directory provider (Active Directory Provider).

pub mod ldap;
