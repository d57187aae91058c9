//! The fuzz targets' corpora (fuzz/corpus/*, seeds and past crashes) driven through the native
//! module's exported hooks, as Envoy would call them: configurations, request headers, request
//! bodies, response bodies and control-plane answers. A panic inside a hook would be caught and
//! turned into a refusal, but in a native module any panic is a bug (and an abort would take
//! Envoy down): none may happen, and no request may end in the barrier's 500.

use std::path::{Path, PathBuf};

use keyward_engine::hash::sha256;
use keyward_engine::metering::{key_counter_entry, SpendCounter};

use crate::abi::{self, EnvoyBuffer, EnvoyHttpHeader, ModulePtr};
use crate::exports::*;
use crate::fake_envoy::{FakeConfig, FakeFilter};
use crate::guard::CAUGHT;

const SECRET: &str = "nAtIvEsEcReTnAtIvEsEcReT";
/// The signing key of the snapshot corpus (engine/src/fuzzing.rs).
/// The public key of the engine's fuzz signing key (seed `[9; 32]`, `fuzzing::snapshot`).
fn fuzz_public_key() -> String {
    keyward_engine::signature::SigningKey::from_seed("fuzz", &[9; 32])
        .expect("key")
        .public_key()
        .to_base64()
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("corpus file");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus inputs in {}", dir.display());
    inputs
}

fn buffer(bytes: &[u8]) -> EnvoyBuffer {
    EnvoyBuffer {
        ptr: bytes.as_ptr(),
        length: bytes.len(),
    }
}

/// Fails the test if a hook panicked since `before` (the barrier counts per thread).
fn assert_no_panic(before: usize, input: &Path) {
    let caught = CAUGHT.with(|caught| caught.get());
    assert_eq!(caught, before, "a hook panicked on {}", input.display());
}

fn new_config(fake: &mut FakeConfig, json: &[u8]) -> ModulePtr {
    let ptr = fake.ptr();
    // SAFETY: buffers valid for the call; `fake` outlives the configuration.
    let config = unsafe {
        envoy_dynamic_module_on_http_filter_config_new(ptr, buffer(b"keyward"), buffer(json))
    };
    fake.frozen = true;
    config
}

fn destroy_config(config: ModulePtr) {
    if !config.is_null() {
        // SAFETY: created by `new_config`, destroyed once.
        unsafe { envoy_dynamic_module_on_http_filter_config_destroy(config) };
    }
}

/// A metered chat route with a price, a header-selected project and a query key (and
/// `route_extra`): every part of the request core a request can reach.
fn metered_config(key_id: &str, route_extra: &str) -> String {
    let hash: String = sha256(SECRET.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        r#"{{"routes": [{{"name": "chat", "match": {{"path_prefix": "/v1/"}}, "meter": true,
                         "project": {{"header": "x-project-id"}}, "deny_browser_requests": true,
                         "query_parameter": "k" {route_extra}}}],
           "policy": {{"version": 3, "issued_at": 1799999999,
             "prices": [{{"model": "gpt-4o*", "input_microusd_per_mtok": 2000000, "output_microusd_per_mtok": 10000000}}],
             "projects": [{{"id": "proj_n", "org": "org_n", "status": "active", "spend_cap_microusd": 100000000}}],
             "keys": [{{"id": "{key_id}", "secret_sha256": "{hash}", "project": "proj_n", "status": "active",
                        "scopes": ["*"], "models": ["gpt-4o*"], "spend_cap_microusd": 100000000, "rate_limits": {{"requests_per_minute": 100000}}}}]}}}}"#
    )
}

