//! `provisio serve` and who a request runs as: the token's identity replaces a client's
//! `context/securityContext` (in every item of a batch, as the worker runs it), and a
//! trusted request is checked step by step — each procedure its body calls needs the
//! execute right a call by name would need, a private one an explicit grant — before
//! anything runs.

use crate::daemon::{python, sha, Site, ALICE};
use serde_json::Value;

const CAROL: &str = "carol-token-0123456789";
const TINA: &str = "tina-token-0123456789";
const TOM: &str = "tom-token-0123456789";

/// Procedures without a provider: WhoAmI copies `context/securityContext` into `data/who`.
const IDENTITY: &str = r#"
namespace: Identity
procedures:
  WhoAmI:
    access: public
    steps:
      who:
        before:
          - { source: context, sourcePath: securityContext, destination: data, destinationPath: who, mode: merge, ifNull: ignore }
  Open:
    access: public
    steps:
      mark:
        before:
          - { template: "open", destination: data, destinationPath: mark, mode: merge }
  Secret:
    access: private
    steps:
      mark:
        before:
          - { template: "secret", destination: data, destinationPath: mark, mode: merge }
"#;

fn site() -> Site {
    let site = Site::new(0);
    std::fs::write(site.path("ns/identity.yaml"), IDENTITY).expect("write ns");
    let extra = format!(
        r#"
[[serve.tokens]]
subject = "carol"
sha256 = "{}"
groups = ["sales", "emea"]

[[serve.tokens]]
subject = "tina"
sha256 = "{}"
trusted = true

[[serve.tokens]]
subject = "tom"
sha256 = "{}"
trusted = true
allow = ["Identity/WhoAmI"]

[[serve.acl]]
namespace = "Billing"
execute = ["group:sales"]

[[serve.acl]]
namespace = "Billing"
procedure = "Internal"
execute = ["tina"]
"#,
        sha(CAROL),
        sha(TINA),
        sha(TOM)
    );
    let mut text = std::fs::read_to_string(site.path("provisio.toml")).expect("config");
    text.push_str(&extra);
    std::fs::write(site.path("provisio.toml"), text).expect("config");
    site
}

#[test]
fn the_tokens_identity_replaces_a_clients_security_context_in_every_item() {
    if !python() {
        return;
    }
    let site = site();
    let d = site.start();
    let forged = "call: Identity/WhoAmI\ncontext:\n  securityContext:\n    subject: root\n    group: admins\n";
    let a = d.submit(CAROL, forged, "?wait=20s", &[]);
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.body["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("securityContext")),
        "{a:?}"
    );
    let who = &a.body["response"]["data"]["who"];
    assert_eq!(who["subject"], "carol", "{a:?}");
    assert_eq!(who["group"], serde_json::json!(["sales", "emea"]), "{a:?}");
    // Without a securityContext of its own: the identity is there too, and no warning.
    let a = d.submit(ALICE, "call: Identity/WhoAmI\n", "?wait=20s", &[]);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["warnings"], serde_json::json!([]), "{a:?}");
    assert_eq!(a.body["response"]["data"]["who"]["subject"], "alice");
    // A batch: every item runs as the token's subject.
    let batch = "call: Identity/WhoAmI\ncontext:\n  securityContext:\n    subject: root\nbatch:\n  - data: { n: 1 }\n  - data: { n: 2 }\n";
    let a = d.submit(CAROL, batch, "?wait=20s", &[]);
    assert_eq!(a.status, 200, "{a:?}");
    let items = a.body["batch"].as_array().expect("batch");
    assert_eq!(items.len(), 2, "{a:?}");
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["response"]["data"]["n"], i as u64 + 1, "{a:?}");
        assert_eq!(item["response"]["data"]["who"]["subject"], "carol", "{a:?}");
    }
}

#[test]
fn a_trusted_request_is_checked_step_by_step_before_anything_runs() {
    if !python() {
        return;
    }
    let site = site();
    let d = site.start();
    let trusted = |steps: &str| format!("procedure:\n  steps:\n{steps}");
    let refused = |token: &str, body: &str, code: &str, names: &[&str]| {
        let a = d.submit(token, &trusted(body), "?wait=20s", &[]);
        assert_eq!(
            (a.status, a.body["code"].as_str()),
            (403, Some(code)),
            "{a:?}"
        );
        let message = a.body["message"].as_str().unwrap_or_default();
        for n in names {
            assert!(message.contains(n), "{n} not named: {a:?}");
        }
        let list = d.request("GET", "/v1/requests", Some(token), None, &[]);
        assert_eq!(list.body["items"], Value::Array(vec![]), "queued: {list:?}");
    };
    // tina may send trusted requests but has no execute right on Billing (only group sales).
    refused(
        TINA,
        "    first:\n      call: Identity/WhoAmI\n    open:\n      call: Billing/OpenCustomer\n      with: { customer: zed }\n",
        "acl_denied",
        &["`open`", "Billing/OpenCustomer", "tina"],
    );
    // A private procedure needs an explicit grant, also deep in a try block.
    refused(
        TINA,
        "    guarded:\n      try:\n        inner:\n          call: Identity/Secret\n      catch:\n        noop:\n          executeData: { kind: transform }\n",
        "private_procedure",
        &["`inner`", "Identity/Secret"],
    );
    // tom's allow list names one procedure: the others are refused, private ones too.
    refused(
        TOM,
        "    x:\n      call: Identity/Open\n",
        "procedure_forbidden",
        &["`x`", "Identity/Open"],
    );
    refused(
        TOM,
        "    x:\n      call: Identity/Secret\n",
        "private_procedure",
        &["Identity/Secret"],
    );
    assert_eq!(site.accounts(), vec![], "nothing ran");
    // What the ACLs grant runs: tina's explicit right on the private Billing/Internal.
    let a = d.submit(
        TINA,
        &trusted("    x:\n      call: Billing/Internal\n"),
        "?wait=20s",
        &[],
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["outcome"], "committed", "{a:?}");
    assert_eq!(site.accounts(), vec![("internal".to_string(), 0)]);
    let a = d.submit(
        TOM,
        &trusted("    x:\n      call: Identity/WhoAmI\n"),
        "?wait=20s",
        &[],
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["outcome"], "committed", "{a:?}");
}
