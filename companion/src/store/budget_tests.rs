//! The store's budgets: plans and limits reach the snapshot and compile; usage reports fill the
//! windows they name (pending until a version); adjustments, resets and increases are audited;
//! alerts come once per window and level; prices import as one dated version.

use keyward_engine::budget::{BudgetRecord, PlanRecord, QuotaRecord};
use keyward_engine::calendar::{days_from_civil, Period};
use keyward_engine::snapshot::Policy;
use keyward_engine::usage_report::UsageReport;

use super::test_support::*;
use super::*;

/// Noon UTC on 2026-11-30.
fn noon() -> u64 {
    u64::try_from(days_from_civil(2026, 11, 30) * 86_400 + 12 * 3600).unwrap()
}

fn free_plan() -> PlanRecord {
    PlanRecord {
        id: "free".into(),
        label: Some("Free".into()),
        budgets: vec![],
        quotas: vec![QuotaRecord {
            period: Period::Day,
            requests: Some(50),
            tokens: None,
        }],
        models: Some(vec!["gpt-5.4-nano".into(), "gemini-flash-lite*".into()]),
        rate_limits: None,
    }
}

fn day_budget(cap: u64, soft: Option<u64>) -> LimitsSettings {
    LimitsSettings {
        budgets: vec![BudgetRecord {
            period: Period::Day,
            cap_microusd: Some(cap),
            soft_cap_microusd: soft,
        }],
        ..LimitsSettings::default()
    }
}

fn windowed(key: &str, windows: &[&str], cost: u64) -> UsageReport {
    let mut entry = entry(key, Some("proj_a"), cost, noon());
    entry.key_windows = windows.iter().map(|w| (*w).to_owned()).collect();
    entry.project_windows = vec!["2026-11".into()];
    UsageReport::new(
        "envoy-1",
        &format!("b-{cost}-{}", windows.len()),
        vec![entry],
    )
}

#[test]
fn a_plan_change_reaches_every_key_on_it_in_one_version() {
    let mut store = store_with_project();
    store.set_plan("ops", 1, &free_plan()).unwrap();
    let keys: Vec<String> = (0..3)
        .map(|_| key_in(&mut store, Owner::Project("proj_a".into())))
        .collect();
    let on_plan = LimitsSettings {
        plan: Some("free".into()),
        utc_offset_minutes: Some(60),
        ..LimitsSettings::default()
    };
    for key in &keys {
        store
            .set_limits("ops", 2, &BudgetOwner::Key(key.clone()), &on_plan)
            .unwrap();
    }
    let before = store.policy_version().unwrap();
    let mut business = free_plan();
    business.quotas[0].requests = Some(100);
    store.set_plan("ops", 3, &business).unwrap();
    assert_eq!(store.policy_version().unwrap(), before + 1, "one version");
    let snapshot = store.snapshot(noon()).unwrap();
    assert_eq!(snapshot.plans, vec![business]);
    let policy = Policy::compile(snapshot.clone()).unwrap();
    for key in &keys {
        let compiled = policy.key_by_id(key).unwrap();
        assert_eq!(
            policy
                .plan_at(compiled.plan)
                .unwrap()
                .limits
                .get(Period::Day)
                .requests,
            Some(100)
        );
        assert_eq!(compiled.utc_offset_minutes, 60);
    }
    // A plan in use cannot go; an unknown plan cannot be named.
    assert_eq!(
        store.remove_plan("ops", 4, "free").unwrap_err().code,
        "plan_in_use"
    );
    let unknown = LimitsSettings {
        plan: Some("gold".into()),
        ..LimitsSettings::default()
    };
    let error = store
        .set_limits("ops", 5, &BudgetOwner::Key(keys[0].clone()), &unknown)
        .unwrap_err();
    assert_eq!(error.code, "plan_not_found");
    // What the filter refuses, the store refuses, naming the field.
    let bad = LimitsSettings {
        budgets: vec![BudgetRecord {
            period: Period::Day,
            cap_microusd: Some(5),
            soft_cap_microusd: Some(9),
        }],
        ..LimitsSettings::default()
    };
    let error = store
        .set_limits("ops", 6, &BudgetOwner::Project("proj_a".into()), &bad)
        .unwrap_err();
    assert!(
        error.message.contains("soft_cap_microusd"),
        "{}",
        error.message
    );
    let event = store.audit_events(Some(1)).unwrap().remove(0);
    assert_eq!(event.action, "plan.set");
}

