//! Durable storage behind one small trait: atomic batches of key-value writes in named
//! spaces, point reads and prefix scans. The sled implementation is the embedded default;
//! the PostgreSQL store (feature `postgres`: one table of `bytea` keys) replaces it without
//! touching the executor.

mod mem;
#[cfg(feature = "postgres")]
mod pg_tls;
#[cfg(feature = "postgres")]
mod postgres;
mod sled_store;
mod vacuum;
mod values;
mod wal;

pub use mem::MemStore;
#[cfg(feature = "postgres")]
pub(crate) use postgres::PgConnector;
#[cfg(feature = "postgres")]
pub use postgres::{
    is_postgres_url, latest_schema_version, mask_url, Link, PgOptions, PgStore, SchemaStatus,
    MIGRATIONS, NODE_EXPIRY, NODE_HEARTBEAT,
};
pub use sled_store::SledStore;
pub(crate) use sled_store::{side_state, SideState};
pub use vacuum::{allocated_bytes, Vacuumed};

use async_trait::async_trait;

/// A keyspace. Keys sort bytewise within a space (big-endian integers sort numerically).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    /// Journal records, keyed by transaction id + sequence number.
    Journal,
    /// One summary per transaction, keyed by transaction id.
    Txns,
    /// Append-only audit records, keyed by time + transaction id.
    Audit,
    /// Pinned definitions (request + namespaces a transaction was compiled from), by hash.
    Definitions,
    /// The store's own bookkeeping (identity, write counter).
    Meta,
    /// Indexes over the summaries, rebuilt from them when missing (`txn::index`): by start
    /// time, by state, procedure and subject, and finished transactions by finish time.
    Index,
    /// The daemon's job queue (`queue`): jobs by id and the ordered keys that find the
    /// next one to run without reading the others.
    Queue,
    /// Provider state: each provider's own records (provider name, a NUL, the provider's
    /// key), written with the journal records of the steps that changed them. Live data,
    /// not history: retention never prunes it.
    State,
}

impl Space {
    /// The one-byte key prefix of the space.
    pub(crate) fn tag(self) -> u8 {
        match self {
            Space::Journal => b'j',
            Space::Txns => b't',
            Space::Audit => b'a',
            Space::Definitions => b'd',
            Space::Meta => b'm',
            Space::Index => b'i',
            Space::Queue => b'q',
            Space::State => b's',
        }
    }

    /// The space with the one-byte key prefix `tag`.
    pub fn from_tag(tag: u8) -> Option<Space> {
        [
            Space::Journal,
            Space::Txns,
            Space::Audit,
            Space::Definitions,
            Space::Meta,
            Space::Index,
            Space::Queue,
            Space::State,
        ]
        .into_iter()
        .find(|s| s.tag() == tag)
    }
}

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// One write of a batch: `Some` value puts, `None` deletes.
pub(crate) type Write = (Space, Vec<u8>, Option<Vec<u8>>);

/// Writes applied together or not at all.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// The writes, in order.
    pub(crate) writes: Vec<Write>,
    /// A promise from the caller: every delete in this batch removes a key that was put
    /// exactly once, by an earlier write to this store, and never otherwise. A store may then
    /// forget such a put and its delete together while neither has reached its indexed
    /// storage, instead of recording the delete (the journal's per-record keys, deleted when
    /// a finished transaction's records are compacted). The promise never covers deletes in
    /// [`Space::State`]: provider state rides in such batches, and its deletes are always
    /// recorded. Stores may ignore it.
    pub(crate) deletes_cancel_puts: bool,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) -> &mut Self {
        self.writes.push((space, key, Some(value)));
        self
    }

    /// Adds a delete.
    pub(crate) fn delete(&mut self, space: Space, key: Vec<u8>) -> &mut Self {
        self.writes.push((space, key, None));
        self
    }
}

