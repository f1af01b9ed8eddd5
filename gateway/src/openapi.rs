//! The OpenAPI 3.1 document of the REST contract, generated from the
//! handlers' annotations and served at `/openapi.json`.

use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use crate::routes::{bookings, catalog, health, payments, performances, seat_stream};

/// The REST API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Ticketing REST API", version = "1.0.0",
        description = "Seat booking and payment. Every endpoint but health and docs needs `Authorization: Bearer <JWT>`."),
    paths(
        bookings::create_booking, bookings::my_bookings, bookings::get_booking, bookings::cancel_booking,
        payments::execute_payment,
        catalog::occupied_seat, performances::list_performances, performances::get_performance, catalog::register_performance, catalog::seat_map, seat_stream::seat_stream,
        health::healthz, health::readyz,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth, &PathIds),
    tags((name = "Bookings"), (name = "Payments"), (name = "Seats"), (name = "Performances"), (name = "Health"))
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
