//! Schema migrations as plain SQL, one dialect for both backends.
//!
//! Migrations are written once with three placeholders — `{bytes}` (BYTEA /
//! BLOB), `{seq_pk}` (an auto-increasing 64-bit key) and `{generated}` (how
//! a generated column is kept: `STORED` on PostgreSQL, the only kind it has;
//! `VIRTUAL` on SQLite, the only kind it can add to a table); a statement
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
    let (bytes, seq_pk, generated) = match backend {
        DbBackend::Postgres => ("BYTEA", "BIGSERIAL PRIMARY KEY", "STORED"),
        _ => ("BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT", "VIRTUAL"),
    };
    sql.replace("{bytes}", bytes)
        .replace("{seq_pk}", seq_pk)
        .replace("{generated}", generated)
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

/// Outbox payloads compressed with LZ4 instead of PostgreSQL's default
/// `pglz`: decision 0017's batch rows run to hundreds of kilobytes, and
/// `pglz` took about 5 % of PostgreSQL's time during an import. A server built
/// without LZ4 keeps `pglz`. Every service lists it after its own tables.
pub const OUTBOX_LZ4: SqlMigration = SqlMigration {
    name: "m20261126_000001_outbox_lz4",
    statements: &["{postgres}DO $$
        BEGIN
            ALTER TABLE outbox_events ALTER COLUMN payload SET COMPRESSION lz4;
        EXCEPTION WHEN feature_not_supported THEN
            RAISE NOTICE 'LZ4 is not available; outbox payloads stay compressed with pglz';
        END $$"],
};

/// Applies a service's pending migrations, then puts its text columns in
/// byte order ([`text_in_byte_order`]): every service migrates this way, so
/// the step cannot be left out of one.
pub async fn run<M: MigratorTrait>(db: &crate::Database) -> Result<(), DbErr> {
    M::up(db.conn(), None).await?;
    text_in_byte_order(db.conn()).await
}

/// Puts every text column of the database's tables in byte order (the
/// `"C"` collation) on PostgreSQL; nothing to do on SQLite, which compares
/// text bytewise already. Idempotent: run after every service's migrations
/// (wherever they run), so tables added later are covered too, and a no-op
/// once done.
///
/// Why (decision 0020): text columns here are identifiers (shop, customer
/// and order ids, buyer nicks, order numbers, event ids), compared in every
/// index lookup and insert. Under a database's default locale, even
/// `C.UTF-8`, each comparison goes through the locale machinery; in byte
/// order it is a `memcmp`. For UTF-8 the order is the same as `C.UTF-8`'s,
/// and the same as SQLite's, so lists page identically on both backends.
pub async fn text_in_byte_order(db: &sea_orm::DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    // One ALTER TABLE per table, so its indexes are rebuilt once.
    db.execute_unprepared(
        r#"DO $$
        DECLARE
            t record;
        BEGIN
            FOR t IN
                SELECT c.table_name,
                       string_agg(format('ALTER COLUMN %I TYPE text COLLATE "C"', c.column_name), ', ') AS changes
                FROM information_schema.columns c
                JOIN information_schema.tables tb
                  ON tb.table_schema = c.table_schema AND tb.table_name = c.table_name
                WHERE c.table_schema = current_schema()
                  AND tb.table_type = 'BASE TABLE'
                  AND c.data_type = 'text'
                  AND c.collation_name IS DISTINCT FROM 'C'
                GROUP BY c.table_name
                ORDER BY c.table_name
            LOOP
                EXECUTE format('ALTER TABLE %I %s', t.table_name, t.changes);
            END LOOP;
        END $$"#,
    )
    .await?;
    Ok(())
}
