//! `ticketing token <userId>`: prints a signed HS256 dev JWT.

use anyhow::Context;

use crate::{cli::TokenArgs, system::dev_secret_path};

/// Signs with JWT_SECRET, or with the secret `ticketing dev` generated.
pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let secret = match args.jwt_secret {
        Some(secret) => secret,
        None => std::fs::read_to_string(dev_secret_path())
            .map(|s| s.trim().to_owned())
            .context("JWT_SECRET is unset and `ticketing dev` has not generated one yet")?,
    };
    let ttl = i64::try_from(args.ttl.as_secs()).unwrap_or(i64::MAX);
    println!("{}", edge::auth::issue_token(&secret, &args.user_id, args.admin, ttl)?);
    Ok(())
}
