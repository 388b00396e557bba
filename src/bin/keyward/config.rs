//! `keyward serve --config PATH`: the settings of `serve` in a TOML file,
//! for deployments that configure with a file (a Kubernetes `ConfigMap`, a
//! systemd unit's companion, Ansible).
//!
//! Each key is the name of a long flag with `_` for `-` (`listen`,
//! `database_url`, `max_staleness`), its value what the flag would take, as
//! a TOML string, integer or boolean: `request_timeout = "30s"`,
//! `max_concurrent_streams = 512`. Precedence, lowest first: built-in
//! defaults, the file, `KEYWARD_*` environment variables, flags.
//!
//! The file is checked against the flags themselves (their names, and the
//! same parsers and rules that check a flag's value), so the two cannot
//! drift apart: a key that names no flag, a value of the wrong type or a
//! value the flag would refuse fails start-up with the file, the key and the
//! reason.

use std::{
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
};

use clap::{ArgMatches, CommandFactory, FromArgMatches, parser::ValueSource};

use crate::cli::Cli;

/// The flag naming the file; not a key the file itself may hold.
const CONFIG_ARG: &str = "config";

/// Why a configuration file cannot be used. Each prints as one line naming
/// the file (and the key, where one is at fault), never a value: a
/// `database_url` may hold a password.
#[derive(Debug)]
pub enum ConfigError {
    /// The file cannot be read.
    Read {
        /// The file.
        path: PathBuf,
        /// As the operating system said.
        source: std::io::Error,
    },
    /// The file is not TOML.
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where (1-based), when the parser says.
        line: Option<usize>,
        /// What the parser expected.
        reason: String,
    },
    /// One key is unknown or its value unusable.
    Key {
        /// The file.
        path: PathBuf,
        /// The key at fault.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            Self::Syntax {
                path,
                line: Some(line),
                reason,
            } => write!(
                f,
                "config file {}: line {line}: not valid TOML: {reason}",
                path.display()
            ),
            Self::Syntax {
                path,
                line: None,
                reason,
            } => write!(
                f,
                "config file {}: not valid TOML: {reason}",
                path.display()
            ),
            Self::Key { path, key, reason } => {
                write!(f, "config file {}: key `{key}`: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses the command line (exiting with clap's message on a bad flag, as
/// `Cli::parse` does) and merges the `--config` file of `serve`, if any,
/// beneath the environment and the flags.
///
/// # Errors
/// A [`ConfigError`] when the file cannot be read or holds a bad key or
/// value.
pub fn parse() -> Result<Cli, ConfigError> {
    parse_from(std::env::args_os())
}

/// [`parse`] for a given command line.
///
/// # Errors
/// As [`parse`].
pub fn parse_from(argv: impl IntoIterator<Item = impl Into<OsString>>) -> Result<Cli, ConfigError> {
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    // A first, lenient pass finds the file and where each flag's value came
    // from; the rules between flags (`--tls-cert` needs `--tls-key`) wait
    // for the file, which may hold the other half.
    let lenient = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(&argv)
        .unwrap_or_else(|error| error.exit());
    let file = match lenient.subcommand() {
        Some(("serve", serve)) => serve
            .get_one::<PathBuf>(CONFIG_ARG)
            .map(|path| (path, serve)),
        _ => None,
    };
    let Some((path, serve)) = file else {
        return Ok(from_matches(&Cli::command().get_matches_from(argv)));
    };
    let from_file = flags_from_file(path, serve)?;
    // The file's settings become flags placed right after `serve`, for the
    // settings neither the environment nor a flag gave: parsing the whole
    // again applies every rule between flags (`requires`) to them too.
    let serve_at = argv
        .iter()
        .position(|arg| arg == "serve")
        .expect("the serve subcommand was parsed from argv");
    let mut merged = argv[..=serve_at].to_vec();
    merged.extend(from_file.iter().map(FileFlag::arg));
    merged.extend_from_slice(&argv[serve_at + 1..]);
    match Cli::command().try_get_matches_from(merged) {
        Ok(matches) => Ok(from_matches(&matches)),
        Err(error) => match from_file.iter().find(|flag| flag.caused(&error)) {
            Some(flag) => Err(ConfigError::Key {
                path: path.clone(),
                key: flag.key.clone(),
                reason: reason_of(&error),
            }),
            None => error.exit(),
        },
    }
}

/// A setting from the file, as the flag it stands for.
struct FileFlag {
    key: String,
    long: String,
    /// `None` for a switch (a flag that takes no value).
    value: Option<String>,
}

impl FileFlag {
    fn arg(&self) -> OsString {
        match &self.value {
            Some(value) => format!("--{}={value}", self.long).into(),
            None => format!("--{}", self.long).into(),
        }
    }

    /// Whether clap refused this flag (rather than one from the command
    /// line).
    fn caused(&self, error: &clap::Error) -> bool {
        use clap::error::{ContextKind, ContextValue};
        let flag = format!("--{}", self.long);
        matches!(
            error.get(ContextKind::InvalidArg),
            Some(ContextValue::String(arg))
                if arg == &flag || arg.starts_with(&format!("{flag} "))
        )
    }
}

fn from_matches(matches: &ArgMatches) -> Cli {
    Cli::from_arg_matches(matches).unwrap_or_else(|error| error.exit())
}

/// The file's settings as the flags they stand for; settings given by the
/// environment or a flag are left out (they take precedence). Values are
/// checked when the flags are parsed.
fn flags_from_file(path: &Path, serve: &ArgMatches) -> Result<Vec<FileFlag>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
        let line = error
            .span()
            .map(|span| text[..span.start].matches('\n').count() + 1);
        ConfigError::Syntax {
            path: path.to_owned(),
            line,
            reason: error.message().trim().to_owned(),
        }
    })?;
    let mut command = Cli::command();
    command.build();
    let serve_command = command
        .find_subcommand("serve")
        .expect("keyward has a serve subcommand");
    let key_error = |key: &str, reason: String| ConfigError::Key {
        path: path.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let mut flags = Vec::new();
    for (key, value) in &table {
        let arg = serve_command
            .get_arguments()
            .find(|arg| {
                arg.get_id() != CONFIG_ARG
                    && arg
                        .get_long()
                        .is_some_and(|long| long.replace('-', "_") == *key)
            })
            .ok_or_else(|| {
                key_error(
                    key,
                    "unknown setting (keys are the long flags of `keyward serve --help`, \
                     with `_` for `-`)"
                        .to_owned(),
                )
            })?;
        let long = arg.get_long().expect("found by its long name");
        if matches!(
            serve.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        if !arg.get_action().takes_values() {
            match value {
                toml::Value::Boolean(true) => flags.push(FileFlag {
                    key: key.clone(),
                    long: long.to_owned(),
                    value: None,
                }),
                toml::Value::Boolean(false) => {}
                other => {
                    return Err(key_error(
                        key,
                        format!("expected true or false, found {}", other.type_str()),
                    ));
                }
            }
            continue;
        }
        let text = match value {
            toml::Value::String(text) => text.clone(),
            toml::Value::Integer(number) => number.to_string(),
            other => {
                return Err(key_error(
                    key,
                    format!(
                        "expected a string or an integer, found {}",
                        other.type_str()
                    ),
                ));
            }
        };
        flags.push(FileFlag {
            key: key.clone(),
            long: long.to_owned(),
            value: Some(text),
        });
    }
    Ok(flags)
}

/// The reason in a clap error, without clap's "error:" prefix, its usage
/// hint, or the value itself (which may be a secret).
fn reason_of(error: &clap::Error) -> String {
    use std::error::Error as _;

    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match (error.kind(), error.get(ContextKind::ValidValue)) {
        (ErrorKind::InvalidValue, Some(ContextValue::Strings(valid))) => {
            format!("expected one of: {}", valid.join(", "))
        }
        _ => error
            .source()
            .map_or_else(|| "invalid value".to_owned(), ToString::to_string),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use keyward::server::Settings;

    use super::*;
    use crate::cli::Command;

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn settings(argv: &[&str]) -> Result<Settings, ConfigError> {
        let Command::Serve(serve) = parse_from(argv)?.command;
        Ok(Settings::from(serve))
    }

    #[test]
    fn the_file_is_beneath_flags_and_above_defaults() {
        let file = config_file(
            "request_timeout = \"5s\"\nmax_concurrent_streams = 512\nlisten = \"127.0.0.1:7000\"\n",
        );
        let path = file.path().to_str().unwrap();
        let settings = settings(&[
            "keyward",
            "serve",
            "--config",
            path,
            "--listen",
            "127.0.0.1:8000",
        ])
        .unwrap();
        assert_eq!(
            settings.listen,
            "127.0.0.1:8000".parse().unwrap(),
            "the flag wins"
        );
        assert_eq!(settings.request_timeout, std::time::Duration::from_secs(5));
        assert_eq!(settings.max_concurrent_streams, 512);
        assert_eq!(
            settings.keepalive_interval,
            Settings::default().keepalive_interval,
            "what the file leaves out keeps its default"
        );
    }

    #[test]
    fn halves_of_a_pair_may_come_from_the_file_and_a_flag() {
        // --tls-key needs --tls-cert, wherever each comes from.
        let file = config_file("tls_key = \"/etc/keyward/tls.key\"\n");
        let path = file.path().to_str().unwrap();
        assert!(
            settings(&[
                "keyward",
                "serve",
                "--config",
                path,
                "--tls-cert",
                "/etc/keyward/tls.crt"
            ])
            .unwrap()
            .tls
            .is_some()
        );
    }

    #[test]
    fn gateway_settings_come_from_the_file_as_from_flags() {
        let file = config_file(
            "http_listen = \"127.0.0.1:8080\"\n\
             http_trusted_proxies = \"127.0.0.1/32,10.0.0.0/8\"\n\
             gateway_key_header = \"X-Api-Key\"\n",
        );
        let path = file.path().to_str().unwrap();
        let from_file = settings(&["keyward", "serve", "--config", path]).unwrap();
        assert_eq!(from_file.http_listen, "127.0.0.1:8080".parse().ok());
        assert_eq!(
            from_file.gateway.trusted_proxies,
            [
                "127.0.0.1/32".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap()
            ]
        );
        assert_eq!(
            from_file
                .gateway
                .key_header
                .as_ref()
                .map(http::HeaderName::as_str),
            Some("x-api-key")
        );
        let defaults = settings(&["keyward", "serve"]).unwrap();
        assert!(defaults.http_listen.is_none() && defaults.gateway.trusted_proxies.is_empty());
        let bad = config_file("http_trusted_proxies = \"10.0.0.0/33\"\n");
        let error = settings(&["keyward", "serve", "--config", bad.path().to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("http_trusted_proxies"), "{error}");
    }

    #[test]
    fn the_example_config_parses() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keyward.toml");
        let settings = settings(&["keyward", "serve", "--config", example]).unwrap();
        assert_eq!(settings.listen, "0.0.0.0:50051".parse().unwrap());
        assert!(settings.tls.is_some());
    }
}
