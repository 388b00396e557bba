//! Integration tests: the real server over gRPC. One binary, one module per area.

mod audit;
mod helpers;
mod lifecycle;
mod limits;
mod roles;
mod scoped;
mod secrets;
mod validate;
