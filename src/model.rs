//! Domain types of the key lifecycle: what a key is, what may be asked of
//! the store, and what the audit log records. None of them holds a plaintext
//! key: the read model of a key has no field for one.
//!
//! The rules of a change live here too, as methods that need no database
//! ([`KeyRecord::retire_for_rotation`], [`Role::apply`]): the store locks
//! the rows, calls the rule and persists what it decided. [`query`] holds
//! what the admin API asks of the key list and the audit log.

pub mod query;

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    sync::Arc,
    time::Duration,
};

use crate::{
    cidr::Cidr,
    clock::Timestamp,
    key::{KeyDigest, KeyId, Prefix},
    permission::{Permission, RoleName},
    rate_limit::RateLimit,
    usage::KeyUsage,
};

/// Most labels one key may carry.
pub const MAX_LABELS: usize = 64;
/// Longest label key or value, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;
/// Longest owner, in bytes.
pub const MAX_OWNER_BYTES: usize = 256;
/// Longest description or reason, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// The longest a key may live, and the longest rotation grace: 100 years
/// is "never" for any real deployment, and a bound keeps every expiry a
/// date that tools (ours and the operator's) can print and compare.
pub const MAX_LIFETIME: std::time::Duration = std::time::Duration::from_hours(100 * 365 * 24);

/// Why a set of labels was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLabels {
    /// Over [`MAX_LABELS`] on one key; reported before any label is checked.
    #[error("at most {MAX_LABELS} labels are allowed")]
    TooMany,
    /// Empty, too long, or outside the charset; having no `=` lets
    /// `--label KEY=VALUE` split at the first one.
    #[error("label key must be 1 to {MAX_LABEL_BYTES} bytes of [A-Za-z0-9_.:/-]")]
    BadKey,
    /// Too long, or hiding characters (see [`crate::text`]); a value may be
    /// empty or contain `=`.
    #[error(
        "label value must be at most {MAX_LABEL_BYTES} bytes without control, invisible or bidirectional formatting characters"
    )]
    BadValue,
}

/// Free-form `key=value` metadata used to find and bulk-manage keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// Checks every label.
    ///
    /// # Errors
    /// [`InvalidLabels`] for the first problem found.
    pub fn new(labels: BTreeMap<String, String>) -> Result<Self, InvalidLabels> {
        if labels.len() > MAX_LABELS {
            return Err(InvalidLabels::TooMany);
        }
        for (key, value) in &labels {
            let key_ok = !key.is_empty()
                && key.len() <= MAX_LABEL_BYTES
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b));
            if !key_ok {
                return Err(InvalidLabels::BadKey);
            }
            if crate::text::check(value, MAX_LABEL_BYTES).is_err() {
                return Err(InvalidLabels::BadValue);
            }
        }
        Ok(Self(labels))
    }

    /// The labels, sorted by key.
    #[must_use]
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// The value of label `key`, if set.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// These labels with `key` set to `value`, checked like any.
    ///
    /// # Errors
    /// [`InvalidLabels`] when the result would not be valid labels.
    pub fn with(&self, key: &str, value: &str) -> Result<Self, InvalidLabels> {
        let mut labels = self.0.clone();
        labels.insert(key.to_owned(), value.to_owned());
        Self::new(labels)
    }
}

/// The lifecycle state of a key at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Neither revoked nor expired, with uses left if capped: the only state
    /// that validates or may be rotated.
    Active,
    /// `expires_at` is at or before the time asked about; how a rotated
    /// key's grace period ends.
    Expired,
    /// Revoked, even if later than the time asked about: a revocation is
    /// never undone.
    Revoked,
    /// A capped key with no use left.
    Exhausted,
}

