//! The on-sale waiting room's rules, pure: who stands where, who is
//! admitted next, whose place lapsed, and when the sale is sold out. The
//! adapters (where places are stored, how admissions are signed, how often
//! the admitter runs) call these with the state they read and `now`.
//!
//! - **Order.** Whoever joins before `opensAt` is in the pre-queue; at
//!   `opensAt` it is shuffled by a seed drawn then and kept: positions
//!   1…N follow FNV-1a 64 of the seed (8 bytes, little-endian) followed by
//!   the user id, ascending, ties by user id, so anyone holding the seed
//!   can audit the order. Later joiners stand behind, in arrival order.
//! - **Admission** walks waiting places in position order and stops at the
//!   first it cannot admit, so nobody is admitted while a smaller position
//!   still waits its turn. A place whose holder has not looked within
//!   `placeKeepSeconds` is skipped (lapsed) when its turn comes.
//! - **Pacing.** At most `maxActive` unexpired admissions at once, at most
//!   `admitPerMinute` in any minute, and none while no seat is free.
//! - **Sold out** only when no seat is free or held: a held seat may come
//!   back, and admission then resumes in order.

use std::hash::Hasher;

use chrono::{DateTime, Duration, Utc};

/// An on-sale's settings (`PUT /performances/{id}/onsale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnSaleSettings {
    /// When the pre-queue is shuffled and admission starts.
    pub opens_at: DateTime<Utc>,
    /// Unexpired admissions at most at once.
    pub max_active: u32,
    /// Admissions at most per minute.
    pub admit_per_minute: u32,
    /// How long an admission lasts.
    pub admission_seconds: u32,
    /// How long a place is kept without its holder looking at it.
    pub place_keep_seconds: u32,
}

/// The defaults of the contract.
pub const DEFAULT_MAX_ACTIVE: u32 = 200;
/// The defaults of the contract.
pub const DEFAULT_ADMIT_PER_MINUTE: u32 = 1200;
/// The defaults of the contract.
pub const DEFAULT_ADMISSION_SECONDS: u32 = 600;
/// The defaults of the contract.
pub const DEFAULT_PLACE_KEEP_SECONDS: u32 = 300;

/// How late a look may be written down, for an on-sale that keeps places
/// `place_keep_seconds`: a tenth of that, at least 4 s and at most 30 s. A
/// replica writes a holder's look back only when the one on record is this
/// old (so tens of thousands of people looking every half second cost a
/// few writes, not thousands a second), and once per refresh. A place is
/// kept for this much longer than `placeKeepSeconds`, so a holder who
/// looked in time is never skipped; one who stopped looking is skipped at
/// most this much later than the setting says.
pub fn look_recorded_within(place_keep_seconds: u32) -> Duration {
    Duration::seconds(i64::from(place_keep_seconds / 10).clamp(4, 30))
}

/// Why settings are refused (each names its field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadSettings(pub String);

impl OnSaleSettings {
    /// Settings from the optional fields of a request, defaults filled in,
    /// each checked against its bounds.
    pub fn new(
        opens_at: DateTime<Utc>,
        max_active: Option<u32>,
        admit_per_minute: Option<u32>,
        admission_seconds: Option<u32>,
        place_keep_seconds: Option<u32>,
    ) -> Result<Self, BadSettings> {
        let bounded = |name: &str, value: u32, low: u32, high: u32| {
            if (low..=high).contains(&value) {
                Ok(value)
            } else {
                Err(BadSettings(format!("{name} must be an integer from {low} to {high}.")))
            }
        };
        Ok(Self {
            opens_at,
            max_active: bounded("maxActive", max_active.unwrap_or(DEFAULT_MAX_ACTIVE), 1, 100_000)?,
            admit_per_minute: bounded(
                "admitPerMinute",
                admit_per_minute.unwrap_or(DEFAULT_ADMIT_PER_MINUTE),
                1,
                1_000_000,
            )?,
            admission_seconds: bounded(
                "admissionSeconds",
                admission_seconds.unwrap_or(DEFAULT_ADMISSION_SECONDS),
                30,
                3_600,
            )?,
            place_keep_seconds: bounded(
                "placeKeepSeconds",
                place_keep_seconds.unwrap_or(DEFAULT_PLACE_KEEP_SECONDS),
                15,
                3_600,
            )?,
        })
    }
}

