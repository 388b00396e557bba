//! Rendering: aligned text for people (`--output table`, the default) and
//! JSON for scripts (`--output json`).
//!
//! Both views of a key come from the same [`pb::Key`], and neither has a place
//! for a secret: the only plaintext ever printed is the one a mint, rotate or
//! init returns, which the commands add themselves.
//!
//! JSON conventions: timestamps are RFC 3339 strings in UTC, an absent
//! optional value (no expiry, no owner, not revoked) is `null`, labels are an
//! object, lists (roles, permissions, CIDRs) are arrays even when empty, and
//! the key state is `active`, `expired` or `revoked`. Durations (a role's max
//! TTL) appear twice: as text the CLI's own flags accept (`1h`) and as whole
//! seconds, so a script needs no duration parser. A rate limit is an object
//! `{requests, per_seconds, burst}` (`null` when there is none), so a script
//! can compare limits without parsing `5/s`; counts (`use_count`,
//! `max_uses`, `remaining_uses`) are numbers.

use std::{
    collections::BTreeMap,
    io::{self, Write as _},
    time::{Duration, SystemTime},
};

use keyward::pb;
use serde_json::{Value, json};

use crate::error::CliError;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned text for people
    Table,
    /// JSON for scripts
    Json,
}

/// Formats a protobuf timestamp as RFC 3339 (seconds, UTC).
pub fn timestamp(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let time = SystemTime::try_from(*ts?).ok()?;
    Some(humantime::format_rfc3339_seconds(time).to_string())
}

/// Formats a protobuf duration like `1h 30m`, as `--ttl` and `--max-ttl`
/// take it; `None` for an unset or negative one (never a valid max TTL).
pub fn duration_text(duration: Option<&prost_types::Duration>) -> Option<String> {
    let duration = Duration::try_from(*duration?).ok()?;
    Some(humantime::format_duration(duration).to_string())
}

/// A rate limit as people read it and `--rate` takes it, e.g. `5/s burst 5`;
/// a window other than a second, minute or hour (set through the API) is
/// written out, e.g. `5/10s burst 5`.
pub fn rate_limit_text(limit: &pb::RateLimit) -> String {
    let per = match limit.per.map(Duration::try_from) {
        Some(Ok(per)) if per == Duration::from_secs(1) => "s".to_owned(),
        Some(Ok(per)) if per == Duration::from_secs(60) => "m".to_owned(),
        Some(Ok(per)) if per == Duration::from_secs(3600) => "h".to_owned(),
        // No spaces (`1m30s`, not `1m 30s`), so the limit reads as one term.
        Some(Ok(per)) => humantime::format_duration(per).to_string().replace(' ', ""),
        // A server newer than this CLI, or a broken one: show, do not fail.
        Some(Err(_)) | None => "?".to_owned(),
    };
    format!("{}/{per} burst {}", limit.requests, limit.burst)
}

/// A rate limit as JSON: `{requests, per_seconds, burst}`. `per_seconds` is
/// a whole number for the windows `--rate` makes (1, 60, 3600) and has a
/// fraction only for a sub-second window set through the API.
pub fn rate_limit_json(limit: &pb::RateLimit) -> serde_json::Map<String, Value> {
    let per_seconds = match limit.per.map(Duration::try_from) {
        Some(Ok(per)) if per.subsec_nanos() == 0 => Value::from(per.as_secs()),
        Some(Ok(per)) => Value::from(per.as_secs_f64()),
        Some(Err(_)) | None => Value::Null,
    };
    let mut object = serde_json::Map::new();
    object.insert("requests".into(), limit.requests.into());
    object.insert("per_seconds".into(), per_seconds);
    object.insert("burst".into(), limit.burst.into());
    object
}

/// When a key last passed validation, or `never`. The server records uses in
/// batches, so a key used a moment ago may still say `never`.
pub fn last_used_text(key: &pb::Key) -> String {
    timestamp(key.last_used_at.as_ref()).unwrap_or_else(|| "never".into())
}

