//! Integration tests of the DNS provider with the zone-file backend: every record type,
//! TXT escaping, injection attempts, exact undo, serials, and (when installed)
//! `named-checkzone` on the generated files.

mod support;

use provisio_engine::provider::{Preview, Provider, ProviderError};
use provisio_providers::dns::zonefile::{parse_zone, Zone};
use provisio_providers::dns::{DnsProvider, RData, Record};
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use support::{call, err_message, output, output_lines, rrset_call, run, run_rrset, undo};

const E_INVALIDARG: u32 = ProviderError::E_INVALIDARG;

/// Inputs, expected owner, expected data.
type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, RData);

fn provider() -> (tempfile::TempDir, DnsProvider, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("zones");
    let p = DnsProvider::zonefile(dir.clone()).expect("provider");
    (tmp, p, dir)
}

async fn zone(p: &DnsProvider, name: &str) {
    run(
        p,
        "CreateZone",
        &[("zoneName", name), ("nsAddress", "192.0.2.53")],
    )
    .await
    .expect("create zone");
}

fn load(dir: &std::path::Path, name: &str) -> Zone {
    let text = fs::read_to_string(dir.join(format!("{name}.zone"))).expect("zone file");
    parse_zone(&text, name).expect("parse zone")
}

fn has(z: &Zone, owner: &str, data: &RData) -> bool {
    z.records
        .iter()
        .any(|r| r.owner == owner && &r.data == data)
}

#[tokio::test]
async fn create_zone_writes_rfc1035_file_and_undo_deletes_it() {
    let (_t, p, dir) = provider();
    assert_eq!(p.name(), "DNS");
    assert_eq!(p.namespace(), "DNS Provider");
    let (c, out) = run(
        &p,
        "CreateZone",
        &[
            ("zoneName", "Contoso.Test."),
            ("nsAddress", "192.0.2.53"),
            ("adminEmail", "admin@contoso.test"),
        ],
    )
    .await
    .expect("create");
    assert_eq!(output(&out, "zone").as_deref(), Some("contoso.test."));
    let file = dir.join("contoso.test.zone");
    let text = fs::read_to_string(&file).expect("file");
    assert!(text.contains("$ORIGIN contoso.test.\n"), "{text}");
    assert!(text.contains("$TTL 3600\n"), "{text}");
    assert!(
        text.contains("IN\tSOA\tns1.contoso.test. admin.contoso.test. "),
        "{text}"
    );
    assert!(
        text.contains("@\t3600\tIN\tNS\tns1.contoso.test.\n"),
        "{text}"
    );
    assert!(text.contains("ns1\t3600\tIN\tA\t192.0.2.53\n"), "{text}");
    let z = parse_zone(&text, "contoso.test").expect("parse");
    let serial = z.soa.serial.to_string();
    assert_eq!(serial.len(), 10);
    assert!(serial.ends_with("01"), "{serial}");
    assert_eq!(output(&out, "serial"), Some(serial));
    assert!(output(&out, "warning").is_none());

    let (code, msg) = err_message(run(&p, "CreateZone", &[("zoneName", "contoso.test")]).await);
    assert_eq!(code, 0x8007_2589);
    assert!(msg.contains("already exists"), "{msg}");
    assert_eq!(fs::read_to_string(&file).expect("file"), text, "untouched");

    undo(&p, &c, &out).await.expect("undo");
    assert!(!file.exists());
    undo(&p, &c, &out).await.expect("undo is idempotent");
}

#[tokio::test]
async fn create_zone_without_ns_address_warns() {
    let (_t, p, _dir) = provider();
    let (_, out) = run(&p, "CreateZone", &[("zoneName", "example.org")])
        .await
        .expect("create");
    assert!(output(&out, "warning").is_some_and(|w| w.contains("nsAddress")));
    let (_, out) = run(
        &p,
        "CreateZone",
        &[("zoneName", "example.net"), ("primaryNs", "ns.example.com")],
    )
    .await
    .expect("create");
    assert!(output(&out, "warning").is_none());
}

