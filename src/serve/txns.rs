//! The journal's transactions over HTTP: `GET /v1/transactions` (as `provisio tx list`),
//! `GET /v1/transactions/{id}` (its summary and records, what `tx show` and `tx log`
//! print), `GET /v1/audit` and `POST /v1/transactions/{id}/resolve` (operators: `tx
//! audit`, `tx resolve`), so that `provisio tx …` works while the daemon holds the data
//! directory. A subject sees the transactions it asked for; an
//! operator token sees every one.

use super::api::{identify, query, ApiError, Shared};
use super::now_ms;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use provisio_engine::txn::index::{self, TxnQuery};
use provisio_engine::txn::stream::RecordStream;
use provisio_engine::TxnState;
use serde::Deserialize;
use serde_json::{json, Value};

/// Most records `GET /v1/transactions/{id}` answers with; a transaction with more is read
/// with `provisio tx show` on the stopped daemon's data directory.
const MAX_RECORDS: usize = 100_000;

/// `GET /v1/transactions` query parameters (the filters of `provisio tx list`).
#[derive(Debug, Default, Deserialize)]
pub struct TxnListQuery {
    state: Option<String>,
    procedure: Option<String>,
    subject: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    after: Option<String>,
    limit: Option<i64>,
}

/// A query number that must be `min` or more.
fn at_least(name: &str, v: Option<i64>, min: i64) -> Result<Option<u64>, ApiError> {
    v.map(|n| {
        u64::try_from(n)
            .ok()
            .filter(|_| n >= min)
            .ok_or_else(|| ApiError::bad("bad_query", format!("{name}={n}: must be {min} or more")))
    })
    .transpose()
}

/// `GET /v1/transactions`: the journal's transactions, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/transactions", tag = "transactions", params(
        ("state" = Option<String>, Query, description = "Only this state: running, committed, rolled_back, …"),
        ("procedure" = Option<String>, Query, description = "Only this Namespace/Procedure"),
        ("subject" = Option<String>, Query, description = "Only this subject (operators; others see their own)"),
        ("since_ms" = Option<i64>, Query, description = "Started at or after (ms since the epoch)"),
        ("until_ms" = Option<i64>, Query, description = "Started before (ms since the epoch)"),
        ("after" = Option<String>, Query, description = "The `next` of the previous page"),
        ("limit" = Option<i64>, Query, description = "At most this many (1 to 1000, default 50)")),
    responses((status = 200, description = "`{\"items\": [summary…], \"next\": id or null}`, as `provisio tx list`"),
        (status = 400, description = "A bad filter", body = super::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody)))]
pub async fn list(
    State(d): Shared,
    headers: HeaderMap,
    q: Result<Query<TxnListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = identify(&d, &headers)?;
    let q = query(q)?;
    let state = match q.state.as_deref() {
        None => None,
        Some(name) => Some(
            TxnState::ALL
                .iter()
                .copied()
                .find(|s| s.name() == name)
                .ok_or_else(|| {
                    ApiError::bad(
                        "bad_query",
                        format!(
                            "state={name:?} is not a transaction state: one of {}",
                            TxnState::ALL.map(|s| s.name()).join(", ")
                        ),
                    )
                })?,
        ),
    };
    // Another subject's transactions are an operator's to see.
    let subject = match q.subject {
        Some(s) if who.may_see(&s) => Some(s),
        Some(s) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "operator_only",
                format!(
                    "subject `{}` may list only its own transactions, not `{s}`'s: that needs a token with `operator = true`",
                    who.subject
                ),
            ))
        }
        None if who.operator => None,
        None => Some(who.subject.clone()),
    };
    let page = index::list(
        d.store.as_ref(),
        &TxnQuery {
            state,
            procedure: q.procedure,
            subject,
            since_ms: at_least("since_ms", q.since_ms, 0)?,
            until_ms: at_least("until_ms", q.until_ms, 0)?,
            after: q.after,
            limit: at_least("limit", q.limit, 1)?.unwrap_or(50).min(1000) as usize,
        },
    )
    .await
    .map_err(|e| match e {
        e @ index::QueryError::UnknownCursor(_) => ApiError::bad("bad_query", e.to_string()),
        other => ApiError::internal(other),
    })?;
    Ok(Json(json!({ "items": page.items, "next": page.next })))
}

