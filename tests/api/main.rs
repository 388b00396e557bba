//! Integration tests: the real server over gRPC. One binary, one module per area.

#[macro_use]
mod helpers;

mod audit;
mod lifecycle;
mod limits;
mod proxy;
mod replicas;
mod roles;
mod scoped;
mod secrets;
mod validate;
