//! The daemon's HTTP API under `/v1` (axum). Every answer is JSON; every error is
//! `{"code": "...", "message": "..."}` with a stable code and a message saying what to do.
//! See docs/daemon.md for the routes.

use super::auth::{Identity, Right};
use super::{finished_event, now_ms, parse_body, Daemon, Payload};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use provisio_engine::data::{Element, Node};
use provisio_engine::model::{Format, RequestTarget};
use provisio_engine::queue::{Cancelled, Job, JobState, ListFilter, NewJob, QueueError};
use provisio_engine::txn::Record;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// The longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(super) fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(super) fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "internal error in the API");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{e}\n  hint: see the daemon's log; retry later"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(json!({ "code": self.code, "message": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> ApiError {
        match e {
            QueueError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            QueueError::WrongState { .. } => {
                ApiError::new(StatusCode::CONFLICT, "wrong_state", e.to_string())
            }
            QueueError::BadField { .. } => ApiError::bad("bad_field", e.to_string()),
            other => ApiError::internal(other),
        }
    }
}

pub(super) type Shared = State<Arc<Daemon>>;

/// The routes.
pub fn router(d: Arc<Daemon>) -> Router {
    let limit = d.config.max_body_bytes;
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .route("/v1/whoami", get(whoami))
        .route("/v1/metrics", get(metrics))
        .route("/v1/openapi.json", get(super::openapi::document))
        .route("/v1/schema/{kind}", get(super::schema::schema))
        .route("/v1/requests", post(submit).get(list))
        .route("/v1/requests/{id}", get(status))
        .route("/v1/requests/{id}/cancel", post(cancel))
        .route("/v1/requests/{id}/events", get(events))
        .route("/v1/jobs/{id}/requeue", post(requeue))
        .route("/v1/jobs/{id}/discard", post(discard))
        .route("/v1/events", get(super::ops::all_events))
        .route("/v1/namespaces", get(super::ops::namespaces))
        .route("/v1/namespaces/{ns}", get(super::ops::namespace))
        .route(
            "/v1/namespaces/{ns}/procedures/{procedure}",
            post(super::ops::invoke),
        )
        .route(
            "/v1/namespaces/{ns}/procedures/{procedure}/graph",
            get(super::ops::graph),
        )
        .route("/v1/plan", post(super::ops::plan))
        .route("/v1/transactions/stuck", get(super::ops::stuck))
        .route("/v1/transactions", get(super::txns::list))
        .route("/v1/transactions/{id}", get(super::txns::show))
        .route("/v1/audit", get(super::txns::audit))
        .route("/v1/transactions/{id}/resolve", post(super::txns::resolve))
        .route("/v1/transactions/prune", post(super::txns::prune))
        .route(
            "/v1/transactions/{id}/resume-rollback",
            post(super::ops::resume_rollback),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(access_log))
        .with_state(d)
}

/// One log line per HTTP request, in a span carrying its method and path (the job and
/// transaction spans of what it queues are the workers').
async fn access_log(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    // Off at the default level (warn): nothing to build, not even the path's copy.
    if !tracing::enabled!(tracing::Level::INFO) {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    let span = tracing::info_span!("http", %method, %path);
    let response = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request"
        )
    });
    response
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such route; the API is under /v1 (see docs/daemon.md)",
    )
}

#[utoipa::path(get, path = "/v1/health", tag = "meta", security(()), responses((status = 200, description = "The process runs")))]
async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/v1/ready", tag = "meta", security(()), responses((status = 200, description = "Takes requests"), (status = 503, description = "Starting or stopping, or its PostgreSQL store is unreachable", body = super::openapi::ErrorBody)))]
async fn ready(State(d): Shared) -> Response {
    if d.ready.load(Ordering::SeqCst) && !super::database_lost(&d) {
        Json(json!({ "ready": true })).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            if super::database_lost(&d) {
                "the daemon cannot reach its PostgreSQL store: it reconnects, and takes requests again once the database is back"
            } else {
                "the daemon is starting or stopping; retry shortly"
            },
        )
        .into_response()
    }
}

