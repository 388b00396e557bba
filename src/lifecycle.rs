//! The operations behind the admin RPCs: the key lifecycle (mint, inspect,
//! rotate, revoke), roles, and the audit log.
//!
//! Each operation checks its input against the current state, makes one
//! store transaction (the change and its audit record), then applies the
//! resulting [`Change`]s to the index, so the next Validate sees it. Mints
//! that queue up behind another write share one transaction (a group commit,
//! `group.rs`), each still with its own audit record.

use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use tracing::Instrument;

use crate::{
    auth::Caller,
    cidr::Cidr,
    clock::{Clock, Timestamp},
    error::ServiceError,
    index::{Index, Prepared, Replaced},
    key::{KeyId, MintedKey, PlaintextKey, Prefix},
    metrics::{DbOperation, Metrics},
    model::{
        AuditAction, Change, IndexedKey, KeyRecord, KeySettings, KeyState, Labels, MAX_LIFETIME,
        Role, RoleUpdate,
        query::{AuditPage, AuditQuery, KeyPage, KeyQuery},
    },
    permission::{Permission, RoleName},
    rate_limit::{Admission, RateLimit, RateLimiters},
    store::{Revocation, Rotation, Snapshot, Store, StoreError, feed::Changed},
};

/// When a new key stops working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Only revocation stops it; refused when a role caps key lifetimes.
    Never,
    /// A lifetime from the moment of minting.
    Ttl(Duration),
    /// An instant, which must be in the future.
    At(Timestamp),
}

/// A checked mint request.
#[derive(Debug, Clone)]
pub struct MintRequest {
    /// Starts the plaintext, so a leaked key says what it belongs to.
    pub prefix: Prefix,
    /// Each must exist; their permissions, max TTL and rate limit apply.
    pub roles: Vec<RoleName>,
    /// Granted directly, besides the roles' permissions.
    pub permissions: Vec<Permission>,
    /// Client addresses the key validates from; empty: any.
    pub allowed_cidrs: Vec<Cidr>,
    /// For finding keys, and revoking them in bulk ([`Lifecycle::revoke_matching`]).
    pub labels: Labels,
    /// Free text, possibly empty; listing and bulk revocation filter on it.
    pub owner: String,
    /// Free text for people; keyward never reads it.
    pub description: String,
    /// Must end within the shortest max TTL among `roles`, if any.
    pub expiry: Expiry,
    /// The key's own limit; `None`: its roles' default, else the server's.
    pub rate_limit: Option<RateLimit>,
    /// Most validations the key may pass; `None`: no cap.
    pub max_uses: Option<u64>,
}

/// A checked request to create a role.
#[derive(Debug, Clone)]
pub struct NewRole {
    /// Must not be taken by another role.
    pub name: RoleName,
    /// Free text for people; keyward never reads it.
    pub description: String,
    /// Not `*` alone, and each one the caller may grant.
    pub permissions: Vec<Permission>,
    /// Longest lifetime a key holding the role may be minted with; `None`: no cap.
    pub max_ttl: Option<Duration>,
    /// For keys holding the role that have none of their own; `None`: the
    /// server's.
    pub rate_limit: Option<RateLimit>,
}

/// A new key and its plaintext, shown once.
#[derive(Debug)]
pub struct Minted {
    /// As stored: everything but the secret.
    pub key: KeyRecord,
    /// The only copy: the store keeps just its digest.
    pub plaintext: PlaintextKey,
}

/// A rotation and the successor's plaintext, shown once.
#[derive(Debug)]
pub struct Rotated {
    /// The old key (working for the grace period at most) and its successor.
    pub rotation: Rotation,
    /// The successor's, and the only copy: the store keeps just its digest.
    pub plaintext: PlaintextKey,
}

/// How many times mint draws a new id when the random one is taken. With
/// 64-bit ids a second draw is already astronomically unlikely.
const MINT_ATTEMPTS: usize = 3;

/// The most unrevoked keys one bulk revocation may match
/// ([`Lifecycle::revoke_matching`]); a call matching more is refused whole.
/// It bounds what one call reads and checks, the one transaction that
/// revokes, and so how long the writes queued behind it wait.
pub const MAX_BULK_REVOKE: usize = 10_000;

