//! The discount a coupon gives a cart, exact in fen.
//!
//! A template says which items it applies to (all, some categories, some
//! SKUs, minus exclusions), the least those items must come to, and what
//! it takes off: a fixed amount, a threshold offer (满299减30), a
//! percentage with a cap, free shipping, or a red packet (a fixed amount
//! with no minimum). The discount never exceeds the applicable items'
//! subtotal (or the shipping fee for free shipping), so a cart never goes
//! below zero.

use std::collections::BTreeSet;

/// What a coupon takes off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Benefit {
    /// A fixed amount off, fen.
    AmountOff(i64),
    /// `off_fen` off once the applicable items reach `threshold_fen`.
    Threshold {
        /// The spend that unlocks it, fen.
        threshold_fen: i64,
        /// What it takes off, fen.
        off_fen: i64,
    },
    /// A share off in thousandths (150 = 15 % off), at most `cap_fen`
    /// (0: no cap), rounded down to the fen.
    PercentOff {
        /// Thousandths off, 1-1000.
        per_mille: i64,
        /// Largest discount, fen; 0 for none.
        cap_fen: i64,
    },
    /// The shipping fee, up to `cap_fen` (0: all of it).
    FreeShipping {
        /// Largest discount, fen; 0 for none.
        cap_fen: i64,
    },
    /// A red packet: a fixed amount off with no minimum of its own.
    RedPacket(i64),
}

/// Which items a coupon applies to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    /// Categories it applies to; empty with `skus` empty means everything.
    pub categories: BTreeSet<String>,
    /// SKUs it applies to.
    pub skus: BTreeSet<String>,
    /// SKUs it never applies to.
    pub excluded_skus: BTreeSet<String>,
}

impl Scope {
    /// Whether a line with `sku` in `category` counts.
    pub fn covers(&self, sku: &str, category: &str) -> bool {
        if self.excluded_skus.contains(sku) {
            return false;
        }
        (self.categories.is_empty() && self.skus.is_empty())
            || self.categories.contains(category)
            || self.skus.contains(sku)
    }
}

/// A cart line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// SKU.
    pub sku: String,
    /// Category.
    pub category: String,
    /// Quantity, at least 1.
    pub quantity: i64,
    /// Unit price, fen.
    pub unit_price_fen: i64,
}

/// A cart as checkout sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cart {
    /// The lines.
    pub lines: Vec<Line>,
    /// The shipping fee, fen.
    pub shipping_fen: i64,
}

/// Why a coupon gives nothing to a cart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotApplicable {
    /// No line is covered.
    NoItems,
    /// The covered lines come to less than the minimum: `short_fen` more
    /// are needed.
    BelowMinimum {
        /// Missing spend, fen.
        short_fen: i64,
    },
}

/// The subtotal of the lines `scope` covers, fen.
pub fn applicable_subtotal(cart: &Cart, scope: &Scope) -> i64 {
    cart.lines
        .iter()
        .filter(|l| scope.covers(&l.sku, &l.category))
        .map(|l| l.quantity * l.unit_price_fen)
        .sum()
}

