//! `keywardctl mint`: the only time a key's plaintext exists outside the
//! caller's own secret store, so it is printed once and never again.

use std::{
    process::ExitCode,
    time::{Duration, SystemTime},
};

use clap::Args;
use keyward::{pb, rate_limit::RateLimit};
use zeroize::Zeroizing;

use super::label_map;
use crate::{
    cli::{
        GlobalArgs, parse_burst, parse_label, parse_max_uses, parse_positive_duration, parse_rate,
        parse_rfc3339,
    },
    client::admin_client,
    commands::{call, proto_duration, rate_limit_request},
    error::CliError,
    output::{self, OutputFormat, key::KeyView},
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

/// Mints a key and prints it with its metadata.
///
/// # Errors
/// A repeated label with two values (usage), no admin key, an unreachable
/// server, or the server refusing (e.g. an unknown role).
pub async fn run(args: MintArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
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
    let response = call(client.mint_key(request), global).await?;
    print_minted(response.key, response.plaintext, "Minted", global)
}

/// Prints a new key and its plaintext, shown this once: after `mint`, and
/// after `exchange` (`verb` says which). The plaintext is wiped when this
/// returns, printed or not.
///
/// # Errors
/// An answer without the key's metadata; stdout failing.
pub fn print_minted(
    key: Option<pb::Key>,
    plaintext: String,
    verb: &str,
    global: &GlobalArgs,
) -> Result<ExitCode, CliError> {
    let plaintext = Zeroizing::new(plaintext);
    let key = key.ok_or(CliError::IncompleteResponse("no key metadata"))?;
    match global.output {
        OutputFormat::Json => output::print_json(&KeyView::minted(&key, &plaintext))?,
        OutputFormat::Table => {
            output::print(&output::key::minted_text(
                &format!(
                    "{verb} key {}. Store it now: it is shown only this once.",
                    key.id
                ),
                &plaintext,
                &key,
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
