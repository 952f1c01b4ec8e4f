//! The directory test servers themselves, checked with the command-line tools only: a
//! private slapd takes an AD-like user (the project's schema), keeps sAMAccountName unique
//! and computes memberOf; the shared Samba AD DC gives each test its own OU and lets a
//! user made with samba-tool bind over LDAP.

use provisio_test_support::samba::{self, Samba};
use provisio_test_support::slapd::{self, Slapd};

#[test]
fn slapd_serves_the_ad_schema_with_unique_sam_and_memberof() {
    let Some(mut s) = Slapd::start() else { return };
    let ou = slapd::TESTS_OU;
    let ldif = format!(
        "dn: cn=John Smith,{ou}\nobjectClass: inetOrgPerson\nobjectClass: provisioAccount\n\
         cn: John Smith\nsn: Smith\nsAMAccountName: jsmith\nuserPrincipalName: jsmith@example.test\n\
         userAccountControl: 514\n\n\
         dn: cn=Staff,{ou}\nobjectClass: provisioGroup\ncn: Staff\nmember: cn=John Smith,{ou}\n"
    );
    let out = s.tool("ldapadd", &[], &ldif);
    assert_eq!(out.code, 0, "{out:?}");
    let dup = format!(
        "dn: cn=Other,{ou}\nobjectClass: inetOrgPerson\nobjectClass: provisioAccount\n\
         cn: Other\nsn: O\nsAMAccountName: JSMITH\n"
    );
    let out = s.tool("ldapadd", &[], &dup);
    assert_eq!(out.code, 19, "duplicate sAMAccountName: {out:?}");
    let e = s.search(
        ou,
        "(sAMAccountName=jsmith)",
        &["memberOf", "userAccountControl"],
    );
    assert_eq!(e.len(), 1);
    assert!(
        e[0].1
            .contains(&("memberOf".into(), format!("cn=Staff,{ou}"))),
        "{e:?}"
    );
    // Survives a restart on the same port.
    s.stop();
    s.restart().expect("restart");
    assert_eq!(s.search(ou, "(cn=Staff)", &["cn"]).len(), 1);
    // LDAPS answers (self-signed).
    let out = slapd::run_tool(
        "ldapsearch",
        &[
            "-x",
            "-H",
            &s.ldaps_url(),
            "-s",
            "base",
            "-b",
            "",
            "namingContexts",
        ],
        "",
    );
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn samba_gives_each_test_an_ou_and_binds_a_samba_tool_user() {
    let Some(s) = Samba::shared() else { return };
    let ou = s.new_ou("servers");
    let ou2 = s.new_ou("servers");
    assert_ne!(ou, ou2);
    let out = s.samba_tool(&[
        "user",
        "create",
        "srvbob",
        "B0b-Secret!x",
        &format!(
            "--userou={}",
            ou.strip_suffix(&format!(",{}", samba::BASE_DN)).unwrap()
        ),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let e = s.search(&ou, "(sAMAccountName=srvbob)", &["userAccountControl"]);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(s.can_bind("srvbob@samdom.example.test", "B0b-Secret!x"));
    assert!(!s.can_bind("srvbob@samdom.example.test", "wrong"));
    assert!(s.can_bind(samba::ADMIN_DN, &s.password));
}
