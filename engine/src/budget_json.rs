//! Reads a snapshot's `limits` and `plans` by hand, over the raw-object reader the request body
//! already uses. serde's derived readers for these nested records cost about 30 KB of Wasm
//! (a copy per deserializer, each with sequence forms JSON never uses); this costs a fraction.
//! Same rules as a derived reader with `deny_unknown_fields`: unknown fields, wrong types,
//! negative or fractional numbers are errors, `null` is an absent optional field. Error paths
//! are built only on the way out of a failure, so reading costs no formatting.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::budget::{
    BudgetRecord, IncreaseRecord, LimitsRecord, PlanRecord, QuotaRecord, WindowUsage,
};
use crate::calendar::Period;
use crate::request_body::{object_entries, Entry};
use crate::snapshot::{PriceCatalog, RateLimits};

/// A failure: the path below the value being read (`.budgets[0].period`), and what is wrong.
struct Bad {
    path: String,
    what: &'static str,
}

type Read<T> = Result<T, Bad>;

fn bad<T>(what: &'static str) -> Read<T> {
    Err(Bad {
        path: String::new(),
        what,
    })
}

/// Puts a field name or index in front of a failure's path.
#[inline(never)]
fn under(mut failure: Bad, field: &str, index: Option<usize>) -> Bad {
    let mut prefix = String::new();
    if !field.is_empty() {
        prefix.push('.');
        prefix.push_str(field);
    }
    if let Some(index) = index {
        prefix.push('[');
        prefix.push_str(&index.to_string());
        prefix.push(']');
    }
    failure.path.insert_str(0, &prefix);
    failure
}

fn object(raw: &RawValue) -> Read<Vec<Entry<'_>>> {
    match raw.get().starts_with('{') {
        true => object_entries(raw.get()).map_or_else(|| bad("must be an object"), Ok),
        false => bad("must be an object"),
    }
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

fn digits(text: &str) -> Read<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return bad("must be a non-negative integer");
    }
    text.parse()
        .map_or_else(|_| bad("must be a non-negative integer"), Ok)
}

fn integer(raw: &RawValue) -> Read<u64> {
    digits(raw.get())
}

fn optional_integer(raw: &RawValue) -> Read<Option<u64>> {
    match is_null(raw) {
        true => Ok(None),
        false => integer(raw).map(Some),
    }
}

fn text(raw: &RawValue) -> Read<String> {
    serde_json::from_str::<String>(raw.get()).map_or_else(|_| bad("must be a string"), Ok)
}

fn optional_text(raw: &RawValue) -> Read<Option<String>> {
    match is_null(raw) {
        true => Ok(None),
        false => text(raw).map(Some),
    }
}

fn period(raw: &RawValue) -> Read<Period> {
    Period::parse(&text(raw)?).map_or_else(|| bad("must be day, week, month or total"), Ok)
}

fn list<T>(raw: &RawValue, read: fn(&RawValue) -> Read<T>) -> Read<Vec<T>> {
    if is_null(raw) {
        return Ok(Vec::new());
    }
    let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
        return bad("must be an array");
    };
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        out.push(read(item).map_err(|failure| under(failure, "", Some(index)))?);
    }
    Ok(out)
}

/// Reads an object's fields with `field`, which returns `Ok(false)` for a name it does not know.
fn each_field<'a>(
    raw: &'a RawValue,
    field: &mut dyn FnMut(&str, &'a RawValue) -> Read<bool>,
) -> Read<()> {
    for (name, value) in object(raw)? {
        match field(&name, value) {
            Ok(true) => {}
            Ok(false) => {
                return Err(under(
                    Bad {
                        path: String::new(),
                        what: "unknown field",
                    },
                    &name,
                    None,
                ))
            }
            Err(failure) => return Err(under(failure, &name, None)),
        }
    }
    Ok(())
}

fn required<T>(value: Option<T>, name: &'static str) -> Read<T> {
    value.map_or_else(
        || {
            Err(Bad {
                path: format!(".{name}"),
                what: "missing",
            })
        },
        Ok,
    )
}

/// The fields budgets, quotas and increases share: a period and up to five numbers.
#[derive(Default)]
struct Window {
    period: Option<Period>,
    numbers: [Option<u64>; 5],
}

/// Reads `{"period": ..., <one of `names`>: n, ...}`; `numbers[i]` is `names[i]`.
fn window(raw: &RawValue, names: &[&str]) -> Read<Window> {
    let mut read = Window::default();
    each_field(raw, &mut |name, value| {
        if name == "period" {
            read.period = Some(period(value)?);
            return Ok(true);
        }
        let Some(slot) = names
            .iter()
            .position(|known| *known == name)
            .and_then(|position| read.numbers.get_mut(position))
        else {
            return Ok(false);
        };
        *slot = optional_integer(value)?;
        Ok(true)
    })?;
    Ok(read)
}

