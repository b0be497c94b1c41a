"""
The delivery policy of one process: which destination a message belongs to,
how many deliveries to it may run at once and how fast, and when it is
paused, slowed down or marked down.

A I{destination} here is a throttle group and a local address: the domains
a C{[[throttles]]} rule matches (by domain or by mail exchanger name), or,
without a rule, every domain with the same mail exchangers (MX rollup), so
that one mailbox provider gets one set of limits however many domains it
hosts.  A delivery starts only with a L{Permit} from L{DeliveryPolicy.admit}
(a Deferred) or L{DeliveryPolicy.admitNow} (an answer without one when it
can: the delivery engine's way); a destination that cannot take it now
lets a few messages wait in the
process (its backlog) and turns the rest away with a L{Deferral}, so the
caller can park them outside the process and one slow destination never
holds the messages of the others.

Several processes of one outbox (L{mqtwist.cluster}) share the limits: each
takes its share of every limit among the live members (L{setMembers}), and
the pauses, marks and reductions that replies cause in one are applied in
all (L{onBackoff}, L{applyShared}).  Alone, a process has the whole limits.
"""

from __future__ import annotations

import dataclasses
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from mqtwist.cluster.control import SharedBackoff
from mqtwist.cluster.members import rateShareOf, shareOf
from mqtwist.config import BackoffRule, Config, ThrottleRule
from mqtwist.delivery.categories import Categories
from mqtwist.delivery.routing import SWEEP_INTERVAL, Route
from mqtwist.errors import AttemptFailed
from mqtwist.smtp.pool import Destination
from mqtwist.timeformat import formatTime
from mqtwist.validation import shownName

#: the steps whose failure means the destination's servers could not be
#: talked to (as opposed to refusing one message)
CONNECTION_STATES = frozenset({"connect", "intro", "ehlo", "helo", "starttls"})


def builtinBackoff(greylistDelay: float) -> tuple[BackoffRule, ...]:
    """
    The backoff rules that apply after the configured ones.
    """
    return (
        # greylisting: the next attempt is due in minutes, not on the long schedule
        BackoffRule("retry", greylistDelay, code=r"^45[01]$", text=r"gr[ae]y.?list"),
        BackoffRule(
            "reduce",
            600,
            code=r"^4",
            text=r"too many (concurrent |simultaneous )?(connections|sessions)",
            connections=1,
        ),
        BackoffRule("pause", 300, code=r"^4", status=r"^4\.7\.", text=r"rate|limit|too many|throttl"),
        BackoffRule("pause", 60, code=r"^421$"),
    )


class Deferral(Exception):
    """
    The destination cannot take the message now; park it until C{until}.

    @ivar destination: the destination's name.
    @ivar reason: why, for logs and result entries.
    @ivar until: POSIX time from which the destination may take it.
    @ivar category: the bounce category of the failure that paused the
        destination or marked it down; C{None} when it is busy.
    """

    def __init__(self, destination: str, reason: str, until: float, category: str | None = None) -> None:
        super().__init__(destination, reason, until)
        self.destination = destination
        self.reason = reason
        self.until = until
        self.category = category

    def __str__(self) -> str:
        return f"{self.destination}: {self.reason}, until {formatTime(self.until)}"


@dataclass
class Backoff:
    """
    What a reply made of its destination (or of its message).

    @ivar action: C{"pause"}, C{"reduce"}, C{"retry"} or C{"down"}.
    @ivar until: when it ends.
    """

    destination: str
    action: str
    until: float

    def entryFields(self) -> dict[str, Any]:
        """The fields it adds to the attempt's result entry."""
        return {"destination": self.destination, "backoff": self.action, "until": formatTime(self.until)}


