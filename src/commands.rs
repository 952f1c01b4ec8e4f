//! The commands: each returns the process exit code.

use crate::cli::{
    Cli, Command, ConfigCommand, GraphArgs, GraphSyntax, NamespacesArgs, OutputFormat, PlanArgs,
    RunArgs, StoreCommand, TokenCommand, TxCommand, ValidateArgs,
};
use crate::config::Config;
use crate::{load, Exit};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use provisio_engine::data::xml;
use provisio_engine::model::{CallTarget, Format, Namespace, Request, RequestDocument, SourceRef};
use provisio_engine::plan::{render, GraphFormat};
use provisio_engine::provider::Preview;
use provisio_engine::request::{self, ParseError};
use provisio_engine::response;
use provisio_engine::txn::{Guarded, Record, TxnSummary};
use provisio_engine::{check_catalog, compile_procedure, Catalog};
use provisio_engine::{Event, TxnState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Runs the command.
pub async fn dispatch(cli: Cli) -> Result<Exit> {
    // The daemon's clients and the token helper need no configuration.
    match &cli.command {
        Command::Submit(args) => {
            let c = crate::client::Conn::new(&args.client.server, &cli.global)?;
            return crate::client::submit(args, &c, cli.global.quiet).await;
        }
        Command::Status(args) => {
            let c = crate::client::Conn::new(&args.client.server, &cli.global)?;
            return crate::client::status(args, &c).await;
        }
        Command::Cancel(args) => {
            let c = crate::client::Conn::new(&args.client.server, &cli.global)?;
            return crate::client::cancel(args, &c).await;
        }
        Command::Jobs(args) => {
            let c = crate::client::Conn::new(&args.client.server, &cli.global)?;
            return crate::client::jobs(args, &c).await;
        }
        Command::Token(TokenCommand::Hash { new }) => return token_hash(*new),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "provisio", &mut out);
            print!("{}", String::from_utf8_lossy(&out));
            return Ok(Exit::Ok);
        }
        Command::Schema(args) => return schema(args),
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut out)?;
            print!("{}", String::from_utf8_lossy(&out));
            return Ok(Exit::Ok);
        }
        _ => {}
    }
    // A bad configuration is bad input: nothing runs.
    let loaded = match load::config(&cli) {
        Ok(l) => l,
        Err(e) => return bad_input(format!("error: {e:#}")),
    };
    let config = &loaded.config;
    match cli.command {
        Command::Run(ref args) => {
            // Several files run one after another, each its own request, until one does
            // not commit (set-up then use, as the README's quick start does).
            let mut exit = Exit::Ok;
            for file in std::iter::once(&args.file).chain(&args.more) {
                let one = RunArgs {
                    file: file.clone(),
                    more: Vec::new(),
                    ..args.clone()
                };
                exit = run_one(&cli, config, &one).await?;
                if exit != Exit::Ok {
                    break;
                }
            }
            Ok(exit)
        }
        Command::Plan(ref args) => plan(config, args).await,
        Command::Validate(ref args) => validate(config, args).await,
        Command::Graph(ref args) => graph(config, args).await,
        Command::Namespaces(ref args) => namespaces(config, args).await,
        Command::Tx(ref cmd) => {
            if let Some(held) = crate::via_daemon::holder(config, &cli.global) {
                return crate::via_daemon::tx(&cli, config, cmd, &held).await;
            }
            // Looking at the journal never creates one (nor a seal key): a command started
            // with the wrong data directory says so instead of starting a new history.
            if !load::journal_exists(config) {
                eprintln!("{}", load::NoJournal(load::journal_dir(config)));
                return Ok(match cmd {
                    TxCommand::List(_) | TxCommand::Audit | TxCommand::Prune(_) => Exit::Ok,
                    _ => Exit::BadInput,
                });
            }
            // A store closed cleanly answers `tx list` from its listing file, unopened.
            if let TxCommand::List(args) = cmd {
                if let Some(exit) = crate::inspect::list_from_listing(config, args)? {
                    return Ok(exit);
                }
            }
            let mut config = config.clone();
            config.read_only = !matches!(
                cmd,
                TxCommand::ResumeRollback { .. } | TxCommand::Resolve { .. } | TxCommand::Prune(_)
            );
            tx(&config, cmd).await
        }
        Command::Recover => match crate::via_daemon::holder(config, &cli.global) {
            Some(held) => crate::via_daemon::recover(config, &held),
            None => recover_cmd(config).await,
        },
        Command::Purge(ref args) => crate::inspect::purge(config, args).await,
        Command::Script(ref args) => {
            let limits = crate::driver::DriverLimits {
                max_operations: args.max_operations,
                timeout: Duration::from_secs(args.timeout.max(1)),
                max_csv_bytes: args.max_csv_mib.saturating_mul(1024 * 1024),
                max_data_bytes: args.max_data_mib.saturating_mul(1024 * 1024),
            };
            // A daemon named with --server, or the one holding the data directory, runs
            // the script's requests.
            let server = match &args.server {
                Some(url) => Some(url.clone()),
                None => crate::via_daemon::holder(config, &cli.global).map(|held| {
                    if !cli.global.quiet {
                        eprintln!(
                            "the data directory `{}` is held by a `provisio serve` daemon (pid {}, {}): the script's requests go through it",
                            config.data_dir.display(),
                            held.pid,
                            held.url
                        );
                    }
                    held.url
                }),
            };
            if let Some(url) = server {
                let conn = crate::client::Conn::new(&url, &cli.global)?;
                return crate::driver::run(
                    crate::driver::Backend::Daemon(conn),
                    &args.file,
                    limits,
                )
                .await;
            }
            let engine = match load::engine(config).await {
                Ok(e) => e,
                Err(e) => return bad_input(format!("error: {e:#}")),
            };
            let journal = load::journal(config)?;
            let engine = engine.with_journal(journal.clone());
            load::at_start(
                journal.store(),
                config.journal.connect_retry.0 .0,
                "recovery at start",
                || recover_quietly(&engine, &journal),
            )
            .await?;
            crate::driver::run(
                crate::driver::Backend::Engine(Box::new(engine)),
                &args.file,
                limits,
            )
            .await
        }
        Command::Config(ConfigCommand::Show) => {
            print!("{}", config.show(&loaded.sources)?);
            Ok(Exit::Ok)
        }
        Command::Store(StoreCommand::Migrate) => store_migrate(config),
        Command::Serve(_) => crate::serve::serve(config).await,
        Command::Worker(_) => crate::serve::drain(config).await,
        Command::Submit(_)
        | Command::Status(_)
        | Command::Cancel(_)
        | Command::Jobs(_)
        | Command::Token(_)
        | Command::Completions { .. }
        | Command::Schema(_)
        | Command::Man => Ok(Exit::Ok),
    }
}