/// Admin operations over the store and the index.
pub struct Lifecycle {
    store: Arc<Store>,
    index: Arc<Index>,
    clock: Arc<dyn Clock>,
    /// One write at a time: the index sees changes in commit order.
    writes: Arc<tokio::sync::Mutex<()>>,
    /// One bulk revocation at a time in the queue for `writes`: a write
    /// queued behind bulk revocations (an emergency `RevokeKey`) waits for one
    /// of them at most, not for all.
    bulk: Arc<tokio::sync::Mutex<()>>,
    /// Where database failures met by admin operations are counted.
    metrics: Arc<Metrics>,
    /// How many keys a caller short of `keyward:admin` may mint; `None`: no
    /// limit ([`Lifecycle::with_mint_quota`]).
    mint_quota: Option<(RateLimit, RateLimiters)>,
    /// Mints waiting for `writes`, committed together when it comes.
    mints: group::MintQueue,
}

impl Lifecycle {
    /// Operations writing to `store` and keeping `index` current, counting
    /// database failures into `metrics`.
    pub fn new(
        store: Arc<Store>,
        index: Arc<Index>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let writes = Arc::default();
        Self {
            mints: group::MintQueue::new(
                store.clone(),
                index.clone(),
                clock.clone(),
                Arc::clone(&writes),
            ),
            store,
            index,
            clock,
            writes,
            bulk: Arc::default(),
            metrics,
            mint_quota: None,
        }
    }

    /// Lets each caller short of `keyward:admin` mint at most `quota` keys
    /// (a GCRA limit per caller key, like a key's own rate limit). Each key
    /// costs index memory for as long as it lives (up to ~50 KB with every
    /// list at its maximum), so a narrow admin key, leaked or buggy, must not
    /// be able to mint without bound.
    #[must_use]
    pub fn with_mint_quota(mut self, quota: Option<RateLimit>) -> Self {
        self.mint_quota = quota.map(|quota| (quota, RateLimiters::new(self.clock.clone())));
        self
    }

    /// Spends one mint of `caller`'s quota.
    fn spend_mint_quota(&self, caller: &Caller) -> Result<(), ServiceError> {
        let Some((quota, limiters)) = &self.mint_quota else {
            return Ok(());
        };
        if caller.is_root {
            return Ok(());
        }
        match limiters.check(caller.id, quota) {
            Admission::Allowed { .. } => Ok(()),
            Admission::Limited { retry_after } => Err(ServiceError::ResourceExhausted(format!(
                "the caller's key may mint at most {quota} keys; retry in {}",
                humantime::format_duration(Duration::from_secs(retry_after.as_secs() + 1))
            ))),
        }
    }

    /// Runs an admin write and makes sure it logs one line whatever its
    /// outcome, with the action, the actor's key id, the target and the
    /// outcome. A write that succeeds logs its own line (with what it made:
    /// a new key's id, a successor); a refusal or a failure is logged here,
    /// with its error, which never holds a secret. Database failures are
    /// counted too.
    async fn logged<T>(
        &self,
        action: AuditAction,
        caller: &Caller,
        target: &(dyn fmt::Display + Sync),
        write: impl Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        let result = write.await;
        if let Err(error) = &result {
            self.count(error);
            let (action, actor, outcome) = (action.as_str(), caller.id, error.kind());
            match error {
                ServiceError::Database(_)
                | ServiceError::Internal(_)
                | ServiceError::Unavailable(_) => {
                    tracing::warn!(action, %actor, %target, outcome, %error, "admin write failed");
                }
                _ => {
                    tracing::info!(action, %actor, %target, outcome, %error, "admin write refused");
                }
            }
        }
        result
    }

    /// Counts `error` if the database caused it.
    fn count(&self, error: &ServiceError) {
        if matches!(error, ServiceError::Database(_)) {
            self.metrics.database_error(DbOperation::Admin);
        }
    }

    /// A store read's result for an admin RPC, its failure counted.
    fn read<T>(&self, result: Result<T, StoreError>) -> Result<T, ServiceError> {
        result.map_err(|error| {
            let error = ServiceError::from(error);
            self.count(&error);
            error
        })
    }

