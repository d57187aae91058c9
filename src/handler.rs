//! The filter's request glue: reads facts from the host, calls the engine's request core
//! (`keyward_engine::gate`), applies the effects it returns. It decides nothing: every check,
//! refusal, header edit and charge comes from the engine. Host-agnostic (the `Host` trait, and
//! a ledger the host passes in: `SharedLedger` over Envoy's shared data in the Wasm filter), so
//! it is tested natively with a fake host and serves any host.

use std::sync::{Arc, Mutex, PoisonError};

use keyward_engine::config::Settings;
use keyward_engine::effects::{Edit, Effects, Level, Reply};
use keyward_engine::gate::{Gate, HeaderFacts, Next, Step, Ticket};
use keyward_engine::ledger::{Ledger, LedgerError};
use keyward_engine::metering::SpendCounter;
use keyward_engine::provider_keys::{FleetPrivateKey, ProviderKeys};
use keyward_engine::rate_limit::RateState;
use keyward_engine::snapshot::Policy;
use keyward_engine::sync::SnapshotStamp;
use keyward_engine::trace::NoTrace;
use keyward_engine::watch::Watch;
use keyward_engine::window_counter::WindowCounter;

use crate::host::{Host, HostError, LogLevel, SharedData};
use crate::metrics::Metrics;
use crate::shared_record::update;
use crate::usage_activity::Activity;

/// State shared by every request context of one root context. Immutable, except the usage
/// activity, which requests add to and the root context's tick flushes. `Send + Sync` (`Arc`,
/// `Mutex`) so that the native host holds one copy per process for all its worker threads; in
/// the single-threaded Wasm VM the lock is never contended.
#[derive(Debug)]
pub struct FilterState {
    pub settings: Arc<Settings>,
    pub policy: Option<Arc<Policy>>,
    pub metrics: Arc<Metrics>,
    /// Present when usage is reported to a control plane (a `sync` block is configured).
    pub activity: Option<Arc<Mutex<Activity>>>,
    /// Opens each policy's provider keys (absent: this data plane was given none).
    pub fleet_key: Option<Arc<FleetPrivateKey>>,
    /// What opening the policy's provider keys gave, for the host's log (never a secret).
    pub provider_keys_note: Option<String>,
}

impl FilterState {
    /// A state with `policy` in force, its provider keys opened (once, here: never per request).
    pub fn new(
        settings: Arc<Settings>,
        policy: Option<Policy>,
        metrics: Arc<Metrics>,
        activity: Option<Arc<Mutex<Activity>>>,
        fleet_key: Option<Arc<FleetPrivateKey>>,
    ) -> FilterState {
        let (policy, provider_keys_note) = match policy {
            Some(mut policy) => {
                let note = policy.open_provider_keys(fleet_key.as_deref());
                (Some(Arc::new(policy)), note)
            }
            None => (None, None),
        };
        FilterState {
            settings,
            policy,
            metrics,
            activity,
            fleet_key,
            provider_keys_note,
        }
    }

    /// This state with `policy` in force, if `policy` is newer than the one it holds (`None`
    /// otherwise: an older or equal snapshot never replaces the one in use).
    pub fn updated_to(&self, policy: Policy) -> Option<FilterState> {
        let stamp = |policy: &Policy| SnapshotStamp {
            version: policy.version,
            issued_at: policy.issued_at,
        };
        if !stamp(&policy).replaces(self.policy.as_deref().map(stamp)) {
            return None;
        }
        Some(FilterState::new(
            Arc::clone(&self.settings),
            Some(policy),
            Arc::clone(&self.metrics),
            self.activity.clone(),
            self.fleet_key.clone(),
        ))
    }

    /// What opening the policy's provider keys gave, with its log level: info when opened,
    /// error when they could not be (provider routes then refuse).
    pub fn provider_keys_log(&self) -> Option<(LogLevel, &str)> {
        let note = self.provider_keys_note.as_deref()?;
        let opened = self
            .policy
            .as_deref()
            .is_some_and(|policy| matches!(policy.provider_keys(), ProviderKeys::Open(_)));
        Some((
            if opened {
                LogLevel::Info
            } else {
                LogLevel::Error
            },
            note,
        ))
    }

