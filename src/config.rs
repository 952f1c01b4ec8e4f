//! The configuration: one [`Config`], layered defaults → `provisio.toml` → `PROVISIO_*`
//! environment → command-line flags (see `docs/configuration.md`).
//!
//! Relative paths in the file are relative to the file's folder; relative paths from the
//! environment or flags are relative to the working directory. Paths left unset that live
//! under the data folder (`[providers.filesystem] root`, `[providers.dns] zone_dir`,
//! `[journal] seal_key_file`) follow `data_dir` whichever layer set it.

use anyhow::{anyhow, bail, Context, Result};
use provisio_engine::{RetryOptions, RetryPolicies, RetryPolicy, RetryUse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The file read when neither `--config` nor `PROVISIO_CONFIG` names one (if present).
pub const DEFAULT_FILE: &str = "provisio.toml";

/// The always-on providers that keep their records in provider state (issue 16).
const BOOKKEEPING: [&str; 2] = [
    provisio_providers::resource_manager::PROVIDER,
    provisio_providers::plans::PROVIDER,
];

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the journal, the seal key and the embedded providers' state live.
    pub data_dir: PathBuf,
    /// Which store holds the journal, queue, audit and provider state: `sled` (the
    /// embedded default, under `data_dir`) or a `postgres://` URL (docs/store.md).
    pub store: StoreSetting,
    /// Folder of namespace definitions.
    pub namespaces: PathBuf,
    /// Whether `namespaces` was set by the file, the environment or a flag (a missing
    /// default folder means "only the providers' own namespaces"; a missing chosen one is
    /// an error).
    #[serde(skip)]
    pub namespaces_explicit: bool,
    /// Set for commands that only read (`tx list`, `tx show`, …): the journal and the seal
    /// key are used as they are, never created.
    #[serde(skip)]
    pub read_only: bool,
    /// Executor settings.
    pub engine: EngineConfig,
    /// Journal settings.
    pub journal: JournalConfig,
    /// Providers.
    pub providers: ProvidersConfig,
    /// How long finished transactions, audit entries and providers' undo state are kept.
    pub retention: RetentionConfig,
    /// How often and how long calls, settlements of in-doubt calls and undos are retried.
    pub retry: RetryConfig,
    /// The daemon (`provisio serve`): where it listens, its workers, its queue, its tokens.
    pub serve: ServeConfig,
}

/// `[serve]`: the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address and port the HTTP API listens on (loopback unless set otherwise).
    pub listen: String,
    /// Jobs run at once (the worker pool).
    pub workers: usize,
    /// Largest request body accepted, in bytes (refused before it is parsed).
    pub max_body_bytes: usize,
    /// On SIGTERM: how long running jobs may take to finish before the daemon exits anyway
    /// (what is left is rolled back or resumed by recovery at the next start).
    pub shutdown_timeout: Wait,
    /// A running job's lease: a job whose worker has not renewed it for this long is
    /// taken back (renewed every third of it).
    pub lease: Wait,
    /// Attempts of a job whose transaction rolls back after a transient provider error,
    /// before it is `dead`.
    pub max_attempts: u32,
    /// Whether a job queued by a `queue` step keeps its response once it succeeded, when
    /// its `queueContext` has no `retainSuccessfulResponses` (MPS read this default from
    /// the queue's configuration).
    pub retain_successful_responses: bool,
    /// The wait after a job's first transient failure (doubled after each further one,
    /// with jitter).
    pub retry_initial: Wait,
    /// The longest wait between two attempts of a job.
    pub retry_max: Wait,
    /// PEM certificate chain: with `tls_key`, the API is served over HTTPS only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The bearer tokens clients authenticate with: only their SHA-256 hashes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenConfig>,
    /// Access control lists on namespaces and procedures (docs/daemon.md, "Access control").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub acl: Vec<AclConfig>,
}

/// `[[serve.acl]]`: who may execute or read a namespace's procedures, or one procedure's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// The namespace.
    pub namespace: String,
    /// The procedure (absent: the entry is the namespace's, inherited by its procedures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub procedure: Option<String>,
    /// Subjects and `group:NAME`s that may call (and see) it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub execute: Vec<String>,
    /// Subjects and `group:NAME`s that may see it in the catalog.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<String>,
    /// Subjects and `group:NAME`s refused whatever else grants them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// A procedure's entry: whether the namespace's entries apply too (default true).
    #[serde(default = "yes")]
    pub inherit: bool,
}

fn yes() -> bool {
    true
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:8750".into(),
            workers: 4,
            max_body_bytes: 1024 * 1024,
            shutdown_timeout: Wait(std::time::Duration::from_secs(30)),
            lease: Wait(std::time::Duration::from_secs(30)),
            max_attempts: 5,
            retain_successful_responses: true,
            retry_initial: Wait(std::time::Duration::from_secs(1)),
            retry_max: Wait(std::time::Duration::from_secs(300)),
            tls_cert: None,
            tls_key: None,
            tokens: Vec::new(),
            acl: Vec::new(),
        }
    }
}

/// `[[serve.tokens]]`: one client of the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who the token's requests run as (in the journal, the audit log and `tx show`).
    pub subject: String,
    /// The token's SHA-256, 64 hex digits (`provisio token hash` prints it); never the
    /// token itself.
    pub sha256: String,
    /// Groups of the subject.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// May send trusted requests (carrying their own procedure body, which may call
    /// private procedures).
    #[serde(default)]
    pub trusted: bool,
    /// May see and cancel every subject's requests and requeue dead jobs.
    #[serde(default)]
    pub operator: bool,
    /// The procedures it may call: `Namespace/Procedure`, `Namespace/*` or `*` (default:
    /// every public procedure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
}

/// `[engine]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Most provider calls in flight at once within one transaction.
    pub max_parallel: usize,
    /// Seconds a provider call may take before its step fails.
    pub step_timeout_secs: u64,
    /// Most calls in flight at once to a provider (by provider name: `DNS`, `Filesystem`,
    /// an exec provider's `name`), over every transaction of the process (the daemon's
    /// workers share them).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub provider_limits: BTreeMap<String, usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_parallel: 16,
            step_timeout_secs: 300,
            provider_limits: BTreeMap::new(),
        }
    }
}

/// Keys that were replaced, with what to write instead (named in the error).
const REPLACED_KEYS: &[(&str, &str)] = &[
    (
        "engine.retries",
        "retries are set in [retry.calls]: `max_attempts` (retries + 1), `budget`, `initial`, `max_interval`",
    ),
    (
        "engine.undo_attempts",
        "undo retries are set in [retry.undo]: `budget` (default \"60s\"), `max_attempts`, `initial`, `max_interval`",
    ),
];

/// Environment variables that were replaced, with what to use instead.
const REPLACED_ENV: &[(&str, &str)] = &[
    (
        "PROVISIO_RETRIES",
        "set `max_attempts` (retries + 1) in [retry.calls] of provisio.toml",
    ),
    (
        "PROVISIO_UNDO_ATTEMPTS",
        "set `budget` or `max_attempts` in [retry.undo] of provisio.toml",
    ),
];

/// `[retry]`: one policy for each use — `calls`, `settle`, `undo` — and per provider
/// overrides in `[retry.providers.<provider name>.<use>]` (see docs/configuration.md).
/// A key left out keeps the engine's default (for a provider: the global `[retry.<use>]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// A provider call failing with a transient error.
    pub calls: RetryPolicyToml,
    /// `recover` failing transiently while an in-doubt call is settled.
    pub settle: RetryPolicyToml,
    /// An undo (live rollback, `recover`, `tx resume-rollback`).
    pub undo: RetryPolicyToml,
    /// Overrides by provider name (`DNS`, `Filesystem`, an exec provider's `name`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, ProviderRetryToml>,
}

/// `[retry.providers.<name>]`: the uses this provider retries differently.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderRetryToml {
    /// Its calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<RetryPolicyToml>,
    /// Settling its in-doubt calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settle: Option<RetryPolicyToml>,
    /// Its undos.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undo: Option<RetryPolicyToml>,
}

/// One retry policy as written; a key left out is inherited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicyToml {
    /// The wait before the first retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial: Option<Wait>,
    /// The longest wait between two attempts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Wait>,
    /// Each wait is the one before times this (≥ 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    /// Fraction (0 to 1) of each wait taken off at random.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
    /// No retry starts this long after the first attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<Wait>,
    /// Most attempts, the first included; 0: no limit but the budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// HRESULT codes never retried (`"0x80070005"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub never_retry: Option<Vec<Hresult>>,
}