/// `provisio schema namespace|request [--out FILE]`.
fn schema(args: &crate::cli::SchemaArgs) -> Result<Exit> {
    let doc = match args.kind {
        crate::cli::SchemaKind::Namespace => request::schema::namespace(),
        crate::cli::SchemaKind::Request => request::schema::request(),
    };
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    match &args.out {
        Some(file) => {
            std::fs::write(file, text)
                .with_context(|| format!("cannot write the schema to `{}`", file.display()))?;
            eprintln!("wrote {}", file.display());
        }
        None => print!("{text}"),
    }
    Ok(Exit::Ok)
}

/// `provisio token hash [--new]`.
fn token_hash(new: bool) -> Result<Exit> {
    use crate::serve::auth;
    let token = if new {
        let t = auth::new_token()?;
        println!("token:  {t}");
        t
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let t = line.trim_end_matches(['\n', '\r']).to_string();
        if t.is_empty() {
            return bad_input("error: no token on standard input\n  hint: `printf '%s' \"$TOKEN\" | provisio token hash`, or `provisio token hash --new`");
        }
        t
    };
    let hash = auth::hash_hex(&token);
    if new {
        println!("sha256: {hash}");
        println!("\n[[serve.tokens]]\nsubject = \"CHANGE-ME\"\nsha256 = \"{hash}\"");
    } else {
        println!("{hash}");
    }
    Ok(Exit::Ok)
}

pub(crate) fn bad_input(message: impl std::fmt::Display) -> Result<Exit> {
    eprintln!("{message}");
    Ok(Exit::BadInput)
}

/// Runs one request file, through the daemon holding the data directory if there is one.
async fn run_one(cli: &Cli, config: &Config, args: &RunArgs) -> Result<Exit> {
    // `--ephemeral` keeps no journal: it never needs the data directory.
    if !args.ephemeral {
        if let Some(held) = crate::via_daemon::holder(config, &cli.global) {
            return crate::via_daemon::run(cli, config, args, &held).await;
        }
    }
    run(cli, config, args).await
}

