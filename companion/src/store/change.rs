//! One audited change: a transaction that makes a new policy version and records who changed
//! what. Also the policy version itself and the audit trail's reader.

use super::model::AuditEvent;
use super::sql::{args, Sql, Value};
use super::Store;
use crate::error::Error;
use crate::units::from_sql_int;

/// One audited change in progress: the transaction, who, when, and the version it produces.
pub(super) struct Change<'t> {
    pub sql: &'t mut dyn Sql,
    pub actor: &'t str,
    pub now: u64,
    pub version: u64,
}

impl Change<'_> {
    pub fn audit(
        &mut self,
        action: &str,
        target: &str,
        details: serde_json::Value,
    ) -> Result<(), Error> {
        record_event(
            self.sql,
            self.now,
            self.actor,
            action,
            target,
            &details,
            self.version,
        )
    }
}

/// The audit details of a partial update: each field it names, with its new value.
pub(super) type Details = serde_json::Map<String, serde_json::Value>;

/// Applies one field of a partial update (`None`: left alone) and records it in `details`.
pub(super) fn apply_field<T: Clone + serde::Serialize>(
    details: &mut Details,
    name: &str,
    field: &mut T,
    update: Option<&T>,
) {
    if let Some(value) = update {
        field.clone_from(value);
        details.insert(name.to_owned(), serde_json::json!(value));
    }
}

/// Applies a partial update of the spend cap and soft cap (`Some(None)` removes one).
pub(super) fn apply_spend_caps(
    details: &mut Details,
    [cap, soft]: [&mut Option<u64>; 2],
    [cap_update, soft_update]: [Option<Option<u64>>; 2],
) {
    apply_field(details, "spend_cap_microusd", cap, cap_update.as_ref());
    apply_field(
        details,
        "spend_soft_cap_microusd",
        soft,
        soft_update.as_ref(),
    );
}

/// Appends one event to the audit trail.
pub(super) fn record_event(
    sql: &mut dyn Sql,
    at: u64,
    actor: &str,
    action: &str,
    target: &str,
    details: &serde_json::Value,
    version: u64,
) -> Result<(), Error> {
    sql.execute(
        "INSERT INTO audit_events (at, actor, action, target, details, policy_version) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        args![
            Value::uint(at)?,
            actor,
            action,
            target,
            Value::json(details)?,
            Value::uint(version)?
        ],
    )?;
    Ok(())
}

/// The one statement that folds pending spend of a table into its spent sums, held at i64::MAX
/// (SQLite would turn an overflowing sum into a float; PostgreSQL would fail).
fn fold_pending_spend(table: &str) -> String {
    format!(
        "UPDATE {table} SET spent_microusd = CASE \
           WHEN spent_microusd > 9223372036854775807 - pending_spend_microusd \
           THEN 9223372036854775807 ELSE spent_microusd + pending_spend_microusd END, \
         pending_spend_microusd = 0 WHERE pending_spend_microusd > 0"
    )
}

/// Bumps the policy version; returns the new one. Reported spend waiting for a version is
/// folded in at the same time: usage reports were acknowledged with "the next version", and this
/// is it, whatever change makes it.
pub(super) fn bump_version(sql: &mut dyn Sql) -> Result<u64, Error> {
    for table in ["keys", "projects"] {
        sql.execute(&fold_pending_spend(table), &[])?;
    }
    super::windows::fold_pending_windows(sql)?;
    let version = sql.query_int(
        "UPDATE policy_version SET version = version + 1 WHERE id = 1 RETURNING version",
        &[],
    )?;
    Ok(from_sql_int(version))
}

pub(super) fn current_version(sql: &mut dyn Sql) -> Result<u64, Error> {
    sql.query_int("SELECT version FROM policy_version WHERE id = 1", &[])
        .map(from_sql_int)
}

impl Store {
    /// Runs `apply` as one audited change: one transaction, one new policy version.
    pub(super) fn change<T>(
        &mut self,
        actor: &str,
        now: u64,
        apply: impl FnOnce(&mut Change<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.write(|sql| {
            let version = bump_version(sql)?;
            let mut change = Change {
                sql,
                actor,
                now,
                version,
            };
            apply(&mut change)
        })
    }

    pub fn policy_version(&mut self) -> Result<u64, Error> {
        self.read(current_version)
    }

    /// The audit trail, oldest first; with `limit`, its last `limit` events.
    pub fn audit_events(&mut self, limit: Option<u64>) -> Result<Vec<AuditEvent>, Error> {
        let limit = Value::saturating(limit.unwrap_or(u64::MAX));
        self.read(|sql| {
            sql.query_map(
                "SELECT id, at, actor, action, target, details, policy_version FROM \
                 (SELECT id, at, actor, action, target, details, policy_version \
                  FROM audit_events ORDER BY id DESC LIMIT ?1) AS recent ORDER BY id",
                &[limit],
                |row| {
                    let mut columns = row.columns();
                    Ok(AuditEvent {
                        id: columns.uint()?,
                        at: columns.uint()?,
                        actor: columns.text()?,
                        action: columns.text()?,
                        target: columns.text()?,
                        details: serde_json::from_str(&columns.text()?)?,
                        policy_version: columns.uint()?,
                    })
                },
            )
        })
    }
}
