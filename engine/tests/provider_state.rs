//! Provider state (issue 15): a provider's own keys in the engine's store, written with the
//! step's journal record and reversed with its undo record, isolated by per-key locks held
//! to the end of the transaction. A small counter provider drives it: committed writes are
//! seen by the next transaction, a rollback restores, a crash at any journal write leaves
//! a step's writes there with its result or not at all, concurrent increments are exact,
//! reads see the transaction's own writes, a preview never writes, and an engine without a
//! journal behaves the same in memory.

use async_trait::async_trait;
use provisio_engine::model::{Format, InputSpec, ProcKind};
use provisio_engine::{
    parse_namespaces, parse_request, Call, Catalog, Done, DurableJournal, Element, Engine,
    EngineOptions, Outcome, Preview, ProcedureSpec, Provider, ProviderError, ProviderRegistry,
    RetryOptions, Store, TxnResult, TxnState, UndoKind,
};
use provisio_engine::{Batch, KeyRange, KeyValue, Space, StoreError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Keeps counters in its provider state. `Add(key, by)` reads, yields, writes back (no undo
/// record: the engine reverses its writes); `Pair(by)` adds to `a` and `b` in one call (and
/// returns an undo record, so the provider's undo runs before the engine's reversal);
/// `Swap(key, value)` writes then reads its own write; `Get(key)` is a read procedure;
/// `Fail` fails. Every write also marks `applied/<idempotency key>`, which `recover` reads.
#[derive(Default)]
struct Counter {
    undos: AtomicUsize,
    /// Declares its effects to be provider-state writes only (they are): the engine then
    /// does not sync the intent before each call.
    state_only: bool,
}

fn input(call: &Call, name: &str) -> String {
    call.execute_data
        .child(name)
        .map(|e| e.string_value())
        .unwrap_or_default()
}

fn with_value(call: &Call, value: u64) -> Element {
    let mut out = call.execute_data.clone();
    out.push(Element::with_text("value", value.to_string()));
    out
}

fn spec(name: &str, kind: ProcKind) -> ProcedureSpec {
    ProcedureSpec {
        name: name.to_string(),
        kind,
        undo: UndoKind::Reversible,
        description: format!("counter {name}"),
        inputs: ["key", "by", "value", "delay", "undo"]
            .iter()
            .map(|n| InputSpec {
                name: n.to_string(),
                required: false,
                ..Default::default()
            })
            .collect(),
    }
}

impl Counter {
    async fn add(call: &Call, key: &str, by: u64) -> Result<u64, ProviderError> {
        let n: u64 = call.state.get_json(key.as_bytes()).await?.unwrap_or(0);
        // Let other transactions run between the read and the write: without isolation,
        // concurrent increments would lose updates here.
        tokio::time::sleep(Duration::from_millis(1)).await;
        call.state.put_json(key.as_bytes(), &(n + by)).await?;
        Ok(n + by)
    }

    async fn mark(call: &Call) -> Result<(), ProviderError> {
        let marker = format!("applied/{}", call.context.idempotency_key());
        Ok(call.state.put(marker.as_bytes(), b"1".to_vec()).await?)
    }
}

#[async_trait]
impl Provider for Counter {
    fn name(&self) -> &str {
        "Counter"
    }

    fn effects_in_state_only(&self) -> bool {
        self.state_only
    }

    fn procedures(&self) -> Vec<ProcedureSpec> {
        vec![
            spec("Add", ProcKind::Write),
            spec("Pair", ProcKind::Write),
            spec("Swap", ProcKind::Write),
            spec("Get", ProcKind::Read),
            spec("Fail", ProcKind::Write),
        ]
    }

    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        let by: u64 = input(&call, "by").parse().unwrap_or(1);
        let key = input(&call, "key");
        let (value, undo) = match call.context.procedure.as_str() {
            "Add" => {
                let delay: u64 = input(&call, "delay").parse().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let undo =
                    (input(&call, "undo") == "slow").then(|| Element::with_text("undo", "slow"));
                (Self::add(&call, &key, by).await?, undo)
            }
            "Pair" => {
                Self::add(&call, "a", by).await?;
                let b = Self::add(&call, "b", by).await?;
                (b, Some(Element::new("undo")))
            }
            "Swap" => {
                let value = input(&call, "value");
                call.state.put(key.as_bytes(), value.clone()).await?;
                let back = call.state.get(key.as_bytes()).await?.unwrap_or_default();
                assert_eq!(back, value.as_bytes(), "a call reads its own write");
                (back.len() as u64, None)
            }
            "Get" => {
                let n: u64 = call.state.get_json(key.as_bytes()).await?.unwrap_or(0);
                // A read procedure may not write.
                let refused = call.state.put(b"x", b"1".to_vec()).await;
                assert!(refused.is_err(), "a read procedure wrote provider state");
                return Ok(Outcome {
                    execute_data: with_value(&call, n),
                    undo: None,
                });
            }
            _ => return Err(ProviderError::permanent("asked to fail")),
        };
        Self::mark(&call).await?;
        Ok(Outcome {
            execute_data: with_value(&call, value),
            undo,
        })
    }

    async fn undo(&self, done: Done) -> Result<(), ProviderError> {
        // The undo sees the step's own writes (reversed by the engine after it) and may
        // not write.
        if done.context.procedure == "Pair" {
            let a: Option<u64> = done.state.get_json(b"a").await?;
            assert!(a.is_some(), "the undo of Pair sees its writes");
            assert!(done.state.put(b"a", b"0".to_vec()).await.is_err());
        }
        if done.undo.string_value() == "slow" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.undos.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn recover(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        let marker = format!("applied/{}", call.context.idempotency_key());
        Ok(call
            .state
            .get(marker.as_bytes())
            .await?
            .map(|_| Element::new("undo")))
    }

    async fn preview(&self, call: &Call) -> Result<Preview, ProviderError> {
        let key = input(call, "key");
        let n: u64 = call.state.get_json(key.as_bytes()).await?.unwrap_or(0);
        assert!(call.state.put(b"x", b"1".to_vec()).await.is_err());
        Ok(Preview::Update(format!("{key} {n} -> {}", n + 1)))
    }
}

const NAMESPACE: &str = r#"
namespace: Counting
procedures:
  Bump:
    access: public
    steps:
      add:
        call: Counter Provider/Add
        with: { key: counter }
        output: { value: "{{ executeData.value }}" }
  BumpThenFail:
    access: public
    steps:
      add:
        call: Counter Provider/Add
        with: { key: counter }
      fail:
        call: Counter Provider/Fail
        needs: [add]
  BumpTwice:
    access: public
    steps:
      one:
        call: Counter Provider/Add
        with: { key: counter }
      two:
        call: Counter Provider/Add
        needs: [one]
        with: { key: counter, by: "10" }
        output: { value: "{{ executeData.value }}" }
  Pair:
    access: public
    steps:
      pair:
        call: Counter Provider/Pair
        with: { by: "1" }
  PairThenFail:
    access: public
    steps:
      pair:
        call: Counter Provider/Pair
        with: { by: "1" }
      swap:
        call: Counter Provider/Swap
        needs: [pair]
        with: { key: name, value: bob }
      fail:
        call: Counter Provider/Fail
        needs: [swap]
  BumpBoth:
    access: public
    steps:
      one:
        call: Counter Provider/Add
        with: { key: counter }
      two:
        call: Counter Provider/Add
        with: { key: counter, by: "10" }
  BumpBothThenFail:
    access: public
    steps:
      one:
        call: Counter Provider/Add
        with: { key: counter }
      two:
        call: Counter Provider/Add
        with: { key: counter, by: "10", delay: "20", undo: slow }
      fail:
        call: Counter Provider/Fail
        needs: [one, two]
  XThenY:
    access: public
    steps:
      x:
        call: Counter Provider/Add
        with: { key: x }
      y:
        call: Counter Provider/Add
        needs: [x]
        with: { key: y }
  YThenX:
    access: public
    steps:
      y:
        call: Counter Provider/Add
        with: { key: y }
      x:
        call: Counter Provider/Add
        needs: [y]
        with: { key: x }
  TwoKeys:
    access: public
    inputs:
      first: { type: string, required: true }
      second: { type: string, required: true }
    steps:
      one:
        call: Counter Provider/Add
        with: { key: "{{ data.first }}" }
      two:
        call: Counter Provider/Add
        needs: [one]
        with: { key: "{{ data.second }}", delay: "300" }
  XThenYLate:
    access: public
    steps:
      x:
        call: Counter Provider/Add
        with: { key: x }
      y:
        call: Counter Provider/Add
        needs: [x]
        with: { key: y, delay: "300" }
  YThenXLate:
    access: public
    steps:
      y:
        call: Counter Provider/Add
        with: { key: y }
      x:
        call: Counter Provider/Add
        needs: [y]
        with: { key: x, delay: "300" }
  Resume:
    access: public
    resumable: true
    steps:
      one:
        call: Counter Provider/Add
        with: { key: r }
      two:
        call: Counter Provider/Add
        needs: [one]
        with: { key: r, by: "10" }
  ResumeThenFail:
    access: public
    resumable: true
    steps:
      one:
        call: Counter Provider/Add
        with: { key: r }
      two:
        call: Counter Provider/Add
        needs: [one]
        with: { key: r, by: "10" }
      fail:
        call: Counter Provider/Fail
        needs: [two]
  Swap:
    access: public
    steps:
      swap:
        call: Counter Provider/Swap
        with: { key: name, value: ann }
  Read:
    access: public
    type: read
    steps:
      get:
        call: Counter Provider/Get
        with: { key: counter }
        output: { value: "{{ executeData.value }}" }
  ReadThrice:
    access: public
    type: read
    steps:
      one:
        call: Counter Provider/Get
        with: { key: counter }
      two:
        call: Counter Provider/Get
        needs: [one]
        with: { key: counter }
      three:
        call: Counter Provider/Get
        needs: [two]
        with: { key: counter }
"#;

fn engine(counter: Arc<Counter>) -> Engine {
    let namespaces = parse_namespaces(NAMESPACE, "counting.yaml", Format::Yaml).unwrap();
    let mut registry = ProviderRegistry::new();
    registry.register(counter);
    let catalog = Catalog::new(namespaces, &registry).unwrap();
    let options = EngineOptions {
        retry: RetryOptions::default()
            .with_intervals(Duration::from_millis(1), Duration::from_millis(1)),
        step_timeout: Duration::from_secs(20),
        ..EngineOptions::default()
    };
    Engine::new(catalog, registry, options)
}

/// The store of the suite (sled, or PostgreSQL with `PROVISIO_TEST_STORE=postgres`) for
/// the folder `dir`.
fn open_store(dir: &std::path::Path) -> Arc<dyn Store> {
    provisio_engine::testing::open_store(dir, provisio_test_support::postgres::store_url(dir))
}

fn durable(dir: &std::path::Path, engine: Engine) -> (Engine, Arc<DurableJournal>) {
    let store = open_store(dir);
    let journal = Arc::new(DurableJournal::new(store, None, "test"));
    (engine.with_journal(journal.clone()), journal)
}

async fn run(engine: &Engine, procedure: &str) -> TxnResult {
    let request = parse_request(
        &format!("call: Counting/{procedure}"),
        "req.yaml",
        Format::Yaml,
    )
    .unwrap();
    engine.run(&request).await.unwrap()
}

fn counter(engine: &Engine, key: &str) -> Option<u64> {
    engine
        .state_value("Counter", key.as_bytes())
        .unwrap()
        .map(|v| serde_json::from_slice(&v).unwrap())
}

fn value(r: &TxnResult) -> String {
    let data = r
        .data
        .as_ref()
        .unwrap_or_else(|| panic!("{:?}: {:?}", r.state, r.failure));
    data.child("value")
        .map(|v| v.string_value())
        .unwrap_or_default()
}

/// With a durable journal (sled) and without one (memory), the same behaviour.
async fn both(test: impl AsyncFn(Engine, &Counter)) {
    let dir = tempfile::tempdir().unwrap();
    let c = Arc::new(Counter::default());
    let (e, _journal) = durable(dir.path(), engine(c.clone()));
    test(e, &c).await;
    let c = Arc::new(Counter::default());
    test(engine(c.clone()), &c).await;
}

#[tokio::test]
async fn a_committed_write_is_seen_by_the_next_transaction() {
    both(async |e: Engine, _: &Counter| {
        assert_eq!(value(&run(&e, "Bump").await), "1");
        assert_eq!(value(&run(&e, "Bump").await), "2");
        assert_eq!(counter(&e, "counter"), Some(2));
        // A read procedure reads it (and may not write).
        let r = run(&e, "Read").await;
        assert_eq!(value(&r), "2");
    })
    .await;
}

#[tokio::test]
async fn reads_see_the_transactions_own_writes() {
    both(async |e: Engine, _: &Counter| {
        // The second step reads the first step's write (1), not the committed value (0).
        assert_eq!(value(&run(&e, "BumpTwice").await), "11");
        // A call reads its own write (asserted inside Swap).
        let r = run(&e, "Swap").await;
        assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
        assert_eq!(
            e.state_value("Counter", b"name").unwrap().as_deref(),
            Some(&b"ann"[..])
        );
    })
    .await;
}

#[tokio::test]
async fn a_rollback_restores_every_key_as_it_was() {
    both(async |e: Engine, c: &Counter| {
        run(&e, "Bump").await;
        run(&e, "Swap").await;
        let r = run(&e, "BumpThenFail").await;
        assert_eq!(r.state, TxnState::RolledBack);
        assert_eq!(counter(&e, "counter"), Some(1));
        // A key that did not exist before is gone again; one that did is back; the
        // provider's own undo ran too (before the engine's reversal).
        let r = run(&e, "PairThenFail").await;
        assert_eq!(r.state, TxnState::RolledBack);
        assert_eq!(counter(&e, "a"), None);
        assert_eq!(counter(&e, "b"), None);
        assert_eq!(
            e.state_value("Counter", b"name").unwrap().as_deref(),
            Some(&b"ann"[..])
        );
        assert_eq!(c.undos.load(Ordering::SeqCst), 1);
        // And nothing stays locked: the next transaction goes through.
        assert_eq!(value(&run(&e, "Bump").await), "2");
    })
    .await;
}

/// Two steps of one transaction that run at once and add to the same key take turns (no
/// update lost inside a transaction), and their undos restore it in reverse order (even
/// though the calls overlapped and the later one's undo is the slower).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_steps_of_one_transaction_take_turns_on_a_key() {
    both(async |e: Engine, _: &Counter| {
        let r = run(&e, "BumpBoth").await;
        assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
        assert_eq!(counter(&e, "counter"), Some(11));
        for _ in 0..5 {
            let r = run(&e, "BumpBothThenFail").await;
            assert_eq!(r.state, TxnState::RolledBack);
            assert_eq!(counter(&e, "counter"), Some(11));
        }
    })
    .await;
}

/// Transactions taking two keys in opposite orders: a wait that would deadlock fails the
/// transaction that asked (it rolls back and frees its key); none hangs, and the counters
/// match the transactions that committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_rolls_back_one_transaction_instead_of_hanging() {
    both(async |e: Engine, _: &Counter| {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let e = e.clone();
            let procedure = if i % 2 == 0 { "XThenY" } else { "YThenX" };
            tasks.push(tokio::spawn(async move { run(&e, procedure).await }));
        }
        let mut committed = 0;
        for t in tasks {
            let r = tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("no transaction hangs")
                .unwrap();
            match r.state {
                TxnState::Committed => committed += 1,
                TxnState::RolledBack => {
                    let f = r.failure.unwrap();
                    assert!(f.message.contains("deadlock"), "{}", f.message);
                }
                other => panic!("unexpected end state {other}"),
            }
        }
        assert!(committed > 0);
        assert_eq!(counter(&e, "x"), Some(committed));
        assert_eq!(counter(&e, "y"), Some(committed));
    })
    .await;
}

