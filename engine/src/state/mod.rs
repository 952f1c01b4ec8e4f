//! Provider state: a transactional key-value space per provider in the engine's store, for
//! providers that keep records of their own (an embedded directory, resource allocations,
//! plans). A provider reads its keys and proposes writes through the [`ProviderState`]
//! handle of its call ([`crate::Call::state`]); the engine writes them in the same store
//! batch as the step's journal record, and their reversal in the same batch as the undo
//! record, so after a crash a step's state writes are there with its result or not at all.
//!
//! Isolation is by per-key locks held to the end of the transaction (see [`locks`]): two
//! transactions never see each other's uncommitted writes, never lose an update and never
//! over-commit a shared counter; a wait that would deadlock fails the call at once.
//! `docs/providers/state.md` is the guide for provider authors.
//!
//! ```
//! # use provisio_engine::{ProviderState, StateError};
//! async fn next_number(state: &ProviderState) -> Result<u64, StateError> {
//!     // The read locks the key until the transaction ends: no other transaction can take
//!     // the same number, and a rollback gives it back.
//!     let n: u64 = state.get_json(b"counter").await?.unwrap_or(0);
//!     state.put_json(b"counter", &(n + 1)).await?;
//!     Ok(n + 1)
//! }
//! ```

mod locks;

use crate::store::{Batch, MemStore, Space, Store, StoreError};
use crate::TxnId;
use base64::Engine as _;
use locks::Locks;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a wait for a key lasts before it is recorded in a store several processes
/// share and looks for a deadlock across them ([`Store::wait_key`]); most waits end
/// sooner, and a deadlock is rare: recording every short wait made contended keys ~3x
/// slower (a statement on the node's session at each poll).
const RECORD_AFTER: Duration = Duration::from_millis(100);
/// How often a recorded wait looks for a deadlock again.
const RECORD_EVERY: Duration = Duration::from_millis(100);

/// Why a provider-state operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The handle belongs to no engine call (a call built by hand, e.g. in a unit test).
    #[error("this call has no provider state (it was not made by an engine)")]
    Detached,
    /// The call may read but not write (a read procedure, an undo, a recover, a preview).
    #[error("provider state is read-only in {0}")]
    ReadOnly(&'static str),
    /// The call is over: a handle kept past the end of its call cannot be used.
    #[error("the call this provider-state handle belongs to has ended")]
    Closed,
    /// Waiting for the key would wait forever (each transaction waits for the other).
    #[error("deadlock on provider-state key `{key}`: it is held by {holder}, which waits for this transaction; this transaction gives way and rolls back\n  hint: run the request again; providers that touch several keys should take them in one order")]
    Deadlock {
        /// The key (lossy text).
        key: String,
        /// Who holds it.
        holder: String,
    },
    /// Another transaction held the key for longer than the call may wait (half the step
    /// timeout). Transient: the call is tried again under the `calls` retry policy.
    #[error("provider-state key `{key}` stayed locked by {holder} for {waited:?}")]
    LockTimeout {
        /// The key (lossy text).
        key: String,
        /// Who held it when the wait ended.
        holder: String,
        /// How long the call waited.
        waited: Duration,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A value does not encode or decode as JSON.
    #[error("provider-state value `{key}` is not valid JSON for its type: {message}")]
    Json {
        /// The key (lossy text).
        key: String,
        /// What serde said.
        message: String,
    },
}

impl From<StateError> for crate::ProviderError {
    /// A store that failed is transient (retried); everything else is permanent (the
    /// transaction rolls back, releasing its locks).
    fn from(e: StateError) -> crate::ProviderError {
        match e {
            StateError::Store(StoreError::Io(_)) | StateError::LockTimeout { .. } => {
                crate::ProviderError::transient(e.to_string())
            }
            e => crate::ProviderError::permanent(e.to_string()),
        }
    }
}

/// The key of a provider's state key in [`Space::State`]: the provider name, a NUL, the key.
pub fn state_key(provider: &str, key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(provider.len() + 1 + key.len());
    full.extend_from_slice(provider.as_bytes());
    full.push(0);
    full.extend_from_slice(key);
    full
}

/// What a call may do with its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read (locking) and write: `execute` of a write or two-phase procedure.
    Write,
    /// Read (locking) only; the text names the call kind in the error.
    Read(&'static str),
    /// Read the latest values without locking, never write: a preview (`provisio plan`).
    Preview,
}

/// The provider state of one engine: where it lives and who holds which key.
pub(crate) struct StateSpace {
    store: Arc<dyn Store>,
    /// The journal writes state changes with its records (the durable store); otherwise the
    /// engine applies them to `store` itself (in memory, without a durable journal).
    in_journal: bool,
    locks: Locks,
    next_call: AtomicU64,
    /// The keys this process holds across processes (a store several processes share):
    /// which transaction took each, released with it.
    shared_held: Mutex<std::collections::HashMap<TxnId, Vec<Vec<u8>>>>,
    /// The transactions whose waits for a key another process holds were recorded in the
    /// store ([`Store::wait_key`]): forgotten there when they end.
    waited: Mutex<std::collections::HashSet<TxnId>>,
    /// How long a call waits for a key (also for one another process holds).
    lock_wait: Duration,
}

impl std::fmt::Debug for StateSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateSpace")
            .field("in_journal", &self.in_journal)
            .finish()
    }
}

