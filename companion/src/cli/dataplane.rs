//! `keyward dataplane token`: the credentials data planes present to the control plane.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::admin::Admin;
use super::output::{optional_time, print_json, print_list_json, print_table};
use crate::error::Error;
use crate::secrets;
use crate::store::Permission;
use crate::units::format_time;

#[derive(Subcommand)]
pub enum DataplaneCommand {
    /// Data-plane tokens: what a fleet of Envoys sends to read snapshots and report usage.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Issue a token; it is shown once (or written, 0600, to --out) and stored as a digest.
    Create {
        /// Names the fleet in usage batches, refusals and the audit trail (1 to 40 of
        /// A-Z a-z 0-9 _ - . @).
        #[arg(long)]
        name: String,
        /// What it may do: snapshot (read snapshots), usage (report usage).
        #[arg(long, value_delimiter = ',', default_value = "snapshot,usage")]
        permissions: Vec<String>,
        /// Write the token to this new file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The tokens: names, permissions, who created them, revocation (never the tokens).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: from now on the control plane refuses it. Its name stays taken.
    Revoke { name: String },
}

pub fn run(admin: &mut dyn Admin, command: DataplaneCommand) -> Result<ExitCode, Error> {
    let DataplaneCommand::Token(command) = command;
    match command {
        TokenCommand::Create {
            name,
            permissions,
            out,
            json,
        } => {
            let permissions = permissions
                .iter()
                .map(|text| Permission::parse(text.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            let created = admin.create_dataplane_token(&name, &permissions)?;
            match out {
                Some(path) => {
                    secrets::write_secret_file(&path, &created.token)?;
                    eprintln!(
                        "wrote the data-plane token {name} to {} (0600); put it in the filters' \
                         sync.token (render --dataplane-token-file)",
                        path.display()
                    );
                    if json {
                        print_json(&created.view)?;
                    }
                }
                None if json => print_json(&created)?,
                None => {
                    println!("{}", created.token);
                    eprintln!(
                        "data-plane token {name}: store it now, keyward keeps only its SHA-256"
                    );
                }
            }
        }
        TokenCommand::List { json } => {
            let tokens = admin.dataplane_tokens()?;
            if json {
                print_list_json(&tokens)?;
            } else {
                let rows = tokens
                    .iter()
                    .map(|token| {
                        vec![
                            token.name.clone(),
                            serde_json::to_string(&token.permissions).unwrap_or_default(),
                            format_time(token.created_at),
                            token.created_by.clone(),
                            optional_time(token.revoked_at),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "PERMISSIONS", "CREATED", "BY", "REVOKED"], rows);
            }
        }
        TokenCommand::Revoke { name } => {
            let revoked = admin.revoke_dataplane_token(&name)?;
            println!(
                "revoked data-plane token {} at {}",
                revoked.name,
                revoked.revoked_at.map_or_else(String::new, format_time)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
