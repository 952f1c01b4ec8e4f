//! Finished transactions written straight into a store, the way the journal leaves them
//! (a chunk of records, the summary, its index keys and the audit entry), for benchmarks and
//! tests that need a journal of a million transactions without running them.

use super::index;
use super::records::{chunk_key, AuditEntry, Guarded, Record, TxnSummary, FORMAT};
use crate::data::Element;
use crate::exec::TxnState;
use crate::model::ProcKind;
use crate::store::{Batch, Space, Store, StoreError};

/// What the synthetic transactions look like.
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// Start time of the first one (ms since the epoch); each next one starts `step_ms` later.
    pub first_ms: u64,
    /// Time between starts.
    pub step_ms: u64,
    /// How long each took.
    pub took_ms: u64,
    /// Procedures, used in turn.
    pub procedures: Vec<String>,
    /// Subjects, used in turn.
    pub subjects: Vec<String>,
    /// States, used in turn.
    pub states: Vec<TxnState>,
}

impl Default for Synthetic {
    fn default() -> Self {
        Synthetic {
            first_ms: 1_700_000_000_000,
            step_ms: 10,
            took_ms: 5,
            procedures: vec!["Hosted Files/CreateFolder".into()],
            subjects: vec!["bench".into()],
            states: vec![TxnState::Committed],
        }
    }
}

/// Transactions written per store write.
const PER_WRITE: usize = 1000;

/// Writes `count` transactions numbered from `first` (their order in `spec`'s turns) and
/// returns their ids in start order.
pub async fn fill(
    store: &dyn Store,
    spec: &Synthetic,
    first: usize,
    count: usize,
) -> Result<Vec<String>, StoreError> {
    let mut ids = Vec::with_capacity(count);
    let mut batch = Batch::new();
    for n in first..first + count {
        let id = crate::TxnId::new_v7();
        let started_ms = spec.first_ms + n as u64 * spec.step_ms;
        let pick = |v: &[String]| v[n % v.len()].clone();
        let state = spec.states[n % spec.states.len()];
        let summary = TxnSummary {
            format: FORMAT,
            id: id.clone(),
            state,
            target: pick(&spec.procedures),
            who: pick(&spec.subjects),
            started_ms,
            updated_ms: started_ms + spec.took_ms,
            resumable: false,
            definitions: "synthetic".into(),
            message: None,
            audit: true,
        };
        let records = [
            Record::Started {
                at_ms: started_ms,
                target: summary.target.clone(),
                kind: ProcKind::Write,
                resumable: false,
                definitions: "synthetic".into(),
                who: summary.who.clone(),
                data: serde_json::json!({ "n": n }),
            },
            Record::Done {
                at_ms: started_ms + 1,
                step: "create".into(),
                attempt: 1,
                output: serde_json::json!({ "n": n }),
                undo: Some(Guarded::Plain(Element::new("undo"))),
                saved: None,
                result: None,
                state: None,
            },
            Record::State {
                at_ms: summary.updated_ms,
                state,
                message: None,
            },
        ];
        let encoded = serde_json::to_vec(&records).expect("records encode");
        batch.put(Space::Journal, chunk_key(&id, 0), encoded);
        batch.put(
            Space::Txns,
            id.as_bytes().to_vec(),
            serde_json::to_vec(&summary).expect("summary encodes"),
        );
        index::summary_written(&mut batch, None, &summary);
        if state.is_final() {
            let audit = AuditEntry {
                format: FORMAT,
                txn_id: id.clone(),
                who: summary.who.clone(),
                what: summary.target.clone(),
                started_ms,
                finished_ms: summary.updated_ms,
                outcome: state,
                message: None,
            };
            let mut k = summary.updated_ms.to_be_bytes().to_vec();
            k.extend_from_slice(id.as_bytes());
            batch.put(
                Space::Audit,
                k,
                serde_json::to_vec(&audit).expect("audit encodes"),
            );
        }
        ids.push(id.to_string());
        if ids.len() % PER_WRITE == 0 {
            store.write(std::mem::take(&mut batch), false).await?;
        }
    }
    store.write(batch, true).await?;
    Ok(ids)
}
