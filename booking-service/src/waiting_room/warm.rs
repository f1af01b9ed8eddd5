//! This process's warm copy of every live on-sale: its settings, every
//! place, the waiting positions in order and the admission rate, kept with
//! one query per on-sale every [`REFRESH_EVERY`], so that tens of
//! thousands of people reading their place cost no database query per
//! look. The first load reads every place; each later one only the places
//! written since the previous began (`queue::changes_seen_before`), applied
//! to the copy in place. Who looked is collected here and written back once
//! per refresh, in one statement per on-sale. Every replica keeps its own
//! copy from the same tables, so a joiner on one and a poller on another
//! see the same place, at most one refresh apart.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::domain::waiting_room as rules;
use crate::store::queue::{self, OnSaleRow, PlaceRow};

/// How often the copy is reloaded and looks are written back.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);
/// [`REFRESH_EVERY`] as a length of time on the clock: a look written back
/// waits up to one refresh.
const REFRESH_EVERY_CHRONO: chrono::Duration = chrono::Duration::milliseconds(250);
/// A copy older than this does not say which performances have no on-sale.
const TRUSTED_FOR: Duration = Duration::from_secs(2);

/// One on-sale as last loaded.
#[derive(Clone)]
pub struct Sale {
    /// Its row.
    pub onsale: OnSaleRow,
    /// Every place, by user.
    places: HashMap<String, PlaceRow>,
    /// When each holder's last look was recorded.
    recorded: HashMap<String, DateTime<Utc>>,
    /// Positions of the waiting places, ascending.
    waiting: Vec<i64>,
    /// Admissions per minute lately.
    pub rate: f64,
    /// The next load reads the places written by this transaction or later.
    since: i64,
}

impl Sale {
    /// An on-sale with no place loaded yet.
    fn new(onsale: OnSaleRow) -> Self {
        Self { onsale, places: HashMap::new(), recorded: HashMap::new(), waiting: Vec::new(), rate: 0.0, since: 0 }
    }

    /// Takes in a load: the on-sale's row, the places read (all of them, or
    /// those written since the last load), the admission rate, and where
    /// the next load starts. The waiting positions are counted again only
    /// when a place changed its state or position.
    fn apply(&mut self, load: Load) {
        let mut moved = self.places.is_empty();
        for (user, place, seen_at) in load.places {
            self.recorded.insert(user.clone(), seen_at);
            match self.places.get_mut(&user) {
                Some(old) if *old == place => {}
                Some(old) => {
                    moved |= old.state != place.state || old.position != place.position;
                    *old = place;
                }
                None => {
                    moved |= place.state == "waiting" && place.position.is_some();
                    self.places.insert(user, place);
                }
            }
        }
        if moved {
            self.waiting = self.places.values().filter(|p| p.state == "waiting").filter_map(|p| p.position).collect();
            self.waiting.sort_unstable();
        }
        self.onsale = load.onsale;
        self.rate = load.rate;
        self.since = load.since;
    }

    /// Places waiting in front of `position`.
    pub fn ahead_of(&self, position: i64) -> i64 {
        i64::try_from(self.waiting.partition_point(|p| *p < position)).unwrap_or(i64::MAX)
    }
}

/// What one load of an on-sale read.
struct Load {
    onsale: OnSaleRow,
    /// Read on top of the copy as it stands (false: every place was read).
    on_top: bool,
    places: Vec<(String, PlaceRow, DateTime<Utc>)>,
    rate: f64,
    since: i64,
}

/// The copies, and the looks not yet written back.
#[derive(Default)]
pub struct WarmCopy {
    sales: RwLock<HashMap<String, Arc<Sale>>>,
    seen: Mutex<HashMap<String, HashSet<String>>>,
    /// Places this replica wrote since the last refresh (joins), so their
    /// holders' next looks need not wait for it.
    recent: Mutex<HashMap<(String, String), PlaceRow>>,
    /// When the last refresh began, if one finished since.
    loaded: Mutex<Option<Instant>>,
    /// On-sales this replica changed since that refresh began: the copy
    /// cannot answer for them until the next one.
    changed: Mutex<HashMap<String, Instant>>,
    /// Per on-sale: changed when it opens, sells out, closes, or comes
    /// back, so every place stream looks at once.
    alerts: Mutex<HashMap<String, tokio::sync::watch::Sender<Milestones>>>,
}

/// What every place stream of an on-sale hears at once, whatever its pace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Milestones {
    /// The pre-queue was shuffled: queued places have positions now.
    pub opened: bool,
    /// Every seat is sold.
    pub sold_out: bool,
    /// An admin closed it (or it is no longer live).
    pub closed: bool,
}

