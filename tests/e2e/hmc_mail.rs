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
    // Its share of the stores went back (DeAllocateOrganization); Tailspin keeps its own.
    let shares = store_shares(&sb);
    assert!(!shares.contains("AlpineSkiHouse"), "{shares}");
    assert!(shares.contains("OU=Tailspin"), "{shares}");
}

/// The organizations holding space on each store (QueryOrganizationsByMailstore).
fn store_shares(sb: &Sandbox) -> String {
    let r = procedure(
        sb,
        "shares.xml",
        r#"<execute id="a" namespace="Exchange 2007 Resource Manager" procedure="QueryOrganizationsByMailstore">
    <executeData><serverName>ex01</serverName><mailStoreName>DB01</mailStoreName></executeData>
    <after source="executeData" sourcePath="organizations" destination="data" mode="insert"/></execute>
  <execute id="b" namespace="Exchange 2007 Resource Manager" procedure="QueryOrganizationsByMailstore">
    <executeData><serverName>ex02</serverName><mailStoreName>DB02</mailStoreName></executeData>
    <after source="executeData" sourcePath="organizations" destination="data" mode="insert"/></execute>"#,
    );
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
}

/// ProvisionTenant's mailboxes and a room (CreateResourceMailbox) on a real Dovecot: a
/// message delivered over LMTP to each is read back over IMAP.
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

    // A room of the same tenant (CreateResourceMailbox): a mailbox Dovecot delivers to.
    let room = sb.write(
        "room.xml",
        &format!(
            r#"<request><data/><procedure>
  <execute id="room" namespace="Hosted Email 2007" procedure="CreateResourceMailbox">
    <executeData><organization>{ALPINE}</organization><resourceType>Room</resourceType><resourceCapacity>12</resourceCapacity>
      <emailAddresses><value>summit@alpineskihouse.test</value></emailAddresses></executeData>
  </execute></procedure></request>"#
        ),
    );
    ok(
        &sb,
        &["--config", c, "run", room.to_str().unwrap(), "--quiet"],
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
    // The room receives a booking request over LMTP too, read back over IMAP.
    assert_eq!(
        crate::mail::python(
            &client,
            &[
                "deliver",
                &lmtp,
                "ann@alpineskihouse.test",
                "summit@alpineskihouse.test",
                "book the summit room"
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
            "summit@alpineskihouse.test*master",
            &d.master_password,
        ],
    );
    assert_eq!(subjects, "Subject: book the summit room", "{}", d.log());
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

/// A tenant with a distribution list and a mail contact is decommissioned whole: Hosted AD's
/// DeleteOrganization deletes their mail records (named in the address list) before the
/// accepted domain, which is then free for another tenant. Before, the domain still held
/// their addresses and the whole DecommissionTenant failed.
#[test]
fn a_tenant_with_lists_and_contacts_is_decommissioned_whole() {
    let sb = Sandbox::new();
    initialize(&sb);
    ok(
        &sb,
        &["run", "workflows/hosting/provision-tenant.yaml", "--quiet"],
    );
    let r = request(
        &sb,
        "lists.xml",
        &format!(
            r#"<request><data/><procedure>
  <execute id="list" namespace="Hosted Email 2007" procedure="CreateDistributionList">
    <executeData><organization>{ALPINE}</organization><name>Instructors</name><emailAddress>instructors@alpineskihouse.test</emailAddress>
      <members><member>ann@alpineskihouse.test</member></members></executeData>
  </execute>
  <execute id="contact" namespace="Exchange 2007 Provider" procedure="CreateContact">
    <executeData><organization>{ALPINE}</organization><name>Supplier</name><externalEmailAddress>orders@supplier.test</externalEmailAddress></executeData>
  </execute>
  <execute id="gal" namespace="Exchange 2007 Provider" procedure="GetAddressList">
    <executeData><organization>{ALPINE}</organization></executeData>
    <after source="executeData" sourcePath="addressList" destination="data" mode="insert"/>
  </execute></procedure></request>"#
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let flat = r.stdout.replace(['\n', ' '], "");
    assert!(flat.contains("<name>Instructors</name>"), "{r:?}");
    assert!(flat.contains("<name>Supplier</name>"), "{r:?}");

    let aliases =
        || std::fs::read_to_string(sb.data().join("mail/virtual_alias_maps")).expect("alias map");
    assert!(
        aliases().contains("instructors@alpineskihouse.test"),
        "{}",
        aliases()
    );
    let r = sb.run(&[
        "run",
        "workflows/hosting/decommission-tenant.yaml",
        "--quiet",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        !aliases().contains("instructors@alpineskihouse.test"),
        "{}",
        aliases()
    );
    // The domain is free again: the same tenant provisions anew.
    ok(
        &sb,
        &["run", "workflows/hosting/provision-tenant.yaml", "--quiet"],
    );
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

/// Runs `xml` (a trusted request's procedure body) and returns the run.
fn procedure(sb: &Sandbox, name: &str, body: &str) -> Run {
    request(
        sb,
        name,
        &format!("<request><data/><procedure>{body}</procedure></request>"),
    )
}

/// The maxMailboxes places Alpine Ski House uses (Managed Plans).
fn places(sb: &Sandbox) -> u64 {
    let r = procedure(
        sb,
        "places.xml",
        r#"<execute id="c" namespace="Managed Plans" procedure="GetCustomer">
    <executeData><customerName>OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local</customerName></executeData>
    <after source="executeData" sourcePath="customer/usage/maxMailboxes" destination="data" mode="insert"/></execute>"#,
    );
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
        .split("<maxMailboxes>")
        .nth(1)
        .and_then(|x| x.split('<').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The passwd-file line of `address`, if any.
fn passwd_line(sb: &Sandbox, address: &str) -> Option<String> {
    std::fs::read_to_string(sb.data().join("mail/passwd"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(&format!("{address}::")))
        .map(str::to_string)
}

/// CreateResourceMailbox through Hosted Email 2007: a disabled directory user with a room
/// mailbox (store allocated, the plan's quota, one maxMailboxes place), listed in its
/// organization's address list with its type and capacity and not in another's; calendar
/// processing refused with nothing created; DeleteMailbox gives back exactly what it took;
/// the tenant (with a room still there) decommissions cleanly.
#[test]
fn resource_mailboxes_through_hosted_email() {
    let sb = Sandbox::new();
    initialize(&sb);
    ok(
        &sb,
        &["run", "workflows/hosting/provision-tenant.yaml", "--quiet"],
    );
    let t = sb.write("tailspin.yaml", &tailspin());
    ok(&sb, &["run", t.to_str().unwrap(), "--quiet"]);
    let before = mail_world(&sb);
    let room = |extra: &str| {
        format!(
            r#"<execute id="room" namespace="Hosted Email 2007" procedure="CreateResourceMailbox">
    <executeData><organization>{ALPINE}</organization><resourceType>Room</resourceType><resourceCapacity>8</resourceCapacity>
      <displayName>Summit Room</displayName><emailAddresses><value>summit@alpineskihouse.test</value></emailAddresses>{extra}</executeData>
    <after source="executeData" sourcePath="path" destination="data" mode="insert"/>
    <after source="executeData" sourcePath="quotaKB" destination="data" mode="insert"/>
  </execute>"#
        )
    };
    // Calendar processing is not implemented: refused, nothing created.
    let r = procedure(
        &sb,
        "calendar.xml",
        &room("<automateProcessing>AutoAccept</automateProcessing>"),
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("automateProcessing"), "{r:?}");
    assert!(r.stdout.contains("not implemented"), "{r:?}");
    assert_eq!(mail_world(&sb), before);

    let r = procedure(
        &sb,
        "room.xml",
        &format!(
            r#"{}
  <execute id="gal" namespace="Exchange 2007 Provider" procedure="GetAddressList">
    <executeData><organization>{ALPINE}</organization></executeData>
    <after source="executeData" sourcePath="addressList" destination="data" mode="insert"/>
  </execute>
  <execute id="other" namespace="Exchange 2007 Provider" procedure="GetAddressList">
    <executeData><organization>{TAILSPIN}</organization></executeData>
    <after source="executeData" sourcePath="addressList" destination="data" destinationPath="other" mode="insert"/>
  </execute>
  <execute id="account" namespace="Active Directory Provider" procedure="Get Properties">
    <executeData><path>LDAP://CN=summit@alpineskihouse.test,OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local</path><attributes>userAccountControl,userPrincipalName,displayName</attributes></executeData>
    <after source="executeData" sourcePath="properties" destination="data" mode="insert"/>
  </execute>"#,
            room("")
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let flat = r.stdout.replace(['\n', ' '], "");
    for want in [
        "<path>LDAP://CN=summit@alpineskihouse.test,OU=AlpineSkiHouse,",
        "<quotaKB>2097152</quotaKB>",
        "<emailAddress>summit@alpineskihouse.test</emailAddress><resourceType>Room</resourceType><resourceCapacity>8</resourceCapacity>",
        "514",
        "SummitRoom",
    ] {
        assert!(flat.contains(want), "{want}: {r:?}");
    }
    let other = flat
        .split("<other>")
        .nth(1)
        .and_then(|o| o.split("</other>").next())
        .expect("the other tenant's list");
    assert!(other.contains("tom@tailspin.test"), "{r:?}");
    assert!(!other.contains("summit@"), "{r:?}");
    let line = passwd_line(&sb, "summit@alpineskihouse.test").expect("the room's mailbox");
    assert!(line.contains("storage=2097152K"), "{line}");
    let with_room = mail_world(&sb);
    assert!(
        with_room.contains("summit@alpineskihouse.test"),
        "{with_room}"
    );

    assert_eq!(places(&sb), 4);

    // Deleting it gives back its allocation and its place; the mail files are as before and
    // the (disabled) directory user stays.
    let r = procedure(
        &sb,
        "delete.xml",
        r#"<execute id="gone" namespace="Hosted Email 2007" procedure="DeleteMailbox">
    <executeData><user>summit@alpineskihouse.test</user></executeData></execute>"#,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(passwd_line(&sb, "summit@alpineskihouse.test").is_none());
    assert_eq!(places(&sb), 3);
    let files = |w: &str| w.split_once("\nmail/").map(|x| x.1.to_string());
    let after = mail_world(&sb);
    assert!(after.contains("CN=summit@alpineskihouse.test"), "{after}");
    assert_eq!(files(&after), files(&before));
    // Its allocation is gone: the same mailbox can be allocated and enabled again.
    let r = procedure(
        &sb,
        "again.xml",
        r#"<execute id="again" namespace="Hosted Email 2007" procedure="CreateMailbox">
    <executeData><user>LDAP://CN=summit@alpineskihouse.test,OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local</user>
      <emailAddresses><value>summit@alpineskihouse.test</value></emailAddresses><resourceType>Room</resourceType></executeData></execute>"#,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(places(&sb), 4);

    // A room again, then the whole tenant decommissioned: nothing of it left.
    let r = procedure(&sb, "room2.xml", &room("").replace("summit@", "peak@"));
    assert_eq!(r.code, 0, "{r:?}");
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

/// DeleteMailbox gives back exactly what CreateMailbox took and recorded: a mailbox created
/// with `database` releases no allocation, one allocated by the resource manager releases
/// its own; each gives back its maxMailboxes place. A real failure to give something back
/// (here the organization's Managed Plans customer is gone) is no longer swallowed: the
/// whole deletion rolls back and the mailbox is still there.
#[test]
fn delete_mailbox_gives_back_what_it_took_and_a_real_failure_rolls_back() {
    let sb = Sandbox::new();
    initialize(&sb);
    // An organization whose users are plain directory objects (no plans customers of their
    // own), so that its customer can be deleted while its mailboxes exist.
    let fab = "LDAP://OU=Fabrikam,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local";
    let fab_dn = "OU=Fabrikam,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local";
    let user = |cn: &str| {
        format!(
            r#"<execute id="u{cn}" namespace="Active Directory Provider" procedure="Create Object">
    <executeData><container>{fab}</container><class>user</class><name>CN={cn}@fabrikam-hosted.test</name>
      <properties><userPrincipalName>{cn}@fabrikam-hosted.test</userPrincipalName></properties></executeData></execute>
  <execute id="m{cn}" namespace="Hosted Email 2007" procedure="CreateMailbox">
    <executeData><user>LDAP://CN={cn}@fabrikam-hosted.test,{fab_dn}</user><emailAddresses><value>{cn}@fabrikam-hosted.test</value></emailAddresses>"#
        )
    };
    let r = procedure(
        &sb,
        "fabrikam.xml",
        &format!(
            r#"<execute id="org" namespace="Hosted Active Directory" procedure="CreateOrganization">
    <executeData><name>Fabrikam</name><container>{RESELLER}</container><planName>Gold</planName></executeData></execute>
  <execute id="mail" namespace="Hosted Email 2007" procedure="MailEnableTenant">
    <executeData><organization>{fab}</organization><domainName>fabrikam-hosted.test</domainName></executeData></execute>
  {}</executeData></execute>
  {}<database>ex02\DB02</database></executeData></execute>"#,
            user("kim"),
            user("lee")
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let usage = |sb: &Sandbox| -> String {
        let r = procedure(
            sb,
            "usage.xml",
            &format!(
                r#"<execute id="c" namespace="Managed Plans" procedure="GetCustomer">
    <executeData><customerName>{fab_dn}</customerName></executeData>
    <after source="executeData" sourcePath="customer/usage" destination="data" mode="insert"/></execute>
  <execute id="s" namespace="Exchange 2007 Resource Manager" procedure="QueryOrganizationsByMailstore">
    <executeData><serverName>ex01</serverName><mailStoreName>DB01</mailStoreName></executeData>
    <after source="executeData" sourcePath="organizations" destination="data" mode="insert"/></execute>"#
            ),
        );
        assert_eq!(r.code, 0, "{r:?}");
        r.stdout.replace(['\n', ' '], "")
    };
    let u = usage(&sb);
    assert!(u.contains("<maxMailboxes>2</maxMailboxes>"), "{u}");

    // lee's mailbox (on `database`, never allocated) goes without touching the resource
    // manager; its place is given back.
    let r = procedure(
        &sb,
        "lee.xml",
        r#"<execute id="gone" namespace="Hosted Email 2007" procedure="DeleteMailbox">
    <executeData><user>lee@fabrikam-hosted.test</user></executeData></execute>"#,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stdout.contains("WARN"), "{r:?}");
    let u = usage(&sb);
    assert!(u.contains("<maxMailboxes>1</maxMailboxes>"), "{u}");

    // The organization's customer deleted behind Hosted Email's back: giving kim's place
    // back fails, and the deletion rolls back whole (mailbox, allocation, files).
    let r = procedure(
        &sb,
        "orphan.xml",
        &format!(
            r#"<execute id="c" namespace="Managed Plans" procedure="DeleteCustomer">
    <executeData><customerName>{fab_dn}</customerName></executeData></execute>"#
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let before = mail_world(&sb);
    let r = procedure(
        &sb,
        "kim.xml",
        r#"<execute id="gone" namespace="Hosted Email 2007" procedure="DeleteMailbox">
    <executeData><user>kim@fabrikam-hosted.test</user></executeData></execute>"#,
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("rolled_back"), "{r:?}");
    assert!(r.stdout.contains("gone/place"), "{r:?}");
    assert!(r.stdout.contains("does not exist"), "{r:?}");
    assert_eq!(mail_world(&sb), before);
    assert!(passwd_line(&sb, "kim@fabrikam-hosted.test").is_some());
}

/// initialize-hosting twice: the second run commits and changes nothing (directory, plans,
/// services, stores, reseller).
#[test]
fn initialize_hosting_twice_changes_nothing() {
    let sb = Sandbox::new();
    initialize(&sb);
    let world = |sb: &Sandbox| {
        let r = procedure(
            sb,
            "hosting-world.xml",
            r#"<execute id="dir" namespace="Active Directory Provider" procedure="Search">
    <executeData><base>LDAP://DC=provisio,DC=local</base><scope>subtree</scope><filter>(objectClass=*)</filter></executeData>
    <after source="executeData" sourcePath="entries" destination="data" mode="insert"/></execute>
  <execute id="stores" namespace="Exchange 2007 Resource Manager" procedure="QueryAllStores">
    <after source="executeData" sourcePath="mailStores" destination="data" mode="insert"/></execute>
  <execute id="hosting" namespace="Managed Plans" procedure="GetCustomer">
    <executeData><customerName>OU=Hosting,DC=provisio,DC=local</customerName></executeData>
    <after source="executeData" sourcePath="customer" destination="data" mode="insert"/></execute>
  <execute id="reseller" namespace="Managed Plans" procedure="GetCustomer">
    <executeData><customerName>OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local</customerName></executeData>
    <after source="executeData" sourcePath="customer" destination="data" mode="insert"/></execute>
  <execute id="gold" namespace="Managed Plans" procedure="CheckDependencies">
    <executeData><planName>Gold</planName></executeData>
    <after source="executeData" sourcePath="services" destination="data" mode="insert"/></execute>"#,
        );
        assert_eq!(r.code, 0, "{r:?}");
        // Without the response's own transaction id.
        r.stdout
            .split_once("<data>")
            .map(|(_, d)| d.to_string())
            .unwrap_or_default()
    };
    let first = world(&sb);
    assert!(first.contains("HostedEmail"), "{first}");
    assert!(first.contains("OU=ConsolidatedMessenger"), "{first}");
    initialize(&sb);
    assert_eq!(world(&sb), first);
    // A store registered with another size is still refused, naming it; nothing changes.
    let yaml = std::fs::read_to_string(
        crate::util::repo().join("workflows/hosting/initialize-hosting.yaml"),
    )
    .unwrap()
    .replacen("megabytes: 512000", "megabytes: 1024", 1);
    let f = sb.write("resize.yaml", &yaml);
    let r = sb.run(&["run", f.to_str().unwrap(), "--quiet"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("ex01/DB01 already exists"), "{r:?}");
    assert_eq!(world(&sb), first);
}

/// The Hosted Email plan procedures: a mailbox plan from prohibitSendQuota (bytes → KB),
/// offered down the reseller and the organization; ChangeUserPlanAssignment gives a user's
/// mailbox that quota, CreateMailbox planName starts one with it; a plan not offered, an
/// organization plan without HostedEmail and the features Provisio does not enforce are
/// refused by name with nothing changed; running CreateUserPlan again changes nothing.
#[test]
fn plan_procedures_give_mailboxes_their_plans_quota() {
    let sb = Sandbox::new();
    initialize(&sb);
    ok(
        &sb,
        &["run", "workflows/hosting/provision-tenant.yaml", "--quiet"],
    );
    let small = r#"<execute id="plan" namespace="Hosted Email 2007" procedure="CreateUserPlan">
    <executeData><planName>SmallMailbox</planName><description>100 MB</description><features><prohibitSendQuota>104857600</prohibitSendQuota></features></executeData>
    <after source="executeData" sourcePath="mailboxQuotaKB" destination="data" mode="insert"/></execute>"#;
    let r = procedure(&sb, "small.xml", small);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("<mailboxQuotaKB>102400</mailboxQuotaKB>"),
        "{r:?}"
    );
    // Again: no change, committed.
    let r = procedure(&sb, "small2.xml", small);
    assert_eq!(r.code, 0, "{r:?}");
    let ann = "LDAP://CN=ann@alpineskihouse.test,OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local";
    let assign = |plan: &str| {
        format!(
            r#"<execute id="assign" namespace="Hosted Email 2007" procedure="ChangeUserPlanAssignment">
    <executeData><user>{ann}</user><planName>{plan}</planName></executeData>
    <after source="executeData" sourcePath="quotaKB" destination="data" mode="insert"/></execute>"#
        )
    };
    // Not offered yet: refused, nothing changed.
    let before = mail_world(&sb);
    let r = procedure(&sb, "early.xml", &assign("SmallMailbox"));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("plan SmallMailbox is not available"),
        "{r:?}"
    );
    assert_eq!(mail_world(&sb), before);
    let r = procedure(
        &sb,
        "offer.xml",
        &format!(
            r#"<execute id="r" namespace="Hosted Email 2007" procedure="AddAvailablePlans">
    <executeData><organization>{RESELLER}</organization><availablePlans><planName>SmallMailbox</planName></availablePlans></executeData></execute>
  <execute id="a" namespace="Hosted Email 2007" procedure="AddAvailablePlans">
    <executeData><organization>{ALPINE}</organization><availablePlans><planName>Gold</planName><planName>SmallMailbox</planName></availablePlans></executeData></execute>"#
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let r = procedure(&sb, "assign.xml", &assign("SmallMailbox"));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("<quotaKB>102400</quotaKB>"), "{r:?}");
    let line = passwd_line(&sb, "ann@alpineskihouse.test").unwrap();
    assert!(line.contains("storage=102400K"), "{line}");
    // A new user's mailbox started on the plan.
    let r = procedure(
        &sb,
        "zoe.xml",
        &format!(
            r#"<execute id="user" namespace="Hosted Active Directory" procedure="CreateUser">
    <executeData><container>{ALPINE}</container><userPrincipalName>zoe@alpineskihouse.test</userPrincipalName></executeData></execute>
  <execute id="mbx" namespace="Hosted Email 2007" procedure="CreateMailbox">
    <executeData><user>LDAP://CN=zoe@alpineskihouse.test,OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local</user>
      <emailAddresses><value>zoe@alpineskihouse.test</value></emailAddresses><planName>SmallMailbox</planName></executeData></execute>"#
        ),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let line = passwd_line(&sb, "zoe@alpineskihouse.test").unwrap();
    assert!(line.contains("storage=102400K"), "{line}");

    // Refused by name, nothing changed.
    let before = mail_world(&sb);
    for (i, (body, want)) in [
        (
            r#"<execute id="p" namespace="Hosted Email 2007" procedure="CreateUserPlan"><executeData><planName>Odd</planName><features><prohibitSendQuota>104857600</prohibitSendQuota><maxSendSize>1000</maxSendSize></features></executeData></execute>"#.to_string(),
            "input features/maxSendSize is not implemented",
        ),
        (
            r#"<execute id="p" namespace="Hosted Email 2007" procedure="CreateUserPlan"><executeData><planName>Odd</planName><features><prohibitSendQuota>12 MB</prohibitSendQuota></features></executeData></execute>"#.to_string(),
            "input features/prohibitSendQuota must be a whole number of bytes",
        ),
        (
            r#"<execute id="p" namespace="Hosted Email 2007" procedure="CreateOrganizationPlan"><executeData><planName>Odd</planName><features><maxMailboxes>5</maxMailboxes><publicStore><megabytes>10</megabytes></publicStore></features></executeData></execute>"#.to_string(),
            "publicStore",
        ),
        (
            format!(r#"<execute id="o" namespace="Hosted Email 2007" procedure="ChangeOrganizationPlanAssignment"><executeData><organization>{ALPINE}</organization><planName>Basic</planName></executeData></execute>"#),
            "plan Basic does not include service HostedEmail",
        ),
        (
            assign("SmallMailbox").replace("</planName>", "</planName><planOverrides><maxSendSize>1</maxSendSize></planOverrides>"),
            "input planOverrides is not implemented",
        ),
        (assign("Gold").replace("Gold", "Nope"), "plan Nope does not exist"),
    ]
    .iter()
    .enumerate()
    {
        let r = procedure(&sb, &format!("bad{i}.xml"), body);
        assert_eq!(r.code, 1, "{want}: {r:?}");
        assert!(r.stdout.contains(want), "{want}: {r:?}");
        assert_eq!(mail_world(&sb), before, "{want}");
    }
    // An organization plan as HMC writes it (mailStore as Provisio allocates) is accepted.
    let r = procedure(
        &sb,
        "silver.xml",
        r#"<execute id="p" namespace="Hosted Email 2007" procedure="CreateOrganizationPlan"><executeData><planName>Silver</planName><description>Up to 10 mailboxes</description>
      <features><maxMailboxes>10</maxMailboxes><mailboxQuotaKB>512000</mailboxQuotaKB><mailStore><dynamicQuota>1</dynamicQuota><shared>1</shared><algorithm>level</algorithm></mailStore></features></executeData></execute>
  <execute id="c" namespace="Managed Plans" procedure="CheckDependencies"><executeData><planName>Silver</planName></executeData>
    <after source="executeData" sourcePath="services" destination="data" mode="insert"/></execute>"#,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("HostedEmail"), "{r:?}");
}
