//! Keeping indexes in step with the database: the first initialisation,
//! the snapshot an index starts from, and on PostgreSQL the change feed
//! and what each change it names means for an index now.

use std::{collections::HashMap, sync::Arc, time::Duration};

use sqlx::{AnyConnection, Row, any::AnyRow};
use tokio_stream::StreamExt;

use super::{
    Store, StoreError,
    audit::append_audit,
    feed::{self, CHANGE_LOG_RETENTION, Changed, Topic, Watermark},
    keys::{NewKey, insert_key},
    roles::insert_role,
    rows::{fetch_for_ids, load_roles, with_details},
};

mod snapshot;
use crate::{
    clock::Timestamp,
    key::{KeyDigest, KeyMap},
    model::{Actor, AuditAction, Change, IndexedKey, KeyRecord, KeyState, Profiles, Role},
    permission::RoleName,
};

/// Everything the index needs at start, in the index's own representation.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Keys that can still validate (not revoked, expired or spent), by id.
    pub keys: KeyMap<Arc<IndexedKey>>,
    /// All of them, built-in ones included: validation resolves a key's
    /// roles through the index.
    pub roles: Vec<Role>,
    /// The profiles `keys` hold, one copy of each.
    pub profiles: Profiles,
}

/// Most notifications a replica catches up with from the change log; past
/// that many (minutes of a heavy write load) it resyncs in full.
pub const MAX_CATCH_UP: usize = 100_000;

impl Store {
    /// Whether the built-in roles and first admin key exist.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn is_initialized(&self) -> Result<bool, StoreError> {
        self.count();
        let row = sqlx::query("SELECT 1 FROM keyward_meta WHERE name = 'initialized_at'")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Creates the built-in roles and the first admin key, once.
    ///
    /// # Errors
    /// [`StoreError::AlreadyInitialized`] on the second call.
    pub async fn initialize(
        &self,
        roles: &[Role],
        admin: NewKey,
        now: Timestamp,
    ) -> Result<KeyRecord, StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        let marked = sqlx::query(
            "INSERT INTO keyward_meta (name, value) VALUES ('initialized_at', $1) ON CONFLICT DO NOTHING",
        )
        .bind(now.as_millis().to_string())
        .execute(&mut *tx)
        .await?;
        if marked.rows_affected() == 0 {
            return Err(StoreError::AlreadyInitialized);
        }
        for role in roles {
            insert_role(&mut tx, role).await?;
        }
        let record = insert_key(&mut tx, admin, None, now).await?;
        append_audit(
            &mut tx,
            now,
            Actor::Local,
            AuditAction::Initialize,
            Some(&record.id.to_string()),
            None,
        )
        .await?;
        let mut topics: Vec<Topic> = roles
            .iter()
            .map(|role| Topic::Role(role.name.clone()))
            .collect();
        topics.push(Topic::Keys(vec![record.id]));
        self.notify(&mut tx, topics).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Loads every key that can still validate, and every role, as of one
    /// moment: a single read transaction (`REPEATABLE READ` on PostgreSQL),
    /// so writes may go on meanwhile and none is seen half.
    ///
    /// Linear in the number of rows: one scan of each table, streamed, each
    /// row parsed straight into the index's representation; a key's
    /// details are matched to it through a map of positions by id.
    ///
    /// # Errors
    /// On a database failure or a row keyward could not have written.
    pub async fn load_snapshot(&self, now: Timestamp) -> Result<Snapshot, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.postgres_url.is_some() {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        let roles = load_roles(&mut tx).await?;
        let queries = if self.postgres_url.is_some() {
            &snapshot::POSTGRES
        } else {
            &snapshot::SQLITE
        };
        let mut loading = snapshot::Loading::default();
        {
            let mut chunks = sqlx::query(queries.keys)
                .bind(now.as_millis())
                .fetch(&mut *tx);
            while let Some(chunk) = chunks.next().await.transpose()? {
                loading.keys(chunk.try_get(0)?)?;
            }
        }
        for (detail, query) in queries.details {
            let mut chunks = sqlx::query(query).fetch(&mut *tx);
            while let Some(chunk) = chunks.next().await.transpose()? {
                loading.details(detail, chunk.try_get(0)?)?;
            }
        }
        tx.commit().await?;
        // A second of CPU at a million keys: off the async workers.
        let (keys, profiles) = tokio::task::spawn_blocking(move || loading.finish())
            .await
            .unwrap_or_else(|failed| std::panic::resume_unwind(failed.into_panic()))?;
        Ok(Snapshot {
            keys,
            roles,
            profiles,
        })
    }

