//! `provisio script FILE.rhai`: driver scripts that submit requests and read their results.
//! The script sees `submit`, `submit_all`, `read_csv` and `log` (docs/scripting.md);
//! requests run in-process through the same engine as `provisio run`, each as its own
//! transaction (a `submit_all` batch is one request), or, with `--server` (or a daemon
//! holding the data directory), are submitted to a daemon over HTTP and waited for.
//!
//! A driver script is untrusted input as much as a request is: it reads only regular files
//! inside its own folder (no symlink leading out), CSV files up to a size, and the data it
//! may hold is capped, so a runaway script ends with an error instead of the process
//! aborting when memory runs out.

use crate::Exit;
use anyhow::{Context, Result};
use provisio_engine::model::{Access, Format};
use provisio_engine::Engine;
use provisio_engine::{DriverHost, ScriptEngine, ScriptLimits, ScriptOrigin};
use serde_json::Value;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a driver script may use besides its time.
#[derive(Debug, Clone, Copy)]
pub struct DriverLimits {
    /// Most rhai operations the script may run.
    pub max_operations: u64,
    /// Wall time of the script, not counting time spent in requests.
    pub timeout: Duration,
    /// Largest CSV file `read_csv` reads, in bytes.
    pub max_csv_bytes: u64,
    /// Most memory the script may take, in bytes: the growth of the process's resident
    /// memory since the script started.
    pub max_data_bytes: u64,
}

/// Where a driver script's requests run.
pub enum Backend {
    /// In this process, through the engine (journaled like `provisio run`).
    Engine(Box<Engine>),
    /// On a daemon: each request is submitted over HTTP and waited for.
    Daemon(crate::client::Conn),
}

/// Runs a driver script; returns the exit code (0 every request committed, 1 the script
/// failed or some request did not commit, 2 it does not compile).
pub async fn run(backend: Backend, file: &Path, limits: DriverLimits) -> Result<Exit> {
    let source = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read `{}`", file.display()))?;
    // rhai's own limits bound the operations, each array and map (100,000 items) and the
    // text in one value (rhai sums the strings inside an array or map): as much as the
    // largest CSV file allowed, so what `read_csv` returns fits. The total of all values is
    // bounded by the memory watch below.
    let script_limits = ScriptLimits {
        max_operations: limits.max_operations,
        wall_time: limits.timeout,
        max_string_size: usize::try_from(limits.max_csv_bytes)
            .unwrap_or(usize::MAX)
            .max(ScriptLimits::default().max_string_size),
        ..ScriptLimits::default()
    };
    let scripts = Arc::new(ScriptEngine::new(script_limits));
    let compiled = match scripts.compile(
        &source,
        &ScriptOrigin::new(file.display().to_string(), 1, 1),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(Exit::BadInput);
        }
    };
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let host = Arc::new(InProcess {
        backend,
        handle: tokio::runtime::Handle::current(),
        base,
        max_csv_bytes: limits.max_csv_bytes,
        submitted: AtomicUsize::new(0),
        not_committed: Mutex::new(Vec::new()),
        in_request: Mutex::new(()),
    });
    let finished = Arc::new(AtomicBool::new(false));
    let watch = MemoryWatch::start(limits.max_data_bytes, host.clone(), finished.clone());
    let for_script = host.clone();
    let result =
        tokio::task::spawn_blocking(move || scripts.run_driver(&compiled, for_script)).await?;
    finished.store(true, Ordering::SeqCst);
    drop(watch);
    let summary = host.summary();
    match result {
        Ok(value) => {
            if !value.is_null() {
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
            eprintln!("script done: {summary}");
            Ok(if host.all_committed() {
                Exit::Ok
            } else {
                Exit::RolledBack
            })
        }
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("script stopped: {summary}");
            Ok(Exit::RolledBack)
        }
    }
}

/// Submits requests to the in-process engine, or to a daemon: scripts are the same.
struct InProcess {
    backend: Backend,
    handle: tokio::runtime::Handle,
    base: PathBuf,
    max_csv_bytes: u64,
    submitted: AtomicUsize,
    /// `Namespace/Procedure (transaction or reason)` of each request that did not commit.
    not_committed: Mutex<Vec<String>>,
    /// Held while a request runs, so the memory watch never stops the process in the middle
    /// of a transaction.
    in_request: Mutex<()>,
}

impl InProcess {
    fn summary(&self) -> String {
        let list = lock(&self.not_committed);
        let submitted = self.submitted.load(Ordering::SeqCst);
        if list.is_empty() {
            format!("{submitted} request(s) submitted, all committed")
        } else {
            format!(
                "{submitted} request(s) submitted, {} not committed: {}",
                list.len(),
                list.join("; ")
            )
        }
    }

