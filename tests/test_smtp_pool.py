"""
Tests of L{mqtwist.smtp.pool.ConnectionPool}: its bookkeeping with fake
connections on a fake clock, and reuse against a real server.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from fixtures_smtp import unusedPort
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from mqtwist.config import SMTPTimeouts
from mqtwist.errors import AttemptFailed
from mqtwist.smtp.pool import ConnectionPool, Destination
from mqtwist.smtp.reply import Reply

case = SynchronousTestCase()


class FakeClient:
    """What the pool uses of an ESMTPClient."""

    def __init__(self, host: str) -> None:
        self.remoteAddress = host
        self.mta = host
        self.usable = True
        self.messages = 0
        self.quits = 0
        self.rsets: list[Deferred[Reply]] = []
        self._closed: list[Deferred[None]] = []
        self.isClosed = False
        #: the pool gives back a connection at once when no reply is due
        self.awaitingReplies = False
        self.bodyBytesSent = 0

    def rset(self) -> Deferred[Reply]:
        reply: Deferred[Reply] = Deferred()
        self.rsets.append(reply)
        return reply

    def quit(self) -> Deferred[None]:
        self.quits += 1
        self.usable = False
        self.die()
        return succeed(None)

    def die(self) -> None:
        self.usable = False
        if not self.isClosed:
            self.isClosed = True
            waiters, self._closed = self._closed, []
            for waiter in waiters:
                waiter.callback(None)

    def whenClosed(self) -> Deferred[None]:
        if self.isClosed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closed.append(waiter)
        return waiter


class FakeConnect:
    """A connect function whose attempts the test completes."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, int, str | None, Deferred[Any]]] = []

    def __call__(self, reactor, host, port, *, ehloName, timeouts, bindAddress=None, **policy: Any) -> Deferred[Any]:
        attempt: Deferred[Any] = Deferred()
        self.attempts.append((host, port, bindAddress, attempt))
        return attempt

    def succeed(self, index: int = -1) -> FakeClient:
        host, port, _, attempt = self.attempts[index]
        client = FakeClient(host)
        attempt.callback(client)
        return client

    def fail(self, index: int = -1, state: str = "connect") -> AttemptFailed:
        host, port, _, attempt = self.attempts[index]
        failure = AttemptFailed(state, "error", f"cannot connect to {host}:{port}")
        attempt.errback(failure)
        return failure


DEST = Destination((("192.0.2.1", 25), ("192.0.2.2", 2525)), bindAddress="198.51.100.1")


def makePool(connect, maxConnections: int = 2, maxMessages: int = 3, clock=None) -> ConnectionPool:
    return ConnectionPool(
        clock or MemoryReactorClock(),
        ehloName="client.test",
        timeouts=SMTPTimeouts(),
        maxConnectionsPerDestination=maxConnections,
        maxMessagesPerConnection=maxMessages,
        idleTimeout=10,
        connect=connect,
    )


def test_hostsTriedInOrder() -> None:
    connect = FakeConnect()
    pool = makePool(connect)
    acquired = pool.acquire(DEST)
    assert connect.attempts[0][:3] == ("192.0.2.1", 25, "198.51.100.1")
    connect.fail(0)
    assert connect.attempts[1][:3] == ("192.0.2.2", 2525, "198.51.100.1")
    client = connect.succeed(1)
    assert case.successResultOf(acquired) is client
    assert pool.connectionsOpened == 1
    assert pool.stats(DEST) == {"open": 1, "idle": 0, "inUse": 1, "opening": 0, "waiting": 0}


def test_lastHostFailureReported() -> None:
    connect = FakeConnect()
    pool = makePool(connect)
    acquired = pool.acquire(DEST)
    connect.fail(0)
    last = connect.fail(1, state="bind")
    assert case.failureResultOf(acquired, AttemptFailed).value is last
    assert pool.stats(DEST) == {"open": 0, "idle": 0, "inUse": 0, "opening": 0, "waiting": 0}


