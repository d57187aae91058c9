//! The event hooks Envoy calls (`envoy_dynamic_module_on_*`), exported with the exact C
//! signatures of ABI v0.2.0, each behind the panic barrier. They only translate pointers and
//! statuses; what a filter does is behind the `FilterConfig` / `HttpFilter` traits, implemented
//! for keyward in `glue`.
//!
//! Envoy refuses a module that misses any required hook, so every one is exported, including
//! those keyward has no use for (HTTP streams started by a filter, watermarks): they do nothing.

use std::ffi::c_char;

use crate::abi::{self, EnvoyBuffer, EnvoyHttpHeader, EnvoyPtr, ModulePtr};
use crate::guard::{guarded, install_panic_hook};
use crate::host::{log_error, CalloutResponse, ConfigHandle, FilterHandle};

/// What a request-side hook tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFlow {
    /// Pass the headers, body chunk or trailers on.
    Continue,
    /// Hold them (a local reply was sent, or the body is awaited).
    Stop,
    /// Body only: keep buffering until the end of the stream.
    StopAndBuffer,
}

/// The filter configuration: created once per Envoy filter config on the main thread, shared by
/// every worker (hence `Sync`), destroyed when Envoy drops the config.
pub trait FilterConfig: Sized + Send + Sync + 'static {
    type Filter: HttpFilter;

    /// `Err` (logged) makes Envoy reject the configuration.
    fn new(config: ConfigHandle, name: &str, bytes: &[u8]) -> Result<Self, String>;
    /// One per HTTP stream, on the worker thread that serves it.
    fn new_filter(&self) -> Self::Filter;
    /// A scheduler event, on the main thread.
    fn on_scheduled(&self, _config: ConfigHandle, _event_id: u64) {}
    /// The reply to a configuration callout (`None`: reset or too large), main thread.
    fn on_http_callout_done(
        &self,
        _config: ConfigHandle,
        _callout_id: u64,
        _response: Option<CalloutResponse>,
    ) {
    }
}

/// One HTTP stream.
pub trait HttpFilter: 'static {
    fn on_request_headers(&mut self, filter: &FilterHandle, end_of_stream: bool) -> RequestFlow;
    fn on_request_body(&mut self, filter: &FilterHandle, end_of_stream: bool) -> RequestFlow;
    fn on_request_trailers(&mut self, filter: &FilterHandle) -> RequestFlow;
    fn on_response_headers(&mut self, filter: &FilterHandle, end_of_stream: bool);
    fn on_response_body(&mut self, filter: &FilterHandle, end_of_stream: bool);
    /// The stream is over, however it ended (before access logs are written).
    fn on_stream_complete(&mut self, filter: &FilterHandle);
}

/// What Envoy holds for a stream: the filter, and whether a panic left it unusable.
struct Stream<F> {
    filter: F,
    poisoned: bool,
}

/// The reply of a request hook that panicked: nothing about the request is trusted any more.
const PANIC_REPLY: &[u8] = br#"{"error":{"message":"The gateway could not check this request. Try again.","type":"api_error","code":"internal_error"}}"#;

fn refuse_after_panic(filter: &FilterHandle) {
    filter.send_local_reply(
        500,
        &[
            ("content-type", b"application/json".as_slice()),
            ("cache-control", b"no-store".as_slice()),
            ("x-keyward-error", b"internal_error".as_slice()),
        ],
        PANIC_REPLY,
        "keyward_internal_error",
    );
}

/// # Safety
/// `config` must be null or a pointer returned by `config_new::<C>` and not yet destroyed.
unsafe fn config_ref<'a, C: FilterConfig>(config: ModulePtr) -> Option<&'a C> {
    // SAFETY: guaranteed by the caller; the configuration is only read (shared by workers).
    unsafe { config.cast::<C>().as_ref() }
}

/// # Safety
/// `stream` must be null or a pointer returned by `filter_new::<C>` and not yet destroyed, and
/// Envoy must not run two hooks of one stream at once (it runs them on the stream's worker).
unsafe fn stream_mut<'a, F>(stream: ModulePtr) -> Option<&'a mut Stream<F>> {
    // SAFETY: guaranteed by the caller.
    unsafe { stream.cast::<Stream<F>>().cast_mut().as_mut() }
}

pub fn program_init() -> *const c_char {
    guarded(
        "on_program_init",
        || {
            install_panic_hook();
            abi::ABI_VERSION.as_ptr().cast::<c_char>()
        },
        // Null makes Envoy unload the module: better than running it half-initialized.
        std::ptr::null,
    )
}