/// The discount `benefit` gives `cart` when the covered lines reach
/// `min_spend_fen`, fen.
pub fn discount(
    cart: &Cart,
    scope: &Scope,
    min_spend_fen: i64,
    benefit: &Benefit,
) -> Result<i64, NotApplicable> {
    let covered = cart.lines.iter().any(|l| scope.covers(&l.sku, &l.category));
    if !covered && !matches!(benefit, Benefit::FreeShipping { .. }) {
        return Err(NotApplicable::NoItems);
    }
    let subtotal = applicable_subtotal(cart, scope);
    let minimum = match benefit {
        Benefit::Threshold { threshold_fen, .. } => min_spend_fen.max(*threshold_fen),
        _ => min_spend_fen,
    };
    if subtotal < minimum {
        return Err(NotApplicable::BelowMinimum {
            short_fen: minimum - subtotal,
        });
    }
    let raw = match benefit {
        Benefit::AmountOff(off) | Benefit::RedPacket(off) => *off,
        Benefit::Threshold { off_fen, .. } => *off_fen,
        Benefit::PercentOff { per_mille, cap_fen } => {
            let off = i64::try_from(i128::from(subtotal) * i128::from(*per_mille) / 1000)
                .unwrap_or(i64::MAX);
            if *cap_fen > 0 { off.min(*cap_fen) } else { off }
        }
        Benefit::FreeShipping { cap_fen } => {
            let fee = cart.shipping_fen.max(0);
            return Ok(if *cap_fen > 0 { fee.min(*cap_fen) } else { fee });
        }
    };
    Ok(raw.clamp(0, subtotal))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(sku: &str, category: &str, quantity: i64, unit: i64) -> Line {
        Line {
            sku: sku.into(),
            category: category.into(),
            quantity,
            unit_price_fen: unit,
        }
    }

    fn cart(lines: Vec<Line>) -> Cart {
        Cart {
            lines,
            shipping_fen: 800,
        }
    }

    #[test]
    fn threshold_offers_need_the_threshold() {
        let offer = Benefit::Threshold {
            threshold_fen: 29_900,
            off_fen: 3_000,
        };
        let all = Scope::default();
        let small = cart(vec![line("A", "童装", 1, 19_900)]);
        assert_eq!(
            discount(&small, &all, 0, &offer),
            Err(NotApplicable::BelowMinimum { short_fen: 10_000 })
        );
        let big = cart(vec![line("A", "童装", 2, 19_900)]);
        assert_eq!(discount(&big, &all, 0, &offer), Ok(3_000));
    }

    #[test]
    fn scope_exclusions_and_caps() {
        let scope = Scope {
            categories: ["童装".to_string()].into(),
            excluded_skus: ["A-SALE".to_string()].into(),
            ..Scope::default()
        };
        let c = cart(vec![
            line("A", "童装", 1, 10_000),
            line("A-SALE", "童装", 1, 50_000),
            line("B", "玩具", 1, 30_000),
        ]);
        assert_eq!(applicable_subtotal(&c, &scope), 10_000);
        let pct = Benefit::PercentOff {
            per_mille: 333,
            cap_fen: 0,
        };
        assert_eq!(discount(&c, &scope, 0, &pct), Ok(3_330));
        let capped = Benefit::PercentOff {
            per_mille: 500,
            cap_fen: 2_000,
        };
        assert_eq!(discount(&c, &scope, 0, &capped), Ok(2_000));
        let toys_only = Scope {
            skus: ["Z".to_string()].into(),
            ..Scope::default()
        };
        assert_eq!(
            discount(&c, &toys_only, 0, &Benefit::AmountOff(500)),
            Err(NotApplicable::NoItems)
        );
        assert_eq!(
            discount(&c, &scope, 0, &Benefit::FreeShipping { cap_fen: 600 }),
            Ok(600)
        );
        // A fixed amount never takes more than the items cost.
        assert_eq!(
            discount(&c, &scope, 0, &Benefit::RedPacket(20_000)),
            Ok(10_000)
        );
    }

    /// The reference: the cart expanded into single units, each unit
    /// checked against the scope on its own, in plain arithmetic.
    fn reference(c: &Cart, scope: &Scope, min: i64, b: &Benefit) -> Option<i64> {
        let units: Vec<(&str, &str, i64)> = c
            .lines
            .iter()
            .flat_map(|l| {
                (0..l.quantity)
                    .map(move |_| (l.sku.as_str(), l.category.as_str(), l.unit_price_fen))
            })
            .collect();
        let counted: Vec<i64> = units
            .iter()
            .filter(|(sku, cat, _)| {
                !scope.excluded_skus.contains(*sku)
                    && ((scope.categories.is_empty() && scope.skus.is_empty())
                        || scope.categories.contains(*cat)
                        || scope.skus.contains(*sku))
            })
            .map(|u| u.2)
            .collect();
        if let Benefit::FreeShipping { cap_fen } = b {
            let total: i64 = counted.iter().sum();
            if total < min {
                return None;
            }
            return Some(if *cap_fen > 0 {
                c.shipping_fen.min(*cap_fen)
            } else {
                c.shipping_fen
            });
        }
        if counted.is_empty() {
            return None;
        }
        let total: i64 = counted.iter().sum();
        let need = match b {
            Benefit::Threshold { threshold_fen, .. } => min.max(*threshold_fen),
            _ => min,
        };
        if total < need {
            return None;
        }
        let off = match b {
            Benefit::AmountOff(x) | Benefit::RedPacket(x) => *x,
            Benefit::Threshold { off_fen, .. } => *off_fen,
            Benefit::PercentOff { per_mille, cap_fen } => {
                // Whole fen, rounded down: total × share.
                let mut off = 0;
                let mut rest = total * per_mille;
                while rest >= 1000 {
                    rest -= 1000;
                    off += 1;
                }
                if *cap_fen > 0 && off > *cap_fen {
                    *cap_fen
                } else {
                    off
                }
            }
            Benefit::FreeShipping { .. } => 0,
        };
        Some(if off < 0 {
            0
        } else if off > total {
            total
        } else {
            off
        })
    }

    fn benefit() -> impl Strategy<Value = Benefit> {
        prop_oneof![
            (0i64..50_000).prop_map(Benefit::AmountOff),
            (0i64..50_000).prop_map(Benefit::RedPacket),
            (0i64..60_000, 0i64..10_000).prop_map(|(t, o)| Benefit::Threshold {
                threshold_fen: t,
                off_fen: o
            }),
            (1i64..=1000, 0i64..5_000).prop_map(|(p, c)| Benefit::PercentOff {
                per_mille: p,
                cap_fen: c
            }),
            (0i64..2_000).prop_map(|c| Benefit::FreeShipping { cap_fen: c }),
        ]
    }

    proptest! {
        /// The discount matches the unit-by-unit reference, is never
        /// negative and never exceeds what it applies to.
        #[test]
        fn discounts_match_the_reference(
            lines in proptest::collection::vec(
                (0usize..4, 0usize..3, 1i64..4, 0i64..20_000), 1..6),
            cats in proptest::collection::btree_set(0usize..3, 0..2),
            skus in proptest::collection::btree_set(0usize..4, 0..2),
            excluded in proptest::collection::btree_set(0usize..4, 0..2),
            min in 0i64..40_000,
            shipping in 0i64..2_000,
            b in benefit(),
        ) {
            let name = |i: usize| format!("SKU-{i}");
            let category = |i: usize| format!("CAT-{i}");
            let c = Cart {
                lines: lines.iter().map(|(s, k, q, p)| line(&name(*s), &category(*k), *q, *p)).collect(),
                shipping_fen: shipping,
            };
            let scope = Scope {
                categories: cats.iter().map(|i| category(*i)).collect(),
                skus: skus.iter().map(|i| name(*i)).collect(),
                excluded_skus: excluded.iter().map(|i| name(*i)).collect(),
            };
            let got = discount(&c, &scope, min, &b).ok();
            prop_assert_eq!(got, reference(&c, &scope, min, &b));
            if let Some(d) = got {
                prop_assert!(d >= 0);
                let cap = match b {
                    Benefit::FreeShipping { .. } => c.shipping_fen,
                    _ => applicable_subtotal(&c, &scope),
                };
                prop_assert!(d <= cap);
            }
        }
    }
}