class TokenBucket:
    """
    At most C{perMinute} events a minute, in bursts of at most a second's
    worth (at least one).
    """

    def __init__(self, perMinute: float, now: float) -> None:
        self.rate = perMinute / 60.0
        self.capacity = max(1.0, self.rate)
        self.tokens = self.capacity
        self.last = now

    def setRate(self, perMinute: float, now: float) -> None:
        """Change the rate from C{now} on, keeping what was spent."""
        self._refill(now)
        self.rate = perMinute / 60.0
        self.capacity = max(1.0, self.rate)
        self.tokens = min(self.tokens, self.capacity)

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now

    def wait(self, now: float) -> float:
        """Seconds until one event is allowed (0 when it is now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.capacity


@dataclass(frozen=True)
class Limits:
    """
    The limits of one destination in this process (its share of them, in a
    cluster); 0 per minute means no limit.
    """

    connections: int
    messagesPerConnection: int
    messagesPerMinute: float
    connectionsPerMinute: float


@dataclass
class _State:
    """What the process knows of one destination."""

    name: str
    limits: Limits
    messages: TokenBucket | None
    connections: TokenBucket | None
    #: the throttle rule that gave the limits (their share is taken again
    #: when the members of the cluster change)
    rule: ThrottleRule | None = None
    active: int = 0
    waiters: deque[tuple[Deferred[Permit], Destination]] = field(default_factory=deque)
    timer: IDelayedCall | None = None
    stuckCheck: IDelayedCall | None = None
    pausedUntil: float = 0.0
    pauseReason: str = ""
    pauseCategory: str | None = None
    #: C{pause} or C{down}: what made the pause
    pauseAction: str = "pause"
    #: the connections a reply reduced the destination to, in this
    #: process (its share of the reduction, in a cluster)
    reducedTo: int = 0
    reducedTotal: int = 0
    reducedUntil: float = 0.0
    failuresInRow: int = 0
    #: when a delivery to it last ended, and when the deliveries running
    #: now began to run without a pause
    lastDone: float = float("-inf")
    busySince: float = float("-inf")
    #: the policy's count of ended deliveries (to every destination) when
    #: one to this destination last ended or it became busy, whichever came
    #: later: what other destinations ended since is the difference
    endedMark: int = 0
    #: a pause ended and no delivery reached the server since: one at a
    #: time until one does, instead of every message that waited for the
    #: pause at once, each counting an attempt
    probing: bool = False

    def allowedAtOnce(self, now: float) -> int:
        if self.probing:
            return 1
        return self.connectionsAllowed(now)

    def connectionsAllowed(self, now: float) -> int:
        """The connections it may have: its limit, or less while reduced."""
        if self.reducedUntil > now:
            return min(self.reducedTo, self.limits.connections)
        return self.limits.connections


@dataclass(frozen=True)
class DestinationState:
    """
    What the policy knows of one destination now, for metrics and the
    admin API.

    @ivar pausedUntil: the end of a pause caused by a reply or by failed
        connections (C{None}: not paused).
    """

    destination: str
    inFlight: int
    waiting: int
    limits: Limits
    pausedUntil: float | None
    pauseReason: str


@dataclass(frozen=True)
class Permit:
    """
    Leave to make one delivery to C{destination}; give it back with
    L{DeliveryPolicy.release}.
    """

    destination: str
    messagesPerConnection: int
    _state: _State = field(repr=False, compare=False)
    #: the connections the destination could have when it was given
    allowed: int = 0


def _perMinute(rate: float) -> str:
    return f"{rate:.4g}" if rate else "any"


def mostConnections(config: Config) -> int:
    """
    The highest C{connections} limit of any destination: how many
    connections the pool may hold to one.
    """
    return max([config.maxConnectionsPerDestination] + [rule.connections or 0 for rule in config.throttles])


class DeliveryPolicy:
    """
    Throttles and backoff for the destinations of one process.

    @param openConnections: how many pooled connections a L{Destination}
        has (idle, in use or opening); a delivery that finds each of them
        taken by a delivery in progress opens one, and needs a token of
        C{connectionsPerMinute}.
    """

    log = Logger()

    def __init__(self, config: Config, reactor: Any, openConnections: Callable[[Destination], int]) -> None:
        self.config = config
        self.reactor = reactor
        self.openConnections = openConnections
        self.rules: list[ThrottleRule] = list(config.throttles)
        self.backoff: list[BackoffRule] = list(config.backoff) + list(builtinBackoff(config.greylistDelay))
        #: the bounce categories of failures, which backoff rules may name
        self.categories = Categories.fromConfig(config)
        self._states: dict[str, _State] = {}
        #: deliveries ended, to every destination
        self._ended = 0
        #: the destinations that got more messages waiting than their
        #: backlog, by name: each delivery that ends may find them stuck (one
        #: whose waiters went otherwise, by a pause or a cancel, stays listed
        #: until the next ends)
        self._overBacklog: dict[str, _State] = {}
        #: when L{_dropForgettable} next looks through the table
        self._nextSweep = float("-inf")
        #: the live members of the cluster and this one's name (none:
        #: alone, with the whole limits), and whether they are known yet
        self._members: tuple[str, ...] = ()
        self._me = ""
        self._settled = True
        #: told of each pause, mark or reduction a reply causes here
        self.onBackoff: Callable[[SharedBackoff], None] | None = None
        #: what other members said of destinations this one has no state
        #: for (yet), with when it ends
        self._shared: dict[str, tuple[SharedBackoff, float]] = {}

    # -- grouping ----------------------------------------------------------

    def destinationOf(self, route: Route) -> tuple[str, ThrottleRule | None]:
        """
        The name of C{route}'s destination and the throttle rule that
        applies to it, if one does.
        """
        ip = route.destination.bindAddress or ""
        # a message's ips entry that is no address is named by an excerpt
        suffix = f" from {shownName(ip)}" if ip else ""
        for rule in self.rules:
            if rule.ip is not None and not fnmatchcase(ip, rule.ip):
                continue
            if rule.domain is not None and fnmatchcase(route.domain, rule.domain.lower()):
                return f"domain {rule.domain}{suffix}", rule
            if rule.mx is not None and any(fnmatchcase(name, rule.mx.lower()) for name in route.exchangers):
                return f"mx {rule.mx}{suffix}", rule
        if route.exchangers:
            return f"mx {','.join(sorted(route.exchangers))}{suffix}", None
        return f"{route.name}{suffix}", None

    def _stateFor(self, route: Route) -> _State:
        name, rule = self.destinationOf(route)
        state = self._states.get(name)
        if state is None:
            limits = self._limits(rule)
            now = self.reactor.seconds()
            self._dropForgettable(now)
            state = _State(
                name,
                limits,
                TokenBucket(limits.messagesPerMinute, now) if limits.messagesPerMinute else None,
                TokenBucket(limits.connectionsPerMinute, now) if limits.connectionsPerMinute else None,
                rule=rule,
                endedMark=self._ended,
            )
            self._states[name] = state
            told = self._shared.pop(name, None)
            if told is not None and told[1] > now:
                self._applyShared(state, told[0], told[1])
        return state

    def _limits(self, rule: ThrottleRule | None) -> Limits:
        def pick(ruleValue: int | None, default: int) -> int:
            return default if ruleValue is None else ruleValue

        config = self.config
        if rule is None:
            rule = ThrottleRule(domain="*")
        return Limits(
            connections=self._share(pick(rule.connections, config.maxConnectionsPerDestination)),
            messagesPerConnection=pick(rule.messagesPerConnection, config.maxMessagesPerConnection),
            messagesPerMinute=self._rateShare(pick(rule.messagesPerMinute, config.messagesPerMinute)),
            connectionsPerMinute=self._rateShare(pick(rule.connectionsPerMinute, config.connectionsPerMinute)),
        )

    def _share(self, limit: int) -> int:
        return shareOf(limit, self._members, self._me) if self._members else limit

    def _rateShare(self, perMinute: float) -> float:
        return rateShareOf(perMinute, self._members) if self._members else perMinute

    # -- the cluster -----------------------------------------------------------

    def holdUntilSettled(self) -> None:
        """
        Start no delivery until L{setMembers} says who the members are:
        a process that joins a cluster would take the whole of every limit
        until then.
        """
        self._settled = False

    def setMembers(self, members: tuple[str, ...], me: str) -> None:
        """
        The live members of the cluster are C{members}, this process
        among them as C{me}: take this process's share of every limit
        again, and start what the new shares allow.
        """
        self._members, self._me, self._settled = members, me, True
        now = self.reactor.seconds()
        for state in list(self._states.values()):
            state.limits = limits = self._limits(state.rule)
            state.messages = self._rebucket(state.messages, limits.messagesPerMinute, now)
            state.connections = self._rebucket(state.connections, limits.connectionsPerMinute, now)
            if state.reducedTotal:
                state.reducedTo = self._share(state.reducedTotal)
        for state in list(self._states.values()):
            self._serve(state)

    @staticmethod
    def _rebucket(bucket: TokenBucket | None, perMinute: float, now: float) -> TokenBucket | None:
        if not perMinute:
            return None
        if bucket is None:
            return TokenBucket(perMinute, now)
        bucket.setRate(perMinute, now)
        return bucket

    def applyShared(self, backoff: SharedBackoff) -> None:
        """
        Apply what a reply made of a destination in another member: pause
        it, mark it down or reduce its connections here too, for the same
        time from now.
        """
        until = self.reactor.seconds() + backoff.seconds
        state = self._states.get(backoff.destination)
        if state is None:
            # applied when this process first has a message for it
            known = self._shared.get(backoff.destination)
            if known is None or known[1] < until:
                self._shared[backoff.destination] = (backoff, until)
                self.log.warn(
                    "destination {destination} {action} until {until}: {reason} (at {member})",
                    destination=backoff.destination,
                    action={"pause": "paused", "down": "marked down"}.get(backoff.action, "reduced"),
                    until=formatTime(until),
                    reason=backoff.reason,
                    member=backoff.member,
                )
            return
        self._applyShared(state, backoff, until)

    def _applyShared(self, state: _State, backoff: SharedBackoff, until: float) -> None:
        told = f"{backoff.reason} (at {backoff.member})"
        if backoff.action == "reduce":
            assert backoff.connections is not None
            self._reduce(state, backoff.connections, until, told, shared=True)
        else:
            self._pause(state, backoff.action, told, until, backoff.category or "", shared=True)

    # -- admission -----------------------------------------------------------

    def admit(self, route: Route) -> Deferred[Permit]:
        """
        Ask to deliver to C{route}'s destination.

        @return: a Deferred firing with a L{Permit} now, or later when the
            message waits in the destination's backlog.  It errbacks with a
            L{Deferral} when the destination is paused or down, or its
            backlog is full, or it becomes paused while the message waits.
        """
        admission = self.admitNow(route)
        if isinstance(admission, Permit):
            return succeed(admission)
        if isinstance(admission, Deferral):
            return fail(admission)
        return admission

    def admitNow(self, route: Route) -> Permit | Deferral | Deferred[Permit]:
        """
        L{admit}, answering without a Deferred when it can: a stuck
        destination's messages are turned away by the thousand, and each
        Deferred and failure costs time that the other destinations need.

        @return: a L{Permit} when the delivery may start now; a L{Deferral}
            when the destination cannot take the message; or, when the
            message waits in the destination's backlog, a Deferred that
            fires with a L{Permit} or errbacks with a L{Deferral} later.
        """
        state = self._stateFor(route)
        now = self.reactor.seconds()
        if state.pausedUntil > now:
            return Deferral(state.name, state.pauseReason, state.pausedUntil, state.pauseCategory)
        if state.pausedUntil:
            self._pauseEnded(state)
        if not state.waiters and self._wait(state, route.destination, now) == 0:
            return self._start(state, route.destination, now)
        if len(state.waiters) >= self.config.destinationBacklog:
            stuck = self._stuckReason(state, now)
            if stuck:
                # those that waited while it was not yet found stuck go too
                return self._turnAwayExcess(state, now, stuck)
        waiter: Deferred[Permit] = Deferred(lambda d: self._forget(state, d))
        state.waiters.append((waiter, route.destination))
        if len(state.waiters) > self.config.destinationBacklog:
            self._overBacklog[state.name] = state
            if state.stuckCheck is None:
                state.stuckCheck = self.reactor.callLater(self.config.stuckAfter, self._checkStuck, state)
        self._serve(state)
        return waiter

    def _pauseEnded(self, state: _State) -> None:
        state.pausedUntil = 0.0
        state.probing = True
        self.log.info(
            "destination {destination}: its pause is over; one delivery at a time until one "
            "reaches the server",
            destination=state.name,
        )

    def _stuckReason(self, state: _State, now: float) -> str:
        """
        What makes C{state} stuck, or C{""} while it is not: no delivery to
        it ended for a while, or none while many to other destinations did.
        A destination that moves does not hold its waiting messages for
        long; one that is stuck would hold them (and the outbox) for as long
        as its time-outs, and one much slower than the others, or held back
        by its own rate limit, would keep the outbox at its own pace.
        """
        if not self._settled:
            # it waits for the cluster's members to be known, not for a server
            return ""
        quiet = now - max(state.lastDone, state.busySince)
        if quiet >= self.config.stuckAfter:
            return f"nothing ended for {quiet:.1f}s"
        others = self._ended - state.endedMark
        if self.config.stuckAfterOthers and others >= self.config.stuckAfterOthers:
            return f"nothing ended while {others} deliveries to other destinations did"
        return ""

    def _busy(self, state: _State, now: float, stuck: str) -> Deferral:
        if state.active < state.allowedAtOnce(now):
            # the messages wait for the rate, not for a server that hangs
            reason = (
                f"held back by its rate limit of {_perMinute(state.limits.messagesPerMinute)} a minute "
                f"({_perMinute(state.limits.connectionsPerMinute)} new connections): "
                f"{len(state.waiters)} waiting, {stuck}"
            )
        else:
            reason = (
                f"busy: {state.active} deliveries in progress and {len(state.waiters)} waiting "
                f"(limits {state.allowedAtOnce(now)} at once, "
                f"{_perMinute(state.limits.messagesPerMinute)} a minute), {stuck}"
            )
        return Deferral(state.name, reason, now + self.config.parkDelay)

    def _checkStuck(self, state: _State) -> None:
        """
        Turn away the messages beyond the backlog of a destination that
        got stuck while they waited.
        """
        state.stuckCheck = None
        now = self.reactor.seconds()
        if len(state.waiters) <= self.config.destinationBacklog:
            return
        stuck = self._stuckReason(state, now)
        if not stuck:
            state.stuckCheck = self.reactor.callLater(self.config.stuckAfter, self._checkStuck, state)
            return
        self._turnAwayExcess(state, now, stuck)

    def _turnAwayExcess(self, state: _State, now: float, stuck: str) -> Deferral:
        """
        Turn away the messages beyond the backlog of C{state}, which is
        C{stuck}.

        @return: the L{Deferral} they were given.
        """
        self._overBacklog.pop(state.name, None)
        excess = []
        while len(state.waiters) > self.config.destinationBacklog:
            excess.append(state.waiters.pop()[0])
        deferral = self._busy(state, now, stuck)
        for waiter in reversed(excess):
            waiter.errback(Deferral(deferral.destination, deferral.reason, deferral.until))
        return deferral

    def release(self, permit: Permit) -> None:
        """
        Give back a L{Permit} after its delivery ended.
        """
        state = permit._state
        state.active -= 1
        now = state.lastDone = self.reactor.seconds()
        self._ended += 1
        state.endedMark = self._ended
        self._serve(state)
        self._dropIfForgettable(state)
        # while a destination's waiting messages fill the outbox window,
        # no more of its messages come to find it stuck: look here
        for other in list(self._overBacklog.values()):
            if self._overBacklog.get(other.name) is not other:
                # the errback of a message turned away just now dealt with it
                continue
            if len(other.waiters) <= self.config.destinationBacklog:
                del self._overBacklog[other.name]
                continue
            stuck = self._stuckReason(other, now)
            if stuck:
                self._turnAwayExcess(other, now, stuck)

    def fewerConnectionsSince(self, permit: Permit) -> int | None:
        """
        The connections the destination of C{permit} may have now, when
        that is fewer than when C{permit} was given (a reply reduced them,
        or a member joined the cluster): a connection given back beyond
        them is closed.  C{None} when they are not fewer.
        """
        allowed = permit._state.connectionsAllowed(self.reactor.seconds())
        return allowed if allowed < permit.allowed else None

    def _wait(self, state: _State, destination: Destination, now: float) -> float:
        """
        Seconds until a delivery to C{destination} may start: 0 for now,
        C{inf} when it waits for a running one to end.
        """
        if state.active >= state.allowedAtOnce(now) or not self._settled:
            return float("inf")
        wait = state.messages.wait(now) if state.messages is not None else 0.0
        if state.connections is not None and self._needsConnection(state, destination):
            wait = max(wait, state.connections.wait(now))
        return wait

    def _needsConnection(self, state: _State, destination: Destination) -> bool:
        """
        Whether the next delivery to C{destination} will open a connection:
        the deliveries in progress have (or will take) every one it has.
        Several started in one turn would otherwise all count on the same
        idle connection.
        """
        return state.active >= self.openConnections(destination)

    def _start(self, state: _State, destination: Destination, now: float) -> Permit:
        if state.connections is not None and self._needsConnection(state, destination):
            state.connections.take(now)
        if not state.active:
            state.busySince = now
            state.endedMark = self._ended
        state.active += 1
        if state.messages is not None:
            state.messages.take(now)
        return Permit(state.name, state.limits.messagesPerConnection, state, state.connectionsAllowed(now))

    def _serve(self, state: _State) -> None:
        """Start waiting deliveries while the limits allow."""
        if state.timer is not None and state.timer.active():
            state.timer.cancel()
        state.timer = None
        while state.waiters:
            now = self.reactor.seconds()
            waiter, destination = state.waiters[0]
            wait = self._wait(state, destination, now)
            if wait == float("inf"):
                return
            if wait > 0:
                state.timer = self.reactor.callLater(wait, self._serve, state)
                return
            state.waiters.popleft()
            waiter.callback(self._start(state, destination, now))

    def _forget(self, state: _State, waiter: Deferred[Permit]) -> None:
        state.waiters = deque(entry for entry in state.waiters if entry[0] is not waiter)

    def _turnAwayWaiters(self, state: _State, until: float) -> None:
        waiters, state.waiters = state.waiters, deque()
        for waiter, _ in waiters:
            waiter.errback(Deferral(state.name, state.pauseReason, until, state.pauseCategory))

    def _dropIfForgettable(self, state: _State) -> None:
        # keeps the table from growing with every destination ever seen
        if self._forgettable(state, self.reactor.seconds()) and self._states.get(state.name) is state:
            self._drop(state)

    def _forgettable(self, state: _State, now: float) -> bool:
        """
        Whether C{state} holds nothing that a new state would not: no
        delivery, waiter, pause, spent rate, or failure in a row or probe
        after a pause within C{--down-time} (older ones no longer say that
        it keeps failing).
        """
        return (
            state.active == 0
            and not state.waiters
            and state.pausedUntil <= now
            and state.reducedUntil <= now
            and (
                (state.failuresInRow == 0 and not state.probing)
                or now - state.lastDone >= self.config.downTime
            )
            and all(bucket is None or bucket.full(now) for bucket in (state.messages, state.connections))
        )

    def _drop(self, state: _State) -> None:
        del self._states[state.name]
        for timer in (state.timer, state.stuckCheck):
            if timer is not None and timer.active():
                timer.cancel()

    def _dropForgettable(self, now: float) -> None:
        """
        Forget every destination that L{_forgettable} allows, at most once
        a minute: one is looked at when its delivery ends, but a rate
        limit's bucket is not full again yet then, nor a pause over.
        """
        if now < self._nextSweep:
            return
        self._nextSweep = now + SWEEP_INTERVAL
        for name in [name for name, (_, until) in self._shared.items() if until <= now]:
            del self._shared[name]
        for state in [state for state in self._states.values() if self._forgettable(state, now)]:
            self._drop(state)

    # -- what happened ---------------------------------------------------------

    def succeeded(self, permit: Permit) -> None:
        """
        The delivery of C{permit} reached the server (whatever the server
        said of the message, the destination is up).
        """
        # a destination forgotten since its permit went back has nothing to reset
        state = self._states.get(permit._state.name)
        if state is not None:
            state.failuresInRow = 0
            if state.probing:
                state.probing = False
                self._serve(state)

    def failed(self, permit: Permit, failure: AttemptFailed, category: str | None = None) -> Backoff | None:
        """
        The delivery of C{permit} failed with C{failure}: count connection
        failures, apply the first backoff rule that matches the reply.

        @param category: the failure's bounce category, when its caller
            has it; else L{categories} gives it.  A pause or a down that
            the failure causes defers messages with it.

        @return: the L{Backoff} it caused, if any; a C{"retry"} one says
            when this message is due again.
        """
        # a permit goes back before the body's reply is in, and its
        # destination may have been forgotten since: what happened still
        # counts, and the destination is forgotten again if nothing did
        state = self._states.setdefault(permit._state.name, permit._state)
        if category is None:
            category = self.categories.ofFailure(failure)
        backoff = self._failed(state, failure, category)
        self._dropIfForgettable(state)
        return backoff

    def _failed(self, state: _State, failure: AttemptFailed, category: str) -> Backoff | None:
        now = self.reactor.seconds()
        if failure.state in CONNECTION_STATES and failure.code is None:
            state.failuresInRow += 1
            if state.failuresInRow >= self.config.downAfterFailures:
                state.failuresInRow = 0
                reason = (
                    f"down: {self.config.downAfterFailures} connections in a row failed, "
                    f"the last with {failure.state}/{failure.result}"
                )
                return self._pause(state, "down", reason, now + self.config.downTime, category)
        elif failure.state not in ("dns", "bind"):
            state.failuresInRow = 0
        if failure.code is None:
            return None
        rule = self._matchingRule(failure, category)
        if rule is None:
            return None
        until = now + rule.seconds
        description = f"{failure.code} {failure.description}"
        if rule.action == "pause":
            return self._pause(state, "pause", f"paused after the reply {description}", until, category)
        if rule.action == "reduce":
            self._reduce(state, rule.connections, until, f"after the reply {description}", category=category)
            return Backoff(state.name, "reduce", until)
        return Backoff(state.name, "retry", until)

    def _reduce(
        self, state: _State, connections: int, until: float, reason: str, category: str = "", shared: bool = False
    ) -> None:
        """
        Limit C{state} to C{connections} (for all the members together)
        until C{until}.

        @param shared: another member told of it (so it is not told again).
        """
        now = self.reactor.seconds()
        new = state.reducedUntil <= now or state.reducedTotal != connections
        state.reducedTotal = connections
        state.reducedTo = self._share(connections)
        state.reducedUntil = max(until, state.reducedUntil) if not new else until
        if not new:
            return
        self.log.info(
            "destination {destination} limited to {connections} connections until {until} {reason}",
            destination=state.name,
            connections=connections if not self._members else f"{state.reducedTo} of {connections}",
            until=formatTime(until),
            reason=reason,
        )
        if not shared and self.onBackoff is not None:
            self.onBackoff(SharedBackoff(self._me, state.name, "reduce", until - now, reason, category, connections))

    def _pause(
        self, state: _State, action: str, reason: str, until: float, category: str, shared: bool = False
    ) -> Backoff:
        """
        Pause C{state} (C{action} C{pause}), or mark it down (C{down}),
        until C{until}.

        @param shared: another member told of it (so it is not told again).
        """
        if until > state.pausedUntil:
            # deliveries that fail together extend the pause: one warning
            # for the first of them, and one word to the other members
            now = self.reactor.seconds()
            new = state.pausedUntil <= now
            state.pausedUntil = until
            state.pauseReason = reason
            state.pauseCategory = category
            state.pauseAction = action
            (self.log.warn if new else self.log.debug)(
                "destination {destination} {action} until {until}: {reason}",
                destination=state.name,
                action="paused" if action == "pause" else "marked down",
                until=formatTime(until),
                reason=reason,
            )
            if new and not shared and self.onBackoff is not None:
                self.onBackoff(SharedBackoff(self._me, state.name, action, until - now, reason, category or None))
        self._turnAwayWaiters(state, state.pausedUntil)
        return Backoff(state.name, action, state.pausedUntil)

    def _matchingRule(self, failure: AttemptFailed, category: str) -> BackoffRule | None:
        for rule in self.backoff:
            if rule.categories and category not in rule.categories:
                continue
            if rule.code is not None and not re.search(rule.code, str(failure.code)):
                continue
            if rule.status is not None and not re.search(rule.status, failure.status or ""):
                continue
            if rule.text is not None and not re.search(rule.text, failure.description, re.IGNORECASE):
                continue
            return rule
        return None

    def backoffsInForce(self) -> list[SharedBackoff]:
        """
        The pauses, marks and reductions in force here, with the time they
        have left, those told by other members for destinations this one
        has no state for included: for a member that starts, or comes back,
        while they last.
        """
        now = self.reactor.seconds()
        told = []
        for state in self._states.values():
            if state.pausedUntil > now:
                told.append(
                    SharedBackoff(
                        self._me,
                        state.name,
                        state.pauseAction,
                        state.pausedUntil - now,
                        state.pauseReason,
                        state.pauseCategory,
                    )
                )
            if state.reducedUntil > now and state.reducedTotal:
                told.append(
                    SharedBackoff(
                        self._me, state.name, "reduce", state.reducedUntil - now, "reduced", None, state.reducedTotal
                    )
                )
        for backoff, until in self._shared.values():
            if until > now:
                told.append(dataclasses.replace(backoff, seconds=until - now))
        return told

    def destinationStates(self) -> list[DestinationState]:
        """
        The destinations known now: those with messages in flight or
        waiting, paused, reduced or recently used.
        """
        now = self.reactor.seconds()
        return [
            DestinationState(
                state.name,
                state.active,
                len(state.waiters),
                state.limits,
                state.pausedUntil if state.pausedUntil > now else None,
                state.pauseReason if state.pausedUntil > now else "",
            )
            for state in self._states.values()
        ]

    def close(self) -> None:
        """
        Stop: turn away the messages that wait, cancel timers.
        """
        now = self.reactor.seconds()
        self._overBacklog.clear()
        for state in list(self._states.values()):
            for timer in (state.timer, state.stuckCheck):
                if timer is not None and timer.active():
                    timer.cancel()
            waiters, state.waiters = state.waiters, deque()
            for waiter, _ in waiters:
                waiter.errback(Deferral(state.name, "the service is stopping", now))