def test_reuseAndIdleTimeout() -> None:
    clock = MemoryReactorClock()
    connect = FakeConnect()
    pool = makePool(connect, clock=clock)
    first = pool.acquire(DEST)
    client = connect.succeed(0)
    case.successResultOf(first)
    client.messages = 1
    pool.release(client)
    assert pool.stats(DEST)["idle"] == 1
    clock.advance(9)
    assert case.successResultOf(pool.acquire(DEST)) is client
    assert pool.connectionsReused == 1 and len(connect.attempts) == 1
    pool.release(client)
    clock.advance(10)
    assert client.quits == 1
    assert pool.stats(DEST) == {"open": 0, "idle": 0, "inUse": 0, "opening": 0, "waiting": 0}
    assert not clock.getDelayedCalls()


def test_messageLimitCloses() -> None:
    connect = FakeConnect()
    pool = makePool(connect, maxMessages=3)
    pool.acquire(DEST)
    client = connect.succeed(0)
    client.messages = 3
    pool.release(client)
    assert client.quits == 1 and pool.stats(DEST)["idle"] == 0


def test_unusableCloses() -> None:
    connect = FakeConnect()
    pool = makePool(connect)
    pool.acquire(DEST)
    client = connect.succeed(0)
    client.usable = False
    pool.release(client)
    assert client.quits == 1


def test_uncleanReleaseResets() -> None:
    connect = FakeConnect()
    pool = makePool(connect)
    pool.acquire(DEST)
    client = connect.succeed(0)
    pool.release(client, clean=False)
    assert len(client.rsets) == 1 and pool.stats(DEST)["inUse"] == 1
    client.rsets[0].callback(Reply(250, ("OK",)))
    assert pool.stats(DEST)["idle"] == 1
    # a failed RSET closes the connection
    case.successResultOf(pool.acquire(DEST))
    pool.release(client, clean=False)
    client.rsets[1].callback(Reply(500, ("what",)))
    assert client.quits == 1 and pool.stats(DEST)["idle"] == 0


def test_aConnectionBeingResetIsWaitedFor() -> None:
    """
    A caller that finds a connection in the middle of its RSET waits the
    one round trip for it instead of opening another; when the RSET fails,
    a new connection is opened for the caller.
    """
    connect = FakeConnect()
    pool = makePool(connect, maxConnections=2)
    pool.acquire(DEST)
    client = connect.succeed(0)
    pool.release(client, clean=False)
    waiting = pool.acquire(DEST)
    assert len(connect.attempts) == 1 and not waiting.called
    # a second caller has no RSET to wait for
    pool.acquire(DEST)
    assert len(connect.attempts) == 2
    client.rsets[0].callback(Reply(250, ("OK",)))
    assert case.successResultOf(waiting) is client

    pool.release(client, clean=False)
    waiting = pool.acquire(DEST)
    client.rsets[1].errback(AttemptFailed("rset", "lost", "gone"))
    assert client.quits == 1 and len(connect.attempts) == 3
    fresh = connect.succeed(2)
    assert case.successResultOf(waiting) is fresh


def test_resetLostCloses() -> None:
    connect = FakeConnect()
    pool = makePool(connect)
    pool.acquire(DEST)
    client = connect.succeed(0)
    pool.release(client, clean=False)
    client.rsets[0].errback(AttemptFailed("rset", "lost", "gone"))
    assert client.quits == 1


def test_waitersServedInOrder() -> None:
    connect = FakeConnect()
    pool = makePool(connect, maxConnections=1)
    first = pool.acquire(DEST)
    second, third = pool.acquire(DEST), pool.acquire(DEST)
    assert len(connect.attempts) == 1 and pool.stats(DEST)["waiting"] == 2
    client = connect.succeed(0)
    assert case.successResultOf(first) is client
    assert not second.called
    pool.release(client)
    assert case.successResultOf(second) is client and not third.called
    pool.release(client)
    assert case.successResultOf(third) is client
    assert pool.connectionsOpened == 1 and pool.connectionsReused == 2


