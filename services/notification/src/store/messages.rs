//! Messages: accepting them (one or a batch), their status history, reads,
//! receipts and per-template counts.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Datelike;
use huitou_proto::notification::v1 as pb;
use huitou_proto::timestamp_from_micros;
use huitou_storage::bulk::{self, Col};
use huitou_storage::{WriteTx, now_micros};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};

use super::{ShopSettings, Store, new_id, read_on};
use crate::domain::rules::{Standing, Suppression, admit};
use crate::domain::window::local_date;
use crate::error::NotificationError;
use crate::template::{Rendered, is_marketing};

/// Status numbers as stored (huitou.notification.v1.MessageStatus).
pub mod status {
    /// Waiting for its time.
    pub const QUEUED: i32 = 1;
    /// Waiting for a window.
    pub const DEFERRED: i32 = 2;
    /// Not sent, by a rule.
    pub const SUPPRESSED: i32 = 3;
    /// With a provider.
    pub const SENDING: i32 = 4;
    /// Accepted by a provider.
    pub const SENT: i32 = 5;
    /// Delivered.
    pub const DELIVERED: i32 = 6;
    /// Failed for good.
    pub const FAILED: i32 = 7;
    /// Waiting to try again.
    pub const RETRYING: i32 = 8;
}

/// The columns of [`MessageRow`].
pub const COLUMNS: &str = "shop_id, id, customer_id, template_id, channel, kind, status, status_reason, \
     body, provider_template_id, variables, subject, segments, cost_millifen, urgent, due_at, \
     attempts, provider, provider_message_id, origin, dedupe_key, order_no, day, created_at, updated_at";

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct MessageRow {
    /// Shop.
    pub shop_id: String,
    /// Id.
    pub id: String,
    /// Customer.
    pub customer_id: String,
    /// Template.
    pub template_id: String,
    /// Channel number.
    pub channel: i32,
    /// Kind number.
    pub kind: i32,
    /// Status number.
    pub status: i32,
    /// Why (suppression code, failure).
    pub status_reason: String,
    /// The text as sent.
    pub body: String,
    /// The gateway's template id (SMS).
    pub provider_template_id: String,
    /// The variables as JSON, for gateways that fill templates themselves.
    pub variables: String,
    /// Email subject.
    pub subject: String,
    /// SMS segments.
    pub segments: i32,
    /// Cost, thousandths of a fen.
    pub cost_millifen: i64,
    /// Urgent (1) or not (0).
    pub urgent: i32,
    /// When it may next be looked at, µs.
    pub due_at: i64,
    /// Attempts made.
    pub attempts: i32,
    /// Provider that took it.
    pub provider: String,
    /// Provider's id for it.
    pub provider_message_id: String,
    /// What set it off.
    pub origin: String,
    /// Once-only key.
    pub dedupe_key: String,
    /// Order it is about.
    pub order_no: String,
    /// Accepted on this day, YYYYMMDD, shop time.
    pub day: i32,
    /// Accepted at, µs.
    pub created_at: i64,
    /// Last change, µs.
    pub updated_at: i64,
}

impl MessageRow {
    /// Marketing or not.
    pub fn is_marketing(&self) -> bool {
        self.kind == pb::MessageKind::Marketing as i32
    }

    /// The contract form, with `history`.
    pub fn to_pb(&self, history: Vec<pb::StatusChange>) -> pb::Message {
        pb::Message {
            id: self.id.clone(),
            customer_id: self.customer_id.clone(),
            template_id: self.template_id.clone(),
            channel: self.channel,
            kind: self.kind,
            status: self.status,
            status_reason: self.status_reason.clone(),
            text: self.body.clone(),
            segments: self.segments,
            cost_millifen: self.cost_millifen,
            urgent: self.urgent != 0,
            deliver_after_time: Some(timestamp_from_micros(self.due_at)),
            attempts: self.attempts,
            provider: self.provider.clone(),
            provider_message_id: self.provider_message_id.clone(),
            create_time: Some(timestamp_from_micros(self.created_at)),
            history,
            origin: self.origin.clone(),
        }
    }
}

