"""
BrokerClient against a real private RabbitMQ node.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from fixtures_rabbitmq import Deliveries, connectionOf
from twisted.internet import defer, reactor

from mqtwist.amqp.client import BrokerClient, PublishFailed, QueueSpec

# txamqp still uses defer.returnValue
pytestmark = pytest.mark.filterwarnings(
    "ignore:twisted.internet.defer.returnValue was deprecated:DeprecationWarning"
)


@pytest_twisted.inlineCallbacks
def test_publish_many_all_confirmed(clients, amqp):
    client = clients([QueueSpec("t-many")])
    yield client.whenConnected()
    yield amqp.purge("t-many")
    bodies = [b'{"n": %d}' % i for i in range(2000)]
    results = yield defer.gatherResults([client.publish("t-many", b) for b in bodies])
    assert results == [None] * 2000
    assert (yield amqp.count("t-many")) == 2000
    received = yield amqp.collect("t-many", 2000)
    assert [r.body for r in received] == bodies
    first = received[0].properties
    assert first["delivery-mode"] == 2
    assert first["content-type"] == "application/json"


@pytest_twisted.inlineCallbacks
def test_the_depth_of_the_queue_consumed_from_is_told(clients, amqp):
    """
    The metrics learn how many messages wait in the queue consumed from,
    read when the client connects and every depthInterval seconds.
    """
    yield amqp.declare("t-depth")
    yield amqp.purge("t-depth")
    for n in range(7):
        yield amqp.publish("t-depth", b"%d" % n)
    deliveries = Deliveries()
    client = clients([QueueSpec("t-depth")], consumeFrom="t-depth", prefetch=1, onDelivery=deliveries)
    yield client.whenConnected()
    yield deliveries.atLeast(1)
    sampled = defer.Deferred()
    told = client.metrics.outboxDepth

    def seen(depth: int) -> None:
        told(depth)
        if not sampled.called:
            sampled.callback(depth)

    client.metrics.outboxDepth = seen
    client._readDepth()
    depth = yield sampled
    # one delivered (unacked, so not ready), six ready
    assert depth == 6
    deliveries.received[0].ack()


@pytest_twisted.inlineCallbacks
def test_publish_to_undeclared_queue_declares_it(clients, amqp):
    client = clients([])
    yield client.whenConnected()
    yield amqp.delete("t-undeclared")
    yield client.publish("t-undeclared", b"kept", priority=4, headers={"k": "v", "n": 7})
    received = yield amqp.fetch("t-undeclared")
    assert [r.body for r in received] == [b"kept"]
    assert received[0].properties["priority"] == 4
    assert received[0].properties["headers"] == {"k": "v", "n": 7}


@pytest_twisted.inlineCallbacks
def test_nack_fails_the_publish(clients, amqp):
    yield amqp.delete("t-full")
    client = clients([QueueSpec("t-full", {"x-max-length": 1, "x-overflow": "reject-publish"})])
    yield client.whenConnected()
    yield client.publish("t-full", b"first")
    with pytest.raises(PublishFailed) as info:
        yield client.publish("t-full", b"second")
    assert "rejected (basic.nack)" in str(info.value)
    assert "'t-full'" in str(info.value)
    assert client.metrics.totals("mqtwist_amqp_events_total", "event") == {"publish": 2, "confirm": 1, "nack": 1}
    # the connection is still usable after a nack
    yield client.publish("t-other-after-nack", b"ok")
    assert [r.body for r in (yield amqp.fetch("t-full"))] == [b"first"]
    yield amqp.delete("t-other-after-nack")


@pytest_twisted.inlineCallbacks
def test_publish_when_not_connected_fails_at_once(rabbitmq):
    client = BrokerClient(
        rabbitmq, [], consumeFrom=None, prefetch=1, onDelivery=lambda d: None, reactor=reactor
    )
    with pytest.raises(PublishFailed) as info:
        yield client.publish("anything", b"x")
    assert "not connected" in str(info.value)
    assert "guest:***@" in str(info.value)


def test_bad_headers_and_priority_are_refused(rabbitmq):
    client = BrokerClient(
        rabbitmq, [], consumeFrom=None, prefetch=1, onDelivery=lambda d: None, reactor=reactor
    )
    with pytest.raises(ValueError, match="priority 300"):
        client.publish("q", b"x", priority=300)
    with pytest.raises(ValueError, match="message headers: .*'f'"):
        client.publish("q", b"x", headers={"f": 1j})
    with pytest.raises(ValueError, match="prefetch"):
        BrokerClient(rabbitmq, [], consumeFrom="q", prefetch=70000, onDelivery=print)


@pytest_twisted.inlineCallbacks
def test_consume_with_prefetch_and_ack(clients, amqp, rabbitmqNode):
    yield amqp.declare("t-consume", {"x-max-priority": 10})
    yield amqp.purge("t-consume")
    for i in range(10):
        yield amqp.publish("t-consume", b"m%d" % i, priority=i % 3)
    deliveries = Deliveries()
    client = clients(
        [QueueSpec("t-consume", {"x-max-priority": 10})],
        consumeFrom="t-consume", prefetch=3, onDelivery=deliveries,
    )
    yield client.whenConnected()
    first = yield deliveries.atLeast(3)
    # the broker holds back the rest until something is acknowledged
    listing = yield rabbitmqNode.rabbitmqctl(
        "list_queues", "-q", "--no-table-headers", "name", "messages_ready",
        "messages_unacknowledged",
    )
    assert "t-consume\t7\t3" in listing.splitlines()
    assert all(d.current and not d.redelivered for d in first)
    for d in first:
        d.ack()
        d.ack()  # idempotent
    for n in range(4, 11):
        # each ack lets one more through
        rest = yield deliveries.atLeast(n)
        rest[-1].ack()
    assert sorted(d.body for d in rest) == sorted(b"m%d" % i for i in range(10))
    assert {d.priority for d in rest} == {0, 1, 2}
    yield client.stopConsuming()
    assert (yield amqp.count("t-consume")) == 0


@pytest_twisted.inlineCallbacks
def test_unacked_deliveries_come_back_redelivered(clients, amqp):
    yield amqp.declare("t-redeliver")
    yield amqp.purge("t-redeliver")
    for i in range(3):
        yield amqp.publish("t-redeliver", b"r%d" % i)
    deliveries = Deliveries()
    client = clients([QueueSpec("t-redeliver")], consumeFrom="t-redeliver", onDelivery=deliveries)
    got = yield deliveries.atLeast(3)
    got[0].ack()
    yield client.stopService()
    assert not any(d.current for d in got)
    got[1].ack()  # stale: does nothing
    got[2].release()
    received = yield amqp.collect("t-redeliver", 2)
    assert sorted(r.body for r in received) == [b"r1", b"r2"]
    assert all(r.redelivered for r in received)


@pytest_twisted.inlineCallbacks
def test_release_requeues(clients, amqp):
    yield amqp.declare("t-release")
    yield amqp.purge("t-release")
    yield amqp.publish("t-release", b"again")
    deliveries = Deliveries()
    clients([QueueSpec("t-release")], consumeFrom="t-release", prefetch=1, onDelivery=deliveries)
    first, = yield deliveries.atLeast(1)
    first.release()
    _, second = yield deliveries.atLeast(2)
    assert (second.body, second.redelivered) == (b"again", True)
    second.ack()


@pytest_twisted.inlineCallbacks
def test_reconnect_after_broker_closes_connections(clients, amqp, rabbitmqNode):
    yield amqp.declare("t-reconnect-in")
    yield amqp.purge("t-reconnect-in")
    deliveries = Deliveries()
    client = clients(
        [QueueSpec("t-reconnect"), QueueSpec("t-reconnect-in")],
        consumeFrom="t-reconnect-in", onDelivery=deliveries,
        reconnectMaxDelay=1.0,
    )
    old = yield connectionOf(client)
    yield amqp.delete("t-reconnect")
    yield rabbitmqNode.rabbitmqctl("close_all_connections", "mqtwist test: reconnect")
    # the helper's connection was closed too: reconnect it
    yield old.disconnected.wait()
    yield amqp.connect()
    yield client.whenConnected()
    new = yield connectionOf(client)
    assert new is not old
    assert client.metrics.value("mqtwist_amqp_events_total", event="reconnect") == 1
    # the topology was declared again, the consumer started again
    assert (yield amqp.count("t-reconnect")) == 0
    yield client.publish("t-reconnect", b"after")
    assert [r.body for r in (yield amqp.fetch("t-reconnect"))] == [b"after"]
    yield amqp.publish("t-reconnect-in", b"in")
    (delivery,) = yield deliveries.atLeast(1)
    assert delivery.body == b"in"
    delivery.ack()


@pytest_twisted.inlineCallbacks
def test_connection_loss_fails_unconfirmed_publishes(clients, amqp):
    client = clients([QueueSpec("t-lost")], reconnectMaxDelay=1.0)
    connection = yield connectionOf(client)
    pending = [client.publish("t-lost", b"x") for _ in range(200)]
    connection.transport.abortConnection()
    results = yield defer.DeferredList(pending, consumeErrors=True)
    failures = [r for ok, r in results if not ok]
    assert len(failures) == 200
    assert all(f.check(PublishFailed) for f in failures)
    assert "connection was lost" in str(failures[0].value)
    with pytest.raises(PublishFailed):
        yield client.publish("t-lost", b"meanwhile")
    yield client.whenConnected()
    yield client.publish("t-lost", b"reconnected")
    yield amqp.purge("t-lost")


@pytest_twisted.inlineCallbacks
def test_channel_closed_by_broker_reconnects(clients, amqp):
    yield amqp.delete("t-mismatch")
    yield amqp.declare("t-mismatch", {"x-max-length": 5})
    client = clients([], reconnectMaxDelay=1.0)
    old = yield connectionOf(client)
    # declared with other arguments: the broker closes the publish channel
    with pytest.raises(PublishFailed) as info:
        yield client.publish("t-mismatch", b"x")
    assert "closed the channel" in str(info.value)
    yield client.whenConnected()
    new = yield connectionOf(client)
    assert new is not old
    assert client.metrics.value("mqtwist_amqp_events_total", event="reconnect") == 1
    yield client.publish("t-fine-after-channel-close", b"ok")
    yield amqp.delete("t-fine-after-channel-close")
    yield amqp.delete("t-mismatch")


@pytest_twisted.inlineCallbacks
def test_stop_consuming(clients, amqp):
    yield amqp.declare("t-stop")
    yield amqp.purge("t-stop")
    deliveries = Deliveries()
    client = clients([QueueSpec("t-stop")], consumeFrom="t-stop", onDelivery=deliveries)
    yield client.whenConnected()
    yield amqp.publish("t-stop", b"before")
    (before,) = yield deliveries.atLeast(1)
    before.ack()
    yield client.stopConsuming()
    for i in range(5):
        yield client.publish("t-stop", b"after%d" % i)
    # a round trip on the connection: anything delivered would be here now
    yield amqp.count("t-stop")
    assert [d.body for d in deliveries.received] == [b"before"]
    assert (yield amqp.count("t-stop")) == 5
    yield client.stopConsuming()  # twice is fine
    yield amqp.purge("t-stop")


@pytest_twisted.inlineCallbacks
def test_large_body_bytes_survive(clients, amqp):
    # several frames, UTF-8 split across frame boundaries, invalid UTF-8 too
    body = ("é" * 150_000).encode() + b"\xff\xfe" + b"x" * 100_000
    yield amqp.declare("t-large")
    yield amqp.purge("t-large")
    deliveries = Deliveries()
    client = clients([QueueSpec("t-large")], consumeFrom="t-large", onDelivery=deliveries)
    yield client.whenConnected()
    yield client.publish("t-large", body)
    (delivery,) = yield deliveries.atLeast(1)
    assert delivery.body == body
    delivery.ack()


@pytest_twisted.inlineCallbacks
def test_stop_service_closes_and_stops_reconnecting(clients, rabbitmqNode):
    client = clients([QueueSpec("t-stopservice")])
    connection = yield connectionOf(client)
    yield client.stopService()
    assert connection.closed
    with pytest.raises(PublishFailed):
        yield client.publish("t-stopservice", b"x")


@pytest_twisted.inlineCallbacks
def test_consuming_stops_and_resumes(clients, amqp):
    """
    After stopConsuming nothing is handed over; resumeConsuming takes up
    what waited, on the same connection, and a second resume changes
    nothing.
    """
    yield amqp.declare("t-resume")
    yield amqp.purge("t-resume")
    deliveries = Deliveries()
    client = clients([QueueSpec("t-resume")], consumeFrom="t-resume", onDelivery=deliveries)
    old = yield connectionOf(client)
    yield client.stopConsuming()
    yield amqp.publish("t-resume", b"while stopped")
    assert (yield amqp.count("t-resume")) == 1
    assert deliveries.received == []
    yield client.resumeConsuming()
    yield client.resumeConsuming()
    (delivery,) = yield deliveries.atLeast(1)
    assert delivery.body == b"while stopped"
    delivery.ack()
    yield amqp.publish("t-resume", b"after")
    second = yield deliveries.atLeast(2)
    assert [d.body for d in second] == [b"while stopped", b"after"]
    second[1].ack()
    assert (yield connectionOf(client)) is old


@pytest_twisted.inlineCallbacks
def test_move_all_messages_of_a_queue(clients, amqp):
    """
    moveAll takes every message of one queue and publishes it to another,
    body, priority and headers as they were, acknowledging each once its
    copy is confirmed: the source ends empty, the destination has them all
    in order.
    """
    yield amqp.delete("t-held")
    yield amqp.delete("t-back")
    client = clients([QueueSpec("t-held"), QueueSpec("t-back", {"x-max-priority": 10})])
    yield client.whenConnected()
    bodies = [b'{"n": %d}' % n for n in range(50)] + [bytes(range(256))]
    for n, body in enumerate(bodies):
        yield client.publish("t-held", body, priority=n % 10, headers={"n": n})
    moved = yield client.moveAll("t-held", "t-back")
    assert moved == len(bodies)
    assert (yield amqp.count("t-held")) == 0
    received = yield amqp.collect("t-back", len(bodies))
    assert sorted(r.body for r in received) == sorted(bodies)
    assert {r.properties["headers"]["n"]: r.properties["priority"] for r in received} == {
        n: n % 10 for n in range(len(bodies))
    }
    assert (yield client.moveAll("t-held", "t-back")) == 0


@pytest_twisted.inlineCallbacks
def test_move_all_moves_what_was_there_when_it_began(clients, amqp):
    """
    Messages that come back to the source while moveAll runs (held again
    by another pause) are not moved round and round: moving a queue into
    itself moves each message once and ends.
    """
    yield amqp.delete("t-loop")
    client = clients([QueueSpec("t-loop")])
    yield client.whenConnected()
    for n in range(5):
        yield client.publish("t-loop", b"%d" % n)
    assert (yield client.moveAll("t-loop", "t-loop")) == 5
    assert (yield amqp.count("t-loop")) == 5
