//! The lifecycle of trust policies (create, read, update, delete), the
//! keys an OIDC exchange mints, and a key revoking itself.
//!
//! A policy follows the no-escalation rule like a mint: it may grant only
//! what its creator could grant, and only a caller who could have created
//! a policy may change or delete it.

use tracing::Instrument as _;

use super::{
    Lifecycle, MINT_ATTEMPTS, Minted, generate, lifetime_cap, refuse_global_wildcard, upserted,
};
use crate::{
    auth::Caller,
    error::ServiceError,
    index::Index,
    model::{AuditAction, Change, KeySettings, Labels, Role},
    oidc::{Refusal, verify::Verified},
    store::{NewKey, Replay, Revocation, StoreError},
    trust::{PolicyName, PolicySpec, TrustPolicy},
};

/// Why an exchange could not mint: refused (like a bad token), or failed.
#[derive(Debug)]
pub enum ExchangeFailure {
    /// Refused; the caller sees the generic denial.
    Refused(Refusal),
    /// The database or the OS failed; worth a retry.
    Failed(ServiceError),
}

impl From<ServiceError> for ExchangeFailure {
    fn from(error: ServiceError) -> Self {
        Self::Failed(error)
    }
}

impl Lifecycle {
    /// Every trust policy, by name.
    ///
    /// # Errors
    /// On a store failure.
    pub async fn list_policies(&self) -> Result<Vec<TrustPolicy>, ServiceError> {
        self.read(self.store.list_policies().await)
    }

    /// The trust policy `name`.
    ///
    /// # Errors
    /// `NotFound`.
    pub async fn policy(&self, name: &PolicyName) -> Result<TrustPolicy, ServiceError> {
        self.read(self.store.get_policy(name).await)
    }

    /// Creates a trust policy.
    ///
    /// # Errors
    /// `InvalidArgument` for an unknown role, a TTL beyond a role's max TTL,
    /// `*`; `PermissionDenied` for a grant the caller may not make or an
    /// owner or tenant outside its scope; `AlreadyExists`.
    pub async fn create_policy(
        &self,
        caller: &Caller,
        name: PolicyName,
        spec: PolicySpec,
    ) -> Result<TrustPolicy, ServiceError> {
        let target = name.clone();
        self.logged(AuditAction::TrustCreate, caller, &target, async {
            self.check_grants(caller, &spec)?;
            // The keys it mints get the creator's owner and tenant, as the
            // keys the creator mints itself would.
            let (owner, labels) = caller.scope.admit_mint(String::new(), spec.labels)?;
            let spec = PolicySpec { labels, ..spec };
            let (actor, creator) = (caller.actor(), caller.id);
            self.commit(caller, move |store, _index, now| async move {
                let policy = TrustPolicy {
                    name,
                    spec,
                    owner,
                    created_by: Some(creator),
                    created_at: now,
                    updated_at: now,
                };
                store.create_policy(&policy, actor).await?;
                tracing::info!(action = AuditAction::TrustCreate.as_str(), actor = %creator, target = %policy.name, outcome = "ok", "trust policy created");
                Ok(policy)
            })
            .await
        })
        .await
    }

    /// Replaces trust policy `name`'s settings.
    ///
    /// # Errors
    /// As [`Lifecycle::create_policy`]; `NotFound`; `PermissionDenied` when
    /// the policy grants what the caller may not.
    pub async fn update_policy(
        &self,
        caller: &Caller,
        name: &PolicyName,
        spec: PolicySpec,
    ) -> Result<TrustPolicy, ServiceError> {
        self.logged(AuditAction::TrustUpdate, caller, name, async {
            self.check_grants(caller, &spec)?;
            self.check_may_manage_policy(caller, &self.policy(name).await?)?;
            let (actor, creator, name) = (caller.actor(), caller.id, name.clone());
            self.commit(caller, move |store, _index, now| async move {
                let policy = store.update_policy(&name, &spec, actor, now).await?;
                tracing::info!(action = AuditAction::TrustUpdate.as_str(), actor = %creator, target = %name, outcome = "ok", "trust policy updated");
                Ok(policy)
            })
            .await
        })
        .await
    }

