//! Budgets that reset, quotas and plans in the store: each key's and project's own limits (a
//! JSON column), the plans they name, and temporary increases. Everything is checked with the
//! filter's own compiler before it is stored, and every change is one audited version, so one
//! change to a plan reaches every key on it with one push.

use std::collections::HashMap;

use keyward_engine::budget::{
    effective, BudgetRecord, IncreaseRecord, LimitsRecord, OwnLimits, PeriodLimits, Plan,
    PlanRecord, QuotaRecord,
};
use keyward_engine::calendar::{Period, MAX_OFFSET_MINUTES};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::keys::find_key;
use super::projects::find_project;
use super::sql::{args, Sql, Value};
use super::validate::{validate_text, validate_with_plans};
use super::Store;
use crate::error::Error;

/// Whose budgets: a key's own, or a project's (shared by every key acting on it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetOwner {
    Key(String),
    Project(String),
}

impl BudgetOwner {
    pub fn kind(&self) -> &'static str {
        match self {
            BudgetOwner::Key(_) => "key",
            BudgetOwner::Project(_) => "project",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            BudgetOwner::Key(id) | BudgetOwner::Project(id) => id,
        }
    }

    pub(super) fn of(kind: &str, id: String) -> Result<BudgetOwner, Error> {
        match kind {
            "key" => Ok(BudgetOwner::Key(id)),
            "project" => Ok(BudgetOwner::Project(id)),
            other => Err(Error::internal(format!(
                "unknown budget owner kind {other:?} in the store"
            ))),
        }
    }

    fn table(&self) -> &'static str {
        match self {
            BudgetOwner::Key(_) => "keys",
            BudgetOwner::Project(_) => "projects",
        }
    }

    /// A readable name for messages: `key k7Hq2mPa`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.kind(), self.id())
    }
}

/// A key's or project's own limits: a plan, the offset its windows follow, budgets per day, week
/// or month, and request and token quotas. Its lifetime cap stays `spend_cap_microusd`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Minutes east of UTC (-840 to 840); a key without one follows its project's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utc_offset_minutes: Option<i32>,
    /// `[{"period": "day"|"week"|"month", "cap_microusd"?, "soft_cap_microusd"?}]`
    #[schema(value_type = Vec<Object>)]
    pub budgets: Vec<BudgetRecord>,
    /// `[{"period": "day"|"week"|"month", "requests"?, "tokens"?}]`
    #[schema(value_type = Vec<Object>)]
    pub quotas: Vec<QuotaRecord>,
}

impl LimitsSettings {
    fn is_empty(&self) -> bool {
        *self == LimitsSettings::default()
    }

    pub(super) fn record(&self) -> LimitsRecord {
        LimitsRecord {
            plan: self.plan.clone(),
            utc_offset_minutes: self.utc_offset_minutes,
            budgets: self.budgets.clone(),
            quotas: self.quotas.clone(),
            ..LimitsRecord::default()
        }
    }
}

/// A temporary increase as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IncreaseView {
    pub id: u64,
    #[schema(value_type = Object)]
    pub owner: BudgetOwner,
    /// `day`, `week`, `month` or `total`.
    #[schema(value_type = String)]
    pub period: Period,
    pub microusd: u64,
    pub requests: u64,
    pub tokens: u64,
    pub expires_at: u64,
    pub created_at: u64,
    pub actor: String,
    pub reason: String,
}

/// What an increase adds, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Increase {
    pub period: Period,
    pub microusd: u64,
    pub requests: u64,
    pub tokens: u64,
    pub expires_at: u64,
}

/// An owner's own limits column (`None` when it sets none).
pub(super) fn stored_limits(
    sql: &mut dyn Sql,
    owner: &BudgetOwner,
) -> Result<Option<LimitsSettings>, Error> {
    let row = sql.query_opt(
        &format!("SELECT limits FROM {} WHERE id = ?1", owner.table()),
        args![owner.id()],
    )?;
    let Some(row) = row else {
        return Err(owner_not_found(owner));
    };
    row.columns()
        .opt_text()?
        .map(|text| serde_json::from_str(&text).map_err(Error::from))
        .transpose()
}

/// Every key's and project's own limits, for the snapshot.
pub(super) fn all_stored_limits(
    sql: &mut dyn Sql,
) -> Result<HashMap<BudgetOwner, LimitsSettings>, Error> {
    let mut all = HashMap::new();
    for (kind, table) in [("key", "keys"), ("project", "projects")] {
        let rows = sql.query(
            &format!("SELECT id, limits FROM {table} WHERE limits IS NOT NULL"),
            &[],
        )?;
        for row in rows {
            let mut columns = row.columns();
            let owner = BudgetOwner::of(kind, columns.text()?)?;
            all.insert(owner, serde_json::from_str(&columns.text()?)?);
        }
    }
    Ok(all)
}

