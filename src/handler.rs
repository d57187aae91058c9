//! What the filter does with a request's headers: decide through the engine, then either let
//! the request go upstream with trusted identity, or answer it locally. Host-agnostic.

use std::rc::Rc;

use keyward_engine::config::{Mode, Settings};
use keyward_engine::decision::{decide, Identity, Outcome, Rejection};
use keyward_engine::denial::{Denial, DenyCode};
use keyward_engine::log_line::DecisionLog;
use keyward_engine::request::{path_without_query_parameter, Request};
use keyward_engine::route::{ErrorFormat, Route};
use keyward_engine::snapshot::Policy;

use crate::host::{Host, HostError, LogLevel};
use crate::metrics::Metrics;

/// Header telling the upstream what shadow mode would have refused.
pub const SHADOW_HEADER: &str = "x-keyward-shadow-denied";

/// Immutable state shared by every request context of one root context.
#[derive(Debug)]
pub struct FilterState {
    pub settings: Rc<Settings>,
    pub policy: Option<Rc<Policy>>,
    pub metrics: Rc<Metrics>,
}

/// Whether the request goes on or was answered locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// A local reply was sent (or could not be, and the request must still not go upstream).
    Stop,
}

pub fn on_request_headers(host: &impl Host, state: &FilterState) -> Verdict {
    match handle(host, state) {
        Ok(verdict) => verdict,
        Err(error) => {
            host.log(
                LogLevel::Error,
                &format!(
                    "keyward: host call failed with status {}; refusing the request",
                    error.status
                ),
            );
            let denial = Denial::new(DenyCode::InternalError, state.settings.spend_cap_status);
            count_denial(host, state, DenyCode::InternalError);
            reply(host, state, &denial, ErrorFormat::Openai, "");
            Verdict::Stop
        }
    }
}

fn handle(host: &impl Host, state: &FilterState) -> Result<Verdict, HostError> {
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
    let route = settings.route_for(&request);
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

    // Client-sent copies of keyward's own headers never reach the upstream, whatever the outcome.
    for name in settings
        .identity_headers
        .all()
        .into_iter()
        .chain([SHADOW_HEADER])
    {
        if request.has_header(name) {
            host.remove_request_header(name)?;
        }
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
            host.increment_metric(state.metrics.allowed, 1);
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
            Ok(Verdict::Continue)
        }
        Outcome::Deny(rejection) => {
            let shadow = settings.mode == Mode::Shadow;
            let line = rejection_log(&rejection, shadow, log_base);
            host.log(LogLevel::Warn, &line.to_line());
            if shadow {
                strip_credentials(host, settings, route, &request)?;
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

fn add_identity(
    host: &impl Host,
    settings: &Settings,
    identity: &Identity<'_>,
) -> Result<(), HostError> {
    let names = &settings.identity_headers;
    host.replace_request_header(&names.key_id, identity.key.id.as_bytes())?;
    host.replace_request_header(&names.org, identity.org.as_bytes())?;
    host.replace_request_header(&names.environment, identity.environment.as_bytes())?;
    if let Some(project) = identity.project {
        host.replace_request_header(&names.project, project.id.as_bytes())?;
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
) {
    let body = denial.body(format, request_id);
    let mut headers = vec![
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
        (state.settings.error_header.as_str(), denial.code.as_str()),
    ];
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
mod tests;
