//! Group commit of mints. Mints that queue up while the write turn is taken
//! (by an earlier group, or any other write) are committed together when it
//! comes: one transaction and one fsync for all of them instead of one each,
//! with an audit record per key all the same. A lone mint is a group of one
//! and commits at once: there is no timer, only the queue that forms while
//! the turn is busy.
//!
//! The group is committed by a task of its own, like every other write
//! ([`Lifecycle::commit`](super::Lifecycle)), so a caller that goes away
//! changes nothing about what commits: a mint that was queued lands in
//! both the store and the index, or (on a failure) in neither.

use std::{
    collections::{HashMap, hash_map::Entry},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::sync::oneshot;

use super::{MINT_ATTEMPTS, Minted, check_still_holds, generate, live_caller, upserted};
use crate::{
    auth::Caller,
    clock::Clock,
    error::ServiceError,
    index::Index,
    key::{KeyId, MintedKey},
    model::{Actor, AuditAction, KeySettings},
    permission::Permission,
    store::{Grouped, NewKey, Store, StoreError},
};

/// The most mints one transaction writes. It bounds how long a write queued
/// behind a group (an emergency revocation) waits, a few milliseconds; a
/// longer queue goes on in the next turn.
pub(super) const MAX_GROUP: usize = 256;

/// A mint waiting for the write turn: checked and authorized, its key not
/// yet drawn.
struct PendingMint {
    settings: KeySettings,
    /// The caller's key id, checked again in the turn.
    caller: KeyId,
    /// What the caller was authorized with, which it must still hold then.
    held: Vec<Permission>,
    reply: oneshot::Sender<Result<Minted, ServiceError>>,
    /// The RPC's span, so the mint's log lines stay in it.
    span: tracing::Span,
}

/// A mint of the group whose key is drawn: the caller to answer and the
/// plaintext to hand over once it is committed.
struct Drawn {
    caller: KeyId,
    reply: oneshot::Sender<Result<Minted, ServiceError>>,
    span: tracing::Span,
    minted: MintedKey,
}

/// The mints queued for the write turn, and what committing them needs.
#[derive(Clone)]
pub(super) struct MintQueue {
    pending: Arc<Mutex<Vec<PendingMint>>>,
    store: Arc<Store>,
    index: Arc<Index>,
    clock: Arc<dyn Clock>,
    writes: Arc<tokio::sync::Mutex<()>>,
}

impl MintQueue {
    pub(super) fn new(
        store: Arc<Store>,
        index: Arc<Index>,
        clock: Arc<dyn Clock>,
        writes: Arc<tokio::sync::Mutex<()>>,
    ) -> Self {
        Self {
            pending: Arc::default(),
            store,
            index,
            clock,
            writes,
        }
    }

    /// Mints a key with `settings` for `caller` (already authorized) in the
    /// next group, and waits for it.
    pub(super) async fn mint(
        &self,
        caller: &Caller,
        settings: KeySettings,
    ) -> Result<Minted, ServiceError> {
        let (reply, answer) = oneshot::channel();
        self.push(PendingMint {
            settings,
            caller: caller.id,
            held: caller.permissions.clone(),
            reply,
            span: tracing::Span::current(),
        });
        answer
            .await
            .unwrap_or_else(|_| Err(ServiceError::Internal("mint task failed".to_owned())))
    }

    /// How many mints wait for the turn.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Queues `mint`. The first of a queue starts the task that commits it,
    /// so a non-empty queue always has one task on its way to drain it.
    /// Nothing awaits between the two: a caller cancelled here leaves no
    /// mint stranded.
    fn push(&self, mint: PendingMint) {
        let first = {
            let mut pending = self.lock();
            pending.push(mint);
            pending.len() == 1
        };
        if first {
            tokio::spawn(self.clone().lead());
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<PendingMint>> {
        // Only pushes and drains happen under it, which leave the queue whole.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the write turn, then commits what queued up meanwhile (up
    /// to [`MAX_GROUP`]). Mints that queue during the commit form the next
    /// group. What is left over goes to a next task, queued for the turn
    /// behind the writes already waiting: a stream of mints never holds
    /// the turn for more than one group.
    fn lead(self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        // Boxed: it spawns itself, which an `async fn` cannot.
        Box::pin(async move {
            let _turn = self.writes.clone().lock_owned().await;
            let group: Vec<PendingMint> = {
                let mut pending = self.lock();
                let size = pending.len().min(MAX_GROUP);
                let group = pending.drain(..size).collect();
                if !pending.is_empty() {
                    tokio::spawn(self.clone().lead());
                }
                group
            };
            self.commit(group).await;
        })
    }

    /// Commits `group` in the write turn: each caller is checked as
    /// [`Lifecycle::commit`](super::Lifecycle) checks it (the database
    /// asked once per distinct caller on PostgreSQL), then every mint still
    /// allowed is written in one transaction; after it commits the index
    /// gets the keys, in order, and then each caller its answer. A key
    /// whose random id is taken is drawn again and written in a following
    /// transaction, without failing the others. A database failure fails
    /// every mint of the transaction, none of which was written then.
    async fn commit(&self, group: Vec<PendingMint>) {
        let now = self.clock.now();
        let mut callers = HashMap::new();
        for mint in &group {
            if let Entry::Vacant(unchecked) = callers.entry(mint.caller) {
                match live_caller(&self.store, &self.index, mint.caller, now).await {
                    Ok(current) => {
                        unchecked.insert(current);
                    }
                    Err(error) => {
                        return fail(group.into_iter().map(|mint| mint.reply), error);
                    }
                }
            }
        }
        let mut drawn = Vec::with_capacity(group.len());
        let mut keys = Vec::with_capacity(group.len());
        for mint in group {
            let allowed = match &callers[&mint.caller] {
                Some(current) => check_still_holds(&self.index, current, &mint.held),
                None => Err(super::caller_gone()),
            };
            match allowed.and_then(|()| generate(&mint.settings.prefix)) {
                Ok(minted) => {
                    keys.push((
                        NewKey {
                            id: minted.id,
                            digest: minted.digest,
                            settings: mint.settings,
                            created_by: Some(mint.caller),
                        },
                        Actor::Key(mint.caller),
                    ));
                    drawn.push(Drawn {
                        caller: mint.caller,
                        reply: mint.reply,
                        span: mint.span,
                        minted,
                    });
                }
                Err(refused) => {
                    let _ = mint.reply.send(Err(refused));
                }
            }
        }
        for attempt in 1..=MINT_ATTEMPTS {
            if keys.is_empty() {
                return;
            }
            let outcomes = match self
                .store
                .insert_keys_grouped(std::mem::take(&mut keys), now)
                .await
            {
                Ok(outcomes) => outcomes,
                Err(error) => return fail(drawn.into_iter().map(|mint| mint.reply), error),
            };
            let mut committed = Vec::with_capacity(outcomes.len());
            for (mut mint, outcome) in std::mem::take(&mut drawn).into_iter().zip(outcomes) {
                let mut key = match outcome {
                    Grouped::Written(record) => {
                        committed.push((mint, record));
                        continue;
                    }
                    Grouped::IdTaken(key) => key,
                };
                mint.span.in_scope(|| {
                    tracing::warn!(key_id = %key.id, "random key id taken; drawing again");
                });
                let fresh = if attempt < MINT_ATTEMPTS {
                    generate(&key.settings.prefix)
                } else {
                    Err(ServiceError::Internal(
                        "could not draw an unused key id".to_owned(),
                    ))
                };
                match fresh {
                    Ok(minted) => {
                        (key.id, key.digest) = (minted.id, minted.digest);
                        mint.minted = minted;
                        keys.push((key, Actor::Key(mint.caller)));
                        drawn.push(mint);
                    }
                    Err(error) => {
                        let _ = mint.reply.send(Err(error));
                    }
                }
            }
            self.index.apply(
                committed
                    .iter()
                    .map(|(mint, record)| upserted(record, &mint.minted)),
            );
            for (mint, key) in committed {
                mint.span.in_scope(|| {
                    tracing::info!(action = AuditAction::Mint.as_str(), actor = %mint.caller, target = %key.id, outcome = "ok", "key minted");
                });
                // A caller that went away no longer waits; its key stays.
                let _ = mint.reply.send(Ok(Minted {
                    key,
                    plaintext: mint.minted.plaintext,
                }));
            }
        }
    }
}

/// Answers every one of `replies` with `error`, which failed them all
/// together.
fn fail(
    replies: impl IntoIterator<Item = oneshot::Sender<Result<Minted, ServiceError>>>,
    error: StoreError,
) {
    let error = Arc::new(error);
    for reply in replies {
        let _ = reply.send(Err(StoreError::Shared(error.clone()).into()));
    }
}
