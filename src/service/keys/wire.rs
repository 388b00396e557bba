//! Validate's answer as it goes on the wire: `keyward.v1.ValidateResponse`,
//! written straight from the decision.
//!
//! Why not the generated `pb::ValidateResponse`: it owns its strings, so
//! every Validate would copy the key's id, roles, permissions, labels and
//! owner out of the index into fresh allocations, only for the encoder to
//! copy them again and free them. [`ValidateAnswer`] holds the decision (the
//! key's index entry, shared) and writes the same bytes from it: the fields
//! of `pb::ValidateResponse` in their order, defaults left out as prost
//! leaves them out. Clients decode it as the generated type; the tests check
//! that they read back what [`ValidateAnswer::to_pb`] builds.
//!
//! The server of `keyward.v1.KeyService` is generated over it (`build.rs`),
//! on the same path as the generated one.

use std::time::Duration;

use prost::{
    Message,
    bytes::{Buf, BufMut},
    encoding::{self, DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint},
};

use super::super::convert;
use crate::{
    codec::write::{
        delimited_len, element_len, map_entry_len, put_element, put_map_entry, put_str, put_varint,
        str_len, varint_len,
    },
    key::KEY_ID_CHARS,
    pb,
    validate::{Grant, Outcome},
};

/// The generated server of `keyward.v1.KeyService`, answering
/// [`ValidateAnswer`]s (see `build.rs`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/keyward.v1.KeyService.rs"));
}

/// `keyward.v1.ValidateResponse` as the server answers it; see the module
/// docs. Encode-only: the server never reads one.
#[derive(Debug, Default)]
pub enum ValidateAnswer {
    /// `INVALID`: nothing is said about the key, not even its id.
    #[default]
    Invalid,
    /// A key proven live: valid, or refused as `RATE_LIMITED` or `FORBIDDEN`.
    Authenticated(Authenticated),
}

/// The answer about a key proven live. Kept small (what it says is made as
/// it is written): an answer is moved several times on its way to the
/// encoder, and each move copies it.
#[derive(Debug)]
pub struct Authenticated {
    grant: Grant,
    denial: pb::Denial,
    retry_after: Option<Duration>,
}

/// Largest answer written on the stack before it is copied out (see
/// `encode_raw`); larger ones, with many roles, permissions or labels, are
/// written straight into the encoder's buffer.
const STACK_ANSWER_BYTES: usize = 512;

// Field numbers of `ValidateResponse`, from `key_service.proto`.
const VALID: u32 = 1;
const KEY_ID: u32 = 2;
const DENIAL: u32 = 3;
const ROLES: u32 = 4;
const PERMISSIONS: u32 = 5;
const LABELS: u32 = 6;
const EXPIRES_AT: u32 = 7;
const OWNER: u32 = 8;
const RATE_LIMIT: u32 = 9;
const RETRY_AFTER: u32 = 10;
const REMAINING_USES: u32 = 11;

impl ValidateAnswer {
    /// The answer to `outcome`.
    #[must_use]
    pub fn of(outcome: Outcome) -> Self {
        let (grant, denial, retry_after) = match outcome {
            Outcome::Valid(grant) => (grant, pb::Denial::Unspecified, None),
            Outcome::RateLimited { grant, retry_after } => {
                (grant, pb::Denial::RateLimited, Some(retry_after))
            }
            Outcome::Forbidden { grant, .. } => (grant, pb::Denial::Forbidden, None),
            Outcome::Invalid(_) => return Self::Invalid,
        };
        Self::authenticated(grant, denial, retry_after)
    }

    /// The answer about a key proven live: `DENIAL_UNSPECIFIED` for a valid
    /// one; `retry_after` for one rate limited.
    #[must_use]
    pub fn authenticated(grant: Grant, denial: pb::Denial, retry_after: Option<Duration>) -> Self {
        Self::Authenticated(Authenticated {
            grant,
            denial,
            retry_after,
        })
    }

