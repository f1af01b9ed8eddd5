//! Writing postings to the append-only ledger, idempotently by business id.

use sqlx::PgConnection;

use crate::{domain::ledger::Posting, error::PaymentError};

/// Writes a balanced posting once. A replay with the same amounts writes
/// nothing; a replay with different amounts is an error.
pub async fn post(conn: &mut PgConnection, posting: &Posting) -> Result<(), PaymentError> {
    if !posting.is_balanced() {
        return Err(PaymentError::Internal(format!("unbalanced posting {}", posting.transaction_id)));
    }
    for entry in &posting.entries {
        let existing: Option<(i64, String)> = sqlx::query_as(
            "insert into ledger_entries (transaction_id, account, direction, amount, currency) \
             values ($1, $2, $3, $4, $5) \
             on conflict (transaction_id, account, direction) do nothing returning amount, currency",
        )
        .bind(&posting.transaction_id)
        .bind(entry.account)
        .bind(entry.direction.as_str())
        .bind(entry.amount)
        .bind(&posting.currency)
        .fetch_optional(&mut *conn)
        .await?;
        if existing.is_none() {
            let (amount, currency): (i64, String) = sqlx::query_as(
                "select amount, currency from ledger_entries where transaction_id = $1 and account = $2 and direction = $3",
            )
            .bind(&posting.transaction_id)
            .bind(entry.account)
            .bind(entry.direction.as_str())
            .fetch_one(&mut *conn)
            .await?;
            if amount != entry.amount || currency != posting.currency {
                return Err(PaymentError::Internal(format!(
                    "ledger posting {} replayed with a different amount ({amount} {currency} recorded, {} {} now)",
                    posting.transaction_id, entry.amount, posting.currency
                )));
            }
        }
    }
    Ok(())
}
