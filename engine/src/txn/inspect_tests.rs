//! Tests of the transaction index, retention and the record stream over a real store and
//! the durable journal.

use super::index::{self, TxnQuery};
use super::retention::{self, Retention};
use super::stream::RecordStream;
use super::synthetic::{self, Synthetic};
use super::{recovery, DurableJournal};
use crate::data::Element;
use crate::exec::{Journal, StepDone, StepIntent, TxnStart, TxnState};
use crate::model::ProcKind;
use crate::provider::CallContext;
use crate::store::{KeyRange, Space, Store};
use crate::TxnId;
use std::sync::Arc;
use std::time::Duration;

const DAY_MS: u64 = 86_400_000;

/// A store in a temp folder: sled, or PostgreSQL with `PROVISIO_TEST_STORE=postgres`.
fn open() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal");
    let store =
        crate::testing::open_store(&path, provisio_test_support::postgres::store_url(&path));
    (dir, store)
}

/// Journals a transaction of `steps` calls through the durable journal, ending in `end`
/// (`None`: left running). Returns its id.
async fn journaled(
    journal: &DurableJournal,
    target: &str,
    steps: usize,
    end: &[TxnState],
) -> TxnId {
    let id = TxnId::new_v7();
    let data = Element::new("data");
    let start = TxnStart {
        txn_id: &id,
        target,
        kind: ProcKind::Write,
        resumable: false,
        definitions: "defs",
        data: &data,
        request_data: &data,
        secret: false,
        pinned: &[],
        audit: true,
    };
    journal.txn_started(&start).await.expect("started");
    let ctx_el = Element::new("providerContext");
    for i in 0..steps {
        let context = CallContext {
            txn_id: id.clone(),
            step_id: format!("create[{i}]"),
            attempt: 1,
            namespace: "N".into(),
            procedure: "Create".into(),
        };
        let mut input = Element::new("executeData");
        input.push(Element::with_text("name", format!("user-{i}")));
        journal
            .step_intent(&StepIntent {
                context: &context,
                provider: "Rec",
                target: "N/Create",
                kind: ProcKind::Write,
                provider_context: &ctx_el,
                input: &input,
                call_data: &input,
                secret: false,
                durable: true,
            })
            .await
            .expect("intent");
        journal
            .step_done(&StepDone {
                state: None,
                context: &context,
                output: &input,
                undo: Some(&input),
                saved: None,
                secret: false,
                result: None,
                result_secret: false,
            })
            .await
            .expect("done");
    }
    for st in end {
        journal.txn_state(&id, *st, None).await.expect("state");
    }
    id
}

fn all(list: &index::TxnPage) -> Vec<String> {
    list.items.iter().map(|s| s.id.to_string()).collect()
}

fn query(limit: usize) -> TxnQuery {
    TxnQuery {
        limit,
        ..TxnQuery::default()
    }
}

#[tokio::test]
async fn the_journal_keeps_the_index_as_states_change() {
    let (_dir, store) = open();
    let journal = DurableJournal::new(store.clone(), None, "alice");
    let committed = journaled(&journal, "N/A", 2, &[TxnState::Committed]).await;
    let failed = journaled(
        &journal,
        "N/B",
        1,
        &[TxnState::RollingBack, TxnState::RollbackFailed],
    )
    .await;
    let running = journaled(&journal, "N/A", 1, &[]).await;
    let page = index::list(&*store, &query(10)).await.expect("list");
    assert_eq!(
        all(&page),
        [running.clone(), failed.clone(), committed.clone()]
    );
    let by = |q: TxnQuery| {
        let store = store.clone();
        async move { all(&index::list(&*store, &q).await.expect("list")) }
    };
    let state = |st| TxnQuery {
        state: Some(st),
        ..query(10)
    };
    assert_eq!(
        by(state(TxnState::Committed)).await,
        vec![committed.clone()]
    );
    assert_eq!(
        by(state(TxnState::RollbackFailed)).await,
        vec![failed.clone()]
    );
    assert_eq!(by(state(TxnState::Running)).await, vec![running.clone()]);
    assert!(by(state(TxnState::RollingBack)).await.is_empty());
    let procedure = TxnQuery {
        procedure: Some("N/A".into()),
        ..query(10)
    };
    assert_eq!(by(procedure).await, [running.clone(), committed.clone()]);
    let subject = TxnQuery {
        subject: Some("alice".into()),
        state: Some(TxnState::Committed),
        ..query(10)
    };
    assert_eq!(by(subject).await, vec![committed.clone()]);
    let nobody = TxnQuery {
        subject: Some("bob".into()),
        ..query(10)
    };
    assert!(by(nobody).await.is_empty());
    // The state keys moved: one per transaction, none left for the states passed through.
    let state_keys = store
        .scan_range(Space::Index, KeyRange::new(b"s", Some(b"t")), 100, false)
        .expect("scan");
    assert_eq!(state_keys.len(), 3, "{state_keys:?}");
}

