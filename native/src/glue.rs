//! Interim wiring (phase 1 of issue #18): runs keyward-filter's existing request handler
//! (`handler`) on the dynamic-module host, by implementing its `Host` traits over `FilterHandle`.
//! It mirrors `src/contexts.rs` (the Wasm contexts) step for step and is replaced once the
//! engine's sans-IO core lands. The policy lives once per process: the configuration holds it in
//! an `Arc` that every stream on every worker shares.
//!
//! Not here yet: policy sync and usage reports (a configuration with `sync` is refused rather
//! than silently not syncing), and spend/rate counters in atomics (they use `shared_data`).

use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use keyward_engine::config::{PluginConfig, Role, Settings};
use keyward_engine::request::Header;
use keyward_engine::snapshot::Policy;
use keyward_filter::handler::{
    on_request_body, on_request_headers, on_response_body, on_response_headers, on_stream_end,
    FilterState, Verdict,
};
use keyward_filter::host::{
    Host, HostError, LogLevel, MetricKind, SetOutcome, SharedData, Telemetry,
};
use keyward_filter::metering_flow::{Admitted, Ticket};
use keyward_filter::metrics::Metrics;

use crate::abi;
use crate::hooks::{FilterConfig, HttpFilter, RequestFlow};
use crate::host::{self, ConfigHandle, FilterHandle, MetricId};
use crate::shared_data::{SharedEntries, Written};

/// Envoy's counter and gauge ids are separate spaces that both start at 1; keyward-filter's
/// `Metrics` keeps one `u32` per metric, so gauges carry this bit.
const GAUGE_BIT: u32 = 1 << 31;

/// Host error statuses, numbered like proxy-wasm's so logs read the same in both builds.
const STATUS_BAD_ARGUMENT: u32 = 2;
const STATUS_PARSE_FAILURE: u32 = 4;
const STATUS_INTERNAL_FAILURE: u32 = 10;

/// Spend counters and rate-limit state of every keyward filter in this Envoy process (Wasm:
/// shared data of one vm_id).
static SHARED: LazyLock<SharedEntries> = LazyLock::new(SharedEntries::new);

/// One Envoy filter configuration: compiled once on the main thread, read by every worker.
#[derive(Debug)]
pub struct KeywardConfig {
    settings: Arc<Settings>,
    policy: Option<Arc<Policy>>,
    metrics: Arc<Metrics>,
    #[cfg(feature = "abi-probe")]
    probe: Option<crate::abi_probe::Probe>,
}

impl FilterConfig for KeywardConfig {
    type Filter = KeywardStream;

    fn new(config: ConfigHandle, name: &str, bytes: &[u8]) -> Result<Self, String> {
        #[cfg(feature = "abi-probe")]
        if name == crate::abi_probe::PROBE_FILTER_NAME {
            let probe = crate::abi_probe::Probe::start(config, bytes);
            let mut loaded = KeywardConfig::new(config, "keyward", b"{}")?;
            loaded.probe = Some(probe);
            return Ok(loaded);
        }
        let _ = name;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            bytes
        };
        let parsed =
            PluginConfig::from_json(bytes).map_err(|e| format!("invalid configuration: {e}"))?;
        if parsed.role == Role::SyncService || parsed.sync.is_some() {
            return Err(
                "invalid configuration: the native module does not sync policies yet; use the \
                 Wasm build for `sync` or an inline `policy`"
                    .to_owned(),
            );
        }
        let metrics = Metrics::define(|kind, name| define_metric(config, kind, name))
            .map_err(|e| format!("cannot define metrics (status {})", e.status))?;
        let loaded = KeywardConfig {
            settings: Arc::new(parsed.settings),
            policy: parsed.policy.map(Arc::new),
            metrics: Arc::new(metrics),
            #[cfg(feature = "abi-probe")]
            probe: None,
        };
        loaded.log_policy(config);
        Ok(loaded)
    }

    fn new_filter(&self) -> KeywardStream {
        KeywardStream {
            state: FilterState {
                settings: Arc::clone(&self.settings),
                policy: self.policy.clone(),
                metrics: Arc::clone(&self.metrics),
                activity: None,
            },
            stage: Stage::Deciding,
        }
    }

    #[cfg(feature = "abi-probe")]
    fn on_scheduled(&self, config: ConfigHandle, event_id: u64) {
        if let Some(probe) = &self.probe {
            probe.on_scheduled(config, event_id);
        }
    }

    #[cfg(feature = "abi-probe")]
    fn on_http_callout_done(
        &self,
        config: ConfigHandle,
        callout_id: u64,
        response: Option<host::CalloutResponse>,
    ) {
        if let Some(probe) = &self.probe {
            probe.on_http_callout_done(config, callout_id, response);
        }
    }
}

