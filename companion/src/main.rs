//! `keyward`: keyward's control plane. Keys (hashed) and projects in a SQLite file, an audited
//! key lifecycle, signed policy snapshots for the filter's sync, the admin API, and a renderer
//! for a ready Envoy configuration. Native only: never built for wasm32.

mod api;
mod audit;
mod budget_api;
mod cli;
mod client;
mod error;
mod explain;
mod keygen;
mod last_good;
mod presets;
mod price_catalog;
mod provider_secrets;
mod publish;
mod render;
mod secrets;
mod server;
mod store;
mod synthetic;
mod units;
mod upstream_tls;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