/// `GET /v1/metrics`: Prometheus text (any configured token).
#[utoipa::path(get, path = "/v1/metrics", tag = "meta", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"), (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody)))]
async fn metrics(State(d): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    identify(&d, &headers)?;
    let text = d.metrics.render(&d.queue, d.busy.load(Ordering::SeqCst));
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// `GET /v1/whoami`: the caller's identity as the daemon sees it.
#[utoipa::path(get, path = "/v1/whoami", tag = "meta", responses((status = 200, description = "The caller's subject, groups and rights"), (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody)))]
async fn whoami(State(d): Shared, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let who = identify(&d, &headers)?;
    Ok(Json(json!({
        "subject": who.subject,
        "groups": who.groups,
        "trusted": who.trusted,
        "operator": who.operator,
    })))
}

/// The identity of the request's bearer token.
pub(super) fn identify(d: &Daemon, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let unauth = |code, m: &str| ApiError::new(StatusCode::UNAUTHORIZED, code, m);
    if d.tokens.is_empty() {
        return Err(unauth(
            "no_tokens_configured",
            "the daemon has no [[serve.tokens]]: add one (its hash from `provisio token hash --new`) to provisio.toml and restart it",
        ));
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauth(
            "unauthenticated",
            "send `Authorization: Bearer TOKEN` with a token listed (as its hash) in [[serve.tokens]]",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            unauth(
                "unauthenticated",
                "the Authorization header must be `Bearer TOKEN`",
            )
        })?;
    d.tokens.identify(token).cloned().ok_or_else(|| {
        unauth(
            "invalid_token",
            "the bearer token is not one of [[serve.tokens]] (compare `provisio token hash` of it with their sha256)",
        )
    })
}

pub(super) fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "application/json" => Ok(Format::Json),
        "application/xml" | "text/xml" => Ok(Format::Xml),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
            Ok(Format::Yaml)
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {:?} is not a request format: send application/json, application/xml or application/yaml",
                if other.is_empty() { "(none)" } else { other }
            ),
        )),
    }
}

/// A `?wait=` duration, at most [`MAX_WAIT`].
pub(super) fn parse_wait(text: &str) -> Result<Duration, ApiError> {
    Ok(parse_duration("wait", text)?.min(MAX_WAIT))
}

/// A duration query parameter (`30s`, `10m`; a bare number is seconds), uncapped.
pub(super) fn parse_duration(name: &str, text: &str) -> Result<Duration, ApiError> {
    match text.trim().parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(text.trim()).map_err(|e| {
            ApiError::bad(
                "bad_query",
                format!("{name}={text:?} is not a duration ({e}); write e.g. {name}=30s"),
            )
        }),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct SubmitQuery {
    wait: Option<String>,
    priority: Option<i16>,
    serial_key: Option<String>,
    delay: Option<String>,
}

pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| {
        ApiError::bad(
            "bad_query",
            format!("{e}; see docs/daemon.md for the parameters"),
        )
    })
}

fn header_text(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(s) if !s.trim().is_empty() && s.len() <= 256 => Ok(Some(s.trim().to_string())),
            _ => Err(ApiError::bad(
                "bad_header",
                format!("header {name} must be printable text of 1 to 256 characters"),
            )),
        },
    }
}

/// `POST /v1/requests`.
#[utoipa::path(post, path = "/v1/requests", tag = "requests", request_body(description = "The request: the documents `provisio run` reads", content(("application/json"), ("application/xml"), ("application/yaml"))), params(("wait" = Option<String>, Query, description = "Answer with the finished request when it finishes within this time (e.g. 30s, at most 5m)"),
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
async fn submit(
    State(d): Shared,
    q: Result<Query<SubmitQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let who = identify(&d, &headers)?;
    let q = query(q)?;
    let body = body.map_err(|e| {
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
    })?;
    let format = format_of(&headers)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad("bad_body", "the request body is not UTF-8 text"))?;
    accept(&d, &who, format, text, q, &headers).await
}

/// A request parsed, authorized and compiled: what it calls, and warnings for the client.
pub(super) struct Checked {
    pub(super) parsed: super::Parsed,
    pub(super) target: String,
    pub(super) warnings: Vec<String>,
    /// Each item's compiled program, in order (a trusted request's is compiled here once;
    /// its job runs it rather than compiling the body again).
    pub(super) programs: Vec<Arc<provisio_engine::Program>>,
}

/// Parses a request body, checks the caller's rights to it and compiles it (every item of a
/// batch).
pub(super) fn check(
    d: &Daemon,
    who: &Identity,
    format: Format,
    text: &str,
) -> Result<Checked, ApiError> {
    let mut parsed = parse_body(text, format).map_err(|e| ApiError::bad("invalid_request", e))?;
    let mut warnings = Vec::new();
    let target = match &parsed.requests[0].target {
        RequestTarget::Trusted(_) => {
            if !who.trusted {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "trusted_request_forbidden",
                    format!(
                        "the request carries its own procedure body (a trusted request), which subject `{}` may not send: call a public procedure by name, or have the operator set `trusted = true` on this token",
                        who.subject
                    ),
                ));
            }
            // Every procedure the body calls is checked as if called by name (MPS: the
            // procedure-level checks follow the kind-of-request check).
            if let RequestTarget::Trusted(body) = &parsed.requests[0].target {
                for (step, call) in body.direct_calls() {
                    may_call_from_trusted(d, who, step, call)?;
                }
            }
            "(trusted request)".to_string()
        }
        RequestTarget::Call(call) => {
            let t = call.to_string();
            match execute_denied(d, who, call, false) {
                Some(Denied::Acl) => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "acl_denied",
                        format!(
                            "subject `{}` has no execute right on `{t}` ([[serve.acl]] of its namespace or procedure): ask the operator for one",
                            who.subject
                        ),
                    ))
                }
                Some(Denied::NotAllowed) => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "procedure_forbidden",
                        format!(
                            "subject `{}` may not call `{t}`: its token's `allow` list does not name it (ask the operator)",
                            who.subject
                        ),
                    ))
                }
                // Without `private_needs_grant` there is no `Private` answer: a private
                // procedure called by name is refused by the engine as from outside.
                Some(Denied::Private) | None => {}
            }
            t
        }
    };
    let count = parsed.requests.len();
    let batch = parsed.batch;
    let mut programs = Vec::with_capacity(count);
    for (i, request) in parsed.requests.iter_mut().enumerate() {
        let item = |m: String| {
            if batch {
                format!(
                    "batch item {} of {count}: {m}\nnothing of the batch was queued",
                    i + 1
                )
            } else {
                m
            }
        };
        // The security context comes from the token, never from the body.
        if set_security_context(&mut request.context, who) && warnings.is_empty() {
            warnings.push("the request's context/securityContext was ignored: a request runs as its token's subject, which the daemon puts into context/securityContext (subject, groups)".to_string());
        }
        match d.engine.program(request) {
            Ok(program) => programs.push(program),
            Err(errors) => {
                let private = errors.0.iter().any(|e| e.code() == "PRV0103");
                return Err(if private {
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "private_procedure",
                        item(format!("{errors}")),
                    )
                } else {
                    ApiError::bad("invalid_request", item(format!("{errors}")))
                });
            }
        }
    }
    Ok(Checked {
        parsed,
        target,
        warnings,
        programs,
    })
}

