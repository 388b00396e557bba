//! Trust policies: which CI jobs may exchange their OIDC identity token for
//! a keyward key, and what that key may do ([`crate::exchange`] runs the
//! exchange).
//!
//! A policy names an issuer (GitHub Actions, GitLab, …), the audience the
//! token must be minted for, and claims the token must carry (the
//! repository, the branch, the environment). Because an issuer signs tokens
//! for every job it runs, and any job may ask for any audience, a policy
//! without a required claim would trust every job on github.com: at least
//! one claim is required.
//!
//! Claim patterns: a value is matched exactly, unless it ends in `*`, which
//! matches any value starting with what comes before it
//! (`acme/workflows/deploy.yml@*`). So `repository=acme/api` never matches
//! `acme/api-evil`, and `repository=acme/*` matches every repository of
//! `acme` (and nothing of `acme-evil`, thanks to the `/`). A `*` anywhere
//! but at the end is refused rather than taken literally: a reader would
//! expect it to be a wildcard. Only string claims match.

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use crate::{
    cidr::Cidr,
    clock::Timestamp,
    key::KeyId,
    model::{Labels, MAX_LABELS},
    permission::{Permission, RoleName},
};

/// The longest a key minted by an exchange may live: a CI job's key dies
/// with the job.
pub const MAX_POLICY_TTL: Duration = Duration::from_hours(1);
/// Most required claims one policy may list.
pub const MAX_CLAIMS: usize = 32;
/// Longest claim name, in bytes (it becomes part of a label key).
pub const MAX_CLAIM_NAME_BYTES: usize = 48;
/// Longest claim pattern, in bytes.
pub const MAX_CLAIM_VALUE_BYTES: usize = 256;
/// Longest issuer URL or audience, in bytes.
pub const MAX_ISSUER_BYTES: usize = 512;
/// Labels every exchanged key gets besides the policy's own: the policy,
/// the issuer and the subject (see [`crate::exchange`]).
pub const EXCHANGE_LABELS: usize = 3;

/// Claims the exchange checks itself; a policy may not list them.
const RESERVED_CLAIMS: [&str; 7] = ["iss", "aud", "exp", "nbf", "iat", "jti", "azp"];

/// Why a policy's setting was refused; the service names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPolicy {
    /// The name's grammar, as for roles.
    #[error("{0}")]
    Name(String),
    /// Not an absolute `https://` URL (or `http://` where allowed).
    #[error(
        "must be an absolute https:// URL without query or fragment, at most {MAX_ISSUER_BYTES} bytes, e.g. https://token.actions.githubusercontent.com{0}"
    )]
    Issuer(&'static str),
    /// Empty or too long.
    #[error("must be 1 to {MAX_ISSUER_BYTES} bytes without control characters")]
    Audience,
    /// A claim's name or pattern is unusable; the message says which.
    #[error("{0}")]
    Claim(String),
    /// Zero, or longer than an hour.
    #[error("must be more than zero and at most 1h")]
    Ttl,
}

/// A policy's name: the grammar of role names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyName(RoleName);

impl PolicyName {
    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl FromStr for PolicyName {
    type Err = InvalidPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<RoleName>().map(Self).map_err(|_| {
            InvalidPolicy::Name(
                "a policy name must be 1 to 64 bytes of [a-z0-9_.-], starting with a letter \
                     or digit"
                    .to_owned(),
            )
        })
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An OIDC issuer: an absolute URL, compared with the token's `iss` byte for
/// byte (as OpenID Connect requires), and the base of its discovery document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Issuer(String);

impl Issuer {
    /// Parses `url`, which must be `https://` unless `allow_http` (tests
    /// against an issuer on loopback: `keyward serve --oidc-allow-http-issuers`).
    ///
    /// # Errors
    /// [`InvalidPolicy::Issuer`] for anything but an absolute URL of an
    /// allowed scheme with a host and no query or fragment.
    pub fn parse(url: &str, allow_http: bool) -> Result<Self, InvalidPolicy> {
        let hint = if allow_http {
            " (or http://, allowed by --oidc-allow-http-issuers)"
        } else {
            ""
        };
        let bad = || InvalidPolicy::Issuer(hint);
        if url.len() > MAX_ISSUER_BYTES || url.chars().any(|c| c.is_control() || c == ' ') {
            return Err(bad());
        }
        let uri: http::Uri = url.parse().map_err(|_| bad())?;
        let scheme_ok = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => allow_http,
            _ => false,
        };
        let plain = uri.query().is_none() && !url.contains('#') && !url.contains('@');
        if !scheme_ok || uri.host().is_none_or(str::is_empty) || !plain {
            return Err(bad());
        }
        Ok(Self(url.to_owned()))
    }

    /// The URL as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where its OpenID discovery document is.
    #[must_use]
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.0.trim_end_matches('/')
        )
    }
}