#[tokio::test]
async fn a_page_reads_a_page_of_the_index_not_the_journal() {
    let (_dir, store) = open();
    index::ensure(&*store).await.expect("index");
    let spec = Synthetic {
        procedures: vec!["P/One".into(), "P/Two".into()],
        subjects: vec!["alice".into(), "bob".into(), "carol".into()],
        states: vec![
            TxnState::Committed,
            TxnState::Committed,
            TxnState::RolledBack,
            TxnState::RollbackFailed,
        ],
        ..Synthetic::default()
    };
    let ids = synthetic::fill(&*store, &spec, 0, 10_000)
        .await
        .expect("fill");
    let first = index::list(&*store, &query(50)).await.expect("list");
    let newest: Vec<String> = ids.iter().rev().take(50).cloned().collect();
    assert_eq!(all(&first), newest);
    assert!(first.examined <= 256, "read {} index keys", first.examined);
    // The next page continues where the first ended.
    let second = index::list(
        &*store,
        &TxnQuery {
            after: first.next.clone(),
            ..query(50)
        },
    )
    .await
    .expect("list");
    let next: Vec<String> = ids.iter().rev().skip(50).take(50).cloned().collect();
    assert_eq!(all(&second), next);
    // A filter reads its own index: a page of rollback_failed ones from 2,500.
    let failed = index::list(
        &*store,
        &TxnQuery {
            state: Some(TxnState::RollbackFailed),
            ..query(20)
        },
    )
    .await
    .expect("list");
    assert_eq!(failed.items.len(), 20);
    assert!(failed
        .items
        .iter()
        .all(|s| s.state == TxnState::RollbackFailed));
    assert!(
        failed.examined <= 256,
        "read {} index keys",
        failed.examined
    );
    // Two filters: the subject's index, the state checked on the summary.
    let both = index::list(
        &*store,
        &TxnQuery {
            subject: Some("bob".into()),
            state: Some(TxnState::RolledBack),
            ..query(10)
        },
    )
    .await
    .expect("list");
    assert_eq!(both.items.len(), 10);
    assert!(both
        .items
        .iter()
        .all(|s| s.who == "bob" && s.state == TxnState::RolledBack));
    // A time window: [since, until) on the start time.
    let since = spec.first_ms + 100 * spec.step_ms;
    let until = spec.first_ms + 110 * spec.step_ms;
    let window = index::list(
        &*store,
        &TxnQuery {
            since_ms: Some(since),
            until_ms: Some(until),
            ..query(100)
        },
    )
    .await
    .expect("list");
    assert_eq!(
        all(&window),
        ids[100..110].iter().rev().cloned().collect::<Vec<_>>()
    );
    assert_eq!(window.next, None);
    let e = index::list(
        &*store,
        &TxnQuery {
            after: Some("no-such-id".into()),
            ..query(5)
        },
    )
    .await
    .expect_err("unknown cursor");
    assert!(e.to_string().contains("no-such-id"), "{e}");
}

#[tokio::test]
async fn an_unindexed_journal_is_indexed_on_first_use() {
    let (_dir, store) = open();
    synthetic::fill(&*store, &Synthetic::default(), 0, 30)
        .await
        .expect("fill");
    // As a journal written before the index: summaries only.
    let keys = store.scan(Space::Index, b"").expect("scan");
    let mut b = crate::store::Batch::new();
    for (k, _) in keys {
        b.delete(Space::Index, k);
    }
    store.write(b, true).await.expect("drop index");
    assert_eq!(index::ensure(&*store).await.expect("built"), 30);
    assert_eq!(index::ensure(&*store).await.expect("once"), 0);
    let page = index::list(&*store, &query(100)).await.expect("list");
    assert_eq!(page.items.len(), 30);
}

