//! The HMC namespaces against a real slapd (the directory provider's ldap backend; DNS and
//! folders stay embedded): Hosted Active Directory/Initialize, a reseller, then
//! Provisioning/ProvisionTenant; `ldapsearch` (not the provider) finds the OU, the users
//! with their sAMAccountNames and groups, the tenant's domain as a UPN suffix of its OU,
//! and a user can bind with its password; the admin's mailbox is in the mail files. A tenant
//! whose last step fails leaves nothing on the server. And the same tenant on every real
//! server at once: slapd, BIND's `named` (zone added through rndc, records by RFC 2136,
//! checked with `dig`) and Dovecot (a message delivered over LMTP read back over IMAP), the
//! folder with its recorded quota; on those servers, a failure injected at each step of
//! ProvisionTenant in turn leaving nothing (ldapsearch, dig, doveadm, the folders; also with
//! the directory on a Samba AD DC), and
//! user names that need RFC 4514 escaping; two tenants with the same user names provisioned
//! at once through the daemon staying apart.

use crate::util::{repo, Sandbox};
use provisio_test_support::bind::Named;
use provisio_test_support::dovecot::Dovecot;
use provisio_test_support::slapd::{self, Slapd};
use std::os::unix::fs::PermissionsExt;

/// The `[providers.directory]` section for the ldap backend on `s` (LDAPS, the admin).
fn directory_section(s: &Slapd) -> String {
    format!(
        r#"[providers.directory]
backend = "ldap"
base_dn = "{base}"

[providers.directory.ldap]
servers = ["{url}"]
bind_dn = "{admin}"
password_file = "{pw}"
tls = "ldaps"
tls_ca_file = "{ca}"
timeout_secs = 5
"#,
        base = slapd::SUFFIX,
        url = s.ldaps_url(),
        admin = slapd::ADMIN_DN,
        pw = s.password_file().display(),
        ca = s.ca_file().display(),
    )
}

/// The `[providers.directory]` section for the ldap backend on the shared Samba AD DC, its
/// base DN `base` (an OU of the test's own: the DC serves every test of the process).
fn samba_section(sm: &provisio_test_support::samba::Samba, base: &str) -> String {
    format!(
        "[providers.directory]\nbackend = \"ldap\"\nbase_dn = \"{base}\"\n\n[providers.directory.ldap]\nservers = [\"{}\"]\nbind_dn = \"{}\"\npassword_file = \"{}\"\ntls = \"ldaps\"\ntls_verify = false\ntimeout_secs = 10\n",
        sm.ldaps_url(),
        provisio_test_support::samba::ADMIN_DN,
        sm.password_file().display()
    )
}

fn config(sb: &Sandbox, s: &Slapd) -> std::path::PathBuf {
    sb.write(
        "provisio.toml",
        &format!(
            "data_dir = \"{}\"\n\n{}",
            sb.data().display(),
            directory_section(s)
        ),
    )
}

const SETUP: &str = r#"procedure:
  parallel: false
  steps:
    hosting:
      call: Hosted Active Directory/Initialize
      output: { hosting: "{{ executeData.path }}" }
    directoryService:
      call: Managed Plans/AddService
      with: { serviceName: HostedActiveDirectory }
    emailService:
      call: Managed Plans/AddService
      with: { serviceName: HostedEmail }
    emailNeedsDirectory:
      call: Managed Plans/AddServiceDependency
      with: { serviceName: HostedEmail, dependsOn: HostedActiveDirectory }
    plan:
      call: Managed Plans/CreatePlan
      with:
        planName: Gold
        services: { service: [HostedActiveDirectory, HostedEmail] }
        limits: { maxUsers: 100, maxMailboxes: 100, mailboxQuotaKB: 1048576 }
    stores:
      call: Exchange 2007 Resource Manager/AddExchangeResources
      with: { mailStores: { mailStore: { serverName: ex01, mailStoreName: DB01, megabytes: 10000, shared: true } } }
    reseller:
      call: Hosted Active Directory/CreateResellerOrganization
      with: { name: ConsolidatedMessenger, container: "{{ data.hosting }}" }
data: {}
"#;

fn tenant(name: &str, quota: i64) -> String {
    format!(
        r#"call: Provisioning/ProvisionTenant
data:
  name: {name}
  container: "LDAP://OU=ConsolidatedMessenger,OU=Hosting,{base}"
  domain: {lower}.test
  planName: Gold
  quotaMegabytes: {quota}
  users:
    user:
      - {{ userPrincipalName: ann@{lower}.test, displayName: Ann Lee, givenName: Ann, sn: Lee, isAdmin: 1, newPassword: Ldap-Tenant-Pw1, mailbox: {{}} }}
      - {{ userPrincipalName: bob@{lower}.test, displayName: Bob Ray, givenName: Bob, sn: Ray, newPassword: Ldap-Tenant-Pw2 }}
"#,
        base = slapd::SUFFIX,
        lower = name.to_lowercase()
    )
}

