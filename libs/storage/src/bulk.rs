//! Writing many rows in one statement.
//!
//! On PostgreSQL the rows travel column by column as typed arrays and are
//! expanded with `unnest`: a handful of parameters instead of one per value,
//! so a thousand-row batch is parsed, bound and planned about as cheaply as
//! one row. Arrays cannot carry NULL through the driver, so a NULL travels
//! as a sentinel that `NULLIF` turns back (text: U+0001, never accepted from
//! callers; numbers: the type's minimum; bytes: empty). On SQLite the rows
//! go as multi-row `VALUES` lists.

use sea_orm::Value;
use sea_orm::sea_query::ArrayType;

use crate::db::WriteTx;
use crate::error::StorageError;

/// The stored type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    /// TEXT.
    Text,
    /// BIGINT.
    BigInt,
    /// INTEGER.
    Int,
    /// BYTEA / BLOB.
    Bytes,
    /// BOOLEAN.
    Bool,
}

const TEXT_NULL: &str = "\u{1}";

impl Col {
    fn pg_array(self) -> &'static str {
        match self {
            Col::Text => "text[]",
            Col::BigInt => "bigint[]",
            Col::Int => "integer[]",
            Col::Bytes => "bytea[]",
            Col::Bool => "boolean[]",
        }
    }

    fn null_sentinel(self) -> &'static str {
        match self {
            Col::Text => "E'\\x01'",
            Col::BigInt => "-9223372036854775808",
            Col::Int => "-2147483648",
            Col::Bytes => "'\\x'::bytea",
            Col::Bool => "NULL",
        }
    }
}

/// Rows per statement on SQLite (its variable limit is 32766).
const SQLITE_MAX_VARIABLES: usize = 30_000;

/// Inserts `rows` (values in `columns` order) into `table`, followed by
/// `suffix` (e.g. an `ON CONFLICT` clause); rows affected.
pub async fn insert(
    tx: &WriteTx,
    table: &str,
    columns: &[(&str, Col)],
    rows: Vec<Vec<Value>>,
    suffix: &str,
) -> Result<u64, StorageError> {
    let mut affected = 0;
    for (sql, values) in insert_statements(tx.backend(), table, columns, rows, suffix)? {
        affected += tx.execute(&sql, values).await?;
    }
    Ok(affected)
}

/// Inserts as [`insert`] does and returns `returning` (a select list) of
/// the rows written: with `ON CONFLICT … DO NOTHING`, the rows that were new.
pub async fn insert_returning(
    tx: &WriteTx,
    table: &str,
    columns: &[(&str, Col)],
    rows: Vec<Vec<Value>>,
    suffix: &str,
    returning: &str,
) -> Result<Vec<sea_orm::QueryResult>, StorageError> {
    let suffix = format!("{suffix} RETURNING {returning}");
    let mut out = Vec::new();
    for (sql, values) in insert_statements(tx.backend(), table, columns, rows, &suffix)? {
        out.extend(tx.query_all(&sql, values).await?);
    }
    Ok(out)
}

/// The statements that insert `rows`: one on PostgreSQL, one per chunk of
/// [`SQLITE_MAX_VARIABLES`] on SQLite.
fn insert_statements(
    backend: sea_orm::DbBackend,
    table: &str,
    columns: &[(&str, Col)],
    rows: Vec<Vec<Value>>,
    suffix: &str,
) -> Result<Vec<(String, Vec<Value>)>, StorageError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    if backend == sea_orm::DbBackend::Postgres {
        return Ok(vec![pg_insert(1, table, columns, rows, suffix)?]);
    }
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let per_statement = (SQLITE_MAX_VARIABLES / columns.len()).max(1);
    let mut statements = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Value>> = rows.by_ref().take(per_statement).collect();
        let mut groups = Vec::with_capacity(chunk.len());
        let mut values = Vec::with_capacity(chunk.len() * columns.len());
        for (r, row) in chunk.into_iter().enumerate() {
            let marks: Vec<String> = (0..columns.len())
                .map(|c| format!("${}", r * columns.len() + c + 1))
                .collect();
            groups.push(format!("({})", marks.join(", ")));
            values.extend(row);
        }
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES {} {suffix}",
            names.join(", "),
            groups.join(", ")
        );
        statements.push((sql, values));
    }
    Ok(statements)
}

