//! Tests of the job queue: ordering, serialization keys, leases, retries, idempotency,
//! restarts, listing, and the cost of a claim against a large backlog.

use super::*;
use crate::store::{KeyValue, SledStore};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

const LEASE: Duration = Duration::from_secs(30);

fn job(target: &str) -> NewJob {
    NewJob {
        payload: format!("payload of {target}"),
        priority: 0,
        not_before_ms: 0,
        serial_key: None,
        idempotency_key: None,
        subject: "alice".into(),
        target: target.into(),
        max_attempts: 3,
    }
}

/// The store of the suite for the folder `dir`: sled, or PostgreSQL with
/// `PROVISIO_TEST_STORE=postgres` (the same store again for the same folder).
fn open_store(dir: &std::path::Path) -> Arc<dyn Store> {
    crate::testing::open_store(dir, provisio_test_support::postgres::store_url(dir))
}

fn open(dir: &std::path::Path) -> Queue {
    Queue::open(open_store(dir)).expect("open queue")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn done() -> Finish {
    Finish {
        state: JobState::Succeeded,
        outcome: Some("committed".into()),
        result: Some("ok".into()),
        error: None,
    }
}

#[test]
fn claims_by_priority_then_submission_order_and_waits_for_not_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    rt().block_on(async {
        let low = q.submit(job("A/low"), 10).await.expect("submit").job;
        let high = q
            .submit(
                NewJob {
                    priority: 5,
                    ..job("A/high")
                },
                10,
            )
            .await
            .expect("submit")
            .job;
        let low2 = q.submit(job("A/low2"), 10).await.expect("submit").job;
        let later = q
            .submit(
                NewJob {
                    priority: 9,
                    not_before_ms: 1_000,
                    ..job("A/later")
                },
                10,
            )
            .await
            .expect("submit")
            .job;
        assert_eq!(q.next_due().expect("due"), Some(1_000));
        let order: Vec<String> = [
            q.claim(20, LEASE).await,
            q.claim(20, LEASE).await,
            q.claim(20, LEASE).await,
        ]
        .into_iter()
        .map(|c| c.expect("claim").expect("a job").id)
        .collect();
        assert_eq!(order, vec![high.id, low.id, low2.id]);
        assert!(q.claim(999, LEASE).await.expect("claim").is_none());
        let c = q
            .claim(1_000, LEASE)
            .await
            .expect("claim")
            .expect("due now");
        assert_eq!(c.id, later.id);
        assert_eq!(c.state, JobState::Running);
        assert_eq!(c.attempts, 1);
        assert_eq!(c.txns.len(), 1);
        assert_eq!(c.txn.as_deref(), Some(c.txns[0].as_str()));
    });
}

#[test]
fn an_idempotency_key_returns_the_same_job_per_subject() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    rt().block_on(async {
        let keyed = |subject: &str| NewJob {
            idempotency_key: Some("order-17".into()),
            subject: subject.into(),
            ..job("A/B")
        };
        let first = q.submit(keyed("alice"), 1).await.expect("submit");
        assert!(first.created);
        let again = q.submit(keyed("alice"), 2).await.expect("submit");
        assert!(!again.created);
        assert_eq!(again.job.id, first.job.id);
        let other = q.submit(keyed("bob"), 3).await.expect("submit");
        assert!(other.created);
        assert_ne!(other.job.id, first.job.id);
        // Still the same job once it ran: never a second one.
        let c = q.claim(4, LEASE).await.expect("claim").expect("job");
        q.finish(&c.id, done(), 5).await.expect("finish");
        let after = q.submit(keyed("alice"), 6).await.expect("submit");
        assert!(!after.created);
        assert_eq!(after.job.id, first.job.id);
    });
}

#[test]
fn a_serialization_key_runs_its_jobs_one_at_a_time_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    rt().block_on(async {
        let keyed = |key: &str, priority: i16| NewJob {
            serial_key: Some(key.into()),
            priority,
            ..job("A/B")
        };
        let t1 = q.submit(keyed("tenant-1", 0), 1).await.expect("submit").job;
        let t1b = q.submit(keyed("tenant-1", 9), 1).await.expect("submit").job;
        let t2 = q.submit(keyed("tenant-2", 0), 1).await.expect("submit").job;
        let a = q.claim(2, LEASE).await.expect("claim").expect("job");
        let b = q.claim(2, LEASE).await.expect("claim").expect("job");
        // The high-priority job of tenant-1 waits behind the earlier one of its key.
        assert_eq!(
            (a.id.as_str(), b.id.as_str()),
            (t1.id.as_str(), t2.id.as_str())
        );
        assert!(q.claim(2, LEASE).await.expect("claim").is_none());
        q.finish(&t1.id, done(), 3).await.expect("finish");
        let c = q
            .claim(4, LEASE)
            .await
            .expect("claim")
            .expect("next of the line");
        assert_eq!(c.id, t1b.id);
    });
}

#[test]
fn an_expired_lease_gives_the_job_back_with_its_transaction_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (id, txn) = {
        let q = open(dir.path());
        rt().block_on(async {
            let id = q.submit(job("A/B"), 1).await.expect("submit").job.id;
            let c = q.claim(2, LEASE).await.expect("claim").expect("job");
            let txn = c.txn.clone().expect("txn id");
            assert!(q.heartbeat(&id, 10_000, LEASE).await.expect("beat"));
            // Not expired yet at the old lease end.
            assert!(q
                .take_back_expired(30_002, 10)
                .await
                .expect("take back")
                .is_empty());
            (id, txn)
        })
    };
    // A restart (the worker died with the process).
    let q = open(dir.path());
    rt().block_on(async {
        let back = q.take_back_expired(u64::MAX, 10).await.expect("take back");
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].state, JobState::Queued);
        let c = q.claim(50_000, LEASE).await.expect("claim").expect("job");
        assert_eq!(c.id, id);
        assert_eq!(c.txn.as_deref(), Some(txn.as_str()), "the same transaction");
        assert_eq!(c.txns, vec![txn.clone()]);
        assert_eq!(c.attempts, 2);
        // A fresh submission after the restart gets a new sequence number.
        let later = q.submit(job("A/C"), 50_001).await.expect("submit").job;
        assert!(later.seq > c.seq);
    });
}

/// Several nodes on one PostgreSQL: a runner that stalled past its lease, whose job another
/// node took back and runs, can neither finish, retry nor bury it (a retry would run it a
/// second time), nor queue it again once the other node finished it. Only on PostgreSQL
/// (`PROVISIO_TEST_STORE=postgres`): sled is one process.
#[test]
fn a_stalled_node_cannot_settle_a_job_another_node_took_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    if provisio_test_support::postgres::store_url(dir.path()).is_none() {
        return;
    }
    // Two stores on the same database are two nodes.
    let stalled = open(dir.path());
    let other = open(dir.path());
    rt().block_on(async {
        let id = stalled.submit(job("A/B"), 1).await.expect("submit").job.id;
        let mine = stalled.claim(2, LEASE).await.expect("claim").expect("job");
        assert_eq!(mine.id, id);
        // The lease runs out; the other node takes the job back and claims it.
        let back = other
            .take_back_expired(u64::MAX / 2, 10)
            .await
            .expect("take back");
        assert_eq!(back.len(), 1);
        let theirs = other
            .claim(u64::MAX / 2, LEASE)
            .await
            .expect("claim")
            .expect("job");
        assert_eq!(theirs.id, id);
        let refused = |r: Result<Job, QueueError>, what: &str| match r {
            Err(QueueError::WrongState { .. }) => {}
            other => panic!("{what} by the stalled node: {other:?}"),
        };
        refused(stalled.finish(&id, done(), 10).await, "finish");
        refused(
            stalled
                .retry_later(
                    &id,
                    "x".into(),
                    10,
                    Backoff {
                        base: Duration::from_millis(10),
                        max: Duration::from_millis(100),
                    },
                    0,
                )
                .await,
            "retry",
        );
        refused(stalled.bury(&id, "x".into(), 10).await, "bury");
        assert_eq!(
            other.get(&id).expect("get").expect("job").state,
            JobState::Running,
            "still running on the other node"
        );
        other.finish(&id, done(), 20).await.expect("finish");
        // Finished elsewhere: a late retry must not bring it back.
        refused(
            stalled
                .retry_later(
                    &id,
                    "x".into(),
                    30,
                    Backoff {
                        base: Duration::from_millis(10),
                        max: Duration::from_millis(100),
                    },
                    0,
                )
                .await,
            "late retry",
        );
        assert_eq!(
            other.get(&id).expect("get").expect("job").state,
            JobState::Succeeded
        );
        assert!(other
            .claim(u64::MAX / 2, LEASE)
            .await
            .expect("claim")
            .is_none());
    });
}

/// Several nodes on one PostgreSQL: the attempt a node claimed is forgotten (the queue's
/// in-memory map of attempts claimed here) when another node took the job over: when the
/// stalled runner's heartbeat renews nothing, and when its settle is refused. Only the
/// attempts of jobs still running here are kept. Only on PostgreSQL.
#[cfg(feature = "postgres")]
#[test]
fn a_node_forgets_the_attempts_another_node_took_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    if provisio_test_support::postgres::store_url(dir.path()).is_none() {
        return;
    }
    let stalled = open(dir.path());
    let other = open(dir.path());
    rt().block_on(async {
        let beat = stalled.submit(job("A/B"), 1).await.expect("submit").job.id;
        let settle = stalled.submit(job("A/C"), 1).await.expect("submit").job.id;
        let kept = stalled.submit(job("A/D"), 1).await.expect("submit").job.id;
        let mut mine = HashMap::new();
        for _ in 0..3 {
            let j = stalled.claim(2, LEASE).await.expect("claim").expect("job");
            mine.insert(j.id.clone(), j.attempts);
        }
        assert_eq!(stalled.pg_attempts_kept(), 3);
        // Two leases run out; the other node takes those jobs back and claims them.
        stalled
            .heartbeat_attempt(&kept, mine[&kept], 1_000_000, LEASE)
            .await
            .expect("heartbeat");
        let back = other
            .take_back_expired(500_000, 10)
            .await
            .expect("take back");
        assert_eq!(back.len(), 2, "{back:?}");
        for _ in 0..2 {
            other
                .claim(500_000, LEASE)
                .await
                .expect("claim")
                .expect("job");
        }
        assert!(!stalled
            .heartbeat_attempt(&beat, mine[&beat], 10, LEASE)
            .await
            .expect("heartbeat of a job taken over"));
        assert_eq!(stalled.pg_attempts_kept(), 2, "the lost lease is forgotten");
        match stalled
            .finish_attempt(&settle, mine[&settle], done(), 10)
            .await
        {
            Err(QueueError::WrongState { .. }) => {}
            other => panic!("finish by the stalled node: {other:?}"),
        }
        assert_eq!(
            stalled.pg_attempts_kept(),
            1,
            "the refused settle is forgotten"
        );
        stalled
            .finish_attempt(&kept, mine[&kept], done(), 20)
            .await
            .expect("finish of the job still held here");
        assert_eq!(stalled.pg_attempts_kept(), 0);
        for id in [&beat, &settle] {
            other
                .finish(id, done(), 30)
                .await
                .expect("the other node finishes");
        }
        assert_eq!(other.pg_attempts_kept(), 0);
    });
}

/// A cancel of a running job made through this process is seen by its runner without a
/// read (`cancel_requested`), and forgotten once the job is settled.
#[test]
fn a_cancel_of_a_running_job_is_seen_by_its_runner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    rt().block_on(async {
        let id = q.submit(job("A/B"), 1).await.expect("submit").job.id;
        let other = q.submit(job("A/C"), 1).await.expect("submit").job.id;
        let j = q.claim(2, LEASE).await.expect("claim").expect("job");
        assert_eq!(j.id, id);
        q.claim(2, LEASE).await.expect("claim").expect("job");
        assert!(!q.cancel_requested(&id));
        assert!(matches!(
            q.cancel(&id, 3).await.expect("cancel"),
            Cancelled::Running(_)
        ));
        assert!(q.cancel_requested(&id));
        assert!(!q.cancel_requested(&other), "only the job cancelled");
        let end = Finish {
            state: JobState::Cancelled,
            ..done()
        };
        q.finish_attempt(&id, j.attempts, end, 4)
            .await
            .expect("finish");
        assert!(!q.cancel_requested(&id));
    });
}

/// `state_of` (what a `?wait` reads until the job ends) says what the whole job says, at
/// every stage, and `None` for no such job.
#[test]
fn a_jobs_state_alone_follows_it_to_its_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    let both = |id: &str| {
        let alone = q.state_of(id).expect("state_of");
        let whole = q.get(id).expect("get").map(|j| j.state);
        assert_eq!(alone, whole, "{id}");
        alone
    };
    rt().block_on(async {
        let id = q.submit(job("A/B"), 1).await.expect("submit").job.id;
        let other = q.submit(job("A/C"), 1).await.expect("submit").job.id;
        assert_eq!(both(&id), Some(JobState::Queued));
        let j = q.claim(2, LEASE).await.expect("claim").expect("job");
        assert_eq!(j.id, id);
        assert_eq!(both(&id), Some(JobState::Running));
        q.finish_attempt(&id, j.attempts, done(), 3)
            .await
            .expect("finish");
        assert_eq!(both(&id), Some(JobState::Succeeded));
        q.cancel(&other, 4).await.expect("cancel");
        assert_eq!(both(&other), Some(JobState::Cancelled));
        assert_eq!(both("no-such-job"), None);
    });
}

