//! The `keyward` command line: global options, the command groups (one module each), and the
//! dispatch.

mod admin;
mod budget;
mod budget_admin;
mod dataplane;
mod key;
pub mod output;
mod price;
mod project;
pub mod provider_key;
mod render;
mod secret;
mod serve;
mod shared;
mod snapshot;
mod spend;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::error::Error;
use crate::store::{Location, Store};
use crate::units::{format_time, now};
use crate::{audit, explain};
use admin::{Admin, Local, Remote};
use output::{print_list_json, print_table};
pub use shared::load_public_keys;
use std::path::PathBuf;

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
    /// The store: a SQLite file path, or a PostgreSQL URL (postgres://user@host:5432/db). A
    /// store named here is created when missing; without --db (or KEYWARD_DB) it is
    /// ./keyward.db, which must exist (`keyward init` makes it).
    #[arg(long, global = true, env = "KEYWARD_DB", value_name = "PATH|URL")]
    db: Option<String>,
    /// Who the audit trail records for changes made with this command (local mode; remotely,
    /// the admin token's name).
    #[arg(long, global = true, env = "KEYWARD_ACTOR", default_value = "cli")]
    actor: String,
    /// Manage a running control plane through its admin API instead of a store (remote mode):
    /// its base URL, http:// or https://. Takes precedence over --db for the admin commands.
    #[arg(long, global = true, env = "KEYWARD_SERVER", value_name = "URL")]
    server: Option<String>,
    /// With --server: the file holding the admin token (`NAME:TOKEN` or `TOKEN`; mode 0600).
    #[arg(long, global = true, env = "KEYWARD_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// With an https:// --server (or --control-plane): the CA certificates (PEM) to verify it
    /// with, instead of the web PKI.
    #[arg(long, global = true, env = "KEYWARD_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
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
    /// Spend per project and per key, against caps and soft caps (from usage reports); with a
    /// subcommand: window history, audited adjustments and resets, temporary increases, alerts.
    #[command(args_conflicts_with_subcommands = true)]
    Spend {
        #[command(subcommand)]
        action: Option<budget::SpendAction>,
        /// Only this project and its keys.
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Plans: named bundles of budgets, quotas, a model allow-list and rate limits.
    #[command(subcommand)]
    Plan(budget::PlanCommand),
    /// A key's or project's own budgets per day, week or month, quotas, plan and UTC offset.
    #[command(subcommand)]
    Limits(budget::LimitsCommand),
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
    /// Credentials of the data planes: tokens that read snapshots and report usage.
    #[command(subcommand)]
    Dataplane(dataplane::DataplaneCommand),
    /// Customers' own model-provider keys (per project, or per org as the fallback), stored
    /// encrypted and injected by the filter on `provider` routes.
    #[command(subcommand)]
    ProviderKey(provider_key::ProviderKeyCommand),
    /// Create the store (./keyward.db, or --db) and bring its schema up to date.
    Init,
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

/// The store when no --db (or KEYWARD_DB) names one.
const DEFAULT_DB: &str = "./keyward.db";

/// Where the store is, and whether the operator named it (a named store may be created).
pub struct StoreArg {
    pub location: Location,
    explicit: bool,
}

impl StoreArg {
    fn new(db: Option<&str>) -> StoreArg {
        StoreArg {
            location: Location::parse(db.unwrap_or(DEFAULT_DB)),
            explicit: db.is_some(),
        }
    }

    /// Opens the store; an unnamed store that does not exist is an error, not a new empty file.
    pub fn open(&self) -> Result<Store, Error> {
        if let Location::Sqlite(path) = &self.location {
            if !self.explicit && !path.exists() {
                return Err(Error::invalid(
                    "no_store",
                    format!(
                        "no store at {}: create one with `keyward init`, name one with --db \
                         (or KEYWARD_DB), or manage a running control plane with --server",
                        path.display()
                    ),
                ));
            }
        }
        Store::open_location(&self.location)
    }
}

/// The store, with rotation deadlines that passed since the last run recorded.
fn open_store(db: &StoreArg) -> Result<Store, Error> {
    let mut store = db.open()?;
    store.revoke_rotated_keys(now())?;
    Ok(store)
}

/// How to reach a running control plane (remote mode).
struct RemoteArgs {
    server: Option<String>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

/// The target of the admin commands: the control plane of --server, or the store.
fn admin(remote: &RemoteArgs, actor: &str, db: &StoreArg) -> Result<Box<dyn Admin>, Error> {
    match &remote.server {
        Some(server) => {
            let token_file = remote.token_file.as_deref().ok_or_else(|| {
                Error::invalid(
                    "missing_token_file",
                    "--server needs --token-file (or KEYWARD_TOKEN_FILE): the admin token",
                )
            })?;
            Ok(Box::new(Remote::new(
                server,
                token_file,
                remote.ca_file.as_deref(),
            )?))
        }
        None => Ok(Box::new(Local {
            store: open_store(db)?,
            actor: actor.to_owned(),
        })),
    }
}

/// Commands that work on the store itself refuse --server.
fn local_only(remote: &RemoteArgs, command: &str) -> Result<(), Error> {
    match remote.server {
        Some(_) => Err(Error::invalid(
            "local_only",
            format!("`keyward {command}` works on a store (--db), not through --server"),
        )),
        None => Ok(()),
    }
}

/// `keyward init`: creates the store (or migrates an existing one).
fn init(db: &StoreArg) -> Result<ExitCode, Error> {
    let mut store = Store::open_location(&db.location)?;
    let version = store.policy_version()?;
    match &db.location {
        Location::Sqlite(path) => {
            println!("store ready: {} (policy version {version})", path.display())
        }
        Location::Postgres(_) => println!("store ready: PostgreSQL (policy version {version})"),
    }
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    if !valid_actor(&cli.actor) {
        return Err(Error::invalid(
            "invalid_actor",
            "--actor must be 1 to 64 characters of A-Z a-z 0-9 _ - . @",
        ));
    }
    let Cli {
        db,
        actor,
        server,
        token_file,
        ca_file,
        command,
    } = cli;
    let db = StoreArg::new(db.as_deref());
    let remote = RemoteArgs {
        server,
        token_file,
        ca_file,
    };
    match &command {
        Command::Project(_)
        | Command::Key(_)
        | Command::Price(_)
        | Command::Spend { .. }
        | Command::Plan(_)
        | Command::Limits(_)
        | Command::Usage(_)
        | Command::Dataplane(_)
        | Command::ProviderKey(_) => {}
        Command::Audit(args) if !args.policy.requested() => {}
        Command::Snapshot(_) => local_only(&remote, "snapshot")?,
        Command::Serve(_) => local_only(&remote, "serve")?,
        Command::Init => local_only(&remote, "init")?,
        Command::Audit(_) | Command::Explain(_) | Command::Render(_) | Command::Secret(_) => {}
    }
    let target = || admin(&remote, &actor, &db);
    match command {
        Command::Project(command) => project::run(target()?.as_mut(), command),
        Command::Key(command) => key::run(target()?.as_mut(), command),
        Command::Price(command) => price::run(target()?.as_mut(), command),
        Command::Spend {
            action: Some(action),
            ..
        } => budget::spend_action(target()?.as_mut(), action),
        Command::Spend {
            action: None,
            project,
            json,
        } => spend::spend(target()?.as_mut(), project.as_deref(), json),
        Command::Plan(command) => budget::plan(target()?.as_mut(), command),
        Command::Limits(command) => budget::limits(target()?.as_mut(), command),
        Command::Usage(command) => spend::usage(target()?.as_mut(), command),
        Command::Dataplane(command) => dataplane::run(target()?.as_mut(), command),
        Command::Audit(args) if args.policy.requested() => audit::run(&args.policy, args.json),
        Command::Explain(args) => explain::run(&args),
        Command::Audit(args) => audit_trail(target()?.as_mut(), args.limit, args.json),
        Command::Snapshot(command) => {
            snapshot::run(&db, &actor, remote.ca_file.as_deref(), command)
        }
        Command::Serve(args) => serve::run(&db, args),
        Command::Render(command) => render::run(command),
        Command::Secret(command) => secret::run(command),
        Command::ProviderKey(command) => provider_key::run(target()?.as_mut(), command),
        Command::Init => init(&db),
    }
}

/// `keyward audit`: the store's audit trail.
fn audit_trail(admin: &mut dyn Admin, limit: Option<u64>, json: bool) -> Result<ExitCode, Error> {
    let events = admin.audit_events(limit)?;
    if json {
        print_list_json(&events)?;
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
