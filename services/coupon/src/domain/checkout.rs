//! Whether a coupon can be used on a cart at checkout, and what it takes
//! off: one pure decision shared by validate, hold and redeem, so the three
//! can never disagree.

use super::discount::{self, Benefit, Cart, NotApplicable, Scope};
use super::rules::{Usable, usable};

/// A template's checkout terms. They never change once coupons exist, so
/// a template read a moment ago is as good as one read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// What it takes off.
    pub benefit: Benefit,
    /// Which items count.
    pub scope: Scope,
    /// The least the applicable items must come to, fen.
    pub min_spend_fen: i64,
    /// Whether it combines with a member-tier discount.
    pub stacks_with_tier_discount: bool,
    /// Whether it combines with other coupons on one order.
    pub stacks_with_other_coupons: bool,
    /// Whether a friend of the holder may use it.
    pub shareable: bool,
}

/// Where a coupon stands, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Usable within its window.
    Active,
    /// Held for a pending order.
    Held,
    /// Used for an order.
    Redeemed,
    /// Closed unused.
    Expired,
}

impl State {
    /// The stored number.
    pub fn as_i32(self) -> i32 {
        match self {
            State::Active => 1,
            State::Held => 2,
            State::Redeemed => 3,
            State::Expired => 4,
        }
    }

    /// From the stored number.
    pub fn from_i32(n: i32) -> Option<Self> {
        Some(match n {
            1 => State::Active,
            2 => State::Held,
            3 => State::Redeemed,
            4 => State::Expired,
            _ => return None,
        })
    }
}

/// A coupon's facts that checkout depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing<'a> {
    /// Its state.
    pub state: State,
    /// Its holder.
    pub customer_id: &'a str,
    /// First usable moment, µs.
    pub valid_from: i64,
    /// End of its window (exclusive), µs.
    pub valid_until: i64,
    /// The order holding or having used it; empty otherwise.
    pub order_no: &'a str,
    /// When a hold lapses, µs.
    pub hold_until: Option<i64>,
}

/// The checkout being asked about.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The coupon's code, canonical form.
    pub code: &'a str,
    /// Who is checking out.
    pub customer_id: &'a str,
    /// The pending order; empty for a plain validation.
    pub order_no: &'a str,
    /// The cart.
    pub cart: &'a Cart,
    /// Whether the cart's prices already carry a tier discount.
    pub tier_discount_applied: bool,
    /// Whether the order uses other coupons too.
    pub other_coupons: bool,
    /// For a friend using a shared coupon: whether the friend already has
    /// as many of the template as its per-customer limit allows.
    pub friend_at_limit: bool,
    /// Now, µs.
    pub now: i64,
}

/// Why a coupon gives a cart nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its window has closed.
    Expired,
    /// Its window has not opened.
    NotYetValid,
    /// The applicable items are `short_fen` short of the minimum.
    BelowMinimum {
        /// Missing spend, fen.
        short_fen: i64,
    },
    /// No line is one it applies to.
    ItemsNotApplicable,
    /// The friend already has as many of the template as allowed.
    LimitReached,
    /// Used for another order.
    AlreadyUsed,
    /// Held for another pending order.
    HeldForAnotherOrder,
    /// Someone else's and not shareable.
    NotYours,
    /// Does not combine with a tier discount or other coupons.
    DoesNotStack,
}

