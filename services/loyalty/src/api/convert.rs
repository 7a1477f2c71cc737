//! Protobuf to domain and back.

use huitou_proto::loyalty::v1 as pb;
use huitou_proto::timestamp_from_micros;
use huitou_runtime::{Failure, FieldViolations};

use crate::domain::ledger;
use crate::domain::program::{Basis, EarningRules, Program, Tier};
use crate::store::catalog::{RewardRow, TaskRow};
use crate::store::members::{EntryRow, MemberKey, MemberView, TierChangeRow};

/// The member named by exactly one of `customer_id` and `buyer_nick`.
pub fn member_key(customer_id: &str, buyer_nick: &str) -> Result<MemberKey, Failure> {
    let check = |value: &str, field: &str| {
        if value.chars().count() > 64 || value.trim() != value {
            Err(Failure::invalid_field(
                field,
                "must be at most 64 characters without surrounding spaces",
            ))
        } else {
            Ok(())
        }
    };
    match (customer_id.is_empty(), buyer_nick.is_empty()) {
        (false, true) => {
            check(customer_id, "customer_id").map(|_| MemberKey::Id(customer_id.into()))
        }
        (true, false) => {
            check(buyer_nick, "buyer_nick").map(|_| MemberKey::Nick(buyer_nick.into()))
        }
        _ => Err(Failure::invalid_field(
            "customer_id",
            "give exactly one of customer_id and buyer_nick",
        )),
    }
}

/// The program in a request, checked.
pub fn program_in(p: Option<&pb::Program>) -> Result<Program, Failure> {
    let Some(p) = p else {
        return Err(Failure::invalid_field("program", "is required"));
    };
    let basis = match pb::QualificationBasis::try_from(p.basis) {
        Ok(pb::QualificationBasis::Spend) => Basis::Spend,
        Ok(pb::QualificationBasis::OrderCount) => Basis::OrderCount,
        Ok(pb::QualificationBasis::SpendOrOrderCount) => Basis::SpendOrOrderCount,
        _ => {
            return Err(Failure::invalid_field(
                "program.basis",
                "must be SPEND, ORDER_COUNT or SPEND_OR_ORDER_COUNT",
            ));
        }
    };
    let Some(e) = &p.earning else {
        return Err(Failure::invalid_field("program.earning", "is required"));
    };
    let program = Program {
        tiers: p
            .tiers
            .iter()
            .map(|t| Tier {
                code: t.code.clone(),
                name: t.name.clone(),
                min_spend_fen: t.min_spend_fen,
                min_order_count: t.min_order_count,
                price_per_mille: t.price_per_mille,
                points_multiplier_percent: t.points_multiplier_percent,
                benefits: t.benefits.clone(),
            })
            .collect(),
        basis,
        qualification_window_days: p.qualification_window_days,
        downgrade_grace_days: p.downgrade_grace_days,
        price_floor_per_mille: p.price_floor_per_mille,
        earning: EarningRules {
            points_per_yuan: e.points_per_yuan,
            review_points: e.review_points,
            referral_points: e.referral_points,
            check_in_points: e.check_in_points,
            birthday_multiplier_percent: e.birthday_multiplier_percent,
        },
        points_lifetime_days: p.points_lifetime_days,
        return_window_days: p.return_window_days,
        expiry_warning_days: p.expiry_warning_days,
        time_zone: p.time_zone.clone(),
    };
    program.validate()?;
    Ok(program)
}

/// The program on the wire.
pub fn program_out(p: &Program) -> pb::Program {
    pb::Program {
        tiers: p
            .tiers
            .iter()
            .map(|t| pb::Tier {
                code: t.code.clone(),
                name: t.name.clone(),
                min_spend_fen: t.min_spend_fen,
                min_order_count: t.min_order_count,
                price_per_mille: t.price_per_mille,
                points_multiplier_percent: t.points_multiplier_percent,
                benefits: t.benefits.clone(),
            })
            .collect(),
        basis: match p.basis {
            Basis::Spend => pb::QualificationBasis::Spend,
            Basis::OrderCount => pb::QualificationBasis::OrderCount,
            Basis::SpendOrOrderCount => pb::QualificationBasis::SpendOrOrderCount,
        } as i32,
        qualification_window_days: p.qualification_window_days,
        downgrade_grace_days: p.downgrade_grace_days,
        price_floor_per_mille: p.price_floor_per_mille,
        earning: Some(pb::EarningRules {
            points_per_yuan: p.earning.points_per_yuan,
            review_points: p.earning.review_points,
            referral_points: p.earning.referral_points,
            check_in_points: p.earning.check_in_points,
            birthday_multiplier_percent: p.earning.birthday_multiplier_percent,
        }),
        points_lifetime_days: p.points_lifetime_days,
        return_window_days: p.return_window_days,
        expiry_warning_days: p.expiry_warning_days,
        time_zone: p.time_zone.clone(),
    }
}

/// Days of upcoming expiries shown with a member.
const UPCOMING_DAYS: i32 = 90;

