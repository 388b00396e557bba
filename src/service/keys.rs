//! `keyward.v1.KeyService`: the data plane.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tonic::{Request, Response, Status};
use zeroize::Zeroize;

use super::convert;
use crate::{
    auth::{authenticate_credential, bearer_token, client_ip},
    error::ServiceError,
    metrics::{DbOperation, Metrics, Validated},
    pb,
    permission::{self, Permission},
    validate::{Checks, Outcome, Validator},
};

/// Most permissions one Validate request may require.
pub const MAX_REQUIRED_PERMISSIONS: usize = 64;

/// One Validate answered, with what its carriers need besides the message.
#[derive(Debug)]
pub struct Answer {
    /// The answer itself.
    pub response: pb::ValidateResponse,
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

    /// Checks the request and decides on its key: everything after the
    /// caller's authentication.
    async fn decide(&self, request: &pb::ValidateRequest) -> Result<Outcome, ServiceError> {
        let required = required_permissions(&request.required_permissions)?;
        let checks = Checks {
            required: &required,
            client_ip: client_ip(&request.client_ip)?,
            skip_rate_limit: false,
        };
        Ok(self.validator.validate(&request.key, checks).await?)
    }
}

impl KeyService {
    /// Validate, whatever carried it: authenticates the caller's
    /// credential (`presented`, from `peer`), decides on the request's key
    /// and counts the call. The gRPC handler, the JSON endpoint (`POST
    /// /v1/keys:validate`) and the gateways all answer through it.
    ///
    /// # Errors
    /// The caller's refusal (see [`authenticate_credential`]), a stale
    /// replica, `INVALID_ARGUMENT` for a malformed request, and a database
    /// failure when a capped key's use cannot be spent.
    pub async fn answer(
        &self,
        presented: Result<&str, ServiceError>,
        peer: Option<IpAddr>,
        request: &pb::ValidateRequest,
    ) -> Result<Answer, ServiceError> {
        let started = Instant::now();
        // Checked here too (authentication checks it first thing), so that a
        // stale replica's refusals are counted as Validate's, not the caller's.
        if let Err(stale) = self.validator.ensure_fresh() {
            self.metrics.validated(Validated::Stale, started);
            return Err(ServiceError::from(stale));
        }
        // Refusals of the caller's own key are counted by `authenticate`.
        let caller = authenticate_credential(
            presented,
            peer,
            &self.validator,
            Some(&self.validate_permission),
            &self.metrics,
        )?
        .id;
        let decided = self.decide(request).await;
        let how = match &decided {
            Ok(outcome) => Validated::of(outcome),
            Err(ServiceError::InvalidArgument { .. }) => Validated::InvalidArgument,
            // The only other failure: spending a capped key's use.
            Err(_) => {
                self.metrics.database_error(DbOperation::Validate);
                Validated::DatabaseError
            }
        };
        self.metrics.validated(how, started);
        let outcome = decided?;
        let retry_after = match &outcome {
            Outcome::RateLimited { retry_after, .. } => Some(retry_after_seconds(*retry_after)),
            _ => None,
        };
        Ok(Answer {
            response: response(outcome, caller),
            retry_after,
            how,
        })
    }
}

#[tonic::async_trait]
impl pb::key_service_server::KeyService for KeyService {
    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let peer = request.remote_addr().map(|addr| addr.ip());
        let (metadata, _, message) = request.into_parts();
        let message = WipedOnDrop(message);
        let answer = self
            .answer(bearer_token(&metadata), peer, &message.0)
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

fn required_permissions(raw: &[String]) -> Result<Vec<Permission>, ServiceError> {
    if raw.len() > MAX_REQUIRED_PERMISSIONS {
        return Err(ServiceError::invalid(
            "required_permissions",
            format!(
                "at most {MAX_REQUIRED_PERMISSIONS} permissions per request, got {}",
                raw.len()
            ),
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, text)| {
            text.parse().map_err(|error| {
                ServiceError::invalid("required_permissions", format!("entry {i}: {error}"))
            })
        })
        .collect()
}

/// Builds the response. Every invalid key gets the same answer; the reason
/// goes to the log with the key id, never the key.
fn response(outcome: Outcome, caller: crate::key::KeyId) -> pb::ValidateResponse {
    let (grant, denial, retry_after) = match outcome {
        Outcome::Valid(grant) => (grant, pb::Denial::Unspecified, None),
        Outcome::RateLimited { grant, retry_after } => {
            tracing::debug!(key_id = %grant.key.id, %caller, ?retry_after, "validate: rate limited");
            (grant, pb::Denial::RateLimited, Some(retry_after))
        }
        Outcome::Forbidden { grant, denied } => {
            tracing::info!(key_id = %grant.key.id, %caller, %denied, "validate: forbidden");
            (grant, pb::Denial::Forbidden, None)
        }
        Outcome::Invalid(reason) => {
            tracing::info!(key_id = ?reason.key_id(), %caller, %reason, "validate: invalid");
            return pb::ValidateResponse {
                denial: pb::Denial::Invalid.into(),
                ..Default::default()
            };
        }
    };
    let key = &grant.key;
    pb::ValidateResponse {
        valid: denial == pb::Denial::Unspecified,
        key_id: key.id.to_string(),
        denial: denial.into(),
        roles: key.profile.roles.iter().map(ToString::to_string).collect(),
        permissions: grant.permissions.iter().map(ToString::to_string).collect(),
        labels: key.profile.labels.as_map().clone().into_iter().collect(),
        expires_at: key.expires_at.map(convert::timestamp),
        owner: key.profile.owner.to_string(),
        rate_limit: grant
            .rate_limit
            .map(|(limit, remaining_burst)| pb::RateLimitState {
                limit: Some(convert::rate_limit_to_pb(&limit)),
                remaining_burst,
            }),
        retry_after: retry_after.and_then(|wait| wait.try_into().ok()),
        remaining_uses: grant.remaining_uses,
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
