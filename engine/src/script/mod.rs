//! Sandboxed rhai scripting for Provisio: `when` conditions, computed values, forEach
//! filters, script steps (which may call other procedures) and driver scripts (which submit
//! requests). See `docs/scripting.md` for what scripts see.
//!
//! The sandbox: [`rhai::Engine::new_raw`] plus the standard package (pure functions on
//! values; no file, network or process access), no module resolver and no modules
//! (`import` fails), `eval` disabled, strict variables, `print`/`debug` routed to tracing,
//! every [`ScriptLimits`] limit applied, and a wall-time deadline per evaluation.
//!
//! ```
//! use provisio_engine::{ScriptEngine, ScriptOrigin, Vars};
//! let engine = ScriptEngine::default();
//! let when = engine
//!     .compile(r#"data.user.enabled && data.user.groups.contains("staff")"#,
//!              &ScriptOrigin::new("users.yaml", 12, 11))
//!     .unwrap();
//! let vars = Vars::new().with("data", &serde_json::json!(
//!     {"user": {"enabled": true, "groups": ["staff"]}}));
//! assert!(engine.eval_condition(&when, &vars).unwrap());
//! ```

mod batch;
mod convert;
mod error;
mod helpers;
mod host;
mod keywords;
mod limits;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rhai::module_resolvers::DummyModuleResolver;
use rhai::packages::{Package, StandardPackage};
use rhai::{Dynamic, Engine, Scope, AST};
use serde_json::Value;

pub use convert::{dynamic_to_json, json_to_dynamic, Vars};
pub use error::{ScriptError, ScriptOrigin};
pub use host::{DriverHost, ScriptHost};
pub use limits::ScriptLimits;

use host::EvalGuard;

/// Variable names every script may use without declaring them (strict variables): the
/// request's `data`, `executeData`, `procedureData`, `context`, and a filter's `item`.
/// More names (forEach variables) go to [`ScriptEngine::compile_with_names`].
pub(crate) const STANDARD_NAMES: &[&str] =
    &["data", "executeData", "procedureData", "context", "item"];

/// Most distinct scripts kept by the compilation cache before it starts afresh.
const CACHE_CAPACITY: usize = 4096;

/// A compiled script and where its text came from; cheap to clone, compile once per
/// procedure and reuse.
#[derive(Debug, Clone)]
pub struct CompiledScript {
    ast: Arc<AST>,
    origin: Arc<ScriptOrigin>,
    /// The text it was compiled from (journaled with an undo script, so recovery can run
    /// it after a crash).
    source: Arc<str>,
}

impl CompiledScript {
    /// The text it was compiled from.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// Where its text came from.
    pub(crate) fn origin(&self) -> &ScriptOrigin {
        &self.origin
    }
}

/// A sandboxed rhai engine with Provisio's functions; `Send + Sync`, share one per process
/// (or one per limit set: driver scripts usually want longer limits than conditions).
pub struct ScriptEngine {
    engine: Engine,
    limits: ScriptLimits,
    cache: Mutex<HashMap<String, Arc<AST>>>,
}

impl std::fmt::Debug for ScriptEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptEngine")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for ScriptEngine {
    fn default() -> Self {
        Self::new(ScriptLimits::default())
    }
}

