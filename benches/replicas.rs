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
//! 3. **A replica under continuous writes**: A and B again, on a fresh
//!    database, at the default settings (stale after 60 s). For
//!    `WRITE_LOAD` (longer than that limit) A mints without pause, from 4
//!    connections × 8 calls in flight; meanwhile one key is validated on A
//!    and on B every 100 ms, and a revocation on A is timed until B refuses
//!    the key, every 250 ms.
//!
//! Sections run in that order; name some to run only those, e.g.
//! `cargo bench --bench replicas -- write-load`.
//!
//! Needs PostgreSQL (`KEYWARD_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`); a scratch database is
//! created and dropped. Run: `cargo bench --bench replicas`.

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::{CALLS_PER_CLIENT, CLIENTS, channels, is_valid, median, mint, percentile, round};
use keyward::{
    pb::{self, admin_service_client::AdminServiceClient, key_service_client::KeyServiceClient},
    testing::{Backend, ScratchDatabase, authed},
};
use tonic::transport::Channel;

/// Revocations timed.
const REVOCATIONS: usize = 1_000;
/// Throughput rounds per store.
const ROUNDS: usize = 10;
/// How long A takes writes: longer than the default `--max-staleness`.
const WRITE_LOAD: Duration = Duration::from_secs(75);
/// Connections minting on A, and calls in flight on each.
const WRITERS: (usize, usize) = (4, 8);

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
        let sections: Vec<String> = std::env::args()
            .skip(1)
            .filter(|arg| !arg.starts_with('-'))
            .collect();
        let wanted = |section: &str| sections.is_empty() || sections.iter().any(|s| s == section);
        if wanted("propagation") || wanted("throughput") {
            let admin = propagation(database.url()).await;
            if wanted("throughput") {
                throughput(database.url(), &admin).await;
            }
        }
        if wanted("write-load") {
            let Some(database) = ScratchDatabase::create().await else {
                eprintln!("this benchmark needs PostgreSQL");
                std::process::exit(1);
            };
            write_load(database.url()).await;
        }
    });
}

/// Runs the propagation benchmark; returns the database's admin key.
async fn propagation(database_url: &str) -> String {
    let mut a = common::start_on(database_url).await;
    let mut b = a.replica().await;
    let (a_channel, b_channel) = (a.channel().await, b.channel().await);
    let admin = a.admin_key.clone();
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
        on_a.revoke_key(authed(&admin, request))
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
    print_propagation(&mut from_request, &mut from_commit);
    println!(
        "B still said valid after A's answer on {:.1} Validate calls per revocation (mean)",
        polls as f64 / REVOCATIONS as f64
    );
    b.stop().await;
    a.stop().await;
    admin
}

