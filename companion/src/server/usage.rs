//! `/v1/usage`: signed usage reports from the data plane (no token: the signature is the
//! credential), and `/v1/usage/batches`, the reports applied.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyward_engine::usage_report::{verify_report, ReportRejected, SIGNATURE_HEADER};
use serde::Deserialize;

use super::routes::{query, List};
use super::{with_store, Shared};
use crate::error::Error;
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
pub(super) async fn report(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
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
    let report = verify_report(&body, signature, std::slice::from_ref(&state.signing_key))
        .map_err(|rejected| match rejected {
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
        })?;
    let publish_now = state.spend_publish_ms == 0;
    let applied = with_store(&state.store, move |store| {
        store.apply_usage_report(&report, now(), publish_now)
    })
    .await?;
    for warning in applied.warnings.iter().take(MAX_LOGGED_WARNINGS) {
        eprintln!("keyward: warning: {warning}");
    }
    if applied.warnings.len() > MAX_LOGGED_WARNINGS {
        eprintln!(
            "keyward: warning: ... and {} more for this usage batch",
            applied.warnings.len() - MAX_LOGGED_WARNINGS
        );
    }
    let mut response = Json(applied.ack).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

pub(super) async fn batches(
    State(state): State<Shared>,
    params: Result<Query<BatchesQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let limit = query(params)?.limit.unwrap_or(DEFAULT_BATCH_LIMIT);
    let batches = with_store(&state.store, move |store| store.usage_batches(limit)).await?;
    Ok(Json(List { data: batches }).into_response())
}