#[tokio::test]
async fn every_record_type_round_trips_and_bumps_the_serial() {
    let (_t, p, dir) = provider();
    zone(&p, "example.com").await;
    let mut serial = load(&dir, "example.com").soa.serial;
    let cases: Vec<Case> = vec![
        (
            vec![("name", "www"), ("rrType", "A"), ("address", "192.0.2.10")],
            "www",
            RData::A("192.0.2.10".parse().expect("ip")),
        ),
        (
            vec![
                ("name", "www"),
                ("rrType", "AAAA"),
                ("address", "2001:DB8::10"),
            ],
            "www",
            RData::Aaaa("2001:db8::10".parse().expect("ip")),
        ),
        (
            vec![
                ("name", "ftp"),
                ("rrType", "CNAME"),
                ("target", "www.example.com"),
            ],
            "ftp",
            RData::Cname("www.example.com.".into()),
        ),
        (
            vec![
                ("name", "docs"),
                ("rrType", "CNAMEType"),
                ("PrimaryName", "@"),
            ],
            "docs",
            RData::Cname("example.com.".into()),
        ),
        (
            vec![
                ("rrType", "MX"),
                ("Preference", "10"),
                ("MailExchange", "mail.example.com."),
            ],
            "@",
            RData::Mx {
                preference: 10,
                exchange: "mail.example.com.".into(),
            },
        ),
        (
            vec![
                ("name", "@"),
                ("rrType", "mx"),
                ("preference", "20"),
                ("exchange", "backup.example.net"),
            ],
            "@",
            RData::Mx {
                preference: 20,
                exchange: "backup.example.net.".into(),
            },
        ),
        (
            vec![("rrType", "TXT"), ("DescriptiveText", "v=spf1 mx -all")],
            "@",
            RData::Txt(b"v=spf1 mx -all".to_vec()),
        ),
        (
            vec![
                ("name", "_sip._tcp"),
                ("rrType", "SRV"),
                ("priority", "10"),
                ("weight", "60"),
                ("port", "5060"),
                ("target", "sip.example.com"),
            ],
            "_sip._tcp",
            RData::Srv {
                priority: 10,
                weight: 60,
                port: 5060,
                target: "sip.example.com.".into(),
            },
        ),
        (
            vec![
                ("name", "sub"),
                ("rrType", "NS"),
                ("target", "ns.sub.example.com"),
            ],
            "sub",
            RData::Ns("ns.sub.example.com.".into()),
        ),
        (
            vec![
                ("rrType", "CAA"),
                ("flags", "0"),
                ("tag", "issue"),
                ("value", "letsencrypt.org; validationmethods=dns-01"),
            ],
            "@",
            RData::Caa {
                flags: 0,
                tag: "issue".into(),
                value: "letsencrypt.org; validationmethods=dns-01".into(),
            },
        ),
        (
            vec![
                ("name", "bücher"),
                ("rrType", "A"),
                ("address", "192.0.2.11"),
                ("ttl", "300"),
            ],
            "xn--bcher-kva",
            RData::A("192.0.2.11".parse().expect("ip")),
        ),
        (
            vec![
                ("name", "*.apps"),
                ("rrType", "A"),
                ("address", "192.0.2.12"),
            ],
            "*.apps",
            RData::A("192.0.2.12".parse().expect("ip")),
        ),
        (
            vec![
                ("name", "mail.example.com."),
                ("rrType", "A"),
                ("address", "192.0.2.25"),
            ],
            "mail",
            RData::A("192.0.2.25".parse().expect("ip")),
        ),
    ];
    for (mut inputs, owner, data) in cases {
        inputs.push(("zoneName", "example.com"));
        let (_, out) = run(&p, "AddRecord", &inputs)
            .await
            .unwrap_or_else(|e| panic!("{inputs:?}: {e}"));
        let z = load(&dir, "example.com");
        assert!(has(&z, owner, &data), "{owner} {data:?} in {:?}", z.records);
        assert!(z.soa.serial > serial, "serial increases");
        serial = z.soa.serial;
        assert_eq!(output(&out, "serial"), Some(serial.to_string()));
    }
    let z = load(&dir, "example.com");
    let ttl = z
        .records
        .iter()
        .find(|r| r.owner == "xn--bcher-kva")
        .map(|r| r.ttl);
    assert_eq!(ttl, Some(300));

    // The same record again (the owner in another case).
    let (code, msg) = err_message(
        run(
            &p,
            "AddRecord",
            &[
                ("zoneName", "example.com"),
                ("name", "WWW"),
                ("rrType", "A"),
                ("address", "192.0.2.10"),
                ("ttl", "60"),
            ],
        )
        .await,
    );
    assert_eq!(code, 0x8007_25EF);
    assert!(msg.contains("already exists"), "{msg}");

    // ListRecords reads it all back.
    let (_, out) = run(&p, "ListRecords", &[("zoneName", "example.com")])
        .await
        .expect("list");
    let records = out.execute_data.child("records").expect("records");
    assert_eq!(records.elements().count(), z.records.len());
}

#[tokio::test]
async fn cname_conflicts_are_rejected() {
    let (_t, p, _dir) = provider();
    zone(&p, "example.com").await;
    run(
        &p,
        "AddRecord",
        &[
            ("zoneName", "example.com"),
            ("name", "www"),
            ("rrType", "A"),
            ("address", "192.0.2.1"),
        ],
    )
    .await
    .expect("a");
    let (code, _) = err_message(
        run(
            &p,
            "AddRecord",
            &[
                ("zoneName", "example.com"),
                ("name", "www"),
                ("rrType", "CNAME"),
                ("target", "x.example.net"),
            ],
        )
        .await,
    );
    assert_eq!(code, 0x8007_25F1);
    run(
        &p,
        "AddRecord",
        &[
            ("zoneName", "example.com"),
            ("name", "alias"),
            ("rrType", "CNAME"),
            ("target", "x.example.net"),
        ],
    )
    .await
    .expect("cname");
    let (code, _) = err_message(
        run(
            &p,
            "AddRecord",
            &[
                ("zoneName", "example.com"),
                ("name", "alias"),
                ("rrType", "TXT"),
                ("text", "x"),
            ],
        )
        .await,
    );
    assert_eq!(code, 0x8007_25F1);
    let (code, _) = err_message(
        run(
            &p,
            "AddRecord",
            &[
                ("zoneName", "example.com"),
                ("rrType", "CNAME"),
                ("target", "x.example.net"),
            ],
        )
        .await,
    );
    assert_eq!(code, 0x8007_25F1);
}

#[tokio::test]
async fn txt_text_reloads_exactly() {
    let (_t, p, dir) = provider();
    zone(&p, "example.com").await;
    let long: String = (0..600)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let texts = [
        "hello world with  spaces ".to_string(),
        "she said \"hi\" and left".to_string(),
        "back\\slash \\\" mixed \"".to_string(),
        long.clone(),
        format!("{}\"{}", "q".repeat(254), "\\".repeat(300)),
        "semi; colon $ORIGIN evil. ( paren )".to_string(),
        "line\nbreak\ttab ünïcödé".to_string(),
        String::new(),
    ];
    for (i, t) in texts.iter().enumerate() {
        let owner = format!("t{i}");
        run(
            &p,
            "AddRecord",
            &[
                ("zoneName", "example.com"),
                ("name", &owner),
                ("rrType", "TXT"),
                ("text", t),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("{t:?}: {e}"));
        let z = load(&dir, "example.com");
        let got: Vec<&Record> = z.records.iter().filter(|r| r.owner == owner).collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, RData::Txt(t.clone().into_bytes()), "{t:?}");
    }
    // Every character-string on disk is at most 255 bytes, and lines do not break.
    let text = fs::read_to_string(dir.join("example.com.zone")).expect("file");
    let line = text
        .lines()
        .find(|l| l.starts_with("t3\t"))
        .expect("600-byte line");
    assert_eq!(line.matches('"').count(), 6, "three strings: {line}");
    assert!(!text.contains("\nbreak"), "newline escaped");
    assert!(text.lines().all(|l| !l.starts_with("$ORIGIN evil")));
}