#[tokio::test]
async fn prune_removes_only_finished_transactions_past_retention() {
    let (_dir, store) = open();
    let journal = DurableJournal::new(store.clone(), None, "ops");
    let now = super::records::now_ms();
    let old = Synthetic {
        first_ms: now - 60 * DAY_MS,
        states: vec![
            TxnState::Committed,
            TxnState::RolledBack,
            TxnState::RollbackFailed,
            TxnState::Running,
        ],
        ..Synthetic::default()
    };
    let old_ids = synthetic::fill(&*store, &old, 0, 400).await.expect("fill");
    // A real transaction, finished now, with its records in chunks.
    let recent = journaled(&journal, "N/A", 50, &[TxnState::Committed]).await;
    let policy = Retention {
        max_age: Some(Duration::from_millis(30 * DAY_MS)),
        max_count: None,
        audit_max_age: Some(Duration::from_millis(400 * DAY_MS)),
    };
    let dry = retention::prune(&*store, &policy, now, None, true)
        .await
        .expect("dry run");
    assert_eq!(dry.transactions.len(), 200);
    assert_eq!(
        index::list(&*store, &query(1000))
            .await
            .expect("list")
            .items
            .len(),
        401,
        "a dry run removes nothing"
    );
    let audit_before = store.scan(Space::Audit, b"").expect("audit").len();
    let pruned = retention::prune(&*store, &policy, now, None, false)
        .await
        .expect("prune");
    assert_eq!(pruned.transactions.len(), 200);
    assert!(pruned
        .transactions
        .iter()
        .all(|s| matches!(s.state, TxnState::Committed | TxnState::RolledBack)));
    let left = index::list(&*store, &query(1000)).await.expect("list");
    let mut states: Vec<TxnState> = left.items.iter().map(|s| s.state).collect();
    states.dedup();
    assert_eq!(left.items.len(), 201);
    assert!(left.items.iter().any(|s| s.id == recent));
    for s in &left.items[1..] {
        assert!(
            matches!(s.state, TxnState::RollbackFailed | TxnState::Running),
            "{s:?}"
        );
    }
    for (i, id) in old_ids.iter().enumerate() {
        let gone = i % 4 < 2;
        assert_eq!(
            store
                .scan(Space::Journal, id.as_bytes())
                .expect("scan")
                .is_empty(),
            gone,
            "records of {id}"
        );
        assert_eq!(
            store
                .get(Space::Txns, id.as_bytes())
                .expect("get")
                .is_none(),
            gone
        );
    }
    // Nothing of a pruned transaction is left in the index.
    let index_keys = store.scan(Space::Index, b"").expect("scan");
    assert!(index_keys.iter().all(|(k, _)| !pruned
        .transactions
        .iter()
        .any(|s| k.ends_with(s.id.as_bytes()))));
    // The audit is kept, under its own retention.
    assert_eq!(
        store.scan(Space::Audit, b"").expect("audit").len(),
        audit_before
    );
    let audit_policy = Retention {
        audit_max_age: Some(Duration::from_millis(30 * DAY_MS)),
        ..policy
    };
    let pruned = retention::prune(&*store, &audit_policy, now, None, false)
        .await
        .expect("prune audit");
    assert!(pruned.transactions.is_empty());
    // The old rollback_failed ones' entries go too: the audit is its own record.
    assert_eq!(pruned.audit_entries, 300);
    assert_eq!(store.scan(Space::Audit, b"").expect("audit").len(), 1);
    // The real transaction's records are still readable.
    assert_eq!(
        recovery::records(&journal, &recent).expect("records").len(),
        102
    );
}

#[tokio::test]
async fn prune_syncs_once_per_page_not_once_per_transaction() {
    let (_dir, sled) = open();
    let now = super::records::now_ms();
    let spec = Synthetic {
        first_ms: now - DAY_MS,
        ..Synthetic::default()
    };
    synthetic::fill(&*sled, &spec, 0, 600).await.expect("fill");
    let store = Counting::new(sled.clone());
    index::ensure(&*store).await.expect("index");
    store
        .durable_writes
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let keep = Retention {
        max_count: Some(10),
        ..Retention::default()
    };
    let pruned = retention::prune(&*store, &keep, now, None, false)
        .await
        .expect("prune");
    assert_eq!(pruned.transactions.len(), 590);
    let syncs = store
        .durable_writes
        .load(std::sync::atomic::Ordering::Relaxed);
    // 590 transactions are three pages of 256.
    assert!(
        (1..=4).contains(&syncs),
        "{syncs} syncs for 590 transactions"
    );
    let left = index::list(&*sled, &query(1000)).await.expect("list");
    assert_eq!(left.items.len(), 10);
}

#[tokio::test]
async fn prune_keeps_the_newest_n_and_stops_at_its_budget() {
    let (_dir, store) = open();
    let now = super::records::now_ms();
    let spec = Synthetic {
        first_ms: now - DAY_MS,
        ..Synthetic::default()
    };
    let ids = synthetic::fill(&*store, &spec, 0, 300).await.expect("fill");
    let keep = Retention {
        max_count: Some(20),
        ..Retention::default()
    };
    let first = retention::prune(&*store, &keep, now, Some(100), false)
        .await
        .expect("prune");
    assert_eq!(first.transactions.len(), 100);
    assert!(first.more);
    assert_eq!(first.transactions[0].id, ids[0], "oldest first");
    let rest = retention::prune(&*store, &keep, now, None, false)
        .await
        .expect("prune");
    assert_eq!(rest.transactions.len(), 180);
    assert!(!rest.more);
    let left = index::list(&*store, &query(1000)).await.expect("list");
    assert_eq!(
        all(&left),
        ids.iter().rev().take(20).cloned().collect::<Vec<_>>()
    );
    // Nothing to prune: one read of the finish index.
    let none = retention::prune(&*store, &keep, now, None, false)
        .await
        .expect("prune");
    assert!(none.transactions.is_empty());
}

