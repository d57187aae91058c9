//! The `keyward` command line: global options, the command groups (one module each), and the
//! dispatch.

mod key;
pub mod output;
mod price;
mod project;
mod render;
mod secret;
mod serve;
mod shared;
mod snapshot;
mod spend;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::error::Error;
use crate::store::Store;
use crate::units::{format_time, now};
use crate::{audit, explain};
use output::{print_json, print_table};

/// Who a change is recorded as: 1 to 64 characters of `A-Z a-z 0-9 _ - . @`.
pub fn valid_actor(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
}

#[derive(Parser)]
#[command(
    name = "keyward",
    version,
    about = "keyward control plane: API keys (stored as SHA-256 hashes), projects, audit, signed policy snapshots",
    propagate_version = true
)]
struct Cli {
    /// The SQLite store; created on first use.
    #[arg(
        long,
        global = true,
        env = "KEYWARD_DB",
        default_value = "./keyward.db"
    )]
    db: PathBuf,
    /// Who the audit trail records for changes made with this command.
    #[arg(long, global = true, env = "KEYWARD_ACTOR", default_value = "cli")]
    actor: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, archive and list projects.
    #[command(subcommand)]
    Project(project::ProjectCommand),
    /// Create, list, revoke, pause, resume, change and rotate keys.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Set, list and remove model prices (USD per 1M tokens): what the filter meters spend with.
    #[command(subcommand)]
    Price(price::PriceCommand),
    /// Spend per project and per key, against caps and soft caps (from usage reports).
    Spend {
        /// Only this project and its keys.
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The usage reports the data plane sent.
    #[command(subcommand)]
    Usage(spend::UsageCommand),
    /// Show the audit trail: every change, who made it, when. With --config (and --snapshot or
    /// --control-plane): audit a policy, what every key can do on every route, and its risks.
    Audit(AuditArgs),
    /// The decision the filter would make for one key on one route, step by step.
    Explain(explain::ExplainArgs),
    /// Build or verify signed policy snapshots.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Run the admin API and the snapshot endpoint.
    Serve(serve::ServeArgs),
    /// Print ready-to-use configurations.
    #[command(subcommand)]
    Render(render::RenderCommand),
    /// Generate the control plane's own secrets into new files (mode 0600).
    #[command(subcommand)]
    Secret(secret::SecretCommand),
}

#[derive(Args)]
struct AuditArgs {
    /// Only the last N events.
    #[arg(long, conflicts_with = "config")]
    limit: Option<u64>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    policy: audit::PolicyAuditArgs,
}

/// Parses the command line and runs it; errors go to stderr with exit status 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("keyward: error: {}", error.message);
            ExitCode::FAILURE
        }
    }
}

/// The store, with rotation deadlines that passed since the last run recorded.
fn open_store(db: &Path) -> Result<Store, Error> {
    let mut store = Store::open(db)?;
    store.revoke_rotated_keys(now())?;
    Ok(store)
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    if !valid_actor(&cli.actor) {
        return Err(Error::invalid(
            "invalid_actor",
            "--actor must be 1 to 64 characters of A-Z a-z 0-9 _ - . @",
        ));
    }
    let actor = cli.actor.as_str();
    match cli.command {
        Command::Project(command) => project::run(&mut open_store(&cli.db)?, actor, command),
        Command::Key(command) => key::run(&mut open_store(&cli.db)?, actor, command),
        Command::Price(command) => price::run(&mut open_store(&cli.db)?, actor, command),
        Command::Spend { project, json } => {
            spend::spend(&mut open_store(&cli.db)?, project.as_deref(), json)
        }
        Command::Usage(command) => spend::usage(&mut open_store(&cli.db)?, command),
        Command::Audit(args) if args.policy.requested() => audit::run(&args.policy, args.json),
        Command::Explain(args) => explain::run(&args),
        Command::Audit(args) => audit_trail(&mut open_store(&cli.db)?, args.limit, args.json),
        Command::Snapshot(command) => snapshot::run(&cli.db, actor, command),
        Command::Serve(args) => serve::run(&cli.db, args),
        Command::Render(command) => render::run(command),
        Command::Secret(command) => secret::run(command),
    }
}

/// `keyward audit`: the store's audit trail.
fn audit_trail(store: &mut Store, limit: Option<u64>, json: bool) -> Result<ExitCode, Error> {
    let events = store.audit_events(limit)?;
    if json {
        print_json(&events)?;
    } else {
        let rows = events
            .iter()
            .map(|event| {
                vec![
                    format_time(event.at),
                    event.actor.clone(),
                    event.action.clone(),
                    event.target.clone(),
                    event.policy_version.to_string(),
                    event.details.to_string(),
                ]
            })
            .collect();
        print_table(
            &["AT", "ACTOR", "ACTION", "TARGET", "VERSION", "DETAILS"],
            rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn actors_are_checked() {
        assert!(valid_actor("cli"));
        assert!(valid_actor("alice@example.com"));
        assert!(!valid_actor(""));
        assert!(!valid_actor("two words"));
        assert!(!valid_actor(&"x".repeat(65)));
    }
}
