//! Arguments several commands take, defined once: signing keys, spend caps, expiry, lists.

use std::path::{Path, PathBuf};

use clap::Args;
use keyward_engine::signature::PublicKey;

use crate::error::Error;
use crate::secrets;
use crate::units::{now, parse_duration_seconds, parse_usd};

#[derive(Args)]
pub struct SigningKeyArgs {
    /// The signing key's id (the filters' `sync.public_keys[].id`).
    #[arg(long, env = "KEYWARD_SIGNING_KEY_ID")]
    pub signing_key_id: String,
    /// The Ed25519 private key (PKCS#8 PEM, mode 0600; `keyward secret signing-key`). Only the
    /// control plane holds it.
    #[arg(long, env = "KEYWARD_SIGNING_KEY_FILE")]
    pub signing_key_file: PathBuf,
}

/// `ID=FILE` public keys, as the filters hold them.
pub fn load_public_keys(specs: &[String]) -> Result<Vec<PublicKey>, Error> {
    let mut keys: Vec<PublicKey> = Vec::with_capacity(specs.len());
    for spec in specs {
        let (id, file) = spec.split_once('=').ok_or_else(|| {
            Error::invalid(
                "invalid_public_key",
                format!("--public-key {spec}: expected ID=FILE"),
            )
        })?;
        let key = secrets::load_public_key(id, Path::new(file))?;
        if keys.iter().any(|known| known.id == key.id) {
            return Err(Error::invalid(
                "invalid_public_key",
                format!("--public-key: the id {id:?} is given twice"),
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

#[derive(Args)]
#[group(multiple = false)]
pub struct ExpiryArgs {
    /// Expiry as Unix seconds (in the future).
    #[arg(long)]
    pub expires_at: Option<u64>,
    /// Expiry as a positive duration from now: a number and a unit, s (seconds), m (minutes),
    /// h (hours), d (days), w (weeks), M (months), y (years); combined like 1w2d or 1h30m.
    #[arg(long)]
    pub expires_in: Option<String>,
}

impl ExpiryArgs {
    pub fn resolve(&self) -> Result<Option<u64>, Error> {
        match (&self.expires_at, &self.expires_in) {
            (Some(at), _) => Ok(Some(*at)),
            (None, Some(text)) => {
                let seconds = parse_duration_seconds(text)
                    .map_err(|error| error.with_prefix("--expires-in"))?;
                if seconds == 0 {
                    return Err(Error::invalid(
                        "invalid_duration",
                        format!("--expires-in {text}: the key would be born expired; give a positive duration"),
                    ));
                }
                Ok(Some(now().saturating_add(seconds)))
            }
            (None, None) => Ok(None),
        }
    }
}

/// `--scopes ""` means no scopes.
pub fn list_arg(values: Vec<String>) -> Vec<String> {
    if values.iter().all(String::is_empty) {
        Vec::new()
    } else {
        values
    }
}

/// `--x N` / `--no-x` as a partial update.
pub fn clearable<T>(value: Option<T>, clear: bool) -> Option<Option<T>> {
    if clear {
        Some(None)
    } else {
        value.map(Some)
    }
}

fn usd(flag: &str, text: Option<&str>) -> Result<Option<u64>, Error> {
    text.map(|text| parse_usd(text).map_err(|error| error.with_prefix(flag)))
        .transpose()
}

/// The spend caps of a new key or project.
#[derive(Args)]
pub struct SpendCapArgs {
    /// Spend cap in USD, e.g. 250 or 12.50.
    #[arg(long, allow_hyphen_values = true)]
    spend_cap_usd: Option<String>,
    /// Soft cap in USD, below the cap: past it the filter adds a warning header.
    #[arg(long, visible_alias = "soft-cap", allow_hyphen_values = true)]
    spend_soft_cap_usd: Option<String>,
}

impl SpendCapArgs {
    /// (cap, soft cap) in micro-USD.
    pub fn microusd(&self) -> Result<(Option<u64>, Option<u64>), Error> {
        Ok((
            usd("--spend-cap-usd", self.spend_cap_usd.as_deref())?,
            usd("--spend-soft-cap-usd", self.spend_soft_cap_usd.as_deref())?,
        ))
    }
}

/// A change of a key's or project's spend caps: set one, remove one, or leave it.
#[derive(Args)]
pub struct SpendCapChangeArgs {
    /// New spend cap in USD.
    #[arg(long, conflicts_with = "no_spend_cap", allow_hyphen_values = true)]
    spend_cap_usd: Option<String>,
    /// Remove the spend cap.
    #[arg(long)]
    no_spend_cap: bool,
    /// New soft cap in USD.
    #[arg(
        long,
        visible_alias = "soft-cap",
        conflicts_with = "no_soft_cap",
        allow_hyphen_values = true
    )]
    spend_soft_cap_usd: Option<String>,
    /// Remove the soft cap.
    #[arg(long)]
    no_soft_cap: bool,
}

/// A partial update of one cap: `None` keeps it, `Some(None)` removes it.
pub type CapChange = Option<Option<u64>>;

impl SpendCapChangeArgs {
    /// (cap, soft cap) as partial updates.
    pub fn changes(&self) -> Result<(CapChange, CapChange), Error> {
        let change = |flag: &str, text: Option<&str>, clear: bool| -> Result<CapChange, Error> {
            if clear {
                Ok(Some(None))
            } else {
                Ok(usd(flag, text)?.map(Some))
            }
        };
        Ok((
            change(
                "--spend-cap-usd",
                self.spend_cap_usd.as_deref(),
                self.no_spend_cap,
            )?,
            change(
                "--spend-soft-cap-usd",
                self.spend_soft_cap_usd.as_deref(),
                self.no_soft_cap,
            )?,
        ))
    }
}
