//! Rows 10 (model from the body), 10c (unpriced models), 11 (spend caps against live counters,
//! with a reservation) and 12 (rate limits) of the decision table: the checks that need the body
//! or the ledger. Whatever admission took from the ledger it gives back when a later step
//! refuses or fails, so a refusal never leaves budget held.

use crate::denial::{Denial, DenyCode};
use crate::ledger::{Ledger, LedgerError};
use crate::metering::{
    estimate, key_counter_entry, project_counter_entry, soft_cap_warning, Admission, Budget,
    Estimate, SpendCounter, UnpricedModel,
};
use crate::pricing::Price;
use crate::rate_limit::{
    format_reset, rate_entry, retry_after_seconds, RateDecision, RateReport, RateState,
};
use crate::request_body::RequestBodyFacts;
use crate::route::Route;
use crate::snapshot::{Key, Policy, Project};
use crate::trace::Trace;

/// What a body-reading route learned from the body; `None` for requests without one.
#[derive(Debug, Clone, Default)]
pub struct BodyRead {
    pub facts: RequestBodyFacts,
    pub bytes: usize,
}

/// A refusal after the header checks, with the headers that go with it (rate limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub denial: Denial,
    pub headers: Vec<(String, String)>,
}

impl Refusal {
    fn new(code: DenyCode, spend_cap_status: u16, detail: Option<&str>) -> Refusal {
        let mut denial = Denial::new(code, spend_cap_status);
        if let Some(detail) = detail {
            denial = denial.with_detail(detail);
        }
        Refusal {
            denial,
            headers: Vec::new(),
        }
    }
}

/// The spend counters a request holds a reservation on (those of budgets with a cap or soft
/// cap), and what it took from its rate buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holds {
    pub key: bool,
    pub project: bool,
    /// Micro-USD held on each held counter.
    pub reservation: u64,
    /// One request (and these tokens) taken from the key's rate buckets.
    pub rate_taken: bool,
    pub tokens_taken: u64,
}

/// The metering of one admitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metering {
    pub price: Option<Price>,
    pub estimate: Estimate,
}

/// An admitted request: what it holds, and what the response gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub holds: Holds,
    pub metering: Option<Metering>,
    /// Headers added to the response (rate-limit state, soft-cap warning).
    pub response_headers: Vec<(String, String)>,
    pub past_soft_cap: bool,
    pub unpriced: bool,
    /// Shadow mode: the refusal enforce mode would have made (nothing was taken for it).
    pub shadow_refusal: Option<Refusal>,
}

/// Who the request acts as, by position in the policy.
#[derive(Debug, Clone, Copy)]
pub struct Parties<'p> {
    pub key: &'p Key,
    pub project: Option<&'p Project>,
}

/// How admission ended.
#[derive(Debug)]
pub enum Admit {
    Admitted(Admitted),
    Refused(Refusal),
    /// A ledger operation failed; everything taken was given back (or, if that failed too,
    /// `leaked` says so).
    Failed {
        error: LedgerError,
        leaked: bool,
    },
}

/// The context admission runs in.
pub struct AdmitContext<'a> {
    pub policy: &'a Policy,
    pub route: &'a Route,
    pub metering: &'a crate::metering::MeteringSettings,
    pub spend_cap_status: u16,
    /// Shadow mode: the first refusal is kept, nothing is taken, and the request is metered.
    pub shadow: bool,
}

/// Runs rows 10 (body model), 10c, 11 and 12 for an authenticated request.
pub fn admit(
    context: &AdmitContext<'_>,
    parties: Parties<'_>,
    body: Option<&BodyRead>,
    ledger: &mut dyn Ledger,
    trace: &mut impl Trace,
) -> Admit {
    let mut holds = Holds::default();
    match admit_steps(context, parties, body, ledger, trace, &mut holds) {
        Ok(Ok(admitted)) => Admit::Admitted(admitted),
        Ok(Err(refusal)) => match give_back(ledger, parties, &holds) {
            Ok(()) => Admit::Refused(refusal),
            Err(error) => Admit::Failed {
                error,
                leaked: true,
            },
        },
        Err(error) => {
            let leaked = give_back(ledger, parties, &holds).is_err();
            Admit::Failed { error, leaked }
        }
    }
}

