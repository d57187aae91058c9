//! The live counters of budget and quota windows in shared data: one record per owner (key or
//! project) and period, holding the window it counts, its spend, its requests and its tokens.
//! Each figure keeps the [`SpendCounter`] bookkeeping (reserved, settled, reported,
//! acknowledged), so a window's figure is neither counted twice nor dropped while a snapshot
//! is on its way, exactly as for lifetime spend.
//!
//! Two slots per owner and period, chosen by the window number's parity: a new window takes
//! the slot of the one before last (starting from zero), so the counter starts over exactly at
//! the boundary in every Envoy, without a push, while requests admitted just before it still
//! settle on the previous window's slot. Shared data cannot delete entries, so this also bounds
//! the entries to two per owner and period however long Envoy runs.

use crate::calendar::{Period, Window};
use crate::metering::SpendCounter;

pub const WINDOW_COUNTER_PREFIX: &str = "keyward/window/";

/// Whose window: the key's own, or the project's (shared by every key acting on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OwnerKind {
    Key,
    Project,
}

impl OwnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::Key => "key",
            OwnerKind::Project => "project",
        }
    }
}

/// The shared-data entry of the slot that counts `window` for an owner.
pub fn window_counter_entry(owner: OwnerKind, id: &str, window: Window) -> String {
    format!(
        "{WINDOW_COUNTER_PREFIX}{}/{id}/{}.{}",
        owner.as_str(),
        window.period.as_str(),
        window.index.rem_euclid(2)
    )
}

/// One slot: the window it counts (`None` before its first write) and that window's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowCounter {
    pub window: Option<i64>,
    pub spend: SpendCounter,
    pub requests: SpendCounter,
    pub tokens: SpendCounter,
}

impl WindowCounter {
    /// Makes the slot count window `index`: a slot still holding an older (or any other) window
    /// starts over from zero.
    pub fn roll_to(&mut self, index: i64) {
        if self.window != Some(index) {
            *self = WindowCounter {
                window: Some(index),
                ..WindowCounter::default()
            };
        }
    }

    /// Whether the slot still counts window `index` (a request that outlived two windows finds
    /// its slot taken by a newer one, and leaves it alone).
    pub fn counts(&self, index: i64) -> bool {
        self.window == Some(index)
    }

    /// `w1 <window>|<spend>|<requests>|<tokens>`, each figure as [`SpendCounter::encode`].
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = format!(
            "w1 {}",
            self.window.map_or("-".to_owned(), |w| w.to_string())
        )
        .into_bytes();
        for figure in [&self.spend, &self.requests, &self.tokens] {
            bytes.push(b'|');
            bytes.extend(figure.encode());
        }
        bytes
    }

    /// `None` for anything [`WindowCounter::encode`] did not write: never read as zero.
    pub fn decode(bytes: &[u8]) -> Option<WindowCounter> {
        let text = core::str::from_utf8(bytes).ok()?;
        let mut parts = text.split('|');
        let window = match parts.next()?.strip_prefix("w1 ")? {
            "-" => None,
            number => Some(number.parse().ok()?),
        };
        let mut figure = || SpendCounter::decode(parts.next()?.as_bytes());
        let counter = WindowCounter {
            window,
            spend: figure()?,
            requests: figure()?,
            tokens: figure()?,
        };
        parts.next().is_none().then_some(counter)
    }
}

/// The windows one request was counted in, per owner and period (slot order of
/// [`Period::slot`]): what its settlement and its usage report name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountedWindows {
    pub key: [Option<i64>; 3],
    pub project: [Option<i64>; 3],
}

impl CountedWindows {
    pub fn is_empty(&self) -> bool {
        self.key.iter().chain(&self.project).all(Option::is_none)
    }

    /// Each counted window with its owner.
    pub fn each(&self) -> impl Iterator<Item = (OwnerKind, Window)> + '_ {
        let expand = |owner: OwnerKind, slots: &[Option<i64>; 3]| {
            Period::WINDOWED
                .into_iter()
                .zip(*slots)
                .filter_map(move |(period, index)| {
                    index.map(|index| (owner, Window { period, index }))
                })
        };
        expand(OwnerKind::Key, &self.key).chain(expand(OwnerKind::Project, &self.project))
    }

    /// The window ids per owner, as a usage report carries them.
    pub fn ids(&self, owner: OwnerKind) -> Vec<String> {
        self.each()
            .filter(|(kind, _)| *kind == owner)
            .map(|(_, window)| window.id())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn slots_alternate_and_start_over_on_a_new_window() {
        let day = |index| Window {
            period: Period::Day,
            index,
        };
        let today = window_counter_entry(OwnerKind::Key, "k1", day(20_422));
        let tomorrow = window_counter_entry(OwnerKind::Key, "k1", day(20_423));
        assert_eq!(today, "keyward/window/key/k1/day.0");
        assert_eq!(tomorrow, "keyward/window/key/k1/day.1");
        assert_eq!(
            window_counter_entry(OwnerKind::Project, "p", day(20_424)),
            "keyward/window/project/p/day.0"
        );
        let mut counter = WindowCounter::default();
        counter.roll_to(20_422);
        counter.spend.settle(0, 500);
        counter.requests.settle(0, 1);
        counter.roll_to(20_422);
        assert_eq!(counter.spend.settled, 500, "the same window keeps counting");
        counter.roll_to(20_424);
        assert_eq!(counter.spend.settled, 0, "two windows later: fresh");
        assert!(counter.counts(20_424) && !counter.counts(20_422));
    }

    #[test]
    fn counters_round_trip_and_garbage_is_refused() {
        let mut counter = WindowCounter::default();
        assert_eq!(
            WindowCounter::decode(&counter.encode()),
            Some(counter.clone())
        );
        counter.roll_to(-3);
        counter.tokens.reserve(40);
        counter.requests.acknowledge(9, 1);
        assert_eq!(
            WindowCounter::decode(&counter.encode()),
            Some(counter.clone())
        );
        for bad in [
            &b""[..],
            b"w2 1|v1 0 0 0 0|v1 0 0 0 0|v1 0 0 0 0",
            b"w1 1|v1 0 0 0 0|v1 0 0 0 0",
            b"w1 x|v1 0 0 0 0|v1 0 0 0 0|v1 0 0 0 0",
            b"w1 1|v1 0 0 0 0|v1 0 0 0 0|v1 0 0 0 0|v1 0 0 0 0",
            b"v1 0 0 0 0",
        ] {
            assert_eq!(WindowCounter::decode(bad), None);
        }
    }

    #[test]
    fn counted_windows_list_their_ids() {
        let counted = CountedWindows {
            key: [Some(20_422), None, Some(24_322)],
            project: [None, Some(2917), None],
        };
        assert_eq!(counted.ids(OwnerKind::Key), ["2025-11-30", "2026-11"]);
        assert_eq!(counted.ids(OwnerKind::Project), ["2025-W48"]);
        assert!(!counted.is_empty() && CountedWindows::default().is_empty());
    }
}
