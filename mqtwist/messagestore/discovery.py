"""
Finding the installed message store backends and opening the store that
C{--message-store} names, by its URL's scheme.

Backends are the objects providing L{IMessageStoreBackend} in the modules
of the L{mqtwist.messagestore.backends} package, which spans every
C{mqtwist/messagestore/backends/} folder on C{sys.path}.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twisted.plugin import getPlugins

import mqtwist.messagestore.backends
from mqtwist.messagestore.interfaces import IMessageStore, IMessageStoreBackend, StoreSettings

__all__ = ["StoreSettings", "findBackends", "openStore", "safeURL"]


def safeURL(url: str) -> str:
    """
    C{url} as logs and messages may show it: without its password (and
    without a user name that could be one, as in C{redis://secret@host}),
    and without its query, which may hold credentials too.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        # unparseable: show the scheme alone, which cannot be a secret
        return url.partition(":")[0] + ":..."
    if ":" in host:
        host = f"[{host}]"
    netloc = ("***@" if parts.username or parts.password else "") + host + (f":{port}" if port else "")
    return f"{parts.scheme}://{netloc}{parts.path}"


def findBackends() -> dict[str, IMessageStoreBackend]:
    """
    The installed backends by scheme.

    @raise ValueError: when two backends claim one scheme, or a backend's
        C{schemes} is not a tuple of non-empty lower-case str.
    """
    found: dict[str, IMessageStoreBackend] = {}
    for backend in getPlugins(IMessageStoreBackend, mqtwist.messagestore.backends):
        schemes = getattr(backend, "schemes", None)
        if not (
            isinstance(schemes, tuple)
            and schemes
            and all(isinstance(s, str) and s and s == s.lower() for s in schemes)
        ):
            raise ValueError(
                f"the message store backend {type(backend).__module__}.{type(backend).__name__} "
                f"has schemes {schemes!r}; give it a tuple of lower-case scheme names"
            )
        for scheme in schemes:
            if scheme in found and found[scheme] is not backend:
                raise ValueError(
                    f"two message store backends serve {scheme}:// URLs: "
                    f"{type(found[scheme]).__module__} and {type(backend).__module__}; "
                    f"uninstall one of them"
                )
            found[scheme] = backend
    return dict(sorted(found.items()))


def openStore(
    url: str,
    settings: StoreSettings,
    reactor: Any,
    backends: dict[str, IMessageStoreBackend] | None = None,
) -> IMessageStore:
    """
    The store that C{url} names.

    @param backends: the backends to choose from by scheme;
        L{findBackends}C{()} if C{None}.
    @raise ValueError: when no backend serves the URL's scheme (naming the
        schemes there are), or the backend refuses the URL; the text never
        holds the URL's credentials.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if backends is None:
        backends = findBackends()
    if scheme not in backends:
        known = ", ".join(f"{name}://" for name in backends) or "none"
        raise ValueError(
            f"no message store backend serves {safeURL(url)} (installed: {known}); "
            f"give a URL of one of those schemes, or install the backend that serves it"
        )
    return IMessageStore(backends[scheme].open(url, settings, reactor))
