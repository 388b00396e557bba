//! The real server for a test or a benchmark, on port 0, driven by the
//! generated tonic clients as a user's backend would. Logs are quiet unless
//! `TEST_LOG` is set.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Once},
    time::Duration,
};

use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{
    Request, Status,
    transport::{Channel, ClientTlsConfig},
};

use super::ScratchDatabase;
use crate::{
    clock::{Clock, ManualClock},
    pb::{self, admin_service_client::AdminServiceClient, key_service_client::KeyServiceClient},
    server::{Application, Settings},
    store::Store,
};

/// The bootstrap key file, in each server's own temporary directory.
const KEY_FILE: &str = "admin.key";

/// Which store a test's server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database of a test's servers. What it owns (the temporary directory
/// of a SQLite file, or a scratch PostgreSQL database) goes with the last
/// server that uses it.
pub struct TestDatabase {
    url: String,
    _dir: Option<TempDir>,
    _scratch: Option<ScratchDatabase>,
}

impl TestDatabase {
    /// A new, empty database.
    ///
    /// # Panics
    /// When no temporary directory can be made, or PostgreSQL is unreachable
    /// (ask [`super::postgres_reachable`] first).
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                Self {
                    url: format!("sqlite://{}", dir.path().join("keyward.db").display()),
                    _dir: Some(dir),
                    _scratch: None,
                }
            }
            Backend::Postgres => {
                let scratch = ScratchDatabase::create()
                    .await
                    .expect("PostgreSQL was reachable a moment ago");
                Self {
                    url: scratch.url().to_owned(),
                    _dir: None,
                    _scratch: Some(scratch),
                }
            }
        }
    }

    /// A database the caller made and removes (e.g. one `keywardctl init`
    /// initialised, or a benchmark's scratch database).
    pub fn existing(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            _dir: None,
            _scratch: None,
        }
    }

    /// Where the servers connect.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }
}

static TRACING: Once = Once::new();

fn init_test_logging() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("debug")
                .with_test_writer()
                .try_init();
        }
    });
}

/// How to start a [`TestApp`], from [`TestApp::builder`]: on a fresh SQLite
/// database, with the default settings and a [`ManualClock`] stopped at the
/// current time, unless told otherwise.
#[must_use]
pub struct Builder<C = ManualClock> {
    backend: Backend,
    database_url: Option<String>,
    settings: Settings,
    clock: C,
}

impl<C: Clock + Clone> Builder<C> {
    /// A fresh database on `backend`.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// An existing database instead of a fresh one; see
    /// [`TestDatabase::existing`].
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// The server's settings; its address, database and key file are
    /// replaced by the test's own.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// The server's clock, shared by its restarts and replicas: e.g.
    /// [`crate::clock::SystemClock`] where time must pass for real.
    pub fn clock<D: Clock + Clone>(self, clock: D) -> Builder<D> {
        Builder {
            backend: self.backend,
            database_url: self.database_url,
            settings: self.settings,
            clock,
        }
    }

    /// Starts the server, on the current tokio runtime.
    ///
    /// # Panics
    /// When the server cannot start.
    pub async fn spawn(self) -> TestApp<C> {
        let database = Arc::new(match self.database_url {
            Some(url) => TestDatabase::existing(url),
            None => TestDatabase::create(self.backend).await,
        });
        let url = database.url().to_owned();
        TestApp::start(database, url, self.clock, self.settings).await
    }
}

/// Starts a server on a new database.
pub async fn spawn_app(backend: Backend) -> TestApp {
    TestApp::builder().backend(backend).spawn().await
}

/// Starts a server on a new database with `settings` (its address, database
/// and key file are replaced by fresh ones).
pub async fn spawn_with(backend: Backend, settings: Settings) -> TestApp {
    TestApp::builder()
        .backend(backend)
        .settings(settings)
        .spawn()
        .await
}

