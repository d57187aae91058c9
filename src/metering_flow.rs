//! What happens to an authenticated request after the decision table's policy checks: the
//! body-dependent checks (model from the body), spend caps against this Envoy's live counters
//! with a reservation, local rate limits, and, when the response ends, settlement of the
//! reservation to the cost the provider reported. Host-agnostic, tested with a fake host.

use std::sync::Arc;

use keyward_engine::decision::check_body_model;
use keyward_engine::denial::{Denial, DenyCode};
use keyward_engine::metering::{
    estimate, key_counter_entry, project_counter_entry, soft_cap_warning, Admission, Budget,
    Estimate, MissingUsageCharge, SpendCounter, UnpricedModel,
};
use keyward_engine::pricing::{Price, TokenCounts};
use keyward_engine::rate_limit::{
    format_reset, rate_entry, retry_after_seconds, RateDecision, RateReport, RateState,
};
use keyward_engine::request_body::{read_request_body, with_stream_usage, BodyError};
use keyward_engine::route::Route;
use keyward_engine::snapshot::{Key, Policy, Project};
use keyward_engine::usage::{BodyShape, UsageReader};

use crate::handler::FilterState;
use crate::host::{Host, HostError, LogLevel};
use crate::shared_record::update;
use crate::usage_activity::Usage;

/// An allowed request waiting for its body (or admitted right away when it has none).
#[derive(Debug)]
pub struct Ticket {
    pub policy: Arc<Policy>,
    pub key: usize,
    pub project: Option<usize>,
    pub route: Option<usize>,
    /// OpenAI chat completions: the one API whose streams only report usage when asked to.
    pub chat_completions: bool,
    pub request_id: String,
}

impl Ticket {
    fn key(&self) -> Option<&Key> {
        self.policy.key_at(self.key)
    }

    fn project(&self) -> Option<&Project> {
        self.project
            .and_then(|position| self.policy.project_at(position))
    }
}

/// A refusal after the policy checks, with the headers that go with it (rate limits).
#[derive(Debug)]
pub struct Refusal {
    pub denial: Denial,
    pub headers: Vec<(String, String)>,
}

/// A request on its way upstream, and what must happen when it ends.
#[derive(Debug)]
pub struct Admitted {
    pub ticket: Ticket,
    /// Headers added to the response (rate-limit state, soft-cap warning).
    pub response_headers: Vec<(String, String)>,
    pub meter: Option<Meter>,
    /// Tokens taken from the key's per-minute token bucket at admission.
    pub tokens_taken: u64,
    /// Which spend counters hold this request's reservation.
    holds: Holds,
}

/// The spend counters a metered request reserved on: those of budgets with a cap or soft cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Holds {
    key: bool,
    project: bool,
}

impl Holds {
    /// Releases the reservation without charging anything (a refusal after reserving).
    fn release(
        self,
        host: &impl Host,
        key: &Key,
        project: Option<&Project>,
        reservation: u64,
    ) -> Result<(), HostError> {
        self.settle(
            host,
            &key.id,
            project.map(|project| project.id.as_str()),
            reservation,
            0,
        )
    }

    fn settle(
        self,
        host: &impl Host,
        key_id: &str,
        project_id: Option<&str>,
        reservation: u64,
        cost: u64,
    ) -> Result<(), HostError> {
        if self.key {
            release(host, &key_counter_entry(key_id), reservation, cost)?;
        }
        if let (true, Some(project_id)) = (self.project, project_id) {
            release(host, &project_counter_entry(project_id), reservation, cost)?;
        }
        Ok(())
    }
}

/// The metering of one request.
#[derive(Debug)]
pub struct Meter {
    pub price: Option<Price>,
    pub estimate: Estimate,
    /// Reserved on the key's counter (and the project's, if any).
    pub reservation: u64,
    pub response_status: u16,
    pub reader: Option<UsageReader>,
    pub body_bytes_seen: u64,
    pub response_complete: bool,
    settled: bool,
}

/// What a body-reading route found in the body; `None` for requests without one.
pub struct BodyRead {
    pub model: Option<String>,
    pub max_output_tokens: Option<u64>,
    pub bytes: usize,
    /// A replacement body (stream usage requested), if one is needed.
    pub rewritten: Option<Vec<u8>>,
}