/// The shuffle key of `user_id` under `seed`: FNV-1a 64 over the seed's 8
/// little-endian bytes, then the user id's bytes.
pub fn shuffle_key(seed: u64, user_id: &str) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(&seed.to_le_bytes());
    hasher.write(user_id.as_bytes());
    hasher.finish()
}

/// The pre-queue in its shuffled order: positions 1…N are the indexes + 1.
pub fn shuffled<'a>(seed: u64, pre_queue: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut users: Vec<(u64, &str)> = pre_queue.into_iter().map(|user| (shuffle_key(seed, user), user)).collect();
    users.sort_unstable();
    users.into_iter().map(|(_, user)| user).collect()
}

/// A place waiting for its turn, as the admitter sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingPlace {
    /// Its holder.
    pub user_id: String,
    /// Its position (1 is first).
    pub position: i64,
    /// When its holder last looked at it.
    pub last_seen: DateTime<Utc>,
}

/// What the admitter knows at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Unexpired admissions whose booking has not ended.
    pub active: u32,
    /// Admissions granted in the last minute.
    pub admitted_last_minute: u32,
    /// Seats free now.
    pub seats_free: u32,
    /// Seats held by pending bookings.
    pub seats_held: u32,
}

/// What one round of the admitter decides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Round {
    /// Places admitted now, in position order.
    pub admit: Vec<String>,
    /// Places skipped because nobody looked at them in time.
    pub lapse: Vec<String>,
    /// Every seat is sold: everyone waiting is told so.
    pub sold_out: bool,
}

/// One round: `waiting` must be in position order.
pub fn admit_round(settings: &OnSaleSettings, now: DateTime<Utc>, state: &Snapshot, waiting: &[WaitingPlace]) -> Round {
    if now < settings.opens_at {
        return Round::default();
    }
    if state.seats_free == 0 && state.seats_held == 0 {
        return Round { sold_out: true, ..Round::default() };
    }
    let by_slots = settings.max_active.saturating_sub(state.active);
    let by_rate = settings.admit_per_minute.saturating_sub(state.admitted_last_minute);
    let mut room = by_slots.min(by_rate).min(state.seats_free);
    // A look reaches the table up to `look_recorded_within` after it happened.
    let keep =
        Duration::seconds(i64::from(settings.place_keep_seconds)) + look_recorded_within(settings.place_keep_seconds);
    let mut round = Round::default();
    for place in waiting {
        if room == 0 {
            break;
        }
        if now - place.last_seen > keep {
            round.lapse.push(place.user_id.clone());
        } else {
            round.admit.push(place.user_id.clone());
            room -= 1;
        }
    }
    round
}

/// Where a lapsed holder who looks again stands: at their own position if
/// the admitter has not reached it yet (`reached`: the largest position it
/// admitted or skipped, 0 before any), else at `back`, behind everyone.
pub fn rejoin_position(own: i64, reached: i64, back: i64) -> i64 {
    if own > reached {
        own
    } else {
        back
    }
}

