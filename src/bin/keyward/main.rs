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
    let result = async {
        let app = Application::build(args.into()).await?;
        app.run_until(server::shutdown_signal()).await
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
