"""The Pub/Sub publisher against a local fake of the Publisher gRPC service.

The official client (google-cloud-pubsub) talks real gRPC to a server in this process
that implements google.pubsub.v1.Publisher/Publish with the library's own protobuf
types, reached the way the emulator is (PUBSUB_EMULATOR_HOST). What this proves: the
request the client sends (topic path, data = our envelope JSON, attribute event_type,
ordering key = subject, per-key order), that only acknowledged ids count as accepted,
and that the relay leaves rejected rows unpublished. What it cannot prove: Google's
server-side behaviour (authentication, quotas, ordering guarantees, dead-letter topics).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.pubsub_v1.types import PublishRequest, PublishResponse

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.pubsub import PubSubPublisher, pubsub_message
from fusion_prime.platform.bus.relay import Relay, RelayError
from fusion_prime.platform.database import create_engine, normalise_database_url
from tests.conftest import MakeDatabase
from tests.harness import count_rows, fetch
from tests.platform.bus.consumerapp import MIGRATIONS, TOPIC
from tests.platform.bus.helpers import insert_outbox, make_events, outgoing

PROJECT = "fusion-prime-test"


class FakePublisher:
    """Records every PublishRequest; refuses messages whose subject is in `reject`."""

    def __init__(self) -> None:
        self.requests: list[PublishRequest] = []
        self.reject: set[str] = set()
        self.lock = threading.Lock()
        self.counter = 0

    def publish(self, request: PublishRequest, context: grpc.ServicerContext) -> PublishResponse:
        with self.lock:
            if any(m.ordering_key in self.reject for m in request.messages):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "rejected by the fake")
            self.requests.append(request)
            ids = []
            for _ in request.messages:
                self.counter += 1
                ids.append(str(self.counter))
        return PublishResponse(message_ids=ids)


@pytest.fixture
def fake_pubsub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePublisher]:
    fake = FakePublisher()
    handler = grpc.method_handlers_generic_handler(
        "google.pubsub.v1.Publisher",
        {
            "Publish": grpc.unary_unary_rpc_method_handler(
                fake.publish,
                request_deserializer=PublishRequest.deserialize,
                response_serializer=PublishResponse.serialize,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")
    try:
        yield fake
    finally:
        server.stop(grace=None)


def _messages(fake: FakePublisher) -> list[tuple[str, Any]]:
    return [(r.topic, m) for r in fake.requests for m in r.messages]


def test_message_construction() -> None:
    (event,) = outgoing(make_events(1))
    data, attributes, key = pubsub_message(event)
    assert Envelope.from_json(data).id == event.event_id
    assert attributes == {"event_type": event.event_type, "event_id": str(event.event_id)}
    assert key == event.subject


async def test_publisher_sends_ordering_key_attributes_and_envelope(
    fake_pubsub: FakePublisher,
) -> None:
    events = outgoing(make_events(6, subjects=2))
    publisher = PubSubPublisher(PROJECT)
    result = await publisher.publish(events)
    assert result.accepted == {e.event_id for e in events}
    assert result.refused == {}
    sent = _messages(fake_pubsub)
    assert len(sent) == 6
    assert {topic for topic, _ in sent} == {f"projects/{PROJECT}/topics/{TOPIC}"}
    by_id = {m.attributes["event_id"]: m for _, m in sent}
    for e in events:
        m = by_id[str(e.event_id)]
        assert m.ordering_key == e.subject
        assert m.attributes["event_type"] == e.event_type
        assert Envelope.from_json(m.data).id == e.event_id
    for subject in ("s0", "s1"):  # per ordering key, the publish order is kept
        order = [m.attributes["event_id"] for _, m in sent if m.ordering_key == subject]
        assert order == [str(e.event_id) for e in events if e.subject == subject]


async def test_relay_marks_published_only_what_pubsub_accepted(
    fake_pubsub: FakePublisher, make_database: MakeDatabase
) -> None:
    db_url = await make_database("busconsumer", MIGRATIONS)
    events = make_events(6, subjects=2)
    await insert_outbox(db_url, events)
    fake_pubsub.reject = {"s1"}
    engine = create_engine(normalise_database_url(db_url, service="t"), pool_size=2)
    try:
        relay = Relay("busconsumer", engine, PubSubPublisher(PROJECT))
        with pytest.raises(RelayError):
            await relay.run_once()
        assert await count_rows(db_url, "outbox", "published_at IS NOT NULL") == 3
        # INVALID_ARGUMENT is a refusal: the oldest row of the key is charged an attempt,
        # the ones held back behind it for order are not
        unpublished = await fetch(
            db_url,
            "SELECT attempts, last_error FROM outbox WHERE published_at IS NULL "
            "AND subject = 's1' ORDER BY seq",
        )
        assert [r["attempts"] for r in unpublished] == [1, 0, 0]
        assert "rejected by the fake" in unpublished[0]["last_error"]
        fake_pubsub.reject = set()
        relay = Relay("busconsumer", engine, PubSubPublisher(PROJECT))
        assert await relay.run_once() == 3
        assert await count_rows(db_url, "outbox", "published_at IS NULL") == 0
    finally:
        await engine.dispose()


async def test_a_message_pubsub_keeps_refusing_is_dead_lettered_and_its_key_flows_on(
    fake_pubsub: FakePublisher, make_database: MakeDatabase
) -> None:
    db_url = await make_database("busconsumer", MIGRATIONS)
    events = make_events(6, subjects=2)
    await insert_outbox(db_url, events)
    bad = events[1]  # the oldest message of s1
    fake_pubsub.reject = {"s1"}
    engine = create_engine(normalise_database_url(db_url, service="t"), pool_size=2)
    try:
        for _ in range(2):  # refused twice: max attempts reached
            relay = Relay("busconsumer", engine, PubSubPublisher(PROJECT), max_attempts=2)
            with pytest.raises(RelayError):
                await relay.run_once()
        fake_pubsub.reject = set()  # the broker would take the others of s1
        relay = Relay("busconsumer", engine, PubSubPublisher(PROJECT), max_attempts=2)
        assert await relay.run_once() == 2
        assert await relay.run_once() == 0  # the dead-lettered row is not relayed again
    finally:
        await engine.dispose()
    unpublished = await fetch(db_url, "SELECT id, attempts FROM outbox WHERE published_at IS NULL")
    assert [(r["id"], r["attempts"]) for r in unpublished] == [(bad.id, 2)]
    sent = [m.attributes["event_id"] for _, m in _messages(fake_pubsub) if m.ordering_key == "s1"]
    assert sent == [str(e.id) for e in events if e.subject == "s1" and e is not bad]
