//! Budgets that reset, quotas and plans, as the snapshot carries them and as admission reads
//! them. A key or project has its own `limits` (budgets per period, request and token quotas per
//! window, temporary increases, its UTC offset, and the figures the control plane knows for its
//! current windows) and may name a plan: a bundle of budgets, quotas, a model allow-list and
//! rate limits shared by every key or project on it. The owner's own setting for a period wins
//! over its plan's; every period that has a limit is checked on every request.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::calendar::{Period, Window, MAX_OFFSET_MINUTES};
use crate::field_error::FieldError;
use crate::snapshot::{ModelPattern, RateLimits};

/// A spend budget for one period: refused at `cap_microusd`, warned past `soft_cap_microusd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetRecord {
    pub period: Period,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap_microusd: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_cap_microusd: Option<u64>,
}

/// Requests and tokens allowed per window (`day`, `week` or `month`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRecord {
    pub period: Period,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
}

/// A temporary increase of a period's cap or quotas: counted until `until` (Unix seconds),
/// then gone by itself, in every Envoy, without a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncreaseRecord {
    pub period: Period,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub microusd: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requests: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens: u64,
    pub until: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// What the control plane knows was used in one window (from acknowledged usage reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowUsage {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub microusd: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requests: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens: u64,
}

/// A key's or project's `limits` in the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRecord {
    /// The plan's id: its budgets, quotas, models and rate limits apply where the owner sets
    /// none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Minutes east of UTC that windows follow (a key without one follows its project's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset_minutes: Option<i32>,
    /// Budgets per `day`, `week` or `month` (the lifetime budget is `spend_cap_microusd`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub increases: Vec<IncreaseRecord>,
    /// Per window id (`2026-11-30`, `2026-W48`, `2026-11`): what the control plane counted.
    /// A figure applies only to the window it names; a window absent here starts from zero.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usage: BTreeMap<String, WindowUsage>,
}

/// A named bundle of limits that keys and projects refer to by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// May include `total` (a lifetime budget per key or project on the plan).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,
}

/// Everything limited in one period, after merging an owner's own limits over its plan's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeriodLimits {
    pub cap: Option<u64>,
    pub soft_cap: Option<u64>,
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
}

impl PeriodLimits {
    pub fn is_empty(&self) -> bool {
        self.cap.is_none()
            && self.soft_cap.is_none()
            && self.requests.is_none()
            && self.tokens.is_none()
    }

    fn has_budget(&self) -> bool {
        self.cap.is_some() || self.soft_cap.is_some()
    }

    /// The owner's own budget (cap and soft cap together) replaces the plan's; each own quota
    /// replaces the plan's quota of the same kind.
    pub fn over(self, plan: PeriodLimits) -> PeriodLimits {
        let (cap, soft_cap) = if self.has_budget() {
            (self.cap, self.soft_cap)
        } else {
            (plan.cap, plan.soft_cap)
        };
        PeriodLimits {
            cap,
            soft_cap,
            requests: self.requests.or(plan.requests),
            tokens: self.tokens.or(plan.tokens),
        }
    }

    /// Adds the increases of this period still running at `now_s`, to limits that exist.
    pub fn with_increases(
        mut self,
        period: Period,
        increases: &[IncreaseRecord],
        now_s: u64,
    ) -> Self {
        for increase in increases
            .iter()
            .filter(|increase| increase.period == period && now_s < increase.until)
        {
            let add = |limit: &mut Option<u64>, amount: u64| {
                if let Some(limit) = limit.as_mut() {
                    *limit = limit.saturating_add(amount);
                }
            };
            add(&mut self.cap, increase.microusd);
            add(&mut self.requests, increase.requests);
            add(&mut self.tokens, increase.tokens);
        }
        self
    }
}

const PERIODS: [Period; 4] = [Period::Day, Period::Week, Period::Month, Period::Total];

fn period_position(period: Period) -> usize {
    period.slot().unwrap_or(3)
}

/// Budgets and quotas indexed by period (`day`, `week`, `month`, `total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitTable([PeriodLimits; 4]);

impl LimitTable {
    pub fn get(&self, period: Period) -> PeriodLimits {
        self.0
            .get(period_position(period))
            .copied()
            .unwrap_or_default()
    }

    fn get_mut(&mut self, period: Period) -> Option<&mut PeriodLimits> {
        self.0.get_mut(period_position(period))
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(PeriodLimits::is_empty)
    }