/// `postgres_admin`: the PostgreSQL database was initialised before.
async fn throughput(postgres_url: &str, postgres_admin: &str) {
    let mut sqlite = common::start(Backend::Sqlite).await;
    let mut postgres = common::start_on(postgres_url).await;

    let mut stores = Vec::new();
    for (server, admin) in [
        (&sqlite, sqlite.admin_key.as_str()),
        (&postgres, postgres_admin),
    ] {
        let channels = channels(server, CLIENTS).await;
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

/// What one replica answered to Validate during the write load.
#[derive(Debug, Default)]
struct Answered {
    valid: usize,
    invalid: usize,
    errors: usize,
    first_error: Option<String>,
}

/// Validates `key` on `channel` every 100 ms until `until`.
async fn validate_every_100ms(
    channel: Channel,
    admin: Arc<str>,
    key: String,
    until: Instant,
) -> Answered {
    let mut client = KeyServiceClient::new(channel);
    let mut answered = Answered::default();
    while Instant::now() < until {
        let request = pb::ValidateRequest {
            key: key.clone(),
            ..Default::default()
        };
        match client.validate(authed(&admin, request)).await {
            Ok(response) if response.get_ref().valid => answered.valid += 1,
            Ok(_) => answered.invalid += 1,
            Err(status) => {
                answered.errors += 1;
                answered
                    .first_error
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answered
}

/// Mints on `channel` back to back until `until`; returns (minted, refused).
async fn mint_until(channel: Channel, admin: Arc<str>, until: Instant) -> (usize, usize) {
    let mut client = AdminServiceClient::new(channel);
    let (mut minted, mut refused) = (0, 0);
    while Instant::now() < until {
        match client
            .mint_key(authed(&admin, pb::MintKeyRequest::default()))
            .await
        {
            Ok(_) => minted += 1,
            Err(_) => refused += 1,
        }
    }
    (minted, refused)
}

/// Every 250 ms until `until`, revokes one of `keys` on A and polls B until
/// it refuses it; returns the times (ms) from the request and from A's answer.
async fn revoke_every_250ms(
    a: Channel,
    b: Channel,
    admin: Arc<str>,
    keys: Vec<(String, String)>,
    until: Instant,
) -> (Vec<f64>, Vec<f64>) {
    let (mut on_a, mut on_b) = (AdminServiceClient::new(a), KeyServiceClient::new(b));
    let (mut from_request, mut from_commit) = (Vec::new(), Vec::new());
    for (id, key) in keys {
        if Instant::now() >= until {
            break;
        }
        let request = pb::RevokeKeyRequest {
            id,
            reason: "benchmark".to_owned(),
        };
        let sent = Instant::now();
        on_a.revoke_key(authed(&admin, request))
            .await
            .expect("revoke under write load");
        let committed = Instant::now();
        while is_valid(&mut on_b, &admin, &key).await {}
        let refused = Instant::now();
        from_request.push((refused - sent).as_secs_f64() * 1e3);
        from_commit.push((refused - committed).as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (from_request, from_commit)
}

/// The write-load section: see the module's documentation.
async fn write_load(database_url: &str) {
    let mut a = common::start_on(database_url).await;
    let mut b = a.replica().await;
    let admin: Arc<str> = a.admin_key.clone().into();
    let (a_channels, b_channels) = (channels(&a, WRITERS.0 + 2).await, channels(&b, 2).await);
    let (_, probe) = mint(&a_channels[0], &admin, None).await;
    // Enough keys to revoke one every 250 ms for the whole load.
    let revocable = (WRITE_LOAD.as_millis() / 250) as usize + 10;
    let mut keys = Vec::with_capacity(revocable);
    for _ in 0..revocable {
        keys.push(mint(&a_channels[0], &admin, None).await);
    }
    let mut on_b = KeyServiceClient::new(b_channels[0].clone());
    for (_, key) in keys.iter().chain([&(String::new(), probe.clone())]) {
        while !is_valid(&mut on_b, &admin, key).await {}
    }

    let started = Instant::now();
    let until = started + WRITE_LOAD;
    let mut writers = Vec::new();
    for channel in &a_channels[..WRITERS.0] {
        for _ in 0..WRITERS.1 {
            writers.push(tokio::spawn(mint_until(
                channel.clone(),
                admin.clone(),
                until,
            )));
        }
    }
    let on_a = tokio::spawn(validate_every_100ms(
        a_channels[WRITERS.0].clone(),
        admin.clone(),
        probe.clone(),
        until,
    ));
    let on_b = tokio::spawn(validate_every_100ms(
        b_channels[0].clone(),
        admin.clone(),
        probe,
        until,
    ));
    let revocations = tokio::spawn(revoke_every_250ms(
        a_channels[WRITERS.0 + 1].clone(),
        b_channels[1].clone(),
        admin.clone(),
        keys,
        until,
    ));
    let (mut minted, mut refused) = (0, 0);
    for writer in writers {
        let (ok, failed) = writer.await.expect("writer");
        minted += ok;
        refused += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (on_a, on_b) = (
        on_a.await.expect("validator"),
        on_b.await.expect("validator"),
    );
    let (mut from_request, mut from_commit) = revocations.await.expect("revoker");

    println!();
    println!(
        "A under continuous writes for {}s (default settings: stale after 60 s), {} connections x {} mints in flight",
        WRITE_LOAD.as_secs(),
        WRITERS.0,
        WRITERS.1
    );
    println!(
        "mints acknowledged: {minted} ({:.0}/s), refused: {refused}",
        minted as f64 / elapsed
    );
    println!("| Validate every 100 ms on | valid | invalid | error (first) |");
    println!("| --- | --- | --- | --- |");
    for (replica, answered) in [("A (taking the writes)", &on_a), ("B", &on_b)] {
        println!(
            "| {replica} | {} | {} | {} {} |",
            answered.valid,
            answered.invalid,
            answered.errors,
            answered.first_error.as_deref().unwrap_or("")
        );
    }
    println!(
        "Revocation A -> B during the load, {} revocations",
        from_request.len()
    );
    print_propagation(&mut from_request, &mut from_commit);
    b.stop().await;
    a.stop().await;
}

/// Prints p50, p99 and max of revocation times (ms), from the request and
/// from A's answer, as a Markdown table.
fn print_propagation(from_request: &mut [f64], from_commit: &mut [f64]) {
    println!("| measured from | p50 | p99 | max |");
    println!("| --- | --- | --- | --- |");
    for (label, values) in [
        ("revoke sent to A", from_request),
        ("A's answer (commit)", from_commit),
    ] {
        println!(
            "| {label} | {:.2} ms | {:.2} ms | {:.2} ms |",
            percentile(values, 50),
            percentile(values, 99),
            percentile(values, 100)
        );
    }
}