#[test]
fn transient_failures_back_off_then_die_and_an_operator_requeues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    let backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(10),
    };
    rt().block_on(async {
        let id = q
            .submit(
                NewJob {
                    max_attempts: 2,
                    ..job("A/B")
                },
                0,
            )
            .await
            .expect("submit")
            .job
            .id;
        let c = q.claim(0, LEASE).await.expect("claim").expect("job");
        let first_txn = c.txn.clone();
        let j = q
            .retry_later(&id, "busy".into(), 1_000, backoff, 7)
            .await
            .expect("retry");
        assert_eq!(j.state, JobState::Queued);
        assert!(
            (1_050..=1_100).contains(&j.not_before_ms),
            "{}",
            j.not_before_ms
        );
        assert!(q.claim(1_049, LEASE).await.expect("claim").is_none());
        let c = q.claim(1_100, LEASE).await.expect("claim").expect("job");
        assert_ne!(c.txn, first_txn, "a retry is a new transaction");
        let j = q
            .retry_later(&id, "still busy".into(), 2_000, backoff, 7)
            .await
            .expect("retry");
        assert_eq!(j.state, JobState::Dead);
        assert!(j.payload.is_some(), "kept for a requeue");
        assert!(q.claim(u64::MAX / 2, LEASE).await.expect("claim").is_none());
        let r = q.requeue(&id, 3_000).await.expect("requeue");
        assert_eq!((r.state, r.attempts), (JobState::Queued, 0));
        let c = q.claim(3_000, LEASE).await.expect("claim").expect("job");
        assert_eq!(c.id, id);
        let f = q.finish(&id, done(), 3_001).await.expect("finish");
        assert_eq!(f.state, JobState::Succeeded);
        assert!(f.payload.is_none(), "a finished job drops its request");
        assert!(matches!(
            q.requeue(&id, 3_002).await,
            Err(QueueError::WrongState { .. })
        ));
    });
}

#[test]
fn a_cancelled_queued_job_never_starts_and_a_running_one_is_flagged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    rt().block_on(async {
        let line = |n: &str| NewJob {
            serial_key: Some("t".into()),
            ..job(n)
        };
        let a = q.submit(line("A/a"), 0).await.expect("submit").job;
        let b = q.submit(line("A/b"), 0).await.expect("submit").job;
        let c = q.submit(line("A/c"), 0).await.expect("submit").job;
        let running = q.claim(0, LEASE).await.expect("claim").expect("job");
        assert_eq!(running.id, a.id);
        // b is waiting in the line: cancelled, it never starts, and c keeps its turn.
        assert!(matches!(
            q.cancel(&b.id, 1).await.expect("cancel"),
            Cancelled::Dequeued(_)
        ));
        match q.cancel(&a.id, 1).await.expect("cancel") {
            Cancelled::Running(j) => assert!(j.cancel_requested),
            other => panic!("{other:?}"),
        }
        let f = q
            .finish(
                &a.id,
                Finish {
                    state: JobState::Cancelled,
                    outcome: Some("rolled_back".into()),
                    result: None,
                    error: Some("cancelled".into()),
                },
                2,
            )
            .await
            .expect("finish");
        assert_eq!(f.state, JobState::Cancelled);
        let next = q.claim(3, LEASE).await.expect("claim").expect("job");
        assert_eq!(next.id, c.id);
        assert!(q.claim(3, LEASE).await.expect("claim").is_none());
        assert!(matches!(
            q.cancel(&b.id, 4).await.expect("cancel"),
            Cancelled::AlreadyFinal(_)
        ));
    });
}

#[test]
fn listings_filter_and_page_newest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    rt().block_on(async {
        let mut ids = Vec::new();
        for i in 0..7 {
            let target = if i % 2 == 0 {
                "DNS/Zone"
            } else {
                "Files/Folder"
            };
            let subject = if i < 4 { "alice" } else { "bob" };
            ids.push(
                q.submit(
                    NewJob {
                        subject: subject.into(),
                        ..job(target)
                    },
                    i,
                )
                .await
                .expect("submit")
                .job
                .id,
            );
        }
        let c = q.claim(10, LEASE).await.expect("claim").expect("job");
        assert_eq!(c.id, ids[0]);
        let all = q.list(&ListFilter::default(), None, 3).expect("list");
        assert_eq!(
            all.jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
            vec![ids[6].clone(), ids[5].clone(), ids[4].clone()]
        );
        let rest = q.list(&ListFilter::default(), all.next, 10).expect("list");
        assert_eq!(rest.jobs.len(), 4);
        assert_eq!(rest.next, None);
        let dns = ListFilter {
            namespace: Some("DNS".into()),
            subject: Some("alice".into()),
            ..ListFilter::default()
        };
        let page = q.list(&dns, None, 10).expect("list");
        assert_eq!(
            page.jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
            vec![ids[2].clone(), ids[0].clone()]
        );
        let running = ListFilter {
            state: Some(JobState::Running),
            ..ListFilter::default()
        };
        assert_eq!(q.list(&running, None, 10).expect("list").jobs.len(), 1);
        let queued = ListFilter {
            state: Some(JobState::Queued),
            target: Some("Files/Folder".into()),
            ..ListFilter::default()
        };
        assert_eq!(q.list(&queued, None, 10).expect("list").jobs.len(), 3);
    });
}

#[test]
fn prune_removes_jobs_finished_long_enough_ago_with_all_their_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    rt().block_on(async {
        let keyed = NewJob {
            idempotency_key: Some("k".into()),
            ..job("A/B")
        };
        let old = q.submit(keyed.clone(), 0).await.expect("submit").job;
        let c = q.claim(0, LEASE).await.expect("claim").expect("job");
        q.finish(&c.id, done(), 100).await.expect("finish");
        let recent = q.submit(job("A/C"), 150).await.expect("submit").job;
        let c = q.claim(150, LEASE).await.expect("claim").expect("job");
        q.finish(&c.id, done(), 500).await.expect("finish");
        let waiting = q.submit(job("A/D"), 600).await.expect("submit").job;
        assert_eq!(q.prune(300, 100).await.expect("prune"), 1);
        assert!(q.get(&old.id).expect("get").is_none());
        assert!(q.get(&recent.id).expect("get").is_some());
        assert!(q.get(&waiting.id).expect("get").is_some());
        let listed: Vec<String> = q
            .list(&ListFilter::default(), None, 10)
            .expect("list")
            .jobs
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(listed, vec![waiting.id.clone(), recent.id.clone()]);
        // Its idempotency key is forgotten with it.
        assert!(q.submit(keyed, 700).await.expect("submit").created);
        // Nothing but the pruned job went: the two kept and the new one.
        let left = q
            .list(&ListFilter::default(), None, 100)
            .expect("list")
            .jobs
            .len();
        assert_eq!(left, 3);
        if q.is_shared() {
            return;
        }
        // One job record per listed job (the sled layout).
        let left = q.store().scan(Space::Queue, &[JOB]).expect("scan").len();
        assert_eq!(left, 3);
    });
}

#[test]
fn counts_by_state_follow_every_change_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = [1, 1, 1, 0, 0, 1, 0];
    {
        let q = open(dir.path());
        rt().block_on(async {
            let mut ids = Vec::new();
            for i in 0..4 {
                ids.push(q.submit(job("A/B"), i).await.expect("submit").job.id);
            }
            let a = q.claim(10, LEASE).await.expect("claim").expect("job");
            q.finish(&a.id, done(), 11).await.expect("finish");
            q.claim(12, LEASE).await.expect("claim").expect("job");
            q.cancel(&ids[3], 13).await.expect("cancel");
            assert_eq!(q.counts(), expected);
        });
    }
    let q = open(dir.path());
    assert_eq!(q.counts(), expected);
    // The totals too, and pruning lowers the counts, never the totals.
    let t = q.tally();
    assert_eq!((t.submitted, t.entered[2], t.entered[5]), (4, 1, 1));
    rt().block_on(async {
        assert_eq!(q.prune(u64::MAX / 2, 100).await.expect("prune"), 2);
    });
    drop(q);
    let t = open(dir.path()).tally();
    assert_eq!(t.now, [1, 1, 0, 0, 0, 0, 0]);
    assert_eq!((t.submitted, t.entered[2], t.entered[5]), (4, 1, 1));
}

#[test]
fn a_dead_job_holds_its_keys_line_until_requeued_or_discarded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    let backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(10),
    };
    rt().block_on(async {
        let keyed = |target: &str| NewJob {
            serial_key: Some("tenant".into()),
            max_attempts: 1,
            ..job(target)
        };
        let a = q.submit(keyed("A"), 1).await.expect("a").job;
        let b = q.submit(keyed("B"), 1).await.expect("b").job;
        let other = q.submit(job("C"), 1).await.expect("c").job;
        let first = q.claim(2, LEASE).await.expect("claim").expect("a");
        assert_eq!(first.id, a.id);
        let dead = q
            .retry_later(&a.id, "busy".into(), 3, backoff, 1)
            .await
            .expect("retry");
        assert_eq!(dead.state, JobState::Dead);
        // B waits behind the dead A; other keys run.
        let next = q.claim(4, LEASE).await.expect("claim").expect("c");
        assert_eq!(next.id, other.id);
        assert!(
            q.claim(5, LEASE).await.expect("claim").is_none(),
            "B is held back"
        );
        // Requeued, A keeps its place at the head: it runs before B.
        q.requeue(&a.id, 6).await.expect("requeue");
        let again = q.claim(7, LEASE).await.expect("claim").expect("a again");
        assert_eq!(again.id, a.id);
        q.retry_later(&a.id, "busy".into(), 8, backoff, 1)
            .await
            .expect("dies again");
        assert!(q.claim(9, LEASE).await.expect("claim").is_none());
        // Discarded by an operator: B may run; A is cancelled, its request dropped.
        let gone = q.discard(&a.id, 10).await.expect("discard");
        assert_eq!(gone.state, JobState::Cancelled);
        assert!(gone.payload.is_none());
        assert!(matches!(
            q.discard(&a.id, 11).await,
            Err(QueueError::WrongState { .. })
        ));
        let last = q.claim(12, LEASE).await.expect("claim").expect("b");
        assert_eq!(last.id, b.id);
        assert_eq!(q.counts()[4], 0, "no dead job left");
    });
}

#[test]
fn retention_of_a_dead_job_lets_its_line_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    rt().block_on(async {
        let keyed = |target: &str| NewJob {
            serial_key: Some("tenant".into()),
            ..job(target)
        };
        let a = q.submit(keyed("A"), 1).await.expect("a").job;
        let b = q.submit(keyed("B"), 1).await.expect("b").job;
        q.claim(2, LEASE).await.expect("claim").expect("a");
        q.bury(&a.id, "unreadable".into(), 3).await.expect("bury");
        assert!(q.claim(4, LEASE).await.expect("claim").is_none());
        assert_eq!(q.prune(10, 100).await.expect("prune"), 1);
        assert!(q.get(&a.id).expect("get").is_none());
        let next = q.claim(11, LEASE).await.expect("claim").expect("b");
        assert_eq!(next.id, b.id);
    });
}

#[test]
fn backoff_doubles_up_to_its_maximum_with_jitter_in_the_upper_half() {
    let b = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_millis(1_000),
    };
    for random in [0u64, 1, 999, u64::MAX] {
        let d1 = b.delay(1, random).as_millis();
        let d3 = b.delay(3, random).as_millis();
        let d9 = b.delay(9, random).as_millis();
        assert!((50..=100).contains(&d1), "{d1}");
        assert!((200..=400).contains(&d3), "{d3}");
        assert!((500..=1_000).contains(&d9), "{d9}");
    }
    assert!(b.delay(u32::MAX, 3) <= b.max);
}

#[test]
fn a_key_with_a_nul_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    let err = rt().block_on(q.submit(
        NewJob {
            serial_key: Some("a\0b".into()),
            ..job("A/B")
        },
        0,
    ));
    assert!(matches!(err, Err(QueueError::BadField { .. })));
}

/// A store that counts the rows it hands out, and the writes it is given.
struct Counting {
    inner: Arc<dyn Store>,
    rows: AtomicUsize,
    /// Batches written.
    batches: AtomicUsize,
    /// Keys put or deleted, over every batch.
    keys: AtomicUsize,
    /// Bytes of keys and values put.
    bytes: AtomicUsize,
    /// Durable writes and syncs asked for.
    syncs: AtomicUsize,
}

impl Counting {
    fn new(inner: Arc<dyn Store>) -> Counting {
        Counting {
            inner,
            rows: AtomicUsize::new(0),
            batches: AtomicUsize::new(0),
            keys: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            syncs: AtomicUsize::new(0),
        }
    }

    /// (batches, keys, bytes, syncs) since the last call.
    fn take_writes(&self) -> (usize, usize, usize, usize) {
        (
            self.batches.swap(0, Relaxed),
            self.keys.swap(0, Relaxed),
            self.bytes.swap(0, Relaxed),
            self.syncs.swap(0, Relaxed),
        )
    }
}

#[async_trait::async_trait]
impl Store for Counting {
    async fn write(&self, batch: Batch, durable: bool) -> Result<(), StoreError> {
        self.batches.fetch_add(1, Relaxed);
        self.keys.fetch_add(batch.writes.len(), Relaxed);
        let bytes: usize = batch
            .writes
            .iter()
            .map(|(_, k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        self.bytes.fetch_add(bytes, Relaxed);
        if durable {
            self.syncs.fetch_add(1, Relaxed);
        }
        self.inner.write(batch, durable).await
    }
    async fn sync(&self) -> Result<(), StoreError> {
        self.syncs.fetch_add(1, Relaxed);
        self.inner.sync().await
    }
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.rows.fetch_add(1, Relaxed);
        self.inner.get(space, key)
    }
    fn scan(&self, space: Space, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let rows = self.inner.scan(space, prefix)?;
        self.rows.fetch_add(rows.len(), Relaxed);
        Ok(rows)
    }
    fn scan_range(
        &self,
        space: Space,
        range: KeyRange<'_>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let rows = self.inner.scan_range(space, range, limit, reverse)?;
        self.rows.fetch_add(rows.len(), Relaxed);
        Ok(rows)
    }
}

#[test]
fn claiming_and_finishing_read_a_handful_of_rows_whatever_the_backlog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Counting::new(open_store(dir.path())));
    let q = Queue::open(store.clone()).expect("queue");
    rt().block_on(async {
        for i in 0..3_000u64 {
            let mut j = job("A/B");
            j.serial_key = Some(format!("tenant-{}", i % 50));
            j.not_before_ms = if i % 3 == 0 { 1_000_000 } else { 0 };
            q.submit(j, 0).await.expect("submit");
        }
        for _ in 0..20 {
            store.rows.store(0, Relaxed);
            let c = q.claim(10, LEASE).await.expect("claim").expect("job");
            q.finish(&c.id, done(), 11).await.expect("finish");
            let rows = store.rows.load(Relaxed);
            assert!(rows <= 12, "a claim and a finish read {rows} rows");
        }
        store.rows.store(0, Relaxed);
        q.submit(job("A/C"), 12).await.expect("submit");
        assert!(store.rows.load(Relaxed) <= 4);
    });
}

