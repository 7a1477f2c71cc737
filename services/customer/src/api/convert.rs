//! Generated types stop here: requests are checked and turned into domain
//! values, domain values into responses.

use std::collections::BTreeMap;

use huitou_proto::customer::v1 as pb;
use huitou_proto::{micros_from_timestamp, timestamp_from_micros};
use huitou_runtime::{Failure, FieldViolations};
use huitou_storage::now_micros;
use prost_types::Timestamp;

use crate::domain::customer::{
    Attribute, Birthday, ContactField, Customer, MAX_ATTRIBUTES, MAX_TAGS, ProfileChanges,
    check_attribute_name, check_tag, identifier, text,
};
use crate::domain::order::{Order, OrderItem, OrderStatus, Rating, Refund, Review, Shipment, Step};
use crate::store::audit::AuditEntry;
use crate::store::imports::ImportRow;
use crate::store::orders::NewOrder;
use crate::store::shops::{ApiKeyRecord, Shop};

/// Earliest acceptable business time: 2000-01-01.
const EARLIEST: i64 = 946_684_800_000_000;
/// Clock skew tolerated for times "now" from storefronts: 10 minutes.
const SKEW: i64 = 600_000_000;
/// Most lines per order.
pub const MAX_ITEMS: usize = 200;
/// Largest unit price: 10 million yuan.
const MAX_UNIT_PRICE: i64 = 1_000_000_000;
/// Largest quantity per line.
const MAX_QUANTITY: i64 = 100_000;
/// Largest order-level amount (discount, shipping): 100 million yuan.
const MAX_AMOUNT: i64 = 10_000_000_000;

/// A business time: set, in range, not in the future.
pub fn business_time(ts: Option<&Timestamp>, field: &str, v: &mut FieldViolations) -> Option<i64> {
    let ts = ts?;
    match micros_from_timestamp(ts) {
        Some(t) if t < EARLIEST => {
            v.add(field, "must not be before 2000-01-01");
            None
        }
        Some(t) if t > now_micros() + SKEW => {
            v.add(field, "must not be in the future");
            None
        }
        Some(t) => Some(t),
        None => {
            v.add(field, "is not a valid timestamp");
            None
        }
    }
}

fn required_time(ts: Option<&Timestamp>, field: &str, v: &mut FieldViolations) -> Option<i64> {
    if ts.is_none() {
        v.add(field, "is required");
    }
    business_time(ts, field, v)
}

fn ts(micros: i64) -> Option<Timestamp> {
    Some(timestamp_from_micros(micros))
}

/// Checks an id field (a Huitou id): non-empty and short.
pub fn id_field(value: &str, field: &str, v: &mut FieldViolations) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if value.len() > 64 {
        v.add(field, "must be at most 64 characters");
    }
}

/// Checks a reason for the audit log.
pub fn reason(value: &str, v: &mut FieldViolations) {
    if let Err(why) = text(value.trim(), 4, 256) {
        v.add("reason", format!("{why}: give 4-256 characters saying why"));
    }
}

/// Checks an identifier field (buyer nick, order number, ...).
pub fn ident(value: &str, field: &str, max: usize, v: &mut FieldViolations) {
    if let Err(why) = identifier(value, max) {
        v.add(field, why);
    }
}

/// Profile changes of UpsertCustomer.
pub fn profile_changes(req: &pb::UpsertCustomerRequest, v: &mut FieldViolations) -> ProfileChanges {
    let contact = ProfileChanges::contact_from(
        [
            (ContactField::Name, req.name.clone()),
            (ContactField::Phone, req.phone.clone()),
            (ContactField::Address, req.address.clone()),
            (ContactField::WechatId, req.wechat_id.clone()),
            (ContactField::Email, req.email.clone()),
        ],
        v,
        "",
    );
    let birthday = req.birthday.as_ref().and_then(|b| {
        let b = Birthday {
            year: b.year,
            month: b.month,
            day: b.day,
        };
        match b.check() {
            Ok(()) => Some(b),
            Err(why) => {
                v.add("birthday", why);
                None
            }
        }
    });
    let gender = req.gender.and_then(|g| {
        if pb::Gender::try_from(g).is_ok() {
            Some(g)
        } else {
            v.add("gender", "is not a known gender");
            None
        }
    });
    let region = req
        .region
        .as_ref()
        .and_then(|r| match text(r.trim(), 0, 64) {
            Ok(r) => Some(r.to_owned()),
            Err(why) => {
                v.add("region", why);
                None
            }
        });
    ProfileChanges {
        contact,
        birthday,
        gender,
        region,
    }
}

