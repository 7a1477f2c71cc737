//! What every Huitou service runs on: layered configuration, telemetry, the
//! shared gRPC server (health, reflection, auth, request ids, limits,
//! deadlines, graceful shutdown), callers and roles, and the single mapping
//! from failures to `tonic::Status`.

pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod metrics;
pub mod paging;
pub mod server;
pub mod telemetry;

pub use auth::{Caller, Role};
pub use error::{Failure, FieldViolations};