#[test]
fn provision_tenant_on_slapd_is_found_by_ldapsearch() {
    let Some(s) = Slapd::start() else { return };
    let sb = Sandbox::new();
    let cfg = config(&sb, &s);
    let run = |file: &str, text: &str| {
        let p = sb.write(file, text);
        sb.run_with(
            &[
                "--config",
                cfg.to_str().unwrap(),
                "run",
                p.to_str().unwrap(),
            ],
            &repo().join("namespaces"),
        )
    };
    let r = run("setup.yaml", SETUP);
    assert_eq!(r.code, 0, "{r:?}");
    let r = run("alpine.yaml", &tenant("AlpineSkiHouse", 2048));
    assert_eq!(r.code, 0, "{r:?}");

    let org = format!(
        "OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,{}",
        slapd::SUFFIX
    );
    let ous = s.search(&org, "(objectClass=organizationalUnit)", &["ou"]);
    assert_eq!(ous.len(), 1, "{ous:?}");
    let groups = s.search(&org, "(|(cn=Admins)(cn=AllUsers))", &["cn", "member"]);
    assert_eq!(groups.len(), 2, "{groups:?}");
    let members = |cn: &str| -> usize {
        groups
            .iter()
            .find(|(dn, _)| {
                dn.to_lowercase()
                    .starts_with(&format!("cn={}", cn.to_lowercase()))
            })
            .map(|(_, attrs)| attrs.iter().filter(|(n, _)| n == "member").count())
            .unwrap_or(0)
    };
    assert_eq!(members("AllUsers"), 2, "{groups:?}");
    assert_eq!(members("Admins"), 1, "{groups:?}");
    let users = s.search(
        &org,
        "(userPrincipalName=*)",
        &[
            "sAMAccountName",
            "userPrincipalName",
            "memberOf",
            "userAccountControl",
        ],
    );
    assert_eq!(users.len(), 2, "{users:?}");
    let ann = users
        .iter()
        .find(|(dn, _)| dn.starts_with("cn=ann@") || dn.starts_with("CN=ann@"))
        .expect("ann");
    let get = |a: &str| -> Vec<String> {
        ann.1
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(a))
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(get("sAMAccountName"), ["ann_alpineskihouse.t"]);
    assert_eq!(get("memberOf").len(), 2, "{ann:?}");
    assert_eq!(get("userAccountControl"), ["512"]);
    assert!(s.can_bind(&ann.0, "Ldap-Tenant-Pw1"));
    assert!(sb.data().join("zones/alpineskihouse.test.zone").is_file());
    // The tenant's domain is a UPN suffix of its OU (OpenLDAP: the provisioOrganization
    // class of packaging/ldap/provisio-ad.schema), and Ann has a mailbox.
    let suffixes = s.search(&org, "(uPNSuffixes=alpineskihouse.test)", &["ou"]);
    assert_eq!(suffixes.len(), 1, "{suffixes:?}");
    let passwd = std::fs::read_to_string(sb.data().join("mail/passwd")).unwrap_or_default();
    assert!(passwd.starts_with("ann@alpineskihouse.test:"), "{passwd}");

    // A tenant whose quota is refused (a late step): nothing of it on the server.
    let r = run("bad.yaml", &tenant("Wingtip", -5));
    assert_eq!(r.code, 1, "{r:?}");
    let wingtip = format!(
        "OU=Wingtip,OU=ConsolidatedMessenger,OU=Hosting,{}",
        slapd::SUFFIX
    );
    assert!(s.search(&wingtip, "(objectClass=*)", &["cn"]).is_empty());
    assert!(s
        .search(slapd::SUFFIX, "(userPrincipalName=*@wingtip.test)", &["cn"])
        .is_empty());
}

#[test]
fn provision_tenant_on_slapd_named_and_dovecot_together() {
    let Some(s) = Slapd::start() else { return };
    let Some(n) = Named::start() else { return };
    let sb = Sandbox::new();
    let root = sb.path("mail");
    let cfg = all_servers_config(&sb, &directory_section(&s), &n);
    let setup = sb.write("setup.yaml", SETUP);
    let tenant_file = sb.write("alpine.yaml", &tenant("AlpineSkiHouse", 2048));
    let r = sb.run_with(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "run",
            setup.to_str().unwrap(),
            tenant_file.to_str().unwrap(),
        ],
        &repo().join("namespaces"),
    );
    assert_eq!(r.code, 0, "{r:?}\nnamed log:\n{}", n.log());

    // The directory, seen by ldapsearch.
    let org = format!(
        "OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,{}",
        slapd::SUFFIX
    );
    assert_eq!(
        s.search(&org, "(userPrincipalName=*)", &["cn"]).len(),
        2,
        "users"
    );
    assert_eq!(
        s.search(&org, "(|(cn=Admins)(cn=AllUsers))", &["cn"]).len(),
        2,
        "groups"
    );
    // The zone, served by named and seen by dig.
    let mx = n.dig("alpineskihouse.test", "MX");
    assert_eq!(mx.len(), 1, "{mx:?}\n{}", n.log());
    let txt = n.dig("alpineskihouse.test", "TXT").join(" ");
    assert!(txt.contains("v=spf1"), "{txt}");
    // The folders, with the tenant's quota as the filesystem provider recorded it (read from
    // its state file, not through Provisio) and the mode ProvisionTenant asks for.
    let folder = sb.data().join("files/tenants/AlpineSkiHouse");
    assert!(folder.is_dir(), "{r:?}");
    assert_eq!(recorded_quota(&sb, "tenants/AlpineSkiHouse"), Some(2048));
    let mode = std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o750, "{mode:o}");
    assert!(folder.join("users/ann@alpineskihouse.test").is_dir());
    // The admin's mailbox, on a real Dovecot.
    let Some(d) = Dovecot::start(&root) else {
        return;
    };
    let client = sb.write("client.py", crate::mail::CLIENT);
    let delivered = crate::mail::python(
        &client,
        &[
            "deliver",
            &d.lmtp_port.to_string(),
            "bob@alpineskihouse.test",
            "ann@alpineskihouse.test",
            "hello from bob",
        ],
    );
    assert_eq!(delivered, "ok", "{}", d.log());
    let subjects = crate::mail::python(
        &client,
        &[
            "fetch",
            &d.imap_port.to_string(),
            "ann@alpineskihouse.test*master",
            &d.master_password,
        ],
    );
    assert_eq!(subjects, "Subject: hello from bob", "{}", d.log());
}

