//! Lowering the defs to the model: every check that needs meaning (names, references,
//! templates, scripts, step kinds), each error located by its field path.

use super::super::rules::{
    self, is_name, is_reserved_scope, is_step_id, read_script_file, valid_list_hint,
};
use super::super::template::{self, is_plain_name, is_single_ref, parse_ref, parse_template};
use super::super::{ParseError, MAX_DEPTH};
use super::de::{List, Lit, Ordered, Strings, Text};
use super::defs::*;
use super::locate::{Block, Locator};
use crate::data::json::from_json;
use crate::data::{Element, IfNull, Mode, Path};
use crate::model::{
    Access, BatchItem, BatchRequest, CallTarget, ExecuteStep, ForEach, Format, InputSpec,
    Namespace, Ordering, Procedure, QueueStep, Repeat, Request, RequestDocument, RequestTarget,
    Scope, Script, ScriptStep, SelectStep, SourceRef, Step, Transform, TransformSource, TryStep,
    When,
};
use fxhash::FxHashSet as FxSet;
use serde_json::{Map as JsonMap, Value as Json};
use std::fmt;

// ---------------------------------------------------------------------------------------

/// Where we are: the block of the current def and its field path, as a chain of borrowed
/// keys (`key` costs nothing; the path is only spelled out to locate or report it).
#[derive(Clone, Copy)]
pub(super) struct At<'p> {
    block: Block,
    /// The parent and the last key; `None` at the root.
    up: Option<(&'p At<'p>, &'p str)>,
}

impl<'p> At<'p> {
    fn root(block: Block) -> At<'static> {
        At { block, up: None }
    }
    fn key(&'p self, k: &'p str) -> At<'p> {
        At {
            block: self.block,
            up: Some((self, k)),
        }
    }
    /// The keys from the root.
    fn path(&self) -> Vec<&'p str> {
        let mut out = Vec::with_capacity(8);
        let mut cur = self.up;
        while let Some((parent, k)) = cur {
            out.push(k);
            cur = parent.up;
        }
        out.reverse();
        out
    }
    fn last(&self) -> Option<&'p str> {
        self.up.map(|(_, k)| k)
    }
    fn dotted(&self) -> String {
        self.path().join(".")
    }
}

pub(super) struct Cx<'a> {
    file: String,
    pub(super) loc: Locator<'a>,
    pub(super) errors: Vec<ParseError>,
    /// The forEach names of the execute step being lowered (scopes it may name).
    for_each_names: Vec<String>,
}

impl<'a> Cx<'a> {
    pub(super) fn new(src: &'a str, file: &str) -> Self {
        Cx {
            file: file.to_string(),
            loc: Locator::new(src),
            errors: Vec::new(),
            for_each_names: Vec::new(),
        }
    }

    /// The source location of a field path (best effort: the deepest key found).
    fn here(&self, at: &At) -> SourceRef {
        let (l, c) = self.loc.find(at.block, &at.path());
        SourceRef::new(&self.file, l, c)
    }

    fn err(&mut self, at: &At, msg: impl fmt::Display, hint: Option<String>) {
        let sref = self.here(at);
        let mut e = ParseError::new(sref, format!("`{}`: {msg}", at.dotted()));
        e.hint = hint;
        self.errors.push(e);
    }

    pub(super) fn namespace(&mut self, d: NamespaceDef, block: Block) -> Option<Namespace> {
        let at = At::root(block);
        let n0 = self.errors.len();
        let name = d.namespace.unwrap_or_default().0.trim().to_string();
        if !is_name(&name) {
            let (msg, hint) = rules::name_error("namespace", &name);
            self.err(&at.key("namespace"), msg, Some(hint));
        }
        let provider_context = match d.provider_context {
            Some(Lit(v)) => self.literal(&at.key("providerContext"), "providerContext", &v),
            None => Element::new("providerContext"),
        };
        let mut procedures = Vec::new();
        let procs = at.key("procedures");
        for (pname, pd) in d.procedures.unwrap_or_default().0 {
            let pat = procs.key(&pname);
            if let Some(p) = self.procedure(&pname, pd, &pat) {
                procedures.push(p);
            }
        }
        if self.errors.len() > n0 {
            return None;
        }
        Some(Namespace {
            name,
            description: d.description.map(|t| t.0),
            provider: d.provider.map(|t| t.0).filter(|s| !s.trim().is_empty()),
            provider_context,
            read_only: d.read_only.unwrap_or(false),
            procedures,
            source_ref: SourceRef::new(&self.file, block.line, block.column),
        })
    }

    fn procedure(&mut self, name: &str, d: ProcedureDef, at: &At) -> Option<Procedure> {
        let n0 = self.errors.len();
        if !is_name(name) {
            let (msg, hint) = rules::name_error("procedure", name);
            self.err(at, msg, Some(hint));
        }
        let mut p = Procedure::new(name);
        p.source_ref = self.here(at);
        p.access = d.access.map(|n| n.0).unwrap_or_default();
        p.kind = d.kind.map(|n| n.0).unwrap_or_default();
        p.description = d.description.map(|t| t.0);
        p.ordering = if d.parallel == Some(false) {
            Ordering::Sequential
        } else {
            Ordering::Parallel
        };
        p.entry = d.entry.map(|t| t.0);
        p.save_data_for_rollback = d.save_data_for_rollback.unwrap_or(false);
        p.resumable = d.resumable.unwrap_or(false);
        let inputs = at.key("inputs");
        for (iname, idef) in d.inputs.unwrap_or_default().0 {
            let iat = inputs.key(&iname);
            if let Some(i) = self.input(&iname, idef, &iat) {
                p.inputs.push(i);
            }
        }
        if let Some(Lit(v)) = d.procedure_data {
            p.procedure_data = self.literal(&at.key("procedureData"), "procedureData", &v);
        }
        let mut ids = FxSet::default();
        p.steps = self.steps(d.steps.unwrap_or_default(), &at.key("steps"), &mut ids);
        (self.errors.len() == n0).then_some(p)
    }

