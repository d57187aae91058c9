//! Row 11 (spend budgets: lifetime, day, week, month) and row 11b (request and token quotas)
//! for the key, then for the project it acts on. Every budget and quota that applies is
//! checked against its live counter; what is admitted is held (reservation, token estimate,
//! the request counted) until the request ends.

use crate::admission::{refused, usd, Holds, Refusal};
use crate::calendar::Period;
use crate::denial::DenyCode;
use crate::ledger::{Ledger, LedgerError};
use crate::limit_headers::{render, BudgetState, LimitHeaders, LimitState, Unit};
use crate::metering::{key_counter_entry, project_counter_entry, Admission, Budget, SpendCounter};
use crate::trace::Trace;
use crate::window_admission::{check_name, check_window, Ask, Owner, Verdict, WindowCheck};
use crate::window_counter::OwnerKind;

/// What row 11 works with.
pub struct BudgetContext {
    pub policy_version: u64,
    pub now_ms: u64,
    pub ask: Ask,
    /// The route is metered: lifetime budgets hold the reservation and are charged at the end.
    pub metered: bool,
    pub shadow: bool,
    pub spend_cap_status: u16,
    /// The route's header style, for the headers of a quota refusal.
    pub limit_headers: LimitHeaders,
}

/// What row 11 found: soft caps passed, and the states the response headers show.
#[derive(Debug, Default)]
pub struct BudgetOutcome {
    pub key_past_soft_cap: bool,
    pub project_past_soft_cap: bool,
    pub limits: Vec<LimitState>,
    /// The tightest spend budget left (after this request's reservation).
    pub budget: Option<BudgetState>,
}

impl BudgetOutcome {
    fn note_budget(
        &mut self,
        cap: Option<u64>,
        spent: u64,
        reservation: u64,
        reset_ms: Option<u64>,
    ) {
        let Some(cap) = cap else { return };
        let remaining = cap.saturating_sub(spent.saturating_add(reservation));
        if self
            .budget
            .is_none_or(|tightest| remaining < tightest.remaining_microusd)
        {
            self.budget = Some(BudgetState {
                remaining_microusd: remaining,
                reset_ms,
            });
        }
    }
}

