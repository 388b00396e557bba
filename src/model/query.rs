//! What the admin API asks of the key list and the audit log: filters and
//! page positions. The service edge builds them from requests and the store
//! answers them; they are the service's vocabulary, not the database's, so
//! they live with the model and the store only turns them into SQL.

use std::collections::BTreeMap;

use crate::{
    clock::Timestamp,
    key::KeyId,
    model::{AuditRecord, KeyRecord, KeyState},
    permission::RoleName,
};

/// Filters and position for listing keys
/// ([`Store::list_keys`](crate::store::Store::list_keys)).
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    pub labels: BTreeMap<String, String>,
    pub owner: Option<String>,
    pub role: Option<RoleName>,
    pub state: Option<KeyState>,
    pub after: Option<PageCursor>,
    pub limit: u32,
}

/// Where a page ends: keys are listed newest first by `(created_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    pub created_at: Timestamp,
    pub id: KeyId,
}

/// One page of keys.
#[derive(Debug)]
pub struct KeyPage {
    pub keys: Vec<KeyRecord>,
    /// Set when more keys may follow.
    pub next: Option<PageCursor>,
}

/// Filters and position for reading the audit log
/// ([`Store::list_audit`](crate::store::Store::list_audit)).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub target: Option<String>,
    pub actor: Option<KeyId>,
    pub action: Option<String>,
    /// Only records with a smaller sequence number (the next page).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// One page of audit records, newest first.
#[derive(Debug)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Set when more records may follow: pass as `before_seq`.
    pub next_before_seq: Option<i64>,
}
