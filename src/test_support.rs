//! The one fake host of the filter's unit tests: it implements every host trait the glue uses
//! (`Host`, `SharedData`, `Telemetry`, `SyncHost`), records what the glue did and answers
//! control-plane calls from canned replies.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keyward_engine::config::PluginConfig;
use keyward_engine::metering::SpendCounter;
use keyward_engine::request::Header;

use crate::handler::FilterState;
use crate::host::{
    header_text, Host, HostError, LogLevel, MetricKind, SetOutcome, SharedData, SyncHost, Telemetry,
};
use crate::metrics::{Metrics, SyncOutcome};
use crate::usage_activity::Activity;

/// A local reply as sent: status, headers, body.
pub type SentReply = (u16, Vec<(String, String)>, String);

/// A control-plane answer: headers (`:status` included) and body.
pub type Answer = (Vec<Header>, Vec<u8>);

/// A POST as dispatched: headers and body.
pub type Post = (Vec<(String, String)>, Vec<u8>);

/// What the request clock reads: the test policies are issued just before it.
pub const NOW_UNIX_SECONDS: u64 = 1_800_000_000;

/// The control plane's signing key in these tests (a fixed seed).
pub fn signing_key() -> keyward_engine::signature::SigningKey {
    keyward_engine::signature::SigningKey::from_seed("k1", &[5; 32])
        .unwrap_or_else(|_| unreachable!("a fixed seed and a valid id"))
}

/// Its public half, as a sync block lists it.
pub fn public_key_base64() -> String {
    signing_key().public_key().to_base64()
}

/// A call to the control plane as dispatched; its token is its position in `calls`, from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The Envoy cluster it was sent to.
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    /// `Some` for a POST.
    pub body: Option<Vec<u8>>,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(candidate, _)| candidate == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A host whose shared data behaves like Envoy's: one CAS counter, a missing key accepts any
/// CAS, CAS 0 overwrites.
#[derive(Default)]
pub struct FakeHost {
    pub headers: RefCell<Vec<Header>>,
    pub route_name: Option<Vec<u8>>,
    /// Reading the request headers fails (a host error).
    pub fail_header_read: bool,
    pub request_body: RefCell<Vec<u8>>,
    pub reply: RefCell<Option<SentReply>>,
    pub response_headers: RefCell<Vec<Header>>,
    pub response_chunk: RefCell<Vec<u8>>,
    pub shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    /// The last CAS token handed out.
    pub next_cas: Cell<u32>,
    pub now_ms: Cell<u64>,
    pub metrics: RefCell<HashMap<u32, i64>>,
    pub logs: RefCell<Vec<(LogLevel, String)>>,
    pub calls: RefCell<Vec<Call>>,
    /// The answer to the call being handled.
    pub answer: RefCell<Option<Answer>>,
    /// A fake control plane: answers by `:path` (see `answer_from_routes`).
    pub routes: RefCell<HashMap<String, Answer>>,
    /// Dispatching a call fails, as for a cluster Envoy does not know.
    pub cluster_missing: bool,
    /// The header lists the glue handed back (`Host::recycle_headers`), in order.
    pub recycled: RefCell<Vec<Vec<Header>>>,
}

/// Metrics with distinct ids from 1, as a host would define them.
pub fn metrics() -> Metrics {
    let mut next = 0;
    Metrics::define(|_kind: MetricKind, _name: &str| {
        next += 1;
        Ok(next)
    })
    .expect("metrics")
}

/// A filter's state from its plugin configuration; `reports_usage` as with a `sync` block.
pub fn filter_state(config_json: &str, reports_usage: bool) -> Arc<FilterState> {
    let config = PluginConfig::from_json(config_json.as_bytes()).expect("valid test configuration");
    Arc::new(FilterState::new(
        Arc::new(config.settings),
        config.policy,
        Arc::new(metrics()),
        reports_usage.then(|| Arc::new(Mutex::new(Activity::default()))),
        None,
    ))
}