/// ProvisionTenant on slapd with users whose userPrincipalNames hold the characters RFC 4514
/// escapes (`crate::hmc::ODD_USERS`): ldapsearch finds each user under the organization
/// with its `cn` exactly the userPrincipalName (the path was escaped, not split at a `,` or
/// `+`), each mailbox is in the mail files; a user named with a backslash gets a mailbox
/// through Hosted Email 2007 on the path CreateUser gave back, and DeleteUser removes both
/// from the server and the mail files.
#[test]
fn user_names_with_dn_special_characters_on_slapd() {
    let Some(s) = Slapd::start() else { return };
    let sb = Sandbox::new();
    let cfg = config(&sb, &s);
    special_user_names(&sb, &cfg, slapd::SUFFIX, &|b, f, a| s.search(b, f, a));
}

/// The same on a Samba AD DC (under an OU of its own).
#[test]
fn user_names_with_dn_special_characters_on_samba_ad() {
    use provisio_test_support::samba::Samba;
    let Some(sm) = Samba::shared() else { return };
    let base = sm.new_ou("hmc-names");
    let sb = Sandbox::new();
    let cfg = sb.write(
        "provisio.toml",
        &format!(
            "data_dir = \"{}\"\n\n{}",
            sb.data().display(),
            samba_section(sm, &base)
        ),
    );
    special_user_names(&sb, &cfg, &base, &|b, f, a| sm.search(b, f, a));
}

/// The body of the escaping tests on a directory whose base DN is `base`.
fn special_user_names(sb: &Sandbox, cfg: &std::path::Path, base: &str, search: &Search<'_>) {
    let run = |file: &str, text: &str| {
        let p = sb.write(file, text);
        sb.run_with(
            &[
                "--config",
                cfg.to_str().unwrap(),
                "run",
                p.to_str().unwrap(),
                "--output",
                "json",
            ],
            &repo().join("namespaces"),
        )
    };
    let r = run("setup.yaml", SETUP);
    assert_eq!(r.code, 0, "{r:?}");
    let container = format!("LDAP://OU=ConsolidatedMessenger,OU=Hosting,{}", base);
    let r = run("odd.json", &crate::hmc::odd_tenant(&container));
    assert_eq!(r.code, 0, "{r:?}");

    let org = format!("OU=Odd,OU=ConsolidatedMessenger,OU=Hosting,{}", base);
    let users = search(&org, "(userPrincipalName=*)", &["cn", "userPrincipalName"]);
    let mut cns: Vec<String> = users
        .iter()
        .map(|(dn, attrs)| {
            // one entry directly under the organization, named by its cn
            assert!(
                dn.to_lowercase()
                    .ends_with(&format!(",{}", org.to_lowercase())),
                "{dn}"
            );
            let get = |a: &str| -> Vec<&String> {
                attrs
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(a))
                    .map(|(_, v)| v)
                    .collect()
            };
            assert_eq!(get("cn"), get("userPrincipalName"), "{dn}: {attrs:?}");
            get("cn")[0].clone()
        })
        .collect();
    cns.sort();
    let mut want: Vec<String> = crate::hmc::ODD_USERS
        .iter()
        .map(|(u, _, _)| u.to_string())
        .collect();
    want.sort();
    assert_eq!(cns, want, "{users:?}");
    let passwd = std::fs::read_to_string(sb.data().join("mail/passwd")).unwrap_or_default();
    for (_, _, mail) in crate::hmc::ODD_USERS {
        assert!(passwd.contains(&format!("{mail}:")), "{mail}: {passwd}");
    }

    // The backslash: created, mail-enabled on the path CreateUser gave back ...
    let r = run(
        "back.xml",
        &crate::hmc::backslash_user(&format!("LDAP://{org}"), false),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let back = search(&org, "(cn=back\\5cslash@odd.test)", &["cn"]);
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(
        back[0].1,
        [("cn".to_string(), r"back\slash@odd.test".to_string())]
    );
    let passwd = std::fs::read_to_string(sb.data().join("mail/passwd")).unwrap_or_default();
    assert!(passwd.contains("backslash@odd.test:"), "{passwd}");
    // ... and DeleteUser takes the user and its mailbox.
    let del = format!(
        r#"<request namespace="Hosted Active Directory" procedure="DeleteUser"><data><path>LDAP://CN=back\\slash@odd.test,{org}</path></data></request>"#
    );
    let r = run("del.xml", &del);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(search(&org, "(cn=back\\5cslash@odd.test)", &["cn"]).is_empty());
    let passwd = std::fs::read_to_string(sb.data().join("mail/passwd")).unwrap_or_default();
    assert!(!passwd.contains("backslash@odd.test:"), "{passwd}");
}