/// Rows 11 and 11b for each owner in turn. A refusal (in enforce mode) ends it; what was held
/// so far is in `holds`, for the caller to give back.
pub fn admit_budgets(
    context: &BudgetContext,
    owners: [Option<Owner<'_>>; 2],
    spent_totals: [u64; 2],
    ledger: &mut dyn Ledger,
    trace: &mut impl Trace,
    holds: &mut Holds,
    shadowed: &mut Option<Refusal>,
) -> Result<Result<BudgetOutcome, Refusal>, LedgerError> {
    let mut outcome = BudgetOutcome::default();
    let now_s = context.now_ms / 1000;
    holds.reservation = context.ask.held;
    holds.windows.reservation = context.ask.held;
    holds.windows.tokens = context.ask.held_tokens;
    for (owner, spent_total) in owners.into_iter().zip(spent_totals) {
        let Some(owner) = owner else { continue };
        // The lifetime budget, on the counter it has always had.
        let total = owner.limits(Period::Total, now_s);
        let budget = Budget {
            cap_microusd: total.cap,
            soft_cap_microusd: total.soft_cap,
            snapshot_spent_microusd: spent_total,
        };
        let checked = check_and_reserve(
            ledger,
            &owner,
            budget,
            context.policy_version,
            context.ask.reservation,
            context.ask.held,
        )?;
        let check = match owner.kind {
            OwnerKind::Key => "spend cap (key)",
            OwnerKind::Project => "spend cap (project)",
        };
        let held = context.metered && checked.is_some();
        match owner.kind {
            OwnerKind::Key => holds.key = held,
            OwnerKind::Project => holds.project = held,
        }
        match checked {
            Some((Admission::OverCap, committed)) => {
                trace.fail("11", check, DenyCode::SpendCapExceeded.as_str(), || {
                    cap_detail(budget, committed, context.ask.reservation)
                });
                let detail = match owner.kind {
                    OwnerKind::Key => "key cap",
                    OwnerKind::Project => "project cap",
                };
                let refusal = Refusal::new(
                    DenyCode::SpendCapExceeded,
                    context.spend_cap_status,
                    Some(detail),
                );
                if let Some(refusal) = refused(context.shadow, shadowed, refusal) {
                    // Nothing was reserved on an over-cap counter. (Shadow mode goes on, and
                    // the request's cost is still charged to it at the end.)
                    match owner.kind {
                        OwnerKind::Key => holds.key = false,
                        OwnerKind::Project => holds.project = false,
                    }
                    return Ok(Err(refusal));
                }
            }
            Some((Admission::Admit { past_soft_cap }, committed)) => {
                trace.pass("11", check, || {
                    cap_detail(budget, committed, context.ask.reservation)
                });
                note_soft_cap(&mut outcome, owner.kind, past_soft_cap);
                outcome.note_budget(total.cap, committed, context.ask.reservation, None);
            }
            None => trace.skip("11", check, || "no cap or soft cap".to_owned()),
        }
        // The windows: one counter per period, holding its budget and its quotas.
        for period in Period::WINDOWED {
            let Some(found) = check_window(
                ledger,
                &owner,
                period,
                context.now_ms,
                context.policy_version,
                context.ask,
            )?
            else {
                continue;
            };
            trace_window(trace, owner.kind, &found, context.ask);
            note_limits(&mut outcome, owner.kind, &found, context.ask);
            if found.admitted() || context.ask.count_always {
                let slots = match owner.kind {
                    OwnerKind::Key => &mut holds.windows.counted.key,
                    OwnerKind::Project => &mut holds.windows.counted.project,
                };
                if let Some(slot) = period.slot().and_then(|slot| slots.get_mut(slot)) {
                    *slot = Some(found.window.index);
                }
            }
            match found.verdict {
                Verdict::Admit { past_soft_cap } => {
                    note_soft_cap(&mut outcome, owner.kind, past_soft_cap);
                    outcome.note_budget(
                        found.limits.cap,
                        found.spent,
                        context.ask.reservation,
                        Some(found.reset_ms),
                    );
                }
                verdict => {
                    let mut refusal = window_refusal(context, owner.kind, &found, verdict);
                    if refusal.denial.code == DenyCode::QuotaExceeded {
                        refusal.headers = render(
                            context.limit_headers,
                            &outcome.limits,
                            None,
                            false,
                            context.now_ms,
                        );
                    }
                    if let Some(refusal) = refused(context.shadow, shadowed, refusal) {
                        return Ok(Err(refusal));
                    }
                }
            }
        }
    }
    Ok(Ok(outcome))
}

fn note_soft_cap(outcome: &mut BudgetOutcome, owner: OwnerKind, past: bool) {
    match owner {
        OwnerKind::Key => outcome.key_past_soft_cap |= past,
        OwnerKind::Project => outcome.project_past_soft_cap |= past,
    }
}

/// The refusal of a window: a spend cap (`spend_cap_status`), or a used-up quota (429 with
/// `retry-after` until the window ends; the limit headers are added by the caller).
fn window_refusal(
    context: &BudgetContext,
    owner: OwnerKind,
    found: &WindowCheck,
    verdict: Verdict,
) -> Refusal {
    let period = found.window.period.as_str();
    if verdict == Verdict::OverCap {
        let detail = match owner {
            OwnerKind::Key => format!("key {period} cap"),
            OwnerKind::Project => format!("project {period} cap"),
        };
        let mut refusal = Refusal::new(
            DenyCode::SpendCapExceeded,
            context.spend_cap_status,
            Some(&detail),
        );
        refusal.retry_after_ms = Some(found.reset_ms);
        return refusal;
    }
    let what = if verdict == Verdict::OverRequests {
        "requests"
    } else {
        "tokens"
    };
    let detail = format!("{} {what} per {period}", owner.as_str());
    let mut refusal = Refusal::new(
        DenyCode::QuotaExceeded,
        context.spend_cap_status,
        Some(&detail),
    );
    refusal.retry_after_ms = Some(found.reset_ms);
    refusal
}

/// The header states of a window's quotas, after this request when admitted.
fn note_limits(outcome: &mut BudgetOutcome, owner: OwnerKind, found: &WindowCheck, ask: Ask) {
    let admitted = found.admitted();
    let policy = |unit: Unit| policy_name(owner, found.window.period, unit);
    if let Some(limit) = found.limits.requests {
        let used = found.requests.saturating_add(u64::from(admitted));
        outcome.limits.push(LimitState {
            policy: policy(Unit::Requests),
            unit: Unit::Requests,
            limit,
            remaining: limit.saturating_sub(used),
            reset_ms: found.reset_ms,
            window_seconds: found.length_seconds,
        });
    }
    if let Some(limit) = found.limits.tokens {
        let taken = if admitted { ask.tokens.min(limit) } else { 0 };
        outcome.limits.push(LimitState {
            policy: policy(Unit::Tokens),
            unit: Unit::Tokens,
            limit,
            remaining: limit.saturating_sub(found.tokens.saturating_add(taken)),
            reset_ms: found.reset_ms,
            window_seconds: found.length_seconds,
        });
    }
}

fn policy_name(owner: OwnerKind, period: Period, unit: Unit) -> &'static str {
    match (owner, unit, period) {
        (OwnerKind::Key, Unit::Requests, Period::Day) => "requests-day",
        (OwnerKind::Key, Unit::Requests, Period::Week) => "requests-week",
        (OwnerKind::Key, Unit::Requests, _) => "requests-month",
        (OwnerKind::Key, Unit::Tokens, Period::Day) => "tokens-day",
        (OwnerKind::Key, Unit::Tokens, Period::Week) => "tokens-week",
        (OwnerKind::Key, Unit::Tokens, _) => "tokens-month",
        (OwnerKind::Project, Unit::Requests, Period::Day) => "project-requests-day",
        (OwnerKind::Project, Unit::Requests, Period::Week) => "project-requests-week",
        (OwnerKind::Project, Unit::Requests, _) => "project-requests-month",
        (OwnerKind::Project, Unit::Tokens, Period::Day) => "project-tokens-day",
        (OwnerKind::Project, Unit::Tokens, Period::Week) => "project-tokens-week",
        (OwnerKind::Project, Unit::Tokens, _) => "project-tokens-month",
    }
}