fn owned_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

fn header_list(pairs: &[(&str, &str)]) -> Vec<Header> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.as_bytes().to_vec()))
        .collect()
}

impl FakeHost {
    /// A host whose request has these headers.
    pub fn with(pairs: &[(&str, &str)]) -> Self {
        FakeHost {
            headers: RefCell::new(header_list(pairs)),
            ..FakeHost::default()
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        header_text(&self.headers.borrow(), name).map(str::to_owned)
    }

    /// What metric `id` adds up to.
    pub fn count(&self, id: u32) -> i64 {
        self.metrics.borrow().get(&id).copied().unwrap_or(0)
    }

    pub fn sync_count(&self, metrics: &Metrics, outcome: SyncOutcome) -> i64 {
        self.count(metrics.sync_counter(outcome).expect("defined"))
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.logs
            .borrow()
            .iter()
            .map(|(_, line)| line.clone())
            .collect()
    }

    pub fn entry(&self, key: &str) -> Option<Vec<u8>> {
        self.shared
            .borrow()
            .get(key)
            .map(|(value, _)| value.clone())
    }

    pub fn spend_counter(&self, entry: &str) -> SpendCounter {
        self.entry(entry)
            .and_then(|bytes| SpendCounter::decode(&bytes))
            .unwrap_or_default()
    }

    /// The POSTs dispatched: headers and body.
    pub fn posts(&self) -> Vec<Post> {
        self.calls
            .borrow()
            .iter()
            .filter_map(|call| Some((call.headers.clone(), call.body.clone()?)))
            .collect()
    }

    /// The answer to the next call handled.
    pub fn answer(&self, status: &str, headers: &[(&str, &str)], body: &str) {
        let mut all = header_list(&[(":status", status)]);
        all.extend(header_list(headers));
        *self.answer.borrow_mut() = Some((all, body.as_bytes().to_vec()));
    }

    /// The fake control plane answers `path` so (200 with an ETag, or whatever `status` says).
    pub fn route(&self, path: &str, status: &str, etag: &str, body: &[u8]) {
        let headers = header_list(&[(":status", status), ("etag", etag)]);
        self.routes
            .borrow_mut()
            .insert(path.to_owned(), (headers, body.to_vec()));
    }

    /// Answers call `token` from the routes as a control plane would (404 for an unknown path,
    /// 304 when the `If-None-Match` ETag matches); returns the body size.
    pub fn answer_from_routes(&self, token: u32) -> usize {
        let call = self.calls.borrow()[token as usize - 1].clone();
        let path = call.header(":path").expect("a path");
        let (headers, body) = match self.routes.borrow().get(path).cloned() {
            None => (header_list(&[(":status", "404")]), b"{}".to_vec()),
            Some((headers, body)) => {
                let etag = header_text(&headers, "etag");
                if etag.is_some() && call.header("if-none-match") == etag {
                    (header_list(&[(":status", "304")]), Vec::new())
                } else {
                    (headers, body)
                }
            }
        };
        let size = body.len();
        *self.answer.borrow_mut() = Some((headers, body));
        size
    }
}

impl Host for FakeHost {
    fn request_headers(&self) -> Result<Vec<Header>, HostError> {
        if self.fail_header_read {
            return Err(HostError::Status(10));
        }
        Ok(self.headers.borrow().clone())
    }
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        Ok((path == ["xds", "route_name"])
            .then(|| self.route_name.clone())
            .flatten())
    }
    fn replace_request_header(&self, name: &str, value: &[u8]) -> Result<(), HostError> {
        let mut headers = self.headers.borrow_mut();
        headers.retain(|(n, _)| n != name);
        headers.push((name.to_owned(), value.to_vec()));
        Ok(())
    }
    /// Appends, as Envoy does: a header added twice, or over a client copy, shows as two.
    fn add_request_header(&self, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.headers
            .borrow_mut()
            .push((name.to_owned(), value.to_vec()));
        Ok(())
    }
    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        self.headers.borrow_mut().retain(|(n, _)| n != name);
        Ok(())
    }
    fn send_local_reply(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError> {
        *self.reply.borrow_mut() = Some((
            status,
            owned_pairs(headers),
            String::from_utf8_lossy(body).into_owned(),
        ));
        Ok(())
    }
    fn now_unix_seconds(&self) -> Result<u64, HostError> {
        Ok(NOW_UNIX_SECONDS)
    }
    fn request_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        let body = self.request_body.borrow();
        Ok(body.get(..size).unwrap_or(&body).to_vec())
    }
    fn replace_request_body(&self, _old_size: usize, body: &[u8]) -> Result<(), HostError> {
        *self.request_body.borrow_mut() = body.to_vec();
        Ok(())
    }
    fn response_headers(&self) -> Result<Vec<Header>, HostError> {
        Ok(self.response_headers.borrow().clone())
    }

    fn recycle_headers(&self, headers: Vec<Header>) {
        self.recycled.borrow_mut().push(headers);
    }
    fn replace_response_header(&self, name: &str, value: &[u8]) -> Result<(), HostError> {
        let mut headers = self.response_headers.borrow_mut();
        headers.retain(|(n, _)| n != name);
        headers.push((name.to_owned(), value.to_vec()));
        Ok(())
    }
    fn response_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        let chunk = self.response_chunk.borrow();
        Ok(chunk.get(..size).unwrap_or(&chunk).to_vec())
    }
}

