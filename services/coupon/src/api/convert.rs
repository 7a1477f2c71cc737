//! Protobuf to domain and back, with the checks of every field that comes
//! in.

use huitou_proto::coupon::v1 as pb;
use huitou_proto::timestamp_from_micros;
use huitou_runtime::{Failure, FieldViolations};

use crate::domain::checkout::{State, hold_stands};
use crate::domain::code;
use crate::domain::discount::{Cart, Line};
use crate::store::coupons::CouponRow;
use crate::store::templates::{StockCount, Times};
use crate::template::Template;

/// Most lines in a cart.
pub const MAX_CART_LINES: usize = 200;
const MAX_FEN: i64 = 100_000_000;

/// The canonical code of a typed one; a typo is refused before any lookup.
/// A share payload (`coupon:CODE`) is accepted as its code.
pub fn code_in(typed: &str, field: &str) -> Result<String, Failure> {
    let typed = typed.strip_prefix("coupon:").unwrap_or(typed);
    code::parse(typed).map_err(|e| {
        let mut f = Failure::invalid_field(field, e.describe());
        if e == code::CodeError::Check {
            f.reason = "CODE_TYPO";
        }
        f
    })
}

/// Checks a customer id field.
pub fn customer_id(value: &str, field: &str, v: &mut FieldViolations) {
    v.check(
        !value.trim().is_empty() && value.chars().count() <= 64 && value.trim() == value,
        field,
        "must be 1-64 characters without surrounding spaces",
    );
}

/// Checks an order number field.
pub fn order_no(value: &str, field: &str, v: &mut FieldViolations) {
    v.check(
        !value.trim().is_empty() && value.chars().count() <= 64 && value.trim() == value,
        field,
        "must be 1-64 characters without surrounding spaces",
    );
}

/// A cart as checked: the domain cart, whether tier prices are in it, and
/// whether other coupons come with it.
pub struct CheckedCart {
    /// The lines and shipping.
    pub cart: Cart,
    /// Prices carry a tier discount.
    pub tier_discount_applied: bool,
    /// Other coupons on the order.
    pub other_coupons: bool,
    /// Lines and shipping, fen.
    pub total_fen: i64,
}

/// Checks a cart: every line's fields, and that the total adds up. Field
/// names are only formatted for bad lines (checkout path).
pub fn cart_in(cart: Option<&pb::Cart>, v: &mut FieldViolations) -> CheckedCart {
    let empty = pb::Cart::default();
    let c = match cart {
        Some(c) => c,
        None => {
            v.add("cart", "is required");
            &empty
        }
    };
    if cart.is_some() && !(1..=MAX_CART_LINES).contains(&c.lines.len()) {
        v.add("cart.lines", format!("a cart has 1-{MAX_CART_LINES} lines"));
    }
    let mut lines = Vec::with_capacity(c.lines.len());
    let mut sum: i64 = 0;
    for (i, l) in c.lines.iter().enumerate() {
        let mut ok = true;
        if l.sku.trim().is_empty() || (l.sku.len() > 64 && l.sku.chars().count() > 64) {
            v.add(format!("cart.lines[{i}].sku"), "must be 1-64 characters");
        }
        if l.category.len() > 64 && l.category.chars().count() > 64 {
            v.add(format!("cart.lines[{i}].category"), "at most 64 characters");
        }
        if !(1..=10_000).contains(&l.quantity) {
            v.add(format!("cart.lines[{i}].quantity"), "must be 1-10000");
            ok = false;
        }
        if !(0..=MAX_FEN).contains(&l.unit_price_fen) {
            v.add(
                format!("cart.lines[{i}].unit_price_fen"),
                format!("must be 0-{MAX_FEN} fen"),
            );
            ok = false;
        }
        if ok {
            sum += l.quantity * l.unit_price_fen;
        }
        lines.push(Line {
            sku: l.sku.clone(),
            category: l.category.clone(),
            quantity: l.quantity,
            unit_price_fen: l.unit_price_fen,
        });
    }
    if !(0..=MAX_FEN).contains(&c.shipping_fen) {
        v.add("cart.shipping_fen", format!("must be 0-{MAX_FEN} fen"));
    } else if cart.is_some() && v.is_empty() && c.total_fen != sum + c.shipping_fen {
        v.add(
            "cart.total_fen",
            format!(
                "is {} but the lines and shipping add up to {}",
                c.total_fen,
                sum + c.shipping_fen
            ),
        );
    }
    if c.other_coupon_codes.len() > 20 {
        v.add("cart.other_coupon_codes", "at most 20");
    }
    CheckedCart {
        cart: Cart {
            lines,
            shipping_fen: c.shipping_fen,
        },
        tier_discount_applied: c.tier_discount_applied,
        other_coupons: !c.other_coupon_codes.is_empty(),
        total_fen: sum + c.shipping_fen,
    }
}

/// A coupon for callers.
pub fn coupon_out(row: &CouponRow, template: Option<&Template>, now: i64) -> pb::Coupon {
    let stored = row.state();
    // A lapsed hold shows as what it is: usable again.
    let state = match stored {
        State::Held if !hold_stands(&row.standing(), now) => State::Active,
        s => s,
    };
    pb::Coupon {
        code: code::display(&row.code),
        template_id: row.template_id.clone(),
        template_name: template.map(|t| t.name.clone()).unwrap_or_default(),
        customer_id: row.customer_id.clone(),
        state: match state {
            State::Active => pb::CouponState::Active,
            State::Held => pb::CouponState::Held,
            State::Redeemed => pb::CouponState::Redeemed,
            State::Expired => pb::CouponState::Expired,
        } as i32,
        valid_from_time: Some(timestamp_from_micros(row.valid_from)),
        valid_until_time: Some(timestamp_from_micros(row.valid_until)),
        issue_reason: row.issue_reason.clone(),
        issue_time: Some(timestamp_from_micros(row.issued_at)),
        order_no: if state == State::Active {
            String::new()
        } else {
            row.order_no.clone()
        },
        hold_expire_time: match state {
            State::Held => row.hold_until.map(timestamp_from_micros),
            _ => None,
        },
        discount_fen: row.discount_fen,
        redeem_time: row.redeemed_at.map(timestamp_from_micros),
        redeemed_by_customer_id: row.redeemed_by.clone(),
        share_payload: if template.is_some_and(|t| t.terms.shareable) {
            format!("coupon:{}", code::display(&row.code))
        } else {
            String::new()
        },
    }
}

/// A template for callers.
pub fn template_out(t: &Template, times: Times, stock: StockCount) -> pb::CouponTemplate {
    pb::CouponTemplate {
        template_id: t.id.clone(),
        name: t.name.clone(),
        active: t.active,
        agent_daily_budget: t.agent_daily_budget as i32,
        issued: stock.issued,
        remaining: stock.remaining,
        // The budget as it stands now, stock added since creation included.
        stock: stock.remaining.map(|r| r + stock.issued),
        create_time: Some(timestamp_from_micros(times.created_at)),
        update_time: Some(timestamp_from_micros(times.updated_at)),
        ..t.message.clone()
    }
}
