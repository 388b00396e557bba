//! `keywardctl revoke`: one key by id, or every key with some labels. A
//! revocation takes effect at once on every replica, so the bulk form makes a
//! slip hard: it lists what matches first and acts only with `--yes`.

use std::{fmt::Write as _, process::ExitCode};

use clap::{ArgGroup, Args};
use keyward::pb;

use super::label_map;
use crate::{
    cli::{GlobalArgs, parse_label},
    client::{AdminClient, admin_client, self_client},
    commands::call,
    error::CliError,
    output::{
        self, OutputFormat, count_keys,
        key::{BulkRevokeView, KeyView, RevokedKeyView},
    },
};

/// Arguments of `revoke`: one key by id, or in bulk by labels. Bulk revoking
/// can stop many services at once, so it lists what matches first and acts
/// only with `--yes`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["id", "labels", "self_"])))]
pub struct RevokeArgs {
    /// The id of the key to revoke
    #[arg(conflicts_with = "labels")]
    pub id: Option<String>,

    /// Revoke every unrevoked key carrying this label (repeatable: all must
    /// match) instead of one key by id
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// With --label: only keys with this owner (exact match)
    #[arg(long, value_name = "OWNER", conflicts_with = "id")]
    pub owner: Option<String>,

    /// Why, for the audit log
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    /// With --label: list the keys that match and revoke nothing
    #[arg(long, conflicts_with = "id")]
    pub dry_run: bool,

    /// With --label: really revoke the matching keys (without it, revoke
    /// only says how many match and refuses)
    #[arg(long, conflicts_with = "id")]
    pub yes: bool,

    /// Revoke the key this command authenticates with (`KEYWARD_ADMIN_KEY`
    /// or --admin-key-file) instead: a CI job's last step, ending the key
    /// `keywardctl exchange` gave it before its TTL. Needs no permission
    #[arg(long = "self", conflicts_with_all = ["id", "labels", "owner", "reason", "dry_run", "yes"])]
    pub self_: bool,
}

/// Revokes one key by id, or every key matching `--label` (and `--owner`).
///
/// # Errors
/// No admin key, an unreachable server, `NOT_FOUND` for an unknown id; for
/// bulk revoking also a repeated label with two values
/// (usage) and [`CliError::RevokeNotConfirmed`] without `--yes`.
pub async fn run(args: RevokeArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    if args.self_ {
        return revoke_self(global).await;
    }
    match args.id {
        Some(id) => revoke_one(id, args.reason, global).await,
        None => revoke_bulk(args, global).await,
    }
}

/// Revokes the key the command authenticates with.
async fn revoke_self(global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let mut client = self_client(global).await?;
    let response = call(client.revoke_self(pb::RevokeSelfRequest {}), global).await?;
    print_revocation(
        pb::RevokeKeyResponse {
            key: response.key,
            // A revoked key is no credential: it could not have asked.
            already_revoked: false,
        },
        global,
    )
}

/// Revokes a key and reports when, including when it already was.
async fn revoke_one(
    id: String,
    reason: Option<String>,
    global: &GlobalArgs,
) -> Result<ExitCode, CliError> {
    let mut client = admin_client(global).await?;
    let request = pb::RevokeKeyRequest {
        id,
        reason: reason.unwrap_or_default(),
    };
    let response = call(client.revoke_key(request), global).await?;
    print_revocation(response, global)
}

