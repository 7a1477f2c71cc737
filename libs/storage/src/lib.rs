//! Storage for every Huitou service: the database (PostgreSQL or SQLite),
//! migrations, idempotent requests, the transactional outbox and its relay,
//! the inbox of consumed events, and the cache.

pub mod bulk;
pub mod cache;
pub mod db;
pub mod error;
pub mod idempotency;
pub mod inbox;
pub mod migrate;
pub mod outbox;
pub mod write;

pub use db::{Database, DatabaseConfig, WriteTx};
pub use error::StorageError;

/// Now, as microseconds since the Unix epoch (the stored form of time).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
