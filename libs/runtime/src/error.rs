//! The one place where failures become `tonic::Status`.
//!
//! Every crate keeps its own error enum and converts it into a [`Failure`]:
//! a gRPC code, a stable machine-readable reason (sent as
//! `google.rpc.ErrorInfo`), a human message, and for bad input the fields at
//! fault (sent as `google.rpc.BadRequest`). Clients branch on the reason,
//! never on the message.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every error Huitou returns.
pub const ERROR_DOMAIN: &str = "huitou.dev";

/// One field of a request and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `items[2].quantity`.
    pub field: String,
    /// What is wrong, e.g. `must be at least 1`.
    pub description: String,
}

/// A failure on its way to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The gRPC status code.
    pub code: Code,
    /// Stable reason in UPPER_SNAKE_CASE, e.g. `ORDER_TRANSITION_INVALID`.
    pub reason: &'static str,
    /// A message for people.
    pub message: String,
    /// For INVALID_ARGUMENT: the fields at fault.
    pub violations: Vec<FieldViolation>,
    /// When the caller may retry (RESOURCE_EXHAUSTED, UNAVAILABLE).
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure with a code, a reason and a message.
    pub fn new(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            violations: Vec::new(),
            retry_after: None,
        }
    }

    /// Bad input in one field.
    pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut v = FieldViolations::new();
        v.add(field, description);
        v.into_failure()
    }

    /// The named thing does not exist in the caller's shop.
    pub fn not_found(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, reason, message)
    }

    /// The request is valid but the state of the system does not allow it.
    pub fn failed_precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, reason, message)
    }

    /// The caller's key may not do this.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, "PERMISSION_DENIED", message)
    }

    /// A dependency (database, peer service) is not answering.
    pub fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, reason, message)
    }

    /// Something that should not happen; details go to the log, not the caller.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, "INTERNAL", message)
    }

    /// Too many requests; retry after the given delay.
    pub fn rate_limited(retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                Code::ResourceExhausted,
                "RATE_LIMITED",
                "too many requests; retry later",
            )
        }
    }

    /// Adds a retry delay.
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}: {}", self.code, self.reason, self.message)?;
        for v in &self.violations {
            write!(f, "; {}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

impl From<Failure> for Status {
    fn from(failure: Failure) -> Self {
        let mut details = ErrorDetails::new();
        details.set_error_info(
            failure.reason,
            ERROR_DOMAIN,
            HashMap::<String, String>::new(),
        );
        if !failure.violations.is_empty() {
            details.set_bad_request(
                failure
                    .violations
                    .iter()
                    .map(|v| {
                        tonic_types::FieldViolation::new(v.field.clone(), v.description.clone())
                    })
                    .collect::<Vec<_>>(),
            );
        }
        if failure.retry_after.is_some() {
            details.set_retry_info(failure.retry_after);
        }
        let message = if failure.violations.is_empty() {
            failure.message
        } else {
            // grpcurl prints only the message: name the fields there too.
            let fields: Vec<String> = failure
                .violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect();
            format!("{} ({})", failure.message, fields.join("; "))
        };
        Status::with_error_details(failure.code, message, details)
    }
}

/// Collects every problem of a request before answering, so the caller can
/// fix them all at once.
#[derive(Debug, Default)]
pub struct FieldViolations {
    violations: Vec<FieldViolation>,
}

impl FieldViolations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.violations.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Records a violation when `ok` is false.
    pub fn check(&mut self, ok: bool, field: impl Into<String>, description: impl Into<String>) {
        if !ok {
            self.add(field, description);
        }
    }

    /// Records the violations of a nested check under a prefix.
    pub fn merge(&mut self, prefix: &str, other: FieldViolations) {
        for v in other.violations {
            self.violations.push(FieldViolation {
                field: format!("{prefix}{}", v.field),
                description: v.description,
            });
        }
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations as an INVALID_ARGUMENT failure.
    pub fn into_failure(self) -> Failure {
        Failure {
            violations: self.violations,
            ..Failure::new(
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
                "the request has invalid fields",
            )
        }
    }

    /// `Ok(())` when nothing was recorded, else the failure.
    pub fn finish(self) -> Result<(), Failure> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(self.into_failure())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_travel_as_bad_request_and_error_info() {
        let mut v = FieldViolations::new();
        v.add("buyer_nick", "must not be empty");
        v.add("items[0].quantity", "must be at least 1");
        let status = Status::from(v.into_failure());
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("buyer_nick: must not be empty"));
        let details = status.get_error_details();
        let bad = details.bad_request().cloned().expect("bad request details");
        assert_eq!(bad.field_violations.len(), 2);
        assert_eq!(bad.field_violations[1].field, "items[0].quantity");
        let info = details.error_info().cloned().expect("error info");
        assert_eq!(info.reason, "INVALID_ARGUMENT");
        assert_eq!(info.domain, ERROR_DOMAIN);
    }

    #[test]
    fn rate_limits_carry_retry_info() {
        let status = Status::from(Failure::rate_limited(Duration::from_secs(3)));
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn empty_collector_finishes_ok() {
        assert!(FieldViolations::new().finish().is_ok());
    }
}
