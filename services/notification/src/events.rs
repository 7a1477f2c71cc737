//! Events from the customer and coupon services, applied exactly once (the
//! inbox remembers each event id in the same transaction): they keep what
//! the service knows of customers (consent, erasure, birthdays) and set off
//! the shop's trigger rules — shipped, 催付, received (with a staff call
//! task), review request, coupon expiring.

use std::collections::BTreeMap;

use huitou_proto::events::v1::EventEnvelope;
use huitou_proto::events::v1::event_envelope::Payload;
use huitou_proto::micros_from_timestamp;
use huitou_proto::notification::v1 as pb;
use huitou_runtime::Failure;
use huitou_runtime::auth::BoxFuture;
use huitou_storage::WriteTx;
use huitou_storage::inbox::{EventHandler, LockKey};

use crate::error::NotificationError;
use crate::store::Store;
use crate::store::messages::{NewMessage, OrderMark};
use crate::store::recipients::RecipientChange;
use crate::template;

/// The event types the notification service subscribes to.
pub const SUBSCRIBED: &[&str] = &[
    "customer.created",
    "customer.updated",
    "customer.erased",
    "order.created",
    "order.paid",
    "order.closed",
    "order.shipped",
    "order.received",
    "coupon.expiring_soon",
];

/// The variables each trigger's event supplies: a rule's template may use
/// only these.
pub fn trigger_variables(trigger: pb::Trigger) -> &'static [&'static str] {
    match trigger {
        pb::Trigger::OrderShipped => &["order_no", "carrier", "tracking_number"],
        pb::Trigger::UnpaidReminder => &["order_no", "amount_yuan"],
        pb::Trigger::OrderReceived | pb::Trigger::ReviewRequest => &["order_no"],
        pb::Trigger::CouponExpiring => &["coupon_code", "coupon_name", "expire_date"],
        pb::Trigger::Birthday | pb::Trigger::Unspecified => &[],
    }
}