impl Refusal {
    /// A stable reason code for errors.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Expired => "COUPON_EXPIRED",
            Refusal::NotYetValid => "COUPON_NOT_YET_VALID",
            Refusal::BelowMinimum { .. } => "BELOW_MINIMUM_SPEND",
            Refusal::ItemsNotApplicable => "ITEMS_NOT_APPLICABLE",
            Refusal::LimitReached => "LIMIT_REACHED",
            Refusal::AlreadyUsed => "COUPON_ALREADY_USED",
            Refusal::HeldForAnotherOrder => "COUPON_HELD_FOR_ANOTHER_ORDER",
            Refusal::NotYours => "COUPON_NOT_YOURS",
            Refusal::DoesNotStack => "COUPON_DOES_NOT_STACK",
        }
    }

    /// The reason in words.
    pub fn describe(self) -> String {
        match self {
            Refusal::Expired => "the coupon has expired".into(),
            Refusal::NotYetValid => "the coupon cannot be used yet".into(),
            Refusal::BelowMinimum { short_fen } => format!(
                "add {}.{:02} yuan of applicable items to use this coupon",
                short_fen / 100,
                short_fen % 100
            ),
            Refusal::ItemsNotApplicable => {
                "no item in the cart is one this coupon applies to".into()
            }
            Refusal::LimitReached => {
                "this customer already has as many coupons of this kind as allowed".into()
            }
            Refusal::AlreadyUsed => "the coupon was already used for another order".into(),
            Refusal::HeldForAnotherOrder => "the coupon is held for another pending order".into(),
            Refusal::NotYours => "the coupon belongs to another customer".into(),
            Refusal::DoesNotStack => {
                "the coupon does not combine with the other discounts on this order".into()
            }
        }
    }
}

/// Whether a hold on a coupon still stands at `now`.
pub fn hold_stands(c: &Standing<'_>, now: i64) -> bool {
    c.state == State::Held && c.hold_until.is_some_and(|until| now < until)
}

