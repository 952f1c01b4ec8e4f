//! The host side of scripts: [`ScriptHost`] for script steps, [`DriverHost`] for driver
//! scripts, and the per-evaluation context (deadline, hosts) the registered functions use.
//!
//! rhai functions must be `'static`, so the host of the current evaluation lives in a
//! thread-local for the evaluation's duration (restored afterwards, so evaluations nest).

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{
    Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map, NativeCallContext, Position,
};
use serde_json::Value;

use super::convert::{dynamic_to_json, friendly_type, json_to_dynamic};
use super::error::WallTimeExceeded;

/// What a script step can reach: other procedures.
pub trait ScriptHost: Send + Sync {
    /// Runs procedure `target` (`"Namespace/Procedure"`) with `data` and returns its
    /// resulting data (a map), or an error message.
    fn call(&self, target: &str, data: Value) -> Result<Value, String>;
}

/// What a driver script (`provisio script FILE.rhai`) can reach: request submission, CSV
/// input and a log. Independent of where requests run (in-process or a daemon).
pub trait DriverHost: Send + Sync {
    /// Submits a request `{call, data}`; returns `{transactionId, status, data?, error?}`.
    fn submit(&self, request: Value) -> Result<Value, String>;
    /// Reads a CSV file as one map per row keyed by the header; the host decides which
    /// paths are allowed.
    fn read_csv(&self, path: &str) -> Result<Vec<Value>, String>;
    /// Records a log line.
    fn log(&self, msg: &str);
}

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    static STEP_HOST: RefCell<Option<Arc<dyn ScriptHost>>> = const { RefCell::new(None) };
    static DRIVER_HOST: RefCell<Option<Arc<dyn DriverHost>>> = const { RefCell::new(None) };
}

/// Sets the context of one evaluation on this thread; dropping it restores the previous one.
pub(crate) struct EvalGuard {
    deadline: Option<Instant>,
    step: Option<Arc<dyn ScriptHost>>,
    driver: Option<Arc<dyn DriverHost>>,
}

impl EvalGuard {
    pub(crate) fn enter(
        wall_time: Duration,
        step: Option<Arc<dyn ScriptHost>>,
        driver: Option<Arc<dyn DriverHost>>,
    ) -> Self {
        let deadline = Instant::now().checked_add(wall_time);
        Self {
            deadline: DEADLINE.with(|d| d.replace(deadline)),
            step: STEP_HOST.with(|h| h.replace(step)),
            driver: DRIVER_HOST.with(|h| h.replace(driver)),
        }
    }
}

impl Drop for EvalGuard {
    fn drop(&mut self) {
        DEADLINE.with(|d| d.set(self.deadline));
        STEP_HOST.with(|h| *h.borrow_mut() = self.step.take());
        DRIVER_HOST.with(|h| *h.borrow_mut() = self.driver.take());
    }
}

/// The `on_progress` check: stops the script once this thread's deadline has passed.
/// The clock is read every 64 operations.
pub(crate) fn check_deadline(ops: u64) -> Option<Dynamic> {
    if !ops.is_multiple_of(64) {
        return None;
    }
    match DEADLINE.with(Cell::get) {
        Some(deadline) if Instant::now() >= deadline => Some(Dynamic::from(WallTimeExceeded)),
        _ => None,
    }
}

/// Runs a host function without counting its time against the wall-time limit.
fn off_the_clock<R>(f: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let r = f();
    let spent = start.elapsed();
    DEADLINE.with(|d| d.set(d.get().and_then(|t| t.checked_add(spent))));
    r
}

fn throw(msg: impl Into<String>, pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(ImmutableString::from(msg.into())),
        pos,
    ))
}

fn to_json_arg(v: &Dynamic, what: &str, pos: Position) -> Result<Value, Box<EvalAltResult>> {
    dynamic_to_json(v).map_err(|e| throw(format!("{what}: {e}"), pos))
}

