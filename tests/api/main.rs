//! Integration tests: the real server over gRPC. One binary, one module per
//! area; the harness (`spawn_app`, `on_both_stores!`, …) is
//! `keyward::testing`.

mod audit;
mod bulk;
mod lifecycle;
mod limits;
mod metrics;
mod proxy;
mod replicas;
mod roles;
mod scoped;
mod secrets;
mod transport;
mod validate;
