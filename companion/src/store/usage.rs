//! Usage reports from the data plane: spend and last use per key (and project), applied once
//! per batch id, folded into the policy by the next version.

use std::collections::BTreeMap;

use keyward_engine::usage_report::{UsageAck, UsageReport};
use serde_json::json;

use keyward_engine::calendar::Window;
use keyward_engine::provider::ProviderKeyUse;

use super::alerts::check_alerts;
use super::change::{bump_version, current_version, record_event};
use super::keys::find_key;
use super::limits::BudgetOwner;
use super::model::{UsageApplied, UsageBatchView};
use super::projects::find_project;
use super::provider_keys::{
    provider_key_owner, provider_key_target, record_provider_key_uses, ProviderKeyUses,
};
use super::sql::{args, Dialect, Row, Sql, Value};
use super::windows::{credit_window, windows_pending, WindowCharge};
use super::Store;
use crate::error::Error;

/// How long an applied usage batch id is remembered: a retry within this window is answered as
/// a duplicate; the rows are pruned afterwards so the table stays small.
pub const USAGE_BATCH_RETENTION_SECONDS: u64 = 30 * 86_400;

const BATCH_COLUMNS: &str = "batch_id, reporter, received_at, policy_version, entries, applied, \
    skipped, cost_microusd, requests, input_tokens, output_tokens";

fn batch_of(row: &Row) -> Result<UsageBatchView, Error> {
    let mut columns = row.columns();
    Ok(UsageBatchView {
        batch_id: columns.text()?,
        reporter: columns.text()?,
        received_at: columns.uint()?,
        policy_version: columns.uint()?,
        entries: columns.uint()?,
        applied: columns.uint()?,
        skipped: columns.uint()?,
        cost_microusd: columns.uint()?,
        requests: columns.uint()?,
        input_tokens: columns.uint()?,
        output_tokens: columns.uint()?,
    })
}