/// What an operator sets on a key; rotation copies all of it. The default
/// is a `kw` key with no role, permission, limit or expiry.
#[derive(Debug, Clone, Default)]
pub struct KeySettings {
    /// Part of the key text and bound into its digest, so it never changes;
    /// a successor gets the same one.
    pub prefix: Prefix,
    /// By name: resolved on every validation, so a change to a role reaches
    /// the key at once.
    pub roles: Vec<RoleName>,
    /// Granted directly, besides the roles' permissions.
    pub permissions: Vec<Permission>,
    /// Empty: any client address.
    pub allowed_cidrs: Vec<Cidr>,
    /// What `ListKeys` and bulk revocation select keys by; Validate reports them.
    pub labels: Labels,
    /// Free text up to [`MAX_OWNER_BYTES`], empty if not given; a `ListKeys`
    /// filter, reported by Validate.
    pub owner: String,
    /// Free text for operators, up to [`MAX_TEXT_BYTES`]; empty if not given.
    pub description: String,
    /// `None`: never expires (refused at mint when a role has a `max_ttl`).
    /// A rotation with a grace period sets or shortens it.
    pub expires_at: Option<Timestamp>,
    /// The key's own limit; `None`: its roles' default, else the server's.
    pub rate_limit: Option<RateLimit>,
    /// Most validations the key may pass; `None`: no cap.
    pub max_uses: Option<u64>,
}

/// The read model of a key: everything but the secret.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// Also printed in the key itself; logs and audit records name keys by it.
    pub id: KeyId,
    /// As they are now: after mint only `rate_limit` is changed by an
    /// update, and `expires_at` by a rotation's grace period.
    pub settings: KeySettings,
    /// Mint time; `ListKeys` sorts and pages by it, newest first.
    pub created_at: Timestamp,
    /// The key that minted this one; `None` for the first admin key.
    pub created_by: Option<KeyId>,
    /// Set once and never cleared: revoking again keeps the first time.
    pub revoked_at: Option<Timestamp>,
    /// As the revoker gave it, `None` if they gave none; `"rotated"` when a
    /// rotation without grace revoked the key.
    pub revoke_reason: Option<String>,
    /// The key this one succeeded; `None` unless minted by a rotation.
    pub rotated_from: Option<KeyId>,
    /// The successor; once set, the key may not be rotated again.
    pub rotated_to: Option<KeyId>,
    /// Validations left, for a capped key.
    pub uses_remaining: Option<u64>,
    /// As last flushed from memory.
    pub last_used_at: Option<Timestamp>,
    /// Validations and RPC authentications that passed; written in batches,
    /// so up to `--usage-flush-interval` behind.
    pub use_count: u64,
}

impl KeyRecord {
    /// A key as created at `created_at`: not revoked, not rotated, unused.
    #[must_use]
    pub fn new(
        id: KeyId,
        settings: KeySettings,
        created_at: Timestamp,
        created_by: Option<KeyId>,
    ) -> Self {
        Self {
            id,
            uses_remaining: settings.max_uses,
            settings,
            created_at,
            created_by,
            revoked_at: None,
            revoke_reason: None,
            rotated_from: None,
            rotated_to: None,
            last_used_at: None,
            use_count: 0,
        }
    }

    /// The settings a rotation gives this key's successor: all of them, with
    /// a lifetime as long as this key's own (from creation to expiry).
    #[must_use]
    pub fn successor_settings(&self, now: Timestamp) -> KeySettings {
        let lifetime = self.settings.expires_at.map(|at| self.created_at.until(at));
        KeySettings {
            expires_at: lifetime.map(|lifetime| now.saturating_add(lifetime)),
            // A capped key hands on what is left of its cap, not a fresh one.
            max_uses: self.uses_remaining.or(self.settings.max_uses),
            ..self.settings.clone()
        }
    }

    /// The state at `now`. Revocation wins over expiry, expiry over exhaustion.
    #[must_use]
    pub fn state(&self, now: Timestamp) -> KeyState {
        if self.revoked_at.is_some() {
            KeyState::Revoked
        } else if self.settings.expires_at.is_some_and(|at| at <= now) {
            KeyState::Expired
        } else if self.uses_remaining == Some(0) {
            KeyState::Exhausted
        } else {
            KeyState::Active
        }
    }