#[tokio::test]
async fn injection_attempts_are_rejected_before_writing() {
    let (_t, p, dir) = provider();
    zone(&p, "example.com").await;
    let file = dir.join("example.com.zone");
    let before = fs::read(&file).expect("file");
    let attempts: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![
                ("name", "www\n@ IN NS evil."),
                ("rrType", "A"),
                ("address", "1.2.3.4"),
            ],
            "name",
        ),
        (
            vec![
                ("name", "www"),
                ("rrType", "A"),
                ("address", "1.2.3.4; evil"),
            ],
            "address",
        ),
        (
            vec![
                ("name", "www"),
                ("rrType", "A"),
                ("address", "1.2.3.4\n@ IN NS evil."),
            ],
            "address",
        ),
        (
            vec![("name", "www"), ("rrType", "AAAA"), ("address", "::1 ; x")],
            "address",
        ),
        (
            vec![
                ("name", "www"),
                ("rrType", "CNAME"),
                ("target", "evil.example. )"),
            ],
            "target",
        ),
        (
            vec![("name", "www"), ("rrType", "CNAME"), ("target", "a\"b")],
            "target",
        ),
        (
            vec![
                ("rrType", "MX"),
                ("preference", "10"),
                ("exchange", "mail.example.com.\n$INCLUDE /etc/passwd"),
            ],
            "exchange",
        ),
        (
            vec![
                ("rrType", "MX"),
                ("preference", "10 evil."),
                ("exchange", "mail.example.com"),
            ],
            "preference",
        ),
        (
            vec![("name", "$INCLUDE"), ("rrType", "TXT"), ("text", "x")],
            "name",
        ),
        (
            vec![("name", "a;b"), ("rrType", "TXT"), ("text", "x")],
            "name",
        ),
        (
            vec![("name", "(x"), ("rrType", "TXT"), ("text", "x")],
            "name",
        ),
        (
            vec![
                ("name", "www"),
                ("rrType", "A"),
                ("address", "1.2.3.4"),
                ("ttl", "60 IN NS evil."),
            ],
            "ttl",
        ),
        (
            vec![("name", "www"), ("rrType", "A\nNS"), ("address", "1.2.3.4")],
            "rrType",
        ),
        (
            vec![
                ("rrType", "CAA"),
                ("tag", "issue\""),
                ("value", "ca.example"),
            ],
            "tag",
        ),
        (
            vec![
                ("rrType", "CAA"),
                ("tag", "issue"),
                ("value", "ca.example\"\n@ NS evil."),
            ],
            "value",
        ),
        (
            vec![
                ("name", "_srv._tcp"),
                ("rrType", "SRV"),
                ("priority", "1"),
                ("weight", "1"),
                ("port", "99999"),
                ("target", "x.example.com"),
            ],
            "port",
        ),
        (
            vec![("name", "www"), ("rrType", "A"), ("address", "300.1.1.1")],
            "address",
        ),
        (
            vec![("name", "a..b"), ("rrType", "A"), ("address", "1.1.1.1")],
            "name",
        ),
        (
            vec![
                ("name", "under_score"),
                ("rrType", "A"),
                ("address", "1.1.1.1"),
            ],
            "name",
        ),
        (
            vec![
                ("name", "www.other.org."),
                ("rrType", "A"),
                ("address", "1.1.1.1"),
            ],
            "name",
        ),
        (vec![("rrType", "SOA")], "rrType"),
        (vec![("rrType", "HINFO")], "rrType"),
    ];
    for (mut inputs, field) in attempts {
        inputs.push(("zoneName", "example.com"));
        let (code, msg) = err_message(run(&p, "AddRecord", &inputs).await);
        assert_eq!(code, E_INVALIDARG, "{inputs:?}: {msg}");
        assert!(msg.contains(&format!("`{field}`")), "{inputs:?}: {msg}");
        assert_eq!(
            fs::read(&file).expect("file"),
            before,
            "{inputs:?} changed the file"
        );
    }
    let long_label = "a".repeat(64);
    for zone_name in [
        "example.com\n@ IN NS evil.",
        "../etc/passwd",
        "a/b",
        long_label.as_str(),
        "",
        ".",
    ] {
        let (code, msg) = err_message(run(&p, "CreateZone", &[("zoneName", zone_name)]).await);
        assert_eq!(code, E_INVALIDARG, "{zone_name:?}: {msg}");
    }
    let names: Vec<_> = fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("e").file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[tokio::test]