#[test]
fn a_backlog_due_at_once_is_promoted_a_few_jobs_a_claim_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Counting::new(open_store(dir.path())));
    let q = Queue::open(store.clone()).expect("queue");
    rt().block_on(async {
        let mut ids = Vec::new();
        for _ in 0..2_000u64 {
            let mut j = job("A/B");
            j.not_before_ms = 1_000;
            ids.push(q.submit(j, 0).await.expect("submit").job.id);
        }
        for id in ids.iter().take(40) {
            store.rows.store(0, Relaxed);
            let c = q.claim(1_000, LEASE).await.expect("claim").expect("job");
            assert_eq!(&c.id, id, "in submission order");
            q.finish(&c.id, done(), 1_001).await.expect("finish");
            let rows = store.rows.load(Relaxed);
            assert!(rows <= 20, "a claim and a finish read {rows} rows");
        }
    });
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Op {
    Submit { priority: i16, key: Option<u8> },
    Claim,
    Finish(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0i16..3, proptest::option::of(0u8..3))
            .prop_map(|(priority, key)| Op::Submit { priority, key }),
        3 => Just(Op::Claim),
        2 => (0usize..8).prop_map(Op::Finish),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Against a model: a claim takes the best runnable job (highest priority, then the
    /// oldest), where a job of a serialization key is runnable only when every earlier job
    /// of its key is finished; so jobs of a key never run at once and start in submission
    /// order.
    #[test]
    fn claims_follow_priority_submission_order_and_serialization_keys(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = open(dir.path());
        rt().block_on(async {
            // Model: (seq order) id, priority, key, state (0 queued, 1 running, 2 done).
            let mut model: Vec<(String, i16, Option<u8>, u8)> = Vec::new();
            let mut running: Vec<String> = Vec::new();
            let mut started: HashMap<u8, Vec<usize>> = HashMap::new();
            for op in ops {
                match op {
                    Op::Submit { priority, key } => {
                        let j = q.submit(NewJob {
                            priority,
                            serial_key: key.map(|k| format!("k{k}")),
                            ..job("A/B")
                        }, 0).await.expect("submit").job;
                        model.push((j.id, priority, key, 0));
                    }
                    Op::Claim => {
                        let claimed = q.claim(0, LEASE).await.expect("claim");
                        let mut busy: HashSet<u8> = HashSet::new();
                        let mut expected: Option<usize> = None;
                        for (i, (_, p, k, s)) in model.iter().enumerate() {
                            let blocked = k.is_some_and(|k| busy.contains(&k));
                            if let Some(k) = k {
                                if *s != 2 {
                                    busy.insert(*k);
                                }
                            }
                            if *s == 0 && !blocked
                                && expected.is_none_or(|e| *p > model[e].1)
                            {
                                expected = Some(i);
                            }
                        }
                        match (claimed, expected) {
                            (None, None) => {}
                            (Some(c), Some(e)) => {
                                prop_assert_eq!(&c.id, &model[e].0);
                                model[e].3 = 1;
                                if let Some(k) = model[e].2 {
                                    let line = started.entry(k).or_default();
                                    prop_assert!(line.last().is_none_or(|l| *l < e));
                                    line.push(e);
                                }
                                running.push(c.id);
                            }
                            (c, e) => prop_assert!(false, "claimed {:?}, expected {:?}", c.map(|c| c.id), e),
                        }
                    }
                    Op::Finish(n) => {
                        if running.is_empty() {
                            continue;
                        }
                        let id = running.remove(n % running.len());
                        q.finish(&id, done(), 1).await.expect("finish");
                        if let Some(m) = model.iter_mut().find(|m| m.0 == id) {
                            m.3 = 2;
                        }
                    }
                }
                // Never two running jobs of one key.
                let mut keys = HashSet::new();
                for (_, _, k, s) in &model {
                    if let (Some(k), 1) = (k, s) {
                        prop_assert!(keys.insert(*k));
                    }
                }
            }
            Ok(())
        })?;
    }
}

#[test]
fn held_jobs_wait_for_their_transaction_and_keep_their_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    rt().block_on(async {
        let held = |t: &str| JobOptions {
            held_by: Some(t.into()),
            ..JobOptions::default()
        };
        let keyed = |target: &str| NewJob {
            serial_key: Some("tenant".into()),
            ..job(target)
        };
        let a = q
            .submit_with(keyed("A"), held("t1"), 1)
            .await
            .expect("a")
            .job;
        let b = q.submit(keyed("B"), 1).await.expect("b").job;
        let c = q.submit_with(job("C"), held("t2"), 1).await.expect("c").job;
        assert_eq!((a.state, c.state), (JobState::Held, JobState::Held));
        assert_eq!(
            (q.counts()[0], q.counts()[6]),
            (1, 2),
            "held apart from queued"
        );
        let listed = q
            .list(
                &ListFilter {
                    state: Some(JobState::Held),
                    ..ListFilter::default()
                },
                None,
                10,
            )
            .expect("list");
        assert_eq!(listed.jobs.len(), 2);
        // The held job is in no line: B (same key) runs; nothing else is claimable.
        let first = q.claim(2, LEASE).await.expect("claim").expect("b");
        assert_eq!(first.id, b.id);
        assert!(q.claim(2, LEASE).await.expect("claim").is_none());
        assert_eq!(q.discard_held("t2").await.expect("discard"), 1);
        assert!(q.get(&c.id).expect("get").is_none());
        assert_eq!(q.counts()[6], 1, "C is no longer counted");
        // Released while B of its key still runs: it waits for B.
        assert_eq!(q.release_held("t1", 3).await.expect("release"), 1);
        let released = q.get(&a.id).expect("get").expect("a");
        assert_eq!(released.state, JobState::Queued);
        assert_eq!((q.counts()[0], q.counts()[6]), (1, 0));
        assert!(q.claim(3, LEASE).await.expect("claim").is_none());
        q.finish(&b.id, done(), 4).await.expect("finish");
        let next = q.claim(5, LEASE).await.expect("claim").expect("a");
        assert_eq!(next.id, a.id);
        assert_eq!(next.held_by, None);
        // Nothing left held.
        assert_eq!(q.release_held("t1", 6).await.expect("again"), 0);
    });
}

#[test]
fn a_fixed_retry_interval_and_failed_instead_of_dead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    let backoff = Backoff {
        base: Duration::from_secs(100),
        max: Duration::from_secs(1000),
    };
    rt().block_on(async {
        let options = JobOptions {
            retry_interval_ms: Some(250),
            fail_when_exhausted: true,
            ..JobOptions::default()
        };
        let new = NewJob {
            max_attempts: 2,
            ..job("R")
        };
        let j = q.submit_with(new, options, 1).await.expect("submit").job;
        q.claim(10, LEASE).await.expect("claim").expect("first");
        let again = q
            .retry_later(&j.id, "busy".into(), 10, backoff, 7)
            .await
            .expect("retry");
        assert_eq!(again.state, JobState::Queued);
        assert_eq!(
            again.not_before_ms, 260,
            "the fixed interval, not the backoff"
        );
        q.claim(260, LEASE).await.expect("claim").expect("second");
        let last = q
            .retry_later(&j.id, "busy".into(), 300, backoff, 7)
            .await
            .expect("retry");
        assert_eq!(
            last.state,
            JobState::Failed,
            "onFailure=continue: failed, not dead"
        );
    });
}

/// Submissions and claims from many tasks at once share syncs (the queue's lock is not
/// held across the sync), and every one of them is durable once it returned: a reopened
/// store has them all, claimed ones with their transaction ids.
#[test]
fn concurrent_submissions_and_claims_share_syncs_and_are_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(dir.path()).expect("open store"));
    let q = Arc::new(Queue::open(store.clone()).expect("open queue"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let n = 200;
    let before = store.sync_count();
    let claimed: Vec<Job> = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let q = q.clone();
            tasks.spawn(async move { q.submit(job(&format!("A/j{i}")), 10).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("task").expect("submit");
        }
        let mut claims = tokio::task::JoinSet::new();
        for _ in 0..n {
            let q = q.clone();
            claims.spawn(async move { q.claim(20, LEASE).await });
        }
        let mut claimed = Vec::new();
        while let Some(r) = claims.join_next().await {
            claimed.push(r.expect("task").expect("claim").expect("a job was due"));
        }
        claimed
    });
    let syncs = store.sync_count() - before;
    assert!(
        syncs < 2 * n as u64,
        "{syncs} syncs for {n} submissions and {n} claims: the queue's writes are not grouped"
    );
    drop(q);
    drop(rt);
    drop(store);
    // Counting syncs is sled's: this test stays on sled whatever the suite runs on.
    let q = Queue::open(Arc::new(SledStore::open(dir.path()).expect("reopen"))).expect("queue");
    assert_eq!(q.counts()[state_index(JobState::Running)], n as u64);
    let ids: HashSet<String> = claimed.iter().map(|j| j.id.clone()).collect();
    assert_eq!(ids.len(), n);
    for j in &claimed {
        let again = q.get(&j.id).expect("read").expect("the job is still there");
        assert_eq!(again.state, JobState::Running);
        assert_eq!(again.txn, j.txn, "its transaction id survived");
    }
}

#[test]
fn a_waiting_submission_is_claimed_at_once_only_when_no_other_job_would_run_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = {
        let q = open(dir.path());
        rt().block_on(async {
            // Nothing else queued: written running, with its attempt's transaction, and
            // counted as a submission and a claim.
            let Ok(j) = q
                .submit_claimed(job("A/wait"), 10, LEASE)
                .await
                .expect("submit")
            else {
                panic!("nothing else queued: claimed at once")
            };
            assert_eq!(
                (j.state, j.attempts, j.started_ms),
                (JobState::Running, 1, Some(10))
            );
            let txn = j.txn.clone().expect("its transaction");
            assert_eq!(j.txns, vec![txn]);
            assert_eq!(q.get(&j.id).expect("get"), Some(j.clone()));
            assert!(
                q.claim(11, LEASE).await.expect("claim").is_none(),
                "not in the ready index"
            );
            let t = q.tally();
            assert_eq!((t.submitted, t.entered[0], t.now[1]), (1, 1, 1));
            q.finish(&j.id, done(), 12).await.expect("finish");
            // A ready job goes first: given back, nothing written.
            let ready = q.submit(job("A/ready"), 20).await.expect("submit").job;
            let back = q
                .submit_claimed(job("A/second"), 21, LEASE)
                .await
                .expect("submit");
            assert_eq!(back.map_err(|n| n.target), Err("A/second".to_string()));
            assert_eq!(
                q.claim(22, LEASE).await.expect("claim").map(|c| c.id),
                Some(ready.id)
            );
            // An idempotency key (answered by `submit`), a later time, a busy line: given back.
            let keyed = NewJob {
                idempotency_key: Some("k".into()),
                ..job("A/keyed")
            };
            assert!(q
                .submit_claimed(keyed, 30, LEASE)
                .await
                .expect("submit")
                .is_err());
            let later = NewJob {
                not_before_ms: 1_000,
                ..job("A/later")
            };
            assert!(q
                .submit_claimed(later, 30, LEASE)
                .await
                .expect("submit")
                .is_err());
            let tenant = |k: &str| NewJob {
                serial_key: Some(k.into()),
                ..job("A/tenant")
            };
            q.submit(tenant("t"), 31).await.expect("submit");
            let first = q.claim(32, LEASE).await.expect("claim").expect("job");
            assert_eq!(first.serial_key.as_deref(), Some("t"));
            assert!(q
                .submit_claimed(tenant("t"), 33, LEASE)
                .await
                .expect("submit")
                .is_err());
            let Ok(other) = q
                .submit_claimed(tenant("u"), 34, LEASE)
                .await
                .expect("submit")
            else {
                panic!("another key's line is empty: claimed at once")
            };
            // Its line holds it: a later job of its key waits for it.
            q.submit(tenant("u"), 35).await.expect("submit");
            assert!(q.claim(36, LEASE).await.expect("claim").is_none());
            q.sync().await.expect("sync");
            other.id
        })
    };
    // After a restart the job is there, running, and taken back when its lease is over.
    let q = open(dir.path());
    rt().block_on(async {
        let back = q.take_back_expired(u64::MAX, 10).await.expect("take back");
        let ids: Vec<&str> = back.iter().map(|j| j.id.as_str()).collect();
        assert!(ids.contains(&id.as_str()), "{ids:?}");
    });
}

