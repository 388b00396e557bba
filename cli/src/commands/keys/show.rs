//! `keywardctl show ID`: one key's metadata, never its secret (the server
//! keeps only a digest of it).

use std::process::ExitCode;

use clap::Args;
use keyward::pb;

use crate::{
    cli::GlobalArgs,
    client::admin_client,
    commands::call,
    error::CliError,
    output::{self, OutputFormat, key::KeyView},
};

/// Arguments of `show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The key id (the 11 characters after `<prefix>_` in the key)
    pub id: String,
}

/// Shows one key's metadata.
///
/// # Errors
/// No admin key, an unreachable server, or `NOT_FOUND` for an unknown id.
pub async fn run(args: ShowArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let mut client = admin_client(global).await?;
    let key = call(client.get_key(pb::GetKeyRequest { id: args.id }), global).await?;
    match global.output {
        OutputFormat::Json => output::print_json(&KeyView::new(&key))?,
        OutputFormat::Table => {
            output::print(&output::fields_text(&output::key::key_fields(&key)))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
