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
    Ok(())
}
