//! Hand-written bindings to the part of Envoy's dynamic-module C ABI (v0.2.0, Envoy 1.40.0) that
//! keyward uses. Only declarations and plain data types live here; the safe layer is `host`.
//!
//! Every callback below was checked against the pinned Envoy binary itself (its prologue and
//! argument registers, see native/ABI.md), not only against a copy of `abi.h`: a wrong signature
//! does not fail to link, it corrupts memory.
//!
//! C enums cross the boundary as `u32` and are never transmuted into Rust enums, so a value this
//! module does not know is just a number, not undefined behaviour.

use core::ffi::c_void;

/// The ABI version string `envoy_dynamic_module_on_program_init` returns (NUL-terminated).
/// Envoy 1.40.0 logs "Dynamic module ABI version v0.2.0 matched." for it.
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// Envoy's `DynamicModuleHttpFilterConfig` (main thread) or `DynamicModuleHttpFilter` (one per
/// stream, worker thread). Opaque; only ever passed back to Envoy.
pub type EnvoyPtr = *mut c_void;
/// What the module hands Envoy for its configuration and filters; Envoy passes it back.
pub type ModulePtr = *const c_void;
/// A config scheduler, created and deleted by the module, committed from any thread.
pub type SchedulerPtr = *mut c_void;

/// Bytes owned by Envoy, valid for the current hook (and only until the next setter call).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

/// Bytes owned by the module, read by Envoy during the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }

    /// The null buffer: "no value" (a header value of null or length 0 removes the header).
    pub const NULL: ModuleBuffer = ModuleBuffer {
        ptr: core::ptr::null(),
        length: 0,
    };
}

/// A header owned by Envoy (a view into its header map).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyHttpHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

/// A header owned by the module (local replies, callouts). 32 bytes: checked against the stride
/// Envoy's callout callback walks the array with.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleHttpHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

impl ModuleHttpHeader {
    pub fn of(name: &str, value: &[u8]) -> ModuleHttpHeader {
        ModuleHttpHeader {
            key_ptr: name.as_ptr(),
            key_length: name.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }
    }
}

/// `envoy_dynamic_module_type_http_header_type` (order checked against the jump table of
/// `http_get_headers_size`: 0 and 1 read the decoder side, 2 and 3 the encoder side).
pub const HEADERS_REQUEST: u32 = 0;
pub const HEADERS_RESPONSE: u32 = 2;

/// `envoy_dynamic_module_type_http_body_type` (checked the same way on `http_get_body_size`).
pub const BODY_RECEIVED_REQUEST: u32 = 0;
pub const BODY_BUFFERED_REQUEST: u32 = 1;
pub const BODY_RECEIVED_RESPONSE: u32 = 2;

/// `envoy_dynamic_module_type_log_level`.
pub const LOG_DEBUG: u32 = 1;
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;

/// `envoy_dynamic_module_type_attribute_id_XdsRouteName`. Not in the switch of
/// `http_filter_get_attribute_string` (which covers ids 0..=41); Envoy's generic attribute path
/// answers it. Proven by the integration tests that match plugin routes by Envoy route name.
pub const ATTRIBUTE_XDS_ROUTE_NAME: u32 = 61;

/// `envoy_dynamic_module_type_metrics_result_Success`.
pub const METRICS_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_http_callout_init_result_Success`.
pub const CALLOUT_INIT_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_http_callout_result_Success`.
pub const CALLOUT_SUCCESS: u32 = 0;

/// Hook return values (`FilterHeadersStatus` / `FilterDataStatus` / `FilterTrailersStatus`).
pub const HEADERS_CONTINUE: u32 = 0;
pub const HEADERS_STOP_ITERATION: u32 = 1;
pub const BODY_CONTINUE: u32 = 0;
pub const BODY_STOP_AND_BUFFER: u32 = 1;
pub const BODY_STOP_NO_BUFFER: u32 = 3;
pub const TRAILERS_CONTINUE: u32 = 0;

// The symbols are resolved against the Envoy executable when it loads the module (linked with
// `-z now`, so a missing one refuses the module instead of failing mid-request). Unit tests link
// a fake Envoy (`fake_envoy`) that defines the same symbols.
extern "C" {
    pub fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    pub fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: EnvoyPtr,
        header_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter: EnvoyPtr,
        header_type: u32,
        result: *mut EnvoyHttpHeader,
    ) -> bool;
    /// Replaces every value of `key`; a null or empty `value` removes the header.
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: EnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    /// Makes the router match the route again (after header edits). Header writes through this
    /// ABI do not clear the route cache by themselves, unlike proxy-wasm's.
    pub fn envoy_dynamic_module_callback_http_clear_route_cache(filter: EnvoyPtr);
    /// `details` goes on the stack (no argument register is left for it).
    pub fn envoy_dynamic_module_callback_http_send_response(
        filter: EnvoyPtr,
        status_code: u32,
        headers: *const ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    pub fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: EnvoyPtr,
        body_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: EnvoyPtr,
        body_type: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_body_size(
        filter: EnvoyPtr,
        body_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_drain_body(
        filter: EnvoyPtr,
        body_type: u32,
        number_of_bytes: usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_append_body(
        filter: EnvoyPtr,
        body_type: u32,
        data: ModuleBuffer,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: EnvoyPtr,
        attribute_id: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;

    /// Metric ids start at 1 (0 is "not found"); counters and gauges have separate id spaces.
    /// Only callable from `on_http_filter_config_new`: Envoy freezes metric creation after it.
    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: EnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: EnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        gauge_id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: EnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter: EnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: EnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: EnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    /// A one-shot HTTP call owned by the filter configuration (main thread); the answer comes
    /// to `envoy_dynamic_module_on_http_filter_config_http_callout_done`. `body` and
    /// `timeout_milliseconds` go on the stack.
    pub fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: EnvoyPtr,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *const ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
    /// Call on the main thread; the scheduler holds a weak reference to the configuration.
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: EnvoyPtr,
    ) -> SchedulerPtr;
    /// Any thread: runs `envoy_dynamic_module_on_http_filter_config_scheduled` on the main
    /// thread (a no-op once the configuration is gone).
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: SchedulerPtr,
        event_id: u64,
    );
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler: SchedulerPtr,
    );
}
