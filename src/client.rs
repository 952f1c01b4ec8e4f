//! The daemon's command-line client: `provisio submit`, `status`, `jobs`, `cancel`, over
//! HTTP to `provisio serve` (`--server`, `PROVISIO_SERVER`; the token from
//! `PROVISIO_TOKEN`, `--token` or `--token-file`); also what `run`, `tx`, `recover` and
//! `script` use to go through a daemon (`via_daemon`, `driver`).

use crate::cli::{Global, JobsArgs, StatusArgs, SubmitArgs};
use crate::Exit;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach a daemon: its URL, the bearer token, the certificate to trust.
pub struct Conn {
    /// The daemon's URL (`http://127.0.0.1:8750`).
    pub server: String,
    token: Option<String>,
    cacert: Option<PathBuf>,
}

impl Conn {
    /// The daemon at `server`, with the token of `--token` / `PROVISIO_TOKEN`, else the first
    /// line of `--token-file` / `PROVISIO_TOKEN_FILE`.
    pub fn new(server: &str, g: &Global) -> Result<Conn> {
        let token = match (&g.token, &g.token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file).with_context(|| {
                    format!(
                        "cannot read the token file `{}` (--token-file, PROVISIO_TOKEN_FILE)",
                        file.display()
                    )
                })?;
                let line = text.lines().next().unwrap_or_default().trim().to_string();
                if line.is_empty() {
                    bail!(
                        "the token file `{}` (--token-file, PROVISIO_TOKEN_FILE) is empty: put the token on its first line",
                        file.display()
                    );
                }
                Some(line)
            }
            (None, None) => None,
        };
        Ok(Conn {
            server: server.trim_end_matches('/').to_string(),
            token,
            cacert: g.cacert.clone(),
        })
    }

    /// The daemon at `server`, without a token (for `/v1/health`).
    pub fn without_token(server: &str, cacert: Option<PathBuf>) -> Conn {
        Conn {
            server: server.trim_end_matches('/').to_string(),
            token: None,
            cacert,
        }
    }

    /// Whether a token was given.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }
}

/// rustls with *ring* (see `serve::tls::provider`).
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// An answer of the daemon: status and JSON body.
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (a JSON string when it was not JSON).
    pub body: Value,
}

fn agent(c: &Conn, timeout: Duration) -> Result<ureq::Agent> {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout));
    if c.server.starts_with("https://") {
        let Some(file) = &c.cacert else {
            bail!(
                "{} is https: pass the certificate to trust with --cacert FILE (PROVISIO_CACERT): the daemon's CA or its own certificate",
                c.server
            );
        };
        let pem = std::fs::read(file)
            .with_context(|| format!("cannot read --cacert `{}`", file.display()))?;
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            bail!("--cacert `{}` holds no PEM certificate", file.display());
        }
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .unversioned_rustls_crypto_provider(std::sync::Arc::new(ring_provider()))
                .build(),
        );
    }
    Ok(config.build().into())
}

pub fn call(
    c: &Conn,
    method: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
    extra: &[(&str, String)],
    timeout: Duration,
) -> Result<Answer> {
    let url = format!("{}{path}", c.server.trim_end_matches('/'));
    let a = agent(c, timeout)?;
    let token = c.token.as_deref().map(|t| format!("Bearer {}", t.trim()));
    let result = match (method, body) {
        ("POST", Some((ct, bytes))) => {
            let mut r = a.post(&url).content_type(ct);
            if let Some(t) = &token {
                r = r.header("Authorization", t);
            }
            for (k, v) in extra {
                r = r.header(*k, v);
            }
            r.send(&bytes[..])
        }
        ("POST", None) => {
            let mut r = a.post(&url);
            if let Some(t) = &token {
                r = r.header("Authorization", t);
            }
            r.send_empty()
        }
        _ => {
            let mut r = a.get(&url);
            if let Some(t) = &token {
                r = r.header("Authorization", t);
            }
            r.call()
        }
    };
    let mut response = result.with_context(|| {
        format!(
            "cannot reach the daemon at {}\n  hint: start it with `provisio serve`, or pass --server URL (PROVISIO_SERVER)",
            c.server
        )
    })?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .context("reading the daemon's answer")?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Answer { status, body })
}

