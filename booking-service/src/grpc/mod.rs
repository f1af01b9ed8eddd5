//! The `ticketing.booking.v1.BookingService` gRPC adapter: translates
//! protobuf requests into use-case calls and `BookingError` into `Status`
//! (once, in `error.rs`). Every method takes the caller's identity from
//! the bearer token in its `authorization` metadata, verified here with the
//! same verifier the gateway uses; the deprecated `caller` field of the
//! requests is ignored.

use std::sync::Arc;

mod watch_places;

use futures::StreamExt;

use edge::auth::Verifier;
use proto::booking::{self as pb, booking_service_server::BookingService};
use proto::time::timestamp;
use runtime::grpc::event_metadata;
use runtime::grpc::{authenticate, authenticate_token};
use runtime::idempotent;
use runtime::idempotent::Step;
use tonic::{Request, Response, Status};

use crate::domain::waiting_room::OnSaleSettings;
use crate::{
    domain::{
        booking::{Booking, Caller},
        catalog::RowSpec,
    },
    error::BookingError,
    store::views::BookingRow,
    use_cases::{Bookings, CreatedBooking, NewBooking, NewPerformance},
};

/// gRPC front of the booking use cases.
pub struct BookingGrpc {
    bookings: Bookings,
    verifier: Arc<Verifier>,
    /// Ends long streams when the service stops, so they never hold up its drain.
    shutdown: edge::shutdown::Shutdown,
}

impl BookingGrpc {
    /// Serves `bookings` to callers whose tokens `verifier` accepts.
    pub fn new(bookings: Bookings, verifier: Arc<Verifier>, shutdown: edge::shutdown::Shutdown) -> Self {
        Self { bookings, verifier, shutdown }
    }

    /// The caller, from the request's verified bearer token.
    async fn caller(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, Status> {
        let user = authenticate(&self.verifier, metadata).await?.user;
        Ok(Caller { user_id: user.user_id, admin: user.admin })
    }
}

/// The person a bearer token carried inside a shared call names (a joiner,
/// a viewer), verified like any caller's.
async fn token_caller(verifier: &Verifier, token: &str) -> Result<Caller, Status> {
    let user = authenticate_token(verifier, token).await?.user;
    Ok(Caller { user_id: user.user_id, admin: user.admin })
}

fn summary_to_pb(p: crate::store::catalog::PerformanceSummary) -> pb::PerformanceSummary {
    let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    pb::PerformanceSummary {
        performance_id: p.performance_id,
        title: p.title,
        starts_at: p.starts_at.map(timestamp),
        currency: CURRENCY.to_owned(),
        min_price: p.min_price,
        max_price: p.max_price,
        available: count(p.available),
        held: count(p.held),
        sold: count(p.sold),
    }
}

/// Prices are won (KRW has no minor unit).
const CURRENCY: &str = "KRW";

fn onsale_to_pb(view: crate::waiting_room::OnSaleView) -> pb::OnSale {
    let s = view.onsale.settings();
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    pb::OnSale {
        performance_id: view.onsale.performance_id,
        opens_at: Some(timestamp(s.opens_at)),
        max_active: s.max_active,
        admit_per_minute: s.admit_per_minute,
        admission_seconds: s.admission_seconds,
        place_keep_seconds: s.place_keep_seconds,
        waiting: count(view.figures.waiting),
        active: count(view.figures.active),
        admitted_total: count(view.figures.admitted_total),
        sold_out: view.onsale.sold_out_at.is_some(),
    }
}

fn place_to_pb(performance_id: String, place: crate::waiting_room::PlaceView) -> pb::QueuePlace {
    pb::QueuePlace {
        performance_id,
        state: place.state.to_owned(),
        position: place.position,
        ahead: place.ahead,
        estimated_wait_seconds: place.estimated_wait_seconds,
        admission: place.admission.unwrap_or_default(),
        admission_expires_at: place.admission_expires_at.map(timestamp),
    }
}

fn created_to_pb(created: CreatedBooking) -> pb::CreateBookingResponse {
    pb::CreateBookingResponse {
        booking_id: created.booking_id,
        payment_intent_id: created.payment_intent_id,
        total_amount: created.total_amount,
        locked_until: Some(timestamp(created.locked_until)),
    }
}

/// The longest `AwaitDecision` waits.
const MAX_AWAIT_MS: u32 = 10_000;

fn booking_to_pb(booking: Booking) -> pb::Booking {
    let created = booking.created;
    pb::Booking {
        booking_id: created.booking_id,
        performance_id: created.performance_id,
        seat_ids: created.seat_ids,
        total_amount: created.total_amount,
        status: booking.status.as_str().to_owned(),
        user_id: created.user_id,
        created_at: Some(timestamp(created.created_at)),
        payment_intent_id: created.payment_intent_id,
    }
}

fn row_to_pb(row: BookingRow) -> pb::Booking {
    pb::Booking {
        booking_id: row.booking_id,
        performance_id: row.performance_id,
        seat_ids: row.seat_ids,
        total_amount: row.total_amount,
        status: row.status,
        user_id: row.user_id,
        created_at: Some(timestamp(row.created_at)),
        payment_intent_id: row.payment_intent_id,
    }
}

#[tonic::async_trait]
impl BookingService for BookingGrpc {
    async fn create_booking(
        &self,
        request: Request<pb::CreateBookingRequest>,
    ) -> Result<Response<pb::CreateBookingResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let metadata = request.metadata().clone();
        let body = request.into_inner();
        let fingerprint =
            format!("{}|{}|{}|{}", body.performance_id, body.seat_ids.join(","), body.payment_method, body.user_id);
        let pool = self.bookings.pool();
        let claim =
            match idempotent::start(pool, &metadata, &caller.user_id, "create_booking", &fingerprint, created_to_pb)
                .await?
            {
                Step::Run(claim) => claim,
                Step::Answer(answer) => return answer,
            };
        let request = NewBooking {
            performance_id: body.performance_id,
            seat_ids: body.seat_ids,
            payment_method: Some(body.payment_method).filter(|m| !m.is_empty()),
            user_id: body.user_id,
            admission: Some(body.admission).filter(|a| !a.is_empty()),
        };
        let created =
            self.bookings.create(&caller, request, &event_metadata(&metadata, &caller.user_id), claim.as_ref()).await;
        match created {
            Ok(created) => Ok(Response::new(created_to_pb(created))),
            Err(error) => {
                let status = Status::from(error);
                idempotent::settle_failure(pool, claim.as_ref(), &status).await;
                Err(status)
            }
        }
    }

