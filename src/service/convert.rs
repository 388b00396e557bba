//! Wire types ↔ domain types, at the service edge only. Input conversions
//! return `INVALID_ARGUMENT` naming the field.

use std::{collections::BTreeMap, time::Duration};

use crate::{
    clock::Timestamp,
    error::ServiceError,
    key::{KeyId, Prefix},
    lifecycle::{Expiry, MintRequest, NewRole},
    model::{
        AuditRecord, KeyRecord, KeyState, Labels, MAX_LIFETIME, MAX_OWNER_BYTES, MAX_TEXT_BYTES,
        Role, RoleUpdate,
        query::{AuditQuery, KeyQuery, PageCursor},
    },
    pb,
    permission::{Permission, RoleName},
    rate_limit::RateLimit,
};

/// Most keys one `ListKeys` page returns.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Page size when the request names none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Most roles one key may hold, and most permissions or CIDRs one request
/// may list.
pub const MAX_ROLES: usize = 64;
const MAX_LIST: usize = 64;
/// Longest audit action filter accepted.
const MAX_ACTION_BYTES: usize = 64;

pub fn timestamp(at: Timestamp) -> prost_types::Timestamp {
    let millis = at.as_millis();
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).expect("below 1e9"),
    }
}

fn timestamp_from(
    field: &'static str,
    at: &prost_types::Timestamp,
) -> Result<Timestamp, ServiceError> {
    if !(0..1_000_000_000).contains(&at.nanos) {
        return Err(ServiceError::invalid(field, "nanos must be in 0..1e9"));
    }
    // In i128: the seconds of the earliest instants overflow i64 as
    // milliseconds before their nanos bring them back into range.
    let millis = i128::from(at.seconds) * 1000 + i128::from(at.nanos / 1_000_000);
    let millis = i64::try_from(millis).map_err(|_| ServiceError::invalid(field, "out of range"))?;
    Ok(Timestamp::from_millis(millis))
}

fn duration_from(
    field: &'static str,
    duration: &prost_types::Duration,
) -> Result<Duration, ServiceError> {
    if duration.seconds < 0 || duration.nanos < 0 {
        return Err(ServiceError::invalid(field, "must not be negative"));
    }
    // prost would carry the excess into the seconds; protobuf says such a
    // duration is malformed, and a client that sends one has a bug.
    if duration.nanos >= 1_000_000_000 {
        return Err(ServiceError::invalid(field, "nanos must be in 0..1e9"));
    }
    Duration::try_from(*duration).map_err(|_| ServiceError::invalid(field, "out of range"))
}

/// A key's TTL: at least a millisecond, the resolution every time is kept
/// in, since a shorter one would mint a key already expired. (The lifecycle
/// bounds the expiry it makes at [`MAX_LIFETIME`].)
fn ttl(duration: &prost_types::Duration) -> Result<Duration, ServiceError> {
    match duration_from("ttl", duration)? {
        d if d.is_zero() => Err(ServiceError::invalid("ttl", "must be positive")),
        d if d < Duration::from_millis(1) => {
            Err(ServiceError::invalid("ttl", "must be at least 1ms"))
        }
        d => Ok(d),
    }
}

/// Parses each entry of a repeated field, naming the field and the entry in
/// errors; at most 64 entries, sorted and without duplicates.
fn parse_list<T: std::str::FromStr + Ord>(
    field: &'static str,
    items: &[String],
) -> Result<Vec<T>, ServiceError>
where
    T::Err: std::fmt::Display,
{
    if items.len() > MAX_LIST {
        return Err(ServiceError::invalid(
            field,
            format!("at most {MAX_LIST} entries"),
        ));
    }
    let mut parsed = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.parse()
                .map_err(|error| ServiceError::invalid(field, format!("entry {i}: {error}")))
        })
        .collect::<Result<Vec<T>, _>>()?;
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