/// # Safety
/// `name` and `config` must be valid for their lengths during the call (Envoy's contract).
pub unsafe fn config_new<C: FilterConfig>(
    config_envoy: EnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ModulePtr {
    guarded(
        "on_http_filter_config_new",
        || {
            // SAFETY: Envoy passes views of its own strings, valid during this hook.
            let (name, bytes) = unsafe {
                (
                    envoy_slice(name.ptr, name.length),
                    envoy_slice(config.ptr, config.length),
                )
            };
            let name = String::from_utf8_lossy(name);
            // SAFETY: this is the config pointer of this very hook.
            let handle = unsafe { ConfigHandle::new(config_envoy) };
            match C::new(handle, &name, bytes) {
                Ok(config) => Box::into_raw(Box::new(config)).cast_const().cast(),
                Err(message) => {
                    log_error(&format!("keyward: {message}"));
                    std::ptr::null()
                }
            }
        },
        std::ptr::null,
    )
}

/// # Safety
/// `config` must come from `config_new::<C>`; Envoy destroys each exactly once.
pub unsafe fn config_destroy<C: FilterConfig>(config: ModulePtr) {
    guarded(
        "on_http_filter_config_destroy",
        || {
            if !config.is_null() {
                // SAFETY: created by `Box::into_raw` in `config_new`, freed once, here.
                drop(unsafe { Box::from_raw(config.cast::<C>().cast_mut()) });
            }
        },
        || {},
    )
}

/// # Safety
/// `ptr` must be null or valid for `length` bytes during the current hook.
unsafe fn envoy_slice<'a>(ptr: *const u8, length: usize) -> &'a [u8] {
    if ptr.is_null() || length == 0 {
        &[]
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(ptr, length) }
    }
}

/// # Safety
/// `config` must come from `config_new::<C>` and still be alive (Envoy keeps it alive while it
/// has streams).
pub unsafe fn filter_new<C: FilterConfig>(config: ModulePtr, _filter_envoy: EnvoyPtr) -> ModulePtr {
    guarded(
        "on_http_filter_new",
        || {
            // SAFETY: guaranteed by the caller.
            let Some(config) = (unsafe { config_ref::<C>(config) }) else {
                return std::ptr::null();
            };
            let stream = Stream {
                filter: config.new_filter(),
                poisoned: false,
            };
            Box::into_raw(Box::new(stream)).cast_const().cast()
        },
        // Null: Envoy closes the stream, which is the fail-closed answer.
        std::ptr::null,
    )
}

/// # Safety
/// `stream` must come from `filter_new::<C>`; Envoy destroys each exactly once.
pub unsafe fn filter_destroy<C: FilterConfig>(stream: ModulePtr) {
    guarded(
        "on_http_filter_destroy",
        || {
            if !stream.is_null() {
                // SAFETY: created by `Box::into_raw` in `filter_new`, freed once, here.
                drop(unsafe { Box::from_raw(stream.cast::<Stream<C::Filter>>().cast_mut()) });
            }
        },
        || {},
    )
}

/// Runs a request-side hook: a missing or poisoned stream, or a panic, refuses the request.
///
/// # Safety
/// `filter_envoy` must be this hook's filter pointer and `stream` come from `filter_new::<C>`.
unsafe fn request_hook<C: FilterConfig>(
    hook: &str,
    filter_envoy: EnvoyPtr,
    stream: ModulePtr,
    body: impl FnOnce(&mut C::Filter, &FilterHandle) -> RequestFlow,
) -> RequestFlow {
    // SAFETY: the pointer Envoy passed to this hook, used only during it.
    let filter = unsafe { FilterHandle::new(filter_envoy) };
    // SAFETY: guaranteed by the caller.
    let stream = unsafe { stream_mut::<C::Filter>(stream) };
    let Some(stream) = stream.filter(|stream| !stream.poisoned) else {
        refuse_after_panic(&filter);
        return RequestFlow::Stop;
    };
    match guarded(hook, || Some(body(&mut stream.filter, &filter)), || None) {
        Some(flow) => flow,
        None => {
            stream.poisoned = true;
            refuse_after_panic(&filter);
            RequestFlow::Stop
        }
    }
}

/// Runs a response-side or end-of-stream hook. The request was already decided: a panic here
/// only marks the stream poisoned (later hooks skip it) and lets the response through.
///
/// # Safety
/// As `request_hook`.
unsafe fn passive_hook<C: FilterConfig>(
    hook: &str,
    filter_envoy: EnvoyPtr,
    stream: ModulePtr,
    body: impl FnOnce(&mut C::Filter, &FilterHandle),
) {
    // SAFETY: the pointer Envoy passed to this hook, used only during it.
    let filter = unsafe { FilterHandle::new(filter_envoy) };
    // SAFETY: guaranteed by the caller.
    let Some(stream) = (unsafe { stream_mut::<C::Filter>(stream) }) else {
        return;
    };
    if stream.poisoned {
        return;
    }
    let completed = guarded(
        hook,
        || {
            body(&mut stream.filter, &filter);
            true
        },
        || false,
    );
    if !completed {
        stream.poisoned = true;
    }
}

fn headers_status(flow: RequestFlow) -> u32 {
    match flow {
        RequestFlow::Continue => abi::HEADERS_CONTINUE,
        RequestFlow::Stop | RequestFlow::StopAndBuffer => abi::HEADERS_STOP_ITERATION,
    }
}