    fn input(&mut self, name: &str, d: InputDef, at: &At) -> Option<InputSpec> {
        if let Err(e) = Path::parse(name) {
            self.err(at, format!("input name: {e}"), None);
            return None;
        }
        if name.trim().is_empty() {
            self.err(at, "empty input name", None);
            return None;
        }
        let mut spec = InputSpec {
            name: name.to_string(),
            required: true,
            ..InputSpec::default()
        };
        let ty = match d {
            InputDef::Short(t) => Some(t),
            InputDef::Full(f) => {
                if f.required == Some(true) && f.default.is_some() {
                    self.err(
                        at,
                        "an input with a `default` is not required",
                        Some("drop `required: true` or the `default`".into()),
                    );
                    return None;
                }
                spec.required = f.required.unwrap_or(f.default.is_none());
                spec.default = f.default.map(|s| s.0);
                spec.secret = f.secret.unwrap_or(false);
                spec.description = f.description.map(|t| t.0);
                f.ty.map(|t| t.0)
            }
        };
        if let Some(t) = &ty {
            if !INPUT_TYPES.contains(&t.as_str()) {
                let hint = valid_list_hint(t, INPUT_TYPES, "types");
                self.err(at, format!("unknown input type `{t}`"), Some(hint));
                return None;
            }
        }
        spec.ty = ty;
        Some(spec)
    }

    /// A literal map → element. Must be a mapping (or empty).
    fn literal(&mut self, at: &At, root: &str, v: &Json) -> Element {
        match v {
            Json::Null => Element::new(root),
            // what `from_json` gives for `{}`, without its bookkeeping (most steps)
            Json::Object(m) if m.is_empty() => Element::new(root),
            Json::Object(_) => match from_json(root, v) {
                Ok(mut e) => {
                    e.name = root.into();
                    if e.depth() > MAX_DEPTH {
                        self.err(
                            at,
                            format!("nesting deeper than {MAX_DEPTH} levels"),
                            Some("flatten the structure".into()),
                        );
                    }
                    e
                }
                Err(e) => {
                    self.err(at, e.to_string(), None);
                    Element::new(root)
                }
            },
            _ => {
                self.err(
                    at,
                    format!("`{root}` must be a mapping"),
                    Some(format!("write `{root}: {{ name: value, … }}`")),
                );
                Element::new(root)
            }
        }
    }

    fn steps(&mut self, d: Ordered<StepDef>, at: &At, ids: &mut FxSet<String>) -> Vec<Step> {
        let mut out = Vec::new();
        for (id, sd) in d.0 {
            let sat = at.key(&id);
            if !is_step_id(&id) {
                self.err(
                    &sat,
                    format!("`{id}` is not a valid step id"),
                    Some("use letters, digits, `_`, `-` and `.`".into()),
                );
                continue;
            }
            if ids.contains(&id) {
                self.err(
                    &sat,
                    format!("step id `{id}` is used twice in this procedure"),
                    Some(
                        "step ids must be unique in a procedure, including try/catch blocks".into(),
                    ),
                );
                continue;
            }
            ids.insert(id.clone());
            if let Some(s) = self.step(&id, sd, &sat, ids) {
                out.push(s);
            }
        }
        out
    }

    fn step(&mut self, id: &str, d: StepDef, at: &At, ids: &mut FxSet<String>) -> Option<Step> {
        let sref = self.here(at);
        let needs = d.needs.clone().unwrap_or_default().0;
        let n0 = self.errors.len();
        for n in &needs {
            if n == id {
                self.err(&at.key("needs"), format!("step `{id}` needs itself"), None);
            }
        }
        if d.script.is_some() {
            if d.queue.is_some() {
                self.err(
                    &at.key("queue"),
                    "a script step cannot be queued",
                    Some("queue a `call:` step instead".into()),
                );
                return None;
            }
            return self
                .script_step(id, d, at, needs, sref, n0)
                .map(Step::Script);
        }
        for (k, present) in [("undo", d.undo.is_some()), ("calls", d.calls.is_some())] {
            if present {
                self.err(
                    &at.key(k),
                    format!("`{k}` belongs to a script step, and this step has no `script`"),
                    Some("add `script: |` with the rhai source, or remove the key".into()),
                );
                return None;
            }
        }
        let exec_keys: Vec<&str> = [
            ("call", d.call.is_some()),
            ("queue", d.queue.is_some()),
            ("with", d.with.is_some()),
            ("output", d.output.is_some()),
            ("forEach", d.for_each.is_some()),
            ("if", d.if_.is_some()),
            ("when", d.when.is_some()),
            ("unless", d.unless.is_some()),
            ("repeat", d.repeat.is_some()),
            ("executeData", d.execute_data.is_some()),
            ("before", d.before.is_some()),
            ("after", d.after.is_some()),
        ]
        .iter()
        .filter(|(_, p)| *p)
        .map(|(k, _)| *k)
        .collect();
        if d.try_.is_some() || d.catch.is_some() {
            if d.select.is_some() {
                self.err(
                    at,
                    "a step cannot have both `try` and `select`",
                    Some("make them two steps".into()),
                );
                return None;
            }
            if let Some(k) = exec_keys.first() {
                self.err(
                    &at.key(k),
                    format!("a `try` step cannot also have `{k}`"),
                    Some("put the call inside the `try:` steps; a try step has only `try`, `catch` and `needs`".into()),
                );
                return None;
            }
            let Some(body) = d.try_ else {
                self.err(
                    &at.key("catch"),
                    "`catch` without `try`",
                    Some("write `try: { … }` before `catch:` in the same step".into()),
                );
                return None;
            };
            let body = self.steps(body, &at.key("try"), ids);
            let catch = self.steps(d.catch.unwrap_or_default(), &at.key("catch"), ids);
            return (self.errors.len() == n0).then(|| {
                Step::Try(TryStep {
                    id: id.to_string(),
                    body,
                    catch,
                    needs,
                    source_ref: sref,
                })
            });
        }
        if let Some(sel) = d.select {
            if let Some(k) = exec_keys.first() {
                self.err(
                    &at.key(k),
                    format!("a `select` step cannot also have `{k}`"),
                    Some("a select step has only `select` and `needs`; use `when: { select: …, case: … }` on other steps".into()),
                );
                return None;
            }
            let sat = at.key("select");
            let scope = self.scope(
                &sat.key("source"),
                sel.source.map(|t| t.0).as_deref(),
                Scope::Data,
            );
            let path = self.opt_path(&sat.key("path"), sel.path.map(|t| t.0));
            let cases: Vec<(String, String)> = sel
                .cases
                .unwrap_or_default()
                .0
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            if cases.is_empty() && sel.default.is_none() {
                self.err(
                    &sat,
                    "a select needs `cases` or a `default`",
                    Some("write `cases: { value: caseName }`".into()),
                );
            }
            return (self.errors.len() == n0).then(|| {
                Step::Select(SelectStep {
                    id: id.to_string(),
                    name: id.to_string(),
                    scope,
                    path,
                    cases,
                    default_case: sel.default.map(|t| t.0),
                    if_null_case: sel.if_null.map(|t| t.0),
                    needs,
                    source_ref: sref,
                })
            });
        }
        self.execute(id, d, at, needs, sref, n0).map(Step::Execute)
    }

