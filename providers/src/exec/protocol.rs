//! The exec-provider wire format: building request objects and checking the shape of
//! responses (see `docs/providers/exec.md`). Pure functions, no I/O.

use provisio_engine::data::json::{from_json, json_to_scalar, to_json};
use provisio_engine::data::Element;
use provisio_engine::model::{InputSpec, ProcKind};
use provisio_engine::provider::{CallContext, Preview, ProcedureSpec, ProviderError, UndoKind};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// The protocol version this engine speaks; sent in `describe`.
pub const PROTOCOL_VERSION: u64 = 1;

/// E_NOTIMPL: a provider answers a method it does not implement with this code.
pub const E_NOTIMPL: u32 = provisio_engine::codes::E_NOTIMPL;

/// A request method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Handshake: list the procedures.
    Describe,
    /// Run a call.
    Execute,
    /// Reverse a call.
    Undo,
    /// Say what a call would change.
    Preview,
    /// Two-phase prepare.
    Prepare,
    /// Two-phase commit.
    Commit,
    /// After an engine crash: was this call applied?
    Recover,
}

impl Method {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Describe => "describe",
            Method::Execute => "execute",
            Method::Undo => "undo",
            Method::Preview => "preview",
            Method::Prepare => "prepare",
            Method::Commit => "commit",
            Method::Recover => "recover",
        }
    }
}

/// The `describe` request.
pub fn describe_request(id: u64) -> Value {
    json!({"id": id, "method": "describe", "protocol": PROTOCOL_VERSION})
}

/// The common part of a call request: method, procedure, idempotency key and context.
fn call_base(
    id: u64,
    method: Method,
    context: &CallContext,
    provider_context: &Element,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    m.insert("method".into(), json!(method.as_str()));
    m.insert("procedure".into(), json!(context.procedure));
    m.insert("idempotencyKey".into(), json!(context.idempotency_key()));
    m.insert(
        "context".into(),
        json!({
            "txnId": context.txn_id,
            "stepId": context.step_id,
            "attempt": context.attempt,
            "namespace": context.namespace,
        }),
    );
    m.insert("providerContext".into(), to_json(provider_context));
    m
}

/// An `execute`, `preview` or `recover` request.
pub fn call_request(
    id: u64,
    method: Method,
    context: &CallContext,
    provider_context: &Element,
    execute_data: &Element,
) -> Value {
    let mut m = call_base(id, method, context, provider_context);
    m.insert("executeData".into(), to_json(execute_data));
    Value::Object(m)
}

/// An `undo`, `prepare` or `commit` request. `saved` is present only when the procedure
/// keeps its executeData for rollback.
pub fn done_request(
    id: u64,
    method: Method,
    context: &CallContext,
    provider_context: &Element,
    undo: &Element,
    saved: Option<&Element>,
) -> Value {
    let mut m = call_base(id, method, context, provider_context);
    m.insert("undo".into(), to_json(undo));
    if let Some(saved) = saved {
        m.insert("saved".into(), to_json(saved));
    }
    Value::Object(m)
}

/// What is wrong with a response (the caller adds the provider name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(pub String);

/// The result part of a well-formed response.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `ok: true`: the whole response object.
    Ok(Map<String, Value>),
    /// `ok: false`: the provider's own error.
    Err(ProviderError),
}

/// Checks the envelope of a response: an object with the expected `id` and a boolean `ok`;
/// for `ok: false`, an `error` object `{code?, message, transient?}`.
pub fn parse_envelope(value: Value, expected_id: u64) -> Result<Reply, ShapeError> {
    let Value::Object(map) = value else {
        return Err(ShapeError(format!(
            "a response that is not a JSON object (got {})",
            kind_of(&value)
        )));
    };
    match map.get("id") {
        Some(Value::Number(n)) if n.as_u64() == Some(expected_id) => {}
        Some(other) => {
            return Err(ShapeError(format!(
                "a response with id {} while waiting for id {expected_id}",
                short(&other.to_string())
            )))
        }
        None => {
            return Err(ShapeError(format!(
                "a response without `id` (waiting for id {expected_id})"
            )))
        }
    }
    match map.get("ok") {
        Some(Value::Bool(true)) => Ok(Reply::Ok(map)),
        Some(Value::Bool(false)) => parse_error(map.get("error")).map(Reply::Err),
        Some(other) => Err(ShapeError(format!(
            "a response whose `ok` is {} instead of true or false",
            kind_of(other)
        ))),
        None => Err(ShapeError("a response without `ok`".into())),
    }
}

