//! The internal gRPC APIs trust no caller by what it says: each method,
//! called over a real tonic client without credentials, with a forged
//! token, with another user's token, or with a body that names someone
//! else, is refused or answers only for the token's own user.

use proto::{booking as bpb, payment as ppb};
use reqwest::StatusCode;
use tonic::{Code, Request};

use crate::support::System;

fn code<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// A request with a bearer token signed by someone who does not hold the key.
fn forged<T>(message: T) -> Request<T> {
    let token = edge::auth::issue_token("not-the-deployment-secret-but-long-enough", "victim", true, 600).unwrap();
    let mut request = Request::new(message);
    edge::wire::forward_bearer(&mut request, &token);
    request
}

/// Without credentials, or with forged ones.
fn unauthenticated<T>(forge: bool, message: T) -> Request<T> {
    if forge {
        forged(message)
    } else {
        Request::new(message)
    }
}

/// A body naming `user` as an admin caller, in the deprecated field.
fn claimed_admin(user: &str) -> Option<bpb::Caller> {
    #[allow(deprecated)]
    Some(bpb::Caller { user_id: user.to_owned(), admin: true })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_booking_method_refuses_calls_without_valid_credentials() {
    let sys = System::start().await;
    let (booking, intent) = sys.book("grpc_owner", "perf_001", &["C1"]).await;
    let mut client = sys.booking_grpc().await;

    #[allow(deprecated)]
    let create = bpb::CreateBookingRequest {
        caller: claimed_admin("grpc_owner"),
        performance_id: "perf_001".into(),
        seat_ids: vec!["C2".into()],
        user_id: "grpc_owner".into(),
        ..Default::default()
    };
    #[allow(deprecated)]
    let get = bpb::GetBookingRequest { caller: claimed_admin("grpc_owner"), booking_id: booking.clone() };
    #[allow(deprecated)]
    let cancel = bpb::CancelBookingRequest { caller: claimed_admin("grpc_owner"), booking_id: booking.clone() };
    #[allow(deprecated)]
    let list = bpb::ListUserBookingsRequest { caller: claimed_admin("grpc_owner"), ..Default::default() };
    let seat =
        bpb::GetOccupiedSeatRequest { performance_id: "perf_001".into(), seat_id: "C1".into(), ..Default::default() };
    let map = bpb::GetSeatMapRequest { performance_id: "perf_001".into(), ..Default::default() };
    let register = bpb::RegisterPerformanceRequest {
        performance_id: "perf_grpc_unauth".into(),
        title: "x".into(),
        rows: vec![bpb::SeatRow { row: "A".into(), seats: 2, price: 100 }],
        ..Default::default()
    };
    #[allow(deprecated)]
    let admit = bpb::AdmitPaymentRequest {
        booking_id: booking.clone(),
        payment_intent_id: intent.clone(),
        user_id: "grpc_owner".into(),
        admission_secs: 0,
    };

    for forge in [false, true] {
        let codes = [
            ("CreateBooking", code(client.create_booking(unauthenticated(forge, create.clone())).await)),
            ("GetBooking", code(client.get_booking(unauthenticated(forge, get.clone())).await)),
            ("CancelBooking", code(client.cancel_booking(unauthenticated(forge, cancel.clone())).await)),
            ("ListUserBookings", code(client.list_user_bookings(unauthenticated(forge, list.clone())).await)),
            ("GetOccupiedSeat", code(client.get_occupied_seat(unauthenticated(forge, seat.clone())).await)),
            ("GetSeatMap", code(client.get_seat_map(unauthenticated(forge, map.clone())).await)),
            (
                "SetUpOnSale",
                code(client.set_up_on_sale(unauthenticated(forge, bpb::SetUpOnSaleRequest::default())).await),
            ),
            ("GetOnSale", code(client.get_on_sale(unauthenticated(forge, bpb::GetOnSaleRequest::default())).await)),
            (
                "CloseOnSale",
                code(client.close_on_sale(unauthenticated(forge, bpb::CloseOnSaleRequest::default())).await),
            ),
            ("JoinQueue", code(client.join_queue(unauthenticated(forge, bpb::JoinQueueRequest::default())).await)),
            (
                "GetQueuePlace",
                code(client.get_queue_place(unauthenticated(forge, bpb::GetQueuePlaceRequest::default())).await),
            ),
            (
                "StreamQueuePlace",
                code(client.stream_queue_place(unauthenticated(forge, bpb::StreamQueuePlaceRequest::default())).await),
            ),
            (
                "ListPerformances",
                code(client.list_performances(unauthenticated(forge, bpb::ListPerformancesRequest::default())).await),
            ),
            (
                "GetPerformance",
                code(client.get_performance(unauthenticated(forge, bpb::GetPerformanceRequest::default())).await),
            ),
            (
                "AwaitDecision",
                code(client.await_decision(unauthenticated(forge, bpb::AwaitDecisionRequest::default())).await),
            ),
            ("RegisterPerformance", code(client.register_performance(unauthenticated(forge, register.clone())).await)),
            ("AdmitPayment", code(client.admit_payment(unauthenticated(forge, admit.clone())).await)),
        ];
        for (method, code) in codes {
            assert_eq!(code, Code::Unauthenticated, "{method} (forged token: {forge})");
        }
    }
    // Nothing changed: the booking is still pending and the seat still held.
    assert_eq!(sys.get(&format!("/bookings/{booking}"), "grpc_owner").await.body["status"], "pending");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_token_cannot_read_cancel_list_or_admit_and_the_body_names_no_one() {
    let sys = System::start().await;
    let (booking, intent) = sys.book("grpc_victim", "perf_001", &["C3"]).await;
    let mut client = sys.booking_grpc().await;

    let get = bpb::GetBookingRequest { booking_id: booking.clone(), ..Default::default() };
    assert_eq!(code(client.get_booking(sys.as_user("grpc_mallory", get.clone())).await), Code::PermissionDenied);
    assert_eq!(code(client.get_booking(sys.as_user("grpc_victim", get)).await), Code::Ok);

    #[allow(deprecated)]
    let cancel = bpb::CancelBookingRequest { caller: claimed_admin("grpc_victim"), booking_id: booking.clone() };
    assert_eq!(code(client.cancel_booking(sys.as_user("grpc_mallory", cancel)).await), Code::PermissionDenied);

    // The body's caller and user are ignored: the list is the token's user's.
    #[allow(deprecated)]
    let list = bpb::ListUserBookingsRequest { caller: claimed_admin("grpc_victim"), ..Default::default() };
    let listed = client.list_user_bookings(sys.as_user("grpc_mallory", list)).await.unwrap().into_inner();
    assert!(listed.bookings.is_empty(), "mallory sees no one's bookings: {:?}", listed.bookings);

    // Booking for someone else through the body is refused.
    let create = bpb::CreateBookingRequest {
        performance_id: "perf_001".into(),
        seat_ids: vec!["C4".into()],
        user_id: "grpc_victim".into(),
        ..Default::default()
    };
    assert_eq!(code(client.create_booking(sys.as_user("grpc_mallory", create)).await), Code::PermissionDenied);

    // Admission is for the booking's owner only, whatever user_id the body names.
    #[allow(deprecated)]
    let admit = bpb::AdmitPaymentRequest {
        booking_id: booking.clone(),
        payment_intent_id: intent.clone(),
        user_id: "grpc_victim".into(),
        admission_secs: 0,
    };
    assert_eq!(code(client.admit_payment(sys.as_user("grpc_mallory", admit)).await), Code::PermissionDenied);

    // Admin-only: a plain user's token, even with an admin caller in the body.
    #[allow(deprecated)]
    let register = bpb::RegisterPerformanceRequest {
        caller: claimed_admin("grpc_mallory"),
        performance_id: "perf_grpc_admin".into(),
        title: "x".into(),
        rows: vec![bpb::SeatRow { row: "A".into(), seats: 2, price: 100 }],
        ..Default::default()
    };
    assert_eq!(
        code(client.register_performance(sys.as_user("grpc_mallory", register.clone())).await),
        Code::PermissionDenied
    );
    let mut as_admin = Request::new(register);
    edge::wire::forward_bearer(&mut as_admin, &sys.admin_token());
    assert_eq!(code(client.register_performance(as_admin).await), Code::Ok);

    // The victim's booking is untouched and still theirs to pay.
    assert_eq!(sys.get(&format!("/bookings/{booking}"), "grpc_victim").await.body["status"], "pending");
    sys.wait_intent("grpc_victim", &intent).await;
    let paid = sys.pay("grpc_victim", &intent, "tok_visa").await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    sys.wait_status("grpc_victim", &booking, "confirmed").await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_methods_take_the_caller_from_the_token_not_the_body() {
    let sys = System::start().await;
    let (booking, intent) = sys.book("grpc_payer", "perf_001", &["C5"]).await;
    sys.wait_intent("grpc_payer", &intent).await;
    let mut client = sys.payment_grpc().await;

    #[allow(deprecated)]
    let read = ppb::GetPaymentIntentRequest {
        caller: Some(ppb::Caller { user_id: "grpc_payer".into(), admin: true }),
        payment_intent_id: intent.clone(),
    };
    assert_eq!(code(client.get_payment_intent(Request::new(read.clone())).await), Code::Unauthenticated);
    assert_eq!(code(client.get_payment_intent(forged(read.clone())).await), Code::Unauthenticated);
    assert_eq!(code(client.get_payment_intent(sys.as_user("grpc_other", read.clone())).await), Code::PermissionDenied);
    assert_eq!(code(client.get_payment_intent(sys.as_user("grpc_payer", read.clone())).await), Code::Ok);
    let mut as_admin = Request::new(read);
    edge::wire::forward_bearer(&mut as_admin, &sys.admin_token());
    assert_eq!(code(client.get_payment_intent(as_admin).await), Code::Ok, "an admin's token reads any intent");

    #[allow(deprecated)]
    let pay = ppb::ExecutePaymentRequest {
        caller: Some(ppb::Caller { user_id: "grpc_payer".into(), admin: true }),
        payment_intent_id: intent.clone(),
        payment_method_token: "tok_visa".into(),
        cvv: "123".into(),
    };
    assert_eq!(code(client.execute_payment(Request::new(pay.clone())).await), Code::Unauthenticated);
    assert_eq!(code(client.execute_payment(forged(pay.clone())).await), Code::Unauthenticated);
    assert_eq!(code(client.execute_payment(sys.as_user("grpc_other", pay.clone())).await), Code::PermissionDenied);
    // The payer's own token pays (and is what the booking-service's admission checks).
    let paid = client.execute_payment(sys.as_user("grpc_payer", pay)).await.unwrap().into_inner();
    assert!(paid.is_success);
    sys.wait_status("grpc_payer", &booking, "confirmed").await;
    sys.stop().await;
}

/// Reflection answers in both protocol versions, so older tools (v1alpha
/// only: Evans, older grpcurl builds, IDE plugins) and newer ones both list
/// the services, on both services' ports. It needs no token, as it
/// describes the API (the published .proto files) and reads no data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_in_v1_and_v1alpha() {
    use futures::StreamExt;
    use tonic_reflection::pb::{v1, v1alpha};
    let sys = System::start().await;
    for (addr, service) in [
        (sys.booking_addr, "ticketing.booking.v1.BookingService"),
        (sys.payment_addr, "ticketing.payment.v1.PaymentService"),
    ] {
        let url = format!("http://127.0.0.1:{}", addr.port());
        let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();

        let ask = v1::ServerReflectionRequest {
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
            ..Default::default()
        };
        let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let mut answers = client.server_reflection_info(futures::stream::iter([ask])).await.unwrap().into_inner();
        let Some(Ok(v1::ServerReflectionResponse {
            message_response: Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)),
            ..
        })) = answers.next().await
        else {
            panic!("v1 reflection answered a list")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.iter().any(|n| n == service), "v1 lists {service}: {names:?}");

        let ask = v1alpha::ServerReflectionRequest {
            message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
            ..Default::default()
        };
        let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
        let mut answers = client.server_reflection_info(futures::stream::iter([ask])).await.unwrap().into_inner();
        let Some(Ok(v1alpha::ServerReflectionResponse {
            message_response: Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)),
            ..
        })) = answers.next().await
        else {
            panic!("v1alpha reflection answered a list")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.iter().any(|n| n == service), "v1alpha lists {service}: {names:?}");
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_queue_many_names_each_joiner_by_their_own_verified_token_and_refuses_the_rest_one_by_one() {
    let sys = System::start().await;
    let id = "perf_grpc_join_many";
    let body = serde_json::json!({"performanceId": id, "title": "x", "rows": [{"row": "A", "seats": 5, "price": 100}]});
    let registered = sys.call(reqwest::Method::POST, "/performances", Some(&sys.admin_token()), Some(body)).await;
    assert_eq!(registered.status, StatusCode::CREATED, "{}", registered.body);
    let opens_at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let onsale = serde_json::json!({"opensAt": opens_at});
    let path = format!("/performances/{id}/onsale");
    let set_up = sys.call(reqwest::Method::PUT, &path, Some(&sys.admin_token()), Some(onsale)).await;
    assert_eq!(set_up.status, StatusCode::OK, "{}", set_up.body);
    let mut client = sys.booking_grpc().await;
    let forged =
        edge::auth::issue_token("not-the-deployment-secret-but-long-enough", "jm_mallory", false, 600).unwrap();
    let joiners = [sys.token("jm_alice"), forged, "not a token".to_owned(), sys.token("jm_bob")];
    let request = bpb::JoinQueueManyRequest {
        performance_id: id.into(),
        joiners: joiners.iter().map(|token| bpb::Joiner { token: token.clone() }).collect(),
    };
    // The call itself carries no identity: each joiner's token is theirs.
    let outcomes = client.join_queue_many(Request::new(request)).await.unwrap().into_inner().outcomes;
    let codes: Vec<Code> = outcomes
        .iter()
        .map(|o| match &o.outcome {
            Some(bpb::join_outcome::Outcome::Place(place)) => {
                assert_eq!(place.state, "queued", "{place:?}");
                Code::Ok
            }
            Some(bpb::join_outcome::Outcome::Refused(refused)) => Code::from_i32(refused.code),
            None => Code::Unknown,
        })
        .collect();
    assert_eq!(codes, [Code::Ok, Code::Unauthenticated, Code::Unauthenticated, Code::Ok]);
    // Alice and Bob hold places; the forged token's user does not.
    for (user, status) in
        [("jm_alice", StatusCode::OK), ("jm_bob", StatusCode::OK), ("jm_mallory", StatusCode::NOT_FOUND)]
    {
        assert_eq!(sys.get(&format!("/performances/{id}/queue"), user).await.status, status, "{user}");
    }
    // A performance without a waiting room refuses each joiner as JoinQueue does.
    let request = bpb::JoinQueueManyRequest {
        performance_id: "perf_001".into(),
        joiners: vec![bpb::Joiner { token: sys.token("jm_alice") }],
    };
    let outcomes = client.join_queue_many(Request::new(request)).await.unwrap().into_inner().outcomes;
    assert!(
        matches!(&outcomes[..], [bpb::JoinOutcome { outcome: Some(bpb::join_outcome::Outcome::Refused(r)) }]
            if r.code == Code::FailedPrecondition as i32),
        "{outcomes:?}"
    );
    // More than a call may carry is refused whole.
    let request = bpb::JoinQueueManyRequest {
        performance_id: id.into(),
        joiners: vec![bpb::Joiner { token: sys.token("jm_alice") }; 1_001],
    };
    assert_eq!(code(client.join_queue_many(Request::new(request)).await), Code::InvalidArgument);
    sys.stop().await;
}

