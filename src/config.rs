//! Command-line and environment configuration of the `keyward` binary.
//! Precedence: built-in defaults < `KEYWARD_*` environment < flags.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

use crate::server::Settings;

/// keyward: an API-key service for machine-to-machine access.
///
/// Issues prefixed API keys, stores only their BLAKE3 digests, validates
/// them in constant time from an in-memory index, and audits every change.
/// Operators use `keywardctl`; backend servers call keyward.v1.KeyService/Validate.
#[derive(Debug, Parser)]
#[command(name = "keyward", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What the binary does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server.
    ///
    /// On a database that was never initialised, creates the built-in roles
    /// and the first admin key, and writes that key to --bootstrap-key-file.
    Serve(ServeArgs),
}

/// Flags of `keyward serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "KEYWARD_LISTEN",
        default_value = "127.0.0.1:50051",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// Database: sqlite://PATH (created with mode 0600 if missing).
    #[arg(
        long,
        env = "KEYWARD_DATABASE_URL",
        default_value = "sqlite://keyward.db",
        value_name = "URL"
    )]
    pub database_url: String,

    /// Where to write the first admin key (mode 0600) when this start
    /// initialises a new database. An existing file is never overwritten.
    #[arg(
        long,
        env = "KEYWARD_BOOTSTRAP_KEY_FILE",
        default_value = "keyward-admin.key",
        value_name = "PATH"
    )]
    pub bootstrap_key_file: PathBuf,
}

impl From<ServeArgs> for Settings {
    fn from(args: ServeArgs) -> Self {
        Self {
            listen: args.listen,
            database_url: args.database_url,
            bootstrap_key_file: args.bootstrap_key_file,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_product_contract() {
        let Command::Serve(args) = Cli::try_parse_from(["keyward", "serve"]).unwrap().command;
        assert_eq!(args.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(args.database_url, "sqlite://keyward.db");
    }
}
