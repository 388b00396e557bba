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
    key::{KeyDigest, KeyId, KeyMap},
    model::{CachedEntitlements, Change, IndexedKey, Profiles, Role},
    permission::{Permission, RoleName},
    rate_limit::RateLimit,
    store::Snapshot,
    store::feed::Changed,
    usage::UsageDelta,
};

#[derive(Debug)]
struct State {
    keys: KeyMap<Arc<IndexedKey>>,
    roles: HashMap<RoleName, Role>,
    /// One copy of each profile the keys hold.
    profiles: Profiles,
    /// Usage counted for keys since removed, waiting for the next flush.
    retired_usage: Vec<UsageDelta>,
    /// Changes whenever `roles` does: profiles' cached entitlements are for
    /// one generation ([`Index::entitlements`]). Taken from a process-wide
    /// counter, so two indexes (tests, a resync's) never share a value.
    role_generation: u64,
}

impl Default for State {
    fn default() -> Self {
        Self {
            keys: KeyMap::default(),
            roles: HashMap::default(),
            profiles: Profiles::default(),
            retired_usage: Vec::new(),
            role_generation: next_role_generation(),
        }
    }
}

/// The next role generation of any index in the process.
fn next_role_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What a key's roles give it, read in one go.
#[derive(Debug, Clone)]
pub struct Entitlements {
    /// The key's own permissions plus its roles', sorted, without duplicates;
    /// shared with every validation of keys of the same profile until a role
    /// changes.
    pub permissions: Arc<[Permission]>,
    /// The strictest default rate limit among its roles.
    pub role_rate_limit: Option<RateLimit>,
}

/// Why [`Index::prove`] found no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unproven {
    /// No key has the id.
    UnknownKey,
    /// The key with the id has another digest.
    WrongSecret,
}

/// Keys by id and roles by name, behind one reader-writer lock: validations
/// share it, and the rare writes (mint, revoke, role edits) hold it briefly.
#[derive(Debug, Default)]
pub struct Index {
    state: RwLock<State>,
}

/// A resync's new contents, made ready by [`Index::prepare`] while
/// validations and writes go on, then put in place by [`Index::install`].
#[derive(Debug)]
pub struct Prepared {
    keys: KeyMap<Arc<IndexedKey>>,
    roles: HashMap<RoleName, Role>,
    profiles: Profiles,
}

/// The keys a resync replaced, until [`Index::retire`] has taken their
/// usage and freed them.
#[derive(Debug)]
#[must_use = "usage of the keys replaced is lost unless they are retired"]
pub struct Replaced(KeyMap<Arc<IndexedKey>>);

/// Keys looked at per read lock in [`Index::prepare`] and
/// [`Index::install`]: few enough that a writer waiting for the lock waits
/// microseconds.
const CARRY_OVER_CHUNK: usize = 4096;

impl Index {
    /// An index holding what the store holds now.
    #[must_use]
    pub fn from_snapshot(snapshot: Snapshot) -> Self {
        let Prepared {
            keys,
            roles,
            profiles,
        } = Self::contents(snapshot);
        Self {
            state: RwLock::new(State {
                keys,
                roles,
                profiles,
                retired_usage: Vec::new(),
                role_generation: next_role_generation(),
            }),
        }
    }

    fn contents(snapshot: Snapshot) -> Prepared {
        let roles = snapshot
            .roles
            .into_iter()
            .map(|role| (role.name.clone(), role))
            .collect();
        Prepared {
            keys: snapshot.keys,
            roles,
            profiles: snapshot.profiles,
        }
    }

    /// Builds what a resync to `snapshot` installs, without holding the
    /// index: keys that stay keep their usage counters (the same shared
    /// counter, so validations until the install still count). Validations
    /// and writes go on meanwhile; writes made now reach the new contents
    /// through the changes given to [`Index::install`].
    pub fn prepare(&self, snapshot: Snapshot) -> Prepared {
        let mut prepared = Self::contents(snapshot);
        let mut entries: Vec<&mut Arc<IndexedKey>> = prepared.keys.values_mut().collect();
        for chunk in entries.chunks_mut(CARRY_OVER_CHUNK) {
            let state = self.read();
            for entry in chunk {
                if let Some(current) = state.keys.get(&entry.id) {
                    Arc::make_mut(entry).usage = current.usage.clone();
                }
            }
        }
        prepared
    }