/// A `WatchQueuePlaces` call fed by a channel, and its answers.
async fn watch_call(
    client: &mut bpb::booking_service_client::BookingServiceClient<tonic::transport::Channel>,
    first: bpb::WatchQueuePlacesRequest,
) -> (tokio::sync::mpsc::UnboundedSender<bpb::WatchQueuePlacesRequest>, tonic::Streaming<bpb::WatchQueuePlacesResponse>)
{
    let (requests, mut stream) = tokio::sync::mpsc::unbounded_channel();
    requests.send(first).unwrap();
    let stream = futures::stream::poll_fn(move |cx| stream.poll_recv(cx));
    let answers = client.watch_queue_places(Request::new(stream)).await.unwrap().into_inner();
    (requests, answers)
}

/// The next viewer outcomes a call sends, by viewer: the state told, or the refusal's code.
async fn told(answers: &mut tonic::Streaming<bpb::WatchQueuePlacesResponse>) -> Vec<(u64, Result<String, Code>)> {
    let message = tokio::time::timeout(std::time::Duration::from_secs(10), answers.message())
        .await
        .expect("an answer within 10 s")
        .expect("a message")
        .expect("the call goes on");
    message
        .places
        .into_iter()
        .map(|p| match p.outcome {
            Some(bpb::viewer_place::Outcome::Place(place)) => (p.viewer, Ok(place.state)),
            Some(bpb::viewer_place::Outcome::Refused(refused)) => (p.viewer, Err(Code::from_i32(refused.code))),
            None => (p.viewer, Err(Code::Unknown)),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_queue_places_names_each_viewer_by_their_own_verified_token_and_tells_each_their_own_place() {
    let sys = System::start().await;
    let id = "perf_grpc_watch";
    let body = serde_json::json!({"performanceId": id, "title": "x", "rows": [{"row": "A", "seats": 5, "price": 100}]});
    let registered = sys.call(reqwest::Method::POST, "/performances", Some(&sys.admin_token()), Some(body)).await;
    assert_eq!(registered.status, StatusCode::CREATED, "{}", registered.body);
    let opens_at = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    let onsale = serde_json::json!({"opensAt": opens_at, "maxActive": 1});
    let path = format!("/performances/{id}/onsale");
    let set_up = sys.call(reqwest::Method::PUT, &path, Some(&sys.admin_token()), Some(onsale)).await;
    assert_eq!(set_up.status, StatusCode::OK, "{}", set_up.body);
    for user in ["wq_alice", "wq_bob"] {
        let path = format!("/performances/{id}/queue");
        let joined = sys.call(reqwest::Method::POST, &path, Some(&sys.token(user)), None).await;
        assert_eq!(joined.status, StatusCode::OK);
    }
    let mut client = sys.booking_grpc().await;
    let forged = edge::auth::issue_token("not-the-deployment-secret-but-long-enough", "wq_alice", false, 600).unwrap();
    let start = [(1, sys.token("wq_alice")), (2, forged), (3, sys.token("wq_carol")), (4, sys.token("wq_bob"))];
    // The call itself carries no identity: each viewer's token is theirs.
    let (requests, mut answers) = watch_call(
        &mut client,
        bpb::WatchQueuePlacesRequest {
            performance_id: id.into(),
            start: start.iter().map(|(id, token)| bpb::QueueViewer { id: *id, token: token.clone() }).collect(),
            stop: vec![],
        },
    )
    .await;
    let first = told(&mut answers).await;
    assert_eq!(
        first,
        [
            (1, Ok("queued".to_owned())),
            (2, Err(Code::Unauthenticated)),
            (3, Err(Code::NotFound)),
            (4, Ok("queued".to_owned()))
        ]
    );
    // At the opening both hear at once; then one is admitted (maxActive 1)
    // and is done, the other waits. Bob stops watching; Alice goes on.
    let mut last = std::collections::HashMap::new();
    while !last.values().any(|s: &String| s == "admitted") {
        for (viewer, state) in told(&mut answers).await {
            last.insert(viewer, state.expect("a place"));
        }
    }
    assert!(last.values().any(|s| s == "waiting"), "{last:?}");
    let admitted = *last.iter().find(|(_, s)| *s == "admitted").unwrap().0;
    let waiting = if admitted == 1 { 4 } else { 1 };
    requests.send(bpb::WatchQueuePlacesRequest { stop: vec![waiting], ..Default::default() }).unwrap();
    // A later message may not name another performance; the call ends.
    requests.send(bpb::WatchQueuePlacesRequest { performance_id: "perf_001".into(), ..Default::default() }).unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match answers.message().await {
                Ok(Some(message)) => {
                    assert!(message.places.iter().all(|p| p.viewer != admitted), "told after admitted")
                }
                Ok(None) => return Code::Ok,
                Err(status) => return status.code(),
            }
        }
    })
    .await
    .expect("the call ends");
    assert_eq!(ended, Code::InvalidArgument);
    // More viewers than a message may start are refused whole, and so is
    // a first message that names no performance.
    let too_many = bpb::WatchQueuePlacesRequest {
        performance_id: id.into(),
        start: (0..1_001).map(|n| bpb::QueueViewer { id: n, token: sys.token("wq_alice") }).collect(),
        stop: vec![],
    };
    let (_requests, mut answers) = watch_call(&mut client, too_many).await;
    assert_eq!(answers.message().await.map(|_| ()).map_err(|s| s.code()), Err(Code::InvalidArgument));
    let (_requests, mut answers) = watch_call(&mut client, bpb::WatchQueuePlacesRequest::default()).await;
    assert_eq!(answers.message().await.map(|_| ()).map_err(|s| s.code()), Err(Code::InvalidArgument));
    sys.stop().await;
}
