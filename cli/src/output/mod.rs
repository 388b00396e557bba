//! Rendering: aligned text for people (`--output table`, the default) and
//! JSON for scripts (`--output json`).
//!
//! Each resource has a module with both of its views: [`key`], [`role`],
//! [`audit`] and [`verify`] (a Validate answer). The JSON views are
//! `#[derive(Serialize)]` structs whose field order is the order in the
//! output: scripts depend on the names and people on the order, so a field
//! is only ever added, at the end, never renamed or moved.
//!
//! No view of a key has a place for a secret, except the one made right
//! after a mint or rotate, whose plaintext the server returns that once.
//!
//! JSON conventions: timestamps are RFC 3339 strings in UTC, an absent
//! optional value (no expiry, no owner, not revoked) is `null`, labels are an
//! object, lists (roles, permissions, CIDRs) are arrays even when empty, and
//! the key state is `active`, `expired`, `revoked` or `exhausted`. Durations
//! (a role's max TTL) appear twice: as text the CLI's own flags accept (`1h`)
//! and as whole seconds, so a script needs no duration parser. A rate limit
//! is an object `{requests, per_seconds, burst}` (`null` when there is none),
//! so a script can compare limits without parsing `5/s`; counts
//! (`use_count`, `max_uses`, `remaining_uses`) are numbers.

pub mod audit;
pub mod key;
pub mod role;
pub mod trust;
pub mod verify;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{self, Write as _},
    time::{Duration, SystemTime},
};

use keyward::pb;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::error::CliError;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned text for people
    Table,
    /// JSON for scripts
    Json,
}

/// Formats a protobuf timestamp as RFC 3339 (seconds, UTC).
///
/// A time outside the years 1970–9999 (which RFC 3339 tools cannot print;
/// servers before the 100-year expiry bound accepted such expiries) is
/// shown as seconds since the epoch rather than hiding the whole listing.
pub fn timestamp(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    /// 9999-12-31T23:59:59Z.
    const LAST_PRINTABLE: i64 = 253_402_300_799;
    let ts = *ts?;
    if !(0..=LAST_PRINTABLE).contains(&ts.seconds) {
        return Some(format!("@{} (seconds since 1970)", ts.seconds));
    }
    let time = SystemTime::try_from(ts).ok()?;
    Some(humantime::format_rfc3339_seconds(time).to_string())
}

/// Formats a protobuf duration like `1h 30m`, as `--ttl` and `--max-ttl`
/// take it; `None` for an unset or negative one (never a valid max TTL).
pub fn duration_text(duration: Option<&prost_types::Duration>) -> Option<String> {
    let duration = Duration::try_from(*duration?).ok()?;
    Some(humantime::format_duration(duration).to_string())
}

/// A rate limit as people read it and `--rate` takes it, e.g. `5/s burst 5`;
/// a window other than a second, minute or hour (set through the API) is
/// written out, e.g. `5/10s burst 5`.
pub fn rate_limit_text(limit: &pb::RateLimit) -> String {
    let per = match limit.per.map(Duration::try_from) {
        Some(Ok(per)) if per == Duration::from_secs(1) => "s".to_owned(),
        Some(Ok(per)) if per == Duration::from_mins(1) => "m".to_owned(),
        Some(Ok(per)) if per == Duration::from_hours(1) => "h".to_owned(),
        // No spaces (`1m30s`, not `1m 30s`), so the limit reads as one term.
        Some(Ok(per)) => humantime::format_duration(per).to_string().replace(' ', ""),
        // A server newer than this CLI, or a broken one: show, do not fail.
        Some(Err(_)) | None => "?".to_owned(),
    };
    format!("{}/{per} burst {}", limit.requests, limit.burst)
}

/// A rate limit in JSON, so a script can compare limits without parsing
/// `5/s`.
#[derive(Debug, Serialize)]
pub struct RateLimitView {
    requests: u32,
    /// `null` only for a window this CLI cannot read (a newer or broken
    /// server).
    per_seconds: Option<Seconds>,
    burst: u32,
}

/// A window in seconds: a whole number for the windows `--rate` makes (1,
/// 60, 3600), so scripts can compare with `==`; a fraction only for a
/// sub-second window set through the API.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Seconds {
    Whole(u64),
    Fraction(f64),
}

impl From<&pb::RateLimit> for RateLimitView {
    fn from(limit: &pb::RateLimit) -> Self {
        let per_seconds = match limit.per.map(Duration::try_from) {
            Some(Ok(per)) if per.subsec_nanos() == 0 => Some(Seconds::Whole(per.as_secs())),
            Some(Ok(per)) => Some(Seconds::Fraction(per.as_secs_f64())),
            Some(Err(_)) | None => None,
        };
        Self {
            requests: limit.requests,
            per_seconds,
            burst: limit.burst,
        }
    }
}

