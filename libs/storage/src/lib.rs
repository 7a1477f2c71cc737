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
mod pg_tx;
pub mod write;

pub use db::{Database, DatabaseConfig, WriteTx};
pub use error::StorageError;

/// A fresh time-ordered id: a UUID v7 in its hyphenated lower-case form.
/// Its random bits come from a thread-local generator seeded by the OS
/// (uuid's `fast-rng`), not a system call per id: an import batch makes a
/// thousand of them.
pub fn new_id() -> String {
    let mut text = uuid::Uuid::encode_buffer();
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut text)
        .to_owned()
}

/// Now, as microseconds since the Unix epoch (the stored form of time).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_distinct_v7_uuids_in_the_order_made() {
        let ids: Vec<String> = (0..10_000).map(|_| super::new_id()).collect();
        for id in &ids {
            let parsed = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 7);
            assert_eq!(
                parsed.hyphenated().to_string(),
                *id,
                "lower-case hyphenated"
            );
        }
        // Time-ordered, also within one millisecond: lists paged by id
        // follow creation order.
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