fn owner_not_found(owner: &BudgetOwner) -> Error {
    match owner {
        BudgetOwner::Key(_) => Error::not_found("key_not_found", "No key with this id."),
        BudgetOwner::Project(id) => {
            Error::not_found("project_not_found", format!("No project {id:?}."))
        }
    }
}

pub(super) fn all_plans(sql: &mut dyn Sql) -> Result<Vec<PlanRecord>, Error> {
    sql.query_map("SELECT spec FROM plans ORDER BY id", &[], |row| {
        Ok(serde_json::from_str(&row.columns().text()?)?)
    })
}

fn find_plan(sql: &mut dyn Sql, id: &str) -> Result<Option<PlanRecord>, Error> {
    sql.query_opt("SELECT spec FROM plans WHERE id = ?1", args![id])?
        .map(|row| Ok(serde_json::from_str(&row.columns().text()?)?))
        .transpose()
}

fn plan_not_found(id: &str) -> Error {
    Error::not_found("plan_not_found", format!("No plan {id:?}."))
}

/// Increases of one owner, newest first (expired ones too: they are the history).
fn owner_increases(sql: &mut dyn Sql, owner: &BudgetOwner) -> Result<Vec<IncreaseView>, Error> {
    sql.query_map(
        "SELECT id, period, microusd, requests, tokens, expires_at, created_at, actor, reason \
         FROM budget_increases WHERE owner_kind = ?1 AND owner_id = ?2 ORDER BY id DESC",
        args![owner.kind(), owner.id()],
        |row| {
            let mut columns = row.columns();
            let id = columns.uint()?;
            let period = Period::parse(&columns.text()?)
                .ok_or_else(|| Error::internal("unknown period in the store"))?;
            Ok(IncreaseView {
                id,
                owner: owner.clone(),
                period,
                microusd: columns.uint()?,
                requests: columns.uint()?,
                tokens: columns.uint()?,
                expires_at: columns.uint()?,
                created_at: columns.uint()?,
                actor: columns.text()?,
                reason: columns.text()?,
            })
        },
    )
}

/// Increases still running at `at`, by owner, as the snapshot carries them.
pub(super) fn running_increases(
    sql: &mut dyn Sql,
    at: u64,
) -> Result<HashMap<BudgetOwner, Vec<IncreaseRecord>>, Error> {
    let rows = sql.query(
        "SELECT owner_kind, owner_id, period, microusd, requests, tokens, expires_at \
         FROM budget_increases WHERE expires_at > ?1 ORDER BY id",
        args![Value::saturating(at)],
    )?;
    let mut running: HashMap<BudgetOwner, Vec<IncreaseRecord>> = HashMap::new();
    for row in rows {
        let mut columns = row.columns();
        let kind = columns.text()?;
        let owner = BudgetOwner::of(&kind, columns.text()?)?;
        let period = Period::parse(&columns.text()?)
            .ok_or_else(|| Error::internal("unknown period in the store"))?;
        running.entry(owner).or_default().push(IncreaseRecord {
            period,
            microusd: columns.uint()?,
            requests: columns.uint()?,
            tokens: columns.uint()?,
            until: columns.uint()?,
        });
    }
    Ok(running)
}

/// The owner's lifetime cap and soft cap.
pub(super) fn lifetime_caps(
    sql: &mut dyn Sql,
    owner: &BudgetOwner,
) -> Result<(Option<u64>, Option<u64>), Error> {
    match owner {
        BudgetOwner::Key(id) => {
            let row = find_key(sql, id)?.ok_or_else(|| owner_not_found(owner))?;
            Ok((
                row.view.spend_cap_microusd,
                row.view.spend_soft_cap_microusd,
            ))
        }
        BudgetOwner::Project(id) => {
            let project = find_project(sql, id)?.ok_or_else(|| owner_not_found(owner))?;
            Ok((project.spend_cap_microusd, project.spend_soft_cap_microusd))
        }
    }
}

