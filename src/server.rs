//! Startup: bind, open the store, initialise a new database, load the index,
//! then serve until a shutdown future completes.
//!
//! Binding comes first and the bound address is exposed, so tests listen on
//! port 0 and talk to the real server.

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use tonic::transport::Server;

use crate::{
    bootstrap::{self, InitError},
    clock::{Clock, SystemClock},
    exchange::{Exchanger, OidcSettings},
    freshness::Freshness,
    gateway::{
        self, Gateway, GatewaySettings,
        ext_authz::{AuthorizationServer, ExtAuthz},
    },
    index::Index,
    lifecycle::Lifecycle,
    listener::{self, ConnectionLimit},
    metrics::{self, DbOperation, Metrics},
    pb,
    rate_limit::RateLimit,
    replica::{self, FeedSettings},
    service::{AdminService, ExchangeService, KeyService, KeyServiceServer, TrustService},
    store::{PoolSettings, Store, StoreError, feed::Subscription, redacted_url},
    telemetry::RpcSpanLayer,
    tls::{self, TlsConfig, TlsError, TlsFiles},
    validate::Validator,
};

/// How often keys past their expiry are dropped from the index.
const EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_mins(1);

/// How often idle rate-limiter state is reclaimed.
const LIMITER_RECLAIM_INTERVAL: Duration = Duration::from_mins(1);

// HTTP/2 limits that are not settings: each is set explicitly so that a
// dependency upgrade cannot change it unnoticed, and none is something an
// operator has a reason to tune.

/// Largest header block a request may carry (`SETTINGS_MAX_HEADER_LIST_SIZE`);
/// a bigger one is refused before any handler runs. keyward's requests carry a
/// few hundred bytes of headers (the caller's key, a request id, gRPC's own).
/// 16 KiB is hyper's default.
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// Largest HTTP/2 frame the server accepts (`SETTINGS_MAX_FRAME_SIZE`): the
/// protocol's minimum, so no single frame makes the server buffer more.
const MAX_FRAME_SIZE: u32 = 16 * 1024;

