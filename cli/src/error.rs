//! Every way a command can fail, each rendered as one line for stderr (main
//! prefixes it with `error: `).
//!
//! gRPC statuses are turned into [`CliError`] in one place,
//! [`CliError::from_status`], so what an operator reads for, say,
//! UNAUTHENTICATED is decided once for every command. No variant ever holds
//! the admin key or a key being verified.

use std::{error::Error as StdError, io, path::PathBuf, process::ExitCode};

use tonic::{Code, Status};

use crate::client::ServerUrl;

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A combination of arguments clap cannot check by itself; exit code 2
    /// like clap's own usage errors.
    #[error("{0}")]
    Usage(String),

    #[error(
        "no admin key: set KEYWARD_ADMIN_KEY or pass --admin-key-file PATH \
         (the server writes the first one to keyward-admin.key)"
    )]
    NoAdminKey,

    #[error("cannot read admin key file {}: {source}", path.display())]
    AdminKeyFile { path: PathBuf, source: io::Error },

    #[error("admin key file {} is empty", path.display())]
    EmptyAdminKeyFile { path: PathBuf },

    /// The admin key cannot be sent as gRPC metadata. The message must not
    /// quote the key.
    #[error("the admin key contains characters that are not allowed in a key")]
    MalformedAdminKey,

    #[error("cannot read the {what} {}: {source}", path.display())]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("cannot reach keyward at {server}: {cause}")]
    Unreachable { server: ServerUrl, cause: String },

    #[error("{server} does not offer this keyward API; is it a keyward server? ({message})")]
    NotKeyward { server: ServerUrl, message: String },

    #[error("keyward at {server} did not answer in time")]
    TimedOut { server: ServerUrl },

    #[error("the admin key was not accepted ({0}); check KEYWARD_ADMIN_KEY or --admin-key-file")]
    Unauthenticated(String),

    #[error("the admin key is not allowed to do this ({0})")]
    PermissionDenied(String),

    /// Any other status: the server's own message, which names the field or
    /// the key id concerned, after a short name for the code.
    #[error("{what}: {message}")]
    Rejected { what: &'static str, message: String },

    #[error("keyward sent an incomplete response: {0}")]
    IncompleteResponse(&'static str),

    /// `init` failed; the message says why (already initialised, or which
    /// database error).
    #[error("{0}")]
    Init(String),

    /// `revoke --label` without `--yes`: bulk revoking can stop many
    /// services at once, so it needs to be asked for explicitly.
    #[error(
        "{} would be revoked; pass --yes to revoke {} (or --dry-run to only list {})",
        crate::output::count_keys(*.count),
        if *.count == 1 { "it" } else { "them" },
        if *.count == 1 { "it" } else { "them" }
    )]
    RevokeNotConfirmed { count: usize },

    #[error("no key on stdin: pipe the key to check into `keywardctl verify`")]
    EmptyStdin,

    #[error("stdin holds more than one line; `keywardctl verify` checks exactly one key")]
    SeveralKeysOnStdin,

    #[error("cannot read the key from stdin: {0}")]
    Stdin(io::Error),

    #[error("cannot write the output: {0}")]
    Output(io::Error),

    /// `exchange`: the server refused the identity token. It says no more
    /// on purpose (every refusal looks the same); its log says why.
    #[error(
        "the identity token was refused under this trust policy ({0}); the keyward server's \
         log says why"
    )]
    TokenRefused(String),

    #[error("cannot read the identity token from {}: {source}", path.display())]
    TokenFile { path: PathBuf, source: io::Error },

    #[error(
        "no identity token: give --token-file PATH or pipe the token into `keywardctl exchange`"
    )]
    EmptyToken,
}

impl CliError {
    /// The process exit code: 2 for usage errors (as clap uses), 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }

