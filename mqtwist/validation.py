"""
Checks of values taken from outbox JSON that end up in SMTP commands or
headers: addresses and header values.  A value that fails raises
L{InvalidMessage} naming what it is and what is wrong.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

from mqtwist.errors import InvalidMessage

# RFC 5321 section 4.5.3.1: local part 64 octets, domain 255, path 256.
_MAX_LOCAL_PART = 64
_MAX_DOMAIN = 255
_MAX_ADDRESS = 254
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FORBIDDEN_IN_ADDRESS = re.compile(r"[\s<>()\[\],;:\\\"]")
_DOMAIN_LABEL = re.compile(r"^(?!-)[A-Za-z0-9\-\u0080-\U0010ffff]{1,63}(?<!-)$")
_ADDRESS_LITERAL = re.compile(r"^\[[0-9A-Fa-f:.]+\]$|^\[IPv6:[0-9A-Fa-f:.]+\]$")
_NOT_PLAIN = re.compile(r"[ '\\]")
#: the characters of a value that a description shows before it cuts it
EXCERPT_LENGTH = 40


def excerpt(value: object, limit: int = EXCERPT_LENGTH) -> str:
    """
    How a description or a log line quotes a value taken from JSON: in
    quotes, at most C{limit} characters of it and how many more there are,
    with control characters, quotes, backslashes and lone surrogates
    escaped, so that a sender's megabyte or CR/LF never reaches a result or
    a log line whole.  A value that is not a string is named by its type
    and size (C{a list of 3 items}) or written as in JSON (numbers,
    C{true}, C{null}).
    """
    if isinstance(value, str):
        shown = value[:limit]
        if not (shown.isprintable() and "'" not in shown and "\\" not in shown):
            shown = "".join(_escapedCharacter(char) for char in shown)
        more = f"... ({len(value) - limit} more characters)" if len(value) > limit else ""
        return f"'{shown}'{more}"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return f"an object of {len(value)} key{'' if len(value) == 1 else 's'}"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return repr(value)[:limit]
    return excerpt(str(value), limit)


_SHORT_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t", "'": "\\'", "\\": "\\\\"}


def shownName(name: str, limit: int = EXCERPT_LENGTH) -> str:
    """
    How a description or a log line names something by a string taken from
    JSON (a header name, an object's key, a host name): as it is when it is
    plain (at most C{limit} characters, printable, no space, quote or
    backslash), so that C{headers.append.X-Tag} reads as it should; else
    quoted as L{excerpt} quotes a value.
    """
    if 0 < len(name) <= limit and name.isprintable() and not _NOT_PLAIN.search(name):
        return name
    return excerpt(name)


def _escapedCharacter(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def checkHeaderValue(name: str, value: str) -> str:
    """
    Refuse a value taken from JSON that would end up in an SMTP command or a
    header when it holds CR, LF or another control character (header or
    command injection).

    @param name: what the value is, for the description (C{"recipient"});
        a key from JSON in it goes through L{shownName}.
    @return: C{value} unchanged.
    @raise InvalidMessage: when it holds a control character.
    """
    match = _CONTROL.search(value)
    if match is not None:
        raise InvalidMessage(
            f"{name} contains the control character {match.group()!r} at "
            f"position {match.start()}; remove CR, LF and other control "
            f"characters"
        )
    return value


def checkAddress(name: str, address: str) -> str:
    """
    Check that C{address} is a usable C{local@domain} mailbox for an SMTP
    envelope.  Non-ASCII is accepted (SMTPUTF8); quoted local parts are not.

    @return: C{address} unchanged.
    @raise InvalidMessage: naming C{name} and what is wrong.
    """
    checkHeaderValue(name, address)
    try:
        size = len(address.encode("utf-8"))
    except UnicodeEncodeError as e:
        # JSON lets a lone surrogate ("\ud800") through; no command can carry it
        raise InvalidMessage(
            f"{name} {excerpt(address)} has a lone surrogate at position {e.start}, which "
            f"UTF-8 cannot encode; escape only characters, and both halves of a pair"
        ) from None
    if size > _MAX_ADDRESS:
        raise InvalidMessage(
            f"{name} {excerpt(address)} is longer than {_MAX_ADDRESS} bytes (RFC 5321)"
        )
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InvalidMessage(
            f"{name} {excerpt(address)} is not an address of the form local@domain"
        )
    forbidden = _FORBIDDEN_IN_ADDRESS.search(local)
    if forbidden is not None:
        raise InvalidMessage(
            f"{name} {excerpt(address)} contains {forbidden.group()!r}; give the bare "
            f"address (local@domain) without brackets, quotes or spaces"
        )
    if len(local.encode("utf-8")) > _MAX_LOCAL_PART:
        raise InvalidMessage(
            f"{name} {excerpt(address)} has a local part longer than "
            f"{_MAX_LOCAL_PART} bytes (RFC 5321)"
        )
    if "@" in local or local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidMessage(
            f"{name} {excerpt(address)} has a malformed local part {excerpt(local)}"
        )
    if not _wellFormedDomain(domain):
        raise InvalidMessage(f"{name} {excerpt(address)} has a malformed domain {excerpt(domain)}")
    return address


@lru_cache(maxsize=4096)
def _wellFormedDomain(domain: str) -> bool:
    # cached: most messages go to and come from a few domains, and their
    # labels would be matched one by one for every message
    if _ADDRESS_LITERAL.match(domain):
        return True
    return len(domain) <= _MAX_DOMAIN and all(
        _DOMAIN_LABEL.match(label) for label in domain.rstrip(".").split(".")
    )


def checkIP(name: str, text: str) -> str:
    """
    Check that C{text} is an IPv4 or IPv6 address.

    @return: its canonical form (L{canonicalIP}).
    @raise InvalidMessage: naming C{name} and the value.
    """
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidMessage(f"{name} holds {excerpt(text)}, which is no IPv4 or IPv6 address") from None


def checkHostName(name: str, text: str) -> str:
    """
    Check that C{text} is a host name (a domain of letters, digits and
    hyphens, or an internationalised one) or an IP address.

    @return: C{text} unchanged.
    @raise InvalidMessage: naming C{name} and the value.
    """
    checkHeaderValue(name, text)
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if not _wellFormedDomain(text) or text.startswith("["):
        raise InvalidMessage(
            f"{name} is {excerpt(text)}, which is no host name or IP address; give a name "
            f"such as relay.example.com"
        )
    return text


def canonicalIP(text: str) -> str:
    """
    C{text} in the canonical form of its IP address (IPv6 in lower case and
    compressed: C{"2001:DB8:0::1"} is C{"2001:db8::1"}), so that one address
    written two ways is one; C{text} itself when it is no IP address.
    """
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text
