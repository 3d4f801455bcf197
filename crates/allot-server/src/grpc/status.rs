//! The one mapping from service errors to gRPC statuses, with `google.rpc` details: `ErrorInfo`
//! (a stable reason) always, `BadRequest` for invalid fields, `RetryInfo` when a retry may help.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

/// `ErrorInfo.domain` of every Allot error.
pub const ERROR_DOMAIN: &str = "allot.v1";

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let message = match &err {
            Error::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        let (code, reason) = match &err {
            Error::InvalidArgument { .. } => (Code::InvalidArgument, "INVALID_ARGUMENT"),
            Error::Unauthenticated => (Code::Unauthenticated, "UNAUTHENTICATED"),
            Error::PermissionDenied => (Code::PermissionDenied, "PERMISSION_DENIED"),
            Error::TenantBusy { .. } => (Code::ResourceExhausted, "TENANT_CONCURRENCY_LIMIT"),
            Error::NotFound { .. } => (Code::NotFound, "NOT_FOUND"),
            Error::IdempotencyKeyReused => (Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED"),
            Error::HoldSettled { .. } => (Code::FailedPrecondition, "HOLD_ALREADY_SETTLED"),
            Error::HoldExpired => (Code::FailedPrecondition, "HOLD_EXPIRED"),
            Error::RefundExceedsCharge { .. } => (Code::FailedPrecondition, "REFUND_EXCEEDS_CHARGE"),
            Error::FailedPrecondition(_) => (Code::FailedPrecondition, "FAILED_PRECONDITION"),
            Error::TicketSpent("already used") => (Code::FailedPrecondition, "TICKET_USED"),
            Error::TicketSpent(_) => (Code::FailedPrecondition, "TICKET_EXPIRED"),
            Error::PriceUnknown { .. } => (Code::FailedPrecondition, "PRICE_UNKNOWN"),
            Error::PriceAnomaly { .. } => (Code::FailedPrecondition, "PRICE_ANOMALY"),
            Error::PriceOutOfBounds { .. } => (Code::FailedPrecondition, "PRICE_OUT_OF_BOUNDS"),
            Error::Aborted => (Code::Aborted, "CONCURRENT_UPDATE"),
            Error::Unavailable(_) => (Code::Unavailable, "DEPENDENCY_UNAVAILABLE"),
            Error::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                (Code::Internal, "INTERNAL")
            }
        };
        let mut details = ErrorDetails::new();
        details.set_error_info(reason, ERROR_DOMAIN, HashMap::<String, String>::new());
        match &err {
            Error::InvalidArgument { field, description } => {
                details.add_bad_request_violation(field.clone(), description.clone());
            }
            Error::PriceOutOfBounds { field, description } => {
                details.add_bad_request_violation(field.clone(), description.clone());
            }
            Error::Aborted => {
                details.set_retry_info(Some(Duration::from_millis(50)));
            }
            Error::TenantBusy { retry_after } => {
                details.set_retry_info(Some(*retry_after));
            }
            Error::Unavailable(_) => {
                details.set_retry_info(Some(Duration::from_secs(1)));
            }
            _ => {}
        }
        Status::with_error_details(code, message, details)
    }
}

/// The answer to a call that ran past the server's `request_timeout_ms` (see `grpc::deadline`):
/// DEADLINE_EXCEEDED, with `RetryInfo` (the outcome is unknown; a retry with the same key is safe).
pub fn request_timeout(timeout: Duration) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info("DEADLINE_EXCEEDED", ERROR_DOMAIN, HashMap::<String, String>::new());
    details.set_retry_info(Some(Duration::from_millis(50)));
    Status::with_error_details(Code::DeadlineExceeded, format!("the call took longer than the server allows ({} ms)", timeout.as_millis()), details)
}

/// The end of a stream of calls the server stops reading because it is shutting down
/// (`grpc::streams`): UNAVAILABLE, with `RetryInfo` (open a new stream, on another replica).
pub fn server_draining() -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info("SERVER_DRAINING", ERROR_DOMAIN, HashMap::<String, String>::new());
    details.set_retry_info(Some(Duration::from_millis(100)));
    Status::with_error_details(Code::Unavailable, "the server is shutting down; open a new stream", details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_code_reason_and_details() {
        let cases = [
            (Error::invalid("amount_credits", "must be greater than zero"), Code::InvalidArgument, "INVALID_ARGUMENT"),
            (Error::IdempotencyKeyReused, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED"),
            (Error::HoldExpired, Code::FailedPrecondition, "HOLD_EXPIRED"),
            (Error::PermissionDenied, Code::PermissionDenied, "PERMISSION_DENIED"),
            (Error::TenantBusy { retry_after: Duration::from_millis(20) }, Code::ResourceExhausted, "TENANT_CONCURRENCY_LIMIT"),
            (Error::Unavailable("database"), Code::Unavailable, "DEPENDENCY_UNAVAILABLE"),
            (Error::Internal("secret detail".into()), Code::Internal, "INTERNAL"),
        ];
        for (err, code, reason) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code);
            let details = status.get_error_details();
            assert_eq!(details.error_info().map(|i| i.reason.as_str()), Some(reason));
            assert!(!status.message().contains("secret"), "internal details are never sent");
        }
        let status = Status::from(Error::invalid("amount_credits", "must be greater than zero"));
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("bad request").field_violations;
        assert_eq!(violations[0].field, "amount_credits");
        assert!(Status::from(Error::Unavailable("database")).get_error_details().retry_info().is_some());
        assert!(Status::from(Error::TenantBusy { retry_after: Duration::from_millis(20) }).get_error_details().retry_info().is_some());
    }

    #[test]
    fn the_servers_own_timeout_is_deadline_exceeded_with_retry_info() {
        let status = request_timeout(Duration::from_millis(1_500));
        assert_eq!(status.code(), Code::DeadlineExceeded);
        let details = status.get_error_details();
        assert_eq!(details.error_info().map(|i| i.reason.as_str()), Some("DEADLINE_EXCEEDED"));
        assert!(details.retry_info().is_some());
        assert!(status.message().contains("1500 ms"));
    }

    #[test]
    fn a_draining_server_ends_streams_unavailable_with_retry_info() {
        let status = server_draining();
        assert_eq!(status.code(), Code::Unavailable);
        let details = status.get_error_details();
        assert_eq!(details.error_info().map(|i| i.reason.as_str()), Some("SERVER_DRAINING"));
        assert!(details.retry_info().is_some());
    }
}
