//! The `Store` contract, checked on every implementation with the same code: the in-memory
//! store, sled, and PostgreSQL (a private server from test-support; skipped with a note
//! when PostgreSQL is not installed, unless `PROVISIO_REQUIRE_POSTGRES=1`). Then what only
//! the PostgreSQL store has: nodes and transaction ownership, its schema versions, its errors for bad input.

use provisio_engine::{
    mask_url, Batch, KeyRange, MemStore, PgOptions, PgStore, SledStore, Space, Store, StoreError,
};
use provisio_test_support::postgres::Postgres;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A store under test and how to open it again (after dropping the first handle).
struct Subject {
    name: &'static str,
    store: Arc<dyn Store>,
    reopen: Option<Box<dyn Fn() -> Arc<dyn Store> + Send + Sync>>,
    _dir: Option<tempfile::TempDir>,
}

fn options() -> PgOptions {
    PgOptions {
        connect_retry: Duration::from_secs(5),
        application: "provisio store tests".into(),
    }
}

fn subjects(test: &str) -> Vec<Subject> {
    let mut all = vec![Subject {
        name: "memory",
        store: Arc::new(MemStore::new()),
        reopen: None,
        _dir: None,
    }];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let p = path.clone();
    all.push(Subject {
        name: "sled",
        store: Arc::new(SledStore::open(&path).unwrap()),
        reopen: Some(Box::new(move || Arc::new(SledStore::open(&p).unwrap()))),
        _dir: Some(dir),
    });
    if let Some(pg) = Postgres::shared() {
        let url = pg.new_schema(test);
        let u = url.clone();
        all.push(Subject {
            name: "postgres",
            store: Arc::new(PgStore::open(&url, &options()).unwrap()),
            reopen: Some(Box::new(move || {
                Arc::new(PgStore::open(&u, &options()).unwrap())
            })),
            _dir: None,
        });
    }
    all
}

fn keys(rows: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    rows.iter().map(|(k, _)| k.clone()).collect()
}

#[tokio::test]
async fn a_batch_applies_its_writes_in_order() {
    for s in subjects("order") {
        let mut b = Batch::new();
        b.put(Space::State, b"k".to_vec(), b"1".to_vec())
            .put(Space::State, b"k".to_vec(), b"2".to_vec())
            .put(Space::State, b"gone".to_vec(), b"x".to_vec());
        s.store.write(b, true).await.unwrap();
        assert_eq!(
            s.store.get(Space::State, b"k").unwrap(),
            Some(b"2".to_vec()),
            "{}",
            s.name
        );
        // A put and a delete of the same key in one batch: the later one wins, either way.
        let mut b = Batch::new();
        b.put(Space::State, b"k".to_vec(), b"3".to_vec());
        b.put(Space::State, b"gone".to_vec(), b"y".to_vec());
        s.store.write(b, false).await.unwrap();
        assert_eq!(
            s.store.get(Space::State, b"k").unwrap(),
            Some(b"3".to_vec()),
            "{}",
            s.name
        );
        // Deleting in a later batch.
        let store = s.store.clone();
        let mut b = Batch::new();
        b.put(Space::Meta, b"other".to_vec(), b"m".to_vec());
        store.write(b, true).await.unwrap();
        let rows = s.store.scan(Space::State, b"").unwrap();
        assert_eq!(
            keys(&rows),
            vec![b"gone".to_vec(), b"k".to_vec()],
            "{}",
            s.name
        );
        assert_eq!(
            s.store.get(Space::Journal, b"k").unwrap(),
            None,
            "{}: spaces are apart",
            s.name
        );
    }
}

/// Keys that sort differently bytewise than as text or by length.
fn tricky_keys() -> Vec<Vec<u8>> {
    vec![
        b"".to_vec(),
        b"a".to_vec(),
        b"a\x00".to_vec(),
        b"a\x00\x01".to_vec(),
        b"a\x7f".to_vec(),
        b"a\x80".to_vec(),
        b"a\xff".to_vec(),
        b"a\xff\xff".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        b"B".to_vec(),
        vec![0xff],
        vec![0xff, 0xff, 0x00],
        vec![0u8; 300],
    ]
}

