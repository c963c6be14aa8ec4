//! Compiles `proto/liaison/v1/*.proto` with protox (a pure-Rust protobuf
//! compiler), so a fresh `cargo build` needs no system `protoc`. The encoded
//! descriptor set is also written to `OUT_DIR` for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/liaison/v1/alert.proto",
        "proto/liaison/v1/broker.proto",
        "proto/liaison/v1/agent.proto",
        "proto/liaison/v1/admin.proto",
        "proto/liaison/v1/federation.proto",
        "proto/liaison/v1/bundle.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("liaison_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".liaison.v1.Attachment.content")
        .compile_fds(fds)?;
    Ok(())
}
