//! Integration tests of the DNS provider's RFC 2136 backend against a private BIND
//! `named` on 127.0.0.1 (started and stopped by each test; skipped without BIND unless
//! `PROVISIO_REQUIRE_BIND=1`). Results are checked with `dig`, an independent client.

mod support;

use provisio_engine::provider::{Preview, Provider, ProviderError};
use provisio_providers::dns::{
    read_tsig_key_file, DnsProvider, Rfc2136Config, E_CNAME_COLLISION, E_RECORD_EXISTS,
    E_ZONE_NOT_FOUND,
};
use provisio_test_support::bind::{Named, KEY_NAME, OTHER_KEY_NAME, ZONE};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use support::{call, err_message, output, output_lines, rrset_call, run, run_rrset, undo};

const E_INVALIDARG: u32 = ProviderError::E_INVALIDARG;

/// Inputs, name to dig, type, expected `dig +short` line.
type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str, &'a str);

fn provider(n: &Named) -> DnsProvider {
    let config = Rfc2136Config::from_key_file(n.addr(), &n.key_file()).expect("key file");
    DnsProvider::rfc2136(config).expect("provider")
}

/// Record inputs for `ZONE`.
fn rec<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![("zoneName", ZONE)];
    v.extend_from_slice(extra);
    v
}

/// `dig +noall +answer` TTLs of an RRset.
fn dig_ttls(n: &Named, name: &str, rtype: &str) -> Vec<u32> {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &n.port.to_string(), "+noall", "+answer"])
        .args(["+time=2", "+tries=1", name, rtype])
        .output()
        .expect("dig");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// Unescapes dig's TXT presentation (`"a\"b" "c"`) into the character-strings.
fn txt_strings(line: &str) -> Vec<Vec<u8>> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        let mut s = Vec::new();
        while i < b.len() && b[i] != b'"' {
            if b[i] == b'\\' {
                if i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
                    let v = (b[i + 1] - b'0') as u32 * 100
                        + (b[i + 2] - b'0') as u32 * 10
                        + (b[i + 3] - b'0') as u32;
                    s.push(u8::try_from(v).expect("escape"));
                    i += 4;
                } else {
                    s.push(b[i + 1]);
                    i += 2;
                }
            } else {
                s.push(b[i]);
                i += 1;
            }
        }
        i += 1;
        out.push(s);
    }
    out
}

#[tokio::test]
async fn key_file_is_parsed_and_secret_never_logged() {
    let Some(n) = Named::start() else { return };
    let (name, secret) = read_tsig_key_file(&n.key_file()).expect("parse");
    assert_eq!(name, KEY_NAME);
    assert_eq!(secret, n.secret);
    let config = Rfc2136Config::new(n.addr(), name, secret.clone());
    assert!(!format!("{config:?}").contains(&secret));
    let p = DnsProvider::rfc2136(config).expect("provider");
    assert!(!format!("{p:?}").contains(&secret));
}