/// One stream through every hook Envoy calls: request headers, the body (if any), response
/// headers and body chunks, stream end. Returns the fake so the caller can look at what was sent.
fn run_stream(
    config: ModulePtr,
    request: &[(Vec<u8>, Vec<u8>)],
    body: Option<&[u8]>,
    response: Option<(&str, Vec<&[u8]>)>,
) -> FakeFilter {
    let mut fake = FakeFilter {
        request_headers: request.to_vec(),
        ..FakeFilter::default()
    };
    let envoy = fake.ptr();
    // SAFETY: `config` is live; the stream is destroyed before returning; the fake outlives it.
    unsafe {
        let stream = envoy_dynamic_module_on_http_filter_new(config, envoy);
        assert!(!stream.is_null());
        let headers =
            envoy_dynamic_module_on_http_filter_request_headers(envoy, stream, body.is_none());
        if let (Some(body), true) = (
            body,
            headers == abi::HEADERS_STOP_ITERATION || fake.sent.is_empty(),
        ) {
            (*envoy.cast::<FakeFilter>()).received_request = body.to_vec();
            envoy_dynamic_module_on_http_filter_request_body(envoy, stream, true);
        }
        if let (Some((content_type, chunks)), true) = (response, fake.sent.is_empty()) {
            let fake = &mut *envoy.cast::<FakeFilter>();
            fake.response_headers = vec![
                (b":status".to_vec(), b"200".to_vec()),
                (b"content-type".to_vec(), content_type.as_bytes().to_vec()),
            ];
            envoy_dynamic_module_on_http_filter_response_headers(envoy, stream, chunks.is_empty());
            let last = chunks.len().saturating_sub(1);
            for (index, chunk) in chunks.iter().enumerate() {
                fake.received_response = chunk.to_vec();
                envoy_dynamic_module_on_http_filter_response_body(envoy, stream, index == last);
            }
        }
        envoy_dynamic_module_on_http_filter_stream_complete(envoy, stream);
        envoy_dynamic_module_on_http_filter_destroy(stream);
    }
    fake
}

fn header(name: &str, value: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (name.as_bytes().to_vec(), value.to_vec())
}

fn assert_not_failed_closed(fake: &FakeFilter, input: &Path) {
    assert!(
        fake.sent
            .iter()
            .all(|sent| sent.details != "keyward_internal_error"),
        "the panic barrier answered {}",
        input.display()
    );
}

#[test]
fn plugin_config_corpus_through_config_new() {
    let before = CAUGHT.with(|caught| caught.get());
    for (path, bytes) in corpus("plugin_config") {
        let mut fake = FakeConfig::default();
        destroy_config(new_config(&mut fake, &bytes));
        assert_no_panic(before, &path);
    }
}

#[test]
fn snapshot_corpus_as_inline_policy_and_as_a_control_plane_answer() {
    let before = CAUGHT.with(|caught| caught.get());
    let sync = format!(
        r#"{{"sync": {{"cluster": "cp", "path": "/v1/snapshot", "authority": "cp", "poller": "sync_service",
                      "public_keys": [{{"id": "fuzz", "public_key_base64": "{}"}}]}}}}"#,
        fuzz_public_key()
    );
    let mut fake_sync = FakeConfig::default();
    let synced = new_config(&mut fake_sync, sync.as_bytes());
    assert!(!synced.is_null());
    for (path, bytes) in corpus("snapshot") {
        let mut inline = br#"{"policy": "#.to_vec();
        inline.extend_from_slice(&bytes);
        inline.push(b'}');
        let mut fake = FakeConfig::default();
        destroy_config(new_config(&mut fake, &inline));
        // The same bytes as the answer to a poll.
        // SAFETY: this configuration's pointers.
        unsafe { envoy_dynamic_module_on_http_filter_config_scheduled(fake_sync.ptr(), synced, 1) };
        let id = fake_sync.callouts.len() as u64;
        let (name, value) = (b":status", b"200");
        let headers = [EnvoyHttpHeader {
            key_ptr: name.as_ptr(),
            key_length: name.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }];
        let chunks = [buffer(&bytes)];
        // SAFETY: arrays and bytes outlive the call.
        unsafe {
            envoy_dynamic_module_on_http_filter_config_http_callout_done(
                fake_sync.ptr(),
                synced,
                id,
                abi::CALLOUT_SUCCESS,
                headers.as_ptr(),
                1,
                chunks.as_ptr(),
                1,
            )
        };
        assert_no_panic(before, &path);
    }
    destroy_config(synced);
}

