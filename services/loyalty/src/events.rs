//! Events from the customer service, applied to members exactly once (the
//! inbox remembers each event id in the same transaction), and the coupon
//! service's word that a coupon bought with points could not be issued.

use huitou_proto::events::v1::EventEnvelope;
use huitou_proto::events::v1::event_envelope::Payload;
use huitou_runtime::Failure;
use huitou_runtime::auth::BoxFuture;
use huitou_storage::WriteTx;
use huitou_storage::inbox::{EventHandler, LockKey, in_lock_order};

use crate::error::LoyaltyError;
use crate::store::Store;
use crate::store::batch::Arrival;
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
    "coupon.exchange_refused",
];

/// Loyalty's reaction to customer-service events.
pub struct LoyaltyEvents {
    store: Store,
}

impl LoyaltyEvents {
    /// The member, locked; made (without a nick, which its
    /// `customer.created` brings) when no event has named it yet.
    async fn member_for(
        &self,
        tx: &WriteTx,
        shop: &str,
        customer_id: &str,
        at: i64,
    ) -> Result<crate::store::members::MemberRow, LoyaltyError> {
        let key = MemberKey::Id(customer_id.to_owned());
        match self.store.find_member(&**tx, shop, &key, true).await {
            Err(LoyaltyError::MemberNotFound) => {
                let arrival = Arrival::Customer {
                    customer_id,
                    buyer_nick: "",
                    at,
                };
                self.store.apply_arrivals(tx, shop, &[arrival]).await?;
                self.store.find_member(&**tx, shop, &key, true).await
            }
            found => found,
        }
    }

    /// A handler writing through `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    async fn apply_event(&self, tx: &WriteTx, event: &EventEnvelope) -> Result<(), LoyaltyError> {
        let store = &self.store;
        let shop = event.shop_id.as_str();
        let at = huitou_storage::inbox::occurred_at(event);
        match &event.payload {
            Some(Payload::CustomerCreated(_))
            | Some(Payload::OrderPaid(_))
            | Some(Payload::OrderImported(_)) => {
                if let Some(arrival) = arrival(event, at) {
                    store.apply_arrivals(tx, shop, &[arrival]).await?;
                }
            }
            Some(Payload::CustomerUpdated(c)) => {
                // The member is made now if its `customer.created` has not
                // come yet (delivered late), so the birthday is not lost.
                // An older profile delivered after a newer one is ignored.
                let mut m = self.member_for(tx, shop, &c.customer_id, at).await?;
                if !is_erased(&m) && at >= m.profile_at {
                    m.profile_at = at;
                    m.birthday_month = c.birthday_month;
                    store.save_member(tx, &mut m).await?;
                }
            }
            Some(Payload::CustomerErased(c)) => {
                // The nick becomes the customer service's pseudonym, never
                // empty: a late `customer.created` fills only an empty nick,
                // and a late `customer.updated` leaves an erased member be.
                let mut m = self.member_for(tx, shop, &c.customer_id, at).await?;
                if !m.buyer_nick.is_empty() && !is_erased(&m) {
                    store.checkout.forget_nick(shop, &m.buyer_nick).await;
                }
                m.buyer_nick = format!("{ERASED_NICK_PREFIX}{}", c.customer_id);
                m.birthday_month = 0;
                store.save_member(tx, &mut m).await?;
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
            Some(Payload::CouponExchangeRefused(r)) => {
                store
                    .return_exchange(tx, shop, &r.exchange_id, &event.event_id, &r.reason)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The event as a member arrival, when it is one: a new customer, a paid
/// order, or a historic order imported paid (history counts towards tiers
/// but earns no points: a shop moving its members' points over adjusts
/// them explicitly).
/// The customer whose member an event changes ("" for none).
fn member_of(event: &EventEnvelope) -> &str {
    fn order(o: &Option<huitou_proto::events::v1::OrderSnapshot>) -> &str {
        o.as_ref().map_or("", |o| o.customer_id.as_str())
    }
    match &event.payload {
        Some(Payload::CustomerCreated(c)) => &c.customer_id,
        Some(Payload::CustomerUpdated(c)) => &c.customer_id,
        Some(Payload::CustomerErased(c)) => &c.customer_id,
        Some(Payload::OrderPaid(p)) => order(&p.order),
        Some(Payload::OrderImported(p)) => order(&p.order),
        Some(Payload::OrderRefunded(p)) => order(&p.order),
        Some(Payload::OrderReviewed(p)) => order(&p.order),
        Some(Payload::CouponExchangeRefused(r)) => &r.customer_id,
        _ => "",
    }
}

/// How the customer service renames an erased customer's nick.
const ERASED_NICK_PREFIX: &str = "erased:";

fn is_erased(m: &crate::store::members::MemberRow) -> bool {
    m.buyer_nick.starts_with(ERASED_NICK_PREFIX)
}

fn arrival(event: &EventEnvelope, at: i64) -> Option<Arrival<'_>> {
    match &event.payload {
        Some(Payload::CustomerCreated(c)) => Some(Arrival::Customer {
            customer_id: &c.customer_id,
            buyer_nick: &c.buyer_nick,
            at,
        }),
        Some(Payload::OrderPaid(p)) => p.order.as_ref().map(|order| Arrival::Paid {
            event_id: &event.event_id,
            order,
            earn: true,
        }),
        Some(Payload::OrderImported(p)) => {
            p.order
                .as_ref()
                .filter(|o| o.pay_time.is_some())
                .map(|order| Arrival::Paid {
                    event_id: &event.event_id,
                    order,
                    earn: false,
                })
        }
        _ => None,
    }
}

impl LoyaltyEvents {
    /// Applies a run of arrivals, shop by shop, each shop's in order.
    async fn apply_run(&self, tx: &WriteTx, run: &[&EventEnvelope]) -> Result<(), LoyaltyError> {
        let mut shops: Vec<&str> = Vec::new();
        for e in run {
            if !shops.contains(&e.shop_id.as_str()) {
                shops.push(&e.shop_id);
            }
        }
        for shop in shops {
            let arrivals: Vec<Arrival<'_>> = run
                .iter()
                .filter(|e| e.shop_id == shop)
                .filter_map(|e| arrival(e, huitou_storage::inbox::occurred_at(e)))
                .collect();
            self.store.apply_arrivals(tx, shop, &arrivals).await?;
        }
        Ok(())
    }

    async fn apply_events(
        &self,
        tx: &WriteTx,
        events: &[&EventEnvelope],
    ) -> Result<(), LoyaltyError> {
        let mut run: Vec<&EventEnvelope> = Vec::new();
        for &e in events {
            if arrival(e, 0).is_some() {
                run.push(e);
                continue;
            }
            self.apply_run(tx, &run).await?;
            run.clear();
            self.apply_event(tx, e).await?;
        }
        self.apply_run(tx, &run).await
    }
}

impl EventHandler for LoyaltyEvents {
    /// A delivery is applied member by member, in customer order (decision
    /// 0014): two that met the same members in opposite orders would each
    /// hold a member the other waits for. Each member's events keep the
    /// order they came in; events of different members change different
    /// rows.
    fn lock_key<'e>(&self, event: &'e EventEnvelope) -> LockKey<'e> {
        (0, member_of(event))
    }

    /// Runs of arrivals are written together, in the lock order.
    fn apply_batch<'a>(
        &'a self,
        tx: &'a WriteTx,
        events: &'a [EventEnvelope],
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            self.apply_events(tx, &in_lock_order(self, events))
                .await
                .map_err(Failure::from)
        })
    }

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