/// In enforce mode the first refusal ends admission. In shadow mode it is kept (the first one)
/// and admission goes on without taking anything, so the request can be metered.
fn refused(shadow: bool, kept: &mut Option<Refusal>, refusal: Refusal) -> Option<Refusal> {
    if shadow {
        kept.get_or_insert(refusal);
        None
    } else {
        Some(refusal)
    }
}

fn admit_steps(
    context: &AdmitContext<'_>,
    parties: Parties<'_>,
    body: Option<&BodyRead>,
    ledger: &mut dyn Ledger,
    trace: &mut impl Trace,
    holds: &mut Holds,
) -> Result<Result<Admitted, Refusal>, LedgerError> {
    let Parties { key, project } = parties;
    let route = context.route;
    let status = context.spend_cap_status;
    let shadow = context.shadow;
    let mut shadowed = None;
    let body_model = body.and_then(|body| body.facts.model.as_deref());

    // 10. The model named in the body, on routes that read it there.
    if route.model_from_body() {
        if key.models.is_none() {
            trace.skip("10", "model allowed (body)", || {
                "the key has no model allow-list".to_owned()
            });
        } else if body_model.is_some_and(|model| key.allows_model(model)) {
            trace.pass("10", "model allowed (body)", || {
                format!("{} is allowed", body_model.unwrap_or_default())
            });
        } else {
            trace.fail(
                "10",
                "model allowed (body)",
                DenyCode::ModelNotAllowed.as_str(),
                || match body_model {
                    Some(model) => format!("{model} is not on the key's allow-list"),
                    None => "the body names no model, and the key has an allow-list".to_owned(),
                },
            );
            let refusal = Refusal::new(DenyCode::ModelNotAllowed, status, None);
            if let Some(refusal) = refused(shadow, &mut shadowed, refusal) {
                return Ok(Err(refusal));
            }
        }
    }

    // 10c. A metered model needs a price where a cap must be enforced.
    let metering = if route.meter {
        let price = body_model.and_then(|model| context.policy.prices().price_for(model));
        let hard_capped = key.spend_cap_microusd.is_some()
            || project.is_some_and(|p| p.spend_cap_microusd.is_some());
        let facts = body.map(|body| &body.facts);
        let estimate = estimate(
            context.metering,
            price,
            body.map_or(0, |body| body.bytes),
            facts.and_then(|facts| facts.max_output_tokens),
            facts.map_or(1, |facts| facts.choices),
        );
        if price.is_none()
            && hard_capped
            && context.metering.unpriced_model == UnpricedModel::DenyWhenCapped
        {
            trace.fail(
                "10c",
                "metered model has a price",
                DenyCode::ModelNotAllowed.as_str(),
                || "no price is set for this model, and a spend cap applies".to_owned(),
            );
            let refusal = Refusal::new(
                DenyCode::ModelNotAllowed,
                status,
                Some("no price is set for this model, so the spend cap cannot be enforced"),
            );
            if let Some(refusal) = refused(shadow, &mut shadowed, refusal) {
                return Ok(Err(refusal));
            }
        } else {
            trace.pass("10c", "metered model has a price", || match price {
                Some(_) => format!(
                    "reserving {} µUSD ({} input + {} output tokens)",
                    estimate.reservation_microusd, estimate.input_tokens, estimate.output_tokens
                ),
                None => "unpriced, no cap applies: metered at zero".to_owned(),
            });
        }
        Some(Metering { price, estimate })
    } else {
        trace.skip("10c", "metered model has a price", || {
            "the route is not metered".to_owned()
        });
        None
    };
    let metered = metering.is_some();
    let reservation = metering.map_or(0, |m| m.estimate.reservation_microusd);
    // Shadow mode holds nothing: the request is let through whatever the counters say.
    let held = if shadow { 0 } else { reservation };

    // 11. Spend caps with live counters: key first, then project. Only budgets with a cap or
    // soft cap are counted per request; the usage report carries every budget's spend anyway.
    let version = context.policy.version;
    let key_budget = Budget {
        cap_microusd: key.spend_cap_microusd,
        soft_cap_microusd: key.spend_soft_cap_microusd,
        snapshot_spent_microusd: key.spent_microusd,
    };
    let key_entry = key_counter_entry(&key.id);
    let key_admission =
        check_and_reserve(ledger, &key_entry, key_budget, version, reservation, held)?;
    // A metered request charges every counted budget when it ends; it holds the reservation
    // from now on where one was taken.
    holds.key = metered && key_admission.is_some();
    holds.reservation = held;
    if key_admission == Some(Admission::OverCap) {
        trace.fail(
            "11",
            "spend cap (key)",
            DenyCode::SpendCapExceeded.as_str(),
            || cap_detail(key_budget, reservation),
        );
        let refusal = Refusal::new(DenyCode::SpendCapExceeded, status, Some("key cap"));
        if let Some(refusal) = refused(shadow, &mut shadowed, refusal) {
            // Nothing was reserved on an over-cap counter.
            holds.key = false;
            return Ok(Err(refusal));
        }
    } else {
        trace_budget(trace, "spend cap (key)", key_budget, reservation);
    }
    let mut project_admission = None;
    if let Some(project) = project {
        let budget = Budget {
            cap_microusd: project.spend_cap_microusd,
            soft_cap_microusd: project.spend_soft_cap_microusd,
            snapshot_spent_microusd: project.spent_microusd,
        };
        let entry = project_counter_entry(&project.id);
        project_admission = check_and_reserve(ledger, &entry, budget, version, reservation, held)?;
        holds.project = metered && project_admission.is_some();
        if project_admission == Some(Admission::OverCap) {
            trace.fail(
                "11",
                "spend cap (project)",
                DenyCode::SpendCapExceeded.as_str(),
                || cap_detail(budget, reservation),
            );
            let refusal = Refusal::new(DenyCode::SpendCapExceeded, status, Some("project cap"));
            if let Some(refusal) = refused(shadow, &mut shadowed, refusal) {
                holds.project = false;
                return Ok(Err(refusal));
            }
        } else {
            trace_budget(trace, "spend cap (project)", budget, reservation);
        }
    }
    let past = |admission: Option<Admission>| {
        admission
            == Some(Admission::Admit {
                past_soft_cap: true,
            })
    };
    let warning = soft_cap_warning(past(key_admission), past(project_admission));

    // 12. Rate limits. Shadow mode takes from the buckets as enforce mode would, so that what
    // it reports is what enforcement would have done.
    let mut response_headers = Vec::new();
    match key.rate_limits {
        Some(limits) => {
            let now_ms = ledger.now_ms()?;
            let wanted_tokens = metering.map_or(0, |m| m.estimate.tokens());
            let mut decision = None;
            ledger.update_rate(&rate_entry(&key.id), &mut |state: &mut RateState| {
                decision = Some(state.admit(&limits, now_ms, wanted_tokens));
                true
            })?;
            match decision {
                Some(RateDecision::Allowed(report)) => {
                    holds.rate_taken = true;
                    holds.tokens_taken = limits
                        .tokens_per_minute
                        .map_or(0, |limit| wanted_tokens.min(limit));
                    if !shadow {
                        response_headers = rate_headers(&report);
                    }
                    trace.pass("12", "rate limit", || rate_detail(&report));
                }
                Some(RateDecision::Limited {
                    report,
                    retry_after_ms,
                }) => {
                    trace.fail("12", "rate limit", DenyCode::RateLimited.as_str(), || {
                        format!("{}; retry after {retry_after_ms} ms", rate_detail(&report))
                    });
                    let mut refusal = Refusal::new(DenyCode::RateLimited, status, None);
                    refusal.headers = rate_headers(&report);
                    refusal.headers.push((
                        "retry-after".to_owned(),
                        retry_after_seconds(retry_after_ms).to_string(),
                    ));
                    if let Some(refusal) = refused(shadow, &mut shadowed, refusal) {
                        return Ok(Err(refusal));
                    }
                }
                None => return Err(LedgerError::Corrupt),
            }
        }
        None => trace.skip("12", "rate limit", || {
            "the key has no rate limit".to_owned()
        }),
    }
    if let (Some(warning), false) = (warning, shadow) {
        response_headers.push((context.metering.soft_cap_header.clone(), warning.to_owned()));
    }
    Ok(Ok(Admitted {
        holds: *holds,
        metering,
        response_headers,
        past_soft_cap: warning.is_some() && !shadow,
        unpriced: metering.is_some_and(|m| m.price.is_none()),
        shadow_refusal: shadowed,
    }))
}

