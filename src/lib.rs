//! keyward as a proxy-wasm HTTP filter: thin contexts over `keyward-engine`.
//!
//! Public: the host-agnostic glue another host (the Envoy dynamic module in `native/`) reuses:
//! the request glue (`handler`), the host traits (`host`), the metrics, policy sync (`sync`:
//! the poller and the follower), and the usage activity and reporter. The rest is private so rustc reports what nothing uses. Modules only the Wasm
//! contexts use are compiled for wasm32 (and the tests) only: `cargo clippy --target
//! wasm32-unknown-unknown` is the build that sees whether they are used.

pub mod fleet_key;
pub mod handler;
pub mod host;
pub mod metrics;
pub mod sync;
pub mod usage_activity;
pub mod usage_reporter;
pub mod window_reports;

mod shared_record;

#[cfg(any(target_arch = "wasm32", test))]
mod header_map;
#[cfg(any(target_arch = "wasm32", test))]
mod panic_log;

#[cfg(test)]
mod test_support;

#[cfg(target_arch = "wasm32")]
mod contexts;
#[cfg(target_arch = "wasm32")]
mod envoy_host;
