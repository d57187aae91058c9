//! `/v1/keys`: the key lifecycle, and `/v1/audit`, the audit trail.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::routes::{parse_body, query};
use super::{with_store, Actor, Shared, DEFAULT_GRACE};
use crate::api::{CreateKeyBody, CreatedKeyBody, List, RotateKeyBody, UpdateKeyBody};
use crate::error::{Error, ErrorBody};
use crate::store::{AuditEvent, KeySettings, KeyUpdate, KeyView, NewKey, Owner, StatusChange};
use crate::units::{now, parse_duration_seconds};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListKeysQuery {
    #[serde(default)]
    project: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    #[serde(default)]
    limit: Option<u64>,
}

const SHOWN_ONCE: &str =
    "Store this key now: keyward keeps only its SHA-256 hash and will not show it again.";

fn created_key_response(plaintext: &str, view: &KeyView, previous: Option<&KeyView>) -> Response {
    let body = CreatedKeyBody {
        key: plaintext.to_owned(),
        warning: SHOWN_ONCE.to_owned(),
        view: view.clone(),
        previous: previous.cloned(),
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn expiry(expires_at: Option<u64>, expires_in: Option<&str>) -> Result<Option<u64>, Error> {
    match (expires_at, expires_in) {
        (Some(_), Some(_)) => Err(Error::invalid(
            "invalid_field",
            "Give expires_at or expires_in, not both.",
        )),
        (Some(at), None) => Ok(Some(at)),
        (None, Some(text)) => Ok(Some(now().saturating_add(parse_duration_seconds(text)?))),
        (None, None) => Ok(None),
    }
}

#[utoipa::path(operation_id = "keys_create", post, path = "/v1/keys", tag = "keys", summary = "Create a key (its plaintext is in this answer only)", request_body = CreateKeyBody, responses((status = 201, description = "The new key, with its plaintext", body = CreatedKeyBody), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflicts with the current state", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn create(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: CreateKeyBody = parse_body(&body)?;
    let owner = match (request.project, request.org) {
        (Some(project), None) => Owner::Project(project),
        (None, Some(org)) => Owner::Org(org),
        _ => {
            return Err(Error::invalid(
                "invalid_field",
                "Give exactly one of project and org.",
            ))
        }
    };
    let new = NewKey {
        owner,
        format: request.format,
        settings: KeySettings {
            environment: request.environment,
            scopes: request.scopes,
            models: request.models,
            expires_at: expiry(request.expires_at, request.expires_in.as_deref())?,
            spend_cap_microusd: request.spend_cap_microusd,
            spend_soft_cap_microusd: request.spend_soft_cap_microusd,
            rate_limits: request.rate_limits,
            label: request.label,
            note: request.note,
        },
    };
    let created = with_store(&state, move |store| store.create_key(&actor, now(), &new)).await?;
    Ok(created_key_response(
        created.plaintext.expose(),
        &created.key,
        None,
    ))
}

#[utoipa::path(operation_id = "keys_list", get, path = "/v1/keys", tag = "keys", summary = "All keys, or a project's", params(("project" = Option<String>, Query, description = "Only this project's keys")), responses((status = 200, description = "The keys (never a secret or a hash)", body = List<KeyView>), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn list(
    State(state): State<Shared>,
    params: Result<Query<ListKeysQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let params = query(params)?;
    let keys = with_store(&state, move |store| store.keys(params.project.as_deref())).await?;
    Ok(Json(List { data: keys }).into_response())
}

#[utoipa::path(operation_id = "keys_get", get, path = "/v1/keys/{id}", tag = "keys", summary = "One key", params(("id" = String, Path, description = "The key id")), responses((status = 200, description = "The key", body = KeyView), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn get(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let key = with_store(&state, move |store| store.key(&id)).await?;
    Ok(Json(key).into_response())
}

