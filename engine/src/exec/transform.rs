//! Reading and writing a step's data scopes: the conditions that decide whether a step
//! runs, the forEach iterations it runs for, and the transforms that build its
//! executeData before the call and map results back after it.

use super::items::{Iteration, Iterations, Origin};
use super::script::script_failure;
use super::state::{lock, Bindings, RunMode, StepCtx};
use super::{Engine, Failure};
use crate::compile::{CForEach, CPart, CSource, CTransform, CWhen, CXsl, ExecNode};
use crate::data::path::{LocationKind, Selected};
use crate::data::transform::{extract, extract_located, place, place_value, remove, Located};
use crate::data::{Element, IfNull, Mode, Path};
use crate::model::Scope;
use crate::script::Vars;
use std::sync::Arc;

impl<'a> StepCtx<'a> {
    /// Runs `f` on the root of a scope. Locks are held only for the closure, never across
    /// an await.
    pub(super) fn with_scope<R>(
        self,
        bindings: &mut Bindings,
        ed: &mut Element,
        scope: &Scope,
        f: impl FnOnce(&mut Element) -> R,
    ) -> Result<R, Failure> {
        Ok(match scope {
            Scope::Data => f(&mut lock(&self.inv.data)),
            Scope::ProcedureData => f(&mut lock(&self.inv.procedure_data)),
            Scope::Context => f(&mut lock(&self.txn.context)),
            Scope::ExecuteData => f(ed),
            Scope::Named(name) => match bindings.iter_mut().rev().find(|(n, _)| n == name) {
                Some((_, e)) => f(e),
                None => {
                    return Err(Failure::data(
                        self.step,
                        format!("`{name}` is not a data scope or a forEach of this step"),
                    ))
                }
            },
        })
    }

    /// The string value a path selects in a scope, without changing anything.
    pub(super) fn read_string(
        self,
        bindings: &[(String, Element)],
        ed: &Element,
        scope: &Scope,
        path: Option<&Path>,
    ) -> Result<Option<String>, Failure> {
        let mut scratch = ed.clone();
        let mut b = bindings.to_vec();
        self.with_scope(&mut b, &mut scratch, scope, |root| string_at(root, path))
    }

    /// The data scopes as rhai variables.
    pub(super) fn vars(self, bindings: &Bindings, execute_data: &Element) -> Vars {
        let mut v = Vars::new();
        v.push_element("data", &lock(&self.inv.data));
        v.push_element("procedureData", &lock(&self.inv.procedure_data));
        v.push_element("context", &lock(&self.txn.context));
        v.push_element("executeData", execute_data);
        for (name, e) in bindings {
            v.push_element(name.clone(), e);
        }
        v
    }
}

impl Engine {
    /// Expands the forEach nodes (each nested in the previous) into iterations: a step path
    /// suffix (`[2][1]`), the forEach bindings of each, and where each bound item lives.
    pub(super) fn iterations(
        &self,
        cx: StepCtx<'_>,
        node: &ExecNode,
    ) -> Result<Iterations, Failure> {
        if let Some(located) = self.located_iterations(cx, node)? {
            return Ok(located);
        }
        let mut iters: Vec<Iteration> = vec![Iteration::default()];
        for f in &node.for_each {
            let mut next = Vec::new();
            for Iteration {
                suffix,
                bindings,
                origins,
            } in iters
            {
                let base = match &f.root {
                    Scope::Data | Scope::ProcedureData => Some(Origin {
                        scope: f.root.clone(),
                        indices: Vec::new(),
                    }),
                    Scope::Named(outer) => bindings
                        .iter()
                        .rposition(|(n, _)| n == outer)
                        .and_then(|i| origins[i].clone()),
                    _ => None,
                };
                let nodes = self.for_each_nodes(cx, &bindings, node, f)?;
                if nodes.is_empty() {
                    match f.if_null {
                        IfNull::Fail if cx.txn.mode == RunMode::Execute => {
                            return Err(Failure::data(
                                cx.step,
                                format!(
                                    "forEach `{}`: {} selects nothing \
                                     (set ifNull=\"skip\" to allow none)",
                                    f.name,
                                    describe(&f.root, f.path.as_ref())
                                ),
                            ));
                        }
                        IfNull::Ignore => {
                            let mut b = bindings.clone();
                            b.push((f.name.clone(), Element::new(f.name.clone())));
                            let mut o = origins.clone();
                            o.push(None);
                            next.push(Iteration {
                                suffix: suffix.clone(),
                                bindings: b,
                                origins: o,
                            });
                        }
                        _ => {}
                    }
                }
                for (i, (e, at)) in nodes.into_iter().enumerate() {
                    let mut b = bindings.clone();
                    b.push((f.name.clone(), e));
                    let mut o = origins.clone();
                    o.push(base.clone().zip(at).map(|(base, at)| base.join(&at)));
                    next.push(Iteration {
                        suffix: format!("{suffix}[{}]", i + 1),
                        bindings: b,
                        origins: o,
                    });
                }
                if next.len() > self.options.max_iterations {
                    return Err(Failure::data(
                        cx.step,
                        format!(
                            "forEach produces more than {} iterations",
                            self.options.max_iterations
                        ),
                    ));
                }
            }
            iters = next;
        }
        Ok(Iterations::Built(iters.into_iter()))
    }

