//! `/v1/provider-keys`: customers' own provider keys over the admin API. The server encrypts a
//! key with its KEK as it arrives and never returns it (answers show the last 4 characters);
//! request bodies that carried one are wiped where this handler holds their only copy. Storing
//! or rotating a key needs the KEK and the fleet's public key (`serve --provider-kek-file
//! --fleet-public-key-file`), else 503; listing and removing do not.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use keyward_engine::provider::{KeyOwnerKind, Provider};
use serde::de::DeserializeOwned;
use zeroize::Zeroize;

use super::{with_store, Actor, Shared};
use crate::api::{List, ProviderKeyBody, RotateProviderKeyBody};
use crate::error::{Error, ErrorBody};
use crate::provider_secrets::ProviderSealing;
use crate::provider_secrets::{encrypted_row, key_owner, parse_provider, parse_scope};
use crate::store::{ProviderKeyView, PutMode};
use crate::units::now;

/// What encrypts keys for the store and seals them for the fleet, or why there is none.
fn sealing(state: &Shared) -> Result<Arc<ProviderSealing>, Error> {
    match (&state.provider_sealing, state.provider_kek_only) {
        (Some(sealing), _) => Ok(Arc::clone(sealing)),
        (None, true) => Err(Error::new(
            503,
            "provider_sealing_not_configured",
            "This control plane has a provider KEK but no fleet public key: keys it stored could \
             not reach the data planes. Start keyward serve with --fleet-public-key-file too.",
        )),
        (None, false) => Err(Error::new(
            503,
            "provider_kek_not_configured",
            "This control plane has no provider KEK: start keyward serve with \
             --provider-kek-file and --fleet-public-key-file to manage provider keys.",
        )),
    }
}

/// Wipes a request body that carried a provider key, when this is its only reference.
fn wipe(body: Bytes) {
    if let Ok(mut owned) = body.try_into_mut() {
        owned.as_mut().zeroize();
    }
}

/// The sealing configuration and the parsed body of a request that carries a provider key; the
/// body's bytes are wiped either way. A parse error says where, never what: serde's messages
/// can quote values.
fn secret_request<T: DeserializeOwned>(
    state: &Shared,
    body: Bytes,
) -> Result<(Arc<ProviderSealing>, T), Error> {
    let parsed = sealing(state).and_then(|sealing| {
        let request = serde_json::from_slice::<T>(&body).map_err(|error| {
            Error::invalid(
                "invalid_json",
                format!(
                    "Invalid request body ({:?} error at line {} column {}): see \
                     /openapi.json for the fields",
                    error.classify(),
                    error.line(),
                    error.column()
                ),
            )
        })?;
        Ok((sealing, request))
    });
    wipe(body);
    parsed
}

/// A provider key's answer: the stored view (last 4 characters only), not cached.
fn answer(status: StatusCode, view: ProviderKeyView) -> Response {
    let mut response = (status, Json(view)).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The key a path names: `{scope}/{provider}/{owner_id}`.
fn named(
    scope: &str,
    provider: &str,
    owner_id: String,
) -> Result<(Provider, KeyOwnerKind, String), Error> {
    Ok((parse_provider(provider)?, parse_scope(scope)?, owner_id))
}

#[utoipa::path(operation_id = "provider_keys_create", post, path = "/v1/provider-keys", tag = "provider-keys", summary = "Store a provider key for a project or an org (encrypted; never returned)", request_body = ProviderKeyBody, responses((status = 201, description = "Stored: the key's metadata, its last 4 characters only", body = ProviderKeyView), (status = 400, description = "Invalid request: unknown provider, not exactly one of project and org, unknown org, malformed key or name", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "No such project", body = ErrorBody), (status = 409, description = "The owner has a key for this provider already: rotate it", body = ErrorBody), (status = 503, description = "The control plane has no provider KEK (provider_kek_not_configured) or no fleet public key (provider_sealing_not_configured)", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn create(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<Response, Error> {
    let (sealing, mut request) = secret_request::<ProviderKeyBody>(&state, body)?;
    let provider = parse_provider(&request.provider)?;
    let (kind, owner_id) = key_owner(request.project.as_deref(), request.org.as_deref())?;
    let name = request.name.take();
    let row = encrypted_row(&sealing.kek, (provider, kind, owner_id), &request.key, name)?;
    drop(request);
    let stored = with_store(&state, move |store| {
        store.put_provider_key(&actor, now(), PutMode::Add, row)
    })
    .await?;
    Ok(answer(StatusCode::CREATED, ProviderKeyView::from(&stored)))
}

#[utoipa::path(operation_id = "provider_keys_list", get, path = "/v1/provider-keys", tag = "provider-keys", summary = "Every provider key: provider, owner, name, last 4 characters, created, rotated, last used", responses((status = 200, description = "The keys (never a key, nor its ciphertext)", body = List<ProviderKeyView>), (status = 401, description = "Missing or invalid admin token", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn list(State(state): State<Shared>) -> Result<Response, Error> {
    let keys = with_store(&state, |store| store.provider_key_views()).await?;
    Ok(Json(List { data: keys }).into_response())
}

#[utoipa::path(operation_id = "provider_keys_rotate", post, path = "/v1/provider-keys/{scope}/{provider}/{owner_id}/rotate", tag = "provider-keys", summary = "Replace a provider key (its name, creation time and last use are kept)", params(("scope" = String, Path, description = "project or org"), ("provider" = String, Path, description = "The provider"), ("owner_id" = String, Path, description = "The project's or org's id")), request_body = RotateProviderKeyBody, responses((status = 200, description = "Rotated: the key's metadata, its last 4 characters only", body = ProviderKeyView), (status = 400, description = "Invalid request: unknown scope or provider, malformed key or name", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "No such key", body = ErrorBody), (status = 503, description = "The control plane has no provider KEK or no fleet public key", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn rotate(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path((scope, provider, owner_id)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, Error> {
    let (sealing, mut request) = secret_request::<RotateProviderKeyBody>(&state, body)?;
    let owner = named(&scope, &provider, owner_id)?;
    let name = request.name.take();
    let row = encrypted_row(&sealing.kek, owner, &request.key, name)?;
    drop(request);
    let stored = with_store(&state, move |store| {
        store.put_provider_key(&actor, now(), PutMode::Rotate, row)
    })
    .await?;
    Ok(answer(StatusCode::OK, ProviderKeyView::from(&stored)))
}

#[utoipa::path(operation_id = "provider_keys_remove", delete, path = "/v1/provider-keys/{scope}/{provider}/{owner_id}", tag = "provider-keys", summary = "Remove a provider key", params(("scope" = String, Path, description = "project or org"), ("provider" = String, Path, description = "The provider"), ("owner_id" = String, Path, description = "The project's or org's id")), responses((status = 200, description = "The removed key's metadata", body = ProviderKeyView), (status = 400, description = "Unknown scope or provider", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "No such key", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn remove(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path((scope, provider, owner_id)): Path<(String, String, String)>,
) -> Result<Response, Error> {
    let (provider, kind, id) = named(&scope, &provider, owner_id)?;
    let removed = with_store(&state, move |store| {
        store.remove_provider_key(&actor, now(), provider, kind, &id)
    })
    .await?;
    Ok(answer(StatusCode::OK, ProviderKeyView::from(&removed)))
}