/// Checked labels, e.g. the filter of a bulk revoke.
pub fn labels(
    labels: std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, ServiceError> {
    let labels: BTreeMap<String, String> = labels.into_iter().collect();
    Labels::new(labels.clone()).map_err(|error| ServiceError::invalid("labels", error))?;
    Ok(labels)
}

pub fn role_name(text: &str) -> Result<RoleName, ServiceError> {
    text.parse()
        .map_err(|error| ServiceError::invalid("name", error))
}

/// A role's max TTL: positive, in whole milliseconds as stored, and at most
/// [`MAX_LIFETIME`] (no key may live longer anyway).
fn max_ttl(duration: Option<&prost_types::Duration>) -> Result<Option<Duration>, ServiceError> {
    duration
        .map(|d| match duration_from("max_ttl", d)? {
            d if d.is_zero() => Err(ServiceError::invalid("max_ttl", "must be positive")),
            d if !d.subsec_nanos().is_multiple_of(1_000_000) => Err(ServiceError::invalid(
                "max_ttl",
                "must be a whole number of milliseconds",
            )),
            d if d > MAX_LIFETIME => Err(ServiceError::invalid(
                "max_ttl",
                "must be at most 100 years (omit it for no cap)",
            )),
            d => Ok(d),
        })
        .transpose()
}

pub fn rate_limit(limit: &pb::RateLimit) -> Result<RateLimit, ServiceError> {
    let per = limit
        .per
        .as_ref()
        .map(|per| duration_from("rate_limit", per))
        .transpose()?
        .unwrap_or_default();
    RateLimit::new(limit.requests, per, limit.burst)
        .map_err(|error| ServiceError::invalid("rate_limit", error))
}

pub fn rate_limit_to_pb(limit: &RateLimit) -> pb::RateLimit {
    pb::RateLimit {
        requests: limit.requests(),
        per: limit.per().try_into().ok(),
        burst: limit.burst(),
    }
}

pub fn key_id(field: &'static str, text: &str) -> Result<KeyId, ServiceError> {
    text.parse()
        .map_err(|error| ServiceError::invalid(field, error))
}

fn bounded(field: &'static str, text: String, max: usize) -> Result<String, ServiceError> {
    crate::text::check(&text, max).map_err(|bad| ServiceError::invalid(field, bad))?;
    Ok(text)
}

/// An owner to select keys by; empty: any owner. One no key can have (too
/// long, or hiding characters) is refused rather than matching nothing.
pub fn owner_filter(owner: String) -> Result<Option<String>, ServiceError> {
    if owner.is_empty() {
        return Ok(None);
    }
    bounded("owner", owner, MAX_OWNER_BYTES).map(Some)
}

pub fn reason(text: String) -> Result<String, ServiceError> {
    bounded("reason", text, MAX_TEXT_BYTES)
}

pub fn grace(grace: Option<&prost_types::Duration>) -> Result<Duration, ServiceError> {
    let grace = grace.map_or(Ok(Duration::ZERO), |grace| duration_from("grace", grace))?;
    if grace > MAX_LIFETIME {
        return Err(ServiceError::invalid("grace", "must be at most 100 years"));
    }
    Ok(grace)
}

impl TryFrom<pb::MintKeyRequest> for MintRequest {
    type Error = ServiceError;

    fn try_from(request: pb::MintKeyRequest) -> Result<Self, Self::Error> {
        let prefix = if request.prefix.is_empty() {
            Prefix::default()
        } else {
            request
                .prefix
                .parse()
                .map_err(|error| ServiceError::invalid("prefix", error))?
        };
        if request.roles.len() > MAX_ROLES {
            return Err(ServiceError::invalid(
                "roles",
                format!("at most {MAX_ROLES} roles"),
            ));
        }
        let roles = parse_list("roles", &request.roles)?;
        let permissions: Vec<Permission> = parse_list("permissions", &request.permissions)?;
        if permissions.iter().any(Permission::is_global_wildcard) {
            return Err(ServiceError::invalid(
                "permissions",
                "`*` alone is reserved for built-in roles",
            ));
        }
        let allowed_cidrs = parse_list("allowed_cidrs", &request.allowed_cidrs)?;
        let labels = Labels::new(request.labels.into_iter().collect())
            .map_err(|error| ServiceError::invalid("labels", error))?;
        let expiry = match &request.expiry {
            None => Expiry::Never,
            Some(pb::mint_key_request::Expiry::Ttl(duration)) => Expiry::Ttl(ttl(duration)?),
            Some(pb::mint_key_request::Expiry::ExpiresAt(at)) => {
                Expiry::At(timestamp_from("expires_at", at)?)
            }
        };
        let rate_limit = request.rate_limit.as_ref().map(rate_limit).transpose()?;
        if i64::try_from(request.max_uses).is_err() {
            // The store counts uses in a signed 64-bit column.
            return Err(ServiceError::invalid(
                "max_uses",
                format!("at most {}", i64::MAX),
            ));
        }
        let max_uses = (request.max_uses > 0).then_some(request.max_uses);
        Ok(Self {
            rate_limit,
            max_uses,
            prefix,
            roles,
            permissions,
            allowed_cidrs,
            labels,
            owner: bounded("owner", request.owner, MAX_OWNER_BYTES)?,
            description: bounded("description", request.description, MAX_TEXT_BYTES)?,
            expiry,
        })
    }
}

impl TryFrom<pb::ListKeysRequest> for KeyQuery {
    type Error = ServiceError;

    fn try_from(request: pb::ListKeysRequest) -> Result<Self, Self::Error> {
        let limit = page_size(request.page_size)?;
        let state = match pb::KeyState::try_from(request.state) {
            Ok(pb::KeyState::Unspecified) => None,
            Ok(pb::KeyState::Active) => Some(KeyState::Active),
            Ok(pb::KeyState::Expired) => Some(KeyState::Expired),
            Ok(pb::KeyState::Revoked) => Some(KeyState::Revoked),
            Ok(pb::KeyState::Exhausted) => Some(KeyState::Exhausted),
            Err(_) => return Err(ServiceError::invalid("state", "unknown key state")),
        };
        let role = (!request.role.is_empty())
            .then(|| {
                request
                    .role
                    .parse()
                    .map_err(|error| ServiceError::invalid("role", error))
            })
            .transpose()?;
        let labels = labels(request.labels)?;
        Ok(Self {
            labels,
            owner: owner_filter(request.owner)?,
            role,
            state,
            after: page_cursor(&request.page_token)?,
            limit,
        })
    }
}

/// Page tokens are `<created_at millis>.<key id>` of the last key shown.
pub fn page_token(cursor: PageCursor) -> String {
    format!("{}.{}", cursor.created_at.as_millis(), cursor.id)
}

fn page_cursor(token: &str) -> Result<Option<PageCursor>, ServiceError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || ServiceError::invalid("page_token", "not a token returned by ListKeys");
    let (millis, id) = token.split_once('.').ok_or_else(invalid)?;
    Ok(Some(PageCursor {
        created_at: Timestamp::from_millis(millis.parse().map_err(|_| invalid())?),
        id: id.parse().map_err(|_| invalid())?,
    }))
}

