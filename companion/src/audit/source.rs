//! Where the audited snapshot and configuration come from, loaded and checked with the engine.

use std::fs;
use std::path::{Path, PathBuf};

use clap::Args;
use keyward_engine::config::PluginConfig;
use keyward_engine::signature::PublicKey;
use keyward_engine::signed_snapshot::{verify_snapshot, ENVELOPE_FORMAT};
use keyward_engine::snapshot::{Policy, Snapshot};
use serde_json::Value;

use super::artifact::{self, Artifact};
use crate::client::ControlPlane;
use crate::error::Error;
use crate::secrets;

/// Where the snapshot comes from, and how to check it. Shared by `audit` and `explain`.
#[derive(Args, Debug, Clone)]
pub struct SnapshotSource {
    /// A snapshot file: a signed envelope (`keyward snapshot build`) or a plain snapshot.
    #[arg(long, conflicts_with = "control_plane")]
    pub snapshot: Option<PathBuf>,
    /// Fetch the snapshot from a control plane: GET URL/v1/snapshot (http or https), with the
    /// token of --snapshot-token-file.
    #[arg(long)]
    pub control_plane: Option<String>,
    /// With --control-plane: a file holding a data-plane token (or an admin token file).
    #[arg(long, env = "KEYWARD_SNAPSHOT_TOKEN_FILE", requires = "control_plane")]
    pub snapshot_token_file: Option<PathBuf>,
    /// The plugin configuration (JSON) the filter runs with.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Verify the envelope with this public key: ID=FILE (repeatable).
    #[arg(long = "public-key", value_name = "ID=FILE")]
    pub public_keys: Vec<String>,
    /// Decide as of this Unix time instead of now (reproducible reports).
    #[arg(long)]
    pub now: Option<u64>,
}

/// How the snapshot reached us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// A signed envelope whose signature verified with the given key.
    Verified(String),
    /// A signed envelope, not verified (no signing key given).
    NotVerified(String),
    /// A plain snapshot.
    Unsigned,
}

/// A snapshot and configuration, loaded and validated with the engine.
pub struct Loaded {
    pub config: PluginConfig,
    /// What `--config` was: where the plugin configuration was found.
    pub artifact: Artifact,
    pub snapshot: Snapshot,
    pub policy: Policy,
    pub signature: Signature,
    pub now: u64,
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|error| {
        Error::invalid(
            "unreadable_file",
            format!("cannot read the {what} {}: {error}", path.display()),
        )
    })
}

/// Reads the configuration and the snapshot (file, control plane, or the configuration's inline
/// policy) and validates both with the engine.
pub fn load(source: &SnapshotSource) -> Result<Loaded, Error> {
    let config_path = source.config.as_ref().ok_or_else(|| {
        Error::invalid("missing_config", "--config PLUGIN_CONFIG.json is required")
    })?;
    let (config_bytes, artifact) =
        artifact::plugin_config(&read_file(config_path, "plugin configuration")?)?;
    let config = PluginConfig::from_json(&config_bytes).map_err(|error| {
        Error::invalid(
            "invalid_plugin_config",
            format!("invalid configuration: {error}"),
        )
    })?;
    let bytes = match (&source.snapshot, &source.control_plane) {
        (Some(path), _) => Some(read_file(path, "snapshot")?),
        (None, Some(url)) => {
            let token = source
                .snapshot_token_file
                .as_deref()
                .map(|path| secrets::read_token_file(path, "snapshot token"))
                .transpose()?;
            Some(ControlPlane::new(url)?.get_bytes("/v1/snapshot", token.as_deref())?)
        }
        (None, None) => None,
    };
    let public_keys = crate::cli::load_public_keys(&source.public_keys)?;
    let now = source.now.unwrap_or_else(crate::units::now);
    let (snapshot, signature) = match bytes {
        Some(bytes) => parse_snapshot(&bytes, &public_keys, now)?,
        None => {
            // The configuration's inline policy: it travels inside the Envoy configuration.
            let document: Value = serde_json::from_slice(&config_bytes)?;
            let inline = document.get("policy").cloned().ok_or_else(|| {
                Error::invalid(
                    "missing_snapshot",
                    "give --snapshot or --control-plane (the configuration has no inline policy)",
                )
            })?;
            let snapshot: Snapshot = serde_json::from_value(inline)
                .map_err(|error| Error::invalid("invalid_snapshot", format!("policy: {error}")))?;
            (snapshot, Signature::Unsigned)
        }
    };
    let policy = Policy::compile(snapshot.clone()).map_err(|error| {
        Error::invalid("invalid_snapshot", format!("invalid snapshot: {error}"))
    })?;
    Ok(Loaded {
        config,
        artifact,
        snapshot,
        policy,
        signature,
        now,
    })
}

fn parse_snapshot(
    bytes: &[u8],
    public_keys: &[PublicKey],
    now: u64,
) -> Result<(Snapshot, Signature), Error> {
    let invalid = |message: String| Error::invalid("invalid_snapshot", message);
    let document: Value =
        serde_json::from_slice(bytes).map_err(|error| invalid(format!("not JSON: {error}")))?;
    let is_envelope = document.get("format").is_some() && document.get("signature").is_some();
    if !is_envelope {
        let snapshot: Snapshot = serde_json::from_value(document)
            .map_err(|error| invalid(format!("invalid snapshot: {error}")))?;
        return Ok((snapshot, Signature::Unsigned));
    }
    if document.get("format").and_then(Value::as_str) != Some(ENVELOPE_FORMAT) {
        return Err(invalid("unknown envelope format".to_owned()));
    }
    let key_id = document
        .get("key_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let signature = match public_keys {
        [] => Signature::NotVerified(key_id),
        keys => {
            verify_snapshot(bytes, keys, now).map_err(|rejected| {
                invalid(format!(
                    "the snapshot does not verify ({}): {rejected}",
                    rejected.reason()
                ))
            })?;
            Signature::Verified(key_id)
        }
    };
    let inner = document
        .get("snapshot")
        .cloned()
        .ok_or_else(|| invalid("the envelope has no snapshot".to_owned()))?;
    let snapshot: Snapshot = serde_json::from_value(inner)
        .map_err(|error| invalid(format!("invalid snapshot: {error}")))?;
    Ok((snapshot, signature))
}
