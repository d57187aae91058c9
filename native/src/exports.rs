//! The C symbols Envoy looks up by name, each a one-line forward to `hooks` with keyward's
//! configuration type. Signatures follow `abi.h` of ABI v0.2.0; see native/ABI.md for how they
//! were checked against Envoy 1.40.0.

use std::ffi::c_char;

use crate::abi::{EnvoyBuffer, EnvoyHttpHeader, EnvoyPtr, ModulePtr};
use crate::glue::KeywardConfig;
use crate::hooks;

type Config = KeywardConfig;

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    hooks::program_init()
}

/// # Safety
/// Called by Envoy with views of its own strings, valid during the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: EnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ModulePtr {
    // SAFETY: Envoy's contract for this hook.
    unsafe { hooks::config_new::<Config>(config_envoy, name, config) }
}

/// # Safety
/// Called by Envoy once per configuration it created.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ModulePtr) {
    // SAFETY: Envoy's contract for this hook.
    unsafe { hooks::config_destroy::<Config>(config) }
}

/// # Safety
/// Called by Envoy with a live configuration.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ModulePtr,
    filter_envoy: EnvoyPtr,
) -> ModulePtr {
    // SAFETY: Envoy's contract for this hook.
    unsafe { hooks::filter_new::<Config>(config, filter_envoy) }
}

/// # Safety
/// Called by Envoy once per stream it created.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(stream: ModulePtr) {
    // SAFETY: Envoy's contract for this hook.
    unsafe { hooks::filter_destroy::<Config>(stream) }
}

/// # Safety
/// Called by Envoy on the stream's worker with its own pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: EnvoyPtr,
    stream: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy's contract for this hook.
    unsafe { hooks::request_headers::<Config>(filter_envoy, stream, end_of_stream) }
}

/// # Safety
/// As above.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter_envoy: EnvoyPtr,
    stream: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy's contract for this hook.
    unsafe { hooks::request_body::<Config>(filter_envoy, stream, end_of_stream) }
}

/// # Safety
/// As above.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter_envoy: EnvoyPtr,
    stream: ModulePtr,
) -> u32 {
    // SAFETY: Envoy's contract for this hook.
    unsafe { hooks::request_trailers::<Config>(filter_envoy, stream) }
}

/// # Safety
/// As above.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: EnvoyPtr,
    stream: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy's contract for this hook.
    unsafe { hooks::response_headers::<Config>(filter_envoy, stream, end_of_stream) }
}

/// # Safety
/// As above.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    filter_envoy: EnvoyPtr,
    stream: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy's contract for this hook.
    unsafe { hooks::response_body::<Config>(filter_envoy, stream, end_of_stream) }
}

/// Response trailers pass untouched (`FilterTrailersStatus::Continue`).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: EnvoyPtr,
    _stream: ModulePtr,
) -> u32 {
    crate::abi::TRAILERS_CONTINUE
}

/// # Safety
/// As above.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter_envoy: EnvoyPtr,
    stream: ModulePtr,
) {
    // SAFETY: Envoy's contract for this hook.
    unsafe { hooks::stream_complete::<Config>(filter_envoy, stream) }
}

/// # Safety
/// Called by Envoy on the main thread for an event this module committed.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: EnvoyPtr,
    config: ModulePtr,
    event_id: u64,
) {
    // SAFETY: Envoy's contract for this hook.
    unsafe { hooks::config_scheduled::<Config>(config_envoy, config, event_id) }
}

/// # Safety
/// Called by Envoy on the main thread with buffers valid during the call.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    config_envoy: EnvoyPtr,
    config: ModulePtr,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    // SAFETY: Envoy's contract for this hook.
    unsafe {
        hooks::config_http_callout_done::<Config>(
            config_envoy,
            config,
            callout_id,
            result,
            headers,
            headers_size,
            body_chunks,
            body_chunks_size,
        )
    }
}

// Required by Envoy, unused by keyward: keyward starts no per-stream callout, stream or
// scheduler, and is not a terminal filter (watermarks). Empty bodies cannot panic.

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy: EnvoyPtr,
    _stream: ModulePtr,
    _callout_id: u64,
    _result: u32,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *const EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: EnvoyPtr,
    _stream: ModulePtr,
    _stream_id: u64,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: EnvoyPtr,
    _stream: ModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: EnvoyPtr,
    _stream: ModulePtr,
    _stream_id: u64,
    _trailers: *const EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: EnvoyPtr,
    _stream: ModulePtr,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: EnvoyPtr,
    _stream: ModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy: EnvoyPtr,
    _stream: ModulePtr,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: EnvoyPtr,
    _stream: ModulePtr,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: EnvoyPtr,
    _stream: ModulePtr,
) {
}