impl RetryPolicyToml {
    /// `base` with the keys written here.
    fn apply(&self, base: &RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            initial: self.initial.map_or(base.initial, |w| w.0),
            max_interval: self.max_interval.map_or(base.max_interval, |w| w.0),
            multiplier: self.multiplier.unwrap_or(base.multiplier),
            jitter: self.jitter.unwrap_or(base.jitter),
            budget: self.budget.map_or(base.budget, |w| w.0),
            max_attempts: match self.max_attempts {
                None => base.max_attempts,
                Some(0) => None,
                Some(n) => Some(n),
            },
            never_retry: match &self.never_retry {
                None => base.never_retry.clone(),
                Some(codes) => codes.iter().map(|c| c.0).collect(),
            },
        }
    }

    /// Every key written out (for `config show`).
    fn complete(p: &RetryPolicy) -> RetryPolicyToml {
        RetryPolicyToml {
            initial: Some(Wait(p.initial)),
            max_interval: Some(Wait(p.max_interval)),
            multiplier: Some(p.multiplier),
            jitter: Some(p.jitter),
            budget: Some(Wait(p.budget)),
            max_attempts: Some(p.max_attempts.unwrap_or(0)),
            never_retry: Some(p.never_retry.iter().map(|&c| Hresult(c)).collect()),
        }
    }
}

/// The three uses, with their keys in `[retry]`.
const RETRY_USES: [(RetryUse, &str); 3] = [
    (RetryUse::Calls, "calls"),
    (RetryUse::Settle, "settle"),
    (RetryUse::Undo, "undo"),
];

impl RetryConfig {
    fn global(&self, use_: RetryUse) -> &RetryPolicyToml {
        match use_ {
            RetryUse::Calls => &self.calls,
            RetryUse::Settle => &self.settle,
            RetryUse::Undo => &self.undo,
        }
    }

    /// The engine's retry options: defaults < `[retry.<use>]` < the provider's own.
    pub fn options(&self) -> RetryOptions {
        let defaults = RetryPolicies::default();
        let global = RetryPolicies {
            calls: self.calls.apply(&defaults.calls),
            settle: self.settle.apply(&defaults.settle),
            undo: self.undo.apply(&defaults.undo),
        };
        let own = |o: &Option<RetryPolicyToml>, base: &RetryPolicy| match o {
            Some(p) => p.apply(base),
            None => base.clone(),
        };
        let providers = self
            .providers
            .iter()
            .map(|(name, p)| {
                let policies = RetryPolicies {
                    calls: own(&p.calls, &global.calls),
                    settle: own(&p.settle, &global.settle),
                    undo: own(&p.undo, &global.undo),
                };
                (name.clone(), policies)
            })
            .collect();
        RetryOptions {
            default: global,
            providers,
        }
    }

    /// The effective policies written out in full (a provider's own uses only).
    fn shown(&self) -> RetryConfig {
        let o = self.options();
        let complete = |use_| RetryPolicyToml::complete(o.default.get(use_));
        RetryConfig {
            calls: complete(RetryUse::Calls),
            settle: complete(RetryUse::Settle),
            undo: complete(RetryUse::Undo),
            providers: self
                .providers
                .iter()
                .map(|(name, p)| {
                    let of = |set: &Option<RetryPolicyToml>, use_| {
                        set.as_ref()
                            .map(|_| RetryPolicyToml::complete(o.policy(name, use_)))
                    };
                    let shown = ProviderRetryToml {
                        calls: of(&p.calls, RetryUse::Calls),
                        settle: of(&p.settle, RetryUse::Settle),
                        undo: of(&p.undo, RetryUse::Undo),
                    };
                    (name.clone(), shown)
                })
                .collect(),
        }
    }

    /// Checks every policy where it is written; `providers` are the configured providers'
    /// names.
    fn check(&self, at: &dyn Fn(&str) -> String, providers: &[String]) -> Result<()> {
        let o = self.options();
        for (use_, key) in RETRY_USES {
            check_policy(
                self.global(use_),
                o.default.get(use_),
                &format!("retry.{key}"),
                at,
            )?;
        }
        for (name, p) in &self.providers {
            if !providers.contains(name) {
                bail!(
                    "{}: no provider `{name}` is configured; the providers are {}",
                    at(&format!("retry.providers.{}", toml_key(name))),
                    providers
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            for (use_, key) in RETRY_USES {
                let set = match use_ {
                    RetryUse::Calls => &p.calls,
                    RetryUse::Settle => &p.settle,
                    RetryUse::Undo => &p.undo,
                };
                if let Some(set) = set {
                    let table = format!("retry.providers.{}.{key}", toml_key(name));
                    check_policy(set, o.policy(name, use_), &table, at)?;
                }
            }
        }
        Ok(())
    }
}

/// A provider name as a dotted-key part (quoted unless bare).
fn toml_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

/// Checks a policy written at `table` (`set`: its keys as written, `effective`: with what it
/// inherits); errors name the key.
fn check_policy(
    set: &RetryPolicyToml,
    effective: &RetryPolicy,
    table: &str,
    at: &dyn Fn(&str) -> String,
) -> Result<()> {
    let key = |k: &str| at(&format!("{table}.{k}"));
    if set.initial.is_some() && effective.initial < std::time::Duration::from_millis(1) {
        bail!("{}: must be at least \"1ms\"", key("initial"));
    }
    if let Some(m) = set.multiplier {
        if !(1.0..=100.0).contains(&m) {
            bail!(
                "{}: {m} must be between 1 (equal waits) and 100; 2 doubles each wait",
                key("multiplier")
            );
        }
    }
    if let Some(j) = set.jitter {
        if !(0.0..=1.0).contains(&j) {
            bail!(
                "{}: {j} must be between 0 (no jitter) and 1 (a wait anywhere between 0 and the interval)",
                key("jitter")
            );
        }
    }
    if (set.initial.is_some() || set.max_interval.is_some())
        && effective.max_interval < effective.initial
    {
        let which = if set.max_interval.is_some() {
            "max_interval"
        } else {
            "initial"
        };
        bail!(
            "{}: max_interval ({}) is shorter than initial ({}); the waits grow from initial up to max_interval",
            key(which),
            Wait(effective.max_interval),
            Wait(effective.initial)
        );
    }
    Ok(())
}

/// An HRESULT code as written in `never_retry`: `"0x80070005"`, `"2147942405"`, or a TOML
/// integer (`0x80070005`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hresult(pub u32);

impl std::str::FromStr for Hresult {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => t.parse::<u32>(),
        };
        parsed.map(Hresult).map_err(|_| {
            format!("{s:?} is not an HRESULT code; write it as providers report it, e.g. \"0x80070005\"")
        })
    }
}

impl Serialize for Hresult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:#010x}", self.0))
    }
}

impl<'de> Deserialize<'de> for Hresult {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Text(String),
            Number(i64),
        }
        match Written::deserialize(d)? {
            Written::Text(t) => t.parse().map_err(serde::de::Error::custom),
            Written::Number(n) => u32::try_from(n).map(Hresult).map_err(|_| {
                serde::de::Error::custom(format!(
                    "{n} is not an HRESULT code (0 to 0xFFFFFFFF); e.g. \"0x80070005\""
                ))
            }),
        }
    }
}

/// `[journal]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// How long to wait for the journal when another provisio process holds it, before
    /// giving up with exit code 75 (try again later).
    pub wait_lock: Wait,
    /// File holding the seal key (64 hex digits), created 0600 if missing; default
    /// `<data_dir>/seal.key`. `PROVISIO_SEAL_KEY` overrides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal_key_file: Option<PathBuf>,
    /// The seal key from `PROVISIO_SEAL_KEY`: never read from or written to a file.
    #[serde(skip)]
    pub seal_key: Option<Secret>,
    /// With a PostgreSQL `store`: how long to keep retrying (with backoff) while the
    /// database cannot be reached at start, before giving up.
    pub connect_retry: ConnectRetry,
}

/// `journal.connect_retry`: a [`Wait`] whose default is 30 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnectRetry(pub Wait);

impl Default for ConnectRetry {
    fn default() -> Self {
        ConnectRetry(Wait(std::time::Duration::from_secs(30)))
    }
}

/// `store`: the embedded sled store or a PostgreSQL database. Shown (`config show`,
/// messages) with the URL's password masked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreSetting {
    /// sled under `<data_dir>/journal`.
    #[default]
    Sled,
    /// A `postgres://` URL (with its password, if any).
    Postgres(Secret),
}

impl StoreSetting {
    /// How messages show it: `sled`, or the URL with the password masked.
    pub fn shown(&self) -> String {
        match self {
            StoreSetting::Sled => "sled".to_string(),
            StoreSetting::Postgres(url) => provisio_engine::mask_url(url.expose()),
        }
    }
}

impl std::str::FromStr for StoreSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "sled" || s.is_empty() {
            Ok(StoreSetting::Sled)
        } else if provisio_engine::is_postgres_url(s) {
            Ok(StoreSetting::Postgres(Secret(s.to_string())))
        } else {
            Err(format!(
                "{:?} is neither \"sled\" nor a PostgreSQL URL (\"postgres://USER:PASSWORD@HOST:PORT/DATABASE\")",
                provisio_engine::mask_url(s)
            ))
        }
    }
}

impl Serialize for StoreSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.shown())
    }
}

impl<'de> Deserialize<'de> for StoreSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A duration written as text (`10s`, `1m 30s`, `500ms`, `0s`); a bare number is seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait(pub std::time::Duration);