/// `1 key`, `2 keys`: counts in messages read as sentences.
pub fn count_keys(count: usize) -> String {
    if count == 1 {
        "1 key".to_owned()
    } else {
        format!("{count} keys")
    }
}

/// Labels sorted by key (the wire map has no order), for stable output.
pub fn sorted_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> BTreeMap<&'a str, &'a str> {
    labels
        .into_iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// `env=prod, team=infra`.
pub fn labels_text<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    sorted_labels(labels)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The wire's empty string for "not set", as JSON's `null`.
fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// `yes` or `no`, for flags in tables.
pub fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// A dash for an empty cell, so columns and `name value` lines never look
/// cut off.
pub fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

/// Renders `name value` pairs with the values aligned.
pub fn fields_text(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    fields
        .iter()
        .fold(String::new(), |mut text, (name, value)| {
            let _ = writeln!(text, "{name:<width$}  {value}");
            text
        })
}

/// Renders rows under headers, each column as wide as its widest cell. The
/// last column is not padded, so lines carry no trailing spaces.
pub fn table_text(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                out.push_str(cell);
            } else {
                let pad = width - cell.chars().count();
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// Writes `text` to stdout.
///
/// # Errors
/// [`CliError::Output`] when stdout is closed or full.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(CliError::Output)
}

/// Writes `view` to stdout as pretty JSON and a newline.
///
/// # Errors
/// As [`print`]; the views themselves always serialise (string keys only).
pub fn print_json(view: &impl Serialize) -> Result<(), CliError> {
    // Wiped once printed: a mint's or rotate's view holds a plaintext key.
    let mut text =
        Zeroizing::new(serde_json::to_string_pretty(view).map_err(|e| CliError::Output(e.into()))?);
    text.push('\n');
    print(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_past_year_9999_print_instead_of_panicking() {
        let at = |seconds| timestamp(Some(&prost_types::Timestamp { seconds, nanos: 0 }));
        assert_eq!(at(1_800_000_000).as_deref(), Some("2027-01-15T08:00:00Z"));
        assert_eq!(at(253_402_300_799).as_deref(), Some("9999-12-31T23:59:59Z"));
        // The year 20000, and a TTL of 2^62 s, as older servers stored them.
        assert_eq!(
            at(568_971_820_800).as_deref(),
            Some("@568971820800 (seconds since 1970)")
        );
        assert!(at(i64::MAX).is_some());
        assert!(at(-1).is_some());
        assert_eq!(timestamp(None), None);
    }

    fn limit(requests: u32, seconds: i64, nanos: i32, burst: u32) -> pb::RateLimit {
        pb::RateLimit {
            requests,
            per: Some(prost_types::Duration { seconds, nanos }),
            burst,
        }
    }

    fn json(view: &impl Serialize) -> String {
        serde_json::to_string(view).unwrap()
    }

    #[test]
    fn rate_limits_read_as_the_flag_writes_them() {
        assert_eq!(rate_limit_text(&limit(5, 1, 0, 5)), "5/s burst 5");
        assert_eq!(rate_limit_text(&limit(100, 60, 0, 20)), "100/m burst 20");
        assert_eq!(rate_limit_text(&limit(1, 3600, 0, 1)), "1/h burst 1");
        // Windows only the API can set are written out, still as one term.
        assert_eq!(rate_limit_text(&limit(5, 90, 0, 5)), "5/1m30s burst 5");
        assert_eq!(
            rate_limit_text(&limit(5, 0, 500_000_000, 1)),
            "5/500ms burst 1"
        );
        let unset = pb::RateLimit {
            per: None,
            ..limit(5, 1, 0, 5)
        };
        assert_eq!(rate_limit_text(&unset), "5/? burst 5");
    }

    #[test]
    fn rate_limits_in_json_are_numbers() {
        let view = |l: &pb::RateLimit| json(&RateLimitView::from(l));
        assert_eq!(
            view(&limit(100, 60, 0, 20)),
            r#"{"requests":100,"per_seconds":60,"burst":20}"#
        );
        assert_eq!(
            view(&limit(5, 0, 500_000_000, 1)),
            r#"{"requests":5,"per_seconds":0.5,"burst":1}"#
        );
        let unset = pb::RateLimit {
            per: None,
            ..limit(5, 1, 0, 5)
        };
        assert_eq!(
            view(&unset),
            r#"{"requests":5,"per_seconds":null,"burst":5}"#
        );
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let text = table_text(
            &["ID", "STATE", "OWNER"],
            &[
                vec!["a".into(), "active".into(), String::new()],
                vec!["bbbb".into(), "revoked".into(), "ci".into()],
            ],
        );
        assert_eq!(
            text,
            "ID    STATE    OWNER\n\
             a     active\n\
             bbbb  revoked  ci\n"
        );
    }

    #[test]
    fn fields_align_values() {
        let text = fields_text(&[("id", "x".into()), ("expires", "never".into())]);
        assert_eq!(text, "id       x\nexpires  never\n");
    }
}