/// What a job costs the store on each path, printed (the figures BENCHMARKS.md quotes) and
/// bounded: a waiting request (queued and claimed in one write, then finished), and a
/// queued one (submitted, claimed, finished).
#[test]
fn a_job_writes_a_few_keys_on_each_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The store's writes are sled's (the PostgreSQL queue has tables of its own).
    let store = Arc::new(Counting::new(Arc::new(
        SledStore::open(dir.path()).expect("open"),
    )));
    let q = Queue::open(store.clone()).expect("queue");
    let payload = "x".repeat(600);
    let new = || NewJob {
        payload: payload.clone(),
        ..job("Error Provider/ReportEvent")
    };
    rt().block_on(async {
        // Warm up (the first writes of a store are not typical).
        let j = q
            .submit_claimed(new(), 1, LEASE)
            .await
            .expect("submit")
            .expect("claimed");
        q.finish(&j.id, done(), 2).await.expect("finish");
        store.take_writes();
        let j = q
            .submit_claimed(new(), 3, LEASE)
            .await
            .expect("submit")
            .expect("claimed");
        let submitted = store.take_writes();
        q.finish(&j.id, done(), 4).await.expect("finish");
        let finished = store.take_writes();
        eprintln!("waiting request: submit_claimed {submitted:?}, finish {finished:?} (batches, keys, bytes, syncs)");
        let ended = q.get(&j.id).expect("get").expect("job");
        let tally = q.tally();
        eprintln!(
            "records: a running job {} bytes (JSON {}), a finished one {} (JSON {}), the counts {} (JSON {})",
            encode(&j).len(),
            serde_json::to_vec(&j).expect("json").len(),
            encode(&ended).len(),
            serde_json::to_vec(&ended).expect("json").len(),
            codec::encode_tally(&tally).len(),
            serde_json::to_vec(&tally).expect("json").len(),
        );
        let fast = (submitted, finished);
        let j = q.submit(new(), 5).await.expect("submit").job;
        let submitted = store.take_writes();
        let c = q.claim(6, LEASE).await.expect("claim").expect("job");
        assert_eq!(c.id, j.id);
        let claimed = store.take_writes();
        q.finish(&j.id, done(), 7).await.expect("finish");
        let finished = store.take_writes();
        eprintln!("queued request: submit {submitted:?}, claim {claimed:?}, finish {finished:?} (batches, keys, bytes, syncs)");
        let keys = fast.0 .1 + fast.1 .1;
        assert!(keys <= KEYS_A_WAITING_JOB, "a waiting job wrote {keys} keys");
        let keys = submitted.1 + claimed.1 + finished.1;
        assert!(keys <= KEYS_A_QUEUED_JOB, "a queued job wrote {keys} keys");
        // A waiting job's own writes need no sync (the journal's carry them); a queued
        // one is synced at submission and at claim.
        assert_eq!(fast.0 .3 + fast.1 .3, 0, "a waiting job synced");
        assert!(submitted.3 + claimed.3 + finished.3 <= 2, "a queued job synced more than twice");
    });
}

/// The most keys a waiting job writes (queued and claimed at once, then finished).
const KEYS_A_WAITING_JOB: usize = 14;
/// The most keys a queued job writes (submitted, claimed, finished).
const KEYS_A_QUEUED_JOB: usize = 20;

/// A runner that stalled past its lease cannot settle its job after another claim took it
/// (issue 14): a finish, retry or bury naming the stale claim's attempt is refused, and the
/// job stays the current claim's, which settles it (on sled by the job's attempt number;
/// on PostgreSQL by the attempt this process claimed, another node's claim by node).
#[test]
fn a_settle_from_a_stale_claim_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    let backoff = Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_millis(100),
    };
    rt().block_on(async {
        let id = q.submit(job("A/B"), 1).await.expect("submit").job.id;
        let stale = q.claim(2, LEASE).await.expect("claim").expect("job");
        assert_eq!((stale.id.as_str(), stale.attempts), (id.as_str(), 1));
        let back = q
            .take_back_expired(u64::MAX / 2, 10)
            .await
            .expect("take back");
        assert_eq!(back.len(), 1);
        let current = q
            .claim(u64::MAX / 2, LEASE)
            .await
            .expect("claim")
            .expect("job");
        assert_eq!((current.id.as_str(), current.attempts), (id.as_str(), 2));
        let refused = |r: Result<Job, QueueError>, what: &str| match r {
            Err(QueueError::WrongState { what: why, .. }) => assert!(
                why.contains("claim of attempt 1 is stale") && why.contains("attempt 2"),
                "{what}: {why}"
            ),
            other => panic!("{what} by the stale claim: {other:?}"),
        };
        // The stale runner's heartbeat renews nothing; the current one's does.
        assert!(!q
            .heartbeat_attempt(&id, stale.attempts, 10, LEASE)
            .await
            .expect("stale heartbeat"));
        assert!(q
            .heartbeat_attempt(&id, current.attempts, 10, LEASE)
            .await
            .expect("current heartbeat"));
        refused(
            q.finish_attempt(&id, stale.attempts, done(), 10).await,
            "finish",
        );
        refused(
            q.retry_later_attempt(&id, stale.attempts, "x".into(), None, 10, backoff, 0)
                .await,
            "retry",
        );
        refused(
            q.bury_attempt(&id, stale.attempts, "x".into(), 10).await,
            "bury",
        );
        // On PostgreSQL the current claim's attempt is still remembered.
        #[cfg(feature = "postgres")]
        assert_eq!(q.pg_attempts_kept(), usize::from(q.pg.is_some()));
        let held = q.get(&id).expect("get").expect("job");
        assert_eq!((held.state, held.attempts), (JobState::Running, 2));
        assert_eq!(held.txn, current.txn);
        let finished = q
            .finish_attempt(&id, current.attempts, done(), 20)
            .await
            .expect("the current claim's finish");
        assert_eq!(finished.state, JobState::Succeeded);
        assert_eq!(
            q.get(&id).expect("get").expect("job").result.as_deref(),
            Some("ok")
        );
    });
}

/// A runner that stalled past its lease on sled (one process) cannot settle its job once
/// the job was taken back: not finish, retry or bury it while it waits to be claimed
/// again, nor queue it once more after the next claim finished it (that would run it a
/// second time).
#[test]
fn a_stalled_runner_cannot_settle_a_job_taken_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    let backoff = Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_millis(100),
    };
    rt().block_on(async {
        let id = q.submit(job("A/B"), 1).await.expect("submit").job.id;
        let mine = q.claim(2, LEASE).await.expect("claim").expect("job");
        assert_eq!(mine.id, id);
        let back = q
            .take_back_expired(u64::MAX / 2, 10)
            .await
            .expect("take back");
        assert_eq!(back.len(), 1);
        let refused = |r: Result<Job, QueueError>, what: &str| match r {
            Err(QueueError::WrongState { .. }) => {}
            other => panic!("{what} by the stalled runner: {other:?}"),
        };
        refused(q.finish(&id, done(), 10).await, "finish");
        refused(
            q.retry_later(&id, "x".into(), 10, backoff, 0).await,
            "retry",
        );
        refused(q.bury(&id, "x".into(), 10).await, "bury");
        let queued = q.get(&id).expect("get").expect("job");
        assert_eq!(queued.state, JobState::Queued);
        assert_eq!(queued.txn, mine.txn, "it keeps the attempt's transaction");
        assert!(!q.heartbeat(&id, 11, LEASE).await.expect("heartbeat"));
        let theirs = q
            .claim(u64::MAX / 2, LEASE)
            .await
            .expect("claim")
            .expect("job");
        assert_eq!(theirs.id, id);
        q.finish(&id, done(), 20).await.expect("finish");
        refused(
            q.retry_later(&id, "x".into(), 30, backoff, 0).await,
            "late retry",
        );
        let bury = q
            .bury(&id, "x".into(), 30)
            .await
            .expect("bury of a final job");
        assert_eq!(
            bury.state,
            JobState::Succeeded,
            "a final job stays as it is"
        );
        assert_eq!(
            q.get(&id).expect("get").expect("job").state,
            JobState::Succeeded
        );
        assert!(q.claim(u64::MAX / 2, LEASE).await.expect("claim").is_none());
    });
    drop(q);
    let q = open(dir.path());
    let counts = q.counts();
    assert_eq!(counts[state_index(JobState::Succeeded)], 1);
    assert_eq!(counts.iter().sum::<u64>(), 1);
}

/// A running job's record kept in memory follows every change made to it (a cancellation
/// asked for, a heartbeat, the finish) and matches what the store holds after a restart.
#[test]
fn a_running_job_read_from_memory_follows_its_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    let id = rt().block_on(async {
        let id = q.submit(job("A/B"), 1).await.expect("submit").job.id;
        let c = q.claim(2, LEASE).await.expect("claim").expect("job");
        assert_eq!(q.get(&id).expect("get").expect("job"), c);
        assert!(matches!(
            q.cancel(&id, 3).await.expect("cancel"),
            Cancelled::Running(_)
        ));
        assert!(q.get(&id).expect("get").expect("job").cancel_requested);
        assert!(q.heartbeat(&id, 4, LEASE).await.expect("heartbeat"));
        let beat = q.get(&id).expect("get").expect("job");
        assert!(beat.cancel_requested, "the heartbeat kept the cancellation");
        let f = q
            .finish(
                &id,
                Finish {
                    state: JobState::Cancelled,
                    outcome: Some("rolled_back".into()),
                    result: None,
                    error: Some("cancelled".into()),
                },
                5,
            )
            .await
            .expect("finish");
        assert_eq!(q.get(&id).expect("get").expect("job"), f);
        // Waiting requests: submitted and claimed at once, finished from memory.
        let w = q
            .submit_claimed(job("A/C"), 6, LEASE)
            .await
            .expect("submit")
            .expect("claimed");
        assert_eq!(q.get(&w.id).expect("get").expect("job"), w);
        q.finish(&w.id, done(), 7).await.expect("finish");
        id
    });
    drop(q);
    let q = open(dir.path());
    let j = q.get(&id).expect("get").expect("job");
    assert_eq!(j.state, JobState::Cancelled);
    assert!(j.cancel_requested);
    assert_eq!(j.finished_ms, Some(5));
}

/// Job records are binary now: every field reads back as written; a record written as
/// JSON by an earlier version still reads; one in an unknown format is refused clearly.
#[test]
fn job_records_round_trip_and_earlier_json_ones_still_read() {
    let mut j = new_job(
        NewJob {
            priority: -3,
            not_before_ms: 77,
            serial_key: Some("tenant-é".into()),
            idempotency_key: Some("k1".into()),
            ..job("Ns/Proc")
        },
        42,
        JobState::Running,
        1_000,
        &JobOptions {
            held_by: Some("txn-h".into()),
            retry_interval_ms: Some(5_000),
            fail_when_exhausted: true,
            ..JobOptions::default()
        },
    );
    j.attempts = 2;
    // The MPS queueContext fields (parentQueue, retryType, retryStopOnFailure,
    // retainSuccessfulResponses) round-trip too.
    j.retry_type = Some(RetryType::Exponential);
    j.retry_stop_code = Some(0x8007_0057);
    j.drop_success_response = true;
    j.parents = vec!["p1".into(), "p2".into()];
    j.waiting_for = vec!["p2".into()];
    j.awaited = true;
    j.txn = Some("t2".into());
    j.txns = vec!["t1".into(), "t2".into()];
    j.started_ms = Some(1_001);
    j.finished_ms = Some(1_002);
    j.error = Some("boom".into());
    j.outcome = Some("rolled_back".into());
    j.cancel_requested = true;
    j.result = Some("{\"r\":1}".into());
    for slot in [
        Slot::Ready,
        Slot::Scheduled(9),
        Slot::Waiting,
        Slot::Leased(u64::MAX),
        Slot::Held,
        Slot::Nowhere,
    ] {
        j.slot = slot;
        let bytes = encode(&j);
        assert_eq!(bytes[0], codec::JOB_V1);
        assert_eq!(decode(b"j", &bytes).expect("decode"), j);
    }
    let bare = new_job(job("A/B"), 1, JobState::Queued, 0, &JobOptions::default());
    assert_eq!(decode(b"j", &encode(&bare)).expect("decode"), bare);
    let json = serde_json::to_vec(&j).expect("json");
    assert_eq!(decode(b"j", &json).expect("decode json"), j);
    let err = decode(b"jx", &[9, 1, 2]).expect_err("unknown format");
    assert!(err.to_string().contains("newer provisio"), "{err}");
    let mut unknown = encode(&bare);
    unknown.extend_from_slice(&[200, 0]);
    assert!(
        decode(b"jx", &unknown).is_err(),
        "an unknown field is refused"
    );
    let t = Tally {
        now: [1, 2, 3, 4, 5, 6, 7],
        entered: [8, 9, 10, 11, 12, 13, 14],
        submitted: 15,
    };
    assert_eq!(codec::decode_tally(&codec::encode_tally(&t)), Some(t));
    assert_eq!(
        codec::decode_tally(&serde_json::to_vec(&t).expect("json")),
        Some(t)
    );
}

/// A waiting submission is claimed at once past a job scheduled for later, never past one
/// that is due (a claim now would take that one first).
#[test]
fn a_waiting_submission_yields_to_a_due_scheduled_job_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    rt().block_on(async {
        let scheduled = q
            .submit(
                NewJob {
                    not_before_ms: 100,
                    ..job("A/later")
                },
                10,
            )
            .await
            .expect("submit")
            .job;
        let early = q
            .submit_claimed(job("A/now"), 99, LEASE)
            .await
            .expect("submit")
            .expect("nothing due yet: claimed at once");
        q.finish(&early.id, done(), 99).await.expect("finish");
        let back = q
            .submit_claimed(job("A/now"), 100, LEASE)
            .await
            .expect("submit");
        assert!(back.is_err(), "the scheduled job is due: it goes first");
        let c = q.claim(100, LEASE).await.expect("claim").expect("job");
        assert_eq!(c.id, scheduled.id);
    });
}

fn failed() -> Finish {
    Finish {
        state: JobState::Failed,
        outcome: Some("rolled_back".into()),
        result: Some("no".into()),
        error: Some("it failed".into()),
    }
}