/// The trace of one window: its budget (row 11) and its quotas (row 11b), each when set.
fn trace_window(trace: &mut impl Trace, owner: OwnerKind, found: &WindowCheck, ask: Ask) {
    let period = found.window.period;
    let id = found.window.id();
    if found.limits.cap.is_some() || found.limits.soft_cap.is_some() {
        let check = check_name(owner, period, false);
        let detail = || {
            let cap = found.limits.cap.map_or("no cap".to_owned(), usd);
            let soft = found
                .limits
                .soft_cap
                .map(|soft| format!("; soft cap {} USD", usd(soft)))
                .unwrap_or_default();
            format!(
                "spent {} of {cap} USD in {id}{soft}; this request reserves {} USD",
                usd(found.spent),
                usd(ask.reservation)
            )
        };
        if found.verdict == Verdict::OverCap {
            trace.fail("11", check, DenyCode::SpendCapExceeded.as_str(), detail);
        } else {
            trace.pass("11", check, detail);
        }
    }
    if found.limits.requests.is_some() || found.limits.tokens.is_some() {
        let check = check_name(owner, period, true);
        let detail = || {
            let part = |kind: &str, used: u64, limit: Option<u64>| {
                limit.map(|limit| format!("{kind}: {used} of {limit} used"))
            };
            let parts: Vec<String> = [
                part("requests", found.requests, found.limits.requests),
                part("tokens", found.tokens, found.limits.tokens),
            ]
            .into_iter()
            .flatten()
            .collect();
            format!("{} in {id}", parts.join(", "))
        };
        match found.verdict {
            Verdict::OverRequests | Verdict::OverTokens => {
                trace.fail("11b", check, DenyCode::QuotaExceeded.as_str(), detail)
            }
            Verdict::OverCap => trace.skip("11b", check, || "refused by its budget".to_owned()),
            Verdict::Admit { .. } => trace.pass("11b", check, detail),
        }
    }
}

/// Checks a lifetime budget against its live counter and holds `held` on it when admitted.
/// `None` for a budget without a cap or soft cap: nothing checked, no counter touched.
/// Also returns the committed spend (snapshot plus this Envoy's) before this request.
fn check_and_reserve(
    ledger: &mut dyn Ledger,
    owner: &Owner<'_>,
    budget: Budget,
    policy_version: u64,
    reservation: u64,
    held: u64,
) -> Result<Option<(Admission, u64)>, LedgerError> {
    if !budget.is_limited() {
        return Ok(None);
    }
    // Named only here: an owner without a cap costs no allocation on the request path.
    let entry = match owner.kind {
        OwnerKind::Key => key_counter_entry(owner.id),
        OwnerKind::Project => project_counter_entry(owner.id),
    };
    let mut admission = None;
    ledger.update_spend(&entry, &mut |counter: &mut SpendCounter| {
        let decided = budget.admit(counter, policy_version, reservation);
        let committed = budget
            .snapshot_spent_microusd
            .saturating_add(counter.committed(policy_version));
        admission = Some((decided, committed));
        let write = held > 0 && matches!(decided, Admission::Admit { .. });
        if write {
            counter.reserve(held);
        }
        write
    })?;
    admission.ok_or(LedgerError::Corrupt).map(Some)
}

fn cap_detail(budget: Budget, committed: u64, reservation: u64) -> String {
    let cap = budget.cap_microusd.map_or("no cap".to_owned(), usd);
    let soft = budget
        .soft_cap_microusd
        .map(|soft| format!("; soft cap {} USD", usd(soft)))
        .unwrap_or_default();
    format!(
        "spent {} of {cap} USD{soft}; this request reserves {} USD",
        usd(committed),
        usd(reservation)
    )
}
