//! Double-entry postings: each business transaction is a balanced set of
//! entries keyed by a business id, so replays write nothing twice.

/// The customer's side of a payment.
pub const CUSTOMER_PAYABLE: &str = "CUSTOMER_PAYABLE";
/// The merchant's balance.
pub const MERCHANT_BALANCE: &str = "MERCHANT_BALANCE";

/// One side of a posting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Debit.
    Debit,
    /// Credit.
    Credit,
}

impl Direction {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debit => "debit",
            Self::Credit => "credit",
        }
    }
}

/// One ledger line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Account name.
    pub account: &'static str,
    /// Side.
    pub direction: Direction,
    /// Amount in minor units, > 0.
    pub amount: i64,
}

/// A balanced set of entries under one business id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    /// e.g. `payment:{intent}:capture`.
    pub transaction_id: String,
    /// Currency of every entry.
    pub currency: String,
    /// The lines; debits equal credits.
    pub entries: Vec<Entry>,
}

impl Posting {
    /// True if debits equal credits.
    pub fn is_balanced(&self) -> bool {
        let sum = |d| self.entries.iter().filter(|e| e.direction == d).map(|e| e.amount).sum::<i64>();
        sum(Direction::Debit) == sum(Direction::Credit)
    }
}

/// A captured payment: debit the customer, credit the merchant.
pub fn capture(payment_intent_id: &str, amount: i64, currency: &str) -> Posting {
    Posting {
        transaction_id: format!("payment:{payment_intent_id}:capture"),
        currency: currency.to_owned(),
        entries: vec![
            Entry { account: CUSTOMER_PAYABLE, direction: Direction::Debit, amount },
            Entry { account: MERCHANT_BALANCE, direction: Direction::Credit, amount },
        ],
    }
}

/// A refund: the capture reversed.
pub fn refund(payment_intent_id: &str, amount: i64, currency: &str) -> Posting {
    Posting {
        transaction_id: format!("payment:{payment_intent_id}:refund"),
        currency: currency.to_owned(),
        entries: vec![
            Entry { account: MERCHANT_BALANCE, direction: Direction::Debit, amount },
            Entry { account: CUSTOMER_PAYABLE, direction: Direction::Credit, amount },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_and_refunds_balance_and_reverse_each_other() {
        let c = capture("pi1", 30000, "KRW");
        let r = refund("pi1", 30000, "KRW");
        assert!(c.is_balanced() && r.is_balanced());
        assert_eq!(c.transaction_id, "payment:pi1:capture");
        assert_eq!(c.entries[0].account, r.entries[1].account);
        assert_eq!(c.entries[1].account, r.entries[0].account);
    }
}
