//! Keys: their JSON views and their text for people.
//!
//! Only [`KeyView::minted`] and [`FirstAdminKeyView`] carry a plaintext, the
//! one a mint, rotate or init returns this once; no view that can hold one
//! derives `Debug`, so none can leak it into a log or a panic message.

use std::collections::BTreeMap;

use keyward::pb;
use serde::Serialize;
use zeroize::{Zeroize, Zeroizing};

use super::{
    RateLimitView, fields_text, labels_text, non_empty, or_dash, rate_limit_text, sorted_labels,
    table_text, timestamp,
};

/// A key's metadata, as every key verb prints it.
#[derive(Serialize)]
pub struct KeyView<'a> {
    id: &'a str,
    /// The plaintext, right after `id` so that both are the first thing
    /// read. Absent (not `null`) except at mint and rotate: only a digest of
    /// the secret is stored, so no other verb could ever fill it.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    prefix: &'a str,
    state: String,
    roles: &'a [String],
    permissions: &'a [String],
    allowed_cidrs: &'a [String],
    labels: BTreeMap<&'a str, &'a str>,
    owner: Option<&'a str>,
    description: Option<&'a str>,
    created_at: Option<String>,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    revoke_reason: Option<&'a str>,
    rotated_from: Option<&'a str>,
    rotated_to: Option<&'a str>,
    created_by: Option<&'a str>,
    rate_limit: Option<RateLimitView>,
    /// 0 on the wire means no cap: `null`, as for any absent value.
    max_uses: Option<u64>,
    remaining_uses: Option<u64>,
    last_used_at: Option<String>,
    use_count: u64,
}

impl<'a> KeyView<'a> {
    pub fn new(key: &'a pb::Key) -> Self {
        Self {
            id: &key.id,
            key: None,
            prefix: &key.prefix,
            state: state_name(key.state),
            roles: &key.roles,
            permissions: &key.permissions,
            allowed_cidrs: &key.allowed_cidrs,
            labels: sorted_labels(&key.labels),
            owner: non_empty(&key.owner),
            description: non_empty(&key.description),
            created_at: timestamp(key.created_at.as_ref()),
            expires_at: timestamp(key.expires_at.as_ref()),
            revoked_at: timestamp(key.revoked_at.as_ref()),
            revoke_reason: non_empty(&key.revoke_reason),
            rotated_from: non_empty(&key.rotated_from),
            rotated_to: non_empty(&key.rotated_to),
            created_by: non_empty(&key.created_by),
            rate_limit: key.rate_limit.as_ref().map(RateLimitView::from),
            max_uses: (key.max_uses > 0).then_some(key.max_uses),
            remaining_uses: key.remaining_uses,
            last_used_at: timestamp(key.last_used_at.as_ref()),
            use_count: key.use_count,
        }
    }

    /// A freshly minted (or rotated-to) key with its plaintext, which the
    /// product promises in `key` next to `id`.
    pub fn minted(key: &'a pb::Key, plaintext: &'a str) -> Self {
        Self {
            key: Some(plaintext),
            ..Self::new(key)
        }
    }
}

/// `rotate`: the successor (with its plaintext) and, in `previous`, what
/// became of the old key.
#[derive(Serialize)]
pub struct RotatedKeyView<'a> {
    #[serde(flatten)]
    pub successor: KeyView<'a>,
    pub previous: KeyView<'a>,
}

/// `revoke ID`: the key as it is now, and whether it already was revoked
/// (revoking is idempotent, and a script may want to know it did nothing).
#[derive(Serialize)]
pub struct RevokedKeyView<'a> {
    #[serde(flatten)]
    pub key: KeyView<'a>,
    pub already_revoked: bool,
}

/// `revoke --label`: `key_ids` are the keys revoked, or with `dry_run` the
/// keys that would be.
#[derive(Debug, Serialize)]
pub struct BulkRevokeView<'a> {
    pub dry_run: bool,
    pub count: usize,
    pub key_ids: &'a [String],
}

/// `init`: the first admin key, the only output `init` has.
#[derive(Serialize)]
pub struct FirstAdminKeyView<'a> {
    pub id: &'a str,
    pub key: &'a str,
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

/// When a key last passed validation, or `never`. The server records uses in
/// batches, so a key used a moment ago may still say `never`.
pub fn last_used_text(key: &pb::Key) -> String {
    timestamp(key.last_used_at.as_ref()).unwrap_or_else(|| "never".into())
}

