//! What each budget window used, in the store: the figures usage reports bring for the windows
//! they name (pending until the next policy version, like lifetime spend), their history,
//! the audited adjustments and resets, and what the snapshot carries for each owner.

use std::collections::{BTreeMap, HashMap};

use keyward_engine::budget::WindowUsage;
use keyward_engine::calendar::{Period, Window};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::alerts::check_alerts;
use super::limits::{owner_offset, stored_limits, validate_reason, BudgetOwner};
use super::sql::{args, Sql, Value};
use super::Store;
use crate::error::Error;

/// Usage of one window: what snapshots carry, plus what was reported since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WindowUsageView {
    /// `2026-11-30`, `2026-W48`, `2026-11`, or `total`.
    pub window: String,
    pub period: String,
    pub starts_at: Option<u64>,
    pub ends_at: Option<u64>,
    pub spent_microusd: u64,
    pub requests: u64,
    pub tokens: u64,
}

/// One charge a usage report makes to one window.
#[derive(Debug, Clone)]
pub(super) struct WindowCharge {
    pub owner: BudgetOwner,
    pub window: String,
    pub cost: u64,
    pub requests: u64,
    pub tokens: u64,
}

/// Which window an operator means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowTarget {
    /// The lifetime figure (`spent_microusd`).
    Total,
    /// The window of this period that is current now, in the owner's offset.
    Current(Period),
    /// A window by its id (`2026-11-30`).
    Id(String),
}

impl WindowTarget {
    /// `total`, `day`, `week`, `month`, or a window id.
    pub fn parse(text: &str) -> Result<WindowTarget, Error> {
        match Period::parse(text) {
            Some(Period::Total) => Ok(WindowTarget::Total),
            Some(period) => Ok(WindowTarget::Current(period)),
            None if Window::parse(text).is_some() => Ok(WindowTarget::Id(text.to_owned())),
            None => Err(Error::invalid(
                "invalid_window",
                format!(
                    "{text:?} is not a window: say total, day, week, month, or a window id \
                     (2026-11-30, 2026-W48, 2026-11)"
                ),
            )),
        }
    }
}

/// Signed changes to a window's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageDelta {
    pub microusd: i64,
    pub requests: i64,
    pub tokens: i64,
}

/// The outcome of an adjustment or a reset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageChange {
    #[schema(value_type = Object)]
    pub owner: BudgetOwner,
    pub before: WindowUsageView,
    pub after: WindowUsageView,
    /// The policy version that carries it to the data plane.
    pub policy_version: u64,
}

/// Makes sure a window's row exists (with its bounds in the owner's offset at first use).
fn ensure_row(sql: &mut dyn Sql, owner: &BudgetOwner, window: Window) -> Result<(), Error> {
    let offset = owner_offset(sql, owner)?;
    let (starts_at, ends_at) = window.bounds(offset);
    sql.execute(
        "INSERT INTO window_usage (owner_kind, owner_id, window_id, period, starts_at, ends_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (owner_kind, owner_id, window_id) DO NOTHING",
        args![
            owner.kind(),
            owner.id(),
            window.id(),
            window.period.as_str(),
            Value::Int(starts_at),
            Value::Int(ends_at)
        ],
    )?;
    Ok(())
}

/// Adds one report's charge to its window, pending until the next version.
pub(super) fn credit_window(sql: &mut dyn Sql, charge: &WindowCharge) -> Result<bool, Error> {
    let Some(window) = Window::parse(&charge.window) else {
        return Ok(false);
    };
    ensure_row(sql, &charge.owner, window)?;
    sql.execute(
        &format!(
            "UPDATE window_usage SET {}, {}, {} \
             WHERE owner_kind = ?1 AND owner_id = ?2 AND window_id = ?3",
            saturating_add("pending_spent_microusd", "?4"),
            saturating_add("pending_requests", "?5"),
            saturating_add("pending_tokens", "?6")
        ),
        args![
            charge.owner.kind(),
            charge.owner.id(),
            &charge.window,
            Value::saturating(charge.cost),
            Value::saturating(charge.requests),
            Value::saturating(charge.tokens)
        ],
    )?;
    Ok(true)
}

/// `column = column + amount`, held at i64::MAX (SQLite would turn an overflow into a float).
fn saturating_add(column: &str, amount: &str) -> String {
    format!(
        "{column} = CASE WHEN {column} > 9223372036854775807 - {amount} \
         THEN 9223372036854775807 ELSE {column} + {amount} END"
    )
}

/// Folds reported window figures into the published ones: part of every version bump.
pub(super) fn fold_pending_windows(sql: &mut dyn Sql) -> Result<(), Error> {
    sql.execute(
        &format!(
            "UPDATE window_usage SET {}, {}, {}, pending_spent_microusd = 0, \
             pending_requests = 0, pending_tokens = 0 WHERE pending_spent_microusd > 0 \
             OR pending_requests > 0 OR pending_tokens > 0",
            saturating_add("spent_microusd", "pending_spent_microusd"),
            saturating_add("requests", "pending_requests"),
            saturating_add("tokens", "pending_tokens")
        ),
        &[],
    )?;
    Ok(())
}

