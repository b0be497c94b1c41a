"""
A TCP relay that holds everything the server says for a fixed delay before
passing it on: an SMTP server "answering after 20 ms", for the benchmark's
round-trip test.

    python3 bench/delayproxy.py LISTEN_PORT TARGET_PORT DELAY_SECONDS

It listens on 127.0.0.1:LISTEN_PORT (0 picks a free port), connects each
client to 127.0.0.1:TARGET_PORT and prints C{listening on PORT} once ready.
Client data goes through at once; each chunk of server data is delivered
DELAY_SECONDS after it arrived, in order.  So a lock-step client pays the
delay once per command, a pipelining client once per group of commands,
as it would with a server that far away.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import protocol, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger


class _ServerSide(protocol.Protocol):
    """The relay's connection to the real server."""

    def __init__(self, client: _ClientSide) -> None:
        self.client = client

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.client.serverConnected(self)

    def dataReceived(self, data: bytes) -> None:
        self.client.sendLater(data)

    def connectionLost(self, reason: Any) -> None:
        self.client.serverGone()


class _ClientSide(protocol.Protocol):
    """A client of the relay (the SMTP client under test)."""

    log = Logger()

    def __init__(self, reactor: Any, targetPort: int, delay: float) -> None:
        self.reactor = reactor
        self.targetPort = targetPort
        self.delay = delay
        self.server: _ServerSide | None = None

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.transport.pauseProducing()
        protocol.ClientCreator(self.reactor, _ServerSide, self).connectTCP(
            "127.0.0.1", self.targetPort
        ).addErrback(self._cannotConnect)

    def _cannotConnect(self, failure: Any) -> None:
        self.log.error(
            "cannot connect to 127.0.0.1:{port}: {error}",
            port=self.targetPort,
            error=failure.getErrorMessage(),
        )
        self.transport.loseConnection()

    def serverConnected(self, server: _ServerSide) -> None:
        self.server = server
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.server is not None:
            self.server.transport.write(data)

    def sendLater(self, data: bytes) -> None:
        # equal delays keep the order: callLater runs calls due at the same
        # time in the order they were made
        self.reactor.callLater(self.delay, self.transport.write, data)

    def serverGone(self) -> None:
        # close only after the delayed data that is still on its way
        self.reactor.callLater(self.delay, self.transport.loseConnection)

    def connectionLost(self, reason: Any) -> None:
        if self.server is not None:
            self.server.transport.loseConnection()


def main(reactor: Any, listenPort: str, targetPort: str, delay: str) -> Any:
    factory = protocol.Factory.forProtocol(
        lambda: _ClientSide(reactor, int(targetPort), float(delay))
    )
    factory.noisy = False
    port = reactor.listenTCP(int(listenPort), factory, interface="127.0.0.1", backlog=1024)
    sys.stdout.write(f"listening on {port.getHost().port}\n")
    sys.stdout.flush()
    return Deferred()  # run until killed


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: delayproxy.py LISTEN_PORT TARGET_PORT DELAY_SECONDS")
    task.react(main, sys.argv[1:])
