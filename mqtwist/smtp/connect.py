"""
Opening an SMTP connection: TCP connect (optionally from a given local
address), greeting and EHLO.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from mqtwist.config import SMTPTimeouts
from mqtwist.errors import AttemptFailed
from mqtwist.smtp.protocol import ESMTPClient

log = Logger()


class _ClientFactory(Factory):
    def __init__(self, ehloName: str, timeouts: SMTPTimeouts, clock: Any) -> None:
        self.ehloName = ehloName
        self.timeouts = timeouts
        self.clock = clock

    def buildProtocol(self, addr: Any) -> ESMTPClient:
        return ESMTPClient(self.ehloName, self.timeouts, self.clock)


def hostPort(host: str, port: int) -> str:
    """
    C{host:port}, with brackets around an IPv6 address.
    """
    return f"[{host}]:{port}" if isIPv6Address(host) else f"{host}:{port}"


def openConnection(
    reactor: Any,
    host: str,
    port: int,
    *,
    ehloName: str,
    timeouts: SMTPTimeouts,
    bindAddress: str | None = None,
) -> Deferred[ESMTPClient]:
    """
    Connect to an SMTP server and introduce ourselves.

    @param host: an IPv4 or IPv6 address, or a host name.
    @param bindAddress: the local IP address to connect from, or C{None} for
        the system's choice.
    @return: a Deferred firing with the L{ESMTPClient} once it is ready (its
        C{ready} fired).  It errbacks with L{AttemptFailed}: C{connect} /
        C{error} or C{timeout} when the TCP connection could not be made
        within C{timeouts.connect} seconds, C{bind} / C{error} when
        C{bindAddress} is not usable on this host, or the failure of the
        client's C{ready}.  Cancelling it closes the connection.
    """
    return ensureDeferred(_open(reactor, host, port, ehloName, timeouts, bindAddress))


async def _open(
    reactor: Any,
    host: str,
    port: int,
    ehloName: str,
    timeouts: SMTPTimeouts,
    bindAddress: str | None,
) -> ESMTPClient:
    where = hostPort(host, port)
    endpoint = _endpoint(reactor, host, port, timeouts.connect, bindAddress)
    try:
        client = cast(ESMTPClient, await endpoint.connect(_ClientFactory(ehloName, timeouts, reactor)))
    except error.ConnectBindError as failure:
        raise AttemptFailed(
            "bind",
            "error",
            f"cannot connect to {where} from local address {bindAddress}: {failure} "
            f"(use an address this host has, of the same family as {host})",
        ) from None
    except error.TimeoutError as failure:
        raise AttemptFailed(
            "connect",
            "timeout",
            f"no TCP connection to {where} within {timeouts.connect:g} seconds ({failure})",
        ) from None
    except (error.ConnectError, error.DNSLookupError, OSError) as failure:
        raise AttemptFailed("connect", "error", f"cannot connect to {where}: {failure}") from None
    log.debug(
        "TCP connection {local} -> {where} made", local=client.localAddress, where=where
    )
    result: ESMTPClient = await client.ready
    return result


def _endpoint(
    reactor: Any, host: str, port: int, timeout: float, bindAddress: str | None
) -> IStreamClientEndpoint:
    bind = None
    if bindAddress is not None:
        if not (isIPAddress(bindAddress) or isIPv6Address(bindAddress)):
            raise AttemptFailed(
                "bind",
                "error",
                f"local address {bindAddress!r} for connecting to {hostPort(host, port)} "
                f"is not an IP address; give an IPv4 or IPv6 address of this host",
            )
        bind = (bindAddress, 0)
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
    return HostnameEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
