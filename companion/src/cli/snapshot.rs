//! `keyward snapshot`: build, import and verify signed policy snapshots.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use keyward_engine::signed_snapshot::verify_snapshot;
use keyward_engine::snapshot::KeyStatus;

use super::shared::{load_public_keys, SigningKeyArgs};
use super::StoreArg;
use crate::client::ControlPlane;
use crate::error::Error;
use crate::last_good;
use crate::publish;
use crate::secrets;
use crate::units::now;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Build a signed snapshot of the whole policy.
    Build {
        #[command(flatten)]
        signing: SigningKeyArgs,
        /// How long it is valid: filters refuse it afterwards.
        #[arg(long, default_value = crate::publish::DEFAULT_SNAPSHOT_TTL)]
        ttl: String,
        /// Write it here (atomically) instead of to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        provider_sealing: super::provider_key::ProviderSealingArgs,
    },
    /// Import the projects and keys of a plain snapshot file (hashes only) into the store:
    /// for moving existing hashed keys in.
    Import { file: PathBuf },
    /// Check a signed snapshot: exit 0 and print what it holds, or exit 1 with the reason.
    Verify {
        file: PathBuf,
        /// A public key to verify with: ID=FILE (repeatable, as filters hold several while keys
        /// rotate).
        #[arg(long = "public-key", value_name = "ID=FILE", required = true)]
        public_keys: Vec<String>,
        /// Check expiry as of this Unix time instead of now.
        #[arg(long)]
        now: Option<u64>,
    },
    /// Keep a last-known-good file for Envoy (`render envoy --last-good-file`): fetch the
    /// control plane's signed snapshot, verify it, and write it atomically (0600); a file
    /// holding a newer snapshot is never replaced by an older one. Run it from a timer or a
    /// sidecar next to Envoy.
    Fetch {
        /// The control plane's base URL: http(s)://HOST:PORT (https verified against --ca-file).
        #[arg(long)]
        control_plane: String,
        /// A file holding the data-plane token (`keyward dataplane token create`).
        #[arg(long, env = "KEYWARD_SNAPSHOT_TOKEN_FILE")]
        snapshot_token_file: Option<PathBuf>,
        /// A public key the snapshot must verify with: ID=FILE (repeatable), as the filters
        /// hold.
        #[arg(long = "public-key", value_name = "ID=FILE", required = true)]
        public_keys: Vec<String>,
        /// The last-known-good file to keep.
        #[arg(long)]
        out: PathBuf,
    },
}

/// The `key_id` of a signed envelope, or `None` for anything else.
fn envelope_key_id(bytes: &[u8]) -> Option<String> {
    let document: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    document.get("signature")?;
    document.get("format")?;
    Some(document.get("key_id")?.as_str()?.to_owned())
}