    /// Listens to the change feed, on a connection of its own.
    ///
    /// # Errors
    /// [`StoreError::NoFeed`] on SQLite, where this server is the only
    /// writer; otherwise when PostgreSQL cannot be reached within `timeout`.
    pub async fn subscribe(&self, timeout: Duration) -> Result<feed::Subscription, StoreError> {
        let url = self.postgres_url.as_deref().ok_or(StoreError::NoFeed)?;
        feed::Subscription::connect(url, timeout).await
    }

    /// Everything the change log holds from transactions no older than
    /// `since`, or `None` when that is more than [`MAX_CATCH_UP`] notifications
    /// (a full resync is then the cheaper way back).
    ///
    /// # Errors
    /// On a database failure or a payload this version does not read.
    pub async fn changed_since(&self, since: Watermark) -> Result<Option<Changed>, StoreError> {
        let payloads: Vec<String> = sqlx::query_scalar(
            "SELECT payload FROM change_log WHERE xid >= $1::text::xid8 ORDER BY id LIMIT $2",
        )
        .bind(since.0.to_string())
        .bind(i64::try_from(MAX_CATCH_UP + 1).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        if payloads.len() > MAX_CATCH_UP {
            return Ok(None);
        }
        let mut changed = Changed::default();
        for payload in payloads {
            changed.add(payload.parse()?);
        }
        Ok(Some(changed))
    }

    /// Forgets what the change log holds past [`CHANGE_LOG_RETENTION`].
    /// Returns how many notifications it forgot.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn prune_change_log(&self) -> Result<u64, StoreError> {
        let retention = i64::try_from(CHANGE_LOG_RETENTION.as_millis()).unwrap_or(i64::MAX);
        let pruned = sqlx::query(
            "DELETE FROM change_log WHERE at < (extract(epoch FROM now()) * 1000)::BIGINT - $1",
        )
        .bind(retention)
        .execute(&self.pool)
        .await?;
        Ok(pruned.rows_affected())
    }

    /// What the index must do to reflect `changed` as the database holds
    /// it now: keys that can validate are (re)loaded, every other named key
    /// is removed; each role is (re)loaded or removed.
    ///
    /// # Errors
    /// On a database failure or a row keyward could not have written.
    pub async fn changes_for(
        &self,
        changed: &Changed,
        now: Timestamp,
    ) -> Result<Vec<Change>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut to_apply = Vec::with_capacity(changed.keys.len() + changed.roles.len());
        if !changed.keys.is_empty() {
            let texts: Vec<String> = changed.keys.iter().map(ToString::to_string).collect();
            // Revoked keys leave the index whatever else they hold, so they
            // are not read (nor their details): after a bulk revocation of
            // thousands of keys, a replica's reload inside its write turn
            // reads none of them.
            let rows = fetch_for_ids(
                &mut conn,
                "SELECT * FROM api_keys",
                "revoked_at IS NULL AND id",
                &texts,
            )
            .await?;
            let mut live: KeyMap<Arc<IndexedKey>> = with_digests(&mut conn, rows)
                .await?
                .into_iter()
                .filter(|(record, _)| record.state(now) == KeyState::Active)
                .map(|(record, digest)| (record.id, Arc::new(IndexedKey::new(&record, digest))))
                .collect();
            to_apply.extend(changed.keys.iter().map(|id| match live.remove(id) {
                Some(key) => Change::KeyUpserted(key),
                None => Change::KeyRemoved(*id),
            }));
        }
        if !changed.roles.is_empty() {
            let mut current: HashMap<RoleName, Role> = load_roles(&mut conn)
                .await?
                .into_iter()
                .filter(|role| changed.roles.contains(&role.name))
                .map(|role| (role.name.clone(), role))
                .collect();
            to_apply.extend(changed.roles.iter().map(|name| match current.remove(name) {
                Some(role) => Change::RoleUpserted(role),
                None => Change::RoleRemoved(name.clone()),
            }));
        }
        Ok(to_apply)
    }
}

