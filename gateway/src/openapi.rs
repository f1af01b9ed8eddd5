//! The OpenAPI 3.1 document of the REST contract, generated from the
//! handlers' annotations and served at `/openapi.json`.

use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use crate::routes::{bookings, catalog, health, payments, performances, seat_stream, waiting_room};

/// The REST API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Ticketing REST API", version = "1.0.0",
        description = "Seat booking and payment. Every endpoint but health and docs needs `Authorization: Bearer <JWT>`."),
    paths(
        bookings::create_booking, bookings::my_bookings, bookings::get_booking, bookings::cancel_booking,
        payments::execute_payment,
        catalog::occupied_seat, performances::list_performances, performances::get_performance, catalog::register_performance, catalog::seat_map, seat_stream::seat_stream,
        waiting_room::set_up_onsale, waiting_room::get_onsale, waiting_room::close_onsale,
        waiting_room::join_queue, waiting_room::get_queue_place, waiting_room::queue_stream,
        health::healthz, health::readyz,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth, &PathIds, &EdgeAnswers),
    tags((name = "Bookings"), (name = "Payments"), (name = "Seats"), (name = "Performances"), (name = "Waiting room"), (name = "Health"))
)]
pub struct ApiDoc;

/// The document as served. utoipa writes the fields of a link in snake
/// case (`operation_id`); OpenAPI spells them in camel case, so they are
/// renamed here, once, before anyone reads them.
pub fn document() -> serde_json::Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(paths) = document.get_mut("paths").and_then(serde_json::Value::as_object_mut) {
        let responses = paths
            .values_mut()
            .filter_map(serde_json::Value::as_object_mut)
            .flat_map(|item| item.values_mut())
            .filter_map(|operation| operation.get_mut("responses").and_then(serde_json::Value::as_object_mut))
            .flat_map(|responses| responses.values_mut());
        for response in responses {
            let links = response.get_mut("links").and_then(serde_json::Value::as_object_mut);
            for link in links.into_iter().flat_map(|links| links.values_mut()) {
                let Some(link) = link.as_object_mut() else { continue };
                for (snake, camel) in [
                    ("operation_id", "operationId"),
                    ("operation_ref", "operationRef"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(value) = link.remove(snake) {
                        link.insert(camel.to_owned(), value);
                    }
                }
            }
        }
    }
    document
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// Every id in a path is checked the same way (`path_id.rs`): the document
/// says so for each of them.
struct PathIds;

impl Modify for PathIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{
            path::ParameterIn,
            schema::{ObjectBuilder, Type},
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                for parameter in operation.parameters.iter_mut().flatten() {
                    if matches!(parameter.parameter_in, ParameterIn::Path) {
                        let id = ObjectBuilder::new()
                            .schema_type(Type::String)
                            .min_length(Some(1))
                            .max_length(Some(crate::path_id::MAX_ID_CHARS))
                            .pattern(Some(crate::path_id::ID_PATTERN));
                        parameter.schema = Some(id.into());
                    }
                }
            }
        }
    }
}

/// Booking statuses (documentation only: the wire carries the string).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
pub enum BookingStatus {
    Pending,
    Confirmed,
    Cancelled,
    Expired,
    Failed,
    Refunded,
}

/// The status of an occupiedSeats document.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
pub enum HoldStatus {
    Locked,
    Booked,
}

/// A seat's state on the seat map.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
pub enum SeatState {
    Available,
    Locked,
    Booked,
}

/// `SUCCESS`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "UPPERCASE")]
pub enum Success {
    Success,
}

/// `FAILURE`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "UPPERCASE")]
pub enum Failure {
    Failure,
}

/// Whether a decline may succeed on retry (`SERVER_ERROR`) or not.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureConcept {
    ClientError,
    ServerError,
}

/// What the edge may answer on any operation behind it (`admit.rs` and
/// the shedding layer), and the challenge of every 401.
struct EdgeAnswers;

impl Modify for EdgeAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{
            header::HeaderBuilder,
            response::ResponseBuilder,
            schema::{ObjectBuilder, Type},
            ContentBuilder, Ref, RefOr,
        };
        let error = || ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
        let retry_after = || {
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
                .description(Some("Seconds to wait before retrying"))
                .build()
        };
        let challenge = || {
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some("`Bearer`"))
                .build()
        };
        let busy = ResponseBuilder::new()
            .description("The service is busy, or cannot be reached; retry")
            .content("application/json", error())
            .header("Retry-After", retry_after())
            .build();
        let timed_out = ResponseBuilder::new()
            .description("The request took longer than the gateway allows")
            .content("application/json", error())
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if matches!(path.as_str(), "/healthz" | "/readyz") {
                continue;
            }
            let operations = [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                responses.entry("503".into()).or_insert_with(|| RefOr::T(busy.clone()));
                if !path.ends_with("/seats/stream") {
                    responses.entry("504".into()).or_insert_with(|| RefOr::T(timed_out.clone()));
                }
                if let Some(RefOr::T(unauthorized)) = responses.get_mut("401") {
                    unauthorized.headers.insert("WWW-Authenticate".into(), challenge());
                }
            }
        }
    }
}