    fn execute(
        &mut self,
        id: &str,
        d: StepDef,
        at: &At,
        needs: Vec<String>,
        sref: SourceRef,
        n0: usize,
    ) -> Option<ExecuteStep> {
        let queue = match d.queue.as_ref().map(|t| t.0.as_str()) {
            None => None,
            Some(_) if d.call.is_none() => {
                self.err(
                    &at.key("queue"),
                    "`queue` needs the `call` it queues",
                    Some("write `call: Namespace/Procedure` next to `queue:`".into()),
                );
                None
            }
            Some("suspended") => Some(QueueStep { suspended: true }),
            Some("active") => Some(QueueStep { suspended: false }),
            Some(other) => {
                self.err(
                    &at.key("queue"),
                    format!("`queue: {other}` is neither `suspended` nor `active`"),
                    Some("write `queue: suspended` (runs only if this transaction commits) or `queue: active` (runs whatever its outcome)".into()),
                );
                None
            }
        };
        let call = match d.call {
            None => None,
            Some(Text(c)) => self.call_target(&at.key("call"), &c),
        };
        // the scopes this step's fields may name besides the fixed ones, in any order
        self.for_each_names = match &d.for_each {
            None => Vec::new(),
            Some(ForEachDefs::Items(items)) => items
                .iter()
                .filter_map(|it| it.name.as_ref().map(|t| t.0.clone()))
                .collect(),
            Some(ForEachDefs::Short(items)) => items.iter().map(|(k, _)| k.clone()).collect(),
        };
        // forEach
        let mut for_each = Vec::new();
        let mut filter_whens = Vec::new();
        let mut filters = 0;
        match d.for_each {
            None => {}
            Some(ForEachDefs::Items(items)) => {
                let fe = at.key("forEach");
                for (i, it) in items.into_iter().enumerate() {
                    let nth = i.to_string();
                    let fat = fe.key(&nth);
                    let name = it.name.unwrap_or_default().0;
                    if !self.for_each_name_ok(&fat, &name) {
                        continue;
                    }
                    let root = self.scope(
                        &fat.key("root"),
                        it.root.map(|t| t.0).as_deref(),
                        Scope::Data,
                    );
                    self.check_foreach_root(&fat, &root);
                    let path = self.opt_path(&fat.key("path"), it.path.map(|t| t.0));
                    if let Some(Text(f)) = it.filter {
                        let origin = self.item_value_origin(&at.key("forEach"), "filter", filters);
                        filters += 1;
                        if f.trim().is_empty() {
                            self.err(
                                &fat,
                                "`filter` is empty",
                                Some(
                                    "write a rhai condition on `item`, e.g. `item.enabled == true`"
                                        .into(),
                                ),
                            );
                        }
                        filter_whens.push(When::Filter {
                            for_each: name.clone(),
                            script: self.located_script(f, origin),
                        });
                    }
                    for_each.push(ForEach {
                        name,
                        root,
                        path,
                        if_null: it.if_null.map(|n| n.0).unwrap_or_default(),
                    });
                }
            }
            Some(ForEachDefs::Short(items)) => {
                let fe = at.key("forEach");
                for (name, r) in items {
                    let fat = fe.key(&name);
                    if !self.for_each_name_ok(&fat, &name) {
                        continue;
                    }
                    match self.reference(&fat, &r) {
                        Some((root, path)) => {
                            self.check_foreach_root(&fat, &root);
                            for_each.push(ForEach {
                                name,
                                root,
                                path,
                                if_null: IfNull::Fail,
                            });
                        }
                        None => continue,
                    }
                }
            }
        }
        for (i, f) in for_each.iter().enumerate() {
            if for_each[..i].iter().any(|g| g.name == f.name) {
                self.err(
                    &at.key("forEach"),
                    format!("forEach name `{}` is used twice", f.name),
                    None,
                );
            }
        }
        // when / unless / if / filters
        let mut when = filter_whens;
        when.extend(self.conditions(at, d.if_, d.when, d.unless));
        // repeat
        let repeat = match d.repeat {
            None => None,
            Some(RepeatDef::Short(r)) => {
                self.reference(&at.key("repeat"), &r)
                    .map(|(scope, path)| Repeat {
                        scope,
                        path,
                        if_null: IfNull::Fail,
                    })
            }
            Some(RepeatDef::Full(f)) => {
                let rat = at.key("repeat");
                let scope = self.scope(
                    &rat.key("source"),
                    f.source.map(|t| t.0).as_deref(),
                    Scope::Data,
                );
                let path = self.opt_path(&rat.key("path"), f.path.map(|t| t.0));
                Some(Repeat {
                    scope,
                    path,
                    if_null: f.if_null.map(|n| n.0).unwrap_or_default(),
                })
            }
        };
        // executeData literal + `with` constants
        let mut ed = match d.execute_data {
            None => Json::Object(JsonMap::new()),
            Some(Lit(Json::Null)) => Json::Object(JsonMap::new()),
            Some(Lit(v @ Json::Object(_))) => v,
            Some(_) => {
                self.err(
                    &at.key("executeData"),
                    "`executeData` must be a mapping",
                    Some("write `executeData: { name: value, … }`".into()),
                );
                Json::Object(JsonMap::new())
            }
        };
        let mut before = self.transforms(at, "before", d.before, Scope::Data, Scope::ExecuteData);
        let mut after = Vec::new();
        let with = at.key("with");
        for (k, Lit(v)) in d.with.unwrap_or_default().0 {
            let wat = with.key(&k);
            self.with_entry(&wat, &k, v, &mut ed, &mut before);
        }
        match d.output {
            None => {}
            Some(OutputDef::Map(m)) => {
                let out = at.key("output");
                for (k, Lit(v)) in m.0 {
                    let oat = out.key(&k);
                    self.output_entry(&oat, &k, v, &mut after);
                }
            }
            Some(OutputDef::Path(_)) => self.err(
                &at.key("output"),
                "the `output` of a call step is a mapping",
                Some("write `output: { dataKey: \"{{ executeData.x }}\" }`; a path is only for script steps".into()),
            ),
        }
        after.extend(self.transforms(at, "after", d.after, Scope::ExecuteData, Scope::Data));
        let execute_data = self.literal(&at.key("executeData"), "executeData", &ed);
        self.for_each_names.clear();
        (self.errors.len() == n0).then(|| ExecuteStep {
            id: id.to_string(),
            call,
            for_each,
            when,
            repeat,
            execute_data,
            before,
            after,
            needs,
            source_ref: sref,
            sensitive: None,
            impersonate: Default::default(),
            pass_credentials: false,
            queue,
        })
    }

