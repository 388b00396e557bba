//! The security core: deciding whether a presented key is valid and may do
//! what is asked. It reads top to bottom like the rules in the product brief:
//!
//! 1. **parse** the key and check its checksum; malformed input never reaches
//!    the index;
//! 2. **look up** the key id in the in-memory index (no database I/O);
//! 3. **verify** the digest of the presented secret in constant time, against
//!    a dummy digest when the id is unknown, so unknown ids and wrong secrets
//!    cost the same;
//! 4. **check state**: revoked or expired (time from the injected clock);
//! 5. **allow-list**: a key with CIDR ranges needs a client address inside
//!    one (before the rate limit, so a leaked key used from elsewhere cannot
//!    spend the owner's quota);
//! 6. **rate-limit** the proven key (GCRA, per key): after the proof, so
//!    invalid traffic cannot spend a real key's quota;
//! 7. **authorize**: every required permission must be granted;
//! 8. **use cap**: a key minted with `max_uses` spends one use, durably and
//!    conditionally in the store, before the answer (the only stage that may
//!    touch the database, and only for capped keys).
//!
//! The caller of the service learns only "invalid" for every failure of
//! stages 1 to 4; [`InvalidReason`] carries the detail for the server log.

mod proven;

use std::{fmt, net::IpAddr, sync::Arc, time::Duration};

use crate::{
    clock::{Clock, Timestamp},
    freshness::{Freshness, Stale},
    index::{Entitlements, Index, Unproven},
    key::{FormatError, KeyId, ParsedKey},
    model::{Change, IndexedKey},
    permission::{InvalidPermission, Permission},
    rate_limit::{Admission, RateLimit, RateLimiters},
    store::{Store, StoreError},
};
pub use proven::ProvenCredential;

/// What validation decided.
#[derive(Debug)]
pub enum Outcome {
    /// A live key, granted every required permission.
    Valid(Grant),
    /// Not a live key with this secret. Shown to callers as `INVALID` only.
    Invalid(InvalidReason),
    /// A live key over its rate limit.
    RateLimited {
        /// The key, proven live.
        grant: Grant,
        /// When its next call would be allowed.
        retry_after: Duration,
    },
    /// A live key that may not do this.
    Forbidden {
        /// The key, proven live.
        grant: Grant,
        /// What it lacks.
        denied: Denied,
    },
}

/// What a validation asks besides "is this key live?".
#[derive(Debug, Clone, Copy, Default)]
pub struct Checks<'a> {
    /// Every one must be granted.
    pub required: Required<'a>,
    /// The original caller's address, for keys with a CIDR allow-list.
    pub client_ip: Option<IpAddr>,
    /// Spend nothing of the key's rate limit: for a caller's own credential,
    /// so a limit meant for the keys a backend validates cannot lock that
    /// backend out of keyward.
    pub skip_rate_limit: bool,
}

/// The permissions a validation requires, all well-formed: parsed ones (a
/// gateway route's, parsed once), or a request's texts, checked in place
/// rather than each copied into a [`Permission`] on every call.
#[derive(Debug, Clone, Copy)]
pub struct Required<'a>(RequiredList<'a>);

#[derive(Debug, Clone, Copy)]
enum RequiredList<'a> {
    Parsed(&'a [Permission]),
    Checked(&'a [String]),
}

impl<'a> Required<'a> {
    /// Nothing required.
    pub const NONE: Self = Self(RequiredList::Parsed(&[]));

    /// Permissions already parsed.
    #[must_use]
    pub fn parsed(permissions: &'a [Permission]) -> Self {
        Self(RequiredList::Parsed(permissions))
    }

    /// Texts, once each is checked to be a permission.
    ///
    /// # Errors
    /// The position of the first that is not, and why.
    pub fn check(texts: &'a [String]) -> Result<Self, (usize, InvalidPermission)> {
        for (i, text) in texts.iter().enumerate() {
            Permission::check(text).map_err(|error| (i, error))?;
        }
        Ok(Self(RequiredList::Checked(texts)))
    }

    /// The texts of the permissions, in order.
    pub fn texts(self) -> impl Iterator<Item = &'a str> {
        let (parsed, checked): (&[Permission], &[String]) = match self.0 {
            RequiredList::Parsed(list) => (list, &[]),
            RequiredList::Checked(list) => (&[], list),
        };
        parsed
            .iter()
            .map(Permission::as_str)
            .chain(checked.iter().map(String::as_str))
    }
}

