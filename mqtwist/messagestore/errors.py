"""
How a message store says that a message could not be had.

Each error carries the C{result} of the C{storage} result entry that it
becomes (C{docs/messages.rst}) and whether retrying can help.  Their text
is published in results and logs: it names the key (with
L{mqtwist.validation.excerpt}) and never the store's credentials.
"""

from __future__ import annotations

__all__ = ["MessageNotFound", "MessageUnusable", "StoreError", "StoreUnavailable"]


class StoreError(Exception):
    """
    A message store operation failed.

    @cvar result: the C{result} of the C{storage} entry.
    @cvar permanent: C{True} when retrying the job cannot help.
    """

    result = "error"
    permanent = False


class MessageNotFound(StoreError):
    """
    Nothing is stored under the key: MailerQ's C{storage}/C{error}, final.
    """

    result = "error"
    permanent = True


class MessageUnusable(StoreError):
    """
    What is stored under the key cannot be sent: bigger than the limits, or
    not a plain value (a Redis list, say).  Final.
    """

    result = "error"
    permanent = True


class StoreUnavailable(StoreError):
    """
    The store cannot answer now: down, unreachable, refusing the login, or
    too slow.  The job is retried later.

    @ivar result: C{"timeout"} when it did not answer in time, C{"lost"}
        when it could not be reached or its connection broke.
    """

    permanent = False

    def __init__(self, description: str, result: str = "lost") -> None:
        super().__init__(description)
        self.result = result
