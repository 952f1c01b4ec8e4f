//! Property tests of the directory's text formats: any value escaped for a DN (RFC 4514)
//! or a filter (RFC 4515) reads back as exactly that value, written DNs and filters parse
//! back to themselves, and neither parser panics on arbitrary text.

use proptest::prelude::*;
use provisio_providers::directory::dn::{escape_value, parse_path, to_path, Dn, Rdn};
use provisio_providers::directory::filter::{self, Filter};

/// `PROPTEST_CASES` when set (a long run), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Text rich in what DNs and filters treat specially.
fn hostile_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just(",".to_string()),
            Just("+".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("#".to_string()),
            Just(" ".to_string()),
            Just("*".to_string()),
            Just("(".to_string()),
            Just(")".to_string()),
            Just("\0".to_string()),
            Just(";".to_string()),
            Just("<".to_string()),
            Just(">".to_string()),
            Just("=".to_string()),
            Just("/".to_string()),
            Just("\n".to_string()),
            Just("ü".to_string()),
            Just("日本".to_string()),
            "[a-zA-Z0-9]{1,3}",
            any::<char>().prop_map(|c| c.to_string()),
        ],
        1..12,
    )
    .prop_map(|v| v.concat())
}

fn attr_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("cn".to_string()),
        Just("OU".to_string()),
        Just("sAMAccountName".to_string()),
        "[a-z][a-zA-Z0-9-]{0,8}",
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    hostile_text().prop_map(String::into_bytes)
}

fn leaf_filter() -> impl Strategy<Value = Filter> {
    prop_oneof![
        (attr_name(), bytes()).prop_map(|(a, v)| Filter::Equal(a, v)),
        (attr_name(), bytes()).prop_map(|(a, v)| Filter::GreaterOrEqual(a, v)),
        (attr_name(), bytes()).prop_map(|(a, v)| Filter::LessOrEqual(a, v)),
        (attr_name(), bytes()).prop_map(|(a, v)| Filter::Approx(a, v)),
        attr_name().prop_map(Filter::Present),
        (
            attr_name(),
            prop::option::of(bytes()),
            prop::collection::vec(bytes(), 0..3),
            prop::option::of(bytes())
        )
            .prop_map(|(attr, initial, any, last)| {
                if initial.is_none() && any.is_empty() && last.is_none() {
                    // `(attr=*)` is a presence test
                    Filter::Present(attr)
                } else {
                    Filter::Substrings {
                        attr,
                        initial,
                        any,
                        last,
                    }
                }
            }),
        (attr_name(), bytes()).prop_map(|(a, v)| Filter::Extensible {
            attr: Some(a),
            rule: Some(filter::RULE_BIT_AND.into()),
            dn_attrs: false,
            value: v
        }),
    ]
}

fn any_filter() -> impl Strategy<Value = Filter> {
    leaf_filter().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Filter::And),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Filter::Or),
            inner.prop_map(|f| Filter::Not(Box::new(f))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    #[test]
    fn an_escaped_dn_value_reads_back_exactly(v in hostile_text()) {
        let text = format!("CN={},OU=Org,DC=example,DC=com", escape_value(&v));
        let dn = Dn::parse(&text).unwrap();
        prop_assert_eq!(dn.rdns.len(), 4);
        prop_assert_eq!(&dn.rdns[0].first().value, &v);
        // written again the same way, through an ADSI path too
        prop_assert_eq!(dn.to_string(), text.clone());
        let p = parse_path(&to_path(&dn, Some("dc1.example.com"))).unwrap();
        prop_assert_eq!(&p.dn.rdns[0].first().value, &v);
        prop_assert_eq!(p.server.as_deref(), Some("dc1.example.com"));
        // a built RDN never splits into more
        prop_assert_eq!(Rdn::parse(&Rdn::new("CN", v.clone()).to_string()).unwrap().first().value.clone(), v);
    }

    #[test]
    fn dns_with_many_rdns_round_trip(values in prop::collection::vec(hostile_text(), 1..5), multi in any::<bool>()) {
        let mut rdns: Vec<Rdn> = values.iter().map(|v| Rdn::new("OU", v.clone())).collect();
        if multi {
            rdns[0].avas.push(provisio_providers::directory::dn::Ava::new("sn", values[0].clone()));
        }
        let dn = Dn { rdns };
        let back = Dn::parse(&dn.to_string()).unwrap();
        prop_assert_eq!(&back, &dn);
        prop_assert_eq!(back.to_string(), dn.to_string());
        prop_assert_eq!(back.key(), dn.key());
        prop_assert!(!dn.key().is_empty());
    }

    #[test]
    fn an_escaped_filter_value_is_one_literal_value(v in hostile_text()) {
        let f = Filter::parse(&format!("(cn={})", filter::escape_value(&v))).unwrap();
        prop_assert_eq!(f, Filter::Equal("cn".into(), v.into_bytes()));
    }

    #[test]
    fn written_filters_parse_back(f in any_filter()) {
        let text = f.to_string();
        let back = Filter::parse(&text).unwrap();
        prop_assert_eq!(&back, &f);
    }

    #[test]
    fn parsers_never_panic(text in "\\PC{0,60}") {
        let _ = Dn::parse(&text);
        let _ = parse_path(&text);
        let _ = Filter::parse(&text);
    }

    #[test]
    fn parsers_never_panic_on_near_misses(v in hostile_text()) {
        let _ = Dn::parse(&format!("CN={v},DC=x"));
        let _ = Filter::parse(&format!("(cn={v})"));
        let _ = Filter::parse(&format!("(&(cn={v})(|(sn=*{v}*)))"));
    }
}
