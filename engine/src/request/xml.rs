//! MPS-style XML namespaces and requests into the model (syntax: `docs/xml-syntax.md`).
//!
//! Every element and attribute is checked against what its position allows; an unknown
//! one is an error naming the element, its line and column, the allowed set and the
//! closest allowed name. Paths are checked with [`Path::parse`], templates with
//! [`parse_template`].

use super::rules::{self, read_script_file, SCOPE_NAMES};
use super::template::parse_template;
use super::{ParseError, MAX_DEPTH, MAX_FILE_BYTES};
use crate::data::xml::{
    parse_located, parse_located_plain, Limits, Located, LocatedNode, XmlError,
};
use crate::data::{Element, IfNull, Mode, Path, Scalar};
use crate::model::{
    Access, BatchItem, BatchRequest, CallTarget, ExecuteStep, ForEach, Format, Impersonate,
    InputSpec, Namespace, Ordering, ProcKind, Procedure, QueueStep, Repeat, Request,
    RequestDocument, RequestTarget, Scope, Script, ScriptStep, SelectStep, SourceRef, Step,
    Transform, TransformSource, TryStep, When, XslTemplates,
};
use std::cell::OnceCell;
use std::collections::HashSet;

/// Parses an XML namespace file (`<namespace>` root, or `<namespaces>` holding several).
pub(crate) fn parse_namespaces(src: &str, file: &str) -> Result<Vec<Namespace>, Vec<ParseError>> {
    let ctx = Ctx::new(src, file);
    let root = parse_located(src, &limits()).map_err(|e| vec![ctx.xml_error(e)])?;
    let mut errs = Vec::new();
    let mut out = Vec::new();
    match root.name.as_str() {
        "namespace" => {
            if let Some(ns) = ctx.namespace(&root, &mut errs) {
                out.push(ns);
            }
        }
        "namespaces" => {
            if let Err(e) = ctx.check_attrs(&root, &[]) {
                errs.push(e);
            }
            if let Err(e) = ctx.no_text(&root) {
                errs.push(e);
            }
            let mut seen = HashSet::new();
            for child in root.elements() {
                if child.name != "namespace" {
                    errs.push(ctx.unknown_element(child, &root, &["namespace"]));
                    continue;
                }
                if let Some(ns) = ctx.namespace(child, &mut errs) {
                    if !seen.insert(ns.name.clone()) {
                        errs.push(ctx.err(
                            child,
                            format!("namespace `{}` is defined twice in this file", ns.name),
                        ));
                    }
                    out.push(ns);
                }
            }
            if out.is_empty() && errs.is_empty() {
                errs.push(
                    ctx.err(&root, "<namespaces> holds no <namespace>")
                        .with_hint("add <namespace name=\"…\"> elements"),
                );
            }
        }
        other => errs.push(
            ctx.err(
                &root,
                format!(
                    "expected <namespace> or <namespaces> as the root element, found <{other}>"
                ),
            )
            .with_hint("a namespace file starts with <namespace name=\"…\">"),
        ),
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

/// Parses an XML request (`<request>`): one request, or a batch (several `<data>`, or
/// `<globalData>`).
pub(crate) fn parse_request(src: &str, file: &str) -> Result<RequestDocument, ParseError> {
    let ctx = Ctx::new(src, file);
    // The content of <data>, <globalData> and <context> is taken as is, so it needs no
    // positions.
    let root = parse_located_plain(src, &limits(), &["data", "globalData", "context"])
        .map_err(|e| ctx.xml_error(e))?;
    ctx.request(root)
}

fn limits() -> Limits {
    Limits {
        max_bytes: MAX_FILE_BYTES,
        max_depth: MAX_DEPTH,
    }
}

const NAMESPACE_ATTRS: &[&str] = &["name", "providerSource", "description", "readOnly"];
const PROCEDURE_ATTRS: &[&str] = &[
    "name",
    "access",
    "type",
    "description",
    "parallel",
    "entry",
    "saveDataForRollback",
    "resumable",
    "auditEnabled",
    "perfEnabled",
];
const PROCEDURE_CHILDREN: &[&str] = &[
    "input",
    "procedureData",
    "execute",
    "transform",
    "try",
    "catch",
    "select",
    "script",
];
const STEP_ELEMENTS: &[&str] = &["execute", "transform", "try", "catch", "select", "script"];
const INPUT_ATTRS: &[&str] = &[
    "name",
    "type",
    "required",
    "secret",
    "default",
    "description",
];
const EXECUTE_ATTRS: &[&str] = &[
    "id",
    "namespace",
    "procedure",
    "needs",
    "impersonate",
    "sensitive",
    "trusted",
];
const TRANSFORM_ATTRS: &[&str] = &["id", "needs"];
const QUEUE_ATTRS: &[&str] = &[
    "id",
    "namespace",
    "procedure",
    "needs",
    "impersonate",
    "sensitive",
    "trusted",
    "queueSuspended",
];
const EXECUTE_CHILDREN: &[&str] = &[
    "executeData",
    "forEach",
    "when",
    "repeat",
    "before",
    "after",
];
const FOREACH_ATTRS: &[&str] = &["name", "root", "path", "ifNull", "filter"];
const WHEN_ATTRS: &[&str] = &["source", "sourcePath", "not", "select", "case", "expr"];
const REPEAT_ATTRS: &[&str] = &["source", "sourcePath", "ifNull"];
const TRANSFORM_NODE_ATTRS: &[&str] = &[
    "source",
    "sourcePath",
    "destination",
    "destinationPath",
    "mode",
    "ifNull",
    "allowNullTransform",
    "template",
    "expr",
];
const SCRIPT_ATTRS: &[&str] = &["id", "needs", "calls", "output", "file"];
const SCRIPT_CHILDREN: &[&str] = &["when", "undo"];
const TRY_ATTRS: &[&str] = &["id", "needs"];
const SELECT_ATTRS: &[&str] = &[
    "name",
    "source",
    "sourcePath",
    "defaultCase",
    "ifNullCase",
    "needs",
];
const WHERE_ATTRS: &[&str] = &["value", "case"];
const REQUEST_ATTRS: &[&str] = &["namespace", "procedure"];
const REQUEST_CHILDREN: &[&str] = &["data", "globalData", "context", "procedure"];
const REQUEST_PROCEDURE_ATTRS: &[&str] = &["type", "parallel", "description"];

/// The XSLT namespace (`xmlns:xsl` of an `xsl:template` child of before/after).
const XSLT_NAMESPACE: &str = "http://www.w3.org/1999/XSL/Transform";

/// The XSLT 1.0 instruction elements (what may appear inside an `xsl:template`).
const XSLT_INSTRUCTIONS: &[&str] = &[
    "apply-imports",
    "apply-templates",
    "attribute",
    "call-template",
    "choose",
    "comment",
    "copy",
    "copy-of",
    "element",
    "fallback",
    "for-each",
    "if",
    "message",
    "number",
    "otherwise",
    "param",
    "processing-instruction",
    "sort",
    "text",
    "value-of",
    "variable",
    "when",
    "with-param",
];

/// Whether an XPath expression or attribute value template calls `document(`.
fn calls_document(v: &str) -> bool {
    let mut rest = v;
    while let Some(at) = rest.find("document") {
        let before_ok = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '-' || c == '_' || c == ':' || c == '.'));
        let after = rest[at + "document".len()..].trim_start();
        if before_ok && after.starts_with('(') {
            return true;
        }
        rest = &rest[at + "document".len()..];
    }
    false
}

/// An attribute value escaped for double quotes.
fn escape_attr_value(v: &str) -> String {
    v.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('"', "&quot;")
}

/// The closest candidate to a misspelt name (the shared rule).
fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    rules::suggest(word, candidates.iter().copied())
}

fn list(items: &[&str], quote: (&str, &str)) -> String {
    items
        .iter()
        .map(|i| format!("{}{i}{}", quote.0, quote.1))
        .collect::<Vec<_>>()
        .join(", ")
}