impl SharedData for FakeHost {
    fn shared_get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        Ok(self.shared.borrow().get(key).cloned())
    }
    fn shared_set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<SetOutcome, HostError> {
        let mut entries = self.shared.borrow_mut();
        if let (Some(cas), Some((_, current))) = (cas, entries.get(key)) {
            if cas != 0 && cas != *current {
                return Ok(SetOutcome::CasMismatch);
            }
        }
        self.next_cas.set(self.next_cas.get() + 1);
        entries.insert(key.to_owned(), (value.to_vec(), self.next_cas.get()));
        Ok(SetOutcome::Written)
    }
    fn now_ms(&self) -> Result<u64, HostError> {
        Ok(self.now_ms.get())
    }
}

impl Telemetry for FakeHost {
    fn increment_metric(&self, id: u32, delta: i64) {
        *self.metrics.borrow_mut().entry(id).or_default() += delta;
    }
    fn record_metric(&self, id: u32, value: u64) {
        self.metrics.borrow_mut().insert(id, value as i64);
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_owned()));
    }
}

impl SyncHost for FakeHost {
    fn dispatch_get(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        _timeout_ms: u64,
    ) -> Result<u32, HostError> {
        self.dispatch(cluster, headers, None)
    }
    fn dispatch_post(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        _timeout_ms: u64,
    ) -> Result<u32, HostError> {
        self.dispatch(cluster, headers, Some(body.to_vec()))
    }
    fn call_response_headers(&self) -> Result<Vec<Header>, HostError> {
        Ok(self
            .answer
            .borrow()
            .as_ref()
            .map(|(headers, _)| headers.clone())
            .unwrap_or_default())
    }
    fn call_response_body(&self, _size: usize) -> Result<Vec<u8>, HostError> {
        Ok(self
            .answer
            .borrow()
            .as_ref()
            .map(|(_, body)| body.clone())
            .unwrap_or_default())
    }
}

impl FakeHost {
    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<u32, HostError> {
        if self.cluster_missing {
            // What Envoy returns for an unknown cluster (BadArgument).
            return Err(HostError::Status(2));
        }
        let mut calls = self.calls.borrow_mut();
        calls.push(Call {
            cluster: cluster.to_owned(),
            headers: owned_pairs(headers),
            body,
        });
        Ok(calls.len() as u32)
    }
}