    /// Validates and indexes budgets and quotas; `allow_total` for plans (an owner's own
    /// lifetime budget is `spend_cap_microusd`).
    fn compile(
        budgets: &[BudgetRecord],
        quotas: &[QuotaRecord],
        allow_total: bool,
    ) -> Result<LimitTable, FieldError> {
        let mut table = LimitTable::default();
        for (position, budget) in budgets.iter().enumerate() {
            let path = format!("budgets[{position}]");
            if budget.period == Period::Total && !allow_total {
                return Err(FieldError::new(
                    format!("{path}.period"),
                    "use spend_cap_microusd for the lifetime budget",
                ));
            }
            match (budget.cap_microusd, budget.soft_cap_microusd) {
                (None, None) => {
                    return Err(FieldError::new(
                        path,
                        "needs cap_microusd, soft_cap_microusd or both",
                    ))
                }
                (Some(cap), Some(soft)) if soft >= cap => {
                    return Err(FieldError::new(
                        format!("{path}.soft_cap_microusd"),
                        "must be below cap_microusd",
                    ))
                }
                _ => {}
            }
            let slot = table
                .get_mut(budget.period)
                .ok_or_else(|| FieldError::new(&path, "period"))?;
            if slot.has_budget() {
                return Err(FieldError::new(
                    format!("{path}.period"),
                    "one budget per period",
                ));
            }
            slot.cap = budget.cap_microusd;
            slot.soft_cap = budget.soft_cap_microusd;
        }
        for (position, quota) in quotas.iter().enumerate() {
            let path = format!("quotas[{position}]");
            if quota.period == Period::Total {
                return Err(FieldError::new(
                    format!("{path}.period"),
                    "quotas are per day, week or month",
                ));
            }
            if quota.requests.is_none() && quota.tokens.is_none()
                || quota.requests == Some(0)
                || quota.tokens == Some(0)
            {
                return Err(FieldError::new(
                    path,
                    "needs requests, tokens or both, each at least 1 (pause the key to stop it)",
                ));
            }
            let slot = table
                .get_mut(quota.period)
                .ok_or_else(|| FieldError::new(&path, "period"))?;
            if slot.requests.is_some() || slot.tokens.is_some() {
                return Err(FieldError::new(
                    format!("{path}.period"),
                    "one quota per period",
                ));
            }
            slot.requests = quota.requests;
            slot.tokens = quota.tokens;
        }
        Ok(table)
    }

    /// This table over `plan`, period by period.
    pub fn over(&self, plan: Option<&LimitTable>) -> LimitTable {
        let mut merged = *self;
        if let Some(plan) = plan {
            for period in PERIODS {
                if let Some(slot) = merged.get_mut(period) {
                    *slot = slot.over(plan.get(period));
                }
            }
        }
        merged
    }
}

/// A plan, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: String,
    pub label: Option<String>,
    pub limits: LimitTable,
    pub models: Option<Vec<ModelPattern>>,
    pub rate_limits: Option<RateLimits>,
}

impl Plan {
    pub fn compile(record: PlanRecord) -> Result<Plan, FieldError> {
        let limits = LimitTable::compile(&record.budgets, &record.quotas, true)?;
        if record
            .rate_limits
            .is_some_and(|l| l.requests_per_minute == Some(0) || l.tokens_per_minute == Some(0))
        {
            return Err(FieldError::new(
                "rate_limits",
                "limits must be at least 1 (pause the key to stop it)",
            ));
        }
        Ok(Plan {
            id: record.id,
            label: record.label,
            limits,
            models: record
                .models
                .map(|models| models.iter().map(|m| ModelPattern::parse(m)).collect()),
            rate_limits: record.rate_limits.filter(|limits| {
                limits.requests_per_minute.is_some() || limits.tokens_per_minute.is_some()
            }),
        })
    }
}

/// An owner's own limits, compiled (boxed in keys and projects: most have none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnLimits {
    pub utc_offset_minutes: Option<i32>,
    pub limits: LimitTable,
    pub increases: Vec<IncreaseRecord>,
    /// The control plane's figures, by window.
    pub usage: Vec<(Window, WindowUsage)>,
}

/// At most this many increases and usage windows per owner: a snapshot stays small.
const MAX_INCREASES: usize = 32;
const MAX_USAGE_WINDOWS: usize = 32;

impl OwnLimits {
    /// Validates an owner's `limits` (the plan reference is resolved by the caller).
    pub fn compile(record: &LimitsRecord) -> Result<OwnLimits, FieldError> {
        if let Some(offset) = record.utc_offset_minutes {
            if offset.abs() > MAX_OFFSET_MINUTES {
                return Err(FieldError::new(
                    "utc_offset_minutes",
                    "must be from -840 to 840",
                ));
            }
        }
        let limits = LimitTable::compile(&record.budgets, &record.quotas, false)?;
        if record.increases.len() > MAX_INCREASES {
            return Err(FieldError::new(
                "increases",
                format!("at most {MAX_INCREASES}"),
            ));
        }
        for (position, increase) in record.increases.iter().enumerate() {
            if increase.microusd == 0 && increase.requests == 0 && increase.tokens == 0 {
                return Err(FieldError::new(
                    format!("increases[{position}]"),
                    "needs microusd, requests or tokens",
                ));
            }
        }
        if record.usage.len() > MAX_USAGE_WINDOWS {
            return Err(FieldError::new(
                "usage",
                format!("at most {MAX_USAGE_WINDOWS} windows"),
            ));
        }
        let mut usage = Vec::with_capacity(record.usage.len());
        for (id, figures) in &record.usage {
            let window = Window::parse(id).ok_or_else(|| {
                FieldError::new(
                    format!("usage.{id}"),
                    "must be a window id: 2026-11-30, 2026-W48 or 2026-11",
                )
            })?;
            usage.push((window, *figures));
        }
        Ok(OwnLimits {
            utc_offset_minutes: record.utc_offset_minutes,
            limits,
            increases: record.increases.clone(),
            usage,
        })
    }

