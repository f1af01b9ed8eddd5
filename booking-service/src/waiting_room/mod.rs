//! The on-sale waiting room's use cases (docs/WAITING-ROOM.md): setting up
//! and closing an on-sale, joining and reading a place, the admitter that
//! lets people in, and the admission check of `POST /bookings`. The rules
//! are `domain::waiting_room`; the tables `store::queue`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use edge::admission::AdmissionKey;
use edge::shutdown::{sleep_or_shutdown, Shutdown};
use sqlx::PgPool;

use crate::domain::booking::Caller;
use crate::domain::waiting_room::{self as rules, OnSaleSettings};
use crate::error::BookingError;
use crate::store::queue::{self, Figures, OnSaleRow};

mod joins;
mod viewers;
mod warm;

pub use viewers::{Told, Viewers};

use joins::JoinFailed;

/// How often the admitter runs.
pub const ADMITTER_EVERY: Duration = Duration::from_millis(250);

/// An on-sale with its live figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnSaleView {
    /// As stored.
    pub onsale: OnSaleRow,
    /// Waiting, active, admitted so far.
    pub figures: Figures,
}

/// A place as its holder sees it (the contract's body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceView {
    /// `queued`, `waiting`, `admitted`, `sold_out` or `closed`.
    pub state: &'static str,
    /// Null while queued.
    pub position: Option<i64>,
    /// Places waiting in front.
    pub ahead: Option<i64>,
    /// From the measured admission rate.
    pub estimated_wait_seconds: Option<u64>,
    /// With `admitted`.
    pub admission: Option<String>,
    /// With `admitted`.
    pub admission_expires_at: Option<DateTime<Utc>>,
}

/// The waiting room of the booking database.
#[derive(Clone)]
pub struct WaitingRoom {
    pool: PgPool,
    key: Option<AdmissionKey>,
    warm: std::sync::Arc<warm::WarmCopy>,
    joins: std::sync::Arc<joins::Joins>,
}

impl WaitingRoom {
    /// Over `pool`, signing admissions with `key`.
    pub fn new(pool: PgPool, key: Option<AdmissionKey>) -> Self {
        Self { pool, key, warm: Default::default(), joins: Default::default() }
    }

    /// The same over another pool of the same database.
    pub fn on_pool(&self, pool: PgPool) -> Self {
        Self { pool, key: self.key.clone(), warm: self.warm.clone(), joins: self.joins.clone() }
    }

    /// An admin sets up (or changes, or reopens) an on-sale.
    pub async fn set_up(
        &self,
        caller: &Caller,
        performance_id: &str,
        settings: OnSaleSettings,
    ) -> Result<OnSaleView, BookingError> {
        if !caller.admin {
            return Err(BookingError::AdminRequired);
        }
        if self.key.is_none() {
            return Err(BookingError::NoAdmissionKey);
        }
        let mut conn = self.pool.acquire().await?;
        let onsale = queue::upsert_onsale(&mut conn, performance_id, &settings)
            .await?
            .ok_or_else(|| BookingError::PerformanceNotFound(performance_id.to_owned()))?;
        let figures = queue::figures(&mut conn, performance_id).await?;
        self.warm.forget(performance_id);
        Ok(OnSaleView { onsale, figures })
    }

    /// A live on-sale with its figures; a closed one is gone.
    pub async fn get(&self, performance_id: &str) -> Result<OnSaleView, BookingError> {
        let mut conn = self.pool.acquire().await?;
        let onsale = queue::onsale(&mut conn, performance_id)
            .await?
            .filter(|o| o.closed_at.is_none())
            .ok_or(BookingError::NoOnSale)?;
        let figures = queue::figures(&mut conn, performance_id).await?;
        Ok(OnSaleView { onsale, figures })
    }

    /// An admin closes an on-sale: open sale again, everyone told `closed`.
    pub async fn close(&self, caller: &Caller, performance_id: &str) -> Result<(), BookingError> {
        if !caller.admin {
            return Err(BookingError::AdminRequired);
        }
        let mut conn = self.pool.acquire().await?;
        if !queue::close(&mut conn, performance_id).await? {
            return Err(BookingError::NoOnSale);
        }
        self.warm.forget(performance_id);
        Ok(())
    }

    /// Joins the caller (idempotent) and returns the place. Joins are
    /// written in batches, each of which also counts who is in front
    /// (see `joins`).
    pub async fn join(&self, caller: &Caller, performance_id: &str) -> Result<PlaceView, BookingError> {
        let joined =
            self.joins.join(&self.pool, performance_id, &caller.user_id).await.map_err(|failed| match failed {
                JoinFailed::NoWaitingRoom => BookingError::NoWaitingRoom,
                JoinFailed::Database(reason) => BookingError::Internal(reason),
            })?;
        self.warm.wrote(performance_id, &caller.user_id, &joined.place);
        metrics::counter!("waiting_room_looks_total", "served_from" => "join", "performance" => performance_id.to_owned())
            .increment(1);
        let ahead_and_rate = |_| (joined.ahead.unwrap_or(0), joined.rate);
        Ok(self.view(&joined.onsale, &caller.user_id, &joined.place, ahead_and_rate))
    }

