//! Wire types ↔ domain types, at the service edge only. Input conversions
//! return `INVALID_ARGUMENT` naming the field.

use std::{collections::BTreeMap, time::Duration};

use crate::{
    clock::Timestamp,
    error::ServiceError,
    key::{KeyId, Prefix},
    lifecycle::{Expiry, MintRequest},
    model::{KeyRecord, KeyState, Labels, MAX_OWNER_BYTES, MAX_TEXT_BYTES},
    pb,
    store::{KeyQuery, PageCursor},
};

/// Most keys one ListKeys page returns.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Page size when the request names none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Most roles one key may hold.
pub const MAX_ROLES: usize = 64;

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
    let millis = at
        .seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(at.nanos / 1_000_000)))
        .ok_or_else(|| ServiceError::invalid(field, "out of range"))?;
    Ok(Timestamp::from_millis(millis))
}

fn duration_from(
    field: &'static str,
    duration: &prost_types::Duration,
) -> Result<Duration, ServiceError> {
    if duration.seconds < 0 || duration.nanos < 0 {
        return Err(ServiceError::invalid(field, "must not be negative"));
    }
    Duration::try_from(*duration).map_err(|_| ServiceError::invalid(field, "out of range"))
}

pub fn key_id(field: &'static str, text: &str) -> Result<KeyId, ServiceError> {
    text.parse()
        .map_err(|error| ServiceError::invalid(field, error))
}

fn bounded(field: &'static str, text: String, max: usize) -> Result<String, ServiceError> {
    if text.len() > max {
        return Err(ServiceError::invalid(
            field,
            format!("longer than {max} bytes"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(ServiceError::invalid(field, "contains control characters"));
    }
    Ok(text)
}

pub fn reason(text: String) -> Result<String, ServiceError> {
    bounded("reason", text, MAX_TEXT_BYTES)
}

pub fn grace(grace: Option<&prost_types::Duration>) -> Result<Duration, ServiceError> {
    grace.map_or(Ok(Duration::ZERO), |grace| duration_from("grace", grace))
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
        let mut roles = request
            .roles
            .iter()
            .map(|role| {
                role.parse()
                    .map_err(|error| ServiceError::invalid("roles", error))
            })
            .collect::<Result<Vec<_>, _>>()?;
        roles.sort();
        roles.dedup();
        let labels = Labels::new(request.labels.into_iter().collect())
            .map_err(|error| ServiceError::invalid("labels", error))?;
        let expiry = match &request.expiry {
            None => Expiry::Never,
            Some(pb::mint_key_request::Expiry::Ttl(ttl)) => Expiry::Ttl(duration_from("ttl", ttl)?),
            Some(pb::mint_key_request::Expiry::ExpiresAt(at)) => {
                Expiry::At(timestamp_from("expires_at", at)?)
            }
        };
        Ok(Self {
            prefix,
            roles,
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
        let limit = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(ServiceError::invalid(
                    "page_size",
                    format!("at most {MAX_PAGE_SIZE}"),
                ));
            }
            n => n,
        };
        let state = match pb::KeyState::try_from(request.state) {
            Ok(pb::KeyState::Unspecified) => None,
            Ok(pb::KeyState::Active) => Some(KeyState::Active),
            Ok(pb::KeyState::Expired) => Some(KeyState::Expired),
            Ok(pb::KeyState::Revoked) => Some(KeyState::Revoked),
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
        let labels: BTreeMap<String, String> = request.labels.into_iter().collect();
        Labels::new(labels.clone()).map_err(|error| ServiceError::invalid("labels", error))?;
        Ok(Self {
            labels,
            owner: (!request.owner.is_empty()).then_some(request.owner),
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
        }
        .into(),
        created_at: Some(timestamp(record.created_at)),
        expires_at: record.settings.expires_at.map(timestamp),
        revoked_at: record.revoked_at.map(timestamp),
        revoke_reason: record.revoke_reason.clone().unwrap_or_default(),
        rotated_from: id_text(record.rotated_from),
        rotated_to: id_text(record.rotated_to),
        created_by: id_text(record.created_by),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_including_before_the_epoch() {
        for millis in [0, 1, 999, 1000, -1, -1001, 1_764_000_000_123] {
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
