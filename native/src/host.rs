//! The safe layer over the raw bindings in `abi`: owned copies in, borrowed slices out, every
//! status checked. Nothing here knows about keyward's policy; `glue` does.
//!
//! Lifetimes: a `FilterHandle` is only valid during the hook Envoy passed its pointer to (hooks
//! construct it and drop it before returning). Values read from Envoy point into its header map
//! or body buffer and are copied before anything is written back: a setter may free them.

use core::ffi::c_void;
use std::ptr::null_mut;

use crate::abi::{self, EnvoyBuffer, EnvoyHttpHeader, EnvoyPtr, ModuleBuffer, ModuleHttpHeader};

/// One header, name lower-cased, value as raw bytes (not necessarily UTF-8).
pub type Header = (String, Vec<u8>);

/// A header name Envoy gave that is not UTF-8 (its codecs never produce one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedHeaders;

pub fn log(level: u32, message: &str) {
    // SAFETY: the buffer points into `message`, alive for the call; Envoy copies it.
    unsafe { abi::envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes())) }
}

pub fn log_error(message: &str) {
    log(abi::LOG_ERROR, message);
}

/// Whether Envoy would print a line at `level` (skips formatting debug lines nobody reads).
pub fn log_enabled(level: u32) -> bool {
    // SAFETY: plain value in, plain value out.
    unsafe { abi::envoy_dynamic_module_callback_log_enabled(level) }
}

/// Copies `length` bytes Envoy owns. A null pointer (Envoy's "empty") gives an empty vector.
///
/// # Safety
/// `ptr` must be null or valid for `length` bytes for the duration of the call.
unsafe fn copy_envoy_bytes(ptr: *const u8, length: usize) -> Vec<u8> {
    if ptr.is_null() || length == 0 {
        return Vec::new();
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(ptr, length) }.to_vec()
}

/// Copies one header view, name lower-cased.
///
/// # Safety
/// The view's pointers must be null or valid for their lengths during the call.
unsafe fn copy_header(view: &EnvoyHttpHeader) -> Result<Header, MalformedHeaders> {
    // SAFETY: guaranteed by the caller.
    let (name, value) = unsafe {
        (
            copy_envoy_bytes(view.key_ptr, view.key_length),
            copy_envoy_bytes(view.value_ptr, view.value_length),
        )
    };
    let mut name = String::from_utf8(name).map_err(|_| MalformedHeaders)?;
    name.make_ascii_lowercase();
    Ok((name, value))
}

/// Joins body slices into one owned buffer.
///
/// # Safety
/// Each slice must be null or valid for its length during the call.
unsafe fn copy_chunks(chunks: &[EnvoyBuffer]) -> Vec<u8> {
    let mut body = Vec::with_capacity(chunks.iter().map(|chunk| chunk.length).sum());
    for chunk in chunks {
        // SAFETY: guaranteed by the caller.
        body.extend_from_slice(&unsafe { copy_envoy_bytes(chunk.ptr, chunk.length) });
    }
    body
}

/// The per-stream Envoy filter, for the duration of one hook.
#[derive(Debug)]
pub struct FilterHandle {
    ptr: EnvoyPtr,
}

impl FilterHandle {
    /// # Safety
    /// `ptr` must be the `filter_envoy_ptr` of the hook being run, and the handle must not
    /// outlive that hook.
    pub unsafe fn new(ptr: EnvoyPtr) -> FilterHandle {
        FilterHandle { ptr }
    }

