//! A Validate answer, as `verify` shows it: what a backend server would be
//! told about the key. It names the key by its public id only.

use std::{collections::BTreeMap, time::Duration};

use keyward::pb;
use serde::Serialize;

use super::{
    RateLimitView, fields_text, labels_text, non_empty, or_dash, rate_limit_text, sorted_labels,
    timestamp,
};

/// The JSON of `verify`.
#[derive(Debug, Serialize)]
pub struct ValidateView<'a> {
    valid: bool,
    /// `null` when valid, so a script can test one field either way.
    denial: Option<String>,
    key_id: Option<&'a str>,
    roles: &'a [String],
    permissions: &'a [String],
    labels: BTreeMap<&'a str, &'a str>,
    owner: Option<&'a str>,
    expires_at: Option<String>,
    rate_limit: Option<RateLimitStateView>,
    /// As text (`1s 500ms`) and as whole seconds, rounded up.
    retry_after: Option<String>,
    retry_after_seconds: Option<u64>,
    remaining_uses: Option<u64>,
}

/// The rate-limit state of a Validate answer: the limit (as in `show`) and
/// the burst left after this call, in one object.
#[derive(Debug, Serialize)]
struct RateLimitStateView {
    #[serde(flatten)]
    limit: Option<RateLimitView>,
    remaining_burst: u32,
}

impl<'a> From<&'a pb::ValidateResponse> for ValidateView<'a> {
    fn from(response: &'a pb::ValidateResponse) -> Self {
        let wait = retry_after(response);
        Self {
            valid: response.valid,
            denial: (!response.valid).then(|| denial_name(response.denial)),
            key_id: non_empty(&response.key_id),
            roles: &response.roles,
            permissions: &response.permissions,
            labels: sorted_labels(&response.labels),
            owner: non_empty(&response.owner),
            expires_at: timestamp(response.expires_at.as_ref()),
            rate_limit: response
                .rate_limit
                .as_ref()
                .map(|state| RateLimitStateView {
                    limit: state.limit.as_ref().map(RateLimitView::from),
                    remaining_burst: state.remaining_burst,
                }),
            retry_after: wait.map(|wait| humantime::format_duration(wait).to_string()),
            retry_after_seconds: wait.map(whole_seconds),
            remaining_uses: response.remaining_uses,
        }
    }
}

/// The name of a Validate denial, as the proto spells it (`INVALID`, ...).
pub fn denial_name(denial: i32) -> String {
    match pb::Denial::try_from(denial) {
        Ok(denial) => denial.as_str_name().to_owned(),
        Err(_) => format!("UNKNOWN({denial})"),
    }
}

/// A Validate answer as `name value` lines.
pub fn verify_text(response: &pb::ValidateResponse) -> String {
    fields_text(&verify_fields(response))
}

fn verify_fields(response: &pb::ValidateResponse) -> Vec<(&'static str, String)> {
    let mut fields = vec![(
        "valid",
        if response.valid { "yes" } else { "no" }.to_owned(),
    )];
    if !response.valid {
        fields.push(("denial", denial_name(response.denial)));
    }
    // An INVALID key is not authenticated: the server says nothing more
    // about it, so neither do we.
    if !response.key_id.is_empty() {
        fields.extend([
            ("key id", response.key_id.clone()),
            ("roles", or_dash(response.roles.join(", "))),
            ("permissions", or_dash(response.permissions.join(", "))),
            ("labels", or_dash(labels_text(&response.labels))),
            ("owner", or_dash(response.owner.clone())),
            (
                "expires",
                timestamp(response.expires_at.as_ref()).unwrap_or_else(|| "never".into()),
            ),
        ]);
    }
    // The rate limit is checked only once the key is proven, so it is
    // present only for an authenticated key that has a limit.
    if let Some(state) = &response.rate_limit {
        fields.push((
            "rate limit",
            state
                .limit
                .as_ref()
                .map_or_else(|| "-".into(), rate_limit_text),
        ));
        fields.push(("remaining burst", state.remaining_burst.to_string()));
    }
    if let Some(wait) = retry_after(response) {
        fields.push(("retry after", humantime::format_duration(wait).to_string()));
    }
    if let Some(remaining) = response.remaining_uses {
        fields.push(("remaining uses", remaining.to_string()));
    }
    fields
}

/// How long a `RATE_LIMITED` caller should wait, to the millisecond (rounded
/// up, so waiting that long is always enough); `None` for other answers.
fn retry_after(response: &pb::ValidateResponse) -> Option<Duration> {
    if response.denial != pb::Denial::RateLimited as i32 {
        return None;
    }
    let wait = Duration::try_from(response.retry_after?).ok()?;
    let millis = wait.as_nanos().div_ceil(1_000_000);
    Some(Duration::from_millis(
        u64::try_from(millis).unwrap_or(u64::MAX),
    ))
}

