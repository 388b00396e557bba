//! Caller authentication: every RPC presents the caller's own key as
//! `authorization: Bearer <key>`, checked by the same pipeline as Validate.

use tonic::metadata::MetadataMap;

use crate::{
    error::ServiceError,
    key::KeyId,
    permission::Permission,
    validate::{Outcome, Validator},
};

/// Checks the caller's key and that it holds `needed`. Returns the caller's
/// key id, the actor of any change it makes.
///
/// # Errors
/// `Unauthenticated` when the credential is missing or not a live key;
/// `PermissionDenied` when it lacks `needed`. Neither echoes the key.
pub fn authenticate(
    metadata: &MetadataMap,
    validator: &Validator,
    needed: &Permission,
) -> Result<KeyId, ServiceError> {
    let token = bearer_token(metadata)?;
    match validator.validate(token, std::slice::from_ref(needed)) {
        Outcome::Valid(grant) => Ok(grant.key.id),
        Outcome::Forbidden { grant, missing } => {
            tracing::info!(caller = %grant.key.id, %missing, "caller lacks permission");
            Err(ServiceError::PermissionDenied(missing.to_string()))
        }
        Outcome::Invalid(reason) => {
            tracing::info!(caller = ?reason.key_id(), %reason, "caller key refused");
            Err(ServiceError::Unauthenticated(
                "the caller's key is not valid",
            ))
        }
    }
}

fn bearer_token(metadata: &MetadataMap) -> Result<&str, ServiceError> {
    const MISSING: &str = "missing caller credential: send `authorization: Bearer <key>` metadata";
    let value = metadata
        .get("authorization")
        .ok_or(ServiceError::Unauthenticated(MISSING))?;
    let value = value
        .to_str()
        .map_err(|_| ServiceError::Unauthenticated(MISSING))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(ServiceError::Unauthenticated(MISSING))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ServiceError::Unauthenticated(MISSING));
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(value: Option<&str>) -> MetadataMap {
        let mut map = MetadataMap::new();
        if let Some(value) = value {
            map.insert("authorization", value.parse().unwrap());
        }
        map
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(
            bearer_token(&metadata(Some("Bearer kw_abc"))).unwrap(),
            "kw_abc"
        );
        assert_eq!(
            bearer_token(&metadata(Some("bearer  kw_abc "))).unwrap(),
            "kw_abc"
        );
        for bad in [None, Some("kw_abc"), Some("Basic kw_abc"), Some("Bearer")] {
            assert!(
                matches!(
                    bearer_token(&metadata(bad)),
                    Err(ServiceError::Unauthenticated(_))
                ),
                "{bad:?}"
            );
        }
    }
}
