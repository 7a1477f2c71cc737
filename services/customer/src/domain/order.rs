//! Orders and their lifecycle, without I/O.
//!
//! CREATED -> PAID -> SHIPPED -> RECEIVED -> REVIEWED; CREATED -> CLOSED;
//! any paid state -> REFUNDED when refunds reach the payable amount (partial
//! refunds keep the status). Repeating a step with the same data changes
//! nothing (storefronts retry); repeating it with different data is refused.
//! Each change yields the [`StatsDelta`] it makes to the buyer's statistics.

use std::collections::BTreeMap;

use huitou_runtime::FieldViolations;
use serde::{Deserialize, Serialize};

use crate::error::CustomerError;

/// Where an order is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Placed, unpaid.
    Created,
    /// Paid.
    Paid,
    /// With the carrier.
    Shipped,
    /// Receipt confirmed.
    Received,
    /// Reviewed.
    Reviewed,
    /// Closed unpaid.
    Closed,
    /// Refunded in full.
    Refunded,
}

impl OrderStatus {
    /// From the stored / wire number (huitou.customer.v1.OrderStatus).
    pub fn from_i32(n: i32) -> Option<Self> {
        Some(match n {
            1 => Self::Created,
            2 => Self::Paid,
            3 => Self::Shipped,
            4 => Self::Received,
            5 => Self::Reviewed,
            6 => Self::Closed,
            7 => Self::Refunded,
            _ => return None,
        })
    }

    /// The stored / wire number.
    pub fn as_i32(self) -> i32 {
        match self {
            Self::Created => 1,
            Self::Paid => 2,
            Self::Shipped => 3,
            Self::Received => 4,
            Self::Reviewed => 5,
            Self::Closed => 6,
            Self::Refunded => 7,
        }
    }

    /// The name used in events, e.g. `PAID`.
    pub fn event_name(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Paid => "PAID",
            Self::Shipped => "SHIPPED",
            Self::Received => "RECEIVED",
            Self::Reviewed => "REVIEWED",
            Self::Closed => "CLOSED",
            Self::Refunded => "REFUNDED",
        }
    }

    fn words(self) -> &'static str {
        match self {
            Self::Created => "unpaid",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Received => "received",
            Self::Reviewed => "reviewed",
            Self::Closed => "closed",
            Self::Refunded => "refunded",
        }
    }

    /// Paid and not closed: counts in the buyer's statistics.
    pub fn was_paid(self) -> bool {
        !matches!(self, Self::Created | Self::Closed)
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    /// SKU code.
    pub sku: String,
    /// Category.
    pub category: String,
    /// Units.
    pub quantity: i64,
    /// Unit price in fen.
    pub unit_price_fen: i64,
    /// Title.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
}

/// Review grades.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rating {
    /// 好评.
    Good,
    /// 中评.
    Neutral,
    /// 差评.
    Bad,
}

impl Rating {
    /// From the wire number.
    pub fn from_i32(n: i32) -> Option<Self> {
        match n {
            1 => Some(Self::Good),
            2 => Some(Self::Neutral),
            3 => Some(Self::Bad),
            _ => None,
        }
    }

    /// The wire number.
    pub fn as_i32(self) -> i32 {
        match self {
            Self::Good => 1,
            Self::Neutral => 2,
            Self::Bad => 3,
        }
    }

    /// The name used in events.
    pub fn event_name(self) -> &'static str {
        match self {
            Self::Good => "GOOD",
            Self::Neutral => "NEUTRAL",
            Self::Bad => "BAD",
        }
    }
}

/// A buyer's review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// Grade.
    pub rating: Rating,
    /// Text.
    pub text: String,
    /// When, in µs.
    pub at: i64,
}

/// Money given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// Platform refund number.
    pub refund_no: String,
    /// Amount in fen.
    pub amount_fen: i64,
    /// Why.
    pub reason: String,
    /// Goods came back.
    pub goods_returned: bool,
    /// When, in µs.
    pub at: i64,
}