#[tokio::test]
async fn a_preview_reads_and_never_writes() {
    both(async |e: Engine, _: &Counter| {
        run(&e, "Bump").await;
        let request = parse_request("call: Counting/Bump", "req.yaml", Format::Yaml).unwrap();
        let plan = e.plan(&request).await.unwrap();
        assert_eq!(plan[0].preview, Preview::Update("counter 1 -> 2".into()));
        assert_eq!(counter(&e, "counter"), Some(1));
    })
    .await;
}

/// 50 transactions increment one counter at once (every provider call sleeps between its
/// read and its write); every fifth also fails after its increment and rolls back. The
/// counter ends exactly at the number of committed transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_are_exact_and_a_rollback_leaves_its_own_out() {
    both(async |e: Engine, _: &Counter| {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let e = e.clone();
            let procedure = if i % 5 == 4 { "BumpThenFail" } else { "Bump" };
            tasks.push(tokio::spawn(async move { run(&e, procedure).await.state }));
        }
        let mut committed = 0;
        for t in tasks {
            match t.await.unwrap() {
                TxnState::Committed => committed += 1,
                TxnState::RolledBack => {}
                other => panic!("unexpected end state {other}"),
            }
        }
        assert_eq!(committed, 40);
        assert_eq!(counter(&e, "counter"), Some(40));
    })
    .await;
}

