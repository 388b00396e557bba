//! Trust policies, and the keys minted by exchanging an identity token:
//! each write one transaction with its audit record. An exchange also
//! records the token's `jti`, whose primary key refuses a replay on every
//! replica, and prunes the records of tokens that have expired.

use std::{collections::BTreeMap, time::Duration};

use sqlx::{Row, any::AnyRow};

use super::{
    Store, StoreError,
    audit::append_audit,
    feed::Topic,
    keys::{NewKey, insert_key},
    rows::duration_millis,
};
use crate::{
    clock::Timestamp,
    model::{Actor, AuditAction, KeyRecord, Labels},
    trust::{ClaimPattern, Issuer, PolicyName, PolicySpec, TrustPolicy},
};

const TABLE: &str = "trust_policies";

/// The replay record of an exchanged token.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The issuer that signed it.
    pub issuer: String,
    /// Its `jti`.
    pub jti: String,
    /// When it can no longer be exchanged (its `exp` plus leeway); the
    /// record may be pruned after.
    pub expires_at: Timestamp,
}

impl Store {
    /// Every trust policy, by name.
    ///
    /// # Errors
    /// On a database failure or a row keyward could not have written.
    pub async fn list_policies(&self) -> Result<Vec<TrustPolicy>, StoreError> {
        self.count();
        sqlx::query("SELECT * FROM trust_policies ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(policy_from_row)
            .collect()
    }

    /// The policy named `name`.
    ///
    /// # Errors
    /// [`StoreError::PolicyNotFound`].
    pub async fn get_policy(&self, name: &PolicyName) -> Result<TrustPolicy, StoreError> {
        self.count();
        let row = sqlx::query("SELECT * FROM trust_policies WHERE name = $1")
            .bind(name.as_str().to_owned())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::PolicyNotFound(name.clone()))?;
        policy_from_row(&row)
    }