async fn undo_restores_previous_records_and_bumps_serial() {
    let (_t, p, dir) = provider();
    zone(&p, "example.com").await;
    run(
        &p,
        "AddRecord",
        &[
            ("zoneName", "example.com"),
            ("name", "www"),
            ("rrType", "A"),
            ("address", "192.0.2.1"),
            ("ttl", "120"),
        ],
    )
    .await
    .expect("seed");
    let z0 = load(&dir, "example.com");

    let (c, out) = run(
        &p,
        "AddRecord",
        &[
            ("zoneName", "example.com"),
            ("name", "www"),
            ("rrType", "A"),
            ("address", "192.0.2.2"),
        ],
    )
    .await
    .expect("add");
    undo(&p, &c, &out).await.expect("undo add");
    let z1 = load(&dir, "example.com");
    assert_eq!(z1.records, z0.records);
    assert!(z1.soa.serial > z0.soa.serial);
    undo(&p, &c, &out).await.expect("undo add again");

    let (c, out) = run(
        &p,
        "DeleteRecord",
        &[
            ("zoneName", "example.com"),
            ("name", "www"),
            ("rrType", "A"),
            ("address", "192.0.2.1"),
        ],
    )
    .await
    .expect("delete");
    assert!(!has(
        &load(&dir, "example.com"),
        "www",
        &RData::A("192.0.2.1".parse().expect("ip"))
    ));
    undo(&p, &c, &out).await.expect("undo delete");
    let z2 = load(&dir, "example.com");
    assert_eq!(z2.records, z0.records, "TTL 120 restored too");
    assert!(z2.soa.serial > z1.soa.serial);
    // Everything but the SOA line is byte-identical.
    let strip = |z: &Zone| {
        z.render()
            .lines()
            .filter(|l| !l.contains("\tSOA\t"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&z2), strip(&z0));

    let (code, _) = err_message(
        run(
            &p,
            "DeleteRecord",
            &[
                ("zoneName", "example.com"),
                ("name", "nope"),
                ("rrType", "A"),
                ("address", "192.0.2.1"),
            ],
        )
        .await,
    );
    assert_eq!(code, 0x8007_25E5);
    let (code, _) = err_message(
        run(
            &p,
            "AddRecord",
            &[
                ("zoneName", "missing.com"),
                ("rrType", "A"),
                ("address", "192.0.2.1"),
            ],
        )
        .await,
    );
    assert_eq!(code, 0x8007_2581);
}

#[tokio::test]
async fn delete_zone_and_undo_restore_exact_bytes() {
    let (_t, p, dir) = provider();
    zone(&p, "example.com").await;
    run(
        &p,
        "AddRecord",
        &[
            ("zoneName", "example.com"),
            ("rrType", "TXT"),
            ("text", "keep"),
        ],
    )
    .await
    .expect("txt");
    let file = dir.join("example.com.zone");
    let before = fs::read(&file).expect("file");
    let (c, out) = run(&p, "DeleteZone", &[("zoneName", "example.com")])
        .await
        .expect("delete");
    assert!(!file.exists());
    let (code, _) = err_message(
        run(
            &p,
            "AddRecord",
            &[
                ("zoneName", "example.com"),
                ("rrType", "TXT"),
                ("text", "x"),
            ],
        )
        .await,
    );
    assert_eq!(code, 0x8007_2581);
    undo(&p, &c, &out).await.expect("undo");
    assert_eq!(fs::read(&file).expect("file"), before);
    undo(&p, &c, &out).await.expect("undo is idempotent");
    let (code, _) = err_message(run(&p, "DeleteZone", &[("zoneName", "nope.com")]).await);
    assert_eq!(code, 0x8007_2581);
}

#[tokio::test]
async fn parallel_adds_to_one_zone_all_land() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("zones");
    let p = Arc::new(DnsProvider::zonefile(dir.clone()).expect("provider"));
    zone(&p, "example.com").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("h{i}");
            let addr = format!("192.0.2.{i}");
            run(
                p.as_ref(),
                "AddRecord",
                &[
                    ("zoneName", "example.com"),
                    ("name", &name),
                    ("rrType", "A"),
                    ("address", &addr),
                ],
            )
            .await
            .map(|_| ())
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("add");
    }
    let z = load(&dir, "example.com");
    assert_eq!(
        z.records
            .iter()
            .filter(|r| r.owner.starts_with('h'))
            .count(),
        20
    );
}

#[tokio::test]
async fn preview_reports_changes() {
    let (_t, p, _dir) = provider();
    let c = call("DNS Provider", "CreateZone", &[("zoneName", "example.com")]);
    assert_eq!(
        p.preview(&c).await,
        Ok(Preview::Change("create zone example.com".into()))
    );
    p.execute(c.clone()).await.expect("create");
    // CreateZone of an existing zone fails: the preview says so.
    assert_eq!(
        p.preview(&c).await,
        Ok(Preview::Fail("zone example.com already exists".into()))
    );
    let a = call(
        "DNS Provider",
        "AddRecord",
        &[
            ("zoneName", "example.com"),
            ("name", "www"),
            ("rrType", "A"),
            ("address", "192.0.2.1"),
        ],
    );
    assert!(matches!(p.preview(&a).await, Ok(Preview::Change(_))));
    p.execute(a.clone()).await.expect("add");
    assert!(matches!(p.preview(&a).await, Ok(Preview::Fail(_))));
    let d = call(
        "DNS Provider",
        "DeleteRecord",
        &[
            ("zoneName", "example.com"),
            ("name", "www"),
            ("rrType", "A"),
            ("address", "192.0.2.1"),
        ],
    );
    assert!(matches!(p.preview(&d).await, Ok(Preview::Update(_))));
    let gone = call(
        "DNS Provider",
        "DeleteZone",
        &[("zoneName", "gone.example")],
    );
    assert!(matches!(p.preview(&gone).await, Ok(Preview::Fail(_))));
    let bad = call(
        "DNS Provider",
        "AddRecord",
        &[("zoneName", "example.com"), ("rrType", "AAA")],
    );
    // Bad input previews as Fail with the message the run would give (docs/providers/dns.md).
    match p.preview(&bad).await {
        Ok(Preview::Fail(m)) => assert!(m.contains("rrType"), "{m}"),
        other => panic!("bad input must preview as Fail, got {other:?}"),
    }
    let injected = call(
        "DNS Provider",
        "AddRecord",
        &[
            ("zoneName", "example.com"),
            ("name", "www\n@ IN NS evil."),
            ("rrType", "A"),
            ("address", "192.0.2.1"),
        ],
    );
    match p.preview(&injected).await {
        Ok(Preview::Fail(m)) => assert!(m.contains("`name`"), "{m}"),
        other => panic!("an injected name must preview as Fail, got {other:?}"),
    }
    let mps_bad = call(
        "DNS Provider",
        "CreateDNSZone",
        &[("zoneName", "example.net"), ("zoneType", "banana")],
    );
    match p.preview(&mps_bad).await {
        Ok(Preview::Fail(m)) => assert!(m.contains("CreateDNSZone"), "{m}"),
        other => panic!("a refused MPS input must preview as Fail, got {other:?}"),
    }
}

