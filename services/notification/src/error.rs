//! The notification service's failures and their one mapping to gRPC.

use huitou_runtime::Failure;
use huitou_storage::StorageError;
use huitou_storage::write::Retryable;

/// What can go wrong in the notification service.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    /// Bad input, a missing permission: already a failure.
    #[error("{0}")]
    Rejected(Failure),
    /// No such template in the caller's shop.
    #[error("template not found")]
    TemplateNotFound,
    /// The template is paused.
    #[error("the template is paused: it sends nothing until resumed")]
    TemplatePaused,
    /// No such message in the caller's shop.
    #[error("message not found")]
    MessageNotFound,
    /// No such call task in the caller's shop.
    #[error("call task not found")]
    CallTaskNotFound,
    /// The call task already has its outcome.
    #[error("the call task already has an outcome")]
    CallTaskClosed,
    /// No such holiday on the calendar.
    #[error("no such day on the holiday calendar")]
    HolidayNotFound,
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Retryable for NotificationError {
    fn is_retryable(&self) -> bool {
        match self {
            NotificationError::Storage(e) => e.is_retryable(),
            NotificationError::Rejected(f) => f.is_retryable(),
            _ => false,
        }
    }
}

impl From<Failure> for NotificationError {
    fn from(f: Failure) -> Self {
        NotificationError::Rejected(f)
    }
}

impl From<sea_orm::DbErr> for NotificationError {
    fn from(e: sea_orm::DbErr) -> Self {
        NotificationError::Storage(e.into())
    }
}

impl From<NotificationError> for Failure {
    fn from(err: NotificationError) -> Self {
        let message = err.to_string();
        match err {
            NotificationError::Rejected(f) => f,
            NotificationError::TemplateNotFound => Failure::not_found(
                "TEMPLATE_NOT_FOUND",
                "no such notification template in this shop",
            ),
            NotificationError::TemplatePaused => {
                Failure::failed_precondition("TEMPLATE_PAUSED", message)
            }
            NotificationError::MessageNotFound => {
                Failure::not_found("MESSAGE_NOT_FOUND", "no such message in this shop")
            }
            NotificationError::CallTaskNotFound => {
                Failure::not_found("CALL_TASK_NOT_FOUND", "no such call task in this shop")
            }
            NotificationError::CallTaskClosed => {
                Failure::failed_precondition("CALL_TASK_CLOSED", message)
            }
            NotificationError::HolidayNotFound => Failure::not_found("HOLIDAY_NOT_FOUND", message),
            NotificationError::Storage(e) => e.into(),
        }
    }
}

impl From<NotificationError> for tonic::Status {
    fn from(err: NotificationError) -> Self {
        Failure::from(err).into()
    }
}
