//! `keywardctl rotate ID`: a new key with the old one's settings, so a key
//! can be replaced (after a leak, or on a schedule) without re-deciding what
//! it may do; the grace period lets clients switch over without an outage.

use std::{process::ExitCode, time::Duration};

use clap::Args;
use keyward::pb;
use zeroize::Zeroizing;

use crate::{
    cli::{GlobalArgs, parse_duration},
    client::admin_client,
    commands::{call, proto_duration},
    error::CliError,
    output::{
        self, OutputFormat,
        key::{KeyView, RotatedKeyView, state_name},
    },
};

/// Arguments of `rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The id of the key to replace
    pub id: String,

    /// How long the old key keeps working, e.g. `1h`, so clients can switch
    /// over [default: none, the old key is revoked at once]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub grace: Option<Duration>,
}

/// Rotates a key and prints the successor (with its plaintext, this once)
/// and what became of the old key.
///
/// # Errors
/// No admin key, an unreachable server, `NOT_FOUND` for an unknown id, and
/// `FAILED_PRECONDITION` for a key that cannot be rotated (revoked, expired or
/// already rotated).
pub async fn run(args: RotateArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let grace = args
        .grace
        .map(|grace| proto_duration(grace, "--grace"))
        .transpose()?;
    let mut client = admin_client(global).await?;
    let response = call(
        client.rotate_key(pb::RotateKeyRequest { id: args.id, grace }),
        global,
    )
    .await?;
    let key = response
        .key
        .ok_or(CliError::IncompleteResponse("no successor key"))?;
    let previous = response
        .previous
        .ok_or(CliError::IncompleteResponse("no previous key"))?;
    // Wiped when this function returns, printed or not.
    let plaintext = Zeroizing::new(response.plaintext);
    match global.output {
        OutputFormat::Json => output::print_json(&RotatedKeyView {
            successor: KeyView::minted(&key, &plaintext),
            previous: KeyView::new(&previous),
        })?,
        OutputFormat::Table => {
            output::print(&output::key::minted_text(
                &format!(
                    "Rotated key {} to {}. Store the new key now: it is shown only this once.\n{}",
                    previous.id,
                    key.id,
                    previous_fate(&previous),
                ),
                &plaintext,
                &key,
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What happens to the old key of a rotation, in one sentence.
fn previous_fate(previous: &pb::Key) -> String {
    if let Some(revoked) = output::timestamp(previous.revoked_at.as_ref()) {
        format!("The old key {} was revoked at {revoked}.", previous.id)
    } else if let Some(expires) = output::timestamp(previous.expires_at.as_ref()) {
        format!("The old key {} keeps working until {expires}.", previous.id)
    } else {
        format!(
            "The old key {} is {}.",
            previous.id,
            state_name(previous.state)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fate_of_the_previous_key() {
        let mut previous = pb::Key {
            id: "old".into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            previous_fate(&previous),
            "The old key old keeps working until 2027-01-15T08:00:00Z."
        );
        previous.revoked_at = previous.expires_at;
        assert!(previous_fate(&previous).contains("revoked at"));
    }
}
