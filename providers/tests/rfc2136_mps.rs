//! The DNS Provider's MPS procedures (`CreateResourceRecord`, `DeleteResourceRecord`,
//! `CreateDNSZone`, `DeleteDNSZone`, `ModifyResourceRecord`, `WriteBackZoneFile`; `PauseZone`
//! refused) with HMC 4.5-shaped inputs against a private BIND
//! `named` (skipped without BIND unless `PROVISIO_REQUIRE_BIND=1`), checked with `dig`.

mod support;

use provisio_engine::data::Element;
use provisio_engine::provider::{Call, Outcome, Preview, Provider, ProviderError};
use provisio_providers::dns::{DnsProvider, Rfc2136Config, RndcConfig};
use provisio_test_support::bind::{Named, ZONE};
use support::{call, output, undo};

fn provider(n: &Named) -> DnsProvider {
    let config = Rfc2136Config::from_key_file(n.addr(), &n.key_file()).expect("key file");
    DnsProvider::rfc2136(config).expect("provider")
}

/// An MPS call: top-level text inputs, then `properties` in the HMC form
/// (`<property name="…">…</property>`).
fn mps_call(procedure: &str, top: &[(&str, &str)], props: &[(&str, &str)]) -> Call {
    let mut c = call("DNS Provider", procedure, top);
    if !props.is_empty() {
        let mut p = Element::new("properties");
        for (name, value) in props {
            let mut e = Element::with_text("property", *value);
            e.set_attr("name", *name);
            p.push(e);
        }
        c.execute_data.push(p);
    }
    c
}

async fn exec(p: &DnsProvider, c: &Call) -> Result<Outcome, ProviderError> {
    p.execute(c.clone()).await
}

/// Top-level inputs, properties, and the words the refusal must hold.
type Refused<'a> = (Vec<(&'a str, &'a str)>, Vec<(&'a str, &'a str)>, &'a str);

/// The HMC top-level inputs of a record call in `ZONE` on `n`.
fn top<'a>(n: &'a str, rr_type: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("serverIdentifier", n),
        ("zoneName", ZONE),
        ("rrType", rr_type),
        ("commitFlag", "COMMIT"),
    ]
}

#[tokio::test]
async fn spf_owner_name_lands_under_the_zone_verbatim_and_rollback_removes_it() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    let server = "127.0.0.1".to_string();

    // The bug of issue 17: OwnerName `_spf` used to be ignored and the record went to the apex.
    let spf = mps_call(
        "CreateResourceRecord",
        &top(&server, "MicrosoftDNS_TXTType"),
        &[
            ("OwnerName", "_spf"),
            ("TTL", "300"),
            ("DescriptiveText", "v=spf1 include:_spf.fabrikam.com ~all"),
        ],
    );
    let spf_out = exec(&p, &spf)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log()));
    assert_eq!(
        n.dig(&format!("_spf.{ZONE}"), "TXT"),
        vec!["\"v=spf1 include:_spf.fabrikam.com ~all\""]
    );
    assert!(n.dig(ZONE, "TXT").is_empty(), "nothing at the apex");
    assert_eq!(
        output(&spf_out, "OperationStatus").as_deref(),
        Some("success")
    );
    assert_eq!(
        output(&spf_out, "fqdn").as_deref(),
        Some(format!("_spf.{ZONE}.").as_str())
    );

    // DescriptiveText is passed verbatim: quotes the caller wrote are part of the text.
    let quoted = mps_call(
        "CreateResourceRecord",
        &top(&server, "MicrosoftDNS_TXTType"),
        &[
            ("OwnerName", &format!("verbatim.{ZONE}")),
            ("DescriptiveText", "\"v=spf1 mx -all\""),
        ],
    );
    let quoted_out = exec(&p, &quoted).await.expect("quoted TXT");
    assert_eq!(
        n.dig(&format!("verbatim.{ZONE}"), "TXT"),
        vec!["\"\\\"v=spf1 mx -all\\\"\""]
    );

    // MX with its preference, OwnerName given as the full name of the apex.
    let mx = mps_call(
        "CreateResourceRecord",
        &top(&server, "MicrosoftDNS_MXType"),
        &[
            ("ContainerName", ZONE),
            ("OwnerName", ZONE),
            ("MailExchange", &format!("mail.{ZONE}")),
            ("Preference", "20"),
        ],
    );
    let mx_out = exec(&p, &mx).await.expect("MX");
    assert_eq!(n.dig(ZONE, "MX"), vec![format!("20 mail.{ZONE}.")]);

    // A and CNAME through their WMI classes.
    let a = mps_call(
        "CreateResourceRecord",
        &top(&server, "MicrosoftDNS_AType"),
        &[
            ("OwnerName", &format!("www.{ZONE}")),
            ("IPAddress", "192.0.2.80"),
        ],
    );
    let a_out = exec(&p, &a).await.expect("A");
    assert_eq!(n.dig(&format!("www.{ZONE}"), "A"), vec!["192.0.2.80"]);

    // Rollback: undo in reverse order removes every record.
    undo(&p, &a, &a_out).await.expect("undo A");
    undo(&p, &mx, &mx_out).await.expect("undo MX");
    undo(&p, &quoted, &quoted_out)
        .await
        .expect("undo quoted TXT");
    undo(&p, &spf, &spf_out).await.expect("undo SPF");
    assert!(n.dig(&format!("www.{ZONE}"), "A").is_empty());
    assert!(n.dig(ZONE, "MX").is_empty());
    assert!(n.dig(&format!("_spf.{ZONE}"), "TXT").is_empty());
    assert!(n.dig(&format!("verbatim.{ZONE}"), "TXT").is_empty());
}

