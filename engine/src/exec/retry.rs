//! Retry policies: how often and for how long the executor tries again after a transient
//! provider error — a call ([`RetryPolicies::calls`]), the `recover` that settles an
//! in-doubt call ([`RetryPolicies::settle`]) and an undo ([`RetryPolicies::undo`]) — with
//! exponential backoff, jitter, a time budget, an optional attempt limit and error codes
//! never retried; set globally and per provider ([`RetryOptions`]).
//!
//! ```
//! use provisio_engine::RetryPolicy;
//! use std::time::Duration;
//!
//! let undo = RetryPolicy {
//!     jitter: 0.0,
//!     ..RetryPolicy::undo_default()
//! };
//! // 100 ms, 200 ms, 400 ms, … each wait doubles, up to 5 s.
//! assert_eq!(undo.interval(1), Duration::from_millis(100));
//! assert_eq!(undo.interval(3), Duration::from_millis(400));
//! assert_eq!(undo.interval(20), Duration::from_secs(5));
//! ```

use crate::provider::ProviderError;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

/// How often and for how long an operation is tried again after a retryable error
/// (transient, or in doubt). A permanent error is never retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The wait before the first retry.
    pub initial: Duration,
    /// The longest wait between two attempts.
    pub max_interval: Duration,
    /// Each wait is the one before times this (at least 1).
    pub multiplier: f64,
    /// The fraction (0 to 1) of each wait taken off at random, so that many transactions
    /// waiting for the same server do not all come back at the same instant.
    pub jitter: f64,
    /// Time from the first attempt after which no retry starts (the last wait is cut short
    /// to end at the budget, so one last attempt is made then). Zero: never retried.
    pub budget: Duration,
    /// Most attempts, the first included; `None`: only the budget limits them.
    pub max_attempts: Option<u32>,
    /// HRESULT codes never retried, even when the provider calls the error transient.
    pub never_retry: BTreeSet<u32>,
}

impl RetryPolicy {
    /// Calls: a retried call keeps its transaction (and the request) waiting, and a call that
    /// fails costs only a clean rollback, which the caller can retry: three attempts within
    /// 10 s, waits from 50 ms doubling up to 2 s.
    pub fn calls_default() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(50),
            max_interval: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: 0.2,
            budget: Duration::from_secs(10),
            max_attempts: Some(3),
            never_retry: BTreeSet::new(),
        }
    }

    /// Settling an in-doubt call: the alternative to an answer is an operator checking by
    /// hand, so `recover` is asked for up to a minute (100 ms doubling up to 5 s).
    pub fn settle_default() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max_interval: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.2,
            budget: Duration::from_secs(60),
            max_attempts: None,
            never_retry: BTreeSet::new(),
        }
    }

    /// Undos: the alternative to a finished rollback is an operator, so an undo is tried
    /// for up to a minute (100 ms doubling up to 5 s): enough to ride out a restarting
    /// server or a failover.
    pub fn undo_default() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max_interval: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.2,
            budget: Duration::from_secs(60),
            max_attempts: None,
            never_retry: BTreeSet::new(),
        }
    }

    /// The wait before retry number `retry` (1-based), without jitter: `initial` times
    /// `multiplier` to the power `retry - 1`, at most `max_interval`.
    pub fn interval(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let cap = self.max_interval.max(self.initial);
        Duration::try_from_secs_f64(secs).map_or(cap, |d| d.min(cap))
    }

    /// [`RetryPolicy::interval`] less `jitter` times `unit` of it; `unit` is a random
    /// number in `[0, 1)` (0: the full interval).
    pub fn wait(&self, retry: u32, unit: f64) -> Duration {
        let cut = self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0);
        self.interval(retry).mul_f64(1.0 - cut)
    }

    /// Whether an error is retried under this policy (before counting attempts and time).
    pub fn retries(&self, error: &ProviderError) -> bool {
        retryable(error) && !self.never_retry.contains(&error.code())
    }
}