/// Reports a revocation: when, including when the key already was.
fn print_revocation(
    response: pb::RevokeKeyResponse,
    global: &GlobalArgs,
) -> Result<ExitCode, CliError> {
    let key = response
        .key
        .ok_or(CliError::IncompleteResponse("no key metadata"))?;
    match global.output {
        OutputFormat::Json => output::print_json(&RevokedKeyView {
            key: KeyView::new(&key),
            already_revoked: response.already_revoked,
        })?,
        OutputFormat::Table => {
            let at = output::timestamp(key.revoked_at.as_ref()).unwrap_or_else(|| "-".into());
            let mut text = if response.already_revoked {
                format!(
                    "Key {} was already revoked at {at}; nothing changed.\n",
                    key.id
                )
            } else {
                format!("Revoked key {} at {at}.\n", key.id)
            };
            if !key.revoke_reason.is_empty() {
                let _ = writeln!(text, "Reason: {}", key.revoke_reason);
            }
            output::print(&text)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Revokes every key matching the labels (and owner), in three steps that
/// make a slip hard: a dry run first, which says how many keys match; then
/// nothing more unless `--yes` (and not `--dry-run`) was given; then the real
/// revocation, which reports the keys it revoked (a key minted or revoked in
/// between may make that differ from the dry run).
async fn revoke_bulk(args: RevokeArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let labels = label_map(args.labels)?;
    let request = pb::RevokeKeysRequest {
        labels: labels.into_iter().collect(),
        owner: args.owner.unwrap_or_default(),
        reason: args.reason.unwrap_or_default(),
        dry_run: true,
    };
    let mut client = admin_client(global).await?;

    let matching = revoke_keys(&mut client, request.clone(), global).await?;
    let table = global.output == OutputFormat::Table;
    if matching.is_empty() {
        if table {
            output::print("Nothing to revoke: no keys match.\n")?;
        } else {
            output::print_json(&bulk_view(args.dry_run, &[]))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.dry_run {
        if table {
            output::print(&format!(
                "{} would be revoked (dry run, nothing changed):\n{}",
                count_keys(matching.len()),
                id_lines(&matching)
            ))?;
        } else {
            output::print_json(&bulk_view(true, &matching))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !args.yes {
        if table {
            // Which keys, so the operator can check before passing --yes.
            output::print(&format!(
                "{} {}:\n{}",
                count_keys(matching.len()),
                if matching.len() == 1 {
                    "matches"
                } else {
                    "match"
                },
                id_lines(&matching)
            ))?;
        }
        return Err(CliError::RevokeNotConfirmed {
            count: matching.len(),
        });
    }

    let revoked = revoke_keys(
        &mut client,
        pb::RevokeKeysRequest {
            dry_run: false,
            ..request
        },
        global,
    )
    .await?;
    if table {
        output::print(&if revoked.is_empty() {
            // Every match was revoked by someone else in between.
            "Revoked no keys: none match any more.\n".to_owned()
        } else {
            format!(
                "Revoked {}:\n{}",
                count_keys(revoked.len()),
                id_lines(&revoked)
            )
        })?;
    } else {
        output::print_json(&bulk_view(false, &revoked))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke_keys(
    client: &mut AdminClient,
    request: pb::RevokeKeysRequest,
    global: &GlobalArgs,
) -> Result<Vec<String>, CliError> {
    Ok(call(client.revoke_keys(request), global).await?.key_ids)
}

/// The JSON report of a bulk revoke.
fn bulk_view(dry_run: bool, key_ids: &[String]) -> BulkRevokeView<'_> {
    BulkRevokeView {
        dry_run,
        count: key_ids.len(),
        key_ids,
    }
}

/// Key ids, one indented line each.
fn id_lines(ids: &[String]) -> String {
    ids.iter().fold(String::new(), |mut lines, id| {
        let _ = writeln!(lines, "  {id}");
        lines
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_revoke_json_and_id_lines() {
        let ids = vec!["AbCdEfGhIjK".to_owned(), "ZyXwVuTsRqP".to_owned()];
        assert_eq!(
            serde_json::to_string_pretty(&bulk_view(true, &ids)).unwrap(),
            "{\n  \"dry_run\": true,\n  \"count\": 2,\n  \"key_ids\": [\n    \"AbCdEfGhIjK\",\n    \"ZyXwVuTsRqP\"\n  ]\n}"
        );
        assert_eq!(id_lines(&ids), "  AbCdEfGhIjK\n  ZyXwVuTsRqP\n");
    }
}