/// Receiver contact details of an order, normalised; invalid values are
/// violations under `prefix`.
pub fn receiver(
    contact: Option<&pb::ContactDetails>,
    prefix: &str,
    v: &mut FieldViolations,
) -> BTreeMap<ContactField, String> {
    let Some(c) = contact else {
        return BTreeMap::new();
    };
    let given = |s: &str| (!s.trim().is_empty()).then(|| s.to_owned());
    ProfileChanges::contact_from(
        [
            (ContactField::Name, given(&c.name)),
            (ContactField::Phone, given(&c.phone)),
            (ContactField::Address, given(&c.address)),
        ],
        v,
        prefix,
    )
}

/// Order lines, checked.
pub fn items(items: &[pb::OrderItem], prefix: &str, v: &mut FieldViolations) -> Vec<OrderItem> {
    if items.is_empty() {
        v.add(format!("{prefix}items"), "an order needs at least one item");
    }
    if items.len() > MAX_ITEMS {
        v.add(
            format!("{prefix}items"),
            format!("at most {MAX_ITEMS} items per order"),
        );
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let f = |name: &str| format!("{prefix}items[{i}].{name}");
            if let Err(why) = identifier(&item.sku, 64) {
                v.add(f("sku"), why);
            }
            if let Err(why) = identifier(&item.category, 32) {
                v.add(f("category"), why);
            }
            if !(1..=MAX_QUANTITY).contains(&item.quantity) {
                v.add(f("quantity"), format!("must be 1-{MAX_QUANTITY}"));
            }
            if !(0..=MAX_UNIT_PRICE).contains(&item.unit_price_fen) {
                v.add(
                    f("unit_price_fen"),
                    format!("must be 0-{MAX_UNIT_PRICE} fen"),
                );
            }
            if item.title.chars().count() > 128 {
                v.add(f("title"), "must be at most 128 characters");
            }
            OrderItem {
                sku: item.sku.clone(),
                category: item.category.clone(),
                quantity: item.quantity,
                unit_price_fen: item.unit_price_fen,
                title: item.title.clone(),
            }
        })
        .collect()
}

/// Checks order amounts against the lines: discount within the goods
/// amount, payable = goods - discount + shipping.
pub fn amounts(
    items: &[OrderItem],
    discount: i64,
    shipping: i64,
    payable: i64,
    prefix: &str,
    v: &mut FieldViolations,
) {
    let goods = crate::domain::order::goods_fen(items);
    if !(0..=MAX_AMOUNT).contains(&discount) {
        v.add(
            format!("{prefix}discount_fen"),
            format!("must be 0-{MAX_AMOUNT} fen"),
        );
    } else if discount > goods {
        v.add(
            format!("{prefix}discount_fen"),
            format!("must not exceed the goods amount of {goods} fen"),
        );
    }
    if !(0..=MAX_AMOUNT).contains(&shipping) {
        v.add(
            format!("{prefix}shipping_fen"),
            format!("must be 0-{MAX_AMOUNT} fen"),
        );
    }
    let expected = goods - discount + shipping;
    if payable != expected {
        v.add(
            format!("{prefix}payable_fen"),
            format!("must equal goods {goods} - discount {discount} + shipping {shipping} = {expected} fen"),
        );
    }
}

fn coupon_codes(codes: &[String], prefix: &str, v: &mut FieldViolations) -> Vec<String> {
    if codes.len() > 20 {
        v.add(format!("{prefix}coupon_codes"), "at most 20 codes");
    }
    for (i, c) in codes.iter().enumerate() {
        if let Err(why) = identifier(c, 64) {
            v.add(format!("{prefix}coupon_codes[{i}]"), why);
        }
    }
    codes.to_vec()
}

