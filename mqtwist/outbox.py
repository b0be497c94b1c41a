"""
From an outbox delivery to published results, then the acknowledgement.

For each message taken from the outbox: parse it, decide whether it may be
tried now, deliver it, publish what happened (results, success, failure,
retry, and the message itself to a delay queue when it is to be tried again),
and acknowledge it on the outbox only once the broker confirmed every one of
those publishes.  A crash at any point therefore loses nothing: the broker
hands the unacknowledged message out again, and at worst an attempt is
repeated.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    ensureDeferred,
    gatherResults,
)
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtwist.amqp.client import Delivery
from mqtwist.config import Config
from mqtwist.delivery import ScheduledEntry
from mqtwist.errors import InvalidMessage
from mqtwist.message import (
    Message,
    ParseSettings,
    ResultEntry,
    buildMimeProperty,
    decodeJSON,
    invalidResultJSON,
    queueFor,
)
from mqtwist.schedule import RetrySchedule
from mqtwist.timeformat import formatTime


class Publisher(Protocol):
    """
    What the processor needs of the broker: confirmed, persistent publishes.
    """

    def publish(
        self, queue: str, body: bytes, *, priority: int | None = None
    ) -> Deferred[None]:
        """
        @return: a Deferred firing once the broker confirmed the message.
        """


class OutboxProcessor:
    """
    Handles the deliveries of the outbox consumer.

    @param deliver: the delivery core (L{DeliveryEngine.deliver}); it
        limits how many deliveries run at once, and answers at once with a
        deferral for a destination that cannot take more, so every outbox
        message is acknowledged soon and none waits behind another
        destination's.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        deliver: Callable[[Message], Deferred[ResultEntry]],
        publisher: Publisher,
        schedule: RetrySchedule,
        reactor: Any,
        parseSettings: ParseSettings,
    ) -> None:
        self.config = config
        self.parseSettings = parseSettings
        self.deliver = deliver
        self.publisher = publisher
        self.schedule = schedule
        self.reactor = reactor
        self.inFlight: set[Deferred[None]] = set()

    def handle(self, delivery: Delivery) -> None:
        """
        Take one outbox delivery; it is acknowledged when it is done.
        """
        done = ensureDeferred(self._handle(delivery))
        self.inFlight.add(done)
        done.addErrback(self._unfinished)
        done.addBoth(lambda _: self.inFlight.discard(done))

    def _unfinished(self, failure: Failure) -> None:
        if failure.check(CancelledError, ConnectingCancelledError):
            # stopping the service cut the delivery short: that is expected
            self.log.info(
                "a delivery was stopped unfinished; its outbox message stays "
                "unacknowledged and will be delivered again"
            )
        else:
            self.log.failure(
                "unexpected error handling an outbox message; it stays unacknowledged",
                failure,
            )

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Wait for the deliveries in flight, at most C{timeout} seconds.

        @return: a Deferred firing when they are done or the time is up;
            what is left stays unacknowledged and the broker hands it out
            again.
        """
        pending = DeferredList(list(self.inFlight), consumeErrors=True)
        timer = self.reactor.callLater(timeout, pending.cancel)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()
            else:
                self.log.warn(
                    "{count} deliveries were still in flight after {timeout}s; "
                    "they stay unacknowledged and will be delivered again",
                    count=len(self.inFlight),
                    timeout=timeout,
                )

        return pending.addBoth(finished)

    async def _handle(self, delivery: Delivery) -> None:
        now = self.reactor.seconds()
        try:
            obj = decodeJSON(delivery.body)
            if isinstance(obj.get("mime"), dict):
                # building MIME costs milliseconds: not on the reactor thread
                await deferToThreadPool(
                    self.reactor, self.reactor.getThreadPool(),
                    buildMimeProperty, obj, self.parseSettings, now,
                )
            message = Message.fromObject(obj, self.parseSettings, now=now)
        except InvalidMessage as failure:
            await self._publishInvalid(delivery, failure, now)
            return

        expired = self.schedule.expiredBeforeAttempt(message, now)
        if expired is not None:
            await self._expire(delivery, message, expired, now)
        elif message.nextattempt is not None and message.nextattempt > now:
            await self._park(delivery, message, message.nextattempt - now)
        else:
            entry = await self.deliver(message)
            await self._conclude(delivery, message, entry)

    async def _conclude(self, delivery: Delivery, message: Message, entry: ResultEntry) -> None:
        now = self.reactor.seconds()
        if isinstance(entry, ScheduledEntry) and entry.state == "process":
            await self._defer(delivery, message, entry, now)
            return
        message.record(entry)
        if entry.final:
            await self._finish(delivery, message, success=entry.accepted)
            return
        delay = entry.retryAt - now if isinstance(entry, ScheduledEntry) else None
        decision = self.schedule.afterSoftFailure(message, now, delay)
        if decision.expired:
            await self._expire(delivery, message, decision.reason, now)
            return
        await self._retryLater(delivery, message, decision.delay, now)

    async def _defer(
        self, delivery: Delivery, message: Message, entry: ScheduledEntry, now: float
    ) -> None:
        """
        Park a message that its destination could not take: no attempt was
        made; the entry says why and until when, and replaces the entry of
        the deferral just before it, so a long pause does not make the
        message grow.
        """
        previous = message.deferralsInRow
        if previous:
            replaced = message.results.pop()
            entry.connection["deferrals"] = previous + 1
            # the expiry clock runs from the first deferral of the row
            entry.connection["since"] = replaced.get("since", replaced.get("time"))
        message.record(entry)
        # no retry notice: nothing was tried, so nothing failed; the entry
        # travels with the message into its final result
        await self._retryLater(delivery, message, max(0.0, entry.retryAt - now), now, notify=False)

    async def _retryLater(
        self, delivery: Delivery, message: Message, delay: float, now: float, *, notify: bool = True
    ) -> None:
        message.json["nextattempt"] = {"time": formatTime(now + delay)}
        publications = [self._toDelayQueue(message, delay)]
        retry = message.queueFor("retry", self.config.retry) if notify else None
        if retry:
            publications.append((retry, message.resultJSON()))
        await self._publishThenAck(delivery, message.label, publications, message.priority)

    async def _expire(self, delivery: Delivery, message: Message, reason: str, now: float) -> None:
        self.log.info(
            "{message} to {recipient} expired: {reason}",
            message=message.label,
            recipient=message.recipient,
            reason=reason,
        )
        message.record(ResultEntry("process", "timeout", now, True, description=reason))
        await self._finish(delivery, message, success=False)

    async def _finish(self, delivery: Delivery, message: Message, *, success: bool) -> None:
        body = message.resultJSON()
        kinds = ("results", "success" if success else "failure")
        publications = [
            (queue, body)
            for queue in (message.queueFor(kind, getattr(self.config, kind)) for kind in kinds)
            if queue
        ]
        await self._publishThenAck(delivery, message.label, publications, message.priority)

    async def _park(self, delivery: Delivery, message: Message, delay: float) -> None:
        self.log.debug(
            "{message} waits {delay:.0f}s for its next attempt",
            message=message.label,
            delay=delay,
        )
        publications = [self._toDelayQueue(message, delay)]
        await self._publishThenAck(delivery, message.label, publications, message.priority)

    def _toDelayQueue(self, message: Message, delay: float) -> tuple[str, bytes]:
        bucket = self.schedule.bucketFor(delay)
        return self.schedule.delayQueueName(bucket), message.outboxJSON()

    async def _publishInvalid(self, delivery: Delivery, failure: InvalidMessage, now: float) -> None:
        self.log.warn("refused an outbox message: {description}", description=failure.description)
        try:
            obj = json.loads(delivery.body)
        except ValueError:
            obj = None
        body = invalidResultJSON(delivery.body, failure, now)
        publications = [
            (queue, body)
            for queue in (
                queueFor(obj, kind, getattr(self.config, kind)) for kind in ("results", "failure")
            )
            if queue
        ]
        await self._publishThenAck(delivery, "an invalid message", publications, None)

    async def _publishThenAck(
        self,
        delivery: Delivery,
        label: str,
        publications: list[tuple[str, bytes]],
        priority: int | None,
    ) -> None:
        if not delivery.current:
            # the broker already took the message back and hands it out again
            self.log.info(
                "not publishing results of {message}: its outbox connection is gone",
                message=label,
            )
            return
        confirmed: list[Deferred[None]] = []
        try:
            for queue, body in publications:
                confirmed.append(self.publisher.publish(queue, body, priority=priority))
            # most often one publication: no list of Deferreds to wait on
            await (confirmed[0] if len(confirmed) == 1 else gatherResults(confirmed, consumeErrors=True))
        except Exception as e:
            for publication in confirmed:
                # the other outcomes no longer matter
                publication.addErrback(lambda _: None)
            self.log.warn(
                "results of {message} were not confirmed ({error}); "
                "it goes back to the outbox and will be tried again",
                message=label,
                error=getattr(e, "subFailure", e),
            )
            delivery.release()
            return
        delivery.ack()
