//! Many replicas over one PostgreSQL database.
//!
//! 1. **Revocation propagation**: two replicas, A and B, on one database.
//!    1,000 times: revoke a key on A over gRPC and poll B's Validate (over
//!    gRPC, back to back) until it refuses the key. The time counted runs
//!    from sending the revoke to B's first refusal; the time from A's
//!    answer (the commit) to B's refusal is reported too.
//! 2. **Validate throughput, PostgreSQL vs SQLite**: one server on each, both
//!    answering from their in-memory index, measured in alternating rounds
//!    (A B B A …) in one run; medians over the rounds.
//!
//! Needs PostgreSQL (`KEYWARD_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`); a scratch database is
//! created and dropped. Run: `cargo bench --bench replicas`.

mod common;

use std::{sync::Arc, time::Instant};

use common::{CALLS_PER_CLIENT, CLIENTS, Server, is_valid, median, mint, percentile, round};
use keyward::{
    pb::{self, admin_service_client::AdminServiceClient, key_service_client::KeyServiceClient},
    testing::ScratchDatabase,
};

/// Revocations timed.
const REVOCATIONS: usize = 1_000;
/// Throughput rounds per store.
const ROUNDS: usize = 10;

fn main() {
    if common::only_listing() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let Some(database) = ScratchDatabase::create().await else {
            eprintln!("this benchmark needs PostgreSQL");
            std::process::exit(1);
        };
        let dir = tempfile::tempdir().expect("temporary directory");
        let admin = propagation(database.url(), dir.path()).await;
        throughput(database.url(), &admin, dir.path()).await;
    });
}

/// Runs the propagation benchmark; returns the database's admin key.
async fn propagation(database_url: &str, dir: &std::path::Path) -> String {
    let a = Server::start(database_url, dir).await;
    let b = Server::start(database_url, dir).await;
    let (a_channel, b_channel) = (a.channels(1).await.remove(0), b.channels(1).await.remove(0));
    let admin = a.admin.clone();
    let mut keys = Vec::with_capacity(REVOCATIONS);
    for _ in 0..REVOCATIONS {
        keys.push(mint(&a_channel, &admin, None).await);
    }
    let mut on_b = KeyServiceClient::new(b_channel);
    for (_, key) in &keys {
        while !is_valid(&mut on_b, &admin, key).await {}
    }

    let mut on_a = AdminServiceClient::new(a_channel);
    let (mut from_request, mut from_commit, mut polls) = (Vec::new(), Vec::new(), 0_usize);
    for (id, key) in &keys {
        let request = pb::RevokeKeyRequest {
            id: id.clone(),
            reason: "benchmark".to_owned(),
        };
        let sent = Instant::now();
        on_a.revoke_key(common::authed(&admin, request))
            .await
            .expect("revoke");
        let committed = Instant::now();
        while is_valid(&mut on_b, &admin, key).await {
            polls += 1;
        }
        let refused = Instant::now();
        from_request.push((refused - sent).as_secs_f64() * 1e3);
        from_commit.push((refused - committed).as_secs_f64() * 1e3);
    }
    println!("Revocation propagation A -> B over one PostgreSQL, {REVOCATIONS} revocations");
    println!("| measured from | p50 | p99 | max |");
    println!("| --- | --- | --- | --- |");
    for (label, values) in [
        ("revoke sent to A", &mut from_request),
        ("A's answer (commit)", &mut from_commit),
    ] {
        println!(
            "| {label} | {:.2} ms | {:.2} ms | {:.2} ms |",
            percentile(values, 50.0),
            percentile(values, 99.0),
            percentile(values, 100.0)
        );
    }
    println!(
        "B still said valid after A's answer on {:.1} Validate calls per revocation (mean)",
        polls as f64 / REVOCATIONS as f64
    );
    b.stop().await;
    a.stop().await;
    admin
}

/// `postgres_admin`: the PostgreSQL database was initialised before.
async fn throughput(postgres_url: &str, postgres_admin: &str, dir: &std::path::Path) {
    let sqlite_url = format!("sqlite://{}", dir.join("keyward.db").display());
    let sqlite = Server::start(&sqlite_url, dir).await;
    let postgres = Server::start(postgres_url, dir).await;

    let mut stores = Vec::new();
    for (server, admin) in [
        (&sqlite, sqlite.admin.as_str()),
        (&postgres, postgres_admin),
    ] {
        let channels = server.channels(CLIENTS).await;
        let (_, caller) = mint(&channels[0], admin, None).await;
        let (_, key) = mint(&channels[0], admin, None).await;
        let (caller, key): (Arc<str>, Arc<str>) = (caller.into(), key.into());
        round(&channels, &caller, &key).await; // warm-up
        stores.push((channels, caller, key, Vec::new()));
    }
    for i in 0..ROUNDS {
        let order: [usize; 2] = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let (channels, caller, key, rates) = &mut stores[which];
            rates.push(round(channels, caller, key).await);
        }
    }
    let sqlite_rate = median(&mut stores[0].3);
    let postgres_rate = median(&mut stores[1].3);
    println!();
    println!(
        "Validate over gRPC from the index, {CLIENTS} clients x {CALLS_PER_CLIENT} calls, median of {ROUNDS} rounds each, A B B A order"
    );
    println!("| store | calls/s (median) |");
    println!("| --- | --- |");
    println!("| SQLite | {sqlite_rate:.0} |");
    println!("| PostgreSQL | {postgres_rate:.0} |");
    println!(
        "ratio PostgreSQL/SQLite: {:.3}",
        postgres_rate / sqlite_rate
    );
    postgres.stop().await;
    sqlite.stop().await;
}
