//! keyward: an API-key service for machine-to-machine access.
//!
//! Keys are `<prefix>_<body>`; only a BLAKE3 digest of each secret is
//! stored. Validation runs from an in-memory index, compares digests in
//! constant time, and tells callers only "invalid" for every kind of bad key.
//!
//! # Layout
//!
//! | module | concept |
//! | --- | --- |
//! | [`key`] | the key format: prefix, id, secret, checksum, digest |
//! | [`permission`] | permission grammar and wildcard matching, role names |
//! | [`cidr`] | CIDR allow-lists for keys |
//! | [`model`] | domain types and their rules (what a rotation does to a key, how a role update merges), changes, audit actions; [`model::query`]: what the admin API asks of the store |
//! | [`clock`] | time as a parameter (wall clock, manual clock for tests) |
//! | [`store`] | SQLite or PostgreSQL persistence, a file per aggregate (keys, roles, audit) plus the index's sync; every write is one transaction with its audit record, and notifies the [change feed](store::feed) |
//! | [`replica`] | many replicas on PostgreSQL: following the change feed, resyncs, fail-static then closed |
//! | [`freshness`] | how current the index is known to be: confirmed by [`replica`], checked by [`validate`] |
//! | [`index`] | the in-memory index of live keys and roles, changed only by [`model::Change`]s |
//! | [`validate`] | the security core: parse → look up → verify → state → rate-limit → authorize → use cap; a connection's proven caller credential ([`validate::ProvenCredential`]) |
//! | [`rate_limit`] | per-key GCRA limits (governor), idle state reclaimed |
//! | [`usage`] | last-used and use counts, batched off the hot path |
//! | [`auth`] | caller authentication from `authorization: Bearer` metadata; no-escalation rule |
//! | [`scope`] | administration scope: which keys a narrow admin key may mint and manage (its owner, tenant, and keys it minted) |
//! | [`lifecycle`] | mint, get, list, rotate, revoke; roles; audit queries |
//! | [`trust`] | trust policies: which CI jobs' OIDC identity tokens may be exchanged for which keys |
//! | [`oidc`] | verifying an OIDC identity token: discovery, the issuer's keys (cached), the JWT and its claims |
//! | [`exchange`] | the exchange: identity token → verified → a short-lived key, one generic refusal |
//! | [`bootstrap`] | first run: built-in roles and the first admin key |
//! | [`service`] | the gRPC edge: wire ↔ domain conversions; Validate's answer written straight from the decision (`service::keys::wire`) |
//! | [`gateway`] | proxies in front of a service: Envoy's ext_authz [`gateway::ext_authz`] on the gRPC port, forward-auth and Validate in JSON on the HTTP listener ([`gateway::http`]), both through Validate's own path |
//! | [`hardening`] | the server process itself: no core dumps, not dumpable |
//! | [`server`] | startup, serving, graceful shutdown; [`server::Settings`] holds every default |
//! | [`telemetry`] | logging, and a span per RPC with its request id |
//! | [`metrics`] | Prometheus metrics (`keyward_*`), recorded by the services, the lifecycle and the change feed; [`metrics::http`] serves `GET /metrics` |
//! | [`text`] | what stored free text (owner, description, label values) may contain |
//! | [`tls`] | TLS on the gRPC port and the HTTP listener: certificates reloaded under a running server, optional client certificates (mTLS) |
//! | [`error`] | which error type is used where, and the one mapping to `tonic::Status` |
//! | [`pb`] | generated protobuf and gRPC code for `keyward.v1` |
//! | [`codec`] | the generated code's protobuf codec: a request that does not decode (e.g. a string that is not UTF-8) is `INVALID_ARGUMENT` naming the field; [`codec::write`], pieces for the messages written by hand |

pub mod auth;
pub mod bootstrap;
pub mod cidr;
pub mod clock;
pub mod codec;
pub mod error;
pub mod exchange;
pub mod freshness;
pub mod gateway;
pub mod hardening;
pub mod index;
pub mod key;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod oidc;
pub mod permission;
pub mod rate_limit;
pub mod replica;
pub mod scope;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;
pub mod text;
pub mod tls;
pub mod trust;
pub mod usage;
pub mod validate;

/// Generated code for the `keyward.v1` protobuf package (`proto/keyward/v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("keyward.v1");

    /// Encoded descriptors of `keyward.v1`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("keyward_descriptor");
}