/// Two processes on one PostgreSQL store (two stores stand for them: two nodes, two lock
/// tables): 20 increments of one counter from each at once. A key one process's
/// transaction holds is held against the other's too (an advisory lock per key for the
/// transaction), so the counter ends at exactly 40: without it updates are lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_from_two_processes_on_postgresql_are_exact() {
    let Some(pg) = provisio_test_support::postgres::Postgres::shared() else {
        return;
    };
    let url = pg.new_schema("state_nodes");
    let open = || {
        let dir = tempfile::tempdir().unwrap();
        let store = provisio_engine::testing::open_store(dir.path(), Some(url.clone()));
        let journal = Arc::new(DurableJournal::new(store, None, "test"));
        engine(Arc::new(Counter::default())).with_journal(journal)
    };
    let (a, b) = (open(), open());
    let mut tasks = Vec::new();
    for i in 0..40 {
        let e = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { run(&e, "Bump").await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    }
    assert_eq!(counter(&a, "counter"), Some(40));
    assert_eq!(counter(&b, "counter"), Some(40));
}

/// Two processes on one PostgreSQL store (two stores: two nodes, two lock tables), a
/// transaction on each taking two keys in opposite orders, each holding its first key when
/// it asks for the second. The wait across processes closes a cycle: the younger
/// transaction gives way at once with the same deadlock error as within one process (well
/// under the lock wait of 10 s, which is how it ended before), the other commits, and the
/// waits-for records are gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadlock_across_two_processes_on_postgresql_is_detected_at_once() {
    let Some(pg) = provisio_test_support::postgres::Postgres::shared() else {
        return;
    };
    let url = pg.new_schema("state_deadlock");
    let open = || {
        let dir = tempfile::tempdir().unwrap();
        let store = provisio_engine::testing::open_store(dir.path(), Some(url.clone()));
        let journal = Arc::new(DurableJournal::new(store, None, "test"));
        engine(Arc::new(Counter::default())).with_journal(journal)
    };
    let (a, b) = (open(), open());
    for round in 0..3 {
        let started = std::time::Instant::now();
        let first = tokio::spawn({
            let a = a.clone();
            async move { run(&a, "XThenYLate").await }
        });
        let second = tokio::spawn({
            let b = b.clone();
            async move { run(&b, "YThenXLate").await }
        });
        let (first, second) = (first.await.unwrap(), second.await.unwrap());
        let took = started.elapsed();
        // Each second step waits 300 ms before it asks for its key.
        eprintln!(
            "round {round}: the deadlock ended after {took:?} (300 ms of it the steps' own delay)"
        );
        let mut states = [first.state, second.state];
        states.sort_by_key(|s| s.to_string());
        assert_eq!(
            states,
            [TxnState::Committed, TxnState::RolledBack],
            "round {round}: {:?} {:?}",
            first.failure,
            second.failure
        );
        let (loser, winner) = if first.state == TxnState::RolledBack {
            (&first, &second)
        } else {
            (&second, &first)
        };
        let message = &loser.failure.as_ref().unwrap().message;
        assert!(message.contains("deadlock"), "round {round}: {message}");
        assert!(message.contains("another provisio process"), "{message}");
        // The younger one (the greater id) gives way.
        assert!(loser.txn_id > winner.txn_id, "round {round}");
        assert!(
            took < Duration::from_secs(3),
            "round {round}: took {took:?}"
        );
        assert_eq!(counter(&a, "x"), Some(round + 1));
        assert_eq!(counter(&b, "y"), Some(round + 1));
    }
    let schema = url.rsplit("search_path%3D").next().unwrap();
    for table in ["provisio_key_holds", "provisio_key_waits"] {
        let mut left = String::new();
        for _ in 0..50 {
            let out = pg.psql(&format!("SELECT count(*) FROM {schema}.{table}"));
            assert_eq!(out.code, 0, "{out:?}");
            left = out.stdout.trim().to_string();
            if left == "0" {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(left, "0", "{table} is emptied when the transactions end");
    }
}

/// A cycle through a wait within one process and waits across processes, which neither
/// lock table sees alone: on process A, A1 holds `x` and waits for `z` (in A's table: A2
/// holds it), A2 holds `z` and waits for `w` (across: B1 holds it), and B1 on process B
/// holds `w` and waits for `x` (across: A1). A1, the youngest (it started last), gives way
/// at once with the deadlock error; the two others commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadlock_through_a_wait_within_a_process_and_across_processes_is_detected() {
    let Some(pg) = provisio_test_support::postgres::Postgres::shared() else {
        return;
    };
    let url = pg.new_schema("state_deadlock3");
    let open = || {
        let dir = tempfile::tempdir().unwrap();
        let store = provisio_engine::testing::open_store(dir.path(), Some(url.clone()));
        let journal = Arc::new(DurableJournal::new(store, None, "test"));
        engine(Arc::new(Counter::default())).with_journal(journal)
    };
    let (a, b) = (open(), open());
    let two_keys = |e: &Engine, first: &str, second: &str| {
        let e = e.clone();
        let text =
            format!("call: Counting/TwoKeys\ndata: {{ first: {first}, second: {second} }}\n");
        tokio::spawn(async move {
            let request = parse_request(&text, "req.yaml", Format::Yaml).unwrap();
            e.run(&request).await.unwrap()
        })
    };
    let started = std::time::Instant::now();
    let b1 = two_keys(&b, "w", "x");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let a2 = two_keys(&a, "z", "w");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let a1 = two_keys(&a, "x", "z");
    let (b1, a2, a1) = (b1.await.unwrap(), a2.await.unwrap(), a1.await.unwrap());
    let took = started.elapsed();
    eprintln!("the three transactions ended after {took:?} (360 ms of it the starts' and steps' own delays)");
    assert_eq!(a1.state, TxnState::RolledBack, "{:?}", a1.failure);
    let message = &a1.failure.as_ref().unwrap().message;
    assert!(message.contains("deadlock"), "{message}");
    assert_eq!(a2.state, TxnState::Committed, "{:?}", a2.failure);
    assert_eq!(b1.state, TxnState::Committed, "{:?}", b1.failure);
    assert!(took < Duration::from_secs(4), "took {took:?}");
    // w: B1 and A2; x: B1 (A1's is rolled back); z: A2 (A1 never got it).
    for (key, expected) in [("w", 2), ("x", 1), ("z", 1)] {
        assert_eq!(counter(&a, key), Some(expected), "{key}");
    }
}