/// Whether an error class is worth another attempt: transient, or in doubt (for a call:
/// after it was settled as not applied; for an undo or a `recover`, which change nothing
/// twice, always). A permanent error or an unsupported operation is not.
pub(crate) fn retryable(error: &ProviderError) -> bool {
    matches!(
        error,
        ProviderError::Transient { .. } | ProviderError::InDoubt { .. }
    )
}

/// The three policies, one for each use.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicies {
    /// A provider call that failed with a retryable error.
    pub calls: RetryPolicy,
    /// `recover` answering with a retryable error while an in-doubt call is settled (during
    /// the run, at crash recovery and in `tx resume-rollback`).
    pub settle: RetryPolicy,
    /// An undo, in a live rollback, at crash recovery and in `tx resume-rollback`.
    pub undo: RetryPolicy,
}

impl Default for RetryPolicies {
    fn default() -> Self {
        RetryPolicies {
            calls: RetryPolicy::calls_default(),
            settle: RetryPolicy::settle_default(),
            undo: RetryPolicy::undo_default(),
        }
    }
}

impl RetryPolicies {
    /// The policy of one use.
    pub fn get(&self, use_: RetryUse) -> &RetryPolicy {
        match use_ {
            RetryUse::Calls => &self.calls,
            RetryUse::Settle => &self.settle,
            RetryUse::Undo => &self.undo,
        }
    }

    fn each(mut self, f: &impl Fn(RetryPolicy) -> RetryPolicy) -> RetryPolicies {
        self.calls = f(self.calls);
        self.settle = f(self.settle);
        self.undo = f(self.undo);
        self
    }
}

/// What a policy is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryUse {
    /// A provider call.
    Calls,
    /// `recover` settling an in-doubt call.
    Settle,
    /// An undo.
    Undo,
}

impl fmt::Display for RetryUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RetryUse::Calls => "call",
            RetryUse::Settle => "settle",
            RetryUse::Undo => "undo",
        })
    }
}

/// The policies of the executor: one set for every provider, and complete sets for the
/// providers that have their own (keyed by provider name, e.g. `DNS`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetryOptions {
    /// For providers without their own.
    pub default: RetryPolicies,
    /// By provider name.
    pub providers: BTreeMap<String, RetryPolicies>,
}

impl RetryOptions {
    /// The policy of `use_` for calls to `provider`.
    pub fn policy(&self, provider: &str, use_: RetryUse) -> &RetryPolicy {
        self.providers
            .get(provider)
            .unwrap_or(&self.default)
            .get(use_)
    }

    /// The same options with every policy's waits set to `initial` growing up to
    /// `max_interval` (tests and benchmarks wait a millisecond, not a second).
    pub fn with_intervals(self, initial: Duration, max_interval: Duration) -> RetryOptions {
        let f = |p: RetryPolicy| RetryPolicy {
            initial,
            max_interval,
            ..p
        };
        RetryOptions {
            default: self.default.each(&f),
            providers: self
                .providers
                .into_iter()
                .map(|(k, v)| (k, v.each(&f)))
                .collect(),
        }
    }
}

/// Why an operation is not tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GaveUp {
    /// The error is permanent (or the operation unsupported).
    NotRetryable,
    /// The error's code is in `never_retry`.
    NeverRetry(u32),
    /// `max_attempts` were made.
    Attempts(u32),
    /// The time budget is spent.
    Budget { attempts: u32, elapsed: Duration },
    /// Tried once only: an earlier undo of the same provider in this rollback already
    /// waited out its whole budget.
    AlreadyWaited,
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GaveUp::NotRetryable => f.write_str("not retried: the error is permanent"),
            GaveUp::NeverRetry(code) => {
                write!(f, "not retried: code {code:#010x} is in never_retry")
            }
            GaveUp::Attempts(n) => write!(f, "gave up after {n} attempts (max_attempts)"),
            GaveUp::Budget { attempts, elapsed } => write!(
                f,
                "gave up after {attempts} attempts in {:.1?} (retry budget spent)",
                elapsed
            ),
            GaveUp::AlreadyWaited => f.write_str(
                "not retried: an earlier undo of this provider in the same rollback already spent its retry budget",
            ),
        }
    }
}

