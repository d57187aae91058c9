//! The embedded backend: one SQLite file in WAL mode, so `keyward serve` and CLI commands can
//! use it at the same time. Writes take SQLite's write lock up front (`BEGIN IMMEDIATE`), which
//! serializes every change across processes.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::migrate::{self, Adoption};
use super::sql::{Dialect, Row, Sql, Value};
use crate::error::Error;

/// `PRAGMA user_version` of a store managed by versioned migrations. keyward before versioned
/// migrations wrote 1 or 2 and refuses anything higher, so it never opens a newer store.
const MIGRATED_USER_VERSION: i64 = 3;

pub struct SqliteBackend {
    conn: Connection,
}

impl SqliteBackend {
    /// Opens the store at `path`, creating the file when `create` allows it, and brings its
    /// schema up to date.
    pub fn open(path: &Path) -> Result<SqliteBackend, Error> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(Error::invalid(
                    "store_directory_missing",
                    format!(
                        "cannot create the store {}: the directory {} does not exist; create it \
                         (mkdir -p {}, owned by the user keyward runs as) or choose another --db",
                        path.display(),
                        dir.display(),
                        dir.display()
                    ),
                ));
            }
        }
        create_private(path)?;
        let conn = Connection::open(path).map_err(|error| {
            Error::internal(format!("cannot open the store {}: {error}", path.display()))
        })?;
        SqliteBackend::init(conn)
    }

    #[cfg(test)]
    pub fn in_memory() -> Result<SqliteBackend, Error> {
        SqliteBackend::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<SqliteBackend, Error> {
        conn.busy_timeout(Duration::from_secs(10))?;
        // WAL lets `keyward serve` read snapshots while a CLI writes; "memory" for in-memory.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let mut backend = SqliteBackend { conn };
        // One immediate transaction: two processes opening a new store at once migrate it once.
        backend.write(|sql| {
            let adoption = legacy_adoption(sql)?;
            migrate::run(sql, migrate::SQLITE, adoption)?;
            sql.execute(
                &format!("PRAGMA user_version = {MIGRATED_USER_VERSION}"),
                &[],
            )?;
            Ok(())
        })?;
        Ok(backend)
    }

    /// Runs `work` in one transaction that holds the write lock from its start; commits when
    /// `work` succeeds, rolls back otherwise.
    pub fn write<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut handle = SqliteTx(&tx);
        let result = work(&mut handle)?;
        tx.commit()?;
        Ok(result)
    }

    /// Runs `work` in one read transaction: everything it reads is of one moment.
    pub fn read<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let tx = self.conn.transaction()?;
        let mut handle = SqliteTx(&tx);
        let result = work(&mut handle)?;
        tx.commit()?;
        Ok(result)
    }
}

/// Creates a missing store file readable by its owner only. SQLite creates the WAL and shared
/// memory files (`-wal`, `-shm`) with the database file's permissions, so they are 0600 too: the
/// store holds key hashes, spend and the audit trail. A store others may read already is left as
/// it is (another account may run the CLI on purpose), with a warning.
fn create_private(path: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                if let Ok(metadata) = std::fs::metadata(path) {
                    if metadata.permissions().mode() & 0o077 != 0 {
                        eprintln!(
                            "warning: the store {} is readable by other users; chmod 600 it \
                             (and its -wal and -shm files)",
                            path.display()
                        );
                    }
                }
            }
            Err(error) => {
                return Err(Error::internal(format!(
                    "cannot create the store {}: {error}",
                    path.display()
                )))
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// A store written before versioned migrations has no migration history: this finds which
/// migration its schema matches (`PRAGMA user_version` 1 is migration 1; 2 is migration 2, or 3
/// once it has the pending-spend columns), so that only the later ones run.
fn legacy_adoption(sql: &mut dyn Sql) -> Result<Adoption, Error> {
    let has_table = |sql: &mut dyn Sql, name: &str| -> Result<bool, Error> {
        sql.query_one(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
            &[Value::from(name)],
        )?
        .columns()
        .flag()
    };
    if has_table(sql, migrate::HISTORY_TABLE)? || !has_table(sql, "policy_version")? {
        return Ok(Adoption::None);
    }
    let user_version = sql.query_int("PRAGMA user_version", &[])?;
    let has_pending_spend = sql
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('keys') \
             WHERE name = 'pending_spend_microusd')",
            &[],
        )?
        .columns()
        .flag()?;
    match (user_version, has_pending_spend) {
        (1, _) => Ok(Adoption::AtVersion(1)),
        (2, false) => Ok(Adoption::AtVersion(2)),
        (2, true) => Ok(Adoption::AtVersion(3)),
        (found, _) => Err(Error::internal(format!(
            "the store has schema version {found} but no migration history; this keyward \
             cannot tell what it holds"
        ))),
    }
}