fn valid_name(name: &str) -> bool {
    rules::is_name(name)
}

/// A start tag: the offset of its `<`, the offset just past its `>`, and (name, offset)
/// of each attribute value.
type StartTag<'f> = (usize, usize, Vec<(&'f str, usize)>);

/// Parsing context: the file name for every [`SourceRef`], and the text (to locate
/// script text and attribute values, which the located tree does not position).
struct Ctx<'f> {
    file: &'f str,
    src: &'f str,
    /// Byte offsets where lines start, computed on first use.
    line_starts: OnceCell<Vec<usize>>,
}

/// The pieces of a parsed `<procedure>` body.
struct Body {
    inputs: Vec<InputSpec>,
    procedure_data: Option<Element>,
    steps: Vec<Step>,
}

impl<'f> Ctx<'f> {
    fn new(src: &'f str, file: &'f str) -> Self {
        Ctx {
            file,
            src,
            line_starts: OnceCell::new(),
        }
    }

    fn at(&self, el: &Located) -> SourceRef {
        SourceRef::new(self.file, el.line, el.column)
    }

    fn err(&self, el: &Located, message: impl Into<String>) -> ParseError {
        ParseError::new(self.at(el), message)
    }

    fn xml_error(&self, e: XmlError) -> ParseError {
        let hint = if e.message.contains("DOCTYPE") {
            Some("remove the <!DOCTYPE …> declaration; entities other than &lt; &gt; &amp; &apos; &quot; are not supported")
        } else if e.message.contains("nested more than") {
            Some("flatten the document")
        } else {
            None
        };
        let err = ParseError::new(SourceRef::new(self.file, e.line, e.column), e.message);
        match hint {
            Some(h) => err.with_hint(h),
            None => err,
        }
    }

    fn check_attrs(&self, el: &Located, allowed: &[&str]) -> Result<(), ParseError> {
        for (k, _) in &el.attrs {
            if k == "xmlns" || k.starts_with("xmlns:") || allowed.contains(&k.as_str()) {
                continue;
            }
            let mut msg = format!("unknown attribute `{k}` on <{}>", el.name);
            if let Some(s) = suggest(k, allowed) {
                msg.push_str(&format!("; did you mean `{s}`?"));
            }
            let hint = if allowed.is_empty() {
                format!("<{}> takes no attributes", el.name)
            } else {
                format!("<{}> accepts: {}", el.name, list(allowed, ("", "")))
            };
            return Err(self.err(el, msg).with_hint(hint));
        }
        Ok(())
    }

    fn unknown_element(&self, el: &Located, parent: &Located, allowed: &[&str]) -> ParseError {
        let mut msg = format!("unknown element <{}> in <{}>", el.name, parent.name);
        if let Some(s) = suggest(&el.name, allowed) {
            msg.push_str(&format!("; did you mean <{s}>?"));
        }
        let hint = if allowed.is_empty() {
            format!("<{}> has no child elements", parent.name)
        } else {
            format!(
                "<{}> may contain: {}",
                parent.name,
                list(allowed, ("<", ">"))
            )
        };
        self.err(el, msg).with_hint(hint)
    }

    fn no_text(&self, el: &Located) -> Result<(), ParseError> {
        if let Some(t) = el.texts().next() {
            let shown: String = t.trim().chars().take(40).collect();
            return Err(self
                .err(el, format!("unexpected text `{shown}` in <{}>", el.name))
                .with_hint(format!("<{}> holds only elements", el.name)));
        }
        Ok(())
    }

    fn no_children(&self, el: &Located) -> Result<(), ParseError> {
        self.no_text(el)?;
        if let Some(c) = el.elements().next() {
            return Err(self.unknown_element(c, el, &[]));
        }
        Ok(())
    }