/// Storage failures. Each says what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store's files are damaged.
    #[error("the journal store at `{path}` is damaged: {message}\n  hint: nothing was reset or repaired. Stop every provisio process, move the store and its state file aside (`mv {path} {path}.damaged && mv {path}.state {path}.state.damaged`), then start again with an empty journal. Transactions that were in flight must then be checked by hand; the damaged copy can be inspected with `provisio --data-dir DIR tx list` after copying it to DIR/journal")]
    Corrupt {
        /// The store folder.
        path: String,
        /// What the storage engine said.
        message: String,
    },
    /// The store was written by a newer provisio, in a format this one cannot read.
    #[error("the journal store at `{path}` was written by a newer provisio (store format {found}; this version reads up to format {supported})\n  hint: nothing was read or changed; run the provisio version that wrote it, or a newer one")]
    Newer {
        /// The store folder.
        path: String,
        /// The format the store says it has.
        found: u32,
        /// The newest format this version reads.
        supported: u32,
    },
    /// Another process holds the store.
    #[error("the journal store at `{path}` is in use by another provisio process\n  hint: wait for it to finish, or submit the request to the running daemon")]
    Locked {
        /// The store folder.
        path: String,
    },
    /// An I/O error (disk full, permissions).
    #[error(
        "journal I/O error: {0}\n  hint: check free disk space and permissions of the data folder"
    )]
    Io(String),
    /// The store was closed.
    #[error("the journal store is closed")]
    Closed,
    /// The PostgreSQL store's URL cannot be used (the password is masked).
    #[error("invalid PostgreSQL store URL `{url}`: {message}\n  hint: write `store = \"postgres://USER:PASSWORD@HOST:PORT/DATABASE\"` (docs/store.md)")]
    BadUrl {
        /// The URL, password masked.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The PostgreSQL server refused the connection for a reason retrying does not cure
    /// (wrong password, unknown user or database).
    #[error("the PostgreSQL server at `{url}` refused the connection: {message}\n  hint: check the user, password and database in `store` (docs/store.md); nothing was retried")]
    Refused {
        /// The URL, password masked.
        url: String,
        /// What the server said.
        message: String,
    },
    /// The PostgreSQL server could not be reached at open, after retrying.
    #[error("cannot reach the PostgreSQL store at `{url}` ({attempts} attempts over {waited_secs:.1}s): {message}\n  hint: start the database or fix the host and port in `store`; `journal.connect_retry` (PROVISIO_CONNECT_RETRY) sets how long to keep trying")]
    Unreachable {
        /// The URL, password masked.
        url: String,
        /// Connection attempts made.
        attempts: u32,
        /// Seconds spent trying.
        waited_secs: f64,
        /// The last failure.
        message: String,
    },
    /// Another provisio process (or another task of this one) owns the transaction: it is
    /// running there, or being recovered (several processes on one PostgreSQL store).
    #[error("transaction {txn} is owned by another provisio process (it runs or is recovered there); this process leaves it alone")]
    Owned {
        /// The transaction id.
        txn: String,
    },
    /// The PostgreSQL database was lost (stopped, restarted, the network broke) while a
    /// write was queued or in flight, or the write belongs to a transaction this process
    /// owned before the loss: it is not acknowledged (it may or may not have reached the
    /// database), and the transaction does not go on here; recovery finishes it.
    #[error("the connection to the PostgreSQL store at `{url}` was lost: this write is not acknowledged (its outcome is unknown) and the transaction it belongs to stops here\n  hint: recovery finishes the transaction from what the database holds (another node takes it over, or this one once reconnected)")]
    Lost {
        /// The URL, password masked.
        url: String,
    },
    /// A command that only reads found no Provisio schema in the PostgreSQL database (or
    /// an older version of it): it creates nothing.
    #[error("{}", not_migrated(url, schema, *found, *known))]
    NotMigrated {
        /// The URL, password masked.
        url: String,
        /// The PostgreSQL schema looked in (the search_path's first).
        schema: String,
        /// The version found (0: none).
        found: i32,
        /// The version this build knows.
        known: i32,
    },
    /// The database's schema was written by a newer provisio.
    #[error("the PostgreSQL store at `{url}` has schema version {found} ({by}), newer than this provisio knows (up to {known}): refusing to start, as this version could misread or damage it\n  hint: run the provisio version that upgraded the database (or a newer one); schemas are never downgraded")]
    SchemaTooNew {
        /// The URL, password masked.
        url: String,
        /// The version found.
        found: i32,
        /// The newest version this build knows.
        known: i32,
        /// What recorded the version found.
        by: String,
    },
}

