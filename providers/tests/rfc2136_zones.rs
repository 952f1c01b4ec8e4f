//! Zone creation and deletion on a real BIND `named` through `rndc addzone`/`delzone`
//! (the RFC 2136 backend with `[providers.dns.rndc]`), checked with `dig`. Skipped without
//! BIND unless `PROVISIO_REQUIRE_BIND=1`.

mod support;

use provisio_engine::provider::{Provider, ProviderError};
use provisio_providers::dns::{
    DnsProvider, Rfc2136Config, RndcConfig, E_ZONE_EXISTS, E_ZONE_NOT_FOUND,
};
use provisio_test_support::bind::Named;
use std::time::{Duration, Instant};
use support::{call, err_message, output, run, undo};

fn rndc_config(n: &Named) -> RndcConfig {
    let mut r = RndcConfig::new(n.zone_dir());
    r.server = Some("127.0.0.1".into());
    r.port = Some(n.rndc_port);
    r.key_file = Some(n.rndc_key_file());
    r
}

fn provider(n: &Named) -> DnsProvider {
    let mut config = Rfc2136Config::from_key_file(n.addr(), &n.key_file()).expect("key file");
    config.rndc = Some(rndc_config(n));
    DnsProvider::rfc2136(config).expect("provider")
}

/// Files directly in the zone folder (zone files and journals, not the hidden folders).
fn zone_files(n: &Named) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(n.zone_dir())
        .expect("zone dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| !f.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Waits (up to 5 s) until `named` has removed the files of deleted zones (`delzone
/// -clean` removes them in the background).
fn wait_no_zone_files(n: &Named) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !zone_files(n).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(zone_files(n).is_empty(), "{:?}", zone_files(n));
}

/// Not answered authoritatively: the server does not serve the zone.
fn not_served(n: &Named, zone: &str) -> bool {
    let (status, aa) = n.dig_status(zone, "SOA");
    status != "NOERROR" || !aa
}

#[tokio::test]
async fn create_zone_adds_it_to_named_and_undo_deletes_it() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    assert!(not_served(&n, "tenant.test"));
    let (c, out) = run(
        &p,
        "CreateZone",
        &[
            ("zoneName", "tenant.test"),
            ("nsAddress", "192.0.2.53"),
            ("adminEmail", "ops@tenant.test"),
            ("ttl", "600"),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nnamed log:\n{}", n.log()));
    let soa = n.dig("tenant.test", "SOA");
    assert_eq!(soa.len(), 1, "{soa:?}");
    assert!(
        soa[0].starts_with("ns1.tenant.test. ops.tenant.test. "),
        "{soa:?}"
    );
    assert_eq!(n.dig_status("tenant.test", "SOA"), ("NOERROR".into(), true));
    assert_eq!(
        n.dig("ns1.tenant.test", "A"),
        vec!["192.0.2.53".to_string()]
    );
    let serial = output(&out, "serial").expect("serial");
    assert!(soa[0].contains(&format!(" {serial} ")), "{soa:?} {serial}");
    assert!(output(&out, "location")
        .expect("location")
        .contains("rndc addzone"));

    // The new zone takes signed updates from the provider's key.
    run(
        &p,
        "AddRecord",
        &[
            ("zoneName", "tenant.test"),
            ("name", "www"),
            ("rrType", "A"),
            ("address", "192.0.2.80"),
        ],
    )
    .await
    .expect("add to the new zone");
    assert_eq!(
        n.dig("www.tenant.test", "A"),
        vec!["192.0.2.80".to_string()]
    );

    let (code, msg) = err_message(run(&p, "CreateZone", &[("zoneName", "tenant.test")]).await);
    assert_eq!(code, E_ZONE_EXISTS, "{msg}");
    // A zone from named.conf is refused the same way.
    let (code, msg) = err_message(run(&p, "CreateZone", &[("zoneName", "example.test")]).await);
    assert_eq!(code, E_ZONE_EXISTS, "{msg}");

    undo(&p, &c, &out).await.expect("undo");
    assert!(not_served(&n, "tenant.test"), "deleted by undo");
    assert!(n.dig("www.tenant.test", "A").is_empty());
    wait_no_zone_files(&n);
    // Undo is idempotent.
    undo(&p, &c, &out).await.expect("undo again");
    assert!(
        !n.dig("example.test", "SOA").is_empty(),
        "other zones untouched"
    );
}

#[tokio::test]
async fn delete_zone_keeps_its_records_and_undo_adds_them_back() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    run(
        &p,
        "CreateZone",
        &[("zoneName", "gone.test"), ("nsAddress", "192.0.2.53")],
    )
    .await
    .expect("create");
    for (name, rtype, field, value) in [
        ("www", "A", "address", "192.0.2.80"),
        ("@", "TXT", "text", "v=spf1 \"quoted\"; mx -all"),
        ("mail", "AAAA", "address", "2001:db8::25"),
    ] {
        run(
            &p,
            "AddRecord",
            &[
                ("zoneName", "gone.test"),
                ("name", name),
                ("rrType", rtype),
                (field, value),
                ("ttl", "120"),
            ],
        )
        .await
        .expect("add");
    }
    let before = n.axfr_of("gone.test");
    assert_eq!(before.len(), 5, "{before:?}");
    let serial_before: u32 = n.dig("gone.test", "SOA")[0]
        .split(' ')
        .nth(2)
        .expect("serial")
        .parse()
        .expect("int");

    let (c, out) = run(&p, "DeleteZone", &[("zoneName", "gone.test")])
        .await
        .unwrap_or_else(|e| panic!("{e}\nnamed log:\n{}", n.log()));
    assert_eq!(output(&out, "deleted").as_deref(), Some("gone.test."));
    assert!(not_served(&n, "gone.test"));
    assert!(n.dig("www.gone.test", "A").is_empty());
    wait_no_zone_files(&n);
    let copies: Vec<_> = std::fs::read_dir(n.zone_dir().join(".deleted"))
        .expect("deleted copies")
        .collect();
    assert_eq!(copies.len(), 1, "one durable copy for the undo");

    let (code, msg) = err_message(run(&p, "DeleteZone", &[("zoneName", "gone.test")]).await);
    assert_eq!(code, E_ZONE_NOT_FOUND, "{msg}");

    undo(&p, &c, &out).await.expect("undo re-adds the zone");
    assert_eq!(n.axfr_of("gone.test"), before, "same records after undo");
    let serial_after: u32 = n.dig("gone.test", "SOA")[0]
        .split(' ')
        .nth(2)
        .expect("serial")
        .parse()
        .expect("int");
    assert!(
        serial_after > serial_before,
        "{serial_after} > {serial_before}"
    );
    undo(&p, &c, &out).await.expect("undo is idempotent");
    assert_eq!(n.axfr_of("gone.test"), before);
}