fn body_status(flow: RequestFlow) -> u32 {
    match flow {
        RequestFlow::Continue => abi::BODY_CONTINUE,
        RequestFlow::StopAndBuffer => abi::BODY_STOP_AND_BUFFER,
        RequestFlow::Stop => abi::BODY_STOP_NO_BUFFER,
    }
}

fn trailers_status(flow: RequestFlow) -> u32 {
    match flow {
        RequestFlow::Continue => abi::TRAILERS_CONTINUE,
        // FilterTrailersStatus::StopIteration
        RequestFlow::Stop | RequestFlow::StopAndBuffer => 1,
    }
}

/// # Safety
/// Envoy's pointers for this stream (see `request_hook`).
pub unsafe fn request_headers<C: FilterConfig>(
    filter_envoy: EnvoyPtr,
    stream: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: forwarded from Envoy's hook.
    headers_status(unsafe {
        request_hook::<C>(
            "on_http_filter_request_headers",
            filter_envoy,
            stream,
            |f, h| f.on_request_headers(h, end_of_stream),
        )
    })
}

/// # Safety
/// As `request_headers`.
pub unsafe fn request_body<C: FilterConfig>(
    filter_envoy: EnvoyPtr,
    stream: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: forwarded from Envoy's hook.
    body_status(unsafe {
        request_hook::<C>(
            "on_http_filter_request_body",
            filter_envoy,
            stream,
            |f, h| f.on_request_body(h, end_of_stream),
        )
    })
}

/// # Safety
/// As `request_headers`.
pub unsafe fn request_trailers<C: FilterConfig>(filter_envoy: EnvoyPtr, stream: ModulePtr) -> u32 {
    // SAFETY: forwarded from Envoy's hook.
    trailers_status(unsafe {
        request_hook::<C>(
            "on_http_filter_request_trailers",
            filter_envoy,
            stream,
            |f, h| f.on_request_trailers(h),
        )
    })
}

/// # Safety
/// As `request_headers`.
pub unsafe fn response_headers<C: FilterConfig>(
    filter_envoy: EnvoyPtr,
    stream: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: forwarded from Envoy's hook.
    unsafe {
        passive_hook::<C>(
            "on_http_filter_response_headers",
            filter_envoy,
            stream,
            |f, h| f.on_response_headers(h, end_of_stream),
        )
    };
    abi::HEADERS_CONTINUE
}

/// # Safety
/// As `request_headers`.
pub unsafe fn response_body<C: FilterConfig>(
    filter_envoy: EnvoyPtr,
    stream: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: forwarded from Envoy's hook.
    unsafe {
        passive_hook::<C>(
            "on_http_filter_response_body",
            filter_envoy,
            stream,
            |f, h| f.on_response_body(h, end_of_stream),
        )
    };
    abi::BODY_CONTINUE
}

/// # Safety
/// As `request_headers`.
pub unsafe fn stream_complete<C: FilterConfig>(filter_envoy: EnvoyPtr, stream: ModulePtr) {
    // SAFETY: forwarded from Envoy's hook.
    unsafe {
        passive_hook::<C>(
            "on_http_filter_stream_complete",
            filter_envoy,
            stream,
            |f, h| f.on_stream_complete(h),
        )
    }
}

/// # Safety
/// `config` from `config_new::<C>`; `config_envoy` its Envoy pointer.
pub unsafe fn config_scheduled<C: FilterConfig>(
    config_envoy: EnvoyPtr,
    config: ModulePtr,
    event_id: u64,
) {
    guarded(
        "on_http_filter_config_scheduled",
        || {
            // SAFETY: guaranteed by the caller.
            if let Some(config) = unsafe { config_ref::<C>(config) } {
                // SAFETY: the pointer Envoy passed with this hook.
                config.on_scheduled(unsafe { ConfigHandle::new(config_envoy) }, event_id);
            }
        },
        || {},
    )
}

/// # Safety
/// As `config_scheduled`; `headers` / `body_chunks` valid for their sizes during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn config_http_callout_done<C: FilterConfig>(
    config_envoy: EnvoyPtr,
    config: ModulePtr,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    guarded(
        "on_http_filter_config_http_callout_done",
        || {
            // SAFETY: guaranteed by the caller.
            let Some(config) = (unsafe { config_ref::<C>(config) }) else {
                return;
            };
            let response = if result == abi::CALLOUT_SUCCESS {
                // SAFETY: Envoy's buffers for this hook (caller).
                unsafe {
                    CalloutResponse::copy_from(headers, headers_size, body_chunks, body_chunks_size)
                }
                .ok()
            } else {
                None
            };
            // SAFETY: the pointer Envoy passed with this hook.
            config.on_http_callout_done(
                unsafe { ConfigHandle::new(config_envoy) },
                callout_id,
                response,
            );
        },
        || {},
    )
}