/// The provider-reported error: `{"code": 2147500037, "message": "...", "transient": false}`.
/// `code` defaults to E_FAIL and may also be a negative 32-bit HRESULT; E_NOTIMPL becomes
/// [`ProviderError::Unsupported`].
fn parse_error(error: Option<&Value>) -> Result<ProviderError, ShapeError> {
    let Some(Value::Object(e)) = error else {
        return Err(ShapeError(
            "`ok: false` without an `error` object".to_string(),
        ));
    };
    let message = match e.get("message") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(ShapeError("an `error` without a string `message`".into())),
    };
    let code = match e.get("code") {
        None | Some(Value::Null) => ProviderError::E_FAIL,
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u32::try_from(u)
                .map_err(|_| ShapeError(format!("an error `code` out of range: {u}")))?,
            (None, Some(i)) => i32::try_from(i)
                .map(|i| i as u32)
                .map_err(|_| ShapeError(format!("an error `code` out of range: {i}")))?,
            _ => {
                return Err(ShapeError(format!(
                    "an error `code` that is not an integer: {n}"
                )))
            }
        },
        Some(other) => {
            return Err(ShapeError(format!(
                "an error `code` that is {} instead of an integer",
                kind_of(other)
            )))
        }
    };
    let transient = match e.get("transient") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ShapeError(format!(
                "an error `transient` that is {} instead of a boolean",
                kind_of(other)
            )))
        }
    };
    Ok(if code == E_NOTIMPL {
        ProviderError::Unsupported(message)
    } else if transient {
        ProviderError::Transient { code, message }
    } else {
        ProviderError::Permanent { code, message }
    })
}

/// `executeData` of an `execute` answer; absent means "unchanged" (`input`).
pub fn execute_data(map: &Map<String, Value>, input: &Element) -> Result<Element, ShapeError> {
    match map.get("executeData") {
        None => Ok(input.clone()),
        Some(v) => from_json("executeData", v)
            .map_err(|e| ShapeError(format!("an `executeData` that is not a data tree: {e}"))),
    }
}

/// `undo` of an `execute` answer: absent or `null` means nothing to undo.
pub fn undo_record(map: &Map<String, Value>) -> Result<Option<Element>, ShapeError> {
    match map.get("undo") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => from_json("undo", v)
            .map(Some)
            .map_err(|e| ShapeError(format!("an `undo` that is not a data tree: {e}"))),
    }
}

/// `preview` of a `preview` answer: `{"change": text}` (creates or adds), `{"update": text}`
/// (changes or removes what exists), `{"noChange": text}` (the call will succeed without
/// changing anything), `{"fail": text}` (the call will fail, and why) or `{"unknown": true}`.
pub fn preview(map: &Map<String, Value>) -> Result<Preview, ShapeError> {
    let bad = || {
        ShapeError(
            "a `preview` that is not {\"change\": text}, {\"update\": text}, \
             {\"noChange\": text}, {\"fail\": text} or {\"unknown\": true}"
                .to_string(),
        )
    };
    let Some(Value::Object(p)) = map.get("preview") else {
        return Err(bad());
    };
    if p.len() != 1 {
        return Err(bad());
    }
    let (key, value) = p.iter().next().ok_or_else(bad)?;
    match (key.as_str(), value) {
        ("change", Value::String(s)) => Ok(Preview::Change(s.clone())),
        ("update", Value::String(s)) => Ok(Preview::Update(s.clone())),
        ("noChange", Value::String(s)) => Ok(Preview::NoChange(s.clone())),
        ("fail", Value::String(s)) => Ok(Preview::Fail(s.clone())),
        ("unknown", Value::Bool(true)) => Ok(Preview::Unknown),
        _ => Err(bad()),
    }
}

