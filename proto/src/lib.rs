//! The project's protobuf contracts as Rust types: Kafka integration events
//! (`events`), the booking and payment gRPC services, the event feed both
//! serve (`feed`), and the file
//! descriptor set that gRPC reflection serves.

#![allow(clippy::all, clippy::pedantic)]

pub mod time;

/// Integration events (`ticketing.events.v1`), the value of every Kafka record.
pub mod events {
    tonic::include_proto!("ticketing.events.v1");
}

/// The booking-service gRPC API (`ticketing.booking.v1`).
pub mod booking {
    tonic::include_proto!("ticketing.booking.v1");

    /// Most joiners one `JoinQueueMany` call may carry (the contract's limit:
    /// the service refuses more, and the gateway never sends more).
    pub const JOIN_QUEUE_MANY_MOST_JOINERS: usize = 1_000;

    /// Most viewers one `WatchQueuePlacesRequest` may start (the contract's
    /// limit: the service ends a call that sends more).
    pub const WATCH_QUEUE_PLACES_MOST_STARTS: usize = 1_000;

    /// One person's refusal in a call shared by many, as the status a call
    /// of their own would have ended with.
    impl From<&tonic::Status> for JoinRefusal {
        fn from(status: &tonic::Status) -> Self {
            Self { code: status.code() as i32, message: status.message().to_owned() }
        }
    }

    impl From<JoinRefusal> for tonic::Status {
        fn from(refused: JoinRefusal) -> Self {
            tonic::Status::new(tonic::Code::from_i32(refused.code), refused.message)
        }
    }
}

/// The payment-service gRPC API (`ticketing.payment.v1`).
pub mod payment {
    tonic::include_proto!("ticketing.payment.v1");
}

/// The event feed both services serve (`ticketing.feed.v1`).
pub mod feed {
    tonic::include_proto!("ticketing.feed.v1");
}

/// Encoded `FileDescriptorSet` of every .proto here, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ticketing_descriptor");

pub use prost;
pub use prost_types;
