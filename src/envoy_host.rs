//! The proxy-wasm ABI, called directly. The SDK's wrappers panic on any unexpected status (and a
//! panic kills the VM, i.e. every request of that worker); here every status becomes a
//! `HostError` the caller handles, and host-provided maps are parsed with bounds checks.

use std::cell::RefCell;
use std::ptr::null_mut;

use keyward_engine::request::Header;

use crate::header_map::{parse_header_map_into, serialize_pairs, wipe_values};
use crate::host::{
    Host, HostError, LogLevel, MetricKind, SetOutcome, SharedData, SyncHost, Telemetry,
};

const STATUS_OK: u32 = 0;
const STATUS_NOT_FOUND: u32 = 1;
const MAP_HTTP_REQUEST_HEADERS: u32 = 0;
const MAP_HTTP_RESPONSE_HEADERS: u32 = 2;
const BUFFER_HTTP_REQUEST_BODY: u32 = 0;
const BUFFER_HTTP_RESPONSE_BODY: u32 = 1;
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
const MAP_HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
const STATUS_CAS_MISMATCH: u32 = 8;

extern "C" {
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

fn check(status: u32) -> Result<(), HostError> {
    if status == STATUS_OK {
        Ok(())
    } else {
        Err(HostError::Status(status))
    }
}

/// The ABI's header writes (`proxy_replace_header_map_value`, `proxy_add_header_map_value`):
/// one signature, map type then name and value.
type HeaderWrite = unsafe extern "C" fn(u32, *const u8, usize, *const u8, usize) -> u32;

#[inline(always)]
fn write_header(
    write: HeaderWrite,
    map_type: u32,
    name: &str,
    value: &[u8],
) -> Result<(), HostError> {
    // SAFETY: `write` is one of the ABI's header writes; both slices are valid for the call.
    check(unsafe {
        write(
            map_type,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Takes ownership of a buffer the host allocated through the SDK's `proxy_on_memory_allocate`
/// (a `Vec<u8>` of exactly `size` capacity).
///
/// # Safety
/// `data` must be null or come from that allocator with capacity `size`.
unsafe fn take_host_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

/// The host of the current context (Envoy tracks which context is active).
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvoyHost;

impl EnvoyHost {
    /// The plugin configuration bytes, `None` when Envoy passed none.
    pub fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, HostError> {
        buffer(BUFFER_PLUGIN_CONFIGURATION, usize::MAX)
    }

    /// `set_tick_period` through the raw call: the SDK's wrapper panics on any failure.
    pub fn set_tick_period_ms(&self, period_ms: u32) -> Result<(), HostError> {
        // SAFETY: plain value.
        check(unsafe { proxy_set_tick_period_milliseconds(period_ms) })
    }

    pub fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let kind = match kind {
            MetricKind::Counter => 0,
            MetricKind::Gauge => 1,
        };
        let mut id = 0u32;
        // SAFETY: name is a valid slice; id a valid out-pointer.
        check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
        Ok(id)
    }
}

std::thread_local! {
    /// A header list handed back by the request glue ([`Host::recycle_headers`]), read into
    /// again by the next map: its names and values keep their allocations, so a request's maps
    /// cost no allocation once it has grown to them. One VM is one thread.
    static SPARE_HEADERS: RefCell<Vec<Header>> = const { RefCell::new(Vec::new()) };
}

fn header_map(map_type: u32) -> Result<Vec<Header>, HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: out-pointers are valid; the buffer comes from our allocator.
    let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
    check(status)?;
    let mut bytes = unsafe { take_host_buffer(data, size) };
    let mut headers = SPARE_HEADERS
        .try_with(|spare| {
            spare
                .try_borrow_mut()
                .map(|mut spare| std::mem::take(&mut *spare))
        })
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let parsed = parse_header_map_into(&bytes, &mut headers);
    // The serialized map held the caller's credential too: zeroed before it is freed.
    bytes.fill(0);
    parsed.ok_or(HostError::Malformed)?;
    Ok(headers)
}

fn buffer(buffer_type: u32, max_size: usize) -> Result<Option<Vec<u8>>, HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: out-pointers are valid; the buffer comes from our allocator.
    let status = unsafe { proxy_get_buffer_bytes(buffer_type, 0, max_size, &mut data, &mut size) };
    match status {
        STATUS_OK => Ok(Some(unsafe { take_host_buffer(data, size) })),
        STATUS_NOT_FOUND => Ok(None),
        status => Err(HostError::Status(status)),
    }
}

impl SharedData for EnvoyHost {
    fn shared_get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        let mut data: *mut u8 = null_mut();
        let mut size: usize = 0;
        let mut cas: u32 = 0;
        // SAFETY: out-pointers are valid; the buffer comes from our allocator.
        let status = unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        match status {
            // An entry written empty exists (and has a CAS token a writer must use).
            STATUS_OK if data.is_null() => Ok(Some((Vec::new(), cas))),
            STATUS_OK => Ok(Some((unsafe { take_host_buffer(data, size) }, cas))),
            STATUS_NOT_FOUND => Ok(None),
            status => Err(HostError::Status(status)),
        }
    }

    fn shared_set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<SetOutcome, HostError> {
        // SAFETY: both slices are valid for the call.
        let status = unsafe {
            proxy_set_shared_data(
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
                cas.unwrap_or(0),
            )
        };
        match status {
            STATUS_OK => Ok(SetOutcome::Written),
            STATUS_CAS_MISMATCH => Ok(SetOutcome::CasMismatch),
            status => Err(HostError::Status(status)),
        }
    }

    fn now_ms(&self) -> Result<u64, HostError> {
        let mut nanos = 0u64;
        // SAFETY: valid out-pointer.
        check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
        Ok(nanos / 1_000_000)
    }
}

impl SyncHost for EnvoyHost {
    fn dispatch_get(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u32, HostError> {
        // The SDK's wrapper is used here, not the raw call: it registers the token with the
        // SDK's dispatcher, which routes the response back to this root context. The statuses
        // Envoy gives for an unknown cluster or a failed call come back as errors.
        proxy_wasm::hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            None,
            Vec::new(),
            std::time::Duration::from_millis(timeout_ms),
        )
        .map_err(|status| HostError::Status(status as u32))
    }

    fn dispatch_post(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, HostError> {
        proxy_wasm::hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            Some(body),
            Vec::new(),
            std::time::Duration::from_millis(timeout_ms),
        )
        .map_err(|status| HostError::Status(status as u32))
    }

    fn call_response_headers(&self) -> Result<Vec<Header>, HostError> {
        header_map(MAP_HTTP_CALL_RESPONSE_HEADERS)
    }

    fn call_response_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        Ok(buffer(BUFFER_HTTP_CALL_RESPONSE_BODY, size)?.unwrap_or_default())
    }
}

