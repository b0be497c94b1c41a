"""
The delivery core: one message in, one result entry out.

Nothing here knows about AMQP.  L{DeliveryEngine.deliver} routes a message,
asks the delivery policy (L{mqtwist.delivery.policy}) for leave to send to its
destination, takes a connection from the pool, runs the transaction with the
data plugins and says what happened, so any Twisted program can send mail
with it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, ensureDeferred, succeed
from twisted.internet.error import ConnectingCancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtwist.admin.controls import Controls
from mqtwist.content.message import Message, ResultEntry
from mqtwist.dataplugin.chain import PluginChain
from mqtwist.delivery.deferrallog import DeferralLog
from mqtwist.delivery.policy import Backoff, Deferral, DeliveryPolicy, DestinationState, Permit
from mqtwist.delivery.routing import Route, Router
from mqtwist.delivery.transaction import TransactionFailed, sendThroughPool
from mqtwist.errors import AttemptFailed
from mqtwist.messagestore.loader import StoredMessages, noStore
from mqtwist.metrics import Metrics, ServerFigures
from mqtwist.smtp.pool import ConnectionPool, Destination
from mqtwist.smtp.protocol import ESMTPClient
from mqtwist.timeformat import formatTime

#: what a cancelled delivery fails with: cancelled while it waited, or
#: while it was connecting
_CANCELLED = (CancelledError, ConnectingCancelledError)


@dataclass
class ScheduledEntry(ResultEntry):
    """
    A result entry that names the time of the next attempt itself, instead
    of the retry schedule: a deferral by the delivery policy (state
    C{process}, result C{deferred}: no attempt was made) or a failure whose
    reply asked for a particular wait (greylisting).

    @ivar retryAt: POSIX time of the next attempt.
    @ivar held: an operator's pause holds the message back: it waits in
        the held queue until a pause ends, whatever C{retryAt} says.
    """

    retryAt: float = 0.0
    held: bool = False


#: destinations whose last reply the engine keeps, the most recent
_LAST_REPLIES = 10_000


class DeliveryEngine:
    """
    Routes and sends messages over pooled SMTP connections, within the
    limits of the delivery policy and at most C{concurrency} at once.
    L{mqtwist.service.deliveryEngine} makes one from the configuration.

    @param router: finds the servers of each message.
    @param policy: admits, defers and backs off deliveries by destination;
        it counts the connections of C{pool}.
    @param pool: the SMTP connections, by destination.
    @param chain: the data plugins, run on every body.
    @param deferrals: where the deferrals made are reported.
    @param concurrency: deliveries in progress at once.
    @param parkDelayMax: the longest a deferred message is parked, seconds.
    @param store: the external message store that C{key} jobs are loaded
        from; without one they fail (L{noStore}).
    @param metrics: where attempts, parks, throttle waits and pauses are
        counted; the engine also reports the present to it (L{watch}).
    @param controls: the operators' pauses, asked before each attempt.
    """

    log = Logger()

    def __init__(
        self,
        router: Router,
        policy: DeliveryPolicy,
        pool: ConnectionPool,
        chain: PluginChain,
        deferrals: DeferralLog,
        *,
        concurrency: int,
        parkDelayMax: float,
        reactor: Any,
        store: StoredMessages | None = None,
        metrics: Metrics | None = None,
        controls: Controls | None = None,
    ) -> None:
        self.reactor = reactor
        self.router = router
        self.policy = policy
        self.pool = pool
        self.chain = chain
        self.deferrals = deferrals
        # waiting for a destination holds no slot: slots are for sending
        self.slots = DeferredSemaphore(concurrency)
        self.parkDelayMax = parkDelayMax
        self.store = store
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.watch(self)
        self.controls = controls if controls is not None else Controls(reactor)
        #: the last reply of each destination, for the admin API
        self.lastReplies: OrderedDict[str, str] = OrderedDict()

    def deliver(self, message: Message) -> Deferred[ResultEntry]:
        """
        Make one delivery attempt for C{message}.

        @return: a Deferred firing with the L{ResultEntry} of the attempt,
            accepted or not (C{final} tells a permanent failure from one to
            retry); a L{ScheduledEntry} when the destination could not take
            the message now (paused, down or busy beyond its backlog: no
            attempt was made) or the reply asked for a particular wait.  It
            does not fail for delivery problems.  Cancelling it stops the
            attempt: it fails with C{CancelledError}, or
            C{ConnectingCancelledError} while connecting, and the engine's
            slot and the destination's permit it held go to the deliveries
            that wait for them on the next reactor turn.
        """
        if message.storeKey is not None and self.store is None:
            return succeed(self._failed(message, noStore(message)))
        # a deferral (the most common answer for a stuck destination's
        # messages) is decided without a coroutine or a raised exception
        attempt = self.router.route(message).addCallbacks(
            self._admit, self._unroutable, callbackArgs=(message,), errbackArgs=(message,)
        )
        if message.storeKey is not None:
            attempt.addCallback(self._storedAttemptEnded, message)
        return attempt

    def _storedAttemptEnded(self, entry: ResultEntry, message: Message) -> ResultEntry:
        """
        Remove the stored message of a C{key} job that has ended: delivered,
        or failed for good (not by a storage failure: then nothing is there,
        or the store is down).
        """
        assert self.store is not None
        if entry.final and entry.state != "storage":
            self.store.ended(message)
        return entry

    def _unroutable(self, failure: Failure, message: Message) -> ResultEntry:
        failure.trap(AttemptFailed)
        assert isinstance(failure.value, AttemptFailed)
        return self._failed(message, failure.value)

    def _admit(self, route: Route, message: Message) -> ResultEntry | Deferred[ResultEntry]:
        held = self._heldByOperator(route, message)
        if held is not None:
            return held
        admission = self.policy.admitNow(route)
        if isinstance(admission, Deferral):
            return self._deferred(message, admission)
        if isinstance(admission, Permit):
            return self._admitted(admission, message, route)
        self.metrics.throttled(self.policy.destinationOf(route)[0])
        return admission.addCallbacks(
            self._admitted, self._turnedAway, callbackArgs=(message, route), errbackArgs=(message,)
        )

    def _heldByOperator(self, route: Route, message: Message) -> ScheduledEntry | None:
        """
        The entry of a message that an operator's pause holds back: no
        attempt, and the message waits in the held queue until a pause
        ends; C{None} when no pause matches it.
        """
        if not self.controls.pausing:
            return None
        destination = self.policy.destinationOf(route)[0]
        bind = route.destination.bindAddress
        pause = self.controls.pauseFor(
            destination=destination, domain=route.domain, mtas=(bind,) if bind else (), tags=message.tags
        )
        if pause is None:
            return None
        reason = f"paused by {pause.by} ({pause.selector}): {pause.reason}"
        self.metrics.held(destination)
        connection: dict[str, Any] = {"destination": destination, "reason": reason, "held": True}
        if math.isfinite(pause.until):
            connection["until"] = formatTime(pause.until)
        return ScheduledEntry(
            state="process",
            result="deferred",
            time=self.reactor.seconds(),
            final=False,
            description=f"not tried: destination {destination} {reason}",
            connection=connection,
            retryAt=pause.until,
            held=True,
        )

    def _turnedAway(self, failure: Failure, message: Message) -> ScheduledEntry | Failure:
        # not Failure.trap: it names every class of the exception's MRO
        if not isinstance(failure.value, Deferral):
            return failure
        return self._deferred(message, failure.value)

    def _admitted(self, permit: Permit, message: Message, route: Route) -> Deferred[ResultEntry]:
        return ensureDeferred(self._deliverAdmitted(message, route, permit))

    async def _deliverAdmitted(self, message: Message, route: Route, permit: Permit) -> ResultEntry:
        permitHeld = True
        slotHeld = False

        def releaseConnection(client: ESMTPClient, clean: bool) -> None:
            # the permit is for the connection, not for the wait for the
            # body's reply: with PIPELINING the next message goes out now
            nonlocal permitHeld
            permitHeld = False
            self._release(client, permit, clean, route.destination)

        def giveBack() -> None:
            if slotHeld:
                self.slots.release()
            if permitHeld:
                self.policy.release(permit)

        cancelled = False
        try:
            await self.slots.acquire()
            slotHeld = True
            return await ensureDeferred(self._send(message, route, permit, releaseConnection))
        except _CANCELLED:
            cancelled = True
            raise
        finally:
            if cancelled:
                # a stop cancels every delivery in flight one after another
                # within one call: handed over now, the slot or permit would
                # start a delivery that waits for it (a new connection) just
                # before its own cancel; by the next turn those are gone
                self.reactor.callLater(0, giveBack)
            else:
                giveBack()

    async def _send(
        self,
        message: Message,
        route: Route,
        permit: Permit,
        release: Callable[[ESMTPClient, bool], None],
    ) -> ResultEntry:
        self.metrics.attempted(permit.destination)
        try:
            sent = await sendThroughPool(
                self.pool, route.destination, message, self.chain, release=release, store=self.store
            )
        except TransactionFailed as failure:
            # the server answered, so the destination is up; but a reply
            # that pauses it must do so before a probe that succeeded lets
            # the messages waiting for it go
            category = self.policy.categories.ofFailure(failure)
            backoff = self.policy.failed(permit, failure, category)
            self.policy.succeeded(permit)
            self._noteReply(permit.destination, failure.code, failure.description)
            return self._failed(message, failure, failure.facts, backoff, category)
        except AttemptFailed as failure:
            category = self.policy.categories.ofFailure(failure)
            backoff = self.policy.failed(permit, failure, category)
            self._noteReply(permit.destination, failure.code, failure.description)
            return self._failed(message, failure, backoff=backoff, category=category)
        self.policy.succeeded(permit)
        reply = sent.reply
        self._noteReply(permit.destination, reply.code, reply.text)
        self.log.info(
            "delivered {message} to {recipient} via {host} ({address}): {code} {text}",
            message=message.label,
            recipient=message.recipient,
            host=sent.client.serverName or sent.client.remoteAddress,
            address=sent.client.remoteAddress,
            mta=sent.client.mta,
            code=reply.code,
            text=reply.text,
        )
        return ResultEntry(
            state="message",
            result="accepted",
            time=self.reactor.seconds(),
            final=True,
            code=reply.code,
            status=reply.status,
            description=reply.text,
            connection=sent.facts,
        )

    def _noteReply(self, destination: str, code: int | None, text: str) -> None:
        if code is None:
            return
        self.lastReplies[destination] = f"{code} {text}"
        self.lastReplies.move_to_end(destination)
        if len(self.lastReplies) > _LAST_REPLIES:
            self.lastReplies.popitem(last=False)

    def _release(self, client: ESMTPClient, permit: Permit, clean: bool, destination: Destination) -> None:
        """
        Give a connection back to the pool, and the permit back to the
        policy: at once, or, for a connection being closed, once it is
        closed (it counts against its destination until then).
        """
        fewer = self.policy.fewerConnectionsSince(permit)
        if client.messages >= permit.messagesPerConnection or (
            fewer is not None and self.pool.openConnections(destination) > fewer
        ):
            # the destination's own limits, below the pool's (a reply or a
            # new member of the cluster may have lowered them since the
            # delivery began): the pool closes it
            client.quit()
        self.pool.release(client, clean=clean)
        if client.usable:
            self.policy.release(permit)
        else:
            client.whenClosed().addBoth(lambda _: self.policy.release(permit))

    def _failed(
        self,
        message: Message,
        failure: AttemptFailed,
        facts: dict[str, Any] | None = None,
        backoff: Backoff | None = None,
        category: str | None = None,
    ) -> ResultEntry:
        if category is None:
            category = self.policy.categories.ofFailure(failure)
        reply = f", {failure.code}" if failure.code is not None else ""
        if failure.status:
            reply += f" {failure.status}"
        self.log.info(
            "attempt for {message} to {recipient} failed at {state}/{result} ({kind}{reply}, {category}): "
            "{description}",
            message=message.label,
            recipient=message.recipient,
            state=failure.state,
            kind="permanent" if failure.permanent else "temporary",
            reply=reply,
            result=failure.result,
            code=failure.code,
            status=failure.status,
            description=failure.description,
            permanent=failure.permanent,
            category=category,
        )
        entry = ResultEntry.fromFailure(failure, self.reactor.seconds(), facts, category)
        self.metrics.attemptFailed(category)
        if backoff is not None and backoff.action != "retry":
            self.metrics.paused(backoff.destination, backoff.action)
        if backoff is not None:
            entry.connection.update(backoff.entryFields())
            if backoff.action == "retry" and not entry.final:
                return ScheduledEntry(**vars(entry), retryAt=backoff.until)
        return entry

    def _deferred(self, message: Message, deferral: Deferral) -> ScheduledEntry:
        until = deferral.until
        inRow = message.deferralsInRow
        if inRow:
            # parked again and again: wait twice as long each time, so that
            # a destination that stays stuck does not cost a park per
            # message every few seconds
            now = self.reactor.seconds()
            wait = min((until - now) * 2 ** min(inRow, 32), self.parkDelayMax)
            until = max(until, now + wait)
        self.deferrals.deferred(message.label, deferral.destination, deferral.reason, until)
        self.metrics.parked(deferral.destination)
        return ScheduledEntry(
            state="process",
            result="deferred",
            time=self.reactor.seconds(),
            final=False,
            description=f"not tried: destination {deferral.destination} {deferral.reason}",
            category=deferral.category,
            connection={
                "destination": deferral.destination,
                "reason": deferral.reason,
                "until": formatTime(until),
            },
            retryAt=until,
        )

    # -- the present, for metrics and the admin API ----------------------------

    def destinationFigures(self) -> list[DestinationState]:
        """The destinations the policy knows now."""
        return self.policy.destinationStates()

    def serverFigures(self) -> list[ServerFigures]:
        """The servers with pooled connections."""
        return self.pool.serverFigures()

    def bodyBytesSent(self) -> int:
        """Message bytes written in DATA since the start."""
        return self.pool.bodyBytesSent()

    def close(self) -> Deferred[None]:
        """
        Close the pooled SMTP connections (QUIT).

        @return: a Deferred firing when all are closed.
        """
        self.policy.close()
        self.deferrals.close()
        self.router.close()
        closed = self.pool.closeAll()
        if self.store is not None:
            # after the SMTP connections: a load may still be cancelled
            store = self.store
            closed.addCallback(lambda _: store.close())
        return closed
