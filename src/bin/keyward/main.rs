//! The `keyward` server binary: read the settings, set up logging, run.

mod cli;
mod config;

use std::process::ExitCode;

use keyward::{
    hardening,
    server::{self, Application},
    telemetry,
};

use crate::cli::Command;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match config::parse() {
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("keyward: error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let Command::Serve(args) = cli.command;
    telemetry::init(args.log_format);
    if let Err(error) = hardening::disable_core_dumps() {
        tracing::warn!(%error, "cannot disable core dumps; a crash could write keys in memory to disk");
    }
    // Before anything can see the server started, so that an early SIGTERM
    // still shuts it down cleanly.
    let shutdown = server::shutdown_signal();
    let result = async {
        let app = Application::build(args.into()).await?;
        app.run_until(shutdown).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("keyward: error: {error}");
            ExitCode::FAILURE
        }
    }
}