/// GET `path` on the daemon; anything but 200 is an error carrying the daemon's message.
pub fn get_ok(c: &Conn, path: &str) -> Result<Answer> {
    let a =
        tokio::task::block_in_place(|| call(c, "GET", path, None, &[], Duration::from_secs(30)))?;
    if a.status != 200 {
        return Err(failed_for(c, &a));
    }
    Ok(a)
}

/// The error an answer carries, as the daemon said it; when the daemon wants a token and
/// none was given, how to give one.
pub fn failed_for(c: &Conn, a: &Answer) -> anyhow::Error {
    let e = failed(a);
    if a.status == 401 && !c.has_token() {
        return anyhow::anyhow!(
            "{e}\n  hint: no token was given: the daemon at {} needs one; set PROVISIO_TOKEN, or pass --token-file FILE (PROVISIO_TOKEN_FILE) or --token TOKEN (its hash must be in the daemon's [[serve.tokens]]: `provisio token hash --new` makes one)",
            c.server
        );
    }
    e
}

fn failed(a: &Answer) -> anyhow::Error {
    let code = a
        .body
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or("error");
    let message = a
        .body
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| a.body.to_string());
    anyhow::anyhow!("the daemon answered {} ({code}): {message}", a.status)
}

/// `id` as a path segment: only the characters an id has.
pub fn path_segment(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

/// The `Content-Type` of a request file, by its extension.
pub fn content_type(file: &std::path::Path) -> &'static str {
    match file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("xml") => "application/xml",
        Some("json") => "application/json",
        _ => "application/yaml",
    }
}

/// The response document of a finished request as the daemon shows it: its `response`
/// (without the daemon's `requestFormat`), or, for a request settled without one (after a
/// restart, or dead after its retries), its transaction and outcome.
pub fn response_doc(job: &Value) -> Value {
    match job.get("response") {
        Some(Value::Object(o)) => {
            let mut o = o.clone();
            o.remove("requestFormat");
            Value::Object(o)
        }
        _ => {
            let txn = job
                .get("transactions")
                .and_then(Value::as_array)
                .and_then(|t| t.last())
                .cloned()
                .unwrap_or(Value::Null);
            let status = job
                .get("outcome")
                .and_then(Value::as_str)
                .unwrap_or("rolled_back");
            let mut doc = serde_json::json!({ "transactionId": txn, "status": status });
            if let Some(e) = job.get("error").and_then(Value::as_str) {
                doc["error"] = serde_json::json!({ "description": e });
            }
            doc
        }
    }
}

/// Exit code for a finished request, as `provisio run` has it.
pub fn exit_for(job: &Value) -> Exit {
    match job.get("outcome").and_then(Value::as_str) {
        Some("committed") => Exit::Ok,
        Some("rollback_failed") => Exit::RollbackFailed,
        _ => Exit::RolledBack,
    }
}