    /// Why this key may not be rotated at `now`, if it may not. Only an
    /// active key has anything to hand on, and only once: a second rotation
    /// would give one key two successors.
    #[must_use]
    pub fn rotation_refusal(&self, now: Timestamp) -> Option<&'static str> {
        match self.state(now) {
            KeyState::Revoked => Some("it is revoked"),
            KeyState::Expired => Some("it has expired"),
            KeyState::Exhausted => Some("its uses are spent"),
            KeyState::Active if self.rotated_to.is_some() => Some("it was already rotated"),
            KeyState::Active => None,
        }
    }

    /// What a rotation at `now` does to the key it replaces: the key names
    /// `successor`, and works for `grace` more (never longer than it would
    /// have anyway), or is revoked at once when `grace` is zero. A capped
    /// key stops at once, grace or not: its remaining uses went to the
    /// successor (see [`KeyRecord::successor_settings`]), and a rotation
    /// never raises a cap.
    pub fn retire_for_rotation(&mut self, successor: KeyId, grace: Duration, now: Timestamp) {
        self.rotated_to = Some(successor);
        if self.uses_remaining.is_some() {
            self.uses_remaining = Some(0);
        }
        if grace.is_zero() {
            self.revoked_at = Some(now);
            self.revoke_reason = Some("rotated".to_owned());
        } else {
            let grace_end = now.saturating_add(grace);
            self.settings.expires_at = Some(match self.settings.expires_at {
                Some(earlier) if earlier < grace_end => earlier,
                _ => grace_end,
            });
        }
    }
}

/// A key as the validate path needs it: the digest to compare, its state,
/// and what it grants. Shared behind `Arc` so lookups copy nothing.
///
/// Small on purpose: a deployment holds a million of these. What many keys
/// have in common (roles, permissions, CIDRs, labels, owner, rate limit) is
/// one shared [`KeyProfile`], which the index interns, so each key costs
/// its id, digest, times and two pointers.
#[derive(Debug, Clone)]
pub struct IndexedKey {
    /// What the index is keyed by: the id parsed from a presented key.
    pub id: KeyId,
    /// Of prefix, id and secret; compared in constant time.
    pub digest: KeyDigest,
    /// Checked on every validation; [`crate::index::Index::remove_expired`]
    /// also drops the entry some time after.
    pub expires_at: Option<Timestamp>,
    /// `None` in practice, as revoking removes the entry from the index;
    /// checked on every validation all the same.
    pub revoked_at: Option<Timestamp>,
    /// Everything else a decision or a Validate response reads.
    pub profile: Arc<KeyProfile>,
    /// Counted on the hot path and flushed in batches. Every version of a
    /// key's entry shares it ([`crate::index::Index::apply`] carries it
    /// over), so an update loses no count.
    pub usage: Arc<KeyUsage>,
}

/// What a key grants and reports, apart from its identity and state: the
/// part keys minted alike share (see [`IndexedKey`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyProfile {
    /// Names only: [`crate::index::Index::entitlements`] resolves them on
    /// each validation, so a role change applies to the next one.
    pub roles: Box<[RoleName]>,
    /// Granted directly; the roles' are added at validation time.
    pub permissions: Box<[Permission]>,
    /// Empty: any client address; otherwise Validate needs a client address
    /// inside one of them.
    pub allowed_cidrs: Box<[Cidr]>,
    /// Only reported in the Validate response, and read for the
    /// administration scope ([`crate::scope`]).
    pub labels: Labels,
    /// Reported in the Validate response, and read for the administration
    /// scope.
    pub owner: Box<str>,
    /// The key's own; `None`: its roles' strictest, else the server default.
    pub rate_limit: Option<RateLimit>,
    /// A capped key's validations each cost a durable decrement.
    pub capped: bool,
    /// What the roles give keys with this profile, as computed by
    /// [`crate::index::Index::entitlements`] for the roles as they are now:
    /// shared by every validation until a role changes. Not part of the
    /// profile's identity (ignored by `==` and `Hash`).
    pub entitlements: EntitlementsCache,
}