/// Carrier and tracking number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    /// Carrier.
    pub carrier: String,
    /// Tracking number.
    pub tracking_number: String,
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Huitou's id.
    pub id: String,
    /// Platform order number.
    pub order_no: String,
    /// The buyer.
    pub customer_id: String,
    /// The buyer's nick at the time.
    pub buyer_nick: String,
    /// Status.
    pub status: OrderStatus,
    /// Lines.
    pub items: Vec<OrderItem>,
    /// Discount in fen.
    pub discount_fen: i64,
    /// Shipping in fen.
    pub shipping_fen: i64,
    /// Refunded so far, in fen.
    pub refunded_fen: i64,
    /// Coupon codes used.
    pub coupon_codes: Vec<String>,
    /// Shipment once shipped.
    pub shipment: Option<Shipment>,
    /// Review once reviewed.
    pub review: Option<Review>,
    /// Refunds in order.
    pub refunds: Vec<Refund>,
    /// Placed at, µs.
    pub created_at: i64,
    /// Paid at, µs.
    pub paid_at: Option<i64>,
    /// Shipped at, µs.
    pub shipped_at: Option<i64>,
    /// Received at, µs.
    pub received_at: Option<i64>,
    /// Closed at, µs.
    pub closed_at: Option<i64>,
    /// The import it came from, if imported.
    pub import_id: Option<String>,
}

impl Order {
    /// Sum of quantity x unit price.
    pub fn goods_fen(&self) -> i64 {
        goods_fen(&self.items)
    }

    /// Goods - discount + shipping.
    pub fn payable_fen(&self) -> i64 {
        self.goods_fen() - self.discount_fen + self.shipping_fen
    }

    /// What the buyer's statistics gain when this order is paid.
    pub fn paid_delta(&self) -> StatsDelta {
        let mut categories = BTreeMap::new();
        for item in &self.items {
            *categories.entry(item.category.clone()).or_insert(0) += item.quantity;
        }
        StatsDelta {
            order_count: 1,
            item_count: self.items.iter().map(|i| i.quantity).sum(),
            spent_fen: self.payable_fen(),
            refunded_fen: 0,
            paid_at: self.paid_at,
            categories,
        }
    }

    /// Applies `step`; the change it made, or `None` when it repeats what
    /// was already recorded.
    pub fn apply(&mut self, step: Step) -> Result<Option<Change>, CustomerError> {
        let refuse = |from: OrderStatus, action: &'static str| CustomerError::Transition {
            from: from.words(),
            action,
        };
        match step {
            Step::Pay { at } => match self.status {
                OrderStatus::Created => {
                    self.status = OrderStatus::Paid;
                    self.paid_at = Some(at.max(self.created_at));
                    Ok(Some(Change::Paid(self.paid_delta())))
                }
                s if s.was_paid() => Ok(None),
                s => Err(refuse(s, "paid")),
            },
            Step::Ship { shipment, at } => match self.status {
                OrderStatus::Paid => {
                    self.status = OrderStatus::Shipped;
                    self.shipment = Some(shipment);
                    self.shipped_at = Some(at);
                    Ok(Some(Change::Shipped))
                }
                OrderStatus::Shipped | OrderStatus::Received | OrderStatus::Reviewed => {
                    if self.shipment.as_ref() == Some(&shipment) {
                        Ok(None)
                    } else {
                        Err(CustomerError::StepConflict(format!(
                            "order {} already shipped with another carrier or tracking number",
                            self.order_no
                        )))
                    }
                }
                s => Err(refuse(s, "shipped")),
            },
            Step::Receive { at } => match self.status {
                OrderStatus::Shipped => {
                    self.status = OrderStatus::Received;
                    self.received_at = Some(at);
                    Ok(Some(Change::Received))
                }
                OrderStatus::Received | OrderStatus::Reviewed => Ok(None),
                s => Err(refuse(s, "confirmed received")),
            },
            Step::Review(review) => match self.status {
                OrderStatus::Received => {
                    self.status = OrderStatus::Reviewed;
                    self.review = Some(review);
                    Ok(Some(Change::Reviewed))
                }
                OrderStatus::Reviewed => match &self.review {
                    Some(r) if r.rating == review.rating && r.text == review.text => Ok(None),
                    _ => Err(CustomerError::StepConflict(format!(
                        "order {} is already reviewed differently",
                        self.order_no
                    ))),
                },
                s => Err(refuse(s, "reviewed")),
            },
            Step::Refund(refund) => {
                if let Some(earlier) = self
                    .refunds
                    .iter()
                    .find(|r| r.refund_no == refund.refund_no)
                {
                    return if earlier.amount_fen == refund.amount_fen {
                        Ok(None)
                    } else {
                        Err(CustomerError::StepConflict(format!(
                            "refund {} was already recorded with amount {} fen",
                            refund.refund_no, earlier.amount_fen
                        )))
                    };
                }
                match self.status {
                    OrderStatus::Paid
                    | OrderStatus::Shipped
                    | OrderStatus::Received
                    | OrderStatus::Reviewed => {
                        let left = self.payable_fen() - self.refunded_fen;
                        if refund.amount_fen > left {
                            let mut v = FieldViolations::new();
                            v.add(
                                "amount_fen",
                                format!("exceeds the {left} fen left to refund"),
                            );
                            return Err(v.into_failure().into());
                        }
                        self.refunded_fen += refund.amount_fen;
                        let full = self.refunded_fen == self.payable_fen();
                        if full {
                            self.status = OrderStatus::Refunded;
                        }
                        let amount = refund.amount_fen;
                        self.refunds.push(refund);
                        Ok(Some(Change::Refunded {
                            delta: StatsDelta {
                                spent_fen: -amount,
                                refunded_fen: amount,
                                ..StatsDelta::default()
                            },
                            full,
                        }))
                    }
                    s => Err(refuse(s, "refunded")),
                }
            }
            Step::Close { at } => match self.status {
                OrderStatus::Created => {
                    self.status = OrderStatus::Closed;
                    self.closed_at = Some(at);
                    Ok(Some(Change::Closed))
                }
                OrderStatus::Closed => Ok(None),
                s => Err(refuse(s, "closed")),
            },
        }
    }
}

