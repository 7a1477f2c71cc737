//! The loyalty service's failures and their one mapping to gRPC.

use huitou_runtime::Failure;
use huitou_storage::StorageError;
use huitou_storage::write::Retryable;
use tonic::Code;

/// What can go wrong in the loyalty service.
#[derive(Debug, thiserror::Error)]
pub enum LoyaltyError {
    /// Bad input, a missing permission: already a failure.
    #[error("{0}")]
    Rejected(Failure),
    /// No such member in the caller's shop.
    #[error("member not found")]
    MemberNotFound,
    /// No such reward in the caller's shop.
    #[error("reward not found")]
    RewardNotFound,
    /// No such fulfilment task in the caller's shop.
    #[error("fulfilment task not found")]
    TaskNotFound,
    /// A spend beyond the available points.
    #[error("{needed} points needed, {available} available")]
    NotEnoughPoints {
        /// Points asked for.
        needed: i64,
        /// Points that can be spent.
        available: i64,
    },
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Retryable for LoyaltyError {
    fn is_retryable(&self) -> bool {
        match self {
            LoyaltyError::Storage(e) => e.is_retryable(),
            LoyaltyError::Rejected(f) => f.is_retryable(),
            _ => false,
        }
    }
}

impl From<Failure> for LoyaltyError {
    fn from(f: Failure) -> Self {
        LoyaltyError::Rejected(f)
    }
}

impl From<sea_orm::DbErr> for LoyaltyError {
    fn from(e: sea_orm::DbErr) -> Self {
        LoyaltyError::Storage(e.into())
    }
}

impl From<LoyaltyError> for Failure {
    fn from(err: LoyaltyError) -> Self {
        match err {
            LoyaltyError::Rejected(f) => f,
            LoyaltyError::MemberNotFound => Failure::not_found(
                "MEMBER_NOT_FOUND",
                "no such member in this shop (customers become members when the customer service records them)",
            ),
            LoyaltyError::RewardNotFound => {
                Failure::not_found("REWARD_NOT_FOUND", "no such reward in this shop")
            }
            LoyaltyError::TaskNotFound => {
                Failure::not_found("TASK_NOT_FOUND", "no such fulfilment task in this shop")
            }
            e @ LoyaltyError::NotEnoughPoints { .. } => {
                Failure::new(Code::FailedPrecondition, "NOT_ENOUGH_POINTS", e.to_string())
            }
            LoyaltyError::Storage(e) => e.into(),
        }
    }
}

impl From<LoyaltyError> for tonic::Status {
    fn from(err: LoyaltyError) -> Self {
        Failure::from(err).into()
    }
}
