//! `provisio serve` and its queue across restarts and operator actions: the response of a
//! job settled after a crash (journaled with the commit: what a waiting client was told),
//! held jobs of `queue` steps, a dead job holding its
//! serialization key's line, metrics that survive a restart, and the MPS `queue` step
//! submitted over HTTP.

use crate::daemon::{customer, python, Daemon, Site, ALICE, OPS};
use std::time::{Duration, Instant};

/// A resumable procedure on the example Ledger provider: after a crash, recovery finishes
/// it (resumes to its commit) instead of rolling it back.
pub(crate) const RESUME: &str = r#"
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
fn a_job_resumed_by_recovery_answers_with_the_response_of_the_resumed_run() {
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
    // Recovery resumed the transaction to its commit with a journal that keeps responses:
    // the job answers with the response the resumed run ended with, final data included.
    let response = &done["response"];
    assert_eq!(response["transactionId"], txns[0], "{done}");
    assert_eq!(response["status"], "committed", "{done}");
    assert_eq!(response["data"]["customer"], "rae", "{done}");
    assert_eq!(response["requestFormat"], "yaml", "{done}");
    assert!(response.get("rebuiltFromJournal").is_none(), "{done}");
    assert_eq!(site.accounts(), vec![("rae".to_string(), 1501)]);
}

#[test]
fn a_daemon_killed_right_after_a_commit_answers_with_the_response_the_run_ended_with() {
    if !python() {
        return;
    }
    let site = Site::new(0);
    // Aborts right after alice's journal synced its 8th write: the commit of the first
    // transaction (started, 3 x intent + done, committed), before the queue records how
    // the job ended.
    let mut d = site.start_with(&[("PROVISIO_CRASH_AT", "8"), ("PROVISIO_CRASH_WHEN", "after")]);
    let a = d.submit(ALICE, &customer("ada"), "", &[]);
    assert_eq!(a.status, 202, "{a:?}");
    let id = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        d.exit(Duration::from_secs(30)),
        None,
        "aborted at the crash point"
    );
    drop(d);
    let d = site.start();
    let done = d.final_state(&id);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["transactions"].as_array().unwrap().len(), 1, "{done}");
    let response = &done["response"];
    assert_eq!(response["status"], "committed", "{done}");
    assert_eq!(
        response["data"]["customer"], "ada",
        "the final data: {done}"
    );
    assert_eq!(response["calls"], 3, "{done}");
    assert_eq!(response["requestFormat"], "yaml", "{done}");
    assert!(response.get("rebuiltFromJournal").is_none(), "{done}");
    assert_eq!(site.accounts(), vec![("ada".to_string(), 1501)]);
}

/// A waiting request is queued and claimed in one write that is not synced of its own (it
/// rides on its transaction's first durable record), and its finish is not synced either:
/// a crash right after the commit, before the queue recorded the end, leaves a job that
/// settles at the restart from the journal, once, and never runs again.
#[test]
fn a_waiting_request_killed_right_after_its_commit_settles_once_at_the_restart() {
    if !python() {
        return;
    }
    let site = Site::new(0);
    // Aborts right after alice's journal synced its 8th write: the commit of the first
    // transaction (started, 3 x intent + done, committed), before the queue records how
    // the job ended (and before the waiting client is answered).
    let mut d = site.start_with(&[("PROVISIO_CRASH_AT", "8"), ("PROVISIO_CRASH_WHEN", "after")]);
    // The daemon dies under the waiting client: no answer (the connection drops).
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let answer = agent
        .post(&format!("{}/v1/requests?wait=30s", d.url))
        .header("Authorization", &format!("Bearer {ALICE}"))
        .content_type("application/yaml")
        .send(customer("cid").as_bytes());
    assert!(
        !matches!(&answer, Ok(r) if r.status().as_u16() == 200),
        "answered before the crash point"
    );
    assert_eq!(
        d.exit(Duration::from_secs(30)),
        None,
        "aborted at the crash point"
    );
    drop(d);
    let d = site.start();
    let listed = d.request("GET", "/v1/requests?limit=10", Some(ALICE), None, &[]);
    let jobs = listed.body["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(jobs.len(), 1, "the job is on disk: {listed:?}");
    let id = jobs[0]["id"].as_str().unwrap().to_string();
    let done = d.final_state(&id);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        done["transactions"].as_array().unwrap().len(),
        1,
        "settled, not run again: {done}"
    );
    assert_eq!(done["response"]["status"], "committed", "{done}");
    assert_eq!(site.accounts(), vec![("cid".to_string(), 1501)]);
}

