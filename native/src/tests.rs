//! The bindings and hooks, driven the way Envoy drives them (through the exported C functions),
//! against the fake Envoy of `fake_envoy`.

use keyward_engine::hash::sha256;
use keyward_engine::signature::SigningKey;
use keyward_engine::signed_snapshot::sign_snapshot;

use crate::abi::{self, EnvoyBuffer, EnvoyHttpHeader, ModulePtr};
use crate::exports::*;
use crate::fake_envoy::{FakeConfig, FakeFilter, LOGS};
use crate::hooks::{self, FilterConfig, HttpFilter, RequestFlow};
use crate::host::{CalloutResponse, ConfigHandle, FilterHandle, MetricId};

const SECRET: &str = "nAtIvEsEcReTnAtIvEsEcReT";
const KEY: &str = "ak_native1.nAtIvEsEcReTnAtIvEsEcReT";

fn handle(fake: &mut FakeFilter) -> FilterHandle {
    // SAFETY: the fake outlives the handle in every test.
    unsafe { FilterHandle::new(fake.ptr()) }
}

fn buffer(bytes: &[u8]) -> EnvoyBuffer {
    EnvoyBuffer {
        ptr: bytes.as_ptr(),
        length: bytes.len(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn plugin_config(extra: &str) -> String {
    let hash = hex(&sha256(SECRET.as_bytes()));
    format!(
        r#"{{ {extra} "routes": [{{"name": "chat", "match": {{"path_prefix": "/v1/chat/"}}, "scopes": ["chat:write"]}}],
          "policy": {{"version": 7, "issued_at": 1799999999,
            "projects": [{{"id": "proj_n", "org": "org_n", "status": "active"}}],
            "keys": [{{"id": "native1", "secret_sha256": "{hash}", "project": "proj_n", "status": "active", "scopes": ["models:read"]}},
                     {{"id": "gone1", "secret_sha256": "{hash}", "project": "proj_n", "status": "revoked"}}]}}}}"#
    )
}

/// Creates a keyward configuration through the exported hook, as Envoy does.
fn new_config(fake: &mut FakeConfig, json: &str) -> ModulePtr {
    let ptr = fake.ptr();
    // SAFETY: buffers valid for the call; `fake` outlives the configuration.
    let config = unsafe {
        envoy_dynamic_module_on_http_filter_config_new(
            ptr,
            buffer(b"keyward"),
            buffer(json.as_bytes()),
        )
    };
    fake.frozen = true; // Envoy freezes metric creation after config_new
    config
}

fn counter(fake_config: &FakeConfig, filter: &FakeFilter, name: &str) -> u64 {
    let id = fake_config
        .counters
        .iter()
        .position(|defined| defined == name)
        .map(|index| index + 1)
        .unwrap_or_else(|| panic!("counter {name} not defined"));
    filter.counters.get(&id).copied().unwrap_or(0)
}

/// Runs one request's header hook through a full stream life (new, headers, complete, destroy).
fn run_request(config: ModulePtr, fake: &mut FakeFilter) -> u32 {
    let envoy = fake.ptr();
    // SAFETY: `config` is live; the stream is destroyed before returning.
    unsafe {
        let stream = envoy_dynamic_module_on_http_filter_new(config, envoy);
        assert!(!stream.is_null());
        let status = envoy_dynamic_module_on_http_filter_request_headers(envoy, stream, true);
        envoy_dynamic_module_on_http_filter_stream_complete(envoy, stream);
        envoy_dynamic_module_on_http_filter_destroy(stream);
        status
    }
}

#[test]
fn program_init_returns_the_abi_version_string() {
    let version = envoy_dynamic_module_on_program_init();
    // SAFETY: points at the static NUL-terminated ABI_VERSION.
    let text = unsafe { std::ffi::CStr::from_ptr(version) };
    assert_eq!(text.to_bytes(), b"v0.2.0");
}

#[test]
fn request_headers_are_copied_with_lower_case_names_and_raw_values() {
    let mut fake = FakeFilter::with_request(&[(":path", "/x"), ("X-Api-Key", "k")]);
    fake.request_headers
        .push((b"x-bin".to_vec(), vec![0xff, 0x00, 0x7f]));
    let headers = handle(&mut fake).request_headers().expect("utf-8 names");
    assert_eq!(
        headers,
        vec![
            (":path".to_owned(), b"/x".to_vec()),
            ("x-api-key".to_owned(), b"k".to_vec()),
            ("x-bin".to_owned(), vec![0xff, 0x00, 0x7f]),
        ]
    );
    // The copies stay valid after Envoy's map changes (a setter may free what it pointed at).
    let filter = handle(&mut fake);
    let before = filter.request_headers().expect("names");
    assert!(filter.set_request_header("x-api-key", b"replaced"));
    assert_eq!(before[1].1, b"k");
}

#[test]
fn a_header_name_that_is_not_utf8_is_an_error_not_a_panic() {
    let mut fake = FakeFilter::default();
    fake.request_headers.push((vec![0xc3, 0x28], b"v".to_vec()));
    assert!(handle(&mut fake).request_headers().is_err());
}

#[test]
fn set_replaces_every_copy_and_remove_removes() {
    let mut fake = FakeFilter::with_request(&[("x-a", "1"), ("X-A", "2"), ("x-b", "3")]);
    let filter = handle(&mut fake);
    assert!(filter.set_request_header("x-a", b"only"));
    assert!(filter.remove_request_header("x-b"));
    assert_eq!(
        fake.request_headers,
        vec![(b"x-a".to_vec(), b"only".to_vec())]
    );
}

#[test]
fn a_local_reply_carries_status_headers_body_and_details() {
    let mut fake = FakeFilter::default();
    handle(&mut fake).send_local_reply(
        401,
        &[("content-type", b"application/json".as_slice())],
        b"{}",
        "keyward_denied",
    );
    let sent = &fake.sent[0];
    assert_eq!(sent.status, 401);
    assert_eq!(
        sent.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(sent.body, b"{}");
    assert_eq!(sent.details, "keyward_denied");
}

#[test]
fn the_request_body_joins_the_buffer_and_the_current_chunk() {
    let mut fake = FakeFilter {
        buffered_request: Some(b"{\"model\":".to_vec()),
        received_request: b"\"gpt\"}".to_vec(),
        ..FakeFilter::default()
    };
    let filter = handle(&mut fake);
    assert_eq!(filter.request_body(), b"{\"model\":\"gpt\"}");
    assert_eq!(filter.request_body_size(), 15);
    // Replaced where Envoy keeps it: in the buffer once there is one.
    assert!(filter.replace_request_body(b"{}"));
    assert_eq!(fake.buffered_request.as_deref(), Some(b"{}".as_slice()));
    assert!(fake.received_request.is_empty());
}

#[test]
fn a_single_chunk_body_is_replaced_in_the_chunk() {
    let mut fake = FakeFilter {
        received_request: b"0123456789abc".to_vec(),
        ..FakeFilter::default()
    };
    let filter = handle(&mut fake);
    assert_eq!(filter.request_body(), b"0123456789abc");
    assert!(filter.replace_request_body(b"new"));
    assert_eq!(fake.received_request, b"new");
    assert_eq!(fake.buffered_request, None);
}

#[test]
fn route_name_comes_from_the_xds_route_name_attribute() {
    let mut fake = FakeFilter {
        route_name: Some(b"chat".to_vec()),
        ..FakeFilter::default()
    };
    assert_eq!(
        handle(&mut fake).attribute_string(abi::ATTRIBUTE_XDS_ROUTE_NAME),
        Some(b"chat".to_vec())
    );
    assert_eq!(handle(&mut fake).attribute_string(0), None);
}

#[test]
fn metrics_are_defined_on_the_config_and_counted_per_stream() {
    let mut fake_config = FakeConfig::default();
    // SAFETY: the fake outlives the handle.
    let config = unsafe { ConfigHandle::new(fake_config.ptr()) };
    let allowed = config
        .define_counter("keyward.requests.allowed")
        .expect("defined");
    let version = config
        .define_gauge("keyward.policy.version")
        .expect("defined");
    assert_eq!(
        (allowed, version),
        (MetricId(1), MetricId(1)),
        "separate id spaces from 1"
    );
    config.set_gauge(version, 9);
    assert_eq!(fake_config.gauge_values.get(&1), Some(&9));
    fake_config.frozen = true;
    // SAFETY: as above.
    let config = unsafe { ConfigHandle::new(fake_config.ptr()) };
    assert_eq!(
        config.define_counter("late"),
        None,
        "frozen after config_new"
    );

    let mut fake = FakeFilter::default();
    handle(&mut fake).increment_counter(allowed, 2);
    assert_eq!(fake.counters.get(&1), Some(&2));
}

#[test]
fn config_callouts_and_the_scheduler_reach_envoy() {
    let mut fake_config = FakeConfig::default();
    // SAFETY: the fake outlives the handle.
    let config = unsafe { ConfigHandle::new(fake_config.ptr()) };
    let id = config
        .http_callout(
            "control_plane",
            &[
                (":method", b"GET".as_slice()),
                (":path", b"/v1/snapshot"),
                ("host", b"cp"),
            ],
            b"",
            2500,
        )
        .expect("started");
    assert_eq!(id, 1);
    assert_eq!(
        config.http_callout("missing", &[], b"", 1).map_err(|e| e.0),
        Err(2),
        "ClusterNotFound is an error the caller sees"
    );
    let scheduler = config.scheduler().expect("scheduler");
    std::thread::scope(|scope| {
        scope.spawn(|| scheduler.commit(41)); // commit is allowed from any thread
    });
    scheduler.commit(42);
    drop(scheduler);
    assert_eq!(*fake_config.commits.lock().expect("lock"), vec![41, 42]);
    assert_eq!(
        *fake_config.live_schedulers.lock().expect("lock"),
        0,
        "deleted on drop"
    );
    let (cluster, headers, _, timeout) = &fake_config.callouts[0];
    assert_eq!((cluster.as_str(), *timeout), ("control_plane", 2500));
    assert_eq!(headers[1], (":path".to_owned(), b"/v1/snapshot".to_vec()));
}

#[test]
fn a_callout_response_is_copied_out_of_envoy_buffers() {
    let (name, value, body) = (b":status", b"200", b"snapshot-bytes");
    let headers = [EnvoyHttpHeader {
        key_ptr: name.as_ptr(),
        key_length: name.len(),
        value_ptr: value.as_ptr(),
        value_length: value.len(),
    }];
    let chunks = [buffer(&body[..8]), buffer(&body[8..])];
    // SAFETY: arrays and bytes are alive for the call.
    let response = unsafe { CalloutResponse::copy_from(headers.as_ptr(), 1, chunks.as_ptr(), 2) }
        .expect("valid");
    assert_eq!(response.status(), Some(200));
    assert_eq!(response.body, body);
    // A failed callout passes nulls.
    // SAFETY: null pointers with zero sizes.
    let empty = unsafe { CalloutResponse::copy_from(std::ptr::null(), 0, std::ptr::null(), 0) }
        .expect("valid");
    assert_eq!(empty.status(), None);
}

#[test]
fn an_allowed_key_goes_upstream_with_identity_and_without_its_credential() {
    let mut fake_config = FakeConfig::default();
    let config = new_config(&mut fake_config, &plugin_config(""));
    assert!(!config.is_null());
    let auth = format!("Bearer {KEY}");
    let mut fake = FakeFilter::with_request(&[
        (":method", "GET"),
        (":path", "/v1/models"),
        (":authority", "api.local"),
        ("authorization", &auth),
        ("x-keyward-key-id", "forged"),
    ]);
    assert_eq!(run_request(config, &mut fake), abi::HEADERS_CONTINUE);
    assert!(fake.sent.is_empty(), "{:?}", fake.sent);
    assert_eq!(fake.request_header("authorization"), None);
    assert_eq!(
        fake.request_header("x-keyward-key-id").as_deref(),
        Some("native1")
    );
    assert_eq!(
        fake.request_header("x-keyward-project").as_deref(),
        Some("proj_n")
    );
    assert_eq!(counter(&fake_config, &fake, "keyward.requests.allowed"), 1);
    assert_eq!(
        fake.route_cache_clears, 1,
        "the route is matched again after the header edits, once"
    );
    // SAFETY: created above, destroyed once.
    unsafe { envoy_dynamic_module_on_http_filter_config_destroy(config) };
}

#[test]
fn refusals_are_local_json_replies_and_never_go_upstream() {
    let mut fake_config = FakeConfig::default();
    let config = new_config(&mut fake_config, &plugin_config(""));
    let revoked = format!("Bearer ak_gone1.{SECRET}");
    type Case<'a> = (&'a [(&'a str, &'a str)], u32, &'a str);
    let cases: [Case; 3] = [
        (&[(":path", "/v1/models")], 401, "missing_api_key"),
        (
            &[(":path", "/v1/models"), ("authorization", &revoked)],
            401,
            "key_revoked",
        ),
        (
            &[
                (":path", "/v1/chat/completions"),
                (
                    "authorization",
                    "Bearer ak_native1.nAtIvEsEcReTnAtIvEsEcReT",
                ),
            ],
            403,
            "insufficient_scope",
        ),
    ];
    for (headers, status, code) in cases {
        let mut fake = FakeFilter::with_request(headers);
        fake.request_headers
            .push((b":method".to_vec(), b"GET".to_vec()));
        assert_eq!(
            run_request(config, &mut fake),
            abi::HEADERS_STOP_ITERATION,
            "{code}"
        );
        let sent = fake
            .sent
            .first()
            .unwrap_or_else(|| panic!("{code}: no reply"));
        assert_eq!(sent.status, status, "{code}");
        assert_eq!(sent.header("x-keyward-error").as_deref(), Some(code));
        assert_eq!(
            sent.header("content-type").as_deref(),
            Some("application/json")
        );
        let body = String::from_utf8_lossy(&sent.body);
        assert!(body.contains(&format!("\"code\":\"{code}\"")), "{body}");
        assert_eq!(
            fake.request_header("authorization"),
            None,
            "stripped even when refused"
        );
        assert_eq!(
            counter(
                &fake_config,
                &fake,
                &format!("keyward.requests.denied.{code}")
            ),
            1
        );
    }
    // SAFETY: created above, destroyed once.
    unsafe { envoy_dynamic_module_on_http_filter_config_destroy(config) };
}

#[test]
fn an_invalid_configuration_is_refused_with_a_log_line() {
    let mut fake_config = FakeConfig::default();
    let config = new_config(&mut fake_config, r#"{"routes": 7}"#);
    assert!(config.is_null());
    let sync_service = new_config(
        &mut FakeConfig::default(),
        &format!(
            r#"{{"role": "sync_service", "sync": {{"cluster": "cp", "poller": "sync_service",
                 "public_keys": [{{"id": "k1", "public_key_base64": "{}"}}]}}}}"#,
            sync_public_key()
        ),
    );
    assert!(
        sync_service.is_null(),
        "no sync service role in the native build"
    );
    let errors: Vec<String> = LOGS
        .lock()
        .expect("logs")
        .iter()
        .filter(|(level, _)| *level == abi::LOG_ERROR)
        .map(|(_, line)| line.clone())
        .collect();
    assert!(
        errors
            .iter()
            .any(|line| line.contains("invalid configuration: routes")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|line| line.contains("no sync service role")),
        "{errors:?}"
    );
}