/// Reads a buffered JSON request body.
pub fn read_body(state: &FilterState, ticket: &Ticket, body: &[u8]) -> Result<BodyRead, DenyCode> {
    let settings = &state.settings;
    let route = settings.route_at(ticket.route);
    let facts = match read_request_body(body, settings.metering.max_request_body_bytes) {
        Ok(facts) => facts,
        Err(BodyError::TooLarge) => return Err(DenyCode::RequestTooLarge),
        Err(BodyError::NotJsonObject) => return Err(DenyCode::InvalidRequestBody),
    };
    let rewritten = (route.meter
        && route.add_stream_usage
        && ticket.chat_completions
        && facts.stream
        && !facts.stream_usage_requested)
        .then(|| with_stream_usage(body))
        .flatten();
    Ok(BodyRead {
        model: facts.model,
        max_output_tokens: facts.max_output_tokens,
        bytes: body.len(),
        rewritten,
    })
}

fn refuse(state: &FilterState, code: DenyCode, detail: Option<&str>) -> Refusal {
    let mut denial = Denial::new(code, state.settings.spend_cap_status);
    if let Some(detail) = detail {
        denial = denial.with_detail(detail);
    }
    Refusal {
        denial,
        headers: Vec::new(),
    }
}

/// Steps 10 (model from the body), 11 (spend caps with live counters and a reservation) and 12
/// (rate limits) of the decision table.
pub fn admit(
    host: &impl Host,
    state: &FilterState,
    ticket: Ticket,
    body: Option<&BodyRead>,
) -> Result<Result<Admitted, Refusal>, HostError> {
    let settings = &state.settings;
    let route: &Route = settings.route_at(ticket.route);
    let Some(key) = ticket.key() else {
        return Ok(Err(refuse(state, DenyCode::InternalError, None)));
    };
    let project = ticket.project();
    let policy_version = ticket.policy.version;

    let body_model = body.and_then(|body| body.model.as_deref());
    if route.model_from_body() {
        if let Err(code) = check_body_model(key, body_model) {
            return Ok(Err(refuse(state, code, None)));
        }
    }

    let metering = &settings.metering;
    let meter = if route.meter {
        let price = body_model.and_then(|model| ticket.policy.prices().price_for(model));
        if price.is_none() {
            let hard_capped = key.spend_cap_microusd.is_some()
                || project.is_some_and(|p| p.spend_cap_microusd.is_some());
            if metering.unpriced_model == UnpricedModel::DenyWhenCapped && hard_capped {
                return Ok(Err(refuse(
                    state,
                    DenyCode::ModelNotAllowed,
                    Some("no price is set for this model, so the spend cap cannot be enforced"),
                )));
            }
            host.increment_metric(state.metrics.metering.unpriced, 1);
        }
        let body_bytes = body.map_or(0, |body| body.bytes);
        let max_output = body.and_then(|body| body.max_output_tokens);
        let estimate = estimate(metering, price, body_bytes, max_output);
        Some(Meter {
            price,
            estimate,
            reservation: estimate.reservation_microusd,
            response_status: 0,
            reader: None,
            body_bytes_seen: 0,
            response_complete: false,
            settled: false,
        })
    } else {
        None
    };
    let reservation = meter.as_ref().map_or(0, |meter| meter.reservation);

    // 11. Spend caps: key first, then project. Only budgets with a cap or soft cap are counted
    // here; the usage report carries every budget's spend to the control plane regardless, and
    // a cap added later starts from the snapshot's figure.
    let metered = meter.is_some();
    let key_budget = Budget {
        cap_microusd: key.spend_cap_microusd,
        soft_cap_microusd: key.spend_soft_cap_microusd,
        snapshot_spent_microusd: key.spent_microusd,
    };
    let key_admission = reserve(
        host,
        &key_counter_entry(&key.id),
        key_budget,
        policy_version,
        reservation,
        metered,
    )?;
    if key_admission == Some(Admission::OverCap) {
        return Ok(Err(refuse(
            state,
            DenyCode::SpendCapExceeded,
            Some("key cap"),
        )));
    }
    let mut holds = Holds {
        key: metered && key_admission.is_some(),
        project: false,
    };
    let project_admission = match project {
        Some(project) => {
            let project_budget = Budget {
                cap_microusd: project.spend_cap_microusd,
                soft_cap_microusd: project.spend_soft_cap_microusd,
                snapshot_spent_microusd: project.spent_microusd,
            };
            reserve(
                host,
                &project_counter_entry(&project.id),
                project_budget,
                policy_version,
                reservation,
                metered,
            )?
        }
        None => None,
    };
    if project_admission == Some(Admission::OverCap) {
        holds.release(host, key, None, reservation)?;
        return Ok(Err(refuse(
            state,
            DenyCode::SpendCapExceeded,
            Some("project cap"),
        )));
    }
    holds.project = metered && project_admission.is_some();
    let past_soft_cap = |admission: Option<Admission>| {
        admission
            == Some(Admission::Admit {
                past_soft_cap: true,
            })
    };
    let past_soft_caps = (
        past_soft_cap(key_admission),
        past_soft_cap(project_admission),
    );

    // 12. Rate limits.
    let mut response_headers = Vec::new();
    let mut tokens_taken = 0;
    if let Some(limits) = key.rate_limits {
        let now_ms = host.now_ms()?;
        let wanted_tokens = meter.as_ref().map_or(0, |meter| meter.estimate.tokens());
        let decision = update(host, &rate_entry(&key.id), |state: &mut RateState| {
            let decision = state.admit(&limits, now_ms, wanted_tokens);
            (true, decision)
        })?;
        match decision {
            RateDecision::Allowed(report) => {
                response_headers = rate_headers(&report);
                tokens_taken = limits
                    .tokens_per_minute
                    .map_or(0, |limit| wanted_tokens.min(limit));
            }
            RateDecision::Limited {
                report,
                retry_after_ms,
            } => {
                holds.release(host, key, project, reservation)?;
                let mut headers = rate_headers(&report);
                headers.push((
                    "retry-after".to_owned(),
                    retry_after_seconds(retry_after_ms).to_string(),
                ));
                return Ok(Err(Refusal {
                    denial: Denial::new(DenyCode::RateLimited, settings.spend_cap_status),
                    headers,
                }));
            }
        }
    }

    if let Some(warning) = soft_cap_warning(past_soft_caps.0, past_soft_caps.1) {
        host.increment_metric(state.metrics.metering.soft_cap_warnings, 1);
        response_headers.push((metering.soft_cap_header.clone(), warning.to_owned()));
    }
    if meter.is_some() {
        host.increment_metric(state.metrics.metering.reservations, 1);
    }
    Ok(Ok(Admitted {
        ticket,
        response_headers,
        meter,
        tokens_taken,
        holds,
    }))
}

