//! `ticketing gateway`, `ticketing booking`, `ticketing payment`: one
//! component per process.

use anyhow::Context;
use booking_service::BookingApp;
use gateway::GatewayApp;
use payment_service::PaymentApp;
use shared::shutdown;

use crate::{
    cli::{BookingArgs, GatewayArgs, PaymentArgs},
    system::bound,
};

/// Runs the REST gateway until a signal.
pub async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal(bound(&args.lifecycle));
    let app = GatewayApp::build(&args.gateway, &shutdown).await?;
    app.run(shutdown, args.lifecycle.drain()).await
}

/// Runs the booking-service until a signal.
pub async fn booking(args: BookingArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal(bound(&args.service.lifecycle));
    let brokers = args.service.kafka.kafka_brokers.clone().context("KAFKA_BROKERS is required")?;
    shared::metrics::serve(args.service.metrics.metrics_addr, shutdown.clone()).await?;
    let app = BookingApp::build(
        &args.service.database,
        &args.service.kafka,
        &brokers,
        args.booking,
        args.service.policy,
        &args.service.security,
    )
    .await?;
    app.run(shutdown, args.service.lifecycle.drain()).await
}

/// Runs the payment-service until a signal.
pub async fn payment(args: PaymentArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal(bound(&args.service.lifecycle));
    let brokers = args.service.kafka.kafka_brokers.clone().context("KAFKA_BROKERS is required")?;
    shared::metrics::serve(args.service.metrics.metrics_addr, shutdown.clone()).await?;
    let app = PaymentApp::build(
        &args.service.database,
        &args.service.kafka,
        &brokers,
        args.payment,
        args.service.policy,
        &args.booking_grpc_url,
        &args.service.security,
    )
    .await?;
    app.run(shutdown, args.service.lifecycle.drain()).await
}
