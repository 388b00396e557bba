//! Trust policies: their JSON view and their text for people.

use std::{collections::BTreeMap, time::Duration};

use keyward::pb;
use serde::Serialize;

use super::{duration_text, labels_text, non_empty, or_dash, sorted_labels, table_text, timestamp};

/// A trust policy, as `trust show`, `list`, `create` and `update` print it.
#[derive(Debug, Serialize)]
pub struct TrustPolicyView<'a> {
    name: &'a str,
    description: Option<&'a str>,
    issuer: &'a str,
    audience: &'a str,
    required_claims: BTreeMap<&'a str, &'a str>,
    roles: &'a [String],
    permissions: &'a [String],
    ttl: Option<String>,
    ttl_seconds: Option<u64>,
    allowed_cidrs: &'a [String],
    labels: BTreeMap<&'a str, &'a str>,
    owner: Option<&'a str>,
    created_by: Option<&'a str>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

/// An empty spec, for a policy the server sent without one.
static NO_SPEC: std::sync::LazyLock<pb::TrustPolicySpec> =
    std::sync::LazyLock::new(pb::TrustPolicySpec::default);

fn spec(policy: &pb::TrustPolicy) -> &pb::TrustPolicySpec {
    policy.spec.as_ref().unwrap_or(&NO_SPEC)
}

impl<'a> From<&'a pb::TrustPolicy> for TrustPolicyView<'a> {
    fn from(policy: &'a pb::TrustPolicy) -> Self {
        let spec = spec(policy);
        Self {
            name: &policy.name,
            description: non_empty(&spec.description),
            issuer: &spec.issuer,
            audience: &spec.audience,
            required_claims: sorted_labels(&spec.required_claims),
            roles: &spec.roles,
            permissions: &spec.permissions,
            ttl: duration_text(spec.ttl.as_ref()),
            ttl_seconds: spec
                .ttl
                .and_then(|d| Duration::try_from(d).ok())
                .map(|d| d.as_secs()),
            allowed_cidrs: &spec.allowed_cidrs,
            labels: sorted_labels(&spec.labels),
            owner: non_empty(&policy.owner),
            created_by: non_empty(&policy.created_by),
            created_at: timestamp(policy.created_at.as_ref()),
            updated_at: timestamp(policy.updated_at.as_ref()),
        }
    }
}

/// `trust delete`: the policy is gone, so all there is to say is its name.
#[derive(Debug, Serialize)]
pub struct DeletedPolicyView<'a> {
    pub name: &'a str,
    pub deleted: bool,
}

/// A policy as `name value` lines.
pub fn policy_fields(policy: &pb::TrustPolicy) -> Vec<(&'static str, String)> {
    let spec = spec(policy);
    vec![
        ("name", policy.name.clone()),
        ("description", or_dash(spec.description.clone())),
        ("issuer", spec.issuer.clone()),
        ("audience", spec.audience.clone()),
        (
            "required claims",
            or_dash(labels_text(&spec.required_claims)),
        ),
        ("roles", or_dash(spec.roles.join(", "))),
        ("permissions", or_dash(spec.permissions.join(", "))),
        (
            "ttl",
            duration_text(spec.ttl.as_ref()).unwrap_or_else(|| "-".into()),
        ),
        ("allowed cidrs", or_dash(spec.allowed_cidrs.join(", "))),
        ("labels", or_dash(labels_text(&spec.labels))),
        ("owner", or_dash(policy.owner.clone())),
        ("created by", or_dash(policy.created_by.clone())),
        (
            "created",
            timestamp(policy.created_at.as_ref()).unwrap_or_else(|| "-".into()),
        ),
        (
            "updated",
            timestamp(policy.updated_at.as_ref()).unwrap_or_else(|| "-".into()),
        ),
    ]
}

/// Policies as a table, one per line.
pub fn policies_table(policies: &[pb::TrustPolicy]) -> String {
    let rows: Vec<Vec<String>> = policies
        .iter()
        .map(|policy| {
            let spec = spec(policy);
            vec![
                policy.name.clone(),
                spec.issuer.clone(),
                spec.audience.clone(),
                or_dash(labels_text(&spec.required_claims)),
                or_dash(spec.roles.join(",")),
                duration_text(spec.ttl.as_ref()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table_text(
        &["NAME", "ISSUER", "AUDIENCE", "CLAIMS", "ROLES", "TTL"],
        &rows,
    )
}