fn call_procedure(
    ctx: &NativeCallContext,
    target: &str,
    data: &Dynamic,
) -> Result<Dynamic, Box<EvalAltResult>> {
    let pos = ctx.call_position();
    let Some(host) = STEP_HOST.with(|h| h.borrow().clone()) else {
        return Err(throw(
            "call_procedure is only available in script steps",
            pos,
        ));
    };
    if !(data.is_map() || data.is_unit()) {
        return Err(throw(
            format!(
                "call_procedure(\"{target}\", data): data must be a map, got {}",
                friendly_type(data)
            ),
            pos,
        ));
    }
    let data = match to_json_arg(data, "call_procedure data", pos)? {
        Value::Null => Value::Object(serde_json::Map::new()),
        v => v,
    };
    match off_the_clock(|| host.call(target, data)) {
        Ok(v) => Ok(json_to_dynamic(&v)),
        Err(e) => Err(throw(e, pos)),
    }
}

fn driver_host(
    ctx: &NativeCallContext,
    name: &str,
) -> Result<Arc<dyn DriverHost>, Box<EvalAltResult>> {
    DRIVER_HOST.with(|h| h.borrow().clone()).ok_or_else(|| {
        throw(
            format!("{name} is only available in driver scripts"),
            ctx.call_position(),
        )
    })
}

fn submit(ctx: &NativeCallContext, request: &Dynamic) -> Result<Dynamic, Box<EvalAltResult>> {
    let host = driver_host(ctx, "submit")?;
    let pos = ctx.call_position();
    let is_request = request
        .read_lock::<Map>()
        .is_some_and(|m| m.get("call").is_some_and(Dynamic::is_string));
    if !is_request {
        return Err(throw(
            format!(
                "submit(request): request must be a map #{{\"call\": \"Namespace/Procedure\", data: #{{…}}}}, got {}",
                friendly_type(request)
            ),
            pos,
        ));
    }
    let request = to_json_arg(request, "submit request", pos)?;
    match off_the_clock(|| host.submit(request)) {
        Ok(v) => Ok(json_to_dynamic(&v)),
        Err(e) => Err(throw(e, pos)),
    }
}

/// `submit_all(calls)`: the calls as one request (one transaction), with `results`.
fn submit_all(ctx: &NativeCallContext, calls: &Array) -> Result<Dynamic, Box<EvalAltResult>> {
    let host = driver_host(ctx, "submit_all")?;
    let pos = ctx.call_position();
    let items = calls
        .iter()
        .map(|c| to_json_arg(c, "submit_all call", pos))
        .collect::<Result<Vec<_>, _>>()?;
    let request = super::batch::batch_request(&items).map_err(|e| throw(e, pos))?;
    match off_the_clock(|| host.submit(request)) {
        Ok(v) => Ok(json_to_dynamic(&super::batch::with_results(v, items.len()))),
        Err(e) => Err(throw(e, pos)),
    }
}

/// Registers `call_procedure`, `submit`, `submit_all`, `read_csv` and `log`.
pub(crate) fn register(engine: &mut Engine) {
    engine.register_fn(
        "call_procedure",
        |ctx: NativeCallContext, target: &str, data: Dynamic| call_procedure(&ctx, target, &data),
    );
    engine.register_fn("call_procedure", |ctx: NativeCallContext, target: &str| {
        call_procedure(&ctx, target, &Dynamic::UNIT)
    });
    engine.register_fn("submit", |ctx: NativeCallContext, request: Dynamic| {
        submit(&ctx, &request)
    });
    engine.register_fn(
        "submit",
        |ctx: NativeCallContext,
         call: &str,
         data: Dynamic|
         -> Result<Dynamic, Box<EvalAltResult>> {
            let mut request = Map::new();
            request.insert("call".into(), Dynamic::from(ImmutableString::from(call)));
            request.insert("data".into(), data);
            submit(&ctx, &Dynamic::from_map(request))
        },
    );
    engine.register_fn("submit_all", |ctx: NativeCallContext, calls: Array| {
        submit_all(&ctx, &calls)
    });
    engine.register_fn(
        "read_csv",
        |ctx: NativeCallContext, path: &str| -> Result<Array, Box<EvalAltResult>> {
            let host = driver_host(&ctx, "read_csv")?;
            match off_the_clock(|| host.read_csv(path)) {
                Ok(rows) => Ok(rows.iter().map(json_to_dynamic).collect()),
                Err(e) => Err(throw(e, ctx.call_position())),
            }
        },
    );
    engine.register_fn("log", |msg: &str| {
        match DRIVER_HOST.with(|h| h.borrow().clone()) {
            Some(host) => off_the_clock(|| host.log(msg)),
            None => tracing::info!(target: "provisio::script", "{msg}"),
        }
    });
}
