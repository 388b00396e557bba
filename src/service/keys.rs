//! `keyward.v1.KeyService`: the data plane.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tonic::{Request, Response, Status};
use zeroize::Zeroize;

pub mod wire;

use crate::{
    auth::{Origin, authenticate_caller_id, bearer_token, client_ip},
    error::ServiceError,
    key::KeyId,
    metrics::{DbOperation, Metrics, Validated},
    pb,
    permission::{self, Permission},
    validate::{Checks, Outcome, Required, Validator},
};
use wire::ValidateAnswer;

/// Most permissions one Validate request may require.
pub const MAX_REQUIRED_PERMISSIONS: usize = 64;

/// One Validate answered, with what its carriers need besides the message.
#[derive(Debug)]
pub struct Answer {
    /// The answer itself.
    pub response: ValidateAnswer,
    /// For `RATE_LIMITED`: the whole seconds to send as `retry-after`.
    pub retry_after: Option<u64>,
    /// How the call ended, as `keyward_validate_total` counted it.
    pub how: Validated,
}

/// Answers Validate from the in-memory index.
pub struct KeyService {
    validator: Arc<Validator>,
    validate_permission: Permission,
    metrics: Arc<Metrics>,
}

impl KeyService {
    /// The data plane over `validator`, counting into `metrics`.
    ///
    /// # Panics
    /// Never: the permission it parses is a built-in constant.
    pub fn new(validator: Arc<Validator>, metrics: Arc<Metrics>) -> Self {
        Self {
            validator,
            validate_permission: permission::VALIDATE.parse().expect("built-in permission"),
            metrics,
        }
    }

    /// Validate, whatever carried it: authenticates the caller's
    /// credential (`presented`, from `origin`), decides on the request's key
    /// and counts the call. The gRPC handler and the JSON endpoint (`POST
    /// /v1/keys:validate`) answer through it, the gateways through its two
    /// halves ([`KeyService::authenticate`], [`KeyService::decide`]).
    ///
    /// # Errors
    /// The caller's refusal (see [`authenticate_credential`]), a stale
    /// replica, `INVALID_ARGUMENT` for a malformed request, and a database
    /// failure when a capped key's use cannot be spent.
    ///
    /// [`authenticate_credential`]: crate::auth::authenticate_credential
    pub async fn answer(
        &self,
        presented: Result<&str, ServiceError>,
        origin: Origin<'_>,
        request: &pb::ValidateRequest,
    ) -> Result<Answer, ServiceError> {
        let started = Instant::now();
        let caller = self.authenticate(presented, origin, started)?;
        // Read after the caller is known: a stranger learns nothing, not even
        // that its request is malformed.
        let parsed = checked_permissions(&request.required_permissions)
            .and_then(|required| Ok((required, client_ip(&request.client_ip)?)));
        let (required, client_ip) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                self.metrics.validated(Validated::InvalidArgument, started);
                return Err(error);
            }
        };
        let checks = Checks {
            required,
            client_ip,
            skip_rate_limit: false,
        };
        let decision = self.decide(started, caller, &request.key, checks).await?;
        Ok(Answer {
            retry_after: decision.retry_after(),
            how: decision.how,
            response: ValidateAnswer::of(decision.outcome),
        })
    }

    /// The first half of Validate: the replica must be fresh, and the
    /// caller's credential (`presented`, from `origin`) a live key holding
    /// `keyward:validate`. `started` is when the call began, for the
    /// metrics of a stale replica's refusal.
    ///
    /// # Errors
    /// See [`KeyService::answer`].
    pub fn authenticate(
        &self,
        presented: Result<&str, ServiceError>,
        origin: Origin<'_>,
        started: Instant,
    ) -> Result<KeyId, ServiceError> {
        // Checked here too (authentication checks it first thing), so that a
        // stale replica's refusals are counted as Validate's, not the caller's.
        if let Err(stale) = self.validator.ensure_fresh() {
            self.metrics.validated(Validated::Stale, started);
            return Err(ServiceError::from(stale));
        }
        // Refusals of the caller's own key are counted by `authenticate`.
        authenticate_caller_id(
            presented,
            origin,
            &self.validator,
            Some(&self.validate_permission),
            &self.metrics,
        )
    }

    /// The second half of Validate, for an authenticated `caller`: decides
    /// on `key` with `checks`, logs the reason of a refusal (never the key)
    /// and counts the call, begun at `started`.
    ///
    /// # Errors
    /// A database failure when a capped key's use cannot be spent.
    pub async fn decide(
        &self,
        started: Instant,
        caller: KeyId,
        key: &str,
        checks: Checks<'_>,
    ) -> Result<Decision, ServiceError> {
        let decided = self.validator.validate(key, checks).await;
        // The only failure: spending a capped key's use.
        let how = if let Ok(outcome) = &decided {
            Validated::of(outcome)
        } else {
            self.metrics.database_error(DbOperation::Validate);
            Validated::DatabaseError
        };
        self.metrics.validated(how, started);
        let outcome = decided?;
        log_outcome(&outcome, caller);
        Ok(Decision { outcome, how })
    }
}

