//! Start-up: loads the configuration, then the namespace folder and the providers it
//! configures into an engine.

use crate::cli::{Cli, Command};
use crate::config::{
    Config, DirectoryBackendKind, DirectoryLdapToml, DnsBackendKind, LdapFlavourToml, LdapTlsToml,
    Loaded, Overrides, StoreSetting,
};
use anyhow::{bail, Context, Result};
use provisio_engine::model::{Format, Namespace, RequestDocument, SourceRef};
use provisio_engine::provider::ProviderRegistry;
use provisio_engine::request::{self, ParseError};
use provisio_engine::txn::{DurableJournal, SealKey};
use provisio_engine::Catalog;
use provisio_engine::{Engine, EngineOptions};
use provisio_engine::{PgOptions, PgStore, SledStore, Space, Store, StoreError};
use provisio_providers::directory::ldap::{Flavour, LdapBackend, LdapSettings, TlsMode};
use provisio_providers::directory::{DirectoryProvider, Dn};
use provisio_providers::dns::{DnsProvider, Rfc2136Config, RndcConfig};
use provisio_providers::error::ErrorProvider;
use provisio_providers::exchange::{ExchangeConfig, ExchangeProvider};
use provisio_providers::exec::{ExecConfig, ExecProvider};
use provisio_providers::filesystem::{FilesystemOptions, FilesystemProvider, IdRanges};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The effective configuration for this command line (file, `PROVISIO_*`, flags).
pub fn config(cli: &Cli) -> Result<Loaded> {
    let (max_parallel, step_timeout_secs) = match &cli.command {
        Command::Run(args) => (args.max_parallel, args.step_timeout),
        _ => (None, None),
    };
    let serve = match &cli.command {
        Command::Serve(args) => Some(args),
        _ => None,
    };
    let flags = Overrides {
        listen: serve.and_then(|s| s.listen.clone()),
        workers: match &cli.command {
            Command::Worker(w) => w.workers,
            _ => serve.and_then(|s| s.workers),
        },
        max_body_bytes: serve.and_then(|s| s.max_body_bytes),
        shutdown_timeout: serve.and_then(|s| s.shutdown_timeout),
        config_file: cli.global.config.clone(),
        data_dir: cli.global.data_dir.clone(),
        namespaces: cli.global.namespaces.clone(),
        max_parallel,
        step_timeout_secs,
        wait_lock: cli.global.wait_lock,
        store: cli.global.store.clone(),
    };
    Config::load(&flags, |name| std::env::var(name).ok())
}