#[tokio::test]
async fn delete_resource_record_with_rr_name_and_its_undo() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    n.nsupdate(&[&format!("update add old.{ZONE} 600 A 192.0.2.9")]);
    assert_eq!(n.dig(&format!("old.{ZONE}"), "A"), vec!["192.0.2.9"]);

    let mut t = top("127.0.0.1", "MicrosoftDNS_AType");
    t.push(("rrName", "old"));
    let del = mps_call("DeleteResourceRecord", &t, &[("IPAddress", "192.0.2.9")]);
    let out = exec(&p, &del).await.expect("delete");
    assert!(n.dig(&format!("old.{ZONE}"), "A").is_empty());
    undo(&p, &del, &out).await.expect("undo delete");
    assert_eq!(n.dig(&format!("old.{ZONE}"), "A"), vec!["192.0.2.9"]);

    // A record that is not there: the DNS server's code, nothing changed.
    let missing = mps_call("DeleteResourceRecord", &t, &[("IPAddress", "192.0.2.99")]);
    let e = exec(&p, &missing).await.expect_err("absent");
    assert_eq!(e.code(), provisio_providers::dns::E_RECORD_NOT_FOUND, "{e}");
}

#[tokio::test]
async fn bad_mps_input_is_refused_before_anything_is_sent() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    let cases: Vec<Refused> = vec![
        (
            top("127.0.0.1", "MicrosoftDNS_AType"),
            vec![
                ("OwnerName", "x"),
                ("IPAddress", "192.0.2.1"),
                ("Weight", "1"),
            ],
            "`properties/Weight` is not a property of a A record",
        ),
        (
            top("127.0.0.1", "MicrosoftDNS_AType"),
            vec![
                ("OwnerName", "x\" IN TXT \"injected"),
                ("IPAddress", "192.0.2.1"),
            ],
            "properties/OwnerName",
        ),
        (
            top("127.0.0.1", "MicrosoftDNS_PTRType"),
            vec![("OwnerName", "x")],
            "rrType",
        ),
        (
            top("192.0.2.200", "MicrosoftDNS_AType"),
            vec![("OwnerName", "x"), ("IPAddress", "192.0.2.1")],
            "`serverIdentifier` \"192.0.2.200\" is not the server",
        ),
    ];
    for (t, props, want) in cases {
        let c = mps_call("CreateResourceRecord", &t, &props);
        let e = exec(&p, &c).await.expect_err("refused");
        assert_eq!(e.code(), ProviderError::E_INVALIDARG, "{e}");
        assert!(e.message().contains(want), "want {want:?} in {e}");
        // Preview says the call would fail, with the same words.
        match p.preview(&c).await {
            Ok(Preview::Fail(m)) => assert!(m.contains(want), "want {want:?} in {m}"),
            other => panic!("bad input must preview as Fail, got {other:?}"),
        }
    }
    assert!(n.dig("x.example.test", "TXT").is_empty());
    assert!(n.dig("x.example.test", "A").is_empty());

    // check-only validates and changes nothing.
    let mut c = mps_call(
        "CreateResourceRecord",
        &top("127.0.0.1", "MicrosoftDNS_AType"),
        &[("OwnerName", "checked"), ("IPAddress", "192.0.2.7")],
    );
    let mut dl = Element::new("debugLevel");
    dl.set_attr("check-only", "on");
    c.execute_data.push(dl);
    let out = exec(&p, &c).await.expect("check-only");
    assert!(out.undo.is_none());
    assert!(output(&out, "OperationStatus")
        .expect("status")
        .contains("check-only"));
    assert!(n.dig("checked.example.test", "A").is_empty());
    assert!(matches!(p.preview(&c).await, Ok(Preview::NoChange(_))));
}

