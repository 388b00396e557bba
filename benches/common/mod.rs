//! What the end-to-end benchmarks share: a real server on a random port,
//! tonic clients, and timing rounds of Validate calls.

#![allow(dead_code)] // Each benchmark uses its own part.

use std::{path::Path, sync::Arc, time::Instant};

use keyward::{
    pb::{self, key_service_client::KeyServiceClient},
    server::{Application, Settings},
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Request, transport::Channel};

/// Concurrent client tasks, each on its own HTTP/2 connection.
pub const CLIENTS: usize = 8;
/// Calls per client per round.
pub const CALLS_PER_CLIENT: usize = 2_000;

/// `cargo bench` passes `--bench`; `cargo test --benches` passes `--test` or
/// `--list`, with no wish to run a long benchmark.
pub fn only_listing() -> bool {
    std::env::args().any(|arg| arg == "--list" || arg == "--test")
}

/// A running server.
pub struct Server {
    pub addr: std::net::SocketAddr,
    /// The first admin key, when this server initialised the database.
    pub admin: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), keyward::server::StartupError>>,
}

impl Server {
    /// Starts a server on `database_url`, writing a first admin key (if it
    /// initialises the database) into `dir`.
    pub async fn start(database_url: &str, dir: &Path) -> Self {
        let key_file = dir.join(format!("admin-{}.key", rand_suffix()));
        let settings = Settings {
            listen: "127.0.0.1:0".parse().expect("address"),
            database_url: database_url.to_owned(),
            bootstrap_key_file: key_file.clone(),
            ..Settings::default()
        };
        let app = Application::build(settings).await.expect("server starts");
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let admin = std::fs::read_to_string(&key_file)
            .map(|key| key.trim().to_owned())
            .unwrap_or_default();
        Self {
            addr,
            admin,
            stop,
            task,
        }
    }

    /// `count` HTTP/2 connections to the server.
    pub async fn channels(&self, count: usize) -> Vec<Channel> {
        let mut channels = Vec::new();
        for _ in 0..count {
            channels.push(
                Channel::from_shared(format!("http://{}", self.addr))
                    .expect("URL")
                    .connect()
                    .await
                    .expect("connect"),
            );
        }
        channels
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("server task")
            .expect("server stops cleanly");
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub fn authed<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ASCII key"),
    );
    request
}

/// Mints a key holding the `validator` role; returns (id, plaintext).
pub async fn mint(
    channel: &Channel,
    admin: &str,
    rate_limit: Option<pb::RateLimit>,
) -> (String, String) {
    let mut client = pb::admin_service_client::AdminServiceClient::new(channel.clone());
    let request = pb::MintKeyRequest {
        roles: vec!["validator".into()],
        rate_limit,
        ..Default::default()
    };
    let minted = client
        .mint_key(authed(admin, request))
        .await
        .expect("mint")
        .into_inner();
    (minted.key.expect("key").id, minted.plaintext)
}

/// Whether `key` validates, asked with `caller` over `channel`.
pub async fn is_valid(client: &mut KeyServiceClient<Channel>, caller: &str, key: &str) -> bool {
    let request = pb::ValidateRequest {
        key: key.to_owned(),
        ..Default::default()
    };
    client
        .validate(authed(caller, request))
        .await
        .expect("Validate answers")
        .into_inner()
        .valid
}

/// Calls per second for `CLIENTS` tasks, one per channel, each validating
/// `key` with `caller` `CALLS_PER_CLIENT` times.
pub async fn round(channels: &[Channel], caller: &Arc<str>, key: &Arc<str>) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = channels
        .iter()
        .map(|channel| {
            let mut client = KeyServiceClient::new(channel.clone());
            let caller = caller.clone();
            let key = key.clone();
            tokio::spawn(async move {
                for _ in 0..CALLS_PER_CLIENT {
                    let request = pb::ValidateRequest {
                        key: key.to_string(),
                        required_permissions: vec!["keyward:validate".into()],
                        ..Default::default()
                    };
                    let response = client
                        .validate(authed(&caller, request))
                        .await
                        .expect("Validate answers");
                    assert!(
                        response.into_inner().valid,
                        "the benchmarked key must stay valid"
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task");
    }
    (channels.len() * CALLS_PER_CLIENT) as f64 / started.elapsed().as_secs_f64()
}

/// The median; sorts `values`.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `p`-th percentile (0–100, nearest rank); sorts `values`.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}