fn with_parents(parents: &[&str]) -> JobOptions {
    JobOptions {
        parents: parents.iter().map(|p| p.to_string()).collect(),
        ..JobOptions::default()
    }
}

/// MPS `parentQueue`: a child is `held` until its parents succeeded, released in the
/// write that finishes the last of them; an unknown or failed parent refuses the child.
#[test]
fn a_child_waits_for_its_parents_and_runs_after_the_last_succeeded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    rt().block_on(async {
        let a = q.submit(job("P/a"), 1).await.expect("a").job;
        let b = q.submit(job("P/b"), 1).await.expect("b").job;
        let child = q
            .submit_with(job("P/child"), with_parents(&[&a.id, &b.id, &a.id]), 1)
            .await
            .expect("child")
            .job;
        assert_eq!(child.state, JobState::Held);
        assert_eq!(
            child.parents,
            vec![a.id.clone(), b.id.clone()],
            "deduplicated"
        );
        assert_eq!(child.waiting_for, child.parents);
        assert_eq!((q.counts()[0], q.counts()[6]), (2, 1));
        // Only the parents are claimable.
        let first = q.claim(2, LEASE).await.expect("claim").expect("a");
        let second = q.claim(2, LEASE).await.expect("claim").expect("b");
        assert!(q.claim(2, LEASE).await.expect("claim").is_none());
        q.finish(&first.id, done(), 3).await.expect("finish a");
        let waiting = q.get(&child.id).expect("get").expect("child");
        assert_eq!(waiting.state, JobState::Held);
        assert_eq!(waiting.waiting_for, vec![second.id.clone()]);
        assert!(q.claim(4, LEASE).await.expect("claim").is_none());
        q.finish(&second.id, done(), 5).await.expect("finish b");
        let ready = q.claim(6, LEASE).await.expect("claim").expect("the child");
        assert_eq!(ready.id, child.id);
        assert!(ready.waiting_for.is_empty());

        // A parent that already succeeded is nothing to wait for.
        let after = q
            .submit_with(job("P/after"), with_parents(&[&a.id]), 7)
            .await
            .expect("after")
            .job;
        assert_eq!(after.state, JobState::Queued);

        // Unknown and failed parents refuse the job, naming the field.
        let e = q
            .submit_with(job("P/orphan"), with_parents(&["no-such-job"]), 8)
            .await
            .expect_err("unknown parent");
        assert!(matches!(e, QueueError::UnknownParent(ref id) if id == "no-such-job"));
        assert!(
            e.to_string()
                .contains("context/queueContext/parentQueue/@queueId `no-such-job`"),
            "{e}"
        );
        let c = q.claim(9, LEASE).await.expect("claim").expect("after");
        q.finish(&c.id, failed(), 10).await.expect("fail it");
        let e = q
            .submit_with(job("P/late"), with_parents(&[&c.id]), 11)
            .await
            .expect_err("failed parent");
        assert!(e.to_string().contains("that job failed"), "{e}");
    });
}

/// A parent that fails or is cancelled makes its waiting children `dead`, naming it (an
/// operator may requeue them); a dead parent keeps them waiting until it is requeued and
/// succeeds, or is discarded.
#[test]
fn a_failed_parent_buries_its_children_and_a_dead_one_keeps_them_waiting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    let backoff = Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_millis(10),
    };
    rt().block_on(async {
        let parent = q.submit(job("F/parent"), 1).await.expect("p").job;
        let child = q
            .submit_with(job("F/child"), with_parents(&[&parent.id]), 1)
            .await
            .expect("child")
            .job;
        let grandchild = q
            .submit_with(job("F/grandchild"), with_parents(&[&child.id]), 1)
            .await
            .expect("grandchild")
            .job;
        let p = q.claim(2, LEASE).await.expect("claim").expect("parent");
        q.finish(&p.id, failed(), 3).await.expect("fail");
        let dead = q.get(&child.id).expect("get").expect("child");
        assert_eq!(dead.state, JobState::Dead);
        let why = dead.error.clone().unwrap_or_default();
        assert!(
            why.contains(&format!("parent job `{}` failed", parent.id)),
            "{why}"
        );
        // Its own child waits on: a dead job may be requeued.
        let gc = q.get(&grandchild.id).expect("get").expect("grandchild");
        assert_eq!(gc.state, JobState::Held);
        // The operator requeues the child: it runs (without its failed parent), and its
        // success releases the grandchild.
        q.requeue(&child.id, 4).await.expect("requeue");
        let c = q.claim(5, LEASE).await.expect("claim").expect("child");
        assert_eq!(c.id, child.id);
        q.finish(&c.id, done(), 6).await.expect("finish");
        let g = q.claim(7, LEASE).await.expect("claim").expect("grandchild");
        assert_eq!(g.id, grandchild.id);
        q.finish(&g.id, done(), 8).await.expect("finish");

        // A dead parent (out of attempts) keeps its child waiting; discarding it kills it.
        let once = NewJob {
            max_attempts: 1,
            ..job("F/once")
        };
        let p2 = q.submit(once, 10).await.expect("p2").job;
        let c2 = q
            .submit_with(job("F/c2"), with_parents(&[&p2.id]), 10)
            .await
            .expect("c2")
            .job;
        q.claim(11, LEASE).await.expect("claim").expect("p2");
        let d = q
            .retry_later(&p2.id, "busy".into(), 12, backoff, 1)
            .await
            .expect("retry");
        assert_eq!(d.state, JobState::Dead);
        assert_eq!(
            q.get(&c2.id).expect("get").expect("c2").state,
            JobState::Held
        );
        // Requeued, it succeeds: the child goes on.
        q.requeue(&p2.id, 13).await.expect("requeue");
        let again = q.claim(14, LEASE).await.expect("claim").expect("p2 again");
        assert_eq!(again.id, p2.id);
        q.finish(&p2.id, done(), 15).await.expect("finish");
        assert_eq!(
            q.claim(16, LEASE).await.expect("claim").map(|j| j.id),
            Some(c2.id.clone())
        );
        q.finish(&c2.id, done(), 17).await.expect("finish");

        // Dead, then discarded by an operator: the child is dead, naming it.
        let p3 = q
            .submit(
                NewJob {
                    max_attempts: 1,
                    ..job("F/p3")
                },
                20,
            )
            .await
            .expect("p3")
            .job;
        let c3 = q
            .submit_with(job("F/c3"), with_parents(&[&p3.id]), 20)
            .await
            .expect("c3")
            .job;
        q.claim(21, LEASE).await.expect("claim").expect("p3");
        q.bury(&p3.id, "cannot read it".into(), 22)
            .await
            .expect("bury");
        q.discard(&p3.id, 23).await.expect("discard");
        let c3 = q.get(&c3.id).expect("get").expect("c3");
        assert_eq!(c3.state, JobState::Dead);
        assert!(
            c3.error
                .as_deref()
                .unwrap_or_default()
                .contains("was discarded by an operator"),
            "{:?}",
            c3.error
        );
    });
}

/// A suspended child (held for its transaction) with a parent queued by the same
/// transaction: released on commit, it then waits for the parent; a rollback removes the
/// parent, and an active child waiting for it dies, naming it.
#[test]
fn parents_and_children_held_by_one_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    rt().block_on(async {
        let held = |t: &str, parents: &[&str]| JobOptions {
            held_by: Some(t.into()),
            ..with_parents(parents)
        };
        let parent = q
            .submit_with(job("H/parent"), held("t1", &[]), 1)
            .await
            .expect("parent")
            .job;
        let child = q
            .submit_with(job("H/child"), held("t1", &[&parent.id]), 1)
            .await
            .expect("child")
            .job;
        assert_eq!(q.release_held("t1", 2).await.expect("release"), 2);
        assert_eq!(
            q.get(&child.id).expect("get").expect("child").waiting_for,
            vec![parent.id.clone()]
        );
        let p = q.claim(3, LEASE).await.expect("claim").expect("parent");
        assert_eq!(p.id, parent.id);
        assert!(q.claim(3, LEASE).await.expect("claim").is_none());
        q.finish(&p.id, done(), 4).await.expect("finish");
        assert_eq!(
            q.claim(5, LEASE).await.expect("claim").map(|j| j.id),
            Some(child.id)
        );

        // Rolled back: the suspended parent goes, the active child dies naming it.
        let gone = q
            .submit_with(job("H/gone"), held("t2", &[]), 10)
            .await
            .expect("gone")
            .job;
        let active = q
            .submit_with(job("H/active"), with_parents(&[&gone.id]), 10)
            .await
            .expect("active")
            .job;
        assert_eq!(active.state, JobState::Held);
        assert_eq!(q.discard_held("t2").await.expect("discard"), 1);
        let active = q.get(&active.id).expect("get").expect("active");
        assert_eq!(active.state, JobState::Dead);
        assert!(
            active
                .error
                .as_deref()
                .unwrap_or_default()
                .contains("the transaction that queued it rolled back"),
            "{:?}",
            active.error
        );
    });
}

/// MPS `retryType` (fixed, linear, exponential waits from `retryInterval`),
/// `retryStopOnFailure` (a failure with that code allows one more attempt only) and
/// `retainSuccessfulResponses="0"` (a succeeded job keeps no response; a failed one does).
#[test]
fn retry_types_a_stop_code_and_dropped_responses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    let backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    rt().block_on(async {
        let mut now = 1_000;
        for (kind, waits) in [
            (RetryType::Fixed, [50, 50, 50]),
            (RetryType::Linear, [50, 100, 150]),
            (RetryType::Exponential, [50, 100, 200]),
        ] {
            let options = JobOptions {
                retry_interval_ms: Some(50),
                retry_type: Some(kind),
                ..JobOptions::default()
            };
            let new = NewJob {
                max_attempts: 10,
                ..job("T/retry")
            };
            let j = q.submit_with(new, options, now).await.expect("submit").job;
            for wait in waits {
                let c = q.claim(now, LEASE).await.expect("claim").expect("due");
                assert_eq!(c.id, j.id);
                let again = q
                    .retry_later(&j.id, "busy".into(), now, backoff, 0)
                    .await
                    .expect("retry");
                assert_eq!(again.not_before_ms - now, wait, "{kind:?}");
                now = again.not_before_ms;
            }
            q.claim(now, LEASE).await.expect("claim").expect("due");
            q.finish(&j.id, done(), now).await.expect("finish");
        }
        // Without an interval, a fixed type waits the backoff's first step each time.
        let j = q
            .submit_with(
                job("T/base"),
                JobOptions {
                    retry_type: Some(RetryType::Fixed),
                    ..JobOptions::default()
                },
                now,
            )
            .await
            .expect("submit")
            .job;
        q.claim(now, LEASE).await.expect("claim").expect("due");
        let again = q
            .retry_later(&j.id, "busy".into(), now, backoff, 0)
            .await
            .expect("retry");
        assert_eq!(again.not_before_ms - now, 100);
        now = again.not_before_ms;
        q.claim(now, LEASE).await.expect("claim").expect("due");
        q.finish(&j.id, done(), now).await.expect("finish");

        // retryStopOnFailure: another code leaves the attempts; the code allows one more.
        let options = JobOptions {
            retry_interval_ms: Some(0),
            retry_stop_code: Some(0x8007_0057),
            fail_when_exhausted: true,
            ..JobOptions::default()
        };
        let new = NewJob {
            max_attempts: 6,
            ..job("T/stop")
        };
        let j = q.submit_with(new, options, now).await.expect("submit").job;
        q.claim(now, LEASE).await.expect("claim").expect("1st");
        let r = q
            .retry_later_code(&j.id, "busy".into(), Some(0x8000_4005), now, backoff, 0)
            .await
            .expect("retry");
        assert_eq!((r.state, r.max_attempts), (JobState::Queued, 6));
        q.claim(now, LEASE).await.expect("claim").expect("2nd");
        let r = q
            .retry_later_code(&j.id, "bad".into(), Some(0x8007_0057), now, backoff, 0)
            .await
            .expect("retry");
        assert_eq!((r.state, r.max_attempts), (JobState::Queued, 3), "one more");
        q.claim(now, LEASE).await.expect("claim").expect("3rd");
        let r = q
            .retry_later_code(&j.id, "bad".into(), Some(0x8007_0057), now, backoff, 0)
            .await
            .expect("retry");
        assert_eq!(
            r.state,
            JobState::Failed,
            "onFailure=continue after the stop"
        );

        // retainSuccessfulResponses="0": dropped on success only.
        let drop = JobOptions {
            drop_success_response: true,
            ..JobOptions::default()
        };
        let ok = q
            .submit_with(job("T/ok"), drop.clone(), now)
            .await
            .expect("ok")
            .job;
        let bad = q
            .submit_with(job("T/bad"), drop, now)
            .await
            .expect("bad")
            .job;
        let kept = q.submit(job("T/kept"), now).await.expect("kept").job;
        for (id, how) in [(&ok.id, done()), (&bad.id, failed()), (&kept.id, done())] {
            let c = q.claim(now, LEASE).await.expect("claim").expect("due");
            assert_eq!(&c.id, id);
            q.finish(id, how, now).await.expect("finish");
        }
        let get = |id: &str| q.get(id).expect("get").expect("job");
        assert_eq!(get(&ok.id).result, None, "dropped");
        assert_eq!(get(&ok.id).outcome.as_deref(), Some("committed"));
        assert_eq!(
            get(&bad.id).result.as_deref(),
            Some("no"),
            "a failure keeps it"
        );
        assert_eq!(
            get(&kept.id).result.as_deref(),
            Some("ok"),
            "kept by default"
        );
    });
}