/// Streams a client may open and reset before the server gets to them, per
/// connection, before it is disconnected with `ENHANCE_YOUR_CALM`: the defence
/// against "rapid reset" floods (CVE-2023-44487). h2's default.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// Streams the server may reset because of the client's own errors (a stream
/// over the concurrency limit, a malformed request), per connection, before it
/// disconnects the client with `ENHANCE_YOUR_CALM`. hyper's default; tonic
/// turns the check off unless it is set, which would let one connection go on
/// opening streams past the limit for ever. A client that honours the
/// advertised limit never comes near it.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// What `keyward serve` needs to start. Its `Debug` shows the database URL
/// without a password.
#[derive(Clone)]
pub struct Settings {
    /// Address for gRPC; port 0 picks a free port.
    pub listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://…`.
    pub database_url: String,
    /// Connection pool size and timeouts.
    pub pool: PoolSettings,
    /// Where the first admin key is written (mode 0600) when the server
    /// initialises a new database. Never overwritten.
    pub bootstrap_key_file: PathBuf,
    /// Rate limit of keys with none of their own or from a role.
    pub default_rate_limit: Option<RateLimit>,
    /// How often usage (last used, use counts) is written to the store;
    /// each key is written at most once per interval.
    pub usage_flush_interval: Duration,
    /// On PostgreSQL: how long Validate answers from an index it cannot
    /// confirm current (the database or its feed unreachable) before it
    /// fails closed with `UNAVAILABLE`.
    pub max_staleness: Duration,
    /// On PostgreSQL: how often the index is reloaded in full.
    pub resync_interval: Duration,
    /// Most requests (HTTP/2 streams) one connection may have open at once,
    /// advertised to clients as `SETTINGS_MAX_CONCURRENT_STREAMS`. A client
    /// that opens more has them refused (`REFUSED_STREAM`, never processed, so
    /// safe to retry), and one that keeps on is disconnected.
    pub max_concurrent_streams: u32,
    /// Largest request message accepted, in bytes. A bigger one is refused
    /// with `OUT_OF_RANGE` as soon as its length prefix arrives: before it is
    /// buffered, and before the caller is authenticated.
    pub max_message_size: usize,
    /// How long a request may take from its headers to its answer, the wait
    /// for its body included; then it is answered `CANCELLED` ("Timeout
    /// expired") and its stream closed. A shorter `grpc-timeout` from the
    /// client wins. Streaming answers (health `Watch`, reflection) are bounded
    /// only until their first headers.
    pub request_timeout: Duration,
    /// How long a connection may send nothing before the server pings it.
    pub keepalive_interval: Duration,
    /// How long the server waits for the answer to that ping before it
    /// closes the connection (a dead or silent peer).
    pub keepalive_timeout: Duration,
    /// Connections older than this are asked to reconnect (`GOAWAY`); their
    /// in-flight requests finish first. Spreads long-lived clients over
    /// replicas again after a scale-out.
    pub max_connection_age: Duration,
    /// Most connections to the gRPC port open at once; past it, new clients
    /// wait in the kernel's backlog until one closes ([`crate::listener`]).
    /// The server raises its open-file limit to fit, where the hard limit
    /// allows.
    pub max_connections: u32,
    /// TLS on the gRPC port; plaintext HTTP/2 when `None`.
    pub tls: Option<TlsFiles>,
    /// After a shutdown signal, how long in-flight requests get to finish
    /// before the server stops anyway. HTTP/2 graceful shutdown waits for
    /// each client to close its connection, and a stuck client (or an open
    /// health `Watch`) must not keep a server from stopping.
    pub drain_timeout: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP); `None`
    /// serves none. Bound at start like `listen`, and stopped with the server.
    pub metrics_listen: Option<SocketAddr>,
    /// How many keys a caller short of `keyward:admin` may mint, as a rate
    /// (e.g. 100 a minute, with a burst); `None`: no limit.
    pub mint_quota: Option<RateLimit>,
    /// How OIDC identity token exchanges reach issuers
    /// (`--oidc-allow-http-issuers`).
    pub oidc: OidcSettings,
    /// Where to serve HTTP (`GET /v1/forward-auth`, `POST
    /// /v1/keys:validate`; see [`crate::gateway::http`]), over TLS when
    /// `tls` is set; `None` serves none.
    pub http_listen: Option<SocketAddr>,
    /// How the gateways (ext_authz, forward-auth) find the key and the
    /// client address in the requests they check.
    pub gateway: GatewaySettings,
}