/// The control plane's signing key of these tests (its seed), and the public key filters hold.
fn sync_key() -> SigningKey {
    SigningKey::from_seed("k1", &[7; 32]).expect("key")
}

fn sync_public_key() -> String {
    sync_key().public_key().to_base64()
}

/// A signed snapshot holding key `native1`, as the control plane serves it.
fn signed_snapshot(version: u64) -> String {
    let hash = hex(&sha256(SECRET.as_bytes()));
    let snapshot = format!(
        r#"{{"version": {version}, "issued_at": 1799999999, "expires_at": 4102444800,
            "projects": [{{"id": "proj_n", "org": "org_n", "status": "active"}}],
            "keys": [{{"id": "native1", "secret_sha256": "{hash}", "project": "proj_n", "status": "active"}}]}}"#
    );
    sign_snapshot(&snapshot, &sync_key()).expect("signed")
}

/// Answers configuration callout `id` as Envoy does, through the exported hook.
fn answer_callout(fake: &mut FakeConfig, config: ModulePtr, id: u64, status: &str, body: &[u8]) {
    let (name, value) = (b":status", status.as_bytes());
    let headers = [EnvoyHttpHeader {
        key_ptr: name.as_ptr(),
        key_length: name.len(),
        value_ptr: value.as_ptr(),
        value_length: value.len(),
    }];
    let chunks = [buffer(body)];
    // SAFETY: the arrays and bytes outlive the call; `config` is live.
    unsafe {
        envoy_dynamic_module_on_http_filter_config_http_callout_done(
            fake.ptr(),
            config,
            id,
            abi::CALLOUT_SUCCESS,
            headers.as_ptr(),
            1,
            chunks.as_ptr(),
            1,
        )
    };
}

