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
    /// Keys carrying every one of these, with exactly this value; empty: no
    /// label filter.
    pub labels: BTreeMap<String, String>,
    /// Exact match; `None` (an empty owner in the request): any owner.
    pub owner: Option<String>,
    /// Keys holding this role, whatever others they hold.
    pub role: Option<RoleName>,
    /// As [`KeyRecord::state`] has it at the `now` given to `list_keys`; `None`: any.
    pub state: Option<KeyState>,
    /// The previous page's [`KeyPage::next`]; `None`: from the newest key.
    pub after: Option<PageCursor>,
    /// Page size, taken as is: the service edge turns 0 into its default,
    /// but the store gives an empty page for 0 (the `Default`).
    pub limit: u32,
}

/// Where a page ends: keys are listed newest first by `(created_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    /// Of the last key shown; with `id`, sent to clients as the page token
    /// `<millis>.<id>`.
    pub created_at: Timestamp,
    /// Orders keys created in the same millisecond, so none is skipped or
    /// shown twice.
    pub id: KeyId,
}

/// One page of keys.
#[derive(Debug)]
pub struct KeyPage {
    /// At most the query's `limit`, newest first.
    pub keys: Vec<KeyRecord>,
    /// Set when more keys may follow.
    pub next: Option<PageCursor>,
}

/// Filters and position for reading the audit log
/// ([`Store::list_audit`](crate::store::Store::list_audit)).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Inclusive: records at or after this time.
    pub since: Option<Timestamp>,
    /// Exclusive: records strictly before this time.
    pub until: Option<Timestamp>,
    /// Exact text match on [`AuditRecord::target`]; the API fills it only
    /// from a key id, printed canonically.
    pub target: Option<String>,
    /// Records made by this key; the local operator's alone cannot be asked
    /// for.
    pub actor: Option<KeyId>,
    /// A stored name such as `key.mint` ([`AuditAction::as_str`]); not
    /// checked against the known names, so a typo matches nothing.
    ///
    /// [`AuditAction::as_str`]: crate::model::AuditAction::as_str
    pub action: Option<String>,
    /// Only records with a smaller sequence number (the next page).
    pub before_seq: Option<i64>,
    /// Page size, taken as is, as in [`KeyQuery::limit`].
    pub limit: u32,
}

/// One page of audit records, newest first.
#[derive(Debug)]
pub struct AuditPage {
    /// At most the query's `limit`, highest `seq` first.
    pub records: Vec<AuditRecord>,
    /// Set when more records may follow: pass as `before_seq`.
    pub next_before_seq: Option<i64>,
}