fn budget(raw: &RawValue) -> Read<BudgetRecord> {
    let read = window(raw, &["cap_microusd", "soft_cap_microusd"])?;
    let [cap, soft, ..] = read.numbers;
    Ok(BudgetRecord {
        period: required(read.period, "period")?,
        cap_microusd: cap,
        soft_cap_microusd: soft,
    })
}

fn quota(raw: &RawValue) -> Read<QuotaRecord> {
    let read = window(raw, &["requests", "tokens"])?;
    let [requests, tokens, ..] = read.numbers;
    Ok(QuotaRecord {
        period: required(read.period, "period")?,
        requests,
        tokens,
    })
}

fn increase(raw: &RawValue) -> Read<IncreaseRecord> {
    let read = window(raw, &["microusd", "requests", "tokens", "until"])?;
    let [microusd, requests, tokens, until, _] = read.numbers;
    Ok(IncreaseRecord {
        period: required(read.period, "period")?,
        microusd: microusd.unwrap_or(0),
        requests: requests.unwrap_or(0),
        tokens: tokens.unwrap_or(0),
        until: required(until, "until")?,
    })
}

fn usage(raw: &RawValue) -> Read<BTreeMap<String, WindowUsage>> {
    let mut windows = BTreeMap::new();
    for (id, value) in object(raw)? {
        let read = window(value, &["microusd", "requests", "tokens"])
            .map_err(|failure| under(failure, &id, None))?;
        if read.period.is_some() {
            return Err(under(
                Bad {
                    path: ".period".to_owned(),
                    what: "unknown field",
                },
                &id,
                None,
            ));
        }
        let [microusd, requests, tokens, ..] = read.numbers;
        windows.insert(
            id.into_owned(),
            WindowUsage {
                microusd: microusd.unwrap_or(0),
                requests: requests.unwrap_or(0),
                tokens: tokens.unwrap_or(0),
            },
        );
    }
    Ok(windows)
}

fn offset(raw: &RawValue) -> Read<Option<i32>> {
    if is_null(raw) {
        return Ok(None);
    }
    let text = raw.get();
    let negative = text.strip_prefix('-');
    let magnitude = digits(negative.unwrap_or(text))?;
    let Ok(magnitude) = i32::try_from(magnitude) else {
        return bad("must be from -840 to 840");
    };
    Ok(Some(if negative.is_some() {
        -magnitude
    } else {
        magnitude
    }))
}