/// A message to accept.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// The customer.
    pub customer_id: &'a str,
    /// The template (with its id).
    pub template: &'a pb::Template,
    /// Its text for this customer.
    pub rendered: Rendered,
    /// The variables, for template-id gateways.
    pub variables: &'a BTreeMap<String, String>,
    /// Not before, µs.
    pub not_before: i64,
    /// Urgent transactional.
    pub urgent: bool,
    /// What set it off.
    pub origin: &'a str,
    /// Once-only key; empty for none.
    pub dedupe_key: String,
    /// The order it is about.
    pub order_no: &'a str,
}

/// Where a message starts: its status, when it may leave, and what its
/// history says about that.
pub fn placement(
    settings: &ShopSettings,
    standing: Option<Standing>,
    marketing: bool,
    urgent: bool,
    not_before: i64,
    now: i64,
) -> (i32, i64, String, String) {
    if let Some(s) = standing
        && (s.known || s.erased)
        && let Err(why) = admit(s, marketing)
    {
        return (
            status::SUPPRESSED,
            now,
            why.code().to_owned(),
            why.describe(),
        );
    }
    let from = not_before.max(now);
    if urgent && !marketing {
        return (
            status::QUEUED,
            from,
            String::new(),
            "accepted (urgent)".into(),
        );
    }
    let aim = marketing && settings.policy.aim_last_hour;
    match settings.calendar.next_open(from, aim) {
        Some(at) if at > from => (
            status::DEFERRED,
            at,
            String::new(),
            format!(
                "deferred to the next send window, {}",
                describe_time(settings, at)
            ),
        ),
        Some(at) => (
            status::QUEUED,
            at,
            String::new(),
            if at > now {
                format!("scheduled for {}", describe_time(settings, at))
            } else {
                "accepted".into()
            },
        ),
        None => (
            status::DEFERRED,
            from + 86_400_000_000,
            String::new(),
            "deferred: no send window opens within a year; change the policy".into(),
        ),
    }
}

/// A time in the shop's zone, as operators read it.
pub fn describe_time(settings: &ShopSettings, at: i64) -> String {
    use chrono::TimeZone;
    settings
        .calendar
        .zone
        .timestamp_micros(at)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M %Z").to_string())
        .unwrap_or_default()
}

/// The shop-local day of `at` as YYYYMMDD.
pub fn day_number(settings: &ShopSettings, at: i64) -> i32 {
    local_date(settings.calendar.zone, at).map_or(0, |d| {
        d.year() * 10_000 + d.month() as i32 * 100 + d.day() as i32
    })
}

const INSERT_COLUMNS: &[(&str, Col)] = &[
    ("shop_id", Col::Text),
    ("id", Col::Text),
    ("customer_id", Col::Text),
    ("template_id", Col::Text),
    ("channel", Col::Int),
    ("kind", Col::Int),
    ("status", Col::Int),
    ("status_reason", Col::Text),
    ("body", Col::Text),
    ("provider_template_id", Col::Text),
    ("variables", Col::Text),
    ("subject", Col::Text),
    ("segments", Col::Int),
    ("cost_millifen", Col::BigInt),
    ("urgent", Col::Int),
    ("due_at", Col::BigInt),
    ("attempts", Col::Int),
    ("provider", Col::Text),
    ("provider_message_id", Col::Text),
    ("origin", Col::Text),
    ("dedupe_key", Col::Text),
    ("order_no", Col::Text),
    ("day", Col::Int),
    ("created_at", Col::BigInt),
    ("updated_at", Col::BigInt),
];

const HISTORY_COLUMNS: &[(&str, Col)] = &[
    ("shop_id", Col::Text),
    ("message_id", Col::Text),
    ("status", Col::Int),
    ("at", Col::BigInt),
    ("detail", Col::Text),
];