/// Checks a budget against its live counter and holds `held` on it when admitted (the
/// reservation, or 0 in shadow mode). `None` for a budget without a cap or soft cap: nothing
/// checked, no counter touched.
fn check_and_reserve(
    ledger: &mut dyn Ledger,
    entry: &str,
    budget: Budget,
    policy_version: u64,
    reservation: u64,
    held: u64,
) -> Result<Option<Admission>, LedgerError> {
    if !budget.is_limited() {
        return Ok(None);
    }
    let mut admission = None;
    ledger.update_spend(entry, &mut |counter: &mut SpendCounter| {
        let decided = budget.admit(counter, policy_version, reservation);
        admission = Some(decided);
        let write = held > 0 && matches!(decided, Admission::Admit { .. });
        if write {
            counter.reserve(held);
        }
        write
    })?;
    admission.ok_or(LedgerError::Corrupt).map(Some)
}

/// Gives back everything `holds` took: the reservations and the rate-bucket take.
pub fn give_back(
    ledger: &mut dyn Ledger,
    parties: Parties<'_>,
    holds: &Holds,
) -> Result<(), LedgerError> {
    settle_holds(ledger, parties, holds, 0)?;
    if let (true, Some(limits)) = (holds.rate_taken, parties.key.rate_limits) {
        let tokens = holds.tokens_taken;
        ledger.update_rate(
            &rate_entry(&parties.key.id),
            &mut |state: &mut RateState| {
                state.give_back(&limits, tokens);
                true
            },
        )?;
    }
    Ok(())
}

