//! Core errors as gRPC statuses: the one place where a [`BrokerError`], a
//! [`Rejection`] or the end of a feed becomes a status code and message
//! (the table in `docs/protocol.md`).

use tonic::Status;

use crate::alert::Rejection;
use crate::broker::{BrokerError, FeedEnd};
use crate::store::StoreError;

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Status {
        match e {
            BrokerError::Rejected(r) => r.into(),
            BrokerError::NotFound => Status::not_found("no such alert"),
            BrokerError::Denied(d) => Status::permission_denied(d.to_string()),
            BrokerError::TakenOver => Status::aborted(e.to_string()),
            BrokerError::FeedBusy { .. } => Status::failed_precondition(e.to_string()),
            BrokerError::ShuttingDown => Status::unavailable(e.to_string()),
            BrokerError::NoPolicyFile | BrokerError::PolicyRefused { .. } => {
                Status::failed_precondition(e.to_string())
            }
            BrokerError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        match e {
            StoreError::Closed => Status::unavailable("the broker is shutting down"),
            e @ StoreError::IdConflict => Status::already_exists(e.to_string()),
            e if e.is_resource_exhausted() => {
                Status::resource_exhausted(format!("{e}; nothing was stored"))
            }
            e => Status::internal(e.to_string()),
        }
    }
}

impl From<Rejection> for Status {
    fn from(r: Rejection) -> Status {
        Status::invalid_argument(r.to_string())
    }
}

/// How the end of a feed reaches its subscriber.
pub(super) fn feed_end(end: FeedEnd) -> Status {
    match end {
        FeedEnd::TakenOver => Status::aborted("the feed was taken over by a newer subscription"),
        FeedEnd::ShuttingDown => Status::unavailable("the broker is shutting down"),
        FeedEnd::Denied(reason) => Status::permission_denied(reason),
        FeedEnd::Failed(e) => Status::internal(e),
    }
}

/// INVALID_ARGUMENT for a request field: `"<field>: <rule>"`.
pub(super) fn invalid(field: &str, rule: &str) -> Status {
    Status::invalid_argument(format!("{field}: {rule}"))
}
