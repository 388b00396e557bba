//! Roles: named sets of permissions that keys hold by name. Built-in roles
//! never change, and a role is deleted only when no key holds it, so a
//! key's record never names a role that is gone without saying so.

use sqlx::{AnyConnection, Row};

use super::{
    Store, StoreError,
    audit::append_audit,
    feed::Topic,
    rows::{duration_millis, load_roles},
};
use crate::{
    clock::Timestamp,
    model::{Actor, AuditAction, Role, RoleUpdate},
    permission::{Permission, RoleName},
};

impl Store {
    /// Every role, by name.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn list_roles(&self) -> Result<Vec<Role>, StoreError> {
        self.count();
        let mut conn = self.pool.acquire().await?;
        load_roles(&mut conn).await
    }

    /// Creates `role` and its audit record.
    ///
    /// # Errors
    /// [`StoreError::RoleExists`] for a taken name.
    pub async fn create_role(&self, role: &Role, actor: Actor) -> Result<(), StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        if !insert_role(&mut tx, role).await? {
            return Err(StoreError::RoleExists(role.name.clone()));
        }
        let detail = permission_list(&role.permissions);
        append_audit(
            &mut tx,
            role.created_at,
            actor,
            AuditAction::RoleCreate,
            Some(role.name.as_str()),
            Some(&detail),
        )
        .await?;
        self.notify(&mut tx, [Topic::Role(role.name.clone())])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Applies `update` to role `name` ([`Role::apply`] says how) and returns
    /// the role as it is now.
    ///
    /// # Errors
    /// [`StoreError::RoleNotFound`], or [`StoreError::BuiltinRole`].
    pub async fn update_role(
        &self,
        name: &RoleName,
        update: &RoleUpdate,
        actor: Actor,
        now: Timestamp,
    ) -> Result<Role, StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        let mut role = load_roles(&mut tx)
            .await?
            .into_iter()
            .find(|role| &role.name == name)
            .ok_or_else(|| StoreError::RoleNotFound(name.clone()))?;
        if role.builtin {
            return Err(StoreError::BuiltinRole(name.clone()));
        }
        let before = role.clone();
        role.apply(update, now);
        sqlx::query(
            "UPDATE roles SET description = $1, max_ttl_ms = $2, updated_at = $3,
                              rate_requests = $4, rate_period_ms = $5, rate_burst = $6
             WHERE name = $7",
        )
        .bind(role.description.clone())
        .bind(role.max_ttl.map(duration_millis))
        .bind(role.updated_at.as_millis())
        .bind(role.rate_limit.map(|l| i64::from(l.requests())))
        .bind(role.rate_limit.map(|l| duration_millis(l.per())))
        .bind(role.rate_limit.map(|l| i64::from(l.burst())))
        .bind(name.as_str().to_owned())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM role_permissions WHERE role = $1")
            .bind(name.as_str().to_owned())
            .execute(&mut *tx)
            .await?;
        insert_role_permissions(&mut tx, &role).await?;
        let detail = role.describe_change(&before);
        append_audit(
            &mut tx,
            now,
            actor,
            AuditAction::RoleUpdate,
            Some(name.as_str()),
            Some(&detail),
        )
        .await?;
        self.notify(&mut tx, [Topic::Role(name.clone())]).await?;
        tx.commit().await?;
        Ok(role)
    }

    /// Deletes role `name`, which no key may hold (revoked keys included:
    /// their records keep naming the roles they had).
    ///
    /// # Errors
    /// [`StoreError::RoleNotFound`], [`StoreError::BuiltinRole`] or
    /// [`StoreError::RoleInUse`] with how many keys hold it.
    pub async fn delete_role(
        &self,
        name: &RoleName,
        actor: Actor,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.count();
        let mut tx = self.begin_write().await?;
        let builtin: Option<i64> = sqlx::query("SELECT builtin FROM roles WHERE name = $1")
            .bind(name.as_str().to_owned())
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get("builtin"))
            .transpose()?;
        match builtin {
            None => return Err(StoreError::RoleNotFound(name.clone())),
            Some(1) => return Err(StoreError::BuiltinRole(name.clone())),
            Some(_) => {}
        }
        let holders = sqlx::query(
            "SELECT COUNT(*) AS keys, COUNT(*) FILTER (WHERE k.revoked_at IS NULL) AS active
             FROM key_roles r JOIN api_keys k ON k.id = r.key_id WHERE r.role = $1",
        )
        .bind(name.as_str().to_owned())
        .fetch_one(&mut *tx)
        .await?;
        let keys: i64 = holders.try_get("keys")?;
        if keys > 0 {
            return Err(StoreError::RoleInUse {
                name: name.clone(),
                keys,
                active: holders.try_get("active")?,
            });
        }
        sqlx::query("DELETE FROM roles WHERE name = $1")
            .bind(name.as_str().to_owned())
            .execute(&mut *tx)
            .await?;
        append_audit(
            &mut tx,
            now,
            actor,
            AuditAction::RoleDelete,
            Some(name.as_str()),
            None,
        )
        .await?;
        self.notify(&mut tx, [Topic::Role(name.clone())]).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Inserts `role`; `Ok(false)` when a role of that name exists.
pub(super) async fn insert_role(conn: &mut AnyConnection, role: &Role) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO roles (name, description, builtin, max_ttl_ms, created_at, updated_at,
                            rate_requests, rate_period_ms, rate_burst)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name) DO NOTHING",
    )
    .bind(role.name.as_str().to_owned())
    .bind(role.description.clone())
    .bind(i64::from(role.builtin))
    .bind(role.max_ttl.map(duration_millis))
    .bind(role.created_at.as_millis())
    .bind(role.updated_at.as_millis())
    .bind(role.rate_limit.map(|l| i64::from(l.requests())))
    .bind(role.rate_limit.map(|l| duration_millis(l.per())))
    .bind(role.rate_limit.map(|l| i64::from(l.burst())))
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    insert_role_permissions(conn, role).await?;
    Ok(true)
}

/// Writes `role`'s permissions, which must have none yet.
async fn insert_role_permissions(conn: &mut AnyConnection, role: &Role) -> Result<(), StoreError> {
    for permission in role.permissions.iter() {
        sqlx::query("INSERT INTO role_permissions (role, permission) VALUES ($1, $2)")
            .bind(role.name.as_str().to_owned())
            .bind(permission.as_str().to_owned())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// `permissions: a, b` for audit records of role changes.
fn permission_list(permissions: &[Permission]) -> String {
    let names: Vec<&str> = permissions.iter().map(Permission::as_str).collect();
    format!("permissions: {}", names.join(", "))
}
