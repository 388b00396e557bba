//! The audit log: appended to inside every write transaction, so a change
//! and its record commit together, and read back a page at a time. The
//! database refuses to update or delete a record (see the migrations).

use sqlx::AnyConnection;

use super::{Store, StoreError, rows::audit_record, sql::Sql};
use crate::{
    clock::Timestamp,
    model::{
        Actor, AuditAction, AuditRecord,
        query::{AuditPage, AuditQuery},
    },
};

impl Store {
    /// A page of audit records, newest first.
    ///
    /// # Errors
    /// On a database failure or a row keyward could not have written.
    pub async fn list_audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        self.count();
        let mut sql = Sql::new("SELECT * FROM audit_log WHERE 1 = 1");
        if let Some(since) = query.since {
            sql.push(" AND at >= ").push_bind(since.as_millis());
        }
        if let Some(until) = query.until {
            sql.push(" AND at < ").push_bind(until.as_millis());
        }
        if let Some(target) = &query.target {
            sql.push(" AND target = ").push_bind(target.clone());
        }
        if let Some(actor) = query.actor {
            sql.push(" AND actor = ").push_bind(actor.to_string());
        }
        if let Some(action) = &query.action {
            sql.push(" AND action = ").push_bind(action.clone());
        }
        if let Some(before) = query.before_seq {
            sql.push(" AND seq < ").push_bind(before);
        }
        sql.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(i64::from(query.limit) + 1);
        let mut rows = sql.build().fetch_all(&self.pool).await?;
        let more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        let records: Vec<AuditRecord> = rows.iter().map(audit_record).collect::<Result<_, _>>()?;
        let next_before_seq = more.then(|| records.last().map(|r| r.seq)).flatten();
        Ok(AuditPage {
            records,
            next_before_seq,
        })
    }
}

/// Appends one record: called by every write, inside its transaction.
pub(super) async fn append_audit(
    conn: &mut AnyConnection,
    at: Timestamp,
    actor: Actor,
    action: AuditAction,
    target: Option<&str>,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, reason) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(at.as_millis())
    .bind(actor.key_id().map(|id| id.to_string()))
    .bind(action.as_str())
    .bind(target.map(str::to_owned))
    .bind(reason.map(str::to_owned))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    on_both_stores!(audit_log_is_append_only);

    async fn audit_log_is_append_only(store: Arc<Store>) {
        sqlx::query("INSERT INTO audit_log (at, action) VALUES (1, 'key.mint')")
            .execute(&store.pool)
            .await
            .unwrap();
        for sql in ["UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log"] {
            let err = sqlx::query(sql).execute(&store.pool).await.unwrap_err();
            assert!(err.to_string().contains("append-only"), "{err}");
        }
    }
}