    fn headers(&self, header_type: u32) -> Result<Vec<Header>, MalformedHeaders> {
        // SAFETY: `self.ptr` is this hook's filter (see `new`).
        let count = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers_size(self.ptr, header_type)
        };
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut views = vec![
            EnvoyHttpHeader {
                key_ptr: std::ptr::null(),
                key_length: 0,
                value_ptr: std::ptr::null(),
                value_length: 0,
            };
            count
        ];
        // SAFETY: `views` has room for the `count` entries Envoy just reported; nothing ran in
        // between that could add a header (one thread, no setter call).
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers(
                self.ptr,
                header_type,
                views.as_mut_ptr(),
            )
        };
        if !ok {
            return Ok(Vec::new());
        }
        views
            .iter()
            // SAFETY: Envoy filled each view with pointers into its header map, valid until the
            // next setter call; they are copied here, before any.
            .map(|view| unsafe { copy_header(view) })
            .collect()
    }

    /// Every request header (pseudo-headers included), copied.
    pub fn request_headers(&self) -> Result<Vec<Header>, MalformedHeaders> {
        self.headers(abi::HEADERS_REQUEST)
    }

    pub fn response_headers(&self) -> Result<Vec<Header>, MalformedHeaders> {
        self.headers(abi::HEADERS_RESPONSE)
    }

    fn set_header(&self, header_type: u32, name: &str, value: ModuleBuffer) -> bool {
        // SAFETY: both buffers point into live slices for the call; Envoy copies them. Unlike a
        // Wasm header write, this does not clear Envoy's route cache.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                header_type,
                ModuleBuffer::of(name.as_bytes()),
                value,
            )
        }
    }

    /// Replaces every value of `name`. An empty value removes the header: Envoy's ABI treats a
    /// zero-length value as "remove" (checked in the binary), so keyward never writes one.
    pub fn set_request_header(&self, name: &str, value: &[u8]) -> bool {
        self.set_header(abi::HEADERS_REQUEST, name, ModuleBuffer::of(value))
    }

    pub fn remove_request_header(&self, name: &str) -> bool {
        self.set_header(abi::HEADERS_REQUEST, name, ModuleBuffer::NULL)
    }

    pub fn set_response_header(&self, name: &str, value: &[u8]) -> bool {
        self.set_header(abi::HEADERS_RESPONSE, name, ModuleBuffer::of(value))
    }

    /// Has the router pick the route again, from the request headers as they are now.
    pub fn clear_route_cache(&self) {
        // SAFETY: `self.ptr` is this hook's filter; nothing else is passed.
        unsafe { abi::envoy_dynamic_module_callback_http_clear_route_cache(self.ptr) }
    }

    /// Answers the request locally. Pass `content-type`: Envoy's default is `text/plain`.
    pub fn send_local_reply(
        &self,
        status: u16,
        headers: &[(&str, &[u8])],
        body: &[u8],
        details: &str,
    ) {
        let views: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(name, value)| ModuleHttpHeader::of(name, value))
            .collect();
        // SAFETY: `views` and every slice it points into, `body` and `details` outlive the call;
        // Envoy copies them before returning.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                u32::from(status),
                views.as_ptr(),
                views.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details.as_bytes()),
            )
        }
    }

    /// A string attribute (`xds.route_name`...), copied; `None` when Envoy has none.
    pub fn attribute_string(&self, attribute_id: u32) -> Option<Vec<u8>> {
        let mut result = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: `result` is a valid out-pointer for the call.
        let found = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.ptr,
                attribute_id,
                &mut result,
            )
        };
        // SAFETY: on success Envoy points `result` at bytes valid during this hook.
        found.then(|| unsafe { copy_envoy_bytes(result.ptr, result.length) })
    }

    fn body(&self, body_type: u32) -> Vec<u8> {
        // SAFETY: `self.ptr` is this hook's filter.
        let count = unsafe {
            abi::envoy_dynamic_module_callback_http_get_body_chunks_size(self.ptr, body_type)
        };
        if count == 0 {
            return Vec::new();
        }
        let mut chunks = vec![
            EnvoyBuffer {
                ptr: std::ptr::null(),
                length: 0,
            };
            count
        ];
        // SAFETY: room for the `count` slices Envoy just reported.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_body_chunks(
                self.ptr,
                body_type,
                chunks.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        // SAFETY: each slice points into Envoy's buffer, valid during this hook.
        unsafe { copy_chunks(&chunks) }
    }

    fn body_size(&self, body_type: u32) -> usize {
        // SAFETY: `self.ptr` is this hook's filter.
        unsafe { abi::envoy_dynamic_module_callback_http_get_body_size(self.ptr, body_type) }
    }

    /// The request body so far: what earlier hooks buffered plus the chunk of this hook. (At the
    /// end of a buffered stream Envoy has already moved the last chunk into the buffer.)
    pub fn request_body(&self) -> Vec<u8> {
        let mut body = self.body(abi::BODY_BUFFERED_REQUEST);
        body.extend_from_slice(&self.body(abi::BODY_RECEIVED_REQUEST));
        body
    }

    pub fn request_body_size(&self) -> usize {
        self.body_size(abi::BODY_BUFFERED_REQUEST)
            .saturating_add(self.body_size(abi::BODY_RECEIVED_REQUEST))
    }

    /// Replaces the whole request body, wherever Envoy holds it (buffer or current chunk).
    pub fn replace_request_body(&self, body: &[u8]) -> bool {
        let buffered = self.body_size(abi::BODY_BUFFERED_REQUEST);
        let received = self.body_size(abi::BODY_RECEIVED_REQUEST);
        let target = if buffered > 0 {
            abi::BODY_BUFFERED_REQUEST
        } else {
            abi::BODY_RECEIVED_REQUEST
        };
        // SAFETY: `self.ptr` is this hook's filter; `body` outlives the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_drain_body(
                self.ptr,
                abi::BODY_BUFFERED_REQUEST,
                buffered,
            ) && abi::envoy_dynamic_module_callback_http_drain_body(
                self.ptr,
                abi::BODY_RECEIVED_REQUEST,
                received,
            ) && abi::envoy_dynamic_module_callback_http_append_body(
                self.ptr,
                target,
                ModuleBuffer::of(body),
            )
        }
    }

    /// The response chunk Envoy is passing through in this hook.
    pub fn response_body_chunk(&self) -> Vec<u8> {
        self.body(abi::BODY_RECEIVED_RESPONSE)
    }

    pub fn response_body_chunk_size(&self) -> usize {
        self.body_size(abi::BODY_RECEIVED_RESPONSE)
    }

    /// Best effort: a failed metric update never changes a decision.
    pub fn increment_counter(&self, id: MetricId, delta: u64) {
        update_metric(
            abi::envoy_dynamic_module_callback_http_filter_increment_counter,
            self.ptr,
            id,
            delta,
        );
    }

    pub fn set_gauge(&self, id: MetricId, value: u64) {
        update_metric(
            abi::envoy_dynamic_module_callback_http_filter_set_gauge,
            self.ptr,
            id,
            value,
        );
    }
}

