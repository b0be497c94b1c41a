"""
A pool of open SMTP connections per destination, so that consecutive
messages to the same servers reuse a connection instead of paying for TCP,
greeting and EHLO each time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtwist.errors import AttemptFailed
from mqtwist.hostport import LONGEST_HOST_NAME, hostPort
from mqtwist.metrics import ServerFigures
from mqtwist.smtp.connect import Credentials, openConnection
from mqtwist.smtp.protocol import ESMTPClient
from mqtwist.smtp.reply import Reply
from mqtwist.smtp.timeouts import SMTPTimeouts
from mqtwist.smtp.tls import TLSSettings
from mqtwist.validation import shownName


@dataclass(frozen=True)
class Destination:
    """
    Where messages go and how: the servers to try, in order, the local
    address to connect from, the TLS policy and the AUTH credentials.
    Messages for equal destinations share connections, so connections of
    different policies or logins are never mixed.

    @ivar security: the TLS policy (L{mqtwist.smtp.tls.POLICIES}), or
        C{None} for no STARTTLS.
    @ivar tlsNames: for each of C{hosts}, the name its certificate must
        carry (the MX host name when C{hosts} are its addresses); a host
        without one is its own name.
    """

    hosts: tuple[tuple[str, int], ...]
    bindAddress: str | None = None
    security: str | None = None
    credentials: Credentials | None = None
    tlsNames: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = ", ".join(hostPort(host, port) for host, port in self.hosts)
        if self.bindAddress:
            text += f" from {shownName(self.bindAddress)}"
        if self.security:
            text += f" (TLS {self.security})"
        if self.credentials is not None:
            text += f" as {shownName(self.credentials.username)}"
        return text


@dataclass
class _Slots:
    """The connections of one destination."""

    #: (connection, idle timer), the most recently used last
    idle: list[tuple[ESMTPClient, IDelayedCall]] = field(default_factory=list)
    inUse: set[ESMTPClient] = field(default_factory=set)
    #: connections given back with the reply to their last body still due
    #: (PIPELINING), the oldest first: not idle (no idle timer: it would QUIT
    #: a transaction in flight), but the next message may follow that body
    draining: list[ESMTPClient] = field(default_factory=list)
    opening: int = 0
    #: of C{opening}, the connections opened for a waiter (not for a caller)
    openingForWaiters: int = 0
    #: of C{inUse}, the connections waiting for the reply to a RSET
    resetting: int = 0
    waiters: deque[Deferred[ESMTPClient]] = field(default_factory=deque)

    def count(self) -> int:
        return len(self.idle) + len(self.inUse) + len(self.draining) + self.opening


class ConnectionPool:
    """
    Open SMTP connections, per L{Destination}, for reuse.

    At most C{maxConnectionsPerDestination} connections to one destination
    are open or being opened at a time; callers beyond that wait, first come
    first served, for a connection to be released.  A connection carries at
    most C{maxMessagesPerConnection} messages and stays open unused for at
    most C{idleTimeout} seconds.

    @param tls: the client's TLS configuration (C{None}: system CAs, no
        client certificate).
    @param authCleartextHosts: host names (or C{"*"}) to which AUTH may go
        on a connection without TLS.

    @ivar connectionsOpened: connections opened so far.
    @ivar connectionsReused: acquisitions served by an already open
        connection.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        ehloName: str,
        timeouts: SMTPTimeouts,
        maxConnectionsPerDestination: int,
        maxMessagesPerConnection: int,
        idleTimeout: float,
        tls: TLSSettings | None = None,
        authCleartextHosts: Sequence[str] = (),
        connect: Callable[..., Deferred[ESMTPClient]] = openConnection,
    ) -> None:
        self.reactor = reactor
        self.ehloName = ehloName
        self.timeouts = timeouts
        self.maxConnectionsPerDestination = maxConnectionsPerDestination
        self.maxMessagesPerConnection = maxMessagesPerConnection
        self.idleTimeout = idleTimeout
        self.tls = tls or TLSSettings()
        self.authCleartextHosts = frozenset(authCleartextHosts)
        self._connect = connect
        self.connectionsOpened = 0
        self.connectionsReused = 0
        #: message bytes written on the connections closed so far
        self._closedBodyBytes = 0
        self._slots: dict[Destination, _Slots] = {}
        self._destinationOf: dict[ESMTPClient, Destination] = {}
        self._live: set[ESMTPClient] = set()
        self._closing = False
        self._allClosed: list[Deferred[None]] = []

    # -- public ------------------------------------------------------------

    def acquire(self, destination: Destination) -> Deferred[ESMTPClient]:
        """
        Get a connection to C{destination} for one transaction; give it back
        with L{release}.

        @return: a Deferred firing with an idle usable connection, or else
            one given back with the reply to its last body still due (with
            PIPELINING the message follows that body, as the delivery
            policy counts on), or else one that is being reset after a
            failed transaction, or else a new one (C{destination.hosts} tried in order), or else, when the
            destination has its maximum of connections, the first one
            released.  It errbacks with the L{AttemptFailed} of the last host
            when no connection could be opened, and with C{connect}/C{error}
            when the pool is closing.  Cancelling it gives up the wait or
            the connection attempt.
        """
        if self._closing:
            return fail(self._closingFailure(destination))
        slots = self._slots.setdefault(destination, _Slots())
        client = self._takeIdle(slots)
        if client is None and slots.draining:
            client = self._takeDraining(slots)
        if client is not None:
            slots.inUse.add(client)
            self.connectionsReused += 1
            return succeed(client)
        # a connection one RSET away from free is nearer than a new one
        if slots.resetting <= len(slots.waiters) and slots.count() < self.maxConnectionsPerDestination:
            return self._openFor(destination, slots).addErrback(self._openFailed, destination, slots)
        waiter: Deferred[ESMTPClient] = Deferred(lambda waiter: self._forget(slots, waiter))
        slots.waiters.append(waiter)
        return waiter

    def release(self, connection: ESMTPClient, *, clean: bool = True) -> None:
        """
        Give back a connection from L{acquire} after a transaction.

        @param clean: C{False} when the transaction ended before the final
            reply to the body: the connection gets a RSET before it is used
            again, and is closed if the RSET fails.

        A connection that is not usable any more or has carried
        C{maxMessagesPerConnection} messages is closed (QUIT); otherwise it
        goes to the first waiter, or waits idle for the next acquisition; a
        connection given back before the reply to its body (PIPELINING) is
        idle, and its idle time-out runs, only from that reply on.
        """
        destination = self._destinationOf.get(connection)
        slots = self._slots.get(destination) if destination is not None else None
        if destination is None or slots is None or connection not in slots.inUse:
            raise ValueError(f"{connection!r} was not acquired from this pool")
        if not connection.usable or connection.messages >= self.maxMessagesPerConnection or self._closing:
            self._retire(connection, destination, slots)
        elif clean:
            self._makeAvailable(connection, destination, slots)
        else:
            slots.resetting += 1
            connection.rset().addBoth(self._resetDone, connection, destination, slots)

    def closeAll(self) -> Deferred[None]:
        """
        Close the pool: QUIT idle connections now and connections in use as
        they are released (after the reply to their last body); waiters errback with C{connect}/C{error}.

        @return: a Deferred firing with C{None} when every connection is
            closed.
        """
        self._closing = True
        for destination, slots in list(self._slots.items()):
            idle, slots.idle = slots.idle, []
            for connection, timer in idle:
                timer.cancel()
                connection.quit()
            waiters, slots.waiters = slots.waiters, deque()
            for waiter in waiters:
                waiter.errback(self._closingFailure(destination))
        closed: Deferred[None] = Deferred()
        self._allClosed.append(closed)
        self._checkAllClosed()
        return closed

    def openConnections(self, destination: Destination) -> int:
        """
        The connections of C{destination}, idle, in use or opening.
        """
        slots = self._slots.get(destination)
        return 0 if slots is None else slots.count()

    def stats(self, destination: Destination) -> dict[str, int]:
        """
        The connections of C{destination}: C{idle}, C{inUse} (those waiting
        for the reply to a body given back early included), C{opening},
        all of them (C{open}) and the callers C{waiting}.
        """
        slots = self._slots.get(destination, _Slots())
        return {
            "open": self.openConnections(destination),
            "idle": len(slots.idle),
            "inUse": len(slots.inUse) + len(slots.draining),
            "opening": slots.opening,
            "waiting": len(slots.waiters),
        }

    def serverFigures(self) -> list[ServerFigures]:
        """
        The connections of each server (the first host of a destination)
        that has any: open (idle, in use or opening) and idle.
        """
        figures: dict[str, list[int]] = {}
        for destination, slots in self._slots.items():
            host, port = destination.hosts[0]
            counts = figures.setdefault(hostPort(host, port), [0, 0])
            counts[0] += slots.count()
            counts[1] += len(slots.idle)
        return [ServerFigures(server, opened, idle) for server, (opened, idle) in figures.items()]

    def bodyBytesSent(self) -> int:
        """
        Message bytes (as encoded for DATA) written on every connection,
        open or closed, since the pool was made.
        """
        return self._closedBodyBytes + sum(client.bodyBytesSent for client in self._live)

    # -- opening -----------------------------------------------------------

    def _openFor(self, destination: Destination, slots: _Slots) -> Deferred[ESMTPClient]:
        """
        Open a connection, counted against C{destination}'s limit while it
        is being opened and marked in use once open.
        """
        slots.opening += 1

        def opened(client: ESMTPClient) -> ESMTPClient:
            slots.opening -= 1
            self.connectionsOpened += 1
            self._destinationOf[client] = destination
            self._live.add(client)
            slots.inUse.add(client)
            client.whenClosed().addCallback(self._connectionClosed, client, destination)
            self.log.debug(
                "SMTP connection to {destination} opened ({mta} at {address})",
                destination=str(destination),
                mta=client.mta,
                address=client.remoteAddress,
            )
            return client

        def failed(failure: Failure) -> Failure:
            slots.opening -= 1
            return failure

        return ensureDeferred(self._connectToAny(destination)).addCallbacks(opened, failed)

    async def _connectToAny(self, destination: Destination) -> ESMTPClient:
        if not destination.hosts:
            raise AttemptFailed("connect", "error", "no server to connect to (the destination has no hosts)")
        for index, (host, port) in enumerate(destination.hosts):
            name = destination.tlsNames[index] if index < len(destination.tlsNames) else host
            try:
                client: ESMTPClient = await self._connect(
                    self.reactor,
                    host,
                    port,
                    ehloName=self.ehloName,
                    timeouts=self.timeouts,
                    bindAddress=destination.bindAddress,
                    security=destination.security,
                    tlsName=name,
                    tls=self.tls,
                    credentials=destination.credentials,
                    authCleartext=bool({"*", host} & self.authCleartextHosts),
                )
                return client
            except AttemptFailed as failure:
                if index == len(destination.hosts) - 1:
                    raise
                self.log.info(
                    "cannot use SMTP server {name} ({server}) of {destination}, trying the next: {failure}",
                    name=shownName(name, LONGEST_HOST_NAME),
                    server=hostPort(host, port),
                    destination=destination,
                    failure=str(failure),
                )
        raise AssertionError("unreachable")

    def _openFailed(self, failure: Failure, destination: Destination, slots: _Slots) -> Failure:
        # the slot this attempt held is free again
        self._serveWaiters(destination, slots)
        self._checkAllClosed()
        return failure

    def _serveWaiters(self, destination: Destination, slots: _Slots) -> None:
        """
        Open connections for waiters while the destination has free slots.
        """
        while (
            not self._closing
            and len(slots.waiters) > slots.openingForWaiters
            and slots.count() < self.maxConnectionsPerDestination
        ):
            slots.openingForWaiters += 1
            self._openFor(destination, slots).addCallbacks(
                self._openedForWaiter,
                self._openForWaiterFailed,
                callbackArgs=(destination, slots),
                errbackArgs=(destination, slots),
            )
        self._dropIfUnused(destination, slots)

    def _openedForWaiter(self, client: ESMTPClient, destination: Destination, slots: _Slots) -> None:
        slots.openingForWaiters -= 1
        self._makeAvailable(client, destination, slots)

    def _openForWaiterFailed(self, failure: Failure, destination: Destination, slots: _Slots) -> None:
        slots.openingForWaiters -= 1
        if slots.waiters:
            slots.waiters.popleft().errback(failure)
        elif not failure.check(AttemptFailed, CancelledError):
            self.log.failure("opening a connection to {destination}", failure, destination=str(destination))
        self._serveWaiters(destination, slots)
        self._checkAllClosed()

    # -- handing out and taking back -----------------------------------------

    def _takeIdle(self, slots: _Slots) -> ESMTPClient | None:
        while slots.idle:
            client, timer = slots.idle.pop()
            timer.cancel()
            if client.usable:
                return client
            client.quit()
        return None

    def _takeDraining(self, slots: _Slots) -> ESMTPClient | None:
        # the oldest first: its reply is the nearest; an unusable one is
        # dropped when its reply is in or it is closed
        for client in slots.draining:
            if client.usable:
                slots.draining.remove(client)
                return client
        return None

    def _makeAvailable(self, client: ESMTPClient, destination: Destination, slots: _Slots) -> None:
        """
        Hand an in-use connection to the first waiter, or keep it idle (once
        the reply to its last body is in).
        """
        if not client.usable or self._closing:
            self._retire(client, destination, slots)
        elif slots.waiters:
            self.connectionsReused += 1
            slots.waiters.popleft().callback(client)
        elif client.awaitingReplies:
            # given back right after its body (PIPELINING): a transaction is
            # still in flight, so no idle timer yet
            slots.inUse.discard(client)
            slots.draining.append(client)
            client.whenQuiet().addCallback(self._quiet, client, destination, slots)
        else:
            slots.inUse.discard(client)
            timer = self.reactor.callLater(self.idleTimeout, self._idleTimedOut, client, destination, slots)
            slots.idle.append((client, timer))

    def _quiet(self, _: None, client: ESMTPClient, destination: Destination, slots: _Slots) -> None:
        # the reply is in: idle from now on (or closed, or to a waiter); not
        # if it was taken again meanwhile, or closed (_connectionClosed)
        if client in slots.draining:
            slots.draining.remove(client)
            slots.inUse.add(client)
            self._makeAvailable(client, destination, slots)

    def _resetDone(
        self, result: Reply | Failure, client: ESMTPClient, destination: Destination, slots: _Slots
    ) -> None:
        slots.resetting -= 1
        # a failed RSET is not an error of any message: the connection just goes
        if isinstance(result, Reply) and result.code // 100 == 2:
            self._makeAvailable(client, destination, slots)
        else:
            self._retire(client, destination, slots)

    def _retire(self, client: ESMTPClient, destination: Destination, slots: _Slots) -> None:
        """
        Close an in-use connection (QUIT) and give its slot to a waiter.
        """
        slots.inUse.discard(client)
        self._destinationOf.pop(client, None)
        client.quit()
        self._serveWaiters(destination, slots)

    def _idleTimedOut(self, client: ESMTPClient, destination: Destination, slots: _Slots) -> None:
        slots.idle = [(idle, timer) for idle, timer in slots.idle if idle is not client]
        self.log.debug("closing idle SMTP connection to {destination}", destination=str(destination))
        client.quit()
        self._dropIfUnused(destination, slots)

    def _connectionClosed(self, _: None, client: ESMTPClient, destination: Destination) -> None:
        if client in self._live:
            self._live.discard(client)
            self._closedBodyBytes += client.bodyBytesSent
        slots = self._slots.get(destination)
        if slots is not None and client not in slots.inUse:
            # an idle connection died: drop it (one in use is dropped on release)
            if client in slots.draining:
                slots.draining.remove(client)
            for idle, timer in slots.idle:
                if idle is client:
                    timer.cancel()
                    slots.idle.remove((idle, timer))
                    break
            self._serveWaiters(destination, slots)
        if slots is None or client not in slots.inUse:
            self._destinationOf.pop(client, None)
        self._checkAllClosed()

    def _forget(self, slots: _Slots, waiter: Deferred[ESMTPClient]) -> None:
        if waiter in slots.waiters:
            slots.waiters.remove(waiter)

    def _dropIfUnused(self, destination: Destination, slots: _Slots) -> None:
        # keeps the table from growing with every destination ever seen
        if not slots.count() and not slots.waiters and self._slots.get(destination) is slots:
            del self._slots[destination]

    def _checkAllClosed(self) -> None:
        if not self._closing or self._live or any(slots.opening for slots in self._slots.values()):
            return
        waiters, self._allClosed = self._allClosed, []
        for waiter in waiters:
            waiter.callback(None)

    def _closingFailure(self, destination: Destination) -> AttemptFailed:
        return AttemptFailed(
            "connect",
            "error",
            f"no connection to {destination}: the connection pool is closing (the service is stopping)",
        )
