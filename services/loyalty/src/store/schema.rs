//! The loyalty service's schema. Every table is keyed by `shop_id` first.

use huitou_storage::migrate::{KIT_TABLES, OUTBOX_BATCHES, OUTBOX_LZ4, SqlMigration};
use sea_orm_migration::prelude::*;

const LOYALTY_TABLES: SqlMigration = SqlMigration {
    name: "m20261124_000010_loyalty",
    statements: &[
        // The program as JSON: read whole, changed whole, rarely.
        "CREATE TABLE programs (
            shop_id TEXT PRIMARY KEY,
            program TEXT NOT NULL,
            updated_at BIGINT NOT NULL
        )",
        // One row per customer of the customer service. `balance` is the sum
        // of the member's ledger entries, kept in the same transaction as
        // each entry; the row is the lock every points change takes.
        "CREATE TABLE members (
            shop_id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            buyer_nick TEXT NOT NULL DEFAULT '',
            birthday_month INTEGER NOT NULL DEFAULT 0,
            tier_code TEXT NOT NULL,
            tier_since BIGINT NOT NULL,
            requalify_at BIGINT NOT NULL,
            drop_to TEXT,
            drop_at BIGINT,
            balance BIGINT NOT NULL DEFAULT 0,
            paid_order_count BIGINT NOT NULL DEFAULT 0,
            last_check_in_day INTEGER NOT NULL DEFAULT 0,
            expiry_warned_until BIGINT NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, customer_id)
        )",
        "CREATE INDEX members_by_nick ON members (shop_id, buyer_nick)",
        // The nightly run visits only members whose requalification or drop
        // is due.
        "CREATE INDEX members_by_requalify ON members (requalify_at)",
        "CREATE INDEX members_by_drop ON members (drop_at) WHERE drop_at IS NOT NULL",
        // Paid orders as loyalty sees them: the qualification window sums
        // them, refunds reverse their points.
        "CREATE TABLE member_orders (
            shop_id TEXT NOT NULL,
            order_id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            order_no TEXT NOT NULL,
            paid_fen BIGINT NOT NULL,
            refunded_fen BIGINT NOT NULL DEFAULT 0,
            paid_at BIGINT NOT NULL,
            earned_points BIGINT NOT NULL DEFAULT 0,
            reversed_points BIGINT NOT NULL DEFAULT 0,
            lot_id TEXT,
            reviewed INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (shop_id, order_id)
        )",
        "CREATE INDEX member_orders_by_customer ON member_orders (shop_id, customer_id, paid_at)",
        // The ledger: append-only, never updated or deleted.
        "CREATE TABLE ledger_entries (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            kind INTEGER NOT NULL,
            points BIGINT NOT NULL,
            balance_after BIGINT NOT NULL,
            reason TEXT NOT NULL,
            source_event_id TEXT NOT NULL DEFAULT '',
            order_no TEXT NOT NULL DEFAULT '',
            actor TEXT NOT NULL,
            available_at BIGINT,
            expire_at BIGINT,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, id)
        )",
        "CREATE INDEX ledger_by_customer ON ledger_entries (shop_id, customer_id, id)",
        // Which points are left: one lot per positive entry.
        "CREATE TABLE point_lots (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            remaining BIGINT NOT NULL,
            available_at BIGINT NOT NULL,
            expire_at BIGINT,
            PRIMARY KEY (shop_id, id)
        )",
        "CREATE INDEX lots_by_customer ON point_lots (shop_id, customer_id) WHERE remaining > 0",
        "CREATE INDEX lots_by_expiry ON point_lots (expire_at) WHERE remaining > 0",
        "CREATE TABLE tier_changes (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            from_code TEXT NOT NULL,
            to_code TEXT NOT NULL,
            reason TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, id)
        )",
        "CREATE INDEX tier_changes_by_customer ON tier_changes (shop_id, customer_id, id)",
        "CREATE TABLE referrals (
            shop_id TEXT NOT NULL,
            friend_customer_id TEXT NOT NULL,
            referrer_customer_id TEXT NOT NULL,
            points BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, friend_customer_id)
        )",
        // The old-customer zone (老顾客特惠区).
        "CREATE TABLE member_prices (
            shop_id TEXT NOT NULL,
            sku TEXT NOT NULL,
            price_fen BIGINT NOT NULL,
            returning_only INTEGER NOT NULL,
            label TEXT NOT NULL,
            min_tier_code TEXT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, sku)
        )",
        "CREATE TABLE rewards (
            shop_id TEXT NOT NULL,
            code TEXT NOT NULL,
            name TEXT NOT NULL,
            kind INTEGER NOT NULL,
            points_cost BIGINT NOT NULL,
            stock BIGINT,
            coupon_template_id TEXT NOT NULL,
            free_shipping_orders INTEGER NOT NULL,
            active INTEGER NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, code)
        )",
        "CREATE TABLE exchanges (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            reward_code TEXT NOT NULL,
            points BIGINT NOT NULL,
            entry_id TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, id)
        )",
        "CREATE TABLE fulfilment_tasks (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            reward_code TEXT NOT NULL,
            reward_name TEXT NOT NULL,
            exchange_id TEXT NOT NULL,
            done INTEGER NOT NULL DEFAULT 0,
            carrier TEXT NOT NULL DEFAULT '',
            tracking_number TEXT NOT NULL DEFAULT '',
            created_at BIGINT NOT NULL,
            done_at BIGINT,
            PRIMARY KEY (shop_id, id)
        )",
        "CREATE INDEX fulfilment_open ON fulfilment_tasks (shop_id, done, id)",
        "CREATE TABLE free_shipping_cards (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            orders_left INTEGER NOT NULL,
            exchange_id TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, id)
        )",
    ],
};

// The review run walks members by primary key (see store/nightly.rs), so
// these indexes only cost writes: an update of requalify_at or of a lot's
// points could not stay a heap-only update while they exist.
const LOYALTY_REVIEW_BY_KEY: SqlMigration = SqlMigration {
    name: "m20261124_000020_loyalty_review_by_key",
    statements: &[
        "DROP INDEX IF EXISTS members_by_requalify",
        "DROP INDEX IF EXISTS members_by_drop",
        "DROP INDEX IF EXISTS lots_by_expiry",
    ],
};

// Events delivered after later ones (decision 0004): the time of the
// profile a member holds, so an older birthday does not replace a newer one.
const LOYALTY_PROFILE_TIME: SqlMigration = SqlMigration {
    name: "m20261125_000031_loyalty_profile_time",
    statements: &["ALTER TABLE members ADD COLUMN profile_at BIGINT NOT NULL DEFAULT 0"],
};

/// The loyalty service's migrations, in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(KIT_TABLES),
            Box::new(LOYALTY_TABLES),
            Box::new(LOYALTY_REVIEW_BY_KEY),
            Box::new(OUTBOX_BATCHES),
            Box::new(LOYALTY_PROFILE_TIME),
            Box::new(OUTBOX_LZ4),
        ]
    }
}
