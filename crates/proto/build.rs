//! Compiles proto/gancho/v1/*.proto with protox (pure Rust), so no system protoc is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["gancho/v1/event.proto", "gancho/v1/delivery.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    prost_build::Config::new()
        .bytes(["."])
        // Every delivery is moved through several futures; an untraced one pays 8 bytes.
        .boxed(".gancho.v1.Delivery.trace")
        .compile_fds(fds)?;
    Ok(())
}
