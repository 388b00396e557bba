//! Command-line and environment configuration of the `keyward` binary.
//! Precedence: built-in defaults < `KEYWARD_*` environment < flags.
//!
//! The defaults shown by `--help` and used when a flag is absent are read
//! from [`Settings::default`], the one place they are written.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Parser, Subcommand};
use keyward::{
    rate_limit::{InvalidRateLimit, RateLimit},
    server::Settings,
    store::PoolSettings,
};

/// keyward: an API-key service for machine-to-machine access.
///
/// Issues prefixed API keys, stores only their BLAKE3 digests, validates
/// them in constant time from an in-memory index, and audits every change.
/// Operators use `keywardctl`; backend servers call keyward.v1.KeyService/Validate.
#[derive(Parser)]
#[command(name = "keyward", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What the binary does.
#[derive(Subcommand)]
pub enum Command {
    /// Run the gRPC server.
    ///
    /// On a database that was never initialised, creates the built-in roles
    /// and the first admin key, and writes that key to --bootstrap-key-file.
    Serve(ServeArgs),
}

/// Flags of `keyward serve`. No `Debug`: the database URL may hold a
/// password ([`Settings`]' `Debug` redacts it).
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "KEYWARD_LISTEN",
        default_value_t = Settings::default().listen,
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// Database: <sqlite://PATH> (one server; the file is created with mode
    /// 0600 if missing) or <postgres://USER@HOST/DATABASE> (many replicas;
    /// the database must exist).
    #[arg(
        long,
        env = "KEYWARD_DATABASE_URL",
        default_value_t = Settings::default().database_url,
        value_name = "URL",
        // A postgres URL may hold a password: keep the value out of `--help`.
        hide_env_values = true
    )]
    pub database_url: String,

    /// Where to write the first admin key (mode 0600) when this start
    /// initialises a new database. An existing file is never overwritten.
    #[arg(
        long,
        env = "KEYWARD_BOOTSTRAP_KEY_FILE",
        default_value_os_t = Settings::default().bootstrap_key_file,
        value_name = "PATH"
    )]
    pub bootstrap_key_file: PathBuf,

    /// Rate limit for keys with none of their own and none from a role:
    /// N/s, N/m or N/h. Default: no limit.
    #[arg(long, env = "KEYWARD_DEFAULT_RATE", value_name = "RATE", value_parser = parse_rate)]
    pub default_rate: Option<RateLimit>,

    /// Burst allowed by --default-rate (default: N, the rate's count).
    #[arg(long, env = "KEYWARD_DEFAULT_BURST", value_name = "B", requires = "default_rate", value_parser = clap::value_parser!(u32).range(1..))]
    pub default_burst: Option<u32>,

    /// How often last-used times and use counts are written to the database
    /// (each key at most once per interval; also on shutdown), e.g. 10s.
    #[arg(long, env = "KEYWARD_USAGE_FLUSH_INTERVAL", value_name = "DURATION", default_value_t = Interval(Settings::default().usage_flush_interval))]
    pub usage_flush_interval: Interval,

    /// Most database connections this server opens.
    #[arg(long, env = "KEYWARD_DATABASE_MAX_CONNECTIONS", value_name = "N", default_value_t = Settings::default().pool.max_connections, value_parser = clap::value_parser!(u32).range(1..))]
    pub database_max_connections: u32,

    /// How long a database operation waits for a connection (including
    /// connecting) before failing with UNAVAILABLE, e.g. 5s.
    #[arg(long, env = "KEYWARD_DATABASE_ACQUIRE_TIMEOUT", value_name = "DURATION", default_value_t = Interval(Settings::default().pool.acquire_timeout))]
    pub database_acquire_timeout: Interval,

    /// PostgreSQL only: while the database or its change feed is
    /// unreachable, Validate answers from the in-memory index for this long
    /// after the index was last confirmed current, then fails closed with
    /// UNAVAILABLE (and the health check reports `NOT_SERVING`) until it
    /// reconnects and resyncs, e.g. 60s.
    #[arg(long, env = "KEYWARD_MAX_STALENESS", value_name = "DURATION", default_value_t = Interval(Settings::default().max_staleness))]
    pub max_staleness: Interval,

    /// PostgreSQL only: how often the index is reloaded in full, besides
    /// after every reconnect of the change feed, e.g. 5m.
    #[arg(long, env = "KEYWARD_RESYNC_INTERVAL", value_name = "DURATION", default_value_t = Interval(Settings::default().resync_interval))]
    pub resync_interval: Interval,
}

fn parse_rate(text: &str) -> Result<RateLimit, InvalidRateLimit> {
    text.parse()
}

/// A duration flag: longer than zero, written as `10s`, `1m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Duration);

impl FromStr for Interval {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match humantime::parse_duration(text) {
            Ok(interval) if interval.is_zero() => Err("must be longer than zero".to_owned()),
            Ok(interval) => Ok(Self(interval)),
            Err(error) => Err(format!("{error} (expected e.g. 10s or 1m)")),
        }
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl From<ServeArgs> for Settings {
    fn from(args: ServeArgs) -> Self {
        let default_rate_limit = args.default_rate.map(|rate| match args.default_burst {
            Some(burst) => {
                RateLimit::new(rate.requests(), rate.per(), burst).expect("burst checked by clap")
            }
            None => rate,
        });
        Self {
            listen: args.listen,
            database_url: args.database_url,
            bootstrap_key_file: args.bootstrap_key_file,
            default_rate_limit,
            usage_flush_interval: args.usage_flush_interval.0,
            pool: PoolSettings {
                max_connections: args.database_max_connections,
                acquire_timeout: args.database_acquire_timeout.0,
            },
            max_staleness: args.max_staleness.0,
            resync_interval: args.resync_interval.0,
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
        let settings = Settings::from(args);
        assert!(settings.default_rate_limit.is_none());
        let defaults = Settings::default();
        assert_eq!(settings.usage_flush_interval, defaults.usage_flush_interval);
        assert_eq!(settings.pool, defaults.pool);
        assert_eq!(settings.max_staleness, defaults.max_staleness);
        assert_eq!(settings.resync_interval, defaults.resync_interval);
    }

    #[test]
    fn settings_never_show_a_database_password() {
        let Command::Serve(args) = Cli::try_parse_from([
            "keyward",
            "serve",
            "--database-url",
            "postgres://kw:hunter2@db.internal/keys",
        ])
        .unwrap()
        .command;
        let shown = format!("{:?}", Settings::from(args));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("postgres://db.internal:5432/keys"),
            "{shown}"
        );
    }

    #[test]
    fn rates_are_parsed_with_their_burst() {
        let parse = |flags: &[&str]| {
            let mut argv = vec!["keyward", "serve"];
            argv.extend_from_slice(flags);
            Cli::try_parse_from(argv).map(|cli| {
                let Command::Serve(serve) = cli.command;
                Settings::from(serve).default_rate_limit
            })
        };
        assert_eq!(
            parse(&["--default-rate", "100/s"]).unwrap(),
            "100/s".parse().ok()
        );
        assert_eq!(
            parse(&["--default-rate", "100/s", "--default-burst", "10"]).unwrap(),
            RateLimit::new(100, Duration::from_secs(1), 10).ok()
        );
        for bad in [
            &["--default-rate", "0/s"][..],
            &["--default-rate", "5/fortnight"],
            &["--default-rate", "5/s", "--default-burst", "0"],
            &["--default-burst", "5"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