    /// The same answer as the generated message, which owns copies of
    /// everything: for the JSON endpoint, which maps it field by field.
    #[must_use]
    pub fn to_pb(&self) -> pb::ValidateResponse {
        let Self::Authenticated(answer) = self else {
            return pb::ValidateResponse {
                denial: pb::Denial::Invalid.into(),
                ..Default::default()
            };
        };
        let grant = &answer.grant;
        let key = &grant.key;
        pb::ValidateResponse {
            valid: answer.denial == pb::Denial::Unspecified,
            key_id: key.id.text(),
            denial: answer.denial.into(),
            roles: key
                .profile
                .roles
                .iter()
                .map(|role| role.as_str().to_owned())
                .collect(),
            permissions: grant
                .permissions
                .iter()
                .map(|permission| permission.as_str().to_owned())
                .collect(),
            labels: key
                .profile
                .labels
                .as_map()
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            expires_at: answer.expires_at(),
            owner: key.profile.owner.as_ref().to_owned(),
            rate_limit: answer.rate_limit(),
            retry_after: answer.retry_after(),
            remaining_uses: grant.remaining_uses,
        }
    }
}

impl Authenticated {
    fn expires_at(&self) -> Option<prost_types::Timestamp> {
        self.grant.key.expires_at.map(convert::timestamp)
    }

    fn rate_limit(&self) -> Option<pb::RateLimitState> {
        self.grant
            .rate_limit
            .map(|(limit, remaining_burst)| pb::RateLimitState {
                limit: Some(convert::rate_limit_to_pb(&limit)),
                remaining_burst,
            })
    }

    fn retry_after(&self) -> Option<prost_types::Duration> {
        self.retry_after.and_then(|wait| wait.try_into().ok())
    }

    fn len(&self) -> usize {
        let profile = &self.grant.key.profile;
        varint_len(VALID, u64::from(self.denial == pb::Denial::Unspecified))
            // Always 11 characters: measured without writing them.
            + delimited_len(KEY_ID, KEY_ID_CHARS)
            + varint_len(DENIAL, enum_value(self.denial))
            + profile
                .roles
                .iter()
                .map(|role| element_len(ROLES, role.as_str().as_bytes()))
                .sum::<usize>()
            + self
                .grant
                .permissions
                .iter()
                .map(|permission| element_len(PERMISSIONS, permission.as_str().as_bytes()))
                .sum::<usize>()
            + profile
                .labels
                .as_map()
                .iter()
                .map(|(name, value)| {
                    delimited_len(LABELS, map_entry_len(name.as_bytes(), value.as_bytes()))
                })
                .sum::<usize>()
            + self
                .expires_at()
                .map_or(0, |at| encoding::message::encoded_len(EXPIRES_AT, &at))
            + str_len(OWNER, profile.owner.as_bytes())
            + self
                .rate_limit()
                .map_or(0, |state| encoding::message::encoded_len(RATE_LIMIT, &state))
            + self
                .retry_after()
                .map_or(0, |wait| encoding::message::encoded_len(RETRY_AFTER, &wait))
            + self.grant.remaining_uses.map_or(0, |left| {
                encoding::key_len(REMAINING_USES) + encoded_len_varint(left)
            })
    }

