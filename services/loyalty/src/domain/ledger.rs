//! Points: how many an order earns, how many a refund takes back, and which
//! points a spend or an expiry takes.
//!
//! Every positive ledger entry opens a *lot* (its points, when they become
//! available, when they expire); every negative entry takes from lots. The
//! ledger itself is append-only; lots are the bookkeeping that says which
//! points are left, so that spending takes the soonest-expiring points and
//! expiry only ever takes points nobody spent.

use super::program::{Program, Tier};

/// Points an order paying `paid_fen` earns at `tier`, with the birthday
/// multiplier when `birthday_month`. Whole points, rounded down.
pub fn order_points(program: &Program, tier: &Tier, paid_fen: i64, birthday_month: bool) -> i64 {
    let birthday = if birthday_month {
        i128::from(program.earning.birthday_multiplier_percent)
    } else {
        100
    };
    let points = i128::from(paid_fen.max(0))
        * i128::from(program.earning.points_per_yuan)
        * i128::from(tier.points_multiplier_percent)
        * birthday
        / (100 * 100 * 100);
    i64::try_from(points).unwrap_or(i64::MAX)
}

/// Points a refund should have taken back in total once `refunded_fen` of
/// `paid_fen` is refunded, for an order that earned `earned`: all of them
/// for a full refund, else the refunded share rounded up (so a series of
/// partial refunds that adds up to the whole takes back exactly all).
pub fn reversed_share(earned: i64, paid_fen: i64, refunded_fen: i64) -> i64 {
    if paid_fen <= 0 || refunded_fen >= paid_fen {
        return earned;
    }
    let refunded = i128::from(refunded_fen.max(0));
    // Both factors are non-negative here, so this is the ceiling.
    let share = (i128::from(earned) * refunded + i128::from(paid_fen) - 1) / i128::from(paid_fen);
    i64::try_from(share).unwrap_or(earned).min(earned)
}

/// Points left in one lot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lot {
    /// The entry that opened it.
    pub id: String,
    /// Points not yet spent, reversed or expired.
    pub remaining: i64,
    /// When they can be spent, µs.
    pub available_at: i64,
    /// When they expire, µs; `None` for never.
    pub expire_at: Option<i64>,
}

impl Lot {
    /// Spendable at `now`: available and not expired.
    pub fn spendable(&self, now: i64) -> bool {
        self.remaining > 0 && self.available_at <= now && self.expire_at.is_none_or(|e| e > now)
    }

    /// Still pending at `now`.
    pub fn pending(&self, now: i64) -> bool {
        self.remaining > 0 && self.available_at > now
    }
}

/// Points taken from one lot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    /// The lot.
    pub lot_id: String,
    /// Points taken.
    pub points: i64,
}

/// Why a spend cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    /// Points that could be spent.
    pub available: i64,
}

/// Spendable points at `now`.
pub fn available(lots: &[Lot], now: i64) -> i64 {
    lots.iter()
        .filter(|l| l.spendable(now))
        .map(|l| l.remaining)
        .sum()
}

/// Pending points at `now`.
pub fn pending(lots: &[Lot], now: i64) -> i64 {
    lots.iter()
        .filter(|l| l.pending(now))
        .map(|l| l.remaining)
        .sum()
}

/// The lots a spend of `points` takes at `now`: soonest-expiring first
/// (points that never expire last), oldest first among equals. All or
/// nothing: a spend beyond the available points is a [`Shortfall`].
pub fn take_for_spend(lots: &[Lot], points: i64, now: i64) -> Result<Vec<Take>, Shortfall> {
    let have = available(lots, now);
    if points > have || points <= 0 {
        return Err(Shortfall { available: have });
    }
    let mut order: Vec<&Lot> = lots.iter().filter(|l| l.spendable(now)).collect();
    order.sort_by_key(|l| {
        (
            l.expire_at.unwrap_or(i64::MAX),
            l.available_at,
            l.id.clone(),
        )
    });
    let mut left = points;
    let mut takes = Vec::new();
    for lot in order {
        if left == 0 {
            break;
        }
        let t = lot.remaining.min(left);
        left -= t;
        takes.push(Take {
            lot_id: lot.id.clone(),
            points: t,
        });
    }
    Ok(takes)
}

/// What a refund takes: first from the order's own lot (pending or not),
/// then as a spend from other spendable lots, as far as there are points.
/// Returns the takes and the points that could not be taken back because
/// they were already spent.
pub fn take_for_reversal(
    lots: &[Lot],
    order_lot: Option<&str>,
    points: i64,
    now: i64,
) -> (Vec<Take>, i64) {
    let mut takes = Vec::new();
    let mut left = points.max(0);
    if let Some(own) = order_lot.and_then(|id| lots.iter().find(|l| l.id == id)) {
        let t = own.remaining.min(left);
        if t > 0 {
            takes.push(Take {
                lot_id: own.id.clone(),
                points: t,
            });
            left -= t;
        }
    }
    if left > 0 {
        let others: Vec<Lot> = lots
            .iter()
            .filter(|l| Some(l.id.as_str()) != order_lot)
            .cloned()
            .collect();
        let from_others = left.min(available(&others, now));
        if let Ok(more) = take_for_spend(&others, from_others, now) {
            left -= from_others;
            takes.extend(more);
        }
    }
    (takes, left)
}