/// The read model on the wire; `now` decides the state.
pub fn key(record: &KeyRecord, now: Timestamp) -> pb::Key {
    let id_text = |id: Option<KeyId>| id.map(|id| id.to_string()).unwrap_or_default();
    pb::Key {
        id: record.id.to_string(),
        prefix: record.settings.prefix.to_string(),
        roles: record
            .settings
            .roles
            .iter()
            .map(ToString::to_string)
            .collect(),
        labels: record
            .settings
            .labels
            .as_map()
            .clone()
            .into_iter()
            .collect(),
        owner: record.settings.owner.clone(),
        description: record.settings.description.clone(),
        state: match record.state(now) {
            KeyState::Active => pb::KeyState::Active,
            KeyState::Expired => pb::KeyState::Expired,
            KeyState::Revoked => pb::KeyState::Revoked,
            KeyState::Exhausted => pb::KeyState::Exhausted,
        }
        .into(),
        created_at: Some(timestamp(record.created_at)),
        expires_at: record.settings.expires_at.map(timestamp),
        revoked_at: record.revoked_at.map(timestamp),
        revoke_reason: record.revoke_reason.clone().unwrap_or_default(),
        rotated_from: id_text(record.rotated_from),
        rotated_to: id_text(record.rotated_to),
        created_by: id_text(record.created_by),
        rate_limit: record.settings.rate_limit.as_ref().map(rate_limit_to_pb),
        max_uses: record.settings.max_uses.unwrap_or_default(),
        remaining_uses: record.uses_remaining,
        last_used_at: record.last_used_at.map(timestamp),
        use_count: record.use_count,
        permissions: record
            .settings
            .permissions
            .iter()
            .map(ToString::to_string)
            .collect(),
        allowed_cidrs: record
            .settings
            .allowed_cidrs
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

pub fn role(role: &Role) -> pb::Role {
    pb::Role {
        name: role.name.to_string(),
        description: role.description.clone(),
        permissions: role.permissions.iter().map(ToString::to_string).collect(),
        max_ttl: role.max_ttl.and_then(|ttl| ttl.try_into().ok()),
        builtin: role.builtin,
        created_at: Some(timestamp(role.created_at)),
        updated_at: Some(timestamp(role.updated_at)),
        default_rate_limit: role.rate_limit.as_ref().map(rate_limit_to_pb),
    }
}

pub fn audit_record(record: &AuditRecord) -> pb::AuditRecord {
    pb::AuditRecord {
        seq: u64::try_from(record.seq).unwrap_or_default(),
        at: Some(timestamp(record.at)),
        actor: record.actor.map(|id| id.to_string()).unwrap_or_default(),
        action: record.action.clone(),
        target: record.target.clone().unwrap_or_default(),
        reason: record.reason.clone().unwrap_or_default(),
    }
}

impl TryFrom<pb::CreateRoleRequest> for NewRole {
    type Error = ServiceError;

    fn try_from(request: pb::CreateRoleRequest) -> Result<Self, Self::Error> {
        let permissions = parse_list("permissions", &request.permissions)?;
        if permissions.is_empty() {
            return Err(ServiceError::invalid(
                "permissions",
                "a role needs at least one permission",
            ));
        }
        Ok(Self {
            name: role_name(&request.name)?,
            description: bounded("description", request.description, MAX_TEXT_BYTES)?,
            permissions,
            max_ttl: max_ttl(request.max_ttl.as_ref())?,
            rate_limit: request
                .default_rate_limit
                .as_ref()
                .map(rate_limit)
                .transpose()?,
        })
    }
}

impl TryFrom<pb::UpdateRoleRequest> for RoleUpdate {
    type Error = ServiceError;

    fn try_from(request: pb::UpdateRoleRequest) -> Result<Self, Self::Error> {
        let max_ttl = match (request.clear_max_ttl, request.max_ttl.as_ref()) {
            (true, Some(_)) => {
                return Err(ServiceError::invalid(
                    "max_ttl",
                    "give max_ttl or clear_max_ttl, not both",
                ));
            }
            (true, None) => Some(None),
            (false, ttl) => max_ttl(ttl)?.map(Some),
        };
        let default_rate_limit = match (
            request.clear_default_rate_limit,
            request.default_rate_limit.as_ref(),
        ) {
            (true, Some(_)) => {
                return Err(ServiceError::invalid(
                    "default_rate_limit",
                    "give default_rate_limit or clear_default_rate_limit, not both",
                ));
            }
            (true, None) => Some(None),
            (false, limit) => limit.map(rate_limit).transpose()?.map(Some),
        };
        Ok(Self {
            add_permissions: parse_list("add_permissions", &request.add_permissions)?,
            remove_permissions: parse_list("remove_permissions", &request.remove_permissions)?,
            description: request
                .description
                .map(|d| bounded("description", d, MAX_TEXT_BYTES))
                .transpose()?,
            max_ttl,
            rate_limit: default_rate_limit,
        })
    }
}

impl TryFrom<pb::ListAuditRecordsRequest> for AuditQuery {
    type Error = ServiceError;

    fn try_from(request: pb::ListAuditRecordsRequest) -> Result<Self, Self::Error> {
        let optional_text = |text: String| (!text.is_empty()).then_some(text);
        let before_seq = optional_text(request.page_token)
            .map(|token| {
                token.parse::<i64>().map_err(|_| {
                    ServiceError::invalid("page_token", "not a token returned by ListAuditRecords")
                })
            })
            .transpose()?;
        let action = optional_text(request.action)
            .map(|action| bounded("action", action, MAX_ACTION_BYTES))
            .transpose()?;
        Ok(Self {
            since: request
                .since
                .as_ref()
                .map(|at| timestamp_from("since", at))
                .transpose()?,
            until: request
                .until
                .as_ref()
                .map(|at| timestamp_from("until", at))
                .transpose()?,
            target: optional_text(request.key_id)
                .map(|id| key_id("key_id", &id))
                .transpose()?
                .map(|id| id.to_string()),
            actor: optional_text(request.actor)
                .map(|id| key_id("actor", &id))
                .transpose()?,
            action,
            before_seq,
            limit: page_size(request.page_size)?,
        })
    }
}

fn page_size(requested: u32) -> Result<u32, ServiceError> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n > MAX_PAGE_SIZE => Err(ServiceError::invalid(
            "page_size",
            format!("at most {MAX_PAGE_SIZE}"),
        )),
        n => Ok(n),
    }
}