#[utoipa::path(operation_id = "keys_update", patch, path = "/v1/keys/{id}", tag = "keys", summary = "Change a key's settings", params(("id" = String, Path, description = "The key id")), request_body = UpdateKeyBody, responses((status = 200, description = "The key", body = KeyView), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflicts with the current state", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn update(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: UpdateKeyBody = parse_body(&body)?;
    let expires_at = match (request.expires_at, request.expires_in.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                "invalid_field",
                "Give expires_at or expires_in, not both.",
            ))
        }
        (None, Some(text)) => Some(Some(now().saturating_add(parse_duration_seconds(text)?))),
        (at, None) => at,
    };
    let (requests_per_minute, tokens_per_minute) = match request.rate_limits {
        None => (None, None),
        Some(None) => (Some(None), Some(None)),
        Some(Some(patch)) => (patch.requests_per_minute, patch.tokens_per_minute),
    };
    let update = KeyUpdate {
        scopes: request.scopes,
        models: request.models,
        expires_at,
        spend_cap_microusd: request.spend_cap_microusd,
        spend_soft_cap_microusd: request.spend_soft_cap_microusd,
        requests_per_minute,
        tokens_per_minute,
        label: request.label,
        note: request.note,
    };
    let key = with_store(&state, move |store| {
        store.update_key(&actor, now(), &id, &update)
    })
    .await?;
    Ok(Json(key).into_response())
}

async fn change_status(
    state: &Shared,
    actor: String,
    id: String,
    change: StatusChange,
) -> Result<Response, Error> {
    let key = with_store(state, move |store| {
        store.change_status(&actor, now(), &id, change)
    })
    .await?;
    Ok(Json(key).into_response())
}

#[utoipa::path(operation_id = "keys_revoke", post, path = "/v1/keys/{id}/revoke", tag = "keys", summary = "Revoke a key for good", params(("id" = String, Path, description = "The key id")), responses((status = 200, description = "The key", body = KeyView), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflicts with the current state", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn revoke(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    change_status(&state, actor, id, StatusChange::Revoke).await
}

#[utoipa::path(operation_id = "keys_pause", post, path = "/v1/keys/{id}/pause", tag = "keys", summary = "Pause a key", params(("id" = String, Path, description = "The key id")), responses((status = 200, description = "The key", body = KeyView), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflicts with the current state", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn pause(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    change_status(&state, actor, id, StatusChange::Pause).await
}

#[utoipa::path(operation_id = "keys_resume", post, path = "/v1/keys/{id}/resume", tag = "keys", summary = "Resume a paused key", params(("id" = String, Path, description = "The key id")), responses((status = 200, description = "The key", body = KeyView), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflicts with the current state", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn resume(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    change_status(&state, actor, id, StatusChange::Resume).await
}

#[utoipa::path(operation_id = "keys_rotate", post, path = "/v1/keys/{id}/rotate", tag = "keys", summary = "A new key with the same settings; the old one works until the grace ends", params(("id" = String, Path, description = "The key id")), request_body = RotateKeyBody, responses((status = 201, description = "The new key (plaintext, this once) and the old one in `previous`", body = CreatedKeyBody), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflicts with the current state", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn rotate(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: RotateKeyBody = parse_body(&body)?;
    let grace = parse_duration_seconds(request.grace.as_deref().unwrap_or(DEFAULT_GRACE))?;
    let rotation = with_store(&state, move |store| {
        store.rotate_key(&actor, now(), &id, grace)
    })
    .await?;
    Ok(created_key_response(
        rotation.new.plaintext.expose(),
        &rotation.new.key,
        Some(&rotation.old),
    ))
}

#[utoipa::path(operation_id = "keys_audit", get, path = "/v1/audit", tag = "audit", summary = "The audit trail, oldest first", params(("limit" = Option<u64>, Query, description = "Only the last N events")), responses((status = 200, description = "The events", body = List<AuditEvent>), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn audit(
    State(state): State<Shared>,
    params: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let params = query(params)?;
    let events = with_store(&state, move |store| store.audit_events(params.limit)).await?;
    Ok(Json(List { data: events }).into_response())
}
