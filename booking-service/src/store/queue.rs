//! The waiting room's tables: on-sales, and the places in their queues.
//! The rules are `domain::waiting_room`; this module reads and writes what
//! they decide.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::domain::waiting_room::{OnSaleSettings, Round, Snapshot, WaitingPlace};

/// An on-sale as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OnSaleRow {
    /// The performance.
    pub performance_id: String,
    /// When it opens.
    pub opens_at: DateTime<Utc>,
    /// Unexpired admissions at most.
    pub max_active: i32,
    /// Admissions per minute at most.
    pub admit_per_minute: i32,
    /// How long an admission lasts.
    pub admission_seconds: i32,
    /// How long a place is kept unlooked-at.
    pub place_keep_seconds: i32,
    /// The shuffle's seed, once opened.
    pub seed: Option<i64>,
    /// When the pre-queue was shuffled.
    pub opened_at: Option<DateTime<Utc>>,
    /// The largest position the admitter admitted or skipped.
    pub reached: i64,
    /// Since when every seat is sold.
    pub sold_out_at: Option<DateTime<Utc>>,
    /// When an admin closed it.
    pub closed_at: Option<DateTime<Utc>>,
}

impl OnSaleRow {
    /// Its settings.
    pub fn settings(&self) -> OnSaleSettings {
        let u = |v: i32| u32::try_from(v).unwrap_or(0);
        OnSaleSettings {
            opens_at: self.opens_at,
            max_active: u(self.max_active),
            admit_per_minute: u(self.admit_per_minute),
            admission_seconds: u(self.admission_seconds),
            place_keep_seconds: u(self.place_keep_seconds),
        }
    }
}

const ONSALE_COLUMNS: &str = "performance_id, opens_at, max_active, admit_per_minute, admission_seconds, \
     place_keep_seconds, seed, opened_at, reached, sold_out_at, closed_at";

/// Sets up (or changes, or reopens) the on-sale of a performance; `None`
/// when the performance does not exist.
pub async fn upsert_onsale(
    conn: &mut PgConnection,
    performance_id: &str,
    s: &OnSaleSettings,
) -> Result<Option<OnSaleRow>, sqlx::Error> {
    let sql = format!(
        "insert into onsales (performance_id, opens_at, max_active, admit_per_minute, admission_seconds, place_keep_seconds) \
         select performance_id, $2, $3, $4, $5, $6 from performances where performance_id = $1 \
         on conflict (performance_id) do update set opens_at = excluded.opens_at, max_active = excluded.max_active, \
           admit_per_minute = excluded.admit_per_minute, admission_seconds = excluded.admission_seconds, \
           place_keep_seconds = excluded.place_keep_seconds, closed_at = null \
         returning {ONSALE_COLUMNS}"
    );
    let i = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    sqlx::query_as(&sql)
        .bind(performance_id)
        .bind(s.opens_at)
        .bind(i(s.max_active))
        .bind(i(s.admit_per_minute))
        .bind(i(s.admission_seconds))
        .bind(i(s.place_keep_seconds))
        .fetch_optional(conn)
        .await
}

/// The on-sale of a performance, closed or not.
pub async fn onsale(conn: &mut PgConnection, performance_id: &str) -> Result<Option<OnSaleRow>, sqlx::Error> {
    let sql = format!("select {ONSALE_COLUMNS} from onsales where performance_id = $1");
    sqlx::query_as(&sql).bind(performance_id).fetch_optional(conn).await
}

/// Closes an on-sale; false when there is none.
pub async fn close(conn: &mut PgConnection, performance_id: &str) -> Result<bool, sqlx::Error> {
    let closed = sqlx::query("update onsales set closed_at = coalesce(closed_at, now()) where performance_id = $1")
        .bind(performance_id)
        .execute(conn)
        .await?;
    Ok(closed.rows_affected() > 0)
}

/// Live figures of an on-sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    /// Places waiting (or queued before the opening).
    pub waiting: i64,
    /// Unexpired admissions.
    pub active: i64,
    /// Admissions granted so far.
    pub admitted_total: i64,
}