async fn run(cli: &Cli, config: &Config, args: &RunArgs) -> Result<Exit> {
    // The mail files are rendered from provider state; an ephemeral run's state starts
    // empty, so rendering it over the durable runs' mail root would erase their mailboxes.
    // Unless told otherwise, an ephemeral run renders into a mail root of its own.
    let ephemeral_config;
    let config = if args.ephemeral && config.providers.exchange.mail_root.is_none() {
        let mut c = config.clone();
        c.providers.exchange.mail_root = Some(c.data_dir.join("mail-ephemeral"));
        ephemeral_config = c;
        &ephemeral_config
    } else {
        config
    };
    let document = match load::request(&args.file) {
        Ok(r) => r,
        Err(e) => return bad_input(format!("error: {e}")),
    };
    let request_format = document.format();
    let is_batch = matches!(document, RequestDocument::Batch(_));
    let requests = document.into_requests();
    // --max-parallel and --step-timeout are already layered into `config.engine`.
    let engine = match load::engine(config).await {
        Ok(e) => e,
        Err(e) => return bad_input(format!("error: {e:#}")),
    };
    let mut kept_journal = None;
    let mut jobs: Option<Arc<crate::serve::jobs::StoreJobs>> = None;
    let engine = if args.ephemeral {
        engine
    } else {
        // A busy or damaged journal is reported by `main` (exit 75 or 2).
        let journal = load::journal(config)?;
        if !cli.global.quiet {
            eprintln!("{}", load::state_line(config));
        }
        let engine = engine.with_journal(journal.clone());
        // Tests: a pause before recovery (the database stopped meanwhile).
        provisio_engine::failpoint::pause_once("startup").await;
        let retry = config.journal.connect_retry.0 .0;
        // Recovery, then the jobs held for what it settled: tried again if the database is
        // lost meanwhile, for `journal.connect_retry` at most.
        let queue = load::at_start(journal.store(), retry, "recovery at start", || async {
            recover_quietly(&engine, &journal).await?;
            // `queue` steps put their jobs into this data directory's job queue.
            let queue = Arc::new(
                provisio_engine::queue::Queue::open(journal.store().clone())
                    .context("opening the job queue")?,
            );
            crate::serve::jobs::settle_held(&queue, journal.store()).await?;
            Ok(queue)
        })
        .await?;
        let sink = Arc::new(
            crate::serve::jobs::StoreJobs::new(
                queue,
                load::seal_key(config)?,
                &load::who(),
                config.serve.max_attempts,
            )
            .retaining_successful_responses(config.serve.retain_successful_responses),
        );
        jobs = Some(sink.clone());
        kept_journal = Some(journal);
        engine.with_jobs(sink)
    };
    let progress = progress_bar(cli.global.quiet);
    let engine = {
        let bar = progress.clone();
        engine.with_events(move |event| match event {
            Event::StepStarted { step, target } => bar.set_message(format!("{step} ({target})")),
            Event::StepFinished { .. } => bar.inc(1),
            Event::Undoing { step } => bar.set_message(format!("undoing {step}")),
        })
    };
    // A batch runs only when every item compiles (access, names, required inputs), so a
    // bad item is bad input and nothing of the batch ran.
    if is_batch {
        for (i, request) in requests.iter().enumerate() {
            if let Err(e) = engine.program(request) {
                progress.finish_and_clear();
                return bad_input(format!(
                    "batch item {} of {} (data at {}): {e}\nnothing of the batch ran",
                    i + 1,
                    requests.len(),
                    request.source_ref
                ));
            }
        }
    }
    let count = requests.len();
    let label = |i: usize| {
        if is_batch {
            format!("item {}/{count}: ", i + 1)
        } else {
            String::new()
        }
    };
    let mut results = Vec::with_capacity(count);
    // Items run one after another, each its own transaction: one that fails rolls back
    // only itself and the next still runs (as MPS's queue manager runs a split batch).
    // On PostgreSQL, a run stops where it is when the database is lost (as the daemon's
    // runs do): the session's locks went with it, and its journal writes are refused.
    let store = kept_journal.as_ref().map(|j| j.store().clone());
    let pg = store.as_ref().and_then(|s| s.postgres());
    for (i, request) in requests.into_iter().enumerate() {
        let ran = match pg {
            None => engine.run_owned(request).await,
            Some(pg) => match run_until_lost(&engine, request, pg).await {
                Ok(ran) => ran,
                Err(txn) => {
                    progress.finish_and_clear();
                    if is_batch && !results.is_empty() {
                        let format = args.output.map(to_format).unwrap_or(request_format);
                        print!("{}", response::render_batch(&results, format));
                    }
                    return Ok(stopped_by_loss(&label(i), &txn, pg.url(), is_batch));
                }
            },
        };
        let result = match ran {
            Ok(r) => r,
            Err(e) if results.is_empty() => {
                progress.finish_and_clear();
                return bad_input(e);
            }
            Err(e) => {
                // Not reached after the check above; if it were, what ran is still reported.
                progress.finish_and_clear();
                let format = args.output.map(to_format).unwrap_or(request_format);
                print!("{}", response::render_batch(&results, format));
                return bad_input(format!(
                    "batch item {} of {count}: {e}\nitems after it did not run",
                    i + 1
                ));
            }
        };
        if !cli.global.quiet {
            progress.suspend(|| eprintln!("{}{}", label(i), summary(&result)));
        }
        results.push(result);
    }
    progress.finish_and_clear();
    let format = args.output.map(to_format).unwrap_or(request_format);
    match results.as_slice() {
        [single] if !is_batch => print!("{}", response::render(single, format)),
        all => print!("{}", response::render_batch(all, format)),
    }
    if let Some(journal) = &kept_journal {
        crate::inspect::prune_after_run(config, journal).await;
    }
    if let Some(jobs) = &jobs {
        report_queued(&jobs.queued(), &results);
    }
    // The worst outcome of any item: an undo failure (3), else a rollback (1).
    let mut exit = Exit::Ok;
    for (i, result) in results.iter().enumerate() {
        let label = label(i);
        if let Some(e) = &result.journal_error {
            eprintln!("{label}warning: the outcome could not be journaled: {e}");
        }
        match result.state {
            TxnState::Committed => {}
            TxnState::RollbackFailed => {
                for u in &result.undo_failures {
                    eprintln!(
                        "{label}undo failed: step {} ({}): {}",
                        u.step, u.target, u.message
                    );
                }
                exit = Exit::RollbackFailed;
            }
            _ => {
                if let Some(f) = &result.failure {
                    eprintln!("{label}failed at step {}: {}", f.step, f.message);
                }
                if exit == Exit::Ok {
                    exit = Exit::RolledBack;
                }
            }
        }
    }
    Ok(exit)
}

/// Runs `request` on the PostgreSQL store `pg` until it ends or the database is lost
/// (`Err`: the id of the transaction stopped unfinished, left for recovery).
async fn run_until_lost(
    engine: &provisio_engine::Engine,
    request: provisio_engine::Request,
    pg: &provisio_engine::PgStore,
) -> Result<Result<provisio_engine::TxnResult, provisio_engine::RunError>, provisio_engine::TxnId> {
    let epoch = pg.link().borrow().epoch;
    let txn = provisio_engine::TxnId::new_v7();
    let control = provisio_engine::RunControl {
        txn_id: Some(txn.clone()),
        cancel: None,
    };
    tokio::select! {
        biased;
        () = pg.lost_since(epoch) => Err(txn),
        ran = engine.run_controlled(request, control) => Ok(ran),
    }
}

/// Says that the run of `txn` stopped because its PostgreSQL store (at `url`, masked) was
/// lost, and what to do (stderr); exit 4.
fn stopped_by_loss(label: &str, txn: &provisio_engine::TxnId, url: &str, is_batch: bool) -> Exit {
    eprintln!(
        "{label}error: the connection to the PostgreSQL store at `{url}` was lost while transaction {txn} ran: the run stopped here, unfinished (its journal writes can no longer be acknowledged, so it neither goes on nor rolls back in this process){}",
        if is_batch { "; items after it did not run" } else { "" }
    );
    eprintln!(
        "  hint: once the database is back, run `provisio recover` (or start `provisio serve`): recovery finishes the transaction from its journal (undoes its steps, or resumes it if it is resumable); `provisio tx show {txn}` then says how it ended"
    );
    Exit::StoreLost
}

/// What became of the jobs `queue` steps queued, and how to run them (stderr).
fn report_queued(queued: &[crate::serve::jobs::QueuedJob], results: &[provisio_engine::TxnResult]) {
    let mut waiting = 0;
    for job in queued {
        let committed = results
            .iter()
            .any(|r| r.txn_id.as_str() == job.txn && r.state == TxnState::Committed);
        if job.suspended && !committed {
            eprintln!(
                "job {} ({}) was removed: the transaction that queued it rolled back",
                job.id, job.target
            );
        } else {
            waiting += 1;
            eprintln!("queued job {} ({})", job.id, job.target);
        }
    }
    if waiting > 0 {
        eprintln!(
            "  hint: {waiting} job(s) wait in the data directory's queue: run them with `provisio worker --drain` (or keep `provisio serve` running)"
        );
    }
}

