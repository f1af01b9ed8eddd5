//! `ticketing migrate` and `ticketing rebuild-projections`.

use crate::cli::StoresArgs;

/// Creates the service databases if missing and migrates them.
pub async fn migrate(args: &StoresArgs) -> anyhow::Result<()> {
    for (name, migrator) in [
        (&args.booking_database, &booking_service::store::MIGRATIONS),
        (&args.payment_database, &payment_service::store::MIGRATIONS),
    ] {
        let pool = runtime::db::connect_service_db(args.database.url(), name, 2, migrator).await?;
        if name == &args.booking_database {
            // The read models' schema, which a service without ownership
            // could not create on first use.
            kernel::projection::ensure(&pool, &booking_service::store::views::BookingViews).await?;
        }
        pool.close().await;
        tracing::info!(database = name, "migrated");
    }
    Ok(())
}

/// Rebuilds the booking read models from the event store (blue/green swap).
pub async fn rebuild_projections(args: &StoresArgs) -> anyhow::Result<()> {
    let pool = runtime::db::connect_existing_db(
        args.database.url(),
        &args.booking_database,
        4,
        &booking_service::store::MIGRATIONS,
    )
    .await?;
    let replayed = kernel::projection::rebuild(&pool, &booking_service::store::views::BookingViews).await?;
    println!("rebuilt booking_views from {replayed} events");
    Ok(())
}
