//! The MPS `queueContext` settings of a `queue` step through the binary: `provisio run`
//! of an XML request queues the job, `provisio worker --drain` runs it, and the daemon's
//! API shows what became of it — a child waiting for its parent (`parentQueue`) and dead
//! when its parent failed, `retryStopOnFailure` cutting the retries short (also across a
//! crash), responses kept or dropped (`retainSuccessfulResponses`, or the configured
//! default), and bad values refused naming the attribute.
//! The providers are the example Ledger and a tiny exec provider (written here) that fails
//! transiently with the HRESULT its call asks for.

use crate::daemon::{python, Site};
use serde_json::Value;

/// The exec provider `Flaky`: `Fail` appends a line to `$FLAKY_LOG` and fails, transient,
/// with the code given in `code`.
const FLAKY: &str = r#"
import json, os, sys
PROCS = [{"name": "Fail", "kind": "write", "undo": "reversible", "description": "fails",
          "inputs": [{"name": "code", "type": "string", "required": True}]}]
for line in sys.stdin:
    req = json.loads(line)
    m = req.get("method")
    if m == "describe":
        out = {"id": req["id"], "ok": True, "protocol": 1, "procedures": PROCS}
    elif m == "execute":
        with open(os.environ["FLAKY_LOG"], "a") as f:
            f.write("attempt\n")
        code = int((req.get("executeData") or {}).get("code", "2147500037"))
        out = {"id": req["id"], "ok": False,
               "error": {"code": code, "message": "flaky backend", "transient": True}}
    elif m == "recover":
        out = {"id": req["id"], "ok": True, "applied": False}
    elif m == "undo":
        out = {"id": req["id"], "ok": True}
    else:
        out = {"id": req["id"], "ok": False,
               "error": {"code": 2147500033, "message": "not implemented", "transient": False}}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"#;

const JOBS: &str = r#"
namespace: Jobs
procedures:
  Open:
    access: public
    inputs:
      name: { type: string, required: true }
    steps:
      open:
        call: Ledger Provider/CreateAccount
        with: { name: "{{ data.name }}", credit: 7 }
  Flaky:
    access: public
    inputs:
      code: { type: string, required: true }
    steps:
      fail:
        call: Flaky Provider/Fail
        with: { code: "{{ data.code }}" }
"#;

/// A site with the Ledger, the Flaky provider (no retries inside a transaction: each job
/// attempt is one call) and the `Jobs` namespace.
fn site() -> Site {
    let site = Site::new(0);
    std::fs::write(site.path("ns/jobs.yaml"), JOBS).expect("write ns");
    std::fs::write(site.path("flaky.py"), FLAKY).expect("write flaky");
    let mut config = std::fs::read_to_string(site.path("provisio.toml")).expect("config");
    config.push_str(&format!(
        "\n[[providers.exec]]\nname = \"Flaky\"\ncommand = [\"python3\", \"{}\"]\nenv = {{ FLAKY_LOG = \"{}\" }}\n\n[retry.providers.Flaky.calls]\nbudget = \"0s\"\n",
        site.path("flaky.py").display(),
        site.path("flaky.log").display()
    ));
    std::fs::write(site.path("provisio.toml"), config).expect("write config");
    site
}

/// A request queueing `Jobs/{procedure}` with `field` = `value` as its data, under
/// `context` (the inside of `<context>`); `queueSuspended="0"`.
fn request(context: &str, procedure: &str, field: &str, value: &str) -> String {
    format!(
        r#"<request>
  <context>{context}</context>
  <data><{field}>{value}</{field}></data>
  <procedure>
    <queue namespace="Jobs" procedure="{procedure}" queueSuspended="0">
      <before source="data" sourcePath="{field}" destination="executeData" destinationPath="{field}" mode="merge"/>
      <after source="context" sourcePath="queueContext/@queueId" destination="data" destinationPath="jobId" mode="merge"/>
    </queue>
  </procedure>
</request>
"#
    )
}

/// Runs `provisio run` of `xml`: (exit code, stdout, stderr).
fn run(site: &Site, name: &str, xml: &str) -> (i32, String, String) {
    let path = site.path(name);
    std::fs::write(&path, xml).expect("write request");
    site.run(&["run", path.to_str().unwrap()], &[])
}

/// Queues a job with `provisio run`: its id.
fn queue(site: &Site, name: &str, xml: &str) -> String {
    let (code, out, err) = run(site, name, xml);
    assert_eq!(code, 0, "{out}\n{err}");
    let start = out.find("<jobId>").expect("jobId") + "<jobId>".len();
    let end = out[start..].find("</jobId>").expect("end of jobId") + start;
    out[start..end].to_string()
}

