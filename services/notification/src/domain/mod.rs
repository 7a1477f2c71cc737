//! The notification rules, without I/O: send windows, template text,
//! consent, caps, duplicates and retries.

pub mod rules;
pub mod text;
pub mod window;
