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

mod common;

use std::{sync::Arc, time::Duration};

use common::{CALLS_PER_CLIENT, CLIENTS, median, mint, round};
use keyward::{pb, testing::Backend};

/// Rounds per variant, in A B B A order so neither goes first more often.
const ROUNDS: usize = 10;

fn main() {
    if common::only_listing() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let mut server = common::start(Backend::Sqlite).await;
        let channels = common::channels(&server, CLIENTS).await;
        let never_limiting = pb::RateLimit {
            requests: u32::MAX,
            per: Some(Duration::from_secs(1).try_into().expect("duration")),
            burst: u32::MAX,
        };
        let (_, caller) = mint(&channels[0], &server.admin_key, None).await;
        let (_, plain) = mint(&channels[0], &server.admin_key, None).await;
        let (_, limited) = mint(&channels[0], &server.admin_key, Some(never_limiting)).await;
        let (caller, plain, limited): (Arc<str>, Arc<str>, Arc<str>) =
            (caller.into(), plain.into(), limited.into());

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
        server.stop().await;
    });
}
