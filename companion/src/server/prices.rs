//! `/v1/prices`: the model price table.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::routes::{parse_body, List};
use super::{with_store, Actor, Shared};
use crate::error::Error;
use crate::units::{now, parse_usd};
use keyward_engine::snapshot::PriceRecord;

/// A money amount in a request: a USD decimal string (`"2.50"`, as the CLI takes it) or a JSON
/// number (`2.5`), converted to micro-USD exactly (at most 6 decimals), never through a float sum.
#[derive(Deserialize)]
#[serde(untagged)]
enum Usd {
    Text(String),
    Number(serde_json::Number),
}

impl Usd {
    fn microusd(&self, field: &str) -> Result<u64, Error> {
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
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceBody {
    #[serde(default)]
    input_usd_per_mtok: Option<Usd>,
    #[serde(default)]
    input_microusd_per_mtok: Option<u64>,
    #[serde(default)]
    output_usd_per_mtok: Option<Usd>,
    #[serde(default)]
    output_microusd_per_mtok: Option<u64>,
    #[serde(default)]
    cached_input_usd_per_mtok: Option<Usd>,
    #[serde(default)]
    cached_input_microusd_per_mtok: Option<u64>,
    #[serde(default)]
    cache_write_usd_per_mtok: Option<Usd>,
    #[serde(default)]
    cache_write_microusd_per_mtok: Option<u64>,
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
    fn record(&self, model: String) -> Result<PriceRecord, Error> {
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

pub(super) async fn list(State(state): State<Shared>) -> Result<Response, Error> {
    let prices = with_store(&state.store, |store| store.prices()).await?;
    Ok(Json(List { data: prices }).into_response())
}

pub(super) async fn get(
    State(state): State<Shared>,
    Path(model): Path<String>,
) -> Result<Response, Error> {
    let price = with_store(&state.store, move |store| store.price(&model)).await?;
    Ok(Json(price).into_response())
}

pub(super) async fn set(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: PriceBody = parse_body(&body)?;
    let record = request.record(model)?;
    let price = with_store(&state.store, move |store| {
        store.set_price(&actor, now(), &record)
    })
    .await?;
    Ok(Json(price).into_response())
}

pub(super) async fn remove(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(model): Path<String>,
) -> Result<Response, Error> {
    let removed = with_store(&state.store, move |store| {
        store.remove_price(&actor, now(), &model)
    })
    .await?;
    Ok(Json(removed).into_response())
}
