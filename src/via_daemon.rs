//! `run`, `tx` and `recover` on a data directory a daemon holds: instead of failing on the
//! store's lock, they go through the daemon's HTTP API. The daemon names itself in
//! `<data_dir>/daemon.json` (pid and URL, never a token); a command finding a live daemon
//! there that answers `/v1/health` sends it the work with the token of `--token`,
//! `PROVISIO_TOKEN` or `--token-file`, and prints what the command prints in-process.
//! What the API cannot do (`tx prune`) is refused with the commands to use instead.

use crate::cli::{Cli, OutputFormat, RunArgs, TxCommand};
use crate::client::{self, Conn};
use crate::commands::{bad_input, render_log_line};
use crate::config::Config;
use crate::{load, Exit};
use anyhow::{Context, Result};
use provisio_engine::model::{Format, RequestDocument};
use provisio_engine::txn::{Record, TxnSummary};
use provisio_engine::{request, response};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// A daemon holding a data directory.
pub struct Held {
    /// Its process id.
    pub pid: u32,
    /// Where it listens.
    pub url: String,
}

/// The daemon that holds `config`'s data directory: named by `daemon.json`, its process
/// alive and its API answering `/v1/health`. `None` otherwise (the command then opens the
/// store itself, and a lock held by something else is reported as before).
pub fn holder(config: &Config, g: &crate::cli::Global) -> Option<Held> {
    let (pid, url) = load::daemon_info(&load::journal_dir(config))?;
    // An https daemon is asked only with the certificate to trust: without --cacert the
    // command goes to it anyway, and the client's error says to pass one.
    if url.starts_with("https://") && g.cacert.is_none() {
        return Some(Held { pid, url });
    }
    let conn = Conn::without_token(&url, g.cacert.clone());
    let a = tokio::task::block_in_place(|| {
        client::call(
            &conn,
            "GET",
            "/v1/health",
            None,
            &[],
            Duration::from_secs(5),
        )
    })
    .ok()?;
    (a.status == 200).then_some(Held { pid, url })
}

fn conn(cli: &Cli, held: &Held) -> Result<Conn> {
    Conn::new(&held.url, &cli.global)
}

/// The line saying where the command goes.
fn going_through(cli: &Cli, config: &Config, held: &Held, what: &str) {
    if !cli.global.quiet {
        eprintln!(
            "the data directory `{}` is held by a `provisio serve` daemon (pid {}, {}): {what} goes through it",
            config.data_dir.display(),
            held.pid,
            held.url
        );
    }
}

/// Reads a request's text (a file, or `-` for stdin) with its syntax.
fn request_text(file: &Path) -> std::result::Result<(String, String, Format), String> {
    if file.as_os_str() == "-" {
        let mut src = String::new();
        std::io::stdin()
            .take(request::MAX_FILE_BYTES as u64 + 1)
            .read_to_string(&mut src)
            .map_err(|e| format!("<stdin>: cannot read: {e}"))?;
        let t = src.trim_start();
        let format = if t.starts_with('<') {
            Format::Xml
        } else if t.starts_with('{') {
            Format::Json
        } else {
            Format::Yaml
        };
        return Ok((src, "<stdin>".into(), format));
    }
    let name = file.display().to_string();
    let format = Format::from_extension(file).ok_or_else(|| {
        format!(
            "{name}: unknown file type\n  hint: request files end in .xml, .yaml, .yml or .json"
        )
    })?;
    let meta = std::fs::metadata(file).map_err(|e| format!("{name}: cannot read: {e}"))?;
    if !meta.is_file() || meta.len() > request::MAX_FILE_BYTES as u64 {
        return Err(format!(
            "{name}: not a regular file of at most {} bytes",
            request::MAX_FILE_BYTES
        ));
    }
    let src = std::fs::read_to_string(file).map_err(|e| format!("{name}: cannot read: {e}"))?;
    Ok((src, name, format))
}

fn mime(format: Format) -> &'static str {
    match format {
        Format::Xml => "application/xml",
        Format::Json => "application/json",
        Format::Yaml => "application/yaml",
    }
}

