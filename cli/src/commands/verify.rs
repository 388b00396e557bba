//! `keywardctl verify`: asks the data plane about a key exactly as a backend
//! server would, so an operator can see what a service will be told.
//!
//! The key is read from stdin, never from the command line (where shell
//! history and `ps` would keep it), and is never printed back: the output
//! names the key by its public id only.

use std::{
    io::{self, IsTerminal as _, Read as _},
    net::IpAddr,
    process::ExitCode,
};

use clap::Args;
use keyward::pb;
use zeroize::Zeroizing;

use crate::{
    cli::GlobalArgs,
    client::key_client,
    commands::call,
    error::CliError,
    output::{
        self, OutputFormat,
        verify::{ValidateView, verify_text},
    },
};

/// The most that is read from stdin: far more than any key, little enough
/// that piping a large file by mistake fails fast.
const MAX_STDIN_BYTES: u64 = 64 * 1024;

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A permission the key must be granted, e.g. `deploy:write`
    /// (repeatable); one it lacks makes the answer FORBIDDEN
    #[arg(long = "permission", value_name = "PERMISSION")]
    pub permissions: Vec<String>,

    /// The address the request came from, as a backend would pass it, e.g.
    /// `10.1.2.3` or `2001:db8::1`. A key minted with --allow-cidr is
    /// FORBIDDEN without it or from outside its ranges
    #[arg(long, value_name = "IP")]
    pub client_ip: Option<IpAddr>,
}

/// Validates the key on stdin; exit code 0 when it is valid, 1 when not.
///
/// # Errors
/// Empty stdin or more than one line, no admin key, an unreachable server,
/// or the server refusing the request (e.g. a malformed permission).
pub async fn run(args: VerifyArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let key = read_key(io::stdin())?;
    let mut client = key_client(global).await?;
    let request = pb::ValidateRequest {
        key,
        required_permissions: args.permissions,
        client_ip: args.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
    };
    let response = call(client.validate(request), global).await?;

    match global.output {
        OutputFormat::Json => output::print_json(&ValidateView::from(&response))?,
        OutputFormat::Table => output::print(&verify_text(&response))?,
    }
    Ok(if response.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reads exactly one key from `stdin`: surrounding whitespace (the newline
/// `echo` adds) is dropped; nothing, or more than one line, is an error.
/// The raw input is wiped; the key returned goes into the request, whose
/// encoder wipes it once sent.
fn read_key(stdin: io::Stdin) -> Result<String, CliError> {
    let mut text = Zeroizing::new(String::new());
    if stdin.is_terminal() {
        // Typed or pasted: one line is the whole input, no Ctrl-D needed.
        eprintln!("Paste the key and press Enter:");
        stdin.read_line(&mut text).map_err(CliError::Stdin)?;
    } else {
        stdin
            .take(MAX_STDIN_BYTES)
            .read_to_string(&mut text)
            .map_err(CliError::Stdin)?;
    }
    parse_key_input(&text)
}

fn parse_key_input(text: &str) -> Result<String, CliError> {
    match text.trim() {
        "" => Err(CliError::EmptyStdin),
        key if key.contains(['\n', '\r']) => Err(CliError::SeveralKeysOnStdin),
        key => Ok(key.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_input_is_one_trimmed_line() {
        assert_eq!(parse_key_input("kw_abc\n").unwrap(), "kw_abc");
        assert_eq!(parse_key_input("  kw_abc\r\n").unwrap(), "kw_abc");
        assert!(matches!(parse_key_input(""), Err(CliError::EmptyStdin)));
        assert!(matches!(
            parse_key_input("\n \n"),
            Err(CliError::EmptyStdin)
        ));
        assert!(matches!(
            parse_key_input("kw_a\nkw_b\n"),
            Err(CliError::SeveralKeysOnStdin)
        ));
    }
}
