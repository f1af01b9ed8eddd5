//! What verifying a bearer token the process has not seen costs (the
//! first request of each person at an on-sale), and one it has (every
//! later request): `Verifier::verify` over distinct HS256 tokens, then the
//! same tokens again. Run it under `valgrind --tool=callgrind` for counts
//! that do not depend on what else the machine does.
//!
//! ```text
//! cargo run --release -p edge --example verify_cost
//! ```

use std::time::Instant;

const TOKENS: usize = 10_000;
const SECRET: &str = "a-development-secret-of-at-least-32-bytes";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tokens: Vec<String> = (0..TOKENS)
        .map(|n| edge::auth::issue_token(SECRET, &format!("person{n}"), false, 3_600))
        .collect::<Result<_, _>>()?;
    let verifier = edge::auth::Verifier::new(Some(SECRET), None, None)?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    runtime.block_on(async {
        for round in ["first sight", "seen before"] {
            let started = Instant::now();
            for token in &tokens {
                std::hint::black_box(verifier.verify(token).await.map_err(|e| e.to_string())?);
            }
            let per_token = started.elapsed().as_secs_f64() * 1e6 / TOKENS as f64;
            println!("{round}: {per_token:.2} µs per token");
        }
        Ok::<_, String>(())
    })?;
    Ok(())
}
