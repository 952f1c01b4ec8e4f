//! The seam between the DNS procedures and where zones live. The procedures validate
//! inputs and build undo records; a [`ZoneBackend`] stores zones: the zone-file backend
//! ([`super::zonefile::ZoneFileBackend`]) and the RFC 2136 dynamic-update backend
//! ([`super::rfc2136::Rfc2136Backend`]).
//!
//! Record changes return an optional [`RrsetGuard`] (the RRset before and after the
//! change). A backend shared with other writers (a DNS server) uses it on undo to refuse
//! to touch an RRset someone else changed meanwhile; the zone-file backend has none.
//!
//! ReplaceRecordSet goes through [`ZoneBackend::replace_rrset`], one atomic change of a
//! whole RRset that is also its own undo: given the set it expects to find, it refuses with
//! [`DnsError::Changed`] when someone else changed the RRset meanwhile, on every backend.
//!
//! After a crash, [`ZoneBackend::recover`] answers "was the call with this idempotency key
//! applied?" for an [`InDoubt`] call: the zone-file backend from the intent marker its
//! keyed writes leave, the RFC 2136 backend by asking the server.

use super::record::{describe_rrset, fqdn, RData, Record};
use super::DnsError;
use async_trait::async_trait;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Says whether recovery may still ask about a transaction (by id): true for one that is
/// not over, or whose rollback failed and may be resumed; false for one that committed or
/// rolled back, and for one the journal does not know.
pub type LiveTxns = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What [`ZoneBackend::sweep`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Temp files of writes that never finished (a crash, a full disk).
    pub temp_files: Vec<PathBuf>,
    /// Recovery records (intent markers) of calls whose transaction is over.
    pub markers: Vec<PathBuf>,
}

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
    /// The RRset's TTL before the change, when it existed (an add with another TTL
    /// changes the whole RRset's TTL on a server; its undo puts this one back).
    pub before_ttl: Option<u32>,
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

/// What an RRset is to hold after [`ZoneBackend::replace_rrset`].
#[derive(Debug, Clone, Copy)]
pub enum NewRrset<'a> {
    /// The data of a call, all with one TTL (`None`: the zone's default TTL).
    Data {
        /// The TTL.
        ttl: Option<u32>,
        /// The data, at least one, all of the RRset's type.
        data: &'a [RData],
    },
    /// Records as they were stored (the undo of a replace); empty: no RRset.
    Records(&'a [Record]),
}

impl NewRrset<'_> {
    /// The records of owner `owner`, the TTL resolved with the zone's `default_ttl`.
    pub fn resolve(&self, owner: &str, default_ttl: u32) -> Vec<Record> {
        match self {
            NewRrset::Data { ttl, data } => data
                .iter()
                .map(|d| Record {
                    owner: owner.to_string(),
                    ttl: ttl.unwrap_or(default_ttl),
                    data: d.clone(),
                })
                .collect(),
            NewRrset::Records(records) => records.to_vec(),
        }
    }
}

/// The outcome of [`ZoneBackend::replace_rrset`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    /// The RRset as it was (empty: there was none).
    pub before: Vec<Record>,
    /// The RRset as it is now.
    pub after: Vec<Record>,
    /// The zone's serial now.
    pub serial: u32,
    /// False when the RRset already was as asked and nothing was written.
    pub changed: bool,
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
    /// ReplaceRecordSet.
    ReplaceRecordSet {
        /// The zone.
        zone: &'a str,
        /// Owner relative to the zone.
        owner: &'a str,
        /// The type mnemonic (`A`, `TXT`, …).
        rtype: &'a str,
        /// Requested TTL (`None`: the zone default).
        ttl: Option<u32>,
        /// The data the RRset was to hold.
        data: &'a [RData],
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
    /// ReplaceRecordSet replaced the RRset `before` with `after`.
    Rrset {
        /// The RRset before (empty: there was none).
        before: Vec<Record>,
        /// The RRset the call wrote.
        after: Vec<Record>,
    },
}

