//! Price lists in the de-facto standard format of this field: LiteLLM's
//! `model_prices_and_context_window.json` (a JSON object of model name to
//! `{"input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
//! "cache_creation_input_token_cost", "litellm_provider", "mode", ...}`, costs in USD per
//! token). keyward keeps micro-USD per million tokens, so a cost per token becomes
//! `cost × 10¹²`, rounded to the nearest micro-dollar per million.
//!
//! keyward ships a small default catalog in that format for common OpenAI, Anthropic and Google
//! chat models, with the date its prices were taken from the providers' price lists.

use std::collections::BTreeMap;

use keyward_engine::snapshot::PriceRecord;
use serde::Deserialize;

use crate::error::Error;

/// The default catalog and the date of its prices.
pub const DEFAULT_CATALOG: &str = include_str!("../catalog/default-prices.json");
pub const DEFAULT_CATALOG_DATE: &str = "2025-08-07";
pub const DEFAULT_CATALOG_SOURCE: &str = "keyward-default-catalog";

/// Modes whose prices are per token of a chat or completion (embeddings, images, audio and the
/// rest are priced otherwise, and keyward does not meter them).
const PRICED_MODES: [&str; 3] = ["chat", "completion", "responses"];

/// One entry of the file: only the fields keyward reads (the format has dozens more).
#[derive(Deserialize)]
struct Entry {
    input_cost_per_token: Option<f64>,
    output_cost_per_token: Option<f64>,
    cache_read_input_token_cost: Option<f64>,
    cache_creation_input_token_cost: Option<f64>,
    litellm_provider: Option<String>,
    mode: Option<String>,
}

/// USD per token as micro-USD per million tokens; `None` for a negative, absurd or
/// non-finite cost.
fn per_million(cost: f64) -> Option<u64> {
    let scaled = (cost * 1e12).round();
    // Above $1M per million tokens is no price list a gateway should trust.
    (scaled.is_finite() && (0.0..=1e12).contains(&scaled)).then_some(scaled as u64)
}

/// What a parse kept and skipped.
#[derive(Debug, Default)]
pub struct Parsed {
    pub prices: Vec<PriceRecord>,
    /// Entries left out: other providers, other modes, no token prices.
    pub skipped: usize,
    /// Entries with a cost that is not a plausible number, by name.
    pub invalid: Vec<String>,
}

