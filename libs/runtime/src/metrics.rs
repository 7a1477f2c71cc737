//! The metrics every service records: RPC durations (OpenTelemetry RPC
//! conventions) and the outbox backlog; and the notification delivery queue
//! and coupon redemptions. Exported over OTLP when telemetry
//! has an endpoint; without one the global meter is a no-op and recording
//! costs next to nothing.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram};

struct Instruments {
    rpc_duration: Histogram<f64>,
    outbox_pending: Gauge<i64>,
    outbox_lag: Gauge<f64>,
    delivery_queue: Gauge<i64>,
    delivery_oldest: Gauge<f64>,
    redemptions: Counter<u64>,
    redeemed_discount: Counter<u64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("huitou");
        Instruments {
            rpc_duration: meter
                .f64_histogram("rpc.server.call.duration")
                .with_unit("s")
                .with_description("Duration of inbound RPCs")
                .with_boundaries(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .build(),
            outbox_pending: meter
                .i64_gauge("huitou.outbox.pending")
                .with_unit("{event}")
                .with_description("Events written but not yet delivered to every subscriber")
                .build(),
            outbox_lag: meter
                .f64_gauge("huitou.outbox.lag")
                .with_unit("s")
                .with_description("Age of the oldest undelivered event")
                .build(),
            delivery_queue: meter
                .i64_gauge("huitou.delivery.queue_depth")
                .with_unit("{message}")
                .with_description("Messages due to leave now and not yet sent")
                .build(),
            delivery_oldest: meter
                .f64_gauge("huitou.delivery.oldest_due")
                .with_unit("s")
                .with_description("How long the oldest due message has waited")
                .build(),
            redemptions: meter
                .u64_counter("huitou.coupon.redemptions")
                .with_unit("{coupon}")
                .with_description("Coupons redeemed at checkout")
                .build(),
            redeemed_discount: meter
                .u64_counter("huitou.coupon.redeemed_discount")
                .with_unit("fen")
                .with_description("Discount given by redeemed coupons")
                .build(),
        }
    })
}

/// Records one inbound call.
pub fn record_rpc(service: &str, method: &str, grpc_status: i32, seconds: f64) {
    instruments().rpc_duration.record(
        seconds,
        &[
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service.to_owned()),
            KeyValue::new("rpc.method", method.to_owned()),
            KeyValue::new("rpc.grpc.status_code", i64::from(grpc_status)),
        ],
    );
}

/// Records a service's outbox backlog: events pending and the age of the
/// oldest, in seconds.
pub fn record_outbox(service: &'static str, pending: i64, lag_seconds: f64) {
    let attributes = [KeyValue::new("service", service)];
    instruments().outbox_pending.record(pending, &attributes);
    instruments().outbox_lag.record(lag_seconds, &attributes);
}

/// Records the notification delivery queue: messages due now and not yet
/// sent, and how long the oldest has waited, in seconds.
pub fn record_delivery_queue(due: i64, oldest_seconds: f64) {
    instruments().delivery_queue.record(due, &[]);
    instruments().delivery_oldest.record(oldest_seconds, &[]);
}

/// Records one coupon redemption and the discount it gave.
pub fn record_redemption(discount_fen: i64) {
    instruments().redemptions.add(1, &[]);
    instruments()
        .redeemed_discount
        .add(discount_fen.max(0) as u64, &[]);
}