#[test]
fn what_a_waiting_client_was_told_is_what_the_daemon_says_after_kill_9() {
    if !python() {
        return;
    }
    let site = Site::new(0);
    let mut d = site.start();
    let a = d.submit(ALICE, &customer("bea"), "?wait=30s", &[]);
    assert_eq!(a.status, 200, "{a:?}");
    // Killed at once: how the queue recorded the job's end may not have reached the disk.
    d.signal("-KILL");
    assert_eq!(
        d.exit(Duration::from_secs(10)),
        None,
        "killed by the signal"
    );
    drop(d);
    let id = a.body["id"].as_str().unwrap().to_string();
    let d = site.start();
    let done = d.final_state(&id);
    assert_eq!(done["state"], a.body["state"], "{done}");
    assert_eq!(done["response"], a.body["response"], "{done}");
    assert_eq!(a.body["response"]["data"]["customer"], "bea", "{a:?}");
    assert_eq!(site.accounts(), vec![("bea".to_string(), 1501)]);
}

/// Procedures with an MPS `queue` step (suspended: held for the transaction), then a
/// step that takes a while, or one that fails.
const QUEUEING: &str = r#"
namespace: Queueing
procedures:
  Later:
    access: public
    parallel: false
    inputs:
      customer: { type: string, required: true }
    steps:
      queued:
        call: Billing/OpenCustomer
        queue: suspended
        with: { customer: "{{ data.customer }}" }
        after:
          - { source: context, sourcePath: queueContext/@queueId, destination: data, destinationPath: jobId, mode: merge }
      who:
        call: Queueing/Who
        queue: active
        with: { asked: "{{ data.customer }}" }
      slow:
        call: Ledger Provider/CreateAccount
        with: { name: "{{ data.customer }}-marker", credit: 1 }
  Who:
    access: public
    steps:
      who:
        before:
          - { source: context, sourcePath: securityContext, destination: data, destinationPath: who, mode: merge, ifNull: ignore }
  LaterThenFail:
    access: public
    parallel: false
    inputs:
      customer: { type: string, required: true }
    steps:
      queued:
        call: Billing/OpenCustomer
        queue: suspended
        with: { customer: "{{ data.customer }}" }
      slow:
        call: Ledger Provider/CreateAccount
        with: { name: "{{ data.customer }}-marker", credit: 1 }
      fail:
        call: Ledger Provider/Credit
        with: { name: nobody, amount: 1 }
"#;

