//! Reads a snapshot's `limits` and `plans` by hand, over the raw-object reader the request body
//! already uses. serde's derived readers for these nested records cost about 30 KB of Wasm
//! (one copy per deserializer, each with sequence forms JSON never uses); this costs a few.
//! Same rules as a derived reader with `deny_unknown_fields`: unknown fields, wrong types,
//! negative or fractional numbers are errors, `null` is an absent optional field.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::budget::{
    BudgetRecord, IncreaseRecord, LimitsRecord, PlanRecord, QuotaRecord, WindowUsage,
};
use crate::calendar::Period;
use crate::request_body::object_entries;
use crate::snapshot::RateLimits;

type Entries<'a> = Vec<(String, &'a RawValue)>;

fn object<'a>(raw: &'a RawValue, path: &str) -> Result<Entries<'a>, String> {
    let text = raw.get();
    if !text.starts_with('{') {
        return Err(format!("{path}: must be an object"));
    }
    object_entries(text).ok_or_else(|| format!("{path}: must be an object"))
}

fn array<'a>(raw: &'a RawValue, path: &str) -> Result<Vec<&'a RawValue>, String> {
    serde_json::from_str::<Vec<&RawValue>>(raw.get())
        .map_err(|_| format!("{path}: must be an array"))
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

fn integer(raw: &RawValue, path: &str) -> Result<u64, String> {
    integer_text(raw.get(), path)
}

fn integer_text(text: &str, path: &str) -> Result<u64, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{path}: must be a non-negative integer"));
    }
    text.parse()
        .map_err(|_| format!("{path}: must be a non-negative integer"))
}

fn optional_integer(raw: &RawValue, path: &str) -> Result<Option<u64>, String> {
    if is_null(raw) {
        return Ok(None);
    }
    integer(raw, path).map(Some)
}

fn text(raw: &RawValue, path: &str) -> Result<String, String> {
    serde_json::from_str::<String>(raw.get()).map_err(|_| format!("{path}: must be a string"))
}

fn period(raw: &RawValue, path: &str) -> Result<Period, String> {
    Period::parse(&text(raw, path)?)
        .ok_or_else(|| format!("{path}: must be day, week, month or total"))
}

/// Walks an object's fields; `field` handles each known one and says whether it knew it.
fn fields<'a>(
    raw: &'a RawValue,
    path: &str,
    mut field: impl FnMut(&str, &'a RawValue, &str) -> Result<bool, String>,
) -> Result<(), String> {
    for (name, value) in object(raw, path)? {
        let inner = format!("{path}.{name}");
        if !field(&name, value, &inner)? {
            return Err(format!("{inner}: unknown field"));
        }
    }
    Ok(())
}

fn list<T>(
    raw: &RawValue,
    path: &str,
    read: impl Fn(&RawValue, &str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    if is_null(raw) {
        return Ok(Vec::new());
    }
    array(raw, path)?
        .into_iter()
        .enumerate()
        .map(|(position, item)| read(item, &format!("{path}[{position}]")))
        .collect()
}

fn required<T>(value: Option<T>, path: &str, name: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("{path}: missing field {name}"))
}

