//! `ticketing booking`, `ticketing payment`: one service per process
//! (`ticketing gateway` is `gateway::run`).

use anyhow::Context;
use booking_service::BookingApp;
use edge::shutdown;
use payment_service::PaymentApp;

use crate::cli::{BookingArgs, PaymentArgs};

/// Runs the booking-service until a signal.
pub async fn booking(args: BookingArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal(args.service.lifecycle.bound());
    let brokers = args.service.kafka.kafka_brokers.clone().context("KAFKA_BROKERS is required")?;
    edge::metrics::serve(args.service.metrics.metrics_addr, shutdown.clone()).await?;
    let app = BookingApp::build(
        &args.service.database,
        &args.service.kafka,
        &brokers,
        args.booking,
        args.service.policy,
        &args.service.security,
    )
    .await?
    .with_feed(args.service.feed);
    app.run(shutdown, args.service.lifecycle.drain()).await
}

/// Runs the payment-service until a signal.
pub async fn payment(args: PaymentArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal(args.service.lifecycle.bound());
    let brokers = args.service.kafka.kafka_brokers.clone().context("KAFKA_BROKERS is required")?;
    edge::metrics::serve(args.service.metrics.metrics_addr, shutdown.clone()).await?;
    let app = PaymentApp::build(
        &args.service.database,
        &args.service.kafka,
        &brokers,
        args.payment,
        args.service.policy,
        &args.booking_grpc_url,
        &args.service.security,
    )
    .await?
    .with_feed(args.service.feed);
    app.run(shutdown, args.service.lifecycle.drain()).await
}
