//! The proxy-wasm contexts. One root context per VM compiles the configuration once and, with
//! `sync`, follows pushed policies (and polls, when it is the sync service or the lease holder);
//! one request context per HTTP stream hands its headers to `handler`.

use std::rc::Rc;

use keyward_engine::config::{PluginConfig, Role};
use keyward_engine::sync::{Poller, SnapshotStamp, SyncSettings};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel as SdkLogLevel};

use crate::envoy_host::EnvoyHost;
use crate::handler::{on_request_headers, FilterState, Verdict};
use crate::host::{LogLevel, Telemetry};
use crate::metrics::Metrics;
use crate::sync_agent::{claim_instance_number, PolicyFollower, SnapshotPoller};

/// How often filter VMs look for a newly published policy (one small shared-data read).
const FOLLOW_TICK_MS: u32 = 250;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(SdkLogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(KeywardRoot::default()) });
}}

#[derive(Default)]
struct KeywardRoot {
    /// This VM's number among those sharing the vm_id, claimed once (see claim_instance_number).
    instance_number: Option<u64>,
    state: Option<Rc<FilterState>>,
    metrics: Option<Rc<Metrics>>,
    role: Role,
    sync: Option<SyncSettings>,
    poller: Option<SnapshotPoller>,
    follower: PolicyFollower,
}

impl KeywardRoot {
    fn configure(&mut self) -> Result<(), String> {
        let host = EnvoyHost;
        let bytes = host
            .plugin_configuration()
            .map_err(|e| {
                format!(
                    "cannot read the plugin configuration (host status {})",
                    e.status
                )
            })?
            .unwrap_or_default();
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}".to_vec()
        } else {
            bytes
        };
        let config =
            PluginConfig::from_json(&bytes).map_err(|e| format!("invalid configuration: {e}"))?;
        let metrics = match &self.metrics {
            Some(metrics) => Rc::clone(metrics),
            None => {
                let defined = Metrics::define(|kind, name| host.define_metric(kind, name))
                    .map_err(|e| format!("cannot define metrics (host status {})", e.status))?;
                let defined = Rc::new(defined);
                self.metrics = Some(Rc::clone(&defined));
                defined
            }
        };
        self.role = config.role;
        self.sync = config.sync.clone();
        // A reconfigured VM starts over from the configuration's own policy, so it must look at
        // the published one again even if it had seen it before.
        self.follower = PolicyFollower::default();
        self.poller = match &config.sync {
            Some(sync) if config.role == Role::SyncService || sync.poller == Poller::Lease => {
                let number = match self.instance_number {
                    Some(number) => number,
                    None => claim_instance_number(&host).map_err(|e| {
                        format!("cannot claim a sync instance id (host status {})", e.status)
                    })?,
                };
                self.instance_number = Some(number);
                let me = format!("vm{number}");
                Some(SnapshotPoller::new(sync.clone(), me))
            }
            _ => None,
        };
        if config.role == Role::SyncService {
            host.log(LogLevel::Info, "keyward: sync service configured");
        } else {
            self.state = Some(Rc::new(FilterState {
                settings: Rc::new(config.settings),
                policy: config.policy.map(Rc::new),
                metrics,
            }));
            self.log_policy("configured");
        }
        if self.sync.is_some() {
            let period = match (&self.poller, self.role) {
                (Some(poller), Role::SyncService) => {
                    (poller.settings.interval_ms / 4).clamp(50, 1000) as u32
                }
                _ => FOLLOW_TICK_MS,
            };
            host.set_tick_period_ms(period)
                .map_err(|e| format!("cannot set the tick period (host status {})", e.status))?;
            // The first tick comes one period late: look and poll right away.
            self.on_tick();
        }
        Ok(())
    }

    fn log_policy(&self, event: &str) {
        let Some(state) = &self.state else { return };
        match &state.policy {
            Some(policy) => {
                EnvoyHost.record_metric(state.metrics.policy_version, policy.version);
                EnvoyHost.log(
                    LogLevel::Info,
                    &format!(
                        "keyward: {event}; policy version {} with {} keys and {} projects",
                        policy.version,
                        policy.keys().len(),
                        policy.projects().len()
                    ),
                );
            }
            None => EnvoyHost.log(
                LogLevel::Warn,
                &format!("keyward: {event} without a policy; requests get policy_unavailable unless fail_open"),
            ),
        }
    }

    fn follow_published_policy(&mut self) {
        let (Some(sync), Some(state)) = (&self.sync, &self.state) else {
            return;
        };
        let current = state.policy.as_ref().map(|policy| SnapshotStamp {
            version: policy.version,
            issued_at: policy.issued_at,
        });
        match self.follower.refresh(&EnvoyHost, sync, current) {
            Ok(Some(policy)) => {
                self.state = Some(Rc::new(FilterState {
                    settings: Rc::clone(&state.settings),
                    policy: Some(Rc::new(policy)),
                    metrics: Rc::clone(&state.metrics),
                }));
                self.log_policy("policy updated");
            }
            Ok(None) => {}
            Err(error) => EnvoyHost.log(
                LogLevel::Warn,
                &format!(
                    "keyward: cannot read the published policy (host status {})",
                    error.status
                ),
            ),
        }
    }
}

impl Context for KeywardRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let (Some(poller), Some(metrics)) = (&mut self.poller, &self.metrics) {
            poller.on_response(&EnvoyHost, metrics, token_id, body_size);
        }
        // A lease holder also serves requests: pick up what it just published without waiting.
        self.follow_published_policy();
    }
}

impl RootContext for KeywardRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match self.configure() {
            Ok(()) => true,
            Err(message) => {
                // Envoy rejects the configuration; the previous one (if any) stays in force.
                EnvoyHost.log(LogLevel::Error, &format!("keyward: {message}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let (Some(poller), Some(metrics)) = (&mut self.poller, &self.metrics) {
            if let Err(error) = poller.on_tick(&EnvoyHost, metrics) {
                EnvoyHost.log(
                    LogLevel::Warn,
                    &format!("keyward sync: tick failed (host status {})", error.status),
                );
            }
        }
        self.follow_published_policy();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Only reached after a successful on_configure of the filter role.
        let state = Rc::clone(self.state.as_ref()?);
        Some(Box::new(KeywardRequest { state }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct KeywardRequest {
    state: Rc<FilterState>,
}

impl Context for KeywardRequest {}

impl HttpContext for KeywardRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match on_request_headers(&EnvoyHost, &self.state) {
            Verdict::Continue => Action::Continue,
            Verdict::Stop => Action::Pause,
        }
    }
}
