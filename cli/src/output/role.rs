//! Roles: their JSON view and their text for people.

use std::time::Duration;

use keyward::pb;
use serde::Serialize;

use super::{
    RateLimitView, duration_text, non_empty, or_dash, rate_limit_text, table_text, timestamp,
    yes_no,
};

/// A role, as `role show`, `list`, `create` and `update` print it.
/// `max_ttl` and `max_ttl_seconds` are `null` when the role sets no cap.
#[derive(Debug, Serialize)]
pub struct RoleView<'a> {
    name: &'a str,
    description: Option<&'a str>,
    permissions: &'a [String],
    max_ttl: Option<String>,
    max_ttl_seconds: Option<u64>,
    default_rate_limit: Option<RateLimitView>,
    builtin: bool,
    created_at: Option<String>,
    updated_at: Option<String>,
}

impl<'a> From<&'a pb::Role> for RoleView<'a> {
    fn from(role: &'a pb::Role) -> Self {
        Self {
            name: &role.name,
            description: non_empty(&role.description),
            permissions: &role.permissions,
            max_ttl: duration_text(role.max_ttl.as_ref()),
            max_ttl_seconds: role
                .max_ttl
                .and_then(|d| Duration::try_from(d).ok())
                .map(|d| d.as_secs()),
            default_rate_limit: role.default_rate_limit.as_ref().map(RateLimitView::from),
            builtin: role.builtin,
            created_at: timestamp(role.created_at.as_ref()),
            updated_at: timestamp(role.updated_at.as_ref()),
        }
    }
}

/// `role delete`: the role is gone, so all there is to say is its name.
#[derive(Debug, Serialize)]
pub struct DeletedRoleView<'a> {
    pub name: &'a str,
    pub deleted: bool,
}

/// A role as `name value` lines.
pub fn role_fields(role: &pb::Role) -> Vec<(&'static str, String)> {
    vec![
        ("name", role.name.clone()),
        ("description", or_dash(role.description.clone())),
        ("permissions", or_dash(role.permissions.join(", "))),
        (
            "max ttl",
            duration_text(role.max_ttl.as_ref()).unwrap_or_else(|| "none".into()),
        ),
        (
            "default rate limit",
            role.default_rate_limit
                .as_ref()
                .map_or_else(|| "none".into(), rate_limit_text),
        ),
        ("builtin", yes_no(role.builtin)),
        (
            "created",
            timestamp(role.created_at.as_ref()).unwrap_or_else(|| "-".into()),
        ),
        (
            "updated",
            timestamp(role.updated_at.as_ref()).unwrap_or_else(|| "-".into()),
        ),
    ]
}

/// `role list` as a table.
pub fn roles_table(roles: &[pb::Role]) -> String {
    let rows: Vec<Vec<String>> = roles
        .iter()
        .map(|role| {
            vec![
                role.name.clone(),
                yes_no(role.builtin),
                duration_text(role.max_ttl.as_ref()).unwrap_or_else(|| "-".into()),
                role.default_rate_limit
                    .as_ref()
                    .map_or_else(|| "-".into(), rate_limit_text),
                or_dash(role.permissions.join(",")),
            ]
        })
        .collect();
    table_text(
        &["NAME", "BUILTIN", "MAX TTL", "RATE LIMIT", "PERMISSIONS"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::output::fields_text;

    fn limit(requests: u32, seconds: i64, burst: u32) -> Option<pb::RateLimit> {
        Some(pb::RateLimit {
            requests,
            per: Some(prost_types::Duration { seconds, nanos: 0 }),
            burst,
        })
    }

    fn to_json(role: &pb::Role) -> Value {
        serde_json::to_value(RoleView::from(role)).unwrap()
    }

    /// Scripts read this output: names, order and forms are a contract.
    #[test]
    fn role_json_is_pinned() {
        let role = pb::Role {
            name: "deployer".into(),
            description: "deploys".into(),
            permissions: vec!["build:read".into(), "deploy:*".into()],
            max_ttl: Some(prost_types::Duration {
                seconds: 5400,
                nanos: 0,
            }),
            default_rate_limit: limit(10, 1, 20),
            builtin: false,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
            updated_at: None,
        };
        assert_eq!(
            serde_json::to_string_pretty(&RoleView::from(&role)).unwrap(),
            r#"{
  "name": "deployer",
  "description": "deploys",
  "permissions": [
    "build:read",
    "deploy:*"
  ],
  "max_ttl": "1h 30m",
  "max_ttl_seconds": 5400,
  "default_rate_limit": {
    "requests": 10,
    "per_seconds": 1,
    "burst": 20
  },
  "builtin": false,
  "created_at": "2027-01-15T08:00:00Z",
  "updated_at": null
}"#
        );
        assert_eq!(
            serde_json::to_string(&DeletedRoleView {
                name: "deployer",
                deleted: true
            })
            .unwrap(),
            r#"{"name":"deployer","deleted":true}"#
        );
    }

    #[test]
    fn roles_show_their_max_ttl_as_text_and_seconds() {
        let mut role = pb::Role {
            name: "ci".into(),
            permissions: vec!["deploy:write".into()],
            max_ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        };
        let json = to_json(&role);
        assert_eq!(json["max_ttl"], "1h");
        assert_eq!(json["max_ttl_seconds"], 3600);
        assert_eq!(json["description"], Value::Null);
        assert_eq!(json["builtin"], false);
        let text = fields_text(&role_fields(&role));
        assert!(text.contains("max ttl             1h\n"), "{text}");
        assert!(text.contains("builtin             no\n"), "{text}");

        role.max_ttl = None;
        assert_eq!(to_json(&role)["max_ttl"], Value::Null);
        let text = fields_text(&role_fields(&role));
        assert!(text.contains("max ttl             none\n"), "{text}");
    }

    #[test]
    fn roles_show_their_default_rate_limit() {
        let mut role = pb::Role {
            name: "ci".into(),
            ..Default::default()
        };
        assert_eq!(to_json(&role)["default_rate_limit"], Value::Null);
        let text = fields_text(&role_fields(&role));
        assert!(text.contains("default rate limit  none\n"), "{text}");
        role.default_rate_limit = limit(10, 60, 10);
        assert_eq!(
            to_json(&role)["default_rate_limit"],
            json!({"requests": 10, "per_seconds": 60, "burst": 10})
        );
        let text = fields_text(&role_fields(&role));
        assert!(
            text.contains("default rate limit  10/m burst 10\n"),
            "{text}"
        );
    }

    #[test]
    fn roles_table_has_the_documented_columns() {
        let roles = [
            pb::Role {
                name: "admin".into(),
                permissions: vec!["keyward:*".into()],
                builtin: true,
                ..Default::default()
            },
            pb::Role {
                name: "ci".into(),
                permissions: vec!["deploy:read".into(), "deploy:write".into()],
                max_ttl: Some(prost_types::Duration {
                    seconds: 5400,
                    nanos: 0,
                }),
                default_rate_limit: limit(10, 1, 20),
                ..Default::default()
            },
        ];
        assert_eq!(
            roles_table(&roles),
            "NAME   BUILTIN  MAX TTL  RATE LIMIT     PERMISSIONS\n\
             admin  yes      -        -              keyward:*\n\
             ci     no       1h 30m   10/s burst 20  deploy:read,deploy:write\n"
        );
    }
}
