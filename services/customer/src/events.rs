//! The events this service emits, built from domain values.

use huitou_proto::events::v1::event_envelope::Payload;
use huitou_proto::events::v1::{
    CustomerCreated, CustomerErased, CustomerUpdated, EventEnvelope, OrderClosed, OrderCreated,
    OrderImported, OrderLine, OrderPaid, OrderReceived, OrderRefunded, OrderReviewed, OrderShipped,
    OrderSnapshot,
};
use huitou_proto::timestamp_from_micros;

use crate::domain::customer::{Customer, channel_name};
use crate::domain::order::{Change, Order};

/// The name this service signs its events with.
pub const SOURCE: &str = "customer";

fn envelope(shop_id: &str, payload: Payload) -> EventEnvelope {
    huitou_storage::outbox::event(SOURCE, shop_id, payload)
}

/// The snapshot every order event carries.
pub fn snapshot(order: &Order, paid_order_sequence: i64) -> OrderSnapshot {
    OrderSnapshot {
        order_id: order.id.clone(),
        order_no: order.order_no.clone(),
        customer_id: order.customer_id.clone(),
        status: order.status.event_name().into(),
        lines: order
            .items
            .iter()
            .map(|i| OrderLine {
                sku: i.sku.clone(),
                category: i.category.clone(),
                quantity: i.quantity,
                unit_price_fen: i.unit_price_fen,
            })
            .collect(),
        goods_fen: order.goods_fen(),
        discount_fen: order.discount_fen,
        shipping_fen: order.shipping_fen,
        payable_fen: order.payable_fen(),
        refunded_fen: order.refunded_fen,
        coupon_codes: order.coupon_codes.clone(),
        create_time: Some(timestamp_from_micros(order.created_at)),
        pay_time: order.paid_at.map(timestamp_from_micros),
        paid_order_sequence,
        imported: order.import_id.is_some(),
    }
}

/// A customer was created.
pub fn customer_created(shop_id: &str, customer: &Customer) -> EventEnvelope {
    envelope(
        shop_id,
        Payload::CustomerCreated(CustomerCreated {
            customer_id: customer.id.clone(),
            buyer_nick: customer.buyer_nick.clone(),
        }),
    )
}

/// A customer changed.
pub fn customer_updated(
    shop_id: &str,
    customer: &Customer,
    changed_fields: Vec<String>,
) -> EventEnvelope {
    envelope(
        shop_id,
        Payload::CustomerUpdated(CustomerUpdated {
            customer_id: customer.id.clone(),
            changed_fields,
            birthday_month: customer.birthday.map(|b| b.month).unwrap_or(0),
            birthday_day: customer.birthday.map(|b| b.day).unwrap_or(0),
            consented_channels: customer
                .consents
                .iter()
                .filter(|(_, c)| c.granted)
                .filter_map(|(ch, _)| channel_name(*ch).map(str::to_owned))
                .collect(),
        }),
    )
}

/// A customer was erased.
pub fn customer_erased(shop_id: &str, customer_id: &str) -> EventEnvelope {
    envelope(
        shop_id,
        Payload::CustomerErased(CustomerErased {
            customer_id: customer_id.to_owned(),
        }),
    )
}

/// An order was placed.
pub fn order_created(shop_id: &str, order: &Order) -> EventEnvelope {
    envelope(
        shop_id,
        Payload::OrderCreated(OrderCreated {
            order: Some(snapshot(order, 0)),
        }),
    )
}

/// A historic order was imported.
pub fn order_imported(
    shop_id: &str,
    order: &Order,
    import_id: &str,
    paid_order_sequence: i64,
) -> EventEnvelope {
    envelope(
        shop_id,
        Payload::OrderImported(OrderImported {
            order: Some(snapshot(order, paid_order_sequence)),
            import_id: import_id.to_owned(),
        }),
    )
}

/// The event of an order's change.
pub fn order_changed(
    shop_id: &str,
    order: &Order,
    change: &Change,
    paid_order_sequence: i64,
) -> EventEnvelope {
    let snap = Some(snapshot(order, paid_order_sequence));
    let payload = match change {
        Change::Paid(_) => Payload::OrderPaid(OrderPaid { order: snap }),
        Change::Shipped => {
            let (carrier, tracking_number) = order
                .shipment
                .as_ref()
                .map(|s| (s.carrier.clone(), s.tracking_number.clone()))
                .unwrap_or_default();
            Payload::OrderShipped(OrderShipped {
                order: snap,
                carrier,
                tracking_number,
            })
        }
        Change::Received => Payload::OrderReceived(OrderReceived { order: snap }),
        Change::Reviewed => {
            let (rating, text_length) = order
                .review
                .as_ref()
                .map(|r| {
                    (
                        r.rating.event_name().to_owned(),
                        r.text.chars().count() as i32,
                    )
                })
                .unwrap_or_default();
            Payload::OrderReviewed(OrderReviewed {
                order: snap,
                rating,
                text_length,
            })
        }
        Change::Refunded { delta, full } => {
            let last = order.refunds.last();
            Payload::OrderRefunded(OrderRefunded {
                order: snap,
                refund_no: last.map(|r| r.refund_no.clone()).unwrap_or_default(),
                amount_fen: delta.refunded_fen,
                full: *full,
                goods_returned: last.is_some_and(|r| r.goods_returned),
            })
        }
        Change::Closed => Payload::OrderClosed(OrderClosed { order: snap }),
    };
    envelope(shop_id, payload)
}
