//! The HMC namespaces (Hosted Active Directory, Exchange 2007 Resource Manager, Provisioning)
//! through the real binary on the embedded backends: the hosting workflows in the README's
//! order, HMC 4.5-style trusted requests (LDAP paths, forEach over users, try/catch with
//! SetError, queue) with the responses mps-semantics.md predicts, plan limits refused
//! before anything is created, a failure at each step of ProvisionTenant leaving nothing
//! behind, DeleteOrganization refused while it holds users, DeleteUser taking the user's
//! mailbox with it, and user names that need RFC 4514 escaping.

use crate::util::{Run, Sandbox};

pub(crate) const RESELLER: &str = "LDAP://OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local";

pub(crate) fn ok(sb: &Sandbox, args: &[&str]) -> Run {
    let r = sb.run(args);
    assert_eq!(r.code, 0, "{args:?}: {r:?}");
    r
}

/// The directory under the base (every object with its attributes and groups), the
/// reseller's Managed Plans record and the tenant folders and zone files: what a tenant
/// can leave behind.
fn world(sb: &Sandbox) -> String {
    let req = sb.write(
        "world.yaml",
        r#"procedure:
  type: read
  parallel: false
  steps:
    dir:
      call: Active Directory Provider/Search
      with: { base: "LDAP://DC=provisio,DC=local", scope: subtree, filter: "(objectClass=*)" }
      after:
        - { source: executeData, sourcePath: entries, destination: data }
    reseller:
      call: Managed Plans/GetCustomer
      with: { customerName: "OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local" }
      after:
        - { source: executeData, sourcePath: customer, destination: data }
data: {}
"#,
    );
    let r = ok(sb, &["run", req.to_str().unwrap(), "--quiet"]);
    let data = r
        .stdout
        .split_once("data:")
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    let files: Vec<String> = sb
        .visible()
        .into_iter()
        .filter(|(p, _)| p != "files/tenants/")
        .map(|(p, bytes)| format!("{p} {}", bytes.len()))
        .collect();
    format!("{data}\n{}", files.join("\n"))
}

/// Runs the hosting set-up (hosting container, plans, stores, reseller).
pub(crate) fn initialize(sb: &Sandbox) {
    let r = ok(
        sb,
        &[
            "run",
            "workflows/hosting/initialize-hosting.yaml",
            "--quiet",
        ],
    );
    assert!(r.stdout.contains("status: committed"), "{r:?}");
}

#[test]
fn the_hosting_workflows_run_in_the_readme_order() {
    let sb = Sandbox::new();
    initialize(&sb);
    let before = world(&sb);

    let r = ok(&sb, &["run", "workflows/hosting/provision-tenant.yaml"]);
    assert!(r.stdout.contains("status: committed"), "{r:?}");
    for want in [
        "path: LDAP://OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local",
        "samName: ann_alpineskihouse.t",
        "adminsGroup: LDAP://CN=Admins,OU=AlpineSkiHouse,",
        "zoneSerial:",
    ] {
        assert!(r.stdout.contains(want), "{want}: {r:?}");
    }
    assert!(!r.stdout.contains("Welcome-2026-Ann"), "{r:?}");
    let zone = std::fs::read_to_string(sb.data().join("zones/alpineskihouse.test.zone"))
        .expect("the zone file");
    for want in [
        "MX",
        "v=spf1 mx -all",
        "autodiscover",
        "mail.alpineskihouse.test.",
    ] {
        assert!(zone.contains(want), "{want}: {zone}");
    }
    crate::util::named_checkzone(
        "alpineskihouse.test",
        &sb.data().join("zones/alpineskihouse.test.zone"),
    );
    let homes = sb.data().join("files/tenants/AlpineSkiHouse/users");
    assert!(homes.join("ann@alpineskihouse.test").is_dir());
    assert!(homes.join("eve@alpineskihouse.test").is_dir());

    // Ann is an admin (member of Admins and AllUsers), Bob only of AllUsers; all enabled.
    let found = ok(&sb, &["run", "workflows/hosting/find-tenants.yaml"]);
    let ann = found
        .stdout
        .split("- path: ")
        .find(|e| e.starts_with("LDAP://CN=ann@"))
        .expect("ann");
    assert!(ann.contains("CN=Admins,OU=AlpineSkiHouse"), "{ann}");
    assert!(ann.contains("CN=AllUsers,OU=AlpineSkiHouse"), "{ann}");
    assert!(ann.contains("value: '512'"), "{ann}");
    let bob = found
        .stdout
        .split("- path: ")
        .find(|e| e.starts_with("LDAP://CN=bob@"))
        .expect("bob");
    assert!(!bob.contains("CN=Admins"), "{bob}");
    assert!(bob.contains("CN=AllUsers,OU=AlpineSkiHouse"), "{bob}");

    ok(&sb, &["run", "workflows/hosting/add-user.yaml"]);
    assert!(homes.join("dan@alpineskihouse.test").is_dir());
    let bulk = ok(
        &sb,
        &["run", "workflows/hosting/bulk-add-users.xml", "--quiet"],
    );
    assert_eq!(bulk.stdout.matches("<samName>").count(), 100, "{bulk:?}");
    assert!(homes.join("user100@alpineskihouse.test").is_dir());
    // Each of them with a mailbox (ann, bob, eve, dan and the 100).
    let passwd = || std::fs::read_to_string(sb.data().join("mail/passwd")).unwrap();
    assert_eq!(passwd().lines().count(), 104);
    assert!(passwd().contains("\nuser100@alpineskihouse.test::"));
    // BulkAddUsers puts them all into AllUsers in one change.
    let found = ok(&sb, &["run", "workflows/hosting/find-tenants.yaml"]);
    let last = found
        .stdout
        .split("- path: ")
        .find(|e| e.starts_with("LDAP://CN=user100@"))
        .expect("user100");
    assert!(last.contains("CN=AllUsers,OU=AlpineSkiHouse"), "{last}");
    // The rollback demo fails at its last step and leaves nothing of Wingtip Toys.
    let with_tenant = world(&sb);
    let mail_before = passwd();
    let demo = sb.run(&["run", "workflows/hosting/rollback-demo.xml"]);
    assert_eq!(demo.code, 1, "{demo:?}");
    assert!(demo.stdout.contains("status=\"rolled_back\""), "{demo:?}");
    assert!(demo.stdout.contains("step=\"last\""), "{demo:?}");
    assert!(demo.stderr.contains("undone"), "{demo:?}");
    assert_eq!(world(&sb), with_tenant);
    assert!(!sb.data().join("zones/wingtiptoys.test.zone").exists());
    // Its two mailboxes were created, then undone: the mail files never changed.
    assert_eq!(passwd(), mail_before);
    assert!(!passwd().contains("wingtiptoys"));
    let id = demo
        .stderr
        .lines()
        .find_map(|l| {
            l.split_once(" rolled_back in ")
                .map(|(id, _)| id.to_string())
        })
        .expect("the transaction id");
    let shown = ok(&sb, &["tx", "show", &id]);
    assert_eq!(
        shown
            .stdout
            .matches("Exchange 2007 Provider/CreateMailbox")
            .count(),
        2,
        "{shown:?}"
    );

    // Decommissioning removes the tenant and gives everything back: the world is as it
    // was right after the set-up.
    let gone = ok(&sb, &["run", "workflows/hosting/decommission-tenant.yaml"]);
    assert!(gone.stdout.contains("status: committed"), "{gone:?}");
    assert_eq!(world(&sb), before);
}

