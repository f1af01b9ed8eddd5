//! Performances and their seats.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::domain::catalog::{demo_catalog, expand_rows, SeatSpec};

/// A performance's header.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Performance {
    /// Its id.
    pub performance_id: String,
    /// Its title.
    pub title: String,
    /// When it starts.
    pub starts_at: Option<DateTime<Utc>>,
}

/// A performance with its prices and how many seats are free, held, sold.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PerformanceSummary {
    /// Its id.
    pub performance_id: String,
    /// Its title.
    pub title: String,
    /// When it starts.
    pub starts_at: Option<DateTime<Utc>>,
    /// The cheapest seat.
    pub min_price: i64,
    /// The dearest seat.
    pub max_price: i64,
    /// Seats free now.
    pub available: i64,
    /// Seats held (pending, or a payment being charged).
    pub held: i64,
    /// Seats sold.
    pub sold: i64,
}

/// The summary columns of `p` (a `performances` row), counted the way the
/// seat map states seats: a lapsed hold without a live admission is free.
const SUMMARY: &str = "p.performance_id, p.title, p.starts_at, \
       coalesce(prices.min_price, 0) as min_price, coalesce(prices.max_price, 0) as max_price, \
       (p.seat_count - holds.held - holds.sold)::bigint as available, holds.held, holds.sold \
     from performances p \
     cross join lateral (select min(price) as min_price, max(price) as max_price \
                           from seats s where s.performance_id = p.performance_id) prices \
     cross join lateral (select count(*) filter (where h.status = 'locked' \
                                  and (h.locked_until > now() or h.admitted_until > now())) as held, \
                                count(*) filter (where h.status = 'booked') as sold \
                           from seat_holds h where h.performance_id = p.performance_id) holds";

/// Performances soonest first (unannounced ones last, then by id), at most
/// `limit`, after the performance `after`. `None` when `after` is unknown.
pub async fn list_performances(
    conn: &mut PgConnection,
    limit: i64,
    after: Option<&str>,
) -> Result<Option<Vec<PerformanceSummary>>, sqlx::Error> {
    const ORDER: &str = "(coalesce(p.starts_at, 'infinity'::timestamptz), p.performance_id)";
    let Some(after) = after else {
        let sql = format!("select {SUMMARY} order by {ORDER} limit $1");
        return Ok(Some(sqlx::query_as(&sql).bind(limit).fetch_all(conn).await?));
    };
    let known: Option<String> = sqlx::query_scalar("select performance_id from performances where performance_id = $1")
        .bind(after)
        .fetch_optional(&mut *conn)
        .await?;
    if known.is_none() {
        return Ok(None);
    }
    let sql = format!(
        "select {SUMMARY} where {ORDER} > (select coalesce(c.starts_at, 'infinity'::timestamptz), c.performance_id \
           from performances c where c.performance_id = $2) order by {ORDER} limit $1"
    );
    Ok(Some(sqlx::query_as(&sql).bind(limit).bind(after).fetch_all(conn).await?))
}

/// One performance's summary.
pub async fn performance_summary(
    conn: &mut PgConnection,
    performance_id: &str,
) -> Result<Option<PerformanceSummary>, sqlx::Error> {
    let sql = format!("select {SUMMARY} where p.performance_id = $1");
    sqlx::query_as(&sql).bind(performance_id).fetch_optional(conn).await
}

/// One seat on the seat map.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SeatState {
    /// `A1`, ...
    pub seat_id: String,
    /// Price in won.
    pub price: i64,
    /// `available`, `locked` or `booked`.
    pub state: String,
}

/// Inserts a performance and its seats; false if the id exists.
pub async fn insert_performance(
    conn: &mut PgConnection,
    performance_id: &str,
    title: &str,
    starts_at: Option<DateTime<Utc>>,
    seats: &[SeatSpec],
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "insert into performances (performance_id, title, starts_at, seat_count) values ($1, $2, $3, $4) \
         on conflict do nothing",
    )
    .bind(performance_id)
    .bind(title)
    .bind(starts_at)
    .bind(i32::try_from(seats.len()).unwrap_or(i32::MAX))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    let ids: Vec<&str> = seats.iter().map(|s| s.seat_id.as_str()).collect();
    let rows: Vec<&str> = seats.iter().map(|s| s.row.as_str()).collect();
    let numbers: Vec<i32> = seats.iter().map(|s| s.number).collect();
    let prices: Vec<i64> = seats.iter().map(|s| s.price).collect();
    sqlx::query(
        "insert into seats (performance_id, seat_id, row_label, seat_number, price) \
         select $1, * from unnest($2::text[], $3::text[], $4::int[], $5::bigint[])",
    )
    .bind(performance_id)
    .bind(&ids)
    .bind(&rows)
    .bind(&numbers)
    .bind(&prices)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Loads the demo catalog (docs/API.md) unless already there.
pub async fn load_demo_catalog(pool: &PgPool) -> Result<(), sqlx::Error> {
    for (id, title, rows) in demo_catalog() {
        let Ok(seats) = expand_rows(&rows) else { continue };
        let mut tx = pool.begin().await?;
        if insert_performance(&mut tx, id, title, None, &seats).await? {
            tracing::info!(performance_id = id, seats = seats.len(), "loaded demo performance");
        }
        tx.commit().await?;
    }
    Ok(())
}

/// The performance, if it exists.
pub async fn performance(conn: &mut PgConnection, performance_id: &str) -> Result<Option<Performance>, sqlx::Error> {
    sqlx::query_as("select performance_id, title, starts_at from performances where performance_id = $1")
        .bind(performance_id)
        .fetch_optional(conn)
        .await
}

/// Every seat with its price and live state (a lapsed hold is `available`).
pub async fn seat_map(conn: &mut PgConnection, performance_id: &str) -> Result<Vec<SeatState>, sqlx::Error> {
    sqlx::query_as(
        "select s.seat_id, s.price, \
                case when h.status = 'booked' then 'booked' \
                     when h.locked_until > now() or h.admitted_until > now() then 'locked' \
                     else 'available' end as state \
         from seats s left join seat_holds h using (performance_id, seat_id) \
         where s.performance_id = $1 order by s.row_label, s.seat_number",
    )
    .bind(performance_id)
    .fetch_all(conn)
    .await
}