/// The figures of an on-sale.
pub async fn figures(conn: &mut PgConnection, performance_id: &str) -> Result<Figures, sqlx::Error> {
    let row = sqlx::query(
        "select count(*) filter (where state = 'waiting') as waiting, \
                count(*) filter (where state = 'admitted' and admission_expires_at > now()) as active, \
                count(*) filter (where admitted_at is not null) as admitted_total \
           from queue_places where performance_id = $1",
    )
    .bind(performance_id)
    .fetch_one(conn)
    .await?;
    Ok(Figures {
        waiting: row.try_get("waiting")?,
        active: row.try_get("active")?,
        admitted_total: row.try_get("admitted_total")?,
    })
}

/// A place as its holder sees it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PlaceRow {
    /// Null before the opening's shuffle.
    pub position: Option<i64>,
    /// `waiting`, `admitted`, `done` or `lapsed`.
    pub state: String,
    /// With `admitted`.
    pub admission_id: Option<Uuid>,
    /// With `admitted`.
    pub admission_expires_at: Option<DateTime<Utc>>,
}

/// Joins `users` (distinct, in order of arrival) to the queue, or finds
/// their places, in one round trip per statement: a batch of joins costs
/// two statements and one commit, not two per person. Either way it counts
/// as a look. Returns each user's place, in no particular order.
///
/// A place new before the opening is as inserted (waiting, no position yet,
/// looked at now), so only the users who already had a place are looked at
/// again; after the opening every user is, so that new places take their
/// positions at the back in this batch's order. Whether the sale had opened
/// is what the insert itself saw: an opening that commits after it
/// shuffles places it could not see, as before; those take the back at
/// their first look.
pub async fn join_many(
    conn: &mut PgConnection,
    performance_id: &str,
    users: &[String],
) -> Result<Vec<(String, PlaceRow)>, sqlx::Error> {
    let inserted = sqlx::query(
        "insert into queue_places (performance_id, user_id, position) \
         select $1, u.user_id, null from unnest($2::text[]) with ordinality as u(user_id, n) \
          where exists (select 1 from onsales where performance_id = $1) \
          order by u.n \
         on conflict (performance_id, user_id) do nothing \
         returning user_id, (select opened_at is not null from onsales where performance_id = $1) as opened",
    )
    .bind(performance_id)
    .bind(users)
    .fetch_all(&mut *conn)
    .await?;
    let opened = inserted.iter().any(|r| r.try_get::<bool, _>("opened").unwrap_or(true));
    if opened || inserted.is_empty() {
        return look_many(conn, performance_id, users).await;
    }
    let fresh: std::collections::HashSet<String> =
        inserted.iter().map(|r| r.try_get("user_id")).collect::<Result<_, _>>()?;
    let known: Vec<String> = users.iter().filter(|u| !fresh.contains(*u)).cloned().collect();
    let mut places = if known.is_empty() { Vec::new() } else { look_many(conn, performance_id, &known).await? };
    let queued = PlaceRow { position: None, state: "waiting".into(), admission_id: None, admission_expires_at: None };
    places.extend(fresh.into_iter().map(|user| (user, queued.clone())));
    Ok(places)
}

/// The places of `users` (distinct, in order of arrival), touched as looked
/// at; a user who has not joined is left out. A place without a position
/// after the opening, one that lapsed, and one whose admission ended take
/// the next positions at the back, in the order of `users` (the on-sale's
/// row is locked only then). The places are locked in user order, as the
/// other writers of many places lock them, so batches do not deadlock.
pub async fn look_many(
    conn: &mut PgConnection,
    performance_id: &str,
    users: &[String],
) -> Result<Vec<(String, PlaceRow)>, sqlx::Error> {
    let rows = sqlx::query(
        "with input as (select u.user_id, u.n from unnest($2::text[]) with ordinality as u(user_id, n)), \
         sale as (select opened_at from onsales where performance_id = $1), \
         place as (select q.user_id, q.state, q.position from queue_places q \
                    where q.performance_id = $1 and q.user_id = any($2) order by q.user_id for update), \
         back as (select p.user_id, row_number() over (order by i.n) as k \
                    from place p join input i using (user_id), sale s \
                   where s.opened_at is not null and (p.state in ('lapsed', 'done') or p.position is null)), \
         bump as (update onsales set next_position = next_position + (select count(*) from back) \
                   where performance_id = $1 and exists (select 1 from back) \
                  returning next_position - (select count(*) from back) as base) \
         update queue_places q set last_seen = now(), \
                position = coalesce(u.base + b.k, q.position), \
                state = case when b.user_id is null then q.state else 'waiting' end, \
                admission_id = case when b.user_id is null then q.admission_id end, \
                admission_expires_at = case when b.user_id is null then q.admission_expires_at end \
           from place p left join back b on b.user_id = p.user_id left join bump u on true \
          where q.performance_id = $1 and q.user_id = p.user_id \
         returning q.user_id, q.position, q.state, q.admission_id, q.admission_expires_at",
    )
    .bind(performance_id)
    .bind(users)
    .fetch_all(conn)
    .await?;
    rows.iter().map(user_and_place).collect()
}

