//! Prometheus metrics: what keyward counts and measures, and the text it
//! serves on `GET /metrics` ([`http`]).
//!
//! One [`Metrics`] per server, created at start and shared by what records,
//! never a global registry: tests run several servers in one process, and
//! each must count only its own. Every name starts `keyward_` (the
//! registry's prefix), and every label value comes from a fixed set written
//! in this module, so no label can hold a key, a key id, an owner, a label,
//! a role name or anything else unbounded. The README's "Metrics" section
//! lists each metric.
//!
//! Validate is the hot path: its counters are resolved at start, one per
//! (result, reason) pair, so counting a call is one atomic add on a counter
//! picked by index, plus one histogram observation; nothing is allocated.

pub mod grpc;
pub mod http;

use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text},
    metrics::{counter::Counter, family::Family, gauge::ConstGauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    freshness::Freshness,
    index::Index,
    validate::{Denied, InvalidReason, Outcome},
};

/// The `Content-Type` of what [`Metrics::encode`] writes: Prometheus' text
/// exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Validate's latency buckets, in seconds. A Validate is handled in a few
/// microseconds (two key checks: the caller's and the presented one); only a
/// key with a usage cap waits for the database, for tens of microseconds to
/// milliseconds.
const VALIDATE_BUCKETS: [f64; 12] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1, 1.0,
];

/// Buckets for applying a batch from the change feed: a database read and
/// a wait for the write turn, from about a millisecond to the staleness limit.
const FEED_APPLY_BUCKETS: [f64; 12] = [
    5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// Buckets for a full resync: loading every live key and role.
const RESYNC_BUCKETS: [f64; 11] = [1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0];

/// How one Validate call ended: one series of `keyward_validate_total`.
/// Counted for every call that got past the caller's own authentication
/// (refusals of the caller's key are [`CallerRefused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validated {
    /// `valid: true`.
    Valid,
    /// Invalid: not shaped like a key, or a bad checksum.
    Malformed,
    /// Invalid: no live key has this id.
    UnknownKey,
    /// Invalid: the id exists, the secret does not match.
    WrongSecret,
    /// Invalid: revoked, not yet dropped from the index.
    Revoked,
    /// Invalid: past its expiry, not yet swept from the index.
    Expired,
    /// Invalid: a capped key with no uses left.
    Exhausted,
    /// Invalid: a capped key used as a credential (caller authentication
    /// only; listed so the mapping from [`InvalidReason`] is total).
    CappedCredential,
    /// `RATE_LIMITED`.
    RateLimited,
    /// `FORBIDDEN`: a required permission is not granted.
    MissingPermission,
    /// `FORBIDDEN`: the client address is outside the key's allow-list.
    ClientIpNotAllowed,
    /// `UNAVAILABLE`: this replica's index is too stale to answer from.
    Stale,
    /// `UNAVAILABLE` or `INTERNAL`: spending a capped key's use failed.
    DatabaseError,
    /// `INVALID_ARGUMENT`: too many or malformed permissions, a bad
    /// `client_ip`.
    InvalidArgument,
}

impl Validated {
    /// Every value, in declaration order (so `ALL[v as usize] == v`).
    const ALL: [Self; 14] = [
        Self::Valid,
        Self::Malformed,
        Self::UnknownKey,
        Self::WrongSecret,
        Self::Revoked,
        Self::Expired,
        Self::Exhausted,
        Self::CappedCredential,
        Self::RateLimited,
        Self::MissingPermission,
        Self::ClientIpNotAllowed,
        Self::Stale,
        Self::DatabaseError,
        Self::InvalidArgument,
    ];

    /// The `result` and `reason` labels.
    const fn labels(self) -> ResultReason {
        let (result, reason) = match self {
            Self::Valid => ("valid", "none"),
            Self::Malformed => ("invalid", "malformed"),
            Self::UnknownKey => ("invalid", "unknown_key"),
            Self::WrongSecret => ("invalid", "wrong_secret"),
            Self::Revoked => ("invalid", "revoked"),
            Self::Expired => ("invalid", "expired"),
            Self::Exhausted => ("invalid", "exhausted"),
            Self::CappedCredential => ("invalid", "capped_credential"),
            Self::RateLimited => ("rate_limited", "rate_limited"),
            Self::MissingPermission => ("forbidden", "missing_permission"),
            Self::ClientIpNotAllowed => ("forbidden", "client_ip"),
            Self::Stale => ("unavailable", "stale"),
            Self::DatabaseError => ("unavailable", "database"),
            Self::InvalidArgument => ("invalid_argument", "invalid_argument"),
        };
        ResultReason { result, reason }
    }

