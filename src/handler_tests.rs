//! The glue against a fake host: what is removed, added, replied and counted.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use keyward_engine::config::PluginConfig;
use keyward_engine::hash::sha256;
use keyward_engine::request::Header;

use super::*;
use crate::host::{MetricKind, SetOutcome, SharedData, Telemetry};
use crate::test_support::SharedMap;

const SECRET: &str = "s3cr3tS3cr3tS3cr3tXY";
const KEY: &str = "ak_good1.s3cr3tS3cr3tS3cr3tXY";

/// A local reply as sent: status, headers, body.
pub(crate) type SentReply = (u16, Vec<(String, String)>, String);

/// A host whose shared data behaves like Envoy's (one CAS counter, a missing key accepts any CAS).
#[derive(Default)]
pub(crate) struct FakeHost {
    pub headers: RefCell<Vec<Header>>,
    pub route_name: Option<Vec<u8>>,
    pub reply: RefCell<Option<SentReply>>,
    pub metrics: RefCell<HashMap<u32, i64>>,
    pub logs: RefCell<Vec<String>>,
    pub fail_header_read: bool,
    pub shared: SharedMap,
    pub now_ms: Cell<u64>,
    pub request_body: RefCell<Vec<u8>>,
    pub response_headers: RefCell<Vec<Header>>,
    pub response_chunk: RefCell<Vec<u8>>,
}

impl Host for FakeHost {
    fn request_headers(&self) -> Result<Vec<Header>, HostError> {
        if self.fail_header_read {
            return Err(HostError { status: 10 });
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
        let headers = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        *self.reply.borrow_mut() =
            Some((status, headers, String::from_utf8_lossy(body).into_owned()));
        Ok(())
    }
    fn now_unix_seconds(&self) -> Result<u64, HostError> {
        Ok(1_800_000_000)
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
        Ok(self.shared.get(key))
    }
    fn shared_set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<SetOutcome, HostError> {
        Ok(self.shared.set(key, value, cas))
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
    fn log(&self, _level: LogLevel, message: &str) {
        self.logs.borrow_mut().push(message.to_owned());
    }
}

impl FakeHost {
    pub(crate) fn with(pairs: &[(&str, &str)]) -> Self {
        let headers = pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
            .collect();
        FakeHost {
            headers: RefCell::new(headers),
            ..FakeHost::default()
        }
    }
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .borrow()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
    pub(crate) fn count(&self, id: u32) -> i64 {
        self.metrics.borrow().get(&id).copied().unwrap_or(0)
    }
}

fn state(extra: &str) -> FilterState {
    let json = format!(
        r#"{{ {extra} "routes": [{{"name": "q", "match": {{"path_prefix": "/q"}}, "query_parameter": "api_key"}},
                                {{"name": "health", "match": {{"path_prefix": "/healthz"}}, "exempt": true}}],
          "policy": {{"version": 4, "issued_at": 1799999999,
            "projects": [{{"id": "proj_a", "org": "org_1", "status": "active"}}],
            "keys": [{{"id": "good1", "secret_sha256": "{}", "project": "proj_a", "status": "active", "label": "svc"}},
                     {{"id": "gone1", "secret_sha256": "{}", "project": "proj_a", "status": "revoked"}}]}}}}"#,
        hex::encode(sha256(SECRET.as_bytes())),
        hex::encode(sha256(SECRET.as_bytes())),
    );
    let config = PluginConfig::from_json(json.as_bytes()).expect("valid test configuration");
    let mut next = 0;
    let metrics = Metrics::define(|_kind: MetricKind, _name: &str| {
        next += 1;
        Ok(next)
    })
    .expect("metrics");
    FilterState {
        settings: Arc::new(config.settings),
        policy: config.policy.map(Arc::new),
        metrics: Arc::new(metrics),
        activity: None,
    }
}

#[test]
fn allowed_request_loses_its_key_and_gains_trusted_identity() {
    let state = state("");
    let host = FakeHost::with(&[
        (":path", "/v1/chat"),
        ("authorization", &format!("Bearer {KEY}")),
        ("x-keyward-key-id", "spoofed"),
        ("x-keyward-project", "spoofed"),
    ]);
    assert!(matches!(
        on_request_headers(&host, &state, true),
        Verdict::Continue
    ));
    assert_eq!(host.header("authorization"), None);
    assert_eq!(host.header("x-keyward-key-id").as_deref(), Some("good1"));
    assert_eq!(host.header("x-keyward-project").as_deref(), Some("proj_a"));
    assert_eq!(host.header("x-keyward-org").as_deref(), Some("org_1"));
    assert_eq!(
        host.header("x-keyward-environment").as_deref(),
        Some("live")
    );
    assert_eq!(host.count(state.metrics.allowed), 1);
    assert!(host.reply.borrow().is_none());
}