/// The caller's place, touched as looked at; `None` before joining (see
/// [`look_many`]).
pub async fn look(
    conn: &mut PgConnection,
    performance_id: &str,
    user_id: &str,
) -> Result<Option<PlaceRow>, sqlx::Error> {
    let mut places = look_many(conn, performance_id, &[user_id.to_owned()]).await?;
    Ok(places.pop().map(|(_, place)| place))
}

fn user_and_place(r: &sqlx::postgres::PgRow) -> Result<(String, PlaceRow), sqlx::Error> {
    Ok((
        r.try_get("user_id")?,
        PlaceRow {
            position: r.try_get("position")?,
            state: r.try_get("state")?,
            admission_id: r.try_get("admission_id")?,
            admission_expires_at: r.try_get("admission_expires_at")?,
        },
    ))
}

/// The oldest transaction still running (or the next one, if none runs):
/// a read that starts after this has seen every change of the transactions
/// before it, so the next read of changes starts here.
pub async fn changes_seen_before(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetch_one(conn).await
}

/// The places of an on-sale written by transaction `since` or later (0:
/// every place; see [`changes_seen_before`]), with when each holder's last
/// look was recorded (the warm copy's load).
pub async fn places(
    conn: &mut PgConnection,
    performance_id: &str,
    since: i64,
) -> Result<Vec<(String, PlaceRow, DateTime<Utc>)>, sqlx::Error> {
    let rows = sqlx::query(
        "select user_id, position, state, admission_id, admission_expires_at, last_seen from queue_places \
          where performance_id = $1 and changed_by >= $2::bigint::text::xid8",
    )
    .bind(performance_id)
    .bind(since)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let (user, place) = user_and_place(r)?;
            Ok((user, place, r.try_get("last_seen")?))
        })
        .collect()
}

/// Records that `users` looked at their places now (one statement).
pub async fn touch(conn: &mut PgConnection, performance_id: &str, users: &[String]) -> Result<(), sqlx::Error> {
    // A place locked right now (a join, the admitter) is skipped, not waited
    // for: its holder's next look is written by the next refresh.
    sqlx::query(
        "update queue_places q set last_seen = now() \
           from (select user_id from queue_places where performance_id = $1 and user_id = any($2) \
                  order by user_id for update skip locked) l \
          where q.performance_id = $1 and q.user_id = l.user_id",
    )
    .bind(performance_id)
    .bind(users)
    .execute(conn)
    .await?;
    Ok(())
}

/// Places waiting in front of `position`.
pub async fn ahead(conn: &mut PgConnection, performance_id: &str, position: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "select count(*) from queue_places where performance_id = $1 and state = 'waiting' and position < $2",
    )
    .bind(performance_id)
    .bind(position)
    .fetch_one(conn)
    .await
}

/// How many wait in front of each of `positions`, counted once for all:
/// the waiting places before the smallest, then each waiting position from
/// there on (a batch of joins sits at the back, so these are few).
pub async fn ahead_of_each(
    conn: &mut PgConnection,
    performance_id: &str,
    positions: &[i64],
) -> Result<Vec<i64>, sqlx::Error> {
    let Some(from) = positions.iter().min().copied() else { return Ok(Vec::new()) };
    let before = ahead(conn, performance_id, from).await?;
    let behind: Vec<i64> = sqlx::query_scalar(
        "select position from queue_places where performance_id = $1 and state = 'waiting' and position >= $2 \
          order by position",
    )
    .bind(performance_id)
    .bind(from)
    .fetch_all(conn)
    .await?;
    Ok(positions.iter().map(|p| before + i64::try_from(behind.partition_point(|q| q < p)).unwrap_or(0)).collect())
}