fn limits(raw: &RawValue) -> Read<LimitsRecord> {
    let mut record = LimitsRecord::default();
    each_field(raw, &mut |name, value| {
        match name {
            "plan" => record.plan = optional_text(value)?,
            "utc_offset_minutes" => record.utc_offset_minutes = offset(value)?,
            "budgets" => record.budgets = list(value, budget)?,
            "quotas" => record.quotas = list(value, quota)?,
            "increases" => record.increases = list(value, increase)?,
            "usage" if is_null(value) => {}
            "usage" => record.usage = usage(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(record)
}

fn rate_limits(raw: &RawValue) -> Read<Option<RateLimits>> {
    if is_null(raw) {
        return Ok(None);
    }
    let read = window(raw, &["requests_per_minute", "tokens_per_minute"])?;
    if read.period.is_some() {
        return Err(Bad {
            path: ".period".to_owned(),
            what: "unknown field",
        });
    }
    let [requests, tokens, ..] = read.numbers;
    let Ok(requests_per_minute) = requests.map(u32::try_from).transpose() else {
        return Err(Bad {
            path: ".requests_per_minute".to_owned(),
            what: "too large",
        });
    };
    Ok(Some(RateLimits {
        requests_per_minute,
        tokens_per_minute: tokens,
    }))
}

fn plan(raw: &RawValue) -> Read<PlanRecord> {
    let mut id = None;
    let mut record = PlanRecord {
        id: String::new(),
        label: None,
        budgets: Vec::new(),
        quotas: Vec::new(),
        models: None,
        rate_limits: None,
    };
    each_field(raw, &mut |name, value| {
        match name {
            "id" => id = Some(text(value)?),
            "label" => record.label = optional_text(value)?,
            "budgets" => record.budgets = list(value, budget)?,
            "quotas" => record.quotas = list(value, quota)?,
            "models" if is_null(value) => record.models = None,
            "models" => record.models = Some(list(value, text)?),
            "rate_limits" => record.rate_limits = rate_limits(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    record.id = required(id, "id")?;
    Ok(record)
}

fn catalog(raw: &RawValue) -> Read<Option<PriceCatalog>> {
    if is_null(raw) {
        return Ok(None);
    }
    let (mut version, mut as_of) = (None, None);
    each_field(raw, &mut |name, value| {
        match name {
            "version" => version = Some(integer(value)?),
            "as_of" => as_of = optional_text(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(Some(PriceCatalog {
        version: required(version, "version")?,
        as_of,
    }))
}

fn failed<E: serde::de::Error>(top: &str, failure: Bad) -> E {
    E::custom(format!("{top}{}: {}", failure.path, failure.what))
}

/// `deserialize_with` for a key's or project's `limits`.
pub(crate) fn read_limits<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<LimitsRecord>, D::Error> {
    let raw = Box::<RawValue>::deserialize(deserializer)?;
    if is_null(&raw) {
        return Ok(None);
    }
    limits(&raw)
        .map(Some)
        .map_err(|failure| failed("limits", failure))
}

/// `deserialize_with` for the snapshot's `price_catalog`.
pub(crate) fn read_price_catalog<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<PriceCatalog>, D::Error> {
    let raw = Box::<RawValue>::deserialize(deserializer)?;
    catalog(&raw).map_err(|failure| failed("price_catalog", failure))
}

/// `deserialize_with` for the snapshot's `plans`.
pub(crate) fn read_plans<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<PlanRecord>, D::Error> {
    let raw = Box::<RawValue>::deserialize(deserializer)?;
    list(&raw, plan).map_err(|failure| failed("plans", failure))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn read(json: &str) -> Result<LimitsRecord, String> {
        let raw: Box<RawValue> = serde_json::from_str(json).expect("json");
        limits(&raw).map_err(|failure| format!("limits{}: {}", failure.path, failure.what))
    }

    #[test]
    fn the_hand_reader_agrees_with_serde_and_names_the_field_that_fails() {
        let json = r#"{"plan": "free", "utc_offset_minutes": -480,
            "budgets": [{"period": "day", "cap_microusd": 10, "soft_cap_microusd": 5}],
            "quotas": [{"period": "month", "requests": 50, "tokens": null}],
            "increases": [{"period": "day", "requests": 5, "until": 99}],
            "usage": {"2026-11-30": {"microusd": 1, "requests": 2, "tokens": 3}}}"#;
        let derived: LimitsRecord = serde_json::from_str(json).expect("serde");
        assert_eq!(read(json), Ok(derived));
        for (bad, message) in [
            (r#"{"colour": 1}"#, "limits.colour: unknown field"),
            (r#"{"budgets": {}}"#, "limits.budgets: must be an array"),
            (
                r#"{"budgets": [{"period": "year", "cap_microusd": 1}]}"#,
                "limits.budgets[0].period: must be day, week, month or total",
            ),
            (
                r#"{"budgets": [{"cap_microusd": 1}]}"#,
                "limits.budgets[0].period: missing",
            ),
            (
                r#"{"quotas": [{"period": "day", "requests": -1}]}"#,
                "limits.quotas[0].requests: must be a non-negative integer",
            ),
            (
                r#"{"quotas": [{"period": "day", "requests": 1.5}]}"#,
                "limits.quotas[0].requests: must be a non-negative integer",
            ),
            (
                r#"{"increases": [{"period": "day", "requests": 1}]}"#,
                "limits.increases[0].until: missing",
            ),
            (
                r#"{"usage": {"2026-11-30": {"cost": 1}}}"#,
                "limits.usage.2026-11-30.cost: unknown field",
            ),
            (r#"{"plan": 7}"#, "limits.plan: must be a string"),
            (r#"[]"#, "limits: must be an object"),
        ] {
            assert_eq!(read(bad), Err(message.to_owned()), "{bad}");
        }
    }

    #[test]
    fn plans_read_like_serde_reads_them() {
        let json = r#"[{"id": "free", "label": "Free", "budgets": [{"period": "total", "cap_microusd": 9}],
            "quotas": [{"period": "day", "requests": 50}], "models": ["a", "b*"],
            "rate_limits": {"requests_per_minute": 10}}]"#;
        let derived: Vec<PlanRecord> = serde_json::from_str(json).expect("serde");
        let raw: Box<RawValue> = serde_json::from_str(json).expect("json");
        assert!(list(&raw, plan).ok() == Some(derived));
        let raw: Box<RawValue> = serde_json::from_str(r#"[{"label": "x"}]"#).expect("json");
        let Err(failure) = list(&raw, plan) else {
            panic!("an id is required")
        };
        assert_eq!((failure.path.as_str(), failure.what), ("[0].id", "missing"));
    }
}
