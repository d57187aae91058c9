//! Rows 11 (budgets per day, week and month) and 11b (request and token quotas) of the
//! decision table: one owner's window checked against its live counter, and held on it when
//! admitted. One compare-and-swap per owner and period covers the window's budget and quotas
//! together, and rolls the counter over when the window changed.

use crate::budget::{effective, OwnLimits, PeriodLimits, Plan};
use crate::calendar::{Period, Window};
use crate::ledger::{Ledger, LedgerError};
use crate::metering::{Admission, Budget};
use crate::snapshot::{Key, Policy, Project};
use crate::window_counter::{window_counter_entry, CountedWindows, OwnerKind, WindowCounter};

/// A key or project as admission sees its limits.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'p> {
    pub kind: OwnerKind,
    pub id: &'p str,
    pub own: Option<&'p OwnLimits>,
    /// `spend_cap_microusd` and `spend_soft_cap_microusd`.
    pub own_total: (Option<u64>, Option<u64>),
    pub plan: Option<&'p Plan>,
    pub offset_minutes: i32,
}

impl<'p> Owner<'p> {
    pub fn key(policy: &'p Policy, key: &'p Key) -> Owner<'p> {
        Owner {
            kind: OwnerKind::Key,
            id: &key.id,
            own: key.limits.as_deref(),
            own_total: (key.spend_cap_microusd, key.spend_soft_cap_microusd),
            plan: policy.plan_at(key.plan),
            offset_minutes: key.utc_offset_minutes,
        }
    }

    pub fn project(policy: &'p Policy, project: &'p Project) -> Owner<'p> {
        Owner {
            kind: OwnerKind::Project,
            id: &project.id,
            own: project.limits.as_deref(),
            own_total: (project.spend_cap_microusd, project.spend_soft_cap_microusd),
            plan: policy.plan_at(project.plan),
            offset_minutes: project.utc_offset_minutes,
        }
    }

    /// What is limited in `period` at `now_s`: own over plan, with running increases.
    pub fn limits(&self, period: Period, now_s: u64) -> PeriodLimits {
        effective(self.own, self.own_total, self.plan, period, now_s)
    }

    /// Whether any period has a hard spend cap (an unpriced model could not be held to it).
    pub fn has_cap(&self, now_s: u64) -> bool {
        [Period::Day, Period::Week, Period::Month, Period::Total]
            .into_iter()
            .any(|period| self.limits(period, now_s).cap.is_some())
    }
}

/// What one request asks of each window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask {
    /// Checked against spend caps.
    pub reservation: u64,
    /// Held on the counter (0 in shadow mode).
    pub held: u64,
    /// The token estimate, checked against token quotas.
    pub tokens: u64,
    /// Tokens held on the counter.
    pub held_tokens: u64,
    /// Shadow mode: the request goes upstream whatever the verdict, so it is counted (and
    /// charged at the end) even where enforcement would have refused it.
    pub count_always: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit { past_soft_cap: bool },
    OverCap,
    OverRequests,
    OverTokens,
}

/// One window as admission found it: the figures before this request, and the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCheck {
    pub window: Window,
    pub limits: PeriodLimits,
    /// Spent: the control plane's figure for this window plus this Envoy's not yet in it,
    /// reservations included.
    pub spent: u64,
    pub requests: u64,
    pub tokens: u64,
    pub verdict: Verdict,
    /// Milliseconds until the window ends.
    pub reset_ms: u64,
    pub length_seconds: u64,
}

impl WindowCheck {
    pub fn admitted(&self) -> bool {
        matches!(self.verdict, Verdict::Admit { .. })
    }
}

