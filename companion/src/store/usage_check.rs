//! Checks a usage report against the store before anything of it is applied.
//!
//! A data plane's token can report usage, so whoever holds a data plane's configuration can send
//! a report. What such a report can claim is bounded here, entry by entry, and a batch that
//! breaks any rule is refused whole (and kept for audit by the caller):
//!
//! - the key exists, and the project it charges is its own (a project key) or one of its org's
//!   (an org key): charging another project, let alone another org's, is refused, not warned;
//! - the last use is not in the future (beyond a small clock skew): a use "in 2100" would hide a
//!   key from `audit --unused-days`;
//! - the cost is what the requests could have cost: at most, per request, the reservation
//!   ceiling (what a request is charged without usage), plus the tokens reported at the highest
//!   price in the price table; tokens per request are bounded too;
//! - the whole batch costs at most a configured amount;
//! - the budget windows an entry names parse, name each period at most once per owner, and none
//!   starts in the future: charging next month in advance would burn a budget before its time.

use std::collections::HashMap;

use keyward_engine::calendar::Window;
use keyward_engine::usage_report::{UsageEntry, UsageReport};

use super::keys::find_key;
use super::projects::find_project;
use super::sql::Sql;
use super::Store;
use crate::error::Error;

/// The bounds a report must stay within (`keyward serve` options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageLimits {
    /// The most a request is charged without usage: the filters' `reservation_ceiling_microusd`.
    pub max_request_charge_microusd: u64,
    /// Input plus output tokens one request may report.
    pub max_tokens_per_request: u64,
    /// The most one batch may add up to, whatever its entries.
    pub max_batch_cost_microusd: u64,
    /// How far ahead of the control plane's clock a data plane's clock may run.
    pub clock_skew_seconds: u64,
}

impl Default for UsageLimits {
    fn default() -> Self {
        UsageLimits {
            max_request_charge_microusd: 1_000_000,
            max_tokens_per_request: 2_000_000,
            max_batch_cost_microusd: 1_000_000_000,
            clock_skew_seconds: 300,
        }
    }
}

/// Who owns a key: its project, or its org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOwner {
    pub project: Option<String>,
    pub org: Option<String>,
}

/// What the checks read from the store.
#[derive(Debug, Default)]
pub struct ReportFacts {
    /// Every key the report names: `None` when unknown.
    pub keys: HashMap<String, Option<KeyOwner>>,
    /// Every project the report names, with its org: `None` when unknown.
    pub projects: HashMap<String, Option<String>>,
    /// The highest price per million tokens of input (cached and cache writes included) and of
    /// output in the price table; zero when no model is priced.
    pub max_input_price: u64,
    pub max_output_price: u64,
}

/// The most `requests` requests with these tokens can have cost.
fn cost_bound(
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    facts: &ReportFacts,
    limits: &UsageLimits,
) -> u128 {
    let priced = u128::from(input_tokens) * u128::from(facts.max_input_price)
        + u128::from(output_tokens) * u128::from(facts.max_output_price);
    u128::from(requests) * u128::from(limits.max_request_charge_microusd)
        + priced.div_ceil(1_000_000)
}

/// The farthest ahead of UTC a window's owner can be (UTC+14:00): its windows start that much
/// earlier than the same ids at UTC.
const MAX_OFFSET_SECONDS: u64 = 14 * 3600;

/// What is wrong with the window ids of `entry` (see the module documentation).
fn window_violations(
    at: &str,
    entry: &UsageEntry,
    limits: &UsageLimits,
    now: u64,
    found: &mut Vec<String>,
) {
    let latest_start = now
        .saturating_add(limits.clock_skew_seconds)
        .saturating_add(MAX_OFFSET_SECONDS);
    for (owner, ids) in [
        ("key", &entry.key_windows),
        ("project", &entry.project_windows),
    ] {
        if owner == "project" && !ids.is_empty() && entry.project.is_none() {
            found.push(format!("{at}: project windows without a project"));
        }
        let mut periods = Vec::new();
        for id in ids {
            let shown = id.chars().take(40).collect::<String>();
            let Some(window) = Window::parse(id) else {
                found.push(format!("{at}: {owner} window {shown:?} is not a window id"));
                continue;
            };
            if periods.contains(&window.period) {
                found.push(format!(
                    "{at}: two {owner} windows of one period ({shown:?})"
                ));
            }
            periods.push(window.period);
            let (start_utc, _) = window.bounds(0);
            // A start before 1970 is in the past whatever the clock says.
            if u64::try_from(start_utc).is_ok_and(|start| start > latest_start) {
                found.push(format!(
                    "{at}: {owner} window {shown:?} has not started (now {now})"
                ));
            }
        }
    }
}