/// Ends a request on its spend counters: the reservation released, `cost` charged.
pub fn settle_holds(
    ledger: &mut dyn Ledger,
    parties: Parties<'_>,
    holds: &Holds,
    cost: u64,
) -> Result<(), LedgerError> {
    if holds.key {
        settle_spend(
            ledger,
            &key_counter_entry(&parties.key.id),
            holds.reservation,
            cost,
        )?;
    }
    if let (true, Some(project)) = (holds.project, parties.project) {
        settle_spend(
            ledger,
            &project_counter_entry(&project.id),
            holds.reservation,
            cost,
        )?;
    }
    Ok(())
}

fn settle_spend(
    ledger: &mut dyn Ledger,
    entry: &str,
    reservation: u64,
    cost: u64,
) -> Result<(), LedgerError> {
    if reservation == 0 && cost == 0 {
        return Ok(());
    }
    ledger.update_spend(entry, &mut |counter: &mut SpendCounter| {
        counter.settle(reservation, cost);
        true
    })
}

fn trace_budget(trace: &mut impl Trace, check: &'static str, budget: Budget, reservation: u64) {
    if budget.is_limited() {
        trace.pass("11", check, || cap_detail(budget, reservation));
    } else {
        trace.skip("11", check, || "no cap or soft cap".to_owned());
    }
}

/// Micro-USD as dollars with cents (rounded down to the cent, like a statement).
pub fn usd(microusd: u64) -> String {
    format!(
        "{}.{:02}",
        microusd / 1_000_000,
        (microusd % 1_000_000) / 10_000
    )
}

fn cap_detail(budget: Budget, reservation: u64) -> String {
    let cap = budget.cap_microusd.map_or("no cap".to_owned(), usd);
    let soft = budget
        .soft_cap_microusd
        .map(|soft| format!("; soft cap {} USD", usd(soft)))
        .unwrap_or_default();
    format!(
        "spent {} of {cap} USD{soft}; this request reserves {} USD",
        usd(budget.snapshot_spent_microusd),
        usd(reservation)
    )
}

fn rate_detail(report: &RateReport) -> String {
    let part = |kind: &str, status: Option<crate::rate_limit::LimitStatus>| {
        status.map(|s| format!("{kind}: {} of {} left", s.remaining, s.limit))
    };
    [
        part("requests", report.requests),
        part("tokens", report.tokens),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ")
}

/// OpenAI's `x-ratelimit-*` headers for a bucket report.
pub fn rate_headers(report: &RateReport) -> Vec<(String, String)> {
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
