//! The in-memory index: every key that can still validate, and every role.
//!
//! It is loaded from the store at start and changed only through
//! [`Index::apply`], with the [`Change`]s that store writes return, so
//! validating a known key performs no database I/O.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use crate::{
    clock::Timestamp,
    key::KeyId,
    model::{Change, IndexedKey, Role},
    permission::{Permission, RoleName},
    store::Snapshot,
};

#[derive(Debug, Default)]
struct State {
    keys: HashMap<KeyId, Arc<IndexedKey>>,
    roles: HashMap<RoleName, Role>,
}

/// Keys by id and roles by name, behind one reader-writer lock: validations
/// share it, and the rare writes (mint, revoke, role edits) hold it briefly.
#[derive(Debug, Default)]
pub struct Index {
    state: RwLock<State>,
}

impl Index {
    /// An index holding what the store holds now.
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
            state: RwLock::new(State { keys, roles }),
        }
    }

    /// Applies committed changes. This is the only way the index changes.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) {
        let mut state = self.write();
        for change in changes {
            match change {
                Change::KeyUpserted(key) => {
                    state.keys.insert(key.id, key);
                }
                Change::KeyRemoved(id) => {
                    state.keys.remove(&id);
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

    /// The key's effective permissions: its own plus the union of its roles',
    /// read at call time so a role change applies to the very next validation.
    pub fn permissions_of(&self, key: &IndexedKey) -> Vec<Permission> {
        let state = self.read();
        let mut permissions: Vec<Permission> = key
            .roles
            .iter()
            .filter_map(|name| state.roles.get(name))
            .flat_map(|role| role.permissions.iter())
            .chain(key.permissions.iter())
            .cloned()
            .collect();
        permissions.sort_unstable();
        permissions.dedup();
        permissions
    }

    /// The role with this name, if it exists.
    pub fn role(&self, name: &RoleName) -> Option<Role> {
        self.read().roles.get(name).cloned()
    }

    /// How many keys the index holds.
    pub fn len(&self) -> usize {
        self.read().keys.len()
    }

    /// Whether the index holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops keys that expired at or before `now`; they would be refused
    /// anyway, this only returns their memory. Returns how many went.
    pub fn remove_expired(&self, now: Timestamp) -> usize {
        let mut state = self.write();
        let before = state.keys.len();
        state
            .keys
            .retain(|_, key| key.expires_at.is_none_or(|at| at > now));
        before - state.keys.len()
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated
        // (each change is a single map operation), so poisoning is ignored.
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        clock::Timestamp,
        key::{KeyDigest, MintedKey, Prefix},
        model::{KeyRecord, KeySettings, Labels},
    };

    /// A key record with the given roles, for tests of any layer.
    pub(crate) fn record(minted: &MintedKey, roles: &[&str]) -> KeyRecord {
        KeyRecord {
            id: minted.id,
            settings: KeySettings {
                prefix: Prefix::default(),
                roles: roles.iter().map(|r| r.parse().unwrap()).collect(),
                permissions: vec![],
                allowed_cidrs: vec![],
                labels: Labels::default(),
                owner: String::new(),
                description: String::new(),
                expires_at: None,
            },
            created_at: Timestamp::from_millis(0),
            created_by: None,
            revoked_at: None,
            revoke_reason: None,
            rotated_from: None,
            rotated_to: None,
        }
    }

    pub(crate) fn role(name: &str, permissions: &[&str]) -> Role {
        Role {
            name: name.parse().unwrap(),
            description: String::new(),
            permissions: permissions.iter().map(|p| p.parse().unwrap()).collect(),
            max_ttl: None,
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
            index.permissions_of(&key),
            vec!["deploy:*".parse().unwrap()]
        );

        index.apply([Change::RoleUpserted(role(
            "ci",
            &["build:read", "build:read"],
        ))]);
        assert_eq!(
            index.permissions_of(&key),
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
