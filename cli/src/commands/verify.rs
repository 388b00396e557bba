//! `keywardctl verify`: asks the data plane about a key exactly as a backend
//! server would, so an operator can see what a service will be told.
//!
//! The key is read from stdin, never from the command line (where shell
//! history and `ps` would keep it), and is never printed back: the output
//! names the key by its public id only.

use std::{
    io::{self, IsTerminal as _, Read as _},
    net::IpAddr,
    process::ExitCode,
    time::Duration,
};

use clap::Args;
use keyward::pb;
use serde_json::{Value, json};

use crate::{
    cli::GlobalArgs,
    client::key_client,
    error::CliError,
    output::{self, OutputFormat},
};

/// The most that is read from stdin: far more than any key, little enough
/// that piping a large file by mistake fails fast.
const MAX_STDIN_BYTES: u64 = 64 * 1024;

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A permission the key must be granted, e.g. `deploy:write`
    /// (repeatable); one it lacks makes the answer FORBIDDEN
    #[arg(long = "permission", value_name = "PERMISSION")]
    pub permissions: Vec<String>,

    /// The address the request came from, as a backend would pass it, e.g.
    /// `10.1.2.3` or `2001:db8::1`. A key minted with --allow-cidr is
    /// FORBIDDEN without it or from outside its ranges
    #[arg(long, value_name = "IP")]
    pub client_ip: Option<IpAddr>,
}