/// The child half of the crash test: runs `Pair` twice on the journal in
/// `PROVISIO_STATE_CRASH_DIR`, aborting at the journal write `PROVISIO_CRASH_AT` names.
#[tokio::test]
#[ignore = "run by a_crash_at_any_journal_write_keeps_state_with_its_step"]
async fn crash_child() {
    let Ok(dir) = std::env::var("PROVISIO_STATE_CRASH_DIR") else {
        return;
    };
    let store = open_store(dir.as_ref());
    let journal = Arc::new(DurableJournal::new(store, None, "test").with_failpoints_from_env());
    let counter = Counter {
        state_only: std::env::var("PROVISIO_STATE_ONLY").is_ok_and(|v| v == "1"),
        ..Counter::default()
    };
    let e = engine(Arc::new(counter)).with_journal(journal);
    match std::env::var("PROVISIO_STATE_CRASH_CASE").as_deref() {
        Ok("resume") => {
            run(&e, "Resume").await;
            run(&e, "ResumeThenFail").await;
        }
        _ => {
            run(&e, "Pair").await;
            run(&e, "PairThenFail").await;
        }
    }
    std::process::exit(0);
}

/// Runs the crash child with the crash point `n` (`when`: before or after the write);
/// whether it ran to its end.
fn crash_child_at(dir: &std::path::Path, case: &str, n: u32, when: &str) -> bool {
    crash_child_with(dir, case, n, when, false)
}