/// Everything wrong with `report`, one line each (at most a few per entry); empty when it may be
/// applied.
pub fn violations(
    report: &UsageReport,
    facts: &ReportFacts,
    limits: &UsageLimits,
    now: u64,
) -> Vec<String> {
    let mut found = Vec::new();
    let mut total: u128 = 0;
    for (position, entry) in report.entries.iter().enumerate() {
        let at = format!("entries[{position}]");
        let key = format!("{:?}", entry.key_id.chars().take(80).collect::<String>());
        total += u128::from(entry.cost_microusd);
        match facts.keys.get(&entry.key_id) {
            None | Some(None) => found.push(format!("{at}: unknown key {key}")),
            Some(Some(owner)) => {
                if let Some(project) = &entry.project {
                    let charges_own = match (&owner.project, &owner.org) {
                        (Some(own), _) => own == project,
                        (None, Some(org)) => facts
                            .projects
                            .get(project)
                            .is_some_and(|project_org| project_org.as_ref() == Some(org)),
                        (None, None) => false,
                    };
                    if !charges_own {
                        found.push(format!(
                            "{at}: key {key} cannot charge project {:?} (unknown, or neither \
                             the key's own nor of its org)",
                            project.chars().take(80).collect::<String>()
                        ));
                    }
                }
            }
        }
        if let Some(last_used_at) = entry.last_used_at {
            if last_used_at > now.saturating_add(limits.clock_skew_seconds) {
                found.push(format!(
                    "{at}: last use {last_used_at} is in the future (now {now})"
                ));
            }
        }
        window_violations(&at, entry, limits, now, &mut found);
        let tokens = u128::from(entry.input_tokens) + u128::from(entry.output_tokens);
        if entry.requests == 0 && (entry.cost_microusd > 0 || tokens > 0) {
            found.push(format!("{at}: cost or tokens without any request"));
        } else if tokens > u128::from(entry.requests) * u128::from(limits.max_tokens_per_request) {
            found.push(format!(
                "{at}: {tokens} tokens in {} requests, more than {} a request",
                entry.requests, limits.max_tokens_per_request
            ));
        } else {
            let bound = cost_bound(
                entry.requests,
                entry.input_tokens,
                entry.output_tokens,
                facts,
                limits,
            );
            if u128::from(entry.cost_microusd) > bound {
                found.push(format!(
                    "{at}: cost {} micro-USD is more than {} requests with these tokens can \
                     cost under the price table ({bound})",
                    entry.cost_microusd, entry.requests
                ));
            }
        }
    }
    if total > u128::from(limits.max_batch_cost_microusd) {
        found.push(format!(
            "the batch adds up to {total} micro-USD, more than the {} one batch may",
            limits.max_batch_cost_microusd
        ));
    }
    found
}

fn report_facts(sql: &mut dyn Sql, report: &UsageReport) -> Result<ReportFacts, Error> {
    let mut facts = ReportFacts::default();
    for entry in &report.entries {
        if !facts.keys.contains_key(&entry.key_id) {
            let owner = find_key(sql, &entry.key_id)?.map(|key| KeyOwner {
                project: key.view.project,
                org: key.view.org,
            });
            facts.keys.insert(entry.key_id.clone(), owner);
        }
        if let Some(project) = &entry.project {
            if !facts.projects.contains_key(project) {
                let org = find_project(sql, project)?.map(|found| found.org);
                facts.projects.insert(project.clone(), org);
            }
        }
    }
    Ok(facts)
}