#[tokio::test]
async fn records_stream_in_order_without_reading_ahead() {
    let (_dir, store) = open();
    let journal = DurableJournal::new(store.clone(), None, "ops");
    let id = journaled(
        &journal,
        "N/A",
        3000,
        &[TxnState::RollingBack, TxnState::RollbackFailed],
    )
    .await;
    // Records written after it finished (a resumed rollback) follow, compacted at its end.
    let summary = index::summary(&*store, id.as_str())
        .expect("read")
        .expect("there");
    journal.adopt(summary, 6003);
    journal
        .txn_state(&id, TxnState::RolledBack, Some("resumed"))
        .await
        .expect("state");
    let collected = recovery::records(&journal, &id).expect("records");
    assert_eq!(collected.len(), 6004);
    let mut stream = RecordStream::new(&*store, &id);
    let first: Vec<u64> = stream
        .by_ref()
        .take(10)
        .map(|r| r.expect("reads").0)
        .collect();
    assert_eq!(first, (0..10).collect::<Vec<u64>>());
    assert!(
        stream.values_read() <= 16,
        "{} chunks read for 10 records (one read of the chunks and one of the record keys)",
        stream.values_read()
    );
    let streamed: Vec<(u64, crate::txn::Record)> = RecordStream::new(&*store, &id)
        .map(|r| r.expect("reads"))
        .collect();
    assert_eq!(streamed, collected);
    assert!(RecordStream::new(
        &*store,
        &"0190f1c2-0000-7000-8000-000000000000".parse().unwrap()
    )
    .next()
    .is_none());
}

/// A running transaction is compacted as it goes; a record written while a compaction read
/// the keys stays under its own key although a later chunk holds higher numbers. The
/// stream merges the two layouts by sequence number.
#[tokio::test]
async fn records_stream_in_order_when_a_record_key_sorts_below_a_chunk() {
    let (_dir, store) = open();
    let journal = DurableJournal::new(store.clone(), None, "ops");
    let id = journaled(&journal, "N/A", 40, &[]).await;
    let collected = recovery::records(&journal, &id).expect("records");
    assert!(collected.len() > 30, "{} records", collected.len());
    // Lay the same records out again: 0..10 and 11..20 as chunks, 10 under its own key,
    // 20.. as chunks of 5 (the layout a compaction racing a record write leaves).
    let prefix = id.as_bytes().to_vec();
    let old = store
        .scan_range(
            Space::Journal,
            KeyRange::new(&prefix, crate::store::prefix_end(&prefix).as_deref()),
            100_000,
            false,
        )
        .expect("scan");
    let mut batch = crate::store::Batch::default();
    for (k, _) in old {
        batch.delete(Space::Journal, k);
    }
    let encode = |rs: &[(u64, crate::txn::Record)]| {
        let parts: Vec<String> = rs
            .iter()
            .map(|(_, r)| serde_json::to_string(r).expect("encode"))
            .collect();
        format!("[{}]", parts.join(",")).into_bytes()
    };
    let mut chunks = vec![(0, &collected[..10]), (11, &collected[11..20])];
    let mut first = 20;
    while first < collected.len() {
        let end = (first + 5).min(collected.len());
        chunks.push((first, &collected[first..end]));
        first = end;
    }
    for (first, rs) in chunks {
        batch.put(
            Space::Journal,
            super::records::chunk_key(&id, first as u64),
            encode(rs),
        );
    }
    batch.put(
        Space::Journal,
        super::records::record_key(&id, 10),
        serde_json::to_vec(&collected[10].1).expect("encode"),
    );
    store.write(batch, true).await.expect("write");
    let streamed: Vec<(u64, crate::txn::Record)> = RecordStream::new(&*store, &id)
        .map(|r| r.expect("reads"))
        .collect();
    let seqs: Vec<u64> = streamed.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..collected.len() as u64).collect::<Vec<u64>>());
    assert_eq!(streamed, collected);
}

