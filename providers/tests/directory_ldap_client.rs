//! The ldap backend's LDAP layer against a real OpenLDAP slapd and a real Samba AD DC:
//! connection pool and bind from a password file, flavour detection from the root DSE,
//! add / modify / rename / delete / paged search, the result codes mapped to error
//! classes that name the object, passwords (Password Modify on slapd, `unicodePwd` on AD,
//! refused over plain LDAP) and enable/disable — every result checked with `ldapsearch`
//! or `samba-tool`, not with the client itself.

use provisio_providers::directory::ldap::{
    Flavour, LdapClient, LdapErrorKind, LdapMod, LdapScope, LdapSettings, TlsMode,
};
use provisio_test_support::samba::{self, Samba};
use provisio_test_support::slapd::{self, Slapd};
use std::time::Duration;

fn attrs(pairs: &[(&str, &[&str])]) -> Vec<(String, Vec<Vec<u8>>)> {
    pairs
        .iter()
        .map(|(a, vs)| {
            (
                a.to_string(),
                vs.iter().map(|v| v.as_bytes().to_vec()).collect(),
            )
        })
        .collect()
}

fn slapd_settings(s: &Slapd) -> LdapSettings {
    LdapSettings::new(s.url(), slapd::ADMIN_DN, s.password_file(), slapd::SUFFIX)
}

fn user(cn: &str, sam: &str) -> Vec<(String, Vec<Vec<u8>>)> {
    attrs(&[
        ("objectClass", &["inetOrgPerson", "provisioAccount"]),
        ("cn", &[cn]),
        ("sn", &["S"]),
        ("sAMAccountName", &[sam]),
    ])
}

