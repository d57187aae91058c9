//! The admin API's wire types for budgets, quotas, plans, spend adjustments, temporary
//! increases and price imports: what `keyward serve` parses and the remote CLI sends.

use keyward_engine::calendar::Period;
use keyward_engine::snapshot::PriceRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;
use crate::store::{BudgetOwner, Increase, UsageDelta, WindowTarget};
use crate::units::parse_duration_seconds;

/// `POST /v1/spend/adjust`: change a window's (or the lifetime) figures by signed amounts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustBody {
    /// `{"key": "<id>"}` or `{"project": "<id>"}`.
    #[schema(value_type = Object)]
    pub owner: BudgetOwner,
    /// `total`, `day`, `week`, `month` (the current one, in the owner's offset), or a window
    /// id (`2026-11-30`, `2026-W48`, `2026-11`).
    pub window: String,
    #[serde(default)]
    pub by_microusd: i64,
    #[serde(default)]
    pub requests: i64,
    #[serde(default)]
    pub tokens: i64,
    /// Why: recorded in the audit trail.
    pub reason: String,
}

impl AdjustBody {
    pub fn target(&self) -> Result<WindowTarget, Error> {
        WindowTarget::parse(&self.window)
    }

    pub fn delta(&self) -> UsageDelta {
        UsageDelta {
            microusd: self.by_microusd,
            requests: self.requests,
            tokens: self.tokens,
        }
    }
}

/// `POST /v1/spend/reset`: set a window's (or the lifetime) figures to zero.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    #[schema(value_type = Object)]
    pub owner: BudgetOwner,
    pub window: String,
    pub reason: String,
}

/// `POST /v1/increases`: raise a period's cap or quotas until a time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncreaseBody {
    #[schema(value_type = Object)]
    pub owner: Option<BudgetOwner>,
    /// `day`, `week`, `month` or `total`.
    pub period: String,
    #[serde(default)]
    pub microusd: u64,
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub tokens: u64,
    /// Unix seconds; or `expires_in`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// A duration from now: `24h`, `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    pub reason: String,
}

impl IncreaseBody {
    /// The owner and the increase, with `expires_in` resolved at `now`.
    pub fn resolve(&self, now: u64) -> Result<(BudgetOwner, Increase), Error> {
        let owner = self.owner.clone().ok_or_else(|| {
            Error::invalid("invalid_field", "owner: {\"key\": id} or {\"project\": id}")
        })?;
        let period = Period::parse(&self.period)
            .ok_or_else(|| Error::invalid("invalid_field", "period: day, week, month or total"))?;
        let expires_at = match (self.expires_at, self.expires_in.as_deref()) {
            (Some(at), None) => at,
            (None, Some(duration)) => now.saturating_add(parse_duration_seconds(duration)?),
            _ => {
                return Err(Error::invalid(
                    "invalid_field",
                    "give expires_at or expires_in (one of them)",
                ))
            }
        };
        Ok((
            owner,
            Increase {
                period,
                microusd: self.microusd,
                requests: self.requests,
                tokens: self.tokens,
                expires_at,
            },
        ))
    }
}

/// `POST /v1/prices/import`: a whole price list as one version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceImportBody {
    #[schema(value_type = Vec<Object>)]
    pub prices: Vec<PriceRecord>,
    /// Where the list comes from (`litellm`, `keyward-default-catalog`).
    pub source: String,
    /// The date of the prices, `YYYY-MM-DD`.
    pub as_of: String,
    /// Remove prices the list does not name.
    #[serde(default)]
    pub replace: bool,
}
