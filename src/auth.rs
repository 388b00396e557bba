//! Caller authentication and authorization for RPCs: every RPC presents the
//! caller's own key as `authorization: Bearer <key>`, checked by the same
//! pipeline as Validate, from the address the connection comes from.

use std::{net::IpAddr, sync::LazyLock, time::Duration};

use tonic::{Request, metadata::MetadataMap};

use crate::{
    error::ServiceError,
    key::KeyId,
    listener::Peer,
    metrics::{CallerRefused, Metrics},
    model::Actor,
    permission::{self, Permission},
    scope::Scope,
    telemetry::LogBudget,
    validate::{Denied, Grant, Outcome, ProvenCredential, Validator},
};

/// Where a caller's credential came from: the address of the connection it
/// came on and, on connections keyward accepted, the credential the
/// connection last proved (see [`ProvenCredential`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    /// The connection's remote address, checked against the caller key's
    /// allow-list.
    pub ip: Option<IpAddr>,
    /// The connection's proven credential.
    pub proven: Option<&'a ProvenCredential>,
}

impl<'a> Origin<'a> {
    /// The origin of a request on a connection from `peer`.
    #[must_use]
    pub fn from_peer(peer: &'a Peer) -> Self {
        Self {
            ip: Some(peer.addr.ip()),
            proven: Some(&peer.proven),
        }
    }

    /// The origin of a gRPC request, from the [`Peer`] its connection
    /// attached; none for a request built in-process.
    #[must_use]
    pub fn of<T>(request: &'a Request<T>) -> Self {
        Self::of_extensions(request.extensions())
    }

    /// [`Origin::of`] a request taken apart.
    #[must_use]
    pub fn of_extensions(extensions: &'a tonic::Extensions) -> Self {
        extensions
            .get::<Peer>()
            .map_or_else(Self::default, Self::from_peer)
    }
}

/// An authenticated caller and what it holds.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The caller key's id: what audit records name as the actor.
    pub id: KeyId,
    /// The caller key's effective permissions.
    pub permissions: Vec<Permission>,
    /// Holds `keyward:admin`: may grant any permission.
    pub is_root: bool,
    /// Which keys it may mint and manage; unrestricted for root.
    pub scope: Scope,
}

impl Caller {
    /// The caller as the actor of an audit record.
    #[must_use]
    pub fn actor(&self) -> Actor {
        Actor::Key(self.id)
    }

    /// Whether this caller may hand `permission` to a key or a role: only
    /// what it holds itself, unless it holds `keyward:admin`. This is what
    /// stops a narrowly scoped admin key from minting a broader one.
    #[must_use]
    pub fn may_grant(&self, permission: &Permission) -> bool {
        self.is_root || self.permissions.iter().any(|held| held.grants(permission))
    }

    /// The first of `permissions` this caller may not grant.
    ///
    /// # Errors
    /// `PermissionDenied` naming that permission.
    pub fn check_may_grant<'a>(
        &self,
        permissions: impl IntoIterator<Item = &'a Permission>,
    ) -> Result<(), ServiceError> {
        match permissions.into_iter().find(|p| !self.may_grant(p)) {
            Some(p) => Err(ServiceError::PermissionDenied(format!(
                "the caller's key cannot grant {p}: it does not hold it (no escalation)"
            ))),
            None => Ok(()),
        }
    }
}

/// Most log lines a second for refused callers; `held_back` on the next line
/// says how many more there were (`keyward_caller_refusals_total` counts
/// them all).
const REFUSAL_LINES_PER_SECOND: u64 = 10;

/// Checks the caller's key and that it holds `needed` or `keyward:admin`.
///
/// # Errors
/// `Unauthenticated` when the credential is missing or not a live key;
/// `PermissionDenied` when it lacks the permission or its allow-list excludes
/// the connection's address; `ResourceExhausted` when the caller's key is
/// over its rate limit; `Unavailable` on a replica whose index is too stale
/// to trust (the caller's key itself may have been revoked meanwhile). None
/// echoes the key. Each refusal of the credential is counted in `metrics`.
pub fn authenticate<T>(
    request: &Request<T>,
    validator: &Validator,
    needed: &Permission,
    metrics: &Metrics,
) -> Result<Caller, ServiceError> {
    authenticate_credential(
        bearer_token(request.metadata()),
        Origin::of(request),
        validator,
        Some(needed),
        metrics,
    )
}