/// One line on how a transaction ended.
fn summary(result: &provisio_engine::TxnResult) -> String {
    format!(
        "{} {} in {:.1?}: {} provider call(s){}",
        result.txn_id,
        result.state,
        result.elapsed,
        result.calls,
        if result.state == TxnState::Committed {
            String::new()
        } else {
            format!(", {} undone", result.undone)
        }
    )
}

fn progress_bar(quiet: bool) -> Arc<ProgressBar> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} step(s) done · {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    Arc::new(bar)
}

fn to_format(o: OutputFormat) -> Format {
    match o {
        OutputFormat::Xml => Format::Xml,
        OutputFormat::Yaml => Format::Yaml,
        OutputFormat::Json => Format::Json,
    }
}

/// What a plan says the run will do, for the exit status.
fn plan_exit(entries: &[provisio_engine::PlanEntry], detailed: bool) -> Exit {
    let fails = entries
        .iter()
        .any(|e| matches!(e.preview, Preview::Fail(_)));
    let changes = entries
        .iter()
        .any(|e| !matches!(e.preview, Preview::NoChange(_)));
    match (fails, changes, detailed) {
        (true, _, _) => Exit::PlanFails,
        (false, true, true) => Exit::PlanChanges,
        _ => Exit::Ok,
    }
}

async fn plan(config: &Config, args: &PlanArgs) -> Result<Exit> {
    // With --detailed-exitcode a bad request is a failure (1), as 2 means "changes".
    let bad = |message: String| {
        eprintln!("{message}");
        Ok(if args.detailed_exitcode {
            Exit::PlanFails
        } else {
            Exit::BadInput
        })
    };
    let document = match load::request(&args.file) {
        Ok(r) => r,
        Err(e) => return bad(format!("error: {e}")),
    };
    let is_batch = matches!(document, RequestDocument::Batch(_));
    let requests = document.into_requests();
    let engine = match load::engine(config).await {
        Ok(e) => e,
        Err(e) => return bad(format!("error: {e:#}")),
    };
    // Every item is planned before anything is printed: a bad item makes the whole batch a
    // bad request, as for `run`.
    let mut plans = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        match engine.plan(request).await {
            Ok(p) => plans.push(p),
            Err(e) if !is_batch => return bad(e.to_string()),
            Err(e) => {
                return bad(format!(
                    "batch item {} of {} (data at {}): {e}",
                    i + 1,
                    requests.len(),
                    request.source_ref
                ))
            }
        }
    }
    // The worst of the items: a failure, else a change, else nothing to do.
    let exit = plans
        .iter()
        .map(|entries| plan_exit(entries, args.detailed_exitcode))
        .max_by_key(|e| match e {
            Exit::PlanFails => 2,
            Exit::PlanChanges => 1,
            _ => 0,
        })
        .unwrap_or(Exit::Ok);
    if args.json {
        let doc = if is_batch {
            serde_json::Value::Array(
                plans
                    .iter()
                    .enumerate()
                    .map(|(i, entries)| serde_json::json!({ "item": i + 1, "plan": plan_json(entries) }))
                    .collect(),
            )
        } else {
            serde_json::Value::Array(plans.iter().flat_map(|e| plan_json(e)).collect())
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(exit);
    }
    for (i, (request, entries)) in requests.iter().zip(&plans).enumerate() {
        if is_batch {
            if i > 0 {
                println!();
            }
            println!(
                "== batch item {} of {} (data at {}): its own transaction",
                i + 1,
                requests.len(),
                request.source_ref
            );
        }
        print_plan(request, entries)?;
    }
    Ok(exit)
}

/// A plan's entries as JSON values (`plan --json`).
fn plan_json(entries: &[provisio_engine::PlanEntry]) -> Vec<serde_json::Value> {
    entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "step": e.step, "wave": e.wave, "target": e.target, "provider": e.provider,
                "inputs": provisio_engine::data::json::to_json(&e.inputs),
                "preview": e.preview, "unresolved": e.unresolved,
            })
        })
        .collect()
}

/// Prints one request's plan as text.
fn print_plan(request: &Request, entries: &[provisio_engine::PlanEntry]) -> Result<()> {
    let target = match &request.target {
        provisio_engine::model::RequestTarget::Call(t) => t.to_string(),
        provisio_engine::model::RequestTarget::Trusted(_) => "(trusted request)".to_string(),
    };
    println!(
        "Plan for {target}: {} provider call(s); nothing has been changed.",
        entries.len()
    );
    let mut wave = usize::MAX;
    for e in entries {
        if e.wave != wave {
            wave = e.wave;
            println!("\nwave {} (these may run in parallel):", wave + 1);
        }
        let what = match &e.preview {
            Preview::Change(s) => format!("+ {s}"),
            Preview::Update(s) => format!("~ {s}"),
            Preview::NoChange(s) => format!("= {s} (no change)"),
            Preview::Fail(s) => format!("! will fail: {s}"),
            Preview::Unknown => "? (the provider cannot tell before running)".to_string(),
        };
        println!("  {}  {}  {what}", e.step, e.target);
        // In the request's own syntax: XML for an XML request, else JSON (also YAML flow).
        let inputs = match request.format {
            provisio_engine::model::Format::Xml => xml::to_string(&e.inputs),
            _ => serde_json::to_string(&provisio_engine::data::json::to_json(&e.inputs))?,
        };
        println!("      inputs: {inputs}");
        if !e.unresolved.is_empty() {
            println!(
                "      known after earlier steps run: {}",
                e.unresolved.join(", ")
            );
        }
    }
    let count = |f: fn(&Preview) -> bool| entries.iter().filter(|e| f(&e.preview)).count();
    println!(
        "\n{} to create, {} to change, {} unchanged, {} unknown, {} will fail.",
        count(|p| matches!(p, Preview::Change(_))),
        count(|p| matches!(p, Preview::Update(_))),
        count(|p| matches!(p, Preview::NoChange(_))),
        count(|p| matches!(p, Preview::Unknown)),
        count(|p| matches!(p, Preview::Fail(_))),
    );
    if let Some(e) = entries
        .iter()
        .find(|e| matches!(e.preview, Preview::Fail(_)))
    {
        println!(
            "The run would fail at step {} ({}) and roll back what came before.",
            e.step, e.target
        );
    }
    Ok(())
}

