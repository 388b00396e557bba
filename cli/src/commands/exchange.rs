//! `keywardctl exchange`: what a CI job runs to get its key. It swaps the
//! job's OIDC identity token (read from a file or stdin, never the command
//! line, where `ps` and shell history would see it) for a short-lived key
//! under a trust policy, and prints the key like `mint` does. No admin key
//! is needed: the token is the credential.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Args;
use keyward::pb;
use tonic::Code;
use zeroize::Zeroizing;

use crate::{
    cli::GlobalArgs, client::exchange_client, commands::keys::mint::print_minted, error::CliError,
};

/// Arguments of `exchange`.
#[derive(Debug, Args)]
pub struct ExchangeArgs {
    /// The trust policy to exchange under (`keywardctl trust list`)
    #[arg(long, value_name = "NAME")]
    pub policy: String,

    /// File holding the identity token, e.g. the one GitLab CI writes for
    /// an `id_tokens:` entry [default: read the token from stdin]
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// Exchanges the token and prints the new key.
///
/// # Errors
/// No token, an unreachable server, [`CliError::TokenRefused`] when the
/// server refuses the token.
pub async fn run(args: ExchangeArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let token = read_token(args.token_file.as_deref())?;
    let mut client = exchange_client(global).await?;
    let request = pb::ExchangeRequest {
        policy: args.policy,
        token: token.to_string(),
    };
    let response = client
        .exchange(request)
        .await
        .map_err(|status| match status.code() {
            Code::PermissionDenied => CliError::TokenRefused(status.message().to_owned()),
            _ => CliError::from_status(&status, &global.server),
        })?
        .into_inner();
    print_minted(
        response.key,
        response.plaintext,
        "Exchanged the token for",
        global,
    )
}

/// The token, trimmed: from `file`, else stdin.
fn read_token(file: Option<&Path>) -> Result<Zeroizing<String>, CliError> {
    let mut text = Zeroizing::new(String::new());
    match file {
        Some(path) => {
            *text = std::fs::read_to_string(path).map_err(|source| CliError::TokenFile {
                path: path.to_owned(),
                source,
            })?;
        }
        None => {
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(CliError::Stdin)?;
        }
    }
    match text.trim() {
        "" => Err(CliError::EmptyToken),
        token => Ok(Zeroizing::new(token.to_owned())),
    }
}
