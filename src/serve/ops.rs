//! The daemon's routes beyond requests: the stream of all requests' events, the catalog
//! (namespaces, procedures with their inputs, a procedure's DAG), `plan` of a request,
//! invoking a public procedure with a JSON body, and the operator's transaction routes
//! (`resume-rollback`, the watchdog list of stuck transactions).

use super::api::{
    accept, check, format_of, identify, query, ApiError, Checked, Shared, SubmitQuery,
};
use super::auth::{Identity, Right};
use super::{now_ms, Daemon};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use provisio_engine::model::{Access, CallTarget, Format};
use provisio_engine::plan::{render, GraphFormat};
use provisio_engine::txn::index;
use provisio_engine::{compile_procedure, TxnState};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use tokio::sync::broadcast;

/// `Ok` for an operator's token; else the 403 saying the subject may not do `what`.
pub(super) fn operator(who: &Identity, what: &str) -> Result<(), ApiError> {
    if who.operator {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "operator_only",
            format!(
                "subject `{}` may not {what}: that needs a token with `operator = true`",
                who.subject
            ),
        ))
    }
}

/// `GET /v1/events`: Server-Sent Events of every request's progress (operators only: the
/// events of every subject).
#[utoipa::path(get, path = "/v1/events", tag = "operators", responses((status = 200, description = "Server-Sent Events of every request", content_type = "text/event-stream"), (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody), (status = 403, description = "The token lacks the right", body = super::openapi::ErrorBody)))]
pub async fn all_events(
    State(d): Shared,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let who = identify(&d, &headers)?;
    operator(&who, "follow every subject's requests")?;
    let rx = d.hub.subscribe_all();
    let s = stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(text) => return Some((text, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .map(|text| {
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let name = v
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("message")
            .to_string();
        Ok(SseEvent::default().event(name).data(&*text))
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}

/// Whether `who` may see a procedure in the catalog: public ones its token may call and the
/// ACLs let it read; trusted and operator tokens see every one.
fn listed(d: &Daemon, who: &Identity, namespace: &str, procedure: &str, access: Access) -> bool {
    who.trusted
        || who.operator
        || (access == Access::Public
            && who.may_call(&format!("{namespace}/{procedure}"))
            && d.acl.permits(who, namespace, procedure, Right::Read))
}

/// `GET /v1/namespaces`.
#[utoipa::path(get, path = "/v1/namespaces", tag = "catalog", responses((status = 200, description = "Namespaces with the procedures the caller may see"), (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody)))]
pub async fn namespaces(State(d): Shared, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let who = identify(&d, &headers)?;
    let items: Vec<Value> = d
        .engine
        .catalog()
        .namespaces()
        .filter_map(|ns| {
            let procedures: Vec<&str> = ns
                .procedures
                .iter()
                .filter(|p| listed(&d, &who, &ns.name, &p.name, p.access))
                .map(|p| p.name.as_str())
                .collect();
            (!procedures.is_empty()).then(|| {
                json!({
                    "name": ns.name,
                    "description": ns.description.as_deref().map(str::trim),
                    "procedures": procedures,
                })
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/namespaces/{ns}`: its procedures (those the caller may call) with their inputs.
#[utoipa::path(get, path = "/v1/namespaces/{ns}", tag = "catalog", params(("ns" = String, Path, description = "Namespace")), responses((status = 200, description = "Its procedures with their inputs"), (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody), (status = 404, description = "No such namespace open to the caller", body = super::openapi::ErrorBody)))]
pub async fn namespace(
    State(d): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = identify(&d, &headers)?;
    let catalog = d.engine.catalog();
    let ns = catalog.namespace(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no namespace `{name}`: list them with GET /v1/namespaces"),
        )
    })?;
    let procedures: Vec<Value> = ns
        .procedures
        .iter()
        .filter(|p| listed(&d, &who, &ns.name, &p.name, p.access))
        .map(|p| {
            json!({
                "name": p.name,
                "access": p.access.to_string(),
                "kind": p.kind.to_string(),
                "description": p.description.as_deref().map(str::trim),
                "inputs": p.inputs.iter().map(|i| json!({
                    "name": i.name,
                    "type": i.ty.as_deref().unwrap_or("any"),
                    "required": i.required && i.default.is_none(),
                    "default": i.default.as_ref().map(|d| d.to_text()),
                    "secret": i.secret,
                    "description": i.description,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    if procedures.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no procedure of namespace `{name}` is open to subject `{}`",
                who.subject
            ),
        ));
    }
    Ok(Json(json!({
        "name": ns.name,
        "description": ns.description.as_deref().map(str::trim),
        "procedures": procedures,
    })))
}

#[derive(Debug, Deserialize)]
pub struct GraphQuery {
    format: Option<String>,
    expand: Option<bool>,
}

/// `GET /v1/namespaces/{ns}/procedures/{procedure}/graph?format=dot|mermaid&expand=true`.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/procedures/{procedure}/graph", tag = "catalog", params(("ns" = String, Path, description = "Namespace"), ("procedure" = String, Path, description = "Procedure"), ("format" = Option<String>, Query, description = "dot (default) or mermaid"), ("expand" = Option<bool>, Query, description = "Expand nested procedures")), responses((status = 200, description = "The compiled DAG", content_type = "text/plain"), (status = 400, description = "A bad parameter", body = super::openapi::ErrorBody), (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody), (status = 404, description = "No such procedure open to the caller", body = super::openapi::ErrorBody)))]
pub async fn graph(
    State(d): Shared,
    headers: HeaderMap,
    Path((namespace, procedure)): Path<(String, String)>,
    q: Result<Query<GraphQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let who = identify(&d, &headers)?;
    let q = query(q)?;
    let visible = d
        .engine
        .catalog()
        .namespace(&namespace)
        .and_then(|ns| ns.procedures.iter().find(|p| p.name == procedure))
        .is_some_and(|p| listed(&d, &who, &namespace, &procedure, p.access));
    if !visible {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no procedure `{namespace}/{procedure}` open to subject `{}`",
                who.subject
            ),
        ));
    }
    let (format, content_type) = match q.format.as_deref().unwrap_or("dot") {
        "dot" => (GraphFormat::Dot, "text/vnd.graphviz; charset=utf-8"),
        "mermaid" => (GraphFormat::Mermaid, "text/plain; charset=utf-8"),
        other => {
            return Err(ApiError::bad(
                "bad_query",
                format!("format={other:?}: expected dot or mermaid"),
            ))
        }
    };
    let target = CallTarget {
        namespace,
        procedure,
    };
    let program = compile_procedure(
        d.engine.catalog(),
        &target,
        &provisio_engine::Limits::default(),
    )
    .map_err(|e| ApiError::bad("invalid_procedure", e.to_string()))?;
    let text = render(&program, format, q.expand.unwrap_or(false));
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

fn read_body(d: &Daemon, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request body is larger than {} bytes (serve.max_body_bytes): split the request, or raise the limit",
                    d.config.max_body_bytes
                ),
            )
        } else {
            ApiError::bad("bad_body", format!("cannot read the request body: {e}"))
        }
    })
}

/// `POST /v1/plan`: what the request would do, calling no provider (as `provisio plan
/// --json`).
#[utoipa::path(post, path = "/v1/plan", tag = "requests", request_body(description = "The request: the documents `provisio run` reads", content(("application/json"), ("application/xml"), ("application/yaml"))), responses((status = 200, description = "The provider calls that would be made, by wave; nothing is called"), (status = 400, description = "The request does not parse or compile", body = super::openapi::ErrorBody), (status = 413, description = "Body larger than serve.max_body_bytes", body = super::openapi::ErrorBody), (status = 415, description = "Content-Type is not a request format", body = super::openapi::ErrorBody), (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody), (status = 403, description = "The token lacks the right", body = super::openapi::ErrorBody)))]
pub async fn plan(
    State(d): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = identify(&d, &headers)?;
    let body = read_body(&d, body)?;
    let format = format_of(&headers)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad("bad_body", "the request body is not UTF-8 text"))?;
    let Checked {
        parsed,
        warnings,
        programs,
        ..
    } = check(&d, &who, format, text)?;
    let mut plans = Vec::with_capacity(parsed.requests.len());
    // `check` compiled each item once (rights, trusted bodies): planned as compiled.
    for (request, program) in parsed.requests.iter().zip(programs) {
        let entries = d.engine.plan_program(program, request).await;
        plans.push(
            entries
                .iter()
                .map(|e| {
                    json!({
                        "step": e.step, "wave": e.wave, "target": e.target, "provider": e.provider,
                        "inputs": provisio_engine::data::json::to_json(&e.inputs),
                        "preview": e.preview, "unresolved": e.unresolved,
                    })
                })
                .collect::<Vec<_>>(),
        );
    }
    if parsed.batch {
        let batch: Vec<Value> = plans
            .into_iter()
            .enumerate()
            .map(|(i, plan)| json!({ "item": i + 1, "plan": plan }))
            .collect();
        return Ok(Json(json!({ "batch": batch, "warnings": warnings })));
    }
    let plan = plans.remove(0);
    Ok(Json(json!({ "plan": plan, "warnings": warnings })))
}

/// `POST /v1/namespaces/{ns}/procedures/{procedure}`: calls a public procedure with the
/// JSON body as its data (as the HMC web services did); the same answers and query
/// parameters as `POST /v1/requests`.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/procedures/{procedure}", tag = "catalog", request_body(description = "The procedure's data as a JSON object", content_type = "application/json"), params(("ns" = String, Path, description = "Namespace"), ("procedure" = String, Path, description = "Procedure"), ("wait" = Option<String>, Query, description = "Answer with the finished request when it finishes within this time (e.g. 30s, at most 5m)"),
        ("priority" = Option<i16>, Query, description = "Higher runs first"),
        ("serial_key" = Option<String>, Query, description = "Requests with the same key run one at a time, in order"),
        ("delay" = Option<String>, Query, description = "Not before this long from now (e.g. 10m)"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key returns the same request"),
        ("X-Serialization-Key" = Option<String>, Header, description = "As serial_key")), responses((status = 200, description = "Finished within ?wait=", body = super::openapi::JobView),
        (status = 202, description = "Queued", body = super::openapi::Accepted),
        (status = 400, description = "The request does not parse or compile; a bad parameter", body = super::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody), (status = 403, description = "The token lacks the right", body = super::openapi::ErrorBody),
        (status = 413, description = "Body larger than serve.max_body_bytes", body = super::openapi::ErrorBody),
        (status = 415, description = "Content-Type is not a request format", body = super::openapi::ErrorBody)))]
pub async fn invoke(
    State(d): Shared,
    headers: HeaderMap,
    Path((namespace, procedure)): Path<(String, String)>,
    q: Result<Query<SubmitQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let who = identify(&d, &headers)?;
    let q = query(q)?;
    let body = read_body(&d, body)?;
    let data: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad(
                "invalid_request",
                format!("the body must be the procedure's data as a JSON object: {e}"),
            )
        })?
    };
    if !data.is_object() {
        return Err(ApiError::bad(
            "invalid_request",
            "the body must be the procedure's data as a JSON object (`{\"name\": …}`)",
        ));
    }
    let request = json!({ "call": format!("{namespace}/{procedure}"), "data": data }).to_string();
    accept(&d, &who, Format::Json, &request, q, &headers).await
}

#[derive(Debug, Deserialize)]
pub struct StuckQuery {
    older_than: Option<String>,
}

/// `GET /v1/transactions/stuck?older_than=10m`: the watchdog list (operators): running or
/// rolling-back transactions unchanged for that long, and every `rollback_failed` one.
#[utoipa::path(get, path = "/v1/transactions/stuck", tag = "operators", params(("older_than" = Option<String>, Query, description = "Unchanged this long (default 10m)")), responses((status = 200, description = "Running or rolling-back transactions unchanged that long, and every rollback_failed one"), (status = 400, description = "A bad parameter", body = super::openapi::ErrorBody), (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody), (status = 403, description = "The token lacks the right", body = super::openapi::ErrorBody)))]
pub async fn stuck(
    State(d): Shared,
    headers: HeaderMap,
    q: Result<Query<StuckQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = identify(&d, &headers)?;
    operator(&who, "list stuck transactions")?;
    let q = query(q)?;
    let older = super::api::parse_duration("older_than", q.older_than.as_deref().unwrap_or("10m"))?;
    let cutoff = now_ms().saturating_sub(older.as_millis() as u64);
    let mut items = Vec::new();
    for state in [
        TxnState::Running,
        TxnState::RollingBack,
        TxnState::RollbackFailed,
    ] {
        let found = index::in_state(d.store.as_ref(), state).map_err(ApiError::internal)?;
        for s in found {
            if state == TxnState::RollbackFailed || s.updated_ms <= cutoff {
                items.push(json!({
                    "id": s.id.as_str(),
                    "state": s.state.name(),
                    "target": s.target,
                    "who": s.who,
                    "started_ms": s.started_ms,
                    "updated_ms": s.updated_ms,
                    "message": s.message,
                }));
            }
        }
    }
    Ok(Json(json!({ "items": items })))
}

/// `POST /v1/transactions/{id}/resume-rollback` (operators): retries the undos of a
/// `rollback_failed` transaction, as `provisio tx resume-rollback`.
#[utoipa::path(post, path = "/v1/transactions/{id}/resume-rollback", tag = "operators", params(("id" = String, Path, description = "Transaction id")), responses((status = 200, description = "What the retried undos did"), (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody), (status = 403, description = "The token lacks the right", body = super::openapi::ErrorBody), (status = 409, description = "Not rollback_failed, or unknown", body = super::openapi::ErrorBody)))]
pub async fn resume_rollback(
    State(d): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = identify(&d, &headers)?;
    operator(&who, "resume a rollback")?;
    let journal = d.journal_for(&who.subject);
    let engine = d.engine.clone().with_journal(journal.clone());
    let r = provisio_engine::resume_rollback(&engine, &journal, &id)
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "cannot_resume", e.to_string()))?;
    Ok(Json(json!({
        "id": r.txn_id.as_str(),
        "from": r.from.name(),
        "to": r.to.name(),
        "undone": r.undone,
        "in_doubt": r.in_doubt,
        "problems": r.problems,
    })))
}
