//! The HTTP surface: routes, the admin-token check, fallbacks, error answers, and the request
//! parsing every handler shares.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use super::usage::MAX_USAGE_REPORT_BYTES;
use super::{
    budgets, dataplane, keys, observe, openapi, prices, projects, provider_keys, snapshot, usage,
    with_store, Actor, Shared,
};
use crate::error::Error;

/// Request bodies are small JSON documents.
const MAX_BODY_BYTES: usize = 64 * 1024;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            // The snapshot and usage endpoints take a data-plane token, the rest an admin token.
            let realm = if self.code.contains("dataplane") {
                "Bearer realm=\"keyward-dataplane\""
            } else {
                "Bearer realm=\"keyward-admin\""
            };
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(realm));
        }
        response
    }
}

pub(super) fn router(state: Shared) -> Router {
    let admin = Router::new()
        .route("/v1/projects", get(projects::list).post(projects::create))
        .route(
            "/v1/projects/{id}",
            get(projects::get).patch(projects::update),
        )
        .route("/v1/projects/{id}/archive", post(projects::archive))
        .route("/v1/keys", get(keys::list).post(keys::create))
        .route("/v1/keys/{id}", get(keys::get).patch(keys::update))
        .route("/v1/keys/{id}/revoke", post(keys::revoke))
        .route("/v1/keys/{id}/pause", post(keys::pause))
        .route("/v1/keys/{id}/resume", post(keys::resume))
        .route("/v1/keys/{id}/rotate", post(keys::rotate))
        .route("/v1/audit", get(keys::audit))
        .route("/v1/prices", get(prices::list))
        .route(
            "/v1/prices/{model}",
            put(prices::set).get(prices::get).delete(prices::remove),
        )
        .route("/v1/usage/batches", get(usage::batches))
        .route("/v1/usage/refused", get(dataplane::refused))
        .route(
            "/v1/dataplane-tokens",
            get(dataplane::list).post(dataplane::create),
        )
        .route(
            "/v1/dataplane-tokens/{name}/revoke",
            post(dataplane::revoke),
        )
        .route("/v1/plans", get(budgets::plans))
        .route(
            "/v1/plans/{id}",
            get(budgets::plan)
                .put(budgets::set_plan)
                .delete(budgets::remove_plan),
        )
        .route("/v1/limits", get(budgets::limits).put(budgets::set_limits))
        .route("/v1/windows", get(budgets::windows))
        .route(
            "/v1/increases",
            get(budgets::increases).post(budgets::add_increase),
        )
        .route("/v1/spend/adjust", post(budgets::adjust))
        .route("/v1/spend/reset", post(budgets::reset))
        .route("/v1/alerts", get(budgets::alerts))
        .route("/v1/prices/import", post(budgets::import_prices))
        .route(
            "/v1/provider-keys",
            get(provider_keys::list).post(provider_keys::create),
        )
        .route(
            "/v1/provider-keys/{scope}/{provider}/{owner_id}",
            delete(provider_keys::remove),
        )
        .route(
            "/v1/provider-keys/{scope}/{provider}/{owner_id}/rotate",
            post(provider_keys::rotate),
        )
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_admin,
        ));
    // What the data plane calls: a data-plane token (see server/dataplane.rs).
    let snapshots = Router::new()
        .route("/v1/snapshot", get(snapshot::snapshot))
        .route("/v1/snapshot/manifest", get(snapshot::snapshot_manifest))
        .route(
            "/v1/snapshot/chunks/{sha256}",
            get(snapshot::snapshot_chunk),
        )
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            dataplane::require_snapshot_reader,
        ));
    let usage_reports = Router::new()
        .route(
            "/v1/usage",
            post(usage::report).layer(DefaultBodyLimit::max(MAX_USAGE_REPORT_BYTES)),
        )
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            dataplane::require_usage_reporter,
        ));
    Router::new()
        .merge(snapshots)
        .merge(usage_reports)
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/metrics", get(observe::metrics))
        .route("/openapi.json", get(openapi::document))
        .merge(admin)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            observe::observe,
        ))
        .with_state(state)
}

pub(super) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|token| !token.is_empty())
}

async fn require_admin(State(state): State<Shared>, mut request: Request, next: Next) -> Response {
    let Some(presented) = bearer_token(request.headers()) else {
        return Error::new(
            401,
            "missing_admin_token",
            "Send the admin token as Authorization: Bearer <token>.",
        )
        .into_response();
    };
    match state.tokens.authenticate(presented) {
        Some(name) => {
            let actor = Actor(name.to_owned());
            request.extensions_mut().insert(actor.clone());
            let mut response = next.run(request).await;
            // For the access log: who made the request.
            response.extensions_mut().insert(actor);
            response
        }
        None => Error::unauthenticated("Invalid admin token.").into_response(),
    }
}

pub async fn not_found() -> Error {
    Error::not_found("not_found", "No such endpoint.")
}

async fn method_not_allowed() -> Error {
    Error::new(
        405,
        "method_not_allowed",
        "This endpoint does not take this method.",
    )
}

/// `GET /healthz`: the process answers (liveness).
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// How long `/readyz` waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /readyz`: 200 when this replica can serve (its store answers), 503 while it cannot or
/// while it drains after SIGTERM, so load balancers send traffic elsewhere.
async fn ready(State(state): State<Shared>) -> Response {
    let unavailable = |status: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": status})),
        )
            .into_response()
    };
    if state.draining.load(Ordering::SeqCst) {
        return unavailable("draining");
    }
    let check = with_store(&state, |store| store.policy_version());
    match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(Ok(version)) => {
            Json(serde_json::json!({"status": "ready", "policy_version": version})).into_response()
        }
        Ok(Err(_)) | Err(_) => unavailable("store_unavailable"),
    }
}

/// Parses a JSON body into `T`; an empty body reads as `{}`.
pub(super) fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, Error> {
    let bytes: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(bytes)
        .map_err(|error| Error::invalid("invalid_json", format!("Invalid request body: {error}")))
}

pub(super) fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, Error> {
    query
        .map(|Query(value)| value)
        .map_err(|error| Error::invalid("invalid_query", error.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&headers), None);
    }
}
