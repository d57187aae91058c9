//! Model prices (micro-USD per one million tokens): what the filter meters spend with.

use keyward_engine::snapshot::{PriceCatalog, PriceRecord};
use serde_json::json;

use super::model::PriceView;
use super::sql::{args, Row, Sql, Value};
use super::validate::{validate_text, validate_with_engine};
use super::Store;
use crate::error::Error;

const PRICE_COLUMNS: &str = "model, input_microusd_per_mtok, output_microusd_per_mtok, \
    cached_input_microusd_per_mtok, cache_write_microusd_per_mtok, updated_at";

fn price_of(row: &Row) -> Result<PriceView, Error> {
    let mut columns = row.columns();
    Ok(PriceView {
        model: columns.text()?,
        input_microusd_per_mtok: columns.uint()?,
        output_microusd_per_mtok: columns.uint()?,
        cached_input_microusd_per_mtok: columns.opt_uint()?,
        cache_write_microusd_per_mtok: columns.opt_uint()?,
        updated_at: columns.uint()?,
    })
}

pub(super) fn find_price(sql: &mut dyn Sql, model: &str) -> Result<Option<PriceView>, Error> {
    sql.query_opt(
        &format!("SELECT {PRICE_COLUMNS} FROM prices WHERE model = ?1"),
        args![model],
    )?
    .as_ref()
    .map(price_of)
    .transpose()
}

pub(super) fn all_prices(sql: &mut dyn Sql) -> Result<Vec<PriceView>, Error> {
    sql.query_map(
        &format!("SELECT {PRICE_COLUMNS} FROM prices ORDER BY model"),
        &[],
        price_of,
    )
}

/// Inserts or replaces one price row.
pub(super) fn write_price(sql: &mut dyn Sql, price: &PriceRecord, now: u64) -> Result<(), Error> {
    sql.execute(
        "INSERT INTO prices (model, input_microusd_per_mtok, output_microusd_per_mtok, \
         cached_input_microusd_per_mtok, cache_write_microusd_per_mtok, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (model) DO UPDATE SET \
         input_microusd_per_mtok = excluded.input_microusd_per_mtok, \
         output_microusd_per_mtok = excluded.output_microusd_per_mtok, \
         cached_input_microusd_per_mtok = excluded.cached_input_microusd_per_mtok, \
         cache_write_microusd_per_mtok = excluded.cache_write_microusd_per_mtok, \
         updated_at = excluded.updated_at",
        args![
            &price.model,
            Value::uint(price.input_microusd_per_mtok)?,
            Value::uint(price.output_microusd_per_mtok)?,
            Value::opt_uint(price.cached_input_microusd_per_mtok)?,
            Value::opt_uint(price.cache_write_microusd_per_mtok)?,
            Value::uint(now)?,
        ],
    )?;
    Ok(())
}

fn price_details(price: &PriceRecord) -> serde_json::Value {
    json!({
        "input_microusd_per_mtok": price.input_microusd_per_mtok,
        "output_microusd_per_mtok": price.output_microusd_per_mtok,
        "cached_input_microusd_per_mtok": price.cached_input_microusd_per_mtok,
        "cache_write_microusd_per_mtok": price.cache_write_microusd_per_mtok,
    })
}

impl Store {
    /// The price table, by model.
    pub fn prices(&mut self) -> Result<Vec<PriceView>, Error> {
        self.read(all_prices)
    }

    /// One model's (or prefix's) price.
    pub fn price(&mut self, model: &str) -> Result<PriceView, Error> {
        self.read(|sql| find_price(sql, model))?
            .ok_or_else(|| price_not_found(model))
    }