    /// The time according to the injected clock.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Runs `write` (a store transaction, then the index changes it implies)
    /// on its own task, one write at a time. A request that is cancelled
    /// mid-way (a client deadline, a dropped connection) cannot leave the
    /// database changed and the index not: a revoked key must stop working.
    ///
    /// `write` gets the time read once its turn has come, and runs only if
    /// the caller's key is still live then: a key revoked while its writes
    /// were queued (or, on PostgreSQL, on another replica) makes no further
    /// change.
    async fn commit<T, F>(
        &self,
        caller: &Caller,
        write: impl FnOnce(Arc<Store>, Arc<Index>, Timestamp) -> F + Send + 'static,
    ) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ServiceError>> + Send + 'static,
    {
        let (store, index, clock, writes) = (
            self.store.clone(),
            self.index.clone(),
            self.clock.clone(),
            self.writes.clone(),
        );
        let (held, caller) = (caller.permissions.clone(), caller.id);
        tokio::spawn(
            async move {
                let _turn = writes.lock_owned().await;
                let now = clock.now();
                let current = live_caller(&store, &index, caller, now)
                    .await?
                    .ok_or_else(caller_gone)?;
                check_still_holds(&index, &current, &held)?;
                write(store, index, now).await
            }
            // The write's log lines stay in the RPC's span.
            .in_current_span(),
        )
        .await
        .map_err(|error| ServiceError::Internal(format!("write task failed: {error}")))?
    }

    /// The first half of a resync: loads the store's snapshot and builds
    /// the index's new contents, without the write turn, so writes go on
    /// meanwhile, and off the async workers (this is the long part: seconds
    /// at a million keys). [`Lifecycle::install_resync`] finishes it.
    ///
    /// # Errors
    /// When the store cannot be read; the index is then unchanged.
    pub async fn load_for_resync(&self) -> Result<Prepared, StoreError> {
        // Each resync also forgets what the change log no longer needs to
        // keep; a failure there costs nothing but a bigger log until the
        // next one.
        if self.store.has_change_feed()
            && let Err(error) = self.store.prune_change_log().await
        {
            tracing::warn!(%error, "cannot prune the change log");
        }
        let snapshot = self.store.load_snapshot(self.clock.now()).await?;
        Ok(self.prepare(snapshot).await)
    }