    /// The caller's place; looking keeps it. Served from this process's
    /// warm copy, with no database query, whenever the copy holds the place
    /// as it stands; the database answers the rest (a place to rejoin, or
    /// one newer than the copy).
    pub async fn place(&self, caller: &Caller, performance_id: &str) -> Result<PlaceView, BookingError> {
        if let Some(view) = self.place_from_memory(caller, performance_id) {
            return Ok(view);
        }
        let mut conn = self.pool.acquire().await?;
        let onsale = queue::onsale(&mut conn, performance_id).await?.ok_or(BookingError::NotInQueue)?;
        let place = queue::look(&mut conn, performance_id, &caller.user_id).await?.ok_or(BookingError::NotInQueue)?;
        self.view_from_database(&mut conn, &onsale, &caller.user_id, place, "database").await
    }

    fn place_from_memory(&self, caller: &Caller, performance_id: &str) -> Option<PlaceView> {
        let (sale, place) = self.warm.usable(performance_id, &caller.user_id)?;
        self.warm.seen(&sale, &caller.user_id);
        metrics::counter!("waiting_room_looks_total", "served_from" => "memory", "performance" => performance_id.to_owned())
            .increment(1);
        Some(self.view(&sale.onsale, &caller.user_id, &place, |position| (sale.ahead_of(position), sale.rate)))
    }

    /// The place as its holder sees it; `ahead` and the admission rate
    /// (per minute) are asked for only while the place waits.
    fn view(
        &self,
        onsale: &OnSaleRow,
        user_id: &str,
        place: &queue::PlaceRow,
        ahead_and_rate: impl FnOnce(i64) -> (i64, f64),
    ) -> PlaceView {
        let plain = |state| PlaceView {
            state,
            position: None,
            ahead: None,
            estimated_wait_seconds: None,
            admission: None,
            admission_expires_at: None,
        };
        if onsale.closed_at.is_some() {
            return plain("closed");
        }
        let now = Utc::now();
        if place.state == "admitted" {
            if let (Some(id), Some(expires), Some(key)) = (place.admission_id, place.admission_expires_at, &self.key) {
                if expires > now {
                    let token = key.sign(user_id, &onsale.performance_id, &id.to_string(), expires.timestamp());
                    return PlaceView {
                        position: place.position,
                        admission: token,
                        admission_expires_at: Some(expires),
                        ..plain("admitted")
                    };
                }
            }
        }
        if onsale.sold_out_at.is_some() {
            return PlaceView { position: place.position, ..plain("sold_out") };
        }
        let Some(position) = place.position.filter(|_| onsale.opened_at.is_some()) else {
            return plain("queued");
        };
        let (ahead, measured) = ahead_and_rate(position);
        let rate = if measured > 0.0 { measured } else { f64::from(onsale.settings().admit_per_minute) };
        PlaceView {
            position: Some(position),
            ahead: Some(ahead),
            estimated_wait_seconds: rules::estimated_wait_seconds(u64::try_from(ahead).unwrap_or(0), rate),
            ..plain("waiting")
        }
    }

    /// The place from the database (a join, a rejoin, or a place the warm
    /// copy does not hold yet).
    async fn view_from_database(
        &self,
        conn: &mut sqlx::PgConnection,
        onsale: &OnSaleRow,
        user_id: &str,
        place: queue::PlaceRow,
        served_from: &'static str,
    ) -> Result<PlaceView, BookingError> {
        metrics::counter!("waiting_room_looks_total", "served_from" => served_from, "performance" => onsale.performance_id.clone())
            .increment(1);
        let figures = match place.position {
            // Counted in the warm copy when it holds the opened sale, as for
            // every look served from memory: counting in the database costs a
            // scan of the waiting places per look.
            Some(position) if place.state == "waiting" && onsale.opened_at.is_some() => {
                match self.warm.figures(&onsale.performance_id, position) {
                    Some(figures) => Some(figures),
                    None => Some((
                        queue::ahead(conn, &onsale.performance_id, position).await?,
                        queue::admission_rate(conn, &onsale.performance_id).await?,
                    )),
                }
            }
            _ => None,
        };
        Ok(self.view(onsale, user_id, &place, |_| figures.unwrap_or((0, 0.0))))
    }

