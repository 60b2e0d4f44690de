//! Compiles `proto/` with protox (a Rust protobuf compiler, so no system `protoc`)
//! and generates the tonic service and prost messages from it. The encoded file
//! descriptor set is kept too: `portcullis check` reads CheckRequests written in
//! protobuf's JSON mapping through it.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/envoy/service/auth/v3/external_auth.proto",
    "proto/envoy/service/auth/v3/attribute_context.proto",
    "proto/envoy/config/core/v3/base.proto",
    "proto/envoy/config/core/v3/address.proto",
    "proto/envoy/type/v3/http_status.proto",
    "proto/google/rpc/status.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(false).include_imports(true);
    compiler.open_files(PROTOS)?;
    fs::write(
        out_dir.join("portcullis_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's decoding; a CheckResponse encoded in one pass (src/foundation/codec.rs).
        .codec_path("crate::foundation::codec::FastCodec")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
