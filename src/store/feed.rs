//! The change feed between replicas on PostgreSQL: every write transaction
//! notifies channel [`CHANNEL`] with what it changed, and each replica's
//! [`Subscription`] hears it once the transaction commits.
//!
//! A notification names what changed, never how: the replica reloads those
//! rows ([`super::Store::changes_for`]), so a late or repeated notification
//! can only ever bring the index to the database's current state.
//! Notifications sent while a replica was disconnected are lost from the
//! feed, but every one is also kept in the `change_log` table for
//! [`CHANGE_LOG_RETENTION`], by the id of the transaction that wrote it. A
//! heartbeat ([`Subscription::ping`]) answers with a [`Watermark`]: the
//! oldest transaction still running then. Once the next heartbeat has come
//! back, every transaction older than it has been heard; so a replica that
//! reconnects reads the log from its last confirmed watermark
//! ([`super::Store::changed_since`]) and catches up, rather than reloading
//! everything (see [`crate::replica`]).
//!
//! LISTEN needs a session of its own: point replicas at PostgreSQL itself
//! or at a pooler in session mode, never at transaction pooling (PgBouncer's
//! `pool_mode = transaction` drops notifications silently).

use std::{collections::BTreeSet, str::FromStr, time::Duration};

use sqlx::postgres::PgListener;

use super::StoreError;
use crate::{key::KeyId, permission::RoleName};

/// The PostgreSQL channel keyward's writes notify.
pub const CHANNEL: &str = "keyward_changes";

/// How long the change log keeps what the feed announced: far longer than
/// a replica may catch up after ([`crate::replica`] reloads in full past a
/// few minutes), so that no clock or pruning schedule makes it miss a row.
pub const CHANGE_LOG_RETENTION: Duration = Duration::from_hours(1);

/// The oldest transaction still running at a heartbeat: every change from
/// an older one had committed (or rolled back) by then. Where a replica
/// reads the change log from when it catches up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watermark(pub(super) u64);

/// Key ids per notification: a payload must stay under PostgreSQL's 8000
/// bytes, and an id takes 12.
const IDS_PER_PAYLOAD: usize = 500;

/// What a write changed, as sent on the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// These keys were minted, changed, rotated or revoked.
    Keys(Vec<KeyId>),
    /// This role was created, changed or deleted.
    Role(RoleName),
}

impl Topic {
    /// The notification payloads: `keys:ID,ID,…` (in chunks) or `role:NAME`.
    pub(super) fn payloads(self) -> Vec<String> {
        match self {
            Self::Keys(ids) => ids
                .chunks(IDS_PER_PAYLOAD)
                .map(|chunk| {
                    let ids: Vec<String> = chunk.iter().map(ToString::to_string).collect();
                    format!("keys:{}", ids.join(","))
                })
                .collect(),
            Self::Role(name) => vec![format!("role:{name}")],
        }
    }
}

/// Everything a run of notifications named, each key and role once.
///
/// A replica reloads what it has received as one batch, in one write turn
/// (see [`crate::lifecycle::Lifecycle::reload`]): however fast writes come,
/// catching up costs one turn, not one per notification. Merging is sound
/// because a notification names what changed, never how: reloading a key
/// once brings it to its current state whatever happened to it meanwhile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// Each is reloaded if it can still validate, else dropped from the index.
    pub keys: BTreeSet<KeyId>,
    /// Each is reloaded, or dropped from the index if it was deleted.
    pub roles: BTreeSet<RoleName>,
}

impl Changed {
    /// Adds what `topic` names.
    pub fn add(&mut self, topic: Topic) {
        match topic {
            Topic::Keys(ids) => self.keys.extend(ids),
            Topic::Role(name) => {
                self.roles.insert(name);
            }
        }
    }

    /// Adds everything `other` names.
    pub fn merge(&mut self, other: &Changed) {
        self.keys.extend(other.keys.iter().copied());
        self.roles.extend(other.roles.iter().cloned());
    }

    /// Nothing to reload.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.roles.is_empty()
    }
}

impl From<Topic> for Changed {
    fn from(topic: Topic) -> Self {
        let mut changed = Self::default();
        changed.add(topic);
        changed
    }
}

/// A payload keyward did not write.
#[derive(Debug, thiserror::Error)]
#[error("not a keyward change notification: {0:?}")]
pub struct UnknownPayload(String);

impl FromStr for Topic {
    type Err = UnknownPayload;

