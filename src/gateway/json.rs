//! Validate in JSON, for `POST /v1/keys:validate`: the request and the
//! answer as protobuf's JSON mapping writes `keyward.v1.ValidateRequest` and
//! `ValidateResponse` (lowerCamelCase names, enums by name, timestamps in
//! RFC 3339, durations as `"1.5s"`, 64-bit integers as strings), so a
//! client with no gRPC library reads the same fields a gRPC client does.
//!
//! Two choices beyond the mapping: `valid` and `denial` are always written
//! (the mapping leaves out default values, and `"valid": false` is the
//! answer a client most needs to see), and unknown fields in a request are
//! refused, as protobuf's JSON parsers do by default.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{error::ServiceError, pb};

/// `keyward.v1.ValidateRequest` in JSON. Each field may also be written
/// with its proto name (`required_permissions`), as protobuf's JSON parsers
/// accept, or as `null` for its default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateRequest {
    key: Option<String>,
    #[serde(rename = "requiredPermissions", alias = "required_permissions")]
    required_permissions: Option<Vec<String>>,
    #[serde(rename = "clientIp", alias = "client_ip")]
    client_ip: Option<String>,
}

/// The fields a request may hold, for error messages.
const REQUEST_FIELDS: &str = "key, requiredPermissions, clientIp";

/// Parses a request body.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the body, with where the JSON went wrong but
/// never a value from it: the body holds a key.
pub fn parse_request(body: &[u8]) -> Result<pb::ValidateRequest, ServiceError> {
    let request: ValidateRequest = serde_json::from_slice(body).map_err(|error| {
        use serde_json::error::Category;
        // serde_json's own messages quote the offending value or field
        // name, which may be the key: only the category and position go out.
        let what = match error.classify() {
            Category::Syntax => "not JSON",
            Category::Eof => "JSON cut short",
            Category::Data | Category::Io => "not a ValidateRequest",
        };
        ServiceError::invalid(
            "body",
            format!(
                "{what} at line {} column {} (expected an object with {REQUEST_FIELDS})",
                error.line(),
                error.column()
            ),
        )
    })?;
    Ok(pb::ValidateRequest {
        key: request.key.unwrap_or_default(),
        required_permissions: request.required_permissions.unwrap_or_default(),
        client_ip: request.client_ip.unwrap_or_default(),
    })
}

/// Writes an answer.
#[must_use]
pub fn response(response: &pb::ValidateResponse) -> Value {
    let mut object = Map::new();
    object.insert("valid".into(), response.valid.into());
    if !response.key_id.is_empty() {
        object.insert("keyId".into(), response.key_id.clone().into());
    }
    object.insert("denial".into(), response.denial().as_str_name().into());
    if !response.roles.is_empty() {
        object.insert("roles".into(), response.roles.clone().into());
    }
    if !response.permissions.is_empty() {
        object.insert("permissions".into(), response.permissions.clone().into());
    }
    if !response.labels.is_empty() {
        let labels: Map<String, Value> = response
            .labels
            .iter()
            .map(|(name, value)| (name.clone(), value.clone().into()))
            .collect();
        object.insert("labels".into(), labels.into());
    }
    if let Some(at) = &response.expires_at {
        object.insert("expiresAt".into(), at.to_string().into());
    }
    if !response.owner.is_empty() {
        object.insert("owner".into(), response.owner.clone().into());
    }
    if let Some(state) = &response.rate_limit {
        let mut rate = Map::new();
        if let Some(limit) = &state.limit {
            rate.insert(
                "limit".into(),
                json!({
                    "requests": limit.requests,
                    "per": limit.per.map(|per| per.to_string()),
                    "burst": limit.burst,
                }),
            );
        }
        rate.insert("remainingBurst".into(), state.remaining_burst.into());
        object.insert("rateLimit".into(), rate.into());
    }
    if let Some(wait) = &response.retry_after {
        object.insert("retryAfter".into(), wait.to_string().into());
    }
    if let Some(left) = response.remaining_uses {
        // uint64 is a string in protobuf's JSON (beyond 2^53, numbers lose
        // precision in JavaScript).
        object.insert("remainingUses".into(), left.to_string().into());
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// The JSON names protobuf gives `message`'s fields, from the descriptor
    /// set compiled into the crate.
    fn json_names(message: &str) -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
        let descriptor = set
            .file
            .iter()
            .flat_map(|file| &file.message_type)
            .find(|m| m.name() == message)
            .unwrap();
        descriptor
            .field
            .iter()
            .map(|field| {
                field.json_name.clone().unwrap_or_else(|| {
                    let mut upper = false;
                    field
                        .name()
                        .chars()
                        .filter_map(|c| {
                            if c == '_' {
                                upper = true;
                                None
                            } else if std::mem::take(&mut upper) {
                                Some(c.to_ascii_uppercase())
                            } else {
                                Some(c)
                            }
                        })
                        .collect()
                })
            })
            .collect()
    }

    #[test]
    fn a_full_answer_has_exactly_the_fields_protobuf_names() {
        let full = pb::ValidateResponse {
            valid: false,
            key_id: "0000000000A".into(),
            denial: pb::Denial::RateLimited.into(),
            roles: vec!["deployer".into()],
            permissions: vec!["deploy:*".into()],
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            owner: "ci".into(),
            rate_limit: Some(pb::RateLimitState {
                limit: Some(pb::RateLimit {
                    requests: 2,
                    per: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                    burst: 2,
                }),
                remaining_burst: 0,
            }),
            retry_after: Some(prost_types::Duration {
                seconds: 0,
                nanos: 500_000_000,
            }),
            remaining_uses: Some(u64::MAX),
        };
        let written = response(&full);
        let mut names: Vec<&String> = written.as_object().unwrap().keys().collect();
        names.sort();
        let mut expected = json_names("ValidateResponse");
        expected.sort();
        assert_eq!(names, expected.iter().collect::<Vec<_>>());
        assert_eq!(written["denial"], "RATE_LIMITED");
        assert_eq!(written["expiresAt"], "2023-11-14T22:13:20Z");
        assert_eq!(written["retryAfter"], "0.500s");
        assert_eq!(written["remainingUses"], "18446744073709551615");
        assert_eq!(written["rateLimit"]["limit"]["per"], "1s");
        assert_eq!(written["labels"]["env"], "prod");
    }

    #[test]
    fn requests_take_protobuf_names_and_refuse_anything_else_without_echoing_it() {
        let fields = json_names("ValidateRequest");
        assert_eq!(fields, ["key", "requiredPermissions", "clientIp"]);
        let parsed =
            parse_request(br#"{"key":"kw_x","requiredPermissions":["a:b"],"clientIp":"10.0.0.1"}"#)
                .unwrap();
        assert_eq!(parsed.required_permissions, ["a:b"]);
        assert_eq!(parsed.client_ip, "10.0.0.1");
        let snake = parse_request(br#"{"key":"kw_x","required_permissions":null}"#).unwrap();
        assert!(snake.required_permissions.is_empty());

        let secret = "kw_0123456789abcdefSECRET";
        for bad in [
            format!(r#"{{"{secret}": 1}}"#),
            format!(r#"{{"requiredPermissions": "{secret}"}}"#),
            format!(r#"{{"key": "{secret}""#),
            secret.to_owned(),
            format!(r#"{{"key": ["{secret}"]}}"#),
        ] {
            let message = parse_request(bad.as_bytes()).unwrap_err().to_string();
            assert!(!message.contains("SECRET"), "{message}");
            assert!(message.starts_with("invalid body: "), "{message}");
            assert!(message.contains("line 1 column"), "{message}");
        }
    }
}