impl Default for Wait {
    /// Long enough to ride out another short `provisio` command, short enough for a person.
    fn default() -> Self {
        Wait(std::time::Duration::from_secs(10))
    }
}

impl std::str::FromStr for Wait {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(Wait(std::time::Duration::from_secs(secs)));
        }
        humantime::parse_duration(s).map(Wait).map_err(|e| {
            format!(
                "{s:?} is not a duration ({e}); write e.g. \"30s\", \"2m\", \"500ms\" or \"0s\""
            )
        })
    }
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Wait {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Wait {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `[retention]`: what is kept, for how long (see docs/configuration.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Committed and rolled-back transactions are pruned from the journal this long after
    /// they finished (`forever` keeps them). Unfinished and `rollback_failed` ones never are.
    pub transactions: Keep,
    /// At most this many committed or rolled-back transactions are kept, the newest
    /// (0: no count limit).
    pub max_transactions: usize,
    /// Audit entries are pruned this long after their transaction finished; at least as long
    /// as `transactions`.
    pub audit: Keep,
    /// What providers keep only for undo (deleted folders in `.provisio-trash/`, deleted
    /// zones in `.deleted/`, intent markers, quotas of deleted folders) is purged this long
    /// after its transaction finished, by `provisio purge`.
    pub provider_state: Keep,
    /// After each `run`, prune up to 100 transactions past retention (one index read when
    /// none is due).
    pub prune_after_run: bool,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        RetentionConfig {
            transactions: Keep(Some(std::time::Duration::from_secs(30 * DAY))),
            max_transactions: 0,
            audit: Keep(Some(std::time::Duration::from_secs(400 * DAY))),
            provider_state: Keep(Some(std::time::Duration::from_secs(7 * DAY))),
            prune_after_run: true,
        }
    }
}

/// A retention time written as text (`30d`, `12h`, `forever`); a bare number is seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep(pub Option<std::time::Duration>);

impl std::str::FromStr for Keep {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "forever" | "never" => Ok(Keep(None)),
            other => other.parse::<Wait>().map(|w| Keep(Some(w.0))).map_err(|_| {
                format!(
                    "{other:?} is not a retention time; write e.g. \"30d\", \"12h\" or \"forever\""
                )
            }),
        }
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => write!(f, "{}", humantime::format_duration(d)),
            None => f.write_str("forever"),
        }
    }
}

impl Serialize for Keep {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl RetentionConfig {
    /// The engine's retention policy, with `--older-than` / `--keep` overriding the keys.
    pub fn policy(
        &self,
        older_than: Option<Keep>,
        keep: Option<usize>,
    ) -> provisio_engine::txn::retention::Retention {
        let max_count = keep.unwrap_or(self.max_transactions);
        provisio_engine::txn::retention::Retention {
            max_age: older_than.unwrap_or(self.transactions).0,
            max_count: (max_count > 0 || keep.is_some()).then_some(max_count),
            audit_max_age: self.audit.0,
        }
    }
}

/// `[providers]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    /// The embedded filesystem provider.
    pub filesystem: FilesystemConfig,
    /// The DNS provider.
    pub dns: DnsConfig,
    /// The directory provider (`Active Directory Provider`).
    pub directory: DirectoryToml,
    /// The mail provider (`Exchange 2007 Provider`).
    pub exchange: ExchangeToml,
    /// Out-of-process providers, one `[[providers.exec]]` table each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<ExecProviderConfig>,
}

/// `[providers.exchange]`: the mail provider's files.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExchangeToml {
    /// Where the passwd-file, the maps and the mailbox homes go; default `<data_dir>/mail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mail_root: Option<PathBuf>,
    /// The uid the mail belongs to (passwd-file field; homes are given to it when Provisio
    /// runs as root); default Provisio's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mail_uid: Option<u32>,
    /// The gid, likewise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mail_gid: Option<u32>,
}

/// `[providers.filesystem]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesystemConfig {
    /// The provider's root folder; default `<data_dir>/files`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Accept setuid/setgid/sticky bits in `mode` inputs (refused by default).
    pub allow_special_modes: bool,
    /// The uids SetOwner may give files to (`"1000-59999"`, `"33"`); absent: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_uids: Option<Vec<String>>,
    /// The gids SetOwner may set; absent: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_gids: Option<Vec<String>>,
}

/// Which DNS backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsBackendKind {
    /// Zone files in `zone_dir`.
    #[default]
    Zonefile,
    /// TSIG-signed RFC 2136 updates to `server`.
    Rfc2136,
}

/// `[providers.dns]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// `zonefile` or `rfc2136`.
    pub backend: DnsBackendKind,
    /// zonefile: the zone folder; default `<data_dir>/zones`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone_dir: Option<PathBuf>,
    /// rfc2136: the authoritative server, `IP:PORT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// rfc2136: BIND key file holding the TSIG key (`key "name" { algorithm …; secret …; };`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// rfc2136: seconds to wait for each answer.
    pub timeout_secs: u64,
    /// Other names of the managed DNS server that MPS requests may give as
    /// `serverIdentifier` (its address is always accepted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_identifiers: Vec<String>,
    /// rfc2136: `[providers.dns.rndc]`, zone creation and deletion through BIND's control
    /// channel; absent: CreateZone only checks that the zone is served, DeleteZone fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rndc: Option<RndcToml>,
}

/// `[providers.dns.rndc]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RndcToml {
    /// Folder Provisio writes new zone files (and deleted-zone copies) into; named reads
    /// it and writes journals there.
    pub zone_dir: PathBuf,
    /// The same folder as named sees it, when mounted elsewhere on the DNS server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_zone_dir: Option<PathBuf>,
    /// The rndc program; default `rndc` on PATH or in /usr/sbin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<PathBuf>,
    /// `rndc -s`: the control channel's address; default rndc's own configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// `rndc -p`: the control channel's port; default rndc's own configuration (953).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `rndc -k`: the control channel's key file; default rndc's own configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// `rndc -c`: an rndc configuration file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<PathBuf>,
    /// Statements added inside every added zone's `{ … }`, e.g. `also-notify { … };`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone_options: String,
    /// Seconds allowed for one rndc run.
    #[serde(default = "default_rndc_timeout")]
    pub timeout_secs: u64,
}

fn default_rndc_timeout() -> u64 {
    10
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            backend: DnsBackendKind::Zonefile,
            zone_dir: None,
            server: None,
            key_file: None,
            timeout_secs: 5,
            server_identifiers: Vec::new(),
            rndc: None,
        }
    }
}

/// Which directory backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectoryBackendKind {
    /// The embedded directory in the engine's store (no server).
    #[default]
    Embedded,
    /// An LDAP server, configured by `[providers.directory.ldap]`.
    Ldap,
}

/// `[providers.directory]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryToml {
    /// `embedded` or `ldap`.
    pub backend: DirectoryBackendKind,
    /// Every object must be under this DN (RFC 4514), e.g. `DC=provisio,DC=local`.
    pub base_dn: String,
    /// `[providers.directory.ldap]`: the servers of the ldap backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ldap: Option<DirectoryLdapToml>,
}

impl Default for DirectoryToml {
    fn default() -> Self {
        DirectoryToml {
            backend: DirectoryBackendKind::Embedded,
            base_dn: provisio_providers::directory::DEFAULT_BASE_DN.to_string(),
            ldap: None,
        }
    }
}

/// How the ldap backend protects its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LdapTlsToml {
    /// `ldaps://`: TLS from the first byte.
    Ldaps,
    /// `ldap://` upgraded with StartTLS before the bind.
    Starttls,
    /// Plain LDAP (passwords refused unless `allow_plain_passwords`).
    None,
}

/// Which kind of LDAP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LdapFlavourToml {
    /// Active Directory or Samba AD.
    Ad,
    /// OpenLDAP with `packaging/ldap/provisio-ad.schema`.
    Openldap,
}

/// `[providers.directory.ldap]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryLdapToml {
    /// Server URLs (`ldaps://dc1.example.com`) or host names; a transaction uses one.
    pub servers: Vec<String>,
    /// The service account's DN (on AD also its UPN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_dn: Option<String>,
    /// The file holding the service account's password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// `ldaps`, `starttls` or `none`; default `ldaps` when every server is an `ldaps://`
    /// URL, else `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<LdapTlsToml>,
    /// Check the servers' certificates.
    pub tls_verify: bool,
    /// PEM file of the CA certificates to check them against; default the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// `ad` or `openldap`; default read from the root DSE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flavour: Option<LdapFlavourToml>,
    /// Send passwords over plain LDAP (refused by default).
    pub allow_plain_passwords: bool,
    /// Bound connections per server.
    pub pool_size: usize,
    /// Connect and per-operation timeout, seconds.
    pub timeout_secs: u64,
    /// Page size of searches (RFC 2696).
    pub page_size: u32,
}