#[tokio::test]
async fn every_record_type_is_added_with_its_ttl_and_seen_by_dig() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("name", "www"),
                ("rrType", "A"),
                ("address", "192.0.2.10"),
                ("ttl", "120"),
            ],
            "www.example.test",
            "A",
            "192.0.2.10",
        ),
        (
            vec![
                ("name", "www"),
                ("rrType", "AAAA"),
                ("address", "2001:db8::10"),
                ("ttl", "121"),
            ],
            "www.example.test",
            "AAAA",
            "2001:db8::10",
        ),
        (
            vec![
                ("name", "alias"),
                ("rrType", "CNAME"),
                ("target", "www.example.test"),
                ("ttl", "122"),
            ],
            "alias.example.test",
            "CNAME",
            "www.example.test.",
        ),
        (
            vec![
                ("name", "@"),
                ("rrType", "MXType"),
                ("preference", "5"),
                ("exchange", "mail.example.test"),
                ("ttl", "123"),
            ],
            "example.test",
            "MX",
            "5 mail.example.test.",
        ),
        (
            vec![
                ("name", "@"),
                ("rrType", "TXT"),
                ("text", "v=spf1 mx -all"),
                ("ttl", "124"),
            ],
            "example.test",
            "TXT",
            "\"v=spf1 mx -all\"",
        ),
        (
            vec![
                ("name", "_sip._tcp"),
                ("rrType", "SRV"),
                ("priority", "0"),
                ("weight", "5"),
                ("port", "5060"),
                ("target", "sip.example.test"),
                ("ttl", "125"),
            ],
            "_sip._tcp.example.test",
            "SRV",
            "0 5 5060 sip.example.test.",
        ),
        (
            vec![
                ("name", "@"),
                ("rrType", "NS"),
                ("target", "ns2.example.net"),
                ("ttl", "126"),
            ],
            "example.test",
            "NS",
            "ns2.example.net.",
        ),
        (
            vec![
                ("name", "@"),
                ("rrType", "CAA"),
                ("flags", "0"),
                ("tag", "issue"),
                ("value", "letsencrypt.org"),
                ("ttl", "127"),
            ],
            "example.test",
            "CAA",
            "0 issue \"letsencrypt.org\"",
        ),
    ];
    let mut last_serial = 0i64;
    for (inputs, name, rtype, expected) in &cases {
        let (_, out) = run(&p, "AddRecord", &rec(inputs))
            .await
            .unwrap_or_else(|e| panic!("{inputs:?}: {e}\n{}", n.log()));
        let serial: i64 = output(&out, "serial")
            .expect("serial")
            .parse()
            .expect("int");
        assert!(serial > last_serial, "serial {serial} after {last_serial}");
        last_serial = serial;
        let got = n.dig(name, rtype);
        assert!(
            got.contains(&expected.to_string()),
            "{rtype}: dig says {got:?}"
        );
        let ttl: u32 = inputs
            .iter()
            .find(|(k, _)| *k == "ttl")
            .and_then(|(_, v)| v.parse().ok())
            .expect("ttl");
        assert!(dig_ttls(&n, name, rtype).contains(&ttl), "{rtype} ttl");
    }
    // The same record again: already exists.
    let (code, msg) = err_message(run(&p, "AddRecord", &rec(&cases[0].0)).await);
    assert_eq!(code, E_RECORD_EXISTS, "{msg}");
    // A CNAME next to other data, and other data next to a CNAME, are refused.
    let (code, msg) = err_message(
        run(
            &p,
            "AddRecord",
            &rec(&[
                ("name", "pre"),
                ("rrType", "CNAME"),
                ("target", "www.example.test"),
            ]),
        )
        .await,
    );
    assert_eq!(code, E_CNAME_COLLISION, "{msg}");
    let (code, msg) = err_message(
        run(
            &p,
            "AddRecord",
            &rec(&[("name", "alias"), ("rrType", "A"), ("address", "192.0.2.5")]),
        )
        .await,
    );
    assert_eq!(code, E_CNAME_COLLISION, "{msg}");
    assert_eq!(n.dig("pre.example.test", "A"), vec!["192.0.2.1"]);
}

#[tokio::test]
async fn long_txt_with_quotes_and_spaces_reassembles_exactly() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    let mut text = String::new();
    while text.len() < 600 {
        text.push_str("say \"hello\" to the \\ world; ");
    }
    text.truncate(600);
    run(
        &p,
        "AddRecord",
        &rec(&[("name", "long"), ("rrType", "TXT"), ("text", &text)]),
    )
    .await
    .expect("add");
    let got = n.dig("long.example.test", "TXT");
    assert_eq!(got.len(), 1, "{got:?}");
    let strings = txt_strings(&got[0]);
    assert_eq!(strings.len(), 3, "600 bytes → 3 character-strings: {got:?}");
    assert!(strings.iter().all(|s| s.len() <= 255));
    assert_eq!(strings.concat(), text.as_bytes());
    // Deleting by the same text finds it.
    run(
        &p,
        "DeleteRecord",
        &rec(&[("name", "long"), ("rrType", "TXT"), ("text", &text)]),
    )
    .await
    .expect("delete");
    assert!(n.dig("long.example.test", "TXT").is_empty());
}

