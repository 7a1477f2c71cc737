//! A shop's loyalty program and the checks it must pass before it is stored.

use huitou_runtime::{Failure, FieldViolations};
use serde::{Deserialize, Serialize};

/// How tiers are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Basis {
    /// By paid spend in the window.
    Spend,
    /// By paid orders in the window.
    OrderCount,
    /// By either threshold.
    SpendOrOrderCount,
}

impl Basis {
    fn uses_spend(self) -> bool {
        matches!(self, Basis::Spend | Basis::SpendOrOrderCount)
    }

    fn uses_orders(self) -> bool {
        matches!(self, Basis::OrderCount | Basis::SpendOrOrderCount)
    }
}

/// One tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// Stable code, e.g. `GOLD`.
    pub code: String,
    /// Name shown to buyers.
    pub name: String,
    /// Spend in the window that reaches it, in fen.
    pub min_spend_fen: i64,
    /// Paid orders in the window that reach it.
    pub min_order_count: i64,
    /// Member price in thousandths of the list price.
    pub price_per_mille: i32,
    /// Points multiplier, percent.
    pub points_multiplier_percent: i32,
    /// Benefits shown to members.
    pub benefits: Vec<String>,
}

/// How points are earned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarningRules {
    /// Points per yuan paid.
    pub points_per_yuan: i32,
    /// Points for a review.
    pub review_points: i64,
    /// Points for a referral.
    pub referral_points: i64,
    /// Points for the daily check-in.
    pub check_in_points: i64,
    /// Multiplier in the birthday month, percent.
    pub birthday_multiplier_percent: i32,
}

/// A shop's loyalty program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    /// Tiers, base first.
    pub tiers: Vec<Tier>,
    /// How tiers are reached.
    pub basis: Basis,
    /// Qualification window and requalification period, days.
    pub qualification_window_days: i32,
    /// Days between failed requalification and the drop.
    pub downgrade_grace_days: i32,
    /// Lowest member price a tier may give, thousandths.
    pub price_floor_per_mille: i32,
    /// How points are earned.
    pub earning: EarningRules,
    /// Days points live once available; 0 for ever.
    pub points_lifetime_days: i32,
    /// Days an order's points stay pending after payment.
    pub return_window_days: i32,
    /// Days of warning before points expire.
    pub expiry_warning_days: i32,
    /// IANA time zone for days and birthdays.
    pub time_zone: String,
}

fn tier(code: &str, name: &str, spend_yuan: i64, orders: i64, per_mille: i32, mult: i32) -> Tier {
    Tier {
        code: code.into(),
        name: name.into(),
        min_spend_fen: spend_yuan * 100,
        min_order_count: orders,
        price_per_mille: per_mille,
        points_multiplier_percent: mult,
        benefits: Vec::new(),
    }
}

impl Default for Program {
    /// The program a shop has before configuring one: 普通 / 高级 / 黄金 / 钻石
    /// with a wide gradient (no discount, 9.5折, 9折, 8.5折) reached by
    /// spend or orders over a year.
    fn default() -> Self {
        let mut tiers = vec![
            tier("REGULAR", "普通会员", 0, 0, 1000, 100),
            tier("SENIOR", "高级会员", 500, 2, 950, 110),
            tier("GOLD", "黄金会员", 2000, 5, 900, 125),
            tier("DIAMOND", "钻石会员", 5000, 10, 850, 150),
        ];
        tiers[2].benefits = vec!["生日礼".into()];
        tiers[3].benefits = vec!["生日礼".into(), "专属客服".into(), "新品优先购".into()];
        Self {
            tiers,
            basis: Basis::SpendOrOrderCount,
            qualification_window_days: 365,
            downgrade_grace_days: 30,
            price_floor_per_mille: 700,
            earning: EarningRules {
                points_per_yuan: 1,
                review_points: 20,
                referral_points: 100,
                check_in_points: 5,
                birthday_multiplier_percent: 200,
            },
            points_lifetime_days: 365,
            return_window_days: 15,
            expiry_warning_days: 30,
            time_zone: "Asia/Shanghai".into(),
        }
    }
}

fn code_ok(code: &str, extra: &[char]) -> bool {
    (1..=32).contains(&code.len())
        && code
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || extra.contains(&c))
}

