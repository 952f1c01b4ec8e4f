//! A transaction's journal records read as a stream, a few store keys at a time, so that
//! `tx show` and `tx log` of a 100,000-step transaction hold one chunk of records in memory,
//! not all of them ([`super::recovery::records`] collects them, for recovery).
//!
//! Record order is sequence order (see [`RecordStream`] for how the three key layouts are
//! merged).

use super::records::{decode_records, DecodeError, JournalKey, Record, CHUNK_TAG};
use super::recovery::RecoveryError;
use crate::store::{prefix_end, KeyRange, Space, Store};
use crate::TxnId;
use std::collections::VecDeque;

/// Store keys read per call (a chunk holds at most a few KiB of records).
const KEYS_PER_READ: usize = 8;

/// Decodes the value of a chunk key into its records, in order.
pub(crate) type ChunkDecoder<T> = fn(&[u8]) -> Result<Vec<T>, DecodeError>;

/// One ordered source of records: the chunk keys (`id ‖ C ‖ first seq`, or another tag's:
/// see [`RecordStream::with_chunks`]) or the per-record keys (`id ‖ seq`), read
/// `KEYS_PER_READ` keys at a time.
#[derive(Debug)]
struct Source<T> {
    /// The next key to read.
    from: Vec<u8>,
    /// Where the source's keys end (exclusive).
    end: Option<Vec<u8>>,
    /// Every key was read.
    exhausted: bool,
    /// Records read and not yet handed out, in sequence order.
    buffer: VecDeque<(u64, T)>,
}

impl<T> Source<T> {
    fn new(from: Vec<u8>, end: Option<Vec<u8>>) -> Source<T> {
        Source {
            from,
            end,
            exhausted: false,
            buffer: VecDeque::new(),
        }
    }

    fn head(&self) -> Option<u64> {
        self.buffer.front().map(|(seq, _)| *seq)
    }
}

/// The records of one transaction in sequence order, with their sequence numbers. Each item
/// is read when asked for: the stream holds at most `KEYS_PER_READ` store values per source.
///
/// A finished transaction's records are compacted into chunks (or, before chunks, one whole
/// array under the bare id) numbered below every per-record key written after them (a
/// resumed rollback). A running one is compacted as it goes, and a record written while a
/// compaction was reading the keys stays under its own key although a later chunk holds
/// higher numbers. So the stream reads the whole array first, then merges the chunks and
/// the per-record keys by sequence number.
///
/// `T` is what each record is decoded into: the whole [`Record`], or (for recovery's plan,
/// see `recovery::SlotRecord`) only the few fields a pass needs.
pub struct RecordStream<'a, T = Record> {
    store: &'a dyn Store,
    txn_id: TxnId,
    /// The bare-id array, read on the first call.
    whole: Option<VecDeque<(u64, T)>>,
    chunks: Source<T>,
    /// The tag of the chunk keys read, and how their values decode.
    chunk_tag: u8,
    decode_chunk: ChunkDecoder<T>,
    records: Source<T>,
    failed: bool,
    /// Store values read so far (tests check that reading does not run ahead).
    values_read: usize,
}

impl<T> std::fmt::Debug for RecordStream<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStream")
            .field("txn_id", &self.txn_id)
            .field("values_read", &self.values_read)
            .finish()
    }
}

impl<'a> RecordStream<'a> {
    /// The records of `txn_id` in `store`.
    pub fn new(store: &'a dyn Store, txn_id: &TxnId) -> RecordStream<'a> {
        RecordStream::decoding(store, txn_id)
    }
}

impl<'a, T: serde::de::DeserializeOwned> RecordStream<'a, T> {
    /// The records of `txn_id` in `store`, each decoded as a `T`.
    pub(crate) fn decoding(store: &'a dyn Store, txn_id: &TxnId) -> RecordStream<'a, T> {
        RecordStream::with_chunks(store, txn_id, CHUNK_TAG, decode_records::<Vec<T>>)
    }

    /// The records of `txn_id` in `store`, the compacted ones read from the keys tagged
    /// `chunk_tag` (`id ‖ tag ‖ first seq`, a tag above [`CHUNK_TAG`]) decoded by
    /// `decode_chunk` instead of from the chunks themselves: recovery's plan reads each
    /// chunk's plan key (`records::PLAN_TAG`) in its place. The other records decode as `T`.
    pub(crate) fn with_chunks(
        store: &'a dyn Store,
        txn_id: &TxnId,
        chunk_tag: u8,
        decode_chunk: ChunkDecoder<T>,
    ) -> RecordStream<'a, T> {
        let id = txn_id.as_bytes();
        let chunk_prefix = [id, &[chunk_tag]].concat();
        RecordStream {
            store,
            txn_id: txn_id.clone(),
            whole: None,
            chunks: Source::new(chunk_prefix.clone(), prefix_end(&chunk_prefix)),
            chunk_tag,
            decode_chunk,
            // Per-record keys sort below the chunk tags (their sequence numbers start with
            // a zero byte) and after the bare id.
            records: Source::new([id, &[0]].concat(), Some([id, &[CHUNK_TAG]].concat())),
            failed: false,
            values_read: 0,
        }
    }

