//! Keys: minting, reading, listing, rotating, revoking, and spending and
//! recording their uses. Each write is one transaction with its audit
//! record, and notifies the change feed of the keys it touched.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use sqlx::{AnyConnection, Row};

use super::{
    Grouped, Store, StoreError,
    audit::append_audit,
    feed::Topic,
    rows::{
        IDS_PER_STATEMENT, count_to_i64, duration_millis, fetch_for_ids, parse_column, with_details,
    },
    sql::Sql,
};
use crate::{
    clock::Timestamp,
    key::{KeyDigest, KeyId},
    model::{
        Actor, AuditAction, KeyRecord, KeySettings, KeyState,
        query::{KeyPage, KeyQuery, PageCursor},
    },
    rate_limit::RateLimit,
    usage::UsageDelta,
};

/// A key about to be written: its settings plus the digest of its secret.
#[derive(Debug)]
pub struct NewKey {
    /// Drawn at random; one already taken fails with
    /// [`StoreError::IdCollision`].
    pub id: KeyId,
    /// All the store keeps of the secret: the plaintext never reaches it.
    pub digest: KeyDigest,
    /// Stored as given; `max_uses` also sets the uses remaining.
    pub settings: KeySettings,
    /// The caller's key; `None` for the first admin key, which no key minted.
    pub created_by: Option<KeyId>,
}

/// The outcome of a rotation.
#[derive(Debug)]
pub struct Rotation {
    /// The old key as now stored: it names its successor and works for the
    /// grace period at most (not at all with no grace, or if use-capped).
    pub previous: KeyRecord,
    /// The new key, with the old one's settings and as long a lifetime.
    pub successor: KeyRecord,
}

/// The outcome of a revocation.
#[derive(Debug)]
pub struct Revocation {
    /// As stored after the call: a key revoked before keeps its first
    /// revocation time and reason.
    pub key: KeyRecord,
    /// True when the key was revoked before; nothing changed.
    pub already_revoked: bool,
}

impl Store {
    /// Writes a new key and its audit record: a group of one
    /// ([`Store::insert_keys_grouped`]).
    ///
    /// # Errors
    /// [`StoreError::IdCollision`] when the random id is taken (mint again).
    pub async fn insert_key(
        &self,
        key: NewKey,
        actor: Actor,
        now: Timestamp,
    ) -> Result<KeyRecord, StoreError> {
        let mut outcomes = self.insert_keys_grouped(vec![(key, actor)], now).await?;
        match outcomes.pop() {
            Some(Grouped::Written(record)) => Ok(record),
            Some(Grouped::IdTaken(taken)) => Err(StoreError::IdCollision(taken.id)),
            None => unreachable!("one key in, one outcome out"),
        }
    }

