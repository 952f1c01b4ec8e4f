//! The MPS `queue` step in the engine: the call goes to a [`JobSink`] (here the real job
//! queue over a store) instead of running; `context/queueContext/@queueId` holds the job
//! id; a suspended job is released when the transaction commits and removed when it rolls
//! back, an active one stays; a crash between the enqueue and the outcome is settled from
//! the journal after recovery (`Queue::settle_held`).

use async_trait::async_trait;
use futures::future::BoxFuture;
use provisio_engine::model::{Format, Request};
use provisio_engine::provider::CallContext;
use provisio_engine::queue::{JobOptions, JobState, NewJob, Queue, RetryType};
use provisio_engine::request::parse_request;
use provisio_engine::txn::index;
use provisio_engine::{
    DurableJournal, JobSink, Journal, JournalError, PlanEntry, QueuedCall, RunError,
    ScriptUndoDone, StepDone, StepIntent, Store, TxnId, TxnResult, TxnStart, TxnState,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;
use support as h;

const NS: &str = r#"<namespaces>
<namespace name="Q">
  <procedure name="Later" access="public">
    <input name="name" type="string" required="1"/>
    <execute namespace="Rec Provider" procedure="Create">
      <before source="data" sourcePath="name" destination="executeData"/>
    </execute>
  </procedure>
  <procedure name="Hidden" access="private">
    <execute namespace="Rec Provider" procedure="Noop"/>
  </procedure>
</namespace>
</namespaces>"#;

/// Queues `Q/Later` for `name` (suspended or not), copies the job id into data/jobId,
/// then runs `tail`.
fn request(suspended: &str, tail: &str) -> String {
    format!(
        r#"<request><data><name>n1</name></data><procedure>
  <queue id="q" namespace="Q" procedure="Later" queueSuspended="{suspended}">
    <before source="data" sourcePath="name" destination="executeData" destinationPath="name"/>
    <after source="context" sourcePath="queueContext/@queueId" destination="data" destinationPath="jobId" mode="merge"/>
  </queue>
  {tail}
</procedure></request>"#
    )
}

const FAIL: &str = r#"<execute id="boom" namespace="Rec Provider" procedure="Fail"><executeData><message>no</message></executeData></execute>"#;

/// A sink over the job queue that records what it queued; `settles: false` plays a
/// process that died before telling the queue the outcome.
struct Sink {
    queue: Arc<Queue>,
    settles: bool,
    queued: Mutex<Vec<(String, QueuedCall)>>,
}

impl JobSink for Sink {
    fn enqueue(&self, call: QueuedCall) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let txn = call.txn_id.as_str().to_string();
            let job = self
                .queue
                .submit_with(
                    NewJob {
                        payload: call.target.to_string(),
                        priority: 0,
                        not_before_ms: 0,
                        serial_key: None,
                        idempotency_key: None,
                        subject: "tester".into(),
                        target: call.target.to_string(),
                        max_attempts: call.retry_count.map_or(1, |r| r + 1),
                    },
                    JobOptions {
                        held_by: call.suspended.then_some(txn),
                        retry_interval_ms: call.retry_interval_ms,
                        fail_when_exhausted: call.fail_when_exhausted,
                        retry_type: call.retry_type,
                        retry_stop_code: call.retry_stop_code,
                        drop_success_response: call.retain_successful_responses == Some(false),
                        parents: call.parents.clone(),
                    },
                    1,
                )
                .await
                .map_err(|e| e.to_string())?
                .job;
            self.queued.lock().unwrap().push((job.id.clone(), call));
            Ok(job.id)
        })
    }

    fn settle<'a>(&'a self, txn: &'a TxnId, committed: bool) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if !self.settles {
                return Ok(());
            }
            let r = if committed {
                self.queue.release_held(txn.as_str(), 2).await
            } else {
                self.queue.discard_held(txn.as_str()).await
            };
            r.map(|_| ()).map_err(|e| e.to_string())
        })
    }
}

