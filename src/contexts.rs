//! The proxy-wasm contexts. One root context per VM compiles the configuration once and, with
//! `sync`, follows pushed policies (and polls, when it is the sync service or the lease holder);
//! one request context per HTTP stream hands its headers to `handler`.

use std::sync::{Arc, Mutex};

use keyward_engine::config::{PluginConfig, Role};
use keyward_engine::sync::{Poller, SnapshotStamp, SyncSettings};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel as SdkLogLevel};

use crate::envoy_host::EnvoyHost;
use crate::fleet_key::fleet_key_from_environment;
use crate::handler::{refuse_unconfigured, FilterState, Flow, RequestFlow, SharedLedger};
use crate::host::{LogLevel, SharedData, Telemetry};
use crate::metrics::{Metrics, RejectionReason, SyncOutcome};
use crate::panic_log::log_panic;
use crate::sync::{claim_instance_number, Followed, PolicyFollower, SnapshotPoller};
use crate::usage_activity::{flush, Activity};
use crate::usage_reporter::UsageReporter;

/// How often filter VMs look for a newly published policy (one small shared-data read).
const FOLLOW_TICK_MS: u32 = 250;
/// While a chunked snapshot is being compiled: a tick this often, each spending at most
/// `LOADING_BUDGET_MS` on it, so requests on this worker wait at most about that long.
const LOADING_TICK_MS: u32 = 20;
const LOADING_BUDGET_MS: u64 = 8;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(SdkLogLevel::Info);
    // After set_log_level, which installs the SDK's hook (the whole message, unfiltered, and a
    // failing log call panics again inside it): ours replaces it, for every panic of this VM.
    std::panic::set_hook(Box::new(|info| log_panic(&EnvoyHost, info)));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(KeywardRoot::default()) });
}}

#[derive(Default)]
struct KeywardRoot {
    /// This VM's number among those sharing the vm_id, claimed once (see claim_instance_number).
    instance_number: Option<u64>,
    state: Option<Arc<FilterState>>,
    metrics: Option<Arc<Metrics>>,
    role: Role,
    sync: Option<SyncSettings>,
    poller: Option<SnapshotPoller>,
    reporter: Option<UsageReporter>,
    follower: PolicyFollower,
    /// The tick period set now, and the one to return to after a load.
    tick_ms: u32,
    base_tick_ms: u32,
    /// This VM's usage since its last flush; survives policy updates and reconfiguration.
    activity: Arc<Mutex<Activity>>,
}