/// `1 key`, `2 keys`: counts in messages read as sentences.
pub fn count_keys(count: usize) -> String {
    if count == 1 {
        "1 key".to_owned()
    } else {
        format!("{count} keys")
    }
}

/// The name of a key state, as `list --state` takes it.
pub fn state_name(state: i32) -> String {
    match pb::KeyState::try_from(state) {
        Ok(pb::KeyState::Active) => "active".into(),
        Ok(pb::KeyState::Expired) => "expired".into(),
        Ok(pb::KeyState::Revoked) => "revoked".into(),
        Ok(pb::KeyState::Exhausted) => "exhausted".into(),
        // A server newer than this CLI may add states; show rather than fail.
        Ok(pb::KeyState::Unspecified) | Err(_) => format!("unknown({state})"),
    }
}

/// The name of a Validate denial, as the proto spells it (`INVALID`, ...).
pub fn denial_name(denial: i32) -> String {
    match pb::Denial::try_from(denial) {
        Ok(denial) => denial.as_str_name().to_owned(),
        Err(_) => format!("UNKNOWN({denial})"),
    }
}

/// Labels sorted by key (the wire map has no order), for stable output.
pub fn sorted_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> BTreeMap<&'a str, &'a str> {
    labels
        .into_iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// `env=prod, team=infra`.
pub fn labels_text<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    sorted_labels(labels)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An empty allow-list admits every address; a dash would read as "none".
pub fn cidrs_text(cidrs: &[String], separator: &str) -> String {
    if cidrs.is_empty() {
        "any".to_owned()
    } else {
        cidrs.join(separator)
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// A key's metadata as a JSON object.
pub fn key_json(key: &pb::Key) -> serde_json::Map<String, Value> {
    let value = json!({
        "id": key.id,
        "prefix": key.prefix,
        "state": state_name(key.state),
        "roles": key.roles,
        "permissions": key.permissions,
        "allowed_cidrs": key.allowed_cidrs,
        "labels": sorted_labels(&key.labels),
        "owner": non_empty(&key.owner),
        "description": non_empty(&key.description),
        "created_at": timestamp(key.created_at.as_ref()),
        "expires_at": timestamp(key.expires_at.as_ref()),
        "revoked_at": timestamp(key.revoked_at.as_ref()),
        "revoke_reason": non_empty(&key.revoke_reason),
        "rotated_from": non_empty(&key.rotated_from),
        "rotated_to": non_empty(&key.rotated_to),
        "created_by": non_empty(&key.created_by),
        "rate_limit": key.rate_limit.as_ref().map(rate_limit_json),
        // 0 on the wire means no cap: `null`, as for any absent value.
        "max_uses": (key.max_uses > 0).then_some(key.max_uses),
        "remaining_uses": key.remaining_uses,
        "last_used_at": timestamp(key.last_used_at.as_ref()),
        "use_count": key.use_count,
    });
    match value {
        Value::Object(map) => map,
        _ => unreachable!("json! of an object literal is an object"),
    }
}

/// A freshly minted (or rotated-to) key as JSON: `id` and `key` (the
/// plaintext, shown this once) first, then the rest of the metadata.
pub fn minted_key_json(key: &pb::Key, plaintext: String) -> serde_json::Map<String, Value> {
    let mut object = serde_json::Map::new();
    object.insert("id".into(), key.id.clone().into());
    object.insert("key".into(), plaintext.into());
    // `id` is inserted again here; the map keeps its first position.
    object.extend(key_json(key));
    object
}

/// A key's metadata as `name value` lines: empty optional fields are left
/// out, except expiry, where "never" is worth saying.
pub fn key_fields(key: &pb::Key) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("id", key.id.clone()),
        ("prefix", key.prefix.clone()),
        ("state", state_name(key.state)),
        ("roles", or_dash(key.roles.join(", "))),
        ("permissions", or_dash(key.permissions.join(", "))),
        ("allowed cidrs", cidrs_text(&key.allowed_cidrs, ", ")),
        ("labels", or_dash(labels_text(&key.labels))),
        ("owner", or_dash(key.owner.clone())),
    ];
    if !key.description.is_empty() {
        fields.push(("description", key.description.clone()));
    }
    fields.push((
        "created",
        timestamp(key.created_at.as_ref()).unwrap_or_else(|| "-".into()),
    ));
    fields.push((
        "expires",
        timestamp(key.expires_at.as_ref()).unwrap_or_else(|| "never".into()),
    ));
    // A dash: the key has no limit of its own (its roles' or the server's
    // default applies), or no cap.
    fields.push((
        "rate limit",
        key.rate_limit
            .as_ref()
            .map_or_else(|| "-".into(), rate_limit_text),
    ));
    fields.push((
        "max uses",
        if key.max_uses > 0 {
            key.max_uses.to_string()
        } else {
            "-".into()
        },
    ));
    if let Some(remaining) = key.remaining_uses {
        fields.push(("remaining uses", remaining.to_string()));
    }
    fields.push(("last used", last_used_text(key)));
    fields.push(("use count", key.use_count.to_string()));
    let optional = [
        ("revoked", timestamp(key.revoked_at.as_ref())),
        (
            "revoke reason",
            non_empty(&key.revoke_reason).map(Into::into),
        ),
        ("rotated from", non_empty(&key.rotated_from).map(Into::into)),
        ("rotated to", non_empty(&key.rotated_to).map(Into::into)),
        ("created by", non_empty(&key.created_by).map(Into::into)),
    ];
    fields.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?))),
    );
    fields
}

