"""
The settings of one mqtwist service, with their defaults.

Every limit and default of the service lives here, so that the command line
(L{mqtwist.tap}), a TOML file, C{MQTWIST_*} environment variables and
programs that embed L{mqtwist.service.MailerService} all describe the same
thing.  Attribute names are the option names in camelCase: C{ehloName} is
C{--ehlo-name}, C{ehlo-name} in TOML and C{MQTWIST_EHLO_NAME} in the
environment.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mqtwist.validation import canonicalIP


@dataclass
class SMTPTimeouts:
    """
    Seconds to wait for each step of an SMTP conversation.  The defaults are
    the minimums of RFC 5321 section 4.5.3.2, except C{connect}, which the
    RFC leaves open.
    """

    connect: float = 30.0
    greeting: float = 300.0
    ehlo: float = 300.0
    mailfrom: float = 300.0
    rcptto: float = 300.0
    data: float = 120.0
    #: from the last byte of the body to the final reply
    message: float = 600.0
    rset: float = 60.0
    quit: float = 10.0
    #: for the reply to STARTTLS and then the TLS handshake
    starttls: float = 120.0
    #: for each reply of the AUTH exchange
    auth: float = 120.0


def _tableValue(table: Mapping[str, Any], key: str, kind: type, what: str, where: str) -> Any:
    value = table.get(key)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{where}: {key!r} is {value!r}; give {what}")
    if isinstance(value, (int, float)) and value < 0:
        raise ValueError(f"{where}: {key!r} is negative; give 0 or more")
    return value


#: what a domain or mx pattern looks like
_NAME_EXAMPLES = {
    "domain": 'a glob pattern of the recipient\'s domain, e.g. "example.com" or "*.example.com"',
    "mx": 'a glob pattern of a mail exchanger\'s host name, e.g. "*.google.com"',
}

#: the characters of an IPv4 or IPv6 address (an C{ip} pattern matches the
#: local address as the message gives it, so both cases of hex digits)
_IP_CHARACTERS = frozenset(string.hexdigits + ".:")


def _ipPatternProblem(pattern: str) -> str | None:
    """
    Why no IPv4 or IPv6 address can match the C{fnmatch} pattern
    C{pattern}, if that is so.

    @return: the reason, or C{None} for a pattern that may match.
    """
    if not pattern:
        return "an empty pattern matches no address"
    glob = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        i += 1
        if char in "*?":
            glob = True
        elif char == "[":
            # as fnmatch reads a set: a leading '!' negates it
            start = i + 1 if pattern[i : i + 1] == "!" else i
            end = pattern.find("]", start)
            if end < 0:
                return "its '[' has no closing ']'"
            for inner in pattern[start:end]:
                if inner not in _IP_CHARACTERS and inner != "-":
                    return f"{inner!r} is never in an IP address"
            glob = True
            i = end + 1
        elif char not in _IP_CHARACTERS:
            return (
                f"{char!r} is never in an IP address (only hex digits, '.' and ':' are, "
                "besides the glob characters * ? [ ])"
            )
    if not glob:
        try:
            ipaddress.ip_address(pattern)
        except ValueError:
            return "it has no glob characters (* ? [ ]) and is not an IPv4 or IPv6 address"
    return None


def _checkKeys(table: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(known)}")


@dataclass(frozen=True)
class ThrottleRule:
    """
    Limits for the destinations one rule matches (a C{[[throttles]]} table
    in TOML).  A rule matches by the recipient's domain (C{domain}, a glob
    such as C{"*.example.com"}) or by a mail exchanger's host name (C{mx},
    e.g. C{"*.google.com"}), and optionally by the local address
    (C{ip}, a glob such as C{"10.*"} or C{"2001:db8::*"}, matched against
    the canonical form of the address: IPv6 in lower case, compressed).  All the messages a rule
    matches share its limits (per local address); a limit left out is the
    default of L{Config}.  Limits hold within one process.
    """

    domain: str | None = None
    mx: str | None = None
    ip: str | None = None
    #: deliveries (hence connections) at once
    connections: int | None = None
    messagesPerConnection: int | None = None
    #: 0: no limit
    messagesPerMinute: int | None = None
    #: new connections per minute; 0: no limit
    connectionsPerMinute: int | None = None

    KEYS = (
        "domain", "mx", "ip", "connections", "messages-per-connection",
        "messages-per-minute", "connections-per-minute",
    )

    @classmethod
    def fromTable(cls, table: Mapping[str, Any], where: str) -> ThrottleRule:
        """
        Read one C{[[throttles]]} table.

        @raise ValueError: naming C{where}, the key and what is accepted.
        """
        _checkKeys(table, cls.KEYS, where)
        text = "a glob pattern string"
        number = "a whole number"
        rule = cls(
            domain=_tableValue(table, "domain", str, text, where),
            mx=_tableValue(table, "mx", str, text, where),
            ip=_tableValue(table, "ip", str, text, where),
            connections=_tableValue(table, "connections", int, number, where),
            messagesPerConnection=_tableValue(table, "messages-per-connection", int, number, where),
            messagesPerMinute=_tableValue(table, "messages-per-minute", int, number, where),
            connectionsPerMinute=_tableValue(table, "connections-per-minute", int, number, where),
        )
        for key in ("domain", "mx"):
            pattern = getattr(rule, key)
            if pattern is not None and not pattern.strip():
                raise ValueError(f"{where}: {key!r} is {pattern!r}; give {_NAME_EXAMPLES[key]}")
        if rule.ip is not None:
            problem = _ipPatternProblem(rule.ip)
            if problem is not None:
                leaveOut = ", or leave 'ip' out to match every local address" if not rule.ip else ""
                raise ValueError(
                    f"{where}: 'ip' is {rule.ip!r}, which no local address can match: {problem}; "
                    'give an IPv4 or IPv6 address or a glob pattern of one, e.g. "192.0.2.1", '
                    f'"10.*", "10.0.0.[1-4]" or "2001:db8::*"{leaveOut}'
                )
            # matched against the canonical form of the message's address
            rule = replace(rule, ip=canonicalIP(rule.ip).lower())
        if (rule.domain is None) == (rule.mx is None):
            raise ValueError(f"{where}: give either 'domain' or 'mx' (a glob pattern), not both or neither")
        if rule.connections == 0 or rule.messagesPerConnection == 0:
            raise ValueError(f"{where}: 'connections' and 'messages-per-connection' must be 1 or more")
        return rule


@dataclass(frozen=True)
class DKIMKeyRule:
    """
    The signing key of one domain (a C{[[dkim-keys]]} table in TOML), so
    that a message's C{dkim} object may name just C{{"domain": ...}} instead
    of carrying a private key.
    """

    domain: str
    selector: str
    #: path of the PEM private key (RSA or Ed25519), read at start
    keyfile: str

    KEYS = ("domain", "selector", "keyfile")

    @classmethod
    def fromTable(cls, table: Mapping[str, Any], where: str) -> DKIMKeyRule:
        """
        Read one C{[[dkim-keys]]} table.

        @raise ValueError: naming C{where} and the missing or wrong key.
        """
        _checkKeys(table, cls.KEYS, where)
        values = [_tableValue(table, key, str, "a string", where) for key in cls.KEYS]
        for key, value in zip(cls.KEYS, values):
            if not value:
                raise ValueError(f"{where}: {key!r} is missing; give domain, selector and keyfile")
        return cls(*values)


@dataclass(frozen=True)
class BackoffRule:
    """
    What to do when a server's reply matches (a C{[[backoff]]} table in
    TOML).  C{code}, C{status} and C{text} are regular expressions matched
    (C{re.search}, text case-insensitive) against the reply code, the
    enhanced status code and the reply text; all given ones must match.

    C{action} is one of:
      - C{"pause"}: no new attempts to the destination for C{seconds};
      - C{"reduce"}: at most C{connections} deliveries at once to the
        destination for C{seconds} (1 when C{connections} is left out);
      - C{"retry"}: only this message is tried again after C{seconds}
        instead of its retry schedule (greylisting).
    """

    action: str
    seconds: float
    code: str | None = None
    status: str | None = None
    text: str | None = None
    #: deliveries at once while an C{action = "reduce"} lasts; 1 when left
    #: out of the table; the other actions take none
    connections: int = 1

    KEYS = ("action", "seconds", "code", "status", "text", "connections")
    ACTIONS = ("pause", "reduce", "retry")

    @classmethod
    def fromTable(cls, table: Mapping[str, Any], where: str) -> BackoffRule:
        """
        Read one C{[[backoff]]} table.

        @raise ValueError: naming C{where}, the key and what is accepted.
        """
        _checkKeys(table, cls.KEYS, where)
        action = _tableValue(table, "action", str, "pause, reduce or retry", where)
        if action not in cls.ACTIONS:
            raise ValueError(f"{where}: 'action' is {action!r}; give one of {', '.join(cls.ACTIONS)}")
        seconds = _tableValue(table, "seconds", float, "a number of seconds", where)
        if seconds is None:
            raise ValueError(f"{where}: 'seconds' is missing; say how long the {action} lasts")
        patterns = {}
        for key in ("code", "status", "text"):
            pattern = _tableValue(table, key, str, "a regular expression string", where)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ValueError(f"{where}: {key!r} is not a regular expression: {e}") from None
            patterns[key] = pattern
        if not any(patterns.values()):
            raise ValueError(f"{where}: give at least one of 'code', 'status', 'text' to match replies")
        connections = _tableValue(table, "connections", int, "a whole number", where)
        if connections is None:
            connections = 1
        elif action != "reduce":
            raise ValueError(
                f"{where}: 'connections' is only for action = \"reduce\" (the deliveries at once "
                f"it leaves), not for {action!r}; leave 'connections' out, or give action = \"reduce\""
            )
        elif connections == 0:
            raise ValueError(
                f"{where}: 'connections' is 0; give 1 or more (to stop all deliveries for a "
                'while, give action = "pause")'
            )
        return cls(action, seconds, connections=connections, **patterns)


@dataclass
class Config:
    """
    Everything a L{mqtwist.service.MailerService} needs to know.
    """

    #: RabbitMQ URL (C{amqp://user:pass@host:5672/vhost?heartbeat=30}); C{None}
    #: starts a private RabbitMQ node from the Debian package.
    amqp: str | None = None
    #: where the private node keeps its data when C{amqp} is C{None}
    brokerDir: str = ".state/rabbitmq"
    #: AMQP port of the private node
    brokerPort: int = 5672
    #: CPU priority (nice) of the private node: on a shared machine mqtwist,
    #: which the node is there to serve, gets the CPU first
    brokerNice: int = 10

    outbox: str = "outbox"
    #: result queues; an empty name switches that queue off
    results: str = "results"
    success: str = "success"
    failure: str = "failure"
    retry: str = "retry"

    #: C{host:port} of a relay that takes all mail instead of MX delivery
    smarthost: str | None = None
    #: TCP port used for MX delivery
    mxPort: int = 25
    #: C{host:port} name servers for MX lookups; empty means the system's
    nameservers: list[str] = field(default_factory=list)
    #: seconds a DNS query may take (with its retransmissions)
    dnsTimeout: float = 20.0
    #: seconds an MX answer stays cached at least, whatever its TTL
    dnsMinCacheTime: float = 60.0
    #: addresses of a domain's mail exchangers tried within one attempt
    mxAddressesPerAttempt: int = 5

    #: data plugins to run, in order; C{None} runs every discovered plugin
    #: ordered by name
    plugins: list[str] | None = None
    #: seconds a data plugin's Deferred may take before it is cancelled
    pluginTimeout: float = 30.0
    #: how many times the plugin chain runs before the attempt fails
    pluginRuns: int = 3
    #: seconds between two runs of the plugin chain
    pluginRetryDelay: float = 1.0

    #: outbox messages handed to this process before it acknowledges any
    prefetch: int = 200
    #: deliveries in progress at once
    concurrency: int = 100
    #: the name this host gives in EHLO/HELO
    ehloName: str = field(default_factory=socket.getfqdn)

    #: TLS policy of messages without C{security}: C{optional},
    #: C{opportunistic}, C{required} or C{verified}
    security: str = "opportunistic"
    #: PEM file with the client certificate (and its key, unless C{tlsKey})
    #: shown to servers that ask for one
    tlsCertificate: str | None = None
    #: PEM file with the private key of C{tlsCertificate}
    tlsKey: str | None = None
    #: PEM file of the CA certificates that C{verified} trusts; C{None}: the
    #: system's
    tlsCaFile: str | None = None
    #: AUTH user name for the configured C{smarthost}
    smarthostUsername: str | None = None
    #: AUTH password for the configured C{smarthost}
    smarthostPassword: str | None = field(default=None, repr=False)
    #: host names (or C{*}) to which AUTH may be sent without TLS
    authCleartextHosts: list[str] = field(default_factory=list)

    #: SMTP connections open at once to one destination
    maxConnectionsPerDestination: int = 10
    #: messages one SMTP connection carries before it is closed
    maxMessagesPerConnection: int = 100
    #: seconds an unused SMTP connection stays open for the next message
    idleTimeout: float = 10.0
    #: messages per minute to one destination (0: no limit)
    messagesPerMinute: int = 0
    #: new SMTP connections per minute to one destination (0: no limit)
    connectionsPerMinute: int = 0
    #: limits of particular destinations (TOML C{[[throttles]]} tables only)
    throttles: list[ThrottleRule] = field(
        default_factory=list, metadata={"toml": ThrottleRule.fromTable}
    )
    #: reply patterns that pause or slow a destination, checked before the
    #: built-in ones (TOML C{[[backoff]]} tables only)
    backoff: list[BackoffRule] = field(
        default_factory=list, metadata={"toml": BackoffRule.fromTable}
    )
    #: messages per destination that wait in this process for a connection;
    #: more are parked in a delay queue
    destinationBacklog: int = 10
    #: seconds without an ended delivery after which a busy destination
    #: counts as stuck: then only C{destinationBacklog} of its messages wait
    stuckAfter: float = 1.0
    #: deliveries to other destinations that may end while a destination
    #: with messages waiting ends none, before it counts as stuck (0: no
    #: such limit): next to a fast destination, a slow one is found out in
    #: milliseconds
    stuckAfterOthers: int = 50
    #: seconds a message is parked when its destination is busy
    parkDelay: float = 30.0
    #: the longest a message is parked: every deferral in a row doubles its
    #: park time (from the pause or C{parkDelay}) up to this
    parkDelayMax: float = 900.0
    #: seconds over which the deferrals of one destination are gathered
    #: into one log event (0: an event for each)
    deferralLogInterval: float = 1.0
    #: seconds until greylisted messages (450/451 that say so) are tried again
    greylistDelay: float = 300.0
    #: failed connections in a row after which a destination is marked down
    downAfterFailures: int = 5
    #: seconds a destination stays marked down
    downTime: float = 300.0
    timeouts: SMTPTimeouts = field(default_factory=SMTPTimeouts)

    #: DKIM keys by signing domain (TOML C{[[dkim-keys]]} tables only)
    dkimKeys: list[DKIMKeyRule] = field(
        default_factory=list, metadata={"toml": DKIMKeyRule.fromTable}
    )
    #: private keys sent in messages that stay parsed (least recently used
    #: dropped first)
    dkimKeyCache: int = 1000

    #: seconds between attempts when the message has no C{retries}; the last
    #: one repeats
    retries: list[int] = field(
        default_factory=lambda: [600, 600, 1800, 1800, 3600, 3600, 7200]
    )
    #: seconds after the first attempt when a message without
    #: C{maxdelivertime} expires
    maxDeliverTime: int = 86400
    #: the delays, in seconds, that have a delay queue of their own; a retry
    #: delay is rounded up to the next one
    delayBuckets: list[int] = field(
        default_factory=lambda: [1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200]
    )

    #: queue that takes a copy of each outbox message that cannot be settled
    #: with a result (empty: such a message is dropped, with a log line)
    deadLetterQueue: str = "outbox.dead"
    #: times the broker may fail to confirm a message's results before the
    #: message, when it comes back, goes to the dead-letter queue
    settleAttempts: int = 3
    #: bytes an outbox job may have, C{mime} included
    maxJobBytes: int = 64 * 1024 * 1024
    #: objects and lists inside one another in an outbox job
    maxJobDepth: int = 32
    #: keys of one object, items of one list, in an outbox job
    maxJobItems: int = 10_000
    #: characters of one string of an outbox job outside its C{mime}
    maxJobString: int = 65_536

    #: seconds that stopping the service waits for deliveries in flight
    shutdownTimeout: float = 30.0
    #: seconds between reconnection attempts to RabbitMQ grow up to this
    reconnectMaxDelay: float = 30.0
    #: the lowest level of the log events written (C{debug}, C{info}, C{warn},
    #: C{error}, C{critical}); lower ones are dropped before formatting
    logLevel: str = "info"