/// Fen as yuan for a message: 29900 → "299", 2990 → "29.9".
pub fn yuan(fen: i64) -> String {
    let s = format!("{}.{:02}", fen / 100, (fen % 100).abs());
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The notification service's reaction to other services' events.
pub struct NotificationEvents {
    store: Store,
}

impl NotificationEvents {
    /// A handler writing through `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    async fn apply_event(
        &self,
        tx: &WriteTx,
        event: &EventEnvelope,
    ) -> Result<(), NotificationError> {
        let store = &self.store;
        let shop = event.shop_id.as_str();
        let at = huitou_storage::inbox::occurred_at(event);
        match &event.payload {
            Some(Payload::CustomerCreated(c)) => {
                store
                    .change_recipient(tx, shop, &c.customer_id, RecipientChange::Known)
                    .await?;
            }
            Some(Payload::CustomerUpdated(c)) => {
                let consent_changed = c
                    .changed_fields
                    .iter()
                    .filter_map(|f| f.strip_prefix("consent."))
                    .map(str::to_owned)
                    .collect();
                store
                    .change_recipient(
                        tx,
                        shop,
                        &c.customer_id,
                        RecipientChange::Profile {
                            consented: &c.consented_channels,
                            consent_changed,
                            birthday_month: c.birthday_month,
                            birthday_day: c.birthday_day,
                            at,
                        },
                    )
                    .await?;
            }
            Some(Payload::CustomerErased(c)) => {
                store
                    .change_recipient(tx, shop, &c.customer_id, RecipientChange::Erased)
                    .await?;
            }
            Some(Payload::OrderCreated(o)) => {
                let Some(order) = &o.order else { return Ok(()) };
                if order.pay_time.is_some()
                    || store.order_mark(tx, shop, &order.order_no).await?.is_some()
                {
                    return Ok(());
                }
                let settings = store.shop_settings(shop).await?;
                let delay = i64::from(settings.policy.unpaid_reminder_minutes) * 60_000_000;
                let vars = BTreeMap::from([
                    ("order_no".to_owned(), order.order_no.clone()),
                    ("amount_yuan".to_owned(), yuan(order.payable_fen)),
                ]);
                self.fire(
                    tx,
                    event,
                    pb::Trigger::UnpaidReminder,
                    &order.customer_id,
                    &order.order_no,
                    vars,
                    at + delay,
                )
                .await?;
            }
            Some(Payload::OrderPaid(o)) => {
                if let Some(order) = &o.order {
                    self.mark(tx, shop, &order.order_no, OrderMark::Settled)
                        .await?;
                }
            }
            Some(Payload::OrderClosed(o)) => {
                if let Some(order) = &o.order {
                    self.mark(tx, shop, &order.order_no, OrderMark::Settled)
                        .await?;
                }
            }
            Some(Payload::OrderShipped(o)) => {
                let Some(order) = &o.order else { return Ok(()) };
                // Reported after the buyer confirmed receipt: the parcel
                // is already there.
                if store.order_mark(tx, shop, &order.order_no).await? == Some(OrderMark::Received) {
                    return Ok(());
                }
                let vars = BTreeMap::from([
                    ("order_no".to_owned(), order.order_no.clone()),
                    ("carrier".to_owned(), o.carrier.clone()),
                    ("tracking_number".to_owned(), o.tracking_number.clone()),
                ]);
                self.fire(
                    tx,
                    event,
                    pb::Trigger::OrderShipped,
                    &order.customer_id,
                    &order.order_no,
                    vars,
                    at,
                )
                .await?;
            }
            Some(Payload::OrderReceived(o)) => {
                let Some(order) = &o.order else { return Ok(()) };
                self.mark(tx, shop, &order.order_no, OrderMark::Received)
                    .await?;
                let vars = BTreeMap::from([("order_no".to_owned(), order.order_no.clone())]);
                self.fire(
                    tx,
                    event,
                    pb::Trigger::OrderReceived,
                    &order.customer_id,
                    &order.order_no,
                    vars.clone(),
                    at,
                )
                .await?;
                self.fire(
                    tx,
                    event,
                    pb::Trigger::ReviewRequest,
                    &order.customer_id,
                    &order.order_no,
                    vars,
                    at,
                )
                .await?;
            }
            Some(Payload::CouponExpiringSoon(c)) => {
                let settings = store.shop_settings(shop).await?;
                let expire = c
                    .valid_until_time
                    .as_ref()
                    .and_then(micros_from_timestamp)
                    .and_then(|t| {
                        use chrono::TimeZone;
                        settings
                            .calendar
                            .zone
                            .timestamp_micros(t)
                            .single()
                            .map(|d| d.format("%-m月%-d日").to_string())
                    })
                    .unwrap_or_default();
                let vars = BTreeMap::from([
                    ("coupon_code".to_owned(), c.code.clone()),
                    ("coupon_name".to_owned(), c.template_name.clone()),
                    ("expire_date".to_owned(), expire),
                ]);
                self.fire(
                    tx,
                    event,
                    pb::Trigger::CouponExpiring,
                    &c.customer_id,
                    "",
                    vars,
                    at,
                )
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// An order settled (paid or closed) or received: the messages its
    /// step makes pointless are dropped, now or when the event that makes
    /// them arrives late (no payment reminder once settled, no shipping
    /// notice once received). Marks are kept only when the shop has a rule
    /// for that message.
    async fn mark(
        &self,
        tx: &WriteTx,
        shop: &str,
        order_no: &str,
        mark: OrderMark,
    ) -> Result<(), NotificationError> {
        let trigger = match mark {
            OrderMark::Settled => pb::Trigger::UnpaidReminder,
            OrderMark::Received => pb::Trigger::OrderShipped,
        };
        let may_message = self
            .store
            .trigger_rule(&**tx, shop, trigger)
            .await?
            .is_some();
        self.store
            .mark_order(tx, shop, order_no, mark, may_message)
            .await?;
        Ok(())
    }

    /// Sends the rule's template for `trigger`, once per event, `delay`
    /// after `at`; opens a call task when the rule asks for one. A rule
    /// naming a missing or paused template is logged and skipped.
    #[allow(clippy::too_many_arguments)]
    async fn fire(
        &self,
        tx: &WriteTx,
        event: &EventEnvelope,
        trigger: pb::Trigger,
        customer_id: &str,
        order_no: &str,
        vars: BTreeMap<String, String>,
        at: i64,
    ) -> Result<(), NotificationError> {
        let shop = event.shop_id.as_str();
        let Some(rule) = self.store.trigger_rule(&**tx, shop, trigger).await? else {
            return Ok(());
        };
        let name = trigger
            .as_str_name()
            .trim_start_matches("TRIGGER_")
            .to_lowercase();
        if rule.call_task {
            self.store
                .open_call_task(
                    tx,
                    shop,
                    customer_id,
                    order_no,
                    "order received: a care call",
                    &format!("event:{}:{name}", event.event_id),
                )
                .await?;
        }
        if rule.template_id.is_empty() {
            return Ok(());
        }
        let t = match self
            .store
            .load_template(&**tx, shop, &rule.template_id)
            .await
        {
            Ok(t) if t.active => t,
            Ok(_) | Err(NotificationError::TemplateNotFound) => {
                tracing::warn!(shop, template = %rule.template_id, trigger = %name, "trigger rule names a paused or missing template");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let used = crate::domain::text::variables(&t.body).unwrap_or_default();
        let vars: BTreeMap<String, String> =
            vars.into_iter().filter(|(k, _)| used.contains(k)).collect();
        let rendered = match template::render(&t, &vars, "variables") {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(shop, template = %t.id, trigger = %name, error = %e, "trigger template cannot be filled from the event");
                return Ok(());
            }
        };
        let delay = i64::from(rule.delay_minutes) * 60_000_000;
        let origin = format!("event:{name}");
        let m = NewMessage {
            customer_id,
            template: &t,
            rendered,
            variables: &vars,
            not_before: at + delay,
            urgent: false,
            origin: &origin,
            dedupe_key: format!("event:{}:{name}", event.event_id),
            order_no,
        };
        self.store.accept(tx, shop, &m).await?;
        Ok(())
    }
}

impl EventHandler for NotificationEvents {
    fn consumer(&self) -> &'static str {
        crate::SERVICE
    }

    /// A delivery is applied in one lock order (decision 0014): first the
    /// order events by order number (they lock the orders' messages and
    /// marks), then the customer events by customer (they lock
    /// recipients). Orders before recipients is also the dispatcher's order
    /// (it claims messages, then locks their recipients). Each order's and
    /// each customer's events keep the order they came in. A profile change
    /// applied after an order event of the same delivery changes nothing
    /// that is sent: consent and erasure are checked again, under lock,
    /// when a message is sent.
    fn lock_key<'e>(&self, event: &'e EventEnvelope) -> LockKey<'e> {
        lock_order(event)
    }

    fn apply<'a>(
        &'a self,
        tx: &'a WriteTx,
        event: &'a EventEnvelope,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move { self.apply_event(tx, event).await.map_err(Failure::from) })
    }
}

