//! `keywardctl list`: keys, newest first, filtered on the server, so a
//! large key space is paged through rather than loaded whole.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use keyward::pb;

use super::label_map;
use crate::{
    cli::{GlobalArgs, parse_label},
    client::admin_client,
    commands::call,
    error::CliError,
    output::{self, OutputFormat, key::KeyView},
};

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

/// Lists keys, following pages until the end or `--limit`.
///
/// # Errors
/// A repeated label with two values (usage), no admin key, an unreachable
/// server, or the server refusing a filter.
pub async fn run(args: ListArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
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
        let page = call(client.list_keys(request), global).await?;
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
        OutputFormat::Json => {
            output::print_json(&keys.iter().map(KeyView::new).collect::<Vec<_>>())?;
        }
        OutputFormat::Table if keys.is_empty() => output::print("No keys match.\n")?,
        OutputFormat::Table => output::print(&output::key::keys_table(&keys))?,
    }
    Ok(ExitCode::SUCCESS)
}
