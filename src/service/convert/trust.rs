//! Trust policies on the wire ↔ [`crate::trust`]; input errors name the
//! field as the proto does.

use std::collections::BTreeMap;

use super::{MAX_ROLES, bounded, duration_from, parse_list, timestamp};
use crate::{
    error::ServiceError,
    model::{Labels, MAX_TEXT_BYTES},
    pb,
    trust::{
        ClaimPattern, Issuer, MAX_CLAIMS, PolicyName, PolicySpec, TrustPolicy, check_audience,
        check_claim_name,
    },
};

/// A policy name from field `field`.
pub fn policy_name(field: &'static str, text: &str) -> Result<PolicyName, ServiceError> {
    text.parse()
        .map_err(|error| ServiceError::invalid(field, error))
}

/// A policy's settings; `allow_http` is the server's
/// `--oidc-allow-http-issuers`.
pub fn policy_spec(
    spec: Option<pb::TrustPolicySpec>,
    allow_http: bool,
) -> Result<PolicySpec, ServiceError> {
    let spec = spec.ok_or_else(|| ServiceError::invalid("spec", "is required"))?;
    let issuer = Issuer::parse(&spec.issuer, allow_http)
        .map_err(|error| ServiceError::invalid("issuer", error))?;
    check_audience(&spec.audience).map_err(|error| ServiceError::invalid("audience", error))?;
    if spec.required_claims.len() > MAX_CLAIMS {
        return Err(ServiceError::invalid(
            "required_claims",
            format!("at most {MAX_CLAIMS} required claims"),
        ));
    }
    let claims = spec
        .required_claims
        .iter()
        .map(|(name, pattern)| {
            check_claim_name(name)
                .and_then(|()| ClaimPattern::parse(pattern))
                .map(|pattern| (name.clone(), pattern))
                .map_err(|error| ServiceError::invalid("required_claims", error))
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    if spec.roles.len() > MAX_ROLES {
        return Err(ServiceError::invalid(
            "roles",
            format!("at most {MAX_ROLES} roles"),
        ));
    }
    let ttl = spec
        .ttl
        .as_ref()
        .ok_or_else(|| ServiceError::invalid("ttl", "is required (at most 1h)"))?;
    let ttl = duration_from("ttl", ttl)?;
    if !ttl.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(ServiceError::invalid(
            "ttl",
            "must be a whole number of milliseconds",
        ));
    }
    let parsed = PolicySpec {
        description: bounded("description", spec.description, MAX_TEXT_BYTES)?,
        issuer,
        audience: spec.audience,
        claims,
        roles: parse_list("roles", &spec.roles)?,
        permissions: parse_list("permissions", &spec.permissions)?,
        ttl,
        allowed_cidrs: parse_list("allowed_cidrs", &spec.allowed_cidrs)?,
        labels: Labels::new(spec.labels.into_iter().collect())
            .map_err(|error| ServiceError::invalid("labels", error))?,
    };
    parsed
        .check()
        .map_err(|(field, error)| ServiceError::invalid(field, error))?;
    Ok(parsed)
}

/// A policy for the wire.
pub fn trust_policy(policy: &TrustPolicy) -> pb::TrustPolicy {
    let spec = &policy.spec;
    let texts = |items: &mut dyn Iterator<Item = String>| items.collect();
    pb::TrustPolicy {
        name: policy.name.to_string(),
        spec: Some(pb::TrustPolicySpec {
            description: spec.description.clone(),
            issuer: spec.issuer.to_string(),
            audience: spec.audience.clone(),
            required_claims: spec
                .claims
                .iter()
                .map(|(name, pattern)| (name.clone(), pattern.to_string()))
                .collect(),
            roles: texts(&mut spec.roles.iter().map(ToString::to_string)),
            permissions: texts(&mut spec.permissions.iter().map(ToString::to_string)),
            ttl: spec.ttl.try_into().ok(),
            allowed_cidrs: texts(&mut spec.allowed_cidrs.iter().map(ToString::to_string)),
            labels: spec.labels.as_map().clone().into_iter().collect(),
        }),
        owner: policy.owner.clone(),
        created_by: policy
            .created_by
            .map(|id| id.to_string())
            .unwrap_or_default(),
        created_at: Some(timestamp(policy.created_at)),
        updated_at: Some(timestamp(policy.updated_at)),
    }
}