/// Whether a file is a namespace definition (else a request), by its root.
fn is_namespace_file(path: &Path) -> bool {
    let Ok(src) = std::fs::read_to_string(path) else {
        return false;
    };
    match Format::from_extension(path) {
        Some(Format::Xml) => {
            // Skip the declaration, comments (which may hold `<`) and processing
            // instructions before the root element.
            let mut rest = src.trim_start_matches('\u{feff}');
            loop {
                rest = rest.trim_start();
                if let Some(r) = rest.strip_prefix("<!--") {
                    rest = r.split_once("-->").map_or("", |(_, after)| after);
                } else if rest.starts_with("<?") || rest.starts_with("<!") {
                    rest = rest.split_once('>').map_or("", |(_, after)| after);
                } else {
                    break;
                }
            }
            rest.starts_with("<namespace")
        }
        Some(Format::Json) => src.contains("\"namespace\"") && !src.contains("\"call\""),
        _ => src
            .trim_start_matches('\u{feff}')
            .lines()
            .any(|l| l.starts_with("namespace:") || l.starts_with("- namespace:")),
    }
}

fn collect_files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<ParseError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(entries) => {
                    let mut list: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| f.is_file() && Format::from_extension(f).is_some())
                        .collect();
                    list.sort();
                    files.extend(list);
                }
                Err(e) => errors.push(ParseError::new(
                    SourceRef::new(p.display().to_string(), 0, 0),
                    format!("cannot read folder: {e}"),
                )),
            }
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            errors.push(ParseError::new(
                SourceRef::new(p.display().to_string(), 0, 0),
                "no such file or folder",
            ));
        }
    }
    (files, errors)
}

async fn validate(config: &Config, args: &ValidateArgs) -> Result<Exit> {
    let (files, mut parse_errors) = collect_files(&args.paths);
    let (ns_files, request_files): (Vec<PathBuf>, Vec<PathBuf>) =
        files.into_iter().partition(|f| is_namespace_file(f));
    let mut namespaces: Vec<Namespace> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for f in &ns_files {
        seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone()));
        match request::load_namespace_file(f) {
            Ok(mut n) => namespaces.append(&mut n),
            Err(mut e) => parse_errors.append(&mut e),
        }
    }
    // Requests are checked against the namespace folder too (unless it was given already).
    if !request_files.is_empty() && config.namespaces.is_dir() {
        let (extra, _) = collect_files(std::slice::from_ref(&config.namespaces));
        for f in extra.into_iter().filter(|f| is_namespace_file(f)) {
            if seen.insert(std::fs::canonicalize(&f).unwrap_or_else(|_| f.clone())) {
                match request::load_namespace_file(&f) {
                    Ok(mut n) => namespaces.append(&mut n),
                    Err(mut e) => parse_errors.append(&mut e),
                }
            }
        }
    }
    let registry = match load::registry(config).await {
        Ok(r) => r,
        Err(e) => return bad_input(format!("error: {e:#}")),
    };
    let mut messages: Vec<String> = parse_errors.iter().map(|e| format!("error: {e}")).collect();
    let catalog = match Catalog::new(namespaces, &registry) {
        Ok(c) => Some(c),
        Err(errors) => {
            messages.extend(errors.iter().map(|e| format!("error[{}]: {e}", e.code())));
            None
        }
    };
    let limits = load::engine_options(config).limits;
    let mut checked = 0usize;
    // What the definitions ask for that Provisio does not do: said, not an error.
    let mut warnings: Vec<String> = Vec::new();
    if let Some(catalog) = &catalog {
        for ns in catalog.namespaces() {
            for p in &ns.procedures {
                warnings.extend(p.warnings().iter().map(|w| format!("warning: {w}")));
            }
        }
        messages.extend(
            check_catalog(catalog, &limits)
                .iter()
                .map(|e| format!("error[{}]: {e}", e.code())),
        );
        for f in &request_files {
            match request::load_request_document(f) {
                Ok(document) => {
                    let is_batch = matches!(document, RequestDocument::Batch(_));
                    let requests = document.into_requests();
                    let count = requests.len();
                    for req in &requests {
                        if let provisio_engine::model::RequestTarget::Trusted(p) = &req.target {
                            warnings.extend(p.warnings().iter().map(|w| format!("warning: {w}")));
                        }
                    }
                    // A batch item is checked as the request it becomes (globalData merged in).
                    for (i, req) in requests.iter().enumerate() {
                        if let Err(errors) = provisio_engine::compile_request(catalog, req, &limits)
                        {
                            messages.push(if is_batch {
                                format!(
                                    "batch item {} of {count} (data at {}):\n{errors}",
                                    i + 1,
                                    req.source_ref
                                )
                            } else {
                                errors.to_string()
                            });
                        }
                    }
                }
                Err(e) => messages.push(format!("error: {e}")),
            }
            checked += 1;
        }
    }
    for w in &warnings {
        eprintln!("{w}");
    }
    if messages.is_empty() {
        println!(
            "ok: {} namespace file(s), {} request(s) checked",
            ns_files.len(),
            checked
        );
        Ok(Exit::Ok)
    } else {
        for m in &messages {
            eprintln!("{m}");
        }
        eprintln!("{} error(s)", messages.len());
        Ok(Exit::BadInput)
    }
}