/// Replaces a request's `context/securityContext` with the caller's identity:
/// `securityContext/subject` and one `securityContext/group` per group. Returns whether the
/// request carried one of its own (dropped).
pub(super) fn set_security_context(context: &mut Element, who: &Identity) -> bool {
    let before = context.children.len();
    context
        .children
        .retain(|c| !matches!(c, Node::Element(e) if e.local_name() == "securityContext"));
    let had = context.children.len() != before;
    let mut sc = Element::new("securityContext");
    sc.push(Element::with_text("subject", who.subject.as_str()));
    for g in &who.groups {
        let mut group = Element::with_text("group", g.as_str());
        group.list_item = true;
        sc.push(group);
    }
    context.push(sc);
    had
}

/// Why a subject may not execute a procedure, if it may not.
enum Denied {
    /// A private procedure without an explicit execute grant.
    Private,
    /// No execute right from `[[serve.acl]]`.
    Acl,
    /// Not in the token's `allow` list.
    NotAllowed,
}

/// The execute checks of one called procedure, in their order: with `private_needs_grant`,
/// a private procedure needs an explicit execute grant (an entry naming it or its
/// namespace), never the openness of a procedure no entry governs; then the ACL's execute
/// right and the token's `allow` list.
fn execute_denied(
    d: &Daemon,
    who: &Identity,
    call: &provisio_engine::model::CallTarget,
    private_needs_grant: bool,
) -> Option<Denied> {
    let private = private_needs_grant
        && d.engine
            .catalog()
            .namespace(&call.namespace)
            .and_then(|ns| ns.procedure(&call.procedure))
            .is_some_and(|p| p.access == provisio_engine::model::Access::Private);
    if private {
        if !d
            .acl
            .grants(who, &call.namespace, &call.procedure, Right::Execute)
        {
            return Some(Denied::Private);
        }
    } else if !d
        .acl
        .permits(who, &call.namespace, &call.procedure, Right::Execute)
    {
        return Some(Denied::Acl);
    }
    (!who.may_call(&call.to_string())).then_some(Denied::NotAllowed)
}

/// A procedure a trusted request's body calls (step `step`), checked as a call by name
/// would be, a private one needing an explicit grant ([`execute_denied`]).
fn may_call_from_trusted(
    d: &Daemon,
    who: &Identity,
    step: &str,
    call: &provisio_engine::model::CallTarget,
) -> Result<(), ApiError> {
    let t = call.to_string();
    let (code, message) = match execute_denied(d, who, call, true) {
        None => return Ok(()),
        Some(Denied::Private) => (
            "private_procedure",
            format!(
                "step `{step}` of the trusted request calls `{t}`, a private procedure, which subject `{}` may call only with an explicit execute right on it ([[serve.acl]] naming the procedure or its namespace): ask the operator for one; nothing ran",
                who.subject
            ),
        ),
        Some(Denied::Acl) => (
            "acl_denied",
            format!(
                "step `{step}` of the trusted request calls `{t}`, on which subject `{}` has no execute right ([[serve.acl]] of its namespace or procedure): ask the operator for one; nothing ran",
                who.subject
            ),
        ),
        Some(Denied::NotAllowed) => (
            "procedure_forbidden",
            format!(
                "step `{step}` of the trusted request calls `{t}`, which subject `{}` may not call: its token's `allow` list does not name it (ask the operator); nothing ran",
                who.subject
            ),
        ),
    };
    Err(ApiError::new(StatusCode::FORBIDDEN, code, message))
}