/// Lots whose points expire by `now`: everything they still hold.
pub fn expired(lots: &[Lot], now: i64) -> Vec<Take> {
    lots.iter()
        .filter(|l| l.remaining > 0 && l.expire_at.is_some_and(|e| e <= now))
        .map(|l| Take {
            lot_id: l.id.clone(),
            points: l.remaining,
        })
        .collect()
}

/// Applies `takes` to `lots`.
pub fn apply_takes(lots: &mut [Lot], takes: &[Take]) {
    for t in takes {
        if let Some(l) = lots.iter_mut().find(|l| l.id == t.lot_id) {
            l.remaining -= t.points;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lot(id: &str, remaining: i64, available_at: i64, expire_at: Option<i64>) -> Lot {
        Lot {
            id: id.into(),
            remaining,
            available_at,
            expire_at,
        }
    }

    #[test]
    fn order_points_apply_rate_tier_and_birthday() {
        let p = Program::default();
        // 199.99 元 at 1 point per yuan, GOLD x1.25 → 249 points.
        assert_eq!(order_points(&p, &p.tiers[2], 19_999, false), 249);
        assert_eq!(order_points(&p, &p.tiers[2], 19_999, true), 499);
        assert_eq!(order_points(&p, &p.tiers[0], 99, false), 0);
    }

    #[test]
    fn partial_refunds_add_up_to_the_whole() {
        assert_eq!(reversed_share(100, 10_000, 3_333), 34);
        assert_eq!(reversed_share(100, 10_000, 6_666), 67);
        assert_eq!(reversed_share(100, 10_000, 10_000), 100);
        assert_eq!(reversed_share(0, 10_000, 5_000), 0);
    }

    #[test]
    fn spending_takes_the_soonest_expiring_available_points() {
        let lots = vec![
            lot("a", 50, 0, Some(300)),
            lot("b", 50, 0, Some(200)),
            lot("c", 50, 0, None),
            lot("pending", 500, 1_000, Some(2_000)),
        ];
        let takes = take_for_spend(&lots, 70, 100).expect("enough");
        assert_eq!(
            takes,
            vec![
                Take {
                    lot_id: "b".into(),
                    points: 50
                },
                Take {
                    lot_id: "a".into(),
                    points: 20
                }
            ]
        );
        assert_eq!(
            take_for_spend(&lots, 151, 100),
            Err(Shortfall { available: 150 })
        );
    }

    #[test]
    fn a_reversal_takes_the_orders_own_points_first() {
        let lots = vec![lot("own", 30, 1_000, None), lot("other", 100, 0, None)];
        let (takes, short) = take_for_reversal(&lots, Some("own"), 50, 100);
        assert_eq!(short, 0);
        assert_eq!(takes[0].lot_id, "own");
        assert_eq!(takes[1].points, 20);
        let (_, short) = take_for_reversal(&lots, Some("own"), 500, 100);
        assert_eq!(short, 370);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Earn(i64, i64, Option<i64>),
        Spend(i64),
        Expire,
        Reverse(usize, i64),
        Wait(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1i64..500, 0i64..50, proptest::option::of(1i64..200))
                .prop_map(|(p, a, e)| Op::Earn(p, a, e)),
            (1i64..800).prop_map(Op::Spend),
            Just(Op::Expire),
            (0usize..20, 1i64..300).prop_map(|(i, p)| Op::Reverse(i, p)),
            (1i64..40).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Over any sequence of earns, spends, reversals and expiries, the
        /// balance equals the sum of the entries and of the lots; no lot goes
        /// negative; a spend never exceeds what is available; expiry only
        /// takes points still in lots, never spent ones.
        #[test]
        fn the_ledger_always_adds_up(ops in proptest::collection::vec(op(), 1..80)) {
            let mut lots: Vec<Lot> = Vec::new();
            let mut entries: Vec<i64> = Vec::new();
            let mut now = 0;
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Earn(points, delay, life) => {
                        let available_at = now + delay;
                        lots.push(lot(&format!("{n:04}"), points, available_at, life.map(|l| available_at + l)));
                        entries.push(points);
                    }
                    Op::Spend(points) => {
                        let before = available(&lots, now);
                        match take_for_spend(&lots, points, now) {
                            Ok(takes) => {
                                prop_assert!(points <= before);
                                prop_assert_eq!(takes.iter().map(|t| t.points).sum::<i64>(), points);
                                apply_takes(&mut lots, &takes);
                                entries.push(-points);
                            }
                            Err(s) => prop_assert!(points > s.available),
                        }
                    }
                    Op::Expire => {
                        let takes = expired(&lots, now);
                        for t in &takes {
                            let l = lots.iter().find(|l| l.id == t.lot_id).map(|l| l.remaining);
                            prop_assert_eq!(l, Some(t.points));
                        }
                        apply_takes(&mut lots, &takes);
                        entries.push(-takes.iter().map(|t| t.points).sum::<i64>());
                    }
                    Op::Reverse(i, points) => {
                        let own = lots.get(i).map(|l| l.id.clone());
                        let (takes, short) = take_for_reversal(&lots, own.as_deref(), points, now);
                        let taken: i64 = takes.iter().map(|t| t.points).sum();
                        prop_assert_eq!(taken + short, points);
                        apply_takes(&mut lots, &takes);
                        entries.push(-taken);
                    }
                    Op::Wait(t) => now += t,
                }
                prop_assert!(lots.iter().all(|l| l.remaining >= 0));
                let balance: i64 = entries.iter().sum();
                prop_assert_eq!(balance, lots.iter().map(|l| l.remaining).sum::<i64>());
                prop_assert!(balance >= 0);
            }
        }
    }
}