    /// Sets (creates or replaces) the price of a model or model prefix (`gpt-4o*`).
    pub fn set_price(
        &mut self,
        actor: &str,
        now: u64,
        price: &PriceRecord,
    ) -> Result<PriceView, Error> {
        validate_text("model", Some(&price.model), 256)?;
        validate_with_engine(vec![], vec![], vec![price.clone()])?;
        self.change(actor, now, |change| {
            let previous = find_price(change.sql, &price.model)?;
            write_price(change.sql, price, now)?;
            change.sql.execute(
                "UPDATE prices SET source = 'manual', as_of = ?2 WHERE model = ?1",
                args![&price.model, today(now)],
            )?;
            next_catalog(change.sql, &today(now))?;
            let mut details = price_details(price);
            if let Some(object) = details.as_object_mut() {
                object.insert(
                    "previous".into(),
                    previous.map_or(serde_json::Value::Null, |old| price_details(&old.record())),
                );
            }
            change.audit("price.set", &price.model, details)?;
            find_price(change.sql, &price.model)?
                .ok_or_else(|| Error::internal("a price just written is missing"))
        })
    }

    /// Removes a model's price; the filter then meters that model as unpriced.
    pub fn remove_price(&mut self, actor: &str, now: u64, model: &str) -> Result<PriceView, Error> {
        self.change(actor, now, |change| {
            let removed = find_price(change.sql, model)?.ok_or_else(|| price_not_found(model))?;
            change
                .sql
                .execute("DELETE FROM prices WHERE model = ?1", args![model])?;
            next_catalog(change.sql, &today(now))?;
            change.audit("price.remove", model, price_details(&removed.record()))?;
            Ok(removed)
        })
    }
}

/// The price table's version and date, as every snapshot carries them (`None` before any
/// price change recorded one).
pub(super) fn price_catalog(sql: &mut dyn Sql) -> Result<Option<PriceCatalog>, Error> {
    sql.query_opt("SELECT version, as_of FROM price_catalog WHERE id = 1", &[])?
        .map(|row| {
            let mut columns = row.columns();
            Ok(PriceCatalog {
                version: columns.uint()?,
                as_of: columns.opt_text()?,
            })
        })
        .transpose()
}

/// A new version of the price table, dated `as_of` (`YYYY-MM-DD`).
fn next_catalog(sql: &mut dyn Sql, as_of: &str) -> Result<u64, Error> {
    let version = sql.query_int(
        "INSERT INTO price_catalog (id, version, as_of) VALUES (1, 1, ?1) \
         ON CONFLICT (id) DO UPDATE SET version = price_catalog.version + 1, \
         as_of = excluded.as_of RETURNING version",
        args![as_of],
    )?;
    Ok(crate::units::from_sql_int(version))
}