async fn graph(config: &Config, args: &GraphArgs) -> Result<Exit> {
    let registry = match load::registry(config).await {
        Ok(r) => r,
        Err(e) => return bad_input(format!("error: {e:#}")),
    };
    let catalog = match load::namespaces(config).and_then(|n| load::catalog(n, &registry)) {
        Ok(c) => c,
        Err(e) => return bad_input(format!("error: {e:#}")),
    };
    let target = CallTarget {
        namespace: args.namespace.clone(),
        procedure: args.procedure.clone(),
    };
    match compile_procedure(&catalog, &target, &load::engine_options(config).limits) {
        Ok(program) => {
            let format = match args.format {
                GraphSyntax::Dot => GraphFormat::Dot,
                GraphSyntax::Mermaid => GraphFormat::Mermaid,
            };
            print!("{}", render(&program, format, args.expand));
            Ok(Exit::Ok)
        }
        Err(e) => bad_input(e),
    }
}

async fn namespaces(config: &Config, args: &NamespacesArgs) -> Result<Exit> {
    let registry = match load::registry(config).await {
        Ok(r) => r,
        Err(e) => return bad_input(format!("error: {e:#}")),
    };
    let catalog = match load::namespaces(config).and_then(|n| load::catalog(n, &registry)) {
        Ok(c) => c,
        Err(e) => return bad_input(format!("error: {e:#}")),
    };
    if args.markdown {
        let chosen: Vec<&provisio_engine::model::Namespace> = match &args.name {
            Some(name) => match catalog.namespace(name) {
                Some(ns) => vec![ns],
                None => return bad_input(format!("error: unknown namespace `{name}`")),
            },
            None => catalog
                .namespaces()
                .filter(|ns| !ns.source_ref.to_string().starts_with("<provider"))
                .collect(),
        };
        for ns in chosen {
            print!("{}", namespace_markdown(ns));
        }
        return Ok(Exit::Ok);
    }
    match &args.name {
        None => {
            for ns in catalog.namespaces() {
                let provider = ns
                    .provider
                    .as_deref()
                    .map(|p| format!(" [provider {p}]"))
                    .unwrap_or_default();
                println!(
                    "{}{provider}  ({} procedures)",
                    ns.name,
                    ns.procedures.len()
                );
                if let Some(d) = &ns.description {
                    println!("    {}", d.trim());
                }
            }
            Ok(Exit::Ok)
        }
        Some(name) => {
            let Some(ns) = catalog.namespace(name) else {
                let suggestion = provisio_engine::request::rules::suggest(
                    name,
                    catalog.namespaces().map(|n| n.name.as_str()),
                );
                return bad_input(format!(
                    "error: unknown namespace `{name}`{}",
                    suggestion
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default()
                ));
            };
            println!(
                "{}{}",
                ns.name,
                ns.provider
                    .as_deref()
                    .map(|p| format!(" [provider {p}]"))
                    .unwrap_or_default()
            );
            if let Some(d) = &ns.description {
                println!("  {}", d.trim());
            }
            println!("  defined at {}", ns.source_ref);
            for p in &ns.procedures {
                println!("\n  {} ({}, {})", p.name, p.access, p.kind);
                if let Some(d) = &p.description {
                    println!("    {}", d.trim());
                }
                for i in &p.inputs {
                    let mut flags = Vec::new();
                    if i.required && i.default.is_none() {
                        flags.push("required".to_string());
                    }
                    if let Some(d) = &i.default {
                        flags.push(format!("default {}", d.to_text()));
                    }
                    if i.secret {
                        flags.push("secret".to_string());
                    }
                    println!(
                        "    - {}: {}{}{}",
                        i.name,
                        i.ty.as_deref().unwrap_or("any"),
                        if flags.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", flags.join(", "))
                        },
                        i.description
                            .as_deref()
                            .map(|d| format!(" — {d}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(Exit::Ok)
        }
    }
}

/// A namespace as Markdown: its procedures with access, type, description, inputs and the
/// steps they call. The definition file is named without its folder, so the text is the
/// same on every machine.
fn namespace_markdown(ns: &provisio_engine::model::Namespace) -> String {
    use provisio_engine::model::Step;
    use std::fmt::Write as _;
    /// Text with `<` escaped, so `CN=<userPrincipalName>` is not read as HTML.
    fn text(s: &str) -> String {
        s.trim().replace('<', "\\<")
    }
    fn cell(s: &str) -> String {
        text(s).replace('|', "\\|").replace('\n', " ")
    }
    fn steps(out: &mut String, list: &[Step], indent: &str) {
        for s in list {
            match s {
                Step::Execute(e) => {
                    let what = match &e.call {
                        Some(c) => format!("`{}/{}`", c.namespace, c.procedure),
                        None => "transform".to_string(),
                    };
                    let mut extra = Vec::new();
                    if e.queue.is_some() {
                        extra.push("queued".to_string());
                    }
                    for f in &e.for_each {
                        extra.push(format!("for each `{}`", f.name));
                    }
                    if !e.when.is_empty() {
                        extra.push("conditional".to_string());
                    }
                    if !e.needs.is_empty() {
                        extra.push(format!("after {}", e.needs.join(", ")));
                    }
                    let extra = if extra.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", extra.join("; "))
                    };
                    let _ = writeln!(out, "{indent}- `{}`: {what}{extra}", e.id);
                }
                Step::Try(t) => {
                    let _ = writeln!(out, "{indent}- `{}`: try", t.id);
                    steps(out, &t.body, &format!("{indent}  "));
                    let _ = writeln!(out, "{indent}- catch");
                    steps(out, &t.catch, &format!("{indent}  "));
                }
                Step::Select(s) => {
                    let _ = writeln!(out, "{indent}- `{}`: select", s.id);
                }
                Step::Script(s) => {
                    let _ = writeln!(out, "{indent}- `{}`: script", s.id);
                }
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!-- Generated by `provisio namespaces --markdown \"{}\"`: edit the definition, not this. -->\n",
        ns.name
    );
    let _ = writeln!(out, "# {}\n", ns.name);
    if let Some(d) = &ns.description {
        let _ = writeln!(out, "{}\n", text(d));
    }
    let file = ns.source_ref.to_string();
    let file = file
        .rsplit('/')
        .next()
        .unwrap_or(&file)
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let _ = writeln!(
        out,
        "Defined in `namespaces/{file}`{}.\n",
        ns.provider
            .as_deref()
            .map(|p| format!("; leaves served by the provider `{p}`"))
            .unwrap_or_default()
    );
    for p in &ns.procedures {
        let _ = writeln!(out, "## {}\n", p.name);
        let _ = writeln!(out, "{}, {}.", p.access, p.kind);
        if let Some(d) = &p.description {
            let _ = writeln!(out, "{}", text(d));
        }
        out.push('\n');
        if !p.inputs.is_empty() {
            let _ = writeln!(
                out,
                "| input | type | | description |\n| --- | --- | --- | --- |"
            );
            for i in &p.inputs {
                let mut flags = Vec::new();
                if i.required && i.default.is_none() {
                    flags.push("required".to_string());
                }
                if let Some(d) = &i.default {
                    flags.push(format!("default `{}`", d.to_text()));
                }
                if i.secret {
                    flags.push("secret".to_string());
                }
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} | {} |",
                    i.name,
                    i.ty.as_deref().unwrap_or("any"),
                    flags.join(", "),
                    cell(i.description.as_deref().unwrap_or(""))
                );
            }
            out.push('\n');
        }
        if !p.steps.is_empty() {
            let _ = writeln!(out, "Steps:\n");
            steps(&mut out, &p.steps, "");
            out.push('\n');
        }
    }
    out
}

/// Runs recovery before new work, telling the operator what it found.
async fn recover_quietly(
    engine: &provisio_engine::Engine,
    journal: &std::sync::Arc<provisio_engine::txn::DurableJournal>,
) -> Result<()> {
    let found = provisio_engine::txn::recover(engine, journal).await?;
    load::resync_mail(engine).await;
    for r in &found {
        eprintln!(
            "recovered {}: {} -> {} ({} undone, {} in doubt){}",
            r.txn_id,
            r.from,
            r.to,
            r.undone,
            r.in_doubt,
            if r.problems.is_empty() {
                String::new()
            } else {
                format!("\n  needs an operator: {}", r.problems.join("\n  "))
            }
        );
    }
    Ok(())
}

/// `provisio store migrate`.
fn store_migrate(config: &Config) -> Result<Exit> {
    let url = match &config.store {
        crate::config::StoreSetting::Sled => {
            println!(
                "the store is sled (`store` is not a postgres:// URL): it has no schema to migrate"
            );
            return Ok(Exit::Ok);
        }
        crate::config::StoreSetting::Postgres(url) => url.expose().to_string(),
    };
    let store = load::open_postgres(config, &url)?;
    let schema = store.schema();
    if schema.applied.is_empty() {
        println!(
            "PostgreSQL store {}: schema version {}, up to date (nothing applied)",
            store.url(),
            schema.version
        );
    } else {
        for (version, what) in &schema.applied {
            println!("applied schema migration {version}: {what}");
        }
        println!(
            "PostgreSQL store {}: schema version {} (was {})",
            store.url(),
            schema.version,
            schema.applied[0].0 - 1
        );
    }
    Ok(Exit::Ok)
}

async fn recover_cmd(config: &Config) -> Result<Exit> {
    // Without a journal there is nothing to recover, and nothing is created.
    if !load::journal_exists(config) {
        let dir = load::journal_dir(config);
        println!("nothing to recover: no journal at `{}`", dir.display());
        return Ok(Exit::Ok);
    }
    eprintln!("{}", load::state_line(config));
    let engine = match load::engine(config).await {
        Ok(e) => e,
        Err(e) => return bad_input(format!("error: {e:#}")),
    };
    let journal = load::journal(config)?;
    let engine = engine.with_journal(journal.clone());
    let found = provisio_engine::txn::recover(&engine, &journal).await?;
    load::resync_mail(&engine).await;
    if found.is_empty() {
        println!("nothing to recover");
    }
    let queue = provisio_engine::queue::Queue::open(journal.store().clone())
        .context("opening the job queue")?;
    let (released, removed) = crate::serve::jobs::settle_held(&queue, journal.store()).await?;
    if released + removed > 0 {
        println!("queued jobs of interrupted transactions: {released} released, {removed} removed");
    }
    sweep_provider_state(config, &journal).await;
    let mut failed = false;
    for r in &found {
        println!(
            "{} {} -> {} ({} undone, {} in doubt)",
            r.txn_id, r.from, r.to, r.undone, r.in_doubt
        );
        for p in &r.problems {
            println!("  needs an operator: {p}");
        }
        failed |= r.to == TxnState::RollbackFailed;
    }
    Ok(if failed {
        Exit::RollbackFailed
    } else {
        Exit::Ok
    })
}

/// The transactions that are not over: all but committed and rolled-back ones (a
/// `rollback_failed` one may be resumed, so what providers kept for it must stay). Read
/// through the state index: their number, not the journal's, sets the cost.
pub(crate) async fn live_transactions(
    journal: &provisio_engine::txn::DurableJournal,
) -> Result<std::collections::HashSet<String>, provisio_engine::txn::RecoveryError> {
    Ok(provisio_engine::txn::recovery::live(journal)
        .await?
        .into_iter()
        .map(|t| t.id.to_string())
        .collect())
}

/// After recovery, removes what the embedded providers kept for transactions that are over
/// (the filesystem provider's and the zone-file DNS backend's intent markers) and temp files
/// of writes that never finished. Best effort: a failure is logged, recovery's outcome
/// stands.
async fn sweep_provider_state(config: &Config, journal: &provisio_engine::txn::DurableJournal) {
    let live = match live_transactions(journal).await {
        Ok(live) => Arc::new(live),
        Err(e) => {
            tracing::warn!("not sweeping provider state: cannot list transactions: {e}");
            return;
        }
    };
    sweep_filesystem(config, live.clone()).await;
    sweep_zone_files(config, live).await;
}

async fn sweep_filesystem(config: &Config, live: Arc<std::collections::HashSet<String>>) {
    use provisio_providers::filesystem::FilesystemProvider;
    let root = config
        .providers
        .filesystem
        .root
        .clone()
        .unwrap_or_else(|| config.data_dir.join("files"));
    if !root.exists() {
        return;
    }
    let fs = match FilesystemProvider::new(root) {
        Ok(fs) => fs,
        Err(e) => {
            tracing::warn!("not sweeping the filesystem provider's state: {e}");
            return;
        }
    };
    match fs.sweep_temporaries().await {
        Ok(swept) => tracing::info!(
            temp_files = swept.removed.len(),
            "swept filesystem temp files"
        ),
        Err(e) => tracing::warn!("sweeping filesystem temp files failed: {e}"),
    }
    match fs.prune_markers(move |txn| live.contains(txn)).await {
        Ok(swept) => tracing::info!(
            markers = swept.removed.len(),
            "pruned filesystem intent markers"
        ),
        Err(e) => tracing::warn!("pruning filesystem intent markers failed: {e}"),
    }
}

async fn sweep_zone_files(config: &Config, live: Arc<std::collections::HashSet<String>>) {
    use crate::config::DnsBackendKind;
    use provisio_providers::dns::{LiveTxns, ZoneBackend, ZoneFileBackend};
    if config.providers.dns.backend != DnsBackendKind::Zonefile {
        return;
    }
    let dir = config
        .providers
        .dns
        .zone_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("zones"));
    let backend = match ZoneFileBackend::new(dir) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("not sweeping the zone folder: {e}");
            return;
        }
    };
    let live: LiveTxns = Arc::new(move |txn: &str| live.contains(txn));
    match backend.sweep(live).await {
        Ok(swept) => tracing::info!(
            temp_files = swept.temp_files.len(),
            markers = swept.markers.len(),
            "swept the zone folder"
        ),
        Err(e) => tracing::warn!("sweeping the zone folder failed: {e}"),
    }
}