    fn gate(&self) -> Gate<'_> {
        Gate {
            settings: &self.settings,
            policy: self.policy.as_deref(),
            reports_usage: self.activity.is_some(),
        }
    }
}

/// What the host does with the stream after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Hold the stream here (a local reply was sent, or the body is awaited).
    Pause,
}

/// Where a request is in its life.
#[derive(Debug)]
enum Stage {
    Deciding,
    /// Allowed so far; the buffered body decides the rest.
    AwaitingBody(Box<Ticket>),
    /// Upstream; the response is watched and settled at the end.
    Watching(Box<Watch>),
    Done,
}

/// One request's glue: its state (the policy it started with) and where it is.
#[derive(Debug)]
pub struct RequestFlow {
    state: Arc<FilterState>,
    stage: Stage,
    /// The buffered body size the host last reported: a body may end with trailers instead of
    /// an end-of-stream chunk.
    body_size: usize,
}

/// Envoy's shared data as the engine's ledger: one compare-and-swap update per change.
pub struct SharedLedger<'h, H: SharedData>(pub &'h H);

impl<H: SharedData> Ledger for SharedLedger<'_, H> {
    fn now_ms(&mut self) -> Result<u64, LedgerError> {
        Ok(self.0.now_ms()?)
    }

    fn update_spend(
        &mut self,
        entry: &str,
        change: &mut dyn FnMut(&mut SpendCounter) -> bool,
    ) -> Result<(), LedgerError> {
        Ok(update(self.0, entry, |counter: &mut SpendCounter| {
            (change(counter), ())
        })?)
    }

    fn update_rate(
        &mut self,
        entry: &str,
        change: &mut dyn FnMut(&mut RateState) -> bool,
    ) -> Result<(), LedgerError> {
        Ok(update(self.0, entry, |state: &mut RateState| {
            (change(state), ())
        })?)
    }

    fn update_window(
        &mut self,
        entry: &str,
        change: &mut dyn FnMut(&mut WindowCounter) -> bool,
    ) -> Result<(), LedgerError> {
        Ok(update(self.0, entry, |counter: &mut WindowCounter| {
            (change(counter), ())
        })?)
    }
}

impl RequestFlow {
    pub fn new(state: Arc<FilterState>) -> RequestFlow {
        RequestFlow {
            state,
            stage: Stage::Deciding,
            body_size: 0,
        }
    }

    pub fn on_request_headers(
        &mut self,
        host: &impl Host,
        ledger: &mut dyn Ledger,
        end_of_stream: bool,
    ) -> Flow {
        let state = Arc::clone(&self.state);
        let gate = state.gate();
        let headers = match host.request_headers() {
            Ok(headers) => headers,
            Err(error) => return self.fail_closed(host, &gate, None, "", error),
        };
        let route_name_bytes = if gate.needs_route_name() {
            match host.property(&["xds", "route_name"]) {
                Ok(bytes) => bytes,
                Err(error) => return self.fail_closed(host, &gate, None, "", error),
            }
        } else {
            None
        };
        // Without expiring keys, an expiring snapshot or a max age, no check reads the clock: a
        // host call saved on every request.
        let now_s = if gate.needs_clock() {
            match host.now_unix_seconds() {
                Ok(now) => now,
                Err(error) => return self.fail_closed(host, &gate, None, "", error),
            }
        } else {
            0
        };
        let facts = HeaderFacts {
            headers: &headers,
            route_name: route_name_bytes
                .as_deref()
                .and_then(|bytes| core::str::from_utf8(bytes).ok())
                .filter(|name| !name.is_empty()),
            now_s,
            end_of_stream,
        };
        let step = gate.on_headers(&facts, ledger, &mut NoTrace);
        let flow = self.advance(host, ledger, &gate, step, None);
        host.recycle_headers(headers);
        flow
    }

