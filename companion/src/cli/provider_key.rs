//! `keyward provider-key`: customers' own model-provider keys, per project or per org (the org's
//! is the fallback), stored encrypted under the KEK and delivered to the data planes sealed.
//! Locally (`--db`) the command encrypts with `--provider-kek-file`; remotely (`--server`) the
//! control plane encrypts with its own KEK, and the key travels once, in the request body.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use keyward_engine::provider::{KeyOwnerKind, Provider};
use zeroize::Zeroizing;

use super::admin::{segment, Admin, Local, Remote};
use super::output::{optional_time, print_json, print_list_json, print_table};
use crate::api::{List, ProviderKeyBody, RotateProviderKeyBody};
use crate::error::Error;
use crate::provider_secrets::{check_provider_key, encrypted_row, key_owner, parse_provider};
use crate::provider_secrets::{Kek, ProviderSealing};
use crate::store::{ProviderKeyView, PutMode};
use crate::units::{format_time, now};

/// What sealing provider keys into snapshots needs (`serve`, `snapshot build`).
#[derive(Args, Debug, Clone, Default)]
pub struct ProviderSealingArgs {
    /// The key-encryption key provider keys are stored under (`keyward secret provider-kek`).
    #[arg(long, env = "KEYWARD_PROVIDER_KEK_FILE", value_name = "FILE")]
    pub provider_kek_file: Option<PathBuf>,
    /// The fleet's public key (`keyward secret fleet-key` writes it as OUT.pub): snapshots
    /// carry provider keys sealed to it.
    #[arg(
        long,
        env = "KEYWARD_FLEET_PUBLIC_KEY_FILE",
        value_name = "FILE",
        requires = "provider_kek_file"
    )]
    pub fleet_public_key_file: Option<PathBuf>,
}

impl ProviderSealingArgs {
    pub fn load(&self) -> Result<Option<Arc<ProviderSealing>>, Error> {
        match (&self.provider_kek_file, &self.fleet_public_key_file) {
            (Some(kek), Some(public)) => Ok(Some(Arc::new(ProviderSealing::load(kek, public)?))),
            _ => Ok(None),
        }
    }

    /// A KEK without the fleet's public key: keys could be stored but not sealed.
    pub fn kek_only(&self) -> bool {
        self.provider_kek_file.is_some() && self.fleet_public_key_file.is_none()
    }
}

/// Which provider key: its provider, scope and owner id.
pub type KeyOwner = (Provider, KeyOwnerKind, String);

/// A key to add or rotate. Locally it is encrypted with the KEK in `kek_file`; remotely the
/// control plane encrypts it with its own (and `kek_file` is not used).
pub struct PutKey<'a> {
    pub mode: PutMode,
    pub owner: KeyOwner,
    pub key: &'a str,
    pub name: Option<String>,
    pub kek_file: Option<&'a Path>,
}

/// The provider-key operations, on the store (local) or a control plane (remote).
pub trait ProviderKeyAdmin {
    fn put_provider_key(&mut self, put: PutKey<'_>) -> Result<ProviderKeyView, Error>;
    fn provider_keys(&mut self) -> Result<Vec<ProviderKeyView>, Error>;
    fn remove_provider_key(&mut self, owner: KeyOwner) -> Result<ProviderKeyView, Error>;
}

impl ProviderKeyAdmin for Local {
    fn put_provider_key(&mut self, put: PutKey<'_>) -> Result<ProviderKeyView, Error> {
        let PutKey {
            mode,
            owner,
            key,
            name,
            kek_file,
        } = put;
        let kek_file = kek_file.ok_or_else(|| {
            Error::invalid(
                "missing_provider_kek_file",
                "give --provider-kek-file (or KEYWARD_PROVIDER_KEK_FILE): the KEK the key is \
                 stored under (or manage a running control plane with --server)",
            )
        })?;
        let row = encrypted_row(&Kek::load(kek_file)?, owner, key, name)?;
        let stored = self.store.put_provider_key(&self.actor, now(), mode, row)?;
        Ok(ProviderKeyView::from(&stored))
    }

    fn provider_keys(&mut self) -> Result<Vec<ProviderKeyView>, Error> {
        self.store.provider_key_views()
    }

    fn remove_provider_key(&mut self, owner: KeyOwner) -> Result<ProviderKeyView, Error> {
        let (provider, kind, id) = owner;
        let removed = self
            .store
            .remove_provider_key(&self.actor, now(), provider, kind, &id)?;
        Ok(ProviderKeyView::from(&removed))
    }
}

/// `/v1/provider-keys/{scope}/{provider}/{owner_id}`.
fn key_path((provider, kind, id): &KeyOwner) -> String {
    format!(
        "/v1/provider-keys/{}/{}/{}",
        kind.as_str(),
        provider.as_str(),
        segment(id)
    )
}

impl ProviderKeyAdmin for Remote {
    fn put_provider_key(&mut self, put: PutKey<'_>) -> Result<ProviderKeyView, Error> {
        let (key, name) = (put.key, put.name);
        match put.mode {
            PutMode::Add => {
                let (provider, kind, id) = put.owner;
                let (project, org) = match kind {
                    KeyOwnerKind::Project => (Some(id), None),
                    KeyOwnerKind::Org => (None, Some(id)),
                };
                let body = ProviderKeyBody {
                    provider: provider.as_str().to_owned(),
                    project,
                    org,
                    key: key.to_owned(),
                    name,
                };
                self.send("POST", "/v1/provider-keys", Some(&body))
            }
            PutMode::Rotate => {
                let body = RotateProviderKeyBody {
                    key: key.to_owned(),
                    name,
                };
                let path = format!("{}/rotate", key_path(&put.owner));
                self.send("POST", &path, Some(&body))
            }
        }
    }

