//! Compiles `proto/allot/v1/*.proto` with protox (pure Rust, no `protoc`), writes the encoded
//! descriptor set for gRPC reflection, and generates prost messages and tonic stubs from it.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "allot/v1/common.proto",
        "allot/v1/entitlements.proto",
        "allot/v1/admin.proto",
        "allot/v1/fair_use.proto",
        "allot/v1/pricing.proto",
        "allot/v1/subsidy.proto",
    ];
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let fds = protox::compile(files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("allot_descriptor.bin"), fds.encode_to_vec())?;

    // Our codec: prost's, with undecodable requests answered INVALID_ARGUMENT (src/codec.rs).
    // `google.rpc.Status` (the error of one call in a stream) is tonic-types' own type, the one
    // `tonic_types::StatusExt` reads and writes.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::Codec")
        .extern_path(".google.rpc", "::tonic_types::pb")
        .compile_fds(fds)?;
    Ok(())
}