impl StateSpace {
    /// State kept in memory, applied by the engine (no durable journal).
    pub(crate) fn in_memory(lock_wait: Duration) -> StateSpace {
        StateSpace::new(Arc::new(MemStore::new()), false, lock_wait)
    }

    /// State in `store`; `in_journal`: the journal writes the changes with its records; a
    /// call waits at most `lock_wait` for a key.
    pub(crate) fn new(store: Arc<dyn Store>, in_journal: bool, lock_wait: Duration) -> StateSpace {
        StateSpace {
            store,
            in_journal,
            locks: Locks::new(lock_wait),
            next_call: AtomicU64::new(1),
            shared_held: Mutex::new(std::collections::HashMap::new()),
            waited: Mutex::new(std::collections::HashSet::new()),
            lock_wait,
        }
    }

    /// The provider state kept in `store` with the journal: one per store in a process, so
    /// every engine over it (a clone, an engine rebuilt when namespaces are reloaded, a
    /// recovery) shares one lock table. The first one's `lock_wait` stays.
    pub(crate) fn shared(store: Arc<dyn Store>, lock_wait: Duration) -> Arc<StateSpace> {
        type Spaces = Vec<(std::sync::Weak<dyn Store>, std::sync::Weak<StateSpace>)>;
        static SPACES: Mutex<Spaces> = Mutex::new(Vec::new());
        let mut spaces = SPACES.lock().unwrap_or_else(|e| e.into_inner());
        spaces.retain(|(s, p)| s.strong_count() > 0 && p.strong_count() > 0);
        let same =
            |s: &std::sync::Weak<dyn Store>| std::ptr::addr_eq(s.as_ptr(), Arc::as_ptr(&store));
        if let Some(space) = spaces
            .iter()
            .find(|(s, _)| same(s))
            .and_then(|(_, p)| p.upgrade())
        {
            return space;
        }
        let space = Arc::new(StateSpace::new(store.clone(), true, lock_wait));
        spaces.push((Arc::downgrade(&store), Arc::downgrade(&space)));
        space
    }

    /// Whether the journal writes the changes (else [`StateSpace::apply`] must).
    pub(crate) fn in_journal(&self) -> bool {
        self.in_journal
    }

    /// A handle for one call of `provider` in `txn`.
    pub(crate) fn handle(
        self: &Arc<StateSpace>,
        txn: &TxnId,
        provider: &str,
        access: Access,
    ) -> ProviderState {
        ProviderState {
            inner: Some(Arc::new(Handle {
                space: self.clone(),
                txn: txn.clone(),
                call: self.next_call.fetch_add(1, Ordering::Relaxed),
                provider: provider.to_string(),
                access,
                writes: Mutex::new(Writes {
                    open: true,
                    map: BTreeMap::new(),
                }),
            })),
        }
    }

