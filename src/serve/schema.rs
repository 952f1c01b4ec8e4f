//! `GET /v1/schema/{kind}`: the JSON Schemas of the YAML/JSON namespace and request formats
//! (as `provisio schema` prints them), for editors and clients; no token needed.

use super::api::ApiError;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

/// `GET /v1/schema/{kind}`: `namespace` or `request`.
#[utoipa::path(get, path = "/v1/schema/{kind}", tag = "meta", security(()),
    params(("kind" = String, Path, description = "`namespace` or `request`")),
    responses((status = 200, description = "The JSON Schema (draft 7) of the format", content_type = "application/json"),
        (status = 404, description = "Neither `namespace` nor `request`", body = super::openapi::ErrorBody)))]
pub async fn schema(Path(kind): Path<String>) -> Result<Json<Value>, ApiError> {
    match kind.as_str() {
        "namespace" => Ok(Json(provisio_engine::request::schema::namespace())),
        "request" => Ok(Json(provisio_engine::request::schema::request())),
        other => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no schema `{other}`: ask for /v1/schema/namespace or /v1/schema/request"),
        )),
    }
}