/// [`crash_child_at`], the provider declaring its effects state-only or not.
fn crash_child_with(
    dir: &std::path::Path,
    case: &str,
    n: u32,
    when: &str,
    state_only: bool,
) -> bool {
    // The store is chosen here, not in the child (whose end would stop a server it started).
    provisio_test_support::postgres::store_url(dir);
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PROVISIO_STATE_CRASH_DIR", dir)
        .env("PROVISIO_STATE_CRASH_CASE", case)
        .env("PROVISIO_CRASH_AT", n.to_string())
        .env("PROVISIO_CRASH_WHEN", when)
        .env("PROVISIO_STATE_ONLY", if state_only { "1" } else { "0" })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Resumable transactions: a crash at any journal write, then recovery, which resumes them.
/// A replayed step's writes are not made twice (the one that commits ends at exactly 11),
/// and are still undone when the resumed transaction fails later (the other adds nothing).
#[tokio::test]
async fn a_resumed_transaction_keeps_and_undoes_the_state_of_its_replayed_steps() {
    for when in ["before", "after"] {
        for n in 1.. {
            let dir = tempfile::tempdir().unwrap();
            let finished = crash_child_at(dir.path(), "resume", n, when);
            let (e, journal) = durable(dir.path(), engine(Arc::new(Counter::default())));
            if !finished {
                let recovered = provisio_engine::recover(&e, &journal).await.unwrap();
                for r in &recovered {
                    assert!(r.problems.is_empty(), "crash at {n} ({when}): {r:?}");
                }
            }
            let committed =
                provisio_engine::txn::recovery::list(&journal, Some(TxnState::Committed))
                    .unwrap()
                    .len();
            // `Resume` commits when it was started (resumed, or run again never: it is
            // either finished or lost before its first record); `ResumeThenFail` never.
            let want = (committed == 1).then_some(11);
            assert_eq!(counter(&e, "r"), want, "crash at {n} ({when})");
            assert!(committed <= 1);
            let r = run(&e, "Resume").await;
            assert_eq!(
                r.state,
                TxnState::Committed,
                "nothing stays locked: {:?}",
                r.failure
            );
            if finished {
                assert!(n > 8, "suspiciously few journal writes ({n}, {when})");
                break;
            }
        }
    }
}

/// The process is aborted at every journal write of two transactions (one commits, one
/// rolls back after `Pair` and `Swap` wrote), before and after the write reaches the disk;
/// recovery then runs. Each transaction's state is all there (committed) or not at all, and
/// `a` and `b`, written by one step, always agree.
#[tokio::test]
async fn a_crash_at_any_journal_write_keeps_state_with_its_step() {
    crash_at_any_journal_write(false).await;
}

/// The same with a provider that declares its effects state-only: its intents are not
/// synced before the calls, and the guarantees hold all the same.
#[tokio::test]
async fn a_crash_at_any_journal_write_keeps_state_with_its_step_when_intents_are_not_synced() {
    crash_at_any_journal_write(true).await;
}

async fn crash_at_any_journal_write(state_only: bool) {
    let mut crashes = 0;
    for when in ["before", "after"] {
        for n in 1.. {
            let dir = tempfile::tempdir().unwrap();
            let finished = crash_child_with(dir.path(), "pair", n, when, state_only);
            let c = Arc::new(Counter {
                state_only,
                ..Counter::default()
            });
            let (e, journal) = durable(dir.path(), engine(c.clone()));
            if finished {
                // Past the last write: both ran to their end.
                assert!(n > 8, "suspiciously few journal writes ({n}, {when})");
                assert_eq!((counter(&e, "a"), counter(&e, "b")), (Some(1), Some(1)));
                assert_eq!(e.state_value("Counter", b"name").unwrap(), None);
                break;
            }
            crashes += 1;
            let recovered = provisio_engine::recover(&e, &journal).await.unwrap();
            for r in &recovered {
                assert_eq!(r.to, TxnState::RolledBack, "crash at {n} ({when}): {r:?}");
            }
            let (a, b) = (counter(&e, "a"), counter(&e, "b"));
            assert_eq!(
                a, b,
                "crash at {n} ({when}): a step's writes are all there or none"
            );
            // Only the first transaction can have committed, with its one increment; a
            // rolled-back one left nothing.
            let committed =
                provisio_engine::txn::recovery::list(&journal, Some(TxnState::Committed))
                    .unwrap()
                    .len();
            assert!(committed <= 1);
            let want = (committed == 1).then_some(1);
            assert_eq!(a, want, "crash at {n} ({when}): {committed} committed");
            assert_eq!(
                e.state_value("Counter", b"name").unwrap(),
                None,
                "crash at {n} ({when}): the rolled-back Swap is undone"
            );
            // Whatever recovery left is unlocked and consistent: one more Pair commits.
            let r = run(&e, "Pair").await;
            assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
            assert_eq!(counter(&e, "a"), Some(a.unwrap_or(0) + 1));
        }
    }
    assert!(crashes >= 16, "only {crashes} crash points");
}

/// Pruning every finished transaction (journal, summaries, audit) keeps provider state:
/// it is live data, not history.
#[tokio::test]
async fn pruning_the_journal_keeps_provider_state() {
    use provisio_engine::txn::retention::{prune, Retention};
    let dir = tempfile::tempdir().unwrap();
    let (e, journal) = durable(dir.path(), engine(Arc::new(Counter::default())));
    run(&e, "Bump").await;
    run(&e, "Pair").await;
    let keep_none = Retention {
        max_age: None,
        max_count: Some(0),
        audit_max_age: Some(Duration::ZERO),
    };
    let now = u64::MAX / 2;
    let pruned = prune(&**journal.store(), &keep_none, now, None, false)
        .await
        .unwrap();
    assert_eq!(pruned.transactions.len(), 2, "{pruned:?}");
    let left = provisio_engine::txn::recovery::list(&journal, None).unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(counter(&e, "counter"), Some(1));
    assert_eq!((counter(&e, "a"), counter(&e, "b")), (Some(1), Some(1)));
}

/// A store that counts the syncs made through it (durable writes and `sync`).
struct CountingSyncs {
    inner: Arc<dyn Store>,
    syncs: AtomicUsize,
}

#[async_trait]
impl Store for CountingSyncs {
    async fn write(&self, batch: Batch, durable: bool) -> Result<(), StoreError> {
        if durable {
            self.syncs.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.write(batch, durable).await
    }
    async fn sync(&self) -> Result<(), StoreError> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync().await
    }
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(space, key)
    }
    fn scan(&self, space: Space, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.scan(space, prefix)
    }
    fn scan_range(
        &self,
        space: Space,
        range: KeyRange<'_>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.scan_range(space, range, limit, reverse)
    }
}

