//! A template as the service holds it: the contract message as stored, and
//! the rules read out of it once. Checking a new template field by field
//! lives here too, so a stored template always reads back.

use std::collections::BTreeSet;

use chrono_tz::Tz;
use huitou_proto::coupon::v1 as pb;
use huitou_proto::coupon::v1::coupon_template::{Benefit as PbBenefit, Validity as PbValidity};
use huitou_proto::micros_from_timestamp;
use huitou_runtime::FieldViolations;

use crate::domain::checkout::Terms;
use crate::domain::discount::{Benefit, Scope};
use crate::domain::rules::{Audience, Validity};

/// The time zone agents' days are counted in unless a template names one.
pub const DEFAULT_TIME_ZONE: &str = "Asia/Shanghai";

const MAX_FEN: i64 = 100_000_000;
const MAX_SCOPE_ENTRIES: usize = 1000;
const MAX_STOCK: i64 = 100_000_000;

/// A template's rules, read from its stored message.
#[derive(Debug, Clone)]
pub struct Template {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// What checkout uses.
    pub terms: Terms,
    /// When issued coupons can be used.
    pub validity: Validity,
    /// Who may receive it.
    pub audience: Audience,
    /// Coupons one customer may receive; 0 for no limit.
    pub per_customer_limit: i64,
    /// Coupons one agent may issue per day; 0 when agents may not.
    pub agent_daily_budget: i64,
    /// Where agents' days are counted.
    pub time_zone: Tz,
    /// Whether it issues now.
    pub active: bool,
    /// Whether it has a stock limit.
    pub has_stock: bool,
    /// The message as stored (with output fields empty).
    pub message: pb::CouponTemplate,
}

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().map(|s| s.trim().to_owned()).collect()
}

/// The benefit of a checked message.
fn benefit(b: Option<&PbBenefit>) -> Benefit {
    match b {
        Some(PbBenefit::AmountOff(a)) => Benefit::AmountOff(a.amount_fen),
        Some(PbBenefit::Threshold(t)) => Benefit::Threshold {
            threshold_fen: t.threshold_fen,
            off_fen: t.amount_fen,
        },
        Some(PbBenefit::PercentOff(p)) => Benefit::PercentOff {
            per_mille: i64::from(p.per_mille),
            cap_fen: p.cap_fen,
        },
        Some(PbBenefit::FreeShipping(f)) => Benefit::FreeShipping { cap_fen: f.cap_fen },
        Some(PbBenefit::RedPacket(r)) => Benefit::RedPacket(r.amount_fen),
        None => Benefit::AmountOff(0),
    }
}

fn validity(v: Option<&PbValidity>) -> Validity {
    match v {
        Some(PbValidity::Window(w)) => Validity::Window {
            from: w
                .start_time
                .as_ref()
                .and_then(micros_from_timestamp)
                .unwrap_or(0),
            until: w
                .end_time
                .as_ref()
                .and_then(micros_from_timestamp)
                .unwrap_or(0),
        },
        Some(PbValidity::ValidDaysAfterIssue(d)) => Validity::DaysAfterIssue(*d),
        None => Validity::DaysAfterIssue(0),
    }
}

impl Template {
    /// The rules of a stored message; `active` and the budget come from
    /// their own columns, which UpdateTemplate changes.
    pub fn from_message(message: pb::CouponTemplate) -> Self {
        let scope = message.scope.clone().unwrap_or_default();
        let audience = message.audience.clone().unwrap_or_default();
        Self {
            id: message.template_id.clone(),
            name: message.name.clone(),
            terms: Terms {
                benefit: benefit(message.benefit.as_ref()),
                scope: Scope {
                    categories: set(&scope.categories),
                    skus: set(&scope.skus),
                    excluded_skus: set(&scope.excluded_skus),
                },
                min_spend_fen: message.min_spend_fen,
                stacks_with_tier_discount: message.stacks_with_tier_discount,
                stacks_with_other_coupons: message.stacks_with_other_coupons,
                shareable: message.shareable,
            },
            validity: validity(message.validity.as_ref()),
            audience: Audience {
                new_buyers_only: audience.new_buyers_only,
                returning_buyers_only: audience.returning_buyers_only,
                tier_codes: set(&audience.tier_codes),
            },
            per_customer_limit: i64::from(message.per_customer_limit),
            agent_daily_budget: i64::from(message.agent_daily_budget),
            time_zone: message
                .time_zone
                .parse()
                .unwrap_or(chrono_tz::Asia::Shanghai),
            active: message.active,
            has_stock: message.stock.is_some(),
            message,
        }
    }