/// Queues a checked request (and waits for it with `?wait=`): the answer of a submission.
pub(super) async fn accept(
    d: &Arc<Daemon>,
    who: &Identity,
    format: Format,
    text: &str,
    q: SubmitQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if d.stopping() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the daemon is shutting down and takes no new requests; retry against the next one",
        ));
    }
    let Checked {
        parsed,
        target,
        warnings,
        programs,
    } = check(d, who, format, text)?;
    let trusted = target == "(trusted request)";
    let mut programs = programs.into_iter();
    // Every parameter is checked before anything is queued.
    let wait = q.wait.as_deref().map(parse_wait).transpose()?;
    // Not capped like `wait`: `?delay=2h` schedules the job two hours ahead.
    let delay = q
        .delay
        .as_deref()
        .map(|t| parse_duration("delay", t))
        .transpose()?;
    let idempotency_key = header_text(headers, "idempotency-key")?;
    let serial_key = match q.serial_key {
        Some(k) => Some(k),
        None => header_text(headers, "x-serialization-key")?,
    };
    let now = now_ms();
    let not_before_ms = delay.map_or(0, |t| {
        now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
    });
    let batch = parsed.batch;
    let mut jobs = Vec::with_capacity(parsed.requests.len());
    let mut fast = (wait.is_some() && !batch && !d.stopping()).then_some(());
    for (i, request) in parsed.requests.into_iter().enumerate() {
        // Each job carries its own item, as checked (never the whole batch's text).
        let sealed = d.seal(&Payload::encode(&request).map_err(ApiError::internal)?);
        // A trusted request's body was compiled by the check: its job runs that program.
        let program = programs.next().filter(|_| trusted);
        let new = NewJob {
            payload: sealed,
            priority: q.priority.unwrap_or(0),
            not_before_ms,
            serial_key: serial_key.clone(),
            // A batch's items: the key with the item's number.
            idempotency_key: idempotency_key.as_ref().map(|k| {
                if batch {
                    format!("{k}#{}", i + 1)
                } else {
                    k.clone()
                }
            }),
            subject: who.subject.clone(),
            target: target.clone(),
            max_attempts: d.config.max_attempts,
        };
        // A waiting client whose request a worker claiming now would take: submitted and
        // claimed in one write, and run by this submission (on a task of its own, so a
        // client hanging up does not stop the transaction halfway).
        let new = match fast.take() {
            Some(()) => match d.queue.submit_claimed(new, now, d.config.lease.0).await {
                Ok(Ok(job)) => {
                    if let Some(p) = program {
                        d.keep_program(&job.id, p);
                    }
                    return run_waiting(d, job, request, wait.unwrap_or_default(), warnings).await;
                }
                Ok(Err(new)) => new,
                // Queued, but the database was lost as it was claimed: never an error for
                // a job that is queued (a client resending would run it twice).
                Err(QueueError::ClaimLost { id }) => {
                    return claimed_as_lost(d, id, wait.unwrap_or_default(), warnings).await;
                }
                Err(e) => return Err(e.into()),
            },
            None => new,
        };
        let submitted = d.queue.submit(new, now).await?;
        if let (true, Some(p)) = (submitted.created, program) {
            d.keep_program(&submitted.job.id, p);
        }
        if submitted.created {
            tracing::info!(job = %submitted.job.id, subject = %who.subject, target = %target, "request queued");
            d.wake.notify_one();
        }
        jobs.push(submitted);
    }
    let created = jobs.iter().all(|s| s.created);
    if let Some(wait) = wait {
        // A waiting client lends the pool a worker (one, even for a batch: a waiting
        // connection adds one job in flight, never a batch's worth): the pool's size
        // (`serve.workers`) does not cap how many waited-for requests run at once.
        if not_before_ms == 0 && jobs.iter().any(|s| s.created) {
            super::lend_worker(d);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut done = Vec::with_capacity(jobs.len());
        for s in &jobs {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match wait_for(d, &s.job.id, left).await? {
                Some(job) => done.push(job),
                None => break,
            }
        }
        if done.len() == jobs.len() {
            let mut body = if batch {
                json!({ "batch": done.iter().map(|j| view(d, j, true)).collect::<Vec<_>>() })
            } else {
                view(d, &done[0], true)
            };
            add(&mut body, "created", json!(created));
            add(&mut body, "warnings", json!(warnings));
            return Ok((StatusCode::OK, Json(body)).into_response());
        }
    }
    let mut states = Vec::with_capacity(jobs.len());
    for s in &jobs {
        let current = d.queue.get(&s.job.id)?.unwrap_or_else(|| s.job.clone());
        states
            .push(json!({ "id": current.id, "state": current.state.name(), "created": s.created }));
    }
    let location = format!("/v1/requests/{}", jobs[0].job.id);
    let mut body = if batch {
        json!({ "batch": states, "created": created, "warnings": warnings })
    } else {
        let mut one = states.remove(0);
        add(&mut one, "warnings", json!(warnings));
        one
    };
    if !created {
        add(&mut body, "note", json!("the Idempotency-Key was used before: this is the request it created; nothing new was queued"));
    }
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

/// Runs a job [`provisio_engine::queue::Queue::submit_claimed`] gave this waiting submission and answers with it:
/// 200 with the finished request, or 202 when it outlasts `wait` (after a sync: the job
/// is on disk before its id is given out).
async fn run_waiting(
    d: &Arc<Daemon>,
    job: Job,
    request: provisio_engine::Request,
    wait: Duration,
    warnings: Vec<String>,
) -> Result<Response, ApiError> {
    let id = job.id.clone();
    tracing::info!(job = %id, subject = %job.subject, target = %job.target, "request queued and claimed for its waiting client");
    // Counted before the task starts: a shutdown that begins now waits for it.
    d.busy.fetch_add(1, Ordering::SeqCst);
    let runner = {
        let d = d.clone();
        tokio::spawn(async move {
            let finished = super::run_job(&d, job, Some(request)).await;
            d.busy.fetch_sub(1, Ordering::SeqCst);
            finished
        })
    };
    // The job as its run ended it (no need to read it back), else as the queue has it.
    let finished = match tokio::time::timeout(wait, runner).await {
        Ok(Ok(Some(f))) if f.job.state.is_final() => Some(f),
        Ok(_) => d
            .queue
            .get(&id)?
            .filter(|j| j.state.is_final())
            .map(|job| super::Finished {
                job,
                response: None,
                steps: None,
            }),
        Err(_) => None,
    };
    // Not final yet (a retry's backoff, or the time is up): as any waiting submission.
    let finished = match finished {
        Some(job) => Some(job),
        None => {
            d.queue.sync().await?;
            None
        }
    };
    if let Some(super::Finished {
        job,
        response,
        steps,
    }) = finished
    {
        let body = JobView {
            created: Some(true),
            warnings: Some(&warnings),
            ..view_with(d, &job, response, steps.as_deref())
        };
        return Ok(json_answer(StatusCode::OK, &body));
    }
    let current = d.queue.get(&id)?;
    let state = current.map_or("running", |j| j.state.name());
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/requests/{id}"))],
        Json(json!({ "id": id, "state": state, "created": true, "warnings": warnings })),
    )
        .into_response())
}

