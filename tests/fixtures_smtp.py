"""
Real SMTP servers for tests.

The server is aiosmtpd, run as its own process (C{tests/smtp_sink_server.py},
whose docstring lists its events and scripted failures) through
C{reactor.spawnProcess}.  It reports every connection, command and message
as a JSON line, so tests wait for events instead of polling, and it exits
when the test process's end of its stdin closes, even if the test process
is killed.

Fixtures:

  - C{smtpServer}: a fresh server for one test (about 0.3 s to start),
    announcing PIPELINING, 8BITMIME.
  - C{startSMTPServer}: a function to start servers with options
    (C{noEhlo=True}: EHLO is answered 502, so the client must use HELO;
    C{pipelining=False}; C{hostname=...}; C{lineLengthLimit=...}); every
    server it started is stopped after the test.  Use it in an async test:
    C{server = await startSMTPServer(noEhlo=True)}.

Scripted failures by the local part of an address (see the server module
for the full list): sender C{rejectsender@} 550 and C{tempsender@} 451 at
MAIL; recipient C{reject@} 550 5.1.1, C{tempfail@} 451 4.3.0,
C{disconnect@} drops the connection, C{hang@} never answers, C{close421@}
421 and close, all at RCPT; C{rejectdata@} 554 5.6.0, C{tempdata@} 452
4.3.1 and C{hangdata@} (no answer) after the body.

A L{SMTPServer} has C{host}, C{port}, C{messages} (accepted, in order),
C{rejected}, C{connections} (by number: peer, commands seen, closed) and
C{waitForMessages(n)}, C{waitUntil(predicate, what)} returning Deferreds
that fail with a clear message after C{timeout} seconds (10 by default).
A server started with C{holdData=True} holds its reply to every body
(C{held} counts them) until C{release()}; from then on it answers at once.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

SERVER_PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smtp_sink_server.py")

#: seconds a wait on the server may take before the test fails
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ReceivedMessage:
    """
    One message as the server got it.

    @ivar data: the body exactly as received on the wire, after removing the
        dot-stuffing and the terminating dot line (line ends untouched).
    @ivar connection: the number of the connection that carried it.
    """

    connection: int
    peer: tuple[str, int]
    mailFrom: str
    rcptTos: tuple[str, ...]
    mailOptions: tuple[str, ...]
    rcptOptions: tuple[str, ...]
    data: bytes

    @classmethod
    def fromEvent(cls, event: dict[str, Any]) -> ReceivedMessage:
        return cls(
            connection=event["connection"],
            peer=(event["peer"][0], event["peer"][1]),
            mailFrom=event["mail_from"],
            rcptTos=tuple(event["rcpt_tos"]),
            mailOptions=tuple(event["mail_options"]),
            rcptOptions=tuple(event["rcpt_options"]),
            data=base64.b64decode(event["data"]),
        )


@dataclass
class ServerConnection:
    """What the server saw on one connection."""

    number: int
    peer: tuple[str, int]
    #: the commands with an event, in order: "ehlo", "helo", "rset", "quit"
    commands: list[str] = field(default_factory=list)
    messages: int = 0
    closed: bool = False

    @property
    def rsets(self) -> int:
        return self.commands.count("rset")

    @property
    def quits(self) -> int:
        return self.commands.count("quit")


class SMTPServer(ProcessProtocol):
    """
    A running C{smtp_sink_server.py} process and what it reported.
    """

    host = "127.0.0.1"

    def __init__(self) -> None:
        self.port: int | None = None
        self.messages: list[ReceivedMessage] = []
        self.rejected: list[ReceivedMessage] = []
        #: bodies whose reply was held (C{holdData=True}), by their recipients
        self.held: list[tuple[str, ...]] = []
        self.connections: dict[int, ServerConnection] = {}
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self._stdout: list[bytes] = []
        self._listening: Deferred[SMTPServer] = Deferred()
        self._ended: Deferred[None] = Deferred()
        self._running = False
        self._waits: list[tuple[Callable[[SMTPServer], bool], Deferred[SMTPServer]]] = []

    # -- process -----------------------------------------------------------

    def connectionMade(self) -> None:
        self._running = True

    def outReceived(self, data: bytes) -> None:
        # a large message is one long line: join its chunks once, at its end
        self._stdout.append(data)
        if b"\n" not in data:
            return
        lines = b"".join(self._stdout).split(b"\n")
        rest = lines.pop()
        self._stdout = [rest] if rest else []
        for line in lines:
            self._eventReceived(json.loads(line))

    def errReceived(self, data: bytes) -> None:
        self.stderr = (self.stderr + data)[-20000:]

    def processEnded(self, reason: Failure) -> None:
        self._running = False
        if not self._listening.called:
            self._listening.errback(
                RuntimeError(f"the SMTP test server exited before listening: {self._describe()}")
            )
        waits, self._waits = self._waits, []
        for _, waiter in waits:
            waiter.errback(RuntimeError(f"the SMTP test server exited: {self._describe()}"))
        self._ended.callback(None)

    def _eventReceived(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        kind = event["event"]
        if kind == "listening":
            self.port = event["port"]
            self._listening.callback(self)
            return
        number = event["connection"]
        if kind == "connect":
            self.connections[number] = ServerConnection(number, tuple(event["peer"]))
        elif kind == "disconnect":
            self.connections[number].closed = True
        elif kind in ("ehlo", "helo", "rset", "quit"):
            self.connections[number].commands.append(kind)
        elif kind == "message":
            self.messages.append(ReceivedMessage.fromEvent(event))
            self.connections[number].messages += 1
        elif kind == "rejected":
            self.rejected.append(ReceivedMessage.fromEvent(event))
        elif kind == "held":
            self.held.append(tuple(event["rcpt_tos"]))
        for entry in list(self._waits):
            predicate, waiter = entry
            if predicate(self):
                self._waits.remove(entry)
                waiter.callback(self)

    def _describe(self) -> str:
        return f"last events {self.events[-5:]!r}, stderr {self.stderr[-2000:].decode('utf-8', 'replace')!r}"

    # -- for tests ---------------------------------------------------------

    def waitUntil(
        self, predicate: Callable[[SMTPServer], bool], what: str, timeout: float = DEFAULT_TIMEOUT
    ) -> Deferred[SMTPServer]:
        """
        @return: a Deferred firing with this server as soon as
            C{predicate(server)} is true (checked now and after every event);
            it fails with an C{AssertionError} naming C{what} after
            C{timeout} seconds.
        """
        if predicate(self):
            return succeed(self)
        waiter: Deferred[SMTPServer] = Deferred()
        entry = (predicate, waiter)
        self._waits.append(entry)

        def timedOut() -> None:
            if entry in self._waits:
                self._waits.remove(entry)
                waiter.errback(
                    AssertionError(
                        f"SMTP test server on port {self.port}: still waiting after {timeout:g} s "
                        f"for {what}; {len(self.messages)} messages, "
                        f"{len(self.connections)} connections; {self._describe()}"
                    )
                )

        timer = reactor.callLater(timeout, timedOut)
        waiter.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return waiter

    def waitForMessages(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> Deferred[list[ReceivedMessage]]:
        """
        @return: a Deferred firing with the accepted messages once there are
            at least C{count} of them.
        """
        return self.waitUntil(
            lambda server: len(server.messages) >= count, f"{count} accepted messages", timeout
        ).addCallback(lambda server: list(server.messages))

    def waitForClosedConnections(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> Deferred[SMTPServer]:
        """
        @return: a Deferred firing once at least C{count} connections closed.
        """
        return self.waitUntil(
            lambda server: sum(c.closed for c in server.connections.values()) >= count,
            f"{count} closed connections",
            timeout,
        )

    def release(self) -> None:
        """
        Answer the bodies held (C{holdData=True}), and every body to come at
        once.
        """
        self.transport.write(b"release\n")

    def stop(self) -> Deferred[None]:
        """
        Stop the server (closing its stdin, then killing it if need be).

        @return: a Deferred firing when the process has ended.
        """
        if self._running:
            self.transport.closeStdin()
            killer = reactor.callLater(5, self._kill)
            self._ended.addBoth(lambda result: (killer.active() and killer.cancel(), result)[1])
        return self._ended

    def _kill(self) -> None:
        if self._running:
            self.transport.signalProcess("KILL")


def unusedPort(host: str = "127.0.0.1") -> int:
    """
    A TCP port on C{host} that nothing listens on (for connection-refused
    tests): bound once by the system's choice, then released.
    """
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


def spawnSMTPServer(
    *,
    noEhlo: bool = False,
    pipelining: bool = True,
    hostname: str = "mx.sink.test",
    lineLengthLimit: int = 1001,
    timeout: float = DEFAULT_TIMEOUT,
    host: str = "127.0.0.1",
    **flags: Any,
) -> Deferred[SMTPServer]:
    """
    Start a test SMTP server process.

    @param flags: more options of the server, by their name in camelCase:
        C{tlsCert="cert.pem"} is C{--tls-cert cert.pem}, C{dsn=True} is
        C{--dsn} (see the server module).
    @return: a Deferred firing with the L{SMTPServer} once it listens.
    """
    server = SMTPServer()
    server.host = host
    arguments = [sys.executable, SERVER_PROGRAM, "--port", "0", "--hostname", hostname, "--host", host]
    for name, value in flags.items():
        option = "--" + re.sub(r"(?=[A-Z])|(?<=^no)(?=8)", "-", name).lower()
        if value is True:
            arguments.append(option)
        elif value not in (False, None):
            arguments += [option, str(value)]
    arguments += ["--line-length-limit", str(lineLengthLimit)]
    if noEhlo:
        arguments.append("--no-ehlo")
    if not pipelining:
        arguments.append("--no-pipelining")
    reactor.spawnProcess(server, sys.executable, arguments, env=os.environ, childFDs={0: "w", 1: "r", 2: "r"})

    def tooSlow() -> None:
        if not server._listening.called:
            server._listening.errback(
                AssertionError(f"the SMTP test server did not listen within {timeout:g} s: {server._describe()}")
            )
            server.stop()

    timer = reactor.callLater(timeout, tooSlow)
    return server._listening.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])


@pytest.fixture
def startSMTPServer():
    """
    A function that starts test SMTP servers (see L{spawnSMTPServer}); they
    are stopped after the test.
    """
    servers: list[Deferred[SMTPServer]] = []

    def start(**options: Any) -> Deferred[SMTPServer]:
        started = spawnSMTPServer(**options)
        servers.append(started)
        return started

    yield start
    for started in servers:
        if started.called and isinstance(started.result, SMTPServer):
            pytest_twisted.blockon(started.result.stop())


@pytest.fixture
def smtpServer(startSMTPServer) -> SMTPServer:
    """A running test SMTP server with PIPELINING, stopped after the test."""
    return pytest_twisted.blockon(startSMTPServer())
