"""
From an outbox delivery to published results, then the acknowledgement.

For each message taken from the outbox: parse it, decide whether it may be
tried now, deliver it, publish what happened (results, success, failure,
retry, and the message itself to a delay queue when it is to be tried again),
and acknowledge it on the outbox only once the broker confirmed every one of
those publishes.  A crash at any point therefore loses nothing: the broker
hands the unacknowledged message out again, and at worst an attempt is
repeated.

Whatever a message holds, and whatever goes wrong while it is handled (a
bug included), it is settled: with a final result when one can be built and
published, else by a copy on the dead-letter queue, else by a reject.  A
message whose results the broker would not confirm several times in a row
is dead-lettered when it comes back, so no message circles between the
outbox and this process for ever, holding a prefetch slot each time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    FirstError,
    ensureDeferred,
    fail,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtwist.admin.controls import Control, Controls
from mqtwist.amqp.client import Delivery
from mqtwist.config import Config
from mqtwist.content.bounce import DELAYED, FAILED, RELAYED, BounceSettings, bounceJob, notifies
from mqtwist.content.headeredits import applyHeaderEdits, editedLength
from mqtwist.content.message import (
    Message,
    ParseSettings,
    ResultEntry,
    buildMimeProperty,
    decodeJSON,
    identityOf,
    invalidResultJSON,
    labelOf,
    labelsShown,
    queueFor,
    rawResultJSON,
    readJob,
)
from mqtwist.content.personalize import rewritesContent, rewrittenContent, templateLimits
from mqtwist.delivery.categories import lastCategory
from mqtwist.delivery.engine import ScheduledEntry
from mqtwist.errors import AttemptFailed, InvalidMessage
from mqtwist.metrics import Metrics
from mqtwist.outbox.journal import DeliveryJournal
from mqtwist.outbox.schedule import RetrySchedule
from mqtwist.timeformat import formatTime
from mqtwist.validation import excerpt


class Publisher(Protocol):
    """
    What the processor needs of the broker: confirmed, persistent publishes.
    """

    def publish(
        self,
        queue: str,
        body: bytes,
        *,
        priority: int | None = None,
        headers: Mapping[str, object] | None = None,
    ) -> Deferred[None]:
        """
        @return: a Deferred firing once the broker confirmed the message.
        """


#: how logs name an outbox message without a readable id or recipient
_UNREADABLE = "(no id)"

#: characters of C{headers} edits that are applied on the reactor thread
#: when the message is sent; longer ones are applied in a thread first
#: (parsing a 1,000-character To value may take 17 ms, 8,000 characters 0.7 s)
_EDITS_ON_THE_REACTOR = 256

#: bytes of a message above which its delivery status notification is built
#: in a thread (a report with the whole of a 100 KB message takes 0.6 ms,
#: of a 10 MB one 64 ms; one with the headers of a 10 MB one 2.8 ms)
_REPORT_ON_THE_REACTOR = 128 * 1024


def _rewritesContent(message: Message) -> bool:
    """
    Whether C{message} is to be personalized or have its CSS inlined now (a
    stored message, C{key}, is once it is loaded:
    L{mqtwist.delivery.transaction.sendMessage}).  The outbox object keeps
    C{mime} as it is, so that each attempt starts from the template.
    """
    return message.storeKey is None and rewritesContent(message)


#: outbox messages whose results were not confirmed that are remembered (by
#: the digest of their body, L{DeliveryJournal.keyOf}) to dead-letter them
#: after too many tries; the oldest are forgotten first
_REMEMBERED_FAILURES = 10_000


class OutboxProcessor:
    """
    Handles the deliveries of the outbox consumer.

    @param deliver: the delivery core (L{DeliveryEngine.deliver}); it
        limits how many deliveries run at once, and answers at once with a
        deferral for a destination that cannot take more, so every outbox
        message is acknowledged soon and none waits behind another
        destination's.
    @param journal: where accepted deliveries are recorded, and looked up
        for a message the broker hands out again (C{redelivered}): one
        found there is not sent again, its result is published again.
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
        journal: DeliveryJournal,
        metrics: Metrics | None = None,
        controls: Controls | None = None,
    ) -> None:
        self.config = config
        self.templateLimits = templateLimits(config)
        self.metrics = metrics if metrics is not None else Metrics()
        self.controls = controls if controls is not None else Controls(reactor)
        #: when each delivery in flight was taken, for the latency of its result
        self._takenAt: dict[Delivery, float] = {}
        self.journal = journal
        self.parseSettings = parseSettings
        self.bounceSettings = BounceSettings.fromConfig(config, parseSettings.limits)
        self.deliver = deliver
        self.publisher = publisher
        self.schedule = schedule
        self.reactor = reactor
        #: the deliveries being handled, by the Deferred that fires when
        #: each is done
        self.inFlight: dict[Deferred[None], Delivery] = {}
        #: labels of messages whose results were not confirmed, by the
        #: reason, until they are logged together at the end of the turn
        self._unconfirmedLabels: dict[str, list[str]] = {}
        #: how many times the results of a message were not confirmed, and
        #: the last reason, by L{DeliveryJournal.keyOf}
        self._settleFailures: OrderedDict[bytes, tuple[int, str]] = OrderedDict()

    def handle(self, delivery: Delivery) -> None:
        """
        Take one outbox delivery; it is acknowledged when it is done.

        Everything up to the first wait happens in this call (parse, the
        expiry check, and for a destination that cannot take the message,
        its deferral and the publish to a delay queue): no coroutine is
        started for a message that is parked at once, so a stuck
        destination's messages cost little of the time the others need.
        """
        self.metrics.consumed()
        self._takenAt[delivery] = self.reactor.seconds()
        if delivery.redelivered:
            # only a message handed out again can have been handled before
            key = self.journal.keyOf(delivery.body)
            delivered = self.journal.lookup(key)
            failures, reason = self._settleFailures.get(key, (0, ""))
        else:
            delivered, failures = None, 0
        if failures >= self.config.settleAttempts:
            # before the journal: its result may be what the broker refuses
            done = self._deadLetter(
                delivery,
                f"its results were not confirmed by the broker {failures} times (last: {reason})"
                + (f"; it was delivered at {delivered.get('time')}" if delivered is not None else ""),
            )
        elif delivered is not None:
            done = self._publishDeliveredAgain(delivery, delivered)
        else:
            try:
                done = self._handle(delivery)
            except Exception:
                # a bug here must not reach the AMQP connection, which would close
                done = fail()
            done.addErrback(self._handlingFailed, delivery)
        self.inFlight[done] = delivery
        done.addBoth(self._ended, done)

    def _ended(self, result: object, done: Deferred[None]) -> None:
        delivery = self.inFlight.pop(done, None)
        self._takenAt.pop(delivery, None)  # type: ignore[arg-type]
        if not isinstance(result, Failure):
            return
        if result.check(CancelledError, ConnectingCancelledError):
            # a stop or a drain cut the delivery short: that is expected; the
            # message goes back to the outbox now, for this process (once
            # undrained) or another, not when the connection ends
            if delivery is not None:
                delivery.release()
            self.log.info(
                "a delivery was stopped unfinished; its outbox message goes back to the "
                "outbox and will be delivered again"
            )
        else:
            # settling failed too: the message is in the outbox again only
            # when its connection is gone
            self.log.failure(
                "could not settle outbox message {message}",
                result,
                message=self._labelOf(delivery.body if delivery else b""),
            )

    def _handlingFailed(self, failure: Failure, delivery: Delivery) -> Deferred[None] | Failure:
        """
        Settle a message whose handling failed unexpectedly, a bug of
        mqtwist's or a plugin's: with a final C{process}/C{error} result,
        or on the dead-letter queue when not even that can be built.
        """
        if failure.check(CancelledError, ConnectingCancelledError):
            # stopping the service cut the delivery short: see _ended
            return failure
        limits = self.parseSettings.limits
        obj = readJob(delivery.body, limits)
        label = self._labelOf(delivery.body, obj)
        self.log.failure(
            "handling outbox message {message} failed; it ends as process/error", failure, message=label
        )
        error = AttemptFailed(
            "process",
            "error",
            f"mqtwist could not handle the message ({type(failure.value).__name__}: "
            f"{excerpt(str(failure.value), 200)}); it is not delivered: report this, with "
            f"mqtwist's log, as a bug of mqtwist or of the plugin named in the log",
            permanent=True,
        )
        self.metrics.concluded("error", "process", "error")
        try:
            body = invalidResultJSON(delivery.body, error, self.reactor.seconds(), limits)
            publications = self._resultPublications(obj, body, success=False)
        except Exception:
            self.log.failure("cannot build the result of outbox message {message}", message=label)
            return self._deadLetter(delivery, f"handling and then building its result failed: {error.description}")
        return self._publishThenAck(delivery, label, publications, None)

    def _publishDeliveredAgain(self, delivery: Delivery, entry: dict[str, Any]) -> Deferred[None]:
        """
        Publish the result of a message that was delivered already, from
        the journal's entry, instead of sending it again: the broker lost
        the acknowledgement (it crashed), or the results were not confirmed.
        """
        limits = self.parseSettings.limits
        obj = readJob(delivery.body, limits)
        label = self._labelOf(delivery.body, obj)
        self.log.info(
            "{message} was handed out again, but it was delivered at {time}: its result is "
            "published again instead of sending it a second time",
            message=label,
            time=entry.get("time"),
        )
        body = rawResultJSON(delivery.body, entry, limits)
        self.metrics.concluded("delivered", "message", "accepted")
        return self._publishThenAck(delivery, label, self._resultPublications(obj, body, success=True), None)

    def _labelOf(self, body: bytes, job: dict[str, Any] | None = None) -> str:
        """
        How logs name the outbox message C{body} (whose object, when read
        already, is C{job}), also when it is past its limits.
        """
        limits = self.parseSettings.limits
        if job is None:
            job = readJob(body, limits) or identityOf(body, limits)
        return labelOf(job, _UNREADABLE)

    def _resultPublications(self, obj: object, body: bytes, *, success: bool) -> list[tuple[str, bytes]]:
        """
        The final result C{body} for the C{results} queue, and the
        C{success} or C{failure} one, as the outbox object C{obj} routes it.
        """
        kinds = ("results", "success" if success else "failure")
        return [
            (queue, body)
            for queue in (
                queueFor(obj, kind, getattr(self.config, kind), self.parseSettings.reservedQueues)
                for kind in kinds
            )
            if queue
        ]

    def _deadLetter(self, delivery: Delivery, reason: str) -> Deferred[None]:
        """
        Settle a message that cannot be settled with a result: a copy of it,
        with C{reason} in its C{x-mqtwist-reason} header, on the dead-letter
        queue, then the ack; without a dead-letter queue, or when the broker
        refuses the copy, a reject, which drops it.

        @return: a Deferred firing when the message is settled, or back on
            the outbox because its connection is gone.
        """
        label = self._labelOf(delivery.body)
        queue = self.config.deadLetterQueue
        if not queue:
            return self._reject(delivery, label, reason, "no --dead-letter-queue is set")
        if not delivery.current:
            return succeed(None)
        self.log.error(
            "outbox message {message} goes to the dead-letter queue {queue}: {reason}",
            message=label,
            queue=queue,
            reason=reason,
        )
        headers = {"x-mqtwist-reason": reason, "x-mqtwist-outbox": self.config.outbox}
        self.metrics.concluded("dead-lettered")
        try:
            copied = self.publisher.publish(queue, delivery.body, priority=delivery.priority, headers=headers)
        except Exception as e:
            copied = fail(e)
        return copied.addCallbacks(
            lambda _: delivery.ack(),
            lambda failure: self._reject(
                delivery, label, reason, f"the dead-letter queue {queue!r} did not take it: {failure.value}"
            ),
        )

    def _reject(self, delivery: Delivery, label: str, reason: str, why: str) -> Deferred[None]:
        if delivery.current:
            self.log.critical(
                "outbox message {message} ({size} bytes) is dropped: {reason}, and {why}",
                message=label,
                size=len(delivery.body),
                reason=reason,
                why=why,
            )
            delivery.reject()
        return succeed(None)

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Wait for the deliveries in flight, at most C{timeout} seconds.

        @return: a Deferred firing when they are done or the time is up;
            what is left then is stopped, and goes back to the outbox.
            Cancelling it stops the waiting and the timer, not the
            deliveries (an undrain).
        """
        if self.inFlight:
            self.log.info(
                "stopping: waiting up to {timeout}s for the deliveries in flight ({count})",
                count=len(self.inFlight),
                timeout=timeout,
            )
        pending = DeferredList(list(self.inFlight), consumeErrors=True)

        def giveUp() -> None:
            # named before the cancel, which takes them out of inFlight
            messages = [
                self._labelOf(delivery.body)
                for delivery in self.inFlight.values()
            ]
            self.log.warn(
                "{count} of the deliveries in flight did not end within {timeout}s ({shown}); "
                "they go back to the outbox and will be delivered again",
                count=len(messages),
                messages=messages,
                shown=labelsShown(messages),
                timeout=timeout,
            )
            pending.cancel()

        timer = self.reactor.callLater(timeout, giveUp)

        def stopWaiting(_: Deferred[None]) -> None:
            if timer.active():
                timer.cancel()

        done: Deferred[None] = Deferred(stopWaiting)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        pending.addBoth(finished)
        return done

    def _handle(self, delivery: Delivery) -> Deferred[None]:
        now = self.reactor.seconds()
        try:
            obj = decodeJSON(delivery.body, self.parseSettings.limits)
            if isinstance(obj.get("mime"), dict):
                return ensureDeferred(self._handleInThreads(delivery, obj, None, now))
            message = Message.fromObject(obj, self.parseSettings, now=now)
            rewrite = _rewritesContent(message)
            # a template's cost does not follow its size: data always in a thread
            if rewrite and (message.data is not None or len(message.mime) > self.config.contentThreadBytes):
                return ensureDeferred(self._handleInThreads(delivery, obj, message, now, rewrite=True))
            if rewrite:
                message.mime = rewrittenContent(message.mime, message, self.templateLimits)
        except InvalidMessage as failure:
            return self._publishInvalid(delivery, failure, now)
        # a stored message (key) gets its edits once loaded, in a thread
        edits = message.headerEdits if message.storeKey is None else None
        if edits and editedLength(edits) > _EDITS_ON_THE_REACTOR:
            return ensureDeferred(self._handleInThreads(delivery, obj, message, now))
        return self._process(delivery, message, now)

    async def _handleInThreads(
        self, delivery: Delivery, obj: dict[str, Any], message: Message | None, now: float, *, rewrite: bool = False
    ) -> None:
        """
        Handle a message whose preparation costs milliseconds, off the
        reactor thread: a C{mime} object to build, personalization
        (C{data}) or C{inlinecss} of a big message (C{rewrite}), or long
        C{headers} edits (the email package parses some header values in
        quadratic time).  Personalization comes before the edits.
        """
        threads = self.reactor.getThreadPool()
        try:
            if message is None:
                await deferToThreadPool(self.reactor, threads, buildMimeProperty, obj, self.parseSettings, now)
                message = Message.fromObject(obj, self.parseSettings, now=now)
                rewrite = _rewritesContent(message)
            if rewrite:
                message.mime = await deferToThreadPool(
                    self.reactor, threads, rewrittenContent, message.mime, message, self.templateLimits
                )
            if message.headerEdits:
                message.editedMime = await deferToThreadPool(
                    self.reactor, threads, applyHeaderEdits, message.mime, message.headerEdits
                )
        except InvalidMessage as failure:
            await self._publishInvalid(delivery, failure, now)
            return
        await self._process(delivery, message, now)

    def _process(self, delivery: Delivery, message: Message, now: float) -> Deferred[None]:
        expired = self.schedule.expiredBeforeAttempt(message, now)
        if expired is not None:
            return self._expire(delivery, message, expired, now)
        if self.controls.cancelling:
            cancel = self.controls.cancelFor(domain=message.domain, tags=message.tags)
            if cancel is not None:
                return self._cancel(delivery, message, cancel, now)
        if message.nextattempt is not None and message.nextattempt > now:
            return self._park(delivery, message, message.nextattempt - now)
        return self.deliver(message).addCallback(self._concluded, delivery, message)

    def _concluded(self, entry: ResultEntry, delivery: Delivery, message: Message) -> Deferred[None]:
        if entry.accepted:
            self.journal.record(self.journal.keyOf(delivery.body), entry.toJSON())
        try:
            return self._conclude(entry, delivery, message)
        except Exception:
            if not entry.accepted:
                raise
            # the mail is gone: it must have its result, never be sent again
            self.log.failure(
                "concluding the delivered outbox message {message} failed; its result is made "
                "from the message as it arrived",
                message=message.label,
            )
        body = rawResultJSON(delivery.body, entry.toJSON(), self.parseSettings.limits)
        publications = self._resultPublications(message.json, body, success=True)
        return self._publishThenAck(delivery, message.label, publications, message.priority)

    def _conclude(self, entry: ResultEntry, delivery: Delivery, message: Message) -> Deferred[None]:
        now = self.reactor.seconds()
        if isinstance(entry, ScheduledEntry) and entry.state == "process":
            return self._defer(delivery, message, entry, now)
        message.record(entry)
        if entry.final:
            return self._finish(delivery, message, success=entry.accepted)
        delay = entry.retryAt - now if isinstance(entry, ScheduledEntry) else None
        decision = self.schedule.afterSoftFailure(message, now, delay)
        if decision.expired:
            return self._expire(delivery, message, decision.reason, now)
        return self._retryLater(delivery, message, decision.delay, now)

    def _defer(
        self, delivery: Delivery, message: Message, entry: ScheduledEntry, now: float
    ) -> Deferred[None]:
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
        if entry.held:
            # no delay queue: it waits for the end of the pause, which
            # sends the held queue back to the outbox (MailerService)
            self.metrics.concluded("held", entry.state, entry.result)
            held = [(self.config.heldQueueName, message.outboxJSON())]
            return self._publishThenAck(delivery, message.label, held, message.priority)
        expiry = self.schedule.expiryTime(message, now)
        # no retry notice: nothing was tried, so nothing failed; the entry
        # travels with the message into its final result
        if entry.retryAt < expiry:
            return self._retryLater(delivery, message, max(0.0, entry.retryAt - now), now, notify=False)
        # back by its expiry, to expire then rather than at the end of a
        # long park (it may come back early, for a shorter park)
        return self._retryLater(delivery, message, max(0.0, expiry - now), now, notify=False, byThen=True)

    def _retryLater(
        self,
        delivery: Delivery,
        message: Message,
        delay: float,
        now: float,
        *,
        notify: bool = True,
        byThen: bool = False,
    ) -> Deferred[None]:
        """
        Put C{message} in a delay queue for C{delay} seconds, rounded up to
        a queue's; with C{byThen}, to be back by then or soon after
        (L{RetrySchedule.bucketBy}).
        """
        if byThen:
            bucket = self.schedule.bucketBy(delay)
            back = now + bucket
        else:
            bucket = self.schedule.bucketFor(delay)
            # past the longest queue, it waits again for the rest when back
            back = now + max(delay, bucket)
        message.json["nextattempt"] = {"time": formatTime(back)}
        publications = [self._toDelayQueue(message, bucket)]
        retry = message.queueFor("retry", self.config.retry) if notify else None
        if retry:
            publications.append((retry, message.resultJSON()))
        last = message.results[-1] if message.results else {}
        self.metrics.concluded(
            "retried" if notify else "deferred", str(last.get("state", "")), str(last.get("result", ""))
        )
        if notify:
            expiry = self.schedule.expiryTime(message, now)
            return self._publishWithReport(delivery, message, publications, DELAYED, now, expiry)
        return self._publishThenAck(delivery, message.label, publications, message.priority)

    def _expire(self, delivery: Delivery, message: Message, reason: str, now: float) -> Deferred[None]:
        last = _lastOutcome(message)
        if last:
            reason = f"{reason}; the last {last}"
        category = lastCategory(message.results)
        self.log.info(
            "{message} to {recipient} expired ({category}): {reason}",
            message=message.label,
            recipient=message.recipient,
            reason=reason,
            category=category,
            destination=message.results[-1].get("destination") if message.results else None,
        )
        message.record(ResultEntry("process", "timeout", now, True, description=reason, category=category))
        return self._finish(delivery, message, success=False)

    def _finish(
        self, delivery: Delivery, message: Message, *, success: bool, report: bool = True
    ) -> Deferred[None]:
        """
        Publish the final result of C{message}, with its delivery status
        notification unless not C{report}.
        """
        # there is no next attempt: a time left from a retry would say otherwise
        message.json.pop("nextattempt", None)
        self._countFinal(delivery, message, success)
        publications = self._resultPublications(message.json, message.resultJSON(), success=success)
        if not report:
            return self._publishThenAck(delivery, message.label, publications, message.priority)
        action = RELAYED if success else FAILED
        return self._publishWithReport(delivery, message, publications, action, self.reactor.seconds())

    def _countFinal(self, delivery: Delivery, message: Message, success: bool) -> None:
        last = message.results[-1] if message.results else {}
        state, result = str(last.get("state", "")), str(last.get("result", ""))
        outcome = "delivered" if success else _FINAL_OUTCOMES.get((state, result), "failed")
        self.metrics.concluded(outcome, state, result)
        # from the first attempt, or from taking it when that came earlier
        began = [t for t in (self._takenAt.get(delivery), message.firstTryTime) if t is not None]
        if began:
            self.metrics.finalAfter(outcome, self.reactor.seconds() - min(began))

    def _cancel(self, delivery: Delivery, message: Message, cancel: Control, now: float) -> Deferred[None]:
        """
        End C{message} as an operator's cancel says: a final
        C{process}/C{cancelled} result naming who and why, and no delivery
        status notification (the sender's system learns it from the result).
        """
        description = f"cancelled by {cancel.by} ({cancel.selector}): {cancel.reason}"
        self.log.info(
            "{message} to {recipient} {description}",
            message=message.label,
            recipient=message.recipient,
            description=description,
        )
        message.record(ResultEntry("process", "cancelled", now, True, description=description))
        return self._finish(delivery, message, success=False, report=False)

    def _publishWithReport(
        self,
        delivery: Delivery,
        message: Message,
        publications: list[tuple[str, bytes]],
        action: str,
        now: float,
        willRetryUntil: float | None = None,
    ) -> Deferred[None]:
        """
        L{_publishThenAck} C{publications} and the delivery status
        notification of C{action} on C{message} to its DSN queue, when one
        is due (L{bounceJob}): confirmed like the results before the outbox
        message is acknowledged, so no report is lost.  The report of a big
        message is built in a thread.

        @return: a Deferred firing as L{_publishThenAck}'s.
        """
        queue = message.queueFor("dsn", self.config.dsnQueue)
        if not queue or not notifies(message, action, self.bounceSettings):
            return self._publishThenAck(delivery, message.label, publications, message.priority)
        build = partial(bounceJob, message, action, now, self.bounceSettings, willRetryUntil=willRetryUntil)
        if len(message.mime) > _REPORT_ON_THE_REACTOR:
            built: Deferred[bytes | None] = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), build)
        else:
            built = maybeDeferred(build)

        def withReport(job: bytes | None) -> list[tuple[str, bytes]]:
            return publications + [(queue, job)] if job is not None else publications

        def withoutReport(failure: Failure) -> list[tuple[str, bytes]] | Failure:
            if failure.check(CancelledError):
                return failure
            # a bug in the report must not cost the message its result
            self.log.failure(
                "could not build the {action} report of {message} for its sender; it is not sent",
                failure,
                action=action,
                message=message.label,
            )
            return publications

        def publish(everything: list[tuple[str, bytes]]) -> Deferred[None]:
            return self._publishThenAck(delivery, message.label, everything, message.priority)

        chosen: Deferred[list[tuple[str, bytes]]] = built.addCallbacks(withReport, withoutReport)
        return chosen.addCallback(publish)

    def _park(self, delivery: Delivery, message: Message, delay: float) -> Deferred[None]:
        self.log.debug(
            "{message} waits {delay:.0f}s for its next attempt",
            message=message.label,
            delay=delay,
        )
        publications = [self._toDelayQueue(message, self.schedule.bucketFor(delay))]
        self.metrics.concluded("waiting", "process", "nextattempt")
        return self._publishThenAck(delivery, message.label, publications, message.priority)

    def _toDelayQueue(self, message: Message, bucket: int) -> tuple[str, bytes]:
        return self.schedule.delayQueueName(bucket), message.outboxJSON()

    def _publishInvalid(self, delivery: Delivery, failure: InvalidMessage, now: float) -> Deferred[None]:
        limits = self.parseSettings.limits
        obj = readJob(delivery.body, limits)
        self.log.warn(
            "refused outbox message {message}: {description}",
            message=self._labelOf(delivery.body, obj),
            description=failure.description,
        )
        body = invalidResultJSON(delivery.body, failure, now, limits)
        self.metrics.concluded("invalid", failure.state, failure.result)
        publications = self._resultPublications(obj, body, success=False)
        return self._publishThenAck(delivery, "an invalid message", publications, None)

    def _publishThenAck(
        self,
        delivery: Delivery,
        label: str,
        publications: list[tuple[str, bytes]],
        priority: int | None,
    ) -> Deferred[None]:
        """
        @param priority: the AMQP priority of the publications: the job's
            C{priority}; C{None} for the one the outbox message came with
            (none, or the sender's), so that a job keeps its place in a
            priority outbox however it comes back to it.
        @return: a Deferred firing once every publication is confirmed and
            the outbox message acknowledged, or, when one is not, once the
            message went back to the outbox.
        """
        if priority is None:
            priority = delivery.priority
        if not delivery.current:
            # the broker already took the message back and hands it out again
            self.log.info(
                "not publishing results of {message}: its outbox connection is gone",
                message=label,
            )
            return succeed(None)
        confirmed: list[Deferred[None]] = []
        try:
            for queue, body in publications:
                confirmed.append(self.publisher.publish(queue, body, priority=priority))
        except Exception:
            self._unconfirmed(Failure(), delivery, label, confirmed)
            return succeed(None)
        # most often one publication: no list of Deferreds to wait on
        allConfirmed = confirmed[0] if len(confirmed) == 1 else gatherResults(confirmed, consumeErrors=True)
        return allConfirmed.addCallbacks(
            lambda _: delivery.ack(), self._unconfirmed, errbackArgs=(delivery, label, confirmed)
        )

    def _unconfirmed(
        self, failure: Failure, delivery: Delivery, label: str, confirmed: list[Deferred[None]]
    ) -> None:
        for publication in confirmed:
            # the other outcomes no longer matter
            publication.addErrback(lambda _: None)
        error = failure.value
        if isinstance(error, FirstError):
            # one of several publications: gatherResults wraps its failure
            error = error.subFailure.value
        if isinstance(error, CancelledError):
            reason = "the service stopped before the broker confirmed them"
        else:
            reason = str(error) or type(error).__name__
        self._countSettleFailure(delivery, reason)
        delivery.release()
        # a lost connection or a stop fails every pending confirm at once:
        # one warning for them all, not one per message
        if not self._unconfirmedLabels:
            self.reactor.callLater(0, self._logUnconfirmed)
        self._unconfirmedLabels.setdefault(reason, []).append(label)

    def _countSettleFailure(self, delivery: Delivery, reason: str) -> None:
        key = self.journal.keyOf(delivery.body)
        failures, _ = self._settleFailures.pop(key, (0, ""))
        self._settleFailures[key] = (failures + 1, reason)
        if len(self._settleFailures) > _REMEMBERED_FAILURES:
            self._settleFailures.popitem(last=False)

    def _logUnconfirmed(self) -> None:
        gathered, self._unconfirmedLabels = self._unconfirmedLabels, {}
        for reason, messages in gathered.items():
            self.log.warn(
                "results of {count} message(s) were not confirmed ({error}): {shown}; "
                "they go back to the outbox and will be tried again",
                count=len(messages),
                messages=messages,
                shown=labelsShown(messages),
                error=reason,
            )


#: the outcome of a final result that is neither a delivery nor a failure
_FINAL_OUTCOMES = {("process", "timeout"): "expired", ("process", "cancelled"): "cancelled"}


def _lastOutcome(message: Message) -> str:
    """
    What the message's last result entry says, for its expiry: the reply
    of its last attempt, or why it was last deferred; C{""} without one.
    """
    if not message.results:
        return ""
    entry = message.results[-1]
    if entry.get("result") == "deferred":
        return f"deferral: {entry.get('description', '')}"
    parts = [f"{entry.get('state')}/{entry.get('result')}"]
    parts += [str(entry[key]) for key in ("code", "status", "description") if entry.get(key)]
    return "attempt: " + " ".join(parts)