impl WarmCopy {
    /// The sale and the user's place, when the copy can answer for it as it
    /// stands: a place that must rejoin (lapsed, its admission ended, or
    /// no position after the opening) needs the database.
    pub fn usable(&self, performance_id: &str, user_id: &str) -> Option<(Arc<Sale>, PlaceRow)> {
        let sale = self.sales.read().ok()?.get(performance_id)?.clone();
        let place = match sale.places.get(user_id) {
            Some(place) => place.clone(),
            None => self.recent.lock().ok()?.get(&(performance_id.to_owned(), user_id.to_owned()))?.clone(),
        };
        let rejoins = matches!(place.state.as_str(), "lapsed" | "done")
            || (place.position.is_none() && sale.onsale.opened_at.is_some());
        (!rejoins).then_some((sale, place))
    }

    /// Who waits in front of `position` and the admission rate, counted in
    /// the copy, when it was loaded after the on-sale opened (so it holds
    /// every position the opening gave) and was not dropped for a change
    /// made here since.
    pub fn figures(&self, performance_id: &str, position: i64) -> Option<(i64, f64)> {
        let sale = self.sales.read().ok()?.get(performance_id)?.clone();
        sale.onsale.opened_at.is_some().then(|| (sale.ahead_of(position), sale.rate))
    }

    /// Places waiting with a position, as the copy counts them (at most one
    /// refresh old): the admitter's gauge, without a count over the places
    /// four times a second.
    pub fn waiting_count(&self, performance_id: &str) -> Option<i64> {
        let sale = self.sales.read().ok()?.get(performance_id)?.clone();
        i64::try_from(sale.waiting.len()).ok()
    }

    /// Drops an on-sale from the copy (it was changed or closed here: the
    /// database answers until the next refresh).
    pub fn forget(&self, performance_id: &str) {
        if let Ok(mut changed) = self.changed.lock() {
            changed.insert(performance_id.to_owned(), Instant::now());
        }
        if let Ok(mut sales) = self.sales.write() {
            sales.remove(performance_id);
        }
    }

    /// Whether the performance has a live on-sale, when a fresh copy can
    /// tell; `None` means ask the database (no fresh copy yet, or the
    /// on-sale was just changed here). An on-sale set up on another replica
    /// is seen here within one refresh.
    pub fn has_onsale(&self, performance_id: &str) -> Option<bool> {
        let loaded = (*self.loaded.lock().ok()?)?;
        if loaded.elapsed() > TRUSTED_FOR || self.changed.lock().ok()?.contains_key(performance_id) {
            return None;
        }
        Some(self.sales.read().ok()?.contains_key(performance_id))
    }

    /// Changes when the on-sale opens, sells out, closes or comes back.
    pub fn alerts(&self, performance_id: &str) -> tokio::sync::watch::Receiver<Milestones> {
        match self.alerts.lock() {
            Ok(mut alerts) => alerts
                .entry(performance_id.to_owned())
                .or_insert_with(|| tokio::sync::watch::Sender::new(Milestones::default()))
                .subscribe(),
            // Never changes: streams look at their own pace.
            Err(_) => tokio::sync::watch::Sender::new(Milestones::default()).subscribe(),
        }
    }

    /// Tells the streams of `onsale` when it opened, sold out, closed or
    /// came back.
    fn alert(&self, onsale: &OnSaleRow) {
        let now = Milestones {
            opened: onsale.opened_at.is_some(),
            sold_out: onsale.sold_out_at.is_some(),
            closed: onsale.closed_at.is_some(),
        };
        if let Ok(alerts) = self.alerts.lock() {
            if let Some(alert) = alerts.get(&onsale.performance_id) {
                alert.send_if_modified(|was| std::mem::replace(was, now) != now);
            }
        }
    }

