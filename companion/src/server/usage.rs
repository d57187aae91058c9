//! `/v1/usage`: usage reports from the data plane (with a data-plane token that may report
//! usage; see server/dataplane.rs), checked entry by entry against the store before anything is
//! applied (store/usage_check.rs); and `/v1/usage/batches`, the reports applied.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use keyward_engine::usage_report::{parse_report, UsageReport};
use serde::Deserialize;

use super::observe::ReportOutcome;
use super::routes::query;
use super::{with_store, Shared};
use crate::api::{List, UsageAckBody};
use crate::error::{Error, ErrorBody};
use crate::store::{DataplaneIdentity, RefusedBatchView, UsageBatchView};
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

/// Refusal reasons shown in an answer and logged per batch (all are kept in the store).
const MAX_SHOWN_REASONS: usize = 5;

/// `POST /v1/usage`: a usage report from a data plane. Refused whole (400, kept for audit) when
/// any entry breaks a rule; otherwise applied once per batch id of this data-plane token.
#[utoipa::path(operation_id = "usage_report", post, path = "/v1/usage", tag = "usage", summary = "A usage report from the data plane (data-plane token with the usage permission)", request_body(content = Object, description = "A usage report (keyward.usage-report.v1)"), responses((status = 200, description = "Applied, or a duplicate of a batch applied before", body = UsageAckBody), (status = 400, description = "Invalid report, or refused: an entry the store cannot explain (kept, see /v1/usage/refused)", body = ErrorBody), (status = 401, description = "Missing, invalid or revoked data-plane token", body = ErrorBody), (status = 403, description = "The token may not report usage", body = ErrorBody), (status = 413, description = "Report too large", body = ErrorBody)), security(("dataplane_token" = [])))]
pub(super) async fn report(
    State(state): State<Shared>,
    Extension(caller): Extension<DataplaneIdentity>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let (mut report, body) = match parsed(body) {
        Ok(parsed) => parsed,
        Err(error) => {
            state.metrics.report(ReportOutcome::Refused);
            return Err(error);
        }
    };
    let limits = state.usage_limits;
    let now = now();
    let checked = report.clone();
    let violations = with_store(&state, move |store| {
        store.usage_report_violations(&checked, &limits, now)
    })
    .await
    .inspect_err(|_| state.metrics.report(ReportOutcome::Failed))?;
    if !violations.is_empty() {
        state.metrics.report(ReportOutcome::Refused);
        return Err(refuse(&state, &caller, &report, &body, violations, now).await);
    }
    // Batch ids and the audit actor belong to the data-plane token: one fleet can neither
    // pre-empt another's batch ids nor report as anyone but itself.
    let batch_id = std::mem::take(&mut report.batch_id);
    report.batch_id = format!("{}/{batch_id}", caller.name);
    report.reporter = format!("{}/{}", caller.actor(), report.reporter);
    let publish_now = state.spend_publish_ms == 0;
    let applied = with_store(&state, move |store| {
        store.apply_usage_report(&report, now, publish_now)
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
        batch_id,
        version: applied.ack.version,
        duplicate: applied.ack.duplicate,
    };
    let mut response = Json(ack).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The report in `body`, parsed, and the body itself (kept when the report is refused).
fn parsed(body: Result<Bytes, BytesRejection>) -> Result<(UsageReport, Bytes), Error> {
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
    let report = parse_report(&body).map_err(|error| {
        Error::invalid("invalid_report", format!("Invalid usage report: {error}"))
    })?;
    Ok((report, body))
}

/// Keeps a refused batch for audit and answers 400 with the first reasons. The data plane drops
/// a batch answered 400 (its spend still counts in that Envoy), so a refusal is final.
async fn refuse(
    state: &Shared,
    caller: &DataplaneIdentity,
    report: &UsageReport,
    body: &Bytes,
    reasons: Vec<String>,
    now: u64,
) -> Error {
    let shown = reasons
        .iter()
        .take(MAX_SHOWN_REASONS)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    let more = reasons.len().saturating_sub(MAX_SHOWN_REASONS);
    let refused = RefusedBatchView {
        received_at: now,
        token_name: caller.name.clone(),
        reporter: report.reporter.clone(),
        batch_id: report.batch_id.clone(),
        entries: u64::try_from(report.entries.len()).unwrap_or(u64::MAX),
        cost_microusd: report
            .entries
            .iter()
            .fold(0u64, |sum, entry| sum.saturating_add(entry.cost_microusd)),
        reasons,
        body: String::from_utf8_lossy(body).into_owned(),
    };
    eprintln!(
        "keyward: warning: usage batch {:?} from data plane {} refused: {shown}{}",
        refused.batch_id.chars().take(80).collect::<String>(),
        caller.name,
        if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        }
    );
    if let Err(error) = with_store(state, move |store| {
        store.record_refused_usage(now, &refused)
    })
    .await
    {
        return error;
    }
    Error::invalid(
        "usage_report_refused",
        format!(
            "Usage report refused, nothing applied: {shown}{}",
            if more > 0 {
                format!(" (and {more} more)")
            } else {
                String::new()
            }
        ),
    )
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
