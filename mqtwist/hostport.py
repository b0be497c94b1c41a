"""
C{host:port} strings: those of the configuration (smarthost, name servers),
and those of log lines and error messages.
"""

from __future__ import annotations

from twisted.internet.abstract import isIPv6Address

from mqtwist.validation import shownName

#: characters of the longest DNS name (RFC 1035 section 2.3.4, less the root)
LONGEST_HOST_NAME = 253


def hostPort(host: str, port: int) -> str:
    """
    C{host:port}, with brackets around an IPv6 address.  A host that cannot
    be a name (a message's smarthost of a megabyte, or with spaces) is shown
    as an excerpt.
    """
    if isIPv6Address(host):
        return f"[{host}]:{port}"
    return f"{shownName(host, LONGEST_HOST_NAME)}:{port}"


def parseHostPort(text: str, defaultPort: int) -> tuple[str, int]:
    """
    Split C{host:port} (or C{[v6]:port}, or a bare host) into its parts.

    @raise ValueError: naming C{text} when the port is not a number 1-65535.
    """
    host, port = text, defaultPort
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = _port(text, rest.lstrip(":"))
    elif text.count(":") == 1:
        host, portText = text.split(":")
        port = _port(text, portText)
    if not host:
        raise ValueError(f"{text!r} has no host name; use host:port")
    return host, port


def _port(text: str, portText: str) -> int:
    if not portText.isdigit() or not 0 < int(portText) < 65536:
        raise ValueError(f"{text!r} has no valid port; use host:port with a port 1-65535")
    return int(portText)