    /// The admission check of `POST /bookings`: nothing for a performance
    /// without a live on-sale (the warm copy tells, with no query); before
    /// the opening, no booking at all; after
    /// it, an admission token of this user for this performance that is
    /// still active.
    pub async fn check_admission(
        &self,
        caller: &Caller,
        performance_id: &str,
        admission: Option<&str>,
    ) -> Result<(), BookingError> {
        if self.warm.has_onsale(performance_id) == Some(false) {
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        let Some(onsale) = queue::onsale(&mut conn, performance_id).await? else { return Ok(()) };
        if onsale.closed_at.is_some() {
            return Ok(());
        }
        if Utc::now() < onsale.opens_at {
            return Err(BookingError::NotOnSaleYet);
        }
        let token = admission.filter(|t| !t.is_empty()).ok_or(BookingError::JoinQueueFirst)?;
        let key = self.key.as_ref().ok_or(BookingError::AdmissionInvalid)?;
        let granted = key.verify(token, &caller.user_id, performance_id).ok_or(BookingError::AdmissionInvalid)?;
        if !queue::admission_active(&mut conn, performance_id, &caller.user_id, &granted.adm).await? {
            return Err(BookingError::AdmissionInvalid);
        }
        Ok(())
    }

    /// The admitter: every [`ADMITTER_EVERY`], in one replica at a time
    /// (a transaction-scoped advisory lock), opens due on-sales, ends
    /// lapsed admissions and admits the next places.
    pub async fn run_admitter(self, shutdown: Shutdown) {
        while sleep_or_shutdown(ADMITTER_EVERY, &shutdown).await {
            if let Err(error) = self.admit_once().await {
                tracing::warn!(%error, "waiting room admitter round failed; trying again");
            }
        }
    }

    /// Keeps this process's warm copy of every live on-sale fresh, and
    /// writes back who looked, once per [`warm::REFRESH_EVERY`].
    pub async fn run_warm_copy(self, shutdown: Shutdown) {
        while sleep_or_shutdown(warm::REFRESH_EVERY, &shutdown).await {
            if let Err(error) = self.warm.refresh(&self.pool).await {
                tracing::warn!(%error, "waiting room copy not refreshed; trying again");
            }
        }
    }

    /// One round over every live on-sale.
    pub async fn admit_once(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let leader: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock(hashtext('waiting-room-admitter'))")
            .fetch_one(&mut *tx)
            .await?;
        if !leader {
            return Ok(());
        }
        let now = Utc::now();
        let onsales = queue::live_onsales(&mut tx).await?;
        let any_live = !onsales.is_empty();
        for onsale in onsales {
            let id = onsale.performance_id.as_str();
            if onsale.opened_at.is_none() {
                if now < onsale.opens_at {
                    continue;
                }
                let seed = rand_seed();
                let pre_queue = queue::pre_queue(&mut tx, id).await?;
                let order = rules::shuffled(seed as u64, pre_queue.iter().map(String::as_str));
                queue::open(&mut tx, id, seed, &order).await?;
                tracing::info!(performance_id = id, seed, pre_queue = order.len(), "on-sale opened");
                // The opening commits alone: it locked the on-sale's row
                // after its places, and a round locks places after that row
                // was taken; joins lock places, then the row. Admission
                // starts with the next round.
                return tx.commit().await;
            }
            let expired = queue::expire_admissions(&mut tx, id).await?;
            let settings = onsale.settings();
            let state = queue::snapshot(&mut tx, id).await?;
            let room = i64::from(settings.max_active.min(settings.admit_per_minute));
            let waiting = queue::waiting(&mut tx, id, room + 1_000).await?;
            let round = rules::admit_round(&settings, now, &state, &waiting);
            let waited = queue::apply_round(&mut tx, id, &round, onsale.admission_seconds).await?;
            // The gauges: admissions counted by the snapshot plus this
            // round's, and the waiting as the warm copy counts them (a count
            // over every place is 7 ms with 19,000 of them).
            let active = i64::from(state.active) + i64::try_from(waited.len()).unwrap_or(0);
            let waiting = match self.warm.waiting_count(id) {
                Some(waiting) => waiting,
                None => queue::figures(&mut tx, id).await?.waiting,
            };
            record(&onsale, &round, &waited, expired, (waiting, active), now);
        }
        tx.commit().await?;
        // The leader, after a round with a live on-sale (an idle system
        // asks nothing more): a queue that grew or turned over since the
        // planner last looked is looked at again.
        if !any_live {
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        if queue::analyze_if_stale(&mut conn).await? {
            tracing::debug!("waiting room statistics taken again");
        }
        Ok(())
    }
}

/// How often a place stream looks at a place near the front.
pub const LOOK_EVERY: Duration = Duration::from_millis(500);
/// How often it looks at a place far back, or queued before the opening:
/// there, a look every half second would mostly tell the holder that one
/// more person went in, or nothing at all. The opening, sold out and closed
/// reach every stream at once whatever its pace (`WarmCopy::alerts`).
pub const LOOK_FAR_BACK_EVERY: Duration = Duration::from_secs(3);
/// Places with at least this many in front are far back.
const FAR_BACK: i64 = 2_000;
/// A quiet place stream sends the place again at least this often.
pub const RESEND_EVERY: Duration = Duration::from_secs(15);

/// How long a stream waits before looking at `place` again.
fn look_again_after(place: &PlaceView) -> Duration {
    match place.ahead {
        Some(ahead) if ahead >= FAR_BACK => LOOK_FAR_BACK_EVERY,
        _ if place.state == "queued" => LOOK_FAR_BACK_EVERY,
        _ => LOOK_EVERY,
    }
}

/// The caller's place as it changes, starting with `first`: sent when it
/// changes (looked at every [`LOOK_EVERY`], or [`LOOK_FAR_BACK_EVERY`] far
/// back or before the opening, and at once when the on-sale opens, sells
/// out or closes) and at least every [`RESEND_EVERY`]; the stream ends
/// after `admitted`, `sold_out` or `closed`, or when a look fails.
pub fn place_changes(
    room: WaitingRoom,
    caller: Caller,
    performance_id: String,
    first: PlaceView,
) -> impl futures::Stream<Item = PlaceView> + Send + 'static {
    let mut alerts = room.warm.alerts(&performance_id);
    // Opened between the first look and now: look again at once.
    if first.state == "queued" && alerts.borrow().opened {
        alerts.mark_changed();
    }
    let start = (Some(first), None::<PlaceView>, tokio::time::Instant::now(), false, alerts);
    futures::stream::unfold(start, move |(mut next, mut last, mut sent_at, done, mut alerts)| {
        let (room, caller, performance_id) = (room.clone(), caller.clone(), performance_id.clone());
        async move {
            if done {
                return None;
            }
            loop {
                let place = match next.take() {
                    Some(place) => place,
                    None => {
                        let pause = last.as_ref().map_or(LOOK_EVERY, look_again_after);
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            _ = alerts.changed() => {}
                        }
                        room.place(&caller, &performance_id).await.ok()?
                    }
                };
                if last.as_ref() != Some(&place) || sent_at.elapsed() >= RESEND_EVERY {
                    let done = matches!(place.state, "admitted" | "sold_out" | "closed");
                    sent_at = tokio::time::Instant::now();
                    last = Some(place.clone());
                    return Some((place, (None, last, sent_at, done, alerts)));
                }
            }
        }
    })
}