/// Seconds until a place's turn, from the admission rate measured lately
/// (admissions per minute); `None` while nothing has been admitted yet.
pub fn estimated_wait_seconds(ahead: u64, admitted_per_minute: f64) -> Option<u64> {
    (admitted_per_minute > 0.0).then(|| ((ahead as f64) * 60.0 / admitted_per_minute).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).single().unwrap()
    }

    fn settings() -> OnSaleSettings {
        OnSaleSettings::new(t(100), Some(3), Some(5), None, Some(60)).unwrap()
    }

    fn place(user: &str, position: i64, seen: i64) -> WaitingPlace {
        WaitingPlace { user_id: user.into(), position, last_seen: t(seen) }
    }

    fn open(free: u32) -> Snapshot {
        Snapshot { active: 0, admitted_last_minute: 0, seats_free: free, seats_held: 0 }
    }

    #[test]
    fn settings_fill_defaults_and_name_a_bad_field() {
        let s = OnSaleSettings::new(t(0), None, None, None, None).unwrap();
        assert_eq!(
            (s.max_active, s.admit_per_minute, s.admission_seconds, s.place_keep_seconds),
            (200, 1200, 600, 300)
        );
        assert_eq!(
            OnSaleSettings::new(t(0), Some(0), None, None, None),
            Err(BadSettings("maxActive must be an integer from 1 to 100000.".into()))
        );
        assert!(OnSaleSettings::new(t(0), None, None, Some(5), None).unwrap_err().0.starts_with("admissionSeconds"));
    }

    #[test]
    fn the_shuffle_is_a_permutation_fixed_by_its_seed() {
        let users = ["ann", "bob", "cyd", "dee", "eve", "fay"];
        let once = shuffled(42, users);
        assert_eq!(once, shuffled(42, users), "the same seed gives the same order");
        let mut sorted = once.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, users, "everyone gets exactly one place");
        let orders: std::collections::HashSet<Vec<&str>> = (0..20).map(|seed| shuffled(seed, users)).collect();
        assert!(orders.len() > 10, "seeds give different orders");
    }

    #[test]
    fn nothing_happens_before_the_sale_opens() {
        let round = admit_round(&settings(), t(99), &open(10), &[place("a", 1, 99)]);
        assert_eq!(round, Round::default());
    }

    #[test]
    fn admission_follows_positions_and_stops_at_the_first_it_cannot_admit() {
        let waiting = [place("a", 1, 100), place("b", 2, 100), place("c", 3, 100), place("d", 4, 100)];
        let round = admit_round(&settings(), t(100), &open(10), &waiting);
        assert_eq!(round.admit, ["a", "b", "c"], "maxActive 3");
        let busy = Snapshot { active: 2, ..open(10) };
        assert_eq!(admit_round(&settings(), t(100), &busy, &waiting).admit, ["a"]);
        let paced = Snapshot { admitted_last_minute: 5, ..open(10) };
        assert!(admit_round(&settings(), t(100), &paced, &waiting).admit.is_empty(), "admitPerMinute 5 used up");
        let one_seat = open(1);
        assert_eq!(
            admit_round(&settings(), t(100), &one_seat, &waiting).admit,
            ["a"],
            "no more shoppers than free seats"
        );
    }

    #[test]
    fn a_place_nobody_looked_at_lapses_when_its_turn_comes_and_costs_no_slot() {
        let waiting = [place("a", 1, 10), place("b", 2, 100), place("c", 3, 100)];
        let round = admit_round(&settings(), t(100), &open(10), &waiting);
        assert_eq!((round.lapse, round.admit), (vec!["a".to_owned()], vec!["b".to_owned(), "c".to_owned()]));
    }

    #[test]
    fn a_look_written_down_late_still_keeps_the_place() {
        // placeKeepSeconds is 60; a look is recorded up to 6 s late.
        let waiting = [place("late", 1, 100 - 65), place("gone", 2, 100 - 67)];
        let round = admit_round(&settings(), t(100), &open(10), &waiting);
        assert_eq!((round.admit, round.lapse), (vec!["late".to_owned()], vec!["gone".to_owned()]));
    }

    #[test]
    fn looks_are_written_down_within_a_tenth_of_the_keep_between_4_and_30_seconds() {
        let within = |keep| look_recorded_within(keep).num_seconds();
        assert_eq!([within(15), within(60), within(300), within(3600)], [4, 6, 30, 30]);
    }

    #[test]
    fn sold_out_only_when_no_seat_is_free_or_held() {
        let waiting = [place("a", 1, 100)];
        let held = Snapshot { seats_free: 0, seats_held: 2, ..open(0) };
        let round = admit_round(&settings(), t(100), &held, &waiting);
        assert!(!round.sold_out && round.admit.is_empty(), "held seats may come back");
        let gone = Snapshot { seats_free: 0, seats_held: 0, ..open(0) };
        assert!(admit_round(&settings(), t(100), &gone, &waiting).sold_out);
    }

    #[test]
    fn a_lapsed_holder_keeps_their_place_only_while_their_turn_has_not_passed() {
        assert_eq!(rejoin_position(50, 40, 900), 50);
        assert_eq!(rejoin_position(50, 50, 900), 900);
        assert_eq!(rejoin_position(50, 0, 900), 50);
    }

    #[test]
    fn the_wait_is_estimated_from_the_measured_rate() {
        assert_eq!(estimated_wait_seconds(600, 1200.0), Some(30));
        assert_eq!(estimated_wait_seconds(1, 1200.0), Some(1));
        assert_eq!(estimated_wait_seconds(10, 0.0), None);
    }
}