#[test]
fn the_xml_provision_request_masks_passwords_and_matches_the_yaml_one() {
    let sb = Sandbox::new();
    initialize(&sb);
    let r = ok(&sb, &["run", "workflows/hosting/provision-tenant.xml"]);
    assert!(r.stdout.contains("status=\"committed\""), "{r:?}");
    assert_eq!(r.stdout.matches("<samName>").count(), 3, "{r:?}");
    assert!(r
        .stdout
        .contains("<newPassword do-not-log=\"1\">********</newPassword>"));
    for secret in ["Welcome-2026-Ann", "Welcome-2026-Bob", "Welcome-2026-Eve"] {
        assert!(
            !r.stdout.contains(secret) && !r.stderr.contains(secret),
            "{r:?}"
        );
        let needle = secret.as_bytes();
        for (name, bytes) in sb.snapshot() {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{name} holds {secret} in clear"
            );
        }
    }
    // The same tenant again: its plans customer exists, so it fails before the directory
    // is touched and rolls back.
    let again = sb.run(&["run", "workflows/hosting/provision-tenant.yaml"]);
    assert_eq!(again.code, 1, "{again:?}");
}

/// An HMC 4.5 request against DC=fabrikam,DC=com: Initialize, a reseller, an organization,
/// then CreateUser for every user (forEach, preferredDomainController, LDAP paths).
const HMC_TENANT: &str = r#"<request>
  <data>
    <preferredDomainController>dc01.fabrikam.com</preferredDomainController>
    <reseller>ConsolidatedMessenger</reseller>
    <org>AlpineSkiHouse</org>
    <users>
      <user><userPrincipalName>ann@alpineskihouse.com</userPrincipalName><displayName>Ann Lee</displayName><isAdmin>1</isAdmin><newPassword do-not-log="1">P@ssw0rd-Ann-1</newPassword></user>
      <user><userPrincipalName>bob@alpineskihouse.com</userPrincipalName><displayName>Bob Ray</displayName><isAdmin>0</isAdmin><newPassword do-not-log="1">P@ssw0rd-Bob-1</newPassword></user>
    </users>
  </data>
  <procedure>
    <execute namespace="Hosted Active Directory" procedure="Initialize" impersonate="1">
      <before source="data" sourcePath="preferredDomainController" destination="executeData"/>
      <after source="executeData" sourcePath="path" destination="data" destinationPath="hosting" mode="merge"/>
    </execute>
    <execute namespace="Hosted Active Directory" procedure="CreateResellerOrganization" impersonate="1">
      <before source="data" sourcePath="reseller" destination="executeData" destinationPath="name" mode="merge"/>
      <before source="data" sourcePath="preferredDomainController" destination="executeData"/>
      <after source="executeData" sourcePath="org" destination="data" destinationPath="created/reseller" mode="merge"/>
    </execute>
    <execute namespace="Hosted Active Directory" procedure="CreateOrganization" impersonate="1">
      <executeData><container>LDAP://OU=ConsolidatedMessenger,OU=Hosting,DC=fabrikam,DC=com</container></executeData>
      <before source="data" sourcePath="org" destination="executeData" destinationPath="name" mode="merge"/>
      <before source="data" sourcePath="preferredDomainController" destination="executeData"/>
      <after source="executeData" sourcePath="org" destination="data" destinationPath="created/org" mode="merge"/>
    </execute>
    <execute namespace="Hosted Active Directory" procedure="CreateUser" impersonate="1">
      <forEach name="user" root="data" path="users/user"/>
      <executeData><container>LDAP://OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=fabrikam,DC=com</container></executeData>
      <before source="user" destination="executeData" mode="merge"/>
      <before source="data" sourcePath="preferredDomainController" destination="executeData"/>
      <after source="executeData" sourcePath="user" destination="data" destinationPath="created/users" mode="insert"/>
    </execute>
  </procedure>
</request>
"#;

/// A try whose CreateUser fails (the user exists), a catch that re-raises as HMC's
/// "username already exists" with SetError: the request fails with exactly that code.
const HMC_RERAISE: &str = r#"<request>
  <data><upn>carol@alpineskihouse.com</upn></data>
  <procedure>
    <try>
      <execute id="carol" namespace="Hosted Active Directory" procedure="CreateUser">
        <executeData><container>LDAP://OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=fabrikam,DC=com</container></executeData>
        <before source="data" sourcePath="upn" destination="executeData" destinationPath="userPrincipalName" mode="merge"/>
      </execute>
      <execute id="again" namespace="Hosted Active Directory" procedure="CreateUser">
        <executeData><container>LDAP://OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=fabrikam,DC=com</container><userPrincipalName>ann@alpineskihouse.com</userPrincipalName></executeData>
      </execute>
    </try>
    <catch>
      <execute id="reraise" namespace="Error Provider" procedure="SetError">
        <executeData><hr>0x82101391</hr></executeData>
        <before template="username already exists ({{ context/errorContext/@code }})" destination="executeData" destinationPath="desc" mode="merge"/>
      </execute>
    </catch>
  </procedure>
</request>
"#;

/// The same failure handled: the catch records the code and the request commits, keeping
/// what the try had done before the failure (MPF has no savepoints).
const HMC_HANDLED: &str = r#"<request>
  <data><upn>carol@alpineskihouse.com</upn></data>
  <procedure>
    <try>
      <execute id="carol" namespace="Hosted Active Directory" procedure="CreateUser">
        <executeData><container>LDAP://OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=fabrikam,DC=com</container></executeData>
        <before source="data" sourcePath="upn" destination="executeData" destinationPath="userPrincipalName" mode="merge"/>
        <after source="executeData" sourcePath="user/samName" destination="data" destinationPath="carolSam" mode="merge"/>
      </execute>
      <execute id="again" namespace="Hosted Active Directory" procedure="CreateUser">
        <executeData><container>LDAP://OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=fabrikam,DC=com</container><userPrincipalName>ann@alpineskihouse.com</userPrincipalName></executeData>
      </execute>
    </try>
    <catch>
      <transform id="note">
        <before source="context" sourcePath="errorContext/@code" destination="data" destinationPath="handled" mode="merge"/>
      </transform>
    </catch>
    <queue id="later" namespace="Hosted Active Directory" procedure="CreateUser" queueSuspended="1">
      <executeData><container>LDAP://OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=fabrikam,DC=com</container><userPrincipalName>dave@alpineskihouse.com</userPrincipalName><preferredDomainController>dc01.fabrikam.com</preferredDomainController></executeData>
      <after source="context" sourcePath="queueContext/@queueId" destination="data" destinationPath="jobId" mode="merge"/>
    </queue>
  </procedure>
</request>
"#;

const FABRIKAM_SEARCH: &str = r#"<request namespace="Hosted Active Directory" procedure="ADSearch">
  <data><base>LDAP://OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=fabrikam,DC=com</base><filter>(objectClass=user)</filter><attributes>userPrincipalName,sAMAccountName,memberOf</attributes><preferredDomainController>dc01.fabrikam.com</preferredDomainController></data>
</request>
"#;