def test_cancelledWaiterLeavesQueue() -> None:
    connect = FakeConnect()
    pool = makePool(connect, maxConnections=1)
    pool.acquire(DEST)
    waiting = pool.acquire(DEST)
    later = pool.acquire(DEST)
    waiting.cancel()
    case.failureResultOf(waiting, CancelledError)
    client = connect.succeed(0)
    pool.release(client)
    assert case.successResultOf(later) is client


def test_deadConnectionFreesSlotForWaiter() -> None:
    connect = FakeConnect()
    pool = makePool(connect, maxConnections=1)
    pool.acquire(DEST)
    client = connect.succeed(0)
    waiting = pool.acquire(DEST)
    client.die()
    pool.release(client)
    # the freed slot opens a new connection for the waiter
    assert len(connect.attempts) == 2
    fresh = connect.succeed(1)
    assert case.successResultOf(waiting) is fresh


def test_failedOpenForWaiterFailsIt() -> None:
    connect = FakeConnect()
    pool = makePool(connect, maxConnections=1)
    pool.acquire(DEST)
    client = connect.succeed(0)
    first, second = pool.acquire(DEST), pool.acquire(DEST)
    client.usable = False
    pool.release(client)
    # one attempt (with its two hosts) for the first waiter
    connect.fail(1)
    failure = connect.fail(2)
    assert case.failureResultOf(first, AttemptFailed).value is failure
    # then a new attempt for the next one
    fresh = connect.succeed(3)
    assert case.successResultOf(second) is fresh


def test_idleConnectionDiesAndIsDropped() -> None:
    clock = MemoryReactorClock()
    connect = FakeConnect()
    pool = makePool(connect, clock=clock)
    pool.acquire(DEST)
    client = connect.succeed(0)
    pool.release(client)
    client.die()
    assert pool.stats(DEST)["idle"] == 0 and not clock.getDelayedCalls()
    pool.acquire(DEST)
    assert len(connect.attempts) == 2


def test_closeAll() -> None:
    connect = FakeConnect()
    pool = makePool(connect, maxConnections=2)
    pool.acquire(DEST), pool.acquire(DEST)
    idle, busy = connect.succeed(0), connect.succeed(1)
    waiting = pool.acquire(DEST)
    pool.release(idle)
    assert case.successResultOf(waiting) is idle
    waiting = pool.acquire(DEST)
    closed = pool.closeAll()
    assert case.failureResultOf(waiting, AttemptFailed).value.state == "connect"
    assert not closed.called
    pool.release(idle)
    assert idle.quits == 1 and not closed.called
    pool.release(busy)
    assert busy.quits == 1
    assert case.successResultOf(closed) is None
    assert case.failureResultOf(pool.acquire(DEST), AttemptFailed).value.result == "error"


def test_releaseOfUnknownConnection() -> None:
    pool = makePool(FakeConnect())
    with pytest.raises(ValueError):
        pool.release(FakeClient("x"))


# -- against a real server ---------------------------------------------------


async def transaction(client, recipient: str) -> int:
    mail, rcpt = client.mailFrom("a@example.org"), client.rcptTo(recipient)
    await mail
    await rcpt
    await client.data()
    return (await client.sendBody(f"To: {recipient}\n\nhello\n".encode())).code


def realPool(maxConnections: int = 2, maxMessages: int = 100, idleTimeout: float = 30) -> ConnectionPool:
    return ConnectionPool(
        reactor,
        ehloName="client.test",
        timeouts=SMTPTimeouts(connect=5, greeting=5, ehlo=5, mailfrom=5, rcptto=5, data=5, message=5),
        maxConnectionsPerDestination=maxConnections,
        maxMessagesPerConnection=maxMessages,
        idleTimeout=idleTimeout,
    )


@pytest_twisted.ensureDeferred
async def test_reuseCounts(smtpServer) -> None:
    pool = realPool(maxMessages=3)
    destination = Destination(((smtpServer.host, smtpServer.port),))
    for n in range(7):
        client = await pool.acquire(destination)
        assert await transaction(client, f"r{n}@example.net") == 250
        pool.release(client)
    await pool.closeAll()
    messages = await smtpServer.waitForMessages(7)
    await smtpServer.waitForClosedConnections(3)
    # 3 + 3 + 1 messages on three connections, no RSET, each ended by QUIT
    assert [m.connection for m in messages] == [1, 1, 1, 2, 2, 2, 3]
    assert pool.connectionsOpened == 3 and pool.connectionsReused == 4
    for connection in smtpServer.connections.values():
        assert connection.commands == ["ehlo", "quit"]


