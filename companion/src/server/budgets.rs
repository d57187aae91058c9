//! Budgets over the admin API: plans (`/v1/plans`), each key's and project's own limits
//! (`/v1/{keys,projects}/{id}/limits`), window history (`…/windows`), temporary increases
//! (`/v1/increases`, `…/increases`), audited spend adjustments and resets (`/v1/spend/…`),
//! alerts (`/v1/alerts`) and price imports (`/v1/prices/import`).

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use keyward_engine::budget::PlanRecord;
use serde::Deserialize;

use super::routes::{parse_body, query};
use super::{with_store, Actor, Shared};
use crate::api::List;
use crate::budget_api::{AdjustBody, IncreaseBody, PriceImportBody, ResetBody};
use crate::error::{Error, ErrorBody};
use crate::store::{
    AlertView, BudgetOwner, IncreaseView, LimitsSettings, PriceImport, UsageChange, WindowUsageView,
};
use crate::units::now;

/// `?key=<id>` or `?project=<id>`: whose limits, windows or increases.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OwnerQuery {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    project: Option<String>,
}

fn owner_of(params: Result<Query<OwnerQuery>, QueryRejection>) -> Result<BudgetOwner, Error> {
    match query(params)? {
        OwnerQuery {
            key: Some(key),
            project: None,
        } => Ok(BudgetOwner::Key(key)),
        OwnerQuery {
            key: None,
            project: Some(project),
        } => Ok(BudgetOwner::Project(project)),
        _ => Err(Error::invalid(
            "invalid_query",
            "name one owner: ?key=<id> or ?project=<id>",
        )),
    }
}

#[utoipa::path(operation_id = "plans_list", get, path = "/v1/plans", tag = "budgets", summary = "All plans", responses((status = 200, description = "The plans", body = Object), (status = 401, description = "Missing or invalid admin token", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn plans(State(state): State<Shared>) -> Result<Response, Error> {
    let plans = with_store(&state, |store| store.plans()).await?;
    Ok(Json(List { data: plans }).into_response())
}

#[utoipa::path(operation_id = "plans_get", get, path = "/v1/plans/{id}", tag = "budgets", summary = "One plan", params(("id" = String, Path, description = "The plan id")), responses((status = 200, description = "The plan", body = Object), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn plan(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let plan = with_store(&state, move |store| store.plan(&id)).await?;
    Ok(Json(plan).into_response())
}

#[utoipa::path(operation_id = "plans_set", put, path = "/v1/plans/{id}", tag = "budgets", summary = "Create or replace a plan (budgets, quotas, models, rate limits); every key and project on it follows with the next snapshot", params(("id" = String, Path, description = "The plan id")), request_body(content = Object, description = "A plan: {\"budgets\"?, \"quotas\"?, \"models\"?, \"rate_limits\"?, \"label\"?}"), responses((status = 200, description = "The plan", body = Object), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn set_plan(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let mut plan: serde_json::Value = parse_body(&body)?;
    if let Some(object) = plan.as_object_mut() {
        object.insert("id".into(), serde_json::Value::String(id));
    }
    let plan: PlanRecord = serde_json::from_value(plan)
        .map_err(|error| Error::invalid("invalid_json", format!("Invalid plan: {error}")))?;
    let plan = with_store(&state, move |store| store.set_plan(&actor, now(), &plan)).await?;
    Ok(Json(plan).into_response())
}

#[utoipa::path(operation_id = "plans_remove", delete, path = "/v1/plans/{id}", tag = "budgets", summary = "Remove a plan no key or project names", params(("id" = String, Path, description = "The plan id")), responses((status = 200, description = "The removed plan", body = Object), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Still in use", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn remove_plan(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let plan = with_store(&state, move |store| store.remove_plan(&actor, now(), &id)).await?;
    Ok(Json(plan).into_response())
}

#[utoipa::path(operation_id = "limits_get", get, path = "/v1/limits", tag = "budgets", summary = "A key's or project's own limits", params(("key" = Option<String>, Query, description = "A key id"), ("project" = Option<String>, Query, description = "A project id (instead of key)")), responses((status = 200, description = "The limits", body = LimitsSettings), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn limits(
    State(state): State<Shared>,
    params: Result<Query<OwnerQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let owner = owner_of(params)?;
    let limits = with_store(&state, move |store| store.limits(&owner)).await?;
    Ok(Json(limits).into_response())
}