/// The verdict of a `recover` answer: `{"applied": false}` is `None`; `{"applied": true,
/// "undo": record}` is the record, and an applied call with a `null` or absent `undo` gets
/// an empty record (the engine still calls `undo` with it).
pub fn recovered(map: &Map<String, Value>) -> Result<Option<Element>, ShapeError> {
    match map.get("applied") {
        Some(Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => Ok(Some(
            undo_record(map)?.unwrap_or_else(|| Element::new("undo")),
        )),
        _ => Err(ShapeError(
            "a recover answer without a boolean `applied`".to_string(),
        )),
    }
}

/// The procedure list of a `describe` answer.
pub fn procedures(map: &Map<String, Value>) -> Result<Vec<ProcedureSpec>, ShapeError> {
    if let Some(v) = map.get("protocol") {
        if v.as_u64() != Some(PROTOCOL_VERSION) {
            return Err(ShapeError(format!(
                "protocol version {} (this engine speaks {PROTOCOL_VERSION})",
                short(&v.to_string())
            )));
        }
    }
    let Some(Value::Array(items)) = map.get("procedures") else {
        return Err(ShapeError(
            "a describe answer without a `procedures` list".to_string(),
        ));
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let spec = procedure(item).map_err(|m| ShapeError(format!("procedures[{i}]: {m}")))?;
        if !seen.insert(spec.name.clone()) {
            return Err(ShapeError(format!(
                "procedures[{i}]: procedure `{}` is listed twice",
                spec.name
            )));
        }
        out.push(spec);
    }
    Ok(out)
}

fn procedure(item: &Value) -> Result<ProcedureSpec, String> {
    let Value::Object(p) = item else {
        return Err(format!("expected an object, got {}", kind_of(item)));
    };
    let name = match p.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => return Err("`name` must be a non-empty string".into()),
    };
    let at = |m: String| format!("`{name}`: {m}");
    let kind = match p.get("kind").and_then(Value::as_str) {
        Some("read") => ProcKind::Read,
        Some("write") => ProcKind::Write,
        Some("two-phase") => ProcKind::TwoPhase,
        _ => {
            return Err(at(format!(
                "`kind` must be \"read\", \"write\" or \"two-phase\", got {}",
                shown(p.get("kind"))
            )))
        }
    };
    let undo = match p.get("undo") {
        None | Some(Value::Null) => match kind {
            ProcKind::Read => UndoKind::Nothing,
            ProcKind::Write | ProcKind::TwoPhase => UndoKind::Reversible,
        },
        Some(v) => match v.as_str() {
            Some("reversible") => UndoKind::Reversible,
            Some("nothing") => UndoKind::Nothing,
            Some("irreversible") => UndoKind::Irreversible,
            _ => {
                return Err(at(format!(
                    "`undo` must be \"reversible\", \"nothing\" or \"irreversible\", got {}",
                    shown(Some(v))
                )))
            }
        },
    };
    let description = opt_string(p, "description")
        .map_err(at)?
        .unwrap_or_default();
    let inputs = match p.get("inputs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(j, v)| input(v).map_err(|m| at(format!("inputs[{j}]: {m}"))))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(at(format!(
                "`inputs` must be a list, got {}",
                kind_of(other)
            )))
        }
    };
    Ok(ProcedureSpec {
        name,
        kind,
        undo,
        description,
        inputs,
    })
}

