//! Hosted Email 2007 and the mail steps of the tenant workflows through the real binary on
//! the embedded backends: HMC-style requests (another tenant's domain refused, the
//! organization's domains listed, a mailbox above the plan's quota refused before anything
//! is created, a mailbox deleted giving its allocation back); ProvisionTenant with
//! mailboxes then a message delivered over LMTP read back over IMAP from a real Dovecot;
//! a failure at the mailbox step leaving no directory entry, allocation or mail file.

use crate::hmc::{initialize, ok, RESELLER};
use crate::util::{Run, Sandbox};
use provisio_test_support::dovecot::Dovecot;
use std::os::unix::fs::PermissionsExt;

const ALPINE: &str =
    "LDAP://OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local";
const TAILSPIN: &str =
    "LDAP://OU=Tailspin,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local";

fn request(sb: &Sandbox, name: &str, xml: &str) -> Run {
    let req = sb.write(name, xml);
    sb.run(&["run", req.to_str().unwrap(), "--quiet"])
}

/// A second tenant with one user and a mailbox (the same shape as provision-tenant.yaml).
fn tailspin() -> String {
    format!(
        r#"call: Provisioning/ProvisionTenant
data:
  name: Tailspin
  container: "{RESELLER}"
  domain: tailspin.test
  planName: Gold
  users:
    user:
      - {{ userPrincipalName: tom@tailspin.test, displayName: Tom Hall, isAdmin: 1, newPassword: Tailspin-Pw-1, mailbox: {{}} }}
"#
    )
}

/// What a tenant's mail can leave behind: the directory under the reseller, the resource
/// manager's stores and organizations, the reseller's plans record, every mail file.
fn mail_world(sb: &Sandbox) -> String {
    let req = sb.write(
        "mail-world.yaml",
        &format!(
            r#"procedure:
  type: read
  parallel: false
  steps:
    dir:
      call: Active Directory Provider/Search
      with: {{ base: "{RESELLER}", scope: subtree, filter: "(objectClass=*)" }}
      after:
        - {{ source: executeData, sourcePath: entries, destination: data }}
    stores:
      call: Exchange 2007 Resource Manager/QueryAllStores
      after:
        - {{ source: executeData, sourcePath: mailStores, destination: data }}
    ex01:
      call: Exchange 2007 Resource Manager/QueryOrganizationsByMailstore
      with: {{ serverName: ex01, mailStoreName: DB01 }}
      after:
        - {{ source: executeData, sourcePath: organizations, destination: data, destinationPath: ex01 }}
    ex02:
      call: Exchange 2007 Resource Manager/QueryOrganizationsByMailstore
      with: {{ serverName: ex02, mailStoreName: DB02 }}
      after:
        - {{ source: executeData, sourcePath: organizations, destination: data, destinationPath: ex02 }}
    reseller:
      call: Managed Plans/GetCustomer
      with: {{ customerName: "OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local" }}
      after:
        - {{ source: executeData, sourcePath: customer, destination: data }}
data: {{}}
"#
        ),
    );
    let r = ok(sb, &["run", req.to_str().unwrap(), "--quiet"]);
    let data = r
        .stdout
        .split_once("data:")
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    let files: Vec<String> = sb
        .snapshot()
        .into_iter()
        .filter(|(p, _)| p.starts_with("mail/") || p.starts_with("files/tenants"))
        .map(|(p, bytes)| format!("{p} {}", String::from_utf8_lossy(&bytes)))
        .collect();
    format!("{data}\n{}", files.join("\n"))
}