/// Writes `rows` (values in `columns` order) into `table` with `COPY`, on
/// PostgreSQL, all or none: `Some(rows copied)`, or `None` when a row
/// broke a unique constraint (a row written before), in which case none
/// was written and the transaction goes on. The copy runs inside a
/// savepoint, which only a refusal rolls back. `None` on SQLite, which has
/// no `COPY`: the caller inserts instead.
///
/// COPY skips what an `INSERT … ON CONFLICT` from arrays pays for every row:
/// the arrays' encoding and unnesting, and the speculative insertion that
/// lets a conflict be skipped (decision 0023).
pub async fn copy_new(
    tx: &WriteTx,
    table: &str,
    columns: &[(&str, Col)],
    rows: &[Vec<Value>],
) -> Result<Option<u64>, StorageError> {
    use sea_orm::ConnectionTrait;
    if tx.backend() != sea_orm::DbBackend::Postgres {
        return Ok(None);
    }
    if rows.is_empty() {
        return Ok(Some(0));
    }
    let text = copy_text(columns, rows)?;
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let statement = format!("COPY {table} ({}) FROM STDIN", names.join(", "));
    tx.execute_unprepared("SAVEPOINT bulk_copy").await?;
    match tx.copy_in(&statement, text).await {
        Ok(copied) => Ok(Some(copied)),
        Err(StorageError::Conflict(_)) => {
            tx.execute_unprepared("ROLLBACK TO SAVEPOINT bulk_copy")
                .await?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `rows` in COPY's text format: tab-separated, `\N` for NULL, and the
/// backslash, tab, newline and carriage return escaped.
fn copy_text(columns: &[(&str, Col)], rows: &[Vec<Value>]) -> Result<Vec<u8>, StorageError> {
    use std::fmt::Write;
    let mut text = String::with_capacity(rows.len() * 64 * columns.len() / 4);
    for row in rows {
        if row.len() != columns.len() {
            return Err(StorageError::Other(format!(
                "copy: row has {} values for {} columns",
                row.len(),
                columns.len()
            )));
        }
        for (i, (value, (_, col))) in row.iter().zip(columns).enumerate() {
            if i > 0 {
                text.push('\t');
            }
            let written = match (col, value) {
                (Col::Text, Value::String(Some(v))) => {
                    for c in v.chars() {
                        match c {
                            '\\' => text.push_str("\\\\"),
                            '\t' => text.push_str("\\t"),
                            '\n' => text.push_str("\\n"),
                            '\r' => text.push_str("\\r"),
                            c => text.push(c),
                        }
                    }
                    Ok(())
                }
                (Col::BigInt, Value::BigInt(Some(v))) => write!(text, "{v}"),
                (Col::Int, Value::Int(Some(v))) => write!(text, "{v}"),
                (Col::Bool, Value::Bool(Some(v))) => write!(text, "{}", if *v { 't' } else { 'f' }),
                (Col::Bytes, Value::Bytes(Some(v))) => {
                    text.push_str("\\\\x");
                    for b in v {
                        let _ = write!(text, "{b:02x}");
                    }
                    Ok(())
                }
                (Col::Text, Value::String(None))
                | (Col::BigInt, Value::BigInt(None))
                | (Col::Int, Value::Int(None))
                | (Col::Bool, Value::Bool(None))
                | (Col::Bytes, Value::Bytes(None)) => {
                    text.push_str("\\N");
                    Ok(())
                }
                _ => {
                    return Err(StorageError::Other(format!(
                        "copy: a value does not fit a {col:?} column"
                    )));
                }
            };
            written.map_err(|e| StorageError::Other(format!("copy: {e}")))?;
        }
        text.push('\n');
    }
    Ok(text.into_bytes())
}

/// Bulk inserts into several tables sent together: on PostgreSQL one
/// statement (each insert a data-modifying CTE), so a batch that writes
/// orders, buyers and events pays one round trip for all three; on SQLite
/// one after another (no round trips to save).
#[derive(Default)]
pub struct Inserts<'a> {
    parts: Vec<InsertPart<'a>>,
}

struct InsertPart<'a> {
    table: &'a str,
    columns: &'a [(&'a str, Col)],
    rows: Vec<Vec<Value>>,
    suffix: String,
}