#[tokio::test]
async fn scans_follow_bytewise_order_and_stay_in_their_space() {
    for s in subjects("order_scan") {
        let mut all = tricky_keys();
        let mut b = Batch::new();
        for (i, k) in all.iter().enumerate() {
            b.put(Space::Audit, k.clone(), vec![i as u8]);
            b.put(Space::Index, k.clone(), b"other space".to_vec());
        }
        s.store.write(b, true).await.unwrap();
        all.sort();
        let rows = s.store.scan(Space::Audit, b"").unwrap();
        assert_eq!(keys(&rows), all, "{}: the whole space in order", s.name);
        let under_a: Vec<Vec<u8>> = all
            .iter()
            .filter(|k| k.starts_with(b"a"))
            .cloned()
            .collect();
        assert_eq!(
            keys(&s.store.scan(Space::Audit, b"a").unwrap()),
            under_a,
            "{}",
            s.name
        );
        let under_a0 = vec![b"a\x00".to_vec(), b"a\x00\x01".to_vec()];
        assert_eq!(
            keys(&s.store.scan(Space::Audit, b"a\x00").unwrap()),
            under_a0,
            "{}",
            s.name
        );
        let under_ff: Vec<Vec<u8>> = all
            .iter()
            .filter(|k| k.starts_with(b"a\xff"))
            .cloned()
            .collect();
        assert_eq!(
            keys(&s.store.scan(Space::Audit, b"a\xff").unwrap()),
            under_ff,
            "{}: a prefix ending in 0xff",
            s.name
        );
        let top = vec![vec![0xff], vec![0xff, 0xff, 0x00]];
        assert_eq!(
            keys(&s.store.scan(Space::Audit, &[0xff]).unwrap()),
            top,
            "{}: a prefix with no end",
            s.name
        );
        assert!(
            s.store.scan(Space::Audit, b"zz").unwrap().is_empty(),
            "{}",
            s.name
        );
        // Values come back with their keys.
        let (k, v) = &s.store.scan(Space::Audit, b"ab").unwrap()[0];
        assert_eq!(k, b"ab");
        let i = tricky_keys().iter().position(|x| x == b"ab").unwrap();
        assert_eq!(v, &vec![i as u8], "{}", s.name);
    }
}