/// The configuration of a sandbox whose providers are all real servers: the directory on
/// `s`, DNS on `n` (zones through rndc, records by RFC 2136), mail files under
/// `<sandbox>/mail` for Dovecot; folders on disk (the default).
fn all_servers_config(sb: &Sandbox, directory: &str, n: &Named) -> std::path::PathBuf {
    // Dovecot's unprivileged processes read the passwd-file and mail under the sandbox.
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    sb.write(
        "provisio.toml",
        &format!(
            "data_dir = \"{data}\"\n\n{directory}\n[retry.calls]\nmax_attempts = 1\n\n[providers.dns]\nbackend = \"rfc2136\"\nserver = \"127.0.0.1:{port}\"\n\
             key_file = \"{key}\"\ntimeout_secs = 3\n\n[providers.dns.rndc]\nzone_dir = \"{zones}\"\n\
             server = \"127.0.0.1\"\nport = {rndc_port}\nkey_file = \"{rndc_key}\"\n\n\
             [providers.exchange]\nmail_root = \"{mail}\"\nmail_uid = 65534\nmail_gid = 65534\n",
            port = n.port,
            key = n.key_file().display(),
            zones = n.zone_dir().display(),
            rndc_port = n.rndc_port,
            rndc_key = n.rndc_key_file().display(),
            mail = sb.path("mail").display(),
            data = sb.data().display(),
        ),
    )
}

/// The tenant's folder quota as the filesystem provider recorded it, read from its state
/// file (`<files>/.provisio-state/quotas.json`) without Provisio.
fn recorded_quota(sb: &Sandbox, folder: &str) -> Option<u64> {
    let text = std::fs::read_to_string(sb.data().join("files/.provisio-state/quotas.json")).ok()?;
    let map: std::collections::BTreeMap<String, u64> =
        serde_json::from_str(&text).expect("quotas.json is a map of path to megabytes");
    map.get(folder).copied()
}

/// More set-up for the failures: a plan of one user, a plan without mail, and a domain
/// another customer holds.
const FAILURE_SETUP: &str = r#"procedure:
  parallel: false
  steps:
    one:
      call: Managed Plans/CreatePlan
      with: { planName: One, services: { service: [HostedActiveDirectory, HostedEmail] }, limits: { maxUsers: 1, maxMailboxes: 10, mailboxQuotaKB: 1048576 } }
    noMail:
      call: Managed Plans/CreatePlan
      with: { planName: NoMail, services: { service: [HostedActiveDirectory] }, limits: { maxUsers: 10 } }
    other:
      call: Managed Plans/CreateCustomer
      with: { customerName: Elsewhere }
    taken:
      call: Managed Plans/AddAsset
      with: { customerName: Elsewhere, assetType: PrimaryDomain, value: taken.test }
data: {}
"#;

/// ProvisionTenant of Tailspin on the real servers (two users with mailboxes) under the
/// reseller of the directory whose base DN is `base`, changed by `edit`.
fn tailspin(base: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v = serde_json::json!({
        "call": "Provisioning/ProvisionTenant",
        "data": {
            "name": "Tailspin",
            "container": format!("LDAP://OU=ConsolidatedMessenger,OU=Hosting,{base}"),
            "domain": "tailspin.test",
            "planName": "Gold",
            "quotaMegabytes": 512,
            "users": {"user": [
                {"userPrincipalName": "ann@tailspin.test", "displayName": "Ann Lee", "isAdmin": "1", "newPassword": "Tailspin-Pw-1", "mailbox": {}},
                {"userPrincipalName": "bob@tailspin.test", "displayName": "Bob Ray", "newPassword": "Tailspin-Pw-2", "mailbox": {}}
            ]}
        }
    });
    edit(&mut v["data"]);
    serde_json::to_string_pretty(&v).unwrap()
}

/// A failure injected at each step of ProvisionTenant in turn, on slapd, named, Dovecot's
/// mail files and the folders at once (one set of servers for every case), leaves nothing
/// behind, as independent clients see it: ldapsearch finds no OU, user or group, dig finds
/// no zone (named is not authoritative for it and rndc kept no zone file), doveadm finds no
/// user and the passwd-file is unchanged, there is no folder and no recorded quota; the
/// plans and resource-manager records are as before too. Then the same tenant without a
/// failure commits and every client finds it, the folder with its quota.
#[test]
fn a_failure_at_each_step_of_provision_tenant_leaves_nothing_on_any_server() {
    let Some(s) = Slapd::start() else { return };
    let Some(n) = Named::start() else { return };
    let sb = Sandbox::new();
    let cfg = all_servers_config(&sb, &directory_section(&s), &n);
    failures_leave_nothing(&sb, &cfg, &n, slapd::SUFFIX, &|base, filter, attrs| {
        s.search(base, filter, attrs)
    });
}

