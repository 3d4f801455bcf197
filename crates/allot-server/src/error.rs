//! The service layer's one error type. Expected denials are not errors (they are decisions);
//! these are invalid input, missing things, conflicts, unavailability and bugs. Mapped to
//! `tonic::Status` in exactly one place, `grpc::status`.

/// What went wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed or out of bounds.
    #[error("invalid {field}: {description}")]
    InvalidArgument { field: String, description: String },
    /// The credential is missing, malformed, unknown or revoked.
    #[error("missing or invalid credential")]
    Unauthenticated,
    /// The credential is valid but its role may not call this RPC.
    #[error("the credential's role may not call this method")]
    PermissionDenied,
    /// The caller's tenant has its concurrency limit in use; retry after a moment.
    #[error("too many calls in flight for this tenant, retry")]
    TenantBusy { retry_after: std::time::Duration },
    /// The thing does not exist in the caller's tenant (a foreign one looks the same).
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// The idempotency key was used before for a different request.
    #[error("idempotency key was already used for a different request")]
    IdempotencyKeyReused,
    /// The hold was already committed or released with different parameters.
    #[error("hold is already settled ({status})")]
    HoldSettled { status: &'static str },
    /// The hold's TTL has passed; it no longer holds anything.
    #[error("hold has expired")]
    HoldExpired,
    /// A refund larger than what is left of the charge.
    #[error("refund exceeds what is left to refund ({refundable_credits} credits)")]
    RefundExceedsCharge { refundable_credits: i64 },
    /// The request conflicts with the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A classifier ticket was already used or has expired.
    #[error("classifier ticket {0}")]
    TicketSpent(&'static str),
    /// No price is in force for the SKU at that time and the tenant's policy refuses it.
    #[error("no price for {sku}: {why}")]
    PriceUnknown { sku: String, why: String },
    /// Rating the SKU falls outside the tenant's sanity bounds (a mistyped price).
    #[error("price anomaly for {sku}: {why}")]
    PriceAnomaly { sku: String, why: String },
    /// A price or policy being written lies outside the tenant's sanity bounds.
    #[error("{field} is out of bounds: {description}")]
    PriceOutOfBounds { field: String, description: String },
    /// Two transactions collided; the caller may retry the same request.
    #[error("concurrent update, retry")]
    Aborted,
    /// PostgreSQL or another dependency cannot be reached or timed out.
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
    /// A bug or an unexpected database answer. The detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl ToString) -> Error {
        Error::InvalidArgument { field: field.into(), description: description.to_string() }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(err: tokio_postgres::Error) -> Error {
        use tokio_postgres::error::SqlState;
        match err.code() {
            Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED => Error::Aborted,
            Some(code) if *code == SqlState::LOCK_NOT_AVAILABLE || *code == SqlState::QUERY_CANCELED => Error::Unavailable("database (timeout)"),
            Some(code) if code.code().starts_with("08") || code.code().starts_with("57P") || code.code().starts_with("53") => {
                Error::Unavailable("database")
            }
            Some(_) => Error::Internal(format!("database: {err}")),
            None if err.is_closed() || std::error::Error::source(&err).is_some_and(|s| s.is::<std::io::Error>()) => Error::Unavailable("database"),
            None => Error::Internal(format!("database: {err}")),
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(err: deadpool_postgres::PoolError) -> Error {
        match err {
            deadpool_postgres::PoolError::Backend(db) => Error::from(db),
            _ => Error::Unavailable("database"),
        }
    }
}
