//! The loyalty rules, free of I/O: the program and its validation, tier
//! evaluation and requalification, points earned and taken back, which
//! points a spend or an expiry takes, and member prices.

pub mod ledger;
pub mod pricing;
pub mod program;
pub mod tiers;

/// Microseconds in a day.
pub const DAY_MICROS: i64 = 86_400_000_000;

/// `days` as microseconds.
pub fn days(days: i32) -> i64 {
    i64::from(days) * DAY_MICROS
}
