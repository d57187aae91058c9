//! What the filter does with a request's headers: decide through the engine, then either let
//! the request go upstream with trusted identity, or answer it locally. Host-agnostic.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use keyward_engine::config::{Mode, Settings};
use keyward_engine::decision::{decide, Identity, Outcome, Rejection};
use keyward_engine::denial::{Denial, DenyCode};
use keyward_engine::log_line::DecisionLog;
use keyward_engine::request::{path_without_query_parameter, Request};
use keyward_engine::route::{ErrorFormat, Route};
use keyward_engine::snapshot::Policy;

use crate::host::{Host, HostError, LogLevel};
use crate::metering_flow::{admit, log_settle_failure, read_body, Admitted, BodyRead, Ticket};
use crate::metrics::Metrics;
use crate::usage_activity::{Activity, Usage};

/// Every client-sent header with this prefix is removed: the upstream trusts the prefix.
const KEYWARD_HEADER_PREFIX: &str = "x-keyward-";

/// Header telling the upstream what shadow mode would have refused.
pub const SHADOW_HEADER: &str = "x-keyward-shadow-denied";

/// State shared by every request context of one root context. Immutable, except the VM's
/// usage activity, which requests add to and the root context's tick flushes. Settings, policy
/// and metrics are `Arc`s so that a native host can share one copy between worker threads.
#[derive(Debug)]
pub struct FilterState {
    pub settings: Arc<Settings>,
    pub policy: Option<Arc<Policy>>,
    pub metrics: Arc<Metrics>,
    /// Present when usage is reported to a control plane (a `sync` block is configured).
    pub activity: Option<Rc<RefCell<Activity>>>,
}

/// Whether the request goes on, waits for its body, or was answered locally.
#[derive(Debug)]
pub enum Verdict {
    /// Goes upstream; nothing to do when it ends.
    Continue,
    /// Goes upstream; its response is watched (rate-limit headers, metering).
    Forward(Box<Admitted>),
    /// Allowed so far; the body decides the rest (model, reservation).
    AwaitBody(Box<Ticket>),
    /// A local reply was sent (or could not be, and the request must still not go upstream).
    Stop,
}

impl Verdict {
    pub fn goes_upstream(&self) -> bool {
        matches!(self, Verdict::Continue | Verdict::Forward(_))
    }
}

pub fn on_request_headers(host: &impl Host, state: &FilterState, end_of_stream: bool) -> Verdict {
    match handle(host, state, end_of_stream) {
        Ok(verdict) => verdict,
        Err(error) => refuse_on_host_error(host, state, error),
    }
}

fn refuse_on_host_error(host: &impl Host, state: &FilterState, error: HostError) -> Verdict {
    host.log(
        LogLevel::Error,
        &format!(
            "keyward: host call failed with status {}; refusing the request",
            error.status
        ),
    );
    let denial = Denial::new(DenyCode::InternalError, state.settings.spend_cap_status);
    count_denial(host, state, DenyCode::InternalError);
    reply(host, state, &denial, ErrorFormat::Openai, "", &[]);
    Verdict::Stop
}

/// The buffered body of a request that waited for it (`body_size` bytes; 0 when it has none).
pub fn on_request_body(
    host: &impl Host,
    state: &FilterState,
    ticket: Ticket,
    body_size: usize,
) -> Verdict {
    match handle_body(host, state, ticket, body_size) {
        Ok(verdict) => verdict,
        Err(error) => refuse_on_host_error(host, state, error),
    }
}

fn handle_body(
    host: &impl Host,
    state: &FilterState,
    ticket: Ticket,
    body_size: usize,
) -> Result<Verdict, HostError> {
    let route = state.settings.route_at(ticket.route);
    let format = route.error_format;
    let request_id = ticket.request_id.clone();
    if body_size > state.settings.metering.max_request_body_bytes {
        return Ok(refuse_after_policy(
            host,
            state,
            &ticket,
            DenyCode::RequestTooLarge,
            format,
        ));
    }
    let body_read = if body_size == 0 {
        None
    } else {
        let body = host.request_body(body_size)?;
        match read_body(state, &ticket, &body) {
            Ok(read) => Some(read),
            Err(code) => return Ok(refuse_after_policy(host, state, &ticket, code, format)),
        }
    };
    let verdict = admitted(host, state, ticket, body_read.as_ref(), &request_id)?;
    if verdict.goes_upstream() {
        if let Some(rewritten) = body_read.and_then(|read| read.rewritten) {
            host.replace_request_body(body_size, &rewritten)?;
            if state.settings.metering.hold_headers {
                host.replace_request_header(
                    "content-length",
                    rewritten.len().to_string().as_bytes(),
                )?;
            }
        }
    }
    Ok(verdict)
}