    fn write(&self, buf: &mut impl BufMut) {
        let profile = &self.grant.key.profile;
        put_varint(
            VALID,
            u64::from(self.denial == pb::Denial::Unspecified),
            buf,
        );
        put_str(KEY_ID, &self.grant.key.id.ascii(), buf);
        put_varint(DENIAL, enum_value(self.denial), buf);
        for role in &profile.roles {
            put_element(ROLES, role.as_str().as_bytes(), buf);
        }
        for permission in self.grant.permissions.iter() {
            put_element(PERMISSIONS, permission.as_str().as_bytes(), buf);
        }
        for (name, value) in profile.labels.as_map() {
            put_map_entry(LABELS, name.as_bytes(), value.as_bytes(), buf);
        }
        if let Some(at) = self.expires_at() {
            encoding::message::encode(EXPIRES_AT, &at, buf);
        }
        put_str(OWNER, profile.owner.as_bytes(), buf);
        if let Some(state) = self.rate_limit() {
            encoding::message::encode(RATE_LIMIT, &state, buf);
        }
        if let Some(wait) = self.retry_after() {
            encoding::message::encode(RETRY_AFTER, &wait, buf);
        }
        // `optional`: written whenever set, zero included.
        if let Some(left) = self.grant.remaining_uses {
            encode_key(REMAINING_USES, WireType::Varint, buf);
            encode_varint(left, buf);
        }
    }
}

/// An enum value as its varint: denials are small and positive.
fn enum_value(denial: pb::Denial) -> u64 {
    u64::try_from(i32::from(denial)).unwrap_or(0)
}