    /// The control plane's figures for `window` (zero for a window it has not counted yet).
    pub fn usage_in(&self, window: Window) -> WindowUsage {
        self.usage
            .iter()
            .find(|(counted, _)| *counted == window)
            .map(|(_, figures)| *figures)
            .unwrap_or_default()
    }
}

/// The limits admission checks for one owner: its own over its plan's, with the increases
/// running now. `own_total` is the owner's `spend_cap_microusd` / `spend_soft_cap_microusd`.
pub fn effective(
    own: Option<&OwnLimits>,
    own_total: (Option<u64>, Option<u64>),
    plan: Option<&Plan>,
    period: Period,
    now_s: u64,
) -> PeriodLimits {
    let mut mine = own.map(|own| own.limits.get(period)).unwrap_or_default();
    if period == Period::Total {
        mine.cap = own_total.0;
        mine.soft_cap = own_total.1;
    }
    let merged = mine.over(plan.map(|plan| plan.limits.get(period)).unwrap_or_default());
    match own {
        Some(own) => merged.with_increases(period, &own.increases, now_s),
        None => merged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn limits(json: &str) -> Result<OwnLimits, FieldError> {
        OwnLimits::compile(&serde_json::from_str(json).expect("json"))
    }

    #[test]
    fn own_limits_are_validated_with_field_paths() {
        for (json, path) in [
            (
                r#"{"budgets": [{"period": "total", "cap_microusd": 5}]}"#,
                "budgets[0].period",
            ),
            (r#"{"budgets": [{"period": "day"}]}"#, "budgets[0]"),
            (
                r#"{"budgets": [{"period": "day", "cap_microusd": 5, "soft_cap_microusd": 5}]}"#,
                "budgets[0].soft_cap_microusd",
            ),
            (
                r#"{"budgets": [{"period": "day", "cap_microusd": 5}, {"period": "day", "cap_microusd": 6}]}"#,
                "budgets[1].period",
            ),
            (r#"{"quotas": [{"period": "month"}]}"#, "quotas[0]"),
            (
                r#"{"quotas": [{"period": "day", "requests": 0}]}"#,
                "quotas[0]",
            ),
            (
                r#"{"quotas": [{"period": "total", "requests": 3}]}"#,
                "quotas[0].period",
            ),
            (r#"{"utc_offset_minutes": 900}"#, "utc_offset_minutes"),
            (
                r#"{"increases": [{"period": "day", "until": 9}]}"#,
                "increases[0]",
            ),
            (
                r#"{"usage": {"2026-02-30": {"requests": 1}}}"#,
                "usage.2026-02-30",
            ),
        ] {
            let error = limits(json).expect_err(json);
            assert_eq!(error.path, path, "{json}: {error}");
        }
    }

    #[test]
    fn own_settings_win_over_the_plan_period_by_period() {
        let plan = Plan::compile(
            serde_json::from_str(
                r#"{"id": "free", "budgets": [{"period": "day", "cap_microusd": 100, "soft_cap_microusd": 80},
                                               {"period": "total", "cap_microusd": 1000}],
                    "quotas": [{"period": "day", "requests": 50, "tokens": 9000}]}"#,
            )
            .expect("json"),
        )
        .expect("valid");
        let own = limits(
            r#"{"budgets": [{"period": "day", "cap_microusd": 300}],
                "quotas": [{"period": "day", "requests": 70}, {"period": "month", "requests": 900}],
                "increases": [{"period": "day", "requests": 5, "microusd": 7, "until": 100},
                              {"period": "month", "requests": 1, "until": 50}]}"#,
        )
        .expect("valid");
        let day = effective(Some(&own), (None, None), Some(&plan), Period::Day, 60);
        assert_eq!(
            day,
            PeriodLimits {
                cap: Some(307),
                soft_cap: None,
                requests: Some(75),
                tokens: Some(9000)
            },
            "own budget replaces the plan's pair; own requests replace; plan tokens stay"
        );
        let month = effective(Some(&own), (None, None), Some(&plan), Period::Month, 60);
        assert_eq!(month.requests, Some(900), "the month increase ended at 50");
        let total = effective(Some(&own), (None, Some(10)), Some(&plan), Period::Total, 60);
        assert_eq!(
            (total.cap, total.soft_cap),
            (None, Some(10)),
            "an own lifetime soft cap replaces the plan's lifetime budget"
        );
        let plan_total = effective(None, (None, None), Some(&plan), Period::Total, 60);
        assert_eq!(plan_total.cap, Some(1000));
        assert!(effective(None, (None, None), None, Period::Week, 0).is_empty());
    }
}