/// Checks the caller's key, needing no permission: for what any key may do
/// to itself (`RevokeSelf`).
///
/// # Errors
/// As [`authenticate`], but never for a missing permission.
pub fn authenticate_key<T>(
    request: &Request<T>,
    validator: &Validator,
    metrics: &Metrics,
) -> Result<Caller, ServiceError> {
    authenticate_credential(
        bearer_token(request.metadata()),
        Origin::of(request),
        validator,
        None,
        metrics,
    )
}

/// [`authenticate`] for a credential found elsewhere than gRPC metadata (an
/// HTTP header of the gateway listener), presented from `origin`.
/// `presented` is the credential, or the error to answer when there is
/// none; `needed`, the permission the call requires, if any.
///
/// # Errors
/// As [`authenticate`].
pub fn authenticate_credential(
    presented: Result<&str, ServiceError>,
    origin: Origin<'_>,
    validator: &Validator,
    needed: Option<&Permission>,
    metrics: &Metrics,
) -> Result<Caller, ServiceError> {
    let (grant, is_root) = authenticated(presented, origin, validator, needed, metrics)?;
    Ok(Caller {
        id: grant.key.id,
        scope: Scope::of(&grant.key, is_root),
        permissions: grant.permissions.to_vec(),
        is_root,
    })
}

/// [`authenticate_credential`] for a caller that needs nothing but its id
/// afterwards (a Validate caller, a gateway): the same checks, counts and
/// log lines, without copying the caller's permissions and scope out of
/// the index on every call.
///
/// # Errors
/// As [`authenticate`].
pub fn authenticate_caller_id(
    presented: Result<&str, ServiceError>,
    origin: Origin<'_>,
    validator: &Validator,
    needed: Option<&Permission>,
    metrics: &Metrics,
) -> Result<KeyId, ServiceError> {
    authenticated(presented, origin, validator, needed, metrics).map(|(grant, _)| grant.key.id)
}

/// The caller's grant, and whether it holds `keyward:admin`.
fn authenticated(
    presented: Result<&str, ServiceError>,
    origin: Origin<'_>,
    validator: &Validator,
    needed: Option<&Permission>,
    metrics: &Metrics,
) -> Result<(Grant, bool), ServiceError> {
    static ROOT: LazyLock<Permission> =
        LazyLock::new(|| permission::ADMIN.parse().expect("built-in permission"));
    // Refusals are the client's to cause at will: a few lines a second.
    static REFUSALS: LogBudget = LogBudget::new(REFUSAL_LINES_PER_SECOND);
    validator.ensure_fresh()?;
    let token =
        presented.inspect_err(|_| metrics.caller_refused(CallerRefused::MissingCredential))?;
    let outcome = validator.check_credential(token, origin.ip, origin.proven);
    let grant = match outcome {
        Outcome::Valid(grant) => grant,
        Outcome::RateLimited { grant, retry_after } => {
            metrics.caller_refused(CallerRefused::RateLimited);
            if let Some(held_back) = REFUSALS.admit() {
                tracing::info!(caller = %grant.key.id, ?retry_after, held_back, "caller rate limited");
            }
            return Err(ServiceError::ResourceExhausted(format!(
                "the caller's key is over its rate limit; retry in {}",
                humantime::format_duration(Duration::from_millis(
                    u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX)
                ))
            )));
        }
        Outcome::Forbidden { grant, denied } => {
            metrics.caller_refused(match denied {
                Denied::ClientIpNotAllowed(_) => CallerRefused::ClientIpNotAllowed,
                Denied::MissingPermission(_) => CallerRefused::MissingPermission,
            });
            if let Some(held_back) = REFUSALS.admit() {
                tracing::info!(caller = %grant.key.id, %denied, held_back, "caller refused");
            }
            return Err(ServiceError::PermissionDenied(caller_denied(&denied)));
        }
        Outcome::Invalid(reason) => {
            metrics.caller_refused(CallerRefused::invalid(reason));
            if let Some(held_back) = REFUSALS.admit() {
                tracing::info!(caller = ?reason.key_id(), %reason, held_back, "caller key refused");
            }
            return Err(ServiceError::Unauthenticated(
                "the caller's key is not valid",
            ));
        }
    };
    let is_root = grant.permissions.iter().any(|held| held.grants(&ROOT));
    if let Some(needed) = needed
        && !is_root
        && !grant.permissions.iter().any(|held| held.grants(needed))
    {
        metrics.caller_refused(CallerRefused::MissingPermission);
        if let Some(held_back) = REFUSALS.admit() {
            tracing::info!(caller = %grant.key.id, %needed, held_back, "caller lacks permission");
        }
        return Err(ServiceError::PermissionDenied(format!(
            "the caller's key lacks the {needed} permission"
        )));
    }
    crate::telemetry::record_caller(grant.key.id);
    Ok((grant, is_root))
}

