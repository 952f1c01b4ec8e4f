//! Per-key locks on provider state, held by a transaction to its end: the first read or
//! write of a key by a call locks it for the call's transaction; a call of another
//! transaction waits until that transaction commits or rolls back, and another call of the
//! same transaction waits until the call that took it has finished (so the steps of one
//! transaction that touch a key are ordered too). A wait that would close a cycle fails at
//! once with [`StateError::Deadlock`] instead of waiting forever.

use super::StateError;
use crate::TxnId;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// Who holds a key: a transaction, and the call of it that is using the key right now.
#[derive(Debug, Clone)]
struct Holder {
    txn: TxnId,
    /// The call that took the key, while it runs; `None` once it finished (the transaction
    /// still holds the key).
    call: Option<u64>,
}

/// What a waiting call waits for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    /// The end of a transaction.
    Txn(TxnId),
    /// The end of one call of a transaction.
    Call(TxnId, u64),
}

#[derive(Debug, Default)]
struct Table {
    keys: HashMap<Vec<u8>, Holder>,
    /// The keys each transaction holds.
    held: HashMap<TxnId, Vec<Vec<u8>>>,
    /// The keys each running call took (so a call's end costs what it took, not what its
    /// transaction holds: a forEach of 10,000 calls in one transaction stays linear).
    taken: HashMap<(TxnId, u64), Vec<Vec<u8>>>,
    /// Waiting calls, by (transaction, call), and what each waits for.
    waits: HashMap<(TxnId, u64), Node>,
}

impl Table {
    /// Whether `blocker` waits, directly or through others, for `me` (its call or its
    /// transaction): granting the wait would close a cycle.
    fn reaches(&self, blocker: &Node, me_txn: &TxnId, me_call: u64) -> bool {
        let mut seen: HashSet<Node> = HashSet::new();
        let mut todo = vec![blocker.clone()];
        while let Some(node) = todo.pop() {
            match &node {
                Node::Txn(t) if t == me_txn => return true,
                Node::Call(t, c) if t == me_txn && *c == me_call => return true,
                _ => {}
            }
            if !seen.insert(node.clone()) {
                continue;
            }
            match &node {
                // A transaction ends only once every call of it that waits got its key.
                Node::Txn(t) => todo.extend(
                    self.waits
                        .iter()
                        .filter(|((wt, _), _)| wt == t)
                        .map(|(_, n)| n.clone()),
                ),
                Node::Call(t, c) => {
                    if let Some(n) = self.waits.get(&(t.clone(), *c)) {
                        todo.push(n.clone());
                    }
                }
            }
        }
        false
    }
}

/// The lock table of one engine (one process: the store is opened by one process at a time).
#[derive(Debug)]
pub(crate) struct Locks {
    table: Mutex<Table>,
    released: Notify,
    /// The longest a call waits for a key.
    wait: Duration,
}

/// Removes a call's wait when the waiting future ends (granted, failed or dropped).
struct Waiting<'a> {
    locks: &'a Locks,
    me: (TxnId, u64),
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.locks.table().waits.remove(&self.me);
    }
}