/// The shape of every metric update callback (labels unused by keyward).
type MetricUpdate = unsafe extern "C" fn(EnvoyPtr, usize, *const ModuleBuffer, usize, u64) -> u32;

/// Best effort: a failed metric update (unknown id) never changes a decision.
fn update_metric(update: MetricUpdate, ptr: EnvoyPtr, id: MetricId, value: u64) {
    // SAFETY: `ptr` is the filter or configuration the callback expects (callers pass their
    // own); no labels (null, 0); plain values otherwise.
    let _ = unsafe { update(ptr, id.0, std::ptr::null(), 0, value) };
}

/// A metric id as Envoy returned it (counter and gauge ids are separate spaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricId(pub usize);

/// The Envoy filter configuration (main thread): metrics, callouts, the scheduler.
#[derive(Debug, Clone, Copy)]
pub struct ConfigHandle {
    ptr: EnvoyPtr,
}

// SAFETY: the pointer is only an address handed back to Envoy; the callbacks that take it are
// documented for use from the main thread (definition, callouts) or any thread (metrics), and
// the module calls each from where Envoy allows.
unsafe impl Send for ConfigHandle {}
// SAFETY: as above; the handle has no interior state.
unsafe impl Sync for ConfigHandle {}

/// Why a callout did not start (`envoy_dynamic_module_type_http_callout_init_result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalloutRefused(pub u32);

impl ConfigHandle {
    /// # Safety
    /// `ptr` must be the `filter_config_envoy_ptr` Envoy passed to `on_http_filter_config_new`,
    /// used only while that configuration lives.
    pub unsafe fn new(ptr: EnvoyPtr) -> ConfigHandle {
        ConfigHandle { ptr }
    }

    fn define(
        &self,
        name: &str,
        define: unsafe extern "C" fn(
            EnvoyPtr,
            ModuleBuffer,
            *const ModuleBuffer,
            usize,
            *mut usize,
        ) -> u32,
    ) -> Option<MetricId> {
        let mut id = 0usize;
        // SAFETY: the name outlives the call, no labels, `id` is a valid out-pointer.
        let result = unsafe {
            define(
                self.ptr,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null(),
                0,
                &mut id,
            )
        };
        (result == abi::METRICS_SUCCESS && id != 0).then_some(MetricId(id))
    }

    /// Only during `on_http_filter_config_new`: Envoy freezes metric creation afterwards.
    pub fn define_counter(&self, name: &str) -> Option<MetricId> {
        self.define(
            name,
            abi::envoy_dynamic_module_callback_http_filter_config_define_counter,
        )
    }

