//! What this VM's keys did since the last flush (spend, requests, tokens, last use), kept in
//! memory per request and merged into one shared-data entry on the VM's tick, from which the
//! usage reporter takes its batches. Per request this costs no host call.

use std::collections::HashMap;

use keyward_engine::effects::UsageRecord;
use keyward_engine::usage_report::UsageEntry;
use keyward_engine::window_counter::OwnerKind;

use crate::host::{LogLevel, SharedData, Telemetry};
use crate::shared_record::{update, Record};

pub const PENDING_ENTRY: &str = "keyward/usage/pending";
/// Entries the shared pending record may hold; past it, VMs keep their activity until the
/// reporter has drained it (so the record, copied on every read, stays small).
const MAX_PENDING_ENTRIES: usize = 20_000;

/// Which entry usage goes into: the key, the project charged, the windows counted (usage of
/// different windows must reach the control plane apart, to be added to each its own) and the
/// provider key used (each its own last use).
type EntryKey = (
    String,
    Option<String>,
    Vec<String>,
    Vec<String>,
    Option<String>,
);

fn entry_key(entry: &UsageEntry) -> EntryKey {
    (
        entry.key_id.clone(),
        entry.project.clone(),
        entry.key_windows.clone(),
        entry.project_windows.clone(),
        entry.provider_key.clone(),
    )
}

/// Usage not yet handed to the reporter, keyed by (key id, project charged, windows, provider
/// key).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Activity {
    entries: HashMap<EntryKey, UsageEntry>,
    /// Unix seconds at the VM's last tick: last-use times need no clock read per request.
    clock_s: u64,
}

impl Activity {
    pub fn clock_s(&self) -> u64 {
        self.clock_s
    }

    pub fn set_clock_s(&mut self, now_s: u64) {
        self.clock_s = now_s;
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn record(&mut self, record: &UsageRecord<'_>, now_s: u64) {
        let (key_id, project, usage) = (record.key_id, record.project, record.usage);
        let windows = &record.windows;
        let provider_key = record.provider_key.map(|used| used.label());
        let key_windows = windows.ids(OwnerKind::Key);
        let project_windows = windows.ids(OwnerKind::Project);
        let entry = self
            .entries
            .entry((
                key_id.to_owned(),
                project.map(str::to_owned),
                key_windows.clone(),
                project_windows.clone(),
                provider_key.clone(),
            ))
            .or_insert_with(|| UsageEntry {
                key_id: key_id.to_owned(),
                project: project.map(str::to_owned),
                cost_microusd: 0,
                requests: 0,
                input_tokens: 0,
                output_tokens: 0,
                last_used_at: None,
                key_windows,
                project_windows,
                provider_key,
            });
        entry.cost_microusd = entry.cost_microusd.saturating_add(usage.cost_microusd);
        entry.requests = entry.requests.saturating_add(usage.requests);
        entry.input_tokens = entry.input_tokens.saturating_add(usage.input_tokens);
        entry.output_tokens = entry.output_tokens.saturating_add(usage.output_tokens);
        if usage.requests > 0 {
            entry.last_used_at = entry.last_used_at.max(Some(now_s));
        }
    }

    fn merge(&mut self, other: Vec<UsageEntry>) {
        for entry in other {
            let key = entry_key(&entry);
            match self.entries.get_mut(&key) {
                Some(mine) => {
                    mine.cost_microusd = mine.cost_microusd.saturating_add(entry.cost_microusd);
                    mine.requests = mine.requests.saturating_add(entry.requests);
                    mine.input_tokens = mine.input_tokens.saturating_add(entry.input_tokens);
                    mine.output_tokens = mine.output_tokens.saturating_add(entry.output_tokens);
                    mine.last_used_at = mine.last_used_at.max(entry.last_used_at);
                }
                None => {
                    self.entries.insert(key, entry);
                }
            }
        }
    }

    pub fn into_entries(self) -> Vec<UsageEntry> {
        let mut entries: Vec<UsageEntry> = self.entries.into_values().collect();
        entries.sort_by_key(entry_key);
        entries
    }
}

/// One request's contribution (the engine's settlement says what it is).
pub use keyward_engine::settlement::Usage;

/// The shared pending record: JSON, since only ticks and the reporter read it.
#[derive(Debug, Default)]
pub struct PendingUsage(pub Vec<UsageEntry>);

impl Record for PendingUsage {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).unwrap_or_default()
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok().map(PendingUsage)
    }
}