/// `GET /v1/transactions/{id}`: one transaction (a full id or a unique prefix): its summary
/// and its journal records in order, each with its `seq` (what `provisio tx show` and `tx
/// log` print; secrets masked or sealed as there).
#[utoipa::path(get, path = "/v1/transactions/{id}", tag = "transactions",
    params(("id" = String, Path, description = "Transaction id, or a unique prefix of one")),
    responses((status = 200, description = "`{\"summary\": …, \"records\": [record…]}`"),
        (status = 400, description = "The prefix matches several transactions", body = super::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody),
        (status = 404, description = "No such transaction (or another subject's)", body = super::openapi::ErrorBody)))]
pub async fn show(
    State(d): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = identify(&d, &headers)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no transaction `{id}`; `provisio tx list` (GET /v1/transactions) shows them"),
        )
    };
    let summary = match index::find(d.store.as_ref(), &id).map_err(ApiError::internal)? {
        Ok(Some(t)) if who.may_see(&t.who) => t,
        Ok(_) => return Err(not_found()),
        Err(n) => {
            return Err(ApiError::bad(
                "ambiguous_id",
                format!(
                    "`{id}` matches {}{n} transactions; give more characters",
                    if n >= 100 { "at least " } else { "" }
                ),
            ))
        }
    };
    let mut records = Vec::new();
    for r in RecordStream::new(d.store.as_ref(), &summary.id) {
        let (seq, record) = r.map_err(ApiError::internal)?;
        if records.len() == MAX_RECORDS {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_records",
                format!(
                    "transaction {} has more than {MAX_RECORDS} journal records: stop the daemon and read it with `provisio tx show {}`",
                    summary.id, summary.id
                ),
            ));
        }
        let mut v = serde_json::to_value(&record).map_err(ApiError::internal)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("seq".into(), json!(seq));
        }
        records.push(v);
    }
    Ok(Json(json!({ "summary": summary, "records": records })))
}

/// Most audit lines one `GET /v1/audit` answers with.
const AUDIT_PAGE: usize = 1000;

/// `GET /v1/audit` query parameters.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    after: Option<String>,
}

/// `GET /v1/audit` (operators): the audit log, oldest first, a page of lines at a time, as
/// `provisio tx audit` prints it.
#[utoipa::path(get, path = "/v1/audit", tag = "transactions",
    params(("after" = Option<String>, Query, description = "The `next` of the previous page")),
    responses((status = 200, description = "`{\"lines\": [JSON text…], \"next\": cursor or null}`"),
        (status = 400, description = "A bad cursor", body = super::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody),
        (status = 403, description = "Not an operator token", body = super::openapi::ErrorBody)))]
pub async fn audit(
    State(d): Shared,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = identify(&d, &headers)?;
    super::ops::operator(&who, "read the audit log")?;
    let q = query(q)?;
    let mut from = match q.after.as_deref() {
        None => Vec::new(),
        Some(hex) => {
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| {
                    hex.get(i..i + 2)
                        .and_then(|b| u8::from_str_radix(b, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| {
                    ApiError::bad(
                        "bad_query",
                        format!("after={hex:?} is not the `next` of a page (hex digits)"),
                    )
                })?;
            let mut b = bytes;
            b.push(0);
            b
        }
    };
    let rows = d
        .store
        .scan_range(
            provisio_engine::Space::Audit,
            provisio_engine::KeyRange::new(&from, None),
            AUDIT_PAGE,
            false,
        )
        .map_err(ApiError::internal)?;
    let lines: Vec<String> = rows
        .iter()
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    let next = match rows.last() {
        Some((k, _)) if rows.len() == AUDIT_PAGE => {
            from.clear();
            Some(k.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
        _ => None,
    };
    Ok(Json(json!({ "lines": lines, "next": next })))
}

/// `POST /v1/transactions/{id}/resolve` query parameters.
#[derive(Debug, Default, Deserialize)]
pub struct ResolveQuery {
    step: Option<String>,
    applied: Option<bool>,
}

/// `POST /v1/transactions/{id}/resolve?step=S&applied=true|false` (operators): records what
/// the operator found about a step of a `rollback_failed` transaction, as `provisio tx
/// resolve` (journaled and audited with the token's subject).
#[utoipa::path(post, path = "/v1/transactions/{id}/resolve", tag = "operators",
    params(("id" = String, Path, description = "Transaction id, or a unique prefix of one"),
        ("step" = String, Query, description = "The step path, as `tx show` lists it"),
        ("applied" = bool, Query, description = "true: its effect exists (resume undoes it); false: nothing to undo (resume skips it)")),
    responses((status = 200, description = "`{\"id\", \"step\", \"was\", \"applied\"}`"),
        (status = 400, description = "A missing parameter", body = super::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody),
        (status = 403, description = "Not an operator token", body = super::openapi::ErrorBody),
        (status = 409, description = "Nothing to resolve there", body = super::openapi::ErrorBody)))]
pub async fn resolve(
    State(d): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<ResolveQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = identify(&d, &headers)?;
    super::ops::operator(&who, "resolve a step")?;
    let q = query(q)?;
    let (Some(step), Some(applied)) = (q.step, q.applied) else {
        return Err(ApiError::bad(
            "bad_query",
            "give the step and the finding: ?step=PATH&applied=true|false",
        ));
    };
    let journal = d.journal_for(&who.subject);
    let r = provisio_engine::txn::resolve_step(&journal, &id, &step, applied)
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "cannot_resolve", e.to_string()))?;
    Ok(Json(json!({
        "id": r.txn_id,
        "step": r.step,
        "was": r.was,
        "applied": r.applied,
    })))
}