fn drain(site: &Site) -> String {
    let (code, out, err) = site.run(&["worker", "--drain", "--workers", "1"], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    err
}

fn attempts_logged(site: &Site) -> usize {
    std::fs::read_to_string(site.path("flaky.log"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// The jobs as the daemon's API shows them, by id.
fn jobs(site: &Site, ids: &[&str]) -> Vec<Value> {
    let d = site.start();
    ids.iter().map(|id| d.final_state(id)).collect()
}

#[test]
fn a_child_runs_after_its_parent_and_dies_naming_a_parent_that_failed() {
    if !python() {
        return;
    }
    let site = site();
    let parent = queue(&site, "parent.xml", &request("", "Open", "name", "parent"));
    // The child would run first by priority (lower is sooner), but waits for its parent.
    let child = queue(
        &site,
        "child.xml",
        &request(
            &format!(
                r#"<queueContext priority="-100"><parentQueue queueId="{parent}"/></queueContext>"#
            ),
            "Open",
            "name",
            "child",
        ),
    );
    // A second parent that fails for good (the account exists by then), and its child.
    let doomed = queue(&site, "doomed.xml", &request("", "Open", "name", "parent"));
    let orphan = queue(
        &site,
        "orphan.xml",
        &request(
            &format!(r#"<queueContext><parentQueue queueID="{doomed}"/></queueContext>"#),
            "Open",
            "name",
            "orphan",
        ),
    );
    let out = drain(&site);
    assert!(out.contains("ran 3 job(s); 0 queued"), "{out}");
    assert!(out.contains("0 held, 1 dead"), "{out}");
    let names: Vec<String> = site.accounts().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["child".to_string(), "parent".to_string()]);
    let j = jobs(&site, &[&parent, &child, &doomed, &orphan]);
    let (p, c, d, o) = (&j[0], &j[1], &j[2], &j[3]);
    assert_eq!(p["state"], "succeeded", "{p}");
    assert_eq!(c["state"], "succeeded", "{c}");
    assert_eq!(c["parents"][0], parent.as_str(), "{c}");
    assert!(
        c["started_ms"].as_u64() >= p["finished_ms"].as_u64(),
        "the child started after its parent ended: {p}\n{c}"
    );
    assert_eq!(d["state"], "failed", "{d}");
    assert_eq!(o["state"], "dead", "{o}");
    let why = o["error"].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!("parent job `{doomed}` failed")),
        "{o}"
    );
    assert_eq!(o["attempts"], 0, "it never ran: {o}");
}

/// Four retries, no wait between attempts, failed (not dead) after the last, and one more
/// attempt only after a failure with 0x80070057.
const STOP_CONTEXT: &str = r#"<queueContext retryCount="4" retryInterval="0" retryType="fixed" onFailure="continue" retryStopOnFailure="0x80070057"/>"#;

#[test]
fn retry_stop_on_failure_allows_one_more_attempt_after_its_code() {
    if !python() {
        return;
    }
    let site = site();
    let context = STOP_CONTEXT;
    // Another code: every attempt (1 + retryCount).
    let other = queue(
        &site,
        "other.xml",
        &request(context, "Flaky", "code", "2147500037"),
    );
    let out = drain(&site);
    assert!(out.contains("ran 5 job(s)"), "{out}");
    assert_eq!(attempts_logged(&site), 5);
    // Its code (0x80070057 = 2147942487): one more attempt, then onFailure (failed).
    let stopped = queue(
        &site,
        "stop.xml",
        &request(context, "Flaky", "code", "2147942487"),
    );
    let out = drain(&site);
    assert!(out.contains("ran 2 job(s)"), "{out}");
    assert_eq!(attempts_logged(&site), 7);
    let j = jobs(&site, &[&other, &stopped]);
    assert_eq!(j[0]["state"], "failed", "{}", j[0]);
    assert_eq!(j[0]["attempts"], 5, "{}", j[0]);
    assert_eq!(j[1]["state"], "failed", "{}", j[1]);
    assert_eq!(j[1]["attempts"], 2, "{}", j[1]);
    assert_eq!(j[1]["max_attempts"], 2, "{}", j[1]);
}

/// A worker killed after the transient failure's rollback was journaled, before the
/// queue recorded the retry: the next worker settles the attempt from the journal with
/// the failure's code, so `retryStopOnFailure` still allows one more attempt only.
#[test]
fn retry_stop_on_failure_holds_across_a_crash_before_the_retry_was_recorded() {
    if !python() {
        return;
    }
    let site = site();
    let context = STOP_CONTEXT;
    let stopped = queue(
        &site,
        "stop.xml",
        &request(context, "Flaky", "code", "2147942487"),
    );
    // The worker's journal writes for the attempt: started, intent, failed, rolled back
    // (with the response); it aborts right after the 5th, the rolled-back state.
    let (code, out, err) = site.run(
        &["worker", "--drain", "--workers", "1"],
        &[("PROVISIO_CRASH_AT", "5"), ("PROVISIO_CRASH_WHEN", "after")],
    );
    assert_ne!(code, 0, "aborted at the crash point: {out}\n{err}");
    assert_eq!(attempts_logged(&site), 1, "{err}");
    drain(&site);
    let j = &jobs(&site, &[&stopped])[0];
    assert_eq!(j["state"], "failed", "{j}");
    // One more run after the coded failure (the restart's claim that settled the cut
    // attempt counts as an attempt of its own), not retryCount more.
    assert_eq!(j["transactions"].as_array().map(Vec::len), Some(2), "{j}");
    assert_eq!(j["attempts"], j["max_attempts"], "{j}");
    assert_eq!(attempts_logged(&site), 2);
}

#[test]
fn a_succeeded_job_keeps_its_response_unless_told_not_to() {
    if !python() {
        return;
    }
    let site = site();
    let kept = queue(&site, "kept.xml", &request("", "Open", "name", "kept"));
    let dropped = queue(
        &site,
        "dropped.xml",
        &request(
            r#"<queueContext retainSuccessfulResponses="0"/>"#,
            "Open",
            "name",
            "dropped",
        ),
    );
    let out = drain(&site);
    assert!(out.contains("ran 2 job(s)"), "{out}");
    let j = jobs(&site, &[&kept, &dropped]);
    assert_eq!(j[0]["state"], "succeeded", "{}", j[0]);
    assert_eq!(j[0]["response"]["status"], "committed", "{}", j[0]);
    assert_eq!(j[0]["response_retained"], true, "{}", j[0]);
    assert_eq!(j[1]["state"], "succeeded", "{}", j[1]);
    assert_eq!(j[1]["response_retained"], false, "{}", j[1]);
    assert!(j[1]["response"].is_null(), "{}", j[1]);
    // The work was done all the same.
    assert_eq!(site.accounts().len(), 2);
}

/// `serve.retain_successful_responses = false` (here `PROVISIO_RETAIN_SUCCESSFUL_RESPONSES`)
/// drops the response of a succeeded job whose request does not say; a request's own
/// `retainSuccessfulResponses="1"` still keeps it.
#[test]
fn the_configured_default_drops_responses_unless_the_request_keeps_them() {
    if !python() {
        return;
    }
    let site = site();
    let queue_dropping = |name: &str, xml: &str| {
        let path = site.path(name);
        std::fs::write(&path, xml).expect("write request");
        let (code, out, err) = site.run(
            &["run", path.to_str().unwrap()],
            &[("PROVISIO_RETAIN_SUCCESSFUL_RESPONSES", "false")],
        );
        assert_eq!(code, 0, "{out}\n{err}");
        let start = out.find("<jobId>").expect("jobId") + "<jobId>".len();
        let end = out[start..].find("</jobId>").expect("end of jobId") + start;
        out[start..end].to_string()
    };
    let silent = queue_dropping("silent.xml", &request("", "Open", "name", "silent"));
    let kept = queue_dropping(
        "kept.xml",
        &request(
            r#"<queueContext retainSuccessfulResponses="1"/>"#,
            "Open",
            "name",
            "kept",
        ),
    );
    let out = drain(&site);
    assert!(out.contains("ran 2 job(s)"), "{out}");
    let j = jobs(&site, &[&silent, &kept]);
    assert_eq!(j[0]["state"], "succeeded", "{}", j[0]);
    assert_eq!(j[0]["response_retained"], false, "{}", j[0]);
    assert!(j[0]["response"].is_null(), "{}", j[0]);
    assert_eq!(j[1]["response_retained"], true, "{}", j[1]);
    assert_eq!(j[1]["response"]["status"], "committed", "{}", j[1]);
}

#[test]
fn bad_queue_context_values_and_unknown_parents_are_refused_naming_the_field() {
    if !python() {
        return;
    }
    let site = site();
    for (context, says) in [
        (
            r#"<queueContext><parentQueue queueId="0190aaaa-0000-7000-8000-000000000000"/></queueContext>"#,
            "context/queueContext/parentQueue/@queueId `0190aaaa-0000-7000-8000-000000000000` names no job in the queue",
        ),
        (
            r#"<queueContext retryType="sometimes"/>"#,
            "context/queueContext/@retryType `sometimes` is not one of fixed, linear, exponential",
        ),
        (
            r#"<queueContext retryStopOnFailure="0xZZ"/>"#,
            "context/queueContext/@retryStopOnFailure `0xZZ` is not an HRESULT",
        ),
        (
            r#"<queueContext retainSuccessfulResponses="maybe"/>"#,
            "context/queueContext/@retainSuccessfulResponses `maybe` is not a boolean",
        ),
    ] {
        let (code, out, err) = run(&site, "bad.xml", &request(context, "Open", "name", "x"));
        assert_eq!(code, 1, "{context}: {out}\n{err}");
        assert!(
            err.contains(says) || out.contains(says),
            "{context}: {out}\n{err}"
        );
    }
    let out = drain(&site);
    assert!(out.contains("ran 0 job(s)"), "nothing was queued: {out}");
}
