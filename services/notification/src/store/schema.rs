//! The notification service's schema. Every table is keyed by `shop_id`
//! first. No phone number, address or email is stored here: addresses are
//! asked of the customer service at the moment of sending (decision 0016).

use huitou_storage::migrate::{KIT_TABLES, OUTBOX_BATCHES, OUTBOX_LZ4, SqlMigration};
use sea_orm_migration::prelude::*;

const NOTIFICATION_TABLES: SqlMigration = SqlMigration {
    name: "m20261124_000040_notification",
    statements: &[
        // The template as its contract message, read whole.
        "CREATE TABLE notification_templates (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            template {bytes} NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, id)
        )",
        // Policy, holidays and trigger rules as their contract messages.
        "CREATE TABLE send_policies (
            shop_id TEXT NOT NULL PRIMARY KEY,
            policy {bytes} NOT NULL,
            updated_at BIGINT NOT NULL
        )",
        "CREATE TABLE holidays (
            shop_id TEXT NOT NULL,
            date TEXT NOT NULL,
            holiday {bytes} NOT NULL,
            PRIMARY KEY (shop_id, date)
        )",
        "CREATE TABLE trigger_rules (
            shop_id TEXT NOT NULL,
            trigger_kind INTEGER NOT NULL,
            rule {bytes} NOT NULL,
            PRIMARY KEY (shop_id, trigger_kind)
        )",
        // What the service knows of a customer: consent from the customer
        // service's events, opt-outs from replies (channel names between
        // commas, e.g. ',sms,email,'), open complaints, erasure, birthday.
        // Dispatch locks this row, so two workers cannot both pass a cap.
        "CREATE TABLE recipients (
            shop_id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            known INTEGER NOT NULL DEFAULT 0,
            consents TEXT NOT NULL DEFAULT ',',
            opted_out TEXT NOT NULL DEFAULT ',',
            opted_out_at BIGINT NOT NULL DEFAULT 0,
            complaint INTEGER NOT NULL DEFAULT 0,
            erased INTEGER NOT NULL DEFAULT 0,
            birthday_month INTEGER NOT NULL DEFAULT 0,
            birthday_day INTEGER NOT NULL DEFAULT 0,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, customer_id)
        )",
        "CREATE INDEX recipients_by_birthday ON recipients (shop_id, birthday_month, birthday_day)",
        // One row per message. `due_at` is when it may next be looked at:
        // its schedule, the next window, the next retry, or (while SENDING)
        // the end of the sender's lease, after which another worker takes
        // it over. `dedupe_key` makes a batch recipient or an event's
        // message happen once.
        "CREATE TABLE messages (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            template_id TEXT NOT NULL,
            channel INTEGER NOT NULL,
            kind INTEGER NOT NULL,
            status INTEGER NOT NULL,
            status_reason TEXT NOT NULL DEFAULT '',
            body TEXT NOT NULL,
            provider_template_id TEXT NOT NULL DEFAULT '',
            variables TEXT NOT NULL DEFAULT '',
            subject TEXT NOT NULL DEFAULT '',
            segments INTEGER NOT NULL,
            cost_millifen BIGINT NOT NULL,
            urgent INTEGER NOT NULL,
            due_at BIGINT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            provider TEXT NOT NULL DEFAULT '',
            provider_message_id TEXT NOT NULL DEFAULT '',
            origin TEXT NOT NULL,
            dedupe_key TEXT NOT NULL DEFAULT '',
            order_no TEXT NOT NULL DEFAULT '',
            day INTEGER NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, id)
        )",
        "CREATE INDEX messages_due ON messages (due_at) WHERE status IN (1, 2, 4, 8)",
        "CREATE UNIQUE INDEX messages_by_dedupe_key ON messages (shop_id, dedupe_key) WHERE dedupe_key <> ''",
        "CREATE INDEX messages_by_customer ON messages (shop_id, customer_id, id)",
        "CREATE INDEX messages_by_provider_id ON messages (shop_id, provider_message_id) WHERE provider_message_id <> ''",
        "CREATE INDEX messages_by_order ON messages (shop_id, order_no) WHERE order_no <> ''",
        "CREATE INDEX messages_by_day ON messages (shop_id, day, template_id)",
        "CREATE TABLE message_history (
            shop_id TEXT NOT NULL,
            message_id TEXT NOT NULL,
            seq {seq_pk},
            status INTEGER NOT NULL,
            at BIGINT NOT NULL,
            detail TEXT NOT NULL
        )",
        "CREATE INDEX message_history_by_message ON message_history (shop_id, message_id, seq)",
        // Messages that left, per customer and channel: the caps and the
        // duplicate rule count these. A message that finally fails gives
        // its row back.
        "CREATE TABLE sent_log (
            shop_id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            channel INTEGER NOT NULL,
            message_id TEXT NOT NULL,
            template_id TEXT NOT NULL,
            marketing INTEGER NOT NULL,
            sent_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, customer_id, channel, message_id)
        )",
        "CREATE TABLE call_tasks (
            shop_id TEXT NOT NULL,
            id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            order_no TEXT NOT NULL,
            reason TEXT NOT NULL,
            outcome INTEGER NOT NULL DEFAULT 0,
            note TEXT NOT NULL DEFAULT '',
            dedupe_key TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            closed_at BIGINT,
            PRIMARY KEY (shop_id, id)
        )",
        "CREATE UNIQUE INDEX call_tasks_by_dedupe_key ON call_tasks (shop_id, dedupe_key)",
        "CREATE INDEX call_tasks_by_outcome ON call_tasks (shop_id, outcome, id)",
    ],
};

// Opt-outs not yet written back to the customer service's consent record
// (channel names between commas); the housekeeping loop retries them.
const OPT_OUT_SYNC: SqlMigration = SqlMigration {
    name: "m20261124_000041_notification_opt_out_sync",
    statements: &[
        "ALTER TABLE recipients ADD COLUMN opt_out_unsynced TEXT NOT NULL DEFAULT ','",
        "CREATE INDEX recipients_opt_out_unsynced ON recipients (shop_id) WHERE opt_out_unsynced <> ','",
    ],
};

// Events that arrive after later ones (the relay retries a failed delivery
// while later rows go, decision 0004): the time of the profile held, so an
// older `customer.updated` is ignored, and orders paid or closed before
// their `order.created` arrived, so no payment reminder is scheduled then.
const LATE_EVENTS: SqlMigration = SqlMigration {
    name: "m20261124_000042_notification_late_events",
    statements: &[
        "ALTER TABLE recipients ADD COLUMN profile_at BIGINT NOT NULL DEFAULT 0",
        "CREATE TABLE settled_orders (
            shop_id TEXT NOT NULL,
            order_no TEXT NOT NULL,
            settled_at BIGINT NOT NULL,
            PRIMARY KEY (shop_id, order_no)
        )",
    ],
};

// A shipment reported after the buyer confirmed receipt sends no notice:
// the order's settled mark also says it was received.
const LATE_SHIPMENTS: SqlMigration = SqlMigration {
    name: "m20261125_000043_notification_late_shipments",
    statements: &["ALTER TABLE settled_orders ADD COLUMN received BOOLEAN NOT NULL DEFAULT FALSE"],
};

/// The notification service's migrations, in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(KIT_TABLES),
            Box::new(NOTIFICATION_TABLES),
            Box::new(OPT_OUT_SYNC),
            Box::new(OUTBOX_BATCHES),
            Box::new(LATE_EVENTS),
            Box::new(LATE_SHIPMENTS),
            Box::new(OUTBOX_LZ4),
        ]
    }
}
