//! `keyward.v1.KeyService`: the data plane.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use crate::{
    auth::{authenticate, client_ip},
    error::ServiceError,
    pb,
    permission::{self, Permission},
    validate::{Checks, Outcome, Validator},
};

/// Most permissions one Validate request may require.
pub const MAX_REQUIRED_PERMISSIONS: usize = 64;

/// Answers Validate from the in-memory index.
pub struct KeyService {
    validator: Arc<Validator>,
    validate_permission: Permission,
}

impl KeyService {
    /// The data plane over `validator`.
    pub fn new(validator: Arc<Validator>) -> Self {
        Self {
            validator,
            validate_permission: permission::VALIDATE.parse().expect("built-in permission"),
        }
    }
}

#[tonic::async_trait]
impl pb::key_service_server::KeyService for KeyService {
    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let caller = authenticate(&request, &self.validator, &self.validate_permission)?.id;
        let request = request.into_inner();
        let required = required_permissions(&request.required_permissions)?;
        let checks = Checks {
            required: &required,
            client_ip: client_ip(&request.client_ip)?,
        };
        let outcome = self.validator.validate(&request.key, checks);
        Ok(Response::new(response(outcome, caller)))
    }
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
    let (grant, denial) = match outcome {
        Outcome::Valid(grant) => (grant, pb::Denial::Unspecified),
        Outcome::Forbidden { grant, denied } => {
            tracing::info!(key_id = %grant.key.id, %caller, %denied, "validate: forbidden");
            (grant, pb::Denial::Forbidden)
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
        roles: key.roles.iter().map(ToString::to_string).collect(),
        permissions: grant.permissions.iter().map(ToString::to_string).collect(),
        labels: key.labels.as_map().clone().into_iter().collect(),
        expires_at: key.expires_at.map(convert::timestamp),
        owner: key.owner.clone(),
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