/// A role as a JSON object; `max_ttl` and `max_ttl_seconds` are `null`
/// when the role sets no cap.
pub fn role_json(role: &pb::Role) -> Value {
    json!({
        "name": role.name,
        "description": non_empty(&role.description),
        "permissions": role.permissions,
        "max_ttl": duration_text(role.max_ttl.as_ref()),
        "max_ttl_seconds": role
            .max_ttl
            .and_then(|d| Duration::try_from(d).ok())
            .map(|d| d.as_secs()),
        "default_rate_limit": role.default_rate_limit.as_ref().map(rate_limit_json),
        "builtin": role.builtin,
        "created_at": timestamp(role.created_at.as_ref()),
        "updated_at": timestamp(role.updated_at.as_ref()),
    })
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

/// An audit record as a JSON object. `actor` is `null` for the local
/// operator (init, first start), where the table says `local`.
pub fn audit_json(record: &pb::AuditRecord) -> Value {
    json!({
        "seq": record.seq,
        "at": timestamp(record.at.as_ref()),
        "actor": non_empty(&record.actor),
        "action": record.action,
        "target": non_empty(&record.target),
        "reason": non_empty(&record.reason),
    })
}

/// `yes` or `no`, for flags in tables.
pub fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// A dash for an empty cell, so columns and `name value` lines never look
/// cut off.
pub fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

/// Renders `name value` pairs with the values aligned.
pub fn fields_text(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(name, value)| format!("{name:<width$}  {value}\n"))
        .collect()
}

/// Renders rows under headers, each column as wide as its widest cell. The
/// last column is not padded, so lines carry no trailing spaces.
pub fn table_text(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                out.push_str(cell);
            } else {
                let pad = width - cell.chars().count();
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// Writes `text` to stdout.
///
/// # Errors
/// [`CliError::Output`] when stdout is closed or full.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(CliError::Output)
}

