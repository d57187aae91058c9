//! `keyward audit --config …`: what every key of a policy snapshot can do on every configured
//! route, and the risky settings a security team should look at before a rollout.
//!
//! The per-route answer is the engine's own request core (`keyward_engine::explain`, through
//! `crate::synthetic`): for each key, a one-key copy of the snapshot whose hash belongs to a
//! synthetic credential of a configured key format, and a representative request. Nothing
//! printed here is a hash or a secret.

mod artifact;
mod decision;
mod envoy;
mod prices;
mod print;
mod report;
mod source;

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::error::Error;
pub use decision::routes;
use print::print_report_table;
pub use report::{build_report, Report};
pub use source::{load, Loaded, Signature, SnapshotSource};

/// The name the report gives the route used when no configured route matches.
pub const FALLBACK_ROUTE: &str = "(fallback)";

/// `--unused-days` when not given.
pub const DEFAULT_UNUSED_DAYS: u64 = 30;

const SECONDS_PER_DAY: u64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

/// The policy-audit options of `keyward audit`.
#[derive(Args, Debug, Clone)]
pub struct PolicyAuditArgs {
    #[command(flatten)]
    pub source: SnapshotSource,
    /// Exit 2 when a finding is at or above this severity.
    #[arg(long, value_enum, default_value_t = Severity::High)]
    pub fail_on: Severity,
    /// Flag active keys unused for this many days before the snapshot was issued (their last
    /// reported use, or their creation when never used); 0 turns the check off.
    #[arg(long, default_value_t = DEFAULT_UNUSED_DAYS)]
    pub unused_days: u64,
    /// Also audit an Envoy bootstrap (JSON, as `keyward render envoy` writes it): TLS that does
    /// not verify its peer, plain HTTP across a network, shared signing secrets. Alone, only
    /// that.
    #[arg(long, value_name = "FILE")]
    pub envoy_config: Option<std::path::PathBuf>,
}

impl PolicyAuditArgs {
    /// Whether the command line asked for a policy audit rather than the audit trail.
    pub fn requested(&self) -> bool {
        self.source.config.is_some()
            || self.source.snapshot.is_some()
            || self.source.control_plane.is_some()
            || self.envoy_config.is_some()
    }
}

/// `keyward audit --config …`: exit 2 when a finding reaches `--fail-on`.
pub fn run(args: &PolicyAuditArgs, json: bool) -> Result<ExitCode, Error> {
    let envoy = args
        .envoy_config
        .as_deref()
        .map(|path| envoy::run(path, args.fail_on, json))
        .transpose()?;
    let policy_requested = args.source.config.is_some()
        || args.source.snapshot.is_some()
        || args.source.control_plane.is_some();
    match envoy {
        Some(code) if !policy_requested => return Ok(code),
        Some(code) if code != ExitCode::SUCCESS => {
            run_policy(args, json)?;
            return Ok(code);
        }
        _ => {}
    }
    run_policy(args, json)
}

fn run_policy(args: &PolicyAuditArgs, json: bool) -> Result<ExitCode, Error> {
    let loaded = load(&args.source)?;
    let report = build_report(&loaded, args.unused_days);
    if json {
        println!("{}", serde_json::to_string_pretty(&report.json)?);
    } else {
        print_report_table(&report);
    }
    let failing = report
        .findings
        .iter()
        .filter(|finding| finding.severity >= args.fail_on)
        .count();
    if failing > 0 {
        eprintln!(
            "keyward: {failing} finding(s) at or above {}",
            args.fail_on.name()
        );
        Ok(ExitCode::from(2))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}
