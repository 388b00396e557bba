//! `keywardctl`: the operator CLI for keyward.
//!
//! `main` only parses the command line, runs the chosen command and turns its
//! outcome into an exit code; the work happens in the modules below.
//!
//! # Layout
//! - [`cli`]: the command line (global flags, verbs, argument parsers).
//! - [`commands`]: one module per group of verbs (`init`, `keys`, `role`,
//!   `audit`, `verify`), each with its arguments and what it does; the key
//!   verbs have a file each.
//! - [`client`]: the connection to a keyward server and the admin credential.
//! - [`output`]: one module per resource (key, role, audit record, Validate
//!   answer) with its text for people and its `--output json` view.
//! - [`error`]: every way a command can fail, as one line for stderr.
//!
//! # Exit codes
//! 0 success, 1 error (or `verify` of a key that is not valid), 2 usage error.

mod cli;
mod client;
mod commands;
mod error;
mod output;

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli).await {
        Ok(code) => code,
        Err(err) => {
            // One line, so scripts can grep it and humans see it whole; a
            // server message with a newline in it must not break that.
            let message = err.to_string();
            eprintln!(
                "error: {}",
                message.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            err.exit_code()
        }
    }
}