    /// Whether key `id` exists, unrevoked and unexpired at `now`.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn key_is_live(&self, id: KeyId, now: Timestamp) -> Result<bool, StoreError> {
        self.count();
        let row = sqlx::query(
            "SELECT 1 FROM api_keys WHERE id = $1 AND revoked_at IS NULL
                                      AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(id.to_string())
        .bind(now.as_millis())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// One key, whatever its state.
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`] for an unknown id.
    pub async fn get_key(&self, id: KeyId) -> Result<KeyRecord, StoreError> {
        self.count();
        let mut conn = self.pool.acquire().await?;
        fetch_key(&mut conn, id).await
    }

    /// A page of keys, newest first, filtered.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn list_keys(&self, query: &KeyQuery, now: Timestamp) -> Result<KeyPage, StoreError> {
        self.count();
        let mut sql = Sql::new("SELECT * FROM api_keys k WHERE 1 = 1");
        push_label_filters(&mut sql, &query.labels);
        if let Some(owner) = &query.owner {
            sql.push(" AND k.owner = ").push_bind(owner.clone());
        }
        if let Some(role) = &query.role {
            sql.push(" AND EXISTS (SELECT 1 FROM key_roles r WHERE r.key_id = k.id AND r.role = ")
                .push_bind(role.as_str().to_owned())
                .push(")");
        }
        match query.state {
            None => {}
            Some(KeyState::Revoked) => {
                sql.push(" AND k.revoked_at IS NOT NULL");
            }
            Some(KeyState::Expired) => {
                sql.push(" AND k.revoked_at IS NULL AND k.expires_at <= ")
                    .push_bind(now.as_millis());
            }
            Some(KeyState::Active) => {
                sql.push(" AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ")
                    .push_bind(now.as_millis())
                    .push(") AND (k.uses_remaining IS NULL OR k.uses_remaining > 0)");
            }
            Some(KeyState::Exhausted) => {
                sql.push(" AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ")
                    .push_bind(now.as_millis())
                    .push(") AND k.uses_remaining = 0");
            }
        }
        if let Some(cursor) = query.after {
            sql.push(" AND (k.created_at < ")
                .push_bind(cursor.created_at.as_millis())
                .push(" OR (k.created_at = ")
                .push_bind(cursor.created_at.as_millis())
                .push(" AND k.id < ")
                .push_bind(cursor.id.to_string())
                .push("))");
        }
        // One extra row tells whether another page follows.
        sql.push(" ORDER BY k.created_at DESC, k.id DESC LIMIT ")
            .push_bind(i64::from(query.limit) + 1);

        let mut conn = self.pool.acquire().await?;
        let mut rows = sql.build().fetch_all(&mut *conn).await?;
        let more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        let keys: Vec<KeyRecord> = with_details(&mut conn, rows, false)
            .await?
            .into_iter()
            .map(|(record, _)| record)
            .collect();
        let next = more.then(|| keys.last()).flatten().map(|last| PageCursor {
            created_at: last.created_at,
            id: last.id,
        });
        Ok(KeyPage { keys, next })
    }

    /// Replaces key `id` by a successor with the same settings and the new
    /// secret whose digest is given, holding the old key's row meanwhile.
    /// What a rotation may do is the model's rule: whether the key may be
    /// rotated ([`KeyRecord::rotation_refusal`]), what the successor gets
    /// ([`KeyRecord::successor_settings`]) and what becomes of the old key
    /// ([`KeyRecord::retire_for_rotation`]). Both rows link to each other.
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`], or [`StoreError::NotRotatable`] for a
    /// revoked, expired or already rotated key.
    pub async fn rotate_key(
        &self,
        id: KeyId,
        successor: (KeyId, KeyDigest),
        grace: Duration,
        actor: Actor,
        now: Timestamp,
    ) -> Result<Rotation, StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        self.lock_key(&mut tx, id).await?;
        let mut previous = fetch_key(&mut tx, id).await?;
        if let Some(why) = previous.rotation_refusal(now) {
            return Err(StoreError::NotRotatable { id, why });
        }