impl Default for Settings {
    /// The product defaults: `127.0.0.1:50051`, `sqlite://keyward.db`.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database_url: "sqlite://keyward.db".to_owned(),
            bootstrap_key_file: PathBuf::from("keyward-admin.key"),
            default_rate_limit: None,
            usage_flush_interval: Duration::from_secs(10),
            pool: PoolSettings::default(),
            max_staleness: Duration::from_mins(1),
            resync_interval: Duration::from_mins(5),
            // A shared connection (a proxy, or many backend workers on one
            // channel) keeps ample parallelism: Validate takes well under a
            // millisecond, so 256 in flight is not what limits a connection,
            // and clients queue past the limit rather than fail. Above the
            // 100 that HTTP/2 recommends as the least and that gRPC clients
            // assume before the server's SETTINGS arrive (so they are not
            // refused while they wait for them); hyper's own default is 200.
            max_concurrent_streams: 256,
            // The largest legitimate request, a MintKey with every list at
            // its maximum (64 roles, permissions, CIDRs and labels), is under
            // 64 KiB; twice that, rather than tonic's 4 MiB, caps what one
            // connection can make the server buffer before authentication at
            // 256 x 128 KiB = 32 MiB.
            max_message_size: 128 * 1024,
            // Validate answers in under a millisecond; an admin call can
            // wait for the write turn behind a resync or a burst of writes,
            // which takes seconds, not tens of them.
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_mins(1),
            keepalive_timeout: Duration::from_secs(20),
            max_connection_age: Duration::from_mins(30),
            // Backends and proxies hold a few long-lived connections each;
            // thousands is a large fleet. An idle connection costs about
            // 16 KiB (measured: 2,000 of them added 32 MiB), so the cap
            // bounds what connections alone can hold to about 64 MiB.
            max_connections: 4096,
            tls: None,
            // Inside Kubernetes' default 30 s termination grace period,
            // with room for the usage flush and closing the store; far
            // longer than any call but a queued admin write takes.
            drain_timeout: Duration::from_secs(20),
            metrics_listen: None,
            // A CI orchestrator minting a key per job stays far below it; a
            // leaked narrow admin key cannot fill the index at gRPC speed.
            mint_quota: Some(
                RateLimit::new(100, Duration::from_mins(1), 100).expect("a valid rate"),
            ),
            oidc: OidcSettings::default(),
            http_listen: None,
            gateway: GatewaySettings::default(),
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("database", &redacted_url(&self.database_url))
            .field("pool", &self.pool)
            .field("bootstrap_key_file", &self.bootstrap_key_file)
            .field("default_rate_limit", &self.default_rate_limit)
            .field("usage_flush_interval", &self.usage_flush_interval)
            .field("max_staleness", &self.max_staleness)
            .field("resync_interval", &self.resync_interval)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .field("max_message_size", &self.max_message_size)
            .field("request_timeout", &self.request_timeout)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("max_connection_age", &self.max_connection_age)
            .field("max_connections", &self.max_connections)
            .field("tls", &self.tls)
            .field("drain_timeout", &self.drain_timeout)
            .field("metrics_listen", &self.metrics_listen)
            .field("mint_quota", &self.mint_quota)
            .field("oidc", &self.oidc)
            .field("http_listen", &self.http_listen)
            .field("gateway", &self.gateway)
            .finish()
    }
}

/// Why the server could not start or stopped with an error. Each variant
/// prints as one line that names what failed.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The address cannot be bound (in use, or not this host's).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why, as the operating system said.
        source: std::io::Error,
    },
    /// The database cannot be opened, migrated or loaded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A new database could not be given its first admin key.
    #[error("cannot initialise the database: {0}")]
    Initialize(#[from] InitError),
    /// A TLS certificate, key or CA file is unreadable or invalid.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The server stopped with a transport error.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The metrics address cannot be bound (in use, or not this host's).
    #[error("cannot serve metrics on {addr}: {source}")]
    MetricsListen {
        /// The address asked for (`--metrics-listen`).
        addr: SocketAddr,
        /// Why, as the operating system said.
        source: std::io::Error,
    },
    /// The HTTP address cannot be bound (in use, or not this host's).
    #[error("cannot serve HTTP on {addr}: {source}")]
    HttpListen {
        /// The address asked for (`--http-listen`).
        addr: SocketAddr,
        /// Why, as the operating system said.
        source: std::io::Error,
    },
}

/// A bound, loaded server, ready to run.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    store: Arc<Store>,
    index: Arc<Index>,
    validator: Arc<Validator>,
    lifecycle: Arc<Lifecycle>,
    exchanger: Arc<Exchanger>,
    allow_http_issuers: bool,
    clock: Arc<dyn Clock>,
    usage_flush_interval: Duration,
    /// Set on PostgreSQL, where the index follows the change feed.
    feed: Option<(Arc<Freshness>, FeedSettings)>,
    /// The feed's subscription, opened before the index was loaded, and
    /// when the load began (PostgreSQL).
    listening: Option<(Subscription, tokio::time::Instant)>,
    limits: Limits,
    connection_limit: ConnectionLimit,
    tls: Option<Arc<TlsConfig>>,
    drain_timeout: Duration,
    metrics: Arc<Metrics>,
    /// The bound metrics listener and its address, when asked for one.
    metrics_listener: Option<(TcpListener, SocketAddr)>,
    /// The bound HTTP listener and its address, when asked for one.
    http_listener: Option<(TcpListener, SocketAddr)>,
    gateway_settings: GatewaySettings,
}

