//! The store: projects, keys, prices, usage batches and the audit trail. Every change runs in
//! one serialized transaction that also bumps `policy_version` and writes its audit event(s), so
//! the snapshot version, the data and the audit trail never disagree. Only hashes of keys are
//! stored; no column ever holds a plaintext key or a secret.
//!
//! The entity modules (`projects`, `keys`, `prices`, `usage`, `snapshot`) are written once
//! against the query layer (`sql`); a backend (`sqlite`) supplies transactions and migrations.

mod change;
mod keys;
mod migrate;
mod model;
mod prices;
mod projects;
mod rotation;
mod snapshot;
mod sql;
mod sqlite;
mod usage;
mod validate;

#[cfg(test)]
mod test_support;

use std::path::Path;

pub use model::{
    KeySettings, KeyUpdate, KeyView, NewKey, Owner, PriceView, ProjectUpdate, ProjectView,
    StatusChange,
};

use crate::error::Error;
use sql::Sql;
use sqlite::SqliteBackend;

/// The actor recorded for changes keyward makes by itself (a rotation grace deadline passing).
pub const SYSTEM_ACTOR: &str = "system";

pub struct Store {
    backend: SqliteBackend,
}

impl Store {
    /// Opens (and on first use creates) the SQLite store at `path`, migrating its schema.
    pub fn open(path: &Path) -> Result<Store, Error> {
        Ok(Store {
            backend: SqliteBackend::open(path)?,
        })
    }

    #[cfg(test)]
    pub fn in_memory() -> Result<Store, Error> {
        Ok(Store {
            backend: SqliteBackend::in_memory()?,
        })
    }

    /// Runs `work` in one serialized write transaction: all of it or nothing.
    fn write<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.backend.write(work)
    }

    /// Runs `work` in one read transaction: what it reads is of one moment.
    fn read<T>(&mut self, work: impl FnOnce(&mut dyn Sql) -> Result<T, Error>) -> Result<T, Error> {
        self.backend.read(work)
    }
}
