//! Member prices: a line's price is the tier discount of its list price or
//! the old-customer zone price (老顾客特惠区), whichever is lower, and never
//! above the list price. All in whole fen.

/// Where a price came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// No discount applies.
    List,
    /// The tier discount.
    Tier,
    /// The old-customer zone price.
    PriceList,
}

/// An old-customer zone price for one SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZonePrice {
    /// Price, fen.
    pub price_fen: i64,
    /// Only for customers with a past paid order.
    pub returning_only: bool,
    /// Lowest tier index offered it.
    pub min_tier: usize,
    /// Label shown to buyers.
    pub label: String,
}

/// A member's view at checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buyer {
    /// Tier index.
    pub tier: usize,
    /// The tier's price in thousandths.
    pub per_mille: i32,
    /// Has a past paid order.
    pub returning: bool,
}

/// `list_fen` at `per_mille` thousandths, rounded half up to the fen.
pub fn discounted(list_fen: i64, per_mille: i32) -> i64 {
    let value = (i128::from(list_fen) * i128::from(per_mille) + 500) / 1000;
    i64::try_from(value).unwrap_or(list_fen)
}

/// The unit price of a line for `buyer`, with its source.
pub fn unit_price(list_fen: i64, buyer: Buyer, zone: Option<&ZonePrice>) -> (i64, Source) {
    let mut best = (list_fen, Source::List);
    let tier_price = discounted(list_fen, buyer.per_mille);
    if tier_price < best.0 {
        best = (tier_price, Source::Tier);
    }
    if let Some(z) = zone
        && (!z.returning_only || buyer.returning)
        && buyer.tier >= z.min_tier
        && z.price_fen < best.0
    {
        best = (z.price_fen, Source::PriceList);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gold(returning: bool) -> Buyer {
        Buyer {
            tier: 2,
            per_mille: 900,
            returning,
        }
    }

    #[test]
    fn the_lower_of_tier_and_zone_price_wins() {
        let zone = ZonePrice {
            price_fen: 5_000,
            returning_only: true,
            min_tier: 0,
            label: "破零价".into(),
        };
        assert_eq!(
            unit_price(10_000, gold(true), Some(&zone)),
            (5_000, Source::PriceList)
        );
        // A new customer does not see the returning-customer price.
        assert_eq!(
            unit_price(10_000, gold(false), Some(&zone)),
            (9_000, Source::Tier)
        );
        // A zone price above the tier price is not used.
        assert_eq!(
            unit_price(5_200, gold(true), Some(&zone)),
            (4_680, Source::Tier)
        );
        let regular = Buyer {
            tier: 0,
            per_mille: 1000,
            returning: true,
        };
        assert_eq!(unit_price(10_000, regular, None), (10_000, Source::List));
        let gold_only = ZonePrice {
            min_tier: 2,
            ..zone
        };
        assert_eq!(
            unit_price(10_000, regular, Some(&gold_only)),
            (10_000, Source::List)
        );
    }

    #[test]
    fn rounding_is_half_up_to_the_fen() {
        assert_eq!(discounted(15, 950), 14); // 14.25
        assert_eq!(discounted(17, 950), 16); // 16.15
        assert_eq!(discounted(10, 950), 10); // 9.5 → 10
    }

    proptest! {
        /// A member price is never above the list price, never negative,
        /// and never below the tier floor unless a zone price says so.
        #[test]
        fn member_prices_stay_in_bounds(
            list in 0i64..100_000_000,
            per_mille in 700i32..=1000,
            zone_price in proptest::option::of(0i64..100_000_000),
            returning: bool,
        ) {
            let zone = zone_price.map(|p| ZonePrice { price_fen: p, returning_only: true, min_tier: 0, label: String::new() });
            let buyer = Buyer { tier: 1, per_mille, returning };
            let (price, source) = unit_price(list, buyer, zone.as_ref());
            prop_assert!(price <= list && price >= 0);
            if source != Source::PriceList {
                prop_assert!(price >= discounted(list, 700));
                prop_assert_eq!(price, discounted(list, per_mille).min(list));
            }
        }
    }
}