    /// Whether `name` may name a forEach variable (else the error is recorded).
    fn for_each_name_ok(&mut self, at: &At, name: &str) -> bool {
        let ok = is_plain_name(name) && !is_reserved_scope(name);
        if !ok {
            self.err(
                at,
                format!("`{name}` cannot name a forEach variable"),
                Some(format!(
                    "use a plain name that is not one of {}",
                    rules::SCOPE_NAMES.join(", ")
                )),
            );
        }
        ok
    }

    fn check_foreach_root(&mut self, at: &At, root: &Scope) {
        if matches!(root, Scope::ExecuteData | Scope::Context) {
            self.err(
                at,
                format!("a forEach cannot iterate over `{root}`"),
                Some("iterate over `data`, `procedureData` or an earlier forEach name".into()),
            );
        }
    }

    fn call_target(&mut self, at: &At, c: &str) -> Option<CallTarget> {
        let hint = "write `call: Namespace/Procedure`, e.g. `call: DNS Provider/CreateZone`";
        let Some((ns, pr)) = c.rsplit_once('/') else {
            self.err(at, format!("`{c}` names no namespace"), Some(hint.into()));
            return None;
        };
        let (ns, pr) = (ns.trim(), pr.trim());
        // The namespace part may itself hold `/` (split at the last one); the compiler
        // reports a namespace that does not exist.
        if ns.is_empty() || !is_name(pr) {
            self.err(
                at,
                format!("`{c}` is not `Namespace/Procedure`"),
                Some(hint.into()),
            );
            return None;
        }
        Some(CallTarget {
            namespace: ns.to_string(),
            procedure: pr.to_string(),
        })
    }

    /// A scope name field; `default` when absent.
    fn scope(&mut self, at: &At, s: Option<&str>, default: Scope) -> Scope {
        match s.map(str::trim) {
            None => default,
            Some(s) if is_plain_name(s) => {
                let scope = Scope::parse(s);
                if let Scope::Named(n) = &scope {
                    if !self.for_each_names.iter().any(|f| f == n) {
                        let mut valid = rules::SCOPE_NAMES.to_vec();
                        valid.extend(self.for_each_names.iter().map(String::as_str));
                        let hint = valid_list_hint(n, &valid, "scopes");
                        self.err(at, format!("unknown scope `{n}`"), Some(hint));
                        return default;
                    }
                }
                scope
            }
            Some(s) => {
                self.err(
                    at,
                    format!("`{s}` is not a scope"),
                    Some(format!(
                        "use {} or a forEach name",
                        rules::SCOPE_NAMES.join(", ")
                    )),
                );
                default
            }
        }
    }

    /// An optional path field, validated.
    fn opt_path(&mut self, at: &At, p: Option<String>) -> Option<String> {
        let p = p?;
        let t = p.trim();
        if t.is_empty() {
            return None;
        }
        match Path::parse(t) {
            Ok(_) => Some(t.to_string()),
            Err(e) => {
                self.err(at, e.to_string(), None);
                None
            }
        }
    }

    /// A ref written as `data/x`, `data.x` or `{{ data.x }}`.
    fn reference(&mut self, at: &At, r: &str) -> Option<(Scope, Option<String>)> {
        if let Some(sp) = is_single_ref(r) {
            return Some(sp);
        }
        if r.contains("{{") {
            let msg = match parse_template(r) {
                Err(e) => e,
                Ok(_) => format!("`{r}` must be one reference, not a template"),
            };
            self.err(
                at,
                msg,
                Some("write a scope and a path, e.g. `data/users/user`".into()),
            );
            return None;
        }
        match parse_ref(r) {
            Ok(sp) => Some(sp),
            Err(e) => {
                self.err(
                    at,
                    e,
                    Some("write a scope and a path, e.g. `data/users/user`".into()),
                );
                None
            }
        }
    }

    /// The `before:`/`after:` list (`key`) of a step.
    fn transforms(
        &mut self,
        at: &At,
        key: &str,
        d: Option<List<TransformDef>>,
        src_default: Scope,
        dst_default: Scope,
    ) -> Vec<Transform> {
        let list = at.key(key);
        let mut out = Vec::new();
        let mut exprs = 0;
        for (i, t) in d.unwrap_or_default().0.into_iter().enumerate() {
            let nth = i.to_string();
            let origin = t.expr.is_some().then(|| {
                exprs += 1;
                self.item_value_origin(&list, "expr", exprs - 1)
            });
            let tat = list.key(&nth);
            if let Some(t) =
                self.transform(&tat, t, src_default.clone(), dst_default.clone(), origin)
            {
                out.push(t);
            }
        }
        out
    }

    fn transform(
        &mut self,
        at: &At,
        t: TransformDef,
        src_default: Scope,
        dst_default: Scope,
        expr_origin: Option<SourceRef>,
    ) -> Option<Transform> {
        let n0 = self.errors.len();
        let sref = self.here(at);
        if t.expr.is_some() {
            if let Some(k) = [
                ("source", t.source.is_some()),
                ("sourcePath", t.source_path.is_some()),
                ("template", t.template.is_some()),
            ]
            .iter()
            .find(|(_, p)| *p)
            .map(|(k, _)| *k)
            {
                // List items are not located by key; the `expr` value is.
                let mut e = ParseError::new(
                    expr_origin.unwrap_or(sref),
                    format!(
                        "`{}`: a transform has either `expr` or `{k}`, not both",
                        at.dotted()
                    ),
                );
                e.hint =
                    Some("`expr` computes the value; source/sourcePath/template select it".into());
                self.errors.push(e);
                return None;
            }
        }
        let source = match (t.expr, t.template) {
            (Some(Text(e)), _) => {
                if e.trim().is_empty() {
                    self.err(&at.key("expr"), "`expr` is empty", None);
                }
                if t.mode.map(|n| n.0) == Some(Mode::Move) {
                    self.err(
                        &at.key("mode"),
                        "mode `move` needs a source node, not an expression",
                        None,
                    );
                }
                TransformSource::Expr(
                    self.located_script(e, expr_origin.unwrap_or_else(|| sref.clone())),
                )
            }
            (None, Some(Text(tpl))) => {
                if t.source.is_some() || t.source_path.is_some() {
                    self.err(
                        at,
                        "a transform has either `template` or `source`/`sourcePath`, not both",
                        Some("drop one of them".into()),
                    );
                }
                if let Err(e) = parse_template(&tpl) {
                    self.err(&at.key("template"), e, None);
                }
                TransformSource::Template(tpl)
            }
            (None, None) => {
                let scope = self.scope(
                    &at.key("source"),
                    t.source.map(|t| t.0).as_deref(),
                    src_default,
                );
                let path = self.opt_path(&at.key("sourcePath"), t.source_path.map(|t| t.0));
                TransformSource::Node { scope, path }
            }
        };
        let destination = self.scope(
            &at.key("destination"),
            t.destination.map(|t| t.0).as_deref(),
            dst_default,
        );
        let destination_path =
            self.opt_path(&at.key("destinationPath"), t.destination_path.map(|t| t.0));
        (self.errors.len() == n0).then(|| Transform {
            source,
            destination,
            destination_path,
            mode: t.mode.map(|n| n.0).unwrap_or_default(),
            if_null: t.if_null.map(|n| n.0).unwrap_or_default(),
            source_ref: sref,
            xsl: None,
            allow_null_transform: false,
        })
    }