fn caller_denied(denied: &Denied) -> String {
    match denied {
        Denied::ClientIpNotAllowed(_) => {
            "the caller's key is not allowed from this address".to_owned()
        }
        Denied::MissingPermission(p) => format!("the caller's key lacks the {p} permission"),
    }
}

/// The client address a backend passed in a Validate request.
///
/// # Errors
/// `InvalidArgument` naming `client_ip` when it is not an IP address.
pub fn client_ip(text: &str) -> Result<Option<IpAddr>, ServiceError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| ServiceError::invalid("client_ip", "not an IPv4 or IPv6 address"))
}

/// The caller's key in gRPC metadata, or why there is none.
pub(crate) fn bearer_token(metadata: &MetadataMap) -> Result<&str, ServiceError> {
    const MISSING: &str = "missing caller credential: send `authorization: Bearer <key>` metadata";
    metadata
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(bearer)
        .ok_or(ServiceError::Unauthenticated(MISSING))
}

/// The token of an `authorization` value of the `Bearer` scheme (the scheme
/// in any case), trimmed; `None` for another scheme or no token.
#[must_use]
pub fn bearer(value: &str) -> Option<&str> {
    // The scheme is what comes before the first space: `bearer` only when
    // that space is the seventh byte (a test of six bytes, on every RPC,
    // rather than a search).
    let scheme = value.get(..BEARER.len())?;
    let token = value[BEARER.len()..].strip_prefix(' ')?.trim();
    (scheme.eq_ignore_ascii_case(BEARER) && !token.is_empty()).then_some(token)
}

/// The scheme of an `authorization` value that holds a key.
const BEARER: &str = "bearer";

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(value: Option<&str>) -> MetadataMap {
        let mut map = MetadataMap::new();
        if let Some(value) = value {
            map.insert("authorization", value.parse().unwrap());
        }
        map
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(
            bearer_token(&metadata(Some("Bearer kw_abc"))).unwrap(),
            "kw_abc"
        );
        assert_eq!(
            bearer_token(&metadata(Some("bearer  kw_abc "))).unwrap(),
            "kw_abc"
        );
        for bad in [None, Some("kw_abc"), Some("Basic kw_abc"), Some("Bearer")] {
            assert!(
                matches!(
                    bearer_token(&metadata(bad)),
                    Err(ServiceError::Unauthenticated(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_root_grants_beyond_its_own_permissions() {
        let perms = |list: &[&str]| {
            list.iter()
                .map(|p| p.parse().unwrap())
                .collect::<Vec<Permission>>()
        };
        let scoped = Caller {
            id: "0000000000A".parse().unwrap(),
            permissions: perms(&["keyward:keys:write", "deploy:*"]),
            is_root: false,
            scope: Scope::Narrow {
                key_id: "0000000000A".parse().unwrap(),
                owner: String::new(),
                tenant: None,
            },
        };
        assert!(
            scoped
                .check_may_grant(&perms(&[
                    "deploy:write",
                    "deploy:prod:*",
                    "keyward:keys:write"
                ]))
                .is_ok()
        );
        for beyond in ["deploy", "build:read", "keyward:*", "keyward:admin", "*"] {
            let error = scoped.check_may_grant(&perms(&[beyond])).unwrap_err();
            assert!(error.to_string().contains(beyond), "{error}");
        }
        let root = Caller {
            is_root: true,
            ..scoped
        };
        assert!(
            root.check_may_grant(&perms(&["*", "anything:else"]))
                .is_ok()
        );
    }

    #[test]
    fn client_ip_parsing() {
        assert_eq!(client_ip("").unwrap(), None);
        assert_eq!(client_ip("::1").unwrap(), Some("::1".parse().unwrap()));
        let error = client_ip("10.0.0.300").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid client_ip: not an IPv4 or IPv6 address"
        );
    }
}
