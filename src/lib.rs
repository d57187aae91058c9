//! keyward as a proxy-wasm HTTP filter: thin contexts over `keyward-engine`.
//!
//! The request logic (`handler`) talks to the host only through the `Host` trait, so it is
//! tested natively with a fake host; `envoy_host` implements it on the raw proxy-wasm ABI and
//! the contexts below are compiled for wasm32 only.

pub mod handler;
pub mod host;
pub mod metrics;
pub mod shared_record;
pub mod sync_agent;
pub mod usage_activity;
pub mod usage_reporter;

#[cfg(test)]
mod test_support;

#[cfg(any(target_arch = "wasm32", test))]
mod header_map;

#[cfg(target_arch = "wasm32")]
mod contexts;
#[cfg(target_arch = "wasm32")]
mod envoy_host;