/// A child still waits for its parent after a restart, and the parent's end releases it
/// (the reopened queue knows jobs wait for others).
#[test]
fn a_waiting_child_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (parent, child) = {
        let q = open(dir.path());
        rt().block_on(async {
            let p = q.submit(job("R/parent"), 1).await.expect("p").job;
            let c = q
                .submit_with(job("R/child"), with_parents(&[&p.id]), 1)
                .await
                .expect("c")
                .job;
            (p.id, c.id)
        })
    };
    let q = open(dir.path());
    rt().block_on(async {
        let p = q.claim(2, LEASE).await.expect("claim").expect("parent");
        assert_eq!(p.id, parent);
        assert!(q.claim(2, LEASE).await.expect("claim").is_none());
        q.finish(&parent, done(), 3).await.expect("finish");
        assert_eq!(
            q.claim(4, LEASE).await.expect("claim").map(|j| j.id),
            Some(child)
        );
    });
}

/// A cancel of a running job reaches its runner whichever node it was made on: on sled
/// (one process) through the job's record; on PostgreSQL, a cancel made on another node
/// is announced on `CANCEL_CHANNEL` (the runner's node then knows it with `cancel_seen`)
/// and, should that notification be lost, read by the runner's next heartbeat.
#[test]
fn a_cancel_made_on_another_node_reaches_the_runner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = provisio_test_support::postgres::store_url(dir.path()).is_some();
    let runner = Arc::new(open(dir.path()));
    // Two stores on the same database are two nodes; sled is one process.
    let other = if pg {
        Arc::new(open(dir.path()))
    } else {
        runner.clone()
    };
    rt().block_on(async {
        let id = runner.submit(job("A/B"), 1).await.expect("submit").job.id;
        let claimed = runner.claim(2, LEASE).await.expect("claim").expect("job");
        assert_eq!(claimed.id, id);
        assert!(!runner.cancel_requested(&id));
        #[cfg(feature = "postgres")]
        let mut heard = {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            if let Some(store) = other.store().postgres() {
                store.listen_payloads(&[CANCEL_CHANNEL], tx);
                // The listening session is up before the cancel is made.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            rx
        };
        match other.cancel(&id, 3).await.expect("cancel") {
            Cancelled::Running(j) => assert!(j.cancel_requested),
            other => panic!("{other:?}"),
        }
        #[cfg(feature = "postgres")]
        if pg {
            // Not made here: the runner's node does not know it until told.
            assert!(!runner.cancel_requested(&id));
            let (channel, payload) = tokio::time::timeout(Duration::from_secs(10), heard.recv())
                .await
                .expect("the cancel is announced")
                .expect("a notification");
            assert_eq!(
                (channel.as_str(), payload.as_str()),
                (CANCEL_CHANNEL, id.as_str())
            );
            // Heard by a node that does not run it: nothing.
            assert!(!other.cancel_seen(&id));
        }
        // The notification lost: the heartbeat reads the flag.
        assert!(runner.heartbeat(&id, 4, LEASE).await.expect("heartbeat"));
        assert!(runner.cancel_requested(&id));
        if pg {
            assert!(runner.cancel_seen(&id));
        }
        runner
            .finish(
                &id,
                Finish {
                    state: JobState::Cancelled,
                    outcome: Some("rolled_back".into()),
                    result: None,
                    error: None,
                },
                5,
            )
            .await
            .expect("finish");
        // Settled: forgotten.
        assert!(!runner.cancel_requested(&id));
        assert!(!runner.cancel_seen(&id));
    });
}

/// Schema migration 6 on a database a build of schema 5 left, jobs in it: the cancel flag's
/// new column is filled from the job records (a request whose text holds the flag's words
/// is not taken for it), heartbeats read it from then on, and every change of the record
/// keeps it in step (a cancel, a claim). Only on PostgreSQL.
#[cfg(feature = "postgres")]
#[test]
fn migration_6_fills_the_cancel_flags_of_the_jobs_already_there() {
    use super::postgres::Beat;
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = provisio_test_support::postgres::store_url(dir.path()) else {
        return;
    };
    let pg = provisio_test_support::postgres::Postgres::shared().expect("the store's server");
    let schema = url.rsplit("%3D").next().expect("a schema").to_string();
    // Schema 5, as a build that knew no later migration left it.
    let mut sql = format!(
        "SET search_path TO {schema};
         CREATE TABLE provisio_schema (version integer PRIMARY KEY, description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(), applied_by text NOT NULL);\n"
    );
    for (version, description, migration) in crate::store::MIGRATIONS.iter().filter(|m| m.0 <= 5) {
        sql.push_str(&format!(
            "{migration};\nINSERT INTO provisio_schema (version, description, applied_by)
             VALUES ({version}, $d${description}$d$, 'provisio of schema 5');\n"
        ));
    }
    // Its jobs: running and cancelled, running with a request that spells the flag, queued
    // again after a cancel (its runner's lease ran out), as that build wrote them.
    let mut jobs = Vec::new();
    for (seq, state, cancelled, payload) in [
        (1, JobState::Running, true, "a request"),
        (2, JobState::Running, false, r#"{"cancel_requested":true}"#),
        (3, JobState::Queued, true, "a request taken back"),
    ] {
        let new = NewJob {
            payload: payload.into(),
            ..job("A/B")
        };
        let mut j = new_job(new, seq, state, 1, &JobOptions::default());
        j.cancel_requested = cancelled;
        let running = state == JobState::Running;
        // The record as the PostgreSQL queue keeps it: compact JSON.
        let body = serde_json::to_vec(&j).expect("JSON");
        let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
        sql.push_str(&format!(
            "INSERT INTO provisio_jobs (id, seq, state, priority, not_before_ms, serial_key,
                 line_pos, subject, target, submitted_ms, lease_until_ms, node, entered, body)
             VALUES ('{}', {seq}, {}, 0, 0, NULL, {seq}, 'alice', 'A/B', 1, {}, {}, '{{1,{},0,0,0,0,0}}',
                 decode('{hex}', 'hex'));\n",
            j.id,
            state_index(state),
            if running { "1000000" } else { "NULL" },
            if running { "'a node of schema 5'" } else { "NULL" },
            u8::from(running),
        ));
        jobs.push(j);
    }
    sql.push_str("SELECT setval('provisio_job_seq', 3);");
    let out = pg.psql(&sql);
    assert_eq!(out.code, 0, "{out:?}");
    let q = open(dir.path());
    let flags = || {
        let out = pg.psql(&format!(
            "SELECT string_agg(cancel_requested::text, ',' ORDER BY seq) FROM {schema}.provisio_jobs"
        ));
        assert_eq!(out.code, 0, "{out:?}");
        out.stdout.trim().to_string()
    };
    assert_eq!(flags(), "true,false,true", "filled from the records");
    let version = pg.psql(&format!(
        "SELECT max(version) FROM {schema}.provisio_schema"
    ));
    assert_eq!(
        version.stdout.trim(),
        crate::store::latest_schema_version().to_string()
    );
    // This node takes the running ones over: its heartbeats read the column.
    let node = q.store().postgres().expect("PostgreSQL").node().to_string();
    let out = pg.psql(&format!(
        "UPDATE {schema}.provisio_jobs SET node = '{node}' WHERE state = 1"
    ));
    assert_eq!(out.code, 0, "{out:?}");
    let pgq = q.pg.as_ref().expect("the PostgreSQL queue");
    let cancelled = Beat::Renewed {
        cancel_requested: true,
    };
    let not_cancelled = Beat::Renewed {
        cancel_requested: false,
    };
    rt().block_on(async {
        let beat = |i: usize| pgq.heartbeat(&jobs[i].id, 2, LEASE);
        assert_eq!(beat(0).await.expect("beat"), cancelled);
        assert_eq!(beat(1).await.expect("beat"), not_cancelled);
        assert!(
            q.get(&jobs[0].id)
                .expect("get")
                .expect("job")
                .cancel_requested
        );
        // A cancel sets the column with the record.
        match q.cancel(&jobs[1].id, 3).await.expect("cancel") {
            Cancelled::Running(j) => assert!(j.cancel_requested),
            other => panic!("{other:?}"),
        }
        assert_eq!(beat(1).await.expect("beat"), cancelled);
        // The queued one, claimed here, keeps its flag.
        let claimed = q.claim(4, LEASE).await.expect("claim").expect("a job");
        assert_eq!(claimed.id, jobs[2].id);
        assert_eq!(beat(2).await.expect("beat"), cancelled);
        // A job of another node renews nothing; one that is gone is not found.
        let out = pg.psql(&format!(
            "UPDATE {schema}.provisio_jobs SET node = 'another node' WHERE seq = 1"
        ));
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(beat(0).await.expect("beat"), Beat::Lost);
        assert!(matches!(
            pgq.heartbeat("no-such-job", 5, LEASE).await,
            Err(QueueError::NotFound(_))
        ));
    });
    assert_eq!(flags(), "true,true,true");
}

/// Measures a heartbeat's cost with a 32 MiB request (BENCHMARKS.md, issue 18): the
/// renewal as it was (the cancel flag searched in the body) against the renewal now (the
/// flag's column), interleaved on the same row, and the queue's own heartbeat of that job
/// against one of a small job. Prints medians; asserts nothing about time. Run with
/// `PROVISIO_TEST_STORE=postgres cargo test -p provisio-engine --lib -- --ignored
/// queue::tests::heartbeat_cost --nocapture`.
#[cfg(feature = "postgres")]
#[test]
#[ignore = "a measurement"]
fn heartbeat_cost_with_a_32_mib_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = provisio_test_support::postgres::store_url(dir.path()) else {
        return;
    };
    let schema = url.rsplit("%3D").next().expect("a schema").to_string();
    let q = open(dir.path());
    let node = q.store().postgres().expect("PostgreSQL").node().to_string();
    let pgq = q.pg.as_ref().expect("the PostgreSQL queue");
    const MIB: usize = 1 << 20;
    // A request's text (compressible: stored compressed) and random letters (stored as is).
    let text: String = (0..)
        .map(|i| format!("<user id=\"u{i}\"><name>User number {i}</name><mail>u{i}@example.org</mail></user>\n"))
        .flat_map(|s| s.into_bytes())
        .take(32 * MIB)
        .map(char::from)
        .collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: String = (0..32 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    rt().block_on(async {
        let mut ids = Vec::new();
        for (what, payload) in [("small", "a request".to_string()), ("32 MiB text", text), ("32 MiB random", random)] {
            let id = q
                .submit(NewJob { payload, ..job(&format!("A/{}", ids.len())) }, 1)
                .await
                .expect("submit")
                .job
                .id;
            let claimed = q.claim(2, LEASE).await.expect("claim").expect("a job");
            assert_eq!(claimed.id, id);
            ids.push((what, id));
        }
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("SET search_path TO {schema}"))
            .await
            .expect("search_path");
        let stored = client
            .query(
                "SELECT id, pg_column_size(body), octet_length(body) FROM provisio_jobs ORDER BY seq",
                &[],
            )
            .await
            .expect("sizes");
        for row in stored {
            let (id, stored, len): (String, i32, i32) = (row.get(0), row.get(1), row.get(2));
            println!("{id}: body {len} bytes, stored in {stored}");
        }
        let before_sql = "UPDATE provisio_jobs SET lease_until_ms = $2 WHERE id = $1 AND state = 1 AND node = $3 \
             RETURNING position('\"cancel_requested\":true'::bytea IN body) > 0";
        let after_sql = super::postgres::HEARTBEAT;
        let (before, after) = (
            client.prepare(before_sql).await.expect("prepare"),
            client.prepare(after_sql).await.expect("prepare"),
        );
        for (what, id) in &ids {
            let (mut old, mut new, mut queue) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..21i64 {
                for (st, times) in [(&before, &mut old), (&after, &mut new)] {
                    let started = std::time::Instant::now();
                    let row = client
                        .query_one(st, &[id, &(1_000_000 + round), &node])
                        .await
                        .expect("renew");
                    assert!(!row.get::<_, bool>(0));
                    times.push(started.elapsed().as_secs_f64() * 1e3);
                }
                let started = std::time::Instant::now();
                assert_eq!(
                    pgq.heartbeat(id, 3, LEASE).await.expect("beat"),
                    super::postgres::Beat::Renewed {
                        cancel_requested: false
                    }
                );
                queue.push(started.elapsed().as_secs_f64() * 1e3);
            }
            // The server's own time (`EXPLAIN ANALYZE` runs the statement).
            let (mut old_server, mut new_server) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                for (sql, times) in [(before_sql, &mut old_server), (after_sql, &mut new_server)] {
                    let plan = client
                        .query(&format!("EXPLAIN (ANALYZE) {sql}"), &[id, &1i64, &node])
                        .await
                        .expect("explain");
                    let last: String = plan.last().expect("a plan").get(0);
                    let ms = last
                        .trim_start_matches("Execution Time: ")
                        .trim_end_matches(" ms")
                        .parse()
                        .expect("the execution time");
                    times.push(ms);
                }
            }
            println!(
                "{what}: renewal as it was {:.3} ms, now {:.3} ms (round trip, median of 21 interleaved); \
                 on the server {:.3} ms, now {:.3} ms (median of 5); the queue's heartbeat {:.3} ms",
                median(old),
                median(new),
                median(old_server),
                median(new_server),
                median(queue)
            );
        }
    });
}