    fn provider_keys(&mut self) -> Result<Vec<ProviderKeyView>, Error> {
        self.send::<List<ProviderKeyView>, ()>("GET", "/v1/provider-keys", None)
            .map(|list| list.data)
    }

    fn remove_provider_key(&mut self, owner: KeyOwner) -> Result<ProviderKeyView, Error> {
        self.send::<_, ()>("DELETE", &key_path(&owner), None)
    }
}

#[derive(Args, Debug, Clone)]
pub struct OwnerArgs {
    /// The provider: openai, anthropic, azure, google, mistral, groq, deepseek, cohere, xai,
    /// perplexity.
    #[arg(long)]
    provider: String,
    /// The project whose key it is.
    #[arg(long, conflicts_with = "org", required_unless_present = "org")]
    project: Option<String>,
    /// The org whose key it is: the fallback for every project of the org.
    #[arg(long)]
    org: Option<String>,
}

impl OwnerArgs {
    fn parse(&self) -> Result<KeyOwner, Error> {
        let provider = parse_provider(&self.provider).map_err(|e| e.with_prefix("--provider"))?;
        let (kind, id) = key_owner(self.project.as_deref(), self.org.as_deref())?;
        Ok((provider, kind, id))
    }
}

#[derive(Args, Debug, Clone)]
pub struct SecretInput {
    #[command(flatten)]
    owner: OwnerArgs,
    /// Local mode: the KEK file (`keyward secret provider-kek`). With --server the control
    /// plane uses its own.
    #[arg(long, env = "KEYWARD_PROVIDER_KEK_FILE", value_name = "FILE")]
    provider_kek_file: Option<PathBuf>,
    /// Read the provider key from this file instead of standard input (never from an argument:
    /// arguments are visible to every user of the host).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// A name for people, shown by `list` (a rotation keeps the name unless given a new one).
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum ProviderKeyCommand {
    /// Store a provider key (read from standard input or --key-file), encrypted.
    Add(SecretInput),
    /// Replace a stored provider key; data planes use the new one from the next snapshot.
    Rotate(SecretInput),
    /// List provider keys: provider, owner, name, last 4 characters, created, rotated, last used.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a provider key.
    Remove {
        #[command(flatten)]
        owner: OwnerArgs,
        #[arg(long)]
        json: bool,
    },
}

fn read_key(file: Option<&PathBuf>) -> Result<Zeroizing<String>, Error> {
    let mut text = Zeroizing::new(String::new());
    let read = match file {
        Some(path) => std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text)),
        None => std::io::stdin().read_to_string(&mut text),
    };
    read.map_err(|error| {
        Error::invalid(
            "unreadable_provider_key",
            format!("cannot read the provider key: {error}"),
        )
    })?;
    let trimmed = Zeroizing::new(text.trim().to_owned());
    check_provider_key(&trimmed)?;
    Ok(trimmed)
}

fn print_rows(rows: &[ProviderKeyView], json: bool) -> Result<(), Error> {
    if json {
        return print_list_json(rows);
    }
    let table = rows
        .iter()
        .map(|row| {
            vec![
                row.provider.as_str().to_owned(),
                row.owner.as_str().to_owned(),
                row.owner_id.clone(),
                row.name.clone().unwrap_or_else(|| "-".to_owned()),
                format!("…{}", row.last4),
                format_time(row.created_at),
                optional_time(row.rotated_at),
                optional_time(row.last_used_at),
            ]
        })
        .collect();
    print_table(
        &[
            "PROVIDER",
            "SCOPE",
            "OWNER",
            "NAME",
            "KEY",
            "CREATED",
            "ROTATED",
            "LAST USED",
        ],
        table,
    );
    Ok(())
}

pub fn run(admin: &mut dyn Admin, command: ProviderKeyCommand) -> Result<ExitCode, Error> {
    match command {
        ProviderKeyCommand::Add(input) => put(admin, PutMode::Add, &input),
        ProviderKeyCommand::Rotate(input) => put(admin, PutMode::Rotate, &input),
        ProviderKeyCommand::List { json } => {
            print_rows(&admin.provider_keys()?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        ProviderKeyCommand::Remove { owner, json } => {
            let removed = admin.remove_provider_key(owner.parse()?)?;
            if json {
                print_json(&removed)?;
            } else {
                println!(
                    "removed the {} key of {} {}",
                    removed.provider,
                    removed.owner.as_str(),
                    removed.owner_id
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn atty_stdin() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}

fn put(admin: &mut dyn Admin, mode: PutMode, input: &SecretInput) -> Result<ExitCode, Error> {
    if input.key_file.is_none() && atty_stdin() {
        return Err(Error::invalid(
            "no_provider_key",
            "pipe the provider key on standard input or give --key-file",
        ));
    }
    let owner = input.owner.parse()?;
    let plaintext = read_key(input.key_file.as_ref())?;
    let stored = admin.put_provider_key(PutKey {
        mode,
        owner,
        key: &plaintext,
        name: input.name.clone(),
        kek_file: input.provider_kek_file.as_deref(),
    })?;
    if input.json {
        print_json(&stored)?;
    } else {
        println!(
            "{} the {} key of {} {} (…{})",
            if mode == PutMode::Add {
                "stored"
            } else {
                "rotated"
            },
            stored.provider,
            stored.owner.as_str(),
            stored.owner_id,
            stored.last4
        );
    }
    Ok(ExitCode::SUCCESS)
}
