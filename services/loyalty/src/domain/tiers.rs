//! Tier evaluation. A member is upgraded the moment their window qualifies
//! them for a higher tier; a reached tier is kept until its requalification
//! date, and only drops a grace period after requalification failed (with
//! a warning in between). Everything here is a function of the program,
//! the member's window figures and the clock, so it is deterministic.

use super::days;
use super::program::{Basis, Program};

/// What a member did within the qualification window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    /// Paid spend net of refunds, fen.
    pub spend_fen: i64,
    /// Paid orders not fully refunded.
    pub order_count: i64,
}

/// The highest tier (by index) `window` reaches.
pub fn qualified_tier(program: &Program, window: Window) -> usize {
    program
        .tiers
        .iter()
        .enumerate()
        .rev()
        .find(|(i, t)| {
            *i == 0
                || match program.basis {
                    Basis::Spend => window.spend_fen >= t.min_spend_fen,
                    Basis::OrderCount => window.order_count >= t.min_order_count,
                    Basis::SpendOrOrderCount => {
                        window.spend_fen >= t.min_spend_fen
                            || window.order_count >= t.min_order_count
                    }
                }
        })
        .map_or(0, |(i, _)| i)
}

/// A member's tier and its dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Current tier index.
    pub tier: usize,
    /// When it was reached, µs.
    pub since: i64,
    /// When it is next requalified, µs.
    pub requalify_at: i64,
    /// A pending drop: the tier and when.
    pub drop: Option<(usize, i64)>,
}

impl Standing {
    /// A new member in the base tier at `now`.
    pub fn new_member(program: &Program, now: i64) -> Self {
        Self {
            tier: 0,
            since: now,
            requalify_at: now + days(program.qualification_window_days),
            drop: None,
        }
    }
}

/// What evaluation decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing changes.
    Keep,
    /// Up to a higher tier now.
    Upgrade(usize),
    /// The tier is kept for another window (a pending drop is cancelled).
    Requalified,
    /// Requalification failed: the tier drops to `.0` at `.1` unless the
    /// member qualifies again meanwhile.
    WillDrop(usize, i64),
    /// Down to a lower tier now.
    Drop(usize),
}

/// Evaluates `standing` against `window` at `now`.
pub fn evaluate(program: &Program, standing: &Standing, window: Window, now: i64) -> Decision {
    let qualified = qualified_tier(program, window);
    if qualified > standing.tier {
        return Decision::Upgrade(qualified);
    }
    if now < standing.requalify_at {
        return Decision::Keep;
    }
    if qualified == standing.tier {
        return Decision::Requalified;
    }
    match standing.drop {
        None if program.downgrade_grace_days == 0 => Decision::Drop(qualified),
        None => Decision::WillDrop(
            qualified,
            standing.requalify_at + days(program.downgrade_grace_days),
        ),
        Some((_, at)) if now >= at => Decision::Drop(qualified),
        Some((to, at)) if to != qualified => Decision::WillDrop(qualified, at),
        Some(_) => Decision::Keep,
    }
}

/// The standing after `decision` at `now`.
pub fn apply(program: &Program, standing: &Standing, decision: Decision, now: i64) -> Standing {
    let window = days(program.qualification_window_days);
    match decision {
        Decision::Keep => *standing,
        Decision::Upgrade(tier) | Decision::Drop(tier) => Standing {
            tier,
            since: now,
            requalify_at: now + window,
            drop: None,
        },
        Decision::Requalified => Standing {
            requalify_at: now + window,
            drop: None,
            ..*standing
        },
        Decision::WillDrop(to, at) => Standing {
            drop: Some((to, at)),
            ..*standing
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const Y: i64 = 365 * super::super::DAY_MICROS;

    fn spend(yuan: i64) -> Window {
        Window {
            spend_fen: yuan * 100,
            order_count: 1,
        }
    }

    #[test]
    fn thresholds_pick_the_highest_reached_tier() {
        let p = Program::default();
        assert_eq!(qualified_tier(&p, Window::default()), 0);
        assert_eq!(qualified_tier(&p, spend(499)), 0);
        assert_eq!(qualified_tier(&p, spend(500)), 1);
        assert_eq!(qualified_tier(&p, spend(5000)), 3);
        let by_orders = Window {
            spend_fen: 0,
            order_count: 5,
        };
        assert_eq!(qualified_tier(&p, by_orders), 2);
    }

    #[test]
    fn upgrade_at_once_downgrade_only_after_requalification_and_grace() {
        let p = Program::default();
        let s = Standing::new_member(&p, 0);
        let d = evaluate(&p, &s, spend(2500), 10);
        assert_eq!(d, Decision::Upgrade(2));
        let gold = apply(&p, &s, d, 10);
        // Spend falls away mid-window: nothing happens before requalification.
        assert_eq!(evaluate(&p, &gold, spend(0), Y / 2), Decision::Keep);
        // At requalification the drop is announced, not made.
        let d = evaluate(&p, &gold, spend(600), Y + 10);
        let at = Y + 10 + days(30);
        assert_eq!(d, Decision::WillDrop(1, at));
        let warned = apply(&p, &gold, d, Y + 10);
        assert_eq!(evaluate(&p, &warned, spend(600), at - 1), Decision::Keep);
        assert_eq!(evaluate(&p, &warned, spend(600), at), Decision::Drop(1));
        // Requalifying during the grace period cancels the drop.
        let d = evaluate(&p, &warned, spend(2000), at - 1);
        assert_eq!(d, Decision::Requalified);
        assert_eq!(apply(&p, &warned, d, at - 1).drop, None);
    }

    #[test]
    fn no_grace_drops_at_requalification() {
        let p = Program {
            downgrade_grace_days: 0,
            ..Program::default()
        };
        let gold = Standing {
            tier: 2,
            since: 0,
            requalify_at: Y,
            drop: None,
        };
        assert_eq!(evaluate(&p, &gold, spend(0), Y), Decision::Drop(0));
    }

    proptest! {
        /// Evaluation is a pure function: the same history and clock give
        /// the same tier, a tier never drops before its requalification
        /// date, and never drops without a prior warning when there is a
        /// grace period.
        #[test]
        fn tiers_only_move_as_the_policy_allows(
            steps in proptest::collection::vec((0i64..8000, 0i64..12, 1i64..60), 1..60)
        ) {
            let p = Program::default();
            let run = || {
                let mut s = Standing::new_member(&p, 0);
                let mut now = 0;
                let mut history = Vec::new();
                for (yuan, orders, gap_days) in &steps {
                    now += days(*gap_days as i32);
                    let w = Window { spend_fen: yuan * 100, order_count: *orders };
                    let before = s;
                    let d = evaluate(&p, &s, w, now);
                    s = apply(&p, &s, d, now);
                    history.push((before, d, s, now, w));
                }
                history
            };
            let first = run();
            prop_assert_eq!(&first, &run());
            for (before, d, after, now, w) in first {
                if after.tier < before.tier {
                    prop_assert!(now >= before.requalify_at);
                    prop_assert!(before.drop.is_some_and(|(_, at)| now >= at));
                }
                if after.tier > before.tier {
                    prop_assert_eq!(after.tier, qualified_tier(&p, w));
                }
                // Upgrades are never late.
                prop_assert!(after.tier >= qualified_tier(&p, w), "{:?}", d);
            }
        }
    }
}
