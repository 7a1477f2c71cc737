//! The customer service's rules, free of I/O and of generated types.

pub mod customer;
pub mod order;
pub use huitou_runtime::paging;