    /// Deletes trust policy `name`; keys it minted live on until they expire.
    ///
    /// # Errors
    /// `NotFound`; `PermissionDenied` when the policy grants what the caller
    /// may not.
    pub async fn delete_policy(
        &self,
        caller: &Caller,
        name: &PolicyName,
    ) -> Result<(), ServiceError> {
        self.logged(AuditAction::TrustDelete, caller, name, async {
            self.check_may_manage_policy(caller, &self.policy(name).await?)?;
            let (actor, creator, name) = (caller.actor(), caller.id, name.clone());
            self.commit(caller, move |store, _index, now| async move {
                store.delete_policy(&name, actor, now).await?;
                tracing::info!(action = AuditAction::TrustDelete.as_str(), actor = %creator, target = %name, outcome = "ok", "trust policy deleted");
                Ok(())
            })
            .await
        })
        .await
    }

    /// What a policy grants must exist and be the caller's to grant, and its
    /// TTL within every role's cap.
    fn check_grants(&self, caller: &Caller, spec: &PolicySpec) -> Result<(), ServiceError> {
        refuse_global_wildcard(&spec.permissions)?;
        let roles = self.roles(&spec.roles)?;
        caller.check_may_grant(
            roles
                .iter()
                .flat_map(|role| role.permissions.iter())
                .chain(&spec.permissions),
        )?;
        if let Some((cap, role)) = lifetime_cap(&roles)
            && spec.ttl > cap
        {
            return Err(ServiceError::invalid(
                "ttl",
                format!(
                    "role {role} caps key lifetime at {}; give a shorter ttl",
                    humantime::format_duration(cap)
                ),
            ));
        }
        Ok(())
    }

    /// A narrow caller may change only policies whose grants it could make
    /// and that are in its scope: made by it, or of its own owner.
    fn check_may_manage_policy(
        &self,
        caller: &Caller,
        policy: &TrustPolicy,
    ) -> Result<(), ServiceError> {
        if caller.is_root {
            return Ok(());
        }
        let roles: Vec<Role> = policy
            .spec
            .roles
            .iter()
            .filter_map(|name| self.index.role(name))
            .collect();
        let within = caller
            .check_may_grant(
                roles
                    .iter()
                    .flat_map(|role| role.permissions.iter())
                    .chain(&policy.spec.permissions),
            )
            .is_ok();
        let ours = policy.created_by == Some(caller.id)
            || matches!(&caller.scope, crate::scope::Scope::Narrow { owner, .. }
                if !owner.is_empty() && *owner == policy.owner);
        if within && ours {
            Ok(())
        } else {
            Err(ServiceError::PermissionDenied(format!(
                "trust policy {} is outside the caller's scope or grants what the caller's key \
                 does not hold",
                policy.name
            )))
        }
    }

