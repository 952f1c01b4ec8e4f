//! The seam between the DNS procedures and where zones live. The procedures validate
//! inputs and build undo records; a [`ZoneBackend`] stores zones: the zone-file backend
//! ([`super::zonefile::ZoneFileBackend`]) and the RFC 2136 dynamic-update backend
//! ([`super::rfc2136::Rfc2136Backend`]).
//!
//! Record changes return an optional [`RrsetGuard`] (the RRset before and after the
//! change). A backend shared with other writers (a DNS server) uses it on undo to refuse
//! to touch an RRset someone else changed meanwhile; the zone-file backend has none.
//!
//! After a crash, [`ZoneBackend::recover`] answers "was the call with this idempotency key
//! applied?" for an [`InDoubt`] call: the zone-file backend from the intent marker its
//! keyed writes leave, the RFC 2136 backend by asking the server.

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

/// The data of one RRset (same owner and type) before and right after a change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RrsetGuard {
    /// The RRset's data before the change.
    pub before: Vec<RData>,
    /// The RRset's data right after the change: what undo expects to find.
    pub after: Vec<RData>,
}

/// A record change that was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The record as added or as it was before deletion.
    pub record: Record,
    /// The zone's serial after the change.
    pub serial: u32,
    /// The RRset around the change, when the backend checks it on undo.
    pub guard: Option<RrsetGuard>,
}

/// A write call whose outcome a crash left in doubt, as its (validated) inputs describe it.
#[derive(Debug, Clone, Copy)]
pub enum InDoubt<'a> {
    /// CreateZone of this zone.
    CreateZone {
        /// The zone.
        zone: &'a str,
    },
    /// DeleteZone of this zone.
    DeleteZone {
        /// The zone.
        zone: &'a str,
    },
    /// AddRecord.
    AddRecord {
        /// The zone.
        zone: &'a str,
        /// Owner relative to the zone (`@` for the apex).
        owner: &'a str,
        /// Requested TTL (`None`: the zone default).
        ttl: Option<u32>,
        /// The record data.
        data: &'a RData,
    },
    /// DeleteRecord.
    DeleteRecord {
        /// The zone.
        zone: &'a str,
        /// Owner relative to the zone.
        owner: &'a str,
        /// The record data.
        data: &'a RData,
    },
}

/// What [`ZoneBackend::recover`] found out about an [`InDoubt`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// The call changed nothing.
    NotApplied,
    /// CreateZone created (or, for a server backend, found) the zone.
    ZoneCreated,
    /// DeleteZone took the zone out; `token` is what [`ZoneBackend::restore_zone`] needs.
    ZoneDeleted {
        /// The deleted-copy token.
        token: String,
    },
    /// AddRecord added `record`, or DeleteRecord removed it (as it was stored).
    Record {
        /// The record added or removed.
        record: Record,
        /// The RRset around the change, when the backend checks it on undo.
        guard: Option<RrsetGuard>,
    },
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

    /// [`ZoneBackend::add_record`], also returning the [`RrsetGuard`] undo needs.
    async fn add_record_guarded(
        &self,
        zone: &str,
        owner: &str,
        ttl: Option<u32>,
        data: &RData,
    ) -> Result<Applied, DnsError> {
        let (record, serial) = self.add_record(zone, owner, ttl, data).await?;
        Ok(Applied {
            record,
            serial,
            guard: None,
        })
    }

    /// [`ZoneBackend::delete_record`], also returning the [`RrsetGuard`] undo needs.
    async fn delete_record_guarded(
        &self,
        zone: &str,
        owner: &str,
        data: &RData,
    ) -> Result<Option<Applied>, DnsError> {
        Ok(self
            .delete_record(zone, owner, data)
            .await?
            .map(|(record, serial)| Applied {
                record,
                serial,
                guard: None,
            }))
    }

    /// Undoes an add: removes exactly `record`. Idempotent (absent record or zone is
    /// fine). A backend with guards fails with [`DnsError::Changed`] when the RRset is
    /// neither as the add left it nor as it was before.
    async fn undo_add(
        &self,
        zone: &str,
        record: &Record,
        _guard: Option<&RrsetGuard>,
    ) -> Result<(), DnsError> {
        match self.delete_record(zone, &record.owner, &record.data).await {
            Ok(_) | Err(DnsError::ZoneNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Undoes a delete: adds `record` back with its TTL. Idempotent (present is fine).
    async fn undo_delete(
        &self,
        zone: &str,
        record: &Record,
        _guard: Option<&RrsetGuard>,
    ) -> Result<(), DnsError> {
        match self
            .add_record(zone, &record.owner, Some(record.ttl), &record.data)
            .await
        {
            Ok(_) | Err(DnsError::RecordExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether a record with this owner and data exists; `None` when the zone does not.
    async fn record_exists(
        &self,
        zone: &str,
        owner: &str,
        data: &RData,
    ) -> Result<Option<bool>, DnsError> {
        if !self.zone_exists(zone).await? {
            return Ok(None);
        }
        let snap = self.snapshot(zone).await?;
        Ok(Some(
            snap.records
                .iter()
                .any(|r| r.owner == owner && &r.data == data),
        ))
    }

    /// [`ZoneBackend::create_zone`] for the call with idempotency key `key`: a backend that
    /// answers [`ZoneBackend::recover`] leaves its intent marker under the key.
    async fn create_zone_keyed(
        &self,
        settings: &ZoneSettings,
        _key: &str,
    ) -> Result<(u32, String), DnsError> {
        self.create_zone(settings).await
    }

    /// [`ZoneBackend::add_record_guarded`] for the call with idempotency key `key`.
    async fn add_record_keyed(
        &self,
        zone: &str,
        owner: &str,
        ttl: Option<u32>,
        data: &RData,
        _key: &str,
    ) -> Result<Applied, DnsError> {
        self.add_record_guarded(zone, owner, ttl, data).await
    }

    /// [`ZoneBackend::delete_record_guarded`] for the call with idempotency key `key`.
    async fn delete_record_keyed(
        &self,
        zone: &str,
        owner: &str,
        data: &RData,
        _key: &str,
    ) -> Result<Option<Applied>, DnsError> {
        self.delete_record_guarded(zone, owner, data).await
    }

    /// After a crash: was the call with idempotency key `key` applied? A backend that
    /// cannot tell keeps this default ([`DnsError::Unsupported`]: an operator decides).
    async fn recover(&self, key: &str, call: &InDoubt<'_>) -> Result<Recovered, DnsError> {
        Err(DnsError::Unsupported(format!(
            "the {} DNS backend cannot tell whether {call:?} ({key}) was applied; check it by hand",
            self.kind()
        )))
    }

    /// Forgets what was kept for recovering the call `key` (after its undo). Best effort.
    async fn forget(&self, _key: &str) {}

    /// Whether DeleteZone is possible (false: it fails with [`DnsError::Unsupported`]).
    fn deletes_zones(&self) -> bool {
        true
    }
}