/// Checks one owner's window of `period` and holds the request on it when admitted: the
/// reservation and token estimate reserved, the request counted. `None` when nothing is
/// limited in that period (no counter touched).
pub fn check_window(
    ledger: &mut dyn Ledger,
    owner: &Owner<'_>,
    period: Period,
    now_ms: u64,
    policy_version: u64,
    ask: Ask,
) -> Result<Option<WindowCheck>, LedgerError> {
    let now_s = now_ms / 1000;
    let limits = owner.limits(period, now_s);
    let Some(window) = Window::containing(period, now_s, owner.offset_minutes) else {
        return Ok(None);
    };
    if limits.is_empty() {
        return Ok(None);
    }
    let known = owner
        .own
        .map(|own| own.usage_in(window))
        .unwrap_or_default();
    let budget = Budget {
        cap_microusd: limits.cap,
        soft_cap_microusd: limits.soft_cap,
        snapshot_spent_microusd: known.microusd,
    };
    let (_, end) = window.bounds(owner.offset_minutes);
    let end_ms = u64::try_from(end).unwrap_or(0).saturating_mul(1000);
    let mut check = None;
    let entry = window_counter_entry(owner.kind, owner.id, window);
    ledger.update_window(&entry, &mut |counter: &mut WindowCounter| {
        counter.roll_to(window.index);
        let requests = known
            .requests
            .saturating_add(counter.requests.committed(policy_version));
        let tokens = known
            .tokens
            .saturating_add(counter.tokens.committed(policy_version));
        let verdict = match budget.admit(&counter.spend, policy_version, ask.reservation) {
            Admission::OverCap => Verdict::OverCap,
            Admission::Admit { past_soft_cap } => {
                // Like a per-minute bucket, one request's estimate counts at most the whole
                // quota, so a large request can still run in a fresh window.
                let wanted = limits.tokens.map_or(0, |limit| ask.tokens.min(limit));
                if limits.requests.is_some_and(|limit| requests >= limit) {
                    Verdict::OverRequests
                } else if limits
                    .tokens
                    .is_some_and(|limit| tokens >= limit || tokens.saturating_add(wanted) > limit)
                {
                    Verdict::OverTokens
                } else {
                    Verdict::Admit { past_soft_cap }
                }
            }
        };
        check = Some(WindowCheck {
            window,
            limits,
            spent: known
                .microusd
                .saturating_add(counter.spend.committed(policy_version)),
            requests,
            tokens,
            verdict,
            reset_ms: end_ms.saturating_sub(now_ms).max(1),
            length_seconds: window.length_seconds(),
        });
        let counted = ask.count_always || matches!(verdict, Verdict::Admit { .. });
        if counted {
            counter.spend.reserve(ask.held);
            counter.tokens.reserve(ask.held_tokens);
            counter.requests.settle(0, 1);
        }
        counted
    })?;
    check.ok_or(LedgerError::Corrupt).map(Some)
}

/// What a request held on its windows, to settle or give back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowHolds {
    pub counted: CountedWindows,
    /// Micro-USD reserved on each counted window.
    pub reservation: u64,
    /// Tokens reserved on each counted window.
    pub tokens: u64,
}

/// How a request ends on its windows: charged `cost` and `used_tokens`, or (`give_back`)
/// as if it had never been admitted.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    Settle { cost: u64, used_tokens: u64 },
    GiveBack,
}

/// Applies an ending to every window the request was counted in. A slot that has moved on to a
/// newer window is left alone: that window never held this request.
pub fn end_windows(
    ledger: &mut dyn Ledger,
    key_id: &str,
    project_id: Option<&str>,
    holds: &WindowHolds,
    ending: Ending,
) -> Result<(), LedgerError> {
    for (owner, window) in holds.counted.each() {
        let id = match (owner, project_id) {
            (OwnerKind::Key, _) => key_id,
            (OwnerKind::Project, Some(project)) => project,
            (OwnerKind::Project, None) => continue,
        };
        let unchanged = matches!(
            ending,
            Ending::Settle {
                cost: 0,
                used_tokens: 0
            }
        ) && holds.reservation == 0
            && holds.tokens == 0;
        if unchanged {
            continue;
        }
        let entry = window_counter_entry(owner, id, window);
        ledger.update_window(&entry, &mut |counter: &mut WindowCounter| {
            if !counter.counts(window.index) {
                return false;
            }
            match ending {
                Ending::Settle { cost, used_tokens } => {
                    counter.spend.settle(holds.reservation, cost);
                    counter.tokens.settle(holds.tokens, used_tokens);
                }
                Ending::GiveBack => {
                    counter.spend.settle(holds.reservation, 0);
                    counter.tokens.settle(holds.tokens, 0);
                    counter.requests.settled = counter.requests.settled.saturating_sub(1);
                }
            }
            true
        })?;
    }
    Ok(())
}

/// The trace's name for a window check.
pub fn check_name(owner: OwnerKind, period: Period, quota: bool) -> &'static str {
    match (owner, period, quota) {
        (OwnerKind::Key, Period::Day, false) => "budget (key, day)",
        (OwnerKind::Key, Period::Week, false) => "budget (key, week)",
        (OwnerKind::Key, Period::Month, false) => "budget (key, month)",
        (OwnerKind::Project, Period::Day, false) => "budget (project, day)",
        (OwnerKind::Project, Period::Week, false) => "budget (project, week)",
        (OwnerKind::Project, Period::Month, false) => "budget (project, month)",
        (OwnerKind::Key, Period::Day, true) => "quota (key, day)",
        (OwnerKind::Key, Period::Week, true) => "quota (key, week)",
        (OwnerKind::Key, Period::Month, true) => "quota (key, month)",
        (OwnerKind::Project, Period::Day, true) => "quota (project, day)",
        (OwnerKind::Project, Period::Week, true) => "quota (project, week)",
        (OwnerKind::Project, Period::Month, true) => "quota (project, month)",
        (_, Period::Total, _) => "budget (total)",
    }
}