        let (successor_id, digest) = successor;
        let new_key = NewKey {
            id: successor_id,
            digest,
            settings: previous.successor_settings(now),
            created_by: actor.key_id(),
        };
        let successor = insert_key(&mut tx, new_key, Some(id), now).await?;
        previous.retire_for_rotation(successor.id, grace, now);
        sqlx::query(
            "UPDATE api_keys SET rotated_to = $1, expires_at = $2, revoked_at = $3, revoke_reason = $4, uses_remaining = $5
             WHERE id = $6",
        )
        .bind(successor.id.to_string())
        .bind(previous.settings.expires_at.map(Timestamp::as_millis))
        .bind(previous.revoked_at.map(Timestamp::as_millis))
        .bind(previous.revoke_reason.clone())
        .bind(previous.uses_remaining.map(count_to_i64))
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        let reason = format!(
            "successor {}, grace {}",
            successor.id,
            humantime::format_duration(grace)
        );
        append_audit(
            &mut tx,
            now,
            actor,
            AuditAction::Rotate,
            Some(&id.to_string()),
            Some(&reason),
        )
        .await?;
        // The successor's own history starts with how it was made.
        append_audit(
            &mut tx,
            now,
            actor,
            AuditAction::Mint,
            Some(&successor.id.to_string()),
            Some(&format!("rotation of {id}")),
        )
        .await?;
        self.notify(&mut tx, [Topic::Keys(vec![id, successor.id])])
            .await?;
        tx.commit().await?;
        Ok(Rotation {
            previous,
            successor,
        })
    }

    /// Revokes key `id` at `now`. Idempotent: a revoked key stays revoked at
    /// its first revocation time and no audit record is added.
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`] for an unknown id.
    pub async fn revoke_key(
        &self,
        id: KeyId,
        reason: &str,
        actor: Actor,
        now: Timestamp,
    ) -> Result<Revocation, StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        let mut key = fetch_key(&mut tx, id).await?;
        if key.revoked_at.is_some() {
            return Ok(Revocation {
                key,
                already_revoked: true,
            });
        }
        let reason = (!reason.is_empty()).then_some(reason);
        mark_revoked(&mut tx, id, reason, actor, now).await?;
        self.notify(&mut tx, [Topic::Keys(vec![id])]).await?;
        tx.commit().await?;
        key.revoked_at = Some(now);
        key.revoke_reason = reason.map(str::to_owned);
        Ok(Revocation {
            key,
            already_revoked: false,
        })
    }

    /// The ids of the unrevoked keys carrying all `labels` (and `owner`, if
    /// given), in id order, and at most `limit` of them: a caller that
    /// accepts `n` asks for `n + 1` to learn that there are too many without
    /// reading them all.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn unrevoked_matching(
        &self,
        labels: &BTreeMap<String, String>,
        owner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyId>, StoreError> {
        self.count();
        let mut sql = Sql::new("SELECT k.id FROM api_keys k WHERE k.revoked_at IS NULL");
        push_label_filters(&mut sql, labels);
        if let Some(owner) = owner {
            sql.push(" AND k.owner = ").push_bind(owner.to_owned());
        }
        sql.push(" ORDER BY k.id LIMIT ")
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
        sql.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| parse_column(row, "id", "api_keys"))
            .collect()
    }

    /// The keys with these ids, whatever their state, read with a few
    /// queries however many there are. An unknown id is left out.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn get_keys(&self, ids: &[KeyId]) -> Result<Vec<KeyRecord>, StoreError> {
        self.count();
        let texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let mut conn = self.pool.acquire().await?;
        let rows = fetch_for_ids(&mut conn, "SELECT * FROM api_keys", "id", &texts).await?;
        Ok(with_details(&mut conn, rows, false)
            .await?
            .into_iter()
            .map(|(record, _)| record)
            .collect())
    }

    /// Revokes those of `ids` still unrevoked, with one audit record each,
    /// in one transaction; returns them, in the order given. A key revoked
    /// meanwhile is left as it is (and gets no second record). Set-based, a
    /// few statements however many keys, so the write turn is held briefly:
    /// a bulk revocation reads and checks its keys before (see
    /// [`crate::lifecycle::Lifecycle::revoke_matching`]).
    ///
    /// # Errors
    /// On a database failure; nothing is revoked then.
    pub async fn revoke_keys(
        &self,
        ids: &[KeyId],
        reason: &str,
        actor: Actor,
        now: Timestamp,
    ) -> Result<Vec<KeyId>, StoreError> {
        self.count();
        let reason = (!reason.is_empty()).then(|| reason.to_owned());
        let texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let mut tx = self.begin_write().await?;
        // The write turn excludes every other revocation meanwhile, so the
        // keys skipped here, those revoked, audited and updated below are
        // one consistent set. Only the (usually no) skipped ids come back:
        // reading thousands of rows back would cost more than the writes.
        let mut skipped = HashSet::new();
        for chunk in texts.chunks(IDS_PER_STATEMENT) {
            let mut select = Sql::new("SELECT v.column1 AS id FROM (VALUES ");
            for (position, id) in chunk.iter().enumerate() {
                select.push(if position == 0 { "(" } else { ", (" });
                select.push_bind(id.clone()).push(")");
            }
            select.push(
                ") AS v WHERE NOT EXISTS \
                 (SELECT 1 FROM api_keys k WHERE k.id = v.column1 AND k.revoked_at IS NULL)",
            );
            for row in select.build().fetch_all(&mut *tx).await? {
                skipped.insert(parse_column::<KeyId>(&row, "id", "api_keys")?);
            }
        }
        for chunk in texts.chunks(IDS_PER_STATEMENT) {
            // The bulk form of `append_audit`: the record `mark_revoked`
            // writes, for each key of the chunk still unrevoked.
            let mut audit =
                Sql::new("INSERT INTO audit_log (at, actor, action, target, reason) SELECT ");
            audit
                .push_bind(now.as_millis())
                .push(", ")
                .push_bind(actor.key_id().map(|id| id.to_string()))
                .push(", ")
                .push_bind(AuditAction::Revoke.as_str().to_owned())
                .push(", k.id, ")
                .push_bind(reason.clone())
                .push(" FROM api_keys k WHERE k.revoked_at IS NULL AND k.id IN (");
            push_list(&mut audit, chunk);
            audit.push(") ORDER BY k.id");
            audit.build().execute(&mut *tx).await?;

            let mut update = Sql::new("UPDATE api_keys SET revoked_at = ");
            update
                .push_bind(now.as_millis())
                .push(", revoke_reason = ")
                .push_bind(reason.clone())
                .push(" WHERE revoked_at IS NULL AND id IN (");
            push_list(&mut update, chunk);
            update.push(")");
            update.build().execute(&mut *tx).await?;
        }
        let revoked: Vec<KeyId> = ids
            .iter()
            .copied()
            .filter(|id| !skipped.contains(id))
            .collect();
        self.notify(&mut tx, [Topic::Keys(revoked.clone())]).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// Writes `keys` and their audit records in one transaction: seeding many
    /// keys at once, for tests and benchmarks (minting one at a time costs a
    /// transaction each).
    ///
    /// # Errors
    /// [`StoreError::IdCollision`] when an id is taken; nothing is written then.
    #[cfg(any(test, feature = "testing"))]
    pub async fn insert_keys(
        &self,
        keys: Vec<NewKey>,
        actor: Actor,
        now: Timestamp,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.import_keys(&keys, actor, now).await?;
        Ok(keys
            .into_iter()
            .map(|key| KeyRecord::new(key.id, key.settings, now, key.created_by))
            .collect())
    }

    /// Spends one use of capped key `id`, durably, with a conditional update
    /// (never read-modify-write), so concurrent validations never exceed the
    /// cap. Returns the uses left, or `None` when none were left.
    ///
    /// # Errors
    /// On a database failure; the use is then not granted.
    pub async fn consume_use(&self, id: KeyId) -> Result<Option<u64>, StoreError> {
        self.count();
        let row = sqlx::query(
            "UPDATE api_keys SET uses_remaining = uses_remaining - 1
             WHERE id = $1 AND uses_remaining > 0 AND revoked_at IS NULL
             RETURNING uses_remaining",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok(row.try_get::<i64, _>("uses_remaining")?.unsigned_abs()))
            .transpose()
    }

    /// Adds batched usage to the keys' records, in one transaction.
    ///
    /// # Errors
    /// On a database failure; nothing is written then.
    pub async fn record_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        self.count();
        let mut tx = self.begin_write().await?;
        for delta in deltas {
            sqlx::query(
                "UPDATE api_keys SET use_count = use_count + $1,
                                     last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $2
                                                         THEN $2 ELSE last_used_at END
                 WHERE id = $3",
            )
            .bind(count_to_i64(delta.uses))
            .bind(delta.last_used_at.as_millis())
            .bind(delta.key.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sets (or with `None` removes) key `id`'s own rate limit.
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`] for an unknown id.
    pub async fn update_rate_limit(
        &self,
        id: KeyId,
        rate_limit: Option<RateLimit>,
        actor: Actor,
        now: Timestamp,
    ) -> Result<KeyRecord, StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        let mut key = fetch_key(&mut tx, id).await?;
        sqlx::query("UPDATE api_keys SET rate_requests = $1, rate_period_ms = $2, rate_burst = $3 WHERE id = $4")
            .bind(rate_limit.map(|l| i64::from(l.requests())))
            .bind(rate_limit.map(|l| duration_millis(l.per())))
            .bind(rate_limit.map(|l| i64::from(l.burst())))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let detail = match rate_limit {
            Some(limit) => format!("rate limit {limit}"),
            None => "rate limit removed".to_owned(),
        };
        append_audit(
            &mut tx,
            now,
            actor,
            AuditAction::Update,
            Some(&id.to_string()),
            Some(&detail),
        )
        .await?;
        self.notify(&mut tx, [Topic::Keys(vec![id])]).await?;
        tx.commit().await?;
        key.settings.rate_limit = rate_limit;
        Ok(key)
    }
}

