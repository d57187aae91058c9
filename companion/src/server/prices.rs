//! `/v1/prices`: the model price table.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::routes::parse_body;
use super::{with_store, Actor, Shared};
use crate::api::{List, PriceBody};
use crate::error::{Error, ErrorBody};
use crate::store::PriceView;
use crate::units::now;

#[utoipa::path(operation_id = "prices_list", get, path = "/v1/prices", tag = "prices", summary = "The price table, by model", responses((status = 200, description = "The prices", body = List<PriceView>), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn list(State(state): State<Shared>) -> Result<Response, Error> {
    let prices = with_store(&state, |store| store.prices()).await?;
    Ok(Json(List { data: prices }).into_response())
}

#[utoipa::path(operation_id = "prices_get", get, path = "/v1/prices/{model}", tag = "prices", summary = "One price", params(("model" = String, Path, description = "A model name, or a prefix ending in `*`")), responses((status = 200, description = "The price", body = PriceView), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn get(
    State(state): State<Shared>,
    Path(model): Path<String>,
) -> Result<Response, Error> {
    let price = with_store(&state, move |store| store.price(&model)).await?;
    Ok(Json(price).into_response())
}

#[utoipa::path(operation_id = "prices_set", put, path = "/v1/prices/{model}", tag = "prices", summary = "Set (create or replace) a price", params(("model" = String, Path, description = "A model name, or a prefix ending in `*`")), request_body = PriceBody, responses((status = 200, description = "The price", body = PriceView), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn set(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: PriceBody = parse_body(&body)?;
    let record = request.record(model)?;
    let price = with_store(&state, move |store| store.set_price(&actor, now(), &record)).await?;
    Ok(Json(price).into_response())
}

#[utoipa::path(operation_id = "prices_remove", delete, path = "/v1/prices/{model}", tag = "prices", summary = "Remove a price", params(("model" = String, Path, description = "A model name, or a prefix ending in `*`")), responses((status = 200, description = "The removed price", body = PriceView), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn remove(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(model): Path<String>,
) -> Result<Response, Error> {
    let removed = with_store(&state, move |store| {
        store.remove_price(&actor, now(), &model)
    })
    .await?;
    Ok(Json(removed).into_response())
}
