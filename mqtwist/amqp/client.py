"""
The connection of an mqtwist process to RabbitMQ: durable queues, publishing
with publisher confirms, consuming with a prefetch window, and reconnecting.

One L{BrokerClient} keeps one AMQP connection with two channels: one in
confirm mode for publishing (and declaring queues), one for consuming.
Everything set up on a connection is set up again on the next one after a
loss; what was in flight on the old one fails (publishes) or becomes stale
(deliveries, which the broker requeues).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.client import Closed
from txamqp.message import Message
from txamqp.protocol import AMQChannel

from mqtwist.amqp.confirms import PendingConfirms
from mqtwist.amqp.fieldtable import FieldTableError, checkFieldTable
from mqtwist.amqp.protocol import AMQPFactory, AMQPProtocol, brokerEndpoint
from mqtwist.amqp.url import BrokerURL

PUBLISH_CHANNEL = 1
CONSUME_CHANNEL = 2


@dataclass(frozen=True)
class QueueSpec:
    """
    A durable queue, declared on every (re)connect.

    @ivar arguments: queue arguments (C{x-max-priority}, C{x-max-length},
        ...); any value of L{mqtwist.amqp.fieldtable} (strings, numbers,
        booleans, lists, tables).
    """

    name: str
    arguments: Mapping[str, object] = field(default_factory=dict)


class PublishFailed(Exception):
    """
    A message was not (or not certainly) stored by the broker.
    """


class Delivery:
    """
    One message consumed from the consumed queue.  Settle it with L{ack} or
    L{release}; a delivery that is never settled goes back to the queue when
    its connection ends.
    """

    log = Logger()

    def __init__(
        self,
        body: bytes,
        priority: int | None,
        redelivered: bool,
        deliveryTag: int,
        channel: AMQChannel,
    ) -> None:
        self.body = body
        self.priority = priority
        self.redelivered = redelivered
        self.deliveryTag = deliveryTag
        self._channel = channel
        self._settled = False

    def __repr__(self) -> str:
        return (
            f"<Delivery tag={self.deliveryTag} redelivered={self.redelivered} "
            f"{len(self.body)} bytes>"
        )

    @property
    def current(self) -> bool:
        """
        C{False} once the channel the message came on is gone: settling it
        is then meaningless (the broker has requeued it).
        """
        return not self._channel.closed

    def ack(self) -> None:
        """
        Tell the broker the message is done with (C{basic.ack}).  Does
        nothing when not L{current} or already settled.
        """
        if self._canSettle("ack"):
            # no reply comes to basic.ack: nothing to wait for
            self._channel.client.basicAck(self._channel.id, self.deliveryTag)

    def release(self) -> None:
        """
        Give the message back to the queue for another consumer
        (C{basic.reject} with requeue).  Does nothing when not L{current} or
        already settled.
        """
        if self._canSettle("release"):
            self._channel.basic_reject(
                delivery_tag=self.deliveryTag, requeue=True
            ).addErrback(self._lost)

    def _canSettle(self, action: str) -> bool:
        if self._settled:
            return False
        if not self.current:
            self.log.debug(
                "not sending {action} for delivery {tag}: its channel is gone "
                "and the broker has requeued the message",
                action=action,
                tag=self.deliveryTag,
            )
            return False
        self._settled = True
        return True

    def _lost(self, failure: Failure) -> None:
        failure.trap(Closed)
        self.log.debug("delivery {tag} not settled: {error}", tag=self.deliveryTag, error=failure.value)


def _checkTable(what: str, table: Mapping[str, object]) -> None:
    # a value that cannot be encoded would fail inside the frame writer and
    # break the connection: refuse it here, where the caller can be told
    try:
        checkFieldTable(table)
    except FieldTableError as e:
        raise ValueError(f"{what}: {e}") from None


class BrokerClient(Service):
    """
    A durable, reconnecting connection to RabbitMQ for one mqtwist process.
    """

    log = Logger()

    def __init__(
        self,
        url: BrokerURL,
        queues: Sequence[QueueSpec],
        *,
        consumeFrom: str | None,
        prefetch: int,
        onDelivery: Callable[[Delivery], None],
        reactor: Any = None,
        reconnectMaxDelay: float = 30.0,
        closeTimeout: float = 10.0,
    ) -> None:
        """
        @param url: the broker.
        @param queues: durable queues to declare on every (re)connect.
        @param consumeFrom: the queue to consume from, or C{None} to only
            publish.  If it is not among C{queues} it is declared durable
            without arguments.
        @param prefetch: how many unacknowledged deliveries the broker hands
            over at once (1..65535; 0 means no limit).
        @param onDelivery: called with each L{Delivery}, in order; an
            exception it raises is logged and leaves the delivery unsettled.
        @param reconnectMaxDelay: the longest wait between two connection
            attempts (the wait grows from 1 s).
        @param closeTimeout: seconds L{stopService} waits for the broker to
            answer C{connection.close}.
        """
        if not 0 <= prefetch <= 65535:
            raise ValueError(f"prefetch {prefetch} is outside 0..65535 (AMQP basic.qos)")
        for queue in queues:
            _checkTable(f"arguments of queue {queue.name!r}", queue.arguments)
        if reactor is None:
            from twisted.internet import reactor
        self.url = url
        self.queues = tuple(queues)
        self.consumeFrom = consumeFrom
        self.prefetch = prefetch
        self.onDelivery = onDelivery
        self._reactor = reactor
        self._closeTimeout = closeTimeout
        self._consumeWanted = consumeFrom is not None
        self._session: _Session | None = None
        self._connector = ClientService(
            brokerEndpoint(reactor, url),
            AMQPFactory(url, reactor),
            retryPolicy=backoffPolicy(maxDelay=reconnectMaxDelay),
            clock=reactor,
            prepareConnection=self._prepare,
        )

    # -- service -----------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        self.log.info("connecting to AMQP broker {url}", url=self.url.redacted())
        self._connector.startService()

    @defer.inlineCallbacks
    def stopService(self):  # -> Deferred[None]
        """
        Close the connection cleanly (C{connection.close}) and stop
        reconnecting.  Unconfirmed publishes errback with L{PublishFailed};
        unacknowledged deliveries go back to their queue.

        @return: a Deferred that fires with C{None} once the connection is
            closed.
        """
        Service.stopService(self)
        session = self._session
        if session is not None and session.ready:
            yield session.close(self._closeTimeout)
        yield self._connector.stopService()
        self.log.info("disconnected from AMQP broker {url}", url=self.url.redacted())

    @defer.inlineCallbacks
    def whenConnected(self):  # -> Deferred[None]
        """
        @return: a Deferred that fires with C{None} when connected, with
            the queues declared and the consumer (if any) started; it
            errbacks with L{defer.CancelledError} if the service stops first.
        """
        while True:
            protocol = yield self._connector.whenConnected()
            # leave the ClientService's state machine (which fired us) before
            # our caller acts, e.g. by asking it again
            yield task.deferLater(self._reactor, 0, lambda: None)
            session = self._session
            if session is not None and session.ready and not protocol.closed:
                return
            # a connection on its way out, which the ClientService may not
            # have noticed yet: wait for the next one
            yield protocol.disconnected.wait()

    def _prepare(self, protocol: Any):  # -> Deferred[None]
        # 'protocol' is the ClientService's proxy of an AMQPProtocol
        session = _Session(self, protocol)
        protocol.setListener(session)
        self._session = session

        def failed(failure: Failure) -> Failure:
            self.log.warn(
                "could not set up the AMQP connection to {url}: {error}",
                url=self.url.redacted(),
                error=failure.getErrorMessage(),
            )
            protocol.transport.abortConnection()
            return failure

        def ready(_: object) -> None:
            self.log.info(
                "connected to AMQP broker {url}; queues declared: {queues}; "
                "consuming from: {consumeFrom}",
                url=self.url.redacted(),
                queues=", ".join(q.name for q in self.queues),
                consumeFrom=self.consumeFrom if self._consumeWanted else None,
            )

        return session.setUp().addCallbacks(ready, failed)

    def _sessionLost(self, session: _Session, reason: Failure) -> None:
        if self._session is session:
            self._session = None
        if session.ready and self.running:
            self.log.warn(
                "lost the connection to AMQP broker {url}: {reason}; reconnecting",
                url=self.url.redacted(),
                reason=reason.getErrorMessage(),
            )

    # -- publishing ----------------------------------------------------------

    def publish(
        self,
        queue: str,
        body: bytes,
        *,
        priority: int | None = None,
        headers: Mapping[str, object] | None = None,
    ):  # -> Deferred[None]
        """
        Publish C{body} persistently to C{queue} through the default
        exchange, as C{application/json}.  Does not wait for earlier
        publishes to be confirmed.  A queue not among the configured ones is
        declared durable (no arguments) before the first publish to it on
        each connection.

        @param priority: AMQP priority 0..255 (used by queues declared with
            C{x-max-priority}).
        @param headers: message headers: a field table
            (L{mqtwist.amqp.fieldtable}).
        @return: a Deferred that fires with C{None} when the broker has
            confirmed the message, or errbacks with L{PublishFailed} when
            the broker rejects it (C{basic.nack}), when the connection or
            channel is lost before the confirm, or at once when not
            connected.
        @raise ValueError: C{priority} or C{headers} cannot be encoded.
        """
        if priority is not None and not 0 <= priority <= 255:
            raise ValueError(f"priority {priority} is outside 0..255")
        if headers:
            _checkTable("message headers", headers)
        session = self._session
        if session is None or not session.ready:
            return defer.fail(
                PublishFailed(
                    f"not connected to AMQP broker {self.url.redacted()}: nothing "
                    f"was published to queue {queue!r}; publish it again after "
                    f"whenConnected() fires"
                )
            )
        return session.publish(queue, body, priority, headers)

    # -- consuming -----------------------------------------------------------

    def stopConsuming(self):  # -> Deferred[None]
        """
        Cancel the consumer (C{basic.cancel}) and do not consume again after
        a reconnect.

        @return: a Deferred that fires with C{None} when no more
            C{onDelivery} calls will come.
        """
        self._consumeWanted = False
        session = self._session
        if session is None:
            return defer.succeed(None)
        return session.stopConsuming()

    def _deliver(self, delivery: Delivery) -> None:
        try:
            self.onDelivery(delivery)
        except Exception:
            self.log.failure(
                "onDelivery failed for {delivery}; it stays unacknowledged",
                delivery=delivery,
            )


class _Session:
    """
    The state of one AMQP connection of a L{BrokerClient}: its channels, the
    queues declared on it and the publishes awaiting confirmation.
    """

    log = Logger()

    def __init__(self, client: BrokerClient, protocol: AMQPProtocol) -> None:
        self.client = client
        self.protocol = protocol
        self.ready = False
        self.declared: set[str] = set()
        self.confirms = PendingConfirms()
        self.publishChannel: AMQChannel | None = None
        self.consumeChannel: AMQChannel | None = None
        self.consumerTag: str | None = None
        self._consumeStarting: defer.Deferred[None] | None = None

    @defer.inlineCallbacks
    def setUp(self):
        client = self.client
        yield self.protocol.login(client.url)
        channel = yield self.protocol.channel(PUBLISH_CHANNEL)
        yield channel.channel_open()
        yield channel.confirm_select()
        self.publishChannel = channel
        for queue in client.queues:
            yield self._declare(queue)
        if client._consumeWanted and client.consumeFrom is not None:
            self._consumeStarting = self._startConsuming(client.consumeFrom)
            yield self._consumeStarting
        self.ready = True

    def _declare(self, queue: QueueSpec):  # -> Deferred
        channel = self.publishChannel
        assert channel is not None, "declared on the publish channel, after it is open"
        self.declared.add(queue.name)
        return channel.queue_declare(
            queue=queue.name, durable=True, arguments=dict(queue.arguments)
        )

    @defer.inlineCallbacks
    def _startConsuming(self, queue: str):
        if queue not in self.declared:
            yield self._declare(QueueSpec(queue))
        channel = yield self.protocol.channel(CONSUME_CHANNEL)
        yield channel.channel_open()
        yield channel.basic_qos(prefetch_count=self.client.prefetch)
        self.consumeChannel = channel
        reply = yield channel.basic_consume(queue=queue)
        self.consumerTag = reply.consumer_tag

    def publish(
        self,
        queue: str,
        body: bytes,
        priority: int | None,
        headers: Mapping[str, object] | None,
    ):  # -> Deferred[None]
        channel = self.publishChannel
        assert channel is not None
        if channel.closed:
            return defer.fail(
                PublishFailed(
                    f"the channel to AMQP broker {self.client.url.redacted()} is "
                    f"closed: nothing was published to queue {queue!r}; publish "
                    f"it again after whenConnected() fires"
                )
            )
        if queue not in self.declared:
            # same channel, so the broker declares it before it routes the
            # publish below: no need to wait for declare-ok
            self._declare(QueueSpec(queue)).addErrback(lambda f: f.trap(Closed))
        properties = {
            "content-type": "application/json",
            "delivery-mode": 2,
            "priority": priority,
            "headers": dict(headers) if headers else None,
        }
        confirmed = self.confirms.add(queue)
        self.protocol.basicPublish(channel.id, "", queue, body, properties)
        return confirmed

    @defer.inlineCallbacks
    def stopConsuming(self):
        if self._consumeStarting is not None:
            try:
                yield self._consumeStarting
            except Exception:
                pass  # the connection failed: nothing to cancel
        tag, self.consumerTag = self.consumerTag, None
        channel = self.consumeChannel
        if tag is None or channel is None or channel.closed:
            return
        try:
            # the broker sends cancel-ok after every delivery it made, and
            # txamqp hands deliveries over in order: none can come later
            yield channel.basic_cancel(consumer_tag=tag)
        except Closed:
            pass  # the channel is gone, and its deliveries with it

    def close(self, timeout: float):  # -> Deferred[None]
        return self.protocol.close(within=timeout)

    # -- ConnectionListener --------------------------------------------------

    def deliveryReceived(self, channel: AMQChannel, message: Message) -> None:
        content = message.content
        self.client._deliver(
            Delivery(
                body=content.body,
                priority=content.properties.get("priority"),
                redelivered=bool(message.redelivered),
                deliveryTag=message.delivery_tag,
                channel=channel,
            )
        )

    def publishConfirmed(self, channel: AMQChannel, deliveryTag: int, multiple: bool) -> None:
        self.confirms.ack(deliveryTag, multiple)

    def publishRejected(self, channel: AMQChannel, deliveryTag: int, multiple: bool) -> None:
        url = self.client.url.redacted()
        self.confirms.nack(
            deliveryTag,
            multiple,
            lambda queue: PublishFailed(
                f"AMQP broker {url} rejected (basic.nack) the message published "
                f"to queue {queue!r}: it was not stored. The queue may be full "
                f"(x-max-length with x-overflow=reject-publish) or the broker "
                f"failed to store it; publish it again later"
            ),
        )

    def channelClosed(self, channel: AMQChannel, reason: Failure) -> None:
        close = reason.value
        self.log.warn(
            "AMQP broker {url} closed channel {channel}: {code} {text}; "
            "reconnecting",
            url=self.client.url.redacted(),
            channel=channel.id,
            code=getattr(close, "reply_code", None),
            text=getattr(close, "reply_text", close),
        )
        self.ready = False
        self._failPending(f"the broker closed the channel ({getattr(close, 'reply_text', close)})")
        # a fresh connection sets both channels up again in a known state
        self.protocol.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.client._sessionLost(self, reason)
        # fail the publishes in the next turn: by then the ClientService
        # knows the connection is gone, so publishers reacting at once to
        # the failure find the client reconnecting, not this connection
        self.client._reactor.callLater(
            0, self._failPending, f"the connection was lost ({reason.getErrorMessage()})"
        )

    def _failPending(self, why: str) -> None:
        url = self.client.url.redacted()
        self.confirms.failAll(
            lambda queue: PublishFailed(
                f"{why} before AMQP broker {url} confirmed the message "
                f"published to queue {queue!r}: it may or may not be stored; "
                f"publish it again after whenConnected() fires"
            )
        )
