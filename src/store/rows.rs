//! Rows into domain types, and domain values into column values: the one
//! place that knows how a key, a role or a rate limit is laid out in the
//! tables. A row keyward could not have written is reported as
//! [`StoreError::Corrupt`], never guessed at.

use std::{
    collections::{BTreeMap, HashMap},
    str::FromStr,
    time::Duration,
};

use sqlx::{AnyConnection, Row, any::AnyRow};

use super::{StoreError, sql::Sql};
use crate::{
    cidr::Cidr,
    clock::Timestamp,
    key::{KeyDigest, KeyId, Prefix},
    model::{AuditRecord, KeyRecord, KeySettings, Labels, Role},
    permission::{Permission, RoleName},
    rate_limit::RateLimit,
};

/// Milliseconds, as the `_ms` columns hold them; saturating, as no
/// setting keyward accepts comes near.
pub(super) fn duration_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A count as the columns hold it (signed); saturating.
pub(super) fn count_to_i64(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// The rate limit stored in `rate_requests`, `rate_period_ms`, `rate_burst`.
fn rate_limit_columns(row: &AnyRow, table: &'static str) -> Result<Option<RateLimit>, StoreError> {
    let requests: Option<i64> = row.try_get("rate_requests")?;
    let period: Option<i64> = row.try_get("rate_period_ms")?;
    let burst: Option<i64> = row.try_get("rate_burst")?;
    let corrupt = || StoreError::Corrupt {
        table,
        what: "rate limit",
    };
    match (requests, period, burst) {
        (None, None, None) => Ok(None),
        (Some(requests), Some(period), Some(burst)) => {
            let requests = u32::try_from(requests).map_err(|_| corrupt())?;
            let burst = u32::try_from(burst).map_err(|_| corrupt())?;
            let per = Duration::from_millis(u64::try_from(period).map_err(|_| corrupt())?);
            RateLimit::new(requests, per, burst)
                .map(Some)
                .map_err(|_| corrupt())
        }
        _ => Err(corrupt()),
    }
}

/// A nullable count column; counts are never written negative.
fn optional_count(row: &AnyRow, column: &str) -> Result<Option<u64>, StoreError> {
    Ok(row
        .try_get::<Option<i64>, _>(column)?
        .map(i64::unsigned_abs))
}

/// Turns `api_keys` rows into records, loading their roles, permissions,
/// CIDRs and labels with one query each. Keeps the order of `rows`.
pub(super) async fn with_details(
    conn: &mut AnyConnection,
    rows: Vec<AnyRow>,
    with_digest: bool,
) -> Result<Vec<(KeyRecord, Option<KeyDigest>)>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = rows
        .iter()
        .map(|row| row.try_get::<String, _>("id"))
        .collect::<Result<_, _>>()?;
    let mut roles: HashMap<String, Vec<RoleName>> = group_by_key(
        fetch_for_ids(
            conn,
            "SELECT key_id, role AS item FROM key_roles",
            "key_id",
            &ids,
        )
        .await?,
        "key_roles",
    )?;
    let mut permissions: HashMap<String, Vec<Permission>> = group_by_key(
        fetch_for_ids(
            conn,
            "SELECT key_id, permission AS item FROM key_permissions",
            "key_id",
            &ids,
        )
        .await?,
        "key_permissions",
    )?;
    let mut cidrs: HashMap<String, Vec<Cidr>> = group_by_key(
        fetch_for_ids(
            conn,
            "SELECT key_id, cidr AS item FROM key_cidrs",
            "key_id",
            &ids,
        )
        .await?,
        "key_cidrs",
    )?;
    let mut labels: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    for row in fetch_for_ids(
        conn,
        "SELECT key_id, name, value FROM key_labels",
        "key_id",
        &ids,
    )
    .await?
    {
        labels
            .entry(row.try_get("key_id")?)
            .or_default()
            .insert(row.try_get("name")?, row.try_get("value")?);
    }
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            let labels = Labels::new(labels.remove(&id).unwrap_or_default()).map_err(|_| {
                StoreError::Corrupt {
                    table: "key_labels",
                    what: "label",
                }
            })?;
            let mut record = key_record(row, roles.remove(&id).unwrap_or_default(), labels)?;
            record.settings.permissions = permissions.remove(&id).unwrap_or_default();
            record.settings.allowed_cidrs = cidrs.remove(&id).unwrap_or_default();
            let digest = if with_digest {
                Some(key_digest(row)?)
            } else {
                None
            };
            Ok((record, digest))
        })
        .collect()
}

/// Groups `(key_id, item)` rows by key id, parsing each item.
fn group_by_key<T: FromStr>(
    rows: Vec<AnyRow>,
    table: &'static str,
) -> Result<HashMap<String, Vec<T>>, StoreError> {
    let mut grouped: HashMap<String, Vec<T>> = HashMap::new();
    for row in rows {
        let item = parse_column(&row, "item", table)?;
        grouped
            .entry(row.try_get("key_id")?)
            .or_default()
            .push(item);
    }
    Ok(grouped)
}

