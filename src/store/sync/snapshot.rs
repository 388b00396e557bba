//! The snapshot an index starts from, read in one pass per table.
//!
//! A million keys must load in seconds: each table is scanned once, and
//! parsed straight into the index's representation ([`IndexedKey`], with
//! [`KeyProfile`]s interned as they are made); a detail finds its key
//! through one map from id to position. No `IN` list, nothing held twice.
//!
//! The database concatenates the rows of a table into chunks of a few
//! thousand (`group_concat` / `string_agg`, fields separated by U+001E and
//! rows by U+001F, characters no stored value may hold), so a million keys
//! cross the driver as a few hundred rows: handing over each row costs the
//! SQLite driver a thread wake-up, which at one row per key and detail took
//! most of the start-up time.

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::super::StoreError;
use crate::{
    cidr::Cidr,
    clock::Timestamp,
    key::{HotPathHasher, KeyDigest, KeyId, KeyMap},
    model::{EntitlementsCache, IndexedKey, KeyProfile, Labels, Profiles},
    permission::{Permission, RoleName},
    rate_limit::RateLimit,
};

/// Between the fields of one row in a chunk.
const FIELD: char = '\u{1e}';
/// Between the rows of a chunk.
const ROW: char = '\u{1f}';

/// The snapshot's queries in one database's dialect. Each returns chunks of
/// rows as one text column; the key query takes the time as `$1`.
pub(super) struct Queries {
    /// Keys that can still validate: not revoked, not expired, not spent.
    /// Fields: `id`, `digest` (hex), `owner`, `expires_at`,
    /// `rate_requests`, `rate_period_ms`, `rate_burst`, `max_uses` (empty
    /// for NULL).
    pub(super) keys: &'static str,
    /// Per [`Detail`]: `key_id`, then the item (for labels, name and value).
    pub(super) details: [(Detail, &'static str); 4],
}

/// SQLite: chunks of 4,096 by rowid.
pub(super) const SQLITE: Queries = Queries {
    keys: "SELECT group_concat(id || char(30) || hex(digest) || char(30) || owner || char(30)            || coalesce(expires_at, '') || char(30) || coalesce(rate_requests, '') || char(30)            || coalesce(rate_period_ms, '') || char(30) || coalesce(rate_burst, '') || char(30)            || coalesce(max_uses, ''), char(31))            FROM api_keys            WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)              AND (uses_remaining IS NULL OR uses_remaining > 0)            GROUP BY rowid >> 12",
    details: [
        (
            Detail::Roles,
            "SELECT group_concat(key_id || char(30) || role, char(31)) FROM key_roles GROUP BY rowid >> 12",
        ),
        (
            Detail::Permissions,
            "SELECT group_concat(key_id || char(30) || permission, char(31)) FROM key_permissions GROUP BY rowid >> 12",
        ),
        (
            Detail::Cidrs,
            "SELECT group_concat(key_id || char(30) || cidr, char(31)) FROM key_cidrs GROUP BY rowid >> 12",
        ),
        (
            Detail::Labels,
            "SELECT group_concat(key_id || char(30) || name || char(30) || value, char(31)) FROM key_labels GROUP BY rowid >> 12",
        ),
    ],
};

/// PostgreSQL: 256 chunks by a hash of the key id.
pub(super) const POSTGRES: Queries = Queries {
    keys: "SELECT string_agg(id || chr(30) || encode(digest, 'hex') || chr(30) || owner || chr(30)            || coalesce(expires_at::text, '') || chr(30) || coalesce(rate_requests::text, '') || chr(30)            || coalesce(rate_period_ms::text, '') || chr(30) || coalesce(rate_burst::text, '') || chr(30)            || coalesce(max_uses::text, ''), chr(31))            FROM api_keys            WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)              AND (uses_remaining IS NULL OR uses_remaining > 0)            GROUP BY hashtext(id) & 255",
    details: [
        (
            Detail::Roles,
            "SELECT string_agg(key_id || chr(30) || role, chr(31)) FROM key_roles GROUP BY hashtext(key_id) & 255",
        ),
        (
            Detail::Permissions,
            "SELECT string_agg(key_id || chr(30) || permission, chr(31)) FROM key_permissions GROUP BY hashtext(key_id) & 255",
        ),
        (
            Detail::Cidrs,
            "SELECT string_agg(key_id || chr(30) || cidr, chr(31)) FROM key_cidrs GROUP BY hashtext(key_id) & 255",
        ),
        (
            Detail::Labels,
            "SELECT string_agg(key_id || chr(30) || name || chr(30) || value, chr(31)) FROM key_labels GROUP BY hashtext(key_id) & 255",
        ),
    ],
};

/// The tables that hold a key's details, one row per item. Rows of keys
/// that cannot validate are read and skipped: cheaper than a join.
#[derive(Debug, Clone, Copy)]
pub(super) enum Detail {
    Roles,
    Permissions,
    Cidrs,
    Labels,
}

impl Detail {
    fn table(self) -> &'static str {
        match self {
            Self::Roles => "key_roles",
            Self::Permissions => "key_permissions",
            Self::Cidrs => "key_cidrs",
            Self::Labels => "key_labels",
        }
    }
}

/// What a key's profile takes from its own row, as numbers ([`Items`]):
/// loading allocates nothing per key that the index will not keep, since
/// what is freed between long-lived allocations stays the process's memory.
#[derive(Clone, Copy)]
struct Traits {
    owner: u32,
    /// 0: none; else one more than its number.
    rate_limit: u32,
    capped: bool,
}

/// The distinct values of one kind, parsed once each, by their text; a
/// key refers to one by its number.
struct Items<T> {
    numbers: HashMap<Box<str>, u32>,
    values: Vec<T>,
}

impl<T> Default for Items<T> {
    fn default() -> Self {
        Self {
            numbers: HashMap::new(),
            values: Vec::new(),
        }
    }
}

impl<T> Items<T> {
    /// The number of `text`, parsed with `parse` the first time it is met.
    fn number(&mut self, text: &str, parse: impl FnOnce(&str) -> Option<T>) -> Option<u32> {
        if let Some(&number) = self.numbers.get(text) {
            return Some(number);
        }
        let number = u32::try_from(self.values.len()).ok()?;
        self.values.push(parse(text)?);
        self.numbers.insert(text.into(), number);
        Some(number)
    }
}

/// Which key (by position) has which item (by number), per detail.
type Links = Vec<(u32, u32)>;

/// The snapshot being read.
#[derive(Default)]
pub(super) struct Loading {
    /// The index's entries, each with a placeholder profile until
    /// [`Loading::finish`].
    keys: Vec<Arc<IndexedKey>>,
    traits: Vec<Traits>,
    positions: KeyMap<u32>,
    owners: Items<Box<str>>,
    rate_limits: Items<RateLimit>,
    roles: Items<RoleName>,
    permissions: Items<Permission>,
    cidrs: Items<Cidr>,
    /// A name and a value.
    labels: Items<(String, String)>,
    links: [Links; 4],
    placeholder: Arc<KeyProfile>,
}

impl Loading {
    /// Adds a chunk of the key query's rows.
    pub(super) fn keys(&mut self, chunk: &str) -> Result<(), StoreError> {
        for row in chunk.split(ROW) {
            let corrupt = |what| StoreError::Corrupt {
                table: "api_keys",
                what,
            };
            let mut fields = row.split(FIELD);
            let mut next = |what| fields.next().ok_or(corrupt(what));
            let id: KeyId = next("id")?.parse().map_err(|_| corrupt("id"))?;
            let digest = hex_digest(next("digest")?).ok_or(corrupt("digest"))?;
            let owner = self
                .owners
                .number(next("owner")?, |owner| Some(owner.into()))
                .ok_or(corrupt("owner"))?;
            let expires_at = optional::<i64>(next("expires_at")?)
                .map_err(|()| corrupt("expires_at"))?
                .map(Timestamp::from_millis);
            let rate = [
                next("rate limit")?,
                next("rate limit")?,
                next("rate limit")?,
            ];
            let rate_limit = if rate.iter().all(|field| field.is_empty()) {
                0
            } else {
                1 + self
                    .rate_limits
                    .number(&rate.join(","), |_| {
                        RateLimit::new(
                            rate[0].parse().ok()?,
                            Duration::from_millis(rate[1].parse().ok()?),
                            rate[2].parse().ok()?,
                        )
                        .ok()
                    })
                    .ok_or(corrupt("rate limit"))?
            };
            let capped = !next("max_uses")?.is_empty();
            let position = u32::try_from(self.keys.len()).map_err(|_| corrupt("id"))?;
            self.positions.insert(id, position);
            self.keys.push(Arc::new(IndexedKey {
                id,
                digest,
                expires_at,
                revoked_at: None,
                profile: self.placeholder.clone(),
                usage: Arc::default(),
            }));
            self.traits.push(Traits {
                owner,
                rate_limit,
                capped,
            });
        }
        Ok(())
    }