/// `provisio submit`: queues the request; with `--wait`, follows its event stream (a
/// progress display on stderr) and prints the finished request.
pub async fn submit(args: &SubmitArgs, c: &Conn, quiet: bool) -> Result<Exit> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read request file `{}`", args.file.display()))?;
    let mut extra = Vec::new();
    if let Some(k) = &args.idempotency_key {
        extra.push(("Idempotency-Key", k.clone()));
    }
    if let Some(k) = &args.serial_key {
        extra.push(("X-Serialization-Key", k.clone()));
    }
    let path = format!("/v1/requests?priority={}", args.priority);
    let ct = content_type(&args.file);
    let a = tokio::task::block_in_place(|| {
        call(
            c,
            "POST",
            &path,
            Some((ct, bytes)),
            &extra,
            Duration::from_secs(60),
        )
    })?;
    match a.status {
        202 => {}
        400 | 401 | 403 | 413 | 415 => {
            eprintln!("error: {:#}", failed_for(c, &a));
            return Ok(Exit::BadInput);
        }
        _ => return Err(failed_for(c, &a)),
    }
    print_warnings(&a.body);
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
    if !args.wait {
        for id in &ids {
            println!("{id}");
        }
        return Ok(Exit::Ok);
    }
    let mut finished = if a.body.get("batch").is_some() {
        tokio::task::block_in_place(|| wait_all(c, &ids, quiet))?
    } else {
        let mut finished = Vec::with_capacity(ids.len());
        for id in &ids {
            tokio::task::block_in_place(|| follow(c, id, quiet))?;
            let path = format!("/v1/requests/{}", path_segment(id));
            finished.push(get_ok(c, &path)?.body);
        }
        finished
    };
    // The worst outcome: an undo failure (3), else a rollback (1).
    let mut exit = Exit::Ok;
    for f in &finished {
        match exit_for(f) {
            Exit::RollbackFailed => exit = Exit::RollbackFailed,
            Exit::RolledBack if exit == Exit::Ok => exit = Exit::RolledBack,
            _ => {}
        }
    }
    let doc = if a.body.get("batch").is_some() {
        serde_json::json!({ "batch": finished })
    } else {
        finished.pop().unwrap_or(Value::Null)
    };
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(exit)
}

/// Whether a request (as the API shows it) is over.
fn is_over(job: &Value) -> bool {
    !matches!(
        job.get("state").and_then(Value::as_str),
        Some("held") | Some("queued") | Some("running")
    )
}

/// Waits for every item of a batch (they run in parallel on the daemon), with a progress
/// bar counting the finished ones (hidden with `--quiet`); returns them in item order.
pub fn wait_all(c: &Conn, ids: &[String], quiet: bool) -> Result<Vec<Value>> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(ids.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} item(s) finished · {msg} [{elapsed}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut done: Vec<Option<Value>> = vec![None; ids.len()];
    let (mut committed, mut other) = (0, 0);
    let mut nap = Duration::from_millis(50);
    while done.iter().any(Option::is_none) {
        for (i, id) in ids.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let job = get_ok(c, &format!("/v1/requests/{}", path_segment(id)))?.body;
            if is_over(&job) {
                if job.get("outcome").and_then(Value::as_str) == Some("committed") {
                    committed += 1;
                } else {
                    other += 1;
                }
                bar.inc(1);
                bar.set_message(format!("{committed} committed, {other} not"));
                done[i] = Some(job);
            }
        }
        if done.iter().any(Option::is_none) {
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_secs(1));
        }
    }
    bar.finish_and_clear();
    Ok(done.into_iter().flatten().collect())
}

/// Follows a request's event stream until its `finished` event, showing its steps on a
/// spinner (hidden with `--quiet`).
pub fn follow(c: &Conn, id: &str, quiet: bool) -> Result<()> {
    use std::io::BufRead;
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} step(s) done · {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message(format!("{id} queued"));
    let url = format!(
        "{}/v1/requests/{}/events",
        c.server.trim_end_matches('/'),
        path_segment(id)
    );
    // No overall time limit: the daemon sends keep-alives while the request waits.
    let agent = agent(c, Duration::from_secs(24 * 3600))?;
    let mut req = agent.get(&url);
    if let Some(t) = &c.token {
        req = req.header("Authorization", &format!("Bearer {}", t.trim()));
    }
    let mut response = req
        .call()
        .with_context(|| format!("cannot follow request {id} at {}", c.server))?;
    if response.status().as_u16() != 200 {
        let text = response.body_mut().read_to_string().unwrap_or_default();
        bar.finish_and_clear();
        bail!(
            "the daemon answered {} to the event stream: {text}",
            response.status()
        );
    }
    let reader = std::io::BufReader::new(response.body_mut().as_reader());
    for line in reader.lines() {
        let line = line.context("reading the event stream")?;
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let v: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        match v.get("event").and_then(Value::as_str) {
            Some("step_started") => {
                bar.set_message(format!("{} ({})", text("step"), text("target")))
            }
            Some("step_finished") => bar.inc(1),
            Some("undoing") => bar.set_message(format!("undoing {}", text("step"))),
            Some("retry") => bar.set_message(format!("retrying later: {}", text("error"))),
            Some("state") => bar.set_message(format!("{id} {}", text("state"))),
            Some("finished") => break,
            _ => {}
        }
    }
    bar.finish_and_clear();
    Ok(())
}

