//! Retention: finished transactions are kept for a configured time and/or count, then
//! pruned — their records, summary, index keys and pinned request — while their audit
//! entries stay until the audit's own, longer retention. [`prune`] is what `provisio tx
//! prune` runs on demand, what `run` runs (bounded) after each request when configured,
//! and what a daemon calls on a schedule. [`purge_scope`] tells providers which
//! transactions are over for good, for `provisio purge` (see [`crate::provider::Provider::purge`]).
//!
//! A full prune (no limit per call) that removed something tells the store
//! ([`Store::pruned`]): the sled store's file keeps its size after deletes, and is rewritten
//! smaller by `tx prune` once closed, or at its next open (`store/vacuum.rs`).
//!
//! Only committed and rolled-back transactions are ever pruned: a running, rolling-back,
//! `rollback_failed` or in-doubt one is never touched, whatever its age.

use super::index::{self, finished, prunable, IndexError};
use super::records::{now_ms, pinned_key, TxnSummary};
use crate::provider::{PurgeScope, TxnStatus};
use crate::store::{prefix_end, Batch, KeyRange, Space, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// What to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Finished transactions older than this (since they finished) are pruned; `None`: no
    /// age limit.
    pub max_age: Option<Duration>,
    /// At most this many finished transactions are kept, the newest; `None`: no count limit.
    pub max_count: Option<usize>,
    /// Audit entries older than this are pruned; `None`: kept forever.
    pub audit_max_age: Option<Duration>,
}

/// What [`prune`] removed (or, for a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pruned {
    /// The transactions removed, oldest first.
    pub transactions: Vec<TxnSummary>,
    /// Audit entries removed.
    pub audit_entries: usize,
    /// Store keys removed.
    pub keys: usize,
    /// The limit on transactions per call was reached: more may be due.
    pub more: bool,
}

/// Pruning failures.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The store or the index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl From<StoreError> for PruneError {
    fn from(e: StoreError) -> PruneError {
        PruneError::Index(e.into())
    }
}

/// Transactions looked at per store read.
const PAGE: usize = 256;
/// Journal keys deleted per write while removing one large transaction.
const KEYS_PER_WRITE: usize = 512;

/// Prunes what `retention` no longer keeps, as of `now_ms` (ms since the epoch): finished
/// (committed or rolled-back) transactions past its age or beyond its count, at most
/// `max_transactions` of them per call (the oldest first), and audit entries past the audit
/// age. With `dry_run` nothing is removed and the result says what would be. Each
/// transaction goes in writes that never leave a summary without its records: its journal
/// keys first (in bounded writes, so a 100,000-step transaction does not make one huge
/// batch), then its summary, index keys and pinned request together, durably.
pub async fn prune(
    store: &dyn Store,
    retention: &Retention,
    now_ms: u64,
    max_transactions: Option<usize>,
    dry_run: bool,
) -> Result<Pruned, PruneError> {
    let out = prune_unannounced(store, retention, now_ms, max_transactions, dry_run).await?;
    // A full prune (not the bounded one after each `run`) lets the store give the space
    // back: sled's file keeps its size otherwise (`store/vacuum.rs`).
    if !dry_run && max_transactions.is_none() && out.keys > 0 {
        store.pruned().await?;
    }
    Ok(out)
}

async fn prune_unannounced(
    store: &dyn Store,
    retention: &Retention,
    now_ms: u64,
    max_transactions: Option<usize>,
    dry_run: bool,
) -> Result<Pruned, PruneError> {
    index::ensure(store).await?;
    let mut out = Pruned::default();
    let budget = max_transactions.unwrap_or(usize::MAX);
    // Everything in the finish-time index below this key goes: past the age bound, or
    // older than the newest `max_count` (a transaction goes when either rule says so, so
    // the larger bound wins).
    let age_bound = retention.max_age.map(|age| {
        let ms = now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        index::finish_key(ms, "")
    });
    let count_bound = match retention.max_count {
        None => None,
        Some(keep) => Some(count_bound(store, keep)?),
    };
    let Some(bound) = age_bound.into_iter().chain(count_bound).max() else {
        return with_audit_pruned(store, retention, now_ms, dry_run, out).await;
    };
    let mut cursor: Option<Vec<u8>> = None;
    'scan: loop {
        let page = finished(store, cursor.as_deref(), Some(&bound), PAGE, false)?;
        if page.is_empty() {
            break;
        }
        for (key, id) in &page {
            cursor = Some(key.clone());
            if out.transactions.len() >= budget {
                out.more = true;
                break 'scan;
            }
            let Some(s) = index::summary(store, id)? else {
                // A key left by a crash after its transaction went: drop it.
                if !dry_run {
                    let mut b = Batch::new();
                    b.delete(Space::Index, key.clone());
                    store.write(b, false).await?;
                }
                continue;
            };
            if !prunable(s.state) {
                continue;
            }
            if !dry_run {
                out.keys += remove_transaction(store, &s).await?;
            }
            out.transactions.push(s);
        }
        if page.len() < PAGE {
            break;
        }
        if !dry_run {
            // One sync per page of transactions, not one per transaction (100,000 pruned
            // made 100,000 syncs). The removals reach the disk in the order they were
            // written, so a crash before the sync leaves a prefix of them: transactions
            // gone whole, at most one with part of its records gone and its summary still
            // there, which the next prune removes (the summary goes last).
            store.sync().await?;
        }
    }
    if !dry_run && !out.transactions.is_empty() {
        store.sync().await?;
    }
    with_audit_pruned(store, retention, now_ms, dry_run, out).await
}

