//! The key lifecycle verbs, over the admin API: `mint`, `list`, `show`,
//! `rotate` and `revoke`. Each needs an admin key holding `keyward:admin`.

use std::{
    collections::HashMap,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use clap::{Args, ValueEnum};
use keyward::pb;
use serde_json::Value;

use crate::{
    cli::{GlobalArgs, parse_duration, parse_label, parse_positive_duration, parse_rfc3339},
    client::{AdminClient, admin_client},
    error::CliError,
    output::{self, OutputFormat},
};

/// Arguments of `mint`.
#[derive(Debug, Args)]
pub struct MintArgs {
    /// Key prefix, `[a-z][a-z0-9]{0,15}`: tells a reader (and a secret
    /// scanner) what a leaked key belongs to [default: kw]
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,

    /// Role to grant, e.g. `validator` (repeatable; each must exist)
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,

    /// Label to attach, used to find and manage keys later (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// Who the key belongs to: a team, service or person
    #[arg(long, value_name = "OWNER")]
    pub owner: Option<String>,

    /// What the key is for
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,

    /// Lifetime from now, e.g. `30m`, `12h`, `90d` [default: never expires]
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, conflicts_with = "expires_at")]
    pub ttl: Option<Duration>,

    /// Absolute expiry in UTC, e.g. `2027-01-31T12:00:00Z`
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub expires_at: Option<SystemTime>,
}

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only keys carrying this label (repeatable: all must match)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// Only keys with this owner (exact match)
    #[arg(long, value_name = "OWNER")]
    pub owner: Option<String>,

    /// Only keys holding this role
    #[arg(long, value_name = "ROLE")]
    pub role: Option<String>,

    /// Only keys in this state
    #[arg(long, value_enum, value_name = "STATE")]
    pub state: Option<StateFilter>,

    /// Stop after this many keys [default: all]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,

    /// Keys fetched per request (1-1000); lower it to go easy on a busy server
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
}

/// `list --state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateFilter {
    /// Keys that validate
    Active,
    /// Keys past their expiry
    Expired,
    /// Revoked keys
    Revoked,
}

impl From<StateFilter> for pb::KeyState {
    fn from(state: StateFilter) -> Self {
        match state {
            StateFilter::Active => Self::Active,
            StateFilter::Expired => Self::Expired,
            StateFilter::Revoked => Self::Revoked,
        }
    }
}

/// Arguments of `show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The key id (the 11 characters after `<prefix>_` in the key)
    pub id: String,
}

/// Arguments of `rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The id of the key to replace
    pub id: String,

    /// How long the old key keeps working, e.g. `1h`, so clients can switch
    /// over [default: none, the old key is revoked at once]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub grace: Option<Duration>,
}