/// A running server and what tests need to drive it. The server stops when
/// this is dropped; [`TestApp::stop`] waits for it.
pub struct TestApp<C = ManualClock> {
    pub addr: SocketAddr,
    /// Where metrics are served, when the settings asked for a listener.
    pub metrics_addr: Option<SocketAddr>,
    /// Where HTTP (forward-auth, JSON Validate) is served, when the settings
    /// asked for a listener.
    pub http_addr: Option<SocketAddr>,
    /// The first admin key: read from the bootstrap file when this server
    /// initialised the database, the first server's for its restarts and
    /// replicas, empty when the database was initialised elsewhere.
    pub admin_key: String,
    pub clock: C,
    pub store: Arc<Store>,
    pub database: Arc<TestDatabase>,
    /// This server's own directory, for its bootstrap key file.
    dir: Arc<TempDir>,
    settings: Settings,
    /// How [`TestApp::channel`] connects to a server with TLS.
    client_tls: Option<ClientTlsConfig>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl TestApp {
    /// See [`Builder`].
    pub fn builder() -> Builder {
        Builder {
            backend: Backend::Sqlite,
            database_url: None,
            settings: Settings::default(),
            clock: ManualClock::starting_now(),
        }
    }
}

impl<C: Clock + Clone> TestApp<C> {
    /// Starts a server on `database_url` (the test database itself, or a
    /// proxy in front of it).
    async fn start(
        database: Arc<TestDatabase>,
        database_url: String,
        clock: C,
        base: Settings,
    ) -> Self {
        Self::start_in(
            Arc::new(tempfile::tempdir().expect("a temporary directory")),
            database,
            database_url,
            clock,
            base,
        )
        .await
    }

    async fn start_in(
        dir: Arc<TempDir>,
        database: Arc<TestDatabase>,
        database_url: String,
        clock: C,
        base: Settings,
    ) -> Self {
        init_test_logging();
        let key_file = dir.path().join(KEY_FILE);
        let settings = Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url,
            bootstrap_key_file: key_file.clone(),
            ..base.clone()
        };
        let app = Application::build_with_clock(settings, Arc::new(clock.clone()))
            .await
            .expect("server starts");
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr();
        let http_addr = app.http_addr();
        let store = app.store();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            app.run_until(async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        // A server joining an initialised database writes no key file.
        let admin_key = std::fs::read_to_string(&key_file)
            .map(|key| key.trim().to_owned())
            .unwrap_or_default();
        Self {
            addr,
            metrics_addr,
            http_addr,
            admin_key,
            clock,
            store,
            database,
            dir,
            settings: base,
            client_tls: None,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    /// Makes every client of this harness connect over TLS with `config`
    /// (for a server started with [`Settings::tls`]).
    #[must_use]
    pub fn with_client_tls(mut self, config: ClientTlsConfig) -> Self {
        self.client_tls = Some(config);
        self
    }

    /// `http://<address>`, or `https://` with [`TestApp::with_client_tls`].
    pub fn url(&self) -> String {
        let scheme = if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Where this server wrote the first admin key (if it did).
    pub fn admin_key_file(&self) -> PathBuf {
        self.dir.path().join(KEY_FILE)
    }

    /// The test clock's "now", in whole seconds since the epoch.
    pub fn clock_seconds(&self) -> i64 {
        self.clock.now().as_millis().div_euclid(1000)
    }

    /// A new HTTP/2 connection to the server.
    pub async fn channel(&self) -> Channel {
        let mut endpoint = Channel::from_shared(self.url()).expect("a valid URL");
        if let Some(tls) = &self.client_tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .expect("a usable TLS configuration");
        }
        endpoint
            .connect()
            .await
            .expect("connects to the test server")
    }

    pub async fn admin_client(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel().await)
    }

    pub async fn key_client(&self) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(self.channel().await)
    }

    /// Mints a key with the admin key; returns (id, plaintext).
    pub async fn mint(&self, request: pb::MintKeyRequest) -> Result<(String, String), Status> {
        self.mint_as(&self.admin_key, request).await
    }

    /// Mints a key with `caller` as the credential.
    pub async fn mint_as(
        &self,
        caller: &str,
        request: pb::MintKeyRequest,
    ) -> Result<(String, String), Status> {
        let response = self
            .admin_client()
            .await
            .mint_key(authed(caller, request))
            .await?
            .into_inner();
        Ok((response.key.expect("a minted key").id, response.plaintext))
    }

    /// Creates a role with the admin key.
    pub async fn create_role(
        &self,
        name: &str,
        permissions: &[&str],
        max_ttl: Option<Duration>,
    ) -> Result<pb::Role, Status> {
        let request = pb::CreateRoleRequest {
            name: name.to_owned(),
            description: String::new(),
            permissions: permissions
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            max_ttl: max_ttl.map(|ttl| ttl.try_into().expect("a protobuf duration")),
            default_rate_limit: None,
        };
        Ok(self
            .admin_client()
            .await
            .create_role(authed(&self.admin_key, request))
            .await?
            .into_inner())
    }

