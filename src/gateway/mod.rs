//! Gateways: a proxy in front of any HTTP service asks keyward whether the
//! request it holds may pass, so the service behind it needs no keyward code.
//!
//! Two fronts ask the same question:
//!
//! | front | protocol | where |
//! | --- | --- | --- |
//! | [`ext_authz`] | Envoy's `envoy.service.auth.v3.Authorization/Check` | the gRPC port |
//! | [`http`] | `GET /v1/forward-auth` (nginx `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth`), and `POST /v1/keys:validate` for clients with no gRPC library | `--http-listen` |
//!
//! Both run Validate's own path ([`KeyService::answer`]): the gateway is a
//! Validate caller like any backend, authenticated by its own key with
//! `keyward:validate`, and the key it checks goes through the same pipeline,
//! the same rate limits and the same log lines. What this module adds is
//! the translation: where the key, the required permissions and the client
//! address are found in a proxied request, and what an allowed or refused
//! request becomes ([`Verdict`]): headers for the upstream, or an HTTP status
//! for the client, decided here once for both fronts.
//!
//! Upstream headers (fixed names, documented in the README):
//!
//! | header | value |
//! | --- | --- |
//! | `x-keyward-key-id` | the key's public id |
//! | `x-keyward-owner` | the key's owner (none: absent from ext_authz, empty from forward-auth) |
//! | `x-keyward-roles` | the key's roles, comma-separated (likewise) |
//!
//! Every other `x-keyward-*` header a client sent is removed, so a client
//! cannot forge them.

pub mod ext_authz;
pub mod http;
pub mod json;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
    time::Instant,
};

use ::http::HeaderName;

use crate::{
    auth::{Origin, bearer},
    cidr::Cidr,
    error::ServiceError,
    key::{HotPathHasher, KeyId},
    metrics::{Front, GatewayChecked, Metrics, RouteSeries, Validated},
    model::IndexedKey,
    permission::{Permission, RoleName},
    service::{KeyService, keys::required_permissions},
    validate::{Checks, Outcome, Required},
};

/// The prefix of every header keyward sets for the upstream. A client's own
/// headers with it are removed.
pub const HEADER_PREFIX: &str = "x-keyward-";

/// The upstream header naming the key's id (fixed by the product contract).
pub const KEY_ID_HEADER: &str = "x-keyward-key-id";

/// The upstream header holding the key's owner.
pub const OWNER_HEADER: &str = "x-keyward-owner";

/// The upstream header holding the key's roles, comma-separated.
pub const ROLES_HEADER: &str = "x-keyward-roles";

/// The `context_extensions` entry of an Envoy route, and the request header
/// of a forward-auth proxy, listing the permissions a route requires
/// (comma-separated).
pub const PERMISSIONS_EXTENSION: &str = "keyward_permissions";

/// How a gateway finds the key and the client in the requests it checks.
#[derive(Debug, Clone, Default)]
pub struct GatewaySettings {
    /// A header holding the client's key as it is (e.g. `x-api-key`),
    /// looked at before `authorization: Bearer`; `None`: only the latter.
    pub key_header: Option<HeaderName>,
    /// Peers of the HTTP listener whose `x-forwarded-for` is believed (the
    /// proxies in front of keyward); from any other peer the client address
    /// is the peer's own.
    pub trusted_proxies: Vec<Cidr>,
}

/// What a gateway asks about one proxied request. No `Debug`: it holds the
/// client's key.
#[derive(Clone, Copy)]
pub struct Checked<'a> {
    /// The client's key, if the request carried one. Never logged.
    pub key: Option<&'a str>,
    /// The route's required permissions, comma-separated (may be empty).
    pub permissions: &'a str,
    /// The client's address, for keys with a CIDR allow-list.
    pub client_ip: Option<IpAddr>,
}

/// What the proxy is told to do with the request.
#[derive(Debug)]
pub enum Verdict {
    /// Pass it on, with these facts for the upstream.
    Allow(Allowed),
    /// Answer the client with this refusal.
    Deny(Refusal),
}

/// The facts about an allowed key that the upstream receives, read from
/// the key's index entry when a front writes them (no copies made first).
#[derive(Debug, Clone)]
pub struct Allowed {
    key: Arc<IndexedKey>,
}

impl Allowed {
    /// The key's public id.
    #[must_use]
    pub fn key_id(&self) -> KeyId {
        self.key.id
    }

    /// The key's owner; may be empty.
    #[must_use]
    pub fn owner(&self) -> &str {
        &self.key.profile.owner
    }

    /// The key's roles.
    #[must_use]
    pub fn roles(&self) -> &[RoleName] {
        &self.key.profile.roles
    }