/// Runs `named-checkzone` on a zone with every record type, when it is installed.
/// With `PROVISIO_REQUIRE_BIND=1` a missing tool fails the test instead of skipping it.
#[tokio::test]
async fn named_checkzone_accepts_generated_zone() {
    let required = std::env::var("PROVISIO_REQUIRE_BIND").is_ok_and(|v| v == "1");
    let tool = std::process::Command::new("named-checkzone")
        .arg("-v")
        .output();
    if tool.is_err() {
        assert!(
            !required,
            "PROVISIO_REQUIRE_BIND=1 but named-checkzone is not installed"
        );
        println!("note: named-checkzone not found; skipping (install bind9-utils to run it)");
        return;
    }
    let (_t, p, dir) = provider();
    zone(&p, "example.com").await;
    let long = "x".repeat(600);
    let adds: Vec<Vec<(&str, &str)>> = vec![
        vec![("name", "www"), ("rrType", "A"), ("address", "192.0.2.10")],
        vec![
            ("name", "www"),
            ("rrType", "AAAA"),
            ("address", "2001:db8::10"),
        ],
        vec![
            ("name", "ftp"),
            ("rrType", "CNAME"),
            ("target", "www.example.com"),
        ],
        vec![
            ("rrType", "MX"),
            ("Preference", "10"),
            ("MailExchange", "mail.example.com"),
        ],
        vec![("name", "mail"), ("rrType", "A"), ("address", "192.0.2.25")],
        vec![("rrType", "TXT"), ("DescriptiveText", "v=spf1 mx -all")],
        vec![
            ("name", "q"),
            ("rrType", "TXT"),
            ("text", "say \"hi\" \\ there; $x (y)\nz ü"),
        ],
        vec![("name", "long"), ("rrType", "TXT"), ("text", &long)],
        vec![
            ("name", "_sip._tcp"),
            ("rrType", "SRV"),
            ("priority", "10"),
            ("weight", "60"),
            ("port", "5060"),
            ("target", "www.example.com"),
        ],
        vec![
            ("name", "sub"),
            ("rrType", "NS"),
            ("target", "ns.example.net"),
        ],
        vec![
            ("rrType", "CAA"),
            ("tag", "issue"),
            ("value", "letsencrypt.org; validationmethods=dns-01"),
        ],
        vec![
            ("name", "bücher"),
            ("rrType", "A"),
            ("address", "192.0.2.11"),
        ],
    ];
    for mut a in adds {
        a.push(("zoneName", "example.com"));
        run(&p, "AddRecord", &a)
            .await
            .unwrap_or_else(|e| panic!("{a:?}: {e}"));
    }
    let out = std::process::Command::new("named-checkzone")
        .arg("example.com")
        .arg(dir.join("example.com.zone"))
        .output()
        .expect("run named-checkzone");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Dump the zone as BIND sees it and compare the TXT text.
    let dump = std::process::Command::new("named-checkzone")
        .args(["-q", "-D", "-o", "-", "example.com"])
        .arg(dir.join("example.com.zone"))
        .output()
        .expect("dump");
    let canonical = String::from_utf8_lossy(&dump.stdout);
    assert!(
        canonical.contains("\"say \\\"hi\\\" \\\\ there; $x (y)\\010z \\195\\188\""),
        "{canonical}"
    );
}

// ---- ReplaceRecordSet ------------------------------------------------------------------

/// Call inputs, and one `records` item (data fields).
type Inputs<'a> = Vec<(&'a str, &'a str)>;
type Item<'a> = &'a [(&'a str, &'a str)];

/// The RRset of `owner` and type `rtype`, as (TTL, data text), sorted.
fn rrset(z: &Zone, owner: &str, rtype: &str) -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = z
        .records
        .iter()
        .filter(|r| r.owner == owner && r.data.rtype() == rtype)
        .map(|r| (r.ttl, r.data.to_text()))
        .collect();
    v.sort();
    v
}

fn a_set(ttl: u32, ips: &[&str]) -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = ips.iter().map(|ip| (ttl, ip.to_string())).collect();
    v.sort();
    v
}