/// Measures the counts `/metrics` reads ([`Queue::tally`]) on PostgreSQL with 60,000 jobs
/// (BENCHMARKS.md, issue 18): the statements as they were (nine passes over the jobs, in
/// two snapshots) against the one statement now, interleaved on one connection, and the
/// queue's own `tally`. Prints medians; asserts only that both count the same. Run with
/// `PROVISIO_TEST_STORE=postgres cargo test -p provisio-engine --lib -- --ignored
/// queue::tests::tally_cost --nocapture`.
#[cfg(feature = "postgres")]
#[test]
#[ignore = "a measurement"]
fn tally_cost_with_60000_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = provisio_test_support::postgres::store_url(dir.path()) else {
        return;
    };
    let schema = url.rsplit("%3D").next().expect("a schema").to_string();
    let q = open(dir.path());
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    rt().block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "SET search_path TO {schema};
                 INSERT INTO provisio_jobs (id, seq, state, priority, not_before_ms, line_pos,
                     subject, target, submitted_ms, entered, body, finished_ms)
                 SELECT 'job-' || i, i, (i % 3) * 2, 0, 0, i, 'alice', 'A/B', 1,
                     CASE i % 3 WHEN 0 THEN '{{1,0,0,0,0,0,0}}'::bigint[] WHEN 1 THEN '{{1,1,1,0,0,0,0}}'
                         ELSE '{{1,1,0,0,1,0,0}}' END,
                     convert_to(repeat('x', 400), 'UTF8'), CASE WHEN i % 3 > 0 THEN 5 END
                 FROM generate_series(1, 60000) i;
                 UPDATE provisio_job_tally SET v = 10 + k;
                 ANALYZE provisio_jobs;"
            ))
            .await
            .expect("60,000 jobs");
        let before = [
            "SELECT state, count(*) FROM provisio_jobs GROUP BY state",
            "SELECT k, v + coalesce((SELECT sum(j.entered[k + 1]) FROM provisio_jobs j), 0)::bigint
             FROM provisio_job_tally WHERE k < 7
             UNION ALL
             SELECT 7::smallint, v + (SELECT count(*) FROM provisio_jobs) FROM provisio_job_tally WHERE k = 7",
        ];
        let after = super::postgres::tally_sql();
        let (mut old, mut new, mut queue) = (Vec::new(), Vec::new(), Vec::new());
        let mut expected = None;
        for _ in 0..11 {
            let started = std::time::Instant::now();
            for sql in before {
                client.query(sql, &[]).await.expect("as it was");
            }
            old.push(started.elapsed().as_secs_f64() * 1e3);
            let started = std::time::Instant::now();
            client.query(&after, &[]).await.expect("now");
            new.push(started.elapsed().as_secs_f64() * 1e3);
            let started = std::time::Instant::now();
            let t = q.tally();
            queue.push(started.elapsed().as_secs_f64() * 1e3);
            expected.get_or_insert(t);
        }
        let t = expected.expect("a tally");
        assert_eq!(t.now, [20000, 0, 20000, 0, 20000, 0, 0]);
        assert_eq!(t.submitted, 60000 + 17);
        assert_eq!(t.entered, [60010, 40011, 20012, 13, 20014, 15, 16]);
        println!(
            "60,000 jobs: the counts as they were {:.1} ms, now {:.1} ms (median of 11 interleaved); the queue's tally {:.1} ms",
            median(old),
            median(new),
            median(queue)
        );
    });
}

/// A heartbeat reads a handful of pages whatever the size of the job's request: neither
/// the lease's renewal nor the cancel flag it returns reads the job's record (it searched
/// the record for the flag, every page of the request's TOAST with it). Counted by the
/// server (`EXPLAIN (ANALYZE, BUFFERS)` runs the statement). Only on PostgreSQL.
#[cfg(feature = "postgres")]
#[test]
fn a_heartbeat_reads_a_few_pages_whatever_the_request_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = provisio_test_support::postgres::store_url(dir.path()) else {
        return;
    };
    let schema = url.rsplit("%3D").next().expect("a schema").to_string();
    let q = open(dir.path());
    let node = q.store().postgres().expect("PostgreSQL").node().to_string();
    // 4 MiB that do not compress: about 2,000 TOAST chunks on some 500 pages.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let payload: String = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    rt().block_on(async {
        let id = q
            .submit(
                NewJob {
                    payload,
                    ..job("A/B")
                },
                1,
            )
            .await
            .expect("submit")
            .job
            .id;
        q.claim(2, LEASE).await.expect("claim").expect("the job");
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("SET search_path TO {schema}"))
            .await
            .expect("search_path");
        for until in [100_000i64, 200_000] {
            let plan: Vec<String> = client
                .query(
                    &format!("EXPLAIN (ANALYZE, BUFFERS) {}", super::postgres::HEARTBEAT),
                    &[&id, &until, &node],
                )
                .await
                .expect("explain")
                .iter()
                .map(|r| r.get(0))
                .collect();
            let text = plan.join("\n");
            assert!(plan[0].contains("rows=1 loops=1"), "renewed: {text}");
            // The top node's pages (`Buffers: shared hit=5 read=2 …`): the statement's.
            let buffers = plan
                .iter()
                .find_map(|l| l.trim().strip_prefix("Buffers: shared "))
                .expect("the pages read");
            let pages: u64 = buffers
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .filter(|(k, _)| matches!(*k, "hit" | "read"))
                .map(|(_, v)| v.parse::<u64>().expect("a count"))
                .sum();
            assert!(pages < 50, "{pages} pages for one renewal:\n{text}");
        }
        // The queue's own heartbeat runs that statement.
        assert!(q.heartbeat(&id, 3, LEASE).await.expect("heartbeat"));
    });
}

/// What a claim can take follows every way a line's first job leaves it and every change of
/// time, the same on both stores: a head that finishes, is taken back after its lease ran
/// out (first again, claimable at once), is cancelled while queued, waits for a retry's
/// backoff, dies and is requeued; a scheduled job once due, by priority among the others.
#[test]
fn a_lines_next_job_is_claimable_however_its_head_leaves_and_a_scheduled_one_once_due() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(dir.path());
    let keyed = |n: usize| NewJob {
        serial_key: Some("line".into()),
        ..job(&format!("A/line-{n}"))
    };
    rt().block_on(async {
        let claim = |now: u64| {
            let q = &q;
            async move { q.claim(now, LEASE).await.expect("claim").map(|j| j.id) }
        };
        let mut line = Vec::new();
        for n in 0..6 {
            line.push(q.submit(keyed(n), 10).await.expect("submit").job.id);
        }
        let later = NewJob {
            priority: 5,
            not_before_ms: 100,
            ..job("A/later")
        };
        let later = q.submit(later, 10).await.expect("submit").job.id;
        let other = NewJob {
            priority: 1,
            ..job("A/other")
        };
        let other = q.submit(other, 10).await.expect("submit").job.id;
        // By priority among the jobs that can run: not the scheduled one, not yet.
        assert_eq!(claim(10).await.as_ref(), Some(&other));
        q.finish(&other, done(), 10).await.expect("finish");
        assert_eq!(claim(10).await.as_ref(), Some(&line[0]));
        assert_eq!(
            claim(10).await,
            None,
            "the line is busy, the scheduled job not due"
        );
        assert_eq!(q.next_due().expect("next due"), Some(100));
        // The head finishes: the next one runs.
        q.finish(&line[0], done(), 20).await.expect("finish");
        assert_eq!(claim(20).await.as_ref(), Some(&line[1]));
        // Its lease runs out: taken back, it is first in its line again, claimable at once;
        // the scheduled job, due by now and of a higher priority, goes first.
        let t = 20 + LEASE.as_millis() as u64 + 1;
        let back = q.take_back_expired(t, 10).await.expect("take back");
        assert_eq!(back.iter().map(|j| &j.id).collect::<Vec<_>>(), [&line[1]]);
        assert_eq!(claim(t).await.as_ref(), Some(&later));
        assert_eq!(claim(t).await.as_ref(), Some(&line[1]));
        assert_eq!(claim(t).await, None);
        // A job behind it is cancelled, then it finishes; the new head is cancelled while
        // queued: the one after runs.
        q.cancel(&line[2], t).await.expect("cancel");
        q.finish(&line[1], done(), t).await.expect("finish");
        q.cancel(&line[3], t).await.expect("cancel");
        assert_eq!(claim(t).await.as_ref(), Some(&line[4]));
        // It fails: queued again for after its backoff, still first in its line.
        let backoff = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(1),
        };
        let retried = q
            .retry_later(&line[4], "transient".into(), t, backoff, 0)
            .await
            .expect("retry");
        assert_eq!(retried.state, JobState::Queued);
        let due = retried.not_before_ms;
        assert!(due > t);
        assert_eq!(
            claim(t).await,
            None,
            "its backoff holds it, and it holds its line"
        );
        assert_eq!(q.next_due().expect("next due"), Some(due));
        assert_eq!(claim(due).await.as_ref(), Some(&line[4]));
        // It dies, holding its line; requeued, it runs before the rest of its line.
        q.bury(&line[4], "gave up".into(), due).await.expect("bury");
        assert_eq!(claim(due).await, None, "a dead job holds its line");
        q.requeue(&line[4], due).await.expect("requeue");
        assert_eq!(claim(due).await.as_ref(), Some(&line[4]));
        q.finish(&line[4], done(), due).await.expect("finish");
        assert_eq!(claim(due).await.as_ref(), Some(&line[5]));
        assert_eq!(claim(due).await, None);
    });
}

/// The rows a statement read, from its `EXPLAIN (ANALYZE, FORMAT JSON)`: every scan of a
/// table's rows returned and removed by its filters, over all its loops.
#[cfg(feature = "postgres")]
fn rows_read(plan: &serde_json::Value) -> f64 {
    let n = |k: &str| {
        plan.get(k)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0)
    };
    let own = if plan.get("Relation Name").is_some() {
        (n("Actual Rows") + n("Rows Removed by Filter") + n("Rows Removed by Index Recheck"))
            * n("Actual Loops").max(1.0)
    } else {
        0.0
    };
    let children: f64 = plan
        .get("Plans")
        .and_then(serde_json::Value::as_array)
        .map_or(0.0, |p| p.iter().map(rows_read).sum());
    own + children
}

/// `EXPLAIN (ANALYZE, FORMAT JSON)` of `sql` in `schema`, after `before` (run, then both
/// rolled back): the rows it read ([`rows_read`]) and its plan's text.
#[cfg(feature = "postgres")]
fn explain_rows(
    pg: &provisio_test_support::postgres::Postgres,
    schema: &str,
    before: &str,
    sql: &str,
) -> (f64, String) {
    let out = pg.psql(&format!(
        "SET search_path TO {schema}; BEGIN; {before} EXPLAIN (ANALYZE, FORMAT JSON) {sql}; ROLLBACK"
    ));
    assert_eq!(out.code, 0, "{out:?}");
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("a JSON plan");
    let plan = &json[0]["Plan"];
    let text = plan.to_string();
    // Not a plan that reads few rows here only because a join had nothing to join.
    assert!(!text.contains("Seq Scan"), "a scan of the table: {text}");
    (rows_read(plan), text)
}

/// [`explain_rows`] of the queue's statement `sql` as the queue runs it: prepared, with a
/// generic plan (one plan for any parameters: what a prepared statement may be given after
/// its first runs), executed with `args` (`types`: its parameters' types).
#[cfg(feature = "postgres")]
fn explain_generic(
    pg: &provisio_test_support::postgres::Postgres,
    schema: &str,
    before: &str,
    (sql, types, args): (&str, &str, &str),
) -> (f64, String) {
    explain_rows(
        pg,
        schema,
        &format!(
            "{before} SET LOCAL plan_cache_mode = force_generic_plan; PREPARE q ({types}) AS {sql};"
        ),
        &format!("EXECUTE q ({args})"),
    )
}

/// A claim with thousands of jobs that cannot run ahead of the one that can (by priority):
/// a line of jobs behind a running one of their key, and jobs scheduled for later. The
/// search reads the job it returns and none of the others (it walked them all: issue
/// #11); so do the line's checks (whether the found job's line holds it, the settling of
/// a line's flags). Only on PostgreSQL.
#[cfg(feature = "postgres")]
#[test]
fn a_claim_reads_none_of_the_jobs_that_cannot_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = provisio_test_support::postgres::store_url(dir.path()) else {
        return;
    };
    let pg = provisio_test_support::postgres::Postgres::shared().expect("the store's server");
    let schema = url.rsplit("%3D").next().expect("a schema").to_string();
    let q = open(dir.path());
    const HELD: usize = 1_500;
    let keyed = |n: usize| NewJob {
        priority: 9,
        serial_key: Some("line".into()),
        ..job(&format!("A/line-{n}"))
    };
    rt().block_on(async {
        let head = q.submit(keyed(0), 10).await.expect("submit").job.id;
        let claimed = q.claim(10, LEASE).await.expect("claim").expect("a job");
        assert_eq!(claimed.id, head);
        let mut line = Vec::new();
        for n in 1..=HELD {
            line.push(q.submit(keyed(n), 10).await.expect("submit").job.id);
        }
        for n in 0..HELD {
            let later = NewJob {
                priority: 9,
                not_before_ms: 1_000_000,
                ..job(&format!("A/later-{n}"))
            };
            q.submit(later, 10).await.expect("submit");
        }
        let runnable = q.submit(job("A/now"), 10).await.expect("submit").job.id;
        let out = pg.psql(&format!("ANALYZE {schema}.provisio_jobs"));
        assert_eq!(out.code, 0, "{out:?}");
        let search = super::postgres::search_sql();
        let search = (search.as_str(), "bigint, text[]", "20, '{}'");
        let (read, plan) = explain_generic(pg, &schema, "", search);
        assert!(read <= 3.0, "the search read {read} rows: {plan}");
        let held_args = format!("'line', '{}', {}", line[0], claimed.seq + 1);
        let held = (
            super::postgres::HELD_IN_LINE,
            "text, text, bigint",
            held_args.as_str(),
        );
        let (read, plan) = explain_generic(pg, &schema, "", held);
        assert!(read <= 4.0, "the line's check read {read} rows: {plan}");
        // A claiming submission's check of its key's line, for the key of the long line
        // and for a key with no job: the line's index either way, never the table.
        for key in ["'line'", "'rare'"] {
            let busy = (super::postgres::LINE_BUSY, "text", key);
            let (read, plan) = explain_generic(pg, &schema, "", busy);
            assert!(
                read <= 2.0,
                "the busy check of {key} read {read} rows: {plan}"
            );
        }
        let settle = (
            super::postgres::SETTLE_LINES,
            "text[], bigint",
            "ARRAY['line'], 20",
        );
        let (read, plan) = explain_generic(pg, &schema, "", settle);
        assert!(read <= 8.0, "settling the line read {read} rows: {plan}");
        // And when its head has just finished: the next one is flagged.
        let finished = format!("UPDATE provisio_jobs SET state = 2 WHERE id = '{head}';");
        let (read, plan) = explain_generic(pg, &schema, &finished, settle);
        assert!(read <= 10.0, "settling the line read {read} rows: {plan}");
        let started = std::time::Instant::now();
        let c = q.claim(20, LEASE).await.expect("claim").expect("a job");
        println!(
            "claim with {} jobs that cannot run: {:?}",
            2 * HELD,
            started.elapsed()
        );
        assert_eq!(c.id, runnable);
        // The line goes on when its head finishes, in order.
        q.finish(&head, done(), 30).await.expect("finish");
        let c = q.claim(30, LEASE).await.expect("claim").expect("a job");
        assert_eq!(c.id, line[0]);
        q.finish(&c.id, done(), 30).await.expect("finish");
        let c = q.claim(30, LEASE).await.expect("claim").expect("a job");
        assert_eq!(c.id, line[1]);
        // A line whose head is queued and nothing of its key runs: its check reads no more
        // (not the whole line, looking for a running job of the key).
        q.finish(&c.id, done(), 30).await.expect("finish");
        let out = pg.psql(&format!("ANALYZE {schema}.provisio_jobs"));
        assert_eq!(out.code, 0, "{out:?}");
        let next = q.get(&line[2]).expect("get").expect("the line's head");
        let held_args = format!("'line', '{}', {}", next.id, next.seq);
        let held = (
            super::postgres::HELD_IN_LINE,
            "text, text, bigint",
            held_args.as_str(),
        );
        let (read, plan) = explain_generic(pg, &schema, "", held);
        assert!(read <= 4.0, "the line's check read {read} rows: {plan}");
        let c = q.claim(30, LEASE).await.expect("claim").expect("a job");
        assert_eq!(c.id, line[2]);
    });
}

