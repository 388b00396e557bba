//! Property tests of the wire → domain conversions: every request message,
//! from arbitrary bytes and from arbitrary field values, goes through what
//! its handler converts before calling the lifecycle. The answer is a value
//! or an `INVALID_ARGUMENT` naming a field; never a panic, never another error.
//!
//! Validate's conversions (`required_permissions` in `keys.rs`, `client_ip` in
//! `auth.rs`) are the permission and address parsers, run here directly.

use std::collections::HashMap;

use proptest::{collection::vec, prelude::*};
use prost::Message;

use super::*;
use crate::auth::client_ip;

/// Every conversion error must be this: a bad request, with the field named.
fn invalid_argument<T>(result: Result<T, ServiceError>) -> Result<Option<T>, TestCaseError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(ServiceError::InvalidArgument { field, message }) => {
            prop_assert!(!field.is_empty() && !message.is_empty());
            Ok(None)
        }
        Err(other) => Err(TestCaseError::fail(format!(
            "not INVALID_ARGUMENT: {other:?}"
        ))),
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        any::<String>(),
        "[a-z0-9:*._-]{1,12}",
        "[a-zA-Z0-9=./:%-]{0,20}",
        "[a-z \\x00-\\x1f\u{202e}\u{200b}]{0,8}",
        (0usize..1100).prop_map(|n| "x".repeat(n)),
    ]
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    vec(text(), 0..70)
}

fn any_labels() -> impl Strategy<Value = HashMap<String, String>> {
    proptest::collection::hash_map(text(), text(), 0..70)
}

fn seconds() -> impl Strategy<Value = i64> {
    prop_oneof![any::<i64>(), -10i64..10, 0i64..4_000_000_000]
}

fn nanos() -> impl Strategy<Value = i32> {
    prop_oneof![any::<i32>(), 0i32..1_000_000_000, Just(0)]
}

fn any_duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
    proptest::option::of(
        (seconds(), nanos()).prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
    )
}

fn any_timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    proptest::option::of(
        (seconds(), nanos()).prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

fn count() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), 0u32..1002]
}

fn wire_rate_limit() -> impl Strategy<Value = Option<pb::RateLimit>> {
    proptest::option::of(
        (count(), any_duration(), count()).prop_map(|(requests, per, burst)| pb::RateLimit {
            requests,
            per,
            burst,
        }),
    )
}

prop_compose! {
    fn mint_request()(
        prefix in text(), roles in texts(), labels in any_labels(), owner in text(),
        description in text(), ttl in any_duration(), at in any_timestamp(), use_ttl in any::<bool>(),
        permissions in texts(), allowed_cidrs in texts(), rate_limit in wire_rate_limit(),
        max_uses in any::<u64>(),
    ) -> pb::MintKeyRequest {
        let expiry = if use_ttl {
            ttl.map(pb::mint_key_request::Expiry::Ttl)
        } else {
            at.map(pb::mint_key_request::Expiry::ExpiresAt)
        };
        pb::MintKeyRequest {
            prefix, roles, labels, owner, description, expiry, permissions, allowed_cidrs,
            rate_limit, max_uses,
        }
    }
}

prop_compose! {
    fn list_keys_request()(
        page_size in count(), page_token in text(), labels in any_labels(), owner in text(),
        role in text(), state in prop_oneof![any::<i32>(), 0i32..6],
    ) -> pb::ListKeysRequest {
        pb::ListKeysRequest { page_size, page_token, labels, owner, role, state }
    }
}

prop_compose! {
    fn update_role_request()(
        name in text(), add_permissions in texts(), remove_permissions in texts(),
        description in proptest::option::of(text()), max_ttl in any_duration(),
        clear_max_ttl in any::<bool>(), default_rate_limit in wire_rate_limit(),
        clear_default_rate_limit in any::<bool>(),
    ) -> pb::UpdateRoleRequest {
        pb::UpdateRoleRequest {
            name, add_permissions, remove_permissions, description, max_ttl, clear_max_ttl,
            default_rate_limit, clear_default_rate_limit,
        }
    }
}

prop_compose! {
    fn audit_request()(
        since in any_timestamp(), until in any_timestamp(), key_id in text(), actor in text(),
        action in text(), page_size in count(), page_token in text(),
    ) -> pb::ListAuditRecordsRequest {
        pb::ListAuditRecordsRequest { since, until, key_id, actor, action, page_size, page_token }
    }
}

prop_compose! {
    fn trust_spec()(
        description in text(),
        issuer in prop_oneof![text(), Just("https://token.actions.githubusercontent.com".to_owned())],
        audience in text(), required_claims in any_labels(), roles in texts(), permissions in texts(),
        ttl in any_duration(), allowed_cidrs in texts(), labels in any_labels(),
    ) -> pb::TrustPolicySpec {
        pb::TrustPolicySpec {
            description, issuer, audience, required_claims, roles, permissions, ttl, allowed_cidrs,
            labels,
        }
    }
}

