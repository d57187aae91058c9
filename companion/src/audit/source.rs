//! Where the audited snapshot and configuration come from, loaded and checked with the engine.

use std::fs;
use std::path::{Path, PathBuf};

use clap::Args;
use keyward_engine::config::PluginConfig;
use keyward_engine::signed_snapshot::{verify_snapshot, SigningKey, ENVELOPE_FORMAT};
use keyward_engine::snapshot::{Policy, Snapshot};
use serde_json::Value;

use crate::client::ControlPlane;
use crate::error::Error;
use crate::secrets;

/// Where the snapshot comes from, and how to check it. Shared by `audit` and `explain`.
#[derive(Args, Debug, Clone)]
pub struct SnapshotSource {
    /// A snapshot file: a signed envelope (`keyward snapshot build`) or a plain snapshot.
    #[arg(long, conflicts_with = "control_plane")]
    pub snapshot: Option<PathBuf>,
    /// Fetch the snapshot from a control plane: GET URL/v1/snapshot (http or https).
    #[arg(long)]
    pub control_plane: Option<String>,
    /// The plugin configuration (JSON) the filter runs with.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Verify the envelope with this signing key id (with --signing-key-file).
    #[arg(long, requires = "signing_key_file")]
    pub signing_key_id: Option<String>,
    #[arg(long, requires = "signing_key_id")]
    pub signing_key_file: Option<PathBuf>,
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
    let config_bytes = read_file(config_path, "plugin configuration")?;
    let config = PluginConfig::from_json(&config_bytes).map_err(|error| {
        Error::invalid(
            "invalid_plugin_config",
            format!("invalid configuration: {error}"),
        )
    })?;
    let bytes = match (&source.snapshot, &source.control_plane) {
        (Some(path), _) => Some(read_file(path, "snapshot")?),
        (None, Some(url)) => Some(ControlPlane::new(url)?.get_bytes("/v1/snapshot")?),
        (None, None) => None,
    };
    let signing_key = match (&source.signing_key_id, &source.signing_key_file) {
        (Some(id), Some(file)) => Some(secrets::load_signing_key(id, file)?),
        _ => None,
    };
    let (snapshot, signature) = match bytes {
        Some(bytes) => parse_snapshot(&bytes, signing_key.as_ref())?,
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
        snapshot,
        policy,
        signature,
        now: source.now.unwrap_or_else(crate::units::now),
    })
}

fn parse_snapshot(
    bytes: &[u8],
    signing_key: Option<&SigningKey>,
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
    let signature = match signing_key {
        Some(key) => {
            verify_snapshot(bytes, std::slice::from_ref(key)).map_err(|rejected| {
                invalid(format!(
                    "the snapshot does not verify ({}): {rejected}",
                    rejected.reason()
                ))
            })?;
            Signature::Verified(key_id)
        }
        None => Signature::NotVerified(key_id),
    };
    let inner = document
        .get("snapshot")
        .cloned()
        .ok_or_else(|| invalid("the envelope has no snapshot".to_owned()))?;
    let snapshot: Snapshot = serde_json::from_value(inner)
        .map_err(|error| invalid(format!("invalid snapshot: {error}")))?;
    Ok((snapshot, signature))
}