impl Host for EnvoyHost {
    fn request_headers(&self) -> Result<Vec<Header>, HostError> {
        header_map(MAP_HTTP_REQUEST_HEADERS)
    }

    fn recycle_headers(&self, mut headers: Vec<Header>) {
        wipe_values(&mut headers);
        // Keep the larger list: it serves every map up to its size without allocating.
        let _ = SPARE_HEADERS.try_with(|spare| {
            if let Ok(mut spare) = spare.try_borrow_mut() {
                if headers.capacity() >= spare.capacity() {
                    *spare = headers;
                }
            }
        });
    }

    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        let serialized = path.join("\0");
        let mut data: *mut u8 = null_mut();
        let mut size: usize = 0;
        // SAFETY: as above.
        let status = unsafe {
            proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size)
        };
        match status {
            STATUS_OK => {
                let value = unsafe { take_host_buffer(data, size) };
                Ok((!value.is_empty()).then_some(value))
            }
            STATUS_NOT_FOUND => Ok(None),
            status => Err(HostError::Status(status)),
        }
    }

    fn replace_request_header(&self, name: &str, value: &[u8]) -> Result<(), HostError> {
        write_header(
            proxy_replace_header_map_value,
            MAP_HTTP_REQUEST_HEADERS,
            name,
            value,
        )
    }

    fn add_request_header(&self, name: &str, value: &[u8]) -> Result<(), HostError> {
        write_header(
            proxy_add_header_map_value,
            MAP_HTTP_REQUEST_HEADERS,
            name,
            value,
        )
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        // SAFETY: the slice is valid for the call.
        check(unsafe {
            proxy_remove_header_map_value(MAP_HTTP_REQUEST_HEADERS, name.as_ptr(), name.len())
        })
    }

    fn send_local_reply(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError> {
        let serialized = serialize_pairs(headers);
        let details = "keyward_denied";
        // SAFETY: all slices are valid for the call; -1 means "not gRPC".
        check(unsafe {
            proxy_send_local_response(
                u32::from(status),
                details.as_ptr(),
                details.len(),
                body.as_ptr(),
                body.len(),
                serialized.as_ptr(),
                serialized.len(),
                -1,
            )
        })
    }

    fn now_unix_seconds(&self) -> Result<u64, HostError> {
        let mut nanos = 0u64;
        // SAFETY: valid out-pointer.
        check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
        Ok(nanos / 1_000_000_000)
    }

    fn request_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        Ok(buffer(BUFFER_HTTP_REQUEST_BODY, size)?.unwrap_or_default())
    }

    fn replace_request_body(&self, old_size: usize, body: &[u8]) -> Result<(), HostError> {
        // SAFETY: the slice is valid for the call.
        check(unsafe {
            proxy_set_buffer_bytes(
                BUFFER_HTTP_REQUEST_BODY,
                0,
                old_size,
                body.as_ptr(),
                body.len(),
            )
        })
    }

    fn response_headers(&self) -> Result<Vec<Header>, HostError> {
        header_map(MAP_HTTP_RESPONSE_HEADERS)
    }

    fn replace_response_header(&self, name: &str, value: &[u8]) -> Result<(), HostError> {
        write_header(
            proxy_replace_header_map_value,
            MAP_HTTP_RESPONSE_HEADERS,
            name,
            value,
        )
    }

    fn response_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        Ok(buffer(BUFFER_HTTP_RESPONSE_BODY, size)?.unwrap_or_default())
    }
}

impl Telemetry for EnvoyHost {
    fn increment_metric(&self, id: u32, delta: i64) {
        // SAFETY: plain values. A failed metric update is deliberately ignored.
        let _ = unsafe { proxy_increment_metric(id, delta) };
    }

    fn record_metric(&self, id: u32, value: u64) {
        // SAFETY: plain values. A failed metric update is deliberately ignored.
        let _ = unsafe { proxy_record_metric(id, value) };
    }

    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Info => 2,
            LogLevel::Warn => 3,
            LogLevel::Error => 4,
        };
        // SAFETY: the slice is valid for the call. Nowhere to report a failed log line.
        let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
    }
}
