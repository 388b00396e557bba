//! Writing many keys at once: filling a store for a benchmark, or importing
//! an inventory, at tens of thousands of keys a second.
//!
//! A mint writes a key in a transaction of its own, a few statements and an
//! fsync each: right for one key, hours for a million. An import writes a
//! batch in one transaction, each table with multi-row statements of
//! thousands of values, and still gives each key its audit record.

use sqlx::AnyConnection;

use super::{
    Backend, Store, StoreError,
    feed::Topic,
    keys::NewKey,
    rows::{count_to_i64, duration_millis},
    sql::Sql,
};
use crate::{
    clock::Timestamp,
    model::{Actor, AuditAction},
};

/// Values bound per statement: far below SQLite's limit (32,766) and
/// PostgreSQL's (65,535), large enough that a million keys take a few
/// hundred statements per table.
const VALUES_PER_STATEMENT: usize = 8_192;

/// SQLite's page cache during an import: 256 MiB (negative: KiB).
const IMPORT_CACHE: &str = "PRAGMA cache_size = -262144";
/// SQLite's default page cache, 2 MiB.
const DEFAULT_CACHE: &str = "PRAGMA cache_size = -2000";

impl Store {
    /// Writes `keys` and a mint audit record for each, by `actor`, in one
    /// transaction, and tells other replicas. For batches of thousands;
    /// roles a key names must exist.
    ///
    /// # Errors
    /// On a database failure, a taken id among them included; nothing is
    /// written then.
    pub async fn import_keys(
        &self,
        keys: &[NewKey],
        actor: Actor,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.count();
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Sqlite {
            // Inserts land all over four indexes; with SQLite's default page
            // cache (2 MiB) past a few hundred thousand keys nearly every one
            // reads its pages again. Set back below, as the connection goes
            // back to the pool.
            sqlx::query(IMPORT_CACHE).execute(&mut *tx).await?;
        }
        let ids: Vec<String> = keys.iter().map(|key| key.id.to_string()).collect();
        let statement = Statement {
            backend: self.backend,
        };
        statement
            .insert(
                &mut tx,
                "INSERT INTO api_keys (id, prefix, digest, owner, description, created_at, created_by, \
                 expires_at, rate_requests, rate_period_ms, rate_burst, max_uses, uses_remaining) VALUES ",
                keys.iter().zip(&ids),
                |sql, (key, id)| {
                    let settings = &key.settings;
                    let rate = settings.rate_limit;
                    sql.push("(")
                        .push_bind(id.clone())
                        .push(", ")
                        .push_bind(settings.prefix.as_str().to_owned())
                        .push(", ")
                        .push_bind(key.digest.as_bytes().to_vec())
                        .push(", ")
                        .push_bind(settings.owner.clone())
                        .push(", ")
                        .push_bind(settings.description.clone())
                        .push(", ")
                        .push_bind(now.as_millis())
                        .push(", ")
                        .push_bind(key.created_by.map(|id| id.to_string()))
                        .push(", ")
                        .push_bind(settings.expires_at.map(Timestamp::as_millis))
                        .push(", ")
                        .push_bind(rate.map(|limit| i64::from(limit.requests())))
                        .push(", ")
                        .push_bind(rate.map(|limit| duration_millis(limit.per())))
                        .push(", ")
                        .push_bind(rate.map(|limit| i64::from(limit.burst())))
                        .push(", ")
                        .push_bind(settings.max_uses.map(count_to_i64))
                        .push(", ")
                        .push_bind(settings.max_uses.map(count_to_i64))
                        .push(")");
                },
            )
            .await?;
        let details = |detail: fn(&NewKey) -> Vec<String>| {
            keys.iter()
                .zip(&ids)
                .flat_map(move |(key, id)| detail(key).into_iter().map(move |item| (id, item)))
        };
        let pair = |sql: &mut Sql, (id, item): (&String, String)| {
            sql.push("(")
                .push_bind(id.clone())
                .push(", ")
                .push_bind(item)
                .push(")");
        };
        statement
            .insert(
                &mut tx,
                "INSERT INTO key_roles (key_id, role) VALUES ",
                details(|key| texts(&key.settings.roles)),
                pair,
            )
            .await?;
        statement
            .insert(
                &mut tx,
                "INSERT INTO key_permissions (key_id, permission) VALUES ",
                details(|key| texts(&key.settings.permissions)),
                pair,
            )
            .await?;
        statement
            .insert(
                &mut tx,
                "INSERT INTO key_cidrs (key_id, cidr) VALUES ",
                details(|key| texts(&key.settings.allowed_cidrs)),
                pair,
            )
            .await?;
        statement
            .insert(
                &mut tx,
                "INSERT INTO key_labels (key_id, name, value) VALUES ",
                keys.iter().zip(&ids).flat_map(|(key, id)| {
                    key.settings
                        .labels
                        .as_map()
                        .iter()
                        .map(move |(name, value)| (id, name, value))
                }),
                |sql, (id, name, value)| {
                    sql.push("(")
                        .push_bind(id.clone())
                        .push(", ")
                        .push_bind(name.clone())
                        .push(", ")
                        .push_bind(value.clone())
                        .push(")");
                },
            )
            .await?;
        let actor_id = actor.key_id().map(|id| id.to_string());
        statement
            .insert(
                &mut tx,
                "INSERT INTO audit_log (at, actor, action, target) VALUES ",
                ids.iter(),
                |sql, id| {
                    sql.push("(")
                        .push_bind(now.as_millis())
                        .push(", ")
                        .push_bind(actor_id.clone())
                        .push(", ")
                        .push_bind(AuditAction::Mint.as_str().to_owned())
                        .push(", ")
                        .push_bind(id.clone())
                        .push(")");
                },
            )
            .await?;
        self.notify(
            &mut tx,
            [Topic::Keys(keys.iter().map(|key| key.id).collect())],
        )
        .await?;
        if self.backend == Backend::Sqlite {
            sqlx::query(DEFAULT_CACHE).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Each item as the column holds it.
fn texts<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// Multi-row `INSERT`s in the placeholder style the backend prepares fast.
struct Statement {
    backend: Backend,
}

impl Statement {
    /// Runs `insert` (ending in `VALUES `) for every row, as few statements
    /// as [`VALUES_PER_STATEMENT`] allows; `row` pushes one `(…)` tuple.
    async fn insert<T>(
        &self,
        tx: &mut AnyConnection,
        insert: &'static str,
        rows: impl IntoIterator<Item = T>,
        row: impl Fn(&mut Sql, T),
    ) -> Result<(), StoreError> {
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let mut sql = match self.backend {
                Backend::Sqlite => Sql::positional(insert),
                Backend::Postgres => Sql::new(insert),
            };
            let mut first = true;
            while let Some(next) = rows.next_if(|_| sql.bound() < VALUES_PER_STATEMENT) {
                if !first {
                    sql.push(", ");
                }
                first = false;
                row(&mut sql, next);
            }
            sql.build().execute(&mut *tx).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        key::{KeyDigest, KeyId},
        model::{KeySettings, Labels, Role, query::AuditQuery},
    };

    on_both_stores!(
        an_import_writes_every_key_with_its_details_and_audit_record,
        an_import_with_a_taken_id_writes_nothing
    );

    fn new_key(n: u64, settings: KeySettings) -> NewKey {
        NewKey {
            id: KeyId::from_u64(n),
            digest: KeyDigest::from_bytes([1; 32]),
            settings,
            created_by: None,
        }
    }

    /// Enough keys that every table takes several statements.
    async fn an_import_writes_every_key_with_its_details_and_audit_record(store: Arc<Store>) {
        let now = Timestamp::from_millis(1_000_000);
        let role = Role {
            name: "deployer".parse().unwrap(),
            description: String::new(),
            permissions: Arc::new([]),
            max_ttl: None,
            rate_limit: None,
            builtin: false,
            created_at: now,
            updated_at: now,
        };
        store.create_role(&role, Actor::Local).await.unwrap();
        let settings = |n: u64| KeySettings {
            roles: vec![role.name.clone()],
            permissions: vec!["deploy:read".parse().unwrap(), "ci:run".parse().unwrap()],
            allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            labels: Labels::new([("n".to_owned(), n.to_string())].into()).unwrap(),
            owner: format!("team-{}", n % 7),
            rate_limit: Some("10/s".parse().unwrap()),
            max_uses: n.is_multiple_of(2).then_some(n + 1),
            ..KeySettings::default()
        };
        let keys: Vec<NewKey> = (1..=3_000).map(|n| new_key(n, settings(n))).collect();
        store.import_keys(&keys, Actor::Local, now).await.unwrap();

        for n in [1, 1_500, 3_000] {
            let record = store.get_key(KeyId::from_u64(n)).await.unwrap();
            let mut expected = settings(n);
            expected.permissions.sort();
            let mut permissions = record.settings.permissions.clone();
            permissions.sort();
            assert_eq!(
                (
                    &record.settings.roles,
                    &permissions,
                    &record.settings.allowed_cidrs,
                    &record.settings.labels,
                    &record.settings.owner,
                    record.settings.rate_limit,
                    record.settings.max_uses,
                    record.uses_remaining,
                    record.created_at,
                ),
                (
                    &expected.roles,
                    &expected.permissions,
                    &expected.allowed_cidrs,
                    &expected.labels,
                    &expected.owner,
                    expected.rate_limit,
                    expected.max_uses,
                    expected.max_uses,
                    now,
                )
            );
        }
        let audit = store
            .list_audit(&AuditQuery {
                action: Some("key.mint".into()),
                limit: 5_000,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(audit.records.len(), 3_000, "one record per key");
        assert_eq!(store.load_snapshot(now).await.unwrap().keys.len(), 3_000);
    }

    async fn an_import_with_a_taken_id_writes_nothing(store: Arc<Store>) {
        let now = Timestamp::from_millis(1_000_000);
        store
            .import_keys(&[new_key(1, KeySettings::default())], Actor::Local, now)
            .await
            .unwrap();
        let keys: Vec<NewKey> = (2..=10)
            .chain([1])
            .map(|n| new_key(n, KeySettings::default()))
            .collect();
        assert!(store.import_keys(&keys, Actor::Local, now).await.is_err());
        assert!(matches!(
            store.get_key(KeyId::from_u64(2)).await,
            Err(StoreError::KeyNotFound(_))
        ));
    }
}
