//! The exchange: a CI job's OIDC identity token in, a short-lived key out.
//!
//! parse the token's header → look up the policy → verify the token
//! ([`crate::oidc::verify`]) → mint under the policy, recording the token's
//! `jti` in the same transaction ([`Lifecycle::mint_exchanged`]).
//!
//! Exchange needs no credential, so what it costs a stranger is bounded: a
//! malformed token or a forbidden algorithm is refused before any I/O, the
//! policies are read from the database at most once per
//! [`POLICY_REFRESH`] (all of them: an admin makes a few), and an issuer's
//! keys at most once per refresh interval ([`crate::oidc::jwks`]). Whatever is refused, the caller learns
//! the same `PERMISSION_DENIED`, so a probe learns neither which policies
//! exist nor what is wrong with a token; the log line and
//! `keyward_exchanges_total` say which check refused it. Only a failure
//! that is not about the token (the database down) is answered otherwise.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

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
    trust::TrustPolicy,
};

/// How long the policies read for exchanges are used before they are read
/// again: a policy created, changed or deleted takes effect for exchanges
/// within this, on every replica.
pub const POLICY_REFRESH: Duration = Duration::from_secs(2);

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
    /// Every policy by name, and when they were read.
    policies: tokio::sync::Mutex<(Option<Instant>, Policies)>,
}

/// Trust policies by name.
type Policies = HashMap<String, Arc<TrustPolicy>>;

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
            policies: tokio::sync::Mutex::default(),
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
        let token = verify::parse(token).map_err(ExchangeFailure::Refused)?;
        let policy = self.policy(policy).await?;
        let verified = verify::verify(&token, &policy, &self.jwks, self.lifecycle.now())
            .await
            .map_err(ExchangeFailure::Refused)?;
        let minted = self.lifecycle.mint_exchanged(&policy, &verified).await?;
        Ok((minted, verified))
    }

    /// Policy `name`, from the policies read at most [`POLICY_REFRESH`] ago.
    async fn policy(&self, name: &str) -> Result<Arc<TrustPolicy>, ExchangeFailure> {
        let mut cache = self.policies.lock().await;
        let (read_at, policies) = &mut *cache;
        if read_at.is_none_or(|at| at.elapsed() >= POLICY_REFRESH) {
            let all = self.lifecycle.list_policies().await?;
            *policies = all
                .into_iter()
                .map(|policy| (policy.name.to_string(), Arc::new(policy)))
                .collect();
            *read_at = Some(Instant::now());
        }
        policies
            .get(name)
            .cloned()
            .ok_or(ExchangeFailure::Refused(Refusal::UnknownPolicy))
    }
}
