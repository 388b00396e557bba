//! The `keyward` server binary: parse flags, set up logging, run.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use keyward::{
    server::{self, Application},
    telemetry,
};

use crate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    let Command::Serve(args) = cli.command;
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
