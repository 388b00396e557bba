//! The key lifecycle verbs, over the admin API: `mint`, `list`, `show`,
//! `update` (a key's rate limit), `rotate` and `revoke` (one key by id, or
//! every key with some labels). Each needs an admin key holding
//! `keyward:admin`.

use std::{
    collections::HashMap,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use clap::{ArgGroup, Args, ValueEnum};
use keyward::{pb, rate_limit::RateLimit};
use serde_json::Value;

use crate::{
    cli::{
        GlobalArgs, parse_burst, parse_duration, parse_label, parse_max_uses,
        parse_positive_duration, parse_rate, parse_rfc3339,
    },
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

    /// Permission to grant directly, besides the roles', e.g. `deploy:write`
    /// or `deploy:*` (repeatable). Handy for a one-off key; for many keys
    /// alike a role is easier to change later. An admin key without
    /// `keyward:admin` can grant only permissions it holds itself
    #[arg(long = "permission", value_name = "PERMISSION")]
    pub permissions: Vec<String>,

    /// Only accept the key from addresses in this range, e.g. `10.0.0.0/8`
    /// or `2001:db8::/32` (repeatable) [default: any address]. Backends must
    /// then pass the caller's address to Validate, or the key is refused
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    pub allowed_cidrs: Vec<String>,

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

    /// The key's own rate limit, `N/s`, `N/m` or `N/h` (N calls per second,
    /// minute or hour), e.g. `100/s` [default: the strictest default of its
    /// roles, else the server's --default-rate, else none]. Each keyward
    /// server (replica) counts on its own: behind 3 replicas the key may get
    /// up to 3 times this. The limit applies only after the key is proven
    /// (live, right secret), so invalid traffic cannot spend its quota.
    /// Change it later with `keywardctl update`
    // `allow_hyphen_values`: `--rate -1/s` reaches the parser and gets its
    // message, instead of reading as an unknown flag `-1`.
    #[arg(long, value_name = "RATE", value_parser = parse_rate, allow_hyphen_values = true)]
    pub rate: Option<RateLimit>,

    /// With --rate: the most calls the key may make at once (after a quiet
    /// spell) before the rate paces it, e.g. `20` [default: N, the rate's
    /// count]
    #[arg(long, value_name = "B", value_parser = parse_burst, requires = "rate", allow_hyphen_values = true)]
    pub burst: Option<u32>,

    /// The most successful validations the key may pass, e.g. `1` for a
    /// one-time key [default: no cap]. Each use is written to the database
    /// before the answer, so the cap holds across restarts and replicas;
    /// then the key is refused as INVALID
    #[arg(long, value_name = "N", value_parser = parse_max_uses, allow_hyphen_values = true)]
    pub max_uses: Option<u64>,
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
    /// Capped keys whose uses are spent
    Exhausted,
}

impl From<StateFilter> for pb::KeyState {
    fn from(state: StateFilter) -> Self {
        match state {
            StateFilter::Active => Self::Active,
            StateFilter::Expired => Self::Expired,
            StateFilter::Revoked => Self::Revoked,
            StateFilter::Exhausted => Self::Exhausted,
        }
    }
}

/// Arguments of `show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The key id (the 11 characters after `<prefix>_` in the key)
    pub id: String,
}

/// Arguments of `update`. A run that changes nothing is a usage error: it is
/// almost always a forgotten flag.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("change").required(true).args(["rate", "clear_rate"])))]
pub struct UpdateArgs {
    /// The id of the key to change
    pub id: String,

    /// The key's new rate limit, `N/s`, `N/m` or `N/h` (N calls per second,
    /// minute or hour), e.g. `100/s`; it replaces any limit from its roles or
    /// the server. Each keyward server (replica) counts on its own: behind 3
    /// replicas the key may get up to 3 times this. The limit applies only
    /// after the key is proven (live, right secret), so invalid traffic
    /// cannot spend its quota
    #[arg(long, value_name = "RATE", value_parser = parse_rate, allow_hyphen_values = true)]
    pub rate: Option<RateLimit>,

    /// With --rate: the most calls the key may make at once (after a quiet
    /// spell) before the rate paces it, e.g. `20` [default: N, the rate's
    /// count]
    #[arg(long, value_name = "B", value_parser = parse_burst, requires = "rate", conflicts_with = "clear_rate", allow_hyphen_values = true)]
    pub burst: Option<u32>,