    /// The roles as one header value: comma-separated.
    #[must_use]
    pub fn roles_text(&self) -> String {
        let mut text = String::new();
        for (i, role) in self.roles().iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(role.as_str());
        }
        text
    }

    /// Whether [`Allowed::headers`] sets `name` (any case).
    #[must_use]
    pub fn sets(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(KEY_ID_HEADER)
            || (!self.owner().is_empty() && name.eq_ignore_ascii_case(OWNER_HEADER))
            || (!self.roles().is_empty() && name.eq_ignore_ascii_case(ROLES_HEADER))
    }

    /// The upstream headers: `(name, value)`, leaving out empty values.
    #[must_use]
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![(KEY_ID_HEADER, self.key_id().text())];
        if !self.owner().is_empty() {
            headers.push((OWNER_HEADER, self.owner().to_owned()));
        }
        if !self.roles().is_empty() {
            headers.push((ROLES_HEADER, self.roles_text()));
        }
        headers
    }
}

/// Why a proxied request is refused, as the client is told. Like Validate,
/// it never says why a key is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No key, or not a live key with this secret: 401.
    InvalidKey {
        /// The request carried no key at all.
        missing: bool,
    },
    /// A live key lacking a permission, or used from outside its
    /// allow-list: 403.
    Forbidden,
    /// A live key over its rate limit: 429 with `retry-after`.
    RateLimited {
        /// Whole seconds to wait, at least one.
        retry_after: u64,
    },
    /// This replica cannot vouch for keys now (its index is too stale, or
    /// the database is needed and down): 503.
    Unavailable,
}

impl Refusal {
    /// The HTTP status the client gets.
    #[must_use]
    pub const fn http_status(self) -> u16 {
        match self {
            Self::InvalidKey { .. } => 401,
            Self::Forbidden => 403,
            Self::RateLimited { .. } => 429,
            Self::Unavailable => 503,
        }
    }

    /// The gRPC code of the refusal, for ext_authz's `CheckResponse.status`
    /// (Envoy's logs and stats show it).
    #[must_use]
    pub const fn rpc_code(self) -> tonic::Code {
        match self {
            Self::InvalidKey { .. } => tonic::Code::Unauthenticated,
            Self::Forbidden => tonic::Code::PermissionDenied,
            Self::RateLimited { .. } => tonic::Code::ResourceExhausted,
            Self::Unavailable => tonic::Code::Unavailable,
        }
    }