/// `provisio run FILE` through the daemon: submitted, followed to its end, and its response
/// printed as `run` prints it in-process (the request's format unless --output says
/// otherwise), with the same exit code.
pub async fn run(cli: &Cli, config: &Config, args: &RunArgs, held: &Held) -> Result<Exit> {
    let (src, name, format) = match request_text(&args.file) {
        Ok(t) => t,
        Err(e) => return bad_input(format!("error: {e}")),
    };
    // Checked here first, so that a bad request is reported with its file's name.
    let is_batch = match request::parse_request_document(&src, &name, format) {
        Ok(doc) => matches!(doc, RequestDocument::Batch(_)),
        Err(e) => return bad_input(format!("error: {e}")),
    };
    if args.max_parallel.is_some() || args.step_timeout.is_some() {
        eprintln!("warning: --max-parallel and --step-timeout do not apply through the daemon: its own [engine] settings do");
    }
    going_through(cli, config, held, "the request");
    let c = conn(cli, held)?;
    let a = tokio::task::block_in_place(|| {
        client::call(
            &c,
            "POST",
            "/v1/requests",
            Some((mime(format), src.into_bytes())),
            &[],
            Duration::from_secs(60),
        )
    })?;
    match a.status {
        202 => {}
        503 => {
            eprintln!(
                "error: {:#}\n  hint: the daemon is starting or stopping: try again in a moment (exit code 75)",
                client::failed_for(&c, &a)
            );
            return Ok(Exit::StoreBusy);
        }
        _ => return bad_input(format!("error: {:#}", client::failed_for(&c, &a))),
    }
    for w in a
        .body
        .get("warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(w) = w.as_str() {
            eprintln!("warning: {w}");
        }
    }
    let ids: Vec<String> = match a.body.get("batch").and_then(Value::as_array) {
        Some(items) => items
            .iter()
            .filter_map(|i| i.get("id").and_then(Value::as_str).map(str::to_string))
            .collect(),
        None => a
            .body
            .get("id")
            .and_then(Value::as_str)
            .map(|id| vec![id.to_string()])
            .unwrap_or_default(),
    };
    let mut docs = Vec::with_capacity(ids.len());
    let mut exit = Exit::Ok;
    let count = ids.len();
    // A batch's items run in parallel on the daemon: one bar counts them.
    let jobs = if is_batch {
        tokio::task::block_in_place(|| client::wait_all(&c, &ids, cli.global.quiet))?
    } else {
        let mut jobs = Vec::new();
        for id in &ids {
            tokio::task::block_in_place(|| client::follow(&c, id, cli.global.quiet))?;
            jobs.push(
                client::get_ok(&c, &format!("/v1/requests/{}", client::path_segment(id)))?.body,
            );
        }
        jobs
    };
    for (i, (id, job)) in ids.iter().zip(jobs).enumerate() {
        let doc = client::response_doc(&job);
        let label = if is_batch {
            format!("item {}/{count}: ", i + 1)
        } else {
            String::new()
        };
        if !cli.global.quiet {
            eprintln!(
                "{label}{} {} (request {id} on the daemon, as `{}`)",
                doc.get("transactionId")
                    .and_then(Value::as_str)
                    .unwrap_or("-"),
                doc.get("status").and_then(Value::as_str).unwrap_or("-"),
                job.get("subject").and_then(Value::as_str).unwrap_or("?"),
            );
        }
        match client::exit_for(&job) {
            Exit::Ok => {}
            worst => {
                if let Some(e) = doc.get("error") {
                    eprintln!(
                        "{label}failed at step {}: {}",
                        e.get("step").and_then(Value::as_str).unwrap_or("-"),
                        e.get("description").and_then(Value::as_str).unwrap_or("-")
                    );
                }
                for u in doc
                    .get("undoFailures")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let f = |k: &str| u.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
                    eprintln!(
                        "{label}undo failed: step {} ({}): {}",
                        f("step"),
                        f("target"),
                        f("message")
                    );
                }
                if worst == Exit::RollbackFailed || exit == Exit::Ok {
                    exit = worst;
                }
            }
        }
        docs.push(doc);
    }
    let format = match args.output {
        Some(OutputFormat::Xml) => Format::Xml,
        Some(OutputFormat::Yaml) => Format::Yaml,
        Some(OutputFormat::Json) => Format::Json,
        None => format,
    };
    match docs.as_slice() {
        [single] if !is_batch => print!("{}", response::render_value(single, format)),
        all => print!("{}", response::render_batch_values(all, format)),
    }
    Ok(exit)
}