#[test]
fn identity_headers_turned_off_are_not_written_and_client_copies_still_go() {
    let state = state(r#""identity_headers": {"org": null, "environment": null},"#);
    let host = FakeHost::with(&[
        (":path", "/v1/chat"),
        ("authorization", &format!("Bearer {KEY}")),
        ("x-keyward-org", "spoofed"),
        ("x-keyward-environment", "spoofed"),
    ]);
    assert!(matches!(
        on_request_headers(&host, &state, true),
        Verdict::Continue
    ));
    assert_eq!(host.header("authorization"), None);
    assert_eq!(host.header("x-keyward-key-id").as_deref(), Some("good1"));
    assert_eq!(host.header("x-keyward-project").as_deref(), Some("proj_a"));
    assert_eq!(host.header("x-keyward-org"), None);
    assert_eq!(host.header("x-keyward-environment"), None);
    assert_eq!(host.count(state.metrics.allowed), 1);
}

#[test]
fn denied_request_gets_a_local_json_reply_and_a_log_line() {
    let state = state("");
    let host = FakeHost::with(&[
        (":path", "/v1/chat"),
        ("x-request-id", "req-9"),
        ("authorization", &format!("Bearer ak_gone1.{SECRET}")),
    ]);
    assert!(matches!(
        on_request_headers(&host, &state, true),
        Verdict::Stop
    ));
    let reply = host.reply.borrow().clone().expect("a local reply");
    assert_eq!(reply.0, 401);
    assert!(reply
        .1
        .contains(&("x-keyward-error".to_owned(), "key_revoked".to_owned())));
    assert!(reply.1.contains(&(
        "www-authenticate".to_owned(),
        "Bearer realm=\"keyward\"".to_owned()
    )));
    let body: serde_json::Value = serde_json::from_str(&reply.2).expect("json body");
    assert_eq!(body["error"]["code"], "key_revoked");
    assert_eq!(body["error"]["request_id"], "req-9");
    let denied = state.metrics.denied(DenyCode::KeyRevoked).expect("defined");
    assert_eq!(host.count(denied), 1);
    let logs = host.logs.borrow();
    assert_eq!(logs.len(), 1);
    assert!(logs[0].contains(r#""key_id":"gone1""#) && logs[0].contains(r#""request_id":"req-9""#));
    assert!(!logs[0].contains(SECRET));
}

#[test]
fn shadow_mode_lets_denials_through_without_identity() {
    let state = state(r#""mode": "shadow","#);
    let host = FakeHost::with(&[
        (":path", "/v1/chat"),
        ("x-api-key", "ak_nobody.wrongwrongwrongwrong"),
    ]);
    assert!(matches!(
        on_request_headers(&host, &state, true),
        Verdict::Continue
    ));
    assert_eq!(host.header("x-api-key"), None);
    assert_eq!(
        host.header(SHADOW_HEADER).as_deref(),
        Some("invalid_api_key")
    );
    assert_eq!(host.header("x-keyward-key-id"), None);
    assert_eq!(host.count(state.metrics.shadow_denied), 1);
    assert!(host.reply.borrow().is_none());
}

#[test]
fn query_parameter_key_is_removed_from_the_path() {
    let state = state("");
    let host = FakeHost::with(&[(":path", &format!("/q/x?a=1&api_key={KEY}&b=2"))]);
    assert!(matches!(
        on_request_headers(&host, &state, true),
        Verdict::Continue
    ));
    assert_eq!(host.header(":path").as_deref(), Some("/q/x?a=1&b=2"));
}

#[test]
fn a_refused_request_loses_its_query_parameter_key_too() {
    // The revoked key: refused, and Envoy's access log must not see it in `:path`.
    let state = state("");
    let host = FakeHost::with(&[(":path", &format!("/q/x?api_key=ak_gone1.{SECRET}&b=2"))]);
    assert!(matches!(
        on_request_headers(&host, &state, true),
        Verdict::Stop
    ));
    assert_eq!(host.reply.borrow().as_ref().map(|r| r.0), Some(401));
    assert_eq!(host.header(":path").as_deref(), Some("/q/x?b=2"));
}

#[test]
fn exempt_route_still_drops_keys_and_spoofed_identity() {
    let state = state("");
    let host = FakeHost::with(&[
        (":path", "/healthz"),
        ("x-keyward-key-id", "spoofed"),
        ("authorization", &format!("Bearer {KEY}")),
    ]);
    assert!(matches!(
        on_request_headers(&host, &state, true),
        Verdict::Continue
    ));
    assert_eq!(host.header("x-keyward-key-id"), None);
    assert_eq!(
        host.header("authorization"),
        None,
        "keys never go upstream, even when exempt"
    );
    assert_eq!(host.count(state.metrics.exempt), 1);
}

#[test]
fn host_failure_fails_closed() {
    let state = state("");
    let host = FakeHost {
        fail_header_read: true,
        ..FakeHost::default()
    };
    assert!(matches!(
        on_request_headers(&host, &state, true),
        Verdict::Stop
    ));
    let reply = host.reply.borrow().clone().expect("a local reply");
    assert_eq!(reply.0, 500);
}
