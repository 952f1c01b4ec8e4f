//! Responses in the format of the request: XML (`<response><data/>` or
//! `<response><errorContext/>`, then the request's `<context><clientContext/>` if it had
//! one), YAML or JSON, with secrets masked; a batch request's response lists one such
//! response per data item.

use crate::data::{json, xml, Element};
use crate::exec::{TxnResult, TxnState};
use crate::model::Format;
use serde_json::{json, Value};

/// The response document as a map (YAML/JSON shape).
pub fn to_value(r: &TxnResult) -> Value {
    let mut doc = serde_json::Map::new();
    doc.insert("transactionId".into(), Value::String(r.txn_id.to_string()));
    doc.insert("status".into(), Value::String(r.state.to_string()));
    if let Some(data) = &r.data {
        // `data` is a map even when it holds nothing: `data: {}`, not `data: null`.
        let value = match json::to_json(data) {
            Value::Null if data.children.is_empty() => Value::Object(serde_json::Map::new()),
            v => v,
        };
        doc.insert("data".into(), value);
    }
    if let Some(f) = &r.failure {
        doc.insert(
            "error".into(),
            json!({
                "code": format!("{:#010x}", f.code),
                "description": f.message,
                "step": f.step,
                "sources": f.sources.iter().map(|s| json!({"namespace": s.namespace, "procedure": s.procedure, "step": s.step})).collect::<Vec<_>>(),
            }),
        );
    }
    if !r.undo_failures.is_empty() {
        doc.insert(
            "undoFailures".into(),
            Value::Array(
                r.undo_failures
                    .iter()
                    .map(|u| json!({"step": u.step, "target": u.target, "message": u.message}))
                    .collect(),
            ),
        );
    }
    if let Some(cc) = &r.client_context {
        let mut context = Element::new("context");
        context.push(cc.clone());
        doc.insert("context".into(), json::to_json(&context));
    }
    doc.insert("calls".into(), json!(r.calls));
    if r.state != TxnState::Committed {
        doc.insert("undone".into(), json!(r.undone));
    }
    Value::Object(doc)
}

/// The XML response element.
pub(crate) fn to_element(r: &TxnResult) -> Element {
    let mut resp = Element::new("response");
    resp.set_attr("transactionId", r.txn_id.as_str());
    resp.set_attr("status", r.state.to_string());
    if let Some(data) = &r.data {
        let mut d = data.clone();
        d.name = "data".into();
        resp.push(d);
    }
    if let Some(f) = &r.failure {
        let mut ec = Element::new("errorContext");
        ec.set_attr("code", format!("{:#010x}", f.code));
        ec.set_attr("description", f.message.clone());
        ec.set_attr("step", f.step.clone());
        for s in &f.sources {
            let mut src = Element::new("errorSource");
            src.set_attr("namespace", s.namespace.clone());
            src.set_attr("procedure", s.procedure.clone());
            if !s.step.is_empty() {
                src.set_attr("step", s.step.clone());
            }
            ec.push(src);
        }
        for u in &r.undo_failures {
            let mut uf = Element::new("undoFailure");
            uf.set_attr("step", u.step.clone());
            uf.set_attr("target", u.target.clone());
            uf.set_attr("description", u.message.clone());
            ec.push(uf);
        }
        resp.push(ec);
    }
    if let Some(cc) = &r.client_context {
        resp.push(Element::new("context")).push(cc.clone());
    }
    resp
}

/// Renders the response in `format`.
pub fn render(r: &TxnResult, format: Format) -> String {
    match format {
        Format::Xml => {
            let mut s = xml::to_string_pretty(&to_element(r));
            if !s.ends_with('\n') {
                s.push('\n');
            }
            s
        }
        Format::Json => serde_json::to_string_pretty(&to_value(r)).unwrap_or_default() + "\n",
        Format::Yaml => crate::request::yaml::to_yaml(&to_value(r)),
    }
}

/// How many items of a batch ended in each way.
fn batch_counts(results: &[TxnResult]) -> (usize, usize) {
    let committed = results
        .iter()
        .filter(|r| r.state == TxnState::Committed)
        .count();
    (committed, results.len() - committed)
}