/// Query of `POST /v1/transactions/prune`.
#[derive(Debug, Deserialize)]
pub struct PruneQuery {
    older_than: Option<String>,
    keep: Option<i64>,
    dry_run: Option<bool>,
}

/// `POST /v1/transactions/prune?older_than=30d&keep=N&dry_run=true` (operators): removes
/// finished transactions past retention from the journal, as `provisio tx prune` (the
/// daemon's `[retention]` unless the query overrides it).
#[utoipa::path(post, path = "/v1/transactions/prune", tag = "operators",
    params(("older_than" = Option<String>, Query, description = "Remove those finished longer ago than this (30d, 12h, forever); default retention.transactions"),
        ("keep" = Option<i64>, Query, description = "Keep at most this many finished transactions, the newest; default retention.max_transactions"),
        ("dry_run" = Option<bool>, Query, description = "Say what would be removed; remove nothing")),
    responses((status = 200, description = "`{\"dry_run\", \"transactions\": [summary, …], \"audit_entries\", \"policy\": {\"max_age_ms\", \"max_count\", \"audit\"}}`"),
        (status = 400, description = "A bad parameter", body = super::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = super::openapi::ErrorBody),
        (status = 403, description = "Not an operator token", body = super::openapi::ErrorBody)))]
pub async fn prune(
    State(d): Shared,
    headers: HeaderMap,
    q: Result<Query<PruneQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = identify(&d, &headers)?;
    super::ops::operator(&who, "prune the journal")?;
    let q = query(q)?;
    let older_than = q
        .older_than
        .as_deref()
        .map(str::parse::<crate::config::Keep>)
        .transpose()
        .map_err(|e| ApiError::bad("bad_query", format!("older_than: {e}")))?;
    let keep = at_least("keep", q.keep, 0)?.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let dry_run = q.dry_run.unwrap_or(false);
    let policy = d.retention.policy(older_than, keep);
    // Every job's end on disk first: a job whose end a crash lost settles from its
    // transaction, which must still be there.
    d.queue.sync().await.map_err(ApiError::internal)?;
    let pruned =
        provisio_engine::txn::retention::prune(d.store.as_ref(), &policy, now_ms(), None, dry_run)
            .await
            .map_err(ApiError::internal)?;
    tracing::info!(
        subject = %who.subject,
        transactions = pruned.transactions.len(),
        audit_entries = pruned.audit_entries,
        dry_run,
        "pruned the journal"
    );
    Ok(Json(json!({
        "dry_run": dry_run,
        "transactions": pruned.transactions,
        "audit_entries": pruned.audit_entries,
        "policy": {
            "max_age_ms": policy.max_age.map(|a| a.as_millis() as u64),
            "max_count": policy.max_count,
            "audit": d.retention.audit.to_string(),
        },
    })))
}