/// Admissions per minute over the last five minutes (or since the
/// opening, when that is shorter).
pub async fn admission_rate(conn: &mut PgConnection, performance_id: &str) -> Result<f64, sqlx::Error> {
    let rate: Option<f64> = sqlx::query_scalar(
        "select (select count(*) from queue_places q where q.performance_id = o.performance_id \
                   and q.admitted_at > now() - interval '5 minutes')::float8 \
                / greatest(extract(epoch from least(interval '5 minutes', now() - o.opened_at)) / 60.0, 1.0 / 60.0) \
           from onsales o where o.performance_id = $1 and o.opened_at is not null",
    )
    .bind(performance_id)
    .fetch_optional(conn)
    .await?;
    Ok(rate.unwrap_or(0.0))
}

/// On-sales the admitter works: not closed.
pub async fn live_onsales(conn: &mut PgConnection) -> Result<Vec<OnSaleRow>, sqlx::Error> {
    let sql = format!("select {ONSALE_COLUMNS} from onsales where closed_at is null");
    sqlx::query_as(&sql).fetch_all(conn).await
}

/// The pre-queue (places without a position), for the opening's shuffle.
pub async fn pre_queue(conn: &mut PgConnection, performance_id: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("select user_id from queue_places where performance_id = $1 and position is null")
        .bind(performance_id)
        .fetch_all(conn)
        .await
}

/// Opens an on-sale: `order` (the shuffled pre-queue) takes positions 1…N,
/// the seed is kept.
pub async fn open(conn: &mut PgConnection, performance_id: &str, seed: i64, order: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update queue_places q set position = o.n from unnest($2::text[]) with ordinality as o(user_id, n) \
          where q.performance_id = $1 and q.user_id = o.user_id",
    )
    .bind(performance_id)
    .bind(order)
    .execute(&mut *conn)
    .await?;
    sqlx::query("update onsales set seed = $2, opened_at = now(), next_position = $3 where performance_id = $1")
        .bind(performance_id)
        .bind(seed)
        .bind(i64::try_from(order.len()).unwrap_or(i64::MAX))
        .execute(conn)
        .await?;
    Ok(())
}

/// Ends admissions past their expiry; how many ended so.
pub async fn expire_admissions(conn: &mut PgConnection, performance_id: &str) -> Result<u64, sqlx::Error> {
    let expired = sqlx::query(
        "update queue_places set state = 'done' \
          where performance_id = $1 and state = 'admitted' and admission_expires_at <= now()",
    )
    .bind(performance_id)
    .execute(conn)
    .await?;
    Ok(expired.rows_affected())
}

/// What the admitter needs to decide a round: admissions and seats.
pub async fn snapshot(conn: &mut PgConnection, performance_id: &str) -> Result<Snapshot, sqlx::Error> {
    let row = sqlx::query(
        "select (select count(*) from queue_places where performance_id = $1 and state = 'admitted' \
                   and admission_expires_at > now()) as active, \
                (select count(*) from queue_places where performance_id = $1 \
                   and admitted_at > now() - interval '1 minute') as last_minute, \
                (select count(*) from seat_holds h where h.performance_id = $1 and h.status = 'locked' \
                   and (h.locked_until > now() or h.admitted_until > now())) as held, \
                (select count(*) from seat_holds h where h.performance_id = $1 and h.status = 'booked') as sold, \
                (select seat_count from performances where performance_id = $1) as seats",
    )
    .bind(performance_id)
    .fetch_one(conn)
    .await?;
    let count = |name: &str| -> Result<u32, sqlx::Error> {
        let n: i64 = row.try_get(name)?;
        Ok(u32::try_from(n.max(0)).unwrap_or(u32::MAX))
    };
    let seats: i32 = row.try_get("seats")?;
    let (held, sold) = (count("held")?, count("sold")?);
    Ok(Snapshot {
        active: count("active")?,
        admitted_last_minute: count("last_minute")?,
        seats_free: u32::try_from(seats.max(0)).unwrap_or(0).saturating_sub(held + sold),
        seats_held: held,
    })
}

