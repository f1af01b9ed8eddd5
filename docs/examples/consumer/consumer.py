"""A complete consumer of the ticketing platform's booking and payment events.

It starts from the first event ever recorded, through each service's event
feed (gRPC, `ticketing.feed.v1.EventFeed`), then switches to Kafka without
losing or double-handling an event: every event with a position at or
below the last one the feed gave was handled already and is skipped; the
rest is handled once (dedupe on `ce_id`), in order per booking (checked
with `ce_sequence`). What it builds is each booking's status; a real
consumer would keep that, and its last position, in its own database.

Code for the messages is generated from the repository's `proto/` at start
(grpcio-tools), so nothing here is hand-written protobuf. An event type this
code does not know (a newer producer) is counted and skipped, never fatal.

    python3 consumer.py --proto ../../../proto --booking-feed 127.0.0.1:50051 \
        --payment-feed 127.0.0.1:50052 --kafka 127.0.0.1:9092 --token "$FEED_TOKEN"

Requirements: requirements.txt beside this file.
"""

import argparse
import importlib
import json
import os
import queue
import sys
import tempfile
import threading
import time

import grpc
from confluent_kafka import Consumer, KafkaException


def generate(proto_dir):
    """Generates the Python code of the feed and the events from proto/."""
    import grpc_tools
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="ticketing-proto-")
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    for proto in ("ticketing/feed/v1/feed.proto", "ticketing/events/v1/events.proto"):
        code = protoc.main(
            ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", proto]
        )
        if code != 0:
            raise SystemExit(f"protoc failed on {proto}")
    sys.path.insert(0, out)
    feed = importlib.import_module("ticketing.feed.v1.feed_pb2")
    feed_grpc = importlib.import_module("ticketing.feed.v1.feed_pb2_grpc")
    events = importlib.import_module("ticketing.events.v1.events_pb2")
    return feed, feed_grpc, events


# What each event means for a booking's status. Types not listed here (and
# unknown ones) do not change it.
STATUS = {
    "SeatLocked": "PENDING",
    "BookingConfirmed": "CONFIRMED",
    "BookingCancelled": "CANCELLED",
    "BookingExpired": "EXPIRED",
    "BookingFailed": "FAILED",
}


class Consumer_:
    """The consumer's state: what it handled, and what it built from it."""

    def __init__(self, events):
        self.events = events
        self.seen = set()  # ce_id of every event handled (dedupe)
        self.last_sequence = {}  # (topic, ce_subject) -> last ce_sequence handled
        self.bookings = {}  # booking id -> status
        self.paid = set()  # booking ids with a PaymentSucceeded
        self.counts = {"feed": 0, "kafka": 0, "duplicates": 0, "skipped_by_position": 0,
                       "unknown_types": 0, "gaps": 0}

    def handle(self, source, topic, event_id, event_type, subject, sequence, data):
        """Handles one event once; returns False for a repeat. `ce_sequence`
        numbers a subject's events within one topic (one service)."""
        if event_id in self.seen:
            self.counts["duplicates"] += 1
            return False
        stream = (topic, subject)
        last = self.last_sequence.get(stream, 0)
        if sequence <= last:
            # Handled before under another delivery (at-least-once).
            self.counts["duplicates"] += 1
            return False
        if sequence != last + 1:
            # A missing event: never expected (Kafka keeps a key's order and
            # the feed is gap-free); a real consumer would stop and re-read
            # the stream from the feed.
            self.counts["gaps"] += 1
            print(f"gap in {stream}: {last} then {sequence}", file=sys.stderr)
        self.seen.add(event_id)
        self.last_sequence[stream] = sequence
        self.counts[source] += 1
        name = event_type.rsplit(".", 1)[-1]
        message_class = getattr(self.events, name, None)
        if message_class is None:
            self.counts["unknown_types"] += 1
            return True
        message = message_class.FromString(data)
        if name in STATUS:
            self.bookings[message.booking_id] = STATUS[name]
        elif name == "PaymentSucceeded":
            self.paid.add(message.booking_id)
        return True