impl KeywardRoot {
    fn configure(&mut self) -> Result<(), String> {
        let host = EnvoyHost;
        let bytes = host
            .plugin_configuration()
            .map_err(|e| format!("cannot read the plugin configuration ({})", e))?
            .unwrap_or_default();
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}".to_vec()
        } else {
            bytes
        };
        let config =
            PluginConfig::from_json(&bytes).map_err(|e| format!("invalid configuration: {e}"))?;
        let metrics = match &self.metrics {
            Some(metrics) => Arc::clone(metrics),
            None => {
                let defined = Metrics::define(|kind, name| host.define_metric(kind, name))
                    .map_err(|e| format!("cannot define metrics ({})", e))?;
                let defined = Arc::new(defined);
                self.metrics = Some(Arc::clone(&defined));
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
                    None => claim_instance_number(&host)
                        .map_err(|e| format!("cannot claim a sync instance id ({})", e))?,
                };
                self.instance_number = Some(number);
                let me = format!("vm{number}");
                Some(SnapshotPoller::new(sync.clone(), me))
            }
            _ => None,
        };
        let metering = &config.settings.metering;
        self.reporter = match (&config.sync, &self.poller) {
            (Some(sync), Some(_)) => Some(UsageReporter::new(
                sync,
                &metering.report_path,
                metering.report_interval_ms,
            )),
            _ => None,
        };
        let activity = config.sync.is_some().then(|| Arc::clone(&self.activity));
        if config.role == Role::SyncService {
            host.log(LogLevel::Info, "keyward: sync service configured");
        } else {
            let (fleet_key, fleet_note) = fleet_key_from_environment();
            if let Some((level, note)) = fleet_note {
                host.log(level, &note);
            }
            self.state = Some(Arc::new(FilterState::new(
                Arc::new(config.settings),
                config.policy,
                metrics,
                activity,
                fleet_key,
            )));
            self.log_policy("configured");
        }
        if let Some(sync) = &self.sync {
            // The sync service polls; filter VMs look at what it published, a lease holder
            // among them polling on those ticks too.
            let period = match self.role {
                Role::SyncService => (sync.interval_ms / 4).clamp(50, 1000) as u32,
                Role::Filter => FOLLOW_TICK_MS,
            };
            host.set_tick_period_ms(period)
                .map_err(|e| format!("cannot set the tick period ({})", e))?;
            self.tick_ms = period;
            self.base_tick_ms = period;
            // The first tick comes one period late: look and poll right away.
            self.on_tick();
        }
        Ok(())
    }

    fn log_policy(&self, event: &str) {
        let Some(state) = &self.state else { return };
        if let Some((level, note)) = state.provider_keys_log() {
            EnvoyHost.log(level, note);
        }
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
        let followed = self
            .follower
            .refresh(&EnvoyHost, sync, current, LOADING_BUDGET_MS);
        let loading = matches!(followed, Ok(Followed::Loading));
        match followed {
            Ok(Followed::Updated(policy)) => self.install(*policy),
            Ok(Followed::Rejected) => {
                let uncompilable = SyncOutcome::Rejected(RejectionReason::UncompilableSnapshot);
                if let Some(id) = state.metrics.sync_counter(uncompilable) {
                    EnvoyHost.increment_metric(id, 1);
                }
            }
            Ok(Followed::Nothing | Followed::Loading) => {}
            Err(error) => EnvoyHost.log(
                LogLevel::Warn,
                &format!("keyward: cannot read the published policy ({})", error),
            ),
        }
        // Tick fast while a snapshot is being compiled, a bounded slice each time.
        let wanted = if loading {
            LOADING_TICK_MS.min(self.base_tick_ms)
        } else {
            self.base_tick_ms
        };
        if wanted != self.tick_ms && EnvoyHost.set_tick_period_ms(wanted).is_ok() {
            self.tick_ms = wanted;
        }
    }

    /// Swaps in a newer policy: one step, requests already running keep the one they started
    /// with.
    fn install(&mut self, policy: keyward_engine::snapshot::Policy) {
        let Some(updated) = self
            .state
            .as_ref()
            .and_then(|state| state.updated_to(policy))
        else {
            return;
        };
        self.state = Some(Arc::new(updated));
        self.log_policy("policy updated");
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
        if let (Some(reporter), Some(metrics)) = (&mut self.reporter, &self.metrics) {
            if reporter.owns_call(token_id) {
                reporter.on_response(&EnvoyHost, metrics, token_id, body_size);
                return;
            }
        }
        let mut fresh = None;
        if let (Some(poller), Some(metrics)) = (&mut self.poller, &self.metrics) {
            poller.on_response(&EnvoyHost, metrics, token_id, body_size);
            fresh = poller.take_fresh();
        }
        // A lease holder also serves requests: use the policy its poller just verified and
        // parsed (no second parse), or pick up what it just published without waiting.
        if let (Some((stamp, policy)), Some(_)) = (fresh, &self.state) {
            self.follower.mark_seen(stamp);
            self.install(policy);
        }
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
        if let Ok(mut activity) = self.activity.try_lock() {
            if let Ok(now_ms) = EnvoyHost.now_ms() {
                activity.set_clock_s(now_ms / 1000);
            }
            flush(&EnvoyHost, &mut activity);
        }
        if let (Some(poller), Some(metrics)) = (&mut self.poller, &self.metrics) {
            if let Err(error) = poller.on_tick(&EnvoyHost, metrics) {
                EnvoyHost.log(
                    LogLevel::Warn,
                    &format!("keyward sync: tick failed ({})", error),
                );
            }
            let polls = self.role == Role::SyncService || poller.holds_lease();
            if let (true, Some(reporter)) = (polls, &mut self.reporter) {
                if let Err(error) = reporter.on_tick(&EnvoyHost, metrics) {
                    EnvoyHost.log(
                        LogLevel::Warn,
                        &format!("keyward usage: tick failed ({})", error),
                    );
                }
            }
        }
        self.follow_published_policy();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Always a context: the SDK's dispatcher panics on `None`, which kills the worker's VM.
        // Without a filter state (a `sync_service` configuration used as an HTTP filter, or a
        // configuration that failed), every request is refused.
        let flow = self
            .state
            .as_ref()
            .map(|state| RequestFlow::new(Arc::clone(state)));
        Some(Box::new(KeywardRequest { flow }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream: its glue, or nothing when this VM has no filter state.
struct KeywardRequest {
    flow: Option<RequestFlow>,
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

impl Context for KeywardRequest {}

impl HttpContext for KeywardRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        match self.flow.as_mut() {
            Some(flow) => action(flow.on_request_headers(
                &EnvoyHost,
                &mut SharedLedger(&EnvoyHost),
                end_of_stream,
            )),
            None => action(refuse_unconfigured(&EnvoyHost)),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.flow.as_mut() {
            Some(flow) => action(flow.on_request_body(
                &EnvoyHost,
                &mut SharedLedger(&EnvoyHost),
                body_size,
                end_of_stream,
            )),
            None => Action::Pause,
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match self.flow.as_mut() {
            Some(flow) => {
                action(flow.on_request_trailers(&EnvoyHost, &mut SharedLedger(&EnvoyHost)))
            }
            None => Action::Pause,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if let Some(flow) = self.flow.as_mut() {
            flow.on_response_headers(&EnvoyHost, end_of_stream);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(flow) = self.flow.as_mut() {
            flow.on_response_body(&EnvoyHost, body_size, end_of_stream);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(flow) = self.flow.as_mut() {
            flow.on_log(&EnvoyHost, &mut SharedLedger(&EnvoyHost));
        }
    }
}
