//! Who may receive a coupon, how long it is good for, and whether it can
//! be used at a checkout: the template's rules as pure functions.

/// Microseconds in a day.
pub const DAY_MICROS: i64 = 86_400_000_000;

/// When an issued coupon can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// A fixed window, µs.
    Window {
        /// First moment it can be used.
        from: i64,
        /// Last moment it can be used (exclusive).
        until: i64,
    },
    /// From the moment of issue for this many days.
    DaysAfterIssue(i32),
}

impl Validity {
    /// The window of a coupon issued at `issued_at`: (from, until).
    pub fn window(self, issued_at: i64) -> (i64, i64) {
        match self {
            Validity::Window { from, until } => (from, until),
            Validity::DaysAfterIssue(days) => (issued_at, issued_at + i64::from(days) * DAY_MICROS),
        }
    }
}

/// Who a template may be issued to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Audience {
    /// Only buyers with no paid order yet.
    pub new_buyers_only: bool,
    /// Only buyers with at least one paid order.
    pub returning_buyers_only: bool,
    /// Loyalty tiers that may receive it; empty for every tier.
    pub tier_codes: std::collections::BTreeSet<String>,
}

/// What is known of a buyer when a coupon is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buyer<'a> {
    /// Paid orders so far.
    pub paid_orders: i64,
    /// Loyalty tier code; empty when not known.
    pub tier_code: &'a str,
}

/// Why a coupon cannot be issued to a buyer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotEligible {
    /// For new buyers only, and this buyer has paid before.
    NotNewBuyer,
    /// For returning buyers only, and this buyer has not paid yet.
    NotReturningBuyer,
    /// The buyer's tier is not one the template is for.
    TierNotEligible,
    /// The buyer already has as many as the per-customer limit allows
    /// (decided by the store's conditional count, not here: it must hold
    /// under concurrent issues).
    LimitReached,
}

/// Whether `buyer` is in a template's `audience`.
pub fn eligible(audience: &Audience, buyer: Buyer) -> Result<(), NotEligible> {
    if audience.new_buyers_only && buyer.paid_orders > 0 {
        return Err(NotEligible::NotNewBuyer);
    }
    if audience.returning_buyers_only && buyer.paid_orders == 0 {
        return Err(NotEligible::NotReturningBuyer);
    }
    if !audience.tier_codes.is_empty() && !audience.tier_codes.contains(buyer.tier_code) {
        return Err(NotEligible::TierNotEligible);
    }
    Ok(())
}

/// Where an issued coupon stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    /// It can be used now.
    Yes,
    /// Its window has not opened yet.
    NotYet,
    /// Its window has closed.
    Expired,
}

/// Whether a coupon valid in (`from`, `until`) can be used at `now`.
pub fn usable(from: i64, until: i64, now: i64) -> Usable {
    if now < from {
        Usable::NotYet
    } else if now >= until {
        Usable::Expired
    } else {
        Usable::Yes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn buyer(paid_orders: i64, tier_code: &str) -> Buyer<'_> {
        Buyer {
            paid_orders,
            tier_code,
        }
    }

    #[test]
    fn audiences_and_limits() {
        let new_only = Audience {
            new_buyers_only: true,
            ..Audience::default()
        };
        assert_eq!(eligible(&new_only, buyer(0, "")), Ok(()));
        assert_eq!(
            eligible(&new_only, buyer(1, "")),
            Err(NotEligible::NotNewBuyer)
        );
        let gold_returning = Audience {
            returning_buyers_only: true,
            tier_codes: ["GOLD".to_string(), "PLATINUM".to_string()].into(),
            ..Audience::default()
        };
        assert_eq!(
            eligible(&gold_returning, buyer(0, "PLATINUM")),
            Err(NotEligible::NotReturningBuyer)
        );
        assert_eq!(
            eligible(&gold_returning, buyer(2, "SILVER")),
            Err(NotEligible::TierNotEligible)
        );
        assert_eq!(eligible(&gold_returning, buyer(2, "GOLD")), Ok(()));
    }

    #[test]
    fn validity_windows() {
        let issued = 1_000 * DAY_MICROS;
        let (from, until) = Validity::DaysAfterIssue(7).window(issued);
        assert_eq!((from, until), (issued, issued + 7 * DAY_MICROS));
        assert_eq!(usable(from, until, issued), Usable::Yes);
        assert_eq!(usable(from, until, until), Usable::Expired);
        assert_eq!(usable(from, until, from - 1), Usable::NotYet);
    }

    proptest! {
        /// A coupon is usable exactly inside its window.
        #[test]
        fn usable_exactly_inside_the_window(
            from in 0i64..1_000_000, len in 1i64..1_000_000, now in -10i64..3_000_000,
        ) {
            let until = from + len;
            let u = usable(from, until, now);
            prop_assert_eq!(u == Usable::Yes, from <= now && now < until);
        }
    }
}