impl Application {
    /// Starts on the wall clock.
    ///
    /// # Errors
    /// See [`Application::build_with_clock`].
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// Binds `settings.listen`, opens and migrates the database, initialises
    /// it if it is new, and loads the index. `clock` is the source of "now"
    /// for expiry and grace periods (tests pass a [`crate::clock::ManualClock`]).
    ///
    /// # Errors
    /// A [`StartupError`] naming the address or path that failed.
    pub async fn build_with_clock(
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartupError::Listen {
                    addr: settings.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartupError::Listen {
                addr: settings.listen,
                source,
            })?;
        // Before the database: a bad certificate is a one-line error that
        // should not wait for (or touch) the store.
        let tls = settings
            .tls
            .clone()
            .map(TlsConfig::load)
            .transpose()?
            .map(Arc::new);
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => Some(
                bind(addr)
                    .await
                    .map_err(|source| StartupError::MetricsListen { addr, source })?,
            ),
            None => None,
        };
        let http_listener = match settings.http_listen {
            Some(addr) => Some(
                bind(addr)
                    .await
                    .map_err(|source| StartupError::HttpListen { addr, source })?,
            ),
            None => None,
        };
        listener::ensure_descriptors(settings.max_connections);
        let store = Arc::new(Store::open_with(&settings.database_url, settings.pool).await?);
        if let Some(admin) =
            bootstrap::initialize_if_new(&store, clock.as_ref(), &settings.bootstrap_key_file)
                .await?
        {
            tracing::warn!(
                key_id = %admin,
                path = %settings.bootstrap_key_file.display(),
                "initialised a new database; the first admin key was written to this file: \
                 move it to a secret store and delete the file"
            );
        }
        // On PostgreSQL, listening before the load: what commits during or
        // after it reaches the replica through the feed, so the feed needs
        // no resync of its own once the server runs.
        let listening = if store.has_change_feed() {
            Some(store.subscribe(settings.pool.acquire_timeout).await?)
        } else {
            None
        };
        // Confirmed current as of before the load, not after.
        let loaded_as_of = tokio::time::Instant::now();
        let index = Arc::new(Index::from_snapshot(
            store.load_snapshot(clock.now()).await?,
        ));
        tracing::info!(keys = index.len(), "index loaded");
        let feed = store.has_change_feed().then(|| {
            let feed = FeedSettings {
                max_staleness: settings.max_staleness,
                resync_interval: settings.resync_interval,
                connect_timeout: settings.pool.acquire_timeout,
            };
            (
                Arc::new(Freshness::new(feed.max_staleness, loaded_as_of)),
                feed,
            )
        });
        let metrics = Arc::new(Metrics::new(
            index.clone(),
            feed.as_ref().map(|(freshness, _)| freshness.clone()),
        ));
        let mut validator = Validator::new(index.clone(), clock.clone())
            .with_default_rate_limit(settings.default_rate_limit)
            .with_store(store.clone());
        if let Some((freshness, _)) = &feed {
            validator = validator.with_freshness(freshness.clone());
        }
        let validator = Arc::new(validator);
        let lifecycle = Arc::new(
            Lifecycle::new(store.clone(), index.clone(), clock.clone(), metrics.clone())
                .with_mint_quota(settings.mint_quota),
        );
        let exchanger = Arc::new(Exchanger::new(
            lifecycle.clone(),
            settings.oidc,
            metrics.clone(),
        ));
        Ok(Self {
            listener,
            local_addr,
            store,
            index,
            validator,
            lifecycle,
            exchanger,
            allow_http_issuers: settings.oidc.allow_http_issuers,
            clock,
            usage_flush_interval: settings.usage_flush_interval,
            feed,
            listening: listening.map(|subscription| (subscription, loaded_as_of)),
            limits: Limits::from(&settings),
            connection_limit: ConnectionLimit::new(settings.max_connections),
            tls,
            drain_timeout: settings.drain_timeout,
            metrics,
            metrics_listener,
            http_listener,
            gateway_settings: settings.gateway,
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address metrics are served on, if any (the real port when asked
    /// for port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
    }

    /// The address HTTP is served on, if any (the real port when asked for
    /// port 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listener.as_ref().map(|(_, addr)| *addr)
    }

    /// The store, so tests can count the operations a request caused.
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// Serves gRPC (keyward.v1, health, reflection) until `shutdown`
    /// completes, then lets in-flight requests finish and closes the store.
    ///
    /// # Errors
    /// When the gRPC server fails.
    ///
    /// # Panics
    /// Never: the descriptor sets given to reflection are compiled in.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let limits = self.limits;
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<KeyServiceServer>().await;
        health
            .set_serving::<pb::admin_service_server::AdminServiceServer<AdminService>>()
            .await;
        health.set_serving::<AuthorizationServer<ExtAuthz>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the embedded descriptor sets are valid")
            .max_decoding_message_size(limits.max_message_size);

        let mut background = vec![
            tokio::spawn(sweep_expired(self.index.clone(), self.clock.clone())),
            tokio::spawn(reclaim_limiters(self.validator.clone())),
            tokio::spawn(flush_usage_every(
                self.usage_flush_interval,
                self.index.clone(),
                self.store.clone(),
                self.metrics.clone(),
            )),
        ];
        if let Some((listener, addr)) = self.metrics_listener {
            tracing::info!(%addr, "metrics served on /metrics");
            background.push(tokio::spawn(metrics::http::serve(
                listener,
                self.metrics.clone(),
            )));
        }
        if let Some((freshness, feed)) = self.feed {
            background.push(tokio::spawn(replica::follow(
                self.store.clone(),
                self.lifecycle.clone(),
                freshness.clone(),
                feed,
                self.metrics.clone(),
                self.listening,
            )));
            background.push(tokio::spawn(report_freshness(
                health.clone(),
                freshness,
                feed.heartbeat(),
            )));
        }
        if let Some(tls) = &self.tls {
            background.push(tokio::spawn(tls::reload_on_change(tls.clone())));
        }
        let (draining, drain_started) = watch::channel(false);
        let keys = Arc::new(KeyService::new(
            self.validator.clone(),
            self.metrics.clone(),
        ));
        let gateway = Arc::new(Gateway::new(
            keys.clone(),
            self.metrics.clone(),
            self.gateway_settings.clone(),
        ));
        // Drained with the gRPC port, not aborted: a proxy's subrequest in
        // flight is answered.
        let mut http_served = None;
        if let Some((listener, addr)) = self.http_listener {
            tracing::info!(%addr, tls = self.tls.is_some(), "HTTP served on /v1/forward-auth and /v1/keys:validate");
            http_served = Some(tokio::spawn(gateway::http::serve(
                listener,
                self.tls.clone(),
                gateway::http::router(gateway.clone()),
                limits.request_timeout,
                drain_started.clone(),
            )));
        }
        let shutdown = {
            let health = health.clone();
            async move {
                shutdown.await;
                // First, so load balancers and health watchers stop sending
                // work here while the calls already sent finish.
                report_draining(&health).await;
                let _ = draining.send(true);
            }
        };
        let router = limits
            .server()
            .layer(RpcSpanLayer)
            .add_service(health_service.max_decoding_message_size(limits.max_message_size))
            .add_service(reflection)
            .add_service(
                KeyServiceServer::from_arc(keys).max_decoding_message_size(limits.max_message_size),
            )
            .add_service(ExtAuthz::server(gateway, limits.max_message_size))
            .add_service(metrics::grpc::CountAdminRpcs::new(
                pb::admin_service_server::AdminServiceServer::new(AdminService::new(
                    self.lifecycle.clone(),
                    self.validator.clone(),
                    self.metrics.clone(),
                ))
                .max_decoding_message_size(limits.max_message_size),
                self.metrics.clone(),
            ))
            .add_service(metrics::grpc::CountAdminRpcs::new(
                pb::trust_service_server::TrustServiceServer::new(TrustService::new(
                    self.lifecycle.clone(),
                    self.validator.clone(),
                    self.metrics.clone(),
                    self.allow_http_issuers,
                ))
                .max_decoding_message_size(limits.max_message_size),
                self.metrics.clone(),
            ))
            .add_service(
                pb::exchange_service_server::ExchangeServiceServer::new(ExchangeService::new(
                    self.exchanger.clone(),
                    self.lifecycle.clone(),
                    self.validator.clone(),
                    self.metrics.clone(),
                ))
                .max_decoding_message_size(limits.max_message_size),
            );
        tracing::info!(
            addr = %self.local_addr,
            tls = self.tls.is_some(),
            client_certificates = self.tls.as_ref().is_some_and(|tls| tls.files().client_ca.is_some()),
            "keyward listening"
        );
        // Either way, on `shutdown` the listener closes at once and every
        // connection is asked to finish (HTTP/2 `GOAWAY`): calls already sent
        // are answered, new ones go elsewhere.
        let serve: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match &self.tls {
                None => Box::pin(router.serve_with_incoming_shutdown(
                    listener::accept(
                        self.listener,
                        self.connection_limit,
                        drain_started.clone(),
                        |socket, _| std::future::ready(Some(socket)),
                    ),
                    shutdown,
                )),
                Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
                    listener::accept(
                        self.listener,
                        self.connection_limit,
                        drain_started.clone(),
                        tls::handshake(tls.clone()),
                    ),
                    shutdown,
                )),
            };
        let drain_timeout = self.drain_timeout;
        let mut drain_started = drain_started;
        let served = tokio::select! {
            served = async {
                let served = serve.await;
                // Ok: the drain has begun (only it ends the gRPC port
                // without an error), so the HTTP listener is draining too.
                if let (Ok(()), Some(http)) = (&served, &mut http_served) {
                    let _ = http.await;
                }
                served
            } => served,
            () = async {
                let _ = drain_started.wait_for(|draining| *draining).await;
                tokio::time::sleep(drain_timeout).await;
            } => {
                tracing::warn!(
                    drain_timeout = %humantime::format_duration(drain_timeout),
                    "connections still open at the end of the drain timeout; stopping anyway"
                );
                Ok(())
            }
        };
        for task in background.into_iter().chain(http_served) {
            task.abort();
        }
        // Usage counted up to the last request is kept.
        flush_usage(&self.index, &self.store, &self.metrics).await;
        self.store.close().await;
        tracing::info!("keyward stopped");
        Ok(served?)
    }
}

