"""
Where the AMQP broker is, parsed from an C{amqp://} or C{amqps://} URL.

The form is RabbitMQ's URI scheme::

    amqp[s]://[user[:password]@]host[:port][/vhost][?heartbeat=N&...]

The vhost is the path without its leading slash, percent-decoded, so the
default vhost C{/} is written C{%2f}; an empty path also means C{/}.  Query
parameters: C{heartbeat} (seconds, 0 switches heartbeats off),
C{auth_mechanism} (C{PLAIN} or C{AMQPLAIN}) and C{connection_timeout}
(seconds to wait for the TCP/TLS connection, and again for the AMQP login
that follows).

The nodes of a RabbitMQ cluster are given as several such URLs separated by
commas (L{parseBrokerURLs}): C{amqp://u:p@node1:5672/,amqp://u:p@node2:5672/}.
Each is a whole URL, so the nodes may differ in port, user or TLS.  Only a
comma followed by C{amqp://} or C{amqps://} separates two URLs: one URL
reads as it always did, a comma in its password included.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
MECHANISMS = ("PLAIN", "AMQPLAIN")

#: where one URL of a list ends and the next begins
_NEXT_URL = re.compile(r"\s*,\s*(?=amqps?://)", re.IGNORECASE)


@dataclass(frozen=True)
class BrokerURL:
    """
    Everything needed to connect to one broker.  C{str()} and L{redacted}
    never show the password.
    """

    host: str = "localhost"
    port: int = 5672
    vhost: str = "/"
    username: str = "guest"
    password: str = "guest"
    tls: bool = False
    #: seconds between heartbeats; 0 switches them off
    heartbeat: int = 60
    #: SASL mechanism for the login
    authMechanism: str = "PLAIN"
    #: seconds to wait for the TCP (and TLS) connection to be made, and
    #: again for the AMQP login on it
    connectTimeout: float = 30.0

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """
        @param url: an C{amqp://} or C{amqps://} URL.
        @return: the broker it names, with defaults for what it leaves out.
        @raise ValueError: the URL cannot be used; the message names the URL
            (without its password) and what is wrong with it.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise ValueError(f"AMQP URL {_redact(url)!r}: bad port: {e}") from None

        def bad(problem: str) -> ValueError:
            return ValueError(f"AMQP URL {_redact(url)!r}: {problem}")

        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise bad(f"scheme {parts.scheme or '(none)'!r} is not amqp:// or amqps://")
        if not parts.hostname:
            raise bad("no host name (expected amqp://host[:port]/vhost)")
        if parts.fragment:
            raise bad("a URL fragment ('#...') has no meaning here")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if "/" in path:
            raise bad(
                "the vhost must be one path segment; write a '/' inside "
                "it as %2f"
            )
        vhost = unquote(path) if path else "/"
        kwargs: dict[str, object] = {}
        try:
            query = parse_qs(
                parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)
            )
        except ValueError:
            raise bad(f"query {parts.query!r} is not name=value&... pairs") from None
        for name, values in query.items():
            if len(values) != 1:
                raise bad(f"query parameter {name!r} is given more than once")
            kwargs[name] = values[0]
        heartbeat = _number(kwargs.pop("heartbeat", "60"), int, "heartbeat", bad)
        if not 0 <= heartbeat <= 65535:
            raise bad(f"heartbeat={heartbeat} is outside 0..65535 seconds")
        connectTimeout = _number(
            kwargs.pop("connection_timeout", "30"), float, "connection_timeout", bad
        )
        if connectTimeout <= 0:
            raise bad("connection_timeout must be more than 0 seconds")
        mechanism = str(kwargs.pop("auth_mechanism", "PLAIN")).upper()
        if mechanism not in MECHANISMS:
            raise bad(
                f"auth_mechanism {mechanism!r} is not one of {', '.join(MECHANISMS)}"
            )
        if kwargs:
            raise bad(
                f"unknown query parameter(s) {', '.join(sorted(kwargs))}; "
                "known: heartbeat, auth_mechanism, connection_timeout"
            )
        return cls(
            host=parts.hostname,
            port=port if port is not None else DEFAULT_PORTS[scheme],
            vhost=vhost,
            username=unquote(parts.username) if parts.username is not None else "guest",
            password=unquote(parts.password) if parts.password is not None else "guest",
            tls=scheme == "amqps",
            heartbeat=heartbeat,
            authMechanism=mechanism,
            connectTimeout=connectTimeout,
        )

    def redacted(self) -> str:
        """
        @return: the URL with the password replaced by C{***}, for logs and
            error messages.
        """
        scheme = "amqps" if self.tls else "amqp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (
            f"{scheme}://{quote(self.username, safe='')}:***@{host}:{self.port}"
            f"/{quote(self.vhost, safe='')}"
        )

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"BrokerURL({self.redacted()!r}, heartbeat={self.heartbeat})"


def parseBrokerURLs(text: str) -> tuple[BrokerURL, ...]:
    """
    @param text: one C{amqp://} or C{amqps://} URL, or the URLs of the nodes
        of a cluster separated by commas (a comma followed by C{amqp://} or
        C{amqps://} starts the next URL).
    @return: the brokers it names, in its order (one for a single URL).
    @raise ValueError: a URL cannot be used (the message is
        L{BrokerURL.parse}'s, naming that URL without its password), or a
        node is named twice.
    """
    urls = tuple(BrokerURL.parse(url) for url in _NEXT_URL.split(text))
    seen: dict[tuple[str, int, str], BrokerURL] = {}
    for url in urls:
        node = (url.host.lower(), url.port, url.vhost)
        if node in seen:
            raise ValueError(
                f"AMQP URLs {','.join(u.redacted() for u in urls)!r}: "
                f"{url.redacted()} is given twice; "
                "give each node of the cluster once"
            )
        seen[node] = url
    return urls


_N = TypeVar("_N", int, float)


def _number(
    text: object, kind: Callable[[str], _N], name: str, bad: Callable[[str], ValueError]
) -> _N:
    try:
        return kind(str(text))
    except ValueError:
        raise bad(f"{name}={text!r} is not a number") from None


def _redact(url: str) -> str:
    """
    Hide the password of a URL that may not even parse.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}://{userinfo}{at}{hostport}{slash}{tail}"
