//! The `ticketing.payment.v1.PaymentService` gRPC adapter. The caller
//! identity comes from the gateway, which authenticated the JWT.

use proto::payment::{self as pb, payment_service_server::PaymentService};
use shared::{grpc::event_metadata, topics::timestamp};
use tonic::{Request, Response, Status};

use crate::{
    domain::intent::GatewayOutcome,
    payments::{ExecutePayment, Payments},
};

/// gRPC front of the payment use cases.
pub struct PaymentGrpc {
    payments: Payments,
}

impl PaymentGrpc {
    /// Serves `payments`.
    pub fn new(payments: Payments) -> Self {
        Self { payments }
    }
}

fn caller(caller: Option<pb::Caller>) -> Result<pb::Caller, Status> {
    caller.filter(|c| !c.user_id.is_empty()).ok_or_else(|| Status::unauthenticated("Missing or invalid bearer token."))
}

#[tonic::async_trait]
impl PaymentService for PaymentGrpc {
    async fn execute_payment(
        &self,
        request: Request<pb::ExecutePaymentRequest>,
    ) -> Result<Response<pb::ExecutePaymentResponse>, Status> {
        let metadata = request.metadata().clone();
        let body = request.into_inner();
        let caller = caller(body.caller)?;
        let executed = self
            .payments
            .execute(
                &caller.user_id,
                ExecutePayment {
                    payment_intent_id: body.payment_intent_id,
                    payment_method_token: body.payment_method_token,
                    cvv: body.cvv,
                },
                event_metadata(&metadata, &caller.user_id),
            )
            .await?;
        let response = match executed.outcome {
            GatewayOutcome::Success { processed_at } => pb::ExecutePaymentResponse {
                payment_intent_id: executed.payment_intent_id,
                status: "SUCCESS".into(),
                is_success: true,
                processed_at: Some(timestamp(processed_at)),
                failure_code: String::new(),
                failure_concept: String::new(),
            },
            GatewayOutcome::Failure { failure_code, failure_concept, processed_at } => pb::ExecutePaymentResponse {
                payment_intent_id: executed.payment_intent_id,
                status: "FAILURE".into(),
                is_success: false,
                processed_at: Some(timestamp(processed_at)),
                failure_code,
                failure_concept: failure_concept.as_str().into(),
            },
        };
        Ok(Response::new(response))
    }

    async fn get_payment_intent(
        &self,
        request: Request<pb::GetPaymentIntentRequest>,
    ) -> Result<Response<pb::PaymentIntent>, Status> {
        let body = request.into_inner();
        let caller = caller(body.caller)?;
        let intent = self.payments.get(&caller.user_id, caller.admin, &body.payment_intent_id).await?;
        let created = intent.created;
        Ok(Response::new(pb::PaymentIntent {
            payment_intent_id: created.payment_intent_id,
            booking_id: created.booking_id,
            user_id: created.user_id,
            amount: created.amount,
            currency: created.currency,
            status: intent.status.as_str(intent.booking_end.is_some()).into(),
            client_failures: intent.client_failures,
            payable_until: Some(timestamp(created.payable_until)),
        }))
    }
}