#[tokio::test]
async fn undo_removes_exactly_the_record_and_restores_deleted_ones() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    assert_eq!(n.dig("pre.example.test", "A"), vec!["192.0.2.1"]);
    let (c, out) = run(
        &p,
        "AddRecord",
        &rec(&[("name", "pre"), ("rrType", "A"), ("address", "192.0.2.2")]),
    )
    .await
    .expect("add");
    assert_eq!(
        n.dig("pre.example.test", "A"),
        vec!["192.0.2.1", "192.0.2.2"]
    );
    undo(&p, &c, &out).await.expect("undo add");
    assert_eq!(n.dig("pre.example.test", "A"), vec!["192.0.2.1"]);
    undo(&p, &c, &out).await.expect("undo again is a no-op");
    assert_eq!(n.dig("pre.example.test", "A"), vec!["192.0.2.1"]);

    let (c, out) = run(
        &p,
        "DeleteRecord",
        &rec(&[("name", "pre"), ("rrType", "A"), ("address", "192.0.2.1")]),
    )
    .await
    .expect("delete");
    assert!(n.dig("pre.example.test", "A").is_empty());
    undo(&p, &c, &out).await.expect("undo delete");
    assert_eq!(n.dig("pre.example.test", "A"), vec!["192.0.2.1"]);
    assert_eq!(dig_ttls(&n, "pre.example.test", "A"), vec![300]);
    undo(&p, &c, &out)
        .await
        .expect("undo delete again is a no-op");

    // Deleting a record that is not there.
    let r = run(
        &p,
        "DeleteRecord",
        &rec(&[("name", "nope"), ("rrType", "A"), ("address", "192.0.2.9")]),
    )
    .await;
    let (code, msg) = err_message(r);
    assert_eq!(code, provisio_providers::dns::E_RECORD_NOT_FOUND, "{msg}");
}

#[tokio::test]
async fn undoing_an_add_with_another_ttl_restores_the_rrsets_ttl() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    assert_eq!(dig_ttls(&n, "pre.example.test", "A"), vec![300]);
    let (c, out) = run(
        &p,
        "AddRecord",
        &rec(&[
            ("name", "pre"),
            ("rrType", "A"),
            ("address", "192.0.2.2"),
            ("ttl", "900"),
        ]),
    )
    .await
    .expect("add");
    // The server gives the whole RRset the new TTL.
    assert_eq!(dig_ttls(&n, "pre.example.test", "A"), vec![900, 900]);
    undo(&p, &c, &out).await.expect("undo add");
    assert_eq!(n.dig("pre.example.test", "A"), vec!["192.0.2.1"]);
    assert_eq!(
        dig_ttls(&n, "pre.example.test", "A"),
        vec![300],
        "the RRset's TTL from before the add"
    );
    undo(&p, &c, &out).await.expect("undo again is a no-op");
    assert_eq!(dig_ttls(&n, "pre.example.test", "A"), vec![300]);
}

#[tokio::test]
async fn undo_refuses_when_someone_else_changed_the_record() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    // Someone replaces our record.
    let (c, out) = run(
        &p,
        "AddRecord",
        &rec(&[("name", "www"), ("rrType", "A"), ("address", "192.0.2.10")]),
    )
    .await
    .expect("add");
    n.nsupdate(&[
        "update delete www.example.test. A 192.0.2.10",
        "update add www.example.test. 300 A 192.0.2.99",
    ]);
    let e = undo(&p, &c, &out).await.expect_err("must refuse");
    assert!(matches!(e, ProviderError::Permanent { .. }), "{e:?}");
    assert!(e.message().contains("changed by someone else"), "{e}");
    assert_eq!(n.dig("www.example.test", "A"), vec!["192.0.2.99"]);

    // Someone adds to the RRset we wrote: not exactly what we wrote any more.
    let (c, out) = run(
        &p,
        "AddRecord",
        &rec(&[("name", "api"), ("rrType", "A"), ("address", "192.0.2.20")]),
    )
    .await
    .expect("add");
    n.nsupdate(&["update add api.example.test. 300 A 192.0.2.21"]);
    let e = undo(&p, &c, &out).await.expect_err("must refuse");
    assert!(e.message().contains("changed by someone else"), "{e}");
    assert_eq!(
        n.dig("api.example.test", "A"),
        vec!["192.0.2.20", "192.0.2.21"]
    );

    // Someone re-creates the RRset we emptied: the undo of our delete does not merge.
    let (c, out) = run(
        &p,
        "DeleteRecord",
        &rec(&[("name", "pre"), ("rrType", "A"), ("address", "192.0.2.1")]),
    )
    .await
    .expect("delete");
    n.nsupdate(&["update add pre.example.test. 300 A 192.0.2.77"]);
    let e = undo(&p, &c, &out).await.expect_err("must refuse");
    assert!(matches!(e, ProviderError::Permanent { .. }), "{e:?}");
    assert!(e.message().contains("changed by someone else"), "{e}");
    assert_eq!(n.dig("pre.example.test", "A"), vec!["192.0.2.77"]);
}