/// A batch response as a map (YAML/JSON shape): `committed` and `failed` counts, then
/// `batch`, one response per data item in request order, each with its `item` number
/// (1-based).
pub fn batch_to_value(results: &[TxnResult]) -> Value {
    let (committed, failed) = batch_counts(results);
    let items = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut entry = serde_json::Map::new();
            entry.insert("item".into(), json!(i + 1));
            if let Value::Object(fields) = to_value(r) {
                entry.extend(fields);
            }
            Value::Object(entry)
        })
        .collect();
    json!({ "committed": committed, "failed": failed, "batch": Value::Array(items) })
}

/// The XML batch response: `<batchResponse committed failed>` holding one `<response
/// item="N">` per data item.
pub(crate) fn batch_to_element(results: &[TxnResult]) -> Element {
    let (committed, failed) = batch_counts(results);
    let mut doc = Element::new("batchResponse");
    doc.set_attr("committed", committed.to_string());
    doc.set_attr("failed", failed.to_string());
    for (i, r) in results.iter().enumerate() {
        let mut resp = to_element(r);
        resp.attrs
            .insert(0, ("item".into(), (i + 1).to_string().into()));
        doc.push(resp);
    }
    doc
}

/// Renders a batch request's response (one entry per data item) in `format`.
pub fn render_batch(results: &[TxnResult], format: Format) -> String {
    match format {
        Format::Xml => {
            let mut s = xml::to_string_pretty(&batch_to_element(results));
            if !s.ends_with('\n') {
                s.push('\n');
            }
            s
        }
        Format::Json => {
            serde_json::to_string_pretty(&batch_to_value(results)).unwrap_or_default() + "\n"
        }
        Format::Yaml => crate::request::yaml::to_yaml(&batch_to_value(results)),
    }
}