/// [`with_details`] with the digests, which the index needs to verify keys.
async fn with_digests(
    conn: &mut AnyConnection,
    rows: Vec<AnyRow>,
) -> Result<Vec<(KeyRecord, KeyDigest)>, StoreError> {
    Ok(with_details(conn, rows, true)
        .await?
        .into_iter()
        .map(|(record, digest)| (record, digest.expect("with_digest is true")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        key::KeyId,
        model::{KeyProfile, KeySettings, Labels},
        store::{open_postgres, open_temporary},
    };

    on_both_stores!(
        changes_follow_the_database,
        a_change_feed_exactly_where_replicas_may_share,
        the_snapshot_holds_each_live_key_with_its_details_and_shares_profiles
    );

    /// The snapshot, read one table at a time, puts each detail with its
    /// key, leaves out every key that cannot validate, and gives keys
    /// minted alike one profile.
    async fn the_snapshot_holds_each_live_key_with_its_details_and_shares_profiles(
        store: Arc<Store>,
    ) {
        let now = Timestamp::from_millis(1_000_000);
        for name in ["deployer", "reader"] {
            let role = Role {
                name: name.parse().unwrap(),
                description: String::new(),
                permissions: ["deploy:read".parse().unwrap()].into(),
                max_ttl: None,
                rate_limit: None,
                builtin: false,
                created_at: now,
                updated_at: now,
            };
            store.create_role(&role, Actor::Local).await.unwrap();
        }
        let labels = |team: &str| {
            Labels::new(
                [
                    ("team".to_owned(), team.to_owned()),
                    ("env".into(), "prod".into()),
                ]
                .into(),
            )
            .unwrap()
        };
        let settings = |team: &str| KeySettings {
            // Given in another order than the store returns them.
            roles: vec!["reader".parse().unwrap(), "deployer".parse().unwrap()],
            permissions: vec!["ci:run".parse().unwrap(), "build:read".parse().unwrap()],
            allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            labels: labels(team),
            owner: "platform".into(),
            rate_limit: Some(
                crate::rate_limit::RateLimit::new(5, Duration::from_secs(1), 5).unwrap(),
            ),
            max_uses: Some(3),
            ..KeySettings::default()
        };
        let insert = async |n: u8, settings: KeySettings| {
            let key = NewKey {
                id: KeyId::from_u64(n.into()),
                digest: KeyDigest::from_bytes([n; 32]),
                settings,
                created_by: None,
            };
            store.insert_key(key, Actor::Local, now).await.unwrap();
            KeyId::from_u64(n.into())
        };
        let (a, b, c) = (
            insert(1, settings("api")).await,
            insert(2, settings("api")).await,
            insert(3, settings("web")).await,
        );
        let revoked = insert(4, settings("api")).await;
        store
            .revoke_key(revoked, "", Actor::Local, now)
            .await
            .unwrap();
        insert(
            5,
            KeySettings {
                expires_at: Some(now),
                ..KeySettings::default()
            },
        )
        .await;
        let spent = insert(
            6,
            KeySettings {
                max_uses: Some(1),
                ..KeySettings::default()
            },
        )
        .await;
        assert_eq!(store.consume_use(spent).await.unwrap(), Some(0));

        let snapshot = store.load_snapshot(now).await.unwrap();
        let mut keys: Vec<_> = snapshot.keys.into_values().collect();
        keys.sort_by_key(|key| key.id);
        let ids: Vec<KeyId> = keys.iter().map(|key| key.id).collect();
        assert_eq!(ids, [a, b, c], "only the keys that can validate");
        assert_eq!(keys[0].digest.as_bytes(), &[1; 32]);
        assert_eq!(keys[0].expires_at, None);
        assert_eq!(*keys[0].profile, KeyProfile::of(&settings("api")));
        assert_eq!(
            keys[0]
                .profile
                .roles
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["deployer", "reader"]
        );
        assert!(keys[0].profile.capped);
        assert!(
            Arc::ptr_eq(&keys[0].profile, &keys[1].profile),
            "a and b are alike"
        );
        assert_eq!(keys[2].profile.labels, labels("web"));
        assert_eq!(snapshot.profiles.len(), 2);
        assert_eq!(snapshot.roles.len(), 2);
    }

    /// What the server decides by `has_change_feed` (whether to follow a
    /// feed) must match what `subscribe` can deliver.
    async fn a_change_feed_exactly_where_replicas_may_share(store: Arc<Store>) {
        let subscribed = store.subscribe(Duration::from_secs(5)).await;
        assert_eq!(
            subscribed.is_ok(),
            store.has_change_feed(),
            "{:?}",
            subscribed.err()
        );
    }

    /// The change log holds what the feed announced, from a heartbeat's
    /// watermark on, and forgets only what is past its retention.
    #[tokio::test]
    async fn the_change_log_holds_what_was_written_since_a_watermark() {
        let Some((store, _database)) = open_postgres().await else {
            return;
        };
        let mut subscription = store.subscribe(Duration::from_secs(5)).await.unwrap();
        let watermark = subscription.ping(Duration::from_secs(5)).await.unwrap();
        let now = Timestamp::from_millis(1_000_000);
        let key = NewKey {
            id: KeyId::from_u64(7),
            digest: KeyDigest::from_bytes([7; 32]),
            settings: KeySettings::default(),
            created_by: None,
        };
        store.insert_key(key, Actor::Local, now).await.unwrap();
        let missed = store.changed_since(watermark).await.unwrap().unwrap();
        assert!(missed.keys.contains(&KeyId::from_u64(7)), "{missed:?}");
        // A later heartbeat's watermark is no older.
        let later = subscription.ping(Duration::from_secs(5)).await.unwrap();
        assert!(later >= watermark);

        // An entry an hour and more old goes; the recent one stays.
        sqlx::query("INSERT INTO change_log (payload, at) VALUES ('role:ancient', 0)")
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(store.prune_change_log().await.unwrap(), 1);
        let missed = store.changed_since(watermark).await.unwrap().unwrap();
        assert!(missed.keys.contains(&KeyId::from_u64(7)), "{missed:?}");
    }

    #[tokio::test]
    async fn sqlite_has_no_change_feed() {
        let (store, _dir) = open_temporary().await;
        let refused = store.subscribe(Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(refused, StoreError::NoFeed), "{refused}");
    }

    /// What another replica's notification makes of the database's rows.
    async fn changes_follow_the_database(store: Arc<Store>) {
        let now = Timestamp::from_millis(1_000_000);
        let new_key = |n: u8| NewKey {
            id: KeyId::from_u64(n.into()),
            digest: KeyDigest::from_bytes([n; 32]),
            settings: KeySettings::default(),
            created_by: None,
        };
        let (live, revoked, unknown) = (KeyId::from_u64(1), KeyId::from_u64(2), KeyId::from_u64(3));
        store
            .insert_key(new_key(1), Actor::Local, now)
            .await
            .unwrap();
        store
            .insert_key(new_key(2), Actor::Local, now)
            .await
            .unwrap();
        store
            .revoke_key(revoked, "", Actor::Local, now)
            .await
            .unwrap();

        let changes = store
            .changes_for(&Topic::Keys(vec![live, revoked, unknown]).into(), now)
            .await
            .unwrap();
        assert!(
            matches!(&changes[0], Change::KeyUpserted(key) if key.id == live && key.digest.as_bytes() == &[1; 32])
        );
        assert!(matches!(changes[1], Change::KeyRemoved(id) if id == revoked));
        assert!(matches!(changes[2], Change::KeyRemoved(id) if id == unknown));

        let name: RoleName = "deployer".parse().unwrap();
        let changes = store
            .changes_for(&Topic::Role(name.clone()).into(), now)
            .await
            .unwrap();
        assert!(matches!(&changes[..], [Change::RoleRemoved(gone)] if *gone == name));
        let role = Role {
            name: name.clone(),
            description: String::new(),
            permissions: ["deploy:write".parse().unwrap()].into(),
            max_ttl: None,
            rate_limit: None,
            builtin: false,
            created_at: now,
            updated_at: now,
        };
        store.create_role(&role, Actor::Local).await.unwrap();
        let changes = store
            .changes_for(&Topic::Role(name.clone()).into(), now)
            .await
            .unwrap();
        assert!(matches!(
            &changes[..],
            [Change::RoleUpserted(found)] if found.name == role.name && found.permissions == role.permissions
        ));

        // Many notifications, one batch: each key and role once.
        let mut batch = Changed::from(Topic::Keys(vec![revoked, live]));
        batch.add(Topic::Role(name.clone()));
        batch.add(Topic::Keys(vec![live]));
        let changes = store.changes_for(&batch, now).await.unwrap();
        assert!(matches!(
            &changes[..],
            [Change::KeyUpserted(key), Change::KeyRemoved(gone), Change::RoleUpserted(found)]
                if key.id == live && *gone == revoked && found.name == name
        ));
    }

    #[tokio::test]
    async fn postgres_writes_notify_the_feed_on_commit() {
        let Some((store, _database)) = open_postgres().await else {
            return;
        };
        let mut subscription = store.subscribe(Duration::from_secs(5)).await.unwrap();
        let now = Timestamp::from_millis(1_000_000);
        let id = KeyId::from_u64(7);
        let key = NewKey {
            id,
            digest: KeyDigest::from_bytes([7; 32]),
            settings: KeySettings::default(),
            created_by: None,
        };
        store.insert_key(key, Actor::Local, now).await.unwrap();
        store
            .revoke_key(id, "leaked", Actor::Local, now)
            .await
            .unwrap();
        for _ in 0..2 {
            let topic = tokio::time::timeout(Duration::from_secs(5), subscription.next())
                .await
                .expect("a notification within 5 s")
                .unwrap();
            assert_eq!(topic, Some(Topic::Keys(vec![id])));
        }
        // Revoking again changes nothing, so it tells nobody.
        let again = store.revoke_key(id, "", Actor::Local, now).await.unwrap();
        assert!(again.already_revoked);
        subscription.ping(Duration::from_secs(5)).await.unwrap();
        let mut received = Changed::default();
        subscription.take_received(&mut received).unwrap();
        assert!(received.is_empty(), "{received:?}");

        // What arrives before a ping's reply is buffered and taken at once.
        let other = KeyId::from_u64(8);
        let key = NewKey {
            id: other,
            digest: KeyDigest::from_bytes([8; 32]),
            settings: KeySettings::default(),
            created_by: None,
        };
        store.insert_key(key, Actor::Local, now).await.unwrap();
        store
            .revoke_key(other, "", Actor::Local, now)
            .await
            .unwrap();
        subscription.ping(Duration::from_secs(5)).await.unwrap();
        subscription.take_received(&mut received).unwrap();
        assert_eq!(received, Changed::from(Topic::Keys(vec![other])));
    }
}