/// Today's date in UTC, `YYYY-MM-DD`: the date of a price set by hand.
fn today(now: u64) -> String {
    keyward_engine::calendar::Window::containing(keyward_engine::calendar::Period::Day, now, 0)
        .map(|day| day.id())
        .unwrap_or_default()
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PriceImport {
    pub added: u64,
    pub changed: u64,
    pub unchanged: u64,
    /// Prices removed because the import replaced the table.
    pub removed: u64,
    pub catalog_version: u64,
    pub as_of: String,
    pub source: String,
}

impl Store {
    /// Imports a price list (a LiteLLM price file, the default catalog) as one audited
    /// version: each price is set (validated by the engine); with `replace`, prices the list
    /// does not name are removed. The table's version grows and takes the list's date.
    pub fn import_prices(
        &mut self,
        actor: &str,
        now: u64,
        prices: &[PriceRecord],
        source: &str,
        as_of: &str,
        replace: bool,
    ) -> Result<PriceImport, Error> {
        if keyward_engine::calendar::Window::parse(as_of)
            .is_none_or(|day| day.period != keyward_engine::calendar::Period::Day)
        {
            return Err(Error::invalid(
                "invalid_field",
                format!("as_of: {as_of:?} is not a date (YYYY-MM-DD)"),
            ));
        }
        validate_text("source", Some(source), 200)?;
        for price in prices {
            validate_text("model", Some(&price.model), 256)?;
        }
        validate_with_engine(vec![], vec![], prices.to_vec())?;
        self.change(actor, now, |change| {
            let mut outcome = PriceImport {
                added: 0,
                changed: 0,
                unchanged: 0,
                removed: 0,
                catalog_version: 0,
                as_of: as_of.to_owned(),
                source: source.to_owned(),
            };
            let existing = all_prices(change.sql)?;
            for price in prices {
                match existing.iter().find(|old| old.model == price.model) {
                    Some(old) if old.record() == *price => outcome.unchanged += 1,
                    Some(_) => outcome.changed += 1,
                    None => outcome.added += 1,
                }
                write_price(change.sql, price, now)?;
                change.sql.execute(
                    "UPDATE prices SET source = ?2, as_of = ?3 WHERE model = ?1",
                    args![&price.model, source, as_of],
                )?;
            }
            if replace {
                for old in &existing {
                    if !prices.iter().any(|price| price.model == old.model) {
                        change
                            .sql
                            .execute("DELETE FROM prices WHERE model = ?1", args![&old.model])?;
                        outcome.removed += 1;
                    }
                }
            }
            outcome.catalog_version = next_catalog(change.sql, as_of)?;
            change.audit(
                "price.import",
                source,
                serde_json::json!({"added": outcome.added, "changed": outcome.changed,
                                   "unchanged": outcome.unchanged, "removed": outcome.removed,
                                   "as_of": as_of, "catalog_version": outcome.catalog_version,
                                   "replace": replace}),
            )?;
            Ok(outcome)
        })
    }
}

fn price_not_found(model: &str) -> Error {
    Error::not_found("price_not_found", format!("No price for {model:?}."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;
    use keyward_engine::snapshot::Policy;

    #[test]
    fn prices_reach_the_snapshot_sorted_and_checked_by_the_engine() {
        let mut store = Store::in_memory().unwrap();
        let mini = PriceRecord {
            cached_input_microusd_per_mtok: Some(75_000),
            ..price("gpt-4o-mini", 150_000, 600_000)
        };
        store
            .set_price("a", 1, &price("gpt-4o*", 2_500_000, 10_000_000))
            .unwrap();
        store.set_price("a", 2, &mini).unwrap();
        store
            .set_price("a", 3, &price("claude-3-5-sonnet*", 3_000_000, 15_000_000))
            .unwrap();
        let snapshot = store.snapshot(10).unwrap();
        let models: Vec<&str> = snapshot.prices.iter().map(|p| p.model.as_str()).collect();
        assert_eq!(models, ["claude-3-5-sonnet*", "gpt-4o*", "gpt-4o-mini"]);
        assert_eq!(snapshot.prices[2], mini);
        let policy = Policy::compile(snapshot).unwrap();
        let charged = policy.prices().price_for("gpt-4o-2024-08-06").unwrap();
        assert_eq!(charged.input, 2_500_000);
        assert_eq!(
            policy
                .prices()
                .price_for("gpt-4o-mini")
                .unwrap()
                .cached_input,
            75_000
        );

        // Replacing keeps one row; the audit records the previous price.
        let view = store
            .set_price("b", 4, &price("gpt-4o*", 5_000_000, 15_000_000))
            .unwrap();
        assert_eq!(
            (view.input_microusd_per_mtok, view.updated_at),
            (5_000_000, 4)
        );
        assert_eq!(store.prices().unwrap().len(), 3);
        let event = store.audit_events(Some(1)).unwrap().remove(0);
        assert_eq!(event.action, "price.set");
        assert_eq!(
            event.details["previous"]["input_microusd_per_mtok"],
            2_500_000
        );

        // What the filter would refuse is refused here.
        for bad in ["*", "", "bad\nmodel"] {
            let error = store.set_price("a", 5, &price(bad, 1, 1)).unwrap_err();
            assert_eq!(error.code, "invalid_field", "{bad:?}");
        }
        let too_big = price("m", u64::MAX, 1);
        assert_eq!(
            store.set_price("a", 5, &too_big).unwrap_err().code,
            "value_too_large"
        );

        let removed = store.remove_price("a", 6, "gpt-4o*").unwrap();
        assert_eq!(removed.model, "gpt-4o*");
        assert_eq!(
            store.remove_price("a", 7, "gpt-4o*").unwrap_err().status,
            404
        );
        assert_eq!(store.snapshot(10).unwrap().prices.len(), 2);
        let actions: Vec<String> = store
            .audit_events(None)
            .unwrap()
            .into_iter()
            .map(|event| event.action)
            .collect();
        assert_eq!(actions.iter().filter(|a| *a == "price.set").count(), 4);
        assert_eq!(actions.last().map(String::as_str), Some("price.remove"));
    }
}