/// A store that counts the summaries and index keys read through it.
struct Counting {
    inner: Arc<dyn Store>,
    summaries: std::sync::atomic::AtomicUsize,
    index_keys: std::sync::atomic::AtomicUsize,
    /// Durable writes (syncs) made through it.
    durable_writes: std::sync::atomic::AtomicUsize,
}

impl Counting {
    fn new(inner: Arc<dyn Store>) -> Arc<Counting> {
        Arc::new(Counting {
            inner,
            summaries: 0.into(),
            index_keys: 0.into(),
            durable_writes: 0.into(),
        })
    }

    fn count(&self, space: Space, n: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        match space {
            Space::Txns => self.summaries.fetch_add(n, Relaxed),
            Space::Index => self.index_keys.fetch_add(n, Relaxed),
            _ => 0,
        };
    }

    /// (summaries, index keys) read since the last call.
    fn take(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.summaries.swap(0, Relaxed),
            self.index_keys.swap(0, Relaxed),
        )
    }
}

#[async_trait::async_trait]
impl Store for Counting {
    async fn write(
        &self,
        batch: crate::store::Batch,
        durable: bool,
    ) -> Result<(), crate::store::StoreError> {
        if durable {
            self.durable_writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.write(batch, durable).await
    }
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, crate::store::StoreError> {
        self.count(space, 1);
        self.inner.get(space, key)
    }
    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
    ) -> Result<Vec<crate::store::KeyValue>, crate::store::StoreError> {
        let rows = self.inner.scan(space, prefix)?;
        self.count(space, rows.len());
        Ok(rows)
    }
    fn scan_range(
        &self,
        space: Space,
        range: KeyRange<'_>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<crate::store::KeyValue>, crate::store::StoreError> {
        let rows = self.inner.scan_range(space, range, limit, reverse)?;
        self.count(space, rows.len());
        Ok(rows)
    }
}

fn recovering_engine(
    journal: &Arc<DurableJournal>,
) -> (crate::exec::Engine, crate::testing::RecordingProvider) {
    let rec = crate::testing::RecordingProvider::new("Rec");
    let mut registry = crate::provider::ProviderRegistry::new();
    registry.register(Arc::new(rec.clone()));
    let catalog = crate::compile::Catalog::new(Vec::new(), &registry).expect("catalog");
    let engine = crate::exec::Engine::new(catalog, registry, crate::exec::EngineOptions::default())
        .with_journal(journal.clone());
    (engine, rec)
}

#[tokio::test]
async fn recovery_reads_the_unfinished_transactions_not_the_finished_ones() {
    let (_dir, sled) = open();
    let store = Counting::new(sled);
    index::ensure(&*store).await.expect("index");
    let finished = Synthetic {
        states: vec![TxnState::Committed, TxnState::RolledBack],
        ..Synthetic::default()
    };
    synthetic::fill(&*store, &finished, 0, 10_000)
        .await
        .expect("fill");
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "ops"));
    let mut unfinished = Vec::new();
    for _ in 0..3 {
        unfinished.push(journaled(&journal, "N/A", 2, &[]).await);
    }
    unfinished.push(journaled(&journal, "N/B", 2, &[TxnState::RollingBack]).await);
    let failed = journaled(
        &journal,
        "N/B",
        1,
        &[TxnState::RollingBack, TxnState::RollbackFailed],
    )
    .await;
    unfinished.sort();
    // Recovery reopens the journal: nothing of these transactions is live in memory.
    drop(journal);
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "ops"));
    let (engine, _rec) = recovering_engine(&journal);
    store.take();

    let found = recovery::recover(&engine, &journal).await.expect("recover");
    let (summaries, index_keys) = store.take();
    let ids: Vec<TxnId> = found.iter().map(|r| r.txn_id.clone()).collect();
    assert_eq!(ids, unfinished);
    assert!(found
        .iter()
        .all(|r| r.to == TxnState::RolledBack && r.undone == 2));
    // 10,005 summaries in the journal: a scan of them all would read every one.
    assert!(summaries <= 16, "recovery read {summaries} summaries");
    assert!(index_keys <= 16, "recovery read {index_keys} index keys");

    let live = recovery::live(&journal).await.expect("live");
    assert_eq!(live.iter().map(|s| &s.id).collect::<Vec<_>>(), [&failed]);
    let by_state = recovery::list(&journal, Some(TxnState::RolledBack)).expect("list");
    assert_eq!(by_state.len(), 5_000 + 4);
    let first = &by_state[0];
    assert!(unfinished.contains(&first.id), "newest first");
    store.take();
    assert_eq!(
        recovery::list(&journal, Some(TxnState::RollbackFailed)).expect("list")[0].id,
        failed
    );
    let found = recovery::resolve(&journal, &failed.as_str()[..30]).expect("resolve");
    assert_eq!(found.id, failed);
    let (summaries, index_keys) = store.take();
    assert!(
        summaries <= 4,
        "list and resolve read {summaries} summaries"
    );
    assert!(index_keys <= 2, "list read {index_keys} index keys");
    // Nothing left to recover: a restart reads one index page per state, no summary.
    recovery::recover(&engine, &journal).await.expect("again");
    assert_eq!(store.take().0, 0);
}

