//! `ticketing refunds`: the refunds the PSP kept refusing, for a person to
//! settle (docs/RUNBOOK.md, "RefundsNeedReview").

use payment_service::domain::intent::RefundReview;
use payment_service::refund_review;

use crate::cli::{RefundsAction, RefundsArgs};

/// Lists, retries or resolves; never creates or migrates anything.
pub async fn run(args: RefundsArgs) -> anyhow::Result<()> {
    let pool = runtime::db::connect_existing_db(
        args.database.url(),
        &args.payment_database,
        2,
        &payment_service::store::MIGRATIONS,
    )
    .await?;
    match args.action {
        RefundsAction::List => {
            let waiting = refund_review::in_review(&pool).await?;
            for refund in &waiting {
                println!(
                    "{}\tbooking {}\tuser {}\t{} {}\t{} attempts\tsince {}\t{}",
                    refund.payment_intent_id,
                    refund.booking_id,
                    refund.user_id,
                    refund.amount,
                    refund.currency,
                    refund.attempts,
                    refund.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    refund.reason
                );
            }
            println!("{} refund(s) need review", waiting.len());
        }
        RefundsAction::Retry { payment_intent_id, operator } => {
            refund_review::review(&pool, &payment_intent_id, RefundReview::Retry, &operator).await?;
            println!("{payment_intent_id}: the refund worker tries again under the same PSP key");
        }
        RefundsAction::Resolve { payment_intent_id, operator, note } => {
            anyhow::ensure!(!note.trim().is_empty(), "--note must say what was done");
            refund_review::review(&pool, &payment_intent_id, RefundReview::RefundedByHand { note }, &operator).await?;
            println!("{payment_intent_id}: recorded as refunded by hand; the booking becomes refunded");
        }
    }
    pool.close().await;
    Ok(())
}
