//! The coupon service. This first part holds its rules, free of I/O:
//! who may receive a coupon and when it can be used,
//! coupon codes (unguessable, easy to read aloud, with a check character)
//! and the discount a template gives a cart, exact in fen. The contract,
//! storage and API come next (issue 4).

pub mod domain;
