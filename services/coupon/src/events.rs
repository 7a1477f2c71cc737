//! Events from the customer and loyalty services, applied exactly once
//! (the inbox remembers each event id in the same transaction): they keep
//! what the coupon service knows of buyers, set off the shop's issue rules,
//! and give coupons back when their order is closed or fully refunded.

use huitou_proto::coupon::v1::IssueTrigger;
use huitou_proto::events::v1::EventEnvelope;
use huitou_proto::events::v1::event_envelope::Payload;
use huitou_runtime::Failure;
use huitou_runtime::auth::BoxFuture;
use huitou_storage::inbox::{EventHandler, LockKey};
use huitou_storage::{WriteTx, now_micros};

use crate::error::CouponError;
use crate::store::Store;
use crate::store::buyers::BuyerChange;
use crate::store::coupons::IssueSpec;

/// The event types the coupon service subscribes to.
pub const SUBSCRIBED: &[&str] = &[
    "customer.updated",
    "customer.erased",
    "order.paid",
    "order.imported",
    "order.reviewed",
    "order.refunded",
    "order.closed",
    "loyalty.tier_changed",
    "loyalty.reward_exchanged",
];

/// The coupon service's reaction to other services' events.
pub struct CouponEvents {
    store: Store,
}

impl CouponEvents {
    /// A handler writing through `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    async fn apply_event(&self, tx: &WriteTx, event: &EventEnvelope) -> Result<(), CouponError> {
        let store = &self.store;
        let shop = event.shop_id.as_str();
        let now = now_micros();
        match &event.payload {
            Some(Payload::OrderPaid(p)) => {
                let Some(order) = &p.order else { return Ok(()) };
                let sequence = order.paid_order_sequence;
                store
                    .change_buyer(tx, shop, &order.customer_id, BuyerChange::Paid { sequence })
                    .await?;
                self.fire(
                    tx,
                    event,
                    IssueTrigger::EveryPaidOrder,
                    &order.customer_id,
                    "every paid order",
                )
                .await?;
                if sequence == 2 {
                    self.fire(
                        tx,
                        event,
                        IssueTrigger::SecondPurchase,
                        &order.customer_id,
                        "second purchase",
                    )
                    .await?;
                }
            }
            Some(Payload::OrderImported(p)) => {
                if let Some(order) = &p.order
                    && order.pay_time.is_some()
                {
                    store
                        .change_buyer(
                            tx,
                            shop,
                            &order.customer_id,
                            BuyerChange::Paid { sequence: 0 },
                        )
                        .await?;
                }
            }
            Some(Payload::OrderReviewed(p)) => {
                let Some(order) = &p.order else { return Ok(()) };
                let rule = store.rule_for(&**tx, shop, IssueTrigger::Review).await?;
                // Any genuine review earns the coupon unless the shop chose
                // to reward good reviews only (see DOMAIN.md §3).
                if rule.is_some_and(|r| !r.positive_reviews_only || p.rating == "GOOD") {
                    self.fire(
                        tx,
                        event,
                        IssueTrigger::Review,
                        &order.customer_id,
                        "review",
                    )
                    .await?;
                }
            }
            Some(Payload::OrderClosed(p)) => {
                if let Some(order) = &p.order {
                    store
                        .release_for_order(
                            tx,
                            shop,
                            &order.coupon_codes,
                            &order.order_no,
                            "order closed",
                            now,
                        )
                        .await?;
                }
            }
            Some(Payload::OrderRefunded(p)) if p.full => {
                if let Some(order) = &p.order {
                    store
                        .release_for_order(
                            tx,
                            shop,
                            &order.coupon_codes,
                            &order.order_no,
                            "order refunded",
                            now,
                        )
                        .await?;
                }
            }
            Some(Payload::CustomerUpdated(c)) => {
                store
                    .change_buyer(
                        tx,
                        shop,
                        &c.customer_id,
                        BuyerChange::Birthday {
                            month: c.birthday_month,
                            day: c.birthday_day,
                            at: huitou_storage::inbox::occurred_at(event),
                        },
                    )
                    .await?;
            }
            Some(Payload::CustomerErased(c)) => {
                store
                    .change_buyer(tx, shop, &c.customer_id, BuyerChange::Erased)
                    .await?;
            }
            Some(Payload::RewardExchanged(r)) if r.reward_kind == "COUPON" => {
                self.exchange(tx, event, r).await?;
            }
            Some(Payload::TierChanged(t)) => {
                store
                    .change_buyer(
                        tx,
                        shop,
                        &t.customer_id,
                        BuyerChange::Tier {
                            code: &t.to_tier_code,
                            at: huitou_storage::inbox::occurred_at(event),
                        },
                    )
                    .await?;
                if t.upgrade {
                    self.fire(
                        tx,
                        event,
                        IssueTrigger::TierUpgrade,
                        &t.customer_id,
                        "tier upgrade",
                    )
                    .await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Issues the coupon a member bought with points, once per exchange.
    /// When it cannot be issued, loyalty is told (`coupon.exchange_refused`)
    /// and gives the points back.
    async fn exchange(
        &self,
        tx: &WriteTx,
        event: &EventEnvelope,
        r: &huitou_proto::events::v1::RewardExchanged,
    ) -> Result<(), CouponError> {
        let shop = event.shop_id.as_str();
        let refused = match self
            .store
            .load_template(&**tx, shop, &r.coupon_template_id)
            .await?
        {
            None => Some("TEMPLATE_NOT_FOUND"),
            Some((template, _)) => {
                let spec = IssueSpec {
                    key: format!("exchange:{}", r.exchange_id),
                    reason: "points exchange",
                    agent: None,
                };
                match self
                    .store
                    .issue(tx, shop, &template, &r.customer_id, &spec, now_micros())
                    .await
                {
                    Ok(_) => None,
                    Err(
                        e @ (CouponError::NotEligible(_)
                        | CouponError::OutOfStock
                        | CouponError::TemplatePaused),
                    ) => Some(Failure::from(e).reason),
                    Err(e) => return Err(e),
                }
            }
        };
        if let Some(reason) = refused {
            tracing::info!(shop, exchange = %r.exchange_id, reason, "coupon reward refused; loyalty gives the points back");
            huitou_storage::outbox::append(
                tx,
                crate::store::event(
                    shop,
                    Payload::CouponExchangeRefused(
                        huitou_proto::events::v1::CouponExchangeRefused {
                            customer_id: r.customer_id.clone(),
                            exchange_id: r.exchange_id.clone(),
                            template_id: r.coupon_template_id.clone(),
                            reason: reason.to_owned(),
                        },
                    ),
                ),
            )
            .await?;
        }
        Ok(())
    }

    /// Issues the rule's coupon for `trigger`, once per event. A coupon
    /// the customer may not receive, or one out of stock, is skipped and
    /// logged: the event still counts as applied.
    async fn fire(
        &self,
        tx: &WriteTx,
        event: &EventEnvelope,
        trigger: IssueTrigger,
        customer_id: &str,
        reason: &str,
    ) -> Result<(), CouponError> {
        let shop = event.shop_id.as_str();
        let Some(rule) = self.store.rule_for(&**tx, shop, trigger).await? else {
            return Ok(());
        };
        let Some((template, _)) = self
            .store
            .load_template(&**tx, shop, &rule.template_id)
            .await?
        else {
            tracing::warn!(shop, template = %rule.template_id, "issue rule names a missing template");
            return Ok(());
        };
        let spec = IssueSpec {
            key: format!("event:{}", event.event_id),
            reason,
            agent: None,
        };
        match self
            .store
            .issue(tx, shop, &template, customer_id, &spec, now_micros())
            .await
        {
            Ok(_) => Ok(()),
            Err(
                e @ (CouponError::NotEligible(_)
                | CouponError::OutOfStock
                | CouponError::TemplatePaused),
            ) => {
                tracing::info!(shop, customer_id, reason, error = %e, "rule coupon not issued");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl EventHandler for CouponEvents {
    fn consumer(&self) -> &'static str {
        crate::SERVICE
    }

    fn apply<'a>(
        &'a self,
        tx: &'a WriteTx,
        event: &'a EventEnvelope,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move { self.apply_event(tx, event).await.map_err(Failure::from) })
    }

    /// A delivery is applied buyer by buyer, in customer id order:
    /// deliveries from different producers (orders from the customer
    /// service, tiers from loyalty) that meet the same buyers then lock
    /// their rows in the same order instead of deadlocking. Each buyer's
    /// events keep the order they came in; events of different buyers
    /// change different rows.
    fn lock_key<'e>(&self, event: &'e EventEnvelope) -> LockKey<'e> {
        (0, buyer_of(event))
    }
}

/// The customer whose buyer row an event changes ("" for none).
fn buyer_of(event: &EventEnvelope) -> &str {
    fn order(o: &Option<huitou_proto::events::v1::OrderSnapshot>) -> &str {
        o.as_ref().map_or("", |o| o.customer_id.as_str())
    }
    match &event.payload {
        Some(Payload::OrderPaid(p)) => order(&p.order),
        Some(Payload::OrderImported(p)) => order(&p.order),
        Some(Payload::OrderReviewed(p)) => order(&p.order),
        Some(Payload::OrderClosed(p)) => order(&p.order),
        Some(Payload::OrderRefunded(p)) => order(&p.order),
        Some(Payload::CustomerUpdated(c)) => &c.customer_id,
        Some(Payload::CustomerErased(c)) => &c.customer_id,
        Some(Payload::RewardExchanged(r)) => &r.customer_id,
        Some(Payload::TierChanged(t)) => &t.customer_id,
        _ => "",
    }
}