struct SqliteTx<'c>(&'c Transaction<'c>);

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(value) => ToSqlOutput::Borrowed(ValueRef::Integer(*value)),
            Value::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        })
    }
}

fn value_of(value: ValueRef<'_>) -> Result<Value, Error> {
    match value {
        ValueRef::Null => Ok(Value::Null),
        ValueRef::Integer(value) => Ok(Value::Int(value)),
        ValueRef::Text(bytes) => String::from_utf8(bytes.to_vec())
            .map(Value::Text)
            .map_err(|_| Error::internal("store error: a stored text is not UTF-8")),
        ValueRef::Real(_) | ValueRef::Blob(_) => Err(Error::internal(
            "store error: a column holds a float or a blob; keyward stores neither",
        )),
    }
}

impl Sql for SqliteTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, Error> {
        let changed = self
            .0
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))?;
        Ok(u64::try_from(changed).unwrap_or(u64::MAX))
    }

    fn for_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(Row) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut statement = self.0.prepare_cached(sql)?;
        let width = statement.column_count();
        let mut rows = statement.query(rusqlite::params_from_iter(params))?;
        while let Some(row) = rows.next()? {
            let values = (0..width)
                .map(|index| value_of(row.get_ref(index)?))
                .collect::<Result<Vec<_>, Error>>()?;
            each(Row(values))?;
        }
        Ok(())
    }

    fn batch(&mut self, sql: &str) -> Result<(), Error> {
        self.0.execute_batch(sql)?;
        Ok(())
    }
}

