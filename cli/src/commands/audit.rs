//! `keywardctl audit`: reads the audit log, newest first. Every change (mint,
//! rotate, revoke, role edits) has a record written in the same transaction,
//! naming the key that made it; none holds a secret.

use std::{process::ExitCode, time::SystemTime};

use clap::Args;
use keyward::pb;

use crate::{
    cli::{GlobalArgs, parse_rfc3339, parse_since},
    client::admin_client,
    commands::call,
    error::CliError,
    output::{
        self, OutputFormat,
        audit::{AuditRecordView, audit_table},
    },
};

/// The most records one request asks for, as the server allows.
const MAX_PAGE_SIZE: u32 = 1000;

/// Arguments of `audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only records from this far back, e.g. `1h` or `7d` (that long ago), or
    /// since an RFC 3339 time in UTC, e.g. `2027-01-31T12:00:00Z`
    #[arg(long, value_name = "DURATION|RFC3339", value_parser = parse_since)]
    pub since: Option<SystemTime>,

    /// Only records before this RFC 3339 time in UTC
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub until: Option<SystemTime>,

    /// Only records about this key id (its mint, rotations, revocation)
    #[arg(long = "key", value_name = "ID")]
    pub key_id: Option<String>,

    /// Only records of changes made with this key id
    #[arg(long, value_name = "ID")]
    pub actor: Option<String>,

    /// Only records of this action, e.g. `key.mint`, `key.revoke`,
    /// `role.update`
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,

    /// Stop after this many records; the newest come first
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

/// Prints the matching audit records, following pages up to `--limit`.
///
/// # Errors
/// No admin key, an unreachable server, or the server refusing the filters.
pub async fn run(args: AuditArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let limit = args.limit as usize;
    let mut client = admin_client(global).await?;

    let mut records = Vec::new();
    let mut page_token = String::new();
    loop {
        let remaining = u32::try_from(limit - records.len()).unwrap_or(u32::MAX);
        let request = pb::ListAuditRecordsRequest {
            since: args.since.map(Into::into),
            until: args.until.map(Into::into),
            key_id: args.key_id.clone().unwrap_or_default(),
            actor: args.actor.clone().unwrap_or_default(),
            action: args.action.clone().unwrap_or_default(),
            page_size: remaining.min(MAX_PAGE_SIZE),
            page_token: page_token.clone(),
        };
        let page = call(client.list_audit_records(request), global).await?;
        records.extend(page.records);
        if records.len() >= limit {
            records.truncate(limit);
            break;
        }
        // A token that does not move would loop forever; stop instead.
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            break;
        }
        page_token = page.next_page_token;
    }

    match global.output {
        OutputFormat::Json => {
            output::print_json(
                &records
                    .iter()
                    .map(AuditRecordView::from)
                    .collect::<Vec<_>>(),
            )?;
        }
        OutputFormat::Table if records.is_empty() => {
            output::print("No audit records match.\n")?;
        }
        OutputFormat::Table => output::print(&audit_table(&records))?,
    }
    Ok(ExitCode::SUCCESS)
}