    fn required<'a>(&self, el: &'a Located, name: &str) -> Result<&'a str, ParseError> {
        el.attr(name)
            .ok_or_else(|| self.err(el, format!("<{}> needs a `{name}` attribute", el.name)))
    }

    fn bool_attr(&self, el: &Located, name: &str, default: bool) -> Result<bool, ParseError> {
        match el.attr(name) {
            None => Ok(default),
            Some("1") | Some("true") => Ok(true),
            Some("0") | Some("false") => Ok(false),
            Some(other) => Err(self
                .err(
                    el,
                    format!("`{name}` on <{}> must be 0 or 1, not `{other}`", el.name),
                )
                .with_hint(format!("write {name}=\"1\" or {name}=\"0\""))),
        }
    }

    fn choice<T: Copy>(
        &self,
        el: &Located,
        name: &str,
        options: &[(&str, T)],
        default: T,
    ) -> Result<T, ParseError> {
        let Some(v) = el.attr(name) else {
            return Ok(default);
        };
        if let Some((_, t)) = options.iter().find(|(k, _)| *k == v) {
            return Ok(*t);
        }
        let names: Vec<&str> = options.iter().map(|(k, _)| *k).collect();
        let mut msg = format!("`{name}=\"{v}\"` on <{}> is not valid", el.name);
        if let Some(s) = suggest(v, &names) {
            msg.push_str(&format!("; did you mean `{s}`?"));
        }
        Err(self
            .err(el, msg)
            .with_hint(format!("{name} is one of: {}", list(&names, ("", "")))))
    }

    /// A path attribute. Prefixed element names are resolved through the `xmlns`
    /// declarations in scope at `el`: the model keeps such a path with each prefixed name
    /// written as `Q{uri}local`, so it means the same wherever it is compiled.
    fn path_attr(&self, el: &Located, name: &str) -> Result<Option<String>, ParseError> {
        let Some(p) = el.attr(name) else {
            return Ok(None);
        };
        let scope = el.ns_scope.clone();
        let resolve =
            move |prefix: &str| crate::data::xml::lookup_prefix(&scope, prefix).map(str::to_string);
        match Path::parse_with_prefixes(p, &resolve) {
            Ok(parsed) if parsed.has_namespaces() => Ok(Some(parsed.to_string())),
            Ok(_) => Ok(Some(p.to_string())),
            Err(e) => Err(self
                .err(
                    el,
                    format!(
                        "bad path in {name}=\"{p}\" on <{}> at column {} of the path: {}",
                        el.name, e.column, e.message
                    ),
                )
                .with_hint("paths look like `users/user[@status='new']/name`")),
        }
    }

    fn name_attr(&self, el: &Located, attr: &str, what: &str) -> Result<String, ParseError> {
        let v = self.required(el, attr)?;
        if !valid_name(v) {
            let (msg, hint) = rules::name_error(what, v);
            return Err(self
                .err(el, format!("{msg} (on <{}>)", el.name))
                .with_hint(hint));
        }
        Ok(v.to_string())
    }

    fn needs(&self, el: &Located) -> Vec<String> {
        el.attr("needs")
            .map(|n| {
                n.split(|c: char| c.is_whitespace() || c == ',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A scope attribute that may name one of this step's forEach variables.
    fn scope_attr(
        &self,
        el: &Located,
        name: &str,
        for_each: &[String],
    ) -> Result<Scope, ParseError> {
        let v = self.required(el, name)?;
        let scope = Scope::parse(v);
        if let Scope::Named(n) = &scope {
            if !for_each.iter().any(|f| f == n) {
                let mut candidates: Vec<&str> = SCOPE_NAMES.to_vec();
                candidates.extend(for_each.iter().map(String::as_str));
                let mut msg = format!("unknown {name} `{n}` on <{}>", el.name);
                if let Some(s) = suggest(n, &candidates) {
                    msg.push_str(&format!("; did you mean `{s}`?"));
                }
                return Err(self
                    .err(el, msg)
                    .with_hint(format!("{name} is one of: {}", list(&candidates, ("", "")))));
            }
        }
        Ok(scope)
    }

    // ------------------------------------------------------------------ namespaces

    fn namespace(&self, el: &Located, errs: &mut Vec<ParseError>) -> Option<Namespace> {
        let head = (|| {
            self.check_attrs(el, NAMESPACE_ATTRS)?;
            self.no_text(el)?;
            let name = self.name_attr(el, "name", "namespace")?;
            let read_only = self.bool_attr(el, "readOnly", false)?;
            Ok::<_, ParseError>((name, read_only))
        })();
        let (name, read_only) = match head {
            Ok(h) => h,
            Err(e) => {
                errs.push(e);
                return None;
            }
        };
        let mut ns = Namespace {
            name,
            description: el.attr("description").map(str::to_string),
            provider: el.attr("providerSource").map(str::to_string),
            provider_context: Element::new("providerContext"),
            read_only,
            procedures: Vec::new(),
            source_ref: self.at(el),
        };
        let mut seen_context = false;
        let mut names = HashSet::new();
        for child in el.elements() {
            match child.name.as_str() {
                "providerContext" => {
                    if seen_context {
                        errs.push(self.err(
                            child,
                            "a second <providerContext>; a namespace has at most one",
                        ));
                    }
                    seen_context = true;
                    ns.provider_context = child.to_element();
                }
                "procedure" => {
                    if let Some(p) = self.procedure(child, errs) {
                        if !names.insert(p.name.clone()) {
                            errs.push(self.err(
                                child,
                                format!(
                                    "procedure `{}` is defined twice in namespace `{}`",
                                    p.name, ns.name
                                ),
                            ));
                        }
                        ns.procedures.push(p);
                    }
                }
                _ => errs.push(self.unknown_element(child, el, &["providerContext", "procedure"])),
            }
        }
        Some(ns)
    }

    fn procedure(&self, el: &Located, errs: &mut Vec<ParseError>) -> Option<Procedure> {
        let head = (|| {
            self.check_attrs(el, PROCEDURE_ATTRS)?;
            self.no_text(el)?;
            let name = self.name_attr(el, "name", "procedure")?;
            let mut p = Procedure::new(name);
            p.access = self.choice(
                el,
                "access",
                &[("public", Access::Public), ("private", Access::Private)],
                Access::Private,
            )?;
            p.kind = self.kind(el)?;
            p.ordering = self.ordering(el)?;
            p.description = el.attr("description").map(str::to_string);
            p.entry = el.attr("entry").map(str::to_string);
            p.save_data_for_rollback = self.bool_attr(el, "saveDataForRollback", false)?;
            p.resumable = self.bool_attr(el, "resumable", false)?;
            p.audit = self.bool_attr(el, "auditEnabled", true)?;
            p.perf = self.bool_attr(el, "perfEnabled", false)?;
            p.source_ref = self.at(el);
            Ok::<_, ParseError>(p)
        })();
        let mut p = match head {
            Ok(p) => p,
            Err(e) => {
                errs.push(e);
                return None;
            }
        };
        let before = errs.len();
        let body = self.body(el, true, errs);
        p.inputs = body.inputs;
        if let Some(pd) = body.procedure_data {
            p.procedure_data = pd;
        }
        p.steps = body.steps;
        (errs.len() == before).then_some(p)
    }

    fn kind(&self, el: &Located) -> Result<ProcKind, ParseError> {
        self.choice(
            el,
            "type",
            &[
                ("read", ProcKind::Read),
                ("write", ProcKind::Write),
                ("two-phase", ProcKind::TwoPhase),
            ],
            ProcKind::Write,
        )
    }

    fn ordering(&self, el: &Located) -> Result<Ordering, ParseError> {
        Ok(if self.bool_attr(el, "parallel", false)? {
            Ordering::Parallel
        } else {
            Ordering::Sequential
        })
    }

    /// The children of a `<procedure>`: inputs (when allowed), procedureData and steps.
    fn body(&self, el: &Located, inputs_allowed: bool, errs: &mut Vec<ParseError>) -> Body {
        let mut body = Body {
            inputs: Vec::new(),
            procedure_data: None,
            steps: Vec::new(),
        };
        let allowed: Vec<&str> = if inputs_allowed {
            PROCEDURE_CHILDREN.to_vec()
        } else {
            PROCEDURE_CHILDREN[1..].to_vec()
        };
        let mut step_elements = Vec::new();
        let mut input_names = HashSet::new();
        for child in el.elements() {
            match child.name.as_str() {
                "input" if inputs_allowed => match self.input(child) {
                    Ok(i) => {
                        if !input_names.insert(i.name.clone()) {
                            errs.push(
                                self.err(child, format!("input `{}` is declared twice", i.name)),
                            );
                        }
                        body.inputs.push(i);
                    }
                    Err(e) => errs.push(e),
                },
                "procedureData" => {
                    if body.procedure_data.is_some() {
                        errs.push(self.err(
                            child,
                            "a second <procedureData>; a procedure has at most one",
                        ));
                    }
                    body.procedure_data = Some(child.to_element());
                }
                _ => step_elements.push(child),
            }
        }
        let mut explicit = HashSet::new();
        body.steps = self.block(&step_elements, el, &allowed, &mut explicit, errs);
        body
    }

    fn input(&self, el: &Located) -> Result<InputSpec, ParseError> {
        self.check_attrs(el, INPUT_ATTRS)?;
        self.no_children(el)?;
        let name = self.required(el, "name")?;
        if let Err(e) = Path::parse(name) {
            return Err(self.err(
                el,
                format!(
                    "bad input name `{name}` at column {}: {}",
                    e.column, e.message
                ),
            ));
        }
        Ok(InputSpec {
            name: name.to_string(),
            ty: el.attr("type").map(str::to_string),
            required: self.bool_attr(el, "required", false)?,
            secret: self.bool_attr(el, "secret", false)?,
            default: el.attr("default").map(|d| Scalar::Str(d.into())),
            description: el.attr("description").map(str::to_string),
            check: None,
        })
    }

    // ------------------------------------------------------------------ steps

    /// One block of steps (a procedure body, a try body or a catch body).
    fn block(
        &self,
        elements: &[&Located],
        parent: &Located,
        allowed: &[&str],
        explicit: &mut HashSet<String>,
        errs: &mut Vec<ParseError>,
    ) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut ids = HashSet::new();
        let mut n = 0usize;
        let mut i = 0usize;
        while i < elements.len() {
            let el = elements[i];
            i += 1;
            let result = match el.name.as_str() {
                "execute" | "queue" | "transform" | "select" | "try" | "script" => {
                    n += 1;
                    let auto = format!("step{n}");
                    match el.name.as_str() {
                        "select" => self.select(el).map(Step::Select),
                        "script" => self.script_step(el, auto).map(Step::Script),
                        "try" => {
                            let catch = elements.get(i).filter(|c| c.name == "catch");
                            match catch {
                                Some(c) => {
                                    i += 1;
                                    self.try_step(el, c, auto, explicit, errs)
                                }
                                None => Err(self
                                    .err(el, "a <try> must be followed by its <catch>")
                                    .with_hint("add <catch>…</catch> right after </try>")),
                            }
                        }
                        _ => self.execute(el, auto).map(Step::Execute),
                    }
                }
                "catch" => Err(self
                    .err(el, "a <catch> must directly follow its <try>")
                    .with_hint("put the <catch> right after the </try> it handles")),
                "globalData" => Err(self
                    .err(
                        el,
                        "<globalData> belongs directly under <request>, not in a procedure",
                    )
                    .with_hint("move it next to the request's <data> elements")),
                _ => Err(self.unknown_element(el, parent, allowed)),
            };
            match result {
                Ok(step) => {
                    let id = step.id().to_string();
                    let is_explicit = el.attr("id").is_some() || el.name == "select";
                    if !ids.insert(id.clone()) || (is_explicit && !explicit.insert(id.clone())) {
                        errs.push(
                            self.err(el, format!("duplicate step id `{id}`"))
                                .with_hint("give each step a unique id=\"…\""),
                        );
                    }
                    steps.push(step);
                }
                Err(e) => errs.push(e),
            }
        }
        if let Some(t) = parent.texts().next() {
            let shown: String = t.trim().chars().take(40).collect();
            errs.push(self.err(
                parent,
                format!("unexpected text `{shown}` in <{}>", parent.name),
            ));
        }
        steps
    }

    fn try_step(
        &self,
        el: &Located,
        catch: &Located,
        auto: String,
        explicit: &mut HashSet<String>,
        errs: &mut Vec<ParseError>,
    ) -> Result<Step, ParseError> {
        self.check_attrs(el, TRY_ATTRS)?;
        self.check_attrs(catch, &[])?;
        let before = errs.len();
        let body_elements: Vec<&Located> = el.elements().collect();
        let catch_elements: Vec<&Located> = catch.elements().collect();
        let body = self.block(&body_elements, el, STEP_ELEMENTS, explicit, errs);
        let catch_steps = self.block(&catch_elements, catch, STEP_ELEMENTS, explicit, errs);
        if errs.len() > before {
            // The inner errors are already reported; drop this step quietly.
            return Err(errs.remove(before));
        }
        if body.is_empty() {
            return Err(self.err(el, "<try> holds no steps"));
        }
        Ok(Step::Try(TryStep {
            id: el.attr("id").map_or(auto, str::to_string),
            body,
            catch: catch_steps,
            needs: self.needs(el),
            source_ref: self.at(el),
        }))
    }

    fn select(&self, el: &Located) -> Result<SelectStep, ParseError> {
        self.check_attrs(el, SELECT_ATTRS)?;
        self.no_text(el)?;
        let name = self.required(el, "name")?.to_string();
        let scope = self.scope_attr(el, "source", &[])?;
        let path = self.path_attr(el, "sourcePath")?;
        let mut cases = Vec::new();
        for w in el.elements() {
            if w.name != "where" {
                return Err(self.unknown_element(w, el, &["where"]));
            }
            self.check_attrs(w, WHERE_ATTRS)?;
            self.no_children(w)?;
            let value = self.required(w, "value")?;
            let case = self.required(w, "case")?;
            cases.push((value.to_string(), case.to_string()));
        }
        Ok(SelectStep {
            id: name.clone(),
            name,
            scope,
            path,
            cases,
            default_case: el.attr("defaultCase").map(str::to_string),
            if_null_case: el.attr("ifNullCase").map(str::to_string),
            needs: self.needs(el),
            source_ref: self.at(el),
        })
    }

    /// `<script id? needs? calls? output? file?>text<when …/><undo file?>text</undo></script>`.
    fn script_step(&self, el: &Located, auto: String) -> Result<ScriptStep, ParseError> {
        self.check_attrs(el, SCRIPT_ATTRS)?;
        let mut when = Vec::new();
        let mut undo = None;
        for child in el.elements() {
            match child.name.as_str() {
                "when" => when.push(self.when(child, &[])?),
                "undo" => {
                    if undo.is_some() {
                        return Err(self.err(child, "a second <undo>; a script has at most one"));
                    }
                    self.check_attrs(child, &["file"])?;
                    if let Some(c) = child.elements().next() {
                        return Err(self.unknown_element(c, child, &[]));
                    }
                    undo = Some(self.script_text(child)?);
                }
                _ => return Err(self.unknown_element(child, el, SCRIPT_CHILDREN)),
            }
        }
        let script = self.script_text(el)?;
        let mut calls = Vec::new();
        for part in el
            .attr("calls")
            .unwrap_or_default()
            .split([';', ','])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match part.split_once('/') {
                Some((ns, p)) if valid_name(ns.trim()) && valid_name(p.trim()) => {
                    calls.push(CallTarget {
                        namespace: ns.trim().to_string(),
                        procedure: p.trim().to_string(),
                    })
                }
                _ => {
                    return Err(self
                        .err(
                            el,
                            format!("`{part}` in calls=\"…\" is not Namespace/Procedure"),
                        )
                        .with_hint(
                            "write calls=\"Hosted DNS/AddHostRecord; Directory/CreateUser\"",
                        ))
                }
            }
        }
        Ok(ScriptStep {
            id: el.attr("id").map_or(auto, str::to_string),
            script,
            undo,
            calls,
            when,
            output: self.path_attr(el, "output")?,
            needs: self.needs(el),
            source_ref: self.at(el),
        })
    }

    /// The script of a `<script>` or `<undo>`: its text, or the file its `file` attribute
    /// names (never both).
    fn script_text(&self, el: &Located) -> Result<Script, ParseError> {
        let mut runs = el.texts().filter(|t| !t.trim().is_empty());
        let text = runs.next();
        if runs.next().is_some() {
            return Err(self
                .err(el, format!("the script in <{}> is split in pieces", el.name))
                .with_hint("write the script as one text (or one CDATA section), with the child elements before or after it"));
        }
        match (el.attr("file"), text) {
            (Some(_), Some(_)) => Err(self
                .err(
                    el,
                    format!("<{}> has both file=\"…\" and script text", el.name),
                )
                .with_hint("keep one: the file, or the text")),
            (Some(name), None) => read_script_file(self.file, name, self.at(el)),
            (None, None) => Err(self
                .err(el, format!("<{}> holds no script", el.name))
                .with_hint(format!(
                    "write the rhai source inside <{}>, or file=\"name.rhai\"",
                    el.name
                ))),
            (None, Some(text)) => Ok(self.located_text(el, text)),
        }
    }

    // ------------------------------------------------------------------ positions

    /// An attribute holding a rhai expression, with where its value starts.
    fn expr_attr(&self, el: &Located, name: &str) -> Result<Option<Script>, ParseError> {
        let Some(v) = el.attr(name) else {
            return Ok(None);
        };
        if v.trim().is_empty() {
            return Err(self
                .err(el, format!("{name}=\"\" on <{}> is empty", el.name))
                .with_hint(format!(
                    "{name} holds a rhai expression such as `data.user.enabled`"
                )));
        }
        let origin = self
            .attr_value_offset(el, name)
            .map(|o| self.position(o))
            .unwrap_or_else(|| self.at(el));
        Ok(Some(Script::new(v, origin)))
    }

    /// Byte offsets of the line starts.
    fn line_starts(&self) -> &[usize] {
        self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.src.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        })
    }

    /// The byte offset of a 1-based line and (character) column.
    fn offset_of(&self, line: u32, column: u32) -> Option<usize> {
        let start = *self
            .line_starts()
            .get(usize::try_from(line).ok()?.checked_sub(1)?)?;
        let skip = usize::try_from(column).ok()?.checked_sub(1)?;
        let rest = self.src.get(start..)?;
        match rest.char_indices().nth(skip) {
            Some((i, _)) => Some(start + i),
            None => Some(self.src.len()),
        }
    }

    /// The file position of a byte offset.
    fn position(&self, offset: usize) -> SourceRef {
        let starts = self.line_starts();
        let idx = match starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = starts.get(idx).copied().unwrap_or(0);
        let column = self.src.get(start..offset).map_or(0, |s| s.chars().count());
        SourceRef::new(
            self.file,
            u32::try_from(idx + 1).unwrap_or(u32::MAX),
            u32::try_from(column + 1).unwrap_or(u32::MAX),
        )
    }

    /// The start tag of an element: (offset of `<`, offset just past its `>`), and the
    /// offsets of its attribute values.
    fn start_tag(&self, el: &Located) -> Option<StartTag<'f>> {
        let start = self.offset_of(el.line, el.column)?;
        let bytes = self.src.as_bytes();
        if bytes.get(start) != Some(&b'<') {
            return None;
        }
        let mut values = Vec::new();
        let mut i = start + 1;
        let mut name_start = None;
        let mut last_name: &str = "";
        while let Some(&b) = bytes.get(i) {
            match b {
                b'>' => return Some((start, i + 1, values)),
                b'"' | b'\'' => {
                    let close = self.src.get(i + 1..)?.find(b as char)?;
                    values.push((last_name, i + 1));
                    i += close + 2;
                    continue;
                }
                b'=' => {
                    if let Some(n) = name_start.take() {
                        last_name = self.src.get(n..i)?.trim();
                    }
                }
                b' ' | b'\t' | b'\n' | b'\r' => {
                    if let Some(n) = name_start.take() {
                        last_name = self.src.get(n..i)?.trim();
                    }
                }
                _ => {
                    if name_start.is_none() {
                        name_start = Some(i);
                    }
                }
            }
            i += 1;
        }
        None
    }

    fn attr_value_offset(&self, el: &Located, name: &str) -> Option<usize> {
        let (_, _, values) = self.start_tag(el)?;
        values.into_iter().find(|(n, _)| *n == name).map(|(_, o)| o)
    }

    /// A script written as the text of `el`: the text without its leading blank space,
    /// with the position of its first character (found after the start tag; when it
    /// cannot be found, the element's line, or the next line when the text starts on a
    /// new line).
    fn located_text(&self, el: &Located, text: &str) -> Script {
        let body = text.trim_start();
        let fallback = || {
            let mut at = self.at(el);
            if text[..text.len() - body.len()].contains('\n') {
                at.line += 1;
                at.column = 1;
            }
            at
        };
        let origin = self
            .start_tag(el)
            .and_then(|(_, end, _)| self.find_text(end, body))
            .map(|o| self.position(o))
            .unwrap_or_else(fallback);
        Script::new(body.trim_end(), origin)
    }

    /// Where `body` (text content, entities resolved) starts in the source after `from`:
    /// the first match of its first line's plain prefix outside any tag.
    fn find_text(&self, from: usize, body: &str) -> Option<usize> {
        let first = body.lines().next()?;
        let needle: String = first
            .chars()
            .take_while(|c| !matches!(c, '&' | '<' | '>' | ']' | '\r'))
            .take(40)
            .collect();
        if needle.is_empty() {
            return None;
        }
        let hay = self.src.get(from..)?;
        let mut search = 0;
        while let Some(i) = hay.get(search..)?.find(&needle) {
            let at = search + i;
            let before = hay.get(..at)?;
            // Inside a tag when the last `<` before the match is not closed (CDATA aside).
            let inside_tag = match before.rfind('<') {
                Some(lt) => !before[lt..].contains('>') && !before[lt..].starts_with("<![CDATA["),
                None => false,
            };
            if !inside_tag {
                return Some(from + at);
            }
            search = at + needle.len();
        }
        None
    }

    fn execute(&self, el: &Located, auto: String) -> Result<ExecuteStep, ParseError> {
        let is_queue = el.name == "queue";
        let is_execute = el.name == "execute" || is_queue;
        self.check_attrs(
            el,
            if is_queue {
                QUEUE_ATTRS
            } else if is_execute {
                EXECUTE_ATTRS
            } else {
                TRANSFORM_ATTRS
            },
        )?;
        let queue = if is_queue {
            Some(QueueStep {
                suspended: self.bool_attr(el, "queueSuspended", true)?,
            })
        } else {
            None
        };
        self.no_text(el)?;
        let call = if is_execute {
            let namespace = self.name_attr(el, "namespace", "namespace")?;
            let procedure = self.name_attr(el, "procedure", "procedure")?;
            Some(CallTarget {
                namespace,
                procedure,
            })
        } else {
            None
        };
        let sensitive = self.choice(
            el,
            "sensitive",
            &[("0", None), ("1", Some(true)), ("2", Some(false))],
            None,
        )?;
        let impersonate = self.choice(
            el,
            "impersonate",
            &[
                ("0", Impersonate::Inherit),
                ("1", Impersonate::Caller),
                ("2", Impersonate::Engine),
            ],
            Impersonate::Inherit,
        )?;
        let pass_credentials = self.bool_attr(el, "trusted", false)?;
        let mut step = ExecuteStep {
            id: el.attr("id").map_or(auto, str::to_string),
            sensitive,
            impersonate,
            pass_credentials,
            queue,
            call,
            for_each: Vec::new(),
            when: Vec::new(),
            repeat: None,
            execute_data: Element::new("executeData"),
            before: Vec::new(),
            after: Vec::new(),
            needs: self.needs(el),
            source_ref: self.at(el),
        };
        // forEach names first: the other children may refer to them in any order.
        let mut names: Vec<String> = Vec::new();
        for child in el.elements().filter(|c| c.name == "forEach") {
            self.check_attrs(child, FOREACH_ATTRS)?;
            self.no_children(child)?;
            let name = self.required(child, "name")?;
            if SCOPE_NAMES.contains(&name) || !valid_name(name) || name.contains(' ') {
                return Err(self
                    .err(child, format!("`{name}` cannot be a forEach name"))
                    .with_hint(format!(
                        "use a plain name such as `user`; {} are taken",
                        SCOPE_NAMES.join(", ")
                    )));
            }
            if names.iter().any(|n| n == name) {
                return Err(self.err(
                    child,
                    format!("forEach `{name}` is declared twice in this step"),
                ));
            }
            let root = match child.attr("root") {
                None => Scope::Data,
                Some(_) => self.scope_attr(child, "root", &names)?,
            };
            if matches!(root, Scope::ExecuteData | Scope::Context) {
                return Err(self
                    .err(
                        child,
                        format!("forEach `{name}` cannot iterate over {root}"),
                    )
                    .with_hint("root is data, procedureData or an earlier forEach name"));
            }
            step.for_each.push(ForEach {
                name: name.to_string(),
                root,
                path: self.path_attr(child, "path")?,
                if_null: self.if_null(child, true)?,
            });
            if let Some(script) = self.expr_attr(child, "filter")? {
                step.when.push(When::Filter {
                    for_each: name.to_string(),
                    script,
                });
            }
            names.push(name.to_string());
        }
        let mut seen_data = false;
        for child in el.elements() {
            match child.name.as_str() {
                "forEach" => {}
                "executeData" => {
                    if seen_data {
                        return Err(
                            self.err(child, "a second <executeData>; a step has at most one")
                        );
                    }
                    seen_data = true;
                    self.check_attrs(child, &[])?;
                    step.execute_data = child.to_element();
                }
                "when" => step.when.push(self.when(child, &names)?),
                "repeat" => {
                    if step.repeat.is_some() {
                        return Err(self.err(child, "a second <repeat>; a step has at most one"));
                    }
                    self.check_attrs(child, REPEAT_ATTRS)?;
                    self.no_children(child)?;
                    step.repeat = Some(Repeat {
                        scope: self.scope_attr(child, "source", &names)?,
                        path: self.path_attr(child, "sourcePath")?,
                        if_null: self.if_null(child, true)?,
                    });
                }
                "before" => step.before.push(self.transform(child, true, &names)?),
                "after" => step.after.push(self.transform(child, false, &names)?),
                _ => return Err(self.unknown_element(child, el, EXECUTE_CHILDREN)),
            }
        }
        Ok(step)
    }

    fn if_null(&self, el: &Located, skip_allowed: bool) -> Result<IfNull, ParseError> {
        let v = self.choice(
            el,
            "ifNull",
            &[
                ("fail", IfNull::Fail),
                ("ignore", IfNull::Ignore),
                ("skip", IfNull::Skip),
            ],
            IfNull::Fail,
        )?;
        if v == IfNull::Skip && !skip_allowed {
            return Err(self
                .err(
                    el,
                    format!(
                        "ifNull=\"skip\" is only valid in <before>, not in <{}>",
                        el.name
                    ),
                )
                .with_hint("use ifNull=\"ignore\" or ifNull=\"fail\""));
        }
        Ok(v)
    }

    fn when(&self, el: &Located, names: &[String]) -> Result<When, ParseError> {
        self.check_attrs(el, WHEN_ATTRS)?;
        self.no_children(el)?;
        if let Some(script) = self.expr_attr(el, "expr")? {
            if let Some(other) = ["source", "sourcePath", "not", "select", "case"]
                .into_iter()
                .find(|a| el.attr(a).is_some())
            {
                return Err(self
                    .err(el, format!("<when expr=…> takes no `{other}` attribute"))
                    .with_hint("use two <when> elements: all of them must hold"));
            }
            return Ok(When::Expr(script));
        }
        let has_source = el.attr("source").is_some() || el.attr("sourcePath").is_some();
        let has_select = el.attr("select").is_some() || el.attr("case").is_some();
        match (has_source, has_select) {
            (true, true) => Err(self
                .err(
                    el,
                    "<when> takes either source/sourcePath or select/case, never both",
                )
                .with_hint("use two <when> elements: all of them must hold")),
            (false, false) => Err(self.err(
                el,
                "<when> needs source (and sourcePath), select and case, or expr",
            )),
            (true, false) => {
                let scope = self.scope_attr(el, "source", names)?;
                let path = self.path_attr(el, "sourcePath")?;
                Ok(if self.bool_attr(el, "not", false)? {
                    When::Missing { scope, path }
                } else {
                    When::Exists { scope, path }
                })
            }
            (false, true) => {
                if el.attr("not").is_some() {
                    return Err(self
                        .err(el, "`not` only applies to <when source=… sourcePath=…>")
                        .with_hint("give the select an explicit case for the other values"));
                }
                Ok(When::Case {
                    select: self.required(el, "select")?.to_string(),
                    case: self.required(el, "case")?.to_string(),
                })
            }
        }
    }

    fn transform(
        &self,
        el: &Located,
        is_before: bool,
        names: &[String],
    ) -> Result<Transform, ParseError> {
        self.check_attrs(el, TRANSFORM_NODE_ATTRS)?;
        let xsl = self.xsl_templates(el)?;
        let expr = self.expr_attr(el, "expr")?;
        if expr.is_some() {
            if let Some(other) = ["source", "sourcePath", "template"]
                .into_iter()
                .find(|a| el.attr(a).is_some())
            {
                return Err(self
                    .err(
                        el,
                        format!("<{}> takes either expr or {other}, not both", el.name),
                    )
                    .with_hint("expr computes the value; source/sourcePath/template select it"));
            }
        }
        let source = match (expr, el.attr("template")) {
            (Some(script), _) => TransformSource::Expr(script),
            (None, Some(t)) => {
                if el.attr("source").is_some() || el.attr("sourcePath").is_some() {
                    return Err(self.err(
                        el,
                        format!(
                            "<{}> takes either template or source/sourcePath, not both",
                            el.name
                        ),
                    ));
                }
                if let Err(e) = parse_template(t) {
                    return Err(self.err(el, format!("bad template=\"{t}\": {e}")));
                }
                TransformSource::Template(t.to_string())
            }
            (None, None) => TransformSource::Node {
                scope: self.scope_attr(el, "source", names)?,
                path: self.path_attr(el, "sourcePath")?,
            },
        };
        let dest_names: &[String] = if is_before { names } else { &[] };
        let destination = self.scope_attr(el, "destination", dest_names)?;
        let allow_null_transform = self.bool_attr(el, "allowNullTransform", false)?;
        if xsl.is_some() && !matches!(source, TransformSource::Node { .. }) {
            return Err(self.err(
                el,
                format!(
                    "xsl:template children transform a source node; <{}> with template or expr has none",
                    el.name
                ),
            ));
        }
        let mode = self.choice(
            el,
            "mode",
            &[
                ("insert", Mode::Insert),
                ("merge", Mode::Merge),
                ("replace", Mode::Replace),
                ("move", Mode::Move),
            ],
            Mode::Insert,
        )?;
        if mode == Mode::Move && !matches!(source, TransformSource::Node { .. }) {
            return Err(self.err(
                el,
                "mode=\"move\" needs a source node, not a template or an expression",
            ));
        }
        Ok(Transform {
            source,
            destination,
            destination_path: self.path_attr(el, "destinationPath")?,
            mode,
            if_null: self.if_null(el, is_before)?,
            source_ref: self.at(el),
            xsl,
            allow_null_transform,
        })
    }

    /// The `xsl:template` children of a before/after, as one stylesheet (`None` without
    /// any). Only `xsl:template` elements may be children; inside them, only XSLT 1.0
    /// instructions (libxslt implements XSLT 1.0) and no `document()` (templates read no
    /// files or URLs). The templates are taken as written from the file, each on its own
    /// line, so libxslt's messages name the file's lines.
    fn xsl_templates(&self, el: &Located) -> Result<Option<XslTemplates>, ParseError> {
        if let Some(t) = el.texts().find(|t| !t.trim().is_empty()) {
            let shown: String = t.trim().chars().take(40).collect();
            return Err(self
                .err(el, format!("unexpected text `{shown}` in <{}>", el.name))
                .with_hint(format!("<{}> holds only xsl:template elements", el.name)));
        }
        let templates: Vec<&Located> = el.elements().collect();
        let (Some(first), Some(last)) = (templates.first(), templates.last()) else {
            return Ok(None);
        };
        for t in &templates {
            if t.ns.as_deref() != Some(XSLT_NAMESPACE)
                || t.name.split(':').next_back() != Some("template")
            {
                let hint = if t.ns.as_deref() == Some(XSLT_NAMESPACE) {
                    format!(
                        "<{}> cannot be used here: a <{}> holds only xsl:template elements, and \
                         xsl:include/xsl:import are refused (templates read no files or URLs)",
                        t.name, el.name
                    )
                } else {
                    format!(
                        "<{}> holds xsl:template elements, with xmlns:xsl=\"{XSLT_NAMESPACE}\" \
                         declared on it or an enclosing element",
                        el.name
                    )
                };
                return Err(self
                    .err(t, format!("unexpected <{}> in <{}>", t.name, el.name))
                    .with_hint(hint));
            }
            self.check_xsl_content(t)?;
        }
        let (Some(start), Some(end)) = (
            self.offset_of(first.line, first.column),
            self.offset_of(last.line, last.column)
                .and_then(|at| self.element_end(at)),
        ) else {
            return Err(self.err(el, "cannot locate the xsl:template text in the file"));
        };
        // The declarations in scope at the <before>/<after> (the templates' own are in
        // their text), not copied into the result: exclude-result-prefixes.
        let mut header = String::from("<xsl:stylesheet version=\"1.0\"");
        let mut excluded: Vec<String> = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for (prefix, uri) in el.ns_scope.iter().rev() {
            if seen.contains(&prefix.as_str()) {
                continue;
            }
            seen.push(prefix);
            if prefix.is_empty() {
                if !uri.is_empty() {
                    header.push_str(&format!(" xmlns=\"{}\"", escape_attr_value(uri)));
                    excluded.push("#default".into());
                }
            } else if prefix != "xsl" {
                header.push_str(&format!(" xmlns:{prefix}=\"{}\"", escape_attr_value(uri)));
                excluded.push(prefix.to_string());
            }
        }
        header.push_str(&format!(" xmlns:xsl=\"{XSLT_NAMESPACE}\""));
        if !excluded.is_empty() {
            header.push_str(&format!(
                " exclude-result-prefixes=\"{}\"",
                excluded.join(" ")
            ));
        }
        header.push('>');
        for _ in 1..first.line {
            header.push('\n');
        }
        header.push_str(&self.src[start..end]);
        header.push_str("</xsl:stylesheet>");
        Ok(Some(XslTemplates {
            stylesheet: header,
            source_ref: self.at(first),
        }))
    }

    /// Refuses, with its position, what libxslt would not run as written: an `xsl:`
    /// element that is no XSLT 1.0 instruction (libxslt ignores unknown ones silently), and
    /// `document()` (no file or URL is read; the sandbox refuses it at run time too).
    fn check_xsl_content(&self, t: &Located) -> Result<(), ParseError> {
        let mut stack: Vec<&Located> = vec![t];
        while let Some(e) = stack.pop() {
            if e.ns.as_deref() == Some(XSLT_NAMESPACE) && !std::ptr::eq(e, t) {
                let local = e.name.split(':').next_back().unwrap_or("");
                if !XSLT_INSTRUCTIONS.contains(&local) {
                    return Err(self
                        .err(e, format!("<{}> is not an XSLT 1.0 instruction", e.name))
                        .with_hint(format!(
                            "XSL templates run on libxslt, which implements XSLT 1.0: {}",
                            list(XSLT_INSTRUCTIONS, ("xsl:", ""))
                        )));
                }
            }
            for (k, v) in &e.attrs {
                if calls_document(v) {
                    return Err(self
                        .err(e, format!("document() in {k}=\"{v}\" on <{}> is refused", e.name))
                        .with_hint("XSL templates read no files or URLs; pass what they need in the source node"));
                }
            }
            stack.extend(e.elements());
        }
        Ok(())
    }

    /// The byte offset just past the element that starts at `start` (its `<`).
    fn element_end(&self, start: usize) -> Option<usize> {
        let mut reader = quick_xml::Reader::from_str(self.src.get(start..)?);
        let mut depth = 0usize;
        loop {
            match reader.read_event().ok()? {
                quick_xml::events::Event::Start(_) => depth += 1,
                quick_xml::events::Event::Empty(_) if depth == 0 => break,
                quick_xml::events::Event::End(_) => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        break;
                    }
                }
                quick_xml::events::Event::Eof => return None,
                _ => {}
            }
        }
        let len = usize::try_from(reader.buffer_position()).ok()?;
        Some(start + len)
    }

    // ------------------------------------------------------------------ requests

    fn request(&self, root: Located) -> Result<RequestDocument, ParseError> {
        if root.name != "request" {
            return Err(self
                .err(&root, format!("expected <request> as the root element, found <{}>", root.name))
                .with_hint("a request looks like <request namespace=\"…\" procedure=\"…\"><data>…</data></request>"));
        }
        self.check_attrs(&root, REQUEST_ATTRS)?;
        self.no_text(&root)?;
        let source_ref = self.at(&root);
        let attr_target = match (root.attr("namespace"), root.attr("procedure")) {
            (None, None) => None,
            (Some(_), Some(_)) => Some(CallTarget {
                namespace: self.name_attr(&root, "namespace", "namespace")?,
                procedure: self.name_attr(&root, "procedure", "procedure")?,
            }),
            (Some(_), None) => {
                return Err(self.err(&root, "<request namespace=…> also needs procedure=\"…\""))
            }
            (None, Some(_)) => {
                return Err(self.err(&root, "<request procedure=…> also needs namespace=\"…\""))
            }
        };
        let mut items: Vec<BatchItem> = Vec::new();
        let mut global_data: Option<Element> = None;
        let mut context: Option<Element> = None;
        let mut procedure: Option<(Located, Located)> = None;
        let root_shell = Located {
            name: root.name.clone(),
            ns: root.ns.clone(),
            ns_scope: root.ns_scope.clone(),
            attrs: Vec::new(),
            children: Vec::new(),
            line: root.line,
            column: root.column,
        };
        for child in root.children {
            let LocatedNode::Element(child) = child else {
                continue;
            };
            match child.name.as_str() {
                "data" => {
                    self.check_attrs(&child, &[])?;
                    let source_ref = self.at(&child);
                    items.push(BatchItem {
                        data: child.into_element(),
                        source_ref,
                    });
                }
                "context" => {
                    if context.is_some() {
                        return Err(
                            self.err(&child, "a second <context>; a request has at most one")
                        );
                    }
                    context = Some(child.into_element());
                }
                "procedure" => {
                    if procedure.is_some() {
                        return Err(
                            self.err(&child, "a second <procedure>; a request has at most one")
                        );
                    }
                    procedure = Some((child, root_shell.clone()));
                }
                "globalData" => {
                    if global_data.is_some() {
                        return Err(self
                            .err(&child, "a second <globalData>; a request has at most one")
                            .with_hint(
                                "put all the values every <data> shares in one <globalData>",
                            ));
                    }
                    self.check_attrs(&child, &[])?;
                    global_data = Some(child.into_element());
                }
                _ => return Err(self.unknown_element(&child, &root_shell, REQUEST_CHILDREN)),
            }
        }
        let target = match (attr_target, procedure) {
            (Some(_), Some((p, _))) => {
                return Err(self
                    .err(&p, "a request with namespace=/procedure= attributes cannot also carry a <procedure>")
                    .with_hint("remove the attributes for a trusted request, or the <procedure> for a simple one"))
            }
            (Some(t), None) => RequestTarget::Call(t),
            (None, Some((p, _))) => self.request_procedure(&p)?,
            (None, None) => {
                return Err(self
                    .err(&root_shell, "the request names no procedure")
                    .with_hint("write <request namespace=\"…\" procedure=\"…\"> or add a <procedure> with an <execute>"))
            }
        };
        let context = context.unwrap_or_else(|| Element::new("context"));
        // MPS: several <data> make a batch; <globalData> only has a meaning in one.
        if items.len() <= 1 && global_data.is_none() {
            let data = items
                .pop()
                .map_or_else(|| Element::new("data"), |item| item.data);
            return Ok(RequestDocument::Single(Request {
                target,
                data,
                context,
                format: Format::Xml,
                source_ref,
            }));
        }
        if items.is_empty() {
            items.push(BatchItem {
                data: Element::new("data"),
                source_ref: source_ref.clone(),
            });
        }
        Ok(RequestDocument::Batch(BatchRequest {
            target,
            global_data: global_data.unwrap_or_else(|| Element::new("globalData")),
            items,
            context,
            format: Format::Xml,
            source_ref,
        }))
    }

    fn request_procedure(&self, el: &Located) -> Result<RequestTarget, ParseError> {
        self.check_attrs(el, REQUEST_PROCEDURE_ATTRS)?;
        let mut p = Procedure::new("request");
        p.access = Access::Public;
        p.kind = self.kind(el)?;
        p.ordering = self.ordering(el)?;
        p.description = el.attr("description").map(str::to_string);
        p.source_ref = self.at(el);
        let mut errs = Vec::new();
        let body = self.body(el, false, &mut errs);
        if let Some(e) = errs.into_iter().next() {
            return Err(e);
        }
        if body.steps.is_empty() {
            return Err(self
                .err(el, "the request's <procedure> holds no steps")
                .with_hint("add an <execute namespace=\"…\" procedure=\"…\"/>"));
        }
        if body.procedure_data.is_none() {
            if let [Step::Execute(s)] = body.steps.as_slice() {
                if let Some(call) = canonical_call(s) {
                    return Ok(RequestTarget::Call(call));
                }
            }
        }
        if let Some(pd) = body.procedure_data {
            p.procedure_data = pd;
        }
        p.steps = body.steps;
        Ok(RequestTarget::Trusted(Box::new(p)))
    }
}

