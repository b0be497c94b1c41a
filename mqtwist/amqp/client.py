"""
The connection of an mqtwist process to RabbitMQ: durable queues, publishing
with publisher confirms, consuming with a prefetch window, and reconnecting.

One L{BrokerClient} keeps one AMQP connection with two channels: one in
confirm mode for publishing (and declaring queues), one for consuming; and
a third, given a control exchange, for the messages the processes of one
outbox send one another (L{mqtwist.cluster}).
Everything set up on a connection is set up again on the next one after a
loss; what was in flight on the old one fails (publishes) or becomes stale
(deliveries, which the broker requeues).  Given the nodes of a RabbitMQ
cluster, it connects to one at a time, and moves to the next after a failed
attempt or a lost connection.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from txamqp.client import ChannelClosed, Closed
from txamqp.message import Message
from txamqp.protocol import AMQChannel

from mqtwist.amqp.confirms import PendingConfirms
from mqtwist.amqp.fieldtable import FieldTableError, checkFieldTable
from mqtwist.amqp.protocol import (
    AMQPFactory,
    AMQPProtocol,
    LoginFailed,
    brokerEndpoint,
    describeClose,
)
from mqtwist.amqp.url import BrokerURL
from mqtwist.hostport import hostPort
from mqtwist.metrics import Metrics

PUBLISH_CHANNEL = 1
CONSUME_CHANNEL = 2
CONTROL_CHANNEL = 3


class ControlListener(Protocol):
    """
    What hears the control exchange of a L{BrokerClient}.
    """

    def controlReady(self, consumers: int) -> defer.Deferred[None]:
        """
        A connection listens on the control exchange: control messages can
        be sent and come in.  The consumer starts once the Deferred this
        returns has fired.

        @param consumers: how many consumers the queue consumed from has
            (the other processes consuming it).
        """

    def controlReceived(self, body: bytes) -> None:
        """A message came in on the control exchange (one's own included)."""

    def controlLost(self) -> None:
        """The connection is lost: none can be sent or come in until the next L{controlReady}."""


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


#: the queue types of C{--queue-type}, as the C{x-queue-type} argument says
QUEUE_TYPES = ("classic", "quorum")


def typeArguments(queueType: str) -> dict[str, object]:
    """
    The arguments that make a queue of C{queueType}: none for a classic
    queue (what a queue is without C{x-queue-type}, which keeps the queues
    of earlier mqtwist versions equivalent), C{x-queue-type} for a quorum
    queue.

    @raise ValueError: C{queueType} is not one of L{QUEUE_TYPES}.
    """
    if queueType not in QUEUE_TYPES:
        raise ValueError(f"queue type {queueType!r} is neither classic nor quorum")
    return {"x-queue-type": "quorum"} if queueType == "quorum" else {}


class PublishFailed(Exception):
    """
    A message was not (or not certainly) stored by the broker.
    """


class PublishReturned(PublishFailed):
    """
    A message published with C{mandatory} reached no queue (the broker
    returned it): nothing was stored.
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

    def reject(self) -> None:
        """
        Drop the message (C{basic.reject} without requeue; a queue with a
        dead-letter exchange passes it on).  Does nothing when not
        L{current} or already settled.
        """
        if self._canSettle("reject"):
            self._channel.basic_reject(
                delivery_tag=self.deliveryTag, requeue=False
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

    def _lost(self, failure: Failure) -> Failure | None:
        if not isinstance(failure.value, Closed):
            return failure
        self.log.debug("delivery {tag} not settled: {error}", tag=self.deliveryTag, error=failure.value)
        return None


def _ignoreClosed(failure: Failure) -> Failure | None:
    """
    An errback for a method whose reply no one waits for: the loss of its
    channel or connection is reported elsewhere; anything else is passed on.
    """
    return None if isinstance(failure.value, Closed) else failure


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

    Each attempt connects, logs in and sets the connection up (channels,
    queues, consumer).  A failed attempt is logged with its cause and what
    to do, and tried again after a wait that grows from about 1 s to
    C{reconnectMaxDelay}; so is a lost connection.  With several nodes
    (a cluster), each attempt after a failed one, and after a lost
    connection, goes to the next node in their order (after the last, the
    first again), with the same waits: a node that is down costs one
    attempt, and the queues, replicated to the other nodes when they are
    quorum queues, are found there.  This goes on for as
    long as the service runs, whatever the cause, a refused login
    included: the broker, the user or the vhost may well be set up after
    mqtwist starts.

    (Not Twisted's C{ClientService}: its state machine has no transition
    for a connection that ends while its C{prepareConnection} step runs or
    after that step failed, which is what a broker refusing the login does,
    and it raises automat's C{NoTransition} into the reactor each time.)
    """

    log = Logger()

    def __init__(
        self,
        url: BrokerURL | Sequence[BrokerURL],
        queues: Sequence[QueueSpec],
        *,
        consumeFrom: str | None,
        prefetch: int,
        onDelivery: Callable[[Delivery], None],
        reactor: Any = None,
        reconnectMaxDelay: float = 30.0,
        closeTimeout: float = 10.0,
        onAttemptFailed: Callable[[str], None] | None = None,
        metrics: Metrics | None = None,
        depthInterval: float = 5.0,
        declareArguments: Mapping[str, object] | None = None,
        controlExchange: str | None = None,
        controlListener: ControlListener | None = None,
    ) -> None:
        """
        @param url: the broker, or the nodes of a cluster (the first is
            tried first).
        @param queues: durable queues to declare on every (re)connect.
        @param consumeFrom: the queue to consume from, or C{None} to only
            publish.  If it is not among C{queues} it is declared durable
            with C{declareArguments}.
        @param prefetch: how many unacknowledged deliveries the broker hands
            over at once (1..65535; 0 means no limit).
        @param onDelivery: called with each L{Delivery}, in order; an
            exception it raises is logged and leaves the delivery unsettled.
        @param reconnectMaxDelay: the longest wait between two connection
            attempts (the wait grows from 1 s).
        @param closeTimeout: seconds L{stopService} waits for the broker to
            answer C{connection.close}.
        @param onAttemptFailed: called with the cause of each failed
            connection attempt (what the warning says: what went wrong and
            what to do), for a caller that would rather give up than wait.
        @param metrics: where publishes, confirms, nacks, returns and
            reconnects are counted, and the depth of C{consumeFrom} is
            told (read every C{depthInterval} seconds while connected).
        @param declareArguments: the arguments of a queue that is not among
            C{queues} when it is declared (C{consumeFrom}, or the first
            publish to it): the queue type (L{typeArguments}), so that a
            queue some job names, which another process may have declared
            first, is of the type of the others.
        @param controlExchange: a fanout exchange declared (durable) on
            every connection, with a queue of this connection's own bound
            to it (exclusive: it goes with the connection); what comes in
            on it goes to C{controlListener}, and L{publishControl} sends
            to it.
        """
        if not 0 <= prefetch <= 65535:
            raise ValueError(f"prefetch {prefetch} is outside 0..65535 (AMQP basic.qos)")
        for queue in queues:
            _checkTable(f"arguments of queue {queue.name!r}", queue.arguments)
        if reactor is None:
            from twisted.internet import reactor
        self.nodes: tuple[BrokerURL, ...] = (url,) if isinstance(url, BrokerURL) else tuple(url)
        if not self.nodes:
            raise ValueError("no broker URL: give at least one node")
        #: the node connected to, or tried next
        self.url = self.nodes[0]
        self._node = 0
        self.queues = tuple(queues)
        self.declareArguments = dict(declareArguments or {})
        _checkTable("arguments of other queues", self.declareArguments)
        self.consumeFrom = consumeFrom
        self.prefetch = prefetch
        self.onDelivery = onDelivery
        self._onAttemptFailed = onAttemptFailed
        self._reactor = reactor
        self._closeTimeout = closeTimeout
        self._consumeWanted = consumeFrom is not None
        self._session: _Session | None = None
        self._endpoint = brokerEndpoint(reactor, self.url)
        self._factory = AMQPFactory(self.url, reactor)
        self._reconnectMaxDelay = reconnectMaxDelay
        self._retryDelay = backoffPolicy(maxDelay=reconnectMaxDelay)
        #: the attempt under way (connect, log in, set up): it fires with
        #: C{None} whatever its outcome
        self._attempt: defer.Deferred[Any] | None = None
        self._retry: IDelayedCall | None = None
        #: failed attempts in a row, and the cause of the last one
        self._failures = 0
        self._lastCause: str | None = None
        self._waiters: list[defer.Deferred[None]] = []
        self._stopped = False
        self.metrics = metrics if metrics is not None else Metrics()
        self._everConnected = False
        self._depth = LoopingCall(self._readDepth)
        self._depth.clock = reactor
        self._depthInterval = depthInterval
        if (controlExchange is None) != (controlListener is None):
            raise ValueError("a control exchange needs a listener, and a listener an exchange")
        self.controlExchange = controlExchange
        self.controlListener = controlListener

    # -- service -----------------------------------------------------------

    def startService(self) -> None:
        # Twisted's Service is not annotated
        Service.startService(self)  # type: ignore[no-untyped-call]
        self._stopped = False
        self._failures = 0
        self._lastCause = None
        self.log.info(
            "connecting to AMQP broker {url}{others}",
            url=self.url.redacted(),
            others=self._otherNodes(),
        )
        self._connect()

    def stopService(self) -> defer.Deferred[None]:
        """
        Close the connection cleanly (C{connection.close}) and stop
        reconnecting; an attempt under way is abandoned.  Unconfirmed
        publishes errback with L{PublishFailed}; unacknowledged deliveries
        go back to their queue.

        @return: a Deferred that fires with C{None} once the connection is
            closed.
        """
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        # Twisted's Service is not annotated
        Service.stopService(self)  # type: ignore[no-untyped-call]
        self._stopped = True
        if self._depth.running:
            self._depth.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        attempt = self._attempt
        if attempt is not None:
            attempt.cancel()
            await attempt
        session = self._session
        connected = session is not None and session.ready
        if session is not None:
            if session.ready:
                await session.close(self._closeTimeout)
            elif not session.protocol.closed:
                session.protocol.transport.abortConnection()
            await session.protocol.disconnected.wait()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(defer.CancelledError())
        self.log.info(
            "disconnected from AMQP broker {url}"
            if connected
            else "stopped connecting to AMQP broker {url}",
            url=self.url.redacted(),
        )

    def whenConnected(self) -> defer.Deferred[None]:
        """
        @return: a Deferred that fires with C{None} when connected, with
            the queues declared and the consumer (if any) started (at once
            if it is); it errbacks with L{defer.CancelledError} if the
            service stops first, or has stopped.
        """
        if self._stopped:
            return defer.fail(defer.CancelledError())
        if self.connected:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        return waiter

    @property
    def connected(self) -> bool:
        """Whether the connection is set up and usable now."""
        session = self._session
        return session is not None and session.ready and not session.protocol.closed

    # -- connecting ----------------------------------------------------------

    def _otherNodes(self) -> str:
        others = [node.redacted() for i, node in enumerate(self.nodes) if i != self._node]
        return f" (then the other nodes of the cluster: {', '.join(others)})" if others else ""

    def _nextNode(self) -> str:
        """
        Move to the next node, for the next attempt.

        @return: where the next attempt goes, for the log (C{""} with one
            node).
        """
        if len(self.nodes) == 1:
            return ""
        self._node = (self._node + 1) % len(self.nodes)
        self.url = self.nodes[self._node]
        self._endpoint = brokerEndpoint(self._reactor, self.url)
        self._factory = AMQPFactory(self.url, self._reactor)
        return f" at the next node, {self.url.redacted()}"

    def _connect(self) -> None:
        self._retry = None
        # the endpoint's Deferred is typed for any IProtocol: it is ours
        connecting: defer.Deferred[Any] = self._endpoint.connect(self._factory)
        self._attempt = connecting.addCallback(
            lambda protocol: defer.ensureDeferred(self._setUp(protocol))
        ).addCallbacks(self._connected, self._attemptFailed)

    async def _setUp(self, protocol: AMQPProtocol) -> _Session:
        session = _Session(self, protocol)
        protocol.setListener(session)
        self._session = session
        try:
            await session.setUp()
        except Exception:
            # the next attempt starts once this connection is gone: two
            # never overlap, and stopService finds nothing left behind
            if not protocol.closed:
                protocol.transport.abortConnection()
            # however the wait ends (stopService cancels it), the attempt
            # fails with what went wrong in the set-up
            with suppress(Exception):
                await protocol.disconnected.wait()
            raise
        return session

    def _connected(self, session: _Session) -> None:
        self._attempt = None
        session.established = True
        if self._everConnected:
            self.metrics.amqp("reconnect")
        self._everConnected = True
        if self.consumeFrom is not None and not self._depth.running:
            self._depth.start(self._depthInterval, now=True)
        failures, self._failures, self._lastCause = self._failures, 0, None
        waiters, self._waiters = self._waiters, []
        self.log.emit(
            # after failures, at the level of the warnings about them: whoever
            # saw those learns that they are over
            LogLevel.warn if failures else LogLevel.info,
            "connected to AMQP broker {url}{after}; queues declared: {queues}; "
            "consuming from: {consumeFrom}",
            url=self.url.redacted(),
            after=f" after {failures} failed attempt(s)" if failures else "",
            queues=", ".join(q.name for q in self.queues),
            consumeFrom=self.consumeFrom if self._consumeWanted else None,
        )
        for waiter in waiters:
            waiter.callback(None)

    def _attemptFailed(self, failure: Failure) -> None:
        self._attempt = None
        if not self.running:
            return  # stopService ended it
        self._failures += 1
        attempt = self._failures
        delay = self._retryDelay(attempt)
        cause = _whyAttemptFailed(self.url, failure, self.consumeFrom)
        # Warn at attempts 1, 2, 4, 8, ... and whenever the cause changes;
        # log the others at info.  The waits grow to reconnectMaxDelay (30 s
        # by default), so a warning for every attempt would come twice a
        # minute for as long as the broker is away (all night, say); this
        # way the first failures show at once, later warnings show that
        # mqtwist still tries, and with the default an hour without the
        # broker gives 7 warnings, a night 10.
        loud = attempt & (attempt - 1) == 0 or cause != self._lastCause
        self._lastCause = cause
        if self._onAttemptFailed is not None:
            self._onAttemptFailed(cause)
            if not self.running:
                return  # the callback stopped the client (the CLI gives up): no retry
        where = self._nextNode()
        # scheduled before the log event goes out: whatever it sets off
        # (even a stop) finds the client in its waiting state
        self._retry = self._reactor.callLater(delay, self._connect)
        fields: dict[str, object] = {}
        if loud and not isinstance(failure.value, (LoginFailed, Closed, error.ConnectError)):
            # a traceback where the cause is a bug rather than the broker
            fields["log_failure"] = failure
        self.log.emit(
            LogLevel.warn if loud else LogLevel.info,
            "{cause}. Attempt {attempt} failed; trying again in {delay} s{where} "
            "(mqtwist keeps trying, at most {maxDelay} s apart: the broker, the "
            "user or the vhost may be set up later)",
            cause=cause,
            attempt=attempt,
            delay=round(delay),
            maxDelay=f"{self._reconnectMaxDelay:g}",
            where=where,
            **fields,
        )

    def _sessionLost(self, session: _Session, reason: Failure) -> None:
        if self._session is session:
            self._session = None
        if session.controlHeard and self.controlListener is not None:
            self.controlListener.controlLost()
        if not session.established or not self.running:
            # the attempt that made it reports it; or stopService closed it
            return
        delay = self._retryDelay(1)
        url = self.url.redacted()
        where = self._nextNode()
        self._retry = self._reactor.callLater(delay, self._connect)
        self.log.emit(
            # not ready: a channel error closed it, and was warned about
            LogLevel.warn if session.ready else LogLevel.info,
            "lost the connection to AMQP broker {url}: {reason}; reconnecting "
            "in {delay} s{where}",
            url=url,
            reason=reason.getErrorMessage(),
            delay=round(delay),
            where=where,
        )

    # -- publishing ----------------------------------------------------------

    def publish(
        self,
        queue: str,
        body: bytes,
        *,
        priority: int | None = None,
        headers: Mapping[str, object] | None = None,
        mandatory: bool = False,
    ) -> defer.Deferred[None]:
        """
        Publish C{body} persistently to C{queue} through the default
        exchange, as C{application/json}.  Does not wait for earlier
        publishes to be confirmed.  A queue not among the configured ones is
        declared durable (with C{declareArguments}) before the first publish
        to it on each connection, unless C{mandatory}.

        @param priority: AMQP priority 0..255 (used by queues declared with
            C{x-max-priority}).
        @param headers: message headers: a field table
            (L{mqtwist.amqp.fieldtable}).
        @param mandatory: publish to C{queue} as it is, without declaring
            it: when no such queue exists the broker returns the message,
            and the Deferred errbacks with L{PublishReturned} (for a sender
            to whom a mistyped queue name must be an error, not a new queue
            that no one reads).
        @return: a Deferred that fires with C{None} when the broker has
            confirmed the message, or errbacks with L{PublishFailed} when
            the broker rejects it (C{basic.nack}) or returns it, when the
            connection or channel is lost before the confirm, or at once
            when not connected.
        @raise ValueError: C{priority} or C{headers} cannot be encoded.
        """
        if priority is not None and not 0 <= priority <= 255:
            raise ValueError(f"priority {priority} is outside 0..255")
        if headers:
            _checkTable("message headers", headers)
        session = self._session
        if session is None or not session.publishable:
            return defer.fail(
                PublishFailed(
                    f"not connected to AMQP broker {self.url.redacted()}: nothing "
                    f"was published to queue {queue!r}; publish it again after "
                    f"whenConnected() fires"
                )
            )
        return session.publish(queue, body, priority, headers, mandatory)

    def publishControl(self, body: bytes) -> bool:
        """
        Send C{body} to the control exchange, to every process listening
        on it (this one too): at most once, not persistent, not confirmed,
        since what is said there is said again (heartbeats) or is worth
        nothing later (a pause that has ended).

        @return: whether it went out; not when not connected.
        """
        session = self._session
        if session is None or session.controlChannel is None:
            return False
        return session.publishControl(body)

    def deleteQueue(self, queue: str) -> defer.Deferred[None]:
        """
        Delete C{queue} and the messages in it (C{queue.delete}); a queue
        that does not exist is no error.  It is not declared again after a
        reconnect unless it is among the configured ones.

        @return: a Deferred that fires with C{None} once the broker has
            deleted it, or errbacks with L{PublishFailed} when not
            connected or the channel is lost first.
        """
        session = self._session
        if session is None or not session.ready or session.publishChannel is None:
            return defer.fail(
                PublishFailed(f"not connected to AMQP broker {self.url.redacted()}: queue {queue!r} not deleted")
            )
        session.declared.discard(queue)
        deleting: defer.Deferred[Any] = session.publishChannel.queue_delete(queue=queue)
        return deleting.addCallback(lambda reply: None).addErrback(self._notDeleted, queue)

    def moveAll(self, source: str, destination: str) -> defer.Deferred[int]:
        """
        Move the messages that are in C{source} now (as many as it holds
        when this begins) to C{destination}, one at a time: each is taken
        (C{basic.get}), published persistently with its priority and
        headers, and acknowledged on C{source} once the broker confirmed
        the copy, so none is lost (a connection lost in between leaves it
        in C{source}, or in both).

        @return: a Deferred that fires with the number of messages moved,
            or errbacks with L{PublishFailed} when not connected, or when
            a copy is not confirmed or the channel is lost.
        """
        session = self._session
        if session is None or not session.ready or session.publishChannel is None:
            return defer.fail(
                PublishFailed(f"not connected to AMQP broker {self.url.redacted()}: nothing moved from {source!r}")
            )
        return defer.ensureDeferred(session.moveAll(source, destination))

    def _notDeleted(self, failure: Failure, queue: str) -> Failure:
        if not isinstance(failure.value, Closed):
            return failure
        raise PublishFailed(
            f"the channel to AMQP broker {self.url.redacted()} was lost before queue {queue!r} "
            f"was deleted ({failure.getErrorMessage()}): delete it with rabbitmqctl delete_queue"
        )

    # -- consuming -----------------------------------------------------------

    def _readDepth(self) -> None:
        """
        Tell the metrics how many messages are ready in the queue consumed
        from (a passive C{queue.declare}, which changes nothing).
        """
        session = self._session
        if session is None or not session.ready or session.publishChannel is None:
            return
        assert self.consumeFrom is not None
        reading: defer.Deferred[Any] = session.publishChannel.queue_declare(queue=self.consumeFrom, passive=True)
        reading.addCallbacks(
            lambda reply: self.metrics.outboxDepth(reply.message_count), lambda failure: None
        )

    def stopConsuming(self) -> defer.Deferred[None]:
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
        return defer.ensureDeferred(session.stopConsuming())

    def resumeConsuming(self) -> defer.Deferred[None]:
        """
        Consume again after L{stopConsuming}, now if connected, and after
        every reconnect.

        @return: a Deferred that fires with C{None} once the consumer runs
            (at once when not connected: it starts with the connection).
        """
        self._consumeWanted = True
        session = self._session
        if self.consumeFrom is None or session is None or not session.ready:
            return defer.succeed(None)
        return session.consume(self.consumeFrom)

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
        #: the node connected to
        self.url = client.url
        #: usable: set up, and no channel closed since
        self.ready = False
        #: the publish channel is set up and its queues declared (while the
        #: consumer may wait for the control listener), no channel closed since
        self.publishable = False
        #: the control listener was told of this connection
        self.controlHeard = False
        #: set up once (its loss is a lost connection, not a failed attempt)
        self.established = False
        self.declared: set[str] = set()
        self.confirms = PendingConfirms()
        self.publishChannel: AMQChannel | None = None
        self.consumeChannel: AMQChannel | None = None
        self.consumerTag: str | None = None
        self.controlChannel: AMQChannel | None = None
        self._consumeStarting: defer.Deferred[None] | None = None

    async def setUp(self) -> None:
        """
        Log in, open the channels, declare the queues and start the
        consumer (if wanted); L{ready} once done.
        """
        client = self.client
        await self.protocol.login(self.url)
        channel = await self.protocol.channel(PUBLISH_CHANNEL)
        await channel.channel_open()
        await channel.confirm_select()
        self.publishChannel = channel
        for queue in client.queues:
            await self._declare(queue)
        self.publishable = True
        if client.controlExchange is not None:
            others = await self._listenToControl(client.controlExchange)
            assert client.controlListener is not None
            self.controlHeard = True
            # the listener may want to hear the others first
            await client.controlListener.controlReady(others)
        if client._consumeWanted and client.consumeFrom is not None:
            # a Deferred, not a coroutine: stopConsuming waits on it too
            self._consumeStarting = defer.ensureDeferred(
                self._startConsuming(client.consumeFrom)
            )
            await self._consumeStarting
        self.ready = True

    def _declare(self, queue: QueueSpec) -> defer.Deferred[Any]:
        """
        @return: txamqp's Deferred of the C{queue.declare}: it fires with
            the C{declare-ok} reply.
        """
        channel = self.publishChannel
        assert channel is not None, "declared on the publish channel, after it is open"
        self.declared.add(queue.name)
        declaring: defer.Deferred[Any] = channel.queue_declare(
            queue=queue.name, durable=True, arguments=dict(queue.arguments)
        )
        return declaring

    async def _listenToControl(self, exchange: str) -> int:
        """
        @return: how many consumers the queue consumed from has (the other
            processes consuming it).
        """
        channel = await self.protocol.channel(CONTROL_CHANNEL)
        await channel.channel_open()
        await channel.exchange_declare(exchange=exchange, type="fanout", durable=True)
        # classic whatever the vhost's default type: an exclusive queue
        # cannot be a quorum queue, and this one lives only as long as the
        # connection does
        reply = await channel.queue_declare(
            queue="", exclusive=True, auto_delete=True, arguments={"x-queue-type": "classic"}
        )
        await channel.queue_bind(queue=reply.queue, exchange=exchange)
        await channel.basic_consume(queue=reply.queue, no_ack=True, exclusive=True)
        self.controlChannel = channel
        consumeFrom = self.client.consumeFrom
        if consumeFrom is None or consumeFrom not in self.declared:
            return 0
        declared = await channel.queue_declare(queue=consumeFrom, passive=True)
        return int(declared.consumer_count)

    def publishControl(self, body: bytes) -> bool:
        channel = self.controlChannel
        assert channel is not None and self.client.controlExchange is not None
        if channel.closed:
            return False
        properties = {"content-type": "application/json", "delivery-mode": 1, "priority": None, "headers": None}
        self.protocol.basicPublish(channel.id, self.client.controlExchange, "", body, properties)
        return True

    async def _startConsuming(self, queue: str) -> None:
        if queue not in self.declared:
            await self._declare(QueueSpec(queue, self.client.declareArguments))
        channel = self.consumeChannel
        if channel is None:
            channel = await self.protocol.channel(CONSUME_CHANNEL)
            await channel.channel_open()
            await channel.basic_qos(prefetch_count=self.client.prefetch)
            self.consumeChannel = channel
        reply = await channel.basic_consume(queue=queue)
        self.consumerTag = reply.consumer_tag

    def consume(self, queue: str) -> defer.Deferred[None]:
        """
        Start the consumer again on this connection, unless it runs or is
        starting.
        """
        starting = self._consumeStarting
        if self.consumerTag is not None or (starting is not None and not starting.called):
            return defer.succeed(None)
        self._consumeStarting = defer.ensureDeferred(self._startConsuming(queue))
        return self._consumeStarting

    def publish(
        self,
        queue: str,
        body: bytes,
        priority: int | None,
        headers: Mapping[str, object] | None,
        mandatory: bool,
    ) -> defer.Deferred[None]:
        channel = self.publishChannel
        assert channel is not None
        if channel.closed:
            return defer.fail(
                PublishFailed(
                    f"the channel to AMQP broker {self.url.redacted()} is "
                    f"closed: nothing was published to queue {queue!r}; publish "
                    f"it again after whenConnected() fires"
                )
            )
        if queue not in self.declared and not mandatory:
            # same channel, so the broker declares it before it routes the
            # publish below: no need to wait for declare-ok
            self._declare(QueueSpec(queue, self.client.declareArguments)).addErrback(_ignoreClosed)
        properties = {
            "content-type": "application/json",
            "delivery-mode": 2,
            "priority": priority,
            "headers": dict(headers) if headers else None,
        }
        confirmed = self.confirms.add(queue, body if mandatory else None)
        self.protocol.basicPublish(channel.id, "", queue, body, properties, mandatory)
        self.client.metrics.amqp("publish")
        return confirmed

    async def moveAll(self, source: str, destination: str) -> int:
        channel = self.publishChannel
        assert channel is not None
        moved = 0
        try:
            # what is there now, no more: a message that comes back to
            # source while this runs (held again) is not moved round and round
            count = (await channel.queue_declare(queue=source, passive=True)).message_count
        except Closed as e:
            raise PublishFailed(
                f"AMQP broker {self.url.redacted()} did not say how many messages {source!r} holds "
                f"({e}); nothing was moved"
            ) from None
        while moved < count:
            try:
                reply = await channel.basic_get(queue=source, no_ack=False)
            except Closed as e:
                raise PublishFailed(
                    f"the channel to AMQP broker {self.url.redacted()} was lost while moving "
                    f"messages from {source!r} to {destination!r} ({e}); {moved} were moved"
                ) from None
            if reply.method.name == "get-empty":
                return moved
            properties = reply.content.properties
            await self.publish(
                destination, reply.content.body, properties.get("priority"), properties.get("headers"), False
            )
            self.protocol.basicAck(channel.id, reply.delivery_tag)
            moved += 1
        return moved

    async def stopConsuming(self) -> None:
        """
        Cancel the consumer, once it has started (if it does).
        """
        if self._consumeStarting is not None:
            try:
                await self._consumeStarting
            except Exception:
                pass  # the connection failed: nothing to cancel
        tag, self.consumerTag = self.consumerTag, None
        channel = self.consumeChannel
        if tag is None or channel is None or channel.closed:
            return
        try:
            # the broker sends cancel-ok after every delivery it made, and
            # txamqp hands deliveries over in order: none can come later
            await channel.basic_cancel(consumer_tag=tag)
        except Closed:
            pass  # the channel is gone, and its deliveries with it

    def close(self, timeout: float) -> defer.Deferred[None]:
        """
        @return: a Deferred that fires with C{None} once the broker
            answered C{connection.close} (or C{timeout} seconds passed) and
            the channels are closed.
        """
        closing: defer.Deferred[None] = self.protocol.close(within=timeout)
        return closing

    # -- ConnectionListener --------------------------------------------------

    def deliveryReceived(self, channel: AMQChannel, message: Message) -> None:
        content = message.content
        if channel is self.controlChannel:
            listener = self.client.controlListener
            assert listener is not None
            try:
                listener.controlReceived(content.body)
            except Exception:
                self.log.failure("a control message could not be handled; it is dropped")
            return
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
        # counted first: the publishers' Deferreds fire within ack
        self.client.metrics.amqp("confirm", self.confirms.answered(deliveryTag, multiple))
        self.confirms.ack(deliveryTag, multiple)

    def publishRejected(self, channel: AMQChannel, deliveryTag: int, multiple: bool) -> None:
        url = self.url.redacted()
        self.client.metrics.amqp("nack", self.confirms.answered(deliveryTag, multiple))
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

    def publishReturned(self, channel: AMQChannel, message: Message) -> None:
        queue = message.routing_key
        url = self.url.redacted()
        error = PublishReturned(
            f"AMQP broker {url} returned the message published to queue {queue!r} "
            f"({message.reply_code} {message.reply_text}): no queue of that name exists "
            f"in vhost {self.url.vhost!r}, so nothing was stored; check the queue "
            f"name, or start mqtwist, which declares its outbox"
        )
        self.client.metrics.amqp("return")
        if not self.confirms.returned(queue, message.content.body, error):
            self.log.warn(
                "AMQP broker {url} returned a message published to queue {queue} "
                "that is no longer awaited: {code} {text}",
                url=url,
                queue=queue,
                code=message.reply_code,
                text=message.reply_text,
            )

    def channelClosed(self, channel: AMQChannel, reason: Failure) -> None:
        close = reason.value
        if self.established:
            # (while the connection is set up, the failed attempt says it)
            self.log.warn(
                "AMQP broker {url} closed channel {channel}: {code} {text}; "
                "reconnecting",
                url=self.url.redacted(),
                channel=channel.id,
                code=getattr(close, "reply_code", None),
                text=getattr(close, "reply_text", close),
            )
        self.ready = self.publishable = False
        self._failPending(f"the broker closed the channel ({getattr(close, 'reply_text', close)})")
        # a fresh connection sets both channels up again in a known state
        self.protocol.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.client._sessionLost(self, reason)
        # fail the publishes in the next turn, outside the transport's
        # connectionLost: publishers reacting at once to the failure find
        # the client without this connection (dropped just above) and
        # waiting to reconnect
        self.client._reactor.callLater(
            0, self._failPending, f"the connection was lost ({reason.getErrorMessage()})"
        )

    def _failPending(self, why: str) -> None:
        url = self.url.redacted()
        self.confirms.failAll(
            lambda queue: PublishFailed(
                f"{why} before AMQP broker {url} confirmed the message "
                f"published to queue {queue!r}: it may or may not be stored; "
                f"publish it again after whenConnected() fires"
            )
        )


def _whyAttemptFailed(url: BrokerURL, failure: Failure, consumeFrom: str | None = None) -> str:
    """
    What went wrong with an attempt to connect to C{url} and set the
    connection up, and what to do about it.

    @param consumeFrom: the queue consumed (the outbox, the one queue whose
        priorities a setting chooses).
    """
    broker = f"AMQP broker {url.redacted()}"
    where = hostPort(url.host, url.port)
    value = failure.value
    if isinstance(value, LoginFailed):
        return str(value)
    if isinstance(value, error.ConnectionRefusedError):
        return (
            f"cannot reach {broker}: {where} refused the connection (nothing "
            f"listens there): check that the broker runs and listens at {where}, "
            f"and the host and port in the broker URL (--amqp)"
        )
    if isinstance(value, error.DNSLookupError):
        return (
            f"cannot reach {broker}: the host name {url.host!r} does not resolve "
            f"({failure.getErrorMessage()}): check the host in the broker URL "
            f"(--amqp) and this machine's DNS"
        )
    if isinstance(value, error.TimeoutError):
        return (
            f"cannot reach {broker}: no answer from {where} within "
            f"{url.connectTimeout:g} s (connection timed out): check that the "
            f"broker runs at {where} and that no firewall drops the connection; "
            f"connection_timeout in the URL sets the wait"
        )
    if isinstance(value, error.ConnectError):
        return (
            f"cannot reach {broker}: {failure.getErrorMessage()}: check that the "
            f"broker runs at {where} and that this machine can reach it"
        )
    if isinstance(value, ChannelClosed):
        said = describeClose(value)
        code = _closeCode(value)
        advice = (_priorityAdvice(said, consumeFrom) or _queueTypeAdvice(said)) if code == 406 else None
        return (
            f"{broker} refused to set up mqtwist's queues or consumer ({said}): "
            f"{advice or _CHANNEL_ADVICE.get(code, _CHANNEL_ADVICE[None])}"
        )
    if isinstance(value, Closed):
        return (
            f"{broker} let mqtwist in, but the connection ended while its queues "
            f"and consumer were set up ({describeClose(value)}): if this "
            f"repeats, look for the cause in the broker's log"
        )
    return (
        f"could not set up the connection to {broker}: "
        f"{type(value).__name__}: {failure.getErrorMessage()}"
    )


#: RabbitMQ's words for a queue whose x-max-priority is not the one
#: declared: "inequivalent arg 'x-max-priority' for queue 'outbox' in vhost
#: '/': received none but current is the value '10' of type 'signedint'"
#: (or "received the value '10' of type 'signedint' but current is none",
#: or "received '10' but current is '5'")
_PRIORITY_MISMATCH = re.compile(
    r"inequivalent arg 'x-max-priority' for queue '(?P<queue>.*)' in vhost .*"
    r"received (?:none|(?:the value )?'(?P<declared>\d+)'.*?) but current is "
    r"(?:none|(?:the value )?'(?P<current>\d+)')",
    re.DOTALL,
)


def _priorityAdvice(said: str, consumeFrom: str | None) -> str | None:
    """
    What to do about the outbox (C{consumeFrom}) when it exists with another
    C{x-max-priority} than mqtwist declares (C{--max-priority}), or C{None}
    when the broker's C{said} is about something else.
    """
    match = _PRIORITY_MISMATCH.search(said)
    if match is None or match["queue"] != consumeFrom:
        return None
    queue = match["queue"]
    current = match["current"]
    declared = match["declared"]
    has = f"x-max-priority {current}" if current else "no x-max-priority (an ordinary queue)"
    wants = f"x-max-priority {declared}" if declared else "none"
    return (
        f"the outbox {queue!r} exists with {has}, and mqtwist declares it with {wants} "
        f"(--max-priority {declared or 0}); RabbitMQ cannot change the priorities of "
        f"an existing queue, not even by a policy. Either start mqtwist with "
        f"--max-priority {current or 0} to use the queue as it is, or, to "
        f"{'make it a priority queue' if declared else 'change it'}, stop what publishes "
        f"to it, move its messages to another queue (a shovel), delete it, start "
        f"mqtwist, which declares it anew, and move the messages back"
    )


#: RabbitMQ's words for a queue of another type than declared: "inequivalent
#: arg 'x-queue-type' for queue 'outbox' in vhost '/': received the value
#: 'quorum' of type 'longstr' but current is none" (a classic queue has no
#: x-queue-type), or "received none but current is the value 'quorum' ..."
_TYPE_MISMATCH = re.compile(
    r"inequivalent arg 'x-queue-type' for queue '(?P<queue>.*)' in vhost .*"
    r"received (?:none|(?:the value )?'(?P<declared>\w+)'.*?) but current is "
    r"(?:none|(?:the value )?'(?P<current>\w+)')",
    re.DOTALL,
)


def _queueTypeAdvice(said: str) -> str | None:
    """
    What to do about a queue that exists as a classic queue when mqtwist
    declares quorum queues (C{--queue-type}), or the other way round; or
    C{None} when the broker's C{said} is about something else.
    """
    match = _TYPE_MISMATCH.search(said)
    if match is None:
        return None
    current = match["current"] or "classic"
    declared = match["declared"] or "classic"
    return (
        f"queue {match['queue']!r} exists as a {current} queue, and mqtwist declares it as a "
        f"{declared} queue (--queue-type {declared}); RabbitMQ cannot change the type of an "
        f"existing queue. Either start mqtwist with --queue-type {current} to use the queues "
        f"as they are, or move them, losing nothing, as the README's 'Moving a classic outbox "
        f"to a quorum queue' says: stop the publishers and mqtwist, move the messages of each "
        f"of mqtwist's queues to a temporary queue (a shovel) and delete the queue, start "
        f"mqtwist with --queue-type {declared}, which declares the queues anew, and move the "
        f"messages back"
    )


def _closeCode(closed: Closed) -> int | None:
    reason = closed.args[0] if closed.args else None
    return reason.reply_code if isinstance(reason, Message) else None


#: what to do when the broker closes a channel while the queues and the
#: consumer are set up, by the reply code of its channel.close
_CHANNEL_ADVICE: dict[int | None, str] = {
    403: (
        "give the user configure, write and read permission on the queues "
        "(rabbitmqctl set_permissions)"
    ),
    405: "another connection holds the queue exclusively: stop that consumer",
    406: (
        "a queue exists with other arguments or properties than mqtwist "
        "declares (durable classic queues, or quorum queues with --queue-type "
        "quorum; the outbox with x-max-priority when --max-priority is set; the "
        "delay queues with their TTL and dead-letter route): move its messages "
        "elsewhere and delete it, "
        "so that mqtwist declares it, or give mqtwist other queue names"
    ),
    None: "fix what the broker names; if it is not clear, look in the broker's log",
}