    /// Mints the key of a verified exchange under `policy`: in the write
    /// turn, with the token's replay record in the same transaction.
    ///
    /// # Errors
    /// [`ExchangeFailure::Refused`] for a replayed token or a policy that
    /// cannot mint now (a role deleted, a claim value that cannot be a
    /// label); [`ExchangeFailure::Failed`] otherwise.
    pub async fn mint_exchanged(
        &self,
        policy: &TrustPolicy,
        verified: &Verified,
    ) -> Result<Minted, ExchangeFailure> {
        let (settings, ttl) = exchanged_settings(&self.index, policy, verified)?;
        let creator = policy.created_by;
        let replay = Replay {
            issuer: policy.spec.issuer.as_str().to_owned(),
            jti: verified.jti.clone(),
            expires_at: verified.expires_at,
        };
        let reason = format!(
            "trust policy {}; issuer {}; subject {}; jti {}",
            policy.name, policy.spec.issuer, verified.subject, verified.jti
        );
        let (store, index, clock, writes) = (
            self.store.clone(),
            self.index.clone(),
            self.clock.clone(),
            self.writes.clone(),
        );
        // On its own task, like every write: a cancelled request cannot
        // leave the database changed and the index not.
        let minted = tokio::spawn(
            async move {
                let _turn = writes.lock_owned().await;
                let now = clock.now();
                let settings = KeySettings {
                    expires_at: Some(now.saturating_add(ttl)),
                    ..settings
                };
                for _ in 0..MINT_ATTEMPTS {
                    let minted = generate(&settings.prefix)?;
                    let new_key = NewKey {
                        id: minted.id,
                        digest: minted.digest,
                        settings: settings.clone(),
                        created_by: creator,
                    };
                    match store
                        .insert_exchanged_key(new_key, &replay, &reason, now)
                        .await
                    {
                        Ok(key) => {
                            index.apply([upserted(&key, &minted)]);
                            return Ok(Minted {
                                key,
                                plaintext: minted.plaintext,
                            });
                        }
                        Err(StoreError::IdCollision(_)) => {}
                        Err(StoreError::Replayed) => {
                            return Err(ExchangeFailure::Refused(Refusal::Replayed));
                        }
                        Err(other) => return Err(ServiceError::from(other).into()),
                    }
                }
                Err(ServiceError::Internal("could not draw an unused key id".to_owned()).into())
            }
            .in_current_span(),
        )
        .await
        .map_err(|error| ServiceError::Internal(format!("write task failed: {error}")))?;
        if let Err(ExchangeFailure::Failed(error)) = &minted {
            self.count(error);
        }
        minted
    }

    /// Revokes the caller's own key: how a CI job ends its key before its
    /// TTL. Needs no permission: a key may always give itself up.
    ///
    /// # Errors
    /// `Unauthenticated` when the key was revoked meanwhile.
    pub async fn revoke_self(&self, caller: &Caller) -> Result<Revocation, ServiceError> {
        self.logged(AuditAction::Revoke, caller, &caller.id, async {
            let (actor, id) = (caller.actor(), caller.id);
            self.commit(caller, move |store, index, now| async move {
                let revocation = store.revoke_key(id, "revoked by itself", actor, now).await?;
                index.apply([Change::KeyRemoved(id)]);
                tracing::info!(action = AuditAction::Revoke.as_str(), actor = %id, target = %id, outcome = "ok", "key revoked itself");
                Ok(revocation)
            })
            .await
        })
        .await
    }
}

/// The settings of a key minted under `policy` for `verified`, and its
/// lifetime: the policy's, shortened to the tightest cap of its roles as
/// they are now.
fn exchanged_settings(
    index: &Index,
    policy: &TrustPolicy,
    verified: &Verified,
) -> Result<(KeySettings, std::time::Duration), ExchangeFailure> {
    let unusable = |why: &str| {
        tracing::warn!(policy = %policy.name, why, "trust policy cannot mint");
        ExchangeFailure::Refused(Refusal::PolicyUnusable)
    };
    let roles: Vec<Role> = policy
        .spec
        .roles
        .iter()
        .map(|name| {
            index
                .role(name)
                .ok_or_else(|| unusable("a role it grants was deleted"))
        })
        .collect::<Result<_, _>>()?;
    let ttl = lifetime_cap(&roles).map_or(policy.spec.ttl, |(cap, _)| cap.min(policy.spec.ttl));
    let mut labels = policy.spec.labels.as_map().clone();
    labels.insert("oidc.policy".to_owned(), policy.name.to_string());
    labels.insert("oidc.issuer".to_owned(), policy.spec.issuer.to_string());
    labels.insert("oidc.subject".to_owned(), verified.subject.clone());
    for (name, value) in &verified.matched {
        labels.insert(format!("oidc.claim.{name}"), value.clone());
    }
    let labels = Labels::new(labels).map_err(|_| unusable("a claim value cannot be a label"))?;
    Ok((
        KeySettings {
            roles: policy.spec.roles.clone(),
            permissions: policy.spec.permissions.clone(),
            allowed_cidrs: policy.spec.allowed_cidrs.clone(),
            labels,
            owner: policy.owner.clone(),
            description: format!("exchanged under trust policy {}", policy.name),
            ..KeySettings::default()
        },
        ttl,
    ))
}
