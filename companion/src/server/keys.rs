//! `/v1/keys`: the key lifecycle, and `/v1/audit`, the audit trail.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::routes::{explicit_null, parse_body, query, List};
use super::{with_store, Actor, Shared, DEFAULT_GRACE};
use crate::error::Error;
use crate::keygen::{Environment, Format};
use crate::store::{KeySettings, KeyUpdate, KeyView, NewKey, Owner, StatusChange};
use crate::units::{now, parse_duration_seconds};
use keyward_engine::snapshot::RateLimits;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKeyBody {
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    org: Option<String>,
    #[serde(default)]
    format: Format,
    #[serde(default)]
    environment: Environment,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    expires_at: Option<u64>,
    /// A duration from now, like `30d`; instead of `expires_at`.
    #[serde(default)]
    expires_in: Option<String>,
    #[serde(default)]
    spend_cap_microusd: Option<u64>,
    #[serde(default)]
    spend_soft_cap_microusd: Option<u64>,
    #[serde(default)]
    rate_limits: Option<RateLimits>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

/// A PATCH of the rate limits: a named limit is set (or removed with `null`), the other kept.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitsPatch {
    #[serde(default, deserialize_with = "explicit_null")]
    requests_per_minute: Option<Option<u32>>,
    #[serde(default, deserialize_with = "explicit_null")]
    tokens_per_minute: Option<Option<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateKeyBody {
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "explicit_null")]
    models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "explicit_null")]
    expires_at: Option<Option<u64>>,
    #[serde(default)]
    expires_in: Option<String>,
    #[serde(default, deserialize_with = "explicit_null")]
    spend_cap_microusd: Option<Option<u64>>,
    #[serde(default, deserialize_with = "explicit_null")]
    spend_soft_cap_microusd: Option<Option<u64>>,
    /// `null` removes both limits.
    #[serde(default, deserialize_with = "explicit_null")]
    rate_limits: Option<Option<RateLimitsPatch>>,
    #[serde(default, deserialize_with = "explicit_null")]
    label: Option<Option<String>>,
    #[serde(default, deserialize_with = "explicit_null")]
    note: Option<Option<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateKeyBody {
    /// How long the old key keeps working, like `24h` (default) or `0s`.
    #[serde(default)]
    grace: Option<String>,
}

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

/// A new key's response: the plaintext (this once) next to the stored view.
#[derive(Serialize)]
struct CreatedKeyBody<'a> {
    key: &'a str,
    warning: &'static str,
    #[serde(flatten)]
    view: &'a KeyView,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<&'a KeyView>,
}

const SHOWN_ONCE: &str =
    "Store this key now: keyward keeps only its SHA-256 hash and will not show it again.";

fn created_key_response(plaintext: &str, view: &KeyView, previous: Option<&KeyView>) -> Response {
    let body = CreatedKeyBody {
        key: plaintext,
        warning: SHOWN_ONCE,
        view,
        previous,
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
    let created = with_store(&state.store, move |store| {
        store.create_key(&actor, now(), &new)
    })
    .await?;
    Ok(created_key_response(
        created.plaintext.expose(),
        &created.key,
        None,
    ))
}

pub(super) async fn list(
    State(state): State<Shared>,
    params: Result<Query<ListKeysQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let params = query(params)?;
    let keys = with_store(&state.store, move |store| {
        store.keys(params.project.as_deref())
    })
    .await?;
    Ok(Json(List { data: keys }).into_response())
}

pub(super) async fn get(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let key = with_store(&state.store, move |store| store.key(&id)).await?;
    Ok(Json(key).into_response())
}

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
    let key = with_store(&state.store, move |store| {
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
    let key = with_store(&state.store, move |store| {
        store.change_status(&actor, now(), &id, change)
    })
    .await?;
    Ok(Json(key).into_response())
}

pub(super) async fn revoke(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    change_status(&state, actor, id, StatusChange::Revoke).await
}

pub(super) async fn pause(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    change_status(&state, actor, id, StatusChange::Pause).await
}

pub(super) async fn resume(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    change_status(&state, actor, id, StatusChange::Resume).await
}

pub(super) async fn rotate(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: RotateKeyBody = parse_body(&body)?;
    let grace = parse_duration_seconds(request.grace.as_deref().unwrap_or(DEFAULT_GRACE))?;
    let rotation = with_store(&state.store, move |store| {
        store.rotate_key(&actor, now(), &id, grace)
    })
    .await?;
    Ok(created_key_response(
        rotation.new.plaintext.expose(),
        &rotation.new.key,
        Some(&rotation.old),
    ))
}

pub(super) async fn audit(
    State(state): State<Shared>,
    params: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let params = query(params)?;
    let events = with_store(&state.store, move |store| store.audit_events(params.limit)).await?;
    Ok(Json(List { data: events }).into_response())
}