#[tokio::test]
async fn wrong_or_unauthorized_keys_are_permanent_errors() {
    let Some(n) = Named::start() else { return };
    let add = rec(&[("name", "evil"), ("rrType", "A"), ("address", "192.0.2.66")]);

    // A key the server knows but whose update-policy grants nothing: REFUSED.
    let other = Rfc2136Config::new(n.addr(), OTHER_KEY_NAME, n.other_secret.clone());
    let p = DnsProvider::rfc2136(other).expect("provider");
    let e = run(&p, "AddRecord", &add).await.expect_err("refused");
    assert!(matches!(e, ProviderError::Permanent { .. }), "{e:?}");
    assert!(e.message().contains("REFUSED"), "{e}");

    // The right key name with a wrong secret: the server rejects the signature.
    let wrong = Rfc2136Config::new(
        n.addr(),
        KEY_NAME,
        "d3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZ3dyb25nMTI=",
    );
    let p = DnsProvider::rfc2136(wrong).expect("provider");
    let e = run(&p, "AddRecord", &add).await.expect_err("rejected");
    assert!(matches!(e, ProviderError::Permanent { .. }), "{e:?}");
    assert!(e.message().contains("NOTAUTH"), "{e}");
    // Says what the admin should check, not the DNS library's "file an issue" tail.
    assert!(
        !e.message().to_ascii_lowercase().contains("file an issue"),
        "{e}"
    );
    assert!(
        e.message().contains("same secret as the key file")
            && e.message().contains("update-policy")
            && e.message().contains("clocks"),
        "{e}"
    );

    // A key name the server does not know.
    let unknown = Rfc2136Config::new(n.addr(), "nobody-key", n.secret.clone());
    let p = DnsProvider::rfc2136(unknown).expect("provider");
    let e = run(&p, "AddRecord", &add).await.expect_err("rejected");
    assert!(matches!(e, ProviderError::Permanent { .. }), "{e:?}");
    assert!(
        !e.message().to_ascii_lowercase().contains("file an issue"),
        "{e}"
    );

    assert!(n.dig("evil.example.test", "A").is_empty());
}

#[tokio::test]
async fn injection_attempts_are_rejected_before_sending() {
    let Some(n) = Named::start() else { return };
    let before = n.axfr();
    // A provider aimed at a port where nothing listens: anything sent would be a
    // transient connection error, so E_INVALIDARG proves nothing was sent.
    let closed = {
        let s = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr")
    };
    let nowhere = DnsProvider::rfc2136(Rfc2136Config::new(closed, KEY_NAME, n.secret.clone()))
        .expect("provider");
    let live = provider(&n);
    let attempts: Vec<Vec<(&str, &str)>> = vec![
        vec![
            ("name", "www\n@ IN NS evil."),
            ("rrType", "A"),
            ("address", "192.0.2.1"),
        ],
        vec![
            ("name", "www"),
            ("rrType", "A"),
            ("address", "1.2.3.4; evil"),
        ],
        vec![("name", "www"), ("rrType", "A"), ("address", "300.1.1.1")],
        vec![
            ("name", "www"),
            ("rrType", "CNAME"),
            ("target", "evil.test. \"x\""),
        ],
        vec![
            ("name", "www.other.test."),
            ("rrType", "A"),
            ("address", "192.0.2.1"),
        ],
        vec![("name", "a..b"), ("rrType", "A"), ("address", "192.0.2.1")],
        vec![("name", "www"), ("rrType", "SOA")],
        vec![
            ("name", "www"),
            ("rrType", "MX"),
            ("exchange", "mail$.example.test"),
        ],
        vec![
            ("name", "www"),
            ("rrType", "CAA"),
            ("tag", "issue"),
            ("value", "x\"y"),
        ],
    ];
    for inputs in &attempts {
        for p in [&nowhere, &live] {
            let (code, msg) = err_message(run(p, "AddRecord", &rec(inputs)).await);
            assert_eq!(code, E_INVALIDARG, "{inputs:?}: {msg}");
        }
    }
    let (code, _) = err_message(
        run(
            &nowhere,
            "AddRecord",
            &[
                ("zoneName", "bad zone"),
                ("rrType", "A"),
                ("address", "192.0.2.1"),
            ],
        )
        .await,
    );
    assert_eq!(code, E_INVALIDARG);
    assert_eq!(n.axfr(), before, "zone unchanged");
}

