//! Responses in the format of the request: XML (`<response><data/>` or
//! `<response><errorContext/>`, then the request's `<context><clientContext/>` if it had
//! one), YAML or JSON, with secrets masked.

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

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        assert_eq!(to_value(&result)["data"], json!({}));
    }
}
