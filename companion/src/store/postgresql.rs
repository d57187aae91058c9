//! The PostgreSQL backend, for highly available deployments: several `keyward serve` replicas
//! share one database. Every write transaction first takes one transaction-scoped advisory lock,
//! so changes, usage batches and spend folding are serialized across replicas exactly as SQLite's
//! `BEGIN IMMEDIATE` serializes processes: a batch id is checked and recorded under the lock (each
//! batch applies once), pending spend is folded and zeroed under it (once), and versions are
//! bumped one at a time. Reads run as `REPEATABLE READ`, so a snapshot is of one moment.

use std::error::Error as StdError;

use bytes::BytesMut;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, IsolationLevel, NoTls, Transaction};

use super::migrate::{self, Adoption};
use super::sql::{numbered_placeholders, Dialect, Row, Sql, Value};
use crate::error::Error;

/// The advisory lock every keyward write (and migration) takes: one key for the whole store.
const WRITE_LOCK: &str = "SELECT pg_advisory_xact_lock(7310582541285437300)";

pub struct PostgresBackend {
    url: String,
    client: Client,
}

/// The URL without its password, for error messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = url.get(scheme + 3..at).unwrap_or_default();
            let user = userinfo.split(':').next().unwrap_or_default();
            format!(
                "{}{user}:***{}",
                url.get(..scheme + 3).unwrap_or_default(),
                url.get(at..).unwrap_or_default()
            )
        }
        _ => url.to_owned(),
    }
}

fn connect(url: &str) -> Result<Client, Error> {
    Client::connect(url, NoTls).map_err(|error| {
        Error::internal(format!(
            "cannot connect to the store {}: {error}",
            redacted(url)
        ))
    })
}

impl From<postgres::Error> for Error {
    fn from(error: postgres::Error) -> Error {
        Error::internal(format!("store error: {error}"))
    }
}

impl PostgresBackend {
    /// Connects to `url` (`postgres://user@host:port/db`) and brings the schema up to date.
    pub fn open(url: &str) -> Result<PostgresBackend, Error> {
        let mut backend = PostgresBackend {
            url: url.to_owned(),
            client: connect(url)?,
        };
        // Under the write lock: replicas starting together migrate the database once.
        backend.write(|sql| migrate::run(sql, migrate::POSTGRES, Adoption::None))?;
        Ok(backend)
    }

    /// A connection that dropped (a database restart, a network cut) is replaced on next use;
    /// the transaction that saw it fail was rolled back by the server and reported as an error.
    fn client(&mut self) -> Result<&mut Client, Error> {
        if self.client.is_closed() {
            self.client = connect(&self.url)?;
        }
        Ok(&mut self.client)
    }

    /// Runs `work` in one transaction holding keyward's write lock; commits on success.
    pub fn write<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut tx = self.client()?.transaction()?;
        tx.batch_execute(WRITE_LOCK)?;
        let result = work(&mut PostgresTx(&mut tx))?;
        tx.commit()?;
        Ok(result)
    }

    /// Runs `work` in one read-only `REPEATABLE READ` transaction: one moment of the store.
    pub fn read<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut tx = self
            .client()?
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let result = work(&mut PostgresTx(&mut tx))?;
        tx.commit()?;
        Ok(result)
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(value) => match *ty {
                Type::INT8 => value.to_sql(ty, out),
                Type::INT4 => i32::try_from(*value)?.to_sql(ty, out),
                Type::BOOL => (*value != 0).to_sql(ty, out),
                _ => Err(format!("an integer parameter where {ty} is expected").into()),
            },
            Value::Text(text) => text.to_sql(ty, out),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        // Checked per value in `to_sql`.
        true
    }

    postgres::types::to_sql_checked!();
}

struct PostgresTx<'t, 'c>(&'t mut Transaction<'c>);

fn value_of(row: &postgres::Row, index: usize) -> Result<Value, Error> {
    let column_type = row
        .columns()
        .get(index)
        .map(|column| column.type_().clone())
        .ok_or_else(|| Error::internal("store error: a column is missing"))?;
    let value = match column_type {
        Type::INT8 => row.try_get::<_, Option<i64>>(index)?.map(Value::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(index)?
            .map(|value| Value::Int(value.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(index)?
            .map(|value| Value::Int(value.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(index)?
            .map(|value| Value::Int(value.into())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            row.try_get::<_, Option<String>>(index)?.map(Value::Text)
        }
        other => {
            return Err(Error::internal(format!(
                "store error: a column of type {other}; keyward stores integers and text"
            )))
        }
    };
    Ok(value.unwrap_or(Value::Null))
}

impl Sql for PostgresTx<'_, '_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, Error> {
        let params: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|value| value as &(dyn ToSql + Sync))
            .collect();
        Ok(self.0.execute(&numbered_placeholders(sql), &params)?)
    }

    fn for_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(Row) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut rows = self.0.query_raw(&numbered_placeholders(sql), params)?;
        while let Some(row) = rows.next()? {
            let values = (0..row.len())
                .map(|index| value_of(&row, index))
                .collect::<Result<Vec<_>, Error>>()?;
            each(Row(values))?;
        }
        Ok(())
    }

    fn batch(&mut self, sql: &str) -> Result<(), Error> {
        Ok(self.0.batch_execute(sql)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redacted("postgres://keyward:s3cret@db:5432/keyward"),
            "postgres://keyward:***@db:5432/keyward"
        );
        assert_eq!(redacted("postgres://db/keyward"), "postgres://db/keyward");
    }
}
