//! The key lifecycle behind the admin RPCs: mint, inspect, rotate, revoke.
//!
//! Each operation checks its input against the current state, makes one
//! store transaction (the change and its audit record), then applies the
//! resulting [`Change`]s to the index, so the next Validate sees it.

use std::{sync::Arc, time::Duration};

use crate::{
    clock::{Clock, Timestamp},
    error::ServiceError,
    index::Index,
    key::{KeyId, MintedKey, PlaintextKey, Prefix},
    model::{Actor, Change, IndexedKey, KeyRecord, KeySettings, Labels},
    permission::RoleName,
    store::{KeyPage, KeyQuery, NewKey, Revocation, Rotation, Store, StoreError},
};

/// When a new key stops working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Never,
    /// A lifetime from the moment of minting.
    Ttl(Duration),
    At(Timestamp),
}

/// A checked mint request.
#[derive(Debug, Clone)]
pub struct MintRequest {
    pub prefix: Prefix,
    pub roles: Vec<RoleName>,
    pub labels: Labels,
    pub owner: String,
    pub description: String,
    pub expiry: Expiry,
}

/// A new key and its plaintext, shown once.
#[derive(Debug)]
pub struct Minted {
    pub key: KeyRecord,
    pub plaintext: PlaintextKey,
}

/// A rotation and the successor's plaintext, shown once.
#[derive(Debug)]
pub struct Rotated {
    pub rotation: Rotation,
    pub plaintext: PlaintextKey,
}

/// How many times mint draws a new id when the random one is taken. With
/// 64-bit ids a second draw is already astronomically unlikely.
const MINT_ATTEMPTS: usize = 3;

/// Admin operations over the store and the index.
pub struct Lifecycle {
    store: Arc<Store>,
    index: Arc<Index>,
    clock: Arc<dyn Clock>,
}

impl Lifecycle {
    /// Operations writing to `store` and keeping `index` current.
    pub fn new(store: Arc<Store>, index: Arc<Index>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            index,
            clock,
        }
    }

    /// The time according to the injected clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Mints a key.
    ///
    /// # Errors
    /// `InvalidArgument` for an unknown role or an expiry not in the future.
    pub async fn mint(&self, actor: Actor, request: MintRequest) -> Result<Minted, ServiceError> {
        if let Some(unknown) = request.roles.iter().find(|role| !self.index.has_role(role)) {
            return Err(ServiceError::invalid(
                "roles",
                format!("role {unknown} does not exist"),
            ));
        }
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
        let settings = KeySettings {
            prefix: request.prefix,
            roles: request.roles,
            labels: request.labels,
            owner: request.owner,
            description: request.description,
            expires_at,
        };
        for _ in 0..MINT_ATTEMPTS {
            let minted = generate(&settings.prefix)?;
            let new_key = NewKey {
                id: minted.id,
                digest: minted.digest,
                settings: settings.clone(),
                created_by: actor.key_id(),
            };
            match self.store.insert_key(new_key, actor, now).await {
                Ok(key) => {
                    self.index.apply([upserted(&key, &minted)]);
                    tracing::info!(key_id = %key.id, actor = ?actor.key_id(), "key minted");
                    return Ok(Minted {
                        key,
                        plaintext: minted.plaintext,
                    });
                }
                Err(StoreError::IdCollision(id)) => {
                    tracing::warn!(key_id = %id, "random key id taken; drawing again")
                }
                Err(other) => return Err(other.into()),
            }
        }
        Err(ServiceError::Internal(
            "could not draw an unused key id".to_owned(),
        ))
    }

    /// One key's metadata.
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    pub async fn get(&self, id: KeyId) -> Result<KeyRecord, ServiceError> {
        Ok(self.store.get_key(id).await?)
    }

    /// A page of keys.
    ///
    /// # Errors
    /// On a store failure.
    pub async fn list(&self, query: &KeyQuery) -> Result<KeyPage, ServiceError> {
        Ok(self.store.list_keys(query, self.now()).await?)
    }

    /// Rotates key `id`: a successor with the same settings; the old key
    /// works for `grace` more (zero revokes it at once).
    ///
    /// # Errors
    /// `NotFound` for an unknown id; `FailedPrecondition` for a revoked,
    /// expired or already rotated key.
    pub async fn rotate(
        &self,
        actor: Actor,
        id: KeyId,
        grace: Duration,
    ) -> Result<Rotated, ServiceError> {
        // The prefix never changes, so the successor can be drawn before the
        // transaction that re-checks the old key's state.
        let prefix = self.store.get_key(id).await?.settings.prefix;
        let minted = generate(&prefix)?;
        let rotation = self
            .store
            .rotate_key(id, (minted.id, minted.digest), grace, actor, self.now())
            .await?;
        let previous = &rotation.previous;
        let previous_change = match self.index.get(previous.id) {
            _ if previous.revoked_at.is_some() => Change::KeyRemoved(previous.id),
            Some(entry) => Change::KeyUpserted(Arc::new(IndexedKey::new(previous, entry.digest))),
            None => Change::KeyRemoved(previous.id),
        };
        self.index
            .apply([upserted(&rotation.successor, &minted), previous_change]);
        tracing::info!(key_id = %id, successor = %rotation.successor.id, grace = %humantime::format_duration(grace), "key rotated");
        Ok(Rotated {
            rotation,
            plaintext: minted.plaintext,
        })
    }

    /// Revokes key `id`; idempotent.
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    pub async fn revoke(
        &self,
        actor: Actor,
        id: KeyId,
        reason: &str,
    ) -> Result<Revocation, ServiceError> {
        let revocation = self.store.revoke_key(id, reason, actor, self.now()).await?;
        self.index.apply([Change::KeyRemoved(id)]);
        if !revocation.already_revoked {
            tracing::info!(key_id = %id, actor = ?actor.key_id(), "key revoked");
        }
        Ok(revocation)
    }
}

fn generate(prefix: &Prefix) -> Result<MintedKey, ServiceError> {
    MintedKey::generate(prefix)
        .map_err(|error| ServiceError::Internal(format!("OS random source failed: {error}")))
}

fn upserted(key: &KeyRecord, minted: &MintedKey) -> Change {
    Change::KeyUpserted(Arc::new(IndexedKey::new(key, minted.digest)))
}