impl Default for DirectoryLdapToml {
    fn default() -> Self {
        DirectoryLdapToml {
            servers: Vec::new(),
            bind_dn: None,
            password_file: None,
            tls: None,
            tls_verify: true,
            tls_ca_file: None,
            flavour: None,
            allow_plain_passwords: false,
            pool_size: 4,
            timeout_secs: 10,
            page_size: 500,
        }
    }
}

impl DirectoryLdapToml {
    /// The effective TLS mode (see [`DirectoryLdapToml::tls`]).
    pub fn tls_mode(&self) -> LdapTlsToml {
        self.tls.unwrap_or_else(|| {
            if !self.servers.is_empty()
                && self
                    .servers
                    .iter()
                    .all(|s| s.trim().starts_with("ldaps://"))
            {
                LdapTlsToml::Ldaps
            } else {
                LdapTlsToml::None
            }
        })
    }
}

/// One `[[providers.exec]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProviderConfig {
    /// Provider id (`providerSource`), e.g. `Ledger`.
    pub name: String,
    /// Program and arguments; the program is looked up on `PATH`.
    pub command: Vec<String>,
    /// Extra environment variables for the child.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory of the child; default the config file's folder (else the current
    /// one), so relative paths in `command` and `env` are relative to the file too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
    /// Longest a call may take, seconds.
    #[serde(default = "default_call_timeout")]
    pub call_timeout_secs: u64,
    /// Longest the start (spawn + describe) may take, seconds.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_secs: u64,
    /// How many times a crashed child may be restarted within `restart_window_secs`; past
    /// that, calls fail with a permanent error naming the last failure.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// The sliding window `max_restarts` counts restarts in, seconds.
    #[serde(default = "default_restart_window")]
    pub restart_window_secs: u64,
}

fn default_max_restarts() -> u32 {
    5
}

fn default_restart_window() -> u64 {
    60
}

fn default_call_timeout() -> u64 {
    30
}

fn default_start_timeout() -> u64 {
    10
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            store: StoreSetting::Sled,
            namespaces: PathBuf::from("namespaces"),
            namespaces_explicit: false,
            read_only: false,
            engine: EngineConfig::default(),
            journal: JournalConfig::default(),
            providers: ProvidersConfig::default(),
            retention: RetentionConfig::default(),
            retry: RetryConfig::default(),
            serve: ServeConfig::default(),
        }
    }
}

/// A secret value whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the configuration came from, for `config show` and messages.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// `PROVISIO_*` variables that were applied.
    pub env: Vec<String>,
    /// Flags that were applied.
    pub flags: Vec<String>,
}

/// The loaded configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective configuration (paths resolved, defaults filled in).
    pub config: Config,
    /// Its sources.
    pub sources: Sources,
}

/// Command-line values that override everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// `--data-dir DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--namespaces DIR`.
    pub namespaces: Option<PathBuf>,
    /// `run --max-parallel N`.
    pub max_parallel: Option<usize>,
    /// `run --step-timeout SECONDS`.
    pub step_timeout_secs: Option<u64>,
    /// `--wait-lock DURATION`.
    pub wait_lock: Option<Wait>,
    /// `--store sled|postgres://…` (parsed here: a refused value is shown masked).
    pub store: Option<String>,
    /// `serve --listen ADDR`.
    pub listen: Option<String>,
    /// `serve --workers N`.
    pub workers: Option<usize>,
    /// `serve --max-body-bytes N`.
    pub max_body_bytes: Option<usize>,
    /// `serve --shutdown-timeout DURATION`.
    pub shutdown_timeout: Option<Wait>,
}

/// One supported `PROVISIO_*` variable: name, config key, what it sets.
type EnvSetter = fn(&mut Config, &str) -> Result<(), String>;

/// The `PROVISIO_*` variables read (besides `PROVISIO_CONFIG`), with the key each sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("PROVISIO_DATA_DIR", "data_dir"),
    ("PROVISIO_NAMESPACES", "namespaces"),
    ("PROVISIO_SEAL_KEY", "the seal key itself (64 hex digits)"),
    ("PROVISIO_SEAL_KEY_FILE", "journal.seal_key_file"),
    ("PROVISIO_WAIT_LOCK", "journal.wait_lock"),
    ("PROVISIO_STORE", "store"),
    ("PROVISIO_CONNECT_RETRY", "journal.connect_retry"),
    ("PROVISIO_MAX_PARALLEL", "engine.max_parallel"),
    ("PROVISIO_STEP_TIMEOUT_SECS", "engine.step_timeout_secs"),
    ("PROVISIO_FILES_ROOT", "providers.filesystem.root"),
    ("PROVISIO_DNS_BACKEND", "providers.dns.backend"),
    ("PROVISIO_DNS_ZONE_DIR", "providers.dns.zone_dir"),
    ("PROVISIO_DNS_SERVER", "providers.dns.server"),
    ("PROVISIO_DNS_KEY_FILE", "providers.dns.key_file"),
    ("PROVISIO_DIRECTORY_BACKEND", "providers.directory.backend"),
    ("PROVISIO_DIRECTORY_BASE_DN", "providers.directory.base_dn"),
    (
        "PROVISIO_DIRECTORY_LDAP_SERVERS",
        "providers.directory.ldap.servers (comma-separated)",
    ),
    (
        "PROVISIO_DIRECTORY_LDAP_BIND_DN",
        "providers.directory.ldap.bind_dn",
    ),
    (
        "PROVISIO_DIRECTORY_LDAP_PASSWORD_FILE",
        "providers.directory.ldap.password_file",
    ),
    (
        "PROVISIO_DIRECTORY_LDAP_TLS",
        "providers.directory.ldap.tls",
    ),
    (
        "PROVISIO_DIRECTORY_LDAP_TLS_VERIFY",
        "providers.directory.ldap.tls_verify",
    ),
    (
        "PROVISIO_DIRECTORY_LDAP_TLS_CA_FILE",
        "providers.directory.ldap.tls_ca_file",
    ),
    (
        "PROVISIO_DIRECTORY_LDAP_FLAVOUR",
        "providers.directory.ldap.flavour",
    ),
    (
        "PROVISIO_DIRECTORY_LDAP_ALLOW_PLAIN_PASSWORDS",
        "providers.directory.ldap.allow_plain_passwords",
    ),
    (
        "PROVISIO_DIRECTORY_LDAP_POOL_SIZE",
        "providers.directory.ldap.pool_size",
    ),
    (
        "PROVISIO_DIRECTORY_LDAP_TIMEOUT_SECS",
        "providers.directory.ldap.timeout_secs",
    ),
    (
        "PROVISIO_DIRECTORY_LDAP_PAGE_SIZE",
        "providers.directory.ldap.page_size",
    ),
    ("PROVISIO_LISTEN", "serve.listen"),
    ("PROVISIO_WORKERS", "serve.workers"),
    ("PROVISIO_MAX_BODY_BYTES", "serve.max_body_bytes"),
    ("PROVISIO_SHUTDOWN_TIMEOUT", "serve.shutdown_timeout"),
    (
        "PROVISIO_RETAIN_SUCCESSFUL_RESPONSES",
        "serve.retain_successful_responses",
    ),
];

/// `[providers.directory.ldap]`, made (with its defaults) when a variable sets a key of it.
fn ldap_toml(c: &mut Config) -> &mut DirectoryLdapToml {
    c.providers
        .directory
        .ldap
        .get_or_insert_with(Default::default)
}

/// `true`/`false`/`1`/`0`/`yes`/`no` of a variable.
fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {v:?}")),
    }
}