    /// The iterations of a step with one forEach over elements of `data` or
    /// `procedureData`, as locations only ([`Iterations::Located`]), when nothing the step
    /// does changes those scopes while it runs: no filter (it reads the items up front), no
    /// write into the items, no transform into or moving out of a shared scope. `None`:
    /// build them up front.
    fn located_iterations(
        &self,
        cx: StepCtx<'_>,
        node: &ExecNode,
    ) -> Result<Option<Iterations>, Failure> {
        let [f] = node.for_each.as_slice() else {
            return Ok(None);
        };
        let shared = |s: &Scope| matches!(s, Scope::Data | Scope::ProcedureData);
        let writes_shared = |t: &CTransform| {
            shared(&t.destination)
                || (t.mode == Mode::Move && matches!(&t.source, CSource::Node(s, _) if shared(s)))
        };
        let Some(path) = f.path.as_ref() else {
            return Ok(None);
        };
        if !shared(&f.root)
            || !node.write_back.is_empty()
            || node.when.iter().any(|w| matches!(w, CWhen::Filter { .. }))
            || node.before.iter().chain(&node.after).any(writes_shared)
        {
            return Ok(None);
        }
        let mut scratch = Element::new("executeData");
        let locations = cx.with_scope(&mut Vec::new(), &mut scratch, &f.root, |root| {
            path.locate(root)
        })?;
        let Some(depth) = locations.first().map(|l| l.indices.len()) else {
            // None selected: `ifNull` decides, as for any forEach.
            return Ok(None);
        };
        if depth == 0
            || locations
                .iter()
                .any(|l| l.kind != LocationKind::Element || l.indices.len() != depth)
        {
            return Ok(None);
        }
        if locations.len() > self.options.max_iterations {
            return Err(Failure::data(
                cx.step,
                format!(
                    "forEach produces more than {} iterations",
                    self.options.max_iterations
                ),
            ));
        }
        let mut flat = Vec::with_capacity(locations.len() * depth);
        for l in locations {
            flat.extend_from_slice(&l.indices);
        }
        Ok(Some(Iterations::Located {
            name: f.name.clone(),
            scope: f.root.clone(),
            depth,
            flat,
            next: 0,
        }))
    }

    /// The nodes one forEach iterates over, after the step's filters for it, each with its
    /// child indices under the forEach's root when it is an element there.
    fn for_each_nodes(
        &self,
        cx: StepCtx<'_>,
        bindings: &Bindings,
        node: &ExecNode,
        f: &CForEach,
    ) -> Result<Vec<Located>, Failure> {
        let mut scratch = Element::new("executeData");
        let mut b = bindings.clone();
        let mut nodes = cx.with_scope(&mut b, &mut scratch, &f.root, |root| {
            extract_located(root, f.path.as_ref())
        })?;
        for w in &node.when {
            let CWhen::Filter { for_each, script } = w else {
                continue;
            };
            if *for_each != f.name || nodes.is_empty() {
                continue;
            }
            // One conversion of the data scopes for all items.
            let vars = cx.vars(bindings, &node.execute_data);
            let engine = self.catalog.script_engine();
            let mut kept = Vec::with_capacity(nodes.len());
            for (n, at) in nodes {
                let item = crate::data::json::to_json(&n);
                if engine
                    .eval_filter(script, &vars, &item)
                    .map_err(|e| script_failure(cx.step, &e))?
                {
                    kept.push((n, at));
                }
            }
            nodes = kept;
        }
        Ok(nodes)
    }