impl Default for Required<'_> {
    fn default() -> Self {
        Self::NONE
    }
}

/// Why a live key is forbidden: for logs, and for `PERMISSION_DENIED`
/// messages to authenticated callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// A required permission none of the key's grants.
    MissingPermission(Permission),
    /// The key has an allow-list and the address is outside it (or unknown).
    ClientIpNotAllowed(Option<IpAddr>),
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingPermission(permission) => write!(f, "lacks the {permission} permission"),
            Self::ClientIpNotAllowed(Some(ip)) => {
                write!(f, "client address {ip} is outside the key's allow-list")
            }
            Self::ClientIpNotAllowed(None) => {
                f.write_str("the key has a CIDR allow-list and no client address was given")
            }
        }
    }
}

/// A key proven live, with its effective permissions and limits.
#[derive(Debug)]
pub struct Grant {
    /// The key as the index holds it (id, owner, labels, roles).
    pub key: Arc<IndexedKey>,
    /// The key's own permissions and its roles', sorted; shared with other
    /// validations of keys alike (see [`Index::entitlements`]).
    pub permissions: Arc<[Permission]>,
    /// The limit applied and the burst left after this call.
    pub rate_limit: Option<(RateLimit, u32)>,
    /// For a capped key that passed: the uses left after this one.
    pub remaining_uses: Option<u64>,
    /// When the key's state was checked: also when its use is recorded, so
    /// the clock is read once per key.
    pub checked_at: Timestamp,
}

/// Why a key is invalid: for logs and metrics, never for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// Not shaped like a key at all.
    Malformed(FormatError),
    /// Not in the index: never existed, revoked, or swept after expiry.
    UnknownKey(KeyId),
    /// The id exists but the secret does not match its digest.
    WrongSecret(KeyId),
    /// Revoked, and not yet dropped from the index.
    Revoked(KeyId),
    /// Past its expiry, and not yet swept from the index.
    Expired(KeyId),
    /// A capped key whose uses are spent.
    UsesExhausted(KeyId),
    /// A capped key presented as an RPC credential.
    CappedCredential(KeyId),
}

impl InvalidReason {
    /// The key id, when the key was well-formed.
    #[must_use]
    pub fn key_id(self) -> Option<KeyId> {
        match self {
            Self::Malformed(_) => None,
            Self::UnknownKey(id)
            | Self::WrongSecret(id)
            | Self::Revoked(id)
            | Self::Expired(id)
            | Self::UsesExhausted(id)
            | Self::CappedCredential(id) => Some(id),
        }
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(error) => write!(f, "malformed: {error}"),
            Self::UnknownKey(_) => f.write_str("unknown or revoked key id"),
            Self::WrongSecret(_) => f.write_str("wrong secret"),
            Self::Revoked(_) => f.write_str("revoked"),
            Self::Expired(_) => f.write_str("expired"),
            Self::UsesExhausted(_) => f.write_str("usage cap reached"),
            Self::CappedCredential(_) => {
                f.write_str("a key with a usage cap cannot authenticate RPCs")
            }
        }
    }
}

/// Runs the validation pipeline against the in-memory index.
pub struct Validator {
    index: Arc<Index>,
    clock: Arc<dyn Clock>,
    limiters: RateLimiters,
    default_rate_limit: Option<RateLimit>,
    /// Where capped keys spend their uses; without it they are refused.
    store: Option<Arc<Store>>,
    /// On a replica of many: how current the index is known to be.
    freshness: Option<Arc<Freshness>>,
}

impl Validator {
    /// A validator over `index`, reading time from `clock`, with no default
    /// rate limit and no store (capped keys are then refused).
    pub fn new(index: Arc<Index>, clock: Arc<dyn Clock>) -> Self {
        Self {
            index,
            limiters: RateLimiters::new(clock.clone()),
            clock,
            default_rate_limit: None,
            store: None,
            freshness: None,
        }
    }