    /// The series of a decided outcome.
    #[must_use]
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Valid(_) => Self::Valid,
            Outcome::RateLimited { .. } => Self::RateLimited,
            Outcome::Forbidden {
                denied: Denied::MissingPermission(_),
                ..
            } => Self::MissingPermission,
            Outcome::Forbidden {
                denied: Denied::ClientIpNotAllowed(_),
                ..
            } => Self::ClientIpNotAllowed,
            Outcome::Invalid(reason) => match reason {
                InvalidReason::Malformed(_) => Self::Malformed,
                InvalidReason::UnknownKey(_) => Self::UnknownKey,
                InvalidReason::WrongSecret(_) => Self::WrongSecret,
                InvalidReason::Revoked(_) => Self::Revoked,
                InvalidReason::Expired(_) => Self::Expired,
                InvalidReason::UsesExhausted(_) => Self::Exhausted,
                InvalidReason::CappedCredential(_) => Self::CappedCredential,
            },
        }
    }
}

/// Why an RPC's own credential (its `authorization` key) was refused: one
/// series of `keyward_caller_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerRefused {
    /// No `authorization: Bearer` metadata (`UNAUTHENTICATED`).
    MissingCredential,
    /// Not shaped like a key (`UNAUTHENTICATED`).
    Malformed,
    /// No live key has this id (`UNAUTHENTICATED`).
    UnknownKey,
    /// Wrong secret for the id (`UNAUTHENTICATED`).
    WrongSecret,
    /// Revoked (`UNAUTHENTICATED`).
    Revoked,
    /// Expired (`UNAUTHENTICATED`).
    Expired,
    /// A capped key with no uses left (`UNAUTHENTICATED`).
    Exhausted,
    /// A key with a usage cap cannot be a credential (`UNAUTHENTICATED`).
    CappedCredential,
    /// The caller's key is over its rate limit (`RESOURCE_EXHAUSTED`).
    RateLimited,
    /// The connection's address is outside the key's allow-list
    /// (`PERMISSION_DENIED`).
    ClientIpNotAllowed,
    /// The key lacks the RPC's permission (`PERMISSION_DENIED`).
    MissingPermission,
}

impl CallerRefused {
    /// Every value, in declaration order (so `ALL[v as usize] == v`).
    const ALL: [Self; 11] = [
        Self::MissingCredential,
        Self::Malformed,
        Self::UnknownKey,
        Self::WrongSecret,
        Self::Revoked,
        Self::Expired,
        Self::Exhausted,
        Self::CappedCredential,
        Self::RateLimited,
        Self::ClientIpNotAllowed,
        Self::MissingPermission,
    ];

    const fn label(self) -> Reason {
        let reason = match self {
            Self::MissingCredential => "missing_credential",
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::WrongSecret => "wrong_secret",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Exhausted => "exhausted",
            Self::CappedCredential => "capped_credential",
            Self::RateLimited => "rate_limited",
            Self::ClientIpNotAllowed => "client_ip",
            Self::MissingPermission => "missing_permission",
        };
        Reason { reason }
    }

    /// The series of a credential found invalid.
    #[must_use]
    pub fn invalid(reason: InvalidReason) -> Self {
        match reason {
            InvalidReason::Malformed(_) => Self::Malformed,
            InvalidReason::UnknownKey(_) => Self::UnknownKey,
            InvalidReason::WrongSecret(_) => Self::WrongSecret,
            InvalidReason::Revoked(_) => Self::Revoked,
            InvalidReason::Expired(_) => Self::Expired,
            InvalidReason::UsesExhausted(_) => Self::Exhausted,
            InvalidReason::CappedCredential(_) => Self::CappedCredential,
        }
    }
}

/// Where a database failure surfaced: one series of
/// `keyward_database_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbOperation {
    /// An admin RPC (its read or its write transaction).
    Admin,
    /// Validate, spending a use of a capped key.
    Validate,
    /// A replica following the change feed: connecting, pinging, reloading
    /// what a notification names, resyncing.
    ChangeFeed,
    /// Writing last-used times and use counts.
    UsageFlush,
}