/// A profile's entitlements, computed once per version of the roles
/// ([`crate::index::Index::entitlements`] fills and checks it): a validation
/// then clones one `Arc` instead of building, sorting and freeing a list of
/// permissions. Compares equal to any other, hashes to nothing, and starts
/// empty when cloned, so interning and copies of a profile ignore it.
///
/// A reader-writer lock: every validation of every key minted alike reads
/// the same cache, from every core, and is written once per role change;
/// with a mutex, concurrent validations queued behind each other here.
#[derive(Default)]
pub struct EntitlementsCache(std::sync::RwLock<Option<CachedEntitlements>>);

/// Entitlements computed for one version of the roles. Cloned out of the
/// cache by each validation: one reference count.
#[derive(Debug, Clone)]
pub struct CachedEntitlements {
    /// The index's role generation they were computed for.
    pub generation: u64,
    /// The key's own permissions plus its roles', sorted, without duplicates.
    pub permissions: Arc<[Permission]>,
    /// The strictest default rate limit among its roles.
    pub role_rate_limit: Option<RateLimit>,
}

impl EntitlementsCache {
    /// The entitlements stored for `generation`, if those are the ones held.
    pub fn get(&self, generation: u64) -> Option<CachedEntitlements> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .filter(|cached| cached.generation == generation)
            .cloned()
    }

    /// Keeps `cached` for later validations.
    pub fn set(&self, cached: CachedEntitlements) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cached);
    }
}

impl Clone for EntitlementsCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for EntitlementsCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for EntitlementsCache {}

impl std::hash::Hash for EntitlementsCache {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl fmt::Debug for EntitlementsCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EntitlementsCache")
    }
}

impl KeyProfile {
    /// The profile of a key with these settings. Lists are sorted, so that
    /// keys granted the same in any order share one profile.
    #[must_use]
    pub fn of(settings: &KeySettings) -> Self {
        Self {
            roles: sorted(&settings.roles),
            permissions: sorted(&settings.permissions),
            allowed_cidrs: sorted(&settings.allowed_cidrs),
            labels: settings.labels.clone(),
            owner: settings.owner.as_str().into(),
            rate_limit: settings.rate_limit,
            capped: settings.max_uses.is_some(),
            entitlements: EntitlementsCache::default(),
        }
    }
}

/// `items`, sorted, in a box of their exact size.
fn sorted<T: Ord + Clone>(items: &[T]) -> Box<[T]> {
    let mut items = items.to_vec();
    items.sort_unstable();
    items.into_boxed_slice()
}

/// One shared copy of each distinct [`KeyProfile`]: keys minted alike (the
/// same roles, labels, owner…) point to one profile instead of a copy each.
#[derive(Debug, Default)]
pub struct Profiles(HashSet<Arc<KeyProfile>>);

impl Profiles {
    /// The shared copy of `profile`, kept from now on if it is new.
    pub fn intern(&mut self, profile: KeyProfile) -> Arc<KeyProfile> {
        if let Some(shared) = self.0.get(&profile) {
            return shared.clone();
        }
        let shared = Arc::new(profile);
        self.0.insert(shared.clone());
        shared
    }

    /// As [`Profiles::intern`], for a profile already behind an `Arc`,
    /// which is kept as the shared copy if it is new.
    pub fn intern_shared(&mut self, profile: &Arc<KeyProfile>) -> Arc<KeyProfile> {
        if let Some(shared) = self.0.get(profile.as_ref()) {
            return shared.clone();
        }
        self.0.insert(profile.clone());
        profile.clone()
    }

    /// How many profiles no key holds any more.
    #[must_use]
    pub fn unused(&self) -> usize {
        self.0
            .iter()
            .filter(|profile| Arc::strong_count(profile) == 1)
            .count()
    }

    /// Drops the profiles no key holds any more.
    pub fn forget_unused(&mut self) {
        self.0.retain(|profile| Arc::strong_count(profile) > 1);
    }

