//! Crash recovery of the DNS provider (`Provider::recover`): for the zone-file backend from
//! its intent markers (a crash is simulated by writing the marker and stopping, or by
//! running the call and losing its outcome), for the RFC 2136 backend by asking a private
//! BIND `named` (skipped without BIND unless `PROVISIO_REQUIRE_BIND=1`).

mod support;

use provisio_engine::data::Element;
use provisio_engine::provider::{Call, Done, Provider, ProviderError};
use provisio_providers::dns::{
    DnsProvider, Intent, RData, Record, Rfc2136Config, ZoneBackend, ZoneFileBackend,
};
use provisio_test_support::bind::{Named, ZONE};
use std::path::Path;
use std::sync::Arc;
use support::{call, rrset_call};

const NS: &str = "DNS Provider";

struct Fixture {
    _dir: tempfile::TempDir,
    backend: Arc<ZoneFileBackend>,
    provider: DnsProvider,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = Arc::new(ZoneFileBackend::new(dir.path().join("zones")).expect("backend"));
        let provider = DnsProvider::with_backend(backend.clone());
        Fixture {
            _dir: dir,
            backend,
            provider,
        }
    }

    fn zone_file(&self, zone: &str) -> String {
        std::fs::read_to_string(self.backend.zone_path(zone)).unwrap_or_default()
    }

    async fn create_zone(&self, zone: &str) {
        let c = call(NS, "CreateZone", &[("zoneName", zone)]);
        self.provider.execute(c).await.expect("create zone");
    }

    fn pending(&self) -> usize {
        std::fs::read_dir(self.backend.marker_dir())
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn done(c: &Call, undo: Element) -> Done {
    Done {
        state: provisio_engine::ProviderState::detached(),
        context: c.context.clone(),
        provider_context: c.provider_context.clone(),
        undo,
        execute_data: None,
    }
}

fn a_record(owner: &str, ip: &str) -> Record {
    Record {
        owner: owner.into(),
        ttl: 3600,
        data: RData::A(ip.parse().expect("ip")),
    }
}

fn has_line(text: &str, needle: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == needle)
}

#[tokio::test]
async fn add_record_executed_then_recovered_returns_the_same_undo() {
    let f = Fixture::new();
    f.create_zone("a.test").await;
    let c = call(
        NS,
        "AddRecord",
        &[
            ("zoneName", "a.test"),
            ("name", "www"),
            ("rrType", "A"),
            ("address", "192.0.2.7"),
        ],
    );
    let out = f.provider.execute(c.clone()).await.expect("add");
    assert!(has_line(&f.zone_file("a.test"), "www 3600 IN A 192.0.2.7"));
    let recovered = f
        .provider
        .recover(&c)
        .await
        .expect("recover")
        .expect("applied");
    assert_eq!(
        Some(&recovered),
        out.undo.as_ref(),
        "recover gives the undo execute gave"
    );
    f.provider.undo(done(&c, recovered)).await.expect("undo");
    assert!(!f.zone_file("a.test").contains("192.0.2.7"));
    assert_eq!(f.pending(), 1, "only CreateZone's marker is left");
}

#[tokio::test]
async fn marker_without_change_is_not_applied() {
    let f = Fixture::new();
    f.create_zone("b.test").await;
    let before = f.zone_file("b.test");
    let c = call(
        NS,
        "AddRecord",
        &[
            ("zoneName", "b.test"),
            ("name", "www"),
            ("rrType", "A"),
            ("address", "192.0.2.8"),
        ],
    );
    // Crash right after the marker, before the change.
    let key = c.context.idempotency_key();
    f.backend
        .write_intent(
            &key,
            &Intent::AddRecord {
                zone: "b.test".into(),
                record: a_record("www", "192.0.2.8").line(),
            },
        )
        .expect("marker");
    assert_eq!(f.provider.recover(&c).await.expect("recover"), None);
    assert_eq!(f.zone_file("b.test"), before);
    assert!(
        f.backend.read_intent(&key).is_none(),
        "settled marker removed"
    );
}

