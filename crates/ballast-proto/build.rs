//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates prost
//! messages; tonic client/server stubs only when the `grpc` feature is enabled, so
//! non-gRPC users (WAL, MVCC) never compile tonic.

use std::{env, fs, io, path::PathBuf};

/// Every file we compile, relative to `proto/`.
const PROTOS: &[&str] = &[
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
    "ballast/internal.proto",
    "ballast/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest_dir.join("../../proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let grpc = env::var_os("CARGO_FEATURE_GRPC").is_some();

    println!("cargo:rerun-if-changed={}", proto_dir.display());
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", proto_dir.join(proto).display());
    }

    let mut compiler = protox::Compiler::new([&proto_dir])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;

    fs::write(
        out_dir.join("file_descriptor_set.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .build_transport(grpc)
        .out_dir(&out_dir)
        .compile_fds(compiler.file_descriptor_set())
        .map_err(|e: io::Error| -> Box<dyn std::error::Error> { e.into() })?;
    Ok(())
}
