//! Compiles `ticketing/**/*.proto` with protox (a pure-Rust protobuf
//! compiler), so a fresh machine builds with cargo alone, no system protoc.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "ticketing/events/v1/events.proto",
    "ticketing/booking/v1/booking.proto",
    "ticketing/payment/v1/payment.proto",
    "ticketing/feed/v1/feed.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("ticketing_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_fds(descriptors)?;
    Ok(())
}
