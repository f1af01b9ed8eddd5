//! Seat maps that are current and shared. Every read shows every write
//! answered before the request arrived (decisions.md, read-your-writes),
//! and concurrent readers of one performance share loads: a request waits
//! for the load in progress to end, then takes the first load that *began
//! after it arrived*. However many people look, a performance costs at
//! most one booking-service read at a time, and nobody is shown a map
//! older than their request.
//!
//! Shared loads authenticate as the gateway itself ([`ServiceCredential`]),
//! so one user's expired or rejected token never fails another user's read.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use proto::booking::{self as pb, booking_service_client::BookingServiceClient};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::transport::Channel;
use utoipa::ToSchema;

use crate::{
    error::ApiError,
    upstream::{grpc_request, seed_time},
};

/// A seat on the seat map.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeatBody {
    /// e.g. `A1`.
    pub seat_id: String,
    /// Won.
    pub price: i64,
    /// `available`, `locked` or `booked`.
    #[schema(value_type = crate::openapi::SeatState)]
    pub state: String,
}

/// The seat map.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeatMapBody {
    /// The performance.
    pub performance_id: String,
    /// Its title.
    pub title: String,
    /// RFC 3339, if known.
    #[schema(format = DateTime)]
    pub starts_at: Option<String>,
    /// Every seat.
    pub seats: Vec<SeatBody>,
}

/// One performance's seats as loaded: its JSON and the state viewers see,
/// each made once per load and shared by every reader of it.
#[derive(Debug)]
pub struct SeatMap {
    /// The map as JSON (`GET /performances/{id}/seats`).
    pub json: Bytes,
    /// The map as seat streams show it.
    pub state: Arc<MapState>,
}

/// A map as its viewers see it: every seat's state, the map's id, and the
/// ready `snapshot` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapState {
    /// Names this state: FNV-1a over every seat's id and state.
    pub version: String,
    /// Seat id → `available`, `locked` or `booked`.
    pub states: BTreeMap<String, String>,
    /// The whole `snapshot` Server-Sent Event (every seat with its price).
    pub snapshot: Bytes,
}

impl MapState {
    /// The state of `body`.
    pub fn of(body: &SeatMapBody) -> Self {
        let states: BTreeMap<String, String> =
            body.seats.iter().map(|s| (s.seat_id.clone(), s.state.clone())).collect();
        let version = version_of(&states);
        let data = serde_json::json!({
            "performanceId": body.performance_id,
            "title": body.title,
            "startsAt": body.starts_at,
            "seats": body.seats,
        });
        let snapshot = sse_frame("snapshot", &version, &data.to_string());
        Self { version, states, snapshot }
    }
}

/// The id of a map state: FNV-1a over every seat's id and state.
pub fn version_of(states: &BTreeMap<String, String>) -> String {
    use std::hash::Hasher;
    let mut hash = fnv::FnvHasher::default();
    for (seat, state) in states {
        hash.write(seat.as_bytes());
        hash.write(&[0]);
        hash.write(state.as_bytes());
        hash.write(&[0]);
    }
    format!("{:016x}", hash.finish())
}

/// One Server-Sent Event, framed (`data` is one line of JSON).
pub fn sse_frame(event: &str, id: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {event}\nid: {id}\ndata: {data}\n\n"))
}

/// How the gateway itself authenticates to the booking-service for loads
/// it shares between callers.
pub enum ServiceCredential {
    /// A token the gateway signs for itself with the HS256 secret, renewed
    /// before it expires.
    Minted {
        /// The token settings every component shares.
        auth: edge::auth::AuthSettings,
        /// The current token and its expiry.
        current: Mutex<Option<(String, i64)>>,
    },
    /// A token the identity provider issued to the gateway (`GATEWAY_SERVICE_TOKEN`).
    Configured(String),
    /// No credential of its own (a JWKS without a service token): a load
    /// uses the token of the request that started it, and a refusal of that
    /// token is not shared with anyone else.
    Callers,
}

/// The gateway's own subject in the tokens it signs.
pub const GATEWAY_SUBJECT: &str = "system:gateway";

impl ServiceCredential {
    /// What `auth` and a configured token allow.
    pub fn from_settings(auth: &edge::auth::AuthSettings, configured: Option<&str>) -> Self {
        match configured.filter(|t| !t.is_empty()) {
            Some(token) => Self::Configured(token.to_owned()),
            None if auth.service_token(GATEWAY_SUBJECT, 60).is_some() => {
                Self::Minted { auth: auth.clone(), current: Mutex::new(None) }
            }
            None => Self::Callers,
        }
    }

    /// The token to send, if the gateway has one of its own.
    fn token(&self) -> Option<String> {
        match self {
            Self::Configured(token) => Some(token.clone()),
            Self::Callers => None,
            Self::Minted { auth, current } => {
                let now = chrono::Utc::now().timestamp();
                let mut current = current.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((token, expires)) = current.as_ref().filter(|(_, expires)| *expires - now > 60) {
                    let _ = expires;
                    return Some(token.clone());
                }
                const TTL: i64 = 300;
                match auth.service_token(GATEWAY_SUBJECT, TTL)? {
                    Ok(token) => {
                        *current = Some((token.clone(), now + TTL));
                        Some(token)
                    }
                    Err(error) => {
                        tracing::error!(%error, "signing the gateway's service token");
                        None
                    }
                }
            }
        }
    }
}

/// Loads by key that are shared between concurrent callers, each caller
/// getting the first load that began after it arrived. A key's slot lives
/// only while someone waits on it.
pub struct FreshLoads<T> {
    slots: Mutex<HashMap<String, Slot<T>>>,
}

