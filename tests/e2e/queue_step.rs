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

/// Queues `Hosted Files/CreateTenantFolders` for `tenant` (quota `quota`), active, under
/// `context`: the job id.
fn queue_tenant(sb: &Sandbox, name: &str, context: &str, tenant: &str, quota: i64) -> String {
    let req = sb.write(
        name,
        &format!(
            r#"<request>
  <context>{context}</context>
  <procedure>
    <queue namespace="Hosted Files" procedure="CreateTenantFolders" queueSuspended="0">
      <executeData><tenant>{tenant}</tenant><quotaMegabytes>{quota}</quotaMegabytes></executeData>
      <after source="context" sourcePath="queueContext/@queueId" destination="data" destinationPath="jobId" mode="merge"/>
    </queue>
  </procedure>
</request>
"#
        ),
    );
    let r = sb.run(&["run", req.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    let start = r.stdout.find("<jobId>").expect("jobId") + "<jobId>".len();
    let end = r.stdout[start..].find("</jobId>").expect("end") + start;
    r.stdout[start..end].to_string()
}

/// MPS `parentQueue` on the store the suite runs on (sled, or PostgreSQL with
/// `PROVISIO_TEST_STORE=postgres`): a child runs only after its parent succeeded (though
/// its priority would put it first), and a child whose parent fails for good is dead.
#[test]
fn a_child_job_waits_for_its_parent_and_dies_with_a_failed_one() {
    let sb = Sandbox::new();
    let parent = queue_tenant(&sb, "p.xml", "", "alpha", 10);
    let child = format!(
        r#"<queueContext priority="-100"><parentQueue queueId="{parent}"/></queueContext>"#
    );
    queue_tenant(&sb, "c.xml", &child, "beta", 10);
    // A parent that fails (a negative quota is refused) and its child.
    let doomed = queue_tenant(&sb, "d.xml", "", "gamma", -5);
    let orphan = format!(r#"<queueContext><parentQueue queueId="{doomed}"/></queueContext>"#);
    queue_tenant(&sb, "o.xml", &orphan, "delta", 10);
    let out = drained(&sb);
    assert!(out.contains("ran 3 job(s); 0 queued"), "{out}");
    assert!(out.contains("0 held, 1 dead"), "{out}");
    let tenants = sb.data().join("files/tenants");
    assert!(tenants.join("alpha/users").is_dir(), "{out}");
    assert!(tenants.join("beta/users").is_dir(), "{out}");
    assert!(!tenants.join("gamma").exists(), "{out}");
    assert!(!tenants.join("delta").exists(), "{out}");
    // The child's folder was made after the parent's (by priority it would have run first).
    let made = |t: &str| {
        std::fs::metadata(tenants.join(t))
            .and_then(|m| m.modified())
            .expect("mtime")
    };
    assert!(made("beta") >= made("alpha"), "{out}");
    // An unknown parent is refused at the queue step, naming the field.
    let req = sb.write(
        "u.xml",
        r#"<request><context><queueContext><parentQueue queueId="nope"/></queueContext></context>
  <procedure><queue namespace="Hosted Files" procedure="CreateTenantFolders" queueSuspended="0">
    <executeData><tenant>eps</tenant></executeData></queue></procedure></request>"#,
    );
    let r = sb.run(&["run", req.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("context/queueContext/parentQueue/@queueId `nope` names no job in the queue"),
        "{r:?}"
    );
}
