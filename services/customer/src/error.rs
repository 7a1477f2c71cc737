//! The customer service's failures and their one mapping to gRPC.

use huitou_privacy::PrivacyError;
use huitou_runtime::Failure;
use huitou_storage::StorageError;
use tonic::Code;

/// What can go wrong in the customer service.
#[derive(Debug, thiserror::Error)]
pub enum CustomerError {
    /// Bad input, a missing permission, or a rate limit: already a failure.
    #[error("{0}")]
    Rejected(Failure),
    /// No such customer in the caller's shop.
    #[error("customer not found")]
    CustomerNotFound,
    /// No such order in the caller's shop.
    #[error("order not found")]
    OrderNotFound,
    /// The caller's shop does not exist (a deleted shop's key).
    #[error("shop not found")]
    ShopNotFound,
    /// No such API key in the caller's shop.
    #[error("API key not found")]
    KeyNotFound,
    /// No such import in the caller's shop.
    #[error("import not found")]
    ImportNotFound,
    /// The order cannot make this move from where it is.
    #[error("an order that is {from} cannot be {action}")]
    Transition {
        /// Current status, lower case.
        from: &'static str,
        /// What was asked, e.g. `shipped`.
        action: &'static str,
    },
    /// The order number is already recorded with different contents.
    #[error("order {0} is already recorded with different items or amounts")]
    OrderConflict(String),
    /// A repeated step disagrees with what was recorded the first time.
    #[error("{0}")]
    StepConflict(String),
    /// The customer's personal data was erased.
    #[error("the customer's personal data was erased")]
    Erased,
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Personal data could not be sealed or opened.
    #[error(transparent)]
    Privacy(#[from] PrivacyError),
}

impl huitou_storage::write::Retryable for CustomerError {
    fn is_retryable(&self) -> bool {
        match self {
            CustomerError::Storage(e) => e.is_retryable(),
            CustomerError::Rejected(f) => f.is_retryable(),
            _ => false,
        }
    }
}

impl From<Failure> for CustomerError {
    fn from(f: Failure) -> Self {
        CustomerError::Rejected(f)
    }
}

impl From<sea_orm::DbErr> for CustomerError {
    fn from(e: sea_orm::DbErr) -> Self {
        CustomerError::Storage(e.into())
    }
}

impl From<CustomerError> for Failure {
    fn from(err: CustomerError) -> Self {
        match err {
            CustomerError::Rejected(f) => f,
            CustomerError::CustomerNotFound => {
                Failure::not_found("CUSTOMER_NOT_FOUND", "no such customer in this shop")
            }
            CustomerError::OrderNotFound => {
                Failure::not_found("ORDER_NOT_FOUND", "no such order in this shop")
            }
            CustomerError::ShopNotFound => {
                Failure::not_found("SHOP_NOT_FOUND", "the shop of this key no longer exists")
            }
            CustomerError::KeyNotFound => {
                Failure::not_found("API_KEY_NOT_FOUND", "no such API key in this shop")
            }
            CustomerError::ImportNotFound => {
                Failure::not_found("IMPORT_NOT_FOUND", "no such import in this shop")
            }
            e @ CustomerError::Transition { .. } => {
                Failure::failed_precondition("ORDER_TRANSITION_INVALID", e.to_string())
            }
            e @ CustomerError::OrderConflict(_) => {
                Failure::new(Code::AlreadyExists, "ORDER_CONFLICT", e.to_string())
            }
            CustomerError::StepConflict(msg) => {
                Failure::failed_precondition("ORDER_STEP_CONFLICT", msg)
            }
            e @ CustomerError::Erased => {
                Failure::failed_precondition("CUSTOMER_ERASED", e.to_string())
            }
            CustomerError::Storage(e) => e.into(),
            CustomerError::Privacy(e) => {
                tracing::error!(error = %e, "personal data failure");
                Failure::internal("personal data could not be read; check the personal data keys")
            }
        }
    }
}

impl From<CustomerError> for tonic::Status {
    fn from(err: CustomerError) -> Self {
        Failure::from(err).into()
    }
}