#[tokio::test]
async fn slapd_crud_paged_search_and_errors_name_the_object() {
    let Some(s) = Slapd::start() else { return };
    let c = LdapClient::connect(slapd_settings(&s))
        .await
        .expect("connect");
    assert_eq!(c.flavour().await.unwrap(), Flavour::OpenLdap);
    let ou = slapd::TESTS_OU;
    // Tricky names: the DN is escaped (RFC 4514) and the server sees one RDN value.
    let cn = "Smith, John + \"Jr\" #1 \\ <x>; é";
    let dn = format!("cn={},{ou}", ldap3::dn_escape(cn));
    c.add(0, &dn, &user(cn, "jsmith")).await.expect("add");
    let found = s.search(ou, "(sAMAccountName=jsmith)", &["cn"]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1, vec![("cn".to_string(), cn.to_string())]);
    // Same CN in another organization works.
    c.add(
        0,
        &format!("ou=Org2,{ou}"),
        &attrs(&[("objectClass", &["organizationalUnit"]), ("ou", &["Org2"])]),
    )
    .await
    .unwrap();
    let dn2 = format!("cn={},ou=Org2,{ou}", ldap3::dn_escape(cn));
    c.add(0, &dn2, &user(cn, "jsmith2"))
        .await
        .expect("same cn elsewhere");
    // Duplicate in the same container: a conflict naming the DN.
    let e = c.add(0, &dn, &user(cn, "jsmith3")).await.unwrap_err();
    assert_eq!(e.kind, LdapErrorKind::AlreadyExists, "{e}");
    assert_eq!(e.rc, Some(68));
    assert!(e.message.contains(&dn), "{e}");
    // Duplicate sAMAccountName elsewhere: the unique overlay refuses (constraint).
    let e = c
        .add(0, &format!("cn=Other,{ou}"), &user("Other", "JSMITH"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, LdapErrorKind::Constraint, "{e}");
    // Missing parent, unknown attribute, object class violation.
    let e = c
        .add(0, &format!("cn=X,ou=Nope,{ou}"), &user("X", "x1"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, LdapErrorKind::NoSuchObject, "{e}");
    assert!(e.message.contains("ou=Nope"), "{e}");
    let mut bad = user("Y", "y1");
    bad.push(("favouriteColour".into(), vec![b"blue".to_vec()]));
    let e = c.add(0, &format!("cn=Y,{ou}"), &bad).await.unwrap_err();
    assert_eq!(e.kind, LdapErrorKind::UnknownAttribute, "{e}");
    let e = c
        .add(
            0,
            &format!("cn=Z,{ou}"),
            &attrs(&[("objectClass", &["inetOrgPerson"]), ("cn", &["Z"])]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, LdapErrorKind::ObjectClassViolation, "{e}");
    // Modify (atomic) and read back with ldapsearch.
    c.modify(
        0,
        &dn,
        &[
            LdapMod::Replace("mail".into(), vec![b"j@example.test".to_vec()]),
            LdapMod::Add("telephoneNumber".into(), vec![b"+1 555".to_vec()]),
        ],
    )
    .await
    .unwrap();
    let e = s.search(ou, "(mail=j@example.test)", &["telephoneNumber"]);
    assert_eq!(
        e[0].1,
        vec![("telephoneNumber".to_string(), "+1 555".to_string())]
    );
    let e = c
        .modify(
            0,
            &dn,
            &[
                LdapMod::Replace("mail".into(), vec![b"k@example.test".to_vec()]),
                LdapMod::Delete("description".into(), vec![b"absent".to_vec()]),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, LdapErrorKind::NoSuchAttribute, "{e}");
    assert_eq!(
        s.search(ou, "(mail=k@example.test)", &["cn"]).len(),
        0,
        "a failed modify changes nothing"
    );
    // Rename and move.
    c.rename(0, &dn, "cn=John Smith", Some(&format!("ou=Org2,{ou}")))
        .await
        .unwrap();
    assert_eq!(
        s.search(&format!("ou=Org2,{ou}"), "(sAMAccountName=jsmith)", &["cn"])[0].0,
        format!("cn=John Smith,ou=Org2,{ou}")
    );
    // Paged search: 25 entries in pages of 10.
    for n in 0..25 {
        c.add(
            0,
            &format!("cn=p{n},ou=Org2,{ou}"),
            &user(&format!("p{n}"), &format!("page{n}")),
        )
        .await
        .unwrap();
    }
    let all = c
        .search(
            0,
            &format!("ou=Org2,{ou}"),
            LdapScope::OneLevel,
            "(sAMAccountName=page*)",
            &["cn"],
            Some(10),
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 25);
    // Injection: a filter value escaped (RFC 4515) matches only itself.
    let evil = ldap3::ldap_escape("*)(sAMAccountName=*");
    let none = c
        .search(
            0,
            ou,
            LdapScope::Subtree,
            &format!("(cn={evil})"),
            &["cn"],
            None,
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    // Read of a missing object is None; delete of a non-leaf is refused; delete works.
    assert!(c
        .read(0, &format!("cn=none,{ou}"), &[])
        .await
        .unwrap()
        .is_none());
    let e = c.delete(0, &format!("ou=Org2,{ou}")).await.unwrap_err();
    assert_eq!(e.kind, LdapErrorKind::NotLeaf, "{e}");
    c.delete(0, &dn2).await.unwrap();
    assert!(s.search(ou, "(sAMAccountName=jsmith2)", &["cn"]).is_empty());
}

#[tokio::test]
async fn slapd_passwords_need_tls_and_bind_afterwards() {
    let Some(s) = Slapd::start() else { return };
    let plain = LdapClient::connect(slapd_settings(&s)).await.unwrap();
    let dn = format!("cn=pw,{}", slapd::TESTS_OU);
    plain.add(0, &dn, &user("pw", "pw")).await.unwrap();
    let e = plain.set_password(0, &dn, "S3cret-one").await.unwrap_err();
    assert_eq!(e.kind, LdapErrorKind::Refused);
    assert!(
        e.message.contains("plain LDAP") && !e.message.contains("S3cret"),
        "{e}"
    );
    // StartTLS (self-signed: no verification in the test).
    let mut st = slapd_settings(&s);
    st.tls = TlsMode::StartTls;
    st.tls_verify = false;
    let tls = LdapClient::connect(st).await.expect("starttls");
    tls.set_password(0, &dn, "S3cret-one").await.unwrap();
    assert!(s.can_bind(&dn, "S3cret-one"));
    // Stored hashed by the server, not in clear.
    let stored = s.search(&dn, "(objectClass=*)", &["userPassword"]);
    assert!(stored[0].1[0].1.starts_with("{SSHA}"), "{stored:?}");
    // Change with the old one; a wrong old one is refused and changes nothing.
    let e = tls
        .change_password(0, &dn, "wrong", "S3cret-two")
        .await
        .unwrap_err();
    assert!(
        !e.message.contains("S3cret") && !e.message.contains("wrong"),
        "{e}"
    );
    assert!(s.can_bind(&dn, "S3cret-one"));
    tls.change_password(0, &dn, "S3cret-one", "S3cret-two")
        .await
        .unwrap();
    assert!(s.can_bind(&dn, "S3cret-two") && !s.can_bind(&dn, "S3cret-one"));
    // LDAPS too.
    let mut ls = slapd_settings(&s);
    ls.servers = vec![s.ldaps_url()];
    ls.tls = TlsMode::Ldaps;
    ls.tls_verify = false;
    let ldaps = LdapClient::connect(ls).await.expect("ldaps");
    ldaps.set_password(0, &dn, "S3cret-three").await.unwrap();
    assert!(s.can_bind(&dn, "S3cret-three"));
    // With verification the self-signed certificate is refused, with a clear message.
    let mut verify = slapd_settings(&s);
    verify.servers = vec![s.ldaps_url()];
    verify.tls = TlsMode::Ldaps;
    verify.flavour = Some(Flavour::OpenLdap);
    let v = LdapClient::connect(verify).await.unwrap();
    let e = v.read(0, &dn, &[]).await.unwrap_err();
    assert!(e.message.contains(&s.ldaps_url()), "{e}");
    assert_eq!(
        e.kind,
        LdapErrorKind::Refused,
        "an untrusted certificate is not retried: {e}"
    );
    // Trusting the server's certificate as the CA (tls_ca_file), verification passes, over
    // LDAPS and StartTLS.
    for (url, mode) in [
        (s.ldaps_url(), TlsMode::Ldaps),
        (s.url(), TlsMode::StartTls),
    ] {
        let mut ca = slapd_settings(&s);
        ca.servers = vec![url];
        ca.tls = mode;
        ca.tls_ca_file = Some(s.ca_file());
        let c = LdapClient::connect(ca).await.expect("verified TLS");
        assert!(c.read(0, &dn, &["cn"]).await.unwrap().is_some());
    }
    let mut bad = slapd_settings(&s);
    bad.tls_ca_file = Some(s.password_file());
    let e = LdapClient::new(bad).unwrap_err();
    assert!(
        e.message.contains("tls_ca_file") && e.message.contains("no certificate"),
        "{e}"
    );
    // Enable / disable through userAccountControl.
    assert!(tls.set_enabled(0, &dn, false).await.unwrap());
    assert_eq!(
        s.search(&dn, "(objectClass=*)", &["userAccountControl"])[0].1[0].1,
        "514"
    );
    assert!(!tls.set_enabled(0, &dn, true).await.unwrap());
    assert_eq!(
        s.search(&dn, "(objectClass=*)", &["userAccountControl"])[0].1[0].1,
        "512"
    );
}

#[tokio::test]
async fn slapd_down_is_transient_and_the_pool_reconnects() {
    let Some(mut s) = Slapd::start() else { return };
    let mut settings = slapd_settings(&s);
    settings.timeout = Duration::from_secs(2);
    let c = LdapClient::connect(settings).await.unwrap();
    let ou = slapd::TESTS_OU;
    c.add(0, &format!("cn=a,{ou}"), &user("a", "a"))
        .await
        .unwrap();
    s.stop();
    let e = c
        .add(0, &format!("cn=b,{ou}"), &user("b", "b"))
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind, LdapErrorKind::Transient | LdapErrorKind::InDoubt),
        "{e:?}"
    );
    assert!(
        e.message.contains("cn=b") || e.message.contains(&s.url()),
        "{e}"
    );
    // Connection refused now: transient, not in doubt (nothing was sent).
    let e = c
        .add(0, &format!("cn=b,{ou}"), &user("b", "b"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, LdapErrorKind::Transient, "{e:?}");
    assert!(e.message.contains(&s.url()), "{e}");
    s.restart().unwrap();
    c.add(0, &format!("cn=b,{ou}"), &user("b", "b"))
        .await
        .expect("after restart");
    assert_eq!(s.search(ou, "(|(cn=a)(cn=b))", &["cn"]).len(), 2);
    // A wrong service password: refused, names the account, never the password.
    std::fs::write(s.password_file(), "not-the-password\n").unwrap();
    let e = LdapClient::connect(slapd_settings(&s)).await.unwrap_err();
    assert_eq!(e.kind, LdapErrorKind::Refused, "{e:?}");
    assert!(
        e.message.contains(slapd::ADMIN_DN) && !e.message.contains("not-the-password"),
        "{e}"
    );
}

#[tokio::test]
async fn servers_are_sticky_per_transaction_and_preferred_must_be_configured() {
    let Some(s) = Slapd::start() else { return };
    let mut settings = slapd_settings(&s);
    settings.servers = vec![s.url(), format!("ldap://localhost:{}", s.port)];
    settings.flavour = Some(Flavour::OpenLdap);
    let c = LdapClient::connect(settings).await.unwrap();
    let picks: std::collections::BTreeSet<usize> = (0..50)
        .map(|n| c.pick_server(&format!("0190-txn-{n}"), None).unwrap())
        .collect();
    assert_eq!(picks.len(), 2, "transactions spread over the servers");
    for n in 0..10 {
        let t = format!("txn-{n}");
        assert_eq!(
            c.pick_server(&t, None).unwrap(),
            c.pick_server(&t, None).unwrap()
        );
    }
    assert_eq!(c.pick_server("t", Some("localhost")).unwrap(), 1);
    assert_eq!(c.pick_server("t", Some(&s.url())).unwrap(), 0);
    let e = c.pick_server("t", Some("dc9.example.test")).unwrap_err();
    assert!(
        e.message.contains("dc9.example.test") && e.message.contains("not one of the configured"),
        "{e}"
    );
}

/// userAccountControl of a user, read with samba-tool.
fn uac(sm: &Samba, sam: &str) -> u32 {
    let shown = sm.samba_tool(&["user", "show", sam]);
    assert_eq!(shown.code, 0, "{shown:?}");
    shown
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("userAccountControl: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no userAccountControl: {shown:?}"))
}

#[tokio::test]
async fn samba_unicode_pwd_over_ldaps_then_the_user_binds() {
    let Some(sm) = Samba::shared() else { return };
    let ou = sm.new_ou("client");
    let mut settings = LdapSettings::new(
        sm.ldaps_url(),
        samba::ADMIN_DN,
        sm.password_file(),
        samba::BASE_DN,
    );
    settings.tls = TlsMode::Ldaps;
    settings.tls_verify = false;
    let c = LdapClient::connect(settings).await.expect("connect");
    assert_eq!(c.flavour().await.unwrap(), Flavour::Ad);
    let dn = format!("CN=Ann Lee,{ou}");
    c.add(
        0,
        &dn,
        &attrs(&[
            ("objectClass", &["user"]),
            ("sAMAccountName", &["annlee"]),
            ("userPrincipalName", &["ann@samdom.example.test"]),
        ]),
    )
    .await
    .unwrap();
    // AD: a duplicate sAMAccountName anywhere in the domain is refused.
    let other = sm.new_ou("client");
    let e = c
        .add(
            0,
            &format!("CN=Ann Lee,{other}"),
            &attrs(&[("objectClass", &["user"]), ("sAMAccountName", &["annlee"])]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.kind,
            LdapErrorKind::AlreadyExists | LdapErrorKind::Constraint
        ),
        "{e:?}"
    );
    c.set_password(0, &dn, "Ann-Passw0rd!x")
        .await
        .expect("unicodePwd");
    assert!(c.set_enabled(0, &dn, true).await.is_ok());
    assert!(sm.can_bind("ann@samdom.example.test", "Ann-Passw0rd!x"));
    assert_eq!(uac(sm, "annlee") & 2, 0, "enabled");
    // Change: delete old + add new; a wrong old password is refused.
    let e = c
        .change_password(0, &dn, "Wrong-Passw0rd!", "Ann-Passw0rd!y")
        .await
        .unwrap_err();
    assert!(!e.message.contains("Passw0rd"), "{e}");
    c.change_password(0, &dn, "Ann-Passw0rd!x", "Ann-Passw0rd!y")
        .await
        .unwrap();
    assert!(sm.can_bind("ann@samdom.example.test", "Ann-Passw0rd!y"));
    assert!(!sm.can_bind("ann@samdom.example.test", "Ann-Passw0rd!x"));
    // Too simple a password: refused by the domain policy (constraint).
    let e = c.set_password(0, &dn, "abc").await.unwrap_err();
    assert_eq!(e.kind, LdapErrorKind::Constraint, "{e:?}");
    // Disable: the flag is set and the bind fails.
    assert!(c.set_enabled(0, &dn, false).await.unwrap());
    assert!(!sm.can_bind("ann@samdom.example.test", "Ann-Passw0rd!y"));
    assert_eq!(uac(sm, "annlee") & 2, 2, "disabled");
    // Paged search against AD.
    for n in 0..12 {
        c.add(
            0,
            &format!("CN=g{n},{ou}"),
            &attrs(&[
                ("objectClass", &["group"]),
                (
                    "sAMAccountName",
                    &[&format!("grp{n}-{}", std::process::id())],
                ),
            ]),
        )
        .await
        .unwrap();
    }
    let groups = c
        .search(
            0,
            &ou,
            LdapScope::OneLevel,
            "(objectClass=group)",
            &["cn"],
            Some(5),
        )
        .await
        .unwrap();
    assert_eq!(groups.len(), 12);
}

#[tokio::test]
async fn samba_refuses_a_password_over_plain_ldap_unless_allowed_and_starttls_works() {
    let Some(sm) = Samba::shared() else { return };
    let ou = sm.new_ou("plain");
    let settings = LdapSettings::new(
        sm.url(),
        samba::ADMIN_DN,
        sm.password_file(),
        samba::BASE_DN,
    );
    let c = LdapClient::connect(settings.clone()).await.unwrap();
    let dn = format!("CN=Bo,{ou}");
    c.add(
        0,
        &dn,
        &attrs(&[
            ("objectClass", &["user"]),
            ("sAMAccountName", &["bo-plain"]),
        ]),
    )
    .await
    .unwrap();
    let e = c.set_password(0, &dn, "Bo-Passw0rd!x").await.unwrap_err();
    assert_eq!(e.kind, LdapErrorKind::Refused);
    let mut st = settings;
    st.tls = TlsMode::StartTls;
    st.tls_verify = false;
    let c = LdapClient::connect(st).await.expect("starttls to samba");
    c.set_password(0, &dn, "Bo-Passw0rd!x").await.unwrap();
    c.set_enabled(0, &dn, true).await.unwrap();
    assert!(sm.can_bind(&dn, "Bo-Passw0rd!x"));
}
