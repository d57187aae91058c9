//! `keyward`: keyward's control plane. Keys (hashed) and projects in a SQLite file, an audited
//! key lifecycle, signed policy snapshots for the filter's sync, the admin API, and a renderer
//! for a ready Envoy configuration. Native only: never built for wasm32.

mod audit;
mod error;
mod explain;
mod keygen;
mod publish;
mod render;
mod secrets;
mod server;
mod store;
mod units;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand};
use keyward_engine::signed_snapshot::verify_snapshot;
use keyward_engine::snapshot::KeyStatus;

use crate::error::Error;
use crate::keygen::{Environment, Format};
use crate::store::{
    KeySettings, KeyUpdate, KeyView, NewKey, Owner, PriceView, ProjectUpdate, ProjectView,
    StatusChange, Store,
};
use crate::units::{format_time, format_usd, now, parse_duration_seconds, parse_usd};
use keyward_engine::snapshot::{PriceRecord, RateLimits};

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
    Project(ProjectCommand),
    /// Create, list, revoke, pause, resume, change and rotate keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Set, list and remove model prices (USD per 1M tokens): what the filter meters spend with.
    #[command(subcommand)]
    Price(PriceCommand),
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
    Usage(UsageCommand),
    /// Show the audit trail: every change, who made it, when. With --config (and --snapshot or
    /// --control-plane): audit a policy, what every key can do on every route, and its risks.
    Audit(AuditArgs),
    /// The decision the filter would make for one key on one route, step by step.
    Explain(explain::ExplainArgs),
    /// Build or verify signed policy snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Run the admin API and the snapshot endpoint.
    Serve(ServeArgs),
    /// Print ready-to-use configurations.
    #[command(subcommand)]
    Render(RenderCommand),
    /// Generate the control plane's own secrets into new files (mode 0600).
    #[command(subcommand)]
    Secret(SecretCommand),
}

