//! keyward's filter configuration and streams on the dynamic-module host: the configuration is
//! compiled once per Envoy filter config (main thread) into one `FilterState` that every stream
//! on every worker shares; each stream runs keyward-filter's request glue (`RequestFlow`), the
//! same code the Wasm contexts run, with this host's `Host` and ledger. No decision is made here.

use std::sync::Arc;

use arc_swap::ArcSwap;

use keyward_engine::config::{PluginConfig, Role};
use keyward_filter::handler::{FilterState, Flow, RequestFlow};
use keyward_filter::metrics::Metrics;

use crate::hooks::{self, FilterConfig, HttpFilter};
use crate::host::{ConfigHandle, FilterHandle};
use crate::ledger::LedgerHandle;
use crate::native_host::{define_metric, gauge_id, log, NativeHost};
use crate::process::PROCESS;
use keyward_filter::host::LogLevel;

/// One Envoy filter configuration: compiled once on the main thread, read by every worker.
#[derive(Debug)]
pub struct KeywardConfig {
    /// The settings and policy in force: one copy for all workers, replaced in one atomic step
    /// (a stream keeps the state it started with).
    state: ArcSwap<FilterState>,
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
            .map_err(|e| format!("cannot define metrics ({e})"))?;
        let state = FilterState {
            settings: Arc::new(parsed.settings),
            policy: parsed.policy.map(Arc::new),
            metrics: Arc::new(metrics),
            activity: None,
        };
        log_policy(config, &state, "configured (native)");
        Ok(KeywardConfig {
            state: ArcSwap::from_pointee(state),
            #[cfg(feature = "abi-probe")]
            probe: None,
        })
    }

    fn new_filter(&self) -> KeywardStream {
        KeywardStream {
            flow: RequestFlow::new(self.state.load_full()),
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
        response: Option<crate::host::CalloutResponse>,
    ) {
        if let Some(probe) = &self.probe {
            probe.on_http_callout_done(config, callout_id, response);
        }
    }
}

/// The policy in force, as a log line and the policy-version gauge.
fn log_policy(config: ConfigHandle, state: &FilterState, event: &str) {
    match &state.policy {
        Some(policy) => {
            if let Some(id) = gauge_id(state.metrics.policy_version) {
                config.set_gauge(id, policy.version);
            }
            log(
                LogLevel::Info,
                &format!(
                    "keyward: {event}; policy version {} with {} keys and {} projects",
                    policy.version,
                    policy.keys().len(),
                    policy.projects().len()
                ),
            );
        }
        None => log(
            LogLevel::Warn,
            &format!(
                "keyward: {event} without a policy; requests get policy_unavailable unless fail_open"
            ),
        ),
    }
}

/// One HTTP stream: keyward-filter's request glue.
#[derive(Debug)]
pub struct KeywardStream {
    flow: RequestFlow,
}

fn headers_flow(flow: Flow) -> hooks::RequestFlow {
    match flow {
        Flow::Continue => hooks::RequestFlow::Continue,
        Flow::Pause => hooks::RequestFlow::Stop,
    }
}

/// A body callback that pauses keeps Envoy buffering (as Wasm's `Action::Pause` on a body does):
/// either the body is still awaited, or a local reply was sent and the stream is over anyway.
fn body_flow(flow: Flow) -> hooks::RequestFlow {
    match flow {
        Flow::Continue => hooks::RequestFlow::Continue,
        Flow::Pause => hooks::RequestFlow::StopAndBuffer,
    }
}

impl HttpFilter for KeywardStream {
    fn on_request_headers(
        &mut self,
        filter: &FilterHandle,
        end_of_stream: bool,
    ) -> hooks::RequestFlow {
        headers_flow(self.flow.on_request_headers(
            &NativeHost { filter },
            &mut LedgerHandle(&PROCESS.ledger),
            end_of_stream,
        ))
    }

    fn on_request_body(
        &mut self,
        filter: &FilterHandle,
        end_of_stream: bool,
    ) -> hooks::RequestFlow {
        let body_size = filter.request_body_size();
        body_flow(self.flow.on_request_body(
            &NativeHost { filter },
            &mut LedgerHandle(&PROCESS.ledger),
            body_size,
            end_of_stream,
        ))
    }

    /// Trailers end a request whose body never carried end-of-stream: the body is complete here
    /// and is decided before anything goes upstream.
    fn on_request_trailers(&mut self, filter: &FilterHandle) -> hooks::RequestFlow {
        headers_flow(
            self.flow
                .on_request_trailers(&NativeHost { filter }, &mut LedgerHandle(&PROCESS.ledger)),
        )
    }

    fn on_response_headers(&mut self, filter: &FilterHandle, end_of_stream: bool) {
        self.flow
            .on_response_headers(&NativeHost { filter }, end_of_stream);
    }

    fn on_response_body(&mut self, filter: &FilterHandle, end_of_stream: bool) {
        let chunk_size = filter.response_body_chunk_size();
        self.flow
            .on_response_body(&NativeHost { filter }, chunk_size, end_of_stream);
    }

    fn on_stream_complete(&mut self, filter: &FilterHandle) {
        self.flow
            .on_log(&NativeHost { filter }, &mut LedgerHandle(&PROCESS.ledger));
    }
}