/// Checks a reward or tier code: 1-32 of A-Z, 0-9, `_` and the `extra`
/// characters.
pub fn check_code(code: &str, extra: &[char], field: &str, v: &mut FieldViolations) {
    let allowed = if extra.is_empty() {
        "A-Z, 0-9 and _"
    } else {
        "A-Z, 0-9, _ and -"
    };
    v.check(
        code_ok(code, extra),
        field,
        format!("must be 1-32 characters of {allowed}"),
    );
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    v: &mut FieldViolations,
    field: &str,
    value: T,
    low: T,
    high: T,
) {
    v.check(
        value >= low && value <= high,
        field,
        format!("must be {low}-{high}, got {value}"),
    );
}

impl Program {
    /// The tier with `code`, by index.
    pub fn tier_index(&self, code: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.code == code)
    }

    /// The tier with `code`, or the base tier when the code is no longer in
    /// the program (a tier removed by an update: members fall back to the
    /// base tier until they are evaluated again).
    pub fn tier_or_base(&self, code: &str) -> usize {
        self.tier_index(code).unwrap_or(0)
    }

    /// The time zone (checked at validation; Shanghai if damaged).
    pub fn zone(&self) -> chrono_tz::Tz {
        self.time_zone.parse().unwrap_or(chrono_tz::Asia::Shanghai)
    }

    /// Every problem with the program, fields named under `program.`.
    pub fn validate(&self) -> Result<(), Failure> {
        let mut v = FieldViolations::new();
        let n = self.tiers.len();
        v.check(
            (1..=10).contains(&n),
            "program.tiers",
            "must list 1-10 tiers",
        );
        in_range(
            &mut v,
            "program.price_floor_per_mille",
            self.price_floor_per_mille,
            100,
            1000,
        );
        let mut codes = std::collections::HashSet::new();
        for (i, t) in self.tiers.iter().enumerate() {
            let f = |name: &str| format!("program.tiers[{i}].{name}");
            check_code(&t.code, &[], &f("code"), &mut v);
            v.check(
                codes.insert(t.code.as_str()),
                f("code"),
                format!("{} is listed twice", t.code),
            );
            v.check(
                (1..=32).contains(&t.name.chars().count()),
                f("name"),
                "must be 1-32 characters",
            );
            v.check(
                t.price_per_mille >= self.price_floor_per_mille && t.price_per_mille <= 1000,
                f("price_per_mille"),
                format!(
                    "must be between the floor {} and 1000, got {}",
                    self.price_floor_per_mille, t.price_per_mille
                ),
            );
            in_range(
                &mut v,
                &f("points_multiplier_percent"),
                t.points_multiplier_percent,
                100,
                1000,
            );
            v.check(t.benefits.len() <= 16, f("benefits"), "at most 16 benefits");
            for (j, b) in t.benefits.iter().enumerate() {
                v.check(
                    (1..=64).contains(&b.chars().count()),
                    format!("program.tiers[{i}].benefits[{j}]"),
                    "must be 1-64 characters",
                );
            }
            v.check(
                t.min_spend_fen >= 0 && t.min_spend_fen <= 100_000_000_000,
                f("min_spend_fen"),
                "must be 0-100000000000",
            );
            v.check(
                t.min_order_count >= 0 && t.min_order_count <= 1_000_000,
                f("min_order_count"),
                "must be 0-1000000",
            );
            if !self.basis.uses_spend() {
                v.check(
                    t.min_spend_fen == 0,
                    f("min_spend_fen"),
                    "must be 0 when tiers are reached by order count",
                );
            }
            if !self.basis.uses_orders() {
                v.check(
                    t.min_order_count == 0,
                    f("min_order_count"),
                    "must be 0 when tiers are reached by spend",
                );
            }
            if i == 0 {
                v.check(
                    t.min_spend_fen == 0 && t.min_order_count == 0,
                    f("min_spend_fen"),
                    "the base tier must have no thresholds",
                );
                continue;
            }
            let below = &self.tiers[i - 1];
            if self.basis.uses_spend() {
                v.check(
                    t.min_spend_fen > below.min_spend_fen,
                    f("min_spend_fen"),
                    format!(
                        "overlaps tier {}: must be above its {}",
                        below.code, below.min_spend_fen
                    ),
                );
            }
            if self.basis.uses_orders() {
                v.check(
                    t.min_order_count > below.min_order_count,
                    f("min_order_count"),
                    format!(
                        "overlaps tier {}: must be above its {}",
                        below.code, below.min_order_count
                    ),
                );
            }
            v.check(
                t.price_per_mille <= below.price_per_mille,
                f("price_per_mille"),
                format!(
                    "must not be dearer than tier {} ({})",
                    below.code, below.price_per_mille
                ),
            );
        }
        in_range(
            &mut v,
            "program.qualification_window_days",
            self.qualification_window_days,
            30,
            1095,
        );
        in_range(
            &mut v,
            "program.downgrade_grace_days",
            self.downgrade_grace_days,
            0,
            365,
        );
        let e = &self.earning;
        in_range(
            &mut v,
            "program.earning.points_per_yuan",
            e.points_per_yuan,
            0,
            100,
        );
        in_range(
            &mut v,
            "program.earning.review_points",
            e.review_points,
            0,
            100_000,
        );
        in_range(
            &mut v,
            "program.earning.referral_points",
            e.referral_points,
            0,
            100_000,
        );
        in_range(
            &mut v,
            "program.earning.check_in_points",
            e.check_in_points,
            0,
            10_000,
        );
        in_range(
            &mut v,
            "program.earning.birthday_multiplier_percent",
            e.birthday_multiplier_percent,
            100,
            1000,
        );
        in_range(
            &mut v,
            "program.points_lifetime_days",
            self.points_lifetime_days,
            0,
            3650,
        );
        in_range(
            &mut v,
            "program.return_window_days",
            self.return_window_days,
            0,
            90,
        );
        in_range(
            &mut v,
            "program.expiry_warning_days",
            self.expiry_warning_days,
            1,
            90,
        );
        v.check(
            self.time_zone.parse::<chrono_tz::Tz>().is_ok(),
            "program.time_zone",
            "must be an IANA time zone such as Asia/Shanghai",
        );
        v.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(p: &Program) -> Vec<String> {
        match p.validate() {
            Ok(()) => Vec::new(),
            Err(f) => f.violations.iter().map(|v| v.field.clone()).collect(),
        }
    }

    #[test]
    fn the_default_program_is_valid() {
        assert_eq!(fields(&Program::default()), Vec::<String>::new());
    }

    #[test]
    fn overlapping_thresholds_are_named() {
        let mut p = Program::default();
        p.tiers[2].min_spend_fen = p.tiers[1].min_spend_fen;
        assert_eq!(fields(&p), vec!["program.tiers[2].min_spend_fen"]);
    }

    #[test]
    fn a_discount_below_the_floor_is_refused() {
        let mut p = Program::default();
        p.tiers[3].price_per_mille = 650;
        assert_eq!(fields(&p), vec!["program.tiers[3].price_per_mille"]);
        p.price_floor_per_mille = 600;
        assert!(fields(&p).is_empty());
    }

    #[test]
    fn a_higher_tier_cannot_be_dearer() {
        let mut p = Program::default();
        p.tiers[2].price_per_mille = 960;
        assert_eq!(fields(&p), vec!["program.tiers[2].price_per_mille"]);
    }

    #[test]
    fn unused_thresholds_must_be_zero() {
        let mut p = Program {
            basis: Basis::Spend,
            ..Program::default()
        };
        assert!(fields(&p).iter().all(|f| f.ends_with("min_order_count")));
        for t in &mut p.tiers {
            t.min_order_count = 0;
        }
        assert!(fields(&p).is_empty());
    }

    #[test]
    fn bad_zone_codes_and_ranges_are_named() {
        let mut p = Program {
            time_zone: "Mars/Olympus".into(),
            ..Program::default()
        };
        p.tiers[1].code = "gold".into();
        p.tiers[3].code = "GOLD".into();
        p.return_window_days = 91;
        let f = fields(&p);
        assert!(f.contains(&"program.time_zone".to_string()));
        assert!(f.contains(&"program.tiers[1].code".to_string()));
        assert!(f.contains(&"program.tiers[3].code".to_string()));
        assert!(f.contains(&"program.return_window_days".to_string()));
    }
}
