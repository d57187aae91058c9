//! Read-modify-write of one small shared-data record with compare-and-swap, so the workers of
//! one Envoy never lose each other's updates.

use crate::host::{HostError, SetOutcome, SharedData, CREATE_ONLY};

/// Retries before giving up: each failed attempt means another worker just wrote the record.
const CAS_ATTEMPTS: usize = 32;

/// A record type stored in shared data.
pub trait Record: Default {
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl Record for keyward_engine::metering::SpendCounter {
    fn encode(&self) -> Vec<u8> {
        keyward_engine::metering::SpendCounter::encode(self)
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        keyward_engine::metering::SpendCounter::decode(bytes)
    }
}

impl Record for keyward_engine::rate_limit::RateState {
    fn encode(&self) -> Vec<u8> {
        keyward_engine::rate_limit::RateState::encode(self)
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        keyward_engine::rate_limit::RateState::decode(bytes)
    }
}

impl Record for keyward_engine::window_counter::WindowCounter {
    fn encode(&self) -> Vec<u8> {
        keyward_engine::window_counter::WindowCounter::encode(self)
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        keyward_engine::window_counter::WindowCounter::decode(bytes)
    }
}

/// Reads the record (default when missing; an unreadable record is an error, never zero).
pub fn read<R: Record>(host: &impl SharedData, entry: &str) -> Result<R, HostError> {
    match host.shared_get(entry)? {
        None => Ok(R::default()),
        Some((bytes, _)) if bytes.is_empty() => Ok(R::default()),
        Some((bytes, _)) => R::decode(&bytes).ok_or(HostError::Malformed),
    }
}

/// Applies `change` to the current record and writes it back if nobody wrote in between;
/// otherwise starts over from the newer record. `change` returns whether to write at all and
/// a value for the caller.
pub fn update<R: Record, T>(
    host: &impl SharedData,
    entry: &str,
    mut change: impl FnMut(&mut R) -> (bool, T),
) -> Result<T, HostError> {
    for _ in 0..CAS_ATTEMPTS {
        let current = host.shared_get(entry)?;
        let (mut record, cas) = match &current {
            None => (R::default(), CREATE_ONLY),
            Some((bytes, cas)) if bytes.is_empty() => (R::default(), *cas),
            Some((bytes, cas)) => (R::decode(bytes).ok_or(HostError::Malformed)?, *cas),
        };
        let (write, result) = change(&mut record);
        if !write {
            return Ok(result);
        }
        if host.shared_set(entry, &record.encode(), Some(cas))? == SetOutcome::Written {
            return Ok(result);
        }
    }
    Err(HostError::Contended)
}
