//! Validate over gRPC, end to end: the real server on a random port, real
//! tonic clients, as a backend would call it.
//!
//! It compares, in one run, the throughput of validating a key with a rate
//! limit attached (set so high that it never refuses) against the same kind
//! of key without one: the cost of the limiter on the hot path. Rounds
//! interleave the two (A B B A …) so that machine noise and drift hit both
//! alike; the figures are medians over the rounds.
//!
//! Run: `cargo bench --bench grpc` (prints a table; see BENCHMARKS.md).

use std::{sync::Arc, time::Instant};

use keyward::{
    pb::{self, key_service_client::KeyServiceClient},
    server::{Application, Settings},
};
use tonic::{Request, transport::Channel};

/// Concurrent client tasks, each on its own HTTP/2 connection.
const CLIENTS: usize = 8;
/// Calls per client per round.
const CALLS_PER_CLIENT: usize = 2_000;
/// Rounds per variant, in A B B A order so neither goes first more often.
const ROUNDS: usize = 10;

fn authed<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ASCII key"),
    );
    request
}

async fn mint(channel: &Channel, admin: &str, rate_limit: Option<pb::RateLimit>) -> String {
    let mut client = pb::admin_service_client::AdminServiceClient::new(channel.clone());
    let request = pb::MintKeyRequest {
        roles: vec!["validator".into()],
        rate_limit,
        ..Default::default()
    };
    client
        .mint_key(authed(admin, request))
        .await
        .expect("mint")
        .into_inner()
        .plaintext
}

/// Calls per second for `CLIENTS` tasks validating `key` with `caller`.
async fn round(channels: &[Channel], caller: &Arc<str>, key: &Arc<str>) -> f64 {
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
    (CLIENTS * CALLS_PER_CLIENT) as f64 / started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would too, with
    // no wish to run a long benchmark.
    if std::env::args().any(|arg| arg == "--list" || arg == "--test") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temporary directory");
        let settings = Settings {
            listen: "127.0.0.1:0".parse().expect("address"),
            database_url: format!("sqlite://{}", dir.path().join("keyward.db").display()),
            bootstrap_key_file: dir.path().join("admin.key"),
            ..Settings::default()
        };
        let app = Application::build(settings).await.expect("server starts");
        let addr = app.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let admin = std::fs::read_to_string(dir.path().join("admin.key")).expect("admin key");
        let admin = admin.trim();

        let mut channels = Vec::new();
        for _ in 0..CLIENTS {
            channels.push(
                Channel::from_shared(format!("http://{addr}"))
                    .expect("URL")
                    .connect()
                    .await
                    .expect("connect"),
            );
        }
        let never_limiting = pb::RateLimit {
            requests: u32::MAX,
            per: Some(std::time::Duration::from_secs(1).try_into().expect("duration")),
            burst: u32::MAX,
        };
        let caller: Arc<str> = mint(&channels[0], admin, None).await.into();
        let plain: Arc<str> = mint(&channels[0], admin, None).await.into();
        let limited: Arc<str> = mint(&channels[0], admin, Some(never_limiting)).await.into();

        // Warm up connections, allocators and caches.
        round(&channels, &caller, &plain).await;
        round(&channels, &caller, &limited).await;
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for i in 0..ROUNDS {
            if i % 2 == 0 {
                without.push(round(&channels, &caller, &plain).await);
                with.push(round(&channels, &caller, &limited).await);
            } else {
                with.push(round(&channels, &caller, &limited).await);
                without.push(round(&channels, &caller, &plain).await);
            }
        }
        let (without, with) = (median(&mut without), median(&mut with));
        println!("Validate over gRPC, {CLIENTS} clients x {CALLS_PER_CLIENT} calls, median of {ROUNDS} rounds each, A B B A order");
        println!("| key | calls/s (median) |");
        println!("| --- | --- |");
        println!("| no rate limit | {without:.0} |");
        println!("| rate limit attached (never refusing) | {with:.0} |");
        println!("ratio with/without: {:.3}", with / without);

        let _ = stop.send(());
        server.await.expect("server task").expect("server stops cleanly");
    });
}