impl ScriptEngine {
    /// An engine enforcing `limits`.
    pub fn new(limits: ScriptLimits) -> Self {
        let mut engine = Engine::new_raw();
        engine.register_global_module(StandardPackage::new().as_shared_module());
        engine.set_module_resolver(DummyModuleResolver::new());
        engine.set_max_modules(0);
        engine.disable_symbol("eval");
        engine.set_strict_variables(true);
        engine.on_print(|s| tracing::info!(target: "provisio::script", "{s}"));
        engine.on_debug(|s, _source, pos| {
            tracing::debug!(target: "provisio::script", "{s} ({pos})");
        });
        engine.set_max_operations(limits.max_operations);
        engine.set_max_call_levels(limits.max_call_levels);
        engine.set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth);
        engine.set_max_string_size(limits.max_string_size);
        engine.set_max_array_size(limits.max_array_size);
        engine.set_max_map_size(limits.max_map_size);
        engine.on_progress(host::check_deadline);
        helpers::register(&mut engine);
        host::register(&mut engine);
        keywords::register(&mut engine);
        Self {
            engine,
            limits,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Compiles `source`, which may use the `STANDARD_NAMES`; errors point into
    /// `origin.file`. Identical sources share one compiled form.
    pub fn compile(
        &self,
        source: &str,
        origin: &ScriptOrigin,
    ) -> Result<CompiledScript, ScriptError> {
        self.compile_with_names(source, origin, &[])
    }

    /// Like [`ScriptEngine::compile`], allowing also the variables `names` (e.g. forEach
    /// variables).
    pub fn compile_with_names(
        &self,
        source: &str,
        origin: &ScriptOrigin,
        names: &[&str],
    ) -> Result<CompiledScript, ScriptError> {
        let mut key = String::with_capacity(source.len() + 16 * names.len() + 1);
        for n in names {
            key.push_str(n);
            key.push('\u{0}');
        }
        key.push('\u{1}');
        key.push_str(source);
        let cached = match self.cache.lock() {
            Ok(c) => c.get(&key).cloned(),
            Err(p) => p.into_inner().get(&key).cloned(),
        };
        let ast = match cached {
            Some(ast) => ast,
            None => {
                // Names are declared as plain (non-constant) variables so the optimizer
                // cannot fold their placeholder values into the script.
                let mut scope = Scope::new();
                for n in STANDARD_NAMES.iter().chain(names) {
                    scope.push_dynamic(*n, Dynamic::UNIT);
                }
                keywords::reset();
                let ast = self
                    .engine
                    .compile_with_scope(&scope, source)
                    .map_err(|e| error::from_parse(&e, origin, &self.limits))?;
                let ast = Arc::new(ast);
                let mut cache = match self.cache.lock() {
                    Ok(c) => c,
                    Err(p) => p.into_inner(),
                };
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
                cache.insert(key, Arc::clone(&ast));
                ast
            }
        };
        Ok(CompiledScript {
            ast,
            origin: Arc::new(origin.clone()),
            source: Arc::from(source),
        })
    }

    fn eval(
        &self,
        script: &CompiledScript,
        vars: &Vars,
        extra: Option<(&str, Dynamic)>,
        step: Option<Arc<dyn ScriptHost>>,
        driver: Option<Arc<dyn DriverHost>>,
    ) -> Result<Dynamic, ScriptError> {
        let _guard = EvalGuard::enter(self.limits.wall_time, step, driver);
        vars.with_scope(extra, |scope| {
            self.engine
                .eval_ast_with_scope::<Dynamic>(scope, &script.ast)
                .map_err(|e| error::from_eval(*e, &script.origin, &self.limits))
        })
    }

    fn to_bool(script: &CompiledScript, what: &str, v: &Dynamic) -> Result<bool, ScriptError> {
        v.as_bool().map_err(|_| {
            ScriptError::type_error(
                &script.origin,
                format!(
                    "{what} must return true or false, got {}",
                    convert::friendly_type(v)
                ),
            )
        })
    }

    fn to_value(script: &CompiledScript, v: &Dynamic) -> Result<Value, ScriptError> {
        dynamic_to_json(v)
            .map_err(|e| ScriptError::type_error(&script.origin, format!("script result: {e}")))
    }

    /// Evaluates a condition; its result must be a boolean.
    pub fn eval_condition(
        &self,
        script: &CompiledScript,
        vars: &Vars,
    ) -> Result<bool, ScriptError> {
        let v = self.eval(script, vars, None, None, None)?;
        Self::to_bool(script, "condition", &v)
    }

    /// Evaluates a script to a JSON value (maps, arrays, strings, numbers, booleans; unit
    /// is `null`).
    pub fn eval_value(&self, script: &CompiledScript, vars: &Vars) -> Result<Value, ScriptError> {
        let v = self.eval(script, vars, None, None, None)?;
        Self::to_value(script, &v)
    }

    /// Evaluates a forEach filter with `item` bound to the item; the result must be a
    /// boolean.
    pub fn eval_filter(
        &self,
        script: &CompiledScript,
        vars: &Vars,
        item: &Value,
    ) -> Result<bool, ScriptError> {
        let v = self.eval(
            script,
            vars,
            Some(("item", json_to_dynamic(item))),
            None,
            None,
        )?;
        Self::to_bool(script, "filter", &v)
    }

    /// Runs a script step: like [`ScriptEngine::eval_value`], and the script may call
    /// procedures through `host` with `call_procedure("Namespace/Procedure", #{…})`.
    /// Synchronous and possibly long: call it from `spawn_blocking`.
    pub fn run_step(
        &self,
        script: &CompiledScript,
        vars: &Vars,
        host: Arc<dyn ScriptHost>,
    ) -> Result<Value, ScriptError> {
        let v = self.eval(script, vars, None, Some(host), None)?;
        Self::to_value(script, &v)
    }

    /// Runs a driver script, which may `submit` requests, `read_csv` and `log` through
    /// `host`; returns the script's result as JSON. Synchronous.
    pub fn run_driver(
        &self,
        script: &CompiledScript,
        host: Arc<dyn DriverHost>,
    ) -> Result<Value, ScriptError> {
        let v = self.eval(script, &Vars::new(), None, None, Some(host))?;
        Self::to_value(script, &v)
    }
}

#[cfg(test)]
mod tests;
