//! Policy sync and usage reports of the native build, driven by what the dynamic-module ABI
//! offers a filter configuration: HTTP callouts and a scheduler, both on Envoy's main thread.
//! The ABI has no timer, so a module thread (`Ticker`) sleeps one period and commits a
//! scheduler event; the event runs the same poller, follower and reporter as the Wasm build
//! (keyward-filter's `sync` and `usage_reporter`, over `ConfigSyncHost`), and a newer verified
//! policy is swapped into the configuration's `ArcSwap` in one step. Workers never wait: they
//! keep answering with the policy they hold while a snapshot is fetched and compiled.
//!
//! Who polls: with `poller: sync_service` each filter configuration polls (the native build has
//! no separate sync service: its configuration is one per process already); with `lease`, the
//! configurations of one process elect one through the same lease the Wasm VMs use.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use keyward_engine::snapshot::Policy;
use keyward_engine::sync::{Poller, SnapshotStamp, SyncSettings};
use keyward_filter::handler::FilterState;
use keyward_filter::host::{LogLevel, Telemetry};
use keyward_filter::metrics::{Metrics, RejectionReason, SyncOutcome};
use keyward_filter::sync::{claim_instance_number, Followed, PolicyFollower, SnapshotPoller};
use keyward_filter::usage_activity::flush;
use keyward_filter::usage_reporter::UsageReporter;

use crate::host::{CalloutResponse, ConfigHandle, Scheduler};
use crate::native_host::{gauge_id, log, now_ms};
use crate::process::PROCESS;
use crate::sync_host::{Calls, ConfigSyncHost};

/// The periodic tick (poll when due, report usage, flush activity, follow the published policy).
const EVENT_TICK: u64 = 1;
/// Go on compiling a chunked snapshot: committed from the main thread right after a slice.
const EVENT_CONTINUE_LOAD: u64 = 2;
/// How long one slice of compiling a chunked snapshot may hold the main thread (workers are not
/// affected; other main-thread work, such as admin requests, waits at most this long).
const LOAD_SLICE_MS: u64 = 50;