/// Reads a LiteLLM price file. `providers` (empty: all) keeps entries of those
/// `litellm_provider`s. A name prefixed with its own provider (`gemini/gemini-2.5-pro`) is
/// stored without the prefix, the name clients send to that provider's API; where both
/// spellings exist, the bare entry wins.
pub fn parse_litellm(json: &str, providers: &[String]) -> Result<Parsed, Error> {
    let entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|error| {
            Error::invalid(
                "invalid_price_file",
                format!("not a LiteLLM price file (a JSON object of model names): {error}"),
            )
        })?;
    let mut parsed = Parsed::default();
    let mut kept: BTreeMap<String, (bool, PriceRecord)> = BTreeMap::new();
    for (name, value) in entries {
        if name == "sample_spec" {
            continue;
        }
        let Ok(entry) = serde_json::from_value::<Entry>(value) else {
            parsed.skipped += 1;
            continue;
        };
        let provider = entry.litellm_provider.unwrap_or_default();
        let mode_priced = entry
            .mode
            .as_deref()
            .is_none_or(|mode| PRICED_MODES.contains(&mode));
        let wanted = providers.is_empty() || providers.contains(&provider);
        let (Some(input), Some(output), true, true) = (
            entry.input_cost_per_token,
            entry.output_cost_per_token,
            mode_priced,
            wanted,
        ) else {
            parsed.skipped += 1;
            continue;
        };
        let optional = |cost: Option<f64>| cost.map(per_million);
        let (Some(input), Some(output), Some(cached), Some(cache_write)) = (
            per_million(input),
            per_million(output),
            optional(entry.cache_read_input_token_cost).map_or(Some(None), |c| c.map(Some)),
            optional(entry.cache_creation_input_token_cost).map_or(Some(None), |c| c.map(Some)),
        ) else {
            parsed.invalid.push(name);
            continue;
        };
        let prefix = format!("{provider}/");
        let (model, bare) = match name.strip_prefix(&prefix) {
            Some(stripped) if !provider.is_empty() => (stripped.to_owned(), false),
            _ => (name.clone(), true),
        };
        if model.is_empty() || model.len() > 256 || model.contains('*') {
            parsed.invalid.push(name);
            continue;
        }
        let record = PriceRecord {
            model: model.clone(),
            input_microusd_per_mtok: input,
            output_microusd_per_mtok: output,
            cached_input_microusd_per_mtok: cached,
            cache_write_microusd_per_mtok: cache_write,
        };
        // A bare name beats a prefixed one; otherwise the first (in name order) stays.
        let replaces = kept.get(&model).map(|(kept_bare, _)| bare && !kept_bare);
        match replaces {
            Some(false) => parsed.skipped += 1,
            Some(true) => {
                parsed.skipped += 1;
                kept.insert(model, (bare, record));
            }
            None => {
                kept.insert(model, (bare, record));
            }
        }
    }
    parsed.prices = kept.into_values().map(|(_, record)| record).collect();
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
        "sample_spec": {"input_cost_per_token": 0.0, "mode": "one of: chat, embedding"},
        "gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                   "cache_read_input_token_cost": 1.25e-06, "litellm_provider": "openai",
                   "mode": "chat", "max_tokens": 16384, "supports_vision": true},
        "claude-sonnet-4-20250514": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                   "cache_read_input_token_cost": 3e-07, "cache_creation_input_token_cost": 3.75e-06,
                   "litellm_provider": "anthropic", "mode": "chat"},
        "gemini/gemini-2.5-flash": {"input_cost_per_token": 3e-07, "output_cost_per_token": 2.5e-06,
                   "litellm_provider": "gemini", "mode": "chat"},
        "text-embedding-3-small": {"input_cost_per_token": 2e-08, "output_cost_per_token": 0.0,
                   "litellm_provider": "openai", "mode": "embedding"},
        "dall-e-3": {"output_cost_per_image": 0.04, "litellm_provider": "openai", "mode": "image_generation"},
        "broken": {"input_cost_per_token": -1.0, "output_cost_per_token": 1e-06, "litellm_provider": "openai"}
    }"#;

    #[test]
    fn a_litellm_file_becomes_micro_dollars_per_million_tokens() {
        let parsed = parse_litellm(SAMPLE, &[]).unwrap();
        let models: Vec<&str> = parsed.prices.iter().map(|p| p.model.as_str()).collect();
        assert_eq!(
            models,
            ["claude-sonnet-4-20250514", "gemini-2.5-flash", "gpt-4o"]
        );
        let gpt = &parsed.prices[2];
        assert_eq!(
            (
                gpt.input_microusd_per_mtok,
                gpt.output_microusd_per_mtok,
                gpt.cached_input_microusd_per_mtok,
                gpt.cache_write_microusd_per_mtok
            ),
            (2_500_000, 10_000_000, Some(1_250_000), None)
        );
        assert_eq!(
            parsed.prices[0].cache_write_microusd_per_mtok,
            Some(3_750_000)
        );
        assert_eq!(parsed.invalid, ["broken"]);
        assert_eq!(parsed.skipped, 2, "the embedding and the image model");
        let openai = parse_litellm(SAMPLE, &["openai".to_owned()]).unwrap();
        assert_eq!(openai.prices.len(), 1);
        assert!(parse_litellm("[1, 2]", &[]).is_err());
    }

    #[test]
    fn the_default_catalog_parses_and_the_engine_accepts_it() {
        let parsed = parse_litellm(DEFAULT_CATALOG, &[]).unwrap();
        assert!(parsed.prices.len() >= 20);
        assert!(parsed.invalid.is_empty());
        let snapshot = keyward_engine::snapshot::Snapshot {
            version: 1,
            issued_at: 1,
            expires_at: None,
            projects: vec![],
            keys: vec![],
            prices: parsed.prices,
            price_catalog: None,
            plans: vec![],
            provider_keys: None,
        };
        let policy = keyward_engine::snapshot::Policy::compile(snapshot).unwrap();
        let gpt = policy.prices().price_for("gpt-4o-mini").unwrap();
        assert_eq!((gpt.input, gpt.output), (150_000, 600_000));
        assert!(policy.prices().price_for("gemini-2.5-pro").is_some());
        assert!(policy
            .prices()
            .price_for("claude-sonnet-4-20250514")
            .is_some());
    }
}