    /// Writes `change` to the store (the engine's own application, without a journal that
    /// carries it).
    pub(crate) async fn apply(&self, change: &StateChange) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        change.add_to(&mut batch);
        self.store.write(batch, false).await
    }

    /// Every key of `provider` starting with `prefix` and its latest value, without locking
    /// (see [`StateSpace::peek`]).
    pub(crate) fn peek_scan(
        &self,
        provider: &str,
        prefix: &[u8],
    ) -> Result<Vec<crate::store::KeyValue>, StoreError> {
        let skip = provider.len() + 1;
        Ok(self
            .store
            .scan(Space::State, &state_key(provider, prefix))?
            .into_iter()
            .map(|(k, v)| (k[skip..].to_vec(), v))
            .collect())
    }

    /// Locks every key of `change` for `txn` (a reversal at rollback, or at recovery after a
    /// crash, when the locks of before are gone) and leaves them held by the transaction.
    pub(crate) async fn lock_for(
        &self,
        txn: &TxnId,
        change: &StateChange,
    ) -> Result<(), StateError> {
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        for e in &change.entries {
            let full = state_key(&change.provider, &e.key);
            self.acquire(&full, txn, call, || shown(&e.key)).await?;
        }
        self.locks.call_finished(txn, call);
        Ok(())
    }

    /// Locks `full` (a provider's key) for call `call` of `txn`: in this process, then,
    /// on a store several processes share (PostgreSQL), across processes too, for as long
    /// as the transaction runs. A key another process holds is waited for (polled) up to
    /// the lock wait, then the call fails with [`StateError::LockTimeout`] (a transient
    /// error). A wait that lasts is recorded in the store with the keys the transaction
    /// holds ([`Store::wait_key`]) and looks for a cycle of waits across processes: the youngest transaction of a cycle gives way with
    /// [`StateError::Deadlock`], as a cycle within this process does.
    async fn acquire(
        &self,
        full: &[u8],
        txn: &TxnId,
        call: u64,
        shown: impl Fn() -> String,
    ) -> Result<(), StateError> {
        self.acquire_local(full, txn, call, &shown).await?;
        let held = lock(&self.shared_held)
            .get(txn)
            .is_some_and(|keys| keys.iter().any(|k| k == full));
        if held {
            return Ok(());
        }
        // The key taken at once (the common case) costs one round trip, as it did.
        let got = self.store.lock_key(full).await.map_err(StateError::Store)?;
        if !got {
            let mut recorded = false;
            let waited = self.wait_across(full, txn, &shown, &mut recorded).await;
            // Forgotten whatever the end.
            if recorded {
                self.store.wait_key_over(txn.as_str(), full).await;
            }
            waited?;
        }
        lock(&self.shared_held)
            .entry(txn.clone())
            .or_default()
            .push(full.to_vec());
        Ok(())
    }

    /// Takes `full` in this process's lock table. A wait there that lasts
    /// ([`RECORD_AFTER`]) is recorded in the store too, and looks for a cycle across
    /// processes every [`RECORD_EVERY`]: a cycle that goes through a wait within this process and waits across
    /// processes is seen by neither lock table alone. (A cycle within the process fails at
    /// once in the table.)
    async fn acquire_local(
        &self,
        full: &[u8],
        txn: &TxnId,
        call: u64,
        shown: &impl Fn() -> String,
    ) -> Result<(), StateError> {
        let local = self.locks.acquire(full, txn, call, shown);
        tokio::pin!(local);
        // Granted at once (the common case): no timer, nothing recorded.
        if let Some(r) = futures::FutureExt::now_or_never(local.as_mut()) {
            return r;
        }
        let mut pause = RECORD_AFTER;
        let mut recorded = false;
        let result = loop {
            tokio::select! {
                biased;
                r = &mut local => break r,
                () = tokio::time::sleep(pause) => {}
            }
            pause = RECORD_EVERY;
            recorded = true;
            lock(&self.waited).insert(txn.clone());
            let holds = lock(&self.shared_held)
                .get(txn)
                .cloned()
                .unwrap_or_default();
            match self.store.wait_key(txn.as_str(), full, &holds).await {
                Ok(Some(holder)) => {
                    break Err(StateError::Deadlock {
                        key: shown(),
                        holder: format!(
                            "transaction {holder} of another provisio process (through a transaction of this one)"
                        ),
                    })
                }
                Ok(None) => {}
                // The wait in this process goes on (a store that failed fails the call
                // at its next use of the store).
                Err(e) => tracing::debug!(error = %e, "recording a wait for a provider-state key"),
            }
        };
        if recorded {
            self.store.wait_key_over(txn.as_str(), full).await;
        }
        result
    }

    /// Waits for `full`, which another process holds, polling (2 ms doubling to 50 ms) up
    /// to the lock wait; once the wait lasted [`RECORD_AFTER`], it is recorded (`recorded`)
    /// and looks for a deadlock across processes every [`RECORD_EVERY`].
    async fn wait_across(
        &self,
        full: &[u8],
        txn: &TxnId,
        shown: &impl Fn() -> String,
        recorded: &mut bool,
    ) -> Result<(), StateError> {
        let started = std::time::Instant::now();
        let mut record_at = started + RECORD_AFTER;
        let mut pause = Duration::from_millis(2);
        loop {
            if std::time::Instant::now() >= record_at {
                record_at += RECORD_EVERY;
                *recorded = true;
                lock(&self.waited).insert(txn.clone());
                let holds = lock(&self.shared_held)
                    .get(txn)
                    .cloned()
                    .unwrap_or_default();
                if let Some(holder) = self.store.wait_key(txn.as_str(), full, &holds).await? {
                    return Err(StateError::Deadlock {
                        key: shown(),
                        holder: format!("transaction {holder} of another provisio process"),
                    });
                }
            }
            if started.elapsed() >= self.lock_wait {
                return Err(StateError::LockTimeout {
                    key: shown(),
                    holder: "a transaction of another provisio process".into(),
                    waited: self.lock_wait,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
            if self.store.lock_key(full).await? {
                return Ok(());
            }
        }
    }

    /// `txn` ended: every key it holds is free.
    pub(crate) fn release(&self, txn: &TxnId) {
        let keys = lock(&self.shared_held).remove(txn);
        if lock(&self.waited).remove(txn) {
            self.store.keys_released(txn.as_str());
        }
        for k in keys.unwrap_or_default() {
            self.store.unlock_key(&k);
        }
        self.locks.release(txn);
    }

    /// The latest value of a key, without locking (what an operator or a test looks at).
    pub(crate) fn peek(&self, provider: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(Space::State, &state_key(provider, key))
    }
}

/// Releases a transaction's keys when dropped (at its end, or when its task is dropped).
pub(crate) struct Release {
    space: Arc<StateSpace>,
    txn: TxnId,
}

impl Release {
    pub(crate) fn new(space: Arc<StateSpace>, txn: TxnId) -> Release {
        Release { space, txn }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        self.space.release(&self.txn);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn shown(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// The writes a call proposed so far, by key (`None`: delete).
struct Writes {
    open: bool,
    map: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

struct Handle {
    space: Arc<StateSpace>,
    txn: TxnId,
    call: u64,
    provider: String,
    access: Access,
    writes: Mutex<Writes>,
}

impl Handle {
    fn writes(&self) -> std::sync::MutexGuard<'_, Writes> {
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A call's view of its provider's state: the provider's own keys (no other provider's),
/// with the writes of the call's transaction, locked for the transaction as they are read
/// or written. Writes are proposals: they take effect only when the call succeeds (with the
/// step's journal record) and are reversed when the step is undone.
///
/// Reads see the call's own writes and the transaction's earlier steps. The first read or
/// write of a key locks it until the transaction ends; a call of another transaction that
/// touches the key waits. In `undo`, `recover` and read procedures the handle only reads; in
/// a preview it reads the latest values without locking. Cloning shares the handle.
#[derive(Clone, Default)]
pub struct ProviderState {
    inner: Option<Arc<Handle>>,
}

impl std::fmt::Debug for ProviderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            None => f.write_str("ProviderState(detached)"),
            Some(h) => f
                .debug_struct("ProviderState")
                .field("provider", &h.provider)
                .field("txn", &h.txn)
                .field("access", &h.access)
                .finish(),
        }
    }
}

impl ProviderState {
    /// A handle that belongs to no engine: every operation fails with
    /// [`StateError::Detached`] (for calls built by hand, e.g. in a provider's unit tests).
    pub fn detached() -> ProviderState {
        ProviderState::default()
    }

    /// Whether this call may propose writes.
    pub fn is_writable(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|h| h.access == Access::Write)
    }

    /// A read-only view of `provider`'s keys in the same transaction and call: for a provider
    /// that checks what another provider of the same process keeps (the mail provider asking
    /// the embedded directory whether a user exists). Reads lock as the call's own reads do
    /// (so the record read cannot change or vanish before the transaction ends) and see the
    /// transaction's earlier steps; it never writes. A preview's view stays unlocked; a
    /// detached handle gives a detached view.
    pub fn read_of(&self, provider: &str) -> ProviderState {
        let Some(h) = self.inner.as_deref() else {
            return ProviderState::detached();
        };
        let access = match h.access {
            Access::Write => Access::Read("a read of another provider's state"),
            other => other,
        };
        ProviderState {
            inner: Some(Arc::new(Handle {
                space: h.space.clone(),
                txn: h.txn.clone(),
                call: h.call,
                provider: provider.to_string(),
                access,
                writes: Mutex::new(Writes {
                    open: h.writes().open,
                    map: BTreeMap::new(),
                }),
            })),
        }
    }

    fn handle(&self) -> Result<&Handle, StateError> {
        let h = self.inner.as_deref().ok_or(StateError::Detached)?;
        if !h.writes().open {
            return Err(StateError::Closed);
        }
        Ok(h)
    }

    /// Locks `key` for the transaction (not in a preview).
    async fn lock(&self, h: &Handle, key: &[u8]) -> Result<(), StateError> {
        if h.access == Access::Preview {
            return Ok(());
        }
        let full = state_key(&h.provider, key);
        h.space.acquire(&full, &h.txn, h.call, || shown(key)).await
    }

    /// The value of `key`: this call's own write if it made one, else the latest written
    /// (the transaction's own earlier steps included). Locks the key, present or not.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let h = self.handle()?;
        self.lock(h, key).await?;
        if let Some(own) = h.writes().map.get(key) {
            return Ok(own.clone());
        }
        Ok(h.space
            .store
            .get(Space::State, &state_key(&h.provider, key))?)
    }

    /// Every key starting with `prefix` and its value, in key order, with this call's own
    /// writes. Each key returned is locked; keys that another transaction adds later are
    /// not kept out (no range lock): a provider that must know a key is absent reads that
    /// key (see `docs/providers/state.md`).
    pub async fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError> {
        let h = self.handle()?;
        let full_prefix = state_key(&h.provider, prefix);
        let skip = h.provider.len() + 1;
        let mut keys: Vec<Vec<u8>> = h
            .space
            .store
            .scan(Space::State, &full_prefix)?
            .into_iter()
            .map(|(k, _)| k[skip..].to_vec())
            .collect();
        keys.extend(
            h.writes()
                .map
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned(),
        );
        keys.sort();
        keys.dedup();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            // Read again once locked: the value is the one the transaction now holds.
            if let Some(v) = self.get(&k).await? {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    /// Proposes `value` for `key` (locks the key).
    pub async fn put(&self, key: &[u8], value: impl Into<Vec<u8>>) -> Result<(), StateError> {
        self.propose(key, Some(value.into())).await
    }

    /// Proposes removing `key` (locks the key).
    pub async fn delete(&self, key: &[u8]) -> Result<(), StateError> {
        self.propose(key, None).await
    }

    async fn propose(&self, key: &[u8], value: Option<Vec<u8>>) -> Result<(), StateError> {
        let h = self.handle()?;
        match h.access {
            Access::Write => {}
            Access::Read(what) => return Err(StateError::ReadOnly(what)),
            Access::Preview => return Err(StateError::ReadOnly("a preview")),
        }
        self.lock(h, key).await?;
        let mut w = h.writes();
        if !w.open {
            return Err(StateError::Closed);
        }
        w.map.insert(key.to_vec(), value);
        Ok(())
    }

    /// [`ProviderState::get`], decoded from JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StateError> {
        match self.get(key).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StateError::Json {
                    key: shown(key),
                    message: e.to_string(),
                }),
        }
    }

    /// [`ProviderState::put`] of `value` as JSON.
    pub async fn put_json<T: Serialize + ?Sized>(
        &self,
        key: &[u8],
        value: &T,
    ) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StateError::Json {
            key: shown(key),
            message: e.to_string(),
        })?;
        self.put(key, bytes).await
    }

    /// Ends the call's use of the handle and returns what it proposed (`None`: no write),
    /// with each key's value before it (the keys are locked by the transaction, so that is
    /// the value the call's writes replace).
    pub(crate) fn finish(&self) -> Result<Option<StateChange>, StoreError> {
        let Some(h) = self.inner.as_deref() else {
            return Ok(None);
        };
        let map = {
            let mut w = h.writes();
            w.open = false;
            std::mem::take(&mut w.map)
        };
        if map.is_empty() {
            return Ok(None);
        }
        let mut entries = Vec::with_capacity(map.len());
        for (key, after) in map {
            let before = h
                .space
                .store
                .get(Space::State, &state_key(&h.provider, &key))?;
            entries.push(StateEntry { key, after, before });
        }
        Ok(Some(StateChange {
            provider: h.provider.clone(),
            entries,
        }))
    }

    /// The transaction the handle belongs to.
    #[cfg(feature = "test-util")]
    pub(crate) fn txn(&self) -> Option<&TxnId> {
        self.inner.as_deref().map(|h| &h.txn)
    }

    /// Closes the handle without keeping its writes (the call failed).
    pub(crate) fn discard(&self) {
        if let Some(h) = self.inner.as_deref() {
            let mut w = h.writes();
            w.open = false;
            w.map.clear();
        }
    }

    /// The call is over (its change, if any, is written or given up): the keys it took stay
    /// locked for the transaction, and its other calls may use them.
    pub(crate) fn call_finished(&self) {
        if let Some(h) = self.inner.as_deref() {
            h.writes().open = false;
            h.space.locks.call_finished(&h.txn, h.call);
        }
    }
}

