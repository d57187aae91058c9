//! The proxy-wasm contexts: a root context per VM that compiles the configuration once, and a
//! request context per HTTP stream that hands its headers to `handler`.

use std::rc::Rc;

use keyward_engine::config::PluginConfig;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel as SdkLogLevel};

use crate::envoy_host::EnvoyHost;
use crate::handler::{on_request_headers, FilterState, Verdict};
use crate::host::{Host, LogLevel};
use crate::metrics::Metrics;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(SdkLogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(KeywardRoot::default()) });
}}

#[derive(Default)]
struct KeywardRoot {
    state: Option<Rc<FilterState>>,
    metrics: Option<Rc<Metrics>>,
}

impl KeywardRoot {
    fn configure(&mut self) -> Result<(), String> {
        let host = EnvoyHost;
        let bytes = host
            .plugin_configuration()
            .map_err(|e| {
                format!(
                    "cannot read the plugin configuration (host status {})",
                    e.status
                )
            })?
            .unwrap_or_else(|| b"{}".to_vec());
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}".to_vec()
        } else {
            bytes
        };
        let config =
            PluginConfig::from_json(&bytes).map_err(|e| format!("invalid configuration: {e}"))?;
        let metrics = match &self.metrics {
            Some(metrics) => Rc::clone(metrics),
            None => {
                let defined = Metrics::define(|kind, name| host.define_metric(kind, name))
                    .map_err(|e| format!("cannot define metrics (host status {})", e.status))?;
                let defined = Rc::new(defined);
                self.metrics = Some(Rc::clone(&defined));
                defined
            }
        };
        let policy = config.policy.map(Rc::new);
        match &policy {
            Some(policy) => {
                host.record_metric(metrics.policy_version, policy.version);
                host.log(
                    LogLevel::Info,
                    &format!(
                        "keyward: configured; policy version {} with {} keys and {} projects",
                        policy.version,
                        policy.keys().len(),
                        policy.projects().len()
                    ),
                );
            }
            None => host.log(
                LogLevel::Warn,
                "keyward: configured without a policy; requests are refused with policy_unavailable unless fail_open",
            ),
        }
        self.state = Some(Rc::new(FilterState {
            settings: Rc::new(config.settings),
            policy,
            metrics,
        }));
        Ok(())
    }
}

impl Context for KeywardRoot {}

impl RootContext for KeywardRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match self.configure() {
            Ok(()) => true,
            Err(message) => {
                // Envoy rejects the configuration; the previous one (if any) stays in force.
                EnvoyHost.log(LogLevel::Error, &format!("keyward: {message}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a compiled configuration there is no filter to build; on_configure failed and
        // Envoy did not accept the plugin, so this is not reached in practice.
        let state = Rc::clone(self.state.as_ref()?);
        Some(Box::new(KeywardRequest { state }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct KeywardRequest {
    state: Rc<FilterState>,
}

impl Context for KeywardRequest {}

impl HttpContext for KeywardRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match on_request_headers(&EnvoyHost, &self.state) {
            Verdict::Continue => Action::Continue,
            Verdict::Stop => Action::Pause,
        }
    }
}
