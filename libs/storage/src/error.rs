//! Storage failures, classified so callers can tell "try again" from "bug".

use huitou_runtime::Failure;
use sea_orm::{DbErr, RuntimeErr, SqlErr};
use tonic::Code;

/// What went wrong talking to the database or cache.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database is unreachable or the pool is exhausted.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A statement ran past its timeout.
    #[error("database statement timed out")]
    Timeout,
    /// A unique constraint refused a row (a concurrent writer won).
    #[error("unique constraint violated: {0}")]
    Conflict(String),
    /// Two transactions deadlocked or a serialisation check failed; retry.
    #[error("transaction conflict; retry: {0}")]
    Retry(String),
    /// Anything else: a bug or a broken schema.
    #[error("database error: {0}")]
    Other(String),
}

impl From<DbErr> for StorageError {
    fn from(err: DbErr) -> Self {
        if let Some(SqlErr::UniqueConstraintViolation(detail)) = err.sql_err() {
            return StorageError::Conflict(detail);
        }
        match &err {
            DbErr::ConnectionAcquire(_) => StorageError::Unavailable(err.to_string()),
            DbErr::Conn(_) => StorageError::Unavailable(err.to_string()),
            DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
                classify_sqlx(e, &err)
            }
            _ => StorageError::Other(err.to_string()),
        }
    }
}

fn classify_sqlx(e: &sea_orm::sqlx::Error, err: &DbErr) -> StorageError {
    use sea_orm::sqlx::Error as E;
    match e {
        E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
            StorageError::Unavailable(err.to_string())
        }
        E::Database(db) => match db.code().as_deref() {
            // PostgreSQL: query_canceled (statement_timeout), lock_not_available.
            Some("57014") | Some("55P03") => StorageError::Timeout,
            // serialization_failure, deadlock_detected.
            Some("40001") | Some("40P01") => StorageError::Retry(err.to_string()),
            // admin_shutdown, crash_shutdown, cannot_connect_now.
            Some("57P01") | Some("57P02") | Some("57P03") => {
                StorageError::Unavailable(err.to_string())
            }
            // SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6) and extended codes.
            Some(code) if code == "5" || code == "6" || code.ends_with("05") && code.len() <= 4 => {
                StorageError::Retry(err.to_string())
            }
            _ => StorageError::Other(err.to_string()),
        },
        _ => StorageError::Other(err.to_string()),
    }
}

impl From<StorageError> for Failure {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::Unavailable(detail) => {
                tracing::warn!(%detail, "database unavailable");
                Failure::unavailable(
                    "DATABASE_UNAVAILABLE",
                    "the database is not answering; retry shortly",
                )
                .with_retry_after(std::time::Duration::from_secs(1))
            }
            StorageError::Timeout => Failure::new(
                Code::DeadlineExceeded,
                "DATABASE_TIMEOUT",
                "the database took too long to answer",
            ),
            StorageError::Retry(detail) => {
                tracing::info!(%detail, "transaction conflict");
                Failure::new(
                    Code::Aborted,
                    "TRANSACTION_CONFLICT",
                    "a concurrent change got in the way; retry",
                )
            }
            StorageError::Conflict(detail) => {
                tracing::info!(%detail, "unique conflict");
                Failure::new(
                    Code::Aborted,
                    "TRANSACTION_CONFLICT",
                    "a concurrent change got in the way; retry",
                )
            }
            StorageError::Other(detail) => {
                tracing::error!(%detail, "database error");
                Failure::internal("an internal error occurred")
            }
        }
    }
}