/// What is limited for `owner` in `period` at `now`: its own over its plan's, with the
/// increases running then. The same merge the filter makes.
pub(super) fn effective_limits(
    sql: &mut dyn Sql,
    owner: &BudgetOwner,
    period: Period,
    now: u64,
) -> Result<PeriodLimits, Error> {
    let own = stored_limits(sql, owner)?.unwrap_or_default();
    let mut record = own.record();
    record.increases = owner_increases(sql, owner)?
        .into_iter()
        .filter(|increase| increase.expires_at > now)
        .map(|increase| IncreaseRecord {
            period: increase.period,
            microusd: increase.microusd,
            requests: increase.requests,
            tokens: increase.tokens,
            until: increase.expires_at,
        })
        .collect();
    let compiled = OwnLimits::compile(&record)
        .map_err(|error| Error::internal(format!("stored limits do not compile: {error}")))?;
    let plan = match &own.plan {
        Some(id) => find_plan(sql, id)?
            .map(Plan::compile)
            .transpose()
            .map_err(|error| Error::internal(format!("a stored plan does not compile: {error}")))?,
        None => None,
    };
    let caps = lifetime_caps(sql, owner)?;
    Ok(effective(Some(&compiled), caps, plan.as_ref(), period, now))
}

/// The offset the owner's windows follow: its own, else (a key) its project's, else UTC.
pub(super) fn owner_offset(sql: &mut dyn Sql, owner: &BudgetOwner) -> Result<i32, Error> {
    if let Some(offset) = stored_limits(sql, owner)?.and_then(|own| own.utc_offset_minutes) {
        return Ok(offset);
    }
    if let BudgetOwner::Key(id) = owner {
        let project = find_key(sql, id)?.and_then(|row| row.view.project);
        if let Some(project) = project {
            let home = BudgetOwner::Project(project);
            return Ok(stored_limits(sql, &home)?
                .and_then(|own| own.utc_offset_minutes)
                .unwrap_or(0));
        }
    }
    Ok(0)
}

/// The owner's record for the engine's check (with its project, for a project key).
fn check_owner(
    sql: &mut dyn Sql,
    owner: &BudgetOwner,
    limits: &LimitsSettings,
    now: u64,
) -> Result<(), Error> {
    let plans = all_plans(sql)?;
    let record = (!limits.is_empty()).then(|| limits.record());
    match owner {
        BudgetOwner::Key(id) => {
            let row = find_key(sql, id)?.ok_or_else(|| owner_not_found(owner))?;
            let mut key = row.record(now);
            key.limits = record;
            let projects = match &key.project {
                Some(project) => vec![find_project(sql, project)?
                    .ok_or_else(|| Error::internal("a key's project is missing"))?
                    .record()],
                None => vec![],
            };
            validate_with_plans(projects, vec![key], vec![], plans)
        }
        BudgetOwner::Project(id) => {
            let mut project = find_project(sql, id)?
                .ok_or_else(|| owner_not_found(owner))?
                .record();
            project.limits = record;
            validate_with_plans(vec![project], vec![], vec![], plans)
        }
    }
}

impl Store {
    /// An owner's own limits (empty when it sets none).
    pub fn limits(&mut self, owner: &BudgetOwner) -> Result<LimitsSettings, Error> {
        self.read(|sql| Ok(stored_limits(sql, owner)?.unwrap_or_default()))
    }

    /// Replaces an owner's own limits (checked with the filter's compiler); one audited version.
    pub fn set_limits(
        &mut self,
        actor: &str,
        now: u64,
        owner: &BudgetOwner,
        limits: &LimitsSettings,
    ) -> Result<LimitsSettings, Error> {
        if limits
            .utc_offset_minutes
            .is_some_and(|offset| offset.abs() > MAX_OFFSET_MINUTES)
        {
            return Err(Error::invalid(
                "invalid_field",
                "utc_offset_minutes: must be from -840 (UTC-14:00) to 840 (UTC+14:00)",
            ));
        }
        self.change(actor, now, |change| {
            let before = stored_limits(change.sql, owner)?.unwrap_or_default();
            if let Some(plan) = &limits.plan {
                if find_plan(change.sql, plan)?.is_none() {
                    return Err(plan_not_found(plan));
                }
            }
            check_owner(change.sql, owner, limits, now)?;
            let stored = if limits.is_empty() {
                Value::Null
            } else {
                Value::json(limits)?
            };
            change.sql.execute(
                &format!("UPDATE {} SET limits = ?2 WHERE id = ?1", owner.table()),
                args![owner.id(), stored],
            )?;
            change.audit(
                &format!("{}.limits", owner.kind()),
                owner.id(),
                json!({"before": before, "after": limits}),
            )?;
            Ok(limits.clone())
        })
    }

    pub fn plans(&mut self) -> Result<Vec<PlanRecord>, Error> {
        self.read(all_plans)
    }

    pub fn plan(&mut self, id: &str) -> Result<PlanRecord, Error> {
        self.read(|sql| find_plan(sql, id))?
            .ok_or_else(|| plan_not_found(id))
    }

