//! Writing many keys at once: filling a store for a benchmark, importing an
//! inventory at tens of thousands of keys a second, and the mints that
//! queued up while another write held the turn (a group commit).
//!
//! A key in a transaction of its own costs a few statements and an fsync:
//! right for one key, hours for a million, and a ceiling of about a
//! thousand concurrent mints a second. A batch is one transaction, each
//! table with multi-row statements of up to thousands of values, and still
//! gives each key its audit record.

use std::{collections::HashSet, iter::Peekable};

use sqlx::{AnyConnection, Row};

use super::{
    Backend, Store, StoreError,
    feed::Topic,
    keys::NewKey,
    rows::{count_to_i64, duration_millis, fetch_for_ids},
    sql::Sql,
};
use crate::{
    clock::Timestamp,
    key::KeyId,
    model::{Actor, AuditAction, KeyRecord},
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
    /// [`StoreError::IdCollision`] for a taken id among them, and any other
    /// database failure; nothing is written then.
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
        let written = write_new_keys(&mut tx, self.backend, keys, |_| actor, now).await?;
        if let Some(taken) = written.iter().position(|written| !written) {
            // Dropping `tx` rolls the rest back.
            return Err(StoreError::IdCollision(keys[taken].id));
        }
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

    /// Writes many new keys, each with its mint audit record by its actor,
    /// in one transaction with one notification of the change feed: a group
    /// commit of mints that queued up together, one fsync for all of them.
    ///
    /// A key whose id is taken (in the store, or by an earlier key of the
    /// same call) is not written and does not fail the others: it comes back
    /// whole ([`Grouped::IdTaken`]), to be given a fresh id and written
    /// again. The outcomes are in the order of `keys`.
    ///
    /// # Errors
    /// On a database failure; nothing is written then.
    pub async fn insert_keys_grouped(
        &self,
        keys: Vec<(NewKey, Actor)>,
        now: Timestamp,
    ) -> Result<Vec<Grouped>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.count();
        let (keys, actors): (Vec<NewKey>, Vec<Actor>) = keys.into_iter().unzip();
        let mut tx = self.begin_write().await?;
        let written = write_new_keys(&mut tx, self.backend, &keys, |at| actors[at], now).await?;
        let ids: Vec<KeyId> = keys
            .iter()
            .zip(&written)
            .filter(|(_, written)| **written)
            .map(|(key, _)| key.id)
            .collect();
        if !ids.is_empty() {
            self.notify(&mut tx, [Topic::Keys(ids)]).await?;
        }
        tx.commit().await?;
        Ok(keys
            .into_iter()
            .zip(written)
            .map(|(key, written)| {
                if written {
                    Grouped::Written(KeyRecord::new(key.id, key.settings, now, key.created_by))
                } else {
                    Grouped::IdTaken(key)
                }
            })
            .collect())
    }
}

/// What became of one key of [`Store::insert_keys_grouped`].
#[derive(Debug)]
pub enum Grouped {
    /// Written, with its audit record, as now stored.
    Written(KeyRecord),
    /// Not written: its random id is taken. Nothing of it was written; give
    /// it a fresh id and write it again.
    IdTaken(NewKey),
}

/// The columns of `api_keys` a new key fills: the bound values per row.
const KEY_COLUMNS: usize = 13;