    pub fn define_gauge(&self, name: &str) -> Option<MetricId> {
        self.define(
            name,
            abi::envoy_dynamic_module_callback_http_filter_config_define_gauge,
        )
    }

    /// For work outside a request (a policy installed by the scheduler, a callout reply).
    pub fn increment_counter(&self, id: MetricId, delta: u64) {
        update_metric(
            abi::envoy_dynamic_module_callback_http_filter_config_increment_counter,
            self.ptr,
            id,
            delta,
        );
    }

    pub fn set_gauge(&self, id: MetricId, value: u64) {
        update_metric(
            abi::envoy_dynamic_module_callback_http_filter_config_set_gauge,
            self.ptr,
            id,
            value,
        );
    }

    /// Starts a one-shot HTTP call to `cluster` (main thread only). Headers must include
    /// `:method`, `:path` and `host`. The reply arrives in the configuration's
    /// `on_http_callout_done` with the returned id.
    pub fn http_callout(
        &self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, CalloutRefused> {
        let views: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(name, value)| ModuleHttpHeader::of(name, value))
            .collect();
        let mut id = 0u64;
        // SAFETY: every buffer outlives the call (Envoy copies them into its request message);
        // `id` is a valid out-pointer.
        let result = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.ptr,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                views.as_ptr(),
                views.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        };
        if result == abi::CALLOUT_INIT_SUCCESS {
            Ok(id)
        } else {
            Err(CalloutRefused(result))
        }
    }

    /// A scheduler that wakes this configuration on the main thread (create it on the main
    /// thread). `None` if Envoy could not create one.
    pub fn scheduler(&self) -> Option<Scheduler> {
        // SAFETY: called with this configuration's pointer, on the main thread.
        let ptr = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.ptr)
        };
        (!ptr.is_null()).then_some(Scheduler { ptr })
    }
}

/// Wakes a filter configuration on Envoy's main thread, from any thread. The ABI has no timer:
/// a periodic task (the policy poll) is a module thread that commits an event every period.
#[derive(Debug)]
pub struct Scheduler {
    ptr: *mut c_void,
}

// SAFETY: Envoy documents `..._scheduler_commit` as callable from any thread; the scheduler only
// holds a weak reference to the configuration, so a commit after it is gone is a no-op.
unsafe impl Send for Scheduler {}
// SAFETY: commit takes no lock on our side and Envoy's posts to its dispatcher thread-safely.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    /// Runs `on_scheduled(event_id)` on the main thread soon.
    pub fn commit(&self, event_id: u64) {
        // SAFETY: `self.ptr` came from `scheduler_new` and is deleted only in `drop`.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                self.ptr, event_id,
            )
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: created by `scheduler_new`, deleted exactly once, here.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.ptr) };
        self.ptr = null_mut();
    }
}

/// The reply to a configuration callout, copied out of Envoy's buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutResponse {
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

impl CalloutResponse {
    pub fn status(&self) -> Option<u16> {
        self.headers
            .iter()
            .find(|(name, _)| name == ":status")
            .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
    }

    /// Copies what Envoy passed to a `..._http_callout_done` hook.
    ///
    /// # Safety
    /// `headers` / `body_chunks` must be null or valid for `headers_size` / `body_chunks_size`
    /// entries, each pointing at bytes valid for the duration of the hook.
    pub unsafe fn copy_from(
        headers: *const EnvoyHttpHeader,
        headers_size: usize,
        body_chunks: *const EnvoyBuffer,
        body_chunks_size: usize,
    ) -> Result<CalloutResponse, MalformedHeaders> {
        let header_views: &[EnvoyHttpHeader] = if headers.is_null() || headers_size == 0 {
            &[]
        } else {
            // SAFETY: guaranteed by the caller.
            unsafe { std::slice::from_raw_parts(headers, headers_size) }
        };
        let chunk_views: &[EnvoyBuffer] = if body_chunks.is_null() || body_chunks_size == 0 {
            &[]
        } else {
            // SAFETY: guaranteed by the caller.
            unsafe { std::slice::from_raw_parts(body_chunks, body_chunks_size) }
        };
        let headers = header_views
            .iter()
            // SAFETY: each view points at bytes valid during the hook (caller).
            .map(|view| unsafe { copy_header(view) })
            .collect::<Result<Vec<Header>, MalformedHeaders>>()?;
        Ok(CalloutResponse {
            headers,
            // SAFETY: as above.
            body: unsafe { copy_chunks(chunk_views) },
        })
    }
}