/// The storage the journal, audit log and pinned definitions live in.
#[async_trait]
pub trait Store: Send + Sync {
    /// Applies a batch atomically with respect to crashes (after a restart it is there whole
    /// or not at all; a read made while it is applied may see part of it); writes are
    /// applied in the order they were made. With
    /// `durable`, returns only once the batch and every earlier write are on stable storage
    /// (fdatasync); concurrent durable writes share one sync (group commit). Without it, the
    /// write may return as soon as it is queued: it becomes durable with the next durable
    /// write, and if it fails, that write (and every later one) reports the failure.
    async fn write(&self, batch: Batch, durable: bool) -> Result<(), StoreError>;

    /// [`Store::write`] of a record of transaction `txn`, which this process owns
    /// ([`Store::own`]): a store shared by several processes refuses it
    /// ([`StoreError::Lost`]) when the ownership was lost meanwhile (the database went away
    /// with the session holding it), so that the transaction never goes on in this process
    /// while another may recover it. The default is [`Store::write`].
    async fn write_for(&self, txn: &str, batch: Batch, durable: bool) -> Result<(), StoreError> {
        let _ = txn;
        self.write(batch, durable).await
    }

    /// Whether the journal should compact a transaction's records into chunks (as it goes,
    /// and the rest at its end) rather than leave one key a record. The default (sled):
    /// yes, its per-record keys are forgotten in its overlay before they reach its tree. A
    /// store where every key is a row (PostgreSQL) says no: deleting the rows and
    /// inserting a chunk costs more than keeping them.
    fn compacts_journal(&self) -> bool {
        true
    }

    /// [`Store::write_for`] of a journal append of transaction `txn`, whose writes are
    /// split in two: `fresh` holds only puts of keys that are not in the store (the
    /// journal's new keys: a record, the transaction's first summary and index keys, its
    /// audit entry), `rest` everything else. Applied together, in one atomic batch, as
    /// `fresh` then `rest` would be. A store may write the fresh keys more cheaply (a plain
    /// insert where it would otherwise look for the key first), and must still apply them
    /// as puts if one is there after all. The default writes `fresh` then `rest` through
    /// [`Store::write_for`].
    async fn write_journal(
        &self,
        txn: &str,
        fresh: Batch,
        rest: Batch,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut batch = fresh;
        batch.writes.extend(rest.writes);
        batch.deletes_cancel_puts = rest.deletes_cancel_puts;
        self.write_for(txn, batch, durable).await
    }

    /// Returns once every write made before the call is on stable storage, as a durable
    /// write would; concurrent calls and durable writes share one sync. Lets a caller apply
    /// a write under its own lock and wait for the sync after releasing it. The default
    /// makes an empty durable write.
    async fn sync(&self) -> Result<(), StoreError> {
        self.write(Batch::new(), true).await
    }

    /// Makes this process the owner of transaction `txn` for as long as it runs it (or
    /// recovers it), so that no other process sharing the store recovers it meanwhile.
    /// `false`: another process (or another task of this one) owns it. A process that
    /// dies loses its ownerships with its session. The journal takes ownership with a
    /// transaction's first record and gives it up with its final one ([`Store::disown`]);
    /// recovery takes it before touching a transaction. The default (a store only one
    /// process opens, like sled) always grants it.
    async fn own(&self, txn: &str) -> Result<bool, StoreError> {
        let _ = txn;
        Ok(true)
    }

    /// Gives up the ownership [`Store::own`] granted (a no-op when not owned).
    fn disown(&self, txn: &str) {
        let _ = txn;
    }

    /// Locks a provider-state key (its full key in [`Space::State`]) for this process
    /// against the other processes sharing the store, until [`Store::unlock_key`]: the
    /// engine holds it for as long as the transaction that took the key runs (within a
    /// process, its own per-key locks order the transactions). `false`: another process
    /// holds it (the caller waits and asks again). Lost with the process. The default (a
    /// store only one process opens) always grants it.
    async fn lock_key(&self, key: &[u8]) -> Result<bool, StoreError> {
        let _ = key;
        Ok(true)
    }

    /// Gives back one [`Store::lock_key`] of `key`.
    fn unlock_key(&self, key: &[u8]) {
        let _ = key;
    }

