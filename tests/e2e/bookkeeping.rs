//! The bookkeeping providers through the binary, with no server and no configuration: the
//! Exchange 2007 Resource Manager and Managed Plans keep their records in the data
//! folder's provider state across runs; a request that allocates an organization and
//! mailboxes and then fails leaves the stores as free as before; a user beyond the plan's
//! count is refused with the plan and the limit named.

use crate::util::Sandbox;
use serde_json::Value;

const SETUP: &str = r#"procedure:
  steps:
    stores:
      call: Exchange 2007 Resource Manager/AddExchangeResources
      with:
        mailStores:
          mailStore:
            - { serverName: mail1, mailStoreName: DB01, megabytes: 100 }
            - { serverName: mail1, mailStoreName: DB02, megabytes: 50 }
    service: { call: Managed Plans/AddService, with: { serviceName: HostedEmail } }
    plan:
      needs: [service]
      call: Managed Plans/CreatePlan
      with: { planName: Gold, services: { service: HostedEmail }, limits: { maxUsers: 1, mailboxQuotaKB: 2048 } }
    org:
      needs: [plan]
      call: Managed Plans/CreateCustomer
      with: { customerName: Fabrikam, planName: Gold }
"#;

/// Space for the organization, two mailboxes, the first user; then the mail server
/// "refuses" and everything is undone.
const ALLOCATE_THEN_FAIL: &str = r#"data: { org: Fabrikam }
procedure:
  steps:
    space:
      call: Exchange 2007 Resource Manager/AllocateOrganization
      with: { organization: "{{ data.org }}", megabytes: 60, algorithm: level }
    quota:
      call: Managed Plans/CheckPlanLimit
      with: { customerName: "{{ data.org }}", limit: mailboxQuotaKB, amount: 2048 }
    ann:
      needs: [space, quota]
      call: Exchange 2007 Resource Manager/AllocateMailbox
      with: { organization: "{{ data.org }}", mailbox: ann, kilobytes: 2048 }
      output: { annStore: "{{ executeData.mailStore.mailStoreName }}" }
    bob:
      needs: [ann]
      call: Exchange 2007 Resource Manager/AllocateMailbox
      with: { organization: "{{ data.org }}", mailbox: bob, kilobytes: 1024, mailStore: { algorithm: tightPack } }
    user:
      needs: [bob]
      call: Managed Plans/CreateCustomer
      with: { customerName: ann, type: user, parent: "{{ data.org }}" }
    refused:
      needs: [user]
      call: Error Provider/SetError
      with: { hr: "0x80004005", desc: the mail server refused the mailbox }
"#;

const QUERY: &str = r#"procedure:
  type: read
  steps:
    stores:
      call: Exchange 2007 Resource Manager/QueryAllStores
      output: { stores: "{{ executeData.mailStores }}" }
"#;

fn json(r: &crate::util::Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

/// (store, megabytes, megabytesFree) as QueryAllStores reports them.
fn free(sb: &Sandbox, none: &str) -> Vec<(String, String, String)> {
    let q = sb.write("query.yaml", QUERY);
    let r = sb.run_with(
        &["run", q.to_str().unwrap(), "--output", "json", "--quiet"],
        std::path::Path::new(none),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let doc = json(&r);
    let list = &doc["data"]["stores"]["mailStore"];
    list.as_array()
        .unwrap_or_else(|| panic!("{doc}"))
        .iter()
        .map(|s| {
            let t = |k: &str| s[k].as_str().unwrap_or_default().to_string();
            (t("mailStoreName"), t("megabytes"), t("megabytesFree"))
        })
        .collect()
}

#[test]
fn allocations_roll_back_and_a_plan_limit_refuses() {
    let sb = Sandbox::new();
    // The providers' built-in namespaces are enough: an empty namespace folder.
    let none = sb.path("none");
    std::fs::create_dir_all(&none).expect("mkdir");
    let none = none.to_str().unwrap().to_string();
    let run = |name: &str, text: &str| {
        let req = sb.write(name, text);
        sb.run_with(
            &["run", req.to_str().unwrap(), "--output", "json", "--quiet"],
            std::path::Path::new(&none),
        )
    };
    let r = run("setup.yaml", SETUP);
    assert_eq!(r.code, 0, "{r:?}");
    let empty = vec![
        ("DB01".to_string(), "100".to_string(), "100".to_string()),
        ("DB02".to_string(), "50".to_string(), "50".to_string()),
    ];
    assert_eq!(free(&sb, &none), empty);

    let r = run("allocate.yaml", ALLOCATE_THEN_FAIL);
    assert_eq!(r.code, 1, "{r:?}");
    let doc = json(&r);
    assert_eq!(doc["status"], "rolled_back", "{doc}");
    assert_eq!(
        doc["error"]["description"], "the mail server refused the mailbox",
        "{doc}"
    );
    // Everything the request granted and charged is free again.
    assert_eq!(free(&sb, &none), empty);

    // The same without the failure commits: level spreads 60 MB as 30 + 30.
    let ok = ALLOCATE_THEN_FAIL.replace(
        "    refused:\n      needs: [user]\n      call: Error Provider/SetError\n      with: { hr: \"0x80004005\", desc: the mail server refused the mailbox }\n",
        "",
    );
    let r = run("allocate-ok.yaml", &ok);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(json(&r)["data"]["annStore"], "DB01", "{r:?}");
    assert_eq!(
        free(&sb, &none),
        vec![
            ("DB01".to_string(), "100".to_string(), "70".to_string()),
            ("DB02".to_string(), "50".to_string(), "20".to_string()),
        ]
    );

    // Plan Gold allows one user: a second is refused before anything is created.
    let second = r#"procedure:
  steps:
    user:
      call: Managed Plans/CreateCustomer
      with: { customerName: bob, type: user, parent: Fabrikam }
    mailbox:
      needs: [user]
      call: Exchange 2007 Resource Manager/AllocateMailbox
      with: { organization: Fabrikam, mailbox: carl, kilobytes: 1024 }
"#;
    let r = run("second.yaml", second);
    assert_eq!(r.code, 1, "{r:?}");
    let doc = json(&r);
    assert_eq!(doc["error"]["code"], "0x80041102", "{doc}");
    assert_eq!(
        doc["error"]["description"], "plan Gold allows 1 users; organization Fabrikam has 1",
        "{doc}"
    );
    assert_eq!(doc["error"]["sources"][0]["namespace"], "Managed Plans");
    // A quota above the plan's is refused with the plan and the limit named.
    let quota = r#"procedure:
  steps:
    quota:
      call: Managed Plans/CheckPlanLimit
      with: { customerName: Fabrikam, limit: mailboxQuotaKB, amount: 4096 }
"#;
    let r = run("quota.yaml", quota);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        json(&r)["error"]["description"],
        "plan Gold allows mailboxQuotaKB up to 2048; organization Fabrikam asks for 4096"
    );
    // A store that does not exist is named.
    let pinned = r#"procedure:
  steps:
    mailbox:
      call: Exchange 2007 Resource Manager/AllocateMailbox
      with: { organization: Fabrikam, mailbox: dan, kilobytes: 10, mailStore: { serverName: mail9, mailStoreName: DB09 } }
"#;
    let r = run("pinned.yaml", pinned);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        json(&r)["error"]["description"],
        "mail store mail9/DB09 does not exist (AddExchangeResources registers it)"
    );
}