impl<'a> Inserts<'a> {
    /// Adds the rows of one table, as [`insert`] takes them.
    pub fn add(
        &mut self,
        table: &'a str,
        columns: &'a [(&'a str, Col)],
        rows: Vec<Vec<Value>>,
        suffix: impl Into<String>,
    ) {
        self.parts.push(InsertPart {
            table,
            columns,
            rows,
            suffix: suffix.into(),
        });
    }

    /// Writes them all; rows written per table, in the order added.
    pub async fn run(self, tx: &WriteTx) -> Result<Vec<u64>, StorageError> {
        if tx.backend() != sea_orm::DbBackend::Postgres {
            let mut counts = Vec::with_capacity(self.parts.len());
            for part in self.parts {
                counts.push(insert(tx, part.table, part.columns, part.rows, &part.suffix).await?);
            }
            return Ok(counts);
        }
        if self.parts.iter().all(|p| p.rows.is_empty()) {
            return Ok(vec![0; self.parts.len()]);
        }
        // An empty part is an insert from empty arrays: it writes nothing
        // and counts 0, so every part keeps its place.
        let mut ctes = Vec::with_capacity(self.parts.len());
        let mut counts = Vec::with_capacity(self.parts.len());
        let mut values: Vec<Value> = Vec::new();
        for (i, part) in self.parts.into_iter().enumerate() {
            let (sql, arrays) = pg_insert(
                values.len() + 1,
                part.table,
                part.columns,
                part.rows,
                &part.suffix,
            )?;
            values.extend(arrays);
            ctes.push(format!("w{i} AS ({sql} RETURNING 1)"));
            counts.push(format!("(SELECT count(*) FROM w{i}) AS n{i}"));
        }
        let sql = format!("WITH {} SELECT {}", ctes.join(", "), counts.join(", "));
        let rows = tx.query_all(&sql, values).await?;
        let row = rows
            .first()
            .ok_or_else(|| StorageError::Other("bulk inserts: no counts".into()))?;
        (0..counts.len())
            .map(|i| Ok(row.try_get::<i64>("", &format!("n{i}"))? as u64))
            .collect()
    }
}

/// The PostgreSQL statement inserting `rows` from arrays, its parameters
/// numbered from `first`, and those parameters.
fn pg_insert(
    first: usize,
    table: &str,
    columns: &[(&str, Col)],
    rows: Vec<Vec<Value>>,
    suffix: &str,
) -> Result<(String, Vec<Value>), StorageError> {
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let (unnest, select, values) = pg_arrays_from(first, table, columns, rows)?;
    let sql = format!(
        "INSERT INTO {table} ({}) SELECT {} FROM unnest({}) AS u({}) {suffix}",
        names.join(", "),
        select.join(", "),
        unnest.join(", "),
        names.join(", ")
    );
    Ok((sql, values))
}

/// Unnest parameters, select list, array values.
type PgArrays = (Vec<String>, Vec<String>, Vec<Value>);

/// The unnest parameters, the select list that turns sentinels back into
/// NULL, and the arrays, for `rows` of `columns`.
fn pg_arrays(
    table: &str,
    columns: &[(&str, Col)],
    rows: Vec<Vec<Value>>,
) -> Result<PgArrays, StorageError> {
    pg_arrays_from(1, table, columns, rows)
}

/// [`pg_arrays`] with parameters numbered from `first`.
fn pg_arrays_from(
    first: usize,
    table: &str,
    columns: &[(&str, Col)],
    rows: Vec<Vec<Value>>,
) -> Result<PgArrays, StorageError> {
    let mut arrays: Vec<Vec<Value>> = columns
        .iter()
        .map(|_| Vec::with_capacity(rows.len()))
        .collect();
    for row in rows {
        if row.len() != columns.len() {
            return Err(StorageError::Other(format!(
                "{table}: row has {} values for {} columns",
                row.len(),
                columns.len()
            )));
        }
        for (i, value) in row.into_iter().enumerate() {
            arrays[i].push(non_null(value, columns[i].1)?);
        }
    }
    let unnest: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, c))| format!("${}::{}", first + i, c.pg_array()))
        .collect();
    let select: Vec<String> = columns
        .iter()
        .map(|(n, c)| match c {
            Col::Bool => format!("u.{n}"),
            _ => format!("NULLIF(u.{n}, {})", c.null_sentinel()),
        })
        .collect();
    let values: Vec<Value> = columns
        .iter()
        .zip(arrays)
        .map(|((_, c), items)| Value::Array(array_type(*c), Some(Box::new(items))))
        .collect();
    Ok((unnest, select, values))
}