/// Writes those of `keys` whose id is free, with their roles, permissions,
/// CIDRs, labels and a mint audit record each (by `actor(position)`), in
/// `tx`, with a few multi-row statements per table however many keys there
/// are. Returns, for each key, whether it was written: not when its id is
/// taken in the store or by an earlier key of `keys`, and then nothing of it
/// is written, so the caller may fail the whole transaction (an import) or
/// draw the key a new id (a mint).
async fn write_new_keys(
    tx: &mut AnyConnection,
    backend: Backend,
    keys: &[NewKey],
    actor: impl Fn(usize) -> Actor,
    now: Timestamp,
) -> Result<Vec<bool>, StoreError> {
    // A repeated id is taken by its first occurrence, decided here rather
    // than by which row of one statement the database inserts first.
    let mut seen = HashSet::with_capacity(keys.len());
    let mut written: Vec<bool> = keys.iter().map(|key| seen.insert(key.id)).collect();
    let ids: Vec<String> = keys.iter().map(|key| key.id.to_string()).collect();
    let statement = Statement { backend };
    let candidates: Vec<usize> = (0..keys.len()).filter(|at| written[*at]).collect();
    for chunk in candidates.chunks(VALUES_PER_STATEMENT / KEY_COLUMNS) {
        // Ids taken already are left out, found with one read: the write turn
        // (held since `tx` began) keeps them from changing until it commits.
        // (Not `INSERT … RETURNING id`, which on SQLite costs a quarter of a
        // lone mint's time.)
        let texts: Vec<String> = chunk.iter().map(|at| ids[*at].clone()).collect();
        let taken: HashSet<String> = fetch_for_ids(tx, "SELECT id FROM api_keys", "id", &texts)
            .await?
            .iter()
            .map(|row| row.try_get("id"))
            .collect::<Result<_, _>>()?;
        let free: Vec<usize> = chunk
            .iter()
            .copied()
            .filter(|at| !taken.contains(&ids[*at]))
            .collect();
        for at in chunk {
            written[*at] = !taken.contains(&ids[*at]);
        }
        if free.is_empty() {
            continue;
        }
        let sql = statement.values(
            "INSERT INTO api_keys (id, prefix, digest, owner, description, created_at, created_by, \
             expires_at, rate_requests, rate_period_ms, rate_burst, max_uses, uses_remaining) VALUES ",
            &mut free.iter().map(|at| (&keys[*at], &ids[*at])).peekable(),
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
        );
        sql.build().execute(&mut *tx).await?;
    }
    // Collected rather than chained: a future holding such closures across
    // an `await` is not known to be `Send`.
    let kept: Vec<usize> = (0..keys.len()).filter(|at| written[*at]).collect();
    let details = |detail: fn(&NewKey) -> Vec<String>| -> Vec<(&String, String)> {
        let mut rows = Vec::new();
        for at in &kept {
            rows.extend(detail(&keys[*at]).into_iter().map(|item| (&ids[*at], item)));
        }
        rows
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
            tx,
            "INSERT INTO key_roles (key_id, role) VALUES ",
            details(|key| texts(&key.settings.roles)),
            pair,
        )
        .await?;
    statement
        .insert(
            tx,
            "INSERT INTO key_permissions (key_id, permission) VALUES ",
            details(|key| texts(&key.settings.permissions)),
            pair,
        )
        .await?;
    statement
        .insert(
            tx,
            "INSERT INTO key_cidrs (key_id, cidr) VALUES ",
            details(|key| texts(&key.settings.allowed_cidrs)),
            pair,
        )
        .await?;
    statement
        .insert(
            tx,
            "INSERT INTO key_labels (key_id, name, value) VALUES ",
            kept.iter()
                .flat_map(|at| {
                    keys[*at]
                        .settings
                        .labels
                        .as_map()
                        .iter()
                        .map(|(name, value)| (&ids[*at], name, value))
                })
                .collect::<Vec<_>>(),
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
    // In the order given, so the audit log's order is the keys'.
    statement
        .insert(
            tx,
            "INSERT INTO audit_log (at, actor, action, target) VALUES ",
            kept.iter().copied(),
            |sql, at| {
                sql.push("(")
                    .push_bind(now.as_millis())
                    .push(", ")
                    .push_bind(actor(at).key_id().map(|id| id.to_string()))
                    .push(", ")
                    .push_bind(AuditAction::Mint.as_str().to_owned())
                    .push(", ")
                    .push_bind(ids[at].clone())
                    .push(")");
            },
        )
        .await?;
    Ok(written)
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
            self.values(insert, &mut rows, &row)
                .build()
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }

    /// One `insert` (ending in `VALUES `) of the next `rows`, as many as
    /// [`VALUES_PER_STATEMENT`] allows; `row` pushes one `(…)` tuple.
    fn values<T>(
        &self,
        insert: &'static str,
        rows: &mut Peekable<impl Iterator<Item = T>>,
        row: impl Fn(&mut Sql, T),
    ) -> Sql {
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
        sql
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
        an_import_with_a_taken_id_writes_nothing,
        a_group_writes_every_key_but_those_whose_id_is_taken
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

    /// A taken id (in the store, or earlier in the same group) fails only its
    /// own key, which comes back to be drawn again; nothing of it is written,
    /// and the others are, each with its audit record by its own actor, in
    /// the order given.
    async fn a_group_writes_every_key_but_those_whose_id_is_taken(store: Arc<Store>) {
        let now = Timestamp::from_millis(1_000_000);
        store
            .import_keys(&[new_key(1, KeySettings::default())], Actor::Local, now)
            .await
            .unwrap();
        let labelled = |n: u64| KeySettings {
            labels: Labels::new([("n".to_owned(), n.to_string())].into()).unwrap(),
            ..KeySettings::default()
        };
        let group = [(2, 7), (1, 8), (3, 9), (3, 10)]
            .into_iter()
            .map(|(id, actor)| {
                let mut key = new_key(id, labelled(actor));
                key.digest = KeyDigest::from_bytes([2; 32]);
                (key, Actor::Key(KeyId::from_u64(actor)))
            })
            .collect();
        let outcomes = store.insert_keys_grouped(group, now).await.unwrap();

        let outcomes: Vec<Result<u64, u64>> = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Grouped::Written(record) => {
                    Ok(record.settings.labels.as_map()["n"].parse().unwrap())
                }
                Grouped::IdTaken(key) => Err(key.settings.labels.as_map()["n"].parse().unwrap()),
            })
            .collect();
        assert_eq!(outcomes, [Ok(7), Err(8), Ok(9), Err(10)]);
        let snapshot = store.load_snapshot(now).await.unwrap();
        assert_eq!(snapshot.keys.len(), 3);
        let first = &snapshot.keys[&KeyId::from_u64(1)];
        assert_eq!(
            first.digest.as_bytes(),
            &[1; 32],
            "the taken key is untouched"
        );
        assert!(
            store
                .get_key(KeyId::from_u64(1))
                .await
                .unwrap()
                .settings
                .labels
                .as_map()
                .is_empty()
        );
        assert_eq!(
            store
                .get_key(KeyId::from_u64(3))
                .await
                .unwrap()
                .settings
                .labels,
            labelled(9).labels
        );
        let audit = store
            .list_audit(&AuditQuery {
                action: Some("key.mint".into()),
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        let written: Vec<_> = audit
            .records
            .iter()
            .rev()
            .map(|record| (record.target.clone().unwrap(), record.actor))
            .collect();
        assert_eq!(
            written,
            [
                (KeyId::from_u64(1).to_string(), None),
                (KeyId::from_u64(2).to_string(), Some(KeyId::from_u64(7))),
                (KeyId::from_u64(3).to_string(), Some(KeyId::from_u64(9))),
            ]
        );
    }
}