/// Revokes key `id` and records it: the way one key is revoked
/// ([`Store::revoke_keys`] does the same for many).
async fn mark_revoked(
    conn: &mut AnyConnection,
    id: KeyId,
    reason: Option<&str>,
    actor: Actor,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE api_keys SET revoked_at = $1, revoke_reason = $2 WHERE id = $3")
        .bind(now.as_millis())
        .bind(reason.map(str::to_owned))
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    append_audit(
        conn,
        now,
        actor,
        AuditAction::Revoke,
        Some(&id.to_string()),
        reason,
    )
    .await
}

/// Appends `values` as a comma-separated list of bound parameters.
fn push_list(sql: &mut Sql, values: &[String]) {
    for (position, value) in values.iter().enumerate() {
        if position > 0 {
            sql.push(", ");
        }
        sql.push_bind(value.clone());
    }
}

/// Adds `AND` clauses matching keys (aliased `k`) that carry every label.
fn push_label_filters(sql: &mut Sql, labels: &BTreeMap<String, String>) {
    for (name, value) in labels {
        sql.push(" AND EXISTS (SELECT 1 FROM key_labels l WHERE l.key_id = k.id AND l.name = ")
            .push_bind(name.clone())
            .push(" AND l.value = ")
            .push_bind(value.clone())
            .push(")");
    }
}