/// One key a step changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StateEntry {
    key: Vec<u8>,
    /// The value written (`None`: deleted).
    after: Option<Vec<u8>>,
    /// The value before (`None`: absent).
    before: Option<Vec<u8>>,
}

/// The provider-state writes of one step, with the values they replace: written in the same
/// batch as the step's journal record ([`StateChange::add_to`]), and reversed
/// ([`StateChange::reversal`]) in the same batch as its undo record. A [`crate::Journal`]
/// that keeps provider state (see `Journal::state_store`) must do both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    provider: String,
    entries: Vec<StateEntry>,
}

impl StateChange {
    /// The provider whose state it changes.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// How many keys it changes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds its writes to `batch` (in [`Space::State`]).
    pub fn add_to(&self, batch: &mut Batch) {
        for e in &self.entries {
            let full = state_key(&self.provider, &e.key);
            match &e.after {
                Some(v) => batch.put(Space::State, full, v.clone()),
                None => batch.delete(Space::State, full),
            };
        }
    }

    /// The change that puts every key back as it was before this one.
    pub fn reversal(&self) -> StateChange {
        StateChange {
            provider: self.provider.clone(),
            entries: self
                .entries
                .iter()
                .map(|e| StateEntry {
                    key: e.key.clone(),
                    after: e.before.clone(),
                    before: e.after.clone(),
                })
                .collect(),
        }
    }