fn row_values(r: &MessageRow) -> Vec<Value> {
    vec![
        r.shop_id.clone().into(),
        r.id.clone().into(),
        r.customer_id.clone().into(),
        r.template_id.clone().into(),
        r.channel.into(),
        r.kind.into(),
        r.status.into(),
        r.status_reason.clone().into(),
        r.body.clone().into(),
        r.provider_template_id.clone().into(),
        r.variables.clone().into(),
        r.subject.clone().into(),
        r.segments.into(),
        r.cost_millifen.into(),
        r.urgent.into(),
        r.due_at.into(),
        r.attempts.into(),
        r.provider.clone().into(),
        r.provider_message_id.clone().into(),
        r.origin.clone().into(),
        r.dedupe_key.clone().into(),
        r.order_no.clone().into(),
        r.day.into(),
        r.created_at.into(),
        r.updated_at.into(),
    ]
}

/// What accepting a batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// New messages queued or deferred.
    pub accepted: i64,
    /// Already there under their once-only key.
    pub already: i64,
    /// New messages suppressed, by reason.
    pub suppressed: BTreeMap<String, i64>,
}

/// How far an order had gone when its earlier events came late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderMark {
    /// Paid or closed: no payment reminder when its `order.created` comes.
    Settled,
    /// Received (and so settled): no shipping notice when its
    /// `order.shipped` comes either.
    Received,
}

/// The origin of payment reminders made from `order.created`.
const UNPAID_REMINDER: &str = "event:unpaid_reminder";

/// The origin of shipping notices made from `order.shipped`.
const SHIPPING_NOTICE: &str = "event:order_shipped";

impl Store {
    /// Builds the stored row of a new message, placed by the shop's rules.
    pub fn new_row(
        &self,
        shop_id: &str,
        settings: &ShopSettings,
        m: &NewMessage<'_>,
        standing: Option<Standing>,
        now: i64,
    ) -> (MessageRow, String) {
        let marketing = is_marketing(m.template);
        let (status, due_at, reason, detail) =
            placement(settings, standing, marketing, m.urgent, m.not_before, now);
        let variables = if m.template.provider_template_id.is_empty() {
            String::new()
        } else {
            serde_json::to_string(m.variables).unwrap_or_default()
        };
        (
            MessageRow {
                shop_id: shop_id.to_owned(),
                id: new_id(),
                customer_id: m.customer_id.to_owned(),
                template_id: m.template.id.clone(),
                channel: m.template.channel,
                kind: m.template.kind,
                status,
                status_reason: reason,
                body: m.rendered.text.clone(),
                provider_template_id: m.template.provider_template_id.clone(),
                variables,
                subject: m.template.subject.clone(),
                segments: m.rendered.segments,
                cost_millifen: m.rendered.cost_millifen,
                urgent: i32::from(m.urgent),
                due_at,
                attempts: 0,
                provider: String::new(),
                provider_message_id: String::new(),
                origin: m.origin.to_owned(),
                dedupe_key: m.dedupe_key.clone(),
                order_no: m.order_no.to_owned(),
                day: day_number(settings, now),
                created_at: now,
                updated_at: now,
            },
            detail,
        )
    }

    /// Accepts one message; with a once-only key already used, the message
    /// already there.
    pub async fn accept(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        m: &NewMessage<'_>,
    ) -> Result<MessageRow, NotificationError> {
        let settings = self.shop_settings(shop_id).await?;
        let standing = self
            .standing(&**tx, shop_id, m.customer_id, m.template.channel, false)
            .await?;
        let (row, detail) = self.new_row(shop_id, &settings, m, Some(standing), now_micros());
        let inserted = bulk::insert(
            tx,
            "messages",
            INSERT_COLUMNS,
            vec![row_values(&row)],
            "ON CONFLICT (shop_id, dedupe_key) WHERE dedupe_key <> '' DO NOTHING",
        )
        .await?;
        if inserted == 0 {
            return self
                .message_by_key(&**tx, shop_id, &m.dedupe_key)
                .await?
                .ok_or(NotificationError::MessageNotFound);
        }
        self.record_history(
            tx,
            shop_id,
            &[(row.id.as_str(), row.status, detail.as_str())],
            row.created_at,
        )
        .await?;
        Ok(row)
    }

