"""
The connection pool and PIPELINING: a connection goes back to the pool as
soon as a message body is written (L{mqtwist.delivery.transaction.sendThroughPool}),
while the server's reply to that body is still due.  Such a connection is
not idle: the idle time-out must not close it, and (while the destination
has a free connection slot) a message must not be queued behind a reply
that the server holds.

A unit test with a real L{ESMTPClient} on a string transport and a fake
clock, and the same story through the real delivery engine against the test
SMTP server holding its replies to the bodies (C{holdData=True}).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import pytest_twisted
from helpers_smtpprotocol import Connection
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, succeed
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from mqtwist.config import Config, SMTPTimeouts
from mqtwist.content.message import Message
from mqtwist.dataplugin.chain import PluginChain
from mqtwist.delivery.transaction import sendThroughPool
from mqtwist.service import deliveryEngine
from mqtwist.smtp.pool import ConnectionPool, Destination

HOL = pytest.mark.xfail(
    strict=True,
    reason="BUG: a connection given back before the reply to its body is taken for the next message "
    "before a free slot is used, so that message waits behind a reply the server holds. The pool alone "
    "cannot open a new connection instead: the delivery policy bounds a destination's connections (its "
    "throttle rule's connections, connectionsPerMinute) by counting deliveries in progress, and a "
    "delivery gives its permit back with the connection once the body is written (engine.py), counting "
    "on the next message following that body; see the report of this test's commit",
)


DEST = Destination((("198.51.100.5", 25),))
IDLE_TIMEOUT = 10


def message(name: str) -> Message:
    return Message.fromJSON(
        json.dumps({
            "id": name,
            "envelope": "sender@example.org",
            "recipient": f"{name}@example.com",
            "mime": f"Subject: {name}\r\n\r\nbody of {name}\r\n",
        })
    )


# -- unit: one real client on a string transport, a fake clock ---------------


def poolOn(connection: Connection, maxConnections: int = 2) -> tuple[ConnectionPool, list[Deferred[Any]]]:
    """A pool whose first connection is C{connection}; later attempts never finish."""
    attempts: list[Deferred[Any]] = []

    def connect(*args: Any, **kwargs: Any) -> Deferred[Any]:
        attempt: Deferred[Any] = succeed(connection.client) if not attempts else Deferred()
        attempts.append(attempt)
        return attempt

    pool = ConnectionPool(
        connection.clock,
        ehloName="client.example.org",
        timeouts=connection.client.timeouts,
        maxConnectionsPerDestination=maxConnections,
        maxMessagesPerConnection=100,
        idleTimeout=IDLE_TIMEOUT,
        connect=connect,
    )
    return pool, attempts


def bodyWrittenReplyDue(connection: Connection, pool: ConnectionPool) -> Deferred[Any]:
    """
    Send one message through C{pool} on C{connection} up to its body: the
    connection is back in the pool, the reply to the body not yet in.
    """
    connection.introduce()
    chain = PluginChain([], reactor=connection.clock, config=Config(ehloName="client.example.org"))
    sent = ensureDeferred(sendThroughPool(pool, DEST, message("m0"), chain))
    # pipelined: the envelope and DATA in one go
    written = connection.sent()
    assert written.startswith(b"MAIL FROM:<sender@example.org>") and written.endswith(b"DATA\r\n")
    connection.reply(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n")
    assert connection.sent().endswith(b"body of m0\r\n.\r\n")
    assert not sent.called
    return sent


def test_idleTimeOutWaitsForTheReplyToTheBody() -> None:
    """
    A connection given back with the reply to its body still due is in
    use, not idle: the idle time-out does not QUIT it however long the
    reply takes, and starts only once the reply is in.
    """
    connection = Connection()
    pool, _ = poolOn(connection)
    sent = bodyWrittenReplyDue(connection, pool)
    assert pool.stats(DEST)["idle"] == 0, pool.stats(DEST)

    connection.clock.advance(IDLE_TIMEOUT + 1)
    assert b"QUIT" not in connection.sent()
    assert connection.client.usable

    connection.reply(b"250 2.0.0 queued as 1\r\n")
    assert sent.called and sent.result.reply.code == 250
    assert pool.stats(DEST)["idle"] == 1, pool.stats(DEST)
    # a full idle time-out from the reply, not from the body
    connection.clock.advance(IDLE_TIMEOUT - 1)
    assert connection.sent() == b""
    connection.clock.advance(1)
    assert connection.sent() == b"QUIT\r\n"


def test_aConnectionLostWithItsReplyDueIsDropped() -> None:
    """
    A connection lost while the reply to its body is due fails that
    message's transaction and leaves the pool: nothing counts it, nothing
    hands it out.
    """
    connection = Connection()
    pool, attempts = poolOn(connection, maxConnections=1)
    sent = bodyWrittenReplyDue(connection, pool)
    connection.lose()
    assert sent.called
    sent.addErrback(lambda failure: failure.value)
    assert sent.result.state == "message" and sent.result.result == "lost"
    assert pool.stats(DEST)["open"] == 0, pool.stats(DEST)
    pool.acquire(DEST)
    assert len(attempts) == 2


def test_closeAllQuitsAConnectionAfterTheReplyToItsBody() -> None:
    """
    Closing the pool while a reply is due: QUIT follows that reply, and the
    pool is closed once the connection is.
    """
    connection = Connection()
    pool, _ = poolOn(connection)
    sent = bodyWrittenReplyDue(connection, pool)
    closed = pool.closeAll()
    assert connection.sent() == b"" and not closed.called
    connection.reply(b"250 2.0.0 queued as 1\r\n")
    assert sent.result.reply.code == 250
    assert connection.sent() == b"QUIT\r\n"
    connection.reply(b"221 bye\r\n")
    connection.lose()
    assert closed.called


@HOL
def test_aFreeSlotBeforeAConnectionWithItsReplyDue() -> None:
    """
    Asked for a connection while the only open one waits for the reply to
    a body, the pool opens a new one when the destination has a free slot.
    """
    connection = Connection()
    pool, attempts = poolOn(connection, maxConnections=2)
    bodyWrittenReplyDue(connection, pool)

    pool.acquire(DEST)
    assert len(attempts) == 2, "the message went behind a reply that is still due"


def test_withoutAFreeSlotTheNextMessageFollowsTheBody() -> None:
    """
    When the destination has no free slot, the next message is pipelined
    behind the body whose reply is due, without waiting for it.
    """
    connection2 = Connection()
    pool2, attempts2 = poolOn(connection2, maxConnections=1)
    bodyWrittenReplyDue(connection2, pool2)
    acquired = pool2.acquire(DEST)
    assert len(attempts2) == 1 and acquired.called and acquired.result is connection2.client


# -- the real engine against a server that holds its replies -------------------


@contextmanager
def loggedIdleCloses() -> Iterator[list[dict[str, Any]]]:
    """The pool's 'closing idle SMTP connection' log events while in the block."""
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "closing idle SMTP connection" in (event.get("log_format") or ""):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