#[utoipa::path(operation_id = "limits_set", put, path = "/v1/limits", tag = "budgets", summary = "Replace a key's or project's own limits: plan, UTC offset, budgets per day/week/month, quotas", params(("key" = Option<String>, Query, description = "A key id"), ("project" = Option<String>, Query, description = "A project id (instead of key)")), request_body = LimitsSettings, responses((status = 200, description = "The limits", body = LimitsSettings), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn set_limits(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    params: Result<Query<OwnerQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Response, Error> {
    let owner = owner_of(params)?;
    let limits: LimitsSettings = parse_body(&body)?;
    let limits = with_store(&state, move |store| {
        store.set_limits(&actor, now(), &owner, &limits)
    })
    .await?;
    Ok(Json(limits).into_response())
}

#[utoipa::path(operation_id = "windows_list", get, path = "/v1/windows", tag = "budgets", summary = "What each window of a key or project used, newest first, and its lifetime spend", params(("key" = Option<String>, Query, description = "A key id"), ("project" = Option<String>, Query, description = "A project id (instead of key)")), responses((status = 200, description = "The windows", body = List<WindowUsageView>), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn windows(
    State(state): State<Shared>,
    params: Result<Query<OwnerQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let owner = owner_of(params)?;
    let history = with_store(&state, move |store| store.window_history(&owner)).await?;
    Ok(Json(List { data: history }).into_response())
}

#[utoipa::path(operation_id = "increases_list", get, path = "/v1/increases", tag = "budgets", summary = "A key's or project's temporary increases, newest first", params(("key" = Option<String>, Query, description = "A key id"), ("project" = Option<String>, Query, description = "A project id (instead of key)")), responses((status = 200, description = "The increases", body = List<IncreaseView>), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn increases(
    State(state): State<Shared>,
    params: Result<Query<OwnerQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let owner = owner_of(params)?;
    let increases = with_store(&state, move |store| store.increases(&owner)).await?;
    Ok(Json(List { data: increases }).into_response())
}

#[utoipa::path(operation_id = "increases_add", post, path = "/v1/increases", tag = "budgets", summary = "Raise a period's cap or quotas until a time (it ends by itself in every Envoy)", request_body = IncreaseBody, responses((status = 200, description = "The increase", body = IncreaseView), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn add_increase(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: IncreaseBody = parse_body(&body)?;
    let at = now();
    let (owner, increase) = request.resolve(at)?;
    let view = with_store(&state, move |store| {
        store.raise_limit(&actor, at, &owner, increase, &request.reason)
    })
    .await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(operation_id = "spend_adjust", post, path = "/v1/spend/adjust", tag = "budgets", summary = "Adjust a window's or the lifetime spend, requests or tokens (audited)", request_body = AdjustBody, responses((status = 200, description = "Before and after", body = UsageChange), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn adjust(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: AdjustBody = parse_body(&body)?;
    let target = request.target()?;
    let change = with_store(&state, move |store| {
        store.adjust_usage(
            &actor,
            now(),
            &request.owner,
            &target,
            request.delta(),
            &request.reason,
        )
    })
    .await?;
    Ok(Json(change).into_response())
}

#[utoipa::path(operation_id = "spend_reset", post, path = "/v1/spend/reset", tag = "budgets", summary = "Reset a window's or the lifetime figures to zero (audited)", request_body = ResetBody, responses((status = 200, description = "Before and after", body = UsageChange), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn reset(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: ResetBody = parse_body(&body)?;
    let target = crate::store::WindowTarget::parse(&request.window)?;
    let change = with_store(&state, move |store| {
        store.reset_usage(&actor, now(), &request.owner, &target, &request.reason)
    })
    .await?;
    Ok(Json(change).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AlertsQuery {
    #[serde(default)]
    limit: Option<u64>,
}

#[utoipa::path(operation_id = "alerts_list", get, path = "/v1/alerts", tag = "budgets", summary = "Budget alerts (soft cap and cap reached, once per window) and their webhook delivery, newest first", params(("limit" = Option<u64>, Query, description = "At most this many (default 100)")), responses((status = 200, description = "The alerts", body = List<AlertView>), (status = 401, description = "Missing or invalid admin token", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn alerts(
    State(state): State<Shared>,
    params: Result<Query<AlertsQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let limit = query(params)?.limit.unwrap_or(100);
    let alerts = with_store(&state, move |store| store.alerts(limit)).await?;
    Ok(Json(List { data: alerts }).into_response())
}

#[utoipa::path(operation_id = "prices_import", post, path = "/v1/prices/import", tag = "prices", summary = "Import a price list as one version (dated; optionally replacing the table)", request_body = PriceImportBody, responses((status = 200, description = "What changed", body = PriceImport), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn import_prices(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: PriceImportBody = parse_body(&body)?;
    let imported = with_store(&state, move |store| {
        store.import_prices(
            &actor,
            now(),
            &request.prices,
            &request.source,
            &request.as_of,
            request.replace,
        )
    })
    .await?;
    Ok(Json(imported).into_response())
}