impl fmt::Display for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a required claim's value must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimPattern {
    /// Exactly this value.
    Exact(String),
    /// Any value starting with this (written with a trailing `*`).
    Prefix(String),
}

impl ClaimPattern {
    /// Parses a pattern: a trailing `*` makes a prefix; a `*` elsewhere is
    /// refused.
    ///
    /// # Errors
    /// [`InvalidPolicy::Claim`] for an empty or oversized pattern, a `*` not
    /// at the end, or hidden characters.
    pub fn parse(text: &str) -> Result<Self, InvalidPolicy> {
        if text.is_empty() || text.len() > MAX_CLAIM_VALUE_BYTES {
            return Err(InvalidPolicy::Claim(format!(
                "a claim's value must be 1 to {MAX_CLAIM_VALUE_BYTES} bytes"
            )));
        }
        crate::text::check(text, MAX_CLAIM_VALUE_BYTES)
            .map_err(|bad| InvalidPolicy::Claim(format!("a claim's value {bad}")))?;
        let (body, glob) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        if body.contains('*') {
            return Err(InvalidPolicy::Claim(
                "`*` is allowed only at the end of a claim's value (a prefix match)".to_owned(),
            ));
        }
        Ok(if glob {
            Self::Prefix(body.to_owned())
        } else {
            Self::Exact(body.to_owned())
        })
    }

    /// Whether `value` satisfies the pattern.
    #[must_use]
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(exact) => value == exact,
            Self::Prefix(prefix) => value.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for ClaimPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(exact) => f.write_str(exact),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// Checks a required claim's name: a JSON member name keyward can also use
/// in a label key (`oidc.claim.<name>`), and not one the exchange checks
/// itself.
///
/// # Errors
/// [`InvalidPolicy::Claim`] naming the problem.
pub fn check_claim_name(name: &str) -> Result<(), InvalidPolicy> {
    let well_formed = !name.is_empty()
        && name.len() <= MAX_CLAIM_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-:/".contains(&b));
    if !well_formed {
        return Err(InvalidPolicy::Claim(format!(
            "a claim's name must be 1 to {MAX_CLAIM_NAME_BYTES} bytes of [A-Za-z0-9_.:/-]"
        )));
    }
    if RESERVED_CLAIMS.contains(&name) {
        return Err(InvalidPolicy::Claim(format!(
            "claim `{name}` is checked by every exchange; it cannot be a required claim"
        )));
    }
    Ok(())
}

/// Everything about a policy its creator sets; create and update take one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// Free text for people.
    pub description: String,
    /// Whose tokens are trusted.
    pub issuer: Issuer,
    /// What the token's `aud` must contain.
    pub audience: String,
    /// Claim name → pattern; at least one.
    pub claims: BTreeMap<String, ClaimPattern>,
    /// Roles the minted key holds; each must exist at exchange time.
    pub roles: Vec<RoleName>,
    /// Permissions the minted key holds directly.
    pub permissions: Vec<Permission>,
    /// The minted key's lifetime: at most [`MAX_POLICY_TTL`], and within its
    /// roles' max TTL.
    pub ttl: Duration,
    /// Client addresses the minted key validates from; empty: any.
    pub allowed_cidrs: Vec<Cidr>,
    /// Labels of the minted key, besides those the exchange adds.
    pub labels: Labels,
}

