//! The customer service's schema. Every table is keyed by `shop_id` first.

use huitou_storage::migrate::{KIT_TABLES, OUTBOX_BATCHES, OUTBOX_LZ4, SqlMigration};
use sea_orm_migration::prelude::*;

const CUSTOMER_TABLES: SqlMigration = SqlMigration {
    name: "m20261123_000010_customer",
    statements: &[
        "CREATE TABLE shops (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            time_zone TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        )",
        // Keys are looked up by id before the shop is known, hence the
        // unique index on id alone.
        "CREATE TABLE api_keys (
            shop_id TEXT NOT NULL REFERENCES shops (id),
            id TEXT NOT NULL,
            role TEXT NOT NULL,
            label TEXT NOT NULL,
            secret_hash TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            revoked_at BIGINT,
            PRIMARY KEY (shop_id, id)
        )",
        "CREATE UNIQUE INDEX api_keys_by_id ON api_keys (id)",
        // Contact details are sealed (AES-GCM) with their masked form beside
        // them, so reads never decrypt; the phone has a blind index for
        // exact lookups. Tags, attributes, consent and categories are
        // denormalised into the row so a read is one row.
        "CREATE TABLE customers (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            buyer_nick TEXT NOT NULL,
            name_sealed {bytes},
            phone_sealed {bytes},
            address_sealed {bytes},
            wechat_id_sealed {bytes},
            email_sealed {bytes},
            masks TEXT NOT NULL DEFAULT '{}',
            phone_index TEXT,
            birthday_year INTEGER,
            birthday_month INTEGER,
            birthday_day INTEGER,
            gender INTEGER NOT NULL DEFAULT 0,
            region TEXT NOT NULL DEFAULT '',
            order_count BIGINT NOT NULL DEFAULT 0,
            item_count BIGINT NOT NULL DEFAULT 0,
            spent_fen BIGINT NOT NULL DEFAULT 0,
            refunded_fen BIGINT NOT NULL DEFAULT 0,
            first_order_at BIGINT,
            last_order_at BIGINT,
            categories TEXT NOT NULL DEFAULT '{}',
            tags TEXT NOT NULL DEFAULT '[]',
            attributes TEXT NOT NULL DEFAULT '{}',
            consents TEXT NOT NULL DEFAULT '{}',
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            erased_at BIGINT,
            PRIMARY KEY (shop_id, id)
        )",
        "CREATE UNIQUE INDEX customers_by_nick ON customers (shop_id, buyer_nick)",
        "CREATE INDEX customers_by_phone ON customers (shop_id, phone_index) WHERE phone_index IS NOT NULL",
        "CREATE INDEX customers_by_last_order ON customers (shop_id, last_order_at)",
        "CREATE INDEX customers_by_order_count ON customers (shop_id, order_count)",
        "CREATE TABLE customer_tags (
            shop_id TEXT NOT NULL,
            tag TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            PRIMARY KEY (shop_id, tag, customer_id)
        )",
        "CREATE INDEX customer_tags_by_customer ON customer_tags (shop_id, customer_id)",
        "CREATE TABLE attribute_types (
            shop_id TEXT NOT NULL,
            name TEXT NOT NULL,
            value_type TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, name)
        )",
        "CREATE TABLE consent_changes (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            channel INTEGER NOT NULL,
            granted BOOLEAN NOT NULL,
            source TEXT NOT NULL,
            decided_at BIGINT NOT NULL,
            recorded_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, id)
        )",
        "CREATE INDEX consent_changes_by_customer ON consent_changes (shop_id, customer_id, id)",
        "CREATE TABLE audit_entries (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            action INTEGER NOT NULL,
            customer_id TEXT NOT NULL,
            field INTEGER NOT NULL DEFAULT 0,
            reason TEXT NOT NULL,
            actor_key_id TEXT NOT NULL,
            actor_role TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, id)
        )",
        "CREATE INDEX audit_entries_by_customer ON audit_entries (shop_id, customer_id, id)",
        // Items, refunds and coupon codes are JSON: an order is written and
        // read whole, and one row per order keeps imports fast.
        "CREATE TABLE orders (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            order_no TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            buyer_nick TEXT NOT NULL,
            status INTEGER NOT NULL,
            items TEXT NOT NULL,
            goods_fen BIGINT NOT NULL,
            discount_fen BIGINT NOT NULL,
            shipping_fen BIGINT NOT NULL,
            payable_fen BIGINT NOT NULL,
            refunded_fen BIGINT NOT NULL DEFAULT 0,
            coupon_codes TEXT NOT NULL DEFAULT '[]',
            shipment TEXT,
            review TEXT,
            refunds TEXT NOT NULL DEFAULT '[]',
            created_at BIGINT NOT NULL,
            paid_at BIGINT,
            shipped_at BIGINT,
            received_at BIGINT,
            closed_at BIGINT,
            import_id TEXT,
            recorded_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, id)
        )",
        "CREATE UNIQUE INDEX orders_by_no ON orders (shop_id, order_no)",
        "CREATE INDEX orders_by_customer ON orders (shop_id, customer_id, created_at)",
        "CREATE TABLE order_imports (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            rows_imported BIGINT NOT NULL DEFAULT 0,
            rows_skipped BIGINT NOT NULL DEFAULT 0,
            rows_rejected BIGINT NOT NULL DEFAULT 0,
            last_row_number BIGINT NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, id)
        )",
    ],
};

