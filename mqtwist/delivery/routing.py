"""
Where a message goes: its smarthost, or the addresses of the mail exchangers
of its recipient's domain, looked up with C{twisted.names}.

MX delivery follows RFC 5321 section 5.1: mail exchangers by preference,
random order among equal preference, the domain itself when it has no MX
records (implicit MX), and nothing at all for a null MX (RFC 7505).  The
host names are resolved (A, then AAAA) through the same resolver, so the
configured name servers decide everything, and the destination lists
addresses: the pool connects to them in order and moves on to the next
when one refuses, times out or answers 421.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from functools import partial
from itertools import groupby
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, succeed
from twisted.internet.defer import TimeoutError as QueryTimeoutError
from twisted.internet.error import DNSLookupError
from twisted.internet.error import TimeoutError as DNSTimeoutError
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names.error import DNSNameError, DNSServerError, DomainError

from mqtwist.content.message import Message
from mqtwist.errors import AttemptFailed
from mqtwist.hostport import LONGEST_HOST_NAME, parseHostPort
from mqtwist.smtp.connect import Credentials
from mqtwist.smtp.pool import Destination
from mqtwist.validation import shownName

_SOFT_DNS_ERRORS = (DNSServerError, DNSTimeoutError, QueryTimeoutError, DNSLookupError, DomainError)


#: where the system's name servers are listed
RESOLV_CONF = "/etc/resolv.conf"

#: seconds between two looks through a table for entries to forget
SWEEP_INTERVAL = 60.0


@dataclass(frozen=True)
class Route:
    """
    The way to a message's recipient.

    @ivar destination: the servers to connect to, in order, and the local
        address.
    @ivar domain: the recipient's domain.
    @ivar exchangers: the host names of the domain's mail exchangers in the
        order they are tried (the domain itself for an implicit MX); empty
        for a smarthost or an address literal.
    @ivar name: what the route goes to, for logs and throttle groups: the
        smarthost C{host:port}, or the domain for address literals.
    @ivar hostNames: for each host of C{destination}, the name it was
        found under (the MX host name of an address), e.g. for checking a
        TLS certificate.
    """

    destination: Destination
    domain: str
    exchangers: tuple[str, ...] = ()
    name: str = ""
    hostNames: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Exchange:
    """A cached MX answer: host names and addresses, in order."""

    exchangers: tuple[str, ...]
    #: (address, the exchanger it belongs to)
    addresses: tuple[tuple[str, str], ...]
    expires: float


class Router:
    """
    Finds the L{Route} of a message.

    @param smarthost: C{host:port} that takes all mail, or C{None} for MX
        delivery.
    @param mxPort: the SMTP port of MX hosts.
    @param nameservers: C{host:port} of the name servers to ask; empty for
        the system's (C{/etc/resolv.conf}).
    @param dnsTimeout: seconds one DNS query may take, retransmissions
        included.
    @param minCacheTime: seconds an MX answer is kept at least, whatever its
        TTL.
    @param addressesPerAttempt: how many addresses one attempt may try.
    @param security: the TLS policy of messages without C{security}.
    @param smarthostCredentials: AUTH credentials for C{smarthost}.
    """

    log = Logger()

    def __init__(
        self,
        *,
        smarthost: str | None,
        mxPort: int,
        nameservers: list[str],
        dnsTimeout: float = 20.0,
        minCacheTime: float = 60.0,
        addressesPerAttempt: int = 5,
        security: str = "opportunistic",
        smarthostCredentials: Credentials | None = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.smarthost = parseHostPort(smarthost, 25) if smarthost else None
        self.mxPort = mxPort
        self.servers = [parseHostPort(server, 53) for server in nameservers]
        # three tries, the later ones waiting longer
        self.queryTimeout = tuple(dnsTimeout * share for share in (0.1, 0.3, 0.6))
        self.minCacheTime = minCacheTime
        self.addressesPerAttempt = addressesPerAttempt
        self.security = security
        self.smarthostCredentials = smarthostCredentials
        self._resolver: Any = None
        self._cache: dict[str, _Exchange] = {}
        #: the same answers by their exchangers, by preference
        self._byExchangers: dict[tuple[frozenset[str], ...], _Exchange] = {}
        #: when L{_dropExpired} next looks through the cache
        self._nextSweep = float("-inf")
        #: the messages waiting for a domain's lookup
        self._pending: dict[str, list[Deferred[_Exchange]]] = {}

    @property
    def resolver(self) -> Any:
        """
        The C{twisted.names} resolver, made on first use: one that asks the
        name servers given, or those of C{/etc/resolv.conf} (read again
        when it changes).  Like Postfix's SMTP client, it looks in DNS only,
        not in C{/etc/hosts}; answers are cached here (L{route}).
        """
        if self._resolver is None:
            if self.servers:
                self._resolver = client.Resolver(servers=self.servers, reactor=self.reactor)
            else:
                self._resolver = client.Resolver(resolv=RESOLV_CONF, reactor=self.reactor)
        return self._resolver

    def close(self) -> None:
        """
        Stop re-reading C{/etc/resolv.conf}, so that no timer of the
        resolver outlives the service.
        """
        # twisted.names has no public way to stop it (as of Twisted 26.10):
        # its Resolver keeps the call that reads the file again every minute
        rereading = getattr(self._resolver, "_parseCall", None)
        if rereading is not None and rereading.active():
            rereading.cancel()

    def route(self, message: Message) -> Deferred[Route]:
        """
        Route C{message}: its own C{smarthost}, the configured smarthost, or
        the MX hosts of the recipient's domain, from C{message.ips} picked at
        random as the local address.

        @return: a Deferred firing with the L{Route}; it fails with
            L{AttemptFailed} (state C{dns}) when the domain has no usable
            address: permanently for NXDOMAIN, a null MX or names without
            addresses, softly for time-outs and server failures.  Cancelling
            it ends the message's wait for the domain's lookup; the lookup
            itself runs to its end (see L{_sharedLookup}).
        """
        domain = message.domain
        bindAddress = random.choice(message.ips) if message.ips else None
        security = message.security or self.security
        direct = self._directRoute(message, domain, bindAddress, security)
        if direct is not None:
            return succeed(direct)
        cached = self._cache.get(domain)
        if cached is not None:
            if cached.expires > self.reactor.seconds():
                # most messages: a cached answer needs no coroutine
                return succeed(self._mxRoute(cached, bindAddress, security, domain=domain))
            del self._cache[domain]
        return self._sharedLookup(domain).addCallback(self._mxRoute, bindAddress, security, domain=domain)

    def destinationFor(self, message: Message) -> Deferred[Destination]:
        """
        The L{Destination} of L{route}.
        """
        return self.route(message).addCallback(lambda route: route.destination)

    def _directRoute(
        self, message: Message, domain: str, bindAddress: str | None, security: str
    ) -> Route | None:
        """
        The route of a message that needs no MX lookup (a smarthost or an
        address literal), or C{None}.
        """
        if message.smarthost is not None:
            host = (message.smarthost.hostname, message.smarthost.port)
            # a host name from the message that cannot be one (a megabyte of
            # it) names the throttle group, log lines and deferrals by an excerpt
            name = f"{shownName(host[0], LONGEST_HOST_NAME)}:{host[1]}"
            login = message.smarthost
            credentials = Credentials(login.username, login.password or "") if login.username else None
            return Route(
                Destination((host,), bindAddress, security, credentials), domain, name=name,
                hostNames=(host[0],),
            )
        if self.smarthost is not None:
            name = f"{self.smarthost[0]}:{self.smarthost[1]}"
            return Route(
                Destination((self.smarthost,), bindAddress, security, self.smarthostCredentials),
                domain, name=name, hostNames=(self.smarthost[0],),
            )
        if domain.startswith("[") and domain.endswith("]"):
            address = domain[1:-1]
            address = address[5:] if address.lower().startswith("ipv6:") else address
            return Route(
                Destination(((address, self.mxPort),), bindAddress, security), domain, name=domain,
                hostNames=(address,),
            )
        return None

    def _mxRoute(
        self, exchange: _Exchange, bindAddress: str | None, security: str, *, domain: str
    ) -> Route:
        hosts = tuple((address, self.mxPort) for address, _ in exchange.addresses)
        names = tuple(name for _, name in exchange.addresses)
        destination = Destination(hosts, bindAddress, security, tlsNames=names)
        return Route(destination, domain, exchange.exchangers, domain, names)

    def _sharedLookup(self, domain: str) -> Deferred[_Exchange]:
        """
        Look up C{domain}'s mail exchangers; messages that arrive together
        for a domain share one lookup.

        @return: a Deferred firing with the L{_Exchange}, or failing as
            L{_lookUp} does.  Cancelling it ends only this message's wait:
            C{twisted.names} queries cannot be cancelled (Twisted issue
            #6644), so the lookup runs to its answer or its time-out, and an
            answer is cached for the messages that come next.
        """
        waiter: Deferred[_Exchange] = Deferred(partial(self._stopWaiting, domain))
        waiters = self._pending.get(domain)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._pending[domain] = [waiter]
        ensureDeferred(self._lookUp(domain)).addBoth(self._lookedUp, domain)
        return waiter

    def _stopWaiting(self, domain: str, waiter: Deferred[_Exchange]) -> None:
        waiters = self._pending.get(domain)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)

    def _lookedUp(self, result: Any, domain: str) -> None:
        # a waiter's callback may cancel a later one, which then has fired
        for waiter in self._pending.pop(domain):
            if not waiter.called:
                waiter.callback(result)

    async def _lookUp(self, domain: str) -> _Exchange:
        now = self.reactor.seconds()
        groups, ttl = await self._mailExchangers(domain)
        # domains with the same exchangers at the same preferences (those of
        # one provider) get one order and one set of addresses while it is
        # cached, and so one destination: they share its connections, and
        # its idle ones count against its limits
        shape = tuple(groups)
        exchange = self._byExchangers.get(shape)
        if exchange is None or exchange.expires <= now:
            # hosts of the same preference in random order (RFC 5321 5.1)
            names = [name for group in groups for name in random.sample(sorted(group), len(group))]
            addresses, addressTTL = await self._addressesOf(domain, names)
            exchange = self._byExchangers.get(shape)
            if exchange is None or exchange.expires <= now:  # not looked up meanwhile
                exchange = self._byExchangers[shape] = _Exchange(
                    tuple(names),
                    tuple(addresses[: self.addressesPerAttempt]),
                    now + max(self.minCacheTime, min(ttl, addressTTL)),
                )
        # the shuffled order is kept while cached, so that messages to one
        # domain share one destination (and its connections)
        self._cache[domain] = exchange
        self._dropExpired(self.reactor.seconds())
        self.log.debug(
            "MX of {domain}: {exchangers} at {addresses}",
            domain=domain,
            exchangers=list(exchange.exchangers),
            addresses=list(exchange.addresses),
        )
        return exchange

    def _dropExpired(self, now: float) -> None:
        """
        Forget the expired answers of domains no message asked for since
        (and of their exchangers), at most once every C{minCacheTime} (and
        a minute): a bulk sender's domains would otherwise stay cached for
        as long as the process runs.
        """
        if now < self._nextSweep:
            return
        self._nextSweep = now + max(self.minCacheTime, SWEEP_INTERVAL)
        tables: tuple[dict[Any, _Exchange], ...] = (self._cache, self._byExchangers)
        for table in tables:
            for key in [key for key, exchange in table.items() if exchange.expires <= now]:
                del table[key]

    async def _mailExchangers(self, domain: str) -> tuple[list[frozenset[str]], float]:
        """
        The mail exchangers of C{domain}, by preference, most preferred
        first (a host listed at several preferences counts at its best);
        the domain itself when it has no MX records (implicit MX); and the
        smallest TTL of the answer.
        """
        try:
            answers, _, _ = await self.resolver.lookupMailExchange(domain, timeout=self.queryTimeout)
        except DNSNameError:
            raise AttemptFailed(
                "dns", "error", f"domain {domain} does not exist (NXDOMAIN)", permanent=True
            ) from None
        except _SOFT_DNS_ERRORS as e:
            raise AttemptFailed(
                "dns",
                "error",
                f"MX lookup for {domain} failed ({_describe(e)}), a temporary DNS failure",
            ) from None
        # MX records of a CNAME's target carry the target's name: take them all
        records = [answer for answer in answers if answer.type == dns.MX]
        if not records:
            return [frozenset((domain,))], self.minCacheTime
        if any(record.payload.name.name in (b"", b".") for record in records):
            raise AttemptFailed(
                "dns", "error", f"domain {domain} accepts no mail (null MX, RFC 7505)",
                permanent=True,
            )
        ttl = min(record.ttl for record in records)
        payloads = sorted((record.payload for record in records), key=lambda mx: mx.preference)
        groups: list[frozenset[str]] = []
        seen: set[str] = set()
        for _, group in groupby(payloads, key=lambda mx: mx.preference):
            names = frozenset(mx.name.name.decode().lower() for mx in group) - seen
            if names:
                groups.append(names)
                seen |= names
        return groups, ttl

    async def _addressesOf(self, domain: str, names: list[str]) -> tuple[list[tuple[str, str]], float]:
        """
        The addresses of C{names}, in their order: the A records of each,
        then its AAAA records, each with its name; and the smallest TTL
        among them.

        @raise AttemptFailed: when none has an address; softly when a
            lookup failed for a time-out or a server failure.
        """
        lookups = [self._addressesOfHost(name) for name in names]
        results = await gatherResults(lookups, consumeErrors=True)
        addresses: list[tuple[str, str]] = []
        ttls: list[float] = []
        softErrors: list[str] = []
        for name, (found, ttl, error) in zip(names, results):
            seen = {address for address, _ in addresses}
            addresses.extend((address, name) for address in found if address not in seen)
            if found:
                ttls.append(ttl)
            elif error:
                softErrors.append(f"{name}: {error}")
        if addresses:
            return addresses, min(ttls)
        hosts = ", ".join(names)
        if softErrors:
            raise AttemptFailed(
                "dns",
                "error",
                f"no address for the mail exchangers of {domain} ({'; '.join(softErrors)}), "
                f"a temporary DNS failure",
            )
        raise AttemptFailed(
            "dns",
            "error",
            f"the mail exchangers of {domain} ({hosts}) have no A or AAAA record",
            permanent=True,
        )

    def _addressesOfHost(self, name: str) -> Deferred[tuple[list[str], float, str]]:
        """
        @return: a Deferred firing with (addresses, smallest TTL, the error
            of a soft failure or C{""}); it does not fail.
        """

        async def lookup() -> tuple[list[str], float, str]:
            found: list[str] = []
            ttls: list[float] = []
            error = ""
            for query, recordType in (
                (self.resolver.lookupAddress, dns.A),
                (self.resolver.lookupIPV6Address, dns.AAAA),
            ):
                try:
                    answers, _, _ = await query(name, timeout=self.queryTimeout)
                except DNSNameError:
                    break
                except _SOFT_DNS_ERRORS as e:
                    error = _describe(e)
                    continue
                for answer in answers:
                    if answer.type == recordType:
                        found.append(_addressText(answer.payload))
                        ttls.append(answer.ttl)
            return found, min(ttls, default=0.0), error

        return ensureDeferred(lookup())


def _addressText(record: Any) -> str:
    if isinstance(record, dns.Record_A):
        return str(record.dottedQuad())
    return socket.inet_ntop(socket.AF_INET6, record.address)


def _describe(error: Exception) -> str:
    if isinstance(error, (DNSTimeoutError, QueryTimeoutError)):
        return "time-out"
    if isinstance(error, DNSServerError):
        return "server failure (SERVFAIL)"
    return type(error).__name__