#[tokio::test]
async fn marker_then_change_without_outcome_is_applied() {
    let f = Fixture::new();
    f.create_zone("c.test").await;
    let before = f.zone_file("c.test");
    let c = call(
        NS,
        "AddRecord",
        &[
            ("zoneName", "c.test"),
            ("name", "mail"),
            ("rrType", "A"),
            ("address", "192.0.2.9"),
        ],
    );
    let record = a_record("mail", "192.0.2.9");
    f.backend
        .write_intent(
            &c.context.idempotency_key(),
            &Intent::AddRecord {
                zone: "c.test".into(),
                record: record.line(),
            },
        )
        .expect("marker");
    // The change lands, then the process dies before the engine hears of it.
    f.backend
        .add_record("c.test", "mail", Some(3600), &record.data)
        .await
        .expect("change");
    let undo = f
        .provider
        .recover(&c)
        .await
        .expect("recover")
        .expect("applied");
    f.provider.undo(done(&c, undo)).await.expect("undo");
    let after = f.zone_file("c.test");
    assert!(!after.contains("192.0.2.9"), "{after}");
    // Only the serial differs from the start.
    let strip = |t: &str| {
        t.lines()
            .filter(|l| !l.contains("SOA"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&after), strip(&before));
}

#[tokio::test]
async fn delete_record_recovered_and_undone() {
    let f = Fixture::new();
    f.create_zone("d.test").await;
    let inputs = [
        ("zoneName", "d.test"),
        ("name", "www"),
        ("rrType", "A"),
        ("address", "192.0.2.10"),
    ];
    f.provider
        .execute(call(NS, "AddRecord", &inputs))
        .await
        .expect("add");
    // Crash before the change: not applied.
    let c1 = call(NS, "DeleteRecord", &inputs);
    f.backend
        .write_intent(
            &c1.context.idempotency_key(),
            &Intent::DeleteRecord {
                zone: "d.test".into(),
                record: a_record("www", "192.0.2.10").line(),
            },
        )
        .expect("marker");
    assert_eq!(f.provider.recover(&c1).await.expect("recover"), None);
    // Executed, outcome lost: applied; undo adds it back.
    let c2 = call(NS, "DeleteRecord", &inputs);
    let out = f.provider.execute(c2.clone()).await.expect("delete");
    assert!(!f.zone_file("d.test").contains("192.0.2.10"));
    let undo = f
        .provider
        .recover(&c2)
        .await
        .expect("recover")
        .expect("applied");
    assert_eq!(Some(&undo), out.undo.as_ref());
    f.provider.undo(done(&c2, undo)).await.expect("undo");
    assert!(has_line(&f.zone_file("d.test"), "www 3600 IN A 192.0.2.10"));
}

#[tokio::test]
async fn create_and_delete_zone_recovered_and_undone() {
    let f = Fixture::new();
    let c = call(NS, "CreateZone", &[("zoneName", "e.test")]);
    // Marker only: not applied.
    f.backend
        .write_intent(
            &c.context.idempotency_key(),
            &Intent::CreateZone {
                zone: "e.test".into(),
            },
        )
        .expect("marker");
    assert_eq!(f.provider.recover(&c).await.expect("recover"), None);
    // Executed: applied; undo removes the zone.
    let c = call(NS, "CreateZone", &[("zoneName", "e.test")]);
    let out = f.provider.execute(c.clone()).await.expect("create");
    let undo = f
        .provider
        .recover(&c)
        .await
        .expect("recover")
        .expect("applied");
    assert_eq!(Some(&undo), out.undo.as_ref());
    f.provider.undo(done(&c, undo)).await.expect("undo");
    assert!(!f.backend.zone_path("e.test").exists());

    f.create_zone("f.test").await;
    let text = f.zone_file("f.test");
    let c = call(NS, "DeleteZone", &[("zoneName", "f.test")]);
    let out = f.provider.execute(c.clone()).await.expect("delete zone");
    assert!(!f.backend.zone_path("f.test").exists());
    let undo = f
        .provider
        .recover(&c)
        .await
        .expect("recover")
        .expect("applied");
    assert_eq!(Some(&undo), out.undo.as_ref());
    f.provider.undo(done(&c, undo)).await.expect("undo");
    assert_eq!(f.zone_file("f.test"), text, "zone restored byte for byte");
}

#[tokio::test]
async fn unknown_key_is_not_applied() {
    let f = Fixture::new();
    f.create_zone("g.test").await;
    for (procedure, inputs) in [
        ("CreateZone", vec![("zoneName", "h.test")]),
        ("DeleteZone", vec![("zoneName", "g.test")]),
        (
            "AddRecord",
            vec![
                ("zoneName", "g.test"),
                ("rrType", "A"),
                ("address", "192.0.2.1"),
            ],
        ),
        (
            "DeleteRecord",
            vec![
                ("zoneName", "g.test"),
                ("rrType", "NS"),
                ("target", "ns1.g.test."),
            ],
        ),
        ("ListRecords", vec![("zoneName", "g.test")]),
    ] {
        let c = call(NS, procedure, &inputs);
        assert_eq!(
            f.provider.recover(&c).await.expect(procedure),
            None,
            "{procedure}"
        );
    }
    // Inputs that never validate never changed anything either.
    let c = call(
        NS,
        "AddRecord",
        &[("zoneName", "g.test"), ("rrType", "A"), ("address", "x")],
    );
    assert_eq!(f.provider.recover(&c).await.expect("bad input"), None);
}

// ---- Sweeping what no live transaction owns ------------------------------------------

/// The PID of a process that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("run true");
    let pid = child.id();
    child.wait().expect("wait");
    pid
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn open_and_sweep_remove_leftover_temp_files_and_markers_of_finished_transactions() {
    let f = Fixture::new();
    f.create_zone("s.test").await;
    let zones = f.backend.dir().to_path_buf();
    let markers = f.backend.marker_dir().to_path_buf();
    // Two transactions, each with an applied AddRecord and its marker.
    let live_txn = "0190c0de-0000-7000-8000-00000000aaaa";
    let over_txn = "0190c0de-0000-7000-8000-00000000bbbb";
    let mut calls = Vec::new();
    for (txn, ip) in [(live_txn, "192.0.2.10"), (over_txn, "192.0.2.11")] {
        let mut c = call(
            NS,
            "AddRecord",
            &[
                ("zoneName", "s.test"),
                ("rrType", "A"),
                ("name", "www"),
                ("address", ip),
            ],
        );
        c.context.txn_id = txn.parse().expect("a transaction id");
        f.provider.execute(c.clone()).await.expect("add");
        calls.push(c);
    }
    let markers_before = names(&markers);
    assert_eq!(
        markers_before.len(),
        3,
        "CreateZone + two adds: {markers_before:?}"
    );

    // Leftovers of writes that never finished: of a process that is gone, of this
    // process, and of a process that still runs (which may be writing right now).
    let gone = dead_pid();
    let mut running = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("run sleep");
    let me = std::process::id();
    let plant = |dir: &Path, name: String| {
        std::fs::write(dir.join(&name), "partial").expect("plant");
        name
    };
    let gone_zone = plant(&zones, format!(".s.test.zone.tmp-{gone}-0"));
    let gone_marker = plant(&markers, format!("x.tmp-{gone}-1"));
    let own_zone = plant(&zones, format!(".s.test.zone.tmp-{me}-999999"));
    let running_zone = plant(&zones, format!(".s.test.zone.tmp-{}-2", running.id()));

    // Opening the folder again removes what processes that are gone left, nothing else.
    let reopened = Arc::new(ZoneFileBackend::new(zones.clone()).expect("reopen"));
    let in_zones = names(&zones);
    assert!(!in_zones.contains(&gone_zone), "{in_zones:?}");
    assert!(!names(&markers).contains(&gone_marker));
    assert!(in_zones.contains(&own_zone) && in_zones.contains(&running_zone));

    // The sweep after recovery: this process's leftovers and the markers of transactions
    // that are over go; the live transaction's marker and the running writer's file stay.
    let provider = DnsProvider::with_backend(reopened.clone());
    let live: provisio_providers::dns::LiveTxns = Arc::new(move |t: &str| t == live_txn);
    let swept = provider.sweep(live).await.expect("sweep");
    assert_eq!(swept.temp_files, vec![zones.join(&own_zone)]);
    let gone_markers: Vec<String> = swept
        .markers
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        gone_markers.len(),
        2,
        "CreateZone's and the finished add's: {gone_markers:?}"
    );
    assert!(gone_markers.iter().all(|m| !m.starts_with(live_txn)));
    let left = names(&markers);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(live_txn), "{left:?}");
    assert!(names(&zones).contains(&running_zone));
    // The zone itself is untouched, and the live call can still be settled.
    assert!(has_line(&f.zone_file("s.test"), "www 3600 IN A 192.0.2.10"));
    assert!(has_line(&f.zone_file("s.test"), "www 3600 IN A 192.0.2.11"));
    assert!(provider
        .recover(&calls[0])
        .await
        .expect("recover")
        .is_some());
    let _ = running.kill();
    let _ = running.wait();
}

