//! Integration tests: the real server over gRPC. One binary, one module per area.

mod helpers;
mod lifecycle;
mod secrets;
mod validate;