#[tokio::test]
async fn unreachable_server_is_transient() {
    let closed: SocketAddr = {
        let s = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr")
    };
    let mut config = Rfc2136Config::new(closed, KEY_NAME, "c2VjcmV0c2VjcmV0c2VjcmV0");
    config.timeout = Duration::from_secs(2);
    let p = DnsProvider::rfc2136(config).expect("provider");
    let e = run(
        &p,
        "AddRecord",
        &rec(&[("name", "www"), ("rrType", "A"), ("address", "192.0.2.1")]),
    )
    .await
    .expect_err("no server");
    assert!(matches!(e, ProviderError::Transient { .. }), "{e:?}");
}

#[tokio::test]
async fn three_adds_undone_in_reverse_leave_the_zone_as_before() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    let before = n.axfr();
    let steps: Vec<Vec<(&str, &str)>> = vec![
        rec(&[
            ("name", "app"),
            ("rrType", "A"),
            ("address", "192.0.2.30"),
            ("ttl", "60"),
        ]),
        rec(&[
            ("name", "@"),
            ("rrType", "MX"),
            ("preference", "10"),
            ("exchange", "mail.example.test"),
        ]),
        rec(&[
            ("name", "_dmarc"),
            ("rrType", "TXT"),
            ("text", "v=DMARC1; p=none"),
        ]),
    ];
    let mut done = Vec::new();
    for s in &steps {
        done.push(run(&p, "AddRecord", s).await.expect("add"));
    }
    let during = n.axfr();
    assert_eq!(during.len(), before.len() + 3, "{during:#?}");
    // ListRecords (AXFR through the provider) sees the same records.
    let (_, list) = run(&p, "ListRecords", &[("zoneName", ZONE)])
        .await
        .expect("list");
    let records = list.execute_data.child("records").expect("records");
    assert_eq!(records.elements().count(), during.len(), "{records:?}");
    for (c, out) in done.iter().rev() {
        undo(&p, c, out).await.expect("undo");
    }
    assert_eq!(n.axfr(), before);
}

#[tokio::test]
async fn zones_must_exist_and_cannot_be_deleted() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    let (c, out) = run(&p, "CreateZone", &[("zoneName", ZONE)])
        .await
        .expect("served");
    let serial: u32 = output(&out, "serial")
        .expect("serial")
        .parse()
        .expect("int");
    assert!(serial >= 1);
    undo(&p, &c, &out).await.expect("undo is a no-op");
    assert!(!n.dig(ZONE, "SOA").is_empty(), "zone still served");

    let (code, msg) = err_message(run(&p, "CreateZone", &[("zoneName", "other.test")]).await);
    assert_eq!(code, E_ZONE_NOT_FOUND, "{msg}");
    assert!(msg.contains("rndc addzone"), "{msg}");

    let e = run(&p, "DeleteZone", &[("zoneName", ZONE)])
        .await
        .expect_err("unsupported");
    assert!(matches!(e, ProviderError::Unsupported(_)), "{e:?}");
    assert!(!n.dig(ZONE, "SOA").is_empty());

    let (code, _) = err_message(
        run(
            &p,
            "AddRecord",
            &[
                ("zoneName", "other.test"),
                ("name", "www"),
                ("rrType", "A"),
                ("address", "192.0.2.1"),
            ],
        )
        .await,
    );
    assert_eq!(code, E_ZONE_NOT_FOUND);
}

#[tokio::test]
async fn preview_queries_the_server() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    let preview = |proc: &str, inputs: Vec<(&str, &str)>| {
        let c = call("DNS Provider", proc, &inputs);
        let p = &p;
        async move { p.preview(&c).await.expect("preview") }
    };
    let existing = rec(&[("name", "pre"), ("rrType", "A"), ("address", "192.0.2.1")]);
    let fresh = rec(&[("name", "pre"), ("rrType", "A"), ("address", "192.0.2.2")]);
    assert!(matches!(
        preview("AddRecord", existing.clone()).await,
        Preview::Fail(_)
    ));
    assert!(matches!(
        preview("AddRecord", fresh.clone()).await,
        Preview::Change(_)
    ));
    assert!(matches!(
        preview("DeleteRecord", existing).await,
        Preview::Update(_)
    ));
    assert!(matches!(
        preview("DeleteRecord", fresh).await,
        Preview::Fail(_)
    ));
    // Without rndc, CreateZone of a served zone only checks it: it will succeed unchanged.
    assert!(matches!(
        preview("CreateZone", vec![("zoneName", ZONE)]).await,
        Preview::NoChange(_)
    ));
    assert!(matches!(
        preview("CreateZone", vec![("zoneName", "other.test")]).await,
        Preview::Fail(_)
    ));
    assert!(matches!(
        preview("DeleteZone", vec![("zoneName", ZONE)]).await,
        Preview::Fail(_)
    ));
}

