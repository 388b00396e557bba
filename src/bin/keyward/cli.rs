//! Command-line and environment configuration of the `keyward` binary.
//! Precedence: built-in defaults < `KEYWARD_*` environment < flags.
//!
//! The defaults shown by `--help` and used when a flag is absent are read
//! from [`Settings::default`], the one place they are written.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Parser, Subcommand};
use http::HeaderName;
use keyward::{
    cidr::Cidr,
    exchange::OidcSettings,
    gateway::GatewaySettings,
    rate_limit::{InvalidRateLimit, RateLimit},
    server::Settings,
    store::PoolSettings,
    telemetry::LogFormat,
    tls::TlsFiles,
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
    #[command(after_long_help = SETTINGS_HELP)]
    Serve(ServeArgs),
}

/// Where `serve`'s settings come from; shown by `serve --help`.
const SETTINGS_HELP: &str = "\
Settings come from, lowest precedence first: built-in defaults, the --config
file, KEYWARD_* environment variables, flags. In the file (TOML), each key is a
long flag's name with `_` for `-`, e.g.

    listen = \"0.0.0.0:50051\"
    database_url = \"sqlite:///var/lib/keyward/keyward.db\"
    request_timeout = \"30s\"
    max_concurrent_streams = 512";

/// Flags of `keyward serve`. No `Debug`: the database URL may hold a
/// password ([`Settings`]' `Debug` redacts it).
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Read settings from this TOML file (see below); the environment and
    /// flags override it. An unknown key or a bad value fails start-up.
    #[arg(long, env = "KEYWARD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

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
    /// after a reconnect of the change feed that cannot catch up from the
    /// change log, e.g. 5m.
    #[arg(long, env = "KEYWARD_RESYNC_INTERVAL", value_name = "DURATION", default_value_t = Interval(Settings::default().resync_interval))]
    pub resync_interval: Interval,

    /// Most requests one client connection may have in flight at once
    /// (advertised as HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`; clients queue
    /// past it). Raise it for a proxy that funnels many backends into one
    /// connection.
    #[arg(long, env = "KEYWARD_MAX_CONCURRENT_STREAMS", value_name = "N", default_value_t = Settings::default().max_concurrent_streams, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// Largest request message accepted, e.g. 128KiB, 1MiB or 65536 (bytes);
    /// bigger ones are refused with `OUT_OF_RANGE` before they are read.
    #[arg(long, env = "KEYWARD_MAX_MESSAGE_SIZE", value_name = "SIZE", default_value_t = ByteSize(Settings::default().max_message_size))]
    pub max_message_size: ByteSize,

    /// How long a request may take, from its headers to its answer (the wait
    /// for its body included), before it is answered `CANCELLED`, e.g. 30s.
    #[arg(long, env = "KEYWARD_REQUEST_TIMEOUT", value_name = "DURATION", default_value_t = Interval(Settings::default().request_timeout))]
    pub request_timeout: Interval,

    /// How long a client connection may stay silent before the server pings
    /// it, e.g. 1m.
    #[arg(long, env = "KEYWARD_KEEPALIVE_INTERVAL", value_name = "DURATION", default_value_t = Interval(Settings::default().keepalive_interval))]
    pub keepalive_interval: Interval,

    /// How long the server waits for the answer to its ping before it closes
    /// the connection, e.g. 20s.
    #[arg(long, env = "KEYWARD_KEEPALIVE_TIMEOUT", value_name = "DURATION", default_value_t = Interval(Settings::default().keepalive_timeout))]
    pub keepalive_timeout: Interval,

    /// Age at which a client connection is asked to reconnect (its in-flight
    /// requests finish first), so clients spread over replicas again, e.g.
    /// 30m.
    #[arg(long, env = "KEYWARD_MAX_CONNECTION_AGE", value_name = "DURATION", default_value_t = Interval(Settings::default().max_connection_age))]
    pub max_connection_age: Interval,

    /// Most client connections open at once; past it, new ones wait in the
    /// kernel's backlog until one closes. The open-file limit is raised to
    /// fit where the hard limit allows (a warning says when it cannot).
    #[arg(long, env = "KEYWARD_MAX_CONNECTIONS", value_name = "N", default_value_t = Settings::default().max_connections, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Serve gRPC over TLS with this certificate chain (PEM, leaf first).
    /// The file is re-read when it changes and on SIGHUP; established
    /// connections keep the certificate they started with.
    #[arg(
        long,
        env = "KEYWARD_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "KEYWARD_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Require every client to present a certificate signed by one of these
    /// CAs (PEM), refusing others at the TLS handshake (mTLS). Needs
    /// --tls-cert.
    #[arg(
        long,
        env = "KEYWARD_TLS_CLIENT_CA",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// On SIGTERM or SIGINT: how long calls in flight get to finish before
    /// the server stops anyway (health turns NOT_SERVING and the listener
    /// closes at once), e.g. 20s.
    #[arg(long, env = "KEYWARD_DRAIN_TIMEOUT", value_name = "DURATION", default_value_t = Interval(Settings::default().drain_timeout))]
    pub drain_timeout: Interval,

    /// Log lines as `text` (for people) or `json` (one object per line, for
    /// log pipelines). `RUST_LOG` sets what is logged (default `info`).
    #[arg(long, env = "KEYWARD_LOG_FORMAT", value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Address to serve Prometheus metrics on, as plain HTTP `GET /metrics`,
    /// e.g. 127.0.0.1:9464. Default: no metrics listener. The metrics hold
    /// no key, key id or owner, but keep the port off the public network.
    #[arg(long, env = "KEYWARD_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// How many keys each admin key short of keyward:admin may mint: N/s,
    /// N/m or N/h (a burst of N), or `none` for no limit. Past it, mint
    /// is refused (resource exhausted) with when to retry.
    #[arg(long, env = "KEYWARD_MINT_RATE", value_name = "RATE", default_value_t = MintRate(Settings::default().mint_quota))]
    pub mint_rate: MintRate,

    /// Let trust policies name `http://` OIDC issuers, whose discovery
    /// document and keys are then fetched over plain HTTP. For tests
    /// against an issuer on loopback only: anyone on the network path could
    /// forge identity tokens. Without it issuers must be https://.
    #[arg(long, env = "KEYWARD_OIDC_ALLOW_HTTP_ISSUERS")]
    pub oidc_allow_http_issuers: bool,

    /// Address to serve HTTP on (TLS like gRPC when --tls-cert is set):
    /// `GET /v1/forward-auth` for nginx `auth_request`, Traefik
    /// `ForwardAuth` and Caddy `forward_auth`, and `POST /v1/keys:validate`
    /// (Validate in JSON). Default: no HTTP listener.
    #[arg(long, env = "KEYWARD_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,

    /// Gateways (Envoy ext_authz, forward-auth): a request header holding
    /// the client's key as it is, e.g. x-api-key, looked at before
    /// `authorization: Bearer <key>`. Default: only the latter.
    #[arg(long, env = "KEYWARD_GATEWAY_KEY_HEADER", value_name = "NAME")]
    pub gateway_key_header: Option<HeaderName>,

    /// Forward-auth: proxies whose `x-forwarded-for` gives the client's
    /// address, as CIDR ranges, comma-separated (e.g.
    /// 127.0.0.1/32,10.0.0.0/8). From any other peer the client address is
    /// the peer's own. Default: none.
    #[arg(
        long,
        env = "KEYWARD_HTTP_TRUSTED_PROXIES",
        value_name = "CIDRS",
        value_delimiter = ','
    )]
    pub http_trusted_proxies: Vec<Cidr>,
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

