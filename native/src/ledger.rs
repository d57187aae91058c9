//! The native build's live counters: spend counters and rate-limit buckets as typed records in
//! process memory, shared by every worker thread (the Wasm build keeps them in Envoy's shared
//! data, serialized, behind compare-and-swap host calls). The engine's `Ledger` trait is the
//! only way requests change them: one record at a time, under its shard's lock, so two workers
//! never lose each other's updates.
//!
//! The usage reporter (main thread) also reads and writes spend and window counters, through
//! keyward-filter's `SharedData` trait with Envoy's compare-and-swap rules; `encoded_get` and
//! `encoded_set` give it that view of the same records (each record carries a version for its
//! CAS token).

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use keyward_engine::ledger::{Ledger, LedgerError};
use keyward_engine::metering::SpendCounter;
use keyward_engine::rate_limit::RateState;
use keyward_engine::window_counter::{WindowCounter, WINDOW_COUNTER_PREFIX};
use keyward_filter::host::{HostError, SetOutcome};

/// A record and the number of times it was written (its CAS token; never 0).
#[derive(Debug, Clone, Default)]
struct Versioned<T> {
    record: T,
    version: u32,
}

impl<T> Versioned<T> {
    fn store(&mut self, record: T) {
        self.record = record;
        self.version = self.version.checked_add(1).unwrap_or(1);
    }
}

/// Every spend counter, budget window counter and rate bucket of this Envoy process, in sharded
/// maps (`dashmap`): a worker locks only the shard of the record it changes.
#[derive(Debug, Default)]
pub struct ProcessLedger {
    spend: DashMap<String, Versioned<SpendCounter>>,
    windows: DashMap<String, Versioned<WindowCounter>>,
    rates: DashMap<String, Versioned<RateState>>,
}

/// A record the usage reporter sees as shared-data bytes.
trait Encoded: Sized + Default {
    fn to_bytes(&self) -> Vec<u8>;
    fn from_bytes(bytes: &[u8]) -> Option<Self>;
}

impl Encoded for SpendCounter {
    fn to_bytes(&self) -> Vec<u8> {
        self.encode()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        SpendCounter::decode(bytes)
    }
}

impl Encoded for WindowCounter {
    fn to_bytes(&self) -> Vec<u8> {
        self.encode()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        WindowCounter::decode(bytes)
    }
}

fn get_encoded<T: Encoded>(
    map: &DashMap<String, Versioned<T>>,
    entry: &str,
) -> Option<(Vec<u8>, u32)> {
    map.get(entry)
        .map(|slot| (slot.record.to_bytes(), slot.version))
}

/// Writes an encoded record with Envoy's shared-data CAS rules: a missing record is created
/// whatever `cas` says; an existing one only with its current token (or `None`). Bytes that do
/// not decode are refused, never read as zero.
fn set_encoded<T: Encoded>(
    map: &DashMap<String, Versioned<T>>,
    entry: &str,
    bytes: &[u8],
    cas: Option<u32>,
) -> Result<SetOutcome, HostError> {
    let record = if bytes.is_empty() {
        T::default()
    } else {
        T::from_bytes(bytes).ok_or(HostError::Malformed)?
    };
    match map.entry(entry.to_owned()) {
        Entry::Occupied(mut slot) => {
            if matches!(cas, Some(token) if token != 0 && token != slot.get().version) {
                return Ok(SetOutcome::CasMismatch);
            }
            slot.get_mut().store(record);
        }
        Entry::Vacant(slot) => {
            slot.insert(Versioned { record, version: 1 });
        }
    }
    Ok(SetOutcome::Written)
}

/// Applies `change` to a copy of the record (the default when missing) and stores it if asked,
/// all under the record's shard lock. The map is only touched by that final store, so a panic
/// inside `change` leaves it as it was.
fn apply<T: Clone + Default>(
    map: &DashMap<String, Versioned<T>>,
    entry: &str,
    change: &mut dyn FnMut(&mut T) -> bool,
) {
    // The common case, an existing record, needs no key allocation.
    if let Some(mut slot) = map.get_mut(entry) {
        let mut record = slot.record.clone();
        if change(&mut record) {
            slot.store(record);
        }
        return;
    }
    match map.entry(entry.to_owned()) {
        // Created by another worker in between.
        Entry::Occupied(mut slot) => {
            let mut record = slot.get().record.clone();
            if change(&mut record) {
                slot.get_mut().store(record);
            }
        }
        Entry::Vacant(slot) => {
            let mut record = T::default();
            if change(&mut record) {
                slot.insert(Versioned { record, version: 1 });
            }
        }
    }
}

impl ProcessLedger {
    pub fn update_spend(&self, entry: &str, change: &mut dyn FnMut(&mut SpendCounter) -> bool) {
        apply(&self.spend, entry, change);
    }

    pub fn update_rate(&self, entry: &str, change: &mut dyn FnMut(&mut RateState) -> bool) {
        apply(&self.rates, entry, change);
    }