    /// What a journal keeps to reverse it after a crash.
    pub fn to_record(&self) -> StateRecord {
        let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
        StateRecord {
            provider: self.provider.clone(),
            before: self
                .entries
                .iter()
                .map(|e| (b64(&e.key), e.before.as_deref().map(b64)))
                .collect(),
        }
    }
}

/// The journaled form of a step's state change: the values its keys had before (base64),
/// which is what reverses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    /// The provider.
    pub provider: String,
    /// Each key it changed (base64) with its value before (base64; `None`: absent).
    pub before: Vec<(String, Option<String>)>,
}

impl StateRecord {
    /// The change that reverses the journaled one, or why the record does not decode.
    pub(crate) fn reversal(&self) -> Result<StateChange, base64::DecodeError> {
        let d = |s: &str| base64::engine::general_purpose::STANDARD.decode(s);
        let mut entries = Vec::with_capacity(self.before.len());
        for (k, v) in &self.before {
            entries.push(StateEntry {
                key: d(k)?,
                after: v.as_deref().map(d).transpose()?,
                before: None,
            });
        }
        Ok(StateChange {
            provider: self.provider.clone(),
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(n: u8) -> TxnId {
        format!("0190f1c2-0000-7000-8000-0000000000{n:02}")
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn a_call_reads_its_own_writes_and_its_change_knows_the_old_values() {
        let space = Arc::new(StateSpace::in_memory(Duration::from_secs(5)));
        let first = space.handle(&txn(1), "P", Access::Write);
        first.put(b"a", b"1".to_vec()).await.unwrap();
        first.put(b"b", b"2".to_vec()).await.unwrap();
        assert_eq!(first.get(b"a").await.unwrap().as_deref(), Some(&b"1"[..]));
        let change = first.finish().unwrap().unwrap();
        space.apply(&change).await.unwrap();
        first.call_finished();
        assert_eq!(
            first.get(b"a").await.unwrap_err().to_string(),
            StateError::Closed.to_string()
        );

        let second = space.handle(&txn(1), "P", Access::Write);
        second.delete(b"a").await.unwrap();
        second.put(b"b", b"3".to_vec()).await.unwrap();
        assert_eq!(second.get(b"a").await.unwrap(), None);
        let scanned = second.scan(b"").await.unwrap();
        assert_eq!(scanned, vec![(b"b".to_vec(), b"3".to_vec())]);
        let change = second.finish().unwrap().unwrap();
        space.apply(&change).await.unwrap();
        // Reversing puts back what the first call wrote.
        space.apply(&change.reversal()).await.unwrap();
        assert_eq!(space.peek("P", b"a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(space.peek("P", b"b").unwrap().as_deref(), Some(&b"2"[..]));
        // So does the journaled form.
        space.apply(&change).await.unwrap();
        space
            .apply(&change.to_record().reversal().unwrap())
            .await
            .unwrap();
        assert_eq!(space.peek("P", b"a").unwrap().as_deref(), Some(&b"1"[..]));
        // Providers do not see each other's keys.
        assert_eq!(space.peek("Q", b"a").unwrap(), None);
        space.release(&txn(1));
    }

    #[tokio::test]
    async fn engines_over_one_store_share_one_lock_table() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let wait = Duration::from_millis(30);
        let a = StateSpace::shared(store.clone(), wait);
        let b = StateSpace::shared(store.clone(), wait);
        assert!(Arc::ptr_eq(&a, &b));
        let other = StateSpace::shared(Arc::new(MemStore::new()), wait);
        assert!(!Arc::ptr_eq(&a, &other));
        // A key taken through one is held against the other.
        let first = a.handle(&txn(1), "P", Access::Write);
        first.put(b"k", b"1".to_vec()).await.unwrap();
        let second = b.handle(&txn(2), "P", Access::Write);
        let e = second.get(b"k").await.unwrap_err();
        assert!(matches!(e, StateError::LockTimeout { .. }), "{e}");
        a.release(&txn(1));
    }

    #[tokio::test]
    async fn read_only_and_detached_handles_say_why_they_cannot_write() {
        let space = Arc::new(StateSpace::in_memory(Duration::from_secs(5)));
        let undo = space.handle(&txn(1), "P", Access::Read("an undo"));
        let e = undo.put(b"k", b"v".to_vec()).await.unwrap_err();
        assert_eq!(e.to_string(), "provider state is read-only in an undo");
        let e = ProviderState::detached().get(b"k").await.unwrap_err();
        assert!(matches!(e, StateError::Detached));
        let preview = space.handle(&txn(2), "P", Access::Preview);
        assert_eq!(preview.get(b"k").await.unwrap(), None);
        assert!(!preview.is_writable());
    }
}