/// `keyward snapshot fetch`.
fn fetch(
    control_plane: &str,
    ca_file: Option<&Path>,
    token_file: Option<&Path>,
    public_keys: &[String],
    out: &Path,
) -> Result<ExitCode, Error> {
    let keys = load_public_keys(public_keys)?;
    let token = token_file
        .map(|path| secrets::read_token_file(path, "data-plane token"))
        .transpose()?;
    let plane = ControlPlane::with_ca(control_plane, ca_file)?;
    let fetched = last_good::fetch(&plane, token.as_deref(), &keys, out, now())?;
    let policy = &fetched.policy;
    let what = if fetched.written {
        "wrote"
    } else {
        "unchanged"
    };
    eprintln!(
        "{what} {} (mode 0600): version {}, issued_at {}, expires_at {}, {} keys",
        out.display(),
        policy.version,
        policy.issued_at,
        policy.expires_at.unwrap_or_default(),
        policy.keys().len()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run(
    db: &StoreArg,
    actor: &str,
    ca_file: Option<&Path>,
    command: SnapshotCommand,
) -> Result<ExitCode, Error> {
    match command {
        SnapshotCommand::Fetch {
            control_plane,
            snapshot_token_file,
            public_keys,
            out,
        } => fetch(
            &control_plane,
            ca_file,
            snapshot_token_file.as_deref(),
            &public_keys,
            &out,
        ),
        SnapshotCommand::Import { file } => {
            let text = fs::read(&file).map_err(|error| {
                Error::invalid(
                    "unreadable_file",
                    format!("cannot read {}: {error}", file.display()),
                )
            })?;
            if let Some(key_id) = envelope_key_id(&text) {
                return Err(Error::invalid(
                    "signed_envelope",
                    format!(
                        "{} is a signed envelope (signed with key {key_id:?}), not a plain snapshot. \
                         Check it with `keyward snapshot verify {} --signing-key-id {key_id} \
                         --signing-key-file FILE`; import takes the plain snapshot, the envelope's \
                         `snapshot` field",
                        file.display(),
                        file.display()
                    ),
                ));
            }
            let snapshot: keyward_engine::snapshot::Snapshot = serde_json::from_slice(&text)
                .map_err(|error| {
                    Error::invalid("invalid_snapshot", format!("{}: {error}", file.display()))
                })?;
            let mut store = db.open()?;
            let (projects, keys, prices) = store.import_snapshot(actor, now(), &snapshot)?;
            println!("imported {projects} projects, {keys} keys and {prices} prices");
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Build {
            signing,
            ttl,
            out,
            provider_sealing,
        } => {
            let key =
                secrets::load_signing_key(&signing.signing_key_id, &signing.signing_key_file)?;
            let ttl = super::serve::snapshot_ttl_seconds(&ttl)?;
            let mut store = db.open()?;
            store.set_provider_sealing(provider_sealing.load()?);
            let now = now();
            let signed = publish::build_signed(&mut store, &key, now, ttl)?;
            // The filter must accept what we publish: check with its own verifier.
            verify_snapshot(signed.envelope.as_bytes(), &[key.public_key()], now).map_err(
                |error| Error::internal(format!("the built snapshot does not verify: {error}")),
            )?;
            match out {
                // Atomically, and 0600: a snapshot holds every key's hash.
                Some(path) => secrets::write_private_file_atomically(&path, &signed.envelope)?,
                None => println!("{}", signed.envelope),
            }
            eprintln!(
                "snapshot version {} issued at {}: {} keys, {} projects, signed with key {}",
                signed.version, signed.issued_at, signed.keys, signed.projects, key.id
            );
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Verify {
            file,
            public_keys,
            now: at,
        } => {
            let keys = load_public_keys(&public_keys)?;
            let bytes = fs::read(&file).map_err(|error| {
                Error::invalid(
                    "unreadable_file",
                    format!("cannot read {}: {error}", file.display()),
                )
            })?;
            let given: Vec<String> = keys.iter().map(|key| key.id.clone()).collect();
            match verify_snapshot(&bytes, &keys, at.unwrap_or_else(now)) {
                Ok(policy) => {
                    let count = |status: KeyStatus| {
                        policy
                            .keys()
                            .iter()
                            .filter(|key| key.status == status)
                            .count()
                    };
                    println!(
                        "ok: version {}, issued_at {}, expires_at {}, {} keys ({} active, {} paused, {} revoked), {} projects",
                        policy.version,
                        policy.issued_at,
                        policy.expires_at.unwrap_or_default(),
                        policy.keys().len(),
                        count(KeyStatus::Active),
                        count(KeyStatus::Paused),
                        count(KeyStatus::Revoked),
                        policy.projects().len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(rejected) => {
                    let signed_with = envelope_key_id(&bytes)
                        .map(|id| {
                            format!(
                                "; the envelope names key {id:?}, --public-key gives {}",
                                given.join(", ")
                            )
                        })
                        .unwrap_or_default();
                    eprintln!(
                        "keyward: invalid snapshot ({}): {rejected}{signed_with}",
                        rejected.reason()
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}