#[test]
fn a_sync_configuration_polls_through_its_callouts_and_swaps_the_policy_in() {
    let mut fake_config = FakeConfig::default();
    let config = new_config(
        &mut fake_config,
        &format!(
            r#"{{"sync": {{"cluster": "cp", "path": "/v1/snapshot", "authority": "cp", "poller": "sync_service", "interval_ms": 100,
                         "public_keys": [{{"id": "k1", "public_key_base64": "{}"}}]}}}}"#,
            sync_public_key()
        ),
    );
    assert!(!config.is_null());
    let auth = format!("Bearer {KEY}");
    let request = [
        (":method", "GET"),
        (":path", "/v1/models"),
        ("authorization", auth.as_str()),
    ];
    let mut before = FakeFilter::with_request(&request);
    assert_eq!(
        run_request(config, &mut before),
        abi::HEADERS_STOP_ITERATION
    );
    assert_eq!(
        before.sent[0].header("x-keyward-error").as_deref(),
        Some("policy_unavailable")
    );

    // The first poll is a scheduler event committed at configuration time.
    assert_eq!(fake_config.commits.lock().expect("lock").first(), Some(&1));
    // SAFETY: the pointers of this live configuration.
    unsafe { envoy_dynamic_module_on_http_filter_config_scheduled(fake_config.ptr(), config, 1) };
    let (cluster, headers, _, timeout) = fake_config.callouts.last().expect("a poll").clone();
    assert_eq!((cluster.as_str(), timeout), ("cp", 2000));
    assert!(headers.contains(&(":path".to_owned(), b"/v1/snapshot".to_vec())));
    assert!(headers.contains(&(":authority".to_owned(), b"cp".to_vec())));
    let id = fake_config.callouts.len() as u64;

    // A tampered snapshot is refused: requests keep their answer.
    let tampered = signed_snapshot(8).replace("native1", "native2");
    answer_callout(&mut fake_config, config, id, "200", tampered.as_bytes());
    let mut still = FakeFilter::with_request(&request);
    assert_eq!(run_request(config, &mut still), abi::HEADERS_STOP_ITERATION);
    assert_eq!(
        fake_config.callouts.len() as u64,
        id,
        "no poll before the next is due"
    );

    // The next poll, once due (the interval is 100 ms).
    std::thread::sleep(std::time::Duration::from_millis(150));

    // SAFETY: as above.
    unsafe { envoy_dynamic_module_on_http_filter_config_scheduled(fake_config.ptr(), config, 1) };
    assert_eq!(fake_config.callouts.len() as u64, id + 1);
    answer_callout(
        &mut fake_config,
        config,
        id + 1,
        "200",
        signed_snapshot(8).as_bytes(),
    );
    let mut after = FakeFilter::with_request(&request);
    assert_eq!(
        run_request(config, &mut after),
        abi::HEADERS_CONTINUE,
        "{:?}",
        LOGS.lock().expect("logs")
    );
    assert_eq!(
        after.request_header("x-keyward-key-id").as_deref(),
        Some("native1")
    );
    assert_eq!(
        fake_config.gauge_values.values().max(),
        Some(&8),
        "policy version gauge"
    );

    // SAFETY: created above, destroyed once.
    unsafe { envoy_dynamic_module_on_http_filter_config_destroy(config) };
    assert_eq!(
        *fake_config.live_schedulers.lock().expect("lock"),
        0,
        "the sync thread is joined and the scheduler deleted with the configuration"
    );
}