    /// Applies `limit` to keys with no limit of their own or from a role.
    #[must_use]
    pub fn with_default_rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        self.default_rate_limit = limit;
        self
    }

    /// Spends capped keys' uses in `store`.
    #[must_use]
    pub fn with_store(mut self, store: Arc<Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Refuses to answer once the index is older than `freshness` allows.
    #[must_use]
    pub fn with_freshness(mut self, freshness: Arc<Freshness>) -> Self {
        self.freshness = Some(freshness);
        self
    }

    /// Whether the index may be trusted: always on a single server; on a
    /// replica, until it has gone too long without hearing the database.
    ///
    /// # Errors
    /// [`Stale`] when answers from the index could miss a revocation.
    pub fn ensure_fresh(&self) -> Result<(), Stale> {
        self.freshness
            .as_ref()
            .map_or(Ok(()), |freshness| freshness.check())
    }

    /// The rate limiters, for the timer that reclaims idle state.
    pub fn limiters(&self) -> &RateLimiters {
        &self.limiters
    }

    /// Stages 1–7: everything but the use cap. No I/O, never fails.
    pub fn check(&self, presented: &str, checks: Checks<'_>) -> Outcome {
        let parsed = match ParsedKey::parse(presented) {
            Ok(parsed) => parsed,
            Err(error) => return Outcome::Invalid(InvalidReason::Malformed(error)),
        };
        // Read before the compare, so every failure below costs the same:
        // unknown, wrong-secret, revoked and expired keys all did this work.
        let now = self.clock.now();
        let (key, entitlements) = match self.index.prove(parsed.id(), &parsed.digest()) {
            Ok(proven) => proven,
            Err(Unproven::UnknownKey) => {
                return Outcome::Invalid(InvalidReason::UnknownKey(parsed.id()));
            }
            Err(Unproven::WrongSecret) => {
                return Outcome::Invalid(InvalidReason::WrongSecret(parsed.id()));
            }
        };
        self.check_proven(key, entitlements, now, checks)
    }

    /// Stages 4–7, for a key proven to be the one presented, with its
    /// `entitlements`, at `now`.
    fn check_proven(
        &self,
        key: Arc<IndexedKey>,
        entitlements: Entitlements,
        now: Timestamp,
        checks: Checks<'_>,
    ) -> Outcome {
        if let Err(reason) = check_state(&key, now) {
            return Outcome::Invalid(reason);
        }
        let limit = key
            .profile
            .rate_limit
            .or(entitlements.role_rate_limit)
            .or(self.default_rate_limit);
        let mut grant = Grant {
            permissions: entitlements.permissions,
            key,
            rate_limit: None,
            remaining_uses: None,
            checked_at: now,
        };
        // The allow-list comes before the rate limit: a leaked key used from
        // outside it must not be able to spend (and so throttle) the owner's quota.
        if let Err(denied) = check_client_ip(&grant.key, checks.client_ip) {
            return Outcome::Forbidden { grant, denied };
        }
        if let Some(limit) = limit.filter(|_| !checks.skip_rate_limit) {
            match self.limiters.check(grant.key.id, &limit) {
                Admission::Allowed { remaining_burst } => {
                    grant.rate_limit = Some((limit, remaining_burst));
                }
                Admission::Limited { retry_after } => {
                    grant.rate_limit = Some((limit, 0));
                    return Outcome::RateLimited { grant, retry_after };
                }
            }
        }
        match authorize(&grant.permissions, checks.required) {
            Ok(()) => Outcome::Valid(grant),
            Err(missing) => Outcome::Forbidden {
                grant,
                denied: Denied::MissingPermission(missing),
            },
        }
    }

    /// For a caller's own credential (the `authorization` key of an RPC):
    /// stages 1–7 without spending rate quota, and never a capped key — a
    /// credential presented on every RPC would spend its uses. With the
    /// connection's `proven` credential, stages 1–3 are skipped when
    /// `presented` is the one it remembers and the index still holds the
    /// entry it was proven against (see [`ProvenCredential`]).
    pub fn check_credential(
        &self,
        presented: &str,
        client_ip: Option<IpAddr>,
        proven: Option<&ProvenCredential>,
    ) -> Outcome {
        let checks = Checks {
            required: Required::NONE,
            client_ip,
            skip_rate_limit: true,
        };
        let recalled = proven
            .and_then(|proven| proven.recall(presented))
            .and_then(|key| Some((self.index.entitlements_if_held(&key)?, key)));
        let remembered = recalled.is_some();
        let outcome = match recalled {
            Some((entitlements, key)) => {
                self.check_proven(key, entitlements, self.clock.now(), checks)
            }
            None => self.check(presented, checks),
        };
        match &outcome {
            Outcome::Valid(grant) if grant.key.profile.capped => {
                Outcome::Invalid(InvalidReason::CappedCredential(grant.key.id))
            }
            Outcome::Valid(grant) => {
                grant.key.usage.record(grant.checked_at);
                if let Some(proven) = proven.filter(|_| !remembered) {
                    proven.remember(presented, &grant.key);
                }
                outcome
            }
            _ => outcome,
        }
    }

    /// The whole pipeline: [`Validator::check`], then stage 8 for capped
    /// keys, and usage counting for keys that pass.
    ///
    /// # Errors
    /// When a capped key's use cannot be recorded (the store is down): the
    /// caller must not be told "valid" without the durable decrement.
    pub async fn validate(
        &self,
        presented: &str,
        checks: Checks<'_>,
    ) -> Result<Outcome, StoreError> {
        let mut outcome = self.check(presented, checks);
        if let Outcome::Valid(grant) = &mut outcome {
            if grant.key.profile.capped {
                let id = grant.key.id;
                let remaining = match &self.store {
                    // Boxed: only capped keys wait for the store, and its
                    // future is large; unboxed, every validation's future
                    // would carry (and move) room for it.
                    Some(store) => Box::pin(store.consume_use(id)).await?,
                    None => None,
                };
                if let Some(left) = remaining {
                    grant.remaining_uses = Some(left);
                    grant.key.usage.record(self.clock.now());
                }
                if remaining.is_none_or(|left| left == 0) {
                    // The last use (or none left): later calls need not ask
                    // the store. Recorded first, so the last use is counted.
                    self.index.apply([Change::KeyRemoved(id)]);
                }
                if remaining.is_none() {
                    return Ok(Outcome::Invalid(InvalidReason::UsesExhausted(id)));
                }
            } else {
                grant.key.usage.record(grant.checked_at);
            }
        }
        Ok(outcome)
    }
}

