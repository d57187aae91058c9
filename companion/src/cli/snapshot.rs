//! `keyward snapshot`: build, import and verify signed policy snapshots.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use keyward_engine::signed_snapshot::verify_snapshot;
use keyward_engine::snapshot::KeyStatus;

use super::shared::SigningKeyArgs;
use super::StoreArg;
use crate::error::Error;
use crate::publish;
use crate::secrets;
use crate::units::now;

#[derive(Subcommand)]
pub enum SnapshotCommand {
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

pub fn run(db: &StoreArg, actor: &str, command: SnapshotCommand) -> Result<ExitCode, Error> {
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
            let mut store = db.open()?;
            let (projects, keys, prices) = store.import_snapshot(actor, now(), &snapshot)?;
            println!("imported {projects} projects, {keys} keys and {prices} prices");
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Build { signing, out } => {
            let key =
                secrets::load_signing_key(&signing.signing_key_id, &signing.signing_key_file)?;
            let mut store = db.open()?;
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