    fn from_str(payload: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownPayload(payload.chars().take(64).collect());
        match payload.split_once(':') {
            Some(("keys", ids)) => ids
                .split(',')
                .map(|id| id.parse().map_err(|_| unknown()))
                .collect::<Result<_, _>>()
                .map(Self::Keys),
            Some(("role", name)) => name.parse().map(Self::Role).map_err(|_| unknown()),
            _ => Err(unknown()),
        }
    }
}

/// A replica's connection listening on [`CHANNEL`].
#[derive(Debug)]
pub struct Subscription {
    listener: PgListener,
}

impl Subscription {
    /// Connects (giving up after `timeout`) and starts listening.
    pub(super) async fn connect(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let connect = async {
            let mut listener = PgListener::connect(url).await?;
            // The replica decides when to reconnect: it must resync first.
            listener.eager_reconnect(false);
            listener.listen(CHANNEL).await?;
            Ok(Self { listener })
        };
        tokio::time::timeout(timeout, connect)
            .await
            .unwrap_or(Err(StoreError::Timeout(timeout)))
    }

    /// The next change, waiting for one; `Ok(None)` when the connection was
    /// lost (changes may have been missed).
    ///
    /// Cancel-safe: a notification is taken off the connection whole.
    ///
    /// # Errors
    /// When the connection fails other than by closing, or a payload is not
    /// one this version of keyward writes (from a newer version during a
    /// rolling upgrade, say): a change may have been missed either way.
    pub async fn next(&mut self) -> Result<Option<Topic>, StoreError> {
        match self.listener.try_recv().await? {
            Some(notification) => Ok(Some(notification.payload().parse()?)),
            None => Ok(None),
        }
    }

    /// Adds every change already received to `changed`, without waiting.
    ///
    /// # Errors
    /// A payload this version does not read, as for [`Subscription::next`].
    pub fn take_received(&mut self, changed: &mut Changed) -> Result<(), StoreError> {
        while let Some(notification) = self.listener.next_buffered() {
            changed.add(notification.payload().parse()?);
        }
        Ok(())
    }

    /// A round trip on the listening connection itself, within `timeout`.
    /// When it succeeds, every change committed before it was sent has been
    /// received (PostgreSQL delivers notifications before the reply).
    /// Returns the oldest transaction running as it was answered: once a
    /// later ping has succeeded, every change older than that was received.
    ///
    /// # Errors
    /// When the connection is dead or too slow.
    pub async fn ping(&mut self, timeout: Duration) -> Result<Watermark, StoreError> {
        let ping =
            sqlx::query_scalar::<_, String>("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                .fetch_one(&mut self.listener);
        match tokio::time::timeout(timeout, ping).await {
            Ok(Ok(xmin)) => xmin
                .parse()
                .map(Watermark)
                .map_err(|_| StoreError::Corrupt {
                    table: "pg_current_snapshot()",
                    what: "transaction id",
                }),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_in_chunks_under_the_size_limit() {
        let ids: Vec<KeyId> = (0..1_234).map(KeyId::from_u64).collect();
        let payloads = Topic::Keys(ids.clone()).payloads();
        assert_eq!(payloads.len(), 3);
        let mut back = Vec::new();
        for payload in &payloads {
            assert!(payload.len() < 8000, "{}", payload.len());
            let Topic::Keys(chunk) = payload.parse().unwrap() else {
                panic!("keys expected")
            };
            back.extend(chunk);
        }
        assert_eq!(back, ids);

        let role: RoleName = "deployer".parse().unwrap();
        let payloads = Topic::Role(role.clone()).payloads();
        assert_eq!(payloads, ["role:deployer"]);
        assert_eq!(payloads[0].parse::<Topic>().unwrap(), Topic::Role(role));
    }

    #[test]
    fn changes_merge_each_key_and_role_once() {
        let role: RoleName = "deployer".parse().unwrap();
        let mut changed = Changed::from(Topic::Keys(vec![KeyId::from_u64(2), KeyId::from_u64(1)]));
        assert!(!changed.is_empty());
        changed.add(Topic::Role(role.clone()));
        changed.add(Topic::Keys(vec![KeyId::from_u64(1), KeyId::from_u64(3)]));
        changed.add(Topic::Role(role.clone()));
        assert_eq!(
            changed.keys.into_iter().collect::<Vec<_>>(),
            [1, 2, 3].map(KeyId::from_u64)
        );
        assert_eq!(changed.roles.into_iter().collect::<Vec<_>>(), [role]);
        assert!(Changed::default().is_empty());
    }

    #[test]
    fn foreign_payloads_are_refused() {
        for payload in [
            "",
            "keys:",
            "keys:not-an-id",
            "role:Not A Role",
            "other:x",
            "hello",
        ] {
            assert!(payload.parse::<Topic>().is_err(), "{payload}");
        }
    }
}