/// The metrics of one round (every one labelled by performance; on-sales
/// are few at a time).
fn record(
    onsale: &OnSaleRow,
    round: &rules::Round,
    waited: &[f64],
    expired: u64,
    (waiting, active): (i64, i64),
    now: DateTime<Utc>,
) {
    let performance = onsale.performance_id.clone();
    metrics::gauge!("waiting_room_waiting", "performance" => performance.clone()).set(waiting as f64);
    metrics::gauge!("waiting_room_active", "performance" => performance.clone()).set(active as f64);
    metrics::counter!("waiting_room_admitted_total", "performance" => performance.clone())
        .increment(waited.len() as u64);
    metrics::counter!("waiting_room_places_lapsed_total", "performance" => performance.clone())
        .increment(round.lapse.len() as u64);
    metrics::counter!("waiting_room_admissions_expired_total", "performance" => performance.clone()).increment(expired);
    for seconds in waited {
        metrics::histogram!("waiting_room_wait_seconds", "performance" => performance.clone()).record(*seconds);
    }
    if round.sold_out && onsale.sold_out_at.is_none() {
        if let Some(opened) = onsale.opened_at {
            let seconds = (now - opened).num_milliseconds() as f64 / 1000.0;
            metrics::gauge!("waiting_room_sold_out_seconds", "performance" => performance).set(seconds);
            tracing::info!(performance_id = onsale.performance_id, seconds, "on-sale sold out");
        }
    }
}

/// Counters and gauges alerts watch, at zero from the start.
pub fn start_metrics() {
    for counter in
        ["waiting_room_admitted_total", "waiting_room_places_lapsed_total", "waiting_room_admissions_expired_total"]
    {
        metrics::counter!(counter).increment(0);
    }
    for gauge in ["waiting_room_waiting", "waiting_room_active"] {
        metrics::gauge!(gauge).set(0.0);
    }
}

/// A fresh seed for a shuffle.
fn rand_seed() -> i64 {
    i64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([0; 8]))
}