/// What bounds the resources one connection and one request can hold: the
/// settings of that kind, kept from [`Settings`] until the server runs.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_concurrent_streams: u32,
    max_message_size: usize,
    request_timeout: Duration,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    max_connection_age: Duration,
}

impl From<&Settings> for Limits {
    fn from(settings: &Settings) -> Self {
        Self {
            max_concurrent_streams: settings.max_concurrent_streams,
            max_message_size: settings.max_message_size,
            request_timeout: settings.request_timeout,
            keepalive_interval: settings.keepalive_interval,
            keepalive_timeout: settings.keepalive_timeout,
            max_connection_age: settings.max_connection_age,
        }
    }
}

impl Limits {
    /// A gRPC server that enforces these limits on every connection. Without
    /// them, tonic advertises no stream limit and times nothing out, so one
    /// connection could hold any number of requests that never send a body
    /// (authentication waits for the body), each costing memory for good.
    fn server(self) -> Server {
        Server::builder()
            .max_concurrent_streams(self.max_concurrent_streams)
            .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
            .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_frame_size(MAX_FRAME_SIZE)
            .timeout(self.request_timeout)
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            // No `max_connection_age_grace`: in tonic 0.14 setting it replaces
            // the graceful close at this age by an abrupt one at age + grace.
            .max_connection_age(self.max_connection_age)
    }
}

