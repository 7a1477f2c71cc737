//! Coupon rules without I/O.

pub mod checkout;
pub mod code;
pub mod discount;
pub mod rules;