#[tokio::test]
async fn recovery_of_a_journal_without_the_index_builds_it_and_finds_the_same() {
    let (_dir, store) = open();
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "ops"));
    journaled(&journal, "N/A", 3, &[TxnState::Committed]).await;
    let running = journaled(&journal, "N/A", 2, &[]).await;
    let rolling = journaled(&journal, "N/B", 1, &[TxnState::RollingBack]).await;
    // As a journal written before the index: summaries and records only.
    let mut b = crate::store::Batch::new();
    for (k, _) in store.scan(Space::Index, b"").expect("scan") {
        b.delete(Space::Index, k);
    }
    store.write(b, true).await.expect("drop index");
    assert!(!index::is_built(&*store).expect("read"));
    drop(journal);
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "ops"));
    // Without the index, a listing by state reads every summary and writes nothing.
    let running_before = recovery::list(&journal, Some(TxnState::Running)).expect("list");
    assert_eq!(running_before.len(), 1);
    assert!(!index::is_built(&*store).expect("read"));

    let (engine, _rec) = recovering_engine(&journal);
    let found = recovery::recover(&engine, &journal).await.expect("recover");
    let mut expected = vec![running.clone(), rolling.clone()];
    expected.sort();
    assert_eq!(
        found.iter().map(|r| r.txn_id.clone()).collect::<Vec<_>>(),
        expected
    );
    assert!(found.iter().all(|r| r.to == TxnState::RolledBack));
    assert!(index::is_built(&*store).expect("read"));
    // The index it built follows the states recovery wrote.
    assert!(recovery::list(&journal, Some(TxnState::Running))
        .expect("list")
        .is_empty());
    assert_eq!(
        recovery::list(&journal, Some(TxnState::RolledBack))
            .expect("list")
            .len(),
        2
    );
}

#[tokio::test]
async fn recovery_reads_a_large_transaction_back_and_undoes_it_in_reverse() {
    recover_a_large_transaction(false).await;
}

/// A journal written before chunks had plans (`records::PLAN_TAG`) is planned from its
/// chunks, and recovers the same.
#[tokio::test]
async fn a_large_transaction_journaled_without_plans_recovers_the_same() {
    recover_a_large_transaction(true).await;
}

/// Journals `n` completed calls (`Create(user-i)` at step `create[i]`) and one in doubt in
/// `store`, as a crash leaves a transaction. Returns its id.
async fn journal_a_crashed_transaction(store: &Arc<dyn Store>, n: usize) -> TxnId {
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "ops"));
    let id = TxnId::new_v7();
    let data = Element::new("data");
    journal
        .txn_started(&TxnStart {
            txn_id: &id,
            target: "N/Create",
            kind: ProcKind::Write,
            resumable: false,
            definitions: "defs",
            data: &data,
            request_data: &data,
            secret: false,
            pinned: &[],
            audit: true,
        })
        .await
        .expect("started");
    let ctx_el = Element::new("providerContext");
    for i in 0..=n {
        let context = CallContext {
            txn_id: id.clone(),
            step_id: format!("create[{i}]"),
            attempt: 1,
            namespace: "Rec Provider".into(),
            procedure: "Create".into(),
        };
        let mut input = Element::new("executeData");
        input.push(Element::with_text("name", format!("user-{i}")));
        journal
            .step_intent(&StepIntent {
                context: &context,
                provider: "Rec",
                target: "Rec Provider/Create",
                kind: ProcKind::Write,
                provider_context: &ctx_el,
                input: &input,
                call_data: &input,
                secret: false,
                durable: true,
            })
            .await
            .expect("intent");
        // The last call is left in doubt, as a crash leaves the call in flight.
        if i == n {
            break;
        }
        let mut undo = Element::new("undo");
        undo.push(Element::with_text("created", format!("user-{i}")));
        journal
            .step_done(&StepDone {
                state: None,
                context: &context,
                output: &input,
                undo: Some(&undo),
                saved: None,
                secret: false,
                result: None,
                result_secret: false,
            })
            .await
            .expect("done");
    }
    id
}

/// The keys of `id`'s records under their own keys (not compacted into chunks).
fn record_keys(store: &dyn Store, id: &TxnId) -> usize {
    store
        .scan(Space::Journal, id.as_bytes())
        .expect("scan")
        .iter()
        .filter(|(k, _)| k.len() == super::records::TXN_ID_LEN + 8)
        .count()
}

