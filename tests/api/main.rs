//! Integration tests: the real server over gRPC. One binary, one module per
//! area; the harness (`spawn_app`, `on_both_stores!`, …) is
//! `keyward::testing`.

mod admin_scope;
mod audit;
mod binary;
mod bulk;
mod caddy;
mod crash;
mod exchange;
mod gateway;
mod hostile;
mod lifecycle;
mod limits;
mod metrics;
mod nginx;
mod process;
mod proxy;
mod python;
mod replicas;
mod roles;
mod scoped;
mod secrets;
mod tls;
mod transport;
mod upstream;
mod validate;