    pub fn on_request_body(
        &mut self,
        host: &impl Host,
        ledger: &mut dyn Ledger,
        body_size: usize,
        end: bool,
    ) -> Flow {
        if !matches!(self.stage, Stage::AwaitingBody(_)) {
            return Flow::Continue;
        }
        self.body_size = body_size;
        let state = Arc::clone(&self.state);
        let gate = state.gate();
        let too_large = gate.body_too_large(body_size);
        if !end && !too_large {
            // Envoy keeps buffering; the request stays here until the body is complete.
            return Flow::Pause;
        }
        let Stage::AwaitingBody(ticket) = std::mem::replace(&mut self.stage, Stage::Done) else {
            return Flow::Continue;
        };
        let route = ticket.route;
        let body = if too_large || body_size == 0 {
            None
        } else {
            match host.request_body(body_size) {
                Ok(body) => Some(body),
                Err(error) => {
                    return self.fail_closed(host, &gate, route, &ticket.request_id, error)
                }
            }
        };
        let request_id = ticket.request_id.clone();
        let body_view = match (&body, too_large) {
            (_, true) => None,
            (Some(body), false) => Some(body.as_slice()),
            (None, false) => Some(&[][..]),
        };
        let body_step = gate.on_body(*ticket, body_view, ledger, &mut NoTrace);
        if let Some(new_body) = &body_step.new_body {
            if let Err(error) = host.replace_request_body(body_size, new_body) {
                return self.fail_closed(host, &gate, route, &request_id, error);
            }
        }
        self.advance(host, ledger, &gate, body_step.step, route)
    }

    /// Trailers end a request whose last body chunk did not carry end-of-stream (HTTP/2 can do
    /// that): the body is complete here and is decided before anything goes upstream. Without
    /// this, such a request would skip the body's model check and its reservation.
    pub fn on_request_trailers(&mut self, host: &impl Host, ledger: &mut dyn Ledger) -> Flow {
        let size = self.body_size;
        self.on_request_body(host, ledger, size, true)
    }

    pub fn on_response_headers(&mut self, host: &impl Host, end_of_stream: bool) {
        let Stage::Watching(watch) = &mut self.stage else {
            return;
        };
        let outcome = (|| -> Result<(), HostError> {
            for (name, value) in watch.response_headers() {
                host.replace_response_header(name, value.as_bytes())?;
            }
            if watch.reads_response_headers() {
                let headers = host.response_headers()?;
                watch.on_response_headers(&headers);
                host.recycle_headers(headers);
            }
            Ok(())
        })();
        if let Err(error) = outcome {
            host.log(
                LogLevel::Warn,
                &format!("keyward: cannot read or amend response headers ({error})"),
            );
        }
        if end_of_stream {
            watch.on_response_body(0, None, true);
        }
    }

    pub fn on_response_body(&mut self, host: &impl Host, chunk_size: usize, end: bool) {
        let Stage::Watching(watch) = &mut self.stage else {
            return;
        };
        let bytes = if watch.reads_response_body() && chunk_size > 0 {
            match host.response_body(chunk_size) {
                Ok(bytes) => Some(bytes),
                Err(error) => {
                    host.log(
                        LogLevel::Warn,
                        &format!("keyward metering: cannot read a response chunk ({error})"),
                    );
                    None
                }
            }
        } else {
            None
        };
        watch.on_response_body(chunk_size, bytes.as_deref(), end);
    }

    /// The stream is over, however it ended: settle what it holds.
    pub fn on_log(&mut self, host: &impl Host, ledger: &mut dyn Ledger) {
        let Stage::Watching(watch) = &mut self.stage else {
            return;
        };
        let state = Arc::clone(&self.state);
        let gate = state.gate();
        let effects = watch.settle(&gate, ledger);
        report(host, &state, &effects);
    }

