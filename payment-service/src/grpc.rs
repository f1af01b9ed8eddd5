//! The `ticketing.payment.v1.PaymentService` gRPC adapter. Every method
//! takes the caller's identity from the bearer token in its `authorization`
//! metadata, verified here with the same verifier the gateway uses; the
//! deprecated `caller` field of the requests is ignored. The payer's token
//! goes along when the booking-service is asked to admit the payment.

use std::sync::Arc;

use edge::auth::Verifier;
use proto::payment::{self as pb, payment_service_server::PaymentService};
use proto::time::timestamp;
use runtime::grpc::authenticate;
use runtime::grpc::event_metadata;
use runtime::idempotent;
use runtime::idempotent::Step;
use tonic::{Request, Response, Status};

use crate::{
    domain::intent::PspOutcome,
    use_cases::{execute_fingerprint, ExecutePayment, Executed, Payments, EXECUTE_OPERATION},
};

/// gRPC front of the payment use cases.
pub struct PaymentGrpc {
    payments: Payments,
    verifier: Arc<Verifier>,
}

impl PaymentGrpc {
    /// Serves `payments` to callers whose tokens `verifier` accepts.
    pub fn new(payments: Payments, verifier: Arc<Verifier>) -> Self {
        Self { payments, verifier }
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentGrpc {
    async fn execute_payment(
        &self,
        request: Request<pb::ExecutePaymentRequest>,
    ) -> Result<Response<pb::ExecutePaymentResponse>, Status> {
        let credentials = authenticate(&self.verifier, request.metadata()).await?;
        let caller = &credentials.user;
        let metadata = request.metadata().clone();
        let body = request.into_inner();
        let payment = self.payments.validate(ExecutePayment {
            payment_intent_id: body.payment_intent_id,
            payment_method_token: body.payment_method_token,
            cvv: body.cvv,
        })?;
        // The fingerprint leaves the CVV out: it is never stored.
        let fingerprint = execute_fingerprint(&payment.payment_intent_id, &payment.payment_method_token);
        let pool = self.payments.pool();
        let claim =
            match idempotent::start(pool, &metadata, &caller.user_id, EXECUTE_OPERATION, &fingerprint, executed_to_pb)
                .await?
            {
                Step::Run(claim) => claim,
                Step::Answer(answer) => return answer,
            };
        let metadata = event_metadata(&metadata, &caller.user_id);
        match self.payments.execute(&credentials, payment, metadata, claim.clone()).await {
            Ok(executed) => Ok(Response::new(executed_to_pb(executed))),
            Err(error) => {
                // Once a charge may have happened the key stays claimed: the
                // reconciler stores the outcome a retry then replays.
                let keep_claim = error.charge_may_have_happened();
                let status = Status::from(error);
                if !keep_claim {
                    idempotent::settle_failure(pool, claim.as_ref(), &status).await;
                }
                Err(status)
            }
        }
    }

    async fn get_payment_intent(
        &self,
        request: Request<pb::GetPaymentIntentRequest>,
    ) -> Result<Response<pb::PaymentIntent>, Status> {
        let caller = authenticate(&self.verifier, request.metadata()).await?.user;
        let body = request.into_inner();
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

fn executed_to_pb(executed: Executed) -> pb::ExecutePaymentResponse {
    match executed.outcome {
        PspOutcome::Success { processed_at } => pb::ExecutePaymentResponse {
            payment_intent_id: executed.payment_intent_id,
            status: "SUCCESS".into(),
            is_success: true,
            processed_at: Some(timestamp(processed_at)),
            failure_code: String::new(),
            failure_concept: String::new(),
            booking_id: executed.booking_id,
        },
        PspOutcome::Failure { failure_code, failure_concept, processed_at } => pb::ExecutePaymentResponse {
            payment_intent_id: executed.payment_intent_id,
            status: "FAILURE".into(),
            is_success: false,
            processed_at: Some(timestamp(processed_at)),
            failure_code,
            failure_concept: failure_concept.as_str().into(),
            booking_id: executed.booking_id,
        },
    }
}