/// The same on a real Active Directory: a Samba AD DC (the hosting container under an OU of
/// its own, as the DC is shared by the test process), with named, Dovecot and the folders.
#[test]
fn a_failure_at_each_step_of_provision_tenant_leaves_nothing_on_samba_ad_and_the_other_servers() {
    use provisio_test_support::samba::Samba;
    let Some(sm) = Samba::shared() else { return };
    let Some(n) = Named::start() else { return };
    let base = sm.new_ou("hmc-failures");
    let sb = Sandbox::new();
    let cfg = all_servers_config(&sb, &samba_section(sm, &base), &n);
    failures_leave_nothing(&sb, &cfg, &n, &base, &|b, filter, attrs| {
        sm.search(b, filter, attrs)
    });
}

/// An ldapsearch as the directory's administrator: entries under a base matching a filter,
/// with these attributes.
type Search<'a> = dyn Fn(&str, &str, &[&str]) -> Vec<(String, Vec<(String, String)>)> + 'a;

/// The body of the failure tests: set-up, then each failure checked on every server, then
/// the tenant committed. `base` is the directory's base DN, `search` its ldapsearch.
fn failures_leave_nothing(
    sb: &Sandbox,
    cfg: &std::path::Path,
    n: &Named,
    base: &str,
    search: &Search<'_>,
) {
    let run = |file: &str, text: &str| {
        let p = sb.write(file, text);
        sb.run_with(
            &[
                "--config",
                cfg.to_str().unwrap(),
                "run",
                p.to_str().unwrap(),
                "--quiet",
            ],
            &repo().join("namespaces"),
        )
    };
    let r = run("setup.yaml", SETUP);
    assert_eq!(r.code, 0, "{r:?}");
    let r = run("failure-setup.yaml", FAILURE_SETUP);
    assert_eq!(r.code, 0, "{r:?}");
    let Some(d) = Dovecot::start(&sb.path("mail")) else {
        return;
    };

    let reseller = format!("OU=ConsolidatedMessenger,OU=Hosting,{base}");
    // Provisio's own records (plans customers and usage, stores and their organizations).
    let records = || {
        let r = run(
            "records.yaml",
            &format!(
                r#"procedure:
  type: read
  parallel: false
  steps:
    stores:
      call: Exchange 2007 Resource Manager/QueryAllStores
      after: [ {{ source: executeData, sourcePath: mailStores, destination: data }} ]
    orgs:
      call: Exchange 2007 Resource Manager/QueryOrganizationsByMailstore
      with: {{ serverName: ex01, mailStoreName: DB01 }}
      after: [ {{ source: executeData, sourcePath: organizations, destination: data }} ]
    reseller:
      call: Managed Plans/GetCustomer
      with: {{ customerName: "{reseller}" }}
      after: [ {{ source: executeData, sourcePath: customer, destination: data }} ]
data: {{}}
"#
            ),
        );
        assert_eq!(r.code, 0, "{r:?}");
        r.stdout
            .split_once("data:")
            .map(|(_, d)| d.to_string())
            .unwrap_or_default()
    };
    // Zone files and rndc's bookkeeping (`.created/` intent markers, `.deleted/` copies):
    // every file under the zone folder, empty folders left out.
    let zone_files = || -> Vec<String> {
        fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap_or(&p).display().to_string());
                }
            }
        }
        let mut v = Vec::new();
        walk(&n.zone_dir(), &n.zone_dir(), &mut v);
        v.sort();
        v
    };
    let passwd = || std::fs::read_to_string(sb.path("mail/passwd")).unwrap_or_default();
    let directory = || {
        search(
            &reseller,
            "(objectClass=*)",
            &["objectClass", "member", "uPNSuffixes"],
        )
    };
    let before_dir = directory();
    assert!(!before_dir.is_empty(), "the reseller is there");
    let before_records = records();
    let before_zones = zone_files();
    let before_passwd = passwd();

    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let bad_container = format!("LDAP://OU=,{base}");
    let cases: Vec<(&str, Edit)> = vec![
        (
            "org/orgPath",
            Box::new(move |d| d["container"] = bad_container.into()),
        ),
        ("org/plans", Box::new(|d| d["planName"] = "Platinum".into())),
        ("asset", Box::new(|d| d["domain"] = "taken.test".into())),
        ("users[2]/plans", Box::new(|d| d["planName"] = "One".into())),
        (
            "users[2]/create",
            Box::new(|d| {
                d["users"]["user"][1]["properties"] = serde_json::json!({"favouriteColour": "teal"})
            }),
        ),
        (
            "users[1]/password",
            Box::new(|d| d["users"]["user"][0]["newPassword"] = "".into()),
        ),
        (
            "mail/planHasMail",
            Box::new(|d| d["planName"] = "NoMail".into()),
        ),
        (
            "mailboxes[2]/mailbox/ceiling",
            Box::new(|d| {
                d["users"]["user"][1]["mailbox"] = serde_json::json!({"quotaKB": 4194304})
            }),
        ),
        (
            "mailboxes[2]/mailbox/mailbox",
            Box::new(|d| {
                d["users"]["user"][1]["mailbox"] = serde_json::json!({"database": "ex09\\DB09"})
            }),
        ),
        (
            "zone/mailHost",
            Box::new(|d| d["mailAddress"] = "not-an-address".into()),
        ),
        (
            "folders/quota",
            Box::new(|d| d["quotaMegabytes"] = (-5).into()),
        ),
        (
            "homes[2]",
            Box::new(|d| {
                d["users"]["user"][1]["userPrincipalName"] = "../../../bob@tailspin.test".into()
            }),
        ),
    ];
    for (step, edit) in cases {
        let r = run("tailspin.json", &tailspin(base, edit));
        assert_eq!(r.code, 1, "{step}: {r:?}");
        assert!(
            r.stdout.contains("\"status\": \"rolled_back\""),
            "{step}: {r:?}"
        );
        assert!(
            r.stdout.contains(&format!("\"step\": \"{step}\"")),
            "{step}: {r:?}"
        );
        assert!(!r.stdout.contains("undoFailures"), "{step}: {r:?}");
        // ldapsearch: the reseller's subtree as before, no Tailspin user anywhere.
        assert_eq!(directory(), before_dir, "{step} left directory entries");
        assert!(
            search(
                base,
                "(|(userPrincipalName=*@tailspin.test)(ou=Tailspin))",
                &["cn"]
            )
            .is_empty(),
            "{step}"
        );
        // dig: named is authoritative for no Tailspin zone; rndc kept no zone file.
        for zone in ["tailspin.test", "taken.test"] {
            let (status, aa) = n.dig_status(zone, "SOA");
            assert!(
                !aa && status != "NOERROR",
                "{step}: named still serves {zone}: {status}"
            );
        }
        assert_eq!(zone_files(), before_zones, "{step}");
        // doveadm: no such user; the passwd-file Dovecot reads is unchanged.
        for who in ["ann@tailspin.test", "bob@tailspin.test"] {
            let u = d.user(who);
            assert!(!u.contains("home"), "{step}: Dovecot knows {who}: {u}");
        }
        assert_eq!(passwd(), before_passwd, "{step}");
        assert!(!sb.path("mail/tailspin.test").exists(), "{step}");
        // No folder, no quota.
        assert!(!sb.data().join("files/tenants/Tailspin").exists(), "{step}");
        assert_eq!(recorded_quota(sb, "tenants/Tailspin"), None, "{step}");
        assert_eq!(
            records(),
            before_records,
            "{step} left plans or allocations"
        );
    }

    // Without a failure: every client finds the tenant (so the checks above can see it).
    let r = run("tailspin.json", &tailspin(base, |_| {}));
    assert_eq!(r.code, 0, "{r:?}");
    let org = format!("OU=Tailspin,{reseller}");
    assert_eq!(search(&org, "(userPrincipalName=*)", &["cn"]).len(), 2);
    let (status, aa) = n.dig_status("tailspin.test", "SOA");
    assert!(aa && status == "NOERROR", "{status}");
    assert!(
        d.wait_for_user_field("ann@tailspin.test", "home"),
        "{}",
        d.user("ann@tailspin.test")
    );
    assert!(sb
        .data()
        .join("files/tenants/Tailspin/users/bob@tailspin.test")
        .is_dir());
    assert_eq!(recorded_quota(sb, "tenants/Tailspin"), Some(512));
    assert_ne!(records(), before_records);
}