/// Writes `value` to stdout as pretty JSON and a newline.
///
/// # Errors
/// As [`print`].
pub fn print_json(value: &Value) -> Result<(), CliError> {
    // Serialising a `Value` cannot fail.
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    print(&format!("{text}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_key() -> pb::Key {
        pb::Key {
            id: "AbCdEfGhIjK".into(),
            prefix: "kw".into(),
            roles: vec!["deployer".into(), "validator".into()],
            labels: [("team", "infra"), ("env", "prod")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            owner: "ci".into(),
            state: pb::KeyState::Active as i32,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 5,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn key_json_uses_names_nulls_and_rfc3339() {
        let json = Value::Object(key_json(&sample_key()));
        assert_eq!(json["id"], "AbCdEfGhIjK");
        assert_eq!(json["state"], "active");
        assert_eq!(json["labels"], json!({"env": "prod", "team": "infra"}));
        assert_eq!(json["created_at"], "2027-01-15T08:00:00Z");
        assert_eq!(json["expires_at"], Value::Null);
        assert_eq!(json["description"], Value::Null);
        assert_eq!(json["owner"], "ci");
        assert_eq!(json["permissions"], json!([]), "an array even when empty");
        assert_eq!(json["allowed_cidrs"], json!([]));
    }

    #[test]
    fn key_fields_show_direct_permissions_and_the_allow_list() {
        let mut key = sample_key();
        let get = |key: &pb::Key, name| {
            key_fields(key)
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v)
        };
        assert_eq!(get(&key, "permissions").as_deref(), Some("-"));
        assert_eq!(get(&key, "allowed cidrs").as_deref(), Some("any"));
        key.permissions = vec!["deploy:write".into(), "deploy:read".into()];
        key.allowed_cidrs = vec!["10.0.0.0/8".into(), "2001:db8::/32".into()];
        assert_eq!(
            get(&key, "permissions").as_deref(),
            Some("deploy:write, deploy:read")
        );
        assert_eq!(
            get(&key, "allowed cidrs").as_deref(),
            Some("10.0.0.0/8, 2001:db8::/32")
        );
        let json = Value::Object(key_json(&key));
        assert_eq!(
            json["allowed_cidrs"],
            json!(["10.0.0.0/8", "2001:db8::/32"])
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
        let json = role_json(&role);
        assert_eq!(json["max_ttl"], "1h");
        assert_eq!(json["max_ttl_seconds"], 3600);
        assert_eq!(json["description"], Value::Null);
        assert_eq!(json["builtin"], false);
        let text = fields_text(&role_fields(&role));
        assert!(text.contains("max ttl             1h\n"), "{text}");
        assert!(text.contains("builtin             no\n"), "{text}");

        role.max_ttl = None;
        assert_eq!(role_json(&role)["max_ttl"], Value::Null);
        let text = fields_text(&role_fields(&role));
        assert!(text.contains("max ttl             none\n"), "{text}");
    }

    fn limit(requests: u32, seconds: i64, nanos: i32, burst: u32) -> pb::RateLimit {
        pb::RateLimit {
            requests,
            per: Some(prost_types::Duration { seconds, nanos }),
            burst,
        }
    }

    #[test]
    fn rate_limits_read_as_the_flag_writes_them() {
        assert_eq!(rate_limit_text(&limit(5, 1, 0, 5)), "5/s burst 5");
        assert_eq!(rate_limit_text(&limit(100, 60, 0, 20)), "100/m burst 20");
        assert_eq!(rate_limit_text(&limit(1, 3600, 0, 1)), "1/h burst 1");
        // Windows only the API can set are written out, still as one term.
        assert_eq!(rate_limit_text(&limit(5, 90, 0, 5)), "5/1m30s burst 5");
        assert_eq!(
            rate_limit_text(&limit(5, 0, 500_000_000, 1)),
            "5/500ms burst 1"
        );
        let unset = pb::RateLimit {
            per: None,
            ..limit(5, 1, 0, 5)
        };
        assert_eq!(rate_limit_text(&unset), "5/? burst 5");

        assert_eq!(
            Value::Object(rate_limit_json(&limit(100, 60, 0, 20))),
            json!({"requests": 100, "per_seconds": 60, "burst": 20})
        );
        assert_eq!(
            Value::Object(rate_limit_json(&limit(5, 0, 500_000_000, 1)))["per_seconds"],
            0.5
        );
    }

    #[test]
    fn keys_show_their_limits_and_usage() {
        let mut key = sample_key();
        let json = Value::Object(key_json(&key));
        assert_eq!(json["rate_limit"], Value::Null);
        assert_eq!(json["max_uses"], Value::Null, "0 on the wire is no cap");
        assert_eq!(json["remaining_uses"], Value::Null);
        assert_eq!(json["last_used_at"], Value::Null);
        assert_eq!(json["use_count"], 0);
        let text = fields_text(&key_fields(&key));
        for line in [
            "rate limit     -\n",
            "max uses       -\n",
            "last used      never\n",
            "use count      0\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert!(!text.contains("remaining uses"), "{text}");

        key.rate_limit = Some(limit(5, 1, 0, 10));
        key.max_uses = 3;
        key.remaining_uses = Some(2);
        key.last_used_at = key.created_at;
        key.use_count = 1;
        let json = Value::Object(key_json(&key));
        assert_eq!(
            json["rate_limit"],
            json!({"requests": 5, "per_seconds": 1, "burst": 10})
        );
        assert_eq!(json["max_uses"], 3);
        assert_eq!(json["remaining_uses"], 2);
        assert_eq!(json["last_used_at"], "2027-01-15T08:00:00Z");
        assert_eq!(json["use_count"], 1);
        let text = fields_text(&key_fields(&key));
        for line in [
            "rate limit      5/s burst 10\n",
            "max uses        3\n",
            "remaining uses  2\n",
            "last used       2027-01-15T08:00:00Z\n",
            "use count       1\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn roles_show_their_default_rate_limit() {
        let mut role = pb::Role {
            name: "ci".into(),
            ..Default::default()
        };
        assert_eq!(role_json(&role)["default_rate_limit"], Value::Null);
        let text = fields_text(&role_fields(&role));
        assert!(text.contains("default rate limit  none\n"), "{text}");
        role.default_rate_limit = Some(limit(10, 60, 0, 10));
        assert_eq!(
            role_json(&role)["default_rate_limit"],
            json!({"requests": 10, "per_seconds": 60, "burst": 10})
        );
        let text = fields_text(&role_fields(&role));
        assert!(
            text.contains("default rate limit  10/m burst 10\n"),
            "{text}"
        );
    }

    #[test]
    fn audit_json_nulls_what_is_empty() {
        let record = pb::AuditRecord {
            seq: 7,
            action: "initialize".into(),
            ..Default::default()
        };
        assert_eq!(
            audit_json(&record),
            json!({
                "seq": 7,
                "at": null,
                "actor": null,
                "action": "initialize",
                "target": null,
                "reason": null,
            })
        );
    }

    #[test]
    fn minted_key_json_starts_with_id_and_key() {
        let json = minted_key_json(&sample_key(), "kw_plaintext".into());
        let names: Vec<&str> = json.keys().map(String::as_str).take(3).collect();
        assert_eq!(names, ["id", "key", "prefix"]);
        assert_eq!(json["key"], "kw_plaintext");
        assert_eq!(json["id"], "AbCdEfGhIjK");
    }

    #[test]
    fn key_fields_say_never_for_no_expiry_and_skip_empty_extras() {
        let fields = key_fields(&sample_key());
        let get = |name| {
            fields
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("expires"), Some("never"));
        assert_eq!(get("labels"), Some("env=prod, team=infra"));
        assert_eq!(get("revoked"), None);
    }

    #[test]
    fn unknown_enum_values_are_shown_not_fatal() {
        assert_eq!(state_name(pb::KeyState::Revoked as i32), "revoked");
        assert_eq!(state_name(42), "unknown(42)");
        assert_eq!(denial_name(pb::Denial::Forbidden as i32), "FORBIDDEN");
        assert_eq!(denial_name(42), "UNKNOWN(42)");
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let text = table_text(
            &["ID", "STATE", "OWNER"],
            &[
                vec!["a".into(), "active".into(), "".into()],
                vec!["bbbb".into(), "revoked".into(), "ci".into()],
            ],
        );
        assert_eq!(
            text,
            "ID    STATE    OWNER\n\
             a     active\n\
             bbbb  revoked  ci\n"
        );
    }

    #[test]
    fn fields_align_values() {
        let text = fields_text(&[("id", "x".into()), ("expires", "never".into())]);
        assert_eq!(text, "id       x\nexpires  never\n");
    }
}