    /// Applies a step's effects and moves to its next stage.
    fn advance(
        &mut self,
        host: &impl Host,
        ledger: &mut dyn Ledger,
        gate: &Gate<'_>,
        step: Step<'_>,
        route: Option<usize>,
    ) -> Flow {
        let Step { effects, next } = step;
        if let Err(error) = apply_edits(host, &effects.edits) {
            let request_id = match &next {
                Next::AwaitBody(ticket) => ticket.request_id.clone(),
                Next::Watch(watch) => watch.ticket.request_id.clone(),
                Next::Done | Next::Stop => String::new(),
            };
            if let Next::Watch(mut watch) = next {
                // Admitted, then refused: what it holds goes back when the stream ends.
                let settled = watch.settle(gate, ledger);
                report(host, &self.state, &settled);
            }
            return self.fail_closed(host, gate, route, &request_id, error);
        }
        report(host, &self.state, &effects);
        if let Some(reply) = &effects.reply {
            send_reply(host, reply);
        }
        match next {
            Next::Done => {
                self.stage = Stage::Done;
                Flow::Continue
            }
            Next::Stop => {
                self.stage = Stage::Done;
                Flow::Pause
            }
            Next::Watch(watch) => {
                self.stage = Stage::Watching(watch);
                Flow::Continue
            }
            Next::AwaitBody(ticket) => {
                self.stage = Stage::AwaitingBody(ticket);
                // Holding the headers needs Envoy's allow_on_headers_stop_iteration; without it,
                // a pause here would also stop the body (see metering.hold_headers).
                if self.state.settings.metering.hold_headers {
                    Flow::Pause
                } else {
                    Flow::Continue
                }
            }
        }
    }

    /// A host call failed: the request is refused (500), never let through unchecked.
    fn fail_closed(
        &mut self,
        host: &impl Host,
        gate: &Gate<'_>,
        route: Option<usize>,
        request_id: &str,
        error: HostError,
    ) -> Flow {
        host.log(
            LogLevel::Error,
            &format!("keyward: host call failed ({error}); refusing the request"),
        );
        self.stage = Stage::Done;
        let effects = gate.internal_error(route, request_id);
        report(host, &self.state, &effects);
        if let Some(reply) = &effects.reply {
            send_reply(host, reply);
        }
        Flow::Pause
    }
}

/// A request on a VM without filter state: refused with keyward's 500, never let through.
pub fn refuse_unconfigured(host: &impl Host) -> Flow {
    host.log(
        LogLevel::Error,
        "keyward: no filter configuration on this VM (is a sync_service configuration used as an HTTP filter?); refusing the request",
    );
    send_reply(host, &Reply::unconfigured());
    Flow::Pause
}

/// Sends keyward's local reply. On failure nothing else can be sent: the request stays paused,
/// never reaching upstream.
fn send_reply(host: &impl Host, reply: &Reply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    if let Err(error) = host.send_local_reply(reply.status, &headers, reply.body.as_bytes()) {
        host.log(
            LogLevel::Error,
            &format!("keyward: local reply failed ({error})"),
        );
    }
}

fn apply_edits(host: &impl Host, edits: &[Edit<'_>]) -> Result<(), HostError> {
    for edit in edits {
        match edit {
            Edit::Remove(name) => host.remove_request_header(name)?,
            Edit::Set(name, value) => host.replace_request_header(name, value.as_bytes())?,
            Edit::Add(name, value) => host.add_request_header(name, value.as_bytes())?,
        }
    }
    Ok(())
}

/// Logs, counters and usage: best effort, never a reason to change the outcome.
fn report(host: &impl Host, state: &FilterState, effects: &Effects<'_>) {
    for entry in &effects.logs {
        let level = match entry.level {
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        host.log(level, &entry.line);
    }
    for count in &effects.counts {
        if let Some((id, delta)) = state.metrics.counter_for(*count) {
            host.increment_metric(id, delta);
        }
    }
    let (Some(record), Some(activity)) = (&effects.usage, &state.activity) else {
        return;
    };
    // Nothing that holds this lock can panic half-way through a change (plain map updates), so
    // a poisoned lock is used as is: usage is never dropped for it.
    let mut activity = activity.lock().unwrap_or_else(PoisonError::into_inner);
    // The VM's tick keeps a clock for last-use times; before the first tick, ask the host.
    let now_s = match activity.clock_s() {
        0 => host.now_unix_seconds().unwrap_or(0),
        seconds => seconds,
    };
    activity.record(record, now_s);
}

#[cfg(test)]
#[path = "handler_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "handler_metering_tests.rs"]
mod metering_tests;