/// `--mint-rate`: a rate limit, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MintRate(pub Option<RateLimit>);

impl FromStr for MintRate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "none" => Ok(Self(None)),
            rate => rate
                .parse()
                .map(|rate| Self(Some(rate)))
                .map_err(|error: InvalidRateLimit| format!("{error} (or `none`)")),
        }
    }
}

impl fmt::Display for MintRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(rate) = self.0 else {
            return f.write_str("none");
        };
        // As the flag is written, where it can be (`100/m`).
        let unit = match rate.per().as_secs() {
            1 => "s",
            60 => "m",
            3600 => "h",
            _ => return rate.fmt(f),
        };
        if rate.burst() == rate.requests() && rate.per().subsec_nanos() == 0 {
            write!(f, "{}/{unit}", rate.requests())
        } else {
            rate.fmt(f)
        }
    }
}

/// A size flag: longer than zero bytes, written as `131072`, `128KiB` or
/// `1MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (digits, unit) = match text.strip_suffix("MiB") {
            Some(digits) => (digits, 1024 * 1024),
            None => match text.strip_suffix("KiB") {
                Some(digits) => (digits, 1024),
                None => (text, 1),
            },
        };
        let expected = "expected bytes, e.g. 65536, 128KiB or 1MiB";
        match digits.trim().parse::<usize>() {
            Ok(0) => Err("must be more than zero".to_owned()),
            Ok(count) => count
                .checked_mul(unit)
                .map(Self)
                .ok_or_else(|| format!("too large ({expected})")),
            Err(_) => Err(format!("not a size ({expected})")),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            bytes if bytes % (1024 * 1024) == 0 => write!(f, "{}MiB", bytes / (1024 * 1024)),
            bytes if bytes % 1024 == 0 => write!(f, "{}KiB", bytes / 1024),
            bytes => write!(f, "{bytes}"),
        }
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
            max_concurrent_streams: args.max_concurrent_streams,
            max_message_size: args.max_message_size.0,
            request_timeout: args.request_timeout.0,
            keepalive_interval: args.keepalive_interval.0,
            keepalive_timeout: args.keepalive_timeout.0,
            max_connection_age: args.max_connection_age.0,
            max_connections: args.max_connections,
            tls: args.tls_cert.zip(args.tls_key).map(|(cert, key)| TlsFiles {
                cert,
                key,
                client_ca: args.tls_client_ca,
            }),
            drain_timeout: args.drain_timeout.0,
            metrics_listen: args.metrics_listen,
            mint_quota: args.mint_rate.0,
            oidc: OidcSettings {
                allow_http_issuers: args.oidc_allow_http_issuers,
                ..OidcSettings::default()
            },
            http_listen: args.http_listen,
            gateway: GatewaySettings {
                key_header: args.gateway_key_header,
                trusted_proxies: args.http_trusted_proxies,
            },
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
        assert_eq!(settings.max_concurrent_streams, 256);
        assert_eq!(settings.max_message_size, 128 * 1024);
        assert_eq!(settings.request_timeout, Duration::from_secs(30));
        assert_eq!(settings.keepalive_interval, defaults.keepalive_interval);
        assert_eq!(settings.keepalive_timeout, defaults.keepalive_timeout);
        assert_eq!(settings.max_connection_age, defaults.max_connection_age);
        assert_eq!(settings.max_connections, 4096);
    }

    #[test]
    fn transport_limits_are_parsed() {
        let parse = |flags: &[&str]| {
            let mut argv = vec!["keyward", "serve"];
            argv.extend_from_slice(flags);
            Cli::try_parse_from(argv).map(|cli| {
                let Command::Serve(serve) = cli.command;
                Settings::from(serve)
            })
        };
        let settings = parse(&[
            "--max-concurrent-streams",
            "1000",
            "--max-message-size",
            "1MiB",
            "--request-timeout",
            "5s",
            "--keepalive-interval",
            "30s",
            "--keepalive-timeout",
            "10s",
            "--max-connection-age",
            "2h",
        ])
        .unwrap();
        assert_eq!(settings.max_concurrent_streams, 1000);
        assert_eq!(settings.max_message_size, 1024 * 1024);
        assert_eq!(settings.request_timeout, Duration::from_secs(5));
        assert_eq!(settings.keepalive_interval, Duration::from_secs(30));
        assert_eq!(settings.keepalive_timeout, Duration::from_secs(10));
        assert_eq!(settings.max_connection_age, Duration::from_hours(2));
        for (size, bytes) in [("65536", 65_536), ("64KiB", 65_536), ("2MiB", 2 << 20)] {
            assert_eq!(
                parse(&["--max-message-size", size])
                    .unwrap()
                    .max_message_size,
                bytes,
                "{size}"
            );
        }
        for bad in [
            &["--max-concurrent-streams", "0"][..],
            &["--max-message-size", "0"],
            &["--max-message-size", "1GiB"],
            &["--max-message-size", "-1"],
            &["--request-timeout", "0s"],
            &["--max-connection-age", "soon"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mint_rates_are_parsed_and_none_turns_the_quota_off() {
        let parse = |flags: &[&str]| {
            let mut argv = vec!["keyward", "serve"];
            argv.extend_from_slice(flags);
            Cli::try_parse_from(argv).map(|cli| {
                let Command::Serve(serve) = cli.command;
                Settings::from(serve).mint_quota
            })
        };
        assert_eq!(parse(&[]).unwrap(), "100/m".parse().ok());
        assert_eq!(parse(&["--mint-rate", "5/s"]).unwrap(), "5/s".parse().ok());
        assert_eq!(parse(&["--mint-rate", "none"]).unwrap(), None);
        assert!(parse(&["--mint-rate", "lots"]).is_err());
        assert_eq!(
            MintRate(Settings::default().mint_quota).to_string(),
            "100/m"
        );
    }

    #[test]
    fn sizes_print_as_they_are_written() {
        for size in ["128KiB", "1MiB", "1000"] {
            assert_eq!(size.parse::<ByteSize>().unwrap().to_string(), size);
        }
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