/// A filter that panics where told to, to prove the barrier fails closed.
struct Panicky;
struct PanickyFilter;

impl FilterConfig for Panicky {
    type Filter = PanickyFilter;
    fn new(_config: ConfigHandle, name: &str, _bytes: &[u8]) -> Result<Self, String> {
        if name == "panic-in-config" {
            panic!("config");
        }
        Ok(Panicky)
    }
    fn new_filter(&self) -> PanickyFilter {
        PanickyFilter
    }
}

impl HttpFilter for PanickyFilter {
    fn on_request_headers(&mut self, _filter: &FilterHandle, _end_of_stream: bool) -> RequestFlow {
        panic!("headers")
    }
    fn on_request_body(&mut self, _filter: &FilterHandle, _end_of_stream: bool) -> RequestFlow {
        RequestFlow::Continue
    }
    fn on_request_trailers(&mut self, _filter: &FilterHandle) -> RequestFlow {
        RequestFlow::Continue
    }
    fn on_response_headers(&mut self, _filter: &FilterHandle, _end_of_stream: bool) {
        panic!("response")
    }
    fn on_response_body(&mut self, _filter: &FilterHandle, _end_of_stream: bool) {}
    fn on_stream_complete(&mut self, _filter: &FilterHandle) {}
}

#[test]
fn a_panic_in_a_request_hook_sends_500_and_poisons_the_stream() {
    let mut fake_config = FakeConfig::default();
    let envoy_config = fake_config.ptr();
    // SAFETY: the hooks get the fake pointers, as Envoy's would be.
    unsafe {
        let config = hooks::config_new::<Panicky>(envoy_config, buffer(b"ok"), buffer(b""));
        assert!(!config.is_null());
        let mut fake = FakeFilter::default();
        let envoy = fake.ptr();
        let stream = hooks::filter_new::<Panicky>(config, envoy);
        let status = hooks::request_headers::<Panicky>(envoy, stream, false);
        assert_eq!(status, abi::HEADERS_STOP_ITERATION);
        // Later request hooks of the poisoned stream refuse too, without running the filter.
        let body = hooks::request_body::<Panicky>(envoy, stream, true);
        assert_eq!(body, abi::BODY_STOP_NO_BUFFER);
        hooks::filter_destroy::<Panicky>(stream);
        hooks::config_destroy::<Panicky>(config);
        assert_eq!(fake.sent.len(), 2);
        assert!(fake.sent.iter().all(|sent| sent.status == 500
            && sent.header("content-type").as_deref() == Some("application/json")));
    }
}

#[test]
fn a_panic_in_a_response_hook_lets_the_response_through() {
    let mut fake_config = FakeConfig::default();
    // SAFETY: as above.
    unsafe {
        let config = hooks::config_new::<Panicky>(fake_config.ptr(), buffer(b"ok"), buffer(b""));
        let mut fake = FakeFilter::default();
        let envoy = fake.ptr();
        let stream = hooks::filter_new::<Panicky>(config, envoy);
        assert_eq!(
            hooks::response_headers::<Panicky>(envoy, stream, true),
            abi::HEADERS_CONTINUE
        );
        hooks::filter_destroy::<Panicky>(stream);
        hooks::config_destroy::<Panicky>(config);
        assert!(fake.sent.is_empty());
    }
}

#[test]
fn a_panic_while_creating_the_config_rejects_it() {
    let mut fake_config = FakeConfig::default();
    // SAFETY: as above.
    let config = unsafe {
        hooks::config_new::<Panicky>(fake_config.ptr(), buffer(b"panic-in-config"), buffer(b""))
    };
    assert!(config.is_null());
}