#[test]
fn credential_corpus_through_the_request_hooks() {
    let before = CAUGHT.with(|caught| caught.get());
    let mut fake_config = FakeConfig::default();
    let config = new_config(
        &mut fake_config,
        metered_config("corpus1", r#", "model": {"header": "x-model"}"#).as_bytes(),
    );
    assert!(!config.is_null());
    let key = format!("Bearer ak_corpus1.{SECRET}");
    let names = [
        "authorization",
        "x-api-key",
        "x-project-id",
        "origin",
        "x-model",
    ];
    for (path, bytes) in corpus("credential_and_decision") {
        // As the fuzz target splits its input: a selector, then up to three header values.
        let Some((&selector, rest)) = bytes.split_first() else {
            continue;
        };
        let mut parts = rest.splitn(3, |b| *b == 0);
        let values: Vec<&[u8]> = (0..3).map(|_| parts.next().unwrap_or_default()).collect();
        let pick = |shift: u32| names[((selector >> shift) % 5) as usize];
        let mut request = vec![
            header(":method", b"GET"),
            header(":path", b"/v1/models"),
            header(":authority", b"api.local"),
            header(pick(0), values[0]),
        ];
        if selector & 0x40 != 0 {
            request.push(header(pick(2), values[1]));
        }
        if selector & 0x80 != 0 {
            request.push(header(pick(4), values[2]));
        }
        assert_not_failed_closed(&run_stream(config, &request, None, None), &path);
        // The same bytes where a request carries them elsewhere: path, query key, host.
        let mut query = b"/v1/models?k=".to_vec();
        query.extend_from_slice(values[0]);
        for request in [
            vec![header(":method", b"GET"), header(":path", values[0])],
            vec![header(":method", b"GET"), header(":path", &query)],
            vec![
                header(":method", b"GET"),
                header(":path", b"/v1/models"),
                header(":authority", values[0]),
                header("authorization", key.as_bytes()),
            ],
        ] {
            assert_not_failed_closed(&run_stream(config, &request, None, None), &path);
        }
        assert_no_panic(before, &path);
    }
    destroy_config(config);
}

#[test]
fn request_body_and_usage_corpora_through_a_metered_stream() {
    let before = CAUGHT.with(|caught| caught.get());
    let mut fake_config = FakeConfig::default();
    let config = new_config(&mut fake_config, metered_config("corpus2", "").as_bytes());
    assert!(!config.is_null());
    let key = format!("Bearer ak_corpus2.{SECRET}");
    let request = vec![
        header(":method", b"POST"),
        header(":path", b"/v1/chat/completions"),
        header(":authority", b"api.local"),
        header("authorization", key.as_bytes()),
        header("content-type", b"application/json"),
    ];
    let chat = br#"{"model": "gpt-4o-mini", "max_tokens": 16, "messages": []}"#;
    for (path, bytes) in corpus("request_body") {
        let fake = run_stream(
            config,
            &request,
            Some(&bytes),
            Some((
                "application/json",
                vec![br#"{"usage":{"prompt_tokens":1}}"#],
            )),
        );
        assert_not_failed_closed(&fake, &path);
        assert_no_panic(before, &path);
    }
    for (path, bytes) in corpus("usage_reader") {
        // As the fuzz target reads it: the first byte picks the shape and the chunk size.
        let Some((&selector, body)) = bytes.split_first() else {
            continue;
        };
        let content_type = if selector & 1 == 0 {
            "application/json"
        } else {
            "text/event-stream"
        };
        let size = usize::from(selector >> 1).saturating_add(1);
        let fake = run_stream(
            config,
            &request,
            Some(chat),
            Some((content_type, body.chunks(size).collect())),
        );
        assert_not_failed_closed(&fake, &path);
        assert_no_panic(before, &path);
    }
    destroy_config(config);
    let (bytes, _) = crate::process::PROCESS
        .ledger
        .encoded_get(&key_counter_entry("corpus2"))
        .expect("the metered requests reserved on this key");
    let counter = SpendCounter::decode(&bytes).expect("a counter");
    assert_eq!(
        counter.reserved, 0,
        "every reservation was settled or given back"
    );
    assert!(counter.settled > 0, "{counter:?}");
}