fn env_setter(name: &str) -> Option<EnvSetter> {
    fn num<T: std::str::FromStr>(v: &str) -> Result<T, String> {
        v.trim()
            .parse()
            .map_err(|_| format!("expected a whole number, got {v:?}"))
    }
    Some(match name {
        "PROVISIO_DATA_DIR" => |c, v| {
            c.data_dir = v.into();
            Ok(())
        },
        "PROVISIO_NAMESPACES" => |c, v| {
            c.namespaces = v.into();
            c.namespaces_explicit = true;
            Ok(())
        },
        "PROVISIO_SEAL_KEY" => |c, v| {
            c.journal.seal_key = Some(Secret(v.trim().to_string()));
            Ok(())
        },
        "PROVISIO_SEAL_KEY_FILE" => |c, v| {
            c.journal.seal_key_file = Some(v.into());
            Ok(())
        },
        "PROVISIO_STORE" => |c, v| {
            c.store = v.parse()?;
            Ok(())
        },
        "PROVISIO_CONNECT_RETRY" => |c, v| {
            c.journal.connect_retry = ConnectRetry(v.parse()?);
            Ok(())
        },
        "PROVISIO_WAIT_LOCK" => |c, v| {
            c.journal.wait_lock = v.parse()?;
            Ok(())
        },
        "PROVISIO_MAX_PARALLEL" => |c, v| {
            c.engine.max_parallel = num(v)?;
            Ok(())
        },
        "PROVISIO_STEP_TIMEOUT_SECS" => |c, v| {
            c.engine.step_timeout_secs = num(v)?;
            Ok(())
        },
        "PROVISIO_FILES_ROOT" => |c, v| {
            c.providers.filesystem.root = Some(v.into());
            Ok(())
        },
        "PROVISIO_DNS_BACKEND" => |c, v| {
            c.providers.dns.backend = match v.trim() {
                "zonefile" => DnsBackendKind::Zonefile,
                "rfc2136" => DnsBackendKind::Rfc2136,
                _ => return Err(format!("expected `zonefile` or `rfc2136`, got {v:?}")),
            };
            Ok(())
        },
        "PROVISIO_DNS_ZONE_DIR" => |c, v| {
            c.providers.dns.zone_dir = Some(v.into());
            Ok(())
        },
        "PROVISIO_DNS_SERVER" => |c, v| {
            c.providers.dns.server = Some(v.trim().to_string());
            Ok(())
        },
        "PROVISIO_DNS_KEY_FILE" => |c, v| {
            c.providers.dns.key_file = Some(v.into());
            Ok(())
        },
        "PROVISIO_DIRECTORY_BACKEND" => |c, v| {
            c.providers.directory.backend = match v.trim() {
                "embedded" => DirectoryBackendKind::Embedded,
                "ldap" => DirectoryBackendKind::Ldap,
                _ => return Err(format!("expected `embedded` or `ldap`, got {v:?}")),
            };
            Ok(())
        },
        "PROVISIO_DIRECTORY_BASE_DN" => |c, v| {
            c.providers.directory.base_dn = v.trim().to_string();
            Ok(())
        },
        "PROVISIO_DIRECTORY_LDAP_SERVERS" => |c, v| {
            ldap_toml(c).servers = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            Ok(())
        },
        "PROVISIO_DIRECTORY_LDAP_BIND_DN" => |c, v| {
            ldap_toml(c).bind_dn = Some(v.trim().to_string());
            Ok(())
        },
        "PROVISIO_DIRECTORY_LDAP_PASSWORD_FILE" => |c, v| {
            ldap_toml(c).password_file = Some(v.into());
            Ok(())
        },
        "PROVISIO_DIRECTORY_LDAP_TLS" => |c, v| {
            ldap_toml(c).tls = Some(match v.trim() {
                "ldaps" => LdapTlsToml::Ldaps,
                "starttls" => LdapTlsToml::Starttls,
                "none" => LdapTlsToml::None,
                _ => return Err(format!("expected `ldaps`, `starttls` or `none`, got {v:?}")),
            });
            Ok(())
        },
        "PROVISIO_DIRECTORY_LDAP_TLS_VERIFY" => |c, v| {
            ldap_toml(c).tls_verify = parse_bool(v)?;
            Ok(())
        },
        "PROVISIO_DIRECTORY_LDAP_TLS_CA_FILE" => |c, v| {
            ldap_toml(c).tls_ca_file = Some(v.into());
            Ok(())
        },
        "PROVISIO_DIRECTORY_LDAP_FLAVOUR" => |c, v| {
            ldap_toml(c).flavour = Some(match v.trim() {
                "ad" => LdapFlavourToml::Ad,
                "openldap" => LdapFlavourToml::Openldap,
                _ => return Err(format!("expected `ad` or `openldap`, got {v:?}")),
            });
            Ok(())
        },
        "PROVISIO_DIRECTORY_LDAP_ALLOW_PLAIN_PASSWORDS" => |c, v| {
            ldap_toml(c).allow_plain_passwords = parse_bool(v)?;
            Ok(())
        },
        "PROVISIO_DIRECTORY_LDAP_POOL_SIZE" => |c, v| {
            ldap_toml(c).pool_size = v.trim().parse().map_err(|e| format!("{e}"))?;
            Ok(())
        },
        "PROVISIO_DIRECTORY_LDAP_TIMEOUT_SECS" => |c, v| {
            ldap_toml(c).timeout_secs = v.trim().parse().map_err(|e| format!("{e}"))?;
            Ok(())
        },
        "PROVISIO_DIRECTORY_LDAP_PAGE_SIZE" => |c, v| {
            ldap_toml(c).page_size = v.trim().parse().map_err(|e| format!("{e}"))?;
            Ok(())
        },
        "PROVISIO_LISTEN" => |c, v| {
            c.serve.listen = v.trim().to_string();
            Ok(())
        },
        "PROVISIO_WORKERS" => |c, v| {
            c.serve.workers = num(v)?;
            Ok(())
        },
        "PROVISIO_MAX_BODY_BYTES" => |c, v| {
            c.serve.max_body_bytes = num(v)?;
            Ok(())
        },
        "PROVISIO_SHUTDOWN_TIMEOUT" => |c, v| {
            c.serve.shutdown_timeout = v.parse()?;
            Ok(())
        },
        "PROVISIO_RETAIN_SUCCESSFUL_RESPONSES" => |c, v| {
            c.serve.retain_successful_responses = parse_bool(v)?;
            Ok(())
        },
        _ => return None,
    })
}