    fn all_committed(&self) -> bool {
        lock(&self.not_committed).is_empty()
    }

    /// The calls of a batch (`submit_all`, sent as a trusted request) that name a private
    /// procedure: a batch may do only what its calls submitted one by one could.
    fn private_calls(&self, request: &Value) -> Vec<String> {
        // A daemon checks what its token may send itself.
        let Backend::Engine(engine) = &self.backend else {
            return Vec::new();
        };
        let Some(steps) = request
            .pointer("/procedure/steps")
            .and_then(Value::as_object)
        else {
            return Vec::new();
        };
        steps
            .values()
            .filter_map(|s| s.get("call").and_then(Value::as_str))
            .filter(|target| {
                target.rsplit_once('/').is_some_and(|(ns, name)| {
                    engine
                        .catalog()
                        .namespace(ns)
                        .and_then(|n| n.procedure(name))
                        .is_some_and(|p| p.access == Access::Private)
                })
            })
            .map(str::to_string)
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DriverHost for InProcess {
    /// Runs one request. Its outcome goes back to the script, which decides what to do:
    /// a request refused before it ran (a missing input, an unknown procedure) comes back
    /// with `status: "rejected"` and the reason in `error`, instead of throwing and ending
    /// the script at the first bad row.
    fn submit(&self, request: Value) -> Result<Value, String> {
        let _running = lock(&self.in_request);
        self.submitted.fetch_add(1, Ordering::SeqCst);
        let text = serde_json::to_string(&request).map_err(|e| e.to_string())?;
        let private = self.private_calls(&request);
        let outcome = if private.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "a batch may call only public procedures, as `submit` may (a provider's own procedures are private); private: {}",
                private.join(", ")
            ))
        }
        .and_then(|()| match &self.backend {
            Backend::Engine(engine) => {
                provisio_engine::request::parse_request(&text, "<script request>", Format::Json)
                    .map_err(|e| e.to_string())
                    .and_then(|req| {
                        self.handle
                            .block_on(engine.run_owned(req))
                            .map_err(|e| e.to_string())
                    })
                    .map(|result| Ok(provisio_engine::response::to_value(&result)))
            }
            Backend::Daemon(c) => submit_to_daemon(c, text),
        });
        let doc = match outcome {
            Ok(Ok(doc)) => doc,
            // The daemon could not be asked: the script stops, as for any failed call.
            Ok(Err(e)) => return Err(e),
            Err(reason) => {
                lock(&self.not_committed).push(format!("{} (rejected)", target_of(&request)));
                return Ok(serde_json::json!({
                    "status": "rejected",
                    "error": {
                        "code": format!("{:#010x}", provisio_engine::codes::E_INVALIDARG),
                        "description": reason,
                    },
                }));
            }
        };
        let status = doc.get("status").and_then(Value::as_str).unwrap_or("-");
        if status != provisio_engine::TxnState::Committed.to_string() {
            lock(&self.not_committed).push(format!(
                "{} ({} {status})",
                target_of(&request),
                doc.get("transactionId")
                    .and_then(Value::as_str)
                    .unwrap_or("-"),
            ));
        }
        Ok(doc)
    }

    fn read_csv(&self, path: &str) -> Result<Vec<Value>, String> {
        let fail = |what: String| format!("read_csv(\"{path}\"): {what}");
        let rel = Path::new(path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(fail(
                "only files inside the script's folder may be read (no absolute paths, no `..`)"
                    .into(),
            ));
        }
        // Symlinks are followed only while they stay inside the script's folder.
        let base = std::fs::canonicalize(&self.base)
            .map_err(|e| fail(format!("cannot resolve the script's folder: {e}")))?;
        let full = std::fs::canonicalize(self.base.join(rel)).map_err(|e| fail(e.to_string()))?;
        if !full.starts_with(&base) {
            return Err(fail(format!(
                "it leads to `{}`, outside the script's folder (through a symbolic link); only files inside the script's folder may be read",
                full.display()
            )));
        }
        let file = std::fs::File::open(&full).map_err(|e| fail(e.to_string()))?;
        let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
        if !meta.is_file() {
            return Err(fail("not a regular file".into()));
        }
        let too_big = || {
            fail(format!(
                "the file is larger than {} bytes (the limit)\n  hint: split it, or raise the limit with `provisio script --max-csv-mib N`",
                self.max_csv_bytes
            ))
        };
        if meta.len() > self.max_csv_bytes {
            return Err(too_big());
        }
        let mut bytes = Vec::new();
        file.take(self.max_csv_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| fail(e.to_string()))?;
        if bytes.len() as u64 > self.max_csv_bytes {
            return Err(too_big());
        }
        // Cells are trimmed (`alpha, beta` means `beta`); a short row lacks the keys of its
        // missing cells (the script decides what that means), a long one is an error.
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .flexible(true)
            .from_reader(bytes.as_slice());
        let headers = reader.headers().map_err(|e| fail(e.to_string()))?.clone();
        let mut rows = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let record = record.map_err(|e| fail(format!("row {}: {e}", i + 2)))?;
            if record.len() > headers.len() {
                let line = record.position().map_or(i as u64 + 2, |p| p.line());
                return Err(fail(format!(
                    "line {line} has {} cells, the header only {}",
                    record.len(),
                    headers.len()
                )));
            }
            let mut row = serde_json::Map::new();
            for (h, v) in headers.iter().zip(record.iter()) {
                row.insert(h.to_string(), Value::String(v.to_string()));
            }
            rows.push(Value::Object(row));
        }
        Ok(rows)
    }

    fn log(&self, msg: &str) {
        eprintln!("{msg}");
    }
}