/// Answers a waiting submission whose job was queued and claimed as the database was lost
/// ([`QueueError::ClaimLost`]): once the database is back (within `wait`) and the job is
/// there, as any waiting submission (200 with the finished request, else 202 with its id);
/// 503 naming the job when the database is not back in time, or saying that nothing was
/// queued when the database lost the job's commit too.
async fn claimed_as_lost(
    d: &Arc<Daemon>,
    id: String,
    wait: Duration,
    warnings: Vec<String>,
) -> Result<Response, ApiError> {
    tracing::warn!(job = %id, "the database was lost as a waiting client's job was claimed: the job is taken back and runs once the database is back");
    let deadline = tokio::time::Instant::now() + wait;
    let back = match d.store.postgres() {
        None => true,
        Some(pg) => {
            let mut link = pg.link();
            let up = tokio::time::timeout_at(deadline, link.wait_for(|l| l.up && !l.closed))
                .await
                .is_ok_and(|r| r.is_ok());
            up
        }
    };
    if !back {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_lost",
            format!("the connection to the PostgreSQL store was lost as request `{id}` was queued: it runs once the database is back, unless the database lost it too; ask GET /v1/requests/{id} then, and send the request again only if it is not there (an Idempotency-Key makes resending safe)"),
        ));
    }
    if d.queue.get(&id)?.is_none() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_lost",
            "the connection to the PostgreSQL store was lost as the request was queued, and the database lost it: nothing was queued; send the request again".to_string(),
        ));
    }
    // On disk before its id is given out (its claim committed without waiting for it).
    d.queue.sync().await?;
    super::lend_worker(d);
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if let Some(job) = wait_for(d, &id, left).await? {
        let mut body = view(d, &job, true);
        add(&mut body, "created", json!(true));
        add(&mut body, "warnings", json!(warnings));
        return Ok((StatusCode::OK, Json(body)).into_response());
    }
    let state = d.queue.get(&id)?.map_or("queued", |j| j.state.name());
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/requests/{id}"))],
        Json(json!({ "id": id, "state": state, "created": true, "warnings": warnings })),
    )
        .into_response())
}

fn add(v: &mut Value, key: &str, value: Value) {
    if let Some(o) = v.as_object_mut() {
        o.insert(key.into(), value);
    }
}

/// Waits up to `wait` for a job to reach a final state: the job, or `None` on time-out.
async fn wait_for(d: &Daemon, id: &str, wait: Duration) -> Result<Option<Job>, ApiError> {
    let mut rx = d.hub.subscribe(id);
    // Several daemons on one database: the daemon that runs it forwards its events here.
    super::remote::watch(d, id);
    let deadline = tokio::time::Instant::now() + wait;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no request `{id}`"),
        )
    };
    loop {
        // Its state alone until it ends (on PostgreSQL the job's body, the request with it,
        // is not read at every look), then the whole job once.
        let state = d.queue.state_of(id)?.ok_or_else(not_found)?;
        if state.is_final() {
            let job = d.queue.get(id)?.ok_or_else(not_found)?;
            d.hub.close(id);
            return Ok(Some(job));
        }
        // Several daemons on one database: the job may run on another, whose events come
        // by NOTIFY (see `remote`); a watch that arrived there too late (or a notification
        // lost while reconnecting) costs at most a second.
        let until = if d.queue.is_shared() {
            deadline.min(tokio::time::Instant::now() + Duration::from_secs(1))
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, rx.recv()).await {
            Err(_) if until < deadline => {}
            Err(_) => return Ok(None),
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => rx = d.hub.subscribe(id),
        }
    }
}