/// RecordOrder's order.
pub fn new_order(req: &pb::RecordOrderRequest) -> Result<NewOrder, Failure> {
    let mut v = FieldViolations::new();
    ident(&req.order_no, "order_no", 64, &mut v);
    ident(&req.buyer_nick, "buyer_nick", 64, &mut v);
    let paid = match pb::OrderStatus::try_from(req.status) {
        Ok(pb::OrderStatus::Created) => false,
        Ok(pb::OrderStatus::Paid) => true,
        _ => {
            v.add(
                "status",
                "must be ORDER_STATUS_CREATED or ORDER_STATUS_PAID",
            );
            false
        }
    };
    let lines = items(&req.items, "", &mut v);
    amounts(
        &lines,
        req.discount_fen,
        req.shipping_fen,
        req.payable_fen,
        "",
        &mut v,
    );
    let codes = coupon_codes(&req.coupon_codes, "", &mut v);
    let created_at = required_time(req.create_time.as_ref(), "create_time", &mut v);
    let paid_at = if paid {
        required_time(req.pay_time.as_ref(), "pay_time", &mut v)
    } else {
        if req.pay_time.is_some() {
            v.add(
                "pay_time",
                "must be empty unless status is ORDER_STATUS_PAID",
            );
        }
        None
    };
    if let (Some(c), Some(p)) = (created_at, paid_at)
        && p < c
    {
        v.add("pay_time", "must not be before create_time");
    }
    let receiver = receiver(req.receiver.as_ref(), "receiver.", &mut v);
    v.finish()?;
    Ok(NewOrder {
        order_no: req.order_no.clone(),
        buyer_nick: req.buyer_nick.clone(),
        paid,
        items: lines,
        discount_fen: req.discount_fen,
        shipping_fen: req.shipping_fen,
        coupon_codes: codes,
        created_at: created_at.unwrap_or(0),
        paid_at,
        receiver,
    })
}

fn at_or_now(t: Option<&Timestamp>, field: &str, v: &mut FieldViolations) -> i64 {
    business_time(t, field, v).unwrap_or_else(now_micros)
}

/// PayOrder's step.
pub fn pay_step(req: &pb::PayOrderRequest) -> Result<Step, Failure> {
    let mut v = FieldViolations::new();
    ident(&req.order_no, "order_no", 64, &mut v);
    let at = at_or_now(req.pay_time.as_ref(), "pay_time", &mut v);
    v.finish()?;
    Ok(Step::Pay { at })
}

fn shipment(s: Option<&pb::Shipment>, prefix: &str, v: &mut FieldViolations) -> Option<Shipment> {
    let Some(s) = s else {
        v.add(format!("{prefix}shipment"), "is required");
        return None;
    };
    if let Err(why) = identifier(&s.carrier, 32) {
        v.add(format!("{prefix}shipment.carrier"), why);
    }
    let tracking_ok = !s.tracking_number.is_empty()
        && s.tracking_number.len() <= 40
        && s.tracking_number
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !tracking_ok {
        v.add(
            format!("{prefix}shipment.tracking_number"),
            "must be 1-40 letters, digits or '-'",
        );
    }
    Some(Shipment {
        carrier: s.carrier.clone(),
        tracking_number: s.tracking_number.clone(),
    })
}

/// ShipOrder's step.
pub fn ship_step(req: &pb::ShipOrderRequest) -> Result<Step, Failure> {
    let mut v = FieldViolations::new();
    ident(&req.order_no, "order_no", 64, &mut v);
    let shipment = shipment(req.shipment.as_ref(), "", &mut v);
    let at = at_or_now(req.ship_time.as_ref(), "ship_time", &mut v);
    v.finish()?;
    Ok(Step::Ship {
        shipment: shipment.ok_or_else(|| Failure::invalid_field("shipment", "is required"))?,
        at,
    })
}

/// ConfirmOrderReceived's step.
pub fn receive_step(req: &pb::ConfirmOrderReceivedRequest) -> Result<Step, Failure> {
    let mut v = FieldViolations::new();
    ident(&req.order_no, "order_no", 64, &mut v);
    let at = at_or_now(req.receive_time.as_ref(), "receive_time", &mut v);
    v.finish()?;
    Ok(Step::Receive { at })
}

fn rating(n: i32, field: &str, v: &mut FieldViolations) -> Option<Rating> {
    let r = Rating::from_i32(n);
    if r.is_none() {
        v.add(field, "must be REVIEW_RATING_GOOD, _NEUTRAL or _BAD");
    }
    r
}

/// ReviewOrder's step.
pub fn review_step(req: &pb::ReviewOrderRequest) -> Result<Step, Failure> {
    let mut v = FieldViolations::new();
    ident(&req.order_no, "order_no", 64, &mut v);
    let rating = rating(req.rating, "rating", &mut v);
    if let Err(why) = text(&req.text, 0, 2000) {
        v.add("text", why);
    }
    let at = at_or_now(req.review_time.as_ref(), "review_time", &mut v);
    v.finish()?;
    Ok(Step::Review(Review {
        rating: rating.unwrap_or(Rating::Good),
        text: req.text.clone(),
        at,
    }))
}