    /// Creates `policy` and its audit record.
    ///
    /// # Errors
    /// [`StoreError::PolicyExists`] for a taken name.
    pub async fn create_policy(
        &self,
        policy: &TrustPolicy,
        actor: Actor,
    ) -> Result<(), StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        let columns = Columns::of(&policy.spec)?;
        let inserted = sqlx::query(
            "INSERT INTO trust_policies (name, description, issuer, audience, claims, roles,
                 permissions, allowed_cidrs, labels, ttl_ms, owner, created_by, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(policy.name.as_str().to_owned())
        .bind(policy.spec.description.clone())
        .bind(policy.spec.issuer.as_str().to_owned())
        .bind(policy.spec.audience.clone())
        .bind(columns.claims)
        .bind(columns.roles)
        .bind(columns.permissions)
        .bind(columns.allowed_cidrs)
        .bind(columns.labels)
        .bind(duration_millis(policy.spec.ttl))
        .bind(policy.owner.clone())
        .bind(policy.created_by.map(|id| id.to_string()))
        .bind(policy.created_at.as_millis())
        .bind(policy.updated_at.as_millis())
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::PolicyExists(policy.name.clone()));
        }
        let detail = describe(&policy.spec);
        append_audit(
            &mut tx,
            policy.created_at,
            actor,
            AuditAction::TrustCreate,
            Some(policy.name.as_str()),
            Some(&detail),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces policy `name`'s settings with `spec`; its owner and creator
    /// stay. Returns it as it is now.
    ///
    /// # Errors
    /// [`StoreError::PolicyNotFound`].
    pub async fn update_policy(
        &self,
        name: &PolicyName,
        spec: &PolicySpec,
        actor: Actor,
        now: Timestamp,
    ) -> Result<TrustPolicy, StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        let columns = Columns::of(spec)?;
        let row = sqlx::query(
            "UPDATE trust_policies SET description = $1, issuer = $2, audience = $3, claims = $4,
                 roles = $5, permissions = $6, allowed_cidrs = $7, labels = $8, ttl_ms = $9,
                 updated_at = $10
             WHERE name = $11 RETURNING *",
        )
        .bind(spec.description.clone())
        .bind(spec.issuer.as_str().to_owned())
        .bind(spec.audience.clone())
        .bind(columns.claims)
        .bind(columns.roles)
        .bind(columns.permissions)
        .bind(columns.allowed_cidrs)
        .bind(columns.labels)
        .bind(duration_millis(spec.ttl))
        .bind(now.as_millis())
        .bind(name.as_str().to_owned())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::PolicyNotFound(name.clone()))?;
        let policy = policy_from_row(&row)?;
        append_audit(
            &mut tx,
            now,
            actor,
            AuditAction::TrustUpdate,
            Some(name.as_str()),
            Some(&describe(spec)),
        )
        .await?;
        tx.commit().await?;
        Ok(policy)
    }

    /// Deletes policy `name`. Keys it minted stay as they are.
    ///
    /// # Errors
    /// [`StoreError::PolicyNotFound`].
    pub async fn delete_policy(
        &self,
        name: &PolicyName,
        actor: Actor,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM trust_policies WHERE name = $1")
            .bind(name.as_str().to_owned())
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::PolicyNotFound(name.clone()));
        }
        append_audit(
            &mut tx,
            now,
            actor,
            AuditAction::TrustDelete,
            Some(name.as_str()),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes a key minted by an exchange, the token's replay record and
    /// the audit record (`reason` names the policy, subject and `jti`) in
    /// one transaction, and prunes expired replay records.
    ///
    /// # Errors
    /// [`StoreError::Replayed`] when the token's `jti` was exchanged before;
    /// [`StoreError::IdCollision`] when the key's random id is taken. Nothing
    /// is written then.
    pub async fn insert_exchanged_key(
        &self,
        key: NewKey,
        replay: &Replay,
        reason: &str,
        now: Timestamp,
    ) -> Result<KeyRecord, StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM oidc_replay WHERE expires_at < $1")
            .bind(now.as_millis())
            .execute(&mut *tx)
            .await?;
        let recorded = sqlx::query(
            "INSERT INTO oidc_replay (issuer, jti, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (issuer, jti) DO NOTHING",
        )
        .bind(replay.issuer.clone())
        .bind(replay.jti.clone())
        .bind(replay.expires_at.as_millis())
        .execute(&mut *tx)
        .await?;
        if recorded.rows_affected() == 0 {
            return Err(StoreError::Replayed);
        }
        let record = insert_key(&mut tx, key, None, now).await?;
        append_audit(
            &mut tx,
            now,
            Actor::Local,
            AuditAction::Exchange,
            Some(&record.id.to_string()),
            Some(reason),
        )
        .await?;
        self.notify(&mut tx, [Topic::Keys(vec![record.id])]).await?;
        tx.commit().await?;
        Ok(record)
    }
}

/// The JSON columns of a spec.
struct Columns {
    claims: String,
    roles: String,
    permissions: String,
    allowed_cidrs: String,
    labels: String,
}

impl Columns {
    fn of(spec: &PolicySpec) -> Result<Self, StoreError> {
        let json = |value: serde_json::Value| value.to_string();
        let texts = |items: Vec<String>| json(items.into());
        let claims: BTreeMap<&String, String> = spec
            .claims
            .iter()
            .map(|(name, pattern)| (name, pattern.to_string()))
            .collect();
        Ok(Self {
            claims: serde_json::to_string(&claims).map_err(|_| corrupt("claims"))?,
            roles: texts(spec.roles.iter().map(ToString::to_string).collect()),
            permissions: texts(spec.permissions.iter().map(ToString::to_string).collect()),
            allowed_cidrs: texts(spec.allowed_cidrs.iter().map(ToString::to_string).collect()),
            labels: serde_json::to_string(spec.labels.as_map()).map_err(|_| corrupt("labels"))?,
        })
    }
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::Corrupt { table: TABLE, what }
}

