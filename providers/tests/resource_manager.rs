//! The Exchange 2007 Resource Manager through the real engine with a durable store (sled
//! journal): allocations commit and roll back with the transaction, 1,000 concurrent
//! allocation transactions never over-commit a store or a share, bad input fails with an
//! error naming the field and leaves nothing behind, and a preview writes nothing.

use provisio_engine::model::Format;
use provisio_engine::{
    parse_request, Catalog, DurableJournal, Engine, EngineOptions, ProviderRegistry, RetryOptions,
    SledStore, Store, TxnResult, TxnState,
};
use provisio_providers::error::ErrorProvider;
use provisio_providers::resource_manager::{ResourceManagerProvider, PROVIDER};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "Exchange 2007 Resource Manager";
const E_NO_RANKED_RESOURCES: u32 = provisio_engine::codes::E_NO_RANKED_RESOURCES;

fn engine(dir: &std::path::Path) -> Engine {
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(ResourceManagerProvider::new()));
    registry.register(Arc::new(ErrorProvider::new()));
    let catalog = Catalog::new(Vec::new(), &registry).unwrap();
    let options = EngineOptions {
        retry: RetryOptions::default()
            .with_intervals(Duration::from_millis(1), Duration::from_millis(1)),
        // A transaction may wait for the ones queued before it on a hot key.
        step_timeout: Duration::from_secs(240),
        max_parallel: 4,
        ..EngineOptions::default()
    };
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir).unwrap());
    let journal = Arc::new(DurableJournal::new(store, None, "test"));
    Engine::new(catalog, registry, options).with_journal(journal)
}

async fn run(e: &Engine, yaml: &str) -> TxnResult {
    let request = parse_request(yaml, "req.yaml", Format::Yaml).unwrap();
    e.run(&request).await.unwrap()
}

/// A request of one call to the resource manager with `with` (YAML flow mapping), its
/// whole executeData copied to `data/out`; `then_fail` adds a failing step after it.
fn call(procedure: &str, with: &str, then_fail: bool) -> String {
    let mut y = format!(
        "procedure:\n  steps:\n    call:\n      call: {NS}/{procedure}\n      with: {with}\n      after:\n        - {{ source: executeData, destination: data, destinationPath: out }}\n"
    );
    if then_fail {
        y.push_str(
            "    fail:\n      call: Error Provider/SetError\n      needs: [call]\n      with: { hr: \"0x80070057\", desc: asked to fail }\n",
        );
    }
    y
}

fn committed(r: &TxnResult) -> &provisio_engine::Element {
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let out = r.data.as_ref().unwrap().child("out").unwrap();
    out.child("executeData").unwrap()
}

fn record(e: &Engine, key: &str) -> Option<Value> {
    e.state_value(PROVIDER, key.as_bytes())
        .unwrap()
        .map(|v| serde_json::from_slice(&v).unwrap())
}

fn text(e: &provisio_engine::Element, path: &[&str]) -> String {
    let mut at = e;
    for p in path {
        at = at.child(p).unwrap_or_else(|| panic!("no {p} in {at:?}"));
    }
    at.string_value()
}

const STORES: &str = "{ mailStores: { mailStore: [ { serverName: ex1, mailStoreName: DB1, megabytes: \"4\" }, { serverName: ex1, mailStoreName: DB2, megabytes: \"2\" }, { serverName: ex2, mailStoreName: DB3, megabytes: \"1\" }, { serverName: ex2, mailStoreName: Dedicated, megabytes: \"1\", shared: \"false\" } ] } }";

