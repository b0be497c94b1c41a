"""
The Redis message store: C{--message-store redis://[[user]:password@]host:port/db}
(C{rediss://} for TLS, C{unix:///path/to/socket?db=0}).  A message is a
Redis string under its key, as C{SET key <RFC 5322 bytes>} stores it.

The client is redis-py (C{redis} on PyPI, maintained by Redis itself), its
synchronous API run in a thread pool of C{--message-store-threads}
threads, each with its own connection, like MailerQ's C{storage-threads}.
The other candidates: txredisapi speaks Redis natively on the reactor, but
it parses every reply, a message of megabytes included, on the reactor
thread, has one maintainer, and queues commands while the server is down
instead of failing them; redis-py's asyncio client needs Twisted's asyncio
reactor, which the service does not run on.  With threads the parsing of a
big message happens off the reactor thread, and every operation is bounded
by socket time-outs of C{--message-store-timeout} seconds besides the
Deferred's own time-out, so a stalled server holds a thread no longer than
that.

A fetch reads the key's existence, its length and at most the limit + 1
bytes of it in one MULTI/EXEC, so that a value over the limit is refused
without being read whole.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import redis
from redis import exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mqtwist.messagestore.discovery import safeURL
from mqtwist.messagestore.errors import MessageNotFound, MessageUnusable, StoreError, StoreUnavailable
from mqtwist.messagestore.interfaces import IMessageStore, IMessageStoreBackend, StoreSettings
from mqtwist.validation import excerpt

__all__ = ["RedisBackend", "RedisStore"]

#: the path of a redis:// URL: none, or a database number
_DATABASE = re.compile(r"(/\d*)?")


@implementer(IMessageStoreBackend)
class RedisBackend:
    """
    Redis, through redis-py in a thread pool.
    """

    schemes = ("redis", "rediss", "unix")

    def open(self, url: str, settings: StoreSettings, reactor: Any) -> RedisStore:
        return RedisStore(url, settings, reactor)


@implementer(IMessageStore)
class RedisStore:
    """
    A message store in one Redis database.

    @param url: a URL that C{redis.Redis.from_url} takes.
    @raise ValueError: when redis-py refuses C{url}.
    """

    def __init__(self, url: str, settings: StoreSettings, reactor: Any) -> None:
        self.name = safeURL(url)
        self.settings = settings
        self.reactor = reactor
        if url.startswith(("redis:", "rediss:")) and not _DATABASE.fullmatch(urlsplit(url).path):
            # redis-py would take database 0 instead
            raise ValueError(
                f"the message store URL {self.name} does not end with a database number; give "
                f"redis://host:port/0 (0-15 by default)"
            )
        try:
            self.client = redis.Redis.from_url(
                url,
                socket_timeout=settings.timeout,
                socket_connect_timeout=settings.timeout,
                # one connection per thread, so none waits for another
                max_connections=settings.threads,
                # the job is retried instead, later, by its own schedule
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as e:
            password = _password(url)
            text = str(e).replace(password, "***") if password else str(e)
            raise ValueError(f"the message store URL {self.name} is not one Redis takes: {text}") from None
        self.threads = ThreadPool(0, settings.threads, name="mqtwist-messagestore")
        self._started = False

    def _inThread(self, operation: Any, *args: Any) -> Deferred[Any]:
        if not self._started:
            # started on first use: a service that never reads a key
            # never has these threads
            self.threads.start()
            self._started = True
        return deferToThreadPool(self.reactor, self.threads, self._translated, operation, *args)

    def _translated(self, operation: Any, *args: Any) -> Any:
        """
        Run C{operation} (in a thread), with redis-py's exceptions made
        L{StoreError}s.
        """
        key = args[0]
        try:
            return operation(*args)
        except StoreError:
            raise
        except exceptions.TimeoutError:
            raise StoreUnavailable(
                f"the message store {self.name} did not answer within {self.settings.timeout:g} s "
                f"(key {excerpt(key)})",
                "timeout",
            ) from None
        except exceptions.ConnectionError as e:
            raise StoreUnavailable(
                f"the message store {self.name} could not be used for key {excerpt(key)}: "
                f"{type(e).__name__}: {excerpt(str(e), 200)}",
                "lost",
            ) from None
        except exceptions.ResponseError as e:
            if "WRONGTYPE" in str(e):
                raise MessageUnusable(
                    f"the key {excerpt(key)} in the message store {self.name} holds a Redis "
                    f"list, set or hash, not a message (a string)"
                ) from None
            raise StoreUnavailable(
                f"the message store {self.name} refused the command for key {excerpt(key)}: "
                f"{excerpt(str(e), 200)}",
                "error",
            ) from None

    def fetch(self, key: str) -> Deferred[bytes]:
        return self._inThread(self._fetch, key)

    def _fetch(self, key: str) -> bytes:
        limit = self.settings.maxBytes
        pipe = self.client.pipeline(transaction=True)
        pipe.exists(key)
        pipe.strlen(key)
        pipe.getrange(key, 0, limit)
        exists, size, data = pipe.execute()
        if not exists:
            raise MessageNotFound(f"the message store {self.name} has nothing under the key {excerpt(key)}")
        if size > limit:
            raise MessageUnusable(
                f"the message under the key {excerpt(key)} in the message store {self.name} is "
                f"{size} bytes, more than the {limit} bytes a message may have"
            )
        if not data:
            raise MessageUnusable(
                f"the key {excerpt(key)} in the message store {self.name} holds an empty string"
            )
        return bytes(data)

    def store(self, key: str, data: bytes) -> Deferred[None]:
        return self._inThread(self._store, key, data)

    def _store(self, key: str, data: bytes) -> None:
        self.client.set(key, data)

    def delete(self, key: str) -> Deferred[None]:
        return self._inThread(self._delete, key)

    def _delete(self, key: str) -> None:
        self.client.delete(key)

    def close(self) -> Deferred[None]:
        """
        Stop the threads (once those at work are done, which their socket
        time-outs bound) and close the connections, in a thread of the
        reactor's: joining threads blocks.
        """

        def stop() -> None:
            if self._started:
                self.threads.stop()
            self.client.close()

        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), stop)


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None
