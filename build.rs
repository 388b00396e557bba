//! Compiles `proto/keyward/v1/*.proto` with protox (a pure-Rust protobuf
//! compiler), so building keyward needs nothing but cargo: no system `protoc`.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/keyward/v1/key_service.proto",
    "proto/keyward/v1/admin_service.proto",
    "proto/keyward/v1/trust_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;

    // gRPC reflection serves this descriptor set (see `server.rs`).
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("keyward_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;

    // `codec.rs`: tonic-prost's codec, but a request that does not decode is
    // INVALID_ARGUMENT naming the field rather than INTERNAL.
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        .compile_fds(descriptors)?;

    // `gateway::ext_authz`: Envoy's `envoy.service.auth.v3.Authorization`
    // server, the same on the wire as envoy-types' generated one, but over
    // messages that hold only what keyward reads from a `CheckRequest` and
    // writes into a `CheckResponse` (`gateway/ext_authz/wire.rs`), through
    // keyward's codec.
    let check = tonic_prost_build::manual::Method::builder()
        .name("check")
        .route_name("Check")
        .input_type("crate::gateway::ext_authz::wire::CheckRequest")
        .output_type("crate::gateway::ext_authz::wire::CheckResponse")
        .codec_path("crate::codec::Codec")
        .build();
    let authorization = tonic_prost_build::manual::Service::builder()
        .name("Authorization")
        .package("envoy.service.auth.v3")
        .method(check)
        .build();

    // `service::keys::wire`: the server of `keyward.v1.KeyService`, which
    // answers Validate with a response written straight from the decision
    // rather than the generated `ValidateResponse` (same bytes on the wire;
    // clients, keywardctl's included, keep the generated stubs above).
    let validate = tonic_prost_build::manual::Method::builder()
        .name("validate")
        .route_name("Validate")
        .input_type("crate::pb::ValidateRequest")
        .output_type("crate::service::keys::wire::ValidateAnswer")
        .codec_path("crate::codec::Codec")
        .build();
    let key_service = tonic_prost_build::manual::Service::builder()
        .name("KeyService")
        .package("keyward.v1")
        .method(validate)
        .build();
    tonic_prost_build::manual::Builder::new()
        .build_client(false)
        .compile(&[authorization, key_service]);
    Ok(())
}
