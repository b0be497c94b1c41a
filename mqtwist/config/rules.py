"""
The settings that are tables of the TOML file only, one class a kind:
C{[[throttles]]} (L{ThrottleRule}), C{[[dkim-keys]]} (L{DKIMKeyRule}),
C{[[backoff]]} (L{BackoffRule}) and C{[[pools]]} (L{PoolRule}).  Each
reads and checks one table.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from mqtwist.validation import canonicalIP


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


def _patterns(table: Mapping[str, Any], where: str) -> dict[str, str | None]:
    """
    The C{code}, C{status} and C{text} of a table (C{None} for one not
    given), each checked to be a regular expression.

    @raise ValueError: naming C{where} and the key.
    """
    patterns = {}
    for key in ("code", "status", "text"):
        pattern = _tableValue(table, key, str, "a regular expression string", where)
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{where}: {key!r} is not a regular expression: {e}") from None
        patterns[key] = pattern
    return patterns


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
    #: what the key makes, as a message's C{dkim.protocols}: C{("dkim",)}
    #: (the default), C{("dkim", "arc")} or C{("arc",)}; a message's own
    #: C{protocols} wins
    protocols: tuple[str, ...] = ("dkim",)

    KEYS = ("domain", "selector", "keyfile", "protocols")
    REQUIRED = ("domain", "selector", "keyfile")
    PROTOCOLS = ("dkim", "arc")

    @classmethod
    def fromTable(cls, table: Mapping[str, Any], where: str) -> DKIMKeyRule:
        """
        Read one C{[[dkim-keys]]} table.

        @raise ValueError: naming C{where} and the missing or wrong key.
        """
        _checkKeys(table, cls.KEYS, where)
        values = [_tableValue(table, key, str, "a string", where) for key in cls.REQUIRED]
        for key, value in zip(cls.REQUIRED, values):
            if not value:
                raise ValueError(f"{where}: {key!r} is missing; give domain, selector and keyfile")
        protocols = table.get("protocols", ["dkim"])
        if (
            not isinstance(protocols, list)
            or not protocols
            or not all(isinstance(p, str) and p.lower() in cls.PROTOCOLS for p in protocols)
        ):
            raise ValueError(
                f'{where}: \'protocols\' is {protocols!r}; give a list of "dkim" and/or "arc", '
                f'e.g. ["dkim", "arc"]'
            )
        domain, selector, keyfile = values
        return cls(domain, selector, keyfile, tuple(dict.fromkeys(p.lower() for p in protocols)))


@dataclass(frozen=True)
class BackoffRule:
    """
    What to do when a server's reply matches (a C{[[backoff]]} table in
    TOML).  C{code}, C{status} and C{text} are regular expressions matched
    (C{re.search}, text case-insensitive) against the reply code, the
    enhanced status code and the reply text; all given ones must match.

    C{category} names categories (one or a list, see
    L{mqtwist.delivery.categories}); with it, the reply's category must be
    one of them.

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
    #: the categories of the replies that match (C{category} in TOML); any
    #: when empty
    categories: tuple[str, ...] = ()

    KEYS = ("action", "seconds", "code", "status", "text", "category", "connections")
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
        patterns = _patterns(table, where)
        categories = _names(table, "category", 'a category such as "rate-limited"', where)
        for name in categories:
            problem = categoryNameProblem(name)
            if problem is not None:
                raise ValueError(f"{where}: 'category': {problem}")
        if not any(patterns.values()) and not categories:
            raise ValueError(
                f"{where}: give at least one of 'code', 'status', 'text', 'category' to match replies"
            )
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
        return cls(action, seconds, connections=connections, categories=categories, **patterns)