#[tokio::test]
async fn create_and_delete_dns_zone_with_rndc() {
    let Some(n) = Named::start() else { return };
    let mut config = Rfc2136Config::from_key_file(n.addr(), &n.key_file()).expect("key file");
    let mut rndc = RndcConfig::new(n.zone_dir());
    rndc.server = Some("127.0.0.1".into());
    rndc.port = Some(n.rndc_port);
    rndc.key_file = Some(n.rndc_key_file());
    config.rndc = Some(rndc);
    let p = DnsProvider::rfc2136(config).expect("provider");
    let zone_top = [
        ("serverIdentifier", "127.0.0.1"),
        ("zoneName", "contoso.test"),
        ("zoneType", "PRIMARY"),
        ("adminEmail", "admin@contoso.test"),
        ("commitFlag", "COMMIT"),
        ("nsAddress", "192.0.2.53"),
    ];
    let create = call("DNS Provider", "CreateDNSZone", &zone_top);
    let out = exec(&p, &create)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log()));
    let soa = n.dig("contoso.test", "SOA");
    assert!(
        soa.first()
            .is_some_and(|s| s.contains("admin.contoso.test.")),
        "{soa:?}"
    );
    // Records into the new zone through the MPS procedure (BIND wants the mail host's
    // address before an in-zone MX).
    let host = mps_call(
        "CreateResourceRecord",
        &[
            ("serverIdentifier", "127.0.0.1"),
            ("zoneName", "contoso.test"),
            ("rrType", "MicrosoftDNS_AType"),
        ],
        &[
            ("OwnerName", "mail.contoso.test"),
            ("IPAddress", "192.0.2.25"),
        ],
    );
    exec(&p, &host).await.expect("A in new zone");
    let rec = mps_call(
        "CreateResourceRecord",
        &[
            ("serverIdentifier", "127.0.0.1"),
            ("zoneName", "contoso.test"),
            ("rrType", "MicrosoftDNS_MXType"),
        ],
        &[("MailExchange", "mail.contoso.test"), ("Preference", "10")],
    );
    exec(&p, &rec).await.expect("MX in new zone");
    assert_eq!(n.dig("contoso.test", "MX"), vec!["10 mail.contoso.test."]);

    // Rollback of the zone: it is no longer served.
    undo(&p, &create, &out).await.expect("undo CreateDNSZone");
    assert!(n.dig("contoso.test", "SOA").is_empty());

    // zoneType SECONDARY and a missing commitFlag are refused, naming the element.
    let mut secondary = zone_top.to_vec();
    secondary[2] = ("zoneType", "SECONDARY");
    let e = exec(&p, &call("DNS Provider", "CreateDNSZone", &secondary))
        .await
        .expect_err("secondary");
    assert!(e.message().contains("`zoneType`"), "{e}");
    let e = exec(&p, &call("DNS Provider", "CreateDNSZone", &zone_top[..4]))
        .await
        .expect_err("no commitFlag");
    assert!(e.message().contains("`commitFlag`"), "{e}");
    assert!(n.dig("contoso.test", "SOA").is_empty());

    // DeleteDNSZone of the fixture's zone, and its undo.
    let before = n.axfr();
    let del = call(
        "DNS Provider",
        "DeleteDNSZone",
        &[("serverIdentifier", "127.0.0.1"), ("zoneName", ZONE)],
    );
    let out = exec(&p, &del).await.expect("DeleteDNSZone");
    assert!(n.dig(ZONE, "SOA").is_empty());
    undo(&p, &del, &out).await.expect("undo DeleteDNSZone");
    assert_eq!(n.axfr().len(), before.len());
}

/// The zone files `rndc addzone` got for `zone` in the fixture's zone folder, read whole.
fn zone_files_text(n: &Named, zone: &str) -> String {
    let mut text = String::new();
    for e in std::fs::read_dir(n.zone_dir()).expect("zone dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{zone}.")) && name.ends_with(".zone") {
            text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    text
}