fn input(v: &Value) -> Result<InputSpec, String> {
    let Value::Object(m) = v else {
        return Err(format!("expected an object, got {}", kind_of(v)));
    };
    let name = match m.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => return Err("`name` must be a non-empty string".into()),
    };
    let flag = |key: &str| match m.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!(
            "`{name}`: `{key}` must be true or false, got {}",
            kind_of(other)
        )),
    };
    let default =
        match m.get("default") {
            None | Some(Value::Null) => None,
            Some(v) => Some(json_to_scalar(v).ok_or_else(|| {
                format!("`{name}`: `default` must be a string, number or boolean")
            })?),
        };
    Ok(InputSpec {
        ty: opt_string(m, "type").map_err(|e| format!("`{name}`: {e}"))?,
        required: flag("required")?,
        secret: flag("secret")?,
        default,
        description: opt_string(m, "description").map_err(|e| format!("`{name}`: {e}"))?,
        name,
        check: None,
    })
}

fn opt_string(m: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`{key}` must be a string, got {}", kind_of(other))),
    }
}

fn shown(v: Option<&Value>) -> String {
    match v {
        None => "nothing".into(),
        Some(v) => short(&v.to_string()),
    }
}

/// A JSON value's kind, for messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// At most 120 characters of `s`, control characters escaped, for messages.
pub fn short(s: &str) -> String {
    const MAX: usize = 120;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> CallContext {
        CallContext {
            txn_id: "t1".parse().expect("a transaction id"),
            step_id: "s/a".into(),
            attempt: 2,
            namespace: "Ledger Provider".into(),
            procedure: "Credit".into(),
        }
    }

    #[test]
    fn requests_carry_context_and_data() {
        let mut data = Element::new("executeData");
        data.push(Element::with_text("name", "ann"));
        let r = call_request(
            7,
            Method::Execute,
            &ctx(),
            &Element::new("providerContext"),
            &data,
        );
        assert_eq!(
            r,
            json!({"id": 7, "method": "execute", "procedure": "Credit",
                   "idempotencyKey": "t1/s/a",
                   "context": {"txnId": "t1", "stepId": "s/a", "attempt": 2,
                               "namespace": "Ledger Provider"},
                   "providerContext": null, "executeData": {"name": "ann"}})
        );
        let undo = Element::with_text("undo", "x");
        let r = done_request(8, Method::Undo, &ctx(), &Element::new("p"), &undo, None);
        assert_eq!(r["undo"], json!("x"));
        assert!(r.get("saved").is_none());
        let r = done_request(
            8,
            Method::Undo,
            &ctx(),
            &Element::new("p"),
            &undo,
            Some(&data),
        );
        assert_eq!(r["saved"], json!({"name": "ann"}));
    }

    #[test]
    fn envelopes() {
        assert!(matches!(
            parse_envelope(json!({"id": 3, "ok": true}), 3),
            Ok(Reply::Ok(_))
        ));
        let e = parse_envelope(json!({"id": 4, "ok": true}), 3).unwrap_err();
        assert!(e.0.contains("id 4 while waiting for id 3"), "{e:?}");
        assert!(parse_envelope(json!([1]), 3)
            .unwrap_err()
            .0
            .contains("not a JSON object"));
        assert!(parse_envelope(json!({"id": 3}), 3)
            .unwrap_err()
            .0
            .contains("without `ok`"));
        let r = parse_envelope(
            json!({"id": 3, "ok": false, "error": {"code": 2147500037u32, "message": "boom", "transient": true}}),
            3,
        )
        .unwrap();
        assert_eq!(
            r,
            Reply::Err(ProviderError::Transient {
                code: ProviderError::E_FAIL,
                message: "boom".into()
            })
        );
        let r = parse_envelope(
            json!({"id": 3, "ok": false, "error": {"code": -2147024809, "message": "bad"}}),
            3,
        )
        .unwrap();
        assert_eq!(r, Reply::Err(ProviderError::invalid("bad")));
        let r = parse_envelope(
            json!({"id": 3, "ok": false, "error": {"code": E_NOTIMPL, "message": "no"}}),
            3,
        )
        .unwrap();
        assert_eq!(r, Reply::Err(ProviderError::Unsupported("no".into())));
        assert!(parse_envelope(json!({"id": 3, "ok": false}), 3).is_err());
        assert!(parse_envelope(
            json!({"id": 3, "ok": false, "error": {"code": "x", "message": "m"}}),
            3
        )
        .is_err());
    }

    #[test]
    fn previews() {
        let m = |v: Value| match v {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        assert_eq!(
            preview(&m(json!({"preview": {"change": "c"}}))),
            Ok(Preview::Change("c".into()))
        );
        assert_eq!(
            preview(&m(json!({"preview": {"noChange": "n"}}))),
            Ok(Preview::NoChange("n".into()))
        );
        assert_eq!(
            preview(&m(json!({"preview": {"fail": "f"}}))),
            Ok(Preview::Fail("f".into()))
        );
        assert_eq!(
            preview(&m(json!({"preview": {"update": "u"}}))),
            Ok(Preview::Update("u".into()))
        );
        assert_eq!(
            preview(&m(json!({"preview": {"unknown": true}}))),
            Ok(Preview::Unknown)
        );
        assert!(preview(&m(json!({"preview": {"change": 1}}))).is_err());
        assert!(preview(&m(json!({"preview": {"change": "a", "noChange": "b"}}))).is_err());
        assert!(preview(&m(json!({}))).is_err());
    }

    #[test]
    fn recover_answers() {
        let m = |v: Value| match v {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        assert_eq!(recovered(&m(json!({"applied": false}))), Ok(None));
        let r = recovered(&m(json!({"applied": true, "undo": {"k": 1}}))).unwrap();
        assert_eq!(r.map(|e| to_json(&e)), Some(json!({"k": 1})));
        let r = recovered(&m(json!({"applied": true}))).unwrap();
        assert_eq!(r, Some(Element::new("undo")));
        assert!(recovered(&m(json!({"applied": "yes"}))).is_err());
    }

    #[test]
    fn describe_answers() {
        let m = |v: Value| match v {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let p = procedures(&m(json!({"procedures": [
            {"name": "A", "kind": "read"},
            {"name": "B", "kind": "two-phase", "undo": "irreversible", "description": "d",
             "inputs": [{"name": "x", "type": "int", "required": true, "secret": true,
                         "description": "the x", "default": 3}]}
        ]})))
        .unwrap();
        assert_eq!(p[0].undo, UndoKind::Nothing);
        assert_eq!(p[1].kind, ProcKind::TwoPhase);
        assert_eq!(p[1].inputs[0].ty.as_deref(), Some("int"));
        assert!(p[1].inputs[0].required && p[1].inputs[0].secret);
        let bad = [
            (json!({}), "without a `procedures` list"),
            (
                json!({"procedures": [{"name": "A"}]}),
                "procedures[0]: `A`: `kind`",
            ),
            (json!({"procedures": [{"kind": "read"}]}), "`name` must be"),
            (
                json!({"procedures": [{"name": "A", "kind": "read"}, {"name": "A", "kind": "read"}]}),
                "listed twice",
            ),
            (
                json!({"procedures": [{"name": "A", "kind": "read", "undo": "maybe"}]}),
                "`undo` must be",
            ),
            (
                json!({"procedures": [{"name": "A", "kind": "read", "inputs": [{"name": "x", "required": "yes"}]}]}),
                "inputs[0]: `x`: `required`",
            ),
            (
                json!({"protocol": 2, "procedures": []}),
                "protocol version 2",
            ),
        ];
        for (v, want) in bad {
            let e = procedures(&m(v.clone())).unwrap_err();
            assert!(e.0.contains(want), "{v}: {e:?}");
        }
    }

    #[test]
    fn short_escapes_and_truncates() {
        assert_eq!(short("a\nb"), "a\\nb");
        assert_eq!(short(&"x".repeat(200)).chars().count(), 121);
    }
}
