//! `/v1/usage`: signed usage reports from the data plane (no token: the signature is the
//! credential), and `/v1/usage/batches`, the reports applied.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyward_engine::usage_report::{verify_report, ReportRejected, UsageReport, SIGNATURE_HEADER};
use serde::Deserialize;

use super::observe::ReportOutcome;
use super::routes::query;
use super::{with_store, AppState, Shared};
use crate::api::{List, UsageAckBody};
use crate::error::{Error, ErrorBody};
use crate::store::UsageBatchView;
use crate::units::now;

/// A usage report holds up to `MAX_ENTRIES_PER_REPORT` (2000) entries: allow it room.
pub const MAX_USAGE_REPORT_BYTES: usize = 4 * 1024 * 1024;
/// `GET /v1/usage/batches` without `limit`.
const DEFAULT_BATCH_LIMIT: u64 = 100;
/// Warnings logged per usage report (unknown keys...), so one bad batch cannot flood the log.
const MAX_LOGGED_WARNINGS: usize = 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchesQuery {
    #[serde(default)]
    limit: Option<u64>,
}

/// `POST /v1/usage`: a signed usage report from the data plane. The signature (HMAC-SHA256 of
/// the exact body with the snapshot signing key) is checked before the body is parsed.
#[utoipa::path(operation_id = "usage_report", post, path = "/v1/usage", tag = "usage", summary = "A signed usage report from the data plane (no token: the x-keyward-signature header is the credential)", request_body(content = Object, description = "A usage report (keyward.usage-report.v1), signed with the snapshot signing key"), responses((status = 200, description = "Applied, or a duplicate of a batch applied before", body = UsageAckBody), (status = 400, description = "Invalid report", body = ErrorBody), (status = 401, description = "Bad or missing signature", body = ErrorBody), (status = 413, description = "Report too large", body = ErrorBody)))]
pub(super) async fn report(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let report = match verified(&state, &headers, body) {
        Ok(report) => report,
        Err(error) => {
            state.metrics.report(ReportOutcome::Refused);
            return Err(error);
        }
    };
    let publish_now = state.spend_publish_ms == 0;
    let applied = with_store(&state, move |store| {
        store.apply_usage_report(&report, now(), publish_now)
    })
    .await
    .inspect_err(|_| state.metrics.report(ReportOutcome::Failed))?;
    state.metrics.report(if applied.ack.duplicate {
        ReportOutcome::Duplicate
    } else {
        ReportOutcome::Accepted
    });
    for warning in applied.warnings.iter().take(MAX_LOGGED_WARNINGS) {
        eprintln!("keyward: warning: {warning}");
    }
    if applied.warnings.len() > MAX_LOGGED_WARNINGS {
        eprintln!(
            "keyward: warning: ... and {} more for this usage batch",
            applied.warnings.len() - MAX_LOGGED_WARNINGS
        );
    }
    let ack = UsageAckBody {
        batch_id: applied.ack.batch_id,
        version: applied.ack.version,
        duplicate: applied.ack.duplicate,
    };
    let mut response = Json(ack).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The report in `body`, its signature checked before it is parsed.
fn verified(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<UsageReport, Error> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::new(
                413,
                "report_too_large",
                format!("A usage report is at most {MAX_USAGE_REPORT_BYTES} bytes."),
            )
        } else {
            Error::invalid("invalid_body", rejection.body_text())
        }
    })?;
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok());
    verify_report(&body, signature, std::slice::from_ref(&state.signing_key)).map_err(|rejected| {
        match rejected {
            ReportRejected::Signature => Error::new(
                401,
                "invalid_signature",
                format!(
                    "The {SIGNATURE_HEADER} header is missing, names an unknown key, or does not \
                     verify over this body."
                ),
            ),
            ReportRejected::Invalid(error) => {
                Error::invalid("invalid_report", format!("Invalid usage report: {error}"))
            }
        }
    })
}

#[utoipa::path(operation_id = "usage_batches", get, path = "/v1/usage/batches", tag = "usage", summary = "The most recent usage batches applied, newest first", params(("limit" = Option<u64>, Query, description = "At most this many (default 100)")), responses((status = 200, description = "The batches", body = List<UsageBatchView>), (status = 400, description = "Invalid request", body = ErrorBody), (status = 401, description = "Missing or invalid admin token", body = ErrorBody)), security(("admin_token" = [])))]
pub(super) async fn batches(
    State(state): State<Shared>,
    params: Result<Query<BatchesQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let limit = query(params)?.limit.unwrap_or(DEFAULT_BATCH_LIMIT);
    let batches = with_store(&state, move |store| store.usage_batches(limit)).await?;
    Ok(Json(List { data: batches }).into_response())
}