    /// Makes the index hold `prepared`, then what was written since the
    /// snapshot was taken, in one step: a validation sees the old contents
    /// or the new, never a mix. `kept` names keys and roles this index
    /// already holds as they are now (changes applied to it during the
    /// load): their current entries are carried over as they are, with no
    /// database read. `changes` are applied last. Returns how many keys the
    /// index holds, and the contents replaced, for [`Index::retire`].
    pub fn install(
        &self,
        prepared: Prepared,
        kept: &Changed,
        changes: impl IntoIterator<Item = Change>,
    ) -> (usize, Replaced) {
        let (previous, len) = {
            let mut state = self.write();
            let mut keys = prepared.keys;
            let mut roles = prepared.roles;
            for id in &kept.keys {
                match state.keys.get(id) {
                    Some(current) => keys.insert(*id, current.clone()),
                    None => keys.remove(id),
                };
            }
            for name in &kept.roles {
                match state.roles.get(name) {
                    Some(current) => roles.insert(name.clone(), current.clone()),
                    None => roles.remove(name),
                };
            }
            let previous = std::mem::replace(&mut state.keys, keys);
            state.roles = roles;
            state.role_generation = next_role_generation();
            let mut profiles = prepared.profiles;
            // Carried-over entries keep their own profiles; keys alike
            // applied later share them.
            for id in &kept.keys {
                if let Some(key) = state.keys.get(id) {
                    profiles.intern_shared(&key.profile);
                }
            }
            state.profiles = profiles;
            Self::apply_to(&mut state, changes);
            (previous, state.keys.len())
        };
        (len, Replaced(previous))
    }

    /// Finishes a resync once `replaced` is no longer needed: usage counted
    /// for keys that left waits for the next flush, and the old entries are
    /// freed. Takes time in proportion to the index, so it runs after the
    /// write turn, and takes the read lock a chunk at a time, so that a
    /// writer waiting for it (and the readers queued behind that writer)
    /// waits briefly.
    pub fn retire(&self, replaced: Replaced) {
        let previous = replaced.0;
        let entries: Vec<(&KeyId, &Arc<IndexedKey>)> = previous.iter().collect();
        let mut gone: Vec<UsageDelta> = Vec::new();
        for chunk in entries.chunks(CARRY_OVER_CHUNK) {
            let state = self.read();
            gone.extend(
                chunk
                    .iter()
                    .filter(|(id, key)| {
                        !state
                            .keys
                            .get(id)
                            .is_some_and(|now| Arc::ptr_eq(&now.usage, &key.usage))
                    })
                    .filter_map(|(id, key)| key.usage.take(**id)),
            );
        }
        drop(entries);
        if !gone.is_empty() {
            self.write().retired_usage.extend(gone);
        }
    }

