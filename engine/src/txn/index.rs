//! Indexes over the transaction summaries, so that `tx list` pages through a million
//! transactions, `tx prune` finds the expired ones, recovery finds the unfinished ones and
//! the daemon does all of it without reading every summary. They live in [`Space::Index`], hold no data of their own (every key ends in
//! a transaction id whose summary is the truth) and are rebuilt from the summaries when
//! missing ([`ensure`]), so a journal written before them is indexed on first use.
//!
//! Keys (big-endian times sort numerically):
//! - `b` ‖ started ms ‖ id — every transaction, by start time;
//! - `s` ‖ state ‖ `\0` ‖ started ms ‖ id — by state (moved at every state change);
//! - `p` ‖ `Namespace/Procedure` ‖ `\0` ‖ started ms ‖ id — by procedure;
//! - `w` ‖ who ‖ `\0` ‖ started ms ‖ id — by subject;
//! - `f` ‖ finished ms ‖ id — committed and rolled-back transactions (the only ones
//!   retention may remove), by finish time.
//!
//! A listing verifies every key it follows against the summary, so a key left behind (by
//! a crash between a rebuild and a state change) costs a read, never a wrong line.

use super::records::{decode, DecodeError, TxnSummary, TXN_ID_LEN};
use crate::exec::TxnState;
use crate::store::{prefix_end, Batch, KeyRange, Space, Store, StoreError};

/// The key in [`Space::Meta`] saying the index is built, and in which layout.
const BUILT_KEY: &[u8] = b"txn-index";
/// The layout of the keys above.
const LAYOUT: &[u8] = b"1";

const BY_START: u8 = b'b';
const BY_STATE: u8 = b's';
const BY_PROCEDURE: u8 = b'p';
const BY_SUBJECT: u8 = b'w';
const BY_FINISH: u8 = b'f';

/// Index failures.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A summary does not read.
    #[error("the summary of transaction {txn} cannot be read: {source}")]
    Summary {
        /// Transaction.
        txn: String,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// A value JSON cannot hold.
    #[error("cannot encode the index state: {0}")]
    Encode(String),
}

/// Whether retention may remove a transaction in this state: it is over and nothing about
/// it can change any more (a `rollback_failed` one may still be resumed or resolved).
pub(crate) fn prunable(state: TxnState) -> bool {
    matches!(state, TxnState::Committed | TxnState::RolledBack)
}

