//! What `keyward serve` tells its operators: Prometheus metrics (`/metrics`) and a structured
//! access log (one JSON object a line on stderr). Neither ever carries a token, a key, a body, a
//! query string or even the raw path (a client could put a key where an id goes): requests are
//! named by their route template (`/v1/keys/{id}`), which also keeps label values few. Which key
//! a change touched is in the audit trail.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::{Actor, Shared};
use crate::error::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// How a usage report ended.
#[derive(Debug, Clone, Copy)]
pub enum ReportOutcome {
    Accepted,
    Duplicate,
    /// Bad signature, invalid, too large.
    Refused,
    /// A store error: the data plane retries it.
    Failed,
}

impl ReportOutcome {
    fn label(self) -> &'static str {
        match self {
            ReportOutcome::Accepted => "accepted",
            ReportOutcome::Duplicate => "duplicate",
            ReportOutcome::Refused => "refused",
            ReportOutcome::Failed => "failed",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Histogram>,
    snapshot_version: Gauge,
    snapshot_bytes: Gauge,
    snapshot_builds: Counter,
    reports: Family<OutcomeLabels, Counter>,
    store_errors: Counter,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("keyward");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by endpoint (route template), method and status",
            requests.clone(),
        );
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by endpoint and method",
            latency.clone(),
        );
        let snapshot_version = Gauge::default();
        registry.register(
            "snapshot_version",
            "Policy version of the snapshot this replica serves",
            snapshot_version.clone(),
        );
        let snapshot_bytes = Gauge::default();
        registry.register(
            "snapshot_bytes",
            "Size of the signed snapshot envelope this replica serves",
            snapshot_bytes.clone(),
        );
        let snapshot_builds = Counter::default();
        registry.register(
            "snapshot_builds",
            "Snapshots built (a new version, or a re-issue)",
            snapshot_builds.clone(),
        );
        let reports = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "usage_reports",
            "Usage reports received, by outcome: accepted, duplicate (a retry, already applied), \
             refused (bad signature or content), failed (store error; the data plane retries)",
            reports.clone(),
        );
        // Every outcome is listed from the start, at 0.
        for outcome in [
            ReportOutcome::Accepted,
            ReportOutcome::Duplicate,
            ReportOutcome::Refused,
            ReportOutcome::Failed,
        ] {
            drop(reports.get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            }));
        }
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Store operations that failed (database unreachable, a query that failed)",
            store_errors.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            snapshot_version,
            snapshot_bytes,
            snapshot_builds,
            reports,
            store_errors,
        }
    }

    pub fn snapshot_built(&self, version: u64, bytes: usize) {
        self.snapshot_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        self.snapshot_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.snapshot_builds.inc();
    }

    pub fn report(&self, outcome: ReportOutcome) {
        self.reports
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    fn text(&self) -> Result<String, Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)
            .map_err(|_| Error::internal("cannot encode the metrics"))?;
        Ok(text)
    }
}

/// `GET /metrics`: Prometheus' text format.
pub(super) async fn metrics(State(state): State<Shared>) -> Result<Response, Error> {
    let mut response = state.metrics.text()?.into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// Counts, times and logs every request.
pub(super) async fn observe(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.to_string());
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            endpoint: endpoint.clone(),
            method: method.clone(),
            status,
        })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&EndpointLabels {
            endpoint: endpoint.clone(),
            method: method.clone(),
        })
        .observe(elapsed.as_secs_f64());
    if state.access_log {
        let actor = response
            .extensions()
            .get::<Actor>()
            .map(|Actor(name)| name.clone());
        let line = serde_json::json!({
            "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "peer": peer,
            "method": method,
            "endpoint": endpoint,
            "status": status,
            "duration_ms": elapsed.as_secs_f64() * 1000.0,
            "actor": actor,
        });
        eprintln!("{line}");
    }
    response
}
