//! Test harness: the real server on port 0 with a fresh database (SQLite or
//! PostgreSQL), driven by the generated tonic clients as a user's backend
//! would. Logs are quiet unless `TEST_LOG` is set.
//!
//! Tests of the service are written once, as `async fn name(backend: Backend)`,
//! and listed in [`on_both_stores!`], which runs each as `name::sqlite` and
//! `name::postgres`.

use std::{sync::Arc, sync::Once, time::Duration};

use keyward::{
    clock::{Clock, ManualClock},
    pb::{self, admin_service_client::AdminServiceClient, key_service_client::KeyServiceClient},
    server::{Application, Settings},
    store::Store,
    testing::ScratchDatabase,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Request, Status, transport::Channel};

/// Runs each listed test, an `async fn(Backend)`, once per store, as tests
/// `NAME::sqlite` and `NAME::postgres`. PostgreSQL runs are skipped, with the
/// reason printed, when it is unreachable (they fail instead under `CI=true`).
/// Prefix the list with `multi_thread:` for tests that need two workers.
macro_rules! on_both_stores {
    (multi_thread: $($test:ident),+ $(,)?) => {
        $(on_both_stores!(@one $test, #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);)+
    };
    ($($test:ident),+ $(,)?) => {
        $(on_both_stores!(@one $test, #[tokio::test]);)+
    };
    (@one $test:ident, #[$runtime:meta]) => {
        mod $test {
            #[$runtime]
            async fn sqlite() {
                super::$test($crate::helpers::Backend::Sqlite).await;
            }

            #[$runtime]
            async fn postgres() {
                if keyward::testing::postgres_reachable().await {
                    super::$test($crate::helpers::Backend::Postgres).await;
                }
            }
        }
    };
}

/// Which store a test's server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database of a test's servers. A PostgreSQL one is dropped with the
/// last server that uses it.
pub struct TestDatabase {
    pub url: String,
    _scratch: Option<ScratchDatabase>,
}

impl TestDatabase {
    async fn create(backend: Backend, dir: &tempfile::TempDir) -> Self {
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}", dir.path().join("keyward.db").display()),
                _scratch: None,
            },
            Backend::Postgres => {
                let scratch = ScratchDatabase::create()
                    .await
                    .expect("PostgreSQL was reachable a moment ago");
                Self {
                    url: scratch.url().to_owned(),
                    _scratch: Some(scratch),
                }
            }
        }
    }
}

static TRACING: Once = Once::new();

fn init_test_logging() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter("debug")
                .with_test_writer()
                .init();
        }
    });
}

/// A running server and what tests need to drive it.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    /// The first admin key, read from the bootstrap file.
    pub admin_key: String,
    pub clock: ManualClock,
    pub store: Arc<Store>,
    pub dir: Arc<tempfile::TempDir>,
    pub database: Arc<TestDatabase>,
    settings: Settings,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// Starts a server on a new database.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_with(backend, Settings::default()).await
}

/// Starts a server on a new database with `settings` (its address, database
/// and key file are replaced by fresh ones).
pub async fn spawn_with(backend: Backend, settings: Settings) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let database = Arc::new(TestDatabase::create(backend, &dir).await);
    let url = database.url.clone();
    spawn_on(dir, database, url, ManualClock::starting_now(), settings).await
}

/// Starts a server on `database_url` (the test database itself, or a proxy
/// in front of it).
async fn spawn_on(
    dir: Arc<tempfile::TempDir>,
    database: Arc<TestDatabase>,
    database_url: String,
    clock: ManualClock,
    base: Settings,
) -> TestApp {
    init_test_logging();
    let key_file = dir.path().join("admin.key");
    let settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        bootstrap_key_file: key_file.clone(),
        ..base.clone()
    };
    let app = Application::build_with_clock(settings, Arc::new(clock.clone()))
        .await
        .expect("server starts");
    let addr = app.local_addr();
    let store = app.store();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until(async {
            let _ = rx.await;
        })
        .await
        .expect("server runs");
    });
    // A replica joining an initialised database writes no key file.
    let admin_key = std::fs::read_to_string(&key_file)
        .map(|key| key.trim().to_owned())
        .unwrap_or_default();
    TestApp {
        addr,
        admin_key,
        clock,
        store,
        dir,
        database,
        settings: base,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    /// The test clock's "now", in whole seconds since the epoch.
    pub fn clock_seconds(&self) -> i64 {
        self.clock.now().as_millis().div_euclid(1000)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
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
        let response = self
            .admin_client()
            .await
            .mint_key(authed(&self.admin_key, request))
            .await?
            .into_inner();
        Ok((response.key.unwrap().id, response.plaintext))
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
        Ok((response.key.unwrap().id, response.plaintext))
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
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
            max_ttl: max_ttl.map(|ttl| ttl.try_into().unwrap()),
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
            roles: roles.iter().map(|r| r.to_string()).collect(),
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
            required_permissions: required.iter().map(|p| p.to_string()).collect(),
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
            grace: Some(grace.try_into().unwrap()),
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
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task ends cleanly");
        }
    }

    /// Stops the server and starts a new one on the same database and clock.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        let mut app = spawn_on(
            self.dir.clone(),
            self.database.clone(),
            self.database.url.clone(),
            self.clock.clone(),
            self.settings.clone(),
        )
        .await;
        app.admin_key.clone_from(&self.admin_key);
        app
    }

    /// Starts another server on the same database (reached at
    /// `database_url`, e.g. through a proxy), clock and settings: a replica.
    pub async fn replica_via(&self, database_url: &str, settings: Settings) -> TestApp {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut replica = spawn_on(
            dir,
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
    pub async fn replica(&self) -> TestApp {
        self.replica_via(&self.database.url, self.settings.clone())
            .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Wraps `message` with `authorization: Bearer <key>`.
pub fn authed<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

pub fn denial(response: &pb::ValidateResponse) -> pb::Denial {
    pb::Denial::try_from(response.denial).unwrap()
}

/// Builds a well-formed key (valid checksum) with `id` and the secret of `donor`.
pub fn forge(id: &str, donor: &str) -> String {
    let secret = &donor[3 + 11..3 + 44];
    let unchecked = format!("kw_{id}{secret}");
    let checksum = crc32(unchecked.as_bytes());
    let mut digits = [b'0'; 6];
    let mut value = u64::from(checksum);
    for slot in digits.iter_mut().rev() {
        slot.clone_from(
            &b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                [(value % 62) as usize],
        );
        value /= 62;
    }
    format!("{unchecked}{}", std::str::from_utf8(&digits).unwrap())
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
