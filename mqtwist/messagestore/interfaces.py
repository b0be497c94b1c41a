"""
The interfaces of an external message store (C{docs/plugins.rst}, "Message
stores").

A job may carry C{key} instead of C{mime}, as in MailerQ: the message itself
waits in an external store, and mqtwist loads it once an SMTP connection
is ready to carry it.  A store is an L{IMessageStore}; the backends that
make stores from a URL are L{IMessageStoreBackend} plugins, found with
Twisted's plugin system in L{mqtwist.messagestore.backends} and chosen by
the scheme of the C{--message-store} URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface

__all__ = ["IMessageStore", "IMessageStoreBackend", "StoreSettings"]


@dataclass(frozen=True)
class StoreSettings:
    """
    What a backend takes from the configuration besides the URL.

    @ivar timeout: seconds one operation may take (C{--message-store-timeout}).
    @ivar maxBytes: the most bytes a fetched message may have.
    @ivar threads: threads (and connections) of a backend whose client
        blocks (C{--message-store-threads}).
    """

    timeout: float = 20.0
    maxBytes: int = 64 * 1024 * 1024
    threads: int = 4


class IMessageStore(Interface):
    """
    Where the messages of C{key} jobs are kept.  Every method returns at
    once; none may block the reactor thread.  Failures are the exceptions of
    L{mqtwist.messagestore.errors}; any other counts as a store that is
    unavailable.
    """

    def fetch(key: str) -> Deferred[bytes]:
        """
        Read the message stored under C{key}.

        @return: a C{Deferred} firing with the message as C{bytes}, or
            failing with L{mqtwist.messagestore.errors.MessageNotFound} when
            nothing is stored under C{key},
            L{mqtwist.messagestore.errors.MessageUnusable} when what is
            stored cannot be a message (too big, not a string), or
            L{mqtwist.messagestore.errors.StoreUnavailable} when the store
            cannot answer now.  Cancelling it abandons the read.
        """

    def store(key: str, data: bytes) -> Deferred[None]:
        """
        Keep C{data} under C{key}, replacing what was there.

        @return: a C{Deferred} firing with C{None} once it is stored, or
            failing with L{mqtwist.messagestore.errors.StoreError}.
        """

    def delete(key: str) -> Deferred[None]:
        """
        Remove what is stored under C{key}; nothing there is no error.

        @return: a C{Deferred} firing with C{None} once it is gone, or
            failing with L{mqtwist.messagestore.errors.StoreError}.
        """

    def close() -> Deferred[None]:
        """
        Release the store's connections and threads; called once, when the
        service stops.

        @return: a C{Deferred} firing with C{None} when they are released.
        """


class IMessageStoreBackend(IPlugin):
    """
    Makes message stores from URLs of its schemes: a module of the package
    L{mqtwist.messagestore.backends} holds an instance of a class that
    declares C{@implementer(IMessageStoreBackend)}.
    """

    schemes = Attribute(
        "The URL schemes this backend serves, lower case, as a tuple of str: "
        "('redis', 'rediss', 'unix').  No two installed backends may share one."
    )

    def open(url: str, settings: StoreSettings, reactor: Any) -> IMessageStore:
        """
        Make a store for C{url}; it connects when first used, so that
        mqtwist starts while the store is down.

        @param url: the C{--message-store} URL, credentials included: never
            put it in a log line or an exception's text (see
            L{mqtwist.messagestore.discovery.safeURL}).
        @param settings: the L{StoreSettings}.
        @param reactor: the service's reactor.
        @raise ValueError: when C{url} cannot name a store of this backend,
            saying what is wrong without the credentials.
        """