/// The XML response element of a response document as [`to_value`] made it (a response
/// that travelled as JSON, e.g. from the daemon): the same element [`render`] writes for
/// the result itself, data and client context rebuilt through the JSON mapping of
/// `docs/data-model.md`.
fn element_of_value(v: &Value) -> Element {
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut resp = Element::new("response");
    resp.set_attr("transactionId", text("transactionId"));
    resp.set_attr("status", text("status"));
    if let Some(Ok(data)) = v.get("data").map(|d| json::from_json("data", d)) {
        resp.push(data);
    }
    if let Some(e) = v.get("error") {
        let field = |k: &str| {
            e.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let mut ec = Element::new("errorContext");
        ec.set_attr("code", field("code"));
        ec.set_attr("description", field("description"));
        ec.set_attr("step", field("step"));
        for s in e
            .get("sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let f = |k: &str| {
                s.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let mut src = Element::new("errorSource");
            src.set_attr("namespace", f("namespace"));
            src.set_attr("procedure", f("procedure"));
            if !f("step").is_empty() {
                src.set_attr("step", f("step"));
            }
            ec.push(src);
        }
        for u in v
            .get("undoFailures")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let f = |k: &str| {
                u.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let mut uf = Element::new("undoFailure");
            uf.set_attr("step", f("step"));
            uf.set_attr("target", f("target"));
            uf.set_attr("description", f("message"));
            ec.push(uf);
        }
        resp.push(ec);
    }
    if let Some(Ok(context)) = v.get("context").map(|c| json::from_json("context", c)) {
        resp.push(context);
    }
    resp
}

/// Renders a response document as [`to_value`] made it (e.g. one the daemon kept) in
/// `format`: what [`render`] prints for the result itself.
pub fn render_value(doc: &Value, format: Format) -> String {
    match format {
        Format::Xml => {
            let mut s = xml::to_string_pretty(&element_of_value(doc));
            if !s.ends_with('\n') {
                s.push('\n');
            }
            s
        }
        Format::Json => serde_json::to_string_pretty(doc).unwrap_or_default() + "\n",
        Format::Yaml => crate::request::yaml::to_yaml(doc),
    }
}

/// Renders the responses of a batch's items, each as [`to_value`] made it, in `format`:
/// what [`render_batch`] prints for the results themselves.
pub fn render_batch_values(docs: &[Value], format: Format) -> String {
    let committed = docs
        .iter()
        .filter(|d| d.get("status").and_then(Value::as_str) == Some("committed"))
        .count();
    let failed = docs.len() - committed;
    match format {
        Format::Xml => {
            let mut doc = Element::new("batchResponse");
            doc.set_attr("committed", committed.to_string());
            doc.set_attr("failed", failed.to_string());
            for (i, d) in docs.iter().enumerate() {
                let mut resp = element_of_value(d);
                resp.attrs
                    .insert(0, ("item".into(), (i + 1).to_string().into()));
                doc.push(resp);
            }
            let mut s = xml::to_string_pretty(&doc);
            if !s.ends_with('\n') {
                s.push('\n');
            }
            s
        }
        _ => {
            let items = docs
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let mut entry = serde_json::Map::new();
                    entry.insert("item".into(), json!(i + 1));
                    if let Value::Object(fields) = d {
                        entry.extend(fields.clone());
                    }
                    Value::Object(entry)
                })
                .collect();
            let v =
                json!({ "committed": committed, "failed": failed, "batch": Value::Array(items) });
            render_value(&v, format)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{ErrorSource, Failure};

    fn result(state: TxnState) -> TxnResult {
        let committed = state == TxnState::Committed;
        TxnResult {
            txn_id: "0190c0de-0000-7000-8000-000000000001"
                .parse()
                .expect("a transaction id"),
            state,
            data: committed.then(|| Element::with_text("data", "x")),
            failure: (!committed).then(|| Failure {
                code: 0x8007_0057,
                message: "bad".into(),
                step: "s".into(),
                sources: vec![ErrorSource {
                    namespace: "N".into(),
                    procedure: "P".into(),
                    step: "s".into(),
                }],
            }),
            undo_failures: Vec::new(),
            calls: 1,
            undone: 0,
            elapsed: std::time::Duration::ZERO,
            journal_error: None,
            client_context: None,
            transient: false,
            kept_response: None,
        }
    }

    #[test]
    fn a_batch_lists_every_item_in_order() {
        let results = [
            result(TxnState::Committed),
            result(TxnState::RolledBack),
            result(TxnState::Committed),
        ];
        let v = batch_to_value(&results);
        assert_eq!(v["committed"], 2);
        assert_eq!(v["failed"], 1);
        let items = v["batch"].as_array().expect("a list");
        assert_eq!(items.len(), 3);
        assert_eq!(items[1]["item"], 2);
        assert_eq!(items[1]["status"], "rolled_back");
        assert_eq!(items[1]["error"]["code"], "0x80070057");
        assert_eq!(items[2]["data"], "x");
        let xml = render_batch(&results, Format::Xml);
        assert!(
            xml.starts_with("<batchResponse committed=\"2\" failed=\"1\">\n  <response item=\"1\" transactionId="),
            "{xml}"
        );
        assert!(xml.contains("<response item=\"2\""), "{xml}");
        assert!(xml.contains("<errorContext code=\"0x80070057\""), "{xml}");
        let yaml = render_batch(&results, Format::Yaml);
        assert!(yaml.contains("committed: 2"), "{yaml}");
        assert!(yaml.contains("- item: 1"), "{yaml}");
    }

    #[test]
    fn a_response_kept_as_json_renders_as_the_result_does() {
        let mut ok = result(TxnState::Committed);
        ok.data = Some(
            crate::data::json::from_json(
                "data",
                &json!({"@id": "7", "name": "ann", "groups": ["a", "b"]}),
            )
            .expect("data"),
        );
        let failed = result(TxnState::RolledBack);
        for r in [&ok, &failed] {
            for f in [Format::Xml, Format::Yaml, Format::Json] {
                assert_eq!(render_value(&to_value(r), f), render(r, f), "{f:?}");
            }
        }
        let both = [ok.clone(), failed.clone()];
        let docs: Vec<Value> = both.iter().map(to_value).collect();
        for f in [Format::Xml, Format::Yaml, Format::Json] {
            assert_eq!(
                render_batch_values(&docs, f),
                render_batch(&both, f),
                "{f:?}"
            );
        }
    }

    #[test]
    fn empty_data_is_an_empty_map() {
        let result = TxnResult {
            txn_id: "t".parse().expect("a transaction id"),
            state: TxnState::Committed,
            data: Some(Element::new("data")),
            failure: None,
            undo_failures: Vec::new(),
            calls: 0,
            undone: 0,
            elapsed: std::time::Duration::ZERO,
            journal_error: None,
            client_context: None,
            transient: false,
            kept_response: None,
        };
        assert_eq!(to_value(&result)["data"], json!({}));
    }
}
