//! Events of jobs that run on another daemon sharing the PostgreSQL store (issue 18): a
//! daemon whose client follows a job it does not run (`?wait=`, `/v1/requests/{id}/events`,
//! `provisio submit --wait`) says so once (`NOTIFY provisio_watch, '<job id>'`); the daemon
//! that runs a watched job forwards its events (`NOTIFY provisio_events`, with its node
//! id), its `finished` event included, which the watching daemon hands to its listeners.
//! Jobs nobody watches from another daemon cost nothing. A cancel made through one daemon
//! of a job another runs comes the same way (`NOTIFY provisio_cancel, '<job id>'`, sent by
//! the queue): the runner stops it at once.

use super::{finished_event, Daemon};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The channel a daemon announces a job it follows on.
const WATCH: &str = "provisio_watch";
/// The channel a cancel of a job running on another daemon is announced on (the job id).
const CANCEL: &str = provisio_engine::queue::CANCEL_CHANNEL;
/// The channel watched jobs' events go on: `<node id> <event JSON>`.
const EVENTS: &str = "provisio_events";
/// A notification's payload must stay under 8000 bytes.
const MAX_PAYLOAD: usize = 7900;
/// Watched ids kept at most (forgotten all at once beyond: the waiters then fall back to
/// looking at the job every second).
const MAX_WATCHED: usize = 100_000;

/// This daemon's side of the forwarding.
pub(crate) struct Remote {
    node: String,
    store: Arc<dyn provisio_engine::Store>,
    watched: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Remote {
    /// Whether a daemon (this one included) follows job `id`.
    pub(crate) fn watches(&self, id: &str) -> bool {
        let w = lock(&self.watched);
        !w.is_empty() && w.contains(id)
    }

    /// Sends an event of a watched job to the daemons following it.
    pub(crate) fn forward(&self, id: &str, text: &str, finished: bool) {
        if finished {
            lock(&self.watched).remove(id);
        }
        let Some(pg) = self.store.postgres() else {
            return;
        };
        let mut payload = format!("{} {text}", self.node);
        if payload.len() > MAX_PAYLOAD {
            if !finished {
                return;
            }
            // The watcher reads the finished job itself.
            payload = format!(
                "{} {}",
                self.node,
                serde_json::json!({"event": "finished", "id": id})
            );
        }
        pg.notify(EVENTS, payload);
    }
}

/// Announces that a client of this daemon follows job `id` (several daemons on one
/// PostgreSQL store; nothing otherwise).
pub(crate) fn watch(d: &Daemon, id: &str) {
    if let (Some(_), Some(pg)) = (d.hub.remote.get(), d.store.postgres()) {
        pg.notify(WATCH, id.to_string());
    }
}

/// Listens for the watches and the forwarded events (several daemons on one PostgreSQL
/// store; nothing otherwise).
pub(crate) fn start(d: &Arc<Daemon>) {
    let Some(pg) = d.store.postgres() else {
        return;
    };
    if !d.queue.is_shared() {
        return;
    }
    let remote = Arc::new(Remote {
        node: pg.node().to_string(),
        store: d.store.clone(),
        watched: Mutex::new(HashSet::new()),
    });
    if d.hub.remote.set(remote.clone()).is_err() {
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    pg.listen_payloads(&[WATCH, EVENTS, CANCEL], tx);
    let d = d.clone();
    tokio::spawn(async move {
        while let Some((channel, payload)) = rx.recv().await {
            if channel == CANCEL {
                // A cancel made through another daemon of a job that may run here: its
                // runner stops before its next step (a run between its claim and its
                // start reads it from the queue).
                if d.queue.cancel_seen(&payload) {
                    tracing::info!(job = %payload, "a cancel made through another daemon stops this job");
                    if let Some(c) = super::lock(&d.running).get(&payload) {
                        c.cancel();
                    }
                }
                continue;
            }
            if channel == WATCH {
                let mut w = lock(&remote.watched);
                if w.len() >= MAX_WATCHED {
                    w.clear();
                }
                w.insert(payload);
                continue;
            }
            let Some((node, text)) = payload.split_once(' ') else {
                continue;
            };
            if node == remote.node {
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
                continue;
            };
            let Some(id) = v.get("id").and_then(|i| i.as_str()).map(str::to_string) else {
                continue;
            };
            if v.get("event").and_then(|e| e.as_str()) == Some("finished") {
                lock(&remote.watched).remove(&id);
                // As this daemon would tell it: from the job as the queue holds it.
                let event = match d.queue.get(&id) {
                    Ok(Some(job)) if job.state.is_final() => finished_event(&job),
                    _ => v,
                };
                d.hub.deliver(&id, super::Hub::text(&id, event), true);
            } else {
                d.hub.deliver(&id, Arc::from(text), false);
            }
        }
    });
}
