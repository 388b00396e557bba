//! The command line: global flags, the verbs, and the parsers that turn flag
//! values into typed values, so a bad `--ttl` or `--label` is a usage error
//! (exit 2) that names the flag, before anything is sent to the server.

use std::{path::PathBuf, time::Duration, time::SystemTime};

use clap::{Args, Parser, Subcommand};
use keyward::rate_limit::RateLimit;

use crate::{
    client::{ServerUrl, TlsOptions},
    commands::{
        audit::AuditArgs, exchange::ExchangeArgs, init::InitArgs, keys, roles::RoleCommand,
        trust::TrustCommand, verify::VerifyArgs,
    },
    output::OutputFormat,
};

/// Operator CLI for keyward, the API-key service.
///
/// Mint, list, inspect, rotate and revoke API keys on a keyward server,
/// manage the roles that grant them permissions, read the audit log, and
/// check a key the way a backend would.
#[derive(Debug, Parser)]
#[command(name = "keywardctl", version)]
#[command(after_long_help = ADMIN_KEY_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// How to give the admin credential; shown by `--help` because the key itself
/// is deliberately not a flag.
const ADMIN_KEY_HELP: &str = "\
Admin credential:
  Every command except `init` needs a key holding `keyward:admin`, or the finer
  permission it needs (e.g. `keyward:roles:write`; for `verify`: `keyward:validate`). Give it in the environment variable KEYWARD_ADMIN_KEY, or
  in a file with --admin-key-file PATH (env KEYWARD_ADMIN_KEY_FILE); the file wins
  when both are set. The server writes the first admin key to keyward-admin.key.
  The key is never accepted as an argument: arguments end up in shell history
  and in `ps` output.";

/// Flags every verb accepts, before or after the verb's name.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// The keyward server: a URL, or `host:port` (taken as `http://host:port`)
    #[arg(
        long,
        global = true,
        env = "KEYWARD_SERVER",
        value_name = "URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: ServerUrl,

    /// File holding the admin key (the server writes the first one to
    /// keyward-admin.key); otherwise the key is read from `KEYWARD_ADMIN_KEY`
    #[arg(
        long,
        global = true,
        env = "KEYWARD_ADMIN_KEY_FILE",
        value_name = "PATH"
    )]
    pub admin_key_file: Option<PathBuf>,

    /// With an https:// server: CA certificates (PEM) to check the server's
    /// certificate against, instead of the system's trusted CAs
    #[arg(long, global = true, env = "KEYWARD_CA_CERT", value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,

    /// With an https:// server that requires client certificates (mTLS):
    /// this client's certificate (PEM)
    #[arg(
        long,
        global = true,
        env = "KEYWARD_CLIENT_CERT",
        value_name = "PATH",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// The private key (PEM) of --client-cert
    #[arg(
        long,
        global = true,
        env = "KEYWARD_CLIENT_KEY",
        value_name = "PATH",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    /// Output format: `table` for people, `json` for scripts
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value_t = OutputFormat::Table
    )]
    pub output: OutputFormat,
}