/// Checks a budget against its live counter and, for metered requests, reserves on it. `None`
/// for a budget without a cap or soft cap: nothing to check, no counter touched.
fn reserve(
    host: &impl Host,
    entry: &str,
    budget: Budget,
    policy_version: u64,
    reservation: u64,
    metered: bool,
) -> Result<Option<Admission>, HostError> {
    if !budget.is_limited() {
        return Ok(None);
    }
    update(host, entry, |counter: &mut SpendCounter| {
        let admission = budget.admit(counter, policy_version, reservation);
        let write = metered && matches!(admission, Admission::Admit { .. });
        if write {
            counter.reserve(reservation);
        }
        (write, Some(admission))
    })
}

fn release(host: &impl Host, entry: &str, reservation: u64, cost: u64) -> Result<(), HostError> {
    update(host, entry, |counter: &mut SpendCounter| {
        counter.settle(reservation, cost);
        (true, ())
    })
}

fn rate_headers(report: &RateReport) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    for (kind, status) in [("requests", report.requests), ("tokens", report.tokens)] {
        if let Some(status) = status {
            headers.push((
                format!("x-ratelimit-limit-{kind}"),
                status.limit.to_string(),
            ));
            headers.push((
                format!("x-ratelimit-remaining-{kind}"),
                status.remaining.to_string(),
            ));
            headers.push((
                format!("x-ratelimit-reset-{kind}"),
                format_reset(status.reset_ms),
            ));
        }
    }
    headers
}

impl Admitted {
    /// Response headers arrived: note the status and how to read usage, add keyward's headers.
    pub fn on_response_headers(&mut self, host: &impl Host) -> Result<(), HostError> {
        for (name, value) in &self.response_headers {
            host.replace_response_header(name, value.as_bytes())?;
        }
        if let Some(meter) = self.meter.as_mut() {
            let headers = host.response_headers()?;
            let header = |wanted: &str| {
                headers
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
                    .map(|(_, value)| value.as_slice())
            };
            meter.response_status = header(":status")
                .and_then(|value| core::str::from_utf8(value).ok())
                .and_then(|value| value.parse().ok())
                .unwrap_or(0);
            meter.reader = header("content-type")
                .and_then(BodyShape::from_content_type)
                .map(UsageReader::new);
        }
        Ok(())
    }

