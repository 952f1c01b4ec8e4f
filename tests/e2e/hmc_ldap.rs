//! The HMC namespaces against a real slapd (the directory provider's ldap backend; DNS and
//! folders stay embedded): Hosted Active Directory/Initialize, a reseller, then
//! Provisioning/ProvisionTenant; `ldapsearch` (not the provider) finds the OU, the users
//! with their sAMAccountNames and groups, the tenant's domain as a UPN suffix of its OU,
//! and a user can bind with its password; the admin's mailbox is in the mail files. A tenant
//! whose last step fails leaves nothing on the server.

use crate::util::{repo, Sandbox};
use provisio_test_support::slapd::{self, Slapd};

fn config(sb: &Sandbox, s: &Slapd) -> std::path::PathBuf {
    sb.write(
        "provisio.toml",
        &format!(
            r#"data_dir = "{data}"

[providers.directory]
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
            data = sb.data().display(),
            base = slapd::SUFFIX,
            url = s.ldaps_url(),
            admin = slapd::ADMIN_DN,
            pw = s.password_file().display(),
            ca = s.ca_file().display(),
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
