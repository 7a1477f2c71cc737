//! A write transaction's connection on PostgreSQL: sqlx's own transaction
//! on a connection of the service's pool, behind sea-orm's
//! [`ConnectionTrait`] so every statement is written as before
//! (decision 0023).
//!
//! sea-orm's transaction clones each statement's values before handing
//! them to the driver; a bulk write's arrays of a thousand rows were copied
//! once more for every statement. Here a statement's values move into the
//! driver. Holding the connection also lets a transaction run `COPY`.

use std::sync::Arc;

use sea_orm::sea_query::Values;
use sea_orm::sqlx::{self, Postgres};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr, Statement};
use sea_query_sqlx::SqlxValues;
use tokio::sync::Mutex;

use crate::error::StorageError;

/// An open transaction on one pooled connection. Dropped without
/// [`PgTransaction::commit`] or [`PgTransaction::rollback`], sqlx queues its
/// `ROLLBACK` for when the connection goes back to the pool.
pub struct PgTransaction(Mutex<sqlx::Transaction<'static, Postgres>>);

impl PgTransaction {
    /// `BEGIN` on a connection of `pool`.
    pub(crate) async fn begin(pool: &sqlx::PgPool) -> Result<Self, StorageError> {
        let tx = pool
            .begin()
            .await
            .map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(Arc::new(e))))?;
        Ok(Self(Mutex::new(tx)))
    }

    /// `COMMIT`.
    pub(crate) async fn commit(self) -> Result<(), StorageError> {
        self.0.into_inner().commit().await.map_err(query_err)?;
        Ok(())
    }

    /// `ROLLBACK`, waited for.
    pub(crate) async fn rollback(self) -> Result<(), StorageError> {
        self.0.into_inner().rollback().await.map_err(query_err)?;
        Ok(())
    }

    /// `COPY table (columns) FROM STDIN` of `text` (COPY's text format) in
    /// this transaction; rows copied.
    pub(crate) async fn copy_in(&self, statement: &str, text: Vec<u8>) -> Result<u64, DbErr> {
        let mut conn = self.0.lock().await;
        let mut copy = conn.copy_in_raw(statement).await.map_err(exec_err)?;
        if let Err(e) = copy.send(text).await {
            // The server has already refused it, or the connection broke:
            // abort so the connection is left ready for the next statement.
            let _ = copy.abort(e.to_string()).await;
            return Err(exec_err(e));
        }
        copy.finish().await.map_err(exec_err)
    }
}

fn exec_err(e: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(e)))
}

fn query_err(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(e)))
}

/// The statement as sqlx's query, its values moved rather than cloned.
fn query(stmt: Statement) -> sqlx::query::Query<'static, Postgres, SqlxValues> {
    let values = stmt.values.unwrap_or_else(|| Values(Vec::new()));
    sqlx::query_with(sqlx::AssertSqlSafe(stmt.sql), SqlxValues(values))
}

#[sea_orm_migration::async_trait::async_trait]
impl ConnectionTrait for PgTransaction {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Postgres
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let mut conn = self.0.lock().await;
        query(stmt)
            .execute(&mut **conn)
            .await
            .map(Into::into)
            .map_err(exec_err)
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let mut conn = self.0.lock().await;
        sqlx::Executor::execute(&mut **conn, sqlx::AssertSqlSafe(sql.to_owned()))
            .await
            .map(Into::into)
            .map_err(exec_err)
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let mut conn = self.0.lock().await;
        query(stmt)
            .fetch_optional(&mut **conn)
            .await
            .map(|row| row.map(Into::into))
            .map_err(query_err)
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let mut conn = self.0.lock().await;
        query(stmt)
            .fetch_all(&mut **conn)
            .await
            .map(|rows| rows.into_iter().map(Into::into).collect())
            .map_err(query_err)
    }
}
