//! keyward's policy engine: everything that decides a request, with no proxy-wasm types, so it
//! is tested natively and, compiled to wasm32, under node.

pub mod chunked;
pub mod config;
pub mod credential;
pub mod decision;
pub mod denial;
pub mod field_error;
/// Entry points for fuzzing and property tests; never called by the filter (LTO drops them).
#[doc(hidden)]
pub mod fuzzing;
pub mod hash;
pub mod key_format;
pub mod log_line;
pub mod metering;
pub mod pricing;
pub mod rate_limit;
pub mod request;
pub mod request_body;
pub mod route;
pub mod signed_snapshot;
pub mod snapshot;
pub mod sync;
pub mod usage;
pub mod usage_report;