pub(crate) fn fmt_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (d, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = d as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

async fn tx(config: &Config, cmd: &TxCommand) -> Result<Exit> {
    let journal = load::journal(config)?;
    match cmd {
        TxCommand::List(args) => crate::inspect::list(&journal, args).await,
        TxCommand::Show { id } => crate::inspect::show(&journal, id),
        TxCommand::Log { id } => crate::inspect::log(&journal, id),
        TxCommand::Prune(args) => {
            let before = crate::inspect::journal_bytes(config);
            let exit = crate::inspect::prune(config, &journal, args).await?;
            // The store is closed (the last holder dropped) before its files are rewritten.
            crate::inspect::compact_after_prune(config, journal, args, before)?;
            Ok(exit)
        }
        TxCommand::ResumeRollback { id } => {
            let engine = match load::engine(config).await {
                Ok(e) => e.with_journal(journal.clone()),
                Err(e) => return bad_input(format!("error: {e:#}")),
            };
            match provisio_engine::txn::resume_rollback(&engine, &journal, id).await {
                Ok(r) => {
                    println!("{} {} -> {} ({} undone)", r.txn_id, r.from, r.to, r.undone);
                    for p in &r.problems {
                        println!("  still needs an operator: {p}");
                    }
                    Ok(if r.to == TxnState::RolledBack {
                        Exit::Ok
                    } else {
                        Exit::RollbackFailed
                    })
                }
                Err(e) => bad_input(format!("error: {e}")),
            }
        }
        TxCommand::Resolve {
            id,
            step,
            applied,
            not_applied,
        } => {
            // clap makes exactly one of the two flags required.
            let applied = *applied && !*not_applied;
            match provisio_engine::txn::resolve_step(&journal, id, step, applied).await {
                Ok(r) => {
                    println!(
                        "{} step {} ({}) recorded as {}; `provisio tx resume-rollback {}` {}",
                        r.txn_id,
                        r.step,
                        r.was,
                        if r.applied { "applied" } else { "not applied" },
                        r.txn_id,
                        if r.applied { "undoes it" } else { "skips it" }
                    );
                    Ok(Exit::Ok)
                }
                Err(e) => bad_input(format!("error: {e}")),
            }
        }
        TxCommand::Audit => crate::inspect::audit(&journal),
    }
}

/// `tx show`: the summary of one transaction.
pub(crate) fn render_summary(t: &TxnSummary) -> String {
    let mut out = format!(
        "transaction {}\n  state:   {}\n  target:  {}\n  who:     {}\n  started: {}\n  updated: {}\n  definitions: {}\n",
        t.id,
        t.state,
        t.target,
        t.who,
        fmt_ms(t.started_ms),
        fmt_ms(t.updated_ms),
        t.definitions
    );
    if let Some(m) = &t.message {
        out.push_str(&format!("  message: {m}\n"));
    }
    out
}

/// The undo line of a completed call: the record itself only when it holds no secret.
pub(crate) fn render_undo(undo: &Guarded) -> String {
    match undo {
        Guarded::Plain(u) => format!("      undo:   {}", xml::to_string(u)),
        Guarded::Sealed(_) => "      undo:   (sealed: holds secrets)".into(),
        Guarded::Withheld => "      undo:   (withheld: held secrets, no seal key)".into(),
    }
}

/// `tx log`: one record as a JSON line, with its sequence number.
pub(crate) fn render_log_line(seq: u64, r: &Record) -> Result<String> {
    let mut v = serde_json::to_value(r)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("seq".into(), serde_json::json!(seq));
    }
    Ok(serde_json::to_string(&v)?)
}