/// What [`KeyService::decide`] decided, and how it was counted.
#[derive(Debug)]
pub struct Decision {
    /// The validation's outcome.
    pub outcome: Outcome,
    /// How `keyward_validate_total` counted it.
    pub how: Validated,
}

impl Decision {
    /// For `RATE_LIMITED`: the whole seconds to send as `retry-after`.
    #[must_use]
    pub fn retry_after(&self) -> Option<u64> {
        match &self.outcome {
            Outcome::RateLimited { retry_after, .. } => Some(retry_after_seconds(*retry_after)),
            _ => None,
        }
    }
}

#[tonic::async_trait]
impl wire::server::key_service_server::KeyService for KeyService {
    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<ValidateAnswer>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        let message = WipedOnDrop(message);
        let answer = self
            .answer(
                bearer_token(&metadata),
                Origin::of_extensions(&extensions),
                &message.0,
            )
            .await?;
        let mut response = Response::new(answer.response);
        if let Some(seconds) = answer.retry_after {
            response.metadata_mut().insert(
                "retry-after",
                seconds
                    .to_string()
                    .parse()
                    .expect("digits are valid metadata"),
            );
        }
        Ok(response)
    }
}

/// A Validate request whose presented key is wiped when the call ends,
/// answered or cancelled: the decoder's copy (or a gateway's, taken from
/// the proxied request) is the one keyward owns.
pub struct WipedOnDrop(pub pb::ValidateRequest);

impl Drop for WipedOnDrop {
    fn drop(&mut self) {
        self.0.key.zeroize();
    }
}

/// A wait as HTTP's `Retry-After`: whole seconds, rounded up, at least one.
#[must_use]
fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The required permissions of a Validate request (or a gateway route),
/// parsed.
///
/// # Errors
/// `INVALID_ARGUMENT` for too many, or one that is malformed.
pub fn required_permissions(raw: &[String]) -> Result<Vec<Permission>, ServiceError> {
    Ok(checked_permissions(raw)?
        .texts()
        .map(|text| text.parse().expect("checked"))
        .collect())
}

/// The required permissions of a Validate request, checked in place.
///
/// # Errors
/// As [`required_permissions`].
fn checked_permissions(raw: &[String]) -> Result<Required<'_>, ServiceError> {
    if raw.len() > MAX_REQUIRED_PERMISSIONS {
        return Err(ServiceError::invalid(
            "required_permissions",
            format!(
                "at most {MAX_REQUIRED_PERMISSIONS} permissions per request, got {}",
                raw.len()
            ),
        ));
    }
    Required::check(raw).map_err(|(i, error)| {
        ServiceError::invalid("required_permissions", format!("entry {i}: {error}"))
    })
}

/// Logs why a key was refused, with its id and the caller's, never the key:
/// the caller learns only the denial.
fn log_outcome(outcome: &Outcome, caller: KeyId) {
    match outcome {
        Outcome::Valid(_) => {}
        Outcome::RateLimited { grant, retry_after } => {
            tracing::debug!(key_id = %grant.key.id, %caller, ?retry_after, "validate: rate limited");
        }
        Outcome::Forbidden { grant, denied } => {
            tracing::info!(key_id = %grant.key.id, %caller, %denied, "validate: forbidden");
        }
        Outcome::Invalid(reason) => {
            tracing::info!(key_id = ?reason.key_id(), %caller, %reason, "validate: invalid");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_permissions_are_bounded_and_parsed() {
        let ok: Vec<String> = (0..MAX_REQUIRED_PERMISSIONS)
            .map(|i| format!("p:{i}"))
            .collect();
        assert_eq!(
            required_permissions(&ok).unwrap().len(),
            MAX_REQUIRED_PERMISSIONS
        );

        let too_many: Vec<String> = (0..=MAX_REQUIRED_PERMISSIONS)
            .map(|i| format!("p:{i}"))
            .collect();
        let message = Status::from(required_permissions(&too_many).unwrap_err())
            .message()
            .to_owned();
        assert!(
            message.contains("required_permissions") && message.contains("65"),
            "{message}"
        );

        let oversized = vec!["ok".to_owned(), "a".repeat(10_000)];
        let message = Status::from(required_permissions(&oversized).unwrap_err())
            .message()
            .to_owned();
        assert!(
            message.contains("entry 1") && message.contains("longer than"),
            "{message}"
        );
    }
}