/// Merges this VM's activity into the shared pending record. On failure or when the record is
/// full, the activity stays with the VM for the next tick.
pub fn flush(host: &(impl SharedData + Telemetry), activity: &mut Activity) {
    if activity.is_empty() {
        return;
    }
    let clock_s = activity.clock_s;
    let mut mine = std::mem::take(activity);
    activity.clock_s = clock_s;
    mine.clock_s = clock_s;
    let outcome = update(host, PENDING_ENTRY, |pending: &mut PendingUsage| {
        if pending.0.len().saturating_add(mine.len()) > MAX_PENDING_ENTRIES {
            return (false, false);
        }
        let mut merged = Activity::default();
        merged.merge(std::mem::take(&mut pending.0));
        merged.merge(mine.clone().into_entries());
        pending.0 = merged.into_entries();
        (true, true)
    });
    match outcome {
        Ok(true) => {}
        Ok(false) => activity.merge(mine.into_entries()),
        Err(error) => {
            host.log(
                LogLevel::Warn,
                &format!(
                    "keyward metering: cannot hand usage to the reporter ({error}); kept for the next tick",
                ),
            );
            activity.merge(mine.into_entries());
        }
    }
}

/// A request's usage record, for tests.
#[cfg(test)]
pub(crate) fn used<'a>(
    key_id: &'a str,
    project: Option<&'a str>,
    windows: &keyward_engine::window_counter::CountedWindows,
    usage: Usage,
) -> UsageRecord<'a> {
    UsageRecord {
        key_id,
        project,
        usage,
        windows: *windows,
        provider_key: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_engine::provider::{KeyOwnerKind, Provider, ProviderKeyUse};
    use keyward_engine::window_counter::CountedWindows;

    #[test]
    fn records_accumulate_per_key_and_project() {
        let mut activity = Activity::default();
        let one = Usage {
            cost_microusd: 10,
            requests: 1,
            input_tokens: 3,
            output_tokens: 4,
        };
        let none = CountedWindows::default();
        activity.record(&used("k1", Some("p1"), &none, one), 100);
        activity.record(&used("k1", Some("p1"), &none, one), 200);
        activity.record(&used("k1", Some("p2"), &none, one), 150);
        activity.record(&used("k1", Some("p1"), &none, Usage::default()), 300);
        let day = CountedWindows {
            key: [Some(20_422), None, None],
            project: [None; 3],
        };
        activity.record(&used("k1", Some("p1"), &day, one), 400);
        activity.record(&used("k1", Some("p1"), &day, one), 400);
        let entries = activity.into_entries();
        assert_eq!(
            entries.len(),
            3,
            "the windowed usage is an entry of its own"
        );
        assert_eq!(entries[1].key_windows, ["2025-11-30"]);
        assert_eq!(entries[1].requests, 2);
        assert_eq!(entries[0].project.as_deref(), Some("p1"));
        assert_eq!(entries[0].cost_microusd, 20);
        assert_eq!(entries[0].requests, 2);
        assert_eq!(
            entries[0].last_used_at,
            Some(200),
            "a zero-request record is no use"
        );
    }

    #[test]
    fn each_provider_key_used_is_an_entry_of_its_own() {
        let mut activity = Activity::default();
        let one = Usage {
            requests: 1,
            ..Usage::default()
        };
        let none = CountedWindows::default();
        let with = |owner| UsageRecord {
            provider_key: Some(ProviderKeyUse {
                provider: Provider::Openai,
                owner,
            }),
            ..used("k1", Some("p1"), &none, one)
        };
        activity.record(&with(KeyOwnerKind::Project), 100);
        activity.record(&with(KeyOwnerKind::Project), 300);
        activity.record(&with(KeyOwnerKind::Org), 200);
        activity.record(&used("k1", Some("p1"), &none, one), 50);
        let entries = activity.into_entries();
        let seen: Vec<_> = entries
            .iter()
            .map(|entry| {
                (
                    entry.provider_key.as_deref(),
                    entry.requests,
                    entry.last_used_at,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (None, 1, Some(50)),
                (Some("org/openai"), 1, Some(200)),
                (Some("project/openai"), 2, Some(300)),
            ]
        );
    }
}