/// The finish-index key below which transactions are older than the newest `keep` ones
/// (an empty key, below everything, when there are no more than `keep`).
fn count_bound(store: &dyn Store, keep: usize) -> Result<Vec<u8>, PruneError> {
    let mut cursor: Option<Vec<u8>> = None;
    let mut seen = 0usize;
    loop {
        let page = finished(store, cursor.as_deref(), None, PAGE, true)?;
        if page.is_empty() {
            return Ok(Vec::new());
        }
        if seen + page.len() > keep {
            // The newest one to prune; the bound is just past it.
            let mut bound = page[keep - seen].0.clone();
            bound.push(0);
            return Ok(bound);
        }
        seen += page.len();
        cursor = page.last().map(|(k, _)| k.clone());
    }
}

async fn with_audit_pruned(
    store: &dyn Store,
    retention: &Retention,
    now_ms: u64,
    dry_run: bool,
    mut out: Pruned,
) -> Result<Pruned, PruneError> {
    if let Some(age) = retention.audit_max_age {
        let bound = now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        out.audit_entries = prune_audit(store, bound, dry_run).await?;
        if !dry_run {
            out.keys += out.audit_entries;
        }
    }
    Ok(out)
}

/// Removes one transaction's keys, not durably yet; returns how many.
async fn remove_transaction(store: &dyn Store, s: &TxnSummary) -> Result<usize, PruneError> {
    let mut removed = 0;
    let prefix = s.id.as_bytes();
    let end = prefix_end(prefix);
    loop {
        let keys = store.scan_range(
            Space::Journal,
            KeyRange::new(prefix, end.as_deref()),
            KEYS_PER_WRITE,
            false,
        )?;
        if keys.is_empty() {
            break;
        }
        let mut b = Batch::new();
        for (k, _) in &keys {
            b.delete(Space::Journal, k.clone());
        }
        removed += keys.len();
        store.write(b, false).await?;
    }
    let mut b = Batch::new();
    b.delete(Space::Txns, prefix.to_vec());
    b.delete(Space::Definitions, pinned_key(&s.id));
    index::remove(&mut b, s);
    removed += 2 + index::keys_of(s).len();
    // Made durable by the caller, once per page.
    store.write(b, false).await?;
    Ok(removed)
}

/// Removes (or counts, with `dry_run`) the audit entries of transactions that finished
/// before `before_ms`.
async fn prune_audit(
    store: &dyn Store,
    before_ms: u64,
    dry_run: bool,
) -> Result<usize, PruneError> {
    let end = before_ms.to_be_bytes();
    let mut start: Vec<u8> = Vec::new();
    let mut n = 0;
    loop {
        let rows =
            store.scan_range(Space::Audit, KeyRange::new(&start, Some(&end)), PAGE, false)?;
        let Some((last, _)) = rows.last() else { break };
        n += rows.len();
        start = last.clone();
        start.push(0);
        if !dry_run {
            let mut b = Batch::new();
            for (k, _) in &rows {
                b.delete(Space::Audit, k.clone());
            }
            store.write(b, true).await?;
        }
        if rows.len() < PAGE {
            break;
        }
    }
    Ok(n)
}

/// The scope of a provider purge as of now: state kept for the undo of transactions that
/// ended (committed or rolled back) at least `older_than` ago may go; for a transaction the
/// journal does not know (pruned already, or run with `--ephemeral`), the age of the kept
/// item decides.
pub fn purge_scope(store: Arc<dyn Store>, older_than: Duration, dry_run: bool) -> PurgeScope {
    let status = move |txn: &str| match index::summary(&*store, txn) {
        Ok(Some(s)) if prunable(s.state) => TxnStatus::Over {
            finished_ms: s.updated_ms,
        },
        Ok(Some(_)) => TxnStatus::NotOver,
        Ok(None) => TxnStatus::Unknown,
        // Unreadable: keep what it holds.
        Err(_) => TxnStatus::NotOver,
    };
    PurgeScope::new(older_than, dry_run, now_ms(), Arc::new(status))
}