/// Updates existing rows of `table`: the first `keys` of `columns` name the
/// row, the rest are set: one `UPDATE … FROM unnest(…)` on PostgreSQL
/// (cheaper than an upsert: no speculative insertion), `UPDATE … FROM
/// (VALUES …)` on SQLite. Rows affected.
pub async fn update(
    tx: &WriteTx,
    table: &str,
    columns: &[(&str, Col)],
    keys: usize,
    rows: Vec<Vec<Value>>,
) -> Result<u64, StorageError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    if tx.backend() == sea_orm::DbBackend::Postgres {
        let (unnest, select, values) = pg_arrays(table, columns, rows)?;
        let set: Vec<String> = names
            .iter()
            .zip(&select)
            .skip(keys)
            .map(|(n, v)| format!("{n} = {v}"))
            .collect();
        let matching: Vec<String> = names[..keys]
            .iter()
            .map(|n| format!("t.{n} = u.{n}"))
            .collect();
        let sql = format!(
            "UPDATE {table} AS t SET {} FROM unnest({}) AS u({}) WHERE {}",
            set.join(", "),
            unnest.join(", "),
            names.join(", "),
            matching.join(" AND ")
        );
        return tx.execute(&sql, values).await;
    }
    // SQLite names the columns of a VALUES list column1, column2, ...
    let set: Vec<String> = names
        .iter()
        .enumerate()
        .skip(keys)
        .map(|(i, n)| format!("{n} = u.column{}", i + 1))
        .collect();
    let matching: Vec<String> = names[..keys]
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{table}.{n} = u.column{}", i + 1))
        .collect();
    let per_statement = (SQLITE_MAX_VARIABLES / columns.len()).max(1);
    let mut affected = 0;
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Value>> = rows.by_ref().take(per_statement).collect();
        let mut groups = Vec::with_capacity(chunk.len());
        let mut values = Vec::with_capacity(chunk.len() * columns.len());
        for (r, row) in chunk.into_iter().enumerate() {
            let marks: Vec<String> = (0..columns.len())
                .map(|c| format!("${}", r * columns.len() + c + 1))
                .collect();
            groups.push(format!("({})", marks.join(", ")));
            values.extend(row);
        }
        let sql = format!(
            "UPDATE {table} SET {} FROM (VALUES {}) AS u WHERE {}",
            set.join(", "),
            groups.join(", "),
            matching.join(" AND ")
        );
        affected += tx.execute(&sql, values).await?;
    }
    Ok(affected)
}

fn array_type(c: Col) -> ArrayType {
    match c {
        Col::Text => ArrayType::String,
        Col::BigInt => ArrayType::BigInt,
        Col::Int => ArrayType::Int,
        Col::Bytes => ArrayType::Bytes,
        Col::Bool => ArrayType::Bool,
    }
}

fn non_null(value: Value, col: Col) -> Result<Value, StorageError> {
    let mismatch = || {
        StorageError::Other(format!(
            "bulk insert: a value does not fit a {col:?} column"
        ))
    };
    Ok(match (col, value) {
        (Col::Text, Value::String(v)) => {
            Value::String(Some(v.unwrap_or_else(|| TEXT_NULL.to_owned())))
        }
        (Col::BigInt, Value::BigInt(v)) => Value::BigInt(Some(v.unwrap_or(i64::MIN))),
        (Col::Int, Value::Int(v)) => Value::Int(Some(v.unwrap_or(i32::MIN))),
        (Col::Bytes, Value::Bytes(v)) => Value::Bytes(Some(v.unwrap_or_default())),
        (Col::Bool, Value::Bool(Some(b))) => Value::Bool(Some(b)),
        _ => return Err(mismatch()),
    })
}