struct World {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    queue: Arc<Queue>,
    sink: Arc<Sink>,
    env: h::Env,
}

fn world(settles: bool) -> World {
    let dir = tempfile::tempdir().expect("temp dir");
    // sled, or PostgreSQL with PROVISIO_TEST_STORE=postgres.
    let store: Arc<dyn Store> = provisio_engine::testing::open_store(
        dir.path(),
        provisio_test_support::postgres::store_url(dir.path()),
    );
    let queue = Arc::new(Queue::open(store.clone()).expect("queue"));
    let sink = Arc::new(Sink {
        queue: queue.clone(),
        settles,
        queued: Mutex::new(Vec::new()),
    });
    let journal = Arc::new(DurableJournal::new(store.clone(), None, "tester"));
    let mut env = h::env_ns(h::parse(NS, "q.xml", Format::Xml), h::options());
    env.engine = env.engine.with_journal(journal).with_jobs(sink.clone());
    World {
        _dir: dir,
        store,
        queue,
        sink,
        env,
    }
}

fn xml(src: &str) -> Request {
    parse_request(src, "r.xml", Format::Xml).unwrap_or_else(|e| panic!("{e}"))
}

impl World {
    async fn run(&self, src: &str) -> TxnResult {
        self.env.engine.run(&xml(src)).await.expect("compiles")
    }

    async fn compile_errors(&self, src: &str) -> Vec<String> {
        match self.env.engine.run(&xml(src)).await {
            Ok(r) => panic!("expected compile errors, got {:?}", r.state),
            Err(RunError::Compile(e)) => e.0.iter().map(|e| e.to_string()).collect(),
            Err(e) => panic!("expected compile errors, got: {e}"),
        }
    }

    async fn plan(&self, src: &str) -> Vec<PlanEntry> {
        self.env.engine.plan(&xml(src)).await.expect("compiles")
    }

    fn only_job(&self) -> (String, QueuedCall) {
        let q = self.sink.queued.lock().unwrap();
        assert_eq!(q.len(), 1, "one job queued");
        q[0].clone()
    }

    async fn claim(&self) -> Option<String> {
        self.queue
            .claim(u64::MAX / 2, Duration::from_secs(60))
            .await
            .expect("claim")
            .map(|j| j.id)
    }

    async fn settle_from_journal(&self) -> (usize, usize) {
        let store = self.store.clone();
        self.queue
            .settle_held(
                |txn| {
                    index::summary(store.as_ref(), txn).map(|s| match s.map(|s| s.state) {
                        Some(TxnState::Committed) => Some(true),
                        Some(TxnState::Running | TxnState::RollingBack) => None,
                        _ => Some(false),
                    })
                },
                3,
            )
            .await
            .expect("settle")
    }
}

#[tokio::test]
async fn a_suspended_job_is_released_when_the_transaction_commits() {
    let w = world(true);
    let r = w.run(&request("1", "")).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let (id, call) = w.only_job();
    // The call did not run; the job carries its executeData as data.
    assert!(
        w.env.log().iter().all(|l| !l.contains("Create")),
        "{:?}",
        w.env.log()
    );
    assert_eq!(call.target.to_string(), "Q/Later");
    assert!(call.suspended);
    assert_eq!(
        call.data.child("name").map(|e| e.string_value()),
        Some("n1".into())
    );
    assert_eq!(call.txn_id, r.txn_id);
    // queueId is readable from the context.
    assert_eq!(h::data(&r)["jobId"], serde_json::json!(id));
    let job = w.queue.get(&id).expect("get").expect("job kept");
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.held_by, None);
    assert_eq!(w.claim().await, Some(id));
}

#[tokio::test]
async fn a_suspended_job_is_removed_when_the_transaction_rolls_back() {
    let w = world(true);
    let r = w.run(&request("1", FAIL)).await;
    assert_eq!(r.state, TxnState::RolledBack);
    let (id, _) = w.only_job();
    assert!(w.queue.get(&id).expect("get").is_none(), "removed");
    assert_eq!(w.queue.counts()[0], 0);
    assert_eq!(w.claim().await, None);
}

