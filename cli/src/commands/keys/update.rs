//! `keywardctl update ID`: changes what can change of a key after it is
//! minted without handing out a new secret; today that is its own rate limit.

use std::process::ExitCode;

use clap::{ArgGroup, Args};
use keyward::{pb, rate_limit::RateLimit};

use crate::{
    cli::{GlobalArgs, parse_burst, parse_rate},
    client::admin_client,
    commands::{call, rate_limit_request},
    error::CliError,
    output::{self, OutputFormat, key::KeyView},
};

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

/// Sets or removes a key's own rate limit and prints the key as it is now.
///
/// # Errors
/// No admin key, an unreachable server, `NOT_FOUND` for an unknown id, or
/// `INVALID_ARGUMENT` when the server refuses the limit.
pub async fn run(args: UpdateArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let request = pb::UpdateKeyRequest {
        id: args.id,
        rate_limit: rate_limit_request(args.rate, args.burst)?,
        clear_rate_limit: args.clear_rate,
    };
    let mut client = admin_client(global).await?;
    let key = call(client.update_key(request), global).await?;
    match global.output {
        OutputFormat::Json => output::print_json(&KeyView::new(&key))?,
        OutputFormat::Table => output::print(&format!(
            "Updated key {}.\n\n{}",
            key.id,
            output::fields_text(&output::key::key_fields(&key))
        ))?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
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
}