    /// Remembers a place this replica just wrote, until the next refresh.
    pub fn wrote(&self, performance_id: &str, user_id: &str, place: &PlaceRow) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.insert((performance_id.to_owned(), user_id.to_owned()), place.clone());
        }
    }

    /// Remembers that `user_id` looked at their place in `sale`, to be
    /// written back, unless a look recorded lately is recent enough
    /// (`rules::look_recorded_within`).
    pub fn seen(&self, sale: &Sale, user_id: &str) {
        let within = rules::look_recorded_within(sale.onsale.settings().place_keep_seconds);
        let fresh = Utc::now() - within + REFRESH_EVERY_CHRONO;
        if sale.recorded.get(user_id).is_some_and(|at| *at > fresh) {
            return;
        }
        if let Ok(mut seen) = self.seen.lock() {
            seen.entry(sale.onsale.performance_id.clone()).or_default().insert(user_id.to_owned());
        }
    }

    /// Writes back the looks, then reloads every live on-sale.
    pub async fn refresh(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let began = Instant::now();
        let looks = self.seen.lock().map(|mut seen| std::mem::take(&mut *seen)).unwrap_or_default();
        let mut conn = pool.acquire().await?;
        for (performance_id, users) in looks {
            let users: Vec<String> = users.into_iter().collect();
            queue::touch(&mut conn, &performance_id, &users).await?;
        }
        let mut loads = Vec::new();
        for onsale in queue::live_onsales(&mut conn).await? {
            let id = onsale.performance_id.as_str();
            let since = self.sales.read().ok().and_then(|sales| sales.get(id).map(|sale| sale.since));
            // Taken before the read: a transaction it does not see started
            // at or after this, and the next load reads its places.
            let next = queue::changes_seen_before(&mut conn).await?;
            let places = queue::places(&mut conn, id, since.unwrap_or(0)).await?;
            let rate = queue::admission_rate(&mut conn, id).await?;
            loads.push(Load { onsale, on_top: since.is_some(), places, rate, since: next });
        }
        let live: Vec<OnSaleRow> = loads.iter().map(|load| load.onsale.clone()).collect();
        if let Ok(mut sales) = self.sales.write() {
            let mut fresh = HashMap::with_capacity(loads.len());
            for load in loads {
                let id = load.onsale.performance_id.clone();
                let mut sale = match sales.remove(&id) {
                    // Readers still holding the copy keep theirs; this one
                    // changes a copy of it.
                    Some(sale) if load.on_top => Arc::try_unwrap(sale).unwrap_or_else(|sale| (*sale).clone()),
                    // Forgotten here since the read began (set up or closed
                    // here): the next refresh reads it whole.
                    None if load.on_top => continue,
                    _ => Sale::new(load.onsale.clone()),
                };
                sale.apply(load);
                fresh.insert(id, Arc::new(sale));
            }
            // On-sales no longer live are dropped.
            *sales = fresh;
        }
        // After the swap: a stream woken by an alert reads the new copy.
        for onsale in &live {
            self.alert(onsale);
        }
        // An on-sale no longer live was closed (here or on another replica).
        if let Ok(alerts) = self.alerts.lock() {
            for (performance_id, alert) in
                alerts.iter().filter(|(id, _)| !live.iter().any(|o| &o.performance_id == *id))
            {
                tracing::trace!(performance_id, "on-sale no longer live");
                alert.send_if_modified(|m| !std::mem::replace(&mut m.closed, true));
            }
        }

        if let Ok(mut changed) = self.changed.lock() {
            changed.retain(|_, at| *at >= began);
        }
        if let Ok(mut loaded) = self.loaded.lock() {
            *loaded = Some(began);
        }
        // The reload holds every place written before it began.
        if let Ok(mut recent) = self.recent.lock() {
            recent.retain(|(performance_id, user_id), _| {
                self.sales
                    .read()
                    .map_or(true, |s| s.get(performance_id).is_none_or(|s| !s.places.contains_key(user_id)))
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn onsale() -> OnSaleRow {
        OnSaleRow {
            performance_id: "p".into(),
            opens_at: Utc::now(),
            max_active: 10,
            admit_per_minute: 60,
            admission_seconds: 600,
            place_keep_seconds: 300,
            seed: Some(1),
            opened_at: Some(Utc::now()),
            reached: 0,
            sold_out_at: None,
            closed_at: None,
        }
    }

    fn place(state: &str, position: Option<i64>) -> PlaceRow {
        PlaceRow { position, state: state.into(), admission_id: None, admission_expires_at: None }
    }

    fn load(places: Vec<(&str, PlaceRow)>, since: i64) -> Load {
        let at = Utc::now();
        Load {
            onsale: onsale(),
            on_top: true,
            places: places.into_iter().map(|(user, place)| (user.to_owned(), place, at)).collect(),
            rate: 30.0,
            since,
        }
    }

    #[test]
    fn a_load_of_the_changed_places_updates_them_and_keeps_the_rest() {
        let mut sale = Sale::new(onsale());
        sale.apply(load(
            vec![
                ("a", place("waiting", Some(1))),
                ("b", place("waiting", Some(2))),
                ("c", place("waiting", Some(3))),
                ("d", place("waiting", None)),
            ],
            100,
        ));
        assert_eq!((sale.ahead_of(3), sale.since, sale.places.len()), (2, 100, 4));
        // Only a's admission and a new joiner e come back in the next load.
        sale.apply(load(vec![("a", place("admitted", Some(1))), ("e", place("waiting", Some(4)))], 105));
        assert_eq!(sale.places.len(), 5, "the places not read again are kept");
        assert_eq!(sale.places["b"], place("waiting", Some(2)));
        assert_eq!(sale.places["a"].state, "admitted");
        assert_eq!(sale.waiting, vec![2, 3, 4], "waiting counted again after a move");
        assert_eq!((sale.ahead_of(3), sale.ahead_of(4), sale.since, sale.rate), (1, 2, 105, 30.0));
        // A load that moves nobody (looks written back) leaves the order as it was.
        sale.apply(load(vec![("b", place("waiting", Some(2)))], 107));
        assert_eq!((sale.waiting.clone(), sale.since), (vec![2, 3, 4], 107));
    }
}