/// Order counts from which a buyer sits in the next order band: band `n`
/// holds counts from `ORDER_BAND_FLOORS[n - 1]`, band 0 those below 5.
/// Must match the `CASE` in [`STAT_BANDS`].
pub const ORDER_BAND_FLOORS: [i64; 8] = [5, 10, 20, 50, 100, 200, 500, 1000];

/// Length of a last-order period: 30 days, in µs. Must match
/// [`STAT_BANDS`].
pub const LAST_ORDER_PERIOD_MICROS: i64 = 30 * 86_400 * 1_000_000;

/// The order band of an order count, as the `order_band` column holds it.
pub fn order_band(order_count: i64) -> i64 {
    ORDER_BAND_FLOORS
        .iter()
        .filter(|floor| order_count >= **floor)
        .count() as i64
}

/// The last-order period of a time (µs), as the `last_order_period` column
/// holds it: whole periods since the epoch, -1 before it.
pub fn last_order_period(at: i64) -> i64 {
    if at >= 0 {
        at / LAST_ORDER_PERIOD_MICROS
    } else {
        -1
    }
}

/// The list filters' indexes on coarse bands instead of the raw statistics
/// (decision 0021). Every paid order changes `order_count` and
/// `last_order_at`; while they were indexed, each order rewrote all of the
/// buyer's index entries (a non-HOT update). The bands change only when a
/// buyer crosses a band, so most orders update the row in place (HOT) and
/// write no index entry. A filter on the raw value adds the band condition
/// that the value implies, so the index still narrows the scan.
const STAT_BANDS: SqlMigration = SqlMigration {
    name: "m20261127_000001_customer_stat_bands",
    statements: &[
        "DROP INDEX customers_by_last_order",
        "DROP INDEX customers_by_order_count",
        "ALTER TABLE customers ADD COLUMN order_band BIGINT GENERATED ALWAYS AS (
            CASE WHEN order_count >= 1000 THEN 8 WHEN order_count >= 500 THEN 7
                 WHEN order_count >= 200 THEN 6 WHEN order_count >= 100 THEN 5
                 WHEN order_count >= 50 THEN 4 WHEN order_count >= 20 THEN 3
                 WHEN order_count >= 10 THEN 2 WHEN order_count >= 5 THEN 1 ELSE 0 END
        ) {generated}",
        "ALTER TABLE customers ADD COLUMN last_order_period BIGINT GENERATED ALWAYS AS (
            CASE WHEN last_order_at >= 0 THEN last_order_at / 2592000000000
                 WHEN last_order_at < 0 THEN -1 END
        ) {generated}",
        "CREATE INDEX customers_by_order_band ON customers (shop_id, order_band)",
        "CREATE INDEX customers_by_last_order_period ON customers (shop_id, last_order_period)",
    ],
};

/// Room on every page of `customers` for its rows' next versions
/// (decision 0022). Each paid order rewrites its buyer's statistics; with
/// full pages, a batch that updates many buyers written together finds no
/// room beside them, so every update moves its row to another page and adds
/// an entry to each index (a non-HOT update), and the table bloats. Half-full
/// pages keep such updates in place. Pages written before the migration
/// keep their fill until rewritten.
const STATS_ROOM: SqlMigration = SqlMigration {
    name: "m20261128_000001_customer_stats_room",
    statements: &["{postgres}ALTER TABLE customers SET (fillfactor = 50)"],
};

/// The customer service's migrations, in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(KIT_TABLES),
            Box::new(CUSTOMER_TABLES),
            Box::new(OUTBOX_BATCHES),
            Box::new(OUTBOX_LZ4),
            Box::new(STAT_BANDS),
            Box::new(STATS_ROOM),
        ]
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn bands_start_where_the_floors_say() {
        assert_eq!(order_band(0), 0);
        assert_eq!(order_band(4), 0);
        assert_eq!(order_band(5), 1);
        assert_eq!(order_band(19), 2);
        assert_eq!(order_band(20), 3);
        assert_eq!(order_band(1_000_000), 8);
        assert_eq!(last_order_period(0), 0);
        assert_eq!(last_order_period(LAST_ORDER_PERIOD_MICROS - 1), 0);
        assert_eq!(last_order_period(LAST_ORDER_PERIOD_MICROS), 1);
        assert_eq!(last_order_period(-1), -1);
    }

    proptest! {
        // A filter adds the band condition its bound implies; that is only
        // right if the band never goes down as the value goes up.
        #[test]
        fn bands_never_decrease(a in -1_000i64..5_000, b in -1_000i64..5_000) {
            let (low, high) = (Ord::min(a, b), Ord::max(a, b));
            prop_assert!(order_band(low) <= order_band(high));
        }

        #[test]
        fn periods_never_decrease(a in any::<i64>(), b in any::<i64>()) {
            let (low, high) = (Ord::min(a, b), Ord::max(a, b));
            prop_assert!(last_order_period(low) <= last_order_period(high));
        }
    }
}
