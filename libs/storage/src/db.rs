//! One database per service: PostgreSQL in production, a SQLite file in the
//! embedded default. Reads go straight to the pool; writes go through
//! [`Database::begin`], which on SQLite takes an in-process write gate and
//! `BEGIN IMMEDIATE` so writers queue instead of failing with SQLITE_BUSY.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    ExecResult, QueryResult, Statement, TransactionOptions, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::StorageError;
pub use crate::pg_tx::PgTransaction;

/// Where and how to connect.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user@host:5432/db` or `sqlite://path/file.db`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before UNAVAILABLE, in ms.
    pub acquire_timeout_ms: u64,
    /// PostgreSQL statement timeout, in ms (a slow statement becomes DEADLINE_EXCEEDED).
    pub statement_timeout_ms: u64,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// The URL without a password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{}:****@{}", &url[..scheme_end], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 16,
            acquire_timeout_ms: 5_000,
            statement_timeout_ms: 15_000,
        }
    }
}

impl DatabaseConfig {
    /// Problems with the settings under `section`.
    pub fn problems(&self, section: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.url.starts_with("postgres://")
            || self.url.starts_with("postgresql://")
            || self.url.starts_with("sqlite:"))
        {
            problems.push(format!(
                "{section}.url: must be a postgres:// or sqlite:// URL"
            ));
        }
        if !(1..=512).contains(&self.max_connections) {
            problems.push(format!("{section}.max_connections: must be 1-512"));
        }
        if !(100..=120_000).contains(&self.acquire_timeout_ms) {
            problems.push(format!("{section}.acquire_timeout_ms: must be 100-120000"));
        }
        if !(100..=3_600_000).contains(&self.statement_timeout_ms) {
            problems.push(format!(
                "{section}.statement_timeout_ms: must be 100-3600000"
            ));
        }
        problems
    }

    /// A SQLite file under `dir`, created if missing.
    pub fn sqlite_file(path: &std::path::Path) -> Self {
        Self {
            url: format!("sqlite://{}?mode=rwc", path.display()),
            ..Self::default()
        }
    }
}

/// A service's database.
#[derive(Clone)]
pub struct Database {
    conn: DatabaseConnection,
    backend: DbBackend,
    write_gate: Option<Arc<Mutex<()>>>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Database({:?})", self.backend)
    }
}