/// The providers the configuration names: `Filesystem`, `DNS` (zone files or RFC 2136) and
/// every `[[providers.exec]]` program, started here; the directory and the mail provider
/// (`Exchange`, files under `[providers.exchange]`); plus `Error` (namespace
/// `Error Provider`), `ExchangeResourceManager` and `ManagedPlans`, which need no
/// configuration.
pub async fn registry(config: &Config) -> Result<ProviderRegistry> {
    let mut registry = ProviderRegistry::new();
    let p = &config.providers;
    let root = p
        .filesystem
        .root
        .clone()
        .unwrap_or_else(|| config.data_dir.join("files"));
    let ids = |key: &str, list: &Option<Vec<String>>| -> Result<Option<IdRanges>> {
        list.as_ref()
            .map(|l| IdRanges::parse(l))
            .transpose()
            .with_context(|| {
                format!("providers.filesystem.{key}: each entry is a numeric id or an inclusive range of ids")
            })
    };
    let options = FilesystemOptions {
        allow_special_modes: p.filesystem.allow_special_modes,
        allowed_uids: ids("allowed_uids", &p.filesystem.allowed_uids)?,
        allowed_gids: ids("allowed_gids", &p.filesystem.allowed_gids)?,
    };
    let fs = FilesystemProvider::with_options(root.clone(), options).with_context(|| {
        format!(
            "providers.filesystem: cannot set up the Filesystem provider under `{}`",
            root.display()
        )
    })?;
    registry.register(Arc::new(fs));
    let dns = match p.dns.backend {
        DnsBackendKind::Zonefile => {
            let dir = p
                .dns
                .zone_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("zones"));
            DnsProvider::zonefile(dir.clone()).with_context(|| {
                format!(
                    "providers.dns: cannot use zone folder `{}` (backend zonefile)",
                    dir.display()
                )
            })?
        }
        DnsBackendKind::Rfc2136 => {
            let (Some(server), Some(key_file)) = (&p.dns.server, &p.dns.key_file) else {
                bail!("providers.dns: backend rfc2136 needs `server` and `key_file`");
            };
            let server = server
                .parse()
                .with_context(|| format!("providers.dns.server: {server:?} is not IP:PORT"))?;
            let mut rfc = Rfc2136Config::from_key_file(server, key_file).with_context(|| {
                format!(
                    "providers.dns.key_file: cannot read the TSIG key from `{}`",
                    key_file.display()
                )
            })?;
            rfc.timeout = Duration::from_secs(p.dns.timeout_secs.max(1));
            // The previous RRsets kept for settling changes a crash left in doubt.
            rfc.state_dir = Some(config.data_dir.join("rfc2136"));
            if let Some(r) = &p.dns.rndc {
                let mut rndc = RndcConfig::new(r.zone_dir.clone());
                if let Some(program) = &r.program {
                    rndc.program.clone_from(program);
                }
                rndc.server.clone_from(&r.server);
                rndc.port = r.port;
                rndc.key_file.clone_from(&r.key_file);
                rndc.config_file.clone_from(&r.config_file);
                rndc.server_zone_dir.clone_from(&r.server_zone_dir);
                rndc.zone_options.clone_from(&r.zone_options);
                rndc.timeout = Duration::from_secs(r.timeout_secs.max(1));
                rfc.rndc = Some(rndc);
            }
            DnsProvider::rfc2136(rfc)
                .with_context(|| format!("providers.dns: cannot use DNS server {server}"))?
        }
    };
    let dns = dns.with_server_identifiers(p.dns.server_identifiers.clone());
    registry.register(Arc::new(dns));
    let base_dn = Dn::parse(&p.directory.base_dn)
        .with_context(|| format!("providers.directory.base_dn: {:?}", p.directory.base_dn))?;
    let directory = match p.directory.backend {
        DirectoryBackendKind::Embedded => DirectoryProvider::embedded(base_dn)
            .context("providers.directory: cannot set up the embedded directory")?,
        DirectoryBackendKind::Ldap => {
            let l = p
                .directory
                .ldap
                .as_ref()
                .context("providers.directory.ldap: required with backend = \"ldap\"")?;
            DirectoryProvider::with_backend(Arc::new(
                LdapBackend::new(ldap_settings(&p.directory.base_dn, l)?)
                    .context("providers.directory.ldap")?,
            ))
        }
    };
    let mut mail = ExchangeConfig::new(
        p.exchange
            .mail_root
            .clone()
            .unwrap_or_else(|| config.data_dir.join("mail")),
    );
    mail.mail_uid = p.exchange.mail_uid;
    mail.mail_gid = p.exchange.mail_gid;
    let exchange = Arc::new(
        ExchangeProvider::new(mail, directory.backend().clone()).context("providers.exchange")?,
    );
    *MAIL.lock().unwrap_or_else(|e| e.into_inner()) = Some(exchange.clone());
    registry.register(Arc::new(directory));
    registry.register(exchange);
    registry.register(Arc::new(ErrorProvider::new()));
    // Always on, like Error: records only in provider state, nothing to configure.
    provisio_providers::register_bookkeeping(&mut registry);
    for e in &p.exec {
        let mut cfg = ExecConfig::new(e.name.clone(), e.command.clone());
        cfg.env = e.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        cfg.working_dir = e.working_dir.clone();
        cfg.call_timeout = Duration::from_secs(e.call_timeout_secs.max(1));
        cfg.start_timeout = Duration::from_secs(e.start_timeout_secs.max(1));
        cfg.max_restarts = e.max_restarts;
        cfg.restart_window = Duration::from_secs(e.restart_window_secs.max(1));
        // Where its running children are recorded, so that the next start kills the ones
        // a killed engine left behind before recovery asks `recover`.
        cfg.state_dir = Some(exec_state_dir(&config.data_dir, &e.name));
        let provider = ExecProvider::spawn(cfg).await.map_err(|err| {
            anyhow::anyhow!(
                "providers.exec: provider `{}` (command {:?}{}): {err}\n  hint: fix `command` of the \
                 [[providers.exec]] table with name = {:?}; the program is looked up on PATH",
                e.name,
                e.command,
                e.working_dir
                    .as_deref()
                    .map(|d| format!(", run in `{}`", d.display()))
                    .unwrap_or_default(),
                e.name
            )
        })?;
        registry.register(Arc::new(provider));
    }
    Ok(registry)
}