#[derive(Subcommand)]
enum ProjectCommand {
    /// Create a project in an organization.
    Create {
        id: String,
        #[arg(long)]
        org: String,
        /// Spend cap in USD, e.g. 250 or 12.50.
        #[arg(long)]
        spend_cap_usd: Option<String>,
        /// Soft cap in USD, below the cap: past it the filter adds a warning header.
        #[arg(long, visible_alias = "soft-cap")]
        spend_soft_cap_usd: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Change a project's spend cap or soft cap.
    Set {
        id: String,
        /// New spend cap in USD.
        #[arg(long, conflicts_with = "no_spend_cap")]
        spend_cap_usd: Option<String>,
        /// Remove the spend cap.
        #[arg(long)]
        no_spend_cap: bool,
        /// New soft cap in USD.
        #[arg(long, visible_alias = "soft-cap", conflicts_with = "no_soft_cap")]
        spend_soft_cap_usd: Option<String>,
        /// Remove the soft cap.
        #[arg(long)]
        no_soft_cap: bool,
        #[arg(long)]
        json: bool,
    },
    /// Archive a project: its keys stop working (403 project_archived) and it gets no new keys.
    Archive {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Show one project, with its spend and caps.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List projects.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PriceCommand {
    /// Set (create or replace) the price of a model, or of a model prefix written `gpt-4o*`.
    /// Amounts are USD per one million tokens, exact to 6 decimals (0.075 = 75000 micro-USD).
    Set {
        #[arg(long)]
        model: String,
        /// Input tokens (not cached).
        #[arg(long, value_name = "USD")]
        input: String,
        #[arg(long, value_name = "USD")]
        output: String,
        /// Cached input tokens read; default: the input price.
        #[arg(long, value_name = "USD")]
        cached_input: Option<String>,
        /// Input tokens written to a cache; default: the input price.
        #[arg(long, value_name = "USD")]
        cache_write: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the prices.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a model's price.
    Remove {
        #[arg(long)]
        model: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UsageCommand {
    /// The most recent usage batches applied, newest first.
    Batches {
        #[arg(long, default_value_t = 20)]
        limit: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
#[group(multiple = false)]
struct ExpiryArgs {
    /// Expiry as Unix seconds.
    #[arg(long)]
    expires_at: Option<u64>,
    /// Expiry as a duration from now: 30d, 12h, 90m.
    #[arg(long)]
    expires_in: Option<String>,
}

impl ExpiryArgs {
    fn resolve(&self) -> Result<Option<u64>, Error> {
        match (&self.expires_at, &self.expires_in) {
            (Some(at), _) => Ok(Some(*at)),
            (None, Some(text)) => Ok(Some(now().saturating_add(parse_duration_seconds(text)?))),
            (None, None) => Ok(None),
        }
    }
}

#[derive(Args)]
#[command(group(ArgGroup::new("owner").required(true).args(["project", "org"])))]
struct KeyCreateArgs {
    /// The project the key acts in.
    #[arg(long)]
    project: Option<String>,
    /// The organization the key acts for (any of its active projects).
    #[arg(long)]
    org: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Ak)]
    format: Format,
    #[arg(long, value_enum, default_value_t = Environment::Live)]
    environment: Environment,
    /// Scopes, comma-separated (`*` grants every scope).
    #[arg(long, value_delimiter = ',')]
    scopes: Vec<String>,
    /// Model allow-list, comma-separated; `gpt-4.1*` is a prefix. Absent: every model.
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    #[command(flatten)]
    expiry: ExpiryArgs,
    /// Spend cap in USD, e.g. 25 or 12.50.
    #[arg(long)]
    spend_cap_usd: Option<String>,
    /// Soft cap in USD, below the cap: past it the filter adds a warning header.
    #[arg(long, visible_alias = "soft-cap")]
    spend_soft_cap_usd: Option<String>,
    /// Requests per minute, per Envoy instance.
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens per minute, per Envoy instance.
    #[arg(long)]
    tpm: Option<u64>,
    /// A label for Envoy's logs (goes into snapshots).
    #[arg(long)]
    label: Option<String>,
    /// A note for people (stays in the control plane).
    #[arg(long)]
    note: Option<String>,
    /// Print the new key and its settings as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct KeySetArgs {
    id: String,
    /// New scopes, comma-separated; "" for none.
    #[arg(long, value_delimiter = ',')]
    scopes: Option<Vec<String>>,
    /// New model allow-list, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "all_models")]
    models: Option<Vec<String>>,
    /// Drop the model allow-list: every model.
    #[arg(long)]
    all_models: bool,
    /// New expiry as Unix seconds.
    #[arg(long, conflicts_with_all = ["expires_in", "no_expiry"])]
    expires_at: Option<u64>,
    /// New expiry as a duration from now.
    #[arg(long, conflicts_with = "no_expiry")]
    expires_in: Option<String>,
    /// Remove the expiry.
    #[arg(long)]
    no_expiry: bool,
    /// New spend cap in USD.
    #[arg(long, conflicts_with = "no_spend_cap")]
    spend_cap_usd: Option<String>,
    /// Remove the spend cap.
    #[arg(long)]
    no_spend_cap: bool,
    /// New soft cap in USD.
    #[arg(long, visible_alias = "soft-cap", conflicts_with = "no_soft_cap")]
    spend_soft_cap_usd: Option<String>,
    /// Remove the soft cap.
    #[arg(long)]
    no_soft_cap: bool,
    /// New requests-per-minute limit.
    #[arg(long, conflicts_with = "no_rpm")]
    rpm: Option<u32>,
    /// Remove the requests-per-minute limit.
    #[arg(long)]
    no_rpm: bool,
    /// New tokens-per-minute limit.
    #[arg(long, conflicts_with = "no_tpm")]
    tpm: Option<u64>,
    /// Remove the tokens-per-minute limit.
    #[arg(long)]
    no_tpm: bool,
    #[arg(long)]
    label: Option<String>,
    #[arg(long)]
    note: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key; its plaintext is printed this once and only its hash is stored.
    Create(KeyCreateArgs),
    /// List keys (never a secret or a hash).
    List {
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key for good (401 key_revoked).
    Revoke {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Pause a key (403 key_paused) until resumed.
    Pause {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Resume a paused key.
    Resume {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a key's scopes, models, expiry, caps, rate limits, label or note.
    Set(KeySetArgs),
    /// Create a new key with the same settings; the old one works until the grace ends.
    Rotate {
        id: String,
        /// How long the old key keeps working: 24h, 30m, 0s (revoke at once).
        #[arg(long, default_value = server::DEFAULT_GRACE)]
        grace: String,
        #[arg(long)]
        json: bool,
    },
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

#[derive(Args)]
struct SigningKeyArgs {
    /// The signing key's id (the filter's `signing_keys[].id`).
    #[arg(long, env = "KEYWARD_SIGNING_KEY_ID")]
    signing_key_id: String,
    /// File holding the base64 signing secret (at least 32 bytes; `keyward secret signing-key`).
    #[arg(long, env = "KEYWARD_SIGNING_KEY_FILE")]
    signing_key_file: PathBuf,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Build a signed snapshot of the whole policy.
    Build {
        #[command(flatten)]
        signing: SigningKeyArgs,
        /// Write it here (atomically) instead of to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Import the projects and keys of a plain snapshot file (hashes only) into the store:
    /// for moving existing hashed keys in.
    Import { file: PathBuf },
    /// Check a signed snapshot: exit 0 and print what it holds, or exit 1 with the reason.
    Verify {
        file: PathBuf,
        #[command(flatten)]
        signing: SigningKeyArgs,
    },
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// Allow a listen address other than loopback (put TLS and a firewall in front).
    #[arg(long)]
    allow_non_loopback: bool,
    /// File of admin tokens: `NAME:TOKEN` a line (`keyward secret admin-token`).
    #[arg(long, env = "KEYWARD_ADMIN_TOKEN_FILE")]
    admin_token_file: PathBuf,
    #[command(flatten)]
    signing: SigningKeyArgs,
    /// Re-issue an unchanged snapshot (new issued_at) this often, for filters with a max age.
    #[arg(long, default_value_t = 300)]
    reissue_seconds: u64,
    /// Fold reported spend into a new snapshot version at most this often (milliseconds; 0:
    /// with every usage batch). Every version makes every Envoy recompile its policy: with a
    /// million keys, set it above the time they take to apply one (see docs/scale.md).
    #[arg(long, default_value_t = 1000)]
    spend_publish_ms: u64,
}

#[derive(Subcommand)]
enum RenderCommand {
    /// An Envoy bootstrap: listener with the keyward filter, the policy sync singleton, the
    /// control-plane and upstream clusters. JSON, which Envoy also reads as YAML.
    Envoy {
        /// Path of keyward.wasm as Envoy will see it.
        #[arg(long)]
        wasm: String,
        /// Where `keyward serve` listens, as Envoy reaches it: HOST:PORT.
        #[arg(long)]
        control_plane: String,
        #[command(flatten)]
        signing: SigningKeyArgs,
        #[arg(long, default_value = "127.0.0.1:10000")]
        listen: String,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// The provider (or any upstream) requests go to: HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:10001")]
        upstream: String,
        /// Speak TLS to the upstream (SNI and Host set to its host name).
        #[arg(long)]
        upstream_tls: bool,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Sync with the chunked layout: a signed manifest and content-addressed chunks, for
        /// large key counts (docs/scale.md). Default: one signed envelope.
        #[arg(long)]
        chunked_sync: bool,
        /// A named Envoy route, NAME=PATH_PREFIX (repeatable), placed before the catch-all
        /// `default` route; plugin routes match it with `match.route_name`.
        #[arg(long = "route", value_name = "NAME=PREFIX")]
        routes: Vec<String>,
        /// Switch the filter off on this Envoy route (repeatable): FilterConfig{disabled: true}.
        #[arg(long = "disable-on", value_name = "ROUTE")]
        disabled_on: Vec<String>,
        /// The rest of the plugin configuration (routes, mode, key formats...) as a JSON file;
        /// the sync block is added.
        #[arg(long)]
        plugin_config: Option<PathBuf>,
    },
    /// Istio resources: a WasmPlugin (the filter, with a lease-mode policy sync) and a
    /// ServiceEntry for the control plane. JSON documents separated by `---` (YAML).
    Istio(RenderIstioArgs),
}

#[derive(Args)]
struct RenderIstioArgs {
    /// Where Istio fetches the module: oci://REGISTRY/REPO:TAG, file://PATH or https://URL.
    #[arg(long)]
    wasm_url: String,
    /// The module itself (target/keyward.wasm): its sha256, for file:// and http(s):// URLs;
    /// with oci://, checked against the layout's Wasm layer.
    #[arg(long)]
    wasm_file: Option<PathBuf>,
    /// The OCI image layout `make oci` wrote (target/oci), for oci:// URLs: Istio checks the
    /// image manifest's digest.
    #[arg(long)]
    oci_layout: Option<PathBuf>,
    /// Where `keyward serve` listens, as the proxies reach it: HOST:PORT (a host name).
    #[arg(long)]
    control_plane: String,
    #[command(flatten)]
    signing: SigningKeyArgs,
    /// The WasmPlugin's name (the ServiceEntry is NAME-control-plane).
    #[arg(long, default_value = "keyward")]
    name: String,
    #[arg(long)]
    namespace: Option<String>,
    /// Workloads to run on: LABEL=VALUE[,LABEL=VALUE]. Without it (and without a target ref),
    /// every workload of the namespace.
    #[arg(long, conflicts_with_all = ["target_ref_kind", "target_ref_name"])]
    selector: Option<String>,
    /// Attach to a resource instead, e.g. `Gateway` (group gateway.networking.k8s.io) or `Service`.
    #[arg(long, requires = "target_ref_name")]
    target_ref_kind: Option<String>,
    #[arg(long, requires = "target_ref_kind")]
    target_ref_name: Option<String>,
    /// `spec.match[].mode`: CLIENT, SERVER or CLIENT_AND_SERVER.
    #[arg(long)]
    match_mode: Option<String>,
    /// A keyward plugin configuration (JSON: routes, mode, …); `sync` is added to it.
    #[arg(long)]
    plugin_config: Option<PathBuf>,
    /// Leave out the ServiceEntry (the control plane is already a Service in the mesh).
    #[arg(long)]
    no_service_entry: bool,
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Sync with the chunked layout (large key counts, docs/scale.md).
    #[arg(long)]
    chunked_sync: bool,
}

#[derive(Subcommand)]
enum SecretCommand {
    /// A new snapshot signing secret (32 random bytes, base64).
    SigningKey {
        #[arg(long)]
        out: PathBuf,
    },
    /// A new admin token, written as `NAME:TOKEN`.
    AdminToken {
        #[arg(long, default_value = secrets::DEFAULT_TOKEN_NAME)]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("keyward: error: {}", error.message);
            ExitCode::FAILURE
        }
    }
}

fn open_store(db: &Path) -> Result<Store, Error> {
    let mut store = Store::open(db)?;
    store.revoke_rotated_keys(now())?;
    Ok(store)
}

/// The `--plugin-config` file of the renderers: a JSON document, or an error naming the flag.
fn read_plugin_config(path: Option<&Path>) -> Result<Option<serde_json::Value>, Error> {
    let Some(path) = path else {
        return Ok(None);
    };
    let bytes = fs::read(path).map_err(|error| {
        Error::invalid(
            "unreadable_file",
            format!(
                "cannot read the plugin configuration {}: {error}",
                path.display()
            ),
        )
    })?;
    serde_json::from_slice(&bytes).map(Some).map_err(|error| {
        Error::invalid(
            "invalid_plugin_config",
            format!("--plugin-config: not JSON: {error}"),
        )
    })
}

fn render_istio(args: RenderIstioArgs) -> Result<(), Error> {
    let read = |path: &PathBuf, what: &str| {
        fs::read(path).map_err(|error| {
            Error::invalid(
                "unreadable_file",
                format!("cannot read the {what} {}: {error}", path.display()),
            )
        })
    };
    let base_config = read_plugin_config(args.plugin_config.as_deref())?;
    let target = match (args.target_ref_kind, args.target_ref_name) {
        (Some(kind), Some(name)) => render::IstioTarget::TargetRef { kind, name },
        _ => render::IstioTarget::Selector(render::parse_selector(
            args.selector.as_deref().unwrap_or(""),
        )?),
    };
    let sha256 = render::wasm_plugin_sha256(
        &args.wasm_url,
        args.wasm_file
            .as_ref()
            .map(|path| read(path, "Wasm module"))
            .transpose()?
            .as_deref(),
        args.oci_layout.as_deref(),
    )?;
    let options = render::IstioOptions {
        name: args.name,
        namespace: args.namespace,
        wasm_url: args.wasm_url,
        sha256,
        control_plane: args.control_plane,
        signing_secret_base64: secrets::signing_key_base64(
            &args.signing.signing_key_id,
            &args.signing.signing_key_file,
        )?,
        signing_key_id: args.signing.signing_key_id,
        target,
        match_mode: args.match_mode,
        base_config,
        service_entry: !args.no_service_entry,
        interval_ms: args.interval_ms,
        timeout_ms: args.timeout_ms,
        chunked: args.chunked_sync,
    };
    print!(
        "{}",
        render::yaml_stream(&render::istio_resources(&options)?)?
    );
    eprintln!(
        "note: the WasmPlugin's pluginConfig carries the snapshot signing secret; protect it like \
         the signing key file (who can read WasmPlugins in that namespace can read it)"
    );
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Error> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn usd(text: Option<&str>) -> Result<Option<u64>, Error> {
    text.map(parse_usd).transpose()
}

/// `--scopes ""` means no scopes.
fn list_arg(values: Vec<String>) -> Vec<String> {
    if values.iter().all(String::is_empty) {
        Vec::new()
    } else {
        values
    }
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
        Command::Project(command) => project_command(&cli.db, actor, command),
        Command::Key(command) => key_command(&cli.db, actor, command),
        Command::Price(command) => price_command(&cli.db, actor, command),
        Command::Spend { project, json } => spend_command(&cli.db, project.as_deref(), json),
        Command::Usage(command) => usage_command(&cli.db, command),
        Command::Audit(args) if args.policy.requested() => audit::run(&args.policy, args.json),
        Command::Explain(args) => explain::run(&args),
        Command::Audit(args) => {
            let events = open_store(&cli.db)?.audit_events(args.limit)?;
            if args.json {
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
        Command::Snapshot(command) => snapshot_command(&cli.db, actor, command),
        Command::Serve(args) => {
            // Check the address before touching any file, so a refused address changes nothing.
            server::resolve_listen(&args.listen, args.allow_non_loopback)?;
            let token_text = secrets::read_secret_file(&args.admin_token_file, "admin token")?;
            let options = server::ServeOptions {
                db: cli.db.clone(),
                listen: args.listen,
                allow_non_loopback: args.allow_non_loopback,
                tokens: secrets::AdminTokens::parse(&token_text)?,
                signing_key: secrets::load_signing_key(
                    &args.signing.signing_key_id,
                    &args.signing.signing_key_file,
                )?,
                reissue_seconds: args.reissue_seconds,
                spend_publish_ms: args.spend_publish_ms,
            };
            server::serve(options)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Render(RenderCommand::Envoy {
            wasm,
            control_plane,
            signing,
            listen,
            admin,
            upstream,
            upstream_tls,
            interval_ms,
            timeout_ms,
            chunked_sync,
            routes,
            disabled_on,
            plugin_config,
        }) => {
            let routes = routes
                .iter()
                .map(|spec| match spec.split_once('=') {
                    Some((name, prefix)) => Ok((name.to_owned(), prefix.to_owned())),
                    None => Err(Error::invalid(
                        "invalid_route",
                        format!("--route {spec}: expected NAME=PREFIX"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let plugin_config = read_plugin_config(plugin_config.as_deref())?;
            let options = render::EnvoyOptions {
                wasm,
                control_plane,
                signing_secret_base64: secrets::signing_key_base64(
                    &signing.signing_key_id,
                    &signing.signing_key_file,
                )?,
                signing_key_id: signing.signing_key_id,
                listen,
                admin,
                upstream,
                upstream_tls,
                interval_ms,
                timeout_ms,
                chunked: chunked_sync,
                routes,
                disabled_on,
                plugin_config,
            };
            print_json(&render::envoy_bootstrap(&options)?)?;
            eprintln!(
                "note: this configuration carries the snapshot signing secret; protect it like \
                 the signing key file"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Render(RenderCommand::Istio(args)) => {
            render_istio(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Secret(SecretCommand::SigningKey { out }) => {
            secrets::write_secret_file(&out, &secrets::generate_signing_secret()?)?;
            eprintln!("wrote a new signing secret to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Secret(SecretCommand::AdminToken { name, out }) => {
            if !valid_actor(&name) {
                return Err(Error::invalid(
                    "invalid_actor",
                    "--name must be 1 to 64 characters of A-Z a-z 0-9 _ - . @",
                ));
            }
            let line = format!("{name}:{}", secrets::generate_admin_token());
            secrets::write_secret_file(&out, &line)?;
            eprintln!("wrote a new admin token named {name} to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn project_command(db: &Path, actor: &str, command: ProjectCommand) -> Result<ExitCode, Error> {
    let mut store = open_store(db)?;
    let (project, json) = match command {
        ProjectCommand::Create {
            id,
            org,
            spend_cap_usd,
            spend_soft_cap_usd,
            json,
        } => {
            let cap = usd(spend_cap_usd.as_deref())?;
            let soft = usd(spend_soft_cap_usd.as_deref())?;
            (
                store.create_project(actor, now(), &id, &org, cap, soft)?,
                json,
            )
        }
        ProjectCommand::Set {
            id,
            spend_cap_usd,
            no_spend_cap,
            spend_soft_cap_usd,
            no_soft_cap,
            json,
        } => {
            let update = ProjectUpdate {
                spend_cap_microusd: clearable_usd(spend_cap_usd.as_deref(), no_spend_cap)?,
                spend_soft_cap_microusd: clearable_usd(spend_soft_cap_usd.as_deref(), no_soft_cap)?,
            };
            (store.update_project(actor, now(), &id, &update)?, json)
        }
        ProjectCommand::Archive { id, json } => (store.archive_project(actor, now(), &id)?, json),
        ProjectCommand::Show { id, json } => {
            let project = store.project(&id)?;
            if json {
                print_json(&project)?;
            } else {
                print_fields(&[
                    ("project", project.id.clone()),
                    ("org", project.org.clone()),
                    ("status", status_name(&project.status)),
                    (
                        "spend",
                        describe_spend(
                            project.spent_microusd,
                            project.spend_cap_microusd,
                            project.spend_soft_cap_microusd,
                        ),
                    ),
                    ("created", format_time(project.created_at)),
                    ("archived", optional_time(project.archived_at)),
                ]);
            }
            return Ok(ExitCode::SUCCESS);
        }
        ProjectCommand::List { json } => {
            let projects = store.projects()?;
            if json {
                print_json(&projects)?;
            } else {
                let rows = projects
                    .iter()
                    .map(|project| {
                        vec![
                            project.id.clone(),
                            project.org.clone(),
                            status_name(&project.status),
                            optional_usd(project.spend_cap_microusd),
                            optional_usd(project.spend_soft_cap_microusd),
                            dollars(project.spent_microusd),
                            format_time(project.created_at),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "ID",
                        "ORG",
                        "STATUS",
                        "SPEND CAP",
                        "SOFT CAP",
                        "SPENT",
                        "CREATED",
                    ],
                    rows,
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if json {
        print_json(&project)?;
    } else {
        println!("project {}: {}", project.id, status_name(&project.status));
    }
    Ok(ExitCode::SUCCESS)
}

/// `$12.50`.
fn dollars(micros: u64) -> String {
    format!("${}", format_usd(micros))
}

fn optional_usd(micros: Option<u64>) -> String {
    micros.map_or_else(|| "-".to_owned(), dollars)
}

/// `$1.25 of $5.00 cap (25%), soft cap $4.00`.
fn describe_spend(spent: u64, cap: Option<u64>, soft: Option<u64>) -> String {
    let mut text = dollars(spent);
    match cap {
        Some(cap) => text.push_str(&format!(
            " of {} cap ({})",
            dollars(cap),
            percent(spent, cap)
        )),
        None => text.push_str(", no cap"),
    }
    if let Some(soft) = soft {
        text.push_str(&format!(", soft cap {}", dollars(soft)));
    }
    text
}

/// `spent` as a whole percentage of `cap`, rounded down.
fn percent(spent: u64, cap: u64) -> String {
    if cap == 0 {
        return "100%".to_owned();
    }
    let share = u128::from(spent).saturating_mul(100) / u128::from(cap);
    format!("{share}%")
}

/// What spend means for the filter: the cap denies, the soft cap warns.
fn spend_alert(spent: u64, cap: Option<u64>, soft: Option<u64>) -> &'static str {
    if cap.is_some_and(|cap| spent >= cap) {
        "cap reached"
    } else if soft.is_some_and(|soft| spent >= soft) {
        "past soft cap"
    } else {
        ""
    }
}

fn describe_limits(limits: Option<&RateLimits>) -> String {
    let parts: Vec<String> = limits
        .map(|limits| {
            [
                limits
                    .requests_per_minute
                    .map(|rpm| format!("{rpm} requests/min")),
                limits
                    .tokens_per_minute
                    .map(|tpm| format!("{tpm} tokens/min")),
            ]
            .into_iter()
            .flatten()
            .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

/// `--x-usd X` / `--no-x` as a partial update.
fn clearable_usd(text: Option<&str>, clear: bool) -> Result<Option<Option<u64>>, Error> {
    if clear {
        Ok(Some(None))
    } else {
        Ok(usd(text)?.map(Some))
    }
}

/// `--x N` / `--no-x` as a partial update.
fn clearable<T>(value: Option<T>, clear: bool) -> Option<Option<T>> {
    if clear {
        Some(None)
    } else {
        value.map(Some)
    }
}

/// Aligned `name: value` lines.
fn print_fields(fields: &[(&str, String)]) {
    let width = fields
        .iter()
        .map(|(name, _)| name.chars().count() + 1)
        .max()
        .unwrap_or(0);
    for (name, value) in fields {
        println!("{:<width$} {value}", format!("{name}:"));
    }
}

fn status_name<T: serde::Serialize>(status: &T) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Prints a new key's plaintext (this once) on stdout, with the warning on stderr.
fn print_new_key(
    plaintext: &str,
    view: &KeyView,
    previous: Option<&KeyView>,
    json: bool,
) -> Result<(), Error> {
    if json {
        let mut body = serde_json::to_value(view)?;
        if let Some(object) = body.as_object_mut() {
            object.insert("key".into(), plaintext.into());
            if let Some(previous) = previous {
                object.insert("previous".into(), serde_json::to_value(previous)?);
            }
        }
        print_json(&body)?;
    } else {
        println!("key_id: {}", view.id);
        println!("key: {plaintext}");
        if let Some(previous) = previous {
            match previous.revoke_at {
                Some(at) if previous.status != KeyStatus::Revoked => println!(
                    "previous key {} stays active until {}",
                    previous.id,
                    format_time(at)
                ),
                _ => println!("previous key {} is revoked", previous.id),
            }
        }
    }
    let _ = std::io::stdout().flush();
    eprintln!(
        "warning: this is the only time this key is shown. Store it now: keyward keeps only its \
         SHA-256 hash."
    );
    Ok(())
}

fn print_key(view: &KeyView, json: bool) -> Result<(), Error> {
    if json {
        print_json(view)
    } else {
        println!("key {}: {}", view.id, describe_status(view));
        Ok(())
    }
}

fn owner_of(key: &KeyView) -> String {
    match (&key.project, &key.org) {
        (Some(project), _) => project.clone(),
        (None, Some(org)) => format!("org:{org}"),
        (None, None) => "-".to_owned(),
    }
}

/// `key show`: every field operators can see.
fn print_key_details(view: &KeyView) {
    print_fields(&[
        ("key", view.id.clone()),
        ("status", describe_status(view)),
        ("format", view.format.as_str().to_owned()),
        ("owner", owner_of(view)),
        ("environment", view.environment.clone()),
        ("scopes", list_or_dash(&view.scopes)),
        (
            "models",
            view.models
                .as_ref()
                .map_or_else(|| "*".to_owned(), |models| models.join(",")),
        ),
        (
            "expires",
            view.expires_at
                .map_or_else(|| "never".to_owned(), format_time),
        ),
        (
            "spend",
            describe_spend(
                view.spent_microusd,
                view.spend_cap_microusd,
                view.spend_soft_cap_microusd,
            ),
        ),
        ("rate limits", describe_limits(view.rate_limits.as_ref())),
        (
            "label",
            view.label.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        ("note", view.note.clone().unwrap_or_else(|| "-".to_owned())),
        ("created", format_time(view.created_at)),
        ("last seen", optional_time(view.last_seen_at)),
        (
            "rotated from",
            view.rotated_from.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        ("revoked", optional_time(view.revoked_at)),
    ]);
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

fn describe_status(view: &KeyView) -> String {
    match (view.status, view.revoke_at) {
        (KeyStatus::Revoked, _) => "revoked".to_owned(),
        (status, Some(at)) => format!(
            "{} until {} (rotated)",
            status_name(&status),
            format_time(at)
        ),
        (status, None) => status_name(&status),
    }
}

fn key_command(db: &Path, actor: &str, command: KeyCommand) -> Result<ExitCode, Error> {
    let mut store = open_store(db)?;
    match command {
        KeyCommand::Create(args) => {
            let owner = match (args.project, args.org) {
                (Some(project), None) => Owner::Project(project),
                (None, Some(org)) => Owner::Org(org),
                _ => {
                    return Err(Error::invalid(
                        "invalid_field",
                        "give exactly one of --project and --org",
                    ))
                }
            };
            let new = NewKey {
                owner,
                format: args.format,
                settings: KeySettings {
                    environment: args.environment,
                    scopes: list_arg(args.scopes),
                    models: args.models,
                    expires_at: args.expiry.resolve()?,
                    spend_cap_microusd: usd(args.spend_cap_usd.as_deref())?,
                    spend_soft_cap_microusd: usd(args.spend_soft_cap_usd.as_deref())?,
                    rate_limits: (args.rpm.is_some() || args.tpm.is_some()).then_some(RateLimits {
                        requests_per_minute: args.rpm,
                        tokens_per_minute: args.tpm,
                    }),
                    label: args.label,
                    note: args.note,
                },
            };
            let created = store.create_key(actor, now(), &new)?;
            print_new_key(created.plaintext.expose(), &created.key, None, args.json)?;
        }
        KeyCommand::List { project, json } => {
            let keys = store.keys(project.as_deref())?;
            if json {
                print_json(&keys)?;
            } else {
                print_key_table(&keys);
            }
        }
        KeyCommand::Show { id, json } => {
            let view = store.key(&id)?;
            if json {
                print_json(&view)?;
            } else {
                print_key_details(&view);
            }
        }
        KeyCommand::Revoke { id, json } => {
            print_key(
                &store.change_status(actor, now(), &id, StatusChange::Revoke)?,
                json,
            )?;
        }
        KeyCommand::Pause { id, json } => {
            print_key(
                &store.change_status(actor, now(), &id, StatusChange::Pause)?,
                json,
            )?;
        }
        KeyCommand::Resume { id, json } => {
            print_key(
                &store.change_status(actor, now(), &id, StatusChange::Resume)?,
                json,
            )?;
        }
        KeyCommand::Set(args) => {
            let expires_at = if args.no_expiry {
                Some(None)
            } else {
                ExpiryArgs {
                    expires_at: args.expires_at,
                    expires_in: args.expires_in,
                }
                .resolve()?
                .map(Some)
            };
            let spend_cap_microusd =
                clearable_usd(args.spend_cap_usd.as_deref(), args.no_spend_cap)?;
            let update = KeyUpdate {
                scopes: args.scopes.map(list_arg),
                models: if args.all_models {
                    Some(None)
                } else {
                    args.models.map(Some)
                },
                expires_at,
                spend_cap_microusd,
                spend_soft_cap_microusd: clearable_usd(
                    args.spend_soft_cap_usd.as_deref(),
                    args.no_soft_cap,
                )?,
                requests_per_minute: clearable(args.rpm, args.no_rpm),
                tokens_per_minute: clearable(args.tpm, args.no_tpm),
                label: args.label.map(Some),
                note: args.note.map(Some),
            };
            print_key(
                &store.update_key(actor, now(), &args.id, &update)?,
                args.json,
            )?;
        }
        KeyCommand::Rotate { id, grace, json } => {
            let grace = parse_duration_seconds(&grace)?;
            let rotation = store.rotate_key(actor, now(), &id, grace)?;
            print_new_key(
                rotation.new.plaintext.expose(),
                &rotation.new.key,
                Some(&rotation.old),
                json,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn optional_time(time: Option<u64>) -> String {
    time.map_or_else(|| "-".to_owned(), format_time)
}

fn print_key_table(keys: &[KeyView]) {
    let rows = keys
        .iter()
        .map(|key| {
            vec![
                key.id.clone(),
                owner_of(key),
                key.environment.clone(),
                describe_status(key),
                list_or_dash(&key.scopes),
                key.models
                    .as_ref()
                    .map_or_else(|| "*".to_owned(), |models| models.join(",")),
                dollars(key.spent_microusd),
                optional_usd(key.spend_cap_microusd),
                optional_usd(key.spend_soft_cap_microusd),
                short_limits(key.rate_limits.as_ref()),
                format_time(key.created_at),
                optional_time(key.last_seen_at),
                optional_time(key.expires_at),
                key.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "OWNER",
            "ENV",
            "STATUS",
            "SCOPES",
            "MODELS",
            "SPENT",
            "CAP",
            "SOFT CAP",
            "LIMITS",
            "CREATED",
            "LAST SEEN",
            "EXPIRES",
            "NOTE",
        ],
        rows,
    );
}

/// `60rpm,100000tpm` for tables.
fn short_limits(limits: Option<&RateLimits>) -> String {
    let parts: Vec<String> = limits
        .map(|limits| {
            [
                limits.requests_per_minute.map(|rpm| format!("{rpm}rpm")),
                limits.tokens_per_minute.map(|tpm| format!("{tpm}tpm")),
            ]
            .into_iter()
            .flatten()
            .collect()
        })
        .unwrap_or_default();
    list_or_dash(&parts)
}

fn price_command(db: &Path, actor: &str, command: PriceCommand) -> Result<ExitCode, Error> {
    let mut store = open_store(db)?;
    let per_mtok = |text: &str, flag: &str| {
        parse_usd(text).map_err(|error| {
            Error::invalid("invalid_amount", format!("--{flag}: {}", error.message))
        })
    };
    let (price, json, verb) = match command {
        PriceCommand::Set {
            model,
            input,
            output,
            cached_input,
            cache_write,
            json,
        } => {
            let record = PriceRecord {
                model,
                input_microusd_per_mtok: per_mtok(&input, "input")?,
                output_microusd_per_mtok: per_mtok(&output, "output")?,
                cached_input_microusd_per_mtok: cached_input
                    .as_deref()
                    .map(|text| per_mtok(text, "cached-input"))
                    .transpose()?,
                cache_write_microusd_per_mtok: cache_write
                    .as_deref()
                    .map(|text| per_mtok(text, "cache-write"))
                    .transpose()?,
            };
            (store.set_price(actor, now(), &record)?, json, "set")
        }
        PriceCommand::Remove { model, json } => {
            (store.remove_price(actor, now(), &model)?, json, "removed")
        }
        PriceCommand::List { json } => {
            let prices = store.prices()?;
            if json {
                print_json(&prices)?;
            } else {
                let rows = prices.iter().map(price_row).collect();
                print_table(
                    &[
                        "MODEL",
                        "INPUT",
                        "OUTPUT",
                        "CACHED INPUT",
                        "CACHE WRITE",
                        "UPDATED",
                    ],
                    rows,
                );
                println!("(USD per 1M tokens)");
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if json {
        print_json(&price)?;
    } else {
        let row = price_row(&price);
        println!(
            "price {verb} for {}: input {}, output {}, cached input {}, cache write {} (USD per \
             1M tokens)",
            row.first().map_or("", String::as_str),
            row.get(1).map_or("", String::as_str),
            row.get(2).map_or("", String::as_str),
            row.get(3).map_or("", String::as_str),
            row.get(4).map_or("", String::as_str),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn price_row(price: &PriceView) -> Vec<String> {
    let or_input = |value: Option<u64>| {
        value.map_or_else(
            || format!("{} (input)", dollars(price.input_microusd_per_mtok)),
            dollars,
        )
    };
    vec![
        price.model.clone(),
        dollars(price.input_microusd_per_mtok),
        dollars(price.output_microusd_per_mtok),
        or_input(price.cached_input_microusd_per_mtok),
        or_input(price.cache_write_microusd_per_mtok),
        format_time(price.updated_at),
    ]
}

fn spend_command(db: &Path, project: Option<&str>, json: bool) -> Result<ExitCode, Error> {
    let mut store = open_store(db)?;
    let projects: Vec<ProjectView> = match project {
        Some(id) => vec![store.project(id)?],
        None => store.projects()?,
    };
    let keys = store.keys(project)?;
    if json {
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|key| {
                serde_json::json!({
                    "id": key.id,
                    "project": key.project,
                    "org": key.org,
                    "status": key.status,
                    "spent_microusd": key.spent_microusd,
                    "spend_cap_microusd": key.spend_cap_microusd,
                    "spend_soft_cap_microusd": key.spend_soft_cap_microusd,
                    "rate_limits": key.rate_limits,
                    "last_seen_at": key.last_seen_at,
                })
            })
            .collect();
        let projects: Vec<serde_json::Value> = projects
            .iter()
            .map(|project| {
                serde_json::json!({
                    "id": project.id,
                    "org": project.org,
                    "status": project.status,
                    "spent_microusd": project.spent_microusd,
                    "spend_cap_microusd": project.spend_cap_microusd,
                    "spend_soft_cap_microusd": project.spend_soft_cap_microusd,
                })
            })
            .collect();
        print_json(&serde_json::json!({"projects": projects, "keys": keys}))?;
        return Ok(ExitCode::SUCCESS);
    }
    let used = |spent: u64, cap: Option<u64>| {
        cap.map_or_else(|| "-".to_owned(), |cap| percent(spent, cap))
    };
    let rows = projects
        .iter()
        .map(|project| {
            vec![
                project.id.clone(),
                project.org.clone(),
                status_name(&project.status),
                dollars(project.spent_microusd),
                optional_usd(project.spend_cap_microusd),
                optional_usd(project.spend_soft_cap_microusd),
                used(project.spent_microusd, project.spend_cap_microusd),
                spend_alert(
                    project.spent_microusd,
                    project.spend_cap_microusd,
                    project.spend_soft_cap_microusd,
                )
                .to_owned(),
            ]
        })
        .collect();
    print_table(
        &[
            "PROJECT", "ORG", "STATUS", "SPENT", "CAP", "SOFT CAP", "USED", "ALERT",
        ],
        rows,
    );
    println!();
    let rows = keys
        .iter()
        .map(|key| {
            vec![
                key.id.clone(),
                owner_of(key),
                describe_status(key),
                dollars(key.spent_microusd),
                optional_usd(key.spend_cap_microusd),
                optional_usd(key.spend_soft_cap_microusd),
                used(key.spent_microusd, key.spend_cap_microusd),
                short_limits(key.rate_limits.as_ref()),
                optional_time(key.last_seen_at),
                spend_alert(
                    key.spent_microusd,
                    key.spend_cap_microusd,
                    key.spend_soft_cap_microusd,
                )
                .to_owned(),
            ]
        })
        .collect();
    print_table(
        &[
            "KEY",
            "OWNER",
            "STATUS",
            "SPENT",
            "CAP",
            "SOFT CAP",
            "USED",
            "LIMITS",
            "LAST SEEN",
            "ALERT",
        ],
        rows,
    );
    Ok(ExitCode::SUCCESS)
}

fn usage_command(db: &Path, command: UsageCommand) -> Result<ExitCode, Error> {
    let mut store = open_store(db)?;
    match command {
        UsageCommand::Batches { limit, json } => {
            let batches = store.usage_batches(limit)?;
            if json {
                print_json(&batches)?;
            } else {
                let rows = batches
                    .iter()
                    .map(|batch| {
                        vec![
                            format_time(batch.received_at),
                            batch.reporter.clone(),
                            batch.batch_id.clone(),
                            batch.policy_version.to_string(),
                            format!("{}/{}", batch.applied, batch.entries),
                            dollars(batch.cost_microusd),
                            batch.requests.to_string(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "RECEIVED", "REPORTER", "BATCH", "VERSION", "APPLIED", "COST", "REQUESTS",
                    ],
                    rows,
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A plain, aligned text table.
fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|header| header.chars().count())
        .collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|header| (*header).to_owned()).collect());
    for row in rows {
        line(row);
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, so a reader never sees
/// half a snapshot.
fn write_atomically(path: &Path, contents: &str) -> Result<(), Error> {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".to_owned());
    let temporary = path.with_file_name(format!(".{file_name}.tmp"));
    fs::write(&temporary, contents)
        .and_then(|()| fs::rename(&temporary, path))
        .map_err(|error| Error::internal(format!("cannot write {}: {error}", path.display())))
}

fn snapshot_command(db: &Path, actor: &str, command: SnapshotCommand) -> Result<ExitCode, Error> {
    match command {
        SnapshotCommand::Import { file } => {
            let text = fs::read(&file).map_err(|error| {
                Error::invalid(
                    "unreadable_file",
                    format!("cannot read {}: {error}", file.display()),
                )
            })?;
            let snapshot: keyward_engine::snapshot::Snapshot = serde_json::from_slice(&text)
                .map_err(|error| {
                    Error::invalid("invalid_snapshot", format!("{}: {error}", file.display()))
                })?;
            let mut store = Store::open(db)?;
            let (projects, keys, prices) = store.import_snapshot(actor, now(), &snapshot)?;
            println!("imported {projects} projects, {keys} keys and {prices} prices");
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Build { signing, out } => {
            let key =
                secrets::load_signing_key(&signing.signing_key_id, &signing.signing_key_file)?;
            let mut store = Store::open(db)?;
            let signed = publish::build_signed(&mut store, &key, now())?;
            // The filter must accept what we publish: check with its own verifier.
            verify_snapshot(signed.envelope.as_bytes(), std::slice::from_ref(&key)).map_err(
                |error| Error::internal(format!("the built snapshot does not verify: {error}")),
            )?;
            match out {
                Some(path) => write_atomically(&path, &signed.envelope)?,
                None => println!("{}", signed.envelope),
            }
            eprintln!(
                "snapshot version {} issued at {}: {} keys, {} projects, signed with key {}",
                signed.version, signed.issued_at, signed.keys, signed.projects, key.id
            );
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Verify { file, signing } => {
            let key =
                secrets::load_signing_key(&signing.signing_key_id, &signing.signing_key_file)?;
            let bytes = fs::read(&file).map_err(|error| {
                Error::invalid(
                    "unreadable_file",
                    format!("cannot read {}: {error}", file.display()),
                )
            })?;
            match verify_snapshot(&bytes, &[key]) {
                Ok(policy) => {
                    let count = |status: KeyStatus| {
                        policy
                            .keys()
                            .iter()
                            .filter(|key| key.status == status)
                            .count()
                    };
                    println!(
                        "ok: version {}, issued_at {}, {} keys ({} active, {} paused, {} revoked), {} projects",
                        policy.version,
                        policy.issued_at,
                        policy.keys().len(),
                        count(KeyStatus::Active),
                        count(KeyStatus::Paused),
                        count(KeyStatus::Revoked),
                        policy.projects().len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(rejected) => {
                    eprintln!(
                        "keyward: invalid snapshot ({}): {rejected}",
                        rejected.reason()
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
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