    /// Adds a chunk of `detail`'s rows to their keys, those that are live.
    pub(super) fn details(&mut self, detail: Detail, chunk: &str) -> Result<(), StoreError> {
        let table = detail.table();
        let corrupt = |what| StoreError::Corrupt { table, what };
        for row in chunk.split(ROW) {
            let (id, item) = row.split_once(FIELD).ok_or(corrupt("key_id"))?;
            let id: KeyId = id.parse().map_err(|_| corrupt("key_id"))?;
            let Some(&position) = self.positions.get(&id) else {
                continue;
            };
            let number = match detail {
                Detail::Roles => self.roles.number(item, |role| role.parse().ok()),
                Detail::Permissions => self.permissions.number(item, |p| p.parse().ok()),
                Detail::Cidrs => self.cidrs.number(item, |cidr| cidr.parse().ok()),
                Detail::Labels => self.labels.number(item, |pair| {
                    pair.split_once(FIELD)
                        .map(|(name, value)| (name.to_owned(), value.to_owned()))
                }),
            }
            .ok_or(corrupt("item"))?;
            self.links[detail as usize].push((position, number));
        }
        Ok(())
    }

    /// The index's entries by id, each with its profile, interned.
    pub(super) fn finish(mut self) -> Result<(KeyMap<Arc<IndexedKey>>, Profiles), StoreError> {
        drop(std::mem::take(&mut self.positions));
        for links in &mut self.links {
            links.sort_unstable();
        }
        let mut profiles = Profiles::default();
        // A profile by what it is made of, as numbers; reused for each key.
        let mut shared: HashMap<Box<[u32]>, Arc<KeyProfile>> = HashMap::new();
        let mut signature: Vec<u32> = Vec::new();
        let mut cursors = [0_usize; 4];
        let mut keys = std::mem::take(&mut self.keys);
        for ((position, key), traits) in (0_u32..).zip(&mut keys).zip(&self.traits) {
            let mut mine: [&[(u32, u32)]; 4] = [&[]; 4];
            for (detail, links) in self.links.iter().enumerate() {
                let start = cursors[detail];
                let end = start
                    + links[start..]
                        .iter()
                        .take_while(|(of, _)| *of == position)
                        .count();
                mine[detail] = &links[start..end];
                cursors[detail] = end;
            }
            signature.clear();
            signature.extend([traits.owner, traits.rate_limit, u32::from(traits.capped)]);
            for links in mine {
                signature.push(u32::try_from(links.len()).unwrap_or(u32::MAX));
                signature.extend(links.iter().map(|(_, number)| *number));
            }
            let profile = if let Some(profile) = shared.get(signature.as_slice()) {
                profile.clone()
            } else {
                let profile = profiles.intern(self.profile(*traits, mine)?);
                shared.insert(signature.as_slice().into(), profile.clone());
                profile
            };
            Arc::get_mut(key)
                .expect("entries are not shared while loading")
                .profile = profile;
        }
        let mut by_id = KeyMap::with_capacity_and_hasher(keys.len(), HotPathHasher::default());
        by_id.extend(keys.into_iter().map(|key| (key.id, key)));
        Ok((by_id, profiles))
    }