/// The id of the one job `token` sees held, once there is one.
fn held_job(d: &Daemon, token: &str) -> String {
    let start = Instant::now();
    loop {
        let a = d.request("GET", "/v1/requests?state=held", Some(token), None, &[]);
        assert_eq!(a.status, 200, "{a:?}");
        if let Some(job) = a.body["items"].as_array().and_then(|i| i.first()) {
            assert_eq!(job["state"], "held", "{a:?}");
            assert_eq!(job["target"], "Billing/OpenCustomer", "{a:?}");
            return job["id"].as_str().unwrap().to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no held job: {a:?}\n{}",
            d.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_queue_step_sent_over_http_holds_its_job_until_the_commit_then_runs_it_apart() {
    if !python() {
        return;
    }
    let site = Site::new(500);
    std::fs::write(site.path("ns/queueing.yaml"), QUEUEING).expect("write ns");
    let d = site.start();
    let a = d.submit(
        ALICE,
        "call: Queueing/Later\ndata: { customer: quinn }\n",
        "",
        &[],
    );
    assert_eq!(a.status, 202, "{a:?}");
    let submitter = a.body["id"].as_str().unwrap().to_string();
    let held = held_job(&d, ALICE);
    // Held while its transaction runs: counted apart from the queued jobs.
    let m = d.request("GET", "/v1/metrics", Some(ALICE), None, &[]);
    let text = m.body.as_str().unwrap_or_default().to_string();
    assert!(text.contains("provisio_jobs{state=\"held\"} 1"), "{text}");
    let done = d.final_state(&submitter);
    assert_eq!(done["outcome"], "committed", "{done}");
    assert_eq!(done["response"]["data"]["jobId"], held.as_str(), "{done}");
    // Released by the commit, it runs as a transaction of its own.
    let job = d.final_state(&held);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["subject"], "alice", "{job}");
    assert_ne!(job["transactions"][0], done["transactions"][0], "{job}");
    assert_eq!(
        site.accounts(),
        vec![("quinn".to_string(), 1501), ("quinn-marker".to_string(), 1)]
    );
    // A queued job runs with the identity of the request that queued it.
    let list = d.request(
        "GET",
        "/v1/requests?procedure=Queueing/Who",
        Some(ALICE),
        None,
        &[],
    );
    let who = list.body["items"][0]["id"]
        .as_str()
        .expect("the Who job")
        .to_string();
    let who = d.final_state(&who);
    assert_eq!(who["response"]["data"]["who"]["subject"], "alice", "{who}");

    // A submitter that rolls back: its held job is removed, never run.
    let a = d.submit(
        ALICE,
        "call: Queueing/LaterThenFail\ndata: { customer: rita }\n",
        "",
        &[],
    );
    let failing = a.body["id"].as_str().unwrap().to_string();
    let held = held_job(&d, ALICE);
    let done = d.final_state(&failing);
    assert_eq!(done["outcome"], "rolled_back", "{done}");
    let gone = d.status(ALICE, &held);
    assert_eq!(gone.status, 404, "{gone:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        site.accounts()
            .iter()
            .all(|(name, _)| !name.starts_with("rita")),
        "{:?}",
        site.accounts()
    );
    let m = d.request("GET", "/v1/metrics", Some(ALICE), None, &[]);
    let text = m.body.as_str().unwrap_or_default().to_string();
    assert!(text.contains("provisio_jobs{state=\"held\"} 0"), "{text}");
    // Only a dead job can be discarded, and only by an operator.
    let a = d.request(
        "POST",
        &format!("/v1/jobs/{submitter}/discard"),
        Some(ALICE),
        None,
        &[],
    );
    assert_eq!(
        (a.status, a.body["code"].as_str()),
        (403, Some("operator_only")),
        "{a:?}"
    );
    let a = d.request(
        "POST",
        &format!("/v1/jobs/{submitter}/discard"),
        Some(OPS),
        None,
        &[],
    );
    assert_eq!(
        (a.status, a.body["code"].as_str()),
        (409, Some("wrong_state")),
        "{a:?}"
    );
}

#[test]
fn request_totals_survive_a_restart() {
    if !python() {
        return;
    }
    let site = Site::new(0);
    let d = site.start();
    for name in ["sam", "sue"] {
        let a = d.submit(ALICE, &customer(name), "?wait=20s", &[]);
        assert_eq!(a.status, 200, "{a:?}");
    }
    let mut d = d;
    d.signal("-TERM");
    assert_eq!(d.exit(Duration::from_secs(20)), Some(0));
    drop(d);
    let d = site.start();
    let m = d.request("GET", "/v1/metrics", Some(ALICE), None, &[]);
    let text = m.body.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains("provisio_requests_submitted_total 2"),
        "{text}"
    );
    assert!(
        text.contains("provisio_requests_total{state=\"succeeded\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("provisio_jobs{state=\"succeeded\"} 2"),
        "{text}"
    );
}

/// A procedure that calls no provider: done at once.
const QUICK: &str = r#"
namespace: Quick
procedures:
  Mark:
    access: public
    steps:
      mark:
        before:
          - { template: "done", destination: data, destinationPath: mark, mode: merge }
"#;

#[test]
fn a_waiting_submission_lends_the_pool_a_worker() {
    if !python() {
        return;
    }
    // One worker, busy with a slow request (3 calls of 3 s each).
    let site = Site::new(3000);
    std::fs::write(site.path("ns/quick.yaml"), QUICK).expect("write ns");
    let config = std::fs::read_to_string(site.path("provisio.toml")).expect("config");
    std::fs::write(
        site.path("provisio.toml"),
        config.replace("workers = 2", "workers = 1"),
    )
    .expect("config");
    let d = site.start();
    let slow = d.submit(ALICE, &customer("sid"), "", &[]);
    let slow = slow.body["id"].as_str().unwrap().to_string();
    d.running_step(&slow);
    // A waited-for request is not queued behind it: it finishes while the slow one runs.
    let a = d.submit(ALICE, "call: Quick/Mark\n", "?wait=6s", &[]);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["response"]["data"]["mark"], "done", "{a:?}");
    assert_eq!(d.status(ALICE, &slow).body["state"], "running");
    let done = d.final_state(&slow);
    assert_eq!(done["outcome"], "committed", "{done}");
}

#[test]
fn a_delay_is_not_capped_like_a_wait() {
    if !python() {
        return;
    }
    let site = Site::new(0);
    let d = site.start();
    let a = d.submit(ALICE, &customer("dee"), "?delay=2h", &[]);
    assert_eq!(a.status, 202, "{a:?}");
    let id = a.body["id"].as_str().unwrap();
    let s = d.status(ALICE, id);
    let ahead =
        s.body["not_before_ms"].as_u64().unwrap() - s.body["submitted_ms"].as_u64().unwrap();
    assert!((7_199_000..=7_201_000).contains(&ahead), "{s:?}");
    assert_eq!(s.body["state"], "queued", "{s:?}");
}

/// A runner that stalls past its lease before its heartbeats start (here a failpoint pauses
/// the first runner 5 s against a 3 s lease): the job is taken back and claimed again in the
/// same process while the first runner is still in it, and the first runner wakes while the
/// second claim's run would still be going (each Ledger call takes 1.5 s). The second
/// claim leaves the job to the first runner instead of running its transaction a second
/// time, concurrently; the job ends once, with one transaction, and the provider's work is
/// done once.
#[test]
fn a_job_claimed_again_while_its_stalled_runner_is_still_in_it_runs_once() {
    if !python() {
        return;
    }
    let site = Site::new(1500);
    let d = site.start_with(&[("PROVISIO_FAIL_PAUSE_RUN_JOB_MS", "5000")]);
    let a = d.submit(ALICE, &customer("eve"), "", &[]);
    assert_eq!(a.status, 202, "{a:?}");
    let id = a.body["id"].as_str().unwrap().to_string();
    let done = d.final_state(&id);
    let log = d.log.lock().unwrap().clone();
    assert_eq!(done["state"], "succeeded", "{done}\n{log}");
    assert_eq!(
        done["transactions"].as_array().map(Vec::len),
        Some(1),
        "{done}"
    );
    assert_eq!(site.accounts(), vec![("eve".to_string(), 1501)], "{log}");
    // The first runner ends after the job did (its settle is refused as stale): its
    // transaction's journal is whole, written by one run (two runs interleaved their
    // records and compactions: one commit each, the intents of neither).
    std::thread::sleep(Duration::from_secs(6));
    let txn = done["transactions"][0].as_str().unwrap();
    let t = d.request(
        "GET",
        &format!("/v1/transactions/{txn}"),
        Some(OPS),
        None,
        &[],
    );
    assert_eq!(t.status, 200, "{t:?}");
    let records = t.body["records"].as_array().cloned().unwrap_or_default();
    let commits = records
        .iter()
        .filter(|r| r["type"] == "state" && r["state"] == "committed")
        .count();
    assert_eq!(commits, 1, "{t:?}");
    let intents = records.iter().filter(|r| r["type"] == "intent").count();
    assert_eq!(intents, 3, "{t:?}");
    let log = d.log.lock().unwrap().clone();
    assert!(
        log.contains("another runner of this process is still in this job"),
        "the job was claimed again while its first runner stalled:\n{log}"
    );
}

/// A site with a one-folder procedure on the filesystem provider, whose daemon is aborted
/// right after its journal synced write `n` (of four: started, intent, done, committed)
/// of the first job, then started again: the job's final state, and the filesystem
/// provider's intent files left once it settled.
///
/// The folder is made by a copy (MPS CopyDirectory of `template`): a procedure that keeps
/// its intent marker in the provider's own file (`.provisio-state/pending`), which the
/// crash leaves and the restart must remove. CreateFolder keeps its marker in the engine's
/// journal instead and leaves no such file (`a_daemon_killed_in_a_create_folder_leaves_no_intent_file`).
fn folder_job_killed_at(n: u32) -> (serde_json::Value, Vec<String>) {
    let site = folders_site(
        r#"call: Filesystem Provider/CopyDirectory
        with:
          dirName: template
          newName: "{{ data.name }}"
          sourcePath: { "@path": "." }
          destPath: { "@path": "." }"#,
    );
    std::fs::create_dir_all(site.path("data/files/template")).expect("the copy's source");
    let (done, after_crash, left) = job_killed_at(&site, n);
    assert_eq!(after_crash.len(), 1, "the crash left the intent file");
    (done, left)
}

/// A site whose procedure `Folders/Make` (input `name`) is the one step `make`, its body
/// `step` (YAML at the step's indentation, first line unindented).
fn folders_site(step: &str) -> Site {
    let site = Site::new(0);
    std::fs::write(
        site.path("ns/folders.yaml"),
        format!(
            "namespace: Folders\nprocedures:\n  Make:\n    access: public\n    inputs:\n      \
             name: {{ type: string, required: true }}\n    steps:\n      make:\n        {step}\n"
        ),
    )
    .expect("write ns");
    site
}

/// Runs the first job of `site` (its `Folders/Make` with name `made`) in a daemon aborted
/// right after its journal synced write `n`, then in a new one: the job's final state, the
/// intent files the crash left and those left once the job settled.
fn job_killed_at(site: &Site, n: u32) -> (serde_json::Value, Vec<String>, Vec<String>) {
    let n = n.to_string();
    let mut d = site.start_with(&[("PROVISIO_CRASH_AT", &n), ("PROVISIO_CRASH_WHEN", "after")]);
    let a = d.submit(ALICE, "call: Folders/Make\ndata:\n  name: made\n", "", &[]);
    assert_eq!(a.status, 202, "{a:?}");
    let id = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        d.exit(Duration::from_secs(30)),
        None,
        "aborted at the crash point"
    );
    drop(d);
    let pending = site.path("data/files/.provisio-state/pending");
    let files = || -> Vec<String> {
        std::fs::read_dir(&pending)
            .map(|rd| {
                rd.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let after_crash = files();
    let d = site.start();
    let done = d.final_state(&id);
    assert!(site.path("data/files/made").is_dir(), "{done}");
    (done, after_crash, files())
}

/// CreateFolder in a durable daemon keeps its intent marker in the engine's journal: a
/// crash after its call leaves no intent file of the provider's, and the restart settles
/// the job from the journal alone (the transaction rolled back from the journaled marker,
/// the job run again).
#[test]
fn a_daemon_killed_in_a_create_folder_leaves_no_intent_file() {
    if !python() {
        return;
    }
    let site = folders_site(
        r#"call: Filesystem Provider/CreateFolder
        with: { path: "{{ data.name }}" }"#,
    );
    let (done, after_crash, left) = job_killed_at(&site, 3);
    assert!(after_crash.is_empty(), "intent files: {after_crash:?}");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["transactions"].as_array().unwrap().len(), 2, "{done}");
    assert!(left.is_empty(), "left: {left:?}");
}

/// A daemon killed right after a transaction's commit is journaled, before it told the
/// filesystem provider the transaction is over: the restart settles the job from the
/// journal and tells the providers then, so the intent file goes (it stayed until
/// `provisio purge`: one file a crash, forever, on a daemon only ever restarted).
#[test]
fn a_daemon_killed_right_after_a_commit_drops_the_intent_file_at_the_restart() {
    if !python() {
        return;
    }
    let (done, left) = folder_job_killed_at(4);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["transactions"].as_array().unwrap().len(), 1, "{done}");
    assert_eq!(done["response"]["status"], "committed", "{done}");
    assert!(left.is_empty(), "left: {left:?}");
}

/// A daemon killed after its call, before the commit: recovery at the restart rolls the
/// transaction back and tells the providers it is over, so its intent file goes; the job is
/// tried again as a new transaction, which commits (and drops its own).
#[test]
fn a_transaction_rolled_back_by_recovery_at_the_restart_drops_its_intent_file() {
    if !python() {
        return;
    }
    let (done, left) = folder_job_killed_at(3);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["transactions"].as_array().unwrap().len(), 2, "{done}");
    assert!(left.is_empty(), "left: {left:?}");
}
