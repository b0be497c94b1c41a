"""
A small internet on loopback for routing and delivery-policy tests: a real
DNS server (C{twisted.names}) answering from records the test sets, and
mail hosts on loopback addresses (127.0.0.2, 127.0.0.3, ... all reach this
machine on Linux) that share one port, as MX hosts share port 25.

Fixtures:

  - C{dnsServer}: a L{LoopbackDNS} listening on UDP and TCP of 127.0.0.1; give
    C{dnsServer.nameserver} to L{mqtwist.config.Config.nameservers} and set
    records with C{dnsServer.mx(...)}, C{dnsServer.address(...)},
    C{dnsServer.fail(...)}.
  - C{mailHosts}: a L{MailHosts} whose C{port} is free on the loopback
    addresses; C{mailHosts.sink(address)} starts the aiosmtpd test server
    (L{fixtures_smtp}) there, C{mailHosts.scripted(address, greet=...)} an
    in-process L{ScriptedSMTPServer} whose greeting the test decides (never,
    421 on some connections) and which records when things happened.
    Everything is stopped after the test.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from fixtures_smtp import DEFAULT_TIMEOUT, SERVER_PROGRAM, SMTPServer
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.names import dns, server
from twisted.names.common import ResolverBase
from twisted.names.error import DomainError
from twisted.protocols.basic import LineReceiver

__all__ = [
    "LoopbackDNS", "MailHosts", "ScriptedSMTPServer", "mxDomain", "mxConfig",
]


def listenUDPAndTCP(factory: Any) -> list[Any]:
    """
    Serve DNS with C{factory} on 127.0.0.1, UDP and TCP on the same port
    number: a free UDP port's number may be taken for TCP (by a
    connection's own end), so other numbers are tried.

    @return: the UDP and the TCP port.
    """
    for _ in range(20):
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        try:
            tcp = reactor.listenTCP(udp.getHost().port, factory, interface="127.0.0.1")
        except CannotListenError:
            udp.stopListening()
            continue
        return [udp, tcp]
    raise CannotListenError("127.0.0.1", 0, "no port number free for both UDP and TCP in 20 tries")


class LoopbackDNS(ResolverBase):
    """
    The records a test sets, served by a real DNS server.

    A name with no records at all does not exist (NXDOMAIN); a name with
    records of other types answers with no data.

    @ivar queries: (name, type) of every query, in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, list[dns.RRHeader]] = {}
        self.failures: dict[str, str] = {}
        self.queries: list[tuple[str, int]] = []
        self.nameserver = ""
        self._ports: list[Any] = []

    def mx(self, domain: str, *exchangers: tuple[int, str], ttl: int = 300) -> None:
        """
        Give C{domain} MX records: (preference, host name); a host name of
        C{"."} makes a null MX.
        """
        for preference, name in exchangers:
            payload = dns.Record_MX(preference, b"" if name == "." else name.encode(), ttl=ttl)
            self._add(domain, dns.MX, payload, ttl)

    def address(self, name: str, *addresses: str, ttl: int = 300) -> None:
        """
        Give C{name} A (IPv4) or AAAA (IPv6) records.
        """
        for address in addresses:
            if ":" in address:
                self._add(name, dns.AAAA, dns.Record_AAAA(address, ttl=ttl), ttl)
            else:
                self._add(name, dns.A, dns.Record_A(address, ttl=ttl), ttl)

    def fail(self, name: str, how: str) -> None:
        """
        Make every query for C{name} fail: C{"servfail"}, C{"nxdomain"} or
        C{"timeout"} (never answered).
        """
        assert how in ("servfail", "nxdomain", "timeout")
        self.failures[name.lower()] = how

    def _add(self, name: str, kind: int, payload: Any, ttl: int) -> None:
        self.records.setdefault(name.lower(), []).append(
            dns.RRHeader(name.encode(), kind, dns.IN, ttl, payload, auth=True)
        )

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Any]:
        key = name.decode().lower()
        self.queries.append((key, type))
        how = self.failures.get(key)
        if how == "timeout":
            return Deferred()
        if how == "servfail":
            return Deferred.fromCoroutine(_raise(RuntimeError(f"scripted SERVFAIL for {key}")))
        if how == "nxdomain" or key not in self.records:
            return Deferred.fromCoroutine(_raise(DomainError(key)))
        answers = [record for record in self.records[key] if record.type == type]
        return succeed((answers, [], []))

    def listen(self) -> None:
        factory = _QuietServerFactory(clients=[self])
        factory.noisy = False
        self._ports = listenUDPAndTCP(factory)
        self.nameserver = f"127.0.0.1:{self._ports[0].getHost().port}"

    def stop(self) -> Deferred[Any]:
        return Deferred.fromCoroutine(_stopAll(self._ports))


