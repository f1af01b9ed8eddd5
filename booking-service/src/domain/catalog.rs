//! Catalog rules: which performances and seats exist and what a booking
//! request must look like before anything is locked.

use std::collections::HashSet;

/// Most seats one booking (and one user per performance) may hold.
pub const DEFAULT_MAX_SEATS_PER_USER: usize = 10;
/// Most seats one performance may have.
pub const MAX_SEATS_PER_PERFORMANCE: u32 = 100_000;
/// Most seats one row may have.
pub const MAX_SEATS_PER_ROW: u32 = 500;

/// One row of a performance being registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowSpec {
    /// `^[A-Z]{1,3}$`.
    pub row: String,
    /// 1..=500 seats, numbered from 1.
    pub seats: u32,
    /// Price of each seat, > 0 won.
    pub price: i64,
}

/// A seat of a performance with its price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatSpec {
    /// `A1`, `A2`, ...
    pub seat_id: String,
    /// Row label.
    pub row: String,
    /// Seat number in the row.
    pub number: i32,
    /// Price in won.
    pub price: i64,
}

/// Why a registration or a booking request is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogRejection {
    /// A field is malformed; the message names it.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> CatalogRejection {
    CatalogRejection::Invalid(message.into())
}

/// Checks a performance id (`perf_001`): 1–64 of `[A-Za-z0-9_-]`.
pub fn validate_performance_id(id: &str) -> Result<(), CatalogRejection> {
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid("performanceId must be 1-64 letters, digits, '_' or '-'."))
    }
}

/// Expands rows into seats after checking every rule of docs/API.md.
pub fn expand_rows(rows: &[RowSpec]) -> Result<Vec<SeatSpec>, CatalogRejection> {
    if rows.is_empty() {
        return Err(invalid("rows must list at least one row."));
    }
    let mut labels = HashSet::new();
    let mut total: u32 = 0;
    for row in rows {
        let label_ok = (1..=3).contains(&row.row.len()) && row.row.chars().all(|c| c.is_ascii_uppercase());
        if !label_ok {
            return Err(invalid(format!("Row label '{}' must match ^[A-Z]{{1,3}}$.", row.row)));
        }
        if !labels.insert(row.row.as_str()) {
            return Err(invalid(format!("Row {} is listed twice.", row.row)));
        }
        if !(1..=MAX_SEATS_PER_ROW).contains(&row.seats) {
            return Err(invalid(format!("Row {} must have 1 to {MAX_SEATS_PER_ROW} seats.", row.row)));
        }
        if row.price <= 0 {
            return Err(invalid(format!("Row {} must have a price greater than 0.", row.row)));
        }
        total = total.saturating_add(row.seats);
    }
    if total > MAX_SEATS_PER_PERFORMANCE {
        return Err(invalid(format!("A performance has at most {MAX_SEATS_PER_PERFORMANCE} seats.")));
    }
    Ok(rows
        .iter()
        .flat_map(|row| {
            (1..=row.seats).map(move |n| SeatSpec {
                seat_id: format!("{}{n}", row.row),
                row: row.row.clone(),
                number: i32::try_from(n).unwrap_or(i32::MAX),
                price: row.price,
            })
        })
        .collect())
}

/// The demo catalog of docs/API.md: (id, title, rows).
pub fn demo_catalog() -> Vec<(&'static str, &'static str, Vec<RowSpec>)> {
    let rows = |labels: &str, seats, price| {
        labels.chars().map(|c| RowSpec { row: c.to_string(), seats, price }).collect::<Vec<_>>()
    };
    vec![
        ("perf_001", "Demo performance 1", rows("ABCDEFGHIJ", 20, 30_000)),
        ("perf_002", "Demo performance 2", rows("AB", 5, 50_000)),
    ]
}

/// Checks the seat list of a booking request: non-empty, no duplicates, at
/// most `max_seats`. Existence is checked against the catalog afterwards.
pub fn validate_seat_request(seat_ids: &[String], max_seats: usize) -> Result<(), CatalogRejection> {
    let mut seen = HashSet::new();
    if let Some(dupe) = seat_ids.iter().find(|id| !seen.insert(id.as_str())) {
        return Err(invalid(format!("Seat {dupe} is requested more than once.")));
    }
    if seat_ids.len() > max_seats {
        return Err(invalid(format!("You cannot book more than {max_seats} tickets for this performance.")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, seats: u32, price: i64) -> RowSpec {
        RowSpec { row: label.into(), seats, price }
    }

    #[test]
    fn rows_expand_into_numbered_seats() {
        let seats = expand_rows(&[row("A", 2, 100), row("BB", 1, 50)]).unwrap_or_default();
        let ids: Vec<_> = seats.iter().map(|s| (s.seat_id.as_str(), s.price)).collect();
        assert_eq!(ids, [("A1", 100), ("A2", 100), ("BB1", 50)]);
    }

    #[test]
    fn bad_rows_are_rejected_with_a_message_naming_the_problem() {
        for (rows, fragment) in [
            (vec![], "at least one row"),
            (vec![row("a", 1, 1)], "^[A-Z]{1,3}$"),
            (vec![row("ABCD", 1, 1)], "^[A-Z]{1,3}$"),
            (vec![row("A", 0, 1)], "1 to 500"),
            (vec![row("A", 501, 1)], "1 to 500"),
            (vec![row("A", 1, 0)], "greater than 0"),
            (vec![row("A", 1, 1), row("A", 1, 1)], "twice"),
        ] {
            let Err(CatalogRejection::Invalid(message)) = expand_rows(&rows) else {
                unreachable!("{rows:?} must be rejected");
            };
            assert!(message.contains(fragment), "{message} should mention {fragment}");
        }
    }

    #[test]
    fn a_performance_holds_at_most_100000_seats() {
        let labels: Vec<String> = (0..201)
            .map(|i| format!("{}{}", (b'A' + (i / 26) as u8) as char, (b'A' + (i % 26) as u8) as char))
            .collect();
        let rows: Vec<RowSpec> = labels.iter().map(|l| row(l, 500, 1)).collect();
        assert!(expand_rows(&rows).is_err());
        assert_eq!(expand_rows(&rows[..200]).map(|s| s.len()), Ok(100_000));
    }

    #[test]
    fn seat_requests_reject_duplicates_and_too_many_seats() {
        let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(validate_seat_request(&ids(&["A1", "A2"]), 10).is_ok());
        assert_eq!(
            validate_seat_request(&ids(&["A1", "A1"]), 10),
            Err(invalid("Seat A1 is requested more than once."))
        );
        assert!(validate_seat_request(&ids(&["A1", "A2", "A3"]), 2).is_err());
    }

    #[test]
    fn the_demo_catalog_matches_decisions() {
        let demo = demo_catalog();
        let perf1 = expand_rows(&demo[0].2).unwrap_or_default();
        assert_eq!((perf1.len(), perf1[0].seat_id.as_str(), perf1[199].seat_id.as_str()), (200, "A1", "J20"));
        assert_eq!(expand_rows(&demo[1].2).map(|s| s.len()), Ok(10));
    }
}