#[tokio::test]
async fn an_active_job_stays_when_the_transaction_rolls_back() {
    let w = world(true);
    let r = w.run(&request("0", FAIL)).await;
    assert_eq!(r.state, TxnState::RolledBack);
    let (id, call) = w.only_job();
    assert!(!call.suspended);
    assert_eq!(w.claim().await, Some(id));
}

#[tokio::test]
async fn a_suspended_job_does_not_run_before_its_transaction_ends() {
    // Settling never happens (a process that died): the job stays held.
    let w = world(false);
    let r = w.run(&request("1", "")).await;
    assert_eq!(r.state, TxnState::Committed);
    let (id, _) = w.only_job();
    assert_eq!(w.claim().await, None, "held: not claimable");
    let job = w.queue.get(&id).expect("get").expect("job");
    assert_eq!(job.held_by.as_deref(), Some(r.txn_id.as_str()));
}

#[tokio::test]
async fn after_a_crash_held_jobs_are_settled_by_the_journal() {
    // The process died after the outcome was journaled but before the queue heard of it.
    let w = world(false);
    let committed = w.run(&request("1", "")).await;
    assert_eq!(committed.state, TxnState::Committed);
    let rolled = w.run(&request("1", FAIL)).await;
    assert_eq!(rolled.state, TxnState::RolledBack);
    // A job held for a transaction the journal never heard of (the crash came before its
    // first record): it never committed.
    let orphan = w
        .queue
        .submit_with(
            NewJob {
                payload: "x".into(),
                priority: 0,
                not_before_ms: 0,
                serial_key: None,
                idempotency_key: None,
                subject: "tester".into(),
                target: "Q/Later".into(),
                max_attempts: 1,
            },
            JobOptions {
                held_by: Some(TxnId::new_v7().as_str().to_string()),
                ..JobOptions::default()
            },
            1,
        )
        .await
        .expect("submit")
        .job
        .id;
    let ids: Vec<String> = w
        .sink
        .queued
        .lock()
        .unwrap()
        .iter()
        .map(|(i, _)| i.clone())
        .collect();
    assert_eq!(w.claim().await, None, "all held");
    assert_eq!(w.settle_from_journal().await, (1, 2));
    assert_eq!(w.claim().await, Some(ids[0].clone()));
    assert!(w.queue.get(&ids[1]).expect("get").is_none());
    assert!(w.queue.get(&orphan).expect("get").is_none());
    // Settling again finds nothing.
    assert_eq!(w.settle_from_journal().await, (0, 0));
}

/// A journal that loses every state change after `running` (the process "dies" before the
/// outcome reaches the disk), passing everything else to the durable journal.
struct DiesBeforeTheOutcome(Arc<DurableJournal>);

#[async_trait]
impl Journal for DiesBeforeTheOutcome {
    fn records(&self) -> bool {
        self.0.records()
    }
    async fn txn_started(&self, s: &TxnStart<'_>) -> Result<(), JournalError> {
        self.0.txn_started(s).await
    }
    async fn txn_state(
        &self,
        id: &TxnId,
        state: TxnState,
        message: Option<&str>,
    ) -> Result<(), JournalError> {
        if state == TxnState::Running {
            self.0.txn_state(id, state, message).await
        } else {
            Ok(())
        }
    }
    async fn step_intent(&self, i: &StepIntent<'_>) -> Result<(), JournalError> {
        self.0.step_intent(i).await
    }
    async fn step_done(&self, d: &StepDone<'_>) -> Result<(), JournalError> {
        self.0.step_done(d).await
    }
    async fn step_in_doubt(&self, c: &CallContext, m: &str) -> Result<(), JournalError> {
        self.0.step_in_doubt(c, m).await
    }
    async fn script_done(&self, d: &ScriptUndoDone<'_>) -> Result<(), JournalError> {
        self.0.script_done(d).await
    }
    async fn step_failed(&self, c: &CallContext, m: &str) -> Result<(), JournalError> {
        self.0.step_failed(c, m).await
    }
    async fn undo_done(&self, c: &CallContext, e: Option<&str>) -> Result<(), JournalError> {
        self.0.undo_done(c, e).await
    }
    async fn phase_done(
        &self,
        c: &CallContext,
        p: &str,
        e: Option<&str>,
    ) -> Result<(), JournalError> {
        self.0.phase_done(c, p, e).await
    }
}