/// An empty allow-list admits every address; a dash would read as "none".
pub fn cidrs_text(cidrs: &[String], separator: &str) -> String {
    if cidrs.is_empty() {
        "any".to_owned()
    } else {
        cidrs.join(separator)
    }
}

/// The text of a freshly minted (or rotated-to) key: `headline`, then the
/// plaintext as the first field and the key's metadata. Every buffer that
/// held the plaintext on the way is wiped; the result is wiped when dropped.
pub fn minted_text(headline: &str, plaintext: &str, key: &pb::Key) -> Zeroizing<String> {
    let mut fields = vec![("key", plaintext.to_owned())];
    fields.extend(key_fields(key));
    let listing = Zeroizing::new(fields_text(&fields));
    fields[0].1.zeroize();
    Zeroizing::new(format!("{headline}\n\n{}", *listing))
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

/// `list` as a table, one key a line. Lists are joined with bare commas, so
/// that a cell's values read as one column.
pub fn keys_table(keys: &[pb::Key]) -> String {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|key| {
            vec![
                key.id.clone(),
                key.prefix.clone(),
                state_name(key.state),
                or_dash(key.roles.join(",")),
                or_dash(key.permissions.join(",")),
                or_dash(key.owner.clone()),
                or_dash(labels_text(&key.labels).replace(", ", ",")),
                cidrs_text(&key.allowed_cidrs, ","),
                timestamp(key.created_at.as_ref()).unwrap_or_else(|| "-".into()),
                timestamp(key.expires_at.as_ref()).unwrap_or_else(|| "never".into()),
                last_used_text(key),
            ]
        })
        .collect();
    table_text(
        &[
            "ID",
            "PREFIX",
            "STATE",
            "ROLES",
            "PERMISSIONS",
            "OWNER",
            "LABELS",
            "CIDRS",
            "CREATED",
            "EXPIRES",
            "LAST USED",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::output::fields_text;

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

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    /// Every field set, so the pinned JSON shows each one's place and form.
    fn full_key() -> pb::Key {
        pb::Key {
            state: pb::KeyState::Revoked as i32,
            permissions: vec!["extra:read".into()],
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            description: "CI deploys".into(),
            expires_at: at(1_800_003_600),
            revoked_at: at(1_800_001_800),
            revoke_reason: "job done".into(),
            rotated_from: "ZyXwVuTsRqP".into(),
            rotated_to: "QwErTyUiOpA".into(),
            created_by: "Ax7oqMpOkcw".into(),
            rate_limit: Some(pb::RateLimit {
                requests: 100,
                per: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                burst: 7,
            }),
            max_uses: 5,
            remaining_uses: Some(4),
            last_used_at: at(1_800_000_060),
            use_count: 1,
            ..sample_key()
        }
    }

    fn to_json(view: &impl Serialize) -> Value {
        serde_json::to_value(view).unwrap()
    }

    /// The top-level field names in output order, read from the JSON text
    /// (a `Value` would not keep the order).
    fn names(view: &impl Serialize) -> Vec<String> {
        let text = serde_json::to_string_pretty(view).unwrap();
        text.lines()
            .filter_map(|line| line.strip_prefix("  \""))
            .filter_map(|rest| rest.split_once('"').map(|(name, _)| name.to_owned()))
            .collect()
    }

    /// Scripts read this output: names, order and forms are a contract.
    #[test]
    fn key_json_is_pinned() {
        let key = full_key();
        assert_eq!(
            serde_json::to_string_pretty(&KeyView::new(&key)).unwrap(),
            r#"{
  "id": "AbCdEfGhIjK",
  "prefix": "kw",
  "state": "revoked",
  "roles": [
    "deployer",
    "validator"
  ],
  "permissions": [
    "extra:read"
  ],
  "allowed_cidrs": [
    "10.0.0.0/8"
  ],
  "labels": {
    "env": "prod",
    "team": "infra"
  },
  "owner": "ci",
  "description": "CI deploys",
  "created_at": "2027-01-15T08:00:00Z",
  "expires_at": "2027-01-15T09:00:00Z",
  "revoked_at": "2027-01-15T08:30:00Z",
  "revoke_reason": "job done",
  "rotated_from": "ZyXwVuTsRqP",
  "rotated_to": "QwErTyUiOpA",
  "created_by": "Ax7oqMpOkcw",
  "rate_limit": {
    "requests": 100,
    "per_seconds": 1,
    "burst": 7
  },
  "max_uses": 5,
  "remaining_uses": 4,
  "last_used_at": "2027-01-15T08:01:00Z",
  "use_count": 1
}"#
        );
    }

    #[test]
    fn minted_rotated_and_revoked_keys_add_their_fields_in_place() {
        let key = pb::Key {
            id: "AbCdEfGhIjK".into(),
            ..Default::default()
        };
        let minted = KeyView::minted(&key, "kw_plaintext");
        assert_eq!(
            names(&minted)[..3],
            ["id", "key", "prefix"],
            "`id` and `key` first"
        );
        let plain: Vec<String> = names(&KeyView::new(&key));
        assert!(!plain.contains(&"key".to_owned()), "no `key` in {plain:?}");

        let rotated = RotatedKeyView {
            successor: KeyView::minted(&key, "kw_plaintext"),
            previous: KeyView::new(&key),
        };
        let rotated_names = names(&rotated);
        assert_eq!(rotated_names[..2], ["id", "key"]);
        assert_eq!(rotated_names.last().unwrap(), "previous");
        assert_eq!(to_json(&rotated)["previous"]["id"], "AbCdEfGhIjK");
        assert!(to_json(&rotated)["previous"].get("key").is_none());

        let revoked = RevokedKeyView {
            key: KeyView::new(&key),
            already_revoked: true,
        };
        let revoked_names = names(&revoked);
        assert_eq!(revoked_names[0], "id");
        assert_eq!(revoked_names.last().unwrap(), "already_revoked");
    }

    #[test]
    fn key_json_uses_names_nulls_and_rfc3339() {
        let key = sample_key();
        let json = to_json(&KeyView::new(&key));
        assert_eq!(json["id"], "AbCdEfGhIjK");
        assert_eq!(json["state"], "active");
        assert_eq!(json["labels"], json!({"env": "prod", "team": "infra"}));
        assert_eq!(json["created_at"], "2027-01-15T08:00:00Z");
        assert_eq!(json["expires_at"], Value::Null);
        assert_eq!(json["description"], Value::Null);
        assert_eq!(json["owner"], "ci");
        assert_eq!(json["permissions"], json!([]), "an array even when empty");
        assert_eq!(json["allowed_cidrs"], json!([]));
        assert_eq!(json["rate_limit"], Value::Null);
        assert_eq!(json["max_uses"], Value::Null, "0 on the wire is no cap");
        assert_eq!(json["remaining_uses"], Value::Null);
        assert_eq!(json["last_used_at"], Value::Null);
        assert_eq!(json["use_count"], 0);
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
    }

    #[test]
    fn key_fields_show_limits_and_usage() {
        let mut key = sample_key();
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

        key.rate_limit = full_key().rate_limit;
        key.max_uses = 3;
        key.remaining_uses = Some(2);
        key.last_used_at = key.created_at;
        key.use_count = 1;
        let text = fields_text(&key_fields(&key));
        for line in [
            "rate limit      100/s burst 7\n",
            "max uses        3\n",
            "remaining uses  2\n",
            "last used       2027-01-15T08:00:00Z\n",
            "use count       1\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
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
    fn unknown_states_are_shown_not_fatal() {
        assert_eq!(state_name(pb::KeyState::Revoked as i32), "revoked");
        assert_eq!(state_name(42), "unknown(42)");
    }

    #[test]
    fn keys_table_has_the_documented_columns() {
        let admin = pb::Key {
            id: "AbCdEfGhIjK".into(),
            prefix: "kw".into(),
            roles: vec!["admin".into()],
            state: pb::KeyState::Active as i32,
            ..Default::default()
        };
        let ci = pb::Key {
            id: "ZyXwVuTsRqP".into(),
            prefix: "ci".into(),
            permissions: vec!["deploy:read".into(), "deploy:write".into()],
            allowed_cidrs: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
            state: pb::KeyState::Active as i32,
            last_used_at: at(1_800_000_000),
            ..sample_key()
        };
        assert_eq!(
            keys_table(&[admin, ci]),
            "ID           PREFIX  STATE   ROLES               PERMISSIONS               OWNER  LABELS               CIDRS                     CREATED               EXPIRES  LAST USED\n\
             AbCdEfGhIjK  kw      active  admin               -                         -      -                    any                       -                     never    never\n\
             ZyXwVuTsRqP  ci      active  deployer,validator  deploy:read,deploy:write  ci     env=prod,team=infra  10.0.0.0/8,2001:db8::/32  2027-01-15T08:00:00Z  never    2027-01-15T08:00:00Z\n"
        );
    }
}
