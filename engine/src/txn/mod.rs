//! Transactions made durable: the journal records every step before and after its provider
//! call in a [`Store`](crate::Store), secrets sealed; recovery finishes whatever a
//! crash left running; inspection reads it back for `provisio tx`.

pub mod index;
#[cfg(test)]
mod inspect_tests;
pub(crate) mod journal;
pub mod listing;
pub(crate) mod packed;
pub mod records;
pub mod recovery;
pub mod retention;
pub(crate) mod seal;
pub(crate) mod state;
pub mod stream;
#[cfg(feature = "test-util")]
pub mod synthetic;

pub use journal::{DurableJournal, GuardError, ResponseError, StoredDataError, WriteError};
pub use records::{
    AuditEntry, Guarded, PinnedDefinitions, Record, StoredData, StoredResponse, TxnSummary,
};
pub use recovery::{recover, resolve_step, resume_rollback, Recovered, RecoveryError, Resolution};
pub use seal::{SealError, SealKey};
pub use state::UnknownState;