/// A key's last load (when it began, what it gave), held while someone waits.
type Slot<T> = Arc<tokio::sync::Mutex<Option<(Instant, T)>>>;

impl<T> Default for FreshLoads<T> {
    fn default() -> Self {
        Self { slots: Mutex::new(HashMap::new()) }
    }
}

impl<T: Clone> FreshLoads<T> {
    /// The result of a load of `key` that began after this call: one in
    /// progress is waited out, then either the load that followed it is
    /// shared (if `shareable` says so) or `load` runs.
    pub async fn get<F>(&self, key: &str, shareable: impl Fn(&T) -> bool, load: impl FnOnce() -> F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        let arrived = Instant::now();
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.entry(key.to_owned()).or_default().clone()
        };
        let result = {
            let mut last = slot.lock().await;
            match last.as_ref().filter(|(began, value)| *began >= arrived && shareable(value)) {
                Some((_, value)) => value.clone(),
                None => {
                    let began = Instant::now();
                    let value = load().await;
                    *last = Some((began, value.clone()));
                    value
                }
            }
        };
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's handle and ours: nobody else waits, and a finished load
        // is of use only to requests that arrived before it began.
        if Arc::strong_count(&slot) <= 2 {
            slots.remove(key);
        }
        result
    }

    /// Keys with someone waiting.
    pub fn waiting(&self) -> usize {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// A load's result, and whether it used the caller's own token.
type Load = (Result<Arc<SeatMap>, ApiError>, bool);

/// Current seat maps, loads shared between concurrent readers.
pub struct SeatMaps {
    booking: BookingServiceClient<Channel>,
    credential: ServiceCredential,
    loads: FreshLoads<Load>,
}

impl SeatMaps {
    /// Loads from `booking`, authenticated by `credential`.
    pub fn new(booking: BookingServiceClient<Channel>, credential: ServiceCredential) -> Self {
        Self { booking, credential, loads: FreshLoads::default() }
    }

    /// The map of `id` as it is now: loaded after this call began, shared
    /// with whoever else asked meanwhile. `headers` are the caller's (its
    /// request id and trace go along; its token only without a credential
    /// of the gateway's own).
    pub async fn current(&self, id: &str, headers: &HeaderMap) -> Result<Arc<SeatMap>, ApiError> {
        // A refusal of someone else's token says nothing about this caller.
        let shareable = |(result, callers_token): &Load| {
            !(*callers_token && result.as_ref().is_err_and(|e| e.status == StatusCode::UNAUTHORIZED))
        };
        self.loads.get(id, shareable, || self.load(id, headers)).await.0
    }

    async fn load(&self, id: &str, headers: &HeaderMap) -> (Result<Arc<SeatMap>, ApiError>, bool) {
        let message = pb::GetSeatMapRequest { performance_id: id.to_owned(), ..Default::default() };
        let (request, callers_token) = match self.credential.token() {
            Some(token) => {
                let mut request = grpc_request(message, &without_authorization(headers));
                edge::wire::forward_bearer(&mut request, &token);
                (request, false)
            }
            None => (grpc_request(message, headers), true),
        };
        let answer = self.booking.clone().get_seat_map(request).await;
        (answer.map_err(ApiError::from).and_then(|map| render(map.into_inner()).map(Arc::new)), callers_token)
    }
}

fn without_authorization(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    headers.remove(axum::http::header::AUTHORIZATION);
    headers
}

fn render(map: pb::SeatMap) -> Result<SeatMap, ApiError> {
    let body = SeatMapBody {
        starts_at: seed_time(map.starts_at.as_ref()),
        performance_id: map.performance_id,
        title: map.title,
        seats: map.seats.into_iter().map(|s| SeatBody { seat_id: s.seat_id, price: s.price, state: s.state }).collect(),
    };
    let json = serde_json::to_vec(&body).map(Bytes::from).map_err(|error| {
        tracing::error!(%error, "rendering a seat map");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error.")
    })?;
    let state = Arc::new(MapState::of(&body));
    Ok(SeatMap { json, state })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_readers_share_loads_that_began_after_they_arrived() {
        let loads = Arc::new(FreshLoads::<usize>::default());
        let count = Arc::new(AtomicUsize::new(0));
        let load = |count: Arc<AtomicUsize>| async move {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            n
        };
        let readers = (0..50).map(|_| {
            let (loads, count) = (loads.clone(), count.clone());
            tokio::spawn(async move { loads.get("perf", |_| true, || load(count)).await })
        });
        let seen: Vec<usize> = futures::future::join_all(readers).await.into_iter().map(Result::unwrap).collect();
        let loaded = count.load(Ordering::SeqCst);
        assert!(loaded <= 2, "50 readers, {loaded} loads");
        assert_eq!(loads.waiting(), 0, "nothing is kept once nobody waits");
        // A reader arriving after a load finished never gets that load.
        let later = loads.get("perf", |_| true, || load(count.clone())).await;
        assert!(later > *seen.iter().max().unwrap());
    }

    #[tokio::test]
    async fn a_result_that_is_not_shareable_is_loaded_again_by_each_waiter() {
        let loads = Arc::new(FreshLoads::<usize>::default());
        let count = Arc::new(AtomicUsize::new(0));
        let readers = (0..5).map(|_| {
            let (loads, count) = (loads.clone(), count.clone());
            tokio::spawn(async move {
                loads
                    .get(
                        "perf",
                        |_| false,
                        || async move {
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            count.fetch_add(1, Ordering::SeqCst)
                        },
                    )
                    .await
            })
        });
        futures::future::join_all(readers).await;
        assert_eq!(count.load(Ordering::SeqCst), 5);
    }
}
