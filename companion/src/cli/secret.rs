//! `keyward secret`: the control plane's own secrets, from the OS CSPRNG, into new 0600 files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::valid_actor;
use crate::error::Error;
use crate::provider_secrets::{generate_fleet_key, Kek};
use crate::secrets;

#[derive(Subcommand)]
pub enum SecretCommand {
    /// A new snapshot signing key pair (Ed25519): the private key (PKCS#8 PEM, mode 0600) for
    /// `keyward serve` only, and its public key (base64) for the filters' `sync.public_keys`.
    SigningKey {
        /// The private key file (created 0600; must not exist).
        #[arg(long)]
        out: PathBuf,
        /// The public key file (default: OUT.pub).
        #[arg(long)]
        public_out: Option<PathBuf>,
    },
    /// Print the public key (base64) of a signing key file, e.g. to configure filters again.
    PublicKey {
        /// The private key file.
        #[arg(long)]
        signing_key_file: PathBuf,
    },
    /// A new budget webhook secret (32 random bytes, base64) for `serve --webhook-secret-file`;
    /// receivers check `x-keyward-signature` with it.
    WebhookSecret {
        /// The secret file (created 0600; must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// A new key-encryption key for provider keys (32 random bytes, base64) for
    /// `--provider-kek-file`: provider keys are stored encrypted under it, and it is never in
    /// the store.
    ProviderKek {
        /// The KEK file (created 0600; must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// A new fleet key pair (X25519) for provider keys: the private key (base64, 0600) goes to
    /// every data plane in KEYWARD_FLEET_PRIVATE_KEY, the public key (OUT.pub) to
    /// `--fleet-public-key-file`, which seals provider keys into snapshots.
    FleetKey {
        /// The private key file (created 0600; must not exist).
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

pub fn run(command: SecretCommand) -> Result<ExitCode, Error> {
    match command {
        SecretCommand::SigningKey { out, public_out } => {
            let public_out = public_out.unwrap_or_else(|| {
                let mut name = out.clone().into_os_string();
                name.push(".pub");
                PathBuf::from(name)
            });
            if public_out.exists() {
                return Err(Error::invalid(
                    "cannot_write_public_key",
                    format!("{} exists already", public_out.display()),
                ));
            }
            let (private_pem, public) = secrets::generate_signing_key("signing-key")?;
            secrets::write_secret_file(&out, &private_pem)?;
            // Public: readable by anyone is fine (and what the filters are configured with).
            std::fs::write(&public_out, format!("{}\n", public.to_base64())).map_err(|error| {
                Error::internal(format!("cannot write {}: {error}", public_out.display()))
            })?;
            println!("{}", public.to_base64());
            eprintln!(
                "wrote a new Ed25519 signing key to {} (private, 0600: for keyward serve only) \
                 and its public key to {} (for the filters' sync.public_keys)",
                out.display(),
                public_out.display()
            );
        }
        SecretCommand::PublicKey { signing_key_file } => {
            let key = secrets::load_signing_key("signing-key", &signing_key_file)?;
            println!("{}", key.public_key().to_base64());
        }
        SecretCommand::WebhookSecret { out } => {
            secrets::write_secret_file(&out, &secrets::generate_webhook_secret()?)?;
            eprintln!("wrote a new webhook secret to {}", out.display());
        }
        SecretCommand::ProviderKek { out } => {
            secrets::write_secret_file(&out, &Kek::generate()?)?;
            eprintln!("wrote a new provider-key KEK to {}", out.display());
        }
        SecretCommand::FleetKey { out } => {
            let mut public_out = out.clone().into_os_string();
            public_out.push(".pub");
            let public_out = PathBuf::from(public_out);
            if public_out.exists() {
                return Err(Error::invalid(
                    "cannot_write_public_key",
                    format!("{} exists already", public_out.display()),
                ));
            }
            let (private, public) = generate_fleet_key()?;
            secrets::write_secret_file(&out, &private)?;
            std::fs::write(&public_out, format!("{public}\n")).map_err(|error| {
                Error::internal(format!("cannot write {}: {error}", public_out.display()))
            })?;
            println!("{public}");
            eprintln!(
                "wrote a new fleet private key to {} (0600: for the data planes' \
                 KEYWARD_FLEET_PRIVATE_KEY only) and its public key to {}",
                out.display(),
                public_out.display()
            );
        }
        SecretCommand::AdminToken { name, out } => {
            if !valid_actor(&name) {
                return Err(Error::invalid(
                    "invalid_actor",
                    "--name must be 1 to 64 characters of A-Z a-z 0-9 _ - . @",
                ));
            }
            let line = format!("{name}:{}", secrets::generate_admin_token());
            secrets::write_secret_file(&out, &line)?;
            eprintln!("wrote a new admin token named {name} to {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