// ---- ReplaceRecordSet ------------------------------------------------------------------

/// Call inputs, and one `records` item (data fields).
type Inputs<'a> = Vec<(&'a str, &'a str)>;
type Item<'a> = &'a [(&'a str, &'a str)];

fn name_of(owner: &str) -> String {
    if owner == "@" {
        ZONE.to_string()
    } else {
        format!("{owner}.{ZONE}")
    }
}

#[tokio::test]
async fn replace_record_set_then_a_failing_step_rolls_back_to_the_old_set_and_ttl() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    n.nsupdate(&["update add pre.example.test. 300 A 192.0.2.2"]);
    let before = n.axfr();
    assert_eq!(
        n.dig("pre.example.test", "A"),
        vec!["192.0.2.1", "192.0.2.2"]
    );
    let (c, out) = run_rrset(
        &p,
        "ReplaceRecordSet",
        &rec(&[("name", "pre"), ("rrType", "A"), ("ttl", "60")]),
        &[
            &[("address", "192.0.2.2")],
            &[("address", "192.0.2.3")],
            &[("address", "192.0.2.4")],
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", n.log()));
    assert_eq!(
        n.dig("pre.example.test", "A"),
        vec!["192.0.2.2", "192.0.2.3", "192.0.2.4"]
    );
    assert_eq!(dig_ttls(&n, "pre.example.test", "A"), vec![60, 60, 60]);
    assert_eq!(output(&out, "changed").as_deref(), Some("true"));
    assert_eq!(output_lines(&out, "previous").len(), 2);
    // The next step of the transaction fails (a CNAME where records are) ...
    let (code, _) = err_message(
        run(
            &p,
            "AddRecord",
            &rec(&[
                ("name", "pre"),
                ("rrType", "CNAME"),
                ("target", "x.example.net"),
            ]),
        )
        .await,
    );
    assert_eq!(code, E_CNAME_COLLISION);
    // ... so the engine undoes the replace: exactly the old set with the old TTL.
    undo(&p, &c, &out).await.expect("undo");
    assert_eq!(
        n.dig("pre.example.test", "A"),
        vec!["192.0.2.1", "192.0.2.2"]
    );
    assert_eq!(dig_ttls(&n, "pre.example.test", "A"), vec![300, 300]);
    assert_eq!(n.axfr(), before);
    undo(&p, &c, &out).await.expect("undo again is a no-op");
    assert_eq!(n.axfr(), before);
}

#[tokio::test]
async fn replace_record_set_of_every_type_and_absent_sets_undone_in_reverse() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    let before = n.axfr();
    let mut long = String::new();
    while long.len() < 600 {
        long.push_str("say \"hello\" to the \\ world; ");
    }
    type Items<'a> = Vec<Vec<(&'a str, &'a str)>>;
    let cases: Vec<(&str, &str, Items, Vec<&str>)> = vec![
        (
            "v6",
            "AAAA",
            vec![
                vec![("address", "2001:db8::1")],
                vec![("address", "2001:db8::2")],
            ],
            vec!["2001:db8::1", "2001:db8::2"],
        ),
        (
            "alias",
            "CNAME",
            vec![vec![("target", "www.example.net")]],
            vec!["www.example.net."],
        ),
        (
            "@",
            "MX",
            vec![
                vec![("preference", "10"), ("exchange", "mx1.example.net")],
                vec![("preference", "20"), ("exchange", "mx2.example.net")],
            ],
            vec!["10 mx1.example.net.", "20 mx2.example.net."],
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
            vec!["1 2 5060 sip.example.net."],
        ),
        (
            "sub",
            "NS",
            vec![
                vec![("target", "ns1.example.net")],
                vec![("target", "ns2.example.net")],
            ],
            vec!["ns1.example.net.", "ns2.example.net."],
        ),
        (
            "@",
            "CAA",
            vec![vec![("tag", "issue"), ("value", "ca.example")]],
            vec!["0 issue \"ca.example\""],
        ),
        (
            "@",
            "NS",
            vec![
                vec![("target", "ns1.example.test")],
                vec![("target", "ns2.example.net")],
            ],
            vec!["ns1.example.test.", "ns2.example.net."],
        ),
        (
            "long",
            "TXT",
            vec![vec![("text", long.as_str())], vec![("text", "v=spf1 -all")]],
            vec![],
        ),
    ];
    let mut done = Vec::new();
    for (owner, rtype, items, expected) in &cases {
        let refs: Vec<&[(&str, &str)]> = items.iter().map(Vec::as_slice).collect();
        let r = run_rrset(
            &p,
            "ReplaceRecordSet",
            &rec(&[("name", owner), ("rrType", rtype), ("ttl", "90")]),
            &refs,
        )
        .await
        .unwrap_or_else(|e| panic!("{owner} {rtype}: {e}\n{}", n.log()));
        let name = name_of(owner);
        if *owner == "sub" {
            // A delegation: dig gets a referral, so read the zone by AXFR.
            let zone = n.axfr();
            for target in expected {
                let line = format!("sub.example.test. 90 IN NS {target}");
                assert!(zone.contains(&line), "{line} in {zone:#?}");
            }
            assert_eq!(zone.iter().filter(|l| l.starts_with("sub.")).count(), 2);
            done.push(r);
            continue;
        }
        if !expected.is_empty() {
            assert_eq!(&n.dig(&name, rtype), expected, "{owner} {rtype}");
        }
        let ttls = dig_ttls(&n, &name, rtype);
        assert_eq!(ttls.len(), items.len(), "{owner} {rtype}: {ttls:?}");
        assert!(ttls.iter().all(|t| *t == 90), "{owner} {rtype}: {ttls:?}");
        done.push(r);
    }
    // The TXT set: the long text with quotes reassembles exactly, next to the short one.
    let got = n.dig("long.example.test", "TXT");
    assert_eq!(got.len(), 2, "{got:?}");
    let texts: Vec<Vec<u8>> = got.iter().map(|l| txt_strings(l).concat()).collect();
    assert!(texts.contains(&long.as_bytes().to_vec()), "{got:?}");
    assert!(texts.contains(&b"v=spf1 -all".to_vec()), "{got:?}");
    for (c, out) in done.iter().rev() {
        undo(&p, c, out)
            .await
            .unwrap_or_else(|e| panic!("undo: {e}\n{}", n.log()));
    }
    assert_eq!(n.axfr(), before, "absent sets removed, apex NS restored");
}

