//! The admin API's wire types: the request and answer bodies of `keyward serve`, which the
//! server parses and the remote CLI (`keyward --server URL`) sends. One definition for both, and
//! for the OpenAPI document. Optional fields left out of a request keep their default; in a
//! PATCH, `null` clears a field and a field left out is left alone.

use keyward_engine::snapshot::RateLimits;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::error::Error;
use crate::keygen::{Environment, Format};
use crate::store::KeyView;
use crate::units::parse_usd;
use keyward_engine::snapshot::PriceRecord;

/// `Some(None)` for an explicit `null`, so PATCH can clear a field; absent stays `None`.
fn explicit_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A list answer: `{"data": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    pub data: Vec<T>,
}

/// A new key's answer: the plaintext (this once) next to the stored view.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedKeyBody {
    /// The plaintext key, shown this once; keyward keeps only its hash.
    pub key: String,
    pub warning: String,
    #[serde(flatten)]
    pub view: KeyView,
    /// After a rotation: the old key, in its grace period (or revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<KeyView>,
}

/// The acknowledgement of a usage report.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageAckBody {
    pub batch_id: String,
    /// The first policy version whose spend includes the batch.
    pub version: u64,
    /// The batch id was applied before: nothing changed.
    pub duplicate: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectBody {
    pub id: String,
    pub org: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_cap_microusd: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_soft_cap_microusd: Option<u64>,
}

/// Fields left out are left alone (`None`, not serialized); `null` clears one.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateProjectBody {
    #[serde(deserialize_with = "explicit_null")]
    pub spend_cap_microusd: Option<Option<u64>>,
    #[serde(deserialize_with = "explicit_null")]
    pub spend_soft_cap_microusd: Option<Option<u64>>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CreateKeyBody {
    pub project: Option<String>,
    pub org: Option<String>,
    pub format: Format,
    pub environment: Environment,
    pub scopes: Vec<String>,
    pub models: Option<Vec<String>>,
    pub expires_at: Option<u64>,
    /// A duration from now, like `30d`; instead of `expires_at`.
    pub expires_in: Option<String>,
    pub spend_cap_microusd: Option<u64>,
    pub spend_soft_cap_microusd: Option<u64>,
    /// `{"requests_per_minute"?, "tokens_per_minute"?}`, per Envoy instance.
    #[schema(value_type = Option<Object>)]
    pub rate_limits: Option<RateLimits>,
    pub label: Option<String>,
    pub note: Option<String>,
}

/// A PATCH of the rate limits: a named limit is set (or removed with `null`), the other kept.
/// Fields left out are left alone (`None`, not serialized); `null` clears one.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsPatch {
    #[serde(deserialize_with = "explicit_null")]
    pub requests_per_minute: Option<Option<u32>>,
    #[serde(deserialize_with = "explicit_null")]
    pub tokens_per_minute: Option<Option<u64>>,
}

/// Fields left out are left alone (`None`, not serialized); `null` clears one.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateKeyBody {
    pub scopes: Option<Vec<String>>,
    #[serde(deserialize_with = "explicit_null")]
    pub models: Option<Option<Vec<String>>>,
    #[serde(deserialize_with = "explicit_null")]
    pub expires_at: Option<Option<u64>>,
    pub expires_in: Option<String>,
    #[serde(deserialize_with = "explicit_null")]
    pub spend_cap_microusd: Option<Option<u64>>,
    #[serde(deserialize_with = "explicit_null")]
    pub spend_soft_cap_microusd: Option<Option<u64>>,
    /// `null` removes both limits.
    #[serde(deserialize_with = "explicit_null")]
    pub rate_limits: Option<Option<RateLimitsPatch>>,
    #[serde(deserialize_with = "explicit_null")]
    pub label: Option<Option<String>>,
    #[serde(deserialize_with = "explicit_null")]
    pub note: Option<Option<String>>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RotateKeyBody {
    /// How long the old key keeps working, like `24h` (default) or `0s`.
    pub grace: Option<String>,
}

/// A money amount in a request: a USD decimal string (`"2.50"`, as the CLI takes it) or a JSON
/// number (`2.5`), converted to micro-USD exactly (at most 6 decimals), never through a float sum.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Usd {
    Text(String),
    #[schema(value_type = f64)]
    Number(serde_json::Number),
}

impl Usd {
    pub fn microusd(&self, field: &str) -> Result<u64, Error> {
        let text = match self {
            Usd::Text(text) => text.clone(),
            // serde_json prints a float in its shortest round-trip form (0.075 -> "0.075"), so
            // the decimal the client wrote is what gets parsed.
            Usd::Number(number) => number.to_string(),
        };
        parse_usd(&text).map_err(|error| {
            Error::invalid("invalid_amount", format!("{field}: {}", error.message))
        })
    }
}

/// `PUT /v1/prices/{model}`: each price in USD per 1M tokens (`*_usd_per_mtok`) or in integer
/// micro-USD per 1M tokens (`*_microusd_per_mtok`, as `GET` shows them); not both.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PriceBody {
    pub input_usd_per_mtok: Option<Usd>,
    pub input_microusd_per_mtok: Option<u64>,
    pub output_usd_per_mtok: Option<Usd>,
    pub output_microusd_per_mtok: Option<u64>,
    pub cached_input_usd_per_mtok: Option<Usd>,
    pub cached_input_microusd_per_mtok: Option<u64>,
    pub cache_write_usd_per_mtok: Option<Usd>,
    pub cache_write_microusd_per_mtok: Option<u64>,
}

fn price_field(usd: Option<&Usd>, micros: Option<u64>, kind: &str) -> Result<Option<u64>, Error> {
    match (usd, micros) {
        (Some(_), Some(_)) => Err(Error::invalid(
            "invalid_field",
            format!("Give {kind}_usd_per_mtok or {kind}_microusd_per_mtok, not both."),
        )),
        (Some(usd), None) => usd.microusd(&format!("{kind}_usd_per_mtok")).map(Some),
        (None, micros) => Ok(micros),
    }
}

fn required_price(value: Option<u64>, kind: &str) -> Result<u64, Error> {
    value.ok_or_else(|| {
        Error::invalid(
            "invalid_field",
            format!("{kind}_usd_per_mtok (or {kind}_microusd_per_mtok) is required."),
        )
    })
}

impl PriceBody {
    /// The price record this body describes for `model`.
    pub fn record(&self, model: String) -> Result<PriceRecord, Error> {
        let input = price_field(
            self.input_usd_per_mtok.as_ref(),
            self.input_microusd_per_mtok,
            "input",
        )?;
        let output = price_field(
            self.output_usd_per_mtok.as_ref(),
            self.output_microusd_per_mtok,
            "output",
        )?;
        Ok(PriceRecord {
            model,
            input_microusd_per_mtok: required_price(input, "input")?,
            output_microusd_per_mtok: required_price(output, "output")?,
            cached_input_microusd_per_mtok: price_field(
                self.cached_input_usd_per_mtok.as_ref(),
                self.cached_input_microusd_per_mtok,
                "cached_input",
            )?,
            cache_write_microusd_per_mtok: price_field(
                self.cache_write_usd_per_mtok.as_ref(),
                self.cache_write_microusd_per_mtok,
                "cache_write",
            )?,
        })
    }
}

/// `POST /v1/provider-keys`: a customer's provider key to store, for a project or an org (not
/// both). The key is stored encrypted and never returned; the answer shows its last 4
/// characters. The key is wiped from memory when the body is dropped.
#[derive(Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderKeyBody {
    /// `openai`, `anthropic`, `azure`, `google`, `mistral`, `groq`, `deepseek`, `cohere`, `xai`
    /// or `perplexity`.
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The org whose key it is: the fallback of every project of the org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The provider key: 1 to 1024 printable characters without spaces.
    pub key: String,
    /// A name for people, shown by `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /v1/provider-keys/{scope}/{provider}/{owner_id}/rotate`: the new key (and optionally a
/// new name; left out, the name is kept). Wiped from memory when dropped.
#[derive(Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateProviderKeyBody {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Drop for ProviderKeyBody {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl Drop for RotateProviderKeyBody {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}
