//! The data plane's credential: the check in front of the snapshot and usage endpoints, and the
//! admin endpoints that issue, list and revoke data-plane tokens and list refused usage batches.
//!
//! A data-plane token is not an admin token: it opens the snapshot endpoints (permission
//! `snapshot`) and the usage endpoint (permission `usage`), nothing else. An admin token may read
//! snapshots too (an administrator can see every key anyway), but never reports usage: usage
//! batches are always recorded as the data plane that sent them.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::ToSchema;

use super::routes::{bearer_token, parse_body, query};
use super::{with_store, Actor, Shared};
use crate::api::List;
use crate::error::{Error, ErrorBody};
use crate::store::{CreatedDataplaneToken, DataplaneTokenView, Permission, RefusedBatchView};
use crate::units::now;

/// `GET /v1/usage/refused` without `limit`.
const DEFAULT_REFUSED_LIMIT: u64 = 100;

/// Checks the bearer token for `permission`; on success the request carries the caller's
/// [`DataplaneIdentity`] (for the usage endpoint) and runs.
async fn require(
    state: Shared,
    mut request: Request,
    next: Next,
    permission: Permission,
) -> Response {
    let Some(presented) = bearer_token(request.headers()).map(str::to_owned) else {
        return Error::new(
            401,
            "missing_dataplane_token",
            "Send the data-plane token as Authorization: Bearer <token> (keyward dataplane token \
             create).",
        )
        .into_response();
    };
    if permission == Permission::Snapshot && state.tokens.authenticate(&presented).is_some() {
        return next.run(request).await;
    }
    let identity = with_store(&state, move |store| store.dataplane_identity(&presented)).await;
    match identity {
        Ok(Some(identity)) if identity.may(permission) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Ok(Some(_)) => Error::new(
            403,
            "dataplane_permission_denied",
            "This data-plane token may not use this endpoint.",
        )
        .into_response(),
        Ok(None) => Error::new(
            401,
            "invalid_dataplane_token",
            "Invalid or revoked data-plane token.",
        )
        .into_response(),
        Err(error) => error.into_response(),
    }
}

/// In front of the snapshot endpoints: a data-plane token with `snapshot`, or an admin token.
pub(super) async fn require_snapshot_reader(
    State(state): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    require(state, request, next, Permission::Snapshot).await
}

/// In front of `POST /v1/usage`: a data-plane token with `usage`.
pub(super) async fn require_usage_reporter(
    State(state): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    require(state, request, next, Permission::Usage).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDataplaneTokenBody {
    /// 1 to 40 characters of `A-Z a-z 0-9 _ - . @`: names the fleet in usage batches, refusals
    /// and the audit trail.
    pub name: String,
    /// Default: both.
    #[serde(default)]
    pub permissions: Option<Vec<Permission>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RefusedQuery {
    #[serde(default)]
    limit: Option<u64>,
}

#[utoipa::path(operation_id = "dataplane_tokens_create", post, path = "/v1/dataplane-tokens", tag = "dataplane", summary = "Issue a data-plane token (shown once)", request_body = CreateDataplaneTokenBody, responses((status = 201, description = "The token, this once", body = CreatedDataplaneToken), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 409, description = "The name is taken", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn create(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: CreateDataplaneTokenBody = parse_body(&body)?;
    let permissions = request
        .permissions
        .unwrap_or_else(|| vec![Permission::Snapshot, Permission::Usage]);
    let created = with_store(&state, move |store| {
        store.create_dataplane_token(&actor, now(), &request.name, &permissions)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(operation_id = "dataplane_tokens_list", get, path = "/v1/dataplane-tokens", tag = "dataplane", summary = "The data-plane tokens (names and permissions, never the tokens)", responses((status = 200, description = "The tokens", body = List<DataplaneTokenView>), (status = 401, description = "Missing or invalid admin token", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn list(State(state): State<Shared>) -> Result<Response, Error> {
    let tokens = with_store(&state, |store| store.dataplane_tokens()).await?;
    Ok(Json(List { data: tokens }).into_response())
}

#[utoipa::path(operation_id = "dataplane_tokens_revoke", post, path = "/v1/dataplane-tokens/{name}/revoke", tag = "dataplane", summary = "Revoke a data-plane token", params(("name" = String, Path, description = "The token's name")), responses((status = 200, description = "The revoked token", body = DataplaneTokenView), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "No such token", body = ErrorBody), (status = 409, description = "Revoked already", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn revoke(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Response, Error> {
    let revoked = with_store(&state, move |store| {
        store.revoke_dataplane_token(&actor, now(), &name)
    })
    .await?;
    Ok(Json(revoked).into_response())
}

#[utoipa::path(operation_id = "usage_refused", get, path = "/v1/usage/refused", tag = "usage", summary = "The most recent usage batches refused, newest first", params(("limit" = Option<u64>, Query, description = "At most this many (default 100)")), responses((status = 200, description = "The refused batches", body = List<RefusedBatchView>), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn refused(
    State(state): State<Shared>,
    params: Result<Query<RefusedQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let limit = query(params)?.limit.unwrap_or(DEFAULT_REFUSED_LIMIT);
    let batches = with_store(&state, move |store| store.refused_usage_batches(limit)).await?;
    Ok(Json(List { data: batches }).into_response())
}
