//! DOT and Mermaid export of compiled plans, optionally expanding nested calls into
//! clusters (`provisio graph`).

use super::{Body, Dep, Plan, PlanNode, Program};
use std::fmt::Write;

/// Output syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    /// Graphviz DOT.
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

/// Renders the entry procedure's plan. With `expand`, calls to procedures that have steps
/// are drawn as nested clusters (each procedure expanded once per call site).
pub fn render(program: &Program, format: GraphFormat, expand: bool) -> String {
    let mut w = Writer {
        program,
        format,
        expand,
        out: String::new(),
        next: 0,
        depth: 0,
    };
    match format {
        GraphFormat::Dot => {
            let _ = writeln!(
                w.out,
                "digraph \"{}\" {{",
                esc(&program.entry.target.to_string())
            );
            w.out.push_str(
                "  rankdir=TB;\n  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n",
            );
        }
        GraphFormat::Mermaid => w.out.push_str("flowchart TD\n"),
    }
    match &program.entry.body {
        Body::Steps(plan) => {
            w.plan(plan, "n");
        }
        Body::Leaf(leaf) => {
            let id = w.id("n");
            w.node(
                &id,
                &format!("{} ({} provider)", program.entry.target, leaf.provider),
            );
        }
    }
    if format == GraphFormat::Dot {
        w.out.push_str("}\n");
    }
    w.out
}

struct Writer<'a> {
    program: &'a Program,
    format: GraphFormat,
    expand: bool,
    out: String,
    next: usize,
    depth: usize,
}

impl Writer<'_> {
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    fn indent(&self) -> String {
        "  ".repeat(self.depth + 1)
    }

    fn node(&mut self, id: &str, label: &str) {
        let ind = self.indent();
        match self.format {
            GraphFormat::Dot => {
                let _ = writeln!(self.out, "{ind}{id} [label=\"{}\"];", esc(label));
            }
            GraphFormat::Mermaid => {
                let _ = writeln!(self.out, "{ind}{id}[\"{}\"]", label.replace('"', "#quot;"));
            }
        }
    }

    fn edge(&mut self, from: &str, to: &str, dep: Option<Dep>) {
        let ind = self.indent();
        let label = match dep {
            Some(Dep::DataFlow) => Some("data"),
            Some(Dep::Select) => Some("select"),
            None => Some("calls"),
            _ => None,
        };
        match (self.format, label) {
            (GraphFormat::Dot, Some(l)) => {
                let style = if dep.is_none() { ", style=dashed" } else { "" };
                let _ = writeln!(self.out, "{ind}{from} -> {to} [label=\"{l}\"{style}];");
            }
            (GraphFormat::Dot, None) => {
                let _ = writeln!(self.out, "{ind}{from} -> {to};");
            }
            (GraphFormat::Mermaid, Some(l)) => {
                let arrow = if dep.is_none() { "-.->" } else { "-->" };
                let _ = writeln!(self.out, "{ind}{from} {arrow}|{l}| {to}");
            }
            (GraphFormat::Mermaid, None) => {
                let _ = writeln!(self.out, "{ind}{from} --> {to}");
            }
        }
    }

    fn open_cluster(&mut self, id: &str, label: &str) {
        let ind = self.indent();
        match self.format {
            GraphFormat::Dot => {
                let _ = writeln!(
                    self.out,
                    "{ind}subgraph cluster_{id} {{\n{ind}  label=\"{}\"; style=dashed;",
                    esc(label)
                );
            }
            GraphFormat::Mermaid => {
                let _ = writeln!(
                    self.out,
                    "{ind}subgraph {id}[\"{}\"]",
                    label.replace('"', "#quot;")
                );
            }
        }
        self.depth += 1;
    }

    fn close_cluster(&mut self) {
        self.depth -= 1;
        let ind = self.indent();
        match self.format {
            GraphFormat::Dot => {
                let _ = writeln!(self.out, "{ind}}}");
            }
            GraphFormat::Mermaid => {
                let _ = writeln!(self.out, "{ind}end");
            }
        }
    }

    /// Writes a plan; returns the node id of each plan node (for edges).
    fn plan(&mut self, plan: &Plan, prefix: &str) -> Vec<String> {
        let mut ids = vec![String::new(); plan.graph.node_count()];
        for &n in &plan.order {
            let id = self.id(prefix);
            match &plan.graph[n] {
                PlanNode::Execute(e) => {
                    let label = match &e.call {
                        Some(t) => {
                            let mut l = format!("{}: {t}", e.id);
                            if let Some(f) = e.for_each.first() {
                                let _ = write!(l, "\nforEach {}", f.name);
                            }
                            if !e.when.is_empty() {
                                l.push_str("\nwhen …");
                            }
                            l
                        }
                        None => format!("{}: transform", e.id),
                    };
                    self.node(&id, &label);
                    if self.expand {
                        if let Some(t) = &e.call {
                            if let Some(callee) = self.program.procedure(t) {
                                if let Body::Steps(sub) = &callee.body {
                                    let cid = self.id("c");
                                    self.open_cluster(&cid, &t.to_string());
                                    let inner = self.plan(sub, &format!("{cid}_"));
                                    self.close_cluster();
                                    if let Some(first) = sub.order.first() {
                                        let to = inner[first.index()].clone();
                                        self.edge(&id, &to, None);
                                    }
                                }
                            }
                        }
                    }
                }
                PlanNode::Select(s) => self.node(&id, &format!("{}: select", s.id)),
                PlanNode::Script(s) => self.node(&id, &format!("{}: script", s.id)),
                PlanNode::Try(t) => {
                    self.node(&id, &format!("{}: try", t.id));
                    let tid = self.id("t");
                    self.open_cluster(&tid, &format!("{} try", t.id));
                    let body = self.plan(&t.body, &format!("{tid}_"));
                    self.close_cluster();
                    let cid = self.id("k");
                    self.open_cluster(&cid, &format!("{} catch", t.id));
                    let catch = self.plan(&t.catch, &format!("{cid}_"));
                    self.close_cluster();
                    if let Some(first) = t.body.order.first() {
                        let to = body[first.index()].clone();
                        self.edge(&id, &to, Some(Dep::Needs));
                    }
                    if let Some(first) = t.catch.order.first() {
                        let to = catch[first.index()].clone();
                        self.edge(&id, &to, Some(Dep::Needs));
                    }
                }
            }
            ids[n.index()] = id;
        }
        for e in plan.graph.raw_edges() {
            let (a, b) = (
                ids[e.source().index()].clone(),
                ids[e.target().index()].clone(),
            );
            self.edge(&a, &b, Some(e.weight));
        }
        ids
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