#[cfg(test)]
impl SqliteBackend {
    /// The column names of a table, for the migration tests.
    pub fn columns(&mut self, table: &str) -> Vec<String> {
        self.read(|sql| {
            sql.query_map(
                "SELECT name FROM pragma_table_info(?1)",
                &[Value::from(table)],
                |row| row.columns().text(),
            )
        })
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::migrate::SQLITE;
    use crate::store::test_support::*;
    use crate::store::{KeyUpdate, Store};
    use keyward_engine::snapshot::Policy;
    use keyward_engine::usage_report::UsageReport;

    /// A store of keyward's first schema (migration 1 is that schema, verbatim), with data.
    fn schema_v1() -> String {
        format!(
            "{}{}",
            include_str!("../../migrations/sqlite/V1__initial.sql"),
            r#"
INSERT INTO projects (id, org, status, spend_cap_microusd, spent_microusd, created_at)
    VALUES ('proj_old', 'org_1', 'active', 9000000, 1500000, 50);
INSERT INTO keys (id, format, secret_sha256, project, environment, status, scopes,
                  spend_cap_microusd, spent_microusd, label, created_at, last_seen_at)
    VALUES ('kOldKey00001', 'ak',
            'f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114',
            'proj_old', 'live', 'active', '["chat:write"]', 5000000, 1000000, 'legacy', 60, 70);
INSERT INTO audit_events (at, actor, action, target, details, policy_version)
    VALUES (60, 'cli', 'key.create', 'kOldKey00001', '{}', 1);
UPDATE policy_version SET version = 3;
PRAGMA user_version = 1;
"#
        )
    }

    fn sqlite_of(store: &mut Store) -> &mut SqliteBackend {
        match &mut store.backend {
            crate::store::Backend::Sqlite(backend) => backend,
            crate::store::Backend::Postgres(_) => panic!("a SQLite store"),
        }
    }

    fn history(store: &mut Store) -> Vec<(i64, String)> {
        store
            .read(|sql| {
                sql.query_map(
                    "SELECT version, name FROM refinery_schema_history ORDER BY version",
                    &[],
                    |row| {
                        let mut columns = row.columns();
                        Ok((columns.int()?, columns.text()?))
                    },
                )
            })
            .unwrap()
    }

    fn user_version(store: &mut Store) -> i64 {
        store
            .read(|sql| sql.query_int("PRAGMA user_version", &[]))
            .unwrap()
    }

    #[test]
    fn a_store_of_the_previous_schema_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(&schema_v1())
            .unwrap();

        let mut store = Store::open(&path).unwrap();
        let keys = sqlite_of(&mut store).columns("keys");
        for column in [
            "spend_soft_cap_microusd",
            "rate_limit_rpm",
            "rate_limit_tpm",
            "pending_spend_microusd",
        ] {
            assert!(keys.iter().any(|c| c == column), "{column}");
        }
        assert!(sqlite_of(&mut store)
            .columns("projects")
            .iter()
            .any(|c| c == "spend_soft_cap_microusd"));
        assert!(!sqlite_of(&mut store).columns("prices").is_empty());
        assert!(!sqlite_of(&mut store).columns("usage_batches").is_empty());
        // Migration 1 was adopted (recorded, not run); the later ones ran.
        let names: Vec<String> = history(&mut store).into_iter().map(|(_, n)| n).collect();
        assert_eq!(
            names,
            [
                "initial",
                "soft_caps_rate_limits_prices_usage",
                "pending_spend",
                "snapshot_issue",
                "dataplane_tokens",
                "budgets_plans_quotas",
                "provider_keys",
                "provider_key_name_last_used"
            ]
        );
        assert_eq!(user_version(&mut store), MIGRATED_USER_VERSION);

        // The data is kept, and works with the new features.
        assert_eq!(store.policy_version().unwrap(), 3);
        let key = store.key("kOldKey00001").unwrap();
        assert_eq!(
            (key.spent_microusd, key.last_seen_at, key.label.as_deref()),
            (1_000_000, Some(70), Some("legacy"))
        );
        assert_eq!((key.rate_limits, key.spend_soft_cap_microusd), (None, None));
        assert_eq!(store.audit_events(None).unwrap().len(), 1);
        let update = KeyUpdate {
            requests_per_minute: Some(Some(10)),
            spend_soft_cap_microusd: Some(Some(4_000_000)),
            ..KeyUpdate::default()
        };
        store
            .update_key("cli", 100, "kOldKey00001", &update)
            .unwrap();
        let report = UsageReport::new(
            "envoy-1",
            "b1",
            vec![entry("kOldKey00001", Some("proj_old"), 500_000, 200)],
        );
        assert_eq!(
            store
                .apply_usage_report(&report, 300, true)
                .unwrap()
                .ack
                .version,
            5
        );
        let policy = Policy::compile(store.snapshot(400).unwrap()).unwrap();
        let key = policy.key_by_id("kOldKey00001").unwrap();
        assert_eq!(key.spent_microusd, 1_500_000);
        assert_eq!(key.spend_soft_cap_microusd, Some(4_000_000));
        assert_eq!(
            policy.project("proj_old").unwrap().spent_microusd,
            2_000_000
        );
        drop(store);

        // Opening again is a no-op.
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.policy_version().unwrap(), 5);
        assert_eq!(history(&mut store).len(), SQLITE.len());
        // A store migrated by a newer keyward is refused, and left as it was.
        store
            .write(|sql| {
                sql.execute(
                    "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
                     VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '1')",
                    &[],
                )
            })
            .unwrap();
        drop(store);
        let error = Store::open(&path).err().unwrap();
        assert!(
            error.message.contains("schema version 99"),
            "{}",
            error.message
        );
        // keyward from before versioned migrations refuses it too: it knows user_version 2.
        let conn = Connection::open(&path).unwrap();
        let fence: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert!(fence > 2);
    }

    #[test]
    fn stores_of_the_second_schema_are_adopted_with_or_without_pending_spend() {
        // The second schema is the first plus migration 2; with the pending-spend columns, it
        // is migration 3's.
        for (extra, adopted_at) in [
            ("", 2),
            (
                include_str!("../../migrations/sqlite/V3__pending_spend.sql"),
                3,
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("v2.db");
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&schema_v1()).unwrap();
            conn.execute_batch(include_str!(
                "../../migrations/sqlite/V2__soft_caps_rate_limits_prices_usage.sql"
            ))
            .unwrap();
            conn.execute_batch(extra).unwrap();
            conn.execute_batch("PRAGMA user_version = 2").unwrap();
            drop(conn);
            let mut store = Store::open(&path).unwrap();
            assert_eq!(
                history(&mut store).len(),
                SQLITE.len(),
                "adopted at {adopted_at}"
            );
            assert_eq!(store.key("kOldKey00001").unwrap().spent_microusd, 1_000_000);
            let id = key_in(&mut store, crate::store::Owner::Project("proj_old".into()));
            let report = UsageReport::new("r", "b", vec![entry(&id, Some("proj_old"), 7, 1)]);
            store.apply_usage_report(&report, 10, true).unwrap();
            assert_eq!(store.project("proj_old").unwrap().spent_microusd, 1_500_007);
        }
    }

    #[test]
    fn provider_keys_of_migration_7_gain_a_name_and_a_last_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v7.db");
        // A store as keyward left it at migration 7, with a provider key.
        let mut backend = SqliteBackend {
            conn: Connection::open(&path).unwrap(),
        };
        backend
            .write(|sql| {
                migrate::run(sql, &SQLITE[..7], migrate::Adoption::None)?;
                sql.execute(
                    &format!("PRAGMA user_version = {MIGRATED_USER_VERSION}"),
                    &[],
                )?;
                sql.execute(
                    "INSERT INTO provider_keys (provider, owner_kind, owner_id, ciphertext, \
                     last4, created_at, rotated_at) VALUES ('openai', 'org', 'org_1', 'c', \
                     'abcd', 10, NULL)",
                    &[],
                )
            })
            .unwrap();
        assert!(!backend
            .columns("provider_keys")
            .contains(&"last_used_at".to_owned()));
        drop(backend);
        let mut store = Store::open(&path).unwrap();
        assert_eq!(history(&mut store).len(), SQLITE.len());
        let columns = sqlite_of(&mut store).columns("provider_keys");
        assert!(columns.iter().any(|c| c == "name") && columns.iter().any(|c| c == "last_used_at"));
        let views = store.provider_key_views().unwrap();
        assert_eq!(views.len(), 1);
        assert_eq!(
            (
                views[0].last4.as_str(),
                &views[0].name,
                views[0].last_used_at
            ),
            ("abcd", &None, None)
        );
    }

    #[test]
    fn a_new_store_runs_every_migration_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        let mut store = Store::open(&path).unwrap();
        assert_eq!(history(&mut store).len(), SQLITE.len());
        assert_eq!(store.policy_version().unwrap(), 1);
        drop(store);
        let mut store = Store::open(&path).unwrap();
        assert_eq!(history(&mut store).len(), SQLITE.len());
        assert_eq!(user_version(&mut store), MIGRATED_USER_VERSION);
    }

    #[cfg(unix)]
    #[test]
    fn a_new_store_and_its_wal_are_readable_by_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.db");
        let mut store = Store::open(&path).unwrap();
        store
            .create_project("t", 1, "proj_a", "org_1", None, None)
            .unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.path().join(format!("private.db{suffix}"));
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
    }
}
