//! The OpenAPI 3.1 document of the REST contract, generated from the
//! handlers' annotations and served at `/openapi.json`.

use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use crate::routes::{bookings, catalog, health, payments};

/// The REST API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Ticketing REST API", version = "1.0.0",
        description = "Seat booking and payment. Every endpoint but health and docs needs `Authorization: Bearer <JWT>`."),
    paths(
        bookings::create_booking, bookings::my_bookings, bookings::get_booking, bookings::cancel_booking,
        payments::execute_payment,
        catalog::occupied_seat, catalog::register_performance, catalog::seat_map,
        health::healthz, health::readyz,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth),
    tags((name = "Bookings"), (name = "Payments"), (name = "Seats"), (name = "Performances"), (name = "Health"))
)]
pub struct ApiDoc;

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
