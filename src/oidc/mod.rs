//! OpenID Connect identity tokens: verifying a CI job's token against a
//! [trust policy](crate::trust) before [`crate::exchange`] mints a key for it.
//!
//! | module | what |
//! | --- | --- |
//! | [`verify`] | the JWT: parsing, allowed algorithms, the signature, `iss`/`aud`/`exp`/`nbf`/`iat`/`jti`, the policy's claims |
//! | [`jwks`] | the issuer's keys: discovery, the JWKS, a cache refreshed on an unknown `kid` at most once per interval |
//! | [`fetch`] | the bounded HTTPS GET both need |
//!
//! Every refusal is a [`Refusal`]: precise for the log and metrics, never
//! shown to the caller, who learns only "permission denied".

pub mod fetch;
pub mod jwks;
pub mod verify;

use std::fmt;

use zeroize::Zeroizing;

/// An identity token as presented. A bearer credential until it expires,
/// so it is never logged, printed or stored: its `Debug` is redacted, it has
/// no `Display`, and its memory is wiped when dropped.
pub struct IdentityToken(Zeroizing<String>);

impl IdentityToken {
    /// Wraps the token text.
    #[must_use]
    pub fn new(token: String) -> Self {
        Self(Zeroizing::new(token))
    }

    /// The token text, for verification only.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdentityToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityToken(<redacted>)")
    }
}

/// Why an exchange was refused. The caller sees none of this (one generic
/// `PERMISSION_DENIED`); the log and `keyward_exchanges_total` see which.
/// Nothing here holds the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No policy of that name.
    #[error("no such trust policy")]
    UnknownPolicy,
    /// Not a compact JWS with JSON header and claims.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// `alg` is not RS256, ES256 or EdDSA (`none` and HMAC included), or the
    /// header has `crit` extensions.
    #[error("the token's algorithm is not allowed")]
    Algorithm,
    /// The issuer has no key with the token's `kid` (or it has none).
    #[error("the issuer has no key with the token's kid")]
    UnknownKey,
    /// The issuer's discovery document or JWKS could not be fetched.
    #[error("the issuer's keys cannot be fetched")]
    IssuerUnreachable,
    /// The signature does not verify with the issuer's key.
    #[error("bad signature")]
    Signature,
    /// `iss` is not the policy's issuer.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` does not contain the policy's audience.
    #[error("wrong audience")]
    Audience,
    /// Past `exp` (with leeway), or `exp` missing.
    #[error("expired")]
    Expired,
    /// Before `nbf`, or `iat` in the future (with leeway).
    #[error("not yet valid")]
    NotYetValid,
    /// `exp` further away than keyward keeps replay records for.
    #[error("the token lives too long")]
    TooLongLived,
    /// No `jti` or `sub`, or one keyward cannot record.
    #[error("the token has no usable jti or sub")]
    MissingClaim,
    /// A required claim is missing or does not match.
    #[error("a required claim does not match")]
    Claim,
    /// The token's `jti` was exchanged before.
    #[error("replayed jti")]
    Replayed,
    /// The policy cannot mint right now (a role of it was deleted, a claim
    /// value cannot be a label).
    #[error("the policy cannot mint a key")]
    PolicyUnusable,
}

impl Refusal {
    /// Every value, for the metric's series.
    pub const ALL: [Self; 15] = [
        Self::UnknownPolicy,
        Self::Malformed,
        Self::Algorithm,
        Self::UnknownKey,
        Self::IssuerUnreachable,
        Self::Signature,
        Self::Issuer,
        Self::Audience,
        Self::Expired,
        Self::NotYetValid,
        Self::TooLongLived,
        Self::MissingClaim,
        Self::Claim,
        Self::Replayed,
        Self::PolicyUnusable,
    ];

    /// The `reason` label of `keyward_exchanges_total`.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::UnknownPolicy => "unknown_policy",
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::UnknownKey => "unknown_key",
            Self::IssuerUnreachable => "issuer_unreachable",
            Self::Signature => "signature",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::TooLongLived => "too_long_lived",
            Self::MissingClaim => "missing_claim",
            Self::Claim => "claim",
            Self::Replayed => "replayed",
            Self::PolicyUnusable => "policy_unusable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_never_shown() {
        let token = IdentityToken::new("eyJhbGciOiJFUzI1NiJ9.e30.c2lnbmF0dXJl".to_owned());
        assert_eq!(format!("{token:?}"), "IdentityToken(<redacted>)");
        assert!(token.expose().ends_with("c2lnbmF0dXJl"));
    }

    #[test]
    fn every_refusal_has_its_own_label() {
        let mut labels: Vec<&str> = Refusal::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Refusal::ALL.len());
    }
}