    /// `txn` waits for `key` (its full key in [`Space::State`]), which another process holds
    /// ([`Store::lock_key`] said `false`), while it holds the keys `held`: records both where
    /// the other processes sharing the store see them, and answers whether the wait closes a
    /// cycle of waits across processes in which `txn` is the youngest transaction (the
    /// greatest id): then `Some(holder)`, the transaction of the cycle holding `key`, and
    /// `txn` must give way. Asked again at each poll of the wait (the other waiters of a
    /// cycle may record theirs later, and `held` may grow). Only waiting costs this: a key
    /// taken at once records nothing. The default (a store only one process opens) never
    /// finds one.
    async fn wait_key(
        &self,
        txn: &str,
        key: &[u8],
        held: &[Vec<u8>],
    ) -> Result<Option<String>, StoreError> {
        let _ = (txn, key, held);
        Ok(None)
    }

    /// The wait of `txn` for `key` that [`Store::wait_key`] recorded is over (granted or
    /// given up).
    async fn wait_key_over(&self, txn: &str, key: &[u8]) {
        let _ = (txn, key);
    }

    /// `txn`, whose waits [`Store::wait_key`] recorded, has ended and given back its keys:
    /// forgets what it held and waited for.
    fn keys_released(&self, txn: &str) {
        let _ = txn;
    }

    /// A prune removed what it could. A store whose files keep their size after deletes
    /// notes that they should be compacted when it can (the sled store: at its next open,
    /// unless `tx prune` does it at once; see `vacuum.rs`). The default does nothing.
    async fn pruned(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The PostgreSQL store behind this one, for the parts (the job queue) that use the
    /// database directly rather than through keys.
    #[cfg(feature = "postgres")]
    fn postgres(&self) -> Option<&PgStore> {
        None
    }

    /// Reads one value; sees every write that returned before the call.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every (key, value) whose key starts with `prefix`, in key order; sees every write
    /// that returned before the call.
    fn scan(&self, space: Space, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError>;

    /// At most `limit` (key, value) pairs with `range.start <= key < range.end` (no end: to
    /// the end of the space), in key order, or from the end backwards with `reverse`; sees
    /// every write that returned before the call. The read behind paging and streaming: its
    /// cost follows `limit`, not the size of the space. The default reads the whole space
    /// through [`Store::scan`] (correct, not fast): stores should override it.
    fn scan_range(
        &self,
        space: Space,
        range: KeyRange<'_>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut rows: Vec<KeyValue> = self
            .scan(space, b"")?
            .into_iter()
            .filter(|(k, _)| range.contains(k))
            .collect();
        if reverse {
            rows.reverse();
        }
        rows.truncate(limit);
        Ok(rows)
    }
}

/// A range of keys within a space: from `start` (included) to `end` (excluded; `None`: the
/// end of the space).
#[derive(Debug, Clone, Copy)]
pub struct KeyRange<'a> {
    /// The first key that may be returned.
    pub start: &'a [u8],
    /// The first key past the range, if any.
    pub end: Option<&'a [u8]>,
}

impl<'a> KeyRange<'a> {
    /// Every key from `start` to `end` (excluded).
    pub fn new(start: &'a [u8], end: Option<&'a [u8]>) -> KeyRange<'a> {
        KeyRange { start, end }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start && self.end.is_none_or(|e| key < e)
    }
}

/// The first key after every key starting with `prefix` (`None` when there is none: the
/// prefix is empty or all `0xff`), for turning a prefix into a [`KeyRange`].
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn not_migrated(url: &str, schema: &str, found: i32, known: i32) -> String {
    let what = if found == 0 {
        format!("holds no Provisio schema (no `provisio_schema` table in schema `{schema}`): there is nothing to read yet, and a command that only reads creates nothing")
    } else {
        format!("has Provisio schema version {found} in schema `{schema}`, older than this provisio's {known}: a command that only reads does not upgrade it")
    };
    format!("the PostgreSQL store at `{url}` {what}\n  hint: create or upgrade it with `provisio store migrate` (or start `provisio serve`, which does so) with this same `store` URL; check the URL's database and `options=-csearch_path=…` if the schema should be there")
}
