//! Every request of `keyward.v1`: the first byte picks the RPC, the rest is
//! decoded as its request message with prost, as the server does, and what
//! decodes goes through the conversions its handler makes before calling
//! the lifecycle (the `TryFrom` impls where the request has one, else the
//! parsers the handler calls). Nothing may panic.
//!
//! The same conversions, with the crate's private helpers, are property
//! tests in `src/service/convert/properties.rs`; this target runs them
//! under libFuzzer's coverage guidance.
#![no_main]

use keyward::{
    auth::client_ip,
    key::KeyId,
    lifecycle::{MintRequest, NewRole},
    model::{
        Labels, MAX_OWNER_BYTES, MAX_TEXT_BYTES, RoleUpdate,
        query::{AuditQuery, KeyQuery},
    },
    pb,
    permission::{Permission, RoleName},
    text,
    trust::{ClaimPattern, Issuer, PolicyName, check_audience, check_claim_name},
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn decode<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    M::decode(bytes).ok()
}

fn id(text: &str) {
    let _ = text.parse::<KeyId>();
}

fn role(text: &str) {
    let _ = text.parse::<RoleName>();
}

fn duration(duration: Option<&prost_types::Duration>) {
    if let Some(duration) = duration {
        let _ = std::time::Duration::try_from(*duration);
    }
}

fn policy(name: &str, spec: Option<&pb::TrustPolicySpec>) {
    let _ = name.parse::<PolicyName>();
    let Some(spec) = spec else {
        return;
    };
    let _ = Issuer::parse(&spec.issuer, true).map(|issuer| issuer.discovery_url());
    let _ = check_audience(&spec.audience);
    for (name, pattern) in &spec.required_claims {
        let _ = check_claim_name(name);
        if let Ok(pattern) = ClaimPattern::parse(pattern) {
            let _ = pattern.matches(name);
        }
    }
    duration(spec.ttl.as_ref());
    let _ = Labels::new(spec.labels.clone().into_iter().collect());
}

fn rate_limit(limit: Option<&pb::RateLimit>) {
    if let Some(limit) = limit {
        duration(limit.per.as_ref());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&rpc, bytes)) = data.split_first() else {
        return;
    };
    match rpc % 18 {
        0 => {
            if let Some(request) = decode::<pb::ValidateRequest>(bytes) {
                let _ = client_ip(&request.client_ip);
                for permission in &request.required_permissions {
                    let _ = permission.parse::<Permission>();
                }
            }
        }
        1 => {
            if let Some(request) = decode::<pb::MintKeyRequest>(bytes) {
                let _ = MintRequest::try_from(request);
            }
        }
        2 => {
            if let Some(request) = decode::<pb::GetKeyRequest>(bytes) {
                id(&request.id);
            }
        }
        3 => {
            if let Some(request) = decode::<pb::ListKeysRequest>(bytes) {
                let _ = KeyQuery::try_from(request);
            }
        }
        4 => {
            if let Some(request) = decode::<pb::RotateKeyRequest>(bytes) {
                id(&request.id);
                duration(request.grace.as_ref());
            }
        }
        5 => {
            if let Some(request) = decode::<pb::RevokeKeyRequest>(bytes) {
                id(&request.id);
                let _ = text::check(&request.reason, MAX_TEXT_BYTES);
            }
        }
        6 => {
            if let Some(request) = decode::<pb::UpdateKeyRequest>(bytes) {
                id(&request.id);
                rate_limit(request.rate_limit.as_ref());
            }
        }
        7 => {
            if let Some(request) = decode::<pb::RevokeKeysRequest>(bytes) {
                let _ = Labels::new(request.labels.into_iter().collect());
                let _ = text::check(&request.owner, MAX_OWNER_BYTES);
                let _ = text::check(&request.reason, MAX_TEXT_BYTES);
            }
        }
        8 => {
            if let Some(request) = decode::<pb::CreateRoleRequest>(bytes) {
                let _ = NewRole::try_from(request);
            }
        }
        9 => {
            if let Some(request) = decode::<pb::GetRoleRequest>(bytes) {
                role(&request.name);
            }
        }
        10 => {
            let _ = decode::<pb::ListRolesRequest>(bytes);
        }
        11 => {
            if let Some(request) = decode::<pb::UpdateRoleRequest>(bytes) {
                role(&request.name);
                let _ = RoleUpdate::try_from(request);
            }
        }
        12 => {
            if let Some(request) = decode::<pb::DeleteRoleRequest>(bytes) {
                role(&request.name);
            }
        }
        14 => {
            if let Some(request) = decode::<pb::CreateTrustPolicyRequest>(bytes) {
                policy(&request.name, request.spec.as_ref());
            }
        }
        15 => {
            if let Some(request) = decode::<pb::UpdateTrustPolicyRequest>(bytes) {
                policy(&request.name, request.spec.as_ref());
            }
        }
        16 => {
            if let Some(request) = decode::<pb::GetTrustPolicyRequest>(bytes) {
                let _ = request.name.parse::<PolicyName>();
            }
        }
        17 => {
            if let Some(request) = decode::<pb::ExchangeRequest>(bytes) {
                let _ = request.policy.parse::<PolicyName>();
            }
        }
        _ => {
            if let Some(request) = decode::<pb::ListAuditRecordsRequest>(bytes) {
                let _ = AuditQuery::try_from(request);
            }
        }
    }
});
