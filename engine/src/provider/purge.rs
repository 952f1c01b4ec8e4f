//! What a provider may purge: state it kept only so that calls could be undone (a deleted
//! folder in a trash, a deleted zone set aside, intent markers) belongs to a transaction,
//! and goes once that transaction is over for good — committed or rolled back, not
//! `rollback_failed` or unfinished — and a retention time has passed. The engine answers
//! for each transaction from its journal ([`crate::txn::retention::purge_scope`]).

use std::sync::Arc;
use std::time::Duration;

/// Where a transaction stands, as the journal says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    /// Committed or rolled back, at this time (ms since the epoch): nothing will undo its
    /// calls any more.
    Over {
        /// When it finished.
        finished_ms: u64,
    },
    /// Still running, rolling back, `rollback_failed` or in doubt: its undo may still need
    /// what was kept.
    NotOver,
    /// Not in the journal: pruned already, or run without one (`--ephemeral`).
    Unknown,
}

/// Answers [`TxnStatus`] for a transaction id.
pub type StatusOf = Arc<dyn Fn(&str) -> TxnStatus + Send + Sync>;

/// The scope of a purge: which transactions' kept state may go.
#[derive(Clone)]
pub struct PurgeScope {
    older_than: Duration,
    dry_run: bool,
    now_ms: u64,
    status: StatusOf,
}

impl std::fmt::Debug for PurgeScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PurgeScope")
            .field("older_than", &self.older_than)
            .field("dry_run", &self.dry_run)
            .field("now_ms", &self.now_ms)
            .finish()
    }
}

impl PurgeScope {
    /// State of transactions over for at least `older_than` before `now_ms` may go;
    /// `status` says where a transaction stands. With `dry_run`, providers only report.
    pub fn new(older_than: Duration, dry_run: bool, now_ms: u64, status: StatusOf) -> Self {
        PurgeScope {
            older_than,
            dry_run,
            now_ms,
            status,
        }
    }

    /// Report what would go, remove nothing.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Whether what a provider kept for `txn_id` (since `kept_since_ms`, ms since the epoch,
    /// when it can tell) may go: the transaction is over and finished at least the retention
    /// ago; for a transaction the journal does not know, the kept item is at least that
    /// old. Never for a transaction that is not over.
    pub fn may_purge(&self, txn_id: &str, kept_since_ms: Option<u64>) -> bool {
        let age = u64::try_from(self.older_than.as_millis()).unwrap_or(u64::MAX);
        let old_enough = |t: u64| t.saturating_add(age) <= self.now_ms;
        match (self.status)(txn_id) {
            TxnStatus::Over { finished_ms } => old_enough(finished_ms),
            TxnStatus::NotOver => false,
            TxnStatus::Unknown => kept_since_ms.is_some_and(old_enough),
        }
    }
}

/// What a purge removed (or, for a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purged {
    /// One line per item: what it was and where (`trash folder .provisio-trash/…`).
    pub removed: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transactions_over_and_old_enough_are_purged() {
        let day = 86_400_000;
        let now = 100 * day;
        let status: StatusOf = Arc::new(move |id: &str| match id {
            "old" => TxnStatus::Over {
                finished_ms: 90 * day,
            },
            "recent" => TxnStatus::Over {
                finished_ms: 99 * day,
            },
            "failed" => TxnStatus::NotOver,
            _ => TxnStatus::Unknown,
        });
        let scope = PurgeScope::new(Duration::from_millis(7 * day), false, now, status);
        assert!(scope.may_purge("old", None));
        assert!(!scope.may_purge("recent", Some(0)));
        assert!(!scope.may_purge("failed", Some(0)), "never while not over");
        assert!(scope.may_purge("gone", Some(10 * day)));
        assert!(!scope.may_purge("gone", Some(98 * day)));
        assert!(!scope.may_purge("gone", None), "unknown age: kept");
    }
}
