//! Where a host keeps the live counters admission reads and changes: spend counters per key and
//! per project, and rate-limit buckets per key. Envoy's Wasm host keeps them in shared data with
//! compare-and-swap; a native host in process memory; `explain` and the tests in a map.
//!
//! The engine decides what to change; a ledger only applies one change to one record at a time,
//! atomically with respect to every other worker of the same Envoy.

use std::collections::HashMap;

use crate::metering::SpendCounter;
use crate::rate_limit::RateState;
use crate::window_counter::WindowCounter;

/// A ledger operation that did not happen. Admission fails closed on any of them, and gives
/// back what it had already taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerError {
    /// The host refused or failed the call (its status).
    Host(u32),
    /// The record exists but cannot be read: never taken as zero spend.
    Corrupt,
    /// Other workers kept changing the record; the change was not applied.
    Contended,
}

impl LedgerError {
    pub fn description(self) -> String {
        match self {
            LedgerError::Host(status) => format!("host call failed with status {status}"),
            LedgerError::Corrupt => "a counter record is unreadable".to_owned(),
            LedgerError::Contended => "a counter record stayed contended".to_owned(),
        }
    }
}

/// Live counters, changed one record at a time. `change` gets the current record (the default
/// when there is none) and says whether to write it back.
pub trait Ledger {
    /// Milliseconds since the Unix epoch: rate limits refill by it.
    fn now_ms(&mut self) -> Result<u64, LedgerError>;
    fn update_spend(
        &mut self,
        entry: &str,
        change: &mut dyn FnMut(&mut SpendCounter) -> bool,
    ) -> Result<(), LedgerError>;
    fn update_rate(
        &mut self,
        entry: &str,
        change: &mut dyn FnMut(&mut RateState) -> bool,
    ) -> Result<(), LedgerError>;
    /// A budget or quota window's counter (see `window_counter`).
    fn update_window(
        &mut self,
        entry: &str,
        change: &mut dyn FnMut(&mut WindowCounter) -> bool,
    ) -> Result<(), LedgerError>;
}

/// A ledger in plain memory: one Envoy's counters as `explain` assumes them (fresh), and the
/// engine's tests. `fail_on` makes the Nth operation (from 1) fail, to test that a failure
/// part-way gives back what was taken.
#[derive(Debug, Clone, Default)]
pub struct MemoryLedger {
    pub spend: HashMap<String, SpendCounter>,
    pub rates: HashMap<String, RateState>,
    pub windows: HashMap<String, WindowCounter>,
    pub now_ms: u64,
    pub fail_on: Option<usize>,
    pub operations: usize,
}

impl MemoryLedger {
    fn allow_operation(&mut self) -> Result<(), LedgerError> {
        self.operations += 1;
        match self.fail_on {
            Some(failing) if self.operations == failing => Err(LedgerError::Host(10)),
            _ => Ok(()),
        }
    }

    /// What every spend counter holds in reservations (lifetime and window spend, and window
    /// tokens): zero once every request has ended.
    pub fn total_reserved(&self) -> u64 {
        let windows = self
            .windows
            .values()
            .map(|counter| counter.spend.reserved + counter.tokens.reserved);
        self.spend
            .values()
            .map(|counter| counter.reserved)
            .chain(windows)
            .sum()
    }
}

impl Ledger for MemoryLedger {
    fn now_ms(&mut self) -> Result<u64, LedgerError> {
        self.allow_operation()?;
        Ok(self.now_ms)
    }

    fn update_spend(
        &mut self,
        entry: &str,
        change: &mut dyn FnMut(&mut SpendCounter) -> bool,
    ) -> Result<(), LedgerError> {
        self.allow_operation()?;
        let mut record = self.spend.get(entry).cloned().unwrap_or_default();
        if change(&mut record) {
            self.spend.insert(entry.to_owned(), record);
        }
        Ok(())
    }

    fn update_rate(
        &mut self,
        entry: &str,
        change: &mut dyn FnMut(&mut RateState) -> bool,
    ) -> Result<(), LedgerError> {
        self.allow_operation()?;
        let mut record = self.rates.get(entry).copied().unwrap_or_default();
        if change(&mut record) {
            self.rates.insert(entry.to_owned(), record);
        }
        Ok(())
    }

    fn update_window(
        &mut self,
        entry: &str,
        change: &mut dyn FnMut(&mut WindowCounter) -> bool,
    ) -> Result<(), LedgerError> {
        self.allow_operation()?;
        let mut record = self.windows.get(entry).cloned().unwrap_or_default();
        if change(&mut record) {
            self.windows.insert(entry.to_owned(), record);
        }
        Ok(())
    }
}