    /// Accepts many messages of one shop at once; rows whose once-only key
    /// is taken are left as they are.
    pub async fn accept_many(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        rows: Vec<(MessageRow, String)>,
    ) -> Result<Accepted, NotificationError> {
        let mut done = Accepted::default();
        if rows.is_empty() {
            return Ok(done);
        }
        let now = rows[0].0.created_at;
        let values: Vec<Vec<Value>> = rows.iter().map(|(r, _)| row_values(r)).collect();
        let inserted = bulk::insert(
            tx,
            "messages",
            INSERT_COLUMNS,
            values,
            "ON CONFLICT (shop_id, dedupe_key) WHERE dedupe_key <> '' DO NOTHING",
        )
        .await? as usize;
        let kept: Vec<&(MessageRow, String)> = if inserted == rows.len() {
            rows.iter().collect()
        } else {
            // Some keys were taken: keep the rows whose ids made it in.
            let ids: Vec<String> = rows.iter().map(|(r, _)| r.id.clone()).collect();
            let mut present = std::collections::HashSet::new();
            for r in bulk::query_with_keys(
                &**tx,
                "SELECT id FROM messages WHERE shop_id = $1 AND id {keys}",
                vec![shop_id.into()],
                &ids,
            )
            .await?
            {
                present.insert(r.try_get::<String>("", "id")?);
            }
            rows.iter()
                .filter(|(r, _)| present.contains(&r.id))
                .collect()
        };
        done.already = (rows.len() - kept.len()) as i64;
        for (r, _) in &kept {
            if r.status == status::SUPPRESSED {
                *done.suppressed.entry(r.status_reason.clone()).or_default() += 1;
            } else {
                done.accepted += 1;
            }
        }
        let history: Vec<(&str, i32, &str)> = kept
            .iter()
            .map(|(r, d)| (r.id.as_str(), r.status, d.as_str()))
            .collect();
        self.record_history(tx, shop_id, &history, now).await?;
        Ok(done)
    }

    /// Appends status changes to messages' histories.
    pub async fn record_history(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        changes: &[(&str, i32, &str)],
        at: i64,
    ) -> Result<(), NotificationError> {
        let changes = changes
            .iter()
            .map(|(id, status, detail)| {
                (
                    shop_id.to_owned(),
                    (*id).to_owned(),
                    *status,
                    (*detail).to_owned(),
                )
            })
            .collect();
        self.record_histories(tx, changes, at).await
    }

    /// Appends status changes of messages of several shops, with their own
    /// details, in one statement.
    pub async fn record_histories(
        &self,
        tx: &WriteTx,
        changes: Vec<(String, String, i32, String)>,
        at: i64,
    ) -> Result<(), NotificationError> {
        let rows = changes
            .into_iter()
            .map(|(shop, id, status, detail)| {
                vec![
                    shop.into(),
                    id.into(),
                    status.into(),
                    at.into(),
                    detail.into(),
                ]
            })
            .collect();
        bulk::insert(tx, "message_history", HISTORY_COLUMNS, rows, "").await?;
        Ok(())
    }

    /// Messages due to leave now and not yet sent, across shops, and how
    /// long the oldest has waited (seconds): the delivery queue's depth.
    pub async fn delivery_queue(&self, now: i64) -> Result<(i64, f64), NotificationError> {
        let rows = self
            .read(
                "SELECT COUNT(*) AS n, MIN(due_at) AS oldest FROM messages
                 WHERE status IN (1, 2, 4, 8) AND due_at <= $1",
                vec![now.into()],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok((0, 0.0));
        };
        let n: i64 = row.try_get("", "n")?;
        let oldest: Option<i64> = row.try_get("", "oldest")?;
        Ok((n, oldest.map_or(0.0, |o| (now - o).max(0) as f64 / 1e6)))
    }