    /// A short, fixed name, for the JSON body and logs.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::InvalidKey { missing: true } => "missing_key",
            Self::InvalidKey { missing: false } => "invalid_key",
            Self::Forbidden => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable => "unavailable",
        }
    }

    /// The headers the client gets besides `content-type`:
    /// `www-authenticate` (RFC 6750) for 401, `retry-after` for 429.
    #[must_use]
    pub fn headers(self) -> Vec<(&'static str, String)> {
        match self {
            Self::InvalidKey { missing: true } => {
                vec![("www-authenticate", r#"Bearer realm="keyward""#.to_owned())]
            }
            Self::InvalidKey { missing: false } => vec![(
                "www-authenticate",
                r#"Bearer realm="keyward", error="invalid_token""#.to_owned(),
            )],
            Self::RateLimited { retry_after } => vec![("retry-after", retry_after.to_string())],
            Self::Forbidden | Self::Unavailable => Vec::new(),
        }
    }

    /// The body the client gets: short JSON, never the key.
    #[must_use]
    pub fn body(self) -> String {
        let message = match self {
            Self::InvalidKey { missing: true } => {
                "an API key is required: send `authorization: Bearer <key>`".to_owned()
            }
            Self::InvalidKey { missing: false } => "the API key is not valid".to_owned(),
            Self::Forbidden => "the API key may not access this resource".to_owned(),
            Self::RateLimited { retry_after } => {
                format!("the API key is over its rate limit; retry in {retry_after}s")
            }
            Self::Unavailable => "keys cannot be checked right now; try again".to_owned(),
        };
        serde_json::json!({ "error": self.name(), "message": message }).to_string()
    }
}

/// The content type of every body a gateway writes.
pub const JSON: &str = "application/json";

/// The gateways' shared half: finds what a proxied request presents, asks
/// Validate, and turns the answer into a [`Verdict`], counting each check.
pub struct Gateway {
    keys: Arc<KeyService>,
    metrics: Arc<Metrics>,
    settings: GatewaySettings,
    /// Each route's permissions, parsed; by their text as the proxy sends it.
    routes: RwLock<HashMap<Box<str>, Arc<Route>, HotPathHasher>>,
}

impl Gateway {
    /// A gateway answering through `keys` (the same service as Validate's).
    #[must_use]
    pub fn new(keys: Arc<KeyService>, metrics: Arc<Metrics>, settings: GatewaySettings) -> Self {
        Self {
            keys,
            metrics,
            settings,
            routes: RwLock::default(),
        }
    }

    /// The data plane it answers through, for `POST /v1/keys:validate`.
    #[must_use]
    pub fn keys(&self) -> &KeyService {
        &self.keys
    }

    /// The client's key among a request's headers (`header` looks one up by
    /// its lower-case name): the configured key header first, then
    /// `authorization: Bearer`.
    pub fn presented_key<'h>(&self, header: impl Fn(&str) -> Option<&'h str>) -> Option<&'h str> {
        if let Some(name) = &self.settings.key_header
            && let Some(key) = header(name.as_str()).map(str::trim)
            && !key.is_empty()
        {
            return Some(key);
        }
        header("authorization").and_then(bearer)
    }

    /// The client's address as a forward-auth request from `peer` gives it:
    /// from `x-forwarded-for` (`forwarded`, its values in order) when the
    /// peer is a trusted proxy, else the peer's own. The first address from
    /// the right that is not a trusted proxy is the client, as each trusted
    /// proxy appends the address it saw; an entry that is not an address
    /// makes the client unknown (`None`), so a key with an allow-list is
    /// refused rather than judged by a guess.
    pub fn client_ip<'v>(
        &self,
        peer: SocketAddr,
        forwarded: impl DoubleEndedIterator<Item = &'v str>,
    ) -> Option<IpAddr> {
        client_ip(&self.settings.trusted_proxies, peer, forwarded)
    }

    /// Decides on a proxied request. `credential` is the gateway's own key
    /// (or why it has none), presented from `origin`.
    ///
    /// # Errors
    /// The gateway's own refusal, as for a Validate caller (its key missing,
    /// invalid, lacking `keyward:validate`, over its rate limit), and
    /// `INVALID_ARGUMENT` when the route's permissions are malformed: the
    /// proxy's configuration is at fault, not the client.
    pub async fn check(
        &self,
        front: Front,
        credential: Result<&str, ServiceError>,
        origin: Origin<'_>,
        checked: Checked<'_>,
    ) -> Result<Verdict, ServiceError> {
        let started = Instant::now();
        let caller = match self.keys.authenticate(credential, origin, started) {
            Ok(caller) => caller,
            // The replica cannot vouch for any key: the client hears 503
            // (not the proxy's error status), so it retries.
            Err(ServiceError::Unavailable(_)) => {
                self.metrics.gateway_checked(
                    front,
                    GatewayChecked::Decided(Validated::Stale),
                    &self
                        .metrics
                        .route_series(&split_permissions(checked.permissions).join(",")),
                    started,
                );
                return Ok(Verdict::Deny(Refusal::Unavailable));
            }
            // The gateway's own credential: counted as a caller refusal.
            Err(error) => return Err(error),
        };
        let route = match self.route(checked.permissions) {
            Ok(route) => route,
            Err(error) => {
                self.metrics.validated(Validated::InvalidArgument, started);
                self.metrics.gateway_checked(
                    front,
                    GatewayChecked::Decided(Validated::InvalidArgument),
                    &self.metrics.route_series("invalid"),
                    started,
                );
                return Err(error);
            }
        };
        let checks = Checks {
            required: Required::parsed(&route.permissions),
            client_ip: checked.client_ip,
            skip_rate_limit: false,
        };
        let decided = self
            .keys
            .decide(started, caller, checked.key.unwrap_or_default(), checks)
            .await;
        let (how, verdict) = match decided {
            Ok(decision) => {
                let retry_after = decision.retry_after();
                let verdict = match decision.outcome {
                    Outcome::Valid(grant) => Verdict::Allow(Allowed { key: grant.key }),
                    Outcome::RateLimited { .. } => Verdict::Deny(Refusal::RateLimited {
                        retry_after: retry_after.unwrap_or(1),
                    }),
                    Outcome::Forbidden { .. } => Verdict::Deny(Refusal::Forbidden),
                    Outcome::Invalid(_) => Verdict::Deny(Refusal::InvalidKey {
                        missing: checked.key.is_none(),
                    }),
                };
                let how = match verdict {
                    Verdict::Deny(Refusal::InvalidKey { missing: true }) => {
                        GatewayChecked::MissingKey
                    }
                    _ => GatewayChecked::Decided(decision.how),
                };
                (how, verdict)
            }
            // Spending a capped key's use failed: this replica cannot vouch
            // for the key now, and the client hears 503 (not the proxy's
            // error status), so it retries.
            Err(_) => (
                GatewayChecked::Decided(Validated::DatabaseError),
                Verdict::Deny(Refusal::Unavailable),
            ),
        };
        self.metrics
            .gateway_checked(front, how, &route.series, started);
        Ok(verdict)
    }

    /// The route whose `keyward_permissions` are `text`, parsed once and
    /// kept (routes are few and fixed by the proxy's configuration; past
    /// [`MAX_ROUTES`] different ones, the others are parsed on each check).
    fn route(&self, text: &str) -> Result<Arc<Route>, ServiceError> {
        if let Some(route) = self
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(text)
        {
            return Ok(route.clone());
        }
        let named = split_permissions(text);
        let route = Arc::new(Route {
            permissions: required_permissions(&named)?,
            series: self.metrics.route_series(&named.join(",")),
        });
        let mut routes = self
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if routes.len() < MAX_ROUTES {
            routes.insert(text.into(), route.clone());
        }
        Ok(route)
    }
}