    /// How many distinct profiles are kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IndexedKey {
    /// The index entry for a stored key.
    #[must_use]
    pub fn new(record: &KeyRecord, digest: KeyDigest) -> Self {
        Self {
            id: record.id,
            digest,
            expires_at: record.settings.expires_at,
            revoked_at: record.revoked_at,
            profile: Arc::new(KeyProfile::of(&record.settings)),
            usage: Arc::default(),
        }
    }
}

/// A role: a named set of permissions.
#[derive(Debug, Clone)]
pub struct Role {
    /// Never changes (no update renames a role); keys hold roles by it.
    pub name: RoleName,
    /// Free text for operators, up to [`MAX_TEXT_BYTES`].
    pub description: String,
    /// Granted to every key holding the role. An `Arc` because roles are
    /// cloned out of the index on reads; [`Role::apply`] replaces it whole.
    pub permissions: Arc<[Permission]>,
    /// Longest lifetime a key holding this role may be minted with.
    pub max_ttl: Option<Duration>,
    /// Rate limit of keys holding this role that have none of their own.
    pub rate_limit: Option<RateLimit>,
    /// Built-in roles (`admin`, `validator`) cannot be changed or deleted.
    pub builtin: bool,
    /// For a built-in role, when the database was initialised.
    pub created_at: Timestamp,
    /// Set by [`Role::apply`]; equal to `created_at` until the first update.
    pub updated_at: Timestamp,
}

impl Role {
    /// Applies `update` at `now`. Permissions are taken away, then added, and
    /// kept sorted without duplicates, so the stored set does not depend on
    /// the order a request lists them in; one both removed and added stays.
    pub fn apply(&mut self, update: &RoleUpdate, now: Timestamp) {
        let mut permissions: Vec<Permission> = self
            .permissions
            .iter()
            .filter(|p| !update.remove_permissions.contains(p))
            .chain(update.add_permissions.iter())
            .cloned()
            .collect();
        permissions.sort();
        permissions.dedup();
        self.permissions = permissions.into();
        if let Some(description) = &update.description {
            self.description.clone_from(description);
        }
        if let Some(max_ttl) = update.max_ttl {
            self.max_ttl = max_ttl;
        }
        if let Some(rate_limit) = update.rate_limit {
            self.rate_limit = rate_limit;
        }
        self.updated_at = now;
    }

    /// What changed from `before` to this role, for the audit record of an
    /// update: the permissions as they are now, and each other setting that
    /// changed, old and new (a description only as "changed": it is free
    /// text, kept in the role itself).
    #[must_use]
    pub fn describe_change(&self, before: &Self) -> String {
        use std::fmt::Write as _;
        let names: Vec<&str> = self.permissions.iter().map(Permission::as_str).collect();
        let mut detail = format!("permissions: {}", names.join(", "));
        let show =
            |limit: Option<RateLimit>| limit.map_or_else(|| "none".to_owned(), |l| l.to_string());
        let show_ttl = |ttl: Option<Duration>| {
            ttl.map_or_else(
                || "none".to_owned(),
                |ttl| humantime::format_duration(ttl).to_string(),
            )
        };
        if self.max_ttl != before.max_ttl {
            let _ = write!(
                detail,
                "; max_ttl: {} -> {}",
                show_ttl(before.max_ttl),
                show_ttl(self.max_ttl)
            );
        }
        if self.rate_limit != before.rate_limit {
            let _ = write!(
                detail,
                "; rate limit: {} -> {}",
                show(before.rate_limit),
                show(self.rate_limit)
            );
        }
        if self.description != before.description {
            detail.push_str("; description changed");
        }
        detail
    }
}

/// A change to a role's settings, as an operator asks for it; `None` fields
/// stay as they are. [`Role::apply`] says what it does.
#[derive(Debug, Clone, Default)]
pub struct RoleUpdate {
    /// Added after `remove_permissions` are taken away, so one in both stays.
    pub add_permissions: Vec<Permission>,
    /// One the role does not hold is ignored, not refused.
    pub remove_permissions: Vec<Permission>,
    /// `Some` replaces the description; `Some("")` clears it.
    pub description: Option<String>,
    /// `Some(None)` removes the cap.
    pub max_ttl: Option<Option<Duration>>,
    /// `Some(None)` removes the default rate limit.
    pub rate_limit: Option<Option<RateLimit>>,
}

