//! The whole policy as the filter's snapshot, and the import of a plain snapshot into the store.

use std::collections::{BTreeMap, HashMap};

use keyward_engine::budget::{IncreaseRecord, LimitsRecord, WindowUsage};
use keyward_engine::snapshot::{Policy, Snapshot};
use serde_json::json;

use super::change::current_version;
use super::keys::{find_key, key_of, key_status_str, rpm_of, tpm_of, KEY_COLUMNS};
use super::limits::{all_plans, all_stored_limits, running_increases, BudgetOwner, LimitsSettings};
use super::model::PriceView;
use super::prices::price_catalog;
use super::prices::{all_prices, find_price, write_price};
use super::projects::{all_projects, find_project, project_status_str};
use super::sql::{args, Sql, Value};
use super::validate::validate_text;
use super::windows::snapshot_usage;
use super::Store;
use crate::error::Error;

/// The recorded issue, if it is for `version` and younger than `reissue_seconds` at `now`.
fn current_issue(
    sql: &mut dyn Sql,
    version: u64,
    now: u64,
    reissue_seconds: u64,
) -> Result<Option<u64>, Error> {
    let recorded = sql
        .query_opt(
            "SELECT version, issued_at FROM snapshot_issue WHERE id = 1",
            &[],
        )?
        .map(|row| {
            let mut columns = row.columns();
            Ok::<_, Error>((columns.uint()?, columns.uint()?))
        })
        .transpose()?;
    Ok(recorded.and_then(|(issued_version, issued_at)| {
        (issued_version == version && now < issued_at.saturating_add(reissue_seconds))
            .then_some(issued_at)
    }))
}

/// Every owner's limits as the snapshot carries them: its own settings, the increases running
/// at the issue time, and the figures of its current windows.
struct SnapshotLimits {
    own: HashMap<BudgetOwner, LimitsSettings>,
    increases: HashMap<BudgetOwner, Vec<IncreaseRecord>>,
    usage: HashMap<BudgetOwner, BTreeMap<String, WindowUsage>>,
}

impl SnapshotLimits {
    fn load(sql: &mut dyn Sql, issued_at: u64) -> Result<SnapshotLimits, Error> {
        Ok(SnapshotLimits {
            own: all_stored_limits(sql)?,
            increases: running_increases(sql, issued_at)?,
            usage: snapshot_usage(sql, issued_at)?,
        })
    }

    fn take(&mut self, owner: &BudgetOwner) -> Option<LimitsRecord> {
        let mut record = self
            .own
            .remove(owner)
            .map(|own| own.record())
            .unwrap_or_default();
        record.increases = self.increases.remove(owner).unwrap_or_default();
        record.usage = self.usage.remove(owner).unwrap_or_default();
        (record != LimitsRecord::default()).then_some(record)
    }
}

impl Store {
    /// The version and issue time the snapshot served now carries. Every process serving this
    /// store agrees on them (they are recorded in the store), so replicas serve the same bytes
    /// and ETag for a version: the recorded issue while it is for the current version and
    /// younger than `reissue_seconds`, else a new one, `now`, recorded for the others.
    pub fn snapshot_issue(&mut self, now: u64, reissue_seconds: u64) -> Result<(u64, u64), Error> {
        let seen = self.read(|sql| {
            let version = current_version(sql)?;
            Ok((version, current_issue(sql, version, now, reissue_seconds)?))
        })?;
        if let (version, Some(issued_at)) = seen {
            return Ok((version, issued_at));
        }
        self.write(|sql| {
            // Again under the write lock: another replica may have recorded it meanwhile.
            let version = current_version(sql)?;
            if let Some(issued_at) = current_issue(sql, version, now, reissue_seconds)? {
                return Ok((version, issued_at));
            }
            sql.execute(
                "INSERT INTO snapshot_issue (id, version, issued_at) VALUES (1, ?1, ?2) \
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version, \
                 issued_at = excluded.issued_at",
                args![Value::uint(version)?, Value::uint(now)?],
            )?;
            Ok((version, now))
        })
    }