impl Config {
    /// Loads the layers: defaults, the file (`--config`, else `PROVISIO_CONFIG`, else
    /// `./provisio.toml` when present), the environment (`env` gives each variable), then
    /// `flags`.
    pub fn load(flags: &Overrides, env: impl Fn(&str) -> Option<String>) -> Result<Loaded> {
        let cwd = std::env::current_dir().context("cannot read the working directory")?;
        let mut sources = Sources::default();
        let file = match (&flags.config_file, env("PROVISIO_CONFIG")) {
            (Some(f), _) => Some((f.clone(), true)),
            (None, Some(f)) if !f.is_empty() => Some((PathBuf::from(f), true)),
            _ => {
                let default = PathBuf::from(DEFAULT_FILE);
                default.is_file().then_some((default, false))
            }
        };
        let mut config = match &file {
            Some((path, _)) => {
                let path = absolute(&cwd, path);
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "cannot read configuration file `{}`\n  hint: pass --config FILE (or set PROVISIO_CONFIG) to an existing file, or remove it to use the defaults",
                        path.display()
                    )
                })?;
                let mut config = Self::parse(&text, &path)?;
                config.namespaces_explicit = toml::from_str::<toml::Table>(&text)
                    .is_ok_and(|t| t.contains_key("namespaces"));
                sources.file = Some(path);
                config
            }
            None => Config::default(),
        };
        let base = sources
            .file
            .as_ref()
            .and_then(|f| f.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| cwd.clone());
        config.resolve_file_paths(&base);
        for (name, instead) in REPLACED_ENV {
            if env(name).is_some() {
                bail!("environment variable {name} is no longer read: {instead} (docs/configuration.md, \"Retries\")");
            }
        }
        for (name, key) in ENV_VARS {
            let Some(value) = env(name) else { continue };
            let Some(set) = env_setter(name) else {
                continue;
            };
            set(&mut config, &value)
                .map_err(|e| anyhow!("environment variable {name} (sets {key}): {e}"))?;
            sources.env.push((*name).to_string());
        }
        if let Some(d) = &flags.data_dir {
            config.data_dir = d.clone();
            sources.flags.push("--data-dir".into());
        }
        if let Some(n) = &flags.namespaces {
            config.namespaces = n.clone();
            config.namespaces_explicit = true;
            sources.flags.push("--namespaces".into());
        }
        if let Some(n) = flags.max_parallel {
            config.engine.max_parallel = n;
            sources.flags.push("--max-parallel".into());
        }
        if let Some(w) = flags.wait_lock {
            config.journal.wait_lock = w;
            sources.flags.push("--wait-lock".into());
        }
        if let Some(st) = &flags.store {
            config.store = st.parse().map_err(|e| anyhow!("--store: {e}"))?;
            sources.flags.push("--store".into());
        }
        if let Some(s) = flags.step_timeout_secs {
            config.engine.step_timeout_secs = s;
            sources.flags.push("--step-timeout".into());
        }
        if let Some(l) = &flags.listen {
            config.serve.listen = l.clone();
            sources.flags.push("--listen".into());
        }
        if let Some(w) = flags.workers {
            config.serve.workers = w;
            sources.flags.push("--workers".into());
        }
        if let Some(b) = flags.max_body_bytes {
            config.serve.max_body_bytes = b;
            sources.flags.push("--max-body-bytes".into());
        }
        if let Some(t) = flags.shutdown_timeout {
            config.serve.shutdown_timeout = t;
            sources.flags.push("--shutdown-timeout".into());
        }
        // Environment and flag paths are relative to the working directory.
        config.resolve_paths(&cwd);
        config.fill_defaults();
        config.check(sources.file.as_deref())?;
        Ok(Loaded { config, sources })
    }

    /// Parses a file's text; errors name the file, line, column and key.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        toml::from_str::<Config>(text).map_err(|e| {
            let message = e.message().trim_end().to_string();
            match e.span() {
                Some(span) => {
                    let (line, col) = line_col(text, span.start);
                    let dotted = key_at(text, span.start);
                    let key = dotted
                        .as_ref()
                        .map(|k| format!(" (key `{k}`)"))
                        .unwrap_or_default();
                    let hint = REPLACED_KEYS
                        .iter()
                        .find(|(k, _)| dotted.as_deref() == Some(*k))
                        .map_or("every key is documented in docs/configuration.md", |(_, h)| *h);
                    let source_line = text.lines().nth(line - 1).unwrap_or_default();
                    anyhow!(
                        "{}:{line}:{col}: invalid configuration{key}: {message}\n  {line} | {source_line}\n  hint: {hint}",
                        path.display()
                    )
                }
                None => anyhow!(
                    "{}: invalid configuration: {message}\n  hint: every key is documented in docs/configuration.md",
                    path.display()
                ),
            }
        })
    }

    /// Makes the file's relative paths relative to its folder.
    fn resolve_file_paths(&mut self, base: &Path) {
        self.resolve_paths(base);
        for e in &mut self.providers.exec {
            e.working_dir = Some(absolute(base, e.working_dir.as_deref().unwrap_or(base)));
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| *p = absolute(base, p);
        fix(&mut self.data_dir);
        fix(&mut self.namespaces);
        for p in [
            &mut self.journal.seal_key_file,
            &mut self.providers.filesystem.root,
            &mut self.providers.dns.zone_dir,
            &mut self.providers.dns.key_file,
            &mut self.providers.exchange.mail_root,
            &mut self.serve.tls_cert,
            &mut self.serve.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        for e in &mut self.providers.exec {
            if let Some(w) = &mut e.working_dir {
                fix(w);
            }
        }
        if let Some(l) = &mut self.providers.directory.ldap {
            for p in [&mut l.password_file, &mut l.tls_ca_file]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
        if let Some(r) = &mut self.providers.dns.rndc {
            fix(&mut r.zone_dir);
            for p in [&mut r.program, &mut r.key_file, &mut r.config_file]
                .into_iter()
                .flatten()
            {
                // A bare program name is looked up on PATH, not next to the file.
                if p.components().count() > 1 || p.is_absolute() {
                    fix(p);
                }
            }
        }
    }

    fn fill_defaults(&mut self) {
        let d = self.data_dir.clone();
        self.journal
            .seal_key_file
            .get_or_insert_with(|| d.join("seal.key"));
        self.providers
            .filesystem
            .root
            .get_or_insert_with(|| d.join("files"));
        if self.providers.dns.backend == DnsBackendKind::Zonefile {
            self.providers
                .dns
                .zone_dir
                .get_or_insert_with(|| d.join("zones"));
        }
    }

    /// Checks what the types cannot: required keys of the chosen backend, names, ranges.
    fn check(&self, file: Option<&Path>) -> Result<()> {
        let at = |key: &str| match file {
            Some(f) => format!("{}: key `{key}`", f.display()),
            None => format!("key `{key}`"),
        };
        if self.engine.max_parallel == 0 {
            bail!("{}: must be at least 1", at("engine.max_parallel"));
        }
        if self.engine.step_timeout_secs == 0 {
            bail!(
                "{}: must be at least 1 second",
                at("engine.step_timeout_secs")
            );
        }
        self.check_serve(&at)?;
        let r = &self.retention;
        let shorter = match (r.audit.0, r.transactions.0) {
            (Some(_), None) => true,
            (Some(a), Some(t)) => a < t,
            (None, _) => false,
        };
        if shorter {
            bail!(
                "{}: audit entries must be kept at least as long as transactions (retention.transactions = \"{}\")",
                at("retention.audit"),
                r.transactions
            );
        }
        let dir = &self.providers.directory;
        if let Err(e) = provisio_providers::directory::Dn::parse(&dir.base_dn) {
            bail!("{}: {e}", at("providers.directory.base_dn"));
        }
        if dir.base_dn.trim().is_empty() {
            bail!(
                "{}: must name the directory's base (e.g. \"DC=provisio,DC=local\")",
                at("providers.directory.base_dn")
            );
        }
        if dir.backend == DirectoryBackendKind::Ldap {
            let Some(l) = &dir.ldap else {
                bail!(
                    "{}: required with backend = \"ldap\" (servers, bind_dn, password_file)",
                    at("providers.directory.ldap")
                );
            };
            if l.servers.is_empty() {
                bail!(
                    "{}: name at least one server (e.g. [\"ldaps://dc1.example.com\"])",
                    at("providers.directory.ldap.servers")
                );
            }
            for s in &l.servers {
                let t = s.trim();
                if t.is_empty()
                    || (t.contains("://")
                        && !t.starts_with("ldap://")
                        && !t.starts_with("ldaps://"))
                {
                    bail!(
                        "{}: {s:?} is not an ldap:// or ldaps:// URL or a host name",
                        at("providers.directory.ldap.servers")
                    );
                }
            }
            if l.bind_dn.as_deref().is_none_or(|d| d.trim().is_empty()) {
                bail!(
                    "{}: required with backend = \"ldap\" (the service account's DN)",
                    at("providers.directory.ldap.bind_dn")
                );
            }
            if l.password_file.is_none() {
                bail!(
                    "{}: required with backend = \"ldap\" (a file holding the service account's password)",
                    at("providers.directory.ldap.password_file")
                );
            }
            if l.pool_size == 0 {
                bail!(
                    "{}: must be at least 1",
                    at("providers.directory.ldap.pool_size")
                );
            }
            if l.timeout_secs == 0 {
                bail!(
                    "{}: must be at least 1 second",
                    at("providers.directory.ldap.timeout_secs")
                );
            }
            if l.page_size == 0 || l.page_size > i32::MAX as u32 {
                bail!(
                    "{}: must be between 1 and 2147483647",
                    at("providers.directory.ldap.page_size")
                );
            }
        }
        let dns = &self.providers.dns;
        if dns.backend == DnsBackendKind::Rfc2136 {
            match &dns.server {
                None => bail!(
                    "{}: required with backend = \"rfc2136\" (the authoritative server, e.g. \"127.0.0.1:53\")",
                    at("providers.dns.server")
                ),
                Some(s) if s.parse::<std::net::SocketAddr>().is_err() => bail!(
                    "{}: {s:?} is not IP:PORT (e.g. \"127.0.0.1:53\")",
                    at("providers.dns.server")
                ),
                Some(_) => {}
            }
            if dns.key_file.is_none() {
                bail!(
                    "{}: required with backend = \"rfc2136\" (a BIND key file with the TSIG key)",
                    at("providers.dns.key_file")
                );
            }
            if dns.timeout_secs == 0 {
                bail!(
                    "{}: must be at least 1 second",
                    at("providers.dns.timeout_secs")
                );
            }
        }
        if let Some(r) = &dns.rndc {
            if dns.backend != DnsBackendKind::Rfc2136 {
                bail!(
                    "{}: only used with backend = \"rfc2136\" (the zonefile backend creates zone files itself)",
                    at("providers.dns.rndc")
                );
            }
            if r.timeout_secs == 0 {
                bail!(
                    "{}: must be at least 1 second",
                    at("providers.dns.rndc.timeout_secs")
                );
            }
            if let Some(d) = &r.server_zone_dir {
                if !d.is_absolute() {
                    bail!(
                        "{}: {:?} must be an absolute path (the folder as named sees it)",
                        at("providers.dns.rndc.server_zone_dir"),
                        d.display().to_string()
                    );
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, e) in self.providers.exec.iter().enumerate() {
            let key = |k: &str| at(&format!("providers.exec[{i}].{k}"));
            if e.name.trim().is_empty() {
                bail!("{}: must not be empty", key("name"));
            }
            if matches!(e.name.as_str(), "DNS" | "Filesystem" | "Active Directory")
                || BOOKKEEPING.contains(&e.name.as_str())
            {
                bail!(
                    "{}: `{}` is an embedded provider's name; pick another",
                    key("name"),
                    e.name
                );
            }
            if !names.insert(e.name.clone()) {
                bail!("{}: provider `{}` is configured twice", key("name"), e.name);
            }
            if e.command.first().is_none_or(|c| c.trim().is_empty()) {
                bail!(
                    "{}: give the program and its arguments, e.g. [\"python3\", \"ledger.py\"]",
                    key("command")
                );
            }
            if e.call_timeout_secs == 0 || e.start_timeout_secs == 0 {
                bail!(
                    "{}: timeouts must be at least 1 second",
                    key("call_timeout_secs")
                );
            }
            if e.restart_window_secs == 0 {
                bail!(
                    "{}: the restart window must be at least 1 second",
                    key("restart_window_secs")
                );
            }
        }
        let mut providers = vec![
            "DNS".to_string(),
            "Filesystem".to_string(),
            "Active Directory".to_string(),
        ];
        providers.extend(BOOKKEEPING.iter().map(|n| n.to_string()));
        providers.extend(self.providers.exec.iter().map(|e| e.name.clone()));
        for (name, n) in &self.engine.provider_limits {
            if *n == 0 {
                bail!(
                    "{}: must be at least 1",
                    at(&format!("engine.provider_limits.{}", toml_key(name)))
                );
            }
            if !providers.contains(name) && name != "Error" {
                bail!(
                    "{}: no provider `{name}` is configured; the providers are {}",
                    at(&format!("engine.provider_limits.{}", toml_key(name))),
                    providers.join(", ")
                );
            }
        }
        self.retry.check(&at, &providers)?;
        Ok(())
    }

    fn check_serve(&self, at: &dyn Fn(&str) -> String) -> Result<()> {
        let s = &self.serve;
        if s.listen.parse::<std::net::SocketAddr>().is_err() {
            bail!(
                "{}: {:?} is not IP:PORT (e.g. \"127.0.0.1:8750\"; also --listen, PROVISIO_LISTEN)",
                at("serve.listen"),
                s.listen
            );
        }
        if s.workers == 0 {
            bail!("{}: must be at least 1", at("serve.workers"));
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            bail!(
                "{}: serve.tls_cert and serve.tls_key go together (a PEM certificate chain and its key)",
                at(if s.tls_cert.is_some() { "serve.tls_key" } else { "serve.tls_cert" })
            );
        }
        if s.max_body_bytes < 1024 {
            bail!("{}: must be at least 1024", at("serve.max_body_bytes"));
        }
        if s.max_attempts == 0 {
            bail!("{}: must be at least 1", at("serve.max_attempts"));
        }
        if s.lease.0 < std::time::Duration::from_secs(1) {
            bail!("{}: must be at least \"1s\"", at("serve.lease"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in s.tokens.iter().enumerate() {
            let key = |k: &str| at(&format!("serve.tokens[{i}].{k}"));
            if t.subject.trim().is_empty() || t.subject.contains('\0') {
                bail!(
                    "{}: must name the client (e.g. \"billing\")",
                    key("subject")
                );
            }
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!(
                    "{}: must be the token's SHA-256 as 64 hex digits, never the token itself\n  hint: `provisio token hash` prints it",
                    key("sha256")
                );
            }
            if !seen.insert(t.sha256.to_ascii_lowercase()) {
                bail!("{}: the same token is listed twice", key("sha256"));
            }
        }
        for (i, a) in s.acl.iter().enumerate() {
            let key = |k: &str| at(&format!("serve.acl[{i}].{k}"));
            if a.namespace.trim().is_empty() {
                bail!("{}: must name a namespace", key("namespace"));
            }
            if a.procedure.is_none() && !a.inherit {
                bail!(
                    "{}: only a procedure's entry can stop inheriting the namespace's",
                    key("inherit")
                );
            }
            for (field, list) in [
                ("execute", &a.execute),
                ("read", &a.read),
                ("deny", &a.deny),
            ] {
                if let Some(bad) = list.iter().find(|w| w.trim().is_empty() || *w == "group:") {
                    bail!(
                        "{}: {bad:?} is neither a subject nor `group:NAME`",
                        key(field)
                    );
                }
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets redacted, with comments saying where
    /// it came from.
    pub fn show(&self, sources: &Sources) -> Result<String> {
        let mut shown = self.clone();
        shown.retry = self.retry.shown();
        for e in &mut shown.providers.exec {
            for (k, v) in e.env.iter_mut() {
                if is_secret_name(k) {
                    *v = "<redacted>".into();
                }
            }
        }
        let body = toml::to_string_pretty(&shown).context("cannot render the configuration")?;
        let mut out = String::from(
            "# Effective Provisio configuration (defaults < file < PROVISIO_* < flags).\n",
        );
        match &sources.file {
            Some(f) => out.push_str(&format!("# file: {}\n", f.display())),
            None => {
                out.push_str("# file: none (no --config, PROVISIO_CONFIG or ./provisio.toml)\n")
            }
        }
        if !sources.env.is_empty() {
            out.push_str(&format!("# environment: {}\n", sources.env.join(", ")));
        }
        if !sources.flags.is_empty() {
            out.push_str(&format!("# flags: {}\n", sources.flags.join(", ")));
        }
        let key_file = self
            .journal
            .seal_key_file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        match &self.journal.seal_key {
            Some(_) => out.push_str(
                "# seal key: from PROVISIO_SEAL_KEY (redacted); journal.seal_key_file is not read\n",
            ),
            None => out.push_str(&format!(
                "# seal key: read from {key_file} (created 0600 on first use if missing; contents never shown)\n"
            )),
        }
        let files_root = self
            .providers
            .filesystem
            .root
            .clone()
            .unwrap_or_else(|| self.data_dir.join("files"));
        out.push_str(&format!(
            "# filesystem project quotas: {}\n",
            provisio_providers::filesystem::project_quota_support(&files_root)
        ));
        out.push('\n');
        out.push_str(&body);
        Ok(out)
    }
}

/// Environment variable names whose values `config show` hides.
fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["SECRET", "PASSWORD", "PASSWD", "TOKEN", "KEY", "CREDENTIAL"]
        .iter()
        .any(|w| n.contains(w))
}

fn absolute(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The dotted key at a byte offset: the table header above it plus the key on its line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default();
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let trimmed = line.trim();
    if trimmed.starts_with('[') {
        return Some(
            trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string(),
        );
    }
    let key = match line.find('=') {
        Some(eq) => line[..eq].trim(),
        None => trimmed,
    };
    let key = key.trim_matches('"');
    if key.is_empty() {
        return table;
    }
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/x/provisio.toml"))
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../provisio.example.toml");
        let c = parse(text).expect("example parses");
        assert_eq!(c.engine.max_parallel, 16);
        assert_eq!(c.providers.exec.len(), 1);
        assert_eq!(c.providers.exec[0].name, "Ledger");
        assert_eq!(c.providers.exec[0].max_restarts, 5);
        assert_eq!(c.providers.exec[0].restart_window_secs, 60);
        let retry = c.retry.options();
        assert_eq!(
            retry.default,
            RetryPolicies::default(),
            "the defaults, spelt out"
        );
        assert_eq!(
            retry.policy("DNS", RetryUse::Undo).budget,
            std::time::Duration::from_secs(300)
        );
    }

    #[test]
    fn exec_restart_limits_are_read_and_checked() {
        let table = "[[providers.exec]]\nname = \"L\"\ncommand = [\"l\"]\n";
        let c = parse(&format!(
            "{table}max_restarts = 0\nrestart_window_secs = 5\n"
        ))
        .expect("parses");
        assert_eq!(c.providers.exec[0].max_restarts, 0);
        assert_eq!(c.providers.exec[0].restart_window_secs, 5);
        let zero = parse(&format!("{table}restart_window_secs = 0\n")).expect("parses");
        let e = zero
            .check(Some(Path::new("/x/provisio.toml")))
            .expect_err("zero window");
        let m = format!("{e:#}");
        assert!(m.contains("providers.exec[0].restart_window_secs"), "{m}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("data_dir = \"d\"\n[engine]\nmax_paralel = 3\n").expect_err("unknown key");
        let m = format!("{e:#}");
        assert!(m.contains("/x/provisio.toml:3:1"), "{m}");
        assert!(m.contains("engine.max_paralel"), "{m}");
    }

    #[test]
    fn wrong_type_names_key() {
        let e = parse("[engine]\nmax_parallel = \"many\"\n").expect_err("wrong type");
        let m = format!("{e:#}");
        assert!(m.contains("provisio.toml:2:"), "{m}");
        assert!(m.contains("engine.max_parallel"), "{m}");
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("p.toml");
        std::fs::write(
            &file,
            "data_dir = \"state\"\n[engine]\nstep_timeout_secs = 7\nmax_parallel = 4\n",
        )
        .expect("write");
        let flags = Overrides {
            config_file: Some(file),
            max_parallel: Some(9),
            ..Overrides::default()
        };
        let env = |k: &str| (k == "PROVISIO_STEP_TIMEOUT_SECS").then(|| "5".to_string());
        let l = Config::load(&flags, env).expect("load");
        assert_eq!(l.config.data_dir, dir.path().join("state"));
        assert_eq!(l.config.engine.step_timeout_secs, 5);
        assert_eq!(l.config.engine.max_parallel, 9);
        assert_eq!(
            l.config.providers.filesystem.root,
            Some(dir.path().join("state/files"))
        );
    }

    fn checked(text: &str) -> String {
        let c = parse(text).expect("parses");
        let e = c
            .check(Some(Path::new("/x/provisio.toml")))
            .expect_err("refused");
        format!("{e:#}")
    }

    #[test]
    fn retry_policies_layer_defaults_global_and_provider_keys() {
        use std::time::Duration;
        let c = parse(
            "[retry.undo]\nbudget = \"2m\"\ninitial = \"200ms\"\nnever_retry = [\"0x80070005\", 0x8007000E]\n\
             [retry.calls]\nmax_attempts = 0\n\
             [retry.providers.DNS.undo]\nbudget = \"5m\"\nmax_attempts = 40\n\
             [[providers.exec]]\nname = \"Ledger\"\ncommand = [\"l\"]\n\
             [retry.providers.Ledger.settle]\njitter = 0.0\n",
        )
        .expect("parses");
        c.check(None).expect("valid");
        let o = c.retry.options();
        let undo = o.policy("Filesystem", RetryUse::Undo);
        assert_eq!(undo.budget, Duration::from_secs(120));
        assert_eq!(undo.initial, Duration::from_millis(200));
        assert_eq!(
            undo.max_interval,
            RetryPolicy::undo_default().max_interval,
            "unset: the engine's default"
        );
        assert_eq!(
            undo.never_retry.iter().copied().collect::<Vec<_>>(),
            [0x8007_0005, 0x8007_000E]
        );
        assert_eq!(o.policy("Filesystem", RetryUse::Calls).max_attempts, None);
        // The provider's own keys beat the global ones; the rest is inherited from them.
        let dns = o.policy("DNS", RetryUse::Undo);
        assert_eq!(dns.budget, Duration::from_secs(300));
        assert_eq!(dns.max_attempts, Some(40));
        assert_eq!(dns.initial, Duration::from_millis(200));
        assert_eq!(dns.never_retry.len(), 2);
        assert_eq!(
            o.policy("DNS", RetryUse::Calls),
            o.policy("X", RetryUse::Calls)
        );
        assert_eq!(o.policy("Ledger", RetryUse::Settle).jitter, 0.0);
        assert_eq!(
            o.policy("Ledger", RetryUse::Undo).budget,
            Duration::from_secs(120)
        );
        // Nothing written: the engine's defaults.
        assert_eq!(Config::default().retry.options(), RetryOptions::default());
    }

    #[test]
    fn config_show_prints_the_effective_retry_policies() {
        let c =
            parse("[retry.undo]\nbudget = \"90s\"\n[retry.providers.DNS.undo]\nbudget = \"5m\"\n")
                .expect("parses");
        let text = c.show(&Sources::default()).expect("show");
        let t: toml::Table =
            toml::from_str(text.split_once("\n\n").expect("body").1).expect("show prints TOML");
        let retry = &t["retry"];
        assert_eq!(retry["undo"]["budget"].as_str(), Some("1m 30s"), "{text}");
        assert_eq!(retry["undo"]["initial"].as_str(), Some("100ms"), "{text}");
        assert_eq!(
            retry["undo"]["max_attempts"].as_integer(),
            Some(0),
            "{text}"
        );
        assert_eq!(
            retry["calls"]["max_attempts"].as_integer(),
            Some(3),
            "{text}"
        );
        assert_eq!(retry["settle"]["budget"].as_str(), Some("1m"), "{text}");
        let dns = &retry["providers"]["DNS"];
        assert_eq!(dns["undo"]["budget"].as_str(), Some("5m"), "{text}");
        assert_eq!(dns["undo"]["initial"].as_str(), Some("100ms"), "{text}");
        assert!(dns.get("calls").is_none(), "only its own uses: {text}");
        // What show prints reads back as the same policies.
        let again = parse(text.split_once("\n\n").expect("body").1).expect("re-reads");
        assert_eq!(again.retry.options(), c.retry.options());
    }

    #[test]
    fn retry_errors_name_the_key() {
        for (text, key) in [
            ("[retry.undo]\nbudgett = \"5s\"\n", "retry.undo.budgett"),
            ("[retry.undo]\nbudget = \"soon\"\n", "retry.undo.budget"),
            (
                "[retry.calls]\nnever_retry = [\"E_ACCESS\"]\n",
                "retry.calls.never_retry",
            ),
            (
                "[retry.calls]\nnever_retry = [0x1FFFFFFFF]\n",
                "retry.calls.never_retry",
            ),
            ("[retry.sometimes]\nbudget = \"5s\"\n", "retry.sometimes"),
            (
                "[retry.providers.DNS.undoo]\nbudget = \"5s\"\n",
                "retry.providers.DNS.undoo",
            ),
            (
                "[retry.providers.DNS.undo]\nmax_attempts = -1\n",
                "retry.providers.DNS.undo.max_attempts",
            ),
        ] {
            let e = parse(text).expect_err(text);
            let m = format!("{e:#}");
            assert!(m.contains(&format!("(key `{key}`)")), "{text}: {m}");
            assert!(m.contains("/x/provisio.toml:"), "{m}");
        }
        for (text, key, says) in [
            ("[retry.undo]\nmultiplier = 0.5\n", "retry.undo.multiplier", "between 1"),
            ("[retry.settle]\njitter = 1.5\n", "retry.settle.jitter", "between 0"),
            ("[retry.calls]\ninitial = \"0s\"\n", "retry.calls.initial", "1ms"),
            ("[retry.undo]\nmax_interval = \"50ms\"\n", "retry.undo.max_interval", "shorter than initial"),
            (
                "[retry.providers.DSN.undo]\nbudget = \"5s\"\n",
                "retry.providers.DSN",
                "the providers are `DNS`, `Filesystem`",
            ),
            (
                "[retry.providers.\"Web Ledger\".calls]\nmultiplier = 1000.0\n[[providers.exec]]\nname = \"Web Ledger\"\ncommand = [\"l\"]\n",
                "retry.providers.\"Web Ledger\".calls.multiplier",
                "between 1",
            ),
        ] {
            let m = checked(text);
            assert!(m.contains(&format!("key `{key}`")), "{text}: {m}");
            assert!(m.contains(says), "{text}: {m}");
        }
    }

    #[test]
    fn the_replaced_engine_retry_keys_say_what_to_write_instead() {
        let e = parse("[engine]\nundo_attempts = 3\n").expect_err("replaced");
        let m = format!("{e:#}");
        assert!(m.contains("engine.undo_attempts"), "{m}");
        assert!(m.contains("[retry.undo]"), "{m}");
        let e = parse("[engine]\nretries = 2\n").expect_err("replaced");
        assert!(format!("{e:#}").contains("[retry.calls]"), "{e:#}");
        let dir = tempfile::tempdir().expect("tmp");
        let flags = Overrides {
            config_file: Some(dir.path().join("p.toml")),
            ..Overrides::default()
        };
        std::fs::write(dir.path().join("p.toml"), "").expect("write");
        let env = |k: &str| (k == "PROVISIO_UNDO_ATTEMPTS").then(|| "5".to_string());
        let e = Config::load(&flags, env).expect_err("replaced variable");
        let m = format!("{e:#}");
        assert!(m.contains("PROVISIO_UNDO_ATTEMPTS"), "{m}");
        assert!(m.contains("[retry.undo]"), "{m}");
    }

    #[test]
    fn wait_lock_reads_durations_and_bare_seconds() {
        let c = parse("[journal]\nwait_lock = \"1m 30s\"\n").expect("parse");
        assert_eq!(c.journal.wait_lock.0, std::time::Duration::from_secs(90));
        assert_eq!(
            "7".parse::<Wait>(),
            Ok(Wait(std::time::Duration::from_secs(7)))
        );
        assert_eq!(
            "250ms".parse::<Wait>(),
            Ok(Wait(std::time::Duration::from_millis(250)))
        );
        let e = "soon".parse::<Wait>().expect_err("not a duration");
        assert!(e.contains("\"30s\""), "{e}");
        assert_eq!(Config::default().journal.wait_lock.to_string(), "10s");
    }

    #[test]
    fn retention_keys_read_check_and_show() {
        let c = parse("[retention]\ntransactions = \"7d\"\nmax_transactions = 100\naudit = \"forever\"\nprovider_state = \"12h\"\n")
            .expect("parses");
        assert_eq!(
            c.retention.transactions.0,
            Some(std::time::Duration::from_secs(7 * 86_400))
        );
        assert_eq!(c.retention.audit.0, None);
        assert_eq!(
            c.retention.provider_state.0,
            Some(std::time::Duration::from_secs(12 * 3600))
        );
        let p = c.retention.policy(None, None);
        assert_eq!(p.max_count, Some(100));
        assert_eq!(c.retention.policy(Some(Keep(None)), Some(0)).max_age, None);
        assert!(c.check(None).is_ok());
        let text = c.show(&Sources::default()).expect("show");
        assert!(text.contains("[retention]"), "{text}");
        assert!(text.contains("transactions = \"7days\""), "{text}");
        assert!(text.contains("audit = \"forever\""), "{text}");

        let short = parse("[retention]\ntransactions = \"30d\"\naudit = \"1d\"\n").expect("parses");
        let e = short
            .check(Some(Path::new("/x/provisio.toml")))
            .expect_err("audit shorter");
        assert!(format!("{e:#}").contains("retention.audit"), "{e:#}");
        let e = parse("[retention]\ntransactions = \"soon\"\n").expect_err("bad time");
        assert!(format!("{e:#}").contains("retention.transactions"), "{e:#}");
    }

    #[test]
    fn show_redacts_the_seal_key() {
        let mut c = Config::default();
        c.journal.seal_key = Some(Secret("ab".repeat(32)));
        let text = c.show(&Sources::default()).expect("show");
        assert!(!text.contains(&"ab".repeat(32)));
        assert!(text.contains("PROVISIO_SEAL_KEY"));
        assert!(format!("{c:?}").contains("<redacted>"));
    }
}
