//! The seam between the DNS procedures and where zones live. The procedures validate
//! inputs and build undo records; a [`ZoneBackend`] stores zones. Today there is the
//! zone-file backend ([`super::zonefile::ZoneFileBackend`]); an RFC 2136 dynamic-update
//! backend can implement the same trait.

use super::record::{RData, Record};
use super::DnsError;
use async_trait::async_trait;
use std::net::IpAddr;

/// What CreateZone asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneSettings {
    /// Zone name, lowercase, no trailing dot.
    pub zone: String,
    /// Primary name server (SOA MNAME and the apex NS), absolute.
    pub primary_ns: String,
    /// Responsible mailbox as a name (SOA RNAME), absolute.
    pub admin: String,
    /// Default TTL (`$TTL`), also used for the SOA and NS records.
    pub ttl: u32,
    /// Address of the primary name server, written as A/AAAA when it is inside the zone.
    pub ns_address: Option<IpAddr>,
    /// SOA refresh, retry, expire, negative-caching TTL.
    pub timers: [u32; 4],
}

/// A zone's records as the backend holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneSnapshot {
    /// SOA serial.
    pub serial: u32,
    /// Default TTL for new records.
    pub default_ttl: u32,
    /// All records but the SOA, in canonical order.
    pub records: Vec<Record>,
}

/// Where zones are stored. Every method is atomic for one zone.
#[async_trait]
pub trait ZoneBackend: Send + Sync {
    /// Backend id (`zonefile`, later `rfc2136`).
    fn kind(&self) -> &'static str;

    /// Creates a zone; [`DnsError::ZoneExists`] if it is there. Returns the SOA serial
    /// and a human description of where it lives.
    async fn create_zone(&self, settings: &ZoneSettings) -> Result<(u32, String), DnsError>;

    /// Removes a zone for good (the undo of create). Absent is fine.
    async fn remove_zone(&self, zone: &str) -> Result<(), DnsError>;

    /// Takes a zone out of service, keeping a copy under `key` so it can be restored.
    /// Returns the token [`ZoneBackend::restore_zone`] needs.
    async fn delete_zone(&self, zone: &str, key: &str) -> Result<String, DnsError>;

    /// Puts back a zone taken out by [`ZoneBackend::delete_zone`]. Idempotent.
    async fn restore_zone(&self, zone: &str, token: &str) -> Result<(), DnsError>;

    /// True when the zone exists.
    async fn zone_exists(&self, zone: &str) -> Result<bool, DnsError>;

    /// The zone's records.
    async fn snapshot(&self, zone: &str) -> Result<ZoneSnapshot, DnsError>;

    /// Adds one record (TTL `None` = the zone default) and bumps the serial. Fails with
    /// [`DnsError::RecordExists`] for the same owner, type and data, and with
    /// [`DnsError::Conflict`] for a CNAME next to other data. Returns the record as
    /// stored and the new serial.
    async fn add_record(
        &self,
        zone: &str,
        owner: &str,
        ttl: Option<u32>,
        data: &RData,
    ) -> Result<(Record, u32), DnsError>;

    /// Removes the record with this owner and data (any TTL) and bumps the serial.
    /// Returns the record as it was stored and the new serial, or `None` if absent.
    async fn delete_record(
        &self,
        zone: &str,
        owner: &str,
        data: &RData,
    ) -> Result<Option<(Record, u32)>, DnsError>;
}
