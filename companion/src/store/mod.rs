//! The store: projects, keys, prices, usage batches and the audit trail. Every change runs in
//! one serialized transaction that also bumps `policy_version` and writes its audit event(s), so
//! the snapshot version, the data and the audit trail never disagree. Only hashes of keys are
//! stored; no column ever holds a plaintext key or a secret.
//!
//! The entity modules (`projects`, `keys`, `prices`, `usage`, `snapshot`) are written once
//! against the query layer (`sql`); a backend (`sqlite`) supplies transactions and migrations.

mod alerts;
mod change;
mod dataplane;
mod keys;
mod limits;
mod migrate;
mod model;
mod postgresql;
mod prices;
mod projects;
mod provider_keys;
mod rotation;
mod snapshot;
mod sql;
mod sqlite;
mod usage;
mod usage_check;
mod validate;
mod windows;

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod budget_tests;

#[cfg(test)]
use std::path::Path;
use std::sync::Arc;

pub use alerts::AlertView;
pub use limits::{BudgetOwner, Increase, IncreaseView, LimitsSettings};
pub use model::{
    AuditEvent, KeySettings, KeyUpdate, KeyView, NewKey, Owner, PriceView, ProjectUpdate,
    ProjectView, StatusChange, UsageBatchView,
};
pub use prices::PriceImport;
pub use provider_keys::{ProviderKeyRow, ProviderKeyView, PutMode};
pub use windows::{UsageChange, UsageDelta, WindowTarget, WindowUsageView};

pub use dataplane::{
    CreatedDataplaneToken, DataplaneIdentity, DataplaneTokenView, Permission, RefusedBatchView,
};
pub use usage_check::UsageLimits;

use crate::error::Error;
use crate::provider_secrets::ProviderSealing;
use postgresql::PostgresBackend;
use sql::Sql;
use sqlite::SqliteBackend;

/// The actor recorded for changes keyward makes by itself (a rotation grace deadline passing).
pub const SYSTEM_ACTOR: &str = "system";

/// Where the store lives: a SQLite file (the embedded default) or a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(std::path::PathBuf),
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl Location {
    /// `postgres://…` and `postgresql://…` name a PostgreSQL database; anything else is a path.
    pub fn parse(text: &str) -> Location {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Location::Postgres(text.to_owned())
        } else {
            Location::Sqlite(text.into())
        }
    }
}

enum Backend {
    Sqlite(SqliteBackend),
    // Boxed: a client holds much more state than a SQLite connection.
    Postgres(Box<PostgresBackend>),
}

pub struct Store {
    backend: Backend,
    /// How snapshots built from this store seal its provider keys (`None`: not configured).
    provider_sealing: Option<Arc<ProviderSealing>>,
}

impl Store {
    /// Opens the store at `location`, migrating its schema. A SQLite file is created when
    /// missing.
    pub fn open_location(location: &Location) -> Result<Store, Error> {
        let backend = match location {
            Location::Sqlite(path) => Backend::Sqlite(SqliteBackend::open(path)?),
            Location::Postgres(url) => Backend::Postgres(Box::new(PostgresBackend::open(url)?)),
        };
        Ok(Store {
            backend,
            provider_sealing: None,
        })
    }

    /// Lets snapshots built from this store carry its provider keys, sealed for the fleet.
    pub fn set_provider_sealing(&mut self, sealing: Option<Arc<ProviderSealing>>) {
        self.provider_sealing = sealing;
    }

    pub fn provider_sealing(&self) -> Option<Arc<ProviderSealing>> {
        self.provider_sealing.clone()
    }

    /// Opens (and on first use creates) the SQLite store at `path`, migrating its schema.
    #[cfg(test)]
    pub fn open(path: &Path) -> Result<Store, Error> {
        Store::open_location(&Location::Sqlite(path.to_path_buf()))
    }

    /// A new empty store for a test: SQLite in memory, or a schema of its own on the test
    /// PostgreSQL server when `KEYWARD_TEST_STORE=postgres` (so every store test runs on both).
    #[cfg(test)]
    pub fn in_memory() -> Result<Store, Error> {
        if test_support::postgres_requested() {
            return Store::open_location(&test_support::fresh_postgres_location());
        }
        Ok(Store {
            backend: Backend::Sqlite(SqliteBackend::in_memory()?),
            provider_sealing: None,
        })
    }

    /// Runs `work` in one serialized write transaction: all of it or nothing.
    fn write<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, Error>,
    ) -> Result<T, Error> {
        match &mut self.backend {
            Backend::Sqlite(backend) => backend.write(work),
            Backend::Postgres(backend) => backend.write(work),
        }
    }

    /// Runs `work` in one read transaction: what it reads is of one moment.
    fn read<T>(&mut self, work: impl FnOnce(&mut dyn Sql) -> Result<T, Error>) -> Result<T, Error> {
        match &mut self.backend {
            Backend::Sqlite(backend) => backend.read(work),
            Backend::Postgres(backend) => backend.read(work),
        }
    }
}
