//! `provisio serve` and its queue across restarts and operator actions: the response of a
//! job settled by recovery, held jobs of `queue` steps, a dead job holding its
//! serialization key's line, metrics that survive a restart, and the MPS `queue` step
//! submitted over HTTP.

use crate::daemon::{python, Site, ALICE};
use std::time::Duration;

/// A resumable procedure on the example Ledger provider: after a crash, recovery finishes
/// it (resumes to its commit) instead of rolling it back.
const RESUME: &str = r#"
namespace: Resume
procedures:
  Open:
    access: public
    resumable: true
    parallel: false
    inputs:
      customer: { type: string, required: true }
    steps:
      open:
        call: Ledger Provider/CreateAccount
        with: { name: "{{ data.customer }}", credit: 1000 }
      bonus:
        call: Ledger Provider/Credit
        with: { name: "{{ data.customer }}", amount: 500 }
      loyalty:
        call: Ledger Provider/Credit
        with: { name: "{{ data.customer }}", amount: 1 }
"#;

#[test]
fn a_job_settled_by_recovery_answers_with_a_response_rebuilt_from_the_journal() {
    if !python() {
        return;
    }
    let site = Site::new(600);
    std::fs::write(site.path("ns/resume.yaml"), RESUME).expect("write ns");
    let mut d = site.start();
    let a = d.submit(
        ALICE,
        "call: Resume/Open\ndata: { customer: rae }\n",
        "",
        &[],
    );
    assert_eq!(a.status, 202, "{a:?}");
    let id = a.body["id"].as_str().unwrap().to_string();
    d.running_step(&id);
    d.signal("-KILL");
    assert_eq!(
        d.exit(Duration::from_secs(10)),
        None,
        "killed by the signal"
    );
    drop(d);
    let site = site.configure(0);
    let d = site.start();
    let done = d.final_state(&id);
    assert_eq!(done["state"], "succeeded", "{done}");
    let txns = done["transactions"].as_array().unwrap();
    assert_eq!(txns.len(), 1, "resumed, not run again: {done}");
    let response = &done["response"];
    assert_eq!(response["transactionId"], txns[0], "{done}");
    assert_eq!(response["status"], "committed", "{done}");
    assert!(response["rebuiltFromJournal"].is_string(), "{done}");
    assert!(response["calls"].as_u64().unwrap() >= 1, "{done}");
    assert_eq!(site.accounts(), vec![("rae".to_string(), 1501)]);
}