/// A change to the state the validate path reads. Every write produces these,
/// and [`crate::index::Index::apply`] is the one way the index changes, so a
/// change feed from other replicas can later deliver the same events.
#[derive(Debug, Clone)]
pub enum Change {
    /// A key was created or changed (minted, rotated into a grace period).
    KeyUpserted(Arc<IndexedKey>),
    /// A key can no longer validate (revoked).
    KeyRemoved(KeyId),
    /// A role was created or its permissions changed.
    RoleUpserted(Role),
    /// A role was deleted (no key held it).
    RoleRemoved(RoleName),
}

/// What an audit record says was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// The database was initialised and the first admin key minted.
    Initialize,
    /// Also written for a rotation's successor, with reason `rotation of <id>`.
    Mint,
    /// Recorded against the old key; the reason names the successor and the
    /// grace period.
    Rotate,
    /// A key changed in place; only its own rate limit can be, and the
    /// reason says to what.
    Update,
    /// One per key, bulk revocations included. Not written again for a key
    /// already revoked, nor when a rotation revokes: `Rotate` covers that.
    Revoke,
    /// The reason lists the role's permissions. The built-in roles get none:
    /// `Initialize` covers them.
    RoleCreate,
    /// The reason lists the role's permissions after the change.
    RoleUpdate,
    /// Only a role no key holds, revoked keys included, can be deleted.
    RoleDelete,
    /// A key minted for an OIDC identity token (no caller key: the actor is
    /// empty); the reason names the trust policy, the issuer, the token's
    /// subject and `jti`, never the token.
    Exchange,
    /// The reason lists the trust policy's settings.
    TrustCreate,
    /// The reason lists the trust policy's settings after the change.
    TrustUpdate,
    /// Keys the policy minted are left as they are.
    TrustDelete,
}

impl AuditAction {
    /// The stored name; never change an existing one.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initialize => "initialize",
            Self::Mint => "key.mint",
            Self::Rotate => "key.rotate",
            Self::Update => "key.update",
            Self::Revoke => "key.revoke",
            Self::RoleCreate => "role.create",
            Self::RoleUpdate => "role.update",
            Self::RoleDelete => "role.delete",
            Self::Exchange => "key.exchange",
            Self::TrustCreate => "trust.create",
            Self::TrustUpdate => "trust.update",
            Self::TrustDelete => "trust.delete",
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit log entry, as read back.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// Position in the log; increases with every record.
    pub seq: i64,
    /// The `now` of the write the record was committed with.
    pub at: Timestamp,
    /// `None` for the local operator.
    pub actor: Option<KeyId>,
    /// The stored name ([`AuditAction::as_str`]), kept as text so a name
    /// this version does not know still reads.
    pub action: String,
    /// The key id or role name changed.
    pub target: Option<String>,
    /// A revoker's own reason, or a summary of the change written by the
    /// store (see [`AuditAction`]); `None` when neither applies.
    pub reason: Option<String>,
}

/// Who made a change: the key id of an authenticated caller, or the local
/// operator (`keywardctl init`, or the server's own first start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// An authenticated caller, by the id of the key it presented.
    Key(KeyId),
    /// Stored as a `NULL` actor, so audit records cannot tell `init` from a
    /// first start.
    Local,
}