    /// A message by its once-only key.
    pub async fn message_by_key(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        key: &str,
    ) -> Result<Option<MessageRow>, NotificationError> {
        let rows = read_on(
            conn,
            &self.db,
            &format!("SELECT {COLUMNS} FROM messages WHERE shop_id = $1 AND dedupe_key = $2"),
            vec![shop_id.into(), key.into()],
        )
        .await?;
        Ok(rows
            .first()
            .map(|r| MessageRow::from_query_result(r, ""))
            .transpose()?)
    }

    /// A message by id.
    pub async fn message(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        id: &str,
    ) -> Result<MessageRow, NotificationError> {
        let rows = read_on(
            conn,
            &self.db,
            &format!("SELECT {COLUMNS} FROM messages WHERE shop_id = $1 AND id = $2"),
            vec![shop_id.into(), id.into()],
        )
        .await?;
        rows.first()
            .map(|r| MessageRow::from_query_result(r, ""))
            .transpose()?
            .ok_or(NotificationError::MessageNotFound)
    }

    /// A message's history, oldest first.
    pub async fn history(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        id: &str,
    ) -> Result<Vec<pb::StatusChange>, NotificationError> {
        let rows = read_on(
            conn,
            &self.db,
            "SELECT status, at, detail FROM message_history
             WHERE shop_id = $1 AND message_id = $2 ORDER BY seq",
            vec![shop_id.into(), id.into()],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(pb::StatusChange {
                    status: r.try_get("", "status")?,
                    time: Some(timestamp_from_micros(r.try_get("", "at")?)),
                    detail: r.try_get("", "detail")?,
                })
            })
            .collect()
    }

    /// A message with its history.
    pub async fn message_with_history(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        id: &str,
    ) -> Result<pb::Message, NotificationError> {
        let row = self.message(conn, shop_id, id).await?;
        let history = self.history(conn, shop_id, id).await?;
        Ok(row.to_pb(history))
    }

    /// A page of a customer's messages, newest first, before id `before`.
    pub async fn customer_messages(
        &self,
        shop_id: &str,
        customer_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MessageRow>, NotificationError> {
        let rows = self
            .read(
                &format!(
                    "SELECT {COLUMNS} FROM messages WHERE shop_id = $1 AND customer_id = $2
                     AND ($3 = '' OR id < $3) ORDER BY id DESC LIMIT $4"
                ),
                vec![
                    shop_id.into(),
                    customer_id.into(),
                    before.unwrap_or_default().into(),
                    (limit as i64).into(),
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| MessageRow::from_query_result(r, ""))
            .collect::<Result<_, _>>()?)
    }

    /// An order was settled (paid or closed) or received: its unsent
    /// messages that no longer make sense are dropped — payment reminders
    /// once settled, shipping notices once received. The event they come
    /// from may still be on its way, delivered after this one (decision
    /// 0004): with `may_message` (the shop has a rule for that message)
    /// and no such message for the order at all, the order is marked, so
    /// that none is made when that event comes. Messages dropped.
    pub async fn mark_order(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        order_no: &str,
        mark: OrderMark,
        may_message: bool,
    ) -> Result<u64, NotificationError> {
        let (origin, why, record) = match mark {
            OrderMark::Settled => (
                UNPAID_REMINDER,
                Suppression::OrderPaid,
                "INSERT INTO settled_orders (shop_id, order_no, settled_at) VALUES ($1, $2, $3)
                 ON CONFLICT (shop_id, order_no) DO NOTHING",
            ),
            OrderMark::Received => (
                SHIPPING_NOTICE,
                Suppression::OrderReceived,
                "INSERT INTO settled_orders (shop_id, order_no, settled_at, received)
                 VALUES ($1, $2, $3, TRUE)
                 ON CONFLICT (shop_id, order_no) DO UPDATE SET received = TRUE",
            ),
        };
        let dropped = self.drop_unsent(tx, shop_id, order_no, origin, why).await?;
        if dropped > 0 || !may_message || self.has_message(tx, shop_id, order_no, origin).await? {
            return Ok(dropped);
        }
        tx.execute(
            record,
            vec![shop_id.into(), order_no.into(), now_micros().into()],
        )
        .await?;
        Ok(dropped)
    }

    /// Whether a message of `origin` was ever made for the order.
    async fn has_message(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        order_no: &str,
        origin: &str,
    ) -> Result<bool, NotificationError> {
        let found = tx
            .query_all(
                "SELECT 1 FROM messages WHERE shop_id = $1 AND order_no = $2
                 AND origin = $3 LIMIT 1",
                vec![shop_id.into(), order_no.into(), origin.into()],
            )
            .await?;
        Ok(!found.is_empty())
    }

    /// The mark an order got when it was settled or received before its
    /// earlier events arrived (see [`Store::mark_order`]).
    pub async fn order_mark(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        order_no: &str,
    ) -> Result<Option<OrderMark>, NotificationError> {
        let found = tx
            .query_all(
                "SELECT received FROM settled_orders WHERE shop_id = $1 AND order_no = $2",
                vec![shop_id.into(), order_no.into()],
            )
            .await?;
        let Some(row) = found.first() else {
            return Ok(None);
        };
        Ok(Some(if row.try_get::<bool>("", "received")? {
            OrderMark::Received
        } else {
            OrderMark::Settled
        }))
    }

    /// Forgets settled marks older than `age`: an `order.created` held
    /// back longer than that by the relay's retries is not expected.
    pub async fn forget_settled_orders(&self, age: Duration) -> Result<u64, NotificationError> {
        let cutoff = now_micros() - age.as_micros() as i64;
        Ok(self
            .db
            .execute(
                "DELETE FROM settled_orders WHERE settled_at < $1",
                vec![cutoff.into()],
            )
            .await?)
    }

    /// Drops the order's unsent messages of `origin` (a payment reminder
    /// once paid, a shipping notice once received), `why`.
    pub async fn drop_unsent(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        order_no: &str,
        origin: &str,
        why: Suppression,
    ) -> Result<u64, NotificationError> {
        let now = now_micros();
        // One conditional statement, not a read then updates by id: a
        // dispatcher may claim a message (SENDING) between the two, and
        // the claim must win. On PostgreSQL a row a dispatcher holds is
        // waited for and its status checked again.
        let rows = tx
            .query_all(
                "UPDATE messages SET status = 3, status_reason = $3, updated_at = $4
                 WHERE shop_id = $1 AND order_no = $2
                   AND origin = $5 AND status IN (1, 2, 8)
                 RETURNING id",
                vec![
                    shop_id.into(),
                    order_no.into(),
                    why.code().into(),
                    now.into(),
                    origin.into(),
                ],
            )
            .await?;
        let mut ids = Vec::with_capacity(rows.len());
        for r in &rows {
            ids.push(r.try_get::<String>("", "id")?);
        }
        let detail = why.describe();
        let changes: Vec<(&str, i32, &str)> = ids
            .iter()
            .map(|id| (id.as_str(), status::SUPPRESSED, detail.as_str()))
            .collect();
        self.record_history(tx, shop_id, &changes, now).await?;
        Ok(ids.len() as u64)
    }

    /// Applies a provider's receipt to the message it names.
    pub async fn receipt(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        provider_message_id: &str,
        delivered: bool,
        detail: &str,
    ) -> Result<MessageRow, NotificationError> {
        let rows = tx
            .query_all(
                &format!(
                    "SELECT {COLUMNS} FROM messages WHERE shop_id = $1 AND provider_message_id = $2{}",
                    self.for_update()
                ),
                vec![shop_id.into(), provider_message_id.into()],
            )
            .await?;
        let mut row = rows
            .first()
            .map(|r| MessageRow::from_query_result(r, ""))
            .transpose()?
            .ok_or(NotificationError::MessageNotFound)?;
        // A receipt for a message already final, or one that arrives twice,
        // changes nothing.
        if !matches!(row.status, status::SENT | status::SENDING) {
            return Ok(row);
        }
        let now = now_micros();
        let (new_status, reason, note) = if delivered {
            (
                status::DELIVERED,
                String::new(),
                format!("delivered ({})", detail_or(detail, "receipt")),
            )
        } else {
            (
                status::FAILED,
                format!("UNDELIVERABLE: {}", detail_or(detail, "no reason given")),
                format!(
                    "failed: the provider reported it undeliverable ({})",
                    detail_or(detail, "no reason given")
                ),
            )
        };
        tx.execute(
            "UPDATE messages SET status = $3, status_reason = $4, updated_at = $5 WHERE shop_id = $1 AND id = $2",
            vec![
                shop_id.into(),
                row.id.clone().into(),
                new_status.into(),
                reason.clone().into(),
                now.into(),
            ],
        )
        .await?;
        self.record_history(
            tx,
            shop_id,
            &[(row.id.as_str(), new_status, note.as_str())],
            now,
        )
        .await?;
        row.status = new_status;
        row.status_reason = reason;
        Ok(row)
    }

    /// Counts and cost per template and day between two YYYYMMDD days.
    pub async fn template_days(
        &self,
        shop_id: &str,
        template_id: &str,
        from_day: i32,
        to_day: i32,
    ) -> Result<Vec<pb::TemplateDay>, NotificationError> {
        let rows = self
            .read(
                "SELECT template_id, day, COUNT(*) AS accepted,
                    CAST(SUM(CASE WHEN status IN (5, 6) THEN 1 ELSE 0 END) AS BIGINT) AS sent,
                    CAST(SUM(CASE WHEN status = 6 THEN 1 ELSE 0 END) AS BIGINT) AS delivered,
                    CAST(SUM(CASE WHEN status = 7 THEN 1 ELSE 0 END) AS BIGINT) AS failed,
                    CAST(SUM(CASE WHEN status = 3 THEN 1 ELSE 0 END) AS BIGINT) AS suppressed,
                    CAST(SUM(CASE WHEN status IN (5, 6) THEN segments ELSE 0 END) AS BIGINT) AS segments,
                    CAST(SUM(CASE WHEN status IN (5, 6) THEN cost_millifen ELSE 0 END) AS BIGINT) AS cost
                 FROM messages WHERE shop_id = $1 AND day BETWEEN $2 AND $3
                   AND ($4 = '' OR template_id = $4)
                 GROUP BY template_id, day ORDER BY day, template_id",
                vec![
                    shop_id.into(),
                    from_day.into(),
                    to_day.into(),
                    template_id.into(),
                ],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let day: i32 = r.try_get("", "day")?;
                Ok(pb::TemplateDay {
                    template_id: r.try_get("", "template_id")?,
                    date: format!(
                        "{:04}-{:02}-{:02}",
                        day / 10_000,
                        day / 100 % 100,
                        day % 100
                    ),
                    accepted: r.try_get("", "accepted")?,
                    sent: r.try_get("", "sent")?,
                    delivered: r.try_get("", "delivered")?,
                    failed: r.try_get("", "failed")?,
                    suppressed: r.try_get("", "suppressed")?,
                    segments: r.try_get("", "segments")?,
                    cost_millifen: r.try_get("", "cost")?,
                })
            })
            .collect()
    }
}

fn detail_or<'a>(detail: &'a str, or: &'a str) -> &'a str {
    if detail.trim().is_empty() {
        or
    } else {
        detail.trim()
    }
}