/// Runs `named-checkzone` on a zone file; `false` (skip) when it is not installed.
fn checkzone(zone: &str, file: &std::path::Path) -> bool {
    let Ok(out) = std::process::Command::new("named-checkzone")
        .arg(zone)
        .arg(file)
        .output()
    else {
        assert!(
            std::env::var("PROVISIO_REQUIRE_BIND").is_err(),
            "PROVISIO_REQUIRE_BIND=1 but named-checkzone is not installed"
        );
        return false;
    };
    assert!(
        out.status.success(),
        "named-checkzone rejected {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

const EX: &str = "example.com";

async fn seed_www(p: &DnsProvider) {
    for ip in ["192.0.2.1", "192.0.2.2"] {
        run(
            p,
            "AddRecord",
            &[
                ("zoneName", EX),
                ("name", "www"),
                ("rrType", "A"),
                ("address", ip),
                ("ttl", "120"),
            ],
        )
        .await
        .expect("seed");
    }
    run(
        p,
        "AddRecord",
        &[
            ("zoneName", EX),
            ("name", "www"),
            ("rrType", "AAAA"),
            ("address", "2001:db8::1"),
        ],
    )
    .await
    .expect("seed aaaa");
}

#[tokio::test]
async fn replace_record_set_replaces_the_whole_set_and_undo_restores_it() {
    let (_t, p, dir) = provider();
    zone(&p, EX).await;
    seed_www(&p).await;
    let z0 = load(&dir, EX);
    assert_eq!(
        rrset(&z0, "www", "A"),
        a_set(120, &["192.0.2.1", "192.0.2.2"])
    );
    let (c, out) = run_rrset(
        &p,
        "ReplaceRecordSet",
        &[
            ("zoneName", EX),
            ("name", "www"),
            ("rrType", "A"),
            ("ttl", "60"),
        ],
        &[
            &[("address", "192.0.2.2")],
            &[("address", "192.0.2.3")],
            &[("address", "192.0.2.4")],
        ],
    )
    .await
    .expect("replace");
    let z1 = load(&dir, EX);
    assert_eq!(
        rrset(&z1, "www", "A"),
        a_set(60, &["192.0.2.2", "192.0.2.3", "192.0.2.4"]),
        "exactly the new set, all with the new TTL"
    );
    assert_eq!(
        rrset(&z1, "www", "AAAA"),
        rrset(&z0, "www", "AAAA"),
        "other type kept"
    );
    assert!(z1.soa.serial > z0.soa.serial);
    assert_eq!(output(&out, "serial"), Some(z1.soa.serial.to_string()));
    assert_eq!(output(&out, "changed").as_deref(), Some("true"));
    assert_eq!(output(&out, "fqdn").as_deref(), Some("www.example.com."));
    assert_eq!(output_lines(&out, "previous").len(), 2);
    assert_eq!(output_lines(&out, "current").len(), 3);
    assert!(output_lines(&out, "previous")
        .iter()
        .all(|l| l.starts_with("www\t120\tIN\tA\t")));
    checkzone(EX, &dir.join("example.com.zone"));

    // Rollback: exactly the old set with the old TTL, the rest of the file unchanged.
    undo(&p, &c, &out).await.expect("undo");
    let z2 = load(&dir, EX);
    assert_eq!(z2.records, z0.records);
    assert!(z2.soa.serial > z1.soa.serial);
    undo(&p, &c, &out).await.expect("undo again is a no-op");
    assert_eq!(load(&dir, EX).records, z0.records);
    checkzone(EX, &dir.join("example.com.zone"));

    // The MPS-style name runs the same procedure.
    let (_, out) = run_rrset(
        &p,
        "ReplaceResourceRecordSet",
        &[("zoneName", EX), ("OwnerName", "www"), ("RRType", "AType")],
        &[&[("IPAddress", "192.0.2.9")]],
    )
    .await
    .expect("alias");
    assert_eq!(
        rrset(&load(&dir, EX), "www", "A"),
        a_set(3600, &["192.0.2.9"]),
        "no ttl: the zone's $TTL"
    );
    assert_eq!(output(&out, "changed").as_deref(), Some("true"));
}

#[tokio::test]
async fn replace_record_set_of_every_type_and_of_absent_sets() {
    let (_t, p, dir) = provider();
    zone(&p, EX).await;
    let file = dir.join("example.com.zone");
    let mut long = String::new();
    while long.len() < 700 {
        long.push_str("say \"hi\" \\ to; $ORIGIN (x) ");
    }
    let before = fs::read(&file).expect("file");
    type Items<'a> = Vec<Vec<(&'a str, &'a str)>>;
    let cases: Vec<(&str, &str, Items, usize)> = vec![
        (
            "v6",
            "AAAA",
            vec![
                vec![("address", "2001:db8::1")],
                vec![("address", "2001:db8::2")],
            ],
            2,
        ),
        (
            "alias",
            "CNAME",
            vec![vec![("target", "www.example.net")]],
            1,
        ),
        (
            "@",
            "MX",
            vec![
                vec![("preference", "10"), ("exchange", "mx1.example.net")],
                vec![("preference", "20"), ("exchange", "mx2.example.net")],
            ],
            2,
        ),
        (
            "@",
            "TXT",
            vec![vec![("text", long.as_str())], vec![("text", "v=spf1 -all")]],
            2,
        ),
        (
            "_sip._tcp",
            "SRV",
            vec![vec![
                ("priority", "1"),
                ("weight", "2"),
                ("port", "5060"),
                ("target", "sip.example.net"),
            ]],
            1,
        ),
        (
            "sub",
            "NS",
            vec![
                vec![("target", "ns1.example.net")],
                vec![("target", "ns2.example.net")],
            ],
            2,
        ),
        (
            "@",
            "CAA",
            vec![vec![("tag", "issue"), ("value", "ca.example; account=1")]],
            1,
        ),
        ("@", "NS", vec![vec![("target", "ns.example.net")]], 1),
    ];
    let mut done = Vec::new();
    for (owner, rtype, items, n) in &cases {
        let refs: Vec<&[(&str, &str)]> = items.iter().map(Vec::as_slice).collect();
        let r = run_rrset(
            &p,
            "ReplaceRecordSet",
            &[
                ("zoneName", EX),
                ("name", owner),
                ("rrType", rtype),
                ("ttl", "90"),
            ],
            &refs,
        )
        .await
        .unwrap_or_else(|e| panic!("{owner} {rtype}: {e}"));
        let got = rrset(&load(&dir, EX), owner, rtype);
        assert_eq!(got.len(), *n, "{owner} {rtype}: {got:?}");
        assert!(got.iter().all(|(ttl, _)| *ttl == 90), "{got:?}");
        done.push(r);
    }
    let z = load(&dir, EX);
    let txt: Vec<&Record> = z
        .records
        .iter()
        .filter(|r| r.owner == "@" && r.data.rtype() == "TXT")
        .collect();
    assert!(
        txt.iter()
            .any(|r| r.data == RData::Txt(long.clone().into_bytes())),
        "long TXT kept exactly"
    );
    assert_eq!(
        rrset(&z, "@", "NS"),
        vec![(90, "ns.example.net.".to_string())]
    );
    checkzone(EX, &file);
    // Sets that did not exist are removed again by undo; the apex NS is put back.
    for (c, out) in done.iter().rev() {
        undo(&p, c, out).await.expect("undo");
    }
    let strip = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .filter(|l| !l.contains("\tSOA\t"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&fs::read(&file).expect("file")), strip(&before));
    checkzone(EX, &file);
}

#[tokio::test]
async fn replace_record_set_with_the_same_set_is_a_no_op() {
    let (_t, p, dir) = provider();
    zone(&p, EX).await;
    seed_www(&p).await;
    let file = dir.join("example.com.zone");
    let bytes = fs::read(&file).expect("file");
    let same = rrset_call(
        "DNS Provider",
        "ReplaceRecordSet",
        &[
            ("zoneName", EX),
            ("name", "www"),
            ("rrType", "A"),
            ("ttl", "120"),
        ],
        &[&[("address", "192.0.2.2")], &[("address", "192.0.2.1")]],
    );
    let preview = p.preview(&same).await.expect("preview");
    assert!(
        matches!(&preview, Preview::NoChange(m) if m.contains("already holds")),
        "{preview:?}"
    );
    let out = p.execute(same).await.expect("replace");
    assert_eq!(output(&out, "changed").as_deref(), Some("false"));
    assert!(out.undo.is_none(), "nothing to undo");
    assert_eq!(
        fs::read(&file).expect("file"),
        bytes,
        "file untouched, serial kept"
    );

    // Another TTL is a change, and the preview says old → new.
    let other_ttl = rrset_call(
        "DNS Provider",
        "ReplaceRecordSet",
        &[
            ("zoneName", EX),
            ("name", "www"),
            ("rrType", "A"),
            ("ttl", "300"),
        ],
        &[&[("address", "192.0.2.2")], &[("address", "192.0.2.1")]],
    );
    match p.preview(&other_ttl).await.expect("preview") {
        Preview::Update(m) => assert_eq!(
            m,
            "replace www.example.com. A: 192.0.2.1, 192.0.2.2 (TTL 120) → 192.0.2.1, 192.0.2.2 (TTL 300)"
        ),
        other => panic!("{other:?}"),
    }
    let absent = rrset_call(
        "DNS Provider",
        "ReplaceRecordSet",
        &[("zoneName", EX), ("name", "new"), ("rrType", "TXT")],
        &[&[("text", "x")]],
    );
    match p.preview(&absent).await.expect("preview") {
        Preview::Change(m) => assert_eq!(m, "create new.example.com. TXT: \"x\" (TTL 3600)"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fs::read(&file).expect("file"),
        bytes,
        "previews write nothing"
    );
}

#[tokio::test]
async fn replace_record_set_undo_refuses_a_set_someone_else_changed() {
    let (_t, p, dir) = provider();
    zone(&p, EX).await;
    seed_www(&p).await;
    let (c, out) = run_rrset(
        &p,
        "ReplaceRecordSet",
        &[("zoneName", EX), ("name", "www"), ("rrType", "A")],
        &[&[("address", "192.0.2.50")]],
    )
    .await
    .expect("replace");
    // Someone else adds to the set we wrote (through the backend, as another writer would).
    p.backend()
        .add_record(
            EX,
            "www",
            Some(3600),
            &RData::A("192.0.2.51".parse().expect("ip")),
        )
        .await
        .expect("concurrent add");
    let file = dir.join("example.com.zone");
    let bytes = fs::read(&file).expect("file");
    let e = undo(&p, &c, &out).await.expect_err("must refuse");
    assert!(matches!(e, ProviderError::Permanent { .. }), "{e:?}");
    assert!(e.message().contains("changed by someone else"), "{e}");
    assert!(
        e.message().contains("192.0.2.51"),
        "names what it found: {e}"
    );
    assert_eq!(fs::read(&file).expect("file"), bytes, "nothing clobbered");

    // A set we created that someone else then changed is not deleted either.
    let (c, out) = run_rrset(
        &p,
        "ReplaceRecordSet",
        &[("zoneName", EX), ("name", "fresh"), ("rrType", "A")],
        &[&[("address", "192.0.2.60")]],
    )
    .await
    .expect("replace absent");
    p.backend()
        .delete_record(EX, "fresh", &RData::A("192.0.2.60".parse().expect("ip")))
        .await
        .expect("concurrent delete");
    p.backend()
        .add_record(
            EX,
            "fresh",
            Some(3600),
            &RData::A("192.0.2.61".parse().expect("ip")),
        )
        .await
        .expect("concurrent add");
    let e = undo(&p, &c, &out).await.expect_err("must refuse");
    assert!(e.message().contains("changed by someone else"), "{e}");
    assert_eq!(
        rrset(&load(&dir, EX), "fresh", "A"),
        a_set(3600, &["192.0.2.61"])
    );
}

#[tokio::test]
async fn replace_record_set_inputs_are_validated_before_writing() {
    let (_t, p, dir) = provider();
    zone(&p, EX).await;
    run(
        &p,
        "AddRecord",
        &[
            ("zoneName", EX),
            ("name", "alias"),
            ("rrType", "CNAME"),
            ("target", "x.example.net"),
        ],
    )
    .await
    .expect("cname");
    let file = dir.join("example.com.zone");
    let bytes = fs::read(&file).expect("file");
    let base = |rtype: &'static str| vec![("zoneName", EX), ("name", "www"), ("rrType", rtype)];
    let cases: Vec<(Inputs, Vec<Item>, &str)> = vec![
        (base("A"), vec![], "DeleteRecord"),
        (
            base("A"),
            vec![&[("address", "192.0.2.1")], &[("address", "300.1.1.1")]],
            "`records` item 2: input `address`",
        ),
        (
            base("A"),
            vec![&[("address", "192.0.2.1")], &[("address", "192.0.2.1")]],
            "items 1 and 2 are the same",
        ),
        (
            base("A"),
            vec![&[("text", "x")]],
            "`records` item 1: input `address` is required",
        ),
        (
            base("CNAME"),
            vec![
                &[("target", "a.example.net")],
                &[("target", "b.example.net")],
            ],
            "exactly one",
        ),
        (
            vec![
                ("zoneName", EX),
                ("name", "www"),
                ("rrType", "A"),
                ("ttl", "2147483648"),
            ],
            vec![&[("address", "192.0.2.1")]],
            "`ttl`",
        ),
        (
            vec![
                ("zoneName", EX),
                ("name", "www\n@ IN NS evil."),
                ("rrType", "A"),
            ],
            vec![&[("address", "192.0.2.1")]],
            "`name`",
        ),
        (
            base("SOA"),
            vec![&[("target", "x.example.net")]],
            "`rrType`",
        ),
        (
            base("TXT"),
            vec![&[("text", "ok")], &[("nottext", "x")]],
            "`records` item 2: input `text`",
        ),
    ];
    for (inputs, records, needle) in &cases {
        let (code, msg) = err_message(run_rrset(&p, "ReplaceRecordSet", inputs, records).await);
        assert_eq!(code, E_INVALIDARG, "{inputs:?} {records:?}: {msg}");
        assert!(msg.contains(needle), "{inputs:?} {records:?}: {msg}");
    }
    // A record list item that is a bare value names the fields it needs.
    let mut c = call("DNS Provider", "ReplaceRecordSet", &base("A"));
    c.execute_data
        .push(provisio_engine::data::Element::with_text(
            "records",
            "192.0.2.1",
        ));
    let (code, msg) = err_message(p.execute(c).await);
    assert_eq!(code, E_INVALIDARG, "{msg}");
    assert!(msg.contains("`address`"), "{msg}");
    // CNAME conflicts, as with AddRecord.
    let (code, msg) = err_message(
        run_rrset(
            &p,
            "ReplaceRecordSet",
            &[("zoneName", EX), ("name", "alias"), ("rrType", "TXT")],
            &[&[("text", "x")]],
        )
        .await,
    );
    assert_eq!(code, 0x8007_25F1, "{msg}");
    let (code, msg) = err_message(
        run_rrset(
            &p,
            "ReplaceRecordSet",
            &[("zoneName", EX), ("name", "@"), ("rrType", "CNAME")],
            &[&[("target", "x.example.net")]],
        )
        .await,
    );
    assert_eq!(code, 0x8007_25F1, "{msg}");
    assert_eq!(fs::read(&file).expect("file"), bytes, "nothing written");
    // Replacing the CNAME's own target is fine.
    run_rrset(
        &p,
        "ReplaceRecordSet",
        &[("zoneName", EX), ("name", "alias"), ("rrType", "CNAME")],
        &[&[("target", "y.example.net")]],
    )
    .await
    .expect("new target");
    assert_eq!(
        rrset(&load(&dir, EX), "alias", "CNAME"),
        vec![(3600, "y.example.net.".to_string())]
    );
    // A missing zone.
    let (code, _) = err_message(
        run_rrset(
            &p,
            "ReplaceRecordSet",
            &[("zoneName", "missing.com"), ("rrType", "A")],
            &[&[("address", "192.0.2.1")]],
        )
        .await,
    );
    assert_eq!(code, 0x8007_2581);
}

/// An MPS call with `properties` in the HMC form.
fn mps(
    procedure: &str,
    top: &[(&str, &str)],
    props: &[(&str, &str)],
) -> provisio_engine::provider::Call {
    let mut c = call("DNS Provider", procedure, top);
    let mut wrapper = provisio_engine::data::Element::new("properties");
    for (name, value) in props {
        let mut e = provisio_engine::data::Element::with_text("property", *value);
        e.set_attr("name", *name);
        wrapper.push(e);
    }
    c.execute_data.push(wrapper);
    c
}

#[tokio::test]
async fn modify_resource_record_and_write_back_on_zone_files() {
    let (_t, p, dir) = provider();
    zone(&p, "fabrikam.test").await;
    let top = [
        ("zoneName", "fabrikam.test"),
        ("rrType", "MicrosoftDNS_CNAMEType"),
        ("commitFlag", "COMMIT"),
    ];
    let create = mps(
        "CreateResourceRecord",
        &top,
        &[
            ("OwnerName", "autodiscover"),
            ("PrimaryName", "mail.fabrikam.test"),
        ],
    );
    p.execute(create).await.expect("CNAME");
    let modify = mps(
        "ModifyResourceRecord",
        &top,
        &[
            ("OwnerName", "autodiscover.fabrikam.test"),
            ("TTL", "300"),
            ("PrimaryName", "mail2.fabrikam.test"),
        ],
    );
    let serial_before = load(&dir, "fabrikam.test").soa.serial;
    let out = p.execute(modify.clone()).await.expect("modify");
    let z = load(&dir, "fabrikam.test");
    let cnames = rrset(&z, "autodiscover", "CNAME");
    assert_eq!(cnames, vec![(300, "mail2.fabrikam.test.".to_string())]);
    assert!(z.soa.serial > serial_before);
    assert_eq!(output(&out, "OperationStatus").as_deref(), Some("success"));
    undo(&p, &modify, &out).await.expect("undo");
    let z = load(&dir, "fabrikam.test");
    assert_eq!(
        rrset(&z, "autodiscover", "CNAME"),
        vec![(3600, "mail.fabrikam.test.".to_string())]
    );
    // Nothing to modify: the DNS code, nothing written.
    let bytes = fs::read(dir.join("fabrikam.test.zone")).expect("zone");
    let absent = mps(
        "ModifyResourceRecord",
        &top,
        &[
            ("OwnerName", "nothing"),
            ("PrimaryName", "mail.fabrikam.test"),
        ],
    );
    let e = p.execute(absent).await.expect_err("absent");
    assert_eq!(e.code(), provisio_providers::dns::E_RECORD_NOT_FOUND, "{e}");
    // Oversized and injected names are refused, naming the property.
    for bad in [
        "a".repeat(64),
        format!("{}.fabrikam.test", ["x"; 130].join(".")),
        "www\n@ IN NS evil.".to_string(),
    ] {
        let c = mps(
            "ModifyResourceRecord",
            &top,
            &[
                ("OwnerName", bad.as_str()),
                ("PrimaryName", "mail.fabrikam.test"),
            ],
        );
        let e = p.execute(c).await.expect_err("bad owner");
        assert_eq!(e.code(), E_INVALIDARG, "{e}");
        assert!(e.message().contains("properties/OwnerName"), "{e}");
    }
    assert_eq!(
        fs::read(dir.join("fabrikam.test.zone")).expect("zone"),
        bytes
    );

    // WriteBackZoneFile: the file already holds every change; no undo; absent zone fails.
    let (_, wb) = run(&p, "WriteBackZoneFile", &[("zoneName", "fabrikam.test")])
        .await
        .expect("write back");
    assert!(wb.undo.is_none());
    assert!(output(&wb, "writtenBack").is_some_and(|w| w.contains("fabrikam.test.zone")));
    let e = run(&p, "WriteBackZoneFile", &[("zoneName", "absent.test")])
        .await
        .expect_err("absent");
    assert_eq!(e.code(), provisio_providers::dns::E_ZONE_NOT_FOUND, "{e}");
    // PauseZone is refused, saying what to do.
    let e = run(&p, "PauseZone", &[("zoneName", "fabrikam.test")])
        .await
        .expect_err("pause");
    assert!(e.message().contains("DNS Provider/PauseZone"), "{e}");
    assert!(e.message().contains("DeleteDNSZone"), "{e}");
}