#[test]
fn reported_windows_fill_up_pending_then_published_and_reach_the_snapshot() {
    let mut store = store_with_project();
    let key = key_in(&mut store, Owner::Project("proj_a".into()));
    let owner = BudgetOwner::Key(key.clone());
    store
        .set_limits("ops", 1, &owner, &day_budget(10_000_000, None))
        .unwrap();
    let report = windowed(&key, &["2026-11-30"], 700);
    let ack = store
        .apply_usage_report(&report, noon(), false)
        .unwrap()
        .ack;
    assert_eq!(
        store.snapshot(noon()).unwrap().keys[0]
            .limits
            .as_ref()
            .unwrap()
            .usage
            .len(),
        0,
        "pending: not in the current version"
    );
    assert_eq!(store.publish_pending_spend().unwrap(), Some(ack.version));
    let snapshot = store.snapshot(noon()).unwrap();
    let usage = &snapshot.keys[0].limits.as_ref().unwrap().usage;
    assert_eq!(usage["2026-11-30"].microusd, 700);
    assert_eq!(usage["2026-11-30"].requests, 2);
    assert_eq!(usage["2026-11-30"].tokens, 150);
    let project = snapshot.projects[0].limits.as_ref().unwrap();
    assert_eq!(
        project.usage["2026-11"].microusd, 700,
        "the project's month"
    );
    // A window long over is history, not snapshot content.
    let next_week = noon() + 7 * 86_400;
    assert!(store.snapshot(next_week).unwrap().keys[0]
        .limits
        .as_ref()
        .unwrap()
        .usage
        .is_empty());
    let history = store.window_history(&owner).unwrap();
    assert_eq!(history[0].window, "2026-11-30");
    assert_eq!(history.last().unwrap().window, "total");
    // Garbage window ids are skipped with a warning, never fatal.
    let bad = windowed(&key, &["yesterday"], 5);
    let applied = store.apply_usage_report(&bad, noon(), true).unwrap();
    assert!(
        applied.warnings[0].contains("not a window id"),
        "{applied:?}"
    );
}

#[test]
fn adjustments_and_resets_are_audited_on_keys_and_projects() {
    let mut store = store_with_project();
    let key = key_in(&mut store, Owner::Project("proj_a".into()));
    let owner = BudgetOwner::Key(key.clone());
    store
        .set_limits("ops", 1, &owner, &day_budget(10_000_000, None))
        .unwrap();
    store
        .apply_usage_report(&windowed(&key, &["2026-11-30"], 900), noon(), true)
        .unwrap();
    let day = WindowTarget::Current(Period::Day);
    let delta = UsageDelta {
        microusd: -400,
        ..UsageDelta::default()
    };
    let change = store
        .adjust_usage("alice", noon(), &owner, &day, delta, "refund #42")
        .unwrap();
    assert_eq!(
        (change.before.spent_microusd, change.after.spent_microusd),
        (900, 500)
    );
    let event = store.audit_events(Some(1)).unwrap().remove(0);
    assert_eq!(
        (event.actor.as_str(), event.action.as_str()),
        ("alice", "spend.adjust")
    );
    assert_eq!(event.details["reason"], "refund #42");
    assert_eq!(event.details["window"], "2026-11-30");
    let snapshot = store.snapshot(noon()).unwrap();
    assert_eq!(
        snapshot.keys[0].limits.as_ref().unwrap().usage["2026-11-30"].microusd,
        500
    );
    // The lifetime figure, on a project; never below zero.
    let project = BudgetOwner::Project("proj_a".into());
    let change = store
        .adjust_usage(
            "alice",
            noon(),
            &project,
            &WindowTarget::Total,
            UsageDelta {
                microusd: -1_000_000,
                ..UsageDelta::default()
            },
            "credit",
        )
        .unwrap();
    assert_eq!(change.after.spent_microusd, 0);
    assert_eq!(store.project("proj_a").unwrap().spent_microusd, 0);
    // A reset zeroes a window by id; it needs a reason.
    let target = WindowTarget::parse("2026-11").unwrap();
    assert_eq!(
        store
            .reset_usage("alice", noon(), &project, &target, " ")
            .unwrap_err()
            .code,
        "missing_reason"
    );
    let reset = store
        .reset_usage("alice", noon(), &project, &target, "new contract")
        .unwrap();
    assert_eq!(reset.before.spent_microusd, 900);
    assert_eq!((reset.after.spent_microusd, reset.after.requests), (0, 0));
    assert_eq!(
        store.audit_events(Some(1)).unwrap()[0].action,
        "spend.reset"
    );
    assert!(WindowTarget::parse("fortnight").is_err());
}

