//! The daemon's Prometheus metrics (`GET /v1/metrics`, text exposition format): jobs by
//! state (from the queue's counts, no scan), submissions, retries, transactions by outcome,
//! and latency histograms of steps (by provider procedure) and of requests (by procedure).

use provisio_engine::queue::{Queue, ALL_STATES};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }
}

#[derive(Default)]
struct Inner {
    retries: u64,
    outcomes: BTreeMap<String, u64>,
    steps: BTreeMap<String, Histogram>,
    requests: BTreeMap<String, Histogram>,
}

/// Counters and histograms of this process (since it started).
#[derive(Default)]
pub struct Metrics(Mutex<Inner>);

/// The histogram of `label` (its name copied only the first time).
fn histogram<'m>(map: &'m mut BTreeMap<String, Histogram>, label: &str) -> &'m mut Histogram {
    if !map.contains_key(label) {
        map.insert(label.to_string(), Histogram::default());
    }
    map.get_mut(label).expect("inserted above")
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// A job is tried again after a transient failure.
    pub fn retried(&self) {
        self.with(|m| m.retries += 1);
    }

    /// A job's transaction ended (`committed`, `rolled_back`, …) after `took`.
    pub fn finished(&self, target: &str, outcome: &str, took: Duration) {
        self.with(|m| {
            match m.outcomes.get_mut(outcome) {
                Some(n) => *n += 1,
                None => {
                    m.outcomes.insert(outcome.to_string(), 1);
                }
            }
            histogram(&mut m.requests, target).observe(took);
        });
    }

    /// A provider call of `target` took `took`.
    pub fn step(&self, target: &str, took: Duration) {
        self.with(|m| histogram(&mut m.steps, target).observe(took));
    }

    /// The exposition text, with the queue's counts and totals (kept in the store, so they
    /// survive restarts) and the jobs running here.
    pub fn render(&self, queue: &Queue, running_here: usize) -> String {
        let tally = queue.tally();
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = writeln!(out, "# HELP provisio_jobs Jobs in the queue by state.");
        let _ = writeln!(out, "# TYPE provisio_jobs gauge");
        for (state, n) in ALL_STATES.iter().zip(tally.now) {
            let _ = writeln!(out, "provisio_jobs{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP provisio_requests_total Jobs that entered each state since the queue was created (kept in the store: survives restarts and retention)."
        );
        let _ = writeln!(out, "# TYPE provisio_requests_total counter");
        for (state, n) in ALL_STATES.iter().zip(tally.entered) {
            let _ = writeln!(out, "provisio_requests_total{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP provisio_jobs_running_here Jobs this process is running."
        );
        let _ = writeln!(out, "# TYPE provisio_jobs_running_here gauge");
        let _ = writeln!(out, "provisio_jobs_running_here {running_here}");
        let _ = writeln!(
            out,
            "# HELP provisio_requests_submitted_total Jobs queued since the queue was created (kept in the store)."
        );
        let _ = writeln!(out, "# TYPE provisio_requests_submitted_total counter");
        let _ = writeln!(out, "provisio_requests_submitted_total {}", tally.submitted);
        let _ = writeln!(
            out,
            "# HELP provisio_job_retries_total Jobs queued again after a transient failure."
        );
        let _ = writeln!(out, "# TYPE provisio_job_retries_total counter");
        let _ = writeln!(out, "provisio_job_retries_total {}", m.retries);
        let _ = writeln!(out, "# HELP provisio_transactions_total Transactions of jobs that ended, by outcome (rolled_back: rollbacks).");
        let _ = writeln!(out, "# TYPE provisio_transactions_total counter");
        for (outcome, n) in &m.outcomes {
            let _ = writeln!(
                out,
                "provisio_transactions_total{{outcome=\"{}\"}} {n}",
                escape(outcome)
            );
        }
        for (name, help, label, hists) in [
            (
                "provisio_step_duration_seconds",
                "Provider calls by the provider procedure called.",
                "target",
                &m.steps,
            ),
            (
                "provisio_request_duration_seconds",
                "Requests from start to end by procedure.",
                "procedure",
                &m.requests,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (key, h) in hists {
                let key = escape(key);
                for (b, n) in BUCKETS.iter().zip(h.counts) {
                    let _ = writeln!(out, "{name}_bucket{{{label}=\"{key}\",le=\"{b}\"}} {n}");
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{label}=\"{key}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(out, "{name}_sum{{{label}=\"{key}\"}} {}", h.sum);
                let _ = writeln!(out, "{name}_count{{{label}=\"{key}\"}} {}", h.count);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let m = Metrics::default();
        m.step("DNS Provider/\"Zone\"", Duration::from_millis(30));
        m.step("DNS Provider/\"Zone\"", Duration::from_secs(2));
        m.finished("A/B", "committed", Duration::from_millis(1));
        let store: std::sync::Arc<dyn provisio_engine::Store> =
            std::sync::Arc::new(provisio_engine::MemStore::new());
        let queue = Queue::open(store).expect("queue");
        let text = m.render(&queue, 1);
        assert!(text.contains("provisio_jobs{state=\"held\"} 0"), "{text}");
        assert!(text.contains(
            "provisio_step_duration_seconds_bucket{target=\"DNS Provider/\\\"Zone\\\"\",le=\"0.05\"} 1"
        ), "{text}");
        assert!(text.contains(
            "provisio_step_duration_seconds_bucket{target=\"DNS Provider/\\\"Zone\\\"\",le=\"2.5\"} 2"
        ), "{text}");
        assert!(text.contains("provisio_transactions_total{outcome=\"committed\"} 1"));
        assert!(text.contains("provisio_requests_submitted_total 0"));
    }
}