/// Tells health checks that this server is going away: every service, and
/// the server as a whole (the empty service name), turns `NOT_SERVING`.
async fn report_draining(health: &tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus::NotServing;
    health.set_not_serving::<KeyServiceServer>().await;
    health
        .set_not_serving::<pb::admin_service_server::AdminServiceServer<AdminService>>()
        .await;
    health
        .set_not_serving::<AuthorizationServer<ExtAuthz>>()
        .await;
    health.set_service_status("", NotServing).await;
}

/// Tells health checks, so a load balancer can route around it, while this
/// replica's index is too stale for Validate to answer.
async fn report_freshness(
    health: tonic_health::server::HealthReporter,
    freshness: Arc<Freshness>,
    every: Duration,
) {
    type Keys = KeyServiceServer;
    let mut serving = true;
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let checked = freshness.check();
        if checked.is_ok() == serving {
            continue;
        }
        serving = checked.is_ok();
        match checked {
            Ok(()) => {
                tracing::info!("index confirmed current again; Validate answers");
                health.set_serving::<Keys>().await;
            }
            Err(stale) => {
                tracing::error!(%stale, "failing closed: Validate answers UNAVAILABLE until the database is back");
                health.set_not_serving::<Keys>().await;
            }
        }
    }
}

async fn reclaim_limiters(validator: Arc<Validator>) {
    let mut ticks = tokio::time::interval(LIMITER_RECLAIM_INTERVAL);
    loop {
        ticks.tick().await;
        let kept = validator.limiters().reclaim_idle();
        tracing::debug!(kept, "idle rate-limiter state reclaimed");
    }
}