    /// One `with:` entry: a ref → merge transform, a template → template transform,
    /// a constant → into the executeData literal; maps holding placeholders recurse.
    fn with_entry(
        &mut self,
        at: &At,
        key: &str,
        v: Json,
        ed: &mut Json,
        before: &mut Vec<Transform>,
    ) {
        if let Some(script) = self.expr_value(at, &v) {
            if let (Some(p), Some(script)) = (self.dest_key(at, key), script) {
                before.push(expr_transform(script, Scope::ExecuteData, p, self.here(at)));
            }
            return;
        }
        if has_placeholders(&v) {
            if let Some(p) = self.dest_key(at, key) {
                self.placeholder_transforms(at, &p, v, Scope::ExecuteData, Some(ed), before);
            }
            return;
        }
        let segs: Vec<&str> = key.split('/').collect();
        if segs.iter().any(|s| !is_plain_name(s)) {
            self.err(
                at,
                format!("`{key}` cannot hold a constant"),
                Some("a constant's key is a plain element name (or `a/b` chain)".into()),
            );
            return;
        }
        insert_nested(ed, &segs, v);
    }

    fn output_entry(&mut self, at: &At, key: &str, v: Json, after: &mut Vec<Transform>) {
        let Some(p) = self.dest_key(at, key) else {
            return;
        };
        if let Some(script) = self.expr_value(at, &v) {
            if let Some(script) = script {
                after.push(expr_transform(script, Scope::Data, p, self.here(at)));
            }
            return;
        }
        match v {
            Json::Null | Json::Array(_) => self.err(
                at,
                "an `output` value is a `{{ scope.path }}` reference or a text template",
                Some("write e.g. `zoneId: \"{{ executeData.id }}\"`".into()),
            ),
            Json::Object(_) if !has_placeholders(&v) => self.err(
                at,
                "an `output` value is a `{{ scope.path }}` reference or a text template",
                Some("write e.g. `zoneId: \"{{ executeData.id }}\"`".into()),
            ),
            other => self.placeholder_transforms(at, &p, other, Scope::Data, None, after),
        }
    }