@pytest_twisted.ensureDeferred
async def test_concurrentUseUpToLimit(smtpServer) -> None:
    pool = realPool(maxConnections=2)
    destination = Destination(((smtpServer.host, smtpServer.port),))

    async def deliver(n: int) -> int:
        client = await pool.acquire(destination)
        try:
            return await transaction(client, f"r{n}@example.net")
        finally:
            pool.release(client)

    results = await Deferred.fromCoroutine(_gather([deliver(n) for n in range(10)]))
    assert results == [250] * 10
    assert pool.connectionsOpened == 2
    await pool.closeAll()
    messages = await smtpServer.waitForMessages(10)
    assert {m.connection for m in messages} == {1, 2}
    assert sorted(m.rcptTos[0] for m in messages) == sorted(f"r{n}@example.net" for n in range(10))


async def _gather(coroutines) -> list:
    return await gatherResults([Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True)


@pytest_twisted.ensureDeferred
async def test_failedTransactionResetsBeforeReuse(smtpServer) -> None:
    # one connection: the next acquisition waits for the RSET to be answered
    pool = realPool(maxConnections=1)
    destination = Destination(((smtpServer.host, smtpServer.port),))
    client = await pool.acquire(destination)
    mail, rcpt = client.mailFrom("a@example.org"), client.rcptTo("reject@example.net")
    await mail
    assert (await rcpt).code == 550
    pool.release(client, clean=False)
    again = await pool.acquire(destination)
    assert again is client
    assert await transaction(again, "ok@example.net") == 250
    pool.release(again)
    await pool.closeAll()
    await smtpServer.waitForClosedConnections(1)
    assert smtpServer.connections[1].commands == ["ehlo", "rset", "quit"]


@pytest_twisted.ensureDeferred
async def test_idleConnectionQuits(smtpServer) -> None:
    pool = realPool(idleTimeout=0.1)
    destination = Destination(((smtpServer.host, smtpServer.port),))
    client = await pool.acquire(destination)
    assert await transaction(client, "r@example.net") == 250
    pool.release(client)
    await smtpServer.waitForClosedConnections(1)
    assert smtpServer.connections[1].commands == ["ehlo", "quit"]
    assert pool.stats(destination)["idle"] == 0
    await pool.closeAll()


@pytest_twisted.ensureDeferred
async def test_closedPortThenLiveHost(smtpServer) -> None:
    pool = realPool()
    dead = unusedPort()
    destination = Destination((("127.0.0.1", dead), (smtpServer.host, smtpServer.port)))
    client = await pool.acquire(destination)
    assert client.remoteAddress == "127.0.0.1"
    pool.release(client)
    await pool.closeAll()
    with pytest.raises(AttemptFailed) as caught:
        await realPool().acquire(Destination((("127.0.0.1", dead),)))
    assert (caught.value.state, caught.value.result) == ("connect", "error")


def test_figures_of_servers_and_bytes_sent() -> None:
    """
    What the pool reports for metrics: connections (open and idle) by the
    first server of a destination, and the body bytes of every connection,
    those closed since included.
    """
    connect = FakeConnect()
    pool = makePool(connect)
    pool.acquire(DEST)
    pool.acquire(DEST)
    first, second = connect.succeed(0), connect.succeed(1)
    first.bodyBytesSent, second.bodyBytesSent = 1000, 500
    pool.release(first)
    assert [(f.server, f.connections, f.idle) for f in pool.serverFigures()] == [("192.0.2.1:25", 2, 1)]
    assert pool.bodyBytesSent() == 1500
    second.die()
    pool.release(second, clean=False)
    assert pool.bodyBytesSent() == 1500
    assert [(f.server, f.connections, f.idle) for f in pool.serverFigures()] == [("192.0.2.1:25", 1, 1)]
