//! Script steps: a rhai script runs on a blocking thread; its `call_procedure` calls come
//! back over a channel and run as nested calls of the transaction (journaled and undone
//! like any other); its result goes into `data`, and its undo script joins the rollback.

use super::run::Sched;
use super::state::{lock, Called, Completed, RunMode, StepCtx};
use super::{Engine, Failure, PlanEntry, ScriptUndoDone};
use crate::compile::ScriptNode;
use crate::data::transform::place;
use crate::data::{Element, Mode};
use crate::model::CallTarget;
use crate::provider::{Call, CallContext, Done, Preview, Provider, ProviderError};
use crate::script::{CompiledScript, ScriptEngine, ScriptError, ScriptHost, ScriptOrigin, Vars};
use serde_json::Value;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use tracing::info_span;

impl Engine {
    /// Runs a script step (see the module doc) starting in `wave`; returns the wave after it.
    pub(super) async fn run_script(
        &self,
        cx: StepCtx<'_>,
        sn: &ScriptNode,
        wave: usize,
    ) -> Result<usize, Failure> {
        let step = cx.step;
        let none = Vec::new();
        let literal = Element::new("executeData");
        if !self.check(cx, &none, &sn.when, &literal)? {
            return Ok(wave);
        }
        if cx.txn.mode == RunMode::Plan {
            lock(&cx.txn.plan).push(PlanEntry {
                step: step.to_string(),
                wave,
                target: "(script)".into(),
                provider: "rhai".into(),
                inputs: literal,
                preview: Preview::Unknown,
                unresolved: vec!["a script step runs only for real".into()],
            });
            return Ok(wave + 1);
        }
        let vars = cx.vars(&none, &literal);
        let data_before = crate::data::json::to_json(&lock(&cx.inv.data));
        let value = self.run_script_thread(cx, sn, vars).await?;
        if !value.is_null() {
            store_result(cx, sn.output.as_ref(), &value)?;
        }
        if let Some(undo) = &sn.undo {
            self.register_script_undo(cx, sn, undo, data_before, value)
                .await?;
        }
        Ok(wave + 1)
    }

    /// Runs the script on a blocking thread, serving its `call_procedure` calls meanwhile.
    async fn run_script_thread(
        &self,
        cx: StepCtx<'_>,
        sn: &ScriptNode,
        vars: Vars,
    ) -> Result<Value, Failure> {
        let engine = self.catalog.script_engine().clone();
        let script = sn.script.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<HostCall>();
        let host = Arc::new(ChannelHost {
            tx,
            allowed: sn.calls.iter().map(|t| t.to_string()).collect(),
        });
        let span = info_span!("script", step.id = %cx.step);
        let handle = tokio::task::spawn_blocking(move || {
            span.in_scope(|| engine.run_step(&script, &vars, host))
        });
        let mut n = 0;
        while let Some(call) = rx.recv().await {
            n += 1;
            let reply = self.host_call(cx, n, &call).await;
            // The script thread may have stopped waiting (a limit hit): nobody to answer.
            let _ = call.reply.send(reply);
        }
        let result = handle
            .await
            .map_err(|e| Failure::data(cx.step, format!("script step stopped: {e}")))?;
        result.map_err(|e| script_failure(cx.step, &e))
    }

    /// The `n`th `call_procedure` of a script step, as a nested call at `<step>/call<n>`.
    async fn host_call(&self, cx: StepCtx<'_>, n: usize, call: &HostCall) -> Result<Value, String> {
        let Some((ns, p)) = call.target.rsplit_once('/') else {
            return Err(format!("`{}` is not Namespace/Procedure", call.target));
        };
        let target = CallTarget {
            namespace: ns.to_string(),
            procedure: p.to_string(),
        };
        let ed = crate::data::json::from_json("executeData", &call.data)
            .map_err(|e| format!("call data: {e}"))?;
        let step = format!("{}/call{n}", cx.step);
        let at = Sched {
            wave: 0,
            unresolved: Vec::new(),
            sensitive: cx.inv.sensitive,
        };
        match self.invoke(cx.txn, &target, ed, &step, at).await {
            Ok((out, _)) => Ok(crate::data::json::to_json(&out)),
            Err(f) => Err(format!(
                "{} failed at {}: {} (code {:#010x})",
                target,
                f.step,
                cx.txn.redactor.redact_text(&f.message),
                f.code
            )),
        }
    }

    /// Registers a script step's undo script to run if the transaction rolls back, and
    /// journals it with its inputs (sealed when the transaction holds secrets), so a
    /// rollback after a crash runs it too.
    async fn register_script_undo(
        &self,
        cx: StepCtx<'_>,
        sn: &ScriptNode,
        undo: &CompiledScript,
        data_before: Value,
        result: Value,
    ) -> Result<(), Failure> {
        let txn = cx.txn;
        let started_after = txn.completions.load(AtomicOrdering::SeqCst);
        let seq = txn.completions.fetch_add(1, AtomicOrdering::SeqCst);
        let vars = serde_json::json!({ "data": data_before, "result": result });
        let context = CallContext {
            txn_id: txn.id.clone(),
            step_id: cx.step.to_string(),
            attempt: 1,
            namespace: SCRIPT_NAMESPACE.into(),
            procedure: sn.id.clone(),
        };
        let journaled = if self.journal.records() {
            // The undo script sees all of `data`: whenever the transaction holds a secret
            // (declared, or computed from one), its inputs are sealed.
            let secret = !txn.redactor.is_empty();
            self.journal
                .script_done(&ScriptUndoDone {
                    context: &context,
                    script: undo,
                    vars: &vars,
                    secret,
                })
                .await
        } else {
            Ok(())
        };
        let provider: Arc<dyn Provider> = Arc::new(ScriptUndo {
            engine: self.catalog.script_engine().clone(),
            script: undo.clone(),
            vars,
        });
        lock(&txn.completed).push(Completed {
            started_after,
            seq,
            called: Called::Script(sn.id.clone().into_boxed_str()),
            provider,
            step: cx.step.into(),
            attempt: 1,
            provider_undo: true,
            undo: Box::default(),
            execute_data: None,
            state: None,
        });
        // Registered for undo even when journaling failed: this run's rollback still runs it.
        journaled.map_err(|e| Failure::data(cx.step, e.to_string()))
    }
}