/// The mail provider of the last registry built, for [`resync_mail`].
static MAIL: std::sync::Mutex<Option<Arc<ExchangeProvider>>> = std::sync::Mutex::new(None);

/// After recovery, before new work: the mail provider renders its files again from its
/// committed state (a crash may have left them ahead of or behind it). A failure is said,
/// not fatal: the provider renders again at its first call.
pub async fn resync_mail(engine: &Engine) {
    let Some(mail) = MAIL.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
        return;
    };
    let entries = match engine.state_entries(provisio_providers::exchange::PROVIDER, b"") {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the mail provider's state to render its files");
            return;
        }
    };
    if let Err(e) = mail.resync(entries).await {
        tracing::warn!(error = %e, "cannot render the mail provider's files at start");
    }
}

/// `<data_dir>/exec/<name>`: an exec provider's own state folder. Bytes other than ASCII
/// letters, digits, `-` and `_` are written `%XX`, so every name has its own folder.
fn exec_state_dir(data_dir: &Path, name: &str) -> std::path::PathBuf {
    let mut folder = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            folder.push(char::from(b));
        } else {
            folder.push_str(&format!("%{b:02X}"));
        }
    }
    data_dir.join("exec").join(folder)
}

/// Executor options from `[engine]` and `[retry]`.
pub fn engine_options(config: &Config) -> EngineOptions {
    let e = &config.engine;
    EngineOptions {
        max_parallel: e.max_parallel.max(1),
        step_timeout: Duration::from_secs(e.step_timeout_secs.max(1)),
        retry: config.retry.options(),
        provider_limits: e.provider_limits.clone(),
        ..EngineOptions::default()
    }
}

/// Loads the namespace folder; every parse error is reported. When the folder is the
/// default one and does not exist, there are no namespace files: the providers' own
/// namespaces remain (enough for a trusted request), and one line on stderr says so.
pub fn namespaces(config: &Config) -> Result<Vec<Namespace>> {
    let dir = &config.namespaces;
    if !dir.exists() && !config.namespaces_explicit {
        eprintln!(
            "note: no namespace folder `{}`; using only the providers' built-in namespaces (--namespaces DIR loads definitions)",
            dir.display()
        );
        return Ok(Vec::new());
    }
    if !dir.is_dir() {
        bail!(
            "namespace folder `{}` not found\n  hint: run from the project folder, or pass --namespaces DIR (or set PROVISIO_NAMESPACES, or `namespaces` in provisio.toml)",
            dir.display()
        );
    }
    let (namespaces, errors) = request::load_namespace_dir(dir);
    if !errors.is_empty() {
        bail!("{}", join_parse_errors(&errors));
    }
    Ok(namespaces)
}