#[tokio::test]
async fn replace_record_set_same_set_is_a_no_op_and_preview_shows_old_and_new() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    let serial = n.dig(ZONE, "SOA");
    let same = rrset_call(
        "DNS Provider",
        "ReplaceRecordSet",
        &rec(&[("name", "pre"), ("rrType", "A"), ("ttl", "300")]),
        &[&[("address", "192.0.2.1")]],
    );
    assert!(matches!(
        p.preview(&same).await.expect("preview"),
        Preview::NoChange(_)
    ));
    let out = p.execute(same).await.expect("replace");
    assert_eq!(output(&out, "changed").as_deref(), Some("false"));
    assert!(out.undo.is_none());
    assert_eq!(n.dig(ZONE, "SOA"), serial, "no update sent");
    let change = rrset_call(
        "DNS Provider",
        "ReplaceRecordSet",
        &rec(&[("name", "pre"), ("rrType", "A"), ("ttl", "60")]),
        &[&[("address", "192.0.2.1")], &[("address", "192.0.2.9")]],
    );
    match p.preview(&change).await.expect("preview") {
        Preview::Update(m) => assert_eq!(
            m,
            "replace pre.example.test. A: 192.0.2.1 (TTL 300) → 192.0.2.1, 192.0.2.9 (TTL 60)"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(n.dig("pre.example.test", "A"), vec!["192.0.2.1"]);
}

#[tokio::test]
async fn replace_record_set_undo_refuses_when_someone_else_changed_the_set() {
    let Some(n) = Named::start() else { return };
    let p = provider(&n);
    let replace = |owner: &'static str, ip: &'static str| {
        let p = &p;
        async move {
            run_rrset(
                p,
                "ReplaceRecordSet",
                &rec(&[("name", owner), ("rrType", "A"), ("ttl", "120")]),
                &[&[("address", ip)]],
            )
            .await
            .expect("replace")
        }
    };
    // Someone adds to the set we wrote.
    let (c, out) = replace("pre", "192.0.2.10").await;
    n.nsupdate(&["update add pre.example.test. 120 A 192.0.2.11"]);
    let e = undo(&p, &c, &out).await.expect_err("must refuse");
    assert!(matches!(e, ProviderError::Permanent { .. }), "{e:?}");
    assert!(e.message().contains("changed by someone else"), "{e}");
    assert_eq!(
        n.dig("pre.example.test", "A"),
        vec!["192.0.2.10", "192.0.2.11"]
    );

    // Someone changes only the TTL of the set we wrote.
    let (c, out) = replace("ttl", "192.0.2.20").await;
    n.nsupdate(&[
        "update delete ttl.example.test. A",
        "update add ttl.example.test. 999 A 192.0.2.20",
    ]);
    let e = undo(&p, &c, &out).await.expect_err("must refuse");
    assert!(e.message().contains("changed by someone else"), "{e}");
    assert_eq!(dig_ttls(&n, "ttl.example.test", "A"), vec![999]);

    // Someone replaces the set we created: our undo must not delete theirs.
    let (c, out) = replace("fresh", "192.0.2.30").await;
    n.nsupdate(&[
        "update delete fresh.example.test. A",
        "update add fresh.example.test. 120 A 192.0.2.31",
    ]);
    let e = undo(&p, &c, &out).await.expect_err("must refuse");
    assert!(e.message().contains("changed by someone else"), "{e}");
    assert_eq!(n.dig("fresh.example.test", "A"), vec!["192.0.2.31"]);

    // Untouched: undo of the created set deletes it.
    let (c, out) = replace("gone", "192.0.2.40").await;
    undo(&p, &c, &out).await.expect("undo");
    assert!(n.dig("gone.example.test", "A").is_empty());
}

#[tokio::test]
async fn replace_record_set_is_validated_before_sending() {
    let Some(n) = Named::start() else { return };
    let before = n.axfr();
    let closed = {
        let s = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr")
    };
    let nowhere = DnsProvider::rfc2136(Rfc2136Config::new(closed, KEY_NAME, n.secret.clone()))
        .expect("provider");
    let cases: Vec<(Inputs, Vec<Item>)> = vec![
        (rec(&[("name", "pre"), ("rrType", "A")]), vec![]),
        (
            rec(&[("name", "pre"), ("rrType", "A")]),
            vec![&[("address", "1.2.3.4; evil")]],
        ),
        (
            rec(&[("name", "c"), ("rrType", "CNAME")]),
            vec![
                &[("target", "a.example.net")],
                &[("target", "b.example.net")],
            ],
        ),
        (
            rec(&[("name", "pre"), ("rrType", "A"), ("ttl", "-1")]),
            vec![&[("address", "192.0.2.1")]],
        ),
    ];
    for (inputs, records) in &cases {
        for p in [&nowhere, &provider(&n)] {
            let (code, msg) = err_message(run_rrset(p, "ReplaceRecordSet", inputs, records).await);
            assert_eq!(code, E_INVALIDARG, "{inputs:?}: {msg}");
        }
    }
    assert_eq!(n.axfr(), before);
    // Conflicts are refused by the same rules as AddRecord.
    n.nsupdate(&["update add alias.example.test. 300 CNAME www.example.net."]);
    let p = provider(&n);
    let (code, msg) = err_message(
        run_rrset(
            &p,
            "ReplaceRecordSet",
            &rec(&[("name", "alias"), ("rrType", "TXT")]),
            &[&[("text", "x")]],
        )
        .await,
    );
    assert_eq!(code, E_CNAME_COLLISION, "{msg}");
    let (code, msg) = err_message(
        run_rrset(
            &p,
            "ReplaceRecordSet",
            &rec(&[("name", "pre"), ("rrType", "CNAME")]),
            &[&[("target", "x.example.net")]],
        )
        .await,
    );
    assert_eq!(code, E_CNAME_COLLISION, "{msg}");
    assert_eq!(n.dig("pre.example.test", "A"), vec!["192.0.2.1"]);
    assert_eq!(
        n.dig("alias.example.test", "CNAME"),
        vec!["www.example.net."]
    );
}