/// Writes key `key` with its roles, permissions, CIDRs and labels: the one
/// way a key is written, by mint, rotation and initialisation alike.
pub(super) async fn insert_key(
    conn: &mut AnyConnection,
    key: NewKey,
    rotated_from: Option<KeyId>,
    now: Timestamp,
) -> Result<KeyRecord, StoreError> {
    let id = key.id.to_string();
    let inserted = sqlx::query(
        "INSERT INTO api_keys (id, prefix, digest, owner, description, created_at, created_by, expires_at, rotated_from,
                               rate_requests, rate_period_ms, rate_burst, max_uses, uses_remaining)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id.clone())
    .bind(key.settings.prefix.as_str().to_owned())
    .bind(key.digest.as_bytes().to_vec())
    .bind(key.settings.owner.clone())
    .bind(key.settings.description.clone())
    .bind(now.as_millis())
    .bind(key.created_by.map(|k| k.to_string()))
    .bind(key.settings.expires_at.map(Timestamp::as_millis))
    .bind(rotated_from.map(|k| k.to_string()))
    .bind(key.settings.rate_limit.map(|l| i64::from(l.requests())))
    .bind(key.settings.rate_limit.map(|l| duration_millis(l.per())))
    .bind(key.settings.rate_limit.map(|l| i64::from(l.burst())))
    .bind(key.settings.max_uses.map(count_to_i64))
    .bind(key.settings.max_uses.map(count_to_i64))
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(StoreError::IdCollision(key.id));
    }
    let children = [
        (
            "INSERT INTO key_roles (key_id, role) VALUES ($1, $2)",
            key.settings
                .roles
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
        ),
        (
            "INSERT INTO key_permissions (key_id, permission) VALUES ($1, $2)",
            key.settings
                .permissions
                .iter()
                .map(ToString::to_string)
                .collect(),
        ),
        (
            "INSERT INTO key_cidrs (key_id, cidr) VALUES ($1, $2)",
            key.settings
                .allowed_cidrs
                .iter()
                .map(ToString::to_string)
                .collect(),
        ),
    ];
    for (insert, values) in children {
        for value in values {
            sqlx::query(insert)
                .bind(id.clone())
                .bind(value)
                .execute(&mut *conn)
                .await?;
        }
    }
    for (name, value) in key.settings.labels.as_map() {
        sqlx::query("INSERT INTO key_labels (key_id, name, value) VALUES ($1, $2, $3)")
            .bind(id.clone())
            .bind(name.clone())
            .bind(value.clone())
            .execute(&mut *conn)
            .await?;
    }
    let mut record = KeyRecord::new(key.id, key.settings, now, key.created_by);
    record.rotated_from = rotated_from;
    Ok(record)
}

/// One key, whatever its state, inside a transaction or not.
async fn fetch_key(conn: &mut AnyConnection, id: KeyId) -> Result<KeyRecord, StoreError> {
    let row = sqlx::query("SELECT * FROM api_keys WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::KeyNotFound(id))?;
    let mut records = with_details(conn, vec![row], false).await?;
    Ok(records.pop().expect("one row in, one record out").0)
}

#[cfg(test)]
mod tests;
