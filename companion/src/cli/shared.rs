//! Arguments several commands take, defined once: signing keys, spend caps, expiry, lists.

use std::path::PathBuf;

use clap::Args;

use crate::error::Error;
use crate::units::{now, parse_duration_seconds, parse_usd};

#[derive(Args)]
pub struct SigningKeyArgs {
    /// The signing key's id (the filter's `signing_keys[].id`).
    #[arg(long, env = "KEYWARD_SIGNING_KEY_ID")]
    pub signing_key_id: String,
    /// File holding the base64 signing secret (at least 32 bytes; `keyward secret signing-key`).
    #[arg(long, env = "KEYWARD_SIGNING_KEY_FILE")]
    pub signing_key_file: PathBuf,
}

#[derive(Args)]
#[group(multiple = false)]
pub struct ExpiryArgs {
    /// Expiry as Unix seconds.
    #[arg(long)]
    pub expires_at: Option<u64>,
    /// Expiry as a duration from now: 30d, 12h, 90m.
    #[arg(long)]
    pub expires_in: Option<String>,
}

impl ExpiryArgs {
    pub fn resolve(&self) -> Result<Option<u64>, Error> {
        match (&self.expires_at, &self.expires_in) {
            (Some(at), _) => Ok(Some(*at)),
            (None, Some(text)) => Ok(Some(now().saturating_add(parse_duration_seconds(text)?))),
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

fn usd(text: Option<&str>) -> Result<Option<u64>, Error> {
    text.map(parse_usd).transpose()
}

/// The spend caps of a new key or project.
#[derive(Args)]
pub struct SpendCapArgs {
    /// Spend cap in USD, e.g. 250 or 12.50.
    #[arg(long)]
    spend_cap_usd: Option<String>,
    /// Soft cap in USD, below the cap: past it the filter adds a warning header.
    #[arg(long, visible_alias = "soft-cap")]
    spend_soft_cap_usd: Option<String>,
}

impl SpendCapArgs {
    /// (cap, soft cap) in micro-USD.
    pub fn microusd(&self) -> Result<(Option<u64>, Option<u64>), Error> {
        Ok((
            usd(self.spend_cap_usd.as_deref())?,
            usd(self.spend_soft_cap_usd.as_deref())?,
        ))
    }
}

/// A change of a key's or project's spend caps: set one, remove one, or leave it.
#[derive(Args)]
pub struct SpendCapChangeArgs {
    /// New spend cap in USD.
    #[arg(long, conflicts_with = "no_spend_cap")]
    spend_cap_usd: Option<String>,
    /// Remove the spend cap.
    #[arg(long)]
    no_spend_cap: bool,
    /// New soft cap in USD.
    #[arg(long, visible_alias = "soft-cap", conflicts_with = "no_soft_cap")]
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
        let change = |text: Option<&str>, clear: bool| -> Result<CapChange, Error> {
            if clear {
                Ok(Some(None))
            } else {
                Ok(usd(text)?.map(Some))
            }
        };
        Ok((
            change(self.spend_cap_usd.as_deref(), self.no_spend_cap)?,
            change(self.spend_soft_cap_usd.as_deref(), self.no_soft_cap)?,
        ))
    }
}