/// A job as the API shows it, serialized as it is (no intermediate `Value`): its fields in
/// the order the API has always given them; `steps` and `response` in full views only,
/// `created` and `warnings` in a submission's answer.
#[derive(serde::Serialize)]
struct JobView<'a> {
    id: &'a str,
    state: &'static str,
    outcome: &'a Option<String>,
    subject: &'a str,
    target: &'a str,
    priority: i16,
    serial_key: &'a Option<String>,
    attempts: u32,
    max_attempts: u32,
    transactions: &'a [String],
    submitted_ms: u64,
    not_before_ms: u64,
    started_ms: Option<u64>,
    finished_ms: Option<u64>,
    error: &'a Option<String>,
    cancel_requested: bool,
    /// What an MPS `queue` step's `queueContext` set on the job: the parents it runs
    /// after (`parentQueue`) and those it still waits for.
    parents: &'a [String],
    waiting_for: &'a [String],
    /// `false` for a succeeded job whose response was dropped
    /// (`retainSuccessfulResponses="0"`).
    response_retained: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<StepsView<'a>>,
    /// `Some(Value::Null)`: a full view of a job without a response.
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a [String]>,
}

impl<'a> JobView<'a> {
    /// The job's own fields (no steps, no response).
    fn of(job: &'a Job) -> JobView<'a> {
        JobView {
            id: &job.id,
            state: job.state.name(),
            outcome: &job.outcome,
            subject: &job.subject,
            target: &job.target,
            priority: job.priority,
            serial_key: &job.serial_key,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            transactions: &job.txns,
            submitted_ms: job.submitted_ms,
            not_before_ms: job.not_before_ms,
            started_ms: job.started_ms,
            finished_ms: job.finished_ms,
            error: &job.error,
            cancel_requested: job.cancel_requested,
            parents: &job.parents,
            waiting_for: &job.waiting_for,
            response_retained: !(job.drop_success_response && job.state == JobState::Succeeded),
            steps: None,
            response: None,
            created: None,
            warnings: None,
        }
    }

    /// In full: with its steps and response, read back from the journal and the job.
    fn full(d: &Daemon, job: &'a Job) -> JobView<'a> {
        JobView {
            steps: Some(StepsView::Json(steps(d, job))),
            response: Some(d.response_of(job).unwrap_or(Value::Null)),
            ..JobView::of(job)
        }
    }

    /// As a `Value` (for answers that nest or extend it).
    fn into_value(self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A job's `steps`: as the run's events told them, or read back from the journal.
enum StepsView<'a> {
    Seen(&'a [super::StepSeen]),
    Json(Value),
}

impl serde::Serialize for StepsView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StepsView::Seen(seen) => super::serialize_steps(seen, s),
            StepsView::Json(v) => v.serialize(s),
        }
    }
}

/// A JSON answer serialized straight into a buffer sized for a full job view.
fn json_answer(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let mut buf = Vec::with_capacity(2048);
    match serde_json::to_writer(&mut buf, body) {
        Ok(()) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            buf,
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// A job as the API shows it; `full`: with its steps and response.
fn view(d: &Daemon, job: &Job, full: bool) -> Value {
    if full {
        JobView::full(d, job).into_value()
    } else {
        JobView::of(job).into_value()
    }
}

/// [`view`] in full, with the job's response and steps when the caller has them already
/// (not read back and decoded from the job and the journal).
fn view_with<'a>(
    d: &Daemon,
    job: &'a Job,
    response: Option<Value>,
    steps_seen: Option<&'a [super::StepSeen]>,
) -> JobView<'a> {
    let Some(response) = response else {
        return JobView::full(d, job);
    };
    let steps = match steps_seen {
        Some(seen) => StepsView::Seen(seen),
        None => StepsView::Json(steps(d, job)),
    };
    JobView {
        steps: Some(steps),
        response: Some(response),
        ..JobView::of(job)
    }
}

/// The steps of a job's last transaction, from the journal.
fn steps(d: &Daemon, job: &Job) -> Value {
    let Some(txn) = job.txns.last() else {
        return json!([]);
    };
    let Ok(id) = txn.parse::<provisio_engine::TxnId>() else {
        return json!([]);
    };
    let journal = d.journal_for(&job.subject);
    let Ok(records) = provisio_engine::txn::recovery::records(&journal, &id) else {
        return json!([]);
    };
    let mut order: Vec<String> = Vec::new();
    let mut by_step: std::collections::HashMap<String, Value> = Default::default();
    for (_, r) in records {
        let (step, set): (String, Vec<(&str, Value)>) = match r {
            Record::Intent {
                step,
                target,
                attempt,
                ..
            } => (
                step,
                vec![
                    ("target", json!(target)),
                    ("attempt", json!(attempt)),
                    ("state", json!("started")),
                ],
            ),
            Record::Done { step, .. } => (step, vec![("state", json!("done"))]),
            Record::Failed { step, message, .. } => (
                step,
                vec![("state", json!("failed")), ("error", json!(message))],
            ),
            Record::InDoubt { step, message, .. } => (
                step,
                vec![("state", json!("in_doubt")), ("error", json!(message))],
            ),
            Record::Undone { step, error, .. } => match error {
                None => (step, vec![("state", json!("undone"))]),
                Some(e) => (
                    step,
                    vec![("state", json!("undo_failed")), ("error", json!(e))],
                ),
            },
            _ => continue,
        };
        let entry = by_step.entry(step.clone()).or_insert_with(|| {
            order.push(step.clone());
            json!({ "step": step })
        });
        for (k, v) in set {
            add(entry, k, v);
        }
    }
    Value::Array(
        order
            .into_iter()
            .filter_map(|s| by_step.remove(&s))
            .collect(),
    )
}

fn visible(who: &Identity, job: &Job) -> Result<(), ApiError> {
    if who.may_see(&job.subject) {
        Ok(())
    } else {
        // Said as "not found": another subject's requests are not even confirmed to exist.
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no request `{}` of subject `{}`", job.id, who.subject),
        ))
    }
}

