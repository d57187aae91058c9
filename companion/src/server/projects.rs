//! `/v1/projects`: create, show, change, archive and list projects.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::routes::{explicit_null, parse_body, List};
use super::{with_store, Actor, Shared};
use crate::error::Error;
use crate::store::ProjectUpdate;
use crate::units::now;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateProjectBody {
    id: String,
    org: String,
    #[serde(default)]
    spend_cap_microusd: Option<u64>,
    #[serde(default)]
    spend_soft_cap_microusd: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateProjectBody {
    #[serde(default, deserialize_with = "explicit_null")]
    spend_cap_microusd: Option<Option<u64>>,
    #[serde(default, deserialize_with = "explicit_null")]
    spend_soft_cap_microusd: Option<Option<u64>>,
}

pub(super) async fn create(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: CreateProjectBody = parse_body(&body)?;
    let project = with_store(&state.store, move |store| {
        store.create_project(
            &actor,
            now(),
            &request.id,
            &request.org,
            request.spend_cap_microusd,
            request.spend_soft_cap_microusd,
        )
    })
    .await?;
    Ok((StatusCode::CREATED, Json(project)).into_response())
}

pub(super) async fn get(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let project = with_store(&state.store, move |store| store.project(&id)).await?;
    Ok(Json(project).into_response())
}

pub(super) async fn update(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: UpdateProjectBody = parse_body(&body)?;
    let update = ProjectUpdate {
        spend_cap_microusd: request.spend_cap_microusd,
        spend_soft_cap_microusd: request.spend_soft_cap_microusd,
    };
    let project = with_store(&state.store, move |store| {
        store.update_project(&actor, now(), &id, &update)
    })
    .await?;
    Ok(Json(project).into_response())
}

pub(super) async fn archive(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let project = with_store(&state.store, move |store| {
        store.archive_project(&actor, now(), &id)
    })
    .await?;
    Ok(Json(project).into_response())
}

pub(super) async fn list(State(state): State<Shared>) -> Result<Response, Error> {
    let projects = with_store(&state.store, |store| store.projects()).await?;
    Ok(Json(List { data: projects }).into_response())
}