fn refuse_after_policy(
    host: &impl Host,
    state: &FilterState,
    ticket: &Ticket,
    code: DenyCode,
    format: ErrorFormat,
) -> Verdict {
    let denial = Denial::new(code, state.settings.spend_cap_status);
    log_late_denial(host, state, ticket, &denial);
    count_denial(host, state, code);
    reply(host, state, &denial, format, &ticket.request_id, &[]);
    Verdict::Stop
}

fn log_late_denial(host: &impl Host, state: &FilterState, ticket: &Ticket, denial: &Denial) {
    let key = ticket.policy.key_at(ticket.key);
    let route = state.settings.route_at(ticket.route);
    let line = DecisionLog {
        event: "deny",
        code: Some(denial.code.as_str()),
        status: Some(denial.status),
        key_id: key.map(|key| key.id.as_str()),
        key_label: key.and_then(|key| key.label.as_deref()),
        project: ticket
            .project
            .and_then(|position| ticket.policy.project_at(position))
            .map(|project| project.id.as_str()),
        route: &route.name,
        request_id: &ticket.request_id,
        policy_version: ticket.policy.version,
    };
    host.log(LogLevel::Warn, &line.to_line());
}

/// Steps 10 to 12 once everything they need is known; sends the refusal if there is one.
fn admitted(
    host: &impl Host,
    state: &FilterState,
    ticket: Ticket,
    body: Option<&BodyRead>,
    request_id: &str,
) -> Result<Verdict, HostError> {
    let format = state.settings.route_at(ticket.route).error_format;
    let shadow = state.settings.mode == Mode::Shadow;
    let log_ticket = Ticket {
        policy: Arc::clone(&ticket.policy),
        key: ticket.key,
        project: ticket.project,
        route: ticket.route,
        chat_completions: false,
        request_id: request_id.to_owned(),
    };
    match admit(host, state, ticket, body)? {
        Ok(admitted) => {
            host.increment_metric(state.metrics.allowed, 1);
            if admitted.meter.is_none() {
                record_activity(
                    state,
                    &admitted,
                    Usage {
                        requests: 1,
                        ..Usage::default()
                    },
                    host,
                );
                if admitted.response_headers.is_empty() {
                    return Ok(Verdict::Continue);
                }
            }
            Ok(Verdict::Forward(Box::new(admitted)))
        }
        Err(refusal) => {
            log_late_denial(host, state, &log_ticket, &refusal.denial);
            if shadow {
                host.replace_request_header(
                    SHADOW_HEADER,
                    refusal.denial.code.as_str().as_bytes(),
                )?;
                host.increment_metric(state.metrics.shadow_denied, 1);
                return Ok(Verdict::Continue);
            }
            count_denial(host, state, refusal.denial.code);
            let extra: Vec<(&str, &str)> = refusal
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            reply(host, state, &refusal.denial, format, request_id, &extra);
            Ok(Verdict::Stop)
        }
    }
}

/// Whether the key or its project has a cap, soft cap or rate limit (steps 11 and 12).
fn has_budget_or_limit(identity: &Identity<'_>) -> bool {
    let key = identity.key;
    key.spend_cap_microusd.is_some()
        || key.spend_soft_cap_microusd.is_some()
        || key.rate_limits.is_some()
        || identity.project.is_some_and(|project| {
            project.spend_cap_microusd.is_some() || project.spend_soft_cap_microusd.is_some()
        })
}

/// Adds a finished (or unmetered) request to the VM's usage activity for the next report.
pub fn record_activity(state: &FilterState, admitted: &Admitted, usage: Usage, host: &impl Host) {
    let Some(activity) = &state.activity else {
        return;
    };
    let Some((key_id, project_id)) = admitted.key_and_project() else {
        return;
    };
    if let Ok(mut activity) = activity.try_borrow_mut() {
        // The VM's tick keeps a clock for last-use times; before the first tick, ask the host.
        let now_s = match activity.clock_s() {
            0 => host.now_ms().map(|ms| ms / 1000).unwrap_or(0),
            seconds => seconds,
        };
        activity.record(key_id, project_id, usage, now_s);
    }
}

/// The response's headers, for an admitted request that watches them.
pub fn on_response_headers(host: &impl Host, admitted: &mut Admitted) {
    if let Err(error) = admitted.on_response_headers(host) {
        host.log(
            LogLevel::Warn,
            &format!(
                "keyward: cannot read or amend response headers (host status {})",
                error.status
            ),
        );
    }
}