    pub fn update_window(&self, entry: &str, change: &mut dyn FnMut(&mut WindowCounter) -> bool) {
        apply(&self.windows, entry, change);
    }

    /// Whether shared-data `entry` is one of the records kept here (spend or window counters)
    /// rather than in the process's plain shared entries.
    pub fn holds(entry: &str) -> bool {
        entry.starts_with(keyward_engine::metering::KEY_COUNTER_PREFIX)
            || entry.starts_with(keyward_engine::metering::PROJECT_COUNTER_PREFIX)
            || entry.starts_with(WINDOW_COUNTER_PREFIX)
    }

    /// A spend or window counter as shared data would hold it: encoded, with its CAS token.
    pub fn encoded_get(&self, entry: &str) -> Option<(Vec<u8>, u32)> {
        if entry.starts_with(WINDOW_COUNTER_PREFIX) {
            get_encoded(&self.windows, entry)
        } else {
            get_encoded(&self.spend, entry)
        }
    }

    /// Writes an encoded spend or window counter with Envoy's shared-data CAS rules.
    pub fn encoded_set(
        &self,
        entry: &str,
        bytes: &[u8],
        cas: Option<u32>,
    ) -> Result<SetOutcome, HostError> {
        if entry.starts_with(WINDOW_COUNTER_PREFIX) {
            set_encoded(&self.windows, entry, bytes, cas)
        } else {
            set_encoded(&self.spend, entry, bytes, cas)
        }
    }

    /// What every spend counter holds in reservations (tests: zero once every request ended).
    #[cfg(test)]
    pub fn total_reserved(&self) -> u64 {
        self.spend.iter().map(|slot| slot.record.reserved).sum()
    }
}

/// The engine's `Ledger` over the process's counters, for one request step.
pub struct LedgerHandle<'a>(pub &'a ProcessLedger);

impl Ledger for LedgerHandle<'_> {
    fn now_ms(&mut self) -> Result<u64, LedgerError> {
        crate::native_host::now_ms().map_err(LedgerError::from)
    }

    fn update_spend(
        &mut self,
        entry: &str,
        change: &mut dyn FnMut(&mut SpendCounter) -> bool,
    ) -> Result<(), LedgerError> {
        self.0.update_spend(entry, change);
        Ok(())
    }

    fn update_rate(
        &mut self,
        entry: &str,
        change: &mut dyn FnMut(&mut RateState) -> bool,
    ) -> Result<(), LedgerError> {
        self.0.update_rate(entry, change);
        Ok(())
    }

    fn update_window(
        &mut self,
        entry: &str,
        change: &mut dyn FnMut(&mut WindowCounter) -> bool,
    ) -> Result<(), LedgerError> {
        self.0.update_window(entry, change);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_apply_once_and_a_declined_change_creates_nothing() {
        let ledger = ProcessLedger::default();
        ledger.update_spend("k", &mut |counter| {
            counter.reserved += 5;
            true
        });
        ledger.update_spend("k", &mut |counter| {
            counter.reserved += 100;
            false
        });
        ledger.update_spend("other", &mut |_| false);
        assert_eq!(ledger.total_reserved(), 5);
        assert!(ledger.encoded_get("other").is_none());
    }

    #[test]
    fn concurrent_reservations_lose_nothing() {
        let ledger = std::sync::Arc::new(ProcessLedger::default());
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let ledger = std::sync::Arc::clone(&ledger);
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        let entry = format!("keyward/spend/key/k{}", (i + thread) % 7);
                        LedgerHandle(&ledger)
                            .update_spend(&entry, &mut |counter| {
                                counter.reserved += 1;
                                true
                            })
                            .expect("in memory");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no panic");
        }
        assert_eq!(ledger.total_reserved(), 8000);
    }

    #[test]
    fn the_shared_data_view_follows_envoy_cas_rules() {
        let ledger = ProcessLedger::default();
        let entry = "keyward/spend/key/k1";
        let counter = SpendCounter {
            settled: 42,
            ..SpendCounter::default()
        };
        // Missing: created whatever the token (CREATE_ONLY is u32::MAX).
        assert_eq!(
            ledger.encoded_set(entry, &counter.encode(), Some(u32::MAX)),
            Ok(SetOutcome::Written)
        );
        let (bytes, token) = ledger.encoded_get(entry).expect("written");
        assert_eq!(SpendCounter::decode(&bytes), Some(counter.clone()));
        // A request changes it: the old token no longer writes.
        ledger.update_spend(entry, &mut |counter| {
            counter.reserved = 3;
            true
        });
        assert_eq!(
            ledger.encoded_set(entry, &counter.encode(), Some(token)),
            Ok(SetOutcome::CasMismatch)
        );
        let (_, fresh) = ledger.encoded_get(entry).expect("present");
        assert_eq!(
            ledger.encoded_set(entry, &counter.encode(), Some(fresh)),
            Ok(SetOutcome::Written)
        );
        assert_eq!(
            ledger.encoded_set(entry, b"not a counter", None),
            Err(HostError::Malformed),
            "never read as zero"
        );
    }
}