/// Stage 4: a proven key must be neither revoked nor expired at `now`.
fn check_state(key: &IndexedKey, now: Timestamp) -> Result<(), InvalidReason> {
    if key.revoked_at.is_some() {
        Err(InvalidReason::Revoked(key.id))
    } else if key.expires_at.is_some_and(|at| at <= now) {
        Err(InvalidReason::Expired(key.id))
    } else {
        Ok(())
    }
}

/// Stage 5: a key with an allow-list needs a client address inside it.
fn check_client_ip(key: &IndexedKey, client_ip: Option<IpAddr>) -> Result<(), Denied> {
    if key.profile.allowed_cidrs.is_empty() {
        return Ok(());
    }
    match client_ip {
        Some(ip)
            if key
                .profile
                .allowed_cidrs
                .iter()
                .any(|range| range.contains(ip)) =>
        {
            Ok(())
        }
        other => Err(Denied::ClientIpNotAllowed(other)),
    }
}

/// Stage 7: the first required permission that nothing in `granted` grants.
fn authorize(granted: &[Permission], required: Required<'_>) -> Result<(), Permission> {
    match required
        .texts()
        .find(|needed| !granted.iter().any(|held| held.grants_text(needed)))
    {
        Some(missing) => Err(missing.parse().expect("required permissions are checked")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        clock::ManualClock,
        index::tests::{record, role},
        key::{MintedKey, Prefix},
        model::Change,
    };

    fn perms(list: &[&str]) -> Vec<Permission> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    fn need(required: &[Permission]) -> Checks<'_> {
        Checks {
            required: Required::parsed(required),
            client_ip: None,
            skip_rate_limit: false,
        }
    }

    struct Fixture {
        clock: ManualClock,
        index: Arc<Index>,
        validator: Validator,
    }

    impl Fixture {
        fn new() -> Self {
            let clock = ManualClock::starting_now();
            let index = Arc::new(Index::default());
            index.apply([Change::RoleUpserted(role(
                "deployer",
                &["deploy:*", "build:read"],
            ))]);
            let validator = Validator::new(index.clone(), Arc::new(clock.clone()));
            Self {
                clock,
                index,
                validator,
            }
        }

        fn add(&self, adjust: impl FnOnce(&mut crate::model::KeyRecord)) -> MintedKey {
            let minted = MintedKey::generate(&Prefix::default()).unwrap();
            let mut record = record(&minted, &["deployer"]);
            adjust(&mut record);
            self.index
                .apply([Change::KeyUpserted(Arc::new(IndexedKey::new(
                    &record,
                    minted.digest,
                )))]);
            minted
        }
    }

    fn reason(outcome: Outcome) -> InvalidReason {
        match outcome {
            Outcome::Invalid(reason) => reason,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn pipeline_decides_in_rule_order() {
        let fx = Fixture::new();
        let live = fx.add(|_| {});
        let text = live.plaintext.expose();

        let Outcome::Valid(grant) = fx
            .validator
            .check(text, need(&perms(&["deploy:prod:write"])))
        else {
            panic!("live key with a granted permission must be valid");
        };
        assert_eq!(grant.key.id, live.id);
        assert_eq!(*grant.permissions, perms(&["build:read", "deploy:*"]));

        let Outcome::Forbidden { denied, .. } = fx
            .validator
            .check(text, need(&perms(&["build:read", "build:write"])))
        else {
            panic!("missing permission must be forbidden");
        };
        assert_eq!(
            denied,
            Denied::MissingPermission("build:write".parse().unwrap())
        );

        assert!(matches!(
            reason(fx.validator.check("kw_short", Checks::default())),
            InvalidReason::Malformed(FormatError::BadBody)
        ));
        let stranger = MintedKey::generate(&Prefix::default()).unwrap();
        assert_eq!(
            reason(
                fx.validator
                    .check(stranger.plaintext.expose(), Checks::default())
            ),
            InvalidReason::UnknownKey(stranger.id)
        );
    }

    #[test]
    fn a_proven_credential_skips_only_the_proof() {
        let fx = Fixture::new();
        let now = fx.clock.now();
        let caller =
            fx.add(|r| r.settings.expires_at = Some(now.saturating_add(Duration::from_mins(1))));
        let text = caller.plaintext.expose();
        let proven = ProvenCredential::default();
        assert!(proven.recall(text).is_none());
        assert!(matches!(
            fx.validator.check_credential(text, None, Some(&proven)),
            Outcome::Valid(_)
        ));
        let remembered = proven
            .recall(text)
            .expect("a valid credential is remembered");
        assert_eq!(remembered.id, caller.id);
        assert!(
            !format!("{proven:?}").contains(text),
            "the text never shows"
        );

        // What is skipped is the proof: text remembered for an entry the
        // index still holds is not parsed again...
        proven.remember("kw_not_a_key", &remembered);
        assert!(matches!(
            fx.validator.check_credential("kw_not_a_key", None, Some(&proven)),
            Outcome::Valid(grant) if grant.key.id == caller.id
        ));
        // ...and nothing else: the entry's expiry still applies.
        fx.clock.advance(Duration::from_mins(1));
        assert_eq!(
            reason(
                fx.validator
                    .check_credential("kw_not_a_key", None, Some(&proven))
            ),
            InvalidReason::Expired(caller.id)
        );
    }

    #[test]
    fn a_proven_credential_replaced_or_removed_in_the_index_is_proven_again() {
        let fx = Fixture::new();
        let caller = fx.add(|_| {});
        let text = caller.plaintext.expose();
        let proven = ProvenCredential::default();
        assert!(matches!(
            fx.validator.check_credential(text, None, Some(&proven)),
            Outcome::Valid(_)
        ));

        // An update replaces the entry (here: the role taken away): the
        // next call sees the new one, and remembers it.
        let first = proven.recall(text).unwrap();
        let updated = IndexedKey::new(&record(&caller, &[]), caller.digest);
        fx.index.apply([Change::KeyUpserted(Arc::new(updated))]);
        let Outcome::Valid(grant) = fx.validator.check_credential(text, None, Some(&proven)) else {
            panic!("the updated key is still valid");
        };
        assert!(grant.permissions.is_empty(), "{grant:?}");
        let now_remembered = proven.recall(text).unwrap();
        assert!(Arc::ptr_eq(&now_remembered, &grant.key));
        assert!(!Arc::ptr_eq(&now_remembered, &first));

        // Revoking removes it: refused, though remembered.
        fx.index.apply([Change::KeyRemoved(caller.id)]);
        assert_eq!(
            reason(fx.validator.check_credential(text, None, Some(&proven))),
            InvalidReason::UnknownKey(caller.id)
        );
    }

    #[test]
    fn another_credential_on_the_connection_is_proven_from_scratch() {
        let fx = Fixture::new();
        let caller = fx.add(|_| {});
        let other = fx.add(|_| {});
        let proven = ProvenCredential::default();
        let text = caller.plaintext.expose();
        assert!(matches!(
            fx.validator.check_credential(text, None, Some(&proven)),
            Outcome::Valid(_)
        ));

        // The caller's id with another secret is not the text remembered.
        let forged = crate::key::forge(caller.id, other.plaintext.expose());
        assert_eq!(
            reason(fx.validator.check_credential(&forged, None, Some(&proven))),
            InvalidReason::WrongSecret(caller.id)
        );
        assert!(proven.recall(&forged).is_none());
        assert!(proven.recall(text).is_some(), "a refusal forgets nothing");

        // Another valid key takes its place.
        let other_text = other.plaintext.expose();
        assert!(matches!(
            fx.validator
                .check_credential(other_text, None, Some(&proven)),
            Outcome::Valid(_)
        ));
        assert_eq!(proven.recall(other_text).unwrap().id, other.id);
        assert!(proven.recall(text).is_none());
    }

    #[test]
    fn wrong_secret_for_a_known_id_is_invalid() {
        let fx = Fixture::new();
        let live = fx.add(|_| {});
        let impostor = MintedKey::generate(&Prefix::default()).unwrap();
        // Same id, impostor's digest in the index: the presented secret no
        // longer matches.
        let mut record = record(&live, &["deployer"]);
        record.id = live.id;
        fx.index
            .apply([Change::KeyUpserted(Arc::new(IndexedKey::new(
                &record,
                impostor.digest,
            )))]);
        assert_eq!(
            reason(
                fx.validator
                    .check(live.plaintext.expose(), Checks::default())
            ),
            InvalidReason::WrongSecret(live.id)
        );
    }

    #[test]
    fn expiry_and_revocation_follow_the_clock() {
        let fx = Fixture::new();
        let now = fx.clock.now();
        let expiring =
            fx.add(|r| r.settings.expires_at = Some(now.saturating_add(Duration::from_mins(1))));
        let revoked = fx.add(|r| r.revoked_at = Some(now));

        assert!(matches!(
            fx.validator
                .check(expiring.plaintext.expose(), Checks::default()),
            Outcome::Valid(_)
        ));
        fx.clock.advance(Duration::from_mins(1));
        assert_eq!(
            reason(
                fx.validator
                    .check(expiring.plaintext.expose(), Checks::default())
            ),
            InvalidReason::Expired(expiring.id)
        );
        assert_eq!(
            reason(
                fx.validator
                    .check(revoked.plaintext.expose(), Checks::default())
            ),
            InvalidReason::Revoked(revoked.id)
        );
    }

    #[test]
    fn allow_lists_need_a_client_address_inside_them() {
        let fx = Fixture::new();
        let open = fx.add(|_| {});
        let fenced = fx.add(|r| {
            r.settings.allowed_cidrs = vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ];
        });
        let at = |ip: Option<&str>| Checks {
            required: Required::NONE,
            client_ip: ip.map(|ip| ip.parse().unwrap()),
            skip_rate_limit: false,
        };
        assert!(matches!(
            fx.validator.check(open.plaintext.expose(), at(None)),
            Outcome::Valid(_)
        ));
        for inside in ["10.1.2.3", "2001:db8::7", "::ffff:10.0.0.1"] {
            let outcome = fx
                .validator
                .check(fenced.plaintext.expose(), at(Some(inside)));
            assert!(matches!(outcome, Outcome::Valid(_)), "{inside}");
        }
        for outside in [None, Some("192.0.2.1"), Some("2001:db9::1")] {
            let Outcome::Forbidden { denied, .. } =
                fx.validator.check(fenced.plaintext.expose(), at(outside))
            else {
                panic!("{outside:?} must be forbidden");
            };
            assert_eq!(
                denied,
                Denied::ClientIpNotAllowed(outside.map(|ip| ip.parse().unwrap()))
            );
        }
    }

    #[test]
    fn rate_limits_apply_after_the_proof() {
        let fx = Fixture::new();
        let limited = fx.add(|r| r.settings.rate_limit = Some("2/s".parse().unwrap()));
        let text = limited.plaintext.expose();
        let stranger = MintedKey::generate(&Prefix::default()).unwrap();
        let forged = crate::key::forge(limited.id, stranger.plaintext.expose());
        for _ in 0..10 {
            // The right id with a wrong secret passes the checksum and fails
            // the digest compare: it must spend nothing.
            assert_eq!(
                reason(fx.validator.check(&forged, Checks::default())),
                InvalidReason::WrongSecret(limited.id)
            );
        }
        let Outcome::Valid(grant) = fx.validator.check(text, Checks::default()) else {
            panic!()
        };
        assert_eq!(grant.rate_limit, Some(("2/s".parse().unwrap(), 1)));
        assert!(matches!(
            fx.validator.check(text, Checks::default()),
            Outcome::Valid(_)
        ));
        let Outcome::RateLimited { retry_after, .. } = fx.validator.check(text, Checks::default())
        else {
            panic!("third call in a second is limited");
        };
        assert_eq!(retry_after, Duration::from_millis(500));
        fx.clock.advance(Duration::from_millis(500));
        assert!(matches!(
            fx.validator.check(text, Checks::default()),
            Outcome::Valid(_)
        ));
    }

    #[test]
    fn capped_keys_are_refused_without_a_store() {
        let fx = Fixture::new();
        let capped = fx.add(|r| r.settings.max_uses = Some(3));
        let outcome = futures_lite_block_on(
            fx.validator
                .validate(capped.plaintext.expose(), Checks::default()),
        );
        assert!(matches!(
            outcome.unwrap(),
            Outcome::Invalid(InvalidReason::UsesExhausted(_))
        ));
    }

    fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn authorize_table() {
        type Case<'a> = (&'a [&'a str], &'a [&'a str], Result<(), &'a str>);
        let cases: &[Case] = &[
            (&[], &[], Ok(())),
            (&[], &["a:b"], Err("a:b")),
            (&["a:*"], &["a:b", "a:c:d"], Ok(())),
            (&["a:b"], &["a:b", "a:c"], Err("a:c")),
            (&["keyward:*"], &["keyward:validate"], Ok(())),
            (&["*"], &["x", "y:z"], Ok(())),
        ];
        for (granted, required, expected) in cases {
            let texts: Vec<String> = required.iter().map(|p| (*p).to_owned()).collect();
            let parsed = perms(required);
            for required in [Required::parsed(&parsed), Required::check(&texts).unwrap()] {
                assert_eq!(
                    authorize(&perms(granted), required).map_err(|p| p.to_string()),
                    expected.map_err(str::to_owned),
                    "{granted:?} ⊢ {required:?}"
                );
            }
        }
    }

    #[test]
    fn required_texts_are_checked_before_use() {
        let texts: Vec<String> = ["deploy:read", "Deploy", ""]
            .iter()
            .map(|p| (*p).to_owned())
            .collect();
        assert_eq!(
            Required::check(&texts).unwrap_err(),
            (1, InvalidPermission::Malformed)
        );
        assert_eq!(
            Required::check(&texts[2..]).unwrap_err(),
            (0, InvalidPermission::Empty)
        );
        let required = Required::check(&texts[..1]).unwrap();
        assert_eq!(required.texts().collect::<Vec<_>>(), ["deploy:read"]);
    }
}
