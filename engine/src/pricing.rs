//! The snapshot's price table: which price a model pays, and what a response's usage costs.

use crate::field_error::FieldError;
use crate::snapshot::{ModelPattern, PriceRecord};

const TOKENS_PER_PRICE_UNIT: u128 = 1_000_000;

/// Token counts, normalized across providers: `input` excludes cached reads and cache writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub input: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub output: u64,
}

/// Micro-USD per one million tokens of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub cache_write: u64,
}

impl Price {
    /// The cost in micro-USD, rounded up: a budget is never under-charged by rounding.
    pub fn cost_microusd(&self, tokens: &TokenCounts) -> u64 {
        let term = |count: u64, price: u64| u128::from(count).saturating_mul(u128::from(price));
        let weighted = term(tokens.input, self.input)
            .saturating_add(term(tokens.cached_input, self.cached_input))
            .saturating_add(term(tokens.cache_write, self.cache_write))
            .saturating_add(term(tokens.output, self.output));
        let cost = weighted.div_ceil(TOKENS_PER_PRICE_UNIT);
        u64::try_from(cost).unwrap_or(u64::MAX)
    }
}

/// Exact model names win over prefixes; among prefixes the longest wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceTable {
    entries: Vec<(ModelPattern, Price)>,
}

impl PriceTable {
    pub(crate) fn compile(records: Vec<PriceRecord>) -> Result<PriceTable, FieldError> {
        let mut entries: Vec<(ModelPattern, Price)> = Vec::with_capacity(records.len());
        for (position, record) in records.into_iter().enumerate() {
            let path = format!("[{position}].model");
            if record.model.is_empty() || record.model.len() > 256 || record.model == "*" {
                return Err(FieldError::new(
                    path,
                    "must be a model name or a non-empty prefix ending in *",
                ));
            }
            let pattern = ModelPattern::parse(&record.model);
            if entries.iter().any(|(seen, _)| *seen == pattern) {
                return Err(FieldError::new(
                    path,
                    format!("duplicate price for {:?}", record.model),
                ));
            }
            let price = Price {
                input: record.input_microusd_per_mtok,
                output: record.output_microusd_per_mtok,
                cached_input: record
                    .cached_input_microusd_per_mtok
                    .unwrap_or(record.input_microusd_per_mtok),
                cache_write: record
                    .cache_write_microusd_per_mtok
                    .unwrap_or(record.input_microusd_per_mtok),
            };
            entries.push((pattern, price));
        }
        Ok(PriceTable { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn price_for(&self, model: &str) -> Option<Price> {
        let mut best: Option<(usize, Price)> = None;
        for (pattern, price) in &self.entries {
            match pattern {
                ModelPattern::Exact(exact) if exact == model => return Some(*price),
                ModelPattern::Prefix(prefix)
                    if model.starts_with(prefix.as_str())
                        && best.is_none_or(|(length, _)| prefix.len() > length) =>
                {
                    best = Some((prefix.len(), *price));
                }
                _ => {}
            }
        }
        best.map(|(_, price)| price)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn record(model: &str, input: u64, output: u64) -> PriceRecord {
        PriceRecord {
            model: model.to_owned(),
            input_microusd_per_mtok: input,
            output_microusd_per_mtok: output,
            cached_input_microusd_per_mtok: None,
            cache_write_microusd_per_mtok: None,
        }
    }

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins() {
        let table = PriceTable::compile(vec![
            record("gpt-4o*", 2_500_000, 10_000_000),
            record("gpt-4o-mini*", 150_000, 600_000),
            record("gpt-4o-mini-special", 1, 2),
        ])
        .expect("valid");
        assert_eq!(
            table.price_for("gpt-4o-2024-08-06").map(|p| p.input),
            Some(2_500_000)
        );
        assert_eq!(
            table.price_for("gpt-4o-mini-2024").map(|p| p.input),
            Some(150_000)
        );
        assert_eq!(
            table.price_for("gpt-4o-mini-special").map(|p| p.input),
            Some(1)
        );
        assert_eq!(table.price_for("claude-3"), None);
    }

    #[test]
    fn cost_rounds_up_and_prices_every_kind() {
        let price = Price {
            input: 2_500_000,
            output: 10_000_000,
            cached_input: 1_250_000,
            cache_write: 3_000_000,
        };
        let tokens = TokenCounts {
            input: 1000,
            cached_input: 2000,
            cache_write: 100,
            output: 500,
        };
        // 2500 + 2500 + 300 + 5000 micro-USD.
        assert_eq!(price.cost_microusd(&tokens), 10_300);
        let one = TokenCounts {
            input: 1,
            ..TokenCounts::default()
        };
        assert_eq!(price.cost_microusd(&one), 3, "2.5 rounds up to 3");
        assert_eq!(price.cost_microusd(&TokenCounts::default()), 0);
        let huge = TokenCounts {
            output: u64::MAX,
            ..TokenCounts::default()
        };
        assert_eq!(
            price.cost_microusd(&huge),
            u64::MAX,
            "saturates, never wraps"
        );
    }

    #[test]
    fn rejects_duplicates_and_bare_star() {
        assert!(PriceTable::compile(vec![record("a", 1, 1), record("a", 2, 2)]).is_err());
        assert!(PriceTable::compile(vec![record("*", 1, 1)]).is_err());
        assert!(PriceTable::compile(vec![record("", 1, 1)]).is_err());
        let defaults = PriceTable::compile(vec![record("m", 7, 9)]).expect("valid");
        let price = defaults.price_for("m").expect("priced");
        assert_eq!((price.cached_input, price.cache_write), (7, 7));
    }
}