pub fn on_response_body(
    host: &impl Host,
    admitted: &mut Admitted,
    chunk_size: usize,
    end_of_stream: bool,
) {
    if let Err(error) = admitted.on_response_body(host, chunk_size, end_of_stream) {
        host.log(
            LogLevel::Warn,
            &format!(
                "keyward metering: cannot read a response chunk (host status {})",
                error.status
            ),
        );
    }
}

/// The stream is over, however it ended.
pub fn on_stream_end(host: &impl Host, state: &FilterState, admitted: &mut Admitted) {
    if admitted.meter.is_none() {
        return;
    }
    match admitted.settle(host, state) {
        Ok(usage) => {
            if usage.requests > 0 {
                record_activity(state, admitted, usage, host);
            }
        }
        Err(error) => {
            host.increment_metric(state.metrics.metering.settle_failures, 1);
            log_settle_failure(host, error);
        }
    }
}

fn handle(
    host: &impl Host,
    state: &FilterState,
    end_of_stream: bool,
) -> Result<Verdict, HostError> {
    let settings = &state.settings;
    let headers = host.request_headers()?;
    let route_name_bytes = if settings.needs_route_name() {
        host.property(&["xds", "route_name"])?
    } else {
        None
    };
    let route_name = route_name_bytes
        .as_deref()
        .and_then(|bytes| core::str::from_utf8(bytes).ok())
        .filter(|name| !name.is_empty());
    let request = Request::new(&headers, route_name);
    let route_position = settings.route_position_for(&request);
    let route = settings.route_at(route_position);
    // Without expiring keys, an expiring snapshot or a max age, no check reads the clock: a
    // host call saved on every request.
    let needs_clock = state
        .policy
        .as_ref()
        .is_some_and(|policy| policy.needs_clock(settings.max_policy_age_seconds));
    let now = if needs_clock {
        host.now_unix_seconds()?
    } else {
        0
    };
    let outcome = decide(settings, route, &request, state.policy.as_deref(), now);

    // Client-sent copies of keyward's own headers (every `x-keyward-*` and the configured
    // identity header names) never reach the upstream, whatever the outcome. One host call per
    // copy present; none when the client sent none (no allocation either).
    let identity_names = &settings.identity_headers;
    let mut spoofed: Vec<&str> = request
        .header_names()
        .filter(|name| {
            name.get(..KEYWARD_HEADER_PREFIX.len())
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(KEYWARD_HEADER_PREFIX))
                || identity_names
                    .all()
                    .any(|own| own.eq_ignore_ascii_case(name))
        })
        .collect();
    spoofed.dedup();
    for name in spoofed {
        host.remove_request_header(name)?;
    }

    let version = state.policy.as_ref().map_or(0, |policy| policy.version);
    let log_base = DecisionLog {
        route: &route.name,
        request_id: request.request_id(),
        policy_version: version,
        ..DecisionLog::default()
    };
    match outcome {
        Outcome::Exempt => {
            // No authentication here, but a key sent anyway still never reaches the upstream.
            strip_credentials(host, settings, route, &request)?;
            host.increment_metric(state.metrics.exempt, 1);
            Ok(Verdict::Continue)
        }
        Outcome::FailOpen => {
            strip_credentials(host, settings, route, &request)?;
            host.increment_metric(state.metrics.fail_open, 1);
            host.log(
                LogLevel::Warn,
                &DecisionLog {
                    event: "fail_open",
                    ..log_base
                }
                .to_line(),
            );
            Ok(Verdict::Continue)
        }
        Outcome::Allow(identity) => {
            strip_credentials(host, settings, route, &request)?;
            add_identity(host, settings, &identity)?;
            if settings.log_allowed {
                let project = identity.project.map(|project| project.id.as_str());
                let line = DecisionLog {
                    event: "allow",
                    key_id: Some(&identity.key.id),
                    key_label: identity.key.label.as_deref(),
                    project,
                    ..log_base
                };
                host.log(LogLevel::Info, &line.to_line());
            }
            let Some(policy) = state.policy.as_ref() else {
                return Ok(Verdict::Continue);
            };
            if !route.reads_body() && state.activity.is_none() && !has_budget_or_limit(&identity) {
                // Nothing to read, reserve, limit or report: steps 11 and 12 cannot refuse.
                host.increment_metric(state.metrics.allowed, 1);
                return Ok(Verdict::Continue);
            }
            let request_id = request.request_id();
            let ticket = Ticket {
                policy: Arc::clone(policy),
                key: identity.key.position,
                project: identity.project.map(|project| project.position),
                route: route_position,
                chat_completions: request.path_without_query().ends_with("/chat/completions"),
                request_id: request_id.to_owned(),
            };
            if route.reads_body() && !end_of_stream {
                let may_rewrite = route.meter && route.add_stream_usage && ticket.chat_completions;
                if may_rewrite
                    && !settings.metering.hold_headers
                    && request.has_header("content-length")
                {
                    // The headers leave before the body may grow: let Envoy frame it instead.
                    host.remove_request_header("content-length")?;
                }
                return Ok(Verdict::AwaitBody(Box::new(ticket)));
            }
            admitted(host, state, ticket, None, request_id)
        }
        Outcome::Deny(rejection) => {
            let shadow = settings.mode == Mode::Shadow;
            let line = rejection_log(&rejection, shadow, log_base);
            host.log(LogLevel::Warn, &line.to_line());
            // Refused requests lose their credential too: Envoy's access log reads the request
            // headers and `:path` as the filters left them (a query-parameter key would be
            // logged in plain text otherwise).
            strip_credentials(host, settings, route, &request)?;
            if shadow {
                host.replace_request_header(
                    SHADOW_HEADER,
                    rejection.denial.code.as_str().as_bytes(),
                )?;
                host.increment_metric(state.metrics.shadow_denied, 1);
                return Ok(Verdict::Continue);
            }
            count_denial(host, state, rejection.denial.code);
            reply(
                host,
                state,
                &rejection.denial,
                route.error_format,
                request.request_id(),
                &[],
            );
            Ok(Verdict::Stop)
        }
    }
}