async fn flush_usage_every(
    interval: Duration,
    index: Arc<Index>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        flush_usage(&index, &store, &metrics).await;
    }
}

/// Writes the usage counted since the last flush; on failure keeps it for
/// the next one.
async fn flush_usage(index: &Index, store: &Store, metrics: &Metrics) {
    let deltas = index.take_usage();
    if deltas.is_empty() {
        return;
    }
    match store.record_usage(&deltas).await {
        Ok(()) => tracing::debug!(keys = deltas.len(), "usage flushed"),
        Err(error) => {
            metrics.database_error(DbOperation::UsageFlush);
            tracing::warn!(%error, keys = deltas.len(), "cannot write usage; keeping it for the next flush");
            index.restore_usage(deltas);
        }
    }
}

/// Binds a side listener (metrics, HTTP), at start like the gRPC one, so a
/// bad address stops the server with one line naming it.
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), std::io::Error> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

async fn sweep_expired(index: Arc<Index>, clock: Arc<dyn Clock>) {
    let mut ticks = tokio::time::interval(EXPIRY_SWEEP_INTERVAL);
    loop {
        ticks.tick().await;
        let removed = index.remove_expired(clock.now());
        if removed > 0 {
            tracing::debug!(removed, "expired keys dropped from the index");
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is
/// first polled: call it before anything can observe the server as started
/// (its "listening" log line, its port), or a signal sent at once would find
/// the default action still in place and kill the process uncleanly.
///
/// # Panics
/// When the process cannot install a signal handler (no Unix signals), at
/// start-up.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler can be installed");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler can be installed");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutdown requested; finishing in-flight requests");
    }
}
