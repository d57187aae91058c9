//! The proxy-wasm contexts. One root context per VM compiles the configuration once and, with
//! `sync`, follows pushed policies (and polls, when it is the sync service or the lease holder);
//! one request context per HTTP stream hands its headers to `handler`.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use keyward_engine::config::{PluginConfig, Role};
use keyward_engine::sync::{Poller, SnapshotStamp, SyncSettings};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel as SdkLogLevel};

use crate::envoy_host::EnvoyHost;
use crate::handler::{
    on_request_body, on_request_headers, on_response_body, on_response_headers, on_stream_end,
    FilterState, Verdict,
};
use crate::host::{LogLevel, SharedData, Telemetry};
use crate::metering_flow::{Admitted, Ticket};
use crate::metrics::Metrics;
use crate::sync_agent::{
    claim_instance_number, ChunkMetrics, Followed, PolicyFollower, SnapshotPoller,
};
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
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(KeywardRoot::default()) });
}}

#[derive(Default)]
struct KeywardRoot {
    /// This VM's number among those sharing the vm_id, claimed once (see claim_instance_number).
    instance_number: Option<u64>,
    state: Option<Rc<FilterState>>,
    metrics: Option<Arc<Metrics>>,
    role: Role,
    sync: Option<SyncSettings>,
    poller: Option<SnapshotPoller>,
    reporter: Option<UsageReporter>,
    follower: PolicyFollower,
    chunk_metrics: Option<ChunkMetrics>,
    /// The tick period set now, and the one to return to after a load.
    tick_ms: u32,
    base_tick_ms: u32,
    /// This VM's usage since its last flush; survives policy updates and reconfiguration.
    activity: Rc<RefCell<Activity>>,
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
            Some(metrics) => Arc::clone(metrics),
            None => {
                let defined = Metrics::define(|kind, name| host.define_metric(kind, name))
                    .map_err(|e| format!("cannot define metrics (host status {})", e.status))?;
                let defined = Arc::new(defined);
                self.metrics = Some(Arc::clone(&defined));
                defined
            }
        };
        let chunk_metrics = match self.chunk_metrics {
            Some(defined) => defined,
            None => {
                let counter = |name: &str| {
                    host.define_metric(crate::host::MetricKind::Counter, name)
                        .map(Some)
                        .map_err(|e| format!("cannot define metrics (host status {})", e.status))
                };
                let defined = ChunkMetrics {
                    fetched: counter("keyward.sync.chunks_fetched")?,
                    reused: counter("keyward.sync.chunks_reused")?,
                    mismatched: counter("keyward.sync.rejected.chunk_mismatch")?,
                    invalid: counter("keyward.sync.rejected.uncompilable_snapshot")?,
                };
                self.chunk_metrics = Some(defined);
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
                let mut poller = SnapshotPoller::new(sync.clone(), me);
                poller.chunk_metrics = chunk_metrics;
                Some(poller)
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
        let activity = config.sync.is_some().then(|| Rc::clone(&self.activity));
        if config.role == Role::SyncService {
            host.log(LogLevel::Info, "keyward: sync service configured");
        } else {
            self.state = Some(Rc::new(FilterState {
                settings: Arc::new(config.settings),
                policy: config.policy.map(Arc::new),
                metrics,
                activity,
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
            self.tick_ms = period;
            self.base_tick_ms = period;
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
        let followed = self
            .follower
            .refresh(&EnvoyHost, sync, current, LOADING_BUDGET_MS);
        let loading = matches!(followed, Ok(Followed::Loading));
        match followed {
            Ok(Followed::Updated(policy)) => self.install(*policy),
            Ok(Followed::Rejected) => {
                if let Some(id) = self.chunk_metrics.and_then(|m| m.invalid) {
                    EnvoyHost.increment_metric(id, 1);
                }
            }
            Ok(Followed::Nothing | Followed::Loading) => {}
            Err(error) => EnvoyHost.log(
                LogLevel::Warn,
                &format!(
                    "keyward: cannot read the published policy (host status {})",
                    error.status
                ),
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
        let Some(state) = &self.state else { return };
        let newer = state.policy.as_ref().is_none_or(|current| {
            SnapshotStamp {
                version: policy.version,
                issued_at: policy.issued_at,
            }
            .replaces(Some(SnapshotStamp {
                version: current.version,
                issued_at: current.issued_at,
            }))
        });
        if !newer {
            return;
        }
        self.state = Some(Rc::new(FilterState {
            settings: Arc::clone(&state.settings),
            policy: Some(Arc::new(policy)),
            metrics: Arc::clone(&state.metrics),
            activity: state.activity.clone(),
        }));
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
        if let Ok(mut activity) = self.activity.try_borrow_mut() {
            if let Ok(now_ms) = EnvoyHost.now_ms() {
                activity.set_clock_s(now_ms / 1000);
            }
            flush(&EnvoyHost, &mut activity);
        }
        if let (Some(poller), Some(metrics)) = (&mut self.poller, &self.metrics) {
            if let Err(error) = poller.on_tick(&EnvoyHost, metrics) {
                EnvoyHost.log(
                    LogLevel::Warn,
                    &format!("keyward sync: tick failed (host status {})", error.status),
                );
            }
            let polls = self.role == Role::SyncService || poller.holds_lease();
            if let (true, Some(reporter)) = (polls, &mut self.reporter) {
                if let Err(error) = reporter.on_tick(&EnvoyHost, metrics) {
                    EnvoyHost.log(
                        LogLevel::Warn,
                        &format!("keyward usage: tick failed (host status {})", error.status),
                    );
                }
            }
        }
        self.follow_published_policy();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Only reached after a successful on_configure of the filter role.
        let state = Rc::clone(self.state.as_ref()?);
        Some(Box::new(KeywardRequest {
            state,
            stage: Stage::Deciding,
            body_size: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Where a request is in its life.
enum Stage {
    Deciding,
    /// Allowed so far; the buffered body decides the rest.
    AwaitingBody(Box<Ticket>),
    /// Upstream; the response is watched and settled at the end.
    Forwarded(Box<Admitted>),
    Done,
}

struct KeywardRequest {
    state: Rc<FilterState>,
    stage: Stage,
    /// The buffered body size Envoy last reported, for a body that ends with trailers.
    body_size: usize,
}

impl KeywardRequest {
    fn apply(&mut self, verdict: Verdict) -> Action {
        match verdict {
            Verdict::Continue => {
                self.stage = Stage::Done;
                Action::Continue
            }
            Verdict::Forward(admitted) => {
                self.stage = Stage::Forwarded(admitted);
                Action::Continue
            }
            Verdict::AwaitBody(ticket) => {
                self.stage = Stage::AwaitingBody(ticket);
                // Holding the headers needs Envoy's allow_on_headers_stop_iteration; without
                // it, a pause here would also stop the body (see metering.hold_headers).
                if self.state.settings.metering.hold_headers {
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
            Verdict::Stop => {
                self.stage = Stage::Done;
                Action::Pause
            }
        }
    }
}

impl Context for KeywardRequest {}

impl HttpContext for KeywardRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let verdict = on_request_headers(&EnvoyHost, &self.state, end_of_stream);
        self.apply(verdict)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !matches!(self.stage, Stage::AwaitingBody(_)) {
            return Action::Continue;
        }
        self.body_size = body_size;
        let too_large = body_size > self.state.settings.metering.max_request_body_bytes;
        if !end_of_stream && !too_large {
            // Envoy keeps buffering; the request stays here until the body is complete.
            return Action::Pause;
        }
        let Stage::AwaitingBody(ticket) = std::mem::replace(&mut self.stage, Stage::Done) else {
            return Action::Continue;
        };
        let verdict = on_request_body(&EnvoyHost, &self.state, *ticket, body_size);
        self.apply(verdict)
    }

    /// Trailers end a request whose last body chunk did not carry end-of-stream: the body is
    /// complete here and must be decided before anything goes upstream (without this, a request
    /// with trailers skipped the body's model check and reservation).
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let Stage::AwaitingBody(ticket) = std::mem::replace(&mut self.stage, Stage::Done) else {
            return Action::Continue;
        };
        let verdict = on_request_body(&EnvoyHost, &self.state, *ticket, self.body_size);
        self.apply(verdict)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if let Stage::Forwarded(admitted) = &mut self.stage {
            on_response_headers(&EnvoyHost, admitted);
            if end_of_stream {
                on_response_body(&EnvoyHost, admitted, 0, true);
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Stage::Forwarded(admitted) = &mut self.stage {
            on_response_body(&EnvoyHost, admitted, body_size, end_of_stream);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Stage::Forwarded(admitted) = &mut self.stage {
            on_stream_end(&EnvoyHost, &self.state, admitted);
        }
    }
}