impl PolicySpec {
    /// Checks what each field cannot say on its own: claims present and few
    /// enough, the TTL's bound, room for the exchange's own labels.
    ///
    /// # Errors
    /// The field at fault and why.
    pub fn check(&self) -> Result<(), (&'static str, InvalidPolicy)> {
        if self.claims.is_empty() {
            return Err((
                "required_claims",
                InvalidPolicy::Claim(
                    "at least one required claim (e.g. repository=acme/api): the issuer signs \
                     tokens for every job it runs, and a job may ask for any audience"
                        .to_owned(),
                ),
            ));
        }
        if self.claims.len() > MAX_CLAIMS {
            return Err((
                "required_claims",
                InvalidPolicy::Claim(format!("at most {MAX_CLAIMS} required claims")),
            ));
        }
        if self.ttl.is_zero() || self.ttl > MAX_POLICY_TTL {
            return Err(("ttl", InvalidPolicy::Ttl));
        }
        let room = MAX_LABELS - EXCHANGE_LABELS - self.claims.len();
        if self.labels.as_map().len() > room {
            return Err((
                "labels",
                InvalidPolicy::Claim(format!(
                    "at most {room} labels with {} required claims: each exchanged key also \
                     gets a label per claim and {EXCHANGE_LABELS} of its own",
                    self.claims.len()
                )),
            ));
        }
        if let Some(reserved) = self.labels.as_map().keys().find(|k| k.starts_with("oidc.")) {
            return Err((
                "labels",
                InvalidPolicy::Claim(format!(
                    "label `{reserved}`: labels starting `oidc.` are set by the exchange"
                )),
            ));
        }
        Ok(())
    }
}

/// Checks an audience.
///
/// # Errors
/// [`InvalidPolicy::Audience`].
pub fn check_audience(audience: &str) -> Result<(), InvalidPolicy> {
    if audience.is_empty() || crate::text::check(audience, MAX_ISSUER_BYTES).is_err() {
        return Err(InvalidPolicy::Audience);
    }
    Ok(())
}

/// A stored trust policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Unique; what `Exchange` names.
    pub name: PolicyName,
    /// What its creator set.
    pub spec: PolicySpec,
    /// The owner of the keys it mints: its creator's, for a narrow admin key
    /// (see [`crate::scope`]); empty for root.
    pub owner: String,
    /// The key that created it; the keys it mints count as that key's
    /// (`created_by`), so it may manage them.
    pub created_by: Option<KeyId>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_patterns_are_exact_unless_they_end_in_a_star() {
        let cases = [
            ("acme/api", "acme/api", true),
            ("acme/api", "acme/api-evil", false),
            ("acme/api", "acme/ap", false),
            ("acme/api", "ACME/api", false),
            ("acme/*", "acme/api", true),
            ("acme/*", "acme-evil/api", false),
            ("acme/*", "acme/", true),
            (
                "acme/workflows/.github/workflows/deploy.yml@*",
                "acme/workflows/.github/workflows/deploy.yml@refs/heads/main",
                true,
            ),
            (
                "acme/workflows/.github/workflows/deploy.yml@*",
                "acme/workflows/.github/workflows/deploy.yml.evil@x",
                false,
            ),
            ("refs/heads/main", "refs/heads/main-hotfix", false),
            ("*", "anything", true),
        ];
        for (pattern, value, expected) in cases {
            let parsed = ClaimPattern::parse(pattern).unwrap();
            assert_eq!(parsed.matches(value), expected, "{pattern} vs {value}");
            assert_eq!(parsed.to_string(), pattern);
        }
        for bad in ["", "a*b", "**", "a\u{202e}b", &"x".repeat(300)] {
            assert!(ClaimPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn issuers_are_https_urls_unless_http_is_allowed() {
        let github = "https://token.actions.githubusercontent.com";
        assert_eq!(Issuer::parse(github, false).unwrap().as_str(), github);
        assert_eq!(
            Issuer::parse("https://gitlab.example.com/", false)
                .unwrap()
                .discovery_url(),
            "https://gitlab.example.com/.well-known/openid-configuration"
        );
        assert!(Issuer::parse("http://127.0.0.1:8080", false).is_err());
        assert!(Issuer::parse("http://127.0.0.1:8080", true).is_ok());
        for bad in [
            "",
            "token.actions.githubusercontent.com",
            "ftp://x",
            "https://",
            "https://x?y=1",
            "https://x#f",
            "https://user@x",
            "https://x y",
        ] {
            assert!(Issuer::parse(bad, true).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn claim_names_exclude_what_the_exchange_checks() {
        for ok in ["repository", "job_workflow_ref", "project_path", "sub"] {
            assert!(check_claim_name(ok).is_ok(), "{ok}");
        }
        for bad in ["iss", "aud", "exp", "jti", "", "a b", "a=b"] {
            assert!(check_claim_name(bad).is_err(), "{bad:?}");
        }
    }
}