/// A module thread that commits `EVENT_TICK` every period until dropped.
#[derive(Debug)]
struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(scheduler: Arc<Scheduler>, period: Duration) -> Result<Ticker, String> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("keyward-sync".to_owned())
            .spawn(move || {
                let (stopped, wake) = &*signal;
                let mut guard = stopped.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    let (next, _) = wake
                        .wait_timeout(guard, period)
                        .unwrap_or_else(PoisonError::into_inner);
                    guard = next;
                    if *guard {
                        return;
                    }
                    scheduler.commit(EVENT_TICK);
                }
            })
            .map_err(|e| format!("cannot start the sync thread ({e})"))?;
        Ok(Ticker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    /// Stops and joins the thread (it wakes at once), so no commit outlives the configuration.
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The sync state of one filter configuration; only the main thread uses it.
#[derive(Debug)]
struct SyncState {
    settings: SyncSettings,
    poller: SnapshotPoller,
    reporter: Option<UsageReporter>,
    follower: PolicyFollower,
    /// States replaced by a newer policy that streams may still hold. Freed here, on the main
    /// thread that allocated them, once no stream holds them: freed by the last stream on a
    /// worker, a policy's memory would fill that worker's allocator cache instead (measured as
    /// resident memory creeping with every version under traffic).
    retired: Vec<Arc<FilterState>>,
}

/// Policy sync for one filter configuration.
#[derive(Debug)]
pub struct NativeSync {
    // Field order is drop order: the ticker thread is joined before the scheduler goes.
    _ticker: Ticker,
    scheduler: Arc<Scheduler>,
    state: Mutex<SyncState>,
    calls: Mutex<Calls>,
}

impl NativeSync {
    /// Starts syncing: the first poll runs as soon as Envoy's main thread is free (a scheduler
    /// event), then one tick per period.
    pub fn start(
        config: ConfigHandle,
        settings: &SyncSettings,
        report_path: &str,
        report_interval_ms: u64,
    ) -> Result<NativeSync, String> {
        let calls = Mutex::new(Calls::default());
        let me = {
            let host = ConfigSyncHost {
                config,
                calls: &calls,
                response: None,
            };
            let number = claim_instance_number(&host)
                .map_err(|e| format!("cannot claim a sync instance id ({e})"))?;
            format!("native{number}")
        };
        let scheduler = Arc::new(
            config
                .scheduler()
                .ok_or("Envoy could not create a scheduler for the sync")?,
        );
        let period = Duration::from_millis((settings.interval_ms / 4).clamp(50, 1000));
        let ticker = Ticker::start(Arc::clone(&scheduler), period)?;
        scheduler.commit(EVENT_TICK);
        Ok(NativeSync {
            _ticker: ticker,
            scheduler,
            state: Mutex::new(SyncState {
                settings: settings.clone(),
                poller: SnapshotPoller::new(settings.clone(), me),
                reporter: Some(UsageReporter::new(
                    settings,
                    report_path,
                    report_interval_ms,
                )),
                follower: PolicyFollower::default(),
                retired: Vec::new(),
            }),
            calls,
        })
    }

    /// A scheduler event, on the main thread.
    pub fn on_scheduled(&self, config: ConfigHandle, event_id: u64, live: &ArcSwap<FilterState>) {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let sync = &mut *guard;
        let host = ConfigSyncHost {
            config,
            calls: &self.calls,
            response: None,
        };
        let metrics = Arc::clone(&live.load().metrics);
        sync.retired.retain(|state| Arc::strong_count(state) > 1);
        if event_id == EVENT_TICK {
            {
                let mut activity = PROCESS
                    .activity
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Ok(now) = now_ms() {
                    activity.set_clock_s(now / 1000);
                }
                flush(&host, &mut activity);
            }
            if let Err(error) = sync.poller.on_tick(&host, &metrics) {
                host.log(
                    LogLevel::Warn,
                    &format!("keyward sync: tick failed ({error})"),
                );
            }
            let polls = sync.settings.poller != Poller::Lease || sync.poller.holds_lease();
            if let (true, Some(reporter)) = (polls, &mut sync.reporter) {
                if let Err(error) = reporter.on_tick(&host, &metrics) {
                    host.log(
                        LogLevel::Warn,
                        &format!("keyward usage: tick failed ({error})"),
                    );
                }
            }
        }
        self.follow(sync, &host, &metrics, live);
    }

    /// The answer to one of this configuration's callouts, on the main thread.
    pub fn on_callout_done(
        &self,
        config: ConfigHandle,
        callout_id: u64,
        response: Option<&CalloutResponse>,
        live: &ArcSwap<FilterState>,
    ) {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let sync = &mut *guard;
        let finished = self
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .finish(callout_id);
        let Some(token) = finished else {
            return;
        };
        let host = ConfigSyncHost {
            config,
            calls: &self.calls,
            response,
        };
        let metrics = Arc::clone(&live.load().metrics);
        let body_size = response.map_or(0, |response| response.body.len());
        if let Some(reporter) = &mut sync.reporter {
            if reporter.owns_call(token) {
                reporter.on_response(&host, &metrics, token, body_size);
                return;
            }
        }
        sync.poller.on_response(&host, &metrics, token, body_size);
        // The policy the poller just verified and parsed is used as is (no second parse).
        if let Some((stamp, policy)) = sync.poller.take_fresh() {
            sync.follower.mark_seen(stamp);
            install(&host, live, policy, &mut sync.retired);
        }
        self.follow(sync, &host, &metrics, live);
    }

    /// Picks up what was published (by this configuration's poller or another's), a chunked
    /// snapshot one slice per event.
    fn follow(
        &self,
        sync: &mut SyncState,
        host: &ConfigSyncHost<'_>,
        metrics: &Metrics,
        live: &ArcSwap<FilterState>,
    ) {
        let current = live.load().policy.as_ref().map(|policy| SnapshotStamp {
            version: policy.version,
            issued_at: policy.issued_at,
        });
        match sync
            .follower
            .refresh(host, &sync.settings, current, LOAD_SLICE_MS)
        {
            Ok(Followed::Updated(policy)) => install(host, live, *policy, &mut sync.retired),
            Ok(Followed::Loading) => self.scheduler.commit(EVENT_CONTINUE_LOAD),
            Ok(Followed::Rejected) => {
                let uncompilable = SyncOutcome::Rejected(RejectionReason::UncompilableSnapshot);
                if let Some(id) = metrics.sync_counter(uncompilable) {
                    host.increment_metric(id, 1);
                }
            }
            Ok(Followed::Nothing) => {}
            Err(error) => host.log(
                LogLevel::Warn,
                &format!("keyward: cannot read the published policy ({error})"),
            ),
        }
    }
}

/// Swaps in a newer policy: one atomic store; streams already running keep the one they
/// started with, and the replaced state waits in `retired` until none does.
fn install(
    host: &ConfigSyncHost<'_>,
    live: &ArcSwap<FilterState>,
    policy: Policy,
    retired: &mut Vec<Arc<FilterState>>,
) {
    // Only the main thread stores: the state cannot change between this load and the swap.
    let Some(updated) = live.load().updated_to(policy) else {
        return;
    };
    log_policy(host.config, &updated, "policy updated");
    retired.push(live.swap(Arc::new(updated)));
}

/// The policy in force, as a log line and the policy-version gauge.
pub fn log_policy(config: ConfigHandle, state: &FilterState, event: &str) {
    if let Some((level, note)) = state.provider_keys_log() {
        log(level, note);
    }
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