@dataclass(frozen=True)
class PoolRule:
    """
    A named set of local addresses (a C{[[pools]]} table in TOML): a message
    whose C{pool} names it is sent from one of them, as MailerQ's IP pools.
    """

    name: str
    #: the addresses, in canonical form (IPv6 lower case, compressed)
    ips: tuple[str, ...]

    KEYS = ("name", "ips")

    @classmethod
    def fromTable(cls, table: Mapping[str, Any], where: str) -> PoolRule:
        """
        Read one C{[[pools]]} table.

        @raise ValueError: naming C{where}, the key and what is accepted.
        """
        _checkKeys(table, cls.KEYS, where)
        name = _tableValue(table, "name", str, "a string", where)
        if not name or not name.strip():
            raise ValueError(f"{where}: 'name' is missing or empty; give the name messages use in 'pool'")
        ips = table.get("ips")
        if not isinstance(ips, list) or not ips or not all(isinstance(ip, str) for ip in ips):
            raise ValueError(f"{where}: 'ips' must be a non-empty list of IPv4 or IPv6 addresses")
        addresses = []
        for ip in ips:
            try:
                addresses.append(str(ipaddress.ip_address(ip)))
            except ValueError:
                raise ValueError(f"{where}: {ip!r} in 'ips' is no IPv4 or IPv6 address") from None
        return cls(name, tuple(addresses))


#: what a category's name may be: it is a field of result entries and a
#: label of metrics, so a short word
_CATEGORY_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")


def _names(table: Mapping[str, Any], key: str, what: str, where: str) -> tuple[str, ...]:
    """
    The value of C{key}: a name or a list of names, as a tuple.
    """
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(name, str) and name for name in value):
        raise ValueError(f"{where}: {key!r} is {value!r}; give {what} or a list of them")
    return tuple(value)


def categoryNameProblem(name: object) -> str | None:
    """
    Why C{name} cannot be a category, if it cannot.
    """
    if not isinstance(name, str) or not _CATEGORY_NAME.fullmatch(name):
        return (
            f"{name!r} is not a category name; give lower-case letters, digits and '-', "
            'starting with a letter, at most 40 characters, e.g. "bad-recipient"'
        )
    return None


@dataclass(frozen=True)
class CategoryRule:
    """
    The category of the failed attempts one rule matches (a
    C{[[categories]]} table in TOML, or one of the shipped rules of
    C{mqtwist/delivery/categories.toml}).

    C{code}, C{status} and C{text} are regular expressions matched
    (C{re.search}, text case-insensitive) against the reply code, the
    enhanced status code and the description (the reply's text, or
    mqtwist's own account of a failure without a reply); a value the
    failure lacks is matched as C{""}.  C{states} and C{results} name the
    C{state} and C{result} values that match.  C{reply} C{True} matches
    only failures with a server's reply, C{False} only those without.  All
    given ones must match.
    """

    category: str
    code: str | None = None
    status: str | None = None
    text: str | None = None
    states: tuple[str, ...] = ()
    results: tuple[str, ...] = ()
    reply: bool | None = None

    KEYS = ("category", "code", "status", "text", "state", "result", "reply")

    @classmethod
    def fromTable(cls, table: Mapping[str, Any], where: str) -> CategoryRule:
        """
        Read one C{[[categories]]} table.

        @raise ValueError: naming C{where}, the key and what is accepted.
        """
        _checkKeys(table, cls.KEYS, where)
        category = table.get("category")
        problem = categoryNameProblem(category)
        if problem is not None or not isinstance(category, str):
            raise ValueError(f"{where}: 'category': {problem}")
        patterns = _patterns(table, where)
        reply = table.get("reply")
        if reply is not None and not isinstance(reply, bool):
            raise ValueError(
                f"{where}: 'reply' is {reply!r}; give true (only failures with a server's reply) "
                "or false (only those without)"
            )
        rule = cls(
            category,
            states=_names(table, "state", 'a state such as "rcptto"', where),
            results=_names(table, "result", 'a result such as "error"', where),
            reply=reply,
            **patterns,
        )
        if rule == cls(category):
            raise ValueError(
                f"{where}: give at least one of 'code', 'status', 'text', 'state', 'result', "
                "'reply': a rule without one would take every failure"
            )
        return rule
