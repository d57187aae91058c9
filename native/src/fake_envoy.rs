//! A fake Envoy for the unit tests: defines the `envoy_dynamic_module_callback_*` symbols the
//! module imports (the real ones live in the Envoy executable), over plain Rust state. The
//! "Envoy pointers" the tests hand to hooks are pointers to `FakeFilter` / `FakeConfig`.
//!
//! Semantics copied from what the real callbacks do in Envoy 1.40 (native/ABI.md): a null or
//! empty header value removes the header, metric ids start at 1, metric definition is frozen
//! after the configuration is created, the last request chunk may sit in the buffer.

#![allow(clippy::missing_safety_doc)]

use std::collections::HashMap;
use std::sync::Mutex;

use crate::abi::{
    EnvoyBuffer, EnvoyHttpHeader, EnvoyPtr, ModuleBuffer, ModuleHttpHeader, SchedulerPtr,
    ATTRIBUTE_XDS_ROUTE_NAME, BODY_BUFFERED_REQUEST, BODY_RECEIVED_REQUEST, BODY_RECEIVED_RESPONSE,
    HEADERS_REQUEST, HEADERS_RESPONSE,
};

/// Bodies are handed out in slices of this many bytes, so multi-slice copies get exercised.
const SLICE: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentReply {
    pub status: u32,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub details: String,
}

impl SentReply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

#[derive(Debug, Default)]
pub struct FakeFilter {
    pub request_headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub response_headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// `None`: no decoding buffer yet (Envoy creates one when a filter buffers).
    pub buffered_request: Option<Vec<u8>>,
    pub received_request: Vec<u8>,
    pub received_response: Vec<u8>,
    pub route_name: Option<Vec<u8>>,
    pub sent: Vec<SentReply>,
    pub counters: HashMap<usize, u64>,
    pub gauges: HashMap<usize, u64>,
    /// How often the module asked the router to match the route again.
    pub route_cache_clears: usize,
}

impl FakeFilter {
    pub fn with_request(headers: &[(&str, &str)]) -> FakeFilter {
        FakeFilter {
            request_headers: headers
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            ..FakeFilter::default()
        }
    }

    pub fn ptr(&mut self) -> EnvoyPtr {
        (self as *mut FakeFilter).cast()
    }

    pub fn request_header(&self, name: &str) -> Option<String> {
        self.request_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    fn map(&mut self, header_type: u32) -> Option<&mut Vec<(Vec<u8>, Vec<u8>)>> {
        match header_type {
            HEADERS_REQUEST => Some(&mut self.request_headers),
            HEADERS_RESPONSE => Some(&mut self.response_headers),
            _ => None,
        }
    }

    fn body(&mut self, body_type: u32) -> Option<&mut Vec<u8>> {
        match body_type {
            BODY_BUFFERED_REQUEST => self.buffered_request.as_mut(),
            BODY_RECEIVED_REQUEST => Some(&mut self.received_request),
            BODY_RECEIVED_RESPONSE => Some(&mut self.received_response),
            _ => None,
        }
    }
}

/// A configuration callout as made: cluster, headers, body, timeout.
pub type Callout = (String, Vec<(String, Vec<u8>)>, Vec<u8>, u64);

#[derive(Debug, Default)]
pub struct FakeConfig {
    pub counters: Vec<String>,
    pub gauges: Vec<String>,
    pub frozen: bool,
    pub counter_values: HashMap<usize, u64>,
    pub gauge_values: HashMap<usize, u64>,
    pub callouts: Vec<Callout>,
    pub commits: Mutex<Vec<u64>>,
    pub live_schedulers: Mutex<usize>,
}

impl FakeConfig {
    pub fn ptr(&mut self) -> EnvoyPtr {
        (self as *mut FakeConfig).cast()
    }
}

/// Log lines of every test thread (tests filter by content).
pub static LOGS: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());

unsafe fn module_bytes<'a>(buffer: ModuleBuffer) -> &'a [u8] {
    if buffer.ptr.is_null() {
        &[]
    } else {
        // SAFETY: the module passes buffers valid for their lengths during the call (the contract under test).
        unsafe { std::slice::from_raw_parts(buffer.ptr, buffer.length) }
    }
}

unsafe fn module_headers(headers: *const ModuleHttpHeader, size: usize) -> Vec<(String, Vec<u8>)> {
    let views = if size == 0 {
        &[][..]
    } else {
        // SAFETY: the module passes buffers valid for their lengths during the call (the contract under test).
        unsafe { std::slice::from_raw_parts(headers, size) }
    };
    views
        .iter()
        // SAFETY: pointers from the module under test, valid during the call.
        .map(|h| unsafe {
            let name = std::slice::from_raw_parts(h.key_ptr, h.key_length);
            let value = std::slice::from_raw_parts(h.value_ptr, h.value_length);
            (String::from_utf8_lossy(name).into_owned(), value.to_vec())
        })
        .collect()
}

unsafe fn filter<'a>(ptr: EnvoyPtr) -> &'a mut FakeFilter {
    // SAFETY: pointers from the module under test, valid during the call.
    unsafe { &mut *ptr.cast::<FakeFilter>() }
}

