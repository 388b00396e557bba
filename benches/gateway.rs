//! Envoy's ext_authz `Check` against `KeyService/Validate`, end to end: the
//! real server on a random port, real tonic clients, the same generator
//! (`common::round_with`), the same key, caller and required permission.
//!
//! A `Check` carries what Envoy sends for an ordinary request (a dozen
//! headers, the route's `keyward_permissions`, the peer's address) and gets
//! the upstream headers and dynamic metadata back: what it costs over a
//! Validate is the bigger message both ways and the translation. Rounds
//! interleave the two (A B B A …); the figures are medians over the rounds.
//!
//! Run: `cargo bench --bench gateway` (prints a table; see BENCHMARKS.md).

mod common;

use std::sync::Arc;

use common::{CALLS_PER_CLIENT, CLIENTS, median, mint, round, round_with};
use envoy_types::pb::envoy::{
    config::core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier},
    service::auth::v3::{
        AttributeContext, CheckRequest,
        attribute_context::{HttpRequest, Peer, Request},
        authorization_client::AuthorizationClient,
    },
};
use keyward::testing::{Backend, authed};

/// Rounds per variant, in A B B A order so neither goes first more often.
const ROUNDS: usize = 10;

/// What Envoy sends about a request: its headers (all of them, as Envoy
/// does by default, or only `authorization`, as `examples/envoy/envoy.yaml`'s
/// `allowed_headers` asks), the route's permission, the client's address.
fn check_request(key: &str, all_headers: bool) -> CheckRequest {
    let bearer = format!("Bearer {key}");
    let mut headers = vec![("authorization", bearer.as_str())];
    if all_headers {
        headers.extend([
            (":authority", "api.example.com"),
            (":method", "GET"),
            (":path", "/deploy/42"),
            (":scheme", "https"),
            ("accept", "application/json"),
            ("accept-encoding", "gzip"),
            ("user-agent", "curl/8.5.0"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "5f2b9c3e-7d1a-4c8e-9b6f-0a1d2e3f4a5b"),
            ("x-envoy-expected-rq-timeout-ms", "15000"),
        ]);
    }
    let headers = headers
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "203.0.113.7".to_owned(),
                        port_specifier: Some(PortSpecifier::PortValue(51_234)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "12345678901234567890".to_owned(),
                    method: "GET".to_owned(),
                    path: "/deploy/42".to_owned(),
                    host: "api.example.com".to_owned(),
                    scheme: "https".to_owned(),
                    protocol: "HTTP/2".to_owned(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [(
                "keyward_permissions".to_owned(),
                "keyward:validate".to_owned(),
            )]
            .into(),
            ..Default::default()
        }),
    }
}

fn main() {
    if common::only_listing() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let mut server = common::start(Backend::Sqlite).await;
        let channels = common::channels(&server, CLIENTS).await;
        let (_, caller) = mint(&channels[0], &server.admin_key, None).await;
        let (_, key) = mint(&channels[0], &server.admin_key, None).await;
        let (caller, key): (Arc<str>, Arc<str>) = (caller.into(), key.into());
        let trimmed = Arc::new(check_request(&key, false));
        let full = Arc::new(check_request(&key, true));
        let check = |request: &Arc<CheckRequest>| {
            let (caller, request) = (caller.clone(), request.clone());
            round_with(&channels, move |channel| {
                let mut client = AuthorizationClient::new(channel);
                let (caller, request) = (caller.clone(), request.clone());
                async move {
                    for _ in 0..CALLS_PER_CLIENT {
                        let response = client
                            .check(authed(&caller, CheckRequest::clone(&request)))
                            .await
                            .expect("Check answers")
                            .into_inner();
                        assert_eq!(
                            response.status.map(|s| s.code),
                            Some(0),
                            "the benchmarked key must stay allowed"
                        );
                    }
                }
            })
        };

        // Warm up connections, allocators and caches.
        round(&channels, &caller, &key).await;
        check(&trimmed).await;
        check(&full).await;
        let (mut validate, mut trimmed_checks, mut full_checks) =
            (Vec::new(), Vec::new(), Vec::new());
        for i in 0..ROUNDS {
            // A B C, then C B A: none goes first more often.
            if i % 2 == 0 {
                validate.push(round(&channels, &caller, &key).await);
                trimmed_checks.push(check(&trimmed).await);
                full_checks.push(check(&full).await);
            } else {
                full_checks.push(check(&full).await);
                trimmed_checks.push(check(&trimmed).await);
                validate.push(round(&channels, &caller, &key).await);
            }
        }
        let validate = median(&mut validate);
        let trimmed = median(&mut trimmed_checks);
        let full = median(&mut full_checks);
        println!(
            "ext_authz Check vs Validate over gRPC, {CLIENTS} clients x {CALLS_PER_CLIENT} calls, median of {ROUNDS} rounds each, A B C C B A order"
        );
        println!("| call | calls/s (median) | / Validate |");
        println!("| --- | --- | --- |");
        println!("| KeyService/Validate | {validate:.0} | 1 |");
        println!(
            "| Check, `authorization` only (envoy.yaml's allowed_headers) | {trimmed:.0} | {:.3} |",
            trimmed / validate
        );
        println!(
            "| Check, a dozen headers (Envoy's default: all) | {full:.0} | {:.3} |",
            full / validate
        );
        server.stop().await;
    });
}