impl Store {
    /// What is wrong with `report` under `limits` at `now`, read in one transaction (see the
    /// module documentation); empty when it may be applied.
    pub fn usage_report_violations(
        &mut self,
        report: &UsageReport,
        limits: &UsageLimits,
        now: u64,
    ) -> Result<Vec<String>, Error> {
        let prices = self.prices()?;
        let mut facts = self.read(|sql| report_facts(sql, report))?;
        for price in &prices {
            let input_side = price
                .input_microusd_per_mtok
                .max(price.cached_input_microusd_per_mtok.unwrap_or(0))
                .max(price.cache_write_microusd_per_mtok.unwrap_or(0));
            facts.max_input_price = facts.max_input_price.max(input_side);
            facts.max_output_price = facts.max_output_price.max(price.output_microusd_per_mtok);
        }
        Ok(violations(report, &facts, limits, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;
    use crate::store::Owner;
    use keyward_engine::usage_report::UsageEntry;

    fn entry(key: &str, project: Option<&str>, cost: u64, requests: u64) -> UsageEntry {
        UsageEntry {
            key_id: key.into(),
            project: project.map(str::to_owned),
            cost_microusd: cost,
            requests,
            input_tokens: 1000,
            output_tokens: 500,
            last_used_at: Some(1_000),
            key_windows: vec![],
            project_windows: vec![],
            provider_key: None,
        }
    }

    #[test]
    fn windows_must_parse_appear_once_per_period_and_have_started() {
        let limits = UsageLimits::default();
        // 2026-12-05T12:00:00Z.
        let now = 1_796_472_000;
        let check = |key_windows: &[&str], project_windows: &[&str], project: Option<&str>| {
            let mut one = entry("k", project, 0, 1);
            one.key_windows = key_windows.iter().map(|w| (*w).to_owned()).collect();
            one.project_windows = project_windows.iter().map(|w| (*w).to_owned()).collect();
            let mut found = Vec::new();
            window_violations("e", &one, &limits, now, &mut found);
            found
        };
        assert!(check(
            &["2026-12-05", "2026-W49", "2026-12"],
            &["2026-12-06"],
            Some("p")
        )
        .is_empty());
        // Last month's usage reported late is still that month's.
        assert!(check(&["2026-11"], &[], None).is_empty());
        assert!(check(&["2026-13"], &[], None)[0].contains("not a window id"));
        assert!(check(&["2026-12-05", "2026-12-04"], &[], None)[0].contains("two key windows"));
        assert!(check(&["2027-01"], &[], None)[0].contains("has not started"));
        assert!(check(&["2026-12-07"], &[], None)[0].contains("has not started"));
        assert!(check(&[], &["2026-12-05"], None)[0].contains("without a project"));
    }

    #[test]
    fn the_forged_report_of_issue_14_is_refused_entry_by_entry() {
        let mut store = store_with_project();
        store
            .create_project("a", 1, "proj_other", "org_2", None, None)
            .unwrap();
        store
            .set_price("a", 2, &price("gpt-4o", 2_500_000, 10_000_000))
            .unwrap();
        let key = key_in(&mut store, Owner::Project("proj_a".into()));
        let limits = UsageLimits::default();
        let now = 1_000;
        let check = |store: &mut Store, entries: Vec<UsageEntry>| {
            store
                .usage_report_violations(&UsageReport::new("r", "b", entries), &limits, now)
                .unwrap()
        };
        // Honest: 1000 input and 500 output tokens of gpt-4o cost 7500 micro-USD.
        assert!(check(&mut store, vec![entry(&key, Some("proj_a"), 7_500, 1)]).is_empty());
        // Missing usage is charged up to the reservation ceiling.
        let mut no_usage = entry(&key, Some("proj_a"), 1_000_000, 1);
        no_usage.input_tokens = 0;
        no_usage.output_tokens = 0;
        assert!(check(&mut store, vec![no_usage]).is_empty());

        // $99 on one request, a last use in 2100, another org's project, an unknown key.
        let mut forged = entry(&key, Some("proj_a"), 99_000_000, 1);
        forged.last_used_at = Some(4_102_444_800);
        let found = check(
            &mut store,
            vec![
                forged,
                entry(&key, Some("proj_other"), 10, 1),
                entry("nobody000001", None, 10, 1),
                entry(&key, Some("proj_gone"), 10, 1),
            ],
        );
        assert_eq!(found.len(), 5, "{found:#?}");
        assert!(found[0].starts_with("entries[0]: last use") && found[0].contains("future"));
        assert!(
            found[1].starts_with("entries[0]: cost 99000000"),
            "{}",
            found[1]
        );
        assert!(found[2].contains("entries[1]: key") && found[2].contains("\"proj_other\""));
        assert!(found[3].starts_with("entries[2]: unknown key"));
        assert!(found[4].starts_with("entries[3]") && found[4].contains("proj_gone"));

        // Tokens per request, requests of nothing, and the batch total.
        let mut huge = entry(&key, None, 0, 1);
        huge.input_tokens = 10_000_000;
        assert!(check(&mut store, vec![huge])[0].contains("tokens in 1 requests"));
        assert!(check(&mut store, vec![entry(&key, None, 5, 0)])[0].contains("without any"));
        let many: Vec<UsageEntry> = (0..1001)
            .map(|_| {
                let mut e = entry(&key, None, 1_000_000, 1);
                e.input_tokens = 0;
                e.output_tokens = 0;
                e
            })
            .collect();
        let found = check(&mut store, many);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("the batch adds up"));
    }

    #[test]
    fn org_keys_may_charge_their_orgs_projects_only() {
        let mut store = store_with_org_projects();
        let org_key = key_in(&mut store, Owner::Org("org_1".into()));
        let limits = UsageLimits::default();
        let mut ok = entry(&org_key, Some("proj_b"), 0, 1);
        ok.input_tokens = 0;
        let report = UsageReport::new("r", "b", vec![ok.clone(), entry(&org_key, None, 0, 1)]);
        assert!(store
            .usage_report_violations(&report, &limits, 1_000)
            .unwrap()
            .is_empty());
        let report = UsageReport::new("r", "b", vec![entry(&org_key, Some("proj_x"), 0, 1)]);
        assert_eq!(
            store
                .usage_report_violations(&report, &limits, 1_000)
                .unwrap()
                .len(),
            1
        );
    }
}