#[test]
fn hmc_requests_give_the_responses_mps_predicts() {
    let sb = Sandbox::new();
    let cfg = sb.write(
        "provisio.toml",
        "[providers.directory]\nbase_dn = \"DC=fabrikam,DC=com\"\n",
    );
    let cfg = cfg.to_str().unwrap();
    let run = |file: &str, text: &str| {
        let p = sb.write(file, text);
        sb.run(&["--config", cfg, "run", p.to_str().unwrap()])
    };

    let r = run("tenant.xml", HMC_TENANT);
    assert_eq!(r.code, 0, "{r:?}");
    for want in [
        "<hosting>LDAP://OU=Hosting,DC=fabrikam,DC=com</hosting>",
        "<path>LDAP://OU=ConsolidatedMessenger,OU=Hosting,DC=fabrikam,DC=com</path>",
        "<path>LDAP://OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=fabrikam,DC=com</path>",
        "<path>LDAP://CN=ann@alpineskihouse.com,OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=fabrikam,DC=com</path>",
        "<samName>ann_alpineskihouse.c</samName>",
        "<samName>bob_alpineskihouse.c</samName>",
        "<name>bob@alpineskihouse.com</name>",
        "<adminsGroup>LDAP://CN=Admins,OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=fabrikam,DC=com</adminsGroup>",
    ] {
        assert!(r.stdout.contains(want), "{want}: {r:?}");
    }
    assert!(!r.stdout.contains("P@ssw0rd-Ann-1"), "{r:?}");

    // try/catch + SetError: the error the catch raises is the request's, and everything
    // the request did (Carol) is rolled back.
    let r = run("reraise.xml", HMC_RERAISE);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains(
            "<errorContext code=\"0x82101391\" description=\"username already exists (0x800700b7)\""
        ),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains("<errorSource namespace=\"Error Provider\" procedure=\"SetError\""),
        "{r:?}"
    );
    let found = run("search.xml", FABRIKAM_SEARCH);
    assert_eq!(found.code, 0, "{found:?}");
    assert!(!found.stdout.contains("carol@"), "{found:?}");
    // preferredDomainController reaches the directory call, which checks it.
    let bad = run(
        "bad-dc.xml",
        &FABRIKAM_SEARCH.replace("dc01.fabrikam.com", "dc01 fabrikam"),
    );
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stdout.contains("0x80070057")
            && bad
                .stdout
                .contains("input `preferredDomainController` must be a host name"),
        "{bad:?}"
    );
    assert!(found.stdout.contains("<count>2</count>"), "{found:?}");

    // Handled: committed, with the code in data, Carol kept, and Dave queued (suspended:
    // released by the commit), created when the worker runs the job.
    let r = run("handled.xml", HMC_HANDLED);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("<handled>0x800700b7</handled>"), "{r:?}");
    assert!(
        r.stdout
            .contains("<carolSam>carol_alpineskihouse</carolSam>"),
        "{r:?}"
    );
    assert!(r.stdout.contains("<jobId>"), "{r:?}");
    let found = run("search.xml", FABRIKAM_SEARCH);
    assert!(
        found.stdout.contains("carol@alpineskihouse.com"),
        "{found:?}"
    );
    assert!(!found.stdout.contains("dave@"), "{found:?}");
    let w = sb.run(&["--config", cfg, "worker", "--drain"]);
    assert_eq!(w.code, 0, "{w:?}");
    assert!(w.stderr.contains("ran 1 job(s)"), "{w:?}");
    let found = run("search.xml", FABRIKAM_SEARCH);
    assert!(
        found.stdout.contains("dave@alpineskihouse.com"),
        "{found:?}"
    );
    assert!(found.stdout.contains("<count>4</count>"), "{found:?}");

    // DeleteOrganization is refused while the organization holds users ...
    let del = |cascade: &str| {
        format!(
            r#"<request namespace="Hosted Active Directory" procedure="DeleteOrganization">
  <data><path>LDAP://OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=fabrikam,DC=com</path><cascade>{cascade}</cascade><preferredDomainController>dc01.fabrikam.com</preferredDomainController></data>
</request>
"#
        )
    };
    let r = run("del.xml", &del("0"));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains(
            "code=\"0x80072015\" description=\"organization OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=fabrikam,DC=com still holds 4 user(s): delete them first, or pass cascade=1\""
        ),
        "{r:?}"
    );
    // ... and with cascade=1 removes them, the organization and its plans customers, so
    // the reseller's plan counts nothing: the same organization can be created again.
    let r = run("del.xml", &del("1"));
    assert_eq!(r.code, 0, "{r:?}");
    let found = run("search.xml", FABRIKAM_SEARCH);
    assert_ne!(found.code, 0, "the organization is gone: {found:?}");
    let r = run("tenant2.xml", &HMC_TENANT.replace(
        r#"<execute namespace="Hosted Active Directory" procedure="CreateResellerOrganization" impersonate="1">"#,
        r#"<execute namespace="Hosted Active Directory" procedure="CreateResellerOrganization" impersonate="1"><when source="data" sourcePath="never"/>"#,
    ));
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn a_user_beyond_the_plan_is_refused_before_anything_is_created() {
    let sb = Sandbox::new();
    initialize(&sb);
    let setup = sb.write(
        "small.yaml",
        &format!(
            r#"procedure:
  parallel: false
  steps:
    plan:
      call: Managed Plans/CreatePlan
      with: {{ planName: Small, services: {{ service: [HostedActiveDirectory] }}, limits: {{ maxUsers: 2 }} }}
    offer:
      call: Managed Plans/AddAvailablePlansToCustomer
      with: {{ customerName: "OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local", availablePlans: {{ planName: [Small] }} }}
    org:
      call: Hosted Active Directory/CreateOrganization
      with: {{ name: Tiny, container: "{RESELLER}", planName: Small }}
data: {{}}
"#
        ),
    );
    ok(&sb, &["run", setup.to_str().unwrap()]);
    let add = |upn: &str| {
        let p = sb.write(
            "add.yaml",
            &format!(
                "call: Provisioning/AddUser\ndata:\n  container: \"LDAP://OU=Tiny,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local\"\n  userPrincipalName: {upn}\n"
            ),
        );
        sb.run(&["run", p.to_str().unwrap()])
    };
    assert_eq!(add("one@tiny.test").code, 0);
    assert_eq!(add("two@tiny.test").code, 0);
    let before = world(&sb);
    let r = add("three@tiny.test");
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("0x80041102"), "{r:?}");
    assert!(
        r.stdout.contains(
            "plan Small allows 2 users; organization OU=Tiny,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local has 2"
        ),
        "{r:?}"
    );
    // Refused at the plans step, the third of CreateUser's, before any write.
    assert!(r.stdout.contains("step: user/plans"), "{r:?}");
    assert!(!r.stdout.contains("undoFailures"), "{r:?}");
    assert_eq!(world(&sb), before);
    assert!(!sb
        .data()
        .join("files/tenants/Tiny/users/three@tiny.test")
        .exists());
}

/// ProvisionTenant's request for the tenant Tailspin, changed by `edit`.
fn tailspin(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v = serde_json::json!({
        "call": "Provisioning/ProvisionTenant",
        "data": {
            "name": "Tailspin",
            "container": RESELLER,
            "domain": "tailspin.test",
            "planName": "Gold",
            "users": {"user": [
                {"userPrincipalName": "ann@tailspin.test", "displayName": "Ann Lee", "isAdmin": "1", "newPassword": "Tailspin-Pw-1"},
                {"userPrincipalName": "bob@tailspin.test", "displayName": "Bob Ray", "newPassword": "Tailspin-Pw-2"}
            ]}
        }
    });
    edit(&mut v["data"]);
    serde_json::to_string_pretty(&v).unwrap()
}

#[test]
fn a_failure_at_each_step_of_provision_tenant_leaves_nothing_behind() {
    let sb = Sandbox::new();
    initialize(&sb);
    // A plan of one user, and a domain another customer holds.
    let setup = sb.write(
        "setup.yaml",
        r#"procedure:
  parallel: false
  steps:
    plan:
      call: Managed Plans/CreatePlan
      with: { planName: One, services: { service: [HostedActiveDirectory] }, limits: { maxUsers: 1 } }
    offer:
      call: Managed Plans/AddAvailablePlansToCustomer
      with: { customerName: "OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local", availablePlans: { planName: [One] } }
    other:
      call: Managed Plans/CreateCustomer
      with: { customerName: Elsewhere }
    taken:
      call: Managed Plans/AddAsset
      with: { customerName: Elsewhere, assetType: PrimaryDomain, value: taken.test }
data: {}
"#,
    );
    ok(&sb, &["run", setup.to_str().unwrap()]);
    let before = world(&sb);
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        // the organization's path cannot be built
        (
            "org/orgPath",
            Box::new(|d| d["container"] = "LDAP://OU=,DC=provisio,DC=local".into()),
        ),
        // the plan does not exist (Managed Plans, before the OU)
        ("org/plans", Box::new(|d| d["planName"] = "Platinum".into())),
        // the domain is held by another customer (after the organization)
        ("asset", Box::new(|d| d["domain"] = "taken.test".into())),
        // the second user is beyond the plan (after the first user)
        ("users[2]/plans", Box::new(|d| d["planName"] = "One".into())),
        // the second user has an attribute the directory does not know
        (
            "users[2]/create",
            Box::new(|d| {
                d["users"]["user"][1]["properties"] = serde_json::json!({"favouriteColour": "teal"})
            }),
        ),
        // the first user's password is empty
        (
            "users[1]/password",
            Box::new(|d| d["users"]["user"][0]["newPassword"] = "".into()),
        ),
        // the mail host's address is not one (after the zone was created)
        (
            "zone/mailHost",
            Box::new(|d| d["mailAddress"] = "not-an-address".into()),
        ),
        // the quota is refused (after the folders were created)
        (
            "folders/quota",
            Box::new(|d| d["quotaMegabytes"] = (-5).into()),
        ),
        // a home folder's name climbs out of the tenant
        (
            "homes[2]",
            Box::new(|d| {
                d["users"]["user"][1]["userPrincipalName"] = "../../../bob@tailspin.test".into()
            }),
        ),
    ];
    for (step, edit) in cases {
        let req = sb.write("tailspin.json", &tailspin(edit));
        let r = sb.run(&["run", req.to_str().unwrap(), "--quiet"]);
        assert_eq!(r.code, 1, "{step}: {r:?}");
        assert!(
            r.stdout.contains("\"status\": \"rolled_back\""),
            "{step}: {r:?}"
        );
        assert!(
            r.stdout.contains(&format!("\"step\": \"{step}\"")),
            "{step}: {r:?}"
        );
        assert_eq!(world(&sb), before, "{step} left something behind");
    }
    // And without a failure it commits.
    let req = sb.write("tailspin.json", &tailspin(|_| {}));
    ok(&sb, &["run", req.to_str().unwrap(), "--quiet"]);
    assert_ne!(world(&sb), before);
}