/// Most values bound in one `IN` list. Far below both databases' limits on
/// bound parameters, because SQLite resolves each numbered placeholder
/// (`$N`) by scanning those before it: a statement of 10,000 costs ~0.5 s to
/// prepare, ten of 1,000 ~30 ms, twenty of 500 ~20 ms.
pub(super) const IDS_PER_STATEMENT: usize = 500;

/// Runs `select` restricted to `column IN ids`, in chunks of
/// [`IDS_PER_STATEMENT`]. `column` may start with further conditions
/// (`"revoked_at IS NULL AND id"`).
pub(super) async fn fetch_for_ids(
    conn: &mut AnyConnection,
    select: &'static str,
    column: &'static str,
    ids: &[String],
) -> Result<Vec<AnyRow>, StoreError> {
    let mut rows = Vec::new();
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let mut sql = Sql::new(select);
        sql.push(" WHERE ").push(column).push(" IN (");
        for (position, id) in chunk.iter().enumerate() {
            if position > 0 {
                sql.push(", ");
            }
            sql.push_bind(id.clone());
        }
        sql.push(")");
        rows.extend(sql.build().fetch_all(&mut *conn).await?);
    }
    Ok(rows)
}

/// Every role with its permissions, by name.
pub(super) async fn load_roles(conn: &mut AnyConnection) -> Result<Vec<Role>, StoreError> {
    let mut permissions: HashMap<String, Vec<Permission>> = HashMap::new();
    for row in sqlx::query("SELECT role, permission FROM role_permissions")
        .fetch_all(&mut *conn)
        .await?
    {
        let permission = parse_column(&row, "permission", "role_permissions")?;
        permissions
            .entry(row.try_get("role")?)
            .or_default()
            .push(permission);
    }
    sqlx::query("SELECT * FROM roles ORDER BY name")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| {
            let name: String = row.try_get("name")?;
            Ok(Role {
                permissions: permissions.remove(&name).unwrap_or_default().into(),
                name: parse_column(row, "name", "roles")?,
                description: row.try_get("description")?,
                max_ttl: row
                    .try_get::<Option<i64>, _>("max_ttl_ms")?
                    .map(|ms| Duration::from_millis(ms.unsigned_abs())),
                rate_limit: rate_limit_columns(row, "roles")?,
                builtin: row.try_get::<i64, _>("builtin")? != 0,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
            })
        })
        .collect()
}

/// An `api_keys` row as a record, given its roles and labels (permissions
/// and CIDRs are filled in by [`with_details`]).
fn key_record(row: &AnyRow, roles: Vec<RoleName>, labels: Labels) -> Result<KeyRecord, StoreError> {
    let timestamp = |column: &str| -> Result<Option<Timestamp>, StoreError> {
        Ok(row
            .try_get::<Option<i64>, _>(column)?
            .map(Timestamp::from_millis))
    };
    let key_id = |column: &'static str| -> Result<Option<KeyId>, StoreError> {
        row.try_get::<Option<String>, _>(column)?
            .map(|text| {
                text.parse().map_err(|_| StoreError::Corrupt {
                    table: "api_keys",
                    what: column,
                })
            })
            .transpose()
    };
    Ok(KeyRecord {
        id: parse_column(row, "id", "api_keys")?,
        settings: KeySettings {
            prefix: parse_column::<Prefix>(row, "prefix", "api_keys")?,
            roles,
            permissions: Vec::new(),
            allowed_cidrs: Vec::new(),
            labels,
            owner: row.try_get("owner")?,
            description: row.try_get("description")?,
            expires_at: timestamp("expires_at")?,
            rate_limit: rate_limit_columns(row, "api_keys")?,
            max_uses: optional_count(row, "max_uses")?,
        },
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        created_by: key_id("created_by")?,
        revoked_at: timestamp("revoked_at")?,
        revoke_reason: row.try_get("revoke_reason")?,
        rotated_from: key_id("rotated_from")?,
        rotated_to: key_id("rotated_to")?,
        uses_remaining: optional_count(row, "uses_remaining")?,
        last_used_at: timestamp("last_used_at")?,
        use_count: row.try_get::<i64, _>("use_count")?.unsigned_abs(),
    })
}

/// The stored digest of a key's secret.
fn key_digest(row: &AnyRow) -> Result<KeyDigest, StoreError> {
    let bytes: Vec<u8> = row.try_get("digest")?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        table: "api_keys",
        what: "digest",
    })?;
    Ok(KeyDigest::from_bytes(bytes))
}

/// A text column parsed into its domain type; a value that does not parse
/// is corrupt, since keyward only writes parsed values.
pub(super) fn parse_column<T: FromStr>(
    row: &AnyRow,
    column: &'static str,
    table: &'static str,
) -> Result<T, StoreError> {
    row.try_get::<String, _>(column)?
        .parse()
        .map_err(|_| StoreError::Corrupt {
            table,
            what: column,
        })
}

/// An `audit_log` row.
pub(super) fn audit_record(row: &AnyRow) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        seq: row.try_get("seq")?,
        at: Timestamp::from_millis(row.try_get("at")?),
        actor: row
            .try_get::<Option<String>, _>("actor")?
            .map(|actor| {
                actor.parse().map_err(|_| StoreError::Corrupt {
                    table: "audit_log",
                    what: "actor",
                })
            })
            .transpose()?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        reason: row.try_get("reason")?,
    })
}