fn get_job(d: &Daemon, who: &Identity, id: &str) -> Result<Job, ApiError> {
    let job = d.queue.get(id)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no request `{id}`: list them with GET /v1/requests"),
        )
    })?;
    visible(who, &job)?;
    Ok(job)
}

/// `GET /v1/requests/{id}`.
#[utoipa::path(get, path = "/v1/requests/{id}", tag = "requests", params(("id" = String, Path, description = "The request id")), responses((status = 200, description = "The request, its steps and response", body = super::openapi::JobView), (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody), (status = 404, description = "No such request (or another subject's)", body = super::openapi::ErrorBody)))]
async fn status(
    State(d): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = identify(&d, &headers)?;
    let job = get_job(&d, &who, &id)?;
    Ok(Json(view(&d, &job, true)))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    namespace: Option<String>,
    procedure: Option<String>,
    subject: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    before: Option<i64>,
    limit: Option<usize>,
}

/// A non-negative query number (the document says int64).
fn non_negative(name: &str, v: Option<i64>) -> Result<Option<u64>, ApiError> {
    v.map(|n| {
        u64::try_from(n)
            .map_err(|_| ApiError::bad("bad_query", format!("{name}={n}: must be 0 or more")))
    })
    .transpose()
}

/// `GET /v1/requests`.
#[utoipa::path(get, path = "/v1/requests", tag = "requests", params(
        ("state" = Option<String>, Query, description = "queued, held, running, succeeded, failed, dead, cancelled"),
        ("namespace" = Option<String>, Query, description = "Only this namespace"),
        ("procedure" = Option<String>, Query, description = "Only this Namespace/Procedure"),
        ("subject" = Option<String>, Query, description = "Only this subject (operators; others see their own)"),
        ("since_ms" = Option<i64>, Query, description = "Submitted at or after (ms since the epoch)"),
        ("until_ms" = Option<i64>, Query, description = "Submitted before (ms since the epoch)"),
        ("before" = Option<i64>, Query, description = "The `next` of the previous page"),
        ("limit" = Option<usize>, Query, description = "At most this many (1 to 1000, default 50)")),
      responses((status = 200, description = "A page, newest first", body = super::openapi::JobPage), (status = 400, description = "A bad parameter", body = super::openapi::ErrorBody), (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody), (status = 403, description = "The token lacks the right", body = super::openapi::ErrorBody)))]
async fn list(
    State(d): Shared,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = identify(&d, &headers)?;
    let q = query(q)?;
    let state = match &q.state {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            ApiError::bad(
                "bad_query",
                format!(
                    "state={s:?}: expected queued, held, running, succeeded, failed, dead or cancelled"
                ),
            )
        })?),
    };
    let subject = match (&q.subject, who.operator) {
        (Some(s), false) if *s != who.subject => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("subject `{}` may list only its own requests (an operator token may list everyone's)", who.subject),
            ))
        }
        (s, true) => s.clone(),
        (_, false) => Some(who.subject.clone()),
    };
    let filter = ListFilter {
        state,
        target: q.procedure.clone(),
        namespace: q.namespace.clone(),
        subject,
        since_ms: non_negative("since_ms", q.since_ms)?,
        until_ms: non_negative("until_ms", q.until_ms)?,
    };
    let before = non_negative("before", q.before)?;
    let page = d.queue.list(&filter, before, q.limit.unwrap_or(50))?;
    Ok(Json(json!({
        "items": page.jobs.iter().map(|j| view(&d, j, false)).collect::<Vec<_>>(),
        "next": page.next,
    })))
}