#[test]
fn the_resource_manager_namespace_is_public_where_hmc_calls_it() {
    let sb = Sandbox::new();
    initialize(&sb);
    let q = sb.write(
        "stores.xml",
        r#"<request namespace="Exchange 2007 Resource Manager" procedure="QueryAllStores"><data/></request>"#,
    );
    let r = ok(&sb, &["run", q.to_str().unwrap()]);
    assert!(
        r.stdout.contains("<mailStoreName>DB01</mailStoreName>"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("<megabytesFree>512000</megabytesFree>"),
        "{r:?}"
    );
    // The leaves keep the provider's inputs: a missing one is refused before anything runs.
    let bad = sb.write(
        "add.xml",
        r#"<request namespace="Exchange 2007 Resource Manager" procedure="AddExchangeResources"><data/></request>"#,
    );
    let r = sb.run(&["run", bad.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("mailStores"), "{r:?}");
    // Allocations stay private (called by composite procedures and trusted requests).
    let alloc = sb.write(
        "alloc.xml",
        r#"<request namespace="Exchange 2007 Resource Manager" procedure="AllocateMailbox"><data><organization>x</organization><mailbox>y</mailbox><kilobytes>1</kilobytes></data></request>"#,
    );
    let r = sb.run(&["run", alloc.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("PRV0103"), "{r:?}");
}

/// Two tenants with the same user names, common names and display names, each under a
/// reseller of its own, submitted to the daemon at the same moment: both commit, and each
/// tenant's users, groups and plans stay its own (the second `ann` gets the next free
/// sAMAccountName, whichever transaction takes it first).
#[test]
fn two_tenants_provisioned_concurrently_stay_apart() {
    use crate::daemon::{sha, Site, OPS};
    let site = Site::bare();
    std::fs::write(
        site.path("provisio.toml"),
        format!(
            "data_dir = \"data\"\nnamespaces = \"{}\"\n\n[serve]\nworkers = 4\n\n[[serve.tokens]]\nsubject = \"ops\"\nsha256 = \"{}\"\ntrusted = true\noperator = true\n",
            crate::util::repo().join("namespaces").display(),
            sha(OPS)
        ),
    )
    .expect("config");
    let daemon = site.start();
    let init = std::fs::read_to_string(
        crate::util::repo().join("workflows/hosting/initialize-hosting.yaml"),
    )
    .expect("workflow");
    let a = daemon.submit(OPS, &init, "?wait=120s", &[]);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["outcome"], "committed", "{a:?}");
    let resellers = r#"procedure:
  parallel: false
  steps:
    one: { call: Hosted Active Directory/CreateResellerOrganization, with: { name: Northwind, container: "LDAP://OU=Hosting,DC=provisio,DC=local", availablePlans: { planName: [Gold] } } }
    two: { call: Hosted Active Directory/CreateResellerOrganization, with: { name: Southwind, container: "LDAP://OU=Hosting,DC=provisio,DC=local", availablePlans: { planName: [Gold] } } }
data: {}
"#;
    let a = daemon.submit(OPS, resellers, "?wait=120s", &[]);
    assert_eq!(a.body["outcome"], "committed", "{a:?}");

    let tenant = |name: &str, reseller: &str| {
        format!(
            r#"call: Provisioning/ProvisionTenant
data:
  name: {name}
  container: "LDAP://OU={reseller},OU=Hosting,DC=provisio,DC=local"
  domain: {name}.test
  planName: Gold
  users:
    user:
      - {{ userPrincipalName: ann@hosted.test, displayName: Ann Lee, isAdmin: 1, newPassword: Same-Pw-1 }}
      - {{ userPrincipalName: bob@hosted.test, displayName: Bob Ray, newPassword: Same-Pw-2 }}
"#
        )
    };
    let answers: Vec<_> = std::thread::scope(|s| {
        let d = &daemon;
        let one = tenant("alpha", "Northwind");
        let two = tenant("beta", "Southwind");
        let h1 = s.spawn(move || d.submit(OPS, &one, "?wait=120s", &[]));
        let h2 = s.spawn(move || d.submit(OPS, &two, "?wait=120s", &[]));
        vec![h1.join().expect("one"), h2.join().expect("two")]
    });
    for a in &answers {
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body["outcome"], "committed", "{a:?}");
    }
    let find = r#"call: Hosted Active Directory/ADSearch
data:
  base: "LDAP://OU=Hosting,DC=provisio,DC=local"
  filter: "(objectClass=user)"
  attributes: "sAMAccountName,displayName,memberOf"
"#;
    let a = daemon.submit(OPS, find, "?wait=120s", &[]);
    assert_eq!(a.body["outcome"], "committed", "{a:?}");
    let text = a.body.to_string();
    let mut sams = Vec::new();
    for (org, reseller) in [("alpha", "Northwind"), ("beta", "Southwind")] {
        for who in ["ann", "bob"] {
            let dn = format!(
                "CN={who}@hosted.test,OU={org},OU={reseller},OU=Hosting,DC=provisio,DC=local"
            );
            let entry = text
                .split("\"dn\":")
                .find(|e| e.starts_with(&format!("\"{dn}\"")))
                .unwrap_or_else(|| panic!("{dn} missing: {text}"));
            // Only its own organization's groups.
            assert!(
                entry.contains(&format!("CN=AllUsers,OU={org},OU={reseller}")),
                "{entry}"
            );
            assert_eq!(entry.matches("CN=AllUsers").count(), 1, "{entry}");
            assert_eq!(
                entry.contains(&format!("CN=Admins,OU={org},")),
                who == "ann",
                "{entry}"
            );
            let sam = entry
                .split("\"sAMAccountName\"")
                .nth(1)
                .and_then(|r| r.split("\"value\":\"").nth(1))
                .and_then(|r| r.split('"').next())
                .unwrap_or_else(|| panic!("no sAMAccountName: {entry}"))
                .to_string();
            sams.push(sam);
        }
    }
    sams.sort();
    assert_eq!(
        sams,
        [
            "ann_hosted.test",
            "ann_hosted.test1",
            "bob_hosted.test",
            "bob_hosted.test1"
        ],
        "{text}"
    );
}

/// docs/namespaces/ is what `provisio namespaces --markdown` prints for each namespace file.
#[test]
fn the_namespace_docs_are_generated_from_the_definitions() {
    let sb = Sandbox::new();
    for (file, name) in [
        ("hosted-active-directory.md", "Hosted Active Directory"),
        ("provisioning.md", "Provisioning"),
        ("hosted-email-2007.md", "Hosted Email 2007"),
        (
            "exchange-2007-resource-manager.md",
            "Exchange 2007 Resource Manager",
        ),
    ] {
        let r = ok(&sb, &["namespaces", "--markdown", name]);
        let doc = std::fs::read_to_string(crate::util::repo().join("docs/namespaces").join(file))
            .expect("the page");
        assert!(
            r.stdout == doc,
            "docs/namespaces/{file} is stale: regenerate it with `provisio namespaces --markdown \"{name}\" > docs/namespaces/{file}`"
        );
    }
}

/// CreateGroup (with a member), CreateContact, ModifyUser, SetUserPassword and
/// ChangeUserPassword on Alpine Ski House's users, ADSearch to read them back, DeleteUser
/// giving the user's place in the plan back; the same calls followed by a failure leave
/// nothing.
const OTHERS: &str = r#"<request>
  <data><org>LDAP://OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local</org>
    <pw do-not-log="1">Changed-Pw-77</pw><pw2 do-not-log="1">Changed-Pw-88</pw2></data>
  <procedure>
    <execute id="group" namespace="Hosted Active Directory" procedure="CreateGroup">
      <executeData><name>Ski Instructors</name><description>Teachers</description>
        <members><member>LDAP://CN=bob@alpineskihouse.test,OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local</member></members></executeData>
      <before source="data" sourcePath="org" destination="executeData" destinationPath="container" mode="merge"/>
      <after source="executeData" sourcePath="group" destination="data" mode="insert"/>
    </execute>
    <execute id="contact" namespace="Hosted Active Directory" procedure="CreateContact">
      <executeData><name>Outside Partner</name><mail>partner@example.org</mail><displayName>Partner</displayName></executeData>
      <before source="data" sourcePath="org" destination="executeData" destinationPath="container" mode="merge"/>
      <after source="executeData" sourcePath="contact" destination="data" mode="insert"/>
    </execute>
    <execute id="modify" namespace="Hosted Active Directory" procedure="ModifyUser">
      <executeData><path>LDAP://CN=eve@alpineskihouse.test,OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local</path><displayName>Eve Kim-Lee</displayName>
        <properties><property name="title" mode="replace"><value>Head of Sales</value></property></properties></executeData>
    </execute>
    <execute id="reset" namespace="Hosted Active Directory" procedure="SetUserPassword">
      <executeData><path>LDAP://CN=eve@alpineskihouse.test,OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local</path></executeData>
      <before source="data" sourcePath="pw" destination="executeData" destinationPath="newPassword" mode="merge"/>
    </execute>
    <execute id="change" namespace="Hosted Active Directory" procedure="ChangeUserPassword">
      <executeData><path>LDAP://CN=eve@alpineskihouse.test,OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local</path></executeData>
      <before source="data" sourcePath="pw" destination="executeData" destinationPath="oldPassword" mode="merge"/>
      <before source="data" sourcePath="pw2" destination="executeData" destinationPath="newPassword" mode="merge"/>
    </execute>
    <execute id="leave" namespace="Hosted Active Directory" procedure="DeleteUser">
      <executeData><path>LDAP://CN=dan@alpineskihouse.test,OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local</path></executeData>
    </execute>
    TAIL
  </procedure>
</request>
"#;

#[test]
fn groups_contacts_changes_and_passwords_commit_or_leave_nothing() {
    let sb = Sandbox::new();
    initialize(&sb);
    ok(&sb, &["run", "workflows/hosting/provision-tenant.yaml"]);
    ok(&sb, &["run", "workflows/hosting/add-user.yaml"]);
    let usage = |sb: &Sandbox| {
        let q = sb.write(
            "usage.yaml",
            "procedure:\n  type: read\n  steps:\n    get:\n      call: Managed Plans/GetCustomer\n      with: { customerName: \"OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local\" }\n      output: { users: \"{{ executeData.customer.usage.maxUsers }}\" }\ndata: {}\n",
        );
        let r = ok(
            sb,
            &["run", q.to_str().unwrap(), "--output", "json", "--quiet"],
        );
        let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
        match &v["data"]["users"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    };
    assert_eq!(usage(&sb), "4");
    let before = world(&sb);
    let failing = OTHERS.replace(
        "TAIL",
        r#"<execute id="boom" namespace="Error Provider" procedure="SetError"><executeData><hr>0x80004005</hr><desc>boom</desc></executeData></execute>"#,
    );
    let req = sb.write("others.xml", &failing);
    let r = sb.run(&["run", req.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("step=\"boom\""), "{r:?}");
    assert_eq!(world(&sb), before);
    assert_eq!(usage(&sb), "4");

    let req = sb.write("others.xml", &OTHERS.replace("TAIL", ""));
    let r = ok(&sb, &["run", req.to_str().unwrap()]);
    assert!(
        r.stdout
            .contains("<path>LDAP://CN=Ski Instructors,OU=AlpineSkiHouse,"),
        "{r:?}"
    );
    for secret in ["Changed-Pw-77", "Changed-Pw-88"] {
        assert!(
            !r.stdout.contains(secret) && !r.stderr.contains(secret),
            "{r:?}"
        );
    }
    let found = ok(&sb, &["run", "workflows/hosting/find-tenants.yaml"]);
    assert!(!found.stdout.contains("dan@"), "{found:?}");
    let search = sb.write(
        "search.yaml",
        "call: Hosted Active Directory/ADSearch\ndata: { base: \"LDAP://OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local\", filter: \"(|(cn=Ski Instructors)(cn=Outside Partner)(cn=eve@*))\", attributes: \"member,mail,displayName,title,objectClass\" }\n",
    );
    let s = ok(&sb, &["run", search.to_str().unwrap()]);
    for want in [
        "value: CN=bob@alpineskihouse.test,OU=AlpineSkiHouse",
        "value: partner@example.org",
        "value: Eve Kim-Lee",
        "value: Head of Sales",
        "- contact",
    ] {
        assert!(s.stdout.contains(want), "{want}: {s:?}");
    }
    assert_eq!(usage(&sb), "3", "DeleteUser gave Dan's place back");
    // The old password is checked.
    let wrong = sb.write(
        "wrong.xml",
        r#"<request namespace="Hosted Active Directory" procedure="ChangeUserPassword"><data><path>LDAP://CN=eve@alpineskihouse.test,OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local</path><oldPassword do-not-log="1">Changed-Pw-77</oldPassword><newPassword do-not-log="1">Another-Pw-99</newPassword></data></request>"#,
    );
    let r = sb.run(&["run", wrong.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("0x80070056"), "{r:?}");
}

const ALPINE_ORG: &str =
    "OU=AlpineSkiHouse,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local";

/// A mail-enabled user's state as independent of the provider's answers as the embedded
/// defaults allow: the rendered passwd-file (what Dovecot reads), the organization's plan
/// usage, and whether each mailbox still holds a resource-manager allocation (a
/// DeAllocateMailbox followed by a failure: it reaches the failure only when there was
/// something to release, and the rollback puts it back).
fn mail_state(sb: &Sandbox, who: &[&str]) -> String {
    let passwd = std::fs::read_to_string(sb.data().join("mail/passwd")).unwrap_or_default();
    let users: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').next().unwrap_or(""))
        .collect();
    let q = sb.write(
        "usage.yaml",
        &format!("procedure:\n  type: read\n  steps:\n    get:\n      call: Managed Plans/GetCustomer\n      with: {{ customerName: \"{ALPINE_ORG}\" }}\n      after:\n        - {{ source: executeData, sourcePath: customer/usage, destination: data }}\ndata: {{}}\n"),
    );
    // (None once the organization's customer is gone)
    let usage = sb.run(&["run", q.to_str().unwrap(), "--quiet"]);
    let usage = (usage.code == 0)
        .then(|| {
            usage
                .stdout
                .split_once("data:")
                .map(|(_, d)| d.trim().to_string())
        })
        .flatten();
    let mut allocated = Vec::new();
    for w in who {
        let probe = sb.write(
            "probe.xml",
            &format!(
                r#"<request><data/><procedure>
  <execute id="release" namespace="Exchange 2007 Resource Manager" procedure="DeAllocateMailbox">
    <executeData><organization>{ALPINE_ORG}</organization><mailbox>{w}@alpineskihouse.test</mailbox></executeData>
  </execute>
  <execute id="undo" namespace="Error Provider" procedure="SetError"><executeData><hr>0x80004005</hr><desc>probe</desc></executeData></execute>
</procedure></request>"#
            ),
        );
        let r = sb.run(&["run", probe.to_str().unwrap(), "--quiet"]);
        assert_eq!(r.code, 1, "{r:?}");
        if r.stdout.contains("step=\"undo\"") {
            allocated.push(*w);
        } else {
            assert!(r.stdout.contains("step=\"release\""), "{r:?}");
        }
    }
    format!("passwd {users:?}\nusage {usage:?}\nallocated {allocated:?}")
}

/// Hosted Active Directory/DeleteUser of a mail-enabled user deletes its mailbox (the
/// mail files, the resource-manager allocation, the plan's maxMailboxes place) in the same
/// transaction; a later failure puts all of it back; a user without a mailbox is deleted as
/// before; DeleteOrganization with cascade=1 takes every user's mailbox with it.
#[test]
fn delete_user_and_delete_organization_take_the_mailboxes_with_them() {
    let sb = Sandbox::new();
    initialize(&sb);
    ok(&sb, &["run", "workflows/hosting/provision-tenant.yaml"]);
    let who = ["ann", "bob", "eve"];
    let start = mail_state(&sb, &who);
    assert!(
        start.contains(r#"passwd ["ann@alpineskihouse.test", "bob@alpineskihouse.test", "eve@alpineskihouse.test"]"#),
        "{start}"
    );
    assert!(start.contains("maxMailboxes: '3'"), "{start}");
    assert!(
        start.contains(r#"allocated ["ann", "bob", "eve"]"#),
        "{start}"
    );
    let before = world(&sb);
    let delete_bob = |tail: &str| {
        format!(
            r#"<request><data/><procedure>
  <execute id="leave" namespace="Hosted Active Directory" procedure="DeleteUser">
    <executeData><path>LDAP://CN=bob@alpineskihouse.test,{ALPINE_ORG}</path></executeData>
    <after source="executeData" sourcePath="primarySmtpAddress" destination="data" destinationPath="mailboxDeleted" mode="merge"/>
  </execute>{tail}
</procedure></request>"#
        )
    };
    let boom = r#"<execute id="boom" namespace="Error Provider" procedure="SetError"><executeData><hr>0x80004005</hr><desc>boom</desc></executeData></execute>"#;

    // A failure after the deletion: the user, its mailbox, allocation and places are back.
    let req = sb.write("bob.xml", &delete_bob(boom));
    let r = sb.run(&["run", req.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("step=\"boom\""), "{r:?}");
    assert_eq!(world(&sb), before);
    assert_eq!(mail_state(&sb, &who), start);

    // Committed: Bob's mailbox is gone with him, and so is its allocation.
    let req = sb.write("bob.xml", &delete_bob(""));
    let r = ok(&sb, &["run", req.to_str().unwrap()]);
    assert!(
        r.stdout
            .contains("<mailboxDeleted>bob@alpineskihouse.test</mailboxDeleted>"),
        "{r:?}"
    );
    let after = mail_state(&sb, &who);
    assert!(
        after.contains(r#"passwd ["ann@alpineskihouse.test", "eve@alpineskihouse.test"]"#),
        "{after}"
    );
    assert!(after.contains("maxMailboxes: '2'"), "{after}");
    assert!(after.contains("maxUsers: '2'"), "{after}");
    assert!(after.contains(r#"allocated ["ann", "eve"]"#), "{after}");
    let q = sb.write(
        "bobmail.xml",
        r#"<request><data/><procedure><execute id="get" namespace="Exchange 2007 Provider" procedure="GetMailbox"><executeData><user>bob@alpineskihouse.test</user></executeData></execute></procedure></request>"#,
    );
    let r = sb.run(&["run", q.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("0x80070490"), "{r:?}");

    // A user without a mailbox: deleted as before (the lookup's not-found is handled).
    let carl = sb.write(
        "carl.xml",
        &format!(
            r#"<request><data/><procedure>
  <execute id="add" namespace="Hosted Active Directory" procedure="CreateUser">
    <executeData><container>LDAP://{ALPINE_ORG}</container><userPrincipalName>carl@alpineskihouse.test</userPrincipalName></executeData>
  </execute>
  <execute id="leave" namespace="Hosted Active Directory" procedure="DeleteUser">
    <executeData><path>LDAP://CN=carl@alpineskihouse.test,{ALPINE_ORG}</path></executeData>
    <after source="executeData" sourcePath="primarySmtpAddress" destination="data" destinationPath="mailboxDeleted" mode="merge" ifNull="ignore"/>
  </execute>
</procedure></request>"#
        ),
    );
    let r = ok(&sb, &["run", carl.to_str().unwrap()]);
    assert!(!r.stdout.contains("mailboxDeleted"), "{r:?}");
    assert_eq!(mail_state(&sb, &who), after);

    // DeleteOrganization with cascade: every user's mailbox goes too (and comes back when
    // a later step fails).
    let with_two = world(&sb);
    let del = |tail: &str| {
        format!(
            r#"<request><data/><procedure>
  <execute id="org" namespace="Hosted Active Directory" procedure="DeleteOrganization">
    <executeData><path>LDAP://{ALPINE_ORG}</path><cascade>1</cascade></executeData>
  </execute>{tail}
</procedure></request>"#
        )
    };
    let req = sb.write("org.xml", &del(boom));
    let r = sb.run(&["run", req.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(world(&sb), with_two);
    assert_eq!(mail_state(&sb, &who), after);
    let req = sb.write("org.xml", &del(""));
    ok(&sb, &["run", req.to_str().unwrap()]);
    let passwd = std::fs::read_to_string(sb.data().join("mail/passwd")).unwrap_or_default();
    assert!(!passwd.contains("alpineskihouse"), "{passwd}");
    let gone = mail_state(&sb, &who);
    assert!(gone.contains("usage None\nallocated []"), "{gone}");
    // Its accepted domain went with it: another organization may take the domain now.
    let other = sb.write(
        "other.xml",
        &format!(
            r#"<request><data/><procedure>
  <execute id="org" namespace="Hosted Active Directory" procedure="CreateOrganization">
    <executeData><name>Other</name><container>{RESELLER}</container><planName>Gold</planName></executeData>
  </execute>
  <execute id="domain" namespace="Hosted Email 2007" procedure="MailEnableTenant">
    <executeData><organization>LDAP://OU=Other,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local</organization><domainName>alpineskihouse.test</domainName></executeData>
  </execute>
</procedure></request>"#
        ),
    );
    ok(&sb, &["run", other.to_str().unwrap()]);
}

/// Users whose userPrincipalNames hold every character RFC 4514 escapes in a DN value
/// (`,` `+` `"` `\` `<` `>` `;`, a leading `#` or space) and `=`, with the RDN the directory
/// must name each by: (userPrincipalName, escaped RDN, mailbox address). The mail provider
/// takes letters, digits and `._+-` before the `@`, so the others get an address of their
/// own (`mailbox/emailAddresses`); a backslash cannot be in a folder name, so its user is
/// made by [`backslash_user`] instead of ProvisionTenant (which gives each user a home folder).
pub(crate) const ODD_USERS: [(&str, &str, &str); 4] = [
    ("o+neil@odd.test", r"CN=o\+neil@odd.test", "o+neil@odd.test"),
    (
        r#"smith, john;"q"<a>=b@odd.test"#,
        r#"CN=smith\, john\;\"q\"\<a\>\=b@odd.test"#,
        "john.smith@odd.test",
    ),
    ("#hash@odd.test", r"CN=\#hash@odd.test", "hash@odd.test"),
    (" lead@odd.test", r"CN=\ lead@odd.test", "lead@odd.test"),
];

/// ProvisionTenant for the tenant Odd under `container`, its users [`ODD_USERS`], each with
/// a mailbox.
pub(crate) fn odd_tenant(container: &str) -> String {
    let users: Vec<serde_json::Value> = ODD_USERS
        .iter()
        .enumerate()
        .map(|(i, (upn, _, mail))| {
            let mut mailbox = serde_json::json!({ "emailAddresses": { "value": [mail] } });
            if i == 0 {
                // (the mail provider's alias, derived from the address, takes no `+`)
                mailbox = serde_json::json!({ "alias": "oneil" });
            }
            serde_json::json!({
                "userPrincipalName": upn, "displayName": format!("Odd {i}"),
                "isAdmin": if i == 0 { "1" } else { "0" },
                "newPassword": format!("Odd-Tenant-Pw{i}"), "mailbox": mailbox
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "call": "Provisioning/ProvisionTenant",
        "data": {
            "name": "Odd", "container": container, "domain": "odd.test", "planName": "Gold",
            "users": { "user": users }
        }
    }))
    .unwrap()
}

/// A trusted request: Hosted Active Directory/CreateUser of `back\slash@odd.test` in `org`
/// (an LDAP path), then Hosted Email 2007/CreateMailbox on the path CreateUser gave back,
/// then its mailbox read back (`data/mailbox/user`), then DeleteUser of that path (taking
/// the mailbox with it) when `delete`.
pub(crate) fn backslash_user(org: &str, delete: bool) -> String {
    let delete = if delete {
        r#"<execute id="leave" namespace="Hosted Active Directory" procedure="DeleteUser">
    <before source="data" sourcePath="path" destination="executeData" mode="insert"/>
    <after source="executeData" sourcePath="primarySmtpAddress" destination="data" destinationPath="mailboxDeleted" mode="merge"/>
  </execute>"#
    } else {
        ""
    };
    format!(
        r#"<request><data/><procedure>
  <execute id="add" namespace="Hosted Active Directory" procedure="CreateUser">
    <executeData><container>{org}</container><userPrincipalName>back\slash@odd.test</userPrincipalName></executeData>
    <after source="executeData" sourcePath="user/path" destination="data" destinationPath="path" mode="merge"/>
  </execute>
  <execute id="mail" namespace="Hosted Email 2007" procedure="CreateMailbox">
    <executeData><emailAddresses><value>backslash@odd.test</value></emailAddresses></executeData>
    <before source="data" sourcePath="path" destination="executeData" destinationPath="user" mode="merge"/>
  </execute>
  <execute id="read" namespace="Exchange 2007 Provider" procedure="GetMailbox">
    <executeData><user>backslash@odd.test</user></executeData>
    <after source="executeData" sourcePath="mailbox/user" destination="data" destinationPath="mailboxUser" mode="merge"/>
  </execute>
  {delete}
</procedure></request>"#
    )
}

/// A user's path is built by the directory provider, escaped (RFC 4514), wherever the HMC
/// namespaces need one: ProvisionTenant's mailboxes land on the right directory users
/// whatever their userPrincipalName holds (a template `CN={{ upn }},…` gave a wrong path or
/// an error), and a backslash survives CreateUser → CreateMailbox → DeleteUser.
#[test]
fn user_names_with_dn_special_characters_get_escaped_paths() {
    let sb = Sandbox::new();
    initialize(&sb);
    let req = sb.write("odd.json", &odd_tenant(RESELLER));
    let r = ok(&sb, &["run", req.to_str().unwrap(), "--quiet"]);
    assert!(r.stdout.contains("\"status\": \"committed\""), "{r:?}");
    let org = "OU=Odd,OU=ConsolidatedMessenger,OU=Hosting,DC=provisio,DC=local";
    for (upn, rdn, mail) in ODD_USERS {
        let dn = format!("{rdn},{org}");
        let q = sb.write(
            "q.xml",
            &format!(
                r#"<request><data/><procedure>
  <execute id="mailbox" namespace="Exchange 2007 Provider" procedure="GetMailbox">
    <executeData><user>{mail}</user></executeData>
    <after source="executeData" sourcePath="mailbox/user" destination="data" destinationPath="mailboxUser" mode="merge"/>
  </execute>
  <execute id="user" namespace="Active Directory Provider" procedure="Get Properties">
    <executeData><attributes>userPrincipalName</attributes></executeData>
    <before source="data" sourcePath="mailboxUser" destination="executeData" destinationPath="path" mode="merge"/>
    <after source="executeData" sourcePath="properties" destination="data" mode="insert"/>
  </execute>
</procedure></request>"#
            ),
        );
        let r = ok(&sb, &["run", q.to_str().unwrap(), "--output", "json"]);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
        assert_eq!(v["data"]["mailboxUser"], dn.as_str(), "{r:?}");
        let got = v["data"]["properties"].to_string();
        assert!(
            got.contains(&serde_json::to_string(upn).unwrap()),
            "{upn}: {got}"
        );
    }
    let req = sb.write("back.xml", &backslash_user(&format!("LDAP://{org}"), true));
    let r = ok(&sb, &["run", req.to_str().unwrap(), "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(
        v["data"]["path"],
        format!(r"LDAP://CN=back\\slash@odd.test,{org}").as_str()
    );
    assert_eq!(
        v["data"]["mailboxUser"],
        format!(r"CN=back\\slash@odd.test,{org}").as_str()
    );
    assert_eq!(v["data"]["mailboxDeleted"], "backslash@odd.test");
}

/// An HMC request with two nested forEach (every user of every organization; an
/// organization without users is skipped), paths naming a domain controller
/// (`LDAP://dc01.fabrikam.com/…`), and a field moved (`mode="move"`) into a step.
const HMC_NESTED: &str = r#"<request>
  <data>
    <preferredDomainController>dc01.fabrikam.com</preferredDomainController>
    <name>Outside Partner</name>
    <organizations>
      <organization><name>Contoso</name><user><userPrincipalName>ann@contoso.com</userPrincipalName><displayName>Ann</displayName></user><user><userPrincipalName>bob@contoso.com</userPrincipalName><displayName>Bob</displayName></user></organization>
      <organization><name>Empty</name></organization>
      <organization><name>Litware</name><user><userPrincipalName>ann@litware.com</userPrincipalName><displayName>Ann</displayName></user></organization>
    </organizations>
  </data>
  <procedure>
    <execute namespace="Hosted Active Directory" procedure="Initialize" impersonate="1">
      <before source="data" sourcePath="preferredDomainController" destination="executeData"/>
    </execute>
    <execute namespace="Hosted Active Directory" procedure="CreateResellerOrganization" impersonate="1">
      <executeData><name>Reseller</name></executeData>
      <before source="data" sourcePath="preferredDomainController" destination="executeData"/>
    </execute>
    <execute namespace="Hosted Active Directory" procedure="CreateOrganization" impersonate="1">
      <forEach name="org" root="data" path="organizations/organization"/>
      <executeData><container>LDAP://dc01.fabrikam.com/OU=Reseller,OU=Hosting,DC=fabrikam,DC=com</container></executeData>
      <before source="org" sourcePath="name" destination="executeData"/>
      <before source="data" sourcePath="preferredDomainController" destination="executeData"/>
      <after source="executeData" sourcePath="org/path" destination="data" destinationPath="orgs" mode="insert"/>
    </execute>
    <execute namespace="Hosted Active Directory" procedure="CreateUser" impersonate="1">
      <forEach name="org" root="data" path="organizations/organization"/>
      <forEach name="user" root="org" path="user" ifNull="skip"/>
      <before template="LDAP://dc01.fabrikam.com/OU={{ org/name }},OU=Reseller,OU=Hosting,DC=fabrikam,DC=com" destination="executeData" destinationPath="container" mode="merge"/>
      <before source="user" destination="executeData" mode="merge"/>
      <before source="data" sourcePath="preferredDomainController" destination="executeData"/>
      <after source="executeData" sourcePath="user/path" destination="data" destinationPath="created" mode="insert"/>
    </execute>
    <execute namespace="Hosted Active Directory" procedure="CreateContact" impersonate="1">
      <executeData><container>LDAP://OU=Contoso,OU=Reseller,OU=Hosting,DC=fabrikam,DC=com</container><mail>partner@example.org</mail></executeData>
      <before source="data" sourcePath="name" destination="executeData" mode="move"/>
      <after source="executeData" sourcePath="contact/path" destination="data" destinationPath="contact" mode="merge"/>
    </execute>
  </procedure>
</request>
"#;

/// try inside try: the inner catch re-raises with SetError, the outer catch handles it.
const HMC_NESTED_TRY: &str = r#"<request>
  <data><org>LDAP://OU=Contoso,OU=Reseller,OU=Hosting,DC=fabrikam,DC=com</org></data>
  <procedure>
    <try>
      <try>
        <execute id="dup" namespace="Hosted Active Directory" procedure="CreateUser">
          <executeData><userPrincipalName>ann@contoso.com</userPrincipalName></executeData>
          <before source="data" sourcePath="org" destination="executeData" destinationPath="container" mode="merge"/>
        </execute>
      </try>
      <catch>
        <execute id="translate" namespace="Error Provider" procedure="SetError">
          <executeData><hr>0x82101391</hr></executeData>
          <before template="username already exists ({{ context/errorContext/@code }})" destination="executeData" destinationPath="desc" mode="merge"/>
        </execute>
      </catch>
    </try>
    <catch>
      <transform id="note">
        <before source="context" sourcePath="errorContext/@code" destination="data" destinationPath="outerCode" mode="merge"/>
        <before source="context" sourcePath="errorContext/@description" destination="data" destinationPath="outerDescription" mode="merge"/>
      </transform>
    </catch>
  </procedure>
</request>
"#;

/// A suspended and an active queued call, then a failure: the suspended job dies with the
/// transaction, the active one runs anyway.
const HMC_QUEUE_ROLLBACK: &str = r#"<request>
  <data/>
  <procedure>
    <queue id="parked" namespace="Hosted Active Directory" procedure="CreateUser" queueSuspended="1">
      <executeData><container>LDAP://OU=Contoso,OU=Reseller,OU=Hosting,DC=fabrikam,DC=com</container><userPrincipalName>carol@contoso.com</userPrincipalName></executeData>
    </queue>
    <queue id="active" namespace="Hosted Active Directory" procedure="CreateUser" queueSuspended="0">
      <executeData><container>LDAP://OU=Contoso,OU=Reseller,OU=Hosting,DC=fabrikam,DC=com</container><userPrincipalName>dave@contoso.com</userPrincipalName></executeData>
    </queue>
    <execute id="dup" namespace="Hosted Active Directory" procedure="CreateUser">
      <executeData><container>LDAP://OU=Contoso,OU=Reseller,OU=Hosting,DC=fabrikam,DC=com</container><userPrincipalName>ann@contoso.com</userPrincipalName></executeData>
    </execute>
  </procedure>
</request>
"#;

/// More HMC 4.5-style requests and the responses mps-semantics.md predicts: nested forEach
/// (§5: outer × inner, ifNull="skip" drops an organization without users), LDAP paths with
/// a server part kept in every path returned, `mode="move"` taking the field out of data
/// (§4), a try in a try whose inner catch re-raises and whose outer catch handles (§5), the
/// error stack of a failure in a nested procedure with no data in the response (§8), a
/// suspended queued call removed by the rollback and an active one run anyway (§5), and a
/// private procedure refused to a simple request (§6).
#[test]
fn more_hmc_requests_give_the_responses_mps_predicts() {
    let sb = Sandbox::new();
    let cfg = sb.write(
        "provisio.toml",
        "[providers.directory]\nbase_dn = \"DC=fabrikam,DC=com\"\n",
    );
    let cfg = cfg.to_str().unwrap();
    let run = |file: &str, text: &str| {
        let p = sb.write(file, text);
        sb.run(&["--config", cfg, "run", p.to_str().unwrap()])
    };
    let users = |sb: &Sandbox| {
        let p = sb.write(
            "contoso.xml",
            &FABRIKAM_SEARCH.replace(
                "AlpineSkiHouse,OU=ConsolidatedMessenger",
                "Contoso,OU=Reseller",
            ),
        );
        let r = sb.run(&["--config", cfg, "run", p.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{r:?}");
        let mut names: Vec<String> = r
            .stdout
            .split("<property name=\"userPrincipalName\">")
            .skip(1)
            .filter_map(|p| {
                p.split("<value>")
                    .nth(1)?
                    .split("</value>")
                    .next()
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        names
    };

    let r = run("nested.xml", HMC_NESTED);
    assert_eq!(r.code, 0, "{r:?}");
    let flat = r.stdout.replace(['\n', ' '], "");
    let server = "LDAP://dc01.fabrikam.com/";
    let created = format!(
        "<created><path>{server}CN=ann@contoso.com,OU=Contoso,OU=Reseller,OU=Hosting,DC=fabrikam,DC=com</path><path>{server}CN=bob@contoso.com,OU=Contoso,OU=Reseller,OU=Hosting,DC=fabrikam,DC=com</path><path>{server}CN=ann@litware.com,OU=Litware,OU=Reseller,OU=Hosting,DC=fabrikam,DC=com</path></created>"
    );
    assert!(flat.contains(&created), "{created}: {r:?}");
    assert!(
        flat.contains(&format!(
            "<path>{server}OU=Empty,OU=Reseller,OU=Hosting,DC=fabrikam,DC=com</path>"
        )),
        "{r:?}"
    );
    // moved: the contact got the name, data no longer has it
    assert!(
        r.stdout
            .contains("<contact>LDAP://CN=Outside Partner,OU=Contoso,"),
        "{r:?}"
    );
    assert!(!r.stdout.contains("<name>Outside Partner</name>"), "{r:?}");
    assert_eq!(users(&sb), ["ann@contoso.com", "bob@contoso.com"]);

    // The inner catch's error is the one the outer catch sees; the request commits.
    let r = run("nested-try.xml", HMC_NESTED_TRY);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("<outerCode>0x82101391</outerCode>"),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains("<outerDescription>username already exists (0x800700b7)</outerDescription>"),
        "{r:?}"
    );

    // A failure two levels down: the error stack leaf first, no data in the response; the
    // suspended job is removed, the active one waits and creates Dave.
    let r = run("queue.xml", HMC_QUEUE_ROLLBACK);
    assert_eq!(r.code, 1, "{r:?}");
    let stack = "<errorSource namespace=\"Managed Plans\" procedure=\"CreateCustomer\" step=\"dup/plans\"/>\n    <errorSource namespace=\"Hosted Active Directory\" procedure=\"CreateUser\" step=\"dup\"/>\n    <errorSource namespace=\"(request)\" procedure=\"request\"/>";
    assert!(r.stdout.contains(stack), "{r:?}");
    assert!(r.stdout.contains("code=\"0x800700b7\""), "{r:?}");
    assert!(!r.stdout.contains("<data>"), "{r:?}");
    assert!(
        r.stderr
            .contains("was removed: the transaction that queued it rolled back"),
        "{r:?}"
    );
    assert_eq!(users(&sb), ["ann@contoso.com", "bob@contoso.com"]);
    let w = sb.run(&["--config", cfg, "worker", "--drain"]);
    assert_eq!(w.code, 0, "{w:?}");
    assert!(w.stderr.contains("ran 1 job(s)"), "{w:?}");
    assert_eq!(
        users(&sb),
        ["ann@contoso.com", "bob@contoso.com", "dave@contoso.com"]
    );

    // Provisioning/CreateUserMailbox is private: a simple request is refused before it runs.
    let r = run(
        "private.xml",
        r#"<request namespace="Provisioning" procedure="CreateUserMailbox"><data><container>LDAP://OU=Contoso,OU=Reseller,OU=Hosting,DC=fabrikam,DC=com</container><userPrincipalName>ann@contoso.com</userPrincipalName></data></request>"#,
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("PRV0103"), "{r:?}");
}
