"""
Where a message goes: its smarthost, or the MX hosts of its recipient's
domain, looked up with C{twisted.names}.
"""

from __future__ import annotations

import random
from itertools import groupby
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import DNSLookupError
from twisted.internet.error import TimeoutError as DNSTimeoutError
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names.error import DNSNameError, DNSServerError, DomainError

from mqtwist.errors import AttemptFailed
from mqtwist.hostport import parseHostPort
from mqtwist.message import Message
from mqtwist.smtp.pool import Destination


class Router:
    """
    Finds the L{Destination} of a message.

    @param smarthost: C{host:port} that takes all mail, or C{None} for MX
        delivery.
    @param mxPort: the SMTP port of MX hosts.
    @param nameservers: C{host:port} of the name servers to ask; empty for
        the system's (C{/etc/resolv.conf}).
    """

    log = Logger()

    def __init__(
        self,
        *,
        smarthost: str | None,
        mxPort: int,
        nameservers: list[str],
    ) -> None:
        self.smarthost = parseHostPort(smarthost, 25) if smarthost else None
        self.mxPort = mxPort
        servers = [parseHostPort(server, 53) for server in nameservers]
        self.resolver = client.createResolver(servers=servers or None)

    @inlineCallbacks
    def destinationFor(self, message: Message) -> Deferred[Destination]:
        """
        Route C{message}: its own C{smarthost}, the configured smarthost, or
        the MX hosts of the recipient's domain, from C{message.ips} picked at
        random as the local address.

        @return: a Deferred firing with the L{Destination}; it fails with
            L{AttemptFailed} (state C{dns}) when the domain has no usable
            MX: permanently for NXDOMAIN and null MX, softly for time-outs
            and server failures.
        """
        bindAddress = random.choice(message.ips) if message.ips else None
        if message.smarthost is not None:
            hosts = ((message.smarthost.hostname, message.smarthost.port),)
        elif self.smarthost is not None:
            hosts = (self.smarthost,)
        else:
            domain = message.recipient.rpartition("@")[2]
            names = yield self.mailExchangers(domain)
            hosts = tuple((name, self.mxPort) for name in names)
        return Destination(hosts, bindAddress)

    @inlineCallbacks
    def mailExchangers(self, domain: str) -> Deferred[list[str]]:
        """
        The mail exchangers of C{domain}, most preferred first, hosts of the
        same preference in random order (RFC 5321 section 5.1); the domain
        itself when it has no MX records (implicit MX).

        @return: a Deferred firing with host names, or failing with
            L{AttemptFailed}.
        """
        if domain.startswith("[") and domain.endswith("]"):
            return [domain[1:-1].removeprefix("IPv6:")]
        try:
            answers, _, _ = yield self.resolver.lookupMailExchange(domain)
        except DNSNameError:
            raise AttemptFailed(
                "dns", "error", f"domain {domain} does not exist (NXDOMAIN)", permanent=True
            )
        except (DNSServerError, DNSTimeoutError, DNSLookupError, DomainError) as e:
            raise AttemptFailed(
                "dns", "error", f"MX lookup for {domain} failed ({type(e).__name__}); will retry"
            )
        # MX records of a CNAME's target carry the target's name: take them all
        records = [answer.payload for answer in answers if answer.type == dns.MX]
        if not records:
            return [domain]
        if len(records) == 1 and records[0].name.name in (b"", b"."):
            raise AttemptFailed(
                "dns", "error", f"domain {domain} accepts no mail (null MX, RFC 7505)",
                permanent=True,
            )
        records.sort(key=lambda record: record.preference)
        ordered: list[str] = []
        for _, group in groupby(records, key=lambda record: record.preference):
            names = [record.name.name.decode() for record in group if record.name.name]
            random.shuffle(names)
            ordered.extend(names)
        self.log.debug("MX of {domain}: {hosts}", domain=domain, hosts=ordered)
        return ordered
