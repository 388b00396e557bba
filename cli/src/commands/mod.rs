//! The verbs, one module per group: [`init`] works on the database directly;
//! [`keys`] (mint, list, show, update, rotate, revoke, a module each),
//! [`roles`] (`role ...`) and [`audit`] use the admin API; [`verify`] uses
//! the data plane, as a backend server would.
//!
//! What the groups share lives here: turning a failed RPC into an operator
//! message, and turning the CLI's durations and rate limits into the wire's.

pub mod audit;
pub mod exchange;
pub mod init;
pub mod keys;
pub mod roles;
pub mod trust;
pub mod verify;

use std::{process::ExitCode, time::Duration};

use keyward::{pb, rate_limit::RateLimit};

use crate::{
    cli::{Cli, Command, GlobalArgs, Shell},
    error::CliError,
};

/// Runs the command `cli` names.
///
/// # Errors
/// Whatever the command fails with; `verify` of a key that is not valid is
/// not an error but [`ExitCode::FAILURE`].
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let global = &cli.global;
    match cli.command {
        Command::Init(args) => init::run(args, global).await,
        Command::Mint(args) => keys::mint::run(args, global).await,
        Command::List(args) => keys::list::run(args, global).await,
        Command::Show(args) => keys::show::run(args, global).await,
        Command::Update(args) => keys::update::run(args, global).await,
        Command::Rotate(args) => keys::rotate::run(args, global).await,
        Command::Revoke(args) => keys::revoke::run(args, global).await,
        Command::Verify(args) => verify::run(args, global).await,
        Command::Role(command) => roles::run(command, global).await,
        Command::Audit(args) => audit::run(args, global).await,
        Command::Trust(command) => trust::run(command, global).await,
        Command::Exchange(args) => exchange::run(args, global).await,
        Command::Completions { shell } => completions(shell),
    }
}

/// Writes the completion script for `shell` to stdout, generated from the
/// same definition that parses the command line, so it never lags behind.
fn completions(shell: Shell) -> Result<ExitCode, CliError> {
    use clap::CommandFactory;
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "keywardctl", &mut script);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &script).map_err(CliError::Output)?;
    Ok(ExitCode::SUCCESS)
}

/// Awaits an RPC and turns a failure into an operator message, so every verb
/// reports a status the same way ([`CliError::from_status`]).
async fn call<T>(
    rpc: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    global: &GlobalArgs,
) -> Result<T, CliError> {
    rpc.await
        .map(tonic::Response::into_inner)
        .map_err(|status| CliError::from_status(&status, &global.server))
}

/// The rate limit `--rate` and `--burst` describe, for the wire: `--burst`
/// replaces the rate's own burst (N). The library checks the result, so the
/// CLI refuses exactly what the server would.
///
/// # Errors
/// A usage error naming `--burst` if the library refuses the combination.
fn rate_limit_request(
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
fn proto_duration(duration: Duration, flag: &str) -> Result<prost_types::Duration, CliError> {
    prost_types::Duration::try_from(duration)
        .map_err(|_| CliError::Usage(format!("{flag} is too long")))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
