//! keyward's filter configuration and streams on the dynamic-module host: the configuration is
//! compiled once per Envoy filter config (main thread) into one `FilterState` that every stream
//! on every worker shares; each stream runs keyward-filter's request glue (`RequestFlow`), the
//! same code the Wasm contexts run, with this host's `Host` and ledger. No decision is made here.

use std::sync::Arc;

use arc_swap::ArcSwap;

use keyward_engine::config::{PluginConfig, Role};
use keyward_filter::fleet_key::fleet_key_from_environment;
use keyward_filter::handler::{FilterState, Flow, RequestFlow};
use keyward_filter::metrics::Metrics;

use crate::hooks::{self, FilterConfig, HttpFilter};
use crate::host::{CalloutResponse, ConfigHandle, FilterHandle};
use crate::ledger::LedgerHandle;
use crate::native_host::{define_metric, log, NativeHost};
use crate::process::PROCESS;
use crate::sync::{log_policy, NativeSync};

/// One Envoy filter configuration: compiled once on the main thread, read by every worker.
#[derive(Debug)]
pub struct KeywardConfig {
    /// The settings and policy in force: one copy for all workers, replaced in one atomic step
    /// (a stream keeps the state it started with).
    state: ArcSwap<FilterState>,
    /// With a `sync` block: the poller, follower and usage reporter of this configuration.
    sync: Option<NativeSync>,
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
        if parsed.role == Role::SyncService {
            return Err(
                "invalid configuration: the native build has no sync service role; give the \
                 filter configuration itself the `sync` block (it polls once per process)"
                    .to_owned(),
            );
        }
        let metrics = Metrics::define(|kind, name| define_metric(config, kind, name))
            .map_err(|e| format!("cannot define metrics ({e})"))?;
        let (fleet_key, fleet_note) = fleet_key_from_environment();
        if let Some((level, note)) = fleet_note {
            log(level, &note);
        }
        let activity = parsed.sync.as_ref().map(|_| Arc::clone(&PROCESS.activity));
        let state = FilterState::new(
            Arc::new(parsed.settings),
            parsed.policy,
            Arc::new(metrics),
            // Usage is recorded for the reporter only when there is one.
            activity,
            fleet_key,
        );
        log_policy(config, &state, "configured (native)");
        let sync = match &parsed.sync {
            Some(settings) => {
                let metering = &state.settings.metering;
                Some(NativeSync::start(
                    config,
                    settings,
                    &metering.report_path,
                    metering.report_interval_ms,
                )?)
            }
            None => None,
        };
        Ok(KeywardConfig {
            state: ArcSwap::from_pointee(state),
            sync,
            #[cfg(feature = "abi-probe")]
            probe: None,
        })
    }

    fn new_filter(&self) -> KeywardStream {
        KeywardStream {
            flow: RequestFlow::new(self.state.load_full()),
        }
    }

    fn on_scheduled(&self, config: ConfigHandle, event_id: u64) {
        #[cfg(feature = "abi-probe")]
        if let Some(probe) = &self.probe {
            probe.on_scheduled(config, event_id);
            return;
        }
        if let Some(sync) = &self.sync {
            sync.on_scheduled(config, event_id, &self.state);
        }
    }

    fn on_http_callout_done(
        &self,
        config: ConfigHandle,
        callout_id: u64,
        response: Option<CalloutResponse>,
    ) {
        #[cfg(feature = "abi-probe")]
        if let Some(probe) = &self.probe {
            probe.on_http_callout_done(config, callout_id, response);
            return;
        }
        if let Some(sync) = &self.sync {
            sync.on_callout_done(config, callout_id, response.as_ref(), &self.state);
        }
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
        let host = NativeHost::new(filter);
        let flow =
            self.flow
                .on_request_headers(&host, &mut LedgerHandle(&PROCESS.ledger), end_of_stream);
        host.finish();
        headers_flow(flow)
    }

    fn on_request_body(
        &mut self,
        filter: &FilterHandle,
        end_of_stream: bool,
    ) -> hooks::RequestFlow {
        let host = NativeHost::new(filter);
        let flow = self.flow.on_request_body(
            &host,
            &mut LedgerHandle(&PROCESS.ledger),
            filter.request_body_size(),
            end_of_stream,
        );
        host.finish();
        body_flow(flow)
    }

    /// Trailers end a request whose body never carried end-of-stream: the body is complete here
    /// and is decided before anything goes upstream.
    fn on_request_trailers(&mut self, filter: &FilterHandle) -> hooks::RequestFlow {
        let host = NativeHost::new(filter);
        let flow = self
            .flow
            .on_request_trailers(&host, &mut LedgerHandle(&PROCESS.ledger));
        host.finish();
        headers_flow(flow)
    }

    fn on_response_headers(&mut self, filter: &FilterHandle, end_of_stream: bool) {
        self.flow
            .on_response_headers(&NativeHost::new(filter), end_of_stream);
    }

    fn on_response_body(&mut self, filter: &FilterHandle, end_of_stream: bool) {
        let chunk_size = filter.response_body_chunk_size();
        self.flow
            .on_response_body(&NativeHost::new(filter), chunk_size, end_of_stream);
    }

    fn on_stream_complete(&mut self, filter: &FilterHandle) {
        self.flow
            .on_log(&NativeHost::new(filter), &mut LedgerHandle(&PROCESS.ledger));
    }
}