    /// A response body chunk passes through; the usage reader keeps only what it needs.
    pub fn on_response_body(
        &mut self,
        host: &impl Host,
        chunk_size: usize,
        end_of_stream: bool,
    ) -> Result<(), HostError> {
        let Some(meter) = self.meter.as_mut() else {
            return Ok(());
        };
        if chunk_size > 0 {
            meter.body_bytes_seen = meter.body_bytes_seen.saturating_add(chunk_size as u64);
            if let Some(reader) = meter.reader.as_mut() {
                let chunk = host.response_body(chunk_size)?;
                reader.feed(&chunk);
            }
        }
        if end_of_stream {
            meter.response_complete = true;
            if let Some(reader) = meter.reader.as_mut() {
                reader.finish();
            }
        }
        Ok(())
    }

    /// The stream is over (completed, cut off, or abandoned by the client): the reservation is
    /// released and the actual cost charged. Returns what to record for the usage report.
    pub fn settle(&mut self, host: &impl Host, state: &FilterState) -> Result<Usage, HostError> {
        let Some(key) = self.ticket.key() else {
            return Ok(Usage::default());
        };
        let key_id = key.id.clone();
        let project_id = self.ticket.project().map(|project| project.id.clone());
        let limits = key.rate_limits;
        let Some(meter) = self.meter.as_mut() else {
            return Ok(Usage {
                requests: 1,
                ..Usage::default()
            });
        };
        if meter.settled {
            return Ok(Usage::default());
        }
        meter.settled = true;
        let metrics = &state.metrics.metering;
        let usage = meter.reader.as_ref().and_then(UsageReader::usage);
        let tokens = usage.map(|usage| TokenCounts {
            input: usage.input_tokens,
            cached_input: usage.cached_input_tokens,
            cache_write: usage.cache_write_tokens,
            output: usage.output_tokens,
        });
        let upstream_failed = meter.response_status == 0 || meter.response_status >= 400;
        let cost = match (tokens, meter.price) {
            (Some(tokens), Some(price)) => price.cost_microusd(&tokens),
            (Some(_), None) => 0,
            // Providers do not bill errors, and nothing came back.
            (None, _) if upstream_failed || meter.body_bytes_seen == 0 => 0,
            // Content reached the client without usage numbers (none sent, or the stream was
            // cut before them): the budget pays the reservation, so usage cannot be dodged by
            // hanging up before the last chunk.
            (None, _) => {
                host.increment_metric(metrics.usage_missing, 1);
                match state.settings.metering.missing_usage {
                    MissingUsageCharge::Reservation => meter.reservation,
                    MissingUsageCharge::Zero => 0,
                }
            }
        };
        if !meter.response_complete {
            host.increment_metric(metrics.incomplete, 1);
        }
        self.holds.settle(
            host,
            &key_id,
            project_id.as_deref(),
            meter.reservation,
            cost,
        )?;
        host.increment_metric(
            metrics.settled_microusd,
            i64::try_from(cost).unwrap_or(i64::MAX),
        );
        let used_tokens = tokens.map_or(0, |t| t.input + t.cached_input + t.cache_write + t.output);
        if let Some(limits) = limits.filter(|limits| limits.tokens_per_minute.is_some()) {
            let taken = self.tokens_taken;
            update(host, &rate_entry(&key_id), |state: &mut RateState| {
                state.settle_tokens(&limits, taken, used_tokens);
                (true, ())
            })?;
        }
        Ok(Usage {
            cost_microusd: cost,
            requests: 1,
            input_tokens: tokens.map_or(0, |t| t.input + t.cached_input + t.cache_write),
            output_tokens: tokens.map_or(0, |t| t.output),
        })
    }

    pub fn key_and_project(&self) -> Option<(&str, Option<&str>)> {
        let key = self.ticket.key()?;
        Some((
            key.id.as_str(),
            self.ticket.project().map(|p| p.id.as_str()),
        ))
    }
}

/// Logs a failed settlement: the reservation stays held until this Envoy restarts, which errs
/// on the side of refusing, never of overspending.
pub fn log_settle_failure(host: &impl Host, error: HostError) {
    host.log(
        LogLevel::Error,
        &format!(
            "keyward metering: cannot settle a request (host status {}); its reservation stays held",
            error.status
        ),
    );
}

#[cfg(test)]
#[path = "metering_flow_tests.rs"]
mod tests;
