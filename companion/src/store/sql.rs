//! The query layer every store module is written against: SQL text with `?1`-style placeholders,
//! the few value kinds the schema uses (integers, text, NULL), and rows read column by column in
//! `SELECT` order. Each backend implements [`Sql`] for its transactions, so the projects, keys,
//! prices, usage and snapshot modules are written once, whatever database holds them.

use crate::error::Error;
use crate::units::{from_sql_int, saturating_sql_int, to_sql_int};

/// A bound parameter or a column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl Value {
    /// A stored count, time or amount: refused past `i64::MAX` (`value_too_large`).
    pub fn uint(value: u64) -> Result<Value, Error> {
        to_sql_int(value).map(Value::Int)
    }

    pub fn opt_uint(value: Option<u64>) -> Result<Value, Error> {
        value.map_or(Ok(Value::Null), Value::uint)
    }

    /// A sum the data plane reported: held at `i64::MAX` rather than refused.
    pub fn saturating(value: u64) -> Value {
        Value::Int(saturating_sql_int(value))
    }

    pub fn opt_text(value: Option<&str>) -> Value {
        value.map_or(Value::Null, Value::from)
    }

    /// A list stored as a JSON array (scopes, models).
    pub fn json<T: serde::Serialize>(value: &T) -> Result<Value, Error> {
        Ok(Value::Text(serde_json::to_string(value)?))
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Value {
        Value::Int(value)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Value {
        Value::Text(value.to_owned())
    }
}

impl From<&String> for Value {
    fn from(value: &String) -> Value {
        Value::Text(value.clone())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Value {
        Value::Text(value)
    }
}

impl From<Option<&String>> for Value {
    fn from(value: Option<&String>) -> Value {
        value.map_or(Value::Null, Value::from)
    }
}

/// Parameters for a statement: `args![id, Value::uint(now)?]`.
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        &[$($crate::store::sql::Value::from($value)),*]
    };
}
pub(crate) use args;

/// One result row, its values in the order of the `SELECT` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// Reads the columns in order; the readers name the column's type and nullability.
    pub fn columns(&self) -> Columns<'_> {
        Columns {
            values: self.0.iter(),
            index: 0,
        }
    }
}

/// A cursor over one row's values.
pub struct Columns<'r> {
    values: std::slice::Iter<'r, Value>,
    index: usize,
}

impl<'r> Columns<'r> {
    fn next(&mut self) -> Result<&'r Value, Error> {
        self.index += 1;
        self.values.next().ok_or_else(|| {
            Error::internal(format!(
                "store error: a row has fewer than {} columns",
                self.index
            ))
        })
    }

    fn mismatch(&self, expected: &str, found: &Value) -> Error {
        let kind = match found {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Text(_) => "text",
        };
        Error::internal(format!(
            "store error: column {} is {kind}, expected {expected}",
            self.index
        ))
    }

    pub fn opt_text(&mut self) -> Result<Option<String>, Error> {
        match self.next()? {
            Value::Null => Ok(None),
            Value::Text(text) => Ok(Some(text.clone())),
            other @ Value::Int(_) => Err(self.mismatch("text", other)),
        }
    }

    pub fn text(&mut self) -> Result<String, Error> {
        self.opt_text()?
            .ok_or_else(|| self.mismatch("text", &Value::Null))
    }

    pub fn opt_int(&mut self) -> Result<Option<i64>, Error> {
        match self.next()? {
            Value::Null => Ok(None),
            Value::Int(value) => Ok(Some(*value)),
            other @ Value::Text(_) => Err(self.mismatch("an integer", other)),
        }
    }

    pub fn int(&mut self) -> Result<i64, Error> {
        self.opt_int()?
            .ok_or_else(|| self.mismatch("an integer", &Value::Null))
    }

    /// Stored counts, times and amounts are never negative; a negative one reads as 0.
    pub fn opt_uint(&mut self) -> Result<Option<u64>, Error> {
        Ok(self.opt_int()?.map(from_sql_int))
    }

    pub fn uint(&mut self) -> Result<u64, Error> {
        self.int().map(from_sql_int)
    }

    /// A boolean: SQLite gives 0 or 1, PostgreSQL's booleans are read as the same.
    pub fn flag(&mut self) -> Result<bool, Error> {
        self.int().map(|value| value != 0)
    }
}

/// Which SQL dialect a transaction speaks, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// One open transaction of a backend.
pub trait Sql {
    fn dialect(&self) -> Dialect;

    /// Runs one statement; returns the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, Error>;

    /// Runs one query and hands each row to `each`, one at a time (a snapshot of a million
    /// keys is never held twice).
    fn for_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(Row) -> Result<(), Error>,
    ) -> Result<(), Error>;

    /// Runs several statements without parameters (migrations).
    fn batch(&mut self, sql: &str) -> Result<(), Error>;
}

impl dyn Sql + '_ {
    pub fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, Error> {
        let mut rows = Vec::new();
        self.for_each(sql, params, &mut |row| {
            rows.push(row);
            Ok(())
        })?;
        Ok(rows)
    }

    /// The rows, each converted by `convert`.
    pub fn query_map<T>(
        &mut self,
        sql: &str,
        params: &[Value],
        mut convert: impl FnMut(&Row) -> Result<T, Error>,
    ) -> Result<Vec<T>, Error> {
        let mut converted = Vec::new();
        self.for_each(sql, params, &mut |row| {
            converted.push(convert(&row)?);
            Ok(())
        })?;
        Ok(converted)
    }

    /// The first row, if any.
    pub fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, Error> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The first row; its absence is a store error.
    pub fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row, Error> {
        self.query_opt(sql, params)?
            .ok_or_else(|| Error::internal("store error: a query returned no row"))
    }

    /// The first column of the one row a query returns, as an integer.
    pub fn query_int(&mut self, sql: &str, params: &[Value]) -> Result<i64, Error> {
        self.query_one(sql, params)?.columns().int()
    }
}

/// `?1`, `?2`... as PostgreSQL's `$1`, `$2`... Every statement is a constant of this crate with
/// no `?` inside a literal, so a plain rewrite is exact.
pub fn numbered_placeholders(sql: &str) -> String {
    sql.replace('?', "$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_read_in_order_and_check_their_kind() {
        let row = Row(vec![
            Value::Text("a".into()),
            Value::Null,
            Value::Int(-5),
            Value::Int(1),
        ]);
        let mut columns = row.columns();
        assert_eq!(columns.text().unwrap(), "a");
        assert_eq!(columns.opt_uint().unwrap(), None);
        assert_eq!(
            columns.uint().unwrap(),
            0,
            "a negative stored number reads as 0"
        );
        assert!(columns.flag().unwrap());
        assert!(columns.int().is_err(), "past the last column");
        assert!(row.columns().int().is_err(), "text is not an integer");
        assert!(Row(vec![Value::Null]).columns().text().is_err());
    }

    #[test]
    fn values_refuse_or_saturate_large_numbers() {
        assert_eq!(Value::uint(5).unwrap(), Value::Int(5));
        assert_eq!(Value::uint(u64::MAX).unwrap_err().code, "value_too_large");
        assert_eq!(Value::saturating(u64::MAX), Value::Int(i64::MAX));
        assert_eq!(Value::opt_uint(None).unwrap(), Value::Null);
        assert_eq!(
            numbered_placeholders("a = ?1 AND b = ?12"),
            "a = $1 AND b = $12"
        );
    }
}
