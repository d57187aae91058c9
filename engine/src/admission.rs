//! Rows 10 (model from the body), 10c (unpriced models), 11 and 11b (spend budgets and quotas
//! against live counters, with a reservation; `budget_admission`) and 12 (rate limits) of the
//! decision table: the checks that need the body or the ledger. Whatever admission took from the
//! ledger it gives back when a later step refuses or fails, so a refusal never leaves budget
//! held.

use crate::budget_admission::{admit_budgets, BudgetContext};
use crate::denial::{Denial, DenyCode};
use crate::ledger::{Ledger, LedgerError};
use crate::limit_headers::{render, LimitState, Unit};
use crate::metering::{
    estimate, key_counter_entry, project_counter_entry, soft_cap_warning, Estimate, SpendCounter,
    UnpricedModel,
};
use crate::pricing::Price;
use crate::rate_limit::{rate_entry, retry_after_seconds, RateDecision, RateReport, RateState};
use crate::request_body::RequestBodyFacts;
use crate::route::Route;
use crate::snapshot::{Key, Policy, Project};
use crate::trace::Trace;
use crate::window_admission::{end_windows, Ask, Ending, Owner, WindowHolds};

/// What a body-reading route learned from the body; `None` for requests without one.
#[derive(Debug, Clone, Default)]
pub struct BodyRead {
    pub facts: RequestBodyFacts,
    pub bytes: usize,
}

/// A refusal after the header checks, with the headers that go with it (rate limits, quotas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub denial: Denial,
    pub headers: Vec<(String, String)>,
    /// When the request would fit again (a refilled bucket, a new window): `retry-after`.
    pub retry_after_ms: Option<u64>,
}