    /// How many store values (records or chunks of records) were read so far.
    pub fn values_read(&self) -> usize {
        self.values_read
    }

    fn bad(&self, source: DecodeError) -> RecoveryError {
        RecoveryError::Record {
            txn: self.txn_id.to_string(),
            source,
        }
    }

    /// Reads the bare-id array once.
    fn whole(&mut self) -> Result<&mut VecDeque<(u64, T)>, RecoveryError> {
        if self.whole.is_none() {
            let mut buffer = VecDeque::new();
            if let Some(v) = self.store.get(Space::Journal, self.txn_id.as_bytes())? {
                self.values_read += 1;
                let all: Vec<T> = decode_records(&v).map_err(|e| self.bad(e))?;
                buffer.extend(all.into_iter().enumerate().map(|(i, r)| (i as u64, r)));
            }
            self.whole = Some(buffer);
        }
        Ok(self.whole.get_or_insert_with(VecDeque::new))
    }

    /// Reads more of the chunks (`chunks`) or of the per-record keys until it has a record
    /// buffered or every key was read.
    fn fill(&mut self, chunks: bool) -> Result<(), RecoveryError> {
        loop {
            let source = if chunks {
                &mut self.chunks
            } else {
                &mut self.records
            };
            if !source.buffer.is_empty() || source.exhausted {
                return Ok(());
            }
            let rows = self.store.scan_range(
                Space::Journal,
                KeyRange::new(&source.from, source.end.as_deref()),
                KEYS_PER_READ,
                false,
            )?;
            if let Some((last, _)) = rows.last() {
                source.from = last.clone();
                source.from.push(0);
            }
            source.exhausted = rows.len() < KEYS_PER_READ;
            for (k, v) in rows {
                self.values_read += 1;
                let first = (chunks
                    && k.get(self.txn_id.as_bytes().len()) == Some(&self.chunk_tag))
                .then(|| k.get(self.txn_id.as_bytes().len() + 1..))
                .flatten()
                .and_then(|b| b.try_into().ok().map(u64::from_be_bytes));
                let decoded: Vec<(u64, T)> = match (first, JournalKey::parse(&self.txn_id, &k)) {
                    (Some(first), _) => {
                        let all = (self.decode_chunk)(&v).map_err(|e| self.bad(e))?;
                        all.into_iter()
                            .enumerate()
                            .map(|(i, r)| (first + i as u64, r))
                            .collect()
                    }
                    (None, Some(JournalKey::Record(seq))) if !chunks => {
                        vec![(seq, decode_records(&v).map_err(|e| self.bad(e))?)]
                    }
                    // The bare id is read first; other shapes are not this transaction's.
                    _ => Vec::new(),
                };
                let source = if chunks {
                    &mut self.chunks
                } else {
                    &mut self.records
                };
                source.buffer.extend(decoded);
            }
        }
    }

    fn next_record(&mut self) -> Result<Option<(u64, T)>, RecoveryError> {
        if let Some(r) = self.whole()?.pop_front() {
            return Ok(Some(r));
        }
        self.fill(true)?;
        self.fill(false)?;
        let from_chunks = match (self.chunks.head(), self.records.head()) {
            (None, None) => return Ok(None),
            (Some(c), Some(r)) => c < r,
            (c, _) => c.is_some(),
        };
        Ok(if from_chunks {
            self.chunks.buffer.pop_front()
        } else {
            self.records.buffer.pop_front()
        })
    }
}

impl<T: serde::de::DeserializeOwned> Iterator for RecordStream<'_, T> {
    type Item = Result<(u64, T), RecoveryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_record() {
            Ok(r) => r.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