/// Stores (id → (capacity MB, reserved MB by organization)) as committed.
fn stores(e: &Engine) -> BTreeMap<String, (u64, BTreeMap<String, u64>)> {
    let mut out = BTreeMap::new();
    for id in ["ex1/db1", "ex1/db2", "ex2/db3", "ex2/dedicated"] {
        let s = record(e, &format!("store/{id}")).unwrap();
        let reserved = s["reserved"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect();
        out.insert(id.to_string(), (s["megabytes"].as_u64().unwrap(), reserved));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_commit_and_roll_back_with_the_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    committed(&run(&e, &call("AddExchangeResources", STORES, false)).await);
    // tightPack on the best fit: 2 MB fits DB2 exactly.
    let out = committed(
        &run(
            &e,
            &call(
                "AllocateOrganization",
                "{ organization: Fabrikam, megabytes: \"2\", algorithm: tightPack }",
                false,
            ),
        )
        .await,
    )
    .clone();
    assert_eq!(
        text(&out, &["mailStores", "mailStore", "mailStoreName"]),
        "DB2"
    );
    // A mailbox, then the same one again: refused.
    let with = "{ organization: Fabrikam, mailbox: ann, kilobytes: \"1500\" }";
    let out = committed(&run(&e, &call("AllocateMailbox", with, false)).await).clone();
    assert_eq!(text(&out, &["mailStore", "serverName"]), "ex1");
    assert_eq!(text(&out, &["mailStore", "mailStoreName"]), "DB2");
    let r = run(&e, &call("AllocateMailbox", with, false)).await;
    assert_eq!(r.state, TxnState::RolledBack);
    assert!(r.failure.unwrap().message.contains("already allocated"));
    // 1000 KB more does not fit the 548 KB left, and nothing grants more: the clear error.
    let r = run(
        &e,
        &call(
            "AllocateMailbox",
            "{ organization: Fabrikam, mailbox: bob, kilobytes: \"1000\" }",
            false,
        ),
    )
    .await;
    let f = r.failure.unwrap();
    assert_eq!(f.code, E_NO_RANKED_RESOURCES);
    assert!(
        f.message
            .contains("no store has room for 1000 KB for organization Fabrikam"),
        "{}",
        f.message
    );
    // With autoAllocate the organization grows (level: the store with the most free),
    // but a failing step after it takes everything back.
    let before = stores(&e);
    let grow = "{ organization: Fabrikam, mailbox: bob, kilobytes: \"1000\", mailStore: { autoAllocate: level } }";
    let r = run(&e, &call("AllocateMailbox", grow, true)).await;
    assert_eq!(r.state, TxnState::RolledBack, "{:?}", r.failure);
    assert_eq!(stores(&e), before);
    assert_eq!(record(&e, "mbx/Fabrikam/bob"), None);
    let out = committed(&run(&e, &call("AllocateMailbox", grow, false)).await).clone();
    assert_eq!(text(&out, &["mailStore", "mailStoreName"]), "DB1");
    assert_eq!(stores(&e)["ex1/db1"].1["Fabrikam"], 1);
    // Deallocation releases exactly what was charged; the space stays the organization's.
    let out = committed(
        &run(
            &e,
            &call(
                "DeAllocateMailbox",
                "{ organization: Fabrikam, mailbox: ann }",
                false,
            ),
        )
        .await,
    )
    .clone();
    assert_eq!(text(&out, &["kilobytes"]), "1500");
    let org = record(&e, "org/Fabrikam").unwrap();
    assert_eq!(org["shares"]["ex1/db2"]["used_kb"], 0);
    assert_eq!(org["shares"]["ex1/db1"]["used_kb"], 1000);
    // ReAllocate: bigger than its share → it moves (pinned to DB2, which has room).
    let out = committed(
        &run(
            &e,
            &call(
                "ReAllocateMailbox",
                "{ organization: Fabrikam, mailbox: bob, kilobytes: \"2000\", mailStore: { serverName: ex1, mailStoreName: DB2 } }",
                false,
            ),
        )
        .await,
    )
    .clone();
    assert_eq!(text(&out, &["mailStore", "mailStoreName"]), "DB2");
    assert_eq!(text(&out, &["moved"]), "true");
    let org = record(&e, "org/Fabrikam").unwrap();
    assert_eq!(org["shares"]["ex1/db1"]["used_kb"], 0);
    assert_eq!(org["shares"]["ex1/db2"]["used_kb"], 2000);
    // The queries.
    let out = committed(&run(&e, &call("QueryAllStores", "{}", false)).await).clone();
    let list: Vec<(String, String)> = out
        .child("mailStores")
        .unwrap()
        .elements()
        .map(|s| (text(s, &["mailStoreName"]), text(s, &["megabytesFree"])))
        .collect();
    assert_eq!(
        list,
        [("DB1", "3"), ("DB2", "0"), ("DB3", "1"), ("Dedicated", "1")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let out = committed(
        &run(
            &e,
            &call(
                "QueryOrganizationsByMailstore",
                "{ serverName: EX1, mailStoreName: db1 }",
                false,
            ),
        )
        .await,
    )
    .clone();
    assert_eq!(
        text(&out, &["organizations", "organization", "name"]),
        "Fabrikam"
    );
    // A preview says what would happen and writes nothing.
    let request = parse_request(
        &call(
            "AllocateMailbox",
            "{ organization: Fabrikam, mailbox: cy, kilobytes: \"10\" }",
            false,
        ),
        "req.yaml",
        Format::Yaml,
    )
    .unwrap();
    let plan = e.plan(&request).await.unwrap();
    assert_eq!(
        plan[0].preview,
        provisio_engine::Preview::Change(
            "charge 10 KB for mailbox cy of organization Fabrikam to ex1/DB1".into()
        )
    );
    assert_eq!(record(&e, "mbx/Fabrikam/cy"), None);
}

/// Organizations spread over stores: `level` in even parts, dedicated stores only when
/// pinned and then for one organization only.
#[tokio::test]
async fn organizations_spread_and_dedicated_stores_take_one() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    committed(&run(&e, &call("AddExchangeResources", STORES, false)).await);
    let out = committed(
        &run(
            &e,
            &call(
                "AllocateOrganization",
                "{ organization: Contoso, megabytes: \"3\", algorithm: level }",
                false,
            ),
        )
        .await,
    )
    .clone();
    let parts: Vec<(String, String)> = out
        .child("mailStores")
        .unwrap()
        .elements()
        .map(|s| (text(s, &["mailStoreName"]), text(s, &["megabytes"])))
        .collect();
    assert_eq!(
        parts,
        [("DB1", "1"), ("DB2", "1"), ("DB3", "1")].map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let pin = |org: &str| {
        format!("{{ organization: {org}, megabytes: \"1\", mailStore: {{ serverName: ex2, mailStoreName: Dedicated }} }}")
    };
    committed(&run(&e, &call("AllocateOrganization", &pin("Contoso"), false)).await);
    let r = run(&e, &call("AllocateOrganization", &pin("Tailspin"), false)).await;
    let f = r.failure.unwrap();
    assert_eq!(f.code, E_NO_RANKED_RESOURCES);
    assert!(
        f.message
            .contains("ex2/Dedicated is dedicated to another organization"),
        "{}",
        f.message
    );
}

/// Bad input: each error names the field (or the missing store), and nothing is written.
#[tokio::test]
async fn bad_input_is_refused_with_the_field_named_and_nothing_left() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    committed(&run(&e, &call("AddExchangeResources", STORES, false)).await);
    let before = stores(&e);
    let cases = [
        ("AddExchangeResources", "{ mailStores: { mailStore: { serverName: ex9, mailStoreName: X, megabytes: \"-5\" } } }", "input `mailStores/mailStore[1]/megabytes` must be a whole number"),
        ("AddExchangeResources", "{ mailStores: { mailStore: { serverName: \"ex 9\", mailStoreName: X, megabytes: \"5\" } } }", "input `mailStores/mailStore[1]/serverName` must be a host name"),
        ("AddExchangeResources", "{ mailStores: { mailStore: [ { serverName: ex9, mailStoreName: X, megabytes: \"5\" }, { serverName: EX9, mailStoreName: x, megabytes: \"6\" } ] } }", "is listed twice"),
        ("AddExchangeResources", "{ mailStores: { mailStore: [ { serverName: ex9, mailStoreName: New, megabytes: \"5\" }, { serverName: ex1, mailStoreName: DB1, megabytes: \"6\" } ] } }", "mail store ex1/DB1 already exists"),
        ("AddExchangeResources", "{ other: 1 }", "input `mailStores` holds no `mailStore`"),
        ("ModifyExchangeResources", "{ mailStores: { mailStore: { serverName: ex9, mailStoreName: Nope, megabytes: \"5\" } } }", "mail store ex9/Nope does not exist"),
        ("AllocateOrganization", "{ organization: Fabrikam, megabytes: \"1\", mailStore: { serverName: ex9, mailStoreName: Nope } }", "mail store ex9/Nope does not exist"),
        ("AllocateOrganization", "{ organization: Fabrikam, megabytes: \"1\", algorithm: random }", "input `mailStore/@algorithm` must be one of tightPack, level"),
        ("AllocateOrganization", "{ organization: \"\", megabytes: \"1\" }", "input `organization` is required"),
        ("AllocateOrganization", "{ organization: Fabrikam, megabytes: \"100\" }", "no store has room for 100 MB for organization Fabrikam"),
        ("AllocateMailbox", "{ organization: Fabrikam, mailbox: ann, kilobytes: \"0\" }", "input `kilobytes` must be a whole number"),
        ("AllocateMailbox", "{ organization: Fabrikam, mailbox: ann, kilobytes: \"10\", mailStore: { serverName: ex1 } }", "input `mailStoreName` is required with `serverName`"),
        ("AllocateMailbox", "{ organization: Fabrikam, mailbox: ann, kilobytes: \"10\", mailStore: { autoAllocate: sometimes } }", "input `mailStore/@autoAllocate` must be one of"),
        ("AllocateMailbox", "{ organization: Fabrikam, mailbox: ann, kilobytes: \"10\", mailStore: { serverName: ex9, mailStoreName: Nope } }", "mail store ex9/Nope does not exist"),
        ("DeAllocateMailbox", "{ organization: Fabrikam, mailbox: nobody }", "mailbox nobody of organization Fabrikam is not allocated"),
        ("QueryOrganizationsByMailstore", "{ serverName: ex1 }", "input `mailStoreName` is required"),
    ];
    for (procedure, with, want) in cases {
        // Compile-time checks (a constant size) and run-time ones read the same.
        let request = parse_request(&call(procedure, with, false), "req.yaml", Format::Yaml);
        let message = match request {
            Err(err) => err.to_string(),
            Ok(req) => match e.run(&req).await {
                Err(err) => err.to_string(),
                Ok(r) => {
                    assert_eq!(r.state, TxnState::RolledBack, "{procedure} {with}");
                    r.failure.unwrap().message
                }
            },
        };
        assert!(
            message.contains(want)
                || (want.contains("whole number") && message.contains("whole number")),
            "{procedure} {with}: {message}"
        );
        assert_eq!(stores(&e), before, "{procedure} {with} left something");
        assert_eq!(record(&e, "org/Fabrikam"), None, "{procedure} {with}");
        assert_eq!(record(&e, "store/ex9/new"), None, "{procedure} {with}");
    }
}

/// 1,000 transactions allocate mailboxes at once on stores that fit only some of them
/// (7 MB shared + 1 MB dedicated, ~74 MB asked for): eight organizations, four with a
/// fixed 1 MB share, four growing with autoAllocate; every seventh transaction fails after
/// its allocation and rolls back. No store is over-committed, no share is over-charged,
/// every share's charge is exactly the sum of the committed mailboxes on it, and every
/// refused transaction got the "no store has room" error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_allocations_never_over_commit() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    committed(&run(&e, &call("AddExchangeResources", STORES, false)).await);
    for org in 0..4 {
        let with = format!("{{ organization: org{org}, megabytes: \"1\", algorithm: level }}");
        committed(&run(&e, &call("AllocateOrganization", &with, false)).await);
    }
    let n = 1000;
    let mut tasks = Vec::new();
    for i in 0..n {
        let e = e.clone();
        let org = i % 8;
        let kb = (30 + (i * 37) % 90) as u64;
        let auto = match org {
            4 | 5 => ", mailStore: { autoAllocate: level }",
            6 => ", mailStore: { autoAllocate: tightPack, algorithm: tightPack }",
            7 => ", mailStore: { autoAllocate: minStoreCount }",
            _ => "",
        };
        let with =
            format!("{{ organization: org{org}, mailbox: m{i}, kilobytes: \"{kb}\"{auto} }}");
        let fail = i % 7 == 3;
        tasks.push(tokio::spawn(async move {
            (
                i,
                org,
                kb,
                fail,
                run(&e, &call("AllocateMailbox", &with, fail)).await,
            )
        }));
    }
    // (org, store id) → KB charged by committed transactions.
    let mut charged: BTreeMap<(usize, String), u64> = BTreeMap::new();
    let (mut ok, mut refused, mut failed) = (0, 0, 0);
    for t in tasks {
        let (i, org, kb, fail, r) = t.await.unwrap();
        match r.state {
            TxnState::Committed => {
                assert!(!fail);
                ok += 1;
                let out = committed(&r);
                let id = format!(
                    "{}/{}",
                    text(out, &["mailStore", "serverName"]),
                    text(out, &["mailStore", "mailStoreName"])
                )
                .to_lowercase();
                *charged.entry((org, id)).or_default() += kb;
            }
            TxnState::RolledBack => {
                let f = r.failure.unwrap();
                if f.code == E_NO_RANKED_RESOURCES {
                    assert!(
                        f.message.contains(&format!(
                            "no store has room for {kb} KB for organization org{org}"
                        )),
                        "{i}: {}",
                        f.message
                    );
                    refused += 1;
                } else {
                    assert!(fail, "{i}: {}", f.message);
                    assert_eq!(f.message, "asked to fail");
                    failed += 1;
                    assert_eq!(record(&e, &format!("mbx/org{org}/m{i}")), None);
                }
            }
            other => panic!("{i}: {other}"),
        }
    }
    eprintln!("{ok} committed, {refused} refused (no room), {failed} rolled back after allocating");
    assert!(
        ok > 50 && refused > 100 && failed > 5,
        "{ok} {refused} {failed}"
    );
    // Stores: never more granted than they hold.
    for (id, (capacity, reserved)) in stores(&e) {
        let sum: u64 = reserved.values().sum();
        assert!(sum <= capacity, "{id}: {sum} MB granted of {capacity}");
        if id == "ex2/dedicated" {
            assert!(reserved.len() <= 1, "{reserved:?}");
        }
    }
    // Shares: never more charged than granted, and exactly what committed.
    let mut total = 0;
    for org in 0..8 {
        let Some(o) = record(&e, &format!("org/org{org}")) else {
            continue;
        };
        for (id, share) in o["shares"].as_object().unwrap() {
            let used = share["used_kb"].as_u64().unwrap();
            let granted = share["megabytes"].as_u64().unwrap() * 1024;
            assert!(used <= granted, "org{org} on {id}: {used} KB of {granted}");
            assert_eq!(
                used,
                charged.get(&(org, id.clone())).copied().unwrap_or(0),
                "org{org} on {id}"
            );
            assert_eq!(
                stores(&e)[id].1[&format!("org{org}")],
                share["megabytes"].as_u64().unwrap()
            );
            total += used;
        }
    }
    assert_eq!(total, charged.values().sum::<u64>());
    // Each committed mailbox is recorded once, with its size.
    let recorded = (0..n)
        .filter(|i| record(&e, &format!("mbx/org{}/m{i}", i % 8)).is_some())
        .count();
    assert_eq!(recorded, ok);
}

/// `DeAllocateOrganization` gives an organization's shares back once its mailboxes are
/// released (refused before, naming them), rolls back with its transaction, releases nothing
/// for an organization without space, and a second call changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_organization_gives_the_shares_back() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    committed(&run(&e, &call("AddExchangeResources", STORES, false)).await);
    let before = stores(&e);
    committed(
        &run(
            &e,
            &call(
                "AllocateOrganization",
                "{ organization: Fabrikam, megabytes: \"3\", algorithm: level }",
                false,
            ),
        )
        .await,
    );
    committed(
        &run(
            &e,
            &call(
                "AllocateOrganization",
                "{ organization: Contoso, megabytes: \"1\" }",
                false,
            ),
        )
        .await,
    );
    let with = "{ organization: Fabrikam, mailbox: ann, kilobytes: \"100\" }";
    committed(&run(&e, &call("AllocateMailbox", with, false)).await);
    // A mailbox still allocated: refused, naming the organization and the count.
    let org = "{ organization: Fabrikam }";
    let r = run(&e, &call("DeAllocateOrganization", org, false)).await;
    assert_eq!(r.state, TxnState::RolledBack);
    let f = r.failure.unwrap();
    assert_eq!(f.code, 0x8007_0057, "{f:?}");
    assert!(
        f.message
            .contains("organization Fabrikam still has 1 mailboxes allocated (100 KB)"),
        "{f:?}"
    );
    let held = stores(&e);
    assert!(held.values().any(|(_, r)| r.contains_key("Fabrikam")));
    committed(
        &run(
            &e,
            &call(
                "DeAllocateMailbox",
                "{ organization: Fabrikam, mailbox: ann }",
                false,
            ),
        )
        .await,
    );
    // Rolled back with a later failure: the shares are still held.
    let r = run(&e, &call("DeAllocateOrganization", org, true)).await;
    assert_eq!(r.state, TxnState::RolledBack);
    assert_eq!(stores(&e), held);
    assert!(record(&e, "org/Fabrikam").is_some());
    // Committed: every share of Fabrikam is given back, Contoso keeps its own.
    let out = committed(&run(&e, &call("DeAllocateOrganization", org, false)).await).clone();
    assert_eq!(text(&out, &["megabytes"]), "3");
    assert!(record(&e, "org/Fabrikam").is_none());
    let after = stores(&e);
    for (id, (mb, reserved)) in &after {
        assert!(!reserved.contains_key("Fabrikam"), "{id}: {reserved:?}");
        assert_eq!(*mb, before[id].0);
    }
    assert_eq!(
        after
            .values()
            .map(|(_, r)| r.values().sum::<u64>())
            .sum::<u64>(),
        1,
        "{after:?}"
    );
    // Again, or for an organization that never had space: nothing to release, no change.
    for o in [org, "{ organization: Nobody }"] {
        let out = committed(&run(&e, &call("DeAllocateOrganization", o, false)).await).clone();
        assert_eq!(text(&out, &["megabytes"]), "0");
        assert_eq!(stores(&e), after);
    }
    // Bad input names the field.
    let r = run(&e, &call("DeAllocateOrganization", "{ x: \"1\" }", false)).await;
    assert!(r.failure.unwrap().message.contains("`organization`"));
}

/// `AddExchangeResources` with flagIgnoreAlreadyExistsError: the same stores again change
/// nothing; a store registered with another size is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_the_same_stores_again_changes_nothing_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let again = STORES.replace(
        "mailStores:",
        "flagIgnoreAlreadyExistsError: \"1\", mailStores:",
    );
    let out = committed(&run(&e, &call("AddExchangeResources", &again, false)).await).clone();
    assert_eq!(text(&out, &["flagSkipAction"]), "0");
    committed(
        &run(
            &e,
            &call(
                "AllocateOrganization",
                "{ organization: Fabrikam, megabytes: \"1\" }",
                false,
            ),
        )
        .await,
    );
    let before = stores(&e);
    let out = committed(&run(&e, &call("AddExchangeResources", &again, false)).await).clone();
    assert_eq!(text(&out, &["flagSkipAction"]), "1");
    assert_eq!(stores(&e), before);
    // Without the flag, or with another size: refused.
    let r = run(&e, &call("AddExchangeResources", STORES, false)).await;
    assert!(r.failure.unwrap().message.contains("already exists"));
    let bigger = again.replace("megabytes: \"4\"", "megabytes: \"5\"");
    assert_ne!(bigger, again);
    let r = run(&e, &call("AddExchangeResources", &bigger, false)).await;
    let f = r.failure.unwrap();
    assert!(
        f.message.contains("ex1/DB1 already exists (4 MB, shared)"),
        "{f:?}"
    );
    assert_eq!(stores(&e), before);
}