/// Catalog of the namespace folder plus the providers' own namespaces.
pub fn catalog(namespaces: Vec<Namespace>, registry: &ProviderRegistry) -> Result<Catalog> {
    Catalog::new(namespaces, registry).map_err(|errors| {
        anyhow::anyhow!(
            "{}",
            errors
                .iter()
                .map(|e| format!("error[{}]: {e}", e.code()))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

/// An engine over the namespace folder and the configured providers, with `[engine]`
/// options.
pub async fn engine(config: &Config) -> Result<Engine> {
    let registry = registry(config).await?;
    let catalog = catalog(namespaces(config)?, &registry)?;
    Ok(Engine::new(catalog, registry, engine_options(config)))
}

/// Opens the journal under `<data_dir>/journal` with the seal key (`PROVISIO_SEAL_KEY`, else
/// `journal.seal_key_file`), and arms fault injection from `PROVISIO_CRASH_AT` (only in
/// builds with the engine's `failpoints` feature: the crash tests).
pub fn journal(config: &Config) -> Result<Arc<DurableJournal>> {
    let store: Arc<dyn Store> = match &config.store {
        StoreSetting::Sled => {
            let dir = journal_dir(config);
            if config.read_only && !journal_exists(config) {
                bail!("{}", NoJournal(dir));
            }
            let store = open_store(&dir, config.journal.wait_lock.0, config.read_only)?;
            if config.read_only {
                // A command that only reads answers from the store's index; it brings a
                // stale listing file up to date at its close only when that costs what
                // changed since (a catch-up), leaving a full rebuild to the next writer.
                store.leave_listing_rebuild_to_writers();
            }
            Arc::new(store)
        }
        StoreSetting::Postgres(url) => Arc::new(open_postgres(config, url.expose())?),
    };
    let key = seal_key(config)?;
    Ok(Arc::new(
        DurableJournal::new(store, key, who()).with_failpoints_from_env(),
    ))
}

/// Opens the PostgreSQL store named by `url` (retrying an unreachable database for
/// `journal.connect_retry`, bringing its schema up to date), waiting up to
/// `journal.wait_lock` while another process holds it. The data directory is still made
/// (the seal key and `daemon.json` live there).
pub fn open_postgres(config: &Config, url: &str) -> Result<PgStore> {
    if !config.read_only {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory `{}`",
                config.data_dir.display()
            )
        })?;
    }
    let options = PgOptions {
        connect_retry: config.journal.connect_retry.0 .0,
        application: format!("provisio {}", std::env::args().nth(1).unwrap_or_default()),
    };
    let wait = config.journal.wait_lock.0;
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        // A command that only reads (`tx list`, `tx show`, …) creates no tables.
        let opened = if config.read_only {
            PgStore::open_existing(url, &options)
        } else {
            PgStore::open(url, &options)
        };
        match opened {
            Ok(store) => {
                for (version, what) in &store.schema().applied {
                    tracing::info!(
                        "PostgreSQL store {}: applied schema migration {version} ({what})",
                        store.url()
                    );
                }
                return Ok(store);
            }
            Err(StoreError::Locked { path }) => {
                let waited = started.elapsed();
                let daemon = daemon_info(&journal_dir(config));
                if waited >= wait || daemon.is_some() {
                    return Err(StoreBusy {
                        path: path.into(),
                        waited,
                        daemon,
                    }
                    .into());
                }
                if !told {
                    told = true;
                    tracing::warn!(
                        "the PostgreSQL store `{path}` is in use by another provisio process; waiting up to {}",
                        humantime::format_duration(wait)
                    );
                }
                std::thread::sleep((wait - waited).min(Duration::from_millis(100)));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The seal key: `PROVISIO_SEAL_KEY`, else the key file (created when missing, unless the
/// command only reads; `None` then when there is none).
pub fn seal_key(config: &Config) -> Result<Option<SealKey>> {
    let file = seal_key_file(config);
    Ok(match &config.journal.seal_key {
        Some(k) => Some(SealKey::parse(k.expose()).context("PROVISIO_SEAL_KEY")?),
        // Reading needs no key: sealed values are shown as sealed.
        None if config.read_only && !file.exists() => None,
        None => Some(
            SealKey::load_or_create(&file)
                .with_context(|| format!("journal.seal_key_file `{}`", file.display()))?,
        ),
    })
}

/// `<data_dir>/journal`.
pub fn journal_dir(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("journal")
}

/// Whether a journal was ever opened in this data directory: its folder, or the state
/// file the store keeps beside it (a journal folder that vanished while its state file
/// remains is a damaged journal, reported by the store, not an empty one).
pub fn journal_exists(config: &Config) -> bool {
    if matches!(config.store, StoreSetting::Postgres(_)) {
        // The database is the journal: its tables are made when it is first opened.
        return true;
    }
    let dir = journal_dir(config);
    let mut state = dir.clone().into_os_string();
    state.push(".state");
    dir.exists() || Path::new(&state).exists()
}

fn seal_key_file(config: &Config) -> std::path::PathBuf {
    config
        .journal
        .seal_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("seal.key"))
}

/// The journal folder does not exist: nothing has run with this data directory.
pub struct NoJournal(pub std::path::PathBuf);

impl std::fmt::Display for NoJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no journal at `{}`: nothing has run with this data directory (nothing was created)\n  \
             hint: pass --data-dir DIR (or set PROVISIO_DATA_DIR, or `data_dir` in provisio.toml) to use another one",
            self.0.display()
        )
    }
}

/// Who runs this process, for the journal and the audit log: the real user id and its
/// name from the system's user database (`$USER` and `$LOGNAME` are unset under cron and
/// systemd, and anyone can set them).
pub fn who() -> String {
    let uid = uzers::get_current_uid();
    match uzers::get_user_by_uid(uid) {
        Some(user) => format!("{} (uid {uid})", user.name().to_string_lossy()),
        None => format!("uid {uid}"),
    }
}

/// The ldap backend's settings from `[providers.directory]` / `[providers.directory.ldap]`
/// (already checked by the configuration).
fn ldap_settings(base_dn: &str, l: &DirectoryLdapToml) -> Result<LdapSettings> {
    let (Some(bind_dn), Some(password_file)) = (&l.bind_dn, &l.password_file) else {
        bail!("providers.directory.ldap: bind_dn and password_file are required");
    };
    let mut s = LdapSettings::new(
        l.servers.first().cloned().unwrap_or_default(),
        bind_dn.clone(),
        password_file.clone(),
        base_dn.to_string(),
    );
    s.servers = l.servers.clone();
    s.tls = match l.tls_mode() {
        LdapTlsToml::Ldaps => TlsMode::Ldaps,
        LdapTlsToml::Starttls => TlsMode::StartTls,
        LdapTlsToml::None => TlsMode::None,
    };
    s.tls_verify = l.tls_verify;
    s.tls_ca_file = l.tls_ca_file.clone();
    s.flavour = l.flavour.map(|f| match f {
        LdapFlavourToml::Ad => Flavour::Ad,
        LdapFlavourToml::Openldap => Flavour::OpenLdap,
    });
    s.allow_plain_passwords = l.allow_plain_passwords;
    s.pool_size = l.pool_size;
    s.timeout = Duration::from_secs(l.timeout_secs.max(1));
    s.page_size = i32::try_from(l.page_size).unwrap_or(i32::MAX);
    Ok(s)
}

/// One line saying where the state a command opens lives.
pub fn state_line(config: &Config) -> String {
    let p = &config.providers;
    let files = p
        .filesystem
        .root
        .clone()
        .unwrap_or_else(|| config.data_dir.join("files"));
    let zones = match p.dns.backend {
        DnsBackendKind::Zonefile => format!(
            "zones `{}`",
            p.dns
                .zone_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("zones"))
                .display()
        ),
        DnsBackendKind::Rfc2136 => match &p.dns.rndc {
            Some(r) => format!(
                "zones on DNS server {} (added and deleted with rndc, zone files `{}`)",
                p.dns.server.as_deref().unwrap_or("?"),
                r.zone_dir.display()
            ),
            None => format!(
                "zones on DNS server {}",
                p.dns.server.as_deref().unwrap_or("?")
            ),
        },
    };
    let key = match &config.journal.seal_key {
        Some(_) => "seal key from PROVISIO_SEAL_KEY".to_string(),
        None => format!("seal key `{}`", seal_key_file(config).display()),
    };
    let directory = match p.directory.backend {
        DirectoryBackendKind::Embedded => format!("directory {} (embedded)", p.directory.base_dn),
        DirectoryBackendKind::Ldap => format!(
            "directory {} (ldap: {})",
            p.directory.base_dn,
            p.directory
                .ldap
                .as_ref()
                .map(|l| l.servers.join(", "))
                .unwrap_or_default()
        ),
    };
    format!(
        "state: journal `{}`, {key}, files `{}`, {zones}, {directory}",
        match &config.store {
            StoreSetting::Sled => journal_dir(config).display().to_string(),
            postgres => postgres.shown(),
        },
        files.display()
    )
}

