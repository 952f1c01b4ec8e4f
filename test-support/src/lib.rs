//! Support shared by the tests and benchmarks of the Provisio crates (a dev-dependency
//! only, never published): a private BIND `named` ([`bind::Named`]) for everything that
//! talks RFC 2136 to a real server, and the directory servers of the ldap backend: a private
//! OpenLDAP `slapd` ([`slapd::Slapd`]) and a Samba AD DC shared per test process
//! ([`samba::Samba`]); and a private Dovecot with Pigeonhole for the mail provider
//! ([`dovecot::Dovecot`]).

pub mod bind;
pub mod dovecot;
pub mod samba;
pub mod slapd;
