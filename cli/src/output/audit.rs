//! Audit records: their JSON view and the table.

use keyward::pb;
use serde::Serialize;

use super::{non_empty, or_dash, table_text, timestamp};

/// An audit record. `actor` is `null` for the local operator (init, first
/// start), where the table says `local`.
#[derive(Debug, Serialize)]
pub struct AuditRecordView<'a> {
    seq: u64,
    at: Option<String>,
    actor: Option<&'a str>,
    action: &'a str,
    target: Option<&'a str>,
    reason: Option<&'a str>,
}

impl<'a> From<&'a pb::AuditRecord> for AuditRecordView<'a> {
    fn from(record: &'a pb::AuditRecord) -> Self {
        Self {
            seq: record.seq,
            at: timestamp(record.at.as_ref()),
            actor: non_empty(&record.actor),
            action: &record.action,
            target: non_empty(&record.target),
            reason: non_empty(&record.reason),
        }
    }
}

/// `audit` as a table, newest first as the server sends them.
pub fn audit_table(records: &[pb::AuditRecord]) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|record| {
            vec![
                timestamp(record.at.as_ref()).unwrap_or_else(|| "-".into()),
                // An empty actor is the local operator: `init` or the
                // server's first start, which need no key.
                if record.actor.is_empty() {
                    "local".into()
                } else {
                    record.actor.clone()
                },
                record.action.clone(),
                or_dash(record.target.clone()),
                or_dash(record.reason.clone()),
            ]
        })
        .collect();
    table_text(&["AT", "ACTOR", "ACTION", "TARGET", "REASON"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        })
    }

    /// Scripts read this output: names, order and forms are a contract.
    #[test]
    fn audit_json_is_pinned_and_nulls_what_is_empty() {
        let json = |record: &pb::AuditRecord| {
            serde_json::to_string(&AuditRecordView::from(record)).unwrap()
        };
        let local = pb::AuditRecord {
            seq: 7,
            action: "initialize".into(),
            ..Default::default()
        };
        assert_eq!(
            json(&local),
            r#"{"seq":7,"at":null,"actor":null,"action":"initialize","target":null,"reason":null}"#
        );
        let revoke = pb::AuditRecord {
            seq: 8,
            at: at(),
            actor: "AbCdEfGhIjK".into(),
            action: "key.revoke".into(),
            target: "ZyXwVuTsRqP".into(),
            reason: "leaked".into(),
        };
        assert_eq!(
            json(&revoke),
            r#"{"seq":8,"at":"2027-01-15T08:00:00Z","actor":"AbCdEfGhIjK","action":"key.revoke","target":"ZyXwVuTsRqP","reason":"leaked"}"#
        );
    }

    #[test]
    fn audit_table_names_the_local_operator() {
        let records = [
            pb::AuditRecord {
                seq: 2,
                at: at(),
                actor: "AbCdEfGhIjK".into(),
                action: "key.revoke".into(),
                target: "ZyXwVuTsRqP".into(),
                reason: "leaked in a log".into(),
            },
            pb::AuditRecord {
                seq: 1,
                at: at(),
                action: "initialize".into(),
                ..Default::default()
            },
        ];
        assert_eq!(
            audit_table(&records),
            "AT                    ACTOR        ACTION      TARGET       REASON\n\
             2027-01-15T08:00:00Z  AbCdEfGhIjK  key.revoke  ZyXwVuTsRqP  leaked in a log\n\
             2027-01-15T08:00:00Z  local        initialize  -            -\n"
        );
    }
}
