//! No-op proxy-wasm HTTP filter: every request and response callback returns `Continue`
//! without touching the host. Envoy still crosses into V8 for each callback, which is the
//! cost every Rust Wasm filter pays before doing any work.
//!
//! Built with the `host-calls` feature it makes, per request, exactly the host calls keyward's
//! accept path makes with its default settings (read the request header map, remove
//! `authorization`, write the four identity headers, increment one counter) and decides nothing:
//! the floor for any Wasm filter doing this job, whatever its logic.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot::default()) });
}}

#[derive(Default)]
struct NoopRoot {
    /// The counter the `host-calls` build increments once per request.
    #[cfg_attr(not(feature = "host-calls"), allow(dead_code))]
    counter: Option<u32>,
}

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        #[cfg(feature = "host-calls")]
        {
            use proxy_wasm::types::MetricType;
            self.counter =
                proxy_wasm::hostcalls::define_metric(MetricType::Counter, "bench.allowed").ok();
        }
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop {
            counter: self.counter,
        }))
    }
}

struct Noop {
    #[cfg_attr(not(feature = "host-calls"), allow(dead_code))]
    counter: Option<u32>,
}

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        #[cfg(feature = "host-calls")]
        self.same_host_calls_as_keyward();
        Action::Continue
    }
}

#[cfg(feature = "host-calls")]
impl Noop {
    fn same_host_calls_as_keyward(&self) {
        // Values of keyward's length; what they are does not change what Envoy does.
        let headers = self.get_http_request_headers();
        let project = if headers.is_empty() { "" } else { "proj_a" };
        self.set_http_request_header("authorization", None);
        self.set_http_request_header("x-keyward-key-id", Some("k0000000"));
        self.set_http_request_header("x-keyward-org", Some("org_1"));
        self.set_http_request_header("x-keyward-environment", Some("live"));
        self.set_http_request_header("x-keyward-project", Some(project));
        if let Some(counter) = self.counter {
            let _ = proxy_wasm::hostcalls::increment_metric(counter, 1);
        }
    }
}