/// `POST /v1/requests/{id}/cancel`.
#[utoipa::path(post, path = "/v1/requests/{id}/cancel", tag = "requests", params(("id" = String, Path, description = "The request id")), responses((status = 200, description = "Cancelled before it started"), (status = 202, description = "Running: it stops before its next step and rolls back"), (status = 409, description = "Already finished", body = super::openapi::ErrorBody), (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody), (status = 404, description = "No such request (or another subject's)", body = super::openapi::ErrorBody)))]
async fn cancel(
    State(d): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let who = identify(&d, &headers)?;
    get_job(&d, &who, &id)?;
    match d.queue.cancel(&id, now_ms()).await? {
        Cancelled::Dequeued(job) => {
            d.hub.finish(&id, || finished_event(&job));
            // It never runs: the program its check compiled is not needed.
            super::lock(&d.compiled).remove(&id);
            Ok(Json(json!({ "id": id, "state": job.state.name(), "message": "cancelled before it started: it never runs" })).into_response())
        }
        Cancelled::Running(job) => {
            if let Some(c) = super::lock(&d.running).get(&id) {
                c.cancel();
            }
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({
                    "id": id,
                    "state": job.state.name(),
                    "cancel_requested": true,
                    "message": "no further step starts; what it did is rolled back (a write request that already committed stays committed); follow it with GET /v1/requests/{id}",
                })),
            )
                .into_response())
        }
        Cancelled::AlreadyFinal(job) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_finished",
            format!("request `{id}` is already {}: nothing to cancel", job.state),
        )),
    }
}

/// `POST /v1/jobs/{id}/requeue`.
#[utoipa::path(post, path = "/v1/jobs/{id}/requeue", tag = "operators", params(("id" = String, Path, description = "The request id")), responses((status = 200, description = "Queued again", body = super::openapi::JobView), (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody), (status = 403, description = "The token lacks the right", body = super::openapi::ErrorBody), (status = 404, description = "No such request (or another subject's)", body = super::openapi::ErrorBody), (status = 409, description = "Not dead", body = super::openapi::ErrorBody)))]
async fn requeue(
    State(d): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = identify(&d, &headers)?;
    super::ops::operator(&who, "requeue jobs")?;
    let job = d.queue.requeue(&id, now_ms()).await?;
    d.wake.notify_one();
    Ok(Json(view(&d, &job, false)))
}

/// `POST /v1/jobs/{id}/discard`.
#[utoipa::path(post, path = "/v1/jobs/{id}/discard", tag = "operators", params(("id" = String, Path, description = "The request id")), responses((status = 200, description = "Discarded: cancelled, and the next job of its serialization key may run", body = super::openapi::JobView), (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody), (status = 403, description = "The token lacks the right", body = super::openapi::ErrorBody), (status = 404, description = "No such request (or another subject's)", body = super::openapi::ErrorBody), (status = 409, description = "Not dead", body = super::openapi::ErrorBody)))]
async fn discard(
    State(d): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = identify(&d, &headers)?;
    super::ops::operator(&who, "discard jobs")?;
    let job = d.queue.discard(&id, now_ms()).await?;
    d.hub.finish(&id, || finished_event(&job));
    d.wake.notify_one();
    Ok(Json(view(&d, &job, false)))
}

/// `GET /v1/requests/{id}/events`: Server-Sent Events of one request's progress, ending
/// with a `finished` event.
#[utoipa::path(get, path = "/v1/requests/{id}/events", tag = "requests", params(("id" = String, Path, description = "The request id")), responses((status = 200, description = "Server-Sent Events: state, step_started, step_finished, undoing, retry, finished", content_type = "text/event-stream"), (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody), (status = 404, description = "No such request (or another subject's)", body = super::openapi::ErrorBody)))]
async fn events(
    State(d): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let who = identify(&d, &headers)?;
    let rx = d.hub.subscribe(&id);
    let job = match get_job(&d, &who, &id) {
        Ok(j) if !j.state.is_final() => {
            // Several daemons on one database: it may run on another, which forwards its
            // events here.
            super::remote::watch(&d, &id);
            j
        }
        Ok(j) => j,
        Err(e) => {
            d.hub.close(&id);
            return Err(e);
        }
    };
    let first = if job.state.is_final() {
        d.hub.close(&id);
        finished_event(&job)
    } else {
        json!({ "event": "state", "id": job.id, "state": job.state.name() })
    };
    let done = job.state.is_final();
    let head = stream::once(async move { first });
    let rest = stream::unfold((rx, done), |(mut rx, done)| async move {
        if done {
            return None;
        }
        loop {
            match rx.recv().await {
                Ok(text) => {
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    let end = v.get("event").and_then(Value::as_str) == Some("finished");
                    return Some((v, (rx, end)));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let s = head.chain(rest).map(|v| {
        let name = v
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("message")
            .to_string();
        Ok(SseEvent::default().event(name).data(v.to_string()))
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}
