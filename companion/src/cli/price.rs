//! `keyward price`: the model price table the filter meters spend with.

use std::process::ExitCode;

use clap::Subcommand;
use keyward_engine::snapshot::PriceRecord;

use super::admin::Admin;
use super::output::{dollars, print_json, print_list_json, print_table};
use crate::error::Error;
use crate::store::PriceView;
use crate::units::{format_time, parse_usd};

#[derive(Subcommand)]
pub enum PriceCommand {
    /// Set (create or replace) the price of a model, or of a model prefix written `gpt-4o*`.
    /// Amounts are USD per one million tokens, exact to 6 decimals (0.075 = 75000 micro-USD).
    Set {
        #[arg(long)]
        model: String,
        /// Input tokens (not cached).
        #[arg(long, value_name = "USD")]
        input: String,
        #[arg(long, value_name = "USD")]
        output: String,
        /// Cached input tokens read; default: the input price.
        #[arg(long, value_name = "USD")]
        cached_input: Option<String>,
        /// Input tokens written to a cache; default: the input price.
        #[arg(long, value_name = "USD")]
        cache_write: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the prices.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Import a price list in LiteLLM's format (model_prices_and_context_window.json), or
    /// keyward's default catalog (--default), as one dated version.
    Import(super::budget::ImportArgs),
    /// Remove a model's price.
    Remove {
        #[arg(long)]
        model: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(admin: &mut dyn Admin, command: PriceCommand) -> Result<ExitCode, Error> {
    let per_mtok = |text: &str, flag: &str| {
        parse_usd(text).map_err(|error| {
            Error::invalid("invalid_amount", format!("--{flag}: {}", error.message))
        })
    };
    let (price, json, verb) = match command {
        PriceCommand::Set {
            model,
            input,
            output,
            cached_input,
            cache_write,
            json,
        } => {
            let record = PriceRecord {
                model,
                input_microusd_per_mtok: per_mtok(&input, "input")?,
                output_microusd_per_mtok: per_mtok(&output, "output")?,
                cached_input_microusd_per_mtok: cached_input
                    .as_deref()
                    .map(|text| per_mtok(text, "cached-input"))
                    .transpose()?,
                cache_write_microusd_per_mtok: cache_write
                    .as_deref()
                    .map(|text| per_mtok(text, "cache-write"))
                    .transpose()?,
            };
            (admin.set_price(&record)?, json, "set")
        }
        PriceCommand::Remove { model, json } => (admin.remove_price(&model)?, json, "removed"),
        PriceCommand::Import(args) => return super::budget::import_prices(admin, args),
        PriceCommand::List { json } => {
            let prices = admin.prices()?;
            if json {
                print_list_json(&prices)?;
            } else {
                let rows = prices.iter().map(price_row).collect();
                print_table(
                    &[
                        "MODEL",
                        "INPUT",
                        "OUTPUT",
                        "CACHED INPUT",
                        "CACHE WRITE",
                        "UPDATED",
                    ],
                    rows,
                );
                println!("(USD per 1M tokens)");
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if json {
        print_json(&price)?;
    } else {
        let row = price_row(&price);
        println!(
            "price {verb} for {}: input {}, output {}, cached input {}, cache write {} (USD per \
             1M tokens)",
            row.first().map_or("", String::as_str),
            row.get(1).map_or("", String::as_str),
            row.get(2).map_or("", String::as_str),
            row.get(3).map_or("", String::as_str),
            row.get(4).map_or("", String::as_str),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn price_row(price: &PriceView) -> Vec<String> {
    let or_input = |value: Option<u64>| {
        value.map_or_else(
            || format!("{} (input)", dollars(price.input_microusd_per_mtok)),
            dollars,
        )
    };
    vec![
        price.model.clone(),
        dollars(price.input_microusd_per_mtok),
        dollars(price.output_microusd_per_mtok),
        or_input(price.cached_input_microusd_per_mtok),
        or_input(price.cache_write_microusd_per_mtok),
        format_time(price.updated_at),
    ]
}