def read_feed(feed, feed_grpc, address, topic, token, from_position, idle, consumer):
    """Reads a service's feed (whose events go to `topic`) from
    `from_position` until it has been quiet for `idle` seconds (history
    done); returns the last position."""
    channel = grpc.insecure_channel(address)
    stub = feed_grpc.EventFeedStub(channel)
    stream = stub.Subscribe(feed.SubscribeRequest(from_position=from_position),
                            metadata=[("authorization", f"Bearer {token}")])
    arrived = queue.Queue()

    def pump():
        try:
            for event in stream:
                arrived.put(event)
        except grpc.RpcError as error:
            arrived.put(error)
        arrived.put(None)

    threading.Thread(target=pump, daemon=True).start()
    position = from_position
    while True:
        try:
            item = arrived.get(timeout=idle)
        except queue.Empty:
            break
        if item is None:
            break
        if isinstance(item, grpc.RpcError):
            if item.code() == grpc.StatusCode.CANCELLED:
                break
            raise SystemExit(f"event feed at {address}: {item.code()} {item.details()}")
        consumer.handle("feed", topic, item.event_id, item.type, item.subject, item.sequence, item.data)
        position = item.position
    stream.cancel()
    channel.close()
    return position


def read_kafka(brokers, topics, handed_over, consumer, idle, group):
    """Reads the topics from their start, skipping what the feed gave
    (ce_position at or below its service's last feed position); stops after
    `idle` seconds without a record when `idle` is set."""
    kafka = Consumer({"bootstrap.servers": brokers, "group.id": group, "auto.offset.reset": "earliest",
                      "enable.auto.commit": False})
    kafka.subscribe(topics)
    quiet_since = time.monotonic()
    try:
        while idle is None or time.monotonic() - quiet_since < idle:
            record = kafka.poll(0.5)
            if record is None:
                continue
            if record.error():
                if record.error().fatal():
                    raise KafkaException(record.error())
                continue
            quiet_since = time.monotonic()
            headers = {key: (value or b"").decode() for key, value in (record.headers() or [])}
            position = int(headers.get("ce_position", "0"))
            if position <= handed_over.get(record.topic(), 0):
                consumer.counts["skipped_by_position"] += 1
                continue
            consumer.handle("kafka", record.topic(), headers["ce_id"], headers["ce_type"], headers["ce_subject"],
                            int(headers["ce_sequence"]), record.value())
    finally:
        kafka.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proto", required=True, help="the repository's proto/ folder")
    parser.add_argument("--booking-feed", default="127.0.0.1:50051")
    parser.add_argument("--payment-feed", default="127.0.0.1:50052")
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--booking-topic", default="booking.events.v1")
    parser.add_argument("--payment-topic", default="payment.events.v1")
    parser.add_argument("--token", default=os.environ.get("FEED_TOKEN"), help="a token with role events")
    parser.add_argument("--group", default="example-consumer")
    parser.add_argument("--history-idle", type=float, default=1.0,
                        help="seconds without a feed event after which the history is read")
    parser.add_argument("--until-idle", type=float, default=None,
                        help="stop after this many seconds without a Kafka record (default: run forever)")
    args = parser.parse_args()
    if not args.token:
        raise SystemExit("a token with role events is needed: --token or FEED_TOKEN")
    feed, feed_grpc, events = generate(args.proto)
    consumer = Consumer_(events)
    # 1. History from the first event, from each service's feed.
    handed_over = {
        topic: read_feed(feed, feed_grpc, address, topic, args.token, 0, args.history_idle, consumer)
        for address, topic in ((args.booking_feed, args.booking_topic), (args.payment_feed, args.payment_topic))
    }
    # 2. Live from Kafka, from where the feed left off (by position).
    try:
        read_kafka(args.kafka, [args.booking_topic, args.payment_topic], handed_over, consumer, args.until_idle,
                   args.group)
    except KeyboardInterrupt:
        pass
    print(json.dumps({"handed_over_at": handed_over, "counts": consumer.counts, "bookings": consumer.bookings,
                      "paid": sorted(consumer.paid)}))


if __name__ == "__main__":
    main()
