//! Budget alerts: when a window's spend (or the lifetime spend) passes its soft cap or its cap,
//! one alert is recorded for that window and level, never two, and `keyward serve` posts it to
//! the configured webhook until it is delivered.

use keyward_engine::calendar::{Period, Window};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::limits::{effective_limits, lifetime_caps, stored_limits, BudgetOwner};
use super::sql::{args, Sql, Value};
use super::windows::{total_figures, window_figures};
use super::Store;
use crate::error::Error;
use crate::units::format_usd;

/// Delivery attempts before an alert is given up on (the row stays, undelivered).
const MAX_ATTEMPTS: u64 = 20;
/// How long a replica's claim on an alert it is posting lasts.
const CLAIM_SECONDS: u64 = 60;

/// An alert as recorded, with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AlertView {
    #[schema(value_type = Object)]
    pub owner: BudgetOwner,
    pub window: String,
    /// `soft_cap` or `cap`.
    pub level: String,
    pub created_at: u64,
    /// The JSON posted to the webhook (Slack-compatible: `text`, plus `keyward`).
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub delivered_at: Option<u64>,
    pub attempts: u64,
    pub last_error: Option<String>,
}

/// Records the alerts a window (`None`: the lifetime spend) has earned at `now`: its spend at
/// or past the soft cap, at or past the cap. Each (owner, window, level) once.
pub(super) fn check_alerts(
    sql: &mut dyn Sql,
    now: u64,
    owner: &BudgetOwner,
    window: Option<Window>,
) -> Result<(), Error> {
    // Most owners limit nothing: two reads, then nothing to check.
    if stored_limits(sql, owner)?.is_none() && lifetime_caps(sql, owner)? == (None, None) {
        return Ok(());
    }
    let period = window.map_or(Period::Total, |window| window.period);
    let limits = effective_limits(sql, owner, period, now)?;
    if limits.cap.is_none() && limits.soft_cap.is_none() {
        return Ok(());
    }
    let figures = match window {
        Some(window) => window_figures(sql, owner, window)?,
        None => total_figures(sql, owner)?,
    };
    let spent = figures.spent_microusd;
    for (level, threshold) in [("soft_cap", limits.soft_cap), ("cap", limits.cap)] {
        let Some(threshold) = threshold.filter(|threshold| spent >= *threshold) else {
            continue;
        };
        let what = if level == "cap" { "cap" } else { "soft cap" };
        let text = format!(
            "keyward: {} reached its {} {what} for {}: spent ${} of ${}",
            owner.describe(),
            period.as_str(),
            figures.window,
            format_usd(spent),
            format_usd(threshold)
        );
        let payload = json!({
            "text": text,
            "keyward": {
                "event": format!("budget.{level}"),
                "owner": owner,
                "period": period.as_str(),
                "window": figures.window,
                "spent_microusd": spent,
                "threshold_microusd": threshold,
                "cap_microusd": limits.cap,
                "soft_cap_microusd": limits.soft_cap,
                "at": now,
            }
        });
        sql.execute(
            "INSERT INTO budget_alerts (owner_kind, owner_id, window_id, level, created_at, \
             payload, next_try_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5) \
             ON CONFLICT (owner_kind, owner_id, window_id, level) DO NOTHING",
            args![
                owner.kind(),
                owner.id(),
                &figures.window,
                level,
                Value::uint(now)?,
                Value::json(&payload)?
            ],
        )?;
    }
    Ok(())
}

const ALERT_COLUMNS: &str = "owner_kind, owner_id, window_id, level, created_at, payload, \
    delivered_at, attempts, last_error";

fn alert_of(row: &super::sql::Row) -> Result<AlertView, Error> {
    let mut columns = row.columns();
    let kind = columns.text()?;
    Ok(AlertView {
        owner: BudgetOwner::of(&kind, columns.text()?)?,
        window: columns.text()?,
        level: columns.text()?,
        created_at: columns.uint()?,
        payload: serde_json::from_str(&columns.text()?)?,
        delivered_at: columns.opt_uint()?,
        attempts: columns.uint()?,
        last_error: columns.opt_text()?,
    })
}

impl Store {
    /// The alerts recorded, newest first.
    pub fn alerts(&mut self, limit: u64) -> Result<Vec<AlertView>, Error> {
        self.read(|sql| {
            sql.query_map(
                &format!(
                    "SELECT {ALERT_COLUMNS} FROM budget_alerts ORDER BY created_at DESC, \
                     owner_kind, owner_id, window_id, level LIMIT ?1"
                ),
                args![Value::saturating(limit)],
                alert_of,
            )
        })
    }

    /// Claims the alerts due for a delivery attempt at `now`, oldest first: they are not due
    /// again for `CLAIM_SECONDS`, so another replica polling meanwhile does not post them too.
    /// A replica that stops mid-post leaves its claim to expire; another one then retries.
    pub fn alerts_due(&mut self, now: u64, limit: u64) -> Result<Vec<AlertView>, Error> {
        self.write(|sql| {
            let due = sql.query_map(
                &format!(
                    "SELECT {ALERT_COLUMNS} FROM budget_alerts WHERE delivered_at IS NULL \
                     AND next_try_at <= ?1 AND attempts < ?2 ORDER BY created_at LIMIT ?3"
                ),
                args![
                    Value::saturating(now),
                    Value::saturating(MAX_ATTEMPTS),
                    Value::saturating(limit)
                ],
                alert_of,
            )?;
            for alert in &due {
                sql.execute(
                    "UPDATE budget_alerts SET next_try_at = ?5 WHERE owner_kind = ?1 \
                     AND owner_id = ?2 AND window_id = ?3 AND level = ?4",
                    args![
                        alert.owner.kind(),
                        alert.owner.id(),
                        &alert.window,
                        &alert.level,
                        Value::saturating(now.saturating_add(CLAIM_SECONDS))
                    ],
                )?;
            }
            Ok(due)
        })
    }

    /// Records a delivery attempt: delivered, or failed (retried later, backing off).
    pub fn alert_attempted(
        &mut self,
        alert: &AlertView,
        now: u64,
        failure: Option<&str>,
    ) -> Result<(), Error> {
        let key = args![
            alert.owner.kind(),
            alert.owner.id(),
            &alert.window,
            &alert.level
        ]
        .to_vec();
        self.write(|sql| {
            match failure {
                None => sql.execute(
                    "UPDATE budget_alerts SET delivered_at = ?5, attempts = attempts + 1, \
                     last_error = NULL WHERE owner_kind = ?1 AND owner_id = ?2 \
                     AND window_id = ?3 AND level = ?4",
                    &[key.as_slice(), &[Value::saturating(now)]].concat(),
                )?,
                Some(error) => {
                    let backoff = 1u64 << alert.attempts.min(8);
                    let message: String = error.chars().take(300).collect();
                    sql.execute(
                        "UPDATE budget_alerts SET attempts = attempts + 1, last_error = ?5, \
                         next_try_at = ?6 WHERE owner_kind = ?1 AND owner_id = ?2 \
                         AND window_id = ?3 AND level = ?4",
                        &[
                            key.as_slice(),
                            &[
                                Value::from(message.as_str()),
                                Value::saturating(now.saturating_add(backoff)),
                            ],
                        ]
                        .concat(),
                    )?
                }
            };
            Ok(())
        })
    }
}