/// Journals 3,000 completed calls and one in doubt, then recovers: every call undone in
/// reverse. `without_plans`: the chunks' plans are removed first (the journal as written
/// before them).
async fn recover_a_large_transaction(without_plans: bool) {
    let (_dir, store) = open();
    let n = 3_000;
    let id = journal_a_crashed_transaction(&store, n).await;
    // On sled the records are in chunks by now (compacted as the run went); on PostgreSQL
    // each is a row of its own.
    let chunks = store
        .scan(
            Space::Journal,
            &[id.as_bytes(), &[super::records::CHUNK_TAG]].concat(),
        )
        .expect("scan")
        .len();
    let plans = store
        .scan(
            Space::Journal,
            &[id.as_bytes(), &[super::records::PLAN_TAG]].concat(),
        )
        .expect("scan");
    if store.compacts_journal() {
        assert!(chunks > 10, "{chunks} chunks");
        assert_eq!(plans.len(), chunks, "a plan per chunk");
    } else {
        assert_eq!((chunks, plans.len()), (0, 0));
    }
    if without_plans {
        let mut b = crate::store::Batch::new();
        for (k, _) in plans {
            b.delete(Space::Journal, k);
        }
        store.write(b, true).await.expect("plans removed");
    }
    let left_by_the_run = record_keys(&*store, &id);
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "ops"));
    let (engine, rec) = recovering_engine(&journal);
    let found = recovery::recover(&engine, &journal).await.expect("recover");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].to, TxnState::RolledBack, "{:?}", found[0].problems);
    assert_eq!((found[0].undone, found[0].in_doubt), (n, 1));
    if store.compacts_journal() {
        // Recovery's records (a settlement, 3,000 undos, two states) are compacted as they
        // go, as a live run's are: each under its own key cost a write into sled, and the
        // rollback more journal than the run it undid. What the run left stays as it was.
        assert_eq!(
            record_keys(&*store, &id),
            left_by_the_run,
            "recovery's records are in chunks"
        );
    }
    // Each undo was read back from the store: every one, the latest completed first.
    let expected: Vec<String> = (0..n)
        .rev()
        .map(|i| format!("undo Create(user-{i})"))
        .collect();
    assert_eq!(rec.log(), expected);
    // The journal says so: every call undone, in that order.
    let undone: Vec<String> = RecordStream::new(&*store, &id)
        .filter_map(|r| match r.expect("record").1 {
            crate::txn::Record::Undone {
                step, error: None, ..
            } => Some(step),
            _ => None,
        })
        .collect();
    assert_eq!(
        undone,
        (0..n)
            .rev()
            .map(|i| format!("create[{i}]"))
            .collect::<Vec<_>>()
    );
}

/// The keys a committed five-step transaction leaves, and (on PostgreSQL) how its rows
/// were written: sled compacts the records into a chunk; PostgreSQL keeps a row a record,
/// each inserted once as a new key (two WAL records, where an upsert's new row costs three
/// and compaction deleted every row and inserted a chunk), with nothing deleted but the
/// index key of the state it left and nothing rewritten but its summary. A change that
/// makes the journal write more rows, or rewrite or delete them, fails here.
#[tokio::test]
async fn a_committed_five_step_transaction_leaves_one_row_a_record_written_once() {
    let (_dir, store) = open();
    let journal = DurableJournal::new(store.clone(), None, "alice");
    let rows_before = store.postgres().map(|pg| pg.row_writes());
    let id = journaled(&journal, "N/Five", 5, &[TxnState::Committed]).await;
    let keys: Vec<Vec<u8>> = store
        .scan(Space::Journal, id.as_bytes())
        .expect("scan")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let tags: Vec<u8> = keys.iter().map(|k| k[super::records::TXN_ID_LEN]).collect();
    let data = tags
        .iter()
        .filter(|t| **t == super::records::DATA_TAG)
        .count();
    let chunks = tags
        .iter()
        .filter(|t| **t == super::records::CHUNK_TAG)
        .count();
    let records = keys
        .iter()
        .filter(|k| k.len() == super::records::TXN_ID_LEN + 8)
        .count();
    // Nothing plans a transaction that is over: its last chunk gets no plan.
    let plans = tags
        .iter()
        .filter(|t| **t == super::records::PLAN_TAG)
        .count();
    assert_eq!(plans, 0, "no plan for the chunk written with the commit");
    // Started, an intent and a result for each of five steps, committed.
    let written = 1 + 2 * 5 + 1;
    assert_eq!(data, 1, "the request data: one chunk");
    let read: Vec<u64> = recovery::records(&journal, &id)
        .expect("records")
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(read, (0..written as u64).collect::<Vec<_>>());
    let index_keys = store
        .scan(Space::Index, b"")
        .expect("index")
        .into_iter()
        .filter(|(k, _)| k.ends_with(id.as_bytes()))
        .count();
    assert_eq!(
        index_keys, 5,
        "by start, state, procedure, subject and finish"
    );
    match (store.postgres(), rows_before) {
        (Some(pg), Some((inserted, upserted, deleted))) => {
            assert_eq!(
                (records, chunks),
                (written, 0),
                "a row a record on PostgreSQL"
            );
            let (i, u, d) = pg.row_writes();
            let (i, u, d) = (i - inserted, u - upserted, d - deleted);
            // The records; the request data, pinned definitions, summary and four index
            // keys at the start; the new state and finish index keys and the audit entry
            // at the end.
            assert_eq!(i as usize, written + 1 + 1 + 1 + 4 + 3, "rows inserted");
            assert_eq!(u, 1, "rows upserted: the summary at the end");
            assert_eq!(d, 1, "rows deleted: the index key of the running state");
        }
        _ => assert_eq!(
            (records, chunks),
            (0, 1),
            "compacted into one chunk on sled"
        ),
    }
}