/// Most distinct `keyward_permissions` values whose parsed form is kept.
const MAX_ROUTES: usize = 1024;

/// What a route requires, parsed, and its name in the metrics.
#[derive(Debug)]
struct Route {
    permissions: Vec<Permission>,
    /// Its counts, named after the permissions (comma-separated, without
    /// blanks).
    series: RouteSeries,
}

/// See [`Gateway::client_ip`].
fn client_ip<'v>(
    trusted_proxies: &[Cidr],
    peer: SocketAddr,
    forwarded: impl DoubleEndedIterator<Item = &'v str>,
) -> Option<IpAddr> {
    let trusted = |ip: IpAddr| trusted_proxies.iter().any(|range| range.contains(ip));
    let mut client = peer.ip();
    if !trusted(client) {
        return Some(client);
    }
    for hop in forwarded.rev().flat_map(|value| value.rsplit(',')) {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            return None;
        };
        client = ip;
        if !trusted(ip) {
            break;
        }
    }
    Some(client)
}

/// The route's permissions: comma-separated, blanks ignored.
fn split_permissions(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(trusted: &[Cidr], peer: &str, xff: &[&str]) -> Option<String> {
        let peer: SocketAddr = format!("{peer}:1234").parse().unwrap();
        client_ip(trusted, peer, xff.iter().copied()).map(|ip| ip.to_string())
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = ["127.0.0.0/8", "10.0.0.0/8"]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
        let cases: &[(&str, &[&str], Option<&str>)] = &[
            // An untrusted peer's header is ignored.
            ("192.0.2.7", &["203.0.113.9"], Some("192.0.2.7")),
            // A trusted peer: the rightmost untrusted hop.
            ("127.0.0.1", &["203.0.113.9"], Some("203.0.113.9")),
            (
                "127.0.0.1",
                &["198.51.100.1, 203.0.113.9, 10.1.1.1"],
                Some("203.0.113.9"),
            ),
            (
                "127.0.0.1",
                &["198.51.100.1", "203.0.113.9"],
                Some("203.0.113.9"),
            ),
            // Only trusted hops: the leftmost.
            ("127.0.0.1", &["10.0.0.5, 10.0.0.6"], Some("10.0.0.5")),
            // No header: the peer.
            ("127.0.0.1", &[], Some("127.0.0.1")),
            // Garbage: unknown, so allow-lists refuse.
            ("127.0.0.1", &["unknown"], None),
        ];
        for (peer, xff, expected) in cases {
            assert_eq!(
                client(&trusted, peer, xff).as_deref(),
                *expected,
                "{peer} {xff:?}"
            );
        }
    }

    #[test]
    fn refusals_have_their_status_headers_and_a_body_without_secrets() {
        let table = [
            (
                Refusal::InvalidKey { missing: true },
                401,
                "www-authenticate",
            ),
            (
                Refusal::InvalidKey { missing: false },
                401,
                "www-authenticate",
            ),
            (Refusal::Forbidden, 403, ""),
            (Refusal::RateLimited { retry_after: 3 }, 429, "retry-after"),
            (Refusal::Unavailable, 503, ""),
        ];
        for (refusal, status, header) in table {
            assert_eq!(refusal.http_status(), status);
            let headers = refusal.headers();
            assert_eq!(
                headers.first().map_or("", |(name, _)| *name),
                header,
                "{refusal:?}"
            );
            let body: serde_json::Value = serde_json::from_str(&refusal.body()).unwrap();
            assert_eq!(body["error"], refusal.name());
        }
        assert_eq!(
            Refusal::RateLimited { retry_after: 3 }.headers(),
            [("retry-after", "3".to_owned())]
        );
    }

    #[test]
    fn permissions_are_split_on_commas() {
        assert_eq!(
            split_permissions(" deploy:write, deploy:read ,,"),
            ["deploy:write", "deploy:read"]
        );
        assert!(split_permissions("").is_empty());
    }
}
