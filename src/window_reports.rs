//! The usage reporter's part for budget and quota windows: when a batch is formed, each window
//! counter it names records what was sent (spend, requests, tokens); when the control plane
//! acknowledges the batch, each records the snapshot version that includes it. The same
//! bookkeeping as the lifetime spend counters, per window.

use keyward_engine::calendar::Window;
use keyward_engine::usage_report::UsageEntry;
use keyward_engine::window_counter::{window_counter_entry, OwnerKind, WindowCounter};
use serde::{Deserialize, Serialize};

use crate::host::{HostError, SharedData};
use crate::shared_record::update;

/// A window counter's reported totals (spend, requests, tokens) after a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowTotal {
    pub entry: String,
    pub window: i64,
    pub totals: [u64; 3],
}

/// Marks the usage of `entry` as sent on every window counter it names, and keeps the totals
/// to acknowledge. A window id that does not parse, or a slot that has moved on to a newer
/// window, is skipped: that window is over on this Envoy.
pub fn mark_windows_reported(
    host: &impl SharedData,
    entry: &UsageEntry,
    totals: &mut Vec<WindowTotal>,
) -> Result<(), HostError> {
    let owners = [
        (
            OwnerKind::Key,
            Some(entry.key_id.as_str()),
            &entry.key_windows,
        ),
        (
            OwnerKind::Project,
            entry.project.as_deref(),
            &entry.project_windows,
        ),
    ];
    let tokens = entry.input_tokens.saturating_add(entry.output_tokens);
    for (owner, id, windows) in owners {
        let Some(id) = id else { continue };
        for window in windows.iter().filter_map(|text| Window::parse(text)) {
            let name = window_counter_entry(owner, id, window);
            let reported = update(host, &name, |counter: &mut WindowCounter| {
                if !counter.counts(window.index) {
                    return (false, None);
                }
                let sent = [
                    counter.spend.mark_reported(entry.cost_microusd),
                    counter.requests.mark_reported(entry.requests),
                    counter.tokens.mark_reported(tokens),
                ];
                (true, Some(sent))
            })?;
            if let Some(sent) = reported {
                match totals
                    .iter_mut()
                    .find(|total| total.entry == name && total.window == window.index)
                {
                    Some(total) => {
                        for (kept, new) in total.totals.iter_mut().zip(sent) {
                            *kept = (*kept).max(new);
                        }
                    }
                    None => totals.push(WindowTotal {
                        entry: name,
                        window: window.index,
                        totals: sent,
                    }),
                }
            }
        }
    }
    Ok(())
}

/// The control plane acknowledged a batch: snapshot `version` includes these totals.
pub fn acknowledge_windows(
    host: &impl SharedData,
    totals: &[WindowTotal],
    version: u64,
) -> Result<(), HostError> {
    for total in totals {
        update(host, &total.entry, |counter: &mut WindowCounter| {
            if !counter.counts(total.window) {
                return (false, ());
            }
            let [spend, requests, tokens] = total.totals;
            counter.spend.acknowledge(version, spend);
            counter.requests.acknowledge(version, requests);
            counter.tokens.acknowledge(version, tokens);
            (true, ())
        })?;
    }
    Ok(())
}
