//! The verbs, one module per group: [`init`] works on the database directly;
//! [`keys`] (mint, list, show, update, rotate, revoke), [`roles`] (`role ...`) and
//! [`audit`] use the admin API; [`verify`] uses the data plane, as a backend
//! server would.

pub mod audit;
pub mod init;
pub mod keys;
pub mod roles;
pub mod verify;

use std::process::ExitCode;

use crate::{
    cli::{Cli, Command},
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
        Command::Mint(args) => keys::mint(args, global).await,
        Command::List(args) => keys::list(args, global).await,
        Command::Show(args) => keys::show(args, global).await,
        Command::Update(args) => keys::update(args, global).await,
        Command::Rotate(args) => keys::rotate(args, global).await,
        Command::Revoke(args) => keys::revoke(args, global).await,
        Command::Verify(args) => verify::run(args, global).await,
        Command::Role(command) => roles::run(command, global).await,
        Command::Audit(args) => audit::run(args, global).await,
    }
}
