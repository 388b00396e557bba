//! `keywardctl init`: first run. It works on the database directly, because
//! before it there is no admin key to call the server with.

use std::process::ExitCode;

use clap::Args;
use keyward::bootstrap::InitError;

use crate::{
    cli::GlobalArgs,
    error::{CliError, display_chain},
    output::{self, OutputFormat, key::FirstAdminKeyView},
};

/// Arguments of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The database to initialise: `sqlite://PATH` (the file is created with
    /// mode 0600) or `postgres://...`
    #[arg(
        long,
        env = "KEYWARD_DATABASE_URL",
        value_name = "URL",
        default_value = "sqlite://keyward.db",
        // A postgres URL may hold a password: keep the value out of `--help`.
        hide_env_values = true
    )]
    pub database_url: String,
}

/// Creates the schema, the built-in roles and the first admin key, and prints
/// the key this once.
///
/// # Errors
/// [`CliError::Init`] when the database cannot be opened or written, or was
/// initialised before (init never creates a second first admin key).
pub async fn run(args: InitArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let initialized = keyward::bootstrap::initialize_database(&args.database_url)
        .await
        .map_err(|err| match err {
            // Its message says all there is to say.
            InitError::AlreadyInitialized => CliError::Init(err.to_string()),
            other => CliError::Init(format!(
                "cannot initialise the database: {}",
                display_chain(&other)
            )),
        })?;
    let id = initialized.key_id.to_string();
    let key = initialized.plaintext.expose();
    match global.output {
        OutputFormat::Json => output::print_json(&FirstAdminKeyView { id: &id, key })?,
        OutputFormat::Table => output::print(&format!(
            "Initialised the database and created the first admin key.\n\
             Store the key now (e.g. in a secret manager): it is shown only this once.\n\
             Give it to keywardctl with KEYWARD_ADMIN_KEY or --admin-key-file PATH.\n\
             \n{}",
            output::fields_text(&[("id", id.clone()), ("key", key.to_owned())])
        ))?,
    }
    Ok(ExitCode::SUCCESS)
}