/// Sum of quantity x unit price; saturates instead of overflowing (inputs
/// are bounded by validation long before).
pub fn goods_fen(items: &[OrderItem]) -> i64 {
    items.iter().fold(0i64, |acc, i| {
        acc.saturating_add(i.quantity.saturating_mul(i.unit_price_fen))
    })
}

/// A move of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Paid at.
    Pay {
        /// µs.
        at: i64,
    },
    /// Shipped.
    Ship {
        /// Carrier and tracking number.
        shipment: Shipment,
        /// µs.
        at: i64,
    },
    /// Receipt confirmed.
    Receive {
        /// µs.
        at: i64,
    },
    /// Reviewed.
    Review(Review),
    /// Refunded (in part or in full).
    Refund(Refund),
    /// Closed unpaid.
    Close {
        /// µs.
        at: i64,
    },
}

/// What a step changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Paid: the buyer's statistics grow.
    Paid(StatsDelta),
    /// Shipped.
    Shipped,
    /// Received.
    Received,
    /// Reviewed.
    Reviewed,
    /// Refunded.
    Refunded {
        /// Spend goes down, refunds up.
        delta: StatsDelta,
        /// Refunded in full now.
        full: bool,
    },
    /// Closed.
    Closed,
}

/// A change to a buyer's purchase statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsDelta {
    /// Paid orders added.
    pub order_count: i64,
    /// Items added.
    pub item_count: i64,
    /// Spend added (negative for refunds), fen.
    pub spent_fen: i64,
    /// Refunds added, fen.
    pub refunded_fen: i64,
    /// Payment time of the order, for first / last order.
    pub paid_at: Option<i64>,
    /// Quantity added per category.
    pub categories: BTreeMap<String, i64>,
}

impl StatsDelta {
    /// Adds another delta to this one.
    pub fn merge(&mut self, other: &StatsDelta) {
        self.order_count += other.order_count;
        self.item_count += other.item_count;
        self.spent_fen += other.spent_fen;
        self.refunded_fen += other.refunded_fen;
        self.paid_at = match (self.paid_at, other.paid_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for (c, q) in &other.categories {
            *self.categories.entry(c.clone()).or_insert(0) += q;
        }
    }
}

/// A buyer's purchase statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Paid orders.
    pub order_count: i64,
    /// Items in paid orders.
    pub item_count: i64,
    /// Paid minus refunded, fen.
    pub spent_fen: i64,
    /// Refunded, fen.
    pub refunded_fen: i64,
    /// First payment, µs.
    pub first_order_at: Option<i64>,
    /// Latest payment, µs.
    pub last_order_at: Option<i64>,
    /// Quantity per category.
    pub categories: BTreeMap<String, i64>,
}

