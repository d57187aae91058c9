//! keyward's policy engine: everything that decides a request, with no proxy-wasm types, so it
//! is tested natively and, compiled to wasm32, under node. A host (the proxy-wasm filter today)
//! reads facts, calls [`gate::Gate`], and applies the [`effects::Effects`] it returns.

pub mod admission;
pub mod budget;
pub mod budget_admission;
mod budget_json;
pub mod calendar;
pub mod canonical;
pub mod chunked;
pub mod config;
pub mod credential;
pub mod decision;
pub mod denial;
pub mod effects;
pub mod explain;
pub mod field_error;
/// Entry points for fuzzing and property tests; never called by the filter (LTO drops them).
#[doc(hidden)]
pub mod fuzzing;
pub mod gate;
pub mod hash;
pub mod key_format;
pub mod ledger;
pub mod limit_headers;
pub mod log_line;
pub mod metering;
pub mod pricing;
pub mod provider;
pub mod provider_keys;
pub mod rate_limit;
pub mod request;
pub mod request_body;
pub mod route;
pub mod settlement;
pub mod signature;
pub mod signed_snapshot;
pub mod snapshot;
pub mod sync;
pub mod trace;
pub mod usage;
pub mod usage_report;
pub mod watch;
pub mod window_admission;
pub mod window_counter;