/// Another provisio process holds the journal, and it stayed held for the whole wait.
#[derive(Debug)]
pub struct StoreBusy {
    /// The journal folder.
    pub path: std::path::PathBuf,
    /// How long this process waited.
    pub waited: Duration,
    /// The daemon holding it, as its `daemon.json` says (pid, URL), if one does.
    pub daemon: Option<(u32, String)>,
}

/// `<data_dir>/daemon.json`: written by `provisio serve` while it holds the data
/// directory, so that a command refused by the lock can say where to send its request.
pub fn daemon_file(journal_dir: &Path) -> std::path::PathBuf {
    journal_dir
        .parent()
        .unwrap_or(journal_dir)
        .join("daemon.json")
}

/// The daemon named by `daemon.json` beside the journal: (pid, URL).
pub fn daemon_info(journal_dir: &Path) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(daemon_file(journal_dir)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pid = v.get("pid")?.as_u64()? as u32;
    // A file left by a daemon that was killed names a process that is gone.
    if cfg!(target_os = "linux") && !Path::new(&format!("/proc/{pid}")).exists() {
        return None;
    }
    Some((pid, v.get("url")?.as_str()?.to_string()))
}

impl std::fmt::Display for StoreBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((pid, url)) = &self.daemon {
            return write!(
                f,
                "the journal at `{}` is held by a `provisio serve` daemon (pid {pid}, {url}); nothing ran\n  \
                 hint: send the request to the daemon instead: `provisio submit FILE --wait --server {url}` \
                 (with PROVISIO_TOKEN set), or stop the daemon first (SIGTERM); a second daemon needs its own --data-dir",
                self.path.display(),
            );
        }
        write!(
            f,
            "the journal at `{}` is in use by another provisio process (waited {}); nothing ran\n  \
             hint: try again when that command has finished (exit code 75 means: try again later), \
             or wait longer with --wait-lock DURATION (or PROVISIO_WAIT_LOCK, journal.wait_lock in provisio.toml)",
            self.path.display(),
            humantime::format_duration(self.waited)
        )
    }
}