impl Database {
    /// Connects and checks the connection.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, StorageError> {
        let mut options = ConnectOptions::new(config.url.clone());
        options
            .max_connections(config.max_connections)
            .min_connections(1)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .connect_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|o| {
                // WAL lets reads run beside the one writer; FULL makes every
                // acknowledged commit survive a power cut, not just a crash.
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
            })
            .map_sqlx_postgres_opts(|o| {
                // Plan every statement for its parameters and the table as
                // it is now. Generic plans are fixed after five executions:
                // chosen while a table is still empty they keep scanning it
                // whole after it has grown (seen as imports slowing
                // quadratically until autovacuum's next ANALYZE).
                o.options([("plan_cache_mode", "force_custom_plan")])
            });
        let sqlite = config.url.starts_with("sqlite:");
        if !sqlite {
            options.statement_timeout(Duration::from_millis(config.statement_timeout_ms));
        }
        let conn = tokio::time::timeout(
            Duration::from_millis(config.acquire_timeout_ms.saturating_mul(2)),
            sea_orm::Database::connect(options),
        )
        .await
        .map_err(|_| {
            StorageError::Unavailable(format!("{} did not answer", redact_url(&config.url)))
        })??;
        let backend = conn.get_database_backend();
        Ok(Self {
            conn,
            backend,
            write_gate: sqlite.then(|| Arc::new(Mutex::new(()))),
        })
    }

    /// The connection pool, for reads (and for migrations).
    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// PostgreSQL or SQLite.
    pub fn backend(&self) -> DbBackend {
        self.backend
    }

    /// True on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.backend == DbBackend::Postgres
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<WriteTx, StorageError> {
        let gate = match &self.write_gate {
            Some(gate) => Some(gate.clone().lock_owned().await),
            None => None,
        };
        let tx = if self.is_postgres() {
            TxConnection::Postgres(
                PgTransaction::begin(self.conn.get_postgres_connection_pool()).await?,
            )
        } else {
            let options = TransactionOptions {
                sqlite_transaction_mode: gate
                    .as_ref()
                    .map(|_| sea_orm::SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            };
            TxConnection::Sea(self.conn.begin_with_options(options).await?)
        };
        Ok(WriteTx {
            tx,
            _gate: gate,
            after_commit: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.conn.ping().await.map_err(StorageError::from)
    }

    /// Closes the pool.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }

    /// `$1`-style placeholders on PostgreSQL, `?` on SQLite: rewrites a
    /// statement written with `$n` for the backend.
    pub fn sql(&self, sql: &str) -> String {
        if self.is_postgres() {
            sql.to_owned()
        } else {
            to_sqlite_placeholders(sql)
        }
    }

    /// Runs one statement outside a transaction.
    pub async fn execute(
        &self,
        sql: &str,
        values: Vec<sea_orm::Value>,
    ) -> Result<u64, StorageError> {
        let stmt = sea_orm::Statement::from_sql_and_values(self.backend, self.sql(sql), values);
        Ok(self.conn.execute_raw(stmt).await?.rows_affected())
    }
}

/// Rewrites `$1`, `$2`, ... into `?1`, `?2`, ... (SQLite's numbered form).
pub(crate) fn to_sqlite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let bytes = sql.as_bytes();
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\'' {
            in_string = !in_string;
        }
        if c == b'$' && !in_string && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c as char);
        }
        i += 1;
    }
    out
}

/// A write transaction's connection: sea-orm's transaction on SQLite,
/// sqlx's own on PostgreSQL (decision 0023). Statements go through
/// sea-orm's [`ConnectionTrait`] either way.
pub enum TxConnection {
    /// SQLite, behind the write gate.
    Sea(DatabaseTransaction),
    /// PostgreSQL.
    Postgres(PgTransaction),
}