pub mod trust;

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_including_before_the_epoch() {
        // i64::MIN: found by the property test; its seconds times 1000 overflowed.
        for millis in [
            0,
            1,
            999,
            1000,
            -1,
            -1001,
            1_764_000_000_123,
            i64::MIN,
            i64::MAX,
        ] {
            let at = Timestamp::from_millis(millis);
            assert_eq!(timestamp_from("t", &timestamp(at)).unwrap(), at);
        }
        let bad = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert!(timestamp_from("t", &bad).is_err());
    }

    #[test]
    fn negative_durations_are_refused() {
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        let message = duration_from("ttl", &negative).unwrap_err().to_string();
        assert_eq!(message, "invalid ttl: must not be negative");
    }

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let cursor = PageCursor {
            created_at: Timestamp::from_millis(42),
            id: "0000000000A".parse().unwrap(),
        };
        assert_eq!(page_cursor(&page_token(cursor)).unwrap(), Some(cursor));
        for garbage in ["x", "1.", ".0000000000A", "a.0000000000A"] {
            assert!(page_cursor(garbage).is_err(), "{garbage}");
        }
    }

    #[test]
    fn mint_request_fields_are_named_in_errors() {
        let cases = [
            (
                pb::MintKeyRequest {
                    prefix: "Bad".into(),
                    ..Default::default()
                },
                "invalid prefix",
            ),
            (
                pb::MintKeyRequest {
                    roles: vec!["No Such".into()],
                    ..Default::default()
                },
                "invalid roles",
            ),
            (
                pb::MintKeyRequest {
                    labels: [("a=b".to_owned(), "x".to_owned())].into(),
                    ..Default::default()
                },
                "invalid labels",
            ),
            (
                pb::MintKeyRequest {
                    owner: "o".repeat(300),
                    ..Default::default()
                },
                "invalid owner",
            ),
            (
                pb::MintKeyRequest {
                    expiry: Some(pb::mint_key_request::Expiry::Ttl(prost_types::Duration {
                        seconds: -5,
                        nanos: 0,
                    })),
                    ..Default::default()
                },
                "invalid ttl",
            ),
        ];
        for (request, expected) in cases {
            let message = MintRequest::try_from(request).unwrap_err().to_string();
            assert!(message.starts_with(expected), "{message}");
        }
    }
}