/// Submits a request (JSON) to the daemon and waits for it to finish. `Ok(Ok(response))`:
/// it ran (the response as in-process); `Err(reason)`: the daemon refused it (400, 401,
/// 403, 413), which the script sees as `rejected`; `Ok(Err(..))`: the daemon could not be
/// asked, which stops the script.
fn submit_to_daemon(
    c: &crate::client::Conn,
    text: String,
) -> Result<Result<Value, String>, String> {
    use crate::client;
    let a = match client::call(
        c,
        "POST",
        "/v1/requests?wait=300s",
        Some(("application/json", text.into_bytes())),
        &[],
        Duration::from_secs(330),
    ) {
        Ok(a) => a,
        Err(e) => return Ok(Err(format!("{e:#}"))),
    };
    let job = match a.status {
        200 => a.body,
        202 => {
            let Some(id) = a.body.get("id").and_then(Value::as_str) else {
                return Ok(Err(format!(
                    "the daemon answered 202 without an id: {}",
                    a.body
                )));
            };
            if let Err(e) = client::follow(c, id, true) {
                return Ok(Err(format!("{e:#}")));
            }
            match client::get_ok(c, &format!("/v1/requests/{}", client::path_segment(id))) {
                Ok(a) => a.body,
                Err(e) => return Ok(Err(format!("{e:#}"))),
            }
        }
        // Without a (valid) token nothing can run: the script stops.
        401 => return Ok(Err(format!("{:#}", client::failed_for(c, &a)))),
        400 | 403 | 413 | 415 => {
            return Err(format!("{:#}", client::failed_for(c, &a)));
        }
        _ => return Ok(Err(format!("{:#}", client::failed_for(c, &a)))),
    };
    Ok(Ok(client::response_doc(&job)))
}

/// `Namespace/Procedure` of a submitted request, for the summary; a batch
/// (`submit_all`) names its calls in order.
fn target_of(request: &Value) -> String {
    if let Some(call) = request.get("call").and_then(Value::as_str) {
        return call.to_string();
    }
    let calls: Vec<&str> = request
        .pointer("/procedure/steps")
        .and_then(Value::as_object)
        .map(|steps| {
            steps
                .values()
                .filter_map(|s| s.get("call").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    if calls.is_empty() {
        "(trusted request)".to_string()
    } else {
        format!("batch [{}]", calls.join(", "))
    }
}

/// Watches the process's resident memory while a driver script runs. rhai bounds each
/// string, array and map, but not how many of them a script keeps; when the memory taken
/// since the start passes the cap, the watch ends the process with an error (exit 1),
/// never in the middle of a request: what committed stays committed.
struct MemoryWatch {
    thread: Option<std::thread::JoinHandle<()>>,
    finished: Arc<AtomicBool>,
}

impl MemoryWatch {
    fn start(cap: u64, host: Arc<InProcess>, finished: Arc<AtomicBool>) -> MemoryWatch {
        let Some(baseline) = resident_bytes() else {
            // No /proc: rhai's per-value limits still apply.
            return MemoryWatch {
                thread: None,
                finished,
            };
        };
        let done = finished.clone();
        let thread = std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
                let used = resident_bytes().unwrap_or(0).saturating_sub(baseline);
                if used <= cap {
                    continue;
                }
                let _no_request_running = lock(&host.in_request);
                if done.load(Ordering::SeqCst) {
                    return;
                }
                eprintln!(
                    "error: the script holds more than {} MiB of data (limit); it was stopped\n  hint: keep less in variables (process rows one at a time), or raise the limit with `provisio script --max-data-mib N`",
                    cap / (1024 * 1024)
                );
                eprintln!("script stopped: {}", host.summary());
                std::process::exit(Exit::RolledBack as i32);
            }
        });
        MemoryWatch {
            thread: Some(thread),
            finished,
        }
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        self.finished.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The process's resident memory (`VmRSS` of /proc/self/status), in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
