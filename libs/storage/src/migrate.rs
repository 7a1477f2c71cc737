//! Schema migrations as plain SQL, one dialect for both backends.
//!
//! Migrations are written once with two placeholders — `{bytes}` (BYTEA /
//! BLOB) and `{seq_pk}` (an auto-increasing 64-bit key); a statement
//! starting with `{postgres}` runs on PostgreSQL only — and named with a
//! timestamp (`m20261123_000001_kit`), run in name order by
//! sea-orm-migration, which records them in `seaql_migrations`. Times are
//! stored as BIGINT microseconds since the epoch (UTC) and money as BIGINT
//! fen on both backends, so there is no type drift between them.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

/// A migration made of SQL statements.
pub struct SqlMigration {
    /// Timestamped name, e.g. `m20261123_000001_kit`.
    pub name: &'static str,
    /// The statements, in the shared dialect.
    pub statements: &'static [&'static str],
}

/// Marks a statement that only PostgreSQL runs (storage settings such as
/// a table's fillfactor, which SQLite has no notion of).
pub const POSTGRES_ONLY: &str = "{postgres}";

/// Rewrites the shared dialect for a backend.
pub fn dialect(backend: DbBackend, sql: &str) -> String {
    let (bytes, seq_pk) = match backend {
        DbBackend::Postgres => ("BYTEA", "BIGSERIAL PRIMARY KEY"),
        _ => ("BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    };
    sql.replace("{bytes}", bytes).replace("{seq_pk}", seq_pk)
}

impl MigrationName for SqlMigration {
    fn name(&self) -> &str {
        self.name
    }
}

#[async_trait::async_trait]
impl MigrationTrait for SqlMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        let backend = conn.get_database_backend();
        for statement in self.statements {
            let statement = match statement.strip_prefix(POSTGRES_ONLY) {
                Some(_) if backend != DbBackend::Postgres => continue,
                Some(rest) => rest,
                None => statement,
            };
            conn.execute_unprepared(&dialect(backend, statement))
                .await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

/// Tables every service has: idempotency keys, the outbox, and the inbox of
/// consumed events.
pub const KIT_TABLES: SqlMigration = SqlMigration {
    name: "m20261123_000001_kit",
    statements: &[
        "CREATE TABLE idempotency_keys (
            shop_id TEXT NOT NULL,
            request_id TEXT NOT NULL,
            method TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            response {bytes},
            created_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, request_id)
        )",
        "CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at)",
        "CREATE TABLE outbox_events (
            seq {seq_pk},
            event_id TEXT NOT NULL,
            shop_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            payload {bytes} NOT NULL,
            created_at BIGINT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at BIGINT NOT NULL DEFAULT 0,
            last_error TEXT,
            dispatched_at BIGINT,
            dead_at BIGINT
        )",
        "CREATE INDEX outbox_events_pending ON outbox_events (seq) WHERE dispatched_at IS NULL AND dead_at IS NULL",
        "CREATE INDEX outbox_events_by_age ON outbox_events (created_at) WHERE dispatched_at IS NOT NULL",
        "CREATE TABLE consumed_events (
            shop_id TEXT NOT NULL,
            consumer TEXT NOT NULL,
            event_id TEXT NOT NULL,
            consumed_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, consumer, event_id)
        )",
        "CREATE INDEX consumed_events_by_age ON consumed_events (consumed_at)",
    ],
};

/// Outbox rows that carry a transaction's events together (decision 0017):
/// how many events each row holds, for the relay's batch sizes and the
/// backlog metric. Every service lists it after its own tables.
pub const OUTBOX_BATCHES: SqlMigration = SqlMigration {
    name: "m20261124_000090_outbox_batches",
    statements: &["ALTER TABLE outbox_events ADD COLUMN events INTEGER NOT NULL DEFAULT 1"],
};