impl Stats {
    /// Applies a delta. First and last order move only with paid orders.
    pub fn apply(&mut self, delta: &StatsDelta, first_paid_at: Option<i64>) {
        self.order_count += delta.order_count;
        self.item_count += delta.item_count;
        self.spent_fen += delta.spent_fen;
        self.refunded_fen += delta.refunded_fen;
        if delta.order_count > 0 {
            let earliest = first_paid_at.or(delta.paid_at);
            self.first_order_at = match (self.first_order_at, earliest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.last_order_at = match (self.last_order_at, delta.paid_at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        for (c, q) in &delta.categories {
            *self.categories.entry(c.clone()).or_insert(0) += q;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn order(items: Vec<(i64, i64, &str)>, discount: i64, shipping: i64) -> Order {
        Order {
            id: "o1".into(),
            order_no: "T1".into(),
            customer_id: "c1".into(),
            buyer_nick: "nick".into(),
            status: OrderStatus::Created,
            items: items
                .into_iter()
                .enumerate()
                .map(|(i, (q, p, c))| OrderItem {
                    sku: format!("SKU{i}"),
                    category: c.into(),
                    quantity: q,
                    unit_price_fen: p,
                    title: String::new(),
                })
                .collect(),
            discount_fen: discount,
            shipping_fen: shipping,
            refunded_fen: 0,
            coupon_codes: vec![],
            shipment: None,
            review: None,
            refunds: vec![],
            created_at: 1_000,
            paid_at: None,
            shipped_at: None,
            received_at: None,
            closed_at: None,
            import_id: None,
        }
    }

    fn refund(no: &str, amount: i64) -> Step {
        Step::Refund(Refund {
            refund_no: no.into(),
            amount_fen: amount,
            reason: String::new(),
            goods_returned: false,
            at: 5_000,
        })
    }

    fn ship() -> Step {
        Step::Ship {
            shipment: Shipment {
                carrier: "顺丰".into(),
                tracking_number: "SF1".into(),
            },
            at: 3_000,
        }
    }

    #[test]
    fn the_happy_path_and_its_repeats() {
        let mut o = order(vec![(2, 9_900, "童装"), (1, 5_000, "玩具")], 1_000, 800);
        assert_eq!(o.payable_fen(), 19_800 + 5_000 - 1_000 + 800);
        let paid = o.apply(Step::Pay { at: 2_000 }).expect("pay");
        let Some(Change::Paid(delta)) = paid else {
            panic!("expected paid")
        };
        assert_eq!(
            (delta.order_count, delta.item_count, delta.spent_fen),
            (1, 3, 24_600)
        );
        assert_eq!(delta.categories.get("童装"), Some(&2));
        assert_eq!(o.apply(Step::Pay { at: 2_000 }).expect("repeat"), None);
        assert_eq!(o.apply(ship()).expect("ship"), Some(Change::Shipped));
        assert_eq!(o.apply(ship()).expect("repeat ship"), None);
        assert_eq!(
            o.apply(Step::Receive { at: 4_000 }).expect("receive"),
            Some(Change::Received)
        );
        let review = Review {
            rating: Rating::Good,
            text: "好".into(),
            at: 4_500,
        };
        assert_eq!(
            o.apply(Step::Review(review.clone())).expect("review"),
            Some(Change::Reviewed)
        );
        assert_eq!(o.apply(Step::Review(review)).expect("repeat review"), None);
        assert_eq!(o.status, OrderStatus::Reviewed);
    }

    #[test]
    fn impossible_moves_are_refused() {
        let mut o = order(vec![(1, 100, "a")], 0, 0);
        assert!(matches!(
            o.apply(ship()),
            Err(CustomerError::Transition { from: "unpaid", .. })
        ));
        assert!(matches!(
            o.apply(refund("R1", 10)),
            Err(CustomerError::Transition { .. })
        ));
        assert!(matches!(
            o.apply(Step::Receive { at: 1 }),
            Err(CustomerError::Transition { .. })
        ));
        o.apply(Step::Close { at: 2_000 }).expect("close");
        assert!(matches!(
            o.apply(Step::Pay { at: 3_000 }),
            Err(CustomerError::Transition { from: "closed", .. })
        ));
        let mut paid = order(vec![(1, 100, "a")], 0, 0);
        paid.apply(Step::Pay { at: 2_000 }).expect("pay");
        assert!(matches!(
            paid.apply(Step::Close { at: 1 }),
            Err(CustomerError::Transition { .. })
        ));
        let other_tracking = Step::Ship {
            shipment: Shipment {
                carrier: "圆通".into(),
                tracking_number: "YT9".into(),
            },
            at: 1,
        };
        paid.apply(ship()).expect("ship");
        assert!(matches!(
            paid.apply(other_tracking),
            Err(CustomerError::StepConflict(_))
        ));
    }

    #[test]
    fn refunds_are_idempotent_by_number_and_bounded() {
        let mut o = order(vec![(1, 10_000, "a")], 0, 0);
        o.apply(Step::Pay { at: 2_000 }).expect("pay");
        let first = o.apply(refund("R1", 3_000)).expect("partial");
        assert!(matches!(first, Some(Change::Refunded { full: false, .. })));
        assert_eq!(o.apply(refund("R1", 3_000)).expect("repeat"), None);
        assert!(matches!(
            o.apply(refund("R1", 4_000)),
            Err(CustomerError::StepConflict(_))
        ));
        assert!(matches!(
            o.apply(refund("R2", 7_001)),
            Err(CustomerError::Rejected(_))
        ));
        let last = o.apply(refund("R2", 7_000)).expect("rest");
        assert!(matches!(last, Some(Change::Refunded { full: true, .. })));
        assert_eq!(o.status, OrderStatus::Refunded);
        assert!(matches!(
            o.apply(refund("R3", 1)),
            Err(CustomerError::Transition { .. })
        ));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Pay,
        Refund(u8, i64),
        Close,
    }

    fn ops() -> impl Strategy<Value = Vec<(usize, Op)>> {
        prop::collection::vec(
            (
                0usize..4,
                prop_oneof![
                    Just(Op::Pay),
                    (0u8..4, 1i64..20_000).prop_map(|(n, a)| Op::Refund(n, a)),
                    Just(Op::Close),
                ],
            ),
            0..40,
        )
    }

    proptest! {
        // Applying the deltas of every accepted step, in any order and with
        // repeats, gives exactly the statistics recomputed from the final
        // orders — the invariant the store keeps with atomic updates.
        #[test]
        fn stats_from_deltas_equal_stats_recomputed_from_orders(
            prices in prop::collection::vec((1i64..5, 1i64..10_000), 4),
            script in ops(),
        ) {
            let mut orders: Vec<Order> = prices
                .iter()
                .enumerate()
                .map(|(i, (q, p))| {
                    let mut o = order(vec![(*q, *p, if i % 2 == 0 { "a" } else { "b" })], 0, 0);
                    o.order_no = format!("T{i}");
                    o.created_at = 1_000 + i as i64;
                    o
                })
                .collect();
            let mut stats = Stats::default();
            for (idx, op) in script {
                let step = match op {
                    Op::Pay => Step::Pay { at: 10_000 + idx as i64 },
                    Op::Refund(n, a) => refund(&format!("R{n}"), a),
                    Op::Close => Step::Close { at: 9_000 },
                };
                match orders[idx].apply(step) {
                    Ok(Some(Change::Paid(d))) => stats.apply(&d, None),
                    Ok(Some(Change::Refunded { delta, .. })) => stats.apply(&delta, None),
                    _ => {}
                }
            }
            let paid: Vec<&Order> = orders.iter().filter(|o| o.paid_at.is_some()).collect();
            prop_assert_eq!(stats.order_count, paid.len() as i64);
            prop_assert_eq!(stats.item_count, paid.iter().flat_map(|o| &o.items).map(|i| i.quantity).sum::<i64>());
            prop_assert_eq!(stats.refunded_fen, orders.iter().map(|o| o.refunded_fen).sum::<i64>());
            prop_assert_eq!(stats.spent_fen, paid.iter().map(|o| o.payable_fen() - o.refunded_fen).sum::<i64>());
            prop_assert_eq!(stats.first_order_at, paid.iter().filter_map(|o| o.paid_at).min());
            prop_assert_eq!(stats.last_order_at, paid.iter().filter_map(|o| o.paid_at).max());
            for o in &orders {
                prop_assert!(o.refunded_fen <= o.payable_fen());
                prop_assert!(o.refunded_fen >= 0);
            }
        }
    }
}