/// Schema migration 7 on a database a build of schema 6 left, jobs in it written as that
/// build wrote them: the flags are filled as its search would have found the jobs (a line
/// behind a running job, a line behind a dead one, a line whose first job may run, jobs
/// without a key due or scheduled for later), and the upgraded database claims as a new
/// one would: by priority among the jobs that can run, each line going on when its head
/// leaves it. Only on PostgreSQL.
#[cfg(feature = "postgres")]
#[test]
fn migration_7_fills_the_claimable_flags_of_the_jobs_already_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = provisio_test_support::postgres::store_url(dir.path()) else {
        return;
    };
    let pg = provisio_test_support::postgres::Postgres::shared().expect("the store's server");
    let schema = url.rsplit("%3D").next().expect("a schema").to_string();
    let mut sql = format!(
        "SET search_path TO {schema};
         CREATE TABLE provisio_schema (version integer PRIMARY KEY, description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(), applied_by text NOT NULL);\n"
    );
    for (version, description, migration) in crate::store::MIGRATIONS.iter().filter(|m| m.0 <= 6) {
        sql.push_str(&format!(
            "{migration};\nINSERT INTO provisio_schema (version, description, applied_by)
             VALUES ({version}, $d${description}$d$, 'provisio of schema 6');\n"
        ));
    }
    // (name, state, key, priority, not before): in submission order.
    let far = 4_000_000_000_000u64;
    let rows: [(&str, JobState, Option<&str>, i16, u64); 9] = [
        ("running", JobState::Running, Some("busy"), 0, 0),
        ("behind running", JobState::Queued, Some("busy"), 0, 0),
        ("dead", JobState::Dead, Some("dead"), 0, 0),
        ("behind dead", JobState::Queued, Some("dead"), 0, 0),
        ("due", JobState::Queued, None, 0, 0),
        ("later", JobState::Queued, None, 9, far),
        ("urgent", JobState::Queued, None, 3, 0),
        ("first", JobState::Queued, Some("free"), 0, 0),
        ("second", JobState::Queued, Some("free"), 0, 0),
    ];
    let mut ids = HashMap::new();
    for (i, (name, state, key, priority, not_before)) in rows.iter().enumerate() {
        let seq = i as u64 + 1;
        let new = NewJob {
            priority: *priority,
            not_before_ms: *not_before,
            serial_key: key.map(str::to_string),
            ..job(&format!("A/{name}"))
        };
        let j = new_job(new, seq, *state, 1, &JobOptions::default());
        let body = serde_json::to_vec(&j).expect("JSON");
        let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
        let running = *state == JobState::Running;
        sql.push_str(&format!(
            "INSERT INTO provisio_jobs (id, seq, state, priority, not_before_ms, serial_key,
                 line_pos, subject, target, submitted_ms, lease_until_ms, node, finished_ms,
                 entered, body)
             VALUES ('{}', {seq}, {}, {priority}, {not_before}, {}, {seq}, 'alice', 'A/{name}', 1,
                 {}, {}, {}, '{{1,0,0,0,0,0,0}}', decode('{hex}', 'hex'));\n",
            j.id,
            state_index(*state),
            key.map_or("NULL".to_string(), |k| format!("'{k}'")),
            if running { "1000000" } else { "NULL" },
            if running {
                "'a node of schema 6'"
            } else {
                "NULL"
            },
            if *state == JobState::Dead {
                "1"
            } else {
                "NULL"
            },
        ));
        ids.insert(*name, j.id);
    }
    sql.push_str("SELECT setval('provisio_job_seq', 9);");
    let out = pg.psql(&sql);
    assert_eq!(out.code, 0, "{out:?}");
    let q = open(dir.path());
    let flags = pg.psql(&format!(
        "SELECT string_agg(claimable::text, ',' ORDER BY seq) FROM {schema}.provisio_jobs"
    ));
    assert_eq!(flags.code, 0, "{flags:?}");
    assert_eq!(
        flags.stdout.trim(),
        "0,0,0,0,2,1,2,2,0",
        "filled from the rows"
    );
    let version = pg.psql(&format!(
        "SELECT max(version) FROM {schema}.provisio_schema"
    ));
    assert_eq!(
        version.stdout.trim(),
        crate::store::latest_schema_version().to_string()
    );
    // This node took the running job over.
    let node = q.store().postgres().expect("PostgreSQL").node().to_string();
    let out = pg.psql(&format!(
        "UPDATE {schema}.provisio_jobs SET node = '{node}' WHERE state = 1"
    ));
    assert_eq!(out.code, 0, "{out:?}");
    rt().block_on(async {
        let claim = || async { q.claim(10_000, LEASE).await.expect("claim").map(|j| j.id) };
        for name in ["urgent", "due", "first"] {
            assert_eq!(claim().await.as_ref(), Some(&ids[name]), "{name}");
        }
        assert_eq!(claim().await, None);
        assert_eq!(q.next_due().expect("next due"), Some(far));
        q.finish(&ids["first"], done(), 10_000)
            .await
            .expect("finish");
        q.finish(&ids["running"], done(), 10_000)
            .await
            .expect("finish");
        q.requeue(&ids["dead"], 10_000).await.expect("requeue");
        for name in ["behind running", "dead", "second"] {
            assert_eq!(claim().await.as_ref(), Some(&ids[name]), "{name}");
        }
        assert_eq!(claim().await, None);
        q.finish(&ids["dead"], done(), 10_000)
            .await
            .expect("finish");
        assert_eq!(claim().await.as_ref(), Some(&ids["behind dead"]));
    });
}

/// Measures a claim's latency with 1,000, 10,000 and 100,000 jobs that cannot run ahead of
/// the one that can (BENCHMARKS.md, issue 11, PostgreSQL claims): half of them queued in a
/// line behind a running job of their key, half scheduled for later, all of a higher
/// priority than the runnable one (written straight into the table; their `claimable`
/// flags, where the schema has them, as the queue would have set them). Prints the median
/// of 15 claims each; asserts nothing about time. Run with `PROVISIO_TEST_STORE=postgres
/// cargo test -p provisio-engine --lib -- --ignored queue::tests::claim_cost --nocapture`.
#[cfg(feature = "postgres")]
#[test]
#[ignore = "a measurement"]
fn claim_cost_with_jobs_that_cannot_run() {
    let pg = provisio_test_support::postgres::Postgres::shared();
    for n in [1_000u64, 10_000, 100_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(url) = provisio_test_support::postgres::store_url(dir.path()) else {
            return;
        };
        let pg = pg.expect("the store's server");
        let schema = url.rsplit("%3D").next().expect("a schema").to_string();
        let q = open(dir.path());
        let mut times = Vec::new();
        rt().block_on(async {
            let head = NewJob {
                priority: 9,
                serial_key: Some("line".into()),
                ..job("A/head")
            };
            let head = q.submit(head, 10).await.expect("submit").job.id;
            let c = q.claim(10, LEASE).await.expect("claim").expect("a job");
            assert_eq!(c.id, head);
            let out = pg.psql(&format!(
                "SET search_path TO {schema};
                 INSERT INTO provisio_jobs (id, seq, state, priority, not_before_ms, serial_key,
                     line_pos, subject, target, submitted_ms, entered, body)
                 SELECT 'held-' || g, s, 0, 9, CASE WHEN g % 2 = 0 THEN 0 ELSE 4000000000000 END,
                     CASE WHEN g % 2 = 0 THEN 'line' END, s, 'alice', 'A/B', 10,
                     '{{1,0,0,0,0,0,0}}', '{{}}'::bytea
                 FROM (SELECT g, nextval('provisio_job_seq') AS s FROM generate_series(1, {n}) g) x;
                 DO $$ BEGIN
                     IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                         AND table_name = 'provisio_jobs' AND column_name = 'claimable') THEN
                         EXECUTE 'UPDATE provisio_jobs SET claimable = 1 WHERE id LIKE ''held-%'' AND serial_key IS NULL';
                     END IF;
                 END $$;
                 ANALYZE provisio_jobs;"
            ));
            assert_eq!(out.code, 0, "{out:?}");
            for round in 0..15u64 {
                let id = q
                    .submit(job(&format!("A/now-{round}")), 10)
                    .await
                    .expect("submit")
                    .job
                    .id;
                let started = std::time::Instant::now();
                let c = q.claim(20, LEASE).await.expect("claim").expect("a job");
                times.push(started.elapsed().as_secs_f64() * 1e3);
                assert_eq!(c.id, id);
                q.finish(&id, done(), 20).await.expect("finish");
            }
        });
        drop(q);
        times.sort_by(f64::total_cmp);
        println!(
            "claim with {n} jobs that cannot run: median {:.2} ms (min {:.2}, max {:.2})",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
        let out = pg.psql(&format!("DROP SCHEMA {schema} CASCADE"));
        assert_eq!(out.code, 0, "{out:?}");
    }
}

/// Several workers on two nodes (one process on sled) claim and settle while jobs of a few
/// keys are submitted, some failing once (queued again after a short backoff): no two jobs
/// of a key ever run at once, and every job runs — no line is left without its next job
/// claimable, whatever the interleaving of the changes of a line across nodes.
#[test]
fn concurrent_changes_of_lines_on_two_nodes_leave_every_job_claimable_in_turn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = provisio_test_support::postgres::store_url(dir.path()).is_some();
    let first = Arc::new(open(dir.path()));
    let second = if pg {
        Arc::new(open(dir.path()))
    } else {
        first.clone()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    const JOBS: usize = 120;
    let started = std::time::Instant::now();
    let now = move || 1_000 + started.elapsed().as_millis() as u64;
    let running: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
    let done_ids: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
    let backoff = Backoff {
        base: Duration::from_millis(2),
        max: Duration::from_millis(2),
    };
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for s in 0..4usize {
            let q = if s % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tasks.spawn(async move {
                for i in (s..JOBS).step_by(4) {
                    let new = NewJob {
                        serial_key: (i % 5 != 0).then(|| format!("key-{}", i % 3)),
                        priority: (i % 2) as i16,
                        ..job(&format!("A/{i}"))
                    };
                    q.submit(new, now()).await.expect("submit");
                    tokio::task::yield_now().await;
                }
            });
        }
        for w in 0..6usize {
            let q = if w % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            let (running, done_ids) = (running.clone(), done_ids.clone());
            tasks.spawn(async move {
                while done_ids.lock().expect("lock").len() < JOBS {
                    assert!(
                        started.elapsed() < Duration::from_secs(120),
                        "stalled: {} of {JOBS} jobs done",
                        done_ids.lock().expect("lock").len()
                    );
                    let Some(j) = q.claim(now(), LEASE).await.expect("claim") else {
                        tokio::time::sleep(Duration::from_millis(3)).await;
                        continue;
                    };
                    if let Some(key) = &j.serial_key {
                        assert!(
                            running.lock().expect("lock").insert(key.clone()),
                            "two jobs of {key} run at once"
                        );
                    }
                    tokio::task::yield_now().await;
                    if let Some(key) = &j.serial_key {
                        running.lock().expect("lock").remove(key);
                    }
                    if j.attempts == 1 && j.seq % 7 == 0 {
                        let r = q.retry_later(&j.id, "once".into(), now(), backoff, 0).await;
                        assert_eq!(r.expect("retry").state, JobState::Queued);
                    } else {
                        q.finish(&j.id, done(), now()).await.expect("finish");
                        done_ids.lock().expect("lock").insert(j.id);
                    }
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("task");
        }
    });
    assert_eq!(done_ids.lock().expect("lock").len(), JOBS);
}
