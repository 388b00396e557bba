//! Errors, one enum per layer:
//!
//! | type | layer | seen by |
//! | --- | --- | --- |
//! | [`crate::key::FormatError`] | key parsing | the server log only (callers get `INVALID`) |
//! | [`crate::store::StoreError`] | database | converted into [`ServiceError`] |
//! | [`ServiceError`] | gRPC handlers and [`crate::lifecycle`] | clients, as a `tonic::Status`; on the HTTP listener as that status's HTTP counterpart ([`crate::gateway::http`]) |
//! | [`crate::gateway::Refusal`] | a gateway's "no" to a proxied request (not an error of the call) | the proxy's client, as an HTTP status with its headers and JSON body |
//! | [`crate::bootstrap::InitError`] | first-run initialisation | `keywardctl init`, server start |
//! | [`crate::server::StartupError`] | binding and opening at start | the operator, as one line |
//! | [`crate::oidc::fetch::FetchError`] | fetching an OIDC issuer's discovery document or keys | the server log only |
//! | [`crate::oidc::Refusal`] | why an identity token exchange was refused | the server log and `keyward_exchanges_total`; callers get one `PERMISSION_DENIED` ([`crate::exchange::DENIED`]) |
//! | [`crate::lifecycle::ExchangeFailure`] | minting an exchanged key: refused, or a [`ServiceError`] | [`crate::exchange`], which turns it into one of the two above |
//!
//! The status a client sees is decided in exactly one place:
//! `impl From<ServiceError> for tonic::Status`. No message carries a secret.

use tonic::{Code, Status};

use crate::{freshness::Stale, store::StoreError};

/// An error answered to a gRPC client.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed; `field` names the offending field.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The request field at fault, as named in the proto.
        field: &'static str,
        /// What is wrong with it; never the presented key.
        message: String,
    },
    /// No (or no usable) caller credential.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The caller's key may not do this; the message says why.
    #[error("{0}")]
    PermissionDenied(String),
    /// Admin RPCs may learn that a key id does not exist.
    #[error("{0}")]
    NotFound(String),
    /// What a create names exists already (a role's name is taken).
    #[error("{0}")]
    AlreadyExists(String),
    /// The target's state forbids the change.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller's own key is over its rate limit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The database cannot be reached, or this replica's index may be out of
    /// date; retrying later (or on another replica) may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// Anything keyward did not expect; details go to the log only.
    #[error("internal error")]
    Internal(String),
    /// The database failed: unreachable, timed out, or it returned what
    /// keyward could not have written. Kept whole until it becomes a status,
    /// so that it can be counted (`keyward_database_errors_total`); clients see
    /// `UNAVAILABLE` for an outage (worth a retry), `INTERNAL` otherwise.
    #[error("{0}")]
    Database(StoreError),
}

impl ServiceError {
    /// An `INVALID_ARGUMENT` naming `field`.
    // By value, so that call sites read `map_err(|e| invalid("field", e))`.
    #[allow(clippy::needless_pass_by_value)]
    pub fn invalid(field: &'static str, message: impl ToString) -> Self {
        Self::InvalidArgument {
            field,
            message: message.to_string(),
        }
    }

    /// A short, fixed name for the kind of error, for log fields.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::PermissionDenied(_) => "permission_denied",
            Self::NotFound(_) => "not_found",
            Self::AlreadyExists(_) => "already_exists",
            Self::FailedPrecondition(_) => "failed_precondition",
            Self::ResourceExhausted(_) => "resource_exhausted",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal_error",
            Self::Database(_) => "database_error",
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::KeyNotFound(_) | StoreError::RoleNotFound(_) => {
                Self::NotFound(error.to_string())
            }
            StoreError::RoleExists(_) | StoreError::PolicyExists(_) => {
                Self::AlreadyExists(error.to_string())
            }
            StoreError::PolicyNotFound(_) => Self::NotFound(error.to_string()),
            StoreError::NotRotatable { .. }
            | StoreError::AlreadyInitialized
            | StoreError::BuiltinRole(_)
            | StoreError::RoleInUse { .. } => Self::FailedPrecondition(error.to_string()),
            other => Self::Database(other),
        }
    }
}