impl DbOperation {
    /// Every value, in declaration order (so `ALL[v as usize] == v`).
    const ALL: [Self; 4] = [
        Self::Admin,
        Self::Validate,
        Self::ChangeFeed,
        Self::UsageFlush,
    ];

    const fn label(self) -> Operation {
        let operation = match self {
            Self::Admin => "admin",
            Self::Validate => "validate",
            Self::ChangeFeed => "change_feed",
            Self::UsageFlush => "usage_flush",
        };
        Operation { operation }
    }
}

/// How a replica's attempt to catch up from the change log after a
/// reconnect ended: one series of `keyward_change_feed_catch_ups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// It read and applied what it missed.
    Ok,
    /// It missed more than the log is read for; it resyncs in full.
    TooMuch,
    /// The database failed; it resyncs in full (or retries).
    Error,
}

impl CatchUp {
    /// The `result` label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::TooMuch => "too_much",
            Self::Error => "error",
        }
    }
}

/// What started a full resync of a replica's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncTrigger {
    /// The change feed (re)connected: notifications may have been missed.
    Connect,
    /// The periodic resync (`--resync-interval`).
    Interval,
}

impl ResyncTrigger {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Interval => "interval",
        }
    }
}

/// Which gateway front answered a check: one value of the `front` label of
/// `keyward_gateway_checks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// Envoy's `envoy.service.auth.v3.Authorization/Check` on the gRPC port.
    ExtAuthz,
    /// `GET /v1/forward-auth` on the HTTP listener.
    ForwardAuth,
}

impl Front {
    const ALL: [Self; 2] = [Self::ExtAuthz, Self::ForwardAuth];

    const fn as_str(self) -> &'static str {
        match self {
            Self::ExtAuthz => "ext_authz",
            Self::ForwardAuth => "forward_auth",
        }
    }
}

/// How a gateway check ended: as a Validate would have, or with no key
/// in the checked request at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayChecked {
    /// The key was decided on, as by Validate.
    Decided(Validated),
    /// The checked request carried no key (`invalid`, `missing_key`).
    MissingKey,
}

impl GatewayChecked {
    /// The series' position: [`Validated`]'s, then the missing key.
    const COUNT: usize = Validated::ALL.len() + 1;

    const fn index(self) -> usize {
        match self {
            Self::Decided(how) => how as usize,
            Self::MissingKey => Validated::ALL.len(),
        }
    }

    const fn labels(self) -> ResultReason {
        match self {
            Self::Decided(how) => how.labels(),
            Self::MissingKey => ResultReason {
                result: "invalid",
                reason: "missing_key",
            },
        }
    }
}

/// Most distinct route permission sets counted under their own name in
/// `keyward_gateway_route_checks_total`; later ones are counted as `other`.
/// The sets come from the proxy's configuration (one per route), but a
/// forward-auth proxy that does not set `x-keyward-permissions` on every
/// location would let clients choose them: the cap keeps their series
/// bounded.
pub const MAX_ROUTE_SERIES: usize = 64;