#[test]
fn increases_raise_only_what_is_limited_and_end_by_themselves() {
    let mut store = store_with_project();
    let key = key_in(&mut store, Owner::Project("proj_a".into()));
    let owner = BudgetOwner::Key(key.clone());
    store
        .set_limits("ops", 1, &owner, &day_budget(10_000_000, None))
        .unwrap();
    let increase = Increase {
        period: Period::Day,
        microusd: 5_000_000,
        requests: 0,
        tokens: 0,
        expires_at: noon() + 3600,
    };
    let view = store
        .raise_limit("alice", noon(), &owner, increase, "launch day")
        .unwrap();
    assert_eq!(view.reason, "launch day");
    let policy = Policy::compile(store.snapshot(noon()).unwrap()).unwrap();
    let compiled = policy.key_by_id(&key).unwrap();
    let limits = keyward_engine::window_admission::Owner::key(&policy, compiled);
    assert_eq!(limits.limits(Period::Day, noon()).cap, Some(15_000_000));
    assert_eq!(
        limits.limits(Period::Day, noon() + 3600).cap,
        Some(10_000_000),
        "ended, without a new version"
    );
    let requests = Increase {
        requests: 10,
        microusd: 0,
        ..increase
    };
    assert_eq!(
        store
            .raise_limit("alice", noon(), &owner, requests, "x")
            .unwrap_err()
            .code,
        "nothing_to_raise",
        "no day quota to raise"
    );
    let past = Increase {
        expires_at: noon(),
        ..increase
    };
    assert!(store
        .raise_limit("alice", noon(), &owner, past, "x")
        .is_err());
    // Once over, it is history: not in the snapshot any more, still listed.
    let later = store.snapshot(noon() + 7200).unwrap();
    assert!(later.keys[0].limits.as_ref().unwrap().increases.is_empty());
    assert_eq!(store.increases(&owner).unwrap().len(), 1);
}

#[test]
fn alerts_come_once_per_window_and_level() {
    let mut store = store_with_project();
    let key = key_in(&mut store, Owner::Project("proj_a".into()));
    let owner = BudgetOwner::Key(key.clone());
    store
        .set_limits("ops", 1, &owner, &day_budget(1000, Some(500)))
        .unwrap();
    store
        .apply_usage_report(&windowed(&key, &["2026-11-30"], 600), noon(), true)
        .unwrap();
    let alerts = store.alerts(10).unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].level.as_str(), alerts[0].window.as_str()),
        ("soft_cap", "2026-11-30")
    );
    assert!(alerts[0].payload["text"]
        .as_str()
        .unwrap()
        .contains("soft cap"));
    // More spend past the soft cap: no second soft-cap alert; the cap adds one.
    store
        .apply_usage_report(&windowed(&key, &["2026-11-30"], 100), noon(), true)
        .unwrap();
    assert_eq!(store.alerts(10).unwrap().len(), 1);
    store
        .apply_usage_report(&windowed(&key, &["2026-11-30"], 400), noon(), true)
        .unwrap();
    let levels: Vec<String> = store
        .alerts(10)
        .unwrap()
        .into_iter()
        .map(|a| a.level)
        .collect();
    assert_eq!(levels.len(), 2);
    assert!(levels.contains(&"cap".to_owned()));
    // The next day has its own alerts.
    store
        .apply_usage_report(&windowed(&key, &["2026-12-01"], 501), noon() + 86_400, true)
        .unwrap();
    assert_eq!(store.alerts(10).unwrap().len(), 3);
    // Delivery: due, attempted, delivered.
    let due = store.alerts_due(noon() + 86_400, 10).unwrap();
    assert_eq!(due.len(), 3);
    store
        .alert_attempted(&due[0], noon() + 86_400, Some("503"))
        .unwrap();
    store
        .alert_attempted(&due[1], noon() + 86_400, None)
        .unwrap();
    let due = store.alerts_due(noon() + 86_400, 10).unwrap();
    assert_eq!(
        due.len(),
        0,
        "the third is claimed (being posted), one delivered, one backing off"
    );
    let due = store.alerts_due(noon() + 86_402, 10).unwrap();
    assert_eq!(due.len(), 1, "the failed one, retried after its pause");
    assert_eq!(
        store.alerts_due(noon() + 86_400 + 61, 10).unwrap().len(),
        1,
        "an expired claim"
    );
}

#[test]
fn a_price_import_is_one_dated_version() {
    let mut store = Store::in_memory().unwrap();
    store.set_price("a", 1, &price("old-model", 1, 2)).unwrap();
    let version = store.policy_version().unwrap();
    let imported = store
        .import_prices(
            "a",
            2,
            &[
                price("gpt-4o", 2_500_000, 10_000_000),
                price("old-model", 1, 2),
            ],
            "litellm",
            "2026-11-01",
            true,
        )
        .unwrap();
    assert_eq!(
        (imported.added, imported.unchanged, imported.removed),
        (1, 1, 0)
    );
    assert_eq!(store.policy_version().unwrap(), version + 1);
    let catalog = store.snapshot(3).unwrap().price_catalog.unwrap();
    assert_eq!(catalog.as_of.as_deref(), Some("2026-11-01"));
    assert_eq!(catalog.version, 2, "the manual price was version 1");
    let replaced = store
        .import_prices(
            "a",
            3,
            &[price("gpt-4o", 1, 1)],
            "litellm",
            "2026-11-02",
            true,
        )
        .unwrap();
    assert_eq!((replaced.changed, replaced.removed), (1, 1));
    assert!(store
        .import_prices("a", 4, &[], "litellm", "November", false)
        .is_err());
}