/// Two tenants with the same user names, common names and display names, each under a
/// reseller of its own, submitted to the daemon at the same moment with the directory on
/// slapd: both commit, and ldapsearch finds each tenant's users in its own OU, members of
/// its own groups only, with distinct sAMAccountNames (the second `ann` gets the next free
/// digits whichever transaction takes it first), and each user's mailbox on its own
/// tenant's domain.
#[test]
fn two_tenants_provisioned_concurrently_stay_apart_on_slapd() {
    let Some(s) = Slapd::start() else { return };
    concurrent_tenants_stay_apart(
        &directory_section(&s),
        slapd::SUFFIX,
        &|b, f, a| s.search(b, f, a),
        ["hosted.test", "hosted.test"],
        [
            "ann_hosted.test",
            "ann_hosted.test1",
            "bob_hosted.test",
            "bob_hosted.test1",
        ],
    );
}

/// The same on a Samba AD DC (under an OU of its own). AD keeps userPrincipalNames unique
/// in the forest, so the two tenants' users cannot share them there: they share display
/// names, given names and surnames, and UPNs whose sAMAccountNames collide once cut to 20
/// characters (`ann_northwind-hosted`, then `ann_northwind-hoste1`). A third tenant
/// reusing a UPN is refused by the DC (0x8007202f) and leaves nothing on it.
#[test]
fn two_tenants_provisioned_concurrently_stay_apart_on_samba_ad() {
    use provisio_test_support::samba::Samba;
    let Some(sm) = Samba::shared() else { return };
    let base = sm.new_ou("hmc-concurrent");
    let (_site, daemon) = concurrent_tenants_stay_apart(
        &samba_section(sm, &base),
        &base,
        &|b, f, a| sm.search(b, f, a),
        ["northwind-hosted.test", "northwind-hosted.tv"],
        [
            "ann_northwind-hoste1",
            "ann_northwind-hosted",
            "bob_northwind-hoste1",
            "bob_northwind-hosted",
        ],
    );
    let gamma = format!(
        r#"call: Provisioning/ProvisionTenant
data:
  name: gamma
  container: "LDAP://OU=Northwind,OU=Hosting,{base}"
  domain: gamma.test
  planName: Gold
  users:
    user:
      - {{ userPrincipalName: carl@gamma.test, displayName: Carl }}
      - {{ userPrincipalName: ann@northwind-hosted.test, displayName: Ann Lee }}
"#
    );
    let a = daemon.submit(crate::daemon::OPS, &gamma, "?wait=120s", &[]);
    assert_eq!(a.body["outcome"], "rolled_back", "{a:?}");
    let error = a.body["response"]["error"].to_string();
    assert!(
        error.contains("0x8007202f") && error.contains("already in use"),
        "{error}"
    );
    let ou = format!("OU=gamma,OU=Northwind,OU=Hosting,{base}");
    assert!(sm.search(&ou, "(objectClass=*)", &["cn"]).is_empty());
    assert!(sm
        .search(&base, "(userPrincipalName=carl@gamma.test)", &["cn"])
        .is_empty());
}

