//! The gRPC edge: converts wire types to domain types (and back) and calls
//! the validator or the lifecycle. No decision is made here that the layers
//! below do not make; the core never sees a protobuf type.

mod admin;
mod convert;
pub(crate) mod keys;
mod trust;

pub use admin::AdminService;
pub use keys::{Answer, Decision, KeyService, WipedOnDrop};
/// The gRPC server of [`KeyService`] (`keyward.v1.KeyService`).
pub type KeyServiceServer = keys::wire::server::key_service_server::KeyServiceServer<KeyService>;
pub use trust::{ExchangeService, TrustService};
