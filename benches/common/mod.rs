//! What the end-to-end benchmarks add to `keyward::testing`: servers on the
//! wall clock, many connections, and timing rounds of Validate calls.

#![allow(dead_code)] // Each benchmark uses its own part.

use std::{future::Future, sync::Arc, time::Instant};

use keyward::{
    clock::SystemClock,
    pb::{self, key_service_client::KeyServiceClient},
    testing::{Backend, TestApp, authed},
};
use tonic::transport::Channel;

/// Concurrent client tasks, each on its own HTTP/2 connection.
pub const CLIENTS: usize = 8;
/// Calls per client per round.
pub const CALLS_PER_CLIENT: usize = 2_000;

/// A server under benchmark: on the wall clock, like production.
pub type Server = TestApp<SystemClock>;

/// `cargo bench` passes `--bench`; `cargo test --benches` passes `--test` or
/// `--list`, with no wish to run a long benchmark.
pub fn only_listing() -> bool {
    std::env::args().any(|arg| arg == "--list" || arg == "--test")
}

/// Starts a server on a fresh database on `backend`.
pub async fn start(backend: Backend) -> Server {
    TestApp::builder()
        .clock(SystemClock)
        .backend(backend)
        .spawn()
        .await
}

/// Starts a server on the database at `database_url`.
pub async fn start_on(database_url: &str) -> Server {
    TestApp::builder()
        .clock(SystemClock)
        .database_url(database_url)
        .spawn()
        .await
}

/// `count` HTTP/2 connections to `server`.
pub async fn channels(server: &Server, count: usize) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..count {
        channels.push(server.channel().await);
    }
    channels
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
    let (caller, key) = (caller.clone(), key.clone());
    round_with(channels, move |channel| {
        let mut client = KeyServiceClient::new(channel);
        let (caller, key) = (caller.clone(), key.clone());
        async move {
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
        }
    })
    .await
}

/// The generator of every round: calls per second for `CLIENTS` tasks, one
/// per channel, each running what `client` makes of its channel (which
/// makes `CALLS_PER_CLIENT` calls).
pub async fn round_with<F, C>(channels: &[Channel], client: C) -> f64
where
    C: Fn(Channel) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = channels
        .iter()
        .map(|channel| tokio::spawn(client(channel.clone())))
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
pub fn percentile(values: &mut [f64], p: usize) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = (p * values.len()).div_ceil(100);
    values[rank.clamp(1, values.len()) - 1]
}
