//! End-to-end tests: the real `keywardctl` binary against the real keyward
//! server, in-process on port 0 (`keyward::testing`) with a fresh SQLite
//! database per test. One binary, one module per command group.
//!
//! Every command run through `TestServer::run*` also checks that neither the
//! admin key nor any key the test marked secret appears in stdout or stderr.

mod audit;
mod completions;
mod helpers;
mod keys;
mod rate_limits;
mod roles;
mod tls;
mod trust;