impl KeywardConfig {
    fn log_policy(&self, config: ConfigHandle) {
        match &self.policy {
            Some(policy) => {
                if let Some(id) = gauge_id(self.metrics.policy_version) {
                    config.set_gauge(id, policy.version);
                }
                host::log(
                    abi::LOG_INFO,
                    &format!(
                        "keyward: configured (native); policy version {} with {} keys and {} projects",
                        policy.version,
                        policy.keys().len(),
                        policy.projects().len()
                    ),
                );
            }
            None => host::log(
                abi::LOG_WARN,
                "keyward: configured (native) without a policy; requests get policy_unavailable unless fail_open",
            ),
        }
    }
}

fn define_metric(config: ConfigHandle, kind: MetricKind, name: &str) -> Result<u32, HostError> {
    let defined = match kind {
        MetricKind::Counter => config.define_counter(name),
        MetricKind::Gauge => config.define_gauge(name),
    };
    let id = defined
        .and_then(|MetricId(id)| u32::try_from(id).ok())
        .filter(|id| id & GAUGE_BIT == 0)
        .ok_or(HostError {
            status: STATUS_INTERNAL_FAILURE,
        })?;
    Ok(match kind {
        MetricKind::Counter => id,
        MetricKind::Gauge => id | GAUGE_BIT,
    })
}

fn gauge_id(id: u32) -> Option<MetricId> {
    (id & GAUGE_BIT != 0).then_some(MetricId((id & !GAUGE_BIT) as usize))
}

fn counter_id(id: u32) -> Option<MetricId> {
    (id & GAUGE_BIT == 0).then_some(MetricId(id as usize))
}

/// Where a request is in its life (as `contexts::Stage`).
#[derive(Debug)]
enum Stage {
    Deciding,
    /// Allowed so far; the buffered body decides the rest.
    AwaitingBody(Box<Ticket>),
    /// Upstream; the response is watched and settled at the end.
    Forwarded(Box<Admitted>),
    Done,
}

/// One HTTP stream.
#[derive(Debug)]
pub struct KeywardStream {
    state: FilterState,
    stage: Stage,
}

impl KeywardStream {
    fn apply(&mut self, verdict: Verdict) -> RequestFlow {
        match verdict {
            Verdict::Continue => {
                self.stage = Stage::Done;
                RequestFlow::Continue
            }
            Verdict::Forward(admitted) => {
                self.stage = Stage::Forwarded(admitted);
                RequestFlow::Continue
            }
            Verdict::AwaitBody(ticket) => {
                self.stage = Stage::AwaitingBody(ticket);
                // Stopping the headers still delivers the body to this filter (no Envoy option
                // needed, unlike Wasm's allow_on_headers_stop_iteration).
                if self.state.settings.metering.hold_headers {
                    RequestFlow::Stop
                } else {
                    RequestFlow::Continue
                }
            }
            Verdict::Stop => {
                self.stage = Stage::Done;
                RequestFlow::Stop
            }
        }
    }

    /// The body is complete (or over the limit): decide with it.
    fn decide_body(&mut self, filter: &FilterHandle, body_size: usize) -> RequestFlow {
        let Stage::AwaitingBody(ticket) = std::mem::replace(&mut self.stage, Stage::Done) else {
            return RequestFlow::Continue;
        };
        let host = NativeHost { filter };
        let verdict = on_request_body(&host, &self.state, *ticket, body_size);
        match self.apply(verdict) {
            // A verdict that waits again cannot happen after the body; never let it through.
            RequestFlow::StopAndBuffer => RequestFlow::Stop,
            flow => flow,
        }
    }
}

impl HttpFilter for KeywardStream {
    fn on_request_headers(&mut self, filter: &FilterHandle, end_of_stream: bool) -> RequestFlow {
        let verdict = on_request_headers(&NativeHost { filter }, &self.state, end_of_stream);
        self.apply(verdict)
    }

