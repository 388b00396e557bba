//! The exchange: a CI job's OIDC identity token in, a short-lived key out.
//!
//! look up the policy → verify the token ([`crate::oidc::verify`]) → mint
//! under the policy, recording the token's `jti` in the same transaction
//! ([`Lifecycle::mint_exchanged`]). Whatever is refused, the caller learns
//! the same `PERMISSION_DENIED`, so a probe learns neither which policies
//! exist nor what is wrong with a token; the log line and
//! `keyward_exchanges_total` say which check refused it. Only a failure
//! that is not about the token (the database down) is answered otherwise.

use std::{sync::Arc, time::Duration};

use crate::{
    error::ServiceError,
    lifecycle::{ExchangeFailure, Lifecycle, Minted},
    metrics::{Exchanged, Metrics},
    oidc::{
        IdentityToken, Refusal,
        fetch::Fetcher,
        jwks::Jwks,
        verify::{self, Verified},
    },
    trust::{PolicyName, TrustPolicy},
};

/// What every refused exchange is told.
pub const DENIED: &str = "the identity token is not accepted for this trust policy";

/// How the exchange reaches issuers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OidcSettings {
    /// Allow `http://` issuers and JWKS URLs: for tests against an issuer on
    /// loopback only (`--oidc-allow-http-issuers`).
    pub allow_http_issuers: bool,
    /// Least time between two fetches of one issuer's keys (an unknown
    /// `kid` refetches at most this often).
    pub jwks_refresh_interval: Duration,
}

impl Default for OidcSettings {
    fn default() -> Self {
        Self {
            allow_http_issuers: false,
            jwks_refresh_interval: Duration::from_mins(1),
        }
    }
}

/// Runs exchanges.
pub struct Exchanger {
    lifecycle: Arc<Lifecycle>,
    jwks: Jwks,
    metrics: Arc<Metrics>,
}

impl Exchanger {
    /// Exchanges under the policies `lifecycle` holds, reaching issuers as
    /// `settings` say, counting into `metrics`.
    #[must_use]
    pub fn new(lifecycle: Arc<Lifecycle>, settings: OidcSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            lifecycle,
            jwks: Jwks::new(
                Fetcher::new(settings.allow_http_issuers),
                settings.jwks_refresh_interval,
            ),
            metrics,
        }
    }

    /// Exchanges `token` under policy `policy`.
    ///
    /// # Errors
    /// `PermissionDenied` ([`DENIED`]) for every refusal; `Unavailable` or
    /// `Internal` when the database fails.
    #[tracing::instrument(skip_all, fields(policy = %policy))]
    pub async fn exchange(
        &self,
        policy: &str,
        token: &IdentityToken,
    ) -> Result<Minted, ServiceError> {
        match self.run(policy, token).await {
            Ok((minted, verified)) => {
                self.metrics.exchanged(Exchanged::Ok);
                tracing::info!(
                    action = "key.exchange",
                    target = %minted.key.id,
                    subject = %verified.subject,
                    jti = %verified.jti,
                    outcome = "ok",
                    "identity token exchanged for a key"
                );
                Ok(minted)
            }
            Err(ExchangeFailure::Refused(refusal)) => {
                self.metrics.exchanged(Exchanged::Refused(refusal));
                tracing::info!(reason = refusal.label(), detail = %refusal, "exchange refused");
                Err(ServiceError::PermissionDenied(DENIED.to_owned()))
            }
            Err(ExchangeFailure::Failed(error)) => {
                self.metrics.exchanged(Exchanged::Failed);
                tracing::warn!(%error, "exchange failed");
                Err(error)
            }
        }
    }

    async fn run(
        &self,
        policy: &str,
        token: &IdentityToken,
    ) -> Result<(Minted, Verified), ExchangeFailure> {
        let policy = self.policy(policy).await?;
        let verified = verify::verify(token, &policy, &self.jwks, self.lifecycle.now())
            .await
            .map_err(ExchangeFailure::Refused)?;
        let minted = self.lifecycle.mint_exchanged(&policy, &verified).await?;
        Ok((minted, verified))
    }

    async fn policy(&self, name: &str) -> Result<TrustPolicy, ExchangeFailure> {
        let unknown = ExchangeFailure::Refused(Refusal::UnknownPolicy);
        let name: PolicyName = name.parse().map_err(|_| unknown)?;
        match self.lifecycle.policy(&name).await {
            Ok(policy) => Ok(policy),
            Err(ServiceError::NotFound(_)) => Err(ExchangeFailure::Refused(Refusal::UnknownPolicy)),
            Err(error) => Err(ExchangeFailure::Failed(error)),
        }
    }
}