unsafe fn config<'a>(ptr: EnvoyPtr) -> &'a mut FakeConfig {
    // SAFETY: pointers from the module under test, valid during the call.
    unsafe { &mut *ptr.cast::<FakeConfig>() }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer) {
    // SAFETY: the module passes buffers valid for their lengths during the call (the contract under test).
    let text = String::from_utf8_lossy(unsafe { module_bytes(message) }).into_owned();
    // try_lock: the panic hook logs too, possibly while a failing test holds the lock.
    if let Ok(mut logs) = LOGS.try_lock() {
        logs.push((level, text));
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_log_enabled(_level: u32) -> bool {
    true
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_get_headers_size(
    ptr: EnvoyPtr,
    header_type: u32,
) -> usize {
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    unsafe { filter(ptr) }
        .map(header_type)
        .map_or(0, |map| map.len())
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_get_headers(
    ptr: EnvoyPtr,
    header_type: u32,
    result: *mut EnvoyHttpHeader,
) -> bool {
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    let Some(map) = unsafe { filter(ptr) }.map(header_type) else {
        return false;
    };
    for (index, (name, value)) in map.iter().enumerate() {
        // SAFETY: pointers from the module under test, valid during the call.
        unsafe {
            *result.add(index) = EnvoyHttpHeader {
                key_ptr: name.as_ptr(),
                key_length: name.len(),
                value_ptr: value.as_ptr(),
                value_length: value.len(),
            };
        }
    }
    true
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_clear_route_cache(ptr: EnvoyPtr) {
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    unsafe { filter(ptr) }.route_cache_clears += 1;
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_set_header(
    ptr: EnvoyPtr,
    header_type: u32,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    // SAFETY: the module passes buffers valid for their lengths during the call (the contract under test).
    let (key, value) = unsafe { (module_bytes(key).to_vec(), module_bytes(value).to_vec()) };
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    let Some(map) = unsafe { filter(ptr) }.map(header_type) else {
        return false;
    };
    map.retain(|(name, _)| !name.eq_ignore_ascii_case(&key));
    if !value.is_empty() {
        map.push((key, value));
    }
    true
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_send_response(
    ptr: EnvoyPtr,
    status_code: u32,
    headers: *const ModuleHttpHeader,
    headers_size: usize,
    body: ModuleBuffer,
    details: ModuleBuffer,
) {
    // SAFETY: the module passes buffers valid for their lengths during the call (the contract under test).
    let headers = unsafe { module_headers(headers, headers_size) };
    // SAFETY: pointers from the module under test, valid during the call.
    let reply = unsafe {
        SentReply {
            status: status_code,
            headers,
            body: module_bytes(body).to_vec(),
            details: String::from_utf8_lossy(module_bytes(details)).into_owned(),
        }
    };
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    unsafe { filter(ptr) }.sent.push(reply);
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_get_body_chunks_size(
    ptr: EnvoyPtr,
    body_type: u32,
) -> usize {
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    unsafe { filter(ptr) }
        .body(body_type)
        .map_or(0, |body| body.len().div_ceil(SLICE))
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_get_body_chunks(
    ptr: EnvoyPtr,
    body_type: u32,
    result: *mut EnvoyBuffer,
) -> bool {
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    let Some(body) = unsafe { filter(ptr) }.body(body_type) else {
        return false;
    };
    for (index, chunk) in body.chunks(SLICE).enumerate() {
        // SAFETY: pointers from the module under test, valid during the call.
        unsafe {
            *result.add(index) = EnvoyBuffer {
                ptr: chunk.as_ptr(),
                length: chunk.len(),
            };
        }
    }
    true
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_get_body_size(
    ptr: EnvoyPtr,
    body_type: u32,
) -> usize {
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    unsafe { filter(ptr) }
        .body(body_type)
        .map_or(0, |body| body.len())
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_drain_body(
    ptr: EnvoyPtr,
    body_type: u32,
    number_of_bytes: usize,
) -> bool {
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    match unsafe { filter(ptr) }.body(body_type) {
        Some(body) => {
            body.drain(..number_of_bytes.min(body.len()));
            true
        }
        // Like Envoy: draining a buffer that does not exist succeeds with nothing to do.
        None => body_type == BODY_BUFFERED_REQUEST,
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_append_body(
    ptr: EnvoyPtr,
    body_type: u32,
    data: ModuleBuffer,
) -> bool {
    // SAFETY: the module passes buffers valid for their lengths during the call (the contract under test).
    let data = unsafe { module_bytes(data) }.to_vec();
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    match unsafe { filter(ptr) }.body(body_type) {
        Some(body) => {
            body.extend_from_slice(&data);
            true
        }
        None => false,
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
    ptr: EnvoyPtr,
    attribute_id: u32,
    result: *mut EnvoyBuffer,
) -> bool {
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    let fake = unsafe { filter(ptr) };
    match (&fake.route_name, attribute_id) {
        (Some(name), ATTRIBUTE_XDS_ROUTE_NAME) => {
            // SAFETY: pointers from the module under test, valid during the call.
            unsafe {
                *result = EnvoyBuffer {
                    ptr: name.as_ptr(),
                    length: name.len(),
                }
            };
            true
        }
        _ => false,
    }
}

unsafe fn define(
    ptr: EnvoyPtr,
    name: ModuleBuffer,
    out: *mut usize,
    pick: fn(&mut FakeConfig) -> &mut Vec<String>,
) -> u32 {
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    let fake = unsafe { config(ptr) };
    if fake.frozen {
        return 3; // Frozen
    }
    // SAFETY: the module passes buffers valid for their lengths during the call (the contract under test).
    let name = String::from_utf8_lossy(unsafe { module_bytes(name) }).into_owned();
    let names = pick(fake);
    names.push(name);
    // SAFETY: the caller sized the out-array or passed a valid out-pointer (the contract under test).
    unsafe { *out = names.len() };
    0
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
    ptr: EnvoyPtr,
    name: ModuleBuffer,
    _labels: *const ModuleBuffer,
    _labels_length: usize,
    id: *mut usize,
) -> u32 {
    // SAFETY: pointers from the module under test, valid during the call.
    unsafe { define(ptr, name, id, |c| &mut c.counters) }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
    ptr: EnvoyPtr,
    name: ModuleBuffer,
    _labels: *const ModuleBuffer,
    _labels_length: usize,
    id: *mut usize,
) -> u32 {
    // SAFETY: pointers from the module under test, valid during the call.
    unsafe { define(ptr, name, id, |c| &mut c.gauges) }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_increment_counter(
    ptr: EnvoyPtr,
    id: usize,
    _labels: *const ModuleBuffer,
    _labels_length: usize,
    value: u64,
) -> u32 {
    if id == 0 {
        return 1; // MetricNotFound
    }
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    *unsafe { filter(ptr) }.counters.entry(id).or_default() += value;
    0
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_set_gauge(
    ptr: EnvoyPtr,
    id: usize,
    _labels: *const ModuleBuffer,
    _labels_length: usize,
    value: u64,
) -> u32 {
    if id == 0 {
        return 1;
    }
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    unsafe { filter(ptr) }.gauges.insert(id, value);
    0
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
    ptr: EnvoyPtr,
    id: usize,
    _labels: *const ModuleBuffer,
    _labels_length: usize,
    value: u64,
) -> u32 {
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    *unsafe { config(ptr) }.counter_values.entry(id).or_default() += value;
    0
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
    ptr: EnvoyPtr,
    id: usize,
    _labels: *const ModuleBuffer,
    _labels_length: usize,
    value: u64,
) -> u32 {
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    unsafe { config(ptr) }.gauge_values.insert(id, value);
    0
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_http_callout(
    ptr: EnvoyPtr,
    callout_id_out: *mut u64,
    cluster_name: ModuleBuffer,
    headers: *const ModuleHttpHeader,
    headers_size: usize,
    body: ModuleBuffer,
    timeout_milliseconds: u64,
) -> u32 {
    // SAFETY: the module passes buffers valid for their lengths during the call (the contract under test).
    let cluster = String::from_utf8_lossy(unsafe { module_bytes(cluster_name) }).into_owned();
    if cluster == "missing" {
        return 2; // ClusterNotFound
    }
    // SAFETY: the module passes buffers valid for their lengths during the call (the contract under test).
    let headers = unsafe { module_headers(headers, headers_size) };
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    let fake = unsafe { config(ptr) };
    fake.callouts.push((
        cluster,
        headers,
        // SAFETY: the module passes buffers valid for their lengths during the call (the contract under test).
        unsafe { module_bytes(body) }.to_vec(),
        timeout_milliseconds,
    ));
    // SAFETY: the caller sized the out-array or passed a valid out-pointer (the contract under test).
    unsafe { *callout_id_out = fake.callouts.len() as u64 };
    0
}

struct FakeScheduler {
    config: *mut FakeConfig,
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
    ptr: EnvoyPtr,
) -> SchedulerPtr {
    // SAFETY: the tests only hand the hooks pointers to their own live fakes.
    let fake = unsafe { config(ptr) };
    *fake.live_schedulers.lock().expect("lock") += 1;
    Box::into_raw(Box::new(FakeScheduler { config: ptr.cast() })).cast()
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
    scheduler: SchedulerPtr,
    event_id: u64,
) {
    // SAFETY: the scheduler pointer came from scheduler_new and is used before delete.
    let scheduler = unsafe { &*scheduler.cast::<FakeScheduler>() };
    // SAFETY: the scheduler pointer came from scheduler_new and is used before delete.
    let fake = unsafe { &*scheduler.config };
    fake.commits.lock().expect("lock").push(event_id);
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
    scheduler: SchedulerPtr,
) {
    // SAFETY: the scheduler pointer came from scheduler_new and is used before delete.
    let scheduler = unsafe { Box::from_raw(scheduler.cast::<FakeScheduler>()) };
    // SAFETY: the scheduler pointer came from scheduler_new and is used before delete.
    let fake = unsafe { &*scheduler.config };
    *fake.live_schedulers.lock().expect("lock") -= 1;
}
