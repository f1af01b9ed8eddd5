# One image for the three components (gateway, booking-service,
# payment-service); pick one with the command, e.g. `booking-service`.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && mkdir /out \
 && cp target/release/ticketing target/release/gateway target/release/booking-service target/release/payment-service /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home ticketing
COPY --from=build /out/ /usr/local/bin/
USER 10001
ENV LOG_FORMAT=json
EXPOSE 8080 50051 50052 9100
ENTRYPOINT []
CMD ["ticketing", "--help"]