/// RefundOrder's step.
pub fn refund_step(req: &pb::RefundOrderRequest) -> Result<Step, Failure> {
    let mut v = FieldViolations::new();
    ident(&req.order_no, "order_no", 64, &mut v);
    ident(&req.refund_no, "refund_no", 64, &mut v);
    if !(1..=MAX_AMOUNT).contains(&req.amount_fen) {
        v.add("amount_fen", format!("must be 1-{MAX_AMOUNT} fen"));
    }
    if let Err(why) = text(&req.reason, 0, 256) {
        v.add("reason", why);
    }
    let at = at_or_now(req.refund_time.as_ref(), "refund_time", &mut v);
    v.finish()?;
    Ok(Step::Refund(Refund {
        refund_no: req.refund_no.clone(),
        amount_fen: req.amount_fen,
        reason: req.reason.clone(),
        goods_returned: req.goods_returned,
        at,
    }))
}

/// CloseOrder's step.
pub fn close_step(req: &pb::CloseOrderRequest) -> Result<Step, Failure> {
    let mut v = FieldViolations::new();
    ident(&req.order_no, "order_no", 64, &mut v);
    let at = at_or_now(req.close_time.as_ref(), "close_time", &mut v);
    v.finish()?;
    Ok(Step::Close { at })
}

/// One import row: the order in its final state, or what is wrong with it
/// as `(field, reason)` pairs.
pub fn import_row(row: &pb::ImportedOrder) -> Result<ImportRow, Vec<(String, String)>> {
    let mut v = FieldViolations::new();
    ident(&row.order_no, "order_no", 64, &mut v);
    ident(&row.buyer_nick, "buyer_nick", 64, &mut v);
    let status = OrderStatus::from_i32(row.status);
    if status.is_none() {
        v.add("status", "must be a known order status");
    }
    let status = status.unwrap_or(OrderStatus::Created);
    let lines = items(&row.items, "", &mut v);
    amounts(
        &lines,
        row.discount_fen,
        row.shipping_fen,
        row.payable_fen,
        "",
        &mut v,
    );
    let codes = coupon_codes(&row.coupon_codes, "", &mut v);
    let created_at = required_time(row.create_time.as_ref(), "create_time", &mut v).unwrap_or(0);
    let paid_at = if status.was_paid() {
        required_time(row.pay_time.as_ref(), "pay_time", &mut v)
    } else {
        if row.pay_time.is_some() {
            v.add("pay_time", "must be empty for unpaid or closed orders");
        }
        None
    };
    if let Some(p) = paid_at
        && p < created_at
    {
        v.add("pay_time", "must not be before create_time");
    }
    let payable = row.payable_fen;
    match status {
        OrderStatus::Refunded if row.refunded_fen != payable => {
            v.add(
                "refunded_fen",
                "must equal payable_fen for a refunded order",
            );
        }
        OrderStatus::Created | OrderStatus::Closed if row.refunded_fen != 0 => {
            v.add("refunded_fen", "must be 0 for an unpaid order");
        }
        _ if !(0..=payable.max(0)).contains(&row.refunded_fen) => {
            v.add("refunded_fen", "must be between 0 and payable_fen");
        }
        _ => {}
    }
    let shipment = match (&row.shipment, status) {
        (Some(s), _) => shipment(Some(s), "", &mut v),
        _ => None,
    };
    let review = match (&row.review, status) {
        (Some(r), OrderStatus::Reviewed | OrderStatus::Refunded) => {
            let rating = rating(r.rating, "review.rating", &mut v);
            if let Err(why) = text(&r.text, 0, 2000) {
                v.add("review.text", why);
            }
            rating.map(|rating| Review {
                rating,
                text: r.text.clone(),
                at: r
                    .create_time
                    .as_ref()
                    .and_then(micros_from_timestamp)
                    .unwrap_or(created_at),
            })
        }
        (Some(_), _) => {
            v.add("review", "only reviewed orders carry a review");
            None
        }
        (None, _) => None,
    };
    let receiver = receiver(row.receiver.as_ref(), "receiver.", &mut v);
    if let Err(f) = v.finish() {
        return Err(f
            .violations
            .into_iter()
            .map(|x| (x.field, x.description))
            .collect());
    }
    let refunds = if row.refunded_fen > 0 {
        vec![Refund {
            refund_no: "imported".into(),
            amount_fen: row.refunded_fen,
            reason: "imported".into(),
            goods_returned: false,
            at: paid_at.unwrap_or(created_at),
        }]
    } else {
        Vec::new()
    };
    Ok(ImportRow {
        row_number: row.row_number,
        order: Order {
            id: String::new(),
            order_no: row.order_no.clone(),
            customer_id: String::new(),
            buyer_nick: row.buyer_nick.clone(),
            status,
            items: lines,
            discount_fen: row.discount_fen,
            shipping_fen: row.shipping_fen,
            refunded_fen: row.refunded_fen,
            coupon_codes: codes,
            shipment,
            review,
            refunds,
            created_at,
            paid_at,
            shipped_at: None,
            received_at: None,
            closed_at: (status == OrderStatus::Closed).then_some(created_at),
            import_id: None,
        },
        receiver,
        trace: None,
    })
}

