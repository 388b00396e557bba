//! The in-memory index: every key that can still validate, and every role.
//!
//! It is loaded from the store at start and changed only through
//! [`Index::apply`], with the [`Change`]s that store writes return, so
//! validating a known key performs no database I/O.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use crate::{
    clock::Timestamp,
    key::KeyId,
    model::{Change, IndexedKey, Role},
    permission::{Permission, RoleName},
    rate_limit::RateLimit,
    store::Snapshot,
    usage::UsageDelta,
};

#[derive(Debug, Default)]
struct State {
    keys: HashMap<KeyId, Arc<IndexedKey>>,
    roles: HashMap<RoleName, Role>,
    /// Usage counted for keys since removed, waiting for the next flush.
    retired_usage: Vec<UsageDelta>,
}

/// What a key's roles give it, read in one go.
#[derive(Debug)]
pub struct Entitlements {
    /// The key's own permissions plus its roles', sorted, without duplicates.
    pub permissions: Vec<Permission>,
    /// The strictest default rate limit among its roles.
    pub role_rate_limit: Option<RateLimit>,
}

/// Keys by id and roles by name, behind one reader-writer lock: validations
/// share it, and the rare writes (mint, revoke, role edits) hold it briefly.
#[derive(Debug, Default)]
pub struct Index {
    state: RwLock<State>,
}

impl Index {
    /// An index holding what the store holds now.
    #[must_use]
    pub fn from_snapshot(snapshot: Snapshot) -> Self {
        let keys = snapshot
            .keys
            .into_iter()
            .map(|(record, digest)| (record.id, Arc::new(IndexedKey::new(&record, digest))))
            .collect();
        let roles = snapshot
            .roles
            .into_iter()
            .map(|role| (role.name.clone(), role))
            .collect();
        Self {
            state: RwLock::new(State {
                keys,
                roles,
                retired_usage: Vec::new(),
            }),
        }
    }

    /// Makes the index hold exactly what `snapshot` holds (a resync),
    /// through [`Index::apply`]: usage counted for keys that stay is kept,
    /// and usage of keys that go waits for the next flush.
    pub fn replace(&self, snapshot: Snapshot) {
        let live: HashSet<KeyId> = snapshot.keys.iter().map(|(record, _)| record.id).collect();
        let defined: HashSet<&RoleName> = snapshot.roles.iter().map(|role| &role.name).collect();
        let mut changes: Vec<Change> = {
            let state = self.read();
            let gone_keys = state.keys.keys().filter(|id| !live.contains(id));
            let gone_roles = state.roles.keys().filter(|name| !defined.contains(name));
            gone_keys
                .map(|id| Change::KeyRemoved(*id))
                .chain(gone_roles.map(|name| Change::RoleRemoved(name.clone())))
                .collect()
        };
        changes.extend(snapshot.keys.into_iter().map(|(record, digest)| {
            Change::KeyUpserted(Arc::new(IndexedKey::new(&record, digest)))
        }));
        changes.extend(snapshot.roles.into_iter().map(Change::RoleUpserted));
        self.apply(changes);
    }