/// The call of a canonical MPS simple request: one execute whose only work is
/// `before data → executeData (merge)` and `after executeData → data (merge)`, both. With
/// only one of them, or none, MPS gives the callee partial or empty data, or returns `data`
/// unchanged; such a body runs as the trusted procedure it is.
fn canonical_call(s: &ExecuteStep) -> Option<CallTarget> {
    let call = s.call.clone()?;
    let plain = s.for_each.is_empty()
        && s.when.is_empty()
        && s.repeat.is_none()
        && s.needs.is_empty()
        && s.execute_data.attrs.is_empty()
        && s.execute_data.children.is_empty()
        && s.before.len() == 1
        && s.after.len() == 1;
    let mirror = |t: &Transform, from: Scope, to: Scope| {
        t.source
            == TransformSource::Node {
                scope: from,
                path: None,
            }
            && t.destination == to
            && t.destination_path.is_none()
            && t.mode == Mode::Merge
            && t.if_null == IfNull::Fail
    };
    let before_ok = s
        .before
        .iter()
        .all(|t| mirror(t, Scope::Data, Scope::ExecuteData));
    let after_ok = s
        .after
        .iter()
        .all(|t| mirror(t, Scope::ExecuteData, Scope::Data));
    (plain && before_ok && after_ok).then_some(call)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns_err(src: &str) -> Vec<ParseError> {
        match parse_namespaces(src, "t.xml") {
            Ok(n) => panic!("expected errors, got {n:?}"),
            Err(e) => e,
        }
    }

    fn req_err(src: &str) -> ParseError {
        match parse_request(src, "r.xml") {
            Ok(r) => panic!("expected an error, got {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn minimal_namespace() {
        let ns = parse_namespaces(
            r#"<namespace name="Hosted DNS" providerSource="Provisio.Dns">
  <providerContext server="dns01"/>
  <procedure name="CreateZone" access="public"/>
</namespace>"#,
            "t.xml",
        )
        .unwrap();
        assert_eq!(ns.len(), 1);
        assert_eq!(ns[0].provider.as_deref(), Some("Provisio.Dns"));
        assert_eq!(ns[0].provider_context.attr("server"), Some("dns01"));
        let p = &ns[0].procedures[0];
        assert_eq!(p.access, Access::Public);
        assert_eq!(p.kind, ProcKind::Write);
        assert_eq!(p.source_ref, SourceRef::new("t.xml", 3, 3));
    }

    #[test]
    fn unknown_attribute_suggests() {
        let errs = ns_err(
            r#"<namespace name="N">
  <procedure name="P">
    <execute namespace="A" procedure="B">
      <before source="data" sourcepath="x" destination="executeData"/>
    </execute>
  </procedure>
</namespace>"#,
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].message,
            "unknown attribute `sourcepath` on <before>; did you mean `sourcePath`?"
        );
        assert_eq!(errs[0].source_ref, SourceRef::new("t.xml", 4, 7));
        assert!(errs[0].hint.as_deref().unwrap().contains("destinationPath"));
    }

    #[test]
    fn step_ids_and_duplicates() {
        let ns = parse_namespaces(
            r#"<namespace name="N"><procedure name="P">
  <transform/><execute id="x" namespace="A" procedure="B"/><transform/>
</procedure></namespace>"#,
            "t.xml",
        )
        .unwrap();
        let ids: Vec<_> = ns[0].procedures[0]
            .steps
            .iter()
            .map(|s| s.id().to_string())
            .collect();
        assert_eq!(ids, ["step1", "x", "step3"]);
        let errs = ns_err(
            r#"<namespace name="N"><procedure name="P">
  <transform id="a"/>
  <transform id="a"/>
</procedure></namespace>"#,
        );
        assert_eq!(errs[0].message, "duplicate step id `a`");
        assert_eq!(errs[0].source_ref.line, 3);
    }

    /// A request that must parse as a single (non-batch) request.
    fn single(src: &str) -> Request {
        match parse_request(src, "r.xml").unwrap() {
            RequestDocument::Single(r) => r,
            RequestDocument::Batch(b) => panic!("expected one request, got a batch: {b:?}"),
        }
    }

    /// A request that must parse as a batch.
    fn batch(src: &str) -> BatchRequest {
        match parse_request(src, "r.xml").unwrap() {
            RequestDocument::Batch(b) => b,
            RequestDocument::Single(r) => panic!("expected a batch, got one request: {r:?}"),
        }
    }

    #[test]
    fn shorthand_request() {
        let r = single(
            r#"<request namespace="Hosted DNS" procedure="CreateTenantZone"><data><zone>x</zone></data></request>"#,
        );
        assert_eq!(
            r.target,
            RequestTarget::Call(CallTarget {
                namespace: "Hosted DNS".into(),
                procedure: "CreateTenantZone".into()
            })
        );
        assert_eq!(r.context, Element::new("context"));
        assert_eq!(r.data.child("zone").unwrap().text(), "x");
    }

    #[test]
    fn batch_request_items_and_global_data() {
        let b = batch(
            r#"<request namespace="Hosted Files" procedure="CreateTenantFolders">
  <globalData><quotaMegabytes>50</quotaMegabytes><users><user name="admin"/></users></globalData>
  <data><tenant>alpha</tenant></data>
  <context><clientContext clientTransactionId="c-1"/></context>
  <data><tenant>beta</tenant><quotaMegabytes>70</quotaMegabytes></data>
  <data><tenant>gamma</tenant></data>
</request>"#,
        );
        assert_eq!(b.items.len(), 3);
        assert_eq!(b.items[1].source_ref, SourceRef::new("r.xml", 5, 3));
        assert_eq!(b.global_data.name, "globalData");
        let requests = b.split();
        let tenants: Vec<String> = requests
            .iter()
            .map(|r| r.data.child("tenant").unwrap().text())
            .collect();
        assert_eq!(tenants, ["alpha", "beta", "gamma"]);
        for r in &requests {
            assert_eq!(r.target, b.target);
            assert_eq!(r.data.name, "data");
            // globalData is part of every item's data (MPS reads it with root="data").
            assert_eq!(
                r.data
                    .child("users")
                    .unwrap()
                    .child("user")
                    .unwrap()
                    .attr("name"),
                Some("admin")
            );
            assert_eq!(
                r.context
                    .child("clientContext")
                    .unwrap()
                    .attr("clientTransactionId"),
                Some("c-1")
            );
        }
        // An item's own value wins over the global one of the same name.
        let quota = |r: &Request| r.data.child("quotaMegabytes").unwrap().text();
        assert_eq!(quota(&requests[0]), "50");
        assert_eq!(quota(&requests[1]), "70");
        assert_eq!(quota(&requests[2]), "50");
    }

    #[test]
    fn global_data_is_copied_per_item() {
        let b = batch(
            r#"<request namespace="A" procedure="B">
  <globalData><counter>0</counter></globalData>
  <data><n>1</n></data>
  <data><n>2</n></data>
</request>"#,
        );
        let mut requests = b.split();
        // What one transaction does to the global values stays in its own copy.
        requests[0].data.children.clear();
        assert_eq!(requests[1].data.child("counter").unwrap().text(), "0");
        assert_eq!(b.split()[0].data.child("counter").unwrap().text(), "0");
    }

    #[test]
    fn global_data_alone_or_with_one_data_is_a_batch_of_one() {
        let b = batch(
            r#"<request namespace="A" procedure="B"><globalData><g>1</g></globalData></request>"#,
        );
        assert_eq!(b.items.len(), 1);
        assert_eq!(b.split()[0].data.child("g").unwrap().text(), "1");
        let b = batch(
            r#"<request namespace="A" procedure="B"><data><d>2</d></data><globalData><g>1</g></globalData></request>"#,
        );
        let data = &b.split()[0].data;
        assert_eq!(data.child("g").unwrap().text(), "1");
        assert_eq!(data.child("d").unwrap().text(), "2");
        // One <data> and no <globalData> stays a plain request.
        let r = single(r#"<request namespace="A" procedure="B"><data><d>2</d></data></request>"#);
        assert_eq!(r.data.child("d").unwrap().text(), "2");
    }

    #[test]
    fn request_errors() {
        let e = req_err("<request namespace=\"A\" procedure=\"B\">\n  <globalData/>\n  <globalData/>\n</request>");
        assert_eq!(
            e.message,
            "a second <globalData>; a request has at most one"
        );
        assert_eq!(e.source_ref.line, 3);
        let e = req_err("<request namespace=\"A\" procedure=\"B\">\n  <data x=\"1\"/>\n</request>");
        assert!(e.message.contains("unknown attribute `x` on <data>"), "{e}");
        let e = req_err("<req/>");
        assert!(e.message.contains("expected <request>"));
        let e = req_err("<request>");
        assert!(e.message.contains("not closed"), "{e}");
    }
}

#[cfg(test)]
mod coverage;
