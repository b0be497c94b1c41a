"""
The message store as deliveries use it: the message of a C{key} job
loaded for an attempt, with the time-out and the size limit, its failures
made C{storage} result entries (MailerQ's state for "the mime data is
loaded from external storage"), and the stored message removed when its
job has ended.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtwist.config import Config
from mqtwist.content.message import Message
from mqtwist.errors import AttemptFailed
from mqtwist.messagestore.discovery import openStore, safeURL
from mqtwist.messagestore.errors import MessageNotFound, StoreError, StoreUnavailable
from mqtwist.messagestore.interfaces import IMessageStore, StoreSettings
from mqtwist.validation import excerpt

__all__ = ["StoredMessages", "noStore", "storedMessages"]

#: what the description of a failed load advises, by whether it is final
_ADVICE = {
    True: "the job fails for good; store the message before publishing its job, or give it in 'mime'",
    False: "the job is tried again later",
}


def noStore(message: Message) -> AttemptFailed:
    """
    How a C{key} job fails where no message store is configured: as
    C{process}/C{invalid}, final, MailerQ's result for a job that this
    installation cannot send (as for its license limits), before any
    connection is made.
    """
    return AttemptFailed(
        "process",
        "invalid",
        f"the job has 'key' {excerpt(message.storeKey)} and no 'mime', and no message store is "
        f"configured to load it from; start mqtwist with --message-store (e.g. "
        f"redis://127.0.0.1:6379/0), or give the message in 'mime'",
        permanent=True,
    )


class StoredMessages:
    """
    Loads and removes the messages of C{key} jobs.

    @param store: where they are.
    @param name: how descriptions name the store: its URL without
        credentials.
    @param timeout: seconds a fetch may take before the attempt fails, to
        be retried.
    @param maxBytes: the most bytes a loaded message may have.
    @param deleteEnded: remove a job's stored message once the job has
        ended (delivered, or failed for good), unless the job has
        C{keepmime}.
    """

    log = Logger()

    def __init__(
        self,
        store: IMessageStore,
        *,
        name: str,
        timeout: float,
        maxBytes: int,
        deleteEnded: bool,
        reactor: Any,
    ) -> None:
        self.store = store
        self.name = name
        self.timeout = timeout
        self.maxBytes = maxBytes
        self.deleteEnded = deleteEnded
        self.reactor = reactor

    def load(self, message: Message) -> Deferred[bytes]:
        """
        Fetch the message of C{message}'s C{key}.

        @return: a Deferred firing with its bytes, or failing with an
            L{AttemptFailed} in state C{storage}: C{error} and permanent when
            the key is not there or its value cannot be sent, C{timeout},
            C{lost} or C{error} and temporary when the store could not
            answer in time.  Cancelling it cancels the fetch.
        """
        key = message.storeKey
        assert key is not None
        fetched: Deferred[bytes] = self.store.fetch(key)
        fetched.addTimeout(self.timeout, self.reactor)
        return fetched.addCallbacks(self._loaded, self._failed, callbackArgs=(key,), errbackArgs=(message,))

    def _loaded(self, data: bytes, key: str) -> bytes:
        if not isinstance(data, bytes):
            raise AttemptFailed(
                "storage",
                "error",
                f"the message store {self.name} gave {type(data).__name__} for the key "
                f"{excerpt(key)}, not bytes: a bug of its backend; the job is tried again later",
            )
        # a backend of a plugin may not check it
        if len(data) > self.maxBytes:
            raise AttemptFailed(
                "storage",
                "error",
                f"the message under the key {excerpt(key)} in the message store {self.name} is "
                f"{len(data)} bytes, more than the {self.maxBytes} bytes a message may have; "
                f"{_ADVICE[True]}",
                permanent=True,
            )
        return data

    def _failed(self, failure: Failure, message: Message) -> Failure:
        if failure.check(CancelledError):
            # the envelope was refused or the service stops: no store failure
            return failure
        error = failure.value
        if isinstance(error, TimeoutError):
            error = StoreUnavailable(
                f"the message store {self.name} did not answer within {self.timeout:g} s "
                f"(key {excerpt(message.storeKey)})",
                "timeout",
            )
        elif not isinstance(error, StoreError):
            if not isinstance(error, Exception):
                return failure
            self.log.failure(
                "the message store {store} failed to fetch the key of {message}",
                failure,
                store=self.name,
                message=message.label,
            )
            error = StoreUnavailable(f"{type(error).__name__}: {excerpt(str(error), 200)}", "error")
        if not isinstance(error, MessageNotFound):
            self.log.warn(
                "could not load {message} from the message store: {error}", message=message.label, error=error
            )
        return Failure(
            AttemptFailed(
                "storage", error.result, f"{error}; {_ADVICE[error.permanent]}", permanent=error.permanent
            )
        )

    def ended(self, message: Message) -> None:
        """
        The job of C{message} has ended: remove its stored message, unless
        the job has C{keepmime} or removal is off.  A failed removal is
        logged, and the store's own expiry is left to clean up.
        """
        if message.storeKey is None or message.keepmime or not self.deleteEnded:
            return
        key = message.storeKey

        def failed(failure: Failure) -> None:
            self.log.warn(
                "could not remove the key of {message} from the message store {store}: {error}",
                message=message.label,
                store=self.name,
                error=failure.value,
            )

        self.store.delete(key).addErrback(failed)

    def close(self) -> Deferred[None]:
        """
        Release the store's connections and threads.

        @return: a Deferred firing when they are released.
        """
        closed: Deferred[None] = self.store.close()
        return closed


def storedMessages(config: Config, reactor: Any) -> StoredMessages | None:
    """
    The message store that C{config} names (C{--message-store} and its
    settings), or C{None} when it names none.

    @raise ValueError: when no installed backend serves the URL's scheme,
        or the backend refuses the URL.
    """
    if config.messageStore is None:
        return None
    maxBytes = min(config.messageStoreMaxBytes, config.maxJobBytes)
    name = safeURL(config.messageStore)
    store = openStore(
        config.messageStore,
        StoreSettings(timeout=config.messageStoreTimeout, maxBytes=maxBytes, threads=config.messageStoreThreads),
        reactor,
    )
    StoredMessages.log.info(
        "jobs with 'key' are loaded from the message store {store}, stored messages {cleanup} after their job",
        store=name,
        cleanup="deleted" if config.messageStoreCleanup == "delete" else "kept",
    )
    return StoredMessages(
        store,
        name=name,
        timeout=config.messageStoreTimeout,
        maxBytes=maxBytes,
        deleteEnded=config.messageStoreCleanup == "delete",
        reactor=reactor,
    )