impl Refusal {
    pub(crate) fn new(code: DenyCode, spend_cap_status: u16, detail: Option<&str>) -> Refusal {
        let mut denial = Denial::new(code, spend_cap_status);
        if let Some(detail) = detail {
            denial = denial.with_detail(detail);
        }
        Refusal {
            denial,
            headers: Vec::new(),
            retry_after_ms: None,
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
    /// The budget and quota windows the request was counted in.
    pub windows: WindowHolds,
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
    Admitted(Box<Admitted>),
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
        Ok(Ok(admitted)) => Admit::Admitted(Box::new(admitted)),
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
pub(crate) fn refused(
    shadow: bool,
    kept: &mut Option<Refusal>,
    refusal: Refusal,
) -> Option<Refusal> {
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
    let policy = context.policy;
    // One clock read for budget windows, increases and rate limits, only when something is
    // counted at all.
    let now_ms = if key.counted || project.is_some_and(|project| project.counted) {
        ledger.now_ms()?
    } else {
        0
    };

    // 10. The model named in the body, on routes that read it there.
    if route.model_from_body() {
        if !policy.restricts_models(key, project) {
            trace.skip("10", "model allowed (body)", || {
                "the key has no model allow-list".to_owned()
            });
        } else if body_model.is_some_and(|model| policy.allows_model(key, project, model)) {
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
        let now_s = now_ms / 1000;
        let hard_capped = Owner::key(policy, key).has_cap(now_s)
            || project.is_some_and(|p| Owner::project(policy, p).has_cap(now_s));
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
    let estimated_tokens = metering.map_or(0, |m| m.estimate.tokens());
    // Shadow mode holds nothing: the request is let through whatever the counters say.
    let ask = Ask {
        reservation,
        held: if shadow { 0 } else { reservation },
        tokens: estimated_tokens,
        held_tokens: if shadow { 0 } else { estimated_tokens },
        count_always: shadow,
    };

    // 11 and 11b. Spend budgets (lifetime and per window) and quotas with live counters: key
    // first, then project. Only budgets with a cap or soft cap are counted per request; the
    // usage report carries every budget's spend anyway.
    let owners = [
        Some(Owner::key(context.policy, key)),
        project.map(|project| Owner::project(context.policy, project)),
    ];
    let spent_totals = [key.spent_microusd, project.map_or(0, |p| p.spent_microusd)];
    let budgets = BudgetContext {
        policy_version: context.policy.version,
        now_ms,
        ask,
        metered,
        shadow,
        spend_cap_status: status,
        limit_headers: route.limit_headers,
    };
    let found = admit_budgets(
        &budgets,
        owners,
        spent_totals,
        ledger,
        trace,
        holds,
        &mut shadowed,
    )?;
    let mut found = match found {
        Ok(found) => found,
        Err(refusal) => return Ok(Err(with_retry_after(refusal))),
    };
    let warning = soft_cap_warning(found.key_past_soft_cap, found.project_past_soft_cap);

    // 12. Rate limits. Shadow mode takes from the buckets as enforce mode would, so that what
    // it reports is what enforcement would have done.
    match key.rate_limits {
        Some(limits) => {
            let mut decision = None;
            ledger.update_rate(&rate_entry(&key.id), &mut |state: &mut RateState| {
                decision = Some(state.admit(&limits, now_ms, estimated_tokens));
                true
            })?;
            match decision {
                Some(RateDecision::Allowed(report)) => {
                    holds.rate_taken = true;
                    holds.tokens_taken = limits
                        .tokens_per_minute
                        .map_or(0, |limit| estimated_tokens.min(limit));
                    found.limits.splice(0..0, minute_states(&report));
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
                    found.limits.splice(0..0, minute_states(&report));
                    refusal.headers =
                        render(route.limit_headers, &found.limits, None, false, now_ms);
                    refusal.retry_after_ms = Some(retry_after_ms);
                    if let Some(refusal) = refused(shadow, &mut shadowed, refusal) {
                        return Ok(Err(with_retry_after(refusal)));
                    }
                }
                None => return Err(LedgerError::Corrupt),
            }
        }
        None => trace.skip("12", "rate limit", || {
            "the key has no rate limit".to_owned()
        }),
    }
    let mut response_headers = if shadow {
        Vec::new()
    } else {
        render(
            route.limit_headers,
            &found.limits,
            found.budget,
            route.budget_headers,
            now_ms,
        )
    };
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

/// A refusal's `retry-after` (whole seconds), after its other headers.
fn with_retry_after(mut refusal: Refusal) -> Refusal {
    if let Some(ms) = refusal.retry_after_ms {
        refusal.headers.push((
            "retry-after".to_owned(),
            retry_after_seconds(ms).to_string(),
        ));
    }
    refusal
}

/// The per-minute buckets as header states.
fn minute_states(report: &RateReport) -> Vec<LimitState> {
    [
        ("requests-minute", Unit::Requests, report.requests),
        ("tokens-minute", Unit::Tokens, report.tokens),
    ]
    .into_iter()
    .filter_map(|(policy, unit, status)| {
        status.map(|status| LimitState {
            policy,
            unit,
            limit: status.limit,
            remaining: status.remaining,
            reset_ms: status.reset_ms,
            window_seconds: 60,
        })
    })
    .collect()
}

/// Gives back everything `holds` took: the reservations, the windows' counts and the
/// rate-bucket take.
pub fn give_back(
    ledger: &mut dyn Ledger,
    parties: Parties<'_>,
    holds: &Holds,
) -> Result<(), LedgerError> {
    settle_lifetime(ledger, parties, holds, 0)?;
    end_windows(
        ledger,
        &parties.key.id,
        parties.project.map(|project| project.id.as_str()),
        &holds.windows,
        Ending::GiveBack,
    )?;
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

/// Ends a request on its spend counters and windows: the reservations released, `cost` and
/// `used_tokens` charged.
pub fn settle_holds(
    ledger: &mut dyn Ledger,
    parties: Parties<'_>,
    holds: &Holds,
    cost: u64,
    used_tokens: u64,
) -> Result<(), LedgerError> {
    settle_lifetime(ledger, parties, holds, cost)?;
    end_windows(
        ledger,
        &parties.key.id,
        parties.project.map(|project| project.id.as_str()),
        &holds.windows,
        Ending::Settle { cost, used_tokens },
    )
}

fn settle_lifetime(
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

/// Micro-USD as dollars with cents (rounded down to the cent, like a statement).
pub fn usd(microusd: u64) -> String {
    format!(
        "{}.{:02}",
        microusd / 1_000_000,
        (microusd % 1_000_000) / 10_000
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