#[tokio::test]
async fn a_crash_before_the_commit_is_journaled_removes_the_held_job_after_recovery() {
    let w = world(false);
    let durable = Arc::new(DurableJournal::new(w.store.clone(), None, "tester"));
    let dying = w
        .env
        .engine
        .clone()
        .with_journal(Arc::new(DiesBeforeTheOutcome(durable.clone())));
    let r = dying
        .run(&xml(&request("1", r#"<execute namespace="Rec Provider" procedure="Create"><executeData><name>made</name></executeData></execute>"#)))
        .await
        .expect("runs");
    assert_eq!(r.state, TxnState::Committed, "the process thought so");
    let (id, _) = w.only_job();
    // The journal still says running: recovery rolls the transaction back...
    let recovering = w.env.engine.clone().with_journal(durable.clone());
    let found = provisio_engine::txn::recover(&recovering, &durable)
        .await
        .expect("recover");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].to, TxnState::RolledBack);
    // ...and the job it held goes with it.
    assert_eq!(w.settle_from_journal().await, (0, 1));
    assert!(w.queue.get(&id).expect("get").is_none());
    assert_eq!(w.claim().await, None);
}

#[tokio::test]
async fn queue_context_settings_reach_the_job() {
    let w = world(true);
    let src = request("1", "").replace(
        "<data>",
        r#"<context><queueContext retryCount="2" retryInterval="1500" onFailure="continue" priority="3"/></context><data>"#,
    );
    let r = w.run(&src).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let (id, call) = w.only_job();
    assert_eq!(call.retry_count, Some(2));
    assert_eq!(call.retry_interval_ms, Some(1500));
    assert!(call.fail_when_exhausted);
    assert_eq!(call.priority, Some(3));
    let job = w.queue.get(&id).expect("get").expect("job");
    assert_eq!(job.max_attempts, 3);
    assert_eq!(job.retry_interval_ms, Some(1500));
    assert!(job.fail_when_exhausted);
}

#[tokio::test]
async fn the_newer_queue_context_settings_reach_the_job() {
    let w = world(true);
    let src = request("1", "").replace(
        "<data>",
        r#"<context><queueContext retryType="Linear" retryStopOnFailure="0x80070057" retainSuccessfulResponses="0"/></context><data>"#,
    );
    let r = w.run(&src).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let (id, call) = w.only_job();
    assert_eq!(call.retry_type, Some(RetryType::Linear));
    assert_eq!(call.retry_stop_code, Some(0x8007_0057));
    assert_eq!(call.retain_successful_responses, Some(false));
    let job = w.queue.get(&id).expect("get").expect("job");
    assert_eq!(job.retry_type, Some(RetryType::Linear));
    assert_eq!(job.retry_stop_code, Some(0x8007_0057));
    assert!(job.drop_success_response);
    // The same code in signed decimal; the first job as the parent of a second.
    let src = request("1", "").replace(
        "<data>",
        &format!(
            r#"<context><queueContext retryStopOnFailure="-2147024809"><parentQueue queueID="{id}"/></queueContext></context><data>"#
        ),
    );
    let r = w.run(&src).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let queued = w.sink.queued.lock().unwrap().clone();
    let (child, call) = queued.last().cloned().expect("second job");
    assert_eq!(call.retry_stop_code, Some(0x8007_0057));
    assert_eq!(call.parents, vec![id.clone()]);
    let job = w.queue.get(&child).expect("get").expect("child");
    assert_eq!(job.parents, vec![id]);
}

#[tokio::test]
async fn bad_queue_context_settings_and_unknown_parents_fail_the_step_clearly() {
    let w = world(true);
    for (context, says) in [
        (
            r#"<queueContext><parentQueue queueID="no-such-job"/></queueContext>"#,
            "context/queueContext/parentQueue/@queueId `no-such-job` names no job in the queue",
        ),
        (
            r#"<queueContext><parentQueue/></queueContext>"#,
            "context/queueContext/parentQueue[1] has no queueId",
        ),
        (
            r#"<queueContext onFailure="retry"/>"#,
            "neither `continue` nor `queueToOperator`",
        ),
        (
            r#"<queueContext retryType="random"/>"#,
            "context/queueContext/@retryType `random` is not one of fixed, linear, exponential",
        ),
        (
            r#"<queueContext retryStopOnFailure="E_FAIL"/>"#,
            "context/queueContext/@retryStopOnFailure `E_FAIL` is not an HRESULT",
        ),
        (
            r#"<queueContext retainSuccessfulResponses="yes"/>"#,
            "context/queueContext/@retainSuccessfulResponses `yes` is not a boolean",
        ),
    ] {
        let src =
            request("1", "").replace("<data>", &format!("<context>{context}</context><data>"));
        let r = w.run(&src).await;
        assert_eq!(r.state, TxnState::RolledBack, "{context}");
        let message = &h::failure(&r).message;
        assert!(message.contains(says), "{context}: {message}");
    }
    // Nothing was queued by any of them (a refused parent leaves no job either).
    assert!(w
        .queue
        .list(&Default::default(), None, 10)
        .expect("list")
        .jobs
        .is_empty());
}

#[tokio::test]
async fn a_private_or_unknown_procedure_cannot_be_queued() {
    let w = world(true);
    let errors = w
        .compile_errors(r#"<request><procedure><queue namespace="Q" procedure="Hidden"/></procedure></request>"#)
        .await;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("is private: a queued job runs later")),
        "{errors:?}"
    );
    let errors = w
        .compile_errors(
            r#"<request><procedure><queue namespace="Q" procedure="Nope"/></procedure></request>"#,
        )
        .await;
    assert!(!errors.is_empty());
}