// ---- RFC 2136 ------------------------------------------------------------------------

fn rfc_provider(n: &Named) -> DnsProvider {
    let config = Rfc2136Config::from_key_file(n.addr(), Path::new(&n.key_file())).expect("key");
    DnsProvider::rfc2136(config).expect("provider")
}

#[tokio::test]
async fn rfc2136_add_record_recovered_from_the_server() {
    let Some(n) = Named::start() else { return };
    let p = rfc_provider(&n);
    let name = format!("rec.{ZONE}");
    let inputs = [
        ("zoneName", ZONE),
        ("name", "rec"),
        ("rrType", "A"),
        ("address", "192.0.2.44"),
    ];
    // Not sent yet: not applied.
    let c0 = call(NS, "AddRecord", &inputs);
    assert_eq!(p.recover(&c0).await.expect("recover"), None);
    // Sent, outcome lost: applied, and the rebuilt undo (with its guard) removes it.
    let c = call(NS, "AddRecord", &inputs);
    let out = p.execute(c.clone()).await.expect("add");
    assert_eq!(n.dig(&name, "A"), vec!["192.0.2.44".to_string()]);
    let undo = p.recover(&c).await.expect("recover").expect("applied");
    assert_eq!(Some(&undo), out.undo.as_ref(), "same undo as execute gave");
    p.undo(done(&c, undo)).await.expect("undo");
    assert!(n.dig(&name, "A").is_empty(), "record gone");
}