/// A trust policy's name and settings, as create and update convert them.
fn trust_policy(
    name: &str,
    spec: Option<pb::TrustPolicySpec>,
    allow_http: bool,
) -> Result<(), TestCaseError> {
    invalid_argument(trust::policy_name("name", name))?;
    if let Some(spec) = invalid_argument(trust::policy_spec(spec, allow_http))? {
        prop_assert!(!spec.claims.is_empty() && spec.ttl <= crate::trust::MAX_POLICY_TTL);
        prop_assert!(allow_http || spec.issuer.as_str().starts_with("https://"));
    }
    Ok(())
}

fn validate(request: &pb::ValidateRequest) -> Result<(), TestCaseError> {
    invalid_argument(client_ip(&request.client_ip))?;
    for permission in &request.required_permissions {
        let _ = permission.parse::<Permission>();
    }
    Ok(())
}

fn mint(request: pb::MintKeyRequest) -> Result<(), TestCaseError> {
    if let Some(mint) = invalid_argument(MintRequest::try_from(request))? {
        prop_assert!(mint.roles.len() <= MAX_ROLES && mint.permissions.len() <= MAX_LIST);
        prop_assert!(crate::text::check(&mint.owner, MAX_OWNER_BYTES).is_ok());
        prop_assert!(crate::text::check(&mint.description, MAX_TEXT_BYTES).is_ok());
        prop_assert!(!mint.permissions.iter().any(Permission::is_global_wildcard));
        prop_assert!(
            mint.max_uses
                .is_none_or(|n| n > 0 && i64::try_from(n).is_ok())
        );
        if let Expiry::Ttl(ttl) = mint.expiry {
            prop_assert!(ttl >= Duration::from_millis(1));
        }
    }
    Ok(())
}

fn list_keys(request: pb::ListKeysRequest) -> Result<(), TestCaseError> {
    if let Some(query) = invalid_argument(KeyQuery::try_from(request))? {
        prop_assert!((1..=MAX_PAGE_SIZE).contains(&query.limit));
        prop_assert!(
            query
                .owner
                .is_none_or(|owner| crate::text::check(&owner, MAX_OWNER_BYTES).is_ok())
        );
    }
    Ok(())
}

fn key_request(
    id: &str,
    grace_: Option<&prost_types::Duration>,
    reason_: String,
) -> Result<(), TestCaseError> {
    invalid_argument(key_id("id", id))?;
    if let Some(grace) = invalid_argument(grace(grace_))? {
        prop_assert!(grace <= MAX_LIFETIME);
    }
    invalid_argument(reason(reason_))?;
    Ok(())
}

fn revoke_keys(request: pb::RevokeKeysRequest) -> Result<(), TestCaseError> {
    invalid_argument(labels(request.labels))?;
    invalid_argument(owner_filter(request.owner))?;
    invalid_argument(reason(request.reason))?;
    Ok(())
}

fn wire_rate_limit_converts(limit: &pb::RateLimit) -> Result<(), TestCaseError> {
    if let Some(parsed) = invalid_argument(rate_limit(limit))? {
        // What is accepted goes back on the wire as the same limit.
        prop_assert_eq!(rate_limit(&rate_limit_to_pb(&parsed)).ok(), Some(parsed));
    }
    Ok(())
}

fn create_role(request: pb::CreateRoleRequest) -> Result<(), TestCaseError> {
    if let Some(role) = invalid_argument(NewRole::try_from(request))? {
        prop_assert!(!role.permissions.is_empty());
        prop_assert!(
            role.max_ttl
                .is_none_or(|ttl| ttl >= Duration::from_millis(1) && ttl <= MAX_LIFETIME)
        );
    }
    Ok(())
}

fn update_role(request: pb::UpdateRoleRequest) -> Result<(), TestCaseError> {
    invalid_argument(role_name(&request.name))?;
    invalid_argument(RoleUpdate::try_from(request))?;
    Ok(())
}

fn audit(request: pb::ListAuditRecordsRequest) -> Result<(), TestCaseError> {
    if let Some(query) = invalid_argument(AuditQuery::try_from(request))? {
        prop_assert!((1..=MAX_PAGE_SIZE).contains(&query.limit));
    }
    Ok(())
}

/// Decodes `bytes` as `M`; what decodes is converted by `convert`.
fn from_bytes<M: Message + Default>(
    bytes: &[u8],
    convert: impl FnOnce(M) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    match M::decode(bytes) {
        Ok(message) => convert(message),
        Err(_) => Ok(()),
    }
}