    async fn cancel_booking(
        &self,
        request: Request<pb::CancelBookingRequest>,
    ) -> Result<Response<pb::CancelBookingResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let metadata = request.metadata().clone();
        let body = request.into_inner();
        self.bookings.cancel(&caller, &body.booking_id, &event_metadata(&metadata, &caller.user_id)).await?;
        Ok(Response::new(pb::CancelBookingResponse {}))
    }

    async fn get_booking(&self, request: Request<pb::GetBookingRequest>) -> Result<Response<pb::Booking>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let body = request.into_inner();
        let booking = self.bookings.get(&caller, &body.booking_id).await?;
        Ok(Response::new(booking_to_pb(booking)))
    }

    async fn list_user_bookings(
        &self,
        request: Request<pb::ListUserBookingsRequest>,
    ) -> Result<Response<pb::ListUserBookingsResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let body = request.into_inner();
        let before = Some(body.before.as_str()).filter(|b| !b.is_empty());
        let rows = self.bookings.list(&caller.user_id, body.limit, before).await?;
        Ok(Response::new(pb::ListUserBookingsResponse { bookings: rows.into_iter().map(row_to_pb).collect() }))
    }

    async fn get_occupied_seat(
        &self,
        request: Request<pb::GetOccupiedSeatRequest>,
    ) -> Result<Response<pb::OccupiedSeat>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let body = request.into_inner();
        let seat = self.bookings.occupied_seat(&caller, &body.performance_id, &body.seat_id).await?;
        Ok(Response::new(pb::OccupiedSeat {
            booking_id: seat.booking_id,
            user_id: seat.user_id,
            locked_until: seat.locked_until.map(timestamp),
            status: seat.status,
        }))
    }

    async fn get_seat_map(&self, request: Request<pb::GetSeatMapRequest>) -> Result<Response<pb::SeatMap>, Status> {
        self.caller(request.metadata()).await?;
        let body = request.into_inner();
        let (performance, seats) = self.bookings.seat_map(&body.performance_id).await?;
        Ok(Response::new(pb::SeatMap {
            performance_id: performance.performance_id,
            title: performance.title,
            starts_at: performance.starts_at.map(timestamp),
            seats: seats.into_iter().map(|s| pb::Seat { seat_id: s.seat_id, price: s.price, state: s.state }).collect(),
        }))
    }

    async fn list_performances(
        &self,
        request: Request<pb::ListPerformancesRequest>,
    ) -> Result<Response<pb::ListPerformancesResponse>, Status> {
        self.caller(request.metadata()).await?;
        let body = request.into_inner();
        let after = Some(body.after.as_str()).filter(|a| !a.is_empty());
        let (page, more) = self.bookings.performances(body.limit, after).await?;
        Ok(Response::new(pb::ListPerformancesResponse {
            performances: page.into_iter().map(summary_to_pb).collect(),
            more,
        }))
    }

    async fn get_performance(
        &self,
        request: Request<pb::GetPerformanceRequest>,
    ) -> Result<Response<pb::PerformanceSummary>, Status> {
        self.caller(request.metadata()).await?;
        let body = request.into_inner();
        Ok(Response::new(summary_to_pb(self.bookings.performance(&body.performance_id).await?)))
    }

    async fn set_up_on_sale(&self, request: Request<pb::SetUpOnSaleRequest>) -> Result<Response<pb::OnSale>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let body = request.into_inner();
        let opens_at = body
            .opens_at
            .as_ref()
            .and_then(proto::time::from_timestamp)
            .ok_or_else(|| Status::from(BookingError::Invalid("opensAt is required (RFC 3339).".into())))?;
        let settings = OnSaleSettings::new(
            opens_at,
            body.max_active,
            body.admit_per_minute,
            body.admission_seconds,
            body.place_keep_seconds,
        )
        .map_err(|bad| Status::from(BookingError::Invalid(bad.0)))?;
        let view = self.bookings.waiting_room().set_up(&caller, &body.performance_id, settings).await?;
        Ok(Response::new(onsale_to_pb(view)))
    }

    async fn get_on_sale(&self, request: Request<pb::GetOnSaleRequest>) -> Result<Response<pb::OnSale>, Status> {
        self.caller(request.metadata()).await?;
        let view = self.bookings.waiting_room().get(&request.into_inner().performance_id).await?;
        Ok(Response::new(onsale_to_pb(view)))
    }

    async fn close_on_sale(
        &self,
        request: Request<pb::CloseOnSaleRequest>,
    ) -> Result<Response<pb::CloseOnSaleResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        self.bookings.waiting_room().close(&caller, &request.into_inner().performance_id).await?;
        Ok(Response::new(pb::CloseOnSaleResponse {}))
    }

    async fn join_queue(&self, request: Request<pb::JoinQueueRequest>) -> Result<Response<pb::QueuePlace>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let performance_id = request.into_inner().performance_id;
        let place = self.bookings.waiting_room().join(&caller, &performance_id).await?;
        Ok(Response::new(place_to_pb(performance_id, place)))
    }

    async fn join_queue_many(
        &self,
        request: Request<pb::JoinQueueManyRequest>,
    ) -> Result<Response<pb::JoinQueueManyResponse>, Status> {
        let body = request.into_inner();
        let most = pb::JOIN_QUEUE_MANY_MOST_JOINERS;
        if body.joiners.len() > most {
            return Err(Status::invalid_argument(format!("At most {most} joiners per call.")));
        }
        let room = self.bookings.waiting_room();
        let performance_id = body.performance_id.as_str();
        // Every joiner's own token names them; all are sent to the join
        // writer at once, so they share its batches like separate calls.
        let joins = body.joiners.iter().map(|joiner| async move {
            let caller = token_caller(&self.verifier, &joiner.token).await?;
            room.join(&caller, performance_id).await.map_err(Status::from)
        });
        let outcomes = futures::future::join_all(joins)
            .await
            .into_iter()
            .map(|outcome| pb::JoinOutcome {
                outcome: Some(match outcome {
                    Ok(place) => pb::join_outcome::Outcome::Place(place_to_pb(body.performance_id.clone(), place)),
                    Err(refused) => pb::join_outcome::Outcome::Refused(pb::JoinRefusal::from(&refused)),
                }),
            })
            .collect();
        Ok(Response::new(pb::JoinQueueManyResponse { outcomes }))
    }

    async fn get_queue_place(
        &self,
        request: Request<pb::GetQueuePlaceRequest>,
    ) -> Result<Response<pb::QueuePlace>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let performance_id = request.into_inner().performance_id;
        let place = self.bookings.waiting_room().place(&caller, &performance_id).await?;
        Ok(Response::new(place_to_pb(performance_id, place)))
    }

    type StreamQueuePlaceStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::QueuePlace, Status>> + Send + 'static>>;

    async fn stream_queue_place(
        &self,
        request: Request<pb::StreamQueuePlaceRequest>,
    ) -> Result<Response<Self::StreamQueuePlaceStream>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let performance_id = request.into_inner().performance_id;
        let room = self.bookings.waiting_room().clone();
        // The first look answers "not in the queue" as a status.
        let first = room.place(&caller, &performance_id).await?;
        let stopping = self.shutdown.clone().cancelled_owned();
        let places = crate::waiting_room::place_changes(room, caller, performance_id.clone(), first)
            .take_until(stopping)
            .map(move |place| Ok(place_to_pb(performance_id.clone(), place)));
        Ok(Response::new(Box::pin(places)))
    }

    type WatchQueuePlacesStream = watch_places::PlacesStream;

    async fn watch_queue_places(
        &self,
        request: Request<tonic::Streaming<pb::WatchQueuePlacesRequest>>,
    ) -> Result<Response<Self::WatchQueuePlacesStream>, Status> {
        let room = self.bookings.waiting_room().clone();
        let places = watch_places::serve(room, self.verifier.clone(), self.shutdown.clone(), request.into_inner());
        Ok(Response::new(places))
    }

    async fn register_performance(
        &self,
        request: Request<pb::RegisterPerformanceRequest>,
    ) -> Result<Response<pb::RegisterPerformanceResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let body = request.into_inner();
        let starts_at = match body.starts_at {
            Some(ts) => Some(
                proto::time::from_timestamp(&ts)
                    .ok_or_else(|| Status::from(BookingError::Invalid("startsAt is out of range.".into())))?,
            ),
            None => None,
        };
        let performance_id = body.performance_id.clone();
        let seat_count = self
            .bookings
            .register_performance(
                &caller,
                NewPerformance {
                    performance_id: body.performance_id,
                    title: body.title,
                    starts_at,
                    rows: body
                        .rows
                        .into_iter()
                        .map(|r| RowSpec { row: r.row, seats: r.seats, price: r.price })
                        .collect(),
                },
            )
            .await?;
        Ok(Response::new(pb::RegisterPerformanceResponse { performance_id, seat_count }))
    }

    async fn await_decision(
        &self,
        request: Request<pb::AwaitDecisionRequest>,
    ) -> Result<Response<pb::Booking>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let body = request.into_inner();
        let timeout = std::time::Duration::from_millis(u64::from(body.timeout_ms.min(MAX_AWAIT_MS)));
        let booking =
            self.bookings.await_decision(&caller, &body.booking_id, timeout, body.until_payment_settled).await?;
        Ok(Response::new(booking_to_pb(booking)))
    }

    async fn admit_payment(
        &self,
        request: Request<pb::AdmitPaymentRequest>,
    ) -> Result<Response<pb::AdmitPaymentResponse>, Status> {
        // The payer's own token, forwarded by the payment-service: only the
        // booking's owner can have its payment admitted.
        let payer = self.caller(request.metadata()).await?;
        let metadata = request.metadata().clone();
        let body = request.into_inner();
        let locked_until = self
            .bookings
            .admit_payment(
                &body.booking_id,
                &body.payment_intent_id,
                &payer.user_id,
                body.admission_secs,
                &event_metadata(&metadata, "system:payment-service"),
            )
            .await?;
        Ok(Response::new(pb::AdmitPaymentResponse { locked_until: Some(timestamp(locked_until)) }))
    }
}