/// A provider whose effects are all provider state does not have each call's intent synced
/// before the call: a transaction of its calls syncs when it ends. One that does not say
/// so gets a sync per call.
#[tokio::test]
async fn a_state_only_provider_is_not_synced_before_each_call() {
    let mut syncs = Vec::new();
    for state_only in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(CountingSyncs {
            inner: open_store(dir.path()),
            syncs: AtomicUsize::new(0),
        });
        let journal = Arc::new(DurableJournal::new(store.clone(), None, "test"));
        let provider = Counter {
            state_only,
            ..Counter::default()
        };
        let e = engine(Arc::new(provider)).with_journal(journal);
        store.syncs.store(0, Ordering::SeqCst);
        let r = run(&e, "XThenY").await;
        assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
        assert_eq!((counter(&e, "x"), counter(&e, "y")), (Some(1), Some(1)));
        syncs.push(store.syncs.load(Ordering::SeqCst));
    }
    // Two sequential calls: two intents and the commit, against the commit alone.
    assert!(syncs[0] >= 3, "{syncs:?}");
    assert!(syncs[1] < syncs[0] && syncs[1] <= 2, "{syncs:?}");
}

/// A read changes nothing, so its intent is not synced before the call (lost in a crash,
/// it leaves nothing to undo): a transaction of sequential reads syncs once, when it
/// ends, whatever its provider says of its effects.
#[tokio::test]
async fn reads_are_not_synced_before_each_call() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(CountingSyncs {
        inner: open_store(dir.path()),
        syncs: AtomicUsize::new(0),
    });
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "test"));
    let e = engine(Arc::new(Counter::default())).with_journal(journal.clone());
    store.syncs.store(0, Ordering::SeqCst);
    let r = run(&e, "ReadThrice").await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    // Three sequential reads: the commit alone (it was 4 syncs with each intent synced).
    assert_eq!(store.syncs.load(Ordering::SeqCst), 1);
    // Every record is there all the same: three intents and three dones.
    let records = provisio_engine::txn::recovery::records(&journal, &r.txn_id).unwrap();
    let intents = records
        .iter()
        .filter(|(_, r)| matches!(r, provisio_engine::txn::Record::Intent { .. }))
        .count();
    assert_eq!(intents, 3);
}