/// Where an event falls in a delivery's lock order: order events (and
/// coupon ones, which lock nothing shared) by order number, then customer
/// events by customer.
fn lock_order(event: &EventEnvelope) -> (u8, &str) {
    fn order(o: &Option<huitou_proto::events::v1::OrderSnapshot>) -> (u8, &str) {
        (0, o.as_ref().map_or("", |o| o.order_no.as_str()))
    }
    match &event.payload {
        Some(Payload::OrderCreated(o)) => order(&o.order),
        Some(Payload::OrderPaid(o)) => order(&o.order),
        Some(Payload::OrderClosed(o)) => order(&o.order),
        Some(Payload::OrderShipped(o)) => order(&o.order),
        Some(Payload::OrderReceived(o)) => order(&o.order),
        Some(Payload::CustomerCreated(c)) => (1, &c.customer_id),
        Some(Payload::CustomerUpdated(c)) => (1, &c.customer_id),
        Some(Payload::CustomerErased(c)) => (1, &c.customer_id),
        _ => (0, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::yuan;

    #[test]
    fn fen_read_as_yuan() {
        assert_eq!(yuan(29_900), "299");
        assert_eq!(yuan(2_990), "29.9");
        assert_eq!(yuan(5), "0.05");
        assert_eq!(yuan(0), "0");
    }
}