impl StoreBusy {
    /// What a command refused by a daemon can do instead (`command`: run, tx, recover, …).
    pub fn hint_for(&self, command: &str) -> String {
        let Some((_, url)) = &self.daemon else {
            return String::new();
        };
        match command {
            "tx" => format!(
                "  hint: while the daemon runs, its API shows the requests and their steps (`provisio jobs`, `provisio status ID`, GET {url}/v1/requests/ID) and the stuck transactions (GET {url}/v1/transactions/stuck, operator token); `tx` reads the journal itself: stop the daemon (SIGTERM) to use it"
            ),
            "recover" => "  hint: nothing to do while the daemon runs: it recovered what a crash left running when it started, and settles the jobs of workers that stopped; a rollback_failed transaction is resumed with POST /v1/transactions/ID/resume-rollback (operator token)".to_string(),
            "purge" => "  hint: stop the daemon (SIGTERM) to purge, then start it again".to_string(),
            _ => String::new(),
        }
    }
}

impl std::error::Error for StoreBusy {}

/// Opens the journal store, waiting up to `wait` while another process holds it. The wait
/// sleeps the calling thread: commands open the journal before they start any work. A
/// command that only reads (`read_only`) leaves the rewrite of sled's files that a daemon's
/// prune asked for to the next command that writes.
pub fn open_store(path: &Path, wait: Duration, read_only: bool) -> Result<SledStore> {
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        let opened = if read_only {
            SledStore::open_to_read(path)
        } else {
            SledStore::open(path)
        };
        match opened {
            Ok(store) => return Ok(store),
            Err(StoreError::Locked { .. }) => {
                let waited = started.elapsed();
                let daemon = daemon_info(path);
                if waited >= wait || daemon.is_some() {
                    // A daemon holds it for as long as it runs: waiting is pointless.
                    return Err(StoreBusy {
                        path: path.to_path_buf(),
                        waited,
                        daemon,
                    }
                    .into());
                }
                if !told {
                    told = true;
                    tracing::warn!(
                        "the journal at `{}` is in use by another provisio process; waiting up to {}",
                        path.display(),
                        humantime::format_duration(wait)
                    );
                }
                std::thread::sleep((wait - waited).min(Duration::from_millis(100)));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads a request file (or stdin for `-`): one request, or a batch.
pub fn request(path: &Path) -> std::result::Result<RequestDocument, ParseError> {
    if path.as_os_str() == "-" {
        let mut src = String::new();
        if let Err(e) = std::io::stdin()
            .take(request::MAX_FILE_BYTES as u64 + 1)
            .read_to_string(&mut src)
        {
            return Err(ParseError::new(
                SourceRef::new("<stdin>", 0, 0),
                format!("cannot read: {e}"),
            ));
        }
        let trimmed = src.trim_start();
        let format = if trimmed.starts_with('<') {
            Format::Xml
        } else if trimmed.starts_with('{') {
            Format::Json
        } else {
            Format::Yaml
        };
        return request::parse_request_document(&src, "<stdin>", format);
    }
    request::load_request_document(path)
}

/// Formats several parse errors, one per paragraph, for a caller that prints the whole
/// as `error: {text}`: every error but the first gets its own `error: `.
pub fn join_parse_errors(errors: &[ParseError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\nerror: ")
}

/// Runs a start-up step (recovery, settling held jobs) on `store`. On PostgreSQL, should the
/// database be lost meanwhile (its writes would park until it is back, its reads fail), the
/// step is tried again once the store has reconnected (it reconnects by itself, with
/// backoff) — unless the database stays away for `connect_retry` (`journal.connect_retry`)
/// at a stretch: then the start-up stops with the error an unreachable database at open
/// gives (exit 2), instead of waiting for ever. `what` names the step in messages.
pub async fn at_start<T, F, Fut>(
    store: &Arc<dyn Store>,
    connect_retry: Duration,
    what: &str,
    mut step: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let Some(pg) = store.postgres() else {
        return step().await;
    };
    let gone = |pg: &PgStore| {
        anyhow::anyhow!(
            "cannot reach the PostgreSQL store at `{}`: it was lost during {what} and was not back within {} (journal.connect_retry)\n  hint: start the database, then start again (what {what} did not finish is done then); `journal.connect_retry` (PROVISIO_CONNECT_RETRY) sets how long to keep trying",
            pg.url(),
            humantime::format_duration(connect_retry)
        )
    };
    loop {
        let epoch = pg.link().borrow().epoch;
        let done = tokio::select! {
            r = step() => Some(r),
            () = away_for(pg, connect_retry) => None,
        };
        let error = match done {
            None => return Err(gone(pg)),
            Some(Ok(v)) => return Ok(v),
            Some(Err(e)) => e,
        };
        if !lost_since(store, pg, epoch).await {
            return Err(error);
        }
        tracing::warn!(error = %format!("{error:#}"), "the PostgreSQL store was lost during {what}; trying again once it is back (for up to {})", humantime::format_duration(connect_retry));
        let mut link = pg.link();
        let back = tokio::time::timeout(connect_retry, link.wait_for(|l| l.up || l.closed)).await;
        match back {
            Ok(Ok(l)) if l.up => {}
            _ => return Err(gone(pg)),
        }
    }
}

/// How long a failed start-up step waits at most for the store to notice a loss of the
/// database (the step's failure may come before the store notices the session's end).
const LOSS_NOTICE: Duration = Duration::from_millis(300);

/// Whether `pg`'s database was lost since `epoch`, after a step failed: lost, or noticed
/// lost within [`LOSS_NOTICE`]; not lost as soon as the database answers a point read
/// (one round trip): it is there, and the step failed for a reason of its own, whose
/// error is then returned at once rather than after waiting for a loss that is not coming.
async fn lost_since(store: &Arc<dyn Store>, pg: &PgStore, epoch: u64) -> bool {
    let lost = || {
        let link = *pg.link().borrow();
        !link.up || link.epoch != epoch
    };
    if lost() {
        return true;
    }
    let mut link = pg.link();
    let noticed = async {
        let _ = link.wait_for(|l| !l.up || l.epoch != epoch).await;
    };
    let answered = async {
        let store = store.clone();
        let read = tokio::task::spawn_blocking(move || store.get(Space::Meta, b"")).await;
        if !matches!(read, Ok(Ok(_))) {
            // No answer: the loss, should it be one, is for the store to notice.
            std::future::pending::<()>().await;
        }
    };
    let _ = tokio::time::timeout(LOSS_NOTICE, async {
        tokio::select! {
            () = noticed => {}
            () = answered => {}
        }
    })
    .await;
    // Noticed meanwhile (also after an answer: a read from a session made after a quick
    // restart), or not.
    lost()
}

/// Resolves once `pg`'s database has been away for `limit` at a stretch.
async fn away_for(pg: &PgStore, limit: Duration) {
    let mut link = pg.link();
    loop {
        if link.wait_for(|l| !l.up).await.is_err() {
            return std::future::pending().await;
        }
        match tokio::time::timeout(limit, link.wait_for(|l| l.up)).await {
            Err(_) => return,
            Ok(Err(_)) => return std::future::pending().await,
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A start-up step that fails for a reason of its own (not the database) on PostgreSQL
    /// returns its error at once, tried once: it waited 300 ms for a loss that had not
    /// happened. (A loss during start-up: `multinode_faults::a_database_lost_during_start_up_is_waited_for_then_given_up_on`.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_start_up_error_that_is_no_database_loss_is_returned_at_once() {
        let Some(server) = provisio_test_support::postgres::Postgres::shared() else {
            return;
        };
        let url = server.new_schema("at_start");
        let store: Arc<dyn Store> = tokio::task::spawn_blocking(move || {
            let options = PgOptions {
                connect_retry: Duration::from_secs(10),
                application: "provisio tests".into(),
            };
            PgStore::open(&url, &options).map(|s| Arc::new(s) as Arc<dyn Store>)
        })
        .await
        .expect("open")
        .expect("the PostgreSQL store");
        // Its read sessions connected, as after a recovery.
        let warm = store.clone();
        tokio::task::spawn_blocking(move || {
            for _ in 0..4 {
                warm.get(Space::Meta, b"").expect("a read");
            }
        })
        .await
        .expect("reads");
        for _ in 0..3 {
            let mut calls = 0;
            let started = std::time::Instant::now();
            let error = at_start(&store, Duration::from_secs(10), "a test step", || {
                calls += 1;
                async { Err::<(), _>(anyhow::anyhow!("not the database's fault")) }
            })
            .await
            .expect_err("the step's error");
            let took = started.elapsed();
            assert_eq!(error.to_string(), "not the database's fault");
            assert_eq!(calls, 1, "not tried again");
            assert!(took < Duration::from_millis(250), "took {took:?}");
        }
        let _ = tokio::task::spawn_blocking(move || drop(store)).await;
    }

    #[test]
    fn exec_state_folders_are_one_per_name() {
        let d = Path::new("data");
        assert_eq!(exec_state_dir(d, "Ledger"), d.join("exec").join("Ledger"));
        assert_eq!(
            exec_state_dir(d, "Web Ledger/2"),
            d.join("exec").join("Web%20Ledger%2F2")
        );
        assert_ne!(exec_state_dir(d, "a_b"), exec_state_dir(d, "a/b"));
        assert_eq!(exec_state_dir(d, ".."), d.join("exec").join("%2E%2E"));
    }
}