    /// The whole policy as a snapshot, read in one transaction so the version matches the
    /// content. Keys past their rotation deadline are emitted as revoked.
    pub fn snapshot(&mut self, issued_at: u64) -> Result<Snapshot, Error> {
        self.read(|sql| {
            let version = current_version(sql)?;
            let mut limits = SnapshotLimits::load(sql, issued_at)?;
            let projects = all_projects(sql)?
                .iter()
                .map(|view| {
                    let mut record = view.record();
                    record.limits = limits.take(&BudgetOwner::Project(view.id.clone()));
                    record
                })
                .collect();
            let mut keys = Vec::new();
            sql.for_each(
                &format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY id"),
                &[],
                &mut |row| {
                    let mut record = key_of(&row)?.record(issued_at);
                    record.limits = limits.take(&BudgetOwner::Key(record.id.clone()));
                    keys.push(record);
                    Ok(())
                },
            )?;
            let prices = all_prices(sql)?.iter().map(PriceView::record).collect();
            Ok(Snapshot {
                version,
                issued_at,
                expires_at: None,
                projects,
                keys,
                prices,
                price_catalog: price_catalog(sql)?,
                plans: all_plans(sql)?,
                provider_keys: None,
            })
        })
    }

    /// Imports the projects, keys and prices of a plain snapshot (hashes only) into an
    /// empty-for-those-ids store: for moving existing hashed keys in, and for seeding demos. One
    /// audited change. Returns the counts of projects, keys and prices.
    pub fn import_snapshot(
        &mut self,
        actor: &str,
        now: u64,
        snapshot: &Snapshot,
    ) -> Result<(usize, usize, usize), Error> {
        // The filter must be able to use what we import: check with its own compiler first.
        Policy::compile(snapshot.clone()).map_err(|error| {
            Error::invalid(
                "invalid_snapshot",
                format!("The snapshot is invalid: {error}"),
            )
        })?;
        self.change(actor, now, |change| {
            for plan in &snapshot.plans {
                change.sql.execute(
                    "INSERT INTO plans (id, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                    args![&plan.id, Value::json(plan)?, Value::uint(now)?],
                )?;
            }
            for project in &snapshot.projects {
                if find_project(change.sql, &project.id)?.is_some() {
                    return Err(Error::conflict(
                        "project_exists",
                        format!("A project {:?} already exists.", project.id),
                    ));
                }
                change.sql.execute(
                    "INSERT INTO projects (id, org, status, spend_cap_microusd, spent_microusd, \
                     created_at, spend_soft_cap_microusd) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    args![
                        &project.id,
                        &project.org,
                        project_status_str(project.status),
                        Value::opt_uint(project.spend_cap_microusd)?,
                        Value::uint(project.spent_microusd)?,
                        Value::uint(now)?,
                        Value::opt_uint(project.spend_soft_cap_microusd)?
                    ],
                )?;
            }
            for key in &snapshot.keys {
                if find_key(change.sql, &key.id)?.is_some() {
                    return Err(Error::conflict(
                        "key_exists",
                        format!("A key {:?} already exists.", key.id),
                    ));
                }
                let format = if key.secret_sha256.is_some() {
                    "ak"
                } else {
                    "vpx"
                };
                let lowercase = |hash: &Option<String>| {
                    hash.as_ref()
                        .map_or(Value::Null, |hash| Value::Text(hash.to_ascii_lowercase()))
                };
                change.sql.execute(
                    "INSERT INTO keys (id, format, secret_sha256, key_sha256, project, org, \
                     environment, status, scopes, models, expires_at, spend_cap_microusd, \
                     spent_microusd, label, created_at, last_seen_at, spend_soft_cap_microusd, \
                     rate_limit_rpm, rate_limit_tpm) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
                     ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
                    args![
                        &key.id,
                        format,
                        lowercase(&key.secret_sha256),
                        lowercase(&key.key_sha256),
                        key.project.as_ref(),
                        key.org.as_ref(),
                        &key.environment,
                        key_status_str(key.status),
                        Value::json(&key.scopes)?,
                        key.models
                            .as_ref()
                            .map(Value::json)
                            .transpose()?
                            .unwrap_or(Value::Null),
                        Value::opt_uint(key.expires_at)?,
                        Value::opt_uint(key.spend_cap_microusd)?,
                        Value::uint(key.spent_microusd)?,
                        key.label.as_ref(),
                        Value::uint(key.created_at.unwrap_or(now))?,
                        Value::opt_uint(key.last_used_at)?,
                        Value::opt_uint(key.spend_soft_cap_microusd)?,
                        rpm_of(key.rate_limits.as_ref())?,
                        tpm_of(key.rate_limits.as_ref())?
                    ],
                )?;
            }
            // Own limits travel; window figures and increases are the data plane's history.
            let owners = snapshot
                .projects
                .iter()
                .map(|p| (BudgetOwner::Project(p.id.clone()), &p.limits))
                .chain(
                    snapshot
                        .keys
                        .iter()
                        .map(|k| (BudgetOwner::Key(k.id.clone()), &k.limits)),
                );
            for (owner, limits) in owners {
                let Some(limits) = limits else { continue };
                let own = LimitsSettings {
                    plan: limits.plan.clone(),
                    utc_offset_minutes: limits.utc_offset_minutes,
                    budgets: limits.budgets.clone(),
                    quotas: limits.quotas.clone(),
                };
                if own != LimitsSettings::default() {
                    let table = if owner.kind() == "key" {
                        "keys"
                    } else {
                        "projects"
                    };
                    change.sql.execute(
                        &format!("UPDATE {table} SET limits = ?2 WHERE id = ?1"),
                        args![owner.id(), Value::json(&own)?],
                    )?;
                }
            }
            for price in &snapshot.prices {
                if find_price(change.sql, &price.model)?.is_some() {
                    return Err(Error::conflict(
                        "price_exists",
                        format!("A price for {:?} already exists.", price.model),
                    ));
                }
                validate_text("model", Some(&price.model), 256)?;
                write_price(change.sql, price, now)?;
            }
            change.audit(
                "snapshot.import",
                "policy",
                json!({"projects": snapshot.projects.len(), "keys": snapshot.keys.len(),
                       "prices": snapshot.prices.len()}),
            )?;
            Ok((
                snapshot.projects.len(),
                snapshot.keys.len(),
                snapshot.prices.len(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::store_with_project;

    #[test]
    fn the_snapshot_issue_is_recorded_per_version_and_renewed_when_old() {
        let mut store = store_with_project();
        let version = store.policy_version().unwrap();
        assert_eq!(store.snapshot_issue(100, 300).unwrap(), (version, 100));
        // Another process asking later within the interval gets the same issue.
        assert_eq!(store.snapshot_issue(250, 300).unwrap(), (version, 100));
        assert_eq!(store.snapshot_issue(400, 300).unwrap(), (version, 400));
        store
            .create_project("a", 401, "proj_b", "org_1", None, None)
            .unwrap();
        assert_eq!(store.snapshot_issue(402, 300).unwrap(), (version + 1, 402));
        assert_eq!(store.snapshot_issue(403, 300).unwrap(), (version + 1, 402));
    }

    #[test]
    fn imports_carry_caps_limits_use_times_and_prices() {
        let mut store = Store::in_memory().unwrap();
        let snapshot: Snapshot = serde_json::from_value(json!({
            "version": 4, "issued_at": 100,
            "projects": [{"id": "p", "org": "o", "status": "active",
                          "spend_cap_microusd": 10, "spend_soft_cap_microusd": 5}],
            "keys": [{"id": "k1", "secret_sha256": "f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114",
                      "project": "p", "status": "active",
                      "rate_limits": {"tokens_per_minute": 9}, "created_at": 20, "last_used_at": 30}],
            "prices": [{"model": "m*", "input_microusd_per_mtok": 1, "output_microusd_per_mtok": 2}]
        }))
        .unwrap();
        assert_eq!(
            store.import_snapshot("a", 200, &snapshot).unwrap(),
            (1, 1, 1)
        );
        let exported = store.snapshot(300).unwrap();
        assert_eq!(exported.projects[0].spend_soft_cap_microusd, Some(5));
        let key = &exported.keys[0];
        assert_eq!((key.created_at, key.last_used_at), (Some(20), Some(30)));
        assert_eq!(key.rate_limits.and_then(|l| l.tokens_per_minute), Some(9));
        assert_eq!(exported.prices, snapshot.prices);
        let error = store.import_snapshot(
            "a",
            201,
            &Snapshot {
                projects: vec![],
                keys: vec![],
                ..snapshot
            },
        );
        assert_eq!(error.unwrap_err().code, "price_exists");
    }
}