/// The body of the concurrency tests: the daemon over the directory `directory` (a
/// `[providers.directory]` section) whose base DN is `base`, checked with `search`.
///
/// `upns` are the UPN suffixes of the two tenants' users (the same on slapd; on AD, whose
/// userPrincipalNames are unique in the forest, two that give the same sAMAccountName once
/// cut to 20 characters) and `sams` the sAMAccountNames expected, sorted. Returns the site
/// and the running daemon.
fn concurrent_tenants_stay_apart(
    directory: &str,
    base: &str,
    search: &Search<'_>,
    upns: [&str; 2],
    sams_wanted: [&str; 4],
) -> (crate::daemon::Site, crate::daemon::Daemon) {
    use crate::daemon::{sha, Site, OPS};
    let site = Site::bare();
    std::fs::write(
        site.path("provisio.toml"),
        format!(
            "data_dir = \"data\"\nnamespaces = \"{}\"\n\n[serve]\nworkers = 4\n\n[[serve.tokens]]\nsubject = \"ops\"\nsha256 = \"{}\"\ntrusted = true\noperator = true\n\n{}",
            repo().join("namespaces").display(),
            sha(OPS),
            directory
        ),
    )
    .expect("config");
    let daemon = site.start();
    let committed = |yaml: &str| {
        let a = daemon.submit(OPS, yaml, "?wait=120s", &[]);
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body["outcome"], "committed", "{a:?}");
    };
    committed(SETUP);
    let hosting = format!("LDAP://OU=Hosting,{}", base);
    committed(&format!(
        r#"procedure:
  parallel: false
  steps:
    one: {{ call: Hosted Active Directory/CreateResellerOrganization, with: {{ name: Northwind, container: "{hosting}" }} }}
    two: {{ call: Hosted Active Directory/CreateResellerOrganization, with: {{ name: Southwind, container: "{hosting}" }} }}
data: {{}}
"#
    ));
    let tenant = |name: &str, reseller: &str, upn: &str| {
        format!(
            r#"call: Provisioning/ProvisionTenant
data:
  name: {name}
  container: "LDAP://OU={reseller},OU=Hosting,{base}"
  domain: {name}.test
  planName: Gold
  users:
    user:
      - {{ userPrincipalName: ann@{upn}, displayName: Ann Lee, givenName: Ann, sn: Lee, isAdmin: 1, newPassword: Same-Pw-1, mailbox: {{ alias: ann-{name}, emailAddresses: {{ value: [ann@{name}.test] }} }} }}
      - {{ userPrincipalName: bob@{upn}, displayName: Bob Ray, givenName: Bob, sn: Ray, newPassword: Same-Pw-2 }}
"#,
            base = base
        )
    };
    let answers: Vec<_> = std::thread::scope(|sc| {
        let d = &daemon;
        let one = tenant("alpha", "Northwind", upns[0]);
        let two = tenant("beta", "Southwind", upns[1]);
        let h1 = sc.spawn(move || d.submit(OPS, &one, "?wait=120s", &[]));
        let h2 = sc.spawn(move || d.submit(OPS, &two, "?wait=120s", &[]));
        vec![h1.join().expect("one"), h2.join().expect("two")]
    });
    for a in &answers {
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body["outcome"], "committed", "{a:?}");
    }

    let mut sams = Vec::new();
    for (org, reseller) in [("alpha", "Northwind"), ("beta", "Southwind")] {
        let ou = format!("OU={org},OU={reseller},OU=Hosting,{}", base).to_lowercase();
        let users = search(
            &ou,
            "(userPrincipalName=*)",
            &["cn", "displayName", "sAMAccountName", "memberOf"],
        );
        assert_eq!(users.len(), 2, "{org}: {users:?}");
        for (dn, attrs) in &users {
            let get = |a: &str| -> Vec<String> {
                attrs
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(a))
                    .map(|(_, v)| v.to_lowercase())
                    .collect()
            };
            let who = get("cn")[0].split('@').next().unwrap().to_string();
            assert!(dn.to_lowercase().ends_with(&ou), "{dn}");
            assert_eq!(
                get("displayName"),
                [if who == "ann" { "ann lee" } else { "bob ray" }]
            );
            // Only its own organization's groups.
            let groups = get("memberOf");
            assert!(groups.iter().all(|g| g.ends_with(&ou)), "{dn}: {groups:?}");
            assert_eq!(
                groups.len(),
                if who == "ann" { 2 } else { 1 },
                "{dn}: {groups:?}"
            );
            sams.extend(get("sAMAccountName"));
        }
        // Its groups hold its own users only.
        for (dn, attrs) in search(&ou, "(|(cn=Admins)(cn=AllUsers))", &["member"]) {
            for (_, m) in attrs
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("member"))
            {
                assert!(m.to_lowercase().ends_with(&ou), "{dn}: {m}");
            }
        }
    }
    sams.sort();
    assert_eq!(sams, sams_wanted);
    let passwd = std::fs::read_to_string(site.path("data/mail/passwd")).unwrap_or_default();
    for want in ["ann@alpha.test:", "ann@beta.test:"] {
        assert!(passwd.contains(want), "{want}: {passwd}");
    }
    (site, daemon)
}