    /// Applies committed changes. This is the only way the index changes.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) {
        let mut state = self.write();
        for change in changes {
            match change {
                Change::KeyUpserted(key) => {
                    // Every version of a key shares one usage counter, so a
                    // validation still holding the previous version counts.
                    let key = match state.keys.get(&key.id) {
                        Some(previous) if !Arc::ptr_eq(&previous.usage, &key.usage) => {
                            Arc::new(IndexedKey {
                                usage: previous.usage.clone(),
                                ..(*key).clone()
                            })
                        }
                        _ => key,
                    };
                    state.keys.insert(key.id, key);
                }
                Change::KeyRemoved(id) => {
                    if let Some(removed) = state.keys.remove(&id)
                        && let Some(pending) = removed.usage.take(id)
                    {
                        state.retired_usage.push(pending);
                    }
                }
                Change::RoleUpserted(role) => {
                    state.roles.insert(role.name.clone(), role);
                }
                Change::RoleRemoved(name) => {
                    state.roles.remove(&name);
                }
            }
        }
    }

    /// The live key with this id, if any.
    pub fn get(&self, id: KeyId) -> Option<Arc<IndexedKey>> {
        self.read().keys.get(&id).cloned()
    }

    /// The key's effective permissions (its own plus the union of its
    /// roles') and its roles' rate limit, read at call time so a role change
    /// applies to the very next validation.
    pub fn entitlements(&self, key: &IndexedKey) -> Entitlements {
        let state = self.read();
        let roles = || key.roles.iter().filter_map(|name| state.roles.get(name));
        let mut permissions: Vec<Permission> = roles()
            .flat_map(|role| role.permissions.iter())
            .chain(key.permissions.iter())
            .cloned()
            .collect();
        permissions.sort_unstable();
        permissions.dedup();
        let role_rate_limit = roles()
            .filter_map(|role| role.rate_limit)
            .min_by(|a, b| a.per_second().total_cmp(&b.per_second()));
        Entitlements {
            permissions,
            role_rate_limit,
        }
    }

    /// Takes the usage counted since the last call, for the store.
    pub fn take_usage(&self) -> Vec<UsageDelta> {
        // Counters are atomics: a read lock lets validations go on meanwhile.
        let mut deltas: Vec<UsageDelta> = self
            .read()
            .keys
            .iter()
            .filter_map(|(id, key)| key.usage.take(*id))
            .collect();
        deltas.append(&mut self.write().retired_usage);
        deltas
    }

    /// Gives back usage the store could not take, for the next flush.
    pub fn restore_usage(&self, deltas: Vec<UsageDelta>) {
        let mut state = self.write();
        for delta in deltas {
            match state.keys.get(&delta.key) {
                Some(key) => key.usage.restore(&delta),
                None => state.retired_usage.push(delta),
            }
        }
    }

    /// The role with this name, if it exists.
    pub fn role(&self, name: &RoleName) -> Option<Role> {
        self.read().roles.get(name).cloned()
    }

    /// How many keys the index holds.
    pub fn len(&self) -> usize {
        self.read().keys.len()
    }

    /// How many keys and roles the index holds, read together (for metrics).
    pub fn sizes(&self) -> (usize, usize) {
        let state = self.read();
        (state.keys.len(), state.roles.len())
    }

    /// Whether the index holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops keys that expired at or before `now`; they would be refused
    /// anyway, this only returns their memory. Returns how many went.
    pub fn remove_expired(&self, now: Timestamp) -> usize {
        let expired = |key: &IndexedKey| key.expires_at.is_some_and(|at| at <= now);
        // Find them under the shared lock, so validations go on meanwhile;
        // most sweeps find nothing and never take the write lock.
        let ids: Vec<KeyId> = self
            .read()
            .keys
            .iter()
            .filter(|(_, key)| expired(key))
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return 0;
        }
        let mut state = self.write();
        let mut removed = 0;
        for id in ids {
            // Checked again: the entry may have been replaced meanwhile.
            if state.keys.get(&id).is_some_and(|key| expired(key))
                && let Some(key) = state.keys.remove(&id)
            {
                // Keep what it was used for since the last flush.
                state.retired_usage.extend(key.usage.take(id));
                removed += 1;
            }
        }
        removed
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated
        // (each change is a single map operation), so poisoning is ignored.
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        clock::Timestamp,
        key::{KeyDigest, MintedKey, Prefix},
        model::{KeyRecord, KeySettings},
    };

    /// A key record with the given roles, for tests of any layer.
    pub(crate) fn record(minted: &MintedKey, roles: &[&str]) -> KeyRecord {
        let settings = KeySettings {
            roles: roles.iter().map(|r| r.parse().unwrap()).collect(),
            ..KeySettings::default()
        };
        KeyRecord::new(minted.id, settings, Timestamp::from_millis(0), None)
    }

    pub(crate) fn role(name: &str, permissions: &[&str]) -> Role {
        Role {
            name: name.parse().unwrap(),
            description: String::new(),
            permissions: permissions.iter().map(|p| p.parse().unwrap()).collect(),
            max_ttl: None,
            rate_limit: None,
            builtin: false,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
        }
    }

    #[test]
    fn changes_are_applied_in_order() {
        let minted = MintedKey::generate(&Prefix::default()).unwrap();
        let index = Index::default();
        let entry = Arc::new(IndexedKey::new(&record(&minted, &["ci"]), minted.digest));
        index.apply([
            Change::RoleUpserted(role("ci", &["deploy:*"])),
            Change::KeyUpserted(entry),
        ]);
        let key = index.get(minted.id).unwrap();
        assert_eq!(
            index.entitlements(&key).permissions,
            vec!["deploy:*".parse().unwrap()]
        );

        index.apply([Change::RoleUpserted(role(
            "ci",
            &["build:read", "build:read"],
        ))]);
        assert_eq!(
            index.entitlements(&key).permissions,
            vec!["build:read".parse().unwrap()]
        );

        index.apply([
            Change::KeyRemoved(minted.id),
            Change::RoleRemoved("ci".parse().unwrap()),
        ]);
        assert!(index.get(minted.id).is_none());
        assert!(index.is_empty());
        assert!(index.role(&"ci".parse().unwrap()).is_none());
    }

    #[test]
    fn usage_survives_replacement_and_removal() {
        let minted = MintedKey::generate(&Prefix::default()).unwrap();
        let index = Index::default();
        let entry = || Arc::new(IndexedKey::new(&record(&minted, &[]), minted.digest));
        index.apply([Change::KeyUpserted(entry())]);
        let first_version = index.get(minted.id).unwrap();
        first_version.usage.record(Timestamp::from_millis(5));
        index.apply([Change::KeyUpserted(entry())]);
        index
            .get(minted.id)
            .unwrap()
            .usage
            .record(Timestamp::from_millis(6));
        // A validation that looked the key up before the replacement still counts.
        first_version.usage.record(Timestamp::from_millis(7));
        index.apply([Change::KeyRemoved(minted.id)]);
        let deltas = index.take_usage();
        assert_eq!(deltas.len(), 1);
        assert_eq!(
            (deltas[0].uses, deltas[0].last_used_at),
            (3, Timestamp::from_millis(7))
        );
        assert!(index.take_usage().is_empty());
        index.restore_usage(deltas.clone());
        assert_eq!(index.take_usage(), deltas);
    }

    #[test]
    fn roles_give_their_strictest_rate_limit() {
        let minted = MintedKey::generate(&Prefix::default()).unwrap();
        let index = Index::default();
        let mut fast = role("fast", &["a:b"]);
        fast.rate_limit = Some("100/s".parse().unwrap());
        let mut slow = role("slow", &["c:d"]);
        slow.rate_limit = Some("60/m".parse().unwrap());
        let key = Arc::new(IndexedKey::new(
            &record(&minted, &["fast", "slow"]),
            minted.digest,
        ));
        index.apply([
            Change::RoleUpserted(fast),
            Change::RoleUpserted(slow),
            Change::KeyUpserted(key.clone()),
        ]);
        assert_eq!(
            index.entitlements(&key).role_rate_limit,
            Some("60/m".parse().unwrap())
        );
    }

    #[test]
    fn expired_keys_are_swept() {
        let index = Index::default();
        let now = Timestamp::from_millis(10_000);
        let mut ids = Vec::new();
        for expires_at in [None, Some(9_999), Some(10_000), Some(10_001)] {
            let minted = MintedKey::generate(&Prefix::default()).unwrap();
            let mut record = record(&minted, &[]);
            record.settings.expires_at = expires_at.map(Timestamp::from_millis);
            index.apply([Change::KeyUpserted(Arc::new(IndexedKey::new(
                &record,
                KeyDigest::dummy(),
            )))]);
            ids.push(minted.id);
        }
        assert_eq!(index.remove_expired(now), 2);
        let left: Vec<bool> = ids.iter().map(|id| index.get(*id).is_some()).collect();
        assert_eq!(left, [true, false, false, true]);
    }
}