#[tokio::test]
async fn rfc2136_delete_record_in_doubt_needs_an_operator() {
    let Some(n) = Named::start() else { return };
    let p = rfc_provider(&n);
    // `pre` is in the test zone: still there, so a DeleteRecord of it was not applied.
    let inputs = [
        ("zoneName", ZONE),
        ("name", "pre"),
        ("rrType", "A"),
        ("address", "192.0.2.1"),
    ];
    let c = call(NS, "DeleteRecord", &inputs);
    assert_eq!(p.recover(&c).await.expect("recover"), None);
    p.execute(c.clone()).await.expect("delete");
    let err = p.recover(&c).await.expect_err("cannot tell");
    assert!(matches!(err, ProviderError::Unsupported(_)), "{err:?}");
    assert!(
        err.message().contains("check it by hand"),
        "{}",
        err.message()
    );
}

// ---- ReplaceRecordSet ------------------------------------------------------------------

fn replace_call(zone: &str) -> Call {
    rrset_call(
        NS,
        "ReplaceRecordSet",
        &[
            ("zoneName", zone),
            ("name", "www"),
            ("rrType", "A"),
            ("ttl", "60"),
        ],
        &[&[("address", "192.0.2.20")], &[("address", "192.0.2.21")]],
    )
}

#[tokio::test]
async fn replace_record_set_recovered_applied_and_not_applied() {
    let f = Fixture::new();
    f.create_zone("r.test").await;
    let add = [
        ("zoneName", "r.test"),
        ("name", "www"),
        ("rrType", "A"),
        ("address", "192.0.2.7"),
        ("ttl", "120"),
    ];
    f.provider
        .execute(call(NS, "AddRecord", &add))
        .await
        .expect("seed");
    let before = f.zone_file("r.test");
    // Crash right after the marker, before the change: not applied, marker removed.
    let c1 = replace_call("r.test");
    let key1 = c1.context.idempotency_key();
    f.backend
        .write_intent(
            &key1,
            &Intent::ReplaceRecordSet {
                zone: "r.test".into(),
                owner: "www".into(),
                rtype: "A".into(),
                before: vec!["www\t120\tIN\tA\t192.0.2.7".into()],
                after: vec![
                    "www\t60\tIN\tA\t192.0.2.20".into(),
                    "www\t60\tIN\tA\t192.0.2.21".into(),
                ],
            },
        )
        .expect("marker");
    assert_eq!(f.provider.recover(&c1).await.expect("recover"), None);
    assert!(
        f.backend.read_intent(&key1).is_none(),
        "settled marker removed"
    );
    assert_eq!(f.zone_file("r.test"), before);

    // Executed, outcome lost: applied; recovery gives the same undo, which restores the
    // old set and TTL.
    let c2 = replace_call("r.test");
    let out = f.provider.execute(c2.clone()).await.expect("replace");
    assert!(has_line(&f.zone_file("r.test"), "www 60 IN A 192.0.2.20"));
    let undo = f
        .provider
        .recover(&c2)
        .await
        .expect("recover")
        .expect("applied");
    assert_eq!(
        Some(&undo),
        out.undo.as_ref(),
        "recover gives the undo execute gave"
    );
    f.provider.undo(done(&c2, undo)).await.expect("undo");
    let after = f.zone_file("r.test");
    assert!(has_line(&after, "www 120 IN A 192.0.2.7"), "{after}");
    assert!(!after.contains("192.0.2.20"), "{after}");
    assert!(
        f.backend
            .read_intent(&c2.context.idempotency_key())
            .is_none(),
        "undo forgets the marker"
    );

    // A marker whose set is now neither the old nor the new one: an operator decides.
    let c3 = replace_call("r.test");
    f.backend
        .write_intent(
            &c3.context.idempotency_key(),
            &Intent::ReplaceRecordSet {
                zone: "r.test".into(),
                owner: "www".into(),
                rtype: "A".into(),
                before: vec!["www\t120\tIN\tA\t192.0.2.99".into()],
                after: vec!["www\t60\tIN\tA\t192.0.2.20".into()],
            },
        )
        .expect("marker");
    let err = f.provider.recover(&c3).await.expect_err("cannot tell");
    assert!(matches!(err, ProviderError::Unsupported(_)), "{err:?}");
    assert!(
        err.message().contains("check it by hand"),
        "{}",
        err.message()
    );

    // A call whose inputs never validate changed nothing.
    let bad = rrset_call(
        NS,
        "ReplaceRecordSet",
        &[("zoneName", "r.test"), ("name", "www"), ("rrType", "A")],
        &[],
    );
    assert_eq!(f.provider.recover(&bad).await.expect("bad input"), None);
}