fn rejection_log<'a>(
    rejection: &'a Rejection<'_>,
    shadow: bool,
    base: DecisionLog<'a>,
) -> DecisionLog<'a> {
    DecisionLog {
        event: if shadow { "shadow_deny" } else { "deny" },
        code: Some(rejection.denial.code.as_str()),
        status: Some(rejection.denial.status),
        key_id: rejection.key.map(|key| key.id.as_str()),
        key_label: rejection.key.and_then(|key| key.label.as_deref()),
        project: rejection.project,
        ..base
    }
}

/// Removes every credential source the request used, so no key goes upstream.
fn strip_credentials(
    host: &impl Host,
    settings: &Settings,
    route: &Route,
    request: &Request<'_>,
) -> Result<(), HostError> {
    for source in &settings.credential_sources {
        let name = source.header_name();
        if request.has_header(name) {
            host.remove_request_header(name)?;
        }
    }
    if let Some(parameter) = route.query_parameter.as_deref() {
        if let Some(path) = path_without_query_parameter(request.path(), parameter) {
            host.replace_request_header(":path", path.as_bytes())?;
        }
    }
    Ok(())
}

/// One header write per identity header that is configured and has a value. Client copies are
/// already gone (spoof removal above), so a skipped header is absent upstream, never forged.
fn add_identity(
    host: &impl Host,
    settings: &Settings,
    identity: &Identity<'_>,
) -> Result<(), HostError> {
    let names = &settings.identity_headers;
    let project = identity.project.map(|project| project.id.as_str());
    let headers = [
        (Some(names.key_id.as_str()), Some(identity.key.id.as_str())),
        (names.org.as_deref(), Some(identity.org)),
        (names.environment.as_deref(), Some(identity.environment)),
        (Some(names.project.as_str()), project),
    ];
    for (name, value) in headers {
        if let (Some(name), Some(value)) = (name, value) {
            if !value.is_empty() {
                host.replace_request_header(name, value.as_bytes())?;
            }
        }
    }
    Ok(())
}

fn count_denial(host: &impl Host, state: &FilterState, code: DenyCode) {
    if let Some(id) = state.metrics.denied(code) {
        host.increment_metric(id, 1);
    }
}

fn reply(
    host: &impl Host,
    state: &FilterState,
    denial: &Denial,
    format: ErrorFormat,
    request_id: &str,
    extra_headers: &[(&str, &str)],
) {
    let body = denial.body(format, request_id);
    let mut headers = extra_headers.to_vec();
    headers.extend([
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
        (state.settings.error_header.as_str(), denial.code.as_str()),
    ]);
    if denial.status == 401 {
        headers.push(("www-authenticate", "Bearer realm=\"keyward\""));
    }
    if let Err(error) = host.send_local_reply(denial.status, &headers, body.as_bytes()) {
        // Nothing else can be sent; the request stays paused and never reaches the upstream.
        host.log(
            LogLevel::Error,
            &format!("keyward: local reply failed with status {}", error.status),
        );
    }
}

#[cfg(test)]
#[path = "handler_tests.rs"]
pub(crate) mod tests;