    /// The profile of a key with these `traits` and details (`links`, per
    /// [`Detail`]).
    fn profile(&self, traits: Traits, links: [&[(u32, u32)]; 4]) -> Result<KeyProfile, StoreError> {
        fn values<T: Clone + Ord>(items: &Items<T>, links: &[(u32, u32)]) -> Box<[T]> {
            let mut values: Vec<T> = links
                .iter()
                .map(|(_, number)| items.values[*number as usize].clone())
                .collect();
            values.sort_unstable();
            values.into_boxed_slice()
        }
        let [roles, permissions, cidrs, labels] = links;
        let labels = Labels::new(
            labels
                .iter()
                .map(|(_, number)| self.labels.values[*number as usize].clone())
                .collect(),
        )
        .map_err(|_| StoreError::Corrupt {
            table: "key_labels",
            what: "label",
        })?;
        Ok(KeyProfile {
            roles: values(&self.roles, roles),
            permissions: values(&self.permissions, permissions),
            allowed_cidrs: values(&self.cidrs, cidrs),
            labels,
            owner: self.owners.values[traits.owner as usize].clone(),
            rate_limit: traits
                .rate_limit
                .checked_sub(1)
                .map(|number| self.rate_limits.values[number as usize]),
            capped: traits.capped,
            entitlements: EntitlementsCache::default(),
        })
    }
}

/// An empty field is NULL; anything else must parse.
fn optional<T: std::str::FromStr>(field: &str) -> Result<Option<T>, ()> {
    if field.is_empty() {
        Ok(None)
    } else {
        field.parse().map(Some).map_err(|_| ())
    }
}

/// A digest as the database prints it: 64 hex digits, either case.
fn hex_digest(text: &str) -> Option<KeyDigest> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let nibble = |digit: u8| char::from(digit).to_digit(16);
    let mut bytes = [0_u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        let high = u8::try_from(nibble(pair[0])?).ok()?;
        let low = u8::try_from(nibble(pair[1])?).ok()?;
        *byte = high << 4 | low;
    }
    Some(KeyDigest::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_in_either_case_and_nothing_else_does() {
        let digest = hex_digest(&"aB".repeat(32)).unwrap();
        assert_eq!(digest.as_bytes(), &[0xab; 32]);
        assert!(hex_digest(&"ab".repeat(31)).is_none());
        assert!(hex_digest(&format!("{}zz", "ab".repeat(31))).is_none());
    }

    #[test]
    fn a_row_with_a_field_missing_is_corrupt_not_guessed() {
        let mut loading = Loading::default();
        let id = KeyId::from_u64(1).to_string();
        let digest = "00".repeat(32);
        let row = |fields: &[&str]| fields.join(&FIELD.to_string());
        loading
            .keys(&row(&[&id, &digest, "ops", "", "", "", "", ""]))
            .unwrap();
        let refused = loading.keys(&row(&[&id, &digest, "ops"])).unwrap_err();
        assert!(matches!(refused, StoreError::Corrupt { .. }), "{refused}");
        let refused = loading
            .keys(&row(&[&id, &digest, "ops", "", "5", "", "", ""]))
            .unwrap_err();
        assert!(
            matches!(
                refused,
                StoreError::Corrupt {
                    what: "rate limit",
                    ..
                }
            ),
            "{refused}"
        );
    }
}