#[tokio::test]
async fn rfc2136_replace_record_set_recovered_from_the_server() {
    let Some(n) = Named::start() else { return };
    let p = rfc_provider(&n);
    let c = rrset_call(
        NS,
        "ReplaceResourceRecordSet",
        &[
            ("zoneName", ZONE),
            ("name", "pre"),
            ("rrType", "A"),
            ("ttl", "60"),
        ],
        &[&[("address", "192.0.2.50")], &[("address", "192.0.2.51")]],
    );
    // Not sent yet: the server holds the old set, so not applied.
    assert_eq!(p.recover(&c).await.expect("recover"), None);
    assert_eq!(n.dig(&format!("pre.{ZONE}"), "A"), vec!["192.0.2.1"]);
    // Sent, outcome lost: the server holds the set the call wrote, but not what was there
    // before, so an operator decides (as for DeleteRecord).
    p.execute(c.clone()).await.expect("replace");
    let err = p.recover(&c).await.expect_err("cannot rebuild the undo");
    assert!(matches!(err, ProviderError::Unsupported(_)), "{err:?}");
    assert!(
        err.message().contains("check it by hand"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("192.0.2.50, 192.0.2.51 (TTL 60)"),
        "{}",
        err.message()
    );
    // The same data with another TTL is not what the call wrote.
    let other_ttl = rrset_call(
        NS,
        "ReplaceRecordSet",
        &[
            ("zoneName", ZONE),
            ("name", "pre"),
            ("rrType", "A"),
            ("ttl", "61"),
        ],
        &[&[("address", "192.0.2.50")], &[("address", "192.0.2.51")]],
    );
    assert_eq!(p.recover(&other_ttl).await.expect("recover"), None);
}