/// Whole seconds, rounded up, as the server's `retry-after` metadata has them.
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_keys_show_only_the_denial() {
        let response = pb::ValidateResponse {
            valid: false,
            denial: pb::Denial::Invalid as i32,
            ..Default::default()
        };
        assert_eq!(
            verify_fields(&response),
            [("valid", "no".to_owned()), ("denial", "INVALID".to_owned())]
        );
        assert_eq!(
            serde_json::to_string(&ValidateView::from(&response)).unwrap(),
            r#"{"valid":false,"denial":"INVALID","key_id":null,"roles":[],"permissions":[],"labels":{},"owner":null,"expires_at":null,"rate_limit":null,"retry_after":null,"retry_after_seconds":null,"remaining_uses":null}"#
        );
    }

    fn state(remaining_burst: u32) -> Option<pb::RateLimitState> {
        Some(pb::RateLimitState {
            limit: Some(pb::RateLimit {
                requests: 2,
                per: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                burst: 2,
            }),
            remaining_burst,
        })
    }

    /// Scripts read this output: names, order and forms are a contract.
    #[test]
    fn rate_limited_keys_say_how_long_to_wait() {
        let mut response = pb::ValidateResponse {
            valid: false,
            key_id: "AbCdEfGhIjK".into(),
            denial: pb::Denial::RateLimited as i32,
            rate_limit: state(0),
            retry_after: Some(prost_types::Duration {
                seconds: 29,
                nanos: 999_000_001,
            }),
            ..Default::default()
        };
        let text = verify_text(&response);
        assert!(text.contains("denial           RATE_LIMITED\n"), "{text}");
        assert!(text.contains("rate limit       2/m burst 2\n"), "{text}");
        assert!(text.contains("remaining burst  0\n"), "{text}");
        // Rounded up to the millisecond: waiting that long is enough.
        assert!(text.contains("retry after      30s\n"), "{text}");
        assert!(!text.contains("remaining uses"), "{text}");
        assert_eq!(retry_after(&response), Some(Duration::from_secs(30)));
        assert_eq!(whole_seconds(Duration::from_millis(500)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        response.retry_after = Some(prost_types::Duration {
            seconds: 1,
            nanos: 499_000_001,
        });
        assert_eq!(
            serde_json::to_string_pretty(&ValidateView::from(&response)).unwrap(),
            r#"{
  "valid": false,
  "denial": "RATE_LIMITED",
  "key_id": "AbCdEfGhIjK",
  "roles": [],
  "permissions": [],
  "labels": {},
  "owner": null,
  "expires_at": null,
  "rate_limit": {
    "requests": 2,
    "per_seconds": 60,
    "burst": 2,
    "remaining_burst": 0
  },
  "retry_after": "1s 500ms",
  "retry_after_seconds": 2,
  "remaining_uses": null
}"#
        );
        // A limit this CLI cannot read still reports the burst left.
        response.rate_limit = Some(pb::RateLimitState {
            limit: None,
            remaining_burst: 3,
        });
        assert_eq!(
            serde_json::to_value(ValidateView::from(&response)).unwrap()["rate_limit"],
            serde_json::json!({"remaining_burst": 3})
        );
    }

    #[test]
    fn valid_keys_show_what_is_left() {
        let response = pb::ValidateResponse {
            valid: true,
            key_id: "AbCdEfGhIjK".into(),
            rate_limit: state(1),
            // Sent only with RATE_LIMITED; ignored otherwise.
            retry_after: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            remaining_uses: Some(0),
            ..Default::default()
        };
        let text = verify_text(&response);
        assert!(text.contains("remaining burst  1\n"), "{text}");
        assert!(text.contains("remaining uses   0\n"), "{text}");
        assert!(!text.contains("retry after"), "{text}");
        let json = serde_json::to_value(ValidateView::from(&response)).unwrap();
        assert_eq!(json["denial"], serde_json::Value::Null);
        assert_eq!(json["retry_after"], serde_json::Value::Null);
    }

    #[test]
    fn forbidden_keys_show_who_they_are() {
        let response = pb::ValidateResponse {
            valid: false,
            key_id: "AbCdEfGhIjK".into(),
            denial: pb::Denial::Forbidden as i32,
            roles: vec!["validator".into()],
            permissions: vec!["keyward:validate".into()],
            ..Default::default()
        };
        let text = verify_text(&response);
        assert!(text.contains("denial       FORBIDDEN\n"), "{text}");
        assert!(text.contains("key id       AbCdEfGhIjK\n"), "{text}");
        assert!(text.contains("permissions  keyward:validate\n"), "{text}");
    }

    #[test]
    fn unknown_denials_are_shown_not_fatal() {
        assert_eq!(denial_name(pb::Denial::Forbidden as i32), "FORBIDDEN");
        assert_eq!(denial_name(42), "UNKNOWN(42)");
    }
}