    /// A `{ $expr: "<rhai>" }` value: `None` when `v` is something else, `Some(None)` when it
    /// is a malformed one (the error is recorded).
    fn expr_value(&mut self, at: &At, v: &Json) -> Option<Option<Script>> {
        let Json::Object(m) = v else {
            return None;
        };
        let e = m.get("$expr")?;
        if m.len() > 1 {
            let others: Vec<&str> = m
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "$expr")
                .collect();
            self.err(
                at,
                format!("`$expr` stands alone; this mapping also has `{}`", others.join("`, `")),
                Some("write `key: { $expr: \"…\" }` and build a map inside the expression: `#{ a: 1, b: data.x }`".into()),
            );
            return Some(None);
        }
        match e {
            Json::String(src) if !src.trim().is_empty() => {
                let origin = self.value_origin(&at.key("$expr"));
                Some(Some(self.located_script(src.clone(), origin)))
            }
            _ => {
                self.err(
                    &at.key("$expr"),
                    "`$expr` holds a rhai expression as a string",
                    Some(
                        "write e.g. `upn: { $expr: 'lower(data.first) + \"@\" + data.domain' }`"
                            .into(),
                    ),
                );
                Some(None)
            }
        }
    }

    /// A step's `if:`, `when:` and `unless:` conditions, in that order.
    fn conditions(
        &mut self,
        at: &At,
        if_: Option<Strings>,
        when: Option<WhenDefs>,
        unless: Option<Strings>,
    ) -> Vec<When> {
        let mut out = self.if_conditions(at, if_);
        for item in when.unwrap_or_default().0 {
            match item {
                WhenItem::Ref(r) => {
                    if let Some((scope, path)) = self.reference(&at.key("when"), &r) {
                        out.push(When::Exists { scope, path });
                    }
                }
                WhenItem::Case(c) => out.push(When::Case {
                    select: c.select.unwrap_or_default().0,
                    case: c.case.unwrap_or_default().0,
                }),
            }
        }
        for r in unless.unwrap_or_default().0 {
            if let Some((scope, path)) = self.reference(&at.key("unless"), &r) {
                out.push(When::Missing { scope, path });
            }
        }
        out
    }

    /// The `if:` conditions of a step (one string or a list of them).
    fn if_conditions(&mut self, at: &At, d: Option<Strings>) -> Vec<When> {
        let Some(Strings(list)) = d else {
            return Vec::new();
        };
        let iat = at.key("if");
        let single = list.len() == 1;
        let mut out = Vec::new();
        for (i, src) in list.into_iter().enumerate() {
            if src.trim().is_empty() {
                self.err(
                    &iat,
                    "an empty `if` condition",
                    Some("write a rhai condition such as `data.count > 1`".into()),
                );
                continue;
            }
            let origin = if single {
                self.value_origin(&iat)
            } else {
                self.list_item_origin(&iat, i)
            };
            out.push(When::Expr(self.located_script(src, origin)));
        }
        out
    }

    /// A script step: `script:` with `undo`, `calls`, `output` (a path under data), `if`,
    /// `when`, `unless` and `needs`.
    fn script_step(
        &mut self,
        id: &str,
        d: StepDef,
        at: &At,
        needs: Vec<String>,
        sref: SourceRef,
        n0: usize,
    ) -> Option<ScriptStep> {
        let others = [
            ("call", d.call.is_some()),
            ("try", d.try_.is_some()),
            ("catch", d.catch.is_some()),
            ("select", d.select.is_some()),
            ("with", d.with.is_some()),
            ("forEach", d.for_each.is_some()),
            ("repeat", d.repeat.is_some()),
            ("executeData", d.execute_data.is_some()),
            ("before", d.before.is_some()),
            ("after", d.after.is_some()),
        ];
        if let Some((k, _)) = others.iter().find(|(_, p)| *p) {
            self.err(
                &at.key(k),
                format!("a `script` step cannot also have `{k}`"),
                Some("a script step has `script`, `undo`, `calls`, `output`, `if`, `when`, `unless` and `needs`; call procedures from the script with `call_procedure` (listed in `calls:`), or make two steps".into()),
            );
            return None;
        }
        let script = d.script.and_then(|s| self.script(&at.key("script"), s))?;
        let undo = match d.undo {
            None => None,
            Some(u) => Some(self.script(&at.key("undo"), u)?),
        };
        let mut calls = Vec::new();
        for c in d.calls.unwrap_or_default().0 {
            if let Some(t) = self.call_target(&at.key("calls"), &c) {
                calls.push(t);
            }
        }
        let output = match d.output {
            None => None,
            Some(OutputDef::Path(p)) => {
                let p = p.trim().to_string();
                if p == "data" || p.starts_with("data/") || p.starts_with("data.") {
                    self.err(
                        &at.key("output"),
                        format!("`output` is a path under data; `{p}` names `data` again"),
                        Some("write `output: results/made` for data/results/made".into()),
                    );
                    None
                } else {
                    self.opt_path(&at.key("output"), Some(p))
                }
            }
            Some(OutputDef::Map(_)) => {
                self.err(
                    &at.key("output"),
                    "the `output` of a script step is a path under data",
                    Some("write `output: results/made`; without `output` the script returns a map merged into data".into()),
                );
                None
            }
        };
        let when = self.conditions(at, d.if_, d.when, d.unless);
        (self.errors.len() == n0).then(|| ScriptStep {
            id: id.to_string(),
            script,
            undo,
            calls,
            when,
            output,
            needs,
            source_ref: sref,
        })
    }

    /// A `script:`/`undo:` value: its text located in this file, or the file it names
    /// (read now, relative to this file's folder).
    fn script(&mut self, at: &At, d: ScriptDef) -> Option<Script> {
        match d {
            ScriptDef::Text(src) => {
                if src.trim().is_empty() {
                    self.err(
                        at,
                        "an empty script",
                        Some("write the rhai source, usually as a `|` block".into()),
                    );
                    return None;
                }
                Some(self.located_script(src, self.value_origin(at)))
            }
            ScriptDef::File(name) => {
                let file = self.file.clone();
                let sref = self.here(at);
                match read_script_file(&file, &name, sref) {
                    Ok(s) => Some(s),
                    Err(mut e) => {
                        e.message = format!("`{}`: {}", at.dotted(), e.message);
                        self.errors.push(e);
                        None
                    }
                }
            }
        }
    }

    /// The block of a field path (the deepest key found).
    fn block_of(&self, at: &At) -> Block {
        let mut b = at.block;
        for k in at.path() {
            match self.loc.child(b, k) {
                Some(c) => b = c,
                None => break,
            }
        }
        b
    }

    /// A script whose text starts at `origin` in this file. When it starts a line (a block
    /// scalar, `|` or `>`), YAML stripped that line's indentation from every line of the
    /// text, so errors on later lines add it back to their column.
    fn located_script(&self, src: impl Into<String>, origin: SourceRef) -> Script {
        let line = (origin.line as usize)
            .checked_sub(1)
            .and_then(|n| self.loc.lines.get(n).copied())
            .unwrap_or("");
        let leading = line.len() - line.trim_start_matches(' ').len();
        let starts_the_line = origin.column as usize == leading + 1 && leading < line.len();
        let indent = if starts_the_line { leading as u32 } else { 0 };
        Script::new(src, origin).with_indent(indent)
    }

    /// Where the value of the key `at` names starts (script origins): a block scalar
    /// (`|`, `>`) on its first non-blank line, at its indentation; a quoted string after
    /// its quote; a plain one at its first character. Falls back to the key.
    fn value_origin(&self, at: &At) -> SourceRef {
        let b = self.block_of(at);
        let key = at.last().unwrap_or("");
        self.value_after_key(b.line, b.column, key)
    }

    /// The origin of the value of the `nth` `key:` (0-based) inside the list at `list`
    /// (`forEach` items' `filter`, `before`/`after` items' `expr`).
    fn item_value_origin(&self, list: &At, key: &str, nth: usize) -> SourceRef {
        let b = self.block_of(list);
        let stop = b.end.min(self.loc.lines.len());
        let mut from = (b.line as usize).saturating_sub(1);
        let mut seen = 0;
        while let Some((n, col)) = self.loc.key_anywhere(from, stop, key) {
            if seen == nth {
                return self.value_after_key(n as u32 + 1, col as u32 + 1, key);
            }
            seen += 1;
            from = n + 1;
        }
        SourceRef::new(&self.file, b.line, b.column)
    }

    /// The origin of item `i` of a block list (`- "…"` lines) under the key `at` names;
    /// falls back to the key's value.
    fn list_item_origin(&self, at: &At, i: usize) -> SourceRef {
        let b = self.block_of(at);
        let stop = b.end.min(self.loc.lines.len());
        let items = (b.line as usize..stop).filter_map(|n| {
            let line = self.loc.lines[n];
            let t = line.trim_start_matches(' ');
            t.strip_prefix("- ").map(|rest| {
                let rest_at = line.len() - rest.len();
                let skip = rest.len() - rest.trim_start_matches(' ').len();
                (n, rest_at + skip)
            })
        });
        match items.into_iter().nth(i) {
            Some((n, v)) => self.value_start(n, v),
            None => self.value_origin(at),
        }
    }

    /// The origin of the value after `key:` on 1-based line `l`, the key at byte column `c`.
    fn value_after_key(&self, l: u32, c: u32, key: &str) -> SourceRef {
        let fallback = SourceRef::new(&self.file, l, c);
        let Some(n) = (l as usize).checked_sub(1) else {
            return fallback;
        };
        let Some(line) = self.loc.lines.get(n).copied() else {
            return fallback;
        };
        let start = (c as usize).saturating_sub(1);
        let Some(k) = line.get(start..).and_then(|r| r.find(key)) else {
            return fallback;
        };
        let bytes = line.as_bytes();
        let mut v = start + k + key.len();
        if matches!(bytes.get(v), Some(b'"' | b'\'')) {
            v += 1;
        }
        while bytes.get(v) == Some(&b' ') {
            v += 1;
        }
        if bytes.get(v) != Some(&b':') {
            return fallback;
        }
        v += 1;
        while matches!(bytes.get(v), Some(b' ' | b'\t')) {
            v += 1;
        }
        self.value_start(n, v)
    }

    /// The origin of a value starting at byte `v` of 0-based line `n`.
    fn value_start(&self, n: usize, v: usize) -> SourceRef {
        let line = self.loc.lines.get(n).copied().unwrap_or("");
        let bytes = line.as_bytes();
        let mut v = v.min(line.len());
        match bytes.get(v) {
            Some(b'|' | b'>') => {
                for (m, next) in self.loc.lines.iter().enumerate().skip(n + 1) {
                    if next.trim().is_empty() {
                        continue;
                    }
                    let ind = next.len() - next.trim_start_matches([' ', '\t']).len();
                    return SourceRef::new(&self.file, m as u32 + 1, ind as u32 + 1);
                }
            }
            Some(b'"' | b'\'') => v += 1,
            _ => {}
        }
        let column = line.get(..v).map_or(v, |p| p.chars().count());
        SourceRef::new(&self.file, n as u32 + 1, column as u32 + 1)
    }

    /// The destination path of a `with:`/`output:` key, validated.
    fn dest_key(&mut self, at: &At, key: &str) -> Option<String> {
        let k = key.trim();
        if k.is_empty() {
            self.err(at, "empty key", None);
            return None;
        }
        match Path::parse(k) {
            Ok(_) => Some(k.to_string()),
            Err(e) => {
                self.err(at, e.to_string(), None);
                None
            }
        }
    }

    /// Transforms for a value with placeholders written at destination path `dest`.
    /// Constants nested next to placeholders in a map go into `constants` (the
    /// executeData literal) when given, else become literal templates.
    fn placeholder_transforms(
        &mut self,
        at: &At,
        dest: &str,
        v: Json,
        destination: Scope,
        mut constants: Option<&mut Json>,
        out: &mut Vec<Transform>,
    ) {
        let sref = self.here(at);
        match v {
            Json::String(s) => {
                let source = if let Some((scope, path)) = is_single_ref(&s) {
                    TransformSource::Node { scope, path }
                } else {
                    if let Err(e) = parse_template(&s) {
                        self.err(
                            at,
                            e,
                            Some("placeholders look like `{{ data.name }}`".into()),
                        );
                        return;
                    }
                    TransformSource::Template(s)
                };
                out.push(Transform {
                    source,
                    destination,
                    destination_path: Some(dest.to_string()),
                    mode: Mode::Merge,
                    if_null: IfNull::Fail,
                    source_ref: sref,
                    xsl: None,
                    allow_null_transform: false,
                });
            }
            Json::Object(m) => {
                for (k, x) in m {
                    let sub = format!("{dest}/{k}");
                    let kat = at.key(&k);
                    if !is_plain_name(&k) {
                        self.err(&kat, format!("`{k}` is not a plain element name"), None);
                        continue;
                    }
                    // `{ $expr: … }` at any depth computes the value at its path
                    if let Some(script) = self.expr_value(&kat, &x) {
                        if let Some(script) = script {
                            let here = self.here(&kat);
                            out.push(expr_transform(script, destination.clone(), sub, here));
                        }
                        continue;
                    }
                    if has_placeholders(&x) {
                        self.placeholder_transforms(
                            &kat,
                            &sub,
                            x,
                            destination.clone(),
                            constants.as_deref_mut(),
                            out,
                        );
                    } else if let Some(c) = constants.as_deref_mut() {
                        let segs: Vec<&str> = sub.split('/').collect();
                        if segs.iter().all(|s| is_plain_name(s)) {
                            insert_nested(c, &segs, x);
                        } else {
                            self.err(
                                &kat,
                                format!("`{sub}` cannot hold a constant"),
                                Some(
                                    "a constant's key is a plain element name (or `a/b` chain)"
                                        .into(),
                                ),
                            );
                        }
                    } else {
                        self.placeholder_transforms(
                            &kat,
                            &sub,
                            Json::String(json_text(&x)),
                            destination.clone(),
                            None,
                            out,
                        );
                    }
                }
            }
            Json::Array(_) => self.err(
                at,
                "placeholders inside lists are not supported",
                Some("move the list into data and reference it: `key: \"{{ data.list }}\"`".into()),
            ),
            other => {
                // a non-string scalar in `output`: a literal text template
                self.placeholder_transforms(
                    at,
                    dest,
                    Json::String(json_text(&other)),
                    destination,
                    None,
                    out,
                );
            }
        }
    }

    pub(super) fn request(
        &mut self,
        d: RequestDef,
        format: Format,
        block: Block,
    ) -> Option<RequestDocument> {
        let at = At::root(block);
        let sref = SourceRef::new(&self.file, 1, 1);
        let target = match (d.call, d.procedure) {
            (Some(_), Some(_)) => {
                self.err(
                    &at.key("procedure"),
                    "a request has either `call` or `procedure`, not both",
                    Some("`call: Namespace/Procedure` runs a public procedure; `procedure: { steps: … }` is a trusted request".into()),
                );
                return None;
            }
            (None, None) => {
                self.errors.push(
                    ParseError::new(SourceRef::new(&self.file, 1, 1), "the request has neither `call` nor `procedure`")
                        .with_hint("write `call: Namespace/Procedure` (and `data: { … }`), or a trusted `procedure: { steps: … }`"),
                );
                return None;
            }
            (Some(Text(c)), None) => RequestTarget::Call(self.call_target(&at.key("call"), &c)?),
            (None, Some(p)) => {
                let mut proc_ = self.procedure("request", p, &at.key("procedure"))?;
                proc_.access = Access::Public;
                RequestTarget::Trusted(Box::new(proc_))
            }
        };
        let context = match d.context {
            Some(Lit(v)) => self.literal(&at.key("context"), "context", &v),
            None => Element::new("context"),
        };
        let global_data = d
            .global_data
            .map(|Lit(v)| self.literal(&at.key("globalData"), "globalData", &v));
        let items = match (d.data, d.batch) {
            (Some(_), Some(_)) => {
                self.err(
                    &at.key("batch"),
                    "a request has either `data` (one transaction) or `batch` (one transaction per item), not both",
                    Some("move `data` into the batch as one more `- data: { … }` item, or put values every item shares under `globalData`".into()),
                );
                return None;
            }
            (Some(Lit(v)), None) => vec![BatchItem {
                data: self.literal(&at.key("data"), "data", &v),
                source_ref: self.here(&at.key("data")),
            }],
            (None, Some(Lit(v))) => self.batch_items(&at.key("batch"), v),
            (None, None) => Vec::new(),
        };
        if !self.errors.is_empty() {
            return None;
        }
        let batch = is_batch(&items, &global_data);
        let mut items = items;
        if !batch {
            let data = items
                .pop()
                .map_or_else(|| Element::new("data"), |item| item.data);
            return Some(RequestDocument::Single(Request {
                target,
                data,
                context,
                format,
                source_ref: sref,
            }));
        }
        if items.is_empty() {
            items.push(BatchItem {
                data: Element::new("data"),
                source_ref: sref.clone(),
            });
        }
        Some(RequestDocument::Batch(BatchRequest {
            target,
            global_data: global_data.unwrap_or_else(|| Element::new("globalData")),
            items,
            context,
            format,
            source_ref: sref,
        }))
    }

    /// The items of `batch:`: a list of `{ data: { … } }` mappings.
    fn batch_items(&mut self, at: &At, v: Json) -> Vec<BatchItem> {
        let hint = || Some("write `batch: [ { data: { … } }, { data: { … } } ]`".to_string());
        let Json::Array(list) = v else {
            self.err(at, "`batch` must be a list of `{ data: … }` items", hint());
            return Vec::new();
        };
        if list.is_empty() {
            self.err(at, "`batch` holds no item", hint());
            return Vec::new();
        }
        let mut refs = self.batch_item_refs(at, list.len()).into_iter();
        let mut items = Vec::with_capacity(list.len());
        for (i, item) in list.into_iter().enumerate() {
            let source_ref = refs.next().unwrap_or_else(|| self.here(at));
            let n = i + 1;
            let mut map = match item {
                Json::Object(m) => m,
                _ => {
                    self.err(
                        at,
                        format!("item {n} is not a `{{ data: … }}` mapping"),
                        hint(),
                    );
                    continue;
                }
            };
            let data = map.remove("data");
            if let Some(key) = map.keys().next() {
                self.err(
                    at,
                    format!("item {n} has `{key}`; a batch item holds only `data`"),
                    Some("values every item shares go under the request's `globalData`".into()),
                );
                continue;
            }
            let data = match data {
                Some(d) => self.literal(at, "data", &d),
                None => Element::new("data"),
            };
            items.push(BatchItem { data, source_ref });
        }
        items
    }

    /// Where each of the first `count` items of `batch:` starts: the `data` keys of the
    /// list, in order, each in the column of the first (a `data` key inside an item's data
    /// is further right and ends the search). Fewer when the text cannot tell; the caller
    /// then uses the `batch` key's place.
    fn batch_item_refs(&self, at: &At, count: usize) -> Vec<SourceRef> {
        let (line, _) = self.loc.find(at.block, &at.path());
        let Some(batch) = self.loc.child(at.block, "batch").filter(|b| b.line == line) else {
            return Vec::new();
        };
        let mut refs: Vec<SourceRef> = Vec::with_capacity(count);
        let mut from = batch;
        while refs.len() < count {
            let Some(found) = self.loc.child(from, "data") else {
                break;
            };
            if refs
                .first()
                .is_some_and(|first| first.column != found.column)
            {
                break;
            }
            refs.push(SourceRef::new(&self.file, found.line, found.column));
            // The next item starts after this key's line, in the same column.
            from = Block {
                start: found.line as usize,
                indent: Some(found.column as usize - 1),
                line: found.line + 1,
                ..from
            };
        }
        refs
    }
}

