//! The rollback of a durable run reads each completed call's undo back from the journal as
//! it runs (the executor keeps only where the call's records are): it must undo exactly what
//! the in-memory rollback of the same run without a journal undoes, in the same order.

use provisio_engine::model::Format;
use provisio_engine::provider::ProviderRegistry;
use provisio_engine::request::parse_request;
use provisio_engine::testing::RecordingProvider;
use provisio_engine::txn::DurableJournal;
use provisio_engine::Catalog;
use provisio_engine::{Engine, EngineOptions, Journal, SledStore, TxnState};
use std::fmt::Write as _;
use std::sync::Arc;

/// A generated request: `branches` forEach steps of `sizes[b]` creations each (prefixes `a`,
/// `b`, …), in document order or ordered only by `needs` (`parallel`), and a last step that
/// fails after all of them.
fn request(sizes: &[usize], parallel: bool) -> String {
    let mut s = String::from("<request><data>");
    for (b, n) in sizes.iter().enumerate() {
        let _ = write!(s, "<set{b}>");
        for i in 0..*n {
            let _ = write!(
                s,
                "<user><name>{}{i:05}</name></user>",
                (b'a' + b as u8) as char
            );
        }
        let _ = write!(s, "</set{b}>");
    }
    let _ = write!(
        s,
        r#"</data><procedure parallel="{}">"#,
        if parallel { 1 } else { 0 }
    );
    let mut needs = Vec::new();
    for b in 0..sizes.len() {
        let _ = write!(
            s,
            r#"<execute id="each{b}" namespace="Rec Provider" procedure="Create">
  <forEach name="u" root="data" path="set{b}/user"/>
  <before source="u" sourcePath="name" destination="executeData" destinationPath="name"/>
</execute>"#
        );
        needs.push(format!("each{b}"));
    }
    let _ = write!(
        s,
        r#"<execute namespace="Rec Provider" procedure="Fail" needs="{}"/></procedure></request>"#,
        needs.join(" ")
    );
    s
}

/// Runs `text` with a durable journal (on a fresh sled store) or none; returns the
/// transaction's final state, how many calls it undid, and the provider's undo log.
async fn run(text: &str, durable: bool) -> (TxnState, usize, Vec<String>) {
    let rec = Arc::new(RecordingProvider::new("Rec"));
    let mut registry = ProviderRegistry::new();
    registry.register(rec.clone());
    let catalog = Catalog::new(Vec::new(), &registry).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut engine = Engine::new(catalog, registry, EngineOptions::default());
    let store = durable.then(|| Arc::new(SledStore::open(dir.path()).unwrap()));
    if let Some(store) = &store {
        let journal = Arc::new(DurableJournal::new(store.clone(), None, "test"));
        engine = engine.with_journal(journal as Arc<dyn Journal>);
    }
    let req = parse_request(text, "generated.xml", Format::Xml).unwrap();
    let result = engine.run(&req).await.unwrap();
    drop(engine);
    if let Some(store) = store {
        store.close();
    }
    let undos: Vec<String> = rec
        .log()
        .into_iter()
        .filter(|l| l.starts_with("undo "))
        .collect();
    (result.state, result.undone, undos)
}

/// The undos of one branch (names starting with `prefix`), in the order they ran.
fn branch(undos: &[String], prefix: char) -> Vec<&String> {
    let tag = format!("undo Create({prefix}");
    undos.iter().filter(|u| u.starts_with(&tag)).collect()
}

#[tokio::test]
async fn a_large_durable_rollback_undoes_in_the_in_memory_order() {
    // 3,000 calls in one chain (sequential: the order is fully determined).
    let text = request(&[3_000], false);
    let (state, undone, durable) = run(&text, true).await;
    let (mem_state, mem_undone, in_memory) = run(&text, false).await;
    assert_eq!(state, TxnState::RolledBack);
    assert_eq!(mem_state, TxnState::RolledBack);
    assert_eq!(undone, 3_000);
    assert_eq!(mem_undone, 3_000);
    assert_eq!(durable.len(), 3_000);
    assert_eq!(durable, in_memory);
    assert_eq!(
        durable.first().map(String::as_str),
        Some("undo Create(a02999)")
    );
    assert_eq!(
        durable.last().map(String::as_str),
        Some("undo Create(a00000)")
    );
}

#[tokio::test]
async fn generated_durable_rollbacks_undo_what_the_in_memory_rollback_undoes() {
    // Generated runs: one to three branches of varied sizes, in document order or
    // concurrent. Across branches running concurrently the interleaving depends on timing
    // (the durable run waits for its syncs); within a branch, and whole in document order,
    // the order is determined and must be the in-memory one.
    let mut checked = 0;
    for seed in 0..12u64 {
        let branches = 1 + (seed % 3) as usize;
        let sizes: Vec<usize> = (0..branches)
            .map(|b| 1 + ((seed * 7919 + b as u64 * 104_729) % 300) as usize)
            .collect();
        let parallel = seed % 2 == 1;
        let text = request(&sizes, parallel);
        let (state, undone, durable) = run(&text, true).await;
        let (_, mem_undone, in_memory) = run(&text, false).await;
        let total: usize = sizes.iter().sum();
        assert_eq!(state, TxnState::RolledBack, "seed {seed}");
        assert_eq!((undone, mem_undone), (total, total), "seed {seed}");
        if parallel {
            for b in 0..branches {
                let prefix = (b'a' + b as u8) as char;
                assert_eq!(
                    branch(&durable, prefix),
                    branch(&in_memory, prefix),
                    "seed {seed}, branch {prefix}"
                );
            }
            let mut sorted = (durable.clone(), in_memory.clone());
            sorted.0.sort();
            sorted.1.sort();
            assert_eq!(sorted.0, sorted.1, "seed {seed}");
        } else {
            assert_eq!(durable, in_memory, "seed {seed}");
        }
        checked += total;
    }
    assert!(checked > 1_000, "{checked} undos compared");
}