/// The discount `coupon` (of `terms`) gives `attempt`, or why none.
///
/// A coupon already held for or used by the attempt's own order is judged
/// as if free, so a retried hold or redemption gets the same answer.
pub fn evaluate(
    terms: &Terms,
    coupon: &Standing<'_>,
    attempt: &Attempt<'_>,
) -> Result<i64, Refusal> {
    let own_order = !attempt.order_no.is_empty() && coupon.order_no == attempt.order_no;
    match coupon.state {
        State::Redeemed if !own_order => return Err(Refusal::AlreadyUsed),
        State::Held if !own_order && hold_stands(coupon, attempt.now) => {
            return Err(Refusal::HeldForAnotherOrder);
        }
        _ => {}
    }
    if coupon.state != State::Redeemed || !own_order {
        match usable(coupon.valid_from, coupon.valid_until, attempt.now) {
            Usable::Yes => {}
            Usable::NotYet => return Err(Refusal::NotYetValid),
            Usable::Expired => return Err(Refusal::Expired),
        }
        if coupon.state == State::Expired {
            return Err(Refusal::Expired);
        }
    }
    if coupon.customer_id != attempt.customer_id {
        if !terms.shareable {
            return Err(Refusal::NotYours);
        }
        if attempt.friend_at_limit {
            return Err(Refusal::LimitReached);
        }
    }
    if (attempt.tier_discount_applied && !terms.stacks_with_tier_discount)
        || (attempt.other_coupons && !terms.stacks_with_other_coupons)
    {
        return Err(Refusal::DoesNotStack);
    }
    discount::discount(
        attempt.cart,
        &terms.scope,
        terms.min_spend_fen,
        &terms.benefit,
    )
    .map_err(|n| match n {
        NotApplicable::NoItems => Refusal::ItemsNotApplicable,
        NotApplicable::BelowMinimum { short_fen } => Refusal::BelowMinimum { short_fen },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::discount::Line;
    use proptest::prelude::*;

    fn terms() -> Terms {
        Terms {
            benefit: Benefit::Threshold {
                threshold_fen: 29_900,
                off_fen: 3_000,
            },
            scope: Scope::default(),
            min_spend_fen: 0,
            stacks_with_tier_discount: true,
            stacks_with_other_coupons: false,
            shareable: false,
        }
    }

    fn cart(total: i64) -> Cart {
        Cart {
            lines: vec![Line {
                sku: "A".into(),
                category: "童装".into(),
                quantity: 1,
                unit_price_fen: total,
            }],
            shipping_fen: 0,
        }
    }

    fn active<'a>() -> Standing<'a> {
        Standing {
            state: State::Active,
            customer_id: "c1",
            valid_from: 100,
            valid_until: 1_000,
            order_no: "",
            hold_until: None,
        }
    }

    fn attempt<'a>(cart: &'a Cart, order: &'a str, now: i64) -> Attempt<'a> {
        Attempt {
            code: "",
            customer_id: "c1",
            order_no: order,
            cart,
            tier_discount_applied: false,
            other_coupons: false,
            friend_at_limit: false,
            now,
        }
    }

    #[test]
    fn each_refusal_is_named() {
        let t = terms();
        let big = cart(30_000);
        let small = cart(10_000);
        assert_eq!(evaluate(&t, &active(), &attempt(&big, "", 500)), Ok(3_000));
        assert_eq!(
            evaluate(&t, &active(), &attempt(&small, "", 500)),
            Err(Refusal::BelowMinimum { short_fen: 19_900 })
        );
        assert_eq!(
            evaluate(&t, &active(), &attempt(&big, "", 1_000)),
            Err(Refusal::Expired)
        );
        assert_eq!(
            evaluate(&t, &active(), &attempt(&big, "", 99)),
            Err(Refusal::NotYetValid)
        );
        let stranger = Attempt {
            customer_id: "c2",
            ..attempt(&big, "", 500)
        };
        assert_eq!(evaluate(&t, &active(), &stranger), Err(Refusal::NotYours));
        let shared = Terms {
            shareable: true,
            ..terms()
        };
        assert_eq!(evaluate(&shared, &active(), &stranger), Ok(3_000));
        let full = Attempt {
            friend_at_limit: true,
            ..stranger
        };
        assert_eq!(
            evaluate(&shared, &active(), &full),
            Err(Refusal::LimitReached)
        );
        let stacked = Attempt {
            other_coupons: true,
            ..attempt(&big, "", 500)
        };
        assert_eq!(
            evaluate(&t, &active(), &stacked),
            Err(Refusal::DoesNotStack)
        );
        let used = Standing {
            state: State::Redeemed,
            order_no: "O-1",
            ..active()
        };
        assert_eq!(
            evaluate(&t, &used, &attempt(&big, "O-2", 500)),
            Err(Refusal::AlreadyUsed)
        );
        // The order that used it gets the same answer again, even after
        // the window closed.
        assert_eq!(evaluate(&t, &used, &attempt(&big, "O-1", 5_000)), Ok(3_000));
    }

    #[test]
    fn holds_lapse_by_themselves() {
        let t = terms();
        let big = cart(30_000);
        let held = Standing {
            state: State::Held,
            order_no: "O-1",
            hold_until: Some(600),
            ..active()
        };
        assert_eq!(
            evaluate(&t, &held, &attempt(&big, "O-2", 599)),
            Err(Refusal::HeldForAnotherOrder)
        );
        assert_eq!(evaluate(&t, &held, &attempt(&big, "O-1", 599)), Ok(3_000));
        assert_eq!(evaluate(&t, &held, &attempt(&big, "O-2", 600)), Ok(3_000));
    }

    proptest! {
        /// A coupon is usable by its holder exactly when it is active or
        /// its hold has lapsed, and now is inside its window.
        #[test]
        fn usable_exactly_inside_the_window_when_free(
            state in 1i32..=4, now in 0i64..2_000, hold in proptest::option::of(0i64..2_000),
        ) {
            let c = Standing {
                state: State::from_i32(state).unwrap_or(State::Active),
                hold_until: hold,
                order_no: "O-1",
                ..active()
            };
            let big = cart(30_000);
            let got = evaluate(&terms(), &c, &attempt(&big, "O-2", now));
            let free = c.state == State::Active || (c.state == State::Held && !hold_stands(&c, now));
            prop_assert_eq!(got.is_ok(), free && (100..1_000).contains(&now));
        }
    }
}
