//! Compiles `stylefarm/v1/stylefarm.proto` (and KEDA's external scaler
//! contract, `keda/externalscaler.proto`) with protox (pure Rust: no system
//! protoc) and generates tonic clients and servers, plus the descriptor set that
//! server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["stylefarm/v1/stylefarm.proto", "keda/externalscaler.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let files = protox::compile(protos, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("stylefarm_descriptor.bin"), prost::Message::encode_to_vec(&files))?;
    tonic_prost_build::configure().bytes(".").build_server(true).build_client(true).compile_fds(files)?;
    Ok(())
}