/// The statement for `sql` with its `{keys}` marker replaced by "is one of
/// `keys`": one array parameter on PostgreSQL, a list on SQLite (for a
/// chunk of at most 500 keys).
fn keyed_statement(
    backend: sea_orm::DbBackend,
    sql: &str,
    mut values: Vec<Value>,
    keys: &[String],
) -> sea_orm::Statement {
    let next = values.len() + 1;
    let condition = if backend == sea_orm::DbBackend::Postgres {
        let items: Vec<Value> = keys.iter().map(|k| k.clone().into()).collect();
        values.push(Value::Array(ArrayType::String, Some(Box::new(items))));
        // A semi-join on the unnested array: planned as index lookups, where
        // a long list is planned as a scan while statistics say "small".
        format!("IN (SELECT unnest(${next}::text[]))")
    } else {
        let marks: Vec<String> = (0..keys.len()).map(|i| format!("${}", next + i)).collect();
        values.extend(keys.iter().map(|k| Value::from(k.clone())));
        format!("IN ({})", marks.join(", "))
    };
    let sql = sql.replace("{keys}", &condition);
    let sql = if backend == sea_orm::DbBackend::Postgres {
        sql
    } else {
        crate::db::to_sqlite_placeholders(&sql)
    };
    sea_orm::Statement::from_sql_and_values(backend, sql, values)
}

/// Chunks of keys per statement: all at once on PostgreSQL, 500 on SQLite.
fn key_chunks(backend: sea_orm::DbBackend, keys: &[String]) -> Vec<&[String]> {
    if keys.is_empty() {
        Vec::new()
    } else if backend == sea_orm::DbBackend::Postgres {
        vec![keys]
    } else {
        keys.chunks(500).collect()
    }
}

/// Runs the query `sql`, written with `$n` parameters for `values` and a
/// `{keys}` marker where a column must be one of `keys`
/// (`… AND customer_id {keys} …`). Nothing to look up, nothing returned.
pub async fn query_with_keys<C: sea_orm::ConnectionTrait>(
    conn: &C,
    sql: &str,
    values: Vec<Value>,
    keys: &[String],
) -> Result<Vec<sea_orm::QueryResult>, StorageError> {
    let backend = conn.get_database_backend();
    let mut rows = Vec::new();
    for chunk in key_chunks(backend, keys) {
        let stmt = keyed_statement(backend, sql, values.clone(), chunk);
        rows.extend(conn.query_all_raw(stmt).await?);
    }
    Ok(rows)
}

/// Runs the statement `sql` as [`query_with_keys`] does; rows affected.
pub async fn execute_with_keys<C: sea_orm::ConnectionTrait>(
    conn: &C,
    sql: &str,
    values: Vec<Value>,
    keys: &[String],
) -> Result<u64, StorageError> {
    let backend = conn.get_database_backend();
    let mut affected = 0;
    for chunk in key_chunks(backend, keys) {
        let stmt = keyed_statement(backend, sql, values.clone(), chunk);
        affected += conn.execute_raw(stmt).await?.rows_affected();
    }
    Ok(affected)
}

/// A lookup of one shop's rows by a key column: what [`rows_with_keys`]
/// and [`rows_to_write`] read.
#[derive(Debug, Clone, Copy)]
pub struct KeyedLookup<'a> {
    /// The table.
    pub table: &'a str,
    /// The select list.
    pub columns: &'a str,
    /// The column the keys are in; `(shop_id, key_column)` is indexed.
    pub key_column: &'a str,
    /// The shop.
    pub shop_id: &'a str,
    /// The keys wanted.
    pub keys: &'a [String],
}

/// The rows `lookup` names, locked for update when `lock`.
///
/// On PostgreSQL the keys travel as one array joined with `unnest`, which
/// the planner turns into index lookups; a long `IN (...)` list is planned as
/// a scan that compares every row with every key while the table's
/// statistics still say it is small.
pub async fn rows_with_keys(
    tx: &WriteTx,
    lookup: KeyedLookup<'_>,
    lock: bool,
) -> Result<Vec<sea_orm::QueryResult>, StorageError> {
    keyed_rows(tx, lookup, lock, false).await
}

