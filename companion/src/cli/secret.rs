//! `keyward secret`: the control plane's own secrets, from the OS CSPRNG, into new 0600 files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::valid_actor;
use crate::error::Error;
use crate::secrets;

#[derive(Subcommand)]
pub enum SecretCommand {
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

pub fn run(command: SecretCommand) -> Result<ExitCode, Error> {
    match command {
        SecretCommand::SigningKey { out } => {
            secrets::write_secret_file(&out, &secrets::generate_signing_secret()?)?;
            eprintln!("wrote a new signing secret to {}", out.display());
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
