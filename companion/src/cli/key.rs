//! `keyward key`: create, list, show, revoke, pause, resume, change and rotate keys.

use std::io::Write;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Subcommand};
use keyward_engine::snapshot::{KeyStatus, RateLimits};

use super::admin::Admin;
use super::output::{
    describe_limits, describe_spend, describe_status, dollars, list_or_dash, optional_time,
    optional_usd, owner_of, print_fields, print_json, print_table, short_limits,
};
use super::shared::{clearable, list_arg, ExpiryArgs, SpendCapArgs, SpendCapChangeArgs};
use crate::api::CreatedKeyBody;
use crate::error::Error;
use crate::keygen::{Environment, Format};
use crate::server;
use crate::store::{KeySettings, KeyUpdate, KeyView, NewKey, Owner, StatusChange};
use crate::units::{format_time, parse_duration_seconds};

#[derive(Args)]
#[command(group(ArgGroup::new("owner").required(true).args(["project", "org"])))]
pub struct KeyCreateArgs {
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
    #[command(flatten)]
    caps: SpendCapArgs,
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
pub struct KeySetArgs {
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
    #[command(flatten)]
    caps: SpendCapChangeArgs,
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
pub enum KeyCommand {
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

/// Prints a new key's plaintext (this once) on stdout, with the warning on stderr.
fn print_new_key(created: &CreatedKeyBody, json: bool) -> Result<(), Error> {
    let (plaintext, view, previous) = (&created.key, &created.view, created.previous.as_ref());
    if json {
        let mut body = serde_json::to_value(view)?;
        if let Some(object) = body.as_object_mut() {
            object.insert("key".into(), plaintext.as_str().into());
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

pub fn run(admin: &mut dyn Admin, command: KeyCommand) -> Result<ExitCode, Error> {
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
            let (spend_cap_microusd, spend_soft_cap_microusd) = args.caps.microusd()?;
            let new = NewKey {
                owner,
                format: args.format,
                settings: KeySettings {
                    environment: args.environment,
                    scopes: list_arg(args.scopes),
                    models: args.models,
                    expires_at: args.expiry.resolve()?,
                    spend_cap_microusd,
                    spend_soft_cap_microusd,
                    rate_limits: (args.rpm.is_some() || args.tpm.is_some()).then_some(RateLimits {
                        requests_per_minute: args.rpm,
                        tokens_per_minute: args.tpm,
                    }),
                    label: args.label,
                    note: args.note,
                },
            };
            let created = admin.create_key(&new)?;
            print_new_key(&created, args.json)?;
        }
        KeyCommand::List { project, json } => {
            let keys = admin.keys(project.as_deref())?;
            if json {
                print_json(&keys)?;
            } else {
                print_key_table(&keys);
            }
        }
        KeyCommand::Show { id, json } => {
            let view = admin.key(&id)?;
            if json {
                print_json(&view)?;
            } else {
                print_key_details(&view);
            }
        }
        KeyCommand::Revoke { id, json } => {
            print_key(&admin.change_status(&id, StatusChange::Revoke)?, json)?;
        }
        KeyCommand::Pause { id, json } => {
            print_key(&admin.change_status(&id, StatusChange::Pause)?, json)?;
        }
        KeyCommand::Resume { id, json } => {
            print_key(&admin.change_status(&id, StatusChange::Resume)?, json)?;
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
            let (spend_cap_microusd, spend_soft_cap_microusd) = args.caps.changes()?;
            let update = KeyUpdate {
                scopes: args.scopes.map(list_arg),
                models: if args.all_models {
                    Some(None)
                } else {
                    args.models.map(Some)
                },
                expires_at,
                spend_cap_microusd,
                spend_soft_cap_microusd,
                requests_per_minute: clearable(args.rpm, args.no_rpm),
                tokens_per_minute: clearable(args.tpm, args.no_tpm),
                label: args.label.map(Some),
                note: args.note.map(Some),
            };
            print_key(&admin.update_key(&args.id, &update)?, args.json)?;
        }
        KeyCommand::Rotate { id, grace, json } => {
            // Checked here too, so a bad duration never reaches a server.
            parse_duration_seconds(&grace)?;
            print_new_key(&admin.rotate_key(&id, &grace)?, json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
