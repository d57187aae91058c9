//! keyward as an Envoy dynamic module (issue #18): a native shared library that Envoy loads
//! through `envoy.filters.http.dynamic_modules` and calls through a C ABI, with no VM in between.
//! The same engine and filter logic as the Wasm build; one policy copy per Envoy process.
//!
//! Layers, each in its own module:
//! - `abi`: hand-written declarations of the ABI v0.2.0 callbacks and types (Envoy 1.40.0),
//!   each checked against the pinned binary (native/ABI.md);
//! - `host`: the safe layer: owned copies of headers and bodies, checked statuses, metrics,
//!   local replies, configuration callouts and the scheduler;
//! - `hooks` + `exports`: the `envoy_dynamic_module_on_*` symbols, every one behind the panic
//!   barrier of `guard`, failing closed;
//! - `glue`: keyward's filter configuration and streams: keyward-filter's request glue
//!   (`RequestFlow`) on that host, through `native_host` (its `Host` traits);
//! - `ledger`: spend counters and rate buckets in process memory (the engine's `Ledger`);
//! - `shared_data`: process-wide entries with Envoy's shared-data CAS rules (sync, usage);
//! - `process`: what every keyward configuration in the process shares;
//! - `sync` + `sync_host`: policy sync and usage reports through the configuration's callouts
//!   and scheduler, running keyward-filter's poller, follower and reporter.
//!
//! Linux only: on any other target (wasm32 included) the crate is empty.

#![cfg(target_os = "linux")]
// Every `unsafe` block says why it is sound (a SAFETY: comment), checked by clippy.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod abi;
#[cfg(feature = "abi-probe")]
mod abi_probe;
mod exports;
pub mod glue;
pub mod guard;
pub mod hooks;
pub mod host;
pub mod ledger;
pub mod native_host;
pub mod process;
pub mod shared_data;
pub mod sync;
pub mod sync_host;

#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod fake_envoy;
#[cfg(test)]
mod tests;