    async fn prepare(&self, snapshot: Snapshot) -> Prepared {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.prepare(snapshot))
            .await
            .unwrap_or_else(|failed| std::panic::resume_unwind(failed.into_panic()))
    }

    /// The second half of a resync, in the write turn. What was written
    /// since the load began is put on top of the snapshot: `applied` names
    /// what this index already applied meanwhile (a replica's feed), whose
    /// entries are carried over as they are; `received` names the rest (a
    /// replica asks its change feed, up to a round trip made now, so that a
    /// local write that just committed is included), which is read from the
    /// store. The whole goes in place in one step. Returns how many keys the
    /// index now holds.
    ///
    /// # Errors
    /// When `received` fails or the store cannot be read; the index is then
    /// unchanged.
    pub async fn install_resync(
        &self,
        prepared: Prepared,
        applied: &Changed,
        received: impl AsyncFnOnce() -> Result<Changed, StoreError>,
    ) -> Result<usize, StoreError> {
        let (held, replaced) = {
            let _turn = self.writes.lock().await;
            let turn_began = std::time::Instant::now();
            let written = received().await?;
            let reloaded = self.store.changes_for(&written, self.clock.now()).await?;
            let installed = self.index.install(prepared, applied, reloaded);
            self.metrics.resync_turn_held(turn_began.elapsed());
            installed
        };
        self.retire(replaced).await;
        Ok(held)
    }

    /// [`Index::retire`], off the async workers and after the write turn:
    /// freeing a million entries takes a while.
    async fn retire(&self, replaced: Replaced) {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.retire(replaced))
            .await
            .unwrap_or_else(|failed| std::panic::resume_unwind(failed.into_panic()));
    }

    /// A whole resync in one write turn: simple, and right when nothing
    /// else tells what was written during the load; writes wait for it.
    ///
    /// # Errors
    /// When the store cannot be read; the index is then unchanged.
    pub async fn resync(&self) -> Result<usize, StoreError> {
        let _turn = self.writes.lock().await;
        let snapshot = self.store.load_snapshot(self.clock.now()).await?;
        let prepared = self.prepare(snapshot).await;
        let (held, replaced) = self.index.install(prepared, &Changed::default(), []);
        self.retire(replaced).await;
        Ok(held)
    }

    /// Applies what the change feed named, as the store holds it now, in one
    /// write turn: a local write to the same key lands before or after it,
    /// never in between, and the feed waits behind the writes already queued
    /// once, not once per notification, so it keeps up under any write
    /// load. A local write's own notification reloads what that write
    /// already applied: the index ends where the database is either way.
    /// Returns how many changes were applied.
    ///
    /// # Errors
    /// When the store cannot be read; the index is then unchanged.
    pub async fn reload(&self, changed: &Changed) -> Result<usize, StoreError> {
        let _turn = self.writes.lock().await;
        let to_apply = self.store.changes_for(changed, self.clock.now()).await?;
        let count = to_apply.len();
        self.index.apply(to_apply);
        Ok(count)
    }

    /// Mints a key.
    ///
    /// # Errors
    /// `InvalidArgument` for an unknown role, an expiry not in the future or
    /// beyond a role's max TTL; `PermissionDenied` when the key would hold a
    /// permission the caller may not grant.
    pub async fn mint(
        &self,
        caller: &Caller,
        request: MintRequest,
    ) -> Result<Minted, ServiceError> {
        self.logged(AuditAction::Mint, caller, &"-", async {
            let roles = self.roles(&request.roles)?;
            let granted = roles
                .iter()
                .flat_map(|role| role.permissions.iter())
                .chain(&request.permissions);
            caller.check_may_grant(granted)?;
            let (owner, labels) = caller.scope.admit_mint(request.owner, request.labels)?;
            let request = MintRequest {
                labels,
                owner,
                ..request
            };
            let now = self.now();
            let expires_at = match request.expiry {
                Expiry::Never => None,
                Expiry::Ttl(ttl) if ttl.is_zero() => {
                    return Err(ServiceError::invalid("ttl", "must be positive"));
                }
                Expiry::Ttl(ttl) => Some(now.saturating_add(ttl)),
                Expiry::At(at) if at <= now => {
                    return Err(ServiceError::invalid("expires_at", "must be in the future"));
                }
                Expiry::At(at) => Some(at),
            };
            if expires_at.is_some_and(|at| now.until(at) > MAX_LIFETIME) {
                let field = if matches!(request.expiry, Expiry::At(_)) {
                    "expires_at"
                } else {
                    "ttl"
                };
                return Err(ServiceError::invalid(
                    field,
                    "must be at most 100 years away (omit it for a key that does not expire)",
                ));
            }
            if let Some((cap, role)) = lifetime_cap(&roles) {
                let within = expires_at.is_some_and(|at| now.until(at) <= cap);
                if !within {
                    let field = if matches!(request.expiry, Expiry::At(_)) {
                        "expires_at"
                    } else {
                        "ttl"
                    };
                    return Err(ServiceError::invalid(
                        field,
                        format!(
                            "role {role} caps key lifetime at {}; give a shorter expiry",
                            humantime::format_duration(cap)
                        ),
                    ));
                }
            }
            let settings = KeySettings {
                prefix: request.prefix,
                roles: request.roles,
                permissions: request.permissions,
                allowed_cidrs: request.allowed_cidrs,
                labels: request.labels,
                owner: request.owner,
                description: request.description,
                expires_at,
                rate_limit: request.rate_limit,
                max_uses: request.max_uses,
            };
            self.spend_mint_quota(caller)?;
            self.mints.mint(caller, settings).await
        })
        .await
    }

    /// The roles named, each of which must exist.
    fn roles(&self, names: &[RoleName]) -> Result<Vec<Role>, ServiceError> {
        names
            .iter()
            .map(|name| {
                self.index.role(name).ok_or_else(|| {
                    ServiceError::invalid("roles", format!("role {name} does not exist"))
                })
            })
            .collect()
    }

    /// One key's metadata.
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    pub async fn get(&self, id: KeyId) -> Result<KeyRecord, ServiceError> {
        self.read(self.store.get_key(id).await)
    }

    /// A page of keys.
    ///
    /// # Errors
    /// On a store failure.
    pub async fn list(&self, query: &KeyQuery) -> Result<KeyPage, ServiceError> {
        self.read(self.store.list_keys(query, self.now()).await)
    }

    /// Rotates key `id`: a successor with the same settings; the old key
    /// works for `grace` more (zero revokes it at once).
    ///
    /// # Errors
    /// `NotFound` for an unknown id; `FailedPrecondition` for a revoked,
    /// expired, spent or already rotated key; `PermissionDenied` when the key
    /// holds a permission the caller may not grant.
    pub async fn rotate(
        &self,
        caller: &Caller,
        id: KeyId,
        grace: Duration,
    ) -> Result<Rotated, ServiceError> {
        self.logged(AuditAction::Rotate, caller, &id, async {
            let (actor, caller_copy) = (caller.actor(), caller.clone());
            self.commit(caller, move |store, index, now| async move {
                let current = store.get_key(id).await?;
                check_may_manage(&index, &caller_copy, &current)?;
                // The prefix never changes, so the successor can be drawn before
                // the transaction that re-checks the old key's state.
                let minted = generate(&current.settings.prefix)?;
                let rotation = store.rotate_key(id, (minted.id, minted.digest), grace, actor, now).await?;
                let previous = &rotation.previous;
                let previous_change = match index.get(previous.id) {
                    _ if previous.state(now) != KeyState::Active => Change::KeyRemoved(previous.id),
                    Some(entry) => Change::KeyUpserted(Arc::new(IndexedKey::new(previous, entry.digest))),
                    None => Change::KeyRemoved(previous.id),
                };
                index.apply([upserted(&rotation.successor, &minted), previous_change]);
                tracing::info!(action = AuditAction::Rotate.as_str(), actor = %caller_copy.id, target = %id, outcome = "ok", successor = %rotation.successor.id, grace = %humantime::format_duration(grace), "key rotated");
                Ok(Rotated {
                    rotation,
                    plaintext: minted.plaintext,
                })
            })
            .await
        })
        .await
    }

    /// Sets or removes key `id`'s own rate limit; the next Validate applies it.
    ///
    /// # Errors
    /// `NotFound` for an unknown id; `PermissionDenied` for a key broader
    /// than the caller's.
    pub async fn update_rate_limit(
        &self,
        caller: &Caller,
        id: KeyId,
        rate_limit: Option<RateLimit>,
    ) -> Result<KeyRecord, ServiceError> {
        self.logged(AuditAction::Update, caller, &id, async {
            let (actor, caller_copy) = (caller.actor(), caller.clone());
            self.commit(caller, move |store, index, now| async move {
                check_may_manage(&index, &caller_copy, &store.get_key(id).await?)?;
                let key = store.update_rate_limit(id, rate_limit, actor, now).await?;
                if let Some(entry) = index.get(id) {
                    let mut updated = IndexedKey::new(&key, entry.digest);
                    updated.usage = entry.usage.clone();
                    index.apply([Change::KeyUpserted(Arc::new(updated))]);
                }
                tracing::info!(action = AuditAction::Update.as_str(), actor = %caller_copy.id, target = %id, outcome = "ok", rate_limit = ?rate_limit, "key rate limit changed");
                Ok(key)
            })
            .await
        })
        .await
    }

    /// Revokes key `id`; idempotent.
    ///
    /// # Errors
    /// `NotFound` for an unknown id; `PermissionDenied` for a key broader
    /// than the caller's.
    pub async fn revoke(
        &self,
        caller: &Caller,
        id: KeyId,
        reason: &str,
    ) -> Result<Revocation, ServiceError> {
        self.logged(AuditAction::Revoke, caller, &id, async {
            let (actor, caller_copy, reason) = (caller.actor(), caller.clone(), reason.to_owned());
            self.commit(caller, move |store, index, now| async move {
                check_may_manage(&index, &caller_copy, &store.get_key(id).await?)?;
                let revocation = store.revoke_key(id, &reason, actor, now).await?;
                index.apply([Change::KeyRemoved(id)]);
                tracing::info!(
                    action = AuditAction::Revoke.as_str(),
                    actor = %caller_copy.id,
                    target = %id,
                    outcome = if revocation.already_revoked { "already_revoked" } else { "ok" },
                    "key revoked"
                );
                Ok(revocation)
            })
            .await
        })
        .await
    }

    /// Revokes every unrevoked key with all `labels` (and `owner`), or with
    /// `dry_run` only says which. Returns the ids.
    ///
    /// The keys are found, and each checked against the caller, before the
    /// write turn (a dry run never takes it): reading and checking thousands
    /// of keys inside it would hold up every write queued behind, an
    /// emergency revocation among them. The turn then re-checks the same
    /// keys against the roles as they are now (no I/O) and revokes, in one
    /// set-based transaction, exactly those of them still unrevoked: a key
    /// minted after the read is never revoked unchecked; call again for it.
    /// Bulk revocations also queue for the turn one at a time, so a
    /// single-key write waits behind one of them at most.
    ///
    /// # Errors
    /// `InvalidArgument` without labels (a bulk revoke must be targeted);
    /// `FailedPrecondition` when more than [`MAX_BULK_REVOKE`] keys match;
    /// `PermissionDenied` when a matching key is broader than the caller's.
    /// Nothing is revoked then.
    pub async fn revoke_matching(
        &self,
        caller: &Caller,
        labels: &BTreeMap<String, String>,
        owner: Option<&str>,
        reason: &str,
        dry_run: bool,
    ) -> Result<Vec<KeyId>, ServiceError> {
        let target = format!("keys with labels {labels:?} and owner {owner:?}");
        self.logged(AuditAction::Revoke, caller, &target, async {
            if labels.is_empty() {
                return Err(ServiceError::invalid(
                    "labels",
                    "at least one label is required",
                ));
            }
            let matching = self
                .store
                .unrevoked_matching(labels, owner, MAX_BULK_REVOKE + 1)
                .await?;
            if matching.len() > MAX_BULK_REVOKE {
                return Err(ServiceError::FailedPrecondition(format!(
                    "more than {MAX_BULK_REVOKE} unrevoked keys match, the most one bulk revoke may \
                     revoke; nothing was revoked: narrow the filter (another label, or an owner)"
                )));
            }
            // What a key holds never changes after minting, only its roles may:
            // the records read here serve the re-check in the write turn too.
            let checked = if caller.is_root {
                None
            } else {
                let keys = self.store.get_keys(&matching).await?;
                for key in &keys {
                    check_may_manage(&self.index, caller, key)?;
                }
                Some(keys)
            };
            if dry_run {
                tracing::info!(action = AuditAction::Revoke.as_str(), actor = %caller.id, target = %target, outcome = "dry_run", count = matching.len(), "bulk revocation tried");
                return Ok(matching);
            }
            let bulk_turn = self.bulk.clone().lock_owned().await;
            let (caller_copy, reason, target) = (caller.clone(), reason.to_owned(), target.clone());
            self.commit(caller, move |store, index, now| async move {
                // Held until this write ends, even if the request is cancelled.
                let _bulk_turn = bulk_turn;
                let caller = caller_copy;
                // A role may have gained permissions since the check.
                for key in checked.iter().flatten() {
                    check_may_manage(&index, &caller, key)?;
                }
                let ids = store
                    .revoke_keys(&matching, &reason, caller.actor(), now)
                    .await?;
                index.apply(ids.iter().copied().map(Change::KeyRemoved));
                tracing::info!(action = AuditAction::Revoke.as_str(), actor = %caller.id, target = %target, outcome = "ok", count = ids.len(), "keys revoked in bulk");
                Ok(ids)
            })
            .await
        })
        .await
    }

    /// Creates a role.
    ///
    /// # Errors
    /// `InvalidArgument` for a taken name or `*`; `PermissionDenied` for a
    /// permission the caller may not grant.
    pub async fn create_role(&self, caller: &Caller, new: NewRole) -> Result<Role, ServiceError> {
        let target = new.name.clone();
        self.logged(AuditAction::RoleCreate, caller, &target, async {
            refuse_global_wildcard(&new.permissions)?;
            caller.check_may_grant(&new.permissions)?;
            let role = Role {
                name: new.name,
                description: new.description,
                permissions: new.permissions.into(),
                max_ttl: new.max_ttl,
                rate_limit: new.rate_limit,
                builtin: false,
                created_at: Timestamp::from_millis(0),
                updated_at: Timestamp::from_millis(0),
            };
            let (actor, creator) = (caller.actor(), caller.id);
            self.commit(caller, move |store, index, now| async move {
                let role = Role {
                    created_at: now,
                    updated_at: now,
                    ..role
                };
                store.create_role(&role, actor).await?;
                index.apply([Change::RoleUpserted(role.clone())]);
                tracing::info!(action = AuditAction::RoleCreate.as_str(), actor = %creator, target = %role.name, outcome = "ok", "role created");
                Ok(role)
            })
            .await
        })
        .await
    }

    /// The role with this name.
    ///
    /// # Errors
    /// `NotFound` for an unknown role.
    pub fn role(&self, name: &RoleName) -> Result<Role, ServiceError> {
        self.index
            .role(name)
            .ok_or_else(|| ServiceError::NotFound(format!("role {name} not found")))
    }

    /// Every role, by name.
    ///
    /// # Errors
    /// On a store failure.
    pub async fn list_roles(&self) -> Result<Vec<Role>, ServiceError> {
        self.read(self.store.list_roles().await)
    }

    /// Changes a role; the next Validate of every key holding it sees the change.
    ///
    /// # Errors
    /// `NotFound`, `FailedPrecondition` for a built-in role, `InvalidArgument`
    /// for `*`, `PermissionDenied` for a permission the caller may not grant.
    pub async fn update_role(
        &self,
        caller: &Caller,
        name: &RoleName,
        update: RoleUpdate,
    ) -> Result<Role, ServiceError> {
        self.logged(AuditAction::RoleUpdate, caller, name, async {
            refuse_global_wildcard(&update.add_permissions)?;
            caller.check_may_grant(&update.add_permissions)?;
            let (actor, caller_copy, name) = (caller.actor(), caller.clone(), name.clone());
            self.commit(caller, move |store, index, now| async move {
                check_may_edit_role(&index, &caller_copy, &name)?;
                let role = store.update_role(&name, &update, actor, now).await?;
                index.apply([Change::RoleUpserted(role.clone())]);
                tracing::info!(action = AuditAction::RoleUpdate.as_str(), actor = %caller_copy.id, target = %name, outcome = "ok", "role updated");
                Ok(role)
            })
            .await
        })
        .await
    }

    /// Deletes a role that no key holds.
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` for a built-in or held role.
    pub async fn delete_role(&self, caller: &Caller, name: &RoleName) -> Result<(), ServiceError> {
        self.logged(AuditAction::RoleDelete, caller, name, async {
            let (actor, caller_copy, name) = (caller.actor(), caller.clone(), name.clone());
            self.commit(caller, move |store, index, now| async move {
                check_may_edit_role(&index, &caller_copy, &name)?;
                store.delete_role(&name, actor, now).await?;
                index.apply([Change::RoleRemoved(name.clone())]);
                tracing::info!(action = AuditAction::RoleDelete.as_str(), actor = %caller_copy.id, target = %name, outcome = "ok", "role deleted");
                Ok(())
            })
            .await
        })
        .await
    }

    /// A page of the audit log.
    ///
    /// # Errors
    /// On a store failure.
    pub async fn audit(&self, query: &AuditQuery) -> Result<AuditPage, ServiceError> {
        self.read(self.store.list_audit(query).await)
    }
}

/// Refuses a change to `key` by a caller that may not grant everything
/// the key holds, or whose scope does not include it
/// ([`crate::scope`]): a narrow admin key may manage only narrower keys, of
/// its own owner and tenant.
fn check_may_manage(index: &Index, caller: &Caller, key: &KeyRecord) -> Result<(), ServiceError> {
    if caller.is_root {
        return Ok(());
    }
    caller.scope.check_contains(key)?;
    // A role deleted since the key was minted grants nothing any more.
    let roles: Vec<Role> = key
        .settings
        .roles
        .iter()
        .filter_map(|name| index.role(name))
        .collect();
    let held = roles
        .iter()
        .flat_map(|role| role.permissions.iter())
        .chain(&key.settings.permissions);
    caller.check_may_grant(held).map_err(|_| {
        ServiceError::PermissionDenied(format!(
            "key {} holds permissions the caller's key does not; only a broader key may change it",
            key.id
        ))
    })
}

/// Refuses a change to role `name` by a caller that could not have created
/// it: stripping or re-limiting a role weakens the broader keys holding it,
/// and a narrow admin key may manage only what is within its own reach.
fn check_may_edit_role(
    index: &Index,
    caller: &Caller,
    name: &RoleName,
) -> Result<(), ServiceError> {
    match index.role(name) {
        Some(role) if !caller.is_root => caller.check_may_grant(role.permissions.iter()).map_err(|_| {
            ServiceError::PermissionDenied(format!(
                "role {name} holds permissions the caller's key does not; only a broader key may change it"
            ))
        }),
        // Unknown roles are reported by the store; root may change any role.
        _ => Ok(()),
    }
}

/// The shortest max TTL among `roles`, and the role that sets it.
fn lifetime_cap(roles: &[Role]) -> Option<(Duration, &RoleName)> {
    roles
        .iter()
        .filter_map(|role| role.max_ttl.map(|cap| (cap, &role.name)))
        .min_by_key(|(cap, _)| *cap)
}

/// `*` alone grants everything; only built-in roles may hold it.
fn refuse_global_wildcard(permissions: &[Permission]) -> Result<(), ServiceError> {
    if permissions.iter().any(Permission::is_global_wildcard) {
        return Err(ServiceError::invalid(
            "permissions",
            "`*` alone is reserved for built-in roles",
        ));
    }
    Ok(())
}

/// The caller's key as the index holds it, if it is live at `now`. With
/// replicas it may have been revoked on another one a moment ago, so the
/// database, the only authority, is asked too.
async fn live_caller(
    store: &Store,
    index: &Index,
    caller: KeyId,
    now: Timestamp,
) -> Result<Option<Arc<IndexedKey>>, StoreError> {
    let current = index
        .get(caller)
        .filter(|key| key.revoked_at.is_none() && key.expires_at.is_none_or(|at| at > now));
    let live =
        current.is_some() && (!store.has_change_feed() || store.key_is_live(caller, now).await?);
    Ok(current.filter(|_| live))
}

/// The refusal of a write whose caller's key is no longer live.
fn caller_gone() -> ServiceError {
    ServiceError::Unauthenticated("the caller's key was revoked or expired")
}

/// Refuses a write whose caller (`current`) no longer holds everything in
/// `held`, what it was authorized with: a role of the caller's may have lost
/// a permission while the write waited, and it runs only with what the
/// caller still holds.
fn check_still_holds(
    index: &Index,
    current: &IndexedKey,
    held: &[Permission],
) -> Result<(), ServiceError> {
    let now_held = index.entitlements(current).permissions;
    match held
        .iter()
        .find(|permission| !now_held.iter().any(|p| p.grants(permission)))
    {
        Some(lost) => Err(ServiceError::PermissionDenied(format!(
            "the caller's key no longer holds {lost} (its roles changed while this write \
             waited); nothing was changed"
        ))),
        None => Ok(()),
    }
}

fn generate(prefix: &Prefix) -> Result<MintedKey, ServiceError> {
    MintedKey::generate(prefix)
        .map_err(|error| ServiceError::Internal(format!("OS random source failed: {error}")))
}

fn upserted(key: &KeyRecord, minted: &MintedKey) -> Change {
    Change::KeyUpserted(Arc::new(IndexedKey::new(key, minted.digest)))
}

mod group;
mod trust;

pub use trust::ExchangeFailure;

#[cfg(test)]
mod tests;
