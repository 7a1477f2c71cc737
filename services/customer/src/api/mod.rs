//! The gRPC edge of the customer service.

pub mod convert;
pub mod customers;
pub mod shops;
