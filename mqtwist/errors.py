"""
Exceptions that describe how a delivery attempt ended.

Every layer (message parsing, DNS, SMTP, data plugins) reports a failed
attempt as an L{AttemptFailed}; the result entry published for the message is
made from its fields, so the layers never build result JSON themselves.
"""

from __future__ import annotations


class AttemptFailed(Exception):
    """
    A delivery attempt ended without the message being accepted.

    @ivar state: the step that ended the attempt, one of the C{state} values
        of C{docs/messages.rst} (C{"connect"}, C{"rcptto"}, ...).
    @ivar result: C{"error"}, C{"timeout"}, C{"lost"} or C{"invalid"}.
    @ivar description: human-readable cause, published in the result entry.
    @ivar code: the SMTP reply code, when a server replied.
    @ivar status: the enhanced status code (RFC 3463), when there was one.
    @ivar permanent: C{True} when retrying cannot help (5xx, invalid input).
    @ivar plugin: name of the data plugin that ended the attempt, if one did.
    """

    def __init__(
        self,
        state: str,
        result: str,
        description: str,
        *,
        code: int | None = None,
        status: str | None = None,
        permanent: bool = False,
        plugin: str | None = None,
    ) -> None:
        super().__init__(state, result, description)
        self.state = state
        self.result = result
        self.description = description
        self.code = code
        self.status = status
        self.permanent = permanent
        self.plugin = plugin

    def __str__(self) -> str:
        code = f" {self.code}" if self.code is not None else ""
        return f"{self.state}/{self.result}{code}: {self.description}"


class InvalidMessage(AttemptFailed):
    """
    The outbox message cannot be used: not JSON, a missing recipient, a bad
    address, a property of the wrong type.  Always permanent.
    """

    def __init__(self, description: str) -> None:
        super().__init__("process", "invalid", description, permanent=True)


class PermanentFailure(Exception):
    """
    Raised (or used as the failure of a Deferred) by a data plugin to end the
    message for good instead of retrying it.  The message is published to the
    C{failure} queue with the exception text as its description.
    """
