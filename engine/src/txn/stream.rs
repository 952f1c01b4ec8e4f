//! A transaction's journal records read as a stream, a few store keys at a time, so that
//! `tx show` and `tx log` of a 100,000-step transaction hold one chunk of records in memory,
//! not all of them ([`super::recovery::records`] collects them, for recovery).
//!
//! Record order is sequence order: a finished transaction's records are compacted into
//! chunks (or, before chunks, one whole array under the bare id) numbered below every
//! per-record key written after them (a resumed rollback), so the stream reads the whole
//! array, then the chunks, then the per-record keys.

use super::records::{decode_records, JournalKey, Record, CHUNK_TAG};
use super::recovery::RecoveryError;
use crate::store::{prefix_end, KeyRange, Space, Store};
use crate::TxnId;
use std::collections::VecDeque;

/// Store keys read per call (a chunk holds at most a few KiB of records).
const KEYS_PER_READ: usize = 8;

/// Where the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The bare-id key (all records of a transaction finished before chunks).
    Whole,
    /// The chunk keys (`id ‖ C ‖ first seq`).
    Chunks,
    /// The per-record keys (`id ‖ seq`).
    Records,
    Done,
}

/// The records of one transaction in order, with their sequence numbers. Each item is read
/// when asked for: the stream holds at most `KEYS_PER_READ` store values.
pub struct RecordStream<'a> {
    store: &'a dyn Store,
    txn_id: TxnId,
    phase: Phase,
    /// The next key to read in the current phase.
    from: Vec<u8>,
    buffer: VecDeque<(u64, Record)>,
    /// Store values read so far (tests check that reading does not run ahead).
    values_read: usize,
}

impl std::fmt::Debug for RecordStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStream")
            .field("txn_id", &self.txn_id)
            .field("phase", &self.phase)
            .field("values_read", &self.values_read)
            .finish()
    }
}

impl<'a> RecordStream<'a> {
    /// The records of `txn_id` in `store`.
    pub fn new(store: &'a dyn Store, txn_id: &TxnId) -> RecordStream<'a> {
        RecordStream {
            store,
            txn_id: txn_id.clone(),
            phase: Phase::Whole,
            from: Vec::new(),
            buffer: VecDeque::new(),
            values_read: 0,
        }
    }

    /// How many store values (records or chunks of records) were read so far.
    pub fn values_read(&self) -> usize {
        self.values_read
    }

    fn bad(&self, source: super::records::DecodeError) -> RecoveryError {
        RecoveryError::Record {
            txn: self.txn_id.to_string(),
            source,
        }
    }

    /// Reads the next few keys into the buffer, moving through the phases; false when
    /// there is nothing left.
    fn fill(&mut self) -> Result<bool, RecoveryError> {
        let id = self.txn_id.as_bytes();
        while self.buffer.is_empty() {
            match self.phase {
                Phase::Whole => {
                    self.phase = Phase::Chunks;
                    self.from = [id, &[CHUNK_TAG]].concat();
                    if let Some(v) = self.store.get(Space::Journal, id)? {
                        self.values_read += 1;
                        let all: Vec<Record> = decode_records(&v).map_err(|e| self.bad(e))?;
                        self.buffer
                            .extend(all.into_iter().enumerate().map(|(i, r)| (i as u64, r)));
                    }
                }
                Phase::Chunks | Phase::Records => {
                    let end = match self.phase {
                        Phase::Chunks => prefix_end(&[id, &[CHUNK_TAG]].concat()),
                        // Per-record keys sort below the chunk tag (their sequence numbers
                        // start with a zero byte).
                        _ => Some([id, &[CHUNK_TAG]].concat()),
                    };
                    let rows = self.store.scan_range(
                        Space::Journal,
                        KeyRange::new(&self.from, end.as_deref()),
                        KEYS_PER_READ,
                        false,
                    )?;
                    if let Some((last, _)) = rows.last() {
                        self.from = last.clone();
                        self.from.push(0);
                    }
                    if rows.len() < KEYS_PER_READ {
                        // This phase is read out once these are used.
                        if self.phase == Phase::Chunks {
                            self.phase = Phase::Records;
                            // Past the bare id, which the first phase read.
                            self.from = [id, &[0]].concat();
                        } else {
                            self.phase = Phase::Done;
                        }
                    }
                    for (k, v) in rows {
                        self.values_read += 1;
                        match JournalKey::parse(&self.txn_id, &k) {
                            Some(JournalKey::Chunk(first)) => {
                                let all: Vec<Record> =
                                    decode_records(&v).map_err(|e| self.bad(e))?;
                                self.buffer.extend(
                                    all.into_iter()
                                        .enumerate()
                                        .map(|(i, r)| (first + i as u64, r)),
                                );
                            }
                            Some(JournalKey::Record(seq)) => {
                                let r: Record = decode_records(&v).map_err(|e| self.bad(e))?;
                                self.buffer.push_back((seq, r));
                            }
                            // The bare id is read first; other shapes are not this
                            // transaction's.
                            Some(JournalKey::Whole) | None => {}
                        }
                    }
                }
                Phase::Done => return Ok(false),
            }
        }
        Ok(true)
    }
}

impl Iterator for RecordStream<'_> {
    type Item = Result<(u64, Record), RecoveryError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.fill() {
            Ok(true) => self.buffer.pop_front().map(Ok),
            Ok(false) => None,
            Err(e) => {
                self.phase = Phase::Done;
                self.buffer.clear();
                Some(Err(e))
            }
        }
    }
}
