"""
What L{BrokerClient} logs when it cannot connect or is not let in, against
the session's real RabbitMQ node (a wrong password, a missing vhost, a vhost
without permissions, a silent server) and a port where nothing listens;
and, with a fake clock, how often it warns while it keeps trying.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, error, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from mqtwist.amqp.client import BrokerClient, QueueSpec
from mqtwist.amqp.protocol import LoginFailed
from mqtwist.amqp.url import BrokerURL

# txamqp still uses defer.returnValue
pytestmark = pytest.mark.filterwarnings(
    "ignore:twisted.internet.defer.returnValue was deprecated:DeprecationWarning"
)

PASSWORD = "not-the-password-3f9c"


class Logged:
    """
    The log events emitted while it observes the global log publisher; a
    test can wait for an event it expects.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._waiting: list[tuple[Callable[[dict[str, Any]], bool], defer.Deferred]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        # settled before any waiter runs: a waiter that logs comes back here
        matched = [(p, d) for p, d in self._waiting if not d.called and p(event)]
        self._waiting = [w for w in self._waiting if w not in matched and not w[1].called]
        for _, d in matched:
            d.callback(event)

    def when(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0):
        """
        @return: a Deferred firing with the first event (logged so far or
            later) that C{predicate} accepts; it fails the test after
            C{timeout} seconds.
        """
        for event in self.events:
            if predicate(event):
                return defer.succeed(event)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((predicate, d))
        return d.addTimeout(timeout, reactor)

    def texts(self, namespace: str = "mqtwist.amqp.client") -> list[tuple[LogLevel, str]]:
        return [
            (e["log_level"], formatEvent(e))
            for e in self.events
            if e.get("log_namespace", "").startswith(namespace)
        ]


@pytest.fixture
def logged():
    logs = Logged()
    globalLogPublisher.addObserver(logs)
    try:
        yield logs
    finally:
        globalLogPublisher.removeObserver(logs)


@pytest.fixture
def clients():
    """
    Makes started BrokerClients for any URL; stops them all afterwards.
    """
    made: list[BrokerClient] = []

    def make(url: BrokerURL, queues: Sequence[QueueSpec] = (), **kwargs: Any) -> BrokerClient:
        client = BrokerClient(
            url, queues, consumeFrom=None, prefetch=1, onDelivery=lambda d: None,
            reactor=reactor, **kwargs,
        )
        client.startService()
        made.append(client)
        return client

    yield make
    for client in made:
        if client.running:
            pytest_twisted.blockon(client.stopService())


def failedAttempt(n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("attempt") == n and "cause" in e


def assertClean(logged: Logged, client: BrokerClient) -> None:
    """
    Nothing went to the reactor or past an errback (collected Deferreds with
    unhandled failures are logged as they are collected), no password was
    logged, and no retry is left scheduled.
    """
    gc.collect()
    bad = [
        formatEvent(e) for e in logged.events
        if e["log_level"] in (LogLevel.error, LogLevel.critical) or e.get("log_failure") is not None
    ]
    assert bad == []
    everything = "\n".join(formatEvent(e) for e in logged.events)
    for text in ("NoTransition", "Unhandled", PASSWORD):
        assert text not in everything
    assert [c for c in reactor.getDelayedCalls() if c.func == client._connect] == []


@pytest_twisted.inlineCallbacks
def test_wrong_password(clients, logged, rabbitmq):
    client = clients(dataclasses.replace(rabbitmq, password=PASSWORD), reconnectMaxDelay=1.0)
    first = yield logged.when(failedAttempt(1))
    second = yield logged.when(failedAttempt(2))
    yield client.stopService()
    assert first["log_level"] == second["log_level"] == LogLevel.warn
    text = formatEvent(first)
    assert text.startswith(
        f"AMQP broker {client.url.redacted()} refused the login of user 'guest' (403 ACCESS_REFUSED"
    )
    assert client.url.redacted().startswith("amqp://guest:***@")
    assert "check the user and password in the broker URL (--amqp)" in text
    assert "Attempt 1 failed; trying again in " in text
    assert "mqtwist keeps trying" in text
    assert isinstance(first["delay"], int)
    assert logged.texts()[-1] == (
        LogLevel.info, f"stopped connecting to AMQP broker {client.url.redacted()}"
    )
    assertClean(logged, client)


@pytest_twisted.inlineCallbacks
def test_missing_vhost(clients, logged, rabbitmq):
    client = clients(dataclasses.replace(rabbitmq, vhost="t-no-such-vhost"), reconnectMaxDelay=1.0)
    first = yield logged.when(failedAttempt(1))
    yield logged.when(failedAttempt(2))
    yield client.stopService()
    assert first["log_level"] == LogLevel.warn
    text = formatEvent(first)
    assert text.startswith(
        f"AMQP broker {client.url.redacted()} has no vhost 't-no-such-vhost' (530 NOT_ALLOWED"
    )
    assert "create it (rabbitmqctl add_vhost t-no-such-vhost" in text
    assert "or fix the vhost in the broker URL (--amqp" in text
    assertClean(logged, client)


@pytest_twisted.inlineCallbacks
def test_vhost_without_permission_then_granted(clients, logged, rabbitmq, rabbitmqNode):
    """
    A vhost the user may not enter is named as such; once the user is let
    in, the client, which kept trying, connects, and says so at the level
    of its warnings.
    """
    vhost = "t-late-permission"
    yield rabbitmqNode.rabbitmqctl("add_vhost", vhost)
    try:
        client = clients(dataclasses.replace(rabbitmq, vhost=vhost), reconnectMaxDelay=1.0)
        first = yield logged.when(failedAttempt(1))
        assert first["log_level"] == LogLevel.warn
        text = formatEvent(first)
        assert f"does not let user 'guest' into vhost '{vhost}' (530 NOT_ALLOWED" in text
        assert f"rabbitmqctl set_permissions -p {vhost} guest '.*' '.*' '.*'" in text
        yield rabbitmqNode.rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield client.whenConnected()
        (connected,) = [
            (level, text) for level, text in logged.texts() if text.startswith("connected to")
        ]
        assert connected[0] == LogLevel.warn
        assert connected[1].startswith(
            f"connected to AMQP broker {client.url.redacted()} after {failuresLogged(logged)} failed attempt(s);"
        )
        yield client.stopService()
    finally:
        yield rabbitmqNode.rabbitmqctl("delete_vhost", vhost)
    assertClean(logged, client)


@pytest_twisted.inlineCallbacks
def test_queue_the_broker_has_with_other_arguments(clients, logged, rabbitmq, amqp):
    """
    A queue declared with other arguments than the broker's copy closes the
    channel while the connection is set up: one warning, from the failed
    attempt, names the broker's reason.
    """
    yield amqp.delete("t-setup-mismatch")
    yield amqp.declare("t-setup-mismatch", {"x-max-length": 5})
    client = clients(rabbitmq, [QueueSpec("t-setup-mismatch")], reconnectMaxDelay=1.0)
    first = yield logged.when(failedAttempt(1))
    yield client.stopService()
    yield amqp.delete("t-setup-mismatch")
    warnings = [text for level, text in logged.texts() if level == LogLevel.warn]
    assert warnings == [formatEvent(first)]
    assert warnings[0].startswith(
        f"AMQP broker {rabbitmq.redacted()} refused to set up mqtwist's queues or "
        f"consumer (406 PRECONDITION_FAILED - inequivalent arg 'x-max-length' for "
        f"queue 't-setup-mismatch'"
    )
    assert "move its messages elsewhere and delete it, so that mqtwist declares it" in warnings[0]
    assertClean(logged, client)


def failuresLogged(logged: Logged) -> int:
    return max(e["attempt"] for e in logged.events if "attempt" in e and "cause" in e)


@pytest_twisted.inlineCallbacks
def test_nothing_listening(clients, logged):
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    number = port.getHost().port
    yield port.stopListening()
    url = BrokerURL(host="127.0.0.1", port=number, password=PASSWORD)
    client = clients(url, reconnectMaxDelay=1.0)
    first = yield logged.when(failedAttempt(1))
    second = yield logged.when(failedAttempt(2))
    yield client.stopService()
    assert first["log_level"] == second["log_level"] == LogLevel.warn
    text = formatEvent(first)
    assert text.startswith(
        f"cannot reach AMQP broker {url.redacted()}: 127.0.0.1:{number} refused the "
        f"connection (nothing listens there): check that the broker runs and listens "
        f"at 127.0.0.1:{number}"
    )
    assert "Attempt 1 failed; trying again in " in text
    assert "Attempt 2 failed" in formatEvent(second)
    assertClean(logged, client)


class Silent(Protocol):
    """A server that takes the connection and never says a word."""

    def connectionMade(self) -> None:
        if not self.factory.connected.called:  # type: ignore[attr-defined]
            self.factory.connected.callback(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure) -> None:
        if not self.factory.lost.called:  # type: ignore[attr-defined]
            self.factory.lost.callback(None)  # type: ignore[attr-defined]


def silentServer():
    factory = Factory.forProtocol(Silent)
    factory.connected = defer.Deferred()  # type: ignore[attr-defined]
    factory.lost = defer.Deferred()  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return port, factory


@pytest_twisted.inlineCallbacks
def test_stop_during_the_handshake(clients, logged):
    port, server = silentServer()
    try:
        client = clients(BrokerURL(host="127.0.0.1", port=port.getHost().port))
        yield server.connected
        waiting = client.whenConnected()
        yield client.stopService()
        yield server.lost
        with pytest.raises(defer.CancelledError):
            yield waiting
    finally:
        yield port.stopListening()
    assert not [text for _, text in logged.texts() if "Attempt" in text]
    assertClean(logged, client)


@pytest_twisted.inlineCallbacks
def test_handshake_timeout(clients, logged):
    port, server = silentServer()
    try:
        url = BrokerURL(host="127.0.0.1", port=port.getHost().port, connectTimeout=0.2)
        client = clients(url)
        first = yield logged.when(failedAttempt(1))
        # the client hung up before it tries again
        yield server.lost
        yield client.stopService()
    finally:
        yield port.stopListening()
    assert first["log_level"] == LogLevel.warn
    assert formatEvent(first).startswith(
        f"AMQP broker {url.redacted()} accepted the connection but did not finish "
        f"the AMQP handshake within 0.2 s: check that 127.0.0.1:{url.port} is the "
        f"AMQP port of a broker"
    )
    assertClean(logged, client)


class FailingEndpoint:
    """Fails every connection attempt with the next of C{errors}."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors

    def connect(self, factory: Any):
        return defer.fail(self.errors.pop(0))


def test_warnings_become_rarer(logged):
    """
    Attempts 1, 2, 4, 8, ... and those whose cause differs from the one
    before are warned about; the others are logged at info.  The waits
    grow to reconnectMaxDelay (plus up to 1 s of jitter).  Stopping ends
    the retries.
    """
    clock = MemoryReactorClock()
    client = BrokerClient(
        BrokerURL(host="broker.example", port=5672), [], consumeFrom=None, prefetch=1,
        onDelivery=lambda d: None, reactor=clock, reconnectMaxDelay=5.0,
    )
    refused = error.ConnectionRefusedError()
    client._endpoint = FailingEndpoint(
        [refused] * 5 + [error.DNSLookupError("broker.example")] + [refused] * 4
    )
    client.startService()
    for _ in range(9):
        (retry,) = clock.getDelayedCalls()
        clock.advance(retry.getTime() - clock.seconds())
    client.stopService()
    assert clock.getDelayedCalls() == []
    attempts = [e for e in logged.events if "attempt" in e]
    assert [(e["attempt"], e["log_level"]) for e in attempts] == [
        (1, LogLevel.warn), (2, LogLevel.warn), (3, LogLevel.info), (4, LogLevel.warn),
        (5, LogLevel.info), (6, LogLevel.warn), (7, LogLevel.warn), (8, LogLevel.warn),
        (9, LogLevel.info), (10, LogLevel.info),
    ]
    assert "does not resolve" in formatEvent(attempts[5])
    # 1.5 s, then 1.5 times more each time up to 5 s, plus 0..1 s of jitter
    assert all(2 <= e["delay"] <= 6 for e in attempts)


def test_stopped_by_onAttemptFailed(logged):
    """
    A client that its C{onAttemptFailed} callback stops (as the mqtwist
    command does when it gives up) schedules no retry: it would otherwise
    connect again later, declare its queues and consume.
    """
    clock = MemoryReactorClock()
    causes: list[str] = []

    def gaveUp(cause: str) -> None:
        causes.append(cause)
        client.stopService()

    client = BrokerClient(
        BrokerURL(host="broker.example", port=5672), [], consumeFrom=None, prefetch=1,
        onDelivery=lambda d: None, reactor=clock, onAttemptFailed=gaveUp,
    )
    client._endpoint = FailingEndpoint([error.ConnectionRefusedError()])
    client.startService()
    assert len(causes) == 1 and "broker.example" in causes[0]
    assert not client.running
    assert clock.getDelayedCalls() == []


@pytest_twisted.inlineCallbacks
def test_login_closed_without_a_word():
    """
    A broker that does not report login failures (no
    authentication_failure_close) closes the connection after start-ok:
    the error says that this means a wrong user or password.
    """
    from helpers_amqpprotocol import makeProtocol

    protocol, _, _, _ = makeProtocol()
    url = BrokerURL(host="127.0.0.1", port=5672, username="mailer", password=PASSWORD)
    login = protocol.login(url)
    protocol.connectionLost(Failure(error.ConnectionDone()))
    with pytest.raises(LoginFailed) as info:
        yield login
    text = str(info.value)
    assert "closed the connection during the login of user 'mailer' without saying why" in text
    assert "wrong user or password" in text
    assert PASSWORD not in text