/// A JSON column holding `T`.
fn json_column<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    column: &'static str,
) -> Result<T, StoreError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|_| corrupt(column))
}

/// A JSON array column of values that parse.
fn parsed_list<T: std::str::FromStr>(
    row: &AnyRow,
    column: &'static str,
) -> Result<Vec<T>, StoreError> {
    json_column::<Vec<String>>(row, column)?
        .iter()
        .map(|item| item.parse().map_err(|_| corrupt(column)))
        .collect()
}

fn policy_from_row(row: &AnyRow) -> Result<TrustPolicy, StoreError> {
    let text = |column: &'static str| -> Result<String, StoreError> { Ok(row.try_get(column)?) };
    let claims = json_column::<BTreeMap<String, String>>(row, "claims")?
        .into_iter()
        .map(|(name, pattern)| {
            Ok((
                name,
                ClaimPattern::parse(&pattern).map_err(|_| corrupt("claims"))?,
            ))
        })
        .collect::<Result<_, StoreError>>()?;
    let ttl_ms: i64 = row.try_get("ttl_ms")?;
    let created_by: Option<String> = row.try_get("created_by")?;
    Ok(TrustPolicy {
        name: text("name")?.parse().map_err(|_| corrupt("name"))?,
        spec: PolicySpec {
            description: text("description")?,
            // Checked when written; the server's http:// setting may have
            // changed since, which the exchange's fetch enforces.
            issuer: Issuer::parse(&text("issuer")?, true).map_err(|_| corrupt("issuer"))?,
            audience: text("audience")?,
            claims,
            roles: parsed_list(row, "roles")?,
            permissions: parsed_list(row, "permissions")?,
            ttl: Duration::from_millis(u64::try_from(ttl_ms).map_err(|_| corrupt("ttl_ms"))?),
            allowed_cidrs: parsed_list(row, "allowed_cidrs")?,
            labels: Labels::new(json_column(row, "labels")?).map_err(|_| corrupt("labels"))?,
        },
        owner: text("owner")?,
        created_by: created_by
            .map(|id| id.parse().map_err(|_| corrupt("created_by")))
            .transpose()?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
    })
}