/// Where zones are stored. Every method is atomic for one zone.
#[async_trait]
pub trait ZoneBackend: Send + Sync {
    /// Backend id (`zonefile`, later `rfc2136`).
    fn kind(&self) -> &'static str;

    /// The DNS server this backend changes, when it talks to one (the MPS procedures'
    /// `serverIdentifier` must name it); `None` for local zone files.
    fn server(&self) -> Option<std::net::SocketAddr> {
        None
    }

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

    /// Removes what the backend kept only for undo (copies of deleted zones, intent
    /// markers) for the transactions `scope` lets go. The default keeps nothing.
    async fn purge(
        &self,
        _scope: &provisio_engine::provider::PurgeScope,
    ) -> Result<provisio_engine::provider::Purged, DnsError> {
        Ok(provisio_engine::provider::Purged::default())
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

    /// The RRset of `owner` and type `rtype` (empty when absent) and the zone's default
    /// TTL; `None` when the zone does not exist.
    async fn read_rrset(
        &self,
        zone: &str,
        owner: &str,
        rtype: &str,
    ) -> Result<Option<(Vec<Record>, u32)>, DnsError> {
        if !self.zone_exists(zone).await? {
            return Ok(None);
        }
        let snap = self.snapshot(zone).await?;
        let set = snap
            .records
            .into_iter()
            .filter(|r| r.owner == owner && r.data.rtype() == rtype)
            .collect();
        Ok(Some((set, snap.default_ttl)))
    }

    /// Replaces the whole RRset of `owner` and type `rtype` with `new` in one atomic
    /// change and bumps the serial. With `expect`, only if the RRset is now exactly that
    /// set (data and TTLs; empty: absent), else [`DnsError::Changed`] and nothing is
    /// touched; an RRset already equal to `new` is fine either way and changes nothing
    /// (`changed: false`), which makes the undo idempotent. A CNAME next to other data is
    /// [`DnsError::Conflict`]. `key` is the idempotency key of a provider call (recovery
    /// markers), `None` for undo.
    async fn replace_rrset(
        &self,
        zone: &str,
        owner: &str,
        rtype: &str,
        _new: NewRrset<'_>,
        _expect: Option<&[Record]>,
        _key: Option<&str>,
    ) -> Result<Replaced, DnsError> {
        Err(DnsError::Unsupported(format!(
            "the {} DNS backend cannot replace RRsets ({} {rtype})",
            self.kind(),
            fqdn(zone, owner)
        )))
    }

    /// WriteBackZoneFile: makes the zone's file hold every change made so far (nothing to
    /// undo: the zone's data does not change). Returns what was done, for the output.
    async fn write_back(&self, zone: &str) -> Result<String, DnsError> {
        Err(DnsError::Unsupported(format!(
            "the {} DNS backend cannot write zone {zone} back to a file",
            self.kind()
        )))
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

    /// Removes what was kept for crash recovery that no live transaction owns (see
    /// [`LiveTxns`]), and the temp files of writes that never finished. Best effort per
    /// file; returns what was removed.
    async fn sweep(&self, _live: LiveTxns) -> Result<Swept, DnsError> {
        Ok(Swept::default())
    }

    /// Whether DeleteZone is possible (false: it fails with [`DnsError::Unsupported`]).
    fn deletes_zones(&self) -> bool {
        true
    }
}

/// The undo of a replace found the RRset neither as the replace left it nor restored.
pub(crate) fn rrset_changed(
    zone: &str,
    owner: &str,
    rtype: &str,
    expected: &[Record],
    found: &[Record],
) -> DnsError {
    DnsError::Changed(format!(
        "cannot restore {} {rtype}: the RRset was changed by someone else since this \
         transaction wrote it (expected {}, found {}); nothing was changed, fix the RRset by hand",
        fqdn(zone, owner),
        describe_rrset(expected),
        describe_rrset(found)
    ))
}