/// The hosting workflows as shipped (`workflows/hosting/`), in the README's order, against
/// the real servers with a configuration file: slapd (their paths moved under the test
/// server's suffix — the only change), `named` through rndc and RFC 2136, Dovecot's mail
/// files. `ldapsearch` finds the tenant's OU and users, `dig` its MX; the rollback demo
/// leaves nothing of its tenant on the servers; decommissioning removes the OU and the zone.
#[test]
fn the_hosting_workflows_run_as_shipped_against_the_real_servers() {
    let Some(s) = Slapd::start() else { return };
    let Some(n) = Named::start() else { return };
    let sb = Sandbox::new();
    let cfg = all_servers_config(&sb, &directory_section(&s), &n);
    let run = |file: &str| {
        let text = std::fs::read_to_string(repo().join("workflows/hosting").join(file))
            .expect("a shipped workflow")
            .replace("DC=provisio,DC=local", slapd::SUFFIX);
        let copy = sb.write(file, &text);
        sb.run_with(
            &[
                "--config",
                cfg.to_str().unwrap(),
                "run",
                copy.to_str().unwrap(),
            ],
            &repo().join("namespaces"),
        )
    };
    for file in [
        "initialize-hosting.yaml",
        "provision-tenant.yaml",
        "add-user.yaml",
        "find-tenants.yaml",
    ] {
        let r = run(file);
        assert_eq!(r.code, 0, "{file}: {r:?}\nnamed log:\n{}", n.log());
    }
    let org = format!(
        "OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,{}",
        slapd::SUFFIX
    );
    assert!(
        s.search(&org, "(userPrincipalName=*)", &["cn"]).len() >= 4,
        "the tenant's three users and the one add-user adds"
    );
    assert_eq!(n.dig("alpineskihouse.test", "MX").len(), 1, "{}", n.log());
    let passwd = std::fs::read_to_string(sb.path("mail").join("passwd")).expect("passwd-file");
    assert!(passwd.contains("ann@alpineskihouse.test:"), "{passwd}");

    // The rollback demo fails at its last step: nothing of its tenant stays on any server.
    let r = run("rollback-demo.xml");
    assert_eq!(r.code, 1, "{r:?}");
    assert!(s
        .search(
            &format!("OU=ConsolidatedMessenger,OU=Hosting,{}", slapd::SUFFIX),
            "(ou=WingtipToys)",
            &["ou"]
        )
        .is_empty());
    assert!(n.dig("wingtiptoys.test", "SOA").is_empty(), "{}", n.log());

    let r = run("decommission-tenant.yaml");
    assert_eq!(r.code, 0, "{r:?}\nnamed log:\n{}", n.log());
    assert!(s
        .search(
            &format!("OU=ConsolidatedMessenger,OU=Hosting,{}", slapd::SUFFIX),
            "(ou=AlpineSkiHouse)",
            &["ou"]
        )
        .is_empty());
    assert!(
        n.dig("alpineskihouse.test", "SOA").is_empty(),
        "{}",
        n.log()
    );
    let passwd = std::fs::read_to_string(sb.path("mail").join("passwd")).expect("passwd-file");
    assert!(!passwd.contains("@alpineskihouse.test:"), "{passwd}");
}
