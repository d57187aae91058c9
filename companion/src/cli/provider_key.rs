//! `keyward provider-key`: customers' own model-provider keys, per project or per org (the org's
//! is the fallback), stored encrypted under the KEK and delivered to the data planes sealed.
//! Local mode only: the KEK stays on the control plane's host.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use keyward_engine::provider::{KeyOwnerKind, Provider};
use zeroize::Zeroizing;

use super::output::{print_json, print_list_json, print_table};
use super::StoreArg;
use crate::error::Error;
use crate::provider_secrets::{check_provider_key, last4, Kek, ProviderSealing};
use crate::store::{ProviderKeyRow, PutMode};
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
    fn parse(&self) -> Result<(Provider, KeyOwnerKind, String), Error> {
        let provider = Provider::parse(&self.provider).ok_or_else(|| {
            let known: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
            Error::invalid(
                "unknown_provider",
                format!("--provider must be one of {}", known.join(", ")),
            )
        })?;
        match (&self.project, &self.org) {
            (Some(project), None) => Ok((provider, KeyOwnerKind::Project, project.clone())),
            (None, Some(org)) => Ok((provider, KeyOwnerKind::Org, org.clone())),
            _ => Err(Error::invalid(
                "invalid_owner",
                "give exactly one of --project and --org",
            )),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct SecretInput {
    #[command(flatten)]
    owner: OwnerArgs,
    /// The KEK file (`keyward secret provider-kek`).
    #[arg(long, env = "KEYWARD_PROVIDER_KEK_FILE", value_name = "FILE")]
    provider_kek_file: PathBuf,
    /// Read the provider key from this file instead of standard input (never from an argument:
    /// arguments are visible to every user of the host).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum ProviderKeyCommand {
    /// Store a provider key (read from standard input or --key-file), encrypted.
    Add(SecretInput),
    /// Replace a stored provider key; data planes use the new one from the next snapshot.
    Rotate(SecretInput),
    /// List provider keys: provider, owner, last 4 characters, created, rotated.
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

fn print_rows(rows: &[ProviderKeyRow], json: bool) -> Result<(), Error> {
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
                format!("…{}", row.last4),
                format_time(row.created_at),
                row.rotated_at.map_or_else(|| "-".to_owned(), format_time),
            ]
        })
        .collect();
    print_table(
        &["PROVIDER", "SCOPE", "OWNER", "KEY", "CREATED", "ROTATED"],
        table,
    );
    Ok(())
}

pub fn run(db: &StoreArg, actor: &str, command: ProviderKeyCommand) -> Result<ExitCode, Error> {
    let mut store = db.open()?;
    match command {
        ProviderKeyCommand::Add(input) | ProviderKeyCommand::Rotate(input)
            if input.key_file.is_none() && atty_stdin() =>
        {
            let _ = input;
            Err(Error::invalid(
                "no_provider_key",
                "pipe the provider key on standard input or give --key-file",
            ))
        }
        ProviderKeyCommand::Add(input) => put(&mut store, actor, PutMode::Add, &input),
        ProviderKeyCommand::Rotate(input) => put(&mut store, actor, PutMode::Rotate, &input),
        ProviderKeyCommand::List { json } => {
            print_rows(&store.provider_keys()?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        ProviderKeyCommand::Remove { owner, json } => {
            let (provider, kind, id) = owner.parse()?;
            let removed = store.remove_provider_key(actor, now(), provider, kind, &id)?;
            if json {
                print_json(&removed)?;
            } else {
                println!("removed the {provider} key of {} {id}", kind.as_str());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn atty_stdin() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}

fn put(
    store: &mut crate::store::Store,
    actor: &str,
    mode: PutMode,
    input: &SecretInput,
) -> Result<ExitCode, Error> {
    let (provider, owner, owner_id) = input.owner.parse()?;
    let kek = Kek::load(&input.provider_kek_file)?;
    let plaintext = read_key(input.key_file.as_ref())?;
    let row = ProviderKeyRow {
        provider,
        owner,
        ciphertext: kek.encrypt(provider, owner, &owner_id, &plaintext)?,
        last4: last4(&plaintext),
        owner_id,
        created_at: 0,
        rotated_at: None,
    };
    let stored = store.put_provider_key(actor, now(), mode, row)?;
    if input.json {
        print_json(&stored)?;
    } else {
        println!(
            "{} the {provider} key of {} {} (…{})",
            if mode == PutMode::Add {
                "stored"
            } else {
                "rotated"
            },
            owner.as_str(),
            stored.owner_id,
            stored.last4
        );
    }
    Ok(ExitCode::SUCCESS)
}