/// The namespace a script step's undo is journaled under (no provider serves it).
pub(crate) const SCRIPT_NAMESPACE: &str = "(script)";

/// The target a script step's undo is reported as.
pub(crate) const SCRIPT_UNDO_TARGET: &str = "(script undo)";

/// The undo of a script step, rebuilt from the journal (its text, where it came from, and
/// its inputs): compiled with `engine` as the step's undo was.
pub(crate) fn journaled_script_undo(
    engine: &Arc<ScriptEngine>,
    source: &str,
    origin: &ScriptOrigin,
    vars: Value,
) -> Result<Arc<dyn Provider>, ScriptError> {
    let script = engine.compile_with_names(source, origin, &["result"])?;
    Ok(Arc::new(ScriptUndo {
        engine: engine.clone(),
        script,
        vars,
    }))
}

/// Puts a script's result into `data`: at `output` when given, else merged (then it must
/// be a map).
fn store_result(
    cx: StepCtx<'_>,
    output: Option<&crate::data::Path>,
    value: &Value,
) -> Result<(), Failure> {
    let invalid = |e: &dyn std::fmt::Display| Failure::data(cx.step, format!("script result: {e}"));
    let mut data = lock(&cx.inv.data);
    match output {
        Some(path) => {
            let name = path.last_name().unwrap_or("result");
            let node = crate::data::json::from_json(name, value).map_err(|e| invalid(&e))?;
            place(&mut data, Some(path), node, Mode::Replace).map_err(|e| invalid(&e))
        }
        None => {
            if !value.is_object() {
                return Err(Failure::data(
                    cx.step,
                    "a script step without `output:` must return a map (merged into data)",
                ));
            }
            let node = crate::data::json::from_json("data", value).map_err(|e| invalid(&e))?;
            place(&mut data, None, node, Mode::Merge).map_err(|e| invalid(&e))
        }
    }
}

/// A script error as a step failure (a script limit has its own code).
pub(super) fn script_failure(step: &str, e: &ScriptError) -> Failure {
    let code = if e.limit().is_some() {
        crate::codes::E_SCRIPT_LIMIT
    } else {
        ProviderError::E_FAIL
    };
    Failure {
        code,
        message: e.to_string(),
        step: step.to_string(),
        sources: Vec::new(),
    }
}

/// A `call_procedure` request from a script thread, answered by the step's async task.
struct HostCall {
    target: String,
    data: Value,
    reply: std::sync::mpsc::Sender<Result<Value, String>>,
}

/// The script's view of the engine: calls travel over a channel to the async side.
struct ChannelHost {
    tx: tokio::sync::mpsc::UnboundedSender<HostCall>,
    allowed: Vec<String>,
}

impl ScriptHost for ChannelHost {
    fn call(&self, target: &str, data: Value) -> Result<Value, String> {
        if !self.allowed.iter().any(|a| a == target) {
            let allowed = if self.allowed.is_empty() {
                "empty".to_string()
            } else {
                self.allowed.join(", ")
            };
            return Err(format!(
                "`{target}` is not in this step's `calls:` list ({allowed}); \
                 declare it so it is checked and compiled with the procedure"
            ));
        }
        let (reply, answer) = std::sync::mpsc::channel();
        self.tx
            .send(HostCall {
                target: target.to_string(),
                data,
                reply,
            })
            .map_err(|_| "the transaction is gone".to_string())?;
        answer
            .recv()
            .map_err(|_| "the transaction is gone".to_string())?
    }
}

/// Runs a script step's undo script during rollback.
struct ScriptUndo {
    engine: Arc<ScriptEngine>,
    script: CompiledScript,
    /// `{ data, result }`: `data` before the step and the step's result.
    vars: Value,
}

#[async_trait::async_trait]
impl Provider for ScriptUndo {
    fn name(&self) -> &str {
        "(script)"
    }
    fn procedures(&self) -> Vec<crate::provider::ProcedureSpec> {
        Vec::new()
    }
    async fn execute(&self, _call: Call) -> Result<crate::provider::Outcome, ProviderError> {
        Err(ProviderError::Unsupported("script undo only undoes".into()))
    }
    async fn undo(&self, _done: Done) -> Result<(), ProviderError> {
        let engine = self.engine.clone();
        let script = self.script.clone();
        let null = Value::Null;
        let vars = Vars::new()
            .with("data", self.vars.get("data").unwrap_or(&null))
            .with("result", self.vars.get("result").unwrap_or(&null));
        tokio::task::spawn_blocking(move || engine.eval_value(&script, &vars))
            .await
            .map_err(|e| ProviderError::permanent(format!("undo script stopped: {e}")))?
            .map(|_| ())
            .map_err(|e| ProviderError::permanent(e.to_string()))
    }
}