/// Whether a request's data makes a batch, as in MPS's XML: several items, or `globalData`.
fn is_batch(items: &[BatchItem], global_data: &Option<Element>) -> bool {
    items.len() > 1 || global_data.is_some()
}

/// Input type names.
const INPUT_TYPES: &[&str] = &["string", "int", "float", "bool", "list", "map"];

/// A `$expr` transform into `destination`/`path` (merge; an expression giving `()` fails).
fn expr_transform(
    script: Script,
    destination: Scope,
    path: String,
    source_ref: SourceRef,
) -> Transform {
    Transform {
        source: TransformSource::Expr(script),
        destination,
        destination_path: Some(path),
        mode: Mode::Merge,
        if_null: IfNull::Fail,
        source_ref,
        xsl: None,
        allow_null_transform: false,
    }
}

/// Whether a value holds a `{{ … }}` placeholder or a `{ $expr: … }` (at any depth of
/// its maps), and so is computed at run time rather than taken as a constant.
fn has_placeholders(v: &Json) -> bool {
    match v {
        Json::String(s) => template::has_placeholder(s),
        Json::Array(a) => a.iter().any(has_placeholders),
        Json::Object(m) => m.contains_key("$expr") || m.values().any(has_placeholders),
        _ => false,
    }
}

fn json_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

/// Sets `root[a][b]… = v`, merging maps that are already there.
fn insert_nested(root: &mut Json, segs: &[&str], v: Json) {
    let Json::Object(m) = root else {
        return;
    };
    match segs {
        [] => {}
        [last] => match (m.get_mut(*last), v) {
            (Some(old @ Json::Object(_)), Json::Object(new)) => {
                for (k, x) in new {
                    insert_nested(old, &[k.as_str()], x);
                }
            }
            (_, v) => {
                m.insert((*last).to_string(), v);
            }
        },
        [first, rest @ ..] => {
            let slot = m
                .entry((*first).to_string())
                .or_insert_with(|| Json::Object(JsonMap::new()));
            if !slot.is_object() {
                *slot = Json::Object(JsonMap::new());
            }
            insert_nested(slot, rest, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_nested_merges() {
        let mut j = serde_json::json!({"a": {"x": 1}});
        insert_nested(&mut j, &["a", "y"], serde_json::json!(2));
        insert_nested(&mut j, &["b"], serde_json::json!("t"));
        assert_eq!(j, serde_json::json!({"a": {"x": 1, "y": 2}, "b": "t"}));
    }
}