/// The next `limit` waiting places, in position order.
pub async fn waiting(
    conn: &mut PgConnection,
    performance_id: &str,
    limit: i64,
) -> Result<Vec<WaitingPlace>, sqlx::Error> {
    let rows = sqlx::query(
        "select user_id, position, last_seen from queue_places \
          where performance_id = $1 and state = 'waiting' and position is not null \
          order by position limit $2",
    )
    .bind(performance_id)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(WaitingPlace {
                user_id: r.try_get("user_id")?,
                position: r.try_get("position")?,
                last_seen: r.try_get("last_seen")?,
            })
        })
        .collect()
}

/// Writes a round: admissions, lapses, how far the admitter reached, and
/// whether the sale is sold out. Returns how long each admitted person
/// waited since joining (seconds).
pub async fn apply_round(
    conn: &mut PgConnection,
    performance_id: &str,
    round: &Round,
    admission_seconds: i32,
) -> Result<Vec<f64>, sqlx::Error> {
    let waited: Vec<f64> = sqlx::query_scalar(
        "update queue_places set state = 'admitted', admission_id = gen_random_uuid(), admitted_at = now(), \
                admission_expires_at = now() + make_interval(secs => $3) \
          where performance_id = $1 and user_id = any($2) and state = 'waiting' \
         returning extract(epoch from now() - joined_at)::float8",
    )
    .bind(performance_id)
    .bind(&round.admit)
    .bind(f64::from(admission_seconds))
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query("update queue_places set state = 'lapsed' where performance_id = $1 and user_id = any($2) and state = 'waiting'")
        .bind(performance_id)
        .bind(&round.lapse)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "update onsales set \
           reached = greatest(reached, coalesce((select max(position) from queue_places \
                      where performance_id = $1 and user_id = any($2)), 0)), \
           sold_out_at = case when $3 then coalesce(sold_out_at, now()) else null end \
          where performance_id = $1",
    )
    .bind(performance_id)
    .bind([round.admit.as_slice(), round.lapse.as_slice()].concat())
    .bind(round.sold_out)
    .execute(conn)
    .await?;
    Ok(waited)
}

/// The user's admission for the performance ends (their booking ended).
pub async fn end_admission(conn: &mut PgConnection, performance_id: &str, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update queue_places set state = 'done' where performance_id = $1 and user_id = $2 and state = 'admitted'",
    )
    .bind(performance_id)
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether an admission is still active (unexpired, its booking not ended).
pub async fn admission_active(
    conn: &mut PgConnection,
    performance_id: &str,
    user_id: &str,
    admission_id: &str,
) -> Result<bool, sqlx::Error> {
    let Ok(admission_id) = Uuid::parse_str(admission_id) else { return Ok(false) };
    sqlx::query_scalar(
        "select exists (select 1 from queue_places where performance_id = $1 and user_id = $2 \
           and admission_id = $3 and state = 'admitted' and admission_expires_at > now())",
    )
    .bind(performance_id)
    .bind(user_id)
    .bind(admission_id)
    .fetch_one(conn)
    .await
}

/// Takes the planner's statistics of the places again when as many places
/// changed since they were last taken as there were then, or when there are
/// a fifth more places than they counted (either at least 1,000): true if
/// it did. The second rule lets a queue whose statistics were taken in the
/// middle of its first rush be counted again once the rush is over. A queue grows from nothing to tens of thousands of
/// places within seconds of an on-sale's announcement, long before
/// autovacuum (which wakes once a minute, and may be off) would look.
/// Planned with statistics of an empty table, the admitter's statements
/// scan every waiting place for the few they touch: 10–15 ms each, four
/// times a second, instead of well under one.
pub async fn analyze_if_stale(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let stale: bool = sqlx::query_scalar(
        "select coalesce((select s.n_mod_since_analyze > greatest(1000, c.reltuples) \
                                 or s.n_live_tup > greatest(1000, c.reltuples * 1.2) \
                            from pg_stat_user_tables s join pg_class c on c.oid = s.relid \
                           where s.relid = 'queue_places'::regclass), false)",
    )
    .fetch_one(&mut *conn)
    .await?;
    if stale {
        sqlx::query("analyze queue_places").execute(conn).await?;
    }
    Ok(stale)
}
