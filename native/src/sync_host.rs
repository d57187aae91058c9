//! keyward-filter's `SyncHost` (what the snapshot poller, the policy follower and the usage
//! reporter ask of a host) over a filter configuration on Envoy's main thread: HTTP calls are
//! the configuration's own callouts, shared data is the process's (`PROCESS`), metrics are the
//! configuration's.
//!
//! Spend counters are the one kind of entry the requests change too: those entries are served
//! from the process ledger, so the reporter's reads and writes meet the requests' (the Wasm
//! build keeps both in the same shared data).

use std::sync::{Mutex, PoisonError};

use keyward_engine::request::Header;
use keyward_filter::host::{HostError, LogLevel, SetOutcome, SharedData, SyncHost, Telemetry};

use crate::host::{CalloutResponse, ConfigHandle};
use crate::ledger::ProcessLedger;
use crate::native_host::{counter_id, gauge_id, log, now_ms};
use crate::process::PROCESS;
use crate::shared_data::ProcessShared;

/// Why a callout did not start (`envoy_dynamic_module_type_http_callout_init_result`), as the
/// status of a host error.
const STATUS_CALLOUT_REFUSED_BASE: u32 = 100;

/// Calls in flight: Envoy's callout ids and the tokens the poller and reporter know them by.
#[derive(Debug, Default)]
pub struct Calls {
    in_flight: Vec<(u64, u32)>,
    last_token: u32,
}

impl Calls {
    fn add(&mut self, callout_id: u64) -> u32 {
        self.last_token = self.last_token.checked_add(1).unwrap_or(1);
        self.in_flight.push((callout_id, self.last_token));
        self.last_token
    }

    /// The token of a finished callout (forgotten from here on).
    pub fn finish(&mut self, callout_id: u64) -> Option<u32> {
        let position = self
            .in_flight
            .iter()
            .position(|(id, _)| *id == callout_id)?;
        Some(self.in_flight.swap_remove(position).1)
    }
}

/// The host of one main-thread event of one filter configuration.
pub struct ConfigSyncHost<'a> {
    pub config: ConfigHandle,
    pub calls: &'a Mutex<Calls>,
    /// The answer being handled (`None` outside a callout reply, or for a callout that failed:
    /// then there are no headers, as for a failed Wasm call).
    pub response: Option<&'a CalloutResponse>,
}

impl ConfigSyncHost<'_> {
    fn call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, HostError> {
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_bytes()))
            .collect();
        let callout_id = self
            .config
            .http_callout(cluster, &headers, body, timeout_ms)
            .map_err(|refused| HostError::Status(STATUS_CALLOUT_REFUSED_BASE + refused.0))?;
        Ok(self
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(callout_id))
    }
}

impl Telemetry for ConfigSyncHost<'_> {
    fn increment_metric(&self, id: u32, delta: i64) {
        if let (Some(id), Ok(delta)) = (counter_id(id), u64::try_from(delta)) {
            self.config.increment_counter(id, delta);
        }
    }

    fn record_metric(&self, id: u32, value: u64) {
        if let Some(id) = gauge_id(id) {
            self.config.set_gauge(id, value);
        }
    }

    fn log(&self, level: LogLevel, message: &str) {
        log(level, message);
    }
}

impl SharedData for ConfigSyncHost<'_> {
    fn shared_get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        if ProcessLedger::holds(key) {
            return Ok(PROCESS.ledger.encoded_get(key));
        }
        ProcessShared(&PROCESS.shared).shared_get(key)
    }

    fn shared_set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<SetOutcome, HostError> {
        if ProcessLedger::holds(key) {
            return PROCESS.ledger.encoded_set(key, value, cas);
        }
        ProcessShared(&PROCESS.shared).shared_set(key, value, cas)
    }

    fn now_ms(&self) -> Result<u64, HostError> {
        now_ms()
    }
}

impl SyncHost for ConfigSyncHost<'_> {
    fn dispatch_get(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u32, HostError> {
        self.call(cluster, headers, b"", timeout_ms)
    }

    fn dispatch_post(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, HostError> {
        self.call(cluster, headers, body, timeout_ms)
    }

    fn call_response_headers(&self) -> Result<Vec<Header>, HostError> {
        Ok(self
            .response
            .map(|response| response.headers.clone())
            .unwrap_or_default())
    }

    fn call_response_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        let mut body = self
            .response
            .map(|response| response.body.clone())
            .unwrap_or_default();
        body.truncate(size);
        Ok(body)
    }
}