/// Bytes that are mostly well-formed protobuf: a real request's encoding
/// with a few bytes changed, or raw noise.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..200),
        (
            mint_request(),
            vec((any::<proptest::sample::Index>(), any::<u8>()), 0..4)
        )
            .prop_map(|(request, edits)| {
                let mut bytes = request.encode_to_vec();
                for (at, byte) in edits {
                    if !bytes.is_empty() {
                        let i = at.index(bytes.len());
                        bytes[i] = byte;
                    }
                }
                bytes
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes as every request of keyward.v1, then its conversion.
    #[test]
    fn any_bytes_as_any_request(bytes in wire_bytes()) {
        from_bytes(&bytes, |r: pb::ValidateRequest| validate(&r))?;
        from_bytes(&bytes, mint)?;
        from_bytes(&bytes, |r: pb::GetKeyRequest| invalid_argument(key_id("id", &r.id)).map(drop))?;
        from_bytes(&bytes, list_keys)?;
        from_bytes(&bytes, |r: pb::RotateKeyRequest| key_request(&r.id, r.grace.as_ref(), String::new()))?;
        from_bytes(&bytes, |r: pb::RevokeKeyRequest| key_request(&r.id, None, r.reason))?;
        from_bytes(&bytes, |r: pb::UpdateKeyRequest| {
            invalid_argument(key_id("id", &r.id))?;
            r.rate_limit.as_ref().map_or(Ok(()), wire_rate_limit_converts)
        })?;
        from_bytes(&bytes, revoke_keys)?;
        from_bytes(&bytes, create_role)?;
        from_bytes(&bytes, |r: pb::GetRoleRequest| invalid_argument(role_name(&r.name)).map(drop))?;
        from_bytes(&bytes, update_role)?;
        from_bytes(&bytes, |r: pb::DeleteRoleRequest| invalid_argument(role_name(&r.name)).map(drop))?;
        from_bytes(&bytes, audit)?;
        from_bytes(&bytes, |r: pb::CreateTrustPolicyRequest| trust_policy(&r.name, r.spec, false))?;
        from_bytes(&bytes, |r: pb::UpdateTrustPolicyRequest| trust_policy(&r.name, r.spec, true))?;
        from_bytes(&bytes, |r: pb::GetTrustPolicyRequest| invalid_argument(trust::policy_name("name", &r.name)).map(drop))?;
        from_bytes(&bytes, |r: pb::DeleteTrustPolicyRequest| invalid_argument(trust::policy_name("name", &r.name)).map(drop))?;
    }

    #[test]
    fn any_trust_policy_request(name in text(), spec in proptest::option::of(trust_spec()), allow_http in any::<bool>()) {
        trust_policy(&name, spec, allow_http)?;
    }

    #[test]
    fn any_validate_request(required in texts(), ip in text(), key in text()) {
        validate(&pb::ValidateRequest { key, required_permissions: required, client_ip: ip })?;
    }

    #[test]
    fn any_mint_request(request in mint_request()) {
        mint(request)?;
    }

    #[test]
    fn any_list_request(request in list_keys_request()) {
        list_keys(request)?;
    }

    #[test]
    fn any_key_request(id in text(), grace in any_duration(), reason in text()) {
        key_request(&id, grace.as_ref(), reason)?;
    }

    #[test]
    fn any_bulk_revoke(labels in any_labels(), owner in text(), reason in text()) {
        revoke_keys(pb::RevokeKeysRequest { labels, owner, reason, dry_run: true })?;
    }

    #[test]
    fn any_rate_limit(limit in wire_rate_limit()) {
        if let Some(limit) = limit {
            wire_rate_limit_converts(&limit)?;
        }
    }

    #[test]
    fn any_role_request(
        name in text(), description in text(), permissions in texts(), max_ttl in any_duration(),
        default_rate_limit in wire_rate_limit(), update in update_role_request(),
    ) {
        create_role(pb::CreateRoleRequest { name, description, permissions, max_ttl, default_rate_limit })?;
        update_role(update)?;
    }

    #[test]
    fn any_audit_request(request in audit_request()) {
        audit(request)?;
    }

    /// Every instant keyward can hold goes on the wire and back unchanged.
    #[test]
    fn timestamps_round_trip(
        millis in prop_oneof![any::<i64>(), i64::MIN..i64::MIN + 2000, i64::MAX - 2000..=i64::MAX],
    ) {
        let at = Timestamp::from_millis(millis);
        prop_assert_eq!(timestamp_from("t", &timestamp(at)).ok(), Some(at));
    }

    /// A page token is read back as the page position it was made from.
    #[test]
    fn page_tokens_round_trip(millis in any::<i64>(), id in any::<u64>()) {
        let cursor = PageCursor { created_at: Timestamp::from_millis(millis), id: KeyId::from_u64(id) };
        prop_assert_eq!(page_cursor(&page_token(cursor)).ok(), Some(Some(cursor)));
    }
}
