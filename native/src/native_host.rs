//! keyward-filter's host traits (`Host`, `Telemetry`) over one hook's `FilterHandle`: what the
//! request glue (`keyward_filter::handler::RequestFlow`) reads from and asks of Envoy. Mapping
//! only; every decision is the engine's.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use keyward_engine::request::Header;
use keyward_filter::host::{Host, HostError, LogLevel, MetricKind, Telemetry};

use crate::abi;
use crate::host::{self, ConfigHandle, FilterHandle, MetricId};

/// Envoy's counter and gauge ids are separate spaces that both start at 1; keyward-filter's
/// `Metrics` keeps one `u32` per metric, so gauges carry this bit.
const GAUGE_BIT: u32 = 1 << 31;

/// Host error statuses, numbered like proxy-wasm's so logs read the same in both builds.
const STATUS_BAD_ARGUMENT: u32 = 2;
const STATUS_INTERNAL_FAILURE: u32 = 10;

/// Defines one of keyward's metrics on the configuration (only during config creation).
pub fn define_metric(config: ConfigHandle, kind: MetricKind, name: &str) -> Result<u32, HostError> {
    let defined = match kind {
        MetricKind::Counter => config.define_counter(name),
        MetricKind::Gauge => config.define_gauge(name),
    };
    let id = defined
        .and_then(|MetricId(id)| u32::try_from(id).ok())
        .filter(|id| id & GAUGE_BIT == 0)
        .ok_or(HostError::Status(STATUS_INTERNAL_FAILURE))?;
    Ok(match kind {
        MetricKind::Counter => id,
        MetricKind::Gauge => id | GAUGE_BIT,
    })
}

pub fn gauge_id(id: u32) -> Option<MetricId> {
    (id & GAUGE_BIT != 0).then_some(MetricId((id & !GAUGE_BIT) as usize))
}

pub fn counter_id(id: u32) -> Option<MetricId> {
    (id & GAUGE_BIT == 0).then_some(MetricId(id as usize))
}

pub fn log_level(level: LogLevel) -> u32 {
    match level {
        LogLevel::Info => abi::LOG_INFO,
        LogLevel::Warn => abi::LOG_WARN,
        LogLevel::Error => abi::LOG_ERROR,
    }
}

/// Logs through Envoy (component `dynamic_modules`), skipping lines Envoy would not print.
pub fn log(level: LogLevel, message: &str) {
    let level = log_level(level);
    if host::log_enabled(level) {
        host::log(level, message);
    }
}

pub fn unix_now() -> Result<std::time::Duration, HostError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| HostError::Status(STATUS_INTERNAL_FAILURE))
}

pub fn now_ms() -> Result<u64, HostError> {
    Ok(u64::try_from(unix_now()?.as_millis()).unwrap_or(u64::MAX))
}

/// The host of one hook of one stream.
pub struct NativeHost<'a> {
    filter: &'a FilterHandle,
    /// Whether a request header was written or removed in this hook.
    edited: Cell<bool>,
}

impl<'a> NativeHost<'a> {
    pub fn new(filter: &'a FilterHandle) -> NativeHost<'a> {
        NativeHost {
            filter,
            edited: Cell::new(false),
        }
    }

    /// Ends the hook: after a request header edit, the router picks the route again, as it
    /// does after every header edit of the Wasm build (so a route matching a header keyward
    /// sets, such as the environment, takes the request). One clear per hook, not per edit.
    pub fn finish(self) {
        if self.edited.get() {
            self.filter.clear_route_cache();
        }
    }
}

fn checked(ok: bool) -> Result<(), HostError> {
    if ok {
        Ok(())
    } else {
        Err(HostError::Status(STATUS_BAD_ARGUMENT))
    }
}

impl Telemetry for NativeHost<'_> {
    fn increment_metric(&self, id: u32, delta: i64) {
        if let (Some(id), Ok(delta)) = (counter_id(id), u64::try_from(delta)) {
            self.filter.increment_counter(id, delta);
        }
    }

    fn record_metric(&self, id: u32, value: u64) {
        if let Some(id) = gauge_id(id) {
            self.filter.set_gauge(id, value);
        }
    }

    fn log(&self, level: LogLevel, message: &str) {
        log(level, message);
    }
}

impl Host for NativeHost<'_> {
    fn request_headers(&self) -> Result<Vec<Header>, HostError> {
        self.filter
            .request_headers()
            .map_err(|_| HostError::Malformed)
    }

    /// Only `xds.route_name` is mapped (the one property the glue reads); any other path is an
    /// error, so a new read fails closed instead of seeing "no value".
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        match path {
            ["xds", "route_name"] => Ok(self
                .filter
                .attribute_string(abi::ATTRIBUTE_XDS_ROUTE_NAME)
                .filter(|name| !name.is_empty())),
            _ => Err(HostError::Status(STATUS_BAD_ARGUMENT)),
        }
    }

    fn replace_request_header(&self, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.edited.set(true);
        checked(self.filter.set_request_header(name, value))
    }

    /// The dynamic-module ABI has only "set every value"; for a header the request does not
    /// carry that is the same edit.
    fn add_request_header(&self, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.replace_request_header(name, value)
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        self.edited.set(true);
        checked(self.filter.remove_request_header(name))
    }

    fn send_local_reply(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError> {
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_bytes()))
            .collect();
        self.filter
            .send_local_reply(status, &headers, body, "keyward_denied");
        Ok(())
    }

    fn now_unix_seconds(&self) -> Result<u64, HostError> {
        Ok(unix_now()?.as_secs())
    }

    fn request_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        let mut body = self.filter.request_body();
        body.truncate(size);
        Ok(body)
    }

    fn replace_request_body(&self, _old_size: usize, body: &[u8]) -> Result<(), HostError> {
        checked(self.filter.replace_request_body(body))
    }

    fn response_headers(&self) -> Result<Vec<Header>, HostError> {
        self.filter
            .response_headers()
            .map_err(|_| HostError::Malformed)
    }

    fn replace_response_header(&self, name: &str, value: &[u8]) -> Result<(), HostError> {
        checked(self.filter.set_response_header(name, value))
    }

    fn response_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        let mut chunk = self.filter.response_body_chunk();
        chunk.truncate(size);
        Ok(chunk)
    }
}
