//! Events from the customer service, applied to members exactly once (the
//! inbox remembers each event id in the same transaction).

use huitou_proto::events::v1::EventEnvelope;
use huitou_proto::events::v1::event_envelope::Payload;
use huitou_proto::micros_from_timestamp;
use huitou_runtime::Failure;
use huitou_runtime::auth::BoxFuture;
use huitou_storage::inbox::EventHandler;
use huitou_storage::{WriteTx, now_micros};

use crate::error::LoyaltyError;
use crate::store::Store;
use crate::store::members::MemberKey;

/// The event types loyalty subscribes to.
pub const SUBSCRIBED: &[&str] = &[
    "customer.created",
    "customer.updated",
    "customer.erased",
    "order.paid",
    "order.refunded",
    "order.reviewed",
    "order.imported",
];

/// Loyalty's reaction to customer-service events.
pub struct LoyaltyEvents {
    store: Store,
}

impl LoyaltyEvents {
    /// A handler writing through `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    async fn apply_event(&self, tx: &WriteTx, event: &EventEnvelope) -> Result<(), LoyaltyError> {
        let store = &self.store;
        let shop = event.shop_id.as_str();
        let at = event
            .occur_time
            .as_ref()
            .and_then(micros_from_timestamp)
            .unwrap_or_else(now_micros);
        match &event.payload {
            Some(Payload::CustomerCreated(c)) => {
                let (program, _) = store.load_program(&**tx, shop).await?;
                let mut m = store
                    .ensure_member(tx, &program, shop, &c.customer_id, &c.buyer_nick, at)
                    .await?;
                if m.buyer_nick.is_empty() {
                    m.buyer_nick = c.buyer_nick.clone();
                    store.save_member(tx, &mut m).await?;
                }
            }
            Some(Payload::CustomerUpdated(c)) => {
                let key = MemberKey::Id(c.customer_id.clone());
                match store.find_member(&**tx, shop, &key, true).await {
                    Ok(mut m) if m.birthday_month != c.birthday_month => {
                        m.birthday_month = c.birthday_month;
                        store.save_member(tx, &mut m).await?;
                    }
                    Ok(_) | Err(LoyaltyError::MemberNotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            Some(Payload::CustomerErased(c)) => {
                let key = MemberKey::Id(c.customer_id.clone());
                match store.find_member(&**tx, shop, &key, true).await {
                    Ok(mut m) => {
                        store.checkout.forget_nick(shop, &m.buyer_nick).await;
                        m.buyer_nick.clear();
                        m.birthday_month = 0;
                        store.save_member(tx, &mut m).await?;
                    }
                    Err(LoyaltyError::MemberNotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            Some(Payload::OrderPaid(p)) => {
                if let Some(order) = &p.order {
                    store
                        .order_paid(tx, shop, &event.event_id, order, true)
                        .await?;
                }
            }
            Some(Payload::OrderImported(p)) => {
                // History counts towards tiers but earns no points: a shop
                // moving its members' points over adjusts them explicitly.
                if let Some(order) = p.order.as_ref().filter(|o| o.pay_time.is_some()) {
                    store
                        .order_paid(tx, shop, &event.event_id, order, false)
                        .await?;
                }
            }
            Some(Payload::OrderRefunded(p)) => {
                if let Some(order) = &p.order {
                    store
                        .order_refunded(tx, shop, &event.event_id, order)
                        .await?;
                }
            }
            Some(Payload::OrderReviewed(p)) => {
                if let Some(order) = &p.order {
                    store
                        .order_reviewed(tx, shop, &event.event_id, order)
                        .await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl EventHandler for LoyaltyEvents {
    fn consumer(&self) -> &'static str {
        "loyalty"
    }

    fn apply<'a>(
        &'a self,
        tx: &'a WriteTx,
        event: &'a EventEnvelope,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move { self.apply_event(tx, event).await.map_err(Failure::from) })
    }
}
