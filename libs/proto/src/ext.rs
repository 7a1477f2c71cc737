//! Hand-written conveniences on generated types.

use prost_types::Timestamp;

use crate::events::v1::EventEnvelope;
use crate::events::v1::event_envelope::Payload;

/// Microseconds since the Unix epoch as a protobuf timestamp.
pub fn timestamp_from_micros(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// A protobuf timestamp as microseconds since the Unix epoch; `None` when
/// out of range (nanos outside 0..1e9, or beyond year 9999).
pub fn micros_from_timestamp(ts: &Timestamp) -> Option<i64> {
    const MAX_SECONDS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    const MIN_SECONDS: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
    if !(0..1_000_000_000).contains(&ts.nanos) || !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds)
    {
        return None;
    }
    Some(ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1000)
}

impl EventEnvelope {
    /// The event's type name, e.g. `order.paid`; what subscriptions select on.
    pub fn event_type(&self) -> &'static str {
        match &self.payload {
            Some(Payload::CustomerCreated(_)) => "customer.created",
            Some(Payload::CustomerUpdated(_)) => "customer.updated",
            Some(Payload::CustomerErased(_)) => "customer.erased",
            Some(Payload::OrderCreated(_)) => "order.created",
            Some(Payload::OrderPaid(_)) => "order.paid",
            Some(Payload::OrderShipped(_)) => "order.shipped",
            Some(Payload::OrderReceived(_)) => "order.received",
            Some(Payload::OrderReviewed(_)) => "order.reviewed",
            Some(Payload::OrderRefunded(_)) => "order.refunded",
            Some(Payload::OrderClosed(_)) => "order.closed",
            Some(Payload::OrderImported(_)) => "order.imported",
            Some(Payload::TierChanged(_)) => "loyalty.tier_changed",
            Some(Payload::TierWillDrop(_)) => "loyalty.tier_will_drop",
            Some(Payload::PointsExpiring(_)) => "loyalty.points_expiring",
            Some(Payload::PointsExpired(_)) => "loyalty.points_expired",
            Some(Payload::RewardExchanged(_)) => "loyalty.reward_exchanged",
            Some(Payload::CouponIssued(_)) => "coupon.issued",
            Some(Payload::CouponRedeemed(_)) => "coupon.redeemed",
            Some(Payload::CouponReleased(_)) => "coupon.released",
            Some(Payload::CouponExpiringSoon(_)) => "coupon.expiring_soon",
            Some(Payload::CouponExpired(_)) => "coupon.expired",
            Some(Payload::CouponExchangeRefused(_)) => "coupon.exchange_refused",
            None => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_including_before_1970() {
        for micros in [0, 1, -1, 1_700_000_000_123_456, -86_400_000_001] {
            assert_eq!(
                micros_from_timestamp(&timestamp_from_micros(micros)),
                Some(micros)
            );
        }
        assert_eq!(
            micros_from_timestamp(&Timestamp {
                seconds: 0,
                nanos: -1
            }),
            None
        );
        assert_eq!(
            micros_from_timestamp(&Timestamp {
                seconds: i64::MAX,
                nanos: 0
            }),
            None
        );
    }
}