#[tokio::test]
async fn range_scans_page_forwards_and_backwards() {
    for s in subjects("ranges") {
        let mut b = Batch::new();
        for i in 0u32..50 {
            b.put(
                Space::Txns,
                i.to_be_bytes().to_vec(),
                i.to_string().into_bytes(),
            );
        }
        s.store.write(b, true).await.unwrap();
        let n = |rows: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<u32> {
            rows.iter()
                .map(|(k, _)| u32::from_be_bytes(k[..4].try_into().unwrap()))
                .collect()
        };
        let from10 = 10u32.to_be_bytes();
        let to20 = 20u32.to_be_bytes();
        let all = KeyRange::new(b"", None);
        let name = s.name;
        let st = &s.store;
        assert_eq!(
            n(st.scan_range(Space::Txns, all, 3, false).unwrap()),
            vec![0, 1, 2],
            "{name}"
        );
        assert_eq!(
            n(st.scan_range(Space::Txns, all, 3, true).unwrap()),
            vec![49, 48, 47],
            "{name}"
        );
        let mid = KeyRange::new(&from10, Some(&to20));
        assert_eq!(
            n(st.scan_range(Space::Txns, mid, 4, false).unwrap()),
            vec![10, 11, 12, 13],
            "{name}"
        );
        assert_eq!(
            n(st.scan_range(Space::Txns, mid, 4, true).unwrap()),
            vec![19, 18, 17, 16],
            "{name}"
        );
        assert_eq!(
            n(st.scan_range(Space::Txns, mid, 100, false).unwrap()).len(),
            10,
            "{name}"
        );
        assert!(
            st.scan_range(Space::Txns, mid, 0, false)
                .unwrap()
                .is_empty(),
            "{name}"
        );
        let tail = KeyRange::new(&from10, None);
        assert_eq!(
            n(st.scan_range(Space::Txns, tail, 2, true).unwrap()),
            vec![49, 48],
            "{name}"
        );
        assert_eq!(
            n(st.scan_range(Space::Txns, tail, usize::MAX, false).unwrap()).len(),
            40,
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_all_land_and_reads_see_each_returned_write() {
    for s in subjects("concurrent") {
        let mut tasks = Vec::new();
        for t in 0u32..16 {
            let store = s.store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0u32..25 {
                    let key = [t.to_be_bytes(), i.to_be_bytes()].concat();
                    let mut b = Batch::new();
                    b.put(Space::Queue, key.clone(), vec![1]);
                    store.write(b, i % 3 != 0).await.unwrap();
                    // A read after the write returned sees it, durable or not.
                    assert_eq!(store.get(Space::Queue, &key).unwrap(), Some(vec![1]));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        s.store.sync().await.unwrap();
        assert_eq!(
            s.store.scan(Space::Queue, b"").unwrap().len(),
            400,
            "{}",
            s.name
        );
    }
}

#[tokio::test]
async fn what_was_written_is_there_after_reopening() {
    for s in subjects("reopen") {
        let Some(reopen) = s.reopen else { continue };
        let mut b = Batch::new();
        b.put(Space::Journal, b"durable".to_vec(), b"1".to_vec());
        s.store.write(b, true).await.unwrap();
        let mut b = Batch::new();
        b.put(Space::Journal, b"later".to_vec(), b"2".to_vec());
        s.store.write(b, false).await.unwrap();
        s.store.sync().await.unwrap();
        drop(s.store);
        let store = reopen();
        assert_eq!(
            store.get(Space::Journal, b"durable").unwrap(),
            Some(b"1".to_vec()),
            "{}",
            s.name
        );
        assert_eq!(
            store.get(Space::Journal, b"later").unwrap(),
            Some(b"2".to_vec()),
            "{}",
            s.name
        );
    }
}

/// A journal append split into the puts of new keys and the rest is one atomic batch; a
/// key written as new that is there after all is put (the PostgreSQL store inserts new keys
/// without looking first, and commits the group again as upserts when one was there).
#[tokio::test]
async fn a_journal_append_of_new_keys_applies_whole_even_when_a_key_was_there() {
    for s in subjects("fresh") {
        let mut b = Batch::new();
        b.put(Space::Journal, b"t1/0".to_vec(), b"old".to_vec());
        s.store.write(b, true).await.unwrap();
        let rows_before = s.store.postgres().map(|pg| pg.row_writes());
        // Truly new keys only.
        let mut fresh = Batch::new();
        fresh
            .put(Space::Journal, b"t1/1".to_vec(), b"one".to_vec())
            .put(Space::Audit, b"t1".to_vec(), b"a".to_vec());
        let mut rest = Batch::new();
        rest.put(Space::Txns, b"t1".to_vec(), b"s1".to_vec());
        s.store
            .write_journal("t1", fresh, rest, false)
            .await
            .unwrap();
        if let (Some(pg), Some((i, u, _))) = (s.store.postgres(), rows_before) {
            let (i2, u2, _) = pg.row_writes();
            assert_eq!(
                (i2 - i, u2 - u),
                (2, 1),
                "inserted as new, the rest upserted"
            );
        }
        // A "new" key that is there: the whole append still applies, the key put.
        let mut fresh = Batch::new();
        fresh
            .put(Space::Journal, b"t1/2".to_vec(), b"two".to_vec())
            .put(Space::Journal, b"t1/0".to_vec(), b"zero".to_vec());
        let mut rest = Batch::new();
        rest.put(Space::Txns, b"t1".to_vec(), b"s2".to_vec()).put(
            Space::Meta,
            b"m".to_vec(),
            b"1".to_vec(),
        );
        s.store
            .write_journal("t1", fresh, rest, true)
            .await
            .unwrap();
        let journal = s.store.scan(Space::Journal, b"t1/").unwrap();
        assert_eq!(
            journal,
            vec![
                (b"t1/0".to_vec(), b"zero".to_vec()),
                (b"t1/1".to_vec(), b"one".to_vec()),
                (b"t1/2".to_vec(), b"two".to_vec()),
            ],
            "{}",
            s.name
        );
        assert_eq!(
            s.store.get(Space::Txns, b"t1").unwrap().as_deref(),
            Some(&b"s2"[..]),
            "{}",
            s.name
        );
        assert_eq!(
            s.store.get(Space::Meta, b"m").unwrap().as_deref(),
            Some(&b"1"[..]),
            "{}",
            s.name
        );
    }
}

// What only the PostgreSQL store has.

#[tokio::test]
async fn several_processes_share_a_database_as_nodes_and_own_transactions_one_at_a_time() {
    let Some(pg) = Postgres::shared() else { return };
    let url = pg.new_schema("nodes");
    let schema = url.rsplit("%3D").next().unwrap().to_string();
    // Two stores stand for two processes: both open, each a node of its own.
    let first = PgStore::open(&url, &options()).unwrap();
    let second = PgStore::open(&url, &options()).unwrap();
    assert_ne!(first.node(), second.node());
    let nodes = pg.psql(&format!(
        "SELECT node FROM {schema}.provisio_nodes ORDER BY node"
    ));
    assert_eq!(nodes.code, 0, "{nodes:?}");
    let mut expected = vec![first.node().to_string(), second.node().to_string()];
    expected.sort();
    assert_eq!(nodes.stdout.lines().collect::<Vec<_>>(), expected);
    // Both write and read the same data.
    let mut batch = Batch::new();
    batch.put(Space::Txns, b"k".to_vec(), b"from the first".to_vec());
    first.write(batch, true).await.unwrap();
    assert_eq!(
        second.get(Space::Txns, b"k").unwrap().as_deref(),
        Some(&b"from the first"[..])
    );
    // A transaction has one owner at a time, across processes and within one.
    assert!(first.own("txn-a").await.unwrap());
    assert!(!second.own("txn-a").await.unwrap(), "owned by the first");
    assert!(!first.own("txn-a").await.unwrap(), "owned by another task");
    assert!(second.own("txn-b").await.unwrap());
    first.disown("txn-a");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !second.own("txn-a").await.unwrap() {
        assert!(Instant::now() < deadline, "never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A provider-state key too: held by one process against the other until given back.
    assert!(first.lock_key(b"s\x00Counter\x00k").await.unwrap());
    assert!(!second.lock_key(b"s\x00Counter\x00k").await.unwrap());
    first.unlock_key(b"s\x00Counter\x00k");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !second.lock_key(b"s\x00Counter\x00k").await.unwrap() {
        assert!(Instant::now() < deadline, "never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A process that ends (here closes; killed, its session ends) gives up what it owned,
    // and its node row goes.
    assert!(first.own("txn-c").await.unwrap());
    assert!(!second.own("txn-c").await.unwrap());
    first.close();
    drop(first);
    assert!(second.own("txn-c").await.unwrap());
    let nodes = pg.psql(&format!("SELECT node FROM {schema}.provisio_nodes"));
    assert_eq!(nodes.stdout.trim(), second.node(), "{nodes:?}");
    // Another schema of the same database is another store: its own locks.
    let other = PgStore::open(&pg.new_schema("nodes_other"), &options()).unwrap();
    assert!(other.own("txn-b").await.unwrap());
}

#[tokio::test]
async fn the_schema_is_versioned_and_a_newer_one_is_refused() {
    let Some(pg) = Postgres::shared() else { return };
    let url = pg.new_schema("versions");
    let schema = url.rsplit("%3D").next().unwrap().to_string();
    let store = PgStore::open(&url, &options()).unwrap();
    let latest = provisio_engine::latest_schema_version();
    assert_eq!(store.schema().version, latest);
    assert_eq!(
        store.schema().applied.len(),
        provisio_engine::MIGRATIONS.len()
    );
    drop(store);
    let again = PgStore::open(&url, &options()).unwrap();
    assert!(
        again.schema().applied.is_empty(),
        "nothing to apply the second time"
    );
    drop(again);
    let out = pg.psql(&format!(
        "INSERT INTO {schema}.provisio_schema (version, description, applied_by) VALUES ({}, 'from the future', 'provisio 9.9.9')",
        latest + 1
    ));
    assert_eq!(out.code, 0, "{out:?}");
    let e = PgStore::open(&url, &options()).unwrap_err();
    assert!(matches!(e, StoreError::SchemaTooNew { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("schema version {}", latest + 1)),
        "{text}"
    );
    assert!(text.contains("provisio 9.9.9"), "{text}");
    assert!(text.contains("refusing to start"), "{text}");
    assert!(!text.contains(&pg.password), "{text}");
}

#[test]
fn bad_urls_are_refused_clearly_without_the_password() {
    for (url, says) in [
        (
            "mysql://u:hunter2@localhost/db",
            "does not start with `postgres://`",
        ),
        ("postgres://u:hunter2@localhost:notaport/db", "invalid"),
        (
            "postgres://u:hunter2@localhost/db?sslmode=verify-full&sslrootcert=/nonexistent.pem",
            "cannot read the certificates of sslrootcert `/nonexistent.pem`",
        ),
        (
            "postgres://u:hunter2@localhost/db?sslmode=sometimes",
            "sslmode",
        ),
        ("postgres://u:hunter2@localhost/db?bogus=1", "bogus"),
    ] {
        let e = PgStore::open(url, &options()).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, StoreError::BadUrl { .. }), "{url}: {text}");
        assert!(text.contains(says), "{url}: {text}");
        assert!(!text.contains("hunter2"), "the password leaked: {text}");
    }
}

#[test]
fn a_wrong_password_is_refused_at_once_and_not_shown() {
    let Some(pg) = Postgres::shared() else { return };
    let url = pg.url().replace(&pg.password, "wrong-secret-123");
    let started = Instant::now();
    let e = PgStore::open(&url, &options()).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, StoreError::Refused { .. }), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(
        !text.contains("wrong-secret-123"),
        "the password leaked: {text}"
    );
    assert!(text.contains("postgres://provisio:***@127.0.0.1"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(4), "not retried");
}

#[test]
fn an_unreachable_database_is_retried_with_backoff_then_reported() {
    let port = provisio_test_support::slapd::free_tcp_port();
    let url = format!("postgres://provisio:s3cret-pw@127.0.0.1:{port}/provisio");
    let started = Instant::now();
    let e = PgStore::open(
        &url,
        &PgOptions {
            connect_retry: Duration::from_millis(1500),
            ..options()
        },
    )
    .unwrap_err();
    let waited = started.elapsed();
    let text = e.to_string();
    match &e {
        StoreError::Unreachable { attempts, .. } => assert!(*attempts >= 4, "{text}"),
        other => panic!("not Unreachable: {other}"),
    }
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "bounded: {waited:?}");
    assert!(text.contains("cannot reach the PostgreSQL store"), "{text}");
    assert!(text.contains("journal.connect_retry"), "{text}");
    assert!(!text.contains("s3cret-pw"), "the password leaked: {text}");
}

#[test]
fn a_database_that_comes_up_while_retrying_is_used() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.url();
    pg.stop();
    // Start it again under the same port after a moment, while the store retries.
    let data_port = pg.port;
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        pg.restart();
        pg
    });
    let store = PgStore::open(
        &url,
        &PgOptions {
            connect_retry: Duration::from_secs(20),
            ..options()
        },
    );
    let pg = restarter.join().unwrap();
    let store = store.unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));
    assert_eq!(
        store.schema().version,
        provisio_engine::latest_schema_version()
    );
    assert!(store.url().contains(&data_port.to_string()));
}

#[test]
fn urls_are_shown_with_the_password_masked() {
    assert_eq!(
        mask_url("postgres://me:p%40ss@db.example:5432/prov?options=x"),
        "postgres://me:***@db.example:5432/prov?options=x"
    );
    assert_eq!(mask_url("postgres://me@db/prov"), "postgres://me@db/prov");
    assert_eq!(
        mask_url("postgresql://db/prov?user=me&password=hunter2&sslmode=disable"),
        "postgresql://db/prov?user=me&password=***&sslmode=disable"
    );
    assert_eq!(
        mask_url("postgres://me:a@b@db/prov"),
        "postgres://me:***@db/prov"
    );
}

#[tokio::test]
async fn prefix_and_range_scans_use_the_primary_key_index() {
    let Some(pg) = Postgres::shared() else { return };
    let url = pg.new_schema("explain");
    let schema = url.rsplit("%3D").next().unwrap().to_string();
    let store = PgStore::open(&url, &options()).unwrap();
    let mut b = Batch::new();
    for i in 0u32..2000 {
        b.put(Space::Journal, i.to_be_bytes().to_vec(), vec![0; 16]);
    }
    store.write(b, true).await.unwrap();
    assert_eq!(pg.psql(&format!("ANALYZE {schema}.provisio_kv")).code, 0);
    for (sql, what) in [
        ("WHERE space = 106 AND key >= '\\x0001'::bytea AND key < '\\x0002'::bytea ORDER BY key LIMIT 10", "a bounded range"),
        ("WHERE space = 106 AND key >= '\\x0001'::bytea ORDER BY key DESC LIMIT 10", "a reverse scan to the end"),
    ] {
        let out = pg.psql(&format!("EXPLAIN SELECT key, value FROM {schema}.provisio_kv {sql}"));
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("Index Scan"), "{what}: {}", out.stdout);
        assert!(out.stdout.contains("Index Cond"), "{what}: {}", out.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_parks_writes_and_forfeits_what_was_owned() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.url();
    let store = Arc::new(PgStore::open(&url, &options()).unwrap());
    assert!(store.own("txn-before").await.unwrap());
    let mut b = Batch::new();
    b.put(Space::Journal, b"before".to_vec(), b"1".to_vec());
    store.write_for("txn-before", b, true).await.unwrap();
    let mut link = store.link();
    pg.stop_immediate();
    // The loss is noticed (the session ends), without a write to find it.
    tokio::time::timeout(Duration::from_secs(10), link.wait_for(|l| !l.up))
        .await
        .expect("the loss noticed")
        .unwrap();
    assert!(!store.is_up());
    // A write made while the database is gone parks (it neither fails nor succeeds).
    let parked = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut b = Batch::new();
            b.put(Space::Journal, b"during".to_vec(), b"2".to_vec());
            store.write(b, true).await
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !parked.is_finished(),
        "a write while the database is gone did not park"
    );
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), link.wait_for(|l| l.up))
        .await
        .unwrap_or_else(|_| panic!("not reconnected:\n{}", pg.log()))
        .unwrap();
    assert_eq!(link.borrow().epoch, 1);
    // The parked write goes through once the database is back.
    parked.await.unwrap().unwrap();
    assert_eq!(
        store.get(Space::Journal, b"during").unwrap().as_deref(),
        Some(&b"2"[..])
    );
    // The transaction owned before the loss lost its lock with the session: it never goes
    // on here...
    let mut b = Batch::new();
    b.put(Space::Journal, b"after".to_vec(), b"3".to_vec());
    let e = store.write_for("txn-before", b, true).await.unwrap_err();
    assert!(matches!(e, StoreError::Lost { .. }), "{e}");
    assert!(e.to_string().contains("recovery finishes"), "{e}");
    assert_eq!(store.get(Space::Journal, b"after").unwrap(), None);
    // ...until this process owns it again (to recover it), which it may: nobody holds it.
    assert!(store.own("txn-before").await.unwrap());
    let mut b = Batch::new();
    b.put(Space::Journal, b"after".to_vec(), b"3".to_vec());
    store.write_for("txn-before", b, true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_required_verified_or_refused_clearly() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.url();
    let opts = PgOptions {
        connect_retry: Duration::from_secs(2),
        ..options()
    };
    // The server offers no TLS yet: a URL that requires it is refused at once, saying so.
    let started = Instant::now();
    let e = PgStore::open(&format!("{url}?sslmode=require"), &opts).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, StoreError::Refused { .. }), "{text}");
    assert!(text.contains("does not offer TLS"), "{text}");
    assert!(text.contains("sslmode=require"), "{text}");
    assert!(!text.contains(&pg.password), "{text}");
    assert!(started.elapsed() < Duration::from_secs(2), "not retried");
    let ca = pg.enable_tls();
    let sessions_on_tls = || {
        pg.psql(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name LIKE 'provisio store tests%' AND s.ssl",
        )
        .stdout
        .trim()
        .parse::<u32>()
        .unwrap()
    };
    // require: encrypted, the self-signed certificate not checked.
    let store = PgStore::open(&format!("{url}?sslmode=require"), &opts).unwrap();
    let mut b = Batch::new();
    b.put(Space::Journal, b"tls".to_vec(), b"1".to_vec());
    store.write(b, true).await.unwrap();
    assert!(
        sessions_on_tls() >= 3,
        "the store's sessions are not on TLS"
    );
    drop(store);
    // verify-full with the certificate as the trusted authority: checked, and it names
    // 127.0.0.1.
    let full = format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        ca.display().to_string().replace('/', "%2F")
    );
    let store = PgStore::open(&full, &opts).unwrap();
    assert_eq!(
        store.get(Space::Journal, b"tls").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert!(sessions_on_tls() >= 3);
    drop(store);
    // verify-full against the system's authorities: the self-signed certificate is not
    // trusted, refused at once, saying what to do.
    let e = PgStore::open(&format!("{url}?sslmode=verify-full"), &opts).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, StoreError::Refused { .. }), "{text}");
    assert!(text.contains("not trusted"), "{text}");
    assert!(text.contains("sslrootcert"), "{text}");
    // A root file that is not there: a bad URL, said before connecting.
    let e = PgStore::open(
        &format!("{url}?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem"),
        &opts,
    )
    .unwrap_err();
    assert!(matches!(e, StoreError::BadUrl { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
}
