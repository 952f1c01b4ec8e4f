//! The ldap backend (`LdapBackend`, the directory's `DirectoryBackend` over LDAP) against
//! a real OpenLDAP slapd and a real Samba AD DC, with the same test body for both: the AD
//! classes the procedures use, conflicts, missing parents, unknown attributes and classes,
//! DNs outside the base, renames and moves, pages, escaped filters, groups and passwords.
//! Every effect is checked with `ldapsearch` (or a bind), not with the backend.

use provisio_engine::ProviderState;
use provisio_providers::directory::ldap::{Flavour, LdapBackend, LdapSettings, TlsMode};
use provisio_providers::directory::{
    AttrSelection, Attribute, DirError, DirectoryBackend, Dn, Filter, ModOp, Modification,
    OpContext, Password, Rdn, Scope, SearchRequest,
};
use provisio_test_support::samba::{self, Samba};
use provisio_test_support::slapd::{self, Slapd};

type Entries = Vec<(String, Vec<(String, String)>)>;

fn ctx() -> OpContext {
    OpContext::new(ProviderState::detached(), "0190aaaa-txn/step", None)
}

fn a(name: &str, values: &[&str]) -> Attribute {
    Attribute::new(name, values.iter().map(|v| v.to_string()).collect())
}

fn dn(text: &str) -> Dn {
    Dn::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Values of `attr` in the first entry ldapsearch found.
fn values(found: &Entries, attr: &str) -> Vec<String> {
    found
        .first()
        .map(|(_, av)| {
            av.iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(attr))
                .map(|(_, v)| v.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The contract, run in `ou` (empty, under the backend's base); `search(base, filter, attrs)`
/// is ldapsearch as the admin; `bind(dn, pw)` a simple bind with ldapsearch.
async fn contract(
    b: &LdapBackend,
    ou: &Dn,
    search: &dyn Fn(&str, &str, &[&str]) -> Entries,
    bind: &dyn Fn(&str, &str) -> bool,
    tag: &str,
) {
    let c = ctx();
    b.ensure_base(&c).await.expect("base");
    // Two organizations, the same common name in each.
    let org1 = ou.child(Rdn::new("OU", "Org One"));
    let org2 = ou.child(Rdn::new("OU", "Org, Two"));
    for o in [&org1, &org2] {
        b.add(&c, o, &[a("objectClass", &["organizationalUnit"])])
            .await
            .expect("ou");
    }
    let cn = "Smith, John +\"Jr\" #1 \\ é";
    let u1 = org1.child(Rdn::new("CN", cn));
    let u2 = org2.child(Rdn::new("CN", cn));
    let sam1 = format!("{tag}js1");
    let sam2 = format!("{tag}js2");
    b.add(
        &c,
        &u1,
        &[
            a("objectClass", &["user"]),
            a("sAMAccountName", &[&sam1]),
            a("userPrincipalName", &[&format!("{sam1}@example.test")]),
        ],
    )
    .await
    .expect("user 1");
    b.add(
        &c,
        &u2,
        &[a("objectClass", &["user"]), a("sAMAccountName", &[&sam2])],
    )
    .await
    .expect("same CN in another organization");
    let found = search(
        &ou.to_string(),
        &format!("(sAMAccountName={sam1})"),
        &["cn", "userAccountControl"],
    );
    assert_eq!(values(&found, "cn"), vec![cn.to_string()], "{found:?}");
    let uac: u32 = values(&found, "userAccountControl")[0].parse().unwrap();
    assert_eq!(uac & 2, 2, "a new user is disabled, as on AD: {found:?}");
    // Reads give the AD class chain whatever the server.
    let e = b
        .read(&c, &u1, &AttrSelection::All)
        .await
        .unwrap()
        .expect("read");
    assert!(e.has_class("user"), "{e:?}");
    assert_eq!(e.dn, u1);
    // Duplicate in the same container: a conflict naming the DN.
    let err = b
        .add(
            &c,
            &u1,
            &[
                a("objectClass", &["user"]),
                a("sAMAccountName", &[&format!("{tag}js3")]),
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DirError::AlreadyExists { .. }), "{err:?}");
    assert!(err.to_string().contains("Org One"), "{err}");
    // Missing parent, unknown attribute, unknown class, outside the base.
    let err = b
        .add(
            &c,
            &ou.child(Rdn::new("OU", "Nope")).child(Rdn::new("CN", "x")),
            &[
                a("objectClass", &["user"]),
                a("sAMAccountName", &[&format!("{tag}x")]),
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DirError::ParentMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("Nope"), "{err}");
    let err = b
        .add(
            &c,
            &org1.child(Rdn::new("CN", "y")),
            &[a("objectClass", &["user"]), a("favouriteColour", &["blue"])],
        )
        .await
        .unwrap_err();
    match &err {
        DirError::UnknownAttribute { attribute, .. } => {
            assert_eq!(attribute, "favouriteColour", "{err}")
        }
        other => panic!("expected an unknown attribute: {other:?}"),
    }
    let err = b
        .add(
            &c,
            &org1.child(Rdn::new("CN", "z")),
            &[a("objectClass", &["spaceship"])],
        )
        .await
        .unwrap_err();
    match &err {
        DirError::UnknownClass { class, .. } => assert_eq!(class, "spaceship", "{err}"),
        other => panic!("expected an unknown class: {other:?}"),
    }
    let err = b
        .add(
            &c,
            &dn("cn=x,dc=elsewhere,dc=test"),
            &[a("objectClass", &["user"])],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DirError::OutsideBase { .. }), "{err:?}");
    // Modify: atomic.
    b.modify(
        &c,
        &u1,
        &[Modification {
            op: ModOp::Replace,
            attr: "description".into(),
            values: vec!["first".into()],
        }],
    )
    .await
    .unwrap();
    let err = b
        .modify(
            &c,
            &u1,
            &[
                Modification {
                    op: ModOp::Replace,
                    attr: "description".into(),
                    values: vec!["second".into()],
                },
                Modification {
                    op: ModOp::Delete,
                    attr: "telephoneNumber".into(),
                    values: vec!["123".into()],
                },
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, DirError::ConstraintViolation { .. }),
        "{err:?}"
    );
    assert_eq!(
        values(
            &search(&u1.to_string(), "(objectClass=*)", &["description"]),
            "description"
        ),
        vec!["first"]
    );
    b.modify(
        &c,
        &u1,
        &[Modification {
            op: ModOp::Clear,
            attr: "description".into(),
            values: vec![],
        }],
    )
    .await
    .unwrap();
    assert!(values(
        &search(&u1.to_string(), "(objectClass=*)", &["description"]),
        "description"
    )
    .is_empty());
    // Groups: member, and memberOf computed by the server.
    let g = org1.child(Rdn::new("CN", "Staff"));
    b.add(
        &c,
        &g,
        &[
            a("objectClass", &["group"]),
            a("sAMAccountName", &[&format!("{tag}staff")]),
        ],
    )
    .await
    .expect("group");
    b.modify(
        &c,
        &g,
        &[Modification {
            op: ModOp::Add,
            attr: "member".into(),
            values: vec![u1.to_string()],
        }],
    )
    .await
    .unwrap();
    let e = b
        .read(&c, &u1, &AttrSelection::Only(vec!["memberOf".into()]))
        .await
        .unwrap()
        .unwrap();
    let member_of: Vec<Dn> = e
        .get("memberOf")
        .unwrap_or_default()
        .iter()
        .map(|v| dn(v))
        .collect();
    assert_eq!(member_of, vec![g.clone()], "{e:?}");
    let e = b.read(&c, &g, &AttrSelection::All).await.unwrap().unwrap();
    assert!(e.has_class("group"), "{e:?}");
    // Rename and move; the membership follows.
    let moved = b
        .modify_dn(&c, &u1, &Rdn::new("CN", "John Smith"), Some(&org2))
        .await
        .expect("move");
    assert_eq!(moved, org2.child(Rdn::new("CN", "John Smith")));
    assert_eq!(
        search(
            &org2.to_string(),
            &format!("(sAMAccountName={sam1})"),
            &["cn"]
        )
        .len(),
        1
    );
    let members = values(
        &search(&g.to_string(), "(objectClass=*)", &["member"]),
        "member",
    );
    assert_eq!(
        members.iter().map(|m| dn(m)).collect::<Vec<_>>(),
        vec![moved.clone()]
    );
    let err = b
        .modify_dn(
            &c,
            &moved,
            &Rdn::new("CN", "X"),
            Some(&ou.child(Rdn::new("OU", "Gone"))),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DirError::ParentMissing { .. }), "{err:?}");
    // Searches: pages with a cookie, class filters, escaped values.
    for n in 0..7 {
        b.add(
            &c,
            &org1.child(Rdn::new("CN", format!("p{n}"))),
            &[
                a("objectClass", &["user"]),
                a("sAMAccountName", &[&format!("{tag}p{n}")]),
            ],
        )
        .await
        .unwrap();
    }
    let mut got = Vec::new();
    let mut cookie = None;
    let mut pages = 0;
    loop {
        let page = b
            .search(
                &c,
                &SearchRequest {
                    base: ou.clone(),
                    scope: Scope::Subtree,
                    filter: Filter::parse("(&(objectClass=user)(cn=p*))").unwrap(),
                    attrs: AttrSelection::Only(vec!["cn".into()]),
                    page_size: Some(3),
                    cookie: cookie.clone(),
                },
            )
            .await
            .unwrap();
        pages += 1;
        got.extend(
            page.entries
                .into_iter()
                .map(|e| e.first("cn").unwrap().to_string()),
        );
        cookie = page.cookie;
        if cookie.is_none() {
            break;
        }
    }
    got.sort();
    assert_eq!(pages, 3);
    assert_eq!(got, (0..7).map(|n| format!("p{n}")).collect::<Vec<_>>());
    let groups = b
        .search(
            &c,
            &SearchRequest {
                base: ou.clone(),
                scope: Scope::Subtree,
                filter: Filter::parse("(objectClass=group)").unwrap(),
                attrs: AttrSelection::Only(vec!["cn".into()]),
                page_size: None,
                cookie: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(groups.entries.len(), 1);
    let evil = b
        .search(
            &c,
            &SearchRequest {
                base: ou.clone(),
                scope: Scope::Subtree,
                filter: Filter::equal("cn", "*)(cn=*"),
                attrs: AttrSelection::All,
                page_size: None,
                cookie: None,
            },
        )
        .await
        .unwrap();
    assert!(
        evil.entries.is_empty(),
        "an escaped value matches only itself"
    );
    let err = b
        .search(
            &c,
            &SearchRequest {
                base: ou.child(Rdn::new("OU", "Gone")),
                scope: Scope::Subtree,
                filter: Filter::Present("cn".into()),
                attrs: AttrSelection::All,
                page_size: None,
                cookie: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DirError::NoSuchObject { .. }), "{err:?}");
    // Passwords: set, change (the wrong old one is told apart), never read back.
    b.set_password(&c, &moved, &Password::new("First-Passw0rd!"))
        .await
        .expect("set password");
    let uac: u32 = values(
        &search(
            &moved.to_string(),
            "(objectClass=*)",
            &["userAccountControl"],
        ),
        "userAccountControl",
    )[0]
    .parse()
    .unwrap();
    assert_eq!(
        uac, 514,
        "with a password, no longer \"password not required\""
    );
    let e = b
        .read(&c, &moved, &AttrSelection::All)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.first("userAccountControl"), Some("514"), "{e:?}");
    b.modify(
        &c,
        &moved,
        &[Modification {
            op: ModOp::Replace,
            attr: "userAccountControl".into(),
            values: vec!["512".into()],
        }],
    )
    .await
    .unwrap();
    assert!(bind(&moved.to_string(), "First-Passw0rd!"));
    let err = b
        .change_password(
            &c,
            &moved,
            &Password::new("Wrong-Passw0rd!"),
            &Password::new("Second-Passw0rd!"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DirError::WrongPassword { .. }), "{err:?}");
    assert!(!err.to_string().contains("Passw0rd"));
    b.change_password(
        &c,
        &moved,
        &Password::new("First-Passw0rd!"),
        &Password::new("Second-Passw0rd!"),
    )
    .await
    .expect("change");
    assert!(bind(&moved.to_string(), "Second-Passw0rd!"));
    assert!(!bind(&moved.to_string(), "First-Passw0rd!"));
    let e = b
        .read(
            &c,
            &moved,
            &AttrSelection::Only(vec![
                "userPassword".into(),
                "unicodePwd".into(),
                "cn".into(),
            ]),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(
        e.get("userPassword").is_none() && e.get("unicodePwd").is_none(),
        "{e:?}"
    );
    // Delete: a non-leaf is refused; a deleted user leaves its groups.
    let err = b.delete(&c, &org1).await.unwrap_err();
    assert!(matches!(err, DirError::NotLeaf { .. }), "{err:?}");
    b.delete(&c, &moved).await.unwrap();
    assert!(values(
        &search(&g.to_string(), "(objectClass=*)", &["member"]),
        "member"
    )
    .is_empty());
    let err = b.delete(&c, &moved).await.unwrap_err();
    assert!(matches!(err, DirError::NoSuchObject { .. }), "{err:?}");
}

#[tokio::test]
async fn the_contract_on_slapd() {
    let Some(s) = Slapd::start() else { return };
    let mut settings = LdapSettings::new(
        s.ldaps_url(),
        slapd::ADMIN_DN,
        s.password_file(),
        slapd::SUFFIX,
    );
    settings.tls = TlsMode::Ldaps;
    settings.tls_verify = false;
    let b = LdapBackend::new(settings).unwrap();
    contract(
        &b,
        &dn(slapd::TESTS_OU),
        &|base, filter, attrs| s.search(base, filter, attrs),
        &|who, pw| s.can_bind(who, pw),
        "s",
    )
    .await;
    assert_eq!(b.client().flavour().await.unwrap(), Flavour::OpenLdap);
    // Stored as OpenLDAP classes.
    let found = s.search(
        slapd::TESTS_OU,
        "(sAMAccountName=sjs2)",
        &["objectClass", "sn"],
    );
    let mut classes = values(&found, "objectClass");
    classes.sort();
    assert_eq!(classes, vec!["inetOrgPerson", "provisioAccount"]);
    assert_eq!(
        values(&found, "sn"),
        vec!["Smith, John +\"Jr\" #1 \\ é"],
        "sn defaults to the cn"
    );
}

#[tokio::test]
async fn the_contract_on_samba_ad() {
    let Some(sm) = Samba::shared() else { return };
    let ou = sm.new_ou("contract");
    let mut settings = LdapSettings::new(
        sm.ldaps_url(),
        samba::ADMIN_DN,
        sm.password_file(),
        samba::BASE_DN,
    );
    settings.tls = TlsMode::Ldaps;
    settings.tls_verify = false;
    let b = LdapBackend::new(settings).unwrap();
    let tag = format!("a{}", std::process::id() % 10000);
    contract(
        &b,
        &dn(&ou),
        &|base, filter, attrs| sm.search(base, filter, attrs),
        &|who, pw| sm.can_bind(who, pw),
        &tag,
    )
    .await;
    assert_eq!(b.client().flavour().await.unwrap(), Flavour::Ad);
}