impl GlobalArgs {
    /// The TLS flags, for an https:// server.
    pub fn tls(&self) -> TlsOptions {
        TlsOptions {
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database schema, the built-in roles and the first admin key
    ///
    /// Works on the database directly (no server, no admin key needed), prints
    /// the first admin key once, and refuses to run on a database that is
    /// already initialised.
    Init(InitArgs),
    /// Mint a new key and print it (the only time its plaintext is shown)
    Mint(keys::mint::MintArgs),
    /// List keys, newest first, optionally filtered
    List(keys::list::ListArgs),
    /// Show one key's metadata (never its secret)
    Show(keys::show::ShowArgs),
    /// Change a key's settings: set or remove its own rate limit
    ///
    /// The key's next validation applies the change; the key itself (its
    /// plaintext, roles and expiry) stays as it is. Give --rate or
    /// --clear-rate.
    Update(keys::update::UpdateArgs),
    /// Replace a key with a new one with the same settings
    ///
    /// The old key keeps working for the grace period, then expires; without
    /// --grace it is revoked at once.
    Rotate(keys::rotate::RotateArgs),
    /// Revoke a key, or every key with some labels: they stop working at once
    ///
    /// `revoke ID` revokes one key; revoking a revoked key changes nothing and
    /// reports the first revocation.
    ///
    /// `revoke --label K=V [--label ...] [--owner O]` revokes every unrevoked
    /// key that carries all those labels (and has that owner). Because that can
    /// stop many services at once, it first says how many keys match and which;
    /// with --dry-run it stops there, without --yes it refuses (exit 1), and
    /// only with --yes does it revoke them.
    Revoke(keys::revoke::RevokeArgs),
    /// Check a key read from stdin, the way a backend server would
    ///
    /// Reads one key from stdin (never from the command line) and asks the
    /// server's Validate RPC about it, with the admin key as the caller's
    /// credential (it needs `keyward:validate`). Exits 0 when the key is valid
    /// and 1 when it is not (INVALID, `RATE_LIMITED` or FORBIDDEN).
    ///
    /// Shows the key's rate limit and the burst left, how long to wait when
    /// it is `RATE_LIMITED`, and the uses left of a key minted with --max-uses.
    /// A check is a real validation: it spends one call of the key's rate
    /// limit on the server asked, and a valid answer spends one of its uses.
    Verify(VerifyArgs),
    /// Manage roles: named sets of permissions that keys hold
    ///
    /// A change to a role applies to every key holding it from the very next
    /// validation, which is why roles, not per-key permissions, are the way to
    /// manage many keys alike. The built-in roles `admin` and `validator`
    /// cannot be changed or deleted.
    #[command(subcommand)]
    Role(RoleCommand),
    /// Read the audit log: who minted, rotated or revoked which key, and who
    /// changed which role, newest first
    ///
    /// Every change is recorded in the same transaction as the change itself,
    /// with the id of the key that made it (`local` for `init` and the
    /// server's first start, which need no key). Records never hold a secret.
    Audit(AuditArgs),
    /// Manage trust policies: which CI jobs may exchange their OIDC identity
    /// token for which short-lived key
    ///
    /// Needs `keyward:trust:write` (`keyward:trust:read` for list and show).
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Exchange a CI job's OIDC identity token for a short-lived key and
    /// print it (the only time its plaintext is shown)
    ///
    /// Reads the token from --token-file or stdin (never the command line).
    /// Needs no admin key: the token is the credential. Every refusal looks
    /// the same from here; the server's log says why. End the key with
    /// `keywardctl revoke --self` as the job's last step.
    Exchange(ExchangeArgs),
    /// Print a shell completion script for keywardctl
    ///
    /// bash: `keywardctl completions bash > /etc/bash_completion.d/keywardctl`;
    /// zsh: into a directory on `$fpath` as `_keywardctl`; fish:
    /// `keywardctl completions fish > ~/.config/fish/completions/keywardctl.fish`.
    Completions {
        /// The shell to complete in
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// The shells `keywardctl completions` writes scripts for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    /// GNU bash
    Bash,
    /// Z shell
    Zsh,
    /// fish
    Fish,
}

/// Parses `KEY=VALUE` for `--label`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(("", _)) => Err("the label key is empty; expected KEY=VALUE, e.g. env=prod".into()),
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
        None => Err("expected KEY=VALUE, e.g. env=prod".into()),
    }
}

/// Parses `--rate`: `N/s`, `N/m` or `N/h`, with the library's own parser and
/// messages, so the CLI accepts exactly what the server does. The burst is N
/// until `--burst` says otherwise.
pub fn parse_rate(s: &str) -> Result<RateLimit, String> {
    s.parse::<RateLimit>().map_err(|e| e.to_string())
}

/// Parses `--burst`: a burst of 0 would refuse every call, which is never
/// what a rate limit is for.
pub fn parse_burst(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("must be at least 1: a burst of 0 would refuse every call".into()),
        Ok(burst) => Ok(burst),
        Err(_) => Err("expected a whole number of at least 1, e.g. 20".into()),
    }
}

/// Parses `--max-uses`. The server reads 0 as "no cap"; on the command line
/// that is said by leaving the flag out, so a 0 here is refused rather than
/// silently minting an uncapped key someone meant to cap.
pub fn parse_max_uses(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1 (leave --max-uses out for no cap)".into()),
        Ok(uses) => Ok(uses),
        Err(_) => Err("expected a whole number of at least 1, e.g. 1 for a one-time key".into()),
    }
}

/// Parses a duration like `30m`, `12h` or `7d 12h` that may be zero
/// (`--grace 0s` revokes the old key at once, as the server documents).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 30m, 12h or 7d)"))
}

/// Parses a key lifetime: a duration that must be longer than zero, because
/// a key that expires the moment it is minted is always a mistake.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be longer than zero".into()),
        d => Ok(d),
    }
}

/// Parses an RFC 3339 time in UTC, e.g. `2027-01-31T12:00:00Z`. The zone
/// must be written out (`Z` or `+00:00`): a time without one would silently
/// be read as UTC, off by the operator's UTC offset.
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339(s)
        .map_err(|e| format!("{e} (expected an RFC 3339 time in UTC, e.g. 2027-01-31T12:00:00Z)"))
}