    fn on_request_body(&mut self, filter: &FilterHandle, end_of_stream: bool) -> RequestFlow {
        if !matches!(self.stage, Stage::AwaitingBody(_)) {
            return RequestFlow::Continue;
        }
        let body_size = filter.request_body_size();
        let too_large = body_size > self.state.settings.metering.max_request_body_bytes;
        if !end_of_stream && !too_large {
            return RequestFlow::StopAndBuffer;
        }
        self.decide_body(filter, body_size)
    }

    /// Trailers end a request whose body never carried end-of-stream: the body is complete
    /// here, and must be decided before anything goes upstream.
    fn on_request_trailers(&mut self, filter: &FilterHandle) -> RequestFlow {
        if !matches!(self.stage, Stage::AwaitingBody(_)) {
            return RequestFlow::Continue;
        }
        let body_size = filter.request_body_size();
        self.decide_body(filter, body_size)
    }

    fn on_response_headers(&mut self, filter: &FilterHandle, end_of_stream: bool) {
        if let Stage::Forwarded(admitted) = &mut self.stage {
            let host = NativeHost { filter };
            on_response_headers(&host, admitted);
            if end_of_stream {
                on_response_body(&host, admitted, 0, true);
            }
        }
    }

    fn on_response_body(&mut self, filter: &FilterHandle, end_of_stream: bool) {
        if let Stage::Forwarded(admitted) = &mut self.stage {
            let chunk_size = filter.response_body_chunk_size();
            on_response_body(&NativeHost { filter }, admitted, chunk_size, end_of_stream);
        }
    }

    fn on_stream_complete(&mut self, filter: &FilterHandle) {
        if let Stage::Forwarded(admitted) = &mut self.stage {
            on_stream_end(&NativeHost { filter }, &self.state, admitted);
        }
    }
}

/// keyward-filter's host traits over one hook's `FilterHandle`.
struct NativeHost<'a> {
    filter: &'a FilterHandle,
}

fn checked(ok: bool) -> Result<(), HostError> {
    if ok {
        Ok(())
    } else {
        Err(HostError {
            status: STATUS_BAD_ARGUMENT,
        })
    }
}

fn unix_now() -> Result<std::time::Duration, HostError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| HostError {
            status: STATUS_INTERNAL_FAILURE,
        })
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
        let level = match level {
            LogLevel::Debug => abi::LOG_DEBUG,
            LogLevel::Info => abi::LOG_INFO,
            LogLevel::Warn => abi::LOG_WARN,
            LogLevel::Error => abi::LOG_ERROR,
        };
        if host::log_enabled(level) {
            host::log(level, message);
        }
    }
}

impl SharedData for NativeHost<'_> {
    fn shared_get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        Ok(SHARED.get(key))
    }

    fn shared_set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<SetOutcome, HostError> {
        Ok(match SHARED.set(key, value, cas) {
            Written::Yes => SetOutcome::Written,
            Written::CasMismatch => SetOutcome::CasMismatch,
        })
    }

    fn now_ms(&self) -> Result<u64, HostError> {
        Ok(u64::try_from(unix_now()?.as_millis()).unwrap_or(u64::MAX))
    }
}

impl Host for NativeHost<'_> {
    fn request_headers(&self) -> Result<Vec<Header>, HostError> {
        self.filter.request_headers().map_err(|_| HostError {
            status: STATUS_PARSE_FAILURE,
        })
    }

    /// Only `xds.route_name` is mapped (the one property the handler reads); any other path is
    /// an error, so a new read fails closed instead of seeing "no value".
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        match path {
            ["xds", "route_name"] => Ok(self
                .filter
                .attribute_string(abi::ATTRIBUTE_XDS_ROUTE_NAME)
                .filter(|name| !name.is_empty())),
            _ => Err(HostError {
                status: STATUS_BAD_ARGUMENT,
            }),
        }
    }

    fn replace_request_header(&self, name: &str, value: &[u8]) -> Result<(), HostError> {
        checked(self.filter.set_request_header(name, value))
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
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
        self.filter.response_headers().map_err(|_| HostError {
            status: STATUS_PARSE_FAILURE,
        })
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
