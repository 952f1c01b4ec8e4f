//! A [`Store`] in memory: what an engine without a journal (`--ephemeral`) keeps provider
//! state in, with the same batch semantics as the durable store and nothing on disk.

use super::{Batch, KeyRange, KeyValue, Space, Store, StoreError};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::RwLock;

/// Rows by (space tag, key).
type Rows = BTreeMap<(u8, Vec<u8>), Vec<u8>>;

/// An in-memory store: batches are applied whole under one lock, so a read sees a batch
/// entirely or not at all; everything is lost when it is dropped.
#[derive(Debug, Default)]
pub struct MemStore {
    rows: RwLock<Rows>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }
}

#[async_trait]
impl Store for MemStore {
    async fn write(&self, batch: Batch, _durable: bool) -> Result<(), StoreError> {
        let mut rows = self.rows.write().unwrap_or_else(|e| e.into_inner());
        for (space, key, value) in batch.writes {
            match value {
                Some(v) => rows.insert((space.tag(), key), v),
                None => rows.remove(&(space.tag(), key)),
            };
        }
        Ok(())
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
        Ok(rows.get(&(space.tag(), key.to_vec())).cloned())
    }

    fn scan(&self, space: Space, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
        Ok(rows
            .range((space.tag(), prefix.to_vec())..)
            .take_while(|((tag, k), _)| *tag == space.tag() && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_range(
        &self,
        space: Space,
        range: KeyRange<'_>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
        let within = rows
            .range((space.tag(), range.start.to_vec())..)
            .take_while(|((tag, k), _)| *tag == space.tag() && range.contains(k))
            .map(|((_, k), v)| (k.clone(), v.clone()));
        Ok(if reverse {
            let mut all: Vec<KeyValue> = within.collect();
            all.reverse();
            all.truncate(limit);
            all
        } else {
            within.take(limit).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_apply_in_order_and_scans_stay_in_their_space() {
        let store = MemStore::new();
        let mut b = Batch::new();
        b.put(Space::State, b"p\0a".to_vec(), b"1".to_vec())
            .put(Space::State, b"p\0b".to_vec(), b"2".to_vec())
            .put(Space::Journal, b"p\0c".to_vec(), b"x".to_vec());
        b.delete(Space::State, b"p\0a".to_vec());
        store.write(b, true).await.unwrap();
        assert_eq!(store.get(Space::State, b"p\0a").unwrap(), None);
        assert_eq!(
            store.scan(Space::State, b"p\0").unwrap(),
            vec![(b"p\0b".to_vec(), b"2".to_vec())]
        );
        let range = KeyRange::new(b"", None);
        assert_eq!(
            store.scan_range(Space::Journal, range, 10, true).unwrap(),
            vec![(b"p\0c".to_vec(), b"x".to_vec())]
        );
    }
}