/// What an audit record says of a policy's settings (never a secret: a
/// policy holds none).
fn describe(spec: &PolicySpec) -> String {
    let join = |items: Vec<String>| items.join(", ");
    format!(
        "issuer {}; audience {}; claims {}; roles [{}]; permissions [{}]; ttl {}",
        spec.issuer,
        spec.audience,
        join(
            spec.claims
                .iter()
                .map(|(name, pattern)| format!("{name}={pattern}"))
                .collect()
        ),
        join(spec.roles.iter().map(ToString::to_string).collect()),
        join(spec.permissions.iter().map(ToString::to_string).collect()),
        humantime::format_duration(spec.ttl),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        key::{KeyDigest, KeyId},
        model::KeySettings,
    };

    on_both_stores!(
        policies_round_trip_and_names_are_unique,
        a_replayed_token_writes_nothing_and_expired_records_are_pruned,
    );

    fn spec(audience: &str) -> PolicySpec {
        PolicySpec {
            description: "deploys".to_owned(),
            issuer: Issuer::parse("https://token.actions.githubusercontent.com", false).unwrap(),
            audience: audience.to_owned(),
            claims: [
                (
                    "repository".to_owned(),
                    ClaimPattern::parse("acme/api").unwrap(),
                ),
                (
                    "job_workflow_ref".to_owned(),
                    ClaimPattern::parse("acme/w@*").unwrap(),
                ),
            ]
            .into(),
            roles: vec!["deployer".parse().unwrap()],
            permissions: vec!["deploy:read".parse().unwrap()],
            ttl: Duration::from_mins(15),
            allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            labels: Labels::new([("team".to_owned(), "a".to_owned())].into()).unwrap(),
        }
    }

    async fn policies_round_trip_and_names_are_unique(store: Arc<Store>) {
        let now = Timestamp::from_millis(1_000_000);
        let policy = TrustPolicy {
            name: "deploy".parse().unwrap(),
            spec: spec("keyward"),
            owner: "ci".to_owned(),
            created_by: Some(KeyId::from_u64(7)),
            created_at: now,
            updated_at: now,
        };
        store.create_policy(&policy, Actor::Local).await.unwrap();
        assert_eq!(store.get_policy(&policy.name).await.unwrap(), policy);
        assert!(matches!(
            store.create_policy(&policy, Actor::Local).await,
            Err(StoreError::PolicyExists(_))
        ));
        let later = Timestamp::from_millis(2_000_000);
        let updated = store
            .update_policy(&policy.name, &spec("other"), Actor::Local, later)
            .await
            .unwrap();
        assert_eq!(
            (
                updated.spec.audience.as_str(),
                updated.owner.as_str(),
                updated.created_at,
                updated.updated_at
            ),
            ("other", "ci", now, later),
            "the owner, creator and creation stay"
        );
        assert_eq!(store.list_policies().await.unwrap(), [updated]);
        store
            .delete_policy(&policy.name, Actor::Local, later)
            .await
            .unwrap();
        for missing in [
            store.get_policy(&policy.name).await.map(drop),
            store.delete_policy(&policy.name, Actor::Local, later).await,
            store
                .update_policy(&policy.name, &spec("x"), Actor::Local, later)
                .await
                .map(drop),
        ] {
            assert!(
                matches!(missing, Err(StoreError::PolicyNotFound(_))),
                "{missing:?}"
            );
        }
    }

    async fn a_replayed_token_writes_nothing_and_expired_records_are_pruned(store: Arc<Store>) {
        let key = |n| NewKey {
            id: KeyId::from_u64(n),
            digest: KeyDigest::from_bytes([1; 32]),
            settings: KeySettings::default(),
            created_by: None,
        };
        let replay = |jti: &str, expires_at| Replay {
            issuer: "https://issuer.example".to_owned(),
            jti: jti.to_owned(),
            expires_at: Timestamp::from_millis(expires_at),
        };
        let at = Timestamp::from_millis;
        store
            .insert_exchanged_key(key(1), &replay("j1", 10_000), "first", at(1_000))
            .await
            .unwrap();
        let again = store
            .insert_exchanged_key(key(2), &replay("j1", 10_000), "again", at(2_000))
            .await;
        assert!(matches!(again, Err(StoreError::Replayed)), "{again:?}");
        assert!(matches!(
            store.get_key(KeyId::from_u64(2)).await,
            Err(StoreError::KeyNotFound(_))
        ));
        // The same jti from another issuer is another token.
        let other = Replay {
            issuer: "https://other.example".to_owned(),
            ..replay("j1", 10_000)
        };
        store
            .insert_exchanged_key(key(3), &other, "other issuer", at(2_000))
            .await
            .unwrap();
        // Past its expiry the record is pruned by the next exchange, which
        // is why a record's expiry is the token's plus the leeway.
        store
            .insert_exchanged_key(key(4), &replay("j2", 30_000), "later", at(20_000))
            .await
            .unwrap();
        let left: Vec<String> = sqlx::query("SELECT jti FROM oidc_replay ORDER BY jti")
            .fetch_all(&store.pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>("jti"))
            .collect();
        assert_eq!(left, ["j2"]);
        let audit = store
            .list_audit(&crate::model::query::AuditQuery {
                target: Some(KeyId::from_u64(1).to_string()),
                limit: 10,
                ..crate::model::query::AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(
            audit
                .records
                .iter()
                .map(|r| (r.actor, r.action.as_str(), r.reason.as_deref()))
                .collect::<Vec<_>>(),
            [(None, "key.exchange", Some("first"))]
        );
    }
}
