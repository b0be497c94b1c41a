"""
What the benchmark does with RabbitMQ besides publishing: declare, count
and delete queues, and count the results arriving on a queue with a
consumer.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from txamqp.message import Message
from txamqp.protocol import AMQChannel

from mqtwist.amqp.protocol import AMQPFactory, AMQPProtocol, brokerEndpoint
from mqtwist.amqp.url import BrokerURL


class ResultCounter:
    """
    Counts the messages of one queue as they arrive (a consumer without
    acknowledgements: the broker forgets them once sent), with the time of
    the first and of the latest.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self._waiting: list[tuple[int, defer.Deferred[None]]] = []

    def received(self) -> None:
        now = self.clock()
        self.count += 1
        if self.first is None:
            self.first = now
        self.last = now
        while self._waiting and self._waiting[0][0] <= self.count:
            self._waiting.pop(0)[1].callback(None)

    def whenCount(self, count: int) -> defer.Deferred[None]:
        """@return: a Deferred that fires once C{count} messages have arrived."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.count >= count:
            d.callback(None)
        else:
            self._waiting.append((count, d))
            self._waiting.sort(key=lambda w: w[0])
        return d


class BenchBroker:
    """
    One AMQP connection for the benchmark's own bookkeeping.
    """

    ADMIN_CHANNEL = 1

    def __init__(self, url: BrokerURL, reactor: Any) -> None:
        self.url = url
        self.reactor = reactor
        self.protocol: AMQPProtocol | None = None
        self.admin: AMQChannel | None = None
        self._counters: dict[int, ResultCounter] = {}
        self._channelIds = itertools.count(self.ADMIN_CHANNEL + 1)

    async def connect(self) -> None:
        protocol = await brokerEndpoint(self.reactor, self.url).connect(AMQPFactory(self.url, self.reactor))
        protocol.setListener(self)
        await protocol.login(self.url)
        self.protocol = protocol
        self.admin = await protocol.channel(self.ADMIN_CHANNEL)
        await self.admin.channel_open()

    async def close(self) -> None:
        if self.protocol is not None:
            await self.protocol.close(within=10)

    async def declare(self, queue: str) -> None:
        """Declare C{queue} durable without arguments, as mqtwist does."""
        await self.admin.queue_declare(queue=queue, durable=True)

    async def count(self, queue: str) -> int:
        """@return: (a coroutine returning) the number of ready messages in C{queue}."""
        reply = await self.admin.queue_declare(queue=queue, passive=True)
        return reply.message_count

    async def delete(self, queue: str) -> None:
        await self.admin.queue_delete(queue=queue)

    async def countArrivals(self, queue: str) -> tuple[ResultCounter, AMQChannel]:
        """
        Start counting what arrives in C{queue} (which must exist).

        @return: (a coroutine returning) the counter and the channel of its
            consumer; close the channel to stop.
        """
        channel = await self.protocol.channel(next(self._channelIds))
        await channel.channel_open()
        counter = ResultCounter(self.reactor.seconds)
        self._counters[channel.id] = counter
        await channel.basic_consume(queue=queue, no_ack=True)
        return counter, channel

    async def stopCounting(self, channel: AMQChannel) -> None:
        self._counters.pop(channel.id, None)
        if not channel.closed:
            await channel.channel_close()
            channel.close(None)

    # -- ConnectionListener ---------------------------------------------------

    def deliveryReceived(self, channel: AMQChannel, message: Message) -> None:
        counter = self._counters.get(channel.id)
        if counter is not None:
            counter.received()

    def publishConfirmed(self, channel: AMQChannel, deliveryTag: int, multiple: bool) -> None:
        pass  # nothing is published on this connection

    def publishRejected(self, channel: AMQChannel, deliveryTag: int, multiple: bool) -> None:
        pass

    def channelClosed(self, channel: AMQChannel, reason: Failure) -> None:
        self._counters.pop(channel.id, None)

    def connectionLost(self, reason: Failure) -> None:
        pass
