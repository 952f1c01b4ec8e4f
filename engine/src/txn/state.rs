//! The names of transaction states: one spelling for the journal (serde), messages
//! (`Display`), and the command line (`FromStr`, [`TxnState::ALL`]).

use crate::exec::TxnState;

impl TxnState {
    /// Every state, in the order a transaction goes through them.
    pub const ALL: [TxnState; 6] = [
        TxnState::Queued,
        TxnState::Running,
        TxnState::Committed,
        TxnState::RollingBack,
        TxnState::RolledBack,
        TxnState::RollbackFailed,
    ];

    /// Its name, as journaled and shown (`rollback_failed`).
    pub const fn name(self) -> &'static str {
        match self {
            TxnState::Queued => "queued",
            TxnState::Running => "running",
            TxnState::Committed => "committed",
            TxnState::RollingBack => "rolling_back",
            TxnState::RolledBack => "rolled_back",
            TxnState::RollbackFailed => "rollback_failed",
        }
    }
}

/// A name that is not a transaction state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state `{0}`\n  hint: one of {names}", names = names())]
pub struct UnknownState(pub String);

fn names() -> String {
    TxnState::ALL.map(TxnState::name).join(", ")
}

impl std::str::FromStr for TxnState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<TxnState, UnknownState> {
        TxnState::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_its_name_its_display_and_its_journal_form() {
        for st in TxnState::ALL {
            assert_eq!(st.name().parse::<TxnState>(), Ok(st));
            assert_eq!(st.to_string(), st.name());
            assert_eq!(
                serde_json::to_value(st).ok(),
                Some(serde_json::Value::from(st.name()))
            );
        }
    }

    #[test]
    fn an_unknown_state_lists_the_known_ones() {
        let e = "rolledback".parse::<TxnState>().expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "unknown state `rolledback`\n  hint: one of queued, running, committed, rolling_back, rolled_back, rollback_failed"
        );
    }
}