/// Whether a database failure is an outage, worth a retry (`UNAVAILABLE`),
/// rather than something keyward did not expect (`INTERNAL`).
fn is_outage(error: &StoreError) -> bool {
    match error {
        StoreError::Database(cause) => is_connection_failure(cause),
        StoreError::FeedClosed | StoreError::Timeout(_) => true,
        StoreError::Shared(shared) => is_outage(shared),
        _ => false,
    }
}

/// The database could not be reached or dropped the connection: worth a
/// retry, unlike a query keyward got wrong.
fn is_connection_failure(error: &sqlx::Error) -> bool {
    match error {
        // `Protocol` is also how sqlx reports a connection closed during its
        // handshake (an answer cut short), which is an outage, not a bug.
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        // PostgreSQL's SQLSTATE classes 08 (connection exception) and 57P
        // (shutdown, restart, terminated sessions); 53300 too many
        // connections; 55P03 the write turn not had within the lock
        // timeout; 25006 a read-only standby (mid-failover).
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("57P")
                || ["53300", "55P03", "25006"].contains(&code.as_ref())
        }),
        _ => false,
    }
}

impl From<Stale> for ServiceError {
    fn from(stale: Stale) -> Self {
        Self::Unavailable(format!("{stale}; try again, or another replica"))
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        let code = match &error {
            ServiceError::InvalidArgument { .. } => Code::InvalidArgument,
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
            ServiceError::PermissionDenied(_) => Code::PermissionDenied,
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::AlreadyExists(_) => Code::AlreadyExists,
            ServiceError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServiceError::ResourceExhausted(_) => Code::ResourceExhausted,
            ServiceError::Unavailable(_) => Code::Unavailable,
            ServiceError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Code::Internal
            }
            ServiceError::Database(cause) if is_outage(cause) => {
                return Status::unavailable(format!(
                    "the database is unavailable; try again: {cause}"
                ));
            }
            ServiceError::Database(cause) => {
                tracing::error!(detail = %cause, "internal error");
                return Status::internal("internal error");
            }
        };
        Status::new(code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_code_and_internal_detail_stays_in() {
        let cases = [
            (
                ServiceError::invalid("prefix", "bad"),
                Code::InvalidArgument,
                "invalid prefix: bad",
            ),
            (
                ServiceError::Unauthenticated("no key"),
                Code::Unauthenticated,
                "no key",
            ),
            (
                ServiceError::PermissionDenied("no".into()),
                Code::PermissionDenied,
                "no",
            ),
            (
                ServiceError::NotFound("key x not found".into()),
                Code::NotFound,
                "key x not found",
            ),
            (
                ServiceError::AlreadyExists("role ops already exists".into()),
                Code::AlreadyExists,
                "role ops already exists",
            ),
            (
                ServiceError::FailedPrecondition("no".into()),
                Code::FailedPrecondition,
                "no",
            ),
            (
                ServiceError::ResourceExhausted("slow down".into()),
                Code::ResourceExhausted,
                "slow down",
            ),
            (
                ServiceError::Unavailable("the database is unavailable".into()),
                Code::Unavailable,
                "the database is unavailable",
            ),
            (
                ServiceError::Internal("disk on fire".into()),
                Code::Internal,
                "internal error",
            ),
        ];
        for (error, code, message) in cases {
            let status = Status::from(error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }

    #[test]
    fn database_failures_are_unavailable_when_an_outage_and_internal_otherwise() {
        let outage = ServiceError::from(StoreError::Database(sqlx::Error::PoolTimedOut));
        assert!(matches!(outage, ServiceError::Database(_)));
        let status = Status::from(outage);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status
                .message()
                .starts_with("the database is unavailable; try again: "),
            "{status:?}"
        );
        let corrupt = ServiceError::from(StoreError::Corrupt {
            table: "api_keys",
            what: "digest",
        });
        assert_eq!(corrupt.kind(), "database_error");
        let status = Status::from(corrupt);
        assert_eq!(
            (status.code(), status.message()),
            (Code::Internal, "internal error")
        );
        // Not failures of the database: what the request asked for.
        let missing = ServiceError::from(StoreError::KeyNotFound(crate::key::KeyId::from_u64(1)));
        assert!(matches!(missing, ServiceError::NotFound(_)));
    }
}