/// The reporter names the audit actor: printable, at most 64 characters, never empty.
fn reporter_actor(reporter: &str) -> String {
    let cleaned: String = printable(reporter).chars().take(64).collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() {
        "data-plane".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Report text for terminals and the audit trail: control characters dropped.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// A batch id or key id from a report, shortened and quoted for a log line.
fn shown(text: &str) -> String {
    let cleaned: String = printable(text).chars().take(80).collect();
    format!("{cleaned:?}")
}

/// A key's or project's figures before a report, and the report's running totals for it.
struct Charge {
    spent: u64,
    last_seen_at: Option<u64>,
}

impl Charge {
    fn add(&mut self, cost: u64, last_used_at: Option<u64>) {
        self.spent = self.spent.saturating_add(cost);
        self.last_seen_at = self.last_seen_at.max(last_used_at);
    }
}

/// What a batch adds up to, entry by entry.
#[derive(Default)]
struct Tally {
    keys: BTreeMap<String, Charge>,
    projects: BTreeMap<String, Charge>,
    applied: u64,
    skipped: u64,
    cost: u64,
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    warnings: Vec<String>,
    /// The budget windows the entries name, per owner (see `windows`).
    windows: Vec<WindowCharge>,
    /// The provider keys the entries were forwarded with, and their latest use.
    provider_keys: ProviderKeyUses,
}

/// Sums a report's entries per key and per project, within the write lock. Entries for unknown
/// keys are skipped; a project charge the key could not have made is skipped, the key charged.
fn tally(sql: &mut dyn Sql, report: &UsageReport, now: u64) -> Result<Tally, Error> {
    let mut tally = Tally::default();
    for entry in &report.entries {
        let Some(key) = find_key(sql, &entry.key_id)? else {
            tally.skipped = tally.skipped.saturating_add(1);
            tally.warnings.push(format!(
                "usage batch {}: unknown key {}, entry skipped",
                shown(&report.batch_id),
                shown(&entry.key_id)
            ));
            continue;
        };
        tally.applied = tally.applied.saturating_add(1);
        tally.cost = tally.cost.saturating_add(entry.cost_microusd);
        tally.requests = tally.requests.saturating_add(entry.requests);
        tally.input_tokens = tally.input_tokens.saturating_add(entry.input_tokens);
        tally.output_tokens = tally.output_tokens.saturating_add(entry.output_tokens);
        tally
            .keys
            .entry(key.view.id.clone())
            .or_insert(Charge {
                spent: 0,
                last_seen_at: key.view.last_seen_at,
            })
            .add(entry.cost_microusd, entry.last_used_at);
        let tokens = entry.input_tokens.saturating_add(entry.output_tokens);
        let charge = |owner: &BudgetOwner, window: &String| WindowCharge {
            owner: owner.clone(),
            window: window.clone(),
            cost: entry.cost_microusd,
            requests: entry.requests,
            tokens,
        };
        let key_owner = BudgetOwner::Key(key.view.id.clone());
        tally.windows.extend(
            entry
                .key_windows
                .iter()
                .map(|window| charge(&key_owner, window)),
        );
        let used = entry
            .provider_key
            .as_deref()
            .and_then(ProviderKeyUse::parse);
        if let (Some(used), Some(at)) = (used, entry.last_used_at) {
            let owner = provider_key_owner(
                sql,
                key.view.project.as_deref(),
                key.view.org.as_deref(),
                used.owner,
                entry.project.as_deref(),
            )?;
            match owner {
                Some(owner_id) => {
                    let latest = tally
                        .provider_keys
                        .entry((used.provider, used.owner, owner_id))
                        .or_insert(0);
                    *latest = (*latest).max(at.min(now));
                }
                None => tally.warnings.push(format!(
                    "usage batch {}: key {} cannot have used a {} provider key of {}; its last \
                     use is not recorded",
                    shown(&report.batch_id),
                    shown(&entry.key_id),
                    used.owner.as_str(),
                    used.provider.as_str()
                )),
            }
        }
        let Some(project_id) = &entry.project else {
            continue;
        };
        let project = find_project(sql, project_id)?.filter(|project| {
            match (&key.view.project, &key.view.org) {
                (Some(own), _) => own == &project.id,
                (None, Some(org)) => org == &project.org,
                (None, None) => false,
            }
        });
        if let Some(project) = project {
            tally
                .projects
                .entry(project.id.clone())
                .or_insert(Charge {
                    spent: 0,
                    last_seen_at: None,
                })
                .add(entry.cost_microusd, None);
            let project_owner = BudgetOwner::Project(project.id.clone());
            tally.windows.extend(
                entry
                    .project_windows
                    .iter()
                    .map(|window| charge(&project_owner, window)),
            );
        } else {
            tally.warnings.push(format!(
                "usage batch {}: key {} cannot charge project {} (unknown, or not the key's \
                 own or of its org); charged the key only",
                shown(&report.batch_id),
                shown(&entry.key_id),
                shown(project_id)
            ));
        }
    }
    Ok(tally)
}

/// Adds the window charges to their windows (pending), then records the alerts the new
/// figures earn, for each window and for the lifetime spend of every owner charged.
fn credit_windows(
    sql: &mut dyn Sql,
    now: u64,
    batch_id: &str,
    tally: &mut Tally,
) -> Result<(), Error> {
    let mut touched: Vec<(BudgetOwner, Option<Window>)> = Vec::new();
    for charge in &tally.windows {
        if !credit_window(sql, charge)? {
            tally.warnings.push(format!(
                "usage batch {}: {} is not a window id, entry not counted there",
                shown(batch_id),
                shown(&charge.window)
            ));
            continue;
        }
        let window = Window::parse(&charge.window);
        if !touched.contains(&(charge.owner.clone(), window)) {
            touched.push((charge.owner.clone(), window));
        }
    }
    let owners = tally
        .keys
        .keys()
        .map(|id| BudgetOwner::Key(id.clone()))
        .chain(
            tally
                .projects
                .keys()
                .map(|id| BudgetOwner::Project(id.clone())),
        );
    for owner in owners {
        touched.push((owner, None));
    }
    for (owner, window) in touched {
        check_alerts(sql, now, &owner, window)?;
    }
    Ok(())
}

/// Adds the tally to the pending spend of its keys and projects, and moves `last_seen_at`.
/// Sums are exact integers, held at i64::MAX rather than wrapped.
fn add_pending_spend(sql: &mut dyn Sql, tally: &Tally) -> Result<(), Error> {
    for (id, charge) in &tally.keys {
        sql.execute(
            "UPDATE keys SET pending_spend_microusd = CASE \
               WHEN pending_spend_microusd > 9223372036854775807 - ?2 \
               THEN 9223372036854775807 ELSE pending_spend_microusd + ?2 END, \
             last_seen_at = ?3 WHERE id = ?1",
            args![
                id,
                Value::saturating(charge.spent),
                charge.last_seen_at.map_or(Value::Null, Value::saturating),
            ],
        )?;
    }
    for (id, charge) in &tally.projects {
        sql.execute(
            "UPDATE projects SET pending_spend_microusd = CASE \
               WHEN pending_spend_microusd > 9223372036854775807 - ?2 \
               THEN 9223372036854775807 ELSE pending_spend_microusd + ?2 END WHERE id = ?1",
            args![id, Value::saturating(charge.spent)],
        )?;
    }
    Ok(())
}

impl Store {
    /// Applies a verified usage report in one transaction: adds each entry's cost to its key (and
    /// to the project it charged), moves `last_seen_at` forward, remembers the batch id and
    /// audits the batch once. The spend waits as pending until the next version folds it in: at
    /// once when `publish_now`, else by [`Store::publish_pending_spend`] on the server's
    /// interval, so a fleet reporting every second does not make a new snapshot every second.
    /// The acknowledgement names that version. A batch id seen before is not applied again: its
    /// stored acknowledgement comes back with `duplicate: true`.
    ///
    /// Entries for unknown keys are skipped (a report may race a store restore); a project charge
    /// the key could not have made (not its own project, nor a project of its org) is skipped
    /// while the key is still charged. Both are listed in `warnings`.
    pub fn apply_usage_report(
        &mut self,
        report: &UsageReport,
        now: u64,
        publish_now: bool,
    ) -> Result<UsageApplied, Error> {
        self.write(|sql| {
            let seen = sql.query_opt(
                "SELECT policy_version FROM usage_batches WHERE batch_id = ?1",
                args![&report.batch_id],
            )?;
            if let Some(row) = seen {
                return Ok(UsageApplied {
                    ack: UsageAck {
                        batch_id: report.batch_id.clone(),
                        version: row.columns().uint()?,
                        duplicate: true,
                    },
                    warnings: vec![],
                });
            }
            let mut tally = tally(sql, report, now)?;
            let current = current_version(sql)?;
            let version = if tally.applied > 0 {
                current.saturating_add(1)
            } else {
                current
            };
            add_pending_spend(sql, &tally)?;
            let unknown = record_provider_key_uses(sql, &tally.provider_keys)?;
            tally.warnings.extend(
                unknown
                    .into_iter()
                    .map(|what| format!("usage batch {}: {what}", shown(&report.batch_id))),
            );
            credit_windows(sql, now, &report.batch_id, &mut tally)?;
            if tally.applied > 0 && publish_now {
                bump_version(sql)?;
            }
            let entries = u64::try_from(report.entries.len()).unwrap_or(u64::MAX);
            let reporter = reporter_actor(&report.reporter);
            sql.execute(
                &format!(
                    "INSERT INTO usage_batches ({BATCH_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, \
                     ?7, ?8, ?9, ?10, ?11)"
                ),
                args![
                    &report.batch_id,
                    &reporter,
                    Value::saturating(now),
                    Value::saturating(version),
                    Value::saturating(entries),
                    Value::saturating(tally.applied),
                    Value::saturating(tally.skipped),
                    Value::saturating(tally.cost),
                    Value::saturating(tally.requests),
                    Value::saturating(tally.input_tokens),
                    Value::saturating(tally.output_tokens),
                ],
            )?;
            sql.execute(
                "DELETE FROM usage_batches WHERE received_at < ?1",
                args![Value::saturating(
                    now.saturating_sub(USAGE_BATCH_RETENTION_SECONDS)
                )],
            )?;
            record_event(
                sql,
                now,
                &reporter,
                "usage.report",
                &printable(&report.batch_id),
                &json!({"entries": entries, "applied": tally.applied, "skipped": tally.skipped,
                        "cost_microusd": tally.cost, "requests": tally.requests,
                        "input_tokens": tally.input_tokens, "output_tokens": tally.output_tokens,
                        "keys": tally.keys.len(), "projects": tally.projects.len(),
                        "provider_keys": tally.provider_keys.keys()
                            .map(|(provider, owner, id)| provider_key_target(*provider, *owner, id))
                            .collect::<Vec<_>>()}),
                version,
            )?;
            Ok(UsageApplied {
                ack: UsageAck {
                    batch_id: report.batch_id.clone(),
                    version,
                    duplicate: false,
                },
                warnings: tally.warnings,
            })
        })
    }

    /// Makes the next version if reported spend is waiting for one; returns it.
    pub fn publish_pending_spend(&mut self) -> Result<Option<u64>, Error> {
        self.write(|sql| {
            let waiting = sql.query_int(
                "SELECT (SELECT COUNT(*) FROM keys WHERE pending_spend_microusd > 0) + \
                        (SELECT COUNT(*) FROM projects WHERE pending_spend_microusd > 0)",
                &[],
            )?;
            if waiting == 0 && !windows_pending(sql)? {
                return Ok(None);
            }
            bump_version(sql).map(Some)
        })
    }

    /// The most recent usage batches, newest first.
    pub fn usage_batches(&mut self, limit: u64) -> Result<Vec<UsageBatchView>, Error> {
        self.read(|sql| {
            // Batches of one second come out in the order they were applied.
            let arrival = match sql.dialect() {
                Dialect::Sqlite => "rowid",
                Dialect::Postgres => "seq",
            };
            sql.query_map(
                &format!(
                    "SELECT {BATCH_COLUMNS} FROM usage_batches \
                     ORDER BY received_at DESC, {arrival} DESC LIMIT ?1"
                ),
                &[Value::saturating(limit)],
                batch_of,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;
    use crate::store::Owner;

    #[test]
    fn a_usage_report_is_applied_once_and_bumps_the_version_once() {
        let mut store = store_with_project();
        let k1 = key_in(&mut store, Owner::Project("proj_a".into()));
        let k2 = key_in(&mut store, Owner::Project("proj_a".into()));
        let before = store.policy_version().unwrap();
        let report = UsageReport::new(
            "envoy-1",
            "envoy-1-1",
            vec![
                entry(&k1, Some("proj_a"), 1_250_001, 500),
                entry(&k1, Some("proj_a"), 3, 400),
                entry(&k2, Some("proj_a"), 75_000, 450),
            ],
        );
        let applied = store.apply_usage_report(&report, 1000, true).unwrap();
        assert!(applied.warnings.is_empty(), "{:?}", applied.warnings);
        assert_eq!(
            applied.ack,
            UsageAck {
                batch_id: "envoy-1-1".into(),
                version: before + 1,
                duplicate: false
            }
        );
        assert_eq!(store.policy_version().unwrap(), before + 1);
        let first = store.key(&k1).unwrap();
        assert_eq!(first.spent_microusd, 1_250_004, "exact sum");
        assert_eq!(first.last_seen_at, Some(500), "the latest use");
        assert_eq!(store.key(&k2).unwrap().spent_microusd, 75_000);
        assert_eq!(store.project("proj_a").unwrap().spent_microusd, 1_325_004);

        // A retry: the same acknowledgement, nothing added, no new version or event.
        let events = store.audit_events(None).unwrap().len();
        let again = store.apply_usage_report(&report, 1005, true).unwrap();
        assert_eq!(again.ack.version, before + 1);
        assert!(again.ack.duplicate);
        assert_eq!(store.key(&k1).unwrap().spent_microusd, 1_250_004);
        assert_eq!(store.policy_version().unwrap(), before + 1);
        assert_eq!(store.audit_events(None).unwrap().len(), events);

        // One audit event for the batch, by the reporter.
        let event = store.audit_events(Some(1)).unwrap().remove(0);
        assert_eq!(
            (
                event.actor.as_str(),
                event.action.as_str(),
                event.target.as_str()
            ),
            ("envoy-1", "usage.report", "envoy-1-1")
        );
        assert_eq!(event.details["entries"], 3);
        assert_eq!(event.details["cost_microusd"], 1_325_004);
        assert_eq!(event.policy_version, before + 1);

        // The snapshot carries the spend and the last use.
        let snapshot = store.snapshot(2000).unwrap();
        let record = snapshot.keys.iter().find(|key| key.id == k1).unwrap();
        assert_eq!(record.spent_microusd, 1_250_004);
        assert_eq!(record.last_used_at, Some(500));
        assert_eq!(record.created_at, Some(1));
        assert_eq!(snapshot.projects[0].spent_microusd, 1_325_004);

        // An older last use never moves last_seen_at back.
        let later = UsageReport::new("envoy-2", "envoy-2-1", vec![entry(&k1, None, 1, 100)]);
        store.apply_usage_report(&later, 3000, true).unwrap();
        let first = store.key(&k1).unwrap();
        assert_eq!(
            (first.spent_microusd, first.last_seen_at),
            (1_250_005, Some(500))
        );
        assert_eq!(
            store.project("proj_a").unwrap().spent_microusd,
            1_325_004,
            "no project named: only the key is charged"
        );

        let batches = store.usage_batches(10).unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].batch_id, "envoy-2-1", "newest first");
        assert_eq!(
            (batches[1].entries, batches[1].applied, batches[1].requests),
            (3, 3, 6)
        );
    }

    #[test]
    fn unknown_keys_and_foreign_projects_are_skipped_not_fatal() {
        let mut store = store_with_org_projects();
        let own = key_in(&mut store, Owner::Project("proj_a".into()));
        let org_key = key_in(&mut store, Owner::Org("org_1".into()));
        let report = UsageReport::new(
            "envoy-1",
            "b1",
            vec![
                entry("nobody000001", Some("proj_a"), 999, 10),
                entry(&own, Some("proj_b"), 10, 10),
                entry(&org_key, Some("proj_b"), 20, 10),
                entry(&org_key, Some("proj_x"), 40, 10),
                entry(&org_key, Some("proj_gone"), 80, 10),
            ],
        );
        let applied = store.apply_usage_report(&report, 100, true).unwrap();
        assert_eq!(applied.warnings.len(), 4, "{:?}", applied.warnings);
        assert!(applied.warnings[0].contains("unknown key"));
        assert_eq!(store.key(&own).unwrap().spent_microusd, 10);
        assert_eq!(store.key(&org_key).unwrap().spent_microusd, 140);
        let spent = |store: &mut Store, id: &str| store.project(id).unwrap().spent_microusd;
        assert_eq!(spent(&mut store, "proj_a"), 0);
        assert_eq!(
            spent(&mut store, "proj_b"),
            20,
            "the org key's project only"
        );
        assert_eq!(spent(&mut store, "proj_x"), 0, "another org's project");
        let batch = store.usage_batches(1).unwrap().remove(0);
        assert_eq!((batch.entries, batch.applied, batch.skipped), (5, 4, 1));

        // A batch of unknown keys only: remembered and audited, but no new version.
        let version = store.policy_version().unwrap();
        let report = UsageReport::new("envoy-1", "b2", vec![entry("nobody000001", None, 5, 1)]);
        let applied = store.apply_usage_report(&report, 101, true).unwrap();
        assert_eq!(applied.ack.version, version);
        assert!(!applied.ack.duplicate);
        assert_eq!(store.policy_version().unwrap(), version);
        assert!(
            store
                .apply_usage_report(&report, 102, true)
                .unwrap()
                .ack
                .duplicate
        );
    }

    #[test]
    fn spend_saturates_instead_of_wrapping() {
        let mut store = store_with_project();
        let id = key_in(&mut store, Owner::Project("proj_a".into()));
        let huge = UsageReport::new(
            "r",
            "b1",
            vec![
                entry(&id, Some("proj_a"), u64::MAX, 1),
                entry(&id, Some("proj_a"), u64::MAX, 2),
            ],
        );
        store.apply_usage_report(&huge, 10, true).unwrap();
        store
            .apply_usage_report(
                &UsageReport::new("r", "b2", vec![entry(&id, None, 7, 3)]),
                11,
                true,
            )
            .unwrap();
        let max = i64::MAX.unsigned_abs();
        assert_eq!(store.key(&id).unwrap().spent_microusd, max);
        assert_eq!(store.project("proj_a").unwrap().spent_microusd, max);
        let batch = store.usage_batches(2).unwrap().remove(1);
        assert_eq!(batch.cost_microusd, max);
    }

    #[test]
    fn deferred_spend_is_acknowledged_with_the_next_version_and_folded_by_any_bump() {
        let mut store = store_with_project();
        let id = key_in(&mut store, Owner::Project("proj_a".into()));
        let before = store.policy_version().unwrap();
        let report = UsageReport::new("r", "d1", vec![entry(&id, Some("proj_a"), 500, 1)]);
        let ack = store.apply_usage_report(&report, 100, false).unwrap().ack;
        assert_eq!(ack.version, before + 1, "the next version will carry it");
        assert_eq!(store.policy_version().unwrap(), before, "no version yet");
        assert_eq!(
            store.key(&id).unwrap().spent_microusd,
            0,
            "not in any snapshot yet"
        );
        let again = store.apply_usage_report(&report, 101, false).unwrap().ack;
        assert_eq!((again.version, again.duplicate), (before + 1, true));
        store
            .apply_usage_report(
                &UsageReport::new("r", "d2", vec![entry(&id, Some("proj_a"), 20, 1)]),
                102,
                false,
            )
            .unwrap();
        assert_eq!(store.publish_pending_spend().unwrap(), Some(before + 1));
        assert_eq!(store.key(&id).unwrap().spent_microusd, 520);
        assert_eq!(store.project("proj_a").unwrap().spent_microusd, 520);
        assert_eq!(
            store.publish_pending_spend().unwrap(),
            None,
            "nothing waiting"
        );
        // Any other change that makes a version folds waiting spend in too.
        store
            .apply_usage_report(
                &UsageReport::new("r", "d3", vec![entry(&id, None, 5, 1)]),
                103,
                false,
            )
            .unwrap();
        store
            .create_project("t", 104, "proj_b", "org_1", None, None)
            .unwrap();
        assert_eq!(store.key(&id).unwrap().spent_microusd, 525);
    }

    #[test]
    fn old_batch_ids_are_pruned_after_the_retention() {
        let mut store = store_with_project();
        let id = key_in(&mut store, Owner::Project("proj_a".into()));
        let report = UsageReport::new("r", "old", vec![entry(&id, None, 1, 1)]);
        store.apply_usage_report(&report, 1000, true).unwrap();
        let later = 1000 + USAGE_BATCH_RETENTION_SECONDS + 1;
        store
            .apply_usage_report(&UsageReport::new("r", "new", vec![]), later, true)
            .unwrap();
        let ids: Vec<String> = store
            .usage_batches(10)
            .unwrap()
            .into_iter()
            .map(|batch| batch.batch_id)
            .collect();
        assert_eq!(ids, ["new"]);
    }
}