#[tokio::test]
async fn zone_names_that_could_change_the_rndc_command_are_refused() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    for bad in [
        "a.test; rm -rf /",
        "a.test\" { type primary; }",
        "a b.test",
        "a{b}.test",
        "-clean",
        "a'b.test",
    ] {
        for procedure in ["CreateZone", "DeleteZone"] {
            let e = run(&p, procedure, &[("zoneName", bad)])
                .await
                .expect_err(bad);
            assert_eq!(e.code(), ProviderError::E_INVALIDARG, "{bad:?}: {e}");
        }
    }
    assert!(zone_files(&n).is_empty());
    assert!(!n.log().contains("addzone"), "{}", n.log());
}

#[tokio::test]
async fn recovery_tells_applied_zone_calls_from_unapplied_ones() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    // BIND refuses a zone whose in-zone name server has no address; rndc says why.
    let (code, msg) = err_message(run(&p, "CreateZone", &[("zoneName", "rec.test")]).await);
    assert_eq!(code, ProviderError::E_FAIL, "{msg}");
    assert!(
        msg.contains("bad zone") && msg.contains("nsAddress"),
        "{msg}"
    );
    assert!(zone_files(&n).is_empty(), "the file was removed again");
    let (c, _) = run(
        &p,
        "CreateZone",
        &[("zoneName", "rec.test"), ("nsAddress", "192.0.2.53")],
    )
    .await
    .expect("create");
    let undo_rec = p.recover(&c).await.expect("recover").expect("applied");
    assert_eq!(
        undo_rec.child("op").map(|e| e.string_value()).as_deref(),
        Some("removeZone")
    );
    let never = call(&p.namespace(), "CreateZone", &[("zoneName", "never.test")]);
    assert!(p.recover(&never).await.expect("recover").is_none());
    // Same zone, another call: that call did not create it.
    let other = call(&p.namespace(), "CreateZone", &[("zoneName", "rec.test")]);
    assert!(p.recover(&other).await.expect("recover").is_none());

    let (d, _) = run(&p, "DeleteZone", &[("zoneName", "rec.test")])
        .await
        .expect("delete");
    let undo_rec = p.recover(&d).await.expect("recover").expect("applied");
    assert_eq!(
        undo_rec.child("op").map(|e| e.string_value()).as_deref(),
        Some("restoreZone")
    );
    let other = call(
        &p.namespace(),
        "DeleteZone",
        &[("zoneName", "example.test")],
    );
    assert!(p.recover(&other).await.expect("recover").is_none());
}

#[tokio::test]
async fn an_unreachable_control_channel_is_transient_and_leaves_nothing() {
    let Some(n) = Named::start() else { return };
    let mut config = Rfc2136Config::from_key_file(n.addr(), &n.key_file()).expect("key file");
    let mut r = rndc_config(&n);
    r.port = Some(1);
    config.rndc = Some(r);
    let p = DnsProvider::rfc2136(config).expect("provider");
    let e = run(&p, "CreateZone", &[("zoneName", "nope.test")])
        .await
        .expect_err("no control channel");
    assert!(matches!(e, ProviderError::Transient { .. }), "{e:?}");
    assert!(e.message().contains("controls"), "{e}");
    assert!(zone_files(&n).is_empty());
    assert!(not_served(&n, "nope.test"));
}