fn print_warnings(body: &Value) {
    for w in body
        .get("warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(w) = w.as_str() {
            eprintln!("warning: {w}");
        }
    }
}

/// `provisio status`.
pub async fn status(args: &StatusArgs, c: &Conn) -> Result<Exit> {
    let path = format!("/v1/requests/{}", path_segment(&args.id));
    let a = get_ok(c, &path)?;
    println!("{}", serde_json::to_string_pretty(&a.body)?);
    Ok(Exit::Ok)
}

/// `provisio cancel`.
pub async fn cancel(args: &StatusArgs, c: &Conn) -> Result<Exit> {
    let path = format!("/v1/requests/{}/cancel", path_segment(&args.id));
    let a =
        tokio::task::block_in_place(|| call(c, "POST", &path, None, &[], Duration::from_secs(30)))?;
    if a.status != 200 && a.status != 202 {
        return Err(failed_for(c, &a));
    }
    if let Some(m) = a.body.get("message").and_then(Value::as_str) {
        eprintln!("{m}");
    }
    Ok(Exit::Ok)
}

/// `v` percent-encoded for a query string.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The line `provisio jobs` prints for a request.
fn job_line(j: &Value) -> String {
    let s = |k: &str| j.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    format!(
        "{}  {:<10} {:<16} {:<12} {}",
        s("id"),
        s("state"),
        s("outcome"),
        s("subject"),
        s("target")
    )
}

/// `provisio jobs`; with `--watch`, then a line for every request that appears or changes
/// state, until Ctrl-C.
pub async fn jobs(args: &JobsArgs, c: &Conn) -> Result<Exit> {
    let mut path = format!("/v1/requests?limit={}", args.limit);
    for (k, v) in [
        ("state", &args.state),
        ("namespace", &args.namespace),
        ("procedure", &args.procedure),
        ("subject", &args.subject),
    ] {
        if let Some(v) = v {
            path.push_str(&format!("&{k}={}", encode(v)));
        }
    }
    let a = get_ok(c, &path)?;
    let items = a
        .body
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if items.is_empty() {
        eprintln!("no requests");
    }
    for j in &items {
        println!("{}", job_line(j));
    }
    if !args.watch {
        if let Some(next) = a.body.get("next").and_then(Value::as_u64) {
            eprintln!("more: GET /v1/requests?before={next}");
        }
        return Ok(Exit::Ok);
    }
    // Watching: what each request last showed; a new one or a changed state prints a line.
    let key = |j: &Value| {
        (
            j.get("state").and_then(Value::as_str).map(str::to_string),
            j.get("outcome").and_then(Value::as_str).map(str::to_string),
        )
    };
    let mut seen: std::collections::HashMap<String, (Option<String>, Option<String>)> = items
        .iter()
        .filter_map(|j| Some((j.get("id")?.as_str()?.to_string(), key(j))))
        .collect();
    eprintln!(
        "watching (every {}); Ctrl-C ends",
        humantime::format_duration(args.interval.0)
    );
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(Exit::Ok),
            _ = tokio::time::sleep(args.interval.0) => {}
        }
        let a = get_ok(c, &path)?;
        let items = a
            .body
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // Oldest first, so that the lines read in the order things happened.
        for j in items.iter().rev() {
            let Some(id) = j.get("id").and_then(Value::as_str) else {
                continue;
            };
            let now = key(j);
            if seen.get(id) != Some(&now) {
                println!("{}", job_line(j));
                seen.insert(id.to_string(), now);
            }
        }
    }
}