    /// Applies committed changes. This is the only way the index changes
    /// besides a resync's [`Index::install`].
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) {
        Self::apply_to(&mut self.write(), changes);
    }

    fn apply_to(state: &mut State, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            match change {
                Change::KeyUpserted(key) => {
                    // Every version of a key shares one usage counter, so a
                    // validation still holding the previous version counts;
                    // and keys alike share one profile.
                    let usage = match state.keys.get(&key.id) {
                        Some(previous) => previous.usage.clone(),
                        None => key.usage.clone(),
                    };
                    let profile = state.profiles.intern_shared(&key.profile);
                    let key =
                        if Arc::ptr_eq(&usage, &key.usage) && Arc::ptr_eq(&profile, &key.profile) {
                            key
                        } else {
                            Arc::new(IndexedKey {
                                profile,
                                usage,
                                ..(*key).clone()
                            })
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
                    state.role_generation = next_role_generation();
                }
                Change::RoleRemoved(name) => {
                    state.roles.remove(&name);
                    state.role_generation = next_role_generation();
                }
            }
        }
    }

    /// The live key with this id, if any.
    pub fn get(&self, id: KeyId) -> Option<Arc<IndexedKey>> {
        self.read().keys.get(&id).cloned()
    }

    /// Stages 2 and 3 of validation under one read lock: the entry for `id`
    /// when its digest is `presented`, with its entitlements. The digests
    /// are compared in constant time, against a dummy one when the id is
    /// unknown, so an unknown id and a wrong secret cost the same.
    ///
    /// # Errors
    /// [`Unproven`]: which of the two it was, for the log.
    pub fn prove(
        &self,
        id: KeyId,
        presented: &KeyDigest,
    ) -> Result<(Arc<IndexedKey>, Entitlements), Unproven> {
        let state = self.read();
        let entry = state.keys.get(&id);
        let expected = entry.map_or(KeyDigest::dummy(), |key| key.digest);
        let matches = presented.ct_eq(&expected);
        match entry {
            Some(key) if matches => Ok((key.clone(), Self::entitlements_in(&state, key))),
            Some(_) => Err(Unproven::WrongSecret),
            None => Err(Unproven::UnknownKey),
        }
    }

    /// [`Index::entitlements`] of `key` if it is still the index's entry for
    /// its id: not removed (revoked, expired, used up) nor replaced (rotated,
    /// updated, resynced) since it was read. Both under one read lock, as a
    /// remembered caller needs both.
    #[must_use]
    pub fn entitlements_if_held(&self, key: &Arc<IndexedKey>) -> Option<Entitlements> {
        let state = self.read();
        Self::held(&state, key).then(|| Self::entitlements_in(&state, key))
    }

    fn held(state: &State, key: &Arc<IndexedKey>) -> bool {
        state
            .keys
            .get(&key.id)
            .is_some_and(|held| Arc::ptr_eq(held, key))
    }

    /// The key's effective permissions (its own plus the union of its
    /// roles') and its roles' rate limit, as the roles are now, so a role
    /// change applies to the very next validation. Computed once per profile
    /// and version of the roles, and shared: every validation needs them,
    /// and keys minted alike share a profile.
    pub fn entitlements(&self, key: &IndexedKey) -> Entitlements {
        Self::entitlements_in(&self.read(), key)
    }

    fn entitlements_in(state: &State, key: &IndexedKey) -> Entitlements {
        // Under the read lock, roles cannot change: what is cached for this
        // generation is what would be computed now.
        let generation = state.role_generation;
        let cache = &key.profile.entitlements;
        let cached = cache.get(generation).unwrap_or_else(|| {
            let computed = Self::compute_entitlements(state, key, generation);
            cache.set(computed.clone());
            computed
        });
        Entitlements {
            permissions: cached.permissions,
            role_rate_limit: cached.role_rate_limit,
        }
    }

    fn compute_entitlements(
        state: &State,
        key: &IndexedKey,
        generation: u64,
    ) -> CachedEntitlements {
        let roles = || {
            key.profile
                .roles
                .iter()
                .filter_map(|name| state.roles.get(name))
        };
        let mut permissions: Vec<Permission> = roles()
            .flat_map(|role| role.permissions.iter())
            .chain(key.profile.permissions.iter())
            .cloned()
            .collect();
        permissions.sort_unstable();
        permissions.dedup();
        let role_rate_limit = roles()
            .filter_map(|role| role.rate_limit)
            .min_by(|a, b| a.per_second().total_cmp(&b.per_second()));
        CachedEntitlements {
            generation,
            permissions: permissions.into(),
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
    /// anyway, this only returns their memory (and that of profiles no key
    /// holds any more). Returns how many keys went.
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
        let unused_profiles = self.read().profiles.unused();
        if ids.is_empty() && unused_profiles == 0 {
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
        // After the removals, so that the profiles only they held go too.
        state.profiles.forget_unused();
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
            *index.entitlements(&key).permissions,
            ["deploy:*".parse().unwrap()]
        );

        index.apply([Change::RoleUpserted(role(
            "ci",
            &["build:read", "build:read"],
        ))]);
        assert_eq!(
            *index.entitlements(&key).permissions,
            ["build:read".parse().unwrap()]
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
    fn a_resync_keeps_the_usage_of_keys_that_stay_and_applies_later_writes_on_top() {
        let [stays, leaves, written_meanwhile] =
            std::array::from_fn(|_| MintedKey::generate(&Prefix::default()).unwrap());
        let entry = |minted: &MintedKey| IndexedKey::new(&record(minted, &[]), minted.digest);
        let index = Index::default();
        index.apply([
            Change::KeyUpserted(Arc::new(entry(&stays))),
            Change::KeyUpserted(Arc::new(entry(&leaves))),
        ]);
        index
            .get(stays.id)
            .unwrap()
            .usage
            .record(Timestamp::from_millis(5));
        index
            .get(leaves.id)
            .unwrap()
            .usage
            .record(Timestamp::from_millis(6));

        let snapshot = Snapshot {
            keys: [entry(&stays), entry(&written_meanwhile)]
                .into_iter()
                .map(|key| (key.id, Arc::new(key)))
                .collect(),
            ..Snapshot::default()
        };
        let prepared = index.prepare(snapshot);
        // Validations between the load and the install still count.
        index
            .get(stays.id)
            .unwrap()
            .usage
            .record(Timestamp::from_millis(7));
        // Revoked after the snapshot was taken: named by the feed.
        let (held, replaced) = index.install(
            prepared,
            &Changed::default(),
            [Change::KeyRemoved(written_meanwhile.id)],
        );
        index.retire(replaced);

        assert_eq!(held, 1);
        assert!(index.get(stays.id).is_some());
        assert!(index.get(leaves.id).is_none(), "not in the snapshot");
        assert!(
            index.get(written_meanwhile.id).is_none(),
            "the later write wins"
        );
        let mut usage = index.take_usage();
        usage.sort_by_key(|delta| delta.last_used_at);
        let usage: Vec<(KeyId, u64)> = usage.iter().map(|delta| (delta.key, delta.uses)).collect();
        assert_eq!(usage, [(leaves.id, 1), (stays.id, 2)]);
    }

    #[test]
    fn keys_granted_alike_share_one_profile_until_none_holds_it() {
        let index = Index::default();
        let mut ids = Vec::new();
        for roles in [["a", "b"], ["b", "a"]] {
            let minted = MintedKey::generate(&Prefix::default()).unwrap();
            let mut record = record(&minted, &roles);
            record.settings.expires_at = Some(Timestamp::from_millis(1));
            index.apply([Change::KeyUpserted(Arc::new(IndexedKey::new(
                &record,
                minted.digest,
            )))]);
            ids.push(minted.id);
        }
        let (first, second) = (index.get(ids[0]).unwrap(), index.get(ids[1]).unwrap());
        assert!(Arc::ptr_eq(&first.profile, &second.profile));
        assert_eq!(index.read().profiles.len(), 1);
        drop((first, second));

        assert_eq!(index.remove_expired(Timestamp::from_millis(1)), 2);
        assert!(index.read().profiles.is_empty(), "forgotten once unused");
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