    /// Evaluates conditions; all must hold. forEach filters were applied when the
    /// iterations were built.
    pub(super) fn check(
        &self,
        cx: StepCtx<'_>,
        bindings: &Bindings,
        when: &[CWhen],
        execute_data: &Element,
    ) -> Result<bool, Failure> {
        for w in when {
            let ok = match w {
                CWhen::Exists(scope, path) | CWhen::Missing(scope, path) => {
                    let mut scratch = execute_data.clone();
                    let mut b = bindings.clone();
                    let found = cx.with_scope(&mut b, &mut scratch, scope, |root| match path {
                        None => true,
                        Some(p) => !p.select(root).is_empty(),
                    })?;
                    matches!(w, CWhen::Exists(..)) == found
                }
                CWhen::Case { select, case } => lock(&cx.inv.selects)
                    .get(select)
                    .map(|c| c == case)
                    .unwrap_or(false),
                CWhen::Expr(script) => {
                    let vars = cx.vars(bindings, execute_data);
                    self.catalog
                        .script_engine()
                        .eval_condition(script, &vars)
                        .map_err(|e| script_failure(cx.step, &e))?
                }
                CWhen::Filter { .. } => true,
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Applies transforms in order. Returns false when an `ifNull="skip"` source was missing.
    /// In a dry run, what cannot be known yet is added to `unresolved` instead of failing.
    pub(super) async fn transforms(
        &self,
        cx: StepCtx<'_>,
        bindings: &mut Bindings,
        ed: &mut Element,
        list: &[CTransform],
        unresolved: &mut Vec<String>,
    ) -> Result<bool, Failure> {
        for t in list {
            let nodes = match self.transform_source(cx, bindings, ed, &t.source)? {
                Sourced::Nodes(nodes) => nodes,
                Sourced::Missing(whats) => {
                    if cx.txn.mode == RunMode::Plan {
                        if t.if_null == IfNull::Fail {
                            unresolved.extend(whats);
                        }
                        continue;
                    }
                    match t.if_null {
                        IfNull::Fail => return Err(missing_source(cx.step, &whats)),
                        IfNull::Ignore => continue,
                        IfNull::Skip => return Ok(false),
                    }
                }
                Sourced::Unknown(why) => {
                    unresolved.push(why);
                    continue;
                }
            };
            let nodes = match &t.xsl {
                None => nodes,
                Some(xsl) => {
                    let mut out = Vec::new();
                    for node in nodes {
                        out.extend(apply_xsl(cx, xsl, node).await?);
                    }
                    if out.is_empty() {
                        if xsl.allow_null {
                            continue; // allowNullTransform: the target stays as it is
                        }
                        return Err(Failure::data(
                            cx.step,
                            format!(
                                "the xsl:template at {} produced no element; \
                                 allowNullTransform=\"1\" lets an empty result leave the target untouched",
                                xsl.at
                            ),
                        ));
                    }
                    out
                }
            };
            if t.mode == Mode::Move {
                if let CSource::Node(scope, Some(path)) = &t.source {
                    cx.with_scope(bindings, ed, scope, |root| remove(root, path))?;
                }
            }
            // A template's or expression's value has no name of its own (an XSL result
            // does: it is the element the stylesheet made).
            let computed = t.xsl.is_none() && !matches!(t.source, CSource::Node(..));
            for node in nodes {
                let dest = t.dest_path.as_ref();
                cx.with_scope(bindings, ed, &t.destination, |root| {
                    if computed {
                        place_value(root, dest, node, t.mode)
                    } else {
                        place(root, dest, node, t.mode)
                    }
                })?
                .map_err(|e| {
                    let at = dest.map(|d| d.as_str()).unwrap_or("");
                    Failure::data(cx.step, format!("{} {at}: {e}", t.destination))
                })?;
            }
        }
        Ok(true)
    }

    /// The nodes a transform's source yields, or what it missed.
    fn transform_source(
        &self,
        cx: StepCtx<'_>,
        bindings: &mut Bindings,
        ed: &mut Element,
        source: &CSource,
    ) -> Result<Sourced, Failure> {
        let nodes = match source {
            CSource::Node(scope, path) => {
                cx.with_scope(bindings, ed, scope, |root| extract(root, path.as_ref()))?
            }
            CSource::Expr(script) => {
                let vars = cx.vars(bindings, ed);
                match self.catalog.script_engine().eval_value(script, &vars) {
                    Ok(serde_json::Value::Null) => Vec::new(),
                    Ok(v) => {
                        self.taint_expr(cx, bindings, ed, script, &v);
                        let node = crate::data::json::from_json("value", &v).map_err(|e| {
                            Failure::data(cx.step, format!("expression result: {e}"))
                        })?;
                        vec![node]
                    }
                    Err(e) if cx.txn.mode == RunMode::Plan => {
                        return Ok(Sourced::Unknown(format!("expression ({})", e.message())));
                    }
                    Err(e) => return Err(script_failure(cx.step, &e)),
                }
            }
            CSource::Template(parts) => return template(cx, bindings, ed, parts),
        };
        if !nodes.is_empty() {
            return Ok(Sourced::Nodes(nodes));
        }
        // Name what is missing: the node path, or the expression's null.
        Ok(Sourced::Missing(vec![match source {
            CSource::Node(scope, path) => describe(scope, path.as_ref()),
            _ => "the expression's value (null)".to_string(),
        }]))
    }
}

impl Engine {
    /// An expression's value is secret when it depends on a secret: evaluated again over
    /// the scopes with every secret masked, it comes out different (or fails). Its strings
    /// are then learned as secrets, so they are masked wherever they show up.
    fn taint_expr(
        &self,
        cx: StepCtx<'_>,
        bindings: &Bindings,
        ed: &Element,
        script: &crate::script::CompiledScript,
        value: &serde_json::Value,
    ) {
        let redactor = &cx.txn.redactor;
        if redactor.is_empty() {
            return;
        }
        let mask = |e: &Element| {
            let mut e = e.clone();
            redactor.redact_element(&mut e);
            e
        };
        let mut vars = Vars::new();
        vars.push_element("data", &mask(&lock(&cx.inv.data)));
        vars.push_element("procedureData", &mask(&lock(&cx.inv.procedure_data)));
        vars.push_element("context", &mask(&lock(&cx.txn.context)));
        vars.push_element("executeData", &mask(ed));
        for (name, e) in bindings {
            vars.push_element(name.clone(), &mask(e));
        }
        let masked = self.catalog.script_engine().eval_value(script, &vars);
        if masked.as_ref().ok() != Some(value) {
            redactor.learn_json(value);
        }
    }
}

/// Sources larger than this (serialized) are transformed on a blocking thread, so a long
/// transformation does not hold up the runtime's workers; a small one (~15 µs) runs inline,
/// unless another transformation holds libxslt's (process-wide) lock.
const XSL_INLINE_BYTES: usize = 64 * 1024;

/// Runs XSL templates on one source node: its result's top-level elements, in order.
/// When the node holds a secret, the result's values are learned as secrets (unless the
/// same templates give the same result on the masked node).
async fn apply_xsl(
    cx: StepCtx<'_>,
    xsl: &Arc<CXsl>,
    node: Element,
) -> Result<Vec<Element>, Failure> {
    let redactor = &cx.txn.redactor;
    let masked = (!redactor.is_empty() && redactor.contains_secret(&node)).then(|| {
        let mut m = node.clone();
        redactor.redact_element(&mut m);
        m
    });
    let result = run_xsl(cx, xsl, &node).await?;
    if let Some(m) = masked {
        let same = run_xsl(cx, xsl, &m).await.ok().as_ref() == Some(&result);
        if !same {
            for e in &result {
                redactor.learn_json(&crate::data::json::to_json(e));
                for (_, v) in &e.attrs {
                    redactor.learn_value(v);
                }
            }
        }
    }
    Ok(result)
}

async fn run_xsl(
    cx: StepCtx<'_>,
    xsl: &Arc<CXsl>,
    node: &Element,
) -> Result<Vec<Element>, Failure> {
    let source = crate::data::xml::to_string(node);
    let limits = provisio_xslt::Limits::default();
    let inline = if source.len() <= XSL_INLINE_BYTES {
        // Inline only if no other transformation holds libxslt's lock.
        xsl.sheet.try_apply(&source, &limits)
    } else {
        None
    };
    let out = if let Some(out) = inline {
        out
    } else {
        let x = Arc::clone(xsl);
        tokio::task::spawn_blocking(move || x.sheet.apply(&source, &limits))
            .await
            .map_err(|e| {
                Failure::data(
                    cx.step,
                    format!("the xsl:template at {} stopped: {e}", xsl.at),
                )
            })?
    };
    let out = out.map_err(|e| {
        Failure::data(
            cx.step,
            format!("the xsl:template at {} failed: {}", xsl.at, e.message),
        )
    })?;
    // The result's top-level nodes, under one wrapper so they parse as a document.
    let doc = format!("<xsl-result>{out}</xsl-result>");
    let limits = crate::data::xml::Limits {
        max_bytes: limits.max_output + 64,
        ..crate::data::xml::Limits::default()
    };
    let tree = crate::data::xml::parse(&doc, &limits).map_err(|e| {
        Failure::data(
            cx.step,
            format!(
                "the result of the xsl:template at {} cannot be read back: {}",
                xsl.at, e.message
            ),
        )
    })?;
    Ok(tree
        .children
        .into_iter()
        .filter_map(|c| match c {
            crate::data::Node::Element(e) => Some(e),
            crate::data::Node::Text(_) => None,
        })
        .collect())
}

/// What a transform's source gave.
enum Sourced {
    /// The nodes to place (never empty).
    Nodes(Vec<Element>),
    /// Nothing: these paths or placeholders selected nothing.
    Missing(Vec<String>),
    /// A dry run cannot know the value yet (why).
    Unknown(String),
}

/// Fills a text template; names each placeholder that selects nothing.
fn template(
    cx: StepCtx<'_>,
    bindings: &mut Bindings,
    ed: &mut Element,
    parts: &[CPart],
) -> Result<Sourced, Failure> {
    let redactor = &cx.txn.redactor;
    let mut text = String::new();
    let mut missing = Vec::new();
    for part in parts {
        match part {
            CPart::Lit(s) => text.push_str(s),
            CPart::Ref(scope, path) => {
                let path = path.as_ref();
                match cx.with_scope(bindings, ed, scope, |root| string_at(root, path))? {
                    Some(v) => {
                        // The text holds the secret verbatim: knowing the value is enough
                        // to mask it there (and in any message that quotes the text).
                        let name = path.and_then(|p| p.last_name());
                        if name.is_some_and(|n| redactor.is_secret_name(n)) {
                            redactor.learn_value(&v);
                        }
                        text.push_str(&v);
                    }
                    None => missing.push(describe(scope, path)),
                }
            }
        }
    }
    Ok(if missing.is_empty() {
        Sourced::Nodes(vec![Element::with_text("value", text)])
    } else {
        Sourced::Missing(missing)
    })
}

fn missing_source(step: &str, whats: &[String]) -> Failure {
    Failure::data(
        step,
        format!(
            "{} selects nothing (set ifNull=\"ignore\" to allow it, \
             or supply it in the request data)",
            whats.join(", ")
        ),
    )
}

/// The string value of what `path` selects under `root` (of `root` itself without a path).
fn string_at(root: &Element, path: Option<&Path>) -> Option<String> {
    match path {
        None => Some(root.string_value()),
        Some(p) => p.select(root).first().map(selected_string),
    }
}

fn selected_string(s: &Selected<'_>) -> String {
    match s {
        Selected::Element(e) => e.string_value(),
        Selected::Attr { value, .. } => value.to_string(),
        Selected::Text(t) => t.clone(),
    }
}

/// `scope/path`, as errors and plans name a source.
pub(super) fn describe(scope: &Scope, path: Option<&Path>) -> String {
    match path {
        Some(p) => format!("{scope}/{}", p.as_str()),
        None => scope.to_string(),
    }
}
