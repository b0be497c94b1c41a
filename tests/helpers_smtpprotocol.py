"""
Helpers of the unit tests of L{mqtwist.smtp.protocol.ESMTPClient}: one
client on a L{StringTransport} and a L{MemoryReactorClock}, with the test
playing the server, and the results of the Deferreds it hands out.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mqtwist.config import SMTPTimeouts
from mqtwist.errors import AttemptFailed
from mqtwist.smtp.protocol import ESMTPClient


@implementer(ITCPTransport)
class TCPStringTransport(StringTransport):
    """A StringTransport that records TCP_NODELAY."""

    noDelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled

    def getTcpNoDelay(self) -> bool:
        return self.noDelay


TIMEOUTS = SMTPTimeouts(
    connect=1, greeting=11, ehlo=12, mailfrom=13, rcptto=14, data=15, message=16, rset=17, quit=18
)
EHLO_PIPELINING = (
    b"250-mx.example.com hello\r\n250-SIZE 1000000\r\n250-8bitmime\r\n250-PIPELINING\r\n250 DSN\r\n"
)
EHLO_PLAIN = b"250-mx.example.com hello\r\n250 SIZE 1000000\r\n"


class Connection:
    """One client on a string transport, and helpers to play the server."""

    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.transport = TCPStringTransport(
            hostAddress=IPv4Address("TCP", "192.0.2.10", 40000),
            peerAddress=IPv4Address("TCP", "198.51.100.5", 25),
        )
        self.client = ESMTPClient("client.example.org", TIMEOUTS, self.clock)
        self.client.makeConnection(self.transport)

    def sent(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def reply(self, data: bytes) -> None:
        self.client.dataReceived(data)

    def lose(self) -> None:
        self.client.connectionLost(Failure(ConnectionLost("peer reset")))

    def introduce(self, ehlo: bytes = EHLO_PIPELINING) -> ESMTPClient:
        self.reply(b"220 mx.example.com ESMTP ready\r\n")
        assert self.sent() == b"EHLO client.example.org\r\n"
        self.reply(ehlo)
        return resultOf(self.client.ready)


def failureOf(deferred) -> AttemptFailed:
    return _case.failureResultOf(deferred, AttemptFailed).value


def resultOf(deferred):
    return _case.successResultOf(deferred)


_case = SynchronousTestCase()