/// Tags to add and remove, checked.
pub fn tags(add: &[String], remove: &[String], v: &mut FieldViolations) {
    for (i, t) in add.iter().enumerate() {
        if let Err(why) = check_tag(t) {
            v.add(format!("add_tags[{i}]"), why);
        }
    }
    for (i, t) in remove.iter().enumerate() {
        if t.is_empty() || t.len() > 128 {
            v.add(format!("remove_tags[{i}]"), "must be a tag name");
        }
    }
    if add.len() > MAX_TAGS {
        v.add("add_tags", format!("at most {MAX_TAGS} tags"));
    }
}

/// Attributes to set, checked and converted.
pub fn attributes(
    set: &BTreeMap<String, pb::AttributeValue>,
    remove: &[String],
    v: &mut FieldViolations,
) -> BTreeMap<String, Attribute> {
    if set.len() > MAX_ATTRIBUTES {
        v.add("set", format!("at most {MAX_ATTRIBUTES} attributes"));
    }
    let mut out = BTreeMap::new();
    for (name, value) in set {
        let field = format!("set[{name}]");
        if let Err(why) = check_attribute_name(name) {
            v.add(field.clone(), why);
            continue;
        }
        use pb::attribute_value::Value as V;
        let attribute = match &value.value {
            Some(V::TextValue(s)) => match text(s, 0, 256) {
                Ok(s) => Attribute::Text(s.to_owned()),
                Err(why) => {
                    v.add(field, why);
                    continue;
                }
            },
            Some(V::IntValue(n)) => Attribute::Int(*n),
            Some(V::BoolValue(b)) => Attribute::Bool(*b),
            Some(V::TimeValue(t)) => match micros_from_timestamp(t) {
                Some(t) => Attribute::Time(t),
                None => {
                    v.add(field, "is not a valid timestamp");
                    continue;
                }
            },
            None => {
                v.add(field, "a value must be set");
                continue;
            }
        };
        out.insert(name.clone(), attribute);
    }
    for (i, name) in remove.iter().enumerate() {
        if check_attribute_name(name).is_err() {
            v.add(format!("remove[{i}]"), "must be an attribute name");
        }
        if set.contains_key(name) {
            v.add(format!("remove[{i}]"), "cannot be both set and removed");
        }
    }
    out
}