impl Locks {
    /// Locks whose waits last at most `wait`.
    pub(crate) fn new(wait: Duration) -> Locks {
        Locks {
            table: Mutex::default(),
            released: Notify::new(),
            wait,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks `key` for call `call` of `txn`, waiting while another transaction holds it or
    /// another running call of the same transaction uses it, at most the wait limit.
    /// `shown` names the key in an error.
    pub(crate) async fn acquire(
        &self,
        key: &[u8],
        txn: &TxnId,
        call: u64,
        shown: impl Fn() -> String,
    ) -> Result<(), StateError> {
        match tokio::time::timeout(self.wait, self.wait_for(key, txn, call, &shown)).await {
            Ok(done) => done,
            Err(_) => {
                let holder = match self.table().keys.get(key) {
                    Some(h) if &h.txn == txn => "another step of this transaction".to_string(),
                    Some(h) => format!("transaction {}", h.txn),
                    None => "another transaction".to_string(),
                };
                Err(StateError::LockTimeout {
                    key: shown(),
                    holder,
                    waited: self.wait,
                })
            }
        }
    }

    async fn wait_for(
        &self,
        key: &[u8],
        txn: &TxnId,
        call: u64,
        shown: &impl Fn() -> String,
    ) -> Result<(), StateError> {
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the table is looked at: a release after the look wakes it.
            released.as_mut().enable();
            {
                let mut table = self.table();
                let Table {
                    keys, held, taken, ..
                } = &mut *table;
                let mut took = || {
                    taken
                        .entry((txn.clone(), call))
                        .or_default()
                        .push(key.to_vec())
                };
                let blocker = match keys.get_mut(key) {
                    None => {
                        let holder = Holder {
                            txn: txn.clone(),
                            call: Some(call),
                        };
                        keys.insert(key.to_vec(), holder);
                        held.entry(txn.clone()).or_default().push(key.to_vec());
                        took();
                        return Ok(());
                    }
                    Some(h) if &h.txn == txn => match h.call {
                        None => {
                            h.call = Some(call);
                            took();
                            return Ok(());
                        }
                        Some(c) if c == call => return Ok(()),
                        Some(c) => Node::Call(txn.clone(), c),
                    },
                    Some(h) => Node::Txn(h.txn.clone()),
                };
                if table.reaches(&blocker, txn, call) {
                    let holder = match &blocker {
                        Node::Txn(t) => format!("transaction {t}"),
                        Node::Call(_, _) => "another step of this transaction".to_string(),
                    };
                    return Err(StateError::Deadlock {
                        key: shown(),
                        holder,
                    });
                }
                table.waits.insert((txn.clone(), call), blocker);
            }
            if waiting.is_none() {
                waiting = Some(Waiting {
                    locks: self,
                    me: (txn.clone(), call),
                });
            }
            released.await;
        }
    }

    /// Call `call` of `txn` has finished: the keys it took stay locked for the
    /// transaction, and other calls of the transaction may now use them.
    pub(crate) fn call_finished(&self, txn: &TxnId, call: u64) {
        let mut table = self.table();
        let Some(taken) = table.taken.remove(&(txn.clone(), call)) else {
            return;
        };
        let mut any = false;
        for k in taken {
            if let Some(h) = table.keys.get_mut(&k) {
                if &h.txn == txn && h.call == Some(call) {
                    h.call = None;
                    any = true;
                }
            }
        }
        drop(table);
        if any {
            self.released.notify_waiters();
        }
    }

    /// `txn` has ended (committed, rolled back, or given up): every key it holds is free.
    pub(crate) fn release(&self, txn: &TxnId) {
        let mut table = self.table();
        table.taken.retain(|(t, _), _| t != txn);
        let Some(keys) = table.held.remove(txn) else {
            return;
        };
        for k in keys {
            table.keys.remove(&k);
        }
        drop(table);
        self.released.notify_waiters();
    }

    /// How many keys are locked (for tests).
    #[cfg(test)]
    pub(crate) fn locked(&self) -> usize {
        self.table().keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn id(n: u8) -> TxnId {
        format!("0190f1c2-0000-7000-8000-0000000000{n:02}")
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn a_key_waits_for_the_holding_transaction_to_end() {
        let locks = Arc::new(Locks::new(Duration::from_secs(5)));
        let (a, b) = (id(1), id(2));
        locks.acquire(b"k", &a, 1, String::new).await.unwrap();
        locks.call_finished(&a, 1);
        let waiter = {
            let locks = locks.clone();
            let b = b.clone();
            tokio::spawn(async move { locks.acquire(b"k", &b, 7, String::new).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "a finished call's transaction still holds it"
        );
        // The same transaction's next call takes it at once.
        locks.acquire(b"k", &a, 2, String::new).await.unwrap();
        locks.release(&a);
        waiter.await.unwrap().unwrap();
        locks.release(&b);
        assert_eq!(locks.locked(), 0);
    }

    #[tokio::test]
    async fn a_wait_that_closes_a_cycle_fails_at_once() {
        let locks = Arc::new(Locks::new(Duration::from_secs(5)));
        let (a, b) = (id(1), id(2));
        locks.acquire(b"x", &a, 1, String::new).await.unwrap();
        locks.acquire(b"y", &b, 2, String::new).await.unwrap();
        let a_waits = {
            let locks = locks.clone();
            let a = a.clone();
            tokio::spawn(async move { locks.acquire(b"y", &a, 1, String::new).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let e = locks
            .acquire(b"x", &b, 2, || "x".to_string())
            .await
            .unwrap_err();
        assert!(matches!(e, StateError::Deadlock { .. }), "{e}");
        locks.release(&b);
        a_waits.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn calls_of_one_transaction_take_turns_and_a_dropped_wait_is_forgotten() {
        let locks = Arc::new(Locks::new(Duration::from_secs(5)));
        let a = id(1);
        locks.acquire(b"k", &a, 1, String::new).await.unwrap();
        let second = tokio::time::timeout(
            Duration::from_millis(20),
            locks.acquire(b"k", &a, 2, String::new),
        )
        .await;
        assert!(second.is_err(), "waits for the first call");
        assert!(locks.table().waits.is_empty(), "the dropped wait is gone");
        locks.call_finished(&a, 1);
        locks.acquire(b"k", &a, 2, String::new).await.unwrap();
    }

    #[tokio::test]
    async fn a_wait_past_the_limit_ends_with_a_transient_error() {
        let locks = Locks::new(Duration::from_millis(30));
        let (a, b) = (id(1), id(2));
        locks.acquire(b"k", &a, 1, String::new).await.unwrap();
        let e = locks
            .acquire(b"k", &b, 2, || "k".to_string())
            .await
            .unwrap_err();
        assert!(matches!(e, StateError::LockTimeout { .. }), "{e}");
        assert!(e.to_string().contains(&a.to_string()), "{e}");
        let p: crate::ProviderError = e.into();
        assert!(matches!(p, crate::ProviderError::Transient { .. }));
        assert!(locks.table().waits.is_empty());
    }
}