    /// Creates or replaces a plan; every key and project on it gets the change with the next
    /// snapshot.
    pub fn set_plan(
        &mut self,
        actor: &str,
        now: u64,
        plan: &PlanRecord,
    ) -> Result<PlanRecord, Error> {
        validate_text("label", plan.label.as_deref(), 128)?;
        validate_with_plans(vec![], vec![], vec![], vec![plan.clone()])?;
        self.change(actor, now, |change| {
            let previous = find_plan(change.sql, &plan.id)?;
            change.sql.execute(
                "INSERT INTO plans (id, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?3) \
                 ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, \
                 updated_at = excluded.updated_at",
                args![&plan.id, Value::json(plan)?, Value::uint(now)?],
            )?;
            change.audit(
                "plan.set",
                &plan.id,
                json!({"before": previous, "after": plan}),
            )?;
            Ok(plan.clone())
        })
    }

    /// Removes a plan no key or project names any more.
    pub fn remove_plan(&mut self, actor: &str, now: u64, id: &str) -> Result<PlanRecord, Error> {
        self.change(actor, now, |change| {
            let plan = find_plan(change.sql, id)?.ok_or_else(|| plan_not_found(id))?;
            let users = all_stored_limits(change.sql)?
                .into_iter()
                .filter(|(_, limits)| limits.plan.as_deref() == Some(id))
                .count();
            if users > 0 {
                return Err(Error::conflict(
                    "plan_in_use",
                    format!(
                        "The plan {id:?} is named by {users} keys or projects; move them first."
                    ),
                ));
            }
            change
                .sql
                .execute("DELETE FROM plans WHERE id = ?1", args![id])?;
            change.audit("plan.remove", id, json!({"removed": plan}))?;
            Ok(plan)
        })
    }

    /// Adds a temporary increase to an owner's limit of one period. It must raise something
    /// that is limited (a cap or a quota of that period, own or from its plan).
    pub fn raise_limit(
        &mut self,
        actor: &str,
        now: u64,
        owner: &BudgetOwner,
        increase: Increase,
        reason: &str,
    ) -> Result<IncreaseView, Error> {
        validate_reason(reason)?;
        if increase.expires_at <= now {
            return Err(Error::invalid(
                "invalid_field",
                "the increase must end in the future (--for 24h, or --until a later time)",
            ));
        }
        if increase.microusd == 0 && increase.requests == 0 && increase.tokens == 0 {
            return Err(Error::invalid(
                "invalid_field",
                "name what to raise: an amount in USD, requests or tokens",
            ));
        }
        self.change(actor, now, |change| {
            let limits = effective_limits(change.sql, owner, increase.period, now)?;
            let raises_nothing = (increase.microusd > 0 && limits.cap.is_none())
                || (increase.requests > 0 && limits.requests.is_none())
                || (increase.tokens > 0 && limits.tokens.is_none());
            if raises_nothing {
                return Err(Error::invalid(
                    "nothing_to_raise",
                    format!(
                        "{} has no {} limit of that kind to raise (a cap for USD, a quota for \
                         requests or tokens)",
                        owner.describe(),
                        increase.period.as_str()
                    ),
                ));
            }
            change.sql.execute(
                "INSERT INTO budget_increases (owner_kind, owner_id, period, microusd, requests, \
                 tokens, expires_at, created_at, actor, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, \
                 ?7, ?8, ?9, ?10)",
                args![
                    owner.kind(),
                    owner.id(),
                    increase.period.as_str(),
                    Value::uint(increase.microusd)?,
                    Value::uint(increase.requests)?,
                    Value::uint(increase.tokens)?,
                    Value::uint(increase.expires_at)?,
                    Value::uint(now)?,
                    change.actor,
                    reason
                ],
            )?;
            let view = owner_increases(change.sql, owner)?
                .into_iter()
                .next()
                .ok_or_else(|| Error::internal("an increase just written is missing"))?;
            change.audit(
                "budget.increase",
                &owner.describe(),
                json!({"id": view.id, "period": increase.period.as_str(),
                       "microusd": increase.microusd, "requests": increase.requests,
                       "tokens": increase.tokens, "expires_at": increase.expires_at,
                       "reason": reason}),
            )?;
            Ok(view)
        })
    }

    /// An owner's increases, newest first (running and ended).
    pub fn increases(&mut self, owner: &BudgetOwner) -> Result<Vec<IncreaseView>, Error> {
        self.read(|sql| {
            stored_limits(sql, owner)?;
            owner_increases(sql, owner)
        })
    }
}

/// An audited admin operation says why: printable, 1 to 500 characters.
pub(super) fn validate_reason(reason: &str) -> Result<(), Error> {
    if reason.trim().is_empty() {
        return Err(Error::invalid(
            "missing_reason",
            "say why (--reason): it goes into the audit trail",
        ));
    }
    validate_text("reason", Some(reason), 500)
}