/// Whether reported window figures wait for a version.
pub(super) fn windows_pending(sql: &mut dyn Sql) -> Result<bool, Error> {
    Ok(sql.query_int(
        "SELECT COUNT(*) FROM window_usage WHERE pending_spent_microusd > 0 \
         OR pending_requests > 0 OR pending_tokens > 0",
        &[],
    )? > 0)
}

/// The published figures of windows not over long before `issued_at` (a data plane whose
/// clock is behind still finds the window it is in), by owner: what snapshots carry.
pub(super) fn snapshot_usage(
    sql: &mut dyn Sql,
    issued_at: u64,
) -> Result<HashMap<BudgetOwner, BTreeMap<String, WindowUsage>>, Error> {
    /// Data planes whose clock is this far behind the control plane's still see their window.
    const CLOCK_SLACK_SECONDS: u64 = 600;
    let rows = sql.query(
        "SELECT owner_kind, owner_id, window_id, spent_microusd, requests, tokens \
         FROM window_usage WHERE ends_at > ?1 \
         AND (spent_microusd > 0 OR requests > 0 OR tokens > 0) \
         ORDER BY owner_kind, owner_id, window_id",
        args![Value::saturating(
            issued_at.saturating_sub(CLOCK_SLACK_SECONDS)
        )],
    )?;
    let mut usage: HashMap<BudgetOwner, BTreeMap<String, WindowUsage>> = HashMap::new();
    for row in rows {
        let mut columns = row.columns();
        let kind = columns.text()?;
        let owner = BudgetOwner::of(&kind, columns.text()?)?;
        let window = columns.text()?;
        let figures = WindowUsage {
            microusd: columns.uint()?,
            requests: columns.uint()?,
            tokens: columns.uint()?,
        };
        usage.entry(owner).or_default().insert(window, figures);
    }
    Ok(usage)
}

/// One window's figures, published plus pending (zero for a window never used).
pub(super) fn window_figures(
    sql: &mut dyn Sql,
    owner: &BudgetOwner,
    window: Window,
) -> Result<WindowUsageView, Error> {
    let offset = owner_offset(sql, owner)?;
    let (starts_at, ends_at) = window.bounds(offset);
    let row = sql.query_opt(
        "SELECT starts_at, ends_at, spent_microusd + pending_spent_microusd, \
         requests + pending_requests, tokens + pending_tokens FROM window_usage \
         WHERE owner_kind = ?1 AND owner_id = ?2 AND window_id = ?3",
        args![owner.kind(), owner.id(), window.id()],
    )?;
    let mut view = WindowUsageView {
        window: window.id(),
        period: window.period.as_str().to_owned(),
        starts_at: u64::try_from(starts_at).ok(),
        ends_at: u64::try_from(ends_at).ok(),
        spent_microusd: 0,
        requests: 0,
        tokens: 0,
    };
    if let Some(row) = row {
        let mut columns = row.columns();
        view.starts_at = Some(columns.uint()?);
        view.ends_at = Some(columns.uint()?);
        view.spent_microusd = columns.uint()?;
        view.requests = columns.uint()?;
        view.tokens = columns.uint()?;
    }
    Ok(view)
}

/// The lifetime figure of an owner (published plus pending), as a window view.
pub(super) fn total_figures(
    sql: &mut dyn Sql,
    owner: &BudgetOwner,
) -> Result<WindowUsageView, Error> {
    let table = match owner {
        BudgetOwner::Key(_) => "keys",
        BudgetOwner::Project(_) => "projects",
    };
    let spent = sql
        .query_opt(
            &format!("SELECT spent_microusd + pending_spend_microusd FROM {table} WHERE id = ?1"),
            args![owner.id()],
        )?
        .map(|row| row.columns().uint())
        .transpose()?
        .ok_or_else(|| Error::not_found("owner_not_found", format!("No {}.", owner.describe())))?;
    Ok(WindowUsageView {
        window: "total".to_owned(),
        period: "total".to_owned(),
        starts_at: None,
        ends_at: None,
        spent_microusd: spent,
        requests: 0,
        tokens: 0,
    })
}

/// The window an operator named, resolved now in the owner's offset.
fn resolve(
    sql: &mut dyn Sql,
    owner: &BudgetOwner,
    target: &WindowTarget,
    now: u64,
) -> Result<Option<Window>, Error> {
    match target {
        WindowTarget::Total => Ok(None),
        WindowTarget::Current(period) => {
            let offset = owner_offset(sql, owner)?;
            Ok(Window::containing(*period, now, offset))
        }
        WindowTarget::Id(id) => Ok(Window::parse(id)),
    }
}