/// Validates the key on stdin; exit code 0 when it is valid, 1 when not.
///
/// # Errors
/// Empty stdin or more than one line, no admin key, an unreachable server,
/// or the server refusing the request (e.g. a malformed permission).
pub async fn run(args: VerifyArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let key = read_key(io::stdin())?;
    let mut client = key_client(global).await?;
    let response = client
        .validate(pb::ValidateRequest {
            key,
            required_permissions: args.permissions,
            client_ip: args.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        })
        .await
        .map_err(|status| CliError::from_status(status, &global.server))?
        .into_inner();

    let wait = retry_after(&response);
    match global.output {
        OutputFormat::Json => output::print_json(&json!({
            "valid": response.valid,
            "denial": (!response.valid).then(|| output::denial_name(response.denial)),
            "key_id": (!response.key_id.is_empty()).then_some(&response.key_id),
            "roles": response.roles,
            "permissions": response.permissions,
            "labels": output::sorted_labels(&response.labels),
            "owner": (!response.owner.is_empty()).then_some(&response.owner),
            "expires_at": output::timestamp(response.expires_at.as_ref()),
            "rate_limit": response.rate_limit.as_ref().map(rate_limit_state_json),
            // As text (`1s 500ms`) and as whole seconds, rounded up.
            "retry_after": wait.map(|wait| humantime::format_duration(wait).to_string()),
            "retry_after_seconds": wait.map(whole_seconds),
            "remaining_uses": response.remaining_uses,
        }))?,
        OutputFormat::Table => output::print(&output::fields_text(&verify_fields(&response)))?,
    }
    Ok(if response.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn verify_fields(response: &pb::ValidateResponse) -> Vec<(&'static str, String)> {
    let or_dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
    let mut fields = vec![(
        "valid",
        if response.valid { "yes" } else { "no" }.to_owned(),
    )];
    if !response.valid {
        fields.push(("denial", output::denial_name(response.denial)));
    }
    // An INVALID key is not authenticated: the server says nothing more
    // about it, so neither do we.
    if !response.key_id.is_empty() {
        fields.extend([
            ("key id", response.key_id.clone()),
            ("roles", or_dash(response.roles.join(", "))),
            ("permissions", or_dash(response.permissions.join(", "))),
            ("labels", or_dash(output::labels_text(&response.labels))),
            ("owner", or_dash(response.owner.clone())),
            (
                "expires",
                output::timestamp(response.expires_at.as_ref()).unwrap_or_else(|| "never".into()),
            ),
        ]);
    }
    // The rate limit is checked only once the key is proven, so it is
    // present only for an authenticated key that has a limit.
    if let Some(state) = &response.rate_limit {
        fields.push((
            "rate limit",
            state
                .limit
                .as_ref()
                .map_or_else(|| "-".into(), output::rate_limit_text),
        ));
        fields.push(("remaining burst", state.remaining_burst.to_string()));
    }
    if let Some(wait) = retry_after(response) {
        fields.push(("retry after", humantime::format_duration(wait).to_string()));
    }
    if let Some(remaining) = response.remaining_uses {
        fields.push(("remaining uses", remaining.to_string()));
    }
    fields
}

/// How long a RATE_LIMITED caller should wait, to the millisecond (rounded
/// up, so waiting that long is always enough); `None` for other answers.
fn retry_after(response: &pb::ValidateResponse) -> Option<Duration> {
    if response.denial != pb::Denial::RateLimited as i32 {
        return None;
    }
    let wait = Duration::try_from(response.retry_after?).ok()?;
    let millis = wait.as_nanos().div_ceil(1_000_000);
    Some(Duration::from_millis(
        u64::try_from(millis).unwrap_or(u64::MAX),
    ))
}

/// Whole seconds, rounded up, as the server's `retry-after` metadata has them.
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// The rate-limit state of a Validate answer as JSON: the limit (as in
/// `show`) and the burst left after this call.
fn rate_limit_state_json(state: &pb::RateLimitState) -> Value {
    let mut object = state
        .limit
        .as_ref()
        .map(output::rate_limit_json)
        .unwrap_or_default();
    object.insert("remaining_burst".into(), state.remaining_burst.into());
    Value::Object(object)
}

/// Reads exactly one key from `stdin`: surrounding whitespace (the newline
/// `echo` adds) is dropped; nothing, or more than one line, is an error.
fn read_key(stdin: io::Stdin) -> Result<String, CliError> {
    let mut text = String::new();
    if stdin.is_terminal() {
        // Typed or pasted: one line is the whole input, no Ctrl-D needed.
        eprintln!("Paste the key and press Enter:");
        stdin.read_line(&mut text).map_err(CliError::Stdin)?;
    } else {
        stdin
            .take(MAX_STDIN_BYTES)
            .read_to_string(&mut text)
            .map_err(CliError::Stdin)?;
    }
    parse_key_input(&text)
}

fn parse_key_input(text: &str) -> Result<String, CliError> {
    match text.trim() {
        "" => Err(CliError::EmptyStdin),
        key if key.contains(['\n', '\r']) => Err(CliError::SeveralKeysOnStdin),
        key => Ok(key.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_input_is_one_trimmed_line() {
        assert_eq!(parse_key_input("kw_abc\n").unwrap(), "kw_abc");
        assert_eq!(parse_key_input("  kw_abc\r\n").unwrap(), "kw_abc");
        assert!(matches!(parse_key_input(""), Err(CliError::EmptyStdin)));
        assert!(matches!(
            parse_key_input("\n \n"),
            Err(CliError::EmptyStdin)
        ));
        assert!(matches!(
            parse_key_input("kw_a\nkw_b\n"),
            Err(CliError::SeveralKeysOnStdin)
        ));
    }

    #[test]
    fn invalid_keys_show_only_the_denial() {
        let response = pb::ValidateResponse {
            valid: false,
            denial: pb::Denial::Invalid as i32,
            ..Default::default()
        };
        let fields = verify_fields(&response);
        assert_eq!(
            fields,
            [("valid", "no".to_owned()), ("denial", "INVALID".to_owned())]
        );
    }

    fn state(remaining_burst: u32) -> Option<pb::RateLimitState> {
        Some(pb::RateLimitState {
            limit: Some(pb::RateLimit {
                requests: 2,
                per: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                burst: 2,
            }),
            remaining_burst,
        })
    }

    #[test]
    fn rate_limited_keys_say_how_long_to_wait() {
        let response = pb::ValidateResponse {
            valid: false,
            key_id: "AbCdEfGhIjK".into(),
            denial: pb::Denial::RateLimited as i32,
            rate_limit: state(0),
            retry_after: Some(prost_types::Duration {
                seconds: 29,
                nanos: 999_000_001,
            }),
            ..Default::default()
        };
        let text = output::fields_text(&verify_fields(&response));
        assert!(text.contains("denial           RATE_LIMITED\n"), "{text}");
        assert!(text.contains("rate limit       2/m burst 2\n"), "{text}");
        assert!(text.contains("remaining burst  0\n"), "{text}");
        // Rounded up to the millisecond: waiting that long is enough.
        assert!(text.contains("retry after      30s\n"), "{text}");
        assert!(!text.contains("remaining uses"), "{text}");
        let wait = retry_after(&response).unwrap();
        assert_eq!(wait, Duration::from_secs(30));
        assert_eq!(whole_seconds(Duration::from_millis(500)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(
            rate_limit_state_json(response.rate_limit.as_ref().unwrap()),
            json!({"requests": 2, "per_seconds": 60, "burst": 2, "remaining_burst": 0})
        );
    }

    #[test]
    fn valid_keys_show_what_is_left() {
        let response = pb::ValidateResponse {
            valid: true,
            key_id: "AbCdEfGhIjK".into(),
            rate_limit: state(1),
            // Sent only with RATE_LIMITED; ignored otherwise.
            retry_after: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            remaining_uses: Some(0),
            ..Default::default()
        };
        let text = output::fields_text(&verify_fields(&response));
        assert!(text.contains("remaining burst  1\n"), "{text}");
        assert!(text.contains("remaining uses   0\n"), "{text}");
        assert!(!text.contains("retry after"), "{text}");
    }

    #[test]
    fn forbidden_keys_show_who_they_are() {
        let response = pb::ValidateResponse {
            valid: false,
            key_id: "AbCdEfGhIjK".into(),
            denial: pb::Denial::Forbidden as i32,
            roles: vec!["validator".into()],
            permissions: vec!["keyward:validate".into()],
            ..Default::default()
        };
        let text = output::fields_text(&verify_fields(&response));
        assert!(text.contains("denial       FORBIDDEN\n"), "{text}");
        assert!(text.contains("key id       AbCdEfGhIjK\n"), "{text}");
        assert!(text.contains("permissions  keyward:validate\n"), "{text}");
    }
}