fn budget(raw: &RawValue, path: &str) -> Result<BudgetRecord, String> {
    let (mut which, mut cap, mut soft) = (None, None, None);
    fields(raw, path, |name, value, inner| {
        match name {
            "period" => which = Some(period(value, inner)?),
            "cap_microusd" => cap = optional_integer(value, inner)?,
            "soft_cap_microusd" => soft = optional_integer(value, inner)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(BudgetRecord {
        period: required(which, path, "period")?,
        cap_microusd: cap,
        soft_cap_microusd: soft,
    })
}

fn quota(raw: &RawValue, path: &str) -> Result<QuotaRecord, String> {
    let (mut which, mut requests, mut tokens) = (None, None, None);
    fields(raw, path, |name, value, inner| {
        match name {
            "period" => which = Some(period(value, inner)?),
            "requests" => requests = optional_integer(value, inner)?,
            "tokens" => tokens = optional_integer(value, inner)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(QuotaRecord {
        period: required(which, path, "period")?,
        requests,
        tokens,
    })
}

fn increase(raw: &RawValue, path: &str) -> Result<IncreaseRecord, String> {
    let (mut which, mut until) = (None, None);
    let [mut microusd, mut requests, mut tokens] = [0u64; 3];
    fields(raw, path, |name, value, inner| {
        match name {
            "period" => which = Some(period(value, inner)?),
            "microusd" => microusd = integer(value, inner)?,
            "requests" => requests = integer(value, inner)?,
            "tokens" => tokens = integer(value, inner)?,
            "until" => until = Some(integer(value, inner)?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(IncreaseRecord {
        period: required(which, path, "period")?,
        microusd,
        requests,
        tokens,
        until: required(until, path, "until")?,
    })
}

fn usage(raw: &RawValue, path: &str) -> Result<BTreeMap<String, WindowUsage>, String> {
    let mut windows = BTreeMap::new();
    for (id, value) in object(raw, path)? {
        let inner = format!("{path}.{id}");
        let mut figures = WindowUsage::default();
        fields(value, &inner, |name, value, at| {
            match name {
                "microusd" => figures.microusd = integer(value, at)?,
                "requests" => figures.requests = integer(value, at)?,
                "tokens" => figures.tokens = integer(value, at)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        windows.insert(id, figures);
    }
    Ok(windows)
}

fn limits(raw: &RawValue, path: &str) -> Result<LimitsRecord, String> {
    let mut record = LimitsRecord::default();
    fields(raw, path, |name, value, inner| {
        match name {
            "plan" if is_null(value) => record.plan = None,
            "plan" => record.plan = Some(text(value, inner)?),
            "utc_offset_minutes" if is_null(value) => record.utc_offset_minutes = None,
            "utc_offset_minutes" => {
                let minutes = value.get().strip_prefix('-');
                let magnitude = integer_text(minutes.unwrap_or(value.get()), inner)?;
                let magnitude = i32::try_from(magnitude)
                    .map_err(|_| format!("{inner}: must be from -840 to 840"))?;
                record.utc_offset_minutes =
                    Some(if minutes.is_some() { -magnitude } else { magnitude });
            }
            "budgets" => record.budgets = list(value, inner, budget)?,
            "quotas" => record.quotas = list(value, inner, quota)?,
            "increases" => record.increases = list(value, inner, increase)?,
            "usage" if is_null(value) => {}
            "usage" => record.usage = usage(value, inner)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(record)
}

fn rate_limits(raw: &RawValue, path: &str) -> Result<Option<RateLimits>, String> {
    if is_null(raw) {
        return Ok(None);
    }
    let mut limits = RateLimits {
        requests_per_minute: None,
        tokens_per_minute: None,
    };
    fields(raw, path, |name, value, inner| {
        match name {
            "requests_per_minute" => {
                limits.requests_per_minute = optional_integer(value, inner)?
                    .map(|n| u32::try_from(n).map_err(|_| format!("{inner}: too large")))
                    .transpose()?
            }
            "tokens_per_minute" => limits.tokens_per_minute = optional_integer(value, inner)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(Some(limits))
}

fn plan(raw: &RawValue, path: &str) -> Result<PlanRecord, String> {
    let mut id = None;
    let mut record = PlanRecord {
        id: String::new(),
        label: None,
        budgets: Vec::new(),
        quotas: Vec::new(),
        models: None,
        rate_limits: None,
    };
    fields(raw, path, |name, value, inner| {
        match name {
            "id" => id = Some(text(value, inner)?),
            "label" if is_null(value) => record.label = None,
            "label" => record.label = Some(text(value, inner)?),
            "budgets" => record.budgets = list(value, inner, budget)?,
            "quotas" => record.quotas = list(value, inner, quota)?,
            "models" if is_null(value) => record.models = None,
            "models" => record.models = Some(list(value, inner, text)?),
            "rate_limits" => record.rate_limits = rate_limits(value, inner)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    record.id = required(id, path, "id")?;
    Ok(record)
}

/// `deserialize_with` for a key's or project's `limits`.
pub(crate) fn read_limits<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<LimitsRecord>, D::Error> {
    let raw = Box::<RawValue>::deserialize(deserializer)?;
    if is_null(&raw) {
        return Ok(None);
    }
    limits(&raw, "limits").map(Some).map_err(D::Error::custom)
}

/// `deserialize_with` for the snapshot's `plans`.
pub(crate) fn read_plans<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<PlanRecord>, D::Error> {
    let raw = Box::<RawValue>::deserialize(deserializer)?;
    list(&raw, "plans", plan).map_err(D::Error::custom)
}