    /// Remove the key's own rate limit: the strictest default of its roles
    /// applies, else the server's --default-rate, else none
    #[arg(long)]
    pub clear_rate: bool,
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

/// Arguments of `revoke`: one key by id, or in bulk by labels. Bulk revoking
/// can stop many services at once, so it lists what matches first and acts
/// only with `--yes`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["id", "labels"])))]
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
        permissions: args.permissions,
        allowed_cidrs: args.allowed_cidrs,
        rate_limit: rate_limit_request(args.rate, args.burst)?,
        // Zero is "no cap" on the wire; `--max-uses` refuses it, so leaving
        // the flag out is the only way to say that.
        max_uses: args.max_uses.unwrap_or(0),
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
                dash(key.permissions.join(",")),
                dash(key.owner.clone()),
                dash(output::labels_text(&key.labels).replace(", ", ",")),
                output::cidrs_text(&key.allowed_cidrs, ","),
                output::timestamp(key.created_at.as_ref()).unwrap_or_else(|| "-".into()),
                output::timestamp(key.expires_at.as_ref()).unwrap_or_else(|| "never".into()),
                output::last_used_text(key),
            ]
        })
        .collect();
    output::table_text(
        &[
            "ID",
            "PREFIX",
            "STATE",
            "ROLES",
            "PERMISSIONS",
            "OWNER",
            "LABELS",
            "CIDRS",
            "CREATED",
            "EXPIRES",
            "LAST USED",
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

/// Sets or removes a key's own rate limit and prints the key as it is now.
///
/// # Errors
/// As [`show`]; INVALID_ARGUMENT when the server refuses the limit.
pub async fn update(args: UpdateArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let request = pb::UpdateKeyRequest {
        id: args.id,
        rate_limit: rate_limit_request(args.rate, args.burst)?,
        clear_rate_limit: args.clear_rate,
    };
    let mut client = admin_client(global).await?;
    let key = client
        .update_key(request)
        .await
        .map_err(|status| CliError::from_status(status, &global.server))?
        .into_inner();
    match global.output {
        OutputFormat::Json => output::print_json(&Value::Object(output::key_json(&key)))?,
        OutputFormat::Table => output::print(&format!(
            "Updated key {}.\n\n{}",
            key.id,
            output::fields_text(&output::key_fields(&key))
        ))?,
    }
    Ok(ExitCode::SUCCESS)
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

/// Revokes one key by id, or every key matching `--label` (and `--owner`).
///
/// # Errors
/// As [`show`]; for bulk revoking also a repeated label with two values
/// (usage) and [`CliError::RevokeNotConfirmed`] without `--yes`.
pub async fn revoke(args: RevokeArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    match args.id {
        Some(id) => revoke_one(id, args.reason, global).await,
        None => revoke_bulk(args, global).await,
    }
}

/// Revokes a key and reports when, including when it already was.
async fn revoke_one(
    id: String,
    reason: Option<String>,
    global: &GlobalArgs,
) -> Result<ExitCode, CliError> {
    let mut client = admin_client(global).await?;
    let response = client
        .revoke_key(pb::RevokeKeyRequest {
            id,
            reason: reason.unwrap_or_default(),
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
            output::print_json(&bulk_revoke_json(args.dry_run, &[]))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.dry_run {
        if table {
            output::print(&format!(
                "{} would be revoked (dry run, nothing changed):\n{}",
                output::count_keys(matching.len()),
                id_lines(&matching)
            ))?;
        } else {
            output::print_json(&bulk_revoke_json(true, &matching))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !args.yes {
        if table {
            // Which keys, so the operator can check before passing --yes.
            output::print(&format!(
                "{} {}:\n{}",
                output::count_keys(matching.len()),
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
                output::count_keys(revoked.len()),
                id_lines(&revoked)
            )
        })?;
    } else {
        output::print_json(&bulk_revoke_json(false, &revoked))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke_keys(
    client: &mut AdminClient,
    request: pb::RevokeKeysRequest,
    global: &GlobalArgs,
) -> Result<Vec<String>, CliError> {
    Ok(client
        .revoke_keys(request)
        .await
        .map_err(|status| CliError::from_status(status, &global.server))?
        .into_inner()
        .key_ids)
}

/// The JSON report of a bulk revoke: `key_ids` are the keys revoked, or
/// with `dry_run` the keys that would be.
fn bulk_revoke_json(dry_run: bool, key_ids: &[String]) -> Value {
    serde_json::json!({
        "dry_run": dry_run,
        "count": key_ids.len(),
        "key_ids": key_ids,
    })
}

/// Key ids, one indented line each.
fn id_lines(ids: &[String]) -> String {
    ids.iter().map(|id| format!("  {id}\n")).collect()
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

/// The rate limit `--rate` and `--burst` describe, for the wire: `--burst`
/// replaces the rate's own burst (N). The library checks the result, so the
/// CLI refuses exactly what the server would.
///
/// # Errors
/// A usage error naming `--burst` if the library refuses the combination.
pub fn rate_limit_request(
    rate: Option<RateLimit>,
    burst: Option<u32>,
) -> Result<Option<pb::RateLimit>, CliError> {
    let Some(rate) = rate else {
        // clap makes `--burst` require `--rate`.
        return Ok(None);
    };
    let limit = match burst {
        Some(burst) => RateLimit::new(rate.requests(), rate.per(), burst)
            .map_err(|e| CliError::Usage(format!("--burst {burst}: {e}")))?,
        None => rate,
    };
    Ok(Some(pb::RateLimit {
        requests: limit.requests(),
        per: Some(proto_duration(limit.per(), "--rate")?),
        burst: limit.burst(),
    }))
}

/// `duration` for the wire; one too long for protobuf is a usage error
/// naming `flag`.
pub fn proto_duration(duration: Duration, flag: &str) -> Result<prost_types::Duration, CliError> {
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
        let ci = pb::Key {
            id: "ZyXwVuTsRqP".into(),
            prefix: "ci".into(),
            permissions: vec!["deploy:read".into(), "deploy:write".into()],
            allowed_cidrs: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
            state: pb::KeyState::Active as i32,
            last_used_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let text = list_table(&[key, ci]);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|line| line.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [
                &[
                    "ID",
                    "PREFIX",
                    "STATE",
                    "ROLES",
                    "PERMISSIONS",
                    "OWNER",
                    "LABELS",
                    "CIDRS",
                    "CREATED",
                    "EXPIRES",
                    "LAST",
                    "USED"
                ][..],
                &[
                    "AbCdEfGhIjK",
                    "kw",
                    "active",
                    "admin",
                    "-",
                    "-",
                    "-",
                    "any",
                    "-",
                    "never",
                    "never"
                ],
                &[
                    "ZyXwVuTsRqP",
                    "ci",
                    "active",
                    "-",
                    "deploy:read,deploy:write",
                    "-",
                    "-",
                    "10.0.0.0/8,2001:db8::/32",
                    "-",
                    "never",
                    "2027-01-15T08:00:00Z"
                ],
            ]
        );
    }

    fn rate(text: &str) -> Option<RateLimit> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn burst_replaces_the_rates_own() {
        let limit = rate_limit_request(rate("5/m"), None).unwrap().unwrap();
        assert_eq!(
            limit,
            pb::RateLimit {
                requests: 5,
                per: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0
                }),
                burst: 5,
            }
        );
        let limit = rate_limit_request(rate("100/s"), Some(20))
            .unwrap()
            .unwrap();
        assert_eq!((limit.requests, limit.burst), (100, 20));
        assert_eq!(rate_limit_request(None, None).unwrap(), None);
        let err = rate_limit_request(rate("1/s"), Some(0)).unwrap_err();
        assert!(matches!(err, CliError::Usage(_)));
        assert!(err.to_string().starts_with("--burst 0: "), "{err}");
    }

    #[test]
    fn update_needs_one_rate_change() {
        use clap::{Parser as _, error::ErrorKind};
        let parse = |args: &[&str]| {
            crate::cli::Cli::try_parse_from(
                ["keywardctl", "update", "AbCdEfGhIjK"].iter().chain(args),
            )
            .map(|_| ())
            .map_err(|e| e.kind())
        };
        assert_eq!(parse(&["--rate", "5/s"]), Ok(()));
        assert_eq!(parse(&["--rate", "5/s", "--burst", "9"]), Ok(()));
        assert_eq!(parse(&["--clear-rate"]), Ok(()));
        assert_eq!(parse(&[]), Err(ErrorKind::MissingRequiredArgument));
        assert_eq!(
            parse(&["--burst", "9"]),
            Err(ErrorKind::MissingRequiredArgument)
        );
        assert_eq!(
            parse(&["--rate", "5/s", "--clear-rate"]),
            Err(ErrorKind::ArgumentConflict)
        );
        assert_eq!(
            parse(&["--clear-rate", "--burst", "9"]),
            Err(ErrorKind::ArgumentConflict)
        );
    }

    #[test]
    fn bulk_revoke_json_and_id_lines() {
        let ids = vec!["AbCdEfGhIjK".to_owned(), "ZyXwVuTsRqP".to_owned()];
        assert_eq!(
            bulk_revoke_json(true, &ids),
            serde_json::json!({"dry_run": true, "count": 2, "key_ids": ids})
        );
        assert_eq!(id_lines(&ids), "  AbCdEfGhIjK\n  ZyXwVuTsRqP\n");
    }
}