/// A member on the wire.
pub fn member(program: &Program, v: &MemberView) -> pb::Member {
    let m = &v.row;
    let tier = program.tier_or_base(&m.tier_code);
    let next = program.tiers.get(tier + 1);
    let gap = |need: i64, have: i64| (need - have).max(0);
    let horizon = v.now + crate::domain::days(UPCOMING_DAYS);
    let mut expiries: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
    for l in &v.lots {
        if let Some(e) = l.expire_at.filter(|e| *e > v.now && *e <= horizon) {
            *expiries.entry(e).or_default() += l.remaining;
        }
    }
    pb::Member {
        customer_id: m.customer_id.clone(),
        buyer_nick: m.buyer_nick.clone(),
        tier_code: program.tiers[tier].code.clone(),
        tier_name: program.tiers[tier].name.clone(),
        tier_since_time: Some(timestamp_from_micros(m.tier_since)),
        requalify_time: Some(timestamp_from_micros(m.requalify_at)),
        tier_drop_time: m.drop_at.map(timestamp_from_micros),
        tier_drop_code: m.drop_to.clone().unwrap_or_default(),
        balance_points: m.balance,
        available_points: ledger::available(&v.lots, v.now),
        pending_points: ledger::pending(&v.lots, v.now),
        window_spend_fen: v.window.spend_fen,
        window_order_count: v.window.order_count,
        paid_order_count: m.paid_order_count,
        next_tier_code: next.map(|t| t.code.clone()).unwrap_or_default(),
        next_tier_spend_gap_fen: next.map_or(0, |t| gap(t.min_spend_fen, v.window.spend_fen)),
        next_tier_order_gap: next.map_or(0, |t| gap(t.min_order_count, v.window.order_count)),
        upcoming_expiries: expiries
            .into_iter()
            .map(|(at, points)| pb::PointsExpiry {
                points,
                expire_time: Some(timestamp_from_micros(at)),
            })
            .collect(),
    }
}

/// A ledger entry on the wire.
pub fn entry(e: &EntryRow) -> pb::LedgerEntry {
    pb::LedgerEntry {
        entry_id: e.id.clone(),
        kind: e.kind,
        points: e.points,
        balance_after: e.balance_after,
        reason: e.reason.clone(),
        source_event_id: e.source_event_id.clone(),
        order_no: e.order_no.clone(),
        actor: e.actor.clone(),
        available_time: e.available_at.map(timestamp_from_micros),
        expire_time: e.expire_at.map(timestamp_from_micros),
        create_time: Some(timestamp_from_micros(e.created_at)),
    }
}

/// A tier change on the wire.
pub fn tier_change(c: &TierChangeRow) -> pb::TierChange {
    pb::TierChange {
        from_tier_code: c.from_code.clone(),
        to_tier_code: c.to_code.clone(),
        reason: c.reason.clone(),
        change_time: Some(timestamp_from_micros(c.created_at)),
    }
}

/// A reward in a request, checked.
pub fn reward_in(r: Option<&pb::Reward>) -> Result<RewardRow, Failure> {
    let Some(r) = r else {
        return Err(Failure::invalid_field("reward", "is required"));
    };
    let mut v = FieldViolations::new();
    crate::domain::program::check_code(&r.code, &['-'], "reward.code", &mut v);
    v.check(
        (1..=64).contains(&r.name.chars().count()),
        "reward.name",
        "must be 1-64 characters",
    );
    let kind = pb::RewardKind::try_from(r.kind).unwrap_or(pb::RewardKind::Unspecified);
    v.check(
        kind != pb::RewardKind::Unspecified,
        "reward.kind",
        "must be COUPON, GIFT or FREE_SHIPPING_CARD",
    );
    v.check(
        (1..=100_000_000).contains(&r.points_cost),
        "reward.points_cost",
        "must be 1-100000000",
    );
    v.check(
        r.stock.is_none_or(|s| (0..=100_000_000).contains(&s)),
        "reward.stock",
        "must be 0-100000000 or absent for unlimited",
    );
    match kind {
        pb::RewardKind::Coupon => v.check(
            !r.coupon_template_id.is_empty() && r.coupon_template_id.len() <= 64,
            "reward.coupon_template_id",
            "a coupon reward needs a coupon template id of at most 64 characters",
        ),
        pb::RewardKind::FreeShippingCard => v.check(
            (1..=100).contains(&r.free_shipping_orders),
            "reward.free_shipping_orders",
            "a free-shipping card covers 1-100 orders",
        ),
        _ => {}
    }
    v.finish()?;
    Ok(RewardRow {
        code: r.code.clone(),
        name: r.name.clone(),
        kind: r.kind,
        points_cost: r.points_cost,
        stock: r.stock,
        coupon_template_id: r.coupon_template_id.clone(),
        free_shipping_orders: if kind == pb::RewardKind::FreeShippingCard {
            r.free_shipping_orders
        } else {
            0
        },
        active: i32::from(r.active),
    })
}

/// A reward on the wire.
pub fn reward_out(r: &RewardRow) -> pb::Reward {
    pb::Reward {
        code: r.code.clone(),
        name: r.name.clone(),
        kind: r.kind,
        points_cost: r.points_cost,
        stock: r.stock,
        coupon_template_id: r.coupon_template_id.clone(),
        free_shipping_orders: r.free_shipping_orders,
        active: r.active != 0,
    }
}

/// A fulfilment task on the wire.
pub fn task(t: &TaskRow) -> pb::FulfilmentTask {
    pb::FulfilmentTask {
        task_id: t.id.clone(),
        customer_id: t.customer_id.clone(),
        reward_code: t.reward_code.clone(),
        reward_name: t.reward_name.clone(),
        exchange_id: t.exchange_id.clone(),
        done: t.done != 0,
        carrier: t.carrier.clone(),
        tracking_number: t.tracking_number.clone(),
        create_time: Some(timestamp_from_micros(t.created_at)),
        done_time: t.done_at.map(timestamp_from_micros),
    }
}