#[tokio::test]
async fn a_plan_queues_nothing() {
    let w = world(true);
    let entries = w.plan(&request("1", "")).await;
    assert!(entries.is_empty(), "{entries:?}");
    assert!(w.sink.queued.lock().unwrap().is_empty());
}

#[tokio::test]
async fn yaml_queue_key_queues_the_call() {
    let w = world(true);
    let yaml = "procedure:\n  steps:\n    q:\n      call: Q/Later\n      queue: active\n      with:\n        name: y1\n";
    let r = w.env.engine.run(&h::req(yaml)).await.expect("compiles");
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let (id, call) = w.only_job();
    assert!(!call.suspended);
    assert_eq!(
        call.data.child("name").map(|e| e.string_value()),
        Some("y1".into())
    );
    assert!(w.env.log().iter().all(|l| !l.contains("Create")));
    assert_eq!(w.claim().await, Some(id));

    let bad = "procedure:\n  steps:\n    q:\n      call: Q/Later\n      queue: later\n";
    let e = parse_request(bad, "r.yaml", Format::Yaml).expect_err("refused");
    assert!(
        e.to_string()
            .contains("`queue: later` is neither `suspended` nor `active`"),
        "{e}"
    );
}

#[test]
fn xml_queue_attributes_are_checked() {
    let src = r#"<request><procedure><queue namespace="Q" procedure="Later" queueSuspended="maybe"/></procedure></request>"#;
    let e = parse_request(src, "r.xml", Format::Xml).expect_err("refused");
    assert!(
        e.to_string()
            .contains("`queueSuspended` on <queue> must be 0 or 1"),
        "{e}"
    );
    let src = r#"<request><procedure><queue namespace="Q" procedure="Later" retryCount="2"/></procedure></request>"#;
    let e = parse_request(src, "r.xml", Format::Xml).expect_err("refused");
    assert!(e.to_string().contains("retryCount"), "{e}");
}