class _QuietServerFactory(server.DNSServerFactory):
    """Answers SERVFAIL for a scripted failure without logging it as an error."""

    def gotResolverError(self, failure: Any, protocol: Any, message: Any, address: Any) -> None:
        if failure.check(DomainError):
            super().gotResolverError(failure, protocol, message, address)
            return
        self.sendReply(protocol, self._responseFromMessage(message=message, rCode=dns.ESERVER), address)


async def _raise(error: Exception) -> Any:
    raise error


async def _stopAll(ports: list[Any]) -> None:
    for port in ports:
        await port.stopListening()


@pytest.fixture
def dnsServer():
    """A L{LoopbackDNS} serving on 127.0.0.1, stopped after the test."""
    zone = LoopbackDNS()
    zone.listen()
    yield zone
    pytest_twisted.blockon(zone.stop())


@dataclass
class ScriptedConnection:
    number: int
    opened: float
    closed: float | None = None
    greeted: str | None = None
    #: times the messages of this connection were accepted
    messages: list[float] = field(default_factory=list)
    #: (time, recipient, reply code) of every RCPT TO
    rcpts: list[tuple[float, str, int]] = field(default_factory=list)


class _ScriptedSMTP(LineReceiver):
    """
    A plain SMTP server that greets as its server says and accepts every
    message; PIPELINING when its server says so (replies stay in order: no
    line is read while the reply to a message is held back).
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 1 << 20

    def connectionMade(self) -> None:
        self.server: ScriptedSMTPServer = self.factory.server  # type: ignore[attr-defined]
        self.record = self.server.opened(self)
        self.inData = False
        greeting = self.server.greet(self.record.number)
        self.record.greeted = greeting
        if greeting is None:
            return
        self.sendLine(greeting.encode())
        if not greeting.startswith("2"):
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.server.closed(self)

    def queued(self) -> None:
        if self.transport.connected:
            self.sendLine(b"250 2.0.0 queued")
            self.resumeProducing()

    def lineReceived(self, line: bytes) -> None:
        if self.inData:
            if line == b".":
                self.inData = False
                self.record.messages.append(reactor.seconds())
                self.server.messageReceived()
                if self.server.messageDelay:
                    # what the client pipelined after the message waits for its reply
                    self.pauseProducing()
                    self.server.timers.append(reactor.callLater(self.server.messageDelay, self.queued))
                else:
                    self.queued()
            return
        verb = line[:4].upper()
        if verb == b"DATA":
            self.inData = True
            self.sendLine(b"354 go ahead")
        elif verb == b"QUIT":
            self.sendLine(b"221 2.0.0 bye")
            self.transport.loseConnection()
        elif verb == b"EHLO" and self.server.pipelining:
            self.sendLine(b"250-" + self.server.hostname.encode())
            self.sendLine(b"250 PIPELINING")
        elif verb in (b"EHLO", b"HELO"):
            self.sendLine(b"250 " + self.server.hostname.encode())
        elif verb == b"RCPT":
            recipient = line.decode().partition(":")[2].strip().strip("<>")
            reply = self.server.rcptReply(recipient)
            self.record.rcpts.append((reactor.seconds(), recipient, int(reply[:3])))
            self.sendLine(reply.encode())
        else:
            self.sendLine(b"250 2.0.0 ok")


class ScriptedSMTPServer:
    """
    An in-process SMTP server on one loopback address.

    @param greet: the greeting line for connection number C{n} (from 1),
        or C{None} to never greet.
    @param rcpt: the reply to RCPT TO of a recipient, given the recipient
        and how many times it was sent before; every recipient is accepted
        when it is not given.
    @param messageDelay: seconds the server takes to accept a message.
    @param pipelining: whether EHLO announces PIPELINING.
    @ivar connections: every connection, by number.
    @ivar mostAtOnce: the most connections that were open at the same time.
    """

    def __init__(
        self,
        greet: Callable[[int], str | None],
        hostname: str,
        rcpt: Callable[[str, int], str] | None = None,
        messageDelay: float = 0.0,
        pipelining: bool = False,
    ) -> None:
        self.greet = greet
        self.rcpt = rcpt
        self.messageDelay = messageDelay
        self.pipelining = pipelining
        self.timers: list[Any] = []
        self._rcptSeen: dict[str, int] = {}
        self.hostname = hostname
        self.connections: dict[int, ScriptedConnection] = {}
        self.open: set[_ScriptedSMTP] = set()
        self.mostAtOnce = 0
        self.port: Any = None
        self._waits: list[tuple[Callable[[], bool], Deferred[None]]] = []

    @property
    def messageTimes(self) -> list[float]:
        return sorted(t for c in self.connections.values() for t in c.messages)

    def opened(self, protocol: _ScriptedSMTP) -> ScriptedConnection:
        self.open.add(protocol)
        self.mostAtOnce = max(self.mostAtOnce, len(self.open))
        number = len(self.connections) + 1
        self.connections[number] = ScriptedConnection(number, reactor.seconds())
        self._check()
        return self.connections[number]

    def closed(self, protocol: _ScriptedSMTP) -> None:
        self.open.discard(protocol)
        protocol.record.closed = reactor.seconds()
        self._check()

    @property
    def rcptTimes(self) -> list[tuple[float, str, int]]:
        return sorted(r for c in self.connections.values() for r in c.rcpts)

    def rcptReply(self, recipient: str) -> str:
        seen = self._rcptSeen.get(recipient, 0)
        self._rcptSeen[recipient] = seen + 1
        return self.rcpt(recipient, seen) if self.rcpt is not None else "250 2.1.5 ok"

    def messageReceived(self) -> None:
        self._check()

    def waitUntil(self, predicate: Callable[[], bool], what: str, timeout: float = DEFAULT_TIMEOUT) -> Deferred[None]:
        """
        @return: a Deferred firing once C{predicate()} is true; it fails
            naming C{what} after C{timeout} seconds.
        """
        if predicate():
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        entry = (predicate, waiter)
        self._waits.append(entry)

        def timedOut() -> None:
            if entry in self._waits:
                self._waits.remove(entry)
                waiter.errback(AssertionError(
                    f"scripted SMTP server {self.hostname}: still waiting after {timeout:g}s for {what}; "
                    f"{len(self.messageTimes)} messages, {len(self.connections)} connections"
                ))

        timer = reactor.callLater(timeout, timedOut)
        return waiter.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])

    def _check(self) -> None:
        for entry in list(self._waits):
            if entry[0]():
                self._waits.remove(entry)
                entry[1].callback(None)

    async def stop(self) -> None:
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        await self.port.stopListening()
        for protocol in list(self.open):
            protocol.transport.abortConnection()


class MailHosts:
    """
    Mail servers on loopback addresses, all on one port.
    """

    def __init__(self) -> None:
        self.port = _portFreeOn("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
        self.servers: list[Any] = []

    def sink(self, address: str, hostname: str = "mx.sink.test") -> Deferred[SMTPServer]:
        """
        Start the aiosmtpd test server of L{fixtures_smtp} on C{address}.

        @return: a Deferred firing with its L{SMTPServer} once it listens.
        """
        sink = SMTPServer()
        sink.host = address
        arguments = [sys.executable, SERVER_PROGRAM, "--host", address, "--port", str(self.port)]
        arguments += ["--hostname", hostname]
        reactor.spawnProcess(sink, sys.executable, arguments, env=os.environ, childFDs={0: "w", 1: "r", 2: "r"})
        self.servers.append(sink)
        return sink._listening

    def scripted(
        self,
        address: str,
        greet: Callable[[int], str | None] = lambda n: "220 mx.scripted.test ready",
        hostname: str = "mx.scripted.test",
        rcpt: Callable[[str, int], str] | None = None,
        messageDelay: float = 0.0,
        pipelining: bool = False,
    ) -> ScriptedSMTPServer:
        """
        Start a L{ScriptedSMTPServer} on C{address}.
        """
        scripted = ScriptedSMTPServer(greet, hostname, rcpt, messageDelay, pipelining)
        factory = Factory.forProtocol(_ScriptedSMTP)
        factory.server = scripted  # type: ignore[attr-defined]
        factory.noisy = False
        scripted.port = reactor.listenTCP(self.port, factory, interface=address)
        self.servers.append(scripted)
        return scripted

    async def stop(self) -> None:
        for each in self.servers:
            await each.stop()


def _portFreeOn(*addresses: str) -> int:
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port: int = probe.getsockname()[1]
        try:
            for address in addresses[1:]:
                with socket.socket() as other:
                    other.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no TCP port free on all of {addresses}")


@pytest.fixture
def mailHosts():
    """A L{MailHosts}; its servers are stopped after the test."""
    hosts = MailHosts()
    yield hosts
    pytest_twisted.blockon(Deferred.fromCoroutine(hosts.stop()))


def mxDomain(dnsServer: LoopbackDNS, domain: str, *addresses: str) -> None:
    """
    Give C{domain} one MX, C{mx.<domain>}, at C{addresses}.
    """
    dnsServer.mx(domain, (10, f"mx.{domain}"))
    dnsServer.address(f"mx.{domain}", *addresses)


def mxConfig(brokerURL: str, queues: dict[str, str], dnsServer: LoopbackDNS, mailHosts: MailHosts, **settings: Any) -> Any:
    """
    A L{mqtwist.config.Config} for MX delivery through C{dnsServer} to
    C{mailHosts}, with 1 s retries and C{queues} as its queue names.
    """
    from mqtwist.config import Config

    config = Config(
        amqp=brokerURL,
        nameservers=[dnsServer.nameserver],
        mxPort=mailHosts.port,
        ehloName="client.test",
        delayBuckets=[1],
        retries=[1],
        **queues,
    )
    for key, value in settings.items():
        setattr(config, key, value)
    return config