fn shifted(value: u64, delta: i64) -> u64 {
    if delta >= 0 {
        value.saturating_add(delta.unsigned_abs())
    } else {
        value.saturating_sub(delta.unsigned_abs())
    }
}

impl Store {
    /// Changes a window's (or the lifetime) figures by `delta`, never below zero: one audited
    /// version, which the data plane follows with the next snapshot. Figures reported but not
    /// yet in a version are folded in first, so the adjustment applies to all of them.
    pub fn adjust_usage(
        &mut self,
        actor: &str,
        now: u64,
        owner: &BudgetOwner,
        target: &WindowTarget,
        delta: UsageDelta,
        reason: &str,
    ) -> Result<UsageChange, Error> {
        validate_reason(reason)?;
        if delta == UsageDelta::default() {
            return Err(Error::invalid(
                "nothing_to_change",
                "name an amount to adjust by (--by USD, --requests or --tokens)",
            ));
        }
        self.change_usage(
            actor,
            now,
            owner,
            target,
            reason,
            "spend.adjust",
            |figures| {
                figures.spent_microusd = shifted(figures.spent_microusd, delta.microusd);
                figures.requests = shifted(figures.requests, delta.requests);
                figures.tokens = shifted(figures.tokens, delta.tokens);
            },
        )
    }

    /// Sets a window's (or the lifetime) figures to zero: one audited version.
    pub fn reset_usage(
        &mut self,
        actor: &str,
        now: u64,
        owner: &BudgetOwner,
        target: &WindowTarget,
        reason: &str,
    ) -> Result<UsageChange, Error> {
        validate_reason(reason)?;
        self.change_usage(
            actor,
            now,
            owner,
            target,
            reason,
            "spend.reset",
            |figures| {
                figures.spent_microusd = 0;
                figures.requests = 0;
                figures.tokens = 0;
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn change_usage(
        &mut self,
        actor: &str,
        now: u64,
        owner: &BudgetOwner,
        target: &WindowTarget,
        reason: &str,
        action: &str,
        edit: impl FnOnce(&mut WindowUsageView),
    ) -> Result<UsageChange, Error> {
        self.change(actor, now, |change| {
            // The change's version bump has folded pending figures already.
            stored_limits(change.sql, owner)?;
            let window = resolve(change.sql, owner, target, now)?;
            let before = match window {
                Some(window) => window_figures(change.sql, owner, window)?,
                None => total_figures(change.sql, owner)?,
            };
            let mut after = before.clone();
            edit(&mut after);
            match window {
                Some(window) => {
                    ensure_row(change.sql, owner, window)?;
                    change.sql.execute(
                        "UPDATE window_usage SET spent_microusd = ?4, requests = ?5, tokens = ?6 \
                         WHERE owner_kind = ?1 AND owner_id = ?2 AND window_id = ?3",
                        args![
                            owner.kind(),
                            owner.id(),
                            window.id(),
                            Value::saturating(after.spent_microusd),
                            Value::saturating(after.requests),
                            Value::saturating(after.tokens)
                        ],
                    )?;
                }
                None => {
                    if after.requests != 0 || after.tokens != 0 {
                        return Err(Error::invalid(
                            "invalid_window",
                            "requests and tokens are counted per day, week or month, not in total",
                        ));
                    }
                    let table = match owner {
                        BudgetOwner::Key(_) => "keys",
                        BudgetOwner::Project(_) => "projects",
                    };
                    change.sql.execute(
                        &format!("UPDATE {table} SET spent_microusd = ?2 WHERE id = ?1"),
                        args![owner.id(), Value::saturating(after.spent_microusd)],
                    )?;
                }
            }
            change.audit(
                action,
                &owner.describe(),
                json!({"window": before.window, "before": before, "after": after,
                       "reason": reason}),
            )?;
            check_alerts(change.sql, now, owner, window)?;
            Ok(UsageChange {
                owner: owner.clone(),
                before,
                after,
                policy_version: change.version,
            })
        })
    }

    /// An owner's windows, newest first, and its lifetime figure last.
    pub fn window_history(&mut self, owner: &BudgetOwner) -> Result<Vec<WindowUsageView>, Error> {
        self.read(|sql| {
            let mut history = sql.query_map(
                "SELECT window_id, period, starts_at, ends_at, \
                 spent_microusd + pending_spent_microusd, requests + pending_requests, \
                 tokens + pending_tokens FROM window_usage \
                 WHERE owner_kind = ?1 AND owner_id = ?2 ORDER BY starts_at DESC, period",
                args![owner.kind(), owner.id()],
                |row| {
                    let mut columns = row.columns();
                    Ok(WindowUsageView {
                        window: columns.text()?,
                        period: columns.text()?,
                        starts_at: Some(columns.uint()?),
                        ends_at: Some(columns.uint()?),
                        spent_microusd: columns.uint()?,
                        requests: columns.uint()?,
                        tokens: columns.uint()?,
                    })
                },
            )?;
            history.push(total_figures(sql, owner)?);
            Ok(history)
        })
    }
}