/// The attempts of one operation under a policy: counts them and the time since the first,
/// and says how long to wait before the next one, or why there is none.
pub(crate) struct Attempts<'p> {
    policy: &'p RetryPolicy,
    use_: RetryUse,
    started: Instant,
    made: u32,
    /// One attempt only (see [`GaveUp::AlreadyWaited`]).
    once: bool,
}

impl<'p> Attempts<'p> {
    /// Starts counting (call before the first attempt).
    pub(crate) fn start(policy: &'p RetryPolicy, use_: RetryUse) -> Attempts<'p> {
        Attempts {
            policy,
            use_,
            started: Instant::now(),
            made: 0,
            once: false,
        }
    }

    /// Like [`Attempts::start`], but a retryable error ends it after the first attempt with
    /// [`GaveUp::AlreadyWaited`] (permanent errors and `never_retry` codes say so first).
    pub(crate) fn once(policy: &'p RetryPolicy, use_: RetryUse) -> Attempts<'p> {
        Attempts {
            once: true,
            ..Attempts::start(policy, use_)
        }
    }

    /// Counts a failed attempt ending in `error` and returns the wait before the next one,
    /// or why there is none.
    pub(crate) fn after_failure(&mut self, error: &ProviderError) -> Result<Duration, GaveUp> {
        self.made += 1;
        if !retryable(error) {
            return Err(GaveUp::NotRetryable);
        }
        if self.policy.never_retry.contains(&error.code()) {
            return Err(GaveUp::NeverRetry(error.code()));
        }
        if self.once {
            return Err(GaveUp::AlreadyWaited);
        }
        if self.policy.max_attempts.is_some_and(|max| self.made >= max) {
            return Err(GaveUp::Attempts(self.made));
        }
        let elapsed = self.started.elapsed();
        let Some(left) = self
            .policy
            .budget
            .checked_sub(elapsed)
            .filter(|d| !d.is_zero())
        else {
            return Err(GaveUp::Budget {
                attempts: self.made,
                elapsed,
            });
        };
        Ok(self.policy.wait(self.made, random_unit()).min(left))
    }

    /// [`Attempts::after_failure`], then logs the retry (attempt, next delay, budget left;
    /// `error` must already have secrets masked) and waits.
    pub(crate) async fn back_off(
        &mut self,
        error: &ProviderError,
        redacted: &str,
    ) -> Result<(), GaveUp> {
        let delay = self.after_failure(error)?;
        let left = self
            .policy
            .budget
            .saturating_sub(self.started.elapsed() + delay);
        tracing::warn!(
            attempt = self.made,
            next_delay = ?delay,
            budget_left = ?left,
            error = %redacted,
            "{} failed with a retryable error; retrying",
            self.use_
        );
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// A random number in `[0, 1)` for jitter: std's per-instance random hasher keys, no
/// dependency (jitter needs spread, not cryptographic quality).
fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max_interval: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
            budget: Duration::from_secs(60),
            max_attempts: None,
            never_retry: BTreeSet::new(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn intervals_grow_by_the_multiplier_and_stop_at_the_cap() {
        let p = policy();
        let waits: Vec<Duration> = (1..=7).map(|n| p.interval(n)).collect();
        assert_eq!(
            waits,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000),
                ms(1000)
            ]
        );
        let tripled = RetryPolicy {
            multiplier: 3.0,
            ..policy()
        };
        assert_eq!(tripled.interval(3), ms(900));
        // Huge exponents saturate at the cap instead of overflowing.
        assert_eq!(p.interval(u32::MAX), ms(1000));
        // A multiplier below 1 is read as 1: waits never shrink.
        let flat = RetryPolicy {
            multiplier: 0.5,
            ..policy()
        };
        assert_eq!(flat.interval(5), ms(100));
    }

    #[test]
    fn jitter_takes_off_at_most_its_fraction_and_never_exceeds_the_interval() {
        let p = RetryPolicy {
            jitter: 0.5,
            ..policy()
        };
        assert_eq!(p.wait(2, 0.0), ms(200));
        assert_eq!(p.wait(2, 0.5), ms(150));
        assert_eq!(p.wait(2, 0.999_999), ms(100) + Duration::from_nanos(100));
        for _ in 0..1000 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
            let w = p.wait(5, u);
            assert!(w <= ms(1000) && w >= ms(500), "{w:?}");
        }
    }

    #[test]
    fn permanent_errors_and_never_retry_codes_are_not_retried() {
        let mut p = policy();
        p.never_retry.insert(0x8007_0005);
        let mut a = Attempts::start(&p, RetryUse::Undo);
        assert_eq!(
            a.after_failure(&ProviderError::permanent("no")),
            Err(GaveUp::NotRetryable)
        );
        let denied = ProviderError::Transient {
            code: 0x8007_0005,
            message: "access denied".into(),
        };
        assert_eq!(
            a.after_failure(&denied),
            Err(GaveUp::NeverRetry(0x8007_0005))
        );
        assert!(!p.retries(&denied));
        assert!(p.retries(&ProviderError::transient("busy")));
        assert!(p.retries(&ProviderError::in_doubt("lost")));
        assert!(!p.retries(&ProviderError::Unsupported("no".into())));
    }

    #[test]
    fn attempts_stop_at_max_attempts() {
        let p = RetryPolicy {
            max_attempts: Some(3),
            ..policy()
        };
        let mut a = Attempts::start(&p, RetryUse::Calls);
        let busy = ProviderError::transient("busy");
        assert_eq!(a.after_failure(&busy), Ok(ms(100)));
        assert_eq!(a.after_failure(&busy), Ok(ms(200)));
        assert_eq!(a.after_failure(&busy), Err(GaveUp::Attempts(3)));
    }

    #[test]
    fn the_budget_cuts_the_last_wait_short_then_ends_the_retries() {
        let p = RetryPolicy {
            budget: ms(150),
            ..policy()
        };
        let mut a = Attempts::start(&p, RetryUse::Undo);
        let busy = ProviderError::transient("busy");
        assert_eq!(a.after_failure(&busy), Ok(ms(100)));
        let second = a.after_failure(&busy).expect("within the budget");
        assert!(second <= ms(150) && second > ms(100), "{second:?}");
        std::thread::sleep(ms(160));
        assert!(matches!(
            a.after_failure(&busy),
            Err(GaveUp::Budget { attempts: 3, .. })
        ));
        // Once: a retryable error is not retried, and says why.
        let mut once = Attempts::once(&p, RetryUse::Undo);
        assert_eq!(once.after_failure(&busy), Err(GaveUp::AlreadyWaited));
        // A zero budget never retries.
        let none = RetryPolicy {
            budget: Duration::ZERO,
            ..policy()
        };
        assert!(matches!(
            Attempts::start(&none, RetryUse::Undo).after_failure(&busy),
            Err(GaveUp::Budget { attempts: 1, .. })
        ));
    }

    #[test]
    fn a_provider_override_beats_the_default() {
        let mut options = RetryOptions::default();
        let mut dns = RetryPolicies::default();
        dns.undo.budget = Duration::from_secs(300);
        options.providers.insert("DNS".into(), dns);
        assert_eq!(
            options.policy("DNS", RetryUse::Undo).budget,
            Duration::from_secs(300)
        );
        assert_eq!(
            options.policy("Filesystem", RetryUse::Undo).budget,
            Duration::from_secs(60)
        );
        let fast = options.with_intervals(ms(1), ms(2));
        assert_eq!(fast.policy("DNS", RetryUse::Settle).initial, ms(1));
        assert_eq!(
            fast.policy("DNS", RetryUse::Undo).budget,
            Duration::from_secs(300)
        );
        assert_eq!(fast.policy("X", RetryUse::Calls).max_interval, ms(2));
    }
}
