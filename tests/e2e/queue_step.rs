//! The MPS `queue` step through the binary: `provisio run` queues the call as a job in the
//! data directory's queue (held until the transaction commits) and says how to run it;
//! `provisio worker --drain` then runs it as a transaction of its own. A transaction that
//! rolls back leaves no job behind; an active job (`queueSuspended="0"`) stays.

use crate::util::Sandbox;

/// Queues CreateTenantFolders for `tenant`, copies the job id into data/jobId, then runs
/// `tail` (another step, or nothing).
fn request(tenant: &str, suspended: &str, tail: &str) -> String {
    format!(
        r#"<request>
  <data><tenant>{tenant}</tenant></data>
  <procedure>
    <queue id="later" namespace="Hosted Files" procedure="CreateTenantFolders" queueSuspended="{suspended}">
      <before source="data" sourcePath="tenant" destination="executeData" destinationPath="tenant" mode="merge"/>
      <after source="context" sourcePath="queueContext/@queueId" destination="data" destinationPath="jobId" mode="merge"/>
    </queue>
    {tail}
  </procedure>
</request>
"#
    )
}

/// A step the filesystem provider refuses (a negative quota), after the queue step.
const FAILING: &str = r#"<execute id="bad" namespace="Hosted Files" procedure="CreateTenantFolders">
      <executeData><tenant>other</tenant><quotaMegabytes>-5</quotaMegabytes></executeData>
    </execute>"#;

fn drained(sb: &Sandbox) -> String {
    let w = sb.run(&["worker", "--drain"]);
    assert_eq!(w.code, 0, "{w:?}");
    w.stderr
}

#[test]
fn a_queued_call_runs_in_the_worker_after_its_transaction_commits() {
    let sb = Sandbox::new();
    let req = sb.write("queue.xml", &request("delta", "1", ""));
    let r = sb.run(&["run", req.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    // The job id reached data through context/queueContext/@queueId.
    let start = r.stdout.find("<jobId>").expect("jobId in the response") + "<jobId>".len();
    let end = r.stdout[start..].find("</jobId>").expect("end of jobId") + start;
    let job = &r.stdout[start..end];
    assert_eq!(job.len(), 36, "a job id: {r:?}");
    assert!(
        r.stderr.contains(&format!(
            "queued job {job} (Hosted Files/CreateTenantFolders)"
        )),
        "{r:?}"
    );
    assert!(r.stderr.contains("provisio worker --drain"), "{r:?}");
    // Queued, not run: the folder is not there yet.
    let tenant = sb.data().join("files/tenants/delta");
    assert!(!tenant.exists(), "{r:?}");

    let out = drained(&sb);
    assert!(out.contains("ran 1 job(s); 0 queued"), "{out}");
    assert!(tenant.join("users").is_dir(), "{out}");
    // Two transactions, both committed: the submitter's and the job's.
    let list = sb.run(&["tx", "list"]);
    let committed = list
        .stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("committed"))
        .count();
    assert_eq!(committed, 2, "{list:?}");
    assert!(
        list.stdout.contains("Hosted Files/CreateTenantFolders"),
        "{list:?}"
    );
    // Nothing left to run.
    assert!(drained(&sb).contains("ran 0 job(s)"));
}

#[test]
fn a_rollback_removes_a_suspended_job_but_not_an_active_one() {
    let sb = Sandbox::new();
    let req = sb.write("held.xml", &request("held", "1", FAILING));
    let r = sb.run(&["run", req.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("was removed: the transaction that queued it rolled back"),
        "{r:?}"
    );
    assert!(drained(&sb).contains("ran 0 job(s); 0 queued"));
    assert!(!sb.data().join("files/tenants/held").exists());

    let req = sb.write("active.xml", &request("active", "0", FAILING));
    let r = sb.run(&["run", req.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("queued job "), "{r:?}");
    let out = drained(&sb);
    assert!(out.contains("ran 1 job(s)"), "{out}");
    assert!(
        sb.data().join("files/tenants/active/users").is_dir(),
        "{out}"
    );
}

#[test]
fn queueing_a_private_procedure_is_refused_before_anything_runs() {
    let sb = Sandbox::new();
    let ns = sb.write(
        "ns/private.xml",
        r#"<namespace name="Quiet">
  <procedure name="Hidden" access="private" type="write">
    <execute namespace="Filesystem Provider" procedure="CreateFolder">
      <executeData><path>hidden</path></executeData>
    </execute>
  </procedure>
</namespace>
"#,
    );
    let _ = ns;
    let req = sb.write(
        "q.xml",
        r#"<request><procedure><queue namespace="Quiet" procedure="Hidden"/></procedure></request>"#,
    );
    let r = sb.run_with(&["run", req.to_str().unwrap()], &sb.path("ns"));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("is private: a queued job runs later"),
        "{r:?}"
    );
}

/// An attribute MPS does not define on `queueContext` is named in the log (the job is
/// queued without it), never dropped silently; the MPS ones are honoured, not warned about.
#[test]
fn an_unknown_queue_context_attribute_is_named_in_the_log() {
    let sb = Sandbox::new();
    let req = sb.write(
        "retry-kind.xml",
        &request("echo", "1", "").replace(
            "<request>\n",
            "<request>\n  <context><queueContext retryKind=\"exponential\" retryType=\"exponential\" retryCount=\"2\"/></context>\n",
        ),
    );
    let r = sb.run(&["run", req.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("context/queueContext/@retryKind is not an MPS queueContext attribute"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("@retryType is not"), "{r:?}");
    assert!(!r.stderr.contains("@retryCount is not"), "{r:?}");
}