impl Actor {
    /// The key id, when the actor is a key.
    #[must_use]
    pub fn key_id(self) -> Option<KeyId> {
        match self {
            Self::Key(id) => Some(id),
            Self::Local => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Result<Labels, InvalidLabels> {
        Labels::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn labels_are_checked() {
        assert!(labels(&[("env", "prod"), ("team/app", ""), ("a.b-c_d:e", "x y")]).is_ok());
        assert_eq!(labels(&[("", "x")]), Err(InvalidLabels::BadKey));
        assert_eq!(labels(&[("a=b", "x")]), Err(InvalidLabels::BadKey));
        assert_eq!(labels(&[("env", "a\nb")]), Err(InvalidLabels::BadValue));
        let long = "v".repeat(MAX_LABEL_BYTES + 1);
        assert_eq!(labels(&[("env", &long)]), Err(InvalidLabels::BadValue));
        assert_eq!(labels(&[(&long, "x")]), Err(InvalidLabels::BadKey));
        let many: BTreeMap<_, _> = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert_eq!(Labels::new(many), Err(InvalidLabels::TooMany));
    }

    proptest::proptest! {
        /// Any labels: an answer, never a panic, and what is accepted keeps
        /// every rule (count, key charset, value text).
        #[test]
        fn labels_answer_any_map(
            map in proptest::collection::btree_map(
                proptest::prop_oneof![proptest::arbitrary::any::<String>(), "[a-zA-Z0-9_.:/=-]{0,10}"],
                proptest::prop_oneof![proptest::arbitrary::any::<String>(), "[a-z \\x00-\\x1f\u{202e}]{0,10}"],
                0..70,
            )
        ) {
            if let Ok(labels) = Labels::new(map.clone()) {
                proptest::prop_assert!(labels.as_map().len() <= MAX_LABELS);
                proptest::prop_assert_eq!(labels.as_map(), &map);
                for (key, value) in &map {
                    proptest::prop_assert!(!key.is_empty() && !key.contains('='));
                    proptest::prop_assert!(crate::text::check(value, MAX_LABEL_BYTES).is_ok());
                }
            }
        }
    }

    #[test]
    fn revocation_wins_over_expiry() {
        let now = Timestamp::from_millis(1_000);
        let mut record = KeyRecord::new(
            KeyId::from_u64(1),
            KeySettings::default(),
            Timestamp::from_millis(0),
            None,
        );
        assert_eq!(record.state(now), KeyState::Active);
        record.settings.expires_at = Some(now);
        assert_eq!(record.state(now), KeyState::Expired);
        record.revoked_at = Some(Timestamp::from_millis(10));
        assert_eq!(record.state(now), KeyState::Revoked);
    }

    fn key(settings: KeySettings) -> KeyRecord {
        KeyRecord::new(
            KeyId::from_u64(1),
            settings,
            Timestamp::from_millis(0),
            None,
        )
    }

    #[test]
    fn only_an_active_key_never_rotated_may_be_rotated() {
        let now = Timestamp::from_millis(1_000);
        let active = key(KeySettings::default());
        let mut revoked = active.clone();
        revoked.revoked_at = Some(Timestamp::from_millis(10));
        let mut expired = active.clone();
        expired.settings.expires_at = Some(now);
        let mut spent = active.clone();
        spent.uses_remaining = Some(0);
        let mut rotated = active.clone();
        rotated.rotated_to = Some(KeyId::from_u64(2));
        for (record, expected) in [
            (&active, None),
            (&revoked, Some("it is revoked")),
            (&expired, Some("it has expired")),
            (&spent, Some("its uses are spent")),
            (&rotated, Some("it was already rotated")),
        ] {
            assert_eq!(record.rotation_refusal(now), expected, "{record:?}");
        }
    }

    #[test]
    fn a_rotated_key_works_for_the_grace_period_at_most() {
        let now = Timestamp::from_millis(1_000);
        let successor = KeyId::from_u64(2);
        let grace = Duration::from_millis(500);
        // (expiry before, grace, expiry after, revoked)
        let cases = [
            (None, grace, Some(1_500), false),
            (Some(10_000), grace, Some(1_500), false),
            // Already expiring within the grace period: no later than that.
            (Some(1_200), grace, Some(1_200), false),
            (Some(10_000), Duration::ZERO, Some(10_000), true),
            (None, Duration::ZERO, None, true),
        ];
        for (before, grace, after, revoked) in cases {
            let mut record = key(KeySettings {
                expires_at: before.map(Timestamp::from_millis),
                ..KeySettings::default()
            });
            record.retire_for_rotation(successor, grace, now);
            assert_eq!(record.rotated_to, Some(successor));
            assert_eq!(
                record.settings.expires_at,
                after.map(Timestamp::from_millis),
                "{before:?} {grace:?}"
            );
            assert_eq!(record.revoked_at.is_some(), revoked, "{before:?} {grace:?}");
            if revoked {
                assert_eq!(record.revoked_at, Some(now));
                assert_eq!(record.revoke_reason.as_deref(), Some("rotated"));
            }
            assert_eq!(
                record.uses_remaining, None,
                "an uncapped key stays uncapped"
            );
        }
    }

    #[test]
    fn a_rotated_capped_key_stops_at_once_and_hands_on_its_uses() {
        let now = Timestamp::from_millis(1_000);
        let mut record = key(KeySettings {
            max_uses: Some(10),
            ..KeySettings::default()
        });
        record.uses_remaining = Some(4);
        assert_eq!(record.successor_settings(now).max_uses, Some(4));
        record.retire_for_rotation(KeyId::from_u64(2), Duration::from_mins(1), now);
        assert_eq!(record.uses_remaining, Some(0));
        assert_eq!(record.state(now), KeyState::Exhausted);
        assert_eq!(record.revoked_at, None);
    }

    fn permissions(names: &[&str]) -> Vec<Permission> {
        names.iter().map(|name| name.parse().unwrap()).collect()
    }

    fn role(names: &[&str]) -> Role {
        Role {
            name: "deployer".parse().unwrap(),
            description: "deploys".to_owned(),
            permissions: permissions(names).into(),
            max_ttl: Some(Duration::from_hours(1)),
            rate_limit: None,
            builtin: false,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
        }
    }

    #[test]
    fn a_role_update_removes_then_adds_permissions_sorted_once() {
        type Names = &'static [&'static str];
        let now = Timestamp::from_millis(1_000);
        // (held, remove, add, held after)
        let cases: [(Names, Names, Names, Names); 5] = [
            (&["b:read", "a:read"], &[], &[], &["a:read", "b:read"]),
            (
                &["a:read"],
                &[],
                &["c:write", "b:read", "c:write"],
                &["a:read", "b:read", "c:write"],
            ),
            (
                &["a:read", "b:read"],
                &["a:read", "x:none"],
                &[],
                &["b:read"],
            ),
            // Removed and added in one update: it stays.
            (&["a:read"], &["a:read"], &["a:read"], &["a:read"]),
            (&["a:read"], &["a:read"], &[], &[]),
        ];
        for (held, remove, add, after) in cases {
            let mut role = role(held);
            role.apply(
                &RoleUpdate {
                    add_permissions: permissions(add),
                    remove_permissions: permissions(remove),
                    ..RoleUpdate::default()
                },
                now,
            );
            assert_eq!(
                &role.permissions[..],
                &permissions(after)[..],
                "{held:?} - {remove:?} + {add:?}"
            );
            assert_eq!(role.updated_at, now);
        }
    }

    #[test]
    fn a_role_update_changes_only_the_settings_it_names() {
        let now = Timestamp::from_millis(1_000);
        let limit = RateLimit::new(10, Duration::from_secs(1), 10).unwrap();
        let mut role = role(&["a:read"]);
        role.apply(&RoleUpdate::default(), now);
        assert_eq!(role.description, "deploys");
        assert_eq!(role.max_ttl, Some(Duration::from_hours(1)));
        assert_eq!(role.rate_limit, None);
        assert_eq!(&role.permissions[..], &permissions(&["a:read"])[..]);

        role.apply(
            &RoleUpdate {
                description: Some(String::new()),
                max_ttl: Some(None),
                rate_limit: Some(Some(limit)),
                ..RoleUpdate::default()
            },
            now,
        );
        assert_eq!(role.description, "");
        assert_eq!(role.max_ttl, None);
        assert_eq!(role.rate_limit, Some(limit));

        role.apply(
            &RoleUpdate {
                rate_limit: Some(None),
                ..RoleUpdate::default()
            },
            now,
        );
        assert_eq!(role.rate_limit, None);
        assert!(!role.builtin, "never changed by an update");
    }
}
