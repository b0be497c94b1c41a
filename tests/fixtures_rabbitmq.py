"""
RabbitMQ fixtures: a private broker node for the test session and a helper
to put messages into queues and look at what is in them.

Fixtures
========

C{rabbitmqNode} (session)
    A started L{mqtwist.localnode.LocalRabbitMQ} on free ports in a
    temporary directory; stopped (and its directory removed) at the end of
    the session, whatever the tests did.  Use C{rabbitmqNode.rabbitmqctl(...)}
    (a Deferred of its output) for broker-side facts, e.g.
    C{rabbitmqctl("close_all_connections", "test")}.  Tests are skipped when
    C{rabbitmq-server} is not installed.

C{rabbitmq} (session)
    The L{BrokerURL} of that node (guest/guest, vhost C{/}).

C{amqp} (function)
    An L{AMQPHelper} with its own AMQP connection, closed after the test.
    All methods return Deferreds::

        yield amqp.declare("outbox", {"x-max-priority": 10})  # durable
        yield amqp.purge("outbox")                   # -> messages removed
        yield amqp.publish("outbox", b'{"a": 1}', priority=3)   # confirmed
        received = yield amqp.collect("results", 2)  # exactly 2 Received
        received = yield amqp.fetch("results")       # whatever is there now
        n = yield amqp.count("results")              # ready messages
        yield amqp.delete("results")

    C{collect} consumes until it has C{count} messages (acknowledging them)
    and fails the test with a message naming the queue and what arrived if
    they do not all come within C{timeout} seconds (default 30).  Messages
    are L{Received}: C{body} (bytes), C{properties} (AMQP basic properties
    by their protocol names: C{"priority"}, C{"headers"}, ...) and
    C{redelivered}.  C{publish} does not declare the queue: declare it
    first (with C{declare}, or by the code under test).

C{clients} (function)
    A function that makes started L{mqtwist.amqp.client.BrokerClient}s for
    that node (C{clients(queues, consumeFrom=..., prefetch=...,
    onDelivery=...)}, deliveries to a L{Deliveries} unless C{onDelivery}
    is given); the clients still running after the test are stopped.

C{dataDir} (function)
    An empty directory for the data of a node that a test starts itself,
    removed after the test.

Queue names are shared by the whole session: use names unique to the test
(e.g. the test's name) or purge them first.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.python.failure import Failure
from txamqp.client import Closed
from txamqp.content import Content
from txamqp.message import Message
from txamqp.protocol import AMQChannel

from mqtwist.amqp.client import BrokerClient, Delivery
from mqtwist.amqp.confirms import PendingConfirms
from mqtwist.amqp.protocol import AMQPFactory, AMQPProtocol, bodyBytes, brokerEndpoint
from mqtwist.amqp.url import BrokerURL
from mqtwist.localnode import LocalRabbitMQ, RabbitMQNotInstalled


@pytest.fixture(scope="session")
def rabbitmqNode():
    from twisted.internet import reactor

    dataDir = tempfile.mkdtemp(prefix="mqtwist-test-rabbitmq-")
    node = LocalRabbitMQ(dataDir, reactor=reactor)
    try:
        pytest_twisted.blockon(node.start())
    except RabbitMQNotInstalled as e:
        shutil.rmtree(dataDir, ignore_errors=True)
        pytest.skip(str(e))
    try:
        yield node
    finally:
        pytest_twisted.blockon(node.stop())
        shutil.rmtree(dataDir, ignore_errors=True)


@pytest.fixture(scope="session")
def rabbitmq(rabbitmqNode: LocalRabbitMQ) -> BrokerURL:
    return rabbitmqNode.url


@pytest.fixture
def amqp(rabbitmq: BrokerURL):
    from twisted.internet import reactor

    helper = AMQPHelper(rabbitmq, reactor)
    pytest_twisted.blockon(helper.connect())
    try:
        yield helper
    finally:
        pytest_twisted.blockon(helper.close())


@dataclass
class Received:
    """One message taken from a queue by L{AMQPHelper}."""

    body: bytes
    properties: dict[str, Any]
    redelivered: bool


@dataclass
class _Collector:
    queue: str
    count: int
    done: defer.Deferred[list[Received]]
    received: list[Received] = field(default_factory=list)


class AMQPHelper:
    """
    A plain AMQP connection for tests, independent of
    L{mqtwist.amqp.client.BrokerClient}.
    """

    ADMIN_CHANNEL = 1

    def __init__(self, url: BrokerURL, reactor: Any) -> None:
        self.url = url
        self._reactor = reactor
        self._protocol: AMQPProtocol | None = None
        self._admin: AMQChannel | None = None
        self._confirms = PendingConfirms()
        self._collectors: dict[int, _Collector] = {}
        self._channelIds = itertools.count(self.ADMIN_CHANNEL + 1)

    @defer.inlineCallbacks
    def connect(self):
        endpoint = brokerEndpoint(self._reactor, self.url)
        protocol = yield endpoint.connect(AMQPFactory(self.url, self._reactor))
        protocol.setListener(self)
        yield protocol.login(self.url)
        self._protocol = protocol
        self._admin = yield protocol.channel(self.ADMIN_CHANNEL)
        yield self._admin.channel_open()
        yield self._admin.confirm_select()

    def close(self):
        if self._protocol is None:
            return defer.succeed(None)
        return self._protocol.close(within=5)

    # -- queues -------------------------------------------------------------

    @defer.inlineCallbacks
    def declare(self, queue: str, arguments: Mapping[str, object] | None = None):
        """Declare a durable queue; fires with C{None}."""
        yield self._admin.queue_declare(
            queue=queue, durable=True, arguments=dict(arguments or {})
        )

    @defer.inlineCallbacks
    def count(self, queue: str):
        """Fires with the number of ready messages in C{queue} (which must exist)."""
        reply = yield self._admin.queue_declare(queue=queue, passive=True)
        return reply.message_count

    @defer.inlineCallbacks
    def purge(self, queue: str):
        """Fires with the number of messages removed."""
        reply = yield self._admin.queue_purge(queue=queue)
        return reply.message_count

    @defer.inlineCallbacks
    def delete(self, queue: str):
        """Delete C{queue} with whatever is in it; fires with C{None}."""
        yield self._admin.queue_delete(queue=queue)

    # -- messages -----------------------------------------------------------

    def publish(
        self,
        queue: str,
        body: bytes,
        *,
        priority: int | None = None,
        headers: Mapping[str, object] | None = None,
    ):
        """
        Publish C{body} persistently to C{queue} via the default exchange;
        fires with C{None} when the broker confirmed it.
        """
        confirmed = self._confirms.add(queue)
        properties = {"delivery-mode": 2, "priority": priority, "headers": headers}
        self._admin.basic_publish(
            routing_key=queue, content=Content(body, properties=properties)
        )
        return confirmed

    @defer.inlineCallbacks
    def fetch(self, queue: str):
        """Take (and acknowledge) every message in C{queue} now; fires with a list of L{Received}."""
        received = []
        while True:
            reply = yield self._admin.basic_get(queue=queue)
            if reply.method.name == "get-empty":
                return received
            received.append(
                Received(
                    bodyBytes(reply.content.body),
                    dict(reply.content.properties),
                    bool(reply.redelivered),
                )
            )
            self._admin.basic_ack(delivery_tag=reply.delivery_tag)

    @defer.inlineCallbacks
    def collect(self, queue: str, count: int, timeout: float = 30.0):
        """
        Consume exactly C{count} messages from C{queue} (acknowledged;
        any beyond C{count} are put back).

        @return: a Deferred that fires with a list of L{Received} in
            arrival order, or fails with C{AssertionError} naming what did
            arrive when C{timeout} seconds pass first.
        """
        channel = yield self._protocol.channel(next(self._channelIds))
        yield channel.channel_open()
        yield channel.basic_qos(prefetch_count=min(count, 1000) or 1)
        collector = _Collector(queue, count, defer.Deferred())
        self._collectors[channel.id] = collector
        timer = self._reactor.callLater(
            timeout,
            lambda: collector.done.errback(
                AssertionError(
                    f"only {len(collector.received)} of {count} messages "
                    f"arrived in queue {queue!r} within {timeout:g} s; first "
                    f"bodies: {[r.body[:80] for r in collector.received[:5]]}"
                )
            ),
        )
        yield channel.basic_consume(queue=queue)
        try:
            received = yield collector.done
        finally:
            if timer.active():
                timer.cancel()
            del self._collectors[channel.id]
            if not channel.closed:
                # closing the channel gives unacknowledged extras back
                yield channel.channel_close()
                channel.close(None)
        return received

    # -- ConnectionListener -------------------------------------------------

    def deliveryReceived(self, channel: AMQChannel, message: Message) -> None:
        collector = self._collectors.get(channel.id)
        if collector is None or collector.done.called:
            return
        collector.received.append(
            Received(
                message.content.body,
                dict(message.content.properties),
                bool(message.redelivered),
            )
        )
        channel.basic_ack(delivery_tag=message.delivery_tag)
        if len(collector.received) == collector.count:
            collector.done.callback(collector.received)

    def publishConfirmed(self, channel: AMQChannel, deliveryTag: int, multiple: bool) -> None:
        self._confirms.ack(deliveryTag, multiple)

    def publishRejected(self, channel: AMQChannel, deliveryTag: int, multiple: bool) -> None:
        self._confirms.nack(
            deliveryTag, multiple, lambda q: AssertionError(f"broker nacked a test publish to {q!r}")
        )

    def channelClosed(self, channel: AMQChannel, reason: Failure) -> None:
        if channel.id == self.ADMIN_CHANNEL:
            self._confirms.failAll(
                lambda q: AssertionError(f"test channel closed before the confirm of {q!r}: {reason.value}")
            )

    def connectionLost(self, reason: Failure) -> None:
        self._confirms.failAll(
            lambda q: AssertionError(f"test connection lost before the confirm of {q!r}")
        )
        for collector in self._collectors.values():
            if not collector.done.called:
                collector.done.errback(Closed(reason))


# -- mqtwist's own clients of the node ---------------------------------------


class Deliveries:
    """
    Collects what a BrokerClient hands to onDelivery and lets a test wait
    for the n-th one.
    """

    def __init__(self) -> None:
        self.received: list[Delivery] = []
        self._waiting: list[tuple[int, defer.Deferred]] = []

    def __call__(self, delivery: Delivery) -> None:
        self.received.append(delivery)
        still = []
        for n, d in self._waiting:
            if len(self.received) >= n:
                d.callback(self.received[:n])
            else:
                still.append((n, d))
        self._waiting = still

    def atLeast(self, n: int, timeout: float = 30.0) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if len(self.received) >= n:
            d.callback(self.received[:n])
        else:
            self._waiting.append((n, d))
        return d.addTimeout(timeout, reactor)


@pytest.fixture
def clients(rabbitmq):
    """
    Makes started BrokerClients for the test's node and stops them all
    afterwards.
    """
    made: list[BrokerClient] = []

    def make(queues=(), *, consumeFrom=None, prefetch=10, onDelivery=None, **kwargs):
        client = BrokerClient(
            rabbitmq, list(queues), consumeFrom=consumeFrom, prefetch=prefetch,
            onDelivery=onDelivery or Deliveries(), reactor=reactor, **kwargs,
        )
        client.startService()
        made.append(client)
        return client

    yield make
    for client in made:
        if client.running:
            pytest_twisted.blockon(client.stopService())


@defer.inlineCallbacks
def connectionOf(client: BrokerClient):
    """The protocol of the client's connection, once set up (test-only peek)."""
    yield client.whenConnected()
    return client._session.protocol


# -- other nodes ---------------------------------------------------------------


@pytest.fixture
def dataDir():
    # not pytest's tmp_path: its parents are private to root, and the node
    # runs as the rabbitmq user
    path = tempfile.mkdtemp(prefix="mqtwist-test-node-")
    yield path
    shutil.rmtree(path, ignore_errors=True)
