"""
Opening an SMTP connection: TCP connect (optionally from a given local
address), greeting and EHLO, STARTTLS as the TLS policy says, and AUTH.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from twisted.internet import error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from mqtwist.errors import AttemptFailed
from mqtwist.hostport import LONGEST_HOST_NAME, hostPort
from mqtwist.smtp.protocol import ESMTPClient
from mqtwist.smtp.timeouts import SMTPTimeouts
from mqtwist.smtp.tls import OPPORTUNISTIC, VERIFIED, TLSSettings, tlsMandatory
from mqtwist.validation import excerpt, shownName

log = Logger()


class _ClientFactory(Factory):
    # no "Starting factory" / "Stopping factory" lines: one of each per
    # SMTP connection would bury the log
    noisy = False

    def __init__(self, ehloName: str, timeouts: SMTPTimeouts, clock: Any) -> None:
        self.ehloName = ehloName
        self.timeouts = timeouts
        self.clock = clock

    def buildProtocol(self, addr: Any) -> ESMTPClient:
        return ESMTPClient(self.ehloName, self.timeouts, self.clock)


@dataclass(frozen=True)
class Credentials:
    """
    A user name and password for AUTH; the password is never shown.
    """

    username: str
    password: str = field(repr=False)


def openConnection(
    reactor: Any,
    host: str,
    port: int,
    *,
    ehloName: str,
    timeouts: SMTPTimeouts,
    bindAddress: str | None = None,
    security: str | None = None,
    tlsName: str | None = None,
    tls: TLSSettings | None = None,
    credentials: Credentials | None = None,
    authCleartext: bool = False,
) -> Deferred[ESMTPClient]:
    """
    Connect to an SMTP server, introduce ourselves, start TLS as
    C{security} says and log in with C{credentials}.

    @param host: an IPv4 or IPv6 address, or a host name.
    @param bindAddress: the local IP address to connect from, or C{None} for
        the system's choice.
    @param security: the TLS policy (L{mqtwist.smtp.tls.POLICIES}), or
        C{None} for no STARTTLS at all.
    @param tlsName: the name the server's certificate must carry (the MX
        host name when C{host} is its address); C{None}: C{host}.
    @param tls: the client's TLS configuration; C{None} is the default one
        (system CAs, no client certificate).
    @param credentials: log in with these after EHLO (and after TLS).
    @param authCleartext: whether C{credentials} may be sent on a
        connection without TLS.
    @return: a Deferred firing with the L{ESMTPClient} once it is ready.  It
        errbacks with L{AttemptFailed}: C{connect} / C{error} or C{timeout}
        when the TCP connection could not be made within
        C{timeouts.connect} seconds, C{bind} / C{error} when C{bindAddress}
        is not usable on this host, the failure of the client's C{ready},
        C{starttls} / C{error} or C{timeout} when TLS was needed and could
        not be had, C{auth} / C{error} when the login failed or would have
        to go in clear.  Cancelling it closes the connection.
    """
    return ensureDeferred(
        _open(
            reactor,
            host,
            port,
            ehloName,
            timeouts,
            bindAddress,
            security,
            tlsName or host,
            tls or TLSSettings(),
            credentials,
            authCleartext,
        )
    )


async def _open(
    reactor: Any,
    host: str,
    port: int,
    ehloName: str,
    timeouts: SMTPTimeouts,
    bindAddress: str | None,
    security: str | None,
    tlsName: str,
    tls: TLSSettings,
    credentials: Credentials | None,
    authCleartext: bool,
) -> ESMTPClient:
    client = await _introduced(reactor, host, port, ehloName, timeouts, bindAddress)
    client.serverName = tlsName
    where = hostPort(host, port)
    try:
        if security is not None:
            await _secure(client, tlsName, where, security, tls)
        if credentials is not None:
            await _logIn(client, where, credentials, authCleartext)
    except _InClear:
        log.info(
            "TLS handshake with {where} failed; connecting again without TLS (opportunistic policy)",
            where=where,
        )
        return await _open(
            reactor, host, port, ehloName, timeouts, bindAddress, None, tlsName, tls, credentials, authCleartext
        )
    except BaseException:
        client.quit()
        raise
    return client


class _InClear(Exception):
    """
    The TLS handshake failed under the opportunistic policy: connect again
    without TLS.
    """


async def _secure(client: ESMTPClient, tlsName: str, where: str, security: str, tls: TLSSettings) -> None:
    """
    Start TLS on C{client} as the policy C{security} says; a C{verified}
    certificate must be valid for C{tlsName}.
    """
    if "STARTTLS" not in client.extensions:
        if tlsMandatory(security):
            raise AttemptFailed(
                "starttls",
                "error",
                f"{client.mta or where} at {where} does not offer STARTTLS, and the TLS policy "
                f"is {security!r}; the message waits for a server with TLS (the policy "
                f"'opportunistic' would send it in clear)",
            )
        return
    try:
        creator = tls.creatorFor(tlsName)
    except ValueError as failure:
        raise AttemptFailed("starttls", "error", str(failure)) from None
    try:
        await client.startTLS(creator)
    except AttemptFailed as failure:
        if failure.state != "starttls" or tlsMandatory(security):
            raise
        if failure.code is not None:
            # STARTTLS refused: the session goes on in clear (RFC 3207 4)
            log.info(
                "{where} refused STARTTLS ({code} {description}); going on without TLS",
                where=where,
                code=failure.code,
                description=failure.description,
            )
            return
        if security == OPPORTUNISTIC:
            raise _InClear() from None
        raise
    if security == VERIFIED:
        assert client.tls is not None
        problem = client.tls.checkPeer()
        if problem is not None:
            raise AttemptFailed(
                "starttls",
                "error",
                f"{shownName(tlsName, LONGEST_HOST_NAME)} at {where} is not trusted under the "
                f"TLS policy 'verified': {problem} "
                f"(tls-ca-file: {tls.caFile or 'the system CAs'})",
            )


async def _logIn(client: ESMTPClient, where: str, credentials: Credentials, authCleartext: bool) -> None:
    if client.tls is None and not authCleartext:
        raise AttemptFailed(
            "auth",
            "error",
            f"not sending the AUTH credentials to {where} on a connection without TLS; "
            f"use a server that offers STARTTLS, or list the host in auth-cleartext-hosts "
            f"if the network between is trusted",
        )
    if "AUTH" not in client.extensions:
        raise AttemptFailed(
            "auth",
            "error",
            f"{client.mta or where} at {where} does not offer AUTH, so the configured "
            f"credentials cannot be used; check the smarthost and its port",
        )
    try:
        await client.authenticate(credentials.username, credentials.password)
    except AttemptFailed as failure:
        if failure.code is None:
            raise
        # a refused login is the configuration's fault, not the message's:
        # the message waits for the credentials to be fixed instead of
        # bouncing (as Postfix's smtp_sasl_auth_soft_bounce does by default)
        raise AttemptFailed(
            "auth",
            failure.result,
            f"{where} refused the login as {shownName(credentials.username)}: "
            f"{failure.description}; check the credentials",
            code=failure.code,
            status=failure.status,
        ) from None


async def _introduced(
    reactor: Any,
    host: str,
    port: int,
    ehloName: str,
    timeouts: SMTPTimeouts,
    bindAddress: str | None,
) -> ESMTPClient:
    """
    TCP connection, greeting and EHLO.
    """
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
    except ValueError:
        # HostnameEndpoint's for a name that IDNA cannot encode (a space, a
        # label of more than 63 characters): a smarthost's, from a message
        # or the configuration
        raise AttemptFailed(
            "connect",
            "error",
            f"cannot connect to port {port} of {excerpt(host)}: it is not a valid host "
            f"name; correct the smarthost's hostname",
        ) from None
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
                f"local address {excerpt(bindAddress)} for connecting to {hostPort(host, port)} "
                f"is not an IP address; give an IPv4 or IPv6 address of this host",
            )
        bind = (bindAddress, 0)
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
    return HostnameEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
