//! The snapshot an index starts from, read in one pass per table.
//!
//! A million keys must load in seconds: each table is scanned once, its rows
//! streamed and parsed as they arrive into the index's representation
//! ([`IndexedKey`], with [`KeyProfile`]s interned as they are made), and a
//! detail row finds its key through one map from id to position. No `IN`
//! list, no per-row `String` keys, nothing held twice.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use sqlx::{Row, any::AnyRow};

use super::super::{
    StoreError,
    rows::{key_digest, rate_limit_columns},
};
use crate::{
    cidr::Cidr,
    clock::Timestamp,
    key::{KeyDigest, KeyId},
    model::{IndexedKey, KeyProfile, Labels, Profiles},
    permission::{Permission, RoleName},
    rate_limit::RateLimit,
};

/// Keys that can still validate at `$1`: not revoked, not expired, not spent.
pub(super) const LIVE_KEYS: &str = "SELECT id, digest, owner, expires_at, rate_requests, rate_period_ms, rate_burst, max_uses \
     FROM api_keys \
     WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) \
       AND (uses_remaining IS NULL OR uses_remaining > 0)";

/// The tables that hold a key's details, one row per item.
#[derive(Debug, Clone, Copy)]
pub(super) enum Detail {
    Roles,
    Permissions,
    Cidrs,
    Labels,
}

impl Detail {
    pub(super) const ALL: [Self; 4] = [Self::Roles, Self::Permissions, Self::Cidrs, Self::Labels];

    /// The whole table, `key_id` first. Rows of keys that cannot validate
    /// are read and skipped: cheaper than a join per row.
    pub(super) fn select(self) -> &'static str {
        match self {
            Self::Roles => "SELECT key_id, role FROM key_roles",
            Self::Permissions => "SELECT key_id, permission FROM key_permissions",
            Self::Cidrs => "SELECT key_id, cidr FROM key_cidrs",
            Self::Labels => "SELECT key_id, name, value FROM key_labels",
        }
    }

    fn table(self) -> &'static str {
        match self {
            Self::Roles => "key_roles",
            Self::Permissions => "key_permissions",
            Self::Cidrs => "key_cidrs",
            Self::Labels => "key_labels",
        }
    }
}

/// A key read so far: its own row, then its details as they come.
struct Partial {
    id: KeyId,
    digest: KeyDigest,
    expires_at: Option<Timestamp>,
    owner: String,
    rate_limit: Option<RateLimit>,
    capped: bool,
    roles: Vec<RoleName>,
    permissions: Vec<Permission>,
    allowed_cidrs: Vec<Cidr>,
    labels: BTreeMap<String, String>,
}

/// The snapshot being read.
#[derive(Default)]
pub(super) struct Loading {
    keys: Vec<Partial>,
    positions: HashMap<KeyId, usize>,
}

impl Loading {
    /// Adds a row of [`LIVE_KEYS`].
    pub(super) fn key(&mut self, row: &AnyRow) -> Result<(), StoreError> {
        let id = parse(row, 0, "api_keys", "id")?;
        let partial = Partial {
            id,
            digest: key_digest(row)?,
            owner: row.try_get(2)?,
            expires_at: row
                .try_get::<Option<i64>, _>(3)?
                .map(Timestamp::from_millis),
            rate_limit: rate_limit_columns(row, "api_keys")?,
            capped: row.try_get::<Option<i64>, _>(7)?.is_some(),
            roles: Vec::new(),
            permissions: Vec::new(),
            allowed_cidrs: Vec::new(),
            labels: BTreeMap::new(),
        };
        self.positions.insert(id, self.keys.len());
        self.keys.push(partial);
        Ok(())
    }

    /// Adds a row of `detail`'s table to its key, if that key is live.
    pub(super) fn detail(&mut self, detail: Detail, row: &AnyRow) -> Result<(), StoreError> {
        let table = detail.table();
        let id: KeyId = parse(row, 0, table, "key_id")?;
        let Some(&position) = self.positions.get(&id) else {
            return Ok(());
        };
        let key = &mut self.keys[position];
        match detail {
            Detail::Roles => key.roles.push(parse(row, 1, table, "role")?),
            Detail::Permissions => key.permissions.push(parse(row, 1, table, "permission")?),
            Detail::Cidrs => key.allowed_cidrs.push(parse(row, 1, table, "cidr")?),
            Detail::Labels => {
                key.labels.insert(row.try_get(1)?, row.try_get(2)?);
            }
        }
        Ok(())
    }

    /// The index entries, each key's profile interned.
    pub(super) fn finish(self) -> Result<(Vec<IndexedKey>, Profiles), StoreError> {
        drop(self.positions);
        let mut profiles = Profiles::default();
        let keys = self
            .keys
            .into_iter()
            .map(|mut key| {
                // As the stores that write them give them back, whatever
                // order a scan met them in.
                key.roles.sort_unstable();
                key.permissions.sort_unstable();
                key.allowed_cidrs.sort_unstable();
                let labels = Labels::new(key.labels).map_err(|_| StoreError::Corrupt {
                    table: "key_labels",
                    what: "label",
                })?;
                let profile = profiles.intern(KeyProfile {
                    roles: key.roles.into(),
                    permissions: key.permissions.into(),
                    allowed_cidrs: key.allowed_cidrs.into(),
                    labels,
                    owner: key.owner.into(),
                    rate_limit: key.rate_limit,
                    capped: key.capped,
                });
                Ok(IndexedKey {
                    id: key.id,
                    digest: key.digest,
                    expires_at: key.expires_at,
                    revoked_at: None,
                    profile,
                    usage: Arc::default(),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok((keys, profiles))
    }
}

/// Text column `index` parsed into its domain type; one that does not parse
/// is corrupt, since keyward only writes parsed values.
fn parse<T: std::str::FromStr>(
    row: &AnyRow,
    index: usize,
    table: &'static str,
    what: &'static str,
) -> Result<T, StoreError> {
    row.try_get::<&str, _>(index)?
        .parse()
        .map_err(|_| StoreError::Corrupt { table, what })
}