/// One route's series of `keyward_gateway_route_checks_total`, from
/// [`Metrics::route_series`]: each made on its first count, then counted
/// without a lookup.
#[derive(Debug)]
pub struct RouteSeries {
    name: Box<str>,
    series: [std::sync::OnceLock<Counter>; GatewayChecked::COUNT],
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GatewayCall {
    front: &'static str,
    result: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteCall {
    permissions: String,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultReason {
    result: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Operation {
    operation: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AdminCall {
    rpc: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Resync {
    trigger: &'static str,
    result: &'static str,
}

/// Everything one server counts, and the registry that exposes it. Shared
/// (in an `Arc`) by the services, the lifecycle and the change feed.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Indexed by [`Validated`].
    validate: [Counter; Validated::ALL.len()],
    validate_seconds: Histogram,
    /// Indexed by [`CallerRefused`].
    caller_refusals: [Counter; CallerRefused::ALL.len()],
    admin_requests: Family<AdminCall, Counter>,
    /// Indexed by [`DbOperation`].
    database_errors: [Counter; DbOperation::ALL.len()],
    feed_apply_seconds: Histogram,
    resyncs: Family<Resync, Counter>,
    resync_seconds: Histogram,
    resync_turn_seconds: Histogram,
    catch_ups: Family<ResultLabel, Counter>,
    exchanges: Family<ResultReason, Counter>,
    /// Indexed by [`Front`], then [`GatewayChecked::index`].
    gateway: [[Counter; GatewayChecked::COUNT]; Front::ALL.len()],
    gateway_seconds: Histogram,
    gateway_routes: Family<RouteCall, Counter>,
    /// The permission sets with series of their own (at most
    /// [`MAX_ROUTE_SERIES`]).
    route_names: std::sync::RwLock<std::collections::HashSet<String>>,
}

/// How one OIDC exchange ended: one series of `keyward_exchanges_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchanged {
    /// A key was minted.
    Ok,
    /// Refused (the caller saw `PERMISSION_DENIED`), and why.
    Refused(crate::oidc::Refusal),
    /// The database failed.
    Failed,
}

impl Exchanged {
    /// The `result` and `reason` labels.
    const fn labels(self) -> ResultReason {
        let (result, reason) = match self {
            Self::Ok => ("ok", "none"),
            Self::Refused(refusal) => ("refused", refusal.label()),
            Self::Failed => ("error", "database"),
        };
        ResultReason { result, reason }
    }
}

impl Metrics {
    /// The metrics of a server whose index is `index`; `freshness` is set on
    /// a PostgreSQL replica, whose index follows the change feed. The sizes
    /// of the index and its staleness are read when scraped, so they cost
    /// nothing in between and are never out of date.
    #[must_use]
    pub fn new(index: Arc<Index>, freshness: Option<Arc<Freshness>>) -> Self {
        let mut registry = Registry::with_prefix("keyward");

        let validate_family = Family::<ResultReason, Counter>::default();
        let validate = Validated::ALL.map(|v| validate_family.get_or_create_owned(&v.labels()));
        registry.register(
            "validate",
            "Validate calls past the caller's authentication, by result (valid, invalid, \
             rate_limited, forbidden, unavailable, invalid_argument) and the reason behind it",
            validate_family,
        );
        let validate_seconds = Histogram::new(VALIDATE_BUCKETS);
        registry.register(
            "validate_duration_seconds",
            "Time the server took to answer a Validate counted in keyward_validate_total, from \
             the handler's start (the caller's authentication included) to its answer; the \
             transport's own time is not included",
            validate_seconds.clone(),
        );

        let refusal_family = Family::<Reason, Counter>::default();
        let caller_refusals =
            CallerRefused::ALL.map(|v| refusal_family.get_or_create_owned(&v.label()));
        registry.register(
            "caller_refusals",
            "RPCs refused because of the caller's own credential (the authorization key), by \
             reason",
            refusal_family,
        );

        let admin_requests = Family::<AdminCall, Counter>::default();
        registry.register(
            "admin_requests",
            "Admin RPCs answered, by method and gRPC status code (CANCELLED for requests \
             dropped before their answer: a client gone, or --request-timeout)",
            admin_requests.clone(),
        );

        let database_family = Family::<Operation, Counter>::default();
        let database_errors =
            DbOperation::ALL.map(|v| database_family.get_or_create_owned(&v.label()));
        registry.register(
            "database_errors",
            "Database failures (unreachable, timed out, refused, or a row keyward could not \
             have written), by the operation that met them",
            database_family,
        );

        let feed_apply_seconds = Histogram::new(FEED_APPLY_BUCKETS);
        registry.register(
            "change_feed_apply_duration_seconds",
            "PostgreSQL replicas: time from handling a batch of change notifications to its \
             changes being in the index (the database read of what they name and the wait for \
             the write turn); the time from commit to delivery is not included",
            feed_apply_seconds.clone(),
        );
        let resyncs = Family::<Resync, Counter>::default();
        for trigger in [ResyncTrigger::Connect, ResyncTrigger::Interval] {
            for result in ["ok", "error"] {
                resyncs.get_or_create_owned(&Resync {
                    trigger: trigger.as_str(),
                    result,
                });
            }
        }
        registry.register(
            "resyncs",
            "PostgreSQL replicas: full reloads of the index, by what started them (connect, \
             interval) and result (ok, error)",
            resyncs.clone(),
        );
        let resync_seconds = Histogram::new(RESYNC_BUCKETS);
        registry.register(
            "resync_duration_seconds",
            "PostgreSQL replicas: time a full reload of the index took, failed ones included",
            resync_seconds.clone(),
        );
        let catch_ups = Family::<ResultLabel, Counter>::default();
        for result in [CatchUp::Ok, CatchUp::TooMuch, CatchUp::Error] {
            catch_ups.get_or_create_owned(&ResultLabel {
                result: result.as_str(),
            });
        }
        registry.register(
            "change_feed_catch_ups",
            "PostgreSQL replicas: reconnects that read what the replica missed from the change \
             log instead of reloading everything, by result (ok; too_much or error, after which \
             it resyncs in full)",
            catch_ups.clone(),
        );
        let resync_turn_seconds = Histogram::new(FEED_APPLY_BUCKETS);
        registry.register(
            "resync_write_turn_duration_seconds",
            "PostgreSQL replicas: time a resync held the write turn to put its snapshot in place \
             (local writes wait for it meanwhile; the load itself runs beside them)",
            resync_turn_seconds.clone(),
        );

        let exchanges = Family::<ResultReason, Counter>::default();
        for how in [Exchanged::Ok, Exchanged::Failed]
            .into_iter()
            .chain(crate::oidc::Refusal::ALL.map(Exchanged::Refused))
        {
            exchanges.get_or_create_owned(&how.labels());
        }
        registry.register(
            "exchanges",
            "OIDC identity token exchanges (ExchangeService/Exchange), by result (ok, refused, \
             error) and the reason a refusal had (callers are told only PERMISSION_DENIED)",
            exchanges.clone(),
        );
        let gateway_family = Family::<GatewayCall, Counter>::default();
        let gateway = Front::ALL.map(|front| {
            std::array::from_fn(|i| {
                let how = if i < Validated::ALL.len() {
                    GatewayChecked::Decided(Validated::ALL[i])
                } else {
                    GatewayChecked::MissingKey
                };
                let ResultReason { result, reason } = how.labels();
                gateway_family.get_or_create_owned(&GatewayCall {
                    front: front.as_str(),
                    result,
                    reason,
                })
            })
        });
        registry.register(
            "gateway_checks",
            "Gateway checks (Envoy ext_authz, HTTP forward-auth) past the gateway's own \
             authentication, by front, result and reason (as keyward_validate_total, plus \
             missing_key)",
            gateway_family,
        );
        let gateway_seconds = Histogram::new(VALIDATE_BUCKETS);
        registry.register(
            "gateway_check_duration_seconds",
            "Time the server took to answer a gateway check counted in \
             keyward_gateway_checks_total",
            gateway_seconds.clone(),
        );
        let gateway_routes = Family::<RouteCall, Counter>::default();
        registry.register(
            "gateway_route_checks",
            "Gateway checks by the permissions the route required (as the proxy sent them; \
             `none` for none, `other` past the first 64 distinct sets) and result",
            gateway_routes.clone(),
        );

        registry.register_collector(Box::new(IndexGauges { index, freshness }));

        Self {
            registry,
            validate,
            validate_seconds,
            caller_refusals,
            admin_requests,
            database_errors,
            feed_apply_seconds,
            resyncs,
            resync_seconds,
            resync_turn_seconds,
            catch_ups,
            exchanges,
            gateway,
            gateway_seconds,
            gateway_routes,
            route_names: std::sync::RwLock::default(),
        }
    }

    /// Counts a gateway check by `front` that ended as `how`, begun at
    /// `started`, for the route whose series are `route`.
    pub fn gateway_checked(
        &self,
        front: Front,
        how: GatewayChecked,
        route: &RouteSeries,
        started: Instant,
    ) {
        self.gateway[front as usize][how.index()].inc();
        self.gateway_seconds
            .observe(started.elapsed().as_secs_f64());
        route.series[how.index()]
            .get_or_init(|| {
                self.gateway_routes
                    .get_or_create(&RouteCall {
                        permissions: route.name.to_string(),
                        result: how.labels().result,
                    })
                    .clone()
            })
            .inc();
    }

    /// The series of `keyward_gateway_route_checks_total` for the route
    /// requiring `permissions` (comma-separated): named after them while
    /// fewer than [`MAX_ROUTE_SERIES`] routes are, else `other`. A gateway
    /// keeps them with the route, so a check counts without looking them up.
    pub fn route_series(&self, permissions: &str) -> RouteSeries {
        let permissions = match permissions.trim() {
            "" => "none",
            text => text,
        };
        let named = {
            let names = self
                .route_names
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            names.contains(permissions)
        } || {
            let mut names = self
                .route_names
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            names.len() < MAX_ROUTE_SERIES && names.insert(permissions.to_owned())
                || names.contains(permissions)
        };
        RouteSeries {
            name: if named { permissions } else { "other" }.into(),
            series: Default::default(),
        }
    }

    /// Counts an OIDC exchange that ended as `how`.
    pub fn exchanged(&self, how: Exchanged) {
        self.exchanges.get_or_create(&how.labels()).inc();
    }

    /// Counts a Validate that ended as `how`, started at `started`.
    pub fn validated(&self, how: Validated, started: Instant) {
        self.validate[how as usize].inc();
        self.validate_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts an RPC refused because of its caller's credential.
    pub fn caller_refused(&self, why: CallerRefused) {
        self.caller_refusals[why as usize].inc();
    }

    /// Counts an admin RPC: `rpc` is one of the fixed method names (see
    /// [`grpc`]), never text from the request.
    pub fn admin_request(&self, rpc: &'static str, code: tonic::Code) {
        self.admin_requests
            .get_or_create(&AdminCall {
                rpc,
                code: code_label(code),
            })
            .inc();
    }

    /// Counts a database failure met by `operation`.
    pub fn database_error(&self, operation: DbOperation) {
        self.database_errors[operation as usize].inc();
    }

    /// Records how long applying a batch from the change feed took.
    pub fn feed_applied(&self, took: Duration) {
        self.feed_apply_seconds.observe(took.as_secs_f64());
    }

    /// Counts a full resync and records how long it took.
    pub fn resynced(&self, trigger: ResyncTrigger, ok: bool, took: Duration) {
        self.resyncs
            .get_or_create(&Resync {
                trigger: trigger.as_str(),
                result: if ok { "ok" } else { "error" },
            })
            .inc();
        self.resync_seconds.observe(took.as_secs_f64());
    }

    /// Counts a reconnect's catch-up from the change log.
    pub fn caught_up(&self, result: CatchUp) {
        self.catch_ups
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
    }

    /// Records how long a resync held the write turn.
    pub fn resync_turn_held(&self, took: Duration) {
        self.resync_turn_seconds.observe(took.as_secs_f64());
    }

    /// Every metric, in the Prometheus text format ([`CONTENT_TYPE`]).
    ///
    /// # Errors
    /// Never in practice: writing to a `String` cannot fail.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The gRPC status code as the gRPC specification spells it.
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Gauges read at scrape time: the index's size and, on a replica, how long
/// since it was last confirmed current. Reading them costs a read lock and
/// a clock read per scrape, and nothing on the paths that change them.
#[derive(Debug)]
struct IndexGauges {
    index: Arc<Index>,
    freshness: Option<Arc<Freshness>>,
}

impl Collector for IndexGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (keys, roles) = self.index.sizes();
        gauge(
            &mut encoder,
            "index_keys",
            "Keys in the in-memory index: those that can still validate",
            &ConstGauge::new(keys),
        )?;
        gauge(
            &mut encoder,
            "index_roles",
            "Roles in the in-memory index, built-in ones included",
            &ConstGauge::new(roles),
        )?;
        if let Some(freshness) = &self.freshness {
            gauge(
                &mut encoder,
                "index_staleness_seconds",
                "PostgreSQL replicas: seconds since the index was last confirmed current with \
                 the database; Validate fails closed once it passes \
                 keyward_index_max_staleness_seconds",
                &ConstGauge::new(freshness.age().as_secs_f64()),
            )?;
            gauge(
                &mut encoder,
                "index_max_staleness_seconds",
                "PostgreSQL replicas: --max-staleness, the most keyward_index_staleness_seconds \
                 may reach before Validate fails closed",
                &ConstGauge::new(freshness.max_staleness().as_secs_f64()),
            )?;
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: &impl EncodeMetric,
) -> Result<(), fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, value.metric_type())?;
    value.encode(metric)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::ManualClock,
        index::tests::{record, role},
        key::{MintedKey, Prefix},
        model::{Change, IndexedKey},
        validate::{Checks, Required, Validator},
    };

    #[test]
    fn label_tables_are_indexed_by_their_enums() {
        for (i, v) in Validated::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i, "{v:?}");
        }
        for (i, v) in CallerRefused::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i, "{v:?}");
        }
        for (i, v) in DbOperation::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i, "{v:?}");
        }
        // Each series is distinct: no two outcomes share a label pair.
        let pairs: std::collections::HashSet<_> =
            Validated::ALL.iter().map(|v| v.labels()).collect();
        assert_eq!(pairs.len(), Validated::ALL.len());
    }

    fn sample<'a>(text: &'a str, series: &str) -> &'a str {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    }

    #[test]
    fn outcomes_of_the_real_pipeline_land_in_their_series() {
        let index = Arc::new(Index::default());
        index.apply([Change::RoleUpserted(role("deployer", &["deploy:*"]))]);
        let clock = ManualClock::starting_now();
        let minted = MintedKey::generate(&Prefix::default()).unwrap();
        index.apply([Change::KeyUpserted(Arc::new(IndexedKey::new(
            &record(&minted, &["deployer"]),
            minted.digest,
        )))]);
        let validator = Validator::new(index.clone(), Arc::new(clock));
        let metrics = Metrics::new(index, None);
        let key = minted.plaintext.expose();
        let needs: Vec<_> = ["build:write".parse().unwrap()].into();
        let started = Instant::now();
        for (presented, required) in [
            (key, &[][..]),
            (key, &[][..]),
            ("kw_nope", &[]),
            (key, &needs[..]),
        ] {
            let checks = Checks {
                required: Required::parsed(required),
                ..Checks::default()
            };
            metrics.validated(Validated::of(&validator.check(presented, checks)), started);
        }
        metrics.caller_refused(CallerRefused::MissingCredential);
        metrics.database_error(DbOperation::ChangeFeed);
        metrics.admin_request("MintKey", tonic::Code::PermissionDenied);

        let text = metrics.encode().unwrap();
        assert_eq!(
            sample(
                &text,
                r#"keyward_validate_total{result="valid",reason="none"}"#
            ),
            "2"
        );
        assert_eq!(
            sample(
                &text,
                r#"keyward_validate_total{result="invalid",reason="malformed"}"#
            ),
            "1"
        );
        assert_eq!(
            sample(
                &text,
                r#"keyward_validate_total{result="forbidden",reason="missing_permission"}"#
            ),
            "1"
        );
        // Series exist at zero from the start, so rate() and alerts see them.
        assert_eq!(
            sample(
                &text,
                r#"keyward_validate_total{result="invalid",reason="revoked"}"#
            ),
            "0"
        );
        assert_eq!(
            sample(&text, "keyward_validate_duration_seconds_count"),
            "4"
        );
        assert_eq!(
            sample(
                &text,
                r#"keyward_caller_refusals_total{reason="missing_credential"}"#
            ),
            "1"
        );
        assert_eq!(
            sample(
                &text,
                r#"keyward_database_errors_total{operation="change_feed"}"#
            ),
            "1"
        );
        assert_eq!(
            sample(
                &text,
                r#"keyward_admin_requests_total{rpc="MintKey",code="PERMISSION_DENIED"}"#
            ),
            "1"
        );
        assert_eq!(sample(&text, "keyward_index_keys"), "1");
        assert_eq!(sample(&text, "keyward_index_roles"), "1");
        // No replica: no staleness gauge.
        assert!(!text.contains("staleness"), "{text}");
        assert!(!text.contains(&minted.id.to_string()), "{text}");
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            assert!(line.starts_with("keyward_"), "{line}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn staleness_is_read_when_scraped() {
        let index = Arc::new(Index::default());
        let freshness = Arc::new(Freshness::new(
            Duration::from_mins(1),
            tokio::time::Instant::now(),
        ));
        let metrics = Metrics::new(index, Some(freshness));
        tokio::time::advance(Duration::from_secs(7)).await;
        let text = metrics.encode().unwrap();
        assert_eq!(sample(&text, "keyward_index_staleness_seconds"), "7.0");
        assert_eq!(sample(&text, "keyward_index_max_staleness_seconds"), "60.0");
    }
}
