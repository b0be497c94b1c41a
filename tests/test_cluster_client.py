"""
L{BrokerClient} given the three nodes of a cluster (L{fixtures_cluster}):
it connects to a node that is up when the first is down, and when the node
it is connected to is killed it moves to the next, where the quorum queue
still has every message.
"""

from __future__ import annotations

import re

import pytest_twisted
from fixtures_rabbitmq import Deliveries
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent, globalLogPublisher

from mqtwist.amqp.client import BrokerClient, QueueSpec

NAMESPACE = "mqtwist.amqp.client.BrokerClient"


def logEvent(events: list[str], text: str) -> Deferred[None]:
    """A Deferred that fires once the client logs a line starting with C{text}."""
    seen: Deferred[None] = Deferred()

    def observe(event: dict) -> None:
        if not seen.called and event.get("log_namespace") == NAMESPACE and formatEvent(event).startswith(text):
            globalLogPublisher.removeObserver(observe)
            seen.callback(None)

    globalLogPublisher.addObserver(observe)
    return seen.addTimeout(60, reactor)


@pytest_twisted.ensureDeferred
async def test_movesToNextNode(cluster, queues):
    """
    Node 0 is down at the start: the client says so, naming it, and
    connects to node 1.  Messages published there are consumed; node 0
    comes back, node 1 is killed with -9 while the client is connected:
    the client reconnects to node 2, and the quorum queue gives every
    message published before and after the kill, none lost.
    """
    queue = queues["outbox"]
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    deliveries = Deliveries()
    expected: set[bytes] = set()

    def onDelivery(delivery):
        deliveries(delivery)
        delivery.ack()

    async def publishAndConsume(label: bytes) -> None:
        for n in range(50):
            await client.publish(queue, b"%s %d" % (label, n))
            expected.add(b"%s %d" % (label, n))
        while {d.body for d in deliveries.received} != expected:
            await deliveries.atLeast(len(deliveries.received) + 1)

    await cluster.kill(0)
    client = BrokerClient(
        cluster.urls,
        [QueueSpec(queue, {"x-queue-type": "quorum"})],
        consumeFrom=queue,
        prefetch=10,
        onDelivery=onDelivery,
        reactor=reactor,
    )
    down, first, second = (url.redacted() for url in cluster.urls)
    try:
        client.startService()
        await client.whenConnected()
        assert client.url == cluster.urls[1]
        await publishAndConsume(b"before")
        await cluster.start(0)
        lost = logEvent(events, f"lost the connection to AMQP broker {first}: ")
        await cluster.kill(1)
        await lost
        await client.whenConnected()
        assert client.url == cluster.urls[2]
        await publishAndConsume(b"after")
    finally:
        globalLogPublisher.removeObserver(events.append)
        await client.stopService()
    text = [formatEvent(e) for e in events if e.get("log_namespace") == NAMESPACE]
    assert any(
        line.startswith(f"cannot reach AMQP broker {down}: ") and re.search(f"; trying again in [0-9]+ s at the next node, {re.escape(first)} \\(", line)
        for line in text
    ), text
    assert any(line.startswith(f"connected to AMQP broker {first} after 1 failed attempt(s)") for line in text), text
    assert any(
        line.startswith(f"lost the connection to AMQP broker {first}: ") and line.endswith(f"s at the next node, {second}")
        for line in text
    ), text
    assert any(line.startswith(f"connected to AMQP broker {second};") for line in text), text


@pytest_twisted.ensureDeferred
async def test_triesEveryNodeInTurn(rabbitmq, queues):
    """
    Two nodes where nothing listens, then the session's node: the client
    tries them in their order, each attempt's warning naming the node
    tried and the one tried next, and connects to the third.
    """
    from fixtures_smtp import unusedPort

    from mqtwist.amqp.url import BrokerURL

    down = [BrokerURL(host="127.0.0.1", port=unusedPort()) for _ in range(2)]
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    client = BrokerClient(
        [*down, rabbitmq], [], consumeFrom=None, prefetch=1, onDelivery=lambda d: None, reactor=reactor
    )
    try:
        client.startService()
        await client.whenConnected()
        await client.publish(queues["outbox"], b"on the third node")
    finally:
        globalLogPublisher.removeObserver(events.append)
        await client.stopService()
    assert client.url == rabbitmq
    attempts = [formatEvent(e) for e in events if e.get("log_namespace") == NAMESPACE and "attempt" in e]
    assert len(attempts) == 2, attempts
    for line, tried, following in zip(attempts, down, [down[1], rabbitmq]):
        assert line.startswith(f"cannot reach AMQP broker {tried}: "), line
        assert f" at the next node, {following} (" in line, line
