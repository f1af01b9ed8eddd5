//! `ticketing token <userId>`: prints a signed HS256 dev JWT.

use anyhow::Context;

use crate::{cli::TokenArgs, system::dev_secret_path};

/// Signs with JWT_SECRET, or with the secret `ticketing dev` generated.
pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let secret = secret(args.jwt_secret)?;
    let ttl = i64::try_from(args.ttl.as_secs()).unwrap_or(i64::MAX);
    let role = args.role.as_deref().or(args.admin.then_some(edge::roles::ADMIN_ROLE));
    println!("{}", edge::auth::issue_token_with_role(&secret, &args.user_id, role, ttl)?);
    Ok(())
}

/// The given secret, or the one `ticketing dev` generated.
pub fn secret(given: Option<String>) -> anyhow::Result<String> {
    match given {
        Some(secret) => Ok(secret),
        None => std::fs::read_to_string(dev_secret_path())
            .map(|s| s.trim().to_owned())
            .context("JWT_SECRET is unset and `ticketing dev` has not generated one yet"),
    }
}
