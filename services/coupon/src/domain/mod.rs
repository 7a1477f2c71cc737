//! Coupon rules without I/O.

pub mod code;
pub mod discount;
pub mod rules;