#[sea_orm_migration::async_trait::async_trait]
impl ConnectionTrait for TxConnection {
    fn get_database_backend(&self) -> DbBackend {
        match self {
            TxConnection::Sea(tx) => tx.get_database_backend(),
            TxConnection::Postgres(tx) => tx.get_database_backend(),
        }
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        match self {
            TxConnection::Sea(tx) => tx.execute_raw(stmt).await,
            TxConnection::Postgres(tx) => tx.execute_raw(stmt).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match self {
            TxConnection::Sea(tx) => tx.execute_unprepared(sql).await,
            TxConnection::Postgres(tx) => tx.execute_unprepared(sql).await,
        }
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        match self {
            TxConnection::Sea(tx) => tx.query_one_raw(stmt).await,
            TxConnection::Postgres(tx) => tx.query_one_raw(stmt).await,
        }
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self {
            TxConnection::Sea(tx) => tx.query_all_raw(stmt).await,
            TxConnection::Postgres(tx) => tx.query_all_raw(stmt).await,
        }
    }
}

/// A write transaction. Dropped without [`WriteTx::commit`], it rolls back.
pub struct WriteTx {
    tx: TxConnection,
    _gate: Option<OwnedMutexGuard<()>>,
    after_commit: std::sync::Mutex<Vec<AfterCommit>>,
}

/// Work that must follow a successful commit (refreshing a cache entry).
pub type AfterCommit = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl WriteTx {
    /// Commits, then runs the after-commit work before returning, so a
    /// caller that sees the answer also sees caches refreshed. A rollback
    /// drops the work. The SQLite write gate is let go first: the next
    /// writer need not wait for a cache round trip.
    pub async fn commit(self) -> Result<(), StorageError> {
        let WriteTx {
            tx,
            _gate: gate,
            after_commit,
        } = self;
        let work = match after_commit.into_inner() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        match tx {
            TxConnection::Sea(tx) => tx.commit().await?,
            TxConnection::Postgres(tx) => tx.commit().await?,
        }
        drop(gate);
        for w in work {
            w.await;
        }
        Ok(())
    }

    /// Rolls back and waits for it, dropping the after-commit work. Dropped
    /// instead, a transaction's `ROLLBACK` is only queued, and sent when the
    /// connection goes back to the pool in a task of its own: its locks
    /// would outlive the error the caller is about to hear of. A rollback
    /// that fails leaves a broken connection, which the pool discards.
    pub async fn rollback(self) {
        let WriteTx {
            tx, _gate: gate, ..
        } = self;
        let rolled_back = match tx {
            TxConnection::Sea(tx) => tx.rollback().await.map_err(StorageError::from),
            TxConnection::Postgres(tx) => tx.rollback().await,
        };
        if let Err(e) = rolled_back {
            tracing::debug!(error = %e, "rollback failed; the connection is dropped");
        }
        drop(gate);
    }

    /// Ends the transaction by `outcome`: commits when it is `Ok`, rolls
    /// back (waiting for it) when it is an error, so the transaction's rows
    /// are free before the caller hears of the failure.
    pub async fn finish<R, E: From<StorageError>>(self, outcome: Result<R, E>) -> Result<R, E> {
        match outcome {
            Ok(answer) => {
                self.commit().await?;
                Ok(answer)
            }
            Err(e) => {
                self.rollback().await;
                Err(e)
            }
        }
    }

    /// `statement` (a `COPY … FROM STDIN`) fed `text` in COPY's text
    /// format, inside this transaction; rows copied. PostgreSQL only.
    pub async fn copy_in(&self, statement: &str, text: Vec<u8>) -> Result<u64, StorageError> {
        match &self.tx {
            TxConnection::Postgres(tx) => Ok(tx.copy_in(statement, text).await?),
            TxConnection::Sea(_) => Err(StorageError::Other(
                "COPY is only written on PostgreSQL".into(),
            )),
        }
    }

    /// Schedules `work` to run after a successful commit.
    pub fn after_commit(&self, work: AfterCommit) {
        match self.after_commit.lock() {
            Ok(mut w) => w.push(work),
            Err(poisoned) => poisoned.into_inner().push(work),
        }
    }

    /// The backend of the transaction.
    pub fn backend(&self) -> DbBackend {
        self.tx.get_database_backend()
    }

    /// Runs one statement written with `$n` placeholders; rows affected.
    pub async fn execute(
        &self,
        sql: &str,
        values: Vec<sea_orm::Value>,
    ) -> Result<u64, StorageError> {
        let backend = self.backend();
        let sql = if backend == DbBackend::Postgres {
            sql.to_owned()
        } else {
            to_sqlite_placeholders(sql)
        };
        let stmt = sea_orm::Statement::from_sql_and_values(backend, sql, values);
        Ok(self.tx.execute_raw(stmt).await?.rows_affected())
    }

    /// Runs one query written with `$n` placeholders.
    pub async fn query_all(
        &self,
        sql: &str,
        values: Vec<sea_orm::Value>,
    ) -> Result<Vec<sea_orm::QueryResult>, StorageError> {
        let backend = self.backend();
        let sql = if backend == DbBackend::Postgres {
            sql.to_owned()
        } else {
            to_sqlite_placeholders(sql)
        };
        let stmt = sea_orm::Statement::from_sql_and_values(backend, sql, values);
        Ok(self.tx.query_all_raw(stmt).await?)
    }
}

impl Deref for WriteTx {
    type Target = TxConnection;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_rewrite_outside_strings_only() {
        assert_eq!(
            to_sqlite_placeholders("SELECT '$1' FROM t WHERE a = $1 AND b = $12"),
            "SELECT '$1' FROM t WHERE a = ?1 AND b = ?12"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:****@h:5432/db"
        );
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
