//! `ticketing check`: reports every broken invariant (the checks are in
//! `crate::check`).

use std::process::ExitCode;

use crate::cli::StoresArgs;

/// Prints every broken invariant; exit 1 on any. Creates and migrates
/// nothing: a missing or unmigrated database is an error.
pub async fn run(args: &StoresArgs) -> anyhow::Result<ExitCode> {
    let connect = |name: &str, migrator| {
        let url = args.database.url().to_owned();
        let name = name.to_owned();
        async move { runtime::db::connect_existing_db(&url, &name, 2, migrator).await }
    };
    let booking = connect(&args.booking_database, &booking_service::store::MIGRATIONS).await?;
    let payment = connect(&args.payment_database, &payment_service::store::MIGRATIONS).await?;
    let violations = crate::audit::check(&booking, &payment).await?;
    for violation in &violations {
        println!("VIOLATION: {violation}");
    }
    if violations.is_empty() {
        println!("ok: no invariant violated");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} violation(s)", violations.len());
        Ok(ExitCode::FAILURE)
    }
}
