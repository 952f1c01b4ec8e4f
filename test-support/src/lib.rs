//! Support shared by the tests and benchmarks of the Provisio crates (a dev-dependency
//! only, never published): a private BIND `named` ([`bind::Named`]) for everything that
//! talks RFC 2136 to a real server.

pub mod bind;