/// Arguments of `revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The id of the key to revoke
    pub id: String,

    /// Why, for the audit log
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// Mints a key and prints it with its metadata.
///
/// # Errors
/// A repeated label with two values (usage), no admin key, an unreachable
/// server, or the server refusing (e.g. an unknown role).
pub async fn mint(args: MintArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let labels = label_map(args.labels)?;
    let expiry = match (args.ttl, args.expires_at) {
        (Some(ttl), _) => Some(pb::mint_key_request::Expiry::Ttl(proto_duration(
            ttl, "--ttl",
        )?)),
        (None, Some(at)) => Some(pb::mint_key_request::Expiry::ExpiresAt(at.into())),
        (None, None) => None,
    };
    let request = pb::MintKeyRequest {
        prefix: args.prefix.unwrap_or_default(),
        roles: args.roles,
        labels: labels.into_iter().collect(),
        owner: args.owner.unwrap_or_default(),
        description: args.description.unwrap_or_default(),
        expiry,
    };
    let mut client = admin_client(global).await?;
    let response = client
        .mint_key(request)
        .await
        .map_err(|status| CliError::from_status(status, &global.server))?
        .into_inner();
    let key = response
        .key
        .ok_or(CliError::IncompleteResponse("no key metadata"))?;
    match global.output {
        OutputFormat::Json => {
            let object = output::minted_key_json(&key, response.plaintext);
            output::print_json(&Value::Object(object))?;
        }
        OutputFormat::Table => {
            let mut fields = vec![("key", response.plaintext)];
            fields.extend(output::key_fields(&key));
            output::print(&format!(
                "Minted key {}. Store it now: it is shown only this once.\n\n{}",
                key.id,
                output::fields_text(&fields)
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists keys, following pages until the end or `--limit`.
///
/// # Errors
/// As [`mint`].
pub async fn list(args: ListArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let labels = label_map(args.labels)?;
    let limit = args.limit.map(|n| n as usize);
    let mut client = admin_client(global).await?;

    let mut keys = Vec::new();
    let mut page_token = String::new();
    loop {
        let remaining = limit.map_or(usize::MAX, |limit| limit - keys.len());
        let page_size = args
            .page_size
            .min(u32::try_from(remaining).unwrap_or(u32::MAX));
        let request = pb::ListKeysRequest {
            page_size,
            page_token: page_token.clone(),
            labels: labels.clone().into_iter().collect(),
            owner: args.owner.clone().unwrap_or_default(),
            role: args.role.clone().unwrap_or_default(),
            state: args
                .state
                .map_or(pb::KeyState::Unspecified, Into::into)
                .into(),
        };
        let page = client
            .list_keys(request)
            .await
            .map_err(|status| CliError::from_status(status, &global.server))?
            .into_inner();
        keys.extend(page.keys);
        if limit.is_some_and(|limit| keys.len() >= limit) {
            keys.truncate(limit.unwrap_or(usize::MAX));
            break;
        }
        // A token that does not move would loop forever; stop instead.
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            break;
        }
        page_token = page.next_page_token;
    }

    match global.output {
        OutputFormat::Json => output::print_json(&Value::Array(
            keys.iter()
                .map(|key| Value::Object(output::key_json(key)))
                .collect(),
        ))?,
        OutputFormat::Table if keys.is_empty() => output::print("No keys match.\n")?,
        OutputFormat::Table => output::print(&list_table(&keys))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn list_table(keys: &[pb::Key]) -> String {
    let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|key| {
            vec![
                key.id.clone(),
                key.prefix.clone(),
                output::state_name(key.state),
                dash(key.roles.join(",")),
                dash(key.owner.clone()),
                dash(output::labels_text(&key.labels).replace(", ", ",")),
                output::timestamp(key.created_at.as_ref()).unwrap_or_else(|| "-".into()),
                output::timestamp(key.expires_at.as_ref()).unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    output::table_text(
        &[
            "ID", "PREFIX", "STATE", "ROLES", "OWNER", "LABELS", "CREATED", "EXPIRES",
        ],
        &rows,
    )
}

/// Shows one key's metadata.
///
/// # Errors
/// No admin key, an unreachable server, or NOT_FOUND for an unknown id.
pub async fn show(args: ShowArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let mut client = admin_client(global).await?;
    let key = get_key(&mut client, args.id, global).await?;
    match global.output {
        OutputFormat::Json => output::print_json(&Value::Object(output::key_json(&key)))?,
        OutputFormat::Table => output::print(&output::fields_text(&output::key_fields(&key)))?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn get_key(
    client: &mut AdminClient,
    id: String,
    global: &GlobalArgs,
) -> Result<pb::Key, CliError> {
    Ok(client
        .get_key(pb::GetKeyRequest { id })
        .await
        .map_err(|status| CliError::from_status(status, &global.server))?
        .into_inner())
}

/// Rotates a key and prints the successor (with its plaintext, this once)
/// and what became of the old key.
///
/// # Errors
/// As [`show`], and FAILED_PRECONDITION for a key that cannot be rotated
/// (revoked, expired or already rotated).
pub async fn rotate(args: RotateArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let grace = args
        .grace
        .map(|grace| proto_duration(grace, "--grace"))
        .transpose()?;
    let mut client = admin_client(global).await?;
    let response = client
        .rotate_key(pb::RotateKeyRequest { id: args.id, grace })
        .await
        .map_err(|status| CliError::from_status(status, &global.server))?
        .into_inner();
    let key = response
        .key
        .ok_or(CliError::IncompleteResponse("no successor key"))?;
    let previous = response
        .previous
        .ok_or(CliError::IncompleteResponse("no previous key"))?;
    match global.output {
        OutputFormat::Json => {
            let mut object = output::minted_key_json(&key, response.plaintext);
            object.insert(
                "previous".into(),
                Value::Object(output::key_json(&previous)),
            );
            output::print_json(&Value::Object(object))?;
        }
        OutputFormat::Table => {
            let mut fields = vec![("key", response.plaintext)];
            fields.extend(output::key_fields(&key));
            output::print(&format!(
                "Rotated key {} to {}. Store the new key now: it is shown only this once.\n{}\n\n{}",
                previous.id,
                key.id,
                previous_fate(&previous),
                output::fields_text(&fields)
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What happens to the old key of a rotation, in one sentence.
fn previous_fate(previous: &pb::Key) -> String {
    if let Some(revoked) = output::timestamp(previous.revoked_at.as_ref()) {
        format!("The old key {} was revoked at {revoked}.", previous.id)
    } else if let Some(expires) = output::timestamp(previous.expires_at.as_ref()) {
        format!("The old key {} keeps working until {expires}.", previous.id)
    } else {
        format!(
            "The old key {} is {}.",
            previous.id,
            output::state_name(previous.state)
        )
    }
}

/// Revokes a key and reports when, including when it already was.
///
/// # Errors
/// As [`show`].
pub async fn revoke(args: RevokeArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let mut client = admin_client(global).await?;
    let response = client
        .revoke_key(pb::RevokeKeyRequest {
            id: args.id,
            reason: args.reason.unwrap_or_default(),
        })
        .await
        .map_err(|status| CliError::from_status(status, &global.server))?
        .into_inner();
    let key = response
        .key
        .ok_or(CliError::IncompleteResponse("no key metadata"))?;
    match global.output {
        OutputFormat::Json => {
            let mut object = output::key_json(&key);
            object.insert("already_revoked".into(), response.already_revoked.into());
            output::print_json(&Value::Object(object))?;
        }
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
                text.push_str(&format!("Reason: {}\n", key.revoke_reason));
            }
            output::print(&text)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Collects `--label` values, refusing one key given with two values (which
/// one was meant cannot be guessed).
fn label_map(labels: Vec<(String, String)>) -> Result<HashMap<String, String>, CliError> {
    let mut map = HashMap::with_capacity(labels.len());
    for (key, value) in labels {
        if let Some(previous) = map.insert(key.clone(), value.clone())
            && previous != value
        {
            return Err(CliError::Usage(format!(
                "--label {key} is given twice, as {key}={previous} and {key}={value}"
            )));
        }
    }
    Ok(map)
}

fn proto_duration(duration: Duration, flag: &str) -> Result<prost_types::Duration, CliError> {
    prost_types::Duration::try_from(duration)
        .map_err(|_| CliError::Usage(format!("{flag} is too long")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn repeated_labels_must_agree() {
        let map = label_map(labels(&[("env", "prod"), ("team", "a"), ("env", "prod")])).unwrap();
        assert_eq!(map.len(), 2);
        let err = label_map(labels(&[("env", "prod"), ("env", "dev")])).unwrap_err();
        assert!(matches!(err, CliError::Usage(_)));
        assert!(err.to_string().contains("--label env"), "{err}");
    }

    #[test]
    fn fate_of_the_previous_key() {
        let mut previous = pb::Key {
            id: "old".into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            previous_fate(&previous),
            "The old key old keeps working until 2027-01-15T08:00:00Z."
        );
        previous.revoked_at = previous.expires_at;
        assert!(previous_fate(&previous).contains("revoked at"));
    }

    #[test]
    fn list_table_has_the_documented_columns() {
        let key = pb::Key {
            id: "AbCdEfGhIjK".into(),
            prefix: "kw".into(),
            roles: vec!["admin".into()],
            state: pb::KeyState::Active as i32,
            ..Default::default()
        };
        let text = list_table(&[key]);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            [
                "ID", "PREFIX", "STATE", "ROLES", "OWNER", "LABELS", "CREATED", "EXPIRES"
            ]
        );
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            [
                "AbCdEfGhIjK",
                "kw",
                "active",
                "admin",
                "-",
                "-",
                "-",
                "never"
            ]
        );
    }
}