#[tokio::test]
async fn modify_resource_record_write_back_and_pause_with_rndc() {
    let Some(n) = Named::start() else { return };
    let mut config = Rfc2136Config::from_key_file(n.addr(), &n.key_file()).expect("key file");
    let mut rndc = RndcConfig::new(n.zone_dir());
    rndc.server = Some("127.0.0.1".into());
    rndc.port = Some(n.rndc_port);
    rndc.key_file = Some(n.rndc_key_file());
    config.rndc = Some(rndc);
    let p = DnsProvider::rfc2136(config).expect("provider");
    let zone = "tailspin.test";
    let create = call(
        "DNS Provider",
        "CreateDNSZone",
        &[
            ("serverIdentifier", "127.0.0.1"),
            ("zoneName", zone),
            ("commitFlag", "COMMIT"),
            ("nsAddress", "192.0.2.53"),
        ],
    );
    let created = exec(&p, &create)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log()));
    let a_top = [
        ("serverIdentifier", "127.0.0.1"),
        ("zoneName", zone),
        ("rrType", "MicrosoftDNS_AType"),
        ("commitFlag", "COMMIT"),
    ];
    let www = format!("www.{zone}");
    exec(
        &p,
        &mps_call(
            "CreateResourceRecord",
            &a_top,
            &[("OwnerName", &www), ("IPAddress", "192.0.2.10")],
        ),
    )
    .await
    .expect("A");
    assert_eq!(n.dig(&www, "A"), vec!["192.0.2.10"]);

    // ModifyResourceRecord: the record's data and TTL change in one update.
    let modify = mps_call(
        "ModifyResourceRecord",
        &a_top,
        &[
            ("OwnerName", &www),
            ("TTL", "600"),
            ("IPAddress", "192.0.2.11"),
        ],
    );
    assert!(matches!(p.preview(&modify).await, Ok(Preview::Update(_))));
    let modified = exec(&p, &modify)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log()));
    assert_eq!(n.dig(&www, "A"), vec!["192.0.2.11"]);
    assert_eq!(
        output(&modified, "OperationStatus").as_deref(),
        Some("success")
    );

    // The update is in BIND's journal; WriteBackZoneFile (`rndc sync`) puts it in the file.
    assert!(
        !zone_files_text(&n, zone).contains("192.0.2.11"),
        "the zone file already held the update before WriteBackZoneFile"
    );
    let write_back = call(
        "DNS Provider",
        "WriteBackZoneFile",
        &[("serverIdentifier", "127.0.0.1"), ("zoneName", zone)],
    );
    let wb = exec(&p, &write_back)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log()));
    assert!(wb.undo.is_none());
    assert!(output(&wb, "writtenBack").is_some_and(|w| w.contains("rndc sync")));
    // named writes the file from a task of its own after `rndc sync` returns: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut file = zone_files_text(&n, zone);
    while !file.contains("192.0.2.11") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        file = zone_files_text(&n, zone);
    }
    assert!(file.contains("192.0.2.11"), "{file}");
    // A zone the server does not have.
    let e = exec(
        &p,
        &call(
            "DNS Provider",
            "WriteBackZoneFile",
            &[("zoneName", "absent.test")],
        ),
    )
    .await
    .expect_err("absent zone");
    assert_eq!(e.code(), provisio_providers::dns::E_ZONE_NOT_FOUND, "{e}");

    // Undo of the modification puts the old record back (data and TTL).
    undo(&p, &modify, &modified).await.expect("undo modify");
    assert_eq!(n.dig(&www, "A"), vec!["192.0.2.10"]);

    // A name holding no such record, or two: refused, nothing changed.
    let none = mps_call(
        "ModifyResourceRecord",
        &a_top,
        &[("OwnerName", "nothing"), ("IPAddress", "192.0.2.12")],
    );
    let e = exec(&p, &none).await.expect_err("absent record");
    assert_eq!(e.code(), provisio_providers::dns::E_RECORD_NOT_FOUND, "{e}");
    assert!(matches!(p.preview(&none).await, Ok(Preview::Fail(_))));
    exec(
        &p,
        &mps_call(
            "CreateResourceRecord",
            &a_top,
            &[("OwnerName", &www), ("IPAddress", "192.0.2.20")],
        ),
    )
    .await
    .expect("second A");
    let two = mps_call(
        "ModifyResourceRecord",
        &a_top,
        &[("OwnerName", &www), ("IPAddress", "192.0.2.30")],
    );
    let e = exec(&p, &two).await.expect_err("ambiguous");
    assert!(e.message().contains("holds 2 records"), "{e}");
    let mut both = n.dig(&www, "A");
    both.sort();
    assert_eq!(both, vec!["192.0.2.10", "192.0.2.20"]);
    // Injection through the MPS properties is refused before anything is sent.
    let bad = mps_call(
        "ModifyResourceRecord",
        &a_top,
        &[
            ("OwnerName", "www\n@ IN NS evil."),
            ("IPAddress", "192.0.2.30"),
        ],
    );
    let e = exec(&p, &bad).await.expect_err("injection");
    assert_eq!(e.code(), ProviderError::E_INVALIDARG, "{e}");

    // PauseZone / ResumeZone: refused, saying what to do instead; the zone stays served.
    for proc in ["PauseZone", "ResumeZone"] {
        let e = exec(&p, &call("DNS Provider", proc, &[("zoneName", zone)]))
            .await
            .expect_err("refused");
        assert!(e.message().contains(&format!("DNS Provider/{proc}")), "{e}");
        assert!(e.message().contains("DeleteDNSZone"), "{e}");
    }
    assert!(!n.dig(zone, "SOA").is_empty());

    undo(&p, &create, &created).await.expect("undo zone");
    assert!(n.dig(zone, "SOA").is_empty());
}