/// A customer for the wire.
pub fn customer(c: &Customer) -> pb::Customer {
    let masked = |f: ContactField| c.masked.get(&f).cloned().unwrap_or_default();
    let mut categories: Vec<pb::CategoryQuantity> = c
        .stats
        .categories
        .iter()
        .map(|(category, quantity)| pb::CategoryQuantity {
            category: category.clone(),
            quantity: *quantity,
        })
        .collect();
    categories.sort_by(|a, b| {
        b.quantity
            .cmp(&a.quantity)
            .then(a.category.cmp(&b.category))
    });
    pb::Customer {
        id: c.id.clone(),
        buyer_nick: c.buyer_nick.clone(),
        name: masked(ContactField::Name),
        phone: masked(ContactField::Phone),
        address: masked(ContactField::Address),
        wechat_id: masked(ContactField::WechatId),
        email: masked(ContactField::Email),
        birthday: c.birthday.map(|b| pb::Birthday {
            year: b.year,
            month: b.month,
            day: b.day,
        }),
        gender: c.gender,
        region: c.region.clone(),
        stats: Some(pb::CustomerStats {
            order_count: c.stats.order_count,
            item_count: c.stats.item_count,
            spent_fen: c.stats.spent_fen,
            refunded_fen: c.stats.refunded_fen,
            first_order_time: c.stats.first_order_at.and_then(ts),
            last_order_time: c.stats.last_order_at.and_then(ts),
            categories,
        }),
        tags: c.tags.clone(),
        attributes: c
            .attributes
            .iter()
            .map(|(k, a)| {
                use pb::attribute_value::Value as V;
                let value = match a {
                    Attribute::Text(s) => V::TextValue(s.clone()),
                    Attribute::Int(n) => V::IntValue(*n),
                    Attribute::Bool(b) => V::BoolValue(*b),
                    Attribute::Time(t) => V::TimeValue(timestamp_from_micros(*t)),
                };
                (k.clone(), pb::AttributeValue { value: Some(value) })
            })
            .collect(),
        consents: c
            .consents
            .iter()
            .map(|(channel, consent)| pb::Consent {
                channel: *channel,
                granted: consent.granted,
                source: consent.source.clone(),
                update_time: ts(consent.decided_at),
            })
            .collect(),
        create_time: ts(c.created_at),
        update_time: ts(c.updated_at),
        erase_time: c.erased_at.and_then(ts),
    }
}

/// An order for the wire.
pub fn order(o: &Order) -> pb::Order {
    pb::Order {
        id: o.id.clone(),
        order_no: o.order_no.clone(),
        customer_id: o.customer_id.clone(),
        buyer_nick: o.buyer_nick.clone(),
        status: o.status.as_i32(),
        items: o
            .items
            .iter()
            .map(|i| pb::OrderItem {
                sku: i.sku.clone(),
                category: i.category.clone(),
                quantity: i.quantity,
                unit_price_fen: i.unit_price_fen,
                title: i.title.clone(),
            })
            .collect(),
        goods_fen: o.goods_fen(),
        discount_fen: o.discount_fen,
        shipping_fen: o.shipping_fen,
        payable_fen: o.payable_fen(),
        refunded_fen: o.refunded_fen,
        coupon_codes: o.coupon_codes.clone(),
        shipment: o.shipment.as_ref().map(|s| pb::Shipment {
            carrier: s.carrier.clone(),
            tracking_number: s.tracking_number.clone(),
        }),
        review: o.review.as_ref().map(|r| pb::Review {
            rating: r.rating.as_i32(),
            text: r.text.clone(),
            create_time: ts(r.at),
        }),
        refunds: o
            .refunds
            .iter()
            .map(|r| pb::Refund {
                refund_no: r.refund_no.clone(),
                amount_fen: r.amount_fen,
                reason: r.reason.clone(),
                goods_returned: r.goods_returned,
                create_time: ts(r.at),
            })
            .collect(),
        create_time: ts(o.created_at),
        pay_time: o.paid_at.and_then(ts),
        ship_time: o.shipped_at.and_then(ts),
        receive_time: o.received_at.and_then(ts),
        close_time: o.closed_at.and_then(ts),
    }
}

/// An audit entry for the wire.
pub fn audit_entry(e: &AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        id: e.id.clone(),
        action: e.action,
        customer_id: e.customer_id.clone(),
        field: e.field,
        reason: e.reason.clone(),
        actor_key_id: e.actor_key_id.clone(),
        actor_role: e.actor_role.clone(),
        create_time: ts(e.created_at),
    }
}

/// A shop for the wire.
pub fn shop(s: &Shop) -> pb::Shop {
    pb::Shop {
        id: s.id.clone(),
        name: s.name.clone(),
        time_zone: s.time_zone.clone(),
        create_time: ts(s.created_at),
    }
}

/// An API key for the wire.
pub fn api_key(k: &ApiKeyRecord) -> pb::ApiKey {
    let role = match k.role.as_str() {
        "storefront" => pb::Role::Storefront,
        "operator" => pb::Role::Operator,
        "admin" => pb::Role::Admin,
        _ => pb::Role::Unspecified,
    };
    pb::ApiKey {
        id: k.id.clone(),
        role: role as i32,
        label: k.label.clone(),
        create_time: ts(k.created_at),
        revoke_time: k.revoked_at.and_then(ts),
    }
}