def engineFor(server: Any, **settings: Any) -> Any:
    config = Config(
        ehloName="client.test",
        smarthost=f"{server.host}:{server.port}",
        timeouts=SMTPTimeouts(greeting=10, message=60),
        plugins=[],
        **settings,
    )
    return deliveryEngine(config, [], reactor)


def poolStats(engine: Any) -> dict[str, int]:
    (destination,) = list(engine.pool._slots)
    return engine.pool.stats(destination)


@pytest_twisted.ensureDeferred
async def test_held_replies_no_connection_closed_as_idle(startSMTPServer) -> None:
    """
    The colleague's report: 4 messages whose replies the server holds, then
    2 more while the destination has 6 connection slots.  No connection
    waiting for a reply is closed as idle, however long the replies are
    held, none counts as idle, and the pool counts every one that is open;
    once released, every message is delivered once.
    """
    server = await startSMTPServer(holdData=True)
    engine = engineFor(server, maxConnectionsPerDestination=6, idleTimeout=1)
    try:
        with loggedIdleCloses() as idleCloses:
            first = [engine.deliver(message(f"m{n}")) for n in range(4)]
            await server.waitUntil(lambda s: len(s.held) == 4, "4 bodies held")
            later = [engine.deliver(message(f"m{n}")) for n in range(4, 6)]
            # longer than the idle time-out
            await deferLater(reactor, 2.5, lambda: None)
            assert idleCloses == [], "a connection waiting for a reply was closed as idle"
            assert not any("quit" in c.commands for c in server.connections.values())
            stats = poolStats(engine)
            assert stats["idle"] == 0 and stats["open"] == len(server.connections), stats
            server.release()
            entries = await gatherResults(first + later)
    finally:
        server.release()
        await engine.close()
    assert [e.result for e in entries] == ["accepted"] * 6, [e.description for e in entries]
    assert sorted(m.rcptTos[0] for m in server.messages) == sorted(f"m{n}@example.com" for n in range(6))


@HOL
@pytest_twisted.ensureDeferred
async def test_held_replies_no_queueing_behind_them_while_slots_are_free(startSMTPServer) -> None:
    """
    4 messages whose replies the server holds, then 2 more while the
    destination has 6 connection slots: each of the 2 gets a connection of
    its own, so the server sees 6 bodies without any reply released.
    """
    server = await startSMTPServer(holdData=True)
    engine = engineFor(server, maxConnectionsPerDestination=6, idleTimeout=30)
    try:
        deliveries = [engine.deliver(message(f"m{n}")) for n in range(4)]
        await server.waitUntil(lambda s: len(s.held) == 4, "4 bodies held")
        deliveries += [engine.deliver(message(f"m{n}")) for n in range(4, 6)]
        try:
            await server.waitUntil(lambda s: len(s.held) == 6, "6 bodies held", timeout=3)
        except AssertionError as late:
            raise AssertionError(
                f"messages queued behind held replies while connection slots were free: "
                f"pool {poolStats(engine)}; {late}"
            ) from None
        server.release()
        entries = await gatherResults(deliveries)
    finally:
        server.release()
        await engine.close()
    assert [e.result for e in entries] == ["accepted"] * 6


@pytest_twisted.ensureDeferred
async def test_held_replies_the_connection_is_reused_after_its_reply(startSMTPServer) -> None:
    """
    A connection whose reply was held past the idle time-out is still open
    once the reply is in, and carries the next message.
    """
    server = await startSMTPServer(holdData=True)
    engine = engineFor(server, maxConnectionsPerDestination=1, idleTimeout=1)
    try:
        with loggedIdleCloses() as idleCloses:
            first = engine.deliver(message("m0"))
            await server.waitUntil(lambda s: len(s.held) == 1, "a body held")
            await deferLater(reactor, 2, lambda: None)
            assert idleCloses == []
            server.release()
            assert (await first).result == "accepted"
            second = await engine.deliver(message("m1"))
            assert second.result == "accepted"
    finally:
        server.release()
        await engine.close()
    assert len(server.connections) == 1 and server.connections[1].messages == 2, server.connections