/// `provisio tx …` through the daemon.
pub async fn tx(cli: &Cli, config: &Config, cmd: &TxCommand, held: &Held) -> Result<Exit> {
    going_through(cli, config, held, "`tx`");
    let c = conn(cli, held)?;
    match cmd {
        TxCommand::List(args) => {
            let mut path = format!("/v1/transactions?limit={}", args.limit.max(1));
            if let Some(s) = args.state {
                path.push_str(&format!("&state={}", s.0.name()));
            }
            for (k, v) in [
                ("procedure", &args.procedure),
                ("subject", &args.subject),
                ("after", &args.after),
            ] {
                if let Some(v) = v {
                    path.push_str(&format!("&{k}={}", client::encode(v)));
                }
            }
            if let Some(t) = args.since {
                path.push_str(&format!("&since_ms={}", t.0));
            }
            if let Some(t) = args.until {
                path.push_str(&format!("&until_ms={}", t.0));
            }
            let a = client::get_ok(&c, &path)?;
            let items: Vec<TxnSummary> = serde_json::from_value(
                a.body.get("items").cloned().unwrap_or(Value::Array(vec![])),
            )
            .context("reading the daemon's list of transactions")?;
            let mut out = std::io::stdout().lock();
            if items.is_empty() {
                writeln!(out, "no transactions")?;
            }
            for t in &items {
                writeln!(out, "{}", crate::inspect::list_line(t))?;
            }
            if let Some(next) = a.body.get("next").and_then(Value::as_str) {
                eprintln!(
                    "{} shown; the next page: provisio tx list --after {next} (with the same filters)",
                    items.len()
                );
            }
            Ok(Exit::Ok)
        }
        TxCommand::Show { id } | TxCommand::Log { id } => {
            let path = format!("/v1/transactions/{}", client::path_segment(id));
            let a = tokio::task::block_in_place(|| {
                client::call(&c, "GET", &path, None, &[], Duration::from_secs(60))
            })?;
            match a.status {
                200 => {}
                400 | 404 => return bad_input(format!("error: {:#}", client::failed_for(&c, &a))),
                _ => return Err(client::failed_for(&c, &a)),
            }
            let summary: TxnSummary =
                serde_json::from_value(a.body.get("summary").cloned().unwrap_or_default())
                    .context("reading the daemon's transaction summary")?;
            let mut records = Vec::new();
            for v in a
                .body
                .get("records")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
                let mut v = v.clone();
                if let Some(o) = v.as_object_mut() {
                    o.remove("seq");
                }
                let r: Record = serde_json::from_value(v)
                    .context("reading a journal record from the daemon")?;
                records.push((seq, r));
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if matches!(cmd, TxCommand::Log { .. }) {
                for (seq, r) in &records {
                    writeln!(out, "{}", render_log_line(*seq, r)?)?;
                }
            } else {
                crate::inspect::write_show(
                    &summary,
                    || records.iter().map(|(_, r)| Ok(r.clone())),
                    &mut out,
                )?;
            }
            out.flush()?;
            Ok(Exit::Ok)
        }
        TxCommand::ResumeRollback { id } => {
            let path = format!(
                "/v1/transactions/{}/resume-rollback",
                client::path_segment(id)
            );
            let a = tokio::task::block_in_place(|| {
                client::call(&c, "POST", &path, None, &[], Duration::from_secs(600))
            })?;
            if a.status != 200 {
                return bad_input(format!("error: {:#}", client::failed_for(&c, &a)));
            }
            let f = |k: &str| {
                a.body
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_string()
            };
            println!(
                "{} {} -> {} ({} undone)",
                f("id"),
                f("from"),
                f("to"),
                a.body.get("undone").and_then(Value::as_u64).unwrap_or(0)
            );
            for p in a
                .body
                .get("problems")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!("  still needs an operator: {}", p.as_str().unwrap_or("-"));
            }
            Ok(if f("to") == "rolled_back" {
                Exit::Ok
            } else {
                Exit::RollbackFailed
            })
        }
        TxCommand::Audit => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut path = "/v1/audit".to_string();
            loop {
                let a = client::get_ok(&c, &path)?;
                for line in a
                    .body
                    .get("lines")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    writeln!(out, "{}", line.as_str().unwrap_or_default())?;
                }
                match a.body.get("next").and_then(Value::as_str) {
                    Some(next) => path = format!("/v1/audit?after={}", client::encode(next)),
                    None => break,
                }
            }
            out.flush()?;
            Ok(Exit::Ok)
        }
        TxCommand::Resolve {
            id,
            step,
            applied,
            not_applied,
        } => {
            // clap makes exactly one of the two flags required.
            let applied = *applied && !*not_applied;
            let path = format!(
                "/v1/transactions/{}/resolve?step={}&applied={applied}",
                client::path_segment(id),
                client::encode(step)
            );
            let a = tokio::task::block_in_place(|| {
                client::call(&c, "POST", &path, None, &[], Duration::from_secs(60))
            })?;
            if a.status != 200 {
                return bad_input(format!("error: {:#}", client::failed_for(&c, &a)));
            }
            let f = |k: &str| {
                a.body
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_string()
            };
            println!(
                "{} step {} ({}) recorded as {}; `provisio tx resume-rollback {}` {}",
                f("id"),
                f("step"),
                f("was"),
                if applied { "applied" } else { "not applied" },
                f("id"),
                if applied { "undoes it" } else { "skips it" }
            );
            Ok(Exit::Ok)
        }
        TxCommand::Prune(args) => {
            let mut path = format!("/v1/transactions/prune?dry_run={}", args.dry_run);
            if let Some(k) = &args.older_than {
                path.push_str(&format!("&older_than={}", client::encode(&k.to_string())));
            }
            if let Some(n) = args.keep {
                path.push_str(&format!("&keep={n}"));
            }
            let a = tokio::task::block_in_place(|| {
                client::call(&c, "POST", &path, None, &[], Duration::from_secs(600))
            })?;
            if a.status != 200 {
                return bad_input(format!("error: {:#}", client::failed_for(&c, &a)));
            }
            let transactions: Vec<TxnSummary> = serde_json::from_value(
                a.body
                    .get("transactions")
                    .cloned()
                    .unwrap_or(Value::Array(vec![])),
            )
            .context("reading the daemon's list of pruned transactions")?;
            let policy = &a.body["policy"];
            let policy = provisio_engine::txn::retention::Retention {
                max_age: policy["max_age_ms"].as_u64().map(Duration::from_millis),
                max_count: policy["max_count"]
                    .as_u64()
                    .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
                audit_max_age: None,
            };
            crate::inspect::print_pruned(
                &transactions,
                a.body["audit_entries"].as_u64().unwrap_or(0) as usize,
                &policy,
                a.body["policy"]["audit"].as_str().unwrap_or("-"),
                args.dry_run,
            )?;
            if !args.dry_run && (args.compact || !transactions.is_empty()) {
                // The daemon holds its store open: sled's database cannot be switched under it.
                println!(
                    "the daemon's journal database is rewritten smaller, when it holds much more than it keeps, at the daemon's next start"
                );
            }
            Ok(Exit::Ok)
        }
    }
}

/// `provisio recover` while a daemon holds the data directory: the daemon recovered at its
/// start; said so, with where to look for what needs an operator.
pub fn recover(config: &Config, held: &Held) -> Result<Exit> {
    println!(
        "nothing to recover by hand: the daemon (pid {}, {}) holds the data directory `{}` and recovered what a crash left running when it started; it takes back the jobs of workers that stop while it runs",
        held.pid,
        held.url,
        config.data_dir.display()
    );
    eprintln!(
        "  hint: `provisio tx list --state rollback_failed` lists what needs an operator and `provisio tx resume-rollback ID` retries its undos (both go through the daemon); GET {}/v1/transactions/stuck lists what is stuck (operator token)",
        held.url
    );
    Ok(Exit::Ok)
}
