//! `/v1/projects`: create, show, change, archive and list projects.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::routes::parse_body;
use super::{with_store, Actor, Shared};
use crate::api::{CreateProjectBody, List, UpdateProjectBody};
use crate::error::{Error, ErrorBody};
use crate::store::{ProjectUpdate, ProjectView};
use crate::units::now;

#[utoipa::path(operation_id = "projects_create", post, path = "/v1/projects", tag = "projects", summary = "Create a project", request_body = CreateProjectBody, responses((status = 201, description = "The new project", body = ProjectView), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 409, description = "Conflicts with the current state", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn create(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: CreateProjectBody = parse_body(&body)?;
    let project = with_store(&state, move |store| {
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

#[utoipa::path(operation_id = "projects_get", get, path = "/v1/projects/{id}", tag = "projects", summary = "One project", params(("id" = String, Path, description = "The project id")), responses((status = 200, description = "The project", body = ProjectView), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn get(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let project = with_store(&state, move |store| store.project(&id)).await?;
    Ok(Json(project).into_response())
}

#[utoipa::path(operation_id = "projects_update", patch, path = "/v1/projects/{id}", tag = "projects", summary = "Change a project's caps", params(("id" = String, Path, description = "The project id")), request_body = UpdateProjectBody, responses((status = 200, description = "The project", body = ProjectView), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)), security(("admin_token" = [])))]
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
    let project = with_store(&state, move |store| {
        store.update_project(&actor, now(), &id, &update)
    })
    .await?;
    Ok(Json(project).into_response())
}

#[utoipa::path(operation_id = "projects_archive", post, path = "/v1/projects/{id}/archive", tag = "projects", summary = "Archive a project", params(("id" = String, Path, description = "The project id")), responses((status = 200, description = "The project", body = ProjectView), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflicts with the current state", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn archive(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let project = with_store(&state, move |store| {
        store.archive_project(&actor, now(), &id)
    })
    .await?;
    Ok(Json(project).into_response())
}

#[utoipa::path(operation_id = "projects_list", get, path = "/v1/projects", tag = "projects", summary = "All projects", responses((status = 200, description = "The projects", body = List<ProjectView>), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn list(State(state): State<Shared>) -> Result<Response, Error> {
    let projects = with_store(&state, |store| store.projects()).await?;
    Ok(Json(List { data: projects }).into_response())
}
