//! `sqlx::migrate!` embeds `migrations/` at compile time, but on stable Rust
//! it cannot tell cargo to watch that folder: without this, an edited or
//! added migration is not built in until some source file changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