    /// Mints a key holding `roles`.
    pub async fn mint_with_roles(&self, roles: &[&str]) -> (String, String) {
        self.mint(pb::MintKeyRequest {
            roles: roles.iter().map(std::string::ToString::to_string).collect(),
            ..Default::default()
        })
        .await
        .expect("mint succeeds")
    }

    /// Validates `key` with the admin key as the caller.
    pub async fn validate(&self, key: &str, required: &[&str]) -> pb::ValidateResponse {
        self.validate_as(&self.admin_key, key, required)
            .await
            .expect("Validate answers")
    }

    pub async fn validate_as(
        &self,
        caller: &str,
        key: &str,
        required: &[&str],
    ) -> Result<pb::ValidateResponse, Status> {
        let request = pb::ValidateRequest {
            key: key.to_owned(),
            required_permissions: required
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            ..Default::default()
        };
        Ok(self
            .key_client()
            .await
            .validate(authed(caller, request))
            .await?
            .into_inner())
    }

    pub async fn get(&self, id: &str) -> Result<pb::Key, Status> {
        let request = pb::GetKeyRequest { id: id.to_owned() };
        Ok(self
            .admin_client()
            .await
            .get_key(authed(&self.admin_key, request))
            .await?
            .into_inner())
    }

    pub async fn revoke(&self, id: &str, reason: &str) -> Result<pb::RevokeKeyResponse, Status> {
        let request = pb::RevokeKeyRequest {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        Ok(self
            .admin_client()
            .await
            .revoke_key(authed(&self.admin_key, request))
            .await?
            .into_inner())
    }

    pub async fn rotate(&self, id: &str, grace: Duration) -> Result<pb::RotateKeyResponse, Status> {
        let request = pb::RotateKeyRequest {
            id: id.to_owned(),
            grace: Some(grace.try_into().expect("a protobuf duration")),
        };
        Ok(self
            .admin_client()
            .await
            .rotate_key(authed(&self.admin_key, request))
            .await?
            .into_inner())
    }

    pub async fn list(&self, request: pb::ListKeysRequest) -> Result<pb::ListKeysResponse, Status> {
        Ok(self
            .admin_client()
            .await
            .list_keys(authed(&self.admin_key, request))
            .await?
            .into_inner())
    }

    /// Stops the server gracefully and waits until it has stopped.
    ///
    /// # Panics
    /// When the server failed, unless the thread is already panicking (so
    /// that this is safe in a `Drop` during a failed test).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take()
            && let Err(error) = server.await
            && !std::thread::panicking()
        {
            panic!("the server task did not end cleanly: {error}");
        }
    }

    /// Stops the server and starts a new one on the same database, clock,
    /// settings and directory.
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        let mut app = Self::start_in(
            self.dir.clone(),
            self.database.clone(),
            self.database.url().to_owned(),
            self.clock.clone(),
            self.settings.clone(),
        )
        .await;
        app.admin_key.clone_from(&self.admin_key);
        app
    }

    /// Starts another server on the same database (reached at
    /// `database_url`, e.g. through a proxy) and clock, with `settings`: a
    /// replica.
    pub async fn replica_via(&self, database_url: &str, settings: Settings) -> Self {
        let mut replica = Self::start(
            self.database.clone(),
            database_url.to_owned(),
            self.clock.clone(),
            settings,
        )
        .await;
        replica.admin_key.clone_from(&self.admin_key);
        replica
    }

    /// Starts another server on the same database, clock and settings.
    pub async fn replica(&self) -> Self {
        self.replica_via(self.database.url(), self.settings.clone())
            .await
    }
}

impl<C> Drop for TestApp<C> {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Wraps `message` with `authorization: Bearer <key>`.
///
/// # Panics
/// When `key` is not valid in a header (not visible ASCII).
pub fn authed<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("an ASCII key"),
    );
    request
}

/// The denial of a Validate answer.
///
/// # Panics
/// When the server sent an unknown denial.
#[must_use]
pub fn denial(response: &pb::ValidateResponse) -> pb::Denial {
    pb::Denial::try_from(response.denial).expect("a known denial")
}