/// Parses `--since`: a duration meaning "that long ago" (`1h`, `7d`), or an
/// RFC 3339 time in UTC. The duration is turned into a time here, on the
/// client, so "the last hour" means the operator's last hour.
pub fn parse_since(s: &str) -> Result<SystemTime, String> {
    if let Ok(ago) = humantime::parse_duration(s) {
        return SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| "reaches back further than this system's clock can".to_owned());
    }
    humantime::parse_rfc3339(s).map_err(|_| {
        "expected a duration meaning that long ago (e.g. 30m, 1h, 7d) \
         or an RFC 3339 time in UTC (e.g. 2027-01-31T12:00:00Z)"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn labels_need_a_key_and_an_equals_sign() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("env=prod", Some(("env", "prod"))),
            ("env=", Some(("env", ""))),
            ("url=a=b", Some(("url", "a=b"))),
            ("env", None),
            ("=prod", None),
            ("", None),
        ];
        for &(input, expected) in cases {
            let got = parse_label(input).ok();
            let expected = expected.map(|(k, v)| (k.to_owned(), v.to_owned()));
            assert_eq!(got, expected, "parse_label({input:?})");
        }
    }

    #[test]
    fn rates_bursts_and_use_caps() {
        let rate = parse_rate("5/s").unwrap();
        assert_eq!(
            (rate.requests(), rate.per(), rate.burst()),
            (5, Duration::from_secs(1), 5)
        );
        assert_eq!(parse_rate("2/m").unwrap().per(), Duration::from_mins(1));
        assert_eq!(parse_rate("1/h").unwrap().per(), Duration::from_hours(1));
        for bad in ["0/s", "-1/s", "5/fortnight", "5", "", "1.5/s", "5/S"] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_burst("20"), Ok(20));
        assert!(parse_burst("0").unwrap_err().contains("at least 1"));
        assert!(parse_burst("-1").is_err());
        assert_eq!(parse_max_uses("1"), Ok(1));
        assert!(parse_max_uses("0").unwrap_err().contains("no cap"));
        assert!(parse_max_uses("many").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_mins(30)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_positive_duration("1h"), Ok(Duration::from_hours(1)));
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn rfc3339_times() {
        let t = parse_rfc3339("2027-01-31T12:00:00Z").unwrap();
        assert_eq!(
            humantime::format_rfc3339_seconds(t).to_string(),
            "2027-01-31T12:00:00Z"
        );
        assert!(parse_rfc3339("tomorrow").is_err());
        assert!(parse_rfc3339("2027-01-31T12:00:00").is_err(), "no zone");
        assert!(parse_rfc3339("2027-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn since_is_a_duration_ago_or_a_time() {
        let hour_ago = SystemTime::now() - Duration::from_hours(1);
        let since = parse_since("1h").unwrap();
        let off = since
            .duration_since(hour_ago)
            .unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_secs(5), "{off:?}");
        assert_eq!(
            parse_since("2027-01-31T12:00:00Z"),
            parse_rfc3339("2027-01-31T12:00:00Z")
        );
        for bad in ["5x", "yesterday", "", "2027-01-31T12:00:00"] {
            assert!(parse_since(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn revoke_takes_an_id_or_labels_not_both_nor_neither() {
        use clap::error::ErrorKind;
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["keywardctl", "revoke"].iter().chain(args))
                .map(|_| ())
                .map_err(|e| e.kind())
        };
        assert_eq!(parse(&["AbCdEfGhIjK"]), Ok(()));
        assert_eq!(
            parse(&["--label", "env=dev", "--owner", "ci", "--yes"]),
            Ok(())
        );
        assert_eq!(parse(&[]), Err(ErrorKind::MissingRequiredArgument));
        assert_eq!(
            parse(&["AbCdEfGhIjK", "--label", "env=dev"]),
            Err(ErrorKind::ArgumentConflict)
        );
        // Bulk-only flags make no sense with one id.
        for flag in ["--dry-run", "--yes"] {
            assert!(parse(&["AbCdEfGhIjK", flag]).is_err(), "{flag}");
        }
        assert!(parse(&["AbCdEfGhIjK", "--owner", "ci"]).is_err());
    }

    #[test]
    fn role_update_needs_a_change_and_one_max_ttl_choice() {
        use clap::error::ErrorKind;
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                ["keywardctl", "role", "update", "deployer"]
                    .iter()
                    .chain(args),
            )
            .map(|_| ())
            .map_err(|e| e.kind())
        };
        assert_eq!(parse(&[]), Err(ErrorKind::MissingRequiredArgument));
        assert_eq!(parse(&["--add-permission", "deploy:read"]), Ok(()));
        assert_eq!(parse(&["--description", ""]), Ok(()));
        assert_eq!(parse(&["--clear-max-ttl"]), Ok(()));
        assert_eq!(
            parse(&["--max-ttl", "1h", "--clear-max-ttl"]),
            Err(ErrorKind::ArgumentConflict)
        );
    }

    #[test]
    fn global_flags_go_before_or_after_the_verb() {
        for argv in [
            &["keywardctl", "--output", "json", "show", "abc"][..],
            &["keywardctl", "show", "abc", "--output", "json"][..],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            assert_eq!(cli.global.output, OutputFormat::Json);
        }
    }

    #[test]
    fn ttl_and_expires_at_are_exclusive() {
        let err = Cli::try_parse_from([
            "keywardctl",
            "mint",
            "--ttl",
            "1h",
            "--expires-at",
            "2027-01-31T12:00:00Z",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