/// Written by hand (see the module docs); never decoded by keyward.
impl Message for ValidateAnswer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Self::Authenticated(answer) => {
                // Written on the stack first, then copied in one piece: the
                // encoder's buffer checks its capacity on every byte put,
                // and an answer is a few dozen small fields.
                let len = answer.len();
                if len <= STACK_ANSWER_BYTES {
                    let mut stack = [0_u8; STACK_ANSWER_BYTES];
                    let mut free = &mut stack[..];
                    answer.write(&mut free);
                    buf.put_slice(&stack[..len]);
                } else {
                    answer.write(buf);
                }
            }
            Self::Invalid => put_varint(DENIAL, enum_value(pb::Denial::Invalid), buf),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Authenticated(answer) => answer.len(),
            Self::Invalid => varint_len(DENIAL, enum_value(pb::Denial::Invalid)),
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::{
        clock::Timestamp,
        key::{KeyDigest, KeyId},
        model::{IndexedKey, KeyProfile, Labels},
        permission::Permission,
        rate_limit::RateLimit,
        usage::KeyUsage,
    };

    /// What a client reads from the written bytes.
    fn read_back(answer: &ValidateAnswer) -> pb::ValidateResponse {
        let bytes = answer.encode_to_vec();
        assert_eq!(bytes.len(), answer.encoded_len(), "encoded_len is exact");
        pb::ValidateResponse::decode(bytes.as_slice()).expect("decodes as ValidateResponse")
    }

    fn grant(
        roles: &[&str],
        permissions: &[&str],
        labels: &[(&str, &str)],
        owner: &str,
        expires_at: Option<i64>,
        rate_limit: Option<(&str, u32)>,
        remaining_uses: Option<u64>,
    ) -> Grant {
        let labels = Labels::new(
            labels
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
        )
        .expect("valid labels");
        let profile = KeyProfile {
            roles: roles.iter().map(|role| role.parse().unwrap()).collect(),
            labels,
            owner: owner.into(),
            ..KeyProfile::default()
        };
        let permissions: Vec<Permission> = permissions.iter().map(|p| p.parse().unwrap()).collect();
        Grant {
            key: Arc::new(IndexedKey {
                id: KeyId::from_u64(0x0123_4567_89ab_cdef),
                digest: KeyDigest::dummy(),
                expires_at: expires_at.map(Timestamp::from_millis),
                revoked_at: None,
                profile: Arc::new(profile),
                usage: Arc::new(KeyUsage::default()),
            }),
            permissions: permissions.into(),
            rate_limit: rate_limit.map(|(limit, left)| (limit.parse::<RateLimit>().unwrap(), left)),
            remaining_uses,
            checked_at: Timestamp::from_millis(0),
        }
    }

    #[test]
    fn invalid_says_nothing_but_the_denial() {
        let read = read_back(&ValidateAnswer::Invalid);
        assert_eq!(read, ValidateAnswer::Invalid.to_pb());
        assert_eq!(read.denial(), pb::Denial::Invalid);
        assert!(read.key_id.is_empty() && !read.valid);
    }

    #[test]
    fn a_valid_key_reads_back_with_every_fact() {
        let answer = ValidateAnswer::authenticated(
            grant(
                &["deployer", "reader"],
                &["deploy:read", "deploy:*"],
                &[("env", "prod"), ("team", "")],
                "ci@example.com",
                Some(1_767_225_600_123),
                Some(("100/s", 99)),
                Some(0),
            ),
            pb::Denial::Unspecified,
            None,
        );
        let read = read_back(&answer);
        assert_eq!(read, answer.to_pb());
        assert!(read.valid);
        assert_eq!(read.key_id, KeyId::from_u64(0x0123_4567_89ab_cdef).text());
        assert_eq!(read.roles, ["deployer", "reader"]);
        assert_eq!(read.labels.get("team").map(String::as_str), Some(""));
        assert_eq!(read.remaining_uses, Some(0), "a zero left is still said");
        assert_eq!(read.rate_limit.unwrap().remaining_burst, 99);
    }

    #[test]
    fn a_rate_limited_key_reads_back_with_its_wait() {
        let answer = ValidateAnswer::authenticated(
            grant(&[], &[], &[], "", None, Some(("1/m", 0)), None),
            pb::Denial::RateLimited,
            Some(Duration::from_millis(1_500)),
        );
        let read = read_back(&answer);
        assert_eq!(read, answer.to_pb());
        assert_eq!(read.denial(), pb::Denial::RateLimited);
        assert_eq!(read.retry_after.unwrap().seconds, 1);
        assert_eq!(read.rate_limit.unwrap().remaining_burst, 0);
    }

    #[test]
    fn an_answer_too_large_for_the_stack_is_written_all_the_same() {
        let permissions: Vec<String> = (0..64).map(|i| format!("service:area{i}:write")).collect();
        let permissions: Vec<&str> = permissions.iter().map(String::as_str).collect();
        let answer = ValidateAnswer::authenticated(
            grant(&[], &permissions, &[], "owner", None, None, None),
            pb::Denial::Unspecified,
            None,
        );
        assert!(answer.encoded_len() > STACK_ANSWER_BYTES);
        let read = read_back(&answer);
        assert_eq!(read, answer.to_pb());
        assert_eq!(read.permissions.len(), 64);
    }

    proptest! {
        #[test]
        fn what_is_written_reads_back_as_the_generated_message(
            roles in proptest::collection::vec("[a-z][a-z0-9_.-]{0,12}", 0..4),
            permissions in proptest::collection::vec("[a-z0-9]{1,6}(:[a-z0-9_.-]{1,6}){0,2}", 0..5),
            labels in proptest::collection::btree_map("[a-z]{1,8}", "[a-z0-9=]{0,8}", 0..4),
            owner in "[a-z@.]{0,16}",
            expires_at in proptest::option::of(0_i64..4_102_444_800_000),
            left in proptest::option::of(0_u32..1_000),
            remaining_uses in proptest::option::of(0_u64..u64::MAX),
            denial in prop_oneof![
                Just(pb::Denial::Unspecified),
                Just(pb::Denial::RateLimited),
                Just(pb::Denial::Forbidden),
            ],
            wait in proptest::option::of(0_u64..100_000),
        ) {
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            let permissions: Vec<&str> = permissions.iter().map(String::as_str).collect();
            let labels: Vec<(&str, &str)> =
                labels.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let answer = ValidateAnswer::authenticated(
                grant(
                    &roles,
                    &permissions,
                    &labels,
                    &owner,
                    expires_at,
                    left.map(|left| ("10/s", left)),
                    remaining_uses,
                ),
                denial,
                wait.map(Duration::from_millis),
            );
            prop_assert_eq!(read_back(&answer), answer.to_pb());
        }
    }
}