    /// The window of a coupon issued at `issued_at`.
    pub fn window(&self, issued_at: i64) -> (i64, i64) {
        self.validity.window(issued_at)
    }

    /// Today as YYYYMMDD in the template's time zone, for agents' budgets.
    pub fn day_of(&self, micros: i64) -> i32 {
        use chrono::{Datelike, TimeZone};
        let local = self.time_zone.timestamp_micros(micros).single();
        local.map_or(0, |d| {
            d.year() * 10_000 + d.month() as i32 * 100 + d.day() as i32
        })
    }
}

fn fen(v: &mut FieldViolations, value: i64, field: &str, min: i64) {
    v.check(
        (min..=MAX_FEN).contains(&value),
        field,
        format!("must be {min}-{MAX_FEN} fen"),
    );
}

fn scope_list(v: &mut FieldViolations, items: &[String], field: &str) {
    v.check(
        items.len() <= MAX_SCOPE_ENTRIES,
        field,
        format!("at most {MAX_SCOPE_ENTRIES} entries"),
    );
    for (i, s) in items.iter().enumerate() {
        if s.trim().is_empty() || s.chars().count() > 64 {
            v.add(format!("{field}[{i}]"), "must be 1-64 characters");
        }
    }
}

/// Checks a template to be created, naming every bad field, and returns
/// it ready to store: trimmed, defaults filled, output fields cleared.
pub fn check_new(
    t: Option<&pb::CouponTemplate>,
    now: i64,
) -> Result<pb::CouponTemplate, huitou_runtime::Failure> {
    let mut v = FieldViolations::new();
    let Some(t) = t else {
        v.add("template", "is required");
        return Err(v.into_failure());
    };
    let mut t = t.clone();
    t.name = t.name.trim().to_owned();
    v.check(
        (1..=60).contains(&t.name.chars().count()),
        "template.name",
        "must be 1-60 characters",
    );
    v.check(
        t.description.chars().count() <= 500,
        "template.description",
        "at most 500 characters",
    );
    match &t.benefit {
        None => v.add(
            "template.benefit",
            "set one of amount_off, threshold, percent_off, free_shipping, red_packet",
        ),
        Some(PbBenefit::AmountOff(a)) => {
            fen(&mut v, a.amount_fen, "template.amount_off.amount_fen", 1)
        }
        Some(PbBenefit::RedPacket(r)) => {
            fen(&mut v, r.amount_fen, "template.red_packet.amount_fen", 1)
        }
        Some(PbBenefit::Threshold(th)) => {
            fen(&mut v, th.amount_fen, "template.threshold.amount_fen", 1);
            fen(
                &mut v,
                th.threshold_fen,
                "template.threshold.threshold_fen",
                1,
            );
            v.check(
                th.threshold_fen > th.amount_fen,
                "template.threshold.threshold_fen",
                "must be above amount_fen (满 threshold 减 amount)",
            );
        }
        Some(PbBenefit::PercentOff(p)) => {
            v.check(
                (1..=999).contains(&p.per_mille),
                "template.percent_off.per_mille",
                "must be 1-999 thousandths off",
            );
            fen(&mut v, p.cap_fen, "template.percent_off.cap_fen", 0);
        }
        Some(PbBenefit::FreeShipping(f)) => {
            fen(&mut v, f.cap_fen, "template.free_shipping.cap_fen", 0);
        }
    }
    if let Some(scope) = &t.scope {
        scope_list(&mut v, &scope.categories, "template.scope.categories");
        scope_list(&mut v, &scope.skus, "template.scope.skus");
        scope_list(&mut v, &scope.excluded_skus, "template.scope.excluded_skus");
    }
    fen(&mut v, t.min_spend_fen, "template.min_spend_fen", 0);
    match &t.validity {
        None => v.add("template.validity", "set window or valid_days_after_issue"),
        Some(PbValidity::ValidDaysAfterIssue(d)) => v.check(
            (1..=366).contains(d),
            "template.valid_days_after_issue",
            "must be 1-366 days",
        ),
        Some(PbValidity::Window(w)) => {
            let start = w.start_time.as_ref().and_then(micros_from_timestamp);
            let end = w.end_time.as_ref().and_then(micros_from_timestamp);
            match (start, end) {
                (Some(s), Some(e)) => {
                    v.check(
                        e > s,
                        "template.window.end_time",
                        "must be after start_time",
                    );
                    v.check(e > now, "template.window.end_time", "must be in the future");
                }
                _ => v.add(
                    "template.window",
                    "start_time and end_time are both required",
                ),
            }
        }
    }
    v.check(
        (0..=1000).contains(&t.per_customer_limit),
        "template.per_customer_limit",
        "must be 0 (no limit) to 1000",
    );
    if let Some(stock) = t.stock {
        v.check(
            (1..=MAX_STOCK).contains(&stock),
            "template.stock",
            format!("must be 1-{MAX_STOCK}, or unset for no limit"),
        );
    }
    v.check(
        (0..=100_000).contains(&t.agent_daily_budget),
        "template.agent_daily_budget",
        "must be 0-100000",
    );
    if let Some(a) = &t.audience {
        v.check(
            !(a.new_buyers_only && a.returning_buyers_only),
            "template.audience",
            "new_buyers_only and returning_buyers_only exclude each other",
        );
        scope_list(&mut v, &a.tier_codes, "template.audience.tier_codes");
    }
    if t.time_zone.is_empty() {
        t.time_zone = DEFAULT_TIME_ZONE.to_owned();
    }
    v.check(
        t.time_zone.parse::<Tz>().is_ok(),
        "template.time_zone",
        "must be an IANA time zone such as Asia/Shanghai",
    );
    v.finish()?;
    t.template_id.clear();
    t.active = true;
    t.issued = 0;
    t.remaining = None;
    t.create_time = None;
    t.update_time = None;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> pb::CouponTemplate {
        pb::CouponTemplate {
            name: "满299减30".into(),
            benefit: Some(PbBenefit::Threshold(pb::ThresholdOff {
                threshold_fen: 29_900,
                amount_fen: 3_000,
            })),
            validity: Some(PbValidity::ValidDaysAfterIssue(30)),
            ..Default::default()
        }
    }

    #[test]
    fn a_good_template_reads_back_with_defaults() {
        let t = check_new(Some(&valid()), 0).unwrap_or_default();
        assert_eq!(t.time_zone, DEFAULT_TIME_ZONE);
        let rules = Template::from_message(t);
        assert_eq!(
            rules.terms.benefit,
            Benefit::Threshold {
                threshold_fen: 29_900,
                off_fen: 3_000
            }
        );
        assert_eq!(rules.validity, Validity::DaysAfterIssue(30));
        // 2026-11-24 01:00 in Shanghai is still the 23rd in UTC.
        assert_eq!(rules.day_of(1_795_453_200_000_000), 20_261_124);
    }

    #[test]
    fn every_bad_field_is_named() {
        let bad = pb::CouponTemplate {
            name: " ".into(),
            benefit: Some(PbBenefit::Threshold(pb::ThresholdOff {
                threshold_fen: 100,
                amount_fen: 300,
            })),
            per_customer_limit: -1,
            stock: Some(0),
            time_zone: "Mars/Olympus".into(),
            audience: Some(pb::Audience {
                new_buyers_only: true,
                returning_buyers_only: true,
                tier_codes: vec![],
            }),
            ..Default::default()
        };
        let Err(f) = check_new(Some(&bad), 0) else {
            panic!("accepted a bad template");
        };
        let fields: Vec<&str> = f.violations.iter().map(|v| v.field.as_str()).collect();
        for field in [
            "template.name",
            "template.threshold.threshold_fen",
            "template.validity",
            "template.per_customer_limit",
            "template.stock",
            "template.audience",
            "template.time_zone",
        ] {
            assert!(fields.contains(&field), "{field} not in {fields:?}");
        }
    }
}