    /// Translates a gRPC status from `server` for an operator.
    pub fn from_status(status: &Status, server: &ServerUrl) -> Self {
        let message = if status.message().is_empty() {
            status.code().description().to_owned()
        } else {
            status.message().to_owned()
        };
        if matches!(
            status.code(),
            Code::Internal | Code::Unknown | Code::Cancelled
        ) && let Some(source) = status.source()
        {
            // Not the server's answer but the connection failing under the
            // call: what a plaintext client meets at a TLS port, or a TLS
            // client whose certificate the server refused after the
            // handshake (TLS 1.3 checks it then).
            let hint = if server.is_tls() {
                "the server closed the connection; does it require a client \
                 certificate (--client-cert, --client-key)?"
            } else {
                "the server closed the connection; does it serve TLS? then use \
                 an https:// URL"
            };
            return Self::Unreachable {
                server: server.clone(),
                cause: format!("{} ({hint})", root_cause(source)),
            };
        }
        let what = match status.code() {
            Code::Unauthenticated => return Self::Unauthenticated(message),
            Code::PermissionDenied => return Self::PermissionDenied(message),
            Code::DeadlineExceeded => {
                return Self::TimedOut {
                    server: server.clone(),
                };
            }
            Code::Unavailable => {
                // The connection failed after it was first made (tonic
                // reconnects lazily); its cause is in the source chain.
                let cause = status.source().map_or(message, root_cause);
                return Self::Unreachable {
                    server: server.clone(),
                    cause,
                };
            }
            Code::NotFound => "not found",
            Code::InvalidArgument => "invalid argument",
            Code::FailedPrecondition => "failed precondition",
            Code::AlreadyExists => "already exists",
            Code::OutOfRange => "out of range",
            Code::ResourceExhausted => "resource exhausted",
            Code::Aborted => "aborted",
            Code::Cancelled => "cancelled",
            Code::Unimplemented => {
                // Also what a web server or proxy that is not keyward at all
                // looks like (HTTP 404 maps to UNIMPLEMENTED).
                return Self::NotKeyward {
                    server: server.clone(),
                    message,
                };
            }
            Code::Internal | Code::DataLoss => "keyward internal error",
            Code::Ok | Code::Unknown => "unexpected response from keyward",
        };
        Self::Rejected { what, message }
    }
}

/// The innermost cause of `err`, phrased for a person: a connection failure
/// reads "connection refused", not a tower of wrapper errors.
pub fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut current = err;
    loop {
        if let Some(io) = current.downcast_ref::<io::Error>() {
            return describe_io(io);
        }
        match current.source() {
            Some(source) => current = source,
            None => return current.to_string(),
        }
    }
}

fn describe_io(err: &io::Error) -> String {
    let phrase = match err.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionReset => "connection reset",
        io::ErrorKind::ConnectionAborted => "connection aborted",
        io::ErrorKind::TimedOut => "connection timed out",
        io::ErrorKind::HostUnreachable => "host unreachable",
        io::ErrorKind::NetworkUnreachable => "network unreachable",
        io::ErrorKind::AddrNotAvailable => "address not available",
        _ => return err.to_string(),
    };
    phrase.to_owned()
}

/// `err` and each of its sources, joined with `: `, skipping a source whose
/// text the message already contains (many errors repeat their source).
pub fn display_chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error")]
    struct Wrapper(#[source] io::Error);

    fn server() -> ServerUrl {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn root_cause_finds_the_io_error() {
        let err = Wrapper(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(root_cause(&err), "connection refused");
        let err = Wrapper(io::Error::other("dns error: no such host"));
        assert_eq!(root_cause(&err), "dns error: no such host");
    }

    #[test]
    fn display_chain_skips_repeated_sources() {
        let err = Wrapper(io::Error::other("boom"));
        assert_eq!(display_chain(&err), "tcp connect error: boom");
    }

    #[test]
    fn statuses_become_operator_messages() {
        let cases = [
            (
                Status::not_found("no key with id abc"),
                "not found: no key with id abc",
            ),
            (
                Status::invalid_argument("prefix: must match [a-z][a-z0-9]{0,15}"),
                "invalid argument: prefix: must match [a-z][a-z0-9]{0,15}",
            ),
            (
                Status::already_exists("role deployer already exists"),
                "already exists: role deployer already exists",
            ),
            (
                Status::unauthenticated("invalid credentials"),
                "the admin key was not accepted (invalid credentials); \
                 check KEYWARD_ADMIN_KEY or --admin-key-file",
            ),
            (
                Status::unimplemented("HTTP status code 404"),
                "http://127.0.0.1:1 does not offer this keyward API; \
                 is it a keyward server? (HTTP status code 404)",
            ),
            (
                Status::unavailable("tcp connect error"),
                "cannot reach keyward at http://127.0.0.1:1: tcp connect error",
            ),
        ];
        for (status, expected) in cases {
            assert_eq!(
                CliError::from_status(&status, &server()).to_string(),
                expected
            );
        }
    }

    #[test]
    fn an_unconfirmed_bulk_revoke_says_how_many_and_what_to_pass() {
        assert_eq!(
            CliError::RevokeNotConfirmed { count: 3 }.to_string(),
            "3 keys would be revoked; pass --yes to revoke them (or --dry-run to only list them)"
        );
        assert_eq!(
            CliError::RevokeNotConfirmed { count: 1 }.to_string(),
            "1 key would be revoked; pass --yes to revoke it (or --dry-run to only list it)"
        );
    }

    #[test]
    fn only_usage_errors_exit_2() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), ExitCode::from(2));
        assert_eq!(CliError::NoAdminKey.exit_code(), ExitCode::FAILURE);
        // A name taken (a duplicate role) is an error like any refusal, not a
        // usage error: the command line was well formed.
        let taken =
            CliError::from_status(&Status::already_exists("role x already exists"), &server());
        assert_eq!(taken.exit_code(), ExitCode::FAILURE);
    }
}