#[test]
fn hosted_email_requests_give_the_expected_responses() {
    let sb = Sandbox::new();
    initialize(&sb);
    let r = ok(
        &sb,
        &["run", "workflows/hosting/provision-tenant.yaml", "--quiet"],
    );
    assert!(r.stdout.contains("status: committed"), "{r:?}");
    let want = "mailboxes:\n    primarySmtpAddress:\n    - ann@alpineskihouse.test\n    - bob@alpineskihouse.test\n    - eve@alpineskihouse.test";
    assert!(r.stdout.contains(want), "{want}: {r:?}");
    let t = sb.write("tailspin.yaml", &tailspin());
    ok(&sb, &["run", t.to_str().unwrap(), "--quiet"]);

    // Another tenant's domain: refused with the Exchange wording, nothing taken.
    let r = request(
        &sb,
        "steal.xml",
        &format!(
            r#"<request><data/><procedure>
  <execute id="steal" namespace="Hosted Email 2007" procedure="CreateSMTPDomain">
    <executeData><organization>{TAILSPIN}</organization><domainName>alpineskihouse.test</domainName></executeData>
  </execute></procedure></request>"#
        ),
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .contains("The SMTP Domain alpineskihouse.test is not available"),
        "{r:?}"
    );
    assert!(r.stdout.contains("0x80041103"), "{r:?}");

    // A second domain of its own: accepted, listed beside the first, with its uPNSuffixes.
    let r = request(
        &sb,
        "domains.xml",
        &format!(
            r#"<request><data/><procedure>
  <execute id="add" namespace="Hosted Email 2007" procedure="CreateSMTPDomain">
    <executeData><organization>{TAILSPIN}</organization><domainName>tailspin-air.test</domainName><domainType>InternalRelay</domainType></executeData>
  </execute>
  <execute id="list" namespace="Hosted Email 2007" procedure="GetOrganizationDomains">
    <executeData><organization>{TAILSPIN}</organization></executeData>
    <after source="executeData" sourcePath="SMTPDomains" destination="data" mode="insert"/>
  </execute>
  <execute id="ou" namespace="Active Directory Provider" procedure="Get Properties">
    <executeData><path>{TAILSPIN}</path><attributes>uPNSuffixes</attributes></executeData>
    <after source="executeData" sourcePath="properties" destination="data" mode="insert"/>
  </execute></procedure></request>"#
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let doms = r.stdout.replace(['\n', ' '], "");
    for want in [
        "<SMTPDomain><domainName>tailspin.test</domainName><domainTypeName>Authoritative</domainTypeName>",
        "<SMTPDomain><domainName>tailspin-air.test</domainName><domainTypeName>InternalRelay</domainTypeName>",
        "<value>tailspin.test</value>",
        "<value>tailspin-air.test</value>",
    ] {
        assert!(doms.contains(want), "{want}: {r:?}");
    }

    // A mailbox above the plan's quota: refused at the plan check, nothing created.
    let before = mail_world(&sb);
    let r = request(
        &sb,
        "big.xml",
        &format!(
            r#"<request><data/><procedure>
  <execute id="user" namespace="Hosted Active Directory" procedure="CreateUser">
    <executeData><container>{ALPINE}</container><userPrincipalName>zoe@alpineskihouse.test</userPrincipalName><newPassword>Zoe-Pw-2026</newPassword></executeData>
  </execute>
  <execute id="big" namespace="Hosted Email 2007" procedure="CreateMailbox">
    <executeData><user>LDAP://CN=zoe@alpineskihouse.test,OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local</user>
      <emailAddresses><value>zoe@alpineskihouse.test</value></emailAddresses><quotaKB>4194304</quotaKB></executeData>
  </execute></procedure></request>"#
        ),
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("0x80041102"), "{r:?}");
    assert!(
        r.stdout
            .contains("plan Gold allows mailboxQuotaKB up to 2097152"),
        "{r:?}"
    );
    assert!(r.stdout.contains("big/ceiling"), "{r:?}");
    assert!(!r.stdout.contains("big/allocate"), "{r:?}");
    assert_eq!(mail_world(&sb), before);

    // DeleteMailbox gives the allocation back; the user stays.
    let r = request(
        &sb,
        "delete.xml",
        r#"<request><data/><procedure>
  <execute id="gone" namespace="Hosted Email 2007" procedure="DeleteMailbox">
    <executeData><user>eve@alpineskihouse.test</user></executeData>
  </execute></procedure></request>"#,
    );
    assert_eq!(r.code, 0, "{r:?}");
    let after = mail_world(&sb);
    assert!(!after.contains("eve@alpineskihouse.test::"), "{after}");
    assert!(after.contains("CN=eve@alpineskihouse.test"), "{after}");
    let passwd = std::fs::read_to_string(sb.data().join("mail/passwd")).unwrap();
    assert_eq!(passwd.lines().count(), 3, "{passwd}");
}

#[test]
fn a_failure_at_the_mailbox_step_leaves_nothing() {
    let sb = Sandbox::new();
    initialize(&sb);
    let t = sb.write("tailspin.yaml", &tailspin());
    ok(&sb, &["run", t.to_str().unwrap(), "--quiet"]);
    let before = mail_world(&sb);
    // The first mailboxes are allocated and enabled, the last names an unregistered store;
    // then the same with a quota above the plan.
    for (i, bad) in [r#"database: 'ex09\DB09'"#, "quotaKB: 4194304"]
        .iter()
        .enumerate()
    {
        let yaml = std::fs::read_to_string(
            crate::util::repo().join("workflows/hosting/provision-tenant.yaml"),
        )
        .unwrap()
        .replace(
            "newPassword: Welcome-2026-Eve, mailbox: {}",
            &format!("newPassword: Welcome-2026-Eve, mailbox: {{ {bad} }}"),
        );
        assert!(yaml.contains(bad), "{yaml}");
        let f = sb.write(&format!("bad{i}.yaml"), &yaml);
        let r = sb.run(&["run", f.to_str().unwrap(), "--quiet"]);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stdout.contains("status: rolled_back"), "{r:?}");
        assert!(r.stdout.contains("step: mailboxes[3]"), "{r:?}");
        assert_eq!(mail_world(&sb), before, "{bad}");
    }
    // The same tenant without the fault commits, then decommissions to the same world.
    ok(
        &sb,
        &["run", "workflows/hosting/provision-tenant.yaml", "--quiet"],
    );
    let passwd = std::fs::read_to_string(sb.data().join("mail/passwd")).unwrap();
    assert_eq!(passwd.lines().count(), 4, "{passwd}");
    ok(
        &sb,
        &[
            "run",
            "workflows/hosting/decommission-tenant.yaml",
            "--quiet",
        ],
    );
    let passwd = std::fs::read_to_string(sb.data().join("mail/passwd")).unwrap();
    assert_eq!(passwd.lines().count(), 1, "{passwd}");
    assert!(passwd.starts_with("tom@tailspin.test::"), "{passwd}");
}

#[test]
fn provision_tenant_with_mailboxes_receives_mail_on_dovecot() {
    let sb = Sandbox::new();
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = sb.path("mail");
    let cfg = sb.write(
        "provisio.toml",
        &format!(
            "[providers.exchange]\nmail_root = \"{}\"\nmail_uid = 65534\nmail_gid = 65534\n",
            root.display()
        ),
    );
    let c = cfg.to_str().unwrap();
    ok(
        &sb,
        &[
            "--config",
            c,
            "run",
            "workflows/hosting/initialize-hosting.yaml",
            "--quiet",
        ],
    );
    let r = ok(
        &sb,
        &[
            "--config",
            c,
            "run",
            "workflows/hosting/provision-tenant.xml",
            "--quiet",
        ],
    );
    assert!(r.stdout.contains("status=\"committed\""), "{r:?}");
    let passwd = std::fs::read_to_string(root.join("passwd")).unwrap();
    assert!(
        passwd.contains("ann@alpineskihouse.test::65534:65534::")
            && passwd.contains("storage=1048576K"),
        "{passwd}"
    );

    let Some(d) = Dovecot::start(&root) else {
        return;
    };
    let client = sb.write("client.py", crate::mail::CLIENT);
    let lmtp = d.lmtp_port.to_string();
    let imap = d.imap_port.to_string();
    assert_eq!(
        crate::mail::python(
            &client,
            &[
                "deliver",
                &lmtp,
                "bob@alpineskihouse.test",
                "ann@alpineskihouse.test",
                "welcome aboard"
            ]
        ),
        "ok",
        "{}",
        d.log()
    );
    let subjects = crate::mail::python(
        &client,
        &[
            "fetch",
            &imap,
            "ann@alpineskihouse.test*master",
            &d.master_password,
        ],
    );
    assert_eq!(subjects, "Subject: welcome aboard", "{}", d.log());
}

#[test]
fn mailbox_changes_lists_and_out_of_office_through_hosted_email() {
    let sb = Sandbox::new();
    initialize(&sb);
    ok(
        &sb,
        &["run", "workflows/hosting/provision-tenant.yaml", "--quiet"],
    );
    let t = sb.write("tailspin.yaml", &tailspin());
    ok(&sb, &["run", t.to_str().unwrap(), "--quiet"]);

    let r = request(
        &sb,
        "changes.xml",
        &format!(
            r#"<request><data/><procedure>
  <execute id="grow" namespace="Hosted Email 2007" procedure="ModifyMailbox">
    <executeData><user>ann@alpineskihouse.test</user><quotaKB>2000000</quotaKB></executeData>
  </execute>
  <execute id="list" namespace="Hosted Email 2007" procedure="CreateDistributionList">
    <executeData><organization>{ALPINE}</organization><name>Instructors</name><emailAddress>instructors@alpineskihouse.test</emailAddress>
      <members><member>ann@alpineskihouse.test</member><member>bob@alpineskihouse.test</member></members></executeData>
  </execute>
  <execute id="away" namespace="Hosted Email 2007" procedure="SetOutOfOffice">
    <executeData><user>bob@alpineskihouse.test</user><subject>On the slopes</subject><message>Back on Monday.</message></executeData>
  </execute>
  <execute id="read" namespace="Exchange 2007 Provider" procedure="GetMailbox">
    <executeData><user>ann@alpineskihouse.test</user></executeData>
    <after source="executeData" sourcePath="mailbox/quotaKB" destination="data" mode="insert"/>
  </execute>
  <execute id="gal" namespace="Exchange 2007 Provider" procedure="GetAddressList">
    <executeData><organization>{ALPINE}</organization></executeData>
    <after source="executeData" sourcePath="addressList" destination="data" mode="insert"/>
  </execute></procedure></request>"#
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let flat = r.stdout.replace(['\n', ' '], "");
    assert!(flat.contains("<quotaKB>2000000</quotaKB>"), "{r:?}");
    assert!(
        flat.contains("<emailAddress>instructors@alpineskihouse.test</emailAddress>"),
        "{r:?}"
    );
    assert!(!flat.contains("tom@tailspin.test"), "{r:?}");
    let passwd = std::fs::read_to_string(sb.data().join("mail/passwd")).unwrap();
    let bob = passwd
        .lines()
        .find(|l| l.starts_with("bob@alpineskihouse.test::"))
        .unwrap();
    assert!(bob.contains("userdb_sieve=file:"), "{passwd}");
    assert!(passwd.contains("storage=2000000K"), "{passwd}");

    // Beyond the plan, and another tenant's member: refused, nothing changed.
    let before = mail_world(&sb);
    for (i, (step, fault)) in [
        (
            "big/ceiling",
            r#"<execute id="big" namespace="Hosted Email 2007" procedure="ModifyMailbox"><executeData><user>bob@alpineskihouse.test</user><quotaKB>4194304</quotaKB></executeData></execute>"#.to_string(),
        ),
        (
            "mixed",
            format!(r#"<execute id="mixed" namespace="Hosted Email 2007" procedure="CreateDistributionList"><executeData><organization>{ALPINE}</organization><name>Mixed</name><emailAddress>mixed@alpineskihouse.test</emailAddress><members><member>tom@tailspin.test</member></members></executeData></execute>"#),
        ),
    ]
    .iter()
    .enumerate()
    {
        let r = request(
            &sb,
            &format!("fault{i}.xml"),
            &format!("<request><data/><procedure>{fault}</procedure></request>"),
        );
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stdout.contains(step), "{step}: {r:?}");
        assert_eq!(mail_world(&sb), before, "{step}");
    }
}

/// A tenant whose plan lacks the HostedEmail service is not mail-enabled: MailEnableTenant
/// refuses it (Managed Plans' CheckDependencies, naming the plan and the service) and the
/// whole ProvisionTenant rolls back, leaving no mail file, allocation or directory entry.
#[test]
fn a_tenant_whose_plan_has_no_mail_service_gets_no_mail() {
    let sb = Sandbox::new();
    initialize(&sb);
    let before = mail_world(&sb);
    let t = sb.write(
        "litware.yaml",
        &tailspin()
            .replace("Tailspin", "Litware")
            .replace("tailspin", "litware")
            .replace("planName: Gold", "planName: Basic"),
    );
    let r = sb.run(&["run", t.to_str().unwrap(), "--quiet"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("plan Basic") && r.stdout.contains("HostedEmail"),
        "{r:?}"
    );
    assert!(r.stdout.contains("planHasMail"), "{r:?}");
    assert_eq!(mail_world(&sb), before);
}
