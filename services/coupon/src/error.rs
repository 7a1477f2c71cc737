//! The coupon service's failures and their one mapping to gRPC.

use huitou_runtime::Failure;
use huitou_storage::StorageError;
use huitou_storage::write::Retryable;
use tonic::Code;

use crate::domain::checkout::Refusal;
use crate::domain::rules::NotEligible;

/// What can go wrong in the coupon service.
#[derive(Debug, thiserror::Error)]
pub enum CouponError {
    /// Bad input, a missing permission: already a failure.
    #[error("{0}")]
    Rejected(Failure),
    /// No such template in the caller's shop.
    #[error("template not found")]
    TemplateNotFound,
    /// No such coupon in the caller's shop.
    #[error("coupon not found")]
    CouponNotFound,
    /// The template is paused.
    #[error("the template is paused: it issues no coupons until resumed")]
    TemplatePaused,
    /// The stock is spent.
    #[error("the template's stock is spent")]
    OutOfStock,
    /// The customer may not receive the template.
    #[error("{}", describe(*.0))]
    NotEligible(NotEligible),
    /// The agent has issued the day's budget.
    #[error("agent {agent} has issued today's budget of {budget} coupons of this template")]
    AgentBudgetSpent {
        /// The agent.
        agent: String,
        /// The day's budget.
        budget: i64,
    },
    /// The coupon cannot be used on this checkout.
    #[error("{}", .0.describe())]
    Refused(Refusal),
    /// The coupon is held or used by a different order than the one named.
    #[error("the coupon is not held or used by order {0}")]
    NotThisOrder(String),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn describe(n: NotEligible) -> &'static str {
    match n {
        NotEligible::NotNewBuyer => {
            "this template is for new buyers and the customer has paid before"
        }
        NotEligible::NotReturningBuyer => {
            "this template is for returning buyers and the customer has not paid yet"
        }
        NotEligible::TierNotEligible => {
            "the customer's loyalty tier is not one this template is for"
        }
        NotEligible::LimitReached => {
            "the customer already has as many coupons of this template as allowed"
        }
    }
}

impl Retryable for CouponError {
    fn is_retryable(&self) -> bool {
        match self {
            CouponError::Storage(e) => e.is_retryable(),
            CouponError::Rejected(f) => f.is_retryable(),
            _ => false,
        }
    }
}

impl From<Failure> for CouponError {
    fn from(f: Failure) -> Self {
        CouponError::Rejected(f)
    }
}

impl From<sea_orm::DbErr> for CouponError {
    fn from(e: sea_orm::DbErr) -> Self {
        CouponError::Storage(e.into())
    }
}

impl From<CouponError> for Failure {
    fn from(err: CouponError) -> Self {
        let message = err.to_string();
        match err {
            CouponError::Rejected(f) => f,
            CouponError::TemplateNotFound => {
                Failure::not_found("TEMPLATE_NOT_FOUND", "no such coupon template in this shop")
            }
            CouponError::CouponNotFound => {
                Failure::not_found("COUPON_NOT_FOUND", "no such coupon in this shop")
            }
            CouponError::TemplatePaused => Failure::failed_precondition("TEMPLATE_PAUSED", message),
            CouponError::OutOfStock => Failure::failed_precondition("OUT_OF_STOCK", message),
            CouponError::NotEligible(n) => Failure::failed_precondition(
                match n {
                    NotEligible::LimitReached => "LIMIT_REACHED",
                    _ => "NOT_ELIGIBLE",
                },
                message,
            ),
            CouponError::AgentBudgetSpent { .. } => {
                Failure::new(Code::ResourceExhausted, "AGENT_BUDGET_SPENT", message)
            }
            CouponError::Refused(r) => Failure::failed_precondition(r.reason(), message),
            CouponError::NotThisOrder(_) => Failure::failed_precondition("NOT_THIS_ORDER", message),
            CouponError::Storage(e) => e.into(),
        }
    }
}

impl From<CouponError> for tonic::Status {
    fn from(err: CouponError) -> Self {
        Failure::from(err).into()
    }
}