/// A recovery that leaves a large transaction `rollback_failed` (one undo fails) journals
/// its undos in chunks with their plans; `tx resume-rollback` plans from them and runs
/// exactly the undo that has not succeeded.
#[tokio::test]
async fn a_rollback_failed_by_recovery_resumes_exactly_the_undo_left() {
    let (_dir, store) = open();
    let n = 3_000;
    let id = journal_a_crashed_transaction(&store, n).await;
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "ops"));
    let (engine, rec) = recovering_engine(&journal);
    rec.poison_undo("user-1500");
    let found = recovery::recover(&engine, &journal).await.expect("recover");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].to, TxnState::RollbackFailed);
    assert_eq!(found[0].undone, n - 1);
    assert_eq!(found[0].problems.len(), 1, "{:?}", found[0].problems);
    assert!(found[0].problems[0].contains("create[1500]"));
    if store.compacts_journal() {
        let plans = store
            .scan(
                Space::Journal,
                &[id.as_bytes(), &[super::records::PLAN_TAG]].concat(),
            )
            .expect("scan")
            .len();
        let chunks = store
            .scan(
                Space::Journal,
                &[id.as_bytes(), &[super::records::CHUNK_TAG]].concat(),
            )
            .expect("scan")
            .len();
        assert_eq!(plans, chunks, "a plan per chunk, recovery's too");
    }
    drop(engine);
    drop(journal);

    let journal = Arc::new(DurableJournal::new(store.clone(), None, "ops"));
    let (engine, rec) = recovering_engine(&journal);
    let resumed = recovery::resume_rollback(&engine, &journal, id.as_str())
        .await
        .expect("resume");
    assert_eq!(resumed.to, TxnState::RolledBack, "{:?}", resumed.problems);
    assert_eq!(resumed.undone, 1);
    assert_eq!(rec.log(), ["undo Create(user-1500)"]);
    // Every record reads back once, in order.
    let seqs: Vec<u64> = RecordStream::new(&*store, &id)
        .map(|r| r.expect("record").0)
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
}

/// Records that need not be durable (a rollback's undo records) are synced once a MiB of
/// them was written without a sync: the store buffers what is not durable until the next
/// durable write, and 100,000 undo records grew that buffer to tens of MiB. One sync a MiB,
/// not one a record.
#[tokio::test]
async fn a_long_run_of_records_that_need_not_be_durable_is_synced_a_mib_at_a_time() {
    use std::sync::atomic::Ordering::Relaxed;
    let (_dir, sled) = open();
    let store = Counting::new(sled);
    let journal = DurableJournal::new(store.clone(), None, "ops");
    let id = journaled(&journal, "N/A", 1, &[TxnState::RollingBack]).await;
    let before = store.durable_writes.load(Relaxed);
    let undos = 30_000;
    for i in 0..undos {
        let context = CallContext {
            txn_id: id.clone(),
            step_id: format!("create[{i}]"),
            attempt: 1,
            namespace: "N".into(),
            procedure: "Create".into(),
        };
        journal.undo_done(&context, None).await.expect("undone");
    }
    // The syncs run in the background, the writer does not wait for them.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let syncs = store.durable_writes.load(Relaxed) - before;
    // ~100 bytes a record (the record, its key, the chunks it is compacted into).
    assert!(
        (2..=12).contains(&syncs),
        "{syncs} syncs for {undos} undo records"
    );
}