fn keyed(tag: u8, field: Option<&str>, ms: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + field.map_or(0, str::len) + 8 + id.len());
    k.push(tag);
    if let Some(f) = field {
        k.extend_from_slice(f.as_bytes());
        k.push(0);
    }
    k.extend_from_slice(&ms.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn state_key(s: &TxnSummary, state: TxnState) -> Vec<u8> {
    keyed(BY_STATE, Some(state.name()), s.started_ms, s.id.as_str())
}

/// Every index key of a transaction with this summary.
pub(crate) fn keys_of(s: &TxnSummary) -> Vec<Vec<u8>> {
    let mut keys = vec![
        keyed(BY_START, None, s.started_ms, s.id.as_str()),
        state_key(s, s.state),
        keyed(BY_PROCEDURE, Some(&s.target), s.started_ms, s.id.as_str()),
        keyed(BY_SUBJECT, Some(&s.who), s.started_ms, s.id.as_str()),
    ];
    if prunable(s.state) {
        keys.push(keyed(BY_FINISH, None, s.updated_ms, s.id.as_str()));
    }
    keys
}

/// Adds to `batch` the index changes for a summary being written: all its keys when it is
/// new (`previous` is `None`), else the move of its state key (and its finish key once it
/// is over). Each key is put once per state a transaction passes through, and a state key
/// is deleted only when the transaction leaves that state, which keeps the promise of a
/// batch whose deletes cancel puts (the journal's final write of a transaction).
pub(crate) fn summary_written(batch: &mut Batch, previous: Option<TxnState>, s: &TxnSummary) {
    match previous {
        None => {
            for k in keys_of(s) {
                batch.put(Space::Index, k, Vec::new());
            }
        }
        Some(before) if before != s.state => {
            batch.delete(Space::Index, state_key(s, before));
            batch.put(Space::Index, state_key(s, s.state), Vec::new());
            if prunable(s.state) {
                batch.put(
                    Space::Index,
                    keyed(BY_FINISH, None, s.updated_ms, s.id.as_str()),
                    Vec::new(),
                );
            }
        }
        Some(_) => {}
    }
}

/// The key in [`Space::Meta`] that every removal of a transaction changes (to a value never
/// used before), in the batch that removes it: the listing files (`txn::listing`) remember
/// it, and bring themselves up to date from what changed since they were written when no
/// transaction was removed meanwhile, or when the removals since are all known (the sled
/// store's write logs them and sets this key to a mark of its own: `listing::log_removals`).
pub(crate) const REMOVED_KEY: &[u8] = b"txn-removed";

/// Adds to `batch` the deletes of every index key of a transaction being removed, and the
/// change of [`REMOVED_KEY`].
pub(crate) fn remove(batch: &mut Batch, s: &TxnSummary) {
    for k in keys_of(s) {
        batch.delete(Space::Index, k);
    }
    batch.put(
        Space::Meta,
        REMOVED_KEY.to_vec(),
        uuid::Uuid::now_v7().to_string().into_bytes(),
    );
}

/// Every transaction started at or after `from_ms` (by its start-time index key), oldest
/// first: at most `limit` (start ms, id) pairs, continuing past `after` (a pair this
/// returned) when given.
pub(crate) fn started_since(
    store: &dyn Store,
    from_ms: u64,
    after: Option<(u64, &str)>,
    limit: usize,
) -> Result<Vec<(u64, String)>, StoreError> {
    let mut start = match after {
        Some((ms, id)) => {
            let mut k = keyed(BY_START, None, ms, id);
            k.push(0);
            k
        }
        None => keyed(BY_START, None, from_ms, ""),
    };
    if start < keyed(BY_START, None, from_ms, "") {
        start = keyed(BY_START, None, from_ms, "");
    }
    Ok(store
        .scan_range(
            Space::Index,
            KeyRange::new(&start, Some(&[BY_START + 1])),
            limit,
            false,
        )?
        .into_iter()
        .filter_map(|(k, _)| {
            let ms = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
            let id = String::from_utf8(k.get(9..)?.to_vec()).ok()?;
            Some((ms, id))
        })
        .collect())
}

/// Summaries read per write while building the index.
const BUILD_PAGE: usize = 1024;

/// Builds the index from the summaries unless it is there (one read when it is). Call it
/// before reading the index; a journal written before indexes existed is indexed here,
/// once. Returns how many summaries were indexed.
pub async fn ensure(store: &dyn Store) -> Result<usize, IndexError> {
    if is_built(store)? {
        return Ok(0);
    }
    let mut indexed = 0;
    let mut from: Vec<u8> = Vec::new();
    loop {
        let page = store.scan_range(Space::Txns, KeyRange::new(&from, None), BUILD_PAGE, false)?;
        let Some((last, _)) = page.last() else { break };
        from = last.clone();
        from.push(0);
        let mut batch = Batch::new();
        for (k, v) in &page {
            let s = read_summary(k, v)?;
            for key in keys_of(&s) {
                batch.put(Space::Index, key, Vec::new());
            }
            indexed += 1;
        }
        store.write(batch, false).await?;
        if page.len() < BUILD_PAGE {
            break;
        }
    }
    let mut done = Batch::new();
    done.put(Space::Meta, BUILT_KEY.to_vec(), LAYOUT.to_vec());
    store.write(done, true).await?;
    if indexed > 0 {
        tracing::info!(transactions = indexed, "indexed the journal's transactions");
    }
    Ok(indexed)
}

/// Whether the index is built ([`ensure`] has run on this store): one read.
pub fn is_built(store: &dyn Store) -> Result<bool, StoreError> {
    Ok(store.get(Space::Meta, BUILT_KEY)?.as_deref() == Some(LAYOUT))
}

/// Every transaction now in `state`, oldest first, through the state index, which must be
/// built ([`ensure`], [`is_built`]): reads that state's keys and their summaries only, a page
/// at a time, so recovery's look for unfinished transactions costs what it finds, not the
/// journal. A key left behind (its summary moved on or is gone) is skipped.
pub fn in_state(store: &dyn Store, state: TxnState) -> Result<Vec<TxnSummary>, IndexError> {
    let mut prefix = vec![BY_STATE];
    prefix.extend_from_slice(state.name().as_bytes());
    prefix.push(0);
    // The prefix ends in a zero byte, so there is a first key past it.
    let end = prefix_end(&prefix).unwrap_or_else(|| vec![BY_STATE + 1]);
    let mut from = prefix;
    let mut out = Vec::new();
    loop {
        let keys = store.scan_range(
            Space::Index,
            KeyRange::new(&from, Some(&end)),
            LIST_PAGE,
            false,
        )?;
        for (k, _) in &keys {
            let Some(id) = k.len().checked_sub(TXN_ID_LEN).and_then(|i| k.get(i..)) else {
                continue;
            };
            if let Some(s) = summary(store, &String::from_utf8_lossy(id))? {
                if s.state == state {
                    out.push(s);
                }
            }
        }
        match keys.last() {
            Some((last, _)) if keys.len() == LIST_PAGE => {
                from.clone_from(last);
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(out)
}

fn read_summary(k: &[u8], v: &[u8]) -> Result<TxnSummary, IndexError> {
    decode(v).map_err(|source| IndexError::Summary {
        txn: String::from_utf8_lossy(k).into_owned(),
        source,
    })
}

/// One transaction's summary, if it is in the store.
pub fn summary(store: &dyn Store, id: &str) -> Result<Option<TxnSummary>, IndexError> {
    store
        .get(Space::Txns, id.as_bytes())?
        .map(|v| read_summary(id.as_bytes(), &v))
        .transpose()
}

/// The transaction whose id is `id` or starts with it: `Ok(None)` when none does,
/// `Err(n)` when `n > 1` do. Reads at most two summaries.
pub fn find(store: &dyn Store, id: &str) -> Result<Result<Option<TxnSummary>, usize>, IndexError> {
    let end = prefix_end(id.as_bytes());
    let rows = store.scan_range(
        Space::Txns,
        KeyRange::new(id.as_bytes(), end.as_deref()),
        2,
        false,
    )?;
    match rows.as_slice() {
        [] => Ok(Ok(None)),
        [(k, v)] => Ok(Ok(Some(read_summary(k, v)?))),
        _ => {
            // Count them only to say how many (a short prefix on a big journal stops at 100).
            let n = store
                .scan_range(
                    Space::Txns,
                    KeyRange::new(id.as_bytes(), end.as_deref()),
                    100,
                    false,
                )?
                .len();
            Ok(Err(n))
        }
    }
}

/// What `tx list` asks for: filters, newest first, one page at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnQuery {
    /// Only transactions in this state.
    pub state: Option<TxnState>,
    /// Only transactions of this `Namespace/Procedure`.
    pub procedure: Option<String>,
    /// Only transactions asked for by this subject.
    pub subject: Option<String>,
    /// Only transactions started at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Only transactions started before this time (ms since the epoch).
    pub until_ms: Option<u64>,
    /// Continue after this transaction (the cursor of the previous page).
    pub after: Option<String>,
    /// At most this many (at least 1).
    pub limit: usize,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnPage {
    /// The transactions, newest first.
    pub items: Vec<TxnSummary>,
    /// Pass as [`TxnQuery::after`] for the next page; `None` when this was the last.
    pub next: Option<String>,
    /// Index keys read to make the page (what its cost follows).
    pub examined: usize,
}

/// A listing that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The index could not be read or built.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The cursor names no transaction.
    #[error("no transaction `{0}` to continue after\n  hint: pass the id printed at the end of the previous page")]
    UnknownCursor(String),
}

impl From<StoreError> for QueryError {
    fn from(e: StoreError) -> QueryError {
        QueryError::Index(e.into())
    }
}

/// Index keys read per store call while listing.
const LIST_PAGE: usize = 256;

/// One page of transactions matching `query`, newest first (by start time, then id). Reads
/// the index of the most selective filter given (subject, then procedure, then state) within
/// the time bounds, from the cursor backwards, and the summaries of what it finds; the cost
/// follows the page, not the journal. Builds the index first if it is missing.
pub async fn list(store: &dyn Store, query: &TxnQuery) -> Result<TxnPage, QueryError> {
    ensure(store).await.map_err(QueryError::Index)?;
    let (tag, field) = match (&query.subject, &query.procedure, query.state) {
        (Some(who), _, _) => (BY_SUBJECT, Some(who.clone())),
        (None, Some(p), _) => (BY_PROCEDURE, Some(p.clone())),
        (None, None, Some(st)) => (BY_STATE, Some(st.name().to_string())),
        (None, None, None) => (BY_START, None),
    };
    let mut prefix = vec![tag];
    if let Some(f) = &field {
        prefix.extend_from_slice(f.as_bytes());
        prefix.push(0);
    }
    let at = |ms: u64| {
        let mut k = prefix.clone();
        k.extend_from_slice(&ms.to_be_bytes());
        k
    };
    let start = at(query.since_ms.unwrap_or(0));
    // Exclusive: the first key past the range.
    let mut end = match query.until_ms {
        Some(ms) => at(ms),
        None => prefix_end(&prefix).unwrap_or_else(|| vec![0xff]),
    };
    if let Some(after) = &query.after {
        let s = summary(store, after)?.ok_or_else(|| QueryError::UnknownCursor(after.clone()))?;
        let mut k = at(s.started_ms);
        k.extend_from_slice(s.id.as_bytes());
        end = end.min(k);
    }
    let limit = query.limit.max(1);
    let mut items = Vec::with_capacity(limit.min(1024));
    let mut examined = 0;
    'pages: loop {
        let keys = store.scan_range(
            Space::Index,
            KeyRange::new(&start, Some(&end)),
            LIST_PAGE,
            true,
        )?;
        examined += keys.len();
        for (k, _) in &keys {
            end.clone_from(k);
            let Some(id) = k.len().checked_sub(TXN_ID_LEN).and_then(|i| k.get(i..)) else {
                continue;
            };
            let id = String::from_utf8_lossy(id);
            let Some(s) = summary(store, &id)? else {
                continue;
            };
            if matches(query, &s) {
                items.push(s);
                if items.len() == limit {
                    break 'pages;
                }
            }
        }
        if keys.len() < LIST_PAGE {
            break;
        }
    }
    // A full page may have more after it; the next page tells (it may be empty).
    let next = (items.len() == limit)
        .then(|| items.last().map(|s| s.id.to_string()))
        .flatten();
    Ok(TxnPage {
        items,
        next,
        examined,
    })
}

/// Whether a summary passes every filter of the query (the index used checked one).
fn matches(q: &TxnQuery, s: &TxnSummary) -> bool {
    q.state.is_none_or(|st| st == s.state)
        && q.procedure.as_deref().is_none_or(|p| p == s.target)
        && q.subject.as_deref().is_none_or(|w| w == s.who)
        && q.since_ms.is_none_or(|t| s.started_ms >= t)
        && q.until_ms.is_none_or(|t| s.started_ms < t)
}

/// The key of the finish-time index for `id` finished at `ms` (with an empty id: the
/// first key of that millisecond).
pub(crate) fn finish_key(ms: u64, id: &str) -> Vec<u8> {
    keyed(BY_FINISH, None, ms, id)
}

/// Committed and rolled-back transactions by finish time: at most `limit` of them with an
/// index key below `end` (all with `None`), oldest first, or newest first with
/// `newest_first`, continuing past `cursor` (an index key this returned) when given.
/// Returns (index key, transaction id).
pub(crate) fn finished(
    store: &dyn Store,
    cursor: Option<&[u8]>,
    end: Option<&[u8]>,
    limit: usize,
    newest_first: bool,
) -> Result<Vec<(Vec<u8>, String)>, StoreError> {
    let mut start: Vec<u8> = vec![BY_FINISH];
    let mut end: Vec<u8> = end.map_or_else(|| vec![BY_FINISH + 1], <[u8]>::to_vec);
    match (cursor, newest_first) {
        (Some(c), false) => {
            start = c.to_vec();
            start.push(0);
        }
        (Some(c), true) => end = end.min(c.to_vec()),
        (None, _) => {}
    }
    if start >= end {
        return Ok(Vec::new());
    }
    Ok(store
        .scan_range(
            Space::Index,
            KeyRange::new(&start, Some(&end)),
            limit,
            newest_first,
        )?
        .into_iter()
        .filter_map(|(k, _)| {
            let id = k.get(k.len().checked_sub(TXN_ID_LEN)?..)?;
            let id = String::from_utf8(id.to_vec()).ok()?;
            Some((k, id))
        })
        .collect())
}
