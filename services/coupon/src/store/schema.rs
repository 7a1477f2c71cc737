//! The coupon service's schema. Every table is keyed by `shop_id` first.

use huitou_storage::migrate::{KIT_TABLES, OUTBOX_BATCHES, OUTBOX_LZ4, SqlMigration};
use sea_orm_migration::prelude::*;

const COUPON_TABLES: SqlMigration = SqlMigration {
    name: "m20261124_000030_coupon",
    statements: &[
        // The template's terms as its contract message (decision 0015): read
        // whole, never changed once created except name, active and budget.
        "CREATE TABLE coupon_templates (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            name TEXT NOT NULL,
            terms {bytes} NOT NULL,
            has_stock INTEGER NOT NULL,
            agent_daily_budget INTEGER NOT NULL,
            active INTEGER NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, id)
        )",
        // The stock split in stripes (decision 0015): 64 clients issuing one
        // template lock one of several rows each instead of queueing on one.
        // `remaining` is NULL for a template without a stock limit; `issued`
        // is counted per stripe for the same reason.
        "CREATE TABLE template_stock (
            shop_id TEXT NOT NULL,
            template_id TEXT NOT NULL,
            stripe INTEGER NOT NULL,
            remaining BIGINT,
            issued BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (shop_id, template_id, stripe)
        )",
        // One row per issued coupon. `issue_key` makes an issue set off by an
        // event, a bulk run or a birthday happen once.
        "CREATE TABLE coupons (
            shop_id TEXT NOT NULL,
            code TEXT NOT NULL,
            template_id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            state INTEGER NOT NULL,
            valid_from BIGINT NOT NULL,
            valid_until BIGINT NOT NULL,
            issue_key TEXT NOT NULL,
            issue_reason TEXT NOT NULL,
            issued_at BIGINT NOT NULL,
            order_no TEXT NOT NULL DEFAULT '',
            hold_until BIGINT,
            discount_fen BIGINT NOT NULL DEFAULT 0,
            order_total_fen BIGINT NOT NULL DEFAULT 0,
            redeemed_at BIGINT,
            redeemed_by TEXT NOT NULL DEFAULT '',
            reminded INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (shop_id, code)
        )",
        "CREATE UNIQUE INDEX coupons_by_issue_key ON coupons (shop_id, template_id, issue_key)",
        "CREATE INDEX coupons_by_customer ON coupons (shop_id, customer_id, issued_at)",
        "CREATE INDEX coupons_by_open_window ON coupons (valid_until) WHERE state IN (1, 2)",
        // Coupons of a template a customer received (or used as a friend's
        // shared coupon): the per-customer limit is a conditional update of
        // this row, so concurrent issues cannot both pass it.
        "CREATE TABLE coupon_holdings (
            shop_id TEXT NOT NULL,
            template_id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            received BIGINT NOT NULL,
            PRIMARY KEY (shop_id, template_id, customer_id)
        )",
        // Coupons an agent issued of a template on a day (YYYYMMDD in the
        // template's time zone).
        "CREATE TABLE agent_budgets (
            shop_id TEXT NOT NULL,
            template_id TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            day INTEGER NOT NULL,
            issued BIGINT NOT NULL,
            PRIMARY KEY (shop_id, template_id, agent_id, day)
        )",
        // What the coupon service knows of buyers, from the customer and
        // loyalty services' events: enough for audiences and birthdays.
        "CREATE TABLE buyers (
            shop_id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            paid_orders BIGINT NOT NULL DEFAULT 0,
            tier_code TEXT NOT NULL DEFAULT '',
            birthday_month INTEGER NOT NULL DEFAULT 0,
            birthday_day INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (shop_id, customer_id)
        )",
        "CREATE INDEX buyers_by_birthday ON buyers (shop_id, birthday_month, birthday_day)",
        "CREATE TABLE issue_rules (
            shop_id TEXT NOT NULL,
            trigger_kind INTEGER NOT NULL,
            template_id TEXT NOT NULL,
            active INTEGER NOT NULL,
            positive_reviews_only INTEGER NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, trigger_kind)
        )",
        // Bulk runs: the customers in order, and how far the run got.
        "CREATE TABLE issue_runs (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            template_id TEXT NOT NULL,
            reason TEXT NOT NULL,
            total BIGINT NOT NULL,
            done BIGINT NOT NULL DEFAULT 0,
            issued BIGINT NOT NULL DEFAULT 0,
            not_eligible BIGINT NOT NULL DEFAULT 0,
            out_of_stock BIGINT NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, id)
        )",
        "CREATE TABLE issue_run_customers (
            shop_id TEXT NOT NULL,
            run_id TEXT NOT NULL,
            position BIGINT NOT NULL,
            customer_id TEXT NOT NULL,
            PRIMARY KEY (shop_id, run_id, position)
        )",
    ],
};

const COUPON_VERSIONS_HOT: SqlMigration = SqlMigration {
    name: "m20261124_000032_coupon_version_hot",
    statements: &[
        // Bumped by every change of a coupon row; changes are conditioned on
        // it and the checkout cache keeps the highest (see store::cached).
        "ALTER TABLE coupons ADD COLUMN version BIGINT NOT NULL DEFAULT 0",
        // Redemption as a HOT update (decision 0015): no index may cover a
        // column it changes, so the expiry sweeper's index is keyed on
        // `swept` (set once by the sweeper when a coupon's window closes)
        // instead of `state`, and pages keep room for the new row version.
        "ALTER TABLE coupons ADD COLUMN swept INTEGER NOT NULL DEFAULT 0",
        "DROP INDEX coupons_by_open_window",
        "CREATE INDEX coupons_unswept ON coupons (valid_until) WHERE swept = 0",
        "{postgres}ALTER TABLE coupons SET (fillfactor = 80)",
    ],
};

// Events that arrive after later ones (the relay retries a failed delivery
// while later rows go, decision 0004): the times of the tier and profile
// held, so older changes are ignored, and erasure, which no later profile
// undoes.
const BUYERS_LATE_EVENTS: SqlMigration = SqlMigration {
    name: "m20261124_000033_coupon_buyers_late_events",
    statements: &[
        "ALTER TABLE buyers ADD COLUMN tier_at BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE buyers ADD COLUMN profile_at BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE buyers ADD COLUMN erased INTEGER NOT NULL DEFAULT 0",
    ],
};

/// The coupon service's migrations, in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(KIT_TABLES),
            Box::new(COUPON_TABLES),
            Box::new(COUPON_VERSIONS_HOT),
            Box::new(OUTBOX_BATCHES),
            Box::new(BUYERS_LATE_EVENTS),
            Box::new(OUTBOX_LZ4),
        ]
    }
}