/// The rows a batch is about to write: [`rows_with_keys`] locked for
/// update (on PostgreSQL), in key order.
///
/// With `then_reuse_plans` the transaction's lookups end here: from the
/// next statement to the end of the transaction, PostgreSQL plans each
/// statement once per connection and reuses the plan instead of planning
/// every run (the session default, decision 0011). Only inserts from
/// arrays and changes by key may follow, whose plans cannot go stale as
/// tables grow; a lookup after it would get a plan made for an empty table.
/// The switch rides on this query (evaluated once, even when nothing
/// matches), so it costs no round trip.
pub async fn rows_to_write(
    tx: &WriteTx,
    lookup: KeyedLookup<'_>,
    then_reuse_plans: bool,
) -> Result<Vec<sea_orm::QueryResult>, StorageError> {
    let lock = tx.backend() == sea_orm::DbBackend::Postgres;
    keyed_rows(tx, lookup, lock, then_reuse_plans).await
}

async fn keyed_rows(
    tx: &WriteTx,
    lookup: KeyedLookup<'_>,
    lock: bool,
    then_reuse_plans: bool,
) -> Result<Vec<sea_orm::QueryResult>, StorageError> {
    let KeyedLookup {
        table,
        columns,
        key_column,
        shop_id,
        keys,
    } = lookup;
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    if tx.backend() == sea_orm::DbBackend::Postgres {
        let mut sorted = keys.to_vec();
        if lock {
            // Locks are taken in key order, so two batches never wait on
            // each other in a cycle.
            sorted.sort();
        }
        let items: Vec<Value> = sorted.into_iter().map(|k| Value::String(Some(k))).collect();
        // Each key is looked up on its own through the `(shop_id, key)`
        // index. A join was planned, on statistics that lag a table growing
        // with one shop, as a scan of the shop's rows: the cost grew with the
        // table. `LATERAL` with `OFFSET 0` (or the lock) keeps the planner
        // from flattening the lookup into such a join.
        // An uncorrelated condition is a one-time filter: run once, before
        // any row, whether or not a row matches.
        let reuse = if then_reuse_plans {
            "WHERE (SELECT set_config('plan_cache_mode', 'force_generic_plan', true)) IS NOT NULL"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {columns} FROM unnest($2::text[]) WITH ORDINALITY AS wanted(wanted_key, wanted_at)
             CROSS JOIN LATERAL (
                 SELECT * FROM {table}
                 WHERE {table}.shop_id = $1 AND {table}.{key_column} = wanted.wanted_key
                 {}
             ) AS {table}
             {reuse}
             ORDER BY wanted.wanted_at",
            if lock { "FOR UPDATE" } else { "OFFSET 0" }
        );
        return tx
            .query_all(
                &sql,
                vec![
                    shop_id.into(),
                    Value::Array(ArrayType::String, Some(Box::new(items))),
                ],
            )
            .await;
    }
    let mut out = Vec::new();
    for chunk in keys.chunks(500) {
        let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let mut values: Vec<Value> = vec![shop_id.into()];
        values.extend(chunk.iter().map(|k| Value::from(k.clone())));
        let sql = format!(
            "SELECT {columns} FROM {table} WHERE shop_id = $1 AND {key_column} IN ({})",
            marks.join(", ")
        );
        out.extend(tx.query_all(&sql, values).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_copy_reads_as_syntax() {
        let columns = [
            ("t", Col::Text),
            ("n", Col::BigInt),
            ("i", Col::Int),
            ("b", Col::Bytes),
            ("f", Col::Bool),
        ];
        let rows = vec![
            vec![
                Value::from("a\tb\nc\rd\\e 童装".to_owned()),
                Value::BigInt(Some(-5)),
                Value::Int(Some(7)),
                Value::Bytes(Some(vec![0, 255])),
                Value::Bool(Some(true)),
            ],
            vec![
                Value::String(None),
                Value::BigInt(None),
                Value::Int(None),
                Value::Bytes(None),
                Value::Bool(Some(false)),
            ],
        ];
        let text = String::from_utf8(copy_text(&columns, &rows).unwrap()).unwrap();
        assert_eq!(
            text,
            "a\\tb\\nc\\rd\\\\e 童装\t-5\t7\t\\\\x00ff\tt\n\\N\t\\N\t\\N\t\\N\tf\n"
        );
        // A value of the wrong kind, or a short row, is refused.
        assert!(copy_text(&columns[..1], &[vec![Value::BigInt(Some(1))]]).is_err());
        assert!(copy_text(&columns, &[vec![Value::BigInt(Some(1))]]).is_err());
    }
}
