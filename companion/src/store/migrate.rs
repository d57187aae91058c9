//! Versioned schema migrations, run by refinery (rust-db/refinery) through keyward's own query
//! layer. refinery's bundled drivers pin older releases of the database crates; its driver
//! traits are public so that any connection can run migrations, and one implementation over
//! [`Sql`] serves every backend. Each backend runs them inside its own serialized transaction,
//! so replicas or processes starting together migrate a store exactly once, and a failed
//! migration leaves nothing behind.
//!
//! The SQL lives in `companion/migrations/<backend>/V<n>__<name>.sql`. A released migration is
//! never edited (refinery refuses a store whose applied migration differs): add a new one.

use refinery_core::traits::sync::{Migrate, Query, Transaction};
use refinery_core::{Migration, Runner, Target};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::sql::Sql;
use crate::error::Error;

/// refinery's history table (its default name).
pub const HISTORY_TABLE: &str = "refinery_schema_history";

/// The SQLite migrations, in order. 1 to 3 are the schemas keyward wrote before versioned
/// migrations (`PRAGMA user_version` 1 and 2, then 2 with pending spend).
pub const SQLITE: &[(&str, &str)] = &[
    (
        "V1__initial",
        include_str!("../../migrations/sqlite/V1__initial.sql"),
    ),
    (
        "V2__soft_caps_rate_limits_prices_usage",
        include_str!("../../migrations/sqlite/V2__soft_caps_rate_limits_prices_usage.sql"),
    ),
    (
        "V3__pending_spend",
        include_str!("../../migrations/sqlite/V3__pending_spend.sql"),
    ),
    (
        "V4__snapshot_issue",
        include_str!("../../migrations/sqlite/V4__snapshot_issue.sql"),
    ),
    (
        "V5__dataplane_tokens",
        include_str!("../../migrations/sqlite/V5__dataplane_tokens.sql"),
    ),
    (
        "V6__budgets_plans_quotas",
        include_str!("../../migrations/sqlite/V6__budgets_plans_quotas.sql"),
    ),
    (
        "V7__provider_keys",
        include_str!("../../migrations/sqlite/V7__provider_keys.sql"),
    ),
    (
        "V8__provider_key_name_last_used",
        include_str!("../../migrations/sqlite/V8__provider_key_name_last_used.sql"),
    ),
];

/// The PostgreSQL migrations, in order: their own sequence (PostgreSQL support began with the
/// schema SQLite reached at its migration 4).
pub const POSTGRES: &[(&str, &str)] = &[
    (
        "V1__initial",
        include_str!("../../migrations/postgres/V1__initial.sql"),
    ),
    (
        "V2__dataplane_tokens",
        include_str!("../../migrations/postgres/V2__dataplane_tokens.sql"),
    ),
    (
        "V3__budgets_plans_quotas",
        include_str!("../../migrations/postgres/V3__budgets_plans_quotas.sql"),
    ),
    (
        "V4__provider_keys",
        include_str!("../../migrations/postgres/V4__provider_keys.sql"),
    ),
    (
        "V5__provider_key_name_last_used",
        include_str!("../../migrations/postgres/V5__provider_key_name_last_used.sql"),
    ),
];

/// What a store written before versioned migrations already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    /// A new store, or one with a migration history.
    None,
    /// A store without history whose schema is that of this migration: it and the ones before
    /// are recorded as applied without running.
    AtVersion(i32),
}

/// Brings the schema up to date: refuses a store migrated by a newer keyward, records an
/// adopted store's baseline, then applies what is missing.
pub fn run(sql: &mut dyn Sql, sources: &[(&str, &str)], adoption: Adoption) -> Result<(), Error> {
    let migrations = sources
        .iter()
        .map(|(name, text)| Migration::unapplied(name, text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(migration_error)?;
    let latest = migrations.iter().map(Migration::version).max().unwrap_or(0);
    let mut driver = Driver { sql };
    driver
        .assert_migrations_table(HISTORY_TABLE)
        .map_err(migration_error)?;
    if let Adoption::AtVersion(version) = adoption {
        Runner::new(&migrations)
            .set_target(Target::FakeVersion(version))
            .run(&mut driver)
            .map_err(migration_error)?;
    }
    let applied = Runner::new(&migrations)
        .get_last_applied_migration(&mut driver)
        .map_err(migration_error)?
        .map_or(0, |migration| migration.version());
    if applied > latest {
        return Err(Error::internal(format!(
            "the store has schema version {applied}; this keyward knows up to {latest}: use a \
             newer keyward"
        )));
    }
    Runner::new(&migrations)
        .set_grouped(true)
        .run(&mut driver)
        .map_err(migration_error)?;
    Ok(())
}

fn migration_error(error: refinery_core::Error) -> Error {
    Error::internal(format!("store migration failed: {error}"))
}

/// refinery's driver over one open transaction of any backend.
struct Driver<'s, 'q> {
    sql: &'s mut (dyn Sql + 'q),
}

impl Transaction for Driver<'_, '_> {
    type Error = Error;

    fn execute<'a, T: Iterator<Item = &'a str>>(&mut self, queries: T) -> Result<usize, Error> {
        let mut count = 0;
        for query in queries {
            self.sql.batch(query)?;
            count += 1;
        }
        Ok(count)
    }
}

impl Query<Vec<Migration>> for Driver<'_, '_> {
    fn query(&mut self, query: &str) -> Result<Vec<Migration>, Error> {
        self.sql.query_map(query, &[], |row| {
            let mut columns = row.columns();
            let version = i32::try_from(columns.int()?)
                .map_err(|_| Error::internal("store error: a migration version is out of range"))?;
            let name = columns.text()?;
            let applied_on =
                OffsetDateTime::parse(&columns.text()?, &Rfc3339).map_err(|error| {
                    Error::internal(format!("store error: a migration time is invalid: {error}"))
                })?;
            let checksum = columns.text()?.parse::<u64>().map_err(|error| {
                Error::internal(format!(
                    "store error: a migration checksum is invalid: {error}"
                ))
            })?;
            Ok(Migration::applied(version, name, applied_on, checksum))
        })
    }
}

impl Migrate for Driver<'_, '_> {}
