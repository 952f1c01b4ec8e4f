//! `provisio script FILE.rhai`: driver scripts that submit requests and read their results.
//! The script sees `submit`, `read_csv` and `log` (docs/scripting.md); requests run
//! in-process through the same engine as `provisio run`, each as its own transaction.

use crate::Exit;
use anyhow::{Context, Result};
use provisio_engine::exec::Engine;
use provisio_engine::model::Format;
use provisio_engine::script::{DriverHost, ScriptEngine, ScriptLimits, ScriptOrigin};
use serde_json::Value;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Runs a driver script; returns the exit code (0 ok, 1 the script failed, 2 it does not compile).
pub async fn run(
    engine: Engine,
    file: &Path,
    max_operations: u64,
    timeout: Duration,
) -> Result<Exit> {
    let source = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read `{}`", file.display()))?;
    let limits = ScriptLimits {
        max_operations,
        wall_time: timeout,
        ..ScriptLimits::default()
    };
    let scripts = Arc::new(ScriptEngine::new(limits));
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
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let host = Arc::new(InProcess {
        engine,
        handle: tokio::runtime::Handle::current(),
        base,
        submitted: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    });
    let for_script = host.clone();
    let result =
        tokio::task::spawn_blocking(move || scripts.run_driver(&compiled, for_script)).await?;
    let (submitted, failed) = (
        host.submitted.load(Ordering::Relaxed),
        host.failed.load(Ordering::Relaxed),
    );
    match result {
        Ok(value) => {
            if !value.is_null() {
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
            eprintln!("script done: {submitted} request(s) submitted, {failed} not committed");
            Ok(Exit::Ok)
        }
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("script stopped: {submitted} request(s) submitted, {failed} not committed");
            Ok(Exit::RolledBack)
        }
    }
}

/// Submits requests to the in-process engine. A daemon-backed host (HTTP) can replace it
/// without changing scripts.
struct InProcess {
    engine: Engine,
    handle: tokio::runtime::Handle,
    base: PathBuf,
    submitted: AtomicUsize,
    failed: AtomicUsize,
}

impl DriverHost for InProcess {
    fn submit(&self, request: Value) -> Result<Value, String> {
        let text = serde_json::to_string(&request).map_err(|e| e.to_string())?;
        let req = provisio_engine::request::parse_request(&text, "<script request>", Format::Json)
            .map_err(|e| e.to_string())?;
        self.submitted.fetch_add(1, Ordering::Relaxed);
        let result = self.handle.block_on(self.engine.run(&req)).map_err(|e| {
            self.failed.fetch_add(1, Ordering::Relaxed);
            e.to_string()
        })?;
        if result.state != provisio_engine::exec::TxnState::Committed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(provisio_engine::response::to_value(&result))
    }

    fn read_csv(&self, path: &str) -> Result<Vec<Value>, String> {
        let rel = Path::new(path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!("read_csv(\"{path}\"): only files inside the script's folder may be read (no absolute paths, no `..`)"));
        }
        let full = self.base.join(rel);
        let mut reader =
            csv::Reader::from_path(&full).map_err(|e| format!("read_csv(\"{path}\"): {e}"))?;
        let headers = reader
            .headers()
            .map_err(|e| format!("read_csv(\"{path}\"): {e}"))?
            .clone();
        let mut rows = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let record = record.map_err(|e| format!("read_csv(\"{path}\") row {}: {e}", i + 2))?;
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
