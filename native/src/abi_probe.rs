//! Test-only (`--features abi-probe`): exercises the configuration-level callbacks the policy
//! sync will use, in a real Envoy, so their bindings are proven before sync depends on them.
//! A filter configuration named `keyward-abi-probe` creates a scheduler, commits an event from
//! a module thread, and on that event (main thread) starts an HTTP callout to the cluster named
//! by its configuration; the reply's status and body size go to Envoy's log and to a counter.
//! integration/test_native.py loads it and reads both.

use std::sync::Mutex;
use std::time::Duration;

use crate::abi;
use crate::host::{self, CalloutResponse, ConfigHandle, MetricId, Scheduler};

pub const PROBE_FILTER_NAME: &str = "keyward-abi-probe";
const EVENT_FROM_THREAD: u64 = 7;

#[derive(Debug)]
pub struct Probe {
    cluster: String,
    scheduler: Mutex<Option<std::sync::Arc<Scheduler>>>,
    replies: Option<MetricId>,
}

impl Probe {
    /// Starts the probe; `cluster` is the configuration's text.
    pub fn start(config: ConfigHandle, cluster: &[u8]) -> Probe {
        let probe = Probe {
            cluster: String::from_utf8_lossy(cluster).trim().to_owned(),
            scheduler: Mutex::new(None),
            replies: config.define_counter("keyward.abi_probe.callout_replies"),
        };
        if let Some(scheduler) = config.scheduler() {
            let scheduler = std::sync::Arc::new(scheduler);
            let committer = std::sync::Arc::clone(&scheduler);
            // The ABI has no timer: a module thread wakes the main thread through the scheduler.
            let spawned = std::thread::Builder::new()
                .name("keyward-probe".to_owned())
                .spawn(move || {
                    std::thread::sleep(Duration::from_millis(100));
                    committer.commit(EVENT_FROM_THREAD);
                });
            if spawned.is_err() {
                host::log_error("keyward probe: cannot start a thread");
            }
            if let Ok(mut slot) = probe.scheduler.lock() {
                *slot = Some(scheduler);
            }
        }
        probe
    }

    pub fn on_scheduled(&self, config: ConfigHandle, event_id: u64) {
        host::log(
            abi::LOG_INFO,
            &format!("keyward probe: scheduled event {event_id} on the main thread"),
        );
        let started = config.http_callout(
            &self.cluster,
            &[
                (":method", b"GET".as_slice()),
                (":path", b"/abi-probe"),
                ("host", b"probe.local"),
            ],
            b"",
            2000,
        );
        match started {
            Ok(id) => host::log(
                abi::LOG_INFO,
                &format!("keyward probe: callout {id} started"),
            ),
            Err(refused) => {
                host::log_error(&format!("keyward probe: callout refused ({})", refused.0))
            }
        }
    }

    pub fn on_http_callout_done(
        &self,
        config: ConfigHandle,
        id: u64,
        response: Option<CalloutResponse>,
    ) {
        match response {
            Some(response) => {
                host::log(
                    abi::LOG_INFO,
                    &format!(
                        "keyward probe: callout {id} answered status {} with {} body bytes",
                        response.status().unwrap_or(0),
                        response.body.len()
                    ),
                );
                if let Some(counter) = self.replies {
                    config.increment_counter(counter, 1);
                }
            }
            None => host::log_error(&format!("keyward probe: callout {id} failed")),
        }
        // One round is the whole probe: release the scheduler.
        if let Ok(mut slot) = self.scheduler.lock() {
            slot.take();
        }
    }
}
